"""Accelerator inventory of the cluster, from node and pod manifests (what the planner sees).

free = allocatable - the accelerator requests of non-terminated pods bound to the node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubefit.builders.naming import JOB_LABEL
from kubefit.decisions.observed import POD_FINISHED_PHASES
from kubefit.sizing.catalog import Catalog
from kubefit.sizing.planner import NodeInventory


@dataclass(frozen=True)
class NodeFacts:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, str] = field(default_factory=dict)
    schedulable: bool = True


def node_facts(node: Mapping[str, Any]) -> NodeFacts:
    metadata = node.get("metadata") or {}
    return NodeFacts(
        name=metadata.get("name", ""),
        labels=dict(metadata.get("labels") or {}),
        allocatable=dict((node.get("status") or {}).get("allocatable") or {}),
        schedulable=not (node.get("spec") or {}).get("unschedulable", False),
    )


def _count(quantity: Any) -> int:
    """Extended resources are whole numbers; anything else counts as none."""
    try:
        return int(str(quantity))
    except ValueError:
        return 0


def _is_extended(resource: str) -> bool:
    return "/" in resource and not resource.startswith(("kubernetes.io/", "requests.", "limits."))


@dataclass(frozen=True)
class PodUsage:
    """The accelerators one bound, non-terminated pod holds on its node."""

    node_name: str
    requests: Mapping[str, int]
    job: tuple[str, str] | None = None  # (namespace, TrainingJob name) for a kubefit worker


def pod_usage(pod: Mapping[str, Any]) -> PodUsage | None:
    """What a bound, non-terminated pod requests of extended resources; None for any other pod."""
    spec = pod.get("spec") or {}
    node_name = spec.get("nodeName")
    if not node_name or (pod.get("status") or {}).get("phase") in POD_FINISHED_PHASES:
        return None
    total: Counter[str] = Counter()
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        # An extended resource given only as a limit is requested at that limit.
        amounts = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for resource, quantity in amounts.items():
            if _is_extended(resource):
                total[resource] += _count(quantity)
    metadata = pod.get("metadata") or {}
    job_name = (metadata.get("labels") or {}).get(JOB_LABEL)
    job = (metadata.get("namespace", ""), job_name) if job_name else None
    return PodUsage(node_name, dict(total), job)


def build_inventory(
    nodes: Iterable[NodeFacts],
    usage: Mapping[str, Iterable[PodUsage]],
    catalog: Catalog,
    for_job: tuple[str, str] | None = None,
) -> list[NodeInventory]:
    """One NodeInventory per schedulable node that carries a catalog accelerator.

    `usage` maps node names to the pods bound there. The accelerators of `for_job`'s own workers count as
    free: sizing a running job must not change because its own workers now occupy the nodes.
    """
    inventory = []
    for node in nodes:
        accelerator = catalog.identify(node.labels)
        if accelerator is None or not node.schedulable:
            continue
        allocatable = _count(node.allocatable.get(accelerator.resource_name, 0))
        used = sum(
            pod.requests.get(accelerator.resource_name, 0)
            for pod in usage.get(node.name, ())
            if for_job is None or pod.job != for_job
        )
        inventory.append(NodeInventory(node.name, accelerator.name, allocatable, max(0, allocatable - used)))
    return sorted(inventory, key=lambda entry: entry.name)
