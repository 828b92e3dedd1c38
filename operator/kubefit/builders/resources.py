"""CPU and host-memory requests of a worker, and its accelerator request.

Precedence, per quantity: `spec.resources.cpu` / `spec.resources.memory`, else what the template's
first container already requests, else its limit (Kubernetes takes a missing request to be the limit, and
refuses a pod whose request exceeds it; api.validation refuses a spec.resources value above the limit),
else the derived default:
- cpu: 8 cores per accelerator, at most 96 (data loaders and the host side of the step);
- memory: 16Gi per accelerator plus the training state offloaded to the host (sized in decisions.job_sizing,
  which warns when a memory given above is below that state);
- each of the two held, but for the offloaded state, to NODE_SHARE of what the job's nodes offer per device
  (HostShare): an 8-vCPU node with one GPU (AWS g5.2xlarge, GKE g2-standard-8) has under 8 cores
  allocatable, and a request of 8 would leave its worker Pending for good.
The accelerator count is always the sizing decision's, as both request and limit (extended resources
cannot be overcommitted, so Kubernetes requires the two to be equal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kubefit.api.models import SizingStatus, TrainingJobSpec
from kubefit.api.units import GIB, MIB

CPU_PER_ACCELERATOR = 8
MAX_DEFAULT_CPU = 96
HOST_MEMORY_PER_ACCELERATOR = 16 * GIB
# Of a node's allocatable CPU and memory per device, what a default takes at most: the rest is for the node's
# daemon pods (device plugin, exporters, log and network agents), which request their own.
NODE_SHARE = 0.9


@dataclass(frozen=True)
class HostShare:
    """What the job's nodes offer per device: allocatable CPU and memory over devices, of the node that
    offers least (0: not known)."""

    cpu_millis: int = 0
    memory_bytes: int = 0


def default_cpu(accelerators: int, share: HostShare | None = None) -> str:
    count = max(1, accelerators)
    millis = min(MAX_DEFAULT_CPU, CPU_PER_ACCELERATOR * count) * 1000
    if share is not None and share.cpu_millis > 0:
        millis = max(1, min(millis, int(share.cpu_millis * count * NODE_SHARE)))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def default_memory(accelerators: int, offloaded_bytes: int = 0, share: HostShare | None = None) -> str:
    count = max(1, accelerators)
    base = HOST_MEMORY_PER_ACCELERATOR * count
    if share is not None and share.memory_bytes > 0:
        base = max(MIB, min(base, int(share.memory_bytes * count * NODE_SHARE)))
    return f"{math.ceil((base + max(0, offloaded_bytes)) / MIB)}Mi"


def worker_resources(
    container_resources: dict[str, Any] | None,
    spec: TrainingJobSpec,
    sizing: SizingStatus,
    offloaded_bytes: int = 0,
    share: HostShare | None = None,
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
    requests.setdefault("cpu", limits.get("cpu", default_cpu(accelerators, share)))
    memory = given_memory(given, spec)
    requests["memory"] = default_memory(accelerators, offloaded_bytes, share) if memory is None else memory[1]

    requests[sizing.resource_name] = str(accelerators)
    limits[sizing.resource_name] = str(accelerators)
    return resources


def given_memory(container_resources: dict[str, Any] | None, spec: TrainingJobSpec) -> tuple[str, Any] | None:
    """The field that gives the worker's memory request and its value: spec.resources.memory, else the first
    container's request, else its limit; None where the default (which adds the offloaded state) applies."""
    if spec.resources.memory is not None:
        return "spec.resources.memory", str(spec.resources.memory)
    given = container_resources if isinstance(container_resources, dict) else {}
    for kind in ("requests", "limits"):
        values = given.get(kind)
        if isinstance(values, dict) and "memory" in values:
            return f"spec.template.spec.containers[0].resources.{kind}.memory", values["memory"]
    return None


def _copied(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}
