"""How long one admission pass takes: 500 queued jobs, 1,000 nodes (issue #8: target under 50 ms).

The cluster mixes five accelerators (8-device nodes, every tenth one 4-device, some devices held by other
workloads). Two scenarios, inputs fixed by a seed:
- mixed: admitted jobs (priority 0-2) hold about 70% of the devices, one in ten with a worker not bound
  yet (the pass reserves it); 500 queued jobs ask for workers of 1, 2, 4 or 8 devices, elastic or not,
  priorities 0-3, preemption on one in five: the pass admits, grows, shrinks, preempts and explains;
- contended: 95% held and every queued job outranks every admitted one, so each queued job that does not
  fit tries shrinking and preempting (the costly path);
- burst: 50 new jobs that all fit beside the mixed scenario's admitted jobs, every one of those settled
  (granted its target, every worker bound): what a pass meets while jobs arrive on a running cluster.
Each pass is timed on its own with perf_counter, after one warm-up pass, twice: the pass as the operator
runs it (`plan_admissions`, which plans only the jobs that are not settled when that leaves nobody waiting,
shrunk or preempted) and the pass over every job (`admission._plan`), the baseline; in the first two
scenarios jobs wait, so the pass plans everyone and the difference is what trying the shortcut costs.

Usage: .venv/bin/python benchmarks/admission_speed.py [--passes N] [--queued N] [--nodes N]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from kubefit.decisions import admission
from kubefit.decisions.admission import AdmissionPlan, Demand, Holding, NodeCapacity, plan_admissions

KINDS = ("nvidia-a100-80gb", "nvidia-h100-80gb", "nvidia-l40s", "nvidia-l4", "nvidia-a10g")
TARGET_MS = 50.0
NOW = 1_000_000.0


def cluster(count: int, rng: random.Random) -> list[NodeCapacity]:
    nodes = []
    for index in range(count):
        devices = 4 if index % 10 == 9 else 8
        nodes.append(
            NodeCapacity(f"node-{index:04}", KINDS[index % len(KINDS)], devices, rng.choice([0, 0, 0, 1]))
        )
    return nodes


def demand(name: str, rng: random.Random, priorities: tuple[int, int] = (0, 3)) -> Demand:
    per_worker = rng.choice([1, 2, 4, 8])
    elastic = rng.random() < 0.6
    minimum = rng.randint(1, 4)
    want = rng.randint(minimum, minimum + 4) if elastic else minimum
    return Demand(
        key=("bench", name),
        priority=rng.randint(*priorities),
        created=NOW - rng.uniform(0, 3600),
        accelerator=rng.choice(KINDS),
        per_worker=per_worker,
        min_workers=minimum,
        want_workers=want,
        elastic=elastic,
        preemption="LowerPriority" if rng.random() < 0.2 else "Never",
    )


def holdings(nodes: list[NodeCapacity], share: float, rng: random.Random) -> list[Holding]:
    """Admitted jobs (priority 0-2) packed onto the nodes until `share` of the devices are held."""
    free = {node.name: node.allocatable - node.used_by_others for node in nodes}
    by_kind = {kind: [node.name for node in nodes if node.accelerator == kind] for kind in KINDS}
    budget = int(share * sum(free.values()))
    result = []
    for index in range(len(nodes)):
        if budget <= 0:
            break
        wants = demand(f"admitted-{index}", rng, (0, 2))
        placed: dict[str, int] = {}
        granted = 0
        for node in rng.sample(by_kind[wants.accelerator], 8):
            while granted < wants.want_workers and free[node] >= wants.per_worker and budget > 0:
                free[node] -= wants.per_worker
                budget -= wants.per_worker
                placed[node] = placed.get(node, 0) + 1
                granted += 1
        if granted >= wants.min_workers:
            unbound = (
                1 if rng.random() < 0.1 and granted < wants.want_workers else 0
            )  # created, not bound yet
            result.append(Holding(wants, granted + unbound, placed))
    return result


def timed_pass(
    planner: Callable[..., AdmissionPlan],
    passes: int,
    queued: list[Demand],
    admitted: list[Holding],
    nodes: list[NodeCapacity],
) -> tuple[AdmissionPlan, list[float]]:
    times = []
    for _ in range(passes + 1):
        start = time.perf_counter()
        result = planner(queued, admitted, nodes, "BestEffortFIFO", NOW, 300.0)
        times.append((time.perf_counter() - start) * 1000)
    return result, times[1:]  # the first pass warms caches


def timed(
    scenario: str, passes: int, queued: list[Demand], admitted: list[Holding], nodes: list[NodeCapacity]
) -> None:
    result, times = timed_pass(plan_admissions, passes, queued, admitted, nodes)
    full, full_times = timed_pass(admission._plan, passes, queued, admitted, nodes)
    assert result == full, "the shortcut must give the full pass's plan"
    print(
        f"{scenario}: {len(queued)} queued, {len(admitted)} admitted, {len(nodes)} nodes -> "
        f"admitted now {len(result.admitted_now)}, shrunk {len(result.shrink)}, "
        f"preempted {len(result.preempt)}, waiting {len(result.waiting)}"
    )
    for label, values in (("the pass", times), ("baseline, every job planned", full_times)):
        median = statistics.median(values)
        p95 = statistics.quantiles(values, n=20)[-1]
        print(
            f"  {label:<28} over {passes} runs: median {median:.1f} ms, p95 {p95:.1f} ms, "
            f"min {min(values):.1f} ms; median / target {TARGET_MS:.0f} ms = {median / TARGET_MS:.2f}"
        )
    print(f"  the pass / baseline (medians): {statistics.median(times) / statistics.median(full_times):.2f}")


def settled(holdings: list[Holding]) -> list[Holding]:
    """The holdings as a running cluster has them: granted what is bound, and wanting no more."""
    result = []
    for holding in holdings:
        bound = sum(holding.placed.values())
        if bound >= holding.demand.min_workers:
            wants = replace(holding.demand, want_workers=bound)
            result.append(Holding(wants, bound, holding.placed))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passes", type=int, default=40)
    parser.add_argument("--queued", type=int, default=500)
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")

    rng = random.Random(8)
    nodes = cluster(args.nodes, rng)
    mixed = [demand(f"queued-{index}", rng) for index in range(args.queued)]
    timed("mixed (70% held, priorities 0-3)", args.passes, mixed, holdings(nodes, 0.7, rng), nodes)
    urgent = [demand(f"urgent-{index}", rng, (3, 3)) for index in range(args.queued)]
    timed("contended (95% held, all queued outrank)", args.passes, urgent, holdings(nodes, 0.95, rng), nodes)
    running = settled(holdings(nodes, 0.7, random.Random(8)))
    burst = [replace(demand(f"new-{index}", rng, (0, 0)), per_worker=1, min_workers=1) for index in range(50)]
    timed("burst (50 new jobs beside settled ones)", args.passes, burst, running, nodes)


if __name__ == "__main__":
    main()
