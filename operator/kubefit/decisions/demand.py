"""What one job asks of the scheduling pass (kubefit.decisions.admission.Demand), from its spec and sizing."""

from __future__ import annotations

from datetime import datetime

from kubefit.api.models import SizingStatus, TrainingJobSpec
from kubefit.builders.naming import JobRef
from kubefit.builders.rendezvous import fixed_world
from kubefit.decisions.admission import Demand
from kubefit.decisions.inventory import Inventory
from kubefit.decisions.workers import WorkerBounds


def job_demand(
    job: JobRef,
    spec: TrainingJobSpec,
    sizing: SizingStatus,
    bounds: WorkerBounds,
    created: datetime,
    inventory: Inventory,
) -> Demand:
    """The demand of a job that fits: its effective minimum and what it wants with unlimited capacity.

    An elastic job asks for at least bounds.floor and at most bounds.desired (replicas within its
    bounds); a non-elastic one for exactly bounds.desired. Its eligible nodes are the placeable nodes
    of the chosen accelerator; None when no node is known at all. An elastic job is granted whole
    TP x PP groups (bounds.step workers each).
    """
    elastic = spec.elastic.enabled
    known = inventory.placeable or inventory.excluded
    eligible = inventory.names_of(sizing.accelerator) if known else None
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
        worker_step=bounds.step if elastic else 1,
        host_kept=spec.framework != "none",
        fixed_world=fixed_world(spec),
    )
