"""``/search`` and ``/similar`` in dense, lexical and hybrid mode through the in-process API (no Ray):
the tiny model and index with a lexical index built from its catalog, the mode named in every
answer, filters in every mode, a 422 for a mode that does not exist or that an index without words
cannot answer, and live writes found by their words."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from itemsage.config import HybridConfig, LiveConfig, ServeConfig
from itemsage.index import load_index
from itemsage.index.hybrid import fuse
from itemsage.index.lexical import lexical_for_index

TOKEN = "search-modes-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALL = 1000


@pytest.fixture(scope="module")
def worded_index(tiny_serving: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny index with its lexical index, as the index pipeline builds it (catalog.parquet)."""
    from itemsage.config import TEXT_FIELDS

    index = load_index(tiny_serving["index_1"], use_gpu=False)
    index.attach_lexical(lexical_for_index(index.idmap, str(tiny_serving["features"]), TEXT_FIELDS))
    return index.save(tmp_path_factory.mktemp("worded") / "index")


def client_for(tiny_serving: dict[str, Path], index: Path, cfg: ServeConfig | None = None) -> TestClient:
    from itemsage.serve.local import create_local_app

    version = {"model_uri": str(tiny_serving["model_1"]), "index_uri": str(index)}
    return TestClient(create_local_app(version, cfg), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(tiny_serving: dict[str, Path], worded_index: Path) -> Iterator[TestClient]:
    with client_for(tiny_serving, worded_index) as c:
        yield c


def search(c: TestClient, **body: Any) -> dict[str, Any]:
    r = c.post("/search", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def ids(answer: dict[str, Any]) -> list[str]:
    return [h["item_id"] for h in answer["results"]]


def titles_of(c: TestClient, answer: dict[str, Any]) -> list[str]:
    return [" ".join(c.get(f"/items/{i}").json()["fields"].values()).lower() for i in ids(answer)]


def test_each_mode_answers_and_says_so(client: TestClient) -> None:
    dense = search(client, query="black leather shoes", k=10, mode="dense")
    lexical = search(client, query="black leather shoes", k=10, mode="lexical")
    hybrid = search(client, query="black leather shoes", k=10, mode="hybrid")
    assert (dense["mode"], lexical["mode"], hybrid["mode"]) == ("dense", "lexical", "hybrid")
    assert lexical["results"] and all(
        any(w in text.split() for w in ("black", "leather", "shoes")) for text in titles_of(client, lexical)
    )
    scores = [h["score"] for h in lexical["results"]]
    assert scores == sorted(scores, reverse=True)
    # hybrid = reciprocal-rank fusion of both rankings read to the configured depth
    cfg = HybridConfig()
    deep_dense = ids(search(client, query="black leather shoes", k=cfg.depth, mode="dense"))
    deep_lexical = ids(search(client, query="black leather shoes", k=cfg.depth, mode="lexical"))
    assert ids(hybrid) == [i for i, _ in fuse(deep_dense, deep_lexical, cfg)[:10]]
    # no mode: the configured default
    assert search(client, query="black leather shoes", k=10)["mode"] == cfg.default_mode
    # no word of the query is indexed: lexical finds nothing, hybrid is the dense ranking
    assert search(client, query="zzqx", k=5, mode="lexical")["results"] == []
    assert ids(search(client, query="zzqx", k=5, mode="hybrid")) == ids(search(client, query="zzqx", k=5, mode="dense"))


def test_a_bad_mode_is_a_422(client: TestClient, tiny_serving: dict[str, Path]) -> None:
    r = client.post("/search", json={"query": "shoes", "mode": "sparse"})
    assert r.status_code == 422 and "dense" in r.text and "hybrid" in r.text
    assert client.post("/search", json={"query": "shoes", "mode": 1}).status_code == 422
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"]["mode"]
    assert "hybrid" in str(schema)
    # An index built without a lexical index: the default answers dense, an explicit lexical is a 422.
    with client_for(tiny_serving, tiny_serving["index_1"]) as plain:
        assert search(plain, query="shoes", k=3)["mode"] == "dense"
        r = plain.post("/search", json={"query": "shoes", "mode": "lexical"})
        assert r.status_code == 422 and "without" in r.json()["detail"]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_filters_apply_in_every_mode(client: TestClient, mode: str) -> None:
    gender = client.get("/facets").json()["attributes"][0]
    assert gender["name"] == "gender"
    value = "Women"
    assert value in [v["value"] for v in gender["values"]]
    answer = search(client, query="men women", k=ALL, mode=mode, filters={"gender": value})
    assert answer["mode"] == mode and answer["results"]
    for item in ids(answer):
        assert client.get(f"/items/{item}").json()["fields"]["size_type"] == value
    everything = search(client, query="men women", k=ALL, mode=mode)
    assert len(answer["results"]) < len(everything["results"])


def similar(c: TestClient, **body: Any) -> dict[str, Any]:
    r = c.post("/similar", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_similar_items_in_each_mode_never_list_the_item(client: TestClient) -> None:
    """/similar by id: dense is the item's own embedding, lexical searches with the item's own text,
    hybrid fuses both as /search does; the item itself is never one of its similar items."""
    item = ids(search(client, query="black leather shoes", k=1, mode="lexical"))[0]
    words = set(" ".join(client.get(f"/items/{item}").json()["fields"].values()).lower().split())
    answers = {m: similar(client, item_id=item, k=10, mode=m) for m in ("dense", "lexical", "hybrid")}
    for mode, answer in answers.items():
        assert answer["mode"] == mode and answer["results"] and item not in ids(answer)
    assert all(words & set(text.split()) for text in titles_of(client, answers["lexical"]))
    cfg = HybridConfig()
    deep_dense = ids(similar(client, item_id=item, k=cfg.depth, mode="dense"))
    deep_lexical = ids(similar(client, item_id=item, k=cfg.depth, mode="lexical"))
    assert ids(answers["hybrid"]) == [i for i, _ in fuse(deep_dense, deep_lexical, cfg)[:10]]
    assert similar(client, item_id=item, k=10)["mode"] == cfg.similar_default_mode
    # A photo has no text: only dense answers it.
    r = client.post("/similar", json={"image": "aGk=", "mode": "lexical"})
    assert r.status_code == 422 and "dense mode only" in r.json()["detail"]


def test_similar_default_mode_is_configurable(tiny_serving: dict[str, Path], worded_index: Path) -> None:
    cfg = ServeConfig(hybrid=HybridConfig(similar_default_mode="hybrid"))
    with client_for(tiny_serving, worded_index, cfg) as c:
        item = ids(search(c, query="shoes", k=1, mode="dense"))[0]
        assert similar(c, item_id=item, k=5)["mode"] == "hybrid"
    # Without a lexical index the default falls back to dense; asking for hybrid is a 422.
    with client_for(tiny_serving, tiny_serving["index_1"], cfg) as plain:
        assert similar(plain, item_id=item, k=5)["mode"] == "dense"
        r = plain.post("/similar", json={"item_id": item, "mode": "hybrid"})
        assert r.status_code == 422 and "without" in r.json()["detail"]


def test_live_writes_are_found_lexically(tiny_serving: dict[str, Path], worded_index: Path, tmp_path: Path) -> None:
    cfg = ServeConfig(write_token=TOKEN, live=LiveConfig(enabled=True, dir=str(tmp_path / "live")))
    with client_for(tiny_serving, worded_index, cfg) as c:
        retriever = c.app.state.retriever  # type: ignore[attr-defined]

        def applied(seq: int) -> None:
            deadline = time.monotonic() + 30
            while retriever.state.index.applied_seq < seq:
                assert time.monotonic() < deadline, f"seq {seq} not applied"
                time.sleep(0.01)

        r = c.put("/items/live-zx", json={"title": "quokka patterned raincoat"}, headers=AUTH)
        assert r.status_code == 200, r.text
        applied(r.json()["seq"])
        for mode in ("lexical", "hybrid"):
            assert ids(search(c, query="quokka raincoat", k=3, mode=mode))[0] == "live-zx"
        # A live item's similar items, by its words too (it is not in the model's feature store).
        r = c.put("/items/live-zy", json={"title": "quokka striped raincoat"}, headers=AUTH)
        applied(r.json()["seq"])
        for mode in ("lexical", "hybrid"):
            answer = similar(c, item_id="live-zy", k=3, mode=mode)
            assert answer["mode"] == mode and ids(answer)[0] == "live-zx"
        assert "live-zy" not in ids(similar(c, item_id="live-zy", k=ALL, mode="dense"))
        applied(c.delete("/items/live-zy", headers=AUTH).json()["seq"])
        r = c.put("/items/live-zx", json={"title": "plain grey raincoat"}, headers=AUTH)
        applied(r.json()["seq"])
        assert search(c, query="quokka", k=3, mode="lexical")["results"] == []
        r = c.delete("/items/live-zx", headers=AUTH)
        applied(r.json()["seq"])
        assert "live-zx" not in ids(search(c, query="plain grey raincoat", k=ALL, mode="lexical"))


def test_batched_searches_in_mixed_modes_equal_single_ones(client: TestClient) -> None:
    """The Serve Retriever batches concurrent searches through ``search_many``: each keeps its mode."""
    retriever = client.app.state.retriever  # type: ignore[attr-defined]
    queries, modes = ["black leather shoes", "red dress", "watch"], ["lexical", None, "dense"]
    many = client.portal.call(retriever.search_many, queries, [5, 5, 5], modes)  # type: ignore[union-attr]
    for query, mode, answer in zip(queries, modes, many):
        single = search(client, query=query, k=5, **({"mode": mode} if mode else {}))
        assert answer["mode"] == single["mode"] and ids(answer) == ids(single)
    assert retriever.search_mode(None) == HybridConfig().default_mode
