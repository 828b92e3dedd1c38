"""Spec changes that lower per-device memory: what each sets, what it costs, and which are remedies.

`CHANGES` lists every single change with its trade-off; `kubefit size --suggest` tries each of them.
`REMEDIES` are the ones the planner tries, least disruptive first, when a job does not fit; a `Remedy` is
a set of them verified by planning again (see `planner.find_remedies`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from kubefit.api.models import SizingStatus, TrainingJobSpec

_SHARDING_RANK = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}
_CHECKPOINTING_RANK = {"none": 0, "selective": 1, "full": 2}
_FINETUNING_RANK = {"full": 0, "lora": 1, "qlora": 2}
_PRECISION_BYTES = {
    "fp32": 4,
    "fp16-mixed": 3,
    "bf16-mixed": 3,
    "bf16-true": 2,
    "fp8-mixed": 1,
}  # coarse order
_OPTIMIZER_STATE_BYTES = {  # per trainable parameter, for ordering only (EleutherAI Transformer Math 101)
    "adamw": 8,
    "adam": 8,
    "lion": 4,
    "sgd-momentum": 4,
    "adamw-8bit": 2,
    "adafactor": 1,
    "sgd": 0,
}


@dataclass(frozen=True)
class Change:
    """One edit of the spec: the field (wire path under spec), its new value and what it costs."""

    field: str  # e.g. "training.activationCheckpointing"
    value: Any
    trade_off: str
    applies: Callable[[TrainingJobSpec], bool]

    @property
    def description(self) -> str:
        return f"{self.field}: {self.value}"

    def apply(self, spec: TrainingJobSpec) -> TrainingJobSpec:
        return replace_field(spec, self.field, self.value)


@dataclass(frozen=True)
class _GlobalBatchKept(Change):
    """A smaller micro-batch with gradientAccumulation raised by as much, so that the global batch stays,
    as its trade-off says: checked that way, since accumulation keeps the gradients through the forward,
    which one replica's estimate otherwise does not count (estimator._gradients_follow_the_forward).
    optimizerInBackward allows no accumulation: there the global batch shrinks instead."""

    def apply(self, spec: TrainingJobSpec) -> TrainingJobSpec:
        training = spec.training
        changed = replace_field(spec, self.field, self.value)
        steps = (training.gradient_accumulation or 1) * training.micro_batch_size // self.value
        if training.optimizer_in_backward or steps <= (training.gradient_accumulation or 1):
            return changed
        return replace_field(changed, "training.gradientAccumulation", steps)


def _snake(name: str) -> str:
    return "".join("_" + char.lower() if char.isupper() else char for char in name)


def replace_field(spec: TrainingJobSpec, wire_path: str, value: Any) -> TrainingJobSpec:
    """A copy of `spec` with one field (camelCase dotted path under spec) replaced."""

    def replace(model: BaseModel, parts: list[str]) -> BaseModel:
        name = _snake(parts[0])
        if name not in type(model).model_fields:
            raise KeyError(f"spec has no field {wire_path!r}")
        if len(parts) == 1:
            return model.model_copy(update={name: value})
        return model.model_copy(update={name: replace(getattr(model, name), parts[1:])})

    result = replace(spec, wire_path.split("."))
    assert isinstance(result, TrainingJobSpec)
    return result


def always(spec: TrainingJobSpec) -> bool:
    """`Change.applies` for a change that always applies (a layout or device change)."""
    return True


def _is_full_training(spec: TrainingJobSpec) -> bool:
    return spec.model.finetuning.method == "full"


# Trade-off figures: ZeRO paper (Rajbhandari et al. 2020, arXiv:1910.02054) §7 for communication;
# Korthikanti et al. 2022 (arXiv:2205.05198) for recompute; Dettmers et al. 2021 (arXiv:2110.02861)
# for 8-bit optimizers; Dettmers et al. 2023 (arXiv:2305.14314) for QLoRA.
CHANGES: tuple[Change, ...] = (
    Change(
        "training.attention",
        "sdpa",
        "sdpa: PyTorch's fused attention (FlashAttention or memory-efficient kernel) stores no s x s score "
        "matrix; the same results up to rounding, without eager's per-head attention weights to inspect",
        lambda spec: spec.training.attention == "eager",
    ),
    Change(
        "training.sharding",
        "zero1",
        "ZeRO-1: optimizer states sharded over data-parallel devices; same communication volume as plain "
        "data parallel",
        lambda spec: _SHARDING_RANK[spec.training.sharding] < 1,
    ),
    Change(
        "training.sharding",
        "zero2",
        "ZeRO-2: optimizer states and gradients sharded; same communication volume as plain data parallel",
        lambda spec: _SHARDING_RANK[spec.training.sharding] < 2,
    ),
    Change(
        "training.sharding",
        "zero3",
        "ZeRO-3/FSDP: parameters sharded too; ~1.5x the data-parallel communication volume",
        lambda spec: _SHARDING_RANK[spec.training.sharding] < 3,
    ),
    Change(
        "training.activationCheckpointing",
        "selective",
        "selective recompute: attention internals recomputed, a few % more compute (+2.7% FLOPs on GPT-3 "
        "175B, +7% measured on 22B)",
        lambda spec: _CHECKPOINTING_RANK[spec.training.activation_checkpointing] < 1,
    ),
    Change(
        "training.activationCheckpointing",
        "full",
        "full recompute: ~+33% compute (one extra forward pass; +39% measured on a 22B model)",
        lambda spec: _CHECKPOINTING_RANK[spec.training.activation_checkpointing] < 2,
    ),
    _GlobalBatchKept(
        "training.microBatchSize",
        1,
        "micro-batch 1: the same global batch needs more gradient-accumulation steps (lower throughput; "
        "checked with them)",
        lambda spec: spec.training.micro_batch_size > 1,
    ),
    Change(
        "model.precision",
        "bf16-true",
        "bf16-true: no fp32 master weights; small updates can be lost to rounding (use Kahan summation or "
        "stochastic rounding for long runs)",
        lambda spec: _PRECISION_BYTES[spec.model.precision] > 2 and _is_full_training(spec),
    ),
    Change(
        "model.precision",
        "fp8-mixed",
        "fp8-mixed: needs FP8 hardware (Ada, Hopper, Blackwell, MI300X) and per-tensor scaling; numerics "
        "need validation",
        lambda spec: spec.model.precision != "fp8-mixed",
    ),
    Change(
        "model.optimizer",
        "adamw-8bit",
        "8-bit AdamW (bitsandbytes): block-wise quantized states; matched 32-bit Adam in the paper's "
        "benchmarks",
        lambda spec: spec.model.optimizer in ("adam", "adamw") and _is_full_training(spec),
    ),
    Change(
        "model.optimizer",
        "adafactor",
        "Adafactor: factored second moment, no first moment; may need different learning-rate settings",
        lambda spec: _OPTIMIZER_STATE_BYTES[spec.model.optimizer] > 1 and _is_full_training(spec),
    ),
    Change(
        "training.loss",
        "chunked",
        "chunked cross-entropy: the loss is computed a slice of the sequence at a time, so the fp32 logits "
        "never exist whole; needs a training script that uses it (e.g. torchtune, litgpt, Liger kernels)",
        lambda spec: spec.training.loss == "standard",
    ),
    Change(
        "training.offload",
        "optimizer",
        "optimizer offload: optimizer states and step on the CPU; needs host memory and slows each step",
        lambda spec: spec.training.offload == "none",
    ),
    Change(
        "model.finetuning.method",
        "lora",
        "LoRA: adapters only, base frozen; quality may differ from full fine-tuning",
        lambda spec: _FINETUNING_RANK[spec.model.finetuning.method] < 1,
    ),
    Change(
        "model.finetuning.method",
        "qlora",
        "QLoRA: adapters only, base frozen in 4-bit; quality differs from full fine-tuning, and "
        "dequantization slows each step",
        lambda spec: _FINETUNING_RANK[spec.model.finetuning.method] < 2,
    ),
)

# Order in which remedies are tried and named when nothing fits: least disruptive to the job first. The
# sharding stages climb one at a time: ZeRO-1 and -2 cost no more communication than plain data parallel.
_REMEDY_ORDER = (
    ("training.attention", "sdpa"),
    ("training.sharding", "zero1"),
    ("training.sharding", "zero2"),
    ("training.sharding", "zero3"),
    ("training.activationCheckpointing", "selective"),
    ("training.activationCheckpointing", "full"),
    ("training.microBatchSize", 1),
    ("training.loss", "chunked"),
    ("model.optimizer", "adamw-8bit"),
    ("training.offload", "optimizer"),
    ("model.precision", "bf16-true"),
    ("model.finetuning.method", "lora"),
    ("model.finetuning.method", "qlora"),
)
REMEDIES: tuple[Change, ...] = tuple(
    next(change for change in CHANGES if (change.field, change.value) == wanted) for wanted in _REMEDY_ORDER
)


@dataclass(frozen=True)
class Remedy:
    """A set of changes that, applied, makes the job fit; `sizing` is the plan with them applied."""

    changes: tuple[Change, ...]
    sizing: SizingStatus

    @property
    def description(self) -> str:
        return describe(self.changes) or "a bigger accelerator"


def applicable(spec: TrainingJobSpec, changes: Iterable[Change]) -> list[Change]:
    return [change for change in changes if change.applies(spec)]


def describe(changes: Iterable[Change]) -> str:
    """E.g. 'training.sharding: zero3 + training.activationCheckpointing: full'."""
    return " + ".join(change.description for change in changes)


def trade_offs(changes: Iterable[Change]) -> str:
    """The changes' trade-offs, each once, separated by semicolons."""
    return "; ".join(dict.fromkeys(change.trade_off for change in changes))
