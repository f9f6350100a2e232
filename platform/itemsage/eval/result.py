"""What an evaluation measured (``EvalResult``: Recall per method and task, and what was evaluated),
its JSON and its headline numbers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from itemsage.eval.attribute_probes import ATTRIBUTE_PROBES
from itemsage.eval.probes import PROBES
from itemsage.eval.recall import RecallTable
from itemsage.eval.report import recall_markdown, recall_rows

# Rows of held-out pairs whose item was (not) a training positive, on the model's own features.
SEEN, UNSEEN = "seen", "unseen"


@dataclass
class EvalResult:
    """Recall per (method, task) plus what was evaluated; ``to_dict`` is the JSON written."""

    table: RecallTable
    model_uri: str
    model_version: str
    features: str
    catalog: str | None
    engagement_source: str
    split: str
    num_items: int
    num_pairs: int
    num_unseen_pairs: int | None
    seconds: float
    # How the features held pairs out ("item": every held-out item is new, "time": later
    # engagement), what the TF-IDF baseline's IDF was fit on, and which training run the model is.
    holdout: str = "unknown"
    baseline_fit: str = "catalog"
    dataset: str = "unknown"
    # preprocess.engagement.seed of the features: which item-disjoint split (the hash that assigns
    # items to train / val / test) and, for synthetic engagement, which draw of the log. Beside
    # train.seed, the second axis a figure is repeated over (itemsage.eval.quality).
    split_seed: str = "0"
    identity: dict[str, str] = field(default_factory=dict)
    # Held-out items the attribute probes' queries came from (0: the catalog has no facets).
    attribute_items: int = 0
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def recall(self, method: str, task: str, k: int = 10) -> float | None:
        return self.table.get(method, task, k)

    def markdown(self) -> str:
        head = (
            f"Model {self.model_uri} (version {self.model_version}) on {self.catalog or self.features}: "
            f"{self.num_pairs:,} {self.split} pairs ({self.engagement_source}), each item ranked "
            f"against all {self.num_items:,} items (exact search); {_HOLDOUT.get(self.holdout, self.holdout)}. "
            f"TF-IDF IDF fit on {_FITS.get(self.baseline_fit, self.baseline_fit)}; BM25 IDF on the whole catalog."
        )
        if self.num_unseen_pairs is not None:
            head += f" {self.num_unseen_pairs:,} of the pairs engage an item with no training engagement"
            if 0 < self.num_unseen_pairs < self.num_pairs:
                head += f" (rows <surface>/{UNSEEN}; the others are rows <surface>/{SEEN})"
            head += "."
        if self.attribute_items:
            head += (
                f" Rows attr_*: queries from {self.attribute_items:,} held-out items never trained on, relevant = "
                "every item of the same kind, colour and gender (attr_home: the user's history as the query, "
                "the facets of the held-out item they engaged with); capped Recall@k = |top k ∩ relevant| / "
                "min(k, |relevant|), i.e. precision@k when k or more are relevant."
            )
        return f"{head}\n\n{recall_markdown(self.table)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_uri": self.model_uri,
            "model_version": self.model_version,
            "features": self.features,
            "catalog": self.catalog,
            "engagement_source": self.engagement_source,
            "split": self.split,
            "num_items": self.num_items,
            "num_pairs": self.num_pairs,
            "num_unseen_pairs": self.num_unseen_pairs,
            "ks": list(self.table.ks),
            "seconds": self.seconds,
            "holdout": self.holdout,
            "baseline_fit": self.baseline_fit,
            "dataset": self.dataset,
            "split_seed": self.split_seed,
            "identity": self.identity,
            "probes": {p.name: p.description for p in (*PROBES, *ATTRIBUTE_PROBES)},
            "attribute_items": self.attribute_items,
            "created_at": self.created_at,
            "rows": recall_rows(self.table),
        }


_HOLDOUT = {
    "item": "item-disjoint split, every held-out item unseen in training",
    "time": "time split, held-out pairs of seen and unseen items",
}


_FITS = {"catalog": "every catalog item's text", "train": "the training items' text only"}


def write_result(result: EvalResult, path: str) -> None:
    """The result as JSON at ``path`` (parent directories created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result.to_dict(), indent=2) + "\n")


# The frozen features each surface's tower starts from (training validates against the same):
# surface_summary reports them as "frozen" too.
FROZEN_OF_SURFACE = {"search": "minilm", "closeup": "image", "home": "user_feat"}


def surface_summary(result: EvalResult, k: int = 10) -> dict[str, dict[str, float | None]]:
    """``{probe: {method: Recall@k of "probe/all"}}``: the headline numbers. Each surface's own
    frozen baseline is also given as "frozen"."""
    out: dict[str, dict[str, float | None]] = {}
    for method, task in result.table.rows:
        if task.endswith("/all"):
            out.setdefault(task.split("/")[0], {})[method] = result.table.get(method, task, k)
    for surface, methods in out.items():
        if surface in FROZEN_OF_SURFACE and FROZEN_OF_SURFACE[surface] in methods:
            methods["frozen"] = methods[FROZEN_OF_SURFACE[surface]]
    return out


__all__ = ["FROZEN_OF_SURFACE", "SEEN", "UNSEEN", "EvalResult", "surface_summary", "write_result"]
