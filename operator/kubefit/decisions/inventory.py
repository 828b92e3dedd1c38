"""Accelerator inventory of the cluster, from node and pod manifests (what the planner sees).

free = allocatable - the accelerator requests of non-terminated pods bound to the node. Only the nodes a
worker pod could land on are offered to the planner: the others are kept apart, so that the job's status
can say why the planner did not see them (decisions/node_match.py holds the rules). A host of a multi-host
TPU slice is no accelerator node here: kubefit forms no such slice (docs/operator.md, "TPUs").
"""

from __future__ import annotations

import functools
import itertools
import operator
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubefit.api.quantity import parse_bytes, parse_cpu_millis
from kubefit.builders.naming import JOB_LABEL
from kubefit.decisions.node_match import ANYWHERE, UNSCHEDULABLE_TAINT, Placement, Taint, node_taints
from kubefit.decisions.observed import POD_FINISHED_PHASES
from kubefit.decisions.pod_requests import count_quantity as _count
from kubefit.decisions.pod_requests import effective_requests
from kubefit.sizing.catalog import TPU_RESOURCE, Accelerator, Catalog, is_multi_host_slice_host
from kubefit.sizing.planner import AcceleratorPool, NodeInventory, pool_inventory, with_changed_nodes


@dataclass(frozen=True)
class NodeFacts:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, str] = field(default_factory=dict)
    schedulable: bool = True
    taints: tuple[Taint, ...] = ()
    uid: str = ""  # a node deleted and registered again under its name is another node
    # Its Ready condition is True. Read with the other facts, so that a pass never counts a NotReady node
    # the index holds before the node's event reaches the scheduler (at the operator's start).
    ready: bool = True
    capacity: Mapping[str, str] = field(default_factory=dict)  # the devices a node has (allocatable: offers)

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
        uid=metadata.get("uid", ""),
        ready=node_is_ready(node),
        capacity=dict((node.get("status") or {}).get("capacity") or {}),
    )


def node_is_ready(node: Mapping[str, Any]) -> bool:
    """The node's Ready condition is True (the kubelet reports in)."""
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(
        isinstance(item, Mapping) and item.get("type") == "Ready" and item.get("status") == "True"
        for item in conditions
    )


@dataclass(frozen=True)
class PodUsage:
    """The accelerators one bound, non-terminated pod holds on its node."""

    node_name: str
    requests: Mapping[str, int]
    job: tuple[str, str] | None = None  # (namespace, TrainingJob name) for a kubefit worker
    pod: tuple[str, str, str] = ("", "", "")  # (namespace, name, uid): to drop it if it goes unseen


def pod_usage(pod: Mapping[str, Any]) -> PodUsage | None:
    """What a bound, non-terminated pod requests of extended resources; None for any other pod."""
    spec = pod.get("spec") or {}
    node_name = spec.get("nodeName")
    if not node_name or (pod.get("status") or {}).get("phase") in POD_FINISHED_PHASES:
        return None
    metadata = pod.get("metadata") or {}
    job_name = (metadata.get("labels") or {}).get(JOB_LABEL)
    job = (metadata.get("namespace", ""), job_name) if job_name else None
    pod_key = (metadata.get("namespace", ""), metadata.get("name", ""), metadata.get("uid", ""))
    return PodUsage(node_name, dict(effective_requests(spec)), job, pod_key)


@dataclass(frozen=True)
class Inventory:
    placeable: list[NodeInventory]  # accelerator nodes a worker pod could land on, by name
    excluded: list[
        NodeInventory
    ]  # the others: nodeSelector, required node affinity or a taint rules them out
    # What is worked out from `placeable` once: its pools, and its node names per accelerator (shared by
    # the inventories of one snapshot that differ only in free devices: InventoryMemo).
    known_pools: dict[str, AcceleratorPool] | None = field(default=None, compare=False, repr=False)
    names: dict[str, frozenset[str]] = field(default_factory=dict, compare=False, repr=False)

    def only(self, accelerator: str) -> Inventory:
        """The inventory with `accelerator`'s placeable nodes alone (the excluded ones kept, for warnings)."""
        pools = self.pools
        return Inventory(
            [node for node in self.placeable if node.accelerator == accelerator],
            self.excluded,
            known_pools={accelerator: pools[accelerator]} if accelerator in pools else {},
        )

    @property
    def pools(self) -> dict[str, AcceleratorPool]:
        """pool_inventory(placeable), worked out on first use."""
        if self.known_pools is None:
            object.__setattr__(self, "known_pools", pool_inventory(self.placeable))
        assert self.known_pools is not None
        return self.known_pools

    def names_of(self, accelerator: str) -> frozenset[str]:
        """The placeable nodes of `accelerator`, by name."""
        found = self.names.get(accelerator)
        if found is None:
            found = self.names[accelerator] = frozenset(
                node.name for node in self.placeable if node.accelerator == accelerator
            )
        return found


EMPTY_INVENTORY = Inventory([], [])


def _node_inventory(
    node: NodeFacts, accelerator: Accelerator, usage: Iterable[PodUsage], for_job: tuple[str, str] | None
) -> NodeInventory:
    allocatable = _count(node.allocatable.get(accelerator.resource_name, 0))
    used = sum(
        pod.requests.get(accelerator.resource_name, 0)
        for pod in usage
        if for_job is None or pod.job != for_job
    )
    return NodeInventory(node.name, accelerator.name, allocatable, max(0, allocatable - used), *_host(node))


def _host(node: NodeFacts) -> tuple[int, int]:
    """The node's allocatable CPU (millicores) and memory (bytes); 0 for one it does not state well."""
    return _parsed_host(str(node.allocatable.get("cpu", 0)), str(node.allocatable.get("memory", 0)))


@functools.lru_cache(maxsize=4096)
def _parsed_host(cpu: str, memory: str) -> tuple[int, int]:
    # Remembered: a cluster has few node shapes, and every snapshot of the inventory reads every node.
    found = []
    for value, parse in ((cpu, parse_cpu_millis), (memory, parse_bytes)):
        try:
            found.append(parse(value))
        except ValueError:
            found.append(0)
    return found[0], found[1]


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
        accelerator = usable_accelerator(node, catalog)
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


def usable_accelerator(node: NodeFacts, catalog: Catalog) -> Accelerator | None:
    """The catalog accelerator the node carries, None for none; None too for a host of a multi-host TPU
    slice (its topology label counts more chips than the node has): no worker could use it alone."""
    accelerator = catalog.identify(node.labels)
    if accelerator is None or accelerator.resource_name != TPU_RESOURCE:
        return accelerator
    chips = node.capacity.get(TPU_RESOURCE, node.allocatable.get(TPU_RESOURCE, 0))
    return None if is_multi_host_slice_host(node.labels, _count(chips)) else accelerator


def _by_name(entries: list[NodeInventory]) -> list[NodeInventory]:
    return sorted(entries, key=lambda entry: entry.name)


# Placements (distinct worker placement rules) whose admitted nodes InventoryMemo keeps per snapshot of the
# nodes: a byte per accelerator node each (5 kB at 5,000 nodes), so a resync over many placements keeps them.
REMEMBERED_PLACEMENTS = 1024
# Sets of admitted nodes whose inventory InventoryMemo keeps per snapshot: each is two lists of the node
# entries all of them share (40 kB at 5,000 nodes) and its pools. Placements admitting the same nodes share one.
REMEMBERED_NODE_SETS = 256


class InventoryMemo:
    """build_inventory for the last snapshot of the cluster seen, shared by the reconciles of every job.

    Each reconcile needs the inventory of every accelerator node, and building it (node by node: the
    accelerator, whether the job's workers may land there, the devices other pods hold, then the pools)
    was nearly all of a reconcile that changes nothing at 5,000 nodes (docs/performance.md). Nodes and pods
    change far less often than jobs are reconciled. A snapshot is recognised by the identity of what
    kopf's indexes hold (a node's facts object is kept across heartbeats, a pod's usage is a new object on
    every change of the pod), so any change is a new snapshot and nothing is ever stale. Each node's entry
    is built once per snapshot and shared by the inventories of every placement (entries are never changed:
    a new one replaces one). What depends on the job is applied per call: which nodes its placement admits
    (kept per placement, an inventory kept per set of admitted nodes), and its own workers' devices counted
    as free (new entries for a few nodes, in copies of the lists, and the pools).

    While workers are created, bound and started, nearly every reconcile meets a new snapshot of the pods.
    The pods are compared node by node, and only the nodes whose pods changed are counted again and changed
    in the inventories kept (unless a quarter of the nodes changed: those are built again when asked for).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: _NodeSnapshot | None = None
        self._usage: _UsageSnapshot | None = None
        # For the snapshot pair above: each accelerator node's entry, in _NodeSnapshot order (None: not built
        # yet), and the inventories by the nodes a placement admits (_NodeSnapshot.admitted).
        self._entries: list[NodeInventory] | None = None
        self._base: dict[bytes, Inventory] = {}

    def inventory(
        self,
        nodes: Sequence[NodeFacts],
        usage: Mapping[str, Iterable[PodUsage]],
        catalog: Catalog,
        for_job: tuple[str, str] | None = None,
        placement: Placement = ANYWHERE,
    ) -> Inventory:
        """What build_inventory(nodes, usage, catalog, for_job, placement) returns, equal in content."""
        with self._lock:
            node_snapshot = self._node_snapshot(nodes, catalog)
            usage_snapshot = self._usage_snapshot(usage, node_snapshot)
            admitted = node_snapshot.admitted(placement)
            base = self._base.get(admitted)
            if base is None:
                if len(self._base) >= REMEMBERED_NODE_SETS:
                    self._base = {}
                if self._entries is None:
                    self._entries = node_snapshot.entries(usage_snapshot)
                base = self._base[admitted] = node_snapshot.inventory(admitted, self._entries)
            own = usage_snapshot.by_job.get(for_job) if for_job is not None else None
            return base if not own else node_snapshot.without(base, admitted, own, usage_snapshot)

    def _node_snapshot(self, nodes: Sequence[NodeFacts], catalog: Catalog) -> _NodeSnapshot:
        held = self._nodes
        if held is not None and held.catalog is catalog and _same_objects(held.nodes, nodes):
            return held
        self._nodes, self._entries, self._base = _NodeSnapshot(list(nodes), catalog), None, {}
        return self._nodes

    def _usage_snapshot(
        self, usage: Mapping[str, Iterable[PodUsage]], nodes: _NodeSnapshot
    ) -> _UsageSnapshot:
        held = self._usage
        if held is None:
            self._usage, self._entries, self._base = _UsageSnapshot.of(usage), None, {}
            return self._usage
        updated, changed = held.updated(usage)
        if not changed:
            return held
        self._usage = updated
        if self._entries is None or len(changed) * 4 > len(nodes.accelerator_nodes):
            self._entries, self._base = None, {}
        else:
            self._entries, positions = nodes.recounted(self._entries, changed, updated)
            self._base = {
                admitted: nodes.with_entries(base, admitted, positions, self._entries)
                for admitted, base in self._base.items()
            }
        return updated


def _same_objects(held: Sequence[Any], seen: Sequence[Any]) -> bool:
    """The same objects in the same order (`held` keeps them alive, so their ids are not reused)."""
    return len(held) == len(seen) and all(map(operator.is_, held, seen))


def _placement_key(placement: Placement) -> str:
    return "" if placement is ANYWHERE else repr(placement)


class _UsageSnapshot:
    """The extended resources pods hold: per node, and per node for each job's own workers."""

    def __init__(
        self,
        pods_by_node: dict[str, list[PodUsage]],
        used: dict[str, Counter[str]],
        by_job: dict[tuple[str, str], dict[str, Counter[str]]],
    ) -> None:
        self.pods_by_node = pods_by_node  # the PodUsage objects seen, by node name (kopf's index key)
        self.used = used
        self.by_job = by_job
        self.pods: list[PodUsage] = []  # all of them, in the order seen: one comparison says "no change"

    @classmethod
    def of(cls, usage: Mapping[str, Iterable[PodUsage]]) -> _UsageSnapshot:
        return cls({}, {}, {}).updated(usage)[0]

    def updated(self, usage: Mapping[str, Iterable[PodUsage]]) -> tuple[_UsageSnapshot, set[str]]:
        """This snapshot with `usage` (node name -> its pods) seen instead, and the nodes whose pods changed
        (itself and none when no pod did). Only those nodes are counted again; this one is not changed."""
        every_pod = [pod for bound in usage.values() for pod in bound]
        if _same_objects(self.pods, every_pod):
            return self, set()
        changed: dict[str, list[PodUsage]] = {}
        for node, bound in usage.items():
            pods = list(bound)
            if not _same_objects(self.pods_by_node.get(node, []), pods):
                changed[node] = pods
        changed.update((node, []) for node in self.pods_by_node if node not in usage)
        if not changed:  # the same pods per node, listed in another order of the nodes
            self.pods = every_pod
            return self, set()
        snapshot = self._recounted(changed)
        snapshot.pods = every_pod
        return snapshot, set(changed)

    def _recounted(self, changed: Mapping[str, list[PodUsage]]) -> _UsageSnapshot:
        snapshot = _UsageSnapshot(dict(self.pods_by_node), dict(self.used), dict(self.by_job))
        jobs: dict[tuple[str, str], dict[str, Counter[str]]] = {}  # copies of the jobs' entries changed

        def of_job(job: tuple[str, str]) -> dict[str, Counter[str]]:
            if job not in jobs:
                jobs[job] = dict(self.by_job.get(job, {}))
            return jobs[job]

        for node, pods in changed.items():
            for job in {pod.job for pod in self.pods_by_node.get(node, ()) if pod.job is not None}:
                of_job(job).pop(node, None)
            used: Counter[str] = Counter()
            for pod in pods:
                used.update(pod.requests)
                if pod.job is not None:
                    of_job(pod.job).setdefault(node, Counter()).update(pod.requests)
            snapshot.pods_by_node[node], snapshot.used[node] = pods, used
            if not pods:
                del snapshot.pods_by_node[node], snapshot.used[node]
        for job, per_node in jobs.items():
            snapshot.by_job[job] = per_node
            if not per_node:
                del snapshot.by_job[job]
        return snapshot


class _NodeSnapshot:
    """The accelerator nodes, by name, with their accelerator; which ones each placement admits."""

    def __init__(self, nodes: list[NodeFacts], catalog: Catalog) -> None:
        self.nodes, self.catalog = nodes, catalog
        self.accelerator_nodes = sorted(
            ((node, accelerator) for node in nodes if (accelerator := usable_accelerator(node, catalog))),
            key=lambda entry: entry[0].name,
        )
        self.position = {node.name: index for index, (node, _) in enumerate(self.accelerator_nodes)}
        self.admits: dict[str, bytes] = {}  # by placement: see admitted

    def admitted(self, placement: Placement) -> bytes:
        """A byte per accelerator node, in order: 1 where `placement` admits it, else 0."""
        key = _placement_key(placement)
        found = self.admits.get(key)
        if found is None:
            if len(self.admits) >= REMEMBERED_PLACEMENTS:
                self.admits = {}
            nodes = (node for node, _ in self.accelerator_nodes)
            found = bytes(ok for _, _, ok in classify_nodes(nodes, self.catalog, placement))
            self.admits[key] = found
        return found

    def entries(self, usage: _UsageSnapshot) -> list[NodeInventory]:
        """Each accelerator node's entry, in order, with the free devices `usage` counts."""
        return [
            _node_entry(node, accelerator, usage.used.get(node.name))
            for node, accelerator in self.accelerator_nodes
        ]

    def inventory(self, admitted: bytes, entries: list[NodeInventory]) -> Inventory:
        """The inventory of a placement that admits `admitted`, of the very `entries` (shared, not copied)."""
        placeable = list(itertools.compress(entries, admitted))
        excluded = [entry for entry, ok in zip(entries, admitted, strict=True) if not ok]
        return Inventory(placeable, excluded, pool_inventory(placeable))

    def recounted(
        self, entries: list[NodeInventory], nodes: set[str], usage: _UsageSnapshot
    ) -> tuple[list[NodeInventory], list[int]]:
        """A copy of `entries` with those of `nodes` as `usage` counts them, and the positions that changed
        (an unchanged entry stays the same object, shared with the inventories kept)."""
        entries = list(entries)
        changed = []
        for name in nodes:
            position = self.position.get(name)
            if position is None:
                continue  # not an accelerator node
            node, accelerator = self.accelerator_nodes[position]
            entry = _node_entry(node, accelerator, usage.used.get(name))
            if entry != entries[position]:
                entries[position] = entry
                changed.append(position)
        return entries, changed

    def with_entries(
        self, base: Inventory, admitted: bytes, positions: list[int], entries: list[NodeInventory]
    ) -> Inventory:
        """`base` (of an earlier snapshot of the pods) with its entries at `positions` taken from `entries`."""
        placeable, excluded = list(base.placeable), list(base.excluded)
        changes = []
        for position in positions:
            is_placeable, index = _place(admitted, position)
            if is_placeable:
                changes.append((placeable[index], entries[position]))
                placeable[index] = entries[position]
            else:
                excluded[index] = entries[position]
        return Inventory(placeable, excluded, with_changed_nodes(base.pools, changes), base.names)

    def without(
        self, base: Inventory, admitted: bytes, own: Mapping[str, Counter[str]], usage: _UsageSnapshot
    ) -> Inventory:
        """`base` with the devices a job's own workers hold (`own`: per node) counted as free: new entries
        in copies of its lists, as the entries are shared."""
        placeable, excluded = list(base.placeable), list(base.excluded)
        changes = []
        for name, held in own.items():
            position = self.position.get(name)
            if position is None:
                continue  # not an accelerator node
            is_placeable, index = _place(admitted, position)
            entries = placeable if is_placeable else excluded
            entry = entries[index]
            resource = self.accelerator_nodes[position][1].resource_name
            others = usage.used[name][resource] - held[resource]
            freed = replace(entry, free=max(0, entry.allocatable - others))
            if freed != entry:
                entries[index] = freed
                if is_placeable:
                    changes.append((entry, freed))
        return Inventory(placeable, excluded, with_changed_nodes(base.pools, changes), base.names)


def _place(admitted: bytes, position: int) -> tuple[bool, int]:
    """Whether the accelerator node at `position` is admitted, and its index in that list of the inventory
    (placeable, or excluded): the nodes before it in the same list."""
    before = admitted.count(1, 0, position)
    return (True, before) if admitted[position] else (False, position - before)


def _node_entry(node: NodeFacts, accelerator: Accelerator, used: Mapping[str, int] | None) -> NodeInventory:
    allocatable = _count(node.allocatable.get(accelerator.resource_name, 0))
    free = allocatable - used.get(accelerator.resource_name, 0) if used else allocatable
    return NodeInventory(node.name, accelerator.name, allocatable, max(0, free), *_host(node))
