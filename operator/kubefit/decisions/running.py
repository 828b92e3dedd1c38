"""The decision for an admitted job: run its grant, remove surplus workers after the handshake, replace
failed ones after a backoff, release a gang that did not start in time, and finish.

Workers to run (the target):
- elastic: the grant within [floor, desired] (desired = spec.workers.replicas within its bounds);
- not elastic: all-or-nothing at desired. A change of desired restarts every worker with the new world
  size (status.desiredReplicas is the world size the running workers were created with).

A failed worker: an elastic pytorch job replaces that worker (torchrun re-forms the group around it), one
restart however many fail together (_new_failure). A fixed group (not elastic, or jax: builders.rendezvous.fixed_world) cannot take
a new member while the others run (their collectives wait for the dead rank, or fail one by one), so a
failure restarts the whole group, counted once however many of its workers fail with it: JobSet's
failurePolicy (what Kubeflow Trainer v2 runs on) and Volcano's RestartJob policy do the same. A worker of
a running fixed group that is gone (its node removed, its pod deleted by someone else) restarts the group
too, uncounted: a disruption, not the job's fault (a Job's podFailurePolicy Ignore for DisruptionTarget).
A fixed group starts whole: none of its new workers is created while an old one is still terminating
(saving on SIGTERM), which could still host the rendezvous the new ones would join. So does an elastic
pytorch group restarted with a new node range (or from static workers, elastic.enabled turned on).
Once a worker of the group succeeded (framework pytorch or jax) its training has ended: no new count
restarts or scales it. A worker failing after that is no failure of the job once its training is done:
any worker succeeded in an elastic pytorch group, worker 0 in a fixed one (rank 0 commonly saves after
the last collective). Then nothing is replaced or restarted, and the job succeeds once none runs. A fixed
group's worker gone before then is lost (the group restarts, uncounted), not taken for done.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from kubefit.api.conditions import ConditionType, EventReason, JobPhase, Phase, Reason
from kubefit.api.formatting import parse_index_ranges
from kubefit.api.models import GangStatus
from kubefit.api.units import parse_rfc3339, rfc3339
from kubefit.builders.naming import HELD_POD, HELD_SERVICE, widest_index, worker_name
from kubefit.builders.rendezvous import fixed_world
from kubefit.builders.resources import default_memory, given_memory
from kubefit.decisions.conditions import ConditionUpdate, find_condition, is_true
from kubefit.decisions.draft import (
    Draft,
    JobContext,
    JobEvent,
    host_share,
    not_running,
    restarts_of,
    sized,
    worker_set,
)
from kubefit.decisions.elastic import Removal, apply_handshake, handshake, highest_first, removal_progress
from kubefit.decisions.gang import (
    admitted_at,
    after_timeout,
    backoff_left,
    gang_timed_out,
    growth_held_until,
    previous_gang,
    restart_backoff,
    restart_backoff_left,
    room_entries,
)
from kubefit.decisions.observed import (
    DISRUPTION_REASONS,
    POD_FAILED,
    POD_PENDING,
    POD_RUNNING,
    POD_SUCCEEDED,
    STUCK_AFTER_GRACE_SECONDS,
    WorkerPod,
)
from kubefit.decisions.quota import QUOTA_MESSAGE_START
from kubefit.decisions.workers import WorkerChanges, scale_workers, stop_workers, worker_slots

# Reason words the scheduling pass may give a changed grant (AdmissionPlan.reasons: "Word: detail").
_GRANT_REASONS = {Reason.SCALED_UP, Reason.SCALED_DOWN, Reason.SHRUNK_FOR_PRIORITY, Reason.ADMITTED}
# The reason of a grant the scheduler rebuilt from the workers it found when the operator started
# (controller.scheduler.RECOVERED): no news, so the job's Admitted condition stays as it was.
RECOVERED = "Recovered"
_NO_CAPACITY = "no capacity for more"  # why a grant is below the replicas when nothing else says
# status.message while a suspend asked for waits for the workers of a training that has ended (training_ended).
SUSPEND_WAITS = (
    "spec.runPolicy.suspend waits: the training has ended (a worker succeeded), so the workers finish instead "
    "of being stopped"
)


@dataclass(frozen=True)
class _Plan:
    target: int  # workers to run once the removal (if any) is done
    keep: int  # indices below this are kept (and created) now
    removal: Removal | None  # workers to remove after the handshake
    restart: str | None = None  # a non-elastic restart's message
    hold: str | None = None  # why the running workers keep their count below what the spec asks for now
    floor: int | None = None  # torchrun's minimum for the workers created now (None: the bounds' floor)
    # Why the grant was lowered to the workers placed (_growth_given_up), said before the pass's reason.
    capped: str | None = None


def admitted(ctx: JobContext, grant: int) -> Draft:
    fixed = fixed_world(ctx.spec)
    if fixed:
        ctx = _with_adopted_attempt(ctx)
    leaving = _other_attempts(ctx) if fixed else []
    if not leaving:
        return _admitted_job(ctx, grant, fixed)
    # Workers of an earlier attempt of a fixed group: they are stopped, and the decision is made as if
    # they were gone (their names stay taken until they are).
    draft = _admitted_job(replace(ctx, ours=[pod for pod in ctx.ours if pod not in leaving]), grant, fixed)
    _stop_other_attempts(ctx, draft, leaving)
    return draft


def _with_adopted_attempt(ctx: JobContext) -> JobContext:
    """A status whose status.gang.attempt is behind the highest its workers carry (the running ones first)
    takes theirs: an attempt is written to the status before its workers are created, so a worker ahead of
    it means the status lost it (wiped, restored from a backup, written by an operator version before it,
    which the CRD's default then reads as 0). Read as it is, a healthy group of attempt 1 would be taken
    for an old one and stopped."""
    gang = ctx.status.get("gang")
    running = [pod.attempt for pod in ctx.ours if pod.attempt is not None and not pod.terminating]
    carried = running or [pod.attempt for pod in ctx.ours if pod.attempt is not None]
    stored = gang.get("attempt") if isinstance(gang, Mapping) else None
    if not carried or (isinstance(stored, int) and stored >= max(carried)):
        return ctx
    kept = dict(gang) if isinstance(gang, Mapping) else {}
    status = {**ctx.status, "gang": {**kept, "attempt": max(carried)}}
    return replace(ctx, observation=replace(ctx.observation, status=status))


def _other_attempts(ctx: JobContext) -> list[WorkerPod]:
    """Workers created for another restart attempt of the group than status.gang.attempt."""
    attempt = previous_gang(ctx.status).attempt
    return [pod for pod in ctx.ours if pod.attempt is not None and pod.attempt != attempt]


def _stop_other_attempts(ctx: JobContext, draft: Draft, leaving: Sequence[WorkerPod]) -> None:
    """Deletes the workers of another attempt (again, if a delete was lost: a failed write, an operator
    restart), and creates nothing while one is still going: an old worker saving on SIGTERM may still host
    the rendezvous the new ones would join. One stuck terminating (WorkerPod.stuck_terminating: a minute
    past its grace, its node unreachable) is not waited for; the requeue comes when it counts as stuck."""
    draft.delete = tuple(
        dict.fromkeys((*draft.delete, *highest_first([pod for pod in leaving if not pod.terminating])))
    )
    _hold_for_old_group(ctx, draft, leaving)


def _hold_for_old_group(ctx: JobContext, draft: Draft, leaving: Sequence[WorkerPod]) -> None:
    """Creates none of a new group's workers while one of the old group's (`leaving`) is still going; the
    requeue comes when the last counts as stuck. After a restart (gang.since set) the new gang's clock
    starts once they are gone; a group admitted again after a suspend, a preemption or a gang timeout
    counts from its admission, so an old worker's grace there counts against its gang timeout."""
    if not _still_going(leaving, ctx.now):
        return
    if draft.create:
        draft.create, draft.worker_set = (), None
        # Else a restart read "Scaling 0/6" with no word for the old workers' whole termination grace.
        going = sum(1 for pod in leaving if not pod.stuck_terminating(ctx.now))
        note = f"waiting for {going} terminating worker(s) to stop before new ones start"
        draft.message = f"{draft.message}; {note}" if draft.message else note
    ends = [parse_rfc3339(pod.deletion_timestamp) for pod in leaving if pod.terminating]
    stuck_at = [end + timedelta(seconds=STUCK_AFTER_GRACE_SECONDS) for end in ends if end is not None]
    later = [(at - ctx.now).total_seconds() for at in stuck_at if at > ctx.now]
    if later:
        draft.requeue_after.append(max(later))
    if draft.gang is not None and not draft.gang.started:
        draft.gang = _timed_from_old_workers_gone(draft.gang, leaving)


def _wait_for_room(ctx: JobContext, draft: Draft) -> None:
    """While workers of jobs shrunk or preempted for this one are still leaving (JobObservation.places_held),
    creates only as many workers as its reserved places free now hold, the lowest indices first (they pull
    their image meanwhile). One created for a place still held stays Pending, and kube-scheduler binds it
    to the first node with a free device, which may be one the pass keeps for a job ahead of it; that job
    then preempts it, and the two take turns (docs/scheduling.md). The rest are created once the leaving
    workers are gone (the pass reconciles the job then), and each finds its reserved place free, where its
    preferred node term takes it. The gang clock does not run meanwhile (_gang_clock_start); Ready names
    who is leaving."""
    if not ctx.observation.places_held or not draft.create:
        return
    unbound = sum(1 for pod in ctx.live if not pod.node_name)
    draft.create = draft.create[: max(0, _reserved_places_free(ctx) - unbound)]
    if not draft.create:
        draft.worker_set = None


def _reserved_places_free(ctx: JobContext) -> int:
    """The job's reserved places (JobObservation.reserved_places) whose devices no pod holds now. The job's
    inventory counts its own workers' devices as free: taken off here, terminating ones too, each by what
    it was created with (a worker from before an edit of the device count holds the old count)."""
    per_worker = ctx.sizing.accelerators_per_worker
    if per_worker <= 0:
        return 0
    free = {node.name: node.free for node in ctx.observation.inventory.placeable}
    ours: Counter[str] = Counter()
    for pod in ctx.ours:
        if pod.node_name and not pod.finished:
            held = pod.holds(ctx.sizing.resource_name)
            ours[pod.node_name] += per_worker if held is None else held
    return sum(
        min(workers, max(0, free.get(node, 0) - ours[node]) // per_worker)
        for node, workers in ctx.observation.reserved_places.items()
    )


def _still_going(pods: Sequence[WorkerPod], now: datetime) -> bool:
    """Whether one of `pods` is running or terminating and not stuck (WorkerPod.stuck_terminating: its node
    unreachable, not waited for)."""
    return any(not pod.stuck_terminating(now) for pod in pods)


def _admitted_job(ctx: JobContext, grant: int, fixed: bool) -> Draft:
    plan, given_up, held_until = _growth_plan(ctx, grant, fixed)
    foreign = [pod for pod in ctx.observation.pods if pod not in ctx.ours]
    slots = _slots(ctx, plan.keep)
    # A worker that succeeded is not run again when its pod goes (a node removed once it finished).
    gone_after_success = _done_without_pods(ctx, plan, slots, fixed)
    changes = scale_workers(slots - gone_after_success, ctx.ours, ctx.observation.already_replaced, foreign)
    succeeded_in_group = _succeeded_in_group(ctx)
    training_ended = _training_done(ctx)
    changes = _nothing_new(changes) if training_ended else changes
    faults, lost = _faults_and_losses(ctx, plan, changes, slots - gone_after_success, fixed)
    group_failed = bool(faults) and fixed
    new_failure = group_failed or _new_failure(ctx, faults)
    restarts = restarts_of(ctx.status) + (1 if new_failure else 0)
    # Judged when a worker fails: a limit lowered below the restarts so far does not stop a healthy job.
    if new_failure and restarts > ctx.spec.run_policy.max_restarts:
        return failed(ctx, faults)
    done = (_succeeded_now(ctx.ours) | gone_after_success) & slots
    if slots and slots <= done:
        return succeeded(ctx, plan.keep, done)
    if training_ended and not _ready(ctx.ours, slots - succeeded_in_group):
        # The training is done (_training_done) and none other runs: the job is done. Workers never placed
        # only found torchrun's rendezvous closed; one that failed since failed after the last step.
        return succeeded(ctx, plan.keep, done)
    # A worker that succeeded and whose pod went (its node scaled away) is done, not missing.
    placed = _placed(ctx.ours, slots) + len(gone_after_success & slots)
    gang = _ran_whole(ctx, plan, _gang_now(ctx, plan, placed, fixed), slots, fixed)
    restarted_at = parse_rfc3339(gang.since)
    waiting_since = _gang_clock_start(ctx, gang, restarted_at or admitted_at(ctx.conditions) or ctx.now)
    refused, at_once = _refused_gang(ctx, plan, gang, fixed)
    timeout = ctx.spec.scheduling.gang_timeout_seconds
    if at_once or gang_timed_out(gang, waiting_since, timeout, ctx.now):
        since = "admission" if restarted_at is None else "the restart" if fixed else _FELL_BELOW_FLOOR
        return gang_timeout(ctx, plan.keep, placed, since, refused)
    draft = _running(ctx, plan, changes, restarts, _ready(ctx.ours, slots), faults)
    draft.last_failure_time = rfc3339(ctx.now) if new_failure else None
    new_world = plan.restart is not None and draft.desired == plan.target
    # Each restart of every worker of a fixed group is a new attempt: workers of the old one are stopped
    # (durably: again after a lost write) and none of the new one starts beside them.
    attempt = gang.attempt + 1 if fixed else gang.attempt
    if group_failed or lost:
        _restart_group(ctx, draft, faults, lost)
        # The new group is a gang of its own, to be placed within the timeout once its backoff is over.
        waiting_since = ctx.now + timedelta(seconds=restart_backoff(restarts) if group_failed else 0)
        gang = GangStatus(retries=gang.retries, since=rfc3339(waiting_since), attempt=attempt)
    elif new_world:
        # The old world goes now: the new one is a gang of its own, to be placed within the timeout from now.
        gang = GangStatus(retries=gang.retries, since=rfc3339(ctx.now), attempt=attempt)
        waiting_since = ctx.now
    elif gang.started:
        gang = _with_growth_hold(ctx, draft, gang, given_up, held_until)
    draft.gang = _with_room(ctx, gang)
    _wait_for_old_workers(ctx, draft, plan.target, fixed)
    _wait_for_room(ctx, draft)
    # A new group (a new world size, or after a failure) runs every worker afresh: what succeeded in the
    # old one does not count for it.
    draft.succeeded_workers = frozenset() if new_world or group_failed or lost else done
    if not gang.started:  # wake up when the gang timeout expires
        draft.requeue_after.append((waiting_since + timedelta(seconds=timeout) - ctx.now).total_seconds())
    return draft


def _growth_plan(ctx: JobContext, grant: int, fixed: bool) -> tuple[_Plan, tuple[str, ...], datetime | None]:
    """The plan for `grant`, the grown workers given up now (_growth_given_up) and when the hold on growth
    that follows ends (None: no hold)."""
    held_until = None if fixed else _growth_hold(ctx)
    granted = grant
    if held_until is not None:
        # Growth given up lately: the grant the pass has not lowered yet (or raised again) does not create the
        # worker again before the hold ends; a floor raised meanwhile is no growth.
        grant = min(grant, max(int(ctx.status.get("desiredReplicas") or grant), ctx.bounds.floor))
    plan = _plan(ctx, grant)
    given_up = _growth_given_up(ctx, plan, fixed)
    capped = _without_growth(ctx, plan, given_up) if given_up else None
    if capped is None or capped.restart is not None or capped.hold is not None:
        # The hold keeps the job below its replicas while the pass grants at least the count kept at the
        # give-up (status.desiredReplicas); a grant below it is a shrink by the pass, its own to explain.
        kept_at_give_up = int(ctx.status.get("desiredReplicas") or granted)
        held = held_until is not None and plan.keep < ctx.bounds.desired and granted >= kept_at_give_up
        if held and held_until is not None and plan.restart is None and plan.hold is None:
            timeout = ctx.spec.scheduling.gang_timeout_seconds
            why = (
                f"a worker above the floor found no node or was refused by the API server within {timeout} s "
                f"(spec.scheduling.gangTimeoutSeconds), so the job runs the {plan.keep} placed and grows "
                f"again from {rfc3339(held_until)}"
            )
            plan = replace(plan, capped=why)
        return plan, (), held_until
    return capped, given_up, ctx.now + timedelta(seconds=ctx.spec.scheduling.gang_timeout_seconds)


def _with_growth_hold(
    ctx: JobContext,
    draft: Draft,
    gang: GangStatus,
    given_up: Sequence[str],
    held_until: datetime | None,
) -> GangStatus:
    """A started gang's `since` is when its growth was last given up (gang.growth_held_until), kept while the
    hold lasts, with a wake-up at its end to ask for the growth again; cleared after."""
    if given_up:
        draft.events.append(_given_up_event(ctx, given_up, draft.desired or 0))
    since = ctx.now if given_up else _growth_held_since(ctx) if held_until is not None else None
    if since is not None and held_until is not None:
        draft.requeue_after.append((held_until - ctx.now).total_seconds())
    return gang.model_copy(update={"since": rfc3339(since) if since is not None else None})


def _growth_hold(ctx: JobContext) -> datetime | None:
    """When the hold on growth after an unplaced grown worker was given up ends (None: no hold now)."""
    until = growth_held_until(previous_gang(ctx.status), ctx.spec.scheduling.gang_timeout_seconds)
    return until if until is not None and ctx.now < until else None


def _growth_held_since(ctx: JobContext) -> datetime | None:
    """When the job's growth was last given up (status.gang.since of a started gang)."""
    gang = previous_gang(ctx.status)
    return parse_rfc3339(gang.since) if gang.started else None


def _growth_given_up(ctx: JobContext, plan: _Plan, fixed: bool) -> tuple[str, ...]:
    """The names of an elastic group's workers above its floor that were never placed on a node within
    spec.scheduling.gangTimeoutSeconds of their creation: kube-scheduler cannot bind them for a reason the
    pass does not count (CPU, memory, a pod limit, a taint it does not see); or that have no pod, their
    creates refused by the API server for as long (JobObservation.refused_creates: a quota, a policy). The
    floor is placed, so the gang timeout no longer applies, and the pass would keep their places reserved
    for ever, from every other job too. Worker 0 (the rendezvous host) is never one; nor is any while a
    restart, a hold or a removal is under way, or before the gang started: those are the floor's gang
    (_gang_now)."""
    if fixed or plan.restart or plan.hold or plan.removal is not None:
        return ()
    if not previous_gang(ctx.status).started:
        return ()
    slots = _slots(ctx, plan.keep)
    mine = [pod for pod in ctx.live if pod.index in slots]
    placed = sum(1 for pod in mine if pod.node_name)
    if placed < max(ctx.bounds.floor, _running_group_floor(ctx, ctx.bounds.floor)):
        return ()
    timeout = timedelta(seconds=ctx.spec.scheduling.gang_timeout_seconds)
    unplaced = tuple(
        pod.name
        for pod in sorted(mine, key=lambda pod: pod.index or 0, reverse=True)
        if not pod.node_name
        and pod.index
        and (created := parse_rfc3339(pod.created)) is not None
        and ctx.now >= created + timeout
    )
    # A refused worker has no pod to be unplaced: its refusals in a row count from the first.
    refusals, missing = ctx.observation.refused_creates, slots - {pod.index for pod in ctx.live}
    refused = (
        worker_name(ctx.observation.job.name, index) for index in sorted(missing, reverse=True) if index
    )
    return unplaced + tuple(
        name for name in refused if name in refusals and ctx.now >= refusals[name][0] + timeout
    )


def _without_growth(ctx: JobContext, plan: _Plan, given_up: Sequence[str]) -> _Plan:
    """The plan at the workers placed: every unplaced one goes (none ran, so no checkpoint is asked of the
    others for them), and the grant drops to what runs until the pass grows the job again."""
    slots = _slots(ctx, plan.keep)
    placed = [pod for pod in ctx.live if pod.index in slots and pod.node_name]
    capped = _plan(ctx, min(plan.keep, len(placed)))
    unplaced = {pod.name for pod in ctx.live if not pod.node_name}
    removal = capped.removal
    if removal is not None:
        doomed = tuple(name for name in removal.doomed if name not in unplaced)
        removal = replace(removal, doomed=doomed) if doomed else None
    timeout = ctx.spec.scheduling.gang_timeout_seconds
    never_placed, refused = _given_up_apart(ctx, given_up)
    found = [f"{_workers(never_placed)} found no node within {timeout} s"] if never_placed else []
    if refused:
        held = _held_name(ctx.observation.refused_creates[refused[0]][1])
        found.append(
            f"{_workers(refused)} could not be created for {timeout} s (a name another object holds)"
            if held
            else f"the API server refused {_workers(refused)} for {timeout} s"
        )
    why = (
        f"{' and '.join(found)} (spec.scheduling.gangTimeoutSeconds), so the job runs the {capped.keep} "
        f"placed and grows again from {rfc3339(ctx.now + timedelta(seconds=timeout))}"
    )
    return replace(capped, removal=removal, capped=why)


def _given_up_apart(ctx: JobContext, given_up: Sequence[str]) -> tuple[list[str], list[str]]:
    """The given-up workers whose pods found no node, and those the API server refused (no pod)."""
    pods = {pod.name for pod in ctx.live}
    return [name for name in given_up if name in pods], [name for name in given_up if name not in pods]


def _given_up_event(ctx: JobContext, given_up: Sequence[str], keep: int) -> JobEvent:
    timeout = ctx.spec.scheduling.gang_timeout_seconds
    unplaced, refused = _given_up_apart(ctx, given_up)
    told = []
    if unplaced:
        who = f"worker {unplaced[0]} was" if len(unplaced) == 1 else f"workers {', '.join(unplaced)} were"
        told.append(
            f"{who} not placed on a node within {timeout} s of its creation (spec.scheduling."
            f"gangTimeoutSeconds; CPU, memory, a pod limit or a taint kubefit does not count can keep it off "
            f"the node): deleted, it never ran"
        )
    if refused:
        first = ctx.observation.refused_creates[refused[0]][1]
        if _held_name(first):
            told.append(f"{_workers(refused)} could not be created for {timeout} s: {first}")
        else:
            told.append(f"the API server refused {_workers(refused)} for {timeout} s: {first}")
    message = f"{'; '.join(told)}; the job runs {keep} workers and grows again after {timeout} s"
    return JobEvent("Normal", EventReason.CAPACITY_CHANGED, message)


def _wait_for_old_workers(ctx: JobContext, draft: Draft, target: int, fixed: bool) -> None:
    """No new worker starts beside a terminating one of the old group: it could still host the rendezvous
    (for a fixed group, other attempts' workers are held back by admitted: _stop_other_attempts)."""
    if fixed:
        # Workers of this attempt stopped whole, the attempt kept (a suspend, a preemption, a gang
        # timeout), or made before attempts were numbered (an operator upgrade): the group starts again
        # only once they are gone, its old worker 0 may still host the rendezvous.
        _hold_for_old_group(ctx, draft, [pod for pod in ctx.ours if pod.terminating])
    else:
        # A range restart's new group: its old worker 0 may still host the c10d store the new agents
        # would join. A scale-up that keeps the group has no old one, and waits for nothing. Neither does
        # any new worker start while the store's host, worker 0, is going with none to take its place
        # (back from a suspend or a preemption within the node range, or worker 0 replaced).
        old_group = _restarted_group(ctx, target)
        if ctx.spec.framework == "pytorch" and not any(
            pod.index == 0 and not pod.terminating for pod in ctx.ours
        ):
            old_group += [
                pod for pod in ctx.ours if pod.index == 0 and pod.terminating and pod not in old_group
            ]
        _hold_for_old_group(ctx, draft, old_group)


def _new_failure(ctx: JobContext, faults: Sequence[WorkerPod]) -> bool:
    """Whether an elastic job's failed workers are a new failure, one restart however many fail together.
    torchrun's agents restart their group as one, and an agent that gives up closes the rendezvous (and
    worker 0's takes the store with it), so the others fail after it, up to the collectives' timeout
    later. A worker created before the last counted failure and failing within FAILURE_BURST_SECONDS of
    it is part of that failure; its replacement failing is a new one."""
    last = parse_rfc3339(ctx.status.get("lastFailureTime"))
    for pod in faults:
        created = parse_rfc3339(pod.created)
        # Both to the second: a worker created in the second of the failure was there before it (its
        # replacement comes a backoff later, 5 s at least).
        if last is None or created is None or created > last:
            return True
        if ctx.now - last > timedelta(seconds=FAILURE_BURST_SECONDS):
            return True
    return False


def _faults_and_losses(
    ctx: JobContext, plan: _Plan, changes: WorkerChanges, slots: frozenset[int], fixed: bool
) -> tuple[tuple[WorkerPod, ...], tuple[str, ...]]:
    """The failed workers that count as restarts, and (a fixed group's) the workers lost without a fault
    of theirs: a failed worker that Kubernetes disrupted (DisruptionTarget) is replaced, but counts like
    one whose pod went."""
    faults = tuple(pod for pod in changes.replace if not pod.disrupted)
    if not fixed or faults:
        return faults, ()
    return faults, tuple(pod.name for pod in changes.replace) or _lost(ctx, plan, slots)


def _lost(ctx: JobContext, plan: _Plan, slots: frozenset[int]) -> tuple[str, ...]:
    """Names of the workers a running fixed group lost (_gone_from_group)."""
    gone = _gone_from_group(ctx, plan, slots)
    return tuple(worker_name(ctx.observation.job.name, index) for index in sorted(gone))


def _gone_from_group(ctx: JobContext, plan: _Plan, slots: frozenset[int]) -> frozenset[int]:
    """The workers of a running fixed group that are gone: its gang had started (every worker placed at
    once) and all of them ran at once (status.gang.running; for a status written before that field, the
    last status saw all of them running or succeeded), no restart or removal of this
    decision's own is under way, and now one of them is gone or being deleted by someone else (this
    decision path deletes none of a fixed group's running workers otherwise). Workers not created yet, or
    created and not all running yet, are never taken for gone ones."""
    if plan.restart or plan.removal is not None or plan.keep <= 0:
        return frozenset()
    gang = previous_gang(ctx.status)
    if not gang.started:
        # A group restarted, or not placed whole yet: the status's counts may be an older group's.
        return frozenset()
    if gang.running:
        return _missing_from(ctx, slots)
    finished = len(parse_index_ranges(ctx.status.get("succeededWorkers")))
    # A worker whose node stopped answering (its kubelet died) is not ready from then on, so the status
    # written meanwhile counts it out: it was running when its node was lost, not a worker never started.
    stranded = sum(1 for pod in ctx.ours if pod.node_lost and pod.phase == POD_RUNNING)
    if int(ctx.status.get("readyReplicas") or 0) + finished + stranded < plan.keep:
        return frozenset()
    return _missing_from(ctx, slots)


def _missing_from(ctx: JobContext, slots: frozenset[int]) -> frozenset[int]:
    present = {pod.index for pod in ctx.ours if not pod.terminating}
    return slots - present


def _done_without_pods(ctx: JobContext, plan: _Plan, slots: frozenset[int], fixed: bool) -> frozenset[int]:
    """Workers done whose pods are gone: those recorded as succeeded (status.succeededWorkers), and a fixed
    group's gone or going (_gone_from_group) once its training is done (_training_done: worker 0 succeeded,
    framework pytorch or jax): every rank is past the last collective and rank 0 past its own work, so a
    pod that went before its success was seen (its node removed, pods cleaned up while the operator was
    down) is done, not lost. Before that a worker gone is lost, as a failed one would be the job's failure:
    another rank's success says nothing of worker 0's save, nor anything at all with framework none."""
    recorded = _gone_after_success(ctx)
    if not (fixed and _training_done(ctx)):
        return recorded
    return recorded | _gone_from_group(ctx, plan, slots)


def _finishing(ctx: JobContext) -> bool:
    """Whether the running group's training has ended: one of its workers succeeded. torchrun's elastic
    agents all exit once one has, and a fixed group's ranks (pytorch or jax) run every collective together,
    so one done means all are past the last. Not with framework none: the job organises itself, and one
    process finishing says nothing of the others."""
    return ctx.spec.framework != "none" and bool(_succeeded_in_group(ctx))


def _training_done(ctx: JobContext) -> bool:
    """Whether the group's training is done, so that a worker failing now is no failure of it (_nothing_new).
    An elastic pytorch group's is once any worker succeeded (_finishing: torchrun's agents all exit). A
    fixed group's only once worker 0 succeeded, as Kubeflow's PyTorchJob succeeds with its master: the
    other ranks are past the last collective when one succeeds, but rank 0 commonly saves or uploads after
    it, and its failure then is the job's."""
    if not _finishing(ctx):
        return False
    return 0 in _succeeded_in_group(ctx) if fixed_world(ctx.spec) else True


def _nothing_new(changes: WorkerChanges) -> WorkerChanges:
    """A group whose training ended (_finishing; an elastic group's first agent to go closes torchrun's
    rendezvous) takes no new worker: one created, as a scale-up or a replacement, would only find the
    rendezvous closed, or a fixed group that no longer trains. A worker failing now is no failure of the
    training: it is neither counted nor replaced (nor its group restarted), and its pod stays for its logs."""
    return replace(changes, create=(), replace=())


def _restart_group(
    ctx: JobContext, draft: Draft, failures: Sequence[WorkerPod], lost: Sequence[str] = ()
) -> None:
    """A worker of a fixed group failed or is gone: every other worker goes too (finished ones included: the
    new group runs every index afresh), and all are created again once the old ones are gone (after the
    restart backoff for a failure)."""
    replaced = {pod.name for pod in draft.replace}
    others = [
        pod for pod in ctx.ours if not pod.terminating and pod.name not in replaced and pod.index is not None
    ]
    draft.delete = tuple(dict.fromkeys((*draft.delete, *highest_first(others))))
    draft.create, draft.worker_set = (), None
    draft.checkpoint = None  # a removal waiting for its checkpoint is moot: every worker goes now
    limit = ctx.spec.run_policy.max_restarts
    restarts = restarts_of(ctx.status) if draft.restarts is None else draft.restarts
    if failures:
        names = ", ".join(pod.name for pod in failures)
        where = ", ".join(sorted({pod.node_name for pod in failures if pod.node_name}))
        who = f"worker {names}" if len(failures) == 1 else f"workers {names}"
        message = (
            f"{who} failed{f' on {where}' if where else ''}{_causes(failures)}: the group cannot run without "
            f"it, so every worker is stopped and started again in {restart_backoff(restarts):.0f} s "
            f"(restart {restarts} of at most {limit}){_memory_hint(ctx, failures)}"
        )
        reason = EventReason.WORKER_FAILED
    else:
        who = f"worker {lost[0]} is" if len(lost) == 1 else f"workers {', '.join(lost)} are"
        message = (
            f"{who} gone (a node removed, a pod deleted or evicted): the group cannot run without it, so every "
            "worker is stopped and started again (not counted as a restart)"
        )
        reason = EventReason.WORKER_LOST
    # A checkpoint request this decision would have opened is not: the workers go now, unasked.
    draft.checkpoint_requests = None
    dropped = (EventReason.WORKER_FAILED, EventReason.WORKER_LOST, EventReason.CHECKPOINT_REQUESTED)
    draft.events = [event for event in draft.events if event.reason not in dropped]
    draft.events.append(JobEvent("Warning", reason, message))
    draft.updates = [update for update in draft.updates if update.type != ConditionType.READY]
    draft.updates.append(ConditionUpdate(ConditionType.READY, "False", Reason.RESTARTING, message))
    _starting_again(ctx, draft)
    draft.message = message


def _starting_again(ctx: JobContext, draft: Draft) -> None:
    """A group restarted after a worker of it succeeded (worker 0 failed or went before its own success)
    starts again: Running says WorkersStarting, not TrainingEnded (_running_condition)."""
    desired = draft.desired or 0
    counts = f"{_ready(ctx.ours, frozenset(range(desired)))}/{desired} workers running"
    starting = ConditionUpdate(ConditionType.RUNNING, "False", Reason.WORKERS_STARTING, counts)
    draft.updates = [
        starting if (update.type, update.reason) == (ConditionType.RUNNING, Reason.TRAINING_ENDED) else update
        for update in draft.updates
    ]


_FELL_BELOW_FLOOR = "the restart or the loss that left it below its minimum"
# A gang whose worker the API server refused at tries this far apart gives its grant back at once
# (_refused_gang): the reconciler's first retry of a failed pass comes 5 s after it (BACKOFF_FIRST).
REFUSED_FOR_SECONDS = 5
# While a queued job's refusal holds (it takes no room), a dry-run create of its first worker asks at most
# about this often whether the API server still refuses it (controller/refusals.py): one request, no write.
REFUSAL_TRY_SECONDS = 30.0
# How long after a counted failure the workers of the group it struck may still fail from it: torch's
# default collective timeout for NCCL process groups (10 minutes), after which a rank left waiting on a
# peer that went fails too.
FAILURE_BURST_SECONDS = 600


def _gang_now(ctx: JobContext, plan: _Plan, placed: int, fixed: bool) -> GangStatus:
    """The gang's state with `placed` of its workers on nodes now.

    A gang has started once its workers are all placed at once; an elastic pytorch job's, once its floor
    is: it trains on those, and a worker that cannot be placed must not cost it the workers that run. A
    fixed group (elastic jax included: JAX_NUM_PROCESSES is its whole count) trains only when all are."""
    gang = previous_gang(ctx.status)
    started_at = _gang_size(ctx, plan, fixed)
    was_started = gang.started
    gang = gang.model_copy(update={"started": gang.started or placed >= started_at})
    if not fixed and plan.restart is None:
        # Lost: fewer placed than the running group re-forms with. Once counting, the clock waits out a
        # restart backoff.
        lost = was_started and placed < started_at
        if lost or (not gang.started and gang.since is not None and placed < started_at):
            gang = _regathering(ctx, gang)
    if not gang.started and gang.since is not None:
        gang = _timed_from_old_workers_gone(gang, ctx.ours)
    return gang


def _ran_whole(
    ctx: JobContext, plan: _Plan, gang: GangStatus, slots: frozenset[int], fixed: bool
) -> GangStatus:
    """A fixed group's gang, with `running` set once every worker ran at once: from then on one gone restarts
    the group (_gone_from_group), whatever the counts of a later status say (a node lost first counts its
    worker out of readyReplicas)."""
    if not fixed or not gang.started or gang.running:
        return gang
    succeeded = _succeeded_in_group(ctx)
    ran = _ready(ctx.ours, slots - succeeded) + len(succeeded & slots)
    return gang.model_copy(update={"running": ran >= plan.keep})


def _gang_size(ctx: JobContext, plan: _Plan, fixed: bool) -> int:
    """How many workers placed at once start the gang (_gang_now)."""
    if fixed:
        return plan.keep
    if plan.restart is None:
        # The running group re-forms with its own floor (_running_group_floor), not the bounds' now.
        return min(plan.keep, _running_group_floor(ctx, ctx.bounds.floor))
    return min(plan.keep, ctx.bounds.floor)


def _refused_gang(ctx: JobContext, plan: _Plan, gang: GangStatus, fixed: bool) -> tuple[str | None, bool]:
    """Why a gang that has not started cannot: the API server refused the create of workers it needs (Pod
    Security Admission, an admission webhook, a quota: JobObservation.refused_creates), each at its last
    try; and whether it gives its grant back at once, as a gang timeout does: refused again at a try
    REFUSED_FOR_SECONDS or more after the first, and after the workers of jobs that made room for it were
    last seen gone (a refusal that passes sooner, a quota freed by pods just ended, costs nothing). Waiting for the gang timeout held devices for a gang that may never start, and
    preempted other jobs for it again at each admission. (None, False): not refused, or it can still start."""
    refusals, last = ctx.observation.refused_creates, ctx.observation.refusal
    if gang.started or plan.restart is not None or not refusals or last is None:
        return None, False
    slots = _slots(ctx, plan.keep)
    job, missing = ctx.observation.job.name, sorted(slots - {pod.index for pod in ctx.live})
    refused = [name for name in (worker_name(job, index) for index in missing) if name in refusals]
    if not refused or len(slots) - len(refused) >= _gang_size(ctx, plan, fixed):
        return None, False
    first = min(refusals[name][0] for name in refused)
    message = refusals[refused[0]][1]
    if _held_name(message):
        why = f"{_workers(refused)} cannot be created: {message}"
    else:
        why = f"the API server refused {_workers(refused)}: {message}"
    if ctx.observation.places_held:
        # Workers of jobs shrunk or preempted for it are still leaving: a quota still charges them (a job
        # of its namespace preempted to make quota room), so a refusal now is expected and passes once they
        # are gone (and the quota controller has counted them off). Given back now, it would have stopped
        # them for nothing, and the job preempted for it could take the quota back.
        return why, False
    freed = _room_freed_at(ctx, gang)
    since = max(first, freed) if freed is not None else first
    return why, last[1] >= since + timedelta(seconds=REFUSED_FOR_SECONDS)


def _held_name(message: str) -> bool:
    """Whether a refusal is a name the job needs that another object holds (builders/naming.py)."""
    return HELD_POD.search(message) is not None or HELD_SERVICE.search(message) is not None


def _until_created(refused: str) -> str:
    """What ends a refusal that gave the gang's grant back (controller/refusals.py)."""
    if HELD_SERVICE.search(refused):
        return f"until its Service can be created (tried at each reconcile, at least every {REFUSAL_TRY_SECONDS:.0f} s)"
    if HELD_POD.search(refused):
        return f"until that name is free (a dry-run create of that worker tries it every {REFUSAL_TRY_SECONDS:.0f} s)"
    return (
        f"until a create of its workers goes through, or a dry-run create of its first worker does (tried "
        f"every {REFUSAL_TRY_SECONDS:.0f} s; not where some of its workers were created: a quota for part "
        f"of the gang)"
    )


def _workers(names: Sequence[str]) -> str:
    return f"{'worker' if len(names) == 1 else 'workers'} {', '.join(names)}"


def _running_group_floor(ctx: JobContext, default: int) -> int:
    """The fewest workers the torchrun group re-forms with: the lowest floor of its running workers' node
    ranges (PET_NNODES), whatever the bounds say now. Below a minimum raised since they started they still
    train; a minimum lowered since does not let them train on fewer (a replacement made with the new range
    does not lower it before it runs). With none running: the lowest of `default` and the others' floors."""
    running = [int(pod.nnodes.split(":")[0]) for pod in ctx.running if pod.nnodes is not None]
    if running:
        return min(running)
    floors = [int(pod.nnodes.split(":")[0]) for pod in ctx.live if pod.nnodes is not None]
    return min(floors, default=default)


def _regathering(ctx: JobContext, gang: GangStatus) -> GangStatus:
    """An elastic pytorch job whose placed workers fell below its minimum after it started (a node lost, a
    worker failed) trains on none of them: torchrun re-forms only with its minimum of nodes. Its gang clock
    runs again, from when its replacements may be made (after the restart backoff), so that the gang timeout
    releases its devices if they find no place, as Kueue's waitForPodsReady recoveryTimeout requeues a
    workload that lost its pods; before, it held them for ever."""
    backoff = restart_backoff_left(ctx.status, restarts_of(ctx.status), ctx.now)
    since = ctx.now + timedelta(seconds=backoff)
    counting = parse_rfc3339(gang.since) if not gang.started else None
    if counting is not None and (backoff <= 0 or counting >= since):
        return gang  # the clock runs from when it fell below, or from the end of a backoff since
    return GangStatus(retries=gang.retries, since=rfc3339(since), attempt=gang.attempt)


def _gang_clock_start(ctx: JobContext, gang: GangStatus, since: datetime) -> datetime:
    """When the gang's timeout starts counting: `since`, but not while places reserved for its workers are
    still held by another job's workers leaving for it (shrunk or preempted, saving within their checkpoint
    grace, which may be longer than this job's gang timeout), and not before they were given up. Known to
    this process, or as the status recorded them (gang.roomFrom, gang.roomFreedAt) for an operator restarted
    since (controller/scheduler.py takes roomFrom back with the job)."""
    if gang.started:
        return since
    if ctx.observation.places_held:
        return ctx.now
    freed = _room_freed_at(ctx, gang)
    return max(since, freed) if freed is not None else since


def _room_freed_at(ctx: JobContext, gang: GangStatus) -> datetime | None:
    """When the workers leaving for the gang were last seen gone: by this process, or as its status recorded
    (gang.roomFreedAt, read again by an operator restarted since)."""
    recorded = parse_rfc3339(gang.room_freed_at)
    if recorded is not None and recorded > ctx.now + timedelta(seconds=60):
        recorded = None  # ahead (a status written by hand): held to, it would hold the gang until then
    seen = [at for at in (ctx.observation.places_freed_at, recorded) if at is not None]
    return max(seen, default=None)


def _with_room(ctx: JobContext, gang: GangStatus) -> GangStatus:
    """A gang not started yet, with the jobs still leaving for it (roomFrom) and when they were seen gone
    (roomFreedAt) recorded: an operator restarted meanwhile keeps its clock as this one does. A started
    gang records neither."""
    held_by = (
        ctx.observation.places_held_by if ctx.observation.places_held and not gang.started else frozenset()
    )
    freed = _room_freed_at(ctx, gang) if not gang.started else None  # a started gang waits for no one
    recorded = {
        "room_from": room_entries(held_by),
        "room_freed_at": rfc3339(freed) if freed is not None else None,
    }
    # Only what changed: a field set to None would be written out as null.
    changed = {field: value for field, value in recorded.items() if getattr(gang, field) != value}
    return gang.model_copy(update=changed) if changed else gang


def _timed_from_old_workers_gone(gang: GangStatus, ours: Sequence[WorkerPod]) -> GangStatus:
    """A restart's new workers take the old ones' names: none can be made while an old one is still going
    (saving on SIGTERM, up to its termination grace). The new gang's clock starts when the last one's grace
    ends (its deletionTimestamp), a fixed time: an old worker stuck terminating (its node unreachable)
    does not hold the clock back for ever."""
    since = parse_rfc3339(gang.since)
    ends = [parse_rfc3339(pod.deletion_timestamp) for pod in ours if pod.terminating]
    latest = max((end for end in ends if end is not None), default=None)
    if since is None or latest is None or latest <= since:
        return gang
    return gang.model_copy(update={"since": rfc3339(latest)})


def _running(  # noqa: PLR0913 - the parts of the decision worked out before
    ctx: JobContext,
    plan: _Plan,
    changes: WorkerChanges,
    restarts: int,
    ready: int,
    faults: Sequence[WorkerPod],
) -> Draft:
    shake = handshake(ctx, plan.removal, ask=not never_formed(ctx))
    doomed = plan.removal.doomed if plan.removal else ()
    delete = _deleted_now(ctx, plan, changes, doomed, shake.proceed)
    backoff = restart_backoff_left(ctx.status, restarts_of(ctx.status), ctx.now)
    create = () if backoff > 0 or plan.restart else changes.create
    desired = plan.target if plan.restart and shake.proceed else plan.keep
    start_time = ctx.status.get("startTime") or (rfc3339(ctx.now) if ready >= plan.keep else None)
    draft = Draft(
        phase=_phase(ctx, plan.keep, ready, start_time, restarting=plan.restart is not None),
        updates=[
            sized(ctx.sizing),
            _admitted(ctx, plan),
            *_readiness(ctx, ready, plan.keep, changes.held, _leaving_note(ctx, plan, doomed, delete)),
        ],
        create=create,
        worker_set=worker_set(ctx, plan.keep, plan.floor) if create else None,
        delete=delete,
        replace=changes.replace,
        restarts=restarts,
        desired=desired,
        start_time=start_time,
    )
    draft.updates.extend(resumed(ctx))
    if plan.restart:
        draft.updates.append(ConditionUpdate(ConditionType.READY, "False", Reason.RESTARTING, plan.restart))
    if plan.removal is not None:
        apply_handshake(draft, shake, plan.removal)
    replaced_at = _backoff_end(ctx)
    if backoff > 0:
        draft.requeue_after.append(backoff)
        if not plan.restart and ready < plan.keep:
            waiting = f"{ready}/{plan.keep} workers running; replacing failed workers at {replaced_at}"
            draft.updates.append(
                ConditionUpdate(ConditionType.READY, "False", Reason.RESTART_BACKOFF, waiting)
            )
    counted = restarts > restarts_of(ctx.status)
    draft.events.extend(_restart_events(ctx, faults, restarts, counted))
    draft.events.extend(_removed_failure_events(ctx, delete, plan.keep))
    draft.events.extend(_disruption_events(changes.replace))
    note = removal_progress(shake, plan.removal) if plan.removal is not None else None
    draft.message = _message(ctx, plan, shake_note=note)
    if backoff > 0 and draft.message is None:
        draft.message = f"replacing failed workers at {replaced_at} (restart backoff)"
    return draft


def _deleted_now(
    ctx: JobContext, plan: _Plan, changes: WorkerChanges, doomed: Sequence[str], proceed: bool
) -> tuple[str, ...]:
    """The workers deleted in this pass: the changes' own, and a removal's once its handshake lets it
    proceed (before, only those whose trainer never started)."""
    delete = tuple(name for name in changes.delete if name not in doomed) + (
        tuple(doomed) if proceed else _not_started(ctx, doomed) if not plan.restart else ()
    )
    if plan.restart and proceed:
        # The old group's succeeded workers go too: the new group runs every index afresh, and a finished
        # pod left in place would keep its index from being created (or be recorded as done again).
        delete += tuple(
            pod.name
            for pod in ctx.ours
            if pod.phase == POD_SUCCEEDED and not pod.terminating and pod.name not in delete
        )
    return delete


def _backoff_end(ctx: JobContext) -> str | None:
    """When the restart backoff after the last failure ends: a time, not the seconds left, which would
    rewrite the status on every reconcile."""
    failed_at = parse_rfc3339(ctx.status.get("lastFailureTime"))
    if failed_at is None:
        return None
    return rfc3339(failed_at + timedelta(seconds=restart_backoff(restarts_of(ctx.status))))


def _plan(ctx: JobContext, grant: int) -> _Plan:
    bounds = ctx.bounds
    finishing = _finishing_plan(ctx)
    if finishing is not None:
        return finishing
    if ctx.spec.elastic.enabled:
        held = _held_below_floor(ctx, grant)
        if held is not None:
            return held
        # A grant between floor and desired need not split into whole TP x PP groups: run the whole ones.
        target = bounds.whole_groups(min(max(grant, bounds.floor), bounds.desired))
        if ctx.spec.framework == "jax":
            # jax.distributed.initialize takes the process count once (JAX_NUM_PROCESSES): workers cannot
            # join or leave a running group, so a new count restarts them all.
            why = "framework jax fixes it when the workers start"
            return _restart_plan(ctx, target, why) or _Plan(
                target, target, _surplus(ctx, target, Reason.SCALED_DOWN)
            )
        return _range_restart_plan(ctx, target) or _Plan(
            target, target, _surplus(ctx, target, _shrink_reason(ctx))
        )
    world = _world(ctx)
    if ctx.live and world and grant < bounds.desired:
        hold = (
            f"spec.workers.replicas asks for {bounds.desired} workers, all at once; the {world} running "
            f"keep their world size until the scheduling pass grants {bounds.desired}"
        )
        return _Plan(world, world, _surplus(ctx, world, Reason.SCALED_DOWN), hold=hold)
    why = "spec.workers.replicas; the job is not elastic"
    restart = _restart_plan(ctx, bounds.desired, why)
    return restart or _Plan(bounds.desired, bounds.desired, _surplus(ctx, bounds.desired, Reason.SCALED_DOWN))


def _finishing_plan(ctx: JobContext) -> _Plan | None:
    """A group whose training has ended (_finishing) keeps the workers it has until they finish. A new
    count (spec.workers.replicas, the bounds) restarted it, deleting the finished workers and running the
    whole training again, or scaled a group that no longer trains: suspend and preemption wait for the end
    the same way (training_ended)."""
    if not _finishing(ctx):
        return None
    world = _world(ctx)
    if not fixed_world(ctx.spec):
        # Every worker there (worker 0's slot is always kept) and every one done whose pod went.
        present = {pod.index for pod in ctx.ours if pod.index is not None and not pod.terminating}
        world = max(world, len({0, *present, *_gone_after_success(ctx)}))
    if not world:
        return None
    hold = (
        f"the training has ended (a worker succeeded): its {world} workers finish as they are, neither "
        f"restarted nor scaled to the {ctx.bounds.desired} the spec asks for"
    )
    return _Plan(world, world, None, hold=hold if world != ctx.bounds.desired else None)


def _held_below_floor(ctx: JobContext, grant: int) -> _Plan | None:
    """An elastic job whose minimum rose above the grant its running workers have (the pass grants a raised
    minimum only once it fits whole, admission._reserve_admitted) keeps running at the grant, if the running
    group can: torchrun's node range of every worker holds it, or jax's process count is it."""
    floor = ctx.bounds.floor
    if not (ctx.live and 0 < grant < floor):
        return None
    if ctx.spec.framework == "jax":
        goes_on = _world(ctx) == grant
    else:
        goes_on = all(pod.nnodes is None or _holds_count(pod.nnodes, grant) for pod in ctx.live)
    if not goes_on:
        return None
    hold = (
        f"the workers' minimum is {floor}; the {grant} running keep running until the scheduling pass "
        f"grants {floor}"
    )
    # A replacement joins the running group: with the raised floor its range would not hold the grant,
    # ending the hold and scaling past the grant.
    group_floor = min(_running_group_floor(ctx, grant), grant)
    return _Plan(grant, grant, _surplus(ctx, grant, Reason.SCALED_DOWN), hold=hold, floor=group_floor)


def _world(ctx: JobContext) -> int:
    """The worker count the running workers were started with: their world-size annotation, else (made
    before it existed) status.desiredReplicas. status.desiredReplicas takes the new size as soon as a
    restart deletes the old workers; one whose deletion failed, or did not happen before the operator
    stopped, still has the old size, and is not taken for the new world: it makes the size differ again."""
    recorded = int(ctx.status.get("desiredReplicas") or 0)
    stamped = {pod.world_size for pod in ctx.live if pod.world_size is not None}
    other = sorted(stamped - {recorded})
    return other[-1] if other else recorded


def never_formed(ctx: JobContext) -> bool:
    """A fixed group of pytorch or jax workers that has not run whole in this attempt (status.gang.running
    false) and does not now: its collectives never formed, so it holds no training state, and stopping its
    workers asks for no checkpoint (api.md, checkpointGracePeriodSeconds: workers that never ran are
    removed without asking). Waiting out the grace kept the unplaced workers' devices reserved, and could
    outlast the gang timeout. framework none's workers organise themselves; a status without
    gang.running (an older operator's) says nothing: both are asked as before. A request already open
    keeps its grace: the workers it asked may be saving (a suspend writes gang.running false with it)."""
    if not fixed_world(ctx.spec) or ctx.spec.framework == "none" or ctx.status.get("checkpoint"):
        return False
    gang = ctx.status.get("gang")
    if not isinstance(gang, Mapping) or gang.get("running") is not False:
        return False
    return len(ctx.running) < _world(ctx)


def _restart_plan(ctx: JobContext, target: int, why: str) -> _Plan | None:
    """For workers whose group size is fixed when they start: all of them stop (after the checkpoint
    handshake) and `target` start again, if the running group's size is not `target`."""
    world, live = _world(ctx), ctx.live
    if not (live and world and world != target):
        return None
    restart = (
        f"the world size changes from {world} to {target} workers ({why}): every worker is stopped and "
        "started again with the new size"
    )
    # The request names the count the workers start again with: a restarted operator takes the job back
    # at it (controller/stored_status.checkpoint_target), where 0 would read as a job taken off the cluster.
    return _Plan(target, world, Removal(Reason.RESTARTING, target, highest_first(live)), restart)


def _range_restart_plan(ctx: JobContext, target: int) -> _Plan | None:
    """torchrun reads its node range (PET_NNODES, floor:ceiling) once, when a worker starts. The bounds
    follow replicas when minReplicas or maxReplicas is not given, and the sizing's minimum may move: a
    worker whose range does not hold the new count could not re-form with the others (below its old
    floor it waits for peers that never come; above its old ceiling it does not take the new ones). All
    of them restart with the new range. A count inside every running worker's range needs nothing."""
    if ctx.spec.framework != "pytorch":
        return None
    wanted = f"{ctx.bounds.floor}:{ctx.bounds.ceiling}"
    stale = [pod for pod in ctx.live if _outside_group(pod, target)]
    if not stale:
        return None
    ranges = sorted({pod.nnodes for pod in stale if pod.nnodes is not None})
    if ranges:
        change = f"torchrun's node range changes from {ranges[-1]} to {wanted} (the workers' bounds)"
    else:
        change = (
            "the workers started with a static rendezvous (elastic.enabled was false) and the job is "
            f"elastic now (torchrun's node range {wanted})"
        )
    restart = f"{change}: every worker is stopped and started again with the new range"
    # Nothing is created before the old group is gone: the running workers are the count kept meanwhile. A
    # missing one of the old world would need a new index, which the new ceiling's names may not have.
    keep = min(_world(ctx) or len(ctx.live), len(ctx.live))
    return _Plan(target, keep, Removal(Reason.RESTARTING, target, highest_first(ctx.live)), restart)


def _outside_group(pod: WorkerPod, count: int) -> bool:
    """Whether an elastic pytorch job's worker cannot be one of a group of `count`: torchrun's node range
    it started with does not hold it, or it started with a static rendezvous (a world size and no range:
    made before elastic.enabled was turned on), whose group cannot take or lose a worker. One made before
    either annotation existed is taken for what it is."""
    if pod.nnodes is None:
        return pod.world_size is not None
    return not _holds_count(pod.nnodes, count)


def _restarted_group(ctx: JobContext, target: int) -> list[WorkerPod]:
    """An elastic pytorch job's terminating workers that no group of `target` could hold (_outside_group):
    the old group of a range restart, or of a suspended or preempted job back at a count outside its range.
    Workers removed by a scale-down are of the running group: none is waited for."""
    if ctx.spec.framework != "pytorch":
        return []
    return [pod for pod in ctx.ours if pod.terminating and _outside_group(pod, target)]


def _holds_count(nnodes: str, count: int) -> bool:
    low, high = (int(part) for part in nnodes.split(":"))
    return low <= count <= high


def _slots(ctx: JobContext, count: int) -> frozenset[int]:
    already = ctx.observation.already_replaced
    return worker_slots(
        count,
        ctx.ours,
        already,
        keep_survivors=ctx.spec.elastic.enabled,
        finished=_gone_after_success(ctx),
        new_index_limit=None if fixed_world(ctx.spec) else widest_index(ctx.bounds.ceiling),
        host_kept=ctx.spec.framework != "none",
    )


def _gone_after_success(ctx: JobContext) -> frozenset[int]:
    """Workers recorded as succeeded (status.succeededWorkers) whose pods are gone."""
    present = {pod.index for pod in ctx.ours if not pod.terminating}
    return parse_index_ranges(ctx.status.get("succeededWorkers")) - present


def training_ended(ctx: JobContext) -> bool:
    """A worker of the running group succeeded: a fixed group's ranks finish together, and torchrun's
    agents all exit once one has. Stopping it now (a suspend, a grant taken back) would throw the finished
    training away and run it again on resume: the job finishes instead. Not with framework none, whose
    processes organise themselves: one that succeeded says nothing of the others (_finishing)."""
    if ctx.spec.framework == "none":
        return False
    leaving = _other_attempts(_with_adopted_attempt(ctx)) if fixed_world(ctx.spec) else []
    return bool(_succeeded_in_group(replace(ctx, ours=[pod for pod in ctx.ours if pod not in leaving])))


def _succeeded_in_group(ctx: JobContext) -> frozenset[int]:
    """The running group's workers that succeeded: their pods say so, or status.succeededWorkers does
    (cleared when the group is stopped or restarted; other attempts' workers are not in ctx.ours)."""
    return _succeeded_now(ctx.ours) | parse_index_ranges(ctx.status.get("succeededWorkers"))


def _succeeded_now(ours: Sequence[WorkerPod]) -> frozenset[int]:
    return frozenset(
        pod.index
        for pod in ours
        if pod.phase == POD_SUCCEEDED and not pod.terminating and pod.index is not None
    )


def _not_started(ctx: JobContext, doomed: Sequence[str]) -> tuple[str, ...]:
    """Of the workers a removal takes, those whose trainer has not started (unscheduled, or bound and
    pulling its image): in no group, they hold nothing to save. Gone now, not after the others'
    checkpoint: left, one could start during the wait, join the group, and make every worker re-form it
    in the middle of the save it asks for. A pod stays Pending while any of its containers has not
    started: one whose trainer runs beside a sidecar still pulling waits for the checkpoint."""
    names = set(doomed)
    return tuple(
        pod.name
        for pod in ctx.live
        if pod.name in names and (pod.unscheduled or (pod.phase == POD_PENDING and not pod.trainer_started))
    )


def _surplus(ctx: JobContext, target: int, reason: str) -> Removal | None:
    slots = _slots(ctx, target)
    surplus = [pod for pod in ctx.live if pod.index is not None and pod.index not in slots]
    return Removal(reason, target, highest_first(surplus)) if surplus else None


def _shrink_reason(ctx: JobContext) -> str:
    word = grant_reason(ctx)
    return Reason.SHRUNK_FOR_PRIORITY if word == Reason.SHRUNK_FOR_PRIORITY else Reason.SCALED_DOWN


# Reasons that name the count the job wanted (or was granted) when the pass gave them.
COUNTING_REASONS = frozenset({Reason.SCALED_UP, Reason.SCALED_DOWN, Reason.ADMITTED})
# How a pass's detail begins for a preempted job granted its running workers back during its checkpoint
# handshake (controller/preemption_undo.py): its Admitted message says so.
PREEMPTION_UNDONE = "preemption undone"


def pass_reason(ctx: JobContext) -> str:
    """The scheduling pass's reason for this job's grant, "" when none or stale: one naming the count the
    job wanted then ("ScaledDown: wants 1") says nothing of a job since scaled to another, whose grant no
    pass has changed yet (its leaving worker still holds the devices)."""
    reason = ctx.observation.grant_reason or ""
    want = ctx.observation.grant_reason_want
    word = reason.partition(":")[0].strip()
    if want is not None and want != ctx.bounds.desired and word in COUNTING_REASONS:
        return ""
    return reason


def grant_detail(ctx: JobContext) -> str | None:
    """The detail of the scheduling pass's reason for this job's grant ("Word: detail" -> detail); None for
    a recovered grant (RECOVERED), which tells nothing new."""
    reason = pass_reason(ctx)
    if not reason or _recovered(ctx):
        return None
    word, _, detail = reason.partition(":")
    return (detail or word).strip()


def grant_reason(ctx: JobContext) -> str:
    """The Admitted=True reason: the scheduling pass's word when it is one of ours (a grant lowered for
    capacity is ScaledDown), else Admitted. A recovered grant (RECOVERED) keeps the reason the job was
    admitted with before."""
    reason = pass_reason(ctx)
    if not reason and _scaled_down(ctx):
        return Reason.SCALED_DOWN
    word = reason.partition(":")[0].strip()
    if word == RECOVERED:
        before = _admitted_before(ctx)
        word = str(before.get("reason")) if before is not None else Reason.ADMITTED
    if word == EventReason.CAPACITY_CHANGED and _admitted_before(ctx) is not None:
        word = Reason.SCALED_DOWN  # the pass lowered the grant: workers no longer fit (its metric's reason)
    return word if word in _GRANT_REASONS else Reason.ADMITTED


def _scaled_down(ctx: JobContext) -> bool:
    """For an admitted job no pass has a word for: its spec now asks for fewer workers than its status was
    admitted with (the pass's ScaledDown follows in a moment: Admitted first made two events of one change),
    or it read ScaledDown with no word of a pass since and was not scaled up since (a review)."""
    before = _admitted_before(ctx)
    admitted_with = ctx.status.get("desiredReplicas")
    if before is None or not isinstance(admitted_with, int):
        return False
    if ctx.bounds.desired < admitted_with:
        return True
    kept = ctx.observation.grant_reason is None and before.get("reason") == Reason.SCALED_DOWN
    return kept and ctx.bounds.desired <= admitted_with


def _recovered(ctx: JobContext) -> bool:
    return (ctx.observation.grant_reason or "").partition(":")[0].strip() == RECOVERED


def _admitted_before(ctx: JobContext) -> Mapping[str, object] | None:
    """The previous Admitted condition when it is True."""
    before = find_condition(ctx.conditions, ConditionType.ADMITTED)
    return before if before is not None and before.get("status") == "True" else None


def _grant_why(ctx: JobContext, plan: _Plan) -> str | None:
    """Why the grant is below spec.workers.replicas, as the scheduling pass said: its detail, or for a
    recovered grant of the same count the reason the previous Admitted message gave (the operator's
    restart is no news: the condition, its event and status.message stay as they were)."""
    detail = grant_detail(ctx)
    if detail and pass_reason(ctx).startswith(Reason.SCALED_UP):
        # "1 -> 2 workers (wants 4); no room now for 2 more workers": the step is no reason for the rest.
        detail = detail.rpartition("; ")[2] if "; " in detail else None
    before = _admitted_before(ctx) if _recovered(ctx) else None
    if detail or before is None:
        return detail
    counted = f"{plan.target} of {ctx.bounds.desired} workers granted: "
    message = str(before.get("message") or "")
    if not message.startswith(counted):
        return None  # another count: the grant is told afresh
    why = message.removeprefix(counted)
    # The quota's words are told afresh (JobContext.quota_cap): the quota may have changed or gone meanwhile.
    return why if why and why != _NO_CAPACITY and not why.startswith(QUOTA_MESSAGE_START) else None


def _admitted(ctx: JobContext, plan: _Plan) -> ConditionUpdate:
    wanted = ctx.bounds.desired
    if plan.target >= wanted:
        message = f"{plan.target} worker{'' if plan.target == 1 else 's'} granted"
        detail = grant_detail(ctx)
        if detail and detail.startswith(PREEMPTION_UNDONE):
            message += f"; {detail}"
    else:
        # Held below it (the training ended, a raised minimum not granted yet): why, rather than capacity.
        why = plan.capped or ctx.quota_cap or _grant_why(ctx, plan) or plan.hold or _NO_CAPACITY
        message = f"{plan.target} of {wanted} workers granted: {why}"
    return ConditionUpdate(ConditionType.ADMITTED, "True", grant_reason(ctx), message)


def _message(ctx: JobContext, plan: _Plan, shake_note: str | None) -> str | None:
    """status.message: why the workers running differ from spec.workers.replicas, and why a suspend asked
    for does not stop them (training_ended: the job finishes instead)."""
    message = _count_message(ctx, plan, shake_note)
    if not (ctx.spec.run_policy.suspend and training_ended(ctx)):
        return message
    return f"{message}; {SUSPEND_WAITS}" if message else SUSPEND_WAITS


def _count_message(ctx: JobContext, plan: _Plan, shake_note: str | None) -> str | None:
    """Why the workers running differ from spec.workers.replicas."""
    held = plan.restart or plan.hold or plan.capped
    if held:
        return f"{held}; {shake_note}" if shake_note else held
    replicas = ctx.spec.workers.replicas
    why = None
    if plan.target < replicas:
        detail = _grant_why(ctx, plan) or f"the scheduling pass granted {plan.target}"
        ceiling = ctx.bounds.ceiling
        if ceiling < replicas:
            # The cap first: "3 of 8: no room now for 1 more worker" counted against 4 without saying so.
            step, most = ctx.bounds.step, ctx.bounds.whole_groups(ceiling)
            capped = f"spec.workers.maxReplicas is {ceiling}"
            if most < ceiling:
                capped += f" ({most} in whole groups of {step})"
            why = capped if plan.target >= most else f"{capped}, and {detail}"
        else:
            why = detail
        why = f"running {plan.target} of spec.workers.replicas {replicas} workers: {why}"
    elif plan.target > replicas:
        why = f"running {plan.target} workers, more than spec.workers.replicas {replicas}: the floor is {plan.target}"
    parts = [part for part in (why, shake_note) if part]
    return "; ".join(parts) or None


def gang_timeout(
    ctx: JobContext, target: int, placed: int, since: str = "admission", refused: str | None = None
) -> Draft:
    """Release every worker of a gang that was not all placed on nodes in time, or whose workers the API
    server refused (`refused`: why), and back off."""
    timeout = ctx.spec.scheduling.gang_timeout_seconds
    # Not in a reconcile that also sees a spec edit, which ends such a hold (decisions/job._gang_kept).
    edited = ctx.observation.generation != ctx.status.get("observedGeneration")
    unplaceable = None if refused or edited else _unplaceable(ctx)
    gang: GangStatus = after_timeout(previous_gang(ctx.status), ctx.now).model_copy(
        update={"refused": refused, "unplaceable": unplaceable}
    )
    wait = backoff_left(gang, ctx.now)
    message = (
        f"{placed} of {target} admitted workers were placed on a node {timeout} s after {since} "
        f"(spec.scheduling.gangTimeoutSeconds); every worker is deleted and the job asks for admission "
        f"again in {wait:.0f} s (gang timeout {gang.retries}){unscheduled_note(ctx)}"
    )
    if unplaceable:
        message += (
            f"; that is no shortage of {ctx.sizing.resource_name}, so until a worker is placed or the spec "
            f"changes, the job takes no room from other jobs"
        )
    if refused:
        gone = "every worker is deleted and " if ctx.ours else ""
        message = (
            f"{refused}; {gone}the job asks for admission again in {wait:.0f} s, taking no room from other "
            f"jobs {_until_created(refused)} (grant given back {gang.retries} time{'' if gang.retries == 1 else 's'})"
        )
    return Draft(
        phase=JobPhase.QUEUED,
        updates=[
            ConditionUpdate(ConditionType.ADMITTED, "False", Reason.GANG_TIMEOUT, message),
            *not_running(Reason.GANG_TIMEOUT, message),
        ],
        delete=stop_workers(ctx.ours, keep_finished=False),
        restarts=restarts_of(ctx.status),
        desired=0,
        message=message,
        gang=gang,
        requeue_after=[wait],
        succeeded_workers=frozenset(),
    )


def failed(ctx: JobContext, failures: Sequence[WorkerPod]) -> Draft:
    names = ", ".join(pod.name for pod in failures)
    restarts = restarts_of(ctx.status)
    message = (
        f"worker(s) {names} failed{_causes(failures)} after {restarts} restart(s); "
        f"spec.runPolicy.maxRestarts is {ctx.spec.run_policy.max_restarts}{_memory_hint(ctx, failures)}"
    )
    return Draft(
        phase=JobPhase.FAILED,
        updates=[
            ConditionUpdate(ConditionType.FAILED, "True", Reason.RESTART_LIMIT_EXCEEDED, message),
            *not_running(Reason.JOB_FAILED, message),
        ],
        # Running workers of a failed job hold accelerators for nothing; finished ones keep their logs.
        delete=stop_workers(ctx.ours, keep_finished=True),
        restarts=restarts,
        desired=0,
        completion_time=rfc3339(ctx.now),
    )


def succeeded(ctx: JobContext, desired: int, workers: frozenset[int] | None = None) -> Draft:
    done = desired if workers is None else len(workers)
    reason, message = Reason.ALL_WORKERS_SUCCEEDED, f"all {desired} workers succeeded"
    if done < desired:  # the training ended (_training_done): the others failed or never ran after it
        reason = Reason.TRAINING_ENDED
        message = (
            f"the training ended: {done} of {desired} workers succeeded, the others failed or never started"
        )
    return Draft(
        phase=JobPhase.SUCCEEDED,
        updates=[
            sized(ctx.sizing),
            ConditionUpdate(ConditionType.SUCCEEDED, "True", reason, message),
            *not_running(Reason.JOB_SUCCEEDED, message),
        ],
        restarts=restarts_of(ctx.status),
        desired=0,
        completion_time=rfc3339(ctx.now),
        succeeded_workers=workers,
        delete=stop_workers(ctx.ours, keep_finished=True),  # workers left unfinished; the finished stay
    )


def _ready(ours: Sequence[WorkerPod], slots: frozenset[int]) -> int:
    return sum(1 for pod in ours if pod.ready and pod.index in slots)


def _placed(ours: Sequence[WorkerPod], slots: frozenset[int]) -> int:
    """Workers bound to a node (pulling, starting, running or finished): the gang holds their devices."""
    return sum(1 for pod in ours if pod.node_name and not pod.terminating and pod.index in slots)


def _phase(
    ctx: JobContext, desired: int, ready: int, start_time: str | None, restarting: bool = False
) -> Phase:
    existing = [pod for pod in ctx.ours if not pod.terminating]
    # A restart waiting for its checkpoint: every worker is about to go, however many run now.
    if ready >= desired and len(existing) == desired and not restarting:
        return JobPhase.RUNNING
    # An elastic job training on its floor (Running=True) while a worker above it starts runs: not Pending.
    trains = ready > 0 and ready >= min(_trains_with(ctx), desired)
    return JobPhase.SCALING if start_time or trains else JobPhase.PENDING


def _trains_with(ctx: JobContext) -> int:
    """The fewest running workers it trains on: an elastic pytorch job's running group's floor (which a
    minimum raised or lowered since it started does not move); a fixed group (elastic jax included) only
    whole."""
    if fixed_world(ctx.spec):
        return ctx.bounds.ceiling
    return _running_group_floor(ctx, ctx.bounds.floor)


def _leaving_note(ctx: JobContext, plan: _Plan, doomed: Sequence[str], delete: Sequence[str]) -> str:
    """ "; N more running until they save a checkpoint" for a scale-down's or shrink's workers still running
    while the handshake waits: Running counts the workers kept, and read "2/2" while 4 ran. Not for a
    restart, whose kept count is every running worker (Ready says Restarting)."""
    if plan.restart:
        return ""
    leaving = [pod for pod in ctx.live if pod.name in doomed and pod.name not in delete and pod.ready]
    return f"; {len(leaving)} more running until they save a checkpoint" if leaving else ""


def _readiness(
    ctx: JobContext, ready: int, desired: int, held: Sequence[WorkerPod] = (), note: str = ""
) -> list[ConditionUpdate]:
    """Ready and Running from the counts; a worker not ready because its name is held by an old pod stuck
    terminating (WorkerChanges.held) is named with that pod; `note` follows Running's counts (Ready's
    message change would be an event each time)."""
    counts = f"{ready}/{desired} workers running"
    return [
        ConditionUpdate(ConditionType.READY, "True", Reason.ALL_WORKERS_READY, counts)
        if ready >= desired
        else ConditionUpdate(
            ConditionType.READY,
            "False",
            Reason.WORKERS_NOT_READY,
            counts + _held_names(ctx, held) + (_room_note(ctx, desired) or unscheduled_note(ctx)),
        ),
        _running_condition(ctx, ready, desired, counts + note),
    ]


# Workers waiting for an old pod's name that a message names, at most (the rest: "...").
_HELD_SHOWN = 3


def _unplaceable(ctx: JobContext) -> str | None:
    """kube-scheduler's reason the gang's unplaced workers wait, where it names no shortage of the job's
    accelerator: shrinking or preempting other jobs for it again frees nothing it lacks (a high-priority
    job whose PersistentVolumeClaim was misnamed restarted a lower-priority one every gang cycle). None
    where any of them has no reason, or one naming the shortage (the devices it was admitted onto were
    taken meanwhile)."""
    waiting = sorted(
        (pod for pod in ctx.live if not pod.node_name), key=lambda pod: (pod.index is None, pod.index or 0)
    )
    resource = ctx.sizing.resource_name
    if not waiting or any(not pod.unschedulable or resource in pod.short_of for pod in waiting):
        return None
    return waiting[0].unschedulable


def _room_note(ctx: JobContext, desired: int) -> str | None:
    """ "; waiting for the workers of ml/big to leave (...)" while workers of jobs shrunk or preempted for
    this one still hold the devices its workers wait for, unplaced or not created yet (_wait_for_room):
    kube-scheduler's "Insufficient nvidia.com/gpu" alone read like a failure for the whole checkpoint grace
    (an audit). None where none does, where every desired worker is live and bound (one not ready then waits
    for something else: its image, its start), or where an unplaced worker waits for something else
    (kube-scheduler's reason is told then)."""
    held_by = room_entries(ctx.observation.places_held_by) if ctx.observation.places_held else None
    resource = ctx.sizing.resource_name
    waiting = [pod for pod in ctx.live if not pod.node_name]
    if (
        not held_by
        or (not waiting and len(ctx.live) >= desired)
        or any(pod.unschedulable and resource not in pod.short_of for pod in waiting)
    ):
        return None
    return f"; waiting for the workers of {', '.join(held_by)} to leave (shrunk or preempted for this job)"


def unscheduled_note(ctx: JobContext) -> str:
    """ "; worker N not scheduled: <kube-scheduler's message>" for the lowest-indexed live worker that
    kube-scheduler could not place, with how many more wait so; "" when none. Only kubectl describe pod
    said why a job's workers stayed Pending (a PersistentVolumeClaim not found, a node selector)."""
    waiting = sorted(
        (pod for pod in ctx.live if pod.unschedulable),
        key=lambda pod: (pod.index is None, pod.index or 0),
    )
    if not waiting:
        return ""
    more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
    return f"; {waiting[0].name} not scheduled{more}: {waiting[0].unschedulable}"


def _held_names(ctx: JobContext, held: Sequence[WorkerPod]) -> str:
    """For the Ready message ("; ..." after the counts): the workers that wait for an old pod of their name
    stuck terminating (its node NotReady or gone, or a minute past its grace), and what frees it; "" when
    none. One going within its grace on a Ready node is not named: it is gone in seconds."""
    stuck = [pod for pod in held if pod.node_lost or pod.stuck_terminating(ctx.now)]
    if not stuck:
        return ""
    # Those on a lost node first: theirs is the advice to act on. Nodes and the command name the shown only.
    shown = sorted(stuck, key=lambda pod: not pod.node_lost)[:_HELD_SHOWN]
    waits = [
        f"worker {pod.index} waits for its old pod {pod.name}, still terminating on "
        f"{pod.node_name or 'no node'} (deletionTimestamp {pod.deletion_timestamp or 'unknown'})"
        for pod in shown
    ]
    text = "; " + "; ".join(waits) + ("; ..." if len(stuck) > _HELD_SHOWN else "")
    on_lost = [pod for pod in shown if pod.node_lost]
    if not on_lost:
        return text
    lost = sorted({pod.node_name or "no node" for pod in on_lost})
    names = " ".join(pod.name for pod in on_lost)
    return (
        f"{text}; {'node' if len(lost) == 1 else 'nodes'} {', '.join(lost)} NotReady or gone: no kubelet "
        "confirms the delete; deleting the node has the pod garbage collector remove the pod, or "
        f"kubectl delete pod -n {ctx.observation.job.namespace} {names} --force once sure it no longer runs"
    )


def _running_condition(ctx: JobContext, ready: int, desired: int, counts: str) -> ConditionUpdate:
    """Running: enough workers to train (the elastic floor), even while scaling. Not once the training has
    ended (_finishing): the workers left run only to finish, and none is starting (WorkersStarting said so
    of a fixed group whose first workers had succeeded)."""
    if _finishing(ctx):
        done = len(_succeeded_in_group(ctx))
        message = (
            f"the training has ended (a worker succeeded): {done} of {desired} workers succeeded, "
            f"{ready} still running to finish"
        )
        return ConditionUpdate(ConditionType.RUNNING, "False", Reason.TRAINING_ENDED, message)
    if ready >= min(_trains_with(ctx), desired):
        return ConditionUpdate(ConditionType.RUNNING, "True", Reason.WORKERS_RUNNING, counts)
    return ConditionUpdate(ConditionType.RUNNING, "False", Reason.WORKERS_STARTING, counts)


def resumed(ctx: JobContext) -> list[ConditionUpdate]:
    """Suspended=False once spec.runPolicy.suspend is false again (admitted or still queued)."""
    if is_true(ctx.conditions, ConditionType.SUSPENDED):
        message = "spec.runPolicy.suspend is false"
        return [ConditionUpdate(ConditionType.SUSPENDED, "False", Reason.RESUMED, message)]
    return []


def _disruption_events(replaced: Sequence[WorkerPod]) -> list[JobEvent]:
    return [
        JobEvent(
            "Warning",
            EventReason.WORKER_LOST,
            f"worker {pod.name} was stopped by Kubernetes ({_disruption(pod)}); replacing it (not counted "
            "as a restart)",
        )
        for pod in replaced
        if pod.disrupted
    ]


def _disruption(pod: WorkerPod) -> str:
    """How Kubernetes stopped a disrupted worker: the kubelet's reason (Evicted, Preempting, ...), else the
    DisruptionTarget condition that said so."""
    return pod.exit_reason if pod.exit_reason in DISRUPTION_REASONS else "DisruptionTarget"


def _restart_events(
    ctx: JobContext, replaced: Sequence[WorkerPod], restarts: int, counted: bool
) -> list[JobEvent]:
    """One Warning per failed worker, saying how it ended; those of one failure name the one restart they
    count as."""
    which = f"restart {restarts} of at most {ctx.spec.run_policy.max_restarts}"
    note = which if counted else f"part of {which}, not counted again"
    return [
        JobEvent(
            "Warning",
            EventReason.WORKER_FAILED,
            f"worker {pod.name} failed{f' on {pod.node_name}' if pod.node_name else ''}{_causes([pod])}; "
            f"replacing it ({note}){_memory_hint(ctx, [pod])}",
        )
        for pod in replaced
    ]


def _removed_failure_events(ctx: JobContext, delete: Sequence[str], keep: int) -> list[JobEvent]:
    """A failed worker that a lowered count removes (worker_slots keeps running workers first, so it goes
    before them) is neither replaced nor counted, but told: it went with no word before. Not one replaced
    already, whose delete is only tried again (its replacement's event told it)."""
    deleted = set(delete)
    replaced = ctx.observation.already_replaced
    return [
        JobEvent(
            "Warning",
            EventReason.WORKER_FAILED,
            f"worker {pod.name} failed{f' on {pod.node_name}' if pod.node_name else ''}{_causes([pod])}; "
            f"not replaced: the job's count is lowered to {keep}, and failed workers are removed first",
        )
        for pod in ctx.ours
        if pod.name in deleted and pod.phase == POD_FAILED and not pod.terminating and pod.uid not in replaced
    ]


# Failed workers whose end a message names, at most (the rest: "...").
_CAUSES_SHOWN = 3
OOM_KILLED = "OOMKilled"


def _causes(failures: Sequence[WorkerPod]) -> str:
    """How the failed workers ended (WorkerPod.failure_cause), to follow "failed": " with exit code 137
    (OOMKilled)" or " (Evicted)" for one, " (name: cause; ...)" for several; "" when none is known."""
    known = [(pod, pod.failure_cause) for pod in failures if pod.failure_cause]
    if not known:
        return ""
    if len(failures) == 1:
        pod, cause = known[0]
        return f" with {cause}" if pod.exit_code is not None else f" ({cause})"
    shown = "; ".join(f"{pod.name}: {cause}" for pod, cause in known[:_CAUSES_SHOWN])
    return f" ({shown}{'; ...' if len(known) > _CAUSES_SHOWN else ''})"


def _memory_hint(ctx: JobContext, failures: Sequence[WorkerPod]) -> str:
    """For a worker OOMKilled: its host-memory request and the field that raises it (builders.resources:
    spec.resources.memory, else the template's first container, else the default); "" otherwise."""
    if not any(pod.exit_reason == OOM_KILLED for pod in failures):
        return ""
    given = given_memory(ctx.spec.template["spec"]["containers"][0].get("resources"), ctx.spec)
    if given is not None and given[0] == "spec.resources.memory":
        request = f"spec.resources.memory {given[1]}: raise it"
    elif given is not None:
        request = f"{given[1]} ({given[0]}): set spec.resources.memory higher"
    else:
        per_worker = ctx.sizing.accelerators_per_worker
        share = host_share(ctx.observation.inventory.placeable, ctx.sizing.accelerator, per_worker)
        value = default_memory(per_worker, ctx.host_bytes_per_worker, share)
        request = (
            f"the default {value} (16Gi per accelerator plus the training state offloaded to host memory): "
            "set spec.resources.memory higher"
        )
    return f"; {OOM_KILLED}: the trainer ran out of host memory, its request is {request}"
