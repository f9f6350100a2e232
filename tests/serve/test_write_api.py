"""The HTTP side of catalog writes, no model: the bearer token, body parsing (JSON and multipart)
and the size/validation errors, over a backend that records what reaches it.

That a rejected request reaches no backend is the point of most tests here: a write refused at the
door must leave nothing behind. What the real core does with a write (log, index, every replica)
is tested in test_live_writes.py and, on Ray Serve, test_live_serve.py.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from itemsage.config import ServeConfig
from itemsage.serve.api import create_api
from itemsage.serve.auth import WriteToken

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RecordingBackend:
    """Answers like the core would, and records every call (reads answer a fixed empty result)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.seq = 0

    async def search(
        self, query: str, k: int, filters: dict[str, Any] | None = None, mode: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(("search", query))
        answer = {"surface": "search", "k": k, "results": [], "model_version": "1", "index_version": "i"}
        return {**answer, "_served": {"replica": "r1", "applied_seq": self.seq}}

    async def upsert_items(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(("upsert", items))
        self.seq += len(items)
        return {"seq": self.seq, "upserted": len(items), "model_version": "1"}

    async def delete_items(self, item_ids: list[str]) -> dict[str, Any]:
        self.calls.append(("delete", item_ids))
        self.seq += len(item_ids)
        return {"seq": self.seq, "deleted": len(item_ids)}

    async def write_items(self, upserts: list[dict[str, Any]], deletes: list[str]) -> dict[str, Any]:
        self.calls.append(("bulk", (upserts, deletes)))
        self.seq += len(upserts) + len(deletes)
        return {"upserted": len(upserts), "deleted": len(deletes), "seq": self.seq, "model_version": "1"}

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model_version": "1", "index_version": "i", "items": 1}


def client(cfg: ServeConfig | None = None) -> tuple[TestClient, RecordingBackend]:
    backend = RecordingBackend()
    app = create_api(backend, cfg or ServeConfig(write_token=TOKEN))  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False), backend


def png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


ITEM = {"title": "red canvas sneakers", "brand": "acme", "attributes": {"price": 49.5, "gender": "women"}}


# ------------------------------------------------------------------------------------- auth


def test_writes_need_the_token_and_reads_stay_open() -> None:
    c, backend = client()
    writes = [
        ("PUT", "/items/a1", {"json": ITEM}),
        ("DELETE", "/items/a1", {}),
        ("POST", "/items/bulk", {"json": {"delete": ["a1"]}}),
    ]
    for method, path, kw in writes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            r = c.request(method, path, headers=headers, **kw)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in r.text
    assert backend.calls == []  # nothing got past the door
    for method, path, kw in writes:
        assert c.request(method, path, headers=AUTH, **kw).status_code == 200, (method, path)
    assert [name for name, _ in backend.calls] == ["upsert", "delete", "bulk"]
    assert c.post("/search", json={"query": "shoes"}).status_code == 200
    assert c.get("/healthz").status_code == 200


def test_no_token_configured_refuses_every_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ITEMSAGE_WRITE_TOKEN", raising=False)
    c, backend = client(ServeConfig())
    r = c.put("/items/a1", json=ITEM, headers={"Authorization": "Bearer "})
    assert r.status_code == 403 and "ITEMSAGE_WRITE_TOKEN" in r.json()["detail"]
    assert c.put("/items/a1", json=ITEM, headers=AUTH).status_code == 403
    assert backend.calls == []


def test_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITEMSAGE_WRITE_TOKEN", TOKEN)
    c, _ = client(ServeConfig())
    assert c.put("/items/a1", json=ITEM).status_code == 401
    assert c.put("/items/a1", json=ITEM, headers=AUTH).status_code == 200
    # The config's token wins over the environment's.
    c, _ = client(ServeConfig(write_token="other"))
    assert c.put("/items/a1", json=ITEM, headers=AUTH).status_code == 401


def test_reads_can_require_the_token_too() -> None:
    c, _ = client(ServeConfig(write_token=TOKEN, reads_require_token=True))
    assert c.post("/search", json={"query": "shoes"}).status_code == 401
    assert c.post("/search", json={"query": "shoes"}, headers=AUTH).status_code == 200
    assert c.get("/healthz").status_code == 200  # probes stay open


def test_the_token_is_never_logged_or_shown(caplog: pytest.LogCaptureFixture) -> None:
    cfg = ServeConfig(write_token=TOKEN)
    assert TOKEN not in repr(cfg) and TOKEN not in str(cfg) and TOKEN not in repr(WriteToken.from_config(cfg))
    c, _ = client(cfg)
    with caplog.at_level(logging.DEBUG):
        c.put("/items/a1", json=ITEM, headers=AUTH)
        c.put("/items/a1", json=ITEM, headers={"Authorization": f"Bearer {TOKEN}x"})
        c.put("/items/a1", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert TOKEN not in caplog.text
    assert TOKEN not in json.dumps(c.get("/openapi.json").json())


# ------------------------------------------------------------------------------- bad input


def test_missing_or_blank_title_is_422_and_nothing_is_written() -> None:
    c, backend = client()
    for body in ({"brand": "acme"}, {"title": "   "}, {"title": ""}, {"title": "x", "colour": "red"}):
        r = c.put("/items/a1", json=body, headers=AUTH)
        assert r.status_code == 422, (body, r.text)
    r = c.put("/items/a1", files={"brand": (None, "acme")}, headers=AUTH)
    assert r.status_code == 422 and "title" in r.text
    r = c.post("/items/bulk", json={"items": [{"item_id": "a", "brand": "acme"}]}, headers=AUTH)
    assert r.status_code == 422
    assert backend.calls == []


def test_bodies_and_images_over_the_limit_are_413() -> None:
    cfg = ServeConfig(write_token=TOKEN, max_upload_bytes=1000, max_request_bytes=20_000)
    c, backend = client(cfg)
    big = b"\x89PNG" + b"0" * 1500
    r = c.put("/items/a1", json={**ITEM, "images": [base64.b64encode(big).decode()]}, headers=AUTH)
    assert r.status_code == 413, r.text
    r = c.put("/items/a1", data={"title": "x"}, files={"image": ("a.png", big, "image/png")}, headers=AUTH)
    assert r.status_code == 413, r.text
    r = c.put("/items/a1", json={"title": "x" * 30_000}, headers=AUTH)  # whole body over the limit
    assert r.status_code == 413
    r = c.post("/items/bulk", json={"items": [{**ITEM, "item_id": f"i{n}"} for n in range(300)]}, headers=AUTH)
    assert r.status_code == 413
    assert backend.calls == []


def test_bulk_limits_and_repeated_ids() -> None:
    c, backend = client(ServeConfig(write_token=TOKEN, max_bulk_items=3))
    assert c.post("/items/bulk", json={}, headers=AUTH).status_code == 422
    four = {"items": [{**ITEM, "item_id": f"i{n}"} for n in range(2)], "delete": ["d1", "d2"]}
    assert c.post("/items/bulk", json=four, headers=AUTH).status_code == 422
    twice = {"items": [{**ITEM, "item_id": "i1"}], "delete": ["i1"]}
    r = c.post("/items/bulk", json=twice, headers=AUTH)
    assert r.status_code == 422 and "i1" in r.text
    assert backend.calls == []
    r = c.post("/items/bulk", json={"items": [{**ITEM, "item_id": "i1"}], "delete": ["d1"]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["upserted"] == 1 and r.json()["deleted"] == 1


def test_multipart_put_carries_fields_attributes_and_images() -> None:
    c, backend = client()
    image = png()
    r = c.put(
        "/items/a 1",
        data={"title": "red sneakers", "brand": "acme", "attributes": json.dumps({"price": 10})},
        files=[("image", ("a.png", image, "image/png")), ("image", ("b.png", image, "image/png"))],
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    ((_, [item]),) = backend.calls
    assert item == {"item_id": "a 1", "title": "red sneakers", "brand": "acme", "price": 10, "images": [image, image]}
    for bad in (
        {"data": {"title": "x", "attributes": "{nope"}},
        {"data": {"title": "x"}, "files": {"brand": ("b.txt", b"acme", "text/plain")}},
        {"data": {"title": "x", "image": "not a file"}},
    ):
        assert c.put("/items/a1", headers=AUTH, **bad).status_code == 422, bad
    r = c.put("/items/a1", content=b"title=x", headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status_code == 422 and "multipart/form-data" in r.text
    assert len(backend.calls) == 1


def test_json_put_decodes_images_and_bad_base64_is_422() -> None:
    c, backend = client()
    image = png()
    r = c.put("/items/a1", json={**ITEM, "images": [base64.b64encode(image).decode()]}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"item_id": "a1", "op": "upsert", "seq": 1, "model_version": "1"}
    assert backend.calls[0][1][0]["images"] == [image]
    assert backend.calls[0][1][0]["gender"] == "women"  # attributes go to the core beside the text fields
    assert c.put("/items/a1", json={**ITEM, "images": ["%%%"]}, headers=AUTH).status_code == 422
    assert len(backend.calls) == 1


def test_reads_carry_the_replica_headers() -> None:
    c, backend = client()
    backend.seq = 41
    r = c.post("/search", json={"query": "shoes"})
    assert r.status_code == 200 and "_served" not in r.json()
    assert r.headers["x-itemsage-replica"] == "r1" and r.headers["x-itemsage-applied-seq"] == "41"


def test_openapi_declares_both_put_bodies_and_the_bearer_scheme() -> None:
    c, _ = client()
    doc = c.get("/openapi.json").json()
    put = doc["paths"]["/items/{item_id}"]["put"]
    content = put["requestBody"]["content"]
    assert content["application/json"]["schema"]["required"] == ["title"]
    assert content["multipart/form-data"]["schema"]["properties"]["image"]["items"]["format"] == "binary"
    assert put["security"] == [{"HTTPBearer": []}]
    assert "security" not in doc["paths"]["/search"]["post"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
