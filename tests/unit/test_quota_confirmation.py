"""A pass that preempts or shrinks jobs for others reads those others' ResourceQuotas from the API server first
(controller/scheduler.py, _live_quota_view).

kopf's index of quotas is fed by a watch stream apart from the jobs' and the pods': a quota created a moment
before a gang may not be in it yet when the gang is decided, and the usage the API server charged to a quota
for a pod just created may lag the pod index. Either way a pass preempted another namespace's job for workers
the API server then refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from test_scheduler import CATALOG, Recorder, node, worker

from kubefit.controller import quota_confirmation
from kubefit.controller import scheduler as scheduler_module
from kubefit.controller.cluster import ClusterView
from kubefit.controller.scheduler import Scheduler, SchedulerSettings
from kubefit.decisions.admission import Demand
from kubefit.decisions.inventory import PodUsage
from kubefit.decisions.node_match import ANYWHERE
from kubefit.decisions.quota import Quota, QuotaClaim
from kubefit.metrics import OperatorMetrics

GPU = "requests.nvidia.com/gpu"
VICTIM, RUNNING, HIGH = ("team-b", "victim"), ("ml", "a"), ("ml", "high")


def gpu_quota(hard: int, used: int) -> Quota:
    return Quota("team-gpus", {GPU: Decimal(hard)}, {GPU: Decimal(used)})


def job_demand(
    key: tuple[str, str], priority: int, created: float, claims: bool, preempts: bool = False
) -> Demand:
    claim = (QuotaClaim((key[0], "team-gpus", GPU), Decimal(4)),) if claims else ()
    return Demand(
        key=key, priority=priority, created=created, accelerator="nvidia-h100-80gb", per_worker=4,
        min_workers=1, want_workers=1, elastic=False,
        preemption="LowerPriority" if preempts or key == HIGH else "Never", quota_claims=claim,
    )  # fmt: skip


class Cluster:
    """One node of 8 GPUs: team-b/victim and ml/a run one worker of 4 GPUs each. ml's quota (4 GPUs) is full
    with a's worker at the API server; `indexed` is what kopf's index of quotas holds."""

    def __init__(self, indexed: list[Quota], live: list[Quota]) -> None:
        self.indexed, self.live, self.reads = indexed, live, 0
        self.workers = {VICTIM: [worker("victim", 0, "n1")], RUNNING: [worker("a", 0, "n1")]}

    def usage(self) -> dict[str, list[PodUsage]]:
        return {"n1": [PodUsage("n1", {"nvidia.com/gpu": 4}, key) for key in self.workers]}

    def view(self) -> ClusterView:
        return ClusterView(
            nodes=lambda: [node("n1")],
            usage=self.usage,
            workers=lambda key: list(self.workers.get(key, [])),
            jobs_with_workers=lambda: list(self.workers),
            quotas=lambda namespace: self.indexed if namespace == "ml" else [],
        )

    def live_quotas(self, namespace: str) -> Sequence[Quota]:
        self.reads += 1
        return self.live if namespace == "ml" else []


def offer_all(cluster: Cluster, high_claims: bool = True, clock: float = 0.0) -> Scheduler:
    scheduler = Scheduler(
        CATALOG, OperatorMetrics(), SchedulerSettings(debounce=None), clock=lambda: clock,
        live_quotas=cluster.live_quotas,
    )  # fmt: skip
    scheduler.reconcile_with(Recorder())
    view = cluster.view()
    assert scheduler.grant(VICTIM, cluster.workers[VICTIM], admitted_with=1).workers == 1
    assert scheduler.grant(RUNNING, cluster.workers[RUNNING], admitted_with=1).workers == 1
    scheduler.offer(VICTIM, job_demand(VICTIM, 0, 1, claims=False), ANYWHERE, view)
    scheduler.offer(RUNNING, job_demand(RUNNING, 100, 2, claims=True), ANYWHERE, view)
    scheduler.offer(HIGH, job_demand(HIGH, 50, 3, claims=high_claims), ANYWHERE, view)
    return scheduler


def test_a_quota_usage_the_index_has_not_caught_up_with_is_read_afresh_before_a_preemption() -> None:
    # The index still shows the quota empty, while the pod index shows a's worker (charged: counted as room
    # a second time). Read afresh, the quota is full: the gang waits, and the victim keeps its worker.
    cluster = Cluster(indexed=[gpu_quota(4, 0)], live=[gpu_quota(4, 4)])
    grants = offer_all(cluster).snapshot()
    assert grants[VICTIM].workers == 1
    assert grants[HIGH].workers == 0
    assert (grants[HIGH].waiting or "").startswith("QuotaExceeded: ResourceQuota team-gpus has room for 0")
    assert cluster.reads >= 1


def test_a_quota_the_index_does_not_hold_yet_holds_the_preemption_until_its_watch_catches_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The gang was decided before the quota's ADDED event reached the index: its demand claims no quota. The
    # pass stores nothing and asks for itself again; the quota's event then decides the gang again.
    asked: list[float] = []
    monkeypatch.setattr(Scheduler, "_pass_later", lambda self, delay, trigger: asked.append(delay))
    cluster = Cluster(indexed=[], live=[gpu_quota(4, 4)])
    scheduler = offer_all(cluster, high_claims=False)
    grants = scheduler.snapshot()
    assert grants[VICTIM].workers == 1
    assert not grants[HIGH].workers
    assert asked and asked[0] == quota_confirmation.QUOTA_RECHECK_SECONDS
    # Caught up: the quota's event decided the gang again, which now claims the quota and waits for it.
    cluster.indexed = cluster.live
    scheduler.offer(HIGH, job_demand(HIGH, 50, 3, claims=True), ANYWHERE, cluster.view())
    grants = scheduler.snapshot()
    assert (grants[VICTIM].workers, grants[HIGH].workers) == (1, 0)
    assert (grants[HIGH].waiting or "").startswith("QuotaExceeded: ")


def lagging_scheduler(
    cluster: Cluster, now: list[float], running_claims: bool = False, **options: Any
) -> tuple[Scheduler, ClusterView]:
    """The victim and ml/a admitted with their workers, nothing else offered yet."""
    scheduler = Scheduler(
        CATALOG, OperatorMetrics(), SchedulerSettings(debounce=None), clock=lambda: now[0],
        live_quotas=cluster.live_quotas, **options,
    )  # fmt: skip
    scheduler.reconcile_with(Recorder())
    view = cluster.view()
    for key in (VICTIM, RUNNING):
        scheduler.grant(key, cluster.workers[key], admitted_with=1)
    scheduler.offer(VICTIM, job_demand(VICTIM, 0, 1, claims=False), ANYWHERE, view)
    scheduler.offer(RUNNING, job_demand(RUNNING, 100, 2, claims=running_claims), ANYWHERE, view)
    return scheduler, view


def test_a_pass_waits_for_the_quota_index_for_a_limited_time_then_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Scheduler, "_pass_later", lambda self, delay, trigger: None)
    now = [1000.0]
    cluster = Cluster(indexed=[], live=[gpu_quota(4, 0)])
    scheduler, view = lagging_scheduler(cluster, now)
    scheduler.offer(HIGH, job_demand(HIGH, 50, 3, claims=False), ANYWHERE, view)
    assert scheduler.snapshot()[VICTIM].workers == 1
    # A watch that never catches up (broken) does not hold the job for ever: passes a second apart.
    while now[0] < 1000.0 + quota_confirmation.QUOTA_LAG_LIMIT_SECONDS:
        now[0] += quota_confirmation.QUOTA_RECHECK_SECONDS
        scheduler.request("timer", view)
    assert (scheduler.snapshot()[VICTIM].workers, scheduler.snapshot()[HIGH].workers) == (0, 1)


def test_a_later_lag_of_the_quota_index_waits_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first lag ended when the watch caught up and the gang waited for its quota (a pass that preempts
    # no one). Hours later another gang meets another lag: it waits too, not at once past the limit.
    monkeypatch.setattr(Scheduler, "_pass_later", lambda self, delay, trigger: None)
    now = [1000.0]
    cluster = Cluster(indexed=[], live=[gpu_quota(4, 4)])
    scheduler, view = lagging_scheduler(cluster, now)
    scheduler.offer(HIGH, job_demand(HIGH, 50, 3, claims=False), ANYWHERE, view)
    assert not scheduler.snapshot()[HIGH].workers
    cluster.indexed = cluster.live
    scheduler.offer(HIGH, job_demand(HIGH, 50, 3, claims=True), ANYWHERE, cluster.view())
    scheduler.forget(HIGH)
    now[0] += 3600
    cluster.indexed, cluster.live = [], [gpu_quota(8, 8)]
    later = ("ml", "later")
    scheduler.offer(later, job_demand(later, 50, 4, claims=False, preempts=True), ANYWHERE, cluster.view())
    assert scheduler.snapshot()[VICTIM].workers == 1


def test_a_second_gang_of_a_lagging_namespace_preempts_no_one_either(monkeypatch: pytest.MonkeyPatch) -> None:
    # Holding the first gang alone let the plan made again preempt the victim for the second one.
    monkeypatch.setattr(Scheduler, "_pass_later", lambda self, delay, trigger: None)
    cluster = Cluster(indexed=[], live=[gpu_quota(4, 4)])
    scheduler, view = lagging_scheduler(cluster, [1000.0])
    second = ("ml", "high2")
    scheduler.offer(second, job_demand(second, 40, 4, claims=False, preempts=True), ANYWHERE, view)
    scheduler.offer(HIGH, job_demand(HIGH, 50, 3, claims=False), ANYWHERE, view)
    grants = scheduler.snapshot()
    assert grants[VICTIM].workers == 1
    assert not grants[HIGH].workers and not grants[second].workers


def test_a_current_quota_index_costs_one_list_and_no_second_plan() -> None:
    planned: list[int] = []
    cluster = Cluster(indexed=[gpu_quota(8, 4)], live=[gpu_quota(8, 4)])

    def counting_planner(*args: object, **kwargs: object) -> object:
        planned.append(1)
        return scheduler_module.plan_admissions(*args, **kwargs)  # type: ignore[arg-type]

    scheduler, view = lagging_scheduler(cluster, [0.0], running_claims=True, planner=counting_planner)
    planned.clear()
    scheduler.offer(HIGH, job_demand(HIGH, 50, 3, claims=True), ANYWHERE, view)
    assert scheduler.snapshot()[VICTIM].workers == 0  # room in the quota: it preempts, as before
    assert (cluster.reads, len(planned)) == (1, 1)


def test_a_pass_that_takes_from_no_one_reads_no_quota() -> None:
    cluster = Cluster(indexed=[gpu_quota(8, 4)], live=[gpu_quota(8, 4)])
    cluster.workers = {RUNNING: cluster.workers[RUNNING]}
    scheduler = Scheduler(
        CATALOG, OperatorMetrics(), SchedulerSettings(debounce=None), live_quotas=cluster.live_quotas
    )
    scheduler.reconcile_with(Recorder())
    scheduler.grant(RUNNING, cluster.workers[RUNNING], admitted_with=1)
    scheduler.offer(RUNNING, job_demand(RUNNING, 100, 2, claims=True), ANYWHERE, cluster.view())
    scheduler.offer(HIGH, job_demand(HIGH, 50, 3, claims=True), ANYWHERE, cluster.view())
    assert scheduler.snapshot()[HIGH].workers == 1
    assert cluster.reads == 0
