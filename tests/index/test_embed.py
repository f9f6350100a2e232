"""Batch embedding (itemsage.index.embed), incremental updates, and the index stage
(itemsage.index.pipeline) on the small sample model.

Fast tests need no Ray: content hashes, the incremental plan, and index builds from embeddings
written here. The slow ones run the Ray Data actor pool and MLflow registration.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from sample_model import (  # noqa: E402
    SampleModel,
    build_sample_model,
    one_torch_thread,
    start_ray,
    write_generic_catalog,
)
from tests.support.scripts import load_script  # noqa: E402

from itemsage.data.catalog import read_catalog  # noqa: E402
from itemsage.data.featurize import fixed_list_array  # noqa: E402
from itemsage.index import DuplicateIdError, IndexMismatchError, NonFiniteError, load_index  # noqa: E402
from itemsage.index.embed import embed_features  # noqa: E402
from itemsage.index.embeddings import (  # noqa: E402
    EMBEDDINGS_FORMAT,
    MANIFEST_FILE,
    content_hashes,
    plan_incremental,
    read_embeddings,
)
from itemsage.index.pipeline import build_and_log_index  # noqa: E402
from itemsage.index.tower_udf import EMBEDDINGS_SCHEMA, EmbedError  # noqa: E402
from itemsage.trained import load_trained  # noqa: E402

DIM = 256


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def sample_model(tmp_path_factory: pytest.TempPathFactory) -> SampleModel:
    return build_sample_model(tmp_path_factory.getbasetemp() / "sample_model")


@pytest.fixture(scope="module")
def bundle_version(sample_model: SampleModel) -> str:
    return load_trained(sample_model.bundle).version


def write_embeddings(out: Path, ids: list[str], vectors: np.ndarray, version: str, hashes: list[str] | None = None) -> Path:
    """An embeddings directory in the format embed_features writes."""
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "item_id": pa.array(ids, pa.string()),
        "embedding": fixed_list_array(np.asarray(vectors, np.float32), pa.float32()),
        "model_version": pa.array([version] * len(ids), pa.string()),
        "content_hash": pa.array(hashes or [""] * len(ids), pa.string()),
    }, schema=EMBEDDINGS_SCHEMA), out / "part-0.parquet")
    (out / MANIFEST_FILE).write_text(json.dumps({
        "format": EMBEDDINGS_FORMAT, "version": 1, "model_version": version, "dim": vectors.shape[1],
    }))
    return out


def _cli(name: str):
    return load_script(f"experiments/{name}.py")


def _unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------- fast tests


def test_content_hash_is_stable_and_sees_every_field(sample_model: SampleModel) -> None:
    items = read_catalog(sample_model.train_catalog).items.head(5)
    again = read_catalog(sample_model.train_catalog).items.head(5)
    h = content_hashes(items)
    assert h.tolist() == content_hashes(again).tolist() and len(set(h.tolist())) == 5
    for column, value in (("title", "changed title"), ("colors", "Teal"), ("image_paths", [])):
        changed = items.copy()
        changed.at[0, column] = value
        got = content_hashes(changed)
        assert got[0] != h[0] and got[1:].tolist() == h[1:].tolist(), column


def test_incremental_plan_counts_new_changed_unchanged_removed(tmp_path: Path) -> None:
    prev = write_embeddings(tmp_path / "prev", ["a", "b", "c", "gone"], _unit(4), "7", ["ha", "hb", "hc", "hg"])
    ids, hashes = ["a", "b", "c", "new"], np.array(["ha", "hB", "hc", "hn"])
    plan = plan_incremental(ids, hashes, str(prev), "7")
    assert plan.embed.tolist() == [False, True, False, True]
    assert (plan.new, plan.changed, plan.unchanged, plan.removed) == (1, 1, 2, 1)
    assert sorted(plan.carried.column("item_id").to_pylist()) == ["a", "c"]
    other = plan_incremental(ids, hashes, str(prev), "8")
    assert other.embed.all() and other.carried.num_rows == 0 and "not 8" in other.reason
    with pytest.raises(EmbedError, match="does not exist"):
        plan_incremental(ids, hashes, str(tmp_path / "nope"), "7")


def test_index_round_trip_keeps_the_model_version(sample_model: SampleModel, bundle_version: str, tmp_path: Path) -> None:
    emb_dir = write_embeddings(tmp_path / "emb", [f"i{k}" for k in range(300)], _unit(300), bundle_version)
    built = build_and_log_index(str(emb_dir), str(sample_model.bundle), tmp_path / "index", spec="Flat")
    assert built.model_version == bundle_version and built.logged_uri is None  # a local bundle: not logged
    index = load_index(built.out, expected_dim=DIM, expected_model_version=bundle_version)
    ids, _ = index.search(read_embeddings(str(emb_dir)).vectors[:5], k=1)
    assert [r[0] for r in ids] == ["i0", "i1", "i2", "i3", "i4"]
    with pytest.raises(IndexMismatchError):
        load_index(built.out, expected_model_version="999")


def test_auto_spec_runs_the_sweep(sample_model: SampleModel, bundle_version: str, tmp_path: Path) -> None:
    emb_dir = write_embeddings(tmp_path / "emb", [f"i{k}" for k in range(400)], _unit(400), bundle_version)
    built = build_and_log_index(str(emb_dir), str(sample_model.bundle), tmp_path / "index", spec="auto",
                                time_budget_s=0.05)
    assert built.sweep is not None and built.sweep.chosen.recall >= 0.95
    meta = json.loads((Path(built.out) / "metadata.json").read_text())
    assert meta["model_version"] == bundle_version and meta["sweep"]["chosen"]["spec"] == built.spec


@pytest.mark.parametrize(
    "problem, error, message",
    [
        ("nan", NonFiniteError, "NaN or inf"),
        ("duplicate", DuplicateIdError, "repeated"),
        ("dim", ValueError, "dimension 8 but the index dimension is 256"),
        ("version", IndexMismatchError, "model version other"),
    ],
)
def test_bad_embeddings_are_refused_in_one_line(problem, error, message, sample_model, bundle_version, tmp_path, capsys) -> None:
    ids, x, version = [f"i{k}" for k in range(20)], _unit(20), bundle_version
    if problem == "nan":
        x[3, 7] = np.nan
    elif problem == "duplicate":
        ids[5] = ids[4]
    elif problem == "dim":
        x = _unit(20, dim=8)
    else:
        version = "other"
    emb_dir = write_embeddings(tmp_path / "emb", ids, x, version)
    with pytest.raises(error, match=message):
        build_and_log_index(str(emb_dir), str(sample_model.bundle), tmp_path / "index", spec="Flat")
    code = _cli("build_index").main(["--embeddings", str(emb_dir), "--model", str(sample_model.bundle),
                                     "--out", str(tmp_path / "index"), "--spec", "Flat"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err and message.split()[0] in err
    assert not (tmp_path / "index").exists()


def test_embed_cli_needs_previous_with_incremental(sample_model: SampleModel, capsys) -> None:
    code = _cli("embed").main(["--model", str(sample_model.bundle), "--features", str(sample_model.features),
                               "--out", "unused", "--incremental"])
    assert code == 2 and "--previous" in capsys.readouterr().err


# ------------------------------------------------------------------------------- slow (Ray)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    start_ray()
    yield
    ray.shutdown()


@pytest.mark.slow
def test_embed_features_writes_the_schema_and_matches_in_process(ray_local, sample_model, bundle_version, tmp_path) -> None:
    from itemsage.api import ItemSage

    out = tmp_path / "emb"
    summary = embed_features(str(sample_model.bundle), str(sample_model.features), str(out), batch_size=64)
    assert (summary.total, summary.embedded, summary.carried) == (160, 160, 0)
    table = pq.read_table(out)  # the _manifest.json beside the Parquet files is not data
    assert table.schema.equals(EMBEDDINGS_SCHEMA)
    emb = read_embeddings(str(out))
    assert emb.model_version == bundle_version and emb.vectors.shape == (160, DIM)
    assert set(table.column("model_version").to_pylist()) == {bundle_version}
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    ids, ref = ItemSage.load(sample_model.bundle, device="cpu").embed_catalog(sample_model.features)
    got = dict(zip(emb.item_ids, emb.vectors))
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), ref, atol=1e-5)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["format"] == EMBEDDINGS_FORMAT and manifest["dim"] == DIM and manifest["embedded"] == 160


@pytest.mark.slow
def test_incremental_run_embeds_only_new_and_changed_items(ray_local, sample_model, tmp_path) -> None:
    first = tmp_path / "v1"
    embed_features(str(sample_model.bundle), str(sample_model.features), str(first), batch_size=64)
    before = read_embeddings(str(first))
    # The next catalog: two titles edited, one item removed, one new item (from the unseen catalog).
    items = read_catalog(sample_model.train_catalog).items
    edited = items.iloc[:2]["item_id"].tolist()
    items.loc[:1, "title"] = ["Completely new title one", "Completely new title two"]
    removed = items.iloc[2]["item_id"]
    new = read_catalog(sample_model.unseen_catalog).items.iloc[:1]
    catalog = write_generic_catalog(
        pd.concat([items.drop(index=2), new], ignore_index=True), tmp_path / "cat" / "items.jsonl")
    second = tmp_path / "v2"
    summary = embed_features(str(sample_model.bundle), str(catalog.parent), str(second), previous=str(first),
                             batch_size=64)
    assert (summary.new, summary.changed, summary.removed, summary.embedded) == (1, 2, 1, 3)
    assert summary.carried == summary.unchanged == 157 and summary.total == 160
    after = read_embeddings(str(second))
    old, cur = dict(zip(before.item_ids, before.vectors)), dict(zip(after.item_ids, after.vectors))
    assert removed not in cur and new.iloc[0]["item_id"] in cur and len(cur) == 160
    for item_id in edited:
        assert not np.allclose(cur[item_id], old[item_id], atol=1e-4)
    carried = [i for i in cur if i in old and i not in edited]
    assert len(carried) == 157 and all(np.array_equal(cur[i], old[i]) for i in carried)


@pytest.mark.slow
def test_registered_model_round_trip_logs_the_index(ray_local, sample_model, tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from itemsage.index import download_index
    from itemsage.trained import register_bundle

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("itemsage-test", artifact_location=(tmp_path / "mlruns").as_uri()))
    version = register_bundle(uri, run.info.run_id, sample_model.bundle)
    model_uri = f"models:/itemsage/{version}"

    emb_dir = tmp_path / "emb"
    summary = embed_features(model_uri, str(sample_model.features), str(emb_dir), batch_size=64)
    assert summary.model_version == version
    built = build_and_log_index(str(emb_dir), model_uri, tmp_path / "index", spec="HNSW32")
    assert built.logged_uri == f"runs:/{run.info.run_id}/index/v{version}"
    local = download_index("itemsage", version, tmp_path / "dl", tracking_uri=uri)
    index = load_index(local, expected_dim=DIM, expected_model_version=version)
    emb = read_embeddings(str(emb_dir))
    found, _ = index.search(emb.vectors[:10], k=1)
    assert [r[0] for r in found] == emb.item_ids[:10]
    # The same embeddings cannot be indexed for another model version.
    with pytest.raises(IndexMismatchError, match=f"version {version}"):
        build_and_log_index(str(emb_dir), str(sample_model.bundle), tmp_path / "index2", spec="Flat")
