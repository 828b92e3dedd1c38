"""A worker bound where the last pass counted its job (Scheduler.worker_bound) asks for no pass.

The premise, checked on random clusters with the real planner: after such a bind, a pass changes no job's
grant and no job's place in the queue, so the pass the bind used to ask for was work for nothing.
"""

from __future__ import annotations

import random
import threading

import pytest
from test_scheduler import CATALOG, FakeCluster, demand, node, sync_scheduler, worker

from kubefit.api.resource import JobKey
from kubefit.controller.cluster import ClusterView
from kubefit.controller.handlers import WorkerChange, WorkerNews, _after_worker_event, _pass_change
from kubefit.controller.scheduler import Grant, Scheduler, SchedulerSettings
from kubefit.decisions.admission import AdmissionPlan, plan_admissions
from kubefit.decisions.inventory import PodUsage
from kubefit.decisions.node_match import ANYWHERE
from kubefit.decisions.observed import WorkerPod
from kubefit.metrics import OperatorMetrics

KEY: JobKey = ("ns", "a")


def admitted_two_workers() -> tuple[Scheduler, FakeCluster]:
    """Job a, 2 workers of 4 GPUs: best fit reserves one on n1 (4 GPUs free) and one on n2."""
    cluster = FakeCluster(nodes=[node("n1"), node("n2"), node("n3")], others={"n1": 4, "n3": 8})
    scheduler, _ = sync_scheduler()
    scheduler.offer(KEY, demand("a", min_workers=2, want=2), ANYWHERE, cluster.view())
    cluster.workers[KEY] = [worker("a", 0, None, phase="Pending"), worker("a", 1, None, phase="Pending")]
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(KEY, cluster.workers[KEY]).workers == 2
    return scheduler, cluster


def test_a_bind_on_a_node_reserved_for_the_job_is_counted_there_and_one_beyond_it_is_not() -> None:
    scheduler, cluster = admitted_two_workers()
    cluster.workers[KEY][0] = worker("a", 0, "n1", phase="Pending")
    assert scheduler.worker_bound(KEY, "n1", cluster.view())
    # The second worker on n1 too: the last pass counted one there, so the devices it holds are news.
    cluster.workers[KEY][1] = worker("a", 1, "n1", phase="Pending")
    assert not scheduler.worker_bound(KEY, "n1", cluster.view())
    cluster.workers[KEY][1] = worker("a", 1, "n2", phase="Pending")
    assert scheduler.worker_bound(KEY, "n2", cluster.view())
    assert not scheduler.worker_bound(KEY, "n3", cluster.view())  # nothing of the job's there
    assert not scheduler.worker_bound(("ns", "unknown"), "n1", cluster.view())
    binds = {
        placement: scheduler.metrics.registry.get_sample_value(
            "kubefit_worker_binds_total", {"placement": placement}
        )
        for placement in ("counted", "elsewhere")
    }
    assert binds == {"counted": 2, "elsewhere": 3}


def test_a_queued_jobs_worker_is_never_counted_there() -> None:
    cluster = FakeCluster(nodes=[node("n1")], others={"n1": 8})
    scheduler, _ = sync_scheduler()
    scheduler.offer(KEY, demand("a", min_workers=1, want=1), ANYWHERE, cluster.view())
    assert scheduler.grant(KEY, []).workers == 0
    cluster.workers[KEY] = [worker("a", 0, "n1", phase="Pending")]
    assert not scheduler.worker_bound(KEY, "n1", cluster.view())


@pytest.mark.parametrize(("bound_on", "passes", "placement"), [("n2", 1, "counted"), ("n3", 2, "elsewhere")])
def test_a_bind_seen_while_a_pass_runs_is_checked_against_the_plan_that_pass_stores(
    bound_on: str, passes: int, placement: str
) -> None:
    # The pass read the cluster before the bind: best fit reserves worker 0 on n1 (4 GPUs free) and worker 1
    # on n2. Worker 1 is bound mid-pass; once the plan is stored, a bind on n2 is where it was counted, a
    # bind on n3 is not and asks for a pass.
    cluster = FakeCluster(nodes=[node("n1"), node("n2"), node("n3")], others={"n1": 4})
    answers: list[bool] = []

    def planner(*args: object, **kwargs: object) -> AdmissionPlan:
        plan = plan_admissions(*args, **kwargs)  # type: ignore[arg-type]
        if cluster.workers.get(KEY) and cluster.workers[KEY][1].node_name is None:
            cluster.workers[KEY][1] = worker("a", 1, bound_on, phase="Pending")
            answers.append(scheduler.worker_bound(KEY, bound_on, cluster.view()))
        return plan

    scheduler = Scheduler(CATALOG, OperatorMetrics(), SchedulerSettings(debounce=None), planner=planner)
    scheduler.reconcile_with(lambda key, trigger, view: None)
    scheduler.offer(KEY, demand("a", min_workers=2, want=2), ANYWHERE, cluster.view())
    cluster.workers[KEY] = [worker("a", 0, "n1", phase="Pending"), worker("a", 1, None, phase="Pending")]
    before = scheduler.passes
    scheduler.request("pod", cluster.view())
    assert answers == [True]  # no pass asked for while the pass runs: judged once it has stored its plan
    assert scheduler.passes - before == passes
    count = scheduler.metrics.registry.get_sample_value(
        "kubefit_worker_binds_total", {"placement": placement}
    )
    assert count == 1


def test_only_changes_a_pass_reads_ask_for_one_and_a_plain_bind_names_its_node() -> None:
    pending = WorkerPod("a-worker-0", 0, "u0", "Pending")
    bound = WorkerPod("a-worker-0", 0, "u0", "Pending", "n1")
    running = WorkerPod("a-worker-0", 0, "u0", "Running", "n1")
    assert _pass_change(None, pending) == WorkerChange(WorkerNews.CHANGED)  # its grant counted it already
    assert _pass_change(None, running).moves_devices  # first seen bound (the listing after a restart)
    assert _pass_change(pending, bound) == WorkerChange(WorkerNews.CHANGED, True, "n1")
    assert _pass_change(pending, running).bound_on == "n1"  # bound and started, seen in one event
    assert not _pass_change(bound, running).moves_devices  # started where it was: the same devices held
    finished = WorkerPod("a-worker-0", 0, "u0", "Succeeded", "n1")
    assert _pass_change(running, finished) == WorkerChange(WorkerNews.CHANGED, True, None)
    leaving = WorkerPod("a-worker-0", 0, "u0", "Pending", "n1", terminating=True)
    assert _pass_change(pending, leaving) == WorkerChange(WorkerNews.CHANGED, True, None)  # not live
    assert _pass_change(running, None) == WorkerChange(WorkerNews.CHANGED, True, None)


def test_a_bind_counted_there_asks_for_no_pass_and_any_other_does() -> None:
    asked: list[str] = []

    def run(change: WorkerChange, counted: bool) -> list[str]:
        asked.clear()
        _after_worker_event(
            change,
            ("ns", "a"),
            reconcile=lambda job: asked.append(f"reconcile {job[1]}"),
            request_pass=lambda: asked.append("pass"),
            bound_as_counted=lambda job, node: counted,
        )
        return list(asked)

    bind = WorkerChange(WorkerNews.BOUND, True, "n1")
    assert run(bind, counted=True) == []
    assert run(bind, counted=False) == ["pass"]
    assert run(WorkerChange(WorkerNews.CHANGED, True, None), counted=True) == ["reconcile a", "pass"]
    assert run(WorkerChange(WorkerNews.CHANGED), counted=False) == ["reconcile a"]
    assert run(WorkerChange(WorkerNews.NONE), counted=False) == []
    # Relabelled from job b to a: gone from b, new to a.
    relabelled = WorkerChange(WorkerNews.CHANGED, True, None, left=("ns", "b"))
    assert run(relabelled, counted=False) == ["reconcile b", "reconcile a", "pass"]


def _physically_free(cluster: FakeCluster, name: str) -> int:
    used = sum(sum(usage.requests.values()) for usage in cluster.usage().get(name, ()))
    return 8 - used


def _random_bind(rng: random.Random, scheduler: Scheduler, cluster: FakeCluster) -> bool:
    """Binds one unbound worker of an admitted job where its devices are free, often on a reserved node as
    kube-scheduler's preference does; returns whether the bind was counted there (and so asked no pass)."""
    unbound = [
        (key, i)
        for key, pods in cluster.workers.items()
        for i, pod in enumerate(pods)
        if pod.node_name is None
    ]
    if not unbound:
        return False
    key, i = rng.choice(unbound)
    per_worker = cluster.per_worker[key]
    room = [n.name for n in cluster.nodes if _physically_free(cluster, n.name) >= per_worker]
    preferred = [name for name in room if name in scheduler._entries[key].reserved]
    choices = preferred if preferred and rng.random() < 0.8 else room
    if not choices:
        return False
    pod = cluster.workers[key][i]
    cluster.workers[key][i] = WorkerPod(pod.name, pod.index, pod.uid, "Pending", rng.choice(choices))
    return scheduler.worker_bound(key, cluster.workers[key][i].node_name or "", cluster.view())


def _make_workers(scheduler: Scheduler, cluster: FakeCluster) -> None:
    """What the reconciles of the jobs whose grant changed would do: create or delete workers to the grant."""
    for key, grant in scheduler.snapshot().items():
        pods = cluster.workers.setdefault(key, [])
        target = grant.workers or 0
        del pods[target:]
        for index in range(len(pods), target):
            pods.append(worker(key[1], index, None, phase="Pending"))


def _settle(scheduler: Scheduler, cluster: FakeCluster) -> None:
    """Passes and the reconciles after them until a pass changes nothing."""
    for _ in range(10):
        _make_workers(scheduler, cluster)
        if not scheduler.run_pass(cluster.view()):
            return
    raise AssertionError("the passes did not settle")


def test_on_random_clusters_a_pass_after_a_bind_counted_there_changes_no_grant() -> None:
    rng = random.Random(20261201)
    counted_binds = 0
    for _ in range(300):
        cluster = FakeCluster(nodes=[node(f"n{i}") for i in range(rng.randint(2, 6))])
        cluster.others = {n.name: rng.choice([0, 0, 2, 4]) for n in cluster.nodes}
        scheduler, _ = sync_scheduler()
        for j in range(rng.randint(1, 5)):
            per_worker = rng.choice([1, 2, 4, 8])
            minimum = rng.randint(1, 3)
            key = ("ns", f"j{j}")
            cluster.per_worker[key] = per_worker
            wanted = demand(
                f"j{j}",
                per_worker=per_worker,
                min_workers=minimum,
                want=minimum + rng.randint(0, 2),
                created=j,
            )
            scheduler.offer(key, wanted, ANYWHERE, cluster.view())
        _settle(scheduler, cluster)
        for _ in range(6):
            if not _random_bind(rng, scheduler, cluster):
                _settle(scheduler, cluster)  # the pass the bind asks for, and the reconciles after it
                continue
            counted_binds += 1
            before = {key: grant.workers for key, grant in scheduler.snapshot().items()}
            # No grant changed, nobody left or joined the queue.
            assert scheduler.run_pass(cluster.view()) == []
            assert {key: grant.workers for key, grant in scheduler.snapshot().items()} == before
    assert counted_binds > 200  # the premise was put to the test many times


def test_worker_bound_is_safe_to_call_from_event_threads() -> None:
    scheduler, cluster = admitted_two_workers()
    cluster.workers[KEY][0] = worker("a", 0, "n1", phase="Pending")
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(scheduler.worker_bound(KEY, "n1", cluster.view())))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 8
    assert scheduler.grant(KEY, cluster.workers[KEY]) == Grant(2, None, "Admitted: 2 workers", frozenset())


def _two_bound_workers_in_usage() -> dict[str, list[PodUsage]]:
    """Job a's workers 0 and 1 holding 8 GPUs each on n1 and n2, as the usage read sees them."""
    return {
        name: [PodUsage(name, {"nvidia.com/gpu": 8}, KEY, ("ns", f"a-worker-{index}", f"uid-a-{index}"))]
        for index, name in enumerate(("n1", "n2"))
    }


def _assert_a_pass_keeps_both_workers(scheduler: Scheduler, view: ClusterView, cluster: FakeCluster) -> None:
    scheduler.request("timer", view)
    grant = scheduler.grant(KEY, cluster.workers[KEY])
    assert grant.workers == 2, grant.reason
    down = scheduler.metrics.registry.get_sample_value(
        "kubefit_scale_events_total", {"direction": "down", "reason": "CapacityChanged"}
    )
    assert not down


def test_a_bind_between_the_pass_s_workers_read_and_its_usage_read_is_the_job_s_own_worker() -> None:
    """A pass reads each admitted job's workers, then the devices bound pods hold. A bind between the two
    reads showed the job's worker unbound in the one and holding 8 GPUs of n2 in the other: counted as another
    workload's, while n2 was still kept for that worker, so the pass lowered the grant (CapacityChanged) and
    the worker was deleted, to be created again at the next pass."""
    cluster = FakeCluster(nodes=[node("n1"), node("n2")], per_worker={KEY: 8})
    scheduler, _ = sync_scheduler()
    scheduler.offer(KEY, demand("a", per_worker=8, min_workers=1, want=2), ANYWHERE, cluster.view())
    cluster.workers[KEY] = [worker("a", 0, "n1"), worker("a", 1, None, phase="Pending")]
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(KEY, cluster.workers[KEY]).workers == 2

    view = cluster.view()
    racing = ClusterView(nodes=view.nodes, usage=_two_bound_workers_in_usage, workers=view.workers)
    _assert_a_pass_keeps_both_workers(scheduler, racing, cluster)


def test_a_worker_created_and_bound_between_the_pass_s_two_reads_is_the_job_s_own_worker() -> None:
    """The pass read job a's workers before its reconcile created worker 1, which kube-scheduler bound on the
    node the pass kept for it before the usage read: in no read of the job's workers, its 8 GPUs counted as
    another workload's, and the grant was lowered (CapacityChanged)."""
    cluster = FakeCluster(nodes=[node("n1"), node("n2")], per_worker={KEY: 8})
    scheduler, _ = sync_scheduler()
    scheduler.offer(KEY, demand("a", per_worker=8, min_workers=1, want=2), ANYWHERE, cluster.view())
    cluster.workers[KEY] = [worker("a", 0, "n1")]  # worker 1 not created yet: the pass keeps n2 for it
    scheduler.request("pod", cluster.view())
    assert scheduler.grant(KEY, cluster.workers[KEY]).workers == 2

    def usage_read_after_the_create_and_bind() -> dict[str, list[PodUsage]]:
        cluster.workers[KEY] = [worker("a", 0, "n1"), worker("a", 1, "n2", phase="Pending")]
        return _two_bound_workers_in_usage()

    view = cluster.view()
    racing = ClusterView(nodes=view.nodes, usage=usage_read_after_the_create_and_bind, workers=view.workers)
    _assert_a_pass_keeps_both_workers(scheduler, racing, cluster)


def test_an_unbound_worker_0_is_kept_as_decide_keeps_it_under_each_framework() -> None:
    """Holding.first_unbound: a shrink frees none of the reserved places of a worker 0 decide keeps. Under
    framework none decide keeps only a live worker 0: with none (it succeeded, or was removed), the place
    reserved for a new worker is one a shrink frees, and counting it kept took a running worker instead."""
    from dataclasses import replace

    from kubefit.controller.pass_inputs import first_kept_unbound

    hosting = demand("a", per_worker=8, min_workers=1, want=4)
    none = replace(hosting, host_kept=False)
    without_0 = [worker("a", 1, "n1"), worker("a", 2, "n2")]
    assert first_kept_unbound(hosting, without_0) and not first_kept_unbound(none, without_0)
    waiting_0 = [worker("a", 0, None, phase="Pending"), *without_0]
    assert first_kept_unbound(hosting, waiting_0) and first_kept_unbound(none, waiting_0)
    bound_0 = [worker("a", 0, "n0"), *without_0]
    assert not first_kept_unbound(hosting, bound_0) and not first_kept_unbound(none, bound_0)


def test_a_reason_naming_the_count_wanted_then_is_dropped_when_the_job_wants_another() -> None:
    """Scaled from 2 to 1, then to 3 while the leaving worker still held its node: no pass changed the
    grant, so "ScaledDown: wants 1" stood for five minutes, with a ScaledDown event on the scale-up."""
    cluster = FakeCluster(nodes=[node("n1")], per_worker={KEY: 8})
    scheduler, _ = sync_scheduler()
    scheduler.offer(KEY, demand("a", per_worker=8, min_workers=1, want=1), ANYWHERE, cluster.view())
    assert scheduler.grant(KEY, []) == Grant(1, None, "Admitted: 1 worker", frozenset())
    cluster.workers[KEY] = [worker("a", 0, "n1")]
    scheduler.offer(KEY, demand("a", per_worker=8, min_workers=1, want=3), ANYWHERE, cluster.view())
    grant = scheduler.grant(KEY, cluster.workers[KEY])
    assert (grant.workers, grant.reason) == (1, None)  # no room for more: the job says so itself
