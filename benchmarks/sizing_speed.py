"""How fast sizing is: one estimate, one plan (fixed and auto), a plan against 1,000 nodes, `kubefit size`.

Prints figures with a baseline measured in the same run:
- per-call times use the median of repeated timeit runs (min is also shown), in microseconds;
- the 1,000-node plan is compared with the same plan without an inventory (the cost of the inventory);
- `kubefit size` wall time is compared with an empty `python -c pass` and with `python -c "import
  pydantic, yaml"` (the floor any pydantic-based CLI pays).

Usage: .venv/bin/python benchmarks/sizing_speed.py [--repeat N]
Targets (issue #3): a fixed-layout plan well under 1 ms; a plan against 1,000 nodes under 50 ms;
`kubefit size` answers in under 1 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import yaml

from kubefit.api.validation import parse_spec
from kubefit.sizing.catalog import load_catalog
from kubefit.sizing.estimator import Layout, estimate
from kubefit.sizing.planner import NodeInventory, plan
from kubefit.sizing.suggest import suggest

TEMPLATE = {"spec": {"containers": [{"name": "trainer", "image": "example/train:1"}]}}
LLAMA3_8B = {  # meta-llama/Meta-Llama-3-8B config.json
    "parameters": "8.03B",
    "architecture": {
        "layers": 32,
        "hiddenSize": 4096,
        "attentionHeads": 32,
        "kvHeads": 8,
        "intermediateSize": 14336,
        "vocabSize": 128256,
    },
}
TRAINING = {"sharding": "fsdp", "activationCheckpointing": "full", "sequenceLength": 4096}
FIXED = parse_spec(
    {
        "template": TEMPLATE,
        "model": LLAMA3_8B,
        "training": TRAINING,
        "resources": {"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 8},
        "workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 2},
    }
)
AUTO = parse_spec({"template": TEMPLATE, "model": LLAMA3_8B, "training": TRAINING})
NOT_FITTING = parse_spec(
    {
        "template": TEMPLATE,
        "model": LLAMA3_8B,
        "training": {"microBatchSize": 4, "sequenceLength": 4096},
        "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
    }
)
CLUSTER_KINDS = ["nvidia-a100-80gb", "nvidia-h100-80gb", "nvidia-l40s", "nvidia-l4", "nvidia-a10g"]


def per_call_us(function: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, min) microseconds per call over `repeat` timeit runs, auto-ranged loop counts."""
    timer = timeit.Timer(function)
    loops, _ = timer.autorange()
    runs = [elapsed / loops * 1e6 for elapsed in timer.repeat(repeat=repeat, number=loops)]
    return statistics.median(runs), min(runs)


def wall_s(command: list[str], runs: int, stdin: str | None = None) -> tuple[float, float]:
    """(median, min) wall seconds of a subprocess, after one warm-up run."""
    times = []
    for index in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(command, input=stdin, capture_output=True, text=True, check=True)
        if index:  # the first run warms the page cache and .pyc files
            times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def inventory(nodes: int) -> list[NodeInventory]:
    return [
        NodeInventory(f"node-{index}", CLUSTER_KINDS[index % len(CLUSTER_KINDS)], 8, index % 9)
        for index in range(nodes)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7, help="timeit repeats / subprocess runs")
    args = parser.parse_args()

    catalog = load_catalog()
    a100 = catalog.get("nvidia-a100-40gb")
    assert a100 is not None
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"catalog: {len(catalog)} accelerators; job: Llama-3-8B FSDP, full recompute, 4096 tokens\n")

    rows: list[tuple[str, str, str]] = []

    def row(name: str, median: float, best: float, unit: str, note: str = "") -> None:
        rows.append((name, f"{median:10.1f} {unit} (min {best:.1f})", note))

    est = per_call_us(lambda: estimate(FIXED, a100, Layout(8, 2)), args.repeat)
    row("estimate, one layout", *est, "us")
    fixed = per_call_us(lambda: plan(FIXED, catalog), args.repeat)
    row("plan, fixed layout", *fixed, "us", f"= {fixed[0] / est[0]:.1f} estimates")
    auto = per_call_us(lambda: plan(AUTO, catalog), args.repeat)
    row("plan, auto (whole catalog)", *auto, "us", f"= {auto[0] / est[0]:.1f} estimates")
    failing = per_call_us(lambda: plan(NOT_FITTING, catalog), args.repeat)
    row("plan, nothing fits (+remedies)", *failing, "us", f"= {failing[0] / est[0]:.1f} estimates")
    suggestions = per_call_us(lambda: suggest(FIXED, catalog), max(3, args.repeat // 2))
    row("suggest, fixed layout", *suggestions, "us", f"= {suggestions[0] / est[0]:.1f} estimates")

    cluster = inventory(1000)
    without = per_call_us(lambda: plan(AUTO, catalog), args.repeat)
    with_nodes = per_call_us(lambda: plan(AUTO, catalog, cluster), args.repeat)
    rows.append(
        (
            "plan, auto, 1,000 nodes",
            f"{with_nodes[0] / 1000:10.2f} ms (min {with_nodes[1] / 1000:.2f})",
            f"vs {without[0] / 1000:.2f} ms without inventory; target < 50 ms",
        )
    )
    big_cluster = inventory(10_000)
    ten_thousand = per_call_us(lambda: plan(AUTO, catalog, big_cluster), max(3, args.repeat // 2))
    rows.append(
        (
            "plan, auto, 10,000 nodes",
            f"{ten_thousand[0] / 1000:10.2f} ms (min {ten_thousand[1] / 1000:.2f})",
            "grouping is one pass over the nodes",
        )
    )

    with tempfile.TemporaryDirectory() as folder:
        job = Path(folder) / "job.yaml"
        job.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubefit.dev/v1alpha1",
                    "kind": "TrainingJob",
                    "metadata": {"name": "bench"},
                    "spec": FIXED.model_dump(by_alias=True, exclude_none=True),
                }
            )
        )
        empty = wall_s([sys.executable, "-c", "pass"], args.repeat)
        floor = wall_s([sys.executable, "-c", "import pydantic, yaml"], args.repeat)
        size = wall_s(
            [sys.executable, "-m", "kubefit.cli.main", "size", "-f", str(job), "-o", "json"], args.repeat
        )
        with_suggest = wall_s(
            [sys.executable, "-m", "kubefit.cli.main", "size", "-f", str(job), "--suggest"], args.repeat
        )
    rows.append(("python -c pass", f"{empty[0] * 1000:10.1f} ms (min {empty[1] * 1000:.1f})", "baseline"))
    rows.append(
        (
            "python -c 'import pydantic, yaml'",
            f"{floor[0] * 1000:10.1f} ms (min {floor[1] * 1000:.1f})",
            "floor",
        )
    )
    rows.append(
        (
            "kubefit size -o json",
            f"{size[0] * 1000:10.1f} ms (min {size[1] * 1000:.1f})",
            f"{size[0] / empty[0]:.1f}x python -c pass; target < 1 s",
        )
    )
    rows.append(
        (
            "kubefit size --suggest",
            f"{with_suggest[0] * 1000:10.1f} ms (min {with_suggest[1] * 1000:.1f})",
            f"{with_suggest[0] / empty[0]:.1f}x python -c pass",
        )
    )

    width = max(len(name) for name, _, _ in rows)
    for name, figure, note in rows:
        print(f"{name:<{width}}  {figure}  {note}")


if __name__ == "__main__":
    main()
