"""Live catalog writes through the serving core (in-process Retrievers on tiny_serving): writes
visible on every replica, bad input stores nothing, restart from snapshot + log, and a model swap
that keeps every live item, embedded by the new model only, writes during the swap included."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from itemsage.config import LiveConfig, ServeConfig
from itemsage.index.live import LiveIndex
from itemsage.serve.core import ModelSpec, ServingSpec
from itemsage.serve.errors import BadRequestError, InvalidImageError, ItemNotFoundError
from itemsage.serve.local import LocalEncoding, local_retriever
from itemsage.serve.service import Retriever

# Time-to-visible bound of the issue (p99 1 s); an in-process replica polls every 50 ms.
VISIBLE_S = 1.0


def spec(d: dict[str, Path], v: int) -> ServingSpec:
    return ServingSpec.from_user_config({"model_uri": str(d[f"model_{v}"]), "index_uri": str(d[f"index_{v}"])})


def cfg(live_dir: Path, **live: Any) -> ServeConfig:
    return ServeConfig(live=LiveConfig(enabled=True, dir=str(live_dir), **live))


async def replica(d: dict[str, Path], live_dir: Path, v: int = 1, **live: Any) -> Retriever:
    r = local_retriever(cfg(live_dir, **live))
    await r.swap(spec(d, v))
    return r


async def visible(r: Retriever, seq: int) -> float:
    """Seconds until replica ``r`` (its own tail task) has applied ``seq``; fails past VISIBLE_S."""
    start = time.perf_counter()
    while r.state.index.applied_seq < seq:
        if time.perf_counter() - start > VISIBLE_S:
            raise AssertionError(f"seq {seq} not applied after {VISIBLE_S}s (at {r.state.index.applied_seq})")
        await asyncio.sleep(0.005)
    return time.perf_counter() - start


async def close(*rs: Retriever) -> None:
    for r in rs:
        assert r.live is not None
        await r.live.close()


def item(item_id: str, title: str, **extra: Any) -> dict[str, Any]:
    return {"item_id": item_id, "title": title, "product_types": "Shoes", **extra}


def ids_of(answer: dict[str, Any]) -> list[str]:
    return [h["item_id"] for h in answer["results"]]


def test_writes_are_visible_on_every_replica(
    tiny_serving: dict[str, Path], tmp_path: Path, sample_image: bytes
) -> None:
    async def run() -> None:
        a, b = await replica(tiny_serving, tmp_path), await replica(tiny_serving, tmp_path)
        try:
            out = await a.upsert_items([item("live-1", "red leather running shoes", price=49.5, colors="red")])
            assert out["upserted"] == 1 and out["model_version"] == a.state.model_version
            await visible(a, out["seq"]), await visible(b, out["seq"])
            for r in (a, b):
                own = r.state.index.vector("live-1")
                assert ids_of(r.state.answer("search", 3, r.state.search(own, 3)))[0] == "live-1"
                info = await r.item("live-1")
                assert info["title"] == "red leather running shoes" and info["fields"]["colors"] == "red"
                similar = await r.similar(5, item_id="live-1")
                assert similar["surface"] == "item" and "live-1" not in ids_of(similar)
            # with an image: stored in the log, served from every replica
            out = await a.upsert_items([item("live-img", "white sneaker", images=[sample_image])])
            await visible(b, out["seq"])
            data, media = await b.item_image("live-img")
            assert data == sample_image and media == "image/jpeg"
            # delete a base item: gone from search and metadata on both replicas
            victim = a.state.catalog.base.ids()[0]
            out = await b.delete_items([victim])
            await visible(a, out["seq"])
            for r in (a, b):
                assert victim not in r.state.index
                with pytest.raises(ItemNotFoundError):
                    await r.item(victim)
            status = await a.live_status()
            assert status["live_items"] == 2 and status["deleted_items"] == 1 and status["applied_seq"] == out["seq"]
        finally:
            await close(a, b)

    asyncio.run(run())


def test_replicas_apply_the_log_while_their_event_loop_is_busy(tiny_serving: dict[str, Path], tmp_path: Path) -> None:
    """The tail is a thread of its own: a replica whose event loop is busy (back-to-back search
    batches) still applies the log, and ``applied_steps`` says when."""

    async def run() -> None:
        a, b = await replica(tiny_serving, tmp_path), await replica(tiny_serving, tmp_path)
        try:
            out = await a.upsert_items([item("busy-1", "navy linen shirt")])
            # Hold the one event loop both replicas run on, without yielding, until b has applied.
            deadline = time.monotonic() + 10 * VISIBLE_S
            while b.state.index.applied_seq < out["seq"]:
                assert time.monotonic() < deadline, "replica b did not apply the write while its loop was busy"
            steps = (await b.applied_steps(after=out["seq"] - 1))["steps"]
            assert steps and steps[0]["seq"] >= out["seq"] and steps[0]["applied_at"] <= time.time()
            status = await b.applied_steps()
            assert status["applied_seq"] >= out["seq"] and status["now"] >= steps[-1]["applied_at"]
        finally:
            await close(a, b)

    asyncio.run(run())


def test_bad_writes_store_nothing(tiny_serving: dict[str, Path], tmp_path: Path) -> None:
    async def run() -> None:
        r = await replica(tiny_serving, tmp_path)
        try:
            assert r.live is not None and r.live.log is not None
            with pytest.raises(BadRequestError, match="title is required"):
                await r.upsert_items([item("ok", "fine"), {"item_id": "no-title"}])
            with pytest.raises(InvalidImageError):
                await r.upsert_items([item("bad-img", "t", images=[b"this is not an image"])])
            with pytest.raises(BadRequestError, match="attribute name"):
                await r.upsert_items([item("x", "t", **{"bad key": 1})])
            with pytest.raises(ItemNotFoundError, match="nothing was deleted"):
                await r.delete_items([r.state.catalog.base.ids()[0], "no-such-item"])
            assert r.live.log.head() == 0
            assert "ok" not in r.state.index and r.state.catalog.base.ids()[0] in r.state.index
        finally:
            await close(r)

    asyncio.run(run())


def test_the_same_put_twice_is_one_item_with_one_embedding(tiny_serving: dict[str, Path], tmp_path: Path) -> None:
    async def run() -> None:
        r = await replica(tiny_serving, tmp_path)
        try:
            first = await r.upsert_items([item("twice", "blue denim jacket")])
            await visible(r, first["seq"])
            vec = r.state.index.vector("twice").copy()
            n = r.state.index.ntotal
            second = await r.upsert_items([item("twice", "blue denim jacket")])
            await visible(r, second["seq"])
            assert r.state.index.ntotal == n
            assert np.array_equal(r.state.index.vector("twice"), vec)
        finally:
            await close(r)

    asyncio.run(run())


def test_concurrent_put_and_delete_of_one_id_last_acknowledged_wins(
    tiny_serving: dict[str, Path], tmp_path: Path
) -> None:
    async def run() -> None:
        a, b = await replica(tiny_serving, tmp_path), await replica(tiny_serving, tmp_path)
        try:
            await a.upsert_items([item("contested", "green wool scarf")])
            results: list[tuple[str, int]] = []

            async def put(r: Retriever, i: int) -> None:
                out = await r.upsert_items([item("contested", f"green wool scarf v{i}")])
                results.append((f"v{i}", out["seq"]))

            async def delete(r: Retriever) -> None:
                try:
                    out = await r.delete_items(["contested"])
                    results.append(("deleted", out["seq"]))
                except ItemNotFoundError:
                    pass  # already deleted by the other replica: not acknowledged, not a write

            await asyncio.gather(put(a, 1), delete(b), put(b, 2), delete(a), put(a, 3))
            winner, last = max(results, key=lambda x: x[1])
            for r in (a, b):
                await visible(r, last)
                if winner == "deleted":
                    assert "contested" not in r.state.index
                else:
                    assert r.state.catalog.get("contested").title == f"green wool scarf {winner}"
        finally:
            await close(a, b)

    asyncio.run(run())


def test_a_restarted_replica_serves_the_same(tiny_serving: dict[str, Path], tmp_path: Path) -> None:
    async def run() -> None:
        r = await replica(tiny_serving, tmp_path, snapshot_every=5)
        try:
            for i in range(12):
                out = await r.upsert_items([item(f"r-{i}", f"restart item {i}")])
            await r.delete_items(["r-3", r.state.catalog.base.ids()[1]])
            await visible(r, out["seq"] + 1)
            before = (sorted(r.state.index.idmap.item_ids()), r.state.index.applied_seq)
        finally:
            await close(r)
        assert r.live is not None and r.live.store is not None and r.live.store.list(r.state.index.base_version)
        again = await replica(tiny_serving, tmp_path)  # newest snapshot + the log after it
        try:
            assert (sorted(again.state.index.idmap.item_ids()), again.state.index.applied_seq) == before
            assert again.state.catalog.get("r-7").title == "restart item 7"
        finally:
            await close(again)

    asyncio.run(run())


class GatedEncoding(LocalEncoding):
    """In-process encoders whose first item embedding for one model version waits at a gate, so
    a test can write while a model swap is re-embedding."""

    def __init__(self, enc: Any, gated_version: str) -> None:
        super().__init__(enc)
        self.gated_version = gated_version
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def item(self, spec: ModelSpec, payload: dict[str, Any]) -> np.ndarray:
        if spec.ref.version == self.gated_version and not self.release.is_set():
            self.reached.set()
            await self.release.wait()
        return await super().item(spec, payload)


def test_a_model_swap_keeps_live_items_with_the_new_models_embeddings_only(
    tiny_serving: dict[str, Path], tmp_path: Path, sample_image: bytes
) -> None:
    from itemsage.serve.encoders import LocalEncoders, catalog_item_embeddings
    from itemsage.trained import resolve_model_ref

    v2 = resolve_model_ref(str(tiny_serving["model_2"])).version

    async def run() -> None:
        c = cfg(tmp_path)
        encoders = LocalEncoders(c)
        encoding = GatedEncoding(encoders, v2)
        r = Retriever(c, encoding)
        await r.swap(spec(tiny_serving, 1))
        payloads = {
            "keep-1": item("keep-1", "yellow rain coat"),
            "keep-img": item("keep-img", "striped shirt", images=[sample_image]),
            "gone": item("gone", "to be deleted"),
        }
        base_ids = r.state.catalog.base.ids()
        payloads[base_ids[2]] = item(base_ids[2], "an updated base item")
        await r.upsert_items(list(payloads.values()))
        await r.delete_items(["gone", base_ids[3]])
        del payloads["gone"]
        v1 = r.state.model_version

        swap = asyncio.create_task(r.swap(spec(tiny_serving, 2)))
        await encoding.reached.wait()  # model 2 is re-embedding the live items; version 1 serves
        assert r.state.model_version == v1
        during = item("during-swap", "written while the swap re-embeds")
        out = await r.upsert_items([during])  # acknowledged with model 1's embedding
        payloads["during-swap"] = during
        encoding.release.set()
        await swap
        assert r.state.model_version == v2 != v1
        await visible(r, out["seq"])

        live = r.state.index
        assert isinstance(live, LiveIndex) and live.model_version == v2
        served = set(live.idmap.item_ids())
        assert set(payloads) <= served and not {"gone", base_ids[3]} & served
        # Every vector in the index is model 2's: live items from their payloads, base items
        # from the features (what the pipeline embedded).
        bundle2 = encoders.bundle(r.state.model)
        vectors, labels = live.index.flat_vectors()  # type: ignore[attr-defined]
        by_id = dict(zip(live.idmap.labels_to_ids(labels[None, :])[0], vectors))
        expected_live = {
            i: await LocalEncoding(encoders).item(r.state.model, {**p, "images": p.get("images", [])})
            for i, p in payloads.items()
        }
        base_rest = [i for i in served if i not in payloads]
        expected = {**dict(zip(base_rest, catalog_item_embeddings(bundle2, base_rest))), **expected_live}
        for item_id, vec in by_id.items():
            np.testing.assert_allclose(vec, expected[item_id], atol=1e-5, err_msg=item_id)
        await r.live.close()  # type: ignore[union-attr]

    asyncio.run(run())
