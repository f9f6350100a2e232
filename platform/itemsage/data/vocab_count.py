"""The token vocabulary counted by Ray Data: the same ``Vocab`` as ``Vocab.build``, without any
process holding every distinct token of the catalog.

1. Each block of items is tokenized as ``Vocab.build`` does (``text[:max_chars_per_field]``,
   word unigrams, bigrams, boundary trigrams of the 12 fields) and counted: one row per distinct
   (kind, token) of the block.
2. Rows are hash-partitioned by token (``itemsage.data.partitions``), so all counts of a token
   meet in one partition, which sums them, drops tokens under ``min_count`` and keeps its
   ``cap`` best of each kind by (count desc, token). That pruning is exact: a token outside the
   top ``cap`` of its own partition has ``cap`` tokens above it there, so it cannot be in the
   top ``cap`` of the catalog.
3. The survivors (at most ``partitions x cap`` per kind) stream to the caller, which keeps the
   best ``cap`` of each kind in a buffer of ``2 x cap``: only about the vocabulary itself, whose
   size the config bounds, is ever held in one place.

Which items are counted is the caller's choice; preprocessing counts the training split only
(``train_items``), so held-out items never shape the vocabulary (the paper builds vocabularies
"from the training catalog"; issue 19 point 3).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from itemsage.config import TEXT_FIELDS, PreprocessConfig, TextConfig
from itemsage.data.partitions import by_key
from itemsage.data.splits import item_splits
from itemsage.data.text import Vocab, _check_config, tokenize

# Items counted per block: larger blocks repeat tokens more within a block, so fewer (kind, token)
# rows go into the shuffle; 4096 items' counters stay a few tens of MB in one task.
ITEMS_PER_COUNT_BLOCK = 4096
COUNTS_SCHEMA = pa.schema([("kind", pa.int8()), ("token", pa.string()), ("count", pa.int64())])


def block_token_counts(batch: pa.Table, cfg: TextConfig) -> pa.Table:
    """``map_batches`` step: distinct (kind, token) of a block of items with their counts."""
    counts: list[Counter[str]] = [Counter(), Counter(), Counter()]
    limit = cfg.max_chars_per_field
    for name in TEXT_FIELDS:
        for text in batch.column(name).to_pylist():
            toks = tokenize((text or "")[:limit])
            counts[0].update(toks.unigrams)
            counts[1].update(toks.bigrams)
            counts[2].update(toks.trigrams)
    kinds = [k for k, c in enumerate(counts) for _ in range(len(c))]
    return pa.table(
        [
            pa.array(kinds, type=pa.int8()),
            pa.array([t for c in counts for t in c], type=pa.string()),
            pa.array([n for c in counts for n in c.values()], type=pa.int64()),
        ],
        schema=COUNTS_SCHEMA,
    )


def caps_of(cfg: TextConfig) -> list[int]:
    return [cfg.unigram_vocab_size, cfg.bigram_vocab_size, cfg.trigram_vocab_size]


def reduce_partition(part: pa.Table, caps: list[int], min_count: int) -> pa.Table:
    """Exact totals of one token partition, then ``min_count`` and each kind's top ``cap``."""
    totals = part.group_by(["kind", "token"]).aggregate([("count", "sum")]).rename_columns(["kind", "token", "count"])
    totals = totals.filter(pc.greater_equal(totals.column("count"), min_count))
    kept = [_best(totals.filter(pc.equal(totals.column("kind"), kind)), cap) for kind, cap in enumerate(caps)]
    return pa.concat_tables(kept).cast(COUNTS_SCHEMA)


def _best(rows: pa.Table, cap: int) -> pa.Table:
    order = pc.sort_indices(rows, sort_keys=[("count", "descending"), ("token", "ascending")])
    return rows.take(order[:cap])


def select_vocab(batches: Iterable[pa.Table], cfg: TextConfig) -> Vocab:
    """The vocabulary from partition survivors in any order: per kind the best ``cap`` by (count
    desc, token), kept in a buffer of at most ``2 * cap`` rows (the size of the result, never of
    the catalog's distinct tokens)."""
    caps = caps_of(cfg)
    best: list[pa.Table] = [COUNTS_SCHEMA.empty_table() for _ in caps]
    for batch in batches:
        for kind, cap in enumerate(caps):
            rows = batch.filter(pc.equal(batch.column("kind"), kind))
            if rows.num_rows and cap:
                best[kind] = pa.concat_tables([best[kind], rows.cast(COUNTS_SCHEMA)])
                if best[kind].num_rows > 2 * cap:
                    best[kind] = _best(best[kind], cap)
    tokens = [_best(table, cap).column("token").to_pylist() for table, cap in zip(best, caps)]
    return Vocab(unigrams=tokens[0], bigrams=tokens[1], trigrams=tokens[2], cfg=cfg)


def count_vocab(
    items: Any,
    cfg: TextConfig,
    partitions: int = PreprocessConfig().partitions,
    items_per_block: int = ITEMS_PER_COUNT_BLOCK,
) -> Vocab:
    """``Vocab.build`` over the 12 text fields of every row of the Dataset ``items``."""
    _check_config(cfg)
    counts = items.select_columns(list(TEXT_FIELDS)).map_batches(
        block_token_counts, fn_kwargs={"cfg": cfg}, batch_format="pyarrow", batch_size=items_per_block
    )
    survivors = by_key(counts, "token", partitions, reduce_partition, caps=caps_of(cfg), min_count=cfg.min_count)
    return select_vocab(survivors.iter_batches(batch_format="pyarrow", batch_size=None), cfg)


# ------------------------------------------------------------------------- training items


def _train_rows(batch: pa.Table, val_fraction: float, test_fraction: float, seed: int) -> pa.Table:
    cols = ["item_id", "group"] if "group" in batch.column_names else ["item_id"]
    splits = item_splits(batch.select(cols).to_pandas(), val_fraction, test_fraction, seed)
    ids = batch.column("item_id").to_pylist()
    return batch.filter(pa.array([splits[i] == "train" for i in ids], type=pa.bool_()))


def train_items(items: Any, val_fraction: float, test_fraction: float, seed: int) -> Any:
    """The rows of ``items`` in the train split of the item-disjoint split
    (``engagement.item_splits``, decided per item or label group, so per row here)."""
    return items.map_batches(
        _train_rows,
        fn_kwargs={"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
        batch_format="pyarrow",
    )
