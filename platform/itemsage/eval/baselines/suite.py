"""Every baseline on every probe it applies to, into the evaluation's recall table.

Which baselines a probe gets depends on its query kind: text (search) and item (item -> item)
and user (home) queries get the lexical baselines; every kind gets the frozen features that
apply (:data:`frozen.FROZEN_METHODS`) and random. Image queries have no text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from itemsage.data.features_read import QueryFeatures
from itemsage.eval.baselines.chance import random_ranks
from itemsage.eval.baselines.corpus import TextCorpus
from itemsage.eval.baselines.frozen import frozen_ranks
from itemsage.eval.baselines.lexical import Bm25Ranker, TfidfRanker
from itemsage.eval.probes import Probe
from itemsage.eval.recall import RecallTable
from itemsage.eval.validation import ValSet
from itemsage.model.batch import ItemFeatureStore

BASELINE_FITS: tuple[str, ...] = ("catalog", "train")
LEXICAL_QUERIES = ("text", "item", "user")


@dataclass
class BaselineSuite:
    """The fitted baselines of one evaluation catalog.

    ``fit``: what TF-IDF's IDF is fit on: "catalog" (every item's text) or "train" (the items no
    held-out pair engages, as a model whose vocabulary comes from training items sees them).
    """

    store: ItemFeatureStore
    qf: QueryFeatures
    corpus: TextCorpus
    tfidf: TfidfRanker
    bm25: Bm25Ranker
    fit: str
    seed: int = 0

    @classmethod
    def build(
        cls,
        store: ItemFeatureStore,
        qf: QueryFeatures,
        corpus: TextCorpus,
        fit: str = "catalog",
        held_out_items: np.ndarray | None = None,
        seed: int = 0,
    ) -> BaselineSuite:
        if fit not in BASELINE_FITS:
            raise ValueError(f"unknown baseline fit {fit!r}; expected one of {BASELINE_FITS}")
        if corpus.num_items != store.num_items:
            raise ValueError(f"catalog.parquet has {corpus.num_items} items but items.parquet {store.num_items}")
        fit_items = None
        if fit == "train":
            held = np.zeros(store.num_items, dtype=bool)
            if held_out_items is not None:
                held[np.asarray(held_out_items, dtype=np.int64)] = True
            fit_items = np.flatnonzero(~held)
        return cls(
            store, qf, corpus, TfidfRanker(corpus.item_texts, fit_items), Bm25Ranker(corpus.item_texts), fit, seed
        )

    @property
    def with_images(self) -> bool:
        return bool(self.store.has_image.any())

    def add_rows(self, table: RecallTable, probe: Probe, pairs: ValSet) -> None:
        """Rows of every applicable baseline for ``probe``'s ``pairs`` (tasks already renamed)."""
        tasks = pairs.tasks.tolist()
        cand = pairs.candidates.numpy()
        target, exclude = pairs.target.numpy(), pairs.exclude.numpy()
        if probe.query in LEXICAL_QUERIES:
            for ranker in (self.tfidf, self.bm25):
                queries = self.lexical_queries(ranker, probe.query, pairs.query_key)
                ranks = ranker.ranks(queries, cand, target, exclude)  # type: ignore[arg-type]
                table.add(ranker.name, tasks, torch.from_numpy(ranks), pairs.cohorts)
        frozen = frozen_ranks(
            probe.query,
            self.store,
            self.qf,
            pairs.query_key,
            pairs.candidates,
            pairs.target,
            pairs.exclude,
            with_images=self.with_images,
        )
        for method, ranks in frozen.items():
            table.add(method, tasks, torch.from_numpy(ranks), pairs.cohorts)
        table.add("random", tasks, torch.from_numpy(random_ranks(len(cand), exclude, self.seed)), pairs.cohorts)

    def lexical_queries(self, ranker: TfidfRanker | Bm25Ranker, kind: str, keys: np.ndarray) -> object:
        """``ranker``'s queries of a probe's kind: search queries by ``query_idx``, items by
        ``item_idx``, users' histories by ``user_idx``."""
        if kind == "text":
            if self.corpus.query_texts is None:
                raise ValueError("search pairs but the features directory has no queries.parquet")
            return ranker.text_queries([self.corpus.query_texts[int(k)] for k in keys])
        if kind == "item":
            return ranker.item_queries(keys)
        if self.corpus.histories is None:
            raise ValueError("home pairs but the features directory has no users.parquet")
        return ranker.user_queries([self.corpus.histories[int(k)] for k in keys])
