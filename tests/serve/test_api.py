"""The HTTP API in-process: every endpoint, every kind of bad input, limits and file access.

Runs the same FastAPI app and Retriever core as the Serve Ingress, over in-process encoders.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from itemsage.config import ServeConfig
from itemsage.serve.local import create_local_app

SHOE = "3246"  # "Puma Men's Benecio Black Coffee Leather Shoe", first row of the sample


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_search_answers_with_catalog_metadata_and_versions(local_client: TestClient) -> None:
    r = local_client.post("/search", json={"query": "black leather shoes", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["surface"] == "search" and body["k"] == 5 and len(body["results"]) == 5
    version = local_client.get("/version").json()
    assert body["model_version"] == version["model"]["version"]
    assert body["index_version"] == version["index"]["version"]
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    hit = body["results"][0]
    assert hit["title"] and hit["image_url"] == f"/items/{hit['item_id']}/image"


def test_every_endpoint(local_client: TestClient, sample_image: bytes) -> None:
    c = local_client
    sim = c.post("/similar", json={"item_id": SHOE, "k": 4}).json()
    assert sim["surface"] == "closeup" and SHOE not in [h["item_id"] for h in sim["results"]]
    assert len(sim["results"]) == 4
    up = c.post("/similar", json={"image": b64(sample_image), "k": 3}).json()
    assert up["surface"] == "closeup" and len(up["results"]) == 3
    rec = c.post("/recommend", json={"history": [SHOE, "5382", SHOE], "k": 5}).json()
    assert rec["surface"] == "home" and not {SHOE, "5382"} & {h["item_id"] for h in rec["results"]}
    for body, surface in (({"text": "red dress"}, "search"), ({"image": b64(sample_image)}, "closeup"), ({"history": [SHOE]}, "home")):
        e = c.post("/embed/query", json=body).json()
        assert e["surface"] == surface and e["dim"] == 32 and abs(np.linalg.norm(e["embedding"]) - 1) < 1e-4
    item = c.post("/embed/item", json={"title": "Puma black shoe", "colors": "Black", "images": [b64(sample_image)]}).json()
    assert item["surface"] == "item" and abs(np.linalg.norm(item["embedding"]) - 1) < 1e-4
    meta = c.get(f"/items/{SHOE}").json()
    assert meta["title"].startswith("Puma") and meta["fields"]["product_types"] == "Casual Shoes"
    img = c.get(meta["image_urls"][0])
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(img.content)).size[0] > 0
    assert c.get("/healthz").json()["status"] == "ok"
    assert c.get("/").headers["content-type"].startswith("text/html")
    assert c.get("/web/app.js").status_code == 200
    assert set(c.get("/openapi.json").json()["paths"]) >= {"/search", "/similar", "/recommend", "/embed/item", "/embed/query"}
    assert c.get("/docs").status_code == 200


def test_embedding_of_a_catalog_item_matches_its_index_entry(local_client: TestClient, tiny_serving: dict[str, Path]) -> None:
    """/embed/item tokenizes and embeds exactly like the offline pipeline: a text-only catalog item
    sent as a payload comes back as the vector the index holds for it (its top hit, score 1)."""
    import pyarrow.parquet as pq

    cat = pq.read_table(tiny_serving["features"] / "catalog.parquet").to_pylist()
    row = next(r for r in cat if not r["image_paths"])  # no images: features come from text alone
    payload = {k: v for k, v in row.items() if k not in ("item_id", "image_paths")}
    emb = local_client.post("/embed/item", json=payload).json()["embedding"]
    from itemsage.index import load_index

    ids, scores = load_index(tiny_serving["index_1"], use_gpu=False).search(np.asarray([emb], np.float32), 1)
    assert ids[0][0] == row["item_id"] and scores[0][0] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "path,body,status,fragment",
    [
        ("/search", {"query": "", "k": 3}, 422, "at least 1 character"),
        ("/search", {"query": "   ", "k": 3}, 422, "must not be blank"),
        ("/search", {"query": "x" * 513}, 422, "at most 512 characters"),
        ("/search", {"query": "shoe", "k": 0}, 422, "greater than or equal to 1"),
        ("/search", {"query": "shoe", "k": 1001}, 422, "less than or equal to 1000"),
        ("/search", {"query": "shoe", "k": "5"}, 422, "valid integer"),
        ("/search", {"query": "shoe", "k": True}, 422, "valid integer"),
        ("/search", {"querry": "shoe"}, 422, "Field required"),
        ("/search", ["shoe"], 422, "valid dictionary"),
        ("/similar", {"item_id": "no-such-item"}, 404, "unknown item id 'no-such-item'"),
        ("/similar", {}, 422, "exactly one of item_id, image"),
        ("/similar", {"item_id": SHOE, "image": "aGk="}, 422, "exactly one of item_id, image"),
        ("/similar", {"image": "not base64!"}, 422, "not valid base64"),
        ("/similar", {"image": b64(b"GIF89a but not really")}, 422, "not a usable image"),
        ("/similar", {"image": b64(png_bomb(100_000, 100_000))}, 413, "too large"),
        ("/recommend", {"history": []}, 422, "at least 1 item"),
        ("/recommend", {"history": [SHOE, "nope"]}, 404, "unknown item id 'nope'"),
        ("/recommend", {"history": ["x"] * 201}, 422, "at most 200 items"),
        ("/embed/query", {"text": "a", "history": [SHOE]}, 422, "exactly one of text, image, history"),
        ("/embed/item", {}, 422, "at least one non-empty text field or one image"),
        ("/embed/item", {"title": "x", "image_paths": ["/etc/passwd"]}, 403, "disabled"),
        ("/embed/item", {"title": "x", "price": 3}, 422, "Extra inputs are not permitted"),
    ],
)
def test_bad_input_is_a_clear_4xx(local_client: TestClient, path: str, body: Any, status: int, fragment: str) -> None:
    r = local_client.post(path, json=body)
    assert r.status_code == status, r.text
    assert fragment in r.text
    detail = r.json()["detail"]
    if isinstance(detail, list):  # pydantic errors, without the rejected input echoed back
        assert all("input" not in e for e in detail)


def test_malformed_json_and_wrong_content(local_client: TestClient) -> None:
    r = local_client.post("/search", content=b'{"query": "shoe", ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON decode error" in r.text
    r = local_client.post("/search", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert local_client.get("/search").status_code == 405


def test_unknown_item_and_image_paths(local_client: TestClient) -> None:
    assert local_client.get("/items/nope").status_code == 404
    for path in ("/items/..%2F..%2Fetc%2Fpasswd/image", "/items/../../etc/passwd/image", "/items/%2Fetc%2Fpasswd/image"):
        r = local_client.get(path)
        assert r.status_code == 404, (path, r.text)
        assert b"root:" not in r.content
    assert local_client.get(f"/items/{SHOE}/image?i=5").status_code == 404  # the item has 1 image
    assert local_client.get(f"/items/{SHOE}/image?i=-1").status_code == 422
    assert local_client.get("/web/../../pyproject.toml").status_code == 404


def test_k_larger_than_the_catalog(local_client: TestClient) -> None:
    body = local_client.post("/search", json={"query": "shoe", "k": 1000}).json()
    assert len(body["results"]) == 60
    assert len({h["item_id"] for h in body["results"]}) == 60


@pytest.fixture(scope="module")
def strict_client(tiny_serving: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Any:
    """Small limits, and one allowed image root holding a copy of a sample image."""
    root = tmp_path_factory.mktemp("allowed")
    src = sorted((sample_dir / "fashion" / "images").glob("*.jpg"))[0]
    (root / "ok.jpg").write_bytes(src.read_bytes())
    (root / "sub").mkdir()
    (root / "escape.jpg").symlink_to(src)  # real image, but outside the root once resolved
    cfg = ServeConfig(max_upload_bytes=50_000, max_request_bytes=80_000, allowed_image_roots=[str(root)])
    app = create_local_app({"model_uri": str(tiny_serving["model_1"]), "index_uri": str(tiny_serving["index_1"])}, cfg)
    with TestClient(app) as client:
        client.root = root  # type: ignore[attr-defined]
        yield client


def test_upload_and_body_limits(strict_client: TestClient) -> None:
    big = b64(os.urandom(52_000))  # decodes to more than max_upload_bytes, body still under the limit
    r = strict_client.post("/similar", json={"image": big})
    assert r.status_code == 413 and "upload limit" in r.text
    r = strict_client.post("/similar", json={"image": b64(os.urandom(62_000))})
    assert r.status_code == 413 and "request body" in r.text

    def chunks() -> Any:  # no Content-Length: the streamed size is counted
        for _ in range(10):
            yield b" " * 10_000

    r = strict_client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_local_image_paths_only_under_allowed_roots(strict_client: TestClient) -> None:
    root: Path = strict_client.root  # type: ignore[attr-defined]
    ok = strict_client.post("/embed/item", json={"title": "shoe", "image_paths": [str(root / "ok.jpg")]})
    assert ok.status_code == 200, ok.text
    cases = {
        str(root / ".." / "ok.jpg"): 403,
        str(root / "escape.jpg"): 403,
        "ok.jpg": 403,
        "/etc/passwd": 403,
        str(root / "missing.jpg"): 422,
        str(root / "sub"): 422,
    }
    for path, status in cases.items():
        r = strict_client.post("/embed/item", json={"title": "shoe", "image_paths": [path]})
        assert r.status_code == status, (path, r.text)


def test_image_endpoint_serves_only_images(tiny_serving: dict[str, Path], tmp_path: Path) -> None:
    """Even a catalog entry pointing at a non-image file is not served."""
    from itemsage.serve.core import read_catalog_image
    from itemsage.serve.errors import ItemNotFoundError

    f = tmp_path / "secret.txt"
    f.write_text("root:x:0:0")
    with pytest.raises(ItemNotFoundError):
        read_catalog_image(str(f), 1_000_000)
    with pytest.raises(ItemNotFoundError):
        read_catalog_image(str(tmp_path / "missing.jpg"), 1_000_000)


def test_history_and_item_photo_queries_are_the_ones_evaluation_measures(
    local_client: TestClient, tiny_serving: dict[str, Path]
) -> None:
    """/recommend and /similar by id build their queries from catalog items exactly as
    experiments/evaluate.py does (itemsage.model.catalog_queries), so the figures it reports are
    what these endpoints answer."""
    import torch

    from itemsage.index import load_index
    from itemsage.model import ItemFeatureStore
    from itemsage.model.catalog_queries import history_queries, photo_queries
    from itemsage.trained import load_trained

    tm = load_trained(str(tiny_serving["model_1"]))
    store = ItemFeatureStore.load(str(tiny_serving["features"]), max_images=tm.max_images, text_fields=tm.text_fields)
    row = {item_id: r for r, item_id in enumerate(store.item_ids or [])}
    history = [SHOE, "5382"]
    served = local_client.post("/embed/query", json={"history": history}).json()["embedding"]
    offline = history_queries(tm.model, store, [[row[i] for i in history]]).numpy()[0]
    np.testing.assert_allclose(np.asarray(served, np.float32), offline, atol=1e-5)

    own = torch.tensor([row[SHOE]])
    query = photo_queries(tm.model, store, store.first_image_feat[own], exclude=own).numpy()
    ids, _ = load_index(tiny_serving["index_1"]).search(query, 5)
    expected = [i for i in ids[0] if i != SHOE][:4]
    similar = local_client.post("/similar", json={"item_id": SHOE, "k": 4}).json()
    assert [h["item_id"] for h in similar["results"]] == expected
