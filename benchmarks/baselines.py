"""Existing estimators, implemented from their published formulas, to compare against kubefit.

Sources (quoted in docs/data/sizing-calibration.md sections 1.2 and 1.3):
- DeepSpeed `estimate_zero2_model_states_mem_needs` (deepspeed/runtime/zero/stage_1_and_2.py, current
  code after PR deepspeedai/DeepSpeed#5099) and `estimate_zero3_model_states_mem_needs`
  (deepspeed/runtime/zero/stage3.py). Model states only; no activations, buffers or context.
- Hugging Face Accelerate `estimate-memory` (src/accelerate/commands/estimate.py,
  `estimate_training_usage`): the maximum of model, gradients, optimizer and step, not their sum.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceAndHost:
    gpu_bytes: int
    cpu_bytes: int


def deepspeed_zero2(
    total_params: int,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = False,
    additional_buffer_factor: float = 1.5,
) -> DeviceAndHost:
    """estimate_zero2_model_states_mem_needs: per-GPU and per-node CPU bytes."""
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        gpu = 2 * total_params
        cpu = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        # "2 = params_16bit, 18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit + 8_optimizer_states_32bit"
        gpu = 2 * total_params + int(18 * total_params / total_gpus)
        cpu = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return DeviceAndHost(int(gpu), int(cpu))


# The parameters are DeepSpeed's own, in its order, so the two can be read side by side.
def deepspeed_zero3(  # noqa: PLR0913
    total_params: int,
    largest_layer_params: int,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = False,
    cpu_offload_params: bool = False,
    zero_init: bool = True,
    additional_buffer_factor: float = 1.5,
) -> DeviceAndHost:
    """estimate_zero3_model_states_mem_needs: per-GPU and per-node CPU bytes."""
    total_gpus = num_nodes * num_gpus_per_node
    gpus_factor = 1 / num_nodes
    largest_layer_memory = 4 * largest_layer_params  # fp16 params gathered + fp16 grads computed
    if cpu_offload:
        if cpu_offload_params:
            gpu = largest_layer_memory
            if zero_init:
                cpu = total_params * 18 * gpus_factor * additional_buffer_factor
            else:
                cpu = total_params * max(4 * num_gpus_per_node, 18 * gpus_factor) * additional_buffer_factor
        else:
            gpu = largest_layer_memory + int(2 * total_params / total_gpus)
            if zero_init:
                cpu = total_params * 16 * gpus_factor * additional_buffer_factor
            else:
                cpu = total_params * max(4 * num_gpus_per_node, 16 * gpus_factor) * additional_buffer_factor
    else:
        gpu = largest_layer_memory + int(18 * total_params / total_gpus)
        if zero_init:
            cpu = largest_layer_params * 4 * num_gpus_per_node * additional_buffer_factor
        else:
            cpu = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return DeviceAndHost(int(gpu), int(cpu))


def accelerate_training_bytes(total_params: int, mixed_precision: str = "bfloat16") -> int | None:
    """`accelerate estimate-memory` "Training using Adam": the max of model, grads, optimizer, step.

    float32: 16 B/param; float16/bfloat16 (and fp8 without MS-AMP): 8 B/param; int8/int4: N/A (None).
    """
    fp32_size = 4 * total_params
    if mixed_precision == "float32":
        components = {
            "model": fp32_size,
            "grads": fp32_size,
            "optimizer": 2 * fp32_size,
            "step": 4 * fp32_size,
        }
    elif mixed_precision in ("float16", "bfloat16", "fp8"):
        components = {
            "model": fp32_size,
            "grads": fp32_size + fp32_size // 2,
            "optimizer": 2 * fp32_size,
            "step": 2 * fp32_size,
        }
    else:
        return None
    return max(components.values())
