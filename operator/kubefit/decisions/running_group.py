"""What a running elastic group's new workers must share with it (pure).

An elastic pytorch job keeps its workers when its count changes, and new workers (more of them, or a
replacement) join their torchrun group. Re-planned from the spec, `acceleratorsPerWorker: auto` chose
another device count at the new count, and an edit of `resources.accelerator` or `acceleratorsPerWorker`
(stored where the admission webhook is off) sent new workers to another device: a group of workers of two
sizes, while status.sizing described only the new ones. So while any worker lives, the job is planned
with the accelerator and the device count its workers have; an edit applies when the job starts afresh,
and a sizing warning says so. A fixed group or a jax job restarts every worker for a new count, and is
planned afresh once they are gone (decisions/running.py); while they run, its `auto` accelerator and
count are theirs too: a planner that chooses otherwise now (a new operator version) would otherwise have
the scheduling pass count each running worker at the new count, devices it does not hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubefit.api.models import TrainingJobSpec
from kubefit.decisions.observed import WorkerPod
from kubefit.sizing.catalog import Catalog


@dataclass(frozen=True)
class RunningGroup:
    """The accelerator the job's live workers run on and the devices each requests (None: not known)."""

    accelerator: str | None
    per_worker: int | None


def running_group(previous: Mapping[str, Any], ours: Sequence[WorkerPod]) -> RunningGroup | None:
    """From the last status.sizing, which the workers were created with, while any worker lives."""
    if not any(not pod.terminating and not pod.finished for pod in ours):
        return None
    return sizing_group(previous)


def sizing_group(previous: Mapping[str, Any]) -> RunningGroup:
    """The group the last status.sizing created workers with (running_group, once a worker is known to live;
    the admission webhook, from the old object's status)."""
    sizing = previous.get("sizing") if isinstance(previous, Mapping) else None
    sizing = sizing if isinstance(sizing, Mapping) else {}
    accelerator, count = sizing.get("accelerator"), sizing.get("acceleratorsPerWorker")
    return RunningGroup(
        accelerator if isinstance(accelerator, str) and accelerator else None,
        count if isinstance(count, int) and not isinstance(count, bool) and count >= 1 else None,
    )


@dataclass(frozen=True)
class KeptSpec:
    """The spec to plan, the warnings for the edits that wait, and whether the device count is the running
    group's rather than the spec's `auto`."""

    spec: TrainingJobSpec
    waiting: list[str]
    count_held: bool = False


def kept_by_running_group(
    spec: TrainingJobSpec, running: RunningGroup | None, catalog: Catalog, device_kept: bool = True
) -> KeptSpec:
    """`spec` with the running group's accelerator and device count for an elastic pytorch job, with a
    warning for each edit that waits; for any other job only in place of `auto`. `device_kept`: whether an `auto` job stays on the workers' accelerator
    (decisions.job.kept_accelerator: not once its nodes are gone); the count is kept only with the device,
    or new workers would take the old count on another device. A running accelerator the catalog no longer
    has keeps nothing: the job is planned afresh."""
    if running is None or running.accelerator is None or catalog.get(running.accelerator) is None:
        return KeptSpec(spec, [])
    resources, waiting = spec.resources, []
    named = resources.accelerator
    if named == "auto" and not device_kept:
        return KeptSpec(spec, [])
    joins = spec.elastic.enabled and spec.framework == "pytorch"  # new workers join the running group
    if not joins and (
        named not in ("auto", running.accelerator)
        or resources.accelerators_per_worker not in ("auto", running.per_worker)
    ):
        return KeptSpec(spec, [])  # an edit of a fixed group: planned afresh, as before
    if named not in ("auto", running.accelerator):
        waiting.append(_waits("resources.accelerator", named, running.accelerator))
        resources = resources.model_copy(update={"accelerator": running.accelerator})
    count = resources.accelerators_per_worker
    if running.per_worker is not None and count != running.per_worker:
        if count != "auto":
            waiting.append(_waits("resources.acceleratorsPerWorker", count, running.per_worker))
        resources = resources.model_copy(update={"accelerators_per_worker": running.per_worker})
    if resources is spec.resources:
        return KeptSpec(spec, [])
    held = count == "auto" and running.per_worker is not None
    return KeptSpec(spec.model_copy(update={"resources": resources}), waiting, held)


def held_count_note(per_worker: int) -> str:
    """Why a job planned with its running workers' device count may not fit at it (an edited model, a
    lower maxReplicas): the count is theirs, not chosen afresh."""
    return (
        f"resources.acceleratorsPerWorker auto is held at {per_worker}, the count each running worker has, "
        "while they run; suspend and resume the job to plan the count afresh"
    )


def _waits(field: str, wanted: object, running: object) -> str:
    return (
        f"spec.{field} {wanted} applies when the job starts afresh: its running workers have {running}, and "
        "new workers join their group; suspend and resume the job to apply it now"
    )
