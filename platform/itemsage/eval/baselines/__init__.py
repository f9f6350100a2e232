"""Baselines a user tries before a trained model, ranked exactly like the model.

Every baseline turns a probe's queries and the candidate items into scores and reports each pair's
0-based rank of its engaged item among all candidates (:func:`ranks.ranks_from_scores`), the same
rule as :func:`itemsage.eval.recall.ranks_of_targets`: ties count against the target and a closeup
query item is never its own neighbour.

* :mod:`.lexical`: char-3gram TF-IDF (scikit-learn) and BM25 (bm25s) over the item text fields;
* :mod:`.frozen`: cosine of the frozen features (MiniLM title, image, user features);
* :mod:`.chance`: a uniformly random ranking, the floor.
"""

from itemsage.eval.baselines.chance import random_ranks
from itemsage.eval.baselines.corpus import TextCorpus
from itemsage.eval.baselines.frozen import frozen_ranks
from itemsage.eval.baselines.lexical import Bm25Ranker, TfidfRanker
from itemsage.eval.baselines.ranks import ranks_from_scores

__all__ = ["Bm25Ranker", "TextCorpus", "TfidfRanker", "frozen_ranks", "random_ranks", "ranks_from_scores"]
