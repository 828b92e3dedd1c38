"""What the operator's /metrics costs with 500 TrainingJobs: scrape time and series count (issue 9).

500 jobs (inputs fixed by a seed) go through the reconciles a real job goes through, each one a real
`decide` whose observation and decision are handed to `OperatorMetrics.observe_job`, as the reconciler
does: queued, then admitted, then its workers Pending, then Running (a job stops at the stage drawn for
it). They mix four accelerators, 2-8 devices per worker, 1-8 workers, elastic or not, and models of
350M-3B parameters (some do not fit). kubefit_cluster_accelerators is computed at each scrape from 250 eight-device
nodes with the scheduler's own `accelerator_totals`, and the scheduling counters get one scale event or
preemption per ten jobs. The registry is served over HTTP by `serve_metrics` (as `kubefit run` does) and
scraped with urllib; each scrape is timed on its own after one warm-up scrape.

Usage: .venv/bin/python benchmarks/metrics_scrape.py [--jobs N] [--scrapes N] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubefit.builders.naming import JobRef
from kubefit.controller.scheduler import accelerator_totals
from kubefit.decisions.inventory import EMPTY_INVENTORY, NodeFacts, PodUsage
from kubefit.decisions.job import JobObservation, decide
from kubefit.decisions.observed import WorkerPod
from kubefit.metrics import AcceleratorCount, OperatorMetrics, serve_metrics
from kubefit.sizing.catalog import Catalog, load_catalog

KINDS = ("nvidia-h100-80gb", "nvidia-a100-80gb", "nvidia-l40s", "nvidia-h200")
STAGES = ("queued", "admitted", "pending", "running")
CREATED = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class BenchJob:
    name: str
    spec: dict[str, Any]
    workers: int
    stage: str
    status: Mapping[str, Any]


def draw_job(index: int, rng: random.Random) -> BenchJob:
    workers = rng.randint(1, 8)
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:latest"}]}},
        "model": {"parameters": rng.choice(["350M", "1B", "1B", "3B"])},
        "resources": {"accelerator": rng.choice(KINDS), "acceleratorsPerWorker": rng.choice([2, 4, 8])},
        "workers": {"replicas": workers},
    }
    if rng.random() < 0.5:
        spec["elastic"] = {"enabled": True}
        spec["workers"].update(minReplicas=1, maxReplicas=workers + 2)
    stage = rng.choices(STAGES, weights=(2, 1, 2, 5))[0]
    return BenchJob(f"job-{index:04}", spec, workers, stage, {})


def pods(job: BenchJob, phase: str) -> list[WorkerPod]:
    return [
        WorkerPod(f"{job.name}-worker-{i}", i, f"{job.name}-{i}", phase, f"node-{i}", controller_uid=job.name)
        for i in range(job.workers)
    ]


def reconcile(metrics: OperatorMetrics, catalog: Catalog, job: BenchJob, step: int) -> float:
    """One reconcile of `job` at its `step` (0 queued, 1 admitted, 2 pods Pending, 3 Running); returns
    the seconds observe_job took."""
    worker_pods = pods(job, "Pending" if step == 2 else "Running") if step >= 2 else []
    observation = JobObservation(
        JobRef(job.name, "bench", job.name),
        1,
        job.spec,
        job.status,
        worker_pods,
        EMPTY_INVENTORY,
        CREATED + timedelta(seconds=30 * (step + 1)),
        grant=job.workers if step >= 1 else None,
        created=CREATED,
    )
    decision = decide(observation, catalog)
    started = time.perf_counter()
    metrics.observe_job(observation, decision)
    took = time.perf_counter() - started
    job.status = decision.status.model_dump(by_alias=True, exclude_none=True)
    return took


def cluster(catalog: Catalog, jobs: list[BenchJob]) -> tuple[list[NodeFacts], dict[str, list[PodUsage]]]:
    nodes = []
    for index in range(250):
        accelerator = catalog.get(KINDS[index % len(KINDS)])
        labels = dict(accelerator.node_labels)
        nodes.append(NodeFacts(f"node-{index:03}", labels, {accelerator.resource_name: "8"}))
    usage: dict[str, list[PodUsage]] = {}
    for number, job in enumerate(jobs):
        if job.stage != "running":
            continue
        per_worker = int(job.spec["resources"]["acceleratorsPerWorker"])
        for worker in range(job.workers):
            node = nodes[(number * 7 + worker) % len(nodes)].name
            usage.setdefault(node, []).append(
                PodUsage(node, {"nvidia.com/gpu": per_worker}, ("bench", job.name))
            )
    return nodes, usage


def scrape(url: str) -> tuple[float, str]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return time.perf_counter() - started, text


def series_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=21)
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    catalog = load_catalog()
    metrics = OperatorMetrics(process_metrics=True)
    jobs = [draw_job(index, rng) for index in range(args.jobs)]
    observe_times = [
        reconcile(metrics, catalog, job, step) for job in jobs for step in range(STAGES.index(job.stage) + 1)
    ]
    metrics.count_scale_events([("up", "ScaledUp"), ("down", "ShrunkForPriority")] * (args.jobs // 20))
    metrics.count_preemptions(["HigherPriority"] * (args.jobs // 50))
    nodes, usage = cluster(catalog, jobs)
    totals: dict[str, AcceleratorCount] = accelerator_totals(nodes, usage, catalog)
    metrics.watch_cluster(lambda: accelerator_totals(nodes, usage, catalog))
    port = serve_metrics(metrics, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/metrics"
    scrape(url)  # warm-up
    timed = [scrape(url) for _ in range(args.scrapes)]
    times = sorted(seconds for seconds, _ in timed)
    text = timed[-1][1]
    report(args, jobs, text, times, observe_times, totals)


def report(
    args: argparse.Namespace,
    jobs: list[BenchJob],
    text: str,
    times: list[float],
    observe_times: list[float],
    totals: Mapping[str, AcceleratorCount],
) -> None:
    lines = series_lines(text)
    per_job = Counter(line.split('name="', 1)[1].split('"', 1)[0] for line in lines if 'name="' in line)
    phases = Counter(
        line.split('phase="', 1)[1].split('"', 1)[0] for line in lines if "trainingjob_info{" in line
    )
    machine = f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    print(f"machine: {machine}")
    print(f"jobs: {len(jobs)} ({', '.join(f'{count} {phase}' for phase, count in sorted(phases.items()))})")
    print(f"cluster: {sum(count.allocatable for count in totals.values())} accelerators on 250 nodes")
    print(
        f"observe_job: {len(observe_times)} calls, median {statistics.median(observe_times) * 1e6:.0f} us, "
        f"max {max(observe_times) * 1e3:.2f} ms"
    )
    print(
        f"series: {len(lines)} in all ({len(text) / 1024:.0f} KiB), of which {sum(per_job.values())} per job"
    )
    print(
        f"per job: median {statistics.median(per_job.values()):.0f}, "
        f"min {min(per_job.values())}, max {max(per_job.values())} series"
    )
    print(
        f"scrape over HTTP ({len(times)} scrapes): median {statistics.median(times) * 1e3:.1f} ms "
        f"(min {times[0] * 1e3:.1f}, max {times[-1] * 1e3:.1f})"
    )


if __name__ == "__main__":
    main()
