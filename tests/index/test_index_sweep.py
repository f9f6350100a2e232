"""sweep(): each ANN type reaches recall@10 >= 0.95 on clustered data; the choice follows the rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from itemsage.index import build_index, load_index, recall_at_k, sweep
from itemsage.index.sweep import knob_axes, walk_knobs


def test_recall_at_k_exact_values() -> None:
    truth = [["a", "b"], ["c", "d"]]
    assert recall_at_k([["a", "b"], ["c", "d"]], truth, 2) == 1.0
    assert recall_at_k([["b", "x"], []], truth, 2) == 0.25
    assert recall_at_k([["a", "b", "c"], ["d"]], truth, 1) == 0.5  # only the top 1 counts
    with pytest.raises(ValueError):
        recall_at_k([["a"]], truth, 2)


def test_sweep_reaches_target_and_keeps_the_chosen_index(catalog, tmp_path: Path) -> None:
    result = sweep(
        catalog.x, catalog.ids, catalog.queries, ["HNSW16", "IVF{nlist},Flat"],
        k=10, recall_target=0.95, use_gpu=False, time_budget_s=0.2,
    )
    by_spec: dict[str, list] = {}
    for row in result.rows:
        by_spec.setdefault(row.spec, []).append(row)
    assert set(by_spec) == {"Flat", "HNSW16", "IVF64,Flat"}
    assert by_spec["Flat"][0].recall == 1.0 and result.exact is by_spec["Flat"][0]
    for spec in ("HNSW16", "IVF64,Flat"):
        rows = by_spec[spec]
        assert rows[-1].recall >= 0.95, f"{spec} never reached recall 0.95: {rows}"
        assert all(r.recall < 0.95 for r in rows[:-1])  # the sweep stops at the first success
        assert all(r.qps_b1 > 0 and r.qps_b256 > 0 and r.memory_bytes > 0 for r in rows)
    ivf_knobs = [r.params["nprobe"] for r in by_spec["IVF64,Flat"]]
    assert ivf_knobs == sorted(ivf_knobs) and ivf_knobs[0] == 1

    chosen = result.chosen
    assert chosen.recall >= 0.95
    assert chosen.qps_b256 == max(r.qps_b256 for r in result.rows if r.recall >= 0.95 and r.spec != "Flat")
    index = result.index
    assert index is not None and index.spec == chosen.spec and index.search_params == chosen.params
    found, _ = index.search(catalog.queries, 10)
    assert recall_at_k(found, catalog.exact_top(10), 10) == pytest.approx(chosen.recall)

    table = result.to_markdown()
    assert table.startswith("| spec | params |") and "**(chosen)**" in table and str(result) == table
    json.dumps(result.to_dict())  # JSON-able, so it can go into metadata.json
    loaded = load_index(index.save(tmp_path / "idx"), use_gpu=False)
    assert loaded.sweep["chosen"]["spec"] == chosen.spec and loaded.search_params == chosen.params


def test_sweep_falls_back_to_exact(catalog) -> None:
    # 2 x 4-bit PQ codes cannot reach recall 0.95, whatever nprobe.
    result = sweep(catalog.x[:1000], catalog.ids[:1000], catalog.queries[:50], ["IVF{nlist},PQ2x4"],
                   use_gpu=False, time_budget_s=0.05)
    assert result.chosen.spec == "Flat" and result.index is not None and result.index.spec == "Flat"
    assert max(r.recall for r in result.rows if r.spec != "Flat") < 0.95


def test_sweep_respects_memory_limit(catalog) -> None:
    result = sweep(catalog.x[:1000], catalog.ids[:1000], catalog.queries[:50], ["IVF{nlist},Flat"],
                   use_gpu=False, time_budget_s=0.05, max_memory_bytes=1000, keep_index=False)
    assert any(r.spec.startswith("IVF") and r.recall >= 0.95 for r in result.rows)
    assert result.chosen.spec == "Flat" and result.index is None


def test_sweep_rejects_bad_arguments(catalog) -> None:
    with pytest.raises(ValueError, match="at least one candidate"):
        sweep(catalog.x[:50], catalog.ids[:50], catalog.queries[:5], [])
    with pytest.raises(ValueError, match="dimension"):
        sweep(catalog.x[:50], catalog.ids[:50], catalog.queries[:5, :8], ["Flat"])
    with pytest.raises(ValueError, match="recall_target"):
        sweep(catalog.x[:50], catalog.ids[:50], catalog.queries[:5], ["Flat"], recall_target=1.5)


def test_walk_knobs_raises_k_factor_when_nprobe_plateaus(catalog) -> None:
    index = build_index(catalog.x[:1000], catalog.ids[:1000], "IVF8,PQ4x4fs,RFlat", use_gpu=False)
    assert knob_axes(index, 10) == [("nprobe", [1, 2, 4, 8]), ("k_factor", [4.0, 8.0, 16.0, 32.0, 64.0])]
    by_nprobe = {1: 0.5, 2: 0.7, 4: 0.85, 8: 0.99}
    by_k_factor = {4.0: 0.8, 8.0: 0.9, 16.0: 0.97, 32.0: 0.99, 64.0: 0.99}  # re-ranking caps recall
    tried = []

    def evaluate(params: dict) -> float:
        tried.append((params["nprobe"], params["k_factor"]))
        return min(by_nprobe[params["nprobe"]], by_k_factor[params["k_factor"]])

    walk_knobs(index, 10, evaluate, recall_target=0.95)
    assert tried == [(1, 4.0), (2, 4.0), (4, 4.0), (8, 4.0), (4, 8.0), (8, 8.0), (8, 16.0)]


def test_walk_knobs_stops_on_a_plateau(catalog) -> None:
    index = build_index(catalog.x[:1000], catalog.ids[:1000], "IVF16,Flat", use_gpu=False)
    tried = []

    def evaluate(params: dict) -> float:
        tried.append(params["nprobe"])
        return 0.6 if params["nprobe"] < 4 else 0.7

    walk_knobs(index, 10, evaluate, recall_target=0.95)
    # 2 gains nothing, the look-ahead to 4 does; then 8 and 16 both gain nothing: done.
    assert tried == [1, 2, 4, 8, 16]
