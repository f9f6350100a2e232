"""The ``generic`` layout: Parquet or JSON-lines files with the generic schema's columns."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from itemsage.config import TEXT_FIELDS
from itemsage.data.layouts import GENERIC_SUFFIXES, CatalogError, generic_dir_files, layout_error
from itemsage.data.raw_items import STAGE, RawItem, Source, is_uri
from itemsage.data.records import parse_json_object, read_text
from itemsage.data.rejects import Reject


def _as_text(value: Any) -> str:
    """Generic field values as text: None/NaN -> "", lists joined, 12.0 -> "12"."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        # A Parquet binary column: text, not "b'...'"; broken bytes become surrogates, which
        # the shared normalisation replaces and reports ("non_utf8_text").
        return value.decode("utf-8", errors="surrogateescape")
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(t for v in value if (t := _as_text(v).strip()))
    if isinstance(value, dict):
        # default: Parquet structs hold values JSON has no type for (timestamps, bytes).
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=_as_text)
    if hasattr(value, "tolist"):  # numpy arrays / scalars from Parquet
        return _as_text(value.tolist())
    return str(value)


def _as_paths(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [t for v in value if (t := _as_text(v).strip())]
    return [_as_text(value)]


def _parquet_records(file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    parquet = pq.ParquetFile(file)
    if "item_id" not in parquet.schema_arrow.names:
        raise layout_error(file, "a generic catalog needs an item_id column")
    row = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield f"{file.name} row {row}", record


def _generic_records(file: Path, rejects: list[Reject]) -> Iterator[tuple[str, dict[str, Any]]]:
    if file.suffix.lower() == ".parquet":
        # Parquet has no lines to skip: a file that is not Parquet, truncated, or with a broken
        # page cannot be read past the damage, so it is refused as a whole, by name.
        try:
            yield from _parquet_records(file)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
            raise CatalogError(f"cannot read catalog {file}: not a readable Parquet file ({e})") from e
        return
    for n, line in enumerate(read_text(file).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{file.name} line {n}"
        record, error = parse_json_object(line)
        if record is None:
            rejects.append(Reject(STAGE, None, "malformed_row", f"{where}: {error}"))
            continue
        yield where, record


def generic_files(path: Path) -> list[Path]:
    """The files of a generic catalog at ``path`` (a file or a directory of them)."""
    if path.is_dir():
        files = generic_dir_files(path)
        if not files:
            raise layout_error(path, "layout 'generic' needs .parquet or .jsonl files")
        return files
    if path.suffix.lower() in GENERIC_SUFFIXES:
        return [path]
    raise layout_error(path, "layout 'generic' needs .parquet or .jsonl files")


def generic_raw(where: str, rec: dict[str, Any], folder: str) -> RawItem:
    """One generic record; relative image paths are relative to ``folder``, the file's folder."""
    group = rec.get("group")
    return RawItem(
        where=where,
        item_id=_as_text(rec.get("item_id")),
        fields={f: _as_text(rec.get(f)) for f in TEXT_FIELDS},
        image_paths=[p if is_uri(p) else os.path.join(folder, p) for p in _as_paths(rec.get("image_paths"))],
        group=_as_text(group) if group is not None else None,
    )


def read_generic(path: Path, rejects: list[Reject]) -> Source:
    raws, has_group = [], False
    for file in generic_files(path):
        for where, rec in _generic_records(file, rejects):
            has_group = has_group or "group" in rec
            raws.append(generic_raw(where, rec, str(file.parent)))
    return Source(raws, {}, has_group=has_group, location=path)
