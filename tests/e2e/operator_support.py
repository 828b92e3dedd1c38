"""Helpers and fixtures for the operator's end-to-end tests: kubectl, the operator as a subprocess,
private node pools, waits.

Everything runs against this run's own control plane (tests/e2e/conftest.py `sandbox`: a fresh state
dir per run, never a developer's sandbox; it fails rather than skips when it cannot come up). The node
agent plays the kubelets of the example nodes (examples/sandbox/cluster.yaml) and of every pool below.

Fixtures, for any e2e module (conftest.py makes them available):

    kube        Kube: kubectl against the sandbox, JSON in and out; the CRD is installed (module)
    node_agent  the node agent's PID, with the example nodes created (module)
    operator    OperatorProcess: `kubefit run` watching only this module's namespaces, with the module's
                OPERATOR_ARGS flags if it has any (module)
    namespace   a fresh namespace for the test, deleted at its end (function)
    pool        PrivatePool: 2 x 8 nvidia-h100-80gb nodes of the test's own (function)
    add_pool    add_pool(PoolNodes(...), ...) -> PrivatePool, for other shapes (function)

A test that needs accelerators brings its own nodes: `pool` (or `add_pool`) creates nodes with unique
names, the label e2e.kubefit.dev/pool=<unique name> and a NoSchedule taint of the same key, so only
pods pinned to it land there, and deletes them (and the pods on them) at the end. Pin a job with
`job_manifest(name, namespace, pool=pool, ...)` or `pool.pin(manifest)` (any TrainingJob or Pod):
that adds the pool's nodeSelector and toleration. So no test depends on capacity that a demo, an
earlier test or a leftover pod may hold.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kubefit.sizing.catalog import load_catalog
from kubefit_sandbox.cluster import (
    PROCESSES_TAINT,
    NodePool,
    build_node,
    free_node_index,
    load_cluster_config,
    parse_pool,
)
from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.errors import NodeAgentError
from kubefit_sandbox.kubeclient import core_api, new_api_client
from kubefit_sandbox.nodeagent import start_agent
from kubefit_sandbox.nodes import list_sandbox_nodes, register_node, remove_node
from kubefit_sandbox.podstatus import rfc3339

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
    # Not `kubectl wait --for=condition=Established`: on a loaded machine it can read the new CRD before
    # it has any status.conditions, and then fails at once ("<nil> is of the type <nil>") instead of waiting.
    wait_for("the TrainingJob CRD Established", lambda: _crd_established(kube), timeout=60)


def _crd_established(kube: Kube) -> bool:
    found = kube.run("get", "crd", "trainingjobs.kubefit.dev", "-o", "json", check=False)
    if found.returncode != 0:
        return False
    conditions = (json.loads(found.stdout).get("status") or {}).get("conditions") or []
    return any(item["type"] == "Established" and item["status"] == "True" for item in conditions)


def running_names(pods: list[dict[str, Any]]) -> list[str]:
    return [
        pod["metadata"]["name"]
        for pod in pods
        if pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
    ]


def job_manifest(
    name: str, namespace: str, *, pool: PrivatePool | None = None, **spec: Any
) -> dict[str, Any]:
    """A small job (1B parameters, fits any GPU) with the given spec fields replaced, pinned to `pool`."""
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
    manifest = {
        "apiVersion": "kubefit.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }
    return pool.pin(manifest) if pool is not None else manifest


# ---------------------------------------------------------------------------------------------- pools

PRIVATE_POOL_LABEL = "e2e.kubefit.dev/pool"


@dataclass(frozen=True)
class PoolNodes:
    """`nodes` simulated nodes with `per_node` devices of a catalog accelerator each (None: CPU only)."""

    accelerator: str | None
    nodes: int = 1
    per_node: int = 8
    processes: bool = False  # the node agent runs their pods as local processes (docs/sandbox.md)
    cpu: str = "96"  # allocatable CPU and memory of each node
    memory: str = "1Ti"


DEFAULT_POOL = (PoolNodes("nvidia-h100-80gb", nodes=2, per_node=8),)


@dataclass(frozen=True)
class PrivatePool:
    """Nodes only pods pinned to this pool may use (see the module docstring)."""

    name: str
    nodes: tuple[str, ...]

    @property
    def toleration(self) -> dict[str, str]:
        return {"key": PRIVATE_POOL_LABEL, "operator": "Equal", "value": self.name, "effect": "NoSchedule"}

    def pin_pod_spec(self, pod_spec: dict[str, Any]) -> dict[str, Any]:
        pod_spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), PRIVATE_POOL_LABEL: self.name}
        # The pool's own taint, and process mode's (a pool of either mode: tolerating is not asking).
        processes = {**PROCESSES_TAINT, "operator": "Equal"}
        tolerations = [item for item in pod_spec.get("tolerations") or [] if item != processes]
        pod_spec["tolerations"] = [*tolerations, self.toleration, processes]
        return pod_spec

    def pin(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The TrainingJob's workers (spec.template.spec), or the Pod, may only run on this pool."""
        if manifest.get("kind") == "TrainingJob":
            self.pin_pod_spec(manifest["spec"].setdefault("template", {}).setdefault("spec", {}))
        else:
            self.pin_pod_spec(manifest.setdefault("spec", {}))
        return manifest


def example_pool_shapes() -> tuple[NodePool, ...]:
    """The example cluster's accelerator pools (sizes, labels, capacity), to copy into a private pool."""
    return tuple(pool for pool in load_cluster_config(CLUSTER_FILE).pools if pool.accelerator is not None)


def _node_pool(shape: PoolNodes | NodePool, pool_name: str, label: str) -> NodePool:
    """The shape as a NodePool named `pool_name` that carries the private label and taint."""
    if isinstance(shape, PoolNodes):
        raw: dict[str, Any] = {"name": pool_name, "accelerator": shape.accelerator, "nodes": shape.nodes,
                               "processes": shape.processes}  # fmt: skip
        if shape.accelerator is not None:
            raw["acceleratorsPerNode"] = shape.per_node
        shape = parse_pool(
            {**raw, "cpu": shape.cpu, "memory": shape.memory}, f"private pool {pool_name}", load_catalog()
        )
    taint = {"key": PRIVATE_POOL_LABEL, "value": label, "effect": "NoSchedule"}
    labels = {**shape.labels, PRIVATE_POOL_LABEL: label}
    return replace(shape, name=pool_name, labels=labels, taints=(*shape.taints, taint))


def create_private_pool(sandbox: Sandbox, *shapes: PoolNodes | NodePool) -> PrivatePool:
    """Registers the nodes (Ready, tainted only with the pool's taint); the node agent runs their pods."""
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    core = core_api(new_api_client(sandbox.kubeconfig_path))
    existing, _ = list_sandbox_nodes(core)
    cidrs = [(node.get("spec") or {}).get("podCIDR") for node in existing]
    created: list[str] = []
    try:
        for index, shape in enumerate(shapes or DEFAULT_POOL):
            node_pool = _node_pool(shape, f"{name}-{index}", name)
            for node_name in node_pool.node_names():
                manifest = build_node(node_pool, node_name, free_node_index(cidrs), rfc3339())
                register_node(core, manifest)
                cidrs.append(manifest["spec"]["podCIDR"])
                created.append(node_name)
    except BaseException:
        remove_private_pool(sandbox, PrivatePool(name, tuple(created)))
        raise
    return PrivatePool(name, tuple(created))


def remove_private_pool(sandbox: Sandbox, pool: PrivatePool) -> None:
    """Deletes the pool's nodes and, at once, the pods bound to them."""
    core = core_api(new_api_client(sandbox.kubeconfig_path))
    for node_name in pool.nodes:
        try:
            remove_node(core, node_name)
        except NodeAgentError:
            pass  # already gone (a test may delete its nodes itself)


# ---------------------------------------------------------------------------------------------- operator


class OperatorProcess:
    """`kubefit run` as a subprocess in its own session, so it can be killed like a crashed pod."""

    def __init__(
        self, kubeconfig: Path, namespace_pattern: str, log_path: Path, extra_args: tuple[str, ...] = ()
    ):
        self.kubeconfig = kubeconfig
        self.namespace_pattern = namespace_pattern
        self.log_path = log_path
        self.extra_args = extra_args  # more `kubefit run` flags, e.g. ("--admission-policy", "StrictFIFO")
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_url = ""
        self.liveness_url = ""
        self.checkpoint_url = ""
        self._log_offset = 0

    def start(self, timeout: float = 60.0) -> None:
        command = [
            sys.executable, "-m", "kubefit.cli.main", "run",
            "--namespace", self.namespace_pattern,
            "--metrics-port", "0", "--liveness-port", "0", "--checkpoint-port", "0",
            "--bind-address", "127.0.0.1", "--resync-seconds", "10", "--verbose", *self.extra_args,
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
        self.checkpoint_url = wait_for(
            "the operator's checkpoint address", lambda: self._logged("checkpoints on (\\S+)"), timeout
        )
        wait_for("the operator's /healthz", self.healthy, timeout)

    def logged(self, pattern: str) -> str | None:
        """The last match of `pattern`'s group in this start's log, e.g. an address the operator printed."""
        return self._logged(pattern)

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

    Never stopped here: later modules of the run rely on it; the session's sandbox fixture stops it
    with the control plane.
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
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    """One operator per test module, watching only that module's namespaces; a module's OPERATOR_ARGS
    (a tuple of `kubefit run` flags) are added to its command line."""
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    extra = tuple(getattr(request.module, "OPERATOR_ARGS", ()))
    process = OperatorProcess(sandbox.kubeconfig_path, f"{namespace_prefix}-*", log_path, extra)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def namespace(kube: Kube, operator: OperatorProcess, namespace_prefix: str) -> Iterator[str]:
    """A fresh namespace per test, deleted while the operator still runs (it removes its finalizers)."""
    yield from watched_namespace(kube, operator, f"{namespace_prefix}-{uuid.uuid4().hex[:6]}")


def watched_namespace(kube: Kube, operator: OperatorProcess, name: str) -> Iterator[str]:
    """Creates namespace `name` (it must match the operator's pattern), yields it once the operator watches
    it, and deletes it, its jobs first, while the operator still runs (it removes its finalizers)."""
    kube.run("create", "namespace", name)
    wait_for(
        "the default ServiceAccount",
        lambda: kube.run("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
    )
    # kopf finds a namespace that matches the operator's glob through its namespace watch. It took 61 s and
    # over 180 s in two runs on a loaded 2-core box while the handlers were plain functions: kopf then waited
    # for the deleted namespace's queued handlers before it watched a new one (controller/handlers.py,
    # HandlerThreads). A test's own timeouts still start once the operator watches the namespace.
    wait_for(
        f"the operator watching {name}",
        lambda: operator.logged(rf"watch-stream for trainingjobs\S* in '({re.escape(name)})'"),
        timeout=420,
    )
    yield name
    kube.run("delete", "trainingjobs", "--all", "-n", name, "--wait=false", check=False)
    kube.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def add_pool(sandbox: Sandbox, node_agent: int) -> Iterator[Callable[..., PrivatePool]]:
    """add_pool(*shapes) -> a PrivatePool of this test's own (default: DEFAULT_POOL); all removed at its end.

    Shapes are PoolNodes(accelerator, nodes, per_node) or the example cluster's NodePools
    (example_pool_shapes()); one pool may mix several accelerators.
    """
    created: list[PrivatePool] = []

    def add(*shapes: PoolNodes | NodePool) -> PrivatePool:
        created.append(create_private_pool(sandbox, *shapes))
        return created[-1]

    yield add
    for private in created:
        remove_private_pool(sandbox, private)


@pytest.fixture
def pool(add_pool: Callable[..., PrivatePool]) -> PrivatePool:
    """2 x 8 nvidia-h100-80gb nodes that only this test's pinned pods use (job_manifest(..., pool=pool))."""
    return add_pool()
