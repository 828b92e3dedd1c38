"""Apply-to-Running time of examples/quickstart.yaml through the operator, against a bare-pod baseline.

The baseline is the floor the operator cannot beat: the operator's own worker pod, created directly
with kubectl, bound by the real scheduler and turned Running by the node agent. The ratio
(operator path / bare pod) is the operator's own cost: watch, sizing, Service and Pod creation.

The race is fair:
- a sandbox of its own (kubefit_sandbox.ephemeral, the example nodes): nothing else holds devices;
- fresh names for every run, so no run waits for a namesake that is still being deleted, and every
  run starts only once the previous run's pods are gone (the devices are free again);
- runs interleaved, operator, bare, operator, bare, ..., so that a change in machine load hits both;
- the bare pod has the worker's shape: it is the pod the operator created in the warm-up run (same
  containers, requests and limits, node affinity, tolerations, annotations), without its owner and
  the operator's labels;
- both sides are created with `kubectl apply`; the clock runs from just before it to the watch event
  (a watch opened before the run) that shows the last pod Running.

    .venv/bin/python benchmarks/quickstart_latency.py [--runs 10]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.ephemeral import ephemeral_sandbox
from kubefit_sandbox.kubeclient import WatchExpired, core_api, new_api_client, watch_events
from kubefit_sandbox.nodeagent import start_agent
from operator_process import wait_until_serving  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
CLUSTER_FILE = ROOT / "examples" / "sandbox" / "cluster.yaml"
# The node agent removes a deleted pod at once instead of after its 30 s grace period (both sides).
FAST_SHUTDOWN = {"sandbox.kubefit.dev/shutdown-seconds": "0"}
TIMEOUT_S = 120.0


class PodWatch:
    """When each pod of a namespace was first seen Running, and which pods exist, from one watch."""

    def __init__(self, sandbox: Sandbox, namespace: str) -> None:
        self.core = core_api(new_api_client(sandbox.kubeconfig_path))
        self.namespace = namespace
        self.running_at: dict[str, float] = {}
        self.present: set[str] = set()
        self.changed = threading.Condition()
        self.stopped = threading.Event()
        self._ready = threading.Event()
        threading.Thread(target=self._loop, name="pod-watch", daemon=True).start()
        if not self._ready.wait(30):
            raise TimeoutError("the pod watch did not start")

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:
                self._list_and_watch()
            except Exception as error:  # noqa: BLE001 - a dropped watch is listed again, as kubelets do
                if self.stopped.is_set():
                    return  # the sandbox is going away
                if not isinstance(error, WatchExpired):
                    print(f"pod watch: {type(error).__name__}: {error}; listing again", file=sys.stderr)
                time.sleep(0.1)

    def _list_and_watch(self) -> None:
        listed = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
        body = json.loads(listed.data)
        for pod in body["items"]:
            self._record({"type": "ADDED", "object": pod})
        with self.changed:
            self.present = {pod["metadata"]["name"] for pod in body["items"]}
        self._ready.set()
        version = body["metadata"]["resourceVersion"]
        while not self.stopped.is_set():
            for event in watch_events(self.core.list_namespaced_pod, version, namespace=self.namespace):
                version = event["object"]["metadata"]["resourceVersion"]
                self._record(event)

    def _record(self, event: dict[str, Any]) -> None:
        seen = time.monotonic()
        if event["type"] == "BOOKMARK":
            return
        pod = event["object"]
        name = pod["metadata"]["name"]
        with self.changed:
            if event["type"] == "DELETED":
                self.present.discard(name)
            else:
                self.present.add(name)
                running = (pod.get("status") or {}).get("phase") == "Running"
                if running and not pod["metadata"].get("deletionTimestamp"):
                    self.running_at.setdefault(name, seen)
            self.changed.notify_all()

    def wait(self, what: str, done: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
        with self.changed:
            if not self.changed.wait_for(done, timeout):
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    def all_running(self, names: list[str]) -> float:
        """Waits until every pod in `names` has run; returns when the last was first seen Running."""
        self.wait(f"{names} to run", lambda: all(name in self.running_at for name in names))
        return max(self.running_at[name] for name in names)

    def all_gone(self, names: list[str]) -> None:
        self.wait(f"{names} to be deleted", lambda: not self.present.intersection(names))


def kubectl(sandbox: Sandbox, *args: str, stdin: str | None = None) -> str:
    return sandbox.kubectl(*args, input=stdin, timeout=TIMEOUT_S).stdout


def quickstart(name: str) -> dict[str, Any]:
    manifest = yaml.safe_load(QUICKSTART.read_text())
    manifest["metadata"]["name"] = name
    template_metadata = manifest["spec"]["template"].setdefault("metadata", {})
    template_metadata.setdefault("annotations", {}).update(FAST_SHUTDOWN)
    return manifest


def bare_pod_like(worker: dict[str, Any], name: str) -> dict[str, Any]:
    """The operator's worker as a pod of its own: same spec, annotations and non-kubefit labels."""
    spec = copy.deepcopy(worker["spec"])
    spec.pop("nodeName", None)
    # The ServiceAccount admission plugin adds the token volume again, as it did for the worker.
    token_volumes = {v["name"] for v in spec.get("volumes", []) if v["name"].startswith("default-token-")}
    spec["volumes"] = [v for v in spec.get("volumes", []) if v["name"] not in token_volumes]
    for container in spec["containers"]:
        mounts = container.get("volumeMounts", [])
        container["volumeMounts"] = [m for m in mounts if m["name"] not in token_volumes]
    metadata = worker["metadata"]
    labels = {
        key: value for key, value in (metadata.get("labels") or {}).items() if "kubefit.dev/" not in key
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {**labels, "bench": name},
            "annotations": dict(metadata.get("annotations") or {}),
        },
        "spec": spec,
    }


def describe(worker: dict[str, Any], count: int) -> str:
    resources = worker["spec"]["containers"][0]["resources"]
    terms = worker["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    wanted = sorted({value for term in terms["nodeSelectorTerms"] for expression in term["matchExpressions"]
                     for value in expression.get("values", [])})  # fmt: skip
    return f"{count} worker(s), resources {json.dumps(resources)}, node affinity on {', '.join(wanted)}"


class Race:
    """Both sides of the race in one namespace, timed from the same watch."""

    def __init__(self, sandbox: Sandbox, namespace: str) -> None:
        self.sandbox, self.namespace = sandbox, namespace
        self.watch = PodWatch(sandbox, namespace)
        self.bare_template: dict[str, Any] | None = None
        self.worker_count = 0  # learnt in the warm-up run, so timed runs do not poll the job's status
        self.shape = ""
        self.cleanup_s: list[float] = []

    def operator_run(self, run: str) -> float:
        name = f"qs-{run}-{uuid.uuid4().hex[:4]}"
        started = time.monotonic()
        kubectl(self.sandbox, "apply", "-n", self.namespace, "-f", "-", stdin=json.dumps(quickstart(name)))
        self.worker_count = self.worker_count or self._worker_count(name)
        workers = [f"{name}-worker-{index}" for index in range(self.worker_count)]
        ended = self.watch.all_running(workers)
        if self.bare_template is None:
            self.bare_template = self._pod(workers[0])
            self.shape = describe(self.bare_template, self.worker_count)
        self._delete_and_wait("tj", name, workers)
        return ended - started

    def bare_run(self, run: str) -> float:
        assert self.bare_template is not None, "the bare pod copies a worker: run the operator first"
        name = f"bare-{run}-{uuid.uuid4().hex[:4]}"
        pod = bare_pod_like(self.bare_template, name)
        started = time.monotonic()
        kubectl(self.sandbox, "apply", "-n", self.namespace, "-f", "-", stdin=json.dumps(pod))
        ended = self.watch.all_running([name])
        self._delete_and_wait("pod", name, [name])
        return ended - started

    def _delete_and_wait(self, kind: str, name: str, pods: list[str]) -> None:
        """Untimed: the next run starts once these pods are gone and their devices are free."""
        started = time.monotonic()
        kubectl(self.sandbox, "delete", kind, name, "-n", self.namespace, "--wait=false")
        if kind != "pod":
            # Not left to the garbage collector: just after the CRD is installed it may not yet know
            # TrainingJobs as owners, and the workers would hold their devices for a minute.
            kubectl(
                self.sandbox,
                "delete",
                "pod",
                *pods,
                "-n",
                self.namespace,
                "--wait=false",
                "--ignore-not-found",
            )
        self.watch.all_gone(pods)
        self.cleanup_s.append(time.monotonic() - started)

    def _worker_count(self, job: str) -> int:
        """How many workers the operator gives the job (status.replicas)."""

        def status() -> dict[str, Any]:
            found = kubectl(self.sandbox, "get", "tj", job, "-n", self.namespace, "-o", "json")
            return json.loads(found).get("status") or {}

        deadline = time.monotonic() + TIMEOUT_S
        while not (replicas := status().get("replicas")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{job} got no workers")
            time.sleep(0.05)
        return int(replicas)

    def _pod(self, name: str) -> dict[str, Any]:
        return json.loads(kubectl(self.sandbox, "get", "pod", name, "-n", self.namespace, "-o", "json"))


def start_operator(sandbox: Sandbox, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **sandbox.env(), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "kubefit.cli.main", "run", "--namespace", namespace]
    command += ["--metrics-port", "0", "--liveness-port", "0", "--bind-address", "127.0.0.1"]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    wait_until_serving(process, log)
    return process


@contextmanager
def benchmark_namespace(sandbox: Sandbox) -> Iterator[str]:
    """The CRD, the example nodes with their agent, a namespace and an operator watching only it."""
    start_agent(sandbox, CLUSTER_FILE)
    kubectl(sandbox, "apply", "-f", str(ROOT / "crds" / "trainingjob.yaml"))
    kubectl(sandbox, "wait", "--for", "condition=established", "crd/trainingjobs.kubefit.dev")
    namespace = f"bench-quickstart-{uuid.uuid4().hex[:4]}"
    kubectl(sandbox, "create", "namespace", namespace)
    deadline = time.monotonic() + 60
    while sandbox.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no default ServiceAccount in {namespace}")
        time.sleep(0.1)
    operator = start_operator(sandbox, namespace, sandbox.state_dir / "logs" / "bench-operator.log")
    try:
        yield namespace
    finally:
        operator.terminate()
        operator.wait(20)


def summary(label: str, runs: list[float]) -> str:
    return (
        f"{label}: median {statistics.median(runs):.3f} s "
        f"(min {min(runs):.3f}, max {max(runs):.3f}; runs {', '.join(f'{run:.3f}' for run in runs)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each side, after one warm-up each")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    operator_runs: list[float] = []
    bare_runs: list[float] = []
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    with ephemeral_sandbox("bench", log=lambda _: None) as sandbox, benchmark_namespace(sandbox) as namespace:
        progress(f"sandbox, nodes, CRD and operator up ({sandbox.state_dir})")
        race = Race(sandbox, namespace)
        race.operator_run("warmup")  # first sizing, first watch events; also yields the worker's shape
        race.bare_run("warmup")
        progress(f"warm-up runs done (deleted in {race.cleanup_s[0]:.1f} s and {race.cleanup_s[1]:.1f} s)")
        for run in range(args.runs):
            operator_runs.append(race.operator_run(str(run)))
            bare_runs.append(race.bare_run(str(run)))
            progress(f"run {run + 1}/{args.runs}: operator {operator_runs[-1]:.3f} s, bare pod {bare_runs[-1]:.3f} s "
                     f"(then deleted in {race.cleanup_s[-2]:.1f} s and {race.cleanup_s[-1]:.1f} s)")  # fmt: skip
        race.watch.stopped.set()
    progress("operator stopped, sandbox stopped and deleted")

    operator, bare = statistics.median(operator_runs), statistics.median(bare_runs)
    pair_ratios = [op / base for op, base in zip(operator_runs, bare_runs, strict=True)]
    print(f"worker shape (both sides): {race.shape}")
    print(summary("quickstart through the operator, apply -> all workers Running", operator_runs))
    print(summary("baseline, bare pod of the same shape, apply -> Running     ", bare_runs))
    print(
        f"ratio operator / bare pod: {operator / bare:.2f}x (ratio of medians over {args.runs} interleaved "
        f"pairs; median of per-pair ratios {statistics.median(pair_ratios):.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
