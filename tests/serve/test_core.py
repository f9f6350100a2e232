"""The retrieval core in-process: version specs, loading checks, and atomic version swaps."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from itemsage.config import ServeConfig
from itemsage.index import IndexMismatchError
from itemsage.serve.core import ServingSpec, load_state
from itemsage.serve.local import local_retriever


def spec(d: dict[str, Path], v: int, **extra: str) -> ServingSpec:
    return ServingSpec.from_user_config({"model_uri": str(d[f"model_{v}"]), "index_uri": str(d[f"index_{v}"]), **extra})


def test_user_config_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown user_config key.*model_url"):
        ServingSpec.from_user_config({"model_url": "x", "index_uri": "y"})
    with pytest.raises(ValueError, match="user_config.index_uri is required"):
        ServingSpec.from_user_config({"model_uri": "x"})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = ServingSpec.from_user_config({"model_uri": "m", "index_uri": "models:/itemsage/3", "features": "f"})
    r = s.resolved("/base")
    assert (r.model_uri, r.index_uri, r.features) == ("/base/m", "models:/itemsage/3", "/base/f")
    assert r.mlflow_tracking_uri == "sqlite:////base/mlflow.db"  # replicas do not share our cwd
    remote = ServingSpec.from_user_config({"model_uri": "m", "index_uri": "i", "mlflow_tracking_uri": "http://mlflow:5000"})
    assert remote.resolved("/base").mlflow_tracking_uri == "http://mlflow:5000"


def test_load_refuses_an_index_of_another_model(
    tiny_serving: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model resolves to registry version 3; the index says it holds version 2's embeddings."""
    import itemsage.serve.core as core
    from itemsage.trained import ModelRef

    index = tmp_path / "index"
    shutil.copytree(tiny_serving["index_1"], index)
    meta = (index / "metadata.json").read_text().replace('"model_version": null', '"model_version": "2"')
    (index / "metadata.json").write_text(meta)
    registered = ModelRef(str(tiny_serving["model_1"]), "itemsage", "3", registered=True)
    monkeypatch.setattr(core, "resolve_model_ref", lambda uri, override=None: registered)
    with pytest.raises(IndexMismatchError, match="version '3' was expected"):
        load_state(ServingSpec(str(tiny_serving["model_1"]), str(index)))


def test_load_refuses_an_index_over_another_catalog(tiny_serving: dict[str, Path], tmp_path: Path) -> None:
    from itemsage.index import build_index

    other = build_index(np.eye(32, dtype=np.float32)[:3], ["a", "b", "c"], "Flat", use_gpu=False)
    other.save(tmp_path / "index")
    with pytest.raises(ValueError, match="3 of 3 indexed items are not in the catalog"):
        load_state(ServingSpec(str(tiny_serving["model_1"]), str(tmp_path / "index")))


def test_versions_are_reported(tiny_serving: dict[str, Path]) -> None:
    s1 = load_state(spec(tiny_serving, 1).resolved("/"))
    s2 = load_state(spec(tiny_serving, 2, index_version="second").resolved("/"))
    assert s1.model_version != s2.model_version  # different weights, different content hash
    assert s2.index_version == "second" and s1.index_version != "second"
    assert s1.versions()["index"]["ntotal"] == 60
    assert s1.health()["status"] == "ok"


def test_swap_is_atomic_under_concurrent_requests(tiny_serving: dict[str, Path]) -> None:
    """Searches racing a v1 -> v2 swap each come from exactly one version: the answer's own
    version, re-run offline with that version's model and index, gives the same ranking."""
    retriever = local_retriever(ServeConfig())
    queries = [f"{c} {t}" for c in ("black", "blue", "red") for t in ("shoe", "shirt", "watch")]

    async def run() -> tuple[list[tuple[str, dict]], list[BaseException]]:
        await retriever.swap(spec(tiny_serving, 1))
        answers: list[tuple[str, dict]] = []
        errors: list[BaseException] = []

        swapped = asyncio.Event()

        async def client(i: int) -> None:
            # Bounded: runs until two of its own requests started after the swap (50 at most).
            after = 0
            for j in range(50):
                if swapped.is_set():
                    after += 1
                q = queries[(i + j) % len(queries)]
                try:
                    answers.append((q, await retriever.search(q, 5)))
                except BaseException as e:  # noqa: BLE001 - counted, the test fails on any
                    errors.append(e)
                if after >= 2:
                    return

        clients = [asyncio.create_task(client(i)) for i in range(4)]
        await asyncio.sleep(0)  # every client's first request pins version 1
        await retriever.swap(spec(tiny_serving, 2))
        swapped.set()
        await asyncio.gather(*clients)
        return answers, errors

    answers, errors = asyncio.run(run())
    assert not errors
    by_version = {}
    for v in (1, 2):
        st = load_state(spec(tiny_serving, v).resolved("/"))
        by_version[(st.model_version, st.index_version)] = st
    seen = {(a["model_version"], a["index_version"]) for _, a in answers}
    assert seen <= set(by_version), seen
    assert len(seen) == 2, "the swap happened while requests were running, so both versions answer"
    enc = retriever.encoding.enc  # type: ignore[attr-defined]
    expected = {}
    for key, st in by_version.items():
        embs = enc.text_batch([enc.bundle(st.model)] * len(queries), queries)
        expected.update({(key, q): [h.item_id for h in st.search(e, 5)] for q, e in zip(queries, embs)})
    for q, a in answers:
        key = (a["model_version"], a["index_version"])
        assert [h["item_id"] for h in a["results"]] == expected[(key, q)]


def test_failed_swap_keeps_serving_the_old_version(tiny_serving: dict[str, Path], tmp_path: Path) -> None:
    retriever = local_retriever(ServeConfig())

    async def run() -> None:
        s1 = await retriever.swap(spec(tiny_serving, 1))
        with pytest.raises(FileNotFoundError):
            await retriever.swap(ServingSpec(str(tiny_serving["model_2"]), str(tmp_path / "nope")))
        assert retriever.state is s1
        answer = await retriever.search("black shoe", 3)
        assert answer["model_version"] == s1.model_version

    asyncio.run(run())


def test_similar_and_recommend_exclude_their_inputs(tiny_serving: dict[str, Path]) -> None:
    retriever = local_retriever(ServeConfig())

    async def run() -> None:
        await retriever.swap(spec(tiny_serving, 1))
        ids = retriever.state.catalog.ids()
        sim = await retriever.similar(59, item_id=ids[0])
        assert len(sim["results"]) == 59 and ids[0] not in {h["item_id"] for h in sim["results"]}
        text_only = ids[4]  # every fifth item has no image: the query is its item embedding
        assert (await retriever.similar(3, item_id=text_only))["surface"] == "item"
        rec = await retriever.recommend(ids[:10], 100)
        assert len(rec["results"]) == 50 and not set(ids[:10]) & {h["item_id"] for h in rec["results"]}

    asyncio.run(run())
