"""build_index / ItemIndex behaviour: exactness, round trips, add/remove, and every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from itemsage.index import (
    DuplicateIdError,
    FaissIndex,
    NonFiniteError,
    TorchExactIndex,
    UnknownIdError,
    UnsupportedOperationError,
    build_index,
    default_nlist,
    load_index,
    recall_at_k,
    resolve_spec,
)
from itemsage.index.base import faiss_gpu_available, torch_cuda_available

ALL_SPECS = ["Flat", "HNSW16", "IVF{nlist},Flat", "IVF{nlist},PQ8x4", "IVF{nlist},PQ8x4fs,RFlat", "TorchExact"]
REMOVABLE = ["Flat", "IVF{nlist},Flat", "IVF{nlist},PQ8x4", "TorchExact"]


def test_flat_is_exactly_brute_force(catalog) -> None:
    index = build_index(catalog.x, catalog.ids, "Flat", use_gpu=False)
    found, scores = index.search(catalog.queries, 10)
    assert found == catalog.exact_top(10)
    expected = np.sort(catalog.queries @ catalog.x.T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_torch_exact_matches_flat(catalog) -> None:
    index = build_index(catalog.x, catalog.ids, "TorchExact", use_gpu=False)
    assert isinstance(index, TorchExactIndex) and index.device == "cpu"
    found, _ = index.search(catalog.queries, 10)
    assert recall_at_k(found, catalog.exact_top(10), 10) > 0.999  # float ties may swap a rank


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_save_load_round_trip(spec: str, catalog, tmp_path: Path) -> None:
    index = build_index(catalog.x, catalog.ids, spec, use_gpu=False, model_name="itemsage", model_version=3)
    if "nprobe" in index.search_params:
        index.set_search_params(nprobe=4)
    if "efSearch" in index.search_params:
        index.set_search_params(efSearch=48)
    before = index.search(catalog.queries, 10)
    path = index.save(tmp_path / "idx")
    loaded = load_index(path, expected_dim=32, expected_model_version="3", use_gpu=False)
    assert type(loaded) is type(index)
    assert (loaded.spec, loaded.dim, loaded.ntotal) == (index.spec, 32, 3000)
    assert loaded.search_params == index.search_params
    assert (loaded.model_name, loaded.model_version, loaded.created_at) == ("itemsage", "3", index.created_at)
    after = loaded.search(catalog.queries, 10)
    assert after[0] == before[0]
    np.testing.assert_allclose(after[1], before[1], rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temp directories left


@pytest.mark.parametrize("spec", REMOVABLE)
def test_incremental_add_and_remove(spec: str, catalog) -> None:
    x, ids = catalog.x, catalog.ids
    index = build_index(x[:2000], ids[:2000], spec, use_gpu=False)
    index.add(ids[2000:], x[2000:])
    assert index.ntotal == 3000
    if "nprobe" in index.search_params:
        index.set_search_params(nprobe=index.nlist)  # exhaustive: results must be exact-ish
    gone = ids[1500:2500]
    index.remove(gone)
    assert index.ntotal == 2000
    # Every surviving item finds itself first (a stale label mapping would return a neighbour),
    # and no removed item ever comes back.
    keep = list(range(0, 1500)) + list(range(2500, 3000))
    found, _ = index.search(x[keep], 5)
    gone_set = set(gone)
    if "PQ" not in spec:  # PQ codes are lossy: the item itself is near, not always first
        assert [f[0] for f in found] == [ids[i] for i in keep]
    else:
        assert np.mean([ids[i] in f for i, f in zip(keep, found)]) > 0.9
    assert not any(gone_set & set(f) for f in found)
    # Re-adding a removed id works and gets a fresh label.
    index.add([ids[1500]], x[1500:1501])
    assert index.search(x[1500:1501], 1)[0] == [[ids[1500]]] or "PQ" in spec


def test_ivf_remove_keeps_ids_right(catalog) -> None:
    """IndexIDMap2 over IVF gets labels wrong after remove_ids (FAISS #4535); native IVF ids do not."""
    index = build_index(catalog.x, catalog.ids, "IVF{nlist},Flat", use_gpu=False)
    assert isinstance(index, FaissIndex) and index.removable
    index.set_search_params(nprobe=index.nlist)
    index.remove(catalog.ids[:3])
    found, _ = index.search(catalog.x[3:50], 1)
    assert [f[0] for f in found] == catalog.ids[3:50]


@pytest.mark.parametrize("spec", ["HNSW16", "IVF{nlist},PQ8x4fs,RFlat"])
def test_remove_unsupported_is_clear_and_changes_nothing(spec: str, catalog) -> None:
    index = build_index(catalog.x[:500], catalog.ids[:500], spec, use_gpu=False)
    assert not index.removable
    with pytest.raises(UnsupportedOperationError, match="cannot remove vectors.*Rebuild"):
        index.remove(catalog.ids[:2])
    assert index.ntotal == 500 and catalog.ids[0] in index.idmap
    index.add(catalog.ids[500:600], catalog.x[500:600])  # adding still works
    assert index.ntotal == 600


def test_remove_unknown_ids_removes_nothing(catalog) -> None:
    index = build_index(catalog.x[:100], catalog.ids[:100], "Flat", use_gpu=False)
    with pytest.raises(UnknownIdError, match="'nope'"):
        index.remove([catalog.ids[0], "nope"])
    assert index.ntotal == 100


def test_bad_adds_change_nothing(catalog) -> None:
    index = build_index(catalog.x[:100], catalog.ids[:100], "IVF{nlist},Flat", use_gpu=False)
    before = index.search(catalog.queries[:5], 5)
    with pytest.raises(DuplicateIdError, match="already in the index"):
        index.add([catalog.ids[5], "new-1"], catalog.x[200:202])
    bad = catalog.x[200:203].copy()
    bad[1, 4] = np.nan
    with pytest.raises(NonFiniteError, match=r"1 of 3 embeddings rows contain NaN or inf \(item ids 'n1'") as e:
        index.add(["n0", "n1", "n2"], bad)
    assert e.value.count == 1 and e.value.rows == [1]
    with pytest.raises(ValueError, match="dimension 16 but the index dimension is 32"):
        index.add(["n0"], catalog.x[:1, :16])
    with pytest.raises(ValueError, match="2 ids but 3 embedding rows"):
        index.add(["n0", "n1"], catalog.x[:3])
    assert index.ntotal == 100 and "n0" not in index.idmap and "new-1" not in index.idmap
    assert index.search(catalog.queries[:5], 5)[0] == before[0]
    index.add([], np.empty((0, 32), dtype=np.float32))  # an empty update is a no-op
    assert index.ntotal == 100


def test_build_rejects_bad_input(catalog) -> None:
    x, ids = catalog.x[:50], catalog.ids[:50]
    with pytest.raises(ValueError, match="empty"):
        build_index(np.empty((0, 32), dtype=np.float32), [], "Flat")
    with pytest.raises(ValueError, match="50 ids but 49 embedding rows"):
        build_index(x[:49], ids, "Flat")
    with pytest.raises(DuplicateIdError, match=r"1 item id\(s\) repeated in the input: 'item-0000003'"):
        build_index(x, ids[:49] + [ids[3]], "Flat")
    bad = x.astype(np.float64)
    bad[[2, 7]] = [np.inf] + [0.0] * 31, [1e300] + [0.0] * 31  # 1e300 overflows float32
    with pytest.raises(NonFiniteError, match="2 of 50 embeddings rows") as e:
        build_index(bad, ids, "Flat")
    assert e.value.rows == [2, 7]
    with pytest.raises(ValueError, match="2-D"):
        build_index(x[0], ids[:1], "Flat")
    with pytest.raises(TypeError, match="real numbers"):
        build_index(np.full((2, 3), "a"), ["a", "b"], "Flat")
    with pytest.raises(ValueError, match="cannot parse index spec"):
        build_index(x, ids, "NotAnIndex42")
    with pytest.raises(ValueError, match="sweep"):
        build_index(x, ids, "auto")
    with pytest.raises(ValueError, match="IDMap"):
        build_index(x, ids, "IDMap,Flat")
    with pytest.raises(ValueError, match=r"training index 'IVF256,Flat' on 50 vectors failed.*fewer IVF lists"):
        build_index(x, ids, "IVF256,Flat")
    with pytest.raises(ValueError, match="use_gpu"):
        build_index(x, ids, "Flat", use_gpu="maybe")


@pytest.mark.skipif(faiss_gpu_available() or torch_cuda_available(), reason="this machine has a GPU")
def test_use_gpu_true_without_gpu_is_an_error(catalog) -> None:
    with pytest.raises(RuntimeError, match="no GPU"):
        build_index(catalog.x[:50], catalog.ids[:50], "Flat", use_gpu=True)
    assert build_index(catalog.x[:50], catalog.ids[:50], "Flat", use_gpu="auto").device == "cpu"


def test_search_edge_cases(catalog) -> None:
    index = build_index(catalog.x[:5], catalog.ids[:5], "Flat", use_gpu=False)
    ids, scores = index.search(catalog.queries[0], 10)  # 1-D query, k > ntotal
    assert len(ids) == 1 and len(ids[0]) == 5 and scores.shape == (1, 5)
    with pytest.raises(ValueError, match="dimension 31"):
        index.search(catalog.queries[:2, :31], 3)
    with pytest.raises(ValueError, match="positive integer"):
        index.search(catalog.queries[:2], 0)
    with pytest.raises(NonFiniteError):
        index.search(np.full((1, 32), np.nan), 3)
    assert index.search(np.empty((0, 32)), 3)[0] == []


def test_ivf_with_few_probes_pads_with_minus_inf(catalog) -> None:
    index = build_index(catalog.x[:400], catalog.ids[:400], "IVF8,Flat", use_gpu=False)
    index.set_search_params(nprobe=1)
    ids, scores = index.search(catalog.queries[:20], 200)  # one list holds ~50 items, not 200
    short = [i for i, row in enumerate(ids) if len(row) < 200]
    assert short, "expected some queries to get fewer than k results"
    for i in short:
        assert np.isfinite(scores[i, : len(ids[i])]).all() and np.isneginf(scores[i, len(ids[i]) :]).all()


def test_search_params_are_checked(catalog) -> None:
    hnsw = build_index(catalog.x[:200], catalog.ids[:200], "HNSW16", use_gpu=False)
    with pytest.raises(ValueError, match="no search parameter nprobe"):
        hnsw.set_search_params(nprobe=4)
    with pytest.raises(ValueError, match=">= 1"):
        hnsw.set_search_params(efSearch=0)
    hnsw.set_search_params(efSearch=64)
    assert hnsw.search_params == {"efSearch": 64}
    refine = build_index(catalog.x, catalog.ids, "IVF{nlist},PQ8x4fs,RFlat", use_gpu=False)
    assert refine.search_params["k_factor"] == 4.0  # the default re-ranking depth
    refine.set_search_params(k_factor=8, nprobe=16)
    assert refine.search_params == {"k_factor": 8.0, "nprobe": 16}
    with pytest.raises(ValueError, match="exact search has no search parameters"):
        build_index(catalog.x[:50], catalog.ids[:50], "TorchExact", use_gpu=False).set_search_params(nprobe=2)


def test_memory_bytes(catalog) -> None:
    flat = build_index(catalog.x, catalog.ids, "Flat", use_gpu=False).memory_bytes()
    pq = build_index(catalog.x, catalog.ids, "IVF{nlist},PQ8x4", use_gpu=False).memory_bytes()
    assert 3000 * 32 * 4 <= flat < 3000 * 32 * 4 * 1.2
    assert pq < flat / 3


def test_spec_resolution() -> None:
    assert default_nlist(1_000_000) == 4096
    assert default_nlist(100_000) == 1024
    assert default_nlist(3000) == 64  # 4*sqrt(3000) ~ 219 -> 256, capped at 3000 // 39 = 76 -> 64
    assert default_nlist(10) == 1
    assert resolve_spec("IVF{nlist},PQ16", 100_000) == "IVF1024,PQ16np"  # no polysemous training
    assert resolve_spec("IVF{nlist},PQ16x4,RFlat", 100_000) == "IVF1024,PQ16x4np,RFlat"
    assert resolve_spec("IVF{nlist},PQ16x4fs,RFlat", 100_000) == "IVF1024,PQ16x4fs,RFlat"
    assert resolve_spec("OPQ16_64,IVF8,PQ16np", 10) == "OPQ16_64,IVF8,PQ16np"
    with pytest.raises(ValueError, match="placeholder"):
        resolve_spec("IVF{lists},Flat", 10)
