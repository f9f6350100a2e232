"""The durable change log (itemsage.index.changelog): durability across a killed writer, all-or-
nothing batches, one global order that tailing readers never skip in, and the PostgreSQL backend
against a real server."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from itemsage.index.changelog import (
    ChangeLog,
    ChangeLogError,
    ItemWrite,
    PostgresChangeLog,
    SqliteChangeLog,
    image_digest,
    item_digest,
    open_changelog,
)

REPO = Path(__file__).resolve().parents[2]


def vec(i: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def up(item_id: str, i: int = 0, images: tuple[bytes, ...] = (), version: str = "1") -> ItemWrite:
    return ItemWrite.upsert(item_id, {"title": f"item {item_id} #{i}"}, vec(i), version, images)


def run_python(code: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


# ----------------------------------------------------------------------------------- SQLite


def test_an_acknowledged_append_survives_a_killed_writer(tmp_path: Path) -> None:
    """The writer prints the seq append returned (its acknowledgement) and is SIGKILLed at once;
    a new process reads every acknowledged change back, embedding and image included."""
    code = f"""
import os, signal, numpy as np
from itemsage.index.changelog import ItemWrite, open_changelog
log = open_changelog("", {str(tmp_path)!r})
for i in range(5):
    seq = log.append([ItemWrite.upsert(f"sku-{{i}}", {{"title": f"t{{i}}"}}, np.full(4, i, np.float32), "7", [b"img%d" % i])])
    print(seq, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = run_python(code)
    assert proc.returncode == -9, proc.stderr
    acked = [int(x) for x in proc.stdout.split()]
    assert acked == [1, 2, 3, 4, 5]
    with open_changelog("", tmp_path) as log:
        changes = log.read_since(0, model_version="7")
        assert [c.seq for c in changes] == acked
        assert [c.item_id for c in changes] == [f"sku-{i}" for i in range(5)]
        assert all(c.embedding is not None and c.embedding[0] == i for i, c in enumerate(changes))
        assert log.image(changes[3].images[0]) == b"img3"


def test_a_batch_killed_mid_transaction_leaves_nothing(tmp_path: Path) -> None:
    """SIGKILL after two of three rows of a batch were written: none of the batch is there."""
    code = f"""
import os, signal, numpy as np
from itemsage.index.changelog import ItemWrite, SqliteChangeLog
class Dying(SqliteChangeLog):
    rows = 0
    def _insert_change(self, cur, row):
        Dying.rows += 1
        if Dying.rows == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._insert_change(cur, row)
log = Dying({str(tmp_path / "changes.sqlite")!r})
log.append([ItemWrite.upsert("kept", {{"title": "k"}}, np.ones(4, np.float32), "1")])
print("acked", flush=True)
log.append([ItemWrite.upsert(f"lost-{{i}}", {{"title": "x"}}, np.ones(4, np.float32), "1") for i in range(3)])
print("never", flush=True)
"""
    proc = run_python(code)
    assert proc.returncode == -9 and proc.stdout.split() == ["acked"], proc.stderr
    with open_changelog("", tmp_path) as log:
        assert [c.item_id for c in log.read_since(0)] == ["kept"]
        assert log.head() == 1


def test_a_bad_write_stores_nothing_of_its_batch(tmp_path: Path) -> None:
    with open_changelog("", tmp_path) as log:
        with pytest.raises(ValueError, match="embedding"):
            log.append([up("a"), ItemWrite("upsert", "b", {"title": "b"})])
        with pytest.raises(ValueError, match="finite"):
            log.append([ItemWrite.upsert("c", {"title": "c"}, np.array([np.nan, 1.0]), "1")])
        with pytest.raises(ValueError, match="item_id"):
            log.append([ItemWrite.delete("")])
        assert log.head() == 0 and log.read_since(0) == []


def test_concurrent_writers_get_one_order_that_keeps_each_ones_own(tmp_path: Path) -> None:
    """Two processes append 40 changes each at once: one strictly increasing order, each
    writer's own changes in the order it acknowledged them."""
    code = f"""
import sys, numpy as np
from itemsage.index.changelog import ItemWrite, open_changelog
log = open_changelog("", {str(tmp_path)!r})
name = sys.argv[1]
for i in range(40):
    log.append([ItemWrite.upsert(f"{{name}}-{{i}}", {{"title": "t"}}, np.ones(4, np.float32), "1")])
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    procs = [subprocess.Popen([sys.executable, "-c", code, name], env=env) for name in ("p", "q")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with open_changelog("", tmp_path) as log:
        changes = log.read_since(0)
    seqs = [c.seq for c in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 80
    for name in ("p", "q"):
        own = [int(c.item_id.split("-")[1]) for c in changes if c.item_id.startswith(name)]
        assert own == list(range(40))


class CountingLog(SqliteChangeLog):
    """Records how many batches each commit held; ``boom`` items fail inside the transaction."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.groups: list[int] = []

    def _write_group(self, batches: Any) -> list[int]:
        self.groups.append(len(batches))
        return super()._write_group(batches)

    def _insert_change(self, cur: Any, row: tuple[Any, ...]) -> int:
        if row[1] == "boom":
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        return super()._insert_change(cur, row)


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another writer (another replica) holding SQLite's write lock until it commits."""
    other = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_appends_queued_behind_a_commit_share_the_next_one_and_reads_never_wait(tmp_path: Path) -> None:
    """While one append waits for the write lock (another replica holds it), later appends queue
    and then go in as one transaction, each caller getting its own batch's last seq; and reads
    of the same log answer meanwhile (their own connection)."""
    log = CountingLog(tmp_path / "changes.sqlite")
    log.append([up("before")])
    other = hold_write_lock(log.path)
    seqs: dict[str, int] = {}

    def append(name: str) -> None:
        seqs[name] = log.append([up(f"{name}-1"), up(f"{name}-2")])

    first = threading.Thread(target=append, args=("first",))
    first.start()
    wait_for(lambda: log.groups == [1, 1], "the first append waits for the lock")
    rest = [threading.Thread(target=append, args=(f"t{i}",)) for i in range(6)]
    for t in rest:
        t.start()
    wait_for(lambda: len(log._queue) == 6, "six appends are queued")
    reader = threading.Thread(target=lambda: seqs.update(read=len(log.read_since(0))))
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive() and seqs["read"] == 1, "a read waited for the appends"
    other.rollback()
    for t in [first, *rest]:
        t.join(timeout=60)
    assert log.groups == [1, 1, 6]  # the first append, then everything queued behind it at once
    changes = {c.item_id: c.seq for c in log.read_since(0)}
    assert len(changes) == 1 + 2 * 7
    for name, seq in seqs.items():
        if name != "read":
            assert changes[f"{name}-2"] == seq and changes[f"{name}-1"] == seq - 1, name
    log.close()
    other.close()


def test_a_failed_group_commit_fails_every_batch_in_it_and_stores_none(tmp_path: Path) -> None:
    log = CountingLog(tmp_path / "changes.sqlite")
    other = hold_write_lock(log.path)
    errors: dict[str, BaseException] = {}

    def append(name: str) -> None:
        try:
            log.append([up(f"{name}-1"), up(name)])
        except ChangeLogError as e:
            errors[name] = e

    first = threading.Thread(target=append, args=("first",))
    first.start()
    wait_for(lambda: log.groups == [1], "the first append waits for the lock")
    rest = [threading.Thread(target=append, args=(name,)) for name in ("a", "boom", "b")]
    for t in rest:
        t.start()
    wait_for(lambda: len(log._queue) == 3, "three appends are queued")
    other.rollback()
    for t in [first, *rest]:
        t.join(timeout=60)
    assert log.groups == [1, 3] and sorted(errors) == ["a", "b", "boom"]
    assert all("disk I/O error" in str(e) for e in errors.values())
    assert sorted(c.item_id for c in log.read_since(0)) == ["first", "first-1"]
    log.close()
    other.close()


def test_latest_is_each_items_last_change_and_prune_keeps_it(tmp_path: Path) -> None:
    with open_changelog("", tmp_path) as log:
        log.append([up("a", 1, (b"one",)), up("b", 2)])
        log.append([up("a", 3, (b"three",)), ItemWrite.delete("b"), up("c", 4)])
        latest = log.latest()
        assert [(c.item_id, c.op, c.seq) for c in latest] == [
            ("a", "upsert", 3),
            ("b", "delete", 4),
            ("c", "upsert", 5),
        ]
        assert log.prune(upto=log.head()) == 2
        assert [(c.item_id, c.seq) for c in log.read_since(0)] == [("a", 3), ("b", 4), ("c", 5)]
        # the superseded image went with its change; the live one stayed
        with pytest.raises(KeyError):
            log.image(image_digest(b"one"))
        assert log.image(image_digest(b"three")) == b"three"


def test_embeddings_are_kept_per_model_version(tmp_path: Path) -> None:
    with open_changelog("", tmp_path) as log:
        log.append([up("a", 1, version="1")])
        assert log.read_since(0, model_version="2")[0].embedding is None
        log.put_embeddings("2", {1: vec(9)})
        log.put_embeddings("2", {1: vec(10)})  # a second re-embedding of the same change is ignored
        got = log.read_since(0, model_version="2")[0]
        assert got.model_version == "2" and np.allclose(got.embedding, vec(9))
        assert np.allclose(log.read_since(0, model_version="1")[0].embedding, vec(1))


def test_same_content_same_digest() -> None:
    assert item_digest({"title": "a", "brand": "b"}, ["x"]) == item_digest({"brand": "b", "title": "a"}, ["x"])
    assert item_digest({"title": "a"}, ["x"]) != item_digest({"title": "a"}, ["y"])


def test_bad_uris_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported change log URI 'mysql://u:\\*\\*\\*@h/db'"):
        open_changelog("mysql://u:secret@h/db")
    with pytest.raises(ValueError, match="serve.live.dir"):
        open_changelog("")
    (tmp_path / "not-a-db.sqlite").write_text("hello, not SQLite at all" * 100)
    with pytest.raises(ChangeLogError, match="not-a-db.sqlite"):
        SqliteChangeLog(tmp_path / "not-a-db.sqlite")


# --------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def postgres_uri() -> Iterator[str]:
    """A private PostgreSQL server (tests/support/postgres.py, as the MLflow tests start one)."""
    from tests.support.postgres import PostgresServer, PostgresUnavailable, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="itemsage-changelog-pg-", dir="/tmp"))
    root.chmod(0o711)  # the server's own user must reach its data dir
    server = PostgresServer(root / "pg", dict(os.environ), bin_dir)
    try:
        server.start()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    try:
        yield server.create_database("changes")
    finally:
        server.stop()


def test_postgres_log_appends_durably_and_reads_back(postgres_uri: str) -> None:
    log = open_changelog(postgres_uri)
    assert isinstance(log, PostgresChangeLog) and "***" in log.where
    try:
        seq = log.append([up("a", 1, (b"png",)), up("b", 2), ItemWrite.delete("a")])
        assert seq == 3 == log.head()
        log.put_embeddings("2", {2: vec(7)})
    finally:
        log.close()
    # A new connection (another replica) sees the same log.
    with open_changelog(postgres_uri) as again:
        changes = again.read_since(0, model_version="1")
        assert [(c.seq, c.op, c.item_id) for c in changes] == [
            (1, "upsert", "a"),
            (2, "upsert", "b"),
            (3, "delete", "a"),
        ]
        assert np.allclose(changes[1].embedding, vec(2))
        assert again.image(changes[0].images[0]) == b"png"
        assert np.allclose(again.read_since(1, model_version="2")[0].embedding, vec(7))
        assert [c.item_id for c in again.latest()] == ["b", "a"]


def test_postgres_tailing_reader_never_skips_a_change(postgres_uri: str) -> None:
    """Four threads append at once while a reader tails with read_since(last seen): the reader
    ends with every change. Without the append lock a higher seq could commit before a lower one
    and the reader, already past it, would never see the lower one."""
    writers = [open_changelog(postgres_uri) for _ in range(4)]
    reader = open_changelog(postgres_uri)
    start = reader.head()
    seen: list[int] = []
    done = threading.Event()

    def write(log: ChangeLog, w: int) -> None:
        for i in range(25):
            log.append([ItemWrite.upsert(f"w{w}-{i}", {"title": "t"}, vec(i), "1")])

    def tail() -> None:
        last = start
        while True:
            finished = done.is_set()
            got = reader.read_since(last)
            seen.extend(c.seq for c in got)
            last = got[-1].seq if got else last
            if finished and not got:
                return

    threads = [threading.Thread(target=write, args=(log, w)) for w, log in enumerate(writers)]
    tailer = threading.Thread(target=tail)
    tailer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    tailer.join(timeout=60)
    all_seqs = [c.seq for c in reader.read_since(start)]
    for log in [*writers, reader]:
        log.close()
    assert len(all_seqs) == 100
    assert seen == all_seqs
