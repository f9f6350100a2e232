"""The write endpoints through the real serving core, in-process: the tiny model and Flat index
with ``serve.live`` on (SQLite change log in a temporary directory), the real item tower and
image backbone embedding the writes.

Each bad-input case must leave the change log exactly where it was (its head seq): "nothing
stored" is checked where it would show. Visibility across Retriever *replicas* needs Ray Serve
(test_live_serve.py); here one in-process Retriever is enough for the HTTP semantics.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from itemsage.config import LiveConfig, ServeConfig

TOKEN = "live-http-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALL = 1000  # more than the tiny catalog holds: every item is returned


@pytest.fixture(scope="module")
def app(tiny_serving: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any]]:
    from itemsage.serve.local import create_local_app

    live = LiveConfig(enabled=True, dir=str(tmp_path_factory.mktemp("live")))
    cfg = ServeConfig(write_token=TOKEN, live=live)
    version = {"model_uri": str(tiny_serving["model_1"]), "index_uri": str(tiny_serving["index_1"])}
    application = create_local_app(version, cfg)
    with TestClient(application, raise_server_exceptions=False) as client:
        yield client, application.state.retriever


def head(retriever: Any) -> int:
    return int(retriever.live.log.head())


def applied(retriever: Any, seq: int, timeout_s: float = 30.0) -> None:
    """Until the replica's index holds ``seq`` (its log tail applies it within a poll interval)."""
    deadline = time.monotonic() + timeout_s
    while retriever.state.index.applied_seq < seq:
        assert time.monotonic() < deadline, f"seq {seq} not applied in {timeout_s}s"
        time.sleep(0.01)


def search_ids(client: TestClient, query: str = "shirt") -> list[str]:
    r = client.post("/search", json={"query": query, "k": ALL})
    assert r.status_code == 200, r.text
    return [h["item_id"] for h in r.json()["results"]]


def jpeg(colour: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, "JPEG")
    return buf.getvalue()


def test_put_is_served_and_delete_removes_it(app: tuple[TestClient, Any]) -> None:
    client, retriever = app
    r = client.put("/items/live-a", json={"title": "navy linen shirt", "colors": "navy"}, headers=AUTH)
    assert r.status_code == 200, r.text
    ack = r.json()
    assert ack["op"] == "upsert" and ack["seq"] == head(retriever) and ack["model_version"]
    applied(retriever, ack["seq"])
    assert "live-a" in search_ids(client)
    item = client.get("/items/live-a").json()
    assert item["title"] == "navy linen shirt" and item["fields"]["colors"] == "navy"
    known = search_ids(client)[0]
    assert "live-a" in [
        h["item_id"] for h in client.post("/similar", json={"item_id": known, "k": ALL}).json()["results"]
    ]
    r = client.delete("/items/live-a", headers=AUTH)
    assert r.status_code == 200 and r.json()["op"] == "delete" and r.json()["seq"] > ack["seq"]
    applied(retriever, r.json()["seq"])
    assert "live-a" not in search_ids(client)
    assert client.get("/items/live-a").status_code == 404


def test_a_multipart_photo_is_embedded_by_the_backbone(app: tuple[TestClient, Any]) -> None:
    client, retriever = app
    r = client.put(
        "/items/live-photo",
        data={"title": "blue cotton tee"},
        files={"image": ("p.jpg", jpeg(), "image/jpeg")},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    applied(retriever, r.json()["seq"])
    item = client.get("/items/live-photo").json()
    assert len(item["image_urls"]) == 1
    img = client.get(item["image_urls"][0])
    assert img.status_code == 200 and img.content == jpeg()
    # The photo changes the embedding: the same text without it is another vector.
    with_photo = retriever.state.index.vector("live-photo")
    r = client.put("/items/live-photo", json={"title": "blue cotton tee"}, headers=AUTH)
    applied(retriever, r.json()["seq"])
    assert not np.allclose(with_photo, retriever.state.index.vector("live-photo"))


def test_the_same_put_twice_is_one_item_with_the_same_embedding(app: tuple[TestClient, Any]) -> None:
    client, retriever = app
    body = {"title": "olive wool beanie", "materials": "wool", "attributes": {"price": 12.5}}
    first = client.put("/items/live-twice", json=body, headers=AUTH).json()
    applied(retriever, first["seq"])
    vec, n = retriever.state.index.vector("live-twice").copy(), retriever.state.index.ntotal
    second = client.put("/items/live-twice", json=body, headers=AUTH).json()
    assert second["seq"] > first["seq"]
    applied(retriever, second["seq"])
    assert retriever.state.index.ntotal == n
    assert search_ids(client, "beanie").count("live-twice") == 1
    np.testing.assert_array_equal(retriever.state.index.vector("live-twice"), vec)


def test_bad_input_stores_nothing(app: tuple[TestClient, Any]) -> None:
    client, retriever = app
    before = head(retriever)
    not_an_image = base64.b64encode(b"\xff\xd8\xff\xe0 a truncated jpeg").decode()
    cases = [
        (client.put, "/items/bad-1", {"json": {"title": "x", "images": [not_an_image]}}, 422),
        (
            client.put,
            "/items/bad-2",
            {"data": {"title": "x"}, "files": {"image": ("a.jpg", b"GIF89a junk", "image/gif")}},
            422,
        ),
        (client.put, "/items/bad-3", {"json": {"brand": "acme"}}, 422),
        (client.put, "/items/bad-4", {"json": {"title": " "}}, 422),
        (client.delete, "/items/no-such-item", {}, 404),
        (
            client.post,
            "/items/bulk",
            {"json": {"items": [{"item_id": "bad-5", "title": "ok"}], "delete": ["no-such-item"]}},
            404,
        ),
        (
            client.post,
            "/items/bulk",
            {
                "json": {
                    "items": [
                        {"item_id": "bad-6", "title": "ok"},
                        {"item_id": "bad-7", "title": "x", "images": [not_an_image]},
                    ]
                }
            },
            422,
        ),
    ]
    for call, path, kw, status in cases:
        r = call(path, headers=AUTH, **kw)
        assert r.status_code == status, (path, r.text)
    assert head(retriever) == before, "a refused write reached the change log"
    for i in range(1, 8):
        assert client.get(f"/items/bad-{i}").status_code == 404


def test_a_base_item_can_be_deleted_and_written_again(app: tuple[TestClient, Any]) -> None:
    client, retriever = app
    base = search_ids(client)[0]
    r = client.delete(f"/items/{base}", headers=AUTH)
    assert r.status_code == 200
    applied(retriever, r.json()["seq"])
    assert base not in search_ids(client) and client.get(f"/items/{base}").status_code == 404
    assert client.delete(f"/items/{base}", headers=AUTH).status_code == 404  # already gone
    r = client.put(f"/items/{base}", json={"title": "back again"}, headers=AUTH)
    applied(retriever, r.json()["seq"])
    assert client.get(f"/items/{base}").json()["title"] == "back again"


def test_bulk_upserts_and_deletes(app: tuple[TestClient, Any]) -> None:
    client, retriever = app
    items = [
        {"item_id": f"bulk-{i}", "title": f"bulk shirt {i}", "attributes": {"sizes": ["S", "M"]}} for i in range(40)
    ]
    r = client.post("/items/bulk", json={"items": items}, headers=AUTH)
    assert r.status_code == 200 and r.json()["upserted"] == 40, r.text
    r = client.post(
        "/items/bulk",
        json={"items": [{"item_id": "bulk-new", "title": "new"}], "delete": [f"bulk-{i}" for i in range(10)]},
        headers=AUTH,
    )
    assert r.status_code == 200 and (r.json()["upserted"], r.json()["deleted"]) == (1, 10)
    applied(retriever, r.json()["seq"])
    ids = set(search_ids(client))
    assert {f"bulk-{i}" for i in range(10, 40)} | {"bulk-new"} <= ids and not {f"bulk-{i}" for i in range(10)} & ids


def test_concurrent_puts_and_deletes_the_last_in_the_log_wins(app: tuple[TestClient, Any]) -> None:
    client, retriever = app
    client.put("/items/race", json={"title": "race start"}, headers=AUTH)
    acked: list[tuple[int, str, str | None]] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for n in range(6):
            if (w + n) % 3 == 0:
                r, title = client.delete("/items/race", headers=AUTH), None
            else:
                title = f"race {w}-{n}"
                r = client.put("/items/race", json={"title": title}, headers=AUTH)
            assert r.status_code in (200, 404), r.text
            if r.status_code == 200:
                with lock:
                    acked.append((r.json()["seq"], r.json()["op"], title))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    seqs = [s for s, _, _ in acked]
    assert len(acked) >= 18 and len(set(seqs)) == len(seqs)
    last_seq, last_op, last_title = max(acked)
    applied(retriever, last_seq)
    r = client.get("/items/race")
    if last_op == "delete":
        assert r.status_code == 404
    else:
        assert r.status_code == 200 and r.json()["title"] == last_title


def test_writes_are_refused_when_live_is_off(tiny_serving: dict[str, Path]) -> None:
    from itemsage.serve.local import create_local_app

    version = {"model_uri": str(tiny_serving["model_1"]), "index_uri": str(tiny_serving["index_1"])}
    with TestClient(create_local_app(version, ServeConfig(write_token=TOKEN)), raise_server_exceptions=False) as c:
        r = c.put("/items/x", json={"title": "x"}, headers=AUTH)
        assert r.status_code == 503 and "serve.live" in r.json()["detail"]


def test_the_python_client_and_sync_speak_this_api(app: tuple[TestClient, Any]) -> None:
    """``itemsage.api.catalog.ServedCatalog`` (what ``experiments/sync_catalog.py`` uses against a
    server) through these endpoints: flat attributes go under ``attributes``, deletes through the
    bulk endpoint, digests from ``GET /catalog/digests``."""
    from itemsage.api.catalog import ServedCatalog

    client, retriever = app
    assert client.get("/catalog/digests").status_code == 401
    served = ServedCatalog("http://testserver", token=TOKEN)
    served._http.close()
    served._http = client  # the TestClient is an httpx.Client on the in-process app
    client.headers.update(AUTH)
    try:
        up = served.upsert_items([{"item_id": "py-1", "title": "py shirt", "price": 20.0, "images": [jpeg()]}])
        gone = served.delete_items(["py-1"])
        assert up["upserted"] == 1 and gone["deleted"] == 1 and gone["seq"] > up["seq"]
        up = served.upsert_items([{"item_id": "py-2", "title": "py shirt 2", "gender": "women"}])
        applied(retriever, up["seq"])
        digests = served.item_digests()
    finally:
        del client.headers["Authorization"]
    assert "py-2" in digests and "py-1" not in digests and len(digests) == retriever.state.index.ntotal
    assert client.get("/items/py-2").json()["title"] == "py shirt 2"
