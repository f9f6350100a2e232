"""Fuzzing the catalog and engagement readers with hypothesis (issue 9, "Bad input").

Every example builds a file (styles.csv, Shopee train.csv, generic Parquet/JSONL, an engagement
log in CSV/JSONL/Parquet), mixes valid rows with broken ones, and feeds it through the real
readers. What must hold for every example:

- the read finishes, or the whole file is refused with the documented error (``CatalogError`` /
  ``EngagementError``) naming the file; no other exception escapes;
- every record that is not kept is counted with a documented reason, so kept + skipped equals the
  records in the file; rejects point at the line/row they came from;
- the valid rows mixed in come out exactly as written (no data loss);
- everything that comes out can go downstream: UTF-8 text, an Arrow table, ``rejects.jsonl``.

The structured tests know what each row must become; the "chaos" and "random bytes" tests know
nothing about their input and check only the invariants. A tally of what was tried is printed
at the end of the module (run with ``-s`` to see it).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itemsage.config import ACTIONS, SURFACES, TEXT_FIELDS
from itemsage.data.catalog import CatalogReadResult, read_catalog
from itemsage.data.engagement import ENGAGEMENT_COLUMNS, EngagementError, read_engagements
from itemsage.data.layouts import CatalogError
from itemsage.data.raw_items import MAX_FIELD_CHARS
from itemsage.data.rejects import Reject

SAMPLE_IMAGES = Path(__file__).resolve().parents[2] / "data" / "sample" / "fashion" / "images"

CATALOG_SKIPS = {"missing_id", "duplicate_id", "malformed_row", "empty_item"}
CATALOG_DEGRADES = {"repaired_row", "non_utf8_text", "truncated_field", "missing_image", "too_many_images"}
ENGAGEMENT_SKIPS = {"unknown_surface", "unknown_action", "empty_query", "unknown_item",
                    "unknown_query_item", "malformed_row"}
ENGAGEMENT_DEGRADES = {"non_utf8_text", "bad_timestamp", "repaired_row"}

# Bounded: the whole module runs in well under a minute on a shared 2-core machine.
FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
FEW = settings(FUZZ, max_examples=30)

# Bytes that are never valid UTF-8 where they are inserted (between whole characters).
BAD_BYTES = [b"\xff", b"\xfe\xfd", b"\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf"]
# A field past the csv module's default 128 KiB field limit, and one just past our own cut.
HUGE_SIZES = [MAX_FIELD_CHARS + 1, 140_000]


def _cut(raw: str) -> list[str]:
    """The reject a huge field gets: readers strip a field before measuring it, so MAX + 1
    characters ending in a space are not over the limit."""
    return ["truncated_field"] if len(raw.strip()) > MAX_FIELD_CHARS else []

# Clean field text: no CSV metacharacters, controls, surrogates or backslashes (Shopee decodes
# literal \xNN escapes in titles), stripped, non-empty; anything else Unicode has is fair game.
CLEAN_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters=',"\\')
clean = st.text(CLEAN_CHARS, min_size=1, max_size=16).map(str.strip).filter(bool)


# ------------------------------------------------------------------------------------- tally

TALLY: dict[str, Counter[str]] = defaultdict(Counter)


def tally(target: str, *, refused: bool = False, records: int = 0, kept: int = 0,
          rejects: list[Reject] = ()) -> None:
    t = TALLY[target]
    t["examples"] += 1
    t["refused" if refused else "read"] += 1
    t["records"] += records
    t["kept"] += kept
    for r in rejects:
        t[f"reason:{r.reason}"] += 1


@pytest.fixture(scope="module", autouse=True)
def _print_tally() -> Iterator[None]:
    yield
    skips = CATALOG_SKIPS | ENGAGEMENT_SKIPS
    lines = ["", "fuzz tally (tests/data/test_fuzz_readers.py): inputs tried and how they were handled",
             f"{'target':<44}{'files':>7}{'read':>7}{'refused':>9}{'records':>9}{'kept':>7}{'skipped':>9}"
             "  rejects by reason (skip or degrade)"]
    total: Counter[str] = Counter()
    for target, t in sorted(TALLY.items()):
        total.update(t)
        reasons = {k.removeprefix("reason:"): v for k, v in sorted(t.items()) if k.startswith("reason:")}
        skipped = sum(v for k, v in reasons.items() if k in skips)
        lines.append(f"{target:<44}{t['examples']:>7}{t['read']:>7}{t['refused']:>9}{t['records']:>9}"
                     f"{t['kept']:>7}{skipped:>9}  {reasons}")
    reasons = {k.removeprefix("reason:"): v for k, v in sorted(total.items()) if k.startswith("reason:")}
    lines.append(f"{'TOTAL':<44}{total['examples']:>7}{total['read']:>7}{total['refused']:>9}"
                 f"{total['records']:>9}{total['kept']:>7}{sum(v for k, v in reasons.items() if k in skips):>9}"
                 f"  {reasons}")
    print("\n".join(lines))


# ----------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@contextmanager
def scratch(base: Path) -> Iterator[Path]:
    """A fresh directory per example (hypothesis runs many examples inside one test call)."""
    d = Path(tempfile.mkdtemp(dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def utf8_ok(value: Any) -> bool:
    return not isinstance(value, str) or _encodable(value)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_rejects(rejects: list[Reject], stage: str, documented: set[str]) -> None:
    """Documented reasons, a detail to act on, and writable as ``rejects.jsonl`` is written."""
    for r in rejects:
        assert r.stage == stage and r.reason in documented, r
        assert r.detail.strip(), r
        json.dumps(r.to_dict(), ensure_ascii=False).encode("utf-8")  # raises on lone surrogates


def check_catalog(result: CatalogReadResult, max_chars: int = MAX_FIELD_CHARS) -> int:
    """Invariants of any catalog read; returns how many records were skipped."""
    check_rejects(result.rejects, "catalog", CATALOG_SKIPS | CATALOG_DEGRADES)
    items = result.items
    assert list(items.columns)[: 2 + len(TEXT_FIELDS)] == ["item_id", "image_paths", *TEXT_FIELDS]
    assert items["item_id"].is_unique and all(items["item_id"].str.len() > 0)
    assert all(utf8_ok(v) for v in items["item_id"])  # ids are never cut: that could merge items
    for name in TEXT_FIELDS:
        assert all(utf8_ok(v) and len(v) <= max_chars for v in items[name]), name
    pa.Table.from_pandas(items)  # what preprocessing does next: raises on undecodable text
    return sum(r.reason in CATALOG_SKIPS for r in result.rejects)


def check_engagements(log: pd.DataFrame, rejects: list[Reject]) -> int:
    check_rejects(rejects, "engagement", ENGAGEMENT_SKIPS | ENGAGEMENT_DEGRADES)
    assert list(log.columns) == ENGAGEMENT_COLUMNS
    assert set(log["surface"]) <= set(SURFACES) and set(log["action"]) <= set(ACTIONS)
    assert all(log["query"].str.len() > 0)
    assert not any(math.isinf(t) for t in log["timestamp"])
    pa.Table.from_pandas(log)
    return sum(r.reason in ENGAGEMENT_SKIPS for r in rejects)


_WHERE = re.compile(r"\b(?:line|row) (\d+):")


def by_position(rejects: list[Reject]) -> dict[int, list[str]]:
    """Reasons per line/row number, parsed from each reject's ``detail`` ("... line 7: ...")."""
    out: dict[int, list[str]] = defaultdict(list)
    for r in rejects:
        m = _WHERE.search(r.detail)
        assert m, f"reject does not say where it came from: {r}"
        out[int(m.group(1))].append(r.reason)
    return out


@dataclass
class Expect:
    """What one written record must become: kept (with these fields) or skipped (reasons), or
    anything at all ("garbage" rows: random bytes)."""

    reasons: list[str]
    kept: dict[str, Any] | None = None
    garbage: bool = False


def check_positions(expected: dict[int, Expect], rejects: list[Reject], skips: set[str]) -> int:
    """Each record's rejects are exactly the expected ones; returns how many garbage records were
    kept (no skip reason), so the caller can balance the books."""
    got = by_position(rejects)
    assert set(got) <= set(expected), f"rejects for records never written: {sorted(set(got) - set(expected))}"
    garbage_kept = 0
    for pos, exp in expected.items():
        reasons = got.get(pos, [])
        if exp.garbage:
            n_skips = sum(r in skips for r in reasons)
            assert n_skips <= 1, (pos, reasons)
            garbage_kept += n_skips == 0
        else:
            assert Counter(reasons) == Counter(exp.reasons), (pos, exp, reasons)
    return garbage_kept


# ------------------------------------------------------------------------- CSV catalog layouts


@dataclass(frozen=True)
class CsvLayout:
    name: str
    file: str
    header: tuple[str, ...]
    id_col: str
    title_col: str
    filler: dict[str, str]  # the other columns of a valid row

    def index(self, col: str) -> int:
        return self.header.index(col)


FASHION = CsvLayout(
    "fashion", "styles.csv",
    ("id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year",
     "usage", "productDisplayName"),
    "id", "productDisplayName",
    {"gender": "Men", "masterCategory": "Apparel", "subCategory": "Topwear", "articleType": "Tshirts",
     "baseColour": "Blue", "season": "Summer", "year": "2012", "usage": "Casual"},
)
SHOPEE = CsvLayout(
    "shopee", "train.csv", ("posting_id", "image", "image_phash", "title", "label_group"),
    "posting_id", "title", {"image": "a.jpg", "image_phash": "ff00", "label_group": "L7"},
)

csv_row = st.one_of(
    st.tuples(st.just("valid"), clean),
    st.tuples(st.just("valid_quoted"), clean, clean),  # "a, b": a comma inside a quoted title
    st.tuples(st.just("few_fields"), st.integers(1, 9)),
    st.tuples(st.just("many_fields"), st.lists(clean, min_size=2, max_size=4)),  # unquoted commas
    st.tuples(st.just("empty_id"), st.sampled_from(["", " ", "\t"])),
    st.tuples(st.just("dup_id"), st.integers(0, 10_000)),
    st.tuples(st.just("non_utf8"), clean, st.sampled_from(BAD_BYTES), st.booleans()),
    st.tuples(st.just("huge"), clean, st.sampled_from(HUGE_SIZES)),
    st.tuples(st.just("empty_item")),
    st.tuples(st.just("open_quote"), clean),
    # Random bytes on one line. "G" first keeps their ids apart from the valid rows' ids; no '"',
    # because an unclosed quote may legitimately join following lines into one record.
    st.tuples(st.just("garbage"), st.binary(max_size=80).map(
        lambda b: b"G" + b.replace(b"\n", b"").replace(b'"', b""))),
)


def render_csv(layout: CsvLayout, rows: list[tuple], images: Path | None,
               sample_image: Path) -> tuple[bytes, dict[int, Expect]]:
    """The CSV bytes and, per line number, what that line must become."""
    n = len(layout.header)
    lines = [",".join(layout.header).encode()]
    expected: dict[int, Expect] = {}
    kept_ids: list[str] = []
    open_quote_used = False

    def fields(item_id: bytes, title: bytes, empty: bool = False) -> list[bytes]:
        row = [b"" if empty else layout.filler.get(c, "").encode() for c in layout.header]
        if empty and layout.name == "fashion":
            row = [b"NA"] * n  # "NA" is Myntra's "unknown": no text either
        row[layout.index(layout.id_col)] = item_id
        row[layout.index(layout.title_col)] = title
        return row

    def keep(item_id: str, title: str, reasons: list[str], with_image: bool = True) -> Expect:
        kept_ids.append(item_id)
        if layout.name == "fashion":
            if with_image:
                os.symlink(sample_image, images / f"{item_id}.jpg")
            else:
                reasons = [*reasons, "missing_image"]
        return Expect(reasons, kept={"item_id": item_id, "title": title})

    for r, row in enumerate(rows):
        kind, *args = row
        if kind == "open_quote" and open_quote_used:
            kind, args = "valid", args  # one unclosed quote per file (see the garbage comment)
        line_no = len(lines) + 1
        item_id = f"V{r}"
        if kind == "valid":
            out = fields(item_id.encode(), args[0].encode())
            exp = keep(item_id, args[0], [])
        elif kind == "valid_quoted":
            title = f"{args[0]}, {args[1]}"
            out = fields(item_id.encode(), f'"{title}"'.encode())
            exp = keep(item_id, title, [])
        elif kind == "few_fields":
            out = fields(item_id.encode(), b"t")[: max(1, n - args[0])]
            exp = Expect(["malformed_row"])
        elif kind == "many_fields":
            i = layout.index(layout.title_col)
            base = fields(item_id.encode(), b"")
            out = base[:i] + [p.encode() for p in args[0]] + base[i + 1:]
            exp = keep(item_id, ",".join(args[0]), ["repaired_row"])
        elif kind == "empty_id":
            out = fields(args[0].encode(), b"some title")
            exp = Expect(["missing_id"])
        elif kind == "dup_id":
            if kept_ids:
                out = fields(kept_ids[args[0] % len(kept_ids)].encode(), b"another title")
                exp = Expect(["duplicate_id"])
            else:
                out = fields(b"", b"another title")
                exp = Expect(["missing_id"])
        elif kind == "non_utf8":
            text, bad, in_id = args
            raw_title = text.encode() + bad + text.encode()
            raw_id = item_id.encode() + (bad if in_id else b"")
            out = fields(raw_id, raw_title)
            exp = keep(raw_id.decode("utf-8", "replace"), raw_title.decode("utf-8", "replace"),
                       ["non_utf8_text"], with_image=not in_id)
        elif kind == "huge":
            text, size = args
            raw = (text * (size // len(text) + 1))[:size]
            out = fields(item_id.encode(), raw.encode())
            exp = keep(item_id, raw.strip()[:MAX_FIELD_CHARS], _cut(raw))
        elif kind == "empty_item":
            out = fields(item_id.encode(), b"", empty=True)
            exp = Expect(["missing_image", "empty_item"] if layout.name == "fashion" else ["empty_item"])
        elif kind == "open_quote":
            open_quote_used = True
            out = fields(item_id.encode(), b'"' + args[0].encode())
            exp = Expect(["malformed_row"])
        else:  # garbage
            lines.append(args[0])
            expected[line_no] = Expect([], garbage=True)
            continue
        if exp.kept is not None and layout.name == "shopee":
            exp.kept["group"] = layout.filler["label_group"]
        lines.append(b",".join(out))
        expected[line_no] = exp
    return b"\n".join(lines) + b"\n", expected


@pytest.fixture(scope="module")
def sample_image() -> Path:
    return next(SAMPLE_IMAGES.glob("*.jpg"))


@pytest.mark.parametrize("layout", [FASHION, SHOPEE], ids=lambda lay: lay.name)
@FUZZ
@given(rows=st.lists(csv_row, min_size=1, max_size=25))
def test_csv_catalog_keeps_valid_rows_and_counts_every_skip(layout: CsvLayout, rows: list[tuple],
                                                            work: Path, sample_image: Path) -> None:
    with scratch(work) as d:
        images = d / "images"
        images.mkdir()
        body, expected = render_csv(layout, rows, images, sample_image)
        (d / layout.file).write_bytes(body)
        result = read_catalog(d)
        assert result.layout == layout.name
        skipped = check_catalog(result)
        tally(f"catalog/{layout.name} csv (structured)", records=len(expected), kept=len(result.items),
              rejects=result.rejects)
        garbage_kept = check_positions(expected, result.rejects, CATALOG_SKIPS)
        # The books balance: every written record was kept or skipped with a reason.
        assert len(result.items) + skipped == len(expected)
        want = [e.kept for e in expected.values() if e.kept is not None]
        assert len(result.items) == len(want) + garbage_kept
        items = result.items.set_index("item_id")
        for w in want:  # no data loss: every valid row, exactly as written
            got = items.loc[w["item_id"]]
            assert got["title"] == w["title"]
            if "group" in w:
                assert got["group"] == w["group"]
            if layout.name == "fashion" and not any(
                    r.item_id == w["item_id"] and r.reason == "missing_image" for r in result.rejects):
                assert got["image_paths"] == [str((images / f"{w['item_id']}.jpg").absolute())]


# Everything a CSV can throw at a parser, biased to its metacharacters; no structure assumed.
csv_noise = st.lists(
    st.one_of(
        st.text(st.sampled_from(list('ab1 ,,""\n\n\r\t\x00é')), max_size=40).map(str.encode),
        st.binary(max_size=8),
        st.sampled_from([b"NA", b'"', b'""', b"\r\n", b",,,,,,,,,,", b"x" * 140_000]),
    ),
    max_size=30,
).map(b"".join)


@pytest.mark.parametrize("layout", [FASHION, SHOPEE], ids=lambda lay: lay.name)
@FUZZ
@given(body=csv_noise)
def test_csv_catalog_chaos_never_crashes(layout: CsvLayout, body: bytes, work: Path) -> None:
    with scratch(work) as d:
        (d / layout.file).write_bytes(",".join(layout.header).encode() + b"\n" + body)
        result = read_catalog(d)
        skipped = check_catalog(result)
        # Blank as the reader sees it: decoded text, where Unicode spaces (NBSP, U+001C-U+001F,
        # U+2028 ...) are whitespace too, not only the ASCII ones bytes.strip() knows.
        records = sum(bool(x.decode("utf-8", "replace").strip()) for x in body.split(b"\n"))
        tally(f"catalog/{layout.name} csv (chaos)", records=records, kept=len(result.items),
              rejects=result.rejects)
        # A record takes at least one line, and every non-blank line starts one.
        assert len(result.items) + skipped <= records
        assert records == 0 or len(result.items) + skipped >= 1


# --------------------------------------------------------------------------- generic JSONL

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)

jsonl_row = st.one_of(
    st.tuples(st.just("valid"), clean, st.lists(clean, max_size=3)),
    st.tuples(st.just("int_id"), st.integers(0, 10**12)),
    st.tuples(st.just("float_id"), st.floats(allow_nan=True, allow_infinity=True)),
    st.tuples(st.just("list_title"), st.lists(clean, min_size=1, max_size=3)),
    st.tuples(st.just("number_title"), st.integers(-10**6, 10**6) | st.floats(-1e6, 1e6)),
    st.tuples(st.just("null_id"),),
    st.tuples(st.just("dup_id"), st.integers(0, 10_000)),
    st.tuples(st.just("empty_item"),),
    st.tuples(st.just("huge"), clean, st.sampled_from(HUGE_SIZES)),
    st.tuples(st.just("raw_non_utf8"), clean, st.sampled_from(BAD_BYTES)),
    st.tuples(st.just("lone_surrogate"), clean),
    st.tuples(st.just("truncated"), clean, st.integers(1, 200)),
    st.tuples(st.just("not_object"), json_values.filter(lambda v: not isinstance(v, dict))),
    st.tuples(st.just("random_object"), st.dictionaries(st.text(max_size=8), json_values, max_size=5)),
    st.tuples(st.just("huge_int"),),
    st.tuples(st.just("deep_nesting"), st.sampled_from(["[", '{"a":'])),
    st.tuples(st.just("garbage"), st.binary(max_size=80).map(lambda b: b"G" + b.replace(b"\n", b""))),
)


def _float_text(x: float) -> str:
    """How a JSON number must read as an id: NaN is missing, 12.0 is "12"."""
    if math.isnan(x):
        return ""
    return str(int(x)) if x.is_integer() else str(x)


def render_jsonl(rows: list[tuple]) -> tuple[bytes, dict[int, Expect]]:
    lines: list[bytes] = []
    expected: dict[int, Expect] = {}
    kept: list[str] = []

    def obj(item_id: str | None, title: str, reasons: list[str] = ()) -> Expect:
        if not item_id:
            return Expect(["missing_id"])
        if item_id in kept:
            return Expect(["duplicate_id"])
        kept.append(item_id)
        return Expect(list(reasons), kept={"item_id": item_id, "title": title})

    for r, (kind, *args) in enumerate(rows):
        item_id = f"V{r}"
        line: bytes
        if kind == "valid":
            title, colors = args
            line = json.dumps({"item_id": item_id, "title": title, "colors": colors}).encode()
            exp = obj(item_id, title)
        elif kind == "int_id":
            line = json.dumps({"item_id": args[0], "title": "t"}).encode()
            exp = obj(str(args[0]), "t")
        elif kind == "float_id":
            line = json.dumps({"item_id": args[0], "title": "t"}).encode()  # NaN/Infinity as JSON allows
            exp = obj(_float_text(args[0]), "t")
        elif kind == "list_title":
            line = json.dumps({"item_id": item_id, "title": args[0]}).encode()
            exp = obj(item_id, ", ".join(args[0]))
        elif kind == "number_title":
            line = json.dumps({"item_id": item_id, "title": args[0]}).encode()
            x = args[0]
            exp = obj(item_id, _float_text(x) if isinstance(x, float) else str(x))
        elif kind == "null_id":
            line = b'{"item_id": null, "title": "t"}'
            exp = Expect(["missing_id"])
        elif kind == "dup_id":
            dup = kept[args[0] % len(kept)] if kept else ""
            line = json.dumps({"item_id": dup, "title": "t2"}).encode()
            exp = obj(dup, "t2")
        elif kind == "empty_item":
            line = json.dumps({"item_id": item_id, "title": None, "colors": [], "image_paths": []}).encode()
            exp = Expect(["empty_item"])
        elif kind == "huge":
            text, size = args
            raw = (text * (size // len(text) + 1))[:size]
            line = json.dumps({"item_id": item_id, "title": raw}).encode()
            exp = obj(item_id, raw.strip()[:MAX_FIELD_CHARS], _cut(raw))
        elif kind == "raw_non_utf8":
            text, bad = args
            raw = text.encode() + bad
            line = b'{"item_id": "' + item_id.encode() + b'", "title": ' + json.dumps(text).encode()[:-1] + bad + b'"}'
            exp = obj(item_id, raw.decode("utf-8", "replace"), ["non_utf8_text"])
        elif kind == "lone_surrogate":
            line = b'{"item_id": "' + item_id.encode() + b'", "title": "\\ud800' + json.dumps(args[0]).encode()[1:] + b"}"
            exp = obj(item_id, None, ["non_utf8_text"])  # the title's replacement char is not pinned
        elif kind == "truncated":
            full = json.dumps({"item_id": item_id, "title": args[0]}).encode()
            line = full[: min(args[1], len(full) - 1)]
            exp = Expect(["malformed_row"])
        elif kind == "not_object":
            line = json.dumps(args[0]).encode()
            exp = Expect(["malformed_row"])
        elif kind == "random_object":
            # No "item_id" key (renamed), so the record must come out as a missing id.
            line = json.dumps({("x" + k if k == "item_id" else k): v for k, v in args[0].items()}).encode()
            exp = Expect(["missing_id"])
        elif kind == "huge_int":
            line = b'{"item_id": "' + item_id.encode() + b'", "title": ' + b"9" * 5000 + b"}"
            exp = Expect(["malformed_row"])
        elif kind == "deep_nesting":
            line = args[0].encode() * 100_000
            exp = Expect(["malformed_row"])
        else:
            line, exp = args[0], Expect([], garbage=True)
        lines.append(line)
        expected[len(lines)] = exp
    return b"\n".join(lines) + b"\n", expected


@FUZZ
@given(rows=st.lists(jsonl_row, min_size=1, max_size=25))
def test_jsonl_catalog_keeps_valid_rows_and_counts_every_skip(rows: list[tuple], work: Path) -> None:
    with scratch(work) as d:
        body, expected = render_jsonl(rows)
        (d / "catalog.jsonl").write_bytes(body)
        result = read_catalog(d / "catalog.jsonl")
        skipped = check_catalog(result)
        tally("catalog/generic jsonl (structured)", records=len(expected), kept=len(result.items),
              rejects=result.rejects)
        garbage_kept = check_positions(expected, result.rejects, CATALOG_SKIPS)
        assert len(result.items) + skipped == len(expected)
        want = [e.kept for e in expected.values() if e.kept is not None]
        assert len(result.items) == len(want) + garbage_kept
        items = result.items.set_index("item_id")
        for w in want:
            if w["title"] is not None:
                assert items.loc[w["item_id"], "title"] == w["title"]
            else:
                assert w["item_id"] in items.index


# --------------------------------------------------------------------------- generic Parquet

# Columns of the "wrong" type for a text field: how each becomes text is for the reader to
# decide, but it must not crash, and the item must stay.
WRONG_TYPED = {
    "colors": (pa.list_(pa.string()), st.lists(clean, max_size=3)),
    "size": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "description": (pa.float64(), st.floats()),
    "brand": (pa.binary(), st.binary(max_size=12)),
    "materials": (pa.struct([("a", pa.string()), ("t", pa.timestamp("us"))]),
                  st.fixed_dictionaries({"a": clean, "t": st.datetimes(timezones=st.none())})),
    "patterns": (pa.timestamp("us"), st.datetimes()),
    "link_text": (pa.bool_(), st.booleans()),
}

parquet_row = st.one_of(
    st.tuples(st.just("valid"), clean, st.fixed_dictionaries({k: v for k, (_, v) in WRONG_TYPED.items()})),
    st.tuples(st.just("null_id"),),
    st.tuples(st.just("dup_id"), st.integers(0, 10_000)),
    st.tuples(st.just("empty_item"),),
    st.tuples(st.just("huge"), clean, st.sampled_from(HUGE_SIZES)),
)
id_types = st.sampled_from(["string", "int64", "float64", "binary", "dictionary"])


def _id_value(id_type: str, r: int, bad: bytes | None) -> tuple[Any, str]:
    """The Parquet value of row ``r``'s id and the text it must read as."""
    if id_type == "int64":
        return 1000 + r, str(1000 + r)
    if id_type == "float64":
        return (1000 + r) + (0.5 if r % 2 else 0.0), _float_text((1000 + r) + (0.5 if r % 2 else 0.0))
    if id_type == "binary":
        raw = f"V{r}".encode() + (bad or b"")
        return raw, raw.decode("utf-8", "replace")
    return f"V{r}", f"V{r}"


@FUZZ
@given(rows=st.lists(parquet_row, min_size=1, max_size=20), id_type=id_types,
       bad=st.none() | st.sampled_from(BAD_BYTES))
def test_parquet_catalog_with_wrong_types_keeps_valid_rows(rows: list[tuple], id_type: str,
                                                           bad: bytes | None, work: Path) -> None:
    ids: list[Any] = []
    titles: list[str | None] = []
    typed: dict[str, list[Any]] = {k: [] for k in WRONG_TYPED}
    expected: dict[int, Expect] = {}
    kept: list[Any] = []
    for r, (kind, *args) in enumerate(rows):
        value, text = _id_value(id_type, r, bad)
        # One non_utf8_text reject per item, whichever of its fields had the broken bytes.
        broken = id_type == "binary" and bad is not None
        title: str | None = "t"
        values: dict[str, Any] = {}
        if kind == "null_id":
            value, exp = None, Expect(["missing_id"])
        elif kind == "dup_id" and kept:
            value, exp = kept[args[0] % len(kept)], Expect(["duplicate_id"])
        elif kind == "empty_item":
            title, exp = None, Expect(["non_utf8_text"] * broken + ["empty_item"])
        elif kind == "huge":
            raw = (args[0] * (args[1] // len(args[0]) + 1))[: args[1]]
            title = raw
            exp = Expect(["non_utf8_text"] * broken + _cut(raw),
                         kept={"item_id": text, "title": raw.strip()[:MAX_FIELD_CHARS]})
        else:  # valid (or a duplicate with nothing to duplicate yet)
            if kind == "valid":
                title, values = args
            broken = broken or not _utf8_bytes(values.get("brand", b""))
            exp = Expect(["non_utf8_text"] * broken, kept={"item_id": text, "title": title})
        if exp.kept is not None:
            kept.append(value)
        for k in typed:  # rows without typed values get nulls (an empty item must stay empty)
            typed[k].append(values.get(k))
        ids.append(value)
        titles.append(title)
        expected[r + 1] = exp
    id_array = (pa.array(ids, pa.string()).dictionary_encode() if id_type == "dictionary"
                else pa.array(ids, pa.string() if id_type == "string" else getattr(pa, id_type)()))
    table = pa.table({"item_id": id_array, "title": pa.array(titles, pa.string()),
                      **{k: pa.array(v, WRONG_TYPED[k][0]) for k, v in typed.items()}})
    with scratch(work) as d:
        pq.write_table(table, d / "catalog.parquet", row_group_size=7)
        result = read_catalog(d / "catalog.parquet")
        skipped = check_catalog(result)
        tally("catalog/generic parquet (types)", records=len(rows), kept=len(result.items),
              rejects=result.rejects)
        check_positions(expected, result.rejects, CATALOG_SKIPS)
        assert len(result.items) + skipped == len(rows)
        want = [e.kept for e in expected.values() if e.kept is not None]
        assert result.items["item_id"].tolist() == [w["item_id"] for w in want]
        assert result.items["title"].tolist() == [w["title"] for w in want]


def _utf8_bytes(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@FEW
@given(n_rows=st.integers(1, 40), cut=st.floats(0.0, 0.999), flips=st.lists(st.integers(0, 10**6), max_size=3))
def test_corrupt_parquet_is_refused_naming_the_file_or_read_cleanly(n_rows: int, cut: float,
                                                                     flips: list[int], work: Path) -> None:
    """Truncated or bit-flipped Parquet: the whole file is unusable -> one CatalogError / EngagementError
    that names it; or, when the damage misses everything that matters, a clean read."""
    table = pa.table({"item_id": [f"I{i}" for i in range(n_rows)], "title": [f"t{i}" for i in range(n_rows)],
                      "surface": ["search"] * n_rows, "action": ["click"] * n_rows,
                      "query": [f"q{i}" for i in range(n_rows)]})
    with scratch(work) as d:
        path = d / "damaged.parquet"
        pq.write_table(table, path)
        data = bytearray(path.read_bytes())
        if flips:
            for f in flips:
                data[f % len(data)] ^= 0xFF
        else:
            data = data[: int(cut * len(data))]
        path.write_bytes(bytes(data))
        try:
            result = read_catalog(path)
        except CatalogError as e:
            assert str(path) in str(e)
            tally("catalog/generic parquet (damaged)", refused=True)
        else:
            tally("catalog/generic parquet (damaged)", records=n_rows, kept=len(result.items),
                  rejects=result.rejects)
            assert len(result.items) + check_catalog(result) <= n_rows
        try:
            log, rejects = read_engagements(path, {f"I{i}" for i in range(n_rows)})
        except EngagementError as e:
            assert str(path) in str(e)
            tally("engagement parquet (damaged)", refused=True)
        else:
            tally("engagement parquet (damaged)", records=n_rows, kept=len(log), rejects=rejects)
            assert len(log) + check_engagements(log, rejects) <= n_rows


# --------------------------------------------------------------------------- random whole files

CATALOG_TARGETS = ["styles.csv in a dir", "train.csv in a dir", "file.csv", "file.jsonl", "file.parquet"]
ENGAGEMENT_TARGETS = ["log.csv", "log.jsonl", "log.parquet"]


@FUZZ
@given(data=st.binary(max_size=3000), target=st.sampled_from(CATALOG_TARGETS + ENGAGEMENT_TARGETS))
def test_random_bytes_are_read_or_refused_with_a_clear_error(data: bytes, target: str, work: Path) -> None:
    """A file of random bytes under every name a reader accepts."""
    with scratch(work) as d:
        if target.endswith("in a dir"):
            file = d / target.split()[0]
            read_from = d
        else:
            file = read_from = d / target
        file.write_bytes(data)
        if target in ENGAGEMENT_TARGETS:
            try:
                log, rejects = read_engagements(read_from, {"I1"})
            except EngagementError as e:
                assert str(file) in str(e)
                tally(f"random bytes -> engagement {file.suffix}", refused=True)
            else:
                tally(f"random bytes -> engagement {file.suffix}", kept=len(log), rejects=rejects,
                      records=sum(bool(x.strip()) for x in data.split(b"\n")))
                check_engagements(log, rejects)
            return
        try:
            result = read_catalog(read_from)
        except CatalogError as e:
            assert str(file) in str(e) or str(read_from) in str(e)
            tally(f"random bytes -> catalog {target}", refused=True)
        else:
            tally(f"random bytes -> catalog {target}", kept=len(result.items), rejects=result.rejects,
                  records=sum(bool(x.strip()) for x in data.split(b"\n")))
            check_catalog(result)


def test_parquet_without_item_id_and_log_without_columns_name_the_file(work: Path) -> None:
    with scratch(work) as d:
        pq.write_table(pa.table({"title": ["a"]}), d / "c.parquet")
        with pytest.raises(CatalogError, match=re.escape(str(d / "c.parquet")) + ".*item_id"):
            read_catalog(d / "c.parquet")
        (d / "log.jsonl").write_text("")
        pq.write_table(pa.table({"surface": ["search"]}), d / "log.parquet")
        with pytest.raises(EngagementError, match=re.escape(str(d / "log.parquet")) + ".*action"):
            read_engagements(d / "log.parquet", set())


# --------------------------------------------------------------------------- engagement logs

KNOWN = ["I0", "I1", "I2", "I3", "K\ufffd"]  # "K\ufffd": a catalog id that had a broken byte
cased = st.sampled_from([str.lower, str.upper, str.title, lambda s: f" {s} "])
good_ts = st.one_of(st.none(), st.integers(0, 2_000_000_000), st.floats(0, 2e9),
                    st.just("2024-01-02T03:04:05Z"))
bad_ts = st.sampled_from(["not a time", "inf", "-Infinity", "9" * 400, "1e999"])

eng_row = st.one_of(
    st.tuples(st.just("valid"), st.sampled_from(SURFACES), cased, st.sampled_from(ACTIONS), cased, clean,
              st.sampled_from(KNOWN[:4]), st.sampled_from(["", "u1", "u2"]), good_ts),
    st.tuples(st.just("bad_ts"), bad_ts),
    st.tuples(st.just("non_utf8"), st.sampled_from(["user_id", "query", "source", "item_id"]),
              st.sampled_from(BAD_BYTES)),
    st.tuples(st.just("unknown_surface"), clean),
    st.tuples(st.just("unknown_action"), clean),
    st.tuples(st.just("empty_query"),),
    st.tuples(st.just("unknown_item"), clean),
    st.tuples(st.just("unknown_query_item"), clean),
    st.tuples(st.just("few_fields"), st.integers(1, 6)),
    st.tuples(st.just("many_fields"), st.lists(clean, min_size=2, max_size=3)),
    st.tuples(st.just("garbage"), st.binary(max_size=60).map(
        lambda b: b"G" + b.replace(b"\n", b"").replace(b'"', b""))),
)
CSV_ONLY = {"few_fields", "many_fields", "garbage"}


def _expected_ts(ts: Any) -> float:
    if ts is None:
        return math.nan
    if isinstance(ts, str):
        return pd.Timestamp(ts).timestamp()
    return float(ts)


def engagement_records(rows: list[tuple], fmt: str) -> tuple[list[dict[str, Any] | bytes], list[Expect]]:
    """Records as dicts of raw values (bytes where a field holds bytes that are not UTF-8), or raw
    lines for CSV-only kinds, with what each must become."""
    out: list[dict[str, Any] | bytes] = []
    exps: list[Expect] = []
    base = {"surface": "search", "action": "click", "query": "red shoes", "item_id": "I1",
            "user_id": "u9", "timestamp": 5, "source": "app"}
    for kind, *args in rows:
        if kind in CSV_ONLY and fmt != "csv":
            continue
        rec: dict[str, Any] = dict(base)
        reasons: list[str] = []
        kept: dict[str, Any] | None = None
        if kind == "valid":
            surface, s_case, action, a_case, query, item, user, ts = args
            if surface == "closeup":
                query = KNOWN[len(out) % 4]
            rec.update(surface=s_case(surface), action=a_case(action), query=query, item_id=item,
                       user_id=user, timestamp=ts)
            kept = {"surface": surface, "action": action, "query": query, "item_id": item,
                    "user_id": user or (query if surface == "home" else ""), "timestamp": _expected_ts(ts)}
        elif kind == "bad_ts":
            rec["timestamp"] = args[0]
            reasons, kept = ["bad_timestamp"], {"timestamp": math.nan}
        elif kind == "non_utf8":
            field, bad = args
            raw = b"K" + bad if field == "item_id" else b"x" + bad
            rec[field] = raw
            reasons = ["non_utf8_text"]
            want = raw.decode("utf-8", "replace")
            kept = {"item_id": want} if field == "item_id" else {field: want}
            if field == "item_id" and want != KNOWN[4]:  # several bytes: more than one U+FFFD
                reasons, kept = ["unknown_item"], None
        elif kind == "unknown_surface":
            rec["surface"] = "x" + args[0]
            reasons = ["unknown_surface"]
        elif kind == "unknown_action":
            rec["action"] = "x" + args[0]
            reasons = ["unknown_action"]
        elif kind == "empty_query":
            rec["query"] = " "
            reasons = ["empty_query"]
        elif kind == "unknown_item":
            rec["item_id"] = "x" + args[0]
            reasons = ["unknown_item"]
        elif kind == "unknown_query_item":
            rec.update(surface="closeup", query="x" + args[0])
            reasons = ["unknown_query_item"]
        elif kind == "few_fields":
            out.append(b",".join(str(v).encode() for v in base.values()).rsplit(b",", args[0])[0])
            exps.append(Expect(["malformed_row"]))
            continue
        elif kind == "many_fields":
            rec["query"] = ",".join(args[0])
            reasons, kept = ["repaired_row"], {"query": ",".join(args[0])}
        else:
            out.append(args[0])
            exps.append(Expect([], garbage=True))
            continue
        out.append(rec)
        exps.append(Expect(reasons, kept=kept))
    return out, exps


def write_log(path: Path, records: list[dict[str, Any] | bytes], fmt: str) -> None:
    def raw(v: Any) -> bytes:
        return v if isinstance(v, bytes) else b"" if v is None else str(v).encode()

    if fmt == "csv":
        lines = [",".join(ENGAGEMENT_COLUMNS).encode()]
        lines += [r if isinstance(r, bytes) else b",".join(raw(r[c]) for c in ENGAGEMENT_COLUMNS)
                  for r in records]
        path.write_bytes(b"\n".join(lines) + b"\n")
    elif fmt == "jsonl":
        def line(r: dict[str, Any]) -> bytes:
            parts = []
            for k, v in r.items():
                if isinstance(v, bytes):  # raw bytes inside a JSON string
                    parts.append(json.dumps(k).encode() + b': "' + v + b'"')
                elif isinstance(v, str) and v == "9" * 400:  # a number no float can hold
                    parts.append(json.dumps(k).encode() + b": " + v.encode())
                else:
                    parts.append(json.dumps(k).encode() + b": " + json.dumps(v).encode())
            return b"{" + b", ".join(parts) + b"}"

        path.write_bytes(b"\n".join(line(r) for r in records) + b"\n")
    else:
        # One Arrow type per column: text columns that may hold broken bytes are binary; the
        # timestamp column is text (it mixes numbers, ISO strings and junk).
        cols: dict[str, pa.Array] = {}
        for c in ENGAGEMENT_COLUMNS:
            values = [r.get(c) for r in records]
            if c == "timestamp":
                cols[c] = pa.array([None if v is None else str(v) for v in values], pa.string())
            else:
                cols[c] = pa.array([v if isinstance(v, bytes) or v is None else str(v).encode()
                                    for v in values], pa.binary())
        pq.write_table(pa.table(cols), path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@FUZZ
@given(rows=st.lists(eng_row, min_size=1, max_size=25))
def test_engagement_log_keeps_valid_rows_and_counts_every_skip(fmt: str, rows: list[tuple], work: Path) -> None:
    records, exps = engagement_records(rows, fmt)
    first = 2 if fmt == "csv" else 1  # CSV line 1 is the header
    expected = {first + i: e for i, e in enumerate(exps)}
    with scratch(work) as d:
        path = d / f"log.{fmt}"
        write_log(path, records, fmt)
        log, rejects = read_engagements(path, KNOWN)
        skipped = check_engagements(log, rejects)
        tally(f"engagement {fmt} (structured)", records=len(exps), kept=len(log), rejects=rejects)
        garbage_kept = check_positions(expected, rejects, ENGAGEMENT_SKIPS)
        assert len(log) + skipped == len(exps)
        want = [e.kept for e in exps if e.kept is not None]
        assert len(log) == len(want) + garbage_kept
        if garbage_kept == 0:  # row for row, in order
            for got, w in zip(log.to_dict("records"), want):
                for k, v in w.items():
                    if k == "timestamp":
                        assert math.isnan(got[k]) if math.isnan(v) else got[k] == pytest.approx(v), (got, w)
                    else:
                        assert got[k] == v, (got, w)
