"""Cost-cutting suggestions: cheaper ways to run the same job, each re-estimated, with its trade-off.

`suggest(spec)` applies one change at a time (precision, optimizer, activation checkpointing, sharding,
micro-batch, offload, LoRA/QLoRA, or only a different layout) and plans each alternative at its cheapest
layout: on the declared accelerator when one is named, on any catalog accelerator when it is `auto`,
with `acceleratorsPerWorker` and the worker count chosen again. Alternatives that fit and improve on the
declared plan are ranked by total accelerator count, then device memory, then per-device estimate.
Devices are counted at the workers the job runs once changed (replicas kept within its bounds, as the
operator keeps them), the count its per-device estimate was made at, not at minWorkers.
An alternative improves on a plan when it needs fewer devices, or as many on a device with at least a
tenth less memory; one that the operator would refuse or block once applied (a fixed count that splits
no TP x PP group, more workers than maxReplicas) is not listed.

`overprovisioned(spec, sizing)` says in one sentence when a fixed layout is far bigger than its
estimate: the same job fits on half the devices, or on a device of half the memory. Fewer devices per
worker are named only as a multiple of tensorParallel: any other count puts tensor-parallel groups
across nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubefit.api.models import SizingStatus, TrainingJobSpec
from kubefit.api.units import format_gib
from kubefit.api.validation import InvalidSpec
from kubefit.sizing.catalog import Catalog, load_catalog
from kubefit.sizing.planner import (
    Pools,
    SpecCheck,
    apply_changes,
    breaks,
    find_remedies,
    layout_text,
    plan_quietly,
    worker_counts,
)
from kubefit.sizing.remedies import CHANGES, Change, always, describe, replace_field, trade_offs

FEWER_DEVICES_TRADE_OFF = "fewer devices: less data-parallel throughput per step"
OTHER_DEVICE_TRADE_OFF = "a different accelerator: different speed and price; the image must support it"
# A device counts as smaller, for the same number of devices, only with at least this much less memory:
# 24 GB cards that differ by a few MiB (an L4 and an A10G) are no saving.
SMALLER_DEVICE = 0.9


@dataclass(frozen=True)
class Suggestion:
    """An alternative configuration, planned: what changes, the resulting sizing and what it costs.
    `workers` is the count the changed job runs (`running_workers`), which sizing.perDeviceBytes was
    estimated at: a 4-worker job stays at 4 workers when only its precision changes."""

    changes: tuple[Change, ...]
    sizing: SizingStatus
    trade_off: str
    workers: int

    @property
    def devices(self) -> int:
        return self.sizing.accelerators_per_worker * self.workers

    @property
    def description(self) -> str:
        return describe(self.changes)

    @property
    def layout(self) -> str:
        return layout_text(self.sizing.accelerator, self.sizing.accelerators_per_worker, self.workers)

    def to_dict(self) -> dict[str, Any]:
        """The JSON/YAML shape printed by `kubefit size --suggest` (camelCase, bytes as integers)."""
        return {
            "change": self.description,
            "changes": [{"field": change.field, "value": change.value} for change in self.changes],
            "accelerator": self.sizing.accelerator,
            "acceleratorsPerWorker": self.sizing.accelerators_per_worker,
            "workers": self.workers,
            "devices": self.devices,
            "perDeviceBytes": self.sizing.per_device_bytes,
            "deviceMemoryBytes": self.sizing.device_memory_bytes,
            "fits": self.sizing.fits,
            "tradeOff": self.trade_off,
        }


def running_workers(spec: TrainingJobSpec, sizing: SizingStatus) -> int:
    """The workers `spec` runs on the layout of `sizing` (replicas kept within its bounds, the count
    sizing.perDeviceBytes was estimated at); the fewest that fit when its bounds cannot hold those."""
    counts = worker_counts(spec, sizing.min_workers, sizing.accelerators_per_worker)
    return counts.desired if counts.feasible else sizing.min_workers


def _suggestion(
    spec: TrainingJobSpec, changes: tuple[Change, ...], sizing: SizingStatus, trade_off: str
) -> Suggestion:
    """`changes` to `spec`, planned as `sizing`, counted at the workers the changed job runs."""
    return Suggestion(changes, sizing, trade_off, running_workers(apply_changes(spec, changes), sizing))


def _cost(suggestion: Suggestion) -> tuple[int, int, int]:
    sizing = suggestion.sizing
    return (suggestion.devices, sizing.device_memory_bytes, sizing.per_device_bytes)


def _cheaper(suggestion: Suggestion, baseline: Suggestion) -> bool:
    """Fewer devices, or as many on a device with at least a tenth less memory. Less memory used on
    the same devices costs the same."""
    if suggestion.devices != baseline.devices:
        return suggestion.devices < baseline.devices
    return suggestion.sizing.device_memory_bytes <= SMALLER_DEVICE * baseline.sizing.device_memory_bytes


def _planned(spec: TrainingJobSpec, catalog: Catalog) -> SizingStatus | None:
    """plan_quietly, or None when the spec is no valid job (a change that makes it invalid)."""
    try:
        return plan_quietly(spec, catalog)
    except InvalidSpec:
        return None


def _runs_as_suggested(
    spec: TrainingJobSpec, changes: Sequence[Change], catalog: Catalog, check: SpecCheck | None = None
) -> bool:
    """Whether `spec` with `changes` applied is a valid job that fits within its worker bounds (and that
    the operator's own `check` accepts)."""
    changed = apply_changes(spec, changes)
    try:
        if check is not None:
            check(changed)
    except InvalidSpec:
        return False
    sizing = _planned(changed, catalog)
    if sizing is None or not sizing.fits:
        return False
    return worker_counts(changed, sizing.min_workers, sizing.accelerators_per_worker).feasible


def _cheapest_layout(spec: TrainingJobSpec) -> TrainingJobSpec:
    """Let the planner choose devices per worker and workers again (the accelerator stays as declared)."""
    return replace_field(spec, "resources.acceleratorsPerWorker", "auto")


def _layout_changes(spec: TrainingJobSpec, sizing: SizingStatus) -> tuple[Change, ...]:
    """The resource fields a layout-only suggestion sets, with their concrete values."""
    changes = []
    if spec.resources.accelerator != sizing.accelerator:
        changes.append(Change("resources.accelerator", sizing.accelerator, OTHER_DEVICE_TRADE_OFF, always))
    if isinstance(spec.resources.accelerators_per_worker, int) and (
        spec.resources.accelerators_per_worker != sizing.accelerators_per_worker
    ):
        changes.append(
            Change(
                "resources.acceleratorsPerWorker",
                sizing.accelerators_per_worker,
                FEWER_DEVICES_TRADE_OFF,
                always,
            )
        )
    return tuple(changes)


def suggest(
    spec: TrainingJobSpec, catalog: Catalog | None = None, check: SpecCheck | None = None
) -> list[Suggestion]:
    """Alternatives that fit and improve on the declared plan, cheapest first.

    A spec change is listed only when it beats both the declared plan and the declared spec merely
    re-laid out (which is listed on its own), so that a saving is credited to the change that makes it.
    """
    catalog = catalog or load_catalog()
    # The baselines, as the job runs them: the declared spec and that spec merely re-laid out.
    declared = _suggestion(spec, (), plan_quietly(spec, catalog), "")
    same_device = _suggestion(spec, (), plan_quietly(_cheapest_layout(spec), catalog), "")
    shortlist = _Shortlist(spec, catalog, check)
    _consider_single_changes(spec, catalog, shortlist, (declared, same_device))
    _consider_layouts(spec, catalog, shortlist, declared, same_device)
    # No single change may be enough: add the verified (possibly combined) remedies.
    if not declared.sizing.fits:
        _consider_remedies(spec, catalog, shortlist)
    return shortlist.ranked()


# Sort positions after the single changes (which take their index in CHANGES).
_SAME_DEVICE_LAYOUT = len(CHANGES)
_ANY_DEVICE_LAYOUT = len(CHANGES) + 1
_FIRST_REMEDY = len(CHANGES) + 2


@dataclass
class _Shortlist:
    """The alternatives kept so far, each with its sort key (cost, then position)."""

    spec: TrainingJobSpec
    catalog: Catalog
    check: SpecCheck | None = None
    found: list[tuple[tuple[int, int, int, int], Suggestion]] = field(default_factory=list)

    def consider(self, order: int, suggestion: Suggestion, baselines: Sequence[Suggestion]) -> None:
        """Keep `suggestion` if it fits, is cheaper than every baseline that fits, and runs as
        suggested once applied."""
        if not suggestion.sizing.fits:
            return
        if any(baseline.sizing.fits and not _cheaper(suggestion, baseline) for baseline in baselines):
            return  # no fewer devices and no smaller device: not an improvement
        if not _runs_as_suggested(self.spec, suggestion.changes, self.catalog, self.check):
            return
        self.found.append(((*_cost(suggestion), order), suggestion))

    def descriptions(self) -> set[str]:
        return {suggestion.description for _, suggestion in self.found}

    def ranked(self) -> list[Suggestion]:
        return [suggestion for _, suggestion in sorted(self.found, key=lambda pair: pair[0])]


def _consider_single_changes(
    spec: TrainingJobSpec, catalog: Catalog, shortlist: _Shortlist, baselines: Sequence[Suggestion]
) -> None:
    """Each applicable change alone, at its cheapest layout on the declared accelerator."""
    fixed_device = catalog.get(spec.resources.accelerator)
    for order, change in enumerate(CHANGES):
        if not change.applies(spec):
            continue
        changed = change.apply(spec)
        if fixed_device is not None and breaks(spec, changed, fixed_device):
            continue  # e.g. fp8-mixed on a device without FP8 units
        sizing = _planned(_cheapest_layout(changed), catalog)
        if sizing is None:
            continue
        # Planned at its cheapest layout on the declared accelerator (auto stays auto): the devices per
        # worker it needs are part of what to change.
        per_worker = [
            c for c in _layout_changes(spec, sizing) if c.field == "resources.acceleratorsPerWorker"
        ]
        changes = (change, *per_worker)
        shortlist.consider(order, _suggestion(spec, changes, sizing, change.trade_off), baselines)


def _consider_layouts(
    spec: TrainingJobSpec,
    catalog: Catalog,
    shortlist: _Shortlist,
    declared: Suggestion,
    same_device: Suggestion,
) -> None:
    """The unchanged spec re-laid out: on the declared accelerator, then (if one is named) on any."""
    changes = _layout_changes(spec, same_device.sizing)
    if changes:
        suggestion = _suggestion(spec, changes, same_device.sizing, FEWER_DEVICES_TRADE_OFF)
        shortlist.consider(_SAME_DEVICE_LAYOUT, suggestion, (declared,))
    if spec.resources.accelerator == "auto":
        return
    any_device = plan_quietly(replace_field(_cheapest_layout(spec), "resources.accelerator", "auto"), catalog)
    changes = _layout_changes(spec, any_device)
    if changes:
        suggestion = _suggestion(spec, changes, any_device, trade_offs(changes))
        shortlist.consider(_ANY_DEVICE_LAYOUT, suggestion, (declared, same_device))


def _consider_remedies(spec: TrainingJobSpec, catalog: Catalog, shortlist: _Shortlist) -> None:
    """The planner's remedies not listed already; layout-only ones are covered by _consider_layouts."""
    listed = shortlist.descriptions()
    for order, remedy in enumerate(find_remedies(spec, catalog, check=shortlist.check), start=_FIRST_REMEDY):
        layout_only = all(change.field.startswith("resources.") for change in remedy.changes)
        if remedy.description not in listed and not layout_only:
            suggestion = _suggestion(spec, remedy.changes, remedy.sizing, trade_offs(remedy.changes))
            shortlist.consider(order, suggestion, ())


def overprovisioned(
    spec: TrainingJobSpec, sizing: SizingStatus, catalog: Catalog | None = None, pools: Pools = None
) -> str | None:
    """One sentence when a fixed layout is far bigger than its estimate, else None.

    "Far bigger": the job fits on at most half the devices of the same type, or on a device with at most
    half the memory and no more devices. Layouts the planner chose itself (both `auto`) are never
    flagged. Workers above `minWorkers` are data-parallel throughput, not waste, so the comparison is per
    `acceleratorsPerWorker x minWorkers`. Each layout the sentence names is told at the workers it runs
    (`running_workers`), the count its per-device figure was estimated at.
    """
    if not sizing.fits:
        return None
    if spec.resources.accelerator == "auto" and spec.resources.accelerators_per_worker == "auto":
        return None
    catalog = catalog or load_catalog()
    current = layout_text(sizing.accelerator, sizing.accelerators_per_worker, running_workers(spec, sizing))
    usable = sizing.device_memory_bytes * (1 - spec.resources.memory_headroom)
    opening = (
        f"{current} is more than this job needs ({format_gib(sizing.per_device_bytes)} of "
        f"{format_gib(int(usable))} usable per device)"
    )
    advice = _fewer_of_the_same(spec, sizing, catalog) or _smaller_elsewhere(spec, sizing, catalog, pools)
    return None if advice is None else f"{opening}: {advice}"


def _devices(sizing: SizingStatus) -> int:
    return sizing.accelerators_per_worker * sizing.min_workers


def _fewer_of_the_same(spec: TrainingJobSpec, sizing: SizingStatus, catalog: Catalog) -> str | None:
    """The same accelerator holds the job on at most half the devices."""
    on_same = replace_field(_cheapest_layout(spec), "resources.accelerator", sizing.accelerator)
    same = plan_quietly(on_same, catalog)
    if not (same.fits and 2 * _devices(same) <= _devices(sizing)):
        return None
    if same.accelerators_per_worker % spec.training.tensor_parallel:
        return None  # fewer a worker would put tensor-parallel groups across nodes
    per_worker = replace_field(spec, "resources.acceleratorsPerWorker", same.accelerators_per_worker)
    if not _runs_as_suggested(per_worker, (), catalog):
        return None  # the count alone would split a TP x PP group or need more workers than allowed
    workers = running_workers(on_same, same)  # the job's own worker bounds: only the count per worker changes
    return (
        f"{layout_text(same.accelerator, same.accelerators_per_worker, workers)} "
        f"holds it at {format_gib(same.per_device_bytes)} per device; set "
        f"resources.acceleratorsPerWorker: {same.accelerators_per_worker} (extra devices add "
        "data-parallel throughput only)"
    )


def _smaller_elsewhere(
    spec: TrainingJobSpec, sizing: SizingStatus, catalog: Catalog, pools: Pools = None
) -> str | None:
    """Another accelerator holds the job with at most half the memory or half the devices (not more of
    the other): among those the cluster has, where its `pools` are known (an A10G named on a cluster of
    L4s queued the job for good)."""
    auto = replace_field(_cheapest_layout(spec), "resources.accelerator", "auto")
    anywhere = plan_quietly(auto, catalog, pools)
    if pools is not None and anywhere.accelerator not in pools:
        return None  # the planner fell back to the catalog: no accelerator of the cluster runs it
    devices, other_devices = _devices(sizing), _devices(anywhere)
    smaller_device = (
        2 * anywhere.device_memory_bytes <= sizing.device_memory_bytes and other_devices <= devices
    )
    fewer_devices = (
        2 * other_devices <= devices and anywhere.device_memory_bytes <= sizing.device_memory_bytes
    )
    if not (anywhere.fits and (smaller_device or fewer_devices)):
        return None
    elsewhere = replace_field(spec, "resources.accelerator", anywhere.accelerator)
    elsewhere = replace_field(elsewhere, "resources.acceleratorsPerWorker", anywhere.accelerators_per_worker)
    if not _runs_as_suggested(elsewhere, (), catalog):
        return None  # that layout would split a TP x PP group or need more workers than allowed
    workers = running_workers(elsewhere, anywhere)
    layout = layout_text(anywhere.accelerator, anywhere.accelerators_per_worker, workers)
    return (
        f"{layout} holds it at {format_gib(anywhere.per_device_bytes)} of "
        f"{format_gib(anywhere.device_memory_bytes)} per device; set resources.accelerator: "
        f"{anywhere.accelerator} and acceleratorsPerWorker: {anywhere.accelerators_per_worker}"
    )
