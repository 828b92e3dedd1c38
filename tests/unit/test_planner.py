"""The planner: cheapest fitting layout, fixed layouts, inventory, and remedies that really fit.

Assertions are properties checked against the estimator itself (no layout with fewer devices fits,
...), so they hold whatever the estimator's coefficients are.
"""

from __future__ import annotations

import re

import pytest
from sizing_inputs import LLAMA2_70B, LLAMA3_8B, SIZING_KEYS, make_spec

from kubefit.api.formatting import sizing_summary
from kubefit.api.models import SizingStatus, TrainingJobSpec
from kubefit.api.validation import InvalidSpec, parse_spec
from kubefit.sizing.catalog import Accelerator, load_catalog
from kubefit.sizing.estimator import Layout, estimate
from kubefit.sizing.planner import (
    NodeInventory,
    find_remedies,
    floor_needs,
    parallel_group,
    plan,
    plan_job,
    pool_inventory,
    unsupported,
    usable_bytes,
    worker_counts,
)

CATALOG = load_catalog()


def fits(spec: TrainingJobSpec, device: Accelerator, per_worker: int, workers: int) -> bool:
    return estimate(spec, device, Layout(per_worker, workers)).total <= usable_bytes(spec, device)


def devices(sizing: SizingStatus) -> int:
    return sizing.accelerators_per_worker * sizing.min_workers


def candidate_layouts(spec: TrainingJobSpec, max_devices: int):
    """Every legal (device, per worker, workers) with at most max_devices devices, as auto considers them."""
    group = parallel_group(spec)
    for device in CATALOG:
        if unsupported(spec, device):
            continue
        for per_worker in device.per_node:
            for workers in range(1, max_devices // per_worker + 1):
                if (per_worker * workers) % group == 0:
                    yield device, per_worker, workers


AUTO_SPECS = {
    "1B defaults": make_spec(),
    "8B full, plain data parallel": make_spec(model=LLAMA3_8B, training={"sequenceLength": 2048}),
    "8B FSDP": make_spec(model=LLAMA3_8B, training={"sharding": "fsdp", "sequenceLength": 4096}),
    "70B ZeRO-3, full recompute": make_spec(
        model=LLAMA2_70B,
        training={"sharding": "zero3", "activationCheckpointing": "full", "sequenceLength": 4096},
        workers={"maxReplicas": 64},
    ),
    "8B TP4 x PP2": make_spec(
        model=LLAMA3_8B, training={"tensorParallel": 4, "pipelineParallel": 2}, workers={"maxReplicas": 64}
    ),
}


@pytest.mark.parametrize("name", AUTO_SPECS)
def test_auto_picks_a_fitting_layout_and_none_with_fewer_devices_fits(name: str) -> None:
    spec = AUTO_SPECS[name]
    sizing = plan(spec)
    assert sizing.fits, sizing.warnings
    chosen = CATALOG.get(sizing.accelerator)
    assert chosen is not None and sizing.accelerators_per_worker in chosen.per_node
    assert sizing.per_device_bytes <= usable_bytes(spec, chosen)
    fewer = [
        (device.name, per_worker, workers)
        for device, per_worker, workers in candidate_layouts(spec, devices(sizing) - 1)
        if fits(spec, device, per_worker, workers)
    ]
    assert fewer == [], f"{name}: layouts with fewer devices than {sizing_summary(sizing)} fit: {fewer[:3]}"


@pytest.mark.parametrize("name", AUTO_SPECS)
def test_auto_prefers_the_smallest_device_among_equal_counts(name: str) -> None:
    spec = AUTO_SPECS[name]
    sizing = plan(spec)
    smaller = [
        (device.name, per_worker, workers)
        for device, per_worker, workers in candidate_layouts(spec, devices(sizing))
        if per_worker * workers == devices(sizing)
        and device.memory_bytes < sizing.device_memory_bytes
        and fits(spec, device, per_worker, workers)
    ]
    assert smaller == []


def test_tensor_and_pipeline_parallel_need_whole_groups() -> None:
    spec = AUTO_SPECS["8B TP4 x PP2"]
    sizing = plan(spec)
    assert devices(sizing) >= 8 and devices(sizing) % 8 == 0


def test_zero3_min_workers_is_the_fewest_that_fit() -> None:
    spec = make_spec(
        model=LLAMA2_70B,
        training={"sharding": "zero3", "activationCheckpointing": "full"},
        resources={"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 8},
        workers={"maxReplicas": 16},
    )
    sizing = plan(spec)
    device = CATALOG.get("nvidia-a100-40gb")
    assert sizing.fits and sizing.min_workers > 1  # 69B x 16 B of state does not fit 8 x 40 GB
    assert fits(spec, device, 8, sizing.min_workers)
    assert not fits(spec, device, 8, sizing.min_workers - 1)


def test_fixed_layout_with_too_few_replicas_is_evaluated_at_the_floor_memory_raises() -> None:
    spec = make_spec(
        model=LLAMA2_70B,
        training={"sharding": "zero3", "activationCheckpointing": "full"},
        resources={"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 8},
        workers={"replicas": 1, "maxReplicas": 16},
    )
    device = CATALOG.get("nvidia-a100-40gb")
    planned = plan_job(spec)
    sizing = planned.sizing
    assert sizing.accelerator == "nvidia-a100-40gb" and sizing.accelerators_per_worker == 8
    # The operator raises the floor to what memory requires (69B x 16 B of state does not fit 8 x 40 GB),
    # so that is the layout sized.
    assert sizing.min_workers > 1 and planned.evaluated_workers == sizing.min_workers
    assert sizing.fits and fits(spec, device, 8, sizing.min_workers)
    assert sizing.per_device_bytes == estimate(spec, device, Layout(8, sizing.min_workers)).total


def test_fixed_layout_with_more_replicas_than_fit_is_evaluated_there() -> None:
    # Plain data parallel: one device holds the job, two add DDP's gradient buckets and do not.
    spec = make_spec(
        model={"parameters": "3.5B"},
        training={"sequenceLength": 1024},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
        workers={"replicas": 2},
    )
    device = CATALOG.get("nvidia-h100-80gb")
    planned = plan_job(spec)
    sizing = planned.sizing
    assert planned.evaluated_workers == 2 and sizing.fits is False
    assert sizing.per_device_bytes == estimate(spec, device, Layout(1, 2)).total
    # minWorkers still reports what memory requires, and the warning says so.
    assert sizing.min_workers == 1 and fits(spec, device, 1, 1)
    assert any("Would fit: 1 worker (" in warning for warning in sizing.warnings)


def test_fixed_layout_replicas_are_kept_within_the_elastic_bounds() -> None:
    spec = make_spec(
        model=LLAMA3_8B,
        training={"sharding": "fsdp"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
        workers={"replicas": 9, "minReplicas": 1, "maxReplicas": 4},
    )
    planned = plan_job(spec)
    assert planned.evaluated_workers == 4
    assert (
        planned.sizing.per_device_bytes == estimate(spec, CATALOG.get("nvidia-h100-80gb"), Layout(8, 4)).total
    )


def test_fixed_accelerator_chooses_only_its_per_node_counts() -> None:
    spec = make_spec(
        model=LLAMA3_8B,
        training={"sharding": "fsdp", "activationCheckpointing": "full"},
        resources={"accelerator": "nvidia-l4"},
        workers={"replicas": 1, "maxReplicas": 32},  # room for the workers memory needs
    )
    sizing = plan(spec)
    device = CATALOG.get("nvidia-l4")
    assert sizing.accelerator == "nvidia-l4" and sizing.accelerators_per_worker in device.per_node
    assert sizing.fits
    for per_worker in device.per_node:
        for workers in range(1, 64 // per_worker + 1):
            if per_worker * workers < devices(sizing):
                assert not fits(spec, device, per_worker, workers)


def test_fixed_count_with_auto_accelerator_keeps_the_count() -> None:
    sizing = plan(make_spec(model=LLAMA3_8B, resources={"acceleratorsPerWorker": 2}))
    assert sizing.accelerators_per_worker == 2
    assert 2 in CATALOG.get(sizing.accelerator).per_node


def test_unknown_accelerator_is_an_invalid_spec_naming_the_field_and_the_known_names() -> None:
    with pytest.raises(InvalidSpec) as raised:
        plan(make_spec(resources={"accelerator": "nvidia-h100-800gb"}))
    (error,) = raised.value.errors
    assert error.path == "spec.resources.accelerator"
    assert "nvidia-h100-800gb" in error.message and "nvidia-h100-80gb" in error.message


def test_auto_skips_devices_that_cannot_run_the_precision() -> None:
    small = make_spec(model={"parameters": "100M"})  # fits on anything
    assert plan(small).accelerator not in {"nvidia-t4", "nvidia-v100-16gb", "nvidia-v100-32gb"}
    fp32 = make_spec(model={"parameters": "100M", "precision": "fp32"})
    assert plan(fp32).accelerator == "nvidia-t4"  # the smallest device, usable without bf16
    fp8 = plan(make_spec(model={"parameters": "100M", "precision": "fp8-mixed"}))
    assert fp8.accelerator in {"nvidia-l4", "nvidia-l40s", "nvidia-h100-80gb", "nvidia-h200", "nvidia-b200"}


def test_a_named_device_that_cannot_run_the_precision_gets_a_warning() -> None:
    sizing = plan(make_spec(resources={"accelerator": "nvidia-v100-32gb"}))
    assert any("bf16" in warning and "nvidia-v100-32gb" in warning for warning in sizing.warnings)


def test_pytorch_is_not_sized_onto_tpus_but_jax_may_be() -> None:
    for parameters in ("100M", "3B", "8B"):
        torch_job = plan(make_spec(model={"parameters": parameters}, framework="pytorch"))
        assert torch_job.resource_name != "google.com/tpu"
    jax_small = plan(make_spec(model={"parameters": "100M"}, framework="jax"))
    assert jax_small.fits


# ------------------------------------------------------------------ inventory


def nodes(accelerator: str, count: int, allocatable: int, free: int) -> list[NodeInventory]:
    return [NodeInventory(f"{accelerator}-{index}", accelerator, allocatable, free) for index in range(count)]


def test_pool_inventory_groups_nodes_and_counts_placeable_workers() -> None:
    pools = pool_inventory(
        [*nodes("nvidia-l4", 3, 4, 2), *nodes("nvidia-l4", 2, 8, 8), *nodes("nvidia-h100-80gb", 1, 8, 0)]
    )
    l4 = pools["nvidia-l4"]
    assert l4.nodes == 5 and l4.largest_node == 8
    assert l4.workers_placeable(4, free_only=False) == 3 * 1 + 2 * 2
    assert l4.workers_placeable(2, free_only=True) == 3 * 1 + 2 * 4
    assert pools["nvidia-h100-80gb"].workers_placeable(1, free_only=True) == 0


def test_inventory_restricts_accelerator_types_and_counts() -> None:
    spec = make_spec(
        model=LLAMA3_8B,
        training={"sharding": "fsdp", "activationCheckpointing": "full"},
        workers={"maxReplicas": 32},
    )
    without = plan(spec)
    inventory = nodes("nvidia-l4", 16, 4, 4)
    sizing = plan(spec, inventory=inventory)
    assert without.accelerator != "nvidia-l4"  # the catalog offers a cheaper layout elsewhere
    assert sizing.accelerator == "nvidia-l4"
    assert sizing.accelerators_per_worker <= 4  # a worker fits on one node
    assert sizing.fits


def test_inventory_prefers_a_layout_placeable_on_free_devices_now() -> None:
    spec = make_spec(model={"parameters": "1B"})  # fits one device of either kind
    busy_h100 = nodes("nvidia-h100-80gb", 4, 8, 0)
    free_h200 = nodes("nvidia-h200", 2, 8, 8)
    assert plan(spec, inventory=[*busy_h100, *nodes("nvidia-h200", 2, 8, 8)]).accelerator == "nvidia-h200"
    free_h100 = nodes("nvidia-h100-80gb", 4, 8, 8)
    assert plan(spec, inventory=[*free_h100, *free_h200]).accelerator == "nvidia-h100-80gb"  # smaller wins


def test_inventory_fixed_accelerator_absent_from_the_cluster_is_still_sized_with_a_warning() -> None:
    spec = make_spec(resources={"accelerator": "nvidia-h100-80gb"})
    sizing = plan(spec, inventory=nodes("nvidia-l4", 2, 4, 4))
    assert sizing.accelerator == "nvidia-h100-80gb"
    assert any("no node in the cluster carries nvidia-h100-80gb" in warning for warning in sizing.warnings)


def test_a_thousand_nodes_of_mixed_kinds() -> None:
    inventory = [
        NodeInventory(f"node-{index}", name, 8, index % 9)
        for index, name in enumerate(
            ["nvidia-a100-80gb", "nvidia-h100-80gb", "nvidia-l40s", "nvidia-l4"] * 250
        )
    ]
    sizing = plan(make_spec(model=LLAMA3_8B, training={"sharding": "fsdp"}), inventory=inventory)
    assert sizing.fits and sizing.accelerator in {
        "nvidia-a100-80gb",
        "nvidia-h100-80gb",
        "nvidia-l40s",
        "nvidia-l4",
    }


# ------------------------------------------------------------------ bounds and explanations


def test_more_workers_than_max_replicas_is_explained() -> None:
    spec = make_spec(
        model=LLAMA2_70B,
        training={"sharding": "zero3", "activationCheckpointing": "full"},
        resources={"accelerator": "nvidia-a100-80gb", "acceleratorsPerWorker": 8},
        workers={"maxReplicas": 1},
    )
    planned = plan_job(spec)
    sizing = planned.sizing
    # Judged at the one worker allowed, where it does not fit: the Fits column says false for a job that
    # cannot start (TooFewWorkers), and minWorkers says how many memory needs.
    assert not sizing.fits and sizing.min_workers > 1 and planned.evaluated_workers == 1
    assert sizing.per_device_bytes == estimate(spec, CATALOG.get("nvidia-a100-80gb"), Layout(8, 1)).total
    assert fits(spec, CATALOG.get("nvidia-a100-80gb"), 8, sizing.min_workers)
    assert any("workers.maxReplicas allows 1" in warning for warning in sizing.warnings)


def test_raised_elastic_floor_is_explained() -> None:
    spec = make_spec(
        model=LLAMA2_70B,
        training={"sharding": "zero3", "activationCheckpointing": "full"},
        resources={"accelerator": "nvidia-a100-80gb", "acceleratorsPerWorker": 8},
        workers={"minReplicas": 1, "maxReplicas": 16},
    )
    sizing = plan(spec)
    assert sizing.min_workers > 1
    assert any("elastic floor" in warning and "minReplicas" in warning for warning in sizing.warnings)


NOT_FITTING = {
    "8B plain DP on a T4 in fp32": make_spec(
        model={**LLAMA3_8B, "precision": "fp32"},
        resources={"accelerator": "nvidia-t4", "acceleratorsPerWorker": 1},
    ),
    "70B plain DP, any device": make_spec(model=LLAMA2_70B, training={"sequenceLength": 4096}),
    "8B on one L4 at 8k tokens": make_spec(
        model=LLAMA3_8B,
        training={"microBatchSize": 4, "sequenceLength": 8192},
        resources={"accelerator": "nvidia-l4", "acceleratorsPerWorker": 1},
    ),
}


@pytest.mark.parametrize("name", NOT_FITTING)
def test_nothing_fits_reports_a_best_effort_layout_and_remedies_that_fit_when_applied(name: str) -> None:
    spec = NOT_FITTING[name]
    sizing = plan(spec)
    assert sizing.fits is False
    assert sizing.per_device_bytes > sizing.device_memory_bytes * (1 - spec.resources.memory_headroom)
    (explanation,) = [warning for warning in sizing.warnings if warning.startswith("does not fit")]
    remedies = find_remedies(spec)
    assert remedies, explanation
    named = [remedy for remedy in remedies if remedy.description in explanation]
    assert named, explanation
    for remedy in remedies:
        changed = spec
        for change in remedy.changes:
            changed = change.apply(changed)
        replanned = plan(changed)
        assert replanned.fits, f"{remedy.description} was said to fit: {replanned.warnings}"
        assert replanned == remedy.sizing.model_copy(update={"warnings": replanned.warnings})


def test_hopeless_job_says_nothing_in_the_catalog_holds_it() -> None:
    spec = make_spec(
        model={"parameters": "1B", "architecture": {"layers": 24, "hiddenSize": 2048, "attentionHeads": 16}},
        training={"microBatchSize": 1, "sequenceLength": 4_000_000, "attention": "eager"},
    )
    sizing = plan(spec)
    assert sizing.fits is False
    assert any("nothing in the catalog holds it" in warning for warning in sizing.warnings)


def test_status_shape_and_summary() -> None:
    sizing = plan(make_spec(resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8}))
    dumped = sizing.model_dump(by_alias=True, mode="json")
    assert set(dumped) == SIZING_KEYS
    assert dumped["resourceName"] == "nvidia.com/gpu" and dumped["deviceMemoryBytes"] == 81559 * 2**20
    assert sum(dumped["breakdown"].values()) == dumped["perDeviceBytes"]
    assert sizing_summary(sizing).startswith("8 x nvidia-h100-80gb, ")
    assert sizing_summary(sizing).endswith(" of 79.6 GiB per device")


# ------------------------------------------------------------------ no candidate is not an invalid spec


def test_a_count_no_node_of_the_cluster_offers_is_sized_against_the_catalog_with_a_warning() -> None:
    # Valid against the catalog (H100 nodes come with 8), but this cluster's nodes have 4 each.
    spec = make_spec(model={"parameters": "7B"}, resources={"acceleratorsPerWorker": 8})
    sizing = plan(spec, inventory=nodes("nvidia-h100-80gb", 4, 4, 4))
    assert sizing.accelerators_per_worker == 8 and 8 in CATALOG.get(sizing.accelerator).per_node
    assert sizing == plan(spec).model_copy(update={"warnings": sizing.warnings})
    assert any("no node in the cluster offers 8 devices" in warning for warning in sizing.warnings)


def test_a_count_no_catalog_accelerator_offers_is_still_an_invalid_spec() -> None:
    with pytest.raises(InvalidSpec) as raised:
        plan(make_spec(resources={"acceleratorsPerWorker": 3}))
    (error,) = raised.value.errors
    assert error.path == "spec.resources.acceleratorsPerWorker" and "3 devices per node" in error.message


def test_no_bigger_device_in_the_cluster_with_the_count_is_no_remedy() -> None:
    spec = make_spec(
        model=LLAMA2_70B, resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8}
    )
    inventory = [*nodes("nvidia-h100-80gb", 2, 8, 8), *nodes("nvidia-h200", 2, 4, 4)]
    sizing = plan(spec, inventory=inventory)
    assert sizing.fits is False and sizing.accelerator == "nvidia-h100-80gb"
    assert all(
        remedy.sizing.accelerator == "nvidia-h100-80gb"
        for remedy in find_remedies(spec, CATALOG, pool_inventory(inventory))
    )
    assert any(
        "bigger accelerator" in warning and "8 devices" in warning and "cluster" in warning
        for warning in sizing.warnings
    )


def test_no_bigger_catalog_device_with_the_count_is_no_remedy() -> None:
    spec = make_spec(
        model={"parameters": "7B"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 3},
    )
    sizing = plan(spec)
    assert sizing.fits is False and sizing.accelerators_per_worker == 3
    assert all(remedy.sizing.accelerator == "nvidia-h100-80gb" for remedy in find_remedies(spec))
    assert any(
        "bigger accelerator" in warning and "3 devices per node" in warning for warning in sizing.warnings
    )


# ------------------------------------------------------------------ whole TP x PP groups


def test_an_auto_layout_runs_whole_groups_and_says_when_replicas_are_rounded() -> None:
    spec = make_spec(
        model={"parameters": "70B"},
        training={"tensorParallel": 8, "pipelineParallel": 2},
        workers={"replicas": 3},
    )
    planned = plan_job(spec)
    sizing = planned.sizing
    assert sizing.fits and (sizing.accelerators_per_worker * planned.evaluated_workers) % 16 == 0
    assert planned.evaluated_workers == 2  # 3 workers of 8 are 24 devices: rounded down to 2 (16)
    assert any("workers.replicas 3" in warning and "2 workers run" in warning for warning in sizing.warnings)


def test_an_auto_layout_rounds_a_stated_minimum_up_to_whole_groups_never_below_it() -> None:
    """TP 16 on 8-device workers: groups of 2 workers. minReplicas 3 was rounded down to a floor of 2, so
    the job could be shrunk to, and torchrun would accept, fewer workers than its stated minimum."""
    spec = make_spec(
        model={**LLAMA3_8B, "architecture": {**LLAMA3_8B["architecture"], "kvHeads": 16}},
        training={"tensorParallel": 16},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": "auto"},
        elastic={"enabled": True},
        workers={"replicas": 6, "minReplicas": 3, "maxReplicas": 6},
    )
    sizing = plan(spec)
    counts = worker_counts(spec, sizing.min_workers, sizing.accelerators_per_worker)
    assert sizing.accelerators_per_worker == 8 and (counts.step, counts.floor, counts.desired) == (2, 4, 6)
    assert any(
        "workers.minReplicas 3" in warning and "the floor is 4" in warning for warning in sizing.warnings
    )
    # Above maxReplicas once rounded: no layout of whole groups keeps [3, 3], none runs.
    capped = spec.model_copy(
        update={"workers": spec.workers.model_copy(update={"replicas": 3, "max_replicas": 3})}
    )
    assert not worker_counts(capped, 1, 8).feasible
    # The planner says why (memory needs only 2) and what to change, and the job's condition names the
    # rounded minReplicas, not memory.
    capped_sizing = plan(capped)
    assert capped_sizing.min_workers == 2 and capped_sizing.fits  # memory fits on the 2 workers allowed
    assert (
        "workers.minReplicas 3: tensorParallel x pipelineParallel = 16 devices per model replica come in 2 "
        "workers of 8, so the floor is 4, above the 3 workers.maxReplicas allows, so no worker starts; lower "
        "workers.minReplicas to 2 or raise workers.maxReplicas to 4"
    ) in capped_sizing.warnings
    bounds = worker_counts(capped, capped_sizing.min_workers, 8)
    assert floor_needs(capped, bounds, capped_sizing.min_workers, 8) == (
        "spec.workers.minReplicas 3, rounded up to whole tensorParallel x pipelineParallel groups of 2 "
        "workers, needs at least 4 workers"
    )
    # A floor memory sets above the rounded minimum is memory's.
    assert floor_needs(capped, worker_counts(capped, 6, 8), 6, 8) == "memory needs at least 6 workers"


def test_a_rounded_minreplicas_that_memory_needs_anyway_is_not_offered_lower() -> None:
    """100B, TP 16 on 8-device workers (groups of 2), minReplicas = maxReplicas = 3: memory needs 4 workers,
    the same as minReplicas rounded up. Lowering minReplicas to 2 changes nothing (memory still needs 4), so
    the only advice is memory's: raise maxReplicas."""
    spec = make_spec(
        model={"parameters": "100B"},
        training={"sharding": "fsdp", "tensorParallel": 16},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": "auto"},
        elastic={"enabled": True},
        workers={"replicas": 3, "minReplicas": 3, "maxReplicas": 3},
    )
    sizing = plan(spec)
    assert (sizing.accelerators_per_worker, sizing.min_workers) == (8, 4)
    assert not [warning for warning in sizing.warnings if "lower workers.minReplicas" in warning]
    assert any("memory needs at least 4 workers" in warning for warning in sizing.warnings)


def test_an_auto_layout_that_runs_the_replicas_asked_beats_one_cheaper_only_by_dropping_workers() -> None:
    """TP 8, 3 replicas on H100s: 4 per worker would make 12 devices, so 2 workers (one model replica)
    would run; 8 per worker runs the 3 asked."""
    spec = make_spec(
        model={"parameters": "8B"},
        training={"tensorParallel": 8},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": "auto"},
        workers={"replicas": 3},
    )
    planned = plan_job(spec)
    assert (planned.sizing.accelerators_per_worker, planned.evaluated_workers) == (8, 3)
    assert not any("workers.replicas" in warning for warning in planned.sizing.warnings)


FIXED_GROUP_CASES = {
    # per worker, tensorParallel, pipelineParallel, workers, elastic -> the field named
    "replicas, one device per worker": (1, 1, 2, {"replicas": 3}, False, "spec.workers.replicas"),
    "replicas, a group spans two workers": (8, 8, 2, {"replicas": 3}, False, "spec.workers.replicas"),
    "maxReplicas clamps replicas": (
        1,
        1,
        2,
        {"replicas": 5, "maxReplicas": 3},
        False,
        "spec.workers.maxReplicas",
    ),
    "elastic floor": (1, 1, 2, {"replicas": 4, "minReplicas": 1}, True, "spec.workers.minReplicas"),
    # No maxReplicas: minReplicas above replicas sets the count (it named maxReplicas, not in the spec).
    "minReplicas above replicas": (
        2,
        8,
        1,
        {"replicas": 4, "minReplicas": 6},
        False,
        "spec.workers.minReplicas",
    ),
    "tensorParallel straddles workers": (4, 3, 1, {"replicas": 2}, False, "spec.training.tensorParallel"),
    "pipelineParallel straddles workers": (4, 2, 3, {"replicas": 2}, False, "spec.training.pipelineParallel"),
}


@pytest.mark.parametrize("name", FIXED_GROUP_CASES)
def test_a_fixed_layout_not_in_whole_groups_names_the_field_at_fault(name: str) -> None:
    per_worker, tensor, pipeline, workers, elastic, field = FIXED_GROUP_CASES[name]
    spec = make_spec(
        model={"parameters": "7B"},
        training={"tensorParallel": tensor, "pipelineParallel": pipeline},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": per_worker},
        workers=workers,
        elastic={"enabled": elastic},
    )
    with pytest.raises(InvalidSpec) as raised:
        plan(spec)
    assert [error.path for error in raised.value.errors] == [field], raised.value.errors


def test_remedies_never_propose_what_the_fixed_device_cannot_run() -> None:
    spec = make_spec(
        model={"parameters": "1.5B", "precision": "fp16-mixed"},
        resources={"accelerator": "nvidia-v100-32gb", "acceleratorsPerWorker": 1},
    )
    device = CATALOG.get("nvidia-v100-32gb")
    assert plan(spec).fits is False and unsupported(spec, device) is None
    remedies = find_remedies(spec)
    assert remedies  # others (ZeRO-3, 8-bit AdamW, offload, ...) do fit
    for remedy in remedies:
        changed = spec
        for change in remedy.changes:
            changed = change.apply(changed)
        if remedy.sizing.accelerator == device.name:
            assert unsupported(changed, device) is None, remedy.description  # e.g. bf16-true on a V100


def test_a_remedy_must_fit_within_the_worker_count_the_spec_allows() -> None:
    # 70B on two fixed workers of 8 H100s: zero3 with full recompute fits on 4 workers, which
    # replicas: 2 (not elastic) does not allow, so the job would stay blocked (TooFewWorkers).
    spec = make_spec(
        model=LLAMA2_70B,
        training={"microBatchSize": 2, "sequenceLength": 4096},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
        workers={"replicas": 2},
    )
    remedies = find_remedies(spec)
    assert remedies
    for remedy in remedies:
        changed = spec
        for change in remedy.changes:
            changed = change.apply(changed)
        sizing = plan_job(changed).sizing
        assert sizing.fits and worker_counts(changed, sizing.min_workers, 8).feasible, remedy.description
        if not any(change.field.startswith("workers.") for change in remedy.changes):
            assert sizing.min_workers <= 2, (remedy.description, sizing.min_workers)
    assert not any(change.field.startswith("workers.") for change in remedies[0].changes)


def test_a_remedy_that_needs_more_workers_names_the_bound_to_raise() -> None:
    # 70B without sharding on one L4 and replicas 1: nothing fits on one worker, zero3 and the rest fit
    # on many. The advice is that set with workers.replicas raised, not "nothing holds it".
    spec = make_spec(
        model=LLAMA2_70B,
        resources={"accelerator": "nvidia-l4", "acceleratorsPerWorker": 1},
    )
    sizing = plan_job(spec).sizing
    assert not sizing.fits
    (note,) = [warning for warning in sizing.warnings if warning.startswith("does not fit")]
    assert "nothing in the catalog holds it" not in note and "workers.replicas: " in note
    remedy = next(r for r in find_remedies(spec) if any(c.field == "workers.replicas" for c in r.changes))
    changed = spec
    for change in remedy.changes:
        changed = change.apply(changed)
    again = plan_job(changed).sizing
    assert again.fits and worker_counts(changed, again.min_workers, 1).feasible


def test_a_change_that_makes_the_spec_invalid_is_no_remedy_and_breaks_nothing() -> None:
    # trainableParameters under full training is read only with lora/qlora; the LoRA remedy would make
    # it exceed the model. Planning the job must neither fail nor offer that change.
    spec = make_spec(
        model={"parameters": "8B", "finetuning": {"method": "full", "trainableParameters": "9B"}},
        resources={"accelerator": "nvidia-l4", "acceleratorsPerWorker": 1},
    )
    sizing = plan_job(spec).sizing
    assert not sizing.fits
    assert not any("finetuning.method: lora" in remedy.description for remedy in find_remedies(spec))


def test_a_job_nothing_holds_names_each_field_it_tried_once() -> None:
    spec = make_spec(model={"parameters": "900T"}, training={"sequenceLength": 8192})
    sizing = plan_job(spec).sizing
    (note,) = [warning for warning in sizing.warnings if "nothing in the catalog holds it" in warning]
    # Tried together, full recompute replaced selective and QLoRA replaced LoRA: only the last is named.
    assert "activationCheckpointing: full" in note and "activationCheckpointing: selective" not in note
    assert "method: qlora" in note and "method: lora " not in note
    assert note.count("training.activationCheckpointing") == 1 and note.count("model.finetuning.method") == 1


def _remedy_warning(sizing: SizingStatus) -> str:
    (note,) = [warning for warning in sizing.warnings if warning.startswith("does not fit")]
    return note


def _apply(spec: TrainingJobSpec, remedy: object) -> TrainingJobSpec:
    for change in remedy.changes:  # type: ignore[attr-defined]
        spec = change.apply(spec)
    return spec


def test_no_remedy_asks_for_more_workers_than_the_operator_runs_per_job() -> None:
    from kubefit.decisions.job import DEFAULT_MAX_WORKERS_PER_JOB, operator_check

    # zero3 alone fits on 1,095 A100s: more than the operator's 1,024 per job; zero3 with offload or
    # LoRA fits on fewer, and is what is named.
    spec = make_spec(
        model={"parameters": "730B", "precision": "bf16-true", "optimizer": "adafactor"},
        training={
            "activationCheckpointing": "full",
            "microBatchSize": 1,
            "sequenceLength": 512,
            "loss": "chunked",
        },
        resources={"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 1},
    )
    check = operator_check("big", DEFAULT_MAX_WORKERS_PER_JOB)
    remedies = find_remedies(spec, check=check)
    assert remedies
    for remedy in remedies:
        changed = _apply(spec, remedy)
        check(changed)  # the operator accepts it
        assert plan_job(changed).sizing.fits
    note = _remedy_warning(plan_job(spec, check=check).sizing)
    assert "workers.replicas: 1095" not in note and "nothing in the catalog holds it" not in note


def test_raising_max_replicas_raises_replicas_too_when_the_count_would_split_a_group() -> None:
    # replicas 6 above maxReplicas 4 was clamped to 4; under a raised maxReplicas it counts, and 6 splits
    # the 4-device tensor-parallel groups. The remedy raises both.
    spec = make_spec(
        model={"parameters": "1.6T", "finetuning": {"method": "qlora"}},
        training={
            "tensorParallel": 4,
            "activationCheckpointing": "full",
            "microBatchSize": 1,
            "loss": "chunked",
            "offload": "optimizer",
        },
        resources={"accelerator": "amd-mi300x", "acceleratorsPerWorker": 1},
        workers={"replicas": 6, "maxReplicas": 4},
        elastic={"enabled": True},
    )
    note = _remedy_warning(plan_job(spec).sizing)
    assert "nothing in the catalog holds it" not in note
    remedy = next(r for r in find_remedies(spec) if any(c.field == "workers.maxReplicas" for c in r.changes))
    changed = _apply(spec, remedy)
    sizing = plan_job(changed).sizing
    assert sizing.fits and worker_counts(changed, sizing.min_workers, 1).feasible


def test_no_remedy_makes_the_job_name_too_long_for_its_workers() -> None:
    from kubefit.decisions.job import DEFAULT_MAX_WORKERS_PER_JOB, operator_check

    name = "n" * 54  # worker-9 fits in 63 characters, worker-334 does not
    spec = make_spec(model=LLAMA2_70B, resources={"accelerator": "nvidia-t4", "acceleratorsPerWorker": 1})
    check = operator_check(name, DEFAULT_MAX_WORKERS_PER_JOB)
    for remedy in find_remedies(spec, check=check):
        check(_apply(spec, remedy))


_BIG_ON_A100 = {
    "template": {"spec": {"containers": [{"name": "t", "image": "i"}]}},
    "model": {"parameters": "730B", "precision": "bf16-true", "optimizer": "adafactor"},
    "training": {
        "activationCheckpointing": "full",
        "microBatchSize": 1,
        "sequenceLength": 512,
        "loss": "chunked",
    },
    "resources": {"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 1},
}


def test_the_operators_sizing_path_names_no_remedy_beyond_its_worker_limit() -> None:
    from kubefit.decisions.job import checked_spec

    _, job_sizing = checked_spec("big", _BIG_ON_A100, CATALOG, 64)
    note = _remedy_warning(job_sizing.sizing)
    counts = [int(n) for n in re.findall(r"workers\.(?:replicas|maxReplicas): (\d+)", note)]
    assert all(count <= 64 for count in counts), note


def test_a_job_that_fits_only_on_more_workers_than_the_operator_runs_is_told_what_fits_on_fewer() -> None:
    from kubefit.decisions.job import checked_spec, operator_check

    raw = {**_BIG_ON_A100, "training": {**_BIG_ON_A100["training"], "sharding": "zero3"}}
    spec, job_sizing = checked_spec("big", raw, CATALOG, 1024)
    assert not job_sizing.sizing.fits and job_sizing.sizing.min_workers > 1024  # judged at its 1 worker
    assert job_sizing.evaluated_workers == 1
    warnings = job_sizing.sizing.warnings
    assert any("more than this operator runs per job" in warning for warning in warnings), warnings
    assert not any("raise workers.maxReplicas" in warning for warning in warnings)
    (fewer,) = [warning for warning in warnings if warning.startswith("Would fit on fewer workers: ")]
    assert len(fewer.split("; ")) == 3, fewer  # four found; three named, as in every remedy warning
    check = operator_check("big", 1024)
    for remedy in find_remedies(spec, check=check):
        check(_apply(spec, remedy))


def test_a_refused_worker_count_is_tried_again_with_more_devices_per_worker() -> None:
    from kubefit.decisions.job import operator_check

    # Under a limit of 2 workers, the remedy packs 16 devices into each worker.
    spec = parse_spec(_BIG_ON_A100)
    check = operator_check("big", 2)
    remedies = find_remedies(spec, check=check)
    assert remedies
    for remedy in remedies:
        changed = _apply(spec, remedy)
        check(changed)
        assert plan_job(changed).sizing.fits


def test_when_only_the_operators_limit_stands_in_the_way_the_note_says_so() -> None:
    from kubefit.decisions.job import checked_spec

    _, job_sizing = checked_spec("big", _BIG_ON_A100, CATALOG, 1)
    note = _remedy_warning(job_sizing.sizing)
    assert "nothing in the catalog holds it" not in note
    assert "fits only with more workers than this operator runs per job" in note


@pytest.mark.parametrize(("parameters", "group_note"), [("8B", True), ("70B", False)])
def test_the_group_note_names_a_floor_only_the_grouping_set(parameters: str, group_note: bool) -> None:
    # 16-device groups of 2 workers of 8: minReplicas 1 becomes 2 by the grouping. At 70B memory
    # needs 4 workers, which the memory note explains; the group note would name the wrong cause.
    spec = make_spec(
        model={**LLAMA3_8B, "parameters": parameters} if parameters == "8B" else LLAMA2_70B,
        training={
            "sharding": "zero3",
            "activationCheckpointing": "full",
            "tensorParallel": 8,
            "pipelineParallel": 2,
            "sequenceLength": 4096,
        },
        resources={"accelerator": "nvidia-h100-80gb"},
        workers={"replicas": 3, "minReplicas": 1, "maxReplicas": 5},
        elastic={"enabled": True},
    )
    warnings = plan_job(spec).sizing.warnings
    assert any("workers.minReplicas 1:" in warning for warning in warnings) is group_note, warnings


def test_an_elastic_floor_of_one_tp_group_is_checked_at_two_replicas_where_the_sharding_buffers_appear() -> (
    None
):
    # From one replica to two, FSDP's all-gather buffers come in before sharding over more devices helps:
    # sized at its floor (one TP group of 2 devices) and desired count only, this job read 35.8 GiB per
    # device and fitting, where 2 workers need 36.2 of the A100 40GB's 36.0 usable.
    spec = make_spec(
        model={**LLAMA3_8B, "finetuning": {"method": "qlora"}},
        training={"sharding": "fsdp", "tensorParallel": 2, "sequenceLength": 5632},
        resources={"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 2},
        workers={"replicas": 8, "minReplicas": 1},
        elastic={"enabled": True},
    )
    a100 = CATALOG.get("nvidia-a100-40gb")
    assert a100 is not None
    at_two = estimate(spec, a100, Layout(2, 2)).total
    sizing = plan(spec, CATALOG)
    assert at_two > usable_bytes(spec, a100)  # the case: two workers do not fit on these devices
    assert not sizing.fits or sizing.min_workers > 2
    assert sizing.per_device_bytes >= at_two or sizing.min_workers > 2


def test_when_nothing_fits_the_layout_shown_is_one_the_worker_bounds_allow() -> None:
    # 12 workers x 1 and 6 x 2 A100s came out equally close; the first, above replicas 8, made the job
    # TooFewWorkers ("memory needs at least 12 workers") where 12 would not fit either.
    spec = make_spec(
        model={"parameters": "20B"},
        training={"tensorParallel": 4, "pipelineParallel": 3, "sequenceLength": 65536},
        resources={"accelerator": "nvidia-a100-80gb"},
        workers={"replicas": 8},
    )
    sizing = plan(spec, CATALOG)
    assert not sizing.fits
    assert worker_counts(spec, sizing.min_workers, sizing.accelerators_per_worker).feasible


def test_with_an_inventory_no_remedy_names_an_accelerator_no_node_carries() -> None:
    # An H100-only cluster: the job fits no H100; "resources.accelerator: nvidia-h200" could never be placed.
    spec = make_spec(
        model={
            "parameters": "1B",
            "precision": "bf16-true",
            "optimizer": "sgd",
            "finetuning": {"method": "qlora"},
        },
        training={
            "sequenceLength": 200000,
            "activationCheckpointing": "full",
            "loss": "chunked",
            "sharding": "zero3",
        },
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
    )
    inventory = pool_inventory(nodes("nvidia-h100-80gb", 1, 8, 8))
    sizing = plan(spec, inventory=nodes("nvidia-h100-80gb", 1, 8, 8))
    assert not sizing.fits
    remedies = find_remedies(spec, CATALOG, inventory)
    named = [c.value for remedy in remedies for c in remedy.changes if c.field == "resources.accelerator"]
    assert named == []
    assert any(
        "a bigger accelerator was not tried as a remedy: no node in the cluster carries one with more memory "
        "than nvidia-h100-80gb" in warning
        for warning in sizing.warnings
    ), sizing.warnings
    # With H200 nodes too, the bigger device offered is one the cluster carries, and no other.
    both = [*nodes("nvidia-h100-80gb", 1, 8, 8), *nodes("nvidia-h200", 1, 8, 8)]
    named = [
        c.value
        for remedy in find_remedies(spec, CATALOG, pool_inventory(both))
        for c in remedy.changes
        if c.field == "resources.accelerator"
    ]
    assert named and set(named) == {"nvidia-h200"}, named
    # Without the inventory the catalog's bigger devices are fair game.
    anywhere = [c.field for remedy in find_remedies(spec, CATALOG) for c in remedy.changes]
    assert "resources.accelerator" in anywhere


def test_a_cluster_of_accelerators_that_cannot_run_the_job_is_told_so() -> None:
    sizing = plan(make_spec(model={"parameters": "1B"}), inventory=nodes("nvidia-t4", 2, 4, 4))  # bf16-mixed
    assert any(
        "no node in the cluster carries an accelerator that can run this job" in warning
        and "nvidia-t4" in warning
        for warning in sizing.warnings
    ), sizing.warnings


def test_nodes_smaller_than_every_per_node_count_of_the_catalog_are_told() -> None:
    # v5p's catalog count is 4 chips a worker; nodes of 2 can never hold one: the job would queue forever.
    spec = make_spec(
        framework="jax",
        model={"parameters": "8B"},
        training={"sharding": "fsdp"},
        resources={"accelerator": "google-tpu-v5p"},
        workers={"replicas": 2},
    )
    sizing = plan(spec, inventory=nodes("google-tpu-v5p", 3, 2, 2))
    assert "no node offers 4 x google-tpu-v5p; the largest has 2" in sizing.warnings


def test_a_count_set_by_the_tp_group_is_not_blamed_on_memory() -> None:
    # 1B on A10Gs fits one device; it is tensorParallel 3 that needs 3 workers of 1.
    spec = make_spec(
        model={"parameters": "1B"},
        training={"tensorParallel": 3},
        resources={"accelerator": "nvidia-a10g"},
        workers={"replicas": 2},
    )
    sizing = plan(spec)
    assert sizing.min_workers == 3
    told = [warning for warning in sizing.warnings if "allows 2" in warning]
    assert told == [
        "a tensorParallel x pipelineParallel group of 3 devices needs at least 3 workers of 1 but "
        "workers.replicas allows 2; raise workers.maxReplicas (and replicas)"
    ]
    memory = make_spec(
        model={"parameters": "3B"},
        training={"sharding": "fsdp", "activationCheckpointing": "full"},
        resources={"accelerator": "nvidia-a10g", "acceleratorsPerWorker": 1},
    )
    told = [warning for warning in plan(memory).warnings if "allows 1" in warning]
    assert len(told) == 1 and "memory needs at least 4 workers but workers.replicas allows 1" in told[0]


def test_a_tpu_job_that_may_run_more_than_one_worker_is_warned_that_no_multi_host_slice_is_formed() -> None:
    # Planned on 2 workers of 4 v5e chips, it ran as two separate hosts with nothing said: libtpu forms a
    # multi-host slice only from TPU_WORKER_ID and TPU_WORKER_HOSTNAMES, which kubefit does not set.
    tpu = {"accelerator": "google-tpu-v5e", "acceleratorsPerWorker": 4}
    several = plan(
        make_spec(framework="jax", model={"parameters": "8B"}, resources=tpu, workers={"replicas": 4})
    )
    assert any("forms no multi-host TPU slice" in warning for warning in several.warnings), several.warnings
    one = plan(make_spec(framework="jax", model={"parameters": "1B"}, resources=tpu))
    assert one.min_workers == 1 and not any("TPU slice" in warning for warning in one.warnings)
    gpus = plan(make_spec(model={"parameters": "8B"}, workers={"replicas": 4}))
    assert not any("TPU slice" in warning for warning in gpus.warnings)


def _nodes(accelerator: str, count: int, allocatable: int, free: int) -> list[NodeInventory]:
    return [NodeInventory(f"{accelerator}-{index}", accelerator, allocatable, free) for index in range(count)]


def test_a_layout_the_cluster_can_never_hold_loses_to_one_it_can() -> None:
    """auto ranks layouts the cluster's nodes can hold first: 4 workers of 1 L4 on a cluster of 2 L4s
    never run, one 8-H100 node holds them (busy now; the job queues for it)."""
    spec = make_spec(
        model={"parameters": "300M"},
        workers={"replicas": 4},
        resources={"accelerator": "auto", "acceleratorsPerWorker": 1},
    )
    inventory = [*_nodes("nvidia-l4", 1, 2, 0), *_nodes("nvidia-h100-80gb", 1, 8, 0)]
    assert plan(spec, inventory=inventory).accelerator == "nvidia-h100-80gb"


def test_an_elastic_job_needs_only_its_floor_placeable() -> None:
    """An elastic job starts on its floor: one free L4 of two holds its first worker, so the L4 is chosen
    though its 4 workers would not all fit."""
    spec = make_spec(
        model={"parameters": "300M"},
        workers={"replicas": 4, "minReplicas": 1, "maxReplicas": 4},
        elastic={"enabled": True},
        resources={"accelerator": "auto", "acceleratorsPerWorker": 1},
    )
    inventory = [*_nodes("nvidia-l4", 1, 2, 2), *_nodes("nvidia-h100-80gb", 1, 8, 8)]
    assert plan(spec, inventory=inventory).accelerator == "nvidia-l4"


def test_an_elastic_single_device_floor_is_sized_at_two_workers_too() -> None:
    """A floor of one device has no data-parallel buffers; two workers do: the estimate reported is the
    larger, so the job still fits once it grows."""
    spec = make_spec(
        model={"parameters": "1M"},
        workers={"replicas": 8, "minReplicas": 1, "maxReplicas": 8},
        elastic={"enabled": True},
        training={"sharding": "fsdp"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
    )
    device = CATALOG.get("nvidia-h100-80gb")
    assert device is not None
    at_two = estimate(spec, device, Layout(devices_per_worker=1, workers=2)).total
    assert plan(spec).per_device_bytes >= at_two > estimate(spec, device, Layout(1, 1)).total
