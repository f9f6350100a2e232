"""Write the report: the chart and the document's marked section."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from itemsage.eval.quality.chart import bar_chart
from itemsage.eval.quality.markdown import replace_section, report_markdown
from itemsage.eval.quality.runs import Group, QualityReportError


def write_report(
    groups: Sequence[Group],
    doc: str | Path,
    figure: str | Path | None,
    k: int = 10,
    command: str = "",
    date: str = "",
) -> dict[str, Any]:
    """Write the chart (if ``figure``) and the section of ``doc`` (stamped with ``date``, e.g.
    today's, when given); returns what was written."""
    if not groups:
        raise QualityReportError("no evaluation runs to report")
    doc_path = Path(doc)
    rel = None
    if figure is not None:
        fig = bar_chart(groups, figure, k)
        rel = str(Path(_relpath(fig, doc_path.parent)))
    text = doc_path.read_text() if doc_path.exists() else ""
    section = report_markdown(groups, k, rel, command, date)
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(replace_section(text, section))
    return {"doc": str(doc_path), "figure": str(figure) if figure else None, "groups": len(groups), "markdown": section}


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())
