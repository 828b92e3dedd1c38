"""A node kopf's index lacks is asked of the API server before its workers are read as lost
(controller/node_check.py): the index can lag the pod index (separate watch streams), and a worker read as
on a lost node is deleted by a suspend or a scale-down without its checkpoint."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, cast

import kopf
import pytest
import urllib3
from test_reconciler import NAMESPACE, Harness, PodServer, job_manifest

from kubefit.controller.cluster import ClusterView
from kubefit.controller.kube import KubeApi
from kubefit.controller.node_check import NODE_CHECK_SECONDS, NodeCheck


class NodeIndexLag(Harness):
    """The reconciler harness, with kopf's node index lacking the nodes in `unindexed`."""

    def __init__(self) -> None:
        super().__init__()
        self.unindexed: frozenset[str] = frozenset()

    def view(self) -> ClusterView:
        return replace(super().view(), node_exists=lambda name: name not in self.unindexed)


@pytest.fixture
def lagging(monkeypatch: pytest.MonkeyPatch) -> Iterator[NodeIndexLag]:
    harness = NodeIndexLag()

    def record_event(body: kopf.Body, *, type: str, reason: str, message: str = "") -> None:
        harness.log.append(("event", reason, message, type))

    monkeypatch.setattr(kopf, "event", record_event)
    yield harness
    harness.reconciler.forget((NAMESPACE, "llama"))


def _running_on_h5_then_suspended(h: NodeIndexLag) -> None:
    """llama's 2 workers run on h5, which kopf's node index then lacks; the job is suspended."""
    llama = job_manifest(replicas=2)
    llama["spec"]["elastic"]["checkpointGracePeriodSeconds"] = 300
    h.kube.jobs["llama"] = llama
    h.reconcile()
    for name, pod in list(h.kube.pods.items()):
        h.kube.pods[name] = replace(pod, phase="Running", node_name="h5")
    h.reconcile("pod")
    assert h.condition("Ready")["status"] == "True"
    h.unindexed = frozenset({"h5"})
    suspended = copy.deepcopy(h.kube.jobs["llama"])
    suspended["spec"].setdefault("runPolicy", {})["suspend"] = True
    suspended["metadata"]["generation"] = 2
    h.kube.jobs["llama"] = suspended
    h.reconcile("update")


def test_a_suspend_asks_for_the_checkpoint_of_workers_on_a_node_the_index_lacks_but_the_cluster_has(
    lagging: NodeIndexLag,
) -> None:
    # The index alone read h5 as deleted: both workers were deleted at once, their checkpoint skipped.
    lagging.kube.nodes = {"h5"}
    _running_on_h5_then_suspended(lagging)
    assert lagging.events("CheckpointRequested")
    assert not lagging.calls("delete_pod")
    assert lagging.calls("node_exists") == [("node_exists", "h5")]  # asked once, then remembered


def test_workers_on_a_node_the_cluster_no_longer_has_are_still_lost(lagging: NodeIndexLag) -> None:
    _running_on_h5_then_suspended(lagging)  # kube.nodes lacks h5: deleted
    assert not lagging.events("CheckpointRequested")
    assert sorted(call[1] for call in lagging.calls("delete_pod")) == ["llama-worker-0", "llama-worker-1"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_node_in_the_index_is_not_asked_of_the_api_server() -> None:
    asked: list[str] = []
    check = NodeCheck(lambda name: asked.append(name) or False)
    assert check.exists("h1", lambda name: True) is True
    assert asked == []


def test_the_answer_is_kept_for_a_while_then_asked_again() -> None:
    asked: list[str] = []
    cluster = {"h1"}
    clock = Clock()
    check = NodeCheck(lambda name: asked.append(name) or name in cluster, clock)
    unindexed = lambda name: False  # noqa: E731
    assert check.exists("h1", unindexed) is True
    cluster.clear()  # deleted since
    clock.now += NODE_CHECK_SECONDS / 2
    assert check.exists("h1", unindexed) is True
    assert check.exists("h2", unindexed) is False
    assert asked == ["h1", "h2"]
    clock.now += NODE_CHECK_SECONDS
    assert check.exists("h1", unindexed) is False
    assert asked == ["h1", "h2", "h1"]


def test_an_api_error_does_not_make_a_node_lost_and_is_not_remembered() -> None:
    answers: list[Any] = [urllib3.exceptions.ProtocolError("connection reset"), False]

    def listed(name: str) -> bool:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)

    check = NodeCheck(listed)
    assert check.exists("h1", lambda name: False) is True
    assert check.exists("h1", lambda name: False) is False


def test_the_api_server_is_asked_with_one_list_of_the_node_by_name() -> None:
    server = PodServer({"h5": {"name": "h5", "uid": "uid-h5"}})  # answers a LIST by metadata.name
    api = KubeApi(cast(Any, server))
    assert api.node_exists("h5") is True
    assert api.node_exists("h6") is False
    assert [method for method, _ in server.sent] == ["GET", "GET"]
    assert all(path.startswith("/api/v1/nodes?limit=1&") for _, path in server.sent)
