"""What one job asks of the scheduling pass (kubefit.decisions.admission.Demand), from its spec and sizing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kubefit.api.models import SizingStatus, TrainingJobSpec
from kubefit.builders.naming import JobRef
from kubefit.decisions.admission import Demand
from kubefit.decisions.workers import WorkerBounds
from kubefit.sizing.planner import NodeInventory


def job_demand(
    job: JobRef,
    spec: TrainingJobSpec,
    sizing: SizingStatus,
    bounds: WorkerBounds,
    created: datetime,
    nodes: tuple[Sequence[NodeInventory], Sequence[NodeInventory]],
) -> Demand:
    """The demand of a job that fits: its effective minimum and what it wants with unlimited capacity.

    An elastic job asks for at least bounds.floor and at most bounds.desired (replicas within its
    bounds); a non-elastic one for exactly bounds.desired. Its eligible nodes are the placeable nodes
    (`nodes` = placeable, excluded) of the chosen accelerator; None when no node is known at all.
    """
    placeable, excluded = nodes
    elastic = spec.elastic.enabled
    eligible = (
        frozenset(node.name for node in placeable if node.accelerator == sizing.accelerator)
        if placeable or excluded
        else None
    )
    return Demand(
        key=(job.namespace, job.name),
        priority=spec.scheduling.priority,
        created=created.timestamp(),
        accelerator=sizing.accelerator,
        per_worker=sizing.accelerators_per_worker,
        min_workers=bounds.floor if elastic else bounds.desired,
        want_workers=bounds.desired,
        elastic=elastic,
        preemption=spec.scheduling.preemption,
        eligible_nodes=eligible,
    )
