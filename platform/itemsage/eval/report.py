"""Recall tables as people read them: one row per (task, method), Recall@k columns side by side.

``RecallTable.to_markdown`` prints one k with methods as columns (the training log's compact
view); offline evaluation reports several ks and names each surface's frozen baseline, so it
reads better long: every task gets its model row, its baseline row and its random row together.
"""

from __future__ import annotations

from typing import Any

from itemsage.config import ACTIONS
from itemsage.eval.probes import PROBE_NAMES
from itemsage.eval.recall import RecallTable

# What the "frozen" method of eval.validation.baseline_recall (training's validation) is on each
# surface.
BASELINE_LABELS: dict[str, str] = {
    "search": "frozen: MiniLM text cosine",
    "closeup": "frozen: image-feature cosine",
    "home": "frozen: user-feature cosine",
}
# The methods of offline evaluation (itemsage.eval.baselines), in the order tables show them.
METHOD_LABELS: dict[str, str] = {
    "itemsage": "itemsage",  # lower case: the method name, as the training log prints it
    # The served modes beside dense (itemsage.eval.modes): the model fused with the
    # lexical index, and the lexical index alone (tantivy BM25, what /search mode=lexical answers).
    "hybrid": "hybrid (ItemSage + lexical, RRF)",
    "lexical": "lexical index (BM25, served)",
    # The same fusion with frozen MiniLM in the model's place: the hybrid a user builds untrained.
    "minilm_hybrid": "frozen MiniLM + lexical (RRF)",
    "tfidf": "char-3gram TF-IDF",
    "bm25": "BM25",
    "minilm": "frozen MiniLM",
    "image": "frozen image features",
    # A photo's nearest catalog photos' MiniLM titles: the frozen counterpart of a photo query that
    # reads catalog neighbours (itemsage.model.catalog_queries).
    "image_nbr": "frozen titles of the photo's nearest catalog photos",
    "user_feat": "frozen user features (image + text)",
    "frozen": "frozen features",
    "random": "random",
}
METHOD_ORDER = tuple(METHOD_LABELS)


def method_label(method: str, task: str) -> str:
    """Display name of ``method`` on ``task`` ("frozen" says which frozen features it compares)."""
    if method == "frozen":
        return BASELINE_LABELS.get(task.split("/")[0], "frozen features")
    return METHOD_LABELS.get(method, method)


def _task_key(task: str) -> tuple[int, int, str]:
    surface, _, action = task.partition("/")
    s = PROBE_NAMES.index(surface) if surface in PROBE_NAMES else len(PROBE_NAMES)
    # "all" first, then cohort rows (seen / unseen items), then the actions in funnel order.
    a = -2 if action == "all" else (ACTIONS.index(action) if action in ACTIONS else -1)
    return s, a, task


def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def recall_rows(table: RecallTable) -> list[dict[str, Any]]:
    """Rows sorted by probe, task ("all" first) and method (model, baselines, random)."""
    rows: list[dict[str, Any]] = []
    for (method, task), values in table.rows.items():
        rows.append(
            {
                "task": task,
                "surface": task.split("/")[0],
                "method": method,
                "label": method_label(method, task),
                **values,
            }
        )
    rows.sort(key=lambda r: (_task_key(r["task"]), _method_key(r["method"])))
    return rows


def recall_markdown(table: RecallTable) -> str:
    """``| task | method | n | R@10 | R@50 |`` with every task's methods on consecutive rows."""
    ks = table.ks
    head = "| task | method | n | " + " | ".join(f"R@{k}" for k in ks) + " |"
    lines = [head, "|---|---|---:|" + "---:|" * len(ks)]
    previous = None
    for r in recall_rows(table):
        task = r["task"] if r["task"] != previous else ""
        previous = r["task"]
        cells = " | ".join(f"{r[f'recall@{k}']:.3f}" for k in ks)
        lines.append(f"| {task} | {r['label']} | {int(r['n'])} | {cells} |")
    return "\n".join(lines)
