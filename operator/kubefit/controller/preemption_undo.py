"""A preemption undone: a job preempted for others whose workers all still run through their checkpoint
handshake is taken back with them once the jobs it was preempted for no longer need their places (placed on
a node added meanwhile, deleted, suspended), and taking it back keeps nothing from any other job.

Without it the victim stopped every worker when the handshake ended and started again from its checkpoint
once they were gone: a whole restart for nothing. The scheduler (controller/scheduler.py) asks
`preemptions_to_undo` at each pass, and for the jobs it names plans the cluster twice more as it will be once
the workers of every preempted job are gone (`UndoTrials`): once with those jobs kept on their running
workers, once with them gone too and queued. They are taken back when the first plan gives every other job at
least what the second does (`deprives_no_one`): a job waiting for their devices or their quota, or one that
would grow onto them, keeps the preemption going, as it would have had them. When they cannot all be, one of
them is tried alone, a different one in each pass.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace

from kubefit.api.resource import JobKey
from kubefit.controller.cluster import ClusterView
from kubefit.controller.pass_inputs import (
    PassInputs,
    PassWorld,
    live_workers,
    owned_workers,
    pass_inputs,
    quota_state,
)
from kubefit.decisions.admission import ADMITTED, AdmissionPlan, Demand, Holding, NodeCapacity
from kubefit.decisions.inventory import NodeFacts, PodUsage
from kubefit.decisions.node_sets import NodeDevices
from kubefit.decisions.quota import QuotaState
from kubefit.decisions.running import PREEMPTION_UNDONE
from kubefit.sizing.catalog import Catalog

logger = logging.getLogger("kubefit.scheduler")


def preemptions_to_undo(
    victims: Mapping[JobKey, frozenset[JobKey]],
    demands: Mapping[JobKey, Demand],
    grants: Mapping[JobKey, int],
    uids: Mapping[JobKey, str | None],
    view: ClusterView,
    nodes: Iterable[NodeFacts],
) -> dict[JobKey, int]:
    """Of the preempted jobs (`victims`: victim -> the jobs it made room for), those granted nothing and still in
    the queue whose workers are all bound to one of `nodes` (the pass's: not removed, Ready, not cordoned) and
    none terminating, as many as its grant would be (its whole group for a fixed-size job; for an elastic one
    between its minimum and its want, in whole TP x PP groups), while no job it made room for needs a place
    (_needs_no_place): victim -> its running workers."""
    found: dict[JobKey, int] = {}
    names = {node.name for node in nodes} if victims else set()
    for victim, beneficiaries in victims.items():
        demand = demands.get(victim)
        if demand is None or grants.get(victim, 0) > 0:
            continue  # out of the queue (suspended, deleted, blocked), or a shrink: taken back by the planner
        pods = [
            pod
            for pod in owned_workers(view.workers(victim), uids.get(victim))
            if pod.index is not None and not pod.finished
        ]
        if not pods or any(pod.terminating or pod.node_name not in names for pod in pods):
            continue  # its handshake is over (workers going), a worker never started or lost its node
        if len({pod.index for pod in pods}) != len(pods) or not _a_grant_of(demand, len(pods)):
            continue  # taken back at another count, the group would restart or lose a worker
        if all(_needs_no_place(view, job, grants.get(job, 0), uids.get(job)) for job in beneficiaries):
            found[victim] = len(pods)
    return found


def _a_grant_of(demand: Demand, workers: int) -> bool:
    """Whether the pass would grant the job exactly `workers` (admission._reserve_admitted)."""
    target = max(demand.min_workers, demand.want_workers)
    if not demand.elastic:
        return workers == target
    return demand.min_workers <= workers <= target and workers % demand.worker_step == 0


def _needs_no_place(view: ClusterView, key: JobKey, grant: int, uid: str | None) -> bool:
    """Whether the job has no live worker that is not bound yet, nor fewer live workers than its grant (one
    no pass has decided since an operator restart has grant 0 here: its Pending workers still count)."""
    workers = live_workers(owned_workers(view.workers(key), uid))
    return len(workers) >= grant and all(pod.node_name for pod in workers)


def deprives_no_one(kept: AdmissionPlan, freed: AdmissionPlan, victims: Mapping[JobKey, int]) -> bool:
    """Whether `kept` (the victims admitted on their running workers) grants each victim all of them, each on its
    node (no shrink or preemption of it for another job, no worker on a node outside the pass), and gives every
    other job at least the grant and the places (bound or reserved) that `freed` (the victims' devices and
    quota free, the victims queued) gives it."""
    for victim, workers in victims.items():
        if kept.grants.get(victim, 0) != workers or _places(kept.placement.get(victim, {})) != workers:
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


def without_leaving(
    capacity: Sequence[NodeCapacity],
    usage: Mapping[str, Iterable[PodUsage]],
    jobs: Collection[JobKey],
    catalog: Catalog,
) -> list[NodeCapacity]:
    """`capacity` as it will be once the bound pods of `jobs` (preempted, their workers leaving) are gone: their
    devices no longer held by others."""
    if not jobs:
        return list(capacity)
    accelerator = {node.name: node.accelerator for node in capacity}
    freed: Counter[str] = Counter()
    for name, pods in usage.items():
        found = catalog.get(accelerator.get(name) or "")
        if found is None:
            continue
        for used in pods:
            if used.job in jobs:
                freed[name] += used.requests.get(found.resource_name, 0)
    return [
        replace(node, used_by_others=max(0, node.used_by_others - freed[node.name]))
        if freed[node.name]
        else node
        for node in capacity
    ]


def without_charges(
    quotas: QuotaState | None, victims: Collection[JobKey], demands: Mapping[JobKey, Demand]
) -> QuotaState | None:
    """`quotas` as they would be once the victims' workers are gone: their charges given back to the keys they
    claim."""
    if quotas is None:
        return None
    free, charged = dict(quotas.free), dict(quotas.charged)
    for victim in victims:
        workers = charged.pop(victim, 0)
        for claim in demands[victim].quota_claims if victim in demands else ():
            if claim.pool in free:
                free[claim.pool] += workers * claim.per_worker
    return QuotaState(free, charged)


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


def merged(*victims: Mapping[JobKey, frozenset[JobKey]]) -> dict[JobKey, frozenset[JobKey]]:
    """victim -> every job it made room for, from each of `victims`."""
    found: dict[JobKey, frozenset[JobKey]] = {}
    for each in victims:
        for victim, jobs in each.items():
            found[victim] = found.get(victim, frozenset()) | jobs
    return found


def still_preempted(
    preempted: Mapping[JobKey, frozenset[JobKey]],
    plan: AdmissionPlan,
    view: ClusterView,
    in_queue: Collection[JobKey],
) -> dict[JobKey, frozenset[JobKey]]:
    """`preempted` with the jobs the plan preempts added (-> the jobs each made room for), less those it grants
    workers (taken back, or admitted again), those out of the queue (suspended, deleted, their spec made
    invalid: running workers are then left alone) and those with no worker left: the victims a later pass may
    still take back (`preemptions_to_undo`), and whose workers it counts as leaving."""
    now = merged(preempted, {victim: plan.made_room_for.get(victim, frozenset()) for victim in plan.preempt})
    return {
        victim: jobs
        for victim, jobs in now.items()
        if victim in in_queue
        and not plan.grants.get(victim, 0)
        and any(pod.index is not None and not pod.finished for pod in view.workers(victim))
    }


def at_running_count(demands: Mapping[JobKey, Demand], undone: Mapping[JobKey, int]) -> dict[JobKey, Demand]:
    """`demands` with each job taken back wanting no more than the workers it runs: granted them, not grown in
    the pass that takes it back (a later pass grows it as any admitted job)."""
    return {
        **demands,
        **{key: replace(demands[key], want_workers=workers) for key, workers in undone.items()},
    }


def still_running(victims: Iterable[JobKey], view: ClusterView) -> bool:
    """Whether any of the preempted `victims` has a worker that neither finished nor is being deleted: one a
    pass could still take back."""
    return any(
        pod.index is not None and not pod.terminating and not pod.finished
        for victim in victims
        for pod in view.workers(victim)
    )


Planner = Callable[
    [Sequence[Demand], Sequence[Holding], Sequence[NodeCapacity], QuotaState | None], AdmissionPlan
]


class UndoTrials:
    """The plans that decide which preempted jobs a pass takes back (the scheduler's `_plan` does the planning)."""

    def __init__(self, catalog: Catalog, node_devices: NodeDevices, plan: Planner) -> None:
        self.catalog = catalog
        self.node_devices = node_devices
        self.plan = plan
        self.turn = 0  # which victim a pass tries alone when they cannot all be taken back

    def taking_back(
        self,
        world: PassWorld,
        grants: Mapping[JobKey, int],
        undone: Mapping[JobKey, int],
        inputs: PassInputs,
        preempted: Collection[JobKey],
    ) -> tuple[PassInputs, dict[JobKey, int]]:
        """The pass's inputs with the jobs `undone` names admitted on their running workers where a plan so
        deprives no job of what it would get once their workers were gone: all of them, else one of them alone,
        in turn from pass to pass (two plans at most either way); else `inputs` as they were. `preempted`: every
        job whose workers leave for a preemption."""
        taken = dict(undone)
        if not self._deprives_no_one(world, grants, taken, preempted):
            order = sorted(
                undone, key=lambda key: (-world.demands[key].priority, world.demands[key].created, key)
            )
            one = order[self.turn % len(order)]
            self.turn += 1
            taken = {one: undone[one]} if len(order) > 1 else {}
            if not taken or not self._deprives_no_one(world, grants, taken, preempted):
                return inputs, {}
        for key, workers in sorted(taken.items()):
            logger.info("%s/%s: preemption undone, its %d running workers kept", *key, workers)
        world = replace(world, demands=at_running_count(world.demands, taken))
        return pass_inputs(world, {**grants, **taken}, self.catalog, self.node_devices), taken

    def _deprives_no_one(
        self,
        world: PassWorld,
        grants: Mapping[JobKey, int],
        undone: Mapping[JobKey, int],
        preempted: Collection[JobKey],
    ) -> bool:
        """Plans the cluster as it will be once the workers of every preempted job in the queue are gone, with the
        `undone` ones kept, and with none kept (`deprives_no_one`)."""
        trial = pass_inputs(
            replace(world, demands=at_running_count(world.demands, undone)),
            {**grants, **undone},
            self.catalog,
            self.node_devices,
        )
        leaving = [
            key for key in preempted if key in world.demands and not grants.get(key, 0) and key not in undone
        ]
        # The `undone` jobs' workers are their holdings' in `trial`, not others': left out of the second plan's
        # admitted jobs, their devices are free there.
        capacity = without_leaving(trial.capacity, world.view.usage(), leaving, self.catalog)
        quotas = quota_state(world.demands, world.uids, world.view)
        kept = self.plan(
            trial.queued, trial.admitted, capacity, without_charges(quotas, leaving, world.demands)
        )
        freed = self.plan(
            [*trial.queued, *(world.demands[key] for key in sorted(undone))],
            [held for held in trial.admitted if held.demand.key not in undone],
            capacity,
            without_charges(quotas, [*leaving, *undone], world.demands),
        )
        return deprives_no_one(kept, freed, undone)
