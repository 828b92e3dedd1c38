"""Accelerator inventory of the cluster, from node and pod manifests (what the planner sees).

free = allocatable - the accelerator requests of non-terminated pods bound to the node. Only the nodes a
worker pod could land on are offered to the planner: the others are kept apart, so that the job's status
can say why the planner did not see them (decisions/node_match.py holds the rules).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubefit.builders.naming import JOB_LABEL
from kubefit.decisions.node_match import ANYWHERE, UNSCHEDULABLE_TAINT, Placement, Taint, node_taints
from kubefit.decisions.observed import POD_FINISHED_PHASES
from kubefit.sizing.catalog import Accelerator, Catalog
from kubefit.sizing.planner import NodeInventory


@dataclass(frozen=True)
class NodeFacts:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, str] = field(default_factory=dict)
    schedulable: bool = True
    taints: tuple[Taint, ...] = ()

    @property
    def scheduling_taints(self) -> tuple[Taint, ...]:
        """The taints, with the one the scheduler reads a cordon as."""
        return self.taints if self.schedulable else (*self.taints, UNSCHEDULABLE_TAINT)


def node_facts(node: Mapping[str, Any]) -> NodeFacts:
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    return NodeFacts(
        name=metadata.get("name", ""),
        labels=dict(metadata.get("labels") or {}),
        allocatable=dict((node.get("status") or {}).get("allocatable") or {}),
        schedulable=not spec.get("unschedulable", False),
        taints=node_taints(spec),
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


@dataclass(frozen=True)
class Inventory:
    placeable: list[NodeInventory]  # accelerator nodes a worker pod could land on, by name
    excluded: list[
        NodeInventory
    ]  # the others: nodeSelector, required node affinity or a taint rules them out


def _node_inventory(
    node: NodeFacts, accelerator: Accelerator, usage: Iterable[PodUsage], for_job: tuple[str, str] | None
) -> NodeInventory:
    allocatable = _count(node.allocatable.get(accelerator.resource_name, 0))
    used = sum(
        pod.requests.get(accelerator.resource_name, 0)
        for pod in usage
        if for_job is None or pod.job != for_job
    )
    return NodeInventory(node.name, accelerator.name, allocatable, max(0, allocatable - used))


def build_inventory(
    nodes: Iterable[NodeFacts],
    usage: Mapping[str, Iterable[PodUsage]],
    catalog: Catalog,
    for_job: tuple[str, str] | None = None,
    placement: Placement = ANYWHERE,
) -> Inventory:
    """One NodeInventory per node that carries a catalog accelerator, split by `placement`.

    `usage` maps node names to the pods bound there. The accelerators of `for_job`'s own workers count as
    free: sizing a running job must not change because its own workers now occupy the nodes. A worker
    gets the template's tolerations plus the one the pod builder adds for the node's accelerator.
    """
    placeable: list[NodeInventory] = []
    excluded: list[NodeInventory] = []
    for node, accelerator, admitted in classify_nodes(nodes, catalog, placement):
        entry = _node_inventory(node, accelerator, usage.get(node.name, ()), for_job)
        (placeable if admitted else excluded).append(entry)
    return Inventory(_by_name(placeable), _by_name(excluded))


def classify_nodes(
    nodes: Iterable[NodeFacts], catalog: Catalog, placement: Placement
) -> Iterator[tuple[NodeFacts, Accelerator, bool]]:
    """Each node that carries a catalog accelerator, with it, and whether a worker with `placement` may land
    there: the template's tolerations plus the one the pod builder adds for that accelerator."""
    tolerations: dict[str, list[dict[str, Any]]] = {}  # by resource name: a few accelerators, many nodes
    for node in nodes:
        accelerator = catalog.identify(node.labels)
        if accelerator is None:
            continue
        resource = accelerator.resource_name
        if resource not in tolerations:
            tolerations[resource] = placement.tolerations_on(resource)
        yield (
            node,
            accelerator,
            placement.admits(node.name, node.labels, node.scheduling_taints, tolerations[resource]),
        )


def _by_name(entries: list[NodeInventory]) -> list[NodeInventory]:
    return sorted(entries, key=lambda entry: entry.name)
