"""The job cache the reconciler reads instead of a GET, the resync loop that replaces kopf's per-job timers, and
the worker-pod event filter (controller/jobs.py, controller/resync.py, controller/handlers.py)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytest

from kubefit.api.resource import JobKey
from kubefit.controller.handlers import SameFacts, WorkerChange, WorkerChanges, WorkerNews
from kubefit.controller.jobs import DELETED_MEMORY_SECONDS, JobCache
from kubefit.controller.resync import BUSY_SHARE, ResyncLoop
from kubefit.decisions.inventory import NodeFacts, PodUsage

KEY = ("team", "llama")


def job(
    version: int, replicas: int = 2, uid: str = "uid-1", status: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "llama", "namespace": "team", "uid": uid, "resourceVersion": str(version)},
        "spec": {"replicas": replicas},
        "status": status or {},
    }


class Fetches:
    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.answer = answer

    def __call__(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append((namespace, name))
        return self.answer


def test_a_held_job_is_read_without_asking_the_api_server() -> None:
    cache, fetch = JobCache(), Fetches()
    assert cache.observe(KEY, job(5))  # new: reconcile it
    assert cache.read(KEY, fetch) == job(5) and fetch.calls == []


def test_a_job_not_held_is_fetched() -> None:
    cache, fetch = JobCache(), Fetches(job(3))
    assert cache.read(KEY, fetch) == job(3) and fetch.calls == [KEY]


def test_an_older_event_does_not_replace_the_answer_of_a_status_patch() -> None:
    cache = JobCache()
    cache.observe(KEY, job(5))
    written = job(7, status={"phase": "Running"})
    cache.observe(KEY, written)  # the status patch's answer
    assert not cache.observe(KEY, job(6))  # the watch event of an earlier write, late
    assert cache.read(KEY, Fetches()) == written


def test_only_a_change_besides_the_resource_version_is_a_change() -> None:
    cache = JobCache()
    cache.observe(KEY, job(5, status={"phase": "Running"}))
    # The watch event of the operator's own status patch, whose answer it kept: nothing to reconcile.
    same = job(6, status={"phase": "Running"})
    same["metadata"]["managedFields"] = [{"manager": "kubefit"}]
    assert not cache.observe(KEY, same)
    assert cache.observe(KEY, job(7, replicas=3, status={"phase": "Running"}))  # kubectl scale
    assert cache.observe(KEY, job(8, replicas=3, status={}))  # someone else's status edit


def test_a_deleted_job_is_answered_gone_without_a_get_and_not_brought_back() -> None:
    now = [100.0]
    cache, fetch = JobCache(clock=lambda: now[0]), Fetches(job(9))
    cache.observe(KEY, job(5))
    cache.deleted(KEY, "uid-1")
    assert cache.read(KEY, fetch) is None and fetch.calls == []  # its pods' deletion events ask for it
    assert not cache.observe(KEY, job(6))  # a status patch's answer after the DELETED event
    assert KEY not in cache
    now[0] += DELETED_MEMORY_SECONDS + 1
    assert cache.read(KEY, fetch) == job(9) and fetch.calls == [KEY]  # long gone: ask again


def test_a_job_made_again_under_the_same_name_is_held_at_once() -> None:
    cache = JobCache()
    cache.observe(KEY, job(5))
    cache.deleted(KEY, "uid-1")
    assert cache.observe(KEY, job(9, uid="uid-2"))
    assert cache.read(KEY, Fetches()) == job(9, uid="uid-2")


def test_the_old_job_found_gone_late_does_not_take_the_new_one_of_its_name_out() -> None:
    """A reconcile of the old job learns it is gone (its status write refused) after the new job's event."""
    cache, fetch = JobCache(), Fetches()
    cache.observe(KEY, job(5))
    cache.deleted(KEY, "uid-1")  # its DELETED event
    cache.observe(KEY, job(9, uid="uid-2"))  # the new job's ADDED event
    cache.deleted(KEY, "uid-1")  # the old job's reconcile, its write refused
    assert cache.read(KEY, fetch) == job(9, uid="uid-2") and KEY in cache and fetch.calls == []
    cache.deleted(KEY, "uid-2")
    assert cache.read(KEY, fetch) is None


def test_resync_spreads_every_job_over_the_period_and_passes_once() -> None:
    now = [0.0]
    reconciled: list[tuple[JobKey, float]] = []
    passes: list[float] = []
    keys = [("team", f"job-{n}") for n in range(4)]
    loop = ResyncLoop(
        30.0,
        keys=lambda: list(keys),
        reconcile=lambda key: reconciled.append((key, now[0])),
        schedule=lambda: passes.append(now[0]),
        clock=lambda: now[0],
    )

    def wait(seconds: float) -> bool:  # a clock that jumps instead of sleeping
        now[0] += seconds
        return False

    loop._stop.wait = wait  # type: ignore[method-assign]
    loop.run_period()
    assert passes == [0.0]
    assert reconciled == [(key, 7.5 * n) for n, key in enumerate(keys)]
    assert now[0] == 30.0  # the next period starts one period after this one


def test_resync_stretches_its_period_so_reconciles_take_at_most_their_share_of_the_time() -> None:
    now = [0.0]
    reconciled: list[float] = []
    keys = [("team", f"job-{n}") for n in range(10)]

    def reconcile(key: JobKey) -> None:
        reconciled.append(now[0])
        now[0] += 1.0  # each reconcile takes 1 s: 10 s of work for a 30 s period, more than its share

    loop = ResyncLoop(30.0, keys=lambda: list(keys), reconcile=reconcile, schedule=lambda: None,
                      clock=lambda: now[0])  # fmt: skip

    def wait(seconds: float) -> bool:
        now[0] += seconds
        return False

    loop._stop.wait = wait  # type: ignore[method-assign]
    loop.run_period()
    gaps = [later - earlier for earlier, later in zip(reconciled, reconciled[1:], strict=False)]
    assert gaps == [pytest.approx(1.0 / BUSY_SHARE)] * 9  # the reconcile, then 4 s of rest at a fifth
    assert now[0] == pytest.approx(10 / BUSY_SHARE - (1 / BUSY_SHARE - 1))  # no wait after the last one
    busy = len(keys) * 1.0
    assert busy / now[0] <= BUSY_SHARE + 0.05


def test_resync_goes_on_after_a_reconcile_raises() -> None:
    reconciled: list[JobKey] = []

    def reconcile(key: JobKey) -> None:
        reconciled.append(key)
        if key[1] == "bad":
            raise RuntimeError("boom")

    loop = ResyncLoop(
        0.01, keys=lambda: [("a", "bad"), ("a", "good")], reconcile=reconcile, schedule=lambda: None
    )
    loop.run_period()
    assert reconciled == [("a", "bad"), ("a", "good")]


def test_resync_starts_once_and_stops() -> None:
    periods = threading.Semaphore(0)
    loop = ResyncLoop(0.01, keys=lambda: [], reconcile=lambda key: None, schedule=periods.release)
    loop.start()
    loop.start()
    assert periods.acquire(timeout=5) and periods.acquire(timeout=5)
    loop.stop()
    assert loop._thread is not None
    loop._thread.join(timeout=5)
    assert not loop._thread.is_alive()


def pod(phase: str = "Pending", node: str | None = None, uid: str = "p1") -> dict[str, Any]:
    return {
        "metadata": {"name": "llama-worker-0", "uid": uid, "labels": {"kubefit.dev/job": "llama"}},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, "conditions": [{"type": "PodScheduled", "status": "True"}]},
    }


def test_worker_pod_events_that_change_nothing_decisions_read_are_skipped() -> None:
    seen = WorkerChanges()
    assert seen.observe("ADDED", pod()).news is WorkerNews.CHANGED
    assert seen.observe("MODIFIED", pod(node="n1")).news is WorkerNews.BOUND  # a pass, not a reconcile
    later = copy.deepcopy(pod(node="n1"))
    later["status"]["conditions"].append({"type": "Initialized", "status": "True"})
    assert seen.observe("MODIFIED", later).news is WorkerNews.NONE  # container creating: the same worker view
    assert seen.observe("MODIFIED", pod("Running", "n1")).news is WorkerNews.CHANGED
    # First seen at a listing.
    assert seen.observe(None, pod("Running", "n1", uid="p2")).news is WorkerNews.CHANGED
    assert seen.observe("DELETED", pod("Running", "n1")).news is WorkerNews.CHANGED
    # The same uid is news again after its deletion.
    assert seen.observe("ADDED", pod()).news is WorkerNews.CHANGED


def test_a_worker_bound_and_changed_in_one_event_is_a_reconcile() -> None:
    seen = WorkerChanges()
    seen.observe("ADDED", pod())
    assert seen.observe("MODIFIED", pod("Running", "n1")).news is WorkerNews.CHANGED
    seen.observe("ADDED", pod(uid="p3"))
    gone = pod(node="n2", uid="p3")
    gone["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    assert seen.observe("MODIFIED", gone).news is WorkerNews.CHANGED  # bound while being deleted


def test_a_worker_whose_job_label_is_removed_or_changed_is_gone_from_that_job() -> None:
    """kopf's index of workers drops a pod once its label is removed, and files it under the new job once it
    is changed, but no worker event of the old job came: it was not reconciled, and the pod stayed here."""
    seen = WorkerChanges()
    seen.observe("ADDED", pod("Running", "n1"))
    unlabelled = pod("Running", "n1")
    unlabelled["metadata"]["labels"] = {}
    assert seen.released(unlabelled) == ("", "llama")
    assert seen.released(unlabelled) is None  # told once, and nothing of it is kept
    relabelled = pod("Running", "n1")
    relabelled["metadata"]["labels"]["kubefit.dev/job"] = "mistral"
    assert seen.observe("ADDED", pod("Running", "n1")).left is None
    change = seen.observe("MODIFIED", relabelled)
    assert (change.left, change.news, change.moves_devices) == (("", "llama"), WorkerNews.CHANGED, True)
    assert seen.observe("MODIFIED", relabelled) == WorkerChange(WorkerNews.NONE)
    assert seen.released(pod(uid="never-a-worker")) is None


def test_a_node_heartbeat_keeps_its_facts_object_and_a_real_change_does_not() -> None:
    seen = SameFacts()
    first = seen.same_or_new(NodeFacts("n1", {"gpu": "h100"}, {"nvidia.com/gpu": "8"}))
    # A heartbeat: kopf's index gets a new, equal object; the scheduler's fingerprint is the objects' identities.
    assert seen.same_or_new(NodeFacts("n1", {"gpu": "h100"}, {"nvidia.com/gpu": "8"})) is first
    cordoned = seen.same_or_new(NodeFacts("n1", {"gpu": "h100"}, {"nvidia.com/gpu": "8"}, schedulable=False))
    assert cordoned is not first and not cordoned.schedulable
    seen.forget("n1")
    assert (
        seen.same_or_new(NodeFacts("n1", {"gpu": "h100"}, {"nvidia.com/gpu": "8"}, schedulable=False))
        is not cordoned
    )


def test_the_creation_event_of_a_worker_the_reconciler_made_is_skipped_and_its_next_change_is_not() -> None:
    made = {(("team", "llama"), "llama-worker-0")}
    seen = WorkerChanges(lambda key, name: (key, name) in made)
    mine = pod()
    mine["metadata"]["namespace"] = "team"
    # Counted already by the reconcile that created it.
    assert seen.observe("ADDED", mine).news is WorkerNews.NONE
    running = copy.deepcopy(mine)
    running["spec"]["nodeName"] = "n1"
    running["status"]["phase"] = "Running"
    assert seen.observe("MODIFIED", running).news is WorkerNews.CHANGED
    stranger = pod(uid="p9")
    stranger["metadata"].update(namespace="team", name="llama-worker-1")
    assert (
        seen.observe("ADDED", stranger).news is WorkerNews.CHANGED
    )  # made by someone else (or by an operator before a restart)


class ChangingIndex(Mapping[Any, Any]):
    """A kopf index read while kopf's event loop changes it: the first `fails` iterations raise as a dict
    changed during iteration does."""

    def __init__(self, items: dict[Any, Any], fails: int) -> None:
        self.items_, self.fails = items, fails

    def __getitem__(self, key: Any) -> Any:
        return self.items_[key]

    def __len__(self) -> int:
        return len(self.items_)

    def __iter__(self) -> Iterator[Any]:
        if self.fails:
            self.fails -= 1
            raise RuntimeError("dictionary changed size during iteration")
        return iter(self.items_)


def test_an_index_read_that_meets_a_change_is_read_again() -> None:
    from kubefit.controller.handlers import INDEX_READ_ATTEMPTS, cluster_view, read_consistently

    node = NodeFacts("n1", {}, {})
    usage = PodUsage("n1", {"nvidia.com/gpu": 1})
    view = cluster_view(
        cast(Any, ChangingIndex({"n1": [node]}, fails=3)),
        cast(Any, ChangingIndex({"n1": [usage]}, fails=3)),
        cast(Any, ChangingIndex({}, fails=0)),
    )
    assert view.nodes() == [node]
    assert {name: list(pods) for name, pods in view.usage().items()} == {"n1": [usage]}

    always = ChangingIndex({"n1": [node]}, fails=INDEX_READ_ATTEMPTS)
    with pytest.raises(RuntimeError, match="changed size"):
        read_consistently(lambda: list(always))


class VanishingIndex(ChangingIndex):
    """kopf's Index takes items() and values() from Mapping: a key is yielded, then looked up. A store the
    event loop deleted in between (a node's last pod gone) raises KeyError for the first `fails` lookups."""

    def __getitem__(self, key: Any) -> Any:
        if self.fails:
            self.fails -= 1
            raise KeyError(key)
        return self.items_[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items_)


def test_an_index_read_that_meets_a_store_deleted_under_it_is_read_again() -> None:
    """The KeyError escaped: a healthy job's reconcile turned ReconcileError, or a pass failed."""
    from kubefit.controller.handlers import cluster_view

    node = NodeFacts("n1", {}, {})
    usage = PodUsage("n1", {"nvidia.com/gpu": 1})
    view = cluster_view(
        cast(Any, VanishingIndex({"n1": [node]}, fails=1)),
        cast(Any, VanishingIndex({"n1": [usage]}, fails=1)),
        cast(Any, ChangingIndex({}, fails=0)),
    )
    assert view.nodes() == [node]
    assert {name: list(pods) for name, pods in view.usage().items()} == {"n1": [usage]}


def test_a_worker_s_unschedulable_reason_is_read_while_it_is_not_bound() -> None:
    from kubefit.decisions.observed import worker_from_pod

    body = pod(uid="p1")
    body["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes:\n " + "x" * 300,
        }
    ]
    worker = worker_from_pod(body)
    assert worker is not None and worker.unschedulable is not None
    assert worker.unschedulable.startswith("0/3 nodes: x") and len(worker.unschedulable) == 200
    body["spec"]["nodeName"] = "n1"  # bound since: the old condition is no reason any more
    assert worker_from_pod(body).unschedulable is None  # type: ignore[union-attr]
    body["spec"].pop("nodeName")
    body["status"]["conditions"][0]["reason"] = "SchedulingGated"
    assert worker_from_pod(body).unschedulable is None  # type: ignore[union-attr]


def test_kube_scheduler_rewriting_its_message_is_no_news_but_its_first_word_is() -> None:
    """Each retry rewrites PodScheduled's message as node counts move: a reconcile and a status write each."""
    seen = WorkerChanges()

    def unschedulable(message: str) -> dict[str, Any]:
        body = pod(uid="p7")
        body["status"]["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ]
        return body

    assert seen.observe("ADDED", pod(uid="p7")).news is WorkerNews.CHANGED
    assert seen.observe("MODIFIED", unschedulable("0/3 nodes are available")).news is WorkerNews.CHANGED
    assert seen.observe("MODIFIED", unschedulable("0/4 nodes are available")).news is WorkerNews.NONE
    assert seen.observe("MODIFIED", pod(uid="p7")).news is WorkerNews.CHANGED  # scheduled: the note goes
