"""Lexical baselines over the items' text fields: char-3gram TF-IDF (scikit-learn) and BM25 (bm25s).

These are what a user tries first, with no training. Both only read catalog text (never the
engagement pairs): TF-IDF's IDF comes from ``fit_items`` (the whole catalog by default, or the
training items only, to match a model whose vocabulary and statistics come from training items);
BM25's IDF always comes from the indexed corpus, the whole candidate catalog (bm25s scores only
the documents it indexed).

Queries per probe: a search query's text; a closeup query item's own text (item -> item); a home
user's history, as the mean of the history items' unit TF-IDF vectors (the frozen user feature is
likewise a mean) or, for BM25, the history items' tokens together as one query.
"""

from __future__ import annotations

from collections.abc import Sequence

import bm25s
import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from itemsage.eval.baselines.ranks import ranks_from_scores

# Score blocks of this many queries at a time: [chunk, catalog] float64 stays ~300 MB at 40k items.
CHUNK = 1024


class TfidfRanker:
    """Cosine of L2-normalised char-3gram TF-IDF vectors (``analyzer="char_wb"``, sublinear tf)."""

    name = "tfidf"

    def __init__(self, item_texts: Sequence[str], fit_items: Sequence[int] | np.ndarray | None = None) -> None:
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True, dtype=np.float32)
        fit_texts = list(item_texts) if fit_items is None else [item_texts[int(i)] for i in fit_items]
        try:
            self.vectorizer.fit(fit_texts)
        except ValueError as e:  # sklearn: "empty vocabulary"
            raise ValueError(f"TF-IDF baseline: the catalog text has no character trigrams to fit on ({e})") from e
        self.items: sp.csr_matrix = sp.csr_matrix(self.vectorizer.transform(list(item_texts)))

    def text_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        return sp.csr_matrix(self.vectorizer.transform(list(texts)))

    def item_queries(self, items: np.ndarray) -> sp.csr_matrix:
        return self.items[np.asarray(items, dtype=np.int64)]

    def user_queries(self, histories: Sequence[np.ndarray]) -> sp.csr_matrix:
        """Row u: the mean of user u's history rows (cosine ranks do not depend on its norm)."""
        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if len(histories) else np.zeros(0)
        weights = (
            np.concatenate([np.full(len(h), 1.0 / max(len(h), 1), np.float32) for h in histories])
            if len(histories)
            else np.zeros(0, np.float32)
        )
        mix = sp.csr_matrix((weights, (rows, cols)), shape=(len(histories), self.items.shape[0]))
        return sp.csr_matrix(mix @ self.items)

    def ranks(
        self, queries: sp.csr_matrix, candidates: np.ndarray, targets: np.ndarray, exclude: np.ndarray
    ) -> np.ndarray:
        cand = self.items[np.asarray(candidates, dtype=np.int64)].T.tocsc()
        out = []
        for start in range(0, queries.shape[0], CHUNK):
            stop = start + CHUNK
            scores = np.asarray((queries[start:stop] @ cand).todense())
            out.append(ranks_from_scores(scores, targets[start:stop], exclude[start:stop]))
        return np.concatenate(out) if out else np.zeros(0, np.int64)


class BM25Tokens:
    """bm25s's own tokenizer (lower case, ``\\w\\w+`` words, English stop words), kept as strings
    so that an item's or a user's tokens can be reused as a query."""

    @staticmethod
    def tokenize(texts: Sequence[str]) -> list[list[str]]:
        if not texts:
            return []
        out = bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)
        return [list(t) for t in out]


class Bm25Ranker:
    """BM25 (bm25s, Lucene variant, k1=1.5, b=0.75) over the whole catalog's item texts."""

    name = "bm25"

    def __init__(self, item_texts: Sequence[str]) -> None:
        self.item_tokens = BM25Tokens.tokenize(item_texts)
        self.num_items = len(self.item_tokens)
        self.retriever = bm25s.BM25()
        self.retriever.index(self.item_tokens, show_progress=False)

    def text_queries(self, texts: Sequence[str]) -> list[list[str]]:
        return BM25Tokens.tokenize(texts)

    def item_queries(self, items: np.ndarray) -> list[list[str]]:
        return [self.item_tokens[int(i)] for i in items]

    def user_queries(self, histories: Sequence[np.ndarray]) -> list[list[str]]:
        return [[t for i in h for t in self.item_tokens[int(i)]] for h in histories]

    def scores(self, query: list[str]) -> np.ndarray:
        if not query:  # bm25s refuses an empty query; nothing matches it
            return np.zeros(self.num_items, np.float32)
        return np.asarray(self.retriever.get_scores(query))

    def ranks(
        self, queries: list[list[str]], candidates: np.ndarray, targets: np.ndarray, exclude: np.ndarray
    ) -> np.ndarray:
        cand = np.asarray(candidates, dtype=np.int64)
        out = []
        for start in range(0, len(queries), CHUNK):
            block = np.stack([self.scores(q)[cand] for q in queries[start : start + CHUNK]])
            out.append(ranks_from_scores(block, targets[start : start + CHUNK], exclude[start : start + CHUNK]))
        return np.concatenate(out) if out else np.zeros(0, np.int64)
