"""Catalog-scale preprocessing on Ray Data: a McAuley-format Amazon file of ``--lines`` lines read,
turned into link pairs and counted into the training vocabulary, with the memory it takes.

Generates (seeded) a ``meta_Bench.json.gz`` in the Amazon Review Data 2018 format in a temporary
directory: realistic fields (category path, title, description paragraphs, feature bullets, brand,
details, main_cat, price strings, image URLs, ``also_buy`` / ``also_view`` links, most of them to
products outside the file), plus the warts of the real files: truncated lines, non-UTF-8 bytes,
lines without an asin, repeated asins. Then, on a local Ray of ``--cpus`` CPUs, the stages
``run_preprocess`` runs on it (``itemsage.data.ingest_stages``):

- read: streaming read + parallel parse + per-record checks + duplicate ids (``ingest_catalog``),
  the items written to Parquet and the rejects counted by Ray Data (nothing collected);
- pairs: ``also_buy`` / ``also_view`` links resolved against the catalog's ids (``link_pair_dataset``),
  written to Parquet;
- vocab: token counts of the train split's items (``training_vocab``), the default caps.

The frozen encoders' stages (MiniLM, the image backbone) are not run: they cost the same per item
whatever the catalog size, and ``experiments/bench/preprocess.py`` measures them.

Memory is sampled every ``--sample-s`` seconds: the driver's RSS, and the whole run's (driver +
every Ray process it started: GCS, raylet with the object store, workers) as the sum of PSS, which
counts the shared object-store pages once instead of once per process that maps them (the sum of
RSS is printed too). PASS when the driver's peak RSS stays under ``--driver-limit-gb`` (1) and the
whole run's peak under ``--total-limit-gb`` (4).

Baselines, measured in the same run on the first ``--baseline-lines`` lines of the same file, each
in a fresh process so its peak RSS is its own: the in-memory path preprocessing used before
(``read_catalog`` + ``copurchase.link_pairs`` + ``Vocab.build`` on the driver), and Python's own
gzip line iteration (the ceiling of any reader of the file). Ratios are printed against both; the
in-memory path's driver RSS is extrapolated linearly to ``--lines`` to show what it would need.

    python experiments/bench/amazon_ingest.py                      # 1,000,000 lines
    python experiments/bench/amazon_ingest.py --lines 20000 --baseline-lines 5000 --json out.json
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import itemsage  # noqa: F401
except ImportError:  # a plain checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))

import psutil  # noqa: E402

GB = 1024**3  # GiB; the limits are checked in these units and printed in both
SYLLABLES = [
    "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "da", "fo", "gu", "ha", "ji", "ke", "la",
    "mo", "nu", "pe", "qui", "ro", "si", "tu", "va", "we", "xo", "ya", "ze", "bra", "cle", "dri",
    "fla", "gro", "pla", "stri", "tho", "shu", "cha", "ble", "pri",
]  # fmt: skip
CATEGORIES = [
    ["Clothing, Shoes & Jewelry", "Women", "Clothing", "Dresses"],
    ["Clothing, Shoes & Jewelry", "Men", "Shoes", "Athletic"],
    ["Home & Kitchen", "Kitchen & Dining", "Cookware"],
    ["Home & Kitchen", "Bedding", "Sheets & Pillowcases"],
    ["Electronics", "Computers & Accessories", "Cables"],
    ["Sports & Outdoors", "Outdoor Recreation", "Camping & Hiking", "Tents"],
    ["Toys & Games", "Puzzles"],
    ["Beauty & Personal Care", "Skin Care", "Face"],
    ["Books", "Literature & Fiction"],
    ["Gift Cards", "Gift Cards"],
]
MAIN_CATS = ["Amazon Fashion", "All Beauty", "Home Audio & Theater", "Toys & Games", "Books", "Gift Cards"]
COLOURS = ["Black", "White", "Navy Blue", "Red", "Grey", "Green", "Beige", "Pink"]
MATERIALS = ["Cotton", "Polyester", "Stainless Steel", "Leather", "Wood", "Plastic"]


# ------------------------------------------------------------------------------ the file


def make_words(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
    return sorted(words)


class TextMaker:
    """Pseudo-words with the statistics of product text: Zipf-distributed word frequencies and a
    first-order Markov chain (each word has a few likely successors, with now and then a jump to
    any word), so word pairs repeat as in real phrases and distinct bigrams have a long tail."""

    def __init__(self, rng: random.Random, vocabulary: int, successors: int = 16, jump: float = 0.05) -> None:
        self.rng = rng
        self.words = make_words(vocabulary, rng)
        self.jump = jump
        self.cum = list(itertools.accumulate(1.0 / (r + 1) ** 1.05 for r in range(vocabulary)))
        self.succ_cum = list(itertools.accumulate(1.0 / (r + 1) for r in range(successors)))
        self.successors = [
            [self.words[j] for j in rng.choices(range(vocabulary), cum_weights=self.cum, k=successors)]
            for _ in range(vocabulary)
        ]
        self.index = {w: i for i, w in enumerate(self.words)}

    def sentence(self, lo: int, hi: int) -> str:
        rng = self.rng
        k = rng.randint(lo, hi)
        word = rng.choices(self.words, cum_weights=self.cum)[0]
        out = [word]
        for _ in range(k - 1):
            if rng.random() < self.jump:
                word = rng.choices(self.words, cum_weights=self.cum)[0]
            else:
                nxt = self.successors[self.index[word]]
                word = nxt[bisect.bisect(self.succ_cum, rng.random() * self.succ_cum[-1])]
            out.append(word)
        return " ".join(out).capitalize()


def asin(i: int) -> str:
    return f"B{i:09d}"


def product_line(i: int, n: int, rng: random.Random, text: TextMaker) -> bytes:
    """One 2018-format line (or, now and then, one of the real files' warts)."""
    idx = rng.randrange(max(1, i)) if i and rng.random() < 0.01 else i  # 1% repeat an earlier asin
    links_in = lambda k: [asin(rng.randrange(n)) for _ in range(k)]  # noqa: E731
    links_out = lambda k: [f"B8{rng.randrange(10**8):08d}" for _ in range(k)]  # noqa: E731
    brand = text.sentence(1, 2).title()
    record: dict[str, Any] = {
        "category": CATEGORIES[i % len(CATEGORIES)],
        "tech1": "",
        "description": [text.sentence(15, 45) for _ in range(rng.choice((0, 1, 1, 2)))],
        "fit": "",
        "title": f"{brand} {text.sentence(5, 12)}",
        "also_buy": links_in(rng.randint(0, 3)) + links_out(rng.randint(0, 4)),
        "tech2": "",
        "brand": brand,
        "feature": [text.sentence(5, 12) for _ in range(rng.randint(0, 4))],
        "rank": f"{rng.randint(1, 9_999_999):,} in {MAIN_CATS[i % len(MAIN_CATS)]} (",
        "also_view": links_in(rng.randint(0, 4)) + links_out(rng.randint(0, 6)),
        "details": {
            "\n    Product Dimensions: \n    ": f"{rng.randint(1, 30)} x {rng.randint(1, 30)} x 2 inches",
            "Color:": rng.choice(COLOURS),
            "Material:": rng.choice(MATERIALS),
            "ASIN:": asin(idx),
        },
        "main_cat": MAIN_CATS[i % len(MAIN_CATS)],
        "similar_item": "",
        "date": f"{rng.choice(['January', 'June', 'October'])} {rng.randint(1, 28)}, {rng.randint(2005, 2018)}",
        "price": rng.choice(["", f"${rng.randint(1, 200)}.{rng.randint(0, 99):02d}", "$5.00 - $10.00"]),
        "asin": asin(idx),
        "imageURL": [f"https://images-na.ssl-images-amazon.com/images/I/{idx:08x}._US40_.jpg"],
        "imageURLHighRes": [f"https://images-na.ssl-images-amazon.com/images/I/{idx:08x}.jpg"],
    }
    if rng.random() < 0.05:
        record["description"] = [f"<b>{record['title']}</b> &amp; more<br/>{text.sentence(5, 10)}"]
    line = json.dumps(record).encode()
    roll = rng.random()
    if roll < 0.002:
        return line[: len(line) // 2]  # truncated JSON
    if roll < 0.003:
        return line.replace(b'"asin": ', b'"asin_": ', 1)  # no asin
    if roll < 0.004:
        return line.replace(b'"title": "', b'"title": "caf\xe9 ', 1)  # a latin-1 byte
    return line


def write_catalog(path: Path, lines: int, seed: int) -> float:
    rng = random.Random(seed)
    text = TextMaker(rng, 30_000)
    start = time.perf_counter()
    with gzip.open(path, "wb", compresslevel=1) as fh:
        for i in range(lines):
            fh.write(product_line(i, lines, rng, text) + b"\n")
    return time.perf_counter() - start


def head_lines(src: Path, dest: Path, n: int) -> None:
    with gzip.open(src, "rb") as fin, gzip.open(dest, "wb", compresslevel=1) as fout:
        for i, line in enumerate(fin):
            if i >= n:
                break
            fout.write(line)


# ---------------------------------------------------------------------------- memory


@dataclass
class MemoryPeaks:
    driver_rss: int = 0
    driver_uss: int = 0
    total_pss: int = 0
    total_rss: int = 0
    processes: int = 0


class MemorySampler:
    """Peak memory of this process and of every process it started (Ray's included)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.peaks = MemoryPeaks()
        self.stage_peaks = MemoryPeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._me = psutil.Process()

    def stage(self) -> MemoryPeaks:
        """Start a new stage: returns the peaks of the stage so far (a fresh record for the next)."""
        self.sample()
        done, self.stage_peaks = self.stage_peaks, MemoryPeaks()
        return done

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        try:
            info = self._me.memory_full_info()
        except psutil.Error:
            return
        pss, rss, n = info.pss, info.rss, 1
        for child in self._me.children(recursive=True):
            try:
                mem = child.memory_full_info()
            except psutil.Error:  # exited, or not ours to read
                continue
            pss, rss, n = pss + mem.pss, rss + mem.rss, n + 1
        for p in (self.peaks, self.stage_peaks):
            p.driver_rss = max(p.driver_rss, info.rss)
            p.driver_uss = max(p.driver_uss, info.uss)
            p.total_pss = max(p.total_pss, pss)
            p.total_rss = max(p.total_rss, rss)
            p.processes = max(p.processes, n)


# ---------------------------------------------------------------------------- the stages


@dataclass
class Stage:
    name: str
    seconds: float
    lines_per_s: float
    detail: dict[str, Any] = field(default_factory=dict)
    memory: MemoryPeaks = field(default_factory=MemoryPeaks)


def run_ray_stages(path: Path, lines: int, args: argparse.Namespace, out: Path, sampler: MemorySampler) -> list[Stage]:
    import ray

    from itemsage.config import EngagementConfig, PreprocessConfig
    from itemsage.data.ingest import rejects_summary
    from itemsage.data.ingest_stages import ingest_for, training_vocab
    from itemsage.data.pair_derivation import link_pair_dataset

    ray.init(
        num_cpus=args.cpus,
        object_store_memory=int(args.object_store_gb * GB),
        include_dashboard=False,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = PreprocessConfig(
        catalog=str(path), layout="amazon", partitions=args.partitions, engagement=EngagementConfig()
    )
    stages = []
    sampler.stage()  # Ray's start-up counts toward the whole run, not toward the first stage
    try:
        t = time.perf_counter()
        ing = ingest_for(cfg)
        ing.items.write_parquet(str(out / "items"))
        rejects = rejects_summary(ing)
        s = time.perf_counter() - t
        stages.append(Stage("read", s, lines / s, {"duplicates": ing.duplicates, "rejects": rejects}, sampler.stage()))

        t = time.perf_counter()
        pairs, _, counts = link_pair_dataset(ing.items, ing.links, cfg.partitions)
        pairs.write_parquet(str(out / "pairs"))
        s = time.perf_counter() - t
        stages.append(Stage("pairs", s, lines / s, counts, sampler.stage()))

        t = time.perf_counter()
        vocab = training_vocab(cfg, ing)
        s = time.perf_counter() - t
        stages.append(Stage("vocab", s, lines / s, vocab.sizes, sampler.stage()))
    finally:
        ray.shutdown()
    return stages


def baseline_in_memory(path: Path) -> dict[str, Any]:
    """The path preprocessing took before: every stage in pandas/Python on the driver."""
    from itemsage.config import PreprocessConfig
    from itemsage.data.catalog import read_catalog
    from itemsage.data.copurchase import link_pairs
    from itemsage.data.ingest_stages import build_training_vocab

    cfg = PreprocessConfig(catalog=str(path))
    out: dict[str, Any] = {}
    t = time.perf_counter()
    result = read_catalog(path, layout="amazon")
    out["read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs, _, _ = link_pairs(result.links, result.items["item_id"])
    out["pairs_s"] = time.perf_counter() - t
    t = time.perf_counter()
    vocab = build_training_vocab(result.items, cfg)
    out["vocab_s"] = time.perf_counter() - t
    out["items"], out["pairs"], out["vocab"] = len(result.items), len(pairs), vocab.size
    return out


def baseline_gzip_lines(path: Path) -> dict[str, Any]:
    """Python's gzip line iteration alone: the ceiling of any reader of the file."""
    t = time.perf_counter()
    n = 0
    with gzip.open(path, "rb") as fh:
        for _ in fh:
            n += 1
    return {"lines": n, "read_s": time.perf_counter() - t}


def in_fresh_process(kind: str, path: Path) -> dict[str, Any]:
    """Run a baseline in a child process; its result plus the child's peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(
        [sys.executable, __file__, "--baseline", kind, "--baseline-file", str(path)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # ru_maxrss of the children waited for: the largest of them so far (KiB on Linux).
    result["peak_rss"] = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024
    return result


# ---------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1_000_000, help="lines of the generated file (default 1,000,000)")
    p.add_argument("--baseline-lines", type=int, default=100_000, help="lines the baselines read (default 100,000)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    p.add_argument("--partitions", type=int, default=8, help="hash partitions (preprocess.partitions)")
    p.add_argument("--object-store-gb", type=float, default=0.75, help="Ray object store size (GiB); the rest spills")
    p.add_argument("--driver-limit-gb", type=float, default=1.0)
    p.add_argument("--total-limit-gb", type=float, default=4.0)
    p.add_argument("--sample-s", type=float, default=0.5, help="memory sampling period")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the file goes (default: a temporary directory)")
    p.add_argument(
        "--input",
        default=None,
        help="a file written by --generate-only (same --lines and --seed) instead of generating one in the run",
    )
    p.add_argument("--generate-only", default=None, metavar="FILE", help="write the generated file here and stop")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--baseline", choices=["memory", "gzip"], help=argparse.SUPPRESS)
    p.add_argument("--baseline-file", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def report(stages: list[Stage], peaks: MemoryPeaks, base: dict[str, Any], gz: dict[str, Any], args) -> dict[str, Any]:
    mem_rate = {k: args.baseline_lines / base[f"{k}_s"] for k in ("read", "pairs", "vocab")}
    gzip_rate = gz["lines"] / gz["read_s"]
    print(
        f"\n{'stage':<8} {'seconds':>9} {'lines/s':>10} {'in-memory lines/s':>18} {'ratio':>7}"
        f" {'driver RSS GiB':>15} {'run PSS GiB':>12}"
    )
    for st in stages:
        ratio = st.lines_per_s / mem_rate[st.name]
        print(
            f"{st.name:<8} {st.seconds:>9.1f} {st.lines_per_s:>10,.0f} {mem_rate[st.name]:>18,.0f} {ratio:>7.2f}"
            f" {st.memory.driver_rss / GB:>15.2f} {st.memory.total_pss / GB:>12.2f}"
        )
    total_s = sum(st.seconds for st in stages)
    total_rate = args.lines / total_s
    mem_total = args.baseline_lines / sum(base[f"{k}_s"] for k in ("read", "pairs", "vocab"))
    print(f"{'all':<8} {total_s:>9.1f} {total_rate:>10,.0f} {mem_total:>18,.0f} {total_rate / mem_total:>7.2f}")
    print(
        f"python gzip line iteration alone: {gzip_rate:,.0f} lines/s (read stage at {stages[0].lines_per_s / gzip_rate:.3f} of it)"
    )
    extrapolated = base["peak_rss"] * args.lines / args.baseline_lines
    print(
        f"\npeak memory: driver RSS {peaks.driver_rss / GB:.2f} GiB (USS {peaks.driver_uss / GB:.2f}); whole run "
        f"PSS {peaks.total_pss / GB:.2f} GiB (sum of RSS {peaks.total_rss / GB:.2f}, {peaks.processes} processes)"
    )
    print(
        f"in-memory path: {base['peak_rss'] / GB:.2f} GiB for {args.baseline_lines:,} lines, "
        f"~{extrapolated / GB:.1f} GiB extrapolated to {args.lines:,}"
    )
    driver_ok = peaks.driver_rss < args.driver_limit_gb * GB
    total_ok = peaks.total_pss < args.total_limit_gb * GB
    print(f"driver < {args.driver_limit_gb} GiB ({peaks.driver_rss / 1e9:.2f} GB): {'PASS' if driver_ok else 'FAIL'}")
    print(f"whole run < {args.total_limit_gb} GiB ({peaks.total_pss / 1e9:.2f} GB): {'PASS' if total_ok else 'FAIL'}")
    return {
        "lines": args.lines,
        "stages": [asdict(st) for st in stages],
        "memory": asdict(peaks),
        "in_memory_baseline": base | {"lines": args.baseline_lines, "lines_per_s": mem_rate},
        "gzip_baseline": gz | {"lines_per_s": gzip_rate},
        "driver_ok": driver_ok,
        "total_ok": total_ok,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline:
        path = Path(args.baseline_file)
        print(json.dumps(baseline_in_memory(path) if args.baseline == "memory" else baseline_gzip_lines(path)))
        return 0
    if args.generate_only:
        gen_s = write_catalog(Path(args.generate_only), args.lines, args.seed)
        print(f"generated {args.lines:,} lines in {gen_s:.0f}s: {args.generate_only}")
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        path = work / "meta_Bench.json.gz"
        if args.input:
            os.symlink(Path(args.input).absolute(), path)
        else:
            gen_s = write_catalog(path, args.lines, args.seed)
            print(f"generated {args.lines:,} lines in {gen_s:.0f}s")
        print(f"catalog: {args.lines:,} lines, {path.stat().st_size / 2**20:.0f} MiB gzip")
        head = work / "head" / "meta_Bench.json.gz"
        head.parent.mkdir()
        head_lines(path, head, args.baseline_lines)
        gz = in_fresh_process("gzip", path)
        base = in_fresh_process("memory", head)
        with MemorySampler(args.sample_s) as sampler:
            stages = run_ray_stages(path, args.lines, args, work, sampler)
        results = report(stages, sampler.peaks, base, gz, args)
        for st in stages:
            print(f"  {st.name}: {st.detail}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if results["driver_ok"] and results["total_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
