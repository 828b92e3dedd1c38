"""A job whose spec became invalid, or stopped fitting, while its workers run (pure).

Its workers are left alone: a slip in an edit does not cost the training, and they keep the devices they
hold until it is put right (Ready=False says why). The job still follows them: it is suspended when
spec.runPolicy.suspend says so (read as written, for a spec that does not parse), it succeeds once they
have, and its status stops saying Suspended once the suspend is lifted. A worker that fails is replaced,
or its group restarted, once the spec is valid again: those rules need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kubefit.api.conditions import ConditionType, JobPhase, Reason
from kubefit.api.models import Elastic
from kubefit.api.units import rfc3339
from kubefit.decisions.conditions import ConditionUpdate, is_true
from kubefit.decisions.draft import Draft, not_running, restarts_of
from kubefit.decisions.observed import POD_SUCCEEDED, WorkerPod
from kubefit.decisions.scheduled import SUSPENDED_WHY, stop_every_worker

if TYPE_CHECKING:
    from kubefit.decisions.job import JobObservation

DEFAULT_GRACE_SECONDS = int(Elastic.model_fields["checkpoint_grace_period_seconds"].default)


def with_held_workers(draft: Draft, observation: JobObservation, ours: Sequence[WorkerPod]) -> Draft:
    """The invalid or blocked path's `draft`, with what the job's workers still ask of it."""
    raw = observation.spec if isinstance(observation.spec, Mapping) else {}
    sized = [update for update in draft.updates if update.type == ConditionType.SIZED]
    if _section(raw, "runPolicy").get("suspend") is True:
        return stop_every_worker(observation, ours, _grace(raw), Reason.SUSPENDED, SUSPENDED_WHY, sized)
    present = [pod for pod in ours if not pod.terminating]
    if present and all(pod.phase == POD_SUCCEEDED for pod in present):
        return _succeeded(observation, present, sized)
    conditions = observation.status.get("conditions") or []
    if is_true(conditions, ConditionType.SUSPENDED):
        message = "spec.runPolicy.suspend is false"
        draft.updates.append(ConditionUpdate(ConditionType.SUSPENDED, "False", Reason.RESUMED, message))
    if draft.desired is None and present:
        draft.desired = _held_count(present)
    return draft


def _held_count(present: Sequence[WorkerPod]) -> int:
    """The workers the job runs now (status.desiredReplicas, the Workers column): the world size a fixed
    group's workers were started with, else how many run. It read 0 (and the column `2/-`) while they ran."""
    stamped = [pod.world_size for pod in present if pod.world_size is not None]
    return max(stamped) if stamped else sum(1 for pod in present if pod.phase != POD_SUCCEEDED)


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
