"""Attribute-relevance probes: queries from held-out items, relevant = items of the same facets.

The engaged-item probes (``itemsage.eval.probes``) ask for one engaged item among all items;
on a synthetic catalog with a popularity-weighted engagement draw that single item is close to a
coin toss among hundreds of items that fit the query equally (fashion: 0.002-0.040). These
probes ask what a shopper sees instead: of the top k, how many are of the kind, colour and gender
asked for. An item's facets are the synthetic engagement's (``itemsage.data.synthetic_engagement``
rule 2): kind = ``product_types`` (else the last ``category_path`` level), colour = the first of
``colors``, gender = ``size_type``; only items with all three take part.

* ``attr_search``: one text query per (kind, colour, gender) of the held-out items, worded as the
  synthetic search queries are (the same synonym tables, seeded): "navy blue shirts for men";
* ``attr_closeup``: each held-out item with an image, its photo as the query (closeup tower);
* ``attr_item2item``: the same items as queries through the item tower (``/similar``); in a
  catalog without images, every held-out item;
* ``attr_home``: each held-out home pair whose engaged item is held out, the user's history as
  the query (home tower), relevant = the items of the engaged item's kind, colour and gender:
  what a home feed should show a user who goes on to engage with that item (one query per user
  and facet triple).

Held-out items: items engaged by the evaluated split's pairs and by no training pair, the items
the model never trained on. Relevant: every catalog item (held-out or not) with the query's
facets, the query item itself excluded from candidates and from the relevant set. Metric:
capped Recall@k = |top k ∩ relevant| / min(k, |relevant|), the precision of the top k when at
least k items are relevant and the plain recall when fewer are; ties count against the relevant
items, as in :func:`itemsage.eval.recall.ranks_of_targets`. Queries with nothing relevant are
left out.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from itemsage.data.features_read import catalog_strings, features_location, kind_name
from itemsage.data.synthetic_engagement import COLOUR_SYNONYMS, GENDER_SYNONYMS, KIND_SYNONYMS
from itemsage.eval.probes import Probe

ATTRIBUTE_PROBES: tuple[Probe, ...] = (
    Probe(
        "attr_search", "search", "text", "attribute text query ('navy blue shirts for men') -> items of those facets"
    ),
    Probe("attr_closeup", "closeup", "image", "held-out item's photo -> items of its kind, colour and gender"),
    Probe("attr_item2item", "closeup", "item", "held-out item -> items of its kind, colour and gender (item tower)"),
    Probe(
        "attr_home", "home", "user", "user history -> items of the kind, colour and gender of their next held-out item"
    ),
)
ATTRIBUTE_PROBE_NAMES: tuple[str, ...] = tuple(p.name for p in ATTRIBUTE_PROBES)
# The one row each attribute probe reports (every query item is held out).
ROW = "all"
FACET_COLUMNS = ("product_types", "category_path", "colors", "size_type")


@dataclass(frozen=True)
class Facets:
    """``group[item_idx]``: the item's (kind, colour, gender) as one code, -1 when a facet is
    missing; ``names[code]``: the facet values."""

    group: np.ndarray
    names: list[tuple[str, str, str]]

    @classmethod
    def from_columns(
        cls, product_types: Sequence[str], category_path: Sequence[str], colors: Sequence[str], size_type: Sequence[str]
    ) -> Facets:
        kinds = [kind_name(p, c) for p, c in zip(product_types, category_path)]
        colours = [c.split(",")[0].strip().lower() for c in colors]
        genders = [g.strip().lower() for g in size_type]
        triples = list(zip(kinds, colours, genders))
        names = sorted({t for t in triples if all(t)})  # sorted, not set order: stable codes
        code = {t: i for i, t in enumerate(names)}
        return cls(np.asarray([code.get(t, -1) for t in triples], dtype=np.int64), names)

    @classmethod
    def load(cls, features: str) -> Facets | None:
        """The facets of a features directory's ``catalog.parquet``; None when its catalog has no
        colour or gender column (Shopee, Amazon): the probes do not apply there."""
        fs, root = features_location(features)
        path = posixpath.join(root, "catalog.parquet")
        have = set(pq.read_schema(path, filesystem=fs).names)
        if not {"colors", "size_type"} <= have or not ({"product_types", "category_path"} & have):
            return None
        columns = catalog_strings(features, FACET_COLUMNS)
        return cls.from_columns(*(columns[c] for c in FACET_COLUMNS))

    def relevant_counts(self) -> np.ndarray:
        """``counts[code]``: how many catalog items have that facet code."""
        return np.bincount(self.group[self.group >= 0], minlength=len(self.names))


@dataclass(frozen=True)
class AttributeQueries:
    """One probe's queries: ``group[q]`` the facet code asked for, ``item[q]`` the query item
    (-1 for a text or user query, which excludes nothing), ``texts[q]`` the text of a text query,
    ``user[q]`` the ``user_idx`` of a user query."""

    probe: Probe
    group: np.ndarray
    item: np.ndarray
    texts: list[str] | None = None
    user: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.group)


def query_text(kind: str, colour: str, gender: str, rng: np.random.Generator) -> str:
    """A search query for the facets, worded as synthetic search queries are (rule 4's synonym
    tables): "navy blue shirts for men", "ladies black heels"."""
    k = _pick(KIND_SYNONYMS.get(kind, [kind]), rng)
    c = _pick(COLOUR_SYNONYMS.get(colour, [colour]), rng)
    g = _pick(GENDER_SYNONYMS.get(gender, [gender]), rng)
    return f"{c} {k} {g}" if g.startswith("for ") else f"{g} {c} {k}"


def _pick(options: list[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def attribute_queries(
    facets: Facets,
    held_out: np.ndarray,
    has_image: np.ndarray,
    seed: int = 0,
    home_pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, AttributeQueries]:
    """The queries of every attribute probe that has any (see the module docstring).

    ``held_out``: the held-out item indices; ``has_image[item_idx]``; ``home_pairs``: the
    evaluated split's home pairs as (``user_idx``, ``item_idx``) arrays. An item query needs at
    least one other item of its facets; a text or user query's facets always have the held-out item.
    """
    held = np.unique(np.asarray(held_out, dtype=np.int64))
    held = held[facets.group[held] >= 0]
    counts = facets.relevant_counts()
    out: dict[str, AttributeQueries] = {}
    codes = np.unique(facets.group[held])
    if codes.size:
        rng = np.random.default_rng(seed)
        texts = [query_text(*facets.names[int(c)], rng) for c in codes]
        out["attr_search"] = AttributeQueries(ATTRIBUTE_PROBES[0], codes, np.full(codes.size, -1, np.int64), texts)
    items = held[counts[facets.group[held]] > 1]
    image = np.asarray(has_image, dtype=bool)
    if image.any():
        # The photo and the item as queries for the same items, so the two towers compare.
        items = items[image[items]]
        if items.size:
            out["attr_closeup"] = AttributeQueries(ATTRIBUTE_PROBES[1], facets.group[items], items)
    if items.size:  # a text-only catalog: every held-out item as an item query
        out["attr_item2item"] = AttributeQueries(ATTRIBUTE_PROBES[2], facets.group[items], items)
    if home_pairs is not None:
        users, engaged = (np.asarray(a, dtype=np.int64) for a in home_pairs)
        keep = np.isin(engaged, held)
        pairs = np.unique(np.stack([users[keep], facets.group[engaged[keep]]], axis=1), axis=0)
        if len(pairs):
            out["attr_home"] = AttributeQueries(
                ATTRIBUTE_PROBES[3], pairs[:, 1], np.full(len(pairs), -1, np.int64), user=pairs[:, 0]
            )
    return out


def capped_recall(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """``{k: [Q]}`` |top k ∩ relevant| / min(k, |relevant|) per query row of ``scores`` ``[Q, N]``.

    Ties at the k-th score are filled with non-relevant items first (ties count against the
    relevant ones); rows with no relevant item get NaN. Excluded candidates should score -inf.
    """
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {tuple(scores.shape)} but relevant {tuple(relevant.shape)}")
    if max(ks) > scores.shape[1]:
        raise ValueError(f"k={max(ks)} but only {scores.shape[1]} candidates")
    top = torch.topk(scores, max(ks), dim=1).values
    n_rel = relevant.sum(dim=1)
    out = {}
    for k in ks:
        kth = top[:, k - 1 : k]
        above, tied = scores > kth, scores == kth
        rel_above = (above & relevant).sum(dim=1)
        slots = k - above.sum(dim=1) - (tied & ~relevant).sum(dim=1)
        hits = rel_above + torch.minimum(slots.clamp(min=0), (tied & relevant).sum(dim=1))
        value = hits.double() / n_rel.clamp(max=k).double()
        out[k] = torch.where(n_rel > 0, value, torch.full_like(value, math.nan))
    return out


# scores(rows) -> [len(rows), num_items] scores of those queries against every catalog item.
ScoreFn = Callable[[np.ndarray], np.ndarray | torch.Tensor]


def attribute_recall(
    queries: AttributeQueries, facets: Facets, score: ScoreFn, ks: Sequence[int], chunk: int = 256
) -> dict[int, np.ndarray]:
    """``{k: [Q]}`` capped Recall@k of each query, scored against the whole catalog by ``score``
    in blocks of ``chunk`` queries (a [chunk, catalog] block stays ~80 MB at 40k items)."""
    group = torch.from_numpy(facets.group)
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(queries), chunk):
        rows = np.arange(start, min(start + chunk, len(queries)))
        s = torch.as_tensor(score(rows)).double().clone()
        if s.shape != (len(rows), len(facets.group)):
            raise ValueError(f"scores of shape {tuple(s.shape)} for {len(rows)} queries and {len(facets.group)} items")
        relevant = group[None, :] == torch.from_numpy(queries.group[rows])[:, None]
        item = torch.from_numpy(queries.item[rows])
        has = torch.nonzero(item >= 0).flatten()
        s[has, item[has]] = -math.inf  # the query item is not its own neighbour
        relevant[has, item[has]] = False
        for k, v in capped_recall(s, relevant, ks).items():
            out[k].append(v)
    return {k: torch.cat(v).numpy() if v else np.zeros(0) for k, v in out.items()}


__all__ = [
    "ATTRIBUTE_PROBES",
    "ATTRIBUTE_PROBE_NAMES",
    "AttributeQueries",
    "Facets",
    "ScoreFn",
    "attribute_queries",
    "attribute_recall",
    "capped_recall",
    "query_text",
]
