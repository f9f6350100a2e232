"""Text-only items end to end: the bundled Amazon sample (product metadata, no image files).

``data/sample/amazon`` is preprocessed (amazon layout: also_buy / also_view links as closeup pairs,
zero images per item), a small model trained on it, every item embedded into a Flat index and the
version served in process and (slow) on a local Ray Serve. A closeup pair whose viewed item has no
image is an item-to-item pair (the item tower embeds the viewed item), so the links are trained on
instead of dropped; ``/similar`` queries a text-only item the same way; image input is refused with
a clear 422, since the model never saw an image.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # tests.support is imported from the repo root
    sys.path.insert(0, str(REPO))

from tests.support.small_pipeline import SmallPipeline, build_small_pipeline  # noqa: E402

AMAZON = REPO / "data" / "sample" / "amazon"
ATOL = 1e-4


@pytest.fixture(scope="module")
def amazon(tmp_path_factory: pytest.TempPathFactory) -> SmallPipeline:
    return build_small_pipeline(AMAZON, tmp_path_factory.mktemp("amazon_pipeline"))


@pytest.fixture(scope="module")
def client(amazon: SmallPipeline):
    from fastapi.testclient import TestClient

    from itemsage.serve.local import create_local_app

    with TestClient(create_local_app(amazon.serving)) as c:
        yield c


def catalog_rows(amazon: SmallPipeline) -> list[dict]:
    return pq.read_table(amazon.features / "catalog.parquet").to_pylist()


def test_links_are_trained_on_although_no_item_has_an_image(amazon: SmallPipeline) -> None:
    from itemsage.trained import load_trained

    manifest = json.loads((amazon.features / "manifest.json").read_text())
    assert manifest["layout"] == "amazon" and manifest["counts"]["items_with_images"] == 0
    train = pq.read_table(amazon.features / "pairs" / "train.parquet").to_pandas()
    assert set(train["task"]) == {"closeup/also_buy", "closeup/also_view"}
    assert len(train) > 1000
    rejects = [json.loads(line) for line in (amazon.features / "rejects.jsonl").read_text().splitlines()]
    assert not [r for r in rejects if r["stage"] == "pairs"]
    tm = load_trained(amazon.bundle)
    assert tm.manifest["items_with_images"] == 0 and not tm.trained_on_images


def test_validation_queries_text_only_items_by_the_item_tower(amazon: SmallPipeline) -> None:
    """Validation ranks the held-out links with the same query path as training and Serve."""
    import torch

    from itemsage.data.features_read import ITEM_QUERY, QueryFeatures, read_pairs
    from itemsage.eval.validation import build_val_set, embed_queries
    from itemsage.model import ItemFeatureStore
    from itemsage.trained import load_trained

    tm = load_trained(amazon.bundle)
    store = ItemFeatureStore.load(str(amazon.features), max_images=tm.max_images, text_fields=tm.text_fields)
    qf = QueryFeatures.load(str(amazon.features), store)
    val = build_val_set(read_pairs(str(amazon.features), "val"), store.num_items, catalog="all")
    assert set(qf.groups(val.surfaces, val.query_key)) == {ITEM_QUERY}
    queries = embed_queries(tm.model, qf, val, torch.device("cpu"))
    expected = tm.embed_items(store)[val.query_key]
    np.testing.assert_allclose(queries.numpy(), expected, atol=ATOL)


def test_search_and_similar(client, amazon: SmallPipeline) -> None:
    rows = catalog_rows(amazon)
    r = client.post("/search", json={"query": "gift card", "k": 10})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) == 10 and all(h["image_url"] is None for h in hits)
    item_id = rows[0]["item_id"]
    r = client.post("/similar", json={"item_id": item_id, "k": 10})
    assert r.status_code == 200, r.text
    assert r.json()["surface"] == "item" and len(r.json()["results"]) == 10
    assert item_id not in [h["item_id"] for h in r.json()["results"]]
    info = client.get(f"/items/{item_id}").json()
    assert info["image_urls"] == [] and info["title"] == rows[0]["title"]
    assert client.get(f"/items/{item_id}/image").status_code == 404


def test_similar_ranks_as_the_offline_item_embedding(client, amazon: SmallPipeline) -> None:
    from itemsage.index import load_index
    from itemsage.model import ItemFeatureStore
    from itemsage.trained import load_trained

    tm = load_trained(amazon.bundle)
    store = ItemFeatureStore.load(str(amazon.features), max_images=tm.max_images, text_fields=tm.text_fields)
    row = 7
    item_id = (store.item_ids or [])[row]
    emb = tm.embed_items(store)[row : row + 1]
    ids, _ = load_index(amazon.index).search(emb, 11)
    expected = [i for i in ids[0] if i != item_id][:10]
    served = client.post("/similar", json={"item_id": item_id, "k": 10}).json()["results"]
    assert [h["item_id"] for h in served] == expected
    # A new item embedded from the same text fields lands on the catalog item's own vector.
    fields = {k: v for k, v in catalog_rows(amazon)[row].items() if k not in ("item_id", "image_paths", "price")}
    r = client.post("/embed/item", json={k: v for k, v in fields.items() if v})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray([r.json()["embedding"]], np.float32), emb, atol=ATOL)


def test_image_input_is_a_clear_422(client, sample_image: bytes) -> None:
    image = base64.b64encode(sample_image).decode()
    for path, body in (
        ("/similar", {"image": image, "k": 5}),
        ("/embed/query", {"image": image}),
        ("/embed/item", {"title": "a gift card", "images": [image]}),
    ):
        r = client.post(path, json=body)
        assert r.status_code == 422, (path, r.text)
        assert "without item images" in r.json()["detail"], (path, r.text)


@pytest.mark.slow
def test_ray_serve_serves_the_text_only_model(amazon: SmallPipeline) -> None:
    """The same version on a real local Ray Serve (deployments/serve_config.yaml)."""
    import urllib.error
    import urllib.request

    import ray
    from deployments.app import run_local, shutdown_local

    from itemsage.cluster.ports import free_port

    item_id = catalog_rows(amazon)[0]["item_id"]

    def post(url: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:  # the 127.0.0.1 app started below
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    if ray.is_initialized():
        ray.shutdown()
    # Logical CPUs: the config reserves ~2 CPUs of replicas, more than a 2-core CI box has.
    url = run_local(amazon.serving, host="127.0.0.1", port=free_port(), num_cpus=4, timeout_s=600)
    try:
        search = post(f"{url}/search", {"query": "magazine subscription", "k": 5})
        similar = post(f"{url}/similar", {"item_id": item_id, "k": 5})
        image = sorted((REPO / "data" / "sample" / "fashion" / "images").glob("*.jpg"))[0].read_bytes()
        by_image = post(f"{url}/similar", {"image": base64.b64encode(image).decode(), "k": 5})
    finally:
        shutdown_local(drain=False)  # no request in flight
    assert search[0] == 200 and len(search[1]["results"]) == 5
    assert similar[0] == 200 and similar[1]["surface"] == "item" and len(similar[1]["results"]) == 5
    assert by_image[0] == 422 and "without item images" in by_image[1]["detail"]
