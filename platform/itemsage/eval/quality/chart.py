"""The report's bar chart: one panel per group."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from itemsage.eval.quality.labels import method_label, method_order
from itemsage.eval.quality.runs import Group, QualityReportError, row_key


def bar_chart(groups: Sequence[Group], path: str | Path, k: int = 10) -> Path:
    """One panel per group: grouped bars per probe (``all`` rows), one bar per method, error bars
    the spread over seeds (or splits, each split's value a dot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not groups:
        raise QualityReportError("nothing to plot")
    methods = method_order(groups)
    ncols = min(2, len(groups))  # two panels a row: a page-wide figure stays readable
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(4.5, 1.2 * len(methods)) * ncols, 4.2 * nrows), squeeze=False, sharey=True
    )
    # One colour per method in every panel, none repeated (tab10 has ten).
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    color = {m: palette(j % palette.N) for j, m in enumerate(methods)}
    panels = axes.flatten()
    for ax in panels[len(groups) :]:
        ax.set_visible(False)
    for ax, g in zip(panels, groups):
        rows = sorted((pr for pr in g.stats if pr[1] == "all"), key=row_key)
        replicates = f"{len(g.split_seeds)} splits" if len(g.split_seeds) > 1 else f"{len(g.runs)} seed(s)"
        # Slots only for this panel's methods: no gaps for baselines another catalog has.
        present = [m for m in methods if any(m in g.stats[pr] for pr in rows)]
        width = 0.8 / max(len(present), 1)
        for j, m in enumerate(present):
            xs, ys, errs, dots = [], [], [], []
            for i, pr in enumerate(rows):
                s = g.stats[pr].get(m)
                if s is not None:
                    xs.append(i + (j - (len(present) - 1) / 2) * width)
                    ys.append(s.mean)
                    errs.append(s.std)
                    dots += [(xs[-1], v) for v in s.values]
            if xs:
                ax.bar(xs, ys, width, yerr=errs, capsize=2, color=color[m], label=method_label(m))
            if dots and len(g.split_seeds) > 1:  # each split's value: the spread is the split's
                ax.scatter(*zip(*dots), s=5, color="black", zorder=3)
        ax.set_xticks(range(len(rows)), [pr[0] for pr in rows])
        # The hash tells apart two configurations that share a name (e.g. before / after a change).
        ax.set_title(f"{g.dataset} / {g.config} ({g.config_hash})\n{g.split}, {replicates}", fontsize=9)
    for row in axes:
        row[0].set_ylabel(f"Recall@{k}")
    # One legend for every panel, below them, so that it hides no bar.
    handles: dict[str, Any] = {}
    for ax in panels:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(5, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 + 0.04 / nrows, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
