"""Recall@k with exact search over the whole evaluation catalog.

Metrics use exact (brute-force) inner-product search on purpose: ANN error would be mixed into the
model's error otherwise. ANN only matters in serving, where the index sweep measures it separately.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


def ranks_of_targets(
    queries: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """0-based rank of each query's target item among all items (ties count against the target).

    ``exclude[i]`` (an item index or -1) is removed from query i's candidates: a closeup query item
    must not be counted as its own best neighbour.
    """
    if queries.shape[0] != targets.shape[0]:
        raise ValueError(f"{queries.shape[0]} queries but {targets.shape[0]} targets")
    if queries.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    items = items.float()
    out = []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk].float()
        t = targets[start : start + chunk].long()
        scores = q @ items.T
        rows = torch.arange(q.shape[0])
        if exclude is not None:
            ex = exclude[start : start + chunk].long()
            has = ex >= 0
            scores[rows[has], ex[has]] = -torch.inf
        target_scores = scores[rows, t]
        out.append((scores >= target_scores[:, None]).sum(dim=1) - 1)
    return torch.cat(out)


@dataclass
class RecallTable:
    """Recall@k per (method, task); tasks are "surface/action" plus one "surface/all" row each, and
    "surface/<cohort>" rows for the cohorts passed to ``add`` (e.g. pairs of unseen items)."""

    ks: tuple[int, ...] = (10, 50)
    rows: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    def add(
        self,
        method: str,
        tasks: Sequence[str],
        ranks: torch.Tensor,
        cohorts: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Rows of ``method`` from each pair's 0-based ``ranks``; ``cohorts`` maps a name to a
        boolean mask over the pairs, giving one extra "surface/<name>" row per surface."""
        tasks_arr = np.asarray(tasks)
        r = ranks.cpu().numpy()
        groups: dict[str, np.ndarray] = {}
        for task in sorted(set(tasks_arr.tolist())):
            groups[task] = tasks_arr == task
        for surface in sorted({t.split("/")[0] for t in groups}):
            on_surface = np.char.startswith(tasks_arr.astype(str), surface + "/")
            groups[f"{surface}/all"] = on_surface
            for name, mask in (cohorts or {}).items():
                groups[f"{surface}/{name}"] = on_surface & np.asarray(mask, dtype=bool)
        for task, mask in groups.items():
            n = int(mask.sum())
            if n == 0:
                continue
            row = {f"recall@{k}": float((r[mask] < k).mean()) for k in self.ks}
            row["n"] = n
            self.rows[(method, task)] = row

    def add_values(self, method: str, task: str, values: Mapping[int, np.ndarray]) -> None:
        """One row of ``method`` from per-query scores already in [0, 1] for each k (the attribute
        probes' capped recall, ``itemsage.eval.attribute_probes``): their mean; NaN (a query with
        nothing relevant) is left out."""
        if set(values) != set(self.ks):
            raise ValueError(f"values for k={sorted(values)} but the table reports k={list(self.ks)}")
        kept = [np.asarray(v, dtype=np.float64) for v in values.values()]
        n = int((~np.isnan(kept[0])).sum())
        if n == 0:
            return
        row: dict[str, float] = {f"recall@{k}": float(np.nanmean(values[k])) for k in self.ks}
        row["n"] = n
        self.rows[(method, task)] = row

    def methods(self) -> list[str]:
        return list(dict.fromkeys(m for m, _ in self.rows))

    def tasks(self) -> list[str]:
        return sorted({t for _, t in self.rows})

    def get(self, method: str, task: str, k: int = 10) -> float | None:
        row = self.rows.get((method, task))
        return None if row is None else row[f"recall@{k}"]

    def to_markdown(self, k: int = 10) -> str:
        methods = self.methods()
        head = "| task | n | " + " | ".join(f"{m} R@{k}" for m in methods) + " |"
        lines = [head, "|" + "---|" * (len(methods) + 2)]
        for task in self.tasks():
            n = next(self.rows[(m, task)]["n"] for m in methods if (m, task) in self.rows)
            cells = []
            for m in methods:
                v = self.get(m, task, k)
                cells.append("-" if v is None else f"{v:.3f}")
            lines.append(f"| {task} | {int(n)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "ks": list(self.ks),
            "rows": [{"method": m, "task": t, **v} for (m, t), v in self.rows.items()],
        }
