"""Pick an index by measurement: recall@k against exact search, and queries per second.

Which ANN index is "good enough" depends on the catalog's geometry, so ``IndexConfig.spec="auto"``
is answered by building each candidate on the real embeddings, turning its recall knobs
(``efSearch`` for HNSW, ``nprobe`` for IVF, ``itopk_size`` for CAGRA, then ``k_factor`` for
Refine) up until recall@k reaches the target, and keeping the fastest setting that does. Exact
search ("Flat") is always measured: it is the speed baseline, and the answer when no candidate
reaches the target.

The sweep measures indexes on the device they will serve from (``itemsage.index.devices``): on a
GPU server it adds GPU IVF-Flat, IVF-PQ and CAGRA to the candidates and skips specs the GPU cannot
run (HNSW, fast-scan PQ, Refine); on a CPU server it skips CAGRA. A candidate that ends up on
another device than the serving one is measured but never chosen. Each skip is logged and kept in
``SweepResult.skipped``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import faiss
import numpy as np

from itemsage.index.base import ItemIndex, as_vectors, parse_use_gpu
from itemsage.index.devices import CPU, DeviceCaps, serving_device, sweep_candidates
from itemsage.index.faiss_index import FaissIndex, build_index
from itemsage.index.idmap import check_id_batch

log = logging.getLogger(__name__)

EXACT_SPEC = "Flat"
EF_SEARCH_GRID: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
ITOPK_GRID: tuple[int, ...] = (32, 64, 128, 256, 512)
NPROBE_GRID: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
K_FACTOR_GRID: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0, 64.0)
# A knob step that gains less recall than this is on a plateau (0.002 = 1 neighbour in 500).
PLATEAU_EPS = 0.002
# Serving batches queries (Serve's @serve.batch), so batch throughput is what a replica delivers.
RANK_BY = "qps_b256"
# The batch-256 pass (which also yields recall) may run this many times ``time_budget_s``: enough
# for every query of every ANN setting; exhaustive search over 1M items stops early instead.
B256_BUDGET_FACTOR = 5


@dataclass
class SweepRow:
    """One (spec, search params) setting and what it measured."""

    spec: str
    params: dict[str, float]
    recall: float
    qps_b1: float
    qps_b256: float
    build_s: float
    memory_bytes: int
    device: str = "cpu"


@dataclass
class SweepResult:
    """Every measured setting, and the chosen one (``index`` holds it, built, when kept)."""

    rows: list[SweepRow]
    chosen: SweepRow
    exact: SweepRow  # the exact-search row: the speed baseline (and the fallback choice)
    k: int
    recall_target: float
    n: int
    n_queries: int
    max_memory_bytes: int | None = None
    device: str = CPU  # where the chosen index serves from
    skipped: dict[str, str] = field(default_factory=dict)  # spec -> why it was not a candidate
    index: ItemIndex | None = field(default=None, repr=False, compare=False)

    def speedup(self, row: SweepRow, batch: int = 256) -> float:
        """QPS of ``row`` over exact-search QPS at the same batch size."""
        attr = "qps_b1" if batch == 1 else "qps_b256"
        base = getattr(self.exact, attr)
        return getattr(row, attr) / base if base > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "recall_target": self.recall_target,
            "n": self.n,
            "n_queries": self.n_queries,
            "max_memory_bytes": self.max_memory_bytes,
            "rank_by": RANK_BY,
            "device": self.device,
            "skipped": dict(self.skipped),
            "rows": [asdict(r) for r in self.rows],
            "chosen": asdict(self.chosen),
            "exact": asdict(self.exact),
        }

    def to_markdown(self) -> str:
        head = (
            f"| spec | params | device | recall@{self.k} | QPS b1 | QPS b256 | x exact b1 | x exact b256 "
            "| build s | memory MB |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
        )
        lines = [head]
        for r in self.rows:
            params = ", ".join(f"{k}={v:g}" for k, v in sorted(r.params.items())) or "-"
            mark = " **(chosen)**" if r is self.chosen else ""
            lines.append(
                f"| {r.spec}{mark} | {params} | {r.device} | {r.recall:.4f} | {r.qps_b1:,.0f} | "
                f"{r.qps_b256:,.0f} | {self.speedup(r, 1):.1f} | {self.speedup(r, 256):.1f} | "
                f"{r.build_s:.1f} | {r.memory_bytes / 2**20:,.1f} |"
            )
        budget = f", memory <= {self.max_memory_bytes / 2**20:,.0f} MB" if self.max_memory_bytes else ""
        lines.append(
            f"\nN={self.n:,}, {self.n_queries:,} queries; chosen: fastest ({RANK_BY}) with "
            f"recall@{self.k} >= {self.recall_target}{budget} -> {self.chosen.spec} "
            f"{self.chosen.params or ''}"
        )
        lines += [f"\nnot a candidate on {self.device}: {spec} ({why})" for spec, why in self.skipped.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def exact_neighbours(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices [Q, k] of the exact top-k by inner product (FAISS brute force, BLAS)."""
    _, rows = faiss.knn(queries, embeddings, k, metric=faiss.METRIC_INNER_PRODUCT)
    return rows


def recall_at_k(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]], k: int) -> float:
    """Mean over queries of |found top-k  intersect  exact top-k| / k (the usual "k-recall@k")."""
    if len(found) != len(truth):
        raise ValueError(f"{len(found)} result lists for {len(truth)} queries")
    if not truth:
        raise ValueError("recall of zero queries is undefined")
    hits = [len(set(f[:k]) & set(t[:k])) / max(1, min(k, len(t))) for f, t in zip(found, truth)]
    return float(np.mean(hits))


class Qps(NamedTuple):
    """Queries per second by the wall clock, and per second of this process's CPU time.

    On a machine shared with other jobs the wall clock measures the neighbours too; CPU time does
    not (with one FAISS thread it is single-core QPS), so ratios between indexes stay meaningful.
    """

    wall: float
    cpu: float


class _Timer:
    def __init__(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def elapsed(self) -> float:
        return time.perf_counter() - self.wall0

    def qps(self, n: int) -> Qps:
        wall, cpu = self.elapsed(), time.process_time() - self.cpu0
        return Qps(n / max(wall, 1e-9), n / max(cpu, 1e-9))


def search_all(
    index: ItemIndex, queries: np.ndarray, k: int, batch: int, budget_s: float | None = None
) -> tuple[list[list[str]], Qps]:
    """Results in batches of ``batch``, and the QPS of that pass.

    With ``budget_s`` the pass stops after the batch that crosses it (at least one batch runs),
    so results cover a prefix of the queries. Only exhaustive search over a large catalog is
    slow enough to hit a sensible bound; ANN settings answer every query well within it.
    """
    index.search(queries[:1], k)  # warm-up: first-call allocations, GPU kernels, page faults
    found: list[list[str]] = []
    timer = _Timer()
    for start in range(0, queries.shape[0], batch):
        found.extend(index.search(queries[start : start + batch], k)[0])
        if budget_s is not None and timer.elapsed() >= budget_s:
            break
    return found, timer.qps(len(found))


def qps_single(index: ItemIndex, queries: np.ndarray, k: int, budget_s: float) -> Qps:
    """Batch-1 QPS: one query per call, until every query ran or ``budget_s`` passed."""
    done, timer = 0, _Timer()
    while done < queries.shape[0]:
        index.search(queries[done : done + 1], k)
        done += 1
        if timer.elapsed() >= budget_s:
            break
    return timer.qps(done)


def knob_axes(index: ItemIndex, k: int) -> list[tuple[str, list[float]]]:
    """The recall knobs of ``index`` with their candidate values, cheapest first.

    nprobe (IVF) and efSearch (HNSW) trade speed for recall directly; k_factor (Refine) raises
    the ceiling that the compressed codes put on recall, by re-ranking more candidates exactly.
    """
    params = index.search_params
    axes: list[tuple[str, list[float]]] = []
    if "nprobe" in params:
        nlist = index.nlist if isinstance(index, FaissIndex) and index.nlist else max(NPROBE_GRID)
        axes.append(("nprobe", sorted({p for p in NPROBE_GRID if p < nlist} | {nlist})))
    if "efSearch" in params:
        axes.append(("efSearch", [ef for ef in EF_SEARCH_GRID if ef >= k] or [k]))
    if "itopk_size" in params:
        axes.append(("itopk_size", [t for t in ITOPK_GRID if t >= k] or [k]))
    if "k_factor" in params:
        start = params["k_factor"]
        axes.append(("k_factor", [start] + [f for f in K_FACTOR_GRID if f > start]))
    return axes


def walk_knobs(index: ItemIndex, k: int, evaluate: Callable[[dict[str, float]], float], recall_target: float) -> None:
    """Raise the knobs from their cheapest setting until ``evaluate(params) -> recall`` reaches
    ``recall_target``, or no knob still helps.

    Each round tries the next values of each knob in order (nprobe/efSearch before k_factor) and
    takes the first that gains more than ``PLATEAU_EPS`` recall; a knob gets two steps of
    look-ahead before it counts as flat. A knob on a plateau (e.g. nprobe when too few candidates
    are re-ranked) is left and the next knob is tried, so the walk ends at the first setting that
    meets the target instead of scanning every list.
    """
    axes = knob_axes(index, k)
    pos = [0] * len(axes)
    current = {name: values[0] for name, values in axes}
    best = evaluate(dict(current))
    while best < recall_target:
        moved = False
        for a, (name, values) in enumerate(axes):
            for step in (1, 2):
                if pos[a] + step >= len(values):
                    break
                trial = {**current, name: values[pos[a] + step]}
                recall = evaluate(dict(trial))
                if recall >= recall_target:
                    return
                if recall > best + PLATEAU_EPS:
                    pos[a], current, best, moved = pos[a] + step, trial, recall, True
                    break
            if moved:
                break
        if not moved:
            return  # no knob gains recall any more


def sweep(
    embeddings: np.ndarray,
    ids: Sequence[str],
    queries: np.ndarray,
    candidates: list[str],
    k: int = 10,
    recall_target: float = 0.95,
    use_gpu: str | bool = "auto",
    *,
    max_memory_bytes: int | None = None,
    time_budget_s: float = 2.0,
    train_size: int | None = None,
    keep_index: bool = True,
    caps: DeviceCaps | None = None,
) -> SweepResult:
    """Build every candidate, measure recall@k and QPS per knob setting, choose the fastest.

    Per candidate the knobs rise (``walk_knobs``) until recall@k >= ``recall_target`` (higher
    settings are only slower, so the walk stops there) or no knob gains recall. The chosen row is
    the highest batch-256 QPS among rows that meet the target (and ``max_memory_bytes``, if
    given); exact "Flat" otherwise. Batch-256 QPS is timed over the query pass that also gives
    recall (bounded by 5x ``time_budget_s``, which only exhaustive search on a large catalog
    reaches); batch-1 QPS over ``time_budget_s``. With ``keep_index`` the chosen index is returned
    built, its knobs set, in ``result.index``. ``caps`` (default: detected) says what this process
    can run; only specs that can serve from the serving device are built (module docstring).
    """
    ids = check_id_batch(ids)
    x = as_vectors(embeddings, None, "embeddings", ids)
    if len(ids) != x.shape[0]:
        raise ValueError(f"{len(ids)} ids but {x.shape[0]} embedding rows")
    q = as_vectors(queries, x.shape[1], "queries")
    if not candidates:
        raise ValueError("sweep needs at least one candidate spec")
    if not 0.0 < recall_target <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1]; got {recall_target}")
    k = min(int(k), x.shape[0])
    truth_rows = exact_neighbours(x, q, k)
    truth = [[ids[r] for r in row if r >= 0] for row in truth_rows.tolist()]
    caps = caps or DeviceCaps.detect()
    device = serving_device(parse_use_gpu(use_gpu), caps)
    runnable, skipped = sweep_candidates(candidates, device, caps)
    specs = list(dict.fromkeys([EXACT_SPEC, *runnable]))  # exact first, no repeats

    rows: list[SweepRow] = []
    best: tuple[SweepRow, ItemIndex | None] | None = None
    exact: tuple[SweepRow, ItemIndex | None] | None = None
    for spec in specs:
        t0 = time.perf_counter()
        index = build_index(x, ids, spec, use_gpu=use_gpu, train_size=train_size)
        build_s = time.perf_counter() - t0
        memory = index.memory_bytes()
        log.info("built %s in %.1fs (%.1f MB)", index.spec, build_s, memory / 2**20)
        spec_rows: list[SweepRow] = []

        def evaluate(
            params: dict[str, float],
            index: ItemIndex = index,
            build_s: float = build_s,
            memory: int = memory,
            spec_rows: list[SweepRow] = spec_rows,
        ) -> float:
            index.set_search_params(**params)
            found, qps_b256 = search_all(index, q, k, 256, budget_s=B256_BUDGET_FACTOR * time_budget_s)
            row = SweepRow(
                spec=index.spec,
                params=index.search_params,
                recall=recall_at_k(found, truth[: len(found)], k),
                qps_b1=qps_single(index, q, k, time_budget_s).wall,
                qps_b256=qps_b256.wall,
                build_s=build_s,
                memory_bytes=memory,
                device=index.device,
            )
            log.info("%s %s recall@%d=%.4f qps_b256=%.0f", row.spec, params, k, row.recall, row.qps_b256)
            spec_rows.append(row)
            return row.recall

        walk_knobs(index, k, evaluate, recall_target)
        rows += spec_rows
        kept = index if keep_index else None
        if spec == EXACT_SPEC:
            exact = (spec_rows[0], kept)
            continue
        last = spec_rows[-1]  # the walk stops at the first setting that meets the target
        fits = max_memory_bytes is None or memory <= max_memory_bytes
        on_device = (last.device == CPU) == (device == CPU)
        if not on_device:  # e.g. an IVF-PQ layout FAISS could not clone to the GPU
            skipped[index.spec] = f"built on {last.device}, but the index serves from {device}"
            log.warning("%s is not chosen: %s", index.spec, skipped[index.spec])
        if on_device and last.recall >= recall_target and fits and (best is None or last.qps_b256 > best[0].qps_b256):
            best = (last, kept)
        del index, kept  # only the exact and the best index stay alive

    assert exact is not None
    chosen_row, chosen_index = best if best is not None else exact
    result = SweepResult(
        rows=rows,
        chosen=chosen_row,
        exact=exact[0],
        k=k,
        recall_target=recall_target,
        n=x.shape[0],
        n_queries=q.shape[0],
        max_memory_bytes=max_memory_bytes,
        device=device,
        skipped=skipped,
    )
    if chosen_index is not None:
        chosen_index.set_search_params(**chosen_row.params)
        chosen_index.sweep = result.to_dict()
        result.index = chosen_index
    return result
