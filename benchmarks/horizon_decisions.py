"""The next horizon in-process: 5,000 GPU nodes and 2,000 TrainingJobs (issue 11: every admission and reconcile
decision under 1 s, memory under 500 MiB).

The operator's own code runs as it does in `kubefit run` (Reconciler, Scheduler, decide, the inventory memo,
plan_admissions, OperatorMetrics), on what kopf's indexes would hold: NodeFacts built by `node_facts` from
node manifests as the sandbox makes them, PodUsage and WorkerPod of every worker. Only the API server is
replaced, by an in-memory store (job dicts; a created pod is bound first-fit to a node of its accelerator and
turns Running, as kube-scheduler and a kubelet would), and kopf's event posting by nothing. So the figures
are the operator's decisions alone: no network, no kopf, no JSON from a server.

The jobs: 60% one worker of 1, 2, 4 or 8 GPUs; 30% gangs of 2-8 workers of 8 GPUs; 10% elastic, 2 to
16 workers of 8 GPUs. At full size they want more than the 40,000 GPUs: every job is admitted, the elastic
ones below their maximum, so a pass has every job to place and a scale change moves devices. Timed, after
the cluster is filled (every job's first reconcile, one pass for that burst, the pod events):
- one scheduling pass over every job (Scheduler.run_pass: capacity, eligible nodes, plan_admissions);
- one job's reconcile that changes nothing (the resync timer's): observe (inventory of 5,000 nodes),
  decide, compare the status; and the same, each after one other pod changed (kopf's index holds a new
  object for it), as while workers are created and started;
- one job's scale change: its reconcile and the pass it requests (run inline here); the reconciles of the
  other jobs whose grant that pass changed are counted and timed apart (the operator runs them on the
  scheduler's threads);
- one scheduling pass while the workers of a share of the jobs (`--unbound`, 40%) exist but are not bound
  (kube-scheduler's backlog during a fill, as on the sandbox), so those jobs are planned again, not taken
  as settled; with the time the garbage collector took in those passes; and the same passes once one node
  carries a NoSchedule taint no job tolerates (a cordoned node, or one the node controller marks
  unreachable), which leaves every job's list of usable nodes one short of its accelerator's;
and the process's resident memory, less what a copy of the in-memory API store's jobs takes. The process's
garbage collector is set up as `kubefit run` sets it (controller/garbage_collection.py) unless
`--python-gc-defaults`.

With `--busy-neighbours K`, the passes with unbound workers are timed once more, in CPU time
(`time.thread_time`, what kubefit_scheduling_pass_cpu_seconds measures) as well as duration, alternately
alone and beside K processes that walk a large heap of Python objects in random order (stopped with SIGSTOP
between the passes timed alone). On the sandbox a pass shares two cores with the control plane, the
simulated nodes and the operator's other threads: the ratio says how much of its CPU time there is the
machine's (caches and memory bandwidth shared) rather than more work.

    .venv/bin/python benchmarks/horizon_decisions.py [--nodes 5000] [--jobs 2000] [--samples 200]
        [--unbound 0.4] [--python-gc-defaults] [--busy-neighbours 0]
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, cast

import kopf

from kubefit.controller.cluster import ClusterView, remembering
from kubefit.controller.kube import KubeApi
from kubefit.controller.reconciler import Reconciler
from kubefit.controller.scheduler import Scheduler, SchedulerSettings
from kubefit.decisions.inventory import NodeFacts, PodUsage, node_facts
from kubefit.decisions.node_match import Taint
from kubefit.decisions.observed import WorkerPod
from kubefit.metrics import OperatorMetrics
from kubefit.sizing.catalog import load_catalog
from kubefit_sandbox.cluster import build_node, parse_pool

CATALOG = load_catalog()
NAMESPACE = "horizon"
TARGET_S, MEMORY_TARGET_MIB = 1.0, 500.0
POOLS = (("h100", "nvidia-h100-80gb", 0.6), ("a100", "nvidia-a100-80gb", 0.4))


def build_nodes(count: int) -> tuple[list[NodeFacts], dict[str, str]]:
    """`count` 8-GPU nodes as kopf's node index holds them, and each node's accelerator."""
    facts, accelerator_of = [], {}
    for pool_name, accelerator, share in POOLS:
        raw = {"name": pool_name, "accelerator": accelerator, "nodes": 1, "acceleratorsPerNode": 8}
        pool = parse_pool({**raw, "cpu": 96, "memory": "1Ti"}, pool_name, CATALOG)
        for index in range(int(count * share)):
            name = f"{pool_name}-{index:05d}"
            # The index only picks the node's addresses, which node_facts does not read.
            manifest = build_node(pool, name, index % 256, "2026-11-30T00:00:00Z")
            manifest["metadata"]["name"] = name
            facts.append(node_facts(manifest))
            accelerator_of[name] = accelerator
    return facts, accelerator_of


def job_manifest(index: int, rng: random.Random) -> dict[str, Any]:
    shape = rng.random()
    accelerator = POOLS[0][1] if rng.random() < 0.6 else POOLS[1][1]
    workers: dict[str, Any]
    elastic: dict[str, Any] = {"checkpointGracePeriodSeconds": 0}
    if shape < 0.6:
        per_worker, workers = rng.choice([1, 2, 4, 8]), {"replicas": 1}
    elif shape < 0.9:
        per_worker, workers = 8, {"replicas": rng.randint(2, 8)}
    else:
        per_worker, workers = 8, {"replicas": 16, "minReplicas": 2, "maxReplicas": 16}
        elastic["enabled"] = True
    name = f"job-{index:05d}"
    return {
        "apiVersion": "kubefit.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": f"2026-11-30T00:{index // 60 % 60:02d}:{index % 60:02d}Z",
        },
        "spec": {
            "framework": "pytorch",
            "template": {"spec": {"containers": [{"name": "trainer", "image": "ghcr.io/acme/train:1"}]}},
            "model": {"parameters": "1B"},
            "resources": {"accelerator": accelerator, "acceleratorsPerWorker": per_worker},
            "workers": workers,
            "elastic": elastic,
        },
    }


class Store:
    """The API server and the cluster, in memory: jobs, pods bound first-fit, the indexes' contents."""

    def __init__(self, nodes: list[NodeFacts], accelerator_of: dict[str, str]) -> None:
        self.nodes = nodes
        self.jobs: dict[str, dict[str, Any]] = {}
        self.free = {node.name: 8 for node in nodes}
        self.by_accelerator: dict[str, list[str]] = {}
        for node in nodes:
            self.by_accelerator.setdefault(accelerator_of[node.name], []).append(node.name)
        self.usage: dict[str, dict[str, PodUsage]] = {}  # node -> pod name -> usage
        self.workers: dict[tuple[str, str], dict[str, WorkerPod]] = {}
        self.calls: Counter[str] = Counter()

    # ------------------------------------------------------------------ KubeApi's calls

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls["get_job"] += 1
        job = self.jobs.get(name)
        return copy.deepcopy(job) if job is not None else None  # what json.loads of an answer costs, about

    def patch_job_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        self.calls["patch_job_status"] += 1
        assert self.jobs[name]["metadata"]["uid"] == uid, "the API server's test of /metadata/uid"
        self.jobs[name]["status"] = copy.deepcopy(status)  # written whole

    def create_service(self, namespace: str, manifest: dict[str, Any]) -> bool:
        self.calls["create_service"] += 1
        return True

    def create_pod(self, namespace: str, manifest: dict[str, Any]) -> bool:
        self.calls["create_pod"] += 1
        metadata = manifest["metadata"]
        job = metadata["labels"]["kubefit.dev/job"]
        workers = self.workers.setdefault((namespace, job), {})
        if metadata["name"] in workers:
            return False
        per_worker = int(manifest["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        accelerator = self.jobs[job]["spec"]["resources"]["accelerator"]
        node = next((n for n in self.by_accelerator[accelerator] if self.free[n] >= per_worker), None)
        index = int(metadata["name"].rsplit("-", 1)[1])
        uid = f"uid-{metadata['name']}"
        owner = metadata["ownerReferences"][0]["uid"]
        if node is None:
            workers[metadata["name"]] = WorkerPod(metadata["name"], index, uid, "Pending", None, False, owner)
            return True
        self.free[node] -= per_worker
        usage = PodUsage(node, {"nvidia.com/gpu": per_worker}, (namespace, job))
        self.usage.setdefault(node, {})[metadata["name"]] = usage
        workers[metadata["name"]] = WorkerPod(metadata["name"], index, uid, "Running", node, False, owner)
        return True

    def delete_pod(self, namespace: str, name: str) -> bool:
        self.calls["delete_pod"] += 1
        job = name.rsplit("-worker-", 1)[0]
        pod = self.workers.get((namespace, job), {}).pop(name, None)
        if pod is not None and pod.node_name:
            usage = self.usage[pod.node_name].pop(name)
            self.free[pod.node_name] += usage.requests["nvidia.com/gpu"]
        return pod is not None

    def adopt_pod(self, namespace: str, name: str, owner: dict[str, Any]) -> bool:
        return True

    def node_exists(self, name: str) -> bool:
        self.calls["node_exists"] += 1
        return any(node.name == name for node in self.nodes)

    def node_names(self) -> set[str]:
        self.calls["node_names"] += 1
        return {node.name for node in self.nodes}

    def delete_job(self, namespace: str, name: str) -> bool:
        return self.jobs.pop(name, None) is not None

    # ------------------------------------------------------------------ what kopf's indexes would show

    def view(self) -> ClusterView:
        # As controller/handlers.py's cluster_view: the usage index is copied on each read.
        return ClusterView(
            nodes=lambda: self.nodes,
            usage=lambda: {node: list(pods.values()) for node, pods in self.usage.items()},
            workers=lambda key: list(self.workers.get(key, {}).values()),
        )


class SwitchablePlanner:
    """plan_admissions, or (while the jobs are first read) nothing, so the fill is not 2,000 passes."""

    def __init__(self) -> None:
        from kubefit.decisions.admission import AdmissionPlan, plan_admissions

        self.on = False
        self.real = plan_admissions
        self.empty = AdmissionPlan({}, frozenset(), {}, frozenset(), {}, {})

    def __call__(self, *args: Any) -> Any:
        return self.real(*args) if self.on else self.empty


class Horizon:
    def __init__(self, nodes: int, jobs: int, seed: int = 11) -> None:
        self.rng = random.Random(seed)
        facts, accelerator_of = build_nodes(nodes)
        self.store = Store(facts, accelerator_of)
        self.planner = SwitchablePlanner()
        self.metrics = OperatorMetrics()
        settings = SchedulerSettings(debounce=None)  # passes and their reconciles run inline, timed whole
        catalog = remembering(CATALOG)  # as controller/runner.py hands it to both
        self.scheduler = Scheduler(catalog, self.metrics, settings, planner=self.planner)
        self.reconciler = Reconciler(
            cast(KubeApi, self.store), CATALOG, self.metrics, scheduler=self.scheduler
        )
        self.view = self.store.view()
        self.keys = [(NAMESPACE, f"job-{index:05d}") for index in range(jobs)]
        for index, key in enumerate(self.keys):
            self.store.jobs[key[1]] = job_manifest(index, self.rng)

    def fill(self) -> float:
        """Every job read once, one pass (its admissions reconciled inline), the pod events; seconds taken."""
        started = time.perf_counter()
        request = self.scheduler.request
        # One pass for the whole burst, as the operator's debounced passes would run (here they are synchronous).
        self.scheduler.request = lambda trigger, view: None  # type: ignore[method-assign]
        for key in self.keys:
            self.reconciler.reconcile(key, "create", self.view)
        self.scheduler.request = request  # type: ignore[method-assign]
        self.planner.on = True
        self.scheduler.request("timer", self.view)  # a pass: the jobs whose grant changed reconcile inline
        for key in self.keys:
            if self.store.workers.get(key):
                self.reconciler.reconcile(key, "pod", self.view)  # their pods were bound and run
        return time.perf_counter() - started

    def timed_passes(self, count: int) -> list[float]:
        return [_seconds(lambda: self.scheduler.run_pass(self.view)) for _ in range(count)]

    def timed_resyncs(self, count: int) -> list[float]:
        keys = self.rng.sample(self.keys, count)
        return [_seconds(lambda key=key: self.reconciler.reconcile(key, "timer", self.view)) for key in keys]

    def timed_after_a_pod_change(self, count: int) -> list[float]:
        """A reconcile that changes nothing, each after one other pod changed (kopf's index holds a new object
        for it: a worker bound or started elsewhere), as while workers are being created and started."""
        keys = self.rng.sample(self.keys, count)
        nodes = sorted(node for node, pods in self.store.usage.items() if pods)
        timed = []
        for key in keys:
            pods = self.store.usage[self.rng.choice(nodes)]
            name = self.rng.choice(sorted(pods))
            pods[name] = replace(pods[name])
            timed.append(_seconds(lambda key=key: self.reconciler.reconcile(key, "timer", self.view)))
        return timed

    def timed_scales(self, count: int) -> tuple[list[float], list[int], list[float]]:
        """An elastic job's replicas changed (as `kubectl scale` does): (its reconcile with the pass it asks
        for, the other jobs that pass changed, their reconciles in all), per change."""
        elastic = [key for key in self.keys if self.store.jobs[key[1]]["spec"]["elastic"].get("enabled")]
        decisions, others, follow_on = [], [], []
        for key in self.rng.choices(elastic, k=count):
            job = self.store.jobs[key[1]]
            workers = job["spec"]["workers"]
            workers["replicas"] = self.rng.randint(workers["minReplicas"], workers["maxReplicas"])
            job["metadata"]["generation"] += 1
            changed: list[tuple[str, str]] = []
            # The pass's other reconciles run on the scheduler's threads in the operator: counted here, then
            # timed apart.
            self.scheduler.reconcile_with(lambda other, trigger, view, changed=changed: changed.append(other))
            decisions.append(_seconds(lambda key=key: self.reconciler.reconcile(key, "update", self.view)))
            self.scheduler.reconcile_with(self.reconciler.reconcile)
            others.append(len(set(changed) - {key}))
            follow_on.append(
                _seconds(
                    lambda changed=changed: [
                        self.reconciler.reconcile(k, "admission", self.view) for k in set(changed)
                    ]
                )
            )
        return decisions, others, follow_on

    def timed_passes_with_unbound(self, share: float, count: int) -> tuple[int, list[float], list[float]]:
        """(workers unbound, pass seconds, garbage-collection seconds in each pass) after the workers of
        `share` of the jobs lost their node, as if kube-scheduler had not bound them yet."""
        unbound = 0
        for workers in self.store.workers.values():
            if self.rng.random() >= share:
                continue
            for name, pod in list(workers.items()):
                if pod.node_name:
                    usage = self.store.usage[pod.node_name].pop(name)
                    self.store.free[pod.node_name] += usage.requests["nvidia.com/gpu"]
                    workers[name] = replace(pod, node_name=None, phase="Pending")
                    unbound += 1
        collecting = CollectorClock()
        passes, collected = [], []
        for _ in range(count):
            collecting.seconds = 0.0
            passes.append(_seconds(lambda: self.scheduler.run_pass(self.view)))
            collected.append(collecting.seconds)
        collecting.stop()
        return unbound, passes, collected

    def timed_passes_with_a_tainted_node(self, count: int) -> list[float]:
        """Pass seconds once one node carries a NoSchedule taint that no job tolerates (cordoned, or
        unreachable as the node controller marks a node whose heartbeats are late): every job may then use all
        nodes of its accelerator but one."""
        nodes = self.store.nodes
        tainted = replace(nodes[0], taints=(Taint("node.kubernetes.io/unreachable", effect="NoSchedule"),))
        self.store.nodes = [tainted, *nodes[1:]]
        return [_seconds(lambda: self.scheduler.run_pass(self.view)) for _ in range(count)]

    def admitted(self) -> tuple[int, int]:
        grants = self.scheduler.snapshot()
        return sum(1 for grant in grants.values() if grant.workers), sum(
            1 for grant in grants.values() if not grant.workers
        )


# A neighbour: a heap of a million small dicts (about 250 MiB) read in random order, for ever.
NEIGHBOUR_CODE = """
import random
objects = [{"index": index, "name": str(index)} for index in range(1_000_000)]
order = list(range(len(objects)))
random.shuffle(order)
print("ready", flush=True)
while True:
    total = 0
    for index in order:
        total += objects[index]["index"]
"""


@contextmanager
def busy_neighbours(count: int) -> Iterator[list[subprocess.Popen[str]]]:
    """`count` neighbour processes, each started and ready (then stopped: SIGCONT runs them)."""
    processes = [
        subprocess.Popen([sys.executable, "-c", NEIGHBOUR_CODE], stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
            process.send_signal(signal.SIGSTOP)
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.wait()


def timed_passes_beside(horizon: Horizon, neighbours: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Passes timed alternately alone and beside `neighbours` busy processes: {"alone"|"beside":
    {"cpu"|"wall": seconds}}."""
    timings: dict[str, dict[str, list[float]]] = {
        side: {"cpu": [], "wall": []} for side in ("alone", "beside")
    }
    with busy_neighbours(neighbours) as processes:
        for _ in range(rounds):
            for side, sig in (("alone", signal.SIGSTOP), ("beside", signal.SIGCONT)):
                for process in processes:
                    process.send_signal(sig)
                time.sleep(0.5)  # the neighbours at work (or stopped) before the pass
                started, cpu_started = time.perf_counter(), time.thread_time()
                horizon.scheduler.run_pass(horizon.view)
                timings[side]["cpu"].append(time.thread_time() - cpu_started)
                timings[side]["wall"].append(time.perf_counter() - started)
    return timings


class CollectorClock:
    """Seconds the garbage collector ran since `seconds` was last reset (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._tick)

    def _tick(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started

    def stop(self) -> None:
        gc.callbacks.remove(self._tick)


def _seconds(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def rss_mib() -> float:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def line(label: str, values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[max(0, -(-len(ordered) * 99 // 100) - 1)]
    verdict = "met" if max(values) < TARGET_S else "NOT met"
    return (
        f"{label}: median {statistics.median(values) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {max(values) * 1000:.1f} ms over {len(values)} (target under {TARGET_S:.0f} s: {verdict})"
    )


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=200, help="no-op reconciles and scale changes timed")
    parser.add_argument(
        "--unbound", type=float, default=0.4, help="share of jobs whose workers lose their node"
    )
    parser.add_argument(
        "--python-gc-defaults", action="store_true", help="leave the collector as Python sets it"
    )
    parser.add_argument(
        "--busy-neighbours",
        type=int,
        default=0,
        help="time the passes with unbound workers again beside this many busy processes (0: not)",
    )
    args = parser.parse_args(argv)
    if args.busy_neighbours < 0:
        parser.error(f"--busy-neighbours must be 0 or more, got {args.busy_neighbours}")
    if not 0.0 <= args.unbound <= 1.0:
        parser.error(f"--unbound must be between 0 and 1, got {args.unbound}")
    return args


def main() -> None:
    args = arguments()
    if not args.python_gc_defaults:
        # Imported here: horizon_sandbox.py imports this module for its job mix and may run against an operator
        # tree without it.
        try:
            from kubefit.controller.garbage_collection import tune_garbage_collection
        except ImportError:  # an operator tree from before the eleventh round
            from kubefit.controller.runner import tune_garbage_collection  # type: ignore[attr-defined,no-redef]

        tune_garbage_collection()
    print(
        f"garbage collector: {'Python defaults' if args.python_gc_defaults else 'as kubefit run sets it'}, "
        f"thresholds {gc.get_threshold()}"
    )
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    kopf.event = lambda *args, **kwargs: None  # no kopf posting queue here: events are not posted
    gc.collect()
    rss_before = rss_mib()
    horizon = Horizon(args.nodes, args.jobs)
    fill_s = horizon.fill()
    admitted, queued = horizon.admitted()
    print(f"{len(horizon.store.nodes)} nodes of 8 GPUs, {args.jobs} jobs: {admitted} admitted, {queued} queued "
          f"after the fill ({fill_s:.1f} s: every job's first reconcile, a pass, the pod events)")  # fmt: skip
    passes = horizon.timed_passes(max(5, args.samples // 20))
    print(line("scheduling pass over every job (run_pass)            ", passes))
    print(line("one job's reconcile that changes nothing (resync)    ", horizon.timed_resyncs(args.samples)))
    print(line("the same, each after another pod changed             ",
               horizon.timed_after_a_pod_change(args.samples)))  # fmt: skip
    decisions, others, follow_on = horizon.timed_scales(args.samples // 4)
    print(line("one job's scale change: its reconcile and the pass   ", decisions))
    print(f"  each pass changed {statistics.median(others):.0f} other jobs (median; max {max(others)}), whose "
          f"reconciles took {statistics.median(follow_on) * 1000:.0f} ms in all (median; max "
          f"{max(follow_on) * 1000:.0f} ms; on the scheduler's threads in the operator)")  # fmt: skip
    gc.collect()
    rss_all = rss_mib()
    jobs_copy = copy.deepcopy(horizon.store.jobs)  # the API store is not the operator's: what its jobs take
    gc.collect()
    store_mib = rss_mib() - rss_all
    del jobs_copy
    operator_mib = rss_all - store_mib
    verdict = "met" if operator_mib < MEMORY_TARGET_MIB else "NOT met"
    print(f"memory: process RSS {rss_all:.1f} MiB ({rss_before:.1f} MiB after imports), the API store's jobs "
          f"about {store_mib:.1f} MiB of it: the operator's part {operator_mib:.1f} MiB (target under "
          f"{MEMORY_TARGET_MIB:.0f} MiB: {verdict}; without kopf's own per-object memory)")  # fmt: skip
    print(f"API calls the decisions made: {dict(horizon.store.calls)}")
    unbound, passes, collected = horizon.timed_passes_with_unbound(args.unbound, max(5, args.samples // 10))
    print(line(f"pass with {unbound} workers unbound ({args.unbound:.0%} of jobs)     ", passes))
    print(f"  the garbage collector in those passes: {sum(collected) * 1000:.0f} ms of {sum(passes) * 1000:.0f} ms, "
          f"longest {max(collected) * 1000:.0f} ms")  # fmt: skip
    if args.busy_neighbours:
        timings = timed_passes_beside(horizon, args.busy_neighbours, max(5, args.samples // 20))
        alone, beside = timings["alone"], timings["beside"]
        print(f"the same passes, alternately alone and beside {args.busy_neighbours} busy processes "
              f"({len(alone['cpu'])} each, {os.cpu_count()} cores):")  # fmt: skip
        for side, measured in timings.items():
            print(f"  {side}: CPU time median {statistics.median(measured['cpu']) * 1000:.1f} ms, duration "
                  f"median {statistics.median(measured['wall']) * 1000:.1f} ms")  # fmt: skip
        ratio = statistics.median(beside["cpu"]) / statistics.median(alone["cpu"])
        print(f"  CPU time beside them / alone: {ratio:.2f}x (the same work)")
    print(line("the same passes, one node tainted NoSchedule          ",
               horizon.timed_passes_with_a_tainted_node(max(5, args.samples // 20))))  # fmt: skip


if __name__ == "__main__":
    main()
