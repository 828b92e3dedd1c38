"""What one TrainingJob exports, derived from its observation and its reconcile decision (pure).

`job_series` gives the values of the per-job gauges; `first_admission` and `first_run` give the two
latencies, each only for the reconcile in which the job's condition turns True for the first time.
Both latencies count from metadata.creationTimestamp to the condition's lastTransitionTime, so they are
the same whichever operator process sees the transition; a process that finds the condition already True
(an operator restart) observes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from kubefit.api.conditions import ConditionType, Reason
from kubefit.api.formatting import parse_index_ranges
from kubefit.api.models import Condition, SizingStatus
from kubefit.api.units import parse_rfc3339
from kubefit.decisions.job import Decision, JobObservation
from kubefit.decisions.observed import WorkerPod
from kubefit.decisions.workers import min_max_workers

# Reasons of Admitted=False that say the job was admitted before (it left admission).
_LEFT_ADMISSION = frozenset({Reason.PREEMPTED, Reason.GANG_TIMEOUT})


@dataclass(frozen=True)
class JobSeries:
    """The values of one job's gauges now."""

    accelerator: str  # catalog name; "" until the job is sized
    phase: str  # status.phase; "" when the decision sets none
    workers: Mapping[str, int]  # state (desired, running, pending, succeeded, min, max) -> workers
    accelerators: Mapping[str, int]  # state (requested, allocated) -> devices; empty until sized
    memory_estimated_bytes: int | None  # estimated peak per device; None until sized
    memory_requested_bytes: int | None  # memory of one device of its accelerator; None until sized
    uid: str = ""  # metadata.uid: a job deleted and created again under its name is another job


def job_series(observation: JobObservation, decision: Decision) -> JobSeries:
    sizing = decision.sizing
    status = decision.status
    running = status.ready_replicas or 0
    workers = {
        "desired": decision.desired_workers,
        "running": running,
        "pending": len(_pending(observation)),
        "succeeded": len(_succeeded(observation, status.succeeded_workers)),
        **(
            {} if _invalid(status.conditions) else _bounds(observation.spec, sizing, decision.desired_workers)
        ),
    }
    if sizing is None:
        return JobSeries("", status.phase or "", workers, {}, None, None, observation.job.uid)
    accelerators = {
        "requested": decision.requested_accelerators,
        "allocated": decision.allocated_accelerators,
    }
    return JobSeries(
        sizing.accelerator,
        status.phase or "",
        workers,
        accelerators,
        sizing.per_device_bytes,
        sizing.device_memory_bytes,
        observation.job.uid,
    )


def _pending(observation: JobObservation) -> list[WorkerPod]:
    """The job's worker pods that exist but do not run yet (not Running, not finished, not deleted)."""
    uid = observation.job.uid
    return [
        pod
        for pod in observation.pods
        if pod.index is not None
        and pod.controller_uid in (None, uid)
        and not (pod.ready or pod.finished or pod.terminating)
        # One that ran on a node that stopped answering is lost, not yet to run.
        and not (pod.node_lost and pod.phase == "Running")
    ]


def _succeeded(observation: JobObservation, recorded: str | None) -> set[int]:
    """The job's workers that finished their part: a gang whose first workers are done while others still
    save or evaluate is finishing, not short of its minimum. Their pods Succeeded, or gone since they did
    (`recorded`: status.succeededWorkers; a cluster autoscaler removes a node that holds only finished
    pods), as the reconcile counts them (decisions/running.py) and `kubefit top` does."""
    uid = observation.job.uid
    pods = {
        pod.index
        for pod in observation.pods
        if pod.index is not None and pod.controller_uid in (None, uid) and pod.phase == "Succeeded"
    }
    return pods | parse_index_ranges(recorded)


def _invalid(conditions: Sequence[Condition] | None) -> bool:
    """Whether the decision found the spec invalid: it parsed, and broke a rule checked later (a count over
    --max-workers-per-job, a name too long for its pods)."""
    return any(condition.reason == Reason.INVALID_SPEC for condition in conditions or ())


def _bounds(raw_spec: object, sizing: SizingStatus | None, desired: int) -> dict[str, int]:
    """min: the fewest workers the job runs with (an elastic job's floor, a gang's whole size, an elastic
    jax job's group); max: the most it is scaled to. Empty for an invalid spec."""
    found = min_max_workers(raw_spec, sizing, desired)
    return {} if found is None else {"min": found[0], "max": found[1]}


# ------------------------------------------------------------------------------------------ latencies


def first_admission(observation: JobObservation, decision: Decision) -> float | None:
    """Seconds from creation to admission, when this decision admits a job never admitted before."""
    previous = observation.status
    if previous.get("startTime") or (previous.get("gang") or {}).get("retries"):
        return None  # it ran, or its gang timed out: it was admitted before
    if previous.get("checkpointRequests"):
        return None  # workers were asked to checkpoint: they ran
    before = _previous_condition(previous, ConditionType.ADMITTED)
    if before is not None and (before.get("status") == "True" or before.get("reason") in _LEFT_ADMISSION):
        return None
    return _since_creation(observation, decision.status.conditions, ConditionType.ADMITTED)


def first_run(observation: JobObservation, decision: Decision) -> float | None:
    """Seconds from creation to its minimum of workers running (condition Running), the first time."""
    previous = observation.status
    if previous.get("startTime"):
        return None  # every worker ran before
    before = _previous_condition(previous, ConditionType.RUNNING)
    if before is not None and before.get("status") == "True":
        return None
    return _since_creation(observation, decision.status.conditions, ConditionType.RUNNING)


def _previous_condition(status: Mapping[str, object], condition_type: str) -> Mapping[str, object] | None:
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return None
    return next(
        (item for item in conditions if isinstance(item, Mapping) and item.get("type") == condition_type),
        None,
    )


def _since_creation(
    observation: JobObservation, conditions: Sequence[Condition], condition_type: str
) -> float | None:
    """Creation, or the last resume (a suspension starts the wait again, as Kueue's requeue does), to the
    condition's transition to True; None when it is not True or a time is missing."""
    condition = next((item for item in conditions if item.type == condition_type), None)
    if condition is None or condition.status != "True" or observation.created is None:
        return None
    became_true: datetime | None = parse_rfc3339(condition.last_transition_time)
    if became_true is None:
        return None
    began = observation.created
    suspended = next((item for item in conditions if item.type == ConditionType.SUSPENDED), None)
    resumed = (
        parse_rfc3339(suspended.last_transition_time) if suspended and suspended.status == "False" else None
    )
    if resumed is not None and resumed > began:
        began = resumed
    return max(0.0, (became_true - began).total_seconds())
