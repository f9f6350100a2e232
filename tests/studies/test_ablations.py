"""Ablation plumbing: every variant is a valid config with one switch, verdicts follow the numbers,
and the table/plot name every variant. (The runs themselves are experiments, not tests.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.scripts import load_script

from itemsage.config import flatten
from itemsage.studies.ablations import (
    REFERENCE,
    VARIANTS,
    AblationResult,
    Row,
    bar_plot,
    judge,
    markdown,
    select,
    variant_config,
)
from itemsage.train.trainer import check_config

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "experiments" / "configs" / "demo.yaml"


def test_each_variant_differs_from_the_reference_only_by_its_switches() -> None:
    ref = flatten(variant_config(DEMO, [], select([REFERENCE])[0], "t").train)
    for v in VARIANTS:
        cfg = variant_config(DEMO, ["train.max_steps=7"], v, "t")
        check_config(cfg)
        assert cfg.train.name == f"t-{v.name}" and cfg.train.max_steps == 7 and not cfg.train.register_model
        changed = {k for k, x in flatten(cfg.train).items() if ref[k] != x} - {"name", "max_steps"}
        assert changed == {o.split("=")[0].removeprefix("train.") for o in v.overrides}, v.name


def test_select_keeps_table_order_and_always_the_reference() -> None:
    assert [v.name for v in select(["text_only", "concat_mlp"])] == [REFERENCE, "concat_mlp", "text_only"]
    assert len(select(None)) == len(VARIANTS)
    with pytest.raises(ValueError, match="unknown ablation variant.*nope"):
        select(["nope"])


def _rows() -> list[Row]:
    def row(name: str, search: float | None, closeup: float | None, expected: str = "lower", judged=()) -> Row:
        return Row(name, "g", name, {"search": search, "closeup": closeup, "home": None}, 1.0, "m", expected, judged)

    return [
        row(REFERENCE, 0.50, 0.40, "-"),
        row("worse", 0.40, 0.30),
        row("better", 0.60, 0.50),
        row("same", 0.51, 0.40),
        row("single_search", 0.49, 0.10, "equal", ("search",)),  # closeup ignored: not its surface
        row("single_closeup", 0.05, 0.45, "equal", ("closeup",)),
    ]


def test_verdicts_follow_the_mean_delta_on_the_judged_surfaces() -> None:
    rows = _rows()
    judge(rows)
    v = {r.variant: r.verdict for r in rows}
    assert v[REFERENCE] == "-"
    assert v["worse"] == "holds (-0.100)"
    assert v["better"] == "does not hold (+0.100)"
    assert v["same"] == "tie (+0.005)"
    assert v["single_search"] == "holds (-0.010)"
    assert v["single_closeup"] == "does not hold (+0.050)"


def test_table_and_plot_show_every_variant(tmp_path: Path) -> None:
    rows = _rows()
    judge(rows)
    result = AblationResult(rows, {"search": {"frozen": 0.2, "random": 0.01}, "closeup": {"frozen": 0.3, "random": 0.01}},
                            "test", 100)
    md = markdown(result)
    for r in rows:
        assert f"| {r.variant} |" in md
    assert "home R@10" not in md  # no variant was evaluated on home
    single = next(line for line in md.splitlines() if line.startswith("| single_search |"))
    assert "0.490" in single and "0.100" not in single
    png = bar_plot(result, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def _cli():
    return load_script("experiments/ablations.py")


def test_cli_fails_fast_on_bad_variants_and_missing_features(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = _cli()
    assert cli.main(["--config", str(DEMO), "--variants", "bogus"]) == 2
    assert "unknown ablation variant" in capsys.readouterr().err
    assert cli.main(["--config", str(DEMO), f"train.features={tmp_path / 'none'}"]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_evaluated_variants_are_kept_so_a_later_call_only_assembles_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a shared box the variants run a few per call; the last call with all of them must not
    train or evaluate the earlier ones again, and a changed configuration must."""
    import itemsage.eval.evaluate as evaluate
    import itemsage.eval.result as result
    import itemsage.train.trainer as trainer
    from itemsage.studies.ablations import run_ablations

    trained: list[str] = []
    recall = {REFERENCE: 0.50, "concat_mlp": 0.40, "in_batch_no_logq": 0.30}

    def fake_training(cfg, tracking=True):  # noqa: ANN001, ANN202 - stands in for a Ray Train run
        trained.append(cfg.train.name)
        return type("T", (), {"model_uri": f"runs/{cfg.train.name}"})()

    def fake_summary(uri: str) -> dict[str, dict[str, float | None]]:
        return {"search": {"itemsage": recall[uri.split("-", 1)[1]], "frozen": 0.2, "random": 0.01}}

    monkeypatch.setattr(trainer, "run_training", fake_training)
    monkeypatch.setattr(evaluate, "evaluate_model", lambda uri, **kw: uri)
    monkeypatch.setattr(result, "surface_summary", fake_summary)
    out = tmp_path / "abl"
    quiet = {"tracking": False, "progress": lambda _: None}

    run_ablations(DEMO, ["train.max_steps=7"], select(["concat_mlp"]), out, prefix="t", **quiet)
    run_ablations(DEMO, ["train.max_steps=7"], select(["in_batch_no_logq"]), out, prefix="t", **quiet)
    assert trained == ["t-itemsage", "t-concat_mlp", "t-in_batch_no_logq"]  # the reference once
    result = run_ablations(
        DEMO, ["train.max_steps=7"], select(["concat_mlp", "in_batch_no_logq"]), out, prefix="t", **quiet
    )
    assert len(trained) == 3  # assembled from the kept rows alone
    assert [r.variant for r in result.rows] == [REFERENCE, "concat_mlp", "in_batch_no_logq"]
    assert result.row("in_batch_no_logq").verdict == "holds (-0.200)"
    assert result.baselines["search"] == {"frozen": 0.2, "random": 0.01}
    assert "| concat_mlp |" in (out / "ablations.md").read_text()
    # Another step budget is another configuration: trained and evaluated again.
    run_ablations(DEMO, ["train.max_steps=8"], select(["concat_mlp"]), out, prefix="t", **quiet)
    assert trained[3:] == ["t-itemsage", "t-concat_mlp"]
