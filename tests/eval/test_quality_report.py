"""experiments/quality_report.py on a local MLflow store holding evaluation runs logged here.

The runs are real ``log_evaluation`` calls with hand-made recall tables (known ranks), so the
expected means and spreads are known without training anything.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.support.scripts import load_script

from itemsage.eval.quality.markdown import BEGIN, END, replace_section
from itemsage.eval.quality.runs import TRAIN_SECONDS_TAG, QualityReportError
from itemsage.eval.recall import RecallTable
from itemsage.eval.result import EvalResult
from itemsage.eval.tracking import log_evaluation

PAIRS = 100
# Pairs (out of PAIRS) whose item each method ranks in the top 10, per seed: ItemSage varies with
# the seed, the baselines do not (they are not trained).
HITS = {
    "itemsage": (70, 74, 78),
    "tfidf": (65, 65, 65),
    "bm25": (60, 60, 60),
    "minilm": (50, 50, 50),
    "random": (1, 1, 1),
}


def _result(
    seed: int,
    hits: dict[str, int],
    config: str = "shopee",
    dataset: str = "shopee",
    split_seed: int = 0,
    pairs: int = PAIRS,
) -> EvalResult:
    table = RecallTable(ks=(10, 50))
    tasks = ["search/click"] * pairs
    for method, h in hits.items():
        ranks = torch.tensor([0] * h + [500] * (pairs - h))
        table.add(method, tasks, ranks)
        table.add(method, ["item2item/click"] * pairs, ranks // 2)
    return EvalResult(
        table=table,
        model_uri=f"models:/itemsage/{10 + seed}",
        model_version=str(10 + seed),
        features="f",
        catalog=None,
        engagement_source="shopee",
        split="test",
        num_items=1000,
        num_pairs=2 * pairs,
        num_unseen_pairs=None,
        seconds=1.0,
        holdout="item",
        dataset=dataset,
        split_seed=str(split_seed),
        identity={
            "config": config,
            "config_hash": f"hash-{config}",
            "seed": str(seed),
            "train_name": f"{config}_seed{seed}",
            "model_uri": f"models:/itemsage/{10 + seed}",
            "model_version": str(10 + seed),
        },
    )


def _cli():
    return load_script("experiments/quality_report.py")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    # An earlier evaluation of seed 0 that a later one replaces.
    log_evaluation(_result(0, {m: 0 for m in HITS}), uri, "ev")
    for i in range(3):
        log_evaluation(_result(i, {m: h[i] for m, h in HITS.items()}), uri, "ev", {TRAIN_SECONDS_TAG: str(300 + i)})
    log_evaluation(_result(0, {"itemsage": 40, "tfidf": 30, "random": 1}, "fashion", "fashion"), uri, "ev")
    return uri


def test_report_regenerates_the_marked_section_and_the_chart(store: str, tmp_path: Path, capsys) -> None:
    doc = tmp_path / "docs" / "quality.md"
    doc.parent.mkdir()
    doc.write_text(f"# Quality\n\nintro kept\n\n{BEGIN}\nold table\n{END}\n\n## Later section kept\n")
    figure = tmp_path / "docs" / "figures" / "q.png"
    args = [
        "--tracking-uri",
        store,
        "--experiment",
        "ev",
        "--doc",
        str(doc),
        "--figure",
        str(figure),
        "--json",
        str(tmp_path / "q.json"),
    ]
    assert _cli().main(args) == 0
    text = doc.read_text()
    assert text.startswith("# Quality\n\nintro kept\n\n") and text.endswith("## Later section kept\n")
    assert "old table" not in text and text.count(BEGIN) == 1 and text.count(END) == 1
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](figures/q.png)" in text

    mean, sd = statistics.mean(HITS["itemsage"]) / PAIRS, statistics.stdev(HITS["itemsage"]) / PAIRS
    assert f"**{mean:.3f} ± {sd:.3f}**" in text  # ItemSage leads: bold, mean ± spread over 3 seeds
    assert f"| search | {PAIRS} |" in text and f"{0.65:.3f} ± 0.000" in text
    assert f"| {mean - 0.65:+.3f} |" in text  # ItemSage minus the best baseline (TF-IDF)
    assert "3 seed(s) (0, 1, 2)" in text and "models:/itemsage/10, models:/itemsage/11" in text
    assert "shopee, shopee (test split, item holdout)" in text and "fashion, fashion" in text
    assert "Training wall time per seed: 300 / 301 / 302 s." in text  # as experiments/seeds.py tags it
    assert re.search(r"Regenerated on \d{4}-\d{2}-\d{2} by `python experiments/quality_report.py ", text)

    data = json.loads((tmp_path / "q.json").read_text())
    shopee = next(g for g in data if g["config"] == "shopee")
    search = next(r for r in shopee["rows"] if r["probe"] == "search" and r["row"] == "all")
    # The replaced seed-0 run (all zeros) is not averaged in.
    assert search["methods"]["itemsage"]["values"] == [h / PAIRS for h in HITS["itemsage"]]
    assert shopee["train_seconds"] == ["300", "301", "302"]
    assert np.isclose(search["methods"]["itemsage"]["std"], sd)

    # Re-running replaces the section instead of adding a second one.
    assert _cli().main(args) == 0
    assert doc.read_text().count(BEGIN) == 1
    capsys.readouterr()


def test_tag_filter_and_no_match(store: str, tmp_path: Path, capsys) -> None:
    doc = tmp_path / "q.md"
    base = ["--tracking-uri", store, "--experiment", "ev", "--doc", str(doc), "--figure", str(tmp_path / "q.png")]
    assert _cli().main([*base, "--tag", "itemsage.dataset=fashion"]) == 0
    text = doc.read_text()
    assert "fashion, fashion" in text and "shopee, shopee" not in text and BEGIN in text
    assert _cli().main([*base, "--tag", "itemsage.dataset=amazon"]) == 2
    assert capsys.readouterr().err.startswith("error: no finished evaluation runs")
    assert _cli().main([*base, "--experiment", "nope"]) == 2


def test_one_marker_alone_is_refused() -> None:
    with pytest.raises(QualityReportError, match="one quality_report marker"):
        replace_section(f"x\n{BEGIN}\n", "table")
    assert replace_section("# Doc\n", "table").endswith(f"{BEGIN}\ntable\n{END}\n")


def test_help_names_the_options(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        _cli().parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("--tracking-uri", "--experiment", "--tag", "--doc", "--figure", "--split"):
        assert option in out


def test_the_served_modes_are_columns_and_hybrid_is_not_a_baseline(tmp_path: Path) -> None:
    """hybrid (the model fused with the lexical index) is shown, but "ItemSage - best baseline" is
    the model alone against the single baselines; the lexical index alone counts as one. Hybrid
    gets a difference of its own, against the fused frozen MiniLM too (a fusion against fusions)."""
    from itemsage.eval.quality.markdown import group_markdown
    from itemsage.eval.quality.runs import group_runs, load_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    scores = {"itemsage": 70, "hybrid": 90, "lexical": 72, "minilm_hybrid": 80, "tfidf": 65, "random": 1}
    log_evaluation(_result(0, scores), uri, "ev")
    (group,) = group_runs(load_runs(uri, ["ev"]))
    table = group_markdown(group)
    head = table.splitlines()[2]
    assert "hybrid (ItemSage + lexical, RRF)" in head and "lexical index (BM25, served)" in head
    assert head.endswith("| ItemSage - best baseline | hybrid (ItemSage + lexical, RRF) - best baseline |")
    search = next(line for line in table.splitlines() if line.startswith("| search |"))
    # 0.70 - max(0.72 lexical, 0.65); 0.90 - max(0.80 fused MiniLM, 0.72, 0.65)
    assert "**0.900**" in search and search.endswith("| -0.020 | +0.100 |")


def test_several_stores_are_reported_together_each_group_naming_its_store(store: str, tmp_path: Path, capsys) -> None:
    """Seeds run on different machines land in different stores whose registry versions both count
    from 1: --tracking-uri is repeatable, and with several every group says which store it is in."""
    other = f"sqlite:///{tmp_path / 'other.db'}"
    for i in range(3):
        log_evaluation(_result(i, {"itemsage": 50 + i, "tfidf": 40, "random": 1}, "amazon", "amazon"), other, "ev")
    doc, figure = tmp_path / "q.md", tmp_path / "q.png"
    args = ["--experiment", "ev", "--doc", str(doc), "--figure", str(figure), "--json", str(tmp_path / "q.json")]
    assert _cli().main(["--tracking-uri", store, "--tracking-uri", other, *args]) == 0
    text = doc.read_text()
    for name in ("amazon, amazon", "fashion, fashion", "shopee, shopee"):
        assert name in text
    amazon = next(p for p in text.split("\n\n") if p.startswith("**amazon"))
    assert f"(registry of `{other}`)" in amazon and store not in amazon
    shopee = next(p for p in text.split("\n\n") if p.startswith("**shopee"))
    assert f"(registry of `{store}`)" in shopee and "3 seed(s) (0, 1, 2)" in shopee
    data = {g["config"]: g for g in json.loads((tmp_path / "q.json").read_text())}
    assert data["amazon"]["stores"] == [other] and data["shopee"]["stores"] == [store]
    # One store: nothing to tell apart, so no store is named.
    assert _cli().main(["--tracking-uri", other, *args]) == 0
    assert "registry of" not in doc.read_text()
    # A store without the experiment is an error, not a silently shorter report.
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert _cli().main(["--tracking-uri", store, "--tracking-uri", empty, *args]) == 2
    assert "no MLflow experiment 'ev'" in capsys.readouterr().err


def test_several_splits_count_once_each_with_the_mean_of_their_seeds(tmp_path: Path) -> None:
    """On a small catalog one test split holds few distinct items: the same configuration evaluated on
    item-disjoint splits made with other preprocess.engagement.seed values is one group, whose spread
    is over splits (a split with three seeds counts once, with their mean), pairs summed; --rows picks
    per-action rows."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for seed, h in enumerate((60, 62, 64)):  # split 0: three seeds, mean 0.62
        log_evaluation(_result(seed, {"itemsage": h, "minilm": 50, "random": 1}, "amazon", "amazon"), uri, "ev")
    # Splits 1 and 2, one seed each, with their own pair counts (a split's held-out items differ).
    log_evaluation(_result(1, {"itemsage": 80, "minilm": 55, "random": 1}, "amazon", "amazon", 1, 200), uri, "ev")
    log_evaluation(_result(2, {"itemsage": 36, "minilm": 30, "random": 1}, "amazon", "amazon", 2, 50), uri, "ev")
    # A re-evaluation on split 2 replaces that split's earlier run; the same seed on split 0 is not touched.
    log_evaluation(_result(2, {"itemsage": 35, "minilm": 30, "random": 1}, "amazon", "amazon", 2, 50), uri, "ev")
    doc, figure = tmp_path / "q.md", tmp_path / "q.png"
    args = ["--tracking-uri", uri, "--experiment", "ev", "--doc", str(doc), "--figure", str(figure)]
    assert _cli().main([*args, "--json", str(tmp_path / "q.json"), "--rows", "all", "click"]) == 0
    (group,) = json.loads((tmp_path / "q.json").read_text())
    assert group["split_seeds"] == ["0", "0", "0", "1", "2"] and group["seeds"] == ["0", "1", "2", "1", "2"]
    rows = {(r["probe"], r["row"]): r for r in group["rows"]}
    assert set(rows) == {("search", "all"), ("search", "click"), ("item2item", "all"), ("item2item", "click")}
    search = rows[("search", "all")]
    assert np.allclose(search["methods"]["itemsage"]["values"], [0.62, 0.40, 0.70])  # split 1: 80 of 200
    assert np.isclose(search["methods"]["itemsage"]["std"], statistics.stdev([0.62, 0.40, 0.70]))
    assert search["pairs"] == PAIRS + 200 + 50
    text = doc.read_text()
    assert "3 item-disjoint splits (split seeds 0, 1, 2; seeds 0, 1, 2, 1, 2; 3 / 1 / 1 per split)" in text
    assert "| search (click) | 350 |" in text and "| search | 350 |" in text and "(unseen items)" not in text
    # ItemSage minus the best baseline, split by split: an easy split is easy for both.
    diff = [0.62 - 0.50, 0.40 - 55 / 200, 0.70 - 30 / 50]
    search_row = next(line for line in text.splitlines() if line.startswith("| search |"))
    assert search_row.endswith(f"| {statistics.mean(diff):+.3f} ± {statistics.stdev(diff):.3f} |")
    # One split: the spread is over seeds, as before.
    assert _cli().main([*args, "--json", str(tmp_path / "q.json"), "--tag", "itemsage.split_seed=0"]) == 0
    (group,) = json.loads((tmp_path / "q.json").read_text())
    assert group["rows"][0]["methods"]["itemsage"]["values"] == [0.60, 0.62, 0.64]
    assert "3 seed(s) (0, 1, 2), mean ± sample standard deviation over seeds" in doc.read_text()
