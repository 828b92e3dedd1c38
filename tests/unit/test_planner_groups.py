"""The planner and its advice keep tensor-parallel groups on one node, say when a job starts no worker, and
name what fits within the job's own worker counts (on a TPU, without more workers)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from sizing_inputs import LLAMA3_8B, make_spec

from kubefit.sizing.planner import NodeInventory, plan, plan_job
from kubefit.sizing.suggest import overprovisioned

LLAMA3_70B = {
    "parameters": "70.6B",
    "architecture": {
        "layers": 80,
        "hiddenSize": 8192,
        "attentionHeads": 64,
        "kvHeads": 8,
        "intermediateSize": 28672,
        "vocabSize": 128256,
    },
}
LORA = {"method": "lora", "loraRank": 16}
H100 = "nvidia-h100-80gb"
SPANS_NODES = "each tensor-parallel group spans workers"


def _nodes(accelerator: str, count: int, devices: int) -> list[NodeInventory]:
    return [NodeInventory(f"{accelerator}-{index}", accelerator, devices, devices) for index in range(count)]


AUTO_COUNT_CASES: dict[str, tuple[dict[str, Any], list[NodeInventory] | None]] = {
    # 4 H100s a worker x 2 put each TP 8 group across two nodes, where an H100 node holds 8.
    "70B LoRA, TP 8, 2 replicas on H100": (
        {
            "model": {**LLAMA3_70B, "finetuning": LORA},
            "training": {"tensorParallel": 8},
            "resources": {"accelerator": H100},
            "workers": {"replicas": 2},
        },
        None,
    ),
    "TP 8 x PP 2 on H100, elastic 3 of 3 to 5": (
        {
            "model": LLAMA3_8B,
            "training": {"sharding": "zero1", "tensorParallel": 8, "pipelineParallel": 2},
            "resources": {"accelerator": H100},
            "workers": {"replicas": 3, "minReplicas": 3, "maxReplicas": 5},
            "elastic": {"enabled": True},
        },
        None,
    ),
    "8B full ZeRO-1, TP 2 on A100 80GB, elastic": (
        {
            "model": LLAMA3_8B,
            "training": {"sharding": "zero1", "tensorParallel": 2},
            "resources": {"accelerator": "nvidia-a100-80gb"},
            "workers": {"replicas": 4, "minReplicas": 3, "maxReplicas": 6},
            "elastic": {"enabled": True},
        },
        None,
    ),
    # 2 L4s a worker split TP 4 where the cluster's L4 nodes hold 4.
    "8B LoRA, TP 4 on a cluster of H100 x 8 and L4 x 4 nodes": (
        {
            "model": {**LLAMA3_8B, "precision": "fp16-mixed", "finetuning": LORA},
            "training": {"tensorParallel": 4, "sequenceLength": 8192},
            "workers": {"replicas": 2},
        },
        [*_nodes(H100, 2, 8), *_nodes("nvidia-l4", 4, 4)],
    ),
    # Only the A100 40GB offers 16 a node: the others would split the group.
    "TP 16, any accelerator": ({"training": {"tensorParallel": 16}}, None),
}


@pytest.mark.parametrize("name", AUTO_COUNT_CASES)
def test_an_auto_count_per_worker_is_a_multiple_of_tensor_parallel(name: str) -> None:
    sections, inventory = AUTO_COUNT_CASES[name]
    spec = make_spec(**sections)
    sizing = plan(spec, inventory=inventory)
    assert sizing.fits, sizing.warnings
    assert sizing.accelerators_per_worker % spec.training.tensor_parallel == 0, sizing
    assert not any(SPANS_NODES in warning for warning in sizing.warnings), sizing.warnings


def test_tensor_parallel_beyond_every_node_spans_whole_workers_with_a_warning() -> None:
    # A T4 node holds at most 4: TP 8 must cross nodes; whole workers of 4, and a way to keep it on one.
    spec = make_spec(
        model={"parameters": "355M", "precision": "fp16-mixed"},
        training={"tensorParallel": 8},
        resources={"accelerator": "nvidia-t4"},
        workers={"replicas": 2},
    )
    sizing = plan(spec)
    assert (sizing.accelerators_per_worker, sizing.min_workers, sizing.fits) == (4, 2, True)
    told = [warning for warning in sizing.warnings if SPANS_NODES in warning]
    assert len(told) == 1 and "no nvidia-t4 node offers a multiple of tensorParallel 8 devices" in told[0]
    assert "tensorParallel 4 with pipelineParallel 2 across nodes" in told[0]
    # On a cluster whose A100 nodes hold 4, likewise (the catalog's 8 a node is not there).
    on_small_nodes = make_spec(
        model={**LLAMA3_70B, "finetuning": LORA},
        training={"tensorParallel": 8},
        resources={"accelerator": "auto"},
        workers={"replicas": 2},
    )
    sizing = plan(on_small_nodes, inventory=_nodes("nvidia-a100-80gb", 4, 4))
    assert (sizing.accelerator, sizing.accelerators_per_worker) == ("nvidia-a100-80gb", 4)
    assert any("node in the cluster offers a multiple of tensorParallel 8" in w for w in sizing.warnings)


@pytest.mark.parametrize(("per_worker", "warned"), [(4, True), (8, False), (16, False)])
def test_a_fixed_count_that_splits_tensor_parallel_is_the_users_choice_with_a_warning(
    per_worker: int, warned: bool
) -> None:
    spec = make_spec(
        model={"parameters": "8B"},
        training={"tensorParallel": 8},
        resources={"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": per_worker},
        workers={"replicas": 2 if per_worker == 4 else 1},
    )
    sizing = plan(spec)
    assert sizing.accelerators_per_worker == per_worker
    told = [warning for warning in sizing.warnings if SPANS_NODES in warning]
    assert bool(told) is warned, sizing.warnings
    if warned:
        assert told[0].startswith("resources.acceleratorsPerWorker 4 is not a multiple of tensorParallel 8")
        assert "acceleratorsPerWorker: 8" in told[0]


def test_the_over_provisioning_advice_never_splits_a_tensor_parallel_group() -> None:
    # 8B LoRA, TP 4 on 2 workers of 8 H100s: it advised 2 a worker, half of each TP group on another node.
    spec = make_spec(
        model={**LLAMA3_8B, "finetuning": LORA},
        training={"tensorParallel": 4, "sharding": "zero1"},
        resources={"accelerator": H100, "acceleratorsPerWorker": 8},
        workers={"replicas": 2},
    )
    sizing = plan(spec)
    advice = overprovisioned(spec, sizing)
    assert advice is not None and "set resources.acceleratorsPerWorker: 4" in advice, advice


GRID = list(
    itertools.product(
        ["nvidia-t4", H100],  # 4 and 8 a node
        [1, 2, 8],  # tensorParallel
        [1, 2],  # pipelineParallel
        [1, 2, 3],  # replicas
        ["355M", "8B", "70B"],
    )
)


@pytest.mark.parametrize(("accelerator", "tensor", "pipeline", "replicas", "parameters"), GRID)
def test_fits_is_false_whenever_the_job_needs_more_workers_than_its_bounds_allow(
    accelerator: str, tensor: int, pipeline: int, replicas: int, parameters: str
) -> None:
    # GPT-2 medium, TP 8 on T4s, 1 replica: one TP group spans 2 workers of 4, so none starts; it read
    # fits: true.
    spec = make_spec(
        model={"parameters": parameters, "precision": "fp16-mixed"},
        training={"tensorParallel": tensor, "pipelineParallel": pipeline, "sharding": "zero3"},
        resources={"accelerator": accelerator},
        workers={"replicas": replicas},
    )
    sizing = plan_job(spec, advise=False).sizing
    if sizing.min_workers > spec.workers.ceiling:
        assert not sizing.fits, sizing


def test_a_tp_group_wider_than_the_replicas_allowed_does_not_fit() -> None:
    spec = make_spec(
        model={"parameters": "355M", "precision": "fp16-mixed"},
        training={"tensorParallel": 8},
        resources={"accelerator": "nvidia-t4"},
    )
    sizing = plan(spec)
    assert (sizing.accelerators_per_worker, sizing.min_workers, sizing.fits) == (4, 2, False)
    assert any("needs at least 2 workers of 4 but workers.replicas allows 1" in w for w in sizing.warnings)


def test_too_few_workers_names_the_changes_that_fit_within_the_job_s_own_count() -> None:
    # 8B full, ZeRO-3 on A10Gs, 1 replica: memory needs 17 workers of one; raising maxReplicas was all it
    # said, where optimizer offload fits one worker of 4.
    spec = make_spec(
        model={**LLAMA3_8B, "finetuning": {"method": "full"}},
        training={"sharding": "zero3", "activationCheckpointing": "full", "sequenceLength": 4096},
        resources={"accelerator": "nvidia-a10g"},
    )
    sizing = plan(spec)
    assert sizing.min_workers > 1 and not sizing.fits
    assert any("raise workers.maxReplicas" in warning for warning in sizing.warnings)
    within = [
        warning for warning in sizing.warnings if warning.startswith("Would fit within workers.replicas 1")
    ]
    assert len(within) == 1 and "training.offload: optimizer ->" in within[0], sizing.warnings


def test_a_tpu_job_is_told_of_tpus_that_hold_it_on_one_host_not_to_add_workers() -> None:
    # 5B on v5e chips, 1 replica: memory needs 9 workers, which would be 9 hosts forming no slice.
    spec = make_spec(
        framework="jax",
        model={"parameters": "5B"},
        training={"sharding": "fsdp", "activationCheckpointing": "full", "sequenceLength": 2048},
        resources={"accelerator": "google-tpu-v5e"},
    )
    sizing = plan(spec)
    assert sizing.min_workers > 1 and not sizing.fits
    assert not any("raise workers.maxReplicas" in warning for warning in sizing.warnings), sizing.warnings
    within = [
        warning for warning in sizing.warnings if warning.startswith("Would fit within workers.replicas 1")
    ]
    assert len(within) == 1 and "resources.accelerator: google-tpu-v5p -> 4 x google-tpu-v5p" in within[0]


def test_a_tpu_job_that_does_not_fit_is_not_told_to_add_workers() -> None:
    # 150B on 8 v5e chips: "... + workers.replicas: 22 -> 8 x google-tpu-v5e, at least 22 workers" named
    # 22 hosts that form no slice.
    spec = make_spec(
        framework="jax",
        model={"parameters": "150B"},
        training={"activationCheckpointing": "full"},
        resources={"accelerator": "google-tpu-v5e", "acceleratorsPerWorker": 8},
    )
    (told,) = [warning for warning in plan(spec).warnings if warning.startswith("does not fit")]
    assert "workers." not in told, told
    # 1.5B on one v5e chip: another TPU holds it on one host, and is named first.
    small = make_spec(
        framework="jax",
        model={"parameters": "1.5B"},
        resources={"accelerator": "google-tpu-v5e", "acceleratorsPerWorker": 1},
    )
    (told,) = [warning for warning in plan(small).warnings if warning.startswith("does not fit")]
    assert "Would fit: resources.accelerator: google-tpu-v5p" in told, told
