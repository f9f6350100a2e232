"""What a user asks of the embeddings, one probe per kind of query, each over held-out pairs.

A probe is a surface's pairs seen through one kind of query:

* ``search``: a text query -> items (the search tower);
* ``closeup``: the query item's photo -> items (the closeup tower reads only its first image
  feature), on pairs whose query item has an image;
* ``item2item``: the closeup pairs again, the query item embedded by the item tower like every
  candidate (what ``/similar`` does), so text-only catalogs get an item -> item figure too;
* ``home``: a user's history -> items (the home tower).

Rows are reported as ``<probe>/<action>``, ``<probe>/all`` and cohort rows (``<probe>/unseen``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from itemsage.eval.validation import ValSet


@dataclass(frozen=True)
class Probe:
    name: str
    surface: str  # the pairs' surface
    query: str  # text | image | item | user: what a baseline gets as the query
    description: str


PROBES: tuple[Probe, ...] = (
    Probe("search", "search", "text", "text query -> items"),
    Probe("closeup", "closeup", "image", "query item's image -> items (closeup tower)"),
    Probe("item2item", "closeup", "item", "item -> item (item tower on both sides)"),
    Probe("home", "home", "user", "user history -> items"),
)
PROBE_NAMES: tuple[str, ...] = tuple(p.name for p in PROBES)


def probe_pairs(val: ValSet, probe: Probe, has_image: np.ndarray) -> ValSet | None:
    """``val``'s pairs that ``probe`` asks about, tasks renamed ``<probe>/<action>`` (None if none).

    ``has_image[item_idx]``: whether an item has at least one image; the closeup (image) probe
    keeps only pairs whose query item has one.
    """
    mask = val.surfaces == probe.surface
    if probe.query == "image":
        mask &= np.asarray(has_image, dtype=bool)[val.query_key.clip(0, len(has_image) - 1)]
    if not mask.any():
        return None
    rows = np.flatnonzero(mask)
    r = torch.from_numpy(rows)
    actions = [t.partition("/")[2] for t in val.tasks[rows]]
    return ValSet(
        surfaces=val.surfaces[rows],
        tasks=np.asarray([f"{probe.name}/{a}" for a in actions]),
        query_key=val.query_key[rows],
        candidates=val.candidates,
        target=val.target[r],
        exclude=val.exclude[r],
        cohorts={name: np.asarray(m, dtype=bool)[rows] for name, m in val.cohorts.items()},
    )
