"""Planner: choose accelerator type, accelerators per worker and minimum workers for a spec.

PLACEHOLDER: a deliberately simple estimate (16 bytes per parameter plus a fixed reserve) that keeps the
interface stable while the real estimator is written. The signature of `plan` is the contract.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kubefit.api.models import MemoryBreakdown, SizingStatus, TrainingJobSpec
from kubefit.api.validation import FieldError, InvalidSpec
from kubefit.sizing.catalog import Accelerator, Catalog, load_catalog


@dataclass(frozen=True)
class NodeInventory:
    """One node's accelerators, as the cluster reports them."""

    name: str
    accelerator: str  # catalog name
    allocatable: int  # devices the node offers
    free: int  # devices not requested by any pod


def _accelerator(spec: TrainingJobSpec, catalog: Catalog) -> Accelerator | None:
    if spec.resources.accelerator == "auto":
        return None
    found = catalog.get(spec.resources.accelerator)
    if found is None:
        raise InvalidSpec([FieldError(
            "spec.resources.accelerator",
            f"unknown accelerator {spec.resources.accelerator!r}; known: {', '.join(catalog.names())}",
        )])
    return found


def plan(
    spec: TrainingJobSpec,
    catalog: Catalog | None = None,
    inventory: Sequence[NodeInventory] | None = None,
) -> SizingStatus:
    catalog = catalog or load_catalog()
    chosen = _accelerator(spec, catalog) or next(a for a in catalog if a.name == "nvidia-h100-80gb")
    per_worker = spec.resources.accelerators_per_worker
    per_worker = per_worker if isinstance(per_worker, int) else 8
    state = spec.model.memory_bytes or 16 * (spec.model.parameter_count or 0)
    overhead = 2**30
    usable = chosen.memory_bytes * (1 - spec.resources.memory_headroom) - overhead
    devices = max(1, math.ceil(state / usable)) if spec.training.sharding in ("zero3", "fsdp") else 1
    per_device = state // devices + overhead
    return SizingStatus(
        accelerator=chosen.name,
        resource_name=chosen.resource_name,
        device_memory_bytes=chosen.memory_bytes,
        accelerators_per_worker=per_worker,
        min_workers=max(1, math.ceil(devices / per_worker)),
        per_device_bytes=per_device,
        fits=per_device <= chosen.memory_bytes * (1 - spec.resources.memory_headroom),
        breakdown=MemoryBreakdown(
            weights=state // devices, gradients=0, optimizer_states=0, activations=0, logits=0, overhead=overhead
        ),
        warnings=["placeholder estimate: 16 bytes per parameter"],
    )
