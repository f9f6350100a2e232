"""The seed's image backbone end to end: ``image.backbone: resnet50`` with weights from a local file.

A randomly initialised torchvision ResNet-50 state dict is written to a file; the first fashion
sample items are preprocessed with it (2048-d image features), a small model is trained on them,
every item embedded into a Flat index, and that version served: ``/similar`` by item and by
uploaded photo, ``/embed/query`` with an image, in process and (slow) on a local Ray Serve. The
served closeup embedding of a catalog image must equal the offline one (the closeup tower on the
features preprocessing stored, and the Python API on the file), so serving runs the same weights
through the same preprocessing. The weights file's location is recorded with the model and can be
overridden where the model is served; a missing or different file is refused with the file and the
setting in the message.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # tests.support is imported from the repo root
    sys.path.insert(0, str(REPO))

from tests.api.sample_model import SAMPLE, write_generic_catalog  # noqa: E402
from tests.support.small_pipeline import SmallPipeline, build_small_pipeline  # noqa: E402

N_ITEMS = 32
ATOL = 1e-4


def write_resnet50_weights(path: Path, seed: int) -> Path:
    from torchvision.models import resnet50

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(resnet50(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_resnet50_weights(tmp_path_factory.mktemp("weights") / "resnet50-random.pth", seed=0)


@pytest.fixture(scope="module")
def resnet(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> SmallPipeline:
    from itemsage.data.catalog import read_catalog

    root = tmp_path_factory.mktemp("resnet_pipeline")
    items = read_catalog(SAMPLE).items.head(N_ITEMS).reset_index(drop=True)
    # Every fourth item text-only, as in real catalogs.
    items["image_paths"] = [[] if i % 4 == 3 else list(p) for i, p in enumerate(items["image_paths"])]
    catalog = write_generic_catalog(items, root / "catalog" / "items.jsonl").parent
    overrides = ["preprocess.image.backbone=resnet50", f"preprocess.image.weights_path={weights}"]
    return build_small_pipeline(catalog, root, overrides)


@pytest.fixture(scope="module")
def with_images(resnet: SmallPipeline) -> list[tuple[str, Path]]:
    """(item id, image file) of the first catalog items that have an image."""
    rows = [json.loads(line) for line in (resnet.catalog / "items.jsonl").read_text().splitlines()]
    return [(r["item_id"], Path(r["image_paths"][0])) for r in rows if r["image_paths"]][:3]


def closeup_from_features(resnet: SmallPipeline, item_ids: list[str]) -> np.ndarray:
    """Offline closeup queries of uploaded photos: the trained closeup tower on the image features
    preprocessing stored, with the photos' catalog neighbours (itemsage.model.catalog_queries)."""
    from itemsage.model import ItemFeatureStore
    from itemsage.model.catalog_queries import photo_queries
    from itemsage.trained import load_trained

    tm = load_trained(resnet.bundle)
    store = ItemFeatureStore.load(str(resnet.features), max_images=tm.max_images, text_fields=tm.text_fields)
    row = {item_id: r for r, item_id in enumerate(store.item_ids or [])}
    feats = store.first_image_feat[[row[i] for i in item_ids]]
    assert feats.shape[1] == 2048 and bool(feats.abs().sum(dim=1).gt(0).all())
    return photo_queries(tm.model, store, feats).numpy()


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_the_weights_file_travels_with_the_model(resnet: SmallPipeline, weights: Path) -> None:
    from itemsage.data.images import file_sha256
    from itemsage.trained import load_trained

    record = {"path": str(weights.absolute()), "sha256": file_sha256(weights)}
    features_manifest = json.loads((resnet.features / "manifest.json").read_text())
    assert features_manifest["backbone"] == "resnet50" and features_manifest["image_dim"] == 2048
    assert features_manifest["backbone_weights"] == record
    tm = load_trained(resnet.bundle)
    assert tm.manifest["image_backbone"] == "resnet50" and tm.manifest["image_weights"] == record
    assert tm.image_weights_path == str(weights.absolute())
    assert tm.trained_on_images


def test_served_image_embedding_equals_offline(resnet: SmallPipeline, with_images) -> None:
    from fastapi.testclient import TestClient

    from itemsage.api import ItemSage
    from itemsage.serve.local import create_local_app

    ids, paths = [i for i, _ in with_images], [p for _, p in with_images]
    from_features = closeup_from_features(resnet, ids)
    from_api = ItemSage.load(resnet.bundle, device="cpu").embed_image_queries(paths, catalog=resnet.features)
    np.testing.assert_allclose(from_api, from_features, atol=ATOL)
    with TestClient(create_local_app(resnet.serving)) as client:
        served = []
        for path in paths:
            r = client.post("/embed/query", json={"image": b64(path)})
            assert r.status_code == 200, r.text
            assert r.json()["surface"] == "closeup" and r.json()["model_version"] == resnet.version
            served.append(r.json()["embedding"])
    np.testing.assert_allclose(np.asarray(served, np.float32), from_features, atol=ATOL)


def test_api_embeds_the_raw_catalog_as_preprocessing_did(resnet: SmallPipeline) -> None:
    """A raw catalog is featurized with the model's recorded ResNet-50 file, as preprocessing was."""
    from itemsage.api import ItemSage
    from itemsage.model import ItemFeatureStore

    sage = ItemSage.load(resnet.bundle, device="cpu")
    ids, emb = sage.embed_catalog(resnet.catalog, engine="local")
    store = ItemFeatureStore.load(str(resnet.features), max_images=sage.trained.max_images)
    assert ids == list(store.item_ids or [])
    np.testing.assert_allclose(emb, sage.trained.embed_items(store), atol=ATOL)


def test_similar_by_item_and_by_photo(resnet: SmallPipeline, with_images) -> None:
    from fastapi.testclient import TestClient

    from itemsage.index import load_index
    from itemsage.serve.local import create_local_app

    item_id, path = with_images[0]
    rows = [json.loads(line) for line in (resnet.catalog / "items.jsonl").read_text().splitlines()]
    text_only = next(r["item_id"] for r in rows if not r["image_paths"])
    with TestClient(create_local_app(resnet.serving)) as client:
        assert client.get("/version").json()["model"]["image_backbone"] == "resnet50"
        by_item = client.post("/similar", json={"item_id": item_id, "k": 5}).json()
        assert by_item["surface"] == "closeup" and len(by_item["results"]) == 5
        assert item_id not in [h["item_id"] for h in by_item["results"]]
        by_text_only = client.post("/similar", json={"item_id": text_only, "k": 5}).json()
        assert by_text_only["surface"] == "item" and len(by_text_only["results"]) == 5
        by_photo = client.post("/similar", json={"image": b64(path), "k": 5})
        assert by_photo.status_code == 200, by_photo.text
        search = client.post("/search", json={"query": "shirt", "k": 5})
        assert search.status_code == 200 and len(search.json()["results"]) == 5
    # The photo query ranks exactly as the offline closeup query does in the same index.
    expected_ids, _ = load_index(resnet.index).search(closeup_from_features(resnet, [item_id]), 5)
    assert [h["item_id"] for h in by_photo.json()["results"]] == list(expected_ids[0])
    assert by_photo.json()["surface"] == "closeup"


def test_weights_elsewhere_on_the_serving_machine(
    resnet: SmallPipeline, weights: Path, with_images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served on another machine, the file may live elsewhere: ``serve.image_weights_path`` (or
    ``$ITEMSAGE_IMAGE_WEIGHTS``) points at it; a missing file or other weights are refused at load."""
    from fastapi.testclient import TestClient

    from itemsage.config import ServeConfig
    from itemsage.serve.local import create_local_app
    from itemsage.trained.image_weights import ENV_VAR, ImageWeightsError

    (tmp_path / "elsewhere").mkdir()
    moved = shutil.copyfile(weights, tmp_path / "elsewhere" / "rn50.pth")
    item_id, path = with_images[0]
    with TestClient(create_local_app(resnet.serving, ServeConfig(image_weights_path=str(moved)))) as client:
        r = client.post("/embed/query", json={"image": b64(path)})
        assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        np.asarray([r.json()["embedding"]], np.float32), closeup_from_features(resnet, [item_id]), atol=ATOL
    )

    def load_error(cfg: ServeConfig | None = None) -> str:
        with pytest.raises(ImageWeightsError) as info, TestClient(create_local_app(resnet.serving, cfg)):
            pass
        return str(info.value)

    missing = tmp_path / "nowhere" / "rn50.pth"
    message = load_error(ServeConfig(image_weights_path=str(missing)))
    assert str(missing) in message and "serve.image_weights_path" in message and ENV_VAR in message
    monkeypatch.setenv(ENV_VAR, str(missing))
    assert str(missing) in load_error()
    monkeypatch.delenv(ENV_VAR)
    other = write_resnet50_weights(tmp_path / "other.pth", seed=1)
    assert "is not the resnet50 weights file" in load_error(ServeConfig(image_weights_path=str(other)))


@pytest.mark.slow
def test_ray_serve_serves_the_resnet_model(resnet: SmallPipeline, with_images) -> None:
    """The same version on a real local Ray Serve (deployments/serve_config.yaml, as ``serve run``
    deploys it): the QueryEncoder replica builds ResNet-50 from the recorded file."""
    import urllib.request

    import ray
    from deployments.app import run_local, shutdown_local

    from itemsage.cluster.ports import free_port

    ids, paths = [i for i, _ in with_images], [p for _, p in with_images]
    expected = closeup_from_features(resnet, ids)

    def post(url: str, body: dict) -> dict:
        req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:  # the 127.0.0.1 app started below
            return json.loads(r.read())

    if ray.is_initialized():
        ray.shutdown()
    # Logical CPUs: the config reserves ~2 CPUs of replicas, more than a 2-core CI box has.
    url = run_local(resnet.serving, host="127.0.0.1", port=free_port(), num_cpus=4, timeout_s=600)
    try:
        served = [post(f"{url}/embed/query", {"image": b64(p)})["embedding"] for p in paths]
        similar = post(f"{url}/similar", {"image": b64(paths[0]), "k": 5})
        by_item = post(f"{url}/similar", {"item_id": ids[0], "k": 5})
    finally:
        shutdown_local(drain=False)  # no request in flight
    np.testing.assert_allclose(np.asarray(served, np.float32), expected, atol=ATOL)
    assert similar["surface"] == "closeup" and len(similar["results"]) == 5
    assert by_item["surface"] == "closeup" and len(by_item["results"]) == 5
