"""Which remedies a job that does not fit is told of: the least disruptive change that fits first."""

from __future__ import annotations

from sizing_inputs import LLAMA3_8B, make_spec

from kubefit.sizing.catalog import load_catalog
from kubefit.sizing.planner import find_remedies, plan_job

CATALOG = load_catalog()


def test_eager_attention_names_sdpa_as_the_remedy() -> None:
    # Llama-3-8B LoRA at 32k tokens: eager attention stores the s x s scores (256 GiB per device), and the
    # warning named only sharding, loss, offload and QLoRA, none of which holds it; SDPA does on one H200.
    spec = make_spec(
        model={**LLAMA3_8B, "finetuning": {"method": "lora", "loraRank": 16}},
        training={"sequenceLength": 32768, "activationCheckpointing": "full", "attention": "eager"},
        resources={"accelerator": "auto", "acceleratorsPerWorker": "auto"},
    )
    sizing = plan_job(spec, CATALOG).sizing
    assert not sizing.fits
    (note,) = [warning for warning in sizing.warnings if warning.startswith("does not fit")]
    assert "Would fit: training.attention: sdpa -> 1 x nvidia-h200" in note, note
    # The remedy, applied: the job fits as planned.
    sdpa = spec.model_copy(update={"training": spec.training.model_copy(update={"attention": "sdpa"})})
    assert plan_job(sdpa, CATALOG).sizing.fits


def test_the_lowest_sharding_stage_that_fits_comes_first() -> None:
    # Llama-3-8B full training in plain data parallel on 8 fixed H100s: ZeRO-1 already fits (54 GiB), at
    # the communication volume of plain data parallel; only ZeRO-3 was named.
    spec = make_spec(
        model={**LLAMA3_8B, "precision": "bf16-mixed"},
        training={"sequenceLength": 4096, "activationCheckpointing": "full"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
    )
    remedies = find_remedies(spec, CATALOG)
    assert remedies[0].description == "training.sharding: zero1", [r.description for r in remedies]
    assert remedies[0].sizing.fits


def test_a_field_whose_lighter_value_fits_is_named_once() -> None:
    # Once ZeRO-1 fits, ZeRO-2 and ZeRO-3 are heavier answers to the same question: naming all three took
    # the warning's places from a change of another kind (LoRA).
    spec = make_spec(
        model={**LLAMA3_8B, "precision": "bf16-mixed"},
        training={"sequenceLength": 4096, "activationCheckpointing": "full"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
    )
    (note,) = [
        warning for warning in plan_job(spec, CATALOG).sizing.warnings if warning.startswith("does not fit")
    ]
    assert "training.sharding: zero1 ->" in note, note
    assert "zero2" not in note and "zero3" not in note, note
    assert "model.finetuning.method: lora ->" in note, note


def test_remedies_that_need_more_workers_come_fewest_devices_first() -> None:
    """3B fp16-mixed on one T4 (docs' day-one audit): tried in order, ZeRO-2 on 865 workers x 2 T4s (1,730
    devices) came before ZeRO-3 on 8, and the warning, which names three, showed the 1,730."""
    spec = make_spec(
        model={"parameters": "3B", "precision": "fp16-mixed"},
        resources={"accelerator": "nvidia-t4", "acceleratorsPerWorker": 1},
    )
    remedies = find_remedies(spec, CATALOG)
    beyond = [r for r in remedies if "workers.replicas" in r.description]
    devices = [r.sizing.accelerators_per_worker * r.sizing.min_workers for r in beyond]
    assert len(devices) >= 2 and devices == sorted(devices), [r.description for r in beyond]
    (note,) = [w for w in plan_job(spec, CATALOG).sizing.warnings if w.startswith("does not fit")]
    assert "training.sharding: zero3 + workers.replicas: 8 ->" in note, note
    assert "865" not in note
