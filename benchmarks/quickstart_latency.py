"""Apply-to-all-pods-Running time for examples/quickstart.yaml on the sandbox, against a baseline.

The baseline is the floor the operator cannot beat: a bare Pod that requests the same accelerator,
created with kubectl and bound by the real scheduler, turned Running by the node agent. The ratio
(operator path / bare pod) is the operator's own cost: watch, sizing, Service and Pod creation.

    .venv/bin/python benchmarks/quickstart_latency.py [--runs 5]

Needs the sandbox up with its node agent (`kubefit sandbox up`); starts its own operator.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from kubefit.sandbox.controlplane import Sandbox
from kubefit.sandbox.nodeagent import running_agent_pid, start_agent

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
CLUSTER_FILE = ROOT / "examples" / "sandbox" / "cluster.yaml"


def kubectl(sandbox: Sandbox, *args: str, stdin: str | None = None) -> str:
    return sandbox.kubectl(*args, input=stdin).stdout


def wait(what: str, probe: Any, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def running_pods(sandbox: Sandbox, namespace: str, selector: str) -> list[dict[str, Any]]:
    pods = json.loads(kubectl(sandbox, "get", "pods", "-n", namespace, "-l", selector, "-o", "json"))["items"]
    return [pod for pod in pods if pod.get("status", {}).get("phase") == "Running"]


def time_quickstart(sandbox: Sandbox, namespace: str, manifest: dict[str, Any]) -> float:
    name = manifest["metadata"]["name"]
    workers = manifest["spec"]["workers"]["replicas"]
    start = time.monotonic()
    kubectl(sandbox, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest))
    end = wait(
        "the quickstart workers to run",
        lambda: len(running_pods(sandbox, namespace, f"kubefit.dev/job={name}")) == workers,
    )
    kubectl(sandbox, "delete", "tj", name, "-n", namespace, "--wait=true")
    return end - start


def time_bare_pod(sandbox: Sandbox, namespace: str, resource: str, count: int) -> float:
    name = f"bare-{uuid.uuid4().hex[:6]}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": name}},
        "spec": {
            "containers": [
                {"name": "trainer", "image": "busybox", "resources": {"limits": {resource: count}}}
            ]
        },
    }
    start = time.monotonic()
    kubectl(sandbox, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(pod))
    end = wait("the bare pod to run", lambda: len(running_pods(sandbox, namespace, f"bench={name}")) == 1)
    kubectl(sandbox, "delete", "pod", name, "-n", namespace, "--wait=true")
    return end - start


def start_operator(sandbox: Sandbox, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KUBECONFIG": str(sandbox.kubeconfig_path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "kubefit.cli.main", "run", "--namespace", namespace]
    command += ["--metrics-port", "0", "--liveness-port", "0", "--bind-address", "127.0.0.1"]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    wait("the operator to start", lambda: re.search("liveness on", log.read_text(errors="replace")), 60)
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    sandbox = Sandbox()
    if not sandbox.is_up():
        print("the sandbox is not up: run `kubefit sandbox up` first", file=sys.stderr)
        return 1
    if running_agent_pid(sandbox.state_dir) is None:
        start_agent(sandbox, CLUSTER_FILE)
    kubectl(sandbox, "apply", "-f", str(ROOT / "crds" / "trainingjob.yaml"))
    kubectl(sandbox, "wait", "--for", "condition=established", "crd/trainingjobs.kubefit.dev")

    namespace = f"bench-quickstart-{uuid.uuid4().hex[:4]}"
    kubectl(sandbox, "create", "namespace", namespace)
    manifest = yaml.safe_load(QUICKSTART.read_text())
    log = Path(tempfile.mkdtemp()) / "operator.log"
    operator = start_operator(sandbox, namespace, log)
    try:
        time_quickstart(sandbox, namespace, manifest)  # warm-up: first sizing, first watch events
        operator_runs = [time_quickstart(sandbox, namespace, manifest) for _ in range(args.runs)]
        bare_runs = [time_bare_pod(sandbox, namespace, "nvidia.com/gpu", 1) for _ in range(args.runs)]
    finally:
        operator.terminate()
        operator.wait(20)
        kubectl(sandbox, "delete", "namespace", namespace, "--wait=false")

    quickstart, bare = statistics.median(operator_runs), statistics.median(bare_runs)
    print(
        f"quickstart apply -> all workers Running: median {quickstart:.2f} s over {args.runs} runs "
        f"(min {min(operator_runs):.2f}, max {max(operator_runs):.2f})"
    )
    print(
        f"baseline, bare GPU pod apply -> Running:  median {bare:.2f} s "
        f"(min {min(bare_runs):.2f}, max {max(bare_runs):.2f})"
    )
    print(f"ratio quickstart / bare pod: {quickstart / bare:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
