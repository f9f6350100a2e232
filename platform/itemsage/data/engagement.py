"""Real engagement logs: (query, engaged item) pairs of every surface x action, read from
Parquet / JSONL / CSV files with ``ENGAGEMENT_COLUMNS``.

ItemSage learns from such pairs. Besides a real log (``read_engagements``), pairs come from
Shopee label groups (``itemsage.data.shopee_pairs``), Amazon co-purchase links
(``itemsage.data.copurchase``) or documented synthetic rules (``itemsage.data.synthetic_engagement``);
all of them are tables with ``ENGAGEMENT_COLUMNS`` (``engagement_frame``), split by
``itemsage.data.splits``. A bad row costs that row (one ``Reject``), never the log.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from itemsage.config import ACTIONS, SURFACES
from itemsage.data.records import parse_json_object, read_csv_rows, read_text
from itemsage.data.rejects import Reject, fix_utf8, non_utf8_reject

ENGAGEMENT_COLUMNS: list[str] = ["surface", "action", "query", "item_id", "user_id", "timestamp", "source"]
STAGE = "engagement"
LOG_SUFFIXES: tuple[str, ...] = (".parquet", ".jsonl", ".ndjson", ".csv")
REQUIRED_COLUMNS: tuple[str, ...] = ("surface", "action", "query", "item_id")


class EngagementError(ValueError):
    """An engagement log as a whole cannot be read (missing path, unknown format, no columns,
    a Parquet file that is not readable)."""


# --------------------------------------------------------------------------------------------
# Reading real logs
# --------------------------------------------------------------------------------------------


def _log_files(path: Path) -> list[Path]:
    if not path.exists():
        raise EngagementError(f"engagement log {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in LOG_SUFFIXES)
    else:
        files = [path] if path.suffix.lower() in LOG_SUFFIXES else []
    if not files:
        raise EngagementError(
            f"engagement log {path}: expected .parquet, .jsonl or .csv files with columns "
            f"{', '.join(ENGAGEMENT_COLUMNS)}"
        )
    return files


def _log_records(file: Path, rejects: list[Reject]) -> Iterable[tuple[str, dict[str, Any]]]:
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        # A damaged Parquet file cannot be read past the damage: refused as a whole, by name.
        try:
            table = pq.read_table(file)
            records = table.to_pylist()
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
            raise EngagementError(f"engagement log {file} is not a readable Parquet file ({e})") from e
        _require_columns(file, table.column_names)
        for n, rec in enumerate(records, start=1):
            yield f"{file.name} row {n}", rec
    elif suffix == ".csv":
        header, rows = read_csv_rows(
            read_text(file), rejects, stage=STAGE, id_column="item_id", free_text_column="query"
        )
        _require_columns(file, header)
        yield from rows
    else:
        for n, line in enumerate(read_text(file).split("\n"), start=1):
            if not line.strip():
                continue
            rec, error = parse_json_object(line)
            if rec is None:
                rejects.append(Reject(STAGE, None, "malformed_row", f"{file.name} line {n}: {error}"))
                continue
            yield f"{file.name} line {n}", rec


def _require_columns(file: Path, columns: Iterable[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in set(columns)]
    if missing:
        raise EngagementError(f"engagement log {file} lacks columns {missing}")


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bytes):  # a Parquet binary column; fix_utf8 reports broken bytes
        value = value.decode("utf-8", errors="surrogateescape")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch; None when present but unparseable. Missing -> NaN."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        ts = _parse_timestamp(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit number
        return None
    # "inf" or 1e999 parse as floats but name no point in time; they would sort as the newest.
    return None if math.isinf(ts) else ts


def _parse_timestamp(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, pd.Timestamp) or hasattr(value, "timestamp"):
        return float(pd.Timestamp(value).timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return float(pd.Timestamp(str(value)).timestamp())


def read_engagements(path: str | Path, known_item_ids: Iterable[str]) -> tuple[pd.DataFrame, list[Reject]]:
    """Read a real engagement log; rows that cannot become a training pair are rejected.

    Rejected: unknown surface or action, an ``item_id`` (or a closeup query item) that is not in
    the catalog, an empty query. A home row without ``user_id`` uses its query as the user.
    """
    known = set(known_item_ids)
    rejects: list[Reject] = []
    out: dict[str, list[Any]] = {c: [] for c in ENGAGEMENT_COLUMNS}
    for file in _log_files(Path(path)):
        for where, rec in _log_records(file, rejects):
            surface = _text(rec.get("surface")).lower()
            action = _text(rec.get("action")).lower()
            # Every kept text is valid UTF-8 (it goes to Parquet and rejects.jsonl); broken bytes
            # become U+FFFD, as in the catalog, so a fixed id still matches its catalog item.
            texts = {name: fix_utf8(_text(rec.get(name))) for name in ("query", "item_id", "user_id", "source")}
            query, item_id, user_id, source = (texts[n][0] for n in ("query", "item_id", "user_id", "source"))
            non_utf8 = [n for n, (_, bad) in texts.items() if bad]
            reason, detail = "", ""
            if surface not in SURFACES:
                reason, detail = "unknown_surface", f"surface {surface!r} is not one of {SURFACES}"
            elif action not in ACTIONS:
                reason, detail = "unknown_action", f"action {action!r} is not one of {ACTIONS}"
            elif not query:
                reason, detail = "empty_query", "the query is empty"
            elif item_id not in known:
                reason, detail = "unknown_item", f"item {item_id!r} is not in the catalog"
            elif surface == "closeup" and query not in known:
                reason, detail = "unknown_query_item", f"closeup query item {query!r} is not in the catalog"
            if reason:
                rejects.append(Reject(STAGE, item_id or None, reason, f"{where}: {detail}"))
                continue
            if non_utf8:
                rejects.append(non_utf8_reject(STAGE, item_id, where, non_utf8))
            ts = _timestamp(rec.get("timestamp"))
            if ts is None:
                rejects.append(
                    Reject(
                        STAGE,
                        item_id,
                        "bad_timestamp",
                        f"{where}: timestamp {rec.get('timestamp')!r} unreadable; kept as unknown",
                    )
                )
                ts = math.nan
            if surface == "home" and not user_id:
                user_id = query
            row = {
                "surface": surface,
                "action": action,
                "query": query,
                "item_id": item_id,
                "user_id": user_id,
                "timestamp": ts,
                "source": source or "log",
            }
            for c in ENGAGEMENT_COLUMNS:
                out[c].append(row[c])
    return engagement_frame(out), rejects


def engagement_frame(columns: Mapping[str, Any]) -> pd.DataFrame:
    """A table with ``ENGAGEMENT_COLUMNS`` and their dtypes (timestamp float64, the rest str)."""
    df = pd.DataFrame(columns, columns=ENGAGEMENT_COLUMNS)
    for c in ENGAGEMENT_COLUMNS:
        df[c] = df[c].astype("float64" if c == "timestamp" else str)
    return df
