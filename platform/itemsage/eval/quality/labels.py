"""How the report names its methods and rows, in the table and in the chart alike."""

from __future__ import annotations

from collections.abc import Sequence

from itemsage.eval.quality.runs import Group
from itemsage.eval.report import METHOD_LABELS, METHOD_ORDER


def row_label(pr: tuple[str, str]) -> str:
    probe, row = pr
    return probe if row == "all" else f"{probe} (unseen items)" if row == "unseen" else f"{probe} ({row})"


def method_label(method: str) -> str:
    return "ItemSage" if method == "itemsage" else METHOD_LABELS.get(method, method)


def method_order(groups: Sequence[Group]) -> list[str]:
    present = {m for g in groups for ms in g.stats.values() for m in ms}
    return [m for m in METHOD_ORDER if m in present and m != "frozen"] + sorted(present - set(METHOD_ORDER))
