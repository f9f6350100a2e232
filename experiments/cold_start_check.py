"""Recall of held-out (new) items under popularity-debiased query scores, for a few weights.

    python experiments/cold_start_check.py --model models:/itemsage/N --features artifacts/full/shopee \
        [--split test] [--weights 0,0.25,0.5,1]

``model.popularity_debias`` (recorded in the model's config) takes ``weight x`` the mean training
query of each surface out of its query embeddings at evaluation and serving. This runs the
project's offline evaluation (``itemsage.eval.evaluate.evaluate_model``: every test pair's item
ranked against all items) once per weight on the same loaded model and prints Recall@10 per
surface and cohort, so the weight written into a config is a measured one. ``--seen-sample N``
also ranks N random training pairs' items against all items with each weight: what the weight
costs the items the model knows (on an item-disjoint split every test item is new, so any push
against seen items looks like a win there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from itemsage.data.features_read import QueryFeatures, read_pairs  # noqa: E402
from itemsage.eval.evaluate import evaluate_model  # noqa: E402
from itemsage.eval.recall import RecallTable  # noqa: E402
from itemsage.eval.validation import build_val_set, model_recall  # noqa: E402
from itemsage.model import ItemFeatureStore  # noqa: E402
from itemsage.trained import load_trained  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--weights", default="0,0.25,0.5,1")
    p.add_argument("--seen-sample", type=int, default=0, help="training pairs to rank as the seen probe")
    args = p.parse_args()
    tm = load_trained(args.model, device="cpu")
    recorded = tm.model.popularity_debias
    print(f"model {tm.uri} (version {tm.version}); recorded model.popularity_debias = {recorded}")
    seen = None
    if args.seen_sample > 0:
        store = ItemFeatureStore.load(args.features, max_images=tm.max_images, text_fields=tm.text_fields)
        qf = QueryFeatures.load(args.features, store, with_tokens=tm.model.text_residual is not None)
        train = read_pairs(args.features, "train")
        n = len(train["item_idx"])
        pick = np.random.default_rng(0).choice(n, size=min(args.seen_sample, n), replace=False)
        seen = build_val_set({k: v[pick] for k, v in train.items()}, store.num_items, catalog="all")
    print("| weight | row | ItemSage R@10 | R@50 |")
    print("|---:|---|---:|---:|")
    for w in [float(x) for x in args.weights.split(",")]:
        tm.model.popularity_debias = w
        result = evaluate_model(tm, features=args.features, split=args.split)
        for method, task in result.table.rows:
            if method == "itemsage" and not task.endswith("/click"):
                r10, r50 = result.recall(method, task, 10), result.recall(method, task, 50)
                print(f"| {w:g} | {task} | {r10:.3f} | {r50 if r50 is None else round(r50, 3)} |", flush=True)
        if seen is not None:
            table = model_recall(tm.model, store, qf, seen, torch.device("cpu"), RecallTable(ks=(10, 50)))
            for method, task in table.rows:
                if task.endswith("/all"):
                    r10, r50 = table.get(method, task, 10), table.get(method, task, 50)
                    print(f"| {w:g} | seen: {task} | {r10:.3f} | {r50 if r50 is None else round(r50, 3)} |", flush=True)
    tm.model.popularity_debias = recorded


if __name__ == "__main__":
    main()
