"""Preprocessing end to end (itemsage.data.pipeline) on a slice of the bundled sample, with bad input.

The pipeline runs once per module on a small local Ray (2 CPUs, tests/data/conftest.py): a fashion
slice where four items' images are broken in the four ways a catalog breaks them (empty file, text
bytes, truncated JPEG, missing file). The other tests read that one output, so the suite stays
within a few minutes on two cores.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from itemsage.config import TEXT_FIELDS, EngagementConfig, ImageConfig, PreprocessConfig
from itemsage.data.catalog import read_catalog
from itemsage.data.features_io import staged_output
from itemsage.data.featurize import plan_stages
from itemsage.data.images import get_backbone, load_image
from itemsage.data.layouts import CatalogError
from itemsage.data.pipeline import run_preprocess
from itemsage.data.splits import item_splits
from itemsage.data.text import Vocab

N_ITEMS = 14
IMAGE_DIM = 1280
TEXT_DIM = 384
BAD_CASES = {  # how the image is broken -> the reject (stage, reason) it must produce
    "zero_bytes": ("image", "corrupt_image"),
    "text_bytes": ("image", "not_an_image"),
    "truncated_jpeg": ("image", "truncated_image"),
    "missing_file": ("catalog", "missing_image"),
}
ITEM_COLUMNS = [
    ("item_idx", pa.int64()), ("item_id", pa.string()), ("n_images", pa.int32()),
    ("image_feats", pa.list_(pa.float32())), ("title_emb", pa.list_(pa.float32())),
    *[(f"tok_{f}", pa.list_(pa.int32())) for f in TEXT_FIELDS],
]
PAIR_COLUMNS = [("surface", pa.string()), ("action", pa.string()), ("task", pa.string()),
                ("query_key", pa.int64()), ("item_idx", pa.int64()), ("source", pa.string())]


def small_config(catalog: Path, output: str) -> PreprocessConfig:
    """Tiny engagement volumes and batches: the point is coverage of every path, not scale."""
    return PreprocessConfig(
        catalog=str(catalog),
        output=output,
        image=ImageConfig(batch_size=4),
        engagement=EngagementConfig(num_users=12, search_pairs=120, closeup_pairs=120, home_pairs=80,
                                    val_fraction=0.25, test_fraction=0.25),
        rows_per_block=8,
    )


def fashion_slice(sample: Path, dest: Path, n: int) -> list[str]:
    """Copy the first ``n`` sample products (styles.csv rows + images) to ``dest``; their ids."""
    with (sample / "styles.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [r for r, _ in zip(reader, range(n))]
    (dest / "images").mkdir(parents=True)
    with (dest / "styles.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    for r in rows:
        shutil.copy(sample / "images" / f"{r[0]}.jpg", dest / "images" / f"{r[0]}.jpg")
    return [r[0] for r in rows]


def shopee_slice(sample: Path, dest: Path, groups: int) -> Path:
    """The sample's listings of its first ``groups`` label groups (whole groups, so pairs exist)."""
    with (sample / "train.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    group = header.index("label_group")
    keep = list(dict.fromkeys(r[group] for r in rows))[:groups]
    dest.mkdir(parents=True)
    with (dest / "train.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *(r for r in rows if r[group] in keep)])
    return dest


def break_images(images: Path, ids: list[str]) -> dict[str, str]:
    """Break one image per ``BAD_CASES`` entry; returns case -> item_id."""
    cases = dict(zip(BAD_CASES, ids))
    (images / f"{cases['zero_bytes']}.jpg").write_bytes(b"")
    (images / f"{cases['text_bytes']}.jpg").write_text("this is a product description, not a JPEG\n")
    path = images / f"{cases['truncated_jpeg']}.jpg"
    path.write_bytes(path.read_bytes()[:2000])
    (images / f"{cases['missing_file']}.jpg").unlink()
    return cases


@pytest.fixture(scope="module")
def bad_catalog(tmp_path_factory, sample_dir) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("catalog") / "fashion"
    ids = fashion_slice(sample_dir / "fashion", root, N_ITEMS)
    return root, break_images(root / "images", ids[1:5])


@pytest.fixture(scope="module")
def run(ray_local, bad_catalog, tmp_path_factory):
    catalog, cases = bad_catalog
    out = tmp_path_factory.mktemp("out") / "features"
    cfg = small_config(catalog, str(out))
    summary = run_preprocess(cfg)
    return cfg, summary, out, cases


def read(out: Path, name: str) -> pa.Table:
    return pq.read_table(out / name)


def by_id(table: pa.Table) -> dict[str, int]:
    return {item_id: i for i, item_id in enumerate(table.column("item_id").to_pylist())}


# ------------------------------------------------------------------------------ the format


@pytest.mark.slow
def test_directory_holds_exactly_the_format_files(run):
    _, _, out, _ = run
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted([
        "manifest.json", "vocab.json", "catalog.parquet", "items.parquet", "queries.parquet",
        "users.parquet", "pairs/train.parquet", "pairs/val.parquet", "pairs/test.parquet",
        "rejects.jsonl", "summary.json",
    ])
    siblings = [p.name for p in out.parent.iterdir() if p.name != out.name]
    assert siblings == [], "staging directories must not be left behind"


@pytest.mark.slow
def test_table_schemas_match_the_format(run):
    _, _, out, _ = run
    assert read(out, "items.parquet").schema == pa.schema(ITEM_COLUMNS)
    assert read(out, "queries.parquet").schema == pa.schema(
        [("query_idx", pa.int64()), ("text", pa.string()), ("text_emb", pa.list_(pa.float32()))])
    assert read(out, "users.parquet").schema == pa.schema(
        [("user_idx", pa.int64()), ("user_id", pa.string()), ("history", pa.list_(pa.int64())),
         ("user_feat", pa.list_(pa.float32()))])
    for split in ("train", "val", "test"):
        assert read(out, f"pairs/{split}.parquet").schema == pa.schema(PAIR_COLUMNS)
    catalog = read(out, "catalog.parquet")
    assert catalog.column_names == ["item_id", "image_paths", *TEXT_FIELDS]
    assert catalog.schema.field("image_paths").type == pa.list_(pa.string())


@pytest.mark.slow
def test_rows_follow_item_idx_and_the_catalog_order(run):
    cfg, _, out, _ = run
    items, catalog = read(out, "items.parquet"), read(out, "catalog.parquet")
    expected = read_catalog(cfg.catalog).items
    assert items.column("item_idx").to_pylist() == list(range(len(expected)))
    assert items.column("item_id").to_pylist() == expected["item_id"].tolist()
    assert catalog.column("item_id").to_pylist() == expected["item_id"].tolist()
    assert catalog.column("title").to_pylist() == expected["title"].tolist()


@pytest.mark.slow
def test_feature_dimensions(run):
    _, _, out, _ = run
    items = read(out, "items.parquet").to_pydict()
    for n, feats, title in zip(items["n_images"], items["image_feats"], items["title_emb"]):
        assert len(feats) == n * IMAGE_DIM
        assert len(title) == TEXT_DIM
    queries = read(out, "queries.parquet")
    assert queries.num_rows > 0
    assert {len(v) for v in queries.column("text_emb").to_pylist()} == {TEXT_DIM}
    assert queries.column("query_idx").to_pylist() == list(range(queries.num_rows))
    users = read(out, "users.parquet")
    assert users.num_rows > 0
    assert {len(v) for v in users.column("user_feat").to_pylist()} == {IMAGE_DIM + TEXT_DIM}


@pytest.mark.slow
def test_image_features_are_the_backbone_features(run, bad_catalog):
    _, _, out, cases = run
    catalog, _ = bad_catalog
    items = read(out, "items.parquet")
    good = next(i for i in by_id(items) if i not in cases.values())
    row = by_id(items)[good]
    backbone = get_backbone("efficientnet-lite0")
    x = backbone.preprocess(load_image(str(catalog / "images" / f"{good}.jpg"), 40_000_000))[None]
    expected = backbone(x).detach().numpy()[0]
    got = np.asarray(items.column("image_feats")[row].as_py(), dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_title_and_query_embeddings_are_minilm(run):
    from itemsage.data.text_encoder import TextEncoder

    _, _, out, _ = run
    items, catalog, queries = read(out, "items.parquet"), read(out, "catalog.parquet"), read(out, "queries.parquet")
    encoder = TextEncoder()
    titles = catalog.column("title").to_pylist()[:3]
    np.testing.assert_allclose(np.asarray(items.column("title_emb").to_pylist()[:3], dtype=np.float32),
                               encoder.encode(titles), atol=1e-4)
    texts = queries.column("text").to_pylist()[:3]
    np.testing.assert_allclose(np.asarray(queries.column("text_emb").to_pylist()[:3], dtype=np.float32),
                               encoder.encode(texts), atol=1e-4)


@pytest.mark.slow
def test_token_ids_come_from_the_saved_vocab(run):
    cfg, _, out, _ = run
    vocab = Vocab.load(out / "vocab.json")
    catalog = read(out, "catalog.parquet").to_pydict()
    # Built from the training items' text only (held-out items never shape it), with the run's
    # text config, and saved unchanged.
    ec = cfg.engagement
    split = item_splits(read(out, "catalog.parquet").to_pandas(), ec.val_fraction, ec.test_fraction, ec.seed)
    train = [i for i, item_id in enumerate(catalog["item_id"]) if split[item_id] == "train"]
    assert 0 < len(train) < len(catalog["item_id"])
    assert vocab == Vocab.build((catalog[f][i] for f in TEXT_FIELDS for i in train), cfg.text)
    items = read(out, "items.parquet").to_pydict()
    for field in TEXT_FIELDS:
        for text, ids in zip(catalog[field], items[f"tok_{field}"]):
            assert ids == vocab.encode(text).tolist(), field
    assert any(items["tok_title"]) and any(items["tok_category_path"])


@pytest.mark.slow
def test_user_histories_hold_only_train_items(run):
    cfg, _, out, _ = run
    items = read(out, "items.parquet")
    ec = cfg.engagement
    splits = item_splits(read(out, "catalog.parquet").to_pandas(), ec.val_fraction, ec.test_fraction, ec.seed)
    ids = items.column("item_id").to_pylist()
    histories = read(out, "users.parquet").column("history").to_pylist()
    assert all(len(h) > 0 for h in histories)
    assert {splits[ids[i]] for h in histories for i in h} == {"train"}


@pytest.mark.slow
def test_user_feat_is_mean_of_history_features(run):
    _, _, out, _ = run
    items = read(out, "items.parquet").to_pydict()
    users = read(out, "users.parquet").to_pydict()
    history, feat = users["history"][0], np.asarray(users["user_feat"][0], dtype=np.float32)
    firsts = [items["image_feats"][i][:IMAGE_DIM] for i in history if items["n_images"][i] > 0]
    image_part = np.mean(firsts, axis=0) if firsts else np.zeros(IMAGE_DIM)
    title_part = np.mean([items["title_emb"][i] for i in history], axis=0)
    np.testing.assert_allclose(feat, np.concatenate([image_part, title_part]), atol=1e-5)


@pytest.mark.slow
def test_pairs_map_to_valid_keys_and_splits_are_item_disjoint(run):
    _, _, out, _ = run
    items = read(out, "items.parquet").to_pydict()
    n_items = len(items["item_idx"])
    n_queries = read(out, "queries.parquet").num_rows
    n_users = read(out, "users.parquet").num_rows
    engaged = {}
    for split in ("train", "val", "test"):
        pairs = read(out, f"pairs/{split}.parquet").to_pydict()
        engaged[split] = set(pairs["item_idx"])
        for surface, action, task, key, item, source in zip(*pairs.values()):
            assert task == f"{surface}/{action}"
            assert source == "synthetic"
            assert 0 <= item < n_items
            if surface == "search":
                assert 0 <= key < n_queries
            elif surface == "closeup":
                # A viewed item whose images all failed to decode is queried by its item features.
                assert 0 <= key < n_items
            else:
                assert surface == "home" and 0 <= key < n_users
    assert engaged["train"] and engaged["val"] | engaged["test"]
    assert not engaged["train"] & engaged["val"] and not engaged["train"] & engaged["test"]
    assert not engaged["val"] & engaged["test"]


@pytest.mark.slow
def test_manifest_and_summary(run):
    cfg, summary, out, _ = run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["layout"] == "fashion" and manifest["engagement_source"] == "synthetic"
    assert manifest["backbone"] == "efficientnet-lite0"
    assert manifest["image_dim"] == IMAGE_DIM and manifest["text_query_dim"] == TEXT_DIM
    assert manifest["text_fields"] == list(TEXT_FIELDS)
    assert manifest["counts"]["items"] == N_ITEMS
    assert manifest["vocab_sizes"] == Vocab.load(out / "vocab.json").sizes
    assert manifest["created_at"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["items"] == summary.items == N_ITEMS
    assert saved["items_with_images"] == N_ITEMS - len(BAD_CASES)
    assert saved["images"] == N_ITEMS - 1  # the missing file never reaches the image stage
    assert saved["images_featurized"] == N_ITEMS - len(BAD_CASES)
    assert saved["pairs"] == summary.pairs and saved["items_per_s"] > 0
    table = summary.table()
    for label in ("items", "items with images", "images featurized", "skipped image/not_an_image",
                  "pairs train", "time total", "items/s"):
        assert label in table


# ----------------------------------------------------------------------------- bad input


@pytest.mark.slow
def test_every_broken_image_has_a_reject_and_its_item_keeps_text(run):
    _, _, out, cases = run
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert all(set(r) == {"stage", "item_id", "reason", "detail"} for r in rejects)
    items = read(out, "items.parquet").to_pydict()
    row = {item_id: i for i, item_id in enumerate(items["item_id"])}
    for case, item_id in cases.items():
        assert (BAD_CASES[case][0], item_id, BAD_CASES[case][1]) in {
            (r["stage"], r["item_id"], r["reason"]) for r in rejects}, case
        i = row[item_id]
        assert items["n_images"][i] == 0 and items["image_feats"][i] == []
        assert items["tok_title"][i] and items["tok_category_path"][i], case
        assert np.abs(items["title_emb"][i]).sum() > 0, case
    good = [i for item_id, i in row.items() if item_id not in cases.values()]
    assert all(items["n_images"][i] == 1 for i in good)


@pytest.mark.slow
def test_closeup_pairs_of_items_without_image_features_are_kept(run):
    """Their item features are the query (features_read.ITEM_QUERY), so no pair is dropped for it."""
    _, summary, out, cases = run
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert not [r for r in rejects if r["stage"] == "pairs" and r["reason"].startswith("closeup")]
    assert not [k for k in summary.skipped if k.startswith("pairs/closeup")]


def test_nonexistent_catalog_is_one_clear_error(tmp_path):
    missing = tmp_path / "no-such-catalog"
    cfg = PreprocessConfig(catalog=str(missing), output=str(tmp_path / "out"))
    with pytest.raises(CatalogError, match="does not exist") as err:
        run_preprocess(cfg)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_reports_bad_input_in_one_line_with_exit_code_2(tmp_path, capsys):
    from tests.support.scripts import load_script

    cli = load_script("experiments/preprocess.py")
    for args, needle in (([f"catalog={tmp_path / 'nope'}"], "does not exist"),
                         (["preprocess.catalog=data/sample/fashion", "layout=weird"], "unknown catalog layout"),
                         (["image.bogus=1"], "preprocess.image.bogus")):
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err


# ------------------------------------------------------------------ atomic (re)writes


@pytest.mark.slow
def test_rerun_over_existing_output_replaces_it_whole(run, ray_local, sample_dir, tmp_path):
    """A second run into a used directory (here through a file:// URI, on the Shopee layout)
    leaves exactly the new run's files: nothing stale, nothing staged."""
    _, _, first, _ = run
    out = tmp_path / "features"
    shutil.copytree(first, out)
    (out / "stale-from-an-older-format.txt").write_text("old")
    shopee = shopee_slice(sample_dir / "shopee", tmp_path / "shopee", groups=12)
    summary = run_preprocess(small_config(shopee, out.as_uri()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "shopee"]
    assert not (out / "stale-from-an-older-format.txt").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layout"] == "shopee" and manifest["engagement_source"] == "shopee"
    items = read(out, "items.parquet")
    assert items.num_rows == summary.items == read_catalog(shopee).items.shape[0]
    assert set(items.column("n_images").to_pylist()) == {0}
    assert items.schema == pa.schema(ITEM_COLUMNS)
    pairs = read(out, "pairs/train.parquet").to_pydict()
    assert set(pairs["source"]) == {"shopee"} and set(pairs["task"]) == {"search/click"}


def test_failed_write_keeps_the_previous_output(tmp_path):
    out = tmp_path / "features"
    out.mkdir()
    (out / "manifest.json").write_text('{"run": 1}')
    with pytest.raises(RuntimeError, match="disk full"), staged_output(str(out)) as staged:
        staged.write_json("manifest.json", {"run": 2})
        raise RuntimeError("disk full")
    assert json.loads((out / "manifest.json").read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["features"]


# --------------------------------------------------------------------------- resources


@pytest.mark.parametrize("cpus,gpus,concurrency", [(2, 0, 1), (2, 0, 2), (2, 0, 3), (1, 0, 1), (16, 0, 4), (8, 1, 1)])
def test_stage_plan_always_leaves_cpu_for_decode_tasks(cpus, gpus, concurrency):
    plan = plan_stages({"CPU": cpus, "GPU": gpus}, concurrency)
    assert plan.actor_cpus * plan.concurrency + plan.decode_cpus <= cpus + 1e-9
    assert plan.decode_cpus > 0 and plan.actor_cpus > 0 and plan.torch_threads >= 1
    assert plan.actor_gpus == (1.0 if gpus else 0.0)


def test_stage_plan_never_asks_for_more_gpu_actors_than_gpus():
    assert plan_stages({"CPU": 16, "GPU": 2}, concurrency=4).concurrency == 2
    assert plan_stages({"CPU": 16, "GPU": 8}, concurrency=4).concurrency == 4
