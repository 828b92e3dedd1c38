"""Measured training peak memory on a real GPU, over a grid of training setups.

Trains randomly initialised Llama-shaped transformers built from a config (transformers' LlamaConfig; no
weights are downloaded) for a few steps per setup, over precision x optimizer x micro-batch x sequence x
activation checkpointing x LoRA/QLoRA x loss, and records for each setup:

- torch.cuda.max_memory_allocated and max_memory_reserved (the caching allocator's peaks);
- the whole-device peak: total - free from torch.cuda.mem_get_info (cudaMemGetInfo, what nvidia-smi
  shows), sampled every 2 ms by a thread while the steps run, and the device memory used outside the
  allocator (CUDA context, library handles) measured when the allocator holds nothing;
- OOM as a row (oom: true) with the peaks reached before it.

Each setup runs in this one process: between setups the model is deleted, the cache emptied and the peak
statistics reset, so every row starts from an empty allocator. Rows are appended to OUT/gpu_rows.jsonl as
they finish, so a run stopped by a timeout still leaves every finished row; --budget-s stops starting new
setups after that many seconds.

    python3 benchmarks/gpu_memory_grid.py --out "$OUT" --budget-s 420     # on a CUDA machine
    .venv/bin/python benchmarks/gpu_memory_grid.py --out /tmp/g --tiny      # CPU smoke test, tiny models

QLoRA and the 8-bit/paged optimizers need bitsandbytes; without it those setups are recorded as skipped.
docs/data/gpu-measurements.md holds the rows measured with this script and how they were read.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

GIB = 2**30

# Llama-shaped models, untied output head (the estimator counts the head apart from the embedding).
# small ~ GPT-2 small widths; medium = TinyLlama-1.1B's config.json widths; bigvocab = Gemma-2B's widths
# (hidden 2048, 18 layers, 8 heads, 1 KV head, head_dim 256, ffn 16384) with its 256k vocabulary.
MODELS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1000),
    "tinyvocab": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                      intermediate_size=256, vocab_size=8000),
    "small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                  intermediate_size=2048, vocab_size=32000),
    "medium": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                   intermediate_size=5632, vocab_size=32000),
    "bigvocab": dict(hidden_size=2048, num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1,
                     intermediate_size=16384, vocab_size=256000),
    # The held-out grid's shapes (--holdout), none of them run before its predictions were committed:
    # Llama 3.2 1B's, Qwen2 0.5B's (152k vocabulary, no q/k/v bias here) and Phi-3-mini's widths.
    "llama32": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=8192, vocab_size=128256),
    "qwen05": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                   intermediate_size=4864, vocab_size=151936),
    "phi3": dict(hidden_size=3072, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=8192, vocab_size=32064),
}  # fmt: skip
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The same projections in the API's words (finetuning.loraTargets).
TARGET_IN_API = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "o_proj": "output",
                 "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}  # fmt: skip
LOSS_CHUNKS = 8  # torchtune CEWithChunkedOutputLoss num_output_chunks default


@dataclass(frozen=True)
class Setup:
    """One training setup of the grid, in the TrainingJob API's words where it has them."""

    model: str
    precision: str = "bf16-mixed"  # fp32, fp16-mixed, bf16-mixed, bf16-true
    optimizer: str = "adamw"  # adamw, sgd, sgd-momentum, adafactor, adamw-8bit, paged-adamw, paged-adamw-8bit
    micro_batch: int = 4
    sequence: int = 2048
    checkpointing: str = "none"  # none or full
    finetuning: str = "full"  # full, lora, qlora
    lora_rank: int = 16
    lora_dropout: float = 0.0  # peft's default; the API's finetuning.loraDropout
    lora_targets: tuple[str, ...] = LORA_TARGETS  # the API's finetuning.loraTargets
    loss: str = "standard"  # standard (transformers' loss on full logits) or chunked (torchtune's)
    attention: str = "sdpa"  # sdpa or eager
    steps: int = 3

    @property
    def name(self) -> str:
        parts = [self.model, self.finetuning, self.precision, self.optimizer, f"b{self.micro_batch}",
                 f"s{self.sequence}", f"ac-{self.checkpointing}", self.loss, self.attention]  # fmt: skip
        # Named only when not the default, so that earlier runs' rows keep their names.
        if self.lora_dropout:
            parts.append(f"dropout{self.lora_dropout:g}")
        if tuple(self.lora_targets) != LORA_TARGETS:
            parts.append("+".join(TARGET_IN_API[target] for target in self.lora_targets))
        return "/".join(parts)


# ---------------------------------------------------------------- the grid


def gpu_grid() -> list[Setup]:
    """Ordered by what the estimator most needs checked: QLoRA and the 256k vocabulary first."""
    grid: list[Setup] = []
    big = Setup("bigvocab", micro_batch=2, sequence=2048)
    for finetuning in ("qlora", "lora"):
        for checkpointing in ("full", "none"):
            for loss in ("standard", "chunked"):
                grid.append(replace(big, finetuning=finetuning, checkpointing=checkpointing, loss=loss))
    grid.append(replace(big, finetuning="qlora", checkpointing="full", micro_batch=4, sequence=4096))
    grid.append(replace(big, finetuning="qlora", checkpointing="full", optimizer="paged-adamw"))
    for loss in ("standard", "chunked"):
        for checkpointing in ("full", "none"):
            grid.append(replace(big, loss=loss, checkpointing=checkpointing))
        grid.append(replace(big, loss=loss, checkpointing="full", micro_batch=4, sequence=4096))
    grid.append(replace(big, precision="bf16-true", checkpointing="full"))
    medium = Setup("medium")
    # Past the device: these should run out of memory (early, so that a time limit cannot drop them).
    grid.append(replace(big, precision="fp32", micro_batch=8, sequence=4096))
    grid.append(replace(medium, micro_batch=32, sequence=8192))
    for finetuning in ("qlora", "lora"):
        for micro_batch, sequence in ((4, 2048), (1, 8192)):
            for checkpointing in ("none", "full"):
                grid.append(replace(medium, finetuning=finetuning, micro_batch=micro_batch,
                                    sequence=sequence, checkpointing=checkpointing))  # fmt: skip
    grid += _medium_full(medium)
    grid += [replace(Setup("small"), micro_batch=b, sequence=s, checkpointing=c, precision=p)
             for b, s in ((8, 1024), (16, 2048)) for c in ("none", "full") for p in ("bf16-mixed", "fp32")]  # fmt: skip
    return grid


def _medium_full(medium: Setup) -> list[Setup]:
    """Full fine-tuning of the 1.1B model: precision x optimizer, then micro-batch x sequence, eager."""
    grid = []
    for optimizer in ("adamw", "sgd-momentum", "adafactor", "adamw-8bit"):
        for checkpointing in ("none", "full"):
            grid.append(replace(medium, optimizer=optimizer, checkpointing=checkpointing))
    for precision in ("bf16-true", "fp32", "fp16-mixed"):
        for checkpointing in ("none", "full"):
            grid.append(replace(medium, precision=precision, checkpointing=checkpointing))
    for micro_batch, sequence in ((1, 512), (8, 2048), (4, 4096), (1, 16384)):
        for checkpointing in ("none", "full"):
            grid.append(
                replace(medium, micro_batch=micro_batch, sequence=sequence, checkpointing=checkpointing)
            )
    grid.append(replace(medium, attention="eager", micro_batch=2, sequence=2048))
    return grid


def second_grid() -> list[Setup]:
    """QLoRA and LoRA with every parameter in bf16 (torchtune's and litgpt's way), no autocast."""
    big = Setup("bigvocab", precision="bf16-true", finetuning="qlora", micro_batch=2, sequence=2048)
    grid = [
        replace(big, checkpointing=c, loss=loss) for c in ("full", "none") for loss in ("standard", "chunked")
    ]
    medium = replace(big, model="medium", micro_batch=4)
    grid += [
        replace(medium, finetuning=f, checkpointing=c) for f in ("qlora", "lora") for c in ("none", "full")
    ]
    grid += [replace(big, finetuning="lora", checkpointing="full"), replace(big, finetuning="lora")]
    return grid


def dropout_grid() -> list[Setup]:
    """LoRA dropout and targets (the estimator's finetuning.loraDropout/loraTargets, modelled on peft's
    modules and a probe of litgpt's, not yet measured through peft): each setup beside its dropout-0
    twin, so that the difference is the dropout's alone; all projections and query+value only."""
    grid: list[Setup] = []
    medium = Setup("medium", finetuning="lora", micro_batch=4, sequence=2048)
    for finetuning in ("lora", "qlora"):
        for checkpointing in ("none", "full"):
            for targets in (LORA_TARGETS, ("q_proj", "v_proj")):
                for dropout in (0.0, 0.1):
                    grid.append(replace(medium, finetuning=finetuning, checkpointing=checkpointing,
                                        lora_targets=targets, lora_dropout=dropout))  # fmt: skip
    big = Setup("bigvocab", finetuning="lora", micro_batch=2, sequence=2048, checkpointing="full")
    grid += [replace(big, lora_dropout=dropout) for dropout in (0.0, 0.05, 0.1)]
    return grid


def holdout_grid() -> list[Setup]:
    """Kubefit's own held-out set (source kubefit-gpu-holdout): new model shapes over the setups the API
    expresses, whose estimates were committed (benchmarks/data/gpu-holdout-predictions.json) before the
    first run, so that the figures on them are predictions."""
    qwen = Setup("qwen05", micro_batch=4, sequence=2048)
    llama = Setup("llama32", micro_batch=2, sequence=4096)
    phi = Setup("phi3", micro_batch=2, sequence=2048)
    return [
        # Past the device (early, so that a time limit cannot drop it): fp32 activations of 3.8B at 8k.
        replace(phi, precision="fp32", micro_batch=8, sequence=8192),
        qwen,
        replace(qwen, checkpointing="full"),
        replace(qwen, checkpointing="full", loss="chunked"),
        replace(qwen, finetuning="lora", micro_batch=8, sequence=4096, checkpointing="full"),
        replace(qwen, finetuning="qlora", micro_batch=8, sequence=4096, checkpointing="full"),
        replace(qwen, finetuning="qlora", precision="bf16-true", micro_batch=8, sequence=4096, loss="chunked"),
        replace(llama, precision="bf16-true", micro_batch=4, checkpointing="full"),
        replace(llama, optimizer="adamw-8bit", sequence=8192, checkpointing="full"),
        replace(llama, finetuning="lora", sequence=8192),
        replace(llama, finetuning="qlora", micro_batch=1, sequence=16384, checkpointing="full"),
        replace(llama, optimizer="sgd-momentum", micro_batch=4, sequence=2048, attention="eager"),
        replace(llama, precision="fp32", sequence=2048, checkpointing="full"),
        replace(llama, precision="fp16-mixed", micro_batch=4, sequence=2048, checkpointing="full"),
        replace(llama, finetuning="lora", precision="bf16-true", micro_batch=4, checkpointing="full",
                loss="chunked", lora_dropout=0.1, lora_targets=("q_proj", "v_proj")),
        replace(phi, checkpointing="full"),
        replace(phi, precision="bf16-true", optimizer="adafactor", micro_batch=4, sequence=4096,
                checkpointing="full"),
        replace(phi, finetuning="lora", micro_batch=4, sequence=4096),
        replace(phi, finetuning="qlora", micro_batch=4, sequence=4096, checkpointing="full"),
        replace(phi, finetuning="qlora", precision="bf16-true", optimizer="paged-adamw", micro_batch=8,
                checkpointing="full", loss="chunked"),
    ]  # fmt: skip


def parameter_counts(setup: Setup) -> tuple[int, int]:
    """(parameters, trainable parameters) of a setup's model as built here: Llama-shaped, untied head,
    RMSNorm weights, no biases; LoRA adds r x (in + out) per targeted projection per layer."""
    shape = MODELS[setup.model]
    hidden, ffn, vocab = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv_width = hidden // shape["num_attention_heads"] * shape["num_key_value_heads"]
    widths = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv_width), "v_proj": (hidden, kv_width),
              "o_proj": (hidden, hidden), "gate_proj": (hidden, ffn), "up_proj": (hidden, ffn),
              "down_proj": (ffn, hidden)}  # fmt: skip
    per_layer = sum(inputs * outputs for inputs, outputs in widths.values()) + 2 * hidden
    total = 2 * vocab * hidden + shape["num_hidden_layers"] * per_layer + hidden
    if setup.finetuning == "full":
        return total, total
    adapters = sum(setup.lora_rank * sum(widths[target]) for target in setup.lora_targets)
    return total, shape["num_hidden_layers"] * adapters


def tiny_grid() -> list[Setup]:
    """A CPU smoke test of every code path."""
    tiny = Setup("tiny", micro_batch=2, sequence=64, steps=2)
    return [
        tiny,
        replace(tiny, checkpointing="full", loss="chunked"),
        replace(tiny, precision="bf16-true", optimizer="adafactor"),
        replace(tiny, precision="fp32", optimizer="sgd-momentum", attention="eager"),
        replace(tiny, finetuning="lora"),
        replace(tiny, finetuning="lora", lora_dropout=0.1, lora_targets=("q_proj", "v_proj")),
        replace(tiny, model="tinyvocab", finetuning="lora", checkpointing="full", loss="chunked"),
        replace(tiny, finetuning="qlora"),
        replace(tiny, finetuning="qlora", precision="bf16-true", loss="chunked"),
        replace(tiny, optimizer="adamw-8bit"),
    ]


# ---------------------------------------------------------------- device memory


class DevicePeak:
    """Samples total - free of the device (cudaMemGetInfo) from a thread; no-op without CUDA."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DevicePeak:
        if torch.cuda.is_available():
            self.peak = device_used()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, device_used())
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.peak = max(self.peak, device_used())


def device_used() -> int:
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def allocator_stats() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {}
    stats = torch.cuda.memory_stats()
    return {
        "max_allocated_bytes": torch.cuda.max_memory_allocated(),
        "max_reserved_bytes": torch.cuda.max_memory_reserved(),
        "alloc_retries": stats.get("num_alloc_retries", 0),
    }


# ---------------------------------------------------------------- building the model


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _config(setup: Setup) -> Any:
    from transformers import LlamaConfig

    shape = MODELS[setup.model]
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    return LlamaConfig(
        **shape,
        head_dim=head_dim,
        tie_word_embeddings=False,
        max_position_embeddings=max(setup.sequence, 2048),
    )


def build_model(setup: Setup, scratch: Path) -> tuple[Any, int]:
    """The model ready to train, and its parameter count before any quantisation."""
    from transformers import LlamaForCausalLM

    config = _config(setup)
    config._attn_implementation = setup.attention
    if setup.finetuning == "qlora":
        return _qlora_model(setup, config, scratch)
    base_dtype = torch.float32
    if setup.precision == "bf16-true" or (setup.finetuning == "lora" and setup.precision != "fp32"):
        base_dtype = torch.bfloat16  # a LoRA base is frozen in 16 bits; adapters are added in fp32
    with torch.device(_device()):
        model = LlamaForCausalLM(config).to(base_dtype)
    parameters = sum(p.numel() for p in model.parameters())
    if setup.finetuning == "lora":
        model = _with_lora(model, setup)
    return model, parameters


def _with_lora(model: Any, setup: Setup) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=setup.lora_rank, lora_alpha=2 * setup.lora_rank, lora_dropout=setup.lora_dropout,
                      target_modules=list(setup.lora_targets))  # fmt: skip
    # peft upcasts adapters of a 16-bit base to fp32 for autocast; bf16-true keeps them in bf16.
    return get_peft_model(model, lora, autocast_adapter_dtype=setup.precision != "bf16-true")


def _qlora_model(setup: Setup, config: Any, scratch: Path) -> tuple[Any, int]:
    """The Hugging Face QLoRA recipe: nf4 with double quantisation and bf16 compute
    (BitsAndBytesConfig), prepare_model_for_kbit_training (not under bf16-true), then LoRA on every
    projection."""
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    saved = scratch / f"{setup.model}-bf16"
    if not saved.exists():  # random weights saved once per model, then loaded quantised
        with torch.device(_device()):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(saved)
        del model
    parameters = _parameter_count(config)
    quantisation = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = LlamaForCausalLM.from_pretrained(
        saved, quantization_config=quantisation, dtype=torch.bfloat16, device_map={"": _device()},
        attn_implementation=setup.attention,
    )  # fmt: skip
    if setup.precision != "bf16-true":  # bf16-true keeps the unquantised parameters in bf16 (torchtune)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=setup.checkpointing == "full"
        )
    return _with_lora(model, setup), parameters


def _parameter_count(config: Any) -> int:
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


def build_optimizer(setup: Setup, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    name = setup.optimizer
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=1e-5)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=1e-5)
    if name == "sgd-momentum":
        return torch.optim.SGD(parameters, lr=1e-5, momentum=0.9)
    if name == "adafactor":
        return torch.optim.Adafactor(parameters, lr=1e-3)
    import bitsandbytes as bnb

    classes = {"adamw-8bit": bnb.optim.AdamW8bit, "paged-adamw": bnb.optim.PagedAdamW,
               "paged-adamw-8bit": bnb.optim.PagedAdamW8bit}  # fmt: skip
    return classes[name](parameters, lr=1e-5)


# ---------------------------------------------------------------- one training step


def _autocast(setup: Setup) -> contextlib.AbstractContextManager[Any]:
    if setup.precision in ("bf16-mixed", "fp16-mixed"):
        dtype = torch.float16 if setup.precision == "fp16-mixed" else torch.bfloat16
        return torch.autocast(_device().type, dtype=dtype)
    return contextlib.nullcontext()


def chunked_loss(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """torchtune's CEWithChunkedOutputLoss: the output projection in LOSS_CHUNKS chunks along the sequence
    (every chunk's logits kept, in the compute dtype), each chunk upcast to fp32 in the cross-entropy."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=tokens).last_hidden_state
    logits = [base.lm_head(chunk) for chunk in hidden[:, :-1].chunk(LOSS_CHUNKS, dim=1)]
    labels = tokens[:, 1:].chunk(LOSS_CHUNKS, dim=1)
    total = sum(
        F.cross_entropy(chunk.float().flatten(0, 1), label.flatten(), reduction="sum")
        for chunk, label in zip(logits, labels, strict=True)
    )
    return total / labels[0].new_tensor(tokens[:, 1:].numel())


def train_steps(setup: Setup, model: Any, optimizer: torch.optim.Optimizer) -> list[int]:
    """Runs setup.steps steps; returns max_memory_allocated after each (cumulative)."""
    vocab = MODELS[setup.model]["vocab_size"]
    scaler = torch.amp.GradScaler(enabled=setup.precision == "fp16-mixed" and torch.cuda.is_available())
    peaks = []
    for _ in range(setup.steps):
        tokens = torch.randint(0, vocab, (setup.micro_batch, setup.sequence), device=_device())
        with _autocast(setup):
            if setup.loss == "chunked":
                loss = chunked_loss(model, tokens)
            else:
                loss = model(input_ids=tokens, labels=tokens).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        del loss, tokens
        peaks.append(torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0)
    return peaks


def _prepare(setup: Setup, scratch: Path) -> tuple[Any, torch.optim.Optimizer, int]:
    model, parameters = build_model(setup, scratch)
    if setup.checkpointing == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, build_optimizer(setup, trainable), parameters


def measure(setup: Setup, scratch: Path) -> dict[str, Any]:
    """One row: the setup, its parameter counts, the peaks, and oom/error."""
    row: dict[str, Any] = {"setup": asdict(setup), "name": setup.name, "oom": False, "error": None}
    release_memory()
    if torch.cuda.is_available():  # what the device holds with no model: context, handles, cached blocks
        row["idle_device_used_bytes"], row["idle_reserved_bytes"] = (
            device_used(),
            torch.cuda.memory_reserved(),
        )
    row["started_unix"], started = time.time(), time.perf_counter()
    try:
        model, optimizer, parameters = _prepare(setup, scratch)
        row["parameters"] = parameters
        row["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        release_memory()  # construction transients (fp32 init, quantisation) are not the training peak
        row["state_allocated_bytes"] = torch.cuda.memory_allocated() if torch.cuda.is_available() else None
        with DevicePeak() as device_peak:
            row["allocated_after_step"] = train_steps(setup, model, optimizer)
    except torch.OutOfMemoryError as error:
        row["oom"], row["error"] = True, str(error).split("\n")[0][:300]
    except (ImportError, RuntimeError, ValueError, TypeError, AttributeError, KeyError) as error:
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
    row.update(allocator_stats())
    if torch.cuda.is_available() and "device_peak" in locals():
        row["device_peak_bytes"] = device_peak.peak
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


# ---------------------------------------------------------------- the run


def environment() -> dict[str, Any]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("transformers", "peft", "bitsandbytes"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    if not torch.cuda.is_available():
        return {"device": "cpu", "versions": versions}
    properties = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    return {
        "device": torch.cuda.get_device_name(0),
        "device_total_bytes": total,
        "used_after_context_bytes": total - free,  # the CUDA context, before any allocation
        "cuda": torch.version.cuda,
        "capability": f"{properties.major}.{properties.minor}",
        "versions": versions,
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
    }


def _summary(row: dict[str, Any]) -> str:
    def gib(key: str) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value / GIB:.2f}"

    status = "OOM" if row["oom"] else (f"ERR {row['error']}" if row["error"] else "ok")
    return (
        f"{row['name']:<72} alloc {gib('max_allocated_bytes'):>6} reserved {gib('max_reserved_bytes'):>6} "
        f"device {gib('device_peak_bytes'):>6} GiB {row['seconds']:>6}s {status}"
    )


def run(grid: list[Setup], out: Path, budget_s: float) -> int:
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(os.environ.get("GRID_SCRATCH", "/tmp/kubefit-gpu-grid"))
    scratch.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        torch.cuda.init()
        torch.zeros(1, device="cuda")  # create the context before reading what it uses
    (out / "environment.json").write_text(json.dumps(environment(), indent=2))
    started = time.monotonic()
    with (out / "gpu_rows.jsonl").open("a") as rows:
        for index, setup in enumerate(grid):
            if time.monotonic() - started > budget_s:
                print(f"budget of {budget_s:.0f}s spent: {len(grid) - index} setups not run", flush=True)
                break
            row = measure(setup, scratch)
            row["setups_before_in_process"] = index
            rows.write(json.dumps(row) + "\n")
            rows.flush()
            os.fsync(rows.fileno())
            print(_summary(row), flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


# ---------------------------------------------------------------- rows for the calibration loader

SOURCE_KEY = "kubefit-gpu-grid"
HOLDOUT_SOURCE_KEY = "kubefit-gpu-holdout"  # --holdout's rows: held-out in benchmarks/data/sizing_split.yaml
PREDICTIONS = Path(__file__).resolve().parent / "data" / "gpu-holdout-predictions.json"
OPTIMIZER_IN_API = {"paged-adamw": "adamw", "paged-adamw-8bit": "adamw-8bit"}


def _architecture(model: str) -> dict[str, int]:
    shape = MODELS[model]
    return {
        "layers": shape["num_hidden_layers"],
        "hiddenSize": shape["hidden_size"],
        "attentionHeads": shape["num_attention_heads"],
        "kvHeads": shape["num_key_value_heads"],
        "intermediateSize": shape["intermediate_size"],
        "vocabSize": shape["vocab_size"],
    }


def _assumed(setup: Setup) -> list[str]:
    notes = []
    if setup.finetuning != "full":
        notes.append(f"peft LoRA r={setup.lora_rank}, dropout {setup.lora_dropout:g}, on "
                     f"{', '.join(setup.lora_targets)} (trainableParameters counted)")  # fmt: skip
    if setup.finetuning == "qlora" and setup.precision == "bf16-true":
        notes.append("QLoRA: nf4 + double quantisation, bf16 compute, unquantised parameters kept in bf16 "
                     "(no prepare_model_for_kbit_training, no autocast)")  # fmt: skip
    elif setup.finetuning == "qlora":
        notes.append("Hugging Face QLoRA recipe: nf4 + double quantisation, bf16 compute, "
                     "prepare_model_for_kbit_training (embeddings, head and norms upcast to fp32)")  # fmt: skip
    if setup.optimizer in OPTIMIZER_IN_API:
        notes.append(f"{setup.optimizer}: bitsandbytes paged states (CUDA managed memory), stated as "
                     f"{OPTIMIZER_IN_API[setup.optimizer]}")  # fmt: skip
    return notes


def _spec(setup: Setup, parameters: int, trainable: int) -> dict[str, Any]:
    """A setup in the TrainingJob API's words (spec.model and spec.training)."""
    model: dict[str, Any] = {"parameters": parameters, "architecture": _architecture(setup.model),
                             "precision": setup.precision,
                             "optimizer": OPTIMIZER_IN_API.get(setup.optimizer, setup.optimizer)}  # fmt: skip
    if setup.finetuning != "full":
        model["finetuning"] = {"method": setup.finetuning, "trainableParameters": trainable}
        if setup.lora_dropout:
            model["finetuning"]["loraDropout"] = setup.lora_dropout
        if tuple(setup.lora_targets) != LORA_TARGETS:
            model["finetuning"]["loraTargets"] = [TARGET_IN_API[target] for target in setup.lora_targets]
    training = {"microBatchSize": setup.micro_batch, "sequenceLength": setup.sequence,
                "activationCheckpointing": setup.checkpointing, "attention": setup.attention,
                "loss": setup.loss}  # fmt: skip
    return {"model": model, "training": training}


def calibration_row(
    number: int, row: dict[str, Any], environment: dict[str, Any], holdout: bool = False
) -> dict[str, Any]:
    """One measured row in the form of benchmarks/data/*rows.yaml, compared as the whole-device peak."""
    setup = Setup(**row["setup"])
    versions = environment["versions"]
    source = (
        f"kubefit benchmarks/gpu_memory_grid.py on {environment['device']} (CUDA {environment['cuda']}, "
        f"torch {versions['torch']}, transformers {versions['transformers']}, peft {versions['peft']}, "
        f"bitsandbytes {versions['bitsandbytes']}); docs/data/gpu-measurements.md"
    )
    label = setup.name + (" (first setup of its process)" if row.get("setups_before_in_process") == 0 else "")
    result: dict[str, Any] = {"id": f"{'H' if holdout else 'G'}{number}", "label": label, "source": source,
                              "sourceKey": HOLDOUT_SOURCE_KEY if holdout else SOURCE_KEY,
                              "device": "nvidia-h200", "layout": {"devicesPerWorker": 1, "workers": 1}}  # fmt: skip
    if row["oom"]:
        result["oom"] = True
    else:
        result["measured"] = f"{row['device_peak_bytes'] / GIB:.3f} GiB"
        result["metric"] = "smi"
    notes = _assumed(setup)
    if row.get("idle_reserved_bytes"):
        notes.append(f"{row['idle_reserved_bytes'] / GIB:.2f} GiB of segments cached by earlier setups of the "
                     "process were reserved at its start (empty_cache could not release them)")  # fmt: skip
    spec = _spec(setup, row["parameters"], row["trainable_parameters"])
    result.update({"fully_specified": True, "assumed": notes, "spec": spec})
    return result


def predictions(grid: list[Setup]) -> list[dict[str, Any]]:
    """The estimator's figures for each setup, from the counted parameters alone (no GPU, no model built):
    what --holdout's run is to be judged against."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import yaml

    import sizing_accuracy as accuracy

    split = yaml.safe_load(accuracy.SPLIT.read_text())
    device = accuracy.load_catalog().get("nvidia-h200")
    assert device is not None, "the built-in catalog names nvidia-h200"
    out = []
    for setup in grid:
        parameters, trainable = parameter_counts(setup)
        raw = {"id": setup.name, "label": setup.name, "source": "prediction", "sourceKey": HOLDOUT_SOURCE_KEY,
               "layout": {"devicesPerWorker": 1, "workers": 1}, "fully_specified": True,
               "spec": _spec(setup, parameters, trainable)}  # fmt: skip
        result = accuracy.evaluate(accuracy._row(raw, device, split))
        out.append({"setup": setup.name, "parameters": parameters, "trainable_parameters": trainable,
                    "device_gib": round(result.estimate.total / GIB, 3),
                    "reserved_gib": round(result.estimate.reserved_peak / GIB, 3),
                    "allocated_gib": round(result.estimate.allocated_peak / GIB, 3),
                    "fits_without_headroom": result.fits_device, "fits_with_headroom": result.fits})  # fmt: skip
    return out


def write_rows_yaml(results: list[Path], target: Path, holdout: bool = False) -> int:
    """Turns runs' gpu_rows.jsonl files (each beside its environment.json) into calibration rows,
    numbered on across the files in the order given."""
    import yaml

    rows: list[dict[str, Any]] = []
    number = 0
    for result in results:
        environment = json.loads((result.parent / "environment.json").read_text())
        measured = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        for row in measured:
            number += 1  # a setup that failed for another reason than memory keeps its number, unused
            if row["oom"] or not row["error"]:
                rows.append(calibration_row(number, row, environment, holdout))
    header = (
        f"# Rows measured by benchmarks/gpu_memory_grid.py (source {HOLDOUT_SOURCE_KEY if holdout else SOURCE_KEY}), "
        "one per setup; the\n"
        "# measured figure is the whole-device peak (total - free, as nvidia-smi shows it). Allocated and\n"
        "# reserved peaks, and how they were read: docs/data/gpu-measurements.md.\n"
    )
    target.write_text(header + yaml.safe_dump({"rows": rows}, sort_keys=False, width=110))
    return 0


def markdown_table(results: list[Path]) -> str:
    """The measured peaks of every setup, in GiB, as docs/data/gpu-measurements.md shows them."""
    lines = [
        "| row | setup | parameters | trainable | allocated | reserved | device | device - reserved | "
        "reserved - allocated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    number = 0
    for result in results:
        for text in result.read_text().splitlines():
            row, number = json.loads(text), number + 1
            if row["error"] and not row["oom"]:
                continue
            alloc, reserved, device = (row[k] / GIB for k in ("max_allocated_bytes", "max_reserved_bytes",
                                                              "device_peak_bytes"))  # fmt: skip
            peaks = "OOM | OOM | OOM | - | -" if row["oom"] else (
                f"{alloc:.2f} | {reserved:.2f} | {device:.2f} | {device - reserved:.3f} | {reserved - alloc:.2f}")  # fmt: skip
            first = " (first in process)" if row.get("setups_before_in_process") == 0 else ""
            lines.append(f"| G{number} | {row['name']}{first} | {row['parameters']:,} | "
                         f"{row['trainable_parameters']:,} | {peaks} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-grid-out")))
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="start no setup after this many seconds"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny models, for a CPU smoke test")
    parser.add_argument("--second", action="store_true", help="the bf16 QLoRA/LoRA grid (second run)")
    parser.add_argument("--dropout", action="store_true", help="the LoRA dropout and targets grid")
    parser.add_argument("--holdout", action="store_true", help="the held-out grid (kubefit-gpu-holdout)")
    parser.add_argument(
        "--predict", action="store_true", help="with --holdout: write the estimator's predictions, no GPU"
    )
    parser.add_argument("--only", default="", help="run only setups whose name contains this text")
    parser.add_argument(
        "--rows-from", type=Path, nargs="*", help="write calibration rows from these gpu_rows.jsonl"
    )
    parser.add_argument("--rows-to", type=Path, default=Path("benchmarks/data/gpu_grid_rows.yaml"))
    parser.add_argument("--table", action="store_true", help="with --rows-from: print the markdown table")
    args = parser.parse_args(argv)
    if args.predict:
        PREDICTIONS.write_text(json.dumps(predictions(holdout_grid()), indent=1) + "\n")
        return 0
    if not args.rows_from and not args.tiny and not torch.cuda.is_available():
        # `make bench` runs every benchmark; without a GPU this one says so and measures nothing.
        print("gpu_memory_grid: no CUDA device here, nothing measured (--tiny runs the CPU smoke test)")
        return 0
    if args.rows_from and args.table:
        print(markdown_table(args.rows_from), end="")
        return 0
    if args.rows_from:
        return write_rows_yaml(args.rows_from, args.rows_to, args.holdout)
    if args.tiny:
        grid = tiny_grid()
    else:
        grid = (second_grid() if args.second else dropout_grid() if args.dropout
                else holdout_grid() if args.holdout else gpu_grid())  # fmt: skip
    grid = [setup for setup in grid if args.only in setup.name]
    sys.setswitchinterval(0.001)  # let the sampling thread in between kernel launches
    return run(grid, args.out, args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
