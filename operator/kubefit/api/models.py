"""Pydantic models of the TrainingJob spec and status: the single source of the CRD schema.

Every field carries a description; `kubefit crd` turns these models into the CRD's OpenAPI v3
schema, so `kubectl explain trainingjob.spec...` shows the same words.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubefit.api.quantity import parse_bytes, parse_count, parse_cpu_millis

Framework = Literal["pytorch", "jax", "none"]
Precision = Literal["fp32", "fp16-mixed", "bf16-mixed", "bf16-true", "fp8-mixed"]
Optimizer = Literal["adamw", "adam", "adamw-8bit", "adafactor", "sgd", "sgd-momentum", "lion"]
FinetuningMethod = Literal["full", "lora", "qlora"]
Checkpointing = Literal["none", "selective", "full"]
Attention = Literal["sdpa", "flash", "eager"]
Sharding = Literal["none", "zero1", "zero2", "zero3", "fsdp"]
Offload = Literal["none", "optimizer", "optimizer-and-parameters"]
Loss = Literal["standard", "chunked"]
Phase = Literal["Pending", "Queued", "Running", "Scaling", "Succeeded", "Failed", "Suspended"]

# A count such as 8030000000 or "8.03B", and a quantity such as "120Gi": both are integers or strings
# in the CRD (x-kubernetes-int-or-string), parsed by the validators below.
CountOrString = int | str
QuantityOrString = int | str


class _Model(BaseModel):
    """Base: camelCase names on the wire, unknown fields refused (a typo is an error, not a no-op)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=True
    )


class Architecture(_Model):
    """Transformer shape; sharpens the activation and logits estimates."""

    layers: int = Field(ge=1, description="Number of transformer layers (blocks).")
    hidden_size: int = Field(ge=1, description="Model (embedding) width h.")
    attention_heads: int = Field(ge=1, description="Number of query attention heads a.")
    kv_heads: int | None = Field(
        default=None,
        ge=1,
        description="Key/value heads for grouped-query attention. Default: attentionHeads.",
    )
    intermediate_size: int | None = Field(
        default=None, ge=1, description="Width of the MLP's hidden layer. Default: 4 x hiddenSize."
    )
    vocab_size: int | None = Field(
        default=None, ge=1, description="Vocabulary size; drives the logits memory. Default: 32000."
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> Architecture:
        if self.kv_heads is not None and self.kv_heads > self.attention_heads:
            raise ValueError("kvHeads must not exceed attentionHeads")
        return self


class Finetuning(_Model):
    """Which parameters are trained."""

    method: FinetuningMethod = Field(
        default="full",
        description="full: every parameter is trained. lora: a frozen base in the model's precision plus "
        "trainable low-rank adapters. qlora: a frozen 4-bit (nf4) base plus adapters.",
    )
    lora_rank: int = Field(
        default=8,
        ge=1,
        description="LoRA rank r, used to estimate the adapters when trainableParameters is absent.",
    )
    trainable_parameters: CountOrString | None = Field(
        default=None,
        description="Number of trainable (adapter) parameters, a number or a string with a K/M/B/T suffix.",
    )

    @field_validator("trainable_parameters")
    @classmethod
    def _count(cls, value: CountOrString | None) -> CountOrString | None:
        if value is not None:
            parse_count(value)
        return value


class Model(_Model):
    """What the job must hold in accelerator memory; `parameters` or `memory` is required."""

    parameters: CountOrString | None = Field(
        default=None,
        description="Parameter count: a number or a string with a decimal K/M/B/T suffix, e.g. 8.03B.",
    )
    memory: QuantityOrString | None = Field(
        default=None,
        description="Declared total training-state memory (weights, gradients, optimizer states) as a "
        "Kubernetes quantity, e.g. 120Gi; used as-is instead of the parameter formulas. Activations still "
        "come from `training`.",
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

    @field_validator("parameters", "memory", mode="before")
    @classmethod
    def _not_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number or a string, not true/false")
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: CountOrString | None) -> CountOrString | None:
        if value is not None:
            parse_count(value)
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: QuantityOrString | None) -> QuantityOrString | None:
        if value is not None:
            parse_bytes(value)
        return value

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

    micro_batch_size: int = Field(default=1, ge=1, description="Sequences per device per forward pass.")
    sequence_length: int = Field(default=2048, ge=1, description="Tokens per sequence.")
    activation_checkpointing: Checkpointing = Field(
        default="none",
        description="none: keep all activations. selective: recompute attention internals. full: keep only "
        "each layer's input and recompute the rest in the backward pass.",
    )
    attention: Attention = Field(
        default="sdpa",
        description="sdpa and flash are memory-efficient (no s x s score matrix is stored); eager "
        "materialises the attention scores.",
    )
    sharding: Sharding = Field(
        default="none",
        description="Data-parallel sharding of training state across all data-parallel devices: none (plain "
        "data parallel), zero1 (optimizer states), zero2 (+gradients), zero3 or fsdp (+parameters).",
    )
    tensor_parallel: int = Field(default=1, ge=1, description="Tensor-parallel degree t.")
    pipeline_parallel: int = Field(default=1, ge=1, description="Pipeline-parallel degree p.")
    offload: Offload = Field(
        default="none",
        description="Host-memory offload: none, optimizer (optimizer states and their step on the CPU), or "
        "optimizer-and-parameters.",
    )
    loss: Loss = Field(
        default="standard",
        description="How the loss handles the output logits. standard: a plain cross-entropy that holds the "
        "whole batch's logits in fp32 with their log-softmax and gradient. chunked: a chunked or fused "
        "cross-entropy that keeps the logits in the compute dtype and upcasts them to fp32 one chunk at a "
        "time, or never materialises them (torchtune CEWithChunkedOutputLoss or LinearCrossEntropyLoss, "
        "Liger fused linear cross-entropy). Give chunked only when the training code uses such a loss: it "
        "sizes the logits several times smaller.",
    )


class Resources(_Model):
    """Accelerator choice and per-worker resources."""

    accelerator: str = Field(
        default="auto",
        description="auto, or an accelerator catalog name such as nvidia-h100-80gb or google-tpu-v5e.",
    )
    accelerators_per_worker: int | Literal["auto"] = Field(
        default="auto", description="auto, or the number of accelerators each worker pod requests."
    )
    memory_headroom: float = Field(
        default=0.10,
        ge=0.0,
        lt=1.0,
        description="Fraction of device memory kept free when deciding what fits (0 to 0.99).",
    )
    cpu: QuantityOrString | None = Field(
        default=None, description="CPU request per worker. Default: 8 cores per accelerator, at most 96."
    )
    memory: QuantityOrString | None = Field(
        default=None,
        description="Host memory request per worker. Default: the offloaded state plus 16Gi per accelerator.",
    )

    @field_validator("accelerators_per_worker")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 'auto' or an integer of at least 1")
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: QuantityOrString | None) -> QuantityOrString | None:
        if value is not None:
            parse_bytes(value)
        return value

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: QuantityOrString | None) -> QuantityOrString | None:
        if value is not None:
            parse_cpu_millis(value)
        return value


class Workers(_Model):
    """Worker count and its elastic bounds."""

    replicas: int = Field(
        default=1,
        ge=1,
        description="Desired worker count; the scale subresource (kubectl scale, HPA) writes here.",
    )
    min_replicas: int | None = Field(
        default=None,
        ge=1,
        description="Elastic floor. The effective floor is max(minReplicas, the workers memory requires). "
        "Default: replicas.",
    )
    max_replicas: int | None = Field(default=None, ge=1, description="Elastic ceiling. Default: replicas.")

    @model_validator(mode="after")
    def _ordered(self) -> Workers:
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and self.min_replicas > self.max_replicas
        ):
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self

    @property
    def floor(self) -> int:
        return self.min_replicas if self.min_replicas is not None else min(self.replicas, self.ceiling)

    @property
    def ceiling(self) -> int:
        return (
            self.max_replicas if self.max_replicas is not None else max(self.replicas, self.min_replicas or 1)
        )


class Elastic(_Model):
    """Elastic scaling between minReplicas and maxReplicas."""

    enabled: bool = Field(default=False, description="Let the operator scale workers between the bounds.")
    checkpoint_grace_period_seconds: int = Field(
        default=120,
        ge=0,
        description="Scale-down waits for the workers' checkpoint acknowledgement at most this long.",
    )


class Scheduling(_Model):
    """Gang placement and priority."""

    priority: int = Field(
        default=0, description="Higher first; lower-priority elastic jobs shrink to make room."
    )
    gang_timeout_seconds: int = Field(
        default=300,
        ge=1,
        description="A gang not fully placed by then releases everything and requeues.",
    )


class RunPolicy(_Model):
    """Restarts, suspension and clean-up."""

    max_restarts: int = Field(default=3, ge=0, description="Worker restarts allowed before the job fails.")
    suspend: bool = Field(default=False, description="true deletes the workers and keeps the job.")
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the job this long after it succeeds or fails. Default: never."
    )


class TrainingJobSpec(_Model):
    """Desired state of a TrainingJob."""

    template: dict[str, Any] = Field(
        description="A PodTemplateSpec for each worker (image, command, args, env, volumes, ...).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    framework: Framework = Field(
        default="pytorch",
        description="Which rendezvous environment the operator injects: pytorch (torchrun), jax, or none.",
    )
    model: Model = Field(description="What the job must hold in accelerator memory.")
    training: Training = Field(default_factory=Training, description="Batch, sequence and parallelism.")
    resources: Resources = Field(default_factory=Resources, description="Accelerator choice.")
    workers: Workers = Field(default_factory=Workers, description="Worker count and elastic bounds.")
    elastic: Elastic = Field(default_factory=Elastic, description="Elastic scaling.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Gang placement and priority.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Restarts, suspension, clean-up.")

    @field_validator("template")
    @classmethod
    def _template_has_containers(cls, value: dict[str, Any]) -> dict[str, Any]:
        containers = (value.get("spec") or {}).get("containers")
        if not isinstance(containers, list) or not containers:
            raise ValueError("template.spec.containers must list at least one container")
        return value


# ---------------------------------------------------------------- status


class Condition(_Model):
    """A metav1.Condition."""

    type: str = Field(
        description="Condition type: Sized, Ready, Admitted, Running, Succeeded, Failed, Suspended."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
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
    min_workers: int = Field(description="Fewest workers whose combined memory holds the job.")
    per_device_bytes: int = Field(description="Estimated peak memory per device, everything included.")
    fits: bool = Field(description="Whether the estimate fits the device with the headroom kept free.")
    breakdown: MemoryBreakdown = Field(description="The estimate by component.")
    warnings: list[str] = Field(default_factory=list, description="Assumptions made and remedies suggested.")


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
        default=None, description="Ready and desired workers as ready/desired, for printing."
    )
    per_device_memory: str | None = Field(
        default=None, description="Estimated peak memory per device in GiB, for printing."
    )
    start_time: str | None = Field(default=None, description="When the workers first all ran (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When the job finished (RFC 3339).")
