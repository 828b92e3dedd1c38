"""500 TrainingJobs through the operator against a plain client writing the same objects, side by side.

On a throwaway sandbox with enough simulated 8 x H100 nodes for every worker, in one run:

1. warm-up: one job through the operator, whose Service and worker Pod are the shapes the plain side
   writes (copied, renamed; the operator's owner reference dropped);
2. plain side: one client writes, for each of N jobs, the TrainingJob, its headless Service and its
   worker Pod (a namespace no operator watches); the clock runs from the first write to the pod watch
   event that shows the last pod. Its namespace is then deleted and its pods waited out, so that both
   sides find the same free devices;
3. operator side: the same client applies the N one-worker TrainingJobs one after another; the clock
   runs from the first apply to the pod watch event that shows the last worker pod (the operator creates
   them). Ratio = operator side / plain side (issue 11's target: at most 1.5x);
4. the operator's resident memory (VmRSS of its process) before the jobs, as each fifth of them has its
   pod, and once all N run and it has been quiet for a few seconds: the slope per 1,000 jobs;
5. a single change while the N jobs exist: an extra elastic job (minimum 1, maximum 2, no checkpoint
   grace), once its first worker runs, scaled through the scale subresource, as `kubectl scale` does, between 1 and 2 workers; the
   clock runs from the patch to the pod watch event that shows the new worker (scale-up) or the removed
   worker being deleted (scale-down). p50 and p99 (targets: 200 ms and 1 s);
6. --rounds R (default 3): R - 1 more rounds of steps 2 and 3, each side in a fresh namespace (the last
   round's operator namespace deleted first, and the cluster quiet before each side), with the same
   operator still running. The plain side's time moved from 11 to 30 s across runs on one machine, so
   the verdict is on the median of the rounds' ratios; every round's figures are printed.

Both sides use one kubernetes client in this process, one call after another, and one pod watch (opened
before anything is written) that timestamps events as they arrive.

    .venv/bin/python benchmarks/scale_500.py [--jobs 500] [--changes 50] [--rounds 3] [--profile DIR [--cpu-only]]

--profile DIR runs the operator under py-spy (CPU, every thread; `pip install py-spy`, or set PY_SPY)
and tracemalloc (benchmarks/profiled_operator.py), and writes DIR/operator-cpu.txt (py-spy's collapsed
stacks), DIR/tracemalloc-*.txt and DIR/apiserver-requests.txt. Its timings are the profiled operator's.
With --cpu-only the operator runs under py-spy alone: tracemalloc slows every allocation, so the CPU
shares it gives are skewed towards allocating code (the passes of a 500-job side averaged 682 ms with it and
19 ms without it, one run each on 2 December 2026).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.ephemeral import ephemeral_sandbox
from kubefit_sandbox.kubeclient import WatchExpired, new_api_client, watch_events
from kubefit_sandbox.nodeagent import start_agent
from operator_process import wait_until_serving  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "kubefit.dev", "v1alpha1", "trainingjobs"
JOB_LABEL = "kubefit.dev/job"
FAST_SHUTDOWN = {"sandbox.kubefit.dev/shutdown-seconds": "0"}
GPUS_PER_NODE = 8
TIMEOUT_S = 900.0
# Keys of Operator.reconciles() for the scheduling passes' count and total seconds.
PASSES, PASS_SECONDS = "scheduling passes", "scheduling pass seconds"
# kubefit_worker_binds_total by placement, as keys of Operator.reconciles (the operator's BIND_PLACEMENTS)
BINDS = {f"worker binds {placement}": placement for placement in ("counted", "elsewhere")}
RATIO_TARGET, RSS_TARGET_MIB = 1.5, 200.0
P50_TARGET_S, P99_TARGET_S = 0.2, 1.0
SERVER_FIELDS = (
    "namespace",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "ownerReferences",
    "generation",
)


def job_manifest(name: str, elastic: bool = False) -> dict[str, Any]:
    """A one-worker job of one H100 (1B parameters fit); the elastic one scales between 1 and 2."""
    spec: dict[str, Any] = {
        "framework": "pytorch",
        "template": {
            "metadata": {"annotations": dict(FAST_SHUTDOWN)},
            "spec": {
                "containers": [{"name": "trainer", "image": "ghcr.io/acme/train:1", "command": ["train"]}]
            },
        },
        "model": {"parameters": "1B"},
        "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
        "workers": {"replicas": 1},
    }
    if elastic:
        spec["workers"] = {"replicas": 1, "minReplicas": 1, "maxReplicas": 2}
        spec["elastic"] = {"enabled": True, "checkpointGracePeriodSeconds": 0}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def job_name(index: int) -> str:
    return f"job-{index:05d}"


# ---------------------------------------------------------------------------------------------- the watch


@dataclass
class PodRecord:
    first_seen: float
    deleting_at: float | None = None
    running: bool = False


def record_pod(pods: dict[tuple[str, str], PodRecord], kind: str, pod: dict[str, Any], seen: float) -> None:
    """One watch event (ADDED, MODIFIED, DELETED) of `pod`, seen at `seen`, into `pods`."""
    metadata = pod["metadata"]
    key = (metadata.get("namespace", ""), metadata["name"])
    if kind == "DELETED":
        pods.pop(key, None)
        return
    record = pods.setdefault(key, PodRecord(seen))
    if metadata.get("deletionTimestamp") and record.deleting_at is None:
        record.deleting_at = seen
    record.running = (pod.get("status") or {}).get("phase") == "Running"


def relist(pods: dict[tuple[str, str], PodRecord], items: list[dict[str, Any]], seen: float) -> None:
    """A full list into `pods`: the listed pods recorded (those known keep when they were first seen), the
    others dropped (deleted while no watch was open)."""
    listed = set()
    for pod in items:
        record_pod(pods, "ADDED", pod, seen)
        listed.add((pod["metadata"].get("namespace", ""), pod["metadata"]["name"]))
    for key in [key for key in pods if key not in listed]:
        del pods[key]


class PodWatch:
    """Every pod of the cluster: when it was first seen, when first seen being deleted, and which exist."""

    def __init__(self, api_client: Any) -> None:
        self.core = client.CoreV1Api(api_client)
        self.pods: dict[tuple[str, str], PodRecord] = {}
        self.changed = threading.Condition()
        self.stopped = threading.Event()
        self._ready = threading.Event()
        threading.Thread(target=self._loop, name="pod-watch", daemon=True).start()
        if not self._ready.wait(30):
            raise TimeoutError("the pod watch did not start")

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:
                listed = json.loads(self.core.list_pod_for_all_namespaces(_preload_content=False).data)
                with self.changed:
                    # After a broken watch, pods deleted meanwhile are in no event: the list replaces the records.
                    relist(self.pods, listed["items"], time.monotonic())
                    self.changed.notify_all()
                self._ready.set()
                version = listed["metadata"]["resourceVersion"]
                for event in watch_events(self.core.list_pod_for_all_namespaces, version):
                    version = event["object"]["metadata"].get("resourceVersion", version)
                    self._record(event["type"], event["object"])
            except Exception as error:  # noqa: BLE001 - a dropped watch is listed again
                if self.stopped.is_set():
                    return
                if not isinstance(error, WatchExpired):
                    print(f"pod watch: {type(error).__name__}: {error}; listing again", file=sys.stderr)
                time.sleep(0.1)

    def _record(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "BOOKMARK":
            return
        with self.changed:
            record_pod(self.pods, kind, pod, time.monotonic())
            self.changed.notify_all()

    def wait(self, what: str, done: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
        with self.changed:
            if not self.changed.wait_for(done, timeout):
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    def all_running(self, namespace: str, count: int) -> None:
        def done() -> bool:
            running = [record.running for (ns, _), record in self.pods.items() if ns == namespace]
            return len(running) >= count and all(running)

        self.wait(f"{count} pods of {namespace} to run", done)

    def count(self, namespace: str) -> int:
        return sum(1 for ns, _ in self.pods if ns == namespace)

    def last_seen(self, namespace: str, names: list[str]) -> float:
        """Waits until every pod in `names` was seen; returns when the last of them was first seen."""
        wanted = [(namespace, name) for name in names]
        self.wait(f"{len(names)} pods in {namespace}", lambda: all(key in self.pods for key in wanted))
        return max(self.pods[key].first_seen for key in wanted)


# ---------------------------------------------------------------------------------------------- the operator


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    namespace: str
    profile_dir: Path | None
    log: Path
    trace_memory: bool = True  # under --profile: tracemalloc too (not with --cpu-only)
    snapshots: int = 0

    def pid(self) -> int:
        """The operator's own PID (under py-spy, its child's)."""
        if self.profile_dir is None:
            return self.process.pid
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return int(children[0])

    def reconciles(self) -> dict[str, float]:
        """kubefit_reconcile_total by trigger so far, and the scheduling passes' count and seconds (as
        PASSES and PASS_SECONDS) and worker binds by placement (the keys of BINDS), from the operator's
        /metrics."""
        log = self.log.read_text(errors="replace")
        url = log.split("metrics on ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("kubefit_reconcile_total{"):
                trigger = line.split('trigger="', 1)[1].split('"', 1)[0]
                counts[trigger] = counts.get(trigger, 0.0) + float(line.rsplit(" ", 1)[1])
            elif line.startswith("kubefit_scheduling_pass_duration_seconds_count "):
                counts[PASSES] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("kubefit_scheduling_pass_duration_seconds_sum "):
                counts[PASS_SECONDS] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("kubefit_worker_binds_total{"):
                placement = line.split('placement="', 1)[1].split('"', 1)[0]
                counts[f"worker binds {placement}"] = float(line.rsplit(" ", 1)[1])
        return counts

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def snapshot(self) -> None:
        """Under --profile: asks the operator for a tracemalloc snapshot (benchmarks/profiled_operator.py)."""
        if self.profile_dir is not None and self.trace_memory:
            self.snapshots += 1
            os.kill(self.pid(), signal.SIGUSR2)
            deadline = time.monotonic() + 120
            path = self.profile_dir / f"tracemalloc-{self.snapshots}.txt"
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.2)


OPERATOR_NAMESPACES = "bench-operator"  # the operator watches every namespace named bench-operator-*


def operator_command(namespace: str, profile_dir: Path | None, trace_memory: bool = True) -> list[str]:
    args = ["run", "--namespace", namespace, "--metrics-port", "0", "--liveness-port", "0"]
    args += ["--checkpoint-port", "0", "--bind-address", "127.0.0.1"]
    plain = [sys.executable, "-m", "kubefit.cli.main"]
    if profile_dir is None:
        return [*plain, *args]
    py_spy = os.environ.get("PY_SPY") or shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    wrapper = [sys.executable, str(Path(__file__).with_name("profiled_operator.py")), str(profile_dir)]
    if not trace_memory:
        wrapper = plain  # tracemalloc slowed the passes of a 500-job side from 19 to 682 ms: CPU shares skew
    output = str(profile_dir / "operator-cpu.txt")
    # --nonblocking: py-spy does not pause the operator to sample it; --threads: one stack per thread.
    return [py_spy, "record", "--format", "raw", "--rate", "50", "--nonblocking", "--threads", "-o", output,
            "--", *wrapper, *args]  # fmt: skip


@contextmanager
def running_operator(
    sandbox: Sandbox,
    namespace: str,
    profile_dir: Path | None,
    watched: str | None = None,
    trace_memory: bool = True,
) -> Iterator[Operator]:
    """`kubefit run` watching `watched` (a namespace pattern; default: `namespace` alone)."""
    log = sandbox.state_dir / "logs" / "bench-scale-operator.log"
    env = {**os.environ, **sandbox.env(), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        operator_command(watched or namespace, profile_dir, trace_memory),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    operator = Operator(process, namespace, profile_dir, log, trace_memory)
    try:
        wait_until_serving(process, log, timeout=120)
        yield operator
    finally:
        # py-spy writes its profile when its child exits: stop the operator itself (SIGINT under py-spy).
        os.kill(operator.pid(), signal.SIGTERM) if process.poll() is None else None
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# ---------------------------------------------------------------------------------------------- the cluster


def cluster_file(directory: Path, jobs: int) -> Path:
    """One pool of 8 x H100 nodes with a device for every worker (both sides never hold them at once)."""
    nodes = math.ceil((jobs + 4) / GPUS_PER_NODE) + 1
    pool = {"name": "scale", "accelerator": "nvidia-h100-80gb", "nodes": nodes}
    pool |= {"acceleratorsPerNode": GPUS_PER_NODE, "cpu": 96, "memory": "1Ti", "pods": 250}
    path = directory / "cluster.yaml"
    path.write_text(yaml.safe_dump({"pools": [pool]}))
    return path


def create_namespace(core: client.CoreV1Api, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:4]}"
    core.create_namespace({"metadata": {"name": name}})
    deadline = time.monotonic() + 60
    while not core.list_namespaced_service_account(name, field_selector="metadata.name=default").items:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no default ServiceAccount in {name}")
        time.sleep(0.1)
    return name


def request_counts(sandbox: Sandbox) -> dict[str, float]:
    """apiserver_request_total by verb, resource and (when not 2xx) answer code, all clients, from the API server's
    /metrics."""
    status, body = sandbox.api_get("/metrics", timeout=30)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    counts: dict[str, float] = {}
    for line in body.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.rindex("}")].split(","))
        labels = {key: value.strip('"') for key, value in labels.items()}
        if labels.get("verb") in ("WATCH", "LIST") and labels.get("resource") != "trainingjobs":
            continue
        resource = labels.get("resource", "") + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        code = labels.get("code", "")
        # Counted apart when not 2xx: a 409 or a 404 wrote nothing.
        key = f"{labels.get('verb')} {resource}" + ("" if code.startswith("2") else f" ({code})")
        counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far (/proc/PID/stat fields 14 and 15)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def cpu_difference(before: dict[str, float], after: dict[str, float], wall: float) -> str:
    """CPU seconds per process over a side, and as a share of the side's wall time on all cores."""
    lines = [
        f"  {name:<24} {after[name] - before.get(name, 0.0):6.1f} s CPU"
        f" ({(after[name] - before.get(name, 0.0)) / wall:4.0%} of one core)"
        for name in sorted(after, key=lambda name: before.get(name, 0.0) - after[name])
    ]
    total = sum(after.values()) - sum(before.get(name, 0.0) for name in after)
    lines.append(f"  {'all of them':<24} {total:6.1f} s CPU over {wall:.1f} s on {os.cpu_count()} cores")
    return "\n".join(lines)


QUIET_SHARE = 0.3  # of one core, all processes but this client together: heartbeats and resyncs only
QUIET_WINDOW_S = 3.0


def wait_until_quiet(pids: dict[str, int], timeout: float = TIMEOUT_S) -> float:
    """Waits until the processes but this client used under QUIET_SHARE of a core over QUIET_WINDOW_S, and
    returns the seconds waited: the controller-manager works off a deleted namespace (its endpoints, events,
    garbage) long after the namespace is gone, and a side that starts then would pay for the other's."""
    others = {name: pid for name, pid in pids.items() if name != "benchmark client"}
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(others)
        time.sleep(QUIET_WINDOW_S)
        after = cpu_seconds(others)
        if sum(after.values()) - sum(before.get(name, 0.0) for name in after) < QUIET_SHARE * QUIET_WINDOW_S:
            return time.monotonic() - started
    raise TimeoutError(f"the cluster did not go quiet within {timeout:.0f} s")


def component_pids(sandbox: Sandbox, operator: Operator) -> dict[str, int]:
    """The processes that share the machine during a side: the control plane, the node agent, the
    operator and this benchmark's client."""
    state = json.loads(sandbox.state_file.read_text())
    pids = {name: int(proc["pid"]) for name, proc in (state.get("processes") or {}).items()}
    agent = sandbox.state_dir / "agent.pid"
    if agent.exists():
        pids["node agent"] = int(agent.read_text().split()[0])
    pids["operator"] = operator.pid()
    pids["benchmark client"] = os.getpid()
    return pids


def count_difference(before: dict[str, float], after: dict[str, float], jobs: int) -> str:
    rows = sorted(((after[key] - before.get(key, 0.0), key) for key in after), reverse=True)
    return "\n".join(
        f"    {count:7.0f}  {count / jobs:5.2f}/job  {key}" for count, key in rows if count >= jobs / 10
    )


# ---------------------------------------------------------------------------------------------- the sides


@dataclass
class Shapes:
    """The operator's Service and worker Pod for the warm-up job, as templates with the job's name."""

    service: str
    pod: str
    placeholder: str

    def service_for(self, name: str) -> dict[str, Any]:
        return json.loads(self.service.replace(self.placeholder, name))

    def pod_for(self, name: str) -> dict[str, Any]:
        return json.loads(self.pod.replace(self.placeholder, name))


def _without_server_fields(item: dict[str, Any]) -> dict[str, Any]:
    for key in SERVER_FIELDS:
        item["metadata"].pop(key, None)
    item.pop("status", None)
    spec = item["spec"]
    spec.pop("nodeName", None)
    # The ServiceAccount admission plugin adds the token volume again, as it did for the worker.
    tokens = {
        volume["name"] for volume in spec.get("volumes", []) if volume["name"].startswith("kube-api-access")
    }
    if "volumes" in spec:
        spec["volumes"] = [volume for volume in spec["volumes"] if volume["name"] not in tokens]
    for container in spec.get("containers", []):
        container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m["name"] not in tokens]
    return item


def done(response: Any) -> None:
    """Reads a raw answer to its end and hands its connection back to the pool (no model is built)."""
    response.data  # noqa: B018 - reading is the point
    response.release_conn()


@dataclass
class Bench:
    sandbox: Sandbox
    api_client: Any
    watch: PodWatch
    shapes: Shapes | None = None
    core: client.CoreV1Api = field(init=False)
    custom: client.CustomObjectsApi = field(init=False)

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    def apply_job(self, namespace: str, manifest: dict[str, Any]) -> None:
        done(
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, manifest, _preload_content=False
            )
        )

    def warm_up(self, namespace: str) -> Shapes:
        """One job through the operator; its Service and Pod become the plain side's shapes."""
        name = "job-warm"
        self.apply_job(namespace, job_manifest(name))
        self.watch.last_seen(namespace, [f"{name}-worker-0"])
        services = self.core.list_namespaced_service(namespace, _preload_content=False)
        service = next(
            item for item in json.loads(services.data)["items"] if name in item["metadata"]["name"]
        )
        pod = json.loads(
            self.core.read_namespaced_pod(f"{name}-worker-0", namespace, _preload_content=False).data
        )
        shapes = Shapes(
            json.dumps(_without_server_fields(service)), json.dumps(_without_server_fields(pod)), name
        )
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        self.watch.wait(
            "the warm-up pod to go", lambda: (namespace, f"{name}-worker-0") not in self.watch.pods
        )
        return shapes

    def plain_side(self, namespace: str, jobs: int, shapes: Shapes) -> tuple[float, float]:
        """(seconds to the last pod seen, seconds the writes took)."""
        started = time.monotonic()
        for index in range(jobs):
            name = job_name(index)
            self.apply_job(namespace, job_manifest(name))
            done(
                self.core.create_namespaced_service(
                    namespace, shapes.service_for(name), _preload_content=False
                )
            )
            done(self.core.create_namespaced_pod(namespace, shapes.pod_for(name), _preload_content=False))
        written = time.monotonic()
        last = self.watch.last_seen(namespace, [f"{job_name(index)}-worker-0" for index in range(jobs)])
        return last - started, written - started

    def operator_side(self, namespace: str, jobs: int) -> tuple[float, float]:
        started = time.monotonic()
        for index in range(jobs):
            self.apply_job(namespace, job_manifest(job_name(index)))
        applied = time.monotonic()
        last = self.watch.last_seen(namespace, [f"{job_name(index)}-worker-0" for index in range(jobs)])
        return last - started, applied - started

    def delete_namespace(self, namespace: str) -> float:
        started = time.monotonic()
        self.core.delete_namespace(namespace)
        self.watch.wait(f"the pods of {namespace} to go", lambda: self.watch.count(namespace) == 0)
        deadline = time.monotonic() + TIMEOUT_S
        # Until the namespace itself is gone: its controller's clean-up calls stay out of the operator side.
        while self.core.list_namespace(field_selector=f"metadata.name={namespace}").items:
            if time.monotonic() > deadline:
                raise TimeoutError(f"namespace {namespace} is still there")
            time.sleep(0.5)
        return time.monotonic() - started

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """What `kubectl scale` does: a patch of the scale subresource."""
        done(
            self.custom.patch_namespaced_custom_object_scale(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"spec": {"replicas": replicas}},
                _preload_content=False,
            )
        )

    def change_latencies(self, namespace: str, changes: int) -> tuple[list[float], list[float]]:
        """Scale-up and scale-down latencies of the elastic probe job, `changes` changes in all."""
        name, pods = "probe", self.watch.pods
        first, second = (namespace, f"{name}-worker-0"), (namespace, f"{name}-worker-1")
        self.apply_job(namespace, job_manifest(name, elastic=True))
        # A running job is changed, not one being created: its worker runs and its status has settled.
        self.watch.wait("the probe's first worker to run", lambda: first in pods and pods[first].running)
        time.sleep(2.0)
        ups: list[float] = []
        downs: list[float] = []
        for change in range(changes):
            up = change % 2 == 0
            started = time.monotonic()
            self.scale(namespace, name, 2 if up else 1)
            if up:
                self.watch.wait("the probe's second worker", lambda: second in pods)
                ups.append(pods[second].first_seen - started)
                time.sleep(0.5)  # untimed: the new worker starts, as a real one would, before the next change
            else:
                self.watch.wait(
                    "the second worker's deletion",
                    lambda: second not in pods or bool(pods[second].deleting_at),
                )
                record = pods.get(second)
                downs.append(
                    (record.deleting_at if record and record.deleting_at else time.monotonic()) - started
                )
                self.watch.wait("the second worker to go", lambda: second not in pods)  # untimed
                time.sleep(0.5)
        return ups, downs


class RssSampler:
    """The operator's VmRSS with the count of its namespace's pods, every half second."""

    def __init__(self, operator: Operator, watch: PodWatch, namespace: str) -> None:
        self.samples: list[tuple[int, float]] = []
        self.stopped = threading.Event()

        def loop() -> None:
            while not self.stopped.wait(0.5):
                self.samples.append((watch.count(namespace), operator.rss_mib()))

        threading.Thread(target=loop, name="rss", daemon=True).start()

    def at(self, pods: int) -> float | None:
        """RSS in the first sample that saw at least `pods` pods."""
        return next((rss for count, rss in self.samples if count >= pods), None)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least `fraction` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def latency_line(label: str, values: list[float]) -> str:
    if not values:
        return f"{label}: none"
    return (
        f"{label}: p50 {percentile(values, 0.5) * 1000:.0f} ms, p99 {percentile(values, 0.99) * 1000:.0f} ms, "
        f"max {max(values) * 1000:.0f} ms over {len(values)} changes"
    )


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "NOT met"


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Figures:
    jobs: int
    plain: tuple[float, float] = (0.0, 0.0)  # (to the last pod, the writes)
    operator: tuple[float, float] = (0.0, 0.0)  # (to the last worker pod, the applies)
    cleanup_s: float = 0.0
    rss_idle: float = 0.0
    rss_settled: float = 0.0
    rss_samples: list[tuple[int, float]] = field(default_factory=list)
    requests_plain: str = ""
    requests_operator: str = ""
    cpu_plain: str = ""
    cpu_operator: str = ""
    reconciles: str = ""
    ups: list[float] = field(default_factory=list)
    downs: list[float] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)  # every round's sides, the first one's too


@dataclass(frozen=True)
class Round:
    plain_s: float  # to the last pod
    operator_s: float  # to the last worker pod
    plain_cpu_s: float  # all processes but this client, over the side
    operator_cpu_s: float

    @property
    def ratio(self) -> float:
        return self.operator_s / self.plain_s


def _cpu_total(before: dict[str, float], after: dict[str, float]) -> float:
    return sum(after[name] - before.get(name, 0.0) for name in after if name != "benchmark client")


def another_round(
    bench: Bench, operator: Operator, figures: Figures, previous: str, progress: Callable[[str], None]
) -> str:
    """Steps 2 and 3 again, in fresh namespaces, after `previous` (the last operator namespace) is deleted;
    returns the new operator namespace."""
    pids = component_pids(bench.sandbox, operator)
    bench.delete_namespace(previous)
    plain_ns = create_namespace(bench.core, "bench-plain")
    operator_ns = create_namespace(bench.core, OPERATOR_NAMESPACES)
    progress(f"round {len(figures.rounds) + 1}: quiet after {wait_until_quiet(pids):.1f} s")
    assert bench.shapes is not None, "the plain side copies the warm-up job's objects"
    count = figures.jobs
    cpu_before = cpu_seconds(pids)
    plain = bench.plain_side(plain_ns, count, bench.shapes)[0]
    plain_cpu = _cpu_total(cpu_before, cpu_seconds(pids))
    bench.watch.all_running(plain_ns, count)
    bench.delete_namespace(plain_ns)
    progress(f"plain side {plain:.1f} s; quiet after {wait_until_quiet(pids):.1f} s")
    cpu_before = cpu_seconds(pids)
    operated = bench.operator_side(operator_ns, count)[0]
    operator_cpu = _cpu_total(cpu_before, cpu_seconds(pids))
    bench.watch.all_running(operator_ns, count)
    progress(f"operator side {operated:.1f} s, ratio {operated / plain:.2f}x")
    figures.rounds.append(Round(plain, operated, plain_cpu, operator_cpu))
    return operator_ns


def run_sides(bench: Bench, operator: Operator, figures: Figures, progress: Callable[[str], None]) -> None:
    sandbox, core, jobs = bench.sandbox, bench.core, figures.jobs
    plain_ns, operator_ns = create_namespace(core, "bench-plain"), operator.namespace
    figures.rss_idle = operator.rss_mib()
    operator.snapshot()
    pids = component_pids(sandbox, operator)
    progress(f"quiet after {wait_until_quiet(pids):.1f} s")
    before = request_counts(sandbox)
    cpu_before = cpu_seconds(pids)
    assert bench.shapes is not None, "the plain side copies the warm-up job's objects"
    figures.plain = bench.plain_side(plain_ns, jobs, bench.shapes)
    plain_cpu = _cpu_total(cpu_before, cpu_seconds(pids))
    figures.cpu_plain = cpu_difference(cpu_before, cpu_seconds(pids), figures.plain[0])
    progress(f"plain side: {figures.plain[0]:.1f} s (writes {figures.plain[1]:.1f} s)")
    bench.watch.all_running(plain_ns, jobs)
    figures.requests_plain = count_difference(before, request_counts(sandbox), jobs)
    figures.cleanup_s = bench.delete_namespace(plain_ns)
    progress(f"plain side deleted in {figures.cleanup_s:.1f} s")
    progress(f"quiet after {wait_until_quiet(pids):.1f} s")
    before = request_counts(sandbox)
    sampler = RssSampler(operator, bench.watch, operator_ns)
    cpu_before, reconciles_before = cpu_seconds(pids), operator.reconciles()
    figures.operator = bench.operator_side(operator_ns, jobs)
    operator_cpu = _cpu_total(cpu_before, cpu_seconds(pids))
    figures.rounds.append(Round(figures.plain[0], figures.operator[0], plain_cpu, operator_cpu))
    figures.cpu_operator = cpu_difference(cpu_before, cpu_seconds(pids), figures.operator[0])
    progress(f"operator side: {figures.operator[0]:.1f} s (applies {figures.operator[1]:.1f} s)")
    bench.watch.all_running(operator_ns, jobs)
    time.sleep(10)  # the status patches and events of Running land
    figures.requests_operator = count_difference(before, request_counts(sandbox), jobs)
    reconciles = operator.reconciles()
    passes = {
        name: reconciles.pop(name, 0.0) - reconciles_before.pop(name, 0.0)
        for name in (PASSES, PASS_SECONDS, *BINDS)
    }
    figures.reconciles = "\n".join(
        f"  {trigger:<10} {reconciles[trigger] - reconciles_before.get(trigger, 0.0):6.0f}"
        f"  {(reconciles[trigger] - reconciles_before.get(trigger, 0.0)) / jobs:5.2f}/job"
        for trigger in sorted(
            reconciles, key=lambda trigger: reconciles_before.get(trigger, 0.0) - reconciles[trigger]
        )
        if reconciles[trigger] > reconciles_before.get(trigger, 0.0)
    )
    figures.reconciles += (
        f"\n  scheduling passes: {passes[PASSES]:.0f}, {passes[PASS_SECONDS]:.1f} s in all"
        f" (mean {passes[PASS_SECONDS] / max(passes[PASSES], 1) * 1000:.1f} ms)"
        f"\n  {binds_line(passes)}"
    )
    sampler.stopped.set()
    figures.rss_samples = sampler.samples
    figures.rss_settled = operator.rss_mib()
    operator.snapshot()


def binds_line(counts: dict[str, float]) -> str:
    """Workers bound where the last pass counted their job (no pass asked for), and elsewhere."""
    return "worker binds: " + ", ".join(
        f"{placement} {counts.get(key, 0.0):.0f}" for key, placement in BINDS.items()
    )


def report(figures: Figures, machine: str) -> None:
    jobs = figures.jobs
    ratio = figures.operator[0] / figures.plain[0]
    print(f"machine: {machine}")
    print(f"plain client, {jobs} TrainingJobs + {jobs} headless Services + {jobs} Pods written: "
          f"last pod seen after {figures.plain[0]:.1f} s (writes {figures.plain[1]:.1f} s)")  # fmt: skip
    print(f"operator, {jobs} one-worker TrainingJobs applied: last worker pod seen after "
          f"{figures.operator[0]:.1f} s (applies {figures.operator[1]:.1f} s)")  # fmt: skip
    print(f"ratio operator / plain client, this first round: {ratio:.2f}x")
    for number, side in enumerate(figures.rounds, 1):
        print(f"  round {number}: plain {side.plain_s:5.1f} s ({side.plain_cpu_s:5.1f} CPU-s), operator "
              f"{side.operator_s:5.1f} s ({side.operator_cpu_s:5.1f} CPU-s): {side.ratio:.2f}x, "
              f"CPU {side.operator_cpu_s / side.plain_cpu_s:.2f}x")  # fmt: skip
    median = statistics.median(side.ratio for side in figures.rounds)
    print(f"ratio, median of {len(figures.rounds)} rounds: {median:.2f}x "
          f"(target {RATIO_TARGET}x: {verdict(median, RATIO_TARGET)})")  # fmt: skip
    fifth = [
        (k * jobs // 5, figures_rss) for k in range(1, 6) if (figures_rss := _rss_at(figures, k * jobs // 5))
    ]
    print(f"operator RSS: {figures.rss_idle:.1f} MiB idle (warm-up job done), "
          + ", ".join(f"{rss:.1f} MiB at {count} pods" for count, rss in fifth)
          + f", {figures.rss_settled:.1f} MiB settled with {jobs} jobs running "
          f"(target {RSS_TARGET_MIB:.0f} MiB: {verdict(figures.rss_settled, RSS_TARGET_MIB)})")  # fmt: skip
    slope = (figures.rss_settled - figures.rss_idle) / jobs * 1000
    print(f"slope: {slope:.1f} MiB per 1,000 jobs (settled RSS minus idle RSS, per job, times 1,000)")
    print(latency_line("scale-up, patch -> new worker pod seen    ", figures.ups))
    print(latency_line("scale-down, patch -> worker being deleted ", figures.downs))
    for label, values in (("scale-ups", figures.ups), ("scale-downs", figures.downs)):
        print(f"  {label} in order, ms: {' '.join(f'{value * 1000:.0f}' for value in values)}")
    both = figures.ups + figures.downs
    print(latency_line("both directions                          ", both))
    if both:
        p50, p99 = percentile(both, 0.5), percentile(both, 0.99)
        print(f"targets p50 < {P50_TARGET_S * 1000:.0f} ms: {verdict(p50, P50_TARGET_S)}; "
              f"p99 < {P99_TARGET_S * 1000:.0f} ms: {verdict(p99, P99_TARGET_S)}")  # fmt: skip
    print(f"CPU while the plain side ran (to its last pod):\n{figures.cpu_plain}")
    print(f"CPU while the operator side ran (to its last worker pod):\n{figures.cpu_operator}")
    print(
        f"the operator's reconciles, by trigger, and its scheduling passes, over its side and the 10 s after:\n"
        f"{figures.reconciles}"
    )
    print(f"API requests while the plain side ran (all clients; per job):\n{figures.requests_plain}")
    print(f"API requests while the operator side ran (all clients; per job):\n{figures.requests_operator}")


def _rss_at(figures: Figures, pods: int) -> float | None:
    return next((rss for count, rss in figures.rss_samples if count >= pods), None)


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "unknown CPU")  # fmt: skip
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{os.cpu_count()} cores ({model}), load average {load}, Python {sys.version.split()[0]}"


def stop_cleanly_on_signals() -> None:
    """SIGTERM (and SIGINT, which a shell ignores in a background job) raise SystemExit, so the `finally`s
    stop the operator and delete the sandbox instead of leaving them running."""
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda received, frame: sys.exit(128 + received))


def main() -> int:
    stop_cleanly_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="TrainingJobs on each side (default 500)")
    parser.add_argument("--changes", type=int, default=50, help="scale changes of the probe job (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both sides (default 3; step 6)")
    parser.add_argument("--profile", type=Path, help="run the operator under py-spy and tracemalloc")
    parser.add_argument(
        "--cpu-only", action="store_true", help="with --profile: py-spy alone, no tracemalloc"
    )
    args = parser.parse_args()
    if args.jobs < 1 or args.changes < 0 or args.rounds < 1:
        parser.error("--jobs and --rounds must be at least 1 and --changes at least 0")
    if args.cpu_only and args.profile is None:
        parser.error("--cpu-only goes with --profile DIR")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    figures = Figures(args.jobs)
    machine_before = machine()
    with (
        tempfile.TemporaryDirectory() as scratch,
        ephemeral_sandbox("bench-scale", log=lambda _: None) as sandbox,
    ):
        start_agent(sandbox, cluster_file(Path(scratch), args.jobs))
        sandbox.kubectl("apply", "-f", str(ROOT / "crds" / "trainingjob.yaml"))
        sandbox.kubectl("wait", "--for", "condition=established", "crd/trainingjobs.kubefit.dev")
        api_client = new_api_client(sandbox.kubeconfig_path)
        bench = Bench(sandbox, api_client, PodWatch(api_client))
        namespace = create_namespace(bench.core, OPERATOR_NAMESPACES)
        watched = f"{OPERATOR_NAMESPACES}-*"
        with running_operator(sandbox, namespace, args.profile, watched, not args.cpu_only) as operator:
            progress(f"sandbox, {args.jobs} jobs' nodes and the operator up ({sandbox.state_dir})")
            bench.shapes = bench.warm_up(namespace)
            run_sides(bench, operator, figures, progress)
            progress(f"settled: {figures.rss_settled:.1f} MiB; scaling the probe job {args.changes} times")
            figures.ups, figures.downs = bench.change_latencies(namespace, args.changes)
            for _ in range(args.rounds - 1):
                namespace = another_round(bench, operator, figures, namespace, progress)
            if args.profile:
                (args.profile / "apiserver-requests.txt").write_text(
                    f"plain side\n{figures.requests_plain}\noperator side\n{figures.requests_operator}\n"
                )
        bench.watch.stopped.set()
    progress("operator stopped, sandbox stopped and deleted")
    report(figures, f"{machine_before} at the start; {machine()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
