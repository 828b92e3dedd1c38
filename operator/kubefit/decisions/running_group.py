"""What a running elastic group's new workers must share with it (pure).

An elastic pytorch job keeps its workers when its count changes, and new workers (more of them, or a
replacement) join their torchrun group. Re-planned from the spec, `acceleratorsPerWorker: auto` chose
another device count at the new count, and an edit of `resources.accelerator` or `acceleratorsPerWorker`
(stored where the admission webhook is off) sent new workers to another device: a group of workers of two
sizes, while status.sizing described only the new ones. So while any worker lives, the job is planned
with the accelerator and the device count its workers have; an edit applies when the job starts afresh,
and a sizing warning says so. A fixed group or a jax job restarts every worker on a count change and is
planned afresh (decisions/running.py).
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
    sizing = previous.get("sizing") if isinstance(previous, Mapping) else None
    sizing = sizing if isinstance(sizing, Mapping) else {}
    accelerator, count = sizing.get("accelerator"), sizing.get("acceleratorsPerWorker")
    return RunningGroup(
        accelerator if isinstance(accelerator, str) and accelerator else None,
        count if isinstance(count, int) and not isinstance(count, bool) and count >= 1 else None,
    )


def kept_by_running_group(
    spec: TrainingJobSpec, running: RunningGroup | None, catalog: Catalog
) -> tuple[TrainingJobSpec, list[str]]:
    """`spec` with the running group's device count, and its accelerator where the spec names another, for
    an elastic pytorch job; with a warning for each edit that waits (an `auto` accelerator is kept on the
    workers' nodes by decisions.job.kept_accelerator instead)."""
    if running is None or not spec.elastic.enabled or spec.framework != "pytorch":
        return spec, []
    resources, notes = spec.resources, []
    named = resources.accelerator
    if running.accelerator is not None and named not in ("auto", running.accelerator):
        if catalog.get(running.accelerator) is not None:
            notes.append(_waits("resources.accelerator", named, running.accelerator))
            resources = resources.model_copy(update={"accelerator": running.accelerator})
    count = resources.accelerators_per_worker
    if running.per_worker is not None and count != running.per_worker:
        if count != "auto":
            notes.append(_waits("resources.acceleratorsPerWorker", count, running.per_worker))
        resources = resources.model_copy(update={"accelerators_per_worker": running.per_worker})
    if resources is spec.resources:
        return spec, []
    return spec.model_copy(update={"resources": resources}), notes


def _waits(field: str, wanted: object, running: object) -> str:
    return (
        f"spec.{field} {wanted} applies when the job starts afresh: its running workers have {running}, and "
        "new workers join their group; suspend and resume the job to apply it now"
    )
