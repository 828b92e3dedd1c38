"""Decisions for a valid job that fits: queued, admitted (elastic or all-or-nothing), released, suspended.

No worker pod exists before the scheduling pass admits the job (JobObservation.grant > 0). An admitted
job runs its grant within [floor, replicas] (all-or-nothing at replicas when not elastic); workers are
removed on purpose only after the checkpoint handshake (decisions.elastic), highest index first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from kubefit.api.conditions import FINISHED_PHASES, ConditionType, JobPhase, Reason
from kubefit.api.formatting import parse_index_ranges
from kubefit.api.models import GangStatus
from kubefit.api.units import parse_rfc3339, rfc3339
from kubefit.builders.pods import build_worker_pod
from kubefit.decisions.admission import Demand
from kubefit.decisions.conditions import ConditionUpdate, find_condition, is_true
from kubefit.decisions.demand import job_demand
from kubefit.decisions.draft import Draft, JobContext, not_running, restarts_of, sized, worker_set
from kubefit.decisions.elastic import Removal, apply_handshake, handshake_for, removal_progress
from kubefit.decisions.gang import backoff_left, growth_held_until, previous_gang
from kubefit.decisions.observed import WorkerPod
from kubefit.decisions.quota import OwnPods, QuotaClaim, QuotaRoom, quota_claims, quota_room
from kubefit.decisions.running import (
    REFUSAL_TRY_SECONDS,
    admitted,
    grant_detail,
    never_formed,
    resumed,
    training_ended,
)
from kubefit.decisions.workers import stop_workers

if TYPE_CHECKING:
    from kubefit.decisions.job import JobObservation


def scheduled(ctx: JobContext) -> Draft:
    """The decision for a valid job that fits, by its admission state."""
    ctx, wait = _backoff(ctx)
    if wait > 0:
        return _backing_off(ctx, wait)
    grant = _grant(ctx)
    demand = job_demand(
        ctx.observation.job,
        ctx.spec,
        ctx.sizing,
        ctx.bounds,
        ctx.observation.created or ctx.now,
        ctx.observation.inventory,
    )
    quota = None if training_ended(ctx) else _quota_reading(ctx)
    waived = ctx.observation.quota_waived
    room = quota.room if quota is not None else None
    if waived and (room is None or room.counted):
        room = None  # left to the pass's budget and the API server (Reconciler._below_in_namespace)
    live = len(ctx.live) + ctx.observation.unseen_creates
    # Admitted, or granted by the pass (whose status this decision writes): never held back, only capped.
    admitted_now = is_true(ctx.conditions, ConditionType.ADMITTED) or grant > 0
    capped = demand if room is None else _within_quota(demand, room, live, admitted_now)
    if capped is None:
        return _over_quota(ctx, demand, room)
    if quota is not None and quota.claims:  # the pass shares the quotas among the namespace's jobs
        capped = replace(capped, quota_claims=quota.claims, quota_exempt=waived)
    if training_ended(ctx):
        # Finishing: its last workers go on to the end (and it succeeds) whatever the pass grants now,
        # rather than being stopped or queued and the whole training run again.
        draft = admitted(ctx, max(grant, int(ctx.status.get("desiredReplicas") or 0), len(ctx.live)))
    elif grant <= 0 and ctx.live:
        draft = released(
            ctx, Reason.PREEMPTED, grant_detail(ctx) or "the scheduling pass took the grant back"
        )
    elif grant <= 0 or (not ctx.spec.elastic.enabled and grant < ctx.bounds.desired and not ctx.live):
        draft = _queued(ctx, grant)
    else:
        # Held below its replicas by the quota alone: the Admitted message names the quota, not capacity.
        held = room is not None and grant >= capped.want_workers < demand.want_workers
        draft = admitted(replace(ctx, quota_cap=room.cap()) if held and room is not None else ctx, grant)
    # A finished job needs nothing; one that just timed out withholds its demand until the backoff passes.
    withheld = draft.gang is not None and backoff_left(draft.gang, ctx.now) > 0
    draft.demand = None if draft.phase in FINISHED_PHASES or withheld else _with_finished(capped, draft, ctx)
    draft.quota_limited = draft.quota_limited or capped.want_workers < demand.want_workers
    if draft.demand is not None:
        draft.demand = replace(draft.demand, queued_since=_queued_since(ctx, draft))
        draft.demand = _held_growth(draft.demand, draft, ctx)
        if ctx.observation.refusal is not None and not ctx.live and not draft.create:
            # It takes no room while refused, so no create may ever tell that the cause was put right: a
            # dry-run create does, taking none.
            draft.probe = worker_set(ctx, ctx.bounds.desired)
            draft.requeue_after.append(REFUSAL_TRY_SECONDS)  # no event may come to bring the next try
    return draft


@dataclass(frozen=True)
class _QuotaReading:
    """What the namespace's ResourceQuotas leave the job: the room for its workers (None: no quota limits
    them), and every key they are charged under, for the pass's budget."""

    room: QuotaRoom | None
    claims: tuple[QuotaClaim, ...]


def _quota_reading(ctx: JobContext) -> _QuotaReading | None:
    """The quotas as they bear on the job, its own pods' charges counted as its room: its pods live or
    terminating (and its creates kopf's index does not show yet) are charged like a worker, its finished
    ones only by object counts. None where the namespace has no quota."""
    if not ctx.observation.quotas:
        return None
    finished = sum(1 for pod in ctx.ours if pod.finished)
    own = OwnPods(len(ctx.ours) - finished + ctx.observation.unseen_creates, finished)
    worker = build_worker_pod(worker_set(ctx, ctx.bounds.desired), 0)
    quotas, namespace = ctx.observation.quotas, ctx.observation.job.namespace
    return _QuotaReading(quota_room(quotas, worker, own), quota_claims(namespace, quotas, worker))


def _within_quota(demand: Demand, room: QuotaRoom, live: int, admitted: bool = False) -> Demand | None:
    """The demand, wanting no more workers than the quotas have room for, in whole steps; None for a queued
    job (not `admitted`, no `live` worker) whose minimum is over that. An admitted job keeps its admission
    (between a restart's deletes and the quota's count of them, its gone workers seem another's) and its
    live workers (rounded up to a whole step) whatever the quotas say now: it only stops growing."""
    step = demand.worker_step
    allowed = room.workers // step * step
    if allowed >= demand.want_workers:
        return demand
    if allowed < demand.min_workers and not live and not admitted:
        return None
    kept = min(-(-live // step) * step, demand.want_workers)
    return replace(demand, want_workers=max(demand.min_workers, allowed, kept))


def _over_quota(ctx: JobContext, demand: Demand, room: QuotaRoom | None) -> Draft:
    """A queued job whose minimum the namespace's quotas have no room for: it asks the pass for nothing, so
    it neither takes devices nor preempts or shrinks other jobs for workers the API server would refuse."""
    needs = demand.min_workers
    quota = room.describe() if room is not None else "a ResourceQuota has no room"
    return _waiting(
        ctx, Reason.QUOTA_EXCEEDED, f"{quota}; the job needs {needs} worker{'s' if needs > 1 else ''}"
    )


def _held_growth(demand: Demand, draft: Draft, ctx: JobContext) -> Demand:
    """An elastic job whose grown worker was given up (never placed within the gang timeout:
    running._growth_given_up) asks for no more than it keeps until the hold ends, so that the pass neither
    grows it onto the same node again at once nor keeps that node reserved from other jobs."""
    if draft.gang is None or draft.desired is None:
        return demand
    until = growth_held_until(draft.gang, ctx.spec.scheduling.gang_timeout_seconds)
    if until is None or ctx.now >= until or demand.want_workers <= draft.desired:
        return demand
    return replace(demand, want_workers=max(demand.min_workers, draft.desired))


def _queued_since(ctx: JobContext, draft: Draft) -> float | None:
    """When the job last entered the queue, as the status this decision writes says it: the transition of
    Admitted to False (a preemption, a gang timeout, a suspension ended); None while admitted or before
    any condition (its creation, then)."""
    previous = find_condition(ctx.conditions, ConditionType.ADMITTED)
    update = next((update for update in draft.updates if update.type == ConditionType.ADMITTED), None)
    status = update.status if update is not None else (previous or {}).get("status")
    if status != "False":
        return None
    if previous is None or previous.get("status") != "False":
        return ctx.now.timestamp()  # it turns False now
    moments = [parse_rfc3339(previous.get("lastTransitionTime"))]
    resumed_at = find_condition(ctx.conditions, ConditionType.SUSPENDED)
    if resumed_at is not None and resumed_at.get("status") == "False":
        moments.append(parse_rfc3339(resumed_at.get("lastTransitionTime")))  # a suspension waits for nothing
    moments.append(parse_rfc3339((ctx.status.get("gang") or {}).get("retryAfter")))  # nor does a backoff
    found = [moment.timestamp() for moment in moments if moment is not None]
    return min(max(found), ctx.now.timestamp()) if found else None


def _with_finished(demand: Demand, draft: Draft, ctx: JobContext) -> Demand:
    """The demand with the running group's succeeded workers, which the pass counts as placed."""
    finished = draft.succeeded_workers
    if finished is None:
        finished = parse_index_ranges(ctx.status.get("succeededWorkers"))
    return replace(demand, finished_workers=len(finished)) if finished else demand


def _grant(ctx: JobContext) -> int:
    """The workers granted. Not decided yet (just after an operator restart, or after a spec edit that
    blocked the job for a while and was undone) keeps what an admitted job had or still runs, so neither
    deletes running workers: the scheduling pass decides."""
    grant = ctx.observation.grant
    if grant is None:
        admitted = is_true(ctx.conditions, ConditionType.ADMITTED)
        return max(int(ctx.status.get("desiredReplicas") or 0), len(ctx.live)) if admitted else 0
    return grant


def _queued(ctx: JobContext, grant: int) -> Draft:
    # AdmissionPlan.waiting is "Word: detail": InsufficientCapacity (the job's minimum does not fit the free
    # devices), QuotaExceeded (its namespace's quota has no room for it) or Queued (it waits behind another job).
    word, _, waiting = (ctx.observation.waiting or "").partition(": ")
    reason = word if word in (Reason.INSUFFICIENT_CAPACITY, Reason.QUOTA_EXCEEDED) else Reason.QUEUED
    waiting = waiting or "waiting for the operator's scheduling pass"
    if 0 < grant < ctx.bounds.desired:  # a non-elastic job is admitted whole or not at all
        waiting = f"granted {grant} of the {ctx.bounds.desired} workers it needs all at once; {waiting}"
    unplaceable = previous_gang(ctx.status).unplaceable
    if unplaceable and ctx.observation.generation == ctx.status.get("observedGeneration"):
        # Past its backoff, the pass's words alone read as if it waited its turn (decisions/job._gang_kept).
        waiting = (
            f"{waiting}; it takes no room from other jobs until a worker of it is placed or its spec changes "
            f"(suspend and resume it once the cause is put right), since at its last gang timeout: {unplaceable}"
        )
    return _waiting(ctx, reason, waiting)


def _waiting(ctx: JobContext, reason: str, waiting: str) -> Draft:
    """Queued with no workers: Admitted=False for `reason`, saying `waiting`. One held back by a quota is
    decided again when room comes (the quota's watch)."""
    message = f"queued: {waiting}"
    gang = previous_gang(ctx.status).model_copy(update={"started": False, "running": False, "since": None})
    return Draft(
        phase=JobPhase.QUEUED,
        updates=[
            sized(ctx.sizing),
            ConditionUpdate(ConditionType.ADMITTED, "False", reason, waiting),
            *not_running(Reason.QUEUED, message),
            *resumed(ctx),
        ],
        restarts=restarts_of(ctx.status),
        desired=0,
        message=message,
        gang=gang,
        succeeded_workers=frozenset(),  # the group stops: a new one starts from none
        quota_limited=reason == Reason.QUOTA_EXCEEDED,
    )


def _backoff(ctx: JobContext) -> tuple[JobContext, float]:
    """Seconds left of the backoff after a gang timeout, and the context to decide with. Where the API server
    refused the gang's workers (gang.refused), a spec edited meanwhile ends the backoff: the edit may have
    put the cause right (a template it refused), which was waited out, up to 10 minutes, before; such a job
    takes no room and preempts no one until a create goes through. Any other timeout's backoff stands
    whatever is written (an HPA's scale each few seconds re-admitted a job that took others' devices every
    gang timeout: a review). Its retries stand, so a gang that times out again backs off longer."""
    gang = previous_gang(ctx.status)
    wait = backoff_left(gang, ctx.now)
    if wait <= 0 or not gang.refused or ctx.observation.generation == ctx.status.get("observedGeneration"):
        return ctx, wait
    status = {**ctx.status, "gang": {**(ctx.status.get("gang") or {}), "retryAfter": None}}
    return replace(ctx, observation=replace(ctx.observation, status=status)), 0.0


def _backing_off(ctx: JobContext, wait: float) -> Draft:
    """After a gang timeout: no demand, no workers, until the backoff has passed."""
    retry_after = rfc3339(ctx.now + timedelta(seconds=wait))
    message = f"the gang timed out; asking for admission again at {retry_after}"
    return Draft(
        phase=JobPhase.QUEUED,
        # resumed: a job whose suspend was lifted during the backoff is no longer Suspended.
        updates=[sized(ctx.sizing), *not_running(Reason.GANG_TIMEOUT, message), *resumed(ctx)],
        delete=stop_workers(ctx.ours, keep_finished=False),
        restarts=restarts_of(ctx.status),
        desired=0,
        message=message,
        requeue_after=[wait],
        succeeded_workers=frozenset(),
    )


def released(ctx: JobContext, reason: str, why: str) -> Draft:
    """Stop every worker after the checkpoint handshake (preemption, suspend); the job is kept."""
    grace = 0 if never_formed(ctx) else ctx.spec.elastic.checkpoint_grace_period_seconds
    return stop_every_worker(ctx.observation, ctx.ours, grace, reason, why, [sized(ctx.sizing)])


def stop_every_worker(  # noqa: PLR0913 - a job as observed, and why and how its workers stop
    observation: JobObservation,
    ours: Sequence[WorkerPod],
    grace_seconds: int,
    reason: str,
    why: str,
    first_updates: Sequence[ConditionUpdate],
) -> Draft:
    """`released` for a job as observed: also one whose spec no longer parses (decisions/held.py)."""
    removal = Removal(reason, 0, stop_workers(ours, keep_finished=False))
    shake = handshake_for(observation, [pod for pod in ours if pod.ready], grace_seconds, removal)
    suspended = reason == Reason.SUSPENDED
    message = f"{why}; {removal_progress(shake, removal)}"
    updates = [*first_updates, *not_running(reason, why)]
    conditions = observation.status.get("conditions") or []
    if suspended:
        updates.append(ConditionUpdate(ConditionType.SUSPENDED, "True", Reason.SUSPENDED, why))
    elif is_true(conditions, ConditionType.SUSPENDED):
        # Resumed while released for another reason (preempted, then suspended and resumed during the
        # handshake): it said Suspended=True and Admitted=False Suspended for the whole grace period.
        message = "spec.runPolicy.suspend is false"
        updates.append(ConditionUpdate(ConditionType.SUSPENDED, "False", Reason.RESUMED, message))
    admitted = find_condition(conditions, ConditionType.ADMITTED) or {}
    if suspended or admitted.get("status") == "True" or admitted.get("reason") == Reason.SUSPENDED:
        updates.append(ConditionUpdate(ConditionType.ADMITTED, "False", reason, why))
    draft = Draft(
        phase=JobPhase.SUSPENDED if suspended else JobPhase.QUEUED,
        updates=updates,
        delete=removal.doomed if shake.proceed else (),
        restarts=restarts_of(observation.status),
        desired=0,
        message=message,
        gang=_released_gang(previous_gang(observation.status), shake.proceed),
        succeeded_workers=frozenset(),
    )
    apply_handshake(draft, shake, removal)
    return draft


def _released_gang(gang: GangStatus, workers_go: bool) -> GangStatus:
    """A released job's gang: not started; `running` (every worker ran at once) kept while its workers still
    run through the checkpoint handshake, so a release undone meanwhile (a resume, a grant back) leaves a
    group that formed known as one (running.never_formed asks it to checkpoint)."""
    update = {"started": False, "running": gang.running and not workers_go, "since": None}
    # Whom its last gang waited for is no longer its business: a new admission records its own.
    update.update(
        {field: None for field in ("room_from", "room_freed_at") if getattr(gang, field) is not None}
    )
    return gang.model_copy(update=update)


def resumed_while_suspended(raw_spec: object, status: Mapping[str, Any]) -> bool:
    """Whether spec.runPolicy.suspend is false again while the status still says Suspended: the suspend's
    handshake may not be over, and workers that still run are the job's again (the scheduler takes it as
    admitted with them, as after an operator restart) rather than stopped and queued."""
    spec = raw_spec if isinstance(raw_spec, Mapping) else {}
    run_policy = spec.get("runPolicy")
    suspend = run_policy.get("suspend") if isinstance(run_policy, Mapping) else None
    return suspend is not True and is_true(status.get("conditions") or [], ConditionType.SUSPENDED)


SUSPENDED_WHY = "spec.runPolicy.suspend is true: the workers are deleted and the job is kept"


def suspended(ctx: JobContext) -> Draft:
    return released(ctx, Reason.SUSPENDED, SUSPENDED_WHY)
