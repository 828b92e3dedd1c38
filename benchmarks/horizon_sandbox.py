"""The next horizon on the sandbox: 5,000 simulated GPU nodes and 2,000 TrainingJobs through `kubefit run`
(issue 11: every admission and reconcile decision under 1 s, the operator's memory under 500 MiB).

benchmarks/horizon_decisions.py times the operator's decisions in one process with an in-memory API store;
this runs the whole thing on a throwaway sandbox (etcd, kube-apiserver, kube-scheduler,
kube-controller-manager, the node agent playing every node's kubelet) with the operator as `kubefit run`:

1. nodes: N nodes of 8 GPUs (60% nvidia-h100-80gb, 40% nvidia-a100-80gb, as horizon_decisions.py), plus one
   8 x L40S node for the probe job (step 5), an accelerator no other job asks for. The sandbox's cluster file
   stops at 256 nodes (kubefit_sandbox.cluster.MAX_NODES: one /24 of 10.244.0.0/16 per node), so the nodes
   are built here (build_node, with unique addresses past 256) and created with the sandbox's own
   register_node, a few at a time. The node agent heartbeats each node every
   max(20 s, N / HEARTBEAT_NODES_PER_S) (2 writes a node: its status and its Lease), in batches spread over
   the interval. Nothing marks a node NotReady for an old heartbeat: the sandbox runs kube-controller-manager
   without the node lifecycle controller (`--controllers=*,-nodelifecycle`, controlplane.py), so
   `--node-monitor-grace-period` is not read; the end of the run checks that every node is still Ready;
2. the operator: `kubefit run` on one namespace (scale_500.running_operator); its resident memory once it has
   listed the nodes and gone quiet (idle);
3. the fill: M jobs of horizon_decisions.py's mix (60% one worker of 1, 2, 4 or 8 GPUs; 30% gangs of 2-8
   workers of 8 GPUs; 10% elastic, 2 to 16 workers of 8 GPUs; each on H100 or A100-80GB), applied one after
   another through the API. Timed from the first apply: the applies, the last job's first Admitted=True,
   the last worker pod's creation, and the last job reaching Running (or Queued: settled);
4. steady: the jobs left alone for --steady-seconds (default 60: two resync periods of the operator's
   default), the operator's resync and the heartbeats the only work;
5. a single change: the probe job (elastic, 1 to 2 workers of one L40S, on its own node) scaled through the
   scale subresource as `kubectl scale` does, --changes times: patch -> new worker pod seen (up), patch ->
   the removed worker seen being deleted (down). Each change that needs a worker is a scheduling pass over
   every job and reconciles, so this bounds a whole admission decision from outside. --changes 0 skips
   it (after a fill that did not settle, its worker can wait out the watch's limit behind kube-scheduler).

Measured in each phase: the operator's decision durations from its /metrics histograms
kubefit_reconcile_duration_seconds and kubefit_scheduling_pass_duration_seconds (count, mean, how many above
1 s; their buckets run from 5 ms to 60 s, so "every one at most 1 s" is what they can say, not a maximum),
the passes' CPU time (kubefit_scheduling_pass_cpu_seconds: a pass longer than its CPU time waited for a CPU
or for the interpreter lock),
its reconciles by trigger, the CPU seconds of every process, the API requests per second; RSS (VmRSS) of the
operator and the API server sampled every 2 s (peaks), and of every process at the end of each phase. The
histograms are also scraped every 10 s, to say when the decisions above 1 s happened. The operator's
kubefit_queue_wait_seconds (creation to first admission) is printed as its buckets.

    .venv/bin/python benchmarks/horizon_sandbox.py [--nodes 5000] [--jobs 2000] [--changes 10]
        [--steady-seconds 60] [--heartbeat-seconds S] [--resync-seconds S] [--operator-log FILE]

No assertions on timing: it prints its figures, the machine and the verdict against the targets.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import scale_500
from horizon_decisions import POOLS
from horizon_decisions import job_manifest as decisions_job
from kubefit.sizing.catalog import load_catalog
from kubefit_sandbox.cluster import MAX_NODES, NodePool, build_node, parse_pool
from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.ephemeral import ephemeral_sandbox
from kubefit_sandbox.kubeclient import WatchExpired, core_api, new_api_client, watch_events
from kubefit_sandbox.nodeagent import HEARTBEAT_INTERVAL_S, start_agent
from kubefit_sandbox.nodes import list_sandbox_nodes, node_needs_fixing, register_node
from kubefit_sandbox.podstatus import rfc3339
from scale_500 import (
    FAST_SHUTDOWN,
    GROUP,
    PLURAL,
    ROOT,
    VERSION,
    Bench,
    Operator,
    PodWatch,
    component_pids,
    cpu_difference,
    cpu_seconds,
    create_namespace,
    machine,
    percentile,
    request_counts,
    running_operator,
)

DECISION_TARGET_S, MEMORY_TARGET_MIB = 1.0, 500.0
GPUS_PER_NODE = 8
# Heartbeats the node agent may write a second (each is 2 writes: the node status and its Lease): at 5,000
# nodes every 20 s would be 250 a second, more than 2 cores hold beside the rest.
HEARTBEAT_NODES_PER_S = 25.0
# The probe's accelerator, which no other job asks for, on a node of its own: a probe on H100 would wait
# behind any H100 job that has waited past --head-of-line-timeout-seconds and may use its node.
PROBE_POOL, PROBE_ACCELERATOR = "probe", "nvidia-l40s"
NODE_CREATORS = 4  # threads creating nodes
RSS_SAMPLE_S = 2.0
SCRAPE_EVERY = 5  # RSS samples: the operator's /metrics every 10 s
RECONCILE_HISTOGRAM = "kubefit_reconcile_duration_seconds"
PASS_HISTOGRAM = "kubefit_scheduling_pass_duration_seconds"
PASS_CPU_HISTOGRAM = "kubefit_scheduling_pass_cpu_seconds"
QUEUE_WAIT_HISTOGRAM = "kubefit_queue_wait_seconds"
COLLECTION_HISTOGRAM = "kubefit_garbage_collection_seconds"
GENERATIONS = ("0", "1", "2")
SETTLED_PHASES = frozenset({"Running", "Queued"})
TIMEOUT_S = 3600.0


# ---------------------------------------------------------------------------------------------- pure helpers


def heartbeat_interval(nodes: int, override: float | None = None) -> float:
    """The node agent's heartbeat interval for `nodes` nodes: the kubelet's 20 s, or longer so that at most
    HEARTBEAT_NODES_PER_S nodes are heartbeated a second; `override` wins."""
    if override is not None:
        return override
    return max(HEARTBEAT_INTERVAL_S, nodes / HEARTBEAT_NODES_PER_S)


def pool_sizes(nodes: int) -> list[tuple[str, str, int]]:
    """(pool name, accelerator, node count) for horizon_decisions.py's pools; the counts add up to `nodes`."""
    sizes = [(name, accelerator, int(nodes * share)) for name, accelerator, share in POOLS]
    name, accelerator, count = sizes[-1]
    sizes[-1] = (name, accelerator, count + nodes - sum(size for _, _, size in sizes))
    return sizes


def node_addresses(index: int) -> tuple[str, str]:
    """(InternalIP, pod CIDR) of the index-th node, unique up to 8,192 nodes: the sandbox's scheme
    (kubefit_sandbox.cluster.node_addresses) ends at 256. Pod CIDRs are /24s of 10.64.0.0/11."""
    if not 0 <= index < 8192:
        raise ValueError(f"node index {index} out of range 0..8191")
    return f"10.240.{index // 250}.{index % 250 + 2}", f"10.{64 + index // 256}.{index % 256}.0/24"


def node_manifest(pool: NodePool, name: str, index: int, now: str) -> dict[str, Any]:
    """The sandbox's Node object for the pool (build_node) with this benchmark's unique addresses."""
    manifest = build_node(pool, name, index % MAX_NODES, now)
    internal_ip, pod_cidr = node_addresses(index)
    manifest["spec"]["podCIDR"], manifest["spec"]["podCIDRs"] = pod_cidr, [pod_cidr]
    for address in manifest["status"]["addresses"]:
        if address["type"] == "InternalIP":
            address["address"] = internal_ip
    return manifest


def horizon_job(index: int, rng: random.Random, gang_timeout: int | None = None) -> dict[str, Any]:
    """horizon_decisions.py's job of this index, as a client applies it: only a name in its metadata, and a
    worker template with a command whose pods stop at once when deleted; spec.scheduling.gangTimeoutSeconds
    when given (else the API's default)."""
    job = decisions_job(index, rng)
    if gang_timeout is not None:
        job["spec"].setdefault("scheduling", {})["gangTimeoutSeconds"] = gang_timeout
    job["metadata"] = {"name": job["metadata"]["name"]}
    container = {"name": "trainer", "image": "ghcr.io/acme/train:1", "command": ["train"]}
    job["spec"]["template"] = {
        "metadata": {"annotations": dict(FAST_SHUTDOWN)},
        "spec": {"containers": [container]},
    }
    return job


def probe_job() -> dict[str, Any]:
    """The elastic job scaled in step 5: 1 to 2 workers of one L40S (only the probe node has them)."""
    spec: dict[str, Any] = {
        "framework": "pytorch",
        "template": {
            "metadata": {"annotations": dict(FAST_SHUTDOWN)},
            "spec": {
                "containers": [{"name": "trainer", "image": "ghcr.io/acme/train:1", "command": ["train"]}],
            },
        },
        "model": {"parameters": "1B"},
        "resources": {"accelerator": PROBE_ACCELERATOR, "acceleratorsPerWorker": 1},
        "workers": {"replicas": 1, "minReplicas": 1, "maxReplicas": 2},
        "elastic": {"enabled": True, "checkpointGracePeriodSeconds": 0},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": "probe"},
        "spec": spec,
    }


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram's cumulative buckets (upper bound -> count), its count and its sum."""

    buckets: tuple[tuple[float, float], ...] = ()
    count: float = 0.0
    total: float = 0.0

    def minus(self, earlier: Histogram) -> Histogram:
        """What was observed since `earlier` (a scrape of the same histogram)."""
        before = dict(earlier.buckets)
        return Histogram(
            tuple((bound, count - before.get(bound, 0.0)) for bound, count in self.buckets),
            self.count - earlier.count,
            self.total - earlier.total,
        )

    def at_most(self, bound: float) -> float:
        """Observations at or below `bound` (a bucket's upper bound)."""
        return next((count for le, count in self.buckets if le == bound), 0.0)

    def smallest_bound_holding_all(self) -> float | None:
        """The smallest bucket bound with every observation at or below it (inf if some are past the last)."""
        return next((le for le, count in self.buckets if count >= self.count), None)


def parse_histogram(text: str, name: str, labels: Mapping[str, str] | None = None) -> Histogram:
    """The histogram `name` from a /metrics page (Prometheus text format); with `labels`, its series with
    those label values."""
    wanted = dict(labels or {})
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if any(found.get(key) != want for key, want in wanted.items()):
            continue
        if metric == f"{name}_bucket":
            bound = found["le"]
            buckets.append((math.inf if bound == "+Inf" else float(bound), float(value)))
        elif metric == f"{name}_count":
            count = float(value)
        elif metric == f"{name}_sum":
            total = float(value)
    return Histogram(tuple(sorted(buckets)), count, total)


def collections_line(label: str, by_generation: Mapping[str, Histogram], operator_cpu: float | None) -> str:
    """The garbage collector's collections by generation: how many, their time, the longest (to the bucket)."""
    parts = []
    for generation, histogram in by_generation.items():
        if not histogram.count:
            parts.append(f"generation {generation}: none")
            continue
        bound = histogram.smallest_bound_holding_all()
        longest = (
            "past the last bucket (2.5 s)"
            if bound in (None, math.inf)
            else f"each at most {bound * 1000:g} ms"
        )
        parts.append(
            f"generation {generation}: {histogram.count:.0f}, {histogram.total * 1000:.0f} ms "
            f"(mean {histogram.total / histogram.count * 1000:.1f} ms, {longest})"
        )
    seconds = sum(histogram.total for histogram in by_generation.values())
    share = f"; {seconds / operator_cpu:.1%} of the operator's CPU time" if operator_cpu else ""
    return f"{label}: {seconds:.1f} s in all{share}; " + "; ".join(parts)


def machine_cpu(stat: str | None = None) -> dict[str, float]:
    """Seconds the machine's CPUs spent busy, idle and stolen (by the hypervisor, for other guests) since
    boot, from /proc/stat's first line (user nice system idle iowait irq softirq steal, in clock ticks)."""
    line = (stat if stat is not None else Path("/proc/stat").read_text()).splitlines()[0]
    ticks = [int(value) for value in line.split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    per_second = os.sysconf("SC_CLK_TCK")
    return {
        "busy": (user + nice + system + irq + softirq) / per_second,
        "idle": (idle + iowait) / per_second,
        "steal": steal / per_second,
    }


def machine_line(before: Mapping[str, float], after: Mapping[str, float]) -> str:
    """The machine's CPU seconds over a phase: busy, stolen by the hypervisor, idle."""
    used = {key: after[key] - before[key] for key in ("busy", "idle", "steal")}
    running = used["busy"] + used["steal"]
    share = f" ({used['steal'] / running:.1%} of busy and stolen)" if running else ""
    return (
        f"  the machine's CPUs: busy {used['busy']:.1f} s, stolen by the hypervisor {used['steal']:.1f} s{share}, "
        f"idle {used['idle']:.1f} s"
    )


def collections_by_generation(text: str) -> dict[str, Histogram]:
    return {gen: parse_histogram(text, COLLECTION_HISTOGRAM, {"generation": gen}) for gen in GENERATIONS}


def decisions_line(
    label: str, histogram: Histogram, noun: str = "reconciles", target: float = DECISION_TARGET_S
) -> str:
    """Count, mean, and the share above the target as far as the buckets tell."""
    if histogram.count == 0:
        return f"{label}: no {noun}"
    above = histogram.count - histogram.at_most(target)
    bound = histogram.smallest_bound_holding_all()
    within = "past the last bucket (10 s)" if bound in (None, math.inf) else f"at most {bound:g} s"
    return (
        f"{label}: {histogram.count:.0f} {noun}, mean {histogram.total / histogram.count * 1000:.1f} ms, "
        f"{above:.0f} above {target:g} s ({above / histogram.count:.1%}); every one {within} (histogram bucket)"
    )


def slow_windows(
    timeline: list[tuple[float, Histogram, Histogram]], since: float, target: float = DECISION_TARGET_S
) -> list[str]:
    """From scrapes (time, reconcile histogram, pass histogram) in time order: the windows between two
    scrapes in which reconciles or passes above `target` were observed, with their times from `since`."""
    windows = []
    for (before, reconciles_before, passes_before), (after, reconciles, passes) in zip(
        timeline, timeline[1:], strict=False
    ):
        slow = [
            (now.count - now.at_most(target)) - (then.count - then.at_most(target))
            for now, then in ((reconciles, reconciles_before), (passes, passes_before))
        ]
        if any(slow):
            windows.append(
                f"{max(0.0, before - since):.0f}-{after - since:.0f} s: {slow[0]:.0f} reconciles, "
                f"{slow[1]:.0f} passes"
            )
    return windows


def buckets_line(label: str, histogram: Histogram) -> str:
    """Cumulative bucket counts up to the first that holds every observation."""
    if histogram.count == 0:
        return f"{label}: none"
    shown = []
    for bound, count in histogram.buckets:
        shown.append(f"<= {bound:g} s: {count:.0f}")
        if count >= histogram.count:
            break
    return f"{label} ({histogram.count:.0f}): " + ", ".join(shown)


@dataclass
class JobState:
    phase: str | None = None
    admitted_at: float | None = None  # when first seen with Admitted=True
    gang_timeouts: int = 0  # status.gang.retries: admitted workers not all placed within the gang timeout
    settled_at: float | None = None  # when last seen turning Running or Queued


def is_admitted(job: Mapping[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(item.get("type") == "Admitted" and item.get("status") == "True" for item in conditions)


def record_job(states: dict[str, JobState], kind: str, job: Mapping[str, Any], seen: float) -> None:
    """A TrainingJob watch event (or a listed job, as ADDED) seen at `seen`, into `states`."""
    name, status = job["metadata"]["name"], job.get("status") or {}
    if kind == "DELETED":
        states.pop(name, None)
        return
    state = states.setdefault(name, JobState())
    if status.get("phase") in SETTLED_PHASES and state.phase not in SETTLED_PHASES:
        state.settled_at = seen
    state.phase = status.get("phase")
    if state.admitted_at is None and is_admitted(job):
        state.admitted_at = seen
    state.gang_timeouts = int((status.get("gang") or {}).get("retries") or 0)


def settled(states: Mapping[str, JobState], names: list[str]) -> bool:
    """Every job of `names` is Running (every desired worker runs) or Queued."""
    return all(name in states and states[name].phase in SETTLED_PHASES for name in names)


def rate_lines(before: Mapping[str, float], after: Mapping[str, float], seconds: float, top: int = 8) -> str:
    """The `top` request kinds by rate over `seconds`."""
    rows = sorted(((after[key] - before.get(key, 0.0), key) for key in after), reverse=True)[:top]
    return "\n".join(f"    {count / seconds:7.1f}/s  {key}" for count, key in rows if count > 0)


# ---------------------------------------------------------------------------------------------- the cluster


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def create_nodes(sandbox: Sandbox, nodes: int, progress: Callable[[str], None]) -> list[str]:
    """The horizon's nodes and the probe node, created as register_node does (created, then Ready)."""
    catalog, now = load_catalog(), rfc3339()
    manifests: list[dict[str, Any]] = []
    for pool_name, accelerator, count in [*pool_sizes(nodes), (PROBE_POOL, PROBE_ACCELERATOR, 1)]:
        raw: dict[str, Any] = {"name": pool_name, "accelerator": accelerator, "nodes": count}
        raw |= {"acceleratorsPerNode": GPUS_PER_NODE, "cpu": 96, "memory": "1Ti", "pods": 250}
        pool = parse_pool(raw, pool_name, catalog)
        for number in range(count):
            manifests.append(node_manifest(pool, f"{pool_name}-{number:05d}", len(manifests), now))
    core = core_api(new_api_client(sandbox.kubeconfig_path))
    done = 0
    with ThreadPoolExecutor(NODE_CREATORS) as creators:
        for _ in creators.map(lambda manifest: register_node(core, manifest), manifests):
            done += 1
            if done % 500 == 0:
                progress(f"  {done} of {len(manifests)} nodes created")
    return [manifest["metadata"]["name"] for manifest in manifests]


def wait_nodes_ready(sandbox: Sandbox, names: list[str], timeout: float = TIMEOUT_S) -> int:
    """Waits until every node is Ready and untainted by the API server; returns how many are."""
    core = core_api(new_api_client(sandbox.kubeconfig_path))
    wanted, deadline = set(names), time.monotonic() + timeout
    while True:
        listed, _ = list_sandbox_nodes(core)
        ready = sum(
            1 for node in listed if node["metadata"]["name"] in wanted and not node_needs_fixing(node)
        )
        if ready == len(wanted) or time.monotonic() > deadline:
            return ready
        time.sleep(max(1.0, len(wanted) / 1000))


def cluster_file(directory: Path) -> Path:
    """No pools: start_agent creates no nodes (they are created here), the agent manages what appears."""
    path = directory / "cluster.yaml"
    path.write_text(yaml.safe_dump({"pools": []}))
    return path


# ---------------------------------------------------------------------------------------------- the watches


class JobWatch:
    """The TrainingJobs of one namespace: each one's phase and when it was first seen admitted."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        custom = client.CustomObjectsApi(api_client)
        self.list: Callable[..., Any] = functools.partial(
            custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL
        )
        self.jobs: dict[str, JobState] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        threading.Thread(target=self._loop, name="job-watch", daemon=True).start()

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:
                listed = json.loads(self.list(_preload_content=False).data)
                for job in listed["items"]:
                    self._record("ADDED", job)
                version = listed["metadata"]["resourceVersion"]
                for event in watch_events(self.list, version):
                    version = event["object"]["metadata"].get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        self._record(event["type"], event["object"])
            except Exception as error:  # noqa: BLE001 - a dropped watch is listed again
                if self.stopped.is_set():
                    return
                if not isinstance(error, WatchExpired):
                    print(f"job watch: {type(error).__name__}: {error}; listing again", file=sys.stderr)
                time.sleep(0.1)

    def _record(self, kind: str, job: dict[str, Any]) -> None:
        with self.lock:
            record_job(self.jobs, kind, job, time.monotonic())

    def wait_settled(self, names: list[str], timeout: float) -> float | None:
        """Waits until every job of `names` is Running or Queued; returns when the last of them turned so, or
        None after `timeout` (the run goes on and reports what it saw). Checked once a second, not on every
        event (thousands of jobs, several events each)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if settled(self.jobs, names):
                    return max(self.jobs[name].settled_at or 0.0 for name in names)
            time.sleep(1.0)
        return None

    def phases(self, names: list[str]) -> dict[str, int]:
        """How many of `names` are in each phase now ("unseen": no event of it yet)."""
        with self.lock:
            found: dict[str, int] = {}
            for name in names:
                phase = (self.jobs[name].phase if name in self.jobs else None) or "unseen"
                found[phase] = found.get(phase, 0) + 1
        return found


class Sampler:
    """Peak VmRSS of some processes every RSS_SAMPLE_S, and the operator's decision histograms every
    SCRAPE_EVERY samples (when the slow ones happened)."""

    def __init__(self, pids: Mapping[str, int], scrape: Callable[[], str]) -> None:
        self.peaks: dict[str, float] = dict.fromkeys(pids, 0.0)
        self.timeline: list[tuple[float, Histogram, Histogram]] = []
        self.stopped = threading.Event()

        def loop() -> None:
            samples = 0
            while not self.stopped.wait(RSS_SAMPLE_S):
                for name, pid in pids.items():
                    self.peaks[name] = max(self.peaks[name], rss_mib(pid))
                samples += 1
                if samples % SCRAPE_EVERY == 0:
                    self.scrape(scrape)

        self.scrape(scrape)
        threading.Thread(target=loop, name="rss", daemon=True).start()

    def scrape(self, scrape: Callable[[], str]) -> None:
        try:
            text = scrape()
        except OSError as error:  # a busy operator: this scrape is left out
            print(f"sampler: /metrics: {error}", file=sys.stderr)
            return
        at = time.monotonic()
        self.timeline.append(
            (at, parse_histogram(text, RECONCILE_HISTOGRAM), parse_histogram(text, PASS_HISTOGRAM))
        )


# ---------------------------------------------------------------------------------------------- phases


@dataclass
class Snapshot:
    """What a phase is measured against: the clock, CPU, API requests, the operator's metrics."""

    at: float
    cpu: dict[str, float]
    requests: dict[str, float]
    reconciles: Histogram
    passes: Histogram
    pass_cpu: Histogram
    queue_wait: Histogram
    triggers: dict[str, float]
    collections: dict[str, Histogram]
    machine: dict[str, float]


@dataclass
class Phase:
    name: str
    seconds: float
    lines: list[str] = field(default_factory=list)
    reconciles: Histogram = field(default_factory=Histogram)


@dataclass
class Run:
    """Everything one run measures, for the report."""

    sandbox: Sandbox
    operator: Operator
    bench: Bench
    pids: dict[str, int] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    ups: list[float] = field(default_factory=list)
    downs: list[float] = field(default_factory=list)
    rss_idle: float = 0.0
    lifetime_reconciles: Histogram = field(default_factory=Histogram)
    lifetime_passes: Histogram = field(default_factory=Histogram)
    lifetime_pass_cpu: Histogram = field(default_factory=Histogram)
    lifetime_collections: dict[str, Histogram] = field(default_factory=dict)
    lifetime_cpu: float = 0.0
    fill_started: float = 0.0

    def metrics_text(self) -> str:
        log = self.operator.log.read_text(errors="replace")
        url = log.split("metrics on ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=30) as response:
            return str(response.read().decode())

    def snapshot(self) -> Snapshot:
        text = self.metrics_text()
        return Snapshot(
            time.monotonic(),
            cpu_seconds(self.pids),
            request_counts(self.sandbox),
            parse_histogram(text, RECONCILE_HISTOGRAM),
            parse_histogram(text, PASS_HISTOGRAM),
            parse_histogram(text, PASS_CPU_HISTOGRAM),
            parse_histogram(text, QUEUE_WAIT_HISTOGRAM),
            self.operator.reconciles(),
            collections_by_generation(text),
            machine_cpu(),
        )

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        """Measures what happens inside: CPU per process, API requests a second, reconciles, RSS at the end."""
        before = self.snapshot()
        phase = Phase(name, 0.0)
        yield phase
        after = self.snapshot()
        phase.seconds = after.at - before.at
        phase.reconciles = after.reconciles.minus(before.reconciles)
        triggers = {
            key: after.triggers[key] - before.triggers.get(key, 0.0)
            for key in after.triggers
            # The pass histogram says these; the binds have their own line.
            if key not in (scale_500.PASSES, scale_500.PASS_SECONDS, *scale_500.BINDS)
        }
        binds = {key: after.triggers.get(key, 0.0) - before.triggers.get(key, 0.0) for key in scale_500.BINDS}
        phase.lines += [
            decisions_line("  reconciles", phase.reconciles),
            decisions_line("  scheduling passes", after.passes.minus(before.passes), "passes"),
            decisions_line("  their CPU time", after.pass_cpu.minus(before.pass_cpu), "passes"),
            collections_line(
                "  garbage collections",
                {gen: after.collections[gen].minus(before.collections[gen]) for gen in GENERATIONS},
                after.cpu.get("operator", 0.0) - before.cpu.get("operator", 0.0),
            ),
            "  by trigger: "
            + (", ".join(f"{key} {count:.0f}" for key, count in sorted(triggers.items()) if count) or "none"),
            "  " + scale_500.binds_line(binds),
            buckets_line(
                "  queue wait (creation -> first admission)", after.queue_wait.minus(before.queue_wait)
            ),
            f"  CPU:\n{cpu_difference(before.cpu, after.cpu, phase.seconds)}",
            machine_line(before.machine, after.machine),
            f"  API requests a second (all clients; LIST and WATCH only of TrainingJobs):\n"
            f"{rate_lines(before.requests, after.requests, phase.seconds)}",
            "  RSS at its end: "
            + ", ".join(f"{name} {rss_mib(pid):.0f} MiB" for name, pid in self.pids.items()),
        ]
        self.phases.append(phase)


def fill(
    run: Run,
    names: list[str],
    timeout: float,
    progress: Callable[[str], None],
    gang_timeout: int | None = None,
) -> None:
    """Applies the jobs; times the applies, the last admission, the last worker pod, the settled state."""
    rng, namespace = random.Random(11), run.operator.namespace
    watch = JobWatch(run.bench.api_client, namespace)
    with run.phase("fill: the jobs applied until every one is Running or Queued") as phase:
        started = run.fill_started = time.monotonic()
        for index in range(len(names)):
            run.bench.apply_job(namespace, horizon_job(index, rng, gang_timeout))
        applied = time.monotonic() - started
        progress(f"{len(names)} jobs applied in {applied:.1f} s; waiting for them to settle")
        settled_at = watch.wait_settled(names, timeout)
        if settled_at is None:
            progress(f"NOT settled after {timeout:.0f} s: {watch.phases(names)}; reporting what was seen")
        with watch.lock:
            states = dict(watch.jobs)
        admitted = [at for name in names if (at := states[name].admitted_at) is not None]
        queued = sum(1 for name in names if states[name].phase == "Queued")
        timed_out = [states[name].gang_timeouts for name in names if states[name].gang_timeouts]
        with run.bench.watch.changed:
            pods = [record.first_seen for (ns, _), record in run.bench.watch.pods.items() if ns == namespace]
        phase.lines[:0] = [
            f"  applies: {applied:.1f} s for {len(names)} jobs",
            f"  admitted: {len(admitted)} ({queued} queued); the last first seen admitted "
            f"{(max(admitted, default=started) - started):.1f} s after the first apply",
            f"  worker pods (those there once settled): {len(pods)}; the last created {(max(pods, default=started) - started):.1f} s after "
            f"the first apply",
            f"  settled (every job Running or Queued): {settled_at - started:.1f} s after the first apply"
            if settled_at is not None
            else f"  NOT settled within --timeout {timeout:.0f} s; phases then: {watch.phases(names)}",
            f"  gang timeouts (admitted workers not all Running in time, job requeued): {sum(timed_out)} in "
            f"{len(timed_out)} jobs",
        ]
    watch.stopped.set()


def steady(run: Run, seconds: float) -> None:
    with run.phase(f"steady: the jobs left alone for {seconds:.0f} s (resyncs, heartbeats)"):
        time.sleep(seconds)


def probe(run: Run, changes: int) -> None:
    """The probe job scaled between 1 and 2 workers `changes` times (scale subresource, as kubectl scale)."""
    namespace, pods, watch = run.operator.namespace, run.bench.watch.pods, run.bench.watch
    first, second = (namespace, "probe-worker-0"), (namespace, "probe-worker-1")
    run.bench.apply_job(namespace, probe_job())
    watch.wait("the probe's first worker to run", lambda: first in pods and pods[first].running)
    time.sleep(2.0)
    with run.phase(f"probe: {changes} scale changes of one job while the others exist"):
        for change in range(changes):
            up, started = change % 2 == 0, time.monotonic()
            run.bench.scale(namespace, "probe", 2 if up else 1)
            if up:
                watch.wait("the probe's second worker", lambda: second in pods)
                run.ups.append(pods[second].first_seen - started)
            else:
                watch.wait("the deletion", lambda: second not in pods or bool(pods[second].deleting_at))
                record = pods.get(second)
                run.downs.append(
                    (record.deleting_at if record and record.deleting_at else time.monotonic()) - started
                )
                watch.wait("the second worker to go", lambda: second not in pods)
            time.sleep(0.5)


def wait_quiet(pid: int, timeout: float = 300.0) -> float:
    """Waits until the process used under a tenth of a core over 2 s; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds({"p": pid}).get("p", 0.0)
        time.sleep(2.0)
        if cpu_seconds({"p": pid}).get("p", 0.0) - before < 0.2:
            break
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------- the report


def latency_line(label: str, values: list[float]) -> str:
    if not values:
        return f"{label}: none"
    return (
        f"{label}: p50 {percentile(values, 0.5) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms over "
        f"{len(values)} ({' '.join(f'{value * 1000:.0f}' for value in values)} ms)"
    )


def report(run: Run, sampler: Sampler, machine_line: str) -> None:
    print(f"machine: {machine_line}")
    for fact in run.facts:
        print(fact)
    for phase in run.phases:
        print(f"{phase.name} ({phase.seconds:.1f} s):")
        print("\n".join(phase.lines))
    print(latency_line("scale-up, patch -> new worker pod seen", run.ups))
    print(latency_line("scale-down, patch -> worker seen being deleted", run.downs))
    peaks = ", ".join(f"{name} {peak:.0f} MiB" for name, peak in sampler.peaks.items())
    print(f"RSS peaks (sampled every {RSS_SAMPLE_S:.0f} s): {peaks}")
    verdicts(run, sampler)


def verdicts(run: Run, sampler: Sampler) -> None:
    changes = run.ups + run.downs
    slowest = f"took at most {max(changes) * 1000:.0f} ms" if changes else "was not timed"
    reconciles, passes = run.lifetime_reconciles, run.lifetime_passes
    print(decisions_line("every reconcile of the operator's life", reconciles))
    print(decisions_line("every scheduling pass of the operator's life", passes, "passes"))
    print(decisions_line("  their CPU time", run.lifetime_pass_cpu, "passes"))
    print(collections_line("  garbage collections", run.lifetime_collections, run.lifetime_cpu))
    slow = slow_windows(sampler.timeline, run.fill_started)
    print("decisions above 1 s, by time from the first apply (10 s scrapes): " + ("; ".join(slow) or "none"))
    within = all(h.count and h.count == h.at_most(DECISION_TARGET_S) for h in (reconciles, passes))
    print(
        f"target: every decision under {DECISION_TARGET_S:g} s: {'met' if within else 'NOT met'} (reconciles "
        f"and scheduling passes, as far as the 1 s bucket says); a scale change (its reconcile, a pass, the "
        f"other jobs' reconciles, a pod write) {slowest}"
    )
    peak = max(sampler.peaks.get("operator", 0.0), run.rss_idle)
    print(f"target: operator memory under {MEMORY_TARGET_MIB:.0f} MiB: peak {peak:.0f} MiB "
          f"(idle {run.rss_idle:.0f} MiB): {'met' if peak < MEMORY_TARGET_MIB else 'NOT met'}")  # fmt: skip


# ---------------------------------------------------------------------------------------------- the run


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000, help="GPU nodes of 8 GPUs (default 5000)")
    parser.add_argument("--jobs", type=int, default=2000, help="TrainingJobs (default 2000)")
    parser.add_argument(
        "--changes", type=int, default=10, help="scale changes of the probe job (default 10; 0: no probe)"
    )
    parser.add_argument("--steady-seconds", type=float, default=60.0, help="quiet phase length (default 60)")
    parser.add_argument("--heartbeat-seconds", type=float, help="node heartbeat interval (default: by size)")
    parser.add_argument("--resync-seconds", type=float, help="the operator's --resync-seconds (its default)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT_S,
        help="for the fill to settle (3600 s); then it reports what it saw",
    )
    parser.add_argument("--operator-log", type=Path, help="copy the operator's log here at the end")
    parser.add_argument(
        "--gang-timeout-seconds",
        type=int,
        help="the jobs' spec.scheduling.gangTimeoutSeconds (default: the API's 300 s); kube-scheduler on a "
        "2-core machine places about 3 pods a second at 5,000 nodes, so gangs admitted into its backlog "
        "time out and are made again unless this is longer than the backlog",
    )
    args = parser.parse_args()
    if args.nodes < 1 or args.jobs < 1 or args.changes < 0 or not 0 < args.nodes < 8192:
        parser.error("--nodes must be 1 to 8191, --jobs at least 1, --changes at least 0")
    if args.gang_timeout_seconds is not None and args.gang_timeout_seconds < 1:
        parser.error("--gang-timeout-seconds must be at least 1 (spec.scheduling.gangTimeoutSeconds)")
    return args


@contextmanager
def horizon_operator(sandbox: Sandbox, namespace: str, resync: float | None) -> Iterator[Operator]:
    """scale_500's `kubefit run`, with --resync-seconds when asked (through its command line)."""
    if resync is None:
        with running_operator(sandbox, namespace, None) as operator:
            yield operator
        return
    plain = scale_500.operator_command
    scale_500.operator_command = lambda namespace, profile_dir: [
        *plain(namespace, profile_dir),
        "--resync-seconds",
        str(resync),
    ]
    try:
        with running_operator(sandbox, namespace, None) as operator:
            yield operator
    finally:
        scale_500.operator_command = plain


def build_cluster(
    sandbox: Sandbox, args: argparse.Namespace, scratch: Path, progress: Callable[[str], None]
) -> list[str]:
    interval = heartbeat_interval(args.nodes, args.heartbeat_seconds)
    start_agent(sandbox, cluster_file(scratch), heartbeat_interval_s=interval)
    started = time.monotonic()
    names = create_nodes(sandbox, args.nodes, progress)
    created = time.monotonic() - started
    ready = wait_nodes_ready(sandbox, names)
    progress(
        f"{len(names)} nodes created in {created:.1f} s, {ready} Ready after {time.monotonic() - started:.1f} s"
    )
    sandbox.kubectl("apply", "-f", str(ROOT / "crds" / "trainingjob.yaml"))
    sandbox.kubectl("wait", "--for", "condition=established", "crd/trainingjobs.kubefit.dev")
    return [f"nodes: {args.nodes} of {GPUS_PER_NODE} GPUs ({', '.join(f'{count} {acc}' for _, acc, count in pool_sizes(args.nodes))}) "
            f"+ 1 probe node; created in {created:.1f} s, all {ready} Ready after {time.monotonic() - started:.1f} s",
            f"node heartbeats: every {interval:.0f} s, {2 * (args.nodes + 1) / interval:.0f} writes/s "
            f"(node status + Lease), in batches spread over the interval"]  # fmt: skip


def nodes_ready_line(sandbox: Sandbox) -> str:
    listed, _ = list_sandbox_nodes(core_api(new_api_client(sandbox.kubeconfig_path)))
    ready = sum(1 for node in listed if not node_needs_fixing(node))
    return f"nodes Ready at the end: {ready} of {len(listed)}"


def measure(run: Run, args: argparse.Namespace, progress: Callable[[str], None]) -> Sampler:
    names = [f"job-{index:05d}" for index in range(args.jobs)]
    progress(f"operator up; idle after {wait_quiet(run.operator.pid()):.1f} s more")
    run.pids = component_pids(run.sandbox, run.operator)
    run.rss_idle = run.operator.rss_mib()
    run.facts.append(f"operator idle (nodes listed): RSS {run.rss_idle:.1f} MiB")
    sampler = Sampler(
        {"operator": run.pids["operator"], "kube-apiserver": run.pids["kube-apiserver"]}, run.metrics_text
    )
    gang_timeout = args.gang_timeout_seconds
    run.facts.append(f"the jobs' gangTimeoutSeconds: {gang_timeout or 'the default, 300'} s")
    fill(run, names, args.timeout, progress, gang_timeout)
    progress(f"fill over; steady for {args.steady_seconds:.0f} s")
    steady(run, args.steady_seconds)
    if args.changes:
        progress(f"scaling the probe job {args.changes} times")
        try:
            probe(run, args.changes)
        except TimeoutError as error:
            # After a fill that did not settle, the probe's own worker can wait in kube-scheduler's backlog past
            # the watch's limit; what was measured so far is still reported.
            run.facts.append(f"probe: not finished ({error}); {len(run.ups) + len(run.downs)} changes timed")
            progress(f"probe not finished: {error}")
    else:
        run.facts.append("probe: not run (--changes 0)")
    sampler.stopped.set()
    text = run.metrics_text()
    run.lifetime_reconciles = parse_histogram(text, RECONCILE_HISTOGRAM)
    run.lifetime_passes = parse_histogram(text, PASS_HISTOGRAM)
    run.lifetime_pass_cpu = parse_histogram(text, PASS_CPU_HISTOGRAM)
    run.lifetime_collections = collections_by_generation(text)
    run.lifetime_cpu = cpu_seconds({"operator": run.pids["operator"]}).get("operator", 0.0)
    run.facts.append(nodes_ready_line(run.sandbox))
    return sampler


def main() -> int:
    args = arguments()
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - began:7.1f} s] {message}", file=sys.stderr, flush=True)

    scale_500.stop_cleanly_on_signals()
    machine_before = machine()
    with (
        tempfile.TemporaryDirectory() as scratch,
        ephemeral_sandbox("bench-horizon", log=lambda _: None) as sandbox,
    ):
        facts = build_cluster(sandbox, args, Path(scratch), progress)
        api_client = new_api_client(sandbox.kubeconfig_path)
        bench = Bench(sandbox, api_client, PodWatch(api_client))
        namespace = create_namespace(bench.core, "horizon")
        with horizon_operator(sandbox, namespace, args.resync_seconds) as operator:
            run = Run(sandbox, operator, bench, facts=facts)
            try:
                sampler = measure(run, args, progress)
            finally:
                if args.operator_log:
                    shutil.copyfile(operator.log, args.operator_log)
        bench.watch.stopped.set()
    progress("operator stopped, sandbox stopped and deleted")
    report(run, sampler, f"{machine_before} at the start; {machine()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
