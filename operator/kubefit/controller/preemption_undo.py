"""A preemption undone: a job preempted for others whose workers all still run through their checkpoint
handshake is taken back with them once the jobs it was preempted for no longer need their places (placed on
a node added meanwhile, deleted, suspended), and taking it back keeps nothing from any other job.

Without it the victim stopped every worker when the handshake ended and started again from its checkpoint
once they were gone: a whole restart for nothing. The scheduler (controller/scheduler.py) asks
`preemptions_to_undo` at each pass, and for any job it names plans the pass twice more: once with the job
admitted on its running workers, once with their devices free and the job queued, as it would be once
they are gone. The job is taken back when the first plan gives every other job at least what the second
does (`deprives_no_one`): a job waiting for those devices, or one that would grow onto them, keeps the
preemption going, as it would have had them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace

from kubefit.api.resource import JobKey
from kubefit.controller.cluster import ClusterView
from kubefit.controller.pass_inputs import live_workers, owned_workers
from kubefit.decisions.admission import ADMITTED, AdmissionPlan, Demand
from kubefit.decisions.running import PREEMPTION_UNDONE


def preemptions_to_undo(
    last_leaving: Mapping[JobKey, frozenset[JobKey]],
    demands: Mapping[JobKey, Demand],
    grants: Mapping[JobKey, int],
    uids: Mapping[JobKey, str | None],
    view: ClusterView,
) -> dict[JobKey, int]:
    """The preempted jobs (a victim still leaving, granted nothing, still in the queue) whose workers are all
    bound and none terminating, at least its minimum (a whole gang for a fixed-size job), while every job it
    made room for holds no grant now or has each granted worker bound: victim -> its running workers."""
    found = {}
    for victim, beneficiaries in last_leaving.items():
        demand = demands.get(victim)
        if demand is None or grants.get(victim, 0) > 0:
            continue  # out of the queue (suspended, deleted, blocked), or a shrink: taken back by the planner
        pods = [
            pod
            for pod in owned_workers(view.workers(victim), uids.get(victim))
            if pod.index is not None and not pod.finished
        ]
        if not pods or any(pod.terminating or not pod.node_name for pod in pods):
            continue  # its handshake is over (workers going), or a worker never started
        floor = demand.min_workers if demand.elastic else max(demand.min_workers, demand.want_workers)
        if len({pod.index for pod in pods}) < max(floor, len(pods)):
            continue
        if all(_needs_no_place(view, job, grants.get(job, 0), uids.get(job)) for job in beneficiaries):
            found[victim] = len(pods)
    return found


def _needs_no_place(view: ClusterView, key: JobKey, grant: int, uid: str | None) -> bool:
    """Whether the job holds no grant, or each worker of its grant exists and is bound to a node."""
    if grant <= 0:
        return True
    workers = live_workers(owned_workers(view.workers(key), uid))
    return len(workers) >= grant and all(pod.node_name for pod in workers)


def deprives_no_one(kept: AdmissionPlan, freed: AdmissionPlan, victims: Collection[JobKey]) -> bool:
    """Whether `kept` (the victims admitted on their running workers) grants each victim workers and leaves
    it unpreempted, and gives every other job at least the grant and the places (bound or reserved) that
    `freed` (the victims' devices free, the victims queued) gives it."""
    if any(kept.grants.get(victim, 0) <= 0 or victim in kept.preempt for victim in victims):
        return False
    for key, granted in freed.grants.items():
        if key in victims:
            continue
        if kept.grants.get(key, 0) < granted:
            return False
        if _places(kept.placement.get(key, {})) < _places(freed.placement.get(key, {})):
            return False
    return True


def _places(placement: Mapping[str, int]) -> int:
    return sum(placement.values())


def undone_reason(made_room_for: Collection[JobKey]) -> str:
    """The pass's reason for a victim taken back with its running workers."""
    names = ", ".join(f"{namespace}/{name}" for namespace, name in sorted(made_room_for))
    needs = "need" if len(made_room_for) > 1 else "needs"
    return (
        f"{ADMITTED}: {PREEMPTION_UNDONE}, its running workers kept: {names} no longer {needs} their places"
    )


def with_undone_reasons(
    plan: AdmissionPlan, undone: Mapping[JobKey, int], leaving: Mapping[JobKey, frozenset[JobKey]]
) -> AdmissionPlan:
    """`plan` with the reason of each job taken back with its running workers (`undone`) that it still grants:
    `leaving` names the jobs each was preempted for."""
    kept = {
        key: undone_reason(leaving.get(key, frozenset())) for key in undone if plan.grants.get(key, 0) > 0
    }
    return replace(plan, reasons={**plan.reasons, **kept}) if kept else plan
