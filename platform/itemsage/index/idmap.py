"""String item ids <-> int64 FAISS labels.

FAISS only knows int64 labels; the catalog knows string ``item_id``s. ``IdMap`` hands out labels
from a counter that only ever grows, so a label is never reused after its item is removed: a stale
search result (or a cached label in a serving replica) can then never point at a different item.
Every check runs before anything is changed, so a rejected batch leaves the map as it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# How many offending ids an error message lists: enough to find the bug, short enough to read.
_SHOW = 5


class DuplicateIdError(ValueError):
    """An item id appears twice in one batch, or is already in the index."""


class UnknownIdError(LookupError):
    """An item id that is not in the index was asked for (remove / lookup)."""


def _preview(values: Iterable[Any]) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:_SHOW])
    return shown + (f", ... ({len(values)} in all)" if len(values) > _SHOW else "")


def check_id_batch(ids: Sequence[str]) -> list[str]:
    """The ids as a list of str, or an error naming the bad ones (non-str, empty, repeated)."""
    ids = list(ids)
    bad_type = [i for i in ids if not isinstance(i, str)]
    if bad_type:
        raise TypeError(f"item ids must be strings; got {_preview(bad_type)}")
    if any(i == "" for i in ids):
        raise ValueError(f"item ids must be non-empty strings; {ids.count('')} empty id(s) given")
    if len(set(ids)) != len(ids):
        dups = [i for i, c in Counter(ids).items() if c > 1]
        raise DuplicateIdError(f"{len(dups)} item id(s) repeated in the input: {_preview(dups)}")
    return ids


class IdMap:
    """Bidirectional map item id (str) <-> label (int64), labels never reused."""

    def __init__(self) -> None:
        self._label: dict[str, int] = {}
        # Indexed by label; None where the item was removed. A list (not a dict) keeps
        # labels -> ids a plain index per search hit, which is what the hot path needs.
        self._item: list[str | None] = []

    def __len__(self) -> int:
        return len(self._label)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._label

    @property
    def next_label(self) -> int:
        return len(self._item)

    def item_ids(self) -> list[str]:
        """Live item ids in label order (the order they were added)."""
        return [i for i in self._item if i is not None]

    def check_new(self, ids: Sequence[str]) -> list[str]:
        """Validate a batch about to be added: well-formed, unique, and not already present."""
        ids = check_id_batch(ids)
        present = [i for i in ids if i in self._label]
        if present:
            raise DuplicateIdError(
                f"{len(present)} item id(s) already in the index: {_preview(present)} "
                "(remove them first to replace their vectors)"
            )
        return ids

    def assign(self, ids: Sequence[str]) -> np.ndarray:
        """Give each new id the next free label; returns the labels as int64."""
        ids = self.check_new(ids)
        start = len(self._item)
        self._item.extend(ids)
        for offset, item_id in enumerate(ids):
            self._label[item_id] = start + offset
        return np.arange(start, start + len(ids), dtype=np.int64)

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """Labels of existing ids; every unknown id is reported at once."""
        ids = check_id_batch(ids)
        missing = [i for i in ids if i not in self._label]
        if missing:
            raise UnknownIdError(f"{len(missing)} item id(s) not in the index: {_preview(missing)}")
        return np.fromiter((self._label[i] for i in ids), dtype=np.int64, count=len(ids))

    def release(self, ids: Sequence[str]) -> np.ndarray:
        """Forget ids (after their vectors left the index); their labels stay retired."""
        ids = check_id_batch(ids)
        labels = self.lookup(ids)
        for item_id, label in zip(ids, labels.tolist()):
            del self._label[item_id]
            self._item[label] = None
        return labels

    def unassign_last(self, count: int) -> None:
        """Roll back the last ``assign`` of ``count`` ids (used when the vector add fails)."""
        for item_id in self._item[len(self._item) - count :]:
            if item_id is not None:
                del self._label[item_id]
        del self._item[len(self._item) - count :]

    def labels_to_ids(self, labels: np.ndarray) -> list[list[str]]:
        """Search labels [Q, k] -> item ids per query; FAISS's -1 ("no result") is dropped."""
        item = self._item
        n = len(item)
        # Comprehensions, not appends: this runs once per request on the serving path.
        return [[i for label in row if 0 <= label < n and (i := item[label]) is not None] for row in labels.tolist()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state. ``next_label`` is kept so labels stay unique across save/load."""
        live = [(label, i) for label, i in enumerate(self._item) if i is not None]
        return {
            "next_label": len(self._item),
            "labels": [label for label, _ in live],
            "item_ids": [i for _, i in live],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdMap:
        """Inverse of ``to_dict``, checking the data is self-consistent."""
        labels, ids, next_label = data["labels"], data["item_ids"], int(data["next_label"])
        if len(labels) != len(ids):
            raise ValueError(f"id map has {len(labels)} labels but {len(ids)} item ids")
        check_id_batch(ids)
        if labels and (min(labels) < 0 or max(labels) >= next_label or len(set(labels)) != len(labels)):
            raise ValueError("id map labels are out of range or repeated")
        out = cls()
        out._item = [None] * next_label
        for label, item_id in zip(labels, ids):
            out._item[label] = item_id
            out._label[item_id] = label
        return out

    def labels(self) -> np.ndarray:
        """Labels of the live items, in label order."""
        return np.fromiter(
            (label for label, i in enumerate(self._item) if i is not None), dtype=np.int64, count=len(self)
        )
