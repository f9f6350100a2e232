"""Lenient decoding of catalog and log files: text with undecodable bytes kept findable, JSON lines
and CSV records parsed one at a time so that a broken record costs that record, not the file."""

from __future__ import annotations

import csv
import io
import json
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from itemsage.data.rejects import Reject, fix_utf8

# A quoted field may legitimately span lines; beyond this many we call the quote broken.
MAX_CONTINUATION_LINES = 20
# The csv module refuses fields over 128 KiB by default, which would lose an over-long row as
# "malformed_row" instead of cutting it ("truncated_field"). The file is in memory already, so a
# higher cap costs nothing; only raised, never lowered, for other users of the module.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def read_text(path: Path) -> str:
    """Decode a file as UTF-8, keeping undecodable bytes as surrogates so they can be found,
    reported per item and replaced (``fix_utf8``) instead of failing the whole file."""
    return path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")


def parse_json_object(line: str) -> tuple[dict[str, Any] | None, str]:
    """One JSONL record as a dict, or ``None`` and why not.

    Besides syntax errors, ``json`` raises ValueError for integers over 4300 digits and
    RecursionError for deeply nested values; each of them must cost one line, not the file.
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg})"
    except (ValueError, RecursionError) as e:
        return None, f"invalid JSON ({type(e).__name__}: {str(e)[:120]})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    return record, ""


def _parse_csv_record(buf: str) -> list[str]:
    # strict=True turns a stray quote into an error instead of silently gluing fields together.
    return next(csv.reader(io.StringIO(buf), strict=True))


def read_csv_rows(
    text: str | Iterable[str],
    rejects: list[Reject],
    *,
    stage: str,
    id_column: str,
    free_text_column: str | None = None,
) -> tuple[list[str], Iterator[tuple[str, dict[str, str]]]]:
    """Header and ``(where, row)`` pairs of a CSV text (or of its lines, streamed), skipping broken
    records.

    Parsed record by record (not with one ``csv.reader`` over the file) so that a broken quote
    costs one line: a quote left open swallows at most ``MAX_CONTINUATION_LINES`` following lines
    and only when they complete the record with the right field count. Surplus fields are folded
    back into ``free_text_column`` (unquoted commas in a title), with a "repaired_row" reject.
    Rows are parsed lazily, reading at most ``MAX_CONTINUATION_LINES`` lines ahead, so a file
    streamed line by line (``itemsage.data.ingest``) never sits in memory whole; ``rejects`` is
    complete once the iterator is exhausted.
    """
    lines = iter(text.split("\n") if isinstance(text, str) else text)
    first_line = next(lines, "")
    try:
        header = [c.strip() for c in _parse_csv_record(first_line.rstrip("\r"))]
    except (csv.Error, StopIteration):
        header = []  # the caller reports the missing columns, naming the file
    n = len(header)
    id_idx = header.index(id_column) if id_column in header else None
    free_idx = header.index(free_text_column) if free_text_column in header else None

    def rows() -> Iterator[tuple[str, dict[str, str]]]:
        ahead: deque[str] = deque()  # lines i, i+1, ... already read from ``lines``
        i = 1

        def line(k: int) -> str | None:
            """Line ``k`` (k >= i) of the file, or None past its end."""
            while len(ahead) <= k - i:
                nxt = next(lines, None)
                if nxt is None:
                    return None
                ahead.append(nxt)
            return ahead[k - i]

        def advance(to: int) -> None:
            nonlocal i
            for _ in range(min(to - i, len(ahead))):
                ahead.popleft()
            i = to

        while (current := line(i)) is not None:
            first = current.rstrip("\r")
            if not first.strip():
                advance(i + 1)
                continue
            where = f"line {i + 1}"
            fields: list[str] | None = None
            error = ""
            buf, j = first, i
            while True:
                try:
                    fields = _parse_csv_record(buf)
                    break
                except csv.Error as e:
                    error = str(e)
                    open_quote = "unexpected end of data" in error
                    following = line(j + 1) if open_quote and j - i < MAX_CONTINUATION_LINES else None
                    if following is None:
                        break
                    j += 1
                    buf += "\n" + following.rstrip("\r")
            if fields is not None and j > i and len(fields) != n:
                fields, error = None, "unbalanced quote"
            if fields is None:
                # Only the first line is lost; the lines the open quote swallowed are re-read.
                rejects.append(
                    Reject(stage, _guess_id(first, id_idx), "malformed_row", f"{where}: broken quotes ({error})")
                )
                advance(i + 1)
                continue
            advance(j + 1)
            repaired = False
            if free_idx is not None and len(fields) > n:
                repaired = True
                extra = len(fields) - n
                fields = (
                    fields[:free_idx]
                    + [",".join(fields[free_idx : free_idx + extra + 1])]
                    + fields[free_idx + extra + 1 :]
                )
            item_id = (
                fix_utf8(fields[id_idx].strip())[0] or None if id_idx is not None and id_idx < len(fields) else None
            )
            if repaired:
                rejects.append(
                    Reject(
                        stage,
                        item_id,
                        "repaired_row",
                        f"{where}: {n + extra} fields for {n} columns; the surplus "
                        f"commas were kept inside {free_text_column}",
                    )
                )
            if len(fields) != n:
                rejects.append(Reject(stage, item_id, "malformed_row", f"{where}: {len(fields)} fields, expected {n}"))
                continue
            yield where, dict(zip(header, fields))

    return header, rows()


def _guess_id(line: str, id_idx: int | None) -> str | None:
    """Best-effort id of an unparseable line, so its reject can still be traced to a product."""
    if id_idx is None:
        return None
    parts = line.split(",")
    value = parts[id_idx].strip().strip('"') if id_idx < len(parts) else ""
    return fix_utf8(value)[0] or None
