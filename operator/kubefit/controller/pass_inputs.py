"""What a scheduling pass reads from the cluster as it is: each admitted job's Holding (its bound workers,
the places still reserved for it, its workers terminating), the jobs that may be admitted and those whose
old workers are still going, the quotas' state, the victims still leaving, and the accelerator totals.

Functions of one ClusterView snapshot and the pass's own records (controller/scheduler.py keeps those per
job and hands the pieces in); they write nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import NamedTuple

from kubefit.api.conditions import Reason
from kubefit.api.resource import JobKey
from kubefit.builders.placement import HOSTNAME_LABEL
from kubefit.controller.cluster import ClusterView
from kubefit.decisions.admission import AdmissionPlan, Demand, Holding, NodeCapacity, leaving_for
from kubefit.decisions.inventory import NodeFacts, PodUsage
from kubefit.decisions.node_sets import (
    NodeDevices,
    bound_as_used,
    device_count,
    node_capacity,
    unread_workers,
)
from kubefit.decisions.observed import POD_SUCCEEDED, WorkerPod
from kubefit.decisions.quota import Quota, QuotaState, quota_free
from kubefit.decisions.workers import keep_order
from kubefit.metrics import AcceleratorCount
from kubefit.sizing.catalog import Catalog


@dataclass(frozen=True)
class LastPass:
    """What the last pass stored for an admitted job: its grant, the places it reserved on each node
    (AdmissionPlan.reserved) and the workers it counted there (AdmissionPlan.placement)."""

    granted: int
    reserved: Mapping[str, int] = field(default_factory=dict)
    counted: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PassWorld:
    """What one pass reads once, whatever grants it plans with (the scheduler plans some passes with other
    grants too: controller/preemption_undo.py)."""

    view: ClusterView
    nodes: Sequence[NodeFacts]  # the ready ones
    demands: Mapping[JobKey, Demand]
    uids: Mapping[JobKey, str | None]
    # Per job, the places the last pass reserved for it and the workers it counted on each node (LastPass).
    last_places: Mapping[JobKey, tuple[Mapping[str, int], Mapping[str, int]]]
    awaited: Collection[JobKey]  # the jobs victims still leave for (still_awaited)
    now: datetime


class PassInputs(NamedTuple):
    """What the planner is given, and the waiting message of the jobs whose old workers still go."""

    queued: list[Demand]
    admitted: list[Holding]
    capacity: list[NodeCapacity]
    old_workers_going: dict[JobKey, str]


def pass_inputs(
    world: PassWorld, grants: Mapping[JobKey, int], catalog: Catalog, node_devices: NodeDevices
) -> PassInputs:
    """The queued jobs, the admitted ones (those granted workers in `grants`) with what they hold, and the
    nodes' capacity less what anything else holds."""
    holdings = {key: demand for key, demand in world.demands.items() if grants.get(key, 0) > 0}
    workers, usage = workers_and_usage(world.view, {key: world.uids[key] for key in holdings})
    capacity = node_capacity(world.nodes, usage, catalog, holdings, workers, node_devices)
    admitted = [
        holding(
            demand,
            LastPass(grants[key], *world.last_places[key]),
            workers[key],
            room_coming(demand, world.awaited, world.view, world.now),
            world.view,
            world.now,
        )
        for key, demand in holdings.items()
    ]
    queued, old_workers_going = queued_and_going(world.demands, holdings, world.view, world.now)
    return PassInputs(queued, admitted, capacity, old_workers_going)


def owned_workers(pods: Iterable[WorkerPod], uid: str | None) -> list[WorkerPod]:
    """The job's own workers: those its controller reference names (or none does; uid None: all)."""
    return [pod for pod in pods if uid is None or pod.controller_uid in (None, uid)]


def live_workers(pods: Iterable[WorkerPod]) -> list[WorkerPod]:
    """Workers that hold (or will hold) devices: neither finished nor being deleted."""
    return [pod for pod in pods if pod.index is not None and not pod.terminating and not pod.finished]


def waiting_for(going: Sequence[WorkerPod], now: datetime) -> str:
    """The waiting message of a job whose old workers have not all gone (AdmissionPlan.waiting's form)."""
    stuck = sorted(pod.name for pod in going if pod.stuck_terminating(now))
    if not stuck:
        return f"{Reason.QUEUED}: waiting for its {len(going)} old worker(s) to stop"
    nodes = sorted({pod.node_name for pod in going if pod.name in stuck and pod.node_name})
    return (
        f"{Reason.QUEUED}: waiting for {', '.join(stuck)}, terminating past its grace on "
        f"{', '.join(nodes) or 'no node'}, whose kubelet has not confirmed it (unreachable?); delete that "
        "node, or the pod with --force once sure it no longer runs"
    )


def accelerator_totals(
    nodes: Iterable[NodeFacts],
    usage: Mapping[str, Iterable[PodUsage]],
    catalog: Catalog,
    not_ready: Collection[str] = frozenset(),
) -> dict[str, AcceleratorCount]:
    """Per accelerator type: the devices of the ready `nodes`, and those requested by the pods bound there
    (at most the node's devices). A type whose nodes are all `not_ready` counts 0, not nothing: a gap in
    the series would hide the outage from an alert on a low count."""
    allocatable: Counter[str] = Counter()
    allocated: Counter[str] = Counter()
    for node in nodes:
        accelerator = catalog.identify(node.labels)
        if accelerator is None:
            continue
        allocatable[accelerator.name] += 0
        if not node.ready or node.name in not_ready:
            continue
        devices = device_count(node.allocatable.get(accelerator.resource_name, 0))
        used = sum(pod.requests.get(accelerator.resource_name, 0) for pod in usage.get(node.name, ()))
        allocatable[accelerator.name] += devices
        allocated[accelerator.name] += min(used, devices)
    return {name: AcceleratorCount(devices, allocated[name]) for name, devices in allocatable.items()}


def still_reserved(
    reserved: Mapping[str, int], counted: Mapping[str, int], placed: Mapping[str, int]
) -> Mapping[str, int]:
    """The last pass's reservations less the workers bound on them since: a worker that took its reserved place
    holds it now, and the place is not reserved a second time for a worker still unbound (that took room
    another job was counted on; the binds tests in tests/unit/test_scheduler_binds.py)."""
    if not reserved:
        return reserved
    left = {}
    for node, workers in reserved.items():
        bound_since = max(0, placed.get(node, 0) - (counted.get(node, 0) - workers))
        if workers > bound_since:
            left[node] = workers - bound_since
    return left


def bound_on(view: ClusterView, key: JobKey, node: str) -> int:
    return sum(1 for pod in live_workers(view.workers(key)) if pod.node_name == node)


def quota_state(
    demands: Mapping[JobKey, Demand], uids: Mapping[JobKey, str | None], view: ClusterView
) -> QuotaState | None:
    """The quotas as the pass reads them now (kopf's index): the free amount of every key the jobs claim, and
    each claiming job's workers charged now (None where no job claims a quota; `uids`: each job's)."""
    claiming = [key for key, demand in demands.items() if demand.quota_claims]
    if not claiming:
        return None
    free = {}
    for namespace in sorted({key[0] for key in claiming}):
        free.update(quota_free(namespace, view.quotas(namespace)))
    now = datetime.now(UTC)
    charged = {key: charged_workers(owned_workers(view.workers(key), uids[key]), now) for key in claiming}
    return QuotaState(free, charged)


def charged_workers(pods: Iterable[WorkerPod], now: datetime) -> int:
    """The job's workers a quota charges now: not finished, and not stuck terminating (the API server stops
    charging a pod once its grace period is over, at its deletionTimestamp; it is counted here until
    STUCK_AFTER_GRACE_SECONDS later, as for the devices it holds). Other pods with the job's label are no
    workers of it."""
    return sum(
        1 for pod in pods if pod.index is not None and not pod.finished and not pod.stuck_terminating(now)
    )


def workers_and_usage(
    view: ClusterView, uids: Mapping[JobKey, str | None]
) -> tuple[Mapping[JobKey, Sequence[WorkerPod]], Mapping[str, Iterable[PodUsage]]]:
    """The admitted jobs' live workers (`uids`: each job's) and the devices bound pods hold, as of one
    moment: a worker created or bound between the two reads is its job's own, not another workload's."""
    read = {key: live_workers(owned_workers(view.workers(key), uid)) for key, uid in uids.items()}
    usage = view.usage()
    for key in unread_workers(read, usage):
        read[key] = live_workers(owned_workers(view.workers(key), uids[key]))
    return bound_as_used(read, usage), usage


def still_awaited(
    last_leaving: Mapping[JobKey, frozenset[JobKey]],
    grants: Mapping[JobKey, int],
    view: ClusterView,
    now: datetime,
) -> set[JobKey]:
    """The jobs that the victims the last pass saw leaving still make room for, as the cluster is now: a victim
    whose workers have all gone since frees its beneficiaries at once. Read from the last pass alone, the
    pass their going asked for still held them back (no room made for a minimum short of places), a
    lower-priority job grew on the devices meanwhile, and the next pass, which nothing asked for, preempted it
    (a closed-loop simulation)."""
    leaving, _ = leaving_now(last_leaving, grants, view, now)
    return {job for takers in leaving.values() for job in takers}


def leaving_now(
    victims: Mapping[JobKey, frozenset[JobKey]],
    grants: Mapping[JobKey, int],
    view: ClusterView,
    now: datetime,
) -> tuple[dict[JobKey, frozenset[JobKey]], dict[JobKey, int]]:
    """admission.leaving_for of `victims` with their workers as the view holds them now, and each victim's
    workers terminating within their grace."""
    held = {key: holding_devices(view.workers(key), now) for key in victims}
    terminating = {key: going for key, (_, going) in held.items()}
    leaving = leaving_for(victims, {key: staying for key, (staying, _) in held.items()}, grants, terminating)
    return leaving, terminating


def first_kept_unbound(demand: Demand, workers: Sequence[WorkerPod]) -> bool:
    """Holding.first_unbound from the job's live workers: a rendezvous host not bound (or not created yet);
    under framework none, which decide keeps only while it lives, a live worker 0 not bound."""
    if demand.host_kept:
        return not any(pod.index == 0 and pod.node_name for pod in workers)
    return any(pod.index == 0 and not pod.node_name for pod in workers)


def holding(  # noqa: PLR0913 - the job, its pass state, and the view its terminating workers are read from
    demand: Demand,
    last_pass: LastPass,
    workers: Sequence[WorkerPod],
    room_coming: bool,
    view: ClusterView,
    now: datetime,
) -> Holding:
    """An admitted job as the pass sees it: its grant, its bound workers, the places still reserved, and its
    workers terminating within their grace."""
    placed = placed_per_node(workers)
    reserved = still_reserved(last_pass.reserved, last_pass.counted, placed)
    first_unbound = first_kept_unbound(demand, workers)
    by_index = nodes_by_index(workers)
    _, terminating = holding_devices(view.workers(demand.key), now)
    return Holding(
        demand, last_pass.granted, placed, by_index, reserved, first_unbound, room_coming, terminating
    )


def queued_and_going(
    demands: Mapping[JobKey, Demand], holdings: Collection[JobKey], view: ClusterView, now: datetime
) -> tuple[list[Demand], dict[JobKey, str]]:
    """The jobs not admitted that the pass may admit, and the waiting message of the others. One whose
    workers are still going (preempted, released after a gang timeout) waits until all are gone: re-admitted
    on the devices it is freeing, it would take them from the job it made room for. One stuck terminating
    keeps its worker's name, so the job could not start whole: it waits too, and its status says for which
    pod."""
    queued, old_workers_going = [], {}
    for key, demand in demands.items():
        if key in holdings:
            continue
        # Worker-named pods only: another pod with the job's label (a TensorBoard, a debug pod) is no old
        # worker of it (decide counts none either), and would hold the job queued for ever.
        going = [pod for pod in view.workers(key) if not pod.finished and pod.index is not None]
        if going:
            old_workers_going[key] = waiting_for(going, now)
        else:
            queued.append(demand)
    return queued, old_workers_going


def room_coming(demand: Demand, awaited: Collection[JobKey], view: ClusterView, now: datetime) -> bool:
    """Holding.room_coming: workers of jobs shrunk or preempted for it are still leaving (the last pass's
    leaving_for), or its own workers are terminating (a group restart) within their grace: their devices
    come free for it. One stuck past its grace (its node unreachable) still holds its worker's name, which
    the replacement needs in a fixed world (Demand.fixed_world) and for a kept worker 0: none can be created
    yet. A minimum short of places waits for those rather than taking another job's; an elastic pytorch
    job's replacements take free indices, so a stuck pod above 0 holds nothing back."""
    if demand.key in awaited:
        return True
    going = [
        pod
        for pod in view.workers(demand.key)
        if pod.terminating and not pod.finished and pod.index is not None
    ]
    return any(
        not pod.stuck_terminating(now) or demand.fixed_world or (pod.index == 0 and demand.host_kept)
        for pod in going
    )


def holding_devices(pods: Iterable[WorkerPod], now: datetime) -> tuple[int, int]:
    """Workers bound to a node and not finished: (not terminating, terminating within their grace), both
    keep their devices until they are gone. One stuck terminating (observed.STUCK_AFTER_GRACE_SECONDS past
    its grace: its node unreachable, a finalizer) is not counted: a job it made room for would otherwise
    wait for ever. Nor is a pod that only carries the job's label (no worker name)."""
    bound = [pod for pod in pods if pod.node_name and not pod.finished and pod.index is not None]
    staying = sum(1 for pod in bound if not pod.terminating)
    going = sum(1 for pod in bound if pod.terminating and not pod.stuck_terminating(now))
    return staying, going


def placed_per_node(pods: Iterable[WorkerPod]) -> dict[str, int]:
    placed: dict[str, int] = {}
    for pod in pods:
        if pod.node_name:
            placed[pod.node_name] = placed.get(pod.node_name, 0) + 1
    return placed


def nodes_by_index(pods: Iterable[WorkerPod]) -> tuple[str, ...]:
    """The node of each bound worker in the order an elastic job keeps them (workers.keep_order): the order
    decide removes them in, reversed. By index alone, a shrink counted a running worker 3's node while
    decide removed a worker 2 still starting on another."""
    bound = sorted((pod for pod in pods if pod.node_name and pod.index is not None), key=keep_order)
    return tuple(pod.node_name for pod in bound if pod.node_name)


def recovered_workers(pods: Iterable[WorkerPod]) -> int:
    """Workers of a job found running when this process first sees it: the indices of pods not being
    deleted and not Succeeded (a Failed one is about to be replaced)."""
    return len(
        {
            pod.index
            for pod in pods
            if pod.index is not None and not pod.terminating and pod.phase != POD_SUCCEEDED
        }
    )


def reserved_hostnames(plan: AdmissionPlan, nodes: Iterable[NodeFacts]) -> dict[JobKey, frozenset[str]]:
    """Per job with reserved places, the kubernetes.io/hostname labels of those nodes (a node without the
    label is left out: a worker cannot be steered to it by a label)."""
    if not plan.reserved:
        return {}
    label = {node.name: node.labels.get(HOSTNAME_LABEL) for node in nodes}
    return {
        key: frozenset(hostname for node in reserved if (hostname := label.get(node)))
        for key, reserved in plan.reserved.items()
    }


def with_quotas(view: ClusterView, live: Mapping[str, Sequence[Quota]]) -> ClusterView:
    """`view` with the quotas of the namespaces in `live` as read there."""
    return replace(
        view, quotas=lambda namespace: live[namespace] if namespace in live else view.quotas(namespace)
    )


def quota_limits(quotas: Iterable[Quota]) -> set[tuple[object, ...]]:
    return {(quota.name, tuple(sorted(quota.hard.items())), quota.scopes, quota.counted) for quota in quotas}


def quota_usage(quotas: Iterable[Quota]) -> set[tuple[object, ...]]:
    return {(quota.name, tuple(sorted(quota.used.items()))) for quota in quotas}
