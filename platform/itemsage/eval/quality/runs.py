"""Evaluation runs read back from MLflow and grouped into the report's statistics.

``experiments/evaluate.py`` logs one run per evaluation (``itemsage.eval.tracking``). This module
reads those runs back (it never trains or evaluates), keeps the latest run per (dataset, split,
configuration, split seed, seed), and gives per (dataset, split, configuration) group the mean
and the spread of Recall@k, for the model and every baseline, on each probe's ``all`` row and
its ``unseen`` row where the split has seen items too (items never trained on are the headline),
plus any per-action rows asked for. The spread is over seeds, or, when a group holds evaluations
on several item-disjoint splits of the catalog (``preprocess.engagement.seed``, tag
``itemsage.split_seed``), over splits, each split counting once with the mean of its seeds: on a
small catalog one test split holds few distinct engaged items, and the split moves a figure more
than the seed does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from itemsage.eval.probes import PROBE_NAMES
from itemsage.eval.tracking import DEFAULT_EXPERIMENT, KIND, TAG_PREFIX
from itemsage.trained.registry import resolve_tracking_uri

HEADLINE_ROWS = ("all", "unseen")
# Features made before the split seed was tagged were all made with the default.
DEFAULT_SPLIT_SEED = "0"
# Each seed's training wall time, tagged on its evaluation run by itemsage.studies.seeds.
TRAIN_SECONDS_TAG = "itemsage.train_seconds"
_METRIC = re.compile(r"^(?P<split>[^/]+)/(?P<probe>[^/]+)/(?P<row>[^/]+)/(?P<method>[^/]+)/recall_at_(?P<k>\d+)$")


class QualityReportError(ValueError):
    """No evaluation runs match, or the document cannot take the report."""


@dataclass(frozen=True)
class EvalRun:
    run_id: str
    start_time: int
    tags: dict[str, str]
    metrics: dict[str, float]
    # The tracking URI it was read from: registry versions (models:/itemsage/N) are per store.
    store: str = ""

    def tag(self, key: str, default: str = "?") -> str:
        return self.tags.get(TAG_PREFIX + key, default)


@dataclass(frozen=True)
class Stat:
    """Recall over seeds (or splits): mean, sample standard deviation (0 for one value), the values."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float:
        if len(self.values) < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    def cell(self) -> str:
        return f"{self.mean:.3f}" if len(self.values) < 2 else f"{self.mean:.3f} ± {self.std:.3f}"


@dataclass
class Group:
    """Evaluations of one configuration on one dataset and split, one run per (split seed, seed)."""

    dataset: str
    split: str
    holdout: str
    config: str
    config_hash: str
    runs: list[EvalRun] = field(default_factory=list)
    # (probe, row) -> method -> Stat
    stats: dict[tuple[str, str], dict[str, Stat]] = field(default_factory=dict)
    pairs: dict[tuple[str, str], int] = field(default_factory=dict)
    # The rows asked for, in display order.
    rows: tuple[str, ...] = HEADLINE_ROWS

    @property
    def title(self) -> str:
        return f"{self.dataset}, {self.config} ({self.split} split, {self.holdout} holdout)"

    @property
    def seeds(self) -> list[str]:
        return [r.tag("seed") for r in self.runs]

    @property
    def split_seeds(self) -> list[str]:
        """The distinct item-disjoint splits its runs measured, in order."""
        return list(dict.fromkeys(split_seed(r) for r in self.runs))

    @property
    def train_seconds(self) -> list[str]:
        """Each seed's training wall time as ``experiments/seeds.py`` logged it ("?" if not)."""
        return [r.tags.get(TRAIN_SECONDS_TAG, "?") for r in self.runs]

    @property
    def model_versions(self) -> list[str]:
        return [
            r.tag("model_uri") if r.tag("model_uri").startswith("models:/") else r.tag("model_version")
            for r in self.runs
        ]

    @property
    def stores(self) -> list[str]:
        """The tracking URIs its runs came from, in order of first appearance."""
        return list(dict.fromkeys(r.store for r in self.runs if r.store))


def load_runs(
    tracking_uri: str | Sequence[str] | None,
    experiments: Sequence[str] = (DEFAULT_EXPERIMENT,),
    tags: Mapping[str, str] | None = None,
) -> list[EvalRun]:
    """Finished evaluation runs of ``experiments`` whose tags include ``tags``, from one tracking
    store or several (e.g. one ``mlflow.db`` per machine that ran seeds), each run marked with its
    store. Every experiment must exist in every store named."""
    uris = [tracking_uri] if tracking_uri is None or isinstance(tracking_uri, str) else list(tracking_uri)
    if not uris:
        raise QualityReportError("no tracking URI to read evaluation runs from")
    if len(set(uris)) != len(uris):
        raise QualityReportError(f"tracking URI named twice: {uris}")
    return [run for uri in uris for run in _load_store(uri, experiments, tags or {})]


def _load_store(tracking_uri: str | None, experiments: Sequence[str], tags: Mapping[str, str]) -> list[EvalRun]:
    from mlflow.tracking import MlflowClient

    resolved = resolve_tracking_uri(tracking_uri)
    # As given (e.g. sqlite:///mlflow.db), not made absolute: it is printed in the report.
    store = tracking_uri or resolved
    client = MlflowClient(tracking_uri=resolved)
    ids = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise QualityReportError(f"no MLflow experiment {name!r} at {resolved}")
        ids.append(exp.experiment_id)
    clauses = [f"tags.`{TAG_PREFIX}kind` = '{KIND}'", "attributes.status = 'FINISHED'"]
    for k, v in tags.items():
        clauses.append(f"tags.`{k}` = '{_quote(v)}'")
    out = []
    token = None
    while True:
        page = client.search_runs(ids, " and ".join(clauses), max_results=1000, page_token=token)
        out += [
            EvalRun(r.info.run_id, int(r.info.start_time), dict(r.data.tags), dict(r.data.metrics), store) for r in page
        ]
        token = page.token
        if not token:
            return out


def _quote(v: str) -> str:
    return v.replace("'", "\\'")


def group_runs(runs: Sequence[EvalRun], k: int = 10, rows: Sequence[str] = HEADLINE_ROWS) -> list[Group]:
    """Groups by (dataset, split, holdout, configuration hash), the latest run per (split seed,
    seed), with the Recall@k statistics of ``rows`` (each probe's ``all`` / ``unseen`` rows and, by
    name, per-action rows such as ``also_view``). Within one split a statistic's values are the
    seeds'; over several splits they are the splits' seed means, and pairs are summed over splits."""
    latest: dict[tuple[str, ...], EvalRun] = {}
    for r in sorted(runs, key=lambda r: r.start_time):
        run_key = (
            r.tag("dataset"),
            r.tag("split"),
            r.tag("holdout"),
            r.tag("config_hash"),
            split_seed(r),
            r.tag("seed"),
        )
        latest[run_key] = r  # a re-evaluation of the same seed on the same split replaces the earlier one
    groups: dict[tuple[str, ...], Group] = {}
    order = sorted(latest.items(), key=lambda item: (item[0][:4], _seed_order(item[0][4]), _seed_order(item[0][5])))
    for gkey, r in order:
        g = groups.setdefault(gkey[:4], Group(gkey[0], gkey[1], gkey[2], r.tag("config"), gkey[3]))
        g.runs.append(r)
    for g in groups.values():
        # (probe, row) -> method -> split seed -> one value per seed
        values: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = {}
        pairs: dict[tuple[str, str], dict[str, int]] = {}
        for r in g.runs:
            for name, v in r.metrics.items():
                m = _METRIC.match(name)
                if m is None or int(m["k"]) != k or m["split"] != g.split or m["row"] not in rows:
                    continue
                pr = (m["probe"], m["row"])
                values.setdefault(pr, {}).setdefault(m["method"], {}).setdefault(split_seed(r), []).append(v)
                n = r.metrics.get(f"{g.split}/{m['probe']}/{m['row']}/n")
                if n is not None:
                    pairs.setdefault(pr, {})[split_seed(r)] = int(n)
        g.stats = {pr: {meth: _stat(by_split) for meth, by_split in ms.items()} for pr, ms in values.items()}
        g.pairs = {pr: sum(by_split.values()) for pr, by_split in pairs.items()}
        g.rows = tuple(rows)
    return sorted(groups.values(), key=lambda g: (g.dataset, g.config, g.split, g.holdout))


def split_seed(r: EvalRun) -> str:
    return r.tag("split_seed", DEFAULT_SPLIT_SEED)


def _stat(by_split: Mapping[str, Sequence[float]]) -> Stat:
    """The seeds' values on one split; on several, each split's mean over its seeds."""
    if len(by_split) == 1:
        return Stat(tuple(next(iter(by_split.values()))))
    return Stat(tuple(sum(vs) / len(vs) for vs in by_split.values()))


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.isdigit() else (1 << 62, seed)


def row_key(pr: tuple[str, str], rows: Sequence[str] = HEADLINE_ROWS) -> tuple[int, int]:
    probe, row = pr
    return (
        PROBE_NAMES.index(probe) if probe in PROBE_NAMES else len(PROBE_NAMES),
        rows.index(row) if row in rows else len(rows),
    )


def groups_json(groups: Sequence[Group], k: int = 10) -> list[dict[str, Any]]:
    """The report's numbers as data: per group, per (probe, row), per method mean / std / values."""
    return [
        {
            "dataset": g.dataset,
            "split": g.split,
            "holdout": g.holdout,
            "config": g.config,
            "config_hash": g.config_hash,
            "seeds": g.seeds,
            "split_seeds": [split_seed(r) for r in g.runs],
            "models": g.model_versions,
            "stores": g.stores,
            "train_seconds": g.train_seconds,
            "runs": [r.run_id for r in g.runs],
            "k": k,
            "rows": [
                {
                    "probe": pr[0],
                    "row": pr[1],
                    "pairs": g.pairs.get(pr, 0),
                    "methods": {m: {"mean": s.mean, "std": s.std, "values": list(s.values)} for m, s in ms.items()},
                }
                for pr, ms in sorted(g.stats.items(), key=lambda item: row_key(item[0], g.rows))
            ],
        }
        for g in groups
    ]
