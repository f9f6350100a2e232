"""Offline evaluation (itemsage.eval.evaluate + experiments/evaluate.py) on the small sample model.

The fast tests evaluate on the model's own preprocessed features (no Ray); the slow one
evaluates on a catalog the model never saw, preprocessed by the real Ray pipeline with the
model's vocabulary.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from sample_model import SampleModel, build_sample_model, one_torch_thread, start_ray  # noqa: E402
from tests.support.scripts import load_script  # noqa: E402

from itemsage.eval.evaluate import evaluate_model  # noqa: E402
from itemsage.eval.model_features import EvalError  # noqa: E402

SURFACES = ("search", "closeup", "home")
# Every method each probe must report (the sample catalog has images, text, queries and users).
PROBE_METHODS = {
    # + the served modes of /search and /similar by id (a photo's item: closeup; text only:
    # item2item), and the same fusion with frozen MiniLM instead
    "search": ("itemsage", "hybrid", "lexical", "minilm_hybrid", "tfidf", "bm25", "minilm", "random"),
    "closeup": ("itemsage", "hybrid", "lexical", "minilm_hybrid", "image", "random"),
    "item2item": ("itemsage", "hybrid", "lexical", "minilm_hybrid", "tfidf", "bm25", "minilm", "image", "random"),
    "home": ("itemsage", "tfidf", "bm25", "minilm", "image", "user_feat", "random"),
}
# The attribute-relevance probes (itemsage.eval.attribute_probes): the sample has kind, colour, gender.
ATTRIBUTE_METHODS = {
    "attr_search": ("itemsage", "tfidf", "bm25", "minilm", "random"),
    "attr_closeup": ("itemsage", "image", "image_nbr", "random"),  # + the photo's catalog neighbours' titles
    "attr_item2item": ("itemsage", "tfidf", "bm25", "minilm", "image", "random"),
    "attr_home": ("itemsage", "tfidf", "bm25", "minilm", "image", "user_feat", "random"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def sample_model(tmp_path_factory: pytest.TempPathFactory) -> SampleModel:
    return build_sample_model(tmp_path_factory.getbasetemp() / "sample_model")


@pytest.fixture(scope="module")
def result(sample_model: SampleModel, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("eval") / "result.json"
    # The validation split: as held out as the test split (the plain training loop never looks at
    # it), and with 160 items it has hundreds of pairs where the test split has a few dozen.
    result = evaluate_model(
        str(sample_model.bundle), features=str(sample_model.features), split="val", device="cpu", out=str(out)
    )
    return result, out


def _cli():
    return load_script("experiments/evaluate.py")


def test_every_method_for_every_applicable_probe(result) -> None:
    res, _ = result
    for probe, methods in PROBE_METHODS.items():
        for method in methods:
            for k in (10, 50):
                value = res.recall(method, f"{probe}/all", k)
                assert value is not None and 0.0 <= value <= 1.0, (probe, method, k)
            assert res.recall(method, f"{probe}/all", 10) <= res.recall(method, f"{probe}/all", 50)
        # Only the methods that apply: an image query's baselines read the photo alone (the served
        # modes read its item's text, as /similar by id does), only home has user features.
        assert {m for m, t in res.table.rows if t == f"{probe}/all"} == set(methods), probe
        ns = {res.table.rows[(m, f"{probe}/all")]["n"] for m in methods}
        assert len(ns) == 1, probe  # the same pairs for every method
    md = res.markdown()
    for label in (
        "itemsage",
        "char-3gram TF-IDF",
        "BM25",
        "frozen MiniLM",
        "frozen image features",
        "frozen user features (image + text)",
        "random",
        "R@10",
        "R@50",
        "item2item/all",
        "item-disjoint split",
        "TF-IDF IDF fit on every catalog item's text",
    ):
        assert label in md
    assert res.holdout == "item" and res.baseline_fit == "catalog" and res.identity["seed"] == "0"
    # Every pair is ranked against the whole catalog, not only the held-out items.
    assert res.num_items == 160 and res.num_pairs > 100 and res.split == "val"


def test_trained_model_beats_random_on_every_surface(result) -> None:
    res, _ = result
    for surface in ("search", "closeup"):
        assert res.recall("itemsage", f"{surface}/all", 10) > res.recall("random", f"{surface}/all", 10) + 0.2, surface
    # Home from the mean of the history items' embeddings (model.home_query: items): on this
    # 160-item sample 0.28 against random 0.09 and the frozen user features 0.12 (the home tower,
    # which can memorise 160 items' users, reads 0.67 here; docs/quality.md, "Queries from
    # catalog items").
    home = res.recall("itemsage", "home/all", 10)
    assert home > res.recall("random", "home/all", 10) + 0.15 and home > res.recall("user_feat", "home/all", 10) + 0.1


def test_item_to_item_and_image_probes_share_the_closeup_pairs(result) -> None:
    """Both probes read the closeup pairs; the frozen image baseline ranks the query item's first
    image either way, so its numbers agree, while the model uses two different towers."""
    res, _ = result
    assert res.table.rows[("image", "closeup/all")] == res.table.rows[("image", "item2item/all")]
    from itemsage.eval.result import surface_summary

    summary = surface_summary(res)
    assert summary["search"]["frozen"] == summary["search"]["minilm"]
    assert summary["home"]["frozen"] == summary["home"]["user_feat"]


def test_json_holds_every_row(result) -> None:
    res, out = result
    data = json.loads(out.read_text())
    assert data["model_version"] == res.model_version and data["ks"] == [10, 50]
    rows = {(r["task"], r["method"]): r for r in data["rows"]}
    assert len(rows) == len(data["rows"])  # one row per (task, method)
    assert {("search/all", "itemsage"), ("item2item/all", "bm25"), ("home/all", "random")} <= set(rows)
    assert rows[("closeup/all", "image")]["label"] == "frozen image features"
    assert data["holdout"] == "item" and set(data["probes"]) == set(PROBE_METHODS) | set(ATTRIBUTE_METHODS)
    assert data["attribute_items"] == res.attribute_items > 0
    assert rows[("search/all", "itemsage")]["recall@10"] == res.recall("itemsage", "search/all", 10)


def test_attribute_probes_rank_the_whole_catalog_for_every_method(result) -> None:
    """Queries from the held-out items, relevant = same kind, colour and gender: every applicable
    method on the same queries, the trained model above random, and the rows in the markdown."""
    res, _ = result
    for probe, methods in ATTRIBUTE_METHODS.items():
        task = f"{probe}/all"
        assert {m for m, t in res.table.rows if t == task} == set(methods), probe
        assert len({res.table.rows[(m, task)]["n"] for m in methods}) == 1, probe
        for m in methods:
            assert 0.0 <= res.recall(m, task, 10) <= 1.0
        assert res.recall("itemsage", task, 10) > res.recall("random", task, 10), probe
    # The photo and the item probes ask about the same held-out items.
    assert res.table.rows[("image", "attr_closeup/all")] == res.table.rows[("image", "attr_item2item/all")]
    assert "capped Recall@k" in res.markdown() and "attr_search/all" in res.markdown()


def test_item_disjoint_split_is_all_unseen_items(result) -> None:
    res, _ = result
    assert res.num_unseen_pairs == res.num_pairs and "search/unseen" not in res.table.tasks()


def test_held_out_pairs_of_training_items_are_reported_apart(sample_model: SampleModel, tmp_path: Path) -> None:
    """A time split holds out later engagement with items trained on as well as new items: the
    report gives each its own rows (the popularity a model learns helps only the first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from itemsage.trained import load_trained

    features = tmp_path / "features"
    shutil.copytree(sample_model.features, features)
    train = pq.read_table(features / "pairs" / "train.parquet")
    val = pq.read_table(features / "pairs" / "val.parquet")
    pq.write_table(pa.concat_tables([val, train.slice(0, 40)]), features / "pairs" / "val.parquet")
    # As if preprocessed with preprocess.engagement.seed=4 (another item-disjoint split).
    manifest = json.loads((features / "manifest.json").read_text())
    manifest["config"]["engagement"]["seed"] = 4
    (features / "manifest.json").write_text(json.dumps(manifest))
    tm = load_trained(str(sample_model.bundle), device="cpu")
    tm.manifest["features"] = str(features)  # as if trained on this directory
    res = evaluate_model(tm, features=str(features), split="val", device="cpu")

    assert res.num_pairs == val.num_rows + 40 and res.num_unseen_pairs == val.num_rows
    assert res.split_seed == "4"  # read from the features, which the report groups splits by
    assert f"{val.num_rows:,} of the pairs engage an item with no training engagement" in res.markdown()
    for surface in SURFACES:
        n = {c: res.table.rows.get(("itemsage", f"{surface}/{c}"), {}).get("n", 0) for c in ("all", "seen", "unseen")}
        assert n["seen"] + n["unseen"] == n["all"], surface
    assert sum(res.table.rows.get(("itemsage", f"{s}/seen"), {}).get("n", 0) for s in SURFACES) == 40
    # Not the model's training features (a copy it was not trained on): seen-ness is unknown.
    other = evaluate_model(str(sample_model.bundle), features=str(features), split="val", device="cpu")
    assert other.num_unseen_pairs is None and "search/seen" not in other.table.tasks()


def test_cli_prints_the_table_writes_json_and_logs_to_mlflow(sample_model: SampleModel, tmp_path: Path, capsys) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "r.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = _cli().main(
        [
            "--model",
            str(sample_model.bundle),
            "--features",
            str(sample_model.features),
            "--device",
            "cpu",
            "--out",
            str(out),
            "--split",
            "val",
            "--tracking-uri",
            uri,
            "--experiment",
            "ev",
            "--tag",
            "purpose=test",
            "--baseline-fit",
            "train",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "| search/all | itemsage |" in printed and "frozen user features" in printed
    assert "the training items' text only" in printed
    data = json.loads(out.read_text())
    assert data["num_items"] == 160 and data["baseline_fit"] == "train"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ev").experiment_id])
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["purpose"] == "test" and tags["itemsage.split"] == "val" and tags["itemsage.seed"] == "0"
    assert tags["itemsage.kind"] == "evaluation" and tags["itemsage.baseline_fit"] == "train"
    assert tags["itemsage.split_seed"] == "0"
    for probe, methods in PROBE_METHODS.items():
        for method in methods:
            name = f"val/{probe}/all/{method}/recall_at_10"
            assert name in metrics, name
    row = next(r for r in data["rows"] if r["task"] == "item2item/all" and r["method"] == "tfidf")
    assert metrics["val/item2item/all/tfidf/recall_at_10"] == row["recall@10"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"evaluation.json", "evaluation.md"}


def test_text_only_catalog_gets_the_probes_that_apply(sample_model: SampleModel, tmp_path: Path) -> None:
    """A catalog without images (Amazon, Shopee): no image probe and no image baselines; item ->
    item still runs on the closeup pairs with the text baselines."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = tmp_path / "features"
    shutil.copytree(sample_model.features, features)
    items = pq.read_table(features / "items.parquet")
    empty = pa.array([[] for _ in range(items.num_rows)], items.schema.field("image_feats").type)
    items = items.set_column(items.schema.get_field_index("image_feats"), "image_feats", empty)
    zeros = pa.array([0] * items.num_rows, pa.int32())
    items = items.set_column(items.schema.get_field_index("n_images"), "n_images", zeros)
    pq.write_table(items, features / "items.parquet")

    res = evaluate_model(str(sample_model.bundle), features=str(features), split="val", device="cpu")
    probes = {t.split("/")[0] for t in res.table.tasks()}
    assert probes == {"search", "item2item", "home", "attr_search", "attr_item2item", "attr_home"}
    text_methods = {"itemsage", "tfidf", "bm25", "minilm", "random"}
    assert {m for m, t in res.table.rows if t == "attr_item2item/all"} == text_methods
    assert {m for m, t in res.table.rows if t == "attr_home/all"} == text_methods
    modes = {"hybrid", "lexical", "minilm_hybrid"}  # /similar's served modes, text only
    assert {m for m, t in res.table.rows if t == "item2item/all"} == text_methods | modes
    assert {m for m, t in res.table.rows if t == "home/all"} == {"itemsage", "tfidf", "bm25", "minilm", "random"}


def test_cli_missing_model_is_one_line(tmp_path: Path, capsys) -> None:
    code = _cli().main(["--model", str(tmp_path / "nope"), "--features", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "does not exist" in err and err.startswith("error:")


def test_conflicting_inputs_are_refused(sample_model: SampleModel) -> None:
    with pytest.raises(EvalError, match="not both"):
        evaluate_model(
            str(sample_model.bundle),
            catalog=str(sample_model.unseen_catalog),
            features=str(sample_model.features),
            device="cpu",
        )
    with pytest.raises(EvalError, match="engagements"):
        evaluate_model(
            str(sample_model.bundle), features=str(sample_model.features), engagements="log.jsonl", device="cpu"
        )


@pytest.mark.slow
def test_unseen_catalog_is_preprocessed_with_the_models_vocab(sample_model: SampleModel, tmp_path: Path) -> None:
    import ray

    start_ray()
    try:
        kept = tmp_path / "unseen-features"
        res = evaluate_model(
            str(sample_model.bundle), catalog=str(sample_model.unseen_catalog), device="cpu", features_out=str(kept)
        )
    finally:
        ray.shutdown()
    assert res.num_items == 60 and res.engagement_source == "synthetic" and res.catalog
    assert (kept / "vocab.json").read_bytes() == (sample_model.bundle / "vocab.json").read_bytes()
    assert json.loads((kept / "manifest.json").read_text())["vocab_from"] == str(sample_model.bundle)
    for surface, frozen in (("search", "minilm"), ("home", "user_feat")):
        assert res.recall("itemsage", f"{surface}/all", 10) is not None
        assert res.recall(frozen, f"{surface}/all", 10) is not None


def test_the_fusion_sweep_measures_what_the_evaluation_reports(sample_model: SampleModel, result) -> None:
    """experiments/hybrid_sweep.py's rows at the served constants are the evaluation's rows, for
    /search (text queries) and /similar by item id (a photo's or a text-only item's query, its own
    text the lexical query)."""
    from itemsage.config import HybridConfig
    from itemsage.eval.fusion_sweep import fusion_sweep

    res, _ = result
    cfg = HybridConfig()
    model, features = str(sample_model.bundle), str(sample_model.features)
    for probe in ("search", "closeup", "item2item"):
        (row,) = fusion_sweep(model, features, "val", [cfg.lexical_weight], [cfg.rrf_k], device="cpu", probe=probe)
        assert row["probe"] == probe and row["pairs"] > 0
        for method, key in (("hybrid", "hybrid_r@10"), ("lexical", "lexical_r@10"), ("itemsage", "dense_r@10")):
            assert row[key] == res.recall(method, f"{probe}/all", 10), (probe, method)
    with pytest.raises(ValueError, match="unknown probe 'home'"):
        fusion_sweep(model, features, "val", [1.0], [60.0], device="cpu", probe="home")
