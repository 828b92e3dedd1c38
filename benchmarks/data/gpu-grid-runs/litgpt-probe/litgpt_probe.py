"""Peak memory of litgpt 0.4.6's LoRA/QLoRA fine-tuning loop (litgpt/finetune/lora.py) on random weights.

Loads litgpt's model and LoRA modules without its package __init__ (which needs Lightning), quantises every
nn.Linear to bitsandbytes nf4 as Lightning's BitsandbytesPrecision("nf4") does for --quantize bnb.nf4, and
runs lora.py's step: model(x, lm_head_chunk_size=128), the last chunk sliced, chunked_cross_entropy,
backward, an optimizer step every `accumulate` iterations (PagedAdamW under quantisation, else AdamW),
then validate()'s forward with the training logits still referenced.

Needs, beside this file, pylib/ holding litgpt 0.4.6's wheel (PyPI) unpacked and bitsandbytes' Python files
with its libbitsandbytes_cuda130.so; run on the device as `python3 litgpt_probe.py OUT.json`. Each setup
runs after the previous one in the same process, so `setup_alloc` may include what an earlier setup's
PagedAdamW left referenced; the peaks minus `setup_alloc` are each setup's own training-step memory.
Results: litgpt_probe.json beside this file; read in docs/data/gpu-measurements.md.
"""

from __future__ import annotations

import ast
import importlib
import json
import sys
import time
import types
from pathlib import Path

import torch

PYLIB = Path(__file__).resolve().parent / "pylib"
sys.path.insert(0, str(PYLIB))
_pkg = types.ModuleType("litgpt")
_pkg.__path__ = [str(PYLIB / "litgpt")]
sys.modules["litgpt"] = _pkg
_utils = types.ModuleType("litgpt.utils")
_tree = ast.parse((PYLIB / "litgpt" / "utils.py").read_text())
_keep = [
    n
    for n in _tree.body
    if isinstance(n, ast.FunctionDef)
    and n.name in {"find_multiple", "map_old_state_dict_weights", "chunked_cross_entropy"}
]
exec("import torch\nfrom typing import *\n", _utils.__dict__)
exec(compile(ast.Module(body=_keep, type_ignores=[]), "litgpt/utils.py", "exec"), _utils.__dict__)
sys.modules["litgpt.utils"] = _utils
_pkg.utils = _utils
importlib.import_module("litgpt.model")  # before litgpt.config, as litgpt/__init__.py imports them
lora = importlib.import_module("litgpt.lora")

GIB = 2**30
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def quantise(model: torch.nn.Module) -> None:
    import bitsandbytes as bnb

    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                new = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=False,
                    compute_dtype=torch.bfloat16,
                    quant_type="nf4",
                    device="meta",
                )
                weight = bnb.nn.Params4bit(
                    child.weight.data,
                    requires_grad=False,
                    quant_type="nf4",
                    compress_statistics=False,
                    module=new,
                )
                new.weight = weight._quantize(DEV)
                assert child.bias is None
                setattr(module, child_name, new)
                del child


def _optimizer(case: dict, trainable: list) -> torch.optim.Optimizer:
    """lora.py: bitsandbytes PagedAdamW under quantisation, else torch AdamW (the configs' betas)."""
    if case["quantize"]:
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW(trainable, lr=2e-4, weight_decay=0.0, betas=(0.9, 0.95))
    return torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.0, betas=(0.9, 0.95))


def run(case: dict) -> dict:
    torch.manual_seed(0)
    overrides = dict(case.get("config", {}))
    config = lora.Config.from_name(case["name"], **case["lora"], **overrides)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(DEV):
        model = lora.GPT(config)
    torch.set_default_dtype(torch.float32)
    if case["quantize"]:
        quantise(model)
    lora.mark_only_lora_as_trainable(model)
    batch, seq = case["batch"], case["seq"]
    model.max_seq_length = seq
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(case, trainable)
    out = {
        "label": case["label"],
        "trainable": sum(p.numel() for p in trainable),
        "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad),
    }
    if DEV.type == "cuda":
        torch.cuda.synchronize()
        out["setup_alloc"] = torch.cuda.memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()
    phases: dict[str, float] = {}
    logits = None
    for iteration in range(1, 2 * case["accumulate"] + 1):
        x = torch.randint(0, config.vocab_size, (batch, seq), device=DEV)
        targets = torch.randint(0, config.vocab_size, (batch, seq), device=DEV)
        _phase_start()
        logits = model(x, lm_head_chunk_size=128)
        logits[-1] = logits[-1][..., :-1, :]
        loss = _utils.chunked_cross_entropy(logits, targets[..., 1:])
        _phase_end(phases, "forward+loss")
        (loss / case["accumulate"]).backward()
        _phase_end(phases, "backward")
        if iteration % case["accumulate"] == 0:
            optimizer.step()
            optimizer.zero_grad()
            _phase_end(phases, "step")
    with torch.no_grad():  # validate(): full logits, no chunking, training `logits` still referenced
        model.eval()
        x = torch.randint(0, config.vocab_size, (batch, seq), device=DEV)
        val = model(x)
        _utils.chunked_cross_entropy(val[..., :-1, :], x[..., 1:], chunk_size=0)
        del val
        model.train()
    _phase_end(phases, "validate")
    out.update({f"peak_{k}": v for k, v in phases.items()})
    if DEV.type == "cuda":
        out["max_alloc"] = torch.cuda.max_memory_allocated() / GIB
        out["max_reserved"] = torch.cuda.max_memory_reserved() / GIB
    del model, optimizer, logits
    return out


def _phase_start() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def _phase_end(phases: dict[str, float], name: str) -> None:
    if DEV.type != "cuda":
        phases[name] = 0.0
        return
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / GIB
    phases[name] = max(phases.get(name, 0.0), peak)
    torch.cuda.reset_peak_memory_stats()


ALL = {
    "lora_query": True,
    "lora_key": True,
    "lora_value": True,
    "lora_projection": True,
    "lora_mlp": True,
    "lora_head": True,
}
QV = {"lora_query": True, "lora_value": True}
CASES = [
    dict(
        label="201 gemma-2b LoRA r8 all+head bs2 s512",
        name="Gemma-2b",
        quantize=False,
        batch=2,
        seq=512,
        accumulate=3,
        lora=dict(lora_r=8, lora_alpha=16, lora_dropout=0.1, **ALL),
    ),
    dict(
        label="202 gemma-2b QLoRA r16 all+head bs2 s512",
        name="Gemma-2b",
        quantize=True,
        batch=2,
        seq=512,
        accumulate=3,
        lora=dict(lora_r=16, lora_alpha=16, lora_dropout=0.1, **ALL),
    ),
    dict(
        label="209 Llama-3-8B QLoRA r32 q,v bs2 s512",
        name="Llama-3-8B",
        quantize=True,
        batch=2,
        seq=512,
        accumulate=4,
        lora=dict(lora_r=32, lora_alpha=16, lora_dropout=0.05, **QV),
    ),
    dict(
        label="208 Llama-3-8B LoRA r32 q,v bs1 s512",
        name="Llama-3-8B",
        quantize=False,
        batch=1,
        seq=512,
        accumulate=8,
        lora=dict(lora_r=32, lora_alpha=16, lora_dropout=0.05, **QV),
    ),
    dict(
        label="71 Llama-2-7b QLoRA r8 q,v bs1 s1304",
        name="Llama-2-7b-hf",
        quantize=True,
        batch=1,
        seq=1304,
        accumulate=2,
        lora=dict(lora_r=8, lora_alpha=16, lora_dropout=0.05, **QV),
    ),
    dict(
        label="70 Llama-2-7b LoRA r8 q,v bs1 s1304",
        name="Llama-2-7b-hf",
        quantize=False,
        batch=1,
        seq=1304,
        accumulate=2,
        lora=dict(lora_r=8, lora_alpha=16, lora_dropout=0.05, **QV),
    ),
    dict(
        label="204 gemma-7b QLoRA r16 all+head bs1 s512",
        name="Gemma-7b",
        quantize=True,
        batch=1,
        seq=512,
        accumulate=3,
        lora=dict(lora_r=16, lora_alpha=16, lora_dropout=0.1, **ALL),
    ),
    dict(
        label="206 gemma-2-9b QLoRA r16 all+head bs1 s512",
        name="Gemma-2-9b",
        quantize=True,
        batch=1,
        seq=512,
        accumulate=3,
        lora=dict(lora_r=16, lora_alpha=16, lora_dropout=0.1, **ALL),
    ),
    dict(
        label="202-nodrop gemma-2b QLoRA r16 all+head dropout 0",
        name="Gemma-2b",
        quantize=True,
        batch=2,
        seq=512,
        accumulate=3,
        lora=dict(lora_r=16, lora_alpha=16, lora_dropout=0.0, **ALL),
    ),
    dict(
        label="71-nodrop Llama-2-7b QLoRA r8 q,v dropout 0",
        name="Llama-2-7b-hf",
        quantize=True,
        batch=1,
        seq=1304,
        accumulate=2,
        lora=dict(lora_r=8, lora_alpha=16, lora_dropout=0.0, **QV),
    ),
]


def main() -> None:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    tiny = DEV.type != "cuda"
    results: list = []
    if not tiny:
        import bitsandbytes

        results.append(
            {
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "gpu": torch.cuda.get_device_name(),
                "bitsandbytes": bitsandbytes.__version__,
                "litgpt": "0.4.6",
            }
        )
        print(json.dumps(results[0]), flush=True)
    for case in CASES:
        if tiny:
            if case["quantize"]:
                continue
            case = dict(
                case,
                config=dict(
                    n_layer=1,
                    n_embd=64,
                    n_head=4,
                    n_query_groups=1,
                    head_size=16,
                    intermediate_size=128,
                    padded_vocab_size=512,
                    vocab_size=512,
                ),
                seq=64,
            )
        started = time.time()
        try:
            result = run(case)
        except Exception as error:  # record and go on: one setup's failure must not lose the others
            result = {"label": case["label"], "error": f"{type(error).__name__}: {error}"}
        result["seconds"] = round(time.time() - started, 1)
        print(json.dumps(result), flush=True)
        results.append(result)
        if DEV.type == "cuda":
            torch.cuda.empty_cache()
        if out_path:
            out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
