"""Cut the small bundled sample (data/sample/) out of full downloads of the public datasets.

The demo and the tests must run on a fresh checkout, so the repository ships a few hundred real
products instead of depending on the full downloads. The cut is seeded and balanced, so rerunning it
reproduces the committed sample byte for byte:

- fashion: products that have an image, spread evenly over the master categories and, inside
  each, round-robin over its most common article types (closeup and search pairs need several
  products per type); written in the dataset's own layout, styles.csv + images/<id>.jpg.
- shopee: whole label groups of 2..6 listings (a group is a real same-product pair set; cutting
  one in half would leave a listing without its match), including a few titles with literal
  UTF-8 byte escapes so the adapter's decoding is exercised.

Usage: python experiments/make_sample.py [--source data] [--out data/sample]

--source holds the full downloads, data/fashion/ and data/shopee/ (README.md, "Data").
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ATTRIBUTION = """\
# Sample data: sources and licences

This folder holds a small slice of three public datasets, cut by `experiments/make_sample.py`
(amazon/: `experiments/make_amazon_sample.py`; both deterministic: rerun them against full
downloads to reproduce or resize the slice). It exists so the demo and the tests run on a fresh
checkout. Point `preprocess.catalog` at a full download for real runs.

## fashion/ — Fashion Product Images (Small)

- Products and photos from **Myntra**, published on Kaggle by **Param Aggarwal** as
  "Fashion Product Images (Small)"
  (https://www.kaggle.com/datasets/paramaggarwal/fashion-product-images-small).
- Commonly distributed under the **MIT licence** on Kaggle; we have **not verified** the licence
  terms beyond that listing. Credit Myntra and the Kaggle dataset when you reuse these files.
- Files: `styles.csv` (the dataset's own columns, {fashion_rows} products) and `images/<id>.jpg`
  (one photo per product).

## shopee/ — Shopee Price Match Guarantee

- Listing titles and label groups from the Kaggle competition **"Shopee - Price Match Guarantee"**
  (https://www.kaggle.com/competitions/shopee-product-matching), data by **Shopee**.
- Competition data: **research / non-commercial use** with attribution, under the competition's
  rules.
- Files: `train.csv` ({shopee_rows} listings in {shopee_groups} complete label groups; text only).

## amazon/ — Amazon Review Data (2018), product metadata

- Product metadata of two categories, **Gift_Cards** and **Magazine_Subscriptions**, from
  **"Amazon Review Data (2018)"** by Jianmo Ni, Jiacheng Li and Julian McAuley (UCSD), in the
  release's own format (`<Category>/meta.json.gz`: gzip, one JSON object a line, lines copied
  unchanged). Cite: Jianmo Ni, Jiacheng Li, Julian McAuley, "Justifying Recommendations using
  Distantly-Labeled Reviews and Fine-Grained Aspects", EMNLP-IJCNLP 2019.
- Amazon data released for **research use** (non-commercial) with attribution, as the release asks.
- Cut by `experiments/make_amazon_sample.py` (150 products per category, the densest part of each
  file's `also_buy` / `also_view` graph, so the links resolve inside the sample; no images).
  `Gift_Cards/meta.json.gz` ends with five damaged copies of real lines (truncated JSON, no text at
  all, an HTML title, bytes that are not UTF-8, a repeated asin) that the loader must skip or
  repair; `rejects.jsonl` names each one.

The fashion and shopee datasets come with no engagement data: the project derives synthetic
engagements from the catalog attributes (labelled `synthetic`) and real same-product pairs from
Shopee label groups (labelled `shopee`). Amazon's `also_buy` / `also_view` lists are real
co-engagement (labelled `amazon`).
"""


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def write_rows(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def pick_fashion(
    rows: list[dict[str, str]], have_image: set[str], n_items: int, types_per_category: int,
    min_type_size: int, rng: random.Random,
) -> list[dict[str, str]]:
    """Evenly over master categories, round-robin over each one's most common article types."""
    by_type: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["id"] in have_image:
            by_type[r["masterCategory"]][r["articleType"]].append(r)
    categories = {}
    for master in sorted(by_type):
        types = sorted(by_type[master].items(), key=lambda kv: (-len(kv[1]), kv[0]))
        types = [(t, items) for t, items in types if len(items) >= min_type_size][:types_per_category]
        if types:
            categories[master] = types
    # Small categories first, so what they cannot fill is shared out among the larger ones.
    capacity = {m: sum(len(items) for _, items in types) for m, types in categories.items()}
    order = sorted(categories, key=lambda m: (capacity[m], m))
    picked: list[dict[str, str]] = []
    for k, master in enumerate(order):
        remaining = n_items - len(picked)
        quota = min(capacity[master], -(-remaining // (len(order) - k)))
        pools = [sorted(items, key=lambda r: int(r["id"])) for _, items in categories[master]]
        for pool in pools:
            rng.shuffle(pool)
        taken = 0
        while taken < quota and any(pools):
            for pool in pools:
                if pool and taken < quota:
                    picked.append(pool.pop())
                    taken += 1
    return sorted(picked, key=lambda r: int(r["id"]))


def pick_shopee(rows: list[dict[str, str]], n_rows: int, max_group: int, n_escaped_groups: int,
                rng: random.Random) -> list[dict[str, str]]:
    """Whole label groups of 2..max_group listings until about ``n_rows`` listings."""
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        groups[r["label_group"]].append(r)
    eligible = sorted(g for g, members in groups.items() if 2 <= len(members) <= max_group)
    rng.shuffle(eligible)
    escaped = [g for g in eligible if any("\\x" in r["title"] for r in groups[g])][:n_escaped_groups]
    chosen: list[str] = []
    total = 0
    for g in escaped + [g for g in eligible if g not in set(escaped)]:
        if total >= n_rows:
            break
        chosen.append(g)
        total += len(groups[g])
    keep = set(chosen)
    return [r for r in rows if r["label_group"] in keep]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO / "data",
                        help="folder with fashion/ (styles.csv, images/) and shopee/ (train.csv)")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "sample")
    parser.add_argument("--fashion-items", type=int, default=300)
    parser.add_argument("--types-per-category", type=int, default=6,
                        help="article types kept per master category")
    parser.add_argument("--min-type-size", type=int, default=10,
                        help="article types with fewer imaged products are left out")
    parser.add_argument("--shopee-rows", type=int, default=300)
    parser.add_argument("--max-group", type=int, default=6, help="largest Shopee label group kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    styles, images = args.source / "fashion" / "styles.csv", args.source / "fashion" / "images"
    train = args.source / "shopee" / "train.csv"
    for needed in (styles, images, train):
        if not needed.exists():
            print(f"make_sample: {needed} not found (see --source)", file=sys.stderr)
            return 2

    header, rows = read_rows(styles)
    have_image = {p.stem for p in images.glob("*.jpg")}
    fashion = pick_fashion(rows, have_image, args.fashion_items, args.types_per_category,
                           args.min_type_size, random.Random(args.seed))
    out_fashion = args.out / "fashion"
    # The sample is generated output: replace it whole so no stale image lingers.
    if out_fashion.exists():
        shutil.rmtree(out_fashion)
    write_rows(out_fashion / "styles.csv", header, fashion)
    (out_fashion / "images").mkdir(parents=True)
    for r in fashion:
        shutil.copyfile(images / f"{r['id']}.jpg", out_fashion / "images" / f"{r['id']}.jpg")

    header, rows = read_rows(train)
    shopee = pick_shopee(rows, args.shopee_rows, args.max_group, 3, random.Random(args.seed))
    out_shopee = args.out / "shopee"
    if out_shopee.exists():
        shutil.rmtree(out_shopee)
    write_rows(out_shopee / "train.csv", header, shopee)

    n_groups = len({r["label_group"] for r in shopee})
    (args.out / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(
        fashion_rows=len(fashion), shopee_rows=len(shopee), shopee_groups=n_groups))
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(fashion)} fashion products, {len(shopee)} shopee listings "
          f"({n_groups} groups) to {args.out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
