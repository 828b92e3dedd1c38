"""A job whose spec became invalid, or stopped fitting, while its workers run (pure).

Its workers are left alone: a slip in an edit does not cost the training, and they keep the devices they
hold until it is put right (Ready=False says why). The status still says they run: Running follows them,
the phase is Scaling (Pending before they first trained), desiredReplicas counts them, and Admitted stays
as it was. A job not admitted and without workers is Admitted=False for Ready's reason: it is not queued.
The job still follows its workers: it is suspended when spec.runPolicy.suspend says so (read as written,
for a spec that does not parse) unless its training has ended (a worker succeeded), it succeeds once they
have, and its status stops saying Suspended once the suspend is lifted. A worker that fails is replaced, or its group restarted, once the spec is valid
again: those rules need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kubefit.api.conditions import ConditionType, JobPhase, Reason
from kubefit.api.formatting import parse_index_ranges
from kubefit.api.models import Elastic
from kubefit.api.units import rfc3339
from kubefit.decisions.conditions import ConditionUpdate, find_condition, is_true
from kubefit.decisions.draft import Draft, conditions_of, not_running, restarts_of
from kubefit.decisions.observed import POD_SUCCEEDED, WorkerPod
from kubefit.decisions.running import SUSPEND_WAITS
from kubefit.decisions.scheduled import SUSPENDED_WHY, stop_every_worker

if TYPE_CHECKING:
    from kubefit.decisions.job import JobObservation

DEFAULT_GRACE_SECONDS = int(Elastic.model_fields["checkpoint_grace_period_seconds"].default)
# What the spec does wrong, by the reason of Ready=False on the invalid and blocked paths.
_WHY: dict[str, str] = {
    Reason.INVALID_SPEC: "the spec is invalid",
    Reason.DOES_NOT_FIT: "the job does not fit",
    Reason.TOO_FEW_WORKERS: "spec.workers allows too few workers",
}


def with_held_workers(draft: Draft, observation: JobObservation, ours: Sequence[WorkerPod]) -> Draft:
    """The invalid or blocked path's `draft`, with what the job's workers still ask of it."""
    raw = observation.spec if isinstance(observation.spec, Mapping) else {}
    sized = [update for update in draft.updates if update.type == ConditionType.SIZED]
    present = [pod for pod in ours if not pod.terminating]
    if _section(raw, "runPolicy").get("suspend") is True:
        if not _training_ended(raw, present, observation.status):
            return stop_every_worker(observation, ours, _grace(raw), Reason.SUSPENDED, SUSPENDED_WHY, sized)
        if any(not pod.finished for pod in present):
            draft.message = SUSPEND_WAITS
    if present and all(pod.phase == POD_SUCCEEDED for pod in present):
        return _succeeded(observation, present, sized)
    conditions = conditions_of(observation.status)
    if is_true(conditions, ConditionType.SUSPENDED):
        message = "spec.runPolicy.suspend is false"
        draft.updates.append(ConditionUpdate(ConditionType.SUSPENDED, "False", Reason.RESUMED, message))
    held = _held_count(present)
    ready = (update for update in draft.updates if update.type == ConditionType.READY)
    reason = next((update.reason for update in ready), Reason.INVALID_SPEC)
    if not held:
        if not is_true(conditions, ConditionType.ADMITTED):
            # Out of the queue (no demand): not "waiting for the operator's scheduling pass" for ever.
            why = f"{_WHY[reason]}: not queued until the spec is fixed"
            draft.updates.append(ConditionUpdate(ConditionType.ADMITTED, "False", reason, why))
        return draft
    draft.desired = held
    live = [pod for pod in present if not pod.finished]
    if live:
        running = _held_running(conditions, live, held, _WHY[reason])
        draft.updates = [update for update in draft.updates if update.type != ConditionType.RUNNING]
        draft.updates.append(running)
        trained = observation.status.get("startTime") or running.status == "True"
        draft.phase = JobPhase.SCALING if trained else JobPhase.PENDING
    return draft


def _training_ended(raw: Mapping[str, Any], present: Sequence[WorkerPod], status: Mapping[str, Any]) -> bool:
    """As running.training_ended, read from the spec as written: a worker succeeded (its pod says so, or
    status.succeededWorkers does), and the framework is not none. A suspend then stops nothing, as with a
    valid spec: stopping the group would throw the finished training away and run it again on resume. The
    job succeeds once all its workers have; a worker that failed beside them is judged, as any failure, once
    the spec is valid again."""
    if raw.get("framework", "pytorch") == "none":
        return False
    succeeded = any(pod.phase == POD_SUCCEEDED for pod in present)
    return succeeded or bool(parse_index_ranges(status.get("succeededWorkers")))


def _held_count(present: Sequence[WorkerPod]) -> int:
    """The workers the job runs now (status.desiredReplicas, the Workers column): the world size a fixed
    group's workers were started with, else how many run. It read 0 (and the column `2/-`) while they ran."""
    stamped = [pod.world_size for pod in present if pod.world_size is not None]
    return max(stamped) if stamped else sum(1 for pod in present if pod.phase != POD_SUCCEEDED)


def _held_running(
    conditions: Sequence[Mapping[str, Any]], live: Sequence[WorkerPod], held: int, why: str
) -> ConditionUpdate:
    """Running for workers that run on: True while at least their floor runs (a fixed group's world size,
    an elastic group's lowest torchrun floor). Running=False said no worker ran while they trained, and the
    fixed spec then moved its lastTransitionTime. TrainingEnded stays: the workers left only finish."""
    before = find_condition(conditions, ConditionType.RUNNING) or {}
    if before.get("reason") == Reason.TRAINING_ENDED:
        return ConditionUpdate(
            ConditionType.RUNNING, "False", Reason.TRAINING_ENDED, before.get("message", "")
        )
    ready = [pod for pod in live if pod.ready]
    stamped = [pod.world_size for pod in live if pod.world_size is not None]
    floors = [int(pod.nnodes.split(":")[0]) for pod in ready if pod.nnodes is not None]
    floor = max(stamped) if stamped else min(floors, default=held)
    message = f"{len(ready)}/{held} workers running; they keep running while {why}"
    if ready and len(ready) >= floor:
        return ConditionUpdate(ConditionType.RUNNING, "True", Reason.WORKERS_RUNNING, message)
    return ConditionUpdate(ConditionType.RUNNING, "False", Reason.WORKERS_STARTING, message)


def _succeeded(
    observation: JobObservation, done: Sequence[WorkerPod], sized: Sequence[ConditionUpdate]
) -> Draft:
    """Every worker that ran finished, and well: the training is over whatever the spec says now."""
    message = f"all {len(done)} workers succeeded"
    return Draft(
        phase=JobPhase.SUCCEEDED,
        updates=[
            *sized,
            ConditionUpdate(ConditionType.SUCCEEDED, "True", Reason.ALL_WORKERS_SUCCEEDED, message),
            *not_running(Reason.JOB_SUCCEEDED, message),
        ],
        restarts=restarts_of(observation.status),
        desired=0,
        completion_time=rfc3339(observation.now),
        succeeded_workers=frozenset(pod.index for pod in done if pod.index is not None),
    )


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = raw.get(name)
    return section if isinstance(section, Mapping) else {}


def _grace(raw: Mapping[str, Any]) -> int:
    """spec.elastic.checkpointGracePeriodSeconds as written, its default when it is not a valid count."""
    grace = _section(raw, "elastic").get("checkpointGracePeriodSeconds")
    if isinstance(grace, int) and not isinstance(grace, bool) and grace >= 0:
        return grace
    return DEFAULT_GRACE_SECONDS
