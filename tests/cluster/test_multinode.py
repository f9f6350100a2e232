"""The pipeline on a real 2-node Ray cluster on this machine (``make test-cluster``).

PostgreSQL, ``mlflow server`` on it, ``ray start`` head + worker with token authentication, then
``ray job submit`` preprocess / train (one worker per node) / embed / index, a job with a missing
config, ``serve deploy`` and ``POST /search``; everything is stopped afterwards. See
tests.support.e2e. Skipped only when PostgreSQL can neither be found nor installed here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.e2e import ClusterE2EConfig, run_cluster_e2e
from tests.support.postgres import PostgresUnavailable

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]


def test_pipeline_on_two_node_cluster() -> None:
    try:
        report = run_cluster_e2e(ClusterE2EConfig(), REPO)
    except PostgresUnavailable as e:
        pytest.skip(f"no PostgreSQL for the MLflow backend store: {e}")
    print("\n" + report.excerpt())

    # The cluster: a head and a worker node, and no access without the token.
    assert sorted(report.nodes.values()) == ["head", "worker"]
    assert report.unauthenticated_status == 401

    # Every pipeline job succeeded through the Jobs API; the bad one failed with one clear line.
    assert report.jobs == {
        "preprocess": "SUCCEEDED",
        "train": "SUCCEEDED",
        "embed": "SUCCEEDED",
        "index": "SUCCEEDED",
        "bad-config": "FAILED",
    }
    assert report.bad_config_line == "config error: config file not found: experiments/configs/missing.yaml"

    # The two training workers ran on two different nodes of this cluster (job log and side files agree).
    assert sorted(report.train_worker_nodes) == [0, 1]
    assert len(set(report.train_worker_nodes.values())) == 2
    assert set(report.train_worker_nodes.values()) == set(report.nodes)
    assert report.train_worker_side_files == report.train_worker_nodes

    # One run and one registered version, stored in PostgreSQL; that version is what Serve answers with.
    assert report.mlflow_backend.startswith("postgresql+psycopg2://")
    assert report.mlflow_runs == 1
    assert report.model_versions == ["1"] and report.model_uri == "models:/itemsage/1"
    assert report.search_status == 200
    assert str(report.search["model_version"]) == "1"
    results = report.search["results"]
    assert len(results) == 5 and all(r["item_id"] for r in results)

    # Nothing of ours is left running.
    assert report.leftover_pids == []
