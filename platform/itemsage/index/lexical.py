"""The lexical index beside the dense one: BM25 over each item's text (tantivy), keyed by index label.

A user who evaluates a retrieval system tries BM25 first, and on new products (no engagement yet)
exact words often find what an embedding misses; ``itemsage.index.hybrid`` fuses both rankings.

* **Same items, same labels.** Every document is an item's text fields joined by spaces (the
  fields the BM25 baseline of the evaluation reads) under the item's int64 label in the dense
  index, so a filter's bitmap (``itemsage.index.attributes``) restricts lexical hits exactly as it
  restricts vectors, and a live write (``itemsage.index.live``) moves both together.
* **Analysis.** Words of two or more word characters (Unicode ``\\w``), lower-cased, English stop
  words dropped (bm25s's tokenizer, which the BM25 baseline uses), words over 255 characters too.
  A query is the OR of its words, each scored by BM25 (tantivy: k1 = 1.2, b = 0.75).
* **Incremental.** Adds and deletes are staged in a tantivy writer and made visible by
  :meth:`LexicalIndex.commit` (one commit per applied batch of the live catalog, ~10 ms); a search
  first commits anything staged, so a caller that never commits still reads its own writes.
* **Saved with the dense index.** :meth:`LexicalIndex.write` puts the documents (label, text) in
  ``lexical.parquet`` inside the index directory; its SHA-256 is in the index's ``metadata.json``,
  so the index version hash covers it and ``load_index`` verifies it. Loading re-indexes the
  documents in memory (about 30k documents per second on one core): the tantivy segment files
  depend on the tantivy version, the documents do not.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from itemsage.index.attributes import Selection

LEXICAL_FILE = "lexical.parquet"
LEXICAL_FORMAT = 1
_META_KEY = b"itemsage.lexical"
_TOKENIZER = "itemsage_words"
_LABEL, _TEXT = "label", "text"
# tantivy's writer wants >= 15 MB per thread; one thread: writes are small batches.
_WRITER_HEAP = 32_000_000
MAX_WORD_CHARS = 255


def item_text(fields: Mapping[str, Any], names: Sequence[str]) -> str:
    """An item's document: its ``names`` text fields, stripped, non-empty ones joined by spaces
    (``itemsage.eval.baselines.corpus.TextCorpus`` joins the baseline's texts the same way)."""
    values = (str(fields.get(n) or "").strip() for n in names)
    return " ".join(v for v in values if v)


def _analyzer() -> Any:
    import tantivy

    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(r"\w\w+"))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        # tantivy refuses terms over 65,530 bytes; a "word" that long is never a search term anyway
        .filter(tantivy.Filter.remove_long(MAX_WORD_CHARS))
        .build()
    )


class LexicalIndex:
    """BM25 over item documents keyed by int64 labels (see the module docstring).

    Args:
        fields: the text fields each document joins (recorded, so live items get the same).
        docs: ``{label: text}`` to index now.
    """

    def __init__(self, fields: Sequence[str], docs: Mapping[int, str] | None = None) -> None:
        if not fields:
            raise ValueError("a lexical index needs at least one text field")
        self.fields = tuple(fields)
        self._docs: dict[int, str] = {int(lab): str(t) for lab, t in (docs or {}).items()}
        self._analyzer = _analyzer()
        self._lock = threading.RLock()
        # The tantivy index is built on first use (a search, or a write after one), from the
        # documents: a copy made for a snapshot, which is only written, never pays for it.
        self._engine: Any = None
        self._schema: Any = None
        self._writer: Any = None
        self._dirty = False

    def _ensure(self) -> None:
        """Build the tantivy index over the documents (once; under the lock)."""
        import tantivy

        if self._engine is not None:
            return
        builder = tantivy.SchemaBuilder()
        builder.add_integer_field(_LABEL, indexed=True, fast=True)
        builder.add_text_field(_TEXT, tokenizer_name=_TOKENIZER, index_option="freq")
        self._schema = builder.build()
        engine = tantivy.Index(self._schema)
        engine.register_tokenizer(_TOKENIZER, self._analyzer)
        # Manual reload: a commit is visible exactly when commit() returns, not after tantivy's
        # on-commit delay, so "applied" means "searchable".
        engine.config_reader(reload_policy="Manual")
        self._writer = engine.writer(heap_size=_WRITER_HEAP, num_threads=1)
        for lab, text in self._docs.items():
            self._writer.add_document(tantivy.Document(**{_LABEL: lab, _TEXT: text}))
        self._writer.commit()
        engine.reload()
        self._engine = engine

    def warm(self) -> LexicalIndex:
        """Build the search structures now (at load), not on the first search."""
        with self._lock:
            self._ensure()
        return self

    # ---- size and contents ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, label: object) -> bool:
        return label in self._docs

    def text(self, label: int) -> str | None:
        return self._docs.get(int(label))

    def analyze(self, text: str) -> list[str]:
        """The words of ``text`` as the index sees them (lower case, stop words dropped)."""
        return list(self._analyzer.analyze(text))

    # ---- writes --------------------------------------------------------------------------------
    def stage(self, add: Iterable[tuple[int, str]] = (), remove: Iterable[int] = ()) -> None:
        """Stage removals, then additions (an update is both: the old label out, the new one in);
        visible after :meth:`commit`. Removing an unknown label is a no-op."""
        import tantivy

        with self._lock:
            writer = self._writer  # None until the engine exists: it will index the documents then
            for label in remove:
                lab = int(label)
                if self._docs.pop(lab, None) is not None and writer is not None:
                    writer.delete_documents_by_term(_LABEL, lab)
                    self._dirty = True
            for label, text in add:
                lab = int(label)
                if lab in self._docs and writer is not None:
                    writer.delete_documents_by_term(_LABEL, lab)
                self._docs[lab] = str(text)
                if writer is not None:
                    writer.add_document(tantivy.Document(**{_LABEL: lab, _TEXT: str(text)}))
                    self._dirty = True

    def commit(self) -> None:
        """Make every staged change searchable (no-op when nothing is staged)."""
        with self._lock:
            if not self._dirty:
                return
            self._writer.commit()
            self._engine.reload()
            self._dirty = False

    def add(self, labels: Sequence[int], texts: Sequence[str]) -> None:
        if len(labels) != len(texts):
            raise ValueError(f"{len(labels)} labels but {len(texts)} texts")
        self.stage(add=zip(labels, texts))
        self.commit()

    def remove(self, labels: Iterable[int]) -> None:
        self.stage(remove=labels)
        self.commit()

    # ---- search --------------------------------------------------------------------------------
    def _query(self, text: str) -> Any | None:
        import tantivy

        words = list(dict.fromkeys(self.analyze(text)))
        if not words:
            return None
        clauses = [(tantivy.Occur.Should, tantivy.Query.term_query(self._schema, _TEXT, w)) for w in words]
        return tantivy.Query.boolean_query(clauses)

    def search(
        self, text: str, k: int, where: Selection | None = None, term_set_max: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels [<=k] int64 and BM25 scores [<=k] float32 of the best matches of ``text``, best
        first, among the labels ``where`` selects. A text with no indexed word matches nothing.

        A selection of at most ``term_set_max`` labels becomes part of the query (a term set that
        every hit must match); a larger one is tested on the ranking as it is read, reading
        further until k selected hits are found or the matches run out. Both are exact: the
        top-k selected items by BM25, never a post-filtered fixed top-k.
        """
        import tantivy

        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        empty = (np.empty(0, np.int64), np.empty(0, np.float32))
        with self._lock:
            self._ensure()
            self.commit()
            searcher = self._engine.searcher()  # a fixed segment set: later commits do not move it
            n = max(len(self._docs), 1)
        query = self._query(text)
        if query is None or searcher.num_docs == 0 or (where is not None and where.count == 0):
            return empty
        if where is not None and where.count <= term_set_max:
            members = tantivy.Query.term_set_query(self._schema, _LABEL, [int(x) for x in where.labels()])
            query = tantivy.Query.boolean_query(
                [(tantivy.Occur.Must, query), (tantivy.Occur.Must, tantivy.Query.const_score_query(members, 0.0))]
            )
            where = None
        if where is None:
            labels, scores, _ = self._read(searcher, query, int(k), count=False)
            return labels, scores
        limit = min(n, max(4 * int(k), math.ceil(2 * int(k) * n / where.count)))
        while True:
            labels, scores, matched = self._read(searcher, query, limit, count=True)
            keep = where.contains(labels)
            if int(keep.sum()) >= k or limit >= matched or limit >= n:
                return labels[keep][:k], scores[keep][:k]
            limit = min(n, limit * 4)

    def _read(self, searcher: Any, query: Any, limit: int, count: bool) -> tuple[np.ndarray, np.ndarray, int]:
        result = searcher.search(query, limit, count=count)
        hits = result.hits
        if not hits:
            return np.empty(0, np.int64), np.empty(0, np.float32), int(result.count or 0)
        labels = np.asarray(searcher.fast_field_values(_LABEL, [a for _, a in hits]), np.int64)
        scores = np.asarray([s for s, _ in hits], np.float32)
        return labels, scores, int(result.count or 0)

    # ---- copies and storage --------------------------------------------------------------------
    def documents(self) -> dict[int, str]:
        """``{label: text}`` of every document (a copy)."""
        with self._lock:
            return dict(self._docs)

    def write(self, directory: Path) -> list[str]:
        """Write the documents to ``directory/lexical.parquet``; returns the file names written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        docs = self.documents()
        labels = np.fromiter(docs.keys(), np.int64, count=len(docs))
        order = np.argsort(labels, kind="stable")
        texts = list(docs.values())
        table = pa.table({_LABEL: labels[order], _TEXT: pa.array([texts[i] for i in order.tolist()], pa.string())})
        header = {
            "format": LEXICAL_FORMAT,
            "fields": list(self.fields),
            "analyzer": "regex \\w\\w+, lowercase, english stop words",
        }
        table = table.replace_schema_metadata({_META_KEY: json.dumps(header).encode()})
        pq.write_table(table, directory / LEXICAL_FILE)
        return [LEXICAL_FILE]

    @classmethod
    def read(cls, directory: Path) -> LexicalIndex:
        """The index written by :meth:`write` (its file's checksum is verified by ``load_index``)."""
        import pyarrow.parquet as pq

        table = pq.read_table(directory / LEXICAL_FILE)
        header = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        if header.get("format") != LEXICAL_FORMAT:
            raise ValueError(
                f"{directory / LEXICAL_FILE}: format {header.get('format')!r}, this code reads {LEXICAL_FORMAT}"
            )
        labels = table.column(_LABEL).to_numpy().astype(np.int64).tolist()
        texts = [str(t or "") for t in table.column(_TEXT).to_pylist()]
        return cls(header["fields"], dict(zip(labels, texts))).warm()

    def copy(self) -> LexicalIndex:
        """An independent index with the same documents (a snapshot of a live index)."""
        return LexicalIndex(self.fields, self.documents())


def lexical_for_index(idmap: Any, features: str, fields: Sequence[str]) -> LexicalIndex | None:
    """The lexical index of an index's items, their documents read from the features directory's
    ``catalog.parquet``; None when the directory has no catalog or it has none of ``fields``."""
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    from itemsage.data.features_io import resolve

    fs, root = resolve(features)
    path = f"{root}/catalog.parquet"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    names = pq.read_schema(path, filesystem=fs).names
    have = [f for f in fields if f in names]
    if "item_id" not in names or not have:
        return None
    table = pq.read_table(path, columns=["item_id", *have], filesystem=fs)
    rows = table.to_pylist()
    known = [r for r in rows if r["item_id"] in idmap]
    labels = idmap.lookup([r["item_id"] for r in known]).tolist() if known else []
    return LexicalIndex(have, {lab: item_text(r, have) for lab, r in zip(labels, known)})
