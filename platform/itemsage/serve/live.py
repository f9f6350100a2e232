"""Live catalog writes in the serving core: the write flows, each replica's log tail, model swaps.

One :class:`LiveCatalogService` per :class:`~itemsage.serve.service.Retriever` (so per Retriever
replica). With ``serve.live.enabled``:

* **Writes** (:meth:`LiveCatalogService.upsert_items`, :meth:`~LiveCatalogService.delete_items`):
  checked (4xx on bad input, nothing stored), embedded by the item encoder with the model of the
  state the request pinned (the ItemEncoder deployment batches concurrent writes as it batches
  queries), then appended to the durable change log; the answer (the HTTP 200) comes after the
  append returned, i.e. after the write is on disk.
* **Every replica follows the log** (:meth:`~LiveCatalogService.follow`): a thread of its own
  reads the changes after its index's applied seq every ``poll_interval_s`` (at once after a
  write of its own) and applies them to its :class:`~itemsage.index.live.LiveIndex` under the
  index lock, so a search never sees half a batch. A thread, not a task on the replica's event
  loop: under search load the loop runs batches back to back, and a timer on it fires late; the
  apply itself is a few FAISS calls that release the GIL. Snapshots (compactions) run in another
  thread, so saving a large index never holds the tail up.
* **Start and version swaps** (:meth:`~LiveCatalogService.attach`): the newest snapshot of the
  base index plus the log after it; for a new model version the base index is that model's and
  every live item is re-embedded with it (vectors stored in the log for the other replicas) before
  the state is published, and writes that arrive meanwhile are replayed, re-embedded too.

The log lives in ``serve.live.dir`` (default: ``live/`` beside the served index directory, so
index versions built side by side share it), or in PostgreSQL (``serve.live.changelog_uri``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from itemsage.config import TEXT_FIELDS, LiveConfig, ServeConfig
from itemsage.files import write_atomic
from itemsage.index.changelog import ChangeLog, ItemWrite, item_digest, open_changelog
from itemsage.index.live import LiveIndex, LiveItem, SnapshotStore, catch_up, compact, restore
from itemsage.serve.bundle import Catalog, CatalogItem, absolute_path
from itemsage.serve.errors import BadRequestError, ItemNotFoundError, NotReadyError, PayloadTooLargeError
from itemsage.serve.uploads import read_allowed_file

if TYPE_CHECKING:
    from itemsage.serve.core import ModelSpec, RetrievalState

log = logging.getLogger("ray.serve")

IMAGES_DIR = "images"
# Names of extra (filterable) attributes: short identifiers, so they are safe as JSON keys,
# facet names and SQL-free filter names.
_ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Threads that may wait in ChangeLog.append at once (per replica). Concurrent appends are group
# committed, so they mostly wait for one commit; on the default executor (a few threads on a
# small machine) a burst of writes would be cut into many small commits and would hold up
# every other to_thread call of the replica meanwhile.
APPEND_THREADS = 64

# Embeds one item payload with one pinned model version: ``Encoding.item``.
ItemEncode = Callable[["ModelSpec", dict[str, Any]], Awaitable[np.ndarray]]


# ---------------------------------------------------------------------------------- catalog view


class LiveCatalog(Catalog):
    """The base catalog with the live items over it: upserted items answer with their logged
    fields and images, deleted ones are unknown (404)."""

    def __init__(self, base: Catalog, live: LiveIndex, log: ChangeLog, images_dir: Path) -> None:
        super().__init__([])
        self.base = base
        self.live = live
        self.log = log
        self.images_dir = images_dir

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, str) or self.live.is_deleted(item_id):
            return False
        return self.live.live_item(item_id) is not None or item_id in self.base

    def __len__(self) -> int:
        return self.live.ntotal

    def get(self, item_id: str) -> CatalogItem:
        item = self.live.live_item(item_id)
        if item is not None:
            return catalog_item(item, self.images_dir)
        if self.live.is_deleted(item_id):
            raise ItemNotFoundError(f"unknown item id {item_id!r}")
        return self.base.get(item_id)

    def image_path(self, item_id: str, position: int = 0) -> str:
        item = self.live.live_item(item_id)
        if item is None:
            self.get(item_id)  # 404 for a deleted item
            return self.base.image_path(item_id, position)
        if not 0 <= position < len(item.images):
            raise ItemNotFoundError(f"item {item_id!r} has no image {position}")
        return str(self._materialize(item.images[position]))

    def _materialize(self, digest: str) -> Path:
        """The image's file in this replica's image cache, written from the log on first use."""
        path = self.images_dir / digest
        if not path.is_file():
            try:
                data = self.log.image(digest)
            except KeyError:
                raise ItemNotFoundError("the item's image is no longer in the change log") from None
            write_atomic(path, data)
        return path

    def ids(self) -> list[str]:
        return list(self.live.idmap.item_ids())


def catalog_item(item: LiveItem, images_dir: Path) -> CatalogItem:
    fields = {f: str(item.fields.get(f) or "") for f in TEXT_FIELDS if f in item.fields}
    return CatalogItem(item.item_id, tuple(str(images_dir / d) for d in item.images), fields)


# ---------------------------------------------------------------------------------- validation


def check_item(item: Mapping[str, Any], cfg: ServeConfig) -> tuple[str, dict[str, Any], list[bytes], list[str]]:
    """``(item_id, fields, image bytes, server-local image paths)`` of one write, or a 4xx.

    ``item``: ``item_id``, ``title`` (required), any other text field of the catalog, filterable
    attributes (string, number, boolean or list of strings), ``images`` (decoded bytes) and
    ``image_paths`` (files under ``serve.allowed_image_roots``).
    """
    if not isinstance(item, Mapping):
        raise BadRequestError("an item must be a JSON object")
    item_id = item.get("item_id")
    if not isinstance(item_id, str) or not item_id.strip():
        raise BadRequestError("item_id is required (a non-empty string)")
    if len(item_id) > cfg.max_item_id_chars or _CONTROL.search(item_id):
        raise BadRequestError(f"item_id must be at most {cfg.max_item_id_chars} printable characters")
    title = item.get("title")
    if not isinstance(title, str) or not title.strip():
        raise BadRequestError(f"item {item_id!r}: title is required (a non-empty string)")
    fields: dict[str, Any] = {}
    for key, value in item.items():
        if key in ("item_id", "images", "image_paths") or value is None:
            continue
        if key in TEXT_FIELDS:
            if not isinstance(value, str):
                raise BadRequestError(f"item {item_id!r}: {key} must be a string")
            if len(value) > cfg.max_text_field_chars:
                raise BadRequestError(f"item {item_id!r}: {key} is longer than {cfg.max_text_field_chars} characters")
            fields[key] = value
        elif not _ATTRIBUTE.match(str(key)):
            raise BadRequestError(f"item {item_id!r}: {key!r} is not a valid attribute name")
        elif isinstance(value, (bool, str)):
            fields[key] = value
        elif isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise BadRequestError(f"item {item_id!r}: {key} must be a finite number")
            fields[key] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            fields[key] = list(value)
        else:
            raise BadRequestError(f"item {item_id!r}: {key} must be a string, a number, a boolean or a list of strings")
    images = [bytes(b) for b in item.get("images") or []]
    paths = [str(p) for p in item.get("image_paths") or []]
    if len(images) + len(paths) > cfg.max_item_images:
        raise BadRequestError(f"item {item_id!r}: at most {cfg.max_item_images} images")
    for b in images:
        if len(b) > cfg.max_upload_bytes:
            raise PayloadTooLargeError(f"item {item_id!r}: an image is over the {cfg.max_upload_bytes}-byte limit")
        if not b:
            raise BadRequestError(f"item {item_id!r}: an image is empty")
    return item_id, fields, images, paths


# --------------------------------------------------------------------------------------- service


def live_dir(cfg: LiveConfig, index_uri: str, base_dir: str | None = None) -> Path:
    """Where snapshots and the default SQLite log are: ``serve.live.dir`` (relative to
    ``base_dir``, where the app was started), else ``live/`` beside the index directory
    (versions built side by side, e.g. ``artifacts/index_v1``/``_v2``, share it)."""
    if cfg.dir:
        return Path(absolute_path(cfg.dir, base_dir))
    if "://" in index_uri or index_uri.startswith("models:/"):
        raise ValueError(
            f"serve.live.dir must be set: the index {index_uri!r} is not a local directory to put the change log beside"
        )
    return Path(index_uri).expanduser().absolute().parent / "live"


def changelog_uri(uri: str, base_dir: str | None = None) -> str:
    """``serve.live.changelog_uri`` as the log opener takes it: ``env:NAME`` is read from the
    environment (a PostgreSQL password stays out of the config file: a Kubernetes secret sets
    the variable), and a relative ``sqlite:///`` path is made absolute against ``base_dir``."""
    if uri.startswith("env:"):
        name = uri[len("env:") :]
        if not os.environ.get(name):
            raise ValueError(f"serve.live.changelog_uri names ${name}, which is not set")
        uri = os.environ[name]
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + absolute_path(uri[len("sqlite:///") :], base_dir)
    return uri


class LiveCatalogService:
    """The live catalog of one Retriever: its log, snapshots, tail thread and write flows."""

    def __init__(self, cfg: ServeConfig, encode: ItemEncode, base_dir: str | None = None) -> None:
        self.cfg = cfg
        self.base_dir = base_dir
        self.live_cfg = cfg.live
        self.encode = encode
        self.log: ChangeLog | None = None
        self.store: SnapshotStore | None = None
        self.images_dir: Path | None = None
        self._root: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # where the item encoder is called from
        self._wake = threading.Event()
        self._tail: threading.Thread | None = None
        self._compaction: threading.Thread | None = None
        self._last_snapshot: dict[str, int] = {}
        self._apply_lock = threading.Lock()  # the tail thread and a write's read-your-writes catch-up
        self._appends = ThreadPoolExecutor(APPEND_THREADS, thread_name_prefix="live-append")
        self._closing = False

    def _open(self, index_uri: str) -> ChangeLog:
        if self.log is None:
            root = live_dir(self.live_cfg, index_uri, self.base_dir)
            self.log = open_changelog(changelog_uri(self.live_cfg.changelog_uri, self.base_dir), root)
            self.store = SnapshotStore(root)
            self.images_dir = root / IMAGES_DIR
            self.images_dir.mkdir(parents=True, exist_ok=True)
            self._root = root
        return self.log

    def _embedder(
        self, spec: ModelSpec, loop: asyncio.AbstractEventLoop
    ) -> Callable[[list[dict[str, Any]]], np.ndarray]:
        """A blocking item embedder for worker threads: each call runs the batch through the
        (async, batched) item encoder on the event loop and waits for it."""

        def embed(payloads: list[dict[str, Any]]) -> np.ndarray:
            async def run() -> list[np.ndarray]:
                return list(await asyncio.gather(*(self.encode(spec, p) for p in payloads)))

            return np.stack(asyncio.run_coroutine_threadsafe(run(), loop).result())

        return embed

    async def attach(self, state: RetrievalState, use_gpu: str | bool = False) -> RetrievalState:
        """``state`` with its index made live: newest snapshot (or the base) plus the log, every
        item under ``state``'s model version. Runs before ``state`` is published."""
        log_ = await asyncio.to_thread(self._open, state.index_uri)
        assert self.store is not None and self.images_dir is not None
        embed = self._embedder(state.model, asyncio.get_running_loop())
        live = await asyncio.to_thread(
            restore,
            state.index,
            state.index_version,
            state.model_version,
            log_,
            self.store,
            embed,
            use_gpu,
            self.live_cfg.apply_batch,
        )
        self._last_snapshot.setdefault(live.base_version, live.applied_seq)
        catalog = LiveCatalog(state.catalog, live, log_, self.images_dir)
        return dataclasses.replace(state, index=live, catalog=catalog)

    # ---- following the log ---------------------------------------------------------------------
    def follow(self, current: Callable[[], RetrievalState | None]) -> None:
        """Start the thread that keeps ``current()``'s live index up with the log (called on the
        replica's event loop, which item embeddings the log lacks are computed through)."""
        self._loop = asyncio.get_running_loop()
        if self._tail is None or not self._tail.is_alive():
            self._tail = threading.Thread(target=self._follow, args=(current,), name="live-catalog-tail", daemon=True)
            self._tail.start()

    def _follow(self, current: Callable[[], RetrievalState | None]) -> None:
        while not self._closing:
            self._wake.clear()
            state = current()
            if state is not None and isinstance(state.index, LiveIndex):
                try:
                    self._catch_up(state)
                except Exception:  # noqa: BLE001 - a failed step is retried next poll, never fatal
                    log.exception("applying the change log failed; retrying")
            self._wake.wait(self.live_cfg.poll_interval_s)

    def _catch_up(self, state: RetrievalState, loop: asyncio.AbstractEventLoop | None = None) -> int:
        """Apply every logged change to ``state``'s index (blocking; any thread but the loop's)."""
        live = state.index
        assert isinstance(live, LiveIndex) and self.log is not None
        loop = loop or self._loop
        embed = self._embedder(state.model, loop) if loop is not None else None
        with self._apply_lock:
            applied = catch_up(live, self.log, embed, self.live_cfg.apply_batch)
            self._maybe_compact(live)
        return applied

    def _maybe_compact(self, live: LiveIndex) -> None:
        """Start a compaction (snapshot + log fold) in its own thread every ``snapshot_every``
        changes; the tail keeps applying meanwhile (the snapshot copies the index under its lock,
        then saves the copy)."""
        if live.applied_seq - self._last_snapshot.get(live.base_version, 0) < self.live_cfg.snapshot_every:
            return
        if self._compaction is not None and self._compaction.is_alive():
            return  # the next step starts one once this is done
        assert self.store is not None and self.log is not None
        self._last_snapshot[live.base_version] = live.applied_seq
        store, log_, keep = self.store, self.log, self.live_cfg.keep_snapshots

        def run() -> None:
            try:
                compact(live, log_, store, keep)
            except Exception:  # noqa: BLE001 - the log still holds everything; tried again after snapshot_every more
                log.exception("compacting the live catalog failed")

        self._compaction = threading.Thread(target=run, name="live-catalog-compaction", daemon=True)
        self._compaction.start()

    async def catch_up(self, state: RetrievalState) -> int:
        """Apply every logged change to ``state``'s index now; returns how many were new."""
        if self.log is None or not isinstance(state.index, LiveIndex):
            raise NotReadyError("live writes are not enabled on this server (serve.live.enabled)")
        return await asyncio.to_thread(self._catch_up, state, asyncio.get_running_loop())

    async def close(self) -> None:
        """Stop following the log, let a running compaction finish, close the log (the replica
        is going away)."""
        self._closing = True
        self._wake.set()
        for thread in (self._tail, self._compaction):
            if thread is not None:
                # Off the loop: the tail may be waiting for an item embedding computed on it.
                await asyncio.to_thread(thread.join)
        await asyncio.to_thread(self._appends.shutdown)
        if self.log is not None:
            self.log.close()

    # ---- writes --------------------------------------------------------------------------------
    def _live(self, state: RetrievalState) -> tuple[LiveIndex, ChangeLog]:
        if self.log is None or not isinstance(state.index, LiveIndex):
            raise NotReadyError("live writes are not enabled on this server (serve.live.enabled)")
        return state.index, self.log

    async def upsert_items(self, state: RetrievalState, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Embed and durably log ``items`` (one transaction); the answer means "stored".

        Each item: ``item_id``, ``title``, other text fields, attributes, ``images`` (bytes) or
        ``image_paths``; see :func:`check_item`. A bad item fails the whole batch (4xx) and nothing
        is stored; a repeated id keeps its last occurrence.
        """
        live, log_ = self._live(state)
        if not items:
            raise BadRequestError("no items given")
        checked = [check_item(it, self.cfg) for it in items]
        by_id = {c[0]: c for c in checked}  # the last occurrence of an id wins, as in the log
        writes_in = list(by_id.values())
        images = await asyncio.gather(
            *(asyncio.to_thread(self._read_images, imgs, paths) for _, _, imgs, paths in writes_in)
        )
        embeddings = await asyncio.gather(
            *(
                self._embedding(state, live, item_id, fields, imgs)
                for (item_id, fields, _, _), imgs in zip(writes_in, images)
            )
        )
        writes = [
            ItemWrite.upsert(item_id, fields, emb, state.model_version, imgs)
            for (item_id, fields, _, _), imgs, emb in zip(writes_in, images, embeddings)
        ]
        seq = await self._append(log_, writes)
        return {"seq": seq, "upserted": len(writes), "item_ids": list(by_id), "model_version": state.model_version}

    async def _append(self, log_: ChangeLog, writes: list[ItemWrite]) -> int:
        """``log_.append(writes)`` (durable when it returns; group committed with the replica's
        other writes in flight), then wake this replica's tail to apply it at once: from the
        appending thread, not after the event loop got round to the append's result."""

        def append() -> int:
            seq = log_.append(writes)
            self._wake.set()
            return seq

        return await asyncio.get_running_loop().run_in_executor(self._appends, append)

    def _read_images(self, images: list[bytes], paths: list[str]) -> list[bytes]:
        return images + [read_allowed_file(p, self.cfg.allowed_image_roots, self.cfg.max_upload_bytes) for p in paths]

    async def _embedding(
        self, state: RetrievalState, live: LiveIndex, item_id: str, fields: dict[str, Any], images: list[bytes]
    ) -> np.ndarray:
        """The item's embedding: the one already served when nothing changed (the same PUT twice
        gives the same vector), else the item encoder's (a bad image is its 422)."""
        from itemsage.index.changelog import image_digest

        current = live.live_item(item_id)
        if current is not None and current.digest == item_digest(fields, [image_digest(b) for b in images]):
            vec = live.vector(item_id)
            if vec is not None:
                return vec
        payload = {**fields, "images": images}
        return np.asarray(await self.encode(state.model, payload), np.float32).reshape(-1)

    async def delete_items(self, state: RetrievalState, item_ids: Sequence[str]) -> dict[str, Any]:
        """Durably log the deletion of ``item_ids``; 404 (nothing deleted) when any is unknown.

        The replica first applies everything already logged, so an item another replica just
        acknowledged can be deleted here at once.
        """
        live, log_ = self._live(state)
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            raise BadRequestError("no item ids given")
        bad = [i for i in ids if not isinstance(i, str) or not i]
        if bad:
            raise BadRequestError("item ids must be non-empty strings")
        await self.catch_up(state)
        unknown = [i for i in ids if i not in live]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise ItemNotFoundError(f"unknown item id{'s' if len(unknown) > 1 else ''} {shown}; nothing was deleted")
        seq = await self._append(log_, [ItemWrite.delete(i) for i in ids])
        return {"seq": seq, "deleted": len(ids), "item_ids": ids}

    # ---- reads for clients ---------------------------------------------------------------------
    def status(self, state: RetrievalState) -> dict[str, Any]:
        live, log_ = self._live(state)
        return {
            "applied_seq": live.applied_seq,
            "head_seq": log_.head(),
            "live_items": len(live.live_items()),
            "deleted_items": len(live.deleted_ids()),
            "items": live.ntotal,
            "base_index_version": live.base_version,
            "model_version": live.model_version,
            "changelog": log_.where,
        }

    def applied_steps(self, state: RetrievalState, after: int = 0) -> dict[str, Any]:
        """This replica's recent apply steps past ``after`` (:meth:`LiveIndex.applied_steps`),
        its applied seq, and its clock now."""
        live, _ = self._live(state)
        steps = [{"seq": seq, "applied_at": at} for seq, at in live.applied_steps(after)]
        return {"applied_seq": live.applied_seq, "now": time.time(), "steps": steps}

    async def item_digests(self, state: RetrievalState) -> dict[str, str]:
        """Content digest (:func:`~itemsage.index.changelog.item_digest`) of every served item:
        what a catalog sync compares a catalog file against."""
        live, _ = self._live(state)
        await self.catch_up(state)
        return await asyncio.to_thread(served_digests, state.catalog, live)

    def query_vector(self, state: RetrievalState, item_id: str) -> np.ndarray | None:
        """A live item's own embedding (the "items like this one" query for an item written after
        the model's feature store was built), else None."""
        live = state.index
        return live.vector(item_id) if isinstance(live, LiveIndex) else None


def served_digests(catalog: Catalog, live: LiveIndex) -> dict[str, str]:
    """Digest of every item in ``live``: the logged digest of live items; base items hashed from
    their catalog fields and image bytes, as a client hashing the same catalog rows would."""
    from itemsage.index.changelog import image_digest

    out: dict[str, str] = {}
    base = catalog.base if isinstance(catalog, LiveCatalog) else catalog
    for item_id in live.idmap.item_ids():
        item = live.live_item(item_id)
        if item is not None:
            out[item_id] = item.digest
            continue
        entry = base.get(item_id)
        digests = []
        for p in entry.image_paths:
            try:
                with open(p, "rb") as f:
                    digests.append(image_digest(f.read()))
            except OSError:
                continue  # a missing file is missing for the client too
        out[item_id] = item_digest({k: v for k, v in entry.fields.items() if v}, digests)
    return out
