"""From a node becoming Ready to the scale-up worker pods being created (issue 8's target: under 2 s).

An elastic job (4 workers of 4 H100s wanted, minimum 1) runs on a private 8-GPU node, so it holds 2
workers and waits for room for 2 more. Each run registers a second 8-GPU node NotReady, as a kubelet
registers before it reports in; the sandbox's node agent then reports it Ready (as it does for every
node it plays the kubelet of). The clock runs from the node watch event that shows Ready=True to the pod
watch event that shows the last of the two new worker pods (both watches in this process, opened before
the runs). The node is then removed (its pods with it), the job is back at 2, and the next run starts.

What the path includes: the node watch event reaching the operator, the debounced scheduling pass
(controller/scheduler.py, DEBOUNCE_SECONDS), the job's reconcile, and two pod creations.

    .venv/bin/python benchmarks/scale_up_latency.py [--runs 10]
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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from kubefit.sizing.catalog import load_catalog
from kubefit_sandbox.cluster import build_node, free_node_index, parse_pool
from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.ephemeral import ephemeral_sandbox
from kubefit_sandbox.kubeclient import WatchExpired, core_api, new_api_client, watch_events
from kubefit_sandbox.nodeagent import start_agent
from kubefit_sandbox.nodes import list_sandbox_nodes, register_node, remove_node
from kubefit_sandbox.podstatus import rfc3339
from operator_process import wait_until_serving  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILE = ROOT / "examples" / "sandbox" / "cluster.yaml"
TARGET_S = 2.0
TIMEOUT_S = 120.0
POOL_LABEL = "bench.kubefit.dev/pool"
FAST_SHUTDOWN = {"sandbox.kubefit.dev/shutdown-seconds": "0"}


class Watch:
    """One watch of a kind: when each object was first seen matching `matches`, and which exist now."""

    def __init__(
        self, list_function: Callable[..., Any], matches: Callable[[dict[str, Any]], bool], **scope: str
    ):
        self.list_function, self.matches, self.scope = list_function, matches, scope
        self.first_seen: dict[str, float] = {}
        self.present: set[str] = set()
        self.changed = threading.Condition()
        self.stopped = threading.Event()
        self._ready = threading.Event()
        threading.Thread(target=self._loop, name="watch", daemon=True).start()
        if not self._ready.wait(30):
            raise TimeoutError("the watch did not start")

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:
                listed = json.loads(self.list_function(_preload_content=False, **self.scope).data)
                for item in listed["items"]:
                    self._record("ADDED", item)
                self._ready.set()
                version = listed["metadata"]["resourceVersion"]
                for event in watch_events(self.list_function, version, **self.scope):
                    self._record(event["type"], event["object"])
            except Exception as error:  # noqa: BLE001 - a dropped watch is listed again
                if self.stopped.is_set():
                    return
                if not isinstance(error, WatchExpired):
                    print(f"watch: {type(error).__name__}: {error}", file=sys.stderr)
                time.sleep(0.1)

    def _record(self, kind: str, item: dict[str, Any]) -> None:
        seen = time.monotonic()
        if kind == "BOOKMARK":
            return
        name = item["metadata"]["name"]
        with self.changed:
            if kind == "DELETED":
                self.present.discard(name)
                self.first_seen.pop(name, None)
            elif not item["metadata"].get("deletionTimestamp"):
                self.present.add(name)
                if self.matches(item):
                    self.first_seen.setdefault(name, seen)
            self.changed.notify_all()

    def wait(self, what: str, done: Callable[[], bool]) -> None:
        with self.changed:
            if not self.changed.wait_for(done, TIMEOUT_S):
                raise TimeoutError(f"timed out after {TIMEOUT_S:.0f}s waiting for {what}")


def is_ready(node: dict[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(item.get("type") == "Ready" and item.get("status") == "True" for item in conditions)


def kubectl(sandbox: Sandbox, *args: str, stdin: str | None = None) -> str:
    return sandbox.kubectl(*args, input=stdin, timeout=TIMEOUT_S).stdout


class Cluster:
    """The private pool's nodes: one that stays, and one added NotReady and made Ready per run."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.core = core_api(new_api_client(sandbox.kubeconfig_path))
        self.label = f"bench-{uuid.uuid4().hex[:6]}"
        taint = {"key": POOL_LABEL, "value": self.label, "effect": "NoSchedule"}
        raw = {"name": self.label, "accelerator": "nvidia-h100-80gb", "nodes": 1, "acceleratorsPerNode": 8}
        pool = parse_pool({**raw, "cpu": 96, "memory": "1Ti"}, "benchmark pool", load_catalog())
        labels = {**pool.labels, POOL_LABEL: self.label}
        self.pool = replace(pool, labels=labels, taints=(*pool.taints, taint))

    def _manifest(self, name: str) -> dict[str, Any]:
        existing, _ = list_sandbox_nodes(self.core)
        cidrs = [(node.get("spec") or {}).get("podCIDR") for node in existing]
        manifest = build_node(self.pool, name, free_node_index(cidrs), rfc3339())
        manifest["metadata"]["name"] = name
        return manifest

    def add_ready(self, name: str) -> None:
        register_node(self.core, self._manifest(name))

    def add_not_ready(self, name: str) -> None:
        """The node as a kubelet registers it before it reports Ready (the API server adds the taint)."""
        manifest = self._manifest(name)
        # NotReady from the first moment: created Ready, the node controller could untaint it before the
        # status patch, and the operator would rightly use it.
        for condition in manifest["status"].get("conditions") or []:
            if condition["type"] == "Ready":
                condition.update(status="False", reason="KubeletNotReady", message="starting")
        status = copy.deepcopy(manifest["status"])
        self.core.create_node(manifest, _preload_content=False)
        self.core.patch_node_status(name, {"status": status})

    def remove(self, name: str) -> None:
        remove_node(self.core, name)


def elastic_job(name: str, cluster: Cluster) -> dict[str, Any]:
    return {
        "apiVersion": "kubefit.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"annotations": dict(FAST_SHUTDOWN)},
                "spec": {
                    "containers": [
                        {"name": "trainer", "image": "ghcr.io/acme/train:1", "command": ["train"]}
                    ],
                    "nodeSelector": {POOL_LABEL: cluster.label},
                    "tolerations": [
                        {
                            "key": POOL_LABEL,
                            "operator": "Equal",
                            "value": cluster.label,
                            "effect": "NoSchedule",
                        }
                    ],
                },
            },
            "framework": "pytorch",
            "model": {"parameters": "1B"},
            "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 4},
            "workers": {"replicas": 4, "minReplicas": 1, "maxReplicas": 4},
            "elastic": {"enabled": True, "checkpointGracePeriodSeconds": 0},
        },
    }


def start_operator(sandbox: Sandbox, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **sandbox.env(), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "kubefit.cli.main", "run", "--namespace", namespace]
    command += [
        "--metrics-port",
        "0",
        "--liveness-port",
        "0",
        "--checkpoint-port",
        "0",
        "--bind-address",
        "127.0.0.1",
    ]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    wait_until_serving(process, log)
    return process


def one_run(cluster: Cluster, pods: Watch, nodes: Watch, job: str, run: str) -> float:
    """Adds a node NotReady; the sandbox's node agent reports it Ready (as a kubelet does) moments
    later. Timed from the watch event that shows it Ready to the one that shows the last new pod."""
    name = f"{cluster.label}-{run}"
    cluster.add_not_ready(name)
    new = [f"{job}-worker-2", f"{job}-worker-3"]
    nodes.wait(f"{name} Ready", lambda: name in nodes.first_seen)
    pods.wait("the two scale-up workers", lambda: all(pod in pods.first_seen for pod in new))
    created = max(pods.first_seen[pod] for pod in new)
    elapsed = created - nodes.first_seen[name]
    if elapsed < 0:
        raise RuntimeError(f"pods {new} were created before {name} was Ready")
    cluster.remove(name)
    pods.wait("the job back at 2 workers", lambda: not pods.present.intersection(new))
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs, after one warm-up")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    runs: list[float] = []
    with ephemeral_sandbox("bench", log=lambda _: None) as sandbox:
        start_agent(sandbox, CLUSTER_FILE)
        kubectl(sandbox, "apply", "-f", str(ROOT / "crds" / "trainingjob.yaml"))
        kubectl(sandbox, "wait", "--for", "condition=established", "crd/trainingjobs.kubefit.dev")
        namespace = f"bench-scaleup-{uuid.uuid4().hex[:4]}"
        kubectl(sandbox, "create", "namespace", namespace)
        operator = start_operator(sandbox, namespace, sandbox.state_dir / "logs" / "bench-operator.log")
        try:
            cluster = Cluster(sandbox)
            cluster.add_ready(f"{cluster.label}-base")
            watch = Watch(cluster.core.list_namespaced_pod, lambda pod: True, namespace=namespace)
            nodes = Watch(cluster.core.list_node, is_ready)
            job = "elastic"
            kubectl(sandbox, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(elastic_job(job, cluster)))
            watch.wait(
                "the job's first 2 workers", lambda: {f"{job}-worker-0", f"{job}-worker-1"} <= watch.present
            )
            progress("sandbox, operator and a job at 2 of 4 workers up")
            one_run(cluster, watch, nodes, job, "warmup")
            for run in range(args.runs):
                runs.append(one_run(cluster, watch, nodes, job, str(run)))
                progress(f"run {run + 1}/{args.runs}: {runs[-1]:.3f} s")
            watch.stopped.set()
            nodes.stopped.set()
        finally:
            operator.terminate()
            operator.wait(20)
    median = statistics.median(runs)
    print(
        f"node Ready -> scale-up workers created: median {median:.3f} s (min {min(runs):.3f}, max "
        f"{max(runs):.3f}; runs {', '.join(f'{run:.3f}' for run in runs)})"
    )
    print(
        f"target {TARGET_S:.1f} s: median / target = {median / TARGET_S:.2f} ({'met' if median < TARGET_S else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
