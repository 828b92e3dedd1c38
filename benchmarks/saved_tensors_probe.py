"""What one decoder layer saves for the backward, tensor by tensor, under LoRA, QLoRA and full training.

Builds the models of benchmarks/gpu_memory_grid.py (randomly initialised, Llama-shaped), runs one forward
pass under the setup's precision with torch.autograd.graph.saved_tensors_hooks, and attributes every tensor
autograd saves to the module running when it was saved (forward pre- and post-hooks keep a stack of module
names). A storage saved twice is counted once, where it was first saved. Parameters, and the 16-bit copies
autocast caches of them, are left out: they are the model's state, not activations. The result, per setup:
the saved bytes of the middle decoder layer by module, with dtype and shape, and the layer's total in bytes
per token and hidden element.

It settles how the estimator should count the inputs of projections a LoRA adapter does not target
(docs/sizing.md, "LoRA and QLoRA"), which the peak-memory grid shows only as differences of whole runs.

    python3 benchmarks/saved_tensors_probe.py --out "$OUT"      # on a CUDA machine (bitsandbytes for QLoRA)
    .venv/bin/python benchmarks/saved_tensors_probe.py --tiny   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_memory_grid as grid  # noqa: E402


def probe_grid(model: str = "medium", sequence: int = 1000) -> list[grid.Setup]:
    """The sequence length is no width of the model, so that a saved tensor with that dimension is an
    activation and one without it a weight (or autocast's cached copy of one)."""
    base = grid.Setup(model, finetuning="lora", micro_batch=1, sequence=sequence, steps=1)
    setups = [replace(base, finetuning="full")]
    combinations = [("lora", "bf16-mixed"), ("qlora", "bf16-mixed"), ("lora", "bf16-true")]
    if model != "medium":  # the first run's model keeps its 19 setups; the others add fp32 adapters
        combinations.append(("lora", "fp32"))
    for finetuning, precision in combinations:
        for targets in (grid.LORA_TARGETS, ("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj")):
            for dropout in (0.0, 0.1):
                setups.append(replace(base, finetuning=finetuning, precision=precision,
                                      lora_targets=targets, lora_dropout=dropout))  # fmt: skip
    return setups


class SavedTensors:
    """Records, per module name, the storages autograd saves while it runs."""

    def __init__(self, model: torch.nn.Module, tokens: tuple[int, int]) -> None:
        self.stack: list[str] = ["<top>"]
        self.seen: set[int] = set()
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.token_dimensions = {tokens[1], tokens[0] * tokens[1]}  # sequence, or batch x sequence
        self.records: list[dict[str, Any]] = []
        self.handles = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._enter(name)))
            self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str) -> Any:
        def hook(*_: Any) -> None:
            self.stack.append(name)

        return hook

    def _leave(self, *_: Any) -> None:
        self.stack.pop()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        weight_like = pointer in self.parameters or self.token_dimensions.isdisjoint(tensor.shape)
        self.records.append({
            "module": self.stack[-1], "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape), "bytes": storage.nbytes(), "first": pointer not in self.seen,
            "weight_like": weight_like,
        })  # fmt: skip
        self.seen.add(pointer)
        return tensor

    @contextmanager
    def hooks(self) -> Iterator[None]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor):
            yield
        for handle in self.handles:
            handle.remove()


def layer_summary(records: list[dict[str, Any]], layer: int, tokens: int, hidden: int) -> dict[str, Any]:
    prefix = f"layers.{layer}."
    mine = [r for r in records if prefix in r["module"] and r["first"] and not r["weight_like"]]
    by_module: dict[str, dict[str, Any]] = {}
    for record in mine:
        module = record["module"].split(prefix, 1)[1]
        entry = by_module.setdefault(module, {"bytes": 0, "tensors": []})
        entry["bytes"] += record["bytes"]
        entry["tensors"].append(f"{record['dtype']}{record['shape']}")
    total = sum(r["bytes"] for r in mine)
    return {"bytes": total, "bytes_per_token_hidden": total / (tokens * hidden), "modules": by_module}


def probe(setup: grid.Setup, scratch: Path) -> dict[str, Any]:
    model, parameters = grid.build_model(setup, scratch)
    model.train()
    recorder = SavedTensors(model, (setup.micro_batch, setup.sequence))
    tokens = torch.randint(0, grid.MODELS[setup.model]["vocab_size"], (setup.micro_batch, setup.sequence),
                           device=grid._device())  # fmt: skip
    with recorder.hooks(), grid._autocast(setup):
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()  # every saved tensor was used: the probe ran what the grid trains
    shape = grid.MODELS[setup.model]
    layer = shape["num_hidden_layers"] // 2
    summary = layer_summary(recorder.records, layer, setup.micro_batch * setup.sequence, shape["hidden_size"])
    del model, loss
    grid.release_memory()
    return {"name": setup.name, "setup": asdict(setup), "parameters": parameters, "layer": layer, **summary}


def layer_bytes_per_token_hidden(setup: grid.Setup) -> float:
    """The estimator's saved bytes of one layer of `setup`, per token and hidden element."""
    from kubefit.api.validation import parse_spec
    from kubefit.sizing.architecture import shape_from_architecture
    from kubefit.sizing.estimator import layer_activation_bytes, layer_run

    template = {"spec": {"containers": [{"name": "trainer", "image": "probe"}]}}
    parameters, trainable = grid.parameter_counts(setup)
    spec = parse_spec({"template": template, **grid._spec(setup, parameters, trainable)})
    shape = shape_from_architecture(spec.model.architecture, parameters)
    tokens = setup.sequence * setup.micro_batch
    return layer_activation_bytes(shape, layer_run(spec)) / (tokens * shape.hidden)


def predictions(setups: list[grid.Setup]) -> list[dict[str, Any]]:
    """The estimator's figures for each setup, as the probe reports them."""
    return [{"name": s.name, "bytes_per_token_hidden": layer_bytes_per_token_hidden(s)} for s in setups]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("saved-tensors-out"))
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (no QLoRA)")
    parser.add_argument("--model", action="append", choices=sorted(grid.MODELS), help="default: medium")
    parser.add_argument(
        "--predict", type=Path, help="write the estimator's figures for the setups here, no GPU"
    )
    args = parser.parse_args(argv)
    models = args.model or ["medium"]
    setups = probe_grid("tiny", 50) if args.tiny else [s for m in models for s in probe_grid(m)]
    if args.predict:
        args.predict.write_text(json.dumps(predictions(setups), indent=1) + "\n")
        return 0
    if not args.tiny and not torch.cuda.is_available():
        # `make bench` runs every benchmark; without a GPU this one says so and measures nothing.
        print("saved_tensors_probe: no CUDA device here, nothing measured (--tiny runs the CPU smoke test)")
        return 0
    if args.tiny:
        setups = [setup for setup in setups if setup.finetuning != "qlora"]
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path("/tmp/kubefit-saved-tensors")
    results = []
    for setup in setups:
        result = probe(setup, scratch)
        results.append(result)
        print(f"{result['name']:<90} {result['bytes_per_token_hidden']:6.2f} B/(token x hidden)", flush=True)
    (args.out / "saved_tensors.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
