"""Estimator: peak memory per device for one layout of a TrainingJob.

PLACEHOLDER until the real estimator lands; the dataclasses and the signature of `estimate` are the
contract that the planner codes against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubefit.api.models import MemoryBreakdown, TrainingJobSpec
from kubefit.sizing.catalog import Accelerator


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
    """Per-device peak memory by component, in bytes, plus what was assumed."""

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    logits: int
    overhead: int
    host_bytes_per_worker: int = 0  # offloaded state held in host memory
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_states + self.activations + self.logits + self.overhead

    def breakdown(self) -> MemoryBreakdown:
        return MemoryBreakdown(
            weights=self.weights,
            gradients=self.gradients,
            optimizer_states=self.optimizer_states,
            activations=self.activations,
            logits=self.logits,
            overhead=self.overhead,
        )


def estimate(spec: TrainingJobSpec, device: Accelerator, layout: Layout) -> Estimate:
    state = spec.model.memory_bytes or 16 * (spec.model.parameter_count or 0)
    shards = layout.devices if spec.training.sharding in ("zero3", "fsdp") else 1
    return Estimate(
        weights=state // shards, gradients=0, optimizer_states=0, activations=0, logits=0, overhead=2**30,
        warnings=("placeholder estimate: 16 bytes per parameter",),
    )
