"""Synthetic engagement: documented (query, engaged item) pairs for catalogs that have none.

``synthesize_engagements``: our demo catalogs have no engagement at all, so pairs are derived
from catalog attributes by the rules below (source "synthetic"). They are a stand-in that
exercises every surface and action; metrics on them say how well a model recovers these rules,
not how it would do on real shoppers. Rules (also in ``docs/synthetic-engagement.md``):

1. Items are sorted by ``item_id`` and a seeded permutation gives each a popularity rank r;
   popularity is ``1 / (r + 1) ** cfg.popularity_exponent`` (Zipf-like: a few items get most
   engagement). Every draw of an engaged item below is weighted by popularity.
2. Item facets: kind = ``product_types`` (else the last ``category_path`` level), colour = the
   first of ``colors``, gender = ``size_type``, brand, and the title's words.
3. ``cfg.num_users`` users, each with an interest profile: a gender (drawn from the
   popularity-weighted catalog), 2-3 preferred kinds among items of that gender (unisex and
   ungendered items fit everyone) and a preferred colour. Each pair's user is drawn uniformly.
4. search: the user picks an item they like (80%: from their profile; 20%: any item). The
   query is built from its facets with noise: the kind (often as a synonym, "tshirts" ->
   "tee"), the brand (kept 35% of the time), the gender word (50%, "women" -> "ladies"), the
   colour (60%, "grey" -> "gray"), one other title word (30%), words shuffled 30% of the time,
   a letter swap typo 5% of the time. Items without a kind get 2-3 of their title words. A
   query is never the title copied. The engaged item is drawn among items of the query's kind
   (or sharing a query word when there is no kind): with probability
   ``cfg.facet_match_share`` among the items matching every facet the query states (when there
   are any), by popularity; otherwise by popularity x 4^-(query facets it misses). Mostly exact
   matches, sometimes near ones. Match quality = the share of facets it matches.
5. closeup: the query is the ``item_id`` of a viewed item *with images* (80% from the user's
   profile), the engaged item is another item of the same kind (any other item when there is
   none): with probability ``cfg.facet_match_share`` one that also shares its colour and gender
   (when there is one), by popularity; otherwise popularity x 3 if same colour x 3 if same
   gender. Match quality = the share of colour/gender it shares. Catalogs without images get
   no closeup pairs.
6. home: the query is the ``user_id``; the engaged item comes from the user's profile (85%;
   else any item fitting their gender), popularity x 3 if it has their colour. Match quality =
   the share of (gender, kind, colour) preferences it meets.
7. Actions: of each surface's pairs, exactly ``round(share * n)`` get each action of
   ``cfg.action_shares`` (dense clicks, sparse checkouts). Deeper actions (ACTIONS order: click,
   save, add_to_cart, checkout = depth 0..3) are handed out first, deepest first, by weighted
   sampling without replacement where a pair of match quality q weighs ``1 + depth * q``: a
   perfect match is 4x as likely as a poor one to be a checkout.
8. Timestamps are uniform over 30 days from 2023-11-14 (seconds since the epoch), so user
   histories have an order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from itemsage.config import ACTIONS, EngagementConfig
from itemsage.data.engagement import ENGAGEMENT_COLUMNS, engagement_frame
from itemsage.data.layout_fashion import GENDER_WORDS

# 2023-11-14T22:13:20Z: an arbitrary, fixed origin for synthetic timestamps.
SYNTHETIC_EPOCH = 1_700_000_000
SYNTHETIC_DAYS = 30

# Query-side wording of catalog values, so a search query is not the catalog's own text.
KIND_SYNONYMS: dict[str, list[str]] = {
    "tshirts": ["t-shirt", "tshirt", "tee", "t shirt"],
    "shirts": ["shirt", "shirts"],
    "casual shoes": ["sneakers", "casual shoes", "shoes"],
    "sports shoes": ["running shoes", "sports shoes", "trainers"],
    "formal shoes": ["formal shoes", "office shoes"],
    "watches": ["watch", "wrist watch", "watches"],
    "handbags": ["handbag", "purse", "bag"],
    "sunglasses": ["sunglasses", "shades"],
    "trousers": ["trousers", "pants"],
    "track pants": ["track pants", "joggers"],
    "jeans": ["jeans", "denim"],
    "heels": ["heels", "high heels"],
    "flip flops": ["flip flops", "slippers"],
    "backpacks": ["backpack", "bag"],
    "kurtas": ["kurta"],
    "tops": ["top", "tops"],
    "wallets": ["wallet"],
    "belts": ["belt"],
    "sweaters": ["sweater", "jumper"],
    "sweatshirts": ["sweatshirt", "hoodie"],
    "briefs": ["briefs", "underwear"],
    "caps": ["cap", "hat"],
    "jackets": ["jacket"],
    "dresses": ["dress"],
    "perfume and body mist": ["perfume", "body mist"],
    "deodorant": ["deo", "deodorant"],
}
COLOUR_SYNONYMS: dict[str, list[str]] = {
    "grey": ["grey", "gray"],
    "navy blue": ["navy", "navy blue"],
    "off white": ["off white", "cream"],
    "multi": ["multicolor", "multi colour"],
}
GENDER_SYNONYMS: dict[str, list[str]] = {
    "men": ["men", "mens", "men's", "for men"],
    "women": ["women", "womens", "ladies", "for women"],
    "boys": ["boys", "kids"],
    "girls": ["girls", "kids"],
}
UNISEX = "unisex"
_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _codes(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Integer codes in sorted-value order (never set order: it changes with PYTHONHASHSEED)."""
    names = sorted({v for v in values if v})
    index = {v: i for i, v in enumerate(names)}
    return np.array([index.get(v, -1) for v in values], dtype=np.int64), names


@dataclass
class _Catalog:
    """Item facets as arrays, so each draw weighs thousands of candidates in one numpy op."""

    ids: list[str]
    titles: list[str]
    pop: np.ndarray  # popularity, sums to 1
    kind: np.ndarray
    kind_names: list[str]
    colour: np.ndarray
    colour_names: list[str]
    gender: np.ndarray
    gender_names: list[str]
    brand: np.ndarray
    brand_names: list[str]
    has_image: np.ndarray
    title_words: list[list[str]]
    by_kind: dict[int, np.ndarray]
    by_word: dict[str, np.ndarray]

    @property
    def size(self) -> int:
        return len(self.ids)

    def __post_init__(self) -> None:
        self._fits: dict[int, np.ndarray] = {}

    def gender_fits(self, code: int) -> np.ndarray:
        """Items a user of gender ``code`` may want: their gender, unisex, or ungendered."""
        if code not in self._fits:
            if code < 0:
                self._fits[code] = np.ones(self.size, dtype=bool)
            else:
                unisex = self.gender_names.index(UNISEX) if UNISEX in self.gender_names else -2
                self._fits[code] = (self.gender == code) | (self.gender == unisex) | (self.gender < 0)
        return self._fits[code]

    def has_word(self, word: str) -> np.ndarray:
        mask = np.zeros(self.size, dtype=bool)
        mask[self.by_word[word]] = True
        return mask


def _field(catalog: pd.DataFrame, name: str) -> list[str]:
    if name not in catalog.columns:
        return [""] * len(catalog)
    return [
        "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip() for v in catalog[name].tolist()
    ]


def _index(keys: Iterable[Any]) -> dict[Any, np.ndarray]:
    groups: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return {k: np.array(v, dtype=np.int64) for k, v in groups.items()}


def _build_catalog(catalog: pd.DataFrame, exponent: float, rng: np.random.Generator) -> _Catalog:
    # Sorted by id, so the result does not depend on the row order of the input.
    cat = catalog.assign(item_id=catalog["item_id"].astype(str)).sort_values("item_id", kind="stable")
    n = len(cat)
    kinds = [p or c.split(">")[-1].strip() for p, c in zip(_field(cat, "product_types"), _field(cat, "category_path"))]
    kind, kind_names = _codes([k.lower() for k in kinds])
    colour, colour_names = _codes([c.split(",")[0].strip().lower() for c in _field(cat, "colors")])
    gender, gender_names = _codes([g.lower() for g in _field(cat, "size_type")])
    brand, brand_names = _codes([b.lower() for b in _field(cat, "brand")])
    paths = cat["image_paths"].tolist() if "image_paths" in cat.columns else [[]] * n
    has_image = np.array([p is not None and len(p) > 0 for p in paths], dtype=bool)
    titles = _field(cat, "title")
    title_words = [_words(t) for t in titles]
    rank = rng.permutation(n)
    pop = 1.0 / (rank + 1.0) ** exponent
    by_word: dict[str, list[int]] = {}
    for i, words in enumerate(title_words):
        for w in dict.fromkeys(words):
            by_word.setdefault(w, []).append(i)
    return _Catalog(
        ids=cat["item_id"].tolist(),
        titles=titles,
        pop=pop / pop.sum() if n else pop,
        kind=kind,
        kind_names=kind_names,
        colour=colour,
        colour_names=colour_names,
        gender=gender,
        gender_names=gender_names,
        brand=brand,
        brand_names=brand_names,
        has_image=has_image,
        title_words=title_words,
        by_kind={k: v for k, v in _index(kind.tolist()).items() if k >= 0},
        by_word={w: np.array(v, dtype=np.int64) for w, v in by_word.items()},
    )


def _invert(cdf: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse-CDF draw: one uniform and one binary search, cheaper than ``rng.choice(p=...)``,
    which re-validates and re-sums the weights on every call."""
    return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)


def _choose(rng: np.random.Generator, weights: np.ndarray) -> int:
    """Index drawn with probability proportional to ``weights``."""
    return _invert(np.cumsum(weights), rng)


class _Sampler:
    """Repeated weighted draws from a fixed pool: the cumulative sum is built once."""

    def __init__(self, candidates: np.ndarray, weights: np.ndarray) -> None:
        self.candidates = candidates
        self.cdf = np.cumsum(weights)

    def __len__(self) -> int:
        return len(self.candidates)

    def draw(self, rng: np.random.Generator) -> int:
        return int(self.candidates[_invert(self.cdf, rng)])


def _draw(rng: np.random.Generator, candidates: np.ndarray, weights: np.ndarray) -> int:
    return int(candidates[_choose(rng, weights)])


@dataclass
class _User:
    """An interest profile (rule 3) and the draws it makes."""

    user_id: str
    gender: int
    kinds: np.ndarray
    colour: int
    fits: np.ndarray  # mask: items of a fitting gender
    likes: _Sampler  # items of a fitting gender and preferred kind, popularity x colour bonus
    likes_with_images: _Sampler  # the same, only items with images (closeup queries)
    fitting: _Sampler  # any item of a fitting gender, by popularity


def _liked(cat: _Catalog, items: np.ndarray, colour: int) -> _Sampler:
    """Profile draws: popularity, x 3 for the user's colour."""
    bonus = np.where((cat.colour[items] == colour) & (colour >= 0), 3.0, 1.0)
    return _Sampler(items, cat.pop[items] * bonus)


def _make_users(cat: _Catalog, num_users: int, rng: np.random.Generator) -> list[_User]:
    width = len(str(max(num_users - 1, 0)))
    users = []
    everyone = np.arange(cat.size)
    for u in range(num_users):
        gender = int(cat.gender[_draw(rng, everyone, cat.pop)])
        fits = cat.gender_fits(gender)
        kind_weight = np.bincount(
            cat.kind[fits & (cat.kind >= 0)], weights=cat.pop[fits & (cat.kind >= 0)], minlength=len(cat.kind_names)
        )
        available = np.flatnonzero(kind_weight > 0)
        n_kinds = min(len(available), int(rng.integers(2, 4)))
        kinds = (
            rng.choice(available, size=n_kinds, replace=False, p=kind_weight[available] / kind_weight[available].sum())
            if n_kinds
            else np.array([], dtype=np.int64)
        )
        liked = np.flatnonzero(fits & np.isin(cat.kind, kinds) if n_kinds else fits)
        colour = int(cat.colour[_draw(rng, liked, cat.pop[liked])])
        fitting = np.flatnonzero(fits)
        users.append(
            _User(
                user_id=f"u{u:0{width}d}",
                gender=gender,
                kinds=np.sort(kinds),
                colour=colour,
                fits=fits,
                likes=_liked(cat, liked, colour),
                likes_with_images=_liked(cat, liked[cat.has_image[liked]], colour),
                fitting=_Sampler(fitting, cat.pop[fitting]),
            )
        )
    return users


def _phrase(value: str, synonyms: dict[str, list[str]], rng: np.random.Generator, singularise: bool = False) -> str:
    """How a shopper might say a catalog value: a synonym, or (kinds) sometimes a singular."""
    options = synonyms.get(value)
    if options:
        return str(options[rng.integers(len(options))])
    if singularise and value.endswith("s") and not value.endswith("ss") and len(value) > 3 and rng.random() < 0.5:
        return value[:-1]  # "kurtis" -> "kurti"
    return value


def _typo(word: str, rng: np.random.Generator) -> str:
    j = int(rng.integers(1, len(word) - 2))
    return word[:j] + word[j + 1] + word[j] + word[j + 2 :]


@dataclass
class _Query:
    text: str
    kind: int
    brand: int
    gender: int
    colour: int
    words: list[str]

    @property
    def n_facets(self) -> int:
        return sum(x >= 0 for x in (self.brand, self.gender, self.colour)) + len(self.words)


def _search_query(cat: _Catalog, i: int, rng: np.random.Generator) -> _Query | None:
    """A noisy shopper's query for item ``i`` (rule 4); None when no such query can differ
    from the title."""
    kind, brand, gender, colour = (int(cat.kind[i]), int(cat.brand[i]), int(cat.gender[i]), int(cat.colour[i]))
    q = _Query("", kind, -1, -1, -1, [])
    slots: list[str] = []
    if brand >= 0 and rng.random() < 0.35:
        q.brand = brand
        slots.append(cat.brand_names[brand])
    gname = cat.gender_names[gender] if gender >= 0 else ""
    if gname and gname != UNISEX and rng.random() < 0.5:
        q.gender = gender
        slots.append(_phrase(gname, GENDER_SYNONYMS, rng))
    if colour >= 0 and rng.random() < 0.6:
        q.colour = colour
        slots.append(_phrase(cat.colour_names[colour], COLOUR_SYNONYMS, rng))
    used = set(_words(" ".join(slots)))
    if kind >= 0:
        used |= set(_words(cat.kind_names[kind]))
    spare = [
        w
        for w in dict.fromkeys(cat.title_words[i])
        if w not in used and w.isalpha() and len(w) >= 3 and w not in GENDER_WORDS
    ]
    if kind >= 0:
        if spare and rng.random() < 0.3:
            q.words = [spare[rng.integers(len(spare))]]
            slots.append(q.words[0])
        slots.append(_phrase(cat.kind_names[kind], KIND_SYNONYMS, rng, singularise=True))
    else:
        if not spare:
            return None
        k = min(len(spare), int(rng.integers(2, 4)))
        q.words = [spare[j] for j in sorted(rng.choice(len(spare), size=k, replace=False))]
        slots.extend(q.words)
    if rng.random() < 0.3:
        slots = [slots[j] for j in rng.permutation(len(slots))]
    words = " ".join(slots).split()
    if rng.random() < 0.05:
        long = [j for j, w in enumerate(words) if len(w) >= 5]
        if long:
            j = long[rng.integers(len(long))]
            words[j] = _typo(words[j], rng)
    if _words(" ".join(words)) == cat.title_words[i]:
        if len(words) < 2:
            return None
        words = words[1:]
    q.text = " ".join(words)
    return q


def _facet_draw(
    rng: np.random.Generator, pop: np.ndarray, weights: np.ndarray, exact: np.ndarray, exact_share: float
) -> int:
    """Index of the engaged item among the candidates: with probability ``exact_share`` an exact
    match (``exact``) by popularity ``pop`` when there is one, else by ``weights``.

    Why both: the facet weights alone lose to the popularity spread (a 1000x more popular near
    miss beats an exact match), so exact matches get a share of their own."""
    if rng.random() < exact_share and exact.any():
        return _choose(rng, np.where(exact, pop, 0.0))
    return _choose(rng, weights)


def _search_pair(cat: _Catalog, q: _Query, rng: np.random.Generator, exact_share: float) -> tuple[int, float]:
    """Engaged item for query ``q``: an exact match (``exact_share``) or popularity x
    4^-(missed facets); returns (item, quality)."""
    if q.kind >= 0:
        cands = cat.by_kind[q.kind]
    else:
        cands = np.unique(np.concatenate([cat.by_word[w] for w in q.words]))
    matched = np.zeros(len(cands))
    if q.brand >= 0:
        matched += cat.brand[cands] == q.brand
    if q.colour >= 0:
        matched += cat.colour[cands] == q.colour
    if q.gender >= 0:
        matched += cat.gender_fits(q.gender)[cands]
    for w in q.words:
        matched += cat.has_word(w)[cands]
    total = q.n_facets
    pop = cat.pop[cands]
    j = _facet_draw(rng, pop, pop * 4.0 ** (matched - total), matched == total, exact_share)
    return int(cands[j]), float(matched[j] / total) if total else 1.0


def _closeup_pair(cat: _Catalog, viewed: int, rng: np.random.Generator, exact_share: float) -> tuple[int, float] | None:
    kind = int(cat.kind[viewed])
    cands = cat.by_kind.get(kind, np.array([], dtype=np.int64)) if kind >= 0 else np.array([], dtype=np.int64)
    cands = cands[cands != viewed]
    if len(cands) == 0:
        cands = np.delete(np.arange(cat.size), viewed)
        if len(cands) == 0:
            return None
    facets = [(cat.colour, int(cat.colour[viewed])), (cat.gender, int(cat.gender[viewed]))]
    shared = np.zeros(len(cands))
    known = 0
    for values, v in facets:
        if v >= 0:
            known += 1
            shared += values[cands] == v
    pop = cat.pop[cands]
    j = _facet_draw(rng, pop, pop * 3.0**shared, shared == known, exact_share)
    return int(cands[j]), float(shared[j] / known) if known else 1.0


def _home_quality(cat: _Catalog, user: _User, item: int) -> float:
    checks = [bool(user.fits[item]), bool(np.isin(cat.kind[item], user.kinds)) if len(user.kinds) else True]
    if user.colour >= 0:
        checks.append(int(cat.colour[item]) == user.colour)
    return sum(checks) / len(checks)


def _assign_actions(quality: np.ndarray, shares: dict[str, float], rng: np.random.Generator) -> list[str]:
    """Rule 7: exact funnel shares; deeper actions go preferentially to better matches."""
    n = len(quality)
    total = sum(shares.values())
    raw = {a: shares.get(a, 0.0) / total * n for a in ACTIONS}
    counts = {a: int(math.floor(x)) for a, x in raw.items()}
    # Largest remainder, so counts sum to n and each share is met to within one pair.
    by_remainder = sorted(ACTIONS, key=lambda a: (counts[a] - raw[a], ACTIONS.index(a)))
    for a in by_remainder[: n - sum(counts.values())]:
        counts[a] += 1
    actions = np.full(n, "", dtype=object)
    free = np.arange(n)
    for depth in range(len(ACTIONS) - 1, 0, -1):
        a = ACTIONS[depth]
        k = min(counts[a], len(free))
        if k:
            # Efraimidis-Spirakis: the k largest u^(1/w) are a weighted sample without replacement.
            keys = rng.random(len(free)) ** (1.0 / (1.0 + depth * quality[free]))
            chosen = np.argsort(-keys, kind="stable")[:k]
            actions[free[chosen]] = a
            free = np.delete(free, chosen)
    actions[free] = ACTIONS[0]
    return actions.tolist()


def _check_config(cfg: EngagementConfig) -> None:
    unknown = sorted(set(cfg.action_shares) - set(ACTIONS))
    if unknown:
        raise ValueError(f"engagement.action_shares: unknown actions {unknown} (known: {ACTIONS})")
    if any(v < 0 for v in cfg.action_shares.values()) or sum(cfg.action_shares.values()) <= 0:
        raise ValueError("engagement.action_shares must be >= 0 and sum to more than 0")
    if cfg.num_users < 1:
        raise ValueError("engagement.num_users must be >= 1")
    if not 0.0 <= cfg.facet_match_share <= 1.0:
        raise ValueError(f"engagement.facet_match_share must be in [0, 1], got {cfg.facet_match_share}")


def synthesize_engagements(catalog: pd.DataFrame, cfg: EngagementConfig) -> pd.DataFrame:
    """Seeded synthetic (query, engaged item) pairs for every surface (rules in the module doc)."""
    _check_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    cat = _build_catalog(catalog, cfg.popularity_exponent, rng)
    out: dict[str, list[Any]] = {c: [] for c in ENGAGEMENT_COLUMNS}
    if cat.size == 0:
        return engagement_frame(out)
    users = _make_users(cat, cfg.num_users, rng)
    everyone = _Sampler(np.arange(cat.size), cat.pop)
    with_images = np.flatnonzero(cat.has_image)
    any_imaged = _Sampler(with_images, cat.pop[with_images])

    def pick(pool: _Sampler, explore: float, fallback: _Sampler) -> int:
        """From the user's liked pool, except an ``explore`` share (or an empty pool)."""
        if len(pool) and rng.random() >= explore:
            return pool.draw(rng)
        return fallback.draw(rng)

    def emit(surface: str, rows: list[tuple[str, int, str, float]]) -> None:
        actions = _assign_actions(np.array([r[3] for r in rows], dtype=float), cfg.action_shares, rng)
        times = SYNTHETIC_EPOCH + rng.integers(0, SYNTHETIC_DAYS * 86_400, size=len(rows))
        for (query, item, user_id, _), action, ts in zip(rows, actions, times):
            for c, v in zip(
                ENGAGEMENT_COLUMNS, (surface, action, query, cat.ids[item], user_id, float(ts), "synthetic")
            ):
                out[c].append(v)

    search: list[tuple[str, int, str, float]] = []
    # Bounded retries: a catalog of one-word titles can have no query that differs from a title.
    for _ in range(cfg.search_pairs * 3):
        if len(search) >= cfg.search_pairs:
            break
        user = users[rng.integers(len(users))]
        seed_item = pick(user.likes, 0.2, everyone)
        q = _search_query(cat, seed_item, rng)
        if q is not None:
            item, quality = _search_pair(cat, q, rng, cfg.facet_match_share)
            search.append((q.text, item, user.user_id, quality))
    emit("search", search)

    closeup: list[tuple[str, int, str, float]] = []
    if len(with_images) and cat.size > 1:
        for _ in range(cfg.closeup_pairs):
            user = users[rng.integers(len(users))]
            viewed = pick(user.likes_with_images, 0.2, any_imaged)
            pair = _closeup_pair(cat, viewed, rng, cfg.facet_match_share)
            if pair is not None:
                closeup.append((cat.ids[viewed], pair[0], user.user_id, pair[1]))
    emit("closeup", closeup)

    home: list[tuple[str, int, str, float]] = []
    for _ in range(cfg.home_pairs):
        user = users[rng.integers(len(users))]
        item = pick(user.likes, 0.15, user.fitting)
        home.append((user.user_id, item, user.user_id, _home_quality(cat, user, item)))
    emit("home", home)

    df = engagement_frame(out)
    return df.sort_values("timestamp", kind="stable").reset_index(drop=True)
