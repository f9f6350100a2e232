"""logQ correction on a skewed synthetic catalog: the effect the correction exists for.

Each query (a category) engages its category's items in proportion to a Zipf popularity. In-batch
negatives are drawn by that popularity, so an uncorrected sampled softmax learns
``log p(item|query) - log q(item)``: popular items are over-penalised as negatives and drop out of the
top-10, and recall against the true engagement distribution suffers. With ``- log q_j`` (q from the
count-min sketch, updated online as in training) the model ranks by ``p(item|query)`` again, so the
popular items' share of the top-10 is higher and recall@10 is better. Deterministic seeds; exact
training with plain SGD (no optimizer import) to keep the test fast.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from itemsage.config import LossConfig
from itemsage.model.cms import CountMinSketch
from itemsage.model.loss import SampledSoftmaxLoss

CATEGORIES, PER_CATEGORY, DIM, BATCH, STEPS = 10, 40, 16, 128, 200


def _catalog() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = CATEGORIES * PER_CATEGORY
    category = np.repeat(np.arange(CATEGORIES), PER_CATEGORY)
    popularity = 1.0 / np.arange(1, n + 1)
    popularity = popularity[rng.permutation(n)]
    return category, popularity / popularity.sum(), np.argsort(-popularity)[: n // 10]


def _train_and_retrieve(logq: bool) -> tuple[float, float]:
    category, p, popular = _catalog()
    n = len(p)
    torch.manual_seed(0)
    query_emb = (torch.randn(CATEGORIES, DIM) * 0.1).requires_grad_()
    category_emb = (torch.randn(CATEGORIES, DIM) * 0.1).requires_grad_()
    item_emb = (torch.randn(n, DIM) * 0.1).requires_grad_()
    params = [query_emb, category_emb, item_emb]
    loss_fn = SampledSoftmaxLoss(
        LossConfig(random_negatives=False, logq_correction=logq, temperature_init=0.1, learn_temperature=False)
    )
    sketch = CountMinSketch(1024, 4, seed=0)
    cat = torch.from_numpy(category)
    rng = np.random.default_rng(1)
    stream = torch.from_numpy(rng.choice(n, size=(STEPS, BATCH), p=p))
    for items in stream:
        sketch.update(items)
        query = F.normalize(query_emb[cat[items]], dim=-1)
        item = F.normalize(category_emb[cat[items]] + item_emb[items], dim=-1)
        loss = loss_fn(query, item, items, sketch.log_probability(items) if logq else None)["loss"]
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for t, g in zip(params, grads):
                t -= 2.0 * g
    with torch.no_grad():
        scores = F.normalize(query_emb, dim=-1) @ F.normalize(category_emb[cat] + item_emb, dim=-1).T
        top10 = scores.topk(10, dim=1).indices.numpy()
    popular_share = float(np.isin(top10, popular).mean())
    held_out = rng.choice(n, size=5000, p=p)
    recall = float(np.mean([i in top10[category[i]] for i in held_out]))
    return popular_share, recall


def test_logq_correction_restores_popular_items_and_recall() -> None:
    share_without, recall_without = _train_and_retrieve(logq=False)
    share_with, recall_with = _train_and_retrieve(logq=True)
    # Ideal ranking (by p(item|query)) puts ~40% popular items in the top-10; uniform within a
    # category would give 10%.
    assert share_with >= 0.35
    assert share_with - share_without >= 0.1, (share_with, share_without)
    assert recall_with - recall_without >= 0.1, (recall_with, recall_without)
