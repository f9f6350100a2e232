"""The Ray Data catalog stages (itemsage.data.ingest, pair_derivation, vocab_count, ingest_stages)
give what the in-memory readers give: the same items, rejects and links for every layout, the same
pairs, and the same vocabulary, counted over the training items only.

One small local Ray for the module (tests/data/conftest.py); each catalog
is ingested once (``ingested``) and the tests compare against ``read_catalog`` & co. on the same
files. The pruning of the token count is also checked without Ray, on partitions made by hand,
where a cap boundary falls inside a tie.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from itemsage.config import TEXT_FIELDS, EngagementConfig, PreprocessConfig, TextConfig
from itemsage.data.catalog import CatalogReadResult, read_catalog
from itemsage.data.copurchase import link_pairs
from itemsage.data.ingest import collect_catalog, ingest_catalog, rejects_summary
from itemsage.data.ingest_stages import build_training_vocab, training_vocab
from itemsage.data.pair_derivation import collect_pairs, link_pair_dataset, shopee_pair_dataset
from itemsage.data.partitions import partition_of
from itemsage.data.shopee_pairs import shopee_pairs
from itemsage.data.splits import item_splits
from itemsage.data.text import Vocab
from itemsage.data.vocab_count import block_token_counts, caps_of, count_vocab, reduce_partition, select_vocab

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
SMALL_TEXT = TextConfig(unigram_vocab_size=120, bigram_vocab_size=80, trigram_vocab_size=300, min_count=2)
HELD_OUT_TOKEN = "zqxjheldoutword"


def generic_catalog(root: Path) -> Path:
    """Generic JSON lines + a Parquet file with every per-record wart the checks know."""
    root.mkdir(parents=True)
    image = root / "img.jpg"
    image.write_bytes(b"\xff\xd8not really a jpeg, the read only checks it exists")
    lines = [
        "\ufeff" + json.dumps({"item_id": "a1", "title": "Red cotton shirt", "image_paths": ["img.jpg"]}),
        json.dumps({"item_id": "a2", "title": "Blue denim jeans", "colors": ["blue", "navy"], "group": "g1"}),
        '{"item_id": "broken", "title": "no closing brace"',
        "[1, 2, 3]",
        json.dumps({"item_id": "", "title": "no id"}),
        json.dumps({"item_id": "a3"}),  # empty item: a later a3 is kept
        json.dumps({"item_id": "a3", "title": "Green wool sweater", "image_paths": ["missing.jpg"]}),
        json.dumps({"item_id": "a1", "title": "a repeat of a1"}),
        json.dumps({"item_id": "a4", "title": "x" * 60, "description": "long text is cut"}),
        "",
        json.dumps({"item_id": 5, "title": 12.0, "size": 42}),
    ]
    data = "\n".join(lines).encode("utf-8")
    bad_bytes = b'{"item_id": "a6", "title": "caf\xe9 latte mug"}\n{"item_id": "a1", "title": "caf\xe9 again"}\n'
    (root / "items.jsonl").write_bytes(data + b"\n" + bad_bytes)
    table = pa.table(
        {"item_id": ["p1", "p2", "a2"], "title": ["Parquet lamp", "", "dup of a2"], "brand": ["Lumo", "", ""]}
    )
    # Sorts before items.jsonl: its a2 is read first and wins, as in read_catalog's file order.
    pq.write_table(table, root / "aa_more.parquet")
    return root


def amazon_with_cut_gzip(root: Path) -> Path:
    """The bundled Amazon sample plus a third category whose gzip stream is cut short."""
    import shutil

    shutil.copytree(SAMPLE / "amazon", root)
    records = [
        {"asin": f"C{i}", "title": f"Cut card {i} with wording", "also_view": ["C0", "B00NOTHERE"]} for i in range(400)
    ]
    data = gzip.compress(("\n".join(json.dumps(r) for r in records) + "\n").encode())
    (root / "Cut").mkdir()
    (root / "Cut" / "meta.json.gz").write_bytes(data[: len(data) * 2 // 3])
    return root


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ingest")
    return {
        "fashion": SAMPLE / "fashion",
        "shopee": SAMPLE / "shopee",
        "amazon": amazon_with_cut_gzip(tmp / "amazon"),
        "generic": generic_catalog(tmp / "generic"),
    }


@pytest.fixture(scope="module")
def ingested(ray_local, catalogs):
    """Per layout: (the Ray Data ingest, it collected, the in-memory read of the same files)."""
    max_chars = {"generic": 40}  # so a field gets cut
    out = {}
    for layout, path in catalogs.items():
        chars = max_chars.get(layout, 10_000)
        ing = ingest_catalog(path, max_field_chars=chars, partitions=3, lines_per_block=64, rows_per_block=50)
        out[layout] = (ing, collect_catalog(ing), read_catalog(path, max_field_chars=chars))
    return out


def reject_keys(result: CatalogReadResult) -> list[tuple[str, str, str, str]]:
    return sorted((r.stage, r.item_id or "", r.reason, r.detail) for r in result.rejects)


# ----------------------------------------------------------------------------- catalog


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["fashion", "shopee", "amazon", "generic"])
def test_ray_read_gives_the_items_rejects_and_links_of_read_catalog(ingested, layout):
    ing, got, expected = ingested[layout]
    assert got.layout == expected.layout == layout
    assert got.source == expected.source
    pd.testing.assert_frame_equal(got.items, expected.items)
    assert reject_keys(got) == reject_keys(expected)
    assert rejects_summary(ing) == expected.reject_counts()
    if expected.links is None:
        assert got.links is None
    else:
        pd.testing.assert_frame_equal(got.links, expected.links)


@pytest.mark.slow
def test_the_warts_are_really_there(ingested):
    """The equality above means something only if the inputs hit every reject path."""
    _, generic, _ = ingested["generic"]
    reasons = set(generic.reject_counts())
    assert {
        "malformed_row",
        "missing_id",
        "empty_item",
        "duplicate_id",
        "missing_image",
        "non_utf8_text",
        "truncated_field",
    } <= reasons
    items = generic.items.set_index("item_id")
    assert items.loc["a3", "title"] == "Green wool sweater"  # an empty first a3 does not block it
    assert items.loc["a1", "title"] == "Red cotton shirt"  # the first kept a1 wins
    assert items.loc["a2", "title"] == "dup of a2"  # the Parquet file comes first
    assert "group" in generic.items.columns and items.loc["a1", "group"] == "item:a1"
    amazon_ing, amazon, _ = ingested["amazon"]
    assert amazon_ing.duplicates >= 1
    cut = [r for r in amazon.rejects if "unreadable after line" in r.detail]
    assert len(cut) == 1 and cut[0].detail.startswith("Cut/meta.json.gz")


# ------------------------------------------------------------------------------- pairs


@pytest.mark.slow
def test_shopee_pairs_by_ray_are_the_label_group_pairs(ingested):
    ing, _, expected = ingested["shopee"]
    got = collect_pairs(shopee_pair_dataset(ing.items, 3))
    want = shopee_pairs(expected.items)
    assert len(got) == len(want) > 0

    def rows(df):
        return sorted(map(tuple, df.astype(str).to_numpy().tolist()))

    assert rows(got) == rows(want)


@pytest.mark.slow
def test_amazon_link_pairs_by_ray_are_link_pairs(ingested):
    ing, _, expected = ingested["amazon"]
    pairs, rejects, counts = link_pair_dataset(ing.items, ing.links, 3)
    want_pairs, want_rejects, want_counts = link_pairs(expected.links, expected.items["item_id"])
    pd.testing.assert_frame_equal(collect_pairs(pairs), want_pairs)
    assert counts == want_counts and counts["also_view_outside_catalog"] > 0
    assert rejects == want_rejects


# ------------------------------------------------------------------------------- vocab


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["amazon", "shopee"])
def test_ray_vocab_of_the_train_items_is_vocab_build(ingested, layout):
    ing, _, expected = ingested[layout]
    cfg = PreprocessConfig(
        text=SMALL_TEXT, partitions=3, engagement=EngagementConfig(val_fraction=0.2, test_fraction=0.2)
    )
    got = training_vocab(cfg, ing)
    assert got == build_training_vocab(expected.items, cfg)
    assert got.sizes == {"unigram": 120, "bigram": 80, "trigram": 300}  # the caps bind: pruning is exercised
    # and it is not the whole catalog's vocabulary
    assert got != count_vocab(ing.items, SMALL_TEXT, 3)


@pytest.mark.slow
def test_a_token_only_held_out_items_have_is_not_in_the_vocabulary(ray_local, tmp_path):
    ec = EngagementConfig(val_fraction=0.3, test_fraction=0.3, seed=0)
    ids = [f"item{i}" for i in range(40)]
    split = item_splits(pd.DataFrame({"item_id": ids}), ec.val_fraction, ec.test_fraction, ec.seed)
    held_out = next(i for i in ids if split[i] == "test")
    records = [
        {"item_id": i, "title": f"plain product {i}" + (f" {HELD_OUT_TOKEN}" if i == held_out else "")} for i in ids
    ]
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    cfg = PreprocessConfig(catalog=str(path), engagement=ec, partitions=2)
    ing = ingest_catalog(path, partitions=2)
    vocab = training_vocab(cfg, ing)
    assert vocab.id_of("unigram", HELD_OUT_TOKEN) is None
    assert vocab.id_of("unigram", "plain") is not None
    everything = count_vocab(ing.items, cfg.text, 2)  # what the old whole-catalog rule counted
    assert everything.id_of("unigram", HELD_OUT_TOKEN) is not None
    assert build_training_vocab(read_catalog(path).items, cfg) == vocab


def test_token_pruning_per_partition_is_exact_at_a_tie_on_the_cap():
    """No Ray: blocks counted, split into hash partitions by hand, pruned, selected -> Vocab.build."""
    texts = ["aa bb cc dd", "aa bb cc ee", "aa bb ff gg", "hh ii jj kk", "aa cc ee gg ii", "ll mm nn"] * 3
    texts += ["oo pp", "qq rr", "ss tt", "aa"]
    cfg = TextConfig(unigram_vocab_size=7, bigram_vocab_size=5, trigram_vocab_size=11, min_count=2)
    blocks = [texts[i : i + 4] for i in range(0, len(texts), 4)]
    counts = pa.concat_tables(
        [
            block_token_counts(pa.table({f: block if f == "title" else [""] * len(block) for f in TEXT_FIELDS}), cfg)
            for block in blocks
        ]
    )
    parts = partition_of(counts.column("token"), 3)
    survivors = [reduce_partition(counts.filter(pa.array(parts == p)), caps_of(cfg), cfg.min_count) for p in range(3)]
    assert select_vocab(survivors, cfg) == Vocab.build(texts, cfg)
    # The same with the survivors in one batch, and with caps that keep everything.
    assert select_vocab([pa.concat_tables(survivors)], cfg) == Vocab.build(texts, cfg)
    roomy = TextConfig(min_count=1)
    survivors = [reduce_partition(counts.filter(pa.array(parts == p)), caps_of(roomy), 1) for p in range(3)]
    assert select_vocab(survivors, roomy) == Vocab.build(texts, roomy)
