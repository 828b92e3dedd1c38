"""Helpers for the operator's end-to-end tests: the operator as a subprocess, kubectl, waits.

Everything runs against the real sandbox control plane (tests/e2e/conftest.py `sandbox`, which fails
rather than skips when it cannot come up); the node agent plays the kubelets of the example nodes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kubefit.sandbox.controlplane import Sandbox
from kubefit.sandbox.nodeagent import start_agent

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "trainingjob.yaml"
CLUSTER_FILE = REPO / "examples" / "sandbox" / "cluster.yaml"
JOB_LABEL = "kubefit.dev/job"
# Tells the node agent that a deleted worker stops at once (no kubelet; the default grace is 30 s).
FAST_SHUTDOWN = {"sandbox.kubefit.dev/shutdown-seconds": "0"}
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.2) -> T:
    """Polls `probe` until it returns something truthy; fails the test with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})", pytrace=False)


# ---------------------------------------------------------------------------------------------- kubectl


class Kube:
    """kubectl against the sandbox, with JSON in and out."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.sandbox.kubectl(*args, input=input, check=check)

    def apply(self, manifest: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "-f", "-", input=json.dumps(manifest), check=check)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        result = self.run("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, kind: str, namespace: str, *selector: str) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", ",".join(selector)]
        return json.loads(self.run(*args).stdout)["items"]

    def workers(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return sorted(
            self.items("pods", namespace, f"{JOB_LABEL}={job}"), key=lambda pod: pod["metadata"]["name"]
        )

    def job_status(self, namespace: str, job: str) -> dict[str, Any]:
        found = self.get("trainingjob", job, namespace)
        return (found or {}).get("status") or {}

    def condition(self, namespace: str, job: str, condition_type: str) -> dict[str, Any] | None:
        conditions = self.job_status(namespace, job).get("conditions") or []
        return next((item for item in conditions if item["type"] == condition_type), None)

    def events(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return [
            event
            for event in self.items("events", namespace)
            if event["involvedObject"].get("kind") == "TrainingJob" and event["involvedObject"]["name"] == job
        ]


def install_crd(kube: Kube) -> None:
    kube.run("apply", "-f", str(CRD_FILE))
    kube.run("wait", "--for=condition=Established", "--timeout=60s", "crd/trainingjobs.kubefit.dev")


def running_names(pods: list[dict[str, Any]]) -> list[str]:
    return [
        pod["metadata"]["name"]
        for pod in pods
        if pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
    ]


def job_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A small job (1B parameters, fits any GPU) with the given spec fields replaced."""
    body: dict[str, Any] = {
        "template": {
            "metadata": {"annotations": dict(FAST_SHUTDOWN)},
            "spec": {
                "containers": [{"name": "trainer", "image": "ghcr.io/acme/train:1", "command": ["train"]}]
            },
        },
        "framework": "pytorch",
        "model": {"parameters": "1B"},
        "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 4},
        "workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4},
    }
    body.update(spec)
    return {
        "apiVersion": "kubefit.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


# ---------------------------------------------------------------------------------------------- operator


class OperatorProcess:
    """`kubefit run` as a subprocess in its own session, so it can be killed like a crashed pod."""

    def __init__(self, kubeconfig: Path, namespace_pattern: str, log_path: Path):
        self.kubeconfig = kubeconfig
        self.namespace_pattern = namespace_pattern
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_url = ""
        self.liveness_url = ""
        self._log_offset = 0

    def start(self, timeout: float = 60.0) -> None:
        command = [
            sys.executable, "-m", "kubefit.cli.main", "run",
            "--namespace", self.namespace_pattern,
            "--metrics-port", "0", "--liveness-port", "0", "--bind-address", "127.0.0.1",
            "--resync-seconds", "10", "--verbose",
        ]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.metrics_url = wait_for(
            "the operator's metrics address", lambda: self._logged("metrics on (\\S+)"), timeout
        )
        self.liveness_url = wait_for(
            "the operator's liveness address", lambda: self._logged("liveness on (\\S+)"), timeout
        )
        wait_for("the operator's /healthz", self.healthy, timeout)

    def _logged(self, pattern: str) -> str | None:
        self._check_alive()
        # Only this start's output: a restarted operator prints new ports.
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            found = re.findall(pattern, log.read().decode(errors="replace"))
        return found[-1] if found else None

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"the operator exited ({self.process.returncode}):\n{self.log_tail()}", pytrace=False)

    def healthy(self) -> bool:
        self._check_alive()
        try:
            with urllib.request.urlopen(self.liveness_url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        self._signal(signal.SIGKILL, timeout=10)

    def stop(self) -> None:
        self._signal(signal.SIGTERM, timeout=20)

    def _signal(self, signum: int, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signum)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kube(sandbox: Sandbox) -> Kube:
    kube = Kube(sandbox)
    install_crd(kube)
    return kube


@pytest.fixture(scope="module")
def node_agent(sandbox: Sandbox) -> int:
    """The node agent with the example pools, shared by every module of the run.

    Never stopped here: other modules (and other sessions on the same sandbox) rely on it; the
    session's sandbox fixture stops it with the control plane.
    """
    try:
        return start_agent(sandbox, CLUSTER_FILE)
    except Exception as error:  # noqa: BLE001 - any failure to start is a test failure
        pytest.fail(f"node agent could not start: {error}", pytrace=False)


@pytest.fixture(scope="module")
def namespace_prefix(request: pytest.FixtureRequest) -> str:
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "")
    return f"e2e-{module[:20]}-{uuid.uuid4().hex[:4]}"


@pytest.fixture(scope="module")
def operator(
    sandbox: Sandbox,
    kube: Kube,
    node_agent: int,
    namespace_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """One operator per test module, watching only that module's namespaces."""
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(sandbox.kubeconfig_path, f"{namespace_prefix}-*", log_path)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def namespace(kube: Kube, operator: OperatorProcess, namespace_prefix: str) -> Iterator[str]:
    """A fresh namespace per test, deleted while the operator still runs (it removes its finalizers)."""
    name = f"{namespace_prefix}-{uuid.uuid4().hex[:6]}"
    kube.run("create", "namespace", name)
    wait_for(
        "the default ServiceAccount",
        lambda: kube.run("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
    )
    yield name
    kube.run("delete", "trainingjobs", "--all", "-n", name, "--wait=false", check=False)
    kube.run("delete", "namespace", name, "--wait=false", check=False)
