"""Estimator: peak memory per device for one layout of a TrainingJob.

What it predicts: the peak *reserved* memory of the most-loaded device plus the runtime context, i.e.
what must fit in the memory the driver reports for the device. It is built from published formulas
(ZeRO, Korthikanti et al., PyTorch docs) and from which tensors a training step was measured to keep on
an H200 (docs/data/gpu-measurements.md), not fitted to published rows; docs/sizing.md gives every formula
and coefficient with its source, and benchmarks/sizing_accuracy.py its accuracy.

Where gradients are there through the forward (data parallelism, sharding, model parallelism,
accumulation, offload, adapters), the peak is taken at the start of the backward pass of the most-loaded
pipeline stage, where weights, gradient buffers, optimizer states, all saved activations and the logits
with their gradient coexist. The optimizer-step temporaries come later, when activations are freed, so
only their excess over the activations counts; likewise, under full recomputation, the layer recomputed
in the backward comes after the logits are freed, so only its excess over the logits counts. Full
training of one replica frees its gradients between steps, so its peak is the largest of the forward,
the backward and the optimizer step, each with what is alive at it (_largest_phase).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from kubefit.api.models import Finetuning, MemoryBreakdown, Training, TrainingJobSpec
from kubefit.api.quantity import parse_count
from kubefit.api.units import GIB, format_count, format_gib, format_number
from kubefit.api.validation import FieldError, InvalidSpec
from kubefit.sizing.architecture import (
    AMBIGUITY_SHARE,
    ModelShape,
    assumed_shape,
    describe,
    gated_form_near,
    mlp_form_ambiguous,
    shape_from_architecture,
)
from kubefit.sizing.catalog import Accelerator

# ---------------------------------------------------------------- coefficients (sources: docs/sizing.md)

# Bytes per parameter of the weights the forward pass uses, the gradients, and the fp32 master copy
# (counted with the optimizer states, as ZeRO and EleutherAI do).
FP32_BYTES = 4
HALF_BYTES = 2
MIXED_PRECISIONS = ("fp16-mixed", "bf16-mixed", "fp8-mixed")

# Optimizer state tensors per trainable parameter, each in the optimizer's state dtype (fp32 under
# fp32 and mixed precision, bf16 under bf16-true).
OPTIMIZER_STATES = {
    "adamw": 2.0,  # exp_avg, exp_avg_sq
    "adam": 2.0,
    "sgd": 0.0,
    "sgd-momentum": 1.0,  # momentum_buffer
    "lion": 1.0,  # exp_avg only (Chen et al. 2023)
    # Factored second moment: rows + cols per matrix, ~0.001 B/param at h = 4096, and no first moment
    # (beta1 = None is the default of torch.optim.Adafactor and transformers' Adafactor); measured on an
    # H200: no parameter-sized state (docs/data/gpu-measurements.md).
    "adafactor": 0.0,
}
# bitsandbytes 8-bit AdamW: two 1-byte states per parameter whatever the precision (Dettmers et al.
# 2022); block-wise fp32 absmax adds 4/2048 B per state, negligible.
ADAMW_8BIT_STATE_BYTES = 2.0
# Optimizers whose foreach/for-loop step needs no parameter-sized intermediate. SGD with momentum
# updates its buffer and the parameters in place (torch.optim.SGD without nesterov); measured on an H200,
# its first step peaked at parameters + gradients + momentum exactly (docs/data/gpu-measurements.md, G31).
# Adafactor steps one parameter at a time: its step peaked 0.28 GiB above parameters + gradients for 1.1B
# parameters (docs/data/gpu-measurements.md, "Where in the step the peak happens").
NO_STEP_TEMPORARY = ("sgd", "sgd-momentum", "adamw-8bit", "adafactor")

# QLoRA nf4 with double quantisation: 4 bits + 0.127 bits of constants per parameter (Dettmers et al.
# 2023, QLoRA paper section 3). Embeddings and (unless finetuning.quantizedHead) the output head are not
# quantised (_frozen_base_bytes).
NF4_BYTES = 0.5 + 0.127 / 8
# Without double quantisation (finetuning.doubleQuantization false): one fp32 absmax per 64-weight block,
# 32/64 = 0.5 bits per parameter (QLoRA paper section 3; bitsandbytes' blocksize 64). litgpt's resource
# table shows the difference: Llama 2 7B QLoRA 14.14 GB with bnb.nf4, 13.84 GB with bnb.nf4-dq, the
# 0.047 B/param over its 6.5B quantised weights (tutorials/resource-tables.md).
NF4_BYTES_WITHOUT_DOUBLE_QUANTIZATION = 0.5 + 4 / 64
# Transient copies in the compute dtype (16-bit; fp32 under fp32) while a QLoRA linear runs. torchao's
# LinearNF4 (what torchtune uses) saves only the nf4 weight and dequantises it again in each forward and
# backward call, so one block matrix is dequantised at a time; the second copy covers the unpacking intermediates of the dequantisation
# (NF4Tensor.get_original_weight). Embeddings are never quantised, so never dequantised; the head only
# under finetuning.quantizedHead, when it is the largest matrix dequantised: Lightning's
# BitsandbytesPrecision quantises from fp16 (`weight.contiguous().to(device=device, dtype=torch.half)`,
# lightning/fabric/plugins/precision/bitsandbytes.py), so bitsandbytes' MatMul4Bit dequantises to fp16
# and casts to the bf16 input (`F.dequantize_4bit(B, quant_state).to(A.dtype)`): two 16-bit copies.
QLORA_DEQUANT_COPIES = 2

# Logits per element, training.loss standard: fp32 logits (4, Megatron/Korthikanti 4sbV) + fp32
# log-softmax output kept for the backward (4, vram.asmirnov "x 2") + fp32 gradient materialised by a
# non-fused cross-entropy (4).
LOGITS_BYTES_PER_ELEMENT = 12
# training.loss chunked (torchtune CEWithChunkedOutputLoss): the output projection runs per chunk and every
# chunk's logits stay in the compute dtype until the loss returns; each chunk is upcast to fp32 in its
# cross-entropy, whose log-softmax output (4 bytes) is saved for the backward, so all chunks' fp32
# log-softmax outputs coexist; one chunk's fp32 upcast (4) is in flight. Measured on an H200 with
# torchtune's algorithm (docs/data/gpu-measurements.md): e + 4 + 4/8 bytes per element. torchtune's
# default is num_output_chunks = 8; fused linear-cross-entropy kernels hold less, so this is an upper
# bound for them.
LOSS_CHUNKS = 8
CHUNK_SAVED_FP32_BYTES = 4
CHUNK_FP32_BYTES_PER_ELEMENT = 4
# Flash/SDPA keep the fp32 log-sum-exp per query and head: 4 bytes x a x s x b.
SOFTMAX_STATS_BYTES = 4
DROPOUT_MASK_BYTES = 1  # Korthikanti et al. count dropout masks as one byte per element

# ZeRO-3 / FSDP: the block being computed and the one being prefetched are unsharded at once.
ALLGATHER_UNITS_IN_FLIGHT = 2
# DeepSpeed ZeRO-1/2 reduce bucket: 5e8 elements (DeepSpeedZeroOptimizer reduce_bucket_size default).
ZERO_BUCKET_ELEMENTS = 500_000_000

# Runtime context per process (CUDA/ROCm context, cuBLAS workspace, NCCL): PyTorch PR #86509 measured
# 287 MB lazy-loading context alone; ptrblck ~400 MB; plus library workspaces. A TPU's XLA runtime has no
# CUDA context (an assumption, docs/sizing.md).
GPU_RUNTIME_RESERVE = 3 * GIB // 4
TPU_RUNTIME_RESERVE = GIB // 4
# Caching-allocator slack on transient (activation, logits, buffer) memory: reserved minus allocated.
FRAGMENTATION_FRACTION = 0.10

# model.parameters further than this from the architecture's own count is warned about. The count forms
# (gated or plain MLP, tied or untied head, no biases) come within 2% of every calibration row's stated
# count; a model of another size in the same family is 2x or more away.
COUNT_CONTRADICTION = 0.20


@dataclass(frozen=True)
class Layout:
    """How many devices the job runs on: devices per worker x workers."""

    devices_per_worker: int
    workers: int

    @property
    def devices(self) -> int:
        return self.devices_per_worker * self.workers


@dataclass(frozen=True)
class Estimate:
    """Per-device peak memory by component, in bytes, plus what was assumed.

    `overhead` = runtime_reserve + step_temporaries + communication_buffers + fragmentation; the
    parts are kept so measurements of a different kind (allocated, reserved) can be compared.
    """

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    logits: int
    overhead: int
    host_bytes_per_worker: int = 0  # offloaded state held in host memory
    warnings: tuple[str, ...] = field(default_factory=tuple)
    runtime_reserve: int = 0  # CUDA/ROCm/XLA context and library workspaces, outside the allocator
    step_temporaries: int = 0  # optimizer-step intermediates beyond the activations already freed
    communication_buffers: int = 0  # all-gather / reduce buckets, DDP gradient buckets
    fragmentation: int = 0  # allocator reserve beyond allocated bytes
    data_parallel: int = 1
    stage: str = "only"  # the pipeline stage estimated: only, first or last (the most loaded)
    # When the peak is: the backward's start (everything at once), the forward or the optimizer step.
    peak_phase: str = "backward"
    other_phase_allocated: int = 0  # the allocated peak of a step phase other than peak_phase's, if larger

    @property
    def total(self) -> int:
        model_state = self.weights + self.gradients + self.optimizer_states
        return model_state + self.activations + self.logits + self.overhead

    @property
    def reserved_peak(self) -> int:
        """What torch.cuda.max_memory_reserved would show: total without the runtime context."""
        return self.total - self.runtime_reserve

    @property
    def allocated_peak(self) -> int:
        """What torch.cuda.max_memory_allocated would show: also without the allocator's slack."""
        return max(self.reserved_peak - self.fragmentation, self.other_phase_allocated)

    def breakdown(self) -> MemoryBreakdown:
        return MemoryBreakdown(
            weights=self.weights,
            gradients=self.gradients,
            optimizer_states=self.optimizer_states,
            activations=self.activations,
            logits=self.logits,
            overhead=self.overhead,
        )


# ---------------------------------------------------------------- per-parameter bytes


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of each kind of training state."""

    weights: float
    gradients: float
    optimizer: float  # master copy + optimizer states
    step_temporary: float  # foreach intermediate: one copy of the params in the state dtype


def state_bytes(precision: str, optimizer: str, sharding: str = "none") -> StateBytes:
    """Per-parameter bytes for a trainable parameter.

    Mixed precision follows the ZeRO accounting (2 B working weights, 2 B gradients, fp32 master +
    states sharded with the optimizer); without sharding the gradients are fp32 (4 B), as PyTorch AMP
    produces them for fp32 parameters and Megatron/FSDP accumulate them (HF "model training anatomy").
    """
    if precision == "fp32":
        weights, gradients, master, state_dtype = FP32_BYTES, FP32_BYTES, 0, FP32_BYTES
    elif precision == "bf16-true":
        weights, gradients, master, state_dtype = HALF_BYTES, HALF_BYTES, 0, HALF_BYTES
    else:
        weights, master, state_dtype = HALF_BYTES, FP32_BYTES, FP32_BYTES
        gradients = FP32_BYTES if sharding == "none" else HALF_BYTES
    if optimizer == "adamw-8bit":
        states = ADAMW_8BIT_STATE_BYTES
    else:
        states = OPTIMIZER_STATES[optimizer] * state_dtype
    temporary = 0 if optimizer in NO_STEP_TEMPORARY else state_dtype
    return StateBytes(weights, gradients, master + states, temporary)


# ---------------------------------------------------------------- activations (Korthikanti et al. 2022)


def activation_element_bytes(precision: str) -> int:
    """Saved activations are in the compute dtype: fp32, or 16-bit for every other precision (fp8
    recipes keep 16-bit copies for the backward in the general case)."""
    return FP32_BYTES if precision == "fp32" else HALF_BYTES


@dataclass(frozen=True)
class LayerRun:
    """How a transformer layer runs: the tokens it sees, its split and what it keeps for the backward."""

    sequence: int
    micro_batch: int
    tensor_parallel: int = 1
    attention: str = "sdpa"
    checkpointing: str = "none"
    element_bytes: int = HALF_BYTES  # of a saved activation (the compute dtype)
    # The residual stream between layers: fp32 under torch autocast over fp32 parameters (see
    # residual_stream), else the compute dtype.
    stream_bytes: int = HALF_BYTES
    # Compute-dtype copies autocast makes of each projection's fp32 input and saves for the backward:
    # one per projection under autocast, two under the QLoRA recipe (the nf4 layer's and the adapter's).
    input_copies: int = 1
    # The projections whose LoRA adapters apply dropout (finetuning.loraTargets when loraDropout > 0).
    dropped_adapters: frozenset[str] = frozenset()
    # A frozen base (lora, qlora): its targeted projections, the adapters' rank, and how the adapters take
    # their input (ADAPTER_INPUTS); empty for full training.
    adapters: frozenset[str] = frozenset()
    adapter_rank: int = 0
    adapter_inputs: str = ""


# How LoRA adapters of a frozen base take their input, measured tensor by tensor on an H200
# (benchmarks/saved_tensors_probe.py, docs/data/gpu-measurements.md "What a layer saves"):
#   cast:   fp32 adapters under torch autocast over a 16-bit base (PEFT's default): each adapter saves its
#           own compute-dtype copy of its input;
#   recipe: the QLoRA recipe under autocast (fp32 stream): each adapter whose input is fp32 saves its own
#           copy; the output projection's adapter reads the attention output, which the attention keeps;
#   shared: adapters in the compute dtype (bf16-true, sharded mixed precision, fp32): adapters on one
#           input share it, saved once.
ADAPTER_INPUTS = ("cast", "recipe", "shared")


def dropout_mask_bytes(shape: ModelShape) -> int:
    """Bytes per element of a hidden-state dropout mask: Korthikanti's GPT keeps one per dropout; the
    gated-MLP families (Llama, Mistral, Qwen, Gemma) train without hidden dropout (their config.json has
    no hidden dropout, attention_dropout 0.0), and the H200 measurements show no mask."""
    return 0 if shape.gated_mlp else DROPOUT_MASK_BYTES


def _norm_and_projection_inputs(shape: ModelShape, run: LayerRun) -> float:
    """Bytes per token x hidden for the two norms and the inputs of the projections they feed.

    Megatron-style LayerNorm over a 16-bit stream (Korthikanti et al.): each norm keeps its input and the
    projection after it keeps the norm's output, 2e each (4e). The RMSNorm of gated-MLP models (Llama in
    transformers, torchtune, litgpt) upcasts its input to fp32 and keeps it (4 B) with the normalised
    output (the stream's size) before the weight multiply. Over an fp32 stream whose projections run in
    16 bits (torch autocast), every projection saves its own 16-bit copy of the input: q, k, v and the
    MLP's gate and up (or its single input projection) each get one.
    """
    e, stream = run.element_bytes, run.stream_bytes
    attention_inputs, mlp_inputs = (3, 2) if shape.gated_mlp else (1, 1)
    if stream == e:
        projection_inputs = 2 * e  # one shared input per sublayer
    else:
        projection_inputs = (attention_inputs + mlp_inputs) * e * run.input_copies
    if shape.gated_mlp:  # RMSNorm: the fp32 input and the normalised output, per norm
        return 2 * (FP32_BYTES + stream) + projection_inputs
    return 2 * stream + projection_inputs


def _frozen_base_layer_bytes(shape: ModelShape, run: LayerRun) -> float:
    """Bytes per token one gated-MLP layer of a frozen base keeps for its backward (LoRA, QLoRA), as the
    saved-tensor probe measured it. A frozen projection keeps nothing for its weight, so only the
    adapters keep its input; a frozen RMSNorm weight needs only the norm's fp32 input; the attention
    keeps Q, K, V and its output; the MLP keeps the gate's output, its activation and up (in fp32 under
    the QLoRA recipe, whose 4-bit layers answer in their input's dtype). Each adapter keeps its A
    matrix's input (or shares it, ADAPTER_INPUTS) and B's rank-wide input; dropout adds a one-byte mask
    per input element and, where adapters shared an input, a copy per adapter."""
    e, h, ffn = run.element_bytes, shape.hidden, shape.ffn
    mlp_bytes = run.stream_bytes if run.adapter_inputs == "recipe" else e
    # The fused kernels keep the attention output for their backward; eager and the math path do not,
    # so there only the output projection's adapter keeps it, in a copy of its own.
    keeps_output = run.attention != "eager" and not _math_attention(shape, run)
    attention = e * (shape.q_width * (2 if keeps_output else 1) + 2 * shape.kv_width)
    layer = 2 * FP32_BYTES * h + attention + 3 * ffn * mlp_bytes
    widths = shape.projection_widths()
    targets = [target for target in run.adapters if target in widths]
    dropout = bool(run.dropped_adapters)
    mask = DROPOUT_MASK_BYTES if dropout else 0
    layer += sum(widths[target][0] * mask + run.adapter_rank * e for target in targets)
    if run.adapter_inputs == "shared" and not dropout:
        inputs = {"query": "attention", "key": "attention", "value": "attention", "gate": "mlp", "up": "mlp"}
        shared = [target for target in targets if target != "output" or not keeps_output]
        distinct = {inputs.get(target, target): widths[target][0] for target in shared}
        return layer + e * sum(distinct.values())
    own_copies = [
        t for t in targets if t != "output" or dropout or run.adapter_inputs == "cast" or not keeps_output
    ]
    return layer + e * sum(widths[target][0] for target in own_copies)


def _adapter_dropout_bytes(shape: ModelShape, run: LayerRun) -> float:
    """Bytes per token that LoRA dropout adds to a layer of a plain-MLP model (a gated one is counted
    whole by _frozen_base_layer_bytes). Each adapter (PEFT's LoraLayer, one per targeted
    projection) applies its own dropout and its A matrix keeps the dropped copy: e bytes and a one-byte mask
    per input element. On a 16-bit stream the undropped input of q, k, v (or of gate, up) was counted once
    as their shared saved input and a frozen projection keeps none, so n adapters on one input add
    n(e + 1) - e bytes per element. Over an fp32 stream (the QLoRA recipe under autocast) each adapter's
    16-bit copy is already counted (input_copies), its dropout is taken in fp32 and freed by the cast, so
    only the mask is added."""
    adapters = run.dropped_adapters
    if not adapters:
        return 0.0
    e, mask = run.element_bytes, DROPOUT_MASK_BYTES
    widths = shape.projection_widths()

    def one_input(targets: set[str], from_stream: bool) -> float:
        present = [target for target in targets if target in adapters and target in widths]
        if not present:
            return 0.0
        width = widths[present[0]][0]
        if from_stream and run.stream_bytes != e:
            return len(present) * mask * width
        return (len(present) * (e + mask) - e) * width

    return (
        one_input({"query", "key", "value"}, True)
        + one_input({"output"}, False)
        + one_input({"gate", "up"}, True)
        + one_input({"down"}, False)
    )


def _attention_scores_bytes(shape: ModelShape, run: LayerRun) -> float:
    """The attention's own saved tensors beyond Q, K, V and the output, per sequence of the batch."""
    s, b = run.sequence, run.micro_batch
    if run.attention == "eager":
        # softmax output + dropout output (e bytes each) + dropout mask, a x s x s per sequence. K and V go
        # into the matmuls repeated to the query heads (transformers' eager_attention_forward calls
        # repeat_kv first; litgpt repeat_interleaves them), so with grouped KV heads the matmuls save them
        # at query width, beyond the K and V counted with the projections. Not under sdpa/flash:
        # transformers passes enable_gqa there (litgpt expands there too, which is not counted).
        scores = shape.heads * s * s * b * (2 * run.element_bytes + DROPOUT_MASK_BYTES)
        return scores + 2 * run.element_bytes * (shape.q_width - shape.kv_width) * s * b
    if _math_attention(shape, run):
        # fp32 with grouped KV heads: flash attention takes no fp32 and the memory-efficient kernel no
        # grouped KV heads, so SDPA falls back to its math path, which keeps the fp32 softmax and, as
        # eager does, K and V repeated to the query heads (measured on an H200, the saved-tensor probe:
        # docs/data/gpu-measurements.md).
        scores = shape.heads * s * s * b * FP32_BYTES
        return scores + 2 * run.element_bytes * (shape.q_width - shape.kv_width) * s * b
    return shape.heads * s * b * SOFTMAX_STATS_BYTES


def _math_attention(shape: ModelShape, run: LayerRun) -> bool:
    return run.attention != "eager" and run.element_bytes == FP32_BYTES and shape.kv_heads < shape.heads


def layer_activation_bytes(shape: ModelShape, run: LayerRun) -> float:
    """Bytes one transformer layer keeps for its backward pass (Korthikanti et al. 2022, section 4 and
    Table 2), generalised to grouped-query attention, gated MLPs with RMSNorm and an fp32 stream.

    With ffn = 4h, kvHeads = heads, LayerNorm, 2-byte activations, eager attention and no checkpointing
    this is sbh(34 + 5as/h); selective recompute drops the attention-score term (sbh * 34); full
    recompute keeps only the layer input (the stream's element size). Tensor parallelism is taken with
    sequence parallelism (Table 2, "tensor + sequence parallel"), which divides every term by t, as
    Megatron-LM and torchtitan run it. A frozen gated-MLP base (LoRA, QLoRA) keeps less, counted as the
    saved-tensor probe measured it (_frozen_base_layer_bytes).
    """
    s, b, h, e = run.sequence, run.micro_batch, shape.hidden, run.element_bytes
    sbh = s * b * h
    if run.checkpointing == "full":
        return run.stream_bytes * sbh / run.tensor_parallel
    if run.adapter_inputs and shape.gated_mlp:
        frozen = s * b * _frozen_base_layer_bytes(shape, run)
        if run.checkpointing == "none":
            frozen += _attention_scores_bytes(shape, run)
        return frozen / run.tensor_parallel
    ffn_ratio = shape.ffn / h
    # The norms and the projection inputs they feed; the attention-output and MLP-output dropout masks.
    layer: float = sbh * (_norm_and_projection_inputs(shape, run) + 2 * dropout_mask_bytes(shape))
    # Q, K, V (K and V shrink with GQA) and the output-projection input, each as wide as its heads.
    layer += s * b * e * (2 * shape.q_width + 2 * shape.kv_width)
    # MLP: GeLU input and output; or gate, up, activation and product when gated (the MLP's input is
    # counted with the norms).
    layer += sbh * e * ffn_ratio * (4 if shape.gated_mlp else 2)
    if run.checkpointing == "none":
        layer += _attention_scores_bytes(shape, run)
    layer += s * b * _adapter_dropout_bytes(shape, run)
    return layer / run.tensor_parallel


def residual_stream(precision: str, finetuning: str, sharding: str) -> tuple[int, int]:
    """(stream bytes, compute-dtype input copies per projection) of a training setup.

    fp32 trains in fp32 throughout. Mixed precision on one device or under plain data parallelism is torch
    autocast over fp32 parameters: the embedding output and so the residual stream stay fp32 and each
    projection casts its input. Sharded mixed precision (FSDP MixedPrecision, DeepSpeed, Megatron) computes
    on 16-bit parameters, and a LoRA base is loaded in 16 bits, so their stream is 16-bit. The QLoRA recipe
    (PEFT prepare_model_for_kbit_training) upcasts every non-quantised parameter to fp32, so under autocast
    its stream is fp32 too, and both the nf4 layer and its adapter cast the input.
    """
    if precision == "fp32":
        return FP32_BYTES, 0
    if precision not in MIXED_PRECISIONS:
        return HALF_BYTES, 0
    if finetuning == "qlora":
        return FP32_BYTES, 2
    if finetuning == "full" and sharding == "none":
        return FP32_BYTES, 1
    return HALF_BYTES, 0


def logits_bytes_per_element(loss: str, element_bytes: int = HALF_BYTES) -> float:
    """Bytes per logit element (token x vocabulary entry) at the peak: standard cross-entropy holds fp32
    logits, their log-softmax and gradient (12); a chunked loss keeps every chunk's compute-dtype logits
    and fp32 log-softmax until the loss returns, with one chunk's fp32 upcast in flight."""
    if loss == "chunked":
        return element_bytes + CHUNK_SAVED_FP32_BYTES + CHUNK_FP32_BYTES_PER_ELEMENT / LOSS_CHUNKS
    return LOGITS_BYTES_PER_ELEMENT


# ---------------------------------------------------------------- the model being trained


@dataclass(frozen=True)
class _Model:
    shape: ModelShape
    parameters: int  # every parameter of the model
    declared_state: int | None  # model.memory, when given
    warnings: tuple[str, ...]


def _resolve_model(spec: TrainingJobSpec) -> _Model:
    model = spec.model
    warnings: list[str] = []
    if model.finetuning.method == "full" and model.finetuning.trainable_parameters is not None:
        # Not refused: the API contract's own example gives it beside the default method.
        warnings.append(
            "model.finetuning.trainableParameters is read with method lora or qlora only: method full "
            "trains every parameter, and is sized so"
        )
    parameters = model.parameter_count
    declared = model.memory_bytes
    if parameters is None and model.architecture is not None:
        parameters = shape_from_architecture(model.architecture, None).total_parameters()
    if parameters is None:
        assert declared is not None  # the API requires parameters or memory
        parameters, basis = _parameters_from_declared(spec, declared)
        warnings.append(
            f"model.parameters not given: assumed {format_count(parameters)} parameters from model.memory "
            f"at {format_number(declared / parameters)} bytes per parameter ({basis}) to size activations"
        )
    if model.architecture is not None:
        shape = shape_from_architecture(model.architecture, parameters)
        if model.parameter_count is not None:
            warnings.extend(_count_contradiction(shape, parameters))
            gated = gated_form_near(model.architecture, parameters, shape)
            if gated is not None:
                warnings.append(
                    f"model.parameters ({format_count(parameters, 4)}) matches no form of model.architecture "
                    f"to 2.5%: sized as a plain MLP ({format_count(shape.total_parameters(), 4)}); with a gated "
                    f"(SwiGLU/GeGLU) MLP it counts {format_count(gated.total_parameters(), 4)} and holds more "
                    "activations: if the model's MLP is gated, give its exact count"
                )
            stated, rounded_up = parameters, _rounded_count(shape, parameters)
            if rounded_up is not None:
                warnings.append(rounded_up)
                parameters = shape.total_parameters()
            if mlp_form_ambiguous(model.architecture, stated):
                warnings.append(
                    f"model.parameters ({format_count(stated, 4)}) counts a gated (SwiGLU) MLP of "
                    "model.architecture as well as a plain one (both within its last digit, or about as far "
                    "from it): sized with the gated one, which holds more activations; give the exact count "
                    "to choose"
                )
    else:
        shape = assumed_shape(parameters)
        warnings.append(
            "model.architecture not given: activations and logits assume a GPT-like shape "
            f"({describe(shape)}) for the parameter count; give model.architecture for a sharper estimate"
        )
    if declared is not None and (model.parameter_count is not None or model.architecture is not None):
        warnings.extend(_declared_contradiction(spec, declared, parameters))
    warnings.extend(_missing_targets(spec, shape))
    return _Model(shape, parameters, declared, tuple(warnings))


def _declared_contradiction(spec: TrainingJobSpec, declared: int, parameters: int) -> list[str]:
    """A warning when model.memory is far from the training state of the parameter count given beside it
    (model.parameters, or the architecture's): a wrong unit (120Mi for 120Gi) or another model's figure.
    The state is sized from model.memory as given, activations and logits from the count."""
    implied, basis = _parameters_from_declared(spec, declared)
    if abs(implied - parameters) <= COUNT_CONTRADICTION * parameters:
        return []
    source = "model.parameters" if spec.model.parameter_count is not None else "model.architecture"
    return [
        f"model.memory ({spec.model.memory}) is the training state of about {format_count(implied)} "
        f"parameters ({basis}), {implied / parameters - 1:+.0%} from the {format_count(parameters)} "
        f"{source} gives: the training state follows model.memory, activations and logits the parameter "
        "count; check its unit"
    ]


def _missing_targets(spec: TrainingJobSpec, shape: ModelShape) -> list[str]:
    """A warning for each named LoRA target the model's shape does not have (a gate in a two-matrix
    MLP): it is sized without it, and with none left no adapter at all is counted."""
    finetuning = spec.model.finetuning
    if finetuning.method == "full" or "lora_targets" not in finetuning.model_fields_set:
        return []  # the default, every projection, names what each model has
    widths = shape.projection_widths()
    missing = [target for target in finetuning.lora_targets if target not in widths]
    if not missing:
        return []
    form = "an assumed" if shape.assumed else "this"
    what = f"model.finetuning.loraTargets: {', '.join(missing)} is not a projection of {form} model's shape (a two-matrix MLP has no gate)"
    if len(missing) == len(finetuning.lora_targets) and finetuning.trainable_parameters is None:
        return [
            f"{what}: no adapter is counted; give model.architecture or model.finetuning.trainableParameters"
        ]
    return [f"{what}: sized without it"]


def _count_contradiction(shape: ModelShape, parameters: int) -> list[str]:
    """A warning when model.parameters and the architecture's own count (of the MLP and head form nearest
    it) describe different models: the training state then follows the one, activations and logits the
    other."""
    own = shape.total_parameters()
    if abs(parameters - own) <= COUNT_CONTRADICTION * own:
        return []
    return [
        f"model.parameters ({format_count(parameters)}) differs by {parameters / own - 1:+.0%} from the "
        f"{format_count(own)} parameters model.architecture describes: the training state follows the "
        "parameter count, activations and logits the architecture; give both for the same model"
    ]


def _rounded_count(shape: ModelShape, parameters: int) -> str | None:
    """A warning when model.parameters lies below the architecture's own count by more than a rounding (1%)
    and not so far that it names another model (COUNT_CONTRADICTION): a rounded name-size ("3B" for Llama
    3.2 3B's 3.21B), whose training state is then sized at the architecture's count. Counts above it are
    kept: they may hold parameters the architecture does not describe."""
    own = shape.total_parameters()
    if not AMBIGUITY_SHARE * own < own - parameters <= COUNT_CONTRADICTION * own:
        return None
    form = f"{'a gated' if shape.gated_mlp else 'a plain'} MLP, {'tied' if shape.tied_embeddings else 'untied'} head"
    return (
        f"model.parameters ({format_count(parameters, 4)}) is {parameters / own - 1:+.1%} from the "
        f"{format_count(own, 4)} parameters of model.architecture as sized ({form}), more than a rounding: "
        "the training state is sized at that count; give the exact count"
    )


def _check_adapters(spec: TrainingJobSpec, resolved: _Model) -> None:
    """Adapters with more trainable parameters than the whole model are a slip (a count for another model
    or a wrong suffix): refused, naming the field."""
    declared = spec.model.finetuning.trainable_parameters
    if spec.model.finetuning.method == "full" or declared is None:
        return
    trainable = parse_count(declared)
    if trainable <= resolved.parameters:
        return
    if spec.model.parameter_count is not None and spec.model.parameter_count == resolved.parameters:
        source = "model.parameters"
    elif spec.model.parameter_count is not None:
        source = f"model.architecture's count, which model.parameters ({format_count(spec.model.parameter_count)}) rounds"
    elif spec.model.architecture is not None:
        source = "the count of model.architecture"
    else:
        source = "what model.memory leaves for the model beside these adapters' state"
    raise _invalid(
        "spec.model.finetuning.trainableParameters",
        f"{declared} trainable parameters exceed the model's {format_count(resolved.parameters)} ({source}); "
        "adapters cannot train more parameters than the model has",
    )


def _warn_of_a_rank_past_the_model(spec: TrainingJobSpec, resolved: _Model) -> _Model:
    """A warning where the adapters of finetuning.loraRank hold more parameters than the model (4096 typed
    for 64): sized as asked, more than full fine-tuning would hold. Not refused as trainableParameters is:
    a job stored with it would turn InvalidSpec on upgrade."""
    finetuning = spec.model.finetuning
    if finetuning.method == "full" or finetuning.trainable_parameters is not None:
        return resolved
    adapters = resolved.shape.lora_parameters(finetuning.lora_rank, finetuning.lora_targets)
    if adapters <= resolved.parameters:
        return resolved
    warning = (
        f"model.finetuning.loraRank {finetuning.lora_rank} gives {format_count(adapters)} adapter parameters, "
        f"more than the model's {format_count(resolved.parameters)}: sized so, above what full fine-tuning "
        "would hold; check the rank"
    )
    return replace(resolved, warnings=(*resolved.warnings, warning))


def _full_state_bytes(spec: TrainingJobSpec) -> float:
    per = state_bytes(spec.model.precision, spec.model.optimizer, spec.training.sharding)
    return per.weights + per.gradients + per.optimizer


# _parameters_from_declared's answers by (model, training, declared): a bisection of ~40 shaped estimates,
# which every estimate of a spec that gives model.memory alone ran again (a remedy search: thousands).
_FROM_DECLARED: dict[tuple[str, str, int], tuple[int, str]] = {}
_FROM_DECLARED_KEPT = 256


def _parameters_from_declared(spec: TrainingJobSpec, declared: int) -> tuple[int, str]:
    """_parameters_from_declared_now, remembered for the last few distinct specs."""
    key = (spec.model.model_dump_json(), spec.training.model_dump_json(), declared)
    found = _FROM_DECLARED.get(key)
    if found is None:
        found = _parameters_from_declared_now(spec, declared)
        if len(_FROM_DECLARED) >= _FROM_DECLARED_KEPT:
            _FROM_DECLARED.clear()
        _FROM_DECLARED[key] = found
    return found


def _parameters_from_declared_now(spec: TrainingJobSpec, declared: int) -> tuple[int, str]:
    """The parameter count whose training state, by the parameter formulas, is the declared memory, and
    what the bytes per parameter stand for. Full training: every parameter at its full-state bytes. LoRA
    and QLoRA: the count whose frozen base plus adapters (`_adapter_state`, what `_adapter_states` holds
    and `_declared_adapter_states` splits the declared memory into) comes to the declared memory; the
    full-state bytes would read an 8B model's 15 GiB of LoRA state as a 0.9B model's."""
    model = spec.model
    if model.finetuning.method == "full":
        return max(1, int(declared / _full_state_bytes(spec))), f"{model.precision}, {model.optimizer}"
    low, high = 1, max(2, math.ceil(declared / NF4_BYTES))  # no frozen base is under nf4's bytes
    while high - low > 1:  # the state grows with the count: bisect for the largest not above it
        middle = (low + high) // 2
        if _adapter_state(spec, middle) <= declared:
            low = middle
        else:
            high = middle
    if model.finetuning.method == "qlora":
        base = "nf4 base (embeddings unquantised)"
    else:
        base = "32-bit base" if model.precision == "fp32" else "16-bit base"
    basis = (
        f"{model.finetuning.method}, {model.precision}, {model.optimizer}: a frozen {base} plus the "
        "adapters' weights, gradients and optimizer states"
    )
    return low, basis


def _adapter_state(spec: TrainingJobSpec, parameters: int) -> float:
    """The whole LoRA/QLoRA training state of a model of `parameters` parameters in the assumed shape, by
    the parameter formulas (`_adapter_states` on a single device)."""
    shape = assumed_shape(parameters)
    whole = spec.model_copy(
        update={"training": spec.training.model_copy(update={"tensor_parallel": 1, "pipeline_parallel": 1})}
    )
    share = _stage_share(_Model(shape, parameters, None, ()), whole.training, "only")
    trainable = _trainable_parameters(whole, shape) or 0
    return _frozen_base_bytes(whole, share) + trainable * _full_state_bytes(spec)


def _trainable_parameters(spec: TrainingJobSpec, shape: ModelShape) -> int | None:
    finetuning = spec.model.finetuning
    if finetuning.method == "full":
        return None
    if finetuning.trainable_parameters is not None:
        return parse_count(finetuning.trainable_parameters)
    return shape.lora_parameters(finetuning.lora_rank, finetuning.lora_targets)


# ---------------------------------------------------------------- the estimate


def _invalid(path: str, message: str) -> InvalidSpec:
    return InvalidSpec([FieldError(path, message)])


def data_parallel_degree(spec: TrainingJobSpec, layout: Layout) -> int:
    """DP = devices / (tensorParallel x pipelineParallel); the error names the field if it does not divide."""
    model_parallel = spec.training.tensor_parallel * spec.training.pipeline_parallel
    if layout.devices < 1 or layout.devices % model_parallel:
        raise _invalid(
            "spec.training.tensorParallel",
            f"tensorParallel x pipelineParallel = {model_parallel} must divide the {layout.devices} devices "
            f"({layout.workers} workers x {layout.devices_per_worker} per worker)",
        )
    return layout.devices // model_parallel


def estimate(spec: TrainingJobSpec, device: Accelerator, layout: Layout) -> Estimate:
    """Peak memory of the most-loaded device when `spec` trains on `layout` devices of kind `device`."""
    sharding = _sharding(spec, data_parallel_degree(spec, layout))
    resolved = _checked_model(spec)
    if spec.training.pipeline_parallel == 1:
        return _stage_estimate(spec, device, layout, resolved, sharding, "only")
    first = _stage_estimate(spec, device, layout, resolved, sharding, "first")
    last = _stage_estimate(spec, device, layout, resolved, sharding, "last")
    return first if first.total >= last.total else last


def _checked_model(spec: TrainingJobSpec) -> _Model:
    """The model as sized, refusing (InvalidSpec) what no device can run: adapters larger than the model,
    more pipeline stages than model.architecture's layers."""
    resolved = _resolve_model(spec)
    _check_adapters(spec, resolved)
    resolved = _warn_of_a_rank_past_the_model(spec, resolved)
    stages, layers = spec.training.pipeline_parallel, resolved.shape.layers
    if stages <= layers:
        return resolved
    if spec.model.architecture is not None:
        raise _invalid(
            "spec.training.pipelineParallel", f"{stages} pipeline stages exceed the model's {layers} layers"
        )
    # The layers are assumed_shape's guess from the parameter count (GPT-2 XL's 1.56B has 48, not 19): not
    # refused; each stage still keeps one whole layer's activations (_saved_activations rounds L/p up).
    warning = (
        f"pipelineParallel {stages} is above the {layers} layers assumed for "
        f"{format_count(resolved.parameters)} parameters; give model.architecture.layers"
    )
    return replace(resolved, warnings=(*resolved.warnings, warning))


def model_errors(spec: TrainingJobSpec) -> list[FieldError]:
    """What `estimate` refuses on every device, so that a refusal made before any estimate (an unknown
    accelerator) names these fields too."""
    try:
        _checked_model(spec)
    except InvalidSpec as error:
        return list(error.errors)
    return []


# ---------------------------------------------------------------- parameter states


@dataclass(frozen=True)
class _Sharding:
    """How the training state divides over the data-parallel devices."""

    strategy: str  # none, zero1, zero2 or zero3 (fsdp is zero3)
    data_parallel: int
    weight_shards: int
    gradient_shards: int
    optimizer_shards: int
    per_parameter: StateBytes
    warnings: tuple[str, ...]
    # Pipelining keeps a stage's parameters gathered and its gradients whole across micro-batches.
    stage_held_whole: bool = False


def _sharding(spec: TrainingJobSpec, data_parallel: int) -> _Sharding:
    training = spec.training
    strategy = "zero3" if training.sharding == "fsdp" else training.sharding
    per = state_bytes(spec.model.precision, spec.model.optimizer, strategy)
    weight_shards = data_parallel if strategy == "zero3" else 1
    gradient_shards = data_parallel if strategy in ("zero2", "zero3") else 1
    if _unsharded_accumulation(training):
        gradient_shards = 1
    optimizer_shards = data_parallel if strategy in ("zero1", "zero2", "zero3") else 1
    if training.pipeline_parallel == 1 or strategy not in ("zero2", "zero3"):
        return _Sharding(strategy, data_parallel, weight_shards, gradient_shards, optimizer_shards, per, ())
    # Pipelining runs many micro-batches per step: the stage's parameters stay gathered and its
    # gradients accumulate unsharded (fp32 under mixed precision) until the last micro-batch
    # (torchtitan: reshard_after_forward = not pipeline-parallel; DeepSpeed allows only ZeRO-1 with PP).
    if spec.model.precision in MIXED_PRECISIONS:
        per = replace(per, gradients=FP32_BYTES)
    warning = (
        f"sharding {training.sharding} with pipelineParallel > 1: parameters and gradients of a stage "
        "are held unsharded across micro-batches; only optimizer states are sharded"
    )
    return _Sharding(strategy, data_parallel, 1, 1, optimizer_shards, per, (warning,), stage_held_whole=True)


def _unsharded_accumulation(training: Training) -> bool:
    """FSDP accumulating over micro-batches under no_sync keeps every gradient unsharded until the last
    one (PyTorch FSDP.no_sync docs: "FSDP will accumulate the full model gradients (instead of gradient
    shards) until the eventual sync"); Lightning Fabric's no_backward_sync and Accelerate's accumulate
    call it. DeepSpeed ZeRO-2/3 reduce-scatter every micro-batch."""
    return training.sharding == "fsdp" and (training.gradient_accumulation or 1) > 1


@dataclass(frozen=True)
class _StageShare:
    """The parameters one device of a pipeline stage holds before data-parallel sharding."""

    embeddings: int  # embedding parameters on the stage: the input embedding first, the output head last
    parameters: float  # after the tensor-parallel split
    fraction: float  # of all the model's parameters
    head: int = 0  # of `embeddings`, an untied output head's parameters (a tied head is the embedding)


def _stage_share(resolved: _Model, training: Training, stage: str) -> _StageShare:
    # Blocks split across stages, the input embedding on the first stage and the output head on the last
    # (a tied head is one matrix on a single stage, a copy on each end stage when pipelined); TP splits all.
    copies = resolved.shape.embedding_copies
    embedding = min(resolved.shape.embedding_parameters(), resolved.parameters // copies)
    blocks = max(resolved.parameters - copies * embedding, 0)
    embeddings = {"only": copies * embedding, "first": embedding, "last": embedding}[stage]
    parameters = (blocks / training.pipeline_parallel + embeddings) / training.tensor_parallel
    head = embedding if copies == 2 and stage in ("only", "last") else 0
    return _StageShare(embeddings, parameters, parameters / resolved.parameters, head)


@dataclass(frozen=True)
class _States:
    """Training state one device holds, in bytes, after data-parallel sharding."""

    weights: float
    gradients: float
    optimizer: float  # master copy + optimizer states
    trainable: float  # trainable parameters on the device before sharding
    gathered_bytes: float  # bytes per parameter of a unit all-gathered under ZeRO-3
    gathered_gradient_bytes: float  # gradient bytes per parameter that a gathered unit produces
    # Where the units differ (QLoRA: embeddings in the load dtype, nf4 blocks); None: gathered_bytes for all.
    unit_bytes: _UnitBytes | None = None


@dataclass(frozen=True)
class _UnitBytes:
    """Bytes per parameter of each kind of gathered unit."""

    root: float  # FSDP's root unit: the input embedding and the head (a quantised head at nf4)
    block: float
    embedding: float  # one unquantised V x h matrix, a unit of its own under blocks-and-embeddings

    def scaled(self, factor: float) -> _UnitBytes:
        return _UnitBytes(self.root * factor, self.block * factor, self.embedding * factor)


def _parameter_states(
    spec: TrainingJobSpec, resolved: _Model, share: _StageShare, sharding: _Sharding
) -> _States:
    trainable = _trainable_parameters(spec, resolved.shape)
    if resolved.declared_state is not None and trainable is not None:
        return _declared_adapter_states(spec, resolved.declared_state, trainable, share, sharding)
    if resolved.declared_state is not None:
        return _declared_states(resolved.declared_state, share, sharding)
    if trainable is None:
        return _full_states(share, sharding)
    return _adapter_states(spec, trainable, share, sharding)


def _stepped_in_backward(states: _States, gradients: float, resolved: _Model) -> _States:
    """`states` with the optimizer stepped in the backward: `gradients` held instead of the model's. A
    declared state is used as given, its gradients' share included: it is what the run measured as held
    (taking that share out sized 120Gi declared at 94 GiB of state, and moving it to the weights and
    optimizer states inflated them on every device of a zero1/zero2 group)."""
    if resolved.declared_state is not None:
        return states
    return replace(states, gradients=gradients)


def _declared_states(declared: int, share: _StageShare, sharding: _Sharding) -> _States:
    """The declared training state, split by the precision/optimizer byte ratios, then sharded."""
    per = sharding.per_parameter
    state = declared * share.fraction
    full = per.weights + per.gradients + per.optimizer
    return _States(
        weights=state * per.weights / full / sharding.weight_shards,
        gradients=state * per.gradients / full / sharding.gradient_shards,
        optimizer=state * per.optimizer / full / sharding.optimizer_shards,
        trainable=share.parameters,
        gathered_bytes=per.weights,
        gathered_gradient_bytes=per.gradients,  # every parameter trains, as in _full_states
    )


def _declared_adapter_states(
    spec: TrainingJobSpec, declared: int, trainable: int, share: _StageShare, sharding: _Sharding
) -> _States:
    """LoRA/QLoRA with the training state declared: the adapters' gradients and optimizer states at their
    bytes per trainable parameter, the rest of the declared state the frozen base. Split by the full-training
    ratios instead, a LoRA state would be mostly optimizer states, and every parameter would count as
    trainable (the gradient buckets)."""
    per = sharding.per_parameter
    state = declared * share.fraction
    trainable_here = trainable / spec.training.pipeline_parallel / spec.training.tensor_parallel
    adapter_gradients = min(state, trainable_here * per.gradients)
    adapter_optimizer = min(state - adapter_gradients, trainable_here * per.optimizer)
    base = state - adapter_gradients - adapter_optimizer
    units = _qlora_unit_bytes(spec, share)
    formula_base = _frozen_base_bytes(spec, share)
    return _States(
        weights=base / sharding.weight_shards,
        gradients=adapter_gradients / sharding.gradient_shards,
        optimizer=adapter_optimizer / sharding.optimizer_shards,
        trainable=trainable_here,
        gathered_bytes=base / max(share.parameters, 1),
        gathered_gradient_bytes=0,
        # The declared base, split between the units as the formulas split theirs.
        unit_bytes=units.scaled(base / formula_base) if units is not None and formula_base > 0 else None,
    )


def _full_states(share: _StageShare, sharding: _Sharding) -> _States:
    """Every parameter trains: each kind of state at its bytes per parameter, sharded."""
    per = sharding.per_parameter
    return _States(
        weights=share.parameters * per.weights / sharding.weight_shards,
        gradients=share.parameters * per.gradients / sharding.gradient_shards,
        optimizer=share.parameters * per.optimizer / sharding.optimizer_shards,
        trainable=share.parameters,
        gathered_bytes=per.weights,
        gathered_gradient_bytes=per.gradients,
    )


def _adapter_states(
    spec: TrainingJobSpec, trainable: int, share: _StageShare, sharding: _Sharding
) -> _States:
    """LoRA/QLoRA: a frozen base (16-bit, or nf4 under QLoRA) plus trainable adapters with full state."""
    per = sharding.per_parameter
    trainable_here = trainable / spec.training.pipeline_parallel / spec.training.tensor_parallel
    base = _frozen_base_bytes(spec, share)
    return _States(
        weights=(base + trainable_here * per.weights) / sharding.weight_shards,
        gradients=trainable_here * per.gradients / sharding.gradient_shards,
        optimizer=trainable_here * per.optimizer / sharding.optimizer_shards,
        trainable=trainable_here,
        gathered_bytes=base / max(share.parameters, 1),
        gathered_gradient_bytes=0,
        unit_bytes=_qlora_unit_bytes(spec, share),
    )


def _qlora_unit_bytes(spec: TrainingJobSpec, share: _StageShare) -> _UnitBytes | None:
    """QLoRA's bytes per parameter of each unit (_frozen_base_bytes' parts): the base's average counted
    the unquantised embedding and head (16-bit, fp32 under autocast or fp32) at about nf4's half byte
    (AnswerDotAI fsdp_qlora keeps `lm_head` out of `replace_linear`, so in bf16)."""
    finetuning = spec.model.finetuning
    if finetuning.method != "qlora" or not share.embeddings:
        return None
    quantized_head = share.head if finetuning.quantized_head else 0
    embedding_bytes = HALF_BYTES if spec.model.precision == "bf16-true" else FP32_BYTES
    nf4 = nf4_bytes(finetuning.double_quantization)
    root = ((share.embeddings - quantized_head) * embedding_bytes + quantized_head * nf4) / share.embeddings
    return _UnitBytes(root=root, block=nf4, embedding=embedding_bytes)


def _frozen_base_bytes(spec: TrainingJobSpec, share: _StageShare) -> float:
    frozen = share.parameters
    finetuning = spec.model.finetuning
    if finetuning.method == "qlora":
        # The embeddings and head are not quantised (unless quantizedHead: an untied head is); the QLoRA
        # recipe under autocast (PEFT prepare_model_for_kbit_training) upcasts them to fp32, fp32 loads
        # them in fp32 (bitsandbytes leaves what it does not quantise in the load dtype), bf16-true keeps
        # them in 16 bits.
        quantized_head = share.head if finetuning.quantized_head else 0
        frozen_embeddings = (share.embeddings - quantized_head) / spec.training.tensor_parallel
        embedding_bytes = HALF_BYTES if spec.model.precision == "bf16-true" else FP32_BYTES
        return (frozen - frozen_embeddings) * nf4_bytes(finetuning.double_quantization) + (
            frozen_embeddings * embedding_bytes
        )
    return frozen * (FP32_BYTES if spec.model.precision == "fp32" else HALF_BYTES)


def nf4_bytes(double_quantization: bool) -> float:
    """Bytes per 4-bit weight with its quantisation constants."""
    return NF4_BYTES if double_quantization else NF4_BYTES_WITHOUT_DOUBLE_QUANTIZATION


def _dequantized_matrix(spec: TrainingJobSpec, shape: ModelShape, share: _StageShare) -> int:
    """Parameters of the largest matrix a QLoRA step dequantises at once: a block's, or the output head's
    when it is quantised too (finetuning.quantizedHead) and held on this stage."""
    largest = shape.largest_block_matrix()
    if spec.model.finetuning.quantized_head and share.head:
        return max(largest, share.head)
    return largest


# ---------------------------------------------------------------- offload


@dataclass(frozen=True)
class _Offloaded:
    """The training state split between the device and the host memory."""

    on_device: _States
    host: float  # bytes held in host memory for this device
    step_on_device: bool  # the optimizer step (and its temporaries) runs on the device
    warnings: tuple[str, ...]


def _offload(
    offload: str, strategy: str, states: _States, unsharded_gradients: bool = False, gathered: bool = False
) -> _Offloaded:
    """The optimizer (and its step) go to the host; with sharded gradients their partitions go along
    (ZeRO-Offload, FSDP CPUOffload), unless they accumulate unsharded on the device; parameters only under
    ZeRO-3/FSDP, and not while a pipeline stage holds them `gathered` across its micro-batches."""
    if offload not in ("optimizer", "optimizer-and-parameters"):
        return _Offloaded(states, 0.0, True, ())
    host = states.optimizer
    on_device = replace(states, optimizer=0.0)
    if strategy in ("zero2", "zero3") and not unsharded_gradients:
        host += states.gradients
        on_device = replace(on_device, gradients=0.0)
    if offload == "optimizer":
        return _Offloaded(on_device, host, False, ())
    if strategy != "zero3":
        warning = (
            "training.offload optimizer-and-parameters needs sharding zero3 or fsdp; parameters were "
            "kept on the device"
        )
        return _Offloaded(on_device, host, False, (warning,))
    if gathered:
        warning = (
            "training.offload optimizer-and-parameters with pipelineParallel > 1: a stage's parameters "
            "stay gathered on the device across micro-batches; they were counted there"
        )
        return _Offloaded(on_device, host, False, (warning,))
    return _Offloaded(replace(on_device, weights=0.0), host + states.weights, False, ())


# ---------------------------------------------------------------- activations and logits


@dataclass(frozen=True)
class _Transient:
    """Memory alive at the peak that the backward pass frees: saved activations and the logits."""

    activations: float
    logits: float
    unplaced: float = 0.0  # reserved beside the freed logits' blocks, not in them (full recompute)
    saved: float = 0.0  # what the forward keeps for the backward (activations less the recompute excess)
    recomputed: float = 0.0  # the layer the backward recomputes (full or selective recompute)


def layer_run(spec: TrainingJobSpec) -> LayerRun:
    """How each transformer layer of `spec` runs (layer_activation_bytes' input)."""
    training = spec.training
    stream, copies = residual_stream(spec.model.precision, spec.model.finetuning.method, training.sharding)
    return LayerRun(
        sequence=training.sequence_length,
        micro_batch=training.micro_batch_size,
        tensor_parallel=training.tensor_parallel,
        attention=training.attention,
        checkpointing=training.activation_checkpointing,
        element_bytes=activation_element_bytes(spec.model.precision),
        stream_bytes=stream,
        input_copies=copies,
        dropped_adapters=_dropped_adapters(spec.model.finetuning),
        **_adapter_run(spec, stream),
    )


def _transient_memory(spec: TrainingJobSpec, shape: ModelShape, stage: str) -> _Transient:
    training = spec.training
    run = layer_run(spec)
    saved = _saved_activations(
        shape, run, training.pipeline_parallel, stage, _pipeline_micro_batches(training)
    )
    head = _Transient(0.0, 0.0)
    if stage in ("only", "last"):
        head = _output_head(shape, run, training.loss, _head_weight_copies(spec, shape))
    activations = saved + head.activations
    if run.checkpointing == "full":
        # The layer being recomputed holds its full activations during its backward. The backward
        # reaches the last layer only after the loss and output projection have run theirs, which frees
        # the logits, so the recomputed layer and the logits are never allocated together: only its excess
        # over the logits raises the allocated peak. The allocator keeps the logits' freed blocks
        # reserved and places the recomputed layer beside them (measured on an H200), so the rest of the
        # layer still adds to the reserved peak.
        recomputed = layer_activation_bytes(shape, replace(run, checkpointing="none"))
    elif run.checkpointing == "selective":
        # Selective recompute rebuilds one layer's attention internals (the scores under eager attention)
        # in its backward, placed the same way.
        recomputed = _attention_scores_bytes(shape, run) / run.tensor_parallel
    else:
        recomputed = 0.0
    saved_total = activations
    activations += max(0.0, recomputed - head.logits)
    unplaced = min(recomputed, head.logits)
    return _Transient(activations, head.logits, unplaced, saved_total, recomputed)


def _adapter_run(spec: TrainingJobSpec, stream_bytes: int) -> dict[str, Any]:
    """The LayerRun fields of a frozen base (none for full training): see ADAPTER_INPUTS."""
    finetuning, precision = spec.model.finetuning, spec.model.precision
    if finetuning.method == "full":
        return {}
    if precision in MIXED_PRECISIONS and finetuning.method == "qlora" and stream_bytes == FP32_BYTES:
        inputs = "recipe"
    elif precision in MIXED_PRECISIONS and spec.training.sharding == "none":
        inputs = "cast"
    else:
        inputs = "shared"
    return {"adapters": frozenset(finetuning.lora_targets), "adapter_rank": finetuning.lora_rank,
            "adapter_inputs": inputs}  # fmt: skip


def _dropped_adapters(finetuning: Finetuning) -> frozenset[str]:
    if finetuning.method == "full" or finetuning.lora_dropout == 0:
        return frozenset()
    return frozenset(finetuning.lora_targets)


def _pipeline_micro_batches(training: Training) -> int:
    """The micro-batches a pipeline runs per step: gradientAccumulation when the spec gives it; unset, at
    least pipelineParallel (a pipeline runs as many to keep its stages busy, and torchtitan splits each
    batch into them without calling it accumulation), so that the first stage is never sized short."""
    if training.gradient_accumulation is not None:
        return training.gradient_accumulation
    return training.pipeline_parallel


def _saved_activations(
    shape: ModelShape, run: LayerRun, pipeline_parallel: int, stage: str, micro_batches: int = 1
) -> float:
    """The layers' saved activations, and on the first stage the embedding-dropout mask. Under 1F1B the
    first stage runs min(p, m) forwards of the step's m micro-batches (gradientAccumulation) before its
    first backward, each keeping L/p layers (Megatron-LM: num_warmup_microbatches = min(p - rank - 1, m),
    then one more forward in the steady state)."""
    layers_on_stage = math.ceil(shape.layers / pipeline_parallel)
    in_flight = min(pipeline_parallel, micro_batches) if stage == "first" else 1
    activations = in_flight * layers_on_stage * layer_activation_bytes(shape, run)
    if stage in ("only", "first"):
        tokens = run.sequence * run.micro_batch
        activations += in_flight * tokens * shape.hidden * dropout_mask_bytes(shape) / run.tensor_parallel
    return activations


def _head_weight_copies(spec: TrainingJobSpec, shape: ModelShape) -> int:
    """Compute-dtype copies of the output head's weight saved for the backward. Autocast caches the cast
    of a trainable weight once per forward, but a frozen one is cast at every call; under the QLoRA recipe
    the frozen head is fp32, so each call of the head (one per loss chunk) saves a 16-bit copy. An untied
    head quantised with the blocks (finetuning.quantizedHead) is no fp32 weight: its dequantised copies are
    the communication buffers' (_dequantized_matrix)."""
    if spec.model.finetuning.method != "qlora" or spec.model.precision not in MIXED_PRECISIONS:
        return 0
    if spec.model.finetuning.quantized_head and shape.embedding_copies == 2:
        return 0
    return LOSS_CHUNKS if spec.training.loss == "chunked" else 1


def _output_head(shape: ModelShape, run: LayerRun, loss: str, head_copies: int = 0) -> _Transient:
    """On the last stage: the final-norm and output-projection inputs (the norm's fp32 input and its
    output), the logits and any compute-dtype copies of the head's weight."""
    tokens = run.sequence * run.micro_batch
    inputs = (FP32_BYTES + run.stream_bytes) * tokens * shape.hidden / run.tensor_parallel
    logits = tokens * shape.vocab / run.tensor_parallel * logits_bytes_per_element(loss, run.element_bytes)
    logits += head_copies * shape.embedding_parameters() / run.tensor_parallel * HALF_BYTES
    return _Transient(inputs, logits)


# ---------------------------------------------------------------- overheads


def _communication_buffers(
    spec: TrainingJobSpec, shape: ModelShape, share: _StageShare, sharding: _Sharding, on_device: _States
) -> float:
    """Parameters gathered or gradients bucketed for communication, plus QLoRA's dequantised copies."""
    tensor_parallel = spec.training.tensor_parallel
    # Offloaded parameters are gathered onto the device unit by unit even with nothing to shard them over
    # (one data-parallel device): none of them stays on the device, unless a pipeline stage holds them.
    offloaded = spec.training.offload == "optimizer-and-parameters" and not sharding.stage_held_whole
    if sharding.strategy == "zero3" and (sharding.weight_shards > 1 or offloaded):
        communication = _gathered_units(spec.training, shape, share, on_device)
    elif sharding.data_parallel == 1 and (spec.training.offload == "none" or sharding.strategy == "none"):
        communication = 0.0  # a single replica communicates nothing
    elif sharding.strategy in ("zero1", "zero2", "zero3"):
        # With offload, one replica too: the gradients leave the device through the reduce bucket (DeepSpeed
        # allocates it whatever the world size; ZeRO-Offload on one GPU copies each filled bucket out).
        # The reduce bucket; the all-gather of updated parameters writes into the flat parameter buffer.
        communication = min(ZERO_BUCKET_ELEMENTS, on_device.trainable) * sharding.per_parameter.gradients
    else:
        # DDP copies gradients into its flat buckets unless gradient_as_bucket_view=True (PyTorch DDP docs).
        communication = on_device.trainable * sharding.per_parameter.gradients
    if spec.model.finetuning.method == "qlora":
        # Dequantised in the compute dtype: 16 bits, or fp32 under fp32 (bitsandbytes' MatMul4Bit casts the
        # dequantised weight to its input's dtype).
        dequantized = _dequantized_matrix(spec, shape, share)
        element = activation_element_bytes(spec.model.precision)
        communication += QLORA_DEQUANT_COPIES * dequantized / tensor_parallel * element
    return communication


def _gathered_units(training: Training, shape: ModelShape, share: _StageShare, on_device: _States) -> float:
    """ZeRO-3/FSDP: the parameters gathered at the peak, each unit whole, and the unsharded gradients they
    produce. The all-gather writes into a buffer of the whole unit beside the device's shard, which stays
    allocated: FSDP1's `_full_param_padded` beside `_local_shard` (torch/distributed/fsdp/_flat_param.py),
    FSDP2's unsharded parameters beside the local DTensor shards, DeepSpeed ZeRO-3's gathered `param.data`
    beside `param.ds_tensor`.

    Two units are in flight: the block being computed and the one prefetched. Under fsdpWrap blocks the
    embedding and the head are in FSDP's root unit, which FSDP keeps gathered from the forward through the
    backward (FSDP1 `_post_forward_reshard` frees no root parameters; FSDP2 sets the root's
    `post_forward_mesh_info` to None), and the head's gradient is there from the start of the backward.
    Otherwise (DeepSpeed, which gathers per module, or the embedding and head wrapped apart) the largest
    unit, a block or one V x h matrix, stands for both in flight."""
    tensor_parallel = training.tensor_parallel
    whole = share.parameters * on_device.gathered_bytes
    same = on_device.gathered_bytes
    unit = on_device.unit_bytes or _UnitBytes(root=same, block=same, embedding=same)
    if training.sharding == "fsdp" and training.fsdp_wrap == "blocks":
        root = share.embeddings / tensor_parallel * unit.root
        blocks = ALLGATHER_UNITS_IN_FLIGHT * shape.block_parameters() / tensor_parallel * unit.block
        gathered = min(root + blocks, whole)
        gradient_parameters = (shape.embedding_parameters() + shape.block_parameters()) / tensor_parallel
    else:
        largest = max(shape.block_parameters() * unit.block, shape.embedding_parameters() * unit.embedding)
        gathered = min(ALLGATHER_UNITS_IN_FLIGHT * largest / tensor_parallel, whole)
        units = min(ALLGATHER_UNITS_IN_FLIGHT * shape.largest_unit() / tensor_parallel, share.parameters)
        gradient_parameters = units / ALLGATHER_UNITS_IN_FLIGHT
    # Fresh gradients, before FSDP reduces them (or, under no_sync, adds them to the unsharded ones).
    return gathered + gradient_parameters * on_device.gathered_gradient_bytes


def _step_temporaries(
    offloaded: _Offloaded,
    sharding: _Sharding,
    transient: _Transient,
    autocast_weights: bool,
    stepped_matrix: float = 0.0,
) -> float:
    """The optimizer step's intermediates beyond the memory freed by then that they can reuse: the saved
    activations (many blocks of layer size) and, under torch autocast, the 16-bit weight copies. The
    logits' few large blocks stay reserved through the step (measured on an H200), so they are not
    counted as room for it."""
    if not offloaded.step_on_device:
        return 0.0
    if stepped_matrix:  # optimizer in the backward: one parameter at a time, beside the live activations
        return stepped_matrix * sharding.per_parameter.step_temporary
    temporary = (
        offloaded.on_device.trainable * sharding.per_parameter.step_temporary / sharding.optimizer_shards
    )
    freed = transient.activations + (offloaded.on_device.weights if autocast_weights else 0.0)
    return max(0.0, temporary - freed)


@dataclass(frozen=True)
class _Overheads:
    """Memory beyond the training state and the transient tensors, each part in bytes."""

    runtime_reserve: int
    step_temporaries: int
    communication_buffers: int
    fragmentation: int

    @property
    def total(self) -> int:
        return self.runtime_reserve + self.step_temporaries + self.communication_buffers + self.fragmentation


def _overheads(device: Accelerator, step: float, communication: float, transient: _Transient) -> _Overheads:
    runtime_reserve = TPU_RUNTIME_RESERVE if device.is_tpu else GPU_RUNTIME_RESERVE
    allocated = transient.activations + transient.logits + communication + step
    fragmentation = FRAGMENTATION_FRACTION * allocated + transient.unplaced
    return _Overheads(round(runtime_reserve), round(step), round(communication), round(fragmentation))


# ---------------------------------------------------------------- one pipeline stage


def _stage_estimate(
    spec: TrainingJobSpec,
    device: Accelerator,
    layout: Layout,
    resolved: _Model,
    sharding: _Sharding,
    stage: str,
) -> Estimate:
    """Parameter states, then offload, activations and logits, then the overheads they imply."""
    share = _stage_share(resolved, spec.training, stage)
    states = _parameter_states(spec, resolved, share, sharding)
    stepped_matrix = 0.0
    if spec.training.optimizer_in_backward:
        # Each gradient is stepped and freed as soon as it is ready: at most one matrix's gradient (the
        # largest, which the head's is, first in the backward) is held, whole, before any reduction.
        stepped_matrix = min(
            resolved.shape.largest_matrix() / spec.training.tensor_parallel, states.trainable
        )
        states = _stepped_in_backward(states, stepped_matrix * sharding.per_parameter.gradients, resolved)
    offloaded = _offload(
        spec.training.offload,
        sharding.strategy,
        states,
        unsharded_gradients=_unsharded_accumulation(spec.training) or sharding.stage_held_whole,
        gathered=sharding.stage_held_whole,
    )
    transient = _transient_memory(spec, resolved.shape, stage)
    communication = _communication_buffers(spec, resolved.shape, share, sharding, offloaded.on_device)
    # Autocast's 16-bit weight copies, freed by the backward; a declared state was measured as held: none.
    copies_freed = resolved.declared_state is None and residual_stream(
        spec.model.precision, spec.model.finetuning.method, sharding.strategy
    ) == (FP32_BYTES, 1)
    step = _step_temporaries(offloaded, sharding, transient, copies_freed, stepped_matrix)
    overheads = _overheads(device, step, communication, transient)
    on_device = offloaded.on_device
    summed = Estimate(
        weights=round(on_device.weights),
        gradients=round(on_device.gradients),
        optimizer_states=round(on_device.optimizer),
        activations=round(transient.activations),
        logits=round(transient.logits),
        overhead=overheads.total,
        host_bytes_per_worker=round(offloaded.host * layout.devices_per_worker),
        warnings=(*resolved.warnings, *sharding.warnings, *offloaded.warnings),
        runtime_reserve=overheads.runtime_reserve,
        step_temporaries=overheads.step_temporaries,
        communication_buffers=overheads.communication_buffers,
        fragmentation=overheads.fragmentation,
        data_parallel=sharding.data_parallel,
        stage=stage,
    )
    if not _gradients_follow_the_forward(spec, sharding):
        return summed
    masters = 0.0 if copies_freed else on_device.weights
    temporaries = on_device.trainable * sharding.per_parameter.step_temporary
    if spec.model.optimizer == "adafactor":
        # Its for-loop step holds one parameter's temporary (var_estimate) at a time: the largest one's.
        temporaries = resolved.shape.largest_matrix() * sharding.per_parameter.gradients
    return _largest_phase(summed, spec.training.loss, transient, masters, temporaries)


# ---------------------------------------------------------------- one replica: the phases of a step


def _gradients_follow_the_forward(spec: TrainingJobSpec, sharding: _Sharding) -> bool:
    """Full training on one replica, without sharding, accumulation, model parallelism or offload: the
    last step's gradients were freed (`zero_grad(set_to_none=True)`, PyTorch's default since 2.0) and
    autograd creates each one as the backward reaches it, freeing activations as it goes, so gradients
    and the forward's activations never coexist (measured on an H200: docs/data/gpu-measurements.md,
    "Where in the step the peak happens"). Under DDP the gradient buckets, and under accumulation the
    gradients, are there through the forward, so those keep the sum."""
    training = spec.training
    return (
        spec.model.finetuning.method == "full"
        and sharding.strategy == "none"
        and sharding.data_parallel == 1
        and training.tensor_parallel == 1
        and training.pipeline_parallel == 1
        and (training.gradient_accumulation or 1) == 1
        and training.offload == "none"
        and not training.optimizer_in_backward
    )


def _largest_phase(
    summed: Estimate, loss: str, transient: _Transient, masters: float, temporaries: float
) -> Estimate:
    """The largest of three peaks, each with the memory alive at it (measured on an H200), from the
    estimate that adds everything up (`summed`):
    - the forward's end: parameters, optimizer state, autocast's 16-bit weight copies, the saved
      activations and the logits; no gradients yet;
    - the backward: parameters (`masters`: autocast's copies are freed layer by layer), state, the
      gradients as they are created and the activations not yet freed (at most the larger of the two),
      and the layer being recomputed;
    - the optimizer step: parameters, state, gradients and the step's temporaries, placed in the freed
      activations' blocks; a standard loss's few large logits blocks stay reserved beside them, a chunked
      loss's are reused.
    The allocator's slack is the usual fraction of everything transient in the step; a recomputed layer
    is placed beside the logits' blocks, as in the sum."""
    slack = FRAGMENTATION_FRACTION * (
        transient.saved + transient.recomputed + transient.logits + summed.communication_buffers + temporaries
    )
    logits_kept = transient.logits if loss == "standard" else 0.0
    phases = (
        _phase(
            summed,
            "forward",
            gradients=0,
            activations=transient.saved,
            logits=transient.logits,
            fragmentation=slack + transient.unplaced,
        ),
        _phase(
            summed,
            "backward",
            weights=masters,
            # Each layer's gradients are created as its saved activations are freed: their sum stays
            # within the larger of the two, beside the layer being recomputed.
            activations=max(0.0, transient.saved - summed.gradients) + transient.recomputed,
            communication_buffers=0,
            fragmentation=slack + transient.unplaced,
        ),
        _phase(
            summed,
            "optimizer-step",
            weights=masters,
            step_temporaries=temporaries,
            communication_buffers=0,
            fragmentation=slack + logits_kept,
        ),
    )
    peak = max(phases, key=lambda phase: phase.total)
    if peak.total >= summed.total:
        return summed  # the phase form's own slack put it above the sum, which holds everything at once
    return replace(
        peak,
        other_phase_allocated=max(phase.allocated_peak for phase in phases),
        warnings=(*summed.warnings, _gradients_kept_warning(peak.peak_phase, summed.total)),
    )


def _gradients_kept_warning(phase: str, summed_total: int) -> str:
    """Said, because a training loop that keeps its gradients through the forward breaks the assumption."""
    return (
        f"peak {PHASE_WORDS[phase]}: on one replica the gradients are freed before the next forward "
        "(zero_grad(set_to_none=True), PyTorch's default since 2.0, called after step() or before the "
        "forward), so they never coexist with its activations; a training loop that keeps them through the "
        f"forward (zero_grad after the forward, or set_to_none=False) needs {format_gib(summed_total)} per device"
    )


PHASE_WORDS = {
    "forward": "at the end of the forward pass",
    "backward": "in the backward pass",
    "optimizer-step": "in the optimizer step",
}


def _phase(summed: Estimate, name: str, **alive: float) -> Estimate:
    """`summed` with only what is alive at phase `name`: the parts given, nothing transient not given."""
    parts = {"activations": 0.0, "logits": 0.0, "step_temporaries": 0.0, **alive}
    rounded: dict[str, Any] = {part: round(value) for part, value in parts.items()}
    phase = replace(summed, peak_phase=name, **rounded)
    overhead = (
        phase.runtime_reserve + phase.step_temporaries + phase.communication_buffers + phase.fragmentation
    )
    return replace(phase, overhead=overhead)
