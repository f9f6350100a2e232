"""LiveIndex (itemsage.index.live): changes applied in order and idempotently, one model version
per index, no torn reads, restart = snapshot + log, compaction that changes nothing served."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from itemsage.index import UnsupportedOperationError, build_index
from itemsage.index.changelog import Change, ChangeLog, ItemWrite, open_changelog
from itemsage.index.live import (
    EmbeddingVersionError,
    LiveIndex,
    SnapshotStore,
    catch_up,
    compact,
    restore,
)

DIM = 16
N_BASE = 200


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def base_index(spec: str = "Flat", version: str = "1") -> Any:
    x = unit(np.random.default_rng(0), N_BASE)
    return build_index(x, [f"base-{i}" for i in range(N_BASE)], spec, use_gpu=False, model_version=version)


def change(seq: int, op: str, item_id: str, vec: np.ndarray | None = None, version: str | None = "1") -> Change:
    fields = {"title": f"{item_id} at {seq}"} if op == "upsert" else {}
    return Change(seq, op, item_id, fields, (), "", vec, version if vec is not None else None, 0.0)  # type: ignore[arg-type]


def state(live: LiveIndex) -> tuple[list[str], dict[str, Any], set[str], int]:
    """What a search can observe: the ids, live records, deletions and the applied seq."""
    ids = sorted(live.idmap.item_ids())
    return ids, {i: (it.fields, it.seq) for i, it in live.live_items().items()}, live.deleted_ids(), live.applied_seq


def top1(live: LiveIndex, q: np.ndarray) -> str:
    return live.search(q[None, :], 1)[0][0][0]


def write_random(log: ChangeLog, rng: np.random.Generator, n: int, version: str = "1") -> None:
    """``n`` random writes over base and new ids: upserts, updates and deletes of live items."""
    alive = {f"base-{i}" for i in range(N_BASE)}
    for _ in range(n):
        r = rng.random()
        if r < 0.5 or not alive:
            item = f"new-{rng.integers(0, 60)}" if rng.random() < 0.7 else f"base-{rng.integers(0, N_BASE)}"
            log.append([ItemWrite.upsert(item, {"title": item}, unit(rng, 1)[0], version)])
            alive.add(item)
        else:
            item = sorted(alive)[int(rng.integers(0, len(alive)))]
            log.append([ItemWrite.delete(item)])
            alive.discard(item)


# ------------------------------------------------------------------------------------ applying


def test_upsert_update_delete_by_id() -> None:
    live = LiveIndex(base_index(), "b1", "1")
    rng = np.random.default_rng(1)
    a, a2, b = unit(rng, 3)
    live.apply([change(1, "upsert", "new-a", a), change(2, "upsert", "base-3", b)])
    assert top1(live, a) == "new-a" and top1(live, b) == "base-3" and live.ntotal == N_BASE + 1
    live.apply([change(3, "upsert", "new-a", a2), change(4, "delete", "base-5")])
    assert top1(live, a2) == "new-a"
    assert "base-5" not in live and live.is_deleted("base-5") and live.ntotal == N_BASE
    assert live.live_item("new-a").fields == {"title": "new-a at 3"}  # type: ignore[union-attr]
    assert live.applied_seq == 4


def test_each_apply_step_is_stamped_with_when_searches_see_it() -> None:
    """``applied_steps``: the seq each step reached and when, taken after the step's lock was
    released; replays that add nothing add no step."""
    live = LiveIndex(base_index(), "b1", "1")
    vecs = unit(np.random.default_rng(4), 3)
    t0 = time.time()
    live.apply([change(1, "upsert", "a", vecs[0]), change(2, "upsert", "b", vecs[1])])
    with live.reading():  # a search holds the index: the next step is not visible until it ends
        stepping = threading.Thread(target=live.apply, args=([change(4, "upsert", "c", vecs[2])],))
        stepping.start()
        stepping.join(timeout=0.5)
        assert stepping.is_alive() and [s for s, _ in live.applied_steps()] == [2]
        released = time.time()
    stepping.join(timeout=30)
    live.apply([change(2, "upsert", "b", vecs[1])])  # already applied: no step
    live.apply([], upto=6)  # the log moved past pruned changes: a step
    steps = live.applied_steps()
    assert [s for s, _ in steps] == [2, 4, 6]
    assert t0 <= steps[0][1] <= released <= steps[1][1] <= steps[2][1] <= time.time()
    assert [s for s, _ in live.applied_steps(after=2)] == [4, 6]


def test_replaying_any_prefix_again_changes_nothing() -> None:
    rng = np.random.default_rng(2)
    vecs = unit(rng, 4)
    changes = [
        change(1, "upsert", "x", vecs[0]),
        change(2, "upsert", "y", vecs[1]),
        change(3, "delete", "x"),
        change(5, "upsert", "x", vecs[2]),  # a gap: a pruned log has them
        change(6, "delete", "base-0"),
    ]
    once = LiveIndex(base_index(), "b1", "1")
    once.apply(changes)
    again = LiveIndex(base_index(), "b1", "1")
    again.apply(changes[:3])
    assert again.apply(changes) == 2  # only 5 and 6 are new
    assert again.apply(changes) == 0
    assert state(again) == state(once)
    assert top1(again, vecs[2]) == "x"


def test_a_batch_equals_its_changes_one_by_one() -> None:
    rng = np.random.default_rng(3)
    ops = []
    for seq in range(1, 80):
        item = f"i{rng.integers(0, 10)}"
        ops.append(change(seq, "delete", item) if rng.random() < 0.3 else change(seq, "upsert", item, unit(rng, 1)[0]))
    batched = LiveIndex(base_index(), "b1", "1")
    batched.apply(ops)
    single = LiveIndex(base_index(), "b1", "1")
    for c in ops:
        single.apply([c])
    assert state(batched) == state(single)
    q = unit(rng, 5)
    assert batched.search(q, 10)[0] == single.search(q, 10)[0]


def test_out_of_order_changes_are_refused() -> None:
    live = LiveIndex(base_index(), "b1", "1")
    v = unit(np.random.default_rng(4), 1)[0]
    with pytest.raises(ValueError, match="seq order"):
        live.apply([change(2, "upsert", "a", v), change(1, "upsert", "b", v)])
    assert live.applied_seq == 0 and live.ntotal == N_BASE


def test_an_embedding_of_another_model_version_is_refused() -> None:
    live = LiveIndex(base_index(version="2"), "b2", "2")
    v = unit(np.random.default_rng(5), 1)[0]
    with pytest.raises(EmbeddingVersionError, match="model version 2"):
        live.apply([change(1, "upsert", "ok", v, "2"), change(2, "upsert", "old", v, "1")])
    with pytest.raises(EmbeddingVersionError):
        live.apply([change(1, "upsert", "none", None)])
    assert live.ntotal == N_BASE and live.applied_seq == 0  # nothing of the refused batches


def test_hnsw_is_refused_with_the_reason() -> None:
    with pytest.raises(UnsupportedOperationError, match="HNSW.*Flat or IVF"):
        LiveIndex(base_index("HNSW16"), "b1", "1")


def test_ivf_index_follows_updates() -> None:
    live = LiveIndex(base_index("IVF8,Flat"), "b1", "1")
    live.index.set_search_params(nprobe=8)
    rng = np.random.default_rng(6)
    vecs = unit(rng, 30)
    live.apply([change(i + 1, "upsert", f"base-{i}", vecs[i]) for i in range(30)])
    assert all(top1(live, vecs[i]) == f"base-{i}" for i in range(30))
    assert live.ntotal == N_BASE


def test_listeners_hear_every_label_change() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.labels: dict[str, int] = {}
            self.events: list[tuple[str, str]] = []

        def set_item(self, item_id: str, label: int, fields: Any) -> None:
            self.labels[item_id] = label
            self.events.append(("set", item_id))

        def remove_item(self, item_id: str, label: int) -> None:
            assert self.labels.get(item_id, label) == label
            self.labels.pop(item_id, None)
            self.events.append(("remove", item_id))

    live = LiveIndex(base_index(), "b1", "1")
    rec = Recorder()
    live.add_listener(rec)
    v = unit(np.random.default_rng(7), 2)
    live.apply([change(1, "upsert", "a", v[0])])
    live.apply([change(2, "upsert", "a", v[1]), change(3, "delete", "base-1")])
    # One step removes first, then adds: an update is a remove of the old label and a set of the new.
    assert rec.events == [("set", "a"), ("remove", "a"), ("remove", "base-1"), ("set", "a")]
    assert rec.labels["a"] == int(live.idmap.lookup(["a"])[0])


def test_searches_never_see_an_update_half_done() -> None:
    """While a thread keeps re-upserting 20 items, every concurrent search over all items still
    finds each of them exactly once (an update is a remove + add; a torn read would miss one)."""
    live = LiveIndex(base_index(), "b1", "1")
    rng = np.random.default_rng(8)
    ids = [f"hot-{i}" for i in range(20)]
    live.apply([change(i + 1, "upsert", item, unit(rng, 1)[0]) for i, item in enumerate(ids)])
    stop = threading.Event()
    problems: list[str] = []

    def writer() -> None:
        seq = live.applied_seq
        local = np.random.default_rng(9)
        while not stop.is_set():
            vecs = unit(local, len(ids))
            live.apply([change(seq + 1 + j, "upsert", item, vecs[j]) for j, item in enumerate(ids)])
            seq += len(ids)

    t = threading.Thread(target=writer)
    # Switch threads as often as possible, so that without the lock a search would land between
    # an update's remove and its add within a few hundred tries.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t.start()
    try:
        for _ in range(500):
            found, _ = live.search(unit(rng, 1), N_BASE + len(ids))
            hot = [i for i in found[0] if i.startswith("hot-")]
            if sorted(hot) != sorted(ids):
                problems.append(f"saw {len(hot)} of the {len(ids)} hot items: {sorted(hot)}")
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(interval)
    assert not problems, problems[:3]


# ---------------------------------------------------------------------------- restart, compaction


def test_restart_is_the_newest_snapshot_plus_the_log(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    with open_changelog("", tmp_path / "live") as log:
        store = SnapshotStore(tmp_path / "live")
        serving = restore(base_index(), "b1", "1", log, store)
        write_random(log, rng, 120)
        catch_up(serving, log)
        seq, snap = store.write(serving)
        assert seq == 120 and (snap / "index" / "metadata.json").is_file()
        write_random(log, rng, 80)  # after the snapshot: replayed from the log
        catch_up(serving, log)

        restarted = restore(base_index(), "b1", "1", log, store)  # loads seq-120, replays 80
        from_scratch = restore(base_index(), "b1", "1", log, None)  # base + the whole log
    for other in (restarted, from_scratch):
        assert state(other) == state(serving)
        q = unit(rng, 20)
        assert other.search(q, 10)[0] == serving.search(q, 10)[0]


def test_compaction_folds_the_log_and_serves_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    with open_changelog("", tmp_path / "live") as log:
        store = SnapshotStore(tmp_path / "live")
        live = restore(base_index(), "b1", "1", log, store)
        write_random(log, rng, 300)
        catch_up(live, log)
        before = len(log.read_since(0))
        seq, _ = compact(live, log, store)
        assert len(log.read_since(0)) < before  # superseded changes are gone
        assert len({c.item_id for c in log.read_since(0)}) == len(log.read_since(0))
        write_random(log, rng, 30)
        catch_up(live, log)
        # Every way back gives what is served: snapshot + tail, base + pruned log.
        for again in (restore(base_index(), "b1", "1", log, store), restore(base_index(), "b1", "1", log, None)):
            assert state(again) == state(live)
        # Two compactions keep two snapshots by default; a third drops the oldest.
        for _ in range(2):
            write_random(log, rng, 10)
            catch_up(live, log)
            compact(live, log, store)
        assert [s for s, _ in store.list("b1")][-1] == live.applied_seq and len(store.list("b1")) == 2


def test_a_new_model_version_re_embeds_every_live_item(tmp_path: Path) -> None:
    """restore() onto model 2's base: each live item embedded once by the given encoder (stored in
    the log for the other replicas), old vectors never used; an unchanged log needs no encoder."""
    rng = np.random.default_rng(12)
    with open_changelog("", tmp_path / "live") as log:
        live1 = restore(base_index(version="1"), "b1", "1", log, None)
        write_random(log, rng, 60, version="1")
        catch_up(live1, log)
        calls: list[int] = []

        def embed_v2(payloads: list[dict[str, Any]]) -> np.ndarray:
            calls.append(len(payloads))
            # a deterministic "model 2": a hash of the title
            return np.stack([unit(np.random.default_rng(abs(hash(p["title"])) % 2**32), 1)[0] for p in payloads])

        live2 = restore(base_index(version="2"), "b2", "2", log, None, embed=embed_v2)
        assert sum(calls) == len(live1.live_items())  # each live item once, superseded ones never
        assert state(live2)[:3] == state(live1)[:3]
        for item_id, item in live2.live_items().items():
            expect = embed_v2([{"title": item.fields["title"]}])[0]
            assert top1(live2, expect) == item_id
            assert np.allclose(live2.vector(item_id), expect)  # type: ignore[arg-type]
        # A second replica on model 2 reuses the stored vectors.
        calls.clear()
        restore(base_index(version="2"), "b2", "2", log, None, embed=embed_v2)
        assert calls == []
        with pytest.raises(EmbeddingVersionError, match="no item encoder"):
            restore(base_index(version="3"), "b3", "3", log, None)


def test_filtered_search_follows_live_writes() -> None:
    """A live item's attributes (carried in its fields) are filterable as soon as it is applied,
    and gone with it: the filter bitmaps follow the log."""
    from itemsage.config import FilterableAttribute
    from itemsage.index.attributes import AttributeTable, specs_from_config

    index = base_index()
    specs = specs_from_config(
        {"gender": FilterableAttribute(field="size_type"), "price": FilterableAttribute(type="number")}
    )
    labels = np.asarray(index.idmap.lookup([f"base-{i}" for i in range(N_BASE)]), np.int64)
    index.attach_attributes(
        AttributeTable.from_columns(specs, labels, {"size_type": ["Men"] * N_BASE, "price": [10.0] * N_BASE})
    )
    live = LiveIndex(index, "b1", "1")
    v = unit(np.random.default_rng(7), 1)[0]
    new = Change(1, "upsert", "new-w", {"title": "w", "size_type": "Women", "price": 99.5}, (), "", v, "1", 0.0)  # type: ignore[arg-type]
    live.apply([new])
    women = live.select({"gender": "Women"})
    assert live.search(v[None, :], 5, where=women)[0][0] == ["new-w"]
    assert live.search(v[None, :], 5, where=live.select({"price": {"gte": 50}}))[0][0] == ["new-w"]
    live.apply([change(2, "delete", "new-w")])
    assert live.search(v[None, :], 5, where=live.select({"gender": "Women"}))[0][0] == []
