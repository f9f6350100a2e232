"""The paper's ablations: train each variant on the same splits and budget, evaluate, compare.

Every variant is the base pipeline config plus a few dotted overrides (one switch each), trained by
the same :func:`itemsage.train.trainer.run_training` and scored by the same
:func:`itemsage.eval.evaluate.evaluate_model` on the same held-out split, so the only difference
between two rows is the switch. Each row states the direction the ItemSage paper (KDD 2022, §5)
reports relative to the full model and whether this run reproduced it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from itemsage.config import SURFACES, PipelineConfig, load_config, to_dict
from itemsage.eval.run_tags import config_hash

log = logging.getLogger(__name__)

REFERENCE = "itemsage"
# Within this much Recall@10 two variants count as equal (the sample's test split has a few hundred
# pairs per surface, so smaller gaps are noise).
TIE = 0.02


@dataclass(frozen=True)
class Variant:
    name: str
    group: str
    overrides: tuple[str, ...]
    description: str
    # What the paper found relative to the full model: "lower" (the switch hurts) or "equal"
    # (multi-task matches single-task models on their own surface).
    expected: str = "lower"
    # Surfaces this variant is judged on (empty: every surface it was evaluated on).
    surfaces: tuple[str, ...] = ()


VARIANTS: tuple[Variant, ...] = (
    Variant(REFERENCE, "reference", (), "ItemSage tower, image+text, in-batch+random negatives, logQ, multi-task", "-"),
    Variant(
        "concat_mlp", "architecture", ("train.model.arch=mlp",), "concat-MLP item tower instead of the transformer"
    ),
    Variant(
        "no_title_embedding",
        "features",
        ("train.model.use_title_embedding=false", "train.model.title_skip=false"),
        "the paper's tower: text as hashed tokens only, no MiniLM title embedding (our addition; not in the paper)",
    ),
    Variant("image_only", "features", ("train.model.use_text=false",), "image features only"),
    Variant("text_only", "features", ("train.model.use_image=false",), "text features only"),
    Variant(
        "in_batch_logq", "negatives", ("train.loss.random_negatives=false",), "in-batch negatives only (with logQ)"
    ),
    Variant(
        "in_batch_no_logq",
        "negatives",
        ("train.loss.random_negatives=false", "train.loss.logq_correction=false"),
        "in-batch negatives only, no logQ correction",
    ),
    Variant("mixed_no_logq", "negatives", ("train.loss.logq_correction=false",), "in-batch+random negatives, no logQ"),
    *(
        Variant(
            f"single_{s}", "tasks", (f"train.surfaces=[{s}]",), f"single-task: trained on {s} pairs only", "equal", (s,)
        )
        for s in SURFACES
    ),
)
BY_NAME = {v.name: v for v in VARIANTS}


def select(names: Sequence[str] | None) -> list[Variant]:
    """The named variants in table order, always with the reference first (rows compare to it)."""
    if not names:
        return list(VARIANTS)
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {unknown}; known: {', '.join(BY_NAME)}")
    wanted = set(names) | {REFERENCE}
    return [v for v in VARIANTS if v.name in wanted]


def variant_config(base: str | Path | None, overrides: Sequence[str], variant: Variant, prefix: str) -> PipelineConfig:
    """The base config with the variant's switches, its own run name, and no model registration
    (ablation models are for comparison, not for serving)."""
    extra = [*variant.overrides, f"train.name={prefix}-{variant.name}", "train.register_model=false"]
    return load_config(PipelineConfig, base, [*overrides, *extra])


@dataclass
class Row:
    variant: str
    group: str
    description: str
    recall_at_10: dict[str, float | None]
    train_seconds: float
    model_uri: str
    expected: str = "lower"
    judged: tuple[str, ...] = ()
    verdict: str = ""


@dataclass
class AblationResult:
    rows: list[Row]
    # Frozen-feature and random baselines of the reference evaluation, per surface.
    baselines: dict[str, dict[str, float | None]] = field(default_factory=dict)
    split: str = "test"
    max_steps: int = 0

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.variant == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "baselines": self.baselines,
            "split": self.split,
            "max_steps": self.max_steps,
        }


def judge(rows: list[Row], tie: float = TIE) -> None:
    """Fill each row's verdict: does the paper's direction hold against the reference here?"""
    ref = next((r for r in rows if r.variant == REFERENCE), None)
    for r in rows:
        if r.variant == REFERENCE or ref is None:
            r.verdict = "-"
            continue
        surfaces = r.judged or tuple(s for s, v in r.recall_at_10.items() if v is not None)
        pairs = [(r.recall_at_10.get(s), ref.recall_at_10.get(s)) for s in surfaces]
        deltas = [v - b for v, b in pairs if v is not None and b is not None]
        if not deltas:
            r.verdict = "n/a"
            continue
        mean = sum(deltas) / len(deltas)
        if r.expected == "lower":
            holds = mean < -tie
            tied = abs(mean) <= tie
            r.verdict = "holds" if holds else ("tie" if tied else "does not hold")
        else:  # "equal": multi-task should be at least as good as the single-task model
            r.verdict = "holds" if mean <= tie else "does not hold"
        r.verdict += f" ({mean:+.3f})"


def markdown(result: AblationResult) -> str:
    """One row per variant: Recall@10 per surface, the paper's direction and whether it held."""
    surfaces = [s for s in SURFACES if any(r.recall_at_10.get(s) is not None for r in result.rows)]

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    head = ["variant", "what changes", *[f"{s} R@10" for s in surfaces], "paper: vs itemsage", "here (mean delta)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result.rows:
        shown = {s: (r.recall_at_10.get(s) if not r.judged or s in r.judged else None) for s in surfaces}
        lines.append(
            "| "
            + " | ".join([r.variant, r.description, *[cell(shown[s]) for s in surfaces], r.expected, r.verdict])
            + " |"
        )
    for method in ("frozen", "random"):
        vals = [cell(result.baselines.get(s, {}).get(method)) for s in surfaces]
        lines.append("| " + " | ".join([f"({method} baseline)", "no training", *vals, "", ""]) + " |")
    note = (
        f"Recall@10 on the {result.split} split, every item ranked against the whole catalog (exact search); "
        f"every variant trained for {result.max_steps} steps on the same splits. Single-task rows are shown "
        f"on their own surface only. 'tie': within {TIE} of the reference."
    )
    return note + "\n\n" + "\n".join(lines) + "\n"


def bar_plot(result: AblationResult, path: str | Path) -> Path:
    """Grouped bars: Recall@10 per surface for each variant, baselines as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    surfaces = [s for s in SURFACES if any(r.recall_at_10.get(s) is not None for r in result.rows)]
    fig, axes = plt.subplots(1, len(surfaces), figsize=(4.2 * len(surfaces), 4.2), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], surfaces):
        rows = [r for r in result.rows if r.recall_at_10.get(s) is not None and (not r.judged or s in r.judged)]
        vals = [r.recall_at_10[s] for r in rows]
        colors = ["tab:blue" if r.variant == REFERENCE else "tab:gray" for r in rows]
        ax.bar(range(len(rows)), vals, color=colors)
        ax.set_xticks(range(len(rows)), [r.variant for r in rows], rotation=60, ha="right", fontsize=8)
        for method, style in (("frozen", "--"), ("random", ":")):
            b = result.baselines.get(s, {}).get(method)
            if b is not None:
                ax.axhline(b, color="tab:red", linestyle=style, linewidth=1, label=f"{method} baseline")
        ax.set_title(s)
        ax.legend(fontsize=7, loc="upper right")
    axes[0][0].set_ylabel("Recall@10")
    fig.suptitle(f"ItemSage ablations ({result.split} split, {result.max_steps} steps each)")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _row_key(cfg: PipelineConfig, split: str) -> dict[str, str]:
    """What a cached row must match to stand for this variant: the configuration (without run
    names), the features it trained on and the split it was scored on."""
    return {"config_hash": config_hash(to_dict(cfg)), "features": str(cfg.train.features), "split": split}


def _cached_row(path: Path, key: dict[str, str]) -> tuple[Row, dict[str, dict[str, float | None]]] | None:
    """The row (and, for the reference, the baselines) a previous call evaluated with this key."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("key") != key:
        return None
    row = data["row"]
    return Row(**{**row, "judged": tuple(row["judged"])}), data.get("baselines") or {}


def run_ablations(
    base: str | Path | None,
    overrides: Sequence[str],
    variants: Sequence[Variant],
    out_dir: str | Path,
    split: str = "test",
    prefix: str = "ablation",
    tracking: bool = True,
    progress: Callable[[str], None] = print,
) -> AblationResult:
    """Train and evaluate each variant; writes ``ablations.md``, ``ablations.png`` and
    ``ablations.json`` under ``out_dir`` and logs them to MLflow (one ``ablations`` run in the
    base config's experiment). Each evaluated variant is kept under ``out_dir/variants/``, so a
    later call with the same configuration, features and split neither trains nor evaluates it
    again: on a shared machine the variants can run a few per call and a last call with all of
    them assembles the table (delete ``variants/`` to evaluate again, e.g. after re-preprocessing
    into the same features directory)."""
    from itemsage.eval.evaluate import evaluate_model
    from itemsage.eval.result import surface_summary
    from itemsage.train.trainer import run_training

    out = Path(out_dir)
    (out / "variants").mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    baselines: dict[str, dict[str, float | None]] = {}
    max_steps = 0
    for i, v in enumerate(variants, 1):
        cfg = variant_config(base, overrides, v, prefix)
        max_steps = cfg.train.max_steps
        progress(f"[{i}/{len(variants)}] {v.name}: {v.description}")
        key, cache = _row_key(cfg, split), out / "variants" / f"{v.name}.json"
        cached = _cached_row(cache, key)
        if cached is not None:
            rows.append(cached[0])
            baselines = cached[1] if v.name == REFERENCE else baselines
            progress(f"    evaluated before ({cache}), {cached[0].model_uri}")
            continue
        t0 = time.perf_counter()
        trained = run_training(cfg, tracking=tracking)
        seconds = time.perf_counter() - t0
        ev = evaluate_model(trained.model_uri, features=cfg.train.features, split=split, device="auto")
        summary = surface_summary(ev)
        recall = {s: summary.get(s, {}).get("itemsage") for s in SURFACES}
        if v.name == REFERENCE:
            baselines = {s: {m: summary.get(s, {}).get(m) for m in ("frozen", "random")} for s in SURFACES}
        row = Row(v.name, v.group, v.description, recall, round(seconds, 1), trained.model_uri, v.expected, v.surfaces)
        rows.append(row)
        kept = {"key": key, "row": asdict(row), "baselines": baselines if v.name == REFERENCE else {}}
        cache.write_text(json.dumps(kept, indent=2) + "\n")
        shown = ", ".join(
            f"{s} {x:.3f}" for s, x in recall.items() if x is not None and (not v.surfaces or s in v.surfaces)
        )
        progress(f"    Recall@10: {shown}  ({seconds:.0f} s)")
    judge(rows)
    result = AblationResult(rows, baselines, split, max_steps)
    (out / "ablations.md").write_text(markdown(result))
    (out / "ablations.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    bar_plot(result, out / "ablations.png")
    if tracking:
        log_to_mlflow(result, out, load_config(PipelineConfig, base, list(overrides)).train.mlflow_experiment)
    return result


def log_to_mlflow(result: AblationResult, out: Path, experiment: str) -> str | None:
    """One run holding the table, plot and JSON, with each variant's mean Recall@10 as a metric."""
    try:
        import mlflow

        from itemsage.trained import resolve_tracking_uri

        mlflow.set_tracking_uri(resolve_tracking_uri())
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name="ablations") as run:
            for r in result.rows:
                for s, v in r.recall_at_10.items():
                    if v is not None and (not r.judged or s in r.judged):
                        mlflow.log_metric(f"{r.variant}/{s}/recall_at_10", v)
            for name in ("ablations.md", "ablations.png", "ablations.json"):
                mlflow.log_artifact(str(out / name))
            return run.info.run_id
    except Exception as e:  # noqa: BLE001 - tracking is a side channel; the files are on disk
        log.warning("ablations: could not log to MLflow (%s); results are in %s", e, out)
        return None
