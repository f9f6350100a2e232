"""Real engagement from Amazon: co-purchase / co-view links and 5-core reviews.

Two sources, both turned into rows of the engagement frame (``ENGAGEMENT_COLUMNS``) that the
splits and the pair tables already understand:

- ``link_pairs``: every ``also_buy`` / ``also_view`` link a → b listed by a catalog product (the
  catalog read keeps them, ``CatalogReadResult.links``) is one **closeup** pair: query item a (the
  product viewed), engaged item b, action ``also_buy`` or ``also_view`` (``LINK_ACTIONS``), source
  "amazon". The two actions are two tasks (``closeup/also_buy``, ``closeup/also_view``) that the
  trainer mixes in every batch by ``train.task_quotas`` (equal shares by default), as the paper
  mixes actions. A link is kept in the direction the file lists it; a pair listed both ways gives
  two pairs, one per direction, and a link repeated in one list counts once.
- ``read_reviews``: an optional 5-core reviews file (JSON lines, gzip or plain, with
  ``reviewerID``, ``asin``, ``unixReviewTime``) gives **home** pairs: query = user = reviewerID,
  engaged item = asin, action ``review``, the review time as timestamp. Each user's (train-only)
  history is built from these by the usual ``build_user_histories``.

Links and reviews pointing at asins that are not in the catalog are dropped. Most links do (the
public lists name products of every category; a file holds one), so there is **one reject per
action** (reason ``link_outside_catalog`` / ``review_outside_catalog``, stage "engagement") whose
detail gives the count and a few example asins, and the exact counts go to the preprocessing
summary (``engagement_counts``): one line per dropped link would be millions of lines for a large
category and tell nothing more. A reviews line that cannot be read is one ``malformed_row`` reject
(``missing_id`` without asin, ``missing_user`` without reviewerID); an unreadable time keeps the
review with an unknown time (``bad_timestamp``); the same user reviewing the same product twice
counts once (the first line).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from itemsage.data.amazon import iter_lines, parse_record
from itemsage.data.engagement import ENGAGEMENT_COLUMNS, EngagementError, engagement_frame
from itemsage.data.rejects import Reject, fix_utf8

STAGE = "engagement"
LINK_SURFACE = "closeup"
LINK_ACTIONS: tuple[str, ...] = ("also_buy", "also_view")
LINK_SOURCE = "amazon"
REVIEW_SURFACE = "home"
REVIEW_ACTION = "review"
REVIEW_SOURCE = "amazon_reviews"
# Example asins named in an aggregated reject.
EXAMPLES = 5


def _outside_reject(reason: str, what: str, outside: pd.Series, total: int) -> Reject:
    examples = ", ".join(sorted(set(outside.astype(str)))[:EXAMPLES])
    detail = (
        f"{what}: {len(outside):,} of {total:,} point to {outside.nunique():,} asins not in the catalog; "
        f"dropped (e.g. {examples})"
    )
    return Reject(STAGE, None, reason, detail)


def link_pairs(links: pd.DataFrame, item_ids: Iterable[str]) -> tuple[pd.DataFrame, list[Reject], dict[str, int]]:
    """Closeup pairs from catalog links (columns ``item_id``, ``action``, ``linked_id``).

    Returns the pairs, one aggregated reject per action with links outside the catalog, and
    counts ``{"<action>_links": n, "<action>_outside_catalog": m, "<action>_pairs": k}``.
    """
    known = pd.Index(pd.unique(pd.Series(list(item_ids), dtype=str)))
    df = links[["item_id", "action", "linked_id"]].astype(str)
    df = df[df["item_id"] != df["linked_id"]].drop_duplicates(ignore_index=True)
    inside = df["linked_id"].isin(known).to_numpy() & df["item_id"].isin(known).to_numpy()
    rejects: list[Reject] = []
    counts: dict[str, int] = {}
    for action in sorted(set(df["action"]) | set(LINK_ACTIONS)):
        mine = (df["action"] == action).to_numpy()
        outside = df.loc[mine & ~inside, "linked_id"]
        counts[f"{action}_links"] = int(mine.sum())
        counts[f"{action}_outside_catalog"] = len(outside)
        counts[f"{action}_pairs"] = int((mine & inside).sum())
        if len(outside):
            rejects.append(_outside_reject("link_outside_catalog", f"{action} links", outside, int(mine.sum())))
    kept = df[inside]
    n = len(kept)
    pairs = engagement_frame(
        {
            "surface": [LINK_SURFACE] * n,
            "action": kept["action"].to_numpy(),
            "query": kept["item_id"].to_numpy(),
            "item_id": kept["linked_id"].to_numpy(),
            "user_id": [""] * n,
            "timestamp": np.full(n, math.nan),
            "source": [LINK_SOURCE] * n,
        }
    )
    return pairs, rejects, counts


def _review_time(value: Any) -> float | None:
    """``unixReviewTime`` as seconds; None when present but unreadable, NaN when absent."""
    if value is None or value == "":
        return math.nan
    if isinstance(value, bool):
        return None
    try:
        ts = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return ts if math.isfinite(ts) else None


def _review_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and ".json" in p.name.lower())
        if files:
            return files
        raise EngagementError(f"reviews {path}: the directory holds no .json[.gz] / .jsonl files")
    raise EngagementError(f"reviews {path} does not exist")


def read_reviews(path: str | Path, item_ids: Iterable[str]) -> tuple[pd.DataFrame, list[Reject], dict[str, int]]:
    """Home pairs from a 5-core reviews file (or a directory of them); see the module docstring.

    Returns the pairs, the rejects and counts ``{"reviews": n, "review_outside_catalog": m,
    "review_pairs": k}``.
    """
    known = set(item_ids)
    rejects: list[Reject] = []
    users: list[str] = []
    asins: list[str] = []
    times: list[float] = []
    seen: set[tuple[str, str]] = set()
    root = Path(path)
    for file in _review_files(root):
        n = 0
        try:
            for n, raw in iter_lines(file):
                text = raw.decode("utf-8", errors="surrogateescape")
                if not text.strip():
                    continue
                where = f"{file.name} line {n}"
                record, error = parse_record(text)
                if record is None:
                    rejects.append(Reject(STAGE, None, "malformed_row", f"{where}: {error}"))
                    continue
                asin = fix_utf8(str(record.get("asin") or "").strip())[0]
                user = fix_utf8(str(record.get("reviewerID") or "").strip())[0]
                if not asin:
                    rejects.append(Reject(STAGE, None, "missing_id", f"{where}: empty or absent asin"))
                    continue
                if not user:
                    rejects.append(Reject(STAGE, asin, "missing_user", f"{where}: empty or absent reviewerID"))
                    continue
                ts = _review_time(record.get("unixReviewTime"))
                if ts is None:
                    rejects.append(
                        Reject(
                            STAGE,
                            asin,
                            "bad_timestamp",
                            f"{where}: unixReviewTime {record.get('unixReviewTime')!r} unreadable; kept as unknown",
                        )
                    )
                    ts = math.nan
                if (user, asin) in seen:
                    continue
                seen.add((user, asin))
                users.append(user)
                asins.append(asin)
                times.append(ts)
        except (OSError, EOFError, zlib.error) as e:
            rejects.append(
                Reject(STAGE, None, "malformed_row", f"{file.name}: unreadable after line {n} ({e}); lines before kept")
            )
    reviews = pd.DataFrame({"user": users, "asin": asins, "ts": np.asarray(times, dtype=np.float64)})
    inside = reviews["asin"].isin(known).to_numpy()
    outside = reviews.loc[~inside, "asin"]
    if len(outside):
        rejects.append(_outside_reject("review_outside_catalog", "reviews", outside, len(reviews)))
    kept = reviews[inside]
    k = len(kept)
    pairs = engagement_frame(
        {
            "surface": [REVIEW_SURFACE] * k,
            "action": [REVIEW_ACTION] * k,
            "query": kept["user"].to_numpy(),
            "item_id": kept["asin"].to_numpy(),
            "user_id": kept["user"].to_numpy(),
            "timestamp": kept["ts"].to_numpy(),
            "source": [REVIEW_SOURCE] * k,
        }
    )
    counts = {"reviews": len(reviews), "review_outside_catalog": len(outside), "review_pairs": k}
    return pairs, rejects, counts


def amazon_engagements(
    links: pd.DataFrame | None, items: pd.DataFrame, reviews: str = ""
) -> tuple[pd.DataFrame, list[Reject], dict[str, int]]:
    """Every Amazon pair: catalog links (closeup), plus reviews (home) when a file is given."""
    item_ids = items["item_id"].astype(str).tolist()
    empty = pd.DataFrame({c: pd.Series(dtype="float64" if c == "timestamp" else str) for c in ENGAGEMENT_COLUMNS})
    frames, rejects, counts = [], [], Counter[str]()
    if links is not None:
        pairs, dropped, n = link_pairs(links, item_ids)
        frames.append(pairs)
        rejects += dropped
        counts.update(n)
    if reviews:
        pairs, dropped, n = read_reviews(reviews, item_ids)
        frames.append(pairs)
        rejects += dropped
        counts.update(n)
    out = pd.concat(frames, ignore_index=True) if frames else empty
    return out, rejects, dict(sorted(counts.items()))
