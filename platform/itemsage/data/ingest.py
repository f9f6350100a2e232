"""Catalog reading as Ray Data operations: every layout streams through Ray Data, so no process
holds the whole catalog and the driver holds only counts and references.

The result is what ``itemsage.data.catalog.read_catalog`` returns (same items, same rejects, same
links), but as Datasets (``CatalogIngest``); ``collect_catalog`` turns one into the pandas
``CatalogReadResult`` where a caller needs it in memory. The stages:

1. **Read** (``itemsage.data.ingest_read``): one Ray task per file streams it in blocks.
   Line formats (amazon, generic JSON lines) hand on raw lines, parsed in parallel by
   ``map_batches``; CSV (fashion, shopee) and Parquet records are parsed in the read task itself,
   because a CSV record may span lines and only a front-to-back pass knows where it starts.
2. **Per-record checks**: each record becomes one row of ``RECORD_SCHEMA`` through the same
   adapters and checks as ``read_catalog`` (``catalog.normalise_raw``), carrying its own rejects.
   Fashion's brand rule needs one catalog-wide count first (title prefixes that start >= 2
   titles; only the recurring prefixes, one per brand, reach the driver).
3. **Duplicate ids**: rows are hash-partitioned by id (``itemsage.data.partitions``); in each
   partition the first kept row (file, then line order) of an id wins and every later row with
   that id is a loser (``duplicate_id``, replacing its own check rejects, as the sequential reader
   never checks a repeat). Only the losers' positions are broadcast to the tasks that filter.
4. **Items, rejects, links**: Datasets of the kept items (with ``order``, the catalog position),
   of every reject, and (amazon) of the ``also_buy``/``also_view`` links of kept items.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from itemsage.config import TEXT_FIELDS, PreprocessConfig
from itemsage.data.amazon import AMAZON_CONSTANTS, amazon_files, file_label, parse_amazon_line
from itemsage.data.catalog import CatalogReadResult
from itemsage.data.ingest_read import (
    FILE_SHIFT,
    iter_raw_lines,
    line_blocks,
    order_key,
    read_file_blocks,
    strip_newline,
)
from itemsage.data.layout_amazon import amazon_images
from itemsage.data.layout_fashion import (
    FASHION_CONSTANTS,
    check_fashion_header,
    fashion_images_dir,
    fashion_raw,
    fashion_styles,
    title_prefix,
)
from itemsage.data.layout_generic import generic_files, generic_raw
from itemsage.data.layout_shopee import (
    SHOPEE_CONSTANTS,
    check_shopee_header,
    shopee_images_dir,
    shopee_raw,
    shopee_train,
)
from itemsage.data.layouts import layout_error, resolve_layout
from itemsage.data.partitions import by_key
from itemsage.data.raw_items import (
    LINK_COLUMNS,
    MAX_FIELD_CHARS,
    STAGE,
    RawItem,
    duplicate_reject,
    item_group,
    normalise_raw,
    raw_item_id,
)
from itemsage.data.records import parse_json_object, read_csv_rows
from itemsage.data.rejects import Reject

LINK_ACTIONS: tuple[str, ...] = ("also_buy", "also_view")
PREFIXES_PER_BLOCK = 65_536
_DEFAULTS = PreprocessConfig()
REJECT_TYPE = pa.struct(
    [("stage", pa.string()), ("item_id", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)
# One row per source record (or per reject that belongs to no record, e.g. a malformed line).
RECORD_SCHEMA = pa.schema(
    [
        ("order", pa.int64()),
        ("where", pa.string()),
        ("item_id", pa.string()),  # "" when the record has none
        ("kept", pa.bool_()),  # passed the per-record checks (not yet the duplicate check)
        ("image_paths", pa.list_(pa.string())),
        *[(f, pa.string()) for f in TEXT_FIELDS],
        ("group", pa.string()),
        ("has_group_key", pa.bool_()),
        ("price", pa.float64()),
        *[(a, pa.list_(pa.string())) for a in LINK_ACTIONS],
        # Rejects of parsing (kept even for a repeated id) and of the checks (replaced by
        # duplicate_id for a repeated id, which the sequential reader never checks).
        ("parse_rejects", pa.list_(REJECT_TYPE)),
        ("check_rejects", pa.list_(REJECT_TYPE)),
    ]
)
REJECTS_SCHEMA = pa.schema([("order", pa.int64()), ("seq", pa.int32()), *[(f.name, f.type) for f in REJECT_TYPE]])
LINKS_SCHEMA = pa.schema([("order", pa.int64()), ("seq", pa.int32()), *[(c, pa.string()) for c in LINK_COLUMNS]])


@dataclass(frozen=True)
class ReadSettings:
    """What the per-record checks need; travels to every Ray task."""

    layout: str
    max_images: int
    max_field_chars: int
    images_dir: str | None = None


@dataclass
class CatalogIngest:
    """A catalog read by Ray Data: Datasets, not tables (see the module docstring)."""

    items: Any  # ray.data.Dataset: order, item_id, image_paths, TEXT_FIELDS, [group], [price]
    rejects: Any  # ray.data.Dataset of REJECTS_SCHEMA
    links: Any | None  # ray.data.Dataset of LINKS_SCHEMA (amazon), else None
    layout: str
    source: str
    item_columns: list[str]
    duplicates: int


# ----------------------------------------------------------------------------- record rows


class _RecordRows:
    """Columns of ``RECORD_SCHEMA`` being filled one record at a time."""

    def __init__(self, settings: ReadSettings) -> None:
        self.settings = settings
        self.cols: dict[str, list[Any]] = {name: [] for name in RECORD_SCHEMA.names}

    def rejects_only(self, order: int, rejects: list[Reject]) -> None:
        self._row(order, "", "", False, [], {}, None, False, math.nan, {}, rejects, [])

    def record(
        self,
        order: int,
        raw: RawItem,
        parse_rejects: list[Reject],
        constants: dict[str, str],
        has_group_key: bool = False,
    ) -> None:
        s = self.settings
        check: list[Reject] = []
        ident = raw_item_id(raw, check)
        if ident is None:
            self._row(order, raw.where, "", False, [], {}, None, has_group_key, math.nan, {}, parse_rejects, check)
            return
        item_id, bad_id = ident
        normalised = normalise_raw(raw, item_id, bad_id, check, s.max_images, s.max_field_chars)
        fields: dict[str, str] = {}
        paths: list[str] = []
        if normalised is not None:
            fields, paths = normalised
            for name, value in constants.items():
                fields[name] = fields[name] or value
        price = raw.numeric.get("price", math.nan)
        self._row(
            order,
            raw.where,
            item_id,
            normalised is not None,
            paths,
            fields,
            item_group(raw.group, item_id),
            has_group_key,
            price,
            raw.links if normalised is not None else {},
            parse_rejects,
            check,
        )

    def _row(
        self,
        order: int,
        where: str,
        item_id: str,
        kept: bool,
        paths: list[str],
        fields: dict[str, str],
        group: str | None,
        has_group_key: bool,
        price: float,
        links: dict[str, list[str]],
        parse_rejects: list[Reject],
        check_rejects: list[Reject],
    ) -> None:
        c = self.cols
        c["order"].append(order)
        c["where"].append(where)
        c["item_id"].append(item_id)
        c["kept"].append(kept)
        c["image_paths"].append(paths)
        for name in TEXT_FIELDS:
            c[name].append(fields.get(name, ""))
        c["group"].append(group)
        c["has_group_key"].append(has_group_key)
        c["price"].append(price)
        for action in LINK_ACTIONS:
            c[action].append(links.get(action, []))
        c["parse_rejects"].append([r.to_dict() for r in parse_rejects])
        c["check_rejects"].append([r.to_dict() for r in check_rejects])

    def table(self) -> pa.Table:
        out = pa.table(self.cols, schema=RECORD_SCHEMA)
        self.cols = {name: [] for name in RECORD_SCHEMA.names}
        return out

    def __len__(self) -> int:
        return len(self.cols["order"])


# --------------------------------------------------------------------------- line formats


def parse_lines(batch: pa.Table, settings: ReadSettings, labels: list[str], folders: list[str]) -> pa.Table:
    """``map_batches`` step: a block of raw lines (``ingest_read.LINES_SCHEMA``) -> record rows."""
    rows = _RecordRows(settings)
    images_dir = Path(settings.images_dir) if settings.images_dir else None
    columns = batch.to_pydict()
    for order, n, line, error in zip(columns["order"], columns["line_no"], columns["line"], columns["error"]):
        label = labels[order >> FILE_SHIFT]
        if error is not None:
            detail = f"{label}: unreadable after line {n} ({error}); the lines before it are kept"
            rows.rejects_only(order, [Reject(STAGE, None, "malformed_row", detail)])
            continue
        where = f"{label} line {n}"
        if settings.layout == "amazon":
            product, reject = parse_amazon_line(line, where)
            parse_rejects = [reject] if reject is not None else []
            if product is None:
                if parse_rejects:
                    rows.rejects_only(order, parse_rejects)
                continue
            raw = RawItem(
                where=where,
                item_id=product.item_id,
                fields=product.fields,
                image_paths=amazon_images(product.image_names, images_dir),
                numeric={"price": math.nan if product.price is None else product.price},
                links={"also_buy": product.also_buy, "also_view": product.also_view},
            )
            rows.record(order, raw, parse_rejects, AMAZON_CONSTANTS)
            continue
        text = strip_newline(line).decode("utf-8", errors="surrogateescape")
        if n == 1:
            text = text.lstrip("\ufeff")
        if not text.strip():
            continue
        rec, why = parse_json_object(text)
        if rec is None:
            rows.rejects_only(order, [Reject(STAGE, None, "malformed_row", f"{where}: {why}")])
            continue
        rows.record(order, generic_raw(where, rec, folders[order >> FILE_SHIFT]), [], {}, "group" in rec)
    return rows.table()


def _line_reader(file_index: int, path: str, lines_per_block: int) -> Any:
    return line_blocks(file_index, path, lines_per_block)


# ------------------------------------------------------------------------- record formats


def _decoded_lines(path: str) -> Any:
    """The lines of a text file as ``read_text(...).split("\\n")`` gives them, streamed."""
    for n, line in iter_raw_lines(path):
        text = strip_newline(line).decode("utf-8", errors="surrogateescape")
        yield text.lstrip("\ufeff") if n == 1 else text


def _csv_blocks(
    file_index: int,
    path: str,
    settings: ReadSettings,
    rows_per_block: int,
    recurring: frozenset[bytes] = frozenset(),
) -> Any:
    """Read task of a fashion styles.csv / Shopee train.csv: record rows, in file order."""
    rows = _RecordRows(settings)
    rejects: list[Reject] = []
    position = 0

    def flush_rejects() -> None:
        nonlocal position
        for r in rejects:
            position += 1
            rows.rejects_only(order_key(file_index, position), [r])
        rejects.clear()

    csv_path = Path(path)
    if settings.layout == "fashion":
        header, records = read_csv_rows(
            _decoded_lines(path), rejects, stage=STAGE, id_column="id", free_text_column="productDisplayName"
        )
        images = fashion_images_dir(csv_path)
        constants = FASHION_CONSTANTS
    else:
        header, records = read_csv_rows(
            _decoded_lines(path), rejects, stage=STAGE, id_column="posting_id", free_text_column="title"
        )
        shopee_images = shopee_images_dir(csv_path, header)
        constants = SHOPEE_CONSTANTS
    for where, r in records:
        flush_rejects()
        position += 1
        if settings.layout == "fashion":
            raw = fashion_raw(where, r, images, lambda p: p.encode("utf-8", "surrogateescape") in recurring)
        else:
            raw = shopee_raw(where, r, shopee_images)
        rows.record(order_key(file_index, position), raw, [], constants)
        if len(rows) >= rows_per_block:
            yield rows.table()
    flush_rejects()
    if len(rows):
        yield rows.table()


def _title_prefix_blocks(file_index: int, path: str) -> Any:
    """Read task of the fashion brand count: the lower-cased title prefix of every record."""
    _, records = read_csv_rows(
        _decoded_lines(path), [], stage=STAGE, id_column="id", free_text_column="productDisplayName"
    )
    prefixes = [
        p.lower().encode("utf-8", "surrogateescape") for _, r in records if (p := title_prefix(r["productDisplayName"]))
    ]
    yield pa.table({"prefix": pa.array(prefixes, type=pa.binary())})


def _parquet_blocks(file_index: int, path: str, settings: ReadSettings, rows_per_block: int) -> Any:
    """Read task of a generic Parquet file: record rows, in row order."""
    rows = _RecordRows(settings)
    file = Path(path)
    parquet = pq.ParquetFile(file)
    n = 0
    for batch in parquet.iter_batches(batch_size=rows_per_block):
        for rec in batch.to_pylist():
            n += 1
            where = f"{file.name} row {n}"
            rows.record(order_key(file_index, n), generic_raw(where, rec, str(file.parent)), [], {}, "group" in rec)
        yield rows.table()


def _check_parquet(file: Path) -> None:
    """Refuse an unreadable Parquet file by name before any task starts (as ``read_catalog``)."""
    try:
        names = pq.ParquetFile(file).schema_arrow.names
    except (pa.ArrowException, OSError) as e:
        raise layout_error(file, f"not a readable Parquet file ({e})") from e
    if "item_id" not in names:
        raise layout_error(file, "a generic catalog needs an item_id column")


def _first_line(path: Path) -> str:
    return next(_decoded_lines(str(path)), "")


# ------------------------------------------------------------------------------ the read


def _recurring_prefixes(styles: Path, partitions: int) -> frozenset[bytes]:
    """Title prefixes (lower case) that start at least two titles: fashion's brands."""
    prefixes = read_file_blocks([styles], _title_prefix_blocks, "FashionTitlePrefixes")
    # As many hash partitions as the other catalog-wide steps: Ray's default (200) costs a 300-item
    # sample more in task overhead than the count itself.
    counts = prefixes.groupby("prefix", num_partitions=partitions).count()
    recurring = counts.filter(lambda row: row["count()"] >= 2).select_columns(["prefix"])
    return frozenset(row["prefix"] for row in recurring.iter_rows())


def read_records(
    path: Path, layout: str, settings: ReadSettings, lines_per_block: int, rows_per_block: int, partitions: int
) -> tuple[Any, Path]:
    """The record rows of the catalog at ``path`` (a Dataset) and the location reported as source."""
    if layout in ("amazon", "generic"):
        files = amazon_files(path) if layout == "amazon" else generic_files(path)
        if layout == "amazon" and not files:
            raise layout_error(
                path, "layout 'amazon' needs meta_<Category>.json[.gz] or <Category>/meta.json[.gz] files"
            )
        # Every file keeps its index in the catalog's file order, so "first row wins" sees the
        # files in the order read_catalog reads them, Parquet and JSON lines alike.
        is_parquet = [f.suffix.lower() == ".parquet" for f in files]
        labels = [file_label(f, path) if layout == "amazon" else f.name for f in files]
        folders = [str(f.parent) for f in files]
        datasets = []
        lines = [i for i, pq_file in enumerate(is_parquet) if not pq_file]
        if lines:
            raw = read_file_blocks(
                [files[i] for i in lines], partial(_line_reader, lines_per_block=lines_per_block), "CatalogLines", lines
            )
            datasets.append(
                raw.map_batches(
                    parse_lines,
                    fn_kwargs={"settings": settings, "labels": labels, "folders": folders},
                    batch_format="pyarrow",
                    batch_size=rows_per_block,
                )
            )
        parquet = [i for i, pq_file in enumerate(is_parquet) if pq_file]
        if parquet:
            for i in parquet:
                _check_parquet(files[i])
            reader = partial(_parquet_blocks, settings=settings, rows_per_block=rows_per_block)
            datasets.append(read_file_blocks([files[i] for i in parquet], reader, "CatalogParquet", parquet))
        ds = datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
        return ds, path
    if layout == "fashion":
        styles = fashion_styles(path)
        header, _ = read_csv_rows(iter([_first_line(styles)]), [], stage=STAGE, id_column="id")
        check_fashion_header(styles, header)
        reader = partial(
            _csv_blocks,
            settings=settings,
            rows_per_block=rows_per_block,
            recurring=_recurring_prefixes(styles, partitions),
        )
        return read_file_blocks([styles], reader, "FashionStyles"), styles
    train = shopee_train(path)
    header, _ = read_csv_rows(iter([_first_line(train)]), [], stage=STAGE, id_column="posting_id")
    check_shopee_header(train, header)
    reader = partial(_csv_blocks, settings=settings, rows_per_block=rows_per_block)
    return read_file_blocks([train], reader, "ShopeeTrain"), train


# ------------------------------------------------------------------------ duplicate ids


def find_losers(part: pa.Table) -> pa.Table:
    """Rows of one id partition that repeat an id already kept by an earlier row.

    The sequential reader keeps the first row of an id that passes the checks and rejects every
    later row with that id as a duplicate (before checking it); rows before that first kept one
    keep their own rejects.
    """
    df = part.to_pandas()
    first_kept = df[df["kept"]].groupby("item_id")["order"].min()
    winner = df["item_id"].map(first_kept)
    losers = df[winner.notna() & (df["order"] > winner)]
    return pa.table(
        {
            "order": pa.array(losers["order"].to_numpy(np.int64)),
            "item_id": pa.array(losers["item_id"].tolist(), type=pa.string()),
            "where": pa.array(losers["where"].tolist(), type=pa.string()),
        }
    )


_LOSERS_CACHE: dict[tuple[str, ...], frozenset[int]] = {}


def _loser_orders(refs: list[Any]) -> frozenset[int]:
    """The broadcast loser positions, fetched once per worker process."""
    if not refs:
        return frozenset()
    key = tuple(r.hex() for r in refs)
    if key not in _LOSERS_CACHE:
        import ray

        tables = [t for t in ray.get(refs) if t.num_rows]
        orders = pa.concat_tables(tables).column("order").to_pylist() if tables else []
        _LOSERS_CACHE.clear()
        _LOSERS_CACHE[key] = frozenset(orders)
    return _LOSERS_CACHE[key]


def _with_id(batch: pa.Table) -> pa.Table:
    slim = batch.select(["item_id", "order", "where", "kept"])
    return slim.filter(pc.not_equal(slim.column("item_id"), ""))


def _group_keys(batch: pa.Table) -> pa.Table:
    return pa.table({"n": [int(pc.sum(batch.column("has_group_key")).as_py() or 0)]})


def _item_rows(batch: pa.Table, loser_refs: list[Any], columns: list[str]) -> pa.Table:
    losers = _loser_orders(loser_refs)
    keep = np.asarray(batch.column("kept").to_numpy(zero_copy_only=False), dtype=bool)
    if losers:
        keep &= ~np.isin(batch.column("order").to_numpy(), np.fromiter(losers, np.int64, len(losers)))
    return batch.filter(pa.array(keep)).select(["order", *columns])


def _reject_rows(batch: pa.Table, loser_refs: list[Any]) -> pa.Table:
    losers = _loser_orders(loser_refs)
    out: dict[str, list[Any]] = {name: [] for name in REJECTS_SCHEMA.names}
    d = batch.select(["order", "where", "item_id", "parse_rejects", "check_rejects"]).to_pydict()
    for order, where, item_id, parsed, checked in zip(
        d["order"], d["where"], d["item_id"], d["parse_rejects"], d["check_rejects"]
    ):
        rejects = parsed + ([duplicate_reject(item_id, where).to_dict()] if order in losers else checked)
        for seq, r in enumerate(rejects):
            out["order"].append(order)
            out["seq"].append(seq)
            for name in ("stage", "item_id", "reason", "detail"):
                out[name].append(r[name])
    return pa.table(out, schema=REJECTS_SCHEMA)


def _link_rows(batch: pa.Table) -> pa.Table:
    out: dict[str, list[Any]] = {name: [] for name in LINKS_SCHEMA.names}
    d = batch.select(["order", "item_id", *LINK_ACTIONS]).to_pydict()
    for i, (order, item_id) in enumerate(zip(d["order"], d["item_id"])):
        seq = 0
        for action in LINK_ACTIONS:
            for linked in d[action][i]:
                out["order"].append(order)
                out["seq"].append(seq)
                out["item_id"].append(item_id)
                out["action"].append(action)
                out["linked_id"].append(linked)
                seq += 1
    return pa.table(out, schema=LINKS_SCHEMA)


def ingest_catalog(
    path: str | Path,
    layout: str = "auto",
    max_images: int = _DEFAULTS.image.max_images_per_item,
    max_field_chars: int = MAX_FIELD_CHARS,
    images_dir: str | Path | None = None,
    *,
    partitions: int = _DEFAULTS.partitions,
    lines_per_block: int = _DEFAULTS.read_lines_per_block,
    rows_per_block: int | None = None,
) -> CatalogIngest:
    """Read the catalog at ``path`` with Ray Data (module docstring); needs a Ray session.

    ``partitions``: hash partitions of the duplicate-id step (each one worker's share of the
    ids); ``lines_per_block`` / ``rows_per_block``: block sizes of the read and of the parse
    (default: a quarter of ``lines_per_block``, so parsing spreads over the workers).
    """
    rows_per_block = rows_per_block or max(1, lines_per_block // 4)
    p = Path(path)
    layout = resolve_layout(p, layout)
    settings = ReadSettings(
        layout, max_images, max_field_chars, str(Path(images_dir).absolute()) if images_dir else None
    )
    records, location = read_records(p, layout, settings, lines_per_block, rows_per_block, partitions)
    records = records.materialize()  # read once; the steps below each scan it

    slim = records.map_batches(_with_id, batch_format="pyarrow")
    losers = by_key(slim, "item_id", partitions, find_losers).materialize()
    duplicates = losers.count()
    loser_refs = list(losers.to_arrow_refs()) if duplicates else []

    columns = ["item_id", "image_paths", *TEXT_FIELDS]
    if layout in ("shopee", "generic") and _has_group(records, layout):
        columns.append("group")
    if layout == "amazon":
        columns.append("price")
    kept = records.map_batches(
        _item_rows,
        fn_kwargs={"loser_refs": loser_refs, "columns": [*columns, *LINK_ACTIONS]},
        batch_format="pyarrow",
    )
    items = kept.drop_columns(list(LINK_ACTIONS))
    links = kept.map_batches(_link_rows, batch_format="pyarrow") if layout == "amazon" else None
    rejects = records.map_batches(_reject_rows, fn_kwargs={"loser_refs": loser_refs}, batch_format="pyarrow")
    return CatalogIngest(items, rejects, links, layout, str(location.absolute()), columns, duplicates)


def _has_group(records: Any, layout: str) -> bool:
    """Shopee always has label groups; a generic catalog when any record names a ``group``."""
    if layout == "shopee":
        return True
    return any(row["n"] for row in records.map_batches(_group_keys, batch_format="pyarrow").iter_rows())


# --------------------------------------------------------------------------- collecting


def collect_catalog(ingest: CatalogIngest) -> CatalogReadResult:
    """The ingest as ``read_catalog`` returns it: items in catalog order, rejects in file order.

    This brings the whole item table to the caller's process; stages that scale with the catalog
    use the Datasets of ``CatalogIngest`` instead.
    """
    items = _sorted_frame(ingest.items, ["order"], ["order", *ingest.item_columns])
    items = items.drop(columns=["order"]).reset_index(drop=True)
    for c in ingest.item_columns:
        if c == "image_paths":
            items[c] = [list(v) for v in items[c]]
        elif c == "price":
            items[c] = items[c].astype("float64")
        else:
            items[c] = items[c].astype(str)
    reject_rows = _sorted_frame(ingest.rejects, ["order", "seq"], REJECTS_SCHEMA.names)
    rejects = [
        # A reject of no record (a malformed line) has no item id: null, never pandas' NaN.
        Reject(r["stage"], r["item_id"] if isinstance(r["item_id"], str) else None, r["reason"], r["detail"])
        for r in reject_rows[["stage", "item_id", "reason", "detail"]].to_dict("records")
    ]
    links = None
    if ingest.links is not None:
        link_rows = _sorted_frame(ingest.links, ["order", "seq"], LINKS_SCHEMA.names)
        links = link_rows[list(LINK_COLUMNS)].astype(str).reset_index(drop=True)
    return CatalogReadResult(items=items, rejects=rejects, layout=ingest.layout, source=ingest.source, links=links)


def _sorted_frame(ds: Any, by: list[str], columns: list[str]) -> pd.DataFrame:
    tables = [t for t in (ds.iter_batches(batch_format="pyarrow", batch_size=None)) if t.num_rows]
    if not tables:
        return pd.DataFrame({c: [] for c in columns})
    df = pa.concat_tables(tables).to_pandas()
    return df.sort_values(by, kind="stable").reset_index(drop=True)


def rejects_summary(ingest: CatalogIngest) -> dict[str, int]:
    """``{reason: count}`` of the ingest's rejects, counted by Ray Data (nothing collected)."""
    # One partition: there are a handful of reasons, and each partition costs a reduce task.
    counts = ingest.rejects.select_columns(["reason"]).groupby("reason", num_partitions=1).count().take_all()
    return dict(sorted((row["reason"], int(row["count()"])) for row in counts))


def reject_lines(ingest: CatalogIngest) -> Any:
    """The rejects as ``rejects.jsonl`` lines, streamed (never all in memory)."""
    for batch in ingest.rejects.iter_batches(batch_format="pyarrow"):
        for r in batch.select(["stage", "item_id", "reason", "detail"]).to_pylist():
            yield json.dumps(r, ensure_ascii=False)
