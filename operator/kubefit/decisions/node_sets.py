"""What a scheduling pass reads of the nodes: each node's accelerator and devices, which nodes a placement
may use, and the devices other workloads hold on each. Pure functions of kopf's indexes' facts, with the
caches that let a pass at thousands of nodes skip the nodes whose facts did not change
(docs/performance.md); controller/scheduler.py keeps one of each."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from kubefit.api.resource import JobKey
from kubefit.decisions.admission import Demand, NodeCapacity
from kubefit.decisions.inventory import NodeFacts, PodUsage, classify_nodes
from kubefit.decisions.node_match import Placement
from kubefit.decisions.observed import WorkerPod
from kubefit.sizing.catalog import Catalog


def device_count(quantity: object) -> int:
    try:
        return int(str(quantity))
    except ValueError:
        return 0


class NodeDevices:
    """Per node: its accelerator's name, that accelerator's resource name and the node's devices of it (None
    for a node without a catalog accelerator), remembered while kopf's index holds the same facts object for
    the node: a heartbeat keeps it (handlers.SameFacts), so a pass at 5,000 nodes does not identify and parse
    every node again (docs/performance.md, the seventh round)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._known: dict[str, tuple[NodeFacts, tuple[str, str, int] | None]] = {}

    def __call__(self, node: NodeFacts) -> tuple[str, str, int] | None:
        known = self._known.get(node.name)
        if known is not None and known[0] is node:
            return known[1]
        accelerator = self.catalog.identify(node.labels)
        found = None
        if accelerator is not None:
            resource = accelerator.resource_name
            found = (accelerator.name, resource, device_count(node.allocatable.get(resource, 0)))
        self._known[node.name] = (node, found)
        return found

    def keep_only(self, nodes: Sequence[NodeFacts]) -> None:
        """Forgets removed nodes once they are many (a dict rebuilt now and then, not a check per pass)."""
        if len(self._known) > 2 * len(nodes) + 1024:
            names = {node.name for node in nodes}
            self._known = {name: known for name, known in self._known.items() if name in names}


class NodeGenerations:
    """A number that changes whenever any node's facts change (kopf's index replaces a node's facts
    object on every change, so the same objects mean the same facts).

    It keeps the objects it compared, so none can be freed and its id() given to a new node's facts: a
    fingerprint of ids alone could match facts it had never seen."""

    def __init__(self) -> None:
        self._seen: tuple[NodeFacts, ...] = ()
        self._generation = 0

    def of(self, nodes: Iterable[NodeFacts]) -> int:
        current = tuple(sorted(nodes, key=lambda node: node.name))
        if len(current) != len(self._seen) or any(
            a is not b for a, b in zip(current, self._seen, strict=True)
        ):
            self._seen = current
            self._generation += 1
        return self._generation


class EligibleSets:
    """The eligible nodes of each placement for one generation of the nodes, one object per distinct set,
    shared by the jobs (H8: 2,000 jobs x 5,000 node names each would be hundreds of MiB).

    Whether a worker may land on a node depends on that node's facts alone. So when the nodes change, a
    placement's set of the generation before is updated with only the changed nodes (added, removed, new
    facts) checked again: placements x changed nodes, not placements x nodes (one cordon with 200
    placements at 5,000 nodes was 2 s, docs/performance.md). When most nodes changed, or two facts share a
    name, every node is checked again."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._generation = 0
        self._nodes: dict[str, NodeFacts] | None = {}  # of the generation, by name; None: a name twice
        self._interned: dict[frozenset[str], frozenset[str]] = {}
        self._by_placement: dict[str, frozenset[str]] = {}  # by repr(placement)
        self._before: dict[str, frozenset[str]] = {}  # the generation before's, to update
        self._changed: frozenset[str] = frozenset()  # the names whose facts changed since then
        self._changed_nodes: list[NodeFacts] = []  # their facts now (a removed node has none)

    def advance(self, generation: int, nodes: Sequence[NodeFacts]) -> None:
        """Starts `generation` of the nodes (NodeGenerations); nothing for the current one."""
        if generation == self._generation:
            return
        current = {node.name: node for node in nodes}
        before, before_sets = self._nodes, self._by_placement
        self._generation, self._nodes = generation, current if len(current) == len(nodes) else None
        self._by_placement, self._interned, self._before = {}, {}, {}
        if self._nodes is None or before is None:
            return
        changed = {name for name, node in current.items() if before.get(name) is not node}
        changed.update(name for name in before if name not in current)
        if 2 * len(changed) <= len(current):
            self._before, self._changed = before_sets, frozenset(changed)
            self._changed_nodes = [current[name] for name in changed if name in current]

    def intern(self, names: frozenset[str]) -> frozenset[str]:
        """The one object of this generation equal to `names`."""
        return self._interned.setdefault(names, names)

    def of(self, placement: Placement, nodes: Sequence[NodeFacts]) -> frozenset[str]:
        """The accelerator nodes (of `nodes`, this generation's) a worker with `placement` may land on."""
        key = repr(placement)
        found = self._by_placement.get(key)
        if found is not None:
            return found
        before = self._before.get(key)
        if before is None:
            found = eligible_nodes(placement, nodes, self.catalog)
        else:
            # A new object even when equal: a job's planned demand is kept while its set is the same
            # object, and the one of every node (None) may be another set now.
            found = (before - self._changed) | eligible_nodes(placement, self._changed_nodes, self.catalog)
        found = self._by_placement[key] = self.intern(found)
        return found


def eligible_nodes(placement: Placement, nodes: Iterable[NodeFacts], catalog: Catalog) -> frozenset[str]:
    """Accelerator nodes a worker with `placement` may land on (nodeSelector, affinity, taints, cordon)."""
    return frozenset(node.name for node, _, admitted in classify_nodes(nodes, catalog, placement) if admitted)


def node_capacity(  # noqa: PLR0913 - what the pass reads, and how it identifies nodes
    nodes: Iterable[NodeFacts],
    usage: Mapping[str, Iterable[PodUsage]],
    catalog: Catalog,
    holdings: Mapping[JobKey, Demand],
    workers: Mapping[JobKey, Sequence[WorkerPod]],
    devices_of: Callable[[NodeFacts], tuple[str, str, int] | None] | None = None,
) -> list[NodeCapacity]:
    """Per accelerator node: its devices, and those held by anything but admitted jobs' live workers.
    `devices_of` (NodeDevices): a node's accelerator, resource and devices, remembered between passes."""
    devices_of = devices_of or NodeDevices(catalog)
    held: Counter[str] = Counter()  # node -> devices of admitted jobs' live, bound workers
    for key, demand in holdings.items():
        for pod in workers.get(key, ()):
            if pod.node_name:
                held[pod.node_name] += demand.per_worker
    capacity = []
    for node in nodes:
        devices = devices_of(node)
        if devices is None:
            continue
        accelerator, resource, allocatable = devices
        used = 0
        for bound in usage.get(node.name, ()):
            used += bound.requests.get(resource, 0)
        others = max(0, used - held[node.name]) if used else 0
        capacity.append(NodeCapacity(node.name, accelerator, allocatable, others))
    return capacity


def unread_workers(
    workers: Mapping[JobKey, Sequence[WorkerPod]], usage: Mapping[str, Iterable[PodUsage]]
) -> set[JobKey]:
    """The jobs of `workers` whose pods the usage read shows holding devices where the workers read did not
    have them: created (and bound) between the two reads. Read again, after the usage, their workers are
    at least as new as it (a pod of the job that is no live worker of it, terminating or another's, only
    costs a read)."""
    read = {pod.uid for pods in workers.values() for pod in pods}
    return {
        used.job
        for on_node in usage.values()
        for used in on_node
        if used.job is not None and used.job in workers and used.pod[2] not in read
    }


def bound_as_used(
    workers: Mapping[JobKey, Sequence[WorkerPod]], usage: Mapping[str, Iterable[PodUsage]]
) -> Mapping[JobKey, Sequence[WorkerPod]]:
    """`workers` with each unbound pod's node as the usage read saw it bound. A pass reads the workers, then
    the usage: a bind between the two reads left a job's own worker unbound in the one and holding its
    devices in the other, counted as another workload's while its place was still kept for it (a grant
    lowered, the worker deleted, created again at the next pass)."""
    unbound = {pod.uid for pods in workers.values() for pod in pods if pod.node_name is None}
    if not unbound:
        return workers
    bound = {
        used.pod[2]: used.node_name
        for on_node in usage.values()
        for used in on_node
        if used.pod[2] in unbound
    }
    if not bound:
        return workers
    return {
        key: [replace(pod, node_name=bound[pod.uid]) if pod.uid in bound else pod for pod in pods]
        for key, pods in workers.items()
    }
