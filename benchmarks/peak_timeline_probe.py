"""Where in a training step the peak happens: allocated and reserved memory at each phase of one step.

Builds the models of benchmarks/gpu_memory_grid.py and trains two steps per setup; on the second (the
optimizer's state exists, as in every later step) it reads torch.cuda.memory_allocated/reserved at the
step's start, after the forward, after the backward and after the optimizer step, and the allocator's peak
within the backward and within the optimizer step (max_memory_allocated, reset before each). Beside them:
the bytes of parameters, of gradients after the backward and of optimizer state. The estimator counts the
gradients at the start of the backward, as if they already existed (docs/sizing.md, Known limits); this
shows what the step really holds where, for the setups the estimator over-estimates most.

    python3 benchmarks/peak_timeline_probe.py --out "$OUT"    # on a CUDA machine (bitsandbytes for 8-bit)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_memory_grid as grid  # noqa: E402

GIB = 2**30


def timeline_grid() -> list[grid.Setup]:
    medium = grid.Setup("medium", micro_batch=4, sequence=2048, steps=2)
    setups = [
        replace(medium, optimizer=optimizer, checkpointing=checkpointing)
        for optimizer in ("adamw", "sgd-momentum", "adafactor", "adamw-8bit")
        for checkpointing in ("none", "full")
    ]
    setups.append(replace(medium, precision="bf16-true", checkpointing="full"))
    setups.append(grid.Setup("bigvocab", micro_batch=2, sequence=2048, checkpointing="full", steps=2))
    return setups


def _bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(_bytes(state.values()) for state in optimizer.state.values())


def _loss(setup: grid.Setup, model: Any, tokens: torch.Tensor) -> torch.Tensor:
    with grid._autocast(setup):
        if setup.loss == "chunked":
            return grid.chunked_loss(model, tokens)
        return model(input_ids=tokens, labels=tokens).loss


def _phase(marks: dict[str, int], name: str) -> None:
    """The phase's allocated and reserved peaks and what is allocated at its end; peaks reset after."""
    marks[f"{name}_peak"] = torch.cuda.max_memory_allocated()
    marks[f"{name}_reserved_peak"] = torch.cuda.max_memory_reserved()
    marks[f"after_{name}"] = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()


def timeline(setup: grid.Setup, scratch: Path) -> dict[str, Any]:
    model, optimizer, parameters = grid._prepare(setup, scratch)
    vocab = grid.MODELS[setup.model]["vocab_size"]
    marks: dict[str, int] = {}
    cuda = torch.cuda
    for step in range(setup.steps):
        last = step == setup.steps - 1
        tokens = torch.randint(0, vocab, (setup.micro_batch, setup.sequence), device=grid._device())
        if last:
            marks["start"] = cuda.memory_allocated()
            cuda.reset_peak_memory_stats()
        loss = _loss(setup, model, tokens)
        if last:
            _phase(marks, "forward")
        loss.backward()
        if last:
            _phase(marks, "backward")
            marks["gradients"] = _bytes(p.grad for p in model.parameters() if p.grad is not None)
        optimizer.step()
        if last:
            _phase(marks, "step")
        optimizer.zero_grad(set_to_none=True)
        del loss, tokens
    marks["parameters_bytes"] = _bytes(model.parameters())
    marks["optimizer_state"] = _state_bytes(optimizer)
    del model, optimizer
    grid.release_memory()
    return {"name": setup.name, "setup": asdict(setup), "parameters": parameters,
            "gib": {key: round(value / GIB, 3) for key, value in marks.items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("peak-timeline-out"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        # `make bench` runs every benchmark; without a GPU this one says so and measures nothing.
        print("peak_timeline_probe: no CUDA device here, nothing measured")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path("/tmp/kubefit-peak-timeline")
    results = []
    for setup in timeline_grid():
        try:
            result = timeline(setup, scratch)
        except torch.cuda.OutOfMemoryError as error:  # recorded, not fatal: the next setup starts clean
            result = {"name": setup.name, "error": str(error)[:200]}
            grid.release_memory()
        results.append(result)
        print(json.dumps(result), flush=True)
    (args.out / "peak_timeline.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
