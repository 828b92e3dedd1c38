"""The checkpoint handshake before a planned removal of workers, as a pure decision.

Any membership change makes torchrun restart every worker from its last checkpoint, so before workers
are removed on purpose (scale-down, shrink for priority, preemption, suspend, a non-elastic restart) the
operator opens a checkpoint request, waits until every running worker has acknowledged it or
spec.elastic.checkpointGracePeriodSeconds has passed since it was opened, and only then deletes. The
request lives in status.checkpoint (so an operator restart resumes the wait, the whole grace again from
when the restarted operator offers the request: the workers could not see it meanwhile); the acknowledgements
arrive over the operator's checkpoint endpoint (docs/checkpoint-handshake.md) and come in as
JobObservation.checkpoint_acks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from kubefit.api.conditions import EventReason
from kubefit.api.models import CheckpointStatus
from kubefit.api.units import parse_rfc3339, rfc3339
from kubefit.api.validation import pruned
from kubefit.decisions.draft import Draft, JobContext, JobEvent
from kubefit.decisions.observed import WorkerPod

if TYPE_CHECKING:
    from kubefit.decisions.job import JobObservation

# While waiting, reconcile at least this often, so an acknowledgement is seen even if nothing else
# triggers a reconcile of the job.
ACK_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Removal:
    """Workers to remove on purpose, and why."""

    reason: str  # a kubefit.api.conditions.Reason: ScaledDown, ShrunkForPriority, Preempted, ...
    target: int  # workers kept once the removal is done
    doomed: tuple[str, ...]  # pod names to delete, highest index first


@dataclass(frozen=True)
class HandshakeState:
    """What the handshake asks of this decision."""

    proceed: bool  # delete the doomed workers now
    checkpoint: CheckpointStatus | None  # status.checkpoint: the request still open
    requests: int  # status.checkpointRequests after this decision
    requeue_after: float | None = None  # reconcile again then to see acknowledgements or the deadline
    opened: bool = False  # a request was opened by this decision
    closed_note: str | None = None  # how the wait ended, when it ended in this decision
    timed_out: bool = False  # it ended with the grace period, not every running worker acknowledged


@dataclass(frozen=True)
class HandshakeInput:
    removal: Removal | None
    running: Sequence[WorkerPod]  # the job's running workers: each is asked to acknowledge
    acks: Mapping[str, int]  # worker pod -> step, for the open request
    previous: CheckpointStatus | None
    requests: int  # status.checkpointRequests so far
    grace_seconds: int
    now: datetime
    generation: int | None
    told_at: datetime | None = None  # JobObservation.checkpoint_told_at


def checkpoint_handshake(given: HandshakeInput) -> HandshakeState:
    """Open, keep waiting on, or finish the checkpoint request for `given.removal`.

    Nothing to remove closes any open request (a scale-down undone before it happened). A removal that
    takes no running worker, or a grace period of 0, proceeds at once: there is no training state to save.
    """
    removal = given.removal
    doomed_running = removal is not None and any(pod.name in removal.doomed for pod in given.running)
    if removal is None or not removal.doomed:
        return HandshakeState(proceed=False, checkpoint=None, requests=given.requests)
    if not doomed_running or given.grace_seconds == 0:
        return HandshakeState(proceed=True, checkpoint=None, requests=given.requests)
    previous = given.previous
    if previous is None:
        return _open(given, removal)
    asked = [pod.name for pod in given.running]
    acknowledged = sum(1 for name in asked if name in given.acks)
    grace = timedelta(seconds=given.grace_seconds)
    deadline = (parse_rfc3339(previous.requested_at) or given.now) + grace
    if given.told_at is not None:
        # The workers could see the request only from then (an operator restarted during the wait): what
        # they had saved and acknowledged is sent again on their next poll, a save under way gets its time.
        deadline = max(deadline, given.told_at + grace)
    if acknowledged == len(asked):
        note = (
            f"all {len(asked)} running workers acknowledged checkpoint {previous.request_id}{_steps(given)}"
        )
        return HandshakeState(True, None, given.requests, closed_note=note)
    if given.now >= deadline:
        note = (
            f"{acknowledged} of {len(asked)} running workers acknowledged checkpoint {previous.request_id} "
            f"within spec.elastic.checkpointGracePeriodSeconds ({given.grace_seconds} s); removing anyway"
        )
        return HandshakeState(True, None, given.requests, closed_note=note, timed_out=True)
    still_open = previous.model_copy(
        update={
            "reason": removal.reason,
            "target_replicas": removal.target,
            "acknowledged": acknowledged,
            "workers": len(asked),
        }
    )
    wait = (deadline - given.now).total_seconds()
    return HandshakeState(False, still_open, given.requests, requeue_after=min(wait, ACK_POLL_SECONDS))


def _open(given: HandshakeInput, removal: Removal) -> HandshakeState:
    requests = given.requests + 1
    checkpoint = CheckpointStatus(
        request_id=f"{given.generation or 0}-{requests}",
        reason=removal.reason,
        requested_at=rfc3339(given.now),
        target_replicas=removal.target,
        acknowledged=0,
        workers=len(given.running),
    )
    return HandshakeState(
        proceed=False,
        checkpoint=checkpoint,
        requests=requests,
        requeue_after=min(float(given.grace_seconds), ACK_POLL_SECONDS),
        opened=True,
    )


def _steps(given: HandshakeInput) -> str:
    steps = [given.acks[pod.name] for pod in given.running if pod.name in given.acks]
    return (
        f" (steps {min(steps)} to {max(steps)})"
        if steps and min(steps) != max(steps)
        else (f" at step {steps[0]}" if steps else "")
    )


def highest_first(pods: Sequence[WorkerPod]) -> tuple[str, ...]:
    """Pod names, highest worker index first: the rendezvous host, worker-0, always last."""
    return tuple(pod.name for pod in sorted(pods, key=lambda pod: pod.index or 0, reverse=True))


# ------------------------------------------------------------------ applied to a job's decision


def handshake(ctx: JobContext, removal: Removal | None, ask: bool = True) -> HandshakeState:
    """The handshake of `removal`; `ask` False: the workers hold nothing to save (grace 0)."""
    grace = ctx.spec.elastic.checkpoint_grace_period_seconds if ask else 0
    return handshake_for(ctx.observation, ctx.running, grace, removal)


def handshake_for(
    observation: JobObservation, running: Sequence[WorkerPod], grace_seconds: int, removal: Removal | None
) -> HandshakeState:
    """The handshake of a job as observed, its `running` workers asked, with `grace_seconds`."""
    status = observation.status
    raw = status.get("checkpoint")
    try:
        # Without a field a newer CRD adds (validation.pruned): the open request is not lost for it.
        previous = CheckpointStatus.model_validate(pruned(raw, "status", "checkpoint")[0]) if raw else None
    except ValueError:
        previous = None
    return checkpoint_handshake(
        HandshakeInput(
            removal=removal,
            running=running,
            acks=observation.checkpoint_acks,
            previous=previous,
            requests=int(status.get("checkpointRequests") or 0),
            grace_seconds=grace_seconds,
            now=observation.now,
            generation=observation.generation,
            told_at=observation.checkpoint_told_at,
        )
    )


def apply_handshake(draft: Draft, shake: HandshakeState, removal: Removal) -> None:
    """The handshake's status, wake-up and events, into `draft`."""
    draft.checkpoint = shake.checkpoint
    draft.checkpoint_requests = shake.requests
    if shake.requeue_after is not None:
        draft.requeue_after.append(shake.requeue_after)
    if shake.opened and shake.checkpoint is not None:
        draft.events.append(
            JobEvent(
                "Normal",
                EventReason.CHECKPOINT_REQUESTED,
                f"asked {shake.checkpoint.workers} running workers to checkpoint "
                f"({shake.checkpoint.request_id}) before removing {len(removal.doomed)} ({removal.reason})",
            )
        )
    if shake.closed_note and shake.timed_out:
        # Progress since the last save may be lost: a Warning, which is what people filter and alert on.
        draft.events.append(JobEvent("Warning", EventReason.CHECKPOINT_TIMED_OUT, shake.closed_note))
    elif shake.closed_note:
        draft.events.append(JobEvent("Normal", EventReason.CHECKPOINT_DONE, shake.closed_note))


def removal_progress(shake: HandshakeState, removal: Removal) -> str:
    if shake.proceed or not removal.doomed:
        if not removal.doomed:
            return "no workers are left"
        deleting = f"deleting {len(removal.doomed)} workers"
        return f"{deleting}: {shake.closed_note}" if shake.timed_out else deleting
    checkpoint = shake.checkpoint
    assert checkpoint is not None  # a removal that does not proceed waits on an open request
    return (
        f"waiting for {checkpoint.workers - checkpoint.acknowledged} of {checkpoint.workers} running "
        f"workers to acknowledge checkpoint {checkpoint.request_id} before deleting {len(removal.doomed)}"
    )
