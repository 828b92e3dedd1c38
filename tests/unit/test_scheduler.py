"""The admission queue (controller/scheduler.py) against fake indexes and P's real planner.

What a pass reads of the cluster (capacity, what admitted jobs hold, eligible nodes), which jobs it
reconciles, debouncing, restart recovery and forgetting. The planner's own rules are tested in
test_admission.py; here every expected grant follows from them for the small clusters below.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import kubefit.controller.scheduler as scheduler_module
import kubefit.decisions.node_sets as node_sets
from kubefit.api.resource import JobKey
from kubefit.controller.cluster import ClusterView
from kubefit.controller.scheduler import (
    ADMISSION_TRIGGER,
    PASS_SPACING,
    Grant,
    Scheduler,
    SchedulerSettings,
)
from kubefit.decisions.admission import AdmissionPlan, Demand, plan_admissions
from kubefit.decisions.inventory import NodeFacts, PodUsage
from kubefit.decisions.node_match import ANYWHERE, Placement, Taint
from kubefit.decisions.node_sets import eligible_nodes, node_capacity
from kubefit.decisions.observed import WorkerPod
from kubefit.metrics import AcceleratorCount, OperatorMetrics
from kubefit.sizing.catalog import load_catalog

CATALOG = load_catalog()
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
GPU = "nvidia.com/gpu"


def node(name: str, gpus: int = 8, labels: Mapping[str, str] | None = None, **facts: Any) -> NodeFacts:
    return NodeFacts(name, {**H100, **(labels or {})}, {GPU: str(gpus)}, **facts)


def demand(
    name: str,
    *,
    per_worker: int = 4,
    min_workers: int = 2,
    want: int = 4,
    priority: int = 0,
    created: float = 0.0,
) -> Demand:
    return Demand(
        key=("ns", name),
        priority=priority,
        created=created,
        accelerator="nvidia-h100-80gb",
        per_worker=per_worker,
        min_workers=min_workers,
        want_workers=want,
        elastic=True,
        preemption="Never",
    )


def worker(
    job: str, index: int, node_name: str | None, *, terminating: bool = False, phase: str = "Running"
) -> WorkerPod:
    return WorkerPod(f"{job}-worker-{index}", index, f"uid-{job}-{index}", phase, node_name, terminating)


@dataclass
class FakeCluster:
    """What kopf's indexes would hold; pods bound to nodes count in `usage` like the real index."""

    nodes: list[NodeFacts] = field(default_factory=list)
    workers: dict[JobKey, list[WorkerPod]] = field(default_factory=dict)
    others: dict[str, int] = field(default_factory=dict)  # node -> GPUs held by other workloads
    per_worker: dict[JobKey, int] = field(default_factory=dict)

    def usage(self) -> Mapping[str, Iterable[PodUsage]]:
        found: dict[str, list[PodUsage]] = {}
        for name, gpus in self.others.items():
            found.setdefault(name, []).append(PodUsage(name, {GPU: gpus}))
        for key, pods in self.workers.items():
            for pod in pods:
                if pod.node_name and not pod.finished:
                    found.setdefault(pod.node_name, []).append(
                        PodUsage(pod.node_name, {GPU: self.per_worker.get(key, 4)}, key)
                    )
        return found

    def view(self) -> ClusterView:
        return ClusterView(
            nodes=lambda: list(self.nodes),
            usage=self.usage,
            workers=lambda key: list(self.workers.get(key, [])),
        )


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[JobKey, str]] = []
        self.threads: set[str] = set()  # the names of the threads the reconciles ran on
        self.lock = threading.Lock()

    def __call__(self, key: JobKey, trigger: str, view: ClusterView) -> None:
        with self.lock:
            self.calls.append((key, trigger))
            self.threads.add(threading.current_thread().name)

    def keys(self) -> list[JobKey]:
        with self.lock:
            return sorted(key for key, _ in self.calls)


def sync_scheduler(**settings: Any) -> tuple[Scheduler, Recorder]:
    scheduler = Scheduler(CATALOG, OperatorMetrics(), SchedulerSettings(debounce=None, **settings))
    recorder = Recorder()
    scheduler.reconcile_with(recorder)
    return scheduler, recorder


def test_a_pass_admits_what_fits_and_queues_the_rest_with_the_planners_message() -> None:
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    scheduler, recorder = sync_scheduler()
    scheduler.offer(("ns", "a"), demand("a", created=1), ANYWHERE, cluster.view())
    scheduler.offer(
        ("ns", "b"), demand("b", per_worker=8, min_workers=2, want=2, created=2), ANYWHERE, cluster.view()
    )

    grants = scheduler.snapshot()
    assert grants[("ns", "a")].workers == 4  # 4 workers of 4 GPUs fill both nodes
    assert grants[("ns", "b")].workers == 0
    # The planner's own words, unchanged.
    expected = plan_admissions(
        [demand("b", per_worker=8, min_workers=2, want=2, created=2)], [], [], "BestEffortFIFO", 0, 300
    ).waiting[("ns", "b")]
    assert "needs 2 nodes with 8 free nvidia-h100-80gb" in expected
    assert grants[("ns", "b")].waiting is not None and grants[("ns", "b")].waiting.startswith(
        "InsufficientCapacity: needs 2 nodes with 8 free"
    )
    assert set(recorder.keys()) == {("ns", "a"), ("ns", "b")}
    assert {trigger for _, trigger in recorder.calls} == {ADMISSION_TRIGGER}


def test_only_jobs_whose_grant_changed_are_reconciled() -> None:
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    scheduler, recorder = sync_scheduler()
    scheduler.offer(("ns", "a"), demand("a", created=1), ANYWHERE, cluster.view())
    recorder.calls.clear()

    # A new job that cannot fit: only it is reconciled (to say why it waits); "a" keeps its 4.
    scheduler.offer(
        ("ns", "c"), demand("c", per_worker=8, min_workers=1, want=1, created=3), ANYWHERE, cluster.view()
    )
    assert recorder.keys() == [("ns", "c")]
    recorder.calls.clear()

    # The same demand again changes nothing: no pass result, no reconcile.
    scheduler.offer(
        ("ns", "c"), demand("c", per_worker=8, min_workers=1, want=1, created=3), ANYWHERE, cluster.view()
    )
    assert recorder.calls == []

    # A node appears: "c" is admitted on it, and "a", already at its want, is not touched.
    cluster.nodes.append(node("n3"))
    scheduler.request("node", cluster.view())
    assert recorder.keys() == [("ns", "c")]
    assert scheduler.grant(("ns", "c"), []) == Grant(1, None, "Admitted: 1 worker")


def test_admitted_workers_are_their_own_not_others_and_terminating_ones_are_others() -> None:
    a = ("ns", "a")
    nodes = [node("n1"), node("n2")]
    workers = {a: [worker("a", 0, "n1"), worker("a", 1, "n1"), worker("a", 2, "n2", terminating=True)]}
    usage = FakeCluster(nodes, workers, others={"n2": 2}).usage()
    capacity = {
        entry.name: entry
        for entry in node_capacity(nodes, usage, CATALOG, {a: demand("a")}, {a: workers[a][:2]})
    }
    assert capacity["n1"].used_by_others == 0  # both of a's live workers there are its own
    assert capacity["n2"].used_by_others == 4 + 2  # a terminating worker still holds its GPUs, as do others
    assert capacity["n1"].allocatable == 8 and capacity["n1"].accelerator == "nvidia-h100-80gb"


def test_devices_held_by_other_workloads_are_not_granted() -> None:
    cluster = FakeCluster(nodes=[node("n1"), node("n2")], others={"n1": 8, "n2": 4})
    scheduler, _ = sync_scheduler()
    scheduler.offer(("ns", "a"), demand("a", min_workers=1), ANYWHERE, cluster.view())
    assert scheduler.snapshot()[("ns", "a")].workers == 1

    # The other workload's pod on n1 finishes: the job grows into its devices.
    cluster.others.pop("n1")
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[("ns", "a")].workers == 3


def test_nodes_the_workers_cannot_land_on_are_not_offered() -> None:
    nodes = [
        node("pool", labels={"pool": "mine"}),
        node("elsewhere"),
        node("cordoned", labels={"pool": "mine"}, schedulable=False),
        node("tainted", labels={"pool": "mine"}, taints=(Taint("dedicated", "x", "NoSchedule"),)),
        NodeFacts("cpu", {}, {"cpu": "96"}),
    ]
    placement = Placement({"pool": "mine"}, (), ())
    assert eligible_nodes(placement, nodes, CATALOG) == {"pool"}
    assert eligible_nodes(ANYWHERE, nodes, CATALOG) == {"pool", "elsewhere"}

    cluster = FakeCluster(nodes=nodes)
    scheduler, _ = sync_scheduler()
    scheduler.offer(("ns", "a"), demand("a"), placement, cluster.view())
    assert scheduler.snapshot()[("ns", "a")].workers == 2  # one 8-GPU node it may use


def test_a_node_change_works_out_the_eligible_nodes_once_per_placement_not_per_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    cluster = FakeCluster(nodes=[node(f"n{index}", labels={"pool": "mine"}) for index in range(6)])
    scheduler, _ = sync_scheduler()
    pool = Placement({"pool": "mine"}, (), ())
    placements = [ANYWHERE, pool]
    for index in range(10):
        scheduler.offer(
            ("ns", f"j{index}"),
            demand(f"j{index}", min_workers=1, want=1),
            placements[index % 2],
            cluster.view(),
        )
    classified: list[Placement] = []
    real = node_sets.eligible_nodes

    def counted(placement: Placement, nodes: Iterable[NodeFacts], catalog: Any) -> frozenset[str]:
        classified.append(placement)
        return real(placement, nodes, catalog)

    monkeypatch.setattr(node_sets, "eligible_nodes", counted)
    cluster.nodes[0] = replace(cluster.nodes[0], taints=(Taint("dedicated", "x", "NoSchedule"),))
    scheduler.run_pass(cluster.view())
    assert sorted(map(repr, classified)) == sorted(map(repr, placements))  # once each, for ten jobs
    scheduler.run_pass(cluster.view())
    assert len(classified) == 2  # the nodes did not change again: nothing worked out
    eligible = {entry.eligible[2] for entry in scheduler._entries.values() if entry.eligible}
    assert eligible == {frozenset(f"n{index}" for index in range(1, 6))}  # the tainted node is nobody's


def test_a_placement_changed_while_a_pass_works_out_the_old_one_is_worked_out_in_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pass works out eligible nodes outside the lock: a reconcile that moves the job to another pool
    meanwhile must not leave the old pool's nodes cached for the new placement."""
    cluster = FakeCluster(
        nodes=[node(f"n{index}", labels={"pool": "a" if index < 2 else "b"}) for index in range(4)]
    )
    scheduler, _ = sync_scheduler()
    key, job = ("ns", "moved"), demand("moved", min_workers=1, want=1)
    pool_a, pool_b = Placement({"pool": "a"}, (), ()), Placement({"pool": "b"}, (), ())
    scheduler.offer(key, job, pool_a, cluster.view())
    real = node_sets.eligible_nodes
    moved: list[threading.Thread] = []

    def moved_meanwhile(placement: Placement, nodes: Iterable[NodeFacts], catalog: Any) -> frozenset[str]:
        if not moved:  # the first one worked out in the pass below: pool a
            moved.append(threading.Thread(target=scheduler.offer, args=(key, job, pool_b, cluster.view())))
            moved[0].start()
            deadline = time.monotonic() + 10
            while scheduler._entries[key].placement is not pool_b and time.monotonic() < deadline:
                time.sleep(0.001)
        return real(placement, nodes, catalog)

    monkeypatch.setattr(node_sets, "eligible_nodes", moved_meanwhile)
    cluster.nodes[3] = replace(cluster.nodes[3], labels={**cluster.nodes[3].labels, "zone": "1"})  # a change
    scheduler.run_pass(cluster.view())
    moved[0].join(timeout=10)
    scheduler.run_pass(cluster.view())  # the pass its request asked for (the nodes are as before)
    entry = scheduler._entries[key]
    assert entry.planned is not None and entry.planned[2].eligible_nodes == frozenset({"n2", "n3"})


def test_node_generations_never_take_new_facts_for_ones_seen_before() -> None:
    """A fingerprint of ids matched new facts whenever CPython gave them a freed object's address."""
    generations = node_sets.NodeGenerations()
    first = generations.of([node("n1")])
    assert generations.of([node("n1")]) != first  # new facts objects, the same content: it cannot tell
    for attempt in range(200):  # freed facts, and new ones at the same address: still a change
        facts = node("n1", labels={"attempt": str(attempt)})
        seen = generations.of([facts])
        del facts
        assert generations.of([node("n1", labels={"attempt": "new"})]) != seen
    kept = [node("n1"), node("n2")]
    same = generations.of(kept)
    assert generations.of(list(reversed(kept))) == same  # the same objects, in any order


def test_a_node_that_is_not_ready_is_not_offered_until_it_is() -> None:
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    scheduler, recorder = sync_scheduler()
    scheduler.node_changed(cluster.nodes[1], "n2", ready=False, view=cluster.view())
    scheduler.offer(("ns", "a"), demand("a"), ANYWHERE, cluster.view())
    assert scheduler.snapshot()[("ns", "a")].workers == 2
    recorder.calls.clear()

    # A heartbeat that changes nothing scheduling reads: no pass.
    passes = scheduler.passes
    scheduler.node_changed(cluster.nodes[1], "n2", ready=False, view=cluster.view())
    assert scheduler.passes == passes

    scheduler.node_changed(cluster.nodes[1], "n2", ready=True, view=cluster.view())
    assert scheduler.snapshot()[("ns", "a")].workers == 4
    assert recorder.keys() == [("ns", "a")]


def test_a_job_with_live_workers_seen_first_after_a_restart_keeps_them() -> None:
    a, b = ("ns", "a"), ("ns", "b")
    pods = [worker("a", 0, "n1"), worker("a", 1, "n1"), worker("a", 2, None, phase="Pending")]
    cluster = FakeCluster(nodes=[node("n1"), node("n2")], workers={a: pods})
    scheduler, recorder = sync_scheduler()

    # Its first reconcile after the restart reads its grant before any pass: its three live workers; then
    # it offers its demand (want 3), and nothing about it changes: its workers are left alone.
    assert scheduler.grant(a, pods) == Grant(3, None, "Recovered")
    scheduler.offer(a, demand("a", want=3, created=5), ANYWHERE, cluster.view())
    assert scheduler.snapshot()[a].workers == 3
    assert a not in recorder.keys()
    # b is older, but a's third worker keeps the 4 GPUs it was promised on n2: b does not fit.
    scheduler.offer(b, demand("b", per_worker=8, min_workers=1, want=1, created=0), ANYWHERE, cluster.view())
    grants = scheduler.snapshot()
    assert grants[a].workers == 3 and grants[b].workers == 0

    # Only the first sighting recovers: a job whose workers are later seen again is not re-admitted.
    scheduler.offer(a, None, ANYWHERE, cluster.view())
    assert scheduler.grant(a, pods) == Grant(None)


def test_a_job_shrunk_then_suspended_and_resumed_in_its_handshake_is_taken_back_at_its_shrunk_grant() -> None:
    """Shrunk from 4 to 2 workers for a higher-priority job, suspended while workers 2 and 3 wait to
    checkpoint, then resumed: workers 0 and 1, whose places nobody took, are its own again. It was taken
    back at no grant, as if preempted, and lost all four; one preempted and resumed gets none back."""
    low, high, gone = ("ns", "low"), ("ns", "high"), ("ns", "gone")
    pods = [worker("low", index, "n1" if index < 2 else "n2") for index in range(4)]
    cluster = FakeCluster(nodes=[node("n1"), node("n2")], workers={low: pods})
    scheduler, _ = sync_scheduler()
    scheduler.grant(low, pods)  # seen with its four workers
    scheduler.offer(low, demand("low", min_workers=2, want=4, created=1), ANYWHERE, cluster.view())
    scheduler.offer(
        high, demand("high", min_workers=2, want=2, priority=10, created=2), ANYWHERE, cluster.view()
    )
    assert scheduler.snapshot()[low].workers == 2  # shrunk for high, its workers 2 and 3 leaving
    scheduler.offer(low, None, ANYWHERE, cluster.view())  # suspended during the handshake

    resumed = scheduler.grant(low, pods, admitted_with=2, resumed=True)
    assert resumed.workers == 2
    assert scheduler.snapshot()[high].workers == 2  # its places stay counted for high

    # Suspended while a pass that shrinks it runs: taken back at no more than that pass left it.
    mid = ("ns", "mid")
    scheduler._grant_on_leaving[mid] = 4
    entry = scheduler._entries[high]
    plan = AdmissionPlan(
        grants={mid: 2, high: 2},
        admitted_now=frozenset(),
        shrink={mid: 2},
        preempt=frozenset(),
        waiting={},
        reasons={},
        placement={},
    )
    scheduler._store(plan, {mid: replace(entry), high: entry}, {})
    assert scheduler._grant_on_leaving[mid] == 2

    # Preempted (grant 0), then suspended and resumed: its places are the preemptor's.
    gone_pods = [worker("gone", index, "n3") for index in range(2)]
    scheduler.grant(gone, gone_pods)
    scheduler._entries[gone].granted = 0  # what a pass stores for a job it preempted
    scheduler.offer(gone, None, ANYWHERE, cluster.view())
    scheduler._leaving[gone] = frozenset({high})
    assert scheduler.grant(gone, gone_pods, resumed=True).workers is None


def test_forgetting_a_deleted_job_frees_its_devices_for_the_queue() -> None:
    a, b = ("ns", "a"), ("ns", "b")
    cluster = FakeCluster(nodes=[node("n1")])
    scheduler, recorder = sync_scheduler()
    scheduler.offer(a, demand("a", min_workers=2, want=2, created=1), ANYWHERE, cluster.view())
    scheduler.offer(b, demand("b", min_workers=2, want=2, created=2), ANYWHERE, cluster.view())
    assert scheduler.snapshot()[b].workers == 0
    recorder.calls.clear()

    scheduler.forget(a, cluster.view())
    assert a not in scheduler.snapshot()
    assert scheduler.snapshot()[b].workers == 2
    assert recorder.keys() == [b]


def test_a_job_created_again_under_a_name_is_not_granted_the_deleted_ones_entry() -> None:
    # Its reconcile may come before the old job's DELETED: the old grant is not its own, and it takes
    # no Recovered grant either; its offer replaces the entry and waits for a pass.
    a = ("ns", "a")
    cluster = FakeCluster(nodes=[node("n1")])
    scheduler, _ = sync_scheduler()
    scheduler.offer(a, demand("a", min_workers=2, want=2), ANYWHERE, cluster.view(), uid="uid-old")
    assert scheduler.grant(a, [], uid="uid-old").workers == 2
    assert scheduler.grant(a, [], uid="uid-new") == Grant(None)
    assert scheduler.grant(a, []).workers == 2  # no uid given: the entry as it is

    restarted, _ = sync_scheduler()  # an entry recovered from the workers found is the job's that read it
    pods = [worker("a", 0, "n1"), worker("a", 1, "n1")]
    assert restarted.grant(a, pods, uid="uid-old") == Grant(2, None, "Recovered")
    assert restarted.grant(a, [], uid="uid-new") == Grant(None)


def test_a_job_that_needs_nothing_leaves_the_queue() -> None:
    a = ("ns", "a")
    cluster = FakeCluster(nodes=[node("n1")])
    scheduler, _ = sync_scheduler()
    scheduler.offer(a, demand("a", per_worker=8, min_workers=2, want=2), ANYWHERE, cluster.view())
    assert scheduler.snapshot()[a].workers == 0
    scheduler.offer(a, None, ANYWHERE, cluster.view())
    assert a not in scheduler.snapshot()


def _sample(scheduler: Scheduler, name: str, **labels: str) -> float | None:
    return scheduler.metrics.registry.get_sample_value(name, labels)


def test_grant_changes_and_preemptions_are_counted_by_direction_and_reason() -> None:
    a, urgent = ("ns", "a"), ("ns", "urgent")
    cluster = FakeCluster(nodes=[node("n1")])
    scheduler, _ = sync_scheduler()
    scheduler.offer(a, demand("a", min_workers=2, want=4, created=1), ANYWHERE, cluster.view())
    assert scheduler.snapshot()[a].workers == 2
    scale = "kubefit_scale_events_total"
    assert _sample(scheduler, scale, direction="up", reason="ScaledUp") == 0  # an admission is no scale

    cluster.nodes.append(node("n2"))
    scheduler.node_changed(cluster.nodes[-1], "n2", True, cluster.view())
    assert scheduler.snapshot()[a].workers == 4
    assert _sample(scheduler, scale, direction="up", reason="ScaledUp") == 1

    whole_nodes = replace(
        demand("urgent", per_worker=8, min_workers=2, want=2, priority=100, created=2),
        elastic=False,
        preemption="LowerPriority",
    )
    scheduler.offer(urgent, whole_nodes, ANYWHERE, cluster.view())
    assert scheduler.snapshot()[a].workers == 0 and scheduler.snapshot()[urgent].workers == 2
    assert _sample(scheduler, "kubefit_preemptions_total", reason="HigherPriority") == 1
    assert _sample(scheduler, scale, direction="down", reason="ShrunkForPriority") == 0  # preempted whole


def test_cluster_accelerators_count_ready_nodes_and_what_bound_pods_hold_there() -> None:
    a = ("ns", "a")
    cluster = FakeCluster(
        nodes=[node("n1"), node("n2"), node("n3"), NodeFacts("cpu", {}, {"cpu": "8"})],
        others={"n1": 3},
        per_worker={a: 4},
    )
    cluster.workers[a] = [worker("a", 0, "n2"), worker("a", 1, None, phase="Pending")]  # one bound
    scheduler, _ = sync_scheduler()
    assert scheduler.cluster_accelerators() == {}  # nothing seen yet: no series rather than zeros
    scheduler.node_changed(cluster.nodes[2], "n3", False, cluster.view())  # n3 is not Ready
    assert scheduler.cluster_accelerators() == {"nvidia-h100-80gb": AcceleratorCount(16, 7)}
    family = "kubefit_cluster_accelerators"
    assert _sample(scheduler, family, accelerator="nvidia-h100-80gb", state="allocatable") == 16
    assert _sample(scheduler, family, accelerator="nvidia-h100-80gb", state="allocated") == 7
    assert _sample(scheduler, family, accelerator="nvidia-h100-80gb", state="free") == 9

    cluster.others["n2"] = 8  # more requested than the node has (a stale index): allocated stops at 8
    assert scheduler.cluster_accelerators()["nvidia-h100-80gb"] == AcceleratorCount(16, 11)


@dataclass
class HeldTimer:
    """A threading.Timer the scheduler started, held until the test fires it: the debounce ends when the
    test says, however slowly a loaded box runs the burst."""

    interval: float
    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    daemon: bool = False
    started: bool = False

    def start(self) -> None:
        self.started = True

    def fire(self) -> None:
        self.function(*self.args)


def hold_timers(monkeypatch: pytest.MonkeyPatch) -> list[HeldTimer]:
    timers: list[HeldTimer] = []

    def held(interval: float, function: Callable[..., Any], args: tuple[Any, ...] = ()) -> HeldTimer:
        timers.append(HeldTimer(interval, function, tuple(args)))
        return timers[-1]

    monkeypatch.setattr(scheduler_module.threading, "Timer", held)
    return timers


def test_a_burst_of_triggers_is_one_pass_and_reconciles_run_on_worker_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timers = hold_timers(monkeypatch)
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    calls: list[int] = []

    def counting(*args: Any) -> AdmissionPlan:
        calls.append(1)
        return plan_admissions(*args)

    scheduler = Scheduler(CATALOG, OperatorMetrics(), SchedulerSettings(debounce=0.05), planner=counting)
    recorder = Recorder()
    scheduler.reconcile_with(recorder)
    for index in range(20):
        scheduler.offer(
            ("ns", f"j{index}"),
            demand(f"j{index}", min_workers=1, want=1, created=index),
            ANYWHERE,
            cluster.view(),
        )
    # Twenty offers within the debounce ask for one pass, after the debounce (not the pass gap).
    assert [(timer.interval, timer.started) for timer in timers] == [(0.05, True)]
    assert calls == []
    timers[0].fire()  # the debounce ends
    deadline = time.monotonic() + 20
    while len(recorder.keys()) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) == 1  # twenty offers, one pass
    assert len(recorder.keys()) == 20  # four admitted, sixteen told why they wait
    assert recorder.threads and threading.current_thread().name not in recorder.threads
    assert len(timers) == 1  # the pass asked for no other
    assert sum(1 for grant in scheduler.snapshot().values() if grant.workers) == 4


def test_a_failed_pass_runs_again_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "FAILED_PASS_RETRY_SECONDS", 0.1)
    cluster = FakeCluster(nodes=[node("n1")])
    calls: list[int] = []

    def failing_once(*args: Any) -> AdmissionPlan:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the nodes changed under the pass")
        return plan_admissions(*args)

    scheduler = Scheduler(CATALOG, OperatorMetrics(), SchedulerSettings(debounce=0.01), planner=failing_once)
    recorder = Recorder()
    scheduler.reconcile_with(recorder)
    scheduler.offer(("ns", "job"), demand("job", min_workers=1, want=1), ANYWHERE, cluster.view())
    deadline = time.monotonic() + 5
    while not recorder.keys() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) == 2 and recorder.keys() == [("ns", "job")]  # no other trigger came
    assert scheduler.snapshot()[("ns", "job")].workers == 1


def test_a_queued_job_whose_message_alone_changed_is_not_reconciled_but_its_next_reconcile_reads_it() -> None:
    cluster = FakeCluster(nodes=[node("n1")], others={"n1": 4})
    scheduler, recorder = sync_scheduler()
    big = demand("big", per_worker=8, min_workers=2, want=2)
    scheduler.offer(("ns", "big"), big, ANYWHERE, cluster.view())
    first = scheduler.snapshot()[("ns", "big")].waiting
    assert first is not None and recorder.keys() == [("ns", "big")]  # began waiting: reconciled
    cluster.nodes.append(node("n2"))  # more free devices: the message names them, still not enough
    scheduler.request("node", cluster.view())
    second = scheduler.snapshot()[("ns", "big")].waiting
    assert second is not None and second != first
    assert recorder.keys() == [("ns", "big")]  # no reconcile for the message alone
    cluster.nodes.append(node("n3"))
    scheduler.request("node", cluster.view())  # now it fits: admitted, reconciled
    assert scheduler.snapshot()[("ns", "big")].workers == 2
    assert recorder.keys() == [("ns", "big"), ("ns", "big")]


def test_a_slow_pass_spaces_out_the_next_one() -> None:
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    passes: list[float] = []

    slow_pass = 0.3  # a pass over many jobs; the spacing after it (0.6 s) leaves a loaded box 0.4 s to look

    def slow(*args: Any) -> AdmissionPlan:
        passes.append(time.monotonic())
        time.sleep(slow_pass)
        return plan_admissions(*args)

    settings = SchedulerSettings(debounce=0.01, pass_gap=0.0)
    scheduler = Scheduler(CATALOG, OperatorMetrics(), settings, planner=slow)
    scheduler.reconcile_with(Recorder())
    assert scheduler.pass_delay() == 0.01
    scheduler.offer(("ns", "a"), demand("a", min_workers=1), ANYWHERE, cluster.view())
    deadline = time.monotonic() + 20
    while scheduler._last_pass_seconds == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.pass_delay() > PASS_SPACING * slow_pass / 3  # the debounce of 10 ms gives way
    scheduler.request("timer", cluster.view())
    while scheduler.passes < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(passes) == 2 and passes[1] - passes[0] >= slow_pass + PASS_SPACING * slow_pass
    time.sleep(slow_pass + PASS_SPACING * slow_pass)
    assert scheduler.pass_delay() == 0.01  # long after the last pass: only the debounce


def test_a_pass_asked_for_while_one_runs_is_spaced_from_its_end() -> None:
    # The request started a timer at once, measured from the pass before: the next pass ran the moment the
    # running one ended, and a steady stream of events kept passes running back to back (scheduler review).
    cluster = FakeCluster(nodes=[node("n1")])
    spans: list[tuple[float, float]] = []
    slow_pass = 0.3
    running = threading.Event()

    def slow(*args: Any) -> AdmissionPlan:
        running.set()
        started = time.monotonic()
        time.sleep(slow_pass)
        plan = plan_admissions(*args)
        spans.append((started, time.monotonic()))
        return plan

    scheduler = Scheduler(
        CATALOG, OperatorMetrics(), SchedulerSettings(debounce=0.01, pass_gap=0.0), planner=slow
    )
    scheduler.reconcile_with(Recorder())
    scheduler.request("job", cluster.view())
    assert running.wait(20)
    scheduler.request("pod", cluster.view())  # during the first pass
    deadline = time.monotonic() + 20
    while len(spans) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(spans) == 2
    first_end, second_start = spans[0][1], spans[1][0]
    assert second_start - first_end >= 0.9 * PASS_SPACING * (spans[0][1] - spans[0][0])


def test_a_pass_that_keeps_failing_retries_once_per_period_however_many_events_came(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every failed pass started a retry of its own: each event began a chain, and passes ran back to back.
    monkeypatch.setattr(scheduler_module, "FAILED_PASS_RETRY_SECONDS", 0.5)
    monkeypatch.setattr(scheduler_module.logger, "exception", lambda *args, **kwargs: None)
    cluster = FakeCluster(nodes=[node("n1")])
    starts: list[float] = []
    broken = [True]

    def failing(*args: Any) -> AdmissionPlan:
        if not broken[0]:
            return plan_admissions(*args)
        starts.append(time.monotonic())
        raise RuntimeError("a bug tied to one job's state")

    settings = SchedulerSettings(debounce=0.005, pass_gap=0.025)
    scheduler = Scheduler(CATALOG, OperatorMetrics(), settings, planner=failing)
    scheduler.reconcile_with(Recorder())
    for _ in range(10):  # ten events, 0.1 s apart
        scheduler.request("pod", cluster.view())
        time.sleep(0.1)
    quiet = time.monotonic()
    time.sleep(2.6)
    after = [start for start in starts if start >= quiet + 0.5]
    assert 1 <= len(after) <= 6  # one chain: about one pass per 0.5 s (was 40 and more)
    broken[0] = False  # the retry still pending ends the chain quietly, before the test's patches go
    time.sleep(0.6)


def test_passes_asked_for_back_to_back_keep_the_gap_and_a_lone_one_waits_only_the_debounce(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    passes: list[float] = []
    delays: list[float] = []  # what each pass was asked to wait (real timers, only recorded)
    timer = threading.Timer

    def recorded(interval: float, function: Callable[..., Any], args: Any = ()) -> threading.Timer:
        delays.append(interval)
        return timer(interval, function, args=args)

    monkeypatch.setattr(scheduler_module.threading, "Timer", recorded)

    def fast(*args: Any) -> AdmissionPlan:
        passes.append(time.monotonic())
        return plan_admissions(*args)

    settings = SchedulerSettings(debounce=0.01, pass_gap=0.3)
    scheduler = Scheduler(CATALOG, OperatorMetrics(), settings, planner=fast)
    scheduler.reconcile_with(Recorder())
    scheduler.offer(("ns", "a"), demand("a", min_workers=1), ANYWHERE, cluster.view())
    deadline = time.monotonic() + 20
    while scheduler.passes < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert delays == [0.01]  # the first: the debounce only, not the 0.3 s gap
    scheduler.request("job", cluster.view())  # a storm: the next pass keeps the gap
    while scheduler.passes < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(passes) == 2 and passes[1] - passes[0] >= 0.3
    time.sleep(0.35)
    assert scheduler.pass_delay() == 0.01  # long after the last pass: only the debounce


def test_a_failing_planner_leaves_the_grants_as_they_were_and_the_next_pass_works() -> None:
    cluster = FakeCluster(nodes=[node("n1")])
    failing, failed = [True], []

    def flaky(*args: Any) -> AdmissionPlan:
        if failing[0]:
            failed.append(1)
            raise RuntimeError("boom")
        return plan_admissions(*args)

    scheduler = Scheduler(CATALOG, OperatorMetrics(), SchedulerSettings(debounce=0.01), planner=flaky)
    recorder = Recorder()
    scheduler.reconcile_with(recorder)
    scheduler.offer(("ns", "a"), demand("a", min_workers=1), ANYWHERE, cluster.view())
    deadline = time.monotonic() + 5
    while not failed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert failed  # the offer's pass ran, and failed
    assert scheduler.snapshot()[("ns", "a")].workers is None and recorder.calls == []
    failing[0] = False
    scheduler.request("timer", cluster.view())
    deadline = time.monotonic() + 5
    while not recorder.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.snapshot()[("ns", "a")].workers == 2


@pytest.mark.parametrize("policy", ["StrictFIFO", "BestEffortFIFO"])
def test_the_operators_policy_reaches_the_planner(policy: str) -> None:
    seen: list[tuple[str, float]] = []

    def recording(
        queued: Any, admitted: Any, nodes: Any, chosen: str, now: float, limit: float
    ) -> AdmissionPlan:
        seen.append((chosen, limit))
        return plan_admissions(queued, admitted, nodes, chosen, now, limit)  # type: ignore[arg-type]

    scheduler = Scheduler(
        CATALOG,
        OperatorMetrics(),
        SchedulerSettings(policy, head_of_line_timeout=42.0, debounce=None),  # type: ignore[arg-type]
        planner=recording,
    )
    scheduler.reconcile_with(Recorder())
    cluster = FakeCluster(nodes=[node("n1")])
    scheduler.offer(("ns", "a"), demand("a"), ANYWHERE, cluster.view())
    assert seen == [(policy, 42.0)]


def test_a_preempted_job_is_not_readmitted_while_its_workers_are_still_going() -> None:
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    assert scheduler.snapshot()[victim].workers == 0 and scheduler.snapshot()[urgent].workers == 2

    # One victim worker per node is gone: each node has 4 free, room for the victim's minimum (2 x 4) but
    # not for one of urgent's 8-GPU workers. The victim must not take them back.
    cluster.workers[victim] = [
        worker("victim", 0, "n1"),
        worker("victim", 2, "n2", terminating=True),  # being deleted still counts
    ]
    cluster.workers[urgent] = [
        worker("urgent", 0, None, phase="Pending"),
        worker("urgent", 1, None, phase="Pending"),
    ]
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[victim].workers == 0

    cluster.workers[victim] = []
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[victim].workers == 0 and scheduler.snapshot()[urgent].workers == 2


def test_a_gang_that_lost_a_pod_while_the_operator_was_down_keeps_its_admitted_size() -> None:
    a = ("ns", "a")
    pods = [worker("a", 1, "n1"), worker("a", 2, "n1")]  # worker 0 went while the operator was down
    scheduler, _ = sync_scheduler()
    assert scheduler.grant(a, pods, admitted_with=3) == Grant(3, None, "Recovered")
    # A job without workers starts from the queue whatever its old status says.
    assert scheduler.grant(("ns", "b"), [], admitted_with=3) == Grant(None)


def test_a_restarted_operator_takes_back_neither_a_preempted_job_nor_a_shrink_in_its_handshake() -> None:
    # Its status says it is not admitted (preempted, or released after its gang timeout): its workers are
    # leaving, not running for it; taken back, they would keep the devices of the job they left for.
    pods = [worker("v", 0, "n1"), worker("v", 1, "n2")]
    scheduler, _ = sync_scheduler()
    assert scheduler.grant(("ns", "v"), pods, admitted_with=None) == Grant(None)
    # A job shrunk 4 -> 2 for another, its request open: taken back at 2, so the handshake goes on
    # (at 4, the request would be closed and opened again later, the workers saving twice).
    four = [worker("e", index, "n1") for index in range(4)]
    assert scheduler.grant(("ns", "e"), four, admitted_with=2, target=2) == Grant(2, None, "Recovered")


def test_undoing_an_edit_that_blocked_a_running_job_gives_it_back_the_grant_of_its_kept_workers() -> None:
    a = ("ns", "a")
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    scheduler, _ = sync_scheduler()
    wanted = demand("a", per_worker=8, min_workers=2, want=2)
    scheduler.offer(a, wanted, ANYWHERE, cluster.view())
    cluster.workers[a] = [worker("a", 0, "n1"), worker("a", 1, "n2")]
    assert scheduler.grant(a, cluster.workers[a], 2).workers == 2
    # An edit blocks it (DoesNotFit): it leaves the queue and keeps its workers. Undone, it is back: its
    # workers hold the devices still, and it is not queued afresh (granted 0, they went as preempted).
    scheduler.offer(a, None, ANYWHERE, cluster.view())
    assert scheduler.grant(a, cluster.workers[a], 0).workers is None
    scheduler.offer(a, wanted, ANYWHERE, cluster.view())
    assert scheduler.snapshot()[a].workers == 2
    # Its workers gone meanwhile (deleted by hand), it queues as any newcomer: behind b, which took n1.
    scheduler.offer(a, None, ANYWHERE, cluster.view())
    cluster.workers[a] = []
    b = ("ns", "b")
    scheduler.offer(b, demand("b", per_worker=8, min_workers=1, want=1, created=-1), ANYWHERE, cluster.view())
    scheduler.offer(a, wanted, ANYWHERE, cluster.view())
    assert (scheduler.snapshot()[b].workers, scheduler.snapshot()[a].workers) == (1, 0)


def test_holdings_name_the_node_of_each_worker_in_the_order_decide_keeps_them() -> None:
    from kubefit.controller.pass_inputs import nodes_by_index
    from kubefit.decisions.observed import WorkerPod

    pods = [
        WorkerPod("j-worker-2", 2, "u2", "Running", "node-a"),
        WorkerPod("j-worker-0", 0, "u0", "Running", "node-a"),
        WorkerPod("j-worker-1", 1, "u1", "Running", "node-b"),
        WorkerPod("j-worker-3", 3, "u3", "Pending", None),  # not bound: holds no node yet
    ]
    assert nodes_by_index(pods) == ("node-a", "node-b", "node-a")
    # In the order decide keeps them (workers.keep_order): worker 0, running ones, then one bound and still
    # starting, one being deleted last. A shrink counts removals from the end, as decide removes them.
    starting = [
        WorkerPod("j-worker-0", 0, "u0", "Running", "node-a"),
        WorkerPod("j-worker-1", 1, "u1", "Pending", "node-b"),
        WorkerPod("j-worker-2", 2, "u2", "Running", "node-c", terminating=True),
        WorkerPod("j-worker-3", 3, "u3", "Running", "node-d"),
    ]
    assert nodes_by_index(starting) == ("node-a", "node-d", "node-b", "node-c")


def test_a_grant_names_the_hostnames_of_the_nodes_reserved_for_its_unbound_workers() -> None:
    # n1 has 4 GPUs taken by another workload: best fit reserves the one 4-GPU worker there, not on empty n2.
    hostnames = {"n1": "host-one", "n2": "host-two", "n3": ""}
    nodes = [
        node(name, labels={"kubernetes.io/hostname": value} if value else {})
        for name, value in hostnames.items()
    ]
    cluster = FakeCluster(nodes=nodes, others={"n1": 4, "n3": 4})
    cluster.nodes = [nodes[0], nodes[1]]
    scheduler, _ = sync_scheduler()
    key = ("ns", "small")
    scheduler.offer(key, demand("small", per_worker=4, min_workers=1, want=1), ANYWHERE, cluster.view())
    assert scheduler.grant(key, []) == Grant(1, None, "Admitted: 1 worker", frozenset({"host-one"}))

    # Once its worker is bound, nothing is reserved for it any more.
    cluster.workers[key] = [worker("small", 0, "n1")]
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(key, cluster.workers[key]).hostnames == frozenset()

    # A node without the label is not named (no label to steer by): best fit is n3 (4 free) over n2 (8 free).
    cluster.nodes = nodes
    other = ("ns", "other")
    scheduler.offer(other, demand("other", per_worker=4, min_workers=1, want=1), ANYWHERE, cluster.view())
    grant = scheduler.grant(other, [])
    assert (grant.workers, grant.hostnames) == (1, frozenset())


def test_a_pass_reports_its_cpu_time_apart_from_its_duration() -> None:
    # A pass that waits (here: sleeps inside the planner, as it would wait for a CPU or the interpreter
    # lock) takes that long, but its thread spends almost none of it computing.
    waited = 0.2

    def waiting_planner(*args: object, **kwargs: object) -> AdmissionPlan:
        time.sleep(waited)
        return plan_admissions(*args, **kwargs)  # type: ignore[arg-type]

    cluster = FakeCluster(nodes=[node("n1")])
    scheduler = Scheduler(
        CATALOG, OperatorMetrics(), SchedulerSettings(debounce=None), planner=waiting_planner
    )
    scheduler.reconcile_with(lambda key, trigger, view: None)
    scheduler.offer(("ns", "a"), demand("a", min_workers=1, want=1), ANYWHERE, cluster.view())
    registry = scheduler.metrics.registry
    passes = registry.get_sample_value("kubefit_scheduling_pass_duration_seconds_count")
    assert passes and registry.get_sample_value("kubefit_scheduling_pass_cpu_seconds_count") == passes
    duration = registry.get_sample_value("kubefit_scheduling_pass_duration_seconds_sum")
    cpu = registry.get_sample_value("kubefit_scheduling_pass_cpu_seconds_sum")
    assert duration is not None and cpu is not None
    assert duration >= waited * passes
    assert 0 < cpu < duration - waited * passes / 2


def test_a_job_whose_reserved_places_are_held_by_workers_leaving_for_it_is_told_until_they_go() -> None:
    """A shrink for priority: the victim's removed workers keep their devices through their checkpoint
    grace and then their termination grace, which can outlast the newcomer's gang timeout; the newcomer's
    grant says so (its gang clock waits, decisions/running.py), and it is reconciled once they are gone."""
    victim, urgent = ("ns", "victim"), ("ns", "urgent")
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    scheduler, recorder = sync_scheduler()
    scheduler.offer(victim, demand("victim", min_workers=2, want=4, created=1), ANYWHERE, cluster.view())
    cluster.workers[victim] = [worker("victim", index, "n1" if index < 2 else "n2") for index in range(4)]
    scheduler.request("pod", cluster.view())
    whole_node = demand("urgent", per_worker=8, min_workers=1, want=1, priority=100, created=2)
    scheduler.offer(urgent, whole_node, ANYWHERE, cluster.view())
    assert scheduler.snapshot()[victim].workers == 2 and scheduler.snapshot()[urgent].workers == 1
    held = scheduler.grant(urgent, [])
    assert held.places_held and held.places_freed_at is None
    assert not scheduler.grant(victim, cluster.workers[victim]).places_held

    # The handshake goes on, then the removed workers terminate (saving on SIGTERM): still held, and
    # nothing to reconcile for it.
    cluster.workers[urgent] = [worker("urgent", 0, None, phase="Pending")]
    recorder.calls.clear()
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(urgent, cluster.workers[urgent]).places_held
    cluster.workers[victim][2:] = [worker("victim", index, "n2", terminating=True) for index in (2, 3)]
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(urgent, cluster.workers[urgent]).places_held
    assert urgent not in recorder.keys()

    # The removed workers are gone: the newcomer is reconciled to start its clock.
    before = datetime.now(UTC)
    cluster.workers[victim] = cluster.workers[victim][:2]
    scheduler.request("pod", cluster.view())
    freed = scheduler.grant(urgent, cluster.workers[urgent])
    assert not freed.places_held
    assert freed.places_freed_at is not None and freed.places_freed_at >= before
    assert urgent in recorder.keys()
    # A later pass leaves it so.
    scheduler.request("pod", cluster.view())
    assert not scheduler.grant(urgent, cluster.workers[urgent]).places_held


def test_a_job_waiting_for_workers_leaving_for_it_is_reconciled_when_a_pass_reserves_it_free_devices() -> (
    None
):
    """Its workers are created only for reserved places free now (decisions/running.py, _wait_for_room): a
    node added while the victim it preempted saves gives it a place at once, and the pass that reserves it
    there reconciles it; a pass that only drops a reservation (the victim's devices still held) does not."""
    cluster, scheduler, _, urgent = _preempted_for_urgent()
    recorder = Recorder()
    scheduler.reconcile_with(recorder)
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(urgent, []).reserved == {} and urgent not in recorder.keys()
    cluster.nodes.append(node("n3"))
    scheduler.request("node", cluster.view())
    grant = scheduler.grant(urgent, [])
    assert grant.places_held and grant.reserved == {"n3": 1} and urgent in recorder.keys()


def test_a_victim_that_grows_on_other_nodes_still_holds_the_newcomers_clock_while_its_workers_leave() -> None:
    # The newcomer may use pool a only; the victim either pool.
    victim, urgent = ("ns", "victim"), ("ns", "urgent")
    pool_a = {"pool": "a"}
    cluster = FakeCluster(nodes=[node("n1", labels=pool_a), node("n2", labels=pool_a)])
    scheduler, _ = sync_scheduler()
    scheduler.offer(victim, demand("victim", min_workers=2, want=4, created=1), ANYWHERE, cluster.view())
    cluster.workers[victim] = [worker("victim", index, "n1" if index < 2 else "n2") for index in range(4)]
    scheduler.request("pod", cluster.view())
    whole_node = demand("urgent", per_worker=8, min_workers=1, want=1, priority=100, created=2)
    scheduler.offer(urgent, whole_node, Placement(pool_a, (), ()), cluster.view())
    assert scheduler.snapshot()[victim].workers == 2
    cluster.workers[urgent] = [worker("urgent", 0, None, phase="Pending")]
    cluster.workers[victim][2:] = [worker("victim", index, "n2", terminating=True) for index in (2, 3)]
    # A pool b node joins: the victim grows back to 4 there while its removed workers still save on n2.
    cluster.nodes.append(node("n3", labels={"pool": "b"}))
    scheduler.node_changed(cluster.nodes[-1], "n3", True, cluster.view())
    assert scheduler.snapshot()[victim].workers == 4
    cluster.workers[victim] += [worker("victim", index, None, phase="Pending") for index in (4, 5)]
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(urgent, cluster.workers[urgent]).places_held
    cluster.workers[victim] = [*cluster.workers[victim][:2], *cluster.workers[victim][4:]]
    scheduler.request("pod", cluster.view())
    assert not scheduler.grant(urgent, cluster.workers[urgent]).places_held


def test_a_job_admitted_by_preempting_another_is_held_until_every_worker_of_it_is_gone() -> None:
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    assert scheduler.snapshot()[victim].workers == 0
    # Passes after the preempting one: the victim holds no grant, and its workers still save.
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(urgent, []).places_held
    cluster.workers[victim] = [worker("victim", 3, "n2", terminating=True)]
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(urgent, []).places_held
    cluster.workers[victim] = []
    scheduler.request("pod", cluster.view())
    assert not scheduler.grant(urgent, []).places_held


def test_only_workers_leaving_for_a_job_that_still_holds_its_grant_hold_it() -> None:
    from kubefit.decisions.admission import leaving_for

    victim, other, urgent, gone = ("ns", "victim"), ("ns", "other"), ("ns", "urgent"), ("ns", "gone")
    grants = {victim: 2, other: 1, urgent: 1}
    victims = {victim: frozenset({urgent}), other: frozenset({gone})}
    # The victim still holds 4 for a grant of 2; `other` made room for a job that holds no grant any more.
    assert leaving_for(victims, {victim: 4, other: 3}, grants) == {victim: frozenset({urgent})}
    assert leaving_for(victims, {victim: 2, other: 3}, grants) == {}
    # A scale-down by its user (or any job's surplus) is not in `victims`: it holds nobody.
    assert leaving_for({}, {victim: 4}, grants) == {}
    # The victim grew on another pool meanwhile (grant 2, two bound) while its shrunk worker still
    # terminates on the place made for `urgent`: it is still leaving, whatever its count.
    assert leaving_for(victims, {victim: 2, other: 1}, grants, {victim: 1}) == {victim: frozenset({urgent})}
    assert leaving_for(victims, {victim: 2, other: 1}, grants, {victim: 0}) == {}


def test_places_reserved_on_free_nodes_are_not_held() -> None:
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    scheduler, _ = sync_scheduler()
    key = ("ns", "a")
    scheduler.offer(key, demand("a", min_workers=2, want=4), ANYWHERE, cluster.view())
    grant = scheduler.grant(key, [])
    assert grant.workers == 4 and not grant.places_held and grant.places_freed_at is None


def _preempted_for_urgent() -> tuple[FakeCluster, Scheduler, JobKey, JobKey]:
    """Urgent (2 workers of 8 GPUs, LowerPriority) preempts the whole victim (4 workers of 4 on n1, n2)."""
    victim, urgent = ("ns", "victim"), ("ns", "urgent")
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    scheduler, _ = sync_scheduler()
    scheduler.offer(victim, demand("victim", created=1), ANYWHERE, cluster.view())
    cluster.workers[victim] = [worker("victim", index, "n1" if index < 2 else "n2") for index in range(4)]
    whole_nodes = replace(
        demand("urgent", per_worker=8, min_workers=2, want=2, priority=100, created=2),
        elastic=False,
        preemption="LowerPriority",
    )
    scheduler.offer(urgent, whole_nodes, ANYWHERE, cluster.view())
    assert scheduler.grant(urgent, []).places_held
    return cluster, scheduler, victim, urgent


def _urgent_placed_on_added_nodes(cluster: FakeCluster, scheduler: Scheduler, urgent: JobKey) -> None:
    """Two nodes join while the victim saves: the pass moves urgent's places there, and its workers bind."""
    cluster.nodes += [node("n3"), node("n4")]
    scheduler.request("node", cluster.view())
    assert scheduler.grant(urgent, []).reserved == {"n3": 1, "n4": 1}
    cluster.workers[urgent] = [worker("urgent", 0, "n3"), worker("urgent", 1, "n4")]
    cluster.per_worker[urgent] = 8
    # Bound where the pass counted them, yet the binds ask for a pass: it may undo the preemption.
    assert not scheduler.worker_bound(urgent, "n3", cluster.view())


def test_a_preempted_job_is_taken_back_with_its_running_workers_once_its_preemptor_runs_elsewhere() -> None:
    """The victim's four workers still save when the job it was preempted for starts on nodes added
    meanwhile: the victim is granted its four again, keeps its workers, and holds that job no longer."""
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    recorder = Recorder()
    scheduler.reconcile_with(recorder)
    _urgent_placed_on_added_nodes(cluster, scheduler, urgent)
    assert scheduler.snapshot()[victim].workers == 0  # urgent's workers are not bound yet in that pass
    scheduler.request("pod", cluster.view())
    taken_back = scheduler.grant(victim, cluster.workers[victim])
    assert taken_back.workers == 4 and victim in recorder.keys()
    assert taken_back.reason is not None and taken_back.reason.startswith("Admitted: preemption undone")
    assert "ns/urgent no longer needs their places" in taken_back.reason
    assert not scheduler.grant(urgent, cluster.workers[urgent]).places_held
    assert scheduler.snapshot()[urgent].workers == 2
    # Later passes leave both as they are, and count no preemption or scale change for the take-back.
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[victim].workers == 4 and scheduler.snapshot()[urgent].workers == 2
    assert _sample(scheduler, "kubefit_scale_events_total", direction="up", reason="Admitted") is None


def test_a_preemption_goes_on_while_its_preemptor_has_a_worker_not_bound() -> None:
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    _urgent_placed_on_added_nodes(cluster, scheduler, urgent)
    cluster.workers[urgent][1] = worker("urgent", 1, None, phase="Pending")
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[victim].workers == 0
    assert scheduler.grant(urgent, cluster.workers[urgent]).places_held


def test_a_preemption_goes_on_once_a_victims_worker_is_terminating() -> None:
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    _urgent_placed_on_added_nodes(cluster, scheduler, urgent)
    cluster.workers[victim][3] = worker("victim", 3, "n2", terminating=True)  # its handshake is over
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[victim].workers == 0


def test_a_preemption_goes_on_when_a_job_waiting_ahead_of_the_victim_would_take_its_devices() -> None:
    """A job queued before the victim's requeue (older, same priority, no preemption) would be admitted on
    the victim's devices once its workers are gone: taking the victim back would keep them from it."""
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    waiting = ("ns", "waiting")
    scheduler.offer(
        waiting, demand("waiting", per_worker=8, min_workers=2, want=2, created=0.5), ANYWHERE, cluster.view()
    )
    _urgent_placed_on_added_nodes(cluster, scheduler, urgent)
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[victim].workers == 0
    assert scheduler.snapshot()[waiting].workers == 0  # its devices are still the victim's workers'
    cluster.workers[victim] = []
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[waiting].workers == 2 and scheduler.snapshot()[victim].workers == 0


def test_a_job_preempted_for_one_since_deleted_is_taken_back_with_its_running_workers() -> None:
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    scheduler.forget(urgent, cluster.view())
    assert scheduler.snapshot()[victim].workers == 4


def test_an_admitted_gang_whose_node_went_preempts_at_once_once_its_own_old_workers_are_gone() -> None:
    """Urgent runs a worker on n1 and n2, low and lower one each on n3 and n4; n2 goes. While urgent's
    survivor terminates (its group restarts) that worker's devices come back to it: nothing is taken (two
    jobs were preempted for a gang of two). Once its workers are created again and n1 is free, one job is
    preempted in that pass, not after urgent's gang timeout."""
    urgent, low, lower = ("ns", "urgent"), ("ns", "low"), ("ns", "lower")
    n1, n2, n3, n4 = (
        node(name, labels={"kubernetes.io/hostname": name}) for name in ("n1", "n2", "n3", "n4")
    )
    cluster = FakeCluster(nodes=[n1, n2, n3, n4], per_worker={urgent: 8, low: 8, lower: 8})
    scheduler, _ = sync_scheduler()
    whole_nodes = replace(
        demand("urgent", per_worker=8, min_workers=2, want=2, priority=100, created=1),
        elastic=False,
        fixed_world=True,
        preemption="LowerPriority",
    )
    scheduler.offer(urgent, whole_nodes, ANYWHERE, cluster.view())
    cluster.workers[urgent] = [worker("urgent", 0, "n1"), worker("urgent", 1, "n2")]
    for key, name, priority in ((low, "n3", 1), (lower, "n4", 0)):
        one = demand(key[1], per_worker=8, min_workers=1, want=1, priority=priority, created=2)
        scheduler.offer(key, one, ANYWHERE, cluster.view())
        cluster.workers[key] = [worker(key[1], 0, name)]
    scheduler.request("pod", cluster.view())
    assert {key: grant.workers for key, grant in scheduler.snapshot().items()} == {
        urgent: 2,
        low: 1,
        lower: 1,
    }

    cluster.nodes = [n1, n3, n4]
    cluster.workers[urgent] = [worker("urgent", 0, "n1", terminating=True)]
    scheduler.request("node", cluster.view())
    assert {key: grant.workers for key, grant in scheduler.snapshot().items()} == {
        urgent: 2,
        low: 1,
        lower: 1,
    }

    cluster.workers[urgent] = [
        worker("urgent", 0, None, phase="Pending"),
        worker("urgent", 1, None, phase="Pending"),
    ]
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[lower] == Grant(0, None, "Preempted: to make room for ns/urgent")
    assert scheduler.snapshot()[low].workers == 1
    granted = scheduler.grant(urgent, cluster.workers[urgent])
    assert granted.workers == 2 and granted.places_held and granted.hostnames == {"n1", "n4"}
    # While lower's worker leaves for it, later passes take nothing more.
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[low].workers == 1 and scheduler.grant(urgent, []).places_held


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-group", "elastic"])
def test_an_admitted_gang_makes_no_room_while_its_own_worker_is_stuck_terminating(fixed: bool) -> None:
    """n2 went; urgent's worker 1 there is stuck terminating past its grace (no kubelet confirms the delete).
    A fixed group's replacement needs that name: no job is preempted for it until the pod is gone. An
    elastic pytorch job's replacement takes a free index (decisions/workers): it makes room at once."""
    urgent, low = ("ns", "urgent"), ("ns", "low")
    n1, n2, n3 = node("n1"), node("n2"), node("n3")
    cluster = FakeCluster(nodes=[n1, n2, n3], per_worker={urgent: 8, low: 8})
    scheduler, _ = sync_scheduler()
    whole_nodes = replace(
        demand("urgent", per_worker=8, min_workers=2, want=2, priority=100, created=1),
        elastic=not fixed,
        fixed_world=fixed,
        preemption="LowerPriority",
    )
    scheduler.offer(urgent, whole_nodes, ANYWHERE, cluster.view())
    cluster.workers[urgent] = [worker("urgent", 0, "n1"), worker("urgent", 1, "n2")]
    scheduler.offer(
        low, demand("low", per_worker=8, min_workers=1, want=1, created=2), ANYWHERE, cluster.view()
    )
    cluster.workers[low] = [worker("low", 0, "n3")]
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[low].workers == 1

    cluster.nodes = [n1, n3]
    past = "2020-01-01T00:00:00Z"
    stuck = WorkerPod("urgent-worker-1", 1, "uid-u1", "Running", "n2", True, deletion_timestamp=past)
    cluster.workers[urgent] = [worker("urgent", 0, None, phase="Pending"), stuck]
    scheduler.request("node", cluster.view())
    preempted = Grant(0, None, "Preempted: to make room for ns/urgent")
    if not fixed:
        assert scheduler.snapshot()[low] == preempted
        return
    assert scheduler.snapshot()[low].workers == 1 and scheduler.snapshot()[urgent].workers == 2
    cluster.workers[urgent] = cluster.workers[urgent][:1]  # the pod is gone at last
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[low] == preempted


def test_a_victims_worker_stuck_terminating_past_its_grace_holds_nobody() -> None:
    """Its node unreachable, a pod stays Terminating for ever: the job it made room for must not wait for
    ever (its gang timeout then releases it, as before)."""
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    soon = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stuck = WorkerPod("victim-worker-3", 3, "uid-3", "Running", "n2", True, deletion_timestamp=soon)
    cluster.workers[victim] = [stuck]
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(urgent, []).places_held  # within its grace
    # Just past its grace the kubelet is still removing it (the sandbox's takes seconds): still held.
    just_past = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.workers[victim] = [replace(stuck, deletion_timestamp=just_past)]
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(urgent, []).places_held
    cluster.workers[victim] = [replace(stuck, deletion_timestamp="2020-01-01T00:00:00Z")]
    scheduler.request("pod", cluster.view())
    assert not scheduler.grant(urgent, []).places_held


def test_a_victim_deleted_while_its_workers_save_still_holds_until_they_are_gone() -> None:
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    scheduler.forget(victim, cluster.view())
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(urgent, []).places_held
    cluster.workers[victim] = []
    scheduler.request("pod", cluster.view())
    assert not scheduler.grant(urgent, []).places_held


def test_a_queued_job_waiting_for_a_worker_stuck_terminating_says_which_and_where() -> None:
    """Its gang released, one worker is stuck on an unreachable node (its kubelet never confirms the
    delete). The job waits (the stuck pod keeps its worker's name, so a new gang could not start whole),
    and its message names the pod and the node instead of a scheduling pass that never comes."""
    a = ("ns", "a")
    stuck = replace(worker("a", 1, "n2", terminating=True), deletion_timestamp="2020-01-01T00:00:00Z")
    cluster = FakeCluster(nodes=[node("n1"), node("n2")], workers={a: [stuck]})
    scheduler, _ = sync_scheduler()
    scheduler.node_changed(cluster.nodes[1], "n2", False, cluster.view())  # n2 NotReady
    scheduler.offer(a, demand("a", per_worker=8, min_workers=1, want=1), ANYWHERE, cluster.view())
    grant = scheduler.snapshot()[a]
    assert grant.workers == 0 and grant.waiting is not None
    assert "a-worker-1" in grant.waiting and "n2" in grant.waiting and "--force" in grant.waiting
    # Once it is gone the job is queued as any other, and admitted on the free node.
    cluster.workers[a] = []
    scheduler.node_changed(cluster.nodes[0], "n1", True, cluster.view())
    scheduler.offer(a, demand("a", per_worker=8, min_workers=1, want=2), ANYWHERE, cluster.view())
    assert scheduler.snapshot()[a].workers == 1


def test_a_not_ready_node_in_the_index_is_not_counted_before_its_event_reaches_the_scheduler() -> None:
    # At the operator's start the index holds every node before the node events are handled: a pass then
    # must not count a NotReady node's devices (it did, until the node's event arrived).
    from kubefit.decisions.inventory import node_facts

    manifest = {"metadata": {"name": "n2", "labels": dict(H100)}, "status": {"allocatable": {GPU: "8"}}}
    not_ready = node_facts(
        {**manifest, "status": {**manifest["status"], "conditions": [{"type": "Ready", "status": "False"}]}}
    )
    assert (
        not not_ready.ready
        and node_facts({**manifest, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}).ready
    )
    a = ("ns", "a")
    cluster = FakeCluster(nodes=[node("n1"), not_ready], per_worker={a: 8})
    scheduler, _ = sync_scheduler()
    scheduler.offer(a, demand("a", per_worker=8, min_workers=2, want=2), ANYWHERE, cluster.view())
    assert scheduler.snapshot()[a].workers == 0  # a gang of two whole nodes: one node is Ready
    assert scheduler.cluster_accelerators() == {"nvidia-h100-80gb": AcceleratorCount(8, 0)}


def test_an_accelerator_type_whose_nodes_are_all_not_ready_counts_zero_not_nothing() -> None:
    from kubefit.controller.pass_inputs import accelerator_totals

    usage = {"n1": [PodUsage("n1", {GPU: 4})]}
    nodes = [node("n1"), node("n2")]
    assert accelerator_totals(nodes, usage, CATALOG) == {"nvidia-h100-80gb": AcceleratorCount(16, 4)}
    assert accelerator_totals(nodes, usage, CATALOG, {"n1"}) == {"nvidia-h100-80gb": AcceleratorCount(8, 0)}
    # A gap in kubefit_cluster_accelerators would hide the outage from an alert on a low count.
    assert accelerator_totals(nodes, usage, CATALOG, {"n1", "n2"}) == {
        "nvidia-h100-80gb": AcceleratorCount(0, 0)
    }


# A pod that only carries a job's label (a TensorBoard Deployment's, a `kubectl run -l kubefit.dev/job=a`
# debug pod): no worker name, so no worker of the job, as decide sees it too.
LABELLED_TENSORBOARD = WorkerPod(
    "a-tensorboard-5d8f-xk2", None, "u-tb", "Running", "cpu-1", controller_uid="rs-uid"
)


def test_a_pod_with_the_job_label_but_no_worker_name_does_not_keep_the_job_queued() -> None:
    """It was taken for an old worker still going: the job stayed queued, 'waiting for its 1 old worker(s)
    to stop', for as long as the pod ran."""
    cluster = FakeCluster(nodes=[node("n1"), node("n2")], workers={("ns", "a"): [LABELLED_TENSORBOARD]})
    scheduler, _ = sync_scheduler()
    scheduler.offer(("ns", "a"), demand("a", created=1), ANYWHERE, cluster.view(), uid="job-uid")
    scheduler.request("pod", cluster.view())
    entry = scheduler.snapshot()[("ns", "a")]
    assert entry.workers == 4 and entry.waiting is None


def test_a_preempted_jobs_labelled_pod_that_is_no_worker_holds_nobody() -> None:
    """The job it made room for was held (its gang clock never started) while the victim's non-worker pod
    ran, though that pod holds no accelerator."""
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    cluster.workers[victim] = [replace(LABELLED_TENSORBOARD, name="victim-tensorboard-7c9-abc")]
    for _ in range(3):
        scheduler.request("pod", cluster.view())
    assert not scheduler.grant(urgent, []).places_held


def test_the_pass_after_a_victims_workers_have_gone_makes_room_at_once() -> None:
    """Low (elastic 1-2 on A and B) is shrunk for high (pool x: A, B); while low's worker 1 leaves, another
    workload takes B and C (pool y) frees. The pass that the worker's going asks for sees room no longer
    coming to high: it preempts low in that pass. Read from the last pass, room still seemed to come, and
    the preemption waited for a pass nothing asked for (a closed-loop simulation)."""
    low, high = ("ns", "low"), ("ns", "high")
    pools = (("A", "x"), ("B", "x"), ("C", "y"))
    nodes = [node(name, labels={"pool": pool, "kubernetes.io/hostname": name}) for name, pool in pools]
    cluster = FakeCluster(nodes=nodes, others={"C": 8}, per_worker={low: 8, high: 8})
    scheduler, _ = sync_scheduler()
    scheduler.offer(low, demand("low", per_worker=8, min_workers=1, want=2), ANYWHERE, cluster.view())
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[low].workers == 2
    cluster.workers[low] = [worker("low", 0, "A"), worker("low", 1, "B")]
    scheduler.request("pod", cluster.view())
    gang = replace(
        demand("high", per_worker=8, min_workers=1, want=1, priority=10, created=2),
        elastic=False,
        preemption="LowerPriority",
    )
    scheduler.offer(high, gang, Placement({"pool": "x"}, (), ()), cluster.view())
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[low].workers == 1 and scheduler.snapshot()[high].workers == 1
    cluster.workers[low] = [worker("low", 0, "A"), worker("low", 1, "B", terminating=True)]
    cluster.workers[high] = [worker("high", 0, None, phase="Pending")]
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[low].workers == 1 and scheduler.snapshot()[high].workers == 1
    cluster.workers[low] = [worker("low", 0, "A")]
    cluster.others = {"B": 8}
    scheduler.request("pod", cluster.view())
    assert scheduler.snapshot()[low] == Grant(0, None, "Preempted: to make room for ns/high")
