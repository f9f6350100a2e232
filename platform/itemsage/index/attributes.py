"""Filterable attributes of an index's items: one bitmap per attribute value, over index labels.

The index's labels (``IdMap``: int64, never reused) are the bit positions, so a filter evaluates
to a bitmap that FAISS reads directly as an ``IDSelectorBitmap`` inside the search: the candidate
set is restricted before ranking, never cut from a fixed top-k afterwards
(``itemsage.index.filtered``).

* **keyword / keyword_list**: one packed bitmap (little-endian bit order, FAISS's) per value. A
  clause is a bitwise AND / OR over ``N/8`` bytes, microseconds even at 1M items, and setting or
  clearing one item is one bit. A keyword_list item (colors "Red, Blue") has a bit in several.
* **number**: a float64 value per label (NaN where absent); a range is one vectorised compare.

The table is saved with the index (``attributes.json`` + ``attributes.npz``, both hashed in the
index's metadata.json, so they are versioned with it) and is mutable for a live catalog:
:meth:`AttributeTable.set_item` and :meth:`AttributeTable.remove_item` change one label; a reader
always gets a new selection bitmap, so a concurrent update never changes one mid-search.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from itemsage.config import FilterableAttribute, FilterSearchConfig, IndexConfig
from itemsage.index.filters import (
    KEYWORD_LIST,
    NUMBER,
    AttributeSpec,
    Clause,
    Equals,
    Filter,
    OneOf,
    Range,
    parse_filter,
)
from itemsage.index.idmap import IdMap

ATTRIBUTES_JSON = "attributes.json"
ATTRIBUTES_NPZ = "attributes.npz"
ATTRIBUTES_FORMAT = 1
# Facet values listed per keyword attribute (the most frequent first): a page shows a select box,
# not thousands of options.
MAX_FACET_VALUES = 200


def _words(bits: int) -> int:
    """Bitmap bytes for ``bits`` labels, rounded up to whole uint64 words (fast popcount views)."""
    return ((max(bits, 1) + 63) // 64) * 8


def popcount(bitmap: np.ndarray) -> int:
    return int(np.bitwise_count(bitmap.view(np.uint64)).sum())


def bitmap_labels(bitmap: np.ndarray) -> np.ndarray:
    """Sorted int64 labels of the set bits; cost follows the set words, not the bitmap size."""
    words = bitmap.view(np.uint64)
    nz = np.flatnonzero(words)
    if nz.size == 0:
        return np.empty(0, np.int64)
    bits = np.unpackbits(bitmap.reshape(-1, 8)[nz], axis=1, bitorder="little")
    rows, cols = np.nonzero(bits)
    return nz[rows].astype(np.int64) * 64 + cols


def labels_bitmap(labels: np.ndarray, nbytes: int) -> np.ndarray:
    mask = np.zeros(nbytes * 8, dtype=bool)
    mask[labels] = True
    return np.packbits(mask, bitorder="little")


class Selection:
    """The labels a filter keeps: a packed bitmap (FAISS ``IDSelectorBitmap`` layout) and its count.

    Read-only once made: :meth:`AttributeTable.select` hands the same object to every request of
    one filter until a write changes the table, so whatever is derived from it (the label list,
    the FAISS selector) is derived once."""

    def __init__(
        self,
        bitmap: np.ndarray,
        count: int,
        labels: np.ndarray | None = None,
        key: Any = None,
        filter: Filter | None = None,
    ) -> None:
        self.bitmap = bitmap
        self.count = count
        self._labels = labels
        # (table, version, filter): equal keys select the same labels, so statistics about a
        # selection (per-IVF-list counts) can be cached by it; None: not cacheable.
        self.key = key
        # The filter, normalised (clauses by attribute, in-list values sorted): what a filter view
        # (itemsage.index.views) is kept under; None for a selection made from labels.
        self.filter = filter
        self._params: Any = None
        # The filter view answering this selection (itemsage.index.views), once looked up.
        self.view: Any = None

    def search_parameters(self) -> Any:
        """FAISS ``SearchParameters`` applying this selection as an ``IDSelectorBitmap``, made on
        first use and shared (FAISS only reads them): what exact filtered search over a flat index
        needs per request, cached exactly as the selection is."""
        if self._params is None:
            import faiss

            params = faiss.SearchParameters()
            params.sel = faiss.IDSelectorBitmap(self.bitmap.size, faiss.swig_ptr(self.bitmap))
            self._params = params
        return self._params

    def labels(self) -> np.ndarray:
        """Sorted selected labels (known without a bitmap scan when a clause's posting list was)."""
        if self._labels is None:
            self._labels = bitmap_labels(self.bitmap)
        return self._labels

    def contains(self, labels: np.ndarray) -> np.ndarray:
        """Per label: is it selected (vectorised bit test)."""
        labels = np.asarray(labels, np.int64)
        inside = (labels >= 0) & (labels < self.bitmap.size * 8)
        out = np.zeros(labels.shape, dtype=bool)
        lab = labels[inside]
        out[inside] = (self.bitmap[lab >> 3] >> (lab & 7).astype(np.uint8)) & 1 == 1
        return out


def specs_from_config(filterable: Mapping[str, FilterableAttribute]) -> dict[str, AttributeSpec]:
    return {name: AttributeSpec(name, a.field or name, a.type, a.separator) for name, a in filterable.items()}


class AttributeTable:
    """Per-label attribute values of one index, as bitmaps (keywords) and arrays (numbers)."""

    def __init__(
        self, specs: Mapping[str, AttributeSpec], policy: FilterSearchConfig | None = None, capacity: int = 0
    ) -> None:
        self.specs = dict(specs)
        self.policy = policy or FilterSearchConfig()
        self._nbytes = _words(capacity)
        self._values: dict[str, dict[str, np.ndarray]] = {n: {} for n, s in self.specs.items() if s.type != NUMBER}
        self._numbers: dict[str, np.ndarray] = {
            n: np.full(self._nbytes * 8, np.nan) for n, s in self.specs.items() if s.type == NUMBER
        }
        self._live = np.zeros(self._nbytes, np.uint8)  # labels with an entry (set_item'd, not removed)
        # Sorted labels per keyword value, made on first use of a rare value: a selective filter's
        # exact path then needs no bitmap scan. Dropped for a value when an update touches it.
        self._postings: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()  # writers, and the postings cache
        self.version = 0  # bumped by every update: part of each Selection's cache key
        # Facet filters repeat: a request's filter JSON is parsed once (frozen JSON -> Filter) and
        # its selection made once per table version (a write makes every cached one stale).
        self._parsed: dict[Any, Filter] = {}
        self._selections: dict[Filter, Selection] = {}
        self._by_json: dict[Any, Selection] = {}
        # Called with a label after set_item / remove_item changed it (outside the table lock):
        # filter views follow the table through them (itemsage.index.views).
        self.listeners: list[Callable[[int], None]] = []

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def from_columns(
        cls,
        specs: Mapping[str, AttributeSpec],
        labels: np.ndarray,
        columns: Mapping[str, Any],
        policy: FilterSearchConfig | None = None,
    ) -> AttributeTable:
        """A table for items ``labels`` whose catalog ``columns`` (field -> values, row i = labels[i])
        are given. Attributes whose field is not among the columns are left out."""
        labels = np.asarray(labels, np.int64)
        present = {n: s for n, s in specs.items() if s.field in columns}
        table = cls(present, policy, capacity=int(labels.max()) + 1 if labels.size else 0)
        for name, spec in present.items():
            col = columns[spec.field]
            if spec.type == NUMBER:
                table._numbers[name][labels] = [_number(v) for v in col]
                continue
            rows: list[int] = []
            vals: list[str] = []
            for r, v in enumerate(col):
                for word in _keywords(spec, v):
                    rows.append(r)
                    vals.append(word)
            if not vals:
                continue
            uniq, inverse = np.unique(np.asarray(vals, dtype=object).astype(str), return_inverse=True)
            row_labels = labels[np.asarray(rows, np.int64)]
            order = np.argsort(inverse, kind="stable")
            bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
            for code, value in enumerate(uniq.tolist()):
                table._values[name][value] = labels_bitmap(
                    row_labels[order[bounds[code] : bounds[code + 1]]], table._nbytes
                )
        table._live = labels_bitmap(labels, table._nbytes)
        return table

    @classmethod
    def from_catalog(
        cls,
        specs: Mapping[str, AttributeSpec],
        catalog_parquet: str | Path,
        label_of: Mapping[str, int],
        policy: FilterSearchConfig | None = None,
        filesystem: Any = None,
    ) -> AttributeTable:
        """A table over the items of ``catalog.parquet`` that have a label (are in the index)."""
        import pyarrow.parquet as pq

        fields = sorted({s.field for s in specs.values()})
        schema = pq.read_schema(catalog_parquet, filesystem=filesystem)
        cols = ["item_id", *[f for f in fields if f in schema.names and f != "item_id"]]
        table = pq.read_table(catalog_parquet, columns=cols, filesystem=filesystem)
        ids = [str(i) for i in table.column("item_id").to_pylist()]
        keep = [r for r, i in enumerate(ids) if i in label_of]
        labels = np.array([label_of[ids[r]] for r in keep], np.int64)
        columns = {c: [table.column(c)[r].as_py() for r in keep] for c in cols[1:]}
        return cls.from_columns(specs, labels, columns, policy)

    # ---- live updates --------------------------------------------------------------------------
    def _grow(self, label: int) -> None:
        if label < self._nbytes * 8:
            return
        nbytes = _words(max(label + 1, self._nbytes * 16))  # double, so n updates cost O(n) copies

        def grown(a: np.ndarray, fill: Any = 0) -> np.ndarray:
            out = np.full(nbytes * (8 if a.dtype == np.float64 else 1), fill, a.dtype)
            out[: a.size] = a
            return out

        for values in self._values.values():
            for v in list(values):
                values[v] = grown(values[v])
        for n in list(self._numbers):
            self._numbers[n] = grown(self._numbers[n], np.nan)
        self._live = grown(self._live)
        self._nbytes = nbytes

    def set_item(self, label: int, attrs: Mapping[str, Any]) -> None:
        """Set the attributes of one index label from its catalog fields (``attrs``: field -> value,
        e.g. ``{"size_type": "Women", "colors": "Red, Blue", "price": 12.5}``), replacing what it
        had. Fields not given leave the attribute empty for this item."""
        label = int(label)
        if label < 0:
            raise ValueError(f"labels are non-negative; got {label}")
        with self._lock:
            self._clear(label)
            self._grow(label)
            byte, bit = label >> 3, np.uint8(1 << (label & 7))
            for name, spec in self.specs.items():
                v = attrs.get(spec.field)
                if spec.type == NUMBER:
                    self._numbers[name][label] = _number(v)
                    continue
                for word in _keywords(spec, v):
                    bm = self._values[name].get(word)
                    if bm is None:
                        bm = self._values[name][word] = np.zeros(self._nbytes, np.uint8)
                    bm[byte] |= bit
                    self._postings.pop((name, word), None)
            self._live[byte] |= bit
            self.version += 1
        self._changed(label)

    def remove_item(self, label: int) -> None:
        """Forget one label's attributes (the item left the index); unknown labels are a no-op."""
        with self._lock:
            self._clear(int(label))
            self.version += 1
        self._changed(int(label))

    def _changed(self, label: int) -> None:
        for listener in list(self.listeners):
            listener(label)

    def _clear(self, label: int) -> None:
        if label >= self._nbytes * 8:
            return
        byte, keep = label >> 3, np.uint8(~(1 << (label & 7)) & 0xFF)
        for name, values in self._values.items():
            for word, bm in values.items():
                if bm[byte] & ~keep:
                    bm[byte] &= keep
                    self._postings.pop((name, word), None)
        for arr in self._numbers.values():
            arr[label] = np.nan
        self._live[byte] &= keep

    # ---- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return popcount(self._live)

    def labels(self) -> np.ndarray:
        """Sorted labels that have an entry (set, not removed)."""
        return bitmap_labels(self._live)

    def select(self, flt: Filter) -> Selection | None:
        """The labels matching every clause of ``flt``; None for an empty filter (no restriction).

        ``flt`` must have been parsed against :attr:`specs` (``itemsage.index.filters.parse_filter``).
        """
        if not flt:
            return None
        cached = self._selections.get(flt)
        if cached is not None and cached.key[1] == self.version:
            return cached
        # One size for every clause: a concurrent set_item may grow the table meanwhile (it
        # replaces the arrays before it publishes the new size, so they are never shorter).
        nbytes = self._nbytes
        version = self.version  # read first: an update after it makes the key stale, not wrong
        out: np.ndarray | None = None
        smallest: np.ndarray | None = None  # the shortest posting list among the clauses
        for clause in flt.clauses:
            bm = self._clause(clause, nbytes)
            out = bm if out is None else np.bitwise_and(out, bm, out=out)
            posting = self._posting(clause)
            if posting is not None and (smallest is None or posting.size < smallest.size):
                smallest = posting
        assert out is not None
        count = popcount(out)
        labels = None
        if smallest is not None:
            labels = smallest if len(flt.clauses) == 1 else smallest[Selection(out, count).contains(smallest)]
        sel = Selection(out, count, labels, key=(id(self), version, flt), filter=normalised(flt))
        if len(self._selections) >= SELECTION_CACHE_SIZE and flt not in self._selections:
            self._selections.pop(next(iter(self._selections)), None)  # the oldest entry
        self._selections[flt] = sel
        return sel

    def select_json(self, filters: Mapping[str, Any]) -> Selection | None:
        """``select(parse(filters))`` for a request's filter JSON, the selection remembered
        under the JSON itself (until a write): a repeated facet filter costs a dict lookup."""
        key = _flat_key(filters)
        if key is not None:
            cached = self._by_json.get(key)
            if cached is not None and cached.key[1] == self.version:
                return cached
        sel = self.select(self.parse(filters))
        if key is not None and sel is not None:
            if len(self._by_json) >= SELECTION_CACHE_SIZE:
                self._by_json.pop(next(iter(self._by_json)), None)
            self._by_json[key] = sel
        return sel

    def parse(self, filters: Mapping[str, Any]) -> Filter:
        """``parse_filter(filters, self.specs)``, remembered per distinct filter JSON (a bad
        filter raises ``FilterError`` every time and is not remembered)."""
        try:
            key = _frozen(filters)
            hash(key)
        except TypeError:  # a value JSON cannot hold: parse_filter says what is wrong
            return parse_filter(filters, self.specs)
        flt = self._parsed.get(key)
        if flt is None:
            flt = parse_filter(filters, self.specs)
            if len(self._parsed) >= SELECTION_CACHE_SIZE:
                self._parsed.pop(next(iter(self._parsed)), None)
            self._parsed[key] = flt
        return flt

    def matches(self, flt: Filter, label: int) -> bool:
        """Does item ``label`` satisfy every clause of ``flt`` (one item's test, for views that
        follow writes; :meth:`select` is the test over every item)."""
        label = int(label)
        if label < 0 or label >= self._nbytes * 8:
            return False
        byte, bit = label >> 3, 1 << (label & 7)
        for clause in flt.clauses:
            spec = self.specs[clause.attribute]
            if spec.type == NUMBER:
                v = float(self._numbers[clause.attribute][label])
                if math.isnan(v):
                    return False
                if isinstance(clause, Range):
                    ok = (v > clause.lo if clause.lo_open else v >= clause.lo) and (
                        v < clause.hi if clause.hi_open else v <= clause.hi
                    )
                else:
                    ok = v in ([clause.value] if isinstance(clause, Equals) else list(clause.values))
            else:
                values = self._values[clause.attribute]
                wanted = [clause.value] if isinstance(clause, Equals) else list(clause.values)  # type: ignore[union-attr]
                ok = False
                for w in wanted:
                    bm = values.get(str(w).strip())
                    if bm is not None and byte < bm.size and bm[byte] & bit:
                        ok = True
                        break
            if not ok:
                return False
        return True

    def keyword_values(self) -> list[tuple[str, str, int]]:
        """(attribute, value, item count) of every keyword value, most frequent first."""
        out = [(name, v, popcount(bm)) for name, values in self._values.items() for v, bm in list(values.items())]
        return sorted((o for o in out if o[2] > 0), key=lambda o: -o[2])

    def _posting(self, clause: Equals | OneOf | Range) -> np.ndarray | None:
        """Sorted labels of a keyword equality clause whose value keeps at most 1/64 of the
        capacity (below that a label list is smaller than the bitmap); None otherwise."""
        if not isinstance(clause, Equals) or self.specs[clause.attribute].type == NUMBER:
            return None
        key = (clause.attribute, str(clause.value).strip())
        posting = self._postings.get(key)
        if posting is not None:
            return posting
        bm = self._values[clause.attribute].get(key[1])
        if bm is None or popcount(bm) > self._nbytes * 8 // 64:
            return None
        with self._lock:  # no update between reading the bitmap and caching its labels
            posting = self._postings[key] = bitmap_labels(bm)
        return posting

    def _clause(self, clause: Equals | OneOf | Range, nbytes: int) -> np.ndarray:
        spec = self.specs[clause.attribute]
        if spec.type == NUMBER:
            vals = self._numbers[clause.attribute][: nbytes * 8]
            with np.errstate(invalid="ignore"):  # NaN (absent) never matches
                if isinstance(clause, Range):
                    lo = vals > clause.lo if clause.lo_open else vals >= clause.lo
                    hi = vals < clause.hi if clause.hi_open else vals <= clause.hi
                    mask = lo & hi
                else:
                    wanted = [clause.value] if isinstance(clause, Equals) else list(clause.values)
                    mask = np.isin(vals, np.asarray(wanted, np.float64))
            return np.packbits(mask, bitorder="little")
        values = self._values[clause.attribute]
        wanted_words = [clause.value] if isinstance(clause, Equals) else list(clause.values)  # type: ignore[union-attr]
        out = np.zeros(nbytes, np.uint8)
        for w in wanted_words:
            bm = values.get(str(w).strip())
            if bm is not None:
                np.bitwise_or(out, bm[:nbytes], out=out)
        return out

    def facets(self, max_values: int = MAX_FACET_VALUES) -> list[dict[str, Any]]:
        """Per attribute: keyword values with item counts (most frequent first), or a number's
        min/max over the items that have it. What a page builds its filter controls from."""
        out: list[dict[str, Any]] = []
        for name, spec in self.specs.items():
            entry: dict[str, Any] = {"name": name, "type": spec.type}
            if spec.type == NUMBER:
                vals = self._numbers[name]
                present = vals[~np.isnan(vals)]
                entry.update(
                    count=int(present.size),
                    min=float(present.min()) if present.size else None,
                    max=float(present.max()) if present.size else None,
                )
            else:
                counts = [(v, popcount(bm)) for v, bm in list(self._values[name].items())]
                counts = sorted((c for c in counts if c[1] > 0), key=lambda vc: (-vc[1], vc[0]))
                entry["values"] = [{"value": v, "count": c} for v, c in counts[:max_values]]
            out.append(entry)
        return out

    def copy(self) -> AttributeTable:
        """An independent copy (a snapshot saved while writes go on changes nothing of it)."""
        with self._lock:
            out = AttributeTable(self.specs, self.policy)
            out._nbytes = self._nbytes
            out._values = {n: {v: bm.copy() for v, bm in vals.items()} for n, vals in self._values.items()}
            out._numbers = {n: a.copy() for n, a in self._numbers.items()}
            out._live = self._live.copy()
            out.version = self.version
            return out

    # ---- storage -------------------------------------------------------------------------------
    def write(self, directory: Path) -> list[str]:
        """Write ``attributes.json`` and ``attributes.npz`` into ``directory``; their names."""
        with self._lock:
            arrays: dict[str, np.ndarray] = {"live": self._live.copy()}
            attrs = []
            for i, (name, spec) in enumerate(self.specs.items()):
                entry: dict[str, Any] = {
                    "name": name,
                    "field": spec.field,
                    "type": spec.type,
                    "separator": spec.separator,
                }
                if spec.type == NUMBER:
                    arrays[f"a{i}"] = self._numbers[name].copy()
                else:
                    values = list(self._values[name])
                    entry["values"] = values
                    arrays[f"a{i}"] = (
                        np.stack([self._values[name][v] for v in values])
                        if values
                        else np.zeros((0, self._nbytes), np.uint8)
                    )
                attrs.append(entry)
        header = {
            "format": ATTRIBUTES_FORMAT,
            "nbytes": self._nbytes,
            "attributes": attrs,
            "policy": self.policy.model_dump(),
        }
        (directory / ATTRIBUTES_JSON).write_text(json.dumps(header, indent=1))
        with open(directory / ATTRIBUTES_NPZ, "wb") as f:  # a file object: see faiss_index on write errors
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub reads ** as allow_pickle
        return [ATTRIBUTES_JSON, ATTRIBUTES_NPZ]

    @classmethod
    def read(cls, directory: Path) -> AttributeTable:
        header = json.loads((directory / ATTRIBUTES_JSON).read_text())
        if header.get("format") != ATTRIBUTES_FORMAT:
            raise ValueError(
                f"{directory / ATTRIBUTES_JSON}: format {header.get('format')!r}, this code reads {ATTRIBUTES_FORMAT}"
            )
        specs = {
            a["name"]: AttributeSpec(a["name"], a["field"], a["type"], a.get("separator", ","))
            for a in header["attributes"]
        }
        # A policy knob an older build saved and this one no longer has (exact_below) is dropped.
        saved = {k: v for k, v in header.get("policy", {}).items() if k in FilterSearchConfig.model_fields}
        table = cls(specs, FilterSearchConfig(**saved))
        nbytes = int(header["nbytes"])
        table._nbytes = nbytes
        with np.load(directory / ATTRIBUTES_NPZ, allow_pickle=False) as npz:
            table._live = npz["live"]
            for i, a in enumerate(header["attributes"]):
                arr = npz[f"a{i}"]
                if a["type"] == NUMBER:
                    table._numbers[a["name"]] = arr
                else:
                    table._values[a["name"]] = {v: np.ascontiguousarray(arr[j]) for j, v in enumerate(a["values"])}
        if table._live.size != nbytes:
            raise ValueError(f"{directory / ATTRIBUTES_NPZ}: bitmap size {table._live.size} != {nbytes}")
        return table


def attributes_for_index(idmap: IdMap, features: str, cfg: IndexConfig) -> AttributeTable | None:
    """The filterable attributes (``cfg.filterable``) of an index's items, read from the features
    directory's ``catalog.parquet``; None when nothing is declared or the directory has no catalog."""
    from pyarrow import fs as pafs

    from itemsage.data.features_io import resolve

    if not cfg.filterable:
        return None
    fs, root = resolve(features)
    path = f"{root}/catalog.parquet"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    ids = idmap.item_ids()
    label_of = dict(zip(ids, idmap.lookup(ids).tolist()))
    return AttributeTable.from_catalog(specs_from_config(cfg.filterable), path, label_of, cfg.filters, filesystem=fs)


def _number(v: Any) -> float:
    """A catalog value as a float; NaN for absent or unparsable ("", None, "n/a")."""
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _keywords(spec: AttributeSpec, v: Any) -> Iterable[str]:
    if v is None:
        return ()
    if isinstance(v, (list, tuple)):
        parts = [str(x) for x in v]
    elif spec.type == KEYWORD_LIST and spec.separator:
        parts = str(v).split(spec.separator)
    else:
        parts = [str(v)]
    return dict.fromkeys(p.strip() for p in parts if p is not None and str(p).strip())


# Distinct filters remembered per table (parsed JSON, selections): a shop's facet combinations.
SELECTION_CACHE_SIZE = 256


def normalised(flt: Filter) -> Filter:
    """``flt`` with its clauses ordered by attribute and in-list values sorted, a one-value
    in-list as an equality: equal filters written differently get one key."""
    clauses: list[Clause] = []
    for c in sorted(flt.clauses, key=lambda c: c.attribute):
        if isinstance(c, OneOf):
            values = tuple(sorted(c.values, key=lambda v: (isinstance(v, str), v)))
            clauses.append(Equals(c.attribute, values[0]) if len(values) == 1 else OneOf(c.attribute, values))
        else:
            clauses.append(c)
    return Filter(tuple(clauses))


_SCALARS = (str, float, int)


def _flat_key(filters: Mapping[str, Any]) -> Any:
    """A cheap hashable key for the usual filter JSON (attribute -> string / number, or a list
    of them), telling apart types that compare equal (1, 1.0, True); None for anything else."""
    parts = []
    for name, v in filters.items():
        t = type(v)
        if t in _SCALARS:
            parts.append((name, t, v))
        elif t is list and all(type(e) in _SCALARS for e in v):
            parts.append((name, list, tuple((type(e), e) for e in v)))
        else:
            return None
    return tuple(parts)


def _frozen(value: Any) -> Any:
    """A hashable key for a filter's JSON that tells apart what parses differently (1 vs True
    vs "1", a list vs a scalar)."""
    if isinstance(value, Mapping):
        return ("{", tuple(sorted(((str(k), _frozen(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    if isinstance(value, (list, tuple)):
        return ("[", tuple(_frozen(v) for v in value))
    return (type(value).__name__, value)
