"""A served index that follows the change log: add, update and delete items by id while searching.

:class:`LiveIndex` wraps the served :class:`~itemsage.index.base.ItemIndex` (the base index built
by the pipeline for one model version) and applies :class:`~itemsage.index.changelog.Change`\\ s to
it in ``seq`` order: an upsert replaces the item's vector (a new label from the id map; the old one
is retired, never reused), a delete removes it. It also keeps what the catalog needs to answer for
live items (their fields and image digests) and which base items were deleted, and tells
listeners (the filter bitmaps) of every item that changes.

Index family. Live writes need an index that can delete vectors: Flat (``IDMap2,Flat``) and IVF
(``IVF{nlist},Flat``, ``IVF{nlist},PQ..``: labels stored in the inverted lists, ``remove_ids`` and
``add_with_ids`` natively; new vectors go to the nearest existing centroid, which stays good while
the live part is small next to the base catalog, and a rebuild re-trains them). HNSW graphs cannot
delete in FAISS, so a live catalog over an HNSW index is refused at start with that explanation.

Guarantees:

* **In order, idempotent.** A change at or below :attr:`LiveIndex.applied_seq` is skipped, so
  replaying the log from any earlier point (a restart, a retried step) leaves the same state.
* **No torn reads.** One batch of changes is applied under the index lock, and :meth:`search`
  takes the same lock: a search sees every change of a batch or none, never an item removed but
  not yet re-added.
* **One model version.** Every vector comes with the model version that computed it; a change
  embedded by another version than the index's is refused (:class:`EmbeddingVersionError`), so no
  index ever mixes embeddings of two models.

Every apply step is stamped (:meth:`LiveIndex.applied_steps`): the log position it brought the
index to and the wall-clock time the step's lock was released, i.e. from when a search sees it.
That is what "visible on this replica" means, measured where it happens: the live benchmark
reads it from each replica instead of inferring it from when a read happened to reach one.

Snapshots (:class:`SnapshotStore`) are index versions: the index saved with the live state and
the ``seq`` it contains; a restart loads the newest one and replays the log after it
(:func:`restore`). :func:`compact` writes one and folds the log (drops superseded changes).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from itemsage.files import StagingDir, fsync_dir, fsync_file
from itemsage.index.attributes import AttributeTable, Selection
from itemsage.index.base import ItemIndex, UnsupportedOperationError
from itemsage.index.changelog import Change, ChangeLog
from itemsage.index.idmap import IdMap
from itemsage.index.lexical import LexicalIndex, item_text

_log = logging.getLogger(__name__)

LIVE_FILE = "live.json"
INDEX_SUBDIR = "index"
SNAPSHOTS_DIR = "snapshots"
LIVE_FORMAT = 1
_SNAPSHOT_NAME = re.compile(r"^seq-(\d{12})$")
# Apply steps remembered for applied_steps(): at 20 writes/s, each its own step, over 8 minutes.
APPLIED_STEPS_KEPT = 10_000

# Re-embeds live items: payloads ({field: value, ..., "images": [bytes, ...]}) -> [N, D] float32
# under the model version of the index being built. The Serve app passes the ItemEncoder
# deployment (batched); the Python API an in-process encoder.
ItemEmbedder = Callable[[list[dict[str, Any]]], np.ndarray]


class EmbeddingVersionError(ValueError):
    """A change's embedding is missing or comes from another model version than the index's."""


class ItemListener(Protocol):
    """Told of every item change, under the index lock, right after the vector moved.

    ``label`` is the item's int64 label in the index (what FAISS ID selectors select). An update
    is a ``remove_item`` of the old label followed by a ``set_item`` with the new one. The filter
    bitmaps (per-attribute label sets) implement this.
    """

    def set_item(self, item_id: str, label: int, fields: Mapping[str, Any]) -> None: ...

    def remove_item(self, item_id: str, label: int) -> None: ...

    # Optional: ``applied()``, called once after each applied batch, still under the lock (a
    # listener that stages changes makes them visible there: the lexical index's commit).


class _AttributesFollow:
    """The index's filter bitmaps as an ``ItemListener``: a change's fields carry the catalog
    attributes (``size_type``, ``price`` ...) the bitmaps are built from."""

    def __init__(self, index: ItemIndex) -> None:
        self.index = index

    def set_item(self, item_id: str, label: int, fields: Mapping[str, Any]) -> None:
        assert self.index.attributes is not None
        self.index.attributes.set_item(label, fields)

    def remove_item(self, item_id: str, label: int) -> None:
        assert self.index.attributes is not None
        self.index.attributes.remove_item(label)


class _LexicalFollow:
    """The index's lexical (BM25) documents as an ``ItemListener``: a change's text fields are the
    item's document; the batch becomes searchable in one commit when it is applied."""

    def __init__(self, index: ItemIndex) -> None:
        self.index = index

    def set_item(self, item_id: str, label: int, fields: Mapping[str, Any]) -> None:
        assert self.index.lexical is not None
        self.index.lexical.stage(add=[(label, item_text(fields, self.index.lexical.fields))])

    def remove_item(self, item_id: str, label: int) -> None:
        assert self.index.lexical is not None
        self.index.lexical.stage(remove=[label])

    def applied(self) -> None:
        assert self.index.lexical is not None
        self.index.lexical.commit()


@dataclass(frozen=True)
class LiveItem:
    """An item written through the change log: its current fields and image digests."""

    item_id: str
    fields: dict[str, Any]
    images: tuple[str, ...]
    digest: str
    seq: int

    def to_json(self) -> dict[str, Any]:
        return {"fields": self.fields, "images": list(self.images), "digest": self.digest, "seq": self.seq}

    @classmethod
    def from_json(cls, item_id: str, data: Mapping[str, Any]) -> LiveItem:
        return cls(item_id, dict(data["fields"]), tuple(data["images"]), str(data["digest"]), int(data["seq"]))


def payload(change: Change | LiveItem, log: ChangeLog) -> dict[str, Any]:
    """What the item encoder takes for a logged item: its fields and its images' bytes."""
    return {**change.fields, "images": [log.image(d) for d in change.images]}


def check_removable(index: ItemIndex) -> None:
    if not index.removable:
        raise UnsupportedOperationError(
            f"a live catalog needs an index that can delete vectors; {index.spec!r} cannot (FAISS HNSW "
            "graphs and Refine wrappers do not support removal). Build the index with a Flat or IVF "
            "spec (index.spec='IVF{nlist},Flat' or 'Flat') to serve live writes."
        )


class LiveIndex:
    """The served index plus the live items; applies changes, answers searches, saves snapshots.

    Args:
        index: the base index (or a snapshot's), a removable one (:func:`check_removable`).
        base_version: version label of the base index the live state is relative to.
        model_version: the model version of every vector in ``index``.
        applied_seq: the last change already contained in ``index``.
        items: live items already in ``index`` (a snapshot's).
        deleted: base items already deleted from ``index``.
    """

    def __init__(
        self,
        index: ItemIndex,
        base_version: str,
        model_version: str,
        applied_seq: int = 0,
        items: Mapping[str, LiveItem] | None = None,
        deleted: set[str] | None = None,
    ) -> None:
        check_removable(index)
        self.index = index
        self.base_version = base_version
        self.model_version = str(model_version)
        self._applied = int(applied_seq)
        self._items: dict[str, LiveItem] = dict(items or {})
        self._deleted: set[str] = set(deleted or ())
        self._vectors: dict[str, np.ndarray] = {}
        self._listeners: list[ItemListener] = []
        if index.attributes is not None:
            # The filter bitmaps follow every write, so a filtered search sees live items too. No
            # replay: a snapshot saves its attributes with the index, and a base index plus the log
            # re-applies every change through ``apply``.
            self._listeners.append(_AttributesFollow(index))
        if index.lexical is not None:
            # The same for the lexical index: live items are found by their words too.
            self._listeners.append(_LexicalFollow(index))
        # Serialises applies with searches (see the module docstring). Searches from the event
        # loop and from worker threads both take it.
        self._lock = threading.RLock()
        # (applied seq, wall-clock time it became searchable) per apply step, oldest first.
        self._steps: deque[tuple[int, float]] = deque(maxlen=APPLIED_STEPS_KEPT)
        self._steps_lock = threading.Lock()  # not the index lock: reading them never waits for an apply

    # ---- what a search sees (ItemIndex's read surface) -------------------------------------------
    def search(self, queries: Any, k: int, **kwargs: Any) -> tuple[list[list[str]], np.ndarray]:
        """``ItemIndex.search`` under the index lock (keyword arguments passed through)."""
        with self._lock:
            return self.index.search(queries, k, **kwargs)

    @property
    def attributes(self) -> AttributeTable | None:
        return self.index.attributes

    @property
    def lexical(self) -> LexicalIndex | None:
        return self.index.lexical

    def select(self, filters: Any) -> Selection | None:
        """``ItemIndex.select`` under the index lock: the selection matches the labels now applied."""
        with self._lock:
            return self.index.select(filters)

    @contextmanager
    def reading(self) -> Iterator[ItemIndex]:
        """The index, held still: for a reader that needs several calls to agree (a filtered
        search that builds a selector from labels, then searches)."""
        with self._lock:
            yield self.index

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.index.dim

    @property
    def spec(self) -> str:
        return self.index.spec

    @property
    def device(self) -> str:
        return self.index.device

    @property
    def idmap(self) -> IdMap:
        return self.index.idmap

    @property
    def model_name(self) -> str | None:
        return self.index.model_name

    @property
    def search_params(self) -> dict[str, float]:
        return self.index.search_params

    @property
    def removable(self) -> bool:
        return True

    # ---- live state ----------------------------------------------------------------------------
    @property
    def applied_seq(self) -> int:
        """The last change of the log this index contains."""
        return self._applied

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.index.idmap

    def applied_steps(self, after: int = 0) -> list[tuple[int, float]]:
        """``(seq, applied_at)`` of each remembered apply step that reached a seq above ``after``:
        from ``applied_at`` (``time.time()``, taken once the step's lock was released) every
        search of this index sees every change up to ``seq``. The newest
        :data:`APPLIED_STEPS_KEPT` steps are kept."""
        with self._steps_lock:
            steps = list(self._steps)
        return [s for s in steps if s[0] > after]

    def live_item(self, item_id: str) -> LiveItem | None:
        """The item's live record when it was written through the log, else None."""
        return self._items.get(item_id)

    def is_deleted(self, item_id: str) -> bool:
        """Whether a delete in the log removed this item (a base item stays deleted until upserted)."""
        return item_id in self._deleted

    def live_items(self) -> dict[str, LiveItem]:
        with self._lock:
            return dict(self._items)

    def deleted_ids(self) -> set[str]:
        with self._lock:
            return set(self._deleted)

    def vector(self, item_id: str) -> np.ndarray | None:
        """The embedding of a live item applied since this process loaded the index (else None:
        a base item's vector is in the index only)."""
        return self._vectors.get(item_id)

    def add_listener(self, listener: ItemListener, replay: bool = True) -> None:
        """Tell ``listener`` of every later change; ``replay``: first of every live item now in the
        index (e.g. after a snapshot load, where base structures know only the base catalog)."""
        with self._lock:
            if replay:
                for item_id, item in self._items.items():
                    if item_id in self.index.idmap:
                        listener.set_item(item_id, int(self.index.idmap.lookup([item_id])[0]), item.fields)
            self._listeners.append(listener)

    # ---- applying changes ------------------------------------------------------------------------
    def apply(self, changes: Sequence[Change], upto: int | None = None) -> int:
        """Apply ``changes`` (in ``seq`` order) as one step; returns how many were new.

        Changes at or below :attr:`applied_seq` are skipped. Within the step, only each item's
        last change matters (the log is last-write-wins): its old vector (if any) is removed and
        the new one added, in one ``remove`` and one ``add`` call for the whole step. ``upto``:
        the log position the step brings the index to when it is beyond the last change given
        (a replay of :meth:`ChangeLog.latest` covers every change up to its ``upto``).

        Raises :class:`EmbeddingVersionError` (and changes nothing) when an upsert has no
        embedding under :attr:`model_version`.
        """
        fresh = [c for c in changes if c.seq > self._applied]
        for a, b in zip(fresh, fresh[1:]):
            if b.seq <= a.seq:
                raise ValueError(f"changes must come in seq order; got {a.seq} then {b.seq}")
        last: dict[str, Change] = {}
        for c in fresh:
            last.pop(c.item_id, None)  # keep the dict in the order of each item's last change
            last[c.item_id] = c
        bad = [
            c
            for c in last.values()
            if c.op == "upsert" and (c.embedding is None or c.model_version != self.model_version)
        ]
        if bad:
            got = bad[0].model_version or "none"
            raise EmbeddingVersionError(
                f"{len(bad)} change(s) (e.g. seq {bad[0].seq}, item {bad[0].item_id!r}) carry no embedding "
                f"from model version {self.model_version} (got {got}); embed them with this model first"
            )
        ups = [c for c in last.values() if c.op == "upsert"]
        if ups:
            vecs = np.stack([np.asarray(c.embedding, np.float32) for c in ups])
            if vecs.shape[1] != self.dim:
                raise EmbeddingVersionError(
                    f"embeddings of dimension {vecs.shape[1]} cannot go into an index of dimension {self.dim}"
                )
        with self._lock:
            idmap = self.index.idmap
            present = [i for i in last if i in idmap]
            old_labels = idmap.lookup(present) if present else np.empty(0, np.int64)
            if present:
                self.index.remove(present)
            for item_id, label in zip(present, old_labels.tolist()):
                for listener in self._listeners:
                    listener.remove_item(item_id, label)
            if ups:
                ids = [c.item_id for c in ups]
                self.index.add(ids, vecs)
                labels = idmap.lookup(ids)
                for c, label, vec in zip(ups, labels.tolist(), vecs):
                    self._items[c.item_id] = LiveItem(c.item_id, dict(c.fields), tuple(c.images), c.digest, c.seq)
                    self._deleted.discard(c.item_id)
                    self._vectors[c.item_id] = vec
                    for listener in self._listeners:
                        listener.set_item(c.item_id, label, c.fields)
            for listener in self._listeners:  # end of the batch: e.g. one lexical commit for all of it
                done = getattr(listener, "applied", None)
                if done is not None:
                    done()
            for c in last.values():
                if c.op == "delete":
                    self._items.pop(c.item_id, None)
                    self._vectors.pop(c.item_id, None)
                    self._deleted.add(c.item_id)
            before = self._applied
            top = max([self._applied, *(c.seq for c in fresh), *([upto] if upto is not None else [])])
            self._applied = int(top)
        if self._applied > before:  # stamped after the lock is released: searches see it from now
            with self._steps_lock:
                self._steps.append((self._applied, time.time()))
        return len(fresh)

    # ---- snapshots -------------------------------------------------------------------------------
    def _frozen(self) -> tuple[ItemIndex, dict[str, Any]]:
        """A copy of the index and the live state at one instant (under the lock), so saving it
        (seconds for a large index) does not hold searches up."""
        with self._lock:
            state = {
                "format": LIVE_FORMAT,
                "applied_seq": self._applied,
                "base_version": self.base_version,
                "model_version": self.model_version,
                "items": {i: it.to_json() for i, it in self._items.items()},
                "deleted": sorted(self._deleted),
            }
            return _copy_index(self.index), state

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write a snapshot to ``directory`` atomically: ``index/`` (a saved index, loadable by
        ``load_index``) and ``live.json`` (the seq it contains, live items, deleted ids)."""
        index, state = self._frozen()
        stage = StagingDir.beside(directory)
        try:
            index.save(Path(stage.staging) / INDEX_SUBDIR)
            live_path = Path(stage.staging) / LIVE_FILE
            live_path.write_text(json.dumps(state, sort_keys=True))
            fsync_file(live_path)
            fsync_dir(stage.staging)
            stage.commit()
        except BaseException:
            stage.discard()
            raise
        return Path(stage.final)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], use_gpu: str | bool = False) -> LiveIndex:
        """A snapshot written by :meth:`save` (its index checked as ``load_index`` checks)."""
        from itemsage.index.faiss_index import load_index
        from itemsage.index.storage import CorruptIndexError

        directory = Path(directory)
        try:
            state = json.loads((directory / LIVE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CorruptIndexError(f"snapshot {directory} has no readable {LIVE_FILE}: {e}") from e
        if state.get("format") != LIVE_FORMAT:
            raise CorruptIndexError(f"snapshot {directory} has format {state.get('format')!r}; this code reads 1")
        index = load_index(directory / INDEX_SUBDIR, expected_model_version=state["model_version"], use_gpu=use_gpu)
        items = {i: LiveItem.from_json(i, d) for i, d in state["items"].items()}
        return cls(
            index, state["base_version"], state["model_version"], state["applied_seq"], items, set(state["deleted"])
        )


def _copy_index(index: ItemIndex) -> ItemIndex:
    """An independent copy of a FAISS index (its SWIG clone and a copied id map); other index
    types are saved as they are (the caller holds the lock for them)."""
    from itemsage.index.faiss_index import FaissIndex

    if not isinstance(index, FaissIndex):
        return index
    import faiss

    copy = FaissIndex(
        faiss.clone_index(index.cpu_index()), index.spec, index.dim, IdMap.from_dict(index.idmap.to_dict())
    )
    # The filter bitmaps too: a snapshot without them would come back unable to filter.
    copy.attributes = index.attributes.copy() if index.attributes is not None else None
    if index.lexical is not None:
        copy.attach_lexical(index.lexical.copy())
    copy.model_name, copy.model_version, copy.created_at, copy.sweep = (
        index.model_name,
        index.model_version,
        index.created_at,
        index.sweep,
    )
    return copy


# ------------------------------------------------------------------------------------ snapshots


class SnapshotStore:
    """Snapshots of live indexes under ``<root>/snapshots/<base version>/seq-<seq>/``.

    Keyed by the base index version: a snapshot only extends the base it was made from (a rebuilt
    base index, or another model's, starts from its own base and the log).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _dir(self, base_version: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", base_version)
        return self.root / SNAPSHOTS_DIR / safe

    def list(self, base_version: str) -> list[tuple[int, Path]]:
        """``(seq, directory)`` of every complete snapshot of ``base_version``, oldest first."""
        d = self._dir(base_version)
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            m = _SNAPSHOT_NAME.match(p.name)
            if m and (p / LIVE_FILE).is_file():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def latest(self, base_version: str) -> tuple[int, Path] | None:
        found = self.list(base_version)
        return found[-1] if found else None

    @contextmanager
    def _locked(self, base_version: str) -> Iterator[None]:
        """One snapshot writer per base version at a time (replicas on one machine share it)."""
        d = self._dir(base_version)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def write(self, live: LiveIndex, keep: int = 2) -> tuple[int, Path]:
        """Snapshot ``live`` at its applied seq (nothing new when one exists for that seq); keep
        the newest ``keep`` snapshots of its base version. Returns ``(seq, directory)``."""
        with self._locked(live.base_version):
            seq = live.applied_seq
            target = self._dir(live.base_version) / f"seq-{seq:012d}"
            if not (target / LIVE_FILE).is_file():
                live.save(target)
            for _, old in self.list(live.base_version)[: -max(1, keep)]:
                shutil.rmtree(old, ignore_errors=True)
            return seq, target


# ------------------------------------------------------------------------------ restore, catch up


def embed_missing(
    changes: Sequence[Change], log: ChangeLog, model_version: str, embed: ItemEmbedder | None
) -> list[Change]:
    """``changes`` with every upsert carrying an embedding under ``model_version``: the missing
    ones are embedded (``embed``) from their logged fields and images and stored in the log, so
    other replicas and later restarts reuse them."""
    missing = [c for c in changes if c.op == "upsert" and (c.embedding is None or c.model_version != model_version)]
    if not missing:
        return list(changes)
    if embed is None:
        raise EmbeddingVersionError(
            f"{len(missing)} logged item(s) have no embedding from model version {model_version} and no "
            "item encoder was given to embed them"
        )
    vecs = np.asarray(embed([payload(c, log) for c in missing]), np.float32)
    if vecs.shape[0] != len(missing):
        raise RuntimeError(f"the item encoder returned {vecs.shape[0]} embeddings for {len(missing)} items")
    log.put_embeddings(model_version, {c.seq: v for c, v in zip(missing, vecs)})
    done = {c.seq: c.with_embedding(v, model_version) for c, v in zip(missing, vecs)}
    return [done.get(c.seq, c) for c in changes]


def catch_up(live: LiveIndex, log: ChangeLog, embed: ItemEmbedder | None = None, batch: int = 512) -> int:
    """Apply every change after ``live.applied_seq``; returns how many were applied."""
    total = 0
    while True:
        changes = log.read_since(live.applied_seq, live.model_version, limit=batch)
        if not changes:
            return total
        total += live.apply(embed_missing(changes, log, live.model_version, embed))


def restore(
    base: ItemIndex,
    base_version: str,
    model_version: str,
    log: ChangeLog,
    store: SnapshotStore | None = None,
    embed: ItemEmbedder | None = None,
    use_gpu: str | bool = False,
    batch: int = 512,
) -> LiveIndex:
    """The live index a replica serves: the newest snapshot of ``base_version`` (else ``base``),
    then every later change of the log.

    Without a usable snapshot (first start, or a new model version whose base index was just
    built), the log's net state (:meth:`ChangeLog.latest`) is applied to ``base``: every live item
    once, re-embedded with this model where the log has no vector for it yet (a model swap), then
    whatever was appended meanwhile.
    """
    live: LiveIndex | None = None
    found = store.latest(base_version) if store is not None else None
    if found is not None:
        seq, path = found
        try:
            candidate = LiveIndex.load(path, use_gpu=use_gpu)
            if candidate.model_version != str(model_version):
                _log.warning(
                    "snapshot %s holds model %s, not %s: skipped", path, candidate.model_version, model_version
                )
            elif seq > log.head():
                # A snapshot ahead of the log means the log was replaced (another database).
                _log.warning("snapshot %s is at seq %d, past the log's head: skipped", path, seq)
            else:
                live = candidate
        except (OSError, ValueError) as e:
            _log.warning("snapshot %s unusable (%s); starting from the base index", path, e)
    if live is None:
        live = LiveIndex(base, base_version, model_version)
        head = log.head()
        net = log.latest(upto=head, model_version=str(model_version))
        for chunk in _chunks(net, batch):
            live.apply(embed_missing(chunk, log, live.model_version, embed))
        live.apply([], upto=head)
    catch_up(live, log, embed, batch)
    return live


def compact(live: LiveIndex, log: ChangeLog, store: SnapshotStore, keep: int = 2) -> tuple[int, Path]:
    """Fold the log into a new index version: snapshot ``live`` at its applied seq, then drop the
    log's changes that a later change of the same item supersedes up to that seq."""
    seq, path = store.write(live, keep)
    removed = log.prune(seq)
    _log.info("compacted at seq %d into %s (%d superseded changes dropped)", seq, path, removed)
    return seq, path


def _chunks(items: Sequence[Change], size: int) -> Iterator[list[Change]]:
    for start in range(0, len(items), max(1, size)):
        yield list(items[start : start + size])
