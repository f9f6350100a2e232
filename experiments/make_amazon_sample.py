"""Cut the bundled Amazon sample (data/sample/amazon/) out of the McAuley metadata files.

The tests and the demo need real Amazon products with real co-engagement on a fresh checkout, so
the repository ships a few hundred of them. Per category (a ``<Category>/meta.json.gz`` or
``meta_<Category>.json.gz`` of --source), the cut is the densest part of the in-file link graph,
grown greedily: start from the product with the most in-file ``also_buy`` / ``also_view`` links,
then repeatedly add the product with the most links into the products already taken (ties: the
smaller asin). So most links of the sample resolve inside it, as closeup pairs need. Lines are
copied unchanged, in file order; nothing is random, so a rerun reproduces the sample byte for byte.

After the last category's real lines, ``Gift_Cards/meta.json.gz`` gets the warts a loader must
survive, each built from a real line of the source that is not in the sample:

- a truncated JSON line (cut in the middle)                   -> ``malformed_row``, skipped
- a line with no title and no other text                      -> ``empty_item``, skipped
- a title wrapped in HTML with entities                       -> stripped, kept
- a title with bytes that are not UTF-8 (Latin-1 "é")         -> ``non_utf8_text``, kept
- a sample line repeated (same asin)                          -> ``duplicate_id``, skipped

Usage: python experiments/make_amazon_sample.py [--source data/amazon] [--out data/sample/amazon]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WART_CATEGORY = "Gift_Cards"


def category_files(source: Path) -> dict[str, Path]:
    """``{category: metadata file}`` of --source (either naming of the public files)."""
    found = {p.parent.name: p for p in sorted(source.glob("*/meta.json.gz"))}
    found |= {p.name[len("meta_") : -len(".json.gz")]: p for p in sorted(source.glob("meta_*.json.gz"))}
    return dict(sorted(found.items()))


def read_lines(path: Path) -> list[tuple[str, dict]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [(line.rstrip("\n"), json.loads(line)) for line in fh if line.strip()]


def densest(records: list[dict], n: int) -> set[str]:
    """Asins of ``n`` products grown greedily by in-file links into the chosen set."""
    asins = {r["asin"] for r in records}
    neighbours: dict[str, set[str]] = {a: set() for a in asins}
    for r in records:
        for b in r.get("also_buy", []) + r.get("also_view", []):
            if b in asins and b != r["asin"]:
                neighbours[r["asin"]].add(b)
                neighbours[b].add(r["asin"])
    chosen: set[str] = set()
    links_in = dict.fromkeys(asins, 0)
    while len(chosen) < min(n, len(asins)):
        # Before anything is chosen (or when nothing left links in), fall back to overall degree.
        best = max(
            (a for a in asins if a not in chosen), key=lambda a: (links_in[a], len(neighbours[a]), [-ord(c) for c in a])
        )
        chosen.add(best)
        for b in neighbours[best]:
            links_in[b] += 1
    return chosen


def warts(lines: list[tuple[str, dict]], taken: set[str]) -> list[bytes]:
    """The malformed lines of the module docstring, from real products outside the sample."""
    spare = [(line, rec) for line, rec in lines if rec["asin"] not in taken and rec.get("title")]
    if len(spare) < 4:
        raise SystemExit("make_amazon_sample: not enough products outside the sample for the malformed lines")
    truncated = spare[0][0][: len(spare[0][0]) // 2]
    empty = dict(spare[1][1])
    for key in ("title", "description", "feature", "brand", "category", "main_cat", "details", "price"):
        empty.pop(key, None)
    html_title = dict(spare[2][1])
    html_title["title"] = f"<b>{html_title['title']}</b> &amp; <i>free&nbsp;shipping</i>"
    latin1 = dict(spare[3][1])
    latin1["title"] = "Caf\u00e9 " + latin1["title"]
    latin1_line = json.dumps(latin1, ensure_ascii=False).encode("utf-8").replace("Caf\u00e9".encode(), b"Caf\xe9")
    duplicate = next(line for line, rec in lines if rec["asin"] in taken)
    return [
        truncated.encode(),
        json.dumps(empty).encode(),
        json.dumps(html_title).encode(),
        latin1_line,
        duplicate.encode(),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=REPO / "data" / "amazon")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "sample" / "amazon")
    parser.add_argument("--per-category", type=int, default=150)
    args = parser.parse_args(argv)
    files = category_files(args.source)
    if WART_CATEGORY not in files:
        print(f"make_amazon_sample: no {WART_CATEGORY} metadata under {args.source}", file=sys.stderr)
        return 2
    if args.out.exists():  # generated output: replaced whole, so no stale category lingers
        shutil.rmtree(args.out)
    total = 0
    for category, path in files.items():
        lines = read_lines(path)
        taken = densest([rec for _, rec in lines], args.per_category)
        out = [line.encode() for line, rec in lines if rec["asin"] in taken]
        if category == WART_CATEGORY:
            out += warts(lines, taken)
        target = args.out / category / "meta.json.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        # mtime=0: the gzip header carries no timestamp, so reruns are byte-identical.
        with target.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as fh:
            fh.write(b"\n".join(out) + b"\n")
        total += len(taken)
        print(f"{category}: {len(taken)} products of {len(lines)}")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {total} products to {args.out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
