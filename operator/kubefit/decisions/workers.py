"""How many workers a job runs, and which pods to create or delete to get there.

Effective worker count: spec.workers.replicas clamped to [floor, ceiling] where
    floor   = max(minReplicas (default: replicas), sizing.minWorkers)
    ceiling = maxReplicas (default: max(replicas, minReplicas))
Both in whole tensorParallel x pipelineParallel groups (a stated minReplicas and what memory needs rounded
up, replicas down).
A floor above the ceiling means the allowed workers cannot hold the job: nothing runs. These are the
counts the planner judged the layout at (sizing.planner.worker_counts), so what runs is what was sized.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from kubefit.api.models import SizingStatus, TrainingJobSpec
from kubefit.api.validation import InvalidSpec, parse_spec, pruned
from kubefit.builders.rendezvous import fixed_world
from kubefit.decisions.observed import POD_FAILED, POD_SUCCEEDED, WorkerPod
from kubefit.sizing.planner import WorkerCounts, worker_counts

# floor, ceiling and desired (the effective worker count; meaningless when not feasible)
WorkerBounds = WorkerCounts


def worker_bounds(spec: TrainingJobSpec, sizing: SizingStatus) -> WorkerBounds:
    """The counts the planner judged `sizing` at (sizing.planner.worker_counts)."""
    return worker_counts(spec, sizing.min_workers, sizing.accelerators_per_worker)


def min_max_workers(
    raw_spec: object, sizing: SizingStatus | None, group: int | None = None
) -> tuple[int, int] | None:
    """(min, max): the fewest workers the job runs with (an elastic job's floor, a gang's whole size) and
    the most it is scaled to; None for a spec that does not parse. What the metrics export and the
    partial-gang alert and `kubefit top` judge by. `group` is the workers its grant runs (the decision's
    desired workers, status.desiredReplicas): an elastic jax job's runs only whole (JAX_NUM_PROCESSES is
    fixed when its workers start), and a job held below a raised minimum trains on it."""
    try:
        spec = parse_spec(
            pruned(raw_spec, "spec")[0]
        )  # as the reconcile reads it: a newer CRD's fields dropped
    except InvalidSpec:
        return None
    if sizing is None:
        floor, ceiling, desired = spec.workers.floor, spec.workers.ceiling, spec.workers.replicas
    else:
        bounds = worker_bounds(spec, sizing)
        floor, ceiling, desired = bounds.floor, bounds.ceiling, bounds.desired
    # A job held below a raised minimum (admission._reserve_admitted) trains on its group, the workers its
    # grant runs (`group`): judged by the new minimum it would look like a partial gang.
    if not spec.elastic.enabled:
        return (min(desired, group) if group else desired), desired
    if fixed_world(spec) and group:
        return group, ceiling
    return (min(floor, group) if group else floor), ceiling


@dataclass(frozen=True)
class WorkerChanges:
    create: tuple[int, ...] = ()  # worker indices to create, lowest first
    delete: tuple[str, ...] = ()  # pod names to delete, highest index first
    replace: tuple[WorkerPod, ...] = ()  # failed workers to recreate (running.py counts the restarts)
    # Terminating pods whose names a missing worker needs: it is created once they are gone, lowest first.
    held: tuple[WorkerPod, ...] = ()


def _live(pods: Sequence[WorkerPod], already_replaced: Collection[str]) -> list[WorkerPod]:
    return [pod for pod in pods if pod.index is not None and pod.uid not in already_replaced]


def worker_slots(  # noqa: PLR0913 - the count, the pods, and how the job keeps them
    desired: int,
    pods: Sequence[WorkerPod],
    already_replaced: Collection[str],
    keep_survivors: bool,
    finished: Collection[int] = (),
    new_index_limit: int | None = None,
    host_kept: bool = True,
) -> frozenset[int]:
    """The worker indices that make up the job: 0..desired-1, or for an elastic job (`keep_survivors`)
    worker 0 (the rendezvous host), the indices that already exist (running ones first, then bound; lowest
    index first within each; then the workers that succeeded, their pods there or gone (`finished`), so
    that a scale-down keeps the workers that still train, and the scheduling pass counts them alike:
    Demand.finished_workers; then unscheduled ones), then the lowest free ones.

    torchrun's elastic rendezvous assigns ranks itself, so an elastic job need not renumber: when a node
    takes workers 1 and 2 with it, workers 0 and 3 keep training instead of 3 being traded for a new 1
    (which would leave the job below its grant in between, or forever if 1 has no room). Running first:
    when the grant falls in two steps (a node's pods and the node itself are seen one event apart), the
    first step may have created a new worker 1 that has no room yet; the second keeps the running 3.

    With `new_index_limit` (an elastic pytorch job, whose ranks torchrun assigns) a new worker takes no
    index of one still terminating, whose pod name it would have to wait for (up to the grace period, as a
    scale-up right after a scale-down would), nor one above the limit (no more digits than the names the
    job-name checks passed); when no free index is left below it, fewer than `desired` are returned.
    Without it (a fixed world, whose indices are its ranks) the lowest free index is reused.

    `host_kept` False: see _zero_pinned."""
    if not keep_survivors or desired <= 0:
        return frozenset(range(desired))
    live = sorted(_live(pods, already_replaced), key=_keep_first)
    lowest = 1 if _zero_pinned(live, host_kept) else 0  # the lowest index that is not pinned
    existing = [
        pod.index
        for pod in live
        if pod.index is not None
        and pod.index >= lowest
        and not pod.terminating
        and pod.phase != POD_SUCCEEDED
    ]
    unscheduled = {pod.index for pod in live if pod.index in existing and not pod.node_name and not pod.ready}
    done = {pod.index for pod in live if pod.index is not None and pod.phase == POD_SUCCEEDED} | set(finished)
    pinned = {0} if lowest else set()
    placed = [index for index in existing if index not in unscheduled]
    # A worker that succeeded comes before one never placed: dropping it for that one deleted its pod.
    existing = [
        *placed,
        *sorted(index for index in done if index not in pinned and index not in existing),
        *(index for index in existing if index in unscheduled),
    ]
    slots = {*pinned, *existing[: desired - len(pinned)]}
    leaving = {pod.index for pod in live if pod.terminating} if new_index_limit is not None else set()
    top = desired + len(existing) + len(leaving)
    if new_index_limit is not None:
        top = min(top, new_index_limit)
    unused = [index for index in range(lowest, top + 1) if index not in slots]
    # Indices still terminating last: taken only when no other fits in a name.
    free = sorted(unused, key=lambda index: (index in leaving, index))
    slots.update(free[: desired - len(slots)])
    return frozenset(slots)


def _zero_pinned(live: Sequence[WorkerPod], host_kept: bool) -> bool:
    """Whether worker 0 keeps its slot whatever the count: it hosts the rendezvous (`host_kept`). Under
    framework none (host_kept False) it hosts nothing: once it has no live pod that has not finished it is
    an index like any other (a worker 0 that succeeded is a finished worker whose slot a scale-down takes
    first); while one lives it is kept, as the scheduling pass counts it (Holding.first_unbound)."""
    return host_kept or any(
        pod.index == 0 and not pod.terminating and pod.phase != POD_SUCCEEDED for pod in live
    )


def _keep_first(pod: WorkerPod) -> tuple[int, int]:
    """Which existing worker an elastic job keeps first: running, then bound, then unscheduled; then index."""
    state = 0 if pod.ready else 1 if pod.node_name else 2
    return state, pod.index or 0


def keep_order(pod: WorkerPod) -> tuple[int, int, int, int]:
    """The order in which worker_slots keeps an elastic job's workers (worker 0, then _keep_first), those
    being deleted last: the scheduling pass counts a shrink's removals in its reverse, so that the places
    it frees are those of the workers decide removes."""
    return (0 if pod.index == 0 else 1, 1 if pod.terminating else 0, *_keep_first(pod))


def scale_workers(
    slots: frozenset[int],
    pods: Sequence[WorkerPod],
    already_replaced: Collection[str] = frozenset(),
    foreign: Sequence[WorkerPod] = (),
) -> WorkerChanges:
    """Pods to create (missing slots), delete (indices outside the slots) and replace (failed).

    `already_replaced` holds uids of failed pods this operator has already deleted; a cache may still show
    them for a moment, and they must neither count as a second restart nor be deleted again.
    `foreign` pods (another owner) are left alone, but the names they hold cannot be created yet.
    """
    taken = {pod.index for pod in [*pods, *foreign] if pod.index is not None}
    staying = {pod.index for pod in [*pods, *foreign] if not pod.terminating}
    held = sorted(
        (
            pod
            for pod in [*pods, *foreign]
            if pod.terminating and pod.index in slots and pod.index not in staying
        ),
        key=lambda pod: pod.index or 0,
    )
    live = _live(pods, already_replaced)
    # A replaced pod still shown and not terminating: its deletion may have failed; deleting again is safe.
    undeleted = [pod.name for pod in pods if pod.uid in already_replaced and not pod.terminating]
    surplus = sorted(
        (pod for pod in live if pod.index is not None and pod.index not in slots and not pod.terminating),
        key=lambda pod: pod.index or 0,
        reverse=True,
    )
    failed = tuple(
        sorted(
            (pod for pod in live if pod.index in slots and pod.phase == POD_FAILED and not pod.terminating),
            key=lambda pod: pod.index or 0,
        )
    )
    return WorkerChanges(
        create=tuple(index for index in sorted(slots) if index not in taken),
        delete=tuple(pod.name for pod in surplus) + tuple(undeleted),
        replace=failed,
        held=tuple(held),
    )


def stop_workers(pods: Sequence[WorkerPod], keep_finished: bool) -> tuple[str, ...]:
    """Names of workers to delete when the job stops (suspended, failed), highest index first. Finished ones
    kept for their logs are those whose pods stopped: one an injected sidecar keeps running holds its
    devices."""
    doomed = [
        pod
        for pod in pods
        if not pod.terminating and not (keep_finished and pod.finished and not pod.outlived_by_sidecar)
    ]
    return tuple(pod.name for pod in sorted(doomed, key=lambda pod: pod.index or 0, reverse=True))
