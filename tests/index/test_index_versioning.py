"""MLflow: an index logged with a registered model version and downloaded back, on sqlite."""

from __future__ import annotations

from pathlib import Path

import pytest

from itemsage.index import IndexMismatchError, build_index, download_index, load_index, log_index
from itemsage.index.versioning import INDEX_TAG

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[str, str]:
    """A sqlite tracking store with model "itemsage-test" v1 and v2, each registered from a run."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("index-test", artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model("itemsage-test")
    model_dir = root / "dummy_model"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text("a tiny stand-in for the item tower")
    for _ in range(2):
        run = client.create_run(exp)
        client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
        client.set_terminated(run.info.run_id)
        client.create_model_version("itemsage-test", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return uri, str(root)


def test_log_and_download_round_trip(registry, catalog, tmp_path: Path) -> None:
    uri, _ = registry
    index = build_index(catalog.x[:500], catalog.ids[:500], "IVF8,Flat", use_gpu=False,
                        model_name="itemsage-test", model_version=2)
    index.set_search_params(nprobe=4)
    path = index.save(tmp_path / "built")
    artifact = log_index(path, "itemsage-test", 2, tracking_uri=uri)

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("itemsage-test", "2")
    assert artifact == f"runs:/{mv.run_id}/index/v2" and mv.tags[INDEX_TAG] == artifact
    listed = {a.path for a in client.list_artifacts(mv.run_id, "index/v2")}
    assert listed == {"index/v2/index.faiss", "index/v2/ids.json", "index/v2/metadata.json"}

    local = download_index("itemsage-test", 2, tmp_path / "downloaded", tracking_uri=uri)
    loaded = load_index(local, expected_model_version=2, expected_dim=32, use_gpu=False)
    assert loaded.search_params == {"nprobe": 4}
    assert loaded.search(catalog.queries, 10) [0] == index.search(catalog.queries, 10)[0]


def test_log_refuses_an_index_of_another_version(registry, catalog, tmp_path: Path) -> None:
    uri, _ = registry
    path = build_index(catalog.x[:50], catalog.ids[:50], "Flat", use_gpu=False,
                       model_name="itemsage-test", model_version=2).save(tmp_path / "i")
    with pytest.raises(IndexMismatchError, match="built from model version 2, not 1"):
        log_index(path, "itemsage-test", 1, tracking_uri=uri)


def test_unknown_version_and_missing_index(registry, catalog, tmp_path: Path) -> None:
    uri, _ = registry
    path = build_index(catalog.x[:50], catalog.ids[:50], "Flat", use_gpu=False).save(tmp_path / "i")
    with pytest.raises(LookupError, match="version 9 is not registered"):
        log_index(path, "itemsage-test", 9, tracking_uri=uri)
    with pytest.raises(LookupError, match="has no index"):
        download_index("itemsage-test", 1, tmp_path / "d", tracking_uri=uri)
