"""How close to TF-IDF does an untrained model with ``model.text_init = idf`` start? (No training.)

    python experiments/text_prior_check.py --features artifacts/full/shopee [--split test]

Builds the model exactly as training builds it at step 0 (IDF over the training items, the pooled
text path, the head at zero) for a few settings, and ranks each held-out pair's item against every
item of the features directory (the protocol of ``experiments/evaluate.py``), next to:

* ``tfidf_char3``: scikit-learn's character-trigram TF-IDF over the titles (``char_wb``, IDF fitted
  on the training items), the lexical baseline a user tries first;
* ``tfidf_tokens``: exact TF-IDF cosine over the model's own vocabulary ids (all text fields, IDF
  over the training items): what the hashed random projection approximates;
* ``frozen``: MiniLM query vs. title cosine.

Two probes: ``search`` (the split's query text -> the engaged item) and, for catalogs with product
groups (Shopee), ``item2item`` (a held-out listing -> the next listing of its group, itself left
out). Prints a Markdown table; ``--out`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import itemsage  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from itemsage.config import LossConfig, ModelConfig  # noqa: E402
from itemsage.data.features_read import QueryFeatures, read_manifest, read_pairs  # noqa: E402
from itemsage.eval.baselines.corpus import TextCorpus  # noqa: E402
from itemsage.eval.baselines.lexical import Bm25Ranker, TfidfRanker  # noqa: E402
from itemsage.eval.recall import ranks_of_targets  # noqa: E402
from itemsage.eval.same_product import same_product_pairs  # noqa: E402
from itemsage.eval.validation import ValSet, build_val_set, embed_items, embed_queries  # noqa: E402
from itemsage.model import ItemFeatureStore, build_model  # noqa: E402
from itemsage.model.text_prior import document_frequency, training_idf  # noqa: E402
from itemsage.train.data import heldout_items  # noqa: E402
from itemsage.train.loop import negative_pool  # noqa: E402

K = 10


def recall(ranks: torch.Tensor, k: int = K) -> float:
    return float((ranks < k).float().mean())


def item2item_pairs(features: str, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(query item, target item) per held-out listing: the next listing of its group, both in
    ``split`` (``itemsage.eval.same_product``, what ``evaluate.py`` measures); None without groups."""
    return same_product_pairs(features, read_pairs(features, split)["item_idx"])


def evaluate_baselines(
    feats: str, manifest: dict, val: ValSet, i2i: tuple[np.ndarray, np.ndarray]
) -> dict[str, dict[str, float]]:
    """The lexical baselines exactly as ``experiments/evaluate.py`` builds them (every text field
    of the manifest joined, TF-IDF's IDF over the whole catalog, sublinear tf; bm25s), on the
    search pairs and the item -> item pairs: the evaluation has no item -> item probe for a
    catalog without closeup pairs (Shopee), so this is where that baseline is measured."""
    corpus = TextCorpus.load(feats, manifest["text_fields"])
    assert corpus.query_texts is not None
    targets, exclude = val.target.numpy(), val.exclude.numpy()
    q_texts = [corpus.query_texts[int(k)] for k in val.query_key.tolist()]
    every = np.arange(corpus.num_items)
    out: dict[str, dict[str, float]] = {}
    for name, ranker in (
        ("tfidf (evaluate.py)", TfidfRanker(corpus.item_texts)),
        ("bm25 (evaluate.py)", Bm25Ranker(corpus.item_texts)),
    ):
        search = ranker.ranks(ranker.text_queries(q_texts), every, targets, exclude)  # type: ignore[attr-defined]
        i2i_ranks = ranker.ranks(ranker.item_queries(i2i[0]), every, i2i[1], i2i[0])  # type: ignore[attr-defined]
        out[name] = {"search": recall(torch.from_numpy(search)), "item2item": recall(torch.from_numpy(i2i_ranks))}
    return out


def token_tfidf(store: ItemFeatureStore, idf: torch.Tensor, items: np.ndarray) -> sp.csr_matrix:
    """Rows = items: L2-normalised TF-IDF over vocabulary ids (all fields pooled)."""
    f = store.num_text_fields
    rows, cols = [], []
    offs = store.token_offsets.numpy()
    ids = store.token_ids.numpy()
    for r, i in enumerate(items):
        toks = ids[offs[i * f] : offs[i * f + f]]
        rows.append(np.full(toks.size, r))
        cols.append(toks)
    r_ = np.concatenate(rows)
    c_ = np.concatenate(cols)
    m = sp.csr_matrix((np.ones(r_.size, np.float32), (r_, c_)), shape=(len(items), idf.numel()))
    m.sum_duplicates()
    m = m.multiply(idf.numpy()[None, :]).tocsr()
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1))).ravel()
    return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m


def sparse_ranks(q: sp.csr_matrix, items: sp.csr_matrix, target: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Ranks as :func:`ranks_of_targets` computes them (ties against the target), sparse scores."""
    out = []
    items_t = items.T.tocsc()
    for start in range(0, q.shape[0], 512):
        scores = torch.from_numpy((q[start : start + 512] @ items_t).toarray().astype(np.float32))
        rows = torch.arange(scores.shape[0])
        ex = exclude[start : start + 512].long()
        has = ex >= 0
        scores[rows[has], ex[has]] = -torch.inf
        t = scores[rows, target[start : start + 512].long()]
        out.append((scores >= t[:, None]).sum(1) - 1)
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--hash-dims", default="64,256")
    p.add_argument("--buckets", default="50000", help="comma-separated model.hash_buckets values")
    p.add_argument("--embedding-dim", type=int, default=256, help="model.embedding_dim of the init settings")
    p.add_argument(
        "--text-gates",
        default="1",
        help="comma-separated starting weights of the pooled text "
        "path against the MiniLM title skip (the learned gate's value at step 0)",
    )
    p.add_argument(
        "--models",
        default="",
        help="comma-separated trained models (models:/itemsage/N or a bundle dir) to score with the same probes",
    )
    p.add_argument("--skip-init", action="store_true", help="only baselines and --models")
    p.add_argument(
        "--debias",
        default="",
        help="comma-separated model.popularity_debias weights to score "
        "each of --models with (default: the weight recorded with the model)",
    )
    p.add_argument(
        "--hubness",
        default="",
        help="comma-separated weight:neighbours pairs (e.g. 0.5:1,0.5:2): score each of --models "
        "also with model.hubness_weight / hubness_neighbors set so, the bank being every item's "
        "embedding (what experiments/hubness_bank.py stores), without writing a bundle",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    feats = args.features
    manifest = read_manifest(feats)
    store = ItemFeatureStore.load(feats)
    vocab_size = int(manifest["vocab_size"])
    pool = negative_pool(store.num_items, heldout_items(feats))
    idf = training_idf(store, pool, vocab_size)
    df = document_frequency(store, pool, vocab_size)
    print(
        f"{store.num_items} items, {pool.numel()} training items, vocab {vocab_size}, "
        f"{int((df == 0).sum())} tokens in no training item",
        flush=True,
    )
    qf = QueryFeatures.load(feats, store, with_text=True, with_tokens=True)
    val = build_val_set(read_pairs(feats, args.split), store.num_items, "all")
    # The same pairs ranked among the split's own items only (the protocol validation uses).
    val_split = build_val_set(read_pairs(feats, args.split), store.num_items, "split")
    i2i = item2item_pairs(feats, args.split)
    every = torch.arange(store.num_items)
    rows: dict[str, dict[str, float]] = {}

    # Baselines: scikit-learn char-3 TF-IDF over titles, exact TF-IDF over the vocabulary, MiniLM.
    from sklearn.feature_extraction.text import TfidfVectorizer

    titles = pq.read_table(f"{feats}/catalog.parquet", columns=["title"]).column("title").to_pylist()
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=False)
    vec.fit([titles[i] for i in pool.tolist()])
    item_char = vec.transform(titles)
    q_char = vec.transform(qf.texts(val.query_key))
    rows["tfidf_char3"] = {"search": recall(sparse_ranks(q_char, item_char, val.target, val.exclude))}
    item_tok = token_tfidf(store, idf, np.arange(store.num_items))
    qtok = qf.tokens(val.query_key).numpy()
    q_rows = np.repeat(np.arange(qtok.shape[0]), qtok.shape[1])
    valid = qtok.reshape(-1) >= 0
    qm = sp.csr_matrix(
        (np.ones(int(valid.sum()), np.float32), (q_rows[valid], qtok.reshape(-1)[valid])),
        shape=(qtok.shape[0], vocab_size),
    )
    qm.sum_duplicates()
    qm = qm.multiply(idf.numpy()[None, :]).tocsr()
    qm = sp.diags(1.0 / np.maximum(np.sqrt(np.asarray(qm.multiply(qm).sum(1))).ravel(), 1e-12)) @ qm
    rows["tfidf_tokens"] = {"search": recall(sparse_ranks(qm, item_tok, val.target, val.exclude))}
    title = F.normalize(store.title_emb, dim=-1)
    q_frozen = F.normalize(qf.for_surface("search", val.query_key), dim=-1)
    rows["frozen"] = {"search": recall(ranks_of_targets(q_frozen, title, val.target, val.exclude))}
    if i2i is not None:
        qi, ti = torch.from_numpy(i2i[0]), torch.from_numpy(i2i[1])
        rows.update(evaluate_baselines(feats, manifest, val, i2i))
        rows["tfidf_char3"]["item2item"] = recall(sparse_ranks(item_char[qi.numpy()], item_char, ti, qi))
        rows["tfidf_tokens"]["item2item"] = recall(sparse_ranks(item_tok[qi.numpy()], item_tok, ti, qi))
        rows["frozen"]["item2item"] = recall(ranks_of_targets(title[qi], title, ti, qi))
    print(f"baselines done ({time.perf_counter() - t0:.0f} s)", flush=True)

    cpu = torch.device("cpu")
    qi = ti = torch.zeros(0, dtype=torch.int64)
    if i2i is not None:
        qi, ti = torch.from_numpy(i2i[0]), torch.from_numpy(i2i[1])
    settings = [
        (dim, buckets, title_on, gate)
        for dim in [int(d) for d in args.hash_dims.split(",")]
        for buckets in [int(b) for b in args.buckets.split(",")]
        for title_on in (False, True)
        for gate in ([float(g) for g in args.text_gates.split(",")] if title_on else [1.0])
    ]
    for ref in [m for m in args.models.split(",") if m]:
        from itemsage.trained import load_trained

        tm = load_trained(ref, device="cpu")
        emb = embed_items(tm.model, store, every, cpu)
        weights = [float(w) for w in args.debias.split(",")] if args.debias else [tm.model.popularity_debias]
        for w in weights:
            tm.model.popularity_debias = w
            q = embed_queries(tm.model, qf, val, cpu)
            name = f"trained {ref}" + (f", popularity_debias {w:g}" if args.debias else "")
            rows[name] = {"search": recall(ranks_of_targets(q, emb, val.target, val.exclude))}
            q_split = embed_queries(tm.model, qf, val_split, cpu)
            rows[name]["search, split items only"] = recall(
                ranks_of_targets(q_split, emb[val_split.candidates], val_split.target, val_split.exclude)
            )
            if i2i is not None:  # the query item as Serve's /similar embeds it (its debiasing included)
                with torch.no_grad():
                    q_items = tm.model.embed_item_queries(emb[qi])
                rows[name]["item2item"] = recall(ranks_of_targets(q_items, emb, ti, qi))
            print(f"{name}: {rows[name]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.hubness:
            from itemsage.model.hubness import neighbour_similarity

            tm.model.popularity_debias = float(tm.config.train.model.popularity_debias)
            d = tm.config.train.model.embedding_dim
            plain = emb[:, :d]
            q = embed_queries(tm.model, qf, val, cpu)[:, :d]
            q = torch.cat([q, torch.ones(q.shape[0], 1)], dim=1)
            with torch.no_grad():
                q_items = torch.cat([tm.model.embed_item_queries(emb[qi])[:, :d], torch.ones(qi.numel(), 1)], dim=1)
            for pair in args.hubness.split(","):
                w, r = float(pair.split(":")[0]), int(pair.split(":")[1])
                items = torch.cat([plain, -w * neighbour_similarity(plain, plain, r)[:, None]], dim=1)
                name = f"trained {ref}, hubness weight {w:g}, {r} neighbour(s)"
                rows[name] = {"search": recall(ranks_of_targets(q, items, val.target, val.exclude))}
                if i2i is not None:
                    rows[name]["item2item"] = recall(ranks_of_targets(q_items, items, ti, qi))
                print(f"{name}: {rows[name]}", flush=True)
    for dim, buckets, title_on, gate in [] if args.skip_init else settings:
        name = f"init h{dim} b{buckets // 1000}k" + (f" +MiniLM skip, text x{gate:g}" if title_on else " text only")
        cfg = ModelConfig(
            embedding_dim=args.embedding_dim,
            hash_dim=dim,
            hidden_dim=128,
            num_heads=8,
            ffn_dim=512,
            head_hidden_dim=512,
            hash_buckets=buckets,
            max_images=4,
            text_init="idf",
            text_residual=True,
            use_title_embedding=title_on,
            title_skip=title_on,
        )
        torch.manual_seed(args.seed)
        model = build_model(cfg, LossConfig(), vocab_size, store.image_dim, store.num_text_fields, token_idf=idf).eval()
        assert model.text_residual is not None
        with torch.no_grad():
            model.text_residual.gate.fill_(gate)
        emb = embed_items(model, store, every, cpu)
        q = embed_queries(model, qf, val, cpu)
        rows[name] = {"search": recall(ranks_of_targets(q, emb, val.target, val.exclude))}
        q_split = embed_queries(model, qf, val_split, cpu)
        rows[name]["search, split items only"] = recall(
            ranks_of_targets(q_split, emb[val_split.candidates], val_split.target, val_split.exclude)
        )
        if i2i is not None:
            rows[name]["item2item"] = recall(ranks_of_targets(emb[qi], emb, ti, qi))
        print(f"{name}: {rows[name]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if not title_on:
            # The pooled text path alone on both sides (the query's MiniLM projection left out):
            # how much of TF-IDF the random projection keeps.
            with torch.no_grad():
                q_text = model.text_residual.embed_tokens(model.item_tower.text_embedding, qf.tokens(val.query_key))
            name = f"init h{dim} b{buckets // 1000}k projection alone (query text path only)"
            rows[name] = {"search": recall(ranks_of_targets(q_text, emb, val.target, val.exclude))}
            print(f"{name}: {rows[name]}", flush=True)

    probes = ["search"] + (["item2item"] if i2i is not None else []) + ["search, split items only"]
    print(
        f"\nRecall@{K}, {args.split} split ({len(val)} search pairs"
        + (f", {len(i2i[0])} item2item pairs" if i2i is not None else "")
        + f"), against all {store.num_items} items"
    )
    print("| method | " + " | ".join(probes) + " |")
    print("|---|" + "---:|" * len(probes))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r.get(s, float('nan')):.3f}" for s in probes) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
