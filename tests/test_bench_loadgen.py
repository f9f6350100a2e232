"""experiments/bench/loadgen.py names each Serve replica process by its deployment: the soak's
memory table and its check that all four deployments were measured rely on it."""

from __future__ import annotations

import pytest
from tests.support.scripts import load_script


@pytest.fixture(scope="module")
def loadgen():
    return load_script("experiments/bench/loadgen.py")


def test_a_replica_running_a_method_is_named_by_its_deployment(loadgen, monkeypatch) -> None:
    # Ray retitles a replica's process while it runs a method: a soak once read a Retriever
    # mid-health-check as a fifth deployment, "Retriever.check_health".
    titles = {
        11: "ray::ServeReplica:itemsage:Retriever.check_health",
        12: "ray::ServeReplica:itemsage:QueryEncoder",
        13: "ray::ServeReplica:itemsage:Ingress.__call__ some-arg",
        14: "ray::ServeReplica:other:Retriever",
        15: "ray::ServeController",
    }
    monkeypatch.setattr(loadgen, "descendants", lambda root: titles)
    assert loadgen.replica_pids("itemsage", root=1) == {11: "Retriever", 12: "QueryEncoder", 13: "Ingress"}
    assert loadgen.label(titles[11]) == "Retriever"
    assert loadgen.label(titles[15]) == "Serve controller"
