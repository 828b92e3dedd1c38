"""A node kopf's index lacks is asked of the API server before its workers are read as lost
(controller/node_check.py): the index can lag the pod index (separate watch streams), and a worker read as
on a lost node is deleted by a suspend or a scale-down without its checkpoint."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from test_reconciler import NAMESPACE, Harness, PodServer, job_manifest, record_events
from test_reconciler import _Answer as HttpAnswer

from kubefit.controller import node_check
from kubefit.controller.cluster import ClusterView
from kubefit.controller.kube import KubeApi
from kubefit.controller.node_check import NODE_CHECK_SECONDS, NodeCheck
from kubefit.controller.node_check import _Answer as NodeAnswer


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
    record_events(harness, monkeypatch)
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
    assert lagging.calls("node_exists") == [("node_exists", "h5")]  # asked once for both, then remembered


def test_workers_on_a_node_the_cluster_no_longer_has_are_still_lost(lagging: NodeIndexLag) -> None:
    _running_on_h5_then_suspended(lagging)  # kube.nodes lacks h5: deleted
    assert not lagging.events("CheckpointRequested")
    assert sorted(call[1] for call in lagging.calls("delete_pod")) == ["llama-worker-0", "llama-worker-1"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Cluster:
    """The API server's nodes, the LISTs asked of it, and what each LIST costs on the clock."""

    def __init__(self, nodes: set[str], clock: Clock, seconds_per_list: float = 0.0) -> None:
        self.nodes, self.clock, self.seconds = nodes, clock, seconds_per_list
        self.asked: list[str] = []
        self.error: Exception | None = None

    def _list(self, what: str) -> None:
        self.asked.append(what)
        self.clock.now += self.seconds
        if self.error is not None:
            raise self.error

    def by_name(self, name: str) -> bool:
        self._list(name)
        return name in self.nodes

    def every_node(self) -> set[str]:
        self._list("*")
        return set(self.nodes)

    def check(self) -> NodeCheck:
        return NodeCheck(self.by_name, self.every_node, self.clock)


def test_no_node_to_check_asks_nothing() -> None:
    cluster = Cluster({"h1"}, Clock())
    assert cluster.check().present([]) == frozenset()
    assert cluster.asked == []


def test_the_answer_is_kept_for_a_while_then_asked_again() -> None:
    clock = Clock()
    cluster = Cluster({"h1"}, clock)
    check = cluster.check()
    assert check.present(["h1"]) == {"h1"}
    cluster.nodes.clear()  # deleted since
    clock.now += NODE_CHECK_SECONDS / 2
    assert check.present(["h1"]) == {"h1"}
    assert check.present(["h2"]) == frozenset()
    assert cluster.asked == ["h1", "h2"]
    clock.now += NODE_CHECK_SECONDS
    assert check.present(["h1"]) == frozenset()
    assert cluster.asked == ["h1", "h2", "h1"]


def test_many_missing_nodes_are_one_list_of_every_node_kept_from_when_it_returned() -> None:
    # A pool of 125 nodes reclaimed at once, on a slow API server (50 ms a LIST): 125 LISTs by name, one
    # after another, took 6.3 s a reconcile, and the first answers were stale before the last came.
    clock = Clock()
    pool = {f"spot-{index}" for index in range(125)}
    cluster = Cluster({"kept-0", "spot-7"}, clock, seconds_per_list=0.05)
    check = cluster.check()
    assert check.present(pool) == {"spot-7"}
    assert cluster.asked == ["*"]
    clock.now += NODE_CHECK_SECONDS - 0.01  # 5 s after the LIST returned, less a little
    assert check.present(pool) == {"spot-7"}
    assert cluster.asked == ["*"]


def test_an_api_error_reads_the_nodes_as_present_and_is_asked_again_only_after_a_while() -> None:
    # An unreachable API server was asked once per worker of every reconcile, each waiting for its timeout.
    clock = Clock()
    cluster = Cluster(set(), clock)
    cluster.error = urllib3.exceptions.ProtocolError("connection reset")
    check = cluster.check()
    assert check.present(["h1", "h2"]) == {"h1", "h2"}  # not known to be gone
    assert check.present(["h1"]) == {"h1"}
    assert cluster.asked == ["*"]
    cluster.error = None
    clock.now += NODE_CHECK_SECONDS
    assert check.present(["h1"]) == frozenset()
    assert cluster.asked == ["*", "h1"]


def test_a_slow_list_holds_up_no_check_of_other_nodes() -> None:
    # One lock across the LIST made every reconcile missing any node wait for a stuck one (up to the
    # request timeout), and with 16 of them no job or pod event was handled.
    entered, release = threading.Event(), threading.Event()

    def by_name(name: str) -> bool:
        if name == "stuck":
            entered.set()
            release.wait(10)
        return False

    check = NodeCheck(by_name, set)
    stuck = threading.Thread(target=lambda: check.present(["stuck"]))
    stuck.start()
    assert entered.wait(5)
    started = time.monotonic()
    assert check.present(["gone"]) == frozenset()
    assert time.monotonic() - started < 1
    release.set()
    stuck.join(5)


def test_a_list_of_every_node_answers_for_other_nodes_asked_later() -> None:
    # A pool of 64 reclaimed nodes, 48 jobs each on a few of them: every reconcile listed every node again.
    clock = Clock()
    cluster = Cluster({"kept-0"}, clock)
    check = cluster.check()
    assert check.present(["spot-1", "spot-2"]) == frozenset()
    assert check.present(["spot-3", "spot-4"]) == frozenset()
    assert check.present(["kept-0"]) == {"kept-0"}
    assert cluster.asked == ["*"]


def test_reconciles_missing_nodes_at_once_share_one_list_of_every_node() -> None:
    # Without a lock across the LIST, 16 reconciles of a reclaimed pool's jobs each listed every node.
    entered, release = threading.Event(), threading.Event()
    asked: list[str] = []

    def every_node() -> set[str]:
        asked.append("*")
        entered.set()
        release.wait(5)
        return {"kept-0", "spot-3"}

    check = NodeCheck(lambda name: True, every_node)
    answers: dict[int, frozenset[str]] = {}

    def reconcile(index: int) -> None:
        answers[index] = check.present([f"spot-{index}", f"spot-{index + 1}"])

    first = threading.Thread(target=reconcile, args=(0,))
    first.start()
    assert entered.wait(5)
    others = [threading.Thread(target=reconcile, args=(index,)) for index in range(1, 8)]
    for thread in others:
        thread.start()
    time.sleep(0.2)  # the others wait on the LIST in flight
    release.set()
    for thread in [first, *others]:
        thread.join(5)
    assert asked == ["*"]
    assert answers[2] == {"spot-3"} and answers[3] == {"spot-3"} and answers[0] == frozenset()


def test_a_reconcile_waits_for_anothers_list_a_while_then_reads_the_nodes_as_present(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node_check, "NODE_CHECK_WAIT_SECONDS", 0.2)
    entered, release = threading.Event(), threading.Event()

    def by_name(name: str) -> bool:
        entered.set()
        release.wait(5)
        return False

    check = NodeCheck(by_name, set)
    stuck = threading.Thread(target=lambda: check.present(["h5"]))
    stuck.start()
    assert entered.wait(5)
    assert check.present(["h5"]) == {"h5"}  # not known to be gone
    release.set()
    stuck.join(5)
    assert check.present(["h5"]) == frozenset()  # the LIST's answer, once it came


def test_a_later_list_of_every_node_outweighs_an_earlier_answer_by_name() -> None:
    clock = Clock()
    cluster = Cluster(set(), clock)
    check = cluster.check()
    assert check.present(["x"]) == frozenset()  # by name: gone
    cluster.nodes.add("x")  # registered again under its name
    clock.now += 1
    assert check.present(["y", "z"]) == frozenset()  # another reconcile's: a LIST of every node, begun later
    assert check.present(["x"]) == {"x"}  # that LIST's answer, not the earlier one by name
    assert cluster.asked == ["x", "*"]


def test_of_two_answers_the_later_begun_list_stands() -> None:
    clock = Clock()
    check = NodeCheck(lambda name: True, set, clock)
    check._answers["h5"] = NodeAnswer(
        False, asked=clock.now + 1, returned=clock.now + 1
    )  # a LIST begun later
    clock.now += 0.5
    check._ask({"h5"})  # begun earlier than that one, returned after it
    assert check.present(["h5"]) == frozenset()


def test_the_api_server_is_asked_with_one_list_of_the_node_by_name() -> None:
    server = PodServer({"h5": {"name": "h5", "uid": "uid-h5"}})  # answers a LIST by metadata.name
    api = KubeApi(cast(Any, server))
    assert api.node_exists("h5") is True
    assert api.node_exists("h6") is False
    assert [method for method, _ in server.sent] == ["GET", "GET"]
    assert all(path.startswith("/api/v1/nodes?limit=1&") for _, path in server.sent)


class PagedNodes:
    """The API server's node list in pages of two, as KubeApi's REST calls read it."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.sent: list[str] = []

    def param_serialize(self, method: str, path: str, body: Any = None, **_: Any) -> tuple[str, str, Any]:
        return method, path, body

    def call_api(self, method: str, path: str, body: Any, _request_timeout: object = None) -> HttpAnswer:
        self.sent.append(path)
        start = int((parse_qs(urlsplit(path).query).get("continue") or ["0"])[0])
        page = [{"metadata": {"name": name, "uid": f"uid-{name}"}} for name in self.names[start : start + 2]]
        more = start + 2 < len(self.names)
        return HttpAnswer(200, {"items": page, "metadata": {"continue": str(start + 2) if more else ""}})


def test_every_nodes_name_is_read_page_by_page() -> None:
    server = PagedNodes(["a", "b", "c", "d", "e"])
    assert KubeApi(cast(Any, server)).node_names() == {"a", "b", "c", "d", "e"}
    assert len(server.sent) == 3 and all(path.startswith("/api/v1/nodes?limit=") for path in server.sent)
