"""Pydantic models of the TrainingJob spec and status: the single source of the CRD schema.

Every field carries a description; `kubefit crd` turns these models into the CRD's OpenAPI v3
schema, so `kubectl explain trainingjob.spec...` shows the same words.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from kubefit.api.conditions import ConditionStatus, Phase
from kubefit.api.quantity import (
    COUNT_PATTERN,
    QUANTITY_PATTERN,
    echo,
    exact_count,
    exact_quantity,
    int_or_string,
    parse_bytes,
    parse_count,
    parse_cpu_millis,
)
from kubefit.api.template import LABEL_VALUE_MAX, PodTemplate

Framework = Literal["pytorch", "jax", "none"]
Precision = Literal["fp32", "fp16-mixed", "bf16-mixed", "bf16-true", "fp8-mixed"]
Optimizer = Literal["adamw", "adam", "adamw-8bit", "adafactor", "sgd", "sgd-momentum", "lion"]
FinetuningMethod = Literal["full", "lora", "qlora"]
Checkpointing = Literal["none", "selective", "full"]
Attention = Literal["sdpa", "flash", "eager"]
Sharding = Literal["none", "zero1", "zero2", "zero3", "fsdp"]
Offload = Literal["none", "optimizer", "optimizer-and-parameters"]
Loss = Literal["standard", "chunked"]
FsdpWrap = Literal["blocks", "blocks-and-embeddings"]
FitPolicy = Literal["Enforce", "Warn"]
# The projections of a transformer block that can carry LoRA adapters (PEFT's q_proj ... down_proj).
LoraTarget = Literal["query", "key", "value", "output", "gate", "up", "down"]
LORA_TARGETS: tuple[LoraTarget, ...] = ("query", "key", "value", "output", "gate", "up", "down")
Preemption = Literal["Never", "LowerPriority"]

# A count such as 8030000000 or "8.03B", and a quantity such as "120Gi": both are integers or strings
# in the CRD (x-kubernetes-int-or-string, with the grammar as its pattern), parsed by the validators below.
CountOrString = int | str
QuantityOrString = int | str

# ---------------------------------------------------------------- bounds
# Every number that reaches the estimator, the planner or a pod has a maximum, written into the CRD so
# the API server refuses a larger one naming the field. Each is far above any published training run;
# together they keep every estimate finite (no float overflow) and every job a size the operator can
# hold in memory.

# Llama 3 405B trained on up to 16,384 H100s (Dubey et al. 2024, "The Llama 3 Herd of Models",
# arXiv:2407.21783, section 3.3), 2,048 nodes of 8 GPUs: 4,096 workers of one node each is twice that.
MAX_WORKERS = 4096
# The error type of a section's check that names one of its fields: the field's name (camelCase) is in
# the error's context, and the error is reported at it (api/validation.py).
FIELD_ERROR = "field_error"
# A worker is one pod on one node. Nodes carry at most 16 accelerator devices (the catalog's largest
# perNode is 16; AWS trn1.32xlarge has 16 Trainium chips, which the Neuron device plugin can expose as
# 32 NeuronCores): 64 is twice the largest count a device plugin advertises on one node.
MAX_ACCELERATORS_PER_WORKER = 64
# 10^15 parameters: over 600 times Switch-C's 1.6T, the largest published model (Fedus et al. 2021,
# "Switch Transformers", arXiv:2101.03961, Table 9).
MAX_PARAMETERS = 10**15
# 1 EiB of training state: 10^15 parameters of mixed-precision Adam state (16 bytes each) is 16 PB.
MAX_MODEL_MEMORY = 2**60
# Per worker (one node): 1 PiB of host memory and 100,000 cores, a thousand times and a hundred times
# the largest single servers (32 TiB and 896 vCPUs: AWS u7in-32tb.224xlarge, aws.amazon.com/ec2/instance-types/high-memory).
MAX_HOST_MEMORY = 2**50
MAX_CPU_MILLICORES = 100_000 * 1000
# Transformer shape. Layers: 10 times DeepNet's 1,000 (Wang et al. 2022, arXiv:2203.00555). Width:
# 40 times the widest published, h = 25,600 for a 1T-parameter GPT (Narayanan et al. 2021,
# arXiv:2104.04473, Table 1); the MLP is at most 4 times that; vocabulary: 64 times Gemma's 256,000
# (Gemma Team 2024, arXiv:2403.08295).
MAX_LAYERS = 10_000
MAX_HIDDEN_SIZE = 2**20
MAX_INTERMEDIATE_SIZE = 2**22
MAX_VOCAB_SIZE = 2**24
# Tokens per sequence: above the 10M-token contexts Gemini 1.5 was evaluated at (Gemini Team 2024,
# arXiv:2403.05530). Sequences per device per step: a bound that only keeps the arithmetic finite.
MAX_SEQUENCE_LENGTH = 2**24
MAX_MICRO_BATCH_SIZE = 2**16
# The planner searches layouts of up to 4,096 devices (sizing.planner.MAX_DEVICES); a tensor- or
# pipeline-parallel group larger than that never fits in a searched layout.
MAX_PARALLEL_DEGREE = 4096
# A LoRA rank above the hidden size adds nothing over full fine-tuning.
MAX_LORA_RANK = MAX_HIDDEN_SIZE
# Seconds and counts are int32, as Kubernetes' own are (batch/v1 Job ttlSecondsAfterFinished,
# backoffLimit): 68 years, so now + the value stays inside Python's datetime.
MAX_INT32 = 2**31 - 1
# PriorityClass values for user classes range up to one billion (kubernetes.io/docs/concepts/
# scheduling-eviction/pod-priority-preemption); the same range below zero.
MAX_PRIORITY = 10**9
# torchrun's in-place restarts of an elastic worker (elastic.maxRestarts). Each planned removal uses one on
# every surviving worker, so a small budget fails a long-lived scaled job; 100 is what Kubeflow's elastic
# PyTorchJob examples set (elasticPolicy.maxRestarts) and what examples/elastic-ddp passed torchrun.
DEFAULT_IN_PLACE_RESTARTS = 100


def _int_or_string_schema(pattern: str, maximum: int) -> dict[str, Any]:
    """CRD checks of an int-or-string field: the integer form within [1, maximum], the string form in the
    grammar. A string past the maximum ("1e400") matches the grammar; the operator refuses it."""
    return {"pattern": pattern, "minimum": 1, "maximum": maximum}


def _int_or_string(example: str) -> BeforeValidator:
    """An integer or a string, else one message naming what to write (quantity.int_or_string)."""
    return BeforeValidator(lambda value: int_or_string(value, example))


def _parses_within(parse: Callable[[Any, int], int], maximum: int) -> AfterValidator:
    """Checks that a count or quantity parses and is at most `maximum`; keeps the value as written."""

    def check(value: int | str | None) -> int | str | None:
        if value is not None:
            parse(value, maximum)
        return value

    return AfterValidator(check)


def _whole(exact: Callable[[Any], Decimal | None], unit: str) -> AfterValidator:
    """Checks that a count or quantity that parsed comes to a whole number of `unit`s: parse_count and
    parse_bytes would truncate a fraction ("1.5" parameters to 1) without a word."""

    def check(value: int | str | None) -> int | str | None:
        number = exact(value) if isinstance(value, str) else None
        if number is not None and number != number.to_integral_value(rounding=ROUND_DOWN):
            raise ValueError(
                f"{echo(value)} is {echo(number)} {unit}s, not a whole number: give a whole number "
                f"of {unit}s (a fraction is not rounded)"
            )
        return value

    return AfterValidator(check)


# The four int-or-string fields: an integer or a string, then the grammar and the maximum are checked, and
# for counts and bytes that the value is whole.
ParameterCount = Annotated[
    CountOrString | None,
    _int_or_string("'8.03B'"),
    _parses_within(parse_count, MAX_PARAMETERS),
    _whole(exact_count, "parameter"),
]
ModelMemory = Annotated[
    QuantityOrString | None,
    _int_or_string("'1.5Gi'"),
    _parses_within(parse_bytes, MAX_MODEL_MEMORY),
    _whole(exact_quantity, "byte"),
]
HostMemory = Annotated[
    QuantityOrString | None,
    _int_or_string("'1.5Gi'"),
    _parses_within(parse_bytes, MAX_HOST_MEMORY),
    _whole(exact_quantity, "byte"),
]
CpuQuantity = Annotated[
    QuantityOrString | None,
    _int_or_string("'0.5' or '500m'"),
    _parses_within(parse_cpu_millis, MAX_CPU_MILLICORES),
]


# The builders read the template as the plain mapping it is at run time; pydantic checks its shape.
if TYPE_CHECKING:
    _PodTemplateSpec = dict[str, Any]
else:
    _PodTemplateSpec = PodTemplate


class _Model(BaseModel):
    """Base: camelCase names on the wire, unknown fields refused (a typo is an error, not a no-op).

    Integer fields are strict (strict=True): a string ("4") or a boolean is refused, as the API server
    refuses it. A whole float never reaches them from kubectl: its JSON (Go's encoding/json) writes 4.0 as 4.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,  # YAML .nan and .inf are never a valid size or fraction
    )


class Architecture(_Model):
    """Transformer shape; sharpens the activation and logits estimates."""

    layers: int = Field(
        strict=True, ge=1, le=MAX_LAYERS, description="Number of transformer layers (blocks)."
    )
    hidden_size: int = Field(strict=True, ge=1, le=MAX_HIDDEN_SIZE, description="Model (embedding) width h.")
    attention_heads: int = Field(
        strict=True,
        ge=1,
        le=MAX_HIDDEN_SIZE,
        description="Number of query attention heads a; at most hiddenSize.",
    )
    kv_heads: int | None = Field(
        strict=True,
        ge=1,
        le=MAX_HIDDEN_SIZE,
        default=None,
        description="Key/value heads for grouped-query attention; divides attentionHeads. "
        "Default: attentionHeads.",
    )
    intermediate_size: int | None = Field(
        strict=True,
        ge=1,
        le=MAX_INTERMEDIATE_SIZE,
        default=None,
        description="Width of the MLP's hidden layer. Default: 4 x hiddenSize.",
    )
    vocab_size: int | None = Field(
        strict=True,
        ge=1,
        le=MAX_VOCAB_SIZE,
        default=None,
        description="Vocabulary size; drives the logits memory. Default: 32000.",
    )
    head_dim: int | None = Field(
        strict=True,
        ge=1,
        le=MAX_HIDDEN_SIZE,
        default=None,
        description="Width of one attention head. Default: hiddenSize / attentionHeads. Give it when the "
        "model's config.json has a head_dim that differs (Gemma 7B and Gemma 2: 256).",
    )

    @model_validator(mode="after")
    def _heads_fit(self) -> Architecture:
        # Reported at the field, so that the webhook's ratcheting (by path) lets an update through that
        # leaves it as it was.
        if self.attention_heads > self.hidden_size:
            raise PydanticCustomError(
                FIELD_ERROR,
                "must not exceed hiddenSize ({hidden}): each head needs a dimension",
                {"field": "attentionHeads", "hidden": self.hidden_size},
            )
        if self.kv_heads is not None and self.kv_heads > self.attention_heads:
            raise PydanticCustomError(
                FIELD_ERROR,
                "must not exceed attentionHeads ({heads})",
                {"field": "kvHeads", "heads": self.attention_heads},
            )
        if self.kv_heads is not None and self.attention_heads % self.kv_heads:
            # Grouped-query attention shares each key/value head among attentionHeads / kvHeads query heads
            # (transformers' repeat_kv, Megatron-Core's num_query_groups).
            raise PydanticCustomError(
                FIELD_ERROR,
                "must divide attentionHeads ({heads}): each key/value head serves a whole group of query heads",
                {"field": "kvHeads", "heads": self.attention_heads},
            )
        return self


class Finetuning(_Model):
    """Which parameters are trained."""

    method: FinetuningMethod = Field(
        default="full",
        description="full: every parameter is trained. lora: a frozen base in the model's precision plus "
        "trainable low-rank adapters. qlora: a frozen 4-bit (nf4) base plus adapters.",
    )
    lora_rank: int = Field(
        strict=True,
        ge=1,
        le=MAX_LORA_RANK,
        default=8,
        description="lora and qlora only (with method full only the default, which the API server "
        "stores, is accepted). LoRA rank r, used to estimate the adapters when trainableParameters is "
        "absent.",
    )
    trainable_parameters: ParameterCount = Field(
        default=None,
        description="Number of trainable (adapter) parameters, a number or a string with a K/M/B/T suffix; "
        "at least 1 and at most 10^15.",
        json_schema_extra=_int_or_string_schema(COUNT_PATTERN, MAX_PARAMETERS),
    )
    double_quantization: bool = Field(
        strict=True,
        default=True,
        description="qlora only. true: the 4-bit blocks' constants are quantised too (QLoRA's double "
        "quantisation, bitsandbytes bnb_4bit_use_double_quant / litgpt bnb.nf4-dq, torchao NF4), 4.127 bits "
        "per weight. false: one fp32 constant per 64-weight block (bitsandbytes' plain nf4, litgpt "
        "bnb.nf4), 4.5 bits per weight.",
    )
    quantized_head: bool = Field(
        strict=True,
        default=False,
        description="qlora only. true: the output head, when not tied to the embedding, is quantised like "
        "the blocks' linear layers and dequantised to 16 bits at each call (Lightning's "
        "BitsandbytesPrecision, which litgpt's --quantize bnb.* uses, replaces every nn.Linear). false: "
        "the head stays 16-bit (PEFT/transformers, torchtune, fsdp_qlora).",
    )

    lora_targets: list[LoraTarget] = Field(
        default_factory=lambda: list(LORA_TARGETS),
        min_length=1,
        max_length=len(LORA_TARGETS),
        description="lora and qlora only. The projections of every block that carry adapters: query, key, "
        "value, output (attention), gate, up, down (MLP; a two-matrix MLP has up and down), as PEFT's "
        "target_modules q_proj ... down_proj. Default: all. Read for the adapters' size when "
        "trainableParameters is absent, for the inputs kept for the backward (a frozen projection without "
        "an adapter keeps none; gated-MLP models), and for the dropout masks and copies (loraDropout).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    lora_dropout: float = Field(
        strict=True,
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="lora and qlora only. The adapters' dropout probability (PEFT and litgpt lora_dropout). "
        "Above 0, every adapter keeps a one-byte mask per input element for the backward, and its own "
        "dropped copy of an input it would otherwise share with other adapters; 0 (PEFT's and torchtune's "
        "default) keeps neither.",
    )

    @field_validator("lora_targets")
    @classmethod
    def _targets_once(cls, value: list[LoraTarget]) -> list[LoraTarget]:
        repeated = sorted({target for target in value if value.count(target) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return value

    @field_validator("lora_rank", "lora_targets", "lora_dropout")
    @classmethod
    def _only_for_adapters(cls, value: Any, info: ValidationInfo) -> Any:
        if "method" not in info.data:
            return value  # the method itself is refused; its error is the one to read
        field = cls.model_fields[info.field_name or ""]
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        method = info.data["method"]
        if method == "full" and (sorted(value) if isinstance(value, list) else value) != (
            sorted(default) if isinstance(default, list) else default
        ):
            raise ValueError("applies only to methods lora and qlora (method is full)")
        return value

    @field_validator("double_quantization", "quantized_head")
    @classmethod
    def _only_for_qlora(cls, value: bool, info: ValidationInfo) -> bool:
        # A 4-bit detail changed for a run with no 4-bit base would be read by nothing: say so. Its default
        # is accepted anywhere, so a spec written back with its defaults filled in still parses.
        default = cls.model_fields[info.field_name or ""].default
        if "method" not in info.data:
            return value  # the method itself is refused; its error is the one to read
        method = info.data["method"]
        if value != default and method != "qlora":
            raise ValueError(f"applies only to method qlora (method is {method})")
        return value


class Model(_Model):
    """What the job must hold in accelerator memory; `parameters` or `memory` is required."""

    parameters: ParameterCount = Field(
        default=None,
        description="Parameter count: a number or a string with a decimal K/M/B/T suffix, e.g. 8.03B; at "
        "least 1 and at most 10^15 (1000T).",
        json_schema_extra=_int_or_string_schema(COUNT_PATTERN, MAX_PARAMETERS),
    )
    memory: ModelMemory = Field(
        default=None,
        description="Declared total training-state memory (weights, gradients, optimizer states) as a "
        "Kubernetes quantity, e.g. 120Gi, at most 1Ei. It replaces the parameter-based figures for that "
        "state, split by the precision's and optimizer's byte ratios and sharded like them; under LoRA or "
        "QLoRA the adapters' gradients and optimizer states are taken from it at their own size and the "
        "rest is the frozen base. Activations still come from `training`.",
        json_schema_extra=_int_or_string_schema(QUANTITY_PATTERN, MAX_MODEL_MEMORY),
    )
    architecture: Architecture | None = Field(
        default=None,
        description="Optional transformer shape. Without it, activations and logits are estimated from the "
        "parameter count alone and the sizing carries a warning.",
    )
    precision: Precision = Field(
        default="bf16-mixed",
        description="Numeric precision: fp32, fp16-mixed (PyTorch AMP), bf16-mixed, bf16-true (pure bf16, "
        "no fp32 master copy), fp8-mixed.",
    )
    optimizer: Optimizer = Field(
        default="adamw",
        description="Optimizer, which sets the optimizer-state bytes per trainable parameter.",
    )
    finetuning: Finetuning = Field(default_factory=Finetuning, description="Full training or LoRA/QLoRA.")

    @model_validator(mode="after")
    def _parameters_or_memory(self) -> Model:
        if self.parameters is None and self.memory is None:
            raise ValueError("one of model.parameters or model.memory is required")
        return self

    @property
    def parameter_count(self) -> int | None:
        return None if self.parameters is None else parse_count(self.parameters)

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else parse_bytes(self.memory)


class Training(_Model):
    """How the job trains: batch, sequence, checkpointing, attention and parallelism."""

    micro_batch_size: int = Field(
        strict=True,
        ge=1,
        le=MAX_MICRO_BATCH_SIZE,
        default=1,
        description="Sequences per device per forward pass.",
    )
    sequence_length: int = Field(
        strict=True, ge=1, le=MAX_SEQUENCE_LENGTH, default=2048, description="Tokens per sequence."
    )
    # No default in the CRD: the API server would write 1 into every stored job, and a pipelined job would
    # then be sized with one micro-batch in flight instead of pipelineParallel (unset below).
    gradient_accumulation: int | None = Field(
        strict=True,
        ge=1,
        le=MAX_MICRO_BATCH_SIZE,
        default=None,
        description="Micro-batches per optimizer step (unset: 1); under pipelineParallel > 1, those each "
        "pipeline runs, of which the first stage holds min(pipelineParallel, gradientAccumulation) in flight "
        "(1F1B); unset under pipelineParallel, pipelineParallel are assumed in flight. "
        "Under sharding fsdp, more than 1 is sized as FSDP's "
        "no_sync accumulation (PyTorch FSDP, Lightning Fabric, Accelerate), which holds every gradient "
        "unsharded on each device until the last micro-batch; zero2/zero3 keep gradients partitioned. "
        "For full training of one replica, more than 1 keeps the gradients through the forward, and the "
        "estimate counts them beside its activations.",
    )
    optimizer_in_backward: bool = Field(
        strict=True,
        default=False,
        description="true: each parameter's optimizer step runs in the backward pass as soon as its gradient "
        "is ready, and the gradient is freed (torchtune optimizer_in_bwd, PyTorch's optimizer-step-in-"
        "backward hooks), so the model's gradients are never held together. Needs gradientAccumulation 1, "
        "stated under pipelineParallel > 1 (where unset means pipelineParallel micro-batches per step).",
    )
    activation_checkpointing: Checkpointing = Field(
        default="none",
        description="none: keep all activations. selective: recompute attention internals. full: keep only "
        "each layer's input and recompute the rest in the backward pass.",
    )
    attention: Attention = Field(
        default="sdpa",
        description="sdpa and flash are memory-efficient (no s x s score matrix is stored), except at "
        "precision fp32 with grouped KV heads (kvHeads below attentionHeads), where PyTorch's SDPA falls "
        "back to its math path and keeps the fp32 scores: sized so; eager materialises the attention scores.",
    )
    sharding: Sharding = Field(
        default="none",
        description="Data-parallel sharding of training state across all data-parallel devices: none (plain "
        "data parallel), zero1 (optimizer states), zero2 (+gradients), zero3 or fsdp (+parameters). With "
        "pipelineParallel > 1, zero2, zero3 and fsdp shard only the optimizer states (a stage keeps its "
        "parameters gathered and its gradients whole across micro-batches), with a sizing warning.",
    )
    fsdp_wrap: FsdpWrap = Field(
        default="blocks",
        description="sharding fsdp only: which modules FSDP shards as their own units. blocks: the "
        "transformer blocks alone (Hugging Face Accelerate's transformer wrap policy, litgpt, fsdp_qlora, "
        "torchtitan, torchtune without custom_sharded_layers); the embedding and output head stay in the "
        "root unit, which FSDP keeps gathered from the forward through the backward. "
        "blocks-and-embeddings: the embedding and head are sharded apart too (torchtune's "
        "custom_sharded_layers), so they are gathered one at a time like a block.",
    )
    tensor_parallel: int = Field(
        strict=True, ge=1, le=MAX_PARALLEL_DEGREE, default=1, description="Tensor-parallel degree t."
    )
    pipeline_parallel: int = Field(
        strict=True,
        ge=1,
        le=MAX_PARALLEL_DEGREE,
        default=1,
        description="Pipeline-parallel degree p; at most the model's layers.",
    )
    offload: Offload = Field(
        default="none",
        description="Host-memory offload: none, optimizer (optimizer states and their step on the CPU; under "
        "zero2, zero3 or fsdp the gradient partitions too), or optimizer-and-parameters (also the parameter "
        "shards, under zero3 or fsdp only: with another sharding the parameters stay on the device, with a "
        "sizing warning).",
    )
    loss: Loss = Field(
        default="standard",
        description="How the loss handles the output logits. standard: a plain cross-entropy that holds the "
        "whole batch's logits in fp32 with their log-softmax and gradient. chunked: a chunked or fused "
        "cross-entropy that computes the logits in chunks in the compute dtype and upcasts one chunk at a "
        "time, or never materialises them (torchtune CEWithChunkedOutputLoss or LinearCrossEntropyLoss, "
        "Liger fused linear cross-entropy); sized as torchtune's chunked loss runs without compile, which "
        "keeps every chunk's fp32 log-softmax, about half of standard. Give chunked only when the training "
        "code uses such a loss.",
    )

    @field_validator("optimizer_in_backward")
    @classmethod
    def _one_micro_batch_per_step(cls, value: bool, info: ValidationInfo) -> bool:
        # A step inside the backward cannot wait for more micro-batches: nothing accumulates the gradients.
        accumulation = info.data.get("gradient_accumulation")
        if value and accumulation is not None and accumulation > 1:
            raise ValueError(f"needs gradientAccumulation 1 (gradientAccumulation is {accumulation})")
        return value

    @field_validator("pipeline_parallel")
    @classmethod
    def _one_pipelined_micro_batch_stated(cls, value: int, info: ValidationInfo) -> int:
        # Unset under pipelining, gradientAccumulation means pipelineParallel micro-batches per step (sizing).
        if "gradient_accumulation" not in info.data:
            return value  # gradientAccumulation itself is refused; its error is the one to read
        stated = info.data["gradient_accumulation"]
        if value > 1 and info.data.get("optimizer_in_backward") and stated is None:
            raise ValueError(
                f"{value} with optimizerInBackward needs gradientAccumulation 1 stated (unset under "
                "pipelineParallel > 1, the pipeline runs pipelineParallel micro-batches per step)"
            )
        return value

    @field_validator("fsdp_wrap")
    @classmethod
    def _only_for_fsdp(cls, value: str, info: ValidationInfo) -> str:
        # How FSDP wraps the model means nothing to another sharding; its default is accepted anywhere, so a
        # spec written back with its defaults filled in still parses.
        if "sharding" not in info.data:
            return value  # the sharding itself is refused; its error is the one to read
        sharding = info.data["sharding"]
        if value != cls.model_fields["fsdp_wrap"].default and sharding != "fsdp":
            raise ValueError(f"applies only to sharding fsdp (sharding is {sharding})")
        return value


class Resources(_Model):
    """Accelerator choice and per-worker resources."""

    accelerator: str = Field(
        default="auto",
        # A label value's bound: the name is echoed in messages, which a 200 KB string would flood.
        max_length=LABEL_VALUE_MAX,
        description="auto, or an accelerator catalog name such as nvidia-h100-80gb or google-tpu-v5e "
        f"(at most {LABEL_VALUE_MAX} characters).",
    )
    accelerators_per_worker: (
        Annotated[int, Field(strict=True, ge=1, le=MAX_ACCELERATORS_PER_WORKER)] | Literal["auto"]
    ) = Field(
        default="auto",
        description="auto, or the number of accelerators each worker pod requests (1 to 64). With auto, an "
        "elastic pytorch job keeps the count its running workers have until none runs.",
    )
    memory_headroom: float = Field(
        strict=True,  # a number, as the CRD's type: "0.1" or true would pass here and fail kubectl apply
        default=0.10,
        ge=0.0,
        lt=1.0,
        description="Fraction of device memory kept free when deciding what fits (at least 0, below 1).",
    )
    fit_policy: FitPolicy = Field(
        default="Enforce",
        description="Enforce: a job whose estimate does not fit starts no worker (Sized=False, DoesNotFit). "
        "Warn: with accelerator and acceleratorsPerWorker both named, it starts anyway, with Sized=False, "
        "a Warning event and a status.sizing warning: for a layout you have run, whose estimate is above "
        "what you measured. Warn with either of them auto is refused.",
    )
    cpu: CpuQuantity = Field(
        default=None,
        description="CPU request of each worker's first container, a Kubernetes quantity such as 8 or "
        "500m, at most 100000 cores and not above the template's own cpu limit. Default: the template's "
        "own cpu request, else its cpu limit, else 8 cores per accelerator, at most 96, and at most 90% of "
        "the allocatable cpu per device of the smallest node the workers may land on.",
        json_schema_extra=_int_or_string_schema(QUANTITY_PATTERN, MAX_CPU_MILLICORES // 1000),
    )
    memory: HostMemory = Field(
        default=None,
        description="Host memory request of each worker's first container, a Kubernetes quantity such as "
        "64Gi, at most 1Pi and not above the template's own memory limit. Default: the template's own "
        "memory request, else its memory limit, else 16Gi per accelerator (at most 90% of the allocatable "
        "memory per device of the smallest node the workers may land on) plus the training state "
        "offloaded to the host.",
        json_schema_extra=_int_or_string_schema(QUANTITY_PATTERN, MAX_HOST_MEMORY),
    )

    @field_validator("accelerators_per_worker", mode="wrap")
    @classmethod
    def _count_or_auto(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        try:
            return handler(value)
        except ValidationError:  # one message instead of one per union branch
            raise ValueError(
                f"must be 'auto' or an integer from 1 to {MAX_ACCELERATORS_PER_WORKER}, got {echo(value)}"
            ) from None

    @field_validator("memory_headroom")
    @classmethod
    def _no_negative_zero(cls, value: float) -> float:
        return value + 0.0  # -0.0 passes ge=0 but would print as "-0%"; -0.0 + 0.0 is 0.0

    @model_validator(mode="after")
    def _warn_on_a_named_layout(self) -> Resources:
        # Started though it does not fit is a layout the user vouches for; with auto, the planner's best
        # effort would be started, a layout nobody chose.
        if self.fit_policy == "Warn" and (
            self.accelerator == "auto" or self.accelerators_per_worker == "auto"
        ):
            raise PydanticCustomError(
                FIELD_ERROR,
                "Warn needs resources.accelerator and resources.acceleratorsPerWorker both named, not auto",
                {"field": "fitPolicy"},
            )
        return self


class Workers(_Model):
    """Worker count and its elastic bounds."""

    replicas: int = Field(
        strict=True,
        ge=1,
        le=MAX_WORKERS,
        default=1,
        description="Desired worker count, 1 to 4096; the scale subresource (kubectl scale, HPA) writes "
        "here. Kept within [floor, maxReplicas]; an elastic job runs fewer while capacity is short, never "
        "fewer than its floor.",
    )
    min_replicas: int | None = Field(
        strict=True,
        ge=1,
        le=MAX_WORKERS,
        default=None,
        description="Floor of the worker count. The effective floor is max(minReplicas, the workers memory "
        "requires), in whole tensorParallel x pipelineParallel groups (rounded up, with a warning, where the "
        "planner chooses the layout); when it exceeds maxReplicas no worker starts. Default: replicas, at "
        "most maxReplicas.",
    )
    max_replicas: int | None = Field(
        strict=True,
        ge=1,
        le=MAX_WORKERS,
        default=None,
        description="Ceiling of the worker count, at most 4096. Default: the larger of replicas and "
        "minReplicas.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Workers:
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and self.min_replicas > self.max_replicas
        ):
            # Reported at the field, as the API server reports an HPA's minReplicas above its maxReplicas.
            raise PydanticCustomError(
                FIELD_ERROR,
                "must not exceed maxReplicas ({maximum})",
                {"field": "minReplicas", "maximum": self.max_replicas},
            )
        return self

    @property
    def floor(self) -> int:
        return self.min_replicas if self.min_replicas is not None else min(self.replicas, self.ceiling)

    @property
    def ceiling(self) -> int:
        return (
            self.max_replicas if self.max_replicas is not None else max(self.replicas, self.min_replicas or 1)
        )

    @property
    def ceiling_field(self) -> str:
        """The field that sets `ceiling`, for messages that tell the user what to raise."""
        if self.max_replicas is not None:
            return "maxReplicas"
        if self.min_replicas is not None and self.min_replicas > self.replicas:
            return "minReplicas"
        return "replicas"


class Elastic(_Model):
    """Elastic rendezvous: workers that can join and leave a running group."""

    enabled: bool = Field(
        strict=True,
        default=False,
        description="true: the job runs between its effective minimum and workers.replicas workers, as "
        "many as free capacity allows; it grows when capacity appears and shrinks (after the checkpoint "
        "handshake) when replicas drops or a higher-priority job needs the devices. framework pytorch "
        "workers get torchrun's elastic c10d rendezvous with PET_NNODES=floor:ceiling, so the group "
        "re-forms (a count outside that range, when the bounds follow replicas, restarts every worker with "
        "the new range); framework jax fixes the process count when workers start, so each change of the count "
        "restarts every worker with the new one. false: all-or-nothing at replicas; changing replicas "
        "restarts every worker with the new world size.",
    )
    max_restarts: int = Field(
        strict=True,
        ge=0,
        le=MAX_INT32,
        default=DEFAULT_IN_PLACE_RESTARTS,
        description="Elastic pytorch jobs only (enabled true, framework pytorch): torchrun's in-place "
        "restarts of each worker's processes "
        "(PET_MAX_RESTARTS; Kubeflow's elasticPolicy.maxRestarts). Every worker removed on purpose "
        "(scale-down, shrink for priority) or lost makes the others' processes fail and restart in place, "
        "using one each, and so does a crash of the training script. When a worker's are used up its pod "
        "fails, and that counts against runPolicy.maxRestarts.",
    )
    checkpoint_grace_period_seconds: int = Field(
        strict=True,
        ge=0,
        le=MAX_INT32,
        default=120,
        description="Before workers are removed on purpose (scale-down, shrink for priority, preemption, "
        "suspend, a non-elastic restart) the operator asks every running worker to checkpoint and waits "
        "until all acknowledge or this many seconds pass; 0 removes them without asking. Workers also "
        "get a termination grace period at least this long.",
    )


class Scheduling(_Model):
    """Admission order, gang start and preemption in the operator's own queue."""

    priority: int = Field(
        strict=True,
        ge=-MAX_PRIORITY,
        le=MAX_PRIORITY,
        default=0,
        description="Admission order: the operator's queue admits jobs of higher priority first (then "
        "older first), and a job whose minimum does not fit may shrink lower-priority elastic jobs toward "
        "their minimums. A priorityClassName in the template still applies to the worker pods.",
    )
    gang_timeout_seconds: int = Field(
        strict=True,
        ge=1,
        le=MAX_INT32,
        default=300,
        description="Seconds after admission by which every admitted worker must be placed on a node "
        "(bound by the scheduler; pulling its image or starting counts) at once. Otherwise all workers are "
        "deleted (Admitted=False, reason GangTimeout, a Warning event) and the job asks for admission again "
        "after a backoff of 10 s doubled per timeout, at most 10 minutes. An elastic pytorch job's gang "
        "counts as placed once its floor is; an elastic jax job, whose group is fixed at start, only when "
        "every admitted worker is.",
    )
    preemption: Preemption = Field(
        default="Never",
        description="Never: this job only waits, or shrinks lower-priority elastic jobs toward their "
        "minimums. LowerPriority: when shrinking is not enough for its minimum, whole lower-priority jobs "
        "are stopped (after the checkpoint handshake) and requeued; they do not fail.",
    )


class RunPolicy(_Model):
    """Restarts, suspension and clean-up."""

    max_restarts: int = Field(
        strict=True,
        ge=0,
        le=MAX_INT32,
        default=3,
        description="Restarts allowed before the job fails. A fixed group (not elastic, or framework jax) "
        "restarts every worker when one fails, which counts once however many fail with it; an elastic "
        "pytorch job replaces each failed worker, and workers that fail together (created before the last "
        "counted failure, failing within 10 minutes of it) count once.",
    )
    suspend: bool = Field(
        strict=True,
        default=False,
        description="true stops the workers, after the checkpoint handshake, and keeps the job; a job whose "
        "training has ended (a worker succeeded) lets its workers finish instead.",
    )
    ttl_seconds_after_finished: int | None = Field(
        strict=True,
        ge=0,
        le=MAX_INT32,
        default=None,
        description="Delete the job this long after it succeeds or fails. Default: never.",
    )


class TrainingJobSpec(_Model):
    """Desired state of a TrainingJob."""

    template: _PodTemplateSpec = Field(
        description="A PodTemplateSpec for each worker (image, command, args, env, volumes, ...), passed "
        "through as written except what the operator adds: see template.spec and its containers.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    framework: Framework = Field(
        default="pytorch",
        description="Which rendezvous environment the operator injects: pytorch (torchrun), jax, or none.",
    )
    model: Model = Field(description="What the job must hold in accelerator memory.")
    training: Training = Field(
        default_factory=Training,
        description="How the training code runs (batch, sequence, parallelism), used to size the job; the "
        "operator passes none of it to the workers.",
    )
    resources: Resources = Field(default_factory=Resources, description="Accelerator choice.")
    workers: Workers = Field(default_factory=Workers, description="Worker count and its bounds.")
    elastic: Elastic = Field(default_factory=Elastic, description="Elastic rendezvous for the workers.")
    scheduling: Scheduling = Field(
        default_factory=Scheduling, description="Priority, gang timeout and preemption in admission."
    )
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Restarts, suspension, clean-up.")


# ---------------------------------------------------------------- status


class Condition(_Model):
    """A metav1.Condition."""

    type: str = Field(
        description="Condition type: Sized, Admitted, Ready, Running, Succeeded, Failed, Suspended."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase reason.")
    message: str = Field(default="", description="A human-readable explanation.")
    observed_generation: int | None = Field(default=None, description="The spec generation this reflects.")
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )


class MemoryBreakdown(_Model):
    """Estimated peak memory per device by component, in bytes."""

    weights: int = Field(description="Model weights held on the device.")
    gradients: int = Field(description="Gradients held on the device.")
    optimizer_states: int = Field(description="Optimizer states (and fp32 master weights) on the device.")
    activations: int = Field(description="Activations kept for the backward pass.")
    logits: int = Field(description="Output logits and their gradient.")
    overhead: int = Field(
        description="Runtime context, optimizer-step temporaries, communication buffers and fragmentation."
    )


class SizingStatus(_Model):
    """The sizing decision; `kubefit size -o json` prints this object."""

    accelerator: str = Field(description="Chosen accelerator catalog name.")
    resource_name: str = Field(description="Extended resource requested, e.g. nvidia.com/gpu.")
    device_memory_bytes: int = Field(description="Device memory as the driver reports it.")
    accelerators_per_worker: int = Field(description="Accelerators each worker requests.")
    min_workers: int = Field(
        description="Fewest workers whose combined memory holds the job. Where no worker count holds it "
        "(fits false), the count the estimate shown was made at, not a floor."
    )
    per_device_bytes: int = Field(description="Estimated peak memory per device, everything included.")
    fits: bool = Field(description="Whether the estimate fits the device with the headroom kept free.")
    breakdown: MemoryBreakdown = Field(
        description="The estimate by component at its peak: for full training of one replica, the phase of "
        "the step that warnings names (in the optimizer step, no activations or logits)."
    )
    warnings: list[str] = Field(default_factory=list, description="Assumptions made and remedies suggested.")


class CheckpointStatus(_Model):
    """The open checkpoint request: the workers are asked to checkpoint before some of them are removed."""

    request_id: str = Field(description="The request's id, which the workers acknowledge.")
    reason: str = Field(
        description="Why workers will be removed: ScaledDown, ShrunkForPriority, Preempted, Suspended or "
        "Restarting."
    )
    requested_at: str = Field(description="When the request was opened (RFC 3339).")
    target_replicas: int = Field(
        description="Workers kept once the removal is done (0: all removed); for Restarting, the count every "
        "worker starts again with."
    )
    acknowledged: int = Field(description="Running workers that acknowledged the request so far.")
    workers: int = Field(description="Running workers asked to acknowledge.")


class GangStatus(_Model):
    """The gang timeout's bookkeeping: whether the admitted workers were all placed, and the retries."""

    started: bool = Field(
        default=False,
        description="True once every admitted worker has been placed on a node at once; the gang timeout "
        "no longer applies until the job is queued again, restarts every worker (a new world size, or a "
        "fixed group after a failed or lost worker), or (elastic pytorch) falls below what its running "
        "group re-forms with.",
    )
    since: str | None = Field(
        default=None,
        description="When the gang began waiting to be placed, if not at its admission: a restart of every "
        "worker, a loss below its minimum, or the end of its restart backoff (RFC 3339, may be ahead); the "
        "gang timeout counts from then. For a started elastic gang: when a worker above its floor that no node "
        "took within the gang timeout was given up; the job grows no more for one gang timeout from then.",
    )
    running: bool = Field(
        default=False,
        description="A fixed group's (not elastic, or framework jax): True once every worker of its restart "
        "attempt has run at once, so it trains; a worker gone from then on restarts the group, even one "
        "whose node stopped answering before its pod went.",
    )
    attempt: int = Field(
        default=0,
        ge=0,
        description="The fixed group's restart attempt (not elastic, or framework jax): each restart of every "
        "worker starts a new one. Workers carry theirs (annotation kubefit.dev/restart-attempt); those of "
        "another attempt are stopped, and no new worker is created while they are still going.",
    )
    retries: int = Field(
        default=0,
        description="Times the gang timed out, or gave its grant back for refused creates, and the job was requeued.",
    )
    retry_after: str | None = Field(
        default=None,
        description="Until then (RFC 3339) the job does not ask for admission again after a gang timeout.",
    )
    refused: str | None = Field(
        default=None,
        description="Why the API server refused the gang's workers (Pod Security Admission, a webhook, a quota), "
        "or which pod or Service that is not the job's holds a name it needs, when it gave its grant back; set "
        "until a create of its workers goes through, a dry-run create of its first worker (or of the one "
        "whose name was taken; tried about every 30 s while it waits, unless some of its creates went "
        "through for another refusal) is admitted, its Service is created, or the spec changes. "
        "Meanwhile the job takes no room from other jobs (it preempts and shrinks none), also after an "
        "operator restart.",
    )
    unplaceable: str | None = Field(
        default=None,
        description="kube-scheduler's reason the gang's workers were not placed at its last gang timeout, when "
        "it named no shortage of the job's accelerator (a PersistentVolumeClaim not found, a node selector "
        "no node matches): more room would not place them, so until a worker of the job is placed on a node "
        "(on devices free anyway) or its spec changes, the job takes no room from other jobs (it preempts "
        "and shrinks none), also after an operator restart.",
    )
    room_from: list[str] | None = Field(
        default=None,
        description="Jobs (namespace/name) shrunk or preempted to make room for this gang whose workers were "
        "still leaving (saving within their checkpoint grace) when this status was written: the gang timeout "
        "does not count while they go. An operator restarted (or a new leader) reads it, so the clock stays "
        "stopped until they are gone.",
    )
    room_freed_at: str | None = Field(
        default=None,
        description="When the workers of the jobs that made room for this gang were seen gone (RFC 3339): the "
        "gang timeout counts from then if that is later than its start.",
    )


class TrainingJobStatus(_Model):
    """Observed state of a TrainingJob."""

    observed_generation: int | None = Field(default=None, description="The spec generation last reconciled.")
    conditions: list[Condition] = Field(default_factory=list, description="Current conditions.")
    phase: Phase | None = Field(
        default=None, description="Summary for printing, derived from the conditions."
    )
    sizing: SizingStatus | None = Field(default=None, description="The sizing decision.")
    replicas: int | None = Field(default=None, description="Worker pods that exist.")
    ready_replicas: int | None = Field(default=None, description="Worker pods running.")
    selector: str | None = Field(
        default=None, description="Label selector of the workers (scale subresource)."
    )
    restarts: int | None = Field(default=None, description="Worker restarts so far.")
    workers: str | None = Field(
        default=None,
        description="Ready and desired workers as ready/desired, for printing: desired is what the spec asks "
        "within its bounds, not only what was granted (desiredReplicas).",
    )
    desired_replicas: int | None = Field(
        default=None,
        description="Workers the operator runs now: spec.workers.replicas within its bounds, limited to "
        "what the scheduling pass granted (0 while queued).",
    )
    message: str | None = Field(
        default=None,
        description="Why the running workers differ from spec.workers.replicas (queued, capacity, a "
        "shrink for priority, a checkpoint wait, a restart backoff); absent when they match.",
    )
    checkpoint: CheckpointStatus | None = Field(
        default=None, description="The open checkpoint request; absent when none is open."
    )
    checkpoint_requests: int | None = Field(
        default=None, description="Checkpoint requests opened so far (numbers each request's id)."
    )
    gang: GangStatus | None = Field(default=None, description="Gang timeout bookkeeping.")
    succeeded_workers: str | None = Field(
        default=None,
        description="Indices of the running group's workers that succeeded, as 0-2,5: such a worker is not "
        "created again when its pod goes (a node removed after it finished). Cleared when the workers "
        "are stopped or restarted with a new world size.",
    )
    last_failure_time: str | None = Field(
        default=None,
        description="When a worker last failed and was deleted for replacement (RFC 3339); the restart "
        "backoff counts from it.",
    )
    per_device_memory: str | None = Field(
        default=None, description="Estimated peak memory per device in GiB, for printing."
    )
    start_time: str | None = Field(default=None, description="When the workers first all ran (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When the job finished (RFC 3339).")
