"""The durable change log of a live catalog: every acknowledged item write, in one global order.

A write (upsert or delete of one item) is acknowledged only after :meth:`ChangeLog.append` has
returned, and ``append`` returns only after the database has made the write durable: SQLite in WAL
mode with ``synchronous=FULL`` (the WAL is fsynced at every commit) on one machine, PostgreSQL
(committed = on disk, ``synchronous_commit`` at its default) for a cluster. A batch of writes is
one transaction, so a crash leaves all of it or none of it.

What a change stores, and why:

* ``seq``: the position in the log. Every replica applies changes in ``seq`` order, so they all
  reach the same state, and the last acknowledged write of an item wins everywhere. Sequence
  numbers are handed out in commit order (SQLite serialises writers; PostgreSQL appends hold a
  transaction-scoped advisory lock), so a reader that saw ``seq`` N has seen every change below N:
  a lower number can never commit later and be skipped.
* the item's **fields** (text fields and filterable attributes) and **images** (stored once per
  content digest in the log itself, so a replica on another node, or a later model, can read them);
* its **embedding** under the model version that computed it. The item encoder embeds a new item
  once, before the acknowledgement; replicas only add vectors. Embeddings are kept per model
  version (``vectors`` table): deploying a new model re-embeds every live item from its stored
  fields and images and stores those vectors next to the old ones, so the other replicas, and a
  restart, reuse them instead of embedding again. A change read for a model version without a
  stored vector comes back with ``embedding=None``: it must be embedded before it is applied.

Concurrency. Appends that arrive while another append is committing are **group committed**:
the next append to start takes every batch queued meanwhile and stores them in one transaction
(one fsync), and each caller gets the seq of its own last write. Each batch stays atomic (a
transaction holds all of them or none), and a caller still returns only after its commit. Reads
(the replicas' tail, :meth:`ChangeLog.read_since`) use a connection of their own, so a reader
never waits behind an append of its own process that waits for the database's write lock (held
by another replica).

Open a log with :func:`open_changelog` (a URI from ``serve.live.changelog_uri``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Op = Literal["upsert", "delete"]
OPS: tuple[str, ...] = ("upsert", "delete")
SCHEMA_VERSION = 1
SQLITE_FILE = "changes.sqlite"
# Writers wait this long for another writer's transaction (another replica) before failing.
BUSY_TIMEOUT_S = 30.0
# Key of the PostgreSQL advisory lock that serialises appends (any constant; "ISCL" in ASCII).
_PG_APPEND_LOCK = 0x4953434C


class ChangeLogError(RuntimeError):
    """The change log cannot be opened or written (the message names the log, never a password)."""


def item_digest(fields: Mapping[str, Any], image_digests: Sequence[str] = ()) -> str:
    """Content hash of an item: its fields (canonical JSON) and its images' SHA-256 digests.

    Two writes with the same digest describe the same item, so the same PUT twice changes nothing
    and a catalog sync can tell updated items from unchanged ones without comparing embeddings.
    """
    body = json.dumps({"fields": dict(fields), "images": list(image_digests)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ItemWrite:
    """One write to append: upsert an item (fields, image bytes, its embedding) or delete one.

    ``embedding`` (float32 [D]) and ``model_version`` are required for an upsert: the item is
    embedded before it is logged. A delete carries neither.
    """

    op: Op
    item_id: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    images: Sequence[bytes] = ()
    embedding: np.ndarray | None = None
    model_version: str | None = None

    @classmethod
    def upsert(
        cls,
        item_id: str,
        fields: Mapping[str, Any],
        embedding: np.ndarray,
        model_version: str,
        images: Sequence[bytes] = (),
    ) -> ItemWrite:
        return cls("upsert", item_id, dict(fields), tuple(images), np.asarray(embedding, np.float32), model_version)

    @classmethod
    def delete(cls, item_id: str) -> ItemWrite:
        return cls("delete", item_id)

    def check(self) -> None:
        """Clear errors for a malformed write, before anything is stored."""
        if self.op not in OPS:
            raise ValueError(f"change op must be one of {OPS}; got {self.op!r}")
        if not isinstance(self.item_id, str) or not self.item_id:
            raise ValueError(f"item_id must be a non-empty string; got {self.item_id!r}")
        if self.op == "delete":
            return
        if self.embedding is None or not self.model_version:
            raise ValueError(f"upsert of {self.item_id!r} needs its embedding and the model version that made it")
        emb = np.asarray(self.embedding)
        if emb.ndim != 1 or emb.size == 0 or not np.isfinite(emb).all():
            raise ValueError(f"upsert of {self.item_id!r}: the embedding must be a finite 1-D vector")
        try:
            json.dumps(dict(self.fields))
        except (TypeError, ValueError) as e:
            raise ValueError(f"upsert of {self.item_id!r}: fields must be JSON data ({e})") from None
        if any(not isinstance(b, (bytes, bytearray)) or not b for b in self.images):
            raise ValueError(f"upsert of {self.item_id!r}: images must be non-empty bytes")


@dataclass(frozen=True)
class Change:
    """One logged change, as read back.

    Attributes:
        seq: position in the log (strictly increasing, may have gaps after :meth:`ChangeLog.prune`).
        op: "upsert" or "delete".
        item_id: the item.
        fields: the item's fields ({} for a delete).
        images: SHA-256 digests of its images, in order; bytes via :meth:`ChangeLog.image`.
        digest: :func:`item_digest` of fields and images ("" for a delete).
        embedding: float32 [D] under ``model_version``, or None when the log holds no vector for
            the model version asked for (or for a delete).
        model_version: the version ``embedding`` belongs to (the one asked for), or None.
        created_at: Unix time of the append.
    """

    seq: int
    op: Op
    item_id: str
    fields: dict[str, Any]
    images: tuple[str, ...]
    digest: str
    embedding: np.ndarray | None
    model_version: str | None
    created_at: float

    def with_embedding(self, embedding: np.ndarray, model_version: str) -> Change:
        return Change(
            self.seq,
            self.op,
            self.item_id,
            self.fields,
            self.images,
            self.digest,
            np.asarray(embedding, np.float32),
            model_version,
            self.created_at,
        )


class _PendingAppend:
    """One caller's batch waiting for a group commit, and what became of it."""

    __slots__ = ("writes", "seq", "error", "done")

    def __init__(self, writes: list[ItemWrite]) -> None:
        self.writes = writes
        self.seq = 0
        self.error: BaseException | None = None
        self.done = False


class ChangeLog(ABC):
    """Append-only, durable, totally ordered log of item writes (SQL backed).

    Thread-safe: two connections per log, one for writes and one for reads, each used under its
    own lock. Every method but :meth:`close` may run in a worker thread (``asyncio.to_thread``)
    while others read or append.
    """

    # Placeholder style of the DB-API driver ("?" sqlite3, "%s" psycopg2).
    _param = "?"
    _blob: type = bytes

    def __init__(self, where: str) -> None:
        self.where = where
        self._lock = threading.Lock()  # the write connection
        self._read_lock = threading.Lock()  # the read connection
        # Group commit: batches queued while an append is committing, and whether one is.
        self._queue_cond = threading.Condition()
        self._queue: list[_PendingAppend] = []
        self._committing = False

    # ---- what a backend provides ---------------------------------------------------------------
    @abstractmethod
    def _conn(self) -> Any:
        """The write connection."""

    @abstractmethod
    def _read_conn(self) -> Any:
        """The read connection (its own, so reads never queue behind an append's lock wait)."""

    @abstractmethod
    def _begin_append(self, cur: Any) -> None:
        """Start the append transaction so that sequence numbers are handed out in commit order."""

    @abstractmethod
    def _insert_change(self, cur: Any, row: tuple[Any, ...]) -> int:
        """Insert one ``changes`` row (op, item_id, fields, images, digest, created_at); its seq."""

    @abstractmethod
    def close(self) -> None: ...

    # ---- SQL helpers -----------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql if self._param == "?" else sql.replace("?", self._param)

    def _start(self, conn: Any, write: bool) -> None:
        """Open the transaction (psycopg2 opens one implicitly)."""
        return None

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[Any]:
        with self._lock if write else self._read_lock:
            conn = self._conn() if write else self._read_conn()
            self._start(conn, write)
            cur = conn.cursor()
            try:
                yield cur
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                cur.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._transaction() as cur:
            cur.execute(self._sql(sql), tuple(params))
            return list(cur.fetchall())

    # ---- writing -------------------------------------------------------------------------------
    def append(self, writes: Sequence[ItemWrite]) -> int:
        """Store ``writes`` as one transaction, durably; returns the seq of the last one.

        Returns only after the commit is on disk: the caller may acknowledge the writes then.
        Every write is checked first; a bad one raises ``ValueError`` and nothing is stored. An
        empty batch stores nothing and returns :meth:`head`.

        Concurrent calls are group committed (module docstring): this batch may share its
        transaction with others queued at the same moment. Their seqs stay in call order within
        the transaction, and an error stores none of them (each caller gets it).
        """
        writes = list(writes)
        for w in writes:
            w.check()
        if not writes:
            return self.head()
        mine = _PendingAppend(writes)
        with self._queue_cond:
            self._queue.append(mine)
            while not mine.done and self._committing:
                self._queue_cond.wait()
            if mine.done:  # another caller's commit included this batch
                return self._outcome(mine)
            # Nobody is committing: this caller commits everything queued, its own batch included.
            group, self._queue, self._committing = self._queue, [], True
        try:
            try:
                seqs = self._write_group([p.writes for p in group])
                for p, seq in zip(group, seqs):
                    p.seq = seq
            except BaseException as e:  # noqa: BLE001 - handed to every caller of the group, which raises it
                for p in group:
                    p.error = e
        finally:
            with self._queue_cond:
                for p in group:
                    p.done = True
                self._committing = False
                self._queue_cond.notify_all()
        return self._outcome(mine)

    @staticmethod
    def _outcome(p: _PendingAppend) -> int:
        if p.error is not None:
            raise p.error
        return p.seq

    def _write_group(self, batches: Sequence[Sequence[ItemWrite]]) -> list[int]:
        """Store ``batches`` in one transaction; the seq of each batch's last write."""
        now = time.time()
        lasts: list[int] = []
        try:
            with self._transaction(write=True) as cur:
                self._begin_append(cur)
                for writes in batches:
                    last = 0
                    for w in writes:
                        last = self._insert_write(cur, w, now)
                    lasts.append(last)
        except (sqlite3.Error, OSError) as e:
            raise ChangeLogError(f"cannot append to the change log {self.where}: {e}") from e
        return lasts

    def _insert_write(self, cur: Any, w: ItemWrite, now: float) -> int:
        digests = [image_digest(bytes(b)) for b in w.images]
        for d, b in zip(digests, w.images):
            cur.execute(
                self._sql("INSERT INTO images (digest, data) VALUES (?, ?) ON CONFLICT DO NOTHING"),
                (d, self._blob(bytes(b))),
            )
        fields = dict(w.fields) if w.op == "upsert" else {}
        digest = item_digest(fields, digests) if w.op == "upsert" else ""
        row = (w.op, w.item_id, json.dumps(fields, sort_keys=True), json.dumps(digests), digest, now)
        seq = self._insert_change(cur, row)
        if w.op == "upsert":
            self._insert_vector(cur, seq, str(w.model_version), np.asarray(w.embedding, np.float32))
        return seq

    def _insert_vector(self, cur: Any, seq: int, model_version: str, vec: np.ndarray) -> None:
        cur.execute(
            self._sql(
                "INSERT INTO vectors (seq, model_version, dim, vector) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
            ),
            (seq, model_version, int(vec.size), self._blob(vec.astype("<f4").tobytes())),
        )

    def put_embeddings(self, model_version: str, embeddings: Mapping[int, np.ndarray]) -> None:
        """Store the vectors of changes ``seq -> embedding`` under another model version (a model
        swap's re-embedding); a vector already stored for (seq, version) is kept (idempotent)."""
        if not embeddings:
            return
        with self._transaction(write=True) as cur:
            for seq, vec in embeddings.items():
                v = np.asarray(vec, np.float32).reshape(-1)
                if not np.isfinite(v).all():
                    raise ValueError(f"embedding of change {seq} under model {model_version} is not finite")
                self._insert_vector(cur, int(seq), model_version, v)

    # ---- reading -------------------------------------------------------------------------------
    def head(self) -> int:
        """The highest seq in the log (0 when empty)."""
        rows = self._query("SELECT COALESCE(MAX(seq), 0) FROM changes")
        return int(rows[0][0])

    def read_since(self, seq: int, model_version: str | None = None, limit: int | None = None) -> list[Change]:
        """Changes with ``seq`` greater than ``seq``, in order, at most ``limit`` of them.

        ``model_version``: attach each change's embedding under this version (None where the log
        holds none for it). Without it, no embeddings are read.
        """
        sql = (
            "SELECT c.seq, c.op, c.item_id, c.fields, c.images, c.digest, c.created_at, v.vector "
            "FROM changes c LEFT JOIN vectors v ON v.seq = c.seq AND v.model_version = ? "
            "WHERE c.seq > ? ORDER BY c.seq"
        )
        params: list[Any] = [model_version or "", int(seq)]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self._change(r, model_version) for r in self._query(sql, params)]

    def latest(self, upto: int | None = None, model_version: str | None = None) -> list[Change]:
        """The last change of every item with ``seq <= upto`` (default: all), in seq order: the
        state the log describes, e.g. every live item a model swap must re-embed."""
        where = "" if upto is None else " WHERE seq <= ?"
        params: list[Any] = [model_version or ""] + ([] if upto is None else [int(upto)])
        sql = (
            "SELECT c.seq, c.op, c.item_id, c.fields, c.images, c.digest, c.created_at, v.vector "
            "FROM changes c LEFT JOIN vectors v ON v.seq = c.seq AND v.model_version = ? "
            f"WHERE c.seq IN (SELECT MAX(seq) FROM changes{where} GROUP BY item_id) ORDER BY c.seq"
        )
        return [self._change(r, model_version) for r in self._query(sql, params)]

    def image(self, digest: str) -> bytes:
        """The bytes of a stored image; ``KeyError`` for an unknown digest."""
        rows = self._query("SELECT data FROM images WHERE digest = ?", (digest,))
        if not rows:
            raise KeyError(f"no image {digest} in the change log {self.where}")
        return bytes(rows[0][0])

    def _change(self, r: tuple[Any, ...], model_version: str | None) -> Change:
        vec = None if r[7] is None else np.frombuffer(bytes(r[7]), dtype="<f4").astype(np.float32)
        return Change(
            seq=int(r[0]),
            op=r[1],
            item_id=str(r[2]),
            fields=json.loads(r[3]),
            images=tuple(json.loads(r[4])),
            digest=str(r[5]),
            embedding=vec,
            model_version=model_version if vec is not None else None,
            created_at=float(r[6]),
        )

    # ---- folding -------------------------------------------------------------------------------
    def prune(self, upto: int) -> int:
        """Delete changes with ``seq <= upto`` that a later change of the same item supersedes,
        with their vectors and the images nothing refers to any more; returns how many changes.

        Safe while replicas tail the log: each still reaches every item's last change (replay is
        last-write-wins). Call it once a snapshot at ``upto`` or later exists (compaction).
        """
        with self._transaction(write=True) as cur:
            cur.execute(
                self._sql(
                    "DELETE FROM changes WHERE seq <= ? AND seq < "
                    "(SELECT MAX(c2.seq) FROM changes c2 WHERE c2.item_id = changes.item_id)"
                ),
                (int(upto),),
            )
            removed = int(cur.rowcount or 0)
            cur.execute("DELETE FROM vectors WHERE seq NOT IN (SELECT seq FROM changes)")
            cur.execute("SELECT images FROM changes WHERE images <> '[]'")
            used = {d for (imgs,) in cur.fetchall() for d in json.loads(imgs)}
            cur.execute("SELECT digest FROM images")
            orphans = [d for (d,) in cur.fetchall() if d not in used]
            for d in orphans:
                cur.execute(self._sql("DELETE FROM images WHERE digest = ?"), (d,))
        return removed

    def __enter__(self) -> ChangeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where})"


# ------------------------------------------------------------------------------------- SQLite


_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')), item_id TEXT NOT NULL, fields TEXT NOT NULL, "
    "images TEXT NOT NULL, digest TEXT NOT NULL, created_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS changes_item ON changes (item_id, seq)",
    "CREATE TABLE IF NOT EXISTS vectors (seq INTEGER NOT NULL, model_version TEXT NOT NULL, "
    "dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (seq, model_version))",
    "CREATE TABLE IF NOT EXISTS images (digest TEXT PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


class SqliteChangeLog(ChangeLog):
    """The log in one SQLite file (WAL, ``synchronous=FULL``): one machine, any number of
    processes (replicas) reading and appending; SQLite serialises the appends."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        super().__init__(str(self.path))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so a returned append survives power loss
            # (NORMAL, WAL's usual setting, may lose the last commits on a crash of the machine).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("BEGIN IMMEDIATE")
            for stmt in _SQLITE_SCHEMA:
                self._db.execute(stmt)
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
            self._db.execute("COMMIT")
            self._reader = self._connect()
        except sqlite3.Error as e:
            raise ChangeLogError(f"cannot open the change log {self.path}: {e}") from e
        _check_schema(self)

    def _connect(self) -> sqlite3.Connection:
        # Transactions are managed here (BEGIN IMMEDIATE for appends), not by the module.
        db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        return db

    def _conn(self) -> Any:
        return self._db

    def _read_conn(self) -> Any:
        return self._reader

    def _start(self, conn: Any, write: bool) -> None:
        # Autocommit mode with explicit transactions: BEGIN IMMEDIATE takes the write lock at the
        # start, so two appending processes queue (busy_timeout) instead of failing on a lock
        # upgrade; reads use a plain BEGIN, which never waits for a writer in WAL mode.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def _begin_append(self, cur: Any) -> None:
        # Nothing more to do: the transaction began with BEGIN IMMEDIATE, SQLite's one write lock.
        return None

    def _insert_change(self, cur: Any, row: tuple[Any, ...]) -> int:
        cur.execute(
            "INSERT INTO changes (op, item_id, fields, images, digest, created_at) VALUES (?, ?, ?, ?, ?, ?)", row
        )
        return int(cur.lastrowid)

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()


# ---------------------------------------------------------------------------------- PostgreSQL


_PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS changes (seq BIGSERIAL PRIMARY KEY, "
    "op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')), item_id TEXT NOT NULL, fields TEXT NOT NULL, "
    "images TEXT NOT NULL, digest TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS changes_item ON changes (item_id, seq)",
    "CREATE TABLE IF NOT EXISTS vectors (seq BIGINT NOT NULL, model_version TEXT NOT NULL, "
    "dim INTEGER NOT NULL, vector BYTEA NOT NULL, PRIMARY KEY (seq, model_version))",
    "CREATE TABLE IF NOT EXISTS images (digest TEXT PRIMARY KEY, data BYTEA NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


class PostgresChangeLog(ChangeLog):
    """The log in a PostgreSQL database, shared by every replica of a cluster (psycopg2)."""

    _param = "%s"

    def __init__(self, uri: str) -> None:
        super().__init__(_redact(uri))
        try:
            import psycopg2
        except ImportError as e:  # pragma: no cover - a project dependency
            raise ChangeLogError("psycopg2 is not installed; it is needed for a PostgreSQL change log") from e
        self._blob = psycopg2.Binary
        self._uri = uri.replace("postgresql+psycopg2://", "postgresql://", 1)
        self._db: Any = None
        self._reader: Any = None
        with self._transaction(write=True) as cur:
            # Two replicas starting at once must not both create the tables.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_APPEND_LOCK,))
            for stmt in _PG_SCHEMA:
                cur.execute(stmt)
            cur.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s) ON CONFLICT DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
        _check_schema(self)

    def _connect(self, current: Any) -> Any:
        import psycopg2

        if current is not None and not current.closed:
            return current
        try:
            return psycopg2.connect(self._uri, connect_timeout=10)
        except psycopg2.Error as e:
            raise ChangeLogError(f"cannot connect to the change log {self.where}: {str(e).strip()}") from None

    def _conn(self) -> Any:
        self._db = self._connect(self._db)
        return self._db

    def _read_conn(self) -> Any:
        self._reader = self._connect(self._reader)
        return self._reader

    def _begin_append(self, cur: Any) -> None:
        # BIGSERIAL hands out numbers at insert time, not commit time: without this lock a reader
        # could see seq 11 commit before seq 10 and never look at 10 again.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_APPEND_LOCK,))

    def _insert_change(self, cur: Any, row: tuple[Any, ...]) -> int:
        cur.execute(
            "INSERT INTO changes (op, item_id, fields, images, digest, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING seq",
            row,
        )
        return int(cur.fetchone()[0])

    def _write_group(self, batches: Sequence[Sequence[ItemWrite]]) -> list[int]:
        import psycopg2

        try:
            return super()._write_group(batches)
        except psycopg2.Error as e:
            # A failed connection is dropped, so the next call reconnects.
            self._db = None
            raise ChangeLogError(f"cannot append to the change log {self.where}: {str(e).strip()}") from None

    def close(self) -> None:
        with self._lock, self._read_lock:
            for db in (self._db, self._reader):
                if db is not None and not db.closed:
                    db.close()


def _redact(uri: str) -> str:
    """``uri`` without its password, for messages and logs."""
    if "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else uri


def _check_schema(log: ChangeLog) -> None:
    rows = log._query("SELECT value FROM meta WHERE key = 'schema_version'")
    found = rows[0][0] if rows else None
    if found != str(SCHEMA_VERSION):
        log.close()
        raise ChangeLogError(f"change log {log.where} has schema version {found!r}; this code reads {SCHEMA_VERSION}")


def open_changelog(uri: str = "", live_dir: str | os.PathLike[str] | None = None) -> ChangeLog:
    """The change log named by ``uri`` (``serve.live.changelog_uri``).

    ``""``: SQLite at ``<live_dir>/changes.sqlite``; ``sqlite:///<path>`` (``sqlite:////abs``
    for an absolute path, as SQLAlchemy writes it); ``postgresql://`` or
    ``postgresql+psycopg2://user:password@host:port/db``.
    """
    if not uri:
        if live_dir is None:
            raise ValueError("no change log: set serve.live.changelog_uri or serve.live.dir")
        return SqliteChangeLog(Path(live_dir) / SQLITE_FILE)
    if uri.startswith("sqlite:///"):
        return SqliteChangeLog(uri[len("sqlite:///") :])
    if uri.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
        return PostgresChangeLog(uri.replace("postgres://", "postgresql://", 1))
    raise ValueError(
        f"unsupported change log URI {_redact(uri)!r}: use sqlite:///<path> or postgresql://user:password@host/db"
    )


def batched(changes: Iterable[Change], size: int) -> Iterator[list[Change]]:
    """``changes`` in lists of at most ``size`` (apply steps that hold the index lock briefly)."""
    chunk: list[Change] = []
    for c in changes:
        chunk.append(c)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
