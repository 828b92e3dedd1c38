"""Pods, nodes and ResourceQuotas deleted while a watch was broken (controller/relist.py): found by a list after kopf's
listing, and dropped from kopf's own indexes. The end-to-end proof is in tests/e2e/test_chaos.py (test 4)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import pytest
from kopf._core.engines.indexing import OperatorIndexer

from kubefit.controller.handlers import SameFacts, WorkerChanges, _discard, _indexed, _relist_checker
from kubefit.controller.quotas import QUOTA_INDEX
from kubefit.controller.relist import NODES, PODS, QUOTAS, Indexed, RelistCheck, gone
from kubefit.decisions.inventory import node_facts, pod_usage
from kubefit.decisions.observed import worker_from_pod
from kubefit.decisions.quota import quota_from

GPU_QUOTA = "requests.nvidia.com/gpu"


class Lister:
    def __init__(self, nodes: set[str], pods: dict[str, set[str]], fail: bool = False) -> None:
        self.nodes, self.pods, self.fail = nodes, pods, fail
        self.quotas: dict[str, set[str]] = {}
        self.calls: list[str] = []

    def node_uids(self) -> set[str]:
        self.calls.append("nodes")
        if self.fail:
            raise OSError("connection refused")
        return self.nodes

    def pod_uids(self, namespace: str) -> set[str]:
        self.calls.append(f"pods/{namespace}")
        if self.fail:
            raise OSError("connection refused")
        return self.pods.get(namespace, set())

    def quota_uids(self, namespace: str) -> set[str]:
        self.calls.append(f"resourcequotas/{namespace}")
        return self.quotas.get(namespace, set())


NODE_A, NODE_B = Indexed(NODES, None, "a", "uid-a"), Indexed(NODES, None, "b", "uid-b")
POD_1, POD_2 = Indexed(PODS, "ns1", "p1", "uid-1"), Indexed(PODS, "ns1", "p2", "uid-2")
POD_3 = Indexed(PODS, "ns2", "p3", "uid-3", job="train")


def test_gone_lists_each_kind_and_namespace_once_and_returns_what_it_no_longer_has() -> None:
    lister = Lister({"uid-a"}, {"ns1": {"uid-1"}, "ns2": set()})
    assert gone([NODE_A, NODE_B, POD_1, POD_2, POD_3], lister) == [NODE_B, POD_2, POD_3]
    assert sorted(lister.calls) == ["nodes", "pods/ns1", "pods/ns2"]


def test_a_node_registered_again_under_its_name_is_another_node() -> None:
    assert gone([Indexed(NODES, None, "a", "old"), NODE_A], Lister({"uid-a"}, {})) == [
        Indexed(NODES, None, "a", "old")
    ]


def _listed_on_a_loop(check: RelistCheck, *kinds: str) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """A running event loop on a thread of its own (kopf's), on which `kinds` were listed."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def listed() -> None:
        for kind in kinds:
            check.listed(kind)

    asyncio.run_coroutine_threadsafe(listed(), loop).result(5)
    return loop, thread


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_nothing_is_listed_until_kopf_lists_and_then_only_the_kind_it_listed() -> None:
    lister = Lister(set(), {})
    check = RelistCheck(lister)
    held = [NODE_A, POD_1]
    dropped: list[tuple[str, list[Indexed]]] = []

    def discard(vanished: list[Indexed]) -> None:
        dropped.append((threading.current_thread().name, vanished))

    handled: list[list[Indexed]] = []
    assert check.check(lambda: held, discard, handled.append) == []
    assert lister.calls == []
    loop, thread = _listed_on_a_loop(check, PODS)
    try:
        assert check.check(lambda: held, discard, handled.append) == [POD_1]
        assert lister.calls == ["pods/ns1"]  # nodes were not listed again: their node stays
        # kopf's loop alone changes its indexes: the entries are dropped there, not on the resync's thread
        assert [vanished for _, vanished in dropped] == [[POD_1]]
        assert dropped[0][0] != threading.current_thread().name
        assert handled == [[POD_1]]
        assert check.check(lambda: held, discard, handled.append) == []  # done: not due again
        assert lister.calls == ["pods/ns1"]
    finally:
        _stop(loop, thread)


def test_a_list_that_fails_is_tried_again_at_the_next_check() -> None:
    lister = Lister({"uid-a"}, {}, fail=True)
    check = RelistCheck(lister)
    loop, thread = _listed_on_a_loop(check, NODES)
    try:
        with pytest.raises(OSError):
            check.check(lambda: [NODE_A, NODE_B], lambda _: None, lambda _: None)
        lister.fail = False
        assert check.check(lambda: [NODE_A, NODE_B], lambda _: None, lambda _: None) == [NODE_B]
    finally:
        _stop(loop, thread)


def test_a_discard_that_fails_is_tried_again_at_the_next_check() -> None:
    # The kind was no longer due: the vanished objects' entries stayed until kopf listed the kind again.
    lister = Lister({"uid-a"}, {})
    check = RelistCheck(lister)
    loop, thread = _listed_on_a_loop(check, NODES)
    handled: list[list[Indexed]] = []

    def failing(_: list[Indexed]) -> None:
        raise RuntimeError("the discard failed")

    try:
        with pytest.raises(RuntimeError):
            check.check(lambda: [NODE_A, NODE_B], failing, handled.append)
        assert handled == []
        assert check.check(lambda: [NODE_A, NODE_B], lambda _: None, handled.append) == [NODE_B]
        assert handled == [[NODE_B]]
    finally:
        _stop(loop, thread)


def _pod(namespace: str, name: str, uid: str, node: str, job: str | None = None) -> dict[str, Any]:
    labels = {"kubefit.dev/job": job} if job else {}
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": uid, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}}]},
        "status": {"phase": "Running"},
    }


def _indexes_of(nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """kopf's own indexers filled as its indexing of these objects would (keys: kopf's make_key)."""
    indexers = {name: OperatorIndexer() for name in ("kubefit_nodes", "kubefit_pod_usage", "kubefit_workers")}
    for node in nodes:
        facts = node_facts(node)
        indexers["kubefit_nodes"].replace((None, facts.name, node["metadata"]["uid"]), {facts.name: facts})
    for pod in pods:
        metadata = pod["metadata"]
        key = (metadata["namespace"], metadata["name"], metadata["uid"])
        usage = pod_usage(pod)
        assert usage is not None
        indexers["kubefit_pod_usage"].replace(key, {usage.node_name: usage})
        worker = worker_from_pod(pod)
        if metadata["labels"] and worker is not None:
            job_key = (metadata["namespace"], metadata["labels"]["kubefit.dev/job"])
            indexers["kubefit_workers"].replace(key, {job_key: worker})
    return {name: indexer.index for name, indexer in indexers.items()}


def test_the_indexes_objects_are_read_with_kopfs_keys_and_dropped_from_every_index() -> None:
    old_node = {
        "metadata": {"name": "n1", "uid": "node-old"},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    }
    new_node = {
        "metadata": {"name": "n1", "uid": "node-new"},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}},
    }
    worker = _pod("ns", "train-worker-0", "w0", "n1", job="train")
    other = _pod("ns", "other", "o1", "n1")
    indexes = _indexes_of([old_node, new_node], [worker, other])

    held = _indexed(indexes)
    assert sorted(held, key=str) == sorted(
        [
            Indexed(NODES, None, "n1", "node-old"),
            Indexed(NODES, None, "n1", "node-new"),
            Indexed(PODS, "ns", "other", "o1"),
            Indexed(PODS, "ns", "train-worker-0", "w0"),
        ],
        key=str,
    )
    assert next(item for item in held if item.uid == "w0").job == "train"

    _discard(indexes, [Indexed(NODES, None, "n1", "node-old"), Indexed(PODS, "ns", "train-worker-0", "w0")])
    assert [facts.uid for store in indexes["kubefit_nodes"].values() for facts in store] == ["node-new"]
    assert [usage.pod[1] for store in indexes["kubefit_pod_usage"].values() for usage in store] == ["other"]
    assert "ns" not in {key[0] for key in indexes["kubefit_workers"]}


def test_a_node_registered_again_under_its_name_is_not_replayed_as_deleted() -> None:
    """The relist indexed the new node before the check found the old one gone: dropping the old entry must
    not tell the scheduler that the name is gone (it would count the new node as Ready, whatever it is)."""
    allocatable = {"nvidia.com/gpu": "8"}
    old_node = {"metadata": {"name": "n1", "uid": "node-old"}, "status": {"allocatable": allocatable}}
    new_node = {"metadata": {"name": "n1", "uid": "node-new"}, "status": {"allocatable": allocatable}}
    gone_node = {"metadata": {"name": "n2", "uid": "node-2"}, "status": {"allocatable": allocatable}}
    indexes = _indexes_of([old_node, new_node, gone_node], [])
    told: list[str] = []

    class Scheduler:
        def node_changed(self, facts: Any, name: str, ready: bool, view: Any) -> None:
            told.append(name)

        def request(self, *_: Any) -> None:
            pass

    relists = RelistCheck(Lister({"node-new"}, {}))
    check = _relist_checker((relists, SameFacts()), WorkerChanges(), Scheduler(), None, indexes)  # type: ignore[arg-type]
    loop, thread = _listed_on_a_loop(relists, NODES)
    try:
        check()
    finally:
        _stop(loop, thread)
    assert told == ["n2"]
    assert [facts.uid for store in indexes["kubefit_nodes"].values() for facts in store] == ["node-new"]


def test_a_quota_deleted_while_the_watch_was_broken_is_found_dropped_and_its_namespace_decided_again() -> (
    None
):
    """Left in kopf's index, a deleted quota held its namespace's jobs back as QuotaExceeded for good."""
    gpus = {GPU_QUOTA: "8"}
    quotas = [
        {"metadata": {"namespace": "ns", "name": name, "uid": uid}, "status": {"hard": gpus, "used": gpus}}
        for name, uid in (("kept", "q-kept"), ("deleted", "q-gone"))
    ]
    indexes = _indexes_of([], [])
    indexer = OperatorIndexer()
    for quota in quotas:
        metadata = quota["metadata"]
        indexer.replace((metadata["namespace"], metadata["name"], metadata["uid"]), {"ns": quota_from(quota)})
    indexes[QUOTA_INDEX] = indexer.index
    held = _indexed(indexes)
    assert sorted(held, key=str) == [
        Indexed(QUOTAS, "ns", "deleted", "q-gone"),
        Indexed(QUOTAS, "ns", "kept", "q-kept"),
    ]
    lister = Lister(set(), {})
    lister.quotas = {"ns": {"q-kept"}}
    assert gone(held, lister) == [Indexed(QUOTAS, "ns", "deleted", "q-gone")]
    assert lister.calls == ["resourcequotas/ns"]
    _discard(indexes, [Indexed(QUOTAS, "ns", "deleted", "q-gone")])
    assert [quota.name for store in indexes[QUOTA_INDEX].values() for quota in store] == ["kept"]
    decided: list[tuple[str, bool]] = []

    class Reconciler:
        def quota_changed(self, namespace: str, view: object, every_job: bool = False) -> None:
            decided.append((namespace, every_job))

    class Scheduler:
        def request(self, trigger: str, view: object) -> None:
            pass

    check = RelistCheck(lister)
    loop, thread = _listed_on_a_loop(check, QUOTAS)
    try:
        checker = _relist_checker(
            (check, SameFacts()),
            WorkerChanges(),
            Scheduler(),
            Reconciler(),
            indexes,  # type: ignore[arg-type]
        )
        lister.quotas = {"ns": set()}  # the kept one deleted too, meanwhile
        checker()
    finally:
        _stop(loop, thread)
    assert decided == [("ns", True)]


def test_a_listing_is_checked_soon_after_its_first_event_not_only_at_the_resync() -> None:
    # After an API server restart a deleted pod's devices counted as held for up to a resync period: a pass
    # in between could preempt a job for them. One check follows each burst of a listing's events.
    lister = Lister({"uid-a"}, {})
    check = RelistCheck(lister, delay=0.05)
    checked: list[list[Indexed]] = []
    done = threading.Event()

    def check_now() -> None:
        checked.append(check.check(lambda: [NODE_A, NODE_B], lambda _: None, lambda _: None))
        done.set()

    check.check_soon(check_now)
    loop, thread = _listed_on_a_loop(check, NODES, NODES, NODES)
    try:
        assert done.wait(5)
        time.sleep(0.2)
        assert checked == [[NODE_B]]  # one check for the burst, which found the node deleted meanwhile
        assert lister.calls == ["nodes"]
    finally:
        _stop(loop, thread)


def test_the_soon_check_runs_in_the_context_of_kopfs_loop_once_the_listing_is_quiet() -> None:
    # Its reconciles post events through kopf, which reads its settings from context variables: a timer
    # thread has none of its own (each reconcile failed with a LookupError).
    mark: contextvars.ContextVar[str] = contextvars.ContextVar("mark")
    check = RelistCheck(Lister(set(), {}), delay=0.1)
    seen: list[tuple[str | None, float]] = []
    done = threading.Event()
    check.check_soon(lambda: (seen.append((mark.get(None), time.monotonic())), done.set()))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def listing() -> float:
        mark.set("kopf")
        for _ in range(5):  # a listing's events over 0.2 s: one check, after the last
            check.listed(PODS)
            last = time.monotonic()
            await asyncio.sleep(0.05)
        return last

    try:
        last = asyncio.run_coroutine_threadsafe(listing(), loop).result(5)
        assert done.wait(5)
        time.sleep(0.3)
        assert [value for value, _ in seen] == ["kopf"]
        # Quiet for the delay after the last event (the first came 0.2 s before it); a little slack for clocks.
        assert seen[0][1] >= last + 0.1 - 0.01
    finally:
        _stop(loop, thread)
