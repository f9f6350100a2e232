"""What runs where: the sweep never chooses an index its serving device cannot run (fake devices)."""

from __future__ import annotations

import logging

import pytest

from itemsage.index import build_index, sweep
from itemsage.index.devices import (
    CPU,
    GPU,
    GPU_SWEEP_CANDIDATES,
    DeviceCaps,
    filtered_search_device,
    runs_on,
    serving_device,
    spec_family,
    sweep_candidates,
)

NO_GPU = DeviceCaps()
TORCH_ONLY = DeviceCaps(torch_cuda=True)
FAISS_GPU = DeviceCaps(faiss_gpu=True, torch_cuda=True)
CUVS = DeviceCaps(faiss_gpu=True, cuvs=True, torch_cuda=True)


@pytest.mark.parametrize(
    ("spec", "family"),
    [("Flat", "flat"), ("IVF1024,Flat", "ivf_flat"), ("IVF1024,PQ32", "ivf_pq"), ("IVF1024,PQ32np", "ivf_pq"),
     ("HNSW32", "hnsw"), ("IVF1024,HNSW32,Flat", "hnsw"), ("CAGRA32", "cagra"), ("TorchExact", "torch_exact"),
     ("IVF1024,PQ32x4fs,Refine(Flat)", "cpu_only"), ("IVF1024,PQ32x4fs", "cpu_only"), ("PCA64,Flat", "other")],
)
def test_spec_family(spec: str, family: str) -> None:
    assert spec_family(spec) == family


def test_what_runs_on_the_gpu() -> None:
    assert runs_on("HNSW32", GPU, CUVS) is not None  # never on a GPU, whatever is installed
    assert runs_on("IVF64,PQ16x4fs", GPU, CUVS) is not None
    assert runs_on("CAGRA32", GPU, FAISS_GPU) is not None  # a FAISS GPU build without cuVS
    assert runs_on("CAGRA32", GPU, CUVS) is None
    assert runs_on("IVF64,Flat", GPU, TORCH_ONLY) is not None  # IVF needs FAISS's GPU build
    assert runs_on("Flat", GPU, TORCH_ONLY) is None  # exact search runs as torch matmul + top-k
    assert runs_on("IVF64,PQ16", GPU, FAISS_GPU) is None
    assert runs_on("TorchExact", GPU, NO_GPU) is not None


def test_what_runs_on_the_cpu() -> None:
    assert "GPU only" in (runs_on("CAGRA32", CPU, CUVS) or "")
    for spec in ("Flat", "HNSW32", "IVF64,Flat", "IVF64,PQ16", "IVF64,PQ16x4fs,Refine(Flat)", "TorchExact"):
        assert runs_on(spec, CPU, NO_GPU) is None, spec
    with pytest.raises(ValueError, match="device must be"):
        runs_on("Flat", "tpu", NO_GPU)


def test_serving_device() -> None:
    assert serving_device(None, CUVS) == GPU and serving_device(None, TORCH_ONLY) == GPU
    assert serving_device(False, CUVS) == CPU and serving_device(None, NO_GPU) == CPU
    with pytest.raises(RuntimeError, match="no GPU"):
        serving_device(True, NO_GPU)


def test_gpu_candidates_add_gpu_indexes_and_drop_hnsw(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="itemsage.index.devices"):
        kept, dropped = sweep_candidates(["Flat", "HNSW32", "IVF{nlist},Flat"], GPU, CUVS)
    assert kept == ["Flat", "IVF{nlist},Flat", "IVF{nlist},PQ32", "CAGRA32"]
    assert set(GPU_SWEEP_CANDIDATES) <= set(kept)
    assert list(dropped) == ["HNSW32"] and "no FAISS GPU implementation" in dropped["HNSW32"]
    assert "sweep skips HNSW32 on cuda" in caplog.text
    # Without cuVS, CAGRA is dropped with its reason instead of failing at build time.
    kept, dropped = sweep_candidates(["Flat"], GPU, FAISS_GPU)
    assert "CAGRA32" not in kept and "cuVS" in dropped["CAGRA32"]
    # torch alone: only exact search can serve from the GPU.
    kept, dropped = sweep_candidates(["Flat", "IVF{nlist},Flat"], GPU, TORCH_ONLY)
    assert kept == ["Flat"] and set(dropped) == {"IVF{nlist},Flat", "IVF{nlist},PQ32", "CAGRA32"}


def test_cpu_candidates_drop_cagra() -> None:
    kept, dropped = sweep_candidates(["Flat", "HNSW32", "CAGRA32"], CPU, CUVS)
    assert kept == ["Flat", "HNSW32"] and list(dropped) == ["CAGRA32"]


def test_sweep_on_cpu_never_builds_cagra(catalog) -> None:
    result = sweep(catalog.x, catalog.ids, catalog.queries, ["CAGRA32", "IVF{nlist},Flat"], use_gpu=False,
                   time_budget_s=0.05, caps=CUVS)
    assert {r.spec for r in result.rows} == {"Flat", "IVF64,Flat"}
    assert result.device == CPU and "CAGRA32" in result.skipped
    assert "not a candidate on cpu: CAGRA32" in result.to_markdown()
    assert result.to_dict()["skipped"] == result.skipped


def test_sweep_never_chooses_an_index_left_on_another_device(catalog) -> None:
    """Told it serves from a GPU (fake caps) while FAISS here can only build CPU indexes: every ANN
    candidate is measured but lands on the CPU, so none may be chosen; HNSW is not even built."""
    result = sweep(catalog.x, catalog.ids, catalog.queries, ["HNSW16", "IVF{nlist},Flat"], use_gpu="auto",
                   time_budget_s=0.05, caps=FAISS_GPU)
    built = {r.spec for r in result.rows}
    assert "HNSW16" not in built and {"IVF64,Flat", "IVF64,PQ32np"} <= built
    assert result.device == GPU
    assert result.chosen is result.exact
    assert "serves from cuda" in result.skipped["IVF64,Flat"]
    assert "HNSW16" in result.skipped


def test_cagra_needs_a_gpu(catalog) -> None:
    with pytest.raises(ValueError, match="GPU-only"):
        build_index(catalog.x, catalog.ids, "CAGRA32", use_gpu=False)
    with pytest.raises(RuntimeError, match="cuVS"):
        build_index(catalog.x, catalog.ids, "CAGRA32", use_gpu="auto")


def test_filtered_search_on_gpu_moves_to_cpu_with_a_reason() -> None:
    assert filtered_search_device("cpu") == (CPU, None)
    device, reason = filtered_search_device("cuda:0")
    assert device == CPU and reason and "IDSelector" in reason
