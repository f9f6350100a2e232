"""One trained model, one search-query embedding, wherever it is computed.

A model trained on the bundled sample with a fine-tuned MiniLM (``finetune_text_layers: 1``) must
embed a search query identically (atol 1e-5) through

(a) the Python API (``ItemSage.load(...).embed_text_queries``),
(b) offline evaluation (``experiments/evaluate.py --queries-out``: the embeddings its recall used),
(c) training validation (the training module rebuilt from the checkpoint as a resumed run rebuilds
    it, through ``itemsage.train.validation.embed_queries``, what validation ranks with), and
(d) ``POST /embed/query`` of the serving app: in process (the FastAPI app over the encoders
    Serve's QueryEncoder runs) and deployed on a local Ray Serve (deployments/serve_config.yaml, as
    ``serve run`` deploys it).

Before ``itemsage.trained`` owned loading, (a) and (b) used the frozen MiniLM: this test is the
guard against that split coming back. It also checks that the fine-tuned encoder really differs
from the frozen one, or the comparison would prove nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.support is imported from the repo root
    sys.path.insert(0, str(REPO))

from tests.support.finetuned_sample import FinetunedSample, build_finetuned_sample_model  # noqa: E402
from tests.support.scripts import load_script  # noqa: E402

pytestmark = pytest.mark.slow
ATOL = 1e-5
N_QUERIES = 6


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> FinetunedSample:
    return build_finetuned_sample_model(tmp_path_factory.mktemp("finetuned_sample"))


@pytest.fixture(scope="module")
def evaluated(sample: FinetunedSample, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], np.ndarray]:
    """(b): the search queries experiments/evaluate.py evaluated, and the embeddings it ranked with."""
    cli = load_script("experiments/evaluate.py")
    out = tmp_path_factory.mktemp("eval") / "queries.npz"
    rc = cli.main(["--model", str(sample.bundle), "--features", str(sample.features), "--split", "test",
                   "--device", "cpu", "--queries-out", str(out), "--no-tracking"])  # not into ./mlflow.db
    assert rc == 0
    data = np.load(out)
    texts, emb = [str(t) for t in data["texts"]], data["embeddings"]
    assert len(texts) >= N_QUERIES and emb.shape == (len(texts), 256)
    return texts[:N_QUERIES], emb[:N_QUERIES]


def test_the_finetuned_encoder_is_not_the_frozen_one(sample: FinetunedSample, evaluated) -> None:
    import torch

    from itemsage.trained import load_trained
    from itemsage.trained.queries import frozen_text_encoder

    tm = load_trained(sample.bundle)
    assert tm.manifest["finetune_text_layers"] == 1 and tm.finetuned_text_encoder is not None
    assert tm.text_encoder is tm.finetuned_text_encoder
    texts, _ = evaluated
    frozen = tm.embed_query_features("search", torch.from_numpy(frozen_text_encoder().encode(texts)))
    assert np.abs(frozen - tm.embed_search_queries(texts)).max() > 1e-3


def test_api_and_evaluation_agree(sample: FinetunedSample, evaluated) -> None:
    from itemsage.api import ItemSage

    texts, from_eval = evaluated
    from_api = ItemSage.load(str(sample.bundle), device="cpu").embed_text_queries(texts)
    np.testing.assert_allclose(from_api, from_eval, atol=ATOL)


def test_training_validation_agrees(sample: FinetunedSample, evaluated) -> None:
    import torch

    from itemsage.config import PipelineConfig, load_config
    from itemsage.data.features_read import QueryFeatures, read_pairs
    from itemsage.eval.validation import build_val_set, embed_queries
    from itemsage.model import ItemFeatureStore
    from itemsage.train.loop import build_train_module
    from itemsage.trained.checkpoint import load_checkpoint

    texts, from_eval = evaluated
    cfg = load_config(PipelineConfig, None, list(sample.config_overrides))
    store = ItemFeatureStore.load(str(sample.features), max_images=cfg.train.model.max_images)
    qf = QueryFeatures.load(str(sample.features), store, with_text=True)
    state = load_checkpoint(sample.checkpoint)
    module = build_train_module(cfg.train, _vocab_size(sample), store.image_dim, store.num_text_fields,
                                state.text_encoder)
    module.model.load_state_dict(state.model)
    module.eval()
    pairs = read_pairs(str(sample.features), "test", ["search"])
    val = build_val_set(pairs, store.num_items, catalog="all")
    emb = embed_queries(module.model, qf, val, torch.device("cpu"), text_encoder=module.text_encoder)
    by_text = {}
    for row, text in enumerate(qf.texts(val.query_key)):
        by_text.setdefault(text, emb[row].numpy())
    np.testing.assert_allclose(np.stack([by_text[t] for t in texts]), from_eval, atol=ATOL)


def _vocab_size(sample: FinetunedSample) -> int:
    import json

    return int(json.loads((sample.bundle / "manifest.json").read_text())["vocab_size"])


@pytest.fixture(scope="module")
def served_version(sample: FinetunedSample, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The fine-tuned sample model with a Flat index over its catalog: a version Serve can load."""
    from itemsage.index import build_index
    from itemsage.model import ItemFeatureStore
    from itemsage.trained import load_trained

    tm = load_trained(sample.bundle)
    store = ItemFeatureStore.load(str(sample.features), max_images=tm.max_images, text_fields=tm.text_fields)
    index = build_index(tm.embed_items(store), list(store.item_ids or []), "Flat", use_gpu=False)
    out = tmp_path_factory.mktemp("door_index") / "index"
    index.save(out)
    return {"model_uri": str(sample.bundle), "index_uri": str(out), "features": str(sample.features)}


def test_serving_agrees(served_version: dict[str, str], evaluated) -> None:
    from fastapi.testclient import TestClient

    from itemsage.serve.local import create_local_app

    texts, from_eval = evaluated
    app = create_local_app(served_version)
    with TestClient(app) as client:
        served = []
        for text in texts:
            r = client.post("/embed/query", json={"text": text})
            assert r.status_code == 200, r.text
            served.append(r.json()["embedding"])
    np.testing.assert_allclose(np.asarray(served, np.float32), from_eval, atol=ATOL)


def test_ray_serve_agrees(served_version: dict[str, str], evaluated) -> None:
    """(d) on a real Ray Serve: the QueryEncoder replica embeds the query, behind the Ingress."""
    import json
    import urllib.request

    import ray
    from deployments.app import run_local, shutdown_local

    from itemsage.cluster.ports import free_port

    texts, from_eval = evaluated
    if ray.is_initialized():
        ray.shutdown()
    # Logical CPUs: the config reserves ~2 CPUs of replicas, more than a 2-core CI box has.
    url = run_local(served_version, host="127.0.0.1", port=free_port(), num_cpus=4, timeout_s=600)
    try:
        served = []
        for text in texts:
            req = urllib.request.Request(f"{url}/embed/query", json.dumps({"text": text}).encode(),
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:  # the 127.0.0.1 app started above
                served.append(json.loads(r.read())["embedding"])
    finally:
        shutdown_local(drain=False)  # no request in flight; the drain has tests of its own
    np.testing.assert_allclose(np.asarray(served, np.float32), from_eval, atol=ATOL)
