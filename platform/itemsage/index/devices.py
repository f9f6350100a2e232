"""Which index types the serving device can run, decided in one place.

The sweep must never choose an index the serving device cannot run, and a filtered search must
never silently drop its filter, so both questions are answered here from an explicit
``DeviceCaps`` (detected, or given by a test) instead of being inferred deep inside FAISS calls.

What runs where (FAISS 1.15, faiss-gpu-cuvs built with cuVS):

* **Flat, IVF-Flat, IVF-PQ** (8-bit codes): CPU, and GPU with a FAISS GPU build.
* **HNSW**: CPU only. FAISS has no GPU HNSW, so on a GPU server it would answer from the CPU.
* **CAGRA** (cuVS graph): GPU only, with a cuVS build. On a CPU it only runs after conversion to
  an HNSW graph (``IndexHNSWCagra``, base level only), a different index with different speed and
  recall from what the sweep measured; so the sweep never proposes CAGRA for a CPU server (list an
  HNSW spec instead). A saved CAGRA index is that HNSW conversion; on a GPU it loads back as CAGRA.
* **Fast-scan PQ** (``PQ..x4fs``) and **Refine** stages: CPU only.
* **TorchExact**: wherever torch runs.

Filtered search (an ``IDSelector`` restricting results to allowed items): FAISS CPU indexes take
one through ``SearchParameters``; the GPU indexes of faiss-gpu-cuvs do not, so a filtered query on
the GPU goes to the CPU copy of the index, with the reason logged (``filtered_search_device``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

CPU = "cpu"
GPU = "cuda"
# Specs the sweep adds on a GPU server (exact Flat is always measured): the GPU IVF variants and
# the cuVS graph. ``{nlist}`` is sized from the catalog (``default_nlist``).
GPU_SWEEP_CANDIDATES: tuple[str, ...] = ("IVF{nlist},Flat", "IVF{nlist},PQ32", "CAGRA32")
CAGRA_RE = re.compile(r"^CAGRA(\d+)$")


@dataclass(frozen=True)
class DeviceCaps:
    """What this process can run indexes on.

    ``faiss_gpu``: the installed FAISS has GPU indexes and sees a GPU; ``cuvs``: it was built with
    cuVS (CAGRA); ``torch_cuda``: torch sees a GPU (exact search without faiss-gpu).
    """

    faiss_gpu: bool = False
    cuvs: bool = False
    torch_cuda: bool = False

    @property
    def any_gpu(self) -> bool:
        return self.faiss_gpu or self.torch_cuda

    @classmethod
    def detect(cls) -> DeviceCaps:
        import faiss

        from itemsage.index.base import faiss_gpu_available, torch_cuda_available

        faiss_gpu = faiss_gpu_available()
        return cls(
            faiss_gpu=faiss_gpu,
            cuvs=faiss_gpu and hasattr(faiss, "GpuIndexCagra"),
            torch_cuda=torch_cuda_available(),
        )


def spec_family(spec: str) -> str:
    """One of flat, ivf_flat, ivf_pq, hnsw, cagra, torch_exact, cpu_only (fast-scan/Refine), other."""
    s = spec.strip()
    if s == "TorchExact":
        return "torch_exact"
    if CAGRA_RE.match(s):
        return "cagra"
    if "HNSW" in s:
        return "hnsw"
    if "fs" in s or "Refine" in s or "RFlat" in s:
        return "cpu_only"
    if s == "Flat":
        return "flat"
    if s.startswith("IVF") and s.endswith(",Flat"):
        return "ivf_flat"
    if s.startswith("IVF") and re.search(r",PQ\d+(np)?$", s):
        return "ivf_pq"
    return "other"


def runs_on(spec: str, device: str, caps: DeviceCaps) -> str | None:
    """``None`` when ``spec`` can serve from ``device`` ("cpu" or "cuda"), else the reason why not."""
    family = spec_family(spec)
    if device == CPU:
        if family == "cagra":
            return (
                "CAGRA runs on the GPU only; on a CPU it would be a converted HNSW graph, not what "
                "a sweep would measure (list an HNSW spec for CPU serving)"
            )
        return None
    if device != GPU:
        raise ValueError(f"device must be {CPU!r} or {GPU!r}; got {device!r}")
    if family == "torch_exact":
        return None if caps.torch_cuda else "torch sees no GPU"
    if family == "flat":
        return None if caps.any_gpu else "no GPU is visible to FAISS or torch"
    if family == "hnsw":
        return "HNSW has no FAISS GPU implementation: it would answer from the CPU"
    if family == "cpu_only":
        return "fast-scan PQ and Refine stages have no FAISS GPU implementation"
    if family == "cagra":
        return None if caps.cuvs else "CAGRA needs a FAISS build with cuVS (faiss-gpu-cuvs) and a GPU"
    if not caps.faiss_gpu:
        return "needs a FAISS GPU build (requirements/faiss-gpu.txt) that sees a GPU"
    return None


def serving_device(use_gpu: bool | None, caps: DeviceCaps) -> str:
    """Where indexes will serve: the GPU when asked ("auto" = ``None``) and one is usable."""
    if use_gpu is False:
        return CPU
    if caps.any_gpu:
        return GPU
    if use_gpu:
        raise RuntimeError("use_gpu=True but no GPU is visible to faiss-gpu or torch; use 'auto' or false")
    return CPU


def sweep_candidates(candidates: Sequence[str], device: str, caps: DeviceCaps) -> tuple[list[str], dict[str, str]]:
    """The candidates the sweep may build for ``device``, and the dropped ones with their reasons.

    On a GPU server the GPU IVF variants and CAGRA are added (when this FAISS can run them), so a
    CPU-oriented candidate list still gets the GPU indexes measured.
    """
    wanted = list(dict.fromkeys(candidates))
    if device == GPU:
        wanted += [c for c in GPU_SWEEP_CANDIDATES if c not in wanted]
    kept, dropped = [], {}
    for spec in wanted:
        reason = runs_on(spec, device, caps)
        if reason is None:
            kept.append(spec)
        else:
            dropped[spec] = reason
    for spec, reason in dropped.items():
        log.info("sweep skips %s on %s: %s", spec, device, reason)
    return kept, dropped


def filtered_search_device(index_device: str) -> tuple[str, str | None]:
    """Where a search restricted to allowed items must run, and why it moved (None: it did not).

    FAISS CPU indexes apply an ``IDSelector`` while searching. The GPU indexes of this FAISS build
    take no selector, and searching without it would return items the filter forbids; so a
    filtered search of a GPU index runs on its CPU copy, and the caller logs the reason.
    """
    if index_device == CPU or not index_device.startswith(GPU):
        return CPU, None
    return CPU, "FAISS GPU indexes take no IDSelector: the filtered search runs on the CPU copy of the index"
