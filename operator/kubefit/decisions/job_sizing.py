"""The one sizing path: a job's spec, a catalog and (optionally) the cluster's inventory in, status.sizing out.

The operator (decisions.job.decide) and `kubefit size` (cli/size.py, with or without --cluster) both call
`size_job`, so `kubefit size -o json` prints what the operator writes to status.sizing for the same job
and inventory. The steps, in order:

1. plan the spec against the catalog and the nodes a worker pod may land on (sizing.planner.plan);
2. keep the worker count within [floor, ceiling] (decisions.workers.worker_bounds: the counts the
   planner judged the layout at, so the sizing is that of the layout that actually runs);
3. say why the chosen accelerator has no node, when the pod's own placement rules every one out;
4. add the over-provisioning sentence of a fixed layout far bigger than the job needs;
5. estimate the offloaded state each worker holds in host memory, for the pod's memory request, and warn
   when a memory request the spec or the template gives is below it, or when the request (given or the
   default) is above the allocatable memory of every node of the chosen accelerator (the planner reads
   no host memory).
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections import Counter, OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

from kubefit.api.models import DEFAULT_IN_PLACE_RESTARTS, SizingStatus, TrainingJobSpec
from kubefit.api.quantity import exact_quantity, is_quantity
from kubefit.api.units import format_gib
from kubefit.builders.resources import default_memory, given_memory
from kubefit.decisions.draft import host_share
from kubefit.decisions.inventory import Inventory
from kubefit.decisions.workers import WorkerBounds, worker_bounds
from kubefit.sizing.catalog import Catalog
from kubefit.sizing.estimator import Layout, estimate
from kubefit.sizing.planner import NodeInventory, Plan, Pools, SpecCheck, plan_job
from kubefit.sizing.remedies import replace_field
from kubefit.sizing.suggest import overprovisioned

# Over-provisioning sentences remembered, by (catalog, spec, sizing). Working one out plans the job on every
# other accelerator: it was 9% of the operator's CPU in the 200-job benchmark, on every reconcile, for an
# answer that changes only with the spec or the chosen layout (docs/performance.md).
ADVICE_MEMORY = 4096
# Plans remembered, by (catalog, spec, the cluster's pools, the operator's check). A job that does not fit
# is planned again dozens of times for its remedies: 0.1-0.3 s for a realistic spec, seconds for an extreme
# one, on every reconcile (the resync's too) while nothing changed. Enough for every job of a 2,000-job
# cluster twice over; an entry is a digest and a status, about 2 KiB.
PLAN_MEMORY = 4096


@dataclass(frozen=True)
class JobSizing:
    """What sizing a job decides; `sizing` is status.sizing, exactly."""

    sizing: SizingStatus
    bounds: WorkerBounds  # the worker counts memory and spec.workers allow
    evaluated_workers: int  # the worker count sizing.perDeviceBytes was estimated at
    # Training state offloaded to host memory per worker (0 without training.offload), estimated at the
    # fewest workers the job may run with: each worker then holds its largest share, so a worker created
    # at a bigger size still has room for its share after an elastic scale-down.
    host_bytes_per_worker: int
    # The over-provisioning sentence (also among sizing.warnings), for the operator's one-time Event.
    advice: str | None


def size_job(  # noqa: PLR0913 - the spec, the cluster, and how much to work out (as plan_job)
    spec: TrainingJobSpec,
    catalog: Catalog,
    inventory: Inventory | None = None,
    *,
    check: SpecCheck | None = None,
    advise: bool = True,
    has_live_workers: bool = False,
    count_held: bool = False,
) -> JobSizing:
    """Sizes `spec` against `catalog` and, when given, the cluster's `inventory` (None: the whole catalog,
    as if every accelerator were there and free). Raises InvalidSpec naming the field at fault. `advise`
    False leaves out the planner's notes and remedies (plan_job) and the over-provisioning sentence: the
    same errors, far less work for a job that does not fit. `has_live_workers`: the job's workers exist,
    so the planner's notes do not say it queues."""
    # The fields as given: a warning can depend on whether a field was given (loraTargets), not on its value.
    spec_json = spec.model_dump_json(exclude_unset=True)
    pools = _planned_pools(inventory)
    planned = _PLANS.planned(spec, spec_json, catalog, pools, check, (advise, has_live_workers, count_held))
    sizing = planned.sizing
    bounds = worker_bounds(spec, sizing)
    if inventory is not None:
        warning = placement_warning(
            sizing.accelerator, inventory.placeable, inventory.excluded, running=has_live_workers
        )
        if warning is not None:
            sizing = sizing.model_copy(update={"warnings": [*sizing.warnings, warning]})
    # The over-provisioning sentence is advice too: it plans the job on every other accelerator.
    # As the user wrote it: a count held from the running workers is their `auto`, which is never flagged.
    asked, asked_json = spec, spec_json
    if count_held:
        asked = replace_field(spec, "resources.acceleratorsPerWorker", "auto")
        asked_json = asked.model_dump_json(exclude_unset=True)
    advice = _ADVICE.overprovisioned(asked, asked_json, sizing, catalog, _present(pools)) if advise else None
    if advice is not None and advice not in sizing.warnings:
        sizing = sizing.model_copy(update={"warnings": [*sizing.warnings, advice]})
    host_bytes = _host_bytes_per_worker(spec, sizing, bounds, catalog)
    memory_warnings = [
        _offload_memory_warning(spec, host_bytes),
        None if inventory is None else _node_memory_warning(spec, sizing, bounds, catalog, inventory),
        _unread_restarts_warning(spec),
    ]
    for warning in memory_warnings:
        if warning is not None:
            sizing = sizing.model_copy(update={"warnings": [*sizing.warnings, warning]})
    return JobSizing(sizing, bounds, planned.evaluated_workers, host_bytes, advice)


def _unread_restarts_warning(spec: TrainingJobSpec) -> str | None:
    """elastic.maxRestarts set where nothing reads it: only an elastic pytorch worker's PET_MAX_RESTARTS does.
    A warning, not a refusal: a stored job with it would turn InvalidSpec on an upgrade, its failed workers
    then neither restarted nor counted."""
    elastic = spec.elastic
    if elastic.max_restarts == DEFAULT_IN_PLACE_RESTARTS or (elastic.enabled and spec.framework == "pytorch"):
        return None
    why = f"framework is {spec.framework}" if elastic.enabled else "elastic.enabled is false"
    return (
        f"elastic.maxRestarts {elastic.max_restarts} is read only by elastic pytorch jobs ({why}): it limits "
        "nothing here; runPolicy.maxRestarts limits the job's restarts"
    )


class _AdviceMemory:
    """sizing.suggest.overprovisioned, remembered for the last ADVICE_MEMORY (catalog, spec, sizing) asked."""

    def __init__(self, size: int = ADVICE_MEMORY) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple[int, str, str, Hashable], tuple[Catalog, str | None]] = OrderedDict()

    def overprovisioned(
        self, spec: TrainingJobSpec, spec_json: str, sizing: SizingStatus, catalog: Catalog, pools: Pools
    ) -> str | None:
        key = (id(catalog), spec_json, sizing.model_dump_json(), _pools_key(pools))
        with self._lock:
            held = self._answers.get(key)
            if held is not None and held[0] is catalog:  # the catalog itself, not another at a reused id
                self._answers.move_to_end(key)
                return held[1]
        advice = overprovisioned(spec, sizing, catalog, pools)
        with self._lock:
            self._answers[key] = (catalog, advice)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)
        return advice


_ADVICE = _AdviceMemory()


class _PlanMemory:
    """plan_job, remembered for the last PLAN_MEMORY (catalog, spec, pools, check, how) asked, `how` being
    plan_job's (advise, has_live_workers, count_held). The plan depends on nothing else: the pools hold every
    count of the cluster the planner reads (a job's own workers already counted free), and the check is a
    value (decisions.job.OperatorCheck). A catalog is told apart by identity (a reloaded one is another),
    the spec by a digest of its JSON."""

    def __init__(self, size: int = PLAN_MEMORY) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._plans: OrderedDict[Hashable, tuple[Catalog, Plan]] = OrderedDict()

    def planned(  # noqa: PLR0913 - plan_job's inputs, each part of the key
        self,
        spec: TrainingJobSpec,
        spec_json: str,
        catalog: Catalog,
        pools: Pools,
        check: SpecCheck | None,
        how: tuple[bool, bool, bool],
    ) -> Plan:
        digest = hashlib.blake2b(spec_json.encode(), digest_size=16).digest()
        key = (id(catalog), digest, _pools_key(pools), check, how)
        with self._lock:
            held = self._plans.get(key)
            if held is not None and held[0] is catalog:
                self._plans.move_to_end(key)
                return held[1]
        # An InvalidSpec is not remembered: the planner refuses before any estimate, at little cost.
        advise, has_live_workers, count_held = how
        plan = plan_job(
            spec,
            catalog=catalog,
            pools=pools,
            check=check,
            advise=advise,
            has_live_workers=has_live_workers,
            count_held=count_held,
        )
        with self._lock:
            self._plans[key] = (catalog, plan)
            while len(self._plans) > self.size:
                self._plans.popitem(last=False)
        return plan


def _pools_key(pools: Pools) -> Hashable:
    """Everything of `pools` the planner reads, as a value."""
    if pools is None:
        return None
    return tuple(
        sorted(
            (name, pool.nodes, tuple(sorted(pool.allocatable.items())), tuple(sorted(pool.free.items())))
            for name, pool in pools.items()
        )
    )


_PLANS = _PlanMemory()


def _present(pools: Pools) -> Pools:
    """The accelerators the cluster has, as if every device were free: advice (overprovisioned) names a
    device that exists, not one free this moment, or it (and its Event) changed as other jobs came and
    went."""
    if pools is None:
        return None
    return {name: replace(pool, free=Counter(pool.allocatable)) for name, pool in pools.items()}


def _planned_pools(inventory: Inventory | None) -> Pools:
    """The nodes the planner sees, as pools: the placeable ones. When the pod's placement rules out every
    accelerator node there is nothing to choose from, so the whole catalog is planned (and a warning says
    why); a cluster without any accelerator node is planned as empty (the planner warns)."""
    if inventory is None or (not inventory.placeable and inventory.excluded):
        return None
    return inventory.pools


def placement_warning(
    accelerator: str,
    placeable: Sequence[NodeInventory],
    excluded: Sequence[NodeInventory],
    running: bool = False,
) -> str | None:
    """Why the chosen accelerator has no node to run on, when the pod's own placement is the reason; what
    that means for a job whose workers run (`running`: a cordon of their nodes) or one that waits."""
    constraints = "the worker pod's nodeSelector, required node affinity and tolerations, or a cordon"
    waits = (
        "its running workers go on, and a worker it adds or replaces waits for such a node"
        if running
        else "the job waits in the queue, with no worker created"
    )
    if not excluded or any(node.accelerator == accelerator for node in placeable):
        return None
    if not placeable:
        return (
            f"no node matches the pod's placement constraints: {constraints} rule out all "
            f"{len(excluded)} accelerator nodes; sized against the whole catalog, {waits}"
        )
    ruled_out = sum(1 for node in excluded if node.accelerator == accelerator)
    if not ruled_out:
        return None
    return (
        f"no {accelerator} node matches the pod's placement constraints: {constraints} rule out all "
        f"{ruled_out}; {waits}"
    )


def _offload_memory_warning(spec: TrainingJobSpec, host_bytes: int) -> str | None:
    """Why a worker may run out of host memory: a memory request given by the spec or the template is used
    as written (the offloaded state is added only to the default), and here it is below that state."""
    given = given_memory(spec.template["spec"]["containers"][0].get("resources"), spec)
    if host_bytes <= 0 or given is None or not is_quantity(given[1]):
        return None
    field, value = given
    memory = exact_quantity(value)
    if memory is None or memory >= host_bytes:
        return None
    return (
        f"{field} {value} ({format_gib(float(memory))}) is below the {format_gib(host_bytes)} of training "
        f"state each worker offloads to host memory (training.offload: {spec.training.offload}); a given "
        "memory request is used as written, without the offloaded state, so the workers may be evicted or "
        "OOM-killed: raise it, or leave it unset for the default that adds the offloaded state"
    )


def _node_memory_warning(
    spec: TrainingJobSpec, sizing: SizingStatus, bounds: WorkerBounds, catalog: Catalog, inventory: Inventory
) -> str | None:
    """Why no node takes a worker: its memory request, given or the default (which adds the offloaded
    state), is above the allocatable memory of every node of the chosen accelerator that holds a worker.
    The planner reads no host memory, so it may choose such a layout: its workers would stay Pending."""
    given = given_memory(spec.template["spec"]["containers"][0].get("resources"), spec)
    if given is None and spec.training.offload == "none":
        return None  # the default without offloaded state is held to what the nodes offer
    per_worker, accelerator = sizing.accelerators_per_worker, sizing.accelerator
    nodes = [node for node in inventory.placeable if node.accelerator == accelerator]
    largest = max((node.memory_bytes for node in nodes if node.allocatable >= per_worker), default=0)
    if largest <= 0:
        return None  # no node holds a worker (placement_warning, the planner), or its memory is not known
    if given is None:
        return _default_memory_warning(spec, sizing, bounds, catalog, nodes, largest)
    field, value = given
    request = exact_quantity(value) if is_quantity(value) else None
    if request is None or request <= largest:
        return None
    return (
        f"{field} {value} ({format_gib(float(request))}) is above {_largest_node(largest, accelerator)}: no "
        "node takes a worker, so the workers stay Pending; lower it"
    )


def _default_memory_warning(
    spec: TrainingJobSpec,
    sizing: SizingStatus,
    bounds: WorkerBounds,
    catalog: Catalog,
    nodes: list[NodeInventory],
    largest: int,
) -> str | None:
    """_node_memory_warning for the default request, with the worker count whose share would fit."""
    per_worker = sizing.accelerators_per_worker
    share = host_share(nodes, sizing.accelerator, per_worker)

    def default_request(workers: int) -> int:
        offloaded = _host_bytes_per_worker(spec, sizing, bounds, catalog, workers)
        return int(exact_quantity(default_memory(per_worker, offloaded, share)) or 0)

    request, floor = default_request(bounds.floor), bounds.floor
    if request <= largest:
        return None
    offloaded = _host_bytes_per_worker(spec, sizing, bounds, catalog, floor)
    text = (
        f"the default memory request of {format_gib(request)} per worker ({format_gib(offloaded)} of it "
        f"training state offloaded at {floor} worker{'' if floor == 1 else 's'}, training.offload: "
        f"{spec.training.offload}) is above {_largest_node(largest, sizing.accelerator)}: no node takes a "
        "worker, so the workers stay Pending"
    )
    # More workers shard the offloaded state further (under zero3 or fsdp): up to as many as the nodes hold.
    most = sum(node.allocatable // per_worker for node in nodes)
    counts = range(bounds.floor + bounds.step, most + 1, bounds.step)
    index = bisect.bisect_left(counts, True, key=lambda workers: default_request(workers) <= largest)
    if index == len(counts):
        return f"{text}; offload less, or run on nodes with more memory"
    workers = counts[index]
    fields = "workers.replicas and minReplicas" + (", and maxReplicas" if workers > bounds.ceiling else "")
    return f"{text}; at {workers} workers ({fields}) it comes to {format_gib(default_request(workers))}"


def _largest_node(memory_bytes: int, accelerator: str) -> str:
    return f"the {format_gib(memory_bytes)} allocatable on the largest {accelerator} node"


def _host_bytes_per_worker(
    spec: TrainingJobSpec,
    sizing: SizingStatus,
    bounds: WorkerBounds,
    catalog: Catalog,
    workers: int | None = None,
) -> int:
    device = catalog.get(sizing.accelerator)
    if spec.training.offload == "none" or device is None:
        return 0
    # More workers shard the offloaded state further: the fewest the job may run with hold the most. The
    # floor is in whole TP x PP groups; above the ceiling (no worker starts) it is still the count to show.
    layout = Layout(
        devices_per_worker=sizing.accelerators_per_worker,
        workers=bounds.floor if workers is None else workers,
    )
    return estimate(spec, device, layout).host_bytes_per_worker
