"""CPU and host-memory requests of a worker, and its accelerator request.

Precedence, per quantity: `spec.resources.cpu` / `spec.resources.memory`, else what the template's
first container already requests, else its limit (Kubernetes takes a missing request to be the limit, and
refuses a pod whose request exceeds it; api.validation refuses a spec.resources value above the limit),
else the derived default:
- cpu: 8 cores per accelerator, at most 96 (data loaders and the host side of the step);
- memory: 16Gi per accelerator plus the training state offloaded to the host (sized in decisions.job_sizing).
The accelerator count is always the sizing decision's, as both request and limit (extended resources
cannot be overcommitted, so Kubernetes requires the two to be equal).
"""

from __future__ import annotations

import math
from typing import Any

from kubefit.api.models import SizingStatus, TrainingJobSpec
from kubefit.api.units import GIB, MIB

CPU_PER_ACCELERATOR = 8
MAX_DEFAULT_CPU = 96
HOST_MEMORY_PER_ACCELERATOR = 16 * GIB


def default_cpu(accelerators: int) -> str:
    return str(min(MAX_DEFAULT_CPU, CPU_PER_ACCELERATOR * max(1, accelerators)))


def default_memory(accelerators: int, offloaded_bytes: int = 0) -> str:
    total = HOST_MEMORY_PER_ACCELERATOR * max(1, accelerators) + max(0, offloaded_bytes)
    return f"{math.ceil(total / MIB)}Mi"


def worker_resources(
    container_resources: dict[str, Any] | None,
    spec: TrainingJobSpec,
    sizing: SizingStatus,
    offloaded_bytes: int = 0,
) -> dict[str, Any]:
    """The first container's `resources`, with the accelerator and cpu/memory filled in."""
    # requests and limits are copied to be filled in; anything else (claims) is kept as the template has it.
    given = container_resources or {}
    resources = {key: value for key, value in given.items() if key not in ("requests", "limits")}
    requests = resources["requests"] = _copied(given.get("requests"))
    limits = resources["limits"] = _copied(given.get("limits"))
    accelerators = sizing.accelerators_per_worker

    if spec.resources.cpu is not None:
        requests["cpu"] = str(spec.resources.cpu)
    requests.setdefault("cpu", limits.get("cpu", default_cpu(accelerators)))
    if spec.resources.memory is not None:
        requests["memory"] = str(spec.resources.memory)
    requests.setdefault("memory", limits.get("memory", default_memory(accelerators, offloaded_bytes)))

    requests[sizing.resource_name] = str(accelerators)
    limits[sizing.resource_name] = str(accelerators)
    return resources


def _copied(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}
