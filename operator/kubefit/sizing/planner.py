"""Planner: choose accelerator type, accelerators per worker and minimum workers for a spec.

`plan(spec)` searches layouts (accelerator, devices per worker, workers) with the estimator and
returns the `status.sizing` object. Rules, in order:

* Candidates: with `resources.accelerator: auto` every catalog accelerator, else the named one; with
  `acceleratorsPerWorker: auto` each count in the accelerator's `perNode`, else the fixed count. With
  an inventory (the cluster's nodes) only accelerator types and per-worker counts that some node can
  hold are considered. With `acceleratorsPerWorker: auto` only counts that are multiples of
  tensorParallel, keeping each tensor-parallel group on one node (pipeline stages may span workers);
  where no candidate offers one, the counts that divide it, with a warning that the groups cross
  nodes (as for a fixed count that is not a multiple). `auto` skips devices that cannot run the spec
  as written (bf16 or fp8 where its catalog entry says the device lacks it, TPUs for framework pytorch) unless nothing else
  is left; a named one gets a warning.
* For each candidate the fewest workers whose estimate fits `device memory x (1 - memoryHeadroom)`.
  The smallest layout is tried first: going from one device to several adds communication buffers.
  Beyond that, per-device memory never grows with more devices (ZeRO/FSDP shard over them, plain data
  parallel replicates), so the search is exponential then binary. Devices come in whole TP x PP groups.
* Each candidate is judged at the worker counts the operator runs it with (`worker_counts`): replicas
  kept within [floor, maxReplicas], the floor being max(minReplicas, the fewest workers that fit). A
  non-elastic job runs exactly that count; an elastic one anything from the floor up to it, so it is
  estimated at the floor, at the count and, when the floor is a single device, at two workers (where
  data-parallel buffers appear), and the largest estimate is the one reported. A candidate fits when
  that estimate fits; `minWorkers` reports the fewest workers that fit.
* The cheapest fitting candidate wins: within workers.maxReplicas (and the cluster's capacity) first,
  then running the replicas asked (not rounded down to whole TP x PP groups), then fewest devices at the
  count it runs, then (with an inventory) placeable on free devices now,
  then the smallest device memory, then fewest workers (more devices per node keeps traffic on the
  node's fast links), then catalog order.
* With both accelerator and acceleratorsPerWorker fixed the one candidate is evaluated the same way;
  `fits` may be false (a replica count too large for plain data parallel, say).
* When memory needs more workers than maxReplicas allows, the layout is chosen by its fewest workers
  that fit (`minWorkers`) but reported at the most workers the spec allows, where it does not fit
  (`fits` false; one TP x PP group spanning more workers than allowed is shown, `fits` false too),
  with a warning naming the bound to raise and one naming the changes that fit within the bounds; the
  operator starts no worker (TooFewWorkers). On a TPU, whose workers form no multi-host slice, more
  workers are no advice: the other TPU layouts that fit within the bounds are named instead.
* When nothing fits, the status carries the best-effort layout, `fits: false` and a warning naming
  the changes that would fit, each found by planning again with the change applied. With an inventory
  a change must land on a layout some node holds (unless the spec as written is planned off the
  cluster already): one that fits only on a device no node carries, or on wider workers than any node
  offers, is no remedy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kubefit.api.formatting import sizing_summary
from kubefit.api.models import SizingStatus, TrainingJobSpec
from kubefit.api.units import format_gib
from kubefit.api.validation import FieldError, InvalidSpec
from kubefit.sizing.catalog import TPU_RESOURCE, Accelerator, Catalog, load_catalog
from kubefit.sizing.estimator import Estimate, Layout, estimate, model_errors
from kubefit.sizing.remedies import REMEDIES, Change, Remedy, always, applicable, describe, replace_field

# What the operator refuses beyond the planner's rules (decisions.job.operator_check: its per-job worker
# limit, the job name's length with its workers' host names): raises InvalidSpec.
SpecCheck = Callable[[TrainingJobSpec], None]
MORE_WORKERS_TRADE_OFF = "more workers: more devices at once"
LARGER_WORKERS_TRADE_OFF = "more devices per worker: each worker needs a node with that many free"
OTHER_TPU_TRADE_OFF = "another TPU layout: different speed and price; the image must support it"
BEYOND_THE_OPERATOR = (
    "than this operator runs per job (kubefit run --max-workers-per-job) or than the job's "
    "name leaves room for in its workers' host names"
)

# Largest layout the search considers. Far above any single job's memory needs: at 4,096 devices ZeRO-3
# already holds a 1T-parameter model's 16 TB of mixed-precision Adam state in 4 GB per device.
MAX_DEVICES = 4096
# At most this many remedies are named in a "does not fit" warning.
MAX_REMEDIES_NAMED = 3


@dataclass(frozen=True)
class NodeInventory:
    """One node's accelerators, as the cluster reports them."""

    name: str
    accelerator: str  # catalog name
    allocatable: int  # devices the node offers
    free: int  # devices not requested by any pod
    # Its allocatable CPU (millicores) and memory (bytes), 0 where not known: what a worker's default cpu
    # and memory requests must fit (builders/resources.py).
    cpu_millis: int = 0
    memory_bytes: int = 0


# ------------------------------------------------------------------ inventory


@dataclass(frozen=True)
class AcceleratorPool:
    """All nodes of one accelerator type, reduced to counts so that queries cost O(distinct sizes)."""

    accelerator: str
    nodes: int
    allocatable: Counter[int]  # devices a node offers -> number of such nodes
    free: Counter[int]  # free devices on a node -> number of such nodes

    @property
    def largest_node(self) -> int:
        return max(self.allocatable, default=0)

    def workers_placeable(self, devices_per_worker: int, *, free_only: bool) -> int:
        """How many workers of `devices_per_worker` fit, each on one node (all devices, or free ones)."""
        counts = self.free if free_only else self.allocatable
        return sum(nodes * (devices // devices_per_worker) for devices, nodes in counts.items())


def pool_inventory(inventory: Iterable[NodeInventory]) -> dict[str, AcceleratorPool]:
    """Group nodes by accelerator type (one pass), so planning never walks the node list again."""
    allocatable: dict[str, Counter[int]] = {}
    free: dict[str, Counter[int]] = {}
    nodes: Counter[str] = Counter()
    for node in inventory:
        if node.allocatable <= 0:
            continue
        allocatable.setdefault(node.accelerator, Counter())[node.allocatable] += 1
        free.setdefault(node.accelerator, Counter())[max(0, min(node.free, node.allocatable))] += 1
        nodes[node.accelerator] += 1
    return {name: AcceleratorPool(name, nodes[name], allocatable[name], free[name]) for name in allocatable}


def with_changed_nodes(
    pools: dict[str, AcceleratorPool], changes: Iterable[tuple[NodeInventory, NodeInventory]]
) -> dict[str, AcceleratorPool]:
    """`pools` with some nodes' entries replaced (old, new: same node, same accelerator and allocatable),
    as pool_inventory would count them; O(changes), where pool_inventory walks every node."""
    free = {name: pool.free for name, pool in pools.items()}
    for old, new in changes:
        if old.allocatable <= 0 or old.free == new.free:
            continue
        counts = free[old.accelerator]
        if counts is pools[old.accelerator].free:
            counts = free[old.accelerator] = Counter(counts)
        counts[max(0, min(old.free, old.allocatable))] -= 1
        counts[max(0, min(new.free, new.allocatable))] += 1
    return {
        name: pool
        if free[name] is pool.free
        else AcceleratorPool(name, pool.nodes, pool.allocatable, +free[name])
        for name, pool in pools.items()
    }


# The cluster's accelerator pools by catalog name; None when planning without an inventory.
Pools = dict[str, AcceleratorPool] | None


def _pool(pools: Pools, accelerator: str) -> AcceleratorPool | None:
    return pools.get(accelerator) if pools is not None else None


# ------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class LayoutEstimate:
    """One layout on one accelerator, with its estimate."""

    accelerator: Accelerator
    layout: Layout
    estimate: Estimate
    usable_bytes: float  # device memory less the headroom

    @property
    def fits(self) -> bool:
        return self.estimate.total <= self.usable_bytes

    @property
    def devices(self) -> int:
        return self.layout.devices

    @property
    def fill(self) -> float:
        """Estimate as a fraction of usable memory (above 1 does not fit)."""
        return self.estimate.total / self.usable_bytes


def usable_bytes(spec: TrainingJobSpec, device: Accelerator) -> float:
    return device.memory_bytes * (1.0 - spec.resources.memory_headroom)


def parallel_group(spec: TrainingJobSpec) -> int:
    """Devices one model replica spans (TP x PP): a layout holds whole groups."""
    return spec.training.tensor_parallel * spec.training.pipeline_parallel


def _worker_step(spec: TrainingJobSpec, devices_per_worker: int) -> int:
    """Worker counts must be multiples of this so that devices split into whole TP x PP groups."""
    group = parallel_group(spec)
    return group // math.gcd(group, devices_per_worker)


def evaluate(
    spec: TrainingJobSpec, device: Accelerator, devices_per_worker: int, workers: int
) -> LayoutEstimate:
    layout = Layout(devices_per_worker=devices_per_worker, workers=workers)
    return LayoutEstimate(device, layout, estimate(spec, device, layout), usable_bytes(spec, device))


def fewest_workers(
    spec: TrainingJobSpec, device: Accelerator, devices_per_worker: int, max_devices: int = MAX_DEVICES
) -> LayoutEstimate | None:
    """The layout with the fewest workers that fits, or None when none up to `max_devices` does."""
    step = _worker_step(spec, devices_per_worker)
    most = max_devices // (devices_per_worker * step)  # largest multiple of step to try
    if most < 1:
        return None

    def at(multiple: int) -> LayoutEstimate:
        return evaluate(spec, device, devices_per_worker, multiple * step)

    smallest = at(1)
    if smallest.fits:
        return smallest
    largest = at(most)
    if not largest.fits:
        return None  # beyond the first step memory per device only shrinks with more devices
    # Exponential search for a fitting multiple, then binary search between the last miss and it.
    missed, multiple = 1, 2
    while True:
        if multiple >= most:
            found, best = most, largest
            break
        attempt = at(multiple)
        if attempt.fits:
            found, best = multiple, attempt
            break
        missed, multiple = multiple, multiple * 2
    while found - missed > 1:
        middle = (missed + found) // 2
        attempt = at(middle)
        if attempt.fits:
            found, best = middle, attempt
        else:
            missed = middle
    return best


# ------------------------------------------------------------------ candidates


def resolve_accelerator(spec: TrainingJobSpec, catalog: Catalog) -> Accelerator | None:
    """The fixed accelerator, None for auto; an unknown name is an InvalidSpec naming the field."""
    name = spec.resources.accelerator
    if name == "auto":
        return None
    found = catalog.get(name)
    if found is None:
        raise InvalidSpec(
            [
                FieldError(
                    "spec.resources.accelerator",
                    f"unknown accelerator {name!r}; known: auto, {', '.join(catalog.names())}",
                )
            ]
        )
    return found


def unsupported(spec: TrainingJobSpec, device: Accelerator) -> str | None:
    """Why `device` cannot run the spec as written, or None. Auto planning skips such devices."""
    precision = spec.model.precision
    # The catalog says which devices have the arithmetic (accelerators.yaml: `bf16`, `fp8`).
    if precision.startswith("bf16") and not device.has_bf16:
        return f"model.precision {precision}: {device.name} has no bf16 arithmetic (its catalog entry: bf16: false)"
    if precision == "fp8-mixed" and not device.has_fp8:
        return f"model.precision fp8-mixed: {device.name} has no FP8 arithmetic (its catalog entry lacks fp8: true)"
    if spec.framework == "pytorch" and device.is_tpu:
        return f"framework pytorch: {device.name} runs PyTorch only through PyTorch/XLA, with its own image"
    return None


def _is_tpu(device: Accelerator) -> bool:
    return device.is_tpu


def breaks(before: TrainingJobSpec, after: TrainingJobSpec, device: Accelerator) -> bool:
    """A change makes `device` unable to run the job (a new incompatibility, e.g. bf16 on a V100)."""
    reason = unsupported(after, device)
    return reason is not None and reason != unsupported(before, device)


@dataclass(frozen=True)
class _Candidate:
    accelerator: Accelerator
    devices_per_worker: int
    order: int  # catalog position, the last tie-break


class NoCandidate(InvalidSpec):
    """No accelerator of the catalog (or of the cluster, when planning strictly against it) offers the
    spec's acceleratorsPerWorker on a node. InvalidSpec only for the spec itself against the catalog;
    the remedy search takes it as "no remedy"."""


def _candidates(
    spec: TrainingJobSpec, catalog: Catalog, pools: Pools, warnings: list[str], *, strict: bool = False
) -> list[_Candidate]:
    """The (device, devices per worker) layouts to plan. With an inventory, those some node can hold;
    when none can, the catalog's, with a warning (`strict`: NoCandidate instead)."""
    candidates = _candidate_list(spec, catalog, pools, warnings)
    count = spec.resources.accelerators_per_worker
    if not candidates and pools is not None:
        if strict:
            raise _no_candidate(f"no node in the cluster offers {count} devices of a catalog accelerator")
        candidates = _candidate_list(spec, catalog, None, [])
        if candidates:
            warnings.append(
                f"no node in the cluster offers {count} devices of an accelerator that can run this job "
                "(resources.acceleratorsPerWorker); sized against the whole catalog, no worker of it can be "
                "placed until such a node joins (a queued job waits in the queue, with none created)"
            )
    if not candidates:
        raise _no_candidate(f"no catalog accelerator offers {count} devices per node")
    return candidates


def _no_candidate(message: str) -> NoCandidate:
    return NoCandidate([FieldError("spec.resources.acceleratorsPerWorker", message)])


def _candidate_list(
    spec: TrainingJobSpec, catalog: Catalog, pools: Pools, warnings: list[str]
) -> list[_Candidate]:
    fixed = resolve_accelerator(spec, catalog)
    order = {name: index for index, name in enumerate(catalog.names())}
    candidates = [
        _Candidate(device, count, order[device.name])
        for device in _candidate_devices(spec, catalog, fixed, pools, warnings)
        for count in _per_worker_counts(spec, device, fixed is None, _pool(pools, device.name))
    ]
    return _tensor_parallel_on_one_node(spec, candidates)


def _tensor_parallel_on_one_node(spec: TrainingJobSpec, candidates: list[_Candidate]) -> list[_Candidate]:
    """With acceleratorsPerWorker auto, the counts per worker that are multiples of tensorParallel: its
    all-reduces, several per layer, need a node's own links (pipeline stages may span workers). Where no
    candidate offers such a count, each device's counts that divide it, so that a group spans whole
    workers (_tensor_parallel_note warns); a fixed count is the user's choice."""
    tensor = spec.training.tensor_parallel
    if tensor == 1 or isinstance(spec.resources.accelerators_per_worker, int):
        return candidates
    on_one_node = [c for c in candidates if c.devices_per_worker % tensor == 0]
    if on_one_node:
        return on_one_node
    dividing = {c.accelerator.name for c in candidates if tensor % c.devices_per_worker == 0}
    return [c for c in candidates if tensor % c.devices_per_worker == 0 or c.accelerator.name not in dividing]


def _candidate_devices(
    spec: TrainingJobSpec, catalog: Catalog, fixed: Accelerator | None, pools: Pools, warnings: list[str]
) -> list[Accelerator]:
    """The fixed device, or for auto the catalog's devices that can run the spec and the cluster has."""
    if fixed is not None:
        if (reason := unsupported(spec, fixed)) is not None:
            warnings.append(reason)
        if pools is not None and fixed.name not in pools:
            warnings.append(
                f"no node in the cluster carries {fixed.name}; the job cannot be placed until one joins"
            )
        return [fixed]
    devices = [device for device in catalog if unsupported(spec, device) is None] or list(catalog)
    if pools is None:
        return devices
    present = [device for device in devices if device.name in pools]
    if not present:
        carried = [device for device in catalog if device.name in pools]
        why = (
            f"no node in the cluster carries an accelerator that can run this job ({unsupported(spec, carried[0])})"
            if carried
            else "no node in the cluster carries a catalog accelerator"
        )
        warnings.append(f"{why}; sized against the whole catalog")
    return present or devices


def _per_worker_counts(
    spec: TrainingJobSpec, device: Accelerator, auto_device: bool, pool: AcceleratorPool | None
) -> list[int]:
    """Devices per worker to try on `device`: the fixed count, or the per-node counts a node can hold."""
    fixed_count = spec.resources.accelerators_per_worker
    if isinstance(fixed_count, int):
        if auto_device and fixed_count not in device.per_node:
            return []  # auto accelerator: only types whose nodes offer that count
        if auto_device and pool is not None and fixed_count > pool.largest_node:
            return []
        return [fixed_count]
    counts = list(device.per_node)
    if pool is None:
        return counts
    return [count for count in counts if count <= pool.largest_node] or counts


def is_fixed_layout(spec: TrainingJobSpec) -> bool:
    """Both the accelerator and the count per worker are named: the planner evaluates, not chooses."""
    return spec.resources.accelerator != "auto" and isinstance(spec.resources.accelerators_per_worker, int)


# ------------------------------------------------------------------ worker counts


@dataclass(frozen=True)
class WorkerCounts:
    """The worker counts a job runs with on one layout (decisions.workers.worker_bounds is this)."""

    floor: int  # max(the spec's floor, the fewest workers memory requires)
    ceiling: int  # the spec's ceiling (maxReplicas)
    desired: int  # replicas kept within [floor, ceiling]; meaningless when not feasible
    step: int = 1  # worker counts come in multiples of this: whole TP x PP groups

    @property
    def feasible(self) -> bool:
        return self.floor <= self.ceiling

    def whole_groups(self, workers: int) -> int:
        """`workers` rounded down to whole TP x PP groups, not below the floor (itself whole groups)."""
        return max(self.floor, workers - workers % self.step)


def worker_counts(spec: TrainingJobSpec, min_workers: int, devices_per_worker: int) -> WorkerCounts:
    """The counts of a layout of `devices_per_worker` on which memory needs at least `min_workers`
    workers, in whole TP x PP groups: a stated minReplicas, a bound the job never runs below, is rounded
    up to a multiple of the step, as is what memory needs; replicas and maxReplicas are rounded down
    (at least one step)."""
    workers, step = spec.workers, _worker_step(spec, devices_per_worker)
    stated = workers.floor
    stated = math.ceil(stated / step) * step if workers.min_replicas is not None else stated - stated % step
    floor = max(math.ceil(min_workers / step) * step, stated, step)
    desired = min(max(workers.replicas, floor), workers.ceiling)
    if desired >= floor:
        desired -= desired % step
    return WorkerCounts(floor, workers.ceiling, desired, step)


def running_counts(spec: TrainingJobSpec, counts: WorkerCounts, devices_per_worker: int) -> list[int]:
    """The worker counts whose estimates the sizing must cover, the desired count first.

    A non-elastic job runs exactly the desired count. An elastic one runs anything from its floor up to
    it: per-device memory only shrinks with more devices once there are two data-parallel replicas
    (ZeRO/FSDP shard over more, plain data parallel replicates), so the floor, the desired count and, when
    the floor is one replica (one device, or one TP x PP group), the count of two replicas (where the
    data-parallel and sharding buffers appear) bound every count in between."""
    if not spec.elastic.enabled:
        return [counts.desired]
    found = [counts.desired, counts.floor]
    if counts.floor * devices_per_worker == parallel_group(spec) and counts.desired >= 2 * counts.floor:
        found.append(2 * counts.floor)
    return list(dict.fromkeys(found))


def _at_counts(
    spec: TrainingJobSpec,
    device: Accelerator,
    devices_per_worker: int,
    counts: WorkerCounts,
    known: LayoutEstimate | None = None,
) -> LayoutEstimate:
    """The largest estimate among the counts the job runs with (the desired count on a tie); `known`, an
    estimate already made on this layout, is reused at its own count."""
    results = [
        known
        if known is not None and known.layout.workers == workers
        else evaluate(spec, device, devices_per_worker, workers)
        for workers in running_counts(spec, counts, devices_per_worker)
    ]
    return max(results, key=lambda result: result.estimate.total)


# ------------------------------------------------------------------ ranking


@dataclass(frozen=True)
class _Option:
    """A candidate planned: its fewest-workers layout, its worker counts and the layout shown."""

    candidate: _Candidate
    fewest: LayoutEstimate | None  # the fewest workers that fit, if any number up to the limit does
    counts: WorkerCounts
    shown: LayoutEstimate  # at the counts the job runs (the fewest that fit when they are not feasible)

    @property
    def fits(self) -> bool:
        return self.shown.fits

    @property
    def workers(self) -> int:
        """Workers the job runs with on this layout (the fewest that fit when the bounds forbid those)."""
        return self.counts.desired if self.counts.feasible else self.shown.layout.workers

    @property
    def devices(self) -> int:
        return self.workers * self.candidate.devices_per_worker

    def rounds_replicas(self, spec: TrainingJobSpec) -> bool:
        """Whether this layout runs fewer workers than asked, to make whole TP x PP groups: a layout that
        runs what was asked is preferred to one that looks cheaper only by dropping workers."""
        counts = self.counts
        asked = min(max(spec.workers.replicas, counts.floor), counts.ceiling)
        return counts.feasible and asked % counts.step != 0

    def needed_workers(self, spec: TrainingJobSpec) -> int:
        """Workers the cluster must place at once: an elastic job's floor, else all it runs."""
        if spec.elastic.enabled and self.counts.feasible:
            return self.counts.floor
        return self.workers

    def key(self, spec: TrainingJobSpec, pools: Pools) -> tuple[Any, ...]:
        per_worker = self.candidate.devices_per_worker
        pool = _pool(pools, self.candidate.accelerator.name)
        needed = self.needed_workers(spec)
        beyond_cluster = pool is not None and pool.workers_placeable(per_worker, free_only=False) < needed
        not_free_now = pool is not None and pool.workers_placeable(per_worker, free_only=True) < needed
        return (
            beyond_cluster,
            not self.counts.feasible,
            self.rounds_replicas(spec),
            self.devices,
            not_free_now,
            self.candidate.accelerator.memory_bytes,
            self.workers,
            self.candidate.order,
        )


def _option(spec: TrainingJobSpec, candidate: _Candidate, fewest: LayoutEstimate | None) -> _Option:
    """`candidate` planned from its fewest workers that fit: the layout at the counts the job runs with;
    with none that fits, at the job's own counts (a best effort)."""
    device, per_worker = candidate.accelerator, candidate.devices_per_worker
    counts = worker_counts(spec, fewest.layout.workers if fewest else 1, per_worker)
    if counts.feasible:
        shown = _at_counts(spec, device, per_worker, counts, fewest)
    else:  # memory (or the TP x PP groups) needs more workers than maxReplicas allows
        shown = fewest or evaluate(spec, device, per_worker, counts.floor)
    return _Option(candidate, fewest, counts, shown)


def _search(spec: TrainingJobSpec, candidates: Sequence[_Candidate], pools: Pools) -> _Option | None:
    """The best candidate that fits at the counts it runs with, or None."""
    best: tuple[tuple[Any, ...], _Option] | None = None
    # Bigger devices and fewer per worker first: a small fitting layout found early bounds the rest.
    ordered = sorted(candidates, key=lambda c: (c.devices_per_worker, -c.accelerator.memory_bytes))
    for candidate in ordered:
        limit = MAX_DEVICES
        if best is not None and not any(best[0][:3]):  # best is placeable, within the bounds, unrounded
            limit = best[1].devices  # a candidate needing more devices cannot win
        fewest = fewest_workers(spec, candidate.accelerator, candidate.devices_per_worker, limit)
        if fewest is None:
            continue
        option = _option(spec, candidate, fewest)
        if not option.fits:
            continue  # fits with fewer workers than it runs with (data-parallel buffers at two devices)
        key = option.key(spec, pools)
        if best is None or key < best[0]:
            best = (key, option)
    return best[1] if best else None


def _best_effort(spec: TrainingJobSpec, candidates: Sequence[_Candidate]) -> _Option:
    """Nothing fits: the candidate closest to fitting at the job's own worker counts, one the worker bounds
    allow first (another, as close, would turn the job's diagnosis into TooFewWorkers)."""
    options = [
        (
            candidate,
            _option(
                spec, candidate, fewest_workers(spec, candidate.accelerator, candidate.devices_per_worker)
            ),
        )
        for candidate in candidates
    ]
    _, option = min(
        options,
        key=lambda pair: (
            not pair[1].counts.feasible,
            pair[1].shown.fill,
            pair[1].shown.devices,
            pair[0].order,
        ),
    )
    return option


# ------------------------------------------------------------------ status


def layout_text(accelerator: str, devices_per_worker: int, workers: int) -> str:
    if workers == 1:
        return f"{devices_per_worker} x {accelerator}"
    return f"{workers} workers x {devices_per_worker} {accelerator}"


# status.sizing goes to the API server, whose integers are int64. The spec's bounds keep every estimate
# finite, but a shape at its maxima (a 16M-token sequence of 65,536 sequences) can still exceed 2^63
# bytes per device; such a figure is reported as the largest int64 rather than refused by the server.
MAX_REPORTED_BYTES = 2**63 - 1


def _reported(value: int) -> int:
    return min(value, MAX_REPORTED_BYTES)


def _status(
    result: LayoutEstimate, min_workers: int, warnings: Iterable[str], fits: bool | None = None
) -> SizingStatus:
    """status.sizing for `result`; `fits` overrides its own verdict (a job that starts no worker)."""
    unique = list(dict.fromkeys([*result.estimate.warnings, *warnings]))
    breakdown = result.estimate.breakdown()
    return SizingStatus(
        accelerator=result.accelerator.name,
        resource_name=result.accelerator.resource_name,
        device_memory_bytes=result.accelerator.memory_bytes,
        accelerators_per_worker=result.layout.devices_per_worker,
        min_workers=min_workers,
        per_device_bytes=_reported(result.estimate.total),
        fits=result.fits if fits is None else fits,
        breakdown=breakdown.model_copy(
            update={name: _reported(value) for name, value in breakdown.model_dump().items()}
        ),
        warnings=unique,
    )


@dataclass(frozen=True)
class _Outcome:
    """The planner's answer before it becomes a status."""

    option: _Option  # the chosen candidate; option.shown is the layout the status describes
    warnings: list[str]

    @property
    def shown(self) -> LayoutEstimate:
        return self.option.shown

    @property
    def fewest(self) -> LayoutEstimate | None:
        """The fewest-workers fitting layout on the shown candidate, if any."""
        return self.option.fewest

    @property
    def min_workers(self) -> int:
        return (self.fewest or self.shown).layout.workers


def _plan(
    spec: TrainingJobSpec, catalog: Catalog, pools: Pools, *, strict: bool = False, count_held: bool = False
) -> _Outcome:
    try:
        return _planned(spec, catalog, pools, strict=strict, count_held=count_held)
    except InvalidSpec as error:
        raise _with_model_errors(error, spec) from None


def _with_model_errors(error: InvalidSpec, spec: TrainingJobSpec) -> InvalidSpec:
    """`error` (of its own class: NoCandidate stays one) with the model's errors it does not name: a
    refusal before any estimate (an unknown accelerator, a count no device offers) hides none of them."""
    named = {found.path for found in error.errors}
    more = [found for found in model_errors(spec) if found.path not in named]
    return type(error)([*error.errors, *more]) if more else error


def _planned(
    spec: TrainingJobSpec, catalog: Catalog, pools: Pools, *, strict: bool, count_held: bool = False
) -> _Outcome:
    """`count_held`: the count per worker is the running workers' where the spec says auto (running_group
    .kept_by_running_group): planned as auto on that one count, which rounds the worker counts to whole
    TP x PP groups with a warning, not as a layout the user wrote, whose counts must be whole groups."""
    warnings: list[str] = []
    candidates = _candidates(spec, catalog, pools, warnings, strict=strict)
    if is_fixed_layout(spec) and not count_held:
        (candidate,) = candidates
        return _plan_fixed(spec, candidate, _pool(pools, candidate.accelerator.name), warnings)
    chosen = _search(spec, candidates, pools) or _best_effort(spec, candidates)
    device, count = chosen.candidate.accelerator, chosen.candidate.devices_per_worker
    pool = _pool(pools, device.name)
    if pool is not None and count > pool.largest_node:  # every per-node count is above the cluster's nodes
        warnings = [*warnings, f"no node offers {count} x {device.name}; the largest has {pool.largest_node}"]
    notes = [
        *_group_notes(spec, chosen),
        *_tensor_parallel_note(spec, chosen, pool, count_held),
        *_tpu_hosts_note(chosen),
    ]
    return _Outcome(chosen, [*warnings, *notes])


def _plan_fixed(
    spec: TrainingJobSpec, candidate: _Candidate, pool: AcceleratorPool | None, warnings: list[str]
) -> _Outcome:
    """Accelerator and count per worker both named: that layout at the counts the job runs with."""
    device, count = candidate.accelerator, candidate.devices_per_worker
    if count not in device.per_node:
        warnings.append(
            f"resources.acceleratorsPerWorker: {count} is not a per-node count the catalog lists for "
            f"{device.name} ({', '.join(map(str, device.per_node))})"
        )
    if pool is not None and count > pool.largest_node:
        warnings.append(f"no node offers {count} x {device.name}; the largest has {pool.largest_node}")
    _check_whole_groups(spec, count)
    option = _option(spec, candidate, fewest_workers(spec, device, count))
    return _Outcome(option, [*warnings, *_tensor_parallel_note(spec, option, pool), *_tpu_hosts_note(option)])


def _tensor_parallel_note(
    spec: TrainingJobSpec, option: _Option, pool: AcceleratorPool | None, count_held: bool = False
) -> list[str]:
    """Workers whose count is not a multiple of tensorParallel: its groups span nodes. A fixed count is
    the user's choice; with auto (a count held from running workers included: plan_job), no node offers
    such a count (_tensor_parallel_on_one_node)."""
    tensor, pipeline = spec.training.tensor_parallel, spec.training.pipeline_parallel
    device, per_worker = option.candidate.accelerator, option.candidate.devices_per_worker
    if per_worker % tensor == 0:
        return []
    lower = math.gcd(tensor, per_worker)
    advice = f"tensorParallel {lower} with pipelineParallel {pipeline * tensor // lower} across nodes"
    if isinstance(spec.resources.accelerators_per_worker, int) and not count_held:
        why = f"resources.acceleratorsPerWorker {per_worker} is not a multiple of tensorParallel {tensor}"
        offered = [count for count in device.per_node if count % tensor == 0]
        if offered:
            advice += f", or acceleratorsPerWorker: {offered[0]},"
    else:
        where = " in the cluster" if pool is not None else ""
        why = f"no {device.name} node{where} offers a multiple of tensorParallel {tensor} devices"
    return [
        f"{why}: each tensor-parallel group spans workers of {per_worker}, so its all-reduces, several per "
        f"layer, cross the network between nodes, far slower than a node's own links; {advice} keeps each "
        "group on one node"
    ]


def _tpu_hosts_note(option: _Option) -> list[str]:
    """A TPU job that may run more than one worker: each worker is one host, and no multi-host slice is
    formed (docs/operator.md, "TPUs")."""
    device, counts = option.candidate.accelerator, option.counts
    if not _is_tpu(device) or max(counts.ceiling, option.workers) <= 1:
        return []
    return [
        f"{device.name} on more than one worker: kubefit forms no multi-host TPU slice (it sets neither "
        "TPU_WORKER_ID nor TPU_WORKER_HOSTNAMES, nor selects nodes by slice topology), so each worker is a "
        "host of its own; run a TPU job on one worker, or set up multislice training in the template"
    ]


def _asked_workers(spec: TrainingJobSpec) -> tuple[int, str]:
    """The worker count the spec itself asks for (replicas within [minReplicas, maxReplicas]), and the
    field that sets it."""
    workers = spec.workers
    asked = min(max(workers.replicas, workers.floor), workers.ceiling)
    if asked == workers.replicas:
        return asked, "replicas"
    # maxReplicas unset, the ceiling is minReplicas where that is above replicas (Workers.ceiling_field)
    return asked, workers.ceiling_field if asked == workers.ceiling else "minReplicas"


def _check_whole_groups(spec: TrainingJobSpec, devices_per_worker: int) -> None:
    """A fixed layout: the worker counts the spec states (the count it asks for, and minReplicas) must
    hold whole TP x PP groups, else InvalidSpec naming the field at fault. That is the count's field when
    a group is a whole number of workers; when it is not (tensorParallel 3 over workers of 4), the degree
    that straddles the workers."""
    group, step = parallel_group(spec), _worker_step(spec, devices_per_worker)
    if step == 1:
        return
    asked = [_asked_workers(spec)]
    if spec.workers.min_replicas is not None:
        asked.append((spec.workers.min_replicas, "minReplicas"))
    errors: dict[str, str] = {}
    for workers, field in asked:
        if workers % step == 0:
            continue
        devices = workers * devices_per_worker
        split = (
            f"{workers} workers x {devices_per_worker} = {devices} devices do not split into "
            f"tensorParallel x pipelineParallel = {spec.training.tensor_parallel} x "
            f"{spec.training.pipeline_parallel} = {group}-device groups"
        )
        if group % devices_per_worker == 0:  # a group is step whole workers: the count is at fault
            errors.setdefault(f"spec.workers.{field}", f"{split}; use a multiple of {step} workers")
        else:
            errors.setdefault(
                _straddling_degree(spec, devices_per_worker),
                f"{split}, and a group does not fit whole workers of {devices_per_worker} devices "
                f"(resources.acceleratorsPerWorker); the devices must be a multiple of {group}",
            )
    if errors:
        raise InvalidSpec([FieldError(path, message) for path, message in errors.items()])


def _straddling_degree(spec: TrainingJobSpec, devices_per_worker: int) -> str:
    """The parallel degree whose groups do not fit whole workers: tensorParallel unless it does."""
    tensor = spec.training.tensor_parallel
    if tensor % devices_per_worker == 0 or devices_per_worker % tensor == 0:
        return "spec.training.pipelineParallel"
    return "spec.training.tensorParallel"


def _group_notes(spec: TrainingJobSpec, option: _Option) -> list[str]:
    """What rounding the spec's worker counts to whole TP x PP groups changed (a layout the planner
    chose: a fixed one is refused instead, see _check_whole_groups)."""
    per_worker = option.candidate.devices_per_worker
    step, counts = _worker_step(spec, per_worker), option.counts
    if step == 1:
        return []
    why = (
        f"tensorParallel x pipelineParallel = {parallel_group(spec)} devices per model replica come in "
        f"{step} workers of {per_worker}"
    )
    notes = []
    asked, field = _asked_workers(spec)
    if counts.feasible and asked % step and counts.desired != asked:
        notes.append(f"workers.{field} {asked}: {why}, so {counts.desired} workers run")
    floor = spec.workers.min_replicas
    # Only a floor the grouping set: one memory needs as well (more than one group) or raises further is
    # _fit_notes' to explain.
    memory_floor = math.ceil((option.fewest or option.shown).layout.workers / step) * step
    if memory_floor > step and memory_floor >= counts.floor:
        return notes
    if floor is not None and floor % step and counts.floor == math.ceil(floor / step) * step:
        note = f"workers.minReplicas {floor}: {why}, so the floor is {counts.floor}"
        if not counts.feasible:
            ceiling_field, lowered = spec.workers.ceiling_field, floor - floor % step
            # Lowering helps only when memory's own floor is within the ceiling too.
            helps = lowered >= step and max(lowered, memory_floor) <= counts.ceiling
            lower = f"lower workers.minReplicas to {lowered} or " if helps else ""
            note += (
                f", above the {counts.ceiling} workers.{ceiling_field} allows, so no worker starts; "
                f"{lower}raise workers.{ceiling_field} to {counts.floor}"
            )
        notes.append(note)
    return notes


def _pools(inventory: Sequence[NodeInventory] | None) -> Pools:
    return None if inventory is None else pool_inventory(inventory)


@dataclass(frozen=True)
class Plan:
    """`plan_job`'s answer: status.sizing and the worker count its perDeviceBytes was estimated at."""

    sizing: SizingStatus
    evaluated_workers: int


def plan_job(  # noqa: PLR0913 - the spec, the cluster, and how much to work out
    spec: TrainingJobSpec,
    catalog: Catalog | None = None,
    inventory: Sequence[NodeInventory] | None = None,
    *,
    pools: Pools = None,
    check: SpecCheck | None = None,
    advise: bool = True,
    has_live_workers: bool = False,
    count_held: bool = False,
) -> Plan:
    """The sizing decision for `spec`; see the module docstring for the rules. The cluster is given as its
    nodes (`inventory`) or as their pools (pool_inventory of them, when the caller already has it).
    `check` refuses (InvalidSpec) what the operator refuses beyond the planner's own rules: a remedy whose
    changes it refuses is not named. `advise` False leaves out the notes and remedies, which re-plan the
    job dozens of times when it does not fit (the admission webhook needs only whether the spec is valid:
    no remedy search raises). `has_live_workers`: the job runs workers, so it does not queue (_fit_notes).
    `count_held`: the count per worker is the running workers' in place of the spec's auto (_planned)."""
    catalog = catalog or load_catalog()
    if inventory is not None:
        if pools is not None:
            raise ValueError("plan takes the nodes or their pools, not both")
        pools = _pools(inventory)
    outcome = _plan(spec, catalog, pools, count_held=count_held)
    reported, fits = _within_the_bounds(spec, outcome)
    if not advise:
        return Plan(_status(reported, outcome.min_workers, outcome.warnings, fits), reported.layout.workers)
    search = _Search(catalog, pools, check, _on_the_cluster(spec, catalog, pools), count_held)
    if outcome.shown.fits:
        refused = _raise_refused(spec, outcome, check)
        pool = _pool(pools, outcome.shown.accelerator.name)
        notes = _fit_notes(spec, outcome, pool, refused, has_live_workers)
        if refused:
            remedies, more = _remedy_search(spec, catalog, pools, check, count_held=count_held)
            notes += [_within_the_limit(remedies), *more]
        elif outcome.min_workers > spec.workers.ceiling:
            notes += _within_the_ceiling(spec, outcome, search)
    else:
        notes = _shortfall_notes(spec, outcome, search)
    if not fits and outcome.option.counts.feasible and spec.resources.fit_policy == "Warn":
        notes = [FIT_POLICY_WARN_NOTE, *notes]
    sizing = _status(reported, outcome.min_workers, [*outcome.warnings, *notes], fits)
    return Plan(sizing, reported.layout.workers)


FIT_POLICY_WARN_NOTE = (
    "resources.fitPolicy Warn: the estimate does not fit this layout, and its workers start anyway; they may "
    "run out of device memory"
)


def _within_the_bounds(spec: TrainingJobSpec, outcome: _Outcome) -> tuple[LayoutEstimate, bool]:
    """The layout status.sizing describes, and whether it fits: the one planned, except where memory
    needs more workers than the spec allows. The job runs none then (TooFewWorkers), and its layout is
    judged at the most whole TP x PP groups of workers the spec allows, where it does not fit: `fits`
    false, as `kubectl get` should show a job that cannot start. minWorkers still says how many memory
    needs. Where one group spans more workers than allowed, no count fits: the group is shown, not fitting."""
    shown, counts = outcome.shown, outcome.option.counts
    most = max(counts.ceiling - counts.ceiling % counts.step, counts.step)
    if counts.feasible or most >= shown.layout.workers:
        # feasible; or a minReplicas rounded up to whole groups is above the ceiling, where memory fits;
        # or a group spans more workers than the ceiling (`most` is one group)
        return shown, shown.fits and shown.layout.workers <= counts.ceiling
    judged = evaluate(spec, shown.accelerator, shown.layout.devices_per_worker, most)
    return judged, judged.fits


def plan(
    spec: TrainingJobSpec,
    catalog: Catalog | None = None,
    inventory: Sequence[NodeInventory] | None = None,
    *,
    pools: Pools = None,
) -> SizingStatus:
    """status.sizing for `spec` (`plan_job`'s sizing)."""
    return plan_job(spec, catalog, inventory, pools=pools).sizing


def plan_quietly(spec: TrainingJobSpec, catalog: Catalog, pools: Pools = None) -> SizingStatus:
    """`plan` without remedies for a spec that does not fit (used to evaluate alternatives)."""
    outcome = _plan(spec, catalog, pools)
    return _status(outcome.shown, outcome.min_workers, outcome.warnings)


# ------------------------------------------------------------------ wording


def needs_workers(spec: TrainingJobSpec, workers: int, devices_per_worker: int) -> str:
    """Why the job needs at least `workers`: memory, or (when one tensorParallel x pipelineParallel group
    already spans that many workers) the group, which a message blaming memory would misname."""
    group = parallel_group(spec)
    if group > 1 and workers <= _worker_step(spec, devices_per_worker):
        return (
            f"a tensorParallel x pipelineParallel group of {group} devices needs at least {workers} workers "
            f"of {devices_per_worker}"
        )
    return f"memory needs at least {workers} workers"


def floor_needs(
    spec: TrainingJobSpec, counts: WorkerCounts, min_workers: int, devices_per_worker: int
) -> str:
    """Why the job needs at least `counts.floor` workers: a minReplicas rounded up to whole TP x PP groups
    (above what memory, `min_workers`, needs), or what needs_workers says."""
    stated, step = spec.workers.min_replicas, counts.step
    memory_floor = max(math.ceil(min_workers / step) * step, step)
    if stated is not None and counts.floor == math.ceil(stated / step) * step > memory_floor:
        return (
            f"spec.workers.minReplicas {stated}, rounded up to whole tensorParallel x pipelineParallel groups "
            f"of {step} workers, needs at least {counts.floor} workers"
        )
    return needs_workers(spec, counts.floor, devices_per_worker)


def _fit_notes(
    spec: TrainingJobSpec,
    outcome: _Outcome,
    pool: AcceleratorPool | None,
    refused: bool = False,
    has_live_workers: bool = False,
) -> list[str]:
    """What a fitting plan asks of the worker bounds and of the cluster. `refused`: the operator refuses
    the worker count memory needs (_raise_refused), so raising the bound is no advice. `has_live_workers`:
    the job is admitted and its workers exist, so it does not queue for devices it lacks now (a node that
    lost a device its worker holds); only a worker it has yet to create waits."""
    shown, workers = outcome.shown, spec.workers
    notes: list[str] = []
    if outcome.min_workers > workers.ceiling:
        advice = f"more {BEYOND_THE_OPERATOR}" if refused else "raise workers.maxReplicas (and replicas)"
        if _is_tpu(shown.accelerator) and not refused:
            advice = "more workers are no remedy on a TPU, as kubefit forms no multi-host slice"
        needs = needs_workers(spec, outcome.min_workers, shown.layout.devices_per_worker)
        notes.append(f"{needs} but workers.{workers.ceiling_field} allows {workers.ceiling}; {advice}")
    elif workers.min_replicas is not None and outcome.min_workers > workers.min_replicas:
        needs = needs_workers(spec, outcome.min_workers, shown.layout.devices_per_worker)
        notes.append(f"{needs}; the elastic floor is raised from workers.minReplicas {workers.min_replicas}")
    needed, per_worker = outcome.option.needed_workers(spec), shown.layout.devices_per_worker
    # A count no node offers is told as such (_plan): freed devices would never hold such a worker.
    if pool is None or per_worker > pool.largest_node:
        return notes
    waits = (
        "its workers keep the devices they hold, and a new or replacement worker waits"
        if has_live_workers
        else "the job queues"
    )
    whole = pool.workers_placeable(per_worker, free_only=False)
    if whole < needed:
        notes.append(
            f"the cluster's {shown.accelerator.name} nodes hold at most {whole} of the {needed} workers of "
            f"{per_worker} even with every device free; {waits} until nodes join"
        )
    elif pool.workers_placeable(per_worker, free_only=True) < needed:
        notes.append(
            f"not enough free {shown.accelerator.name} now for {_layout_of(shown, needed)}; "
            f"{waits} until devices free up"
        )
    return notes


def _bound_raises(spec: TrainingJobSpec, workers: int) -> list[tuple[Change, ...]]:
    """The changes that raise the spec's worker ceiling to `workers`, mildest first: maxReplicas alone
    (when given), then with replicas too (a count above the old ceiling would otherwise split a TP x PP
    group); or replicas."""
    if spec.workers.max_replicas is None:
        return [(Change("workers.replicas", workers, MORE_WORKERS_TRADE_OFF, always),)]
    ceiling = Change("workers.maxReplicas", workers, MORE_WORKERS_TRADE_OFF, always)
    return [(ceiling,), (ceiling, Change("workers.replicas", workers, MORE_WORKERS_TRADE_OFF, always))]


def _raise_refused(spec: TrainingJobSpec, outcome: _Outcome, check: SpecCheck | None) -> bool:
    """Whether memory needs more workers than the spec allows and the operator refuses that many."""
    if outcome.option.counts.feasible:
        return False
    raised = apply_changes(spec, _bound_raises(spec, outcome.option.counts.floor)[-1])
    return not _passes(check, raised)


def _within_the_ceiling(spec: TrainingJobSpec, outcome: _Outcome, search: _Search) -> list[str]:
    """Memory needs more workers than the spec allows: the changes that fit within its own worker counts
    (on a TPU, whose workers form no slice, the other TPU layouts first), besides raising the bound."""
    remedies = _remedy_search(
        spec,
        search.catalog,
        search.pools,
        search.check,
        within_bounds_only=True,
        count_held=search.count_held,
    )[0]
    if _is_tpu(outcome.shown.accelerator):
        remedies = _without_repeats([*_other_tpus(spec, search), *remedies])
    if not remedies:
        return []
    workers = spec.workers
    named = "; ".join(_remedy_text(remedy) for remedy in remedies[:MAX_REMEDIES_NAMED])
    return [f"Would fit within workers.{workers.ceiling_field} {workers.ceiling}: {named}"]


def _remedy_text(remedy: Remedy) -> str:
    return f"{remedy.description} -> {sizing_summary(remedy.sizing)}"


def _without_repeats(remedies: Iterable[Remedy]) -> list[Remedy]:
    """`remedies` in order, each change named once (a TPU alternative may be the bigger device too)."""
    first: dict[str, Remedy] = {}
    for remedy in remedies:
        first.setdefault(remedy.description, remedy)
    return list(first.values())


def _within_the_limit(remedies: Sequence[Remedy]) -> str:
    if not remedies:
        return "no change the planner tries brings the worker count within what the operator runs"
    named = "; ".join(
        f"{remedy.description} -> {sizing_summary(remedy.sizing)}" for remedy in remedies[:MAX_REMEDIES_NAMED]
    )
    return f"Would fit on fewer workers: {named}"


def _shortfall_notes(spec: TrainingJobSpec, outcome: _Outcome, search: _Search) -> list[str]:
    """Nothing fits: why, what would (on a TPU the other TPU layouts first), and why a bigger accelerator
    was not tried."""
    remedies, notes = _remedy_search(
        spec, search.catalog, search.pools, search.check, count_held=search.count_held
    )
    if _is_tpu(outcome.shown.accelerator):
        remedies = _without_repeats([*_other_tpus(spec, search), *remedies])
    return [_shortfall_note(spec, outcome, remedies, search), *notes]


def _shortfall_note(
    spec: TrainingJobSpec, outcome: _Outcome, remedies: Sequence[Remedy], search: _Search
) -> str:
    """Why the plan does not fit, and what would: more workers, or the remedies found by re-planning."""
    shown = outcome.shown
    head = (
        f"does not fit: {format_gib(shown.estimate.total)} per device needed on "
        f"{_layout_of(shown, shown.layout.workers)}, {format_gib(int(shown.usable_bytes))} usable "
        f"({spec.resources.memory_headroom:.0%} headroom kept free)"
    )
    fewest = outcome.fewest
    if fewest is not None and (
        (_is_tpu(shown.accelerator) and fewest.layout.workers > 1)  # TPU hosts form no slice
        or not _passes(search.check, replace_field(spec, "workers.replicas", fewest.layout.workers))
    ):
        fewest = None  # more workers than the operator runs per job (or than the job's name allows)
    would_fit = [] if fewest is None else [_more_workers_text(shown, fewest)]
    would_fit += [_remedy_text(remedy) for remedy in remedies]
    if not would_fit and search.check is not None:
        unchecked = _remedy_search(spec, search.catalog, search.pools, count_held=search.count_held)[0]
        if unchecked:
            first = unchecked[0]
            return (
                f"{head}; it fits only with more workers {BEYOND_THE_OPERATOR}: "
                f"{first.description} -> {sizing_summary(first.sizing)}"
            )
    if not would_fit:
        runnable = _runnable(spec, search.catalog, applicable(spec, REMEDIES), search.carried)
        # All of them at once, as the combined remedy tried them: a later value of a field replaces the
        # earlier (full recompute after selective, QLoRA after LoRA).
        last = {change.field: change for change in runnable}
        tried = describe(change for change in runnable if last[change.field] is change) or "no change left"
        nothing = "no layout the cluster's nodes offer" if search.placed else "nothing in the catalog"
        return (
            f"{head}; {nothing} holds it even with {tried}: reduce training.sequenceLength or try a "
            "higher training.tensorParallel (pipelineParallel does not lower the first stage's activations: "
            "it keeps as many micro-batches in flight as it has stages)"
        )
    return f"{head}. Would fit: {'; '.join(would_fit[:MAX_REMEDIES_NAMED])}"


def _more_workers_text(shown: LayoutEstimate, fewest: LayoutEstimate) -> str:
    workers = fewest.layout.workers
    return (
        f"{workers} worker{'' if workers == 1 else 's'} (workers.replicas and minReplicas) -> {_layout_of(shown, workers)}, "
        f"{format_gib(fewest.estimate.total)} per device"
    )


def _layout_of(result: LayoutEstimate, workers: int) -> str:
    return layout_text(result.accelerator.name, result.layout.devices_per_worker, workers)


# ------------------------------------------------------------------ remedies, each verified by planning


def find_remedies(
    spec: TrainingJobSpec, catalog: Catalog | None = None, pools: Pools = None, check: SpecCheck | None = None
) -> list[Remedy]:
    """Changes that make a job fit, each verified by planning again with it applied.

    Single changes first (least disruptive first), then, when the accelerator is fixed, a bigger one;
    if no single change is enough, the changes accumulated in order until the job fits. With `pools`,
    each lands on a layout some node holds (_on_the_cluster).
    """
    return _remedy_search(spec, catalog or load_catalog(), pools, check)[0]


def _remedy_search(
    spec: TrainingJobSpec,
    catalog: Catalog,
    pools: Pools,
    check: SpecCheck | None = None,
    *,
    within_bounds_only: bool = False,
    count_held: bool = False,
) -> tuple[list[Remedy], list[str]]:
    """find_remedies, and why a bigger accelerator was not tried (when it was not). Remedies that fit
    within the worker counts the spec allows come first; one that needs more workers names the bound to
    raise, and is offered alone only when nothing fits within them (never, `within_bounds_only`), and
    never on a TPU, whose workers form no multi-host slice (_tpu_hosts_note)."""
    notes: list[str] = []
    search = _Search(catalog, pools, check, _on_the_cluster(spec, catalog, pools), count_held)
    found = [
        (remedy, in_bounds)
        for remedy, in_bounds in [
            *_single_remedies(spec, search),
            *_bigger_device(search.as_written(spec), search, notes),
        ]
        if in_bounds or remedy.sizing.resource_name != TPU_RESOURCE
    ]
    within = [remedy for remedy, in_bounds in found if in_bounds]
    # Those that need more workers, fewest devices first: in the order tried, ZeRO-2 on 1,730 devices came
    # before ZeRO-3 on 8, and a warning naming three hid the cheap one.
    beyond = sorted(
        (remedy for remedy, in_bounds in found if not in_bounds),
        key=lambda remedy: _device_count(remedy.sizing),
    )
    if within:
        return within + ([] if within_bounds_only else beyond), notes
    combined = _combined_remedy(spec, search)
    if combined is not None and combined[1]:
        return [combined[0]], notes
    if combined is not None and combined[0].sizing.resource_name == TPU_RESOURCE:
        combined = None
    if within_bounds_only:
        return [], notes
    raised = beyond or ([combined[0]] if combined is not None else [])
    return raised, notes


def _other_tpus(spec: TrainingJobSpec, search: _Search) -> list[Remedy]:
    """The TPU layouts (another TPU, or another count per worker) that hold a TPU job within its worker
    counts, fewest devices first: more workers form no multi-host slice (_tpu_hosts_note)."""
    found = []
    for device in search.catalog:
        if _is_tpu(device) and (search.carried is None or device.name in search.carried):
            remedy = _on_a_tpu(search.as_written(spec), device, search)
            if remedy is not None:
                found.append(remedy)
    return sorted(found, key=lambda remedy: (_device_count(remedy.sizing), remedy.sizing.device_memory_bytes))


def _on_a_tpu(spec: TrainingJobSpec, device: Accelerator, search: _Search) -> Remedy | None:
    """`spec` on `device`, at the count per worker the planner chooses there, as a remedy within the
    job's worker counts; None where it needs more workers, or changes nothing."""
    on_device = replace_field(spec, "resources.accelerator", device.name)
    try:
        outcome = _plan(
            replace_field(on_device, "resources.acceleratorsPerWorker", "auto"), search.catalog, search.pools
        )
    except InvalidSpec:
        return None
    changes, count = [], outcome.shown.layout.devices_per_worker
    if device.name != spec.resources.accelerator:
        changes.append(Change("resources.accelerator", device.name, OTHER_TPU_TRADE_OFF, always))
    if (
        isinstance(spec.resources.accelerators_per_worker, int)
        and count != spec.resources.accelerators_per_worker
    ):
        changes.append(Change("resources.acceleratorsPerWorker", count, OTHER_TPU_TRADE_OFF, always))
    remedy = _replanned(spec, tuple(changes), search) if changes else None
    return remedy[0] if remedy is not None and remedy[1] else None


def _device_count(sizing: SizingStatus) -> int:
    return sizing.accelerators_per_worker * sizing.min_workers


@dataclass(frozen=True)
class _Search:
    """Where remedies are planned: the catalog, the cluster's pools and the operator's own check."""

    catalog: Catalog
    pools: Pools
    check: SpecCheck | None = None
    # Whether a remedy must land on a layout some node of `pools` holds (_on_the_cluster).
    placed: bool = False
    # The job's count per worker is its running workers' in place of auto (plan_job's count_held).
    count_held: bool = False

    def as_written(self, spec: TrainingJobSpec) -> TrainingJobSpec:
        """`spec` with a held count back at the user's auto: on another device it means nothing."""
        return replace_field(spec, "resources.acceleratorsPerWorker", "auto") if self.count_held else spec

    def held(self, changes: Sequence[Change]) -> bool:
        """Whether the spec with `changes` still plans the held count as auto: no change of the device."""
        return self.count_held and not any(
            change.field in ("resources.accelerator", "resources.acceleratorsPerWorker") for change in changes
        )

    @property
    def carried(self) -> Pools:
        """The pools whose devices a change must still run on (_runnable), None when any device."""
        return self.pools if self.placed else None

    def holds(self, outcome: _Outcome) -> bool:
        """Whether a remedy may land on `outcome`'s layout."""
        shown = outcome.shown
        return not self.placed or _node_holds(
            self.pools, shown.accelerator.name, shown.layout.devices_per_worker
        )


def _node_holds(pools: Pools, accelerator: str, devices_per_worker: int) -> bool:
    pool = _pool(pools, accelerator)
    return pool is not None and devices_per_worker <= pool.largest_node


def _on_the_cluster(spec: TrainingJobSpec, catalog: Catalog, pools: Pools) -> bool:
    """Whether a remedy must land on a layout some node of `pools` holds. Planning falls back to the
    whole catalog where no node holds a layout that can run the changed spec (bf16-true on V100s, more
    devices per worker than any node has), and such a remedy would leave the job unplaceable. Not
    without pools, nor when the spec as written is already planned off the cluster (a declared
    accelerator no node carries, none of the cluster's able to run it or offering its count): its own
    plan warns that the job cannot be placed, no remedy the planner tries brings it back, and a remedy
    is judged on memory alone."""
    if pools is None:
        return False
    try:
        candidates = _candidate_list(spec, catalog, pools, [])  # without the whole catalog's fallback
    except InvalidSpec:
        return True
    return any(_node_holds(pools, c.accelerator.name, c.devices_per_worker) for c in candidates)


def _remedy(
    spec: TrainingJobSpec,
    changes: tuple[Change, ...],
    outcome: _Outcome,
    search: _Search,
    *,
    strict: bool = False,
    widen: bool = True,
) -> tuple[Remedy, bool] | None:
    """`outcome`, the plan of `spec` with `changes` applied, as a remedy, and whether it fits within the
    worker counts the spec allows. Fitting only with more workers than those (a job left with too few
    starts none: TooFewWorkers), it carries the raise of the worker bound too, planned again with it;
    raising maxReplicas, replicas is raised with it when the count it then asks for would split a
    TP x PP group. None when `check` refuses the changed spec."""
    if not outcome.shown.fits or not search.holds(outcome):
        return None
    changed = apply_changes(spec, changes)
    if outcome.option.counts.feasible:
        if not _passes(search.check, changed):
            return None
        return Remedy(changes, _status(outcome.shown, outcome.min_workers, outcome.warnings)), True
    refused = False
    for raise_bound in _bound_raises(changed, outcome.option.counts.floor):
        raised_spec = apply_changes(changed, raise_bound)
        if not _passes(search.check, raised_spec):
            refused = True
            continue
        try:
            held = search.held((*changes, *raise_bound))
            raised = _plan(raised_spec, search.catalog, search.pools, strict=strict, count_held=held)
        except InvalidSpec:
            continue
        if raised.shown.fits and raised.option.counts.feasible and search.holds(raised):
            sizing = _status(raised.shown, raised.min_workers, raised.warnings)
            return Remedy((*changes, *raise_bound), sizing), False
    if refused and widen:
        return _with_more_devices_per_worker(spec, changes, outcome, search, strict)
    return None


def _with_more_devices_per_worker(
    spec: TrainingJobSpec, changes: tuple[Change, ...], outcome: _Outcome, search: _Search, strict: bool
) -> tuple[Remedy, bool] | None:
    """A remedy whose worker count the operator refuses, tried again with more devices per worker: the
    planner ranks the fewest devices first and knows no per-job limit, so the same devices in fewer,
    larger workers can pass where its layout did not."""
    shown = outcome.shown
    for count in sorted(n for n in shown.accelerator.per_node if n > shown.layout.devices_per_worker):
        wider = (*changes, Change("resources.acceleratorsPerWorker", count, LARGER_WORKERS_TRADE_OFF, always))
        try:
            again = _plan(apply_changes(spec, wider), search.catalog, search.pools, strict=strict)
        except InvalidSpec:
            continue
        found = _remedy(spec, wider, again, search, strict=strict, widen=False)
        if found is not None:
            return found
    return None


def _passes(check: SpecCheck | None, spec: TrainingJobSpec) -> bool:
    if check is None:
        return True
    try:
        check(spec)
    except InvalidSpec:
        return False
    return True


def apply_changes(spec: TrainingJobSpec, changes: Iterable[Change]) -> TrainingJobSpec:
    """`spec` with `changes` applied in order (a remedy's, a suggestion's)."""
    for change in changes:
        spec = change.apply(spec)
    return spec


def _replanned(
    spec: TrainingJobSpec, changes: tuple[Change, ...], search: _Search
) -> tuple[Remedy, bool] | None:
    """`changes` applied and planned again (_remedy); None when the job still does not fit, or when the
    changes make the spec invalid (LoRA with more trainable parameters than the model, a count that
    splits no TP x PP group)."""
    try:
        outcome = _plan(
            apply_changes(spec, changes), search.catalog, search.pools, count_held=search.held(changes)
        )
    except InvalidSpec:  # NoCandidate included: no accelerator offers its per-worker count
        return None
    return _remedy(spec, changes, outcome, search)


def _runnable(
    spec: TrainingJobSpec, catalog: Catalog, changes: Iterable[Change], carried: Pools = None
) -> list[Change]:
    """The changes the job's accelerator can still run (bf16-true is no remedy on a V100): a fixed one,
    or for auto on a cluster (`carried`, its pools) one of the devices its nodes carry that run the spec
    now."""
    declared = resolve_accelerator(spec, catalog)
    if declared is not None:
        devices = [declared]
    elif carried is not None:
        devices = [d for d in catalog if d.name in carried and unsupported(spec, d) is None]
    else:
        devices = []
    return [
        change
        for change in changes
        if not devices or not all(breaks(spec, change.apply(spec), device) for device in devices)
    ]


def _single_remedies(spec: TrainingJobSpec, search: _Search) -> list[tuple[Remedy, bool]]:
    """Each change alone that makes the job fit. A field's values come least disruptive first (ZeRO-1,
    -2, -3): once one fits within the worker counts, the later ones of that field are not named."""
    found: list[tuple[Remedy, bool]] = []
    settled: set[str] = set()
    for change in _runnable(spec, search.catalog, applicable(spec, REMEDIES), search.carried):
        if change.field in settled:
            continue
        remedy = _replanned(spec, (change,), search)
        if remedy is not None:
            found.append(remedy)
            if remedy[1]:
                settled.add(change.field)
    return found


def _bigger_device(spec: TrainingJobSpec, search: _Search, notes: list[str]) -> list[tuple[Remedy, bool]]:
    """For a fixed accelerator: the plan on any catalog device with more memory, if one fits. With an
    inventory only devices (and per-worker counts) some node holds are tried."""
    catalog, pools = search.catalog, search.pools
    declared = resolve_accelerator(spec, catalog)
    if declared is None:
        return []
    bigger = Catalog(device for device in catalog if device.memory_bytes > declared.memory_bytes)
    if pools is not None:
        # The whole catalog is the fallback of auto only where the cluster has none the job can use: a
        # remedy naming a device no node carries would leave the job unplaceable.
        bigger = Catalog(device for device in bigger if device.name in pools)
        if not len(bigger):
            notes.append(
                "a bigger accelerator was not tried as a remedy: no node in the cluster carries one with "
                f"more memory than {declared.name}"
            )
            return []
    if not len(bigger):
        return []
    on_bigger = replace_field(spec, "resources.accelerator", "auto")
    try:
        outcome = _plan(on_bigger, bigger, pools, strict=True)
    except NoCandidate:
        count = spec.resources.accelerators_per_worker
        where = (
            f"no node in the cluster with an accelerator of more memory than {declared.name} offers {count} devices"
            if pools is not None
            else f"no catalog accelerator with more memory than {declared.name} offers {count} devices per node"
        )
        notes.append(
            f"a bigger accelerator was not tried as a remedy: {where} (resources.acceleratorsPerWorker)"
        )
        return []
    except InvalidSpec:
        return []
    chosen = outcome.shown.accelerator.name
    change = Change("resources.accelerator", chosen, "a bigger device costs more per hour", always)
    remedy = _remedy(
        spec, (change,), outcome, _Search(bigger, pools, search.check, search.placed), strict=True
    )
    return [] if remedy is None else [remedy]


def _combined_remedy(spec: TrainingJobSpec, search: _Search) -> tuple[Remedy, bool] | None:
    """The remedies applied one after another until the job fits within its worker counts; failing
    that, the first set that fits with more workers."""
    accumulated: list[Change] = []
    current = spec
    first_raised: tuple[Remedy, bool] | None = None
    for change in _runnable(spec, search.catalog, REMEDIES, search.carried):
        if not change.applies(current):
            continue
        current = change.apply(current)
        # a later value of the same field (full after selective checkpointing) replaces the earlier one
        accumulated = [*(kept for kept in accumulated if kept.field != change.field), change]
        remedy = _replanned(spec, tuple(accumulated), search)
        if remedy is not None and remedy[1]:
            return remedy
        first_raised = first_raised or remedy
    return first_raised
