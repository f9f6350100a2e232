# syntax=docker/dockerfile:1
#
# One image for every Ray pod of ItemSage on KubeRay: head, workers, RayJob submitters and Serve
# replicas. The Ray version, the Python version and the tag of the Ray image all have to agree with
# `rayVersion` in k8s/ and with the `ray[...]==2.60.*` pin in pyproject.toml (tests/k8s checks it).
#
#   CPU: docker build -t itemsage-ray:2.60.0-py311 .
#   GPU: docker build --build-arg RAY_IMAGE_VARIANT=-gpu -t itemsage-ray-gpu:2.60.0-py311-gpu .
#
# The CPU variant installs the `cpu` extra (faiss-cpu). The GPU variant starts from the Ray image's
# `-gpu` tag (CUDA runtime) and installs the `gpu` extra (cuVS libraries) and then the CUDA 13 FAISS
# build with --no-deps (requirements/faiss-gpu.txt says why), never faiss-cpu beside it.
ARG RAY_VERSION=2.60.0
ARG RAY_PYTHON=py311
# "" for the CPU image, "-gpu" for the CUDA one.
ARG RAY_IMAGE_VARIANT=
FROM rayproject/ray:${RAY_VERSION}-${RAY_PYTHON}${RAY_IMAGE_VARIANT}

ARG RAY_IMAGE_VARIANT=
# The Ray images' non-root user: uid 1000, primary group `users` (gid 100). The pods pin the same
# numbers in their securityContext (runAsUser/runAsGroup), so Kubernetes can enforce runAsNonRoot.
USER ray
ENV APP_DIR=/home/ray/itemsage
RUN mkdir -p "${APP_DIR}"
WORKDIR ${APP_DIR}

# Dependencies first (the slow layer), keyed on the package metadata and the library only.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users requirements/ requirements/
COPY --chown=ray:users platform/ platform/
RUN if [ "${RAY_IMAGE_VARIANT}" = "-gpu" ]; then target=".[gpu]"; else target=".[cpu]"; fi \
    && python -m pip install --no-cache-dir "${target}" \
    && if [ "${RAY_IMAGE_VARIANT}" = "-gpu" ]; then \
        python -m pip install --no-cache-dir --no-deps -r requirements/faiss-gpu.txt; fi \
    && rm -rf build platform/*.egg-info \
    && python -c "import ray, itemsage; assert ray.__version__.startswith('2.60.'), ray.__version__"

# Entry points, the Serve application and the bundled sample catalog. `ray job submit` entrypoints
# such as `python experiments/train.py ...` run in this directory: Ray's workers inherit the
# working directory of `ray start`, which KubeRay runs in the image's WORKDIR.
COPY --chown=ray:users experiments/ experiments/
COPY --chown=ray:users deployments/ deployments/
COPY --chown=ray:users data/sample/ data/sample/

# - PYTHONPATH: Serve resolves `deployments.app:...` (serveConfigV2 import_path) on every node.
# - Weights come from pip packages: never reach for a model hub at run time.
# - The pods run with a read-only root filesystem and an emptyDir on /tmp: point every cache that
#   would otherwise be written under $HOME at /tmp.
ENV PYTHONPATH=${APP_DIR} \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    HF_HOME=/tmp/.cache/huggingface \
    TORCH_HOME=/tmp/.cache/torch \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    PYTHONDONTWRITEBYTECODE=1

USER ray
