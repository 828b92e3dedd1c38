"""Simulated GPU/TPU nodes against the real control plane: the real kube-scheduler places pods on them.

Needs the run's own sandbox (tests/e2e/conftest.py `sandbox`, which fails rather than skips when it
cannot come up) and starts the node agent with examples/sandbox/cluster.yaml unless it already runs.
Tests that need free GPUs use a private node (`private_h100`, tainted for everyone but the pods pinned
to it), so pods left by an earlier test on the example nodes cannot starve them.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from operator_support import PoolNodes, PrivatePool, create_private_pool, remove_private_pool

from kubefit.controller.kube import KubeApi
from kubefit_sandbox.cluster import NOT_READY_TAINT_KEY, POOL_LABEL, build_node, load_cluster_config
from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.kubeclient import new_api_client, watch_events
from kubefit_sandbox.nodeagent import AGENT_LOCK_FILE, running_agent_pid, start_agent, stop_agent
from kubefit_sandbox.nodes import NodeRequest, add_nodes, remove_node
from kubefit_sandbox.podprocess import pod_loopback_ip
from kubefit_sandbox.podstatus import EXIT_ANNOTATION, SHUTDOWN_ANNOTATION, parse_rfc3339
from kubefit_sandbox.processpods import latest_run

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sandbox" / "cluster.yaml"
H100_PRODUCT = "NVIDIA-H100-80GB-HBM3"  # GFD's nvidia.com/gpu.product for the catalog's nvidia-h100-80gb
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def agent(sandbox: Sandbox) -> int:
    """The node agent with the example pools, started unless it runs.

    Never stopped here: later modules of the run share it; the session's sandbox fixture stops it.
    """
    try:
        return start_agent(sandbox, EXAMPLE)
    except Exception as error:  # noqa: BLE001 - any failure to start is a test failure
        pytest.fail(f"node agent could not start: {error}", pytrace=False)


@pytest.fixture(scope="module")
def core(sandbox: Sandbox, agent: int) -> client.CoreV1Api:
    return client.CoreV1Api(new_api_client(sandbox.kubeconfig_path))


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"e2e-nodes-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    # Pods are refused until the controller manager has made the namespace's default ServiceAccount
    # and (Kubernetes 1.20) its token Secret.
    wait_for("the default ServiceAccount's token", lambda: _service_account_token(core, name))
    try:
        yield name
    finally:
        # Force-delete the pods first: left to the namespace controller they would hold their GPUs for
        # their whole grace period, and the next test's pods would not fit.
        core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        core.delete_namespace(name)


@pytest.fixture
def private_h100(sandbox: Sandbox, core: client.CoreV1Api) -> Iterator[PrivatePool]:
    """A fresh 8-GPU H100 node in a private pool: only pods pinned to it (`pool=`) land there."""
    pool = create_private_pool(sandbox, PoolNodes("nvidia-h100-80gb", nodes=1, per_node=8))
    try:
        yield pool
    finally:
        remove_private_pool(sandbox, pool)


def _service_account_token(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        return bool(core.read_namespaced_service_account("default", namespace).secrets)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _exists(read: Callable[[], Any]) -> bool:
    try:
        read()
        return True
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise


def gpu_pod(
    name: str, gpus: int, product: str | None = H100_PRODUCT, pool: PrivatePool | None = None, **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "trainer",
                "image": "ghcr.io/acme/llm-train:1.4",
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ],
        "terminationGracePeriodSeconds": extra.pop("grace", 30),
    }
    if product:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": product}
    spec.update(extra.pop("spec", {}))
    pod = {"metadata": {"name": name, "annotations": extra.pop("annotations", {})}, "spec": spec}
    return pool.pin(pod) if pool is not None else pod


def read_pod(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(core.read_namespaced_pod(name, namespace, _preload_content=False).data)


def read_node(core: client.CoreV1Api, name: str) -> dict[str, Any]:
    return json.loads(core.read_node(name, _preload_content=False).data)


def wait_phase(core: client.CoreV1Api, namespace: str, name: str, phase: str, timeout: float = 20.0) -> dict:
    def probe() -> dict | None:
        pod = read_pod(core, namespace, name)
        return pod if pod.get("status", {}).get("phase") == phase else None

    return wait_for(f"pod {name} to be {phase}", probe, timeout)


def _unschedulable(core: client.CoreV1Api, namespace: str, name: str) -> dict | None:
    """The pod once the scheduler has marked it PodScheduled=False (Unschedulable), else None."""
    pod = read_pod(core, namespace, name)
    conditions = pod.get("status", {}).get("conditions") or []
    return (
        pod
        if any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)
        else None
    )


def pod_gone(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    return not _exists(lambda: core.read_namespaced_pod(name, namespace))


# ---------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------


def test_example_nodes_are_ready_untainted_with_capacity_and_labels(core: client.CoreV1Api) -> None:
    config = load_cluster_config(EXAMPLE)
    for pool in config.pools:
        for name in pool.node_names():
            node = read_node(core, name)
            expected = build_node(pool, name, index=0, now="2026-01-01T00:00:00Z")
            assert node["metadata"]["labels"].items() >= expected["metadata"]["labels"].items(), name
            assert node["status"]["capacity"] == expected["status"]["capacity"], name
            assert node["status"]["allocatable"] == expected["status"]["capacity"], name
            taints = node["spec"].get("taints") or []
            assert not any(t["key"] == NOT_READY_TAINT_KEY for t in taints), (name, taints)
            ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
            assert ready["status"] == "True", (name, ready)
            # Heartbeats every 20 s: never older than a minute while the agent runs.
            age = (datetime.now(UTC) - parse_rfc3339(ready["lastHeartbeatTime"])).total_seconds()
            assert age < 60, (name, ready["lastHeartbeatTime"])


def test_h100_node_carries_the_gfd_labels_a_selector_uses(core: client.CoreV1Api) -> None:
    labels = read_node(core, "h100-0")["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == H100_PRODUCT
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels[POOL_LABEL] == "h100"
    assert read_node(core, "h100-0")["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_node_lease_is_renewed(core: client.CoreV1Api) -> None:
    coordination = client.CoordinationV1Api(core.api_client)
    lease = wait_for(
        "the node lease of h100-0",
        lambda: (
            _exists(lambda: coordination.read_namespaced_lease("h100-0", "kube-node-lease"))
            and coordination.read_namespaced_lease("h100-0", "kube-node-lease")
        ),
        timeout=30,
    )
    assert lease.spec.holder_identity == "h100-0"
    assert (datetime.now(UTC) - lease.spec.renew_time).total_seconds() < 60


# ---------------------------------------------------------------------------------------------
# Pods through the real scheduler
# ---------------------------------------------------------------------------------------------


def test_gpu_pod_is_bound_by_the_scheduler_to_an_h100_node_and_runs(
    core: client.CoreV1Api, namespace: str, private_h100: PrivatePool
) -> None:
    # private_h100 guarantees room on some H100 node even if earlier tests' pods hold h100-0/1's GPUs;
    # the pod tolerates its taint but is not pinned: the scheduler picks among all H100 nodes.
    core.create_namespaced_pod(
        namespace, gpu_pod("worker", gpus=4, spec={"tolerations": [private_h100.toleration]})
    )
    pod = wait_phase(core, namespace, "worker", "Running")
    node = read_node(core, pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100_PRODUCT
    assert node["metadata"]["labels"]["kubefit.dev/sandbox-accelerator"] == "nvidia-h100-80gb"
    internal_ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    status = pod["status"]
    assert status["hostIP"] == internal_ip
    assert ipaddress.ip_address(status["podIP"]) in ipaddress.ip_network(node["spec"]["podCIDR"])
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    (container,) = status["containerStatuses"]
    assert container["ready"] is True and container["restartCount"] == 0
    assert container["image"] == "ghcr.io/acme/llm-train:1.4"
    assert "running" in container["state"]


def test_scheduler_respects_gpu_counts_on_a_node(
    core: client.CoreV1Api, namespace: str, private_h100: PrivatePool
) -> None:
    # Pinned to one 8-GPU node: two 4-GPU pods fit, the third does not.
    for index in range(3):
        core.create_namespaced_pod(namespace, gpu_pod(f"w{index}", gpus=4, product=None, pool=private_h100))
    wait_phase(core, namespace, "w0", "Running")
    wait_phase(core, namespace, "w1", "Running")
    third = wait_for("w2 to be found unschedulable", lambda: _unschedulable(core, namespace, "w2"))
    assert "Insufficient nvidia.com/gpu" in third["status"]["conditions"][0]["message"]
    assert third["status"]["phase"] == "Pending" and not third["spec"].get("nodeName")


def test_over_request_stays_pending_with_failed_scheduling(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, gpu_pod("too-big", gpus=9))

    def failed_scheduling() -> list | None:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=too-big").items
        return [e for e in events if e.reason == "FailedScheduling"] or None

    (event, *_) = wait_for("a FailedScheduling event", failed_scheduling)
    assert "Insufficient nvidia.com/gpu" in event.message
    time.sleep(1)  # and it stays that way
    pod = read_pod(core, namespace, "too-big")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


def test_pod_ips_are_unique(core: client.CoreV1Api, namespace: str, private_h100: PrivatePool) -> None:
    for index in range(6):
        core.create_namespaced_pod(namespace, gpu_pod(f"p{index}", gpus=1, product=None, pool=private_h100))
    ips = [wait_phase(core, namespace, f"p{index}", "Running")["status"]["podIP"] for index in range(6)]
    assert len(set(ips)) == 6, ips


def test_every_bound_pod_is_seen_running(
    core: client.CoreV1Api, namespace: str, private_h100: PrivatePool
) -> None:
    """From a raw watch, each pod is seen bound to a node and then Running.

    How fast is not asserted here (a loaded box may take seconds): benchmarks/quickstart_latency.py
    prints the bare pod's apply -> Running time, which holds the bind -> Running path.
    """
    count = 10
    bound_at: dict[str, float] = {}
    running_at: dict[str, float] = {}
    # Watch from before the pods exist, so that every transition arrives as its own event.
    resource_version = core.list_namespaced_pod(namespace).metadata.resource_version
    started = time.monotonic()
    for index in range(count):
        core.create_namespaced_pod(namespace, gpu_pod(f"lat{index}", gpus=0, product=None, pool=private_h100))
    for event in watch_events(core.list_namespaced_pod, resource_version, namespace=namespace):
        now = time.monotonic()
        pod = event["object"]
        name = pod["metadata"]["name"]
        if pod["spec"].get("nodeName"):
            bound_at.setdefault(name, now)
        if pod.get("status", {}).get("phase") == "Running":
            running_at.setdefault(name, now)
        if len(running_at) == count or now - started > 90:
            break
    assert len(running_at) == count, f"only {len(running_at)} of {count} pods ran"
    unbound = [name for name in running_at if name not in bound_at]
    assert not unbound, f"seen Running without a node: {unbound}"
    assert {read_pod(core, namespace, name)["spec"]["nodeName"] for name in running_at} == set(
        private_h100.nodes
    )


# ---------------------------------------------------------------------------------------------
# Ending and deleting pods
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "phase", "reason"), [("0", "Succeeded", "Completed"), ("3", "Failed", "Error")]
)
def test_exit_annotation_ends_the_pod(
    core: client.CoreV1Api, namespace: str, private_h100: PrivatePool, code: str, phase: str, reason: str
) -> None:
    core.create_namespaced_pod(namespace, gpu_pod("job", gpus=1, pool=private_h100))
    wait_phase(core, namespace, "job", "Running")
    core.patch_namespaced_pod("job", namespace, {"metadata": {"annotations": {EXIT_ANNOTATION: code}}})
    pod = wait_phase(core, namespace, "job", phase)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (int(code), reason)
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"


def test_a_finished_pod_frees_its_gpus_for_the_scheduler(
    core: client.CoreV1Api, namespace: str, private_h100: PrivatePool
) -> None:
    core.create_namespaced_pod(namespace, gpu_pod("first", gpus=8, product=None, pool=private_h100))
    wait_phase(core, namespace, "first", "Running")
    core.create_namespaced_pod(namespace, gpu_pod("second", gpus=8, product=None, pool=private_h100))
    wait_for("second to be found unschedulable", lambda: _unschedulable(core, namespace, "second"))
    core.patch_namespaced_pod("first", namespace, {"metadata": {"annotations": {EXIT_ANNOTATION: "0"}}})
    # The scheduler retries unschedulable pods when a pod on the node terminates.
    wait_phase(core, namespace, "second", "Running", timeout=60)


def test_bad_exit_annotation_leaves_the_pod_running_and_warns(
    core: client.CoreV1Api, namespace: str, private_h100: PrivatePool
) -> None:
    core.create_namespaced_pod(namespace, gpu_pod("job", gpus=1, pool=private_h100))
    wait_phase(core, namespace, "job", "Running")
    core.patch_namespaced_pod("job", namespace, {"metadata": {"annotations": {EXIT_ANNOTATION: "done"}}})

    def warning() -> list | None:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=job").items
        return [e for e in events if e.reason == "InvalidSandboxAnnotation"] or None

    (event, *_) = wait_for("an InvalidSandboxAnnotation event", warning)
    assert EXIT_ANNOTATION in event.message and "'done'" in event.message
    assert read_pod(core, namespace, "job")["status"]["phase"] == "Running"


def test_deleted_pod_is_removed_after_its_grace_period(
    core: client.CoreV1Api, namespace: str, private_h100: PrivatePool
) -> None:
    core.create_namespaced_pod(namespace, gpu_pod("job", gpus=1, grace=3, pool=private_h100))
    wait_phase(core, namespace, "job", "Running")
    answer = json.loads(core.delete_namespaced_pod("job", namespace, _preload_content=False).data)
    # The delete's answer: the pod terminating (not gone yet) until the request's time + its grace period.
    deadline = parse_rfc3339(answer["metadata"]["deletionTimestamp"])
    assert answer["metadata"]["deletionGracePeriodSeconds"] == 3
    wait_for("the pod to be removed", lambda: pod_gone(core, namespace, "job"), timeout=60)
    seen_gone = datetime.now(UTC)  # the control plane runs on this machine: the same clock
    # Not before its grace period ended (deletionTimestamp has second precision, rounded down; removed at
    # once, it would be seen gone 2-3 s before it), and at its end, not at the default 30 s grace: a slow
    # box only makes the removal later, by seconds.
    early, late = timedelta(seconds=0.5), timedelta(seconds=20)
    assert deadline - early <= seen_gone < deadline + late, (deadline, seen_gone)


def test_shutdown_annotation_removes_a_deleted_pod_sooner(
    core: client.CoreV1Api, namespace: str, private_h100: PrivatePool
) -> None:
    pod = gpu_pod("job", gpus=1, grace=60, annotations={SHUTDOWN_ANNOTATION: "0"}, pool=private_h100)
    core.create_namespaced_pod(namespace, pod)
    wait_phase(core, namespace, "job", "Running")
    requested = time.monotonic()
    core.delete_namespaced_pod("job", namespace)
    wait_for("the pod to be removed", lambda: pod_gone(core, namespace, "job"), timeout=45)
    assert time.monotonic() - requested < 30  # sooner than its 60 s grace period, by far


# ---------------------------------------------------------------------------------------------
# Nodes added and removed at run time
# ---------------------------------------------------------------------------------------------


def test_node_added_at_run_time_takes_pods_and_removal_deletes_them(
    core: client.CoreV1Api, namespace: str
) -> None:
    pool = f"e2e-{uuid.uuid4().hex[:6]}"
    (name,) = add_nodes(core, NodeRequest("nvidia-l4", count=2, pool=pool, cpu=8, memory="32Gi"))
    try:
        assert name == f"{pool}-0"
        node = read_node(core, name)
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-L4"
        assert not any(t["key"] == NOT_READY_TAINT_KEY for t in node["spec"].get("taints") or [])
        pin = {"spec": {"nodeSelector": {"kubernetes.io/hostname": name}}}
        core.create_namespaced_pod(namespace, gpu_pod("on-new-node", gpus=2, product=None, **pin))
        pod = wait_phase(core, namespace, "on-new-node", "Running")
        assert pod["spec"]["nodeName"] == name
    finally:
        deleted = remove_node(core, name)
    assert deleted == 1
    assert not _exists(lambda: core.read_node(name))
    assert pod_gone(core, namespace, "on-new-node")


def test_node_deleted_through_the_api_has_its_pods_deleted_by_the_agent(
    core: client.CoreV1Api, namespace: str
) -> None:
    pool = f"e2e-{uuid.uuid4().hex[:6]}"
    (name,) = add_nodes(core, NodeRequest(None, pool=pool, cpu=4, memory="8Gi"))
    try:
        pin = {"spec": {"nodeSelector": {"kubernetes.io/hostname": name}}}
        core.create_namespaced_pod(namespace, gpu_pod("cpu-job", gpus=0, product=None, **pin))
        wait_phase(core, namespace, "cpu-job", "Running")
    finally:
        core.delete_node(name)  # as `kubectl delete node` would: the agent must clean up
    wait_for("the agent to delete the pod of the deleted node", lambda: pod_gone(core, namespace, "cpu-job"))


def test_the_operators_node_check_lists_a_node_by_name_until_it_is_deleted(
    sandbox: Sandbox, core: client.CoreV1Api
) -> None:
    # The reconciler asks this of a node its index lacks before reading the node's workers as lost
    # (controller/node_check.py): a LIST by metadata.name, answered by the real API server.
    api = KubeApi(new_api_client(sandbox.kubeconfig_path))
    pool = f"e2e-{uuid.uuid4().hex[:6]}"
    (name,) = add_nodes(core, NodeRequest(None, pool=pool, cpu=4, memory="8Gi"))
    try:
        assert api.node_exists(name) is True
        assert api.node_exists(f"{name}-x") is False  # a name it begins is not it
    finally:
        core.delete_node(name)
    assert api.node_exists(name) is False


def test_cli_node_add_list_remove(sandbox: Sandbox, core: client.CoreV1Api) -> None:
    pool = f"e2e-{uuid.uuid4().hex[:6]}"
    kubefit_sandbox = [sys.executable, "-m", "kubefit_sandbox.cli", "--state-dir", str(sandbox.state_dir)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*kubefit_sandbox, *args], capture_output=True, text=True, timeout=60)

    added = run("node", "add", "--accelerator", "google-tpu-v5e", "--count", "4", "--pool", pool)
    assert added.returncode == 0, added.stderr
    name = f"{pool}-0"
    try:
        assert added.stdout.strip() == f"added {name}"
        assert read_node(core, name)["status"]["capacity"]["google.com/tpu"] == "4"
        listing = run("node", "list")
        assert listing.returncode == 0, listing.stderr
        row = next(line.split() for line in listing.stdout.splitlines() if line.startswith(name))
        assert row[:4] == [name, pool, "google-tpu-v5e", "4"]
        bad = run("node", "add", "--accelerator", "google-tpu-v5e", "--pool", pool, "--cpu", "lots")
        assert bad.returncode == 2 and "--cpu must be a positive CPU quantity" in bad.stderr
        unknown = run("node", "add", "--accelerator", "tpu-v99")
        assert unknown.returncode == 2 and "unknown accelerator 'tpu-v99'" in unknown.stderr
        assert "google-tpu-v5e" in unknown.stderr  # the known names are listed
    finally:
        removed = run("node", "remove", name)
    assert removed.returncode == 0, removed.stderr
    assert not _exists(lambda: core.read_node(name))
    foreign = run("node", "remove", "no-such-node")
    assert foreign.returncode == 2 and "no node named no-such-node" in foreign.stderr


def test_agent_restart_keeps_running_pods_and_their_ips(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str, private_h100: PrivatePool
) -> None:
    # Both pods on one node: the restarted agent must not hand the running pod's IP to the new one.
    core.create_namespaced_pod(namespace, gpu_pod("before", gpus=1, pool=private_h100))
    before = wait_phase(core, namespace, "before", "Running")
    assert stop_agent(sandbox.state_dir)
    try:
        core.create_namespaced_pod(namespace, gpu_pod("while-down", gpus=1, pool=private_h100))
        time.sleep(1)
        # Bound by the scheduler, but nothing plays the kubelet: it stays Pending.
        assert read_pod(core, namespace, "while-down")["status"]["phase"] == "Pending"
    finally:
        start_agent(sandbox, EXAMPLE)
    during = wait_phase(core, namespace, "while-down", "Running")
    # The restarted agent learnt the IPs in use from its first list.
    assert during["status"]["podIP"] != before["status"]["podIP"]
    assert read_pod(core, namespace, "before")["status"]["podIP"] == before["status"]["podIP"]


def test_a_second_agent_for_the_same_sandbox_exits(sandbox: Sandbox) -> None:
    running = start_agent(sandbox, EXAMPLE)  # another session may have stopped it: make sure it runs
    lock = Path(sandbox.state_dir) / AGENT_LOCK_FILE
    assert lock.read_text().strip() == str(running)
    command = [
        sys.executable,
        "-m",
        "kubefit_sandbox.nodeagent",
        "--kubeconfig",
        str(sandbox.kubeconfig_path),
    ]
    second = subprocess.Popen([*command, "--lock-file", str(lock)], stderr=subprocess.PIPE, text=True)
    try:
        assert second.wait(timeout=15) == 3
    finally:
        if second.poll() is None:
            second.kill()  # it got the lock: it must not stay on as a second agent
            second.wait()
    assert "another node agent holds" in (second.stderr.read() if second.stderr else "")
    assert running_agent_pid(sandbox.state_dir) == running
    assert lock.read_text().strip() == str(running)  # the loser did not overwrite the holder's PID


# ---------------------------------------------------------------------------------------------
# Process mode: pods on a `processes: true` pool run as local processes
# ---------------------------------------------------------------------------------------------

PRINT_ENV = (
    "import os, pathlib, socket\n"
    "for name in ('GREETING', 'COMBINED', 'POD_NAME', 'POD_NAMESPACE', 'POD_IP', 'PEER', 'HOSTNAME'):\n"
    "    print(f'{name}={os.environ.get(name)}')\n"
    "print('cwd=' + os.getcwd())\n"
    "print('python=' + os.popen('command -v python').read().strip())\n"
)


@pytest.fixture
def process_pool(sandbox: Sandbox, core: client.CoreV1Api) -> Iterator[PrivatePool]:
    """A CPU-only node whose pods the agent runs as local processes; only pinned pods land there."""
    pool = create_private_pool(sandbox, PoolNodes(None, nodes=1, processes=True))
    try:
        yield pool
    finally:
        remove_private_pool(sandbox, pool)


def process_pod(name: str, pool: PrivatePool, command: list[str], **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "python:3.11-slim", "command": command}
    container["env"] = spec.pop("env", [])
    pod_spec = {"containers": [container], "restartPolicy": "Never", **spec}
    return {"metadata": {"name": name}, "spec": pool.pin_pod_spec(pod_spec)}


def sandbox_cli(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kubefit_sandbox.cli", "--state-dir", str(sandbox.state_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def terminated_state(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def test_process_pod_runs_its_command_with_the_pod_env_and_its_log_is_readable(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str, process_pool: PrivatePool
) -> None:
    env = [
        {"name": "GREETING", "value": "hello"},
        {"name": "COMBINED", "value": "$(GREETING)-world"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "PEER", "value": f"http://job-worker-1.job.{namespace}.svc:29500/x"},
    ]
    manifest = process_pod("printer", process_pool, ["python", "-c", PRINT_ENV], env=env,
                           hostname="job-worker-0", subdomain="job")  # fmt: skip
    core.create_namespaced_pod(namespace, manifest)
    pod = wait_phase(core, namespace, "printer", "Succeeded", timeout=60)
    pod_ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network("127.128.0.0/9"), pod_ip
    assert pod_ip == pod_loopback_ip(namespace, "printer", "job-worker-0", "job")
    assert terminated_state(pod)["exitCode"] == 0 and terminated_state(pod)["reason"] == "Completed"

    result = sandbox_cli(sandbox, "logs", f"{namespace}/printer")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    peer_ip = pod_loopback_ip(namespace, "job-worker-1", "job-worker-1", "job")
    assert lines["GREETING"] == "hello" and lines["COMBINED"] == "hello-world"
    assert lines["POD_NAME"] == "printer" and lines["POD_NAMESPACE"] == namespace
    assert lines["POD_IP"] == pod_ip and lines["HOSTNAME"] == "job-worker-0"
    assert lines["PEER"] == f"http://{peer_ip}:29500/x"
    run = latest_run(sandbox.state_dir, namespace, "printer")
    assert run is not None and lines["cwd"] == str(run / "work")
    assert lines["python"] == str(Path(sys.executable).parent / "python")


def test_process_exit_code_fails_the_pod(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str, process_pool: PrivatePool
) -> None:
    code = "import sys; print('about to fail', flush=True); sys.exit(3)"
    core.create_namespaced_pod(namespace, process_pod("failing", process_pool, ["python", "-c", code]))
    pod = wait_phase(core, namespace, "failing", "Failed", timeout=60)
    assert terminated_state(pod)["exitCode"] == 3 and terminated_state(pod)["reason"] == "Error"
    assert "about to fail" in sandbox_cli(sandbox, "logs", f"{namespace}/failing").stdout


def test_deleted_process_pod_gets_sigterm_within_its_grace_period(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str, process_pool: PrivatePool
) -> None:
    code = (
        "import pathlib, signal, sys, time\n"
        "def stop(signum, frame):\n"
        "    pathlib.Path('got-sigterm').write_text('yes')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('waiting', flush=True)\n"
        "time.sleep(600)\n"
    )
    manifest = process_pod("sleeper", process_pool, ["python", "-c", code], terminationGracePeriodSeconds=30)
    core.create_namespaced_pod(namespace, manifest)
    wait_phase(core, namespace, "sleeper", "Running", timeout=60)
    wait_for(
        "the process to start",
        lambda: "waiting" in sandbox_cli(sandbox, "logs", f"{namespace}/sleeper").stdout,
    )
    started = time.monotonic()
    core.delete_namespaced_pod("sleeper", namespace)  # the pod's own grace period: 30 s
    wait_for("the pod to be removed", lambda: pod_gone(core, namespace, "sleeper"), timeout=30)
    assert time.monotonic() - started < 30, "removed only once the grace period was over: no SIGTERM"
    run = latest_run(sandbox.state_dir, namespace, "sleeper")
    assert run is not None and (run / "work" / "got-sigterm").read_text() == "yes"
    assert (run / "exit-code").read_text().strip() == "0"


def test_process_pod_with_an_unsupported_env_source_stays_pending_naming_it(
    core: client.CoreV1Api, namespace: str, process_pool: PrivatePool
) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    core.create_namespaced_pod(namespace, process_pod("secretive", process_pool, ["true"], env=env))

    def waiting() -> dict | None:
        statuses = read_pod(core, namespace, "secretive").get("status", {}).get("containerStatuses") or []
        return statuses[0]["state"].get("waiting") if statuses else None

    state = wait_for("the container's waiting state", waiting, timeout=60)
    assert state["reason"] == "CreateContainerConfigError"
    assert (
        "spec.containers[0].env[0].valueFrom (TOKEN)" in state["message"]
        and "secretKeyRef" in state["message"]
    )
    assert read_pod(core, namespace, "secretive")["status"]["phase"] == "Pending"
