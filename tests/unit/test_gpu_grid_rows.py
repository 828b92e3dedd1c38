"""benchmarks/gpu_memory_grid.py turns a measured setup into a calibration row the API reads as the run."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from kubefit.api.validation import parse_spec

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_memory_grid as grid  # noqa: E402
import saved_tensors_probe as probe  # noqa: E402

TEMPLATE = {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}}
ENVIRONMENT = {"device": "NVIDIA H200", "cuda": "13.0",
               "versions": {"torch": "2.11", "transformers": "5", "peft": "0.17", "bitsandbytes": "0.50"}}  # fmt: skip


def _row_of(setup: grid.Setup) -> dict:
    # As run() writes it and write_rows_yaml reads it back: through JSON, so tuples come back as lists.
    measured = {"setup": asdict(setup), "parameters": 1_100_048_384, "trainable_parameters": 2_252_800,
                "oom": False, "error": None, "device_peak_bytes": 20 * 2**30}  # fmt: skip
    return grid.calibration_row(1, json.loads(json.dumps(measured)), ENVIRONMENT)


def test_the_dropout_grid_states_dropout_and_targets_in_the_api_words() -> None:
    stated = []
    for setup in grid.dropout_grid():
        spec = parse_spec({"template": TEMPLATE, **_row_of(setup)["spec"]})
        finetuning = spec.model.finetuning
        assert finetuning.lora_dropout == setup.lora_dropout
        targets = [grid.TARGET_IN_API[name] for name in setup.lora_targets]
        assert sorted(finetuning.lora_targets) == sorted(targets), setup.name
        stated.append((setup.lora_dropout, tuple(sorted(targets))))
    # Every pairing of the grid is there: dropout 0 and 0.1, all projections and query+value only.
    assert {(0.0, ("query", "value")), (0.1, ("query", "value"))} <= set(stated)
    assert {(0.0, 7), (0.1, 7)} <= {(dropout, len(targets)) for dropout, targets in stated}


def test_a_dropout_0_setup_on_every_projection_keeps_the_name_of_the_measured_row() -> None:
    # Earlier runs' rows are matched by name (docs/data/gpu-measurements.md); the new fields must not rename them.
    labels = {
        raw["label"].split(" (")[0]
        for raw in yaml.safe_load((BENCHMARKS / "data" / "gpu_grid_rows.yaml").read_text())["rows"]
    }
    twins = [
        setup
        for setup in grid.dropout_grid()
        if not setup.lora_dropout and setup.lora_targets == grid.LORA_TARGETS
    ]
    assert twins and all(setup.name in labels for setup in twins)
    spec = _row_of(twins[0])["spec"]["model"]["finetuning"]
    assert "loraDropout" not in spec and "loraTargets" not in spec


SAVED_TENSORS = BENCHMARKS / "data" / "gpu-grid-runs" / "saved-tensors"


@pytest.mark.parametrize(
    ("name", "setups"),
    [
        # The 1.1B model (TinyLlama's widths): full training and LoRA/QLoRA over precisions, targets and
        # dropout; the form was derived from these.
        ("saved_tensors.json", 19),
        # Llama 3.2 1B's and Gemma-2B's widths (8 and 1 KV heads, head_dim 64 and 256), fp32 adapters too:
        # estimated in a commit before they ran (predictions-llama32-bigvocab.json).
        ("saved_tensors-llama32-bigvocab.json", 50),
    ],
)
def test_a_layer_keeps_what_the_saved_tensor_probe_measured_tensor_by_tensor(name: str, setups: int) -> None:
    # benchmarks/saved_tensors_probe.py on an H200: what one decoder layer saves for the backward. The
    # estimate of the layer's saved bytes per token and hidden element is within the attention's softmax
    # statistics of each setup.
    probed = json.loads((SAVED_TENSORS / name).read_text())
    assert len(probed) == setups
    for result in probed:
        setup = grid.Setup(**result["setup"])
        estimated = probe.layer_bytes_per_token_hidden(setup)
        assert estimated == pytest.approx(result["bytes_per_token_hidden"], abs=0.15), result["name"]


PEAK_TIMELINE = BENCHMARKS / "data" / "gpu-grid-runs" / "peak-timeline" / "peak_timeline.json"


def _timeline_estimate(result: dict) -> object:
    from kubefit.sizing.catalog import load_catalog
    from kubefit.sizing.estimator import Layout, estimate

    setup = grid.Setup(**result["setup"])
    spec = parse_spec({"template": TEMPLATE, **grid._spec(setup, result["parameters"], result["parameters"])})
    return estimate(spec, load_catalog().get("nvidia-h200"), Layout(1, 1))


@pytest.mark.parametrize("index", range(10))
def test_full_training_on_one_device_peaks_where_the_timeline_probe_measured(index: int) -> None:
    # benchmarks/peak_timeline_probe.py on an H200: the allocator's peaks in the forward, the backward and
    # the optimizer step of a full-training step. Adding the gradients to the forward's activations
    # over-estimated these by 12-50% (allocated) and 2-44% (reserved); the larger phase is within 5%.
    result = json.loads(PEAK_TIMELINE.read_text())[index]
    measured = result["gib"]
    estimated = _timeline_estimate(result)
    allocated = max(measured["forward_peak"], measured["backward_peak"], measured["step_peak"]) * 2**30
    reserved = max(measured[f"{phase}_reserved_peak"] for phase in ("forward", "backward", "step")) * 2**30
    assert estimated.allocated_peak == pytest.approx(allocated, rel=0.05), result["name"]
    assert estimated.reserved_peak == pytest.approx(reserved, rel=0.05), result["name"]
    # The phase named is one whose measured allocated peak is within 5% of the step's largest.
    phase = {"forward": "forward_peak", "backward": "backward_peak", "optimizer-step": "step_peak"}
    assert measured[phase[estimated.peak_phase]] * 2**30 >= 0.95 * allocated, result["name"]
