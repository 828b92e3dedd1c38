"""Suggestions: each one fits when applied, improves on the declared plan, and says what it costs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sizing_inputs import LLAMA3_8B, make_spec

from kubefit.api.models import TrainingJobSpec
from kubefit.api.validation import parse_spec
from kubefit.sizing.catalog import load_catalog
from kubefit.sizing.planner import plan
from kubefit.sizing.remedies import replace_field
from kubefit.sizing.suggest import Suggestion, overprovisioned, running_workers, suggest

CATALOG = load_catalog()


def cost(devices: int, device_memory: int, per_device: int) -> tuple[int, int, int]:
    return devices, device_memory, per_device


def applied(spec: TrainingJobSpec, suggestion: Suggestion) -> TrainingJobSpec:
    """The spec with the suggestion's changes and its layout written in."""
    for change in suggestion.changes:
        spec = change.apply(spec)
    spec = replace_field(spec, "resources.accelerator", suggestion.sizing.accelerator)
    return replace_field(spec, "resources.acceleratorsPerWorker", suggestion.sizing.accelerators_per_worker)


SPECS = {
    "8B ZeRO-1 on 8 x H100": make_spec(
        model=LLAMA3_8B,
        training={"sharding": "zero1", "activationCheckpointing": "selective"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
    ),
    "8B FSDP on A100-40GB": make_spec(
        model=LLAMA3_8B,
        training={"sharding": "fsdp", "activationCheckpointing": "full", "sequenceLength": 4096},
        resources={"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 8},
    ),
    "1B auto": make_spec(training={"microBatchSize": 8}),
    # A fixed gang of 4 workers: each suggestion still runs 4, and is estimated (and counted) at 4.
    "8B FSDP on 4 workers of 8 A100-40GB": make_spec(
        model=LLAMA3_8B,
        training={"sharding": "fsdp", "activationCheckpointing": "full", "sequenceLength": 4096},
        resources={"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 8},
        workers={"replicas": 4},
    ),
}


@pytest.mark.parametrize("name", SPECS)
def test_suggestions_fit_when_applied_and_are_ranked_cheapest_first(name: str) -> None:
    spec = SPECS[name]
    suggestions = suggest(spec)
    assert suggestions, f"{name}: expected at least one cheaper alternative"
    keys = [cost(s.devices, s.sizing.device_memory_bytes, s.sizing.per_device_bytes) for s in suggestions]
    assert keys == sorted(keys)
    for suggestion in suggestions:
        changed = applied(spec, suggestion)
        replanned = plan(changed)
        assert replanned.fits, suggestion.description
        assert replanned.per_device_bytes == suggestion.sizing.per_device_bytes
        assert replanned.accelerators_per_worker * running_workers(changed, replanned) == suggestion.devices


@pytest.mark.parametrize("name", SPECS)
def test_every_suggestion_improves_on_the_declared_plan(name: str) -> None:
    spec = SPECS[name]
    declared = plan(spec)
    declared_cost = cost(
        declared.accelerators_per_worker * running_workers(spec, declared),
        declared.device_memory_bytes,
        declared.per_device_bytes,
    )
    for suggestion in suggest(spec):
        assert (
            cost(
                suggestion.devices, suggestion.sizing.device_memory_bytes, suggestion.sizing.per_device_bytes
            )
            < declared_cost
        )


@pytest.mark.parametrize("name", list(SPECS))
def test_the_changes_a_suggestion_lists_are_all_it_takes(name: str) -> None:
    """Applied as listed, a suggestion gives the layout it shows: a precision change planned at 2 devices a
    worker said nothing of them, and the spec's 8 a worker then ran 8 devices instead of 4."""
    spec = SPECS[name]
    for suggestion in suggest(spec, CATALOG):
        as_listed = spec
        for change in suggestion.changes:
            as_listed = change.apply(as_listed)
        sizing = plan(as_listed, CATALOG)
        layout = (sizing.accelerator, sizing.accelerators_per_worker, running_workers(as_listed, sizing))
        shown = (suggestion.sizing.accelerator, suggestion.sizing.accelerators_per_worker, suggestion.workers)
        assert layout == shown, suggestion.description
        if spec.resources.accelerator == "auto":  # left open by the user: a suggestion does not pin it
            assert suggestion.changes[0].field == "resources.accelerator" or all(
                change.field != "resources.accelerator" for change in suggestion.changes
            ), suggestion.description


def test_a_fixed_gang_is_counted_at_the_workers_it_runs_in_every_suggestion() -> None:
    """A 4-worker job keeps its 4 workers once changed: LoRA at one device a worker was listed as "1 device,
    16.0 GiB", the estimate made at 4 workers shown for a count that holds 24 GiB per device."""
    spec = SPECS["8B FSDP on 4 workers of 8 A100-40GB"]
    suggestions = suggest(spec, CATALOG)
    assert suggestions and all(s.workers == 4 for s in suggestions)
    lora = next(s for s in suggestions if s.description.startswith("model.finetuning.method: lora"))
    assert (lora.devices, lora.layout) == (4, "4 workers x 1 nvidia-a100-40gb")
    # The declared job runs 32 devices: 8 a worker x 4; two a worker is a saving, listed on its own.
    assert "resources.acceleratorsPerWorker: 2" in [s.description for s in suggestions]


def test_each_suggestion_says_what_it_trades_away() -> None:
    suggestions = {s.description: s for s in suggest(SPECS["8B ZeRO-1 on 8 x H100"])}
    assert all(s.trade_off for s in suggestions.values())
    qlora = next((s for d, s in suggestions.items() if d.startswith("model.finetuning.method: qlora")), None)
    assert qlora is not None and "4-bit" in qlora.trade_off and "full fine-tuning" in qlora.trade_off
    assert qlora.sizing.per_device_bytes < plan(SPECS["8B ZeRO-1 on 8 x H100"]).per_device_bytes


def test_full_recompute_is_offered_with_its_compute_cost_when_activations_dominate() -> None:
    spec = make_spec(
        model=LLAMA3_8B,
        training={"sharding": "fsdp", "microBatchSize": 1, "sequenceLength": 8192},
        resources={"accelerator": "nvidia-h100-80gb"},
        workers={"maxReplicas": 64},
    )
    by_change = {s.description: s for s in suggest(spec)}
    full = by_change.get("training.activationCheckpointing: full")
    assert full is not None, list(by_change)
    assert "+33% compute" in full.trade_off
    assert full.devices < plan(spec).accelerators_per_worker * plan(spec).min_workers


def test_fp8_is_not_suggested_for_a_device_without_fp8_units() -> None:
    a100 = load_catalog().get("nvidia-a100-40gb")
    assert a100 is not None and not a100.has_fp8
    changes = [s.description for s in suggest(SPECS["8B FSDP on A100-40GB"])]
    assert "model.precision: fp8-mixed" not in changes


def test_a_declared_layout_that_does_not_fit_gets_a_remedy_that_does() -> None:
    spec = make_spec(
        model=LLAMA3_8B,
        training={"microBatchSize": 4, "sequenceLength": 4096},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
    )
    assert not plan(spec).fits
    suggestions = suggest(spec)
    assert suggestions and all(s.sizing.fits for s in suggestions)
    for suggestion in suggestions:
        assert plan(applied(spec, suggestion)).fits


def test_json_shape_of_a_suggestion() -> None:
    (first, *_) = suggest(SPECS["8B ZeRO-1 on 8 x H100"])
    shape = first.to_dict()
    assert set(shape) == {
        "change",
        "changes",
        "accelerator",
        "acceleratorsPerWorker",
        "workers",
        "devices",
        "perDeviceBytes",
        "deviceMemoryBytes",
        "fits",
        "tradeOff",
    }
    assert shape["devices"] == shape["acceleratorsPerWorker"] * shape["workers"]
    assert all(set(change) == {"field", "value"} for change in shape["changes"])


# ------------------------------------------------------------------ overprovisioned


def test_a_small_job_on_eight_big_devices_is_overprovisioned_and_the_advice_holds() -> None:
    spec = make_spec(resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8})
    sizing = plan(spec)
    sentence = overprovisioned(spec, sizing)
    assert sentence is not None and sentence.startswith("8 x nvidia-h100-80gb is more than this job needs")
    assert "acceleratorsPerWorker: 1" in sentence
    smaller = plan(replace_field(spec, "resources.acceleratorsPerWorker", 1))
    assert smaller.fits and smaller.accelerators_per_worker * smaller.min_workers * 2 <= 8


def test_a_single_oversized_device_points_to_a_device_half_the_size() -> None:
    spec = make_spec(resources={"accelerator": "nvidia-b200", "acceleratorsPerWorker": 1})
    sizing = plan(spec)
    sentence = overprovisioned(spec, sizing)
    assert sentence is not None
    suggested = next(device for device in CATALOG if f"set resources.accelerator: {device.name} " in sentence)
    assert 2 * suggested.memory_bytes <= sizing.device_memory_bytes
    assert plan(replace_field(spec, "resources.accelerator", suggested.name)).fits


def test_a_right_sized_or_auto_or_failing_layout_is_not_flagged() -> None:
    auto = make_spec()
    assert overprovisioned(auto, plan(auto)) is None
    tight = SPECS["8B FSDP on A100-40GB"]  # needs the eight 40 GB devices it asks for
    assert overprovisioned(tight, plan(tight)) is None
    failing = make_spec(model=LLAMA3_8B, resources={"accelerator": "nvidia-l4", "acceleratorsPerWorker": 1})
    assert not plan(failing).fits
    assert overprovisioned(failing, plan(failing)) is None


def test_chunked_loss_is_offered_where_the_logits_weigh_and_lowers_the_estimate() -> None:
    # A 128k vocabulary at 16k tokens: the fp32 logits of a standard loss are several GiB per device, and
    # without them the job needs 4 H100s instead of 8.
    spec = make_spec(
        model=LLAMA3_8B,
        training={"sharding": "fsdp", "activationCheckpointing": "full", "sequenceLength": 16384},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 4},
    )
    chunked = [s for s in suggest(spec, CATALOG) if s.changes[0].field == "training.loss"]
    assert chunked, "a chunked loss should be among the suggestions"
    assert "training script" in chunked[0].trade_off
    declared = plan(spec, CATALOG)
    assert chunked[0].devices < declared.accelerators_per_worker * declared.min_workers
    with_chunked = plan(replace_field(spec, "training.loss", "chunked"), CATALOG)
    assert with_chunked.breakdown.logits < declared.breakdown.logits


def test_chunked_loss_is_not_suggested_twice() -> None:
    spec = make_spec(model=LLAMA3_8B, training={"loss": "chunked", "sequenceLength": 8192})
    assert not [s for s in suggest(spec, CATALOG) if "training.loss" in [c.field for c in s.changes]]


def test_no_suggestion_or_advice_sets_a_count_that_splits_a_tensor_parallel_group() -> None:
    # tensorParallel 2 on 8 H100s per worker, elastic from 1: one device per worker fits, but a fixed
    # acceleratorsPerWorker: 1 with minReplicas 1 splits no 2-device group, and the operator refuses it.
    spec = make_spec(
        model={"parameters": "8B", "precision": "fp32"},
        training={"sequenceLength": 4096, "sharding": "zero3", "tensorParallel": 2},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
        workers={"replicas": 4, "minReplicas": 1, "maxReplicas": 16},
        elastic={"enabled": True},
    )
    sizing = plan(spec, CATALOG)
    for suggestion in suggest(spec, CATALOG):
        changed = spec
        for change in suggestion.changes:
            changed = change.apply(changed)
        plan(changed, CATALOG)  # raises InvalidSpec for a count that splits a group
    sentence = overprovisioned(spec, sizing)
    assert sentence is None or "acceleratorsPerWorker: 1 " not in sentence


def test_a_suggestion_is_cheaper_only_with_fewer_devices_or_a_smaller_device() -> None:
    # examples/bert-large-dp.yaml: one L4 holds it; the same job on one A10G (6 MiB less memory), at
    # micro-batch 1 or with full recompute still takes one 24 GB device, which is no saving.
    example = yaml.safe_load((Path(__file__).parents[2] / "examples" / "bert-large-dp.yaml").read_text())
    spec = parse_spec(example["spec"])
    declared = plan(spec, CATALOG)
    assert declared.fits and declared.min_workers == 1
    for suggestion in suggest(spec, CATALOG):
        fewer = suggestion.devices < 1
        smaller = suggestion.sizing.device_memory_bytes <= 0.9 * declared.device_memory_bytes
        assert fewer or smaller, suggestion.description


def test_suggest_survives_a_change_that_makes_the_spec_invalid() -> None:
    spec = make_spec(
        model={"parameters": "8B", "finetuning": {"method": "full", "trainableParameters": "9B"}},
        resources={"accelerator": "nvidia-b200", "acceleratorsPerWorker": 1},
    )
    assert all("finetuning.method" not in s.description for s in suggest(spec, CATALOG))


def test_the_advice_of_a_smaller_device_elsewhere_is_a_layout_the_operator_runs() -> None:
    # 1B with tensorParallel 2 on 8 H200s, elastic from 1: one A10G per worker would hold it, but a fixed
    # acceleratorsPerWorker: 1 with minReplicas 1 splits a 2-device group, which the operator refuses.
    spec = make_spec(
        training={"tensorParallel": 2},
        resources={"accelerator": "nvidia-h200", "acceleratorsPerWorker": 8},
        workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 2},
        elastic={"enabled": True},
    )
    sizing = plan(spec, CATALOG)
    sentence = overprovisioned(spec, sizing)
    assert sentence is None or "acceleratorsPerWorker: 1" not in sentence, sentence


def test_the_micro_batch_remedy_keeps_the_global_batch_with_accumulation_and_is_checked_so() -> None:
    # Its trade-off says the same global batch needs more accumulation steps; with them one replica's
    # gradients are there through the forward, so checked without them a job that did not fit at
    # micro-batch 1 with accumulation 4 was offered it (a 3.4B full fine-tune at 4096 tokens on one H100).
    from kubefit.sizing.remedies import REMEDIES

    (micro_batch,) = [change for change in REMEDIES if change.field == "training.microBatchSize"]
    spec = make_spec(
        model={"parameters": "3.4B", "precision": "bf16-mixed", "optimizer": "adamw"},
        training={"microBatchSize": 4, "sequenceLength": 4096, "activationCheckpointing": "selective"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
        workers={"replicas": 1, "maxReplicas": 1},
    )
    changed = micro_batch.apply(spec)
    assert (changed.training.micro_batch_size, changed.training.gradient_accumulation) == (1, 4)
    assert (
        micro_batch.apply(
            replace_field(spec, "training.gradientAccumulation", 2)
        ).training.gradient_accumulation
        == 8
    )
    assert not plan(changed, CATALOG).fits
    assert all("microBatchSize" not in suggestion.description for suggestion in suggest(spec, CATALOG))
    # optimizerInBackward takes no accumulation: there the global batch shrinks instead.
    in_backward = micro_batch.apply(replace_field(spec, "training.optimizerInBackward", True))
    assert in_backward.training.gradient_accumulation is None
