"""Simulated GPU/TPU nodes for the sandbox: a small kwok-like node agent.

Nothing runs containers on these machines, so the agent plays the kubelet for every Node that carries
the label `kubefit.dev/sandbox-pool`:

* nodes: removes the API server's `node.kubernetes.io/not-ready` taint, reports Ready with fresh
  heartbeats (node status and node Lease, every HEARTBEAT_INTERVAL_S);
* pods bound to its nodes by the real kube-scheduler turn Running (podIP, hostIP, conditions,
  containerStatuses) through the status subresource;
* the annotation `sandbox.kubefit.dev/exit: "<code>"` ends a pod: 0 -> Succeeded, else Failed with that
  exit code (restartPolicy is not simulated: the containers are never restarted);
* a pod being deleted is removed (grace 0, since no kubelet confirms) when its grace period ends, or
  sooner if `sandbox.kubefit.dev/shutdown-seconds: "<s>"` says its containers stop faster on SIGTERM;
* when one of its nodes is deleted, the pods bound to it are deleted at once (the controller manager's
  pod GC would do it too, but only after its 40 s quarantine: quarantineTime in Kubernetes'
  pkg/controller/podgc/gc_controller.go).

It runs as one background process (`python -m kubefit.sandbox.nodeagent --kubeconfig K`), started by
`start_agent` with its PID in <state dir>/agent.pid and its log in <state dir>/logs/node-agent.log, and
stopped by `stop_agent`. Three threads: a node watch, a pod watch (only bound pods: field selector
spec.nodeName!=), and a timer loop for heartbeats and delayed deletions; idle, it costs nothing.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import heapq
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubefit.sandbox.cluster import (
    ACCELERATOR_LABEL,
    DEFAULT_CPU,
    DEFAULT_EPHEMERAL_STORAGE,
    DEFAULT_MAX_PODS,
    DEFAULT_MEMORY,
    NO_ACCELERATOR,
    NOT_READY_TAINT_KEY,
    POOL_LABEL,
    ClusterConfig,
    ClusterConfigError,
    NodePool,
    build_node,
    free_node_index,
    load_cluster_config,
    parse_pool,
    ready_conditions,
    without_not_ready_taint,
)
from kubefit.sizing.catalog import Catalog, load_catalog

EXIT_ANNOTATION = "sandbox.kubefit.dev/exit"
SHUTDOWN_ANNOTATION = "sandbox.kubefit.dev/shutdown-seconds"

HEARTBEAT_INTERVAL_S = 20.0
NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40  # the kubelet's default --node-lease-duration-seconds
WATCH_TIMEOUT_S = 300  # server-side; the read timeout below is a little longer to notice dead links
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
# With the API server gone this long, the agent exits: a control plane stopped without stop_agent (a test
# session's fixture stopping it) must not leave it behind. A down/up or an API server restart is shorter.
ORPHAN_TIMEOUT_S = 60.0

AGENT_PID_FILE = "agent.pid"
AGENT_LOCK_FILE = "agent.lock"  # held by the running agent for its lifetime: one agent per sandbox
AGENT_START_LOCK_FILE = "agent-start.lock"
LOCK_HELD_EXIT_CODE = 3  # the agent's exit status when another agent holds the lock
AGENT_LOG_FILE = Path("logs") / "node-agent.log"
AGENT_MODULE = "kubefit.sandbox.nodeagent"
CLUSTER_FILE_ENV = "KUBEFIT_SANDBOX_CLUSTER"
# The repository's example, used when no cluster file is named (editable installs and checkouts).
EXAMPLE_CLUSTER_FILE = Path(__file__).resolve().parents[3] / "examples" / "sandbox" / "cluster.yaml"

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
TERMINAL_PHASES = ("Succeeded", "Failed")

log = logging.getLogger("kubefit.sandbox.nodeagent")


class NodeAgentError(RuntimeError):
    """A sandbox node operation that cannot be done; the message says why."""


class InvalidAnnotation(ValueError):
    """A sandbox annotation on a pod whose value cannot be used; the message names the annotation."""


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------


def rfc3339(moment: datetime | None = None) -> str:
    """Kubernetes' metav1.Time format (second precision, UTC)."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# Pure pieces: what to do with a pod, and the status patches
# ---------------------------------------------------------------------------------------------


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return pod.get("metadata", {}).get("annotations") or {}


def exit_code_from(pod: Mapping[str, Any]) -> int | None:
    """The exit code the pod's EXIT_ANNOTATION asks for, or None without it."""
    value = _annotations(pod).get(EXIT_ANNOTATION)
    if value is None:
        return None
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]{1,3}", text) or int(text) > 255:
        raise InvalidAnnotation(
            f"annotation {EXIT_ANNOTATION}={value!r} must be an exit code from 0 to 255 "
            "(0 -> Succeeded, other -> Failed)"
        )
    return int(text)


def shutdown_seconds_from(pod: Mapping[str, Any]) -> float | None:
    """How long the pod's containers take to stop after SIGTERM (SHUTDOWN_ANNOTATION), or None."""
    value = _annotations(pod).get(SHUTDOWN_ANNOTATION)
    if value is None:
        return None
    try:
        seconds = float(str(value).strip())
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 86400:
        raise InvalidAnnotation(
            f"annotation {SHUTDOWN_ANNOTATION}={value!r} must be a number of seconds from 0 to 86400"
        )
    return seconds


@dataclass(frozen=True)
class PodAction:
    """What the agent does with a pod bound to one of its nodes."""

    kind: str  # "none" | "run" | "exit" | "delete" | "invalid"
    exit_code: int | None = None
    delete_at: datetime | None = None  # for "delete"
    message: str = ""  # for "invalid"


def decide(pod: Mapping[str, Any], now: datetime) -> PodAction:
    """The next step for a pod bound to a sandbox node (pure: the caller checks the node)."""
    metadata = pod.get("metadata", {})
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    deletion = metadata.get("deletionTimestamp")
    if deletion:
        if phase != "Running":
            return PodAction("delete", delete_at=now)  # no running container to wait for
        deadline = parse_rfc3339(deletion)
        try:
            shutdown = shutdown_seconds_from(pod)
        except InvalidAnnotation:
            shutdown = None  # fall back to the full grace period; the annotation is reported elsewhere
        if shutdown is not None:
            # deletionTimestamp = time of the delete request + the grace period.
            requested = deadline - timedelta(seconds=metadata.get("deletionGracePeriodSeconds") or 0)
            deadline = min(deadline, requested + timedelta(seconds=shutdown))
        return PodAction("delete", delete_at=deadline)
    if phase in TERMINAL_PHASES:
        return PodAction("none")
    try:
        exit_code = exit_code_from(pod)
    except InvalidAnnotation as exc:
        return PodAction("invalid", message=str(exc))
    if exit_code is not None:
        return PodAction("exit", exit_code=exit_code)
    if phase != "Running":
        return PodAction("run")
    return PodAction("none")


def _container_id(pod: Mapping[str, Any], container: str) -> str:
    # Stable per pod and container, 64 hex digits like a containerd ID.
    digest = hashlib.sha256(f"{pod['metadata'].get('uid', '')}/{container}".encode()).hexdigest()
    return f"sandbox://{digest}"


def _container_status(pod: Mapping[str, Any], container: Mapping[str, Any], state: dict, ready: bool) -> dict:
    image = container.get("image", "")
    return {
        "name": container["name"],
        "image": image,
        "imageID": f"sandbox://{image}",
        "containerID": _container_id(pod, container["name"]),
        "ready": ready,
        "started": "running" in state,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    }


def _conditions(pod: Mapping[str, Any], now: str, ready: bool, reason: str | None) -> list[dict]:
    """Pod conditions; lastTransitionTime moves only for a condition whose status changes."""
    existing = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    wanted = {"PodScheduled": True, "Initialized": True, "ContainersReady": ready, "Ready": ready}
    conditions = []
    for kind, value in wanted.items():
        status = "True" if value else "False"
        condition: dict[str, Any] = {"type": kind, "status": status}
        if existing.get(kind, {}).get("status") != status:
            condition["lastTransitionTime"] = now
        if reason and not value:
            condition["reason"] = reason
        conditions.append(condition)
    return conditions


def _init_container_statuses(pod: Mapping[str, Any], now: str) -> list[dict]:
    # Init containers run to completion before the main ones: report each as exited 0.
    statuses = []
    for container in pod["spec"].get("initContainers") or []:
        terminated = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
        terminated["containerID"] = _container_id(pod, container["name"])
        statuses.append(_container_status(pod, container, {"terminated": terminated}, ready=True))
    return statuses


def running_status_patch(pod: Mapping[str, Any], host_ip: str, pod_ip: str, now: str) -> dict[str, Any]:
    """The status patch a kubelet's sync would produce once all containers have started."""
    if not pod.get("spec", {}).get("containers"):
        raise ValueError("pod has no spec.containers")
    ipaddress.ip_address(pod_ip)  # raises ValueError naming the bad address
    ipaddress.ip_address(host_ip)
    status: dict[str, Any] = {
        "phase": "Running",
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": (pod.get("status") or {}).get("startTime") or now,
        "conditions": _conditions(pod, now, ready=True, reason=None),
        "containerStatuses": [
            _container_status(pod, container, {"running": {"startedAt": now}}, ready=True)
            for container in pod["spec"]["containers"]
        ],
    }
    init_statuses = _init_container_statuses(pod, now)
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    return {"status": status}


def exited_status_patch(
    pod: Mapping[str, Any], exit_code: int, host_ip: str, pod_ip: str, now: str
) -> dict[str, Any]:
    """The status patch for a pod whose containers all exited with `exit_code` (0 -> Succeeded)."""
    if not 0 <= exit_code <= 255:
        raise ValueError(f"exit code {exit_code} is outside 0..255")
    if not pod.get("spec", {}).get("containers"):
        raise ValueError("pod has no spec.containers")
    status = pod.get("status") or {}
    started = {s.get("name"): (s.get("state") or {}).get("running", {}).get("startedAt") for s in
               status.get("containerStatuses") or []}  # fmt: skip
    succeeded = exit_code == 0
    containers = []
    for container in pod["spec"]["containers"]:
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if succeeded else "Error",
            "startedAt": started.get(container["name"]) or now,
            "finishedAt": now,
            "containerID": _container_id(pod, container["name"]),
        }
        containers.append(_container_status(pod, container, {"terminated": terminated}, ready=False))
    patch: dict[str, Any] = {
        "phase": "Succeeded" if succeeded else "Failed",
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": status.get("startTime") or now,
        # The kubelet's reason when no container can be ready again.
        "conditions": _conditions(pod, now, ready=False, reason="PodCompleted"),
        "containerStatuses": containers,
    }
    init_statuses = _init_container_statuses(pod, now)
    if init_statuses:
        patch["initContainerStatuses"] = init_statuses
    return {"status": patch}


class PodIPAllocator:
    """Unique pod IPs inside each node's pod CIDR; an IP is held until its pod is deleted."""

    def __init__(self) -> None:
        self._by_pod: dict[str, str] = {}
        self._lock = threading.Lock()

    def observe(self, pod_uid: str, ip: str | None) -> None:
        if ip:
            with self._lock:
                self._by_pod[pod_uid] = ip

    def allocate(self, pod_uid: str, pod_cidr: str) -> str:
        with self._lock:
            if pod_uid in self._by_pod:
                return self._by_pod[pod_uid]
            used = set(self._by_pod.values())
            network = ipaddress.ip_network(pod_cidr)
            for host in list(network.hosts())[1:]:  # .1 is the node's bridge on a real CNI
                if str(host) not in used:
                    self._by_pod[pod_uid] = str(host)
                    return str(host)
        raise NodeAgentError(f"no free pod IP left in {pod_cidr}")

    def release(self, pod_uid: str) -> None:
        with self._lock:
            self._by_pod.pop(pod_uid, None)

    def ip_of(self, pod_uid: str) -> str | None:
        with self._lock:
            return self._by_pod.get(pod_uid)


# ---------------------------------------------------------------------------------------------
# API helpers (raw JSON dicts: cheaper than the client's models, and they match the pure code)
# ---------------------------------------------------------------------------------------------


def new_api_client(kubeconfig: str | Path) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))


def _core(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


def _json(response: Any) -> Any:
    return json.loads(response.data)


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def watch_events(
    list_function: Callable[..., Any], resource_version: str, **selectors: Any
) -> Iterator[dict]:
    """Raw watch events ({type, object}) from resource_version until the server closes the watch.

    Bookmarks are asked for (and yielded) so that the caller's resourceVersion stays fresh.
    """
    response = list_function(
        watch=True,
        resource_version=resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=WATCH_TIMEOUT_S,
        _preload_content=False,
        _request_timeout=(10, WATCH_TIMEOUT_S + 30),
        **selectors,
    )
    from kubernetes.watch.watch import iter_resp_lines

    try:
        for line in iter_resp_lines(response):
            if not line.strip():
                continue
            event = json.loads(line)
            if event.get("type") == "ERROR":
                status = event.get("object") or {}
                if status.get("code") == 410:
                    raise WatchExpired(status.get("message", "resource version too old"))
                raise NodeAgentError(f"watch error: {status.get('message', status)}")
            yield event
    finally:
        response.close()
        response.release_conn()


def list_sandbox_nodes(core: Any) -> tuple[list[dict], str]:
    body = _json(core.list_node(label_selector=POOL_LABEL, _preload_content=False))
    return body.get("items", []), body["metadata"]["resourceVersion"]


def _delete_pod(core: Any, namespace: str, name: str, uid: str) -> bool:
    """Deletes the pod now (grace 0); the uid precondition spares a new pod of the same name."""
    from kubernetes import client

    try:
        core.delete_namespaced_pod(
            name,
            namespace,
            body=client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
            ),
        )
        return True
    except client.ApiException as exc:
        if exc.status in (404, 409):  # gone already, or replaced by a pod with another uid
            return False
        raise


def delete_pods_on_node(core: Any, node_name: str) -> int:
    """Deletes (grace 0) every pod bound to the node; returns how many were deleted."""
    pods = _json(
        core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node_name}", _preload_content=False)
    )
    deleted = 0
    for pod in pods.get("items", []):
        metadata = pod["metadata"]
        deleted += _delete_pod(core, metadata["namespace"], metadata["name"], metadata["uid"])
    return deleted


def _node_needs_fixing(node: Mapping[str, Any]) -> bool:
    taints = (node.get("spec") or {}).get("taints") or []
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return not ready or any(t.get("key") == NOT_READY_TAINT_KEY for t in taints)


def make_node_ready(core: Any, node: Mapping[str, Any]) -> None:
    """Drops the not-ready taint and reports Ready (what a kubelet does after registering)."""
    name = node["metadata"]["name"]
    taints = (node.get("spec") or {}).get("taints") or []
    if any(t.get("key") == NOT_READY_TAINT_KEY for t in taints):
        # Taints have no merge key: the list is replaced as a whole.
        core.patch_node(name, {"spec": {"taints": without_not_ready_taint(taints) or None}})
    now = rfc3339()
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    since = ready.get("lastTransitionTime") if ready and ready.get("status") == "True" else now
    core.patch_node_status(name, {"status": {"conditions": ready_conditions(now, since)}})


def register_node(core: Any, manifest: Mapping[str, Any]) -> None:
    """Creates the Node, then makes it Ready and untainted (the API server adds the taint on create)."""
    from kubernetes import client

    name = manifest["metadata"]["name"]
    try:
        created = _json(core.create_node(manifest, _preload_content=False))
    except client.ApiException as exc:
        if exc.status == 409:
            raise NodeAgentError(f"a node named {name} already exists") from None
        raise
    # Nodes may carry status on create, but set it through the status subresource as a kubelet does.
    core.patch_node_status(name, {"status": manifest["status"]})
    make_node_ready(core, created)


def _pool_from_node(node: Mapping[str, Any], catalog: Catalog) -> NodePool:
    """The pool a running node belongs to, rebuilt from its labels and capacity (for `node add`)."""
    labels = node["metadata"].get("labels") or {}
    capacity = (node.get("status") or {}).get("capacity") or {}
    accelerator = catalog.get(labels.get(ACCELERATOR_LABEL, NO_ACCELERATOR))
    per_node = int(capacity.get(accelerator.resource_name, 0)) if accelerator else 0
    raw = {
        "name": labels[POOL_LABEL],
        "accelerator": accelerator.name if accelerator else None,
        "acceleratorsPerNode": per_node or None,
        "cpu": capacity.get("cpu", DEFAULT_CPU),
        "memory": capacity.get("memory", DEFAULT_MEMORY),
        "ephemeralStorage": capacity.get("ephemeral-storage", DEFAULT_EPHEMERAL_STORAGE),
        "pods": int(capacity.get("pods", DEFAULT_MAX_PODS)),
        "instanceType": labels.get("node.kubernetes.io/instance-type"),
    }
    return parse_pool(
        {k: v for k, v in raw.items() if v is not None}, f"node {node['metadata']['name']}", catalog
    )


def ensure_pool_nodes(core: Any, config: ClusterConfig) -> list[str]:
    """Creates the cluster file's nodes that do not exist yet; returns their names. Others are left alone."""
    nodes, _ = list_sandbox_nodes(core)
    existing = {node["metadata"]["name"] for node in nodes}
    cidrs = [(node.get("spec") or {}).get("podCIDR") for node in nodes]
    created = []
    for pool in config.pools:
        for name in pool.node_names():
            if name in existing:
                continue
            index = free_node_index(cidrs)
            manifest = build_node(pool, name, index, rfc3339())
            register_node(core, manifest)
            cidrs.append(manifest["spec"]["podCIDR"])
            created.append(name)
    return created


# Cluster-file fields as `node add` spells them.
_OPTION_FOR_FIELD = {"acceleratorsPerNode": "--count", "cpu": "--cpu", "memory": "--memory", "name": "--pool"}


def _as_option_error(message: str) -> str:
    """ "node add(h100).cpu must be ..." -> "--cpu must be ..."."""
    match = re.match(r"^node add(?:\([^)]*\))?\.(\w+)(.*)$", message, re.DOTALL)
    if match and match.group(1) in _OPTION_FOR_FIELD:
        return _OPTION_FOR_FIELD[match.group(1)] + match.group(2)
    return message


def add_nodes(
    core: Any,
    accelerator: str | None,
    count: int | None = None,
    pool: str | None = None,
    name: str | None = None,
    nodes: int = 1,
    cpu: str | int | None = None,
    memory: str | None = None,
    catalog: Catalog | None = None,
) -> list[str]:
    """Adds `nodes` nodes with `count` accelerators each; returns their names.

    Without `pool`, the nodes join the one existing pool of that accelerator, or a new pool named after it
    (`cpu` for no accelerator). A new node of an existing pool copies its sizes unless given.
    """
    catalog = catalog if catalog is not None else load_catalog()
    if accelerator in (None, "", NO_ACCELERATOR):
        accelerator = None
    elif accelerator not in catalog:
        known = ", ".join(catalog.names())
        raise NodeAgentError(f"--accelerator: unknown accelerator {accelerator!r}; known: {known}")
    if nodes < 1:
        raise NodeAgentError(f"--nodes must be at least 1, got {nodes}")
    if count is not None and (accelerator is None or count < 1):
        raise NodeAgentError("--count must be a positive number of accelerators, and needs --accelerator")
    if name is not None and nodes != 1:
        raise NodeAgentError("--name names a single node: it cannot be used with --nodes above 1")
    existing, _ = list_sandbox_nodes(core)
    wanted_label = accelerator or NO_ACCELERATOR
    if pool is None:
        pools = {n["metadata"]["labels"][POOL_LABEL] for n in existing
                 if n["metadata"]["labels"].get(ACCELERATOR_LABEL) == wanted_label}  # fmt: skip
        pool = pools.pop() if len(pools) == 1 else (accelerator or "cpu")
    members = [n for n in existing if n["metadata"]["labels"].get(POOL_LABEL) == pool]
    raw: dict[str, Any] = {"name": pool, "accelerator": accelerator}
    if members:
        template = _pool_from_node(members[0], catalog)
        if template.accelerator_name != wanted_label:
            raise NodeAgentError(
                f"--pool: pool {pool!r} holds {template.accelerator_name} nodes, not {wanted_label}"
            )
        raw.update(
            acceleratorsPerNode=template.accelerators_per_node or None,
            cpu=template.cpu,
            memory=template.memory,
            ephemeralStorage=template.ephemeral_storage,
            pods=template.pods,
        )
    overrides = {"acceleratorsPerNode": count, "cpu": cpu, "memory": memory}
    raw.update({key: value for key, value in overrides.items() if value is not None})
    try:
        node_pool = parse_pool({k: v for k, v in raw.items() if v is not None}, "node add", catalog)
    except ClusterConfigError as exc:
        raise NodeAgentError(_as_option_error(str(exc))) from None
    taken = {n["metadata"]["name"] for n in existing}
    cidrs = [(n.get("spec") or {}).get("podCIDR") for n in existing]
    names = []
    next_index = 0
    for _ in range(nodes):
        if name is None:
            while f"{pool}-{next_index}" in taken:
                next_index += 1
            node_name = f"{pool}-{next_index}"
        else:
            node_name = name
            if node_name in taken:
                raise NodeAgentError(f"--name: a node named {node_name} already exists")
        manifest = build_node(node_pool, node_name, free_node_index(cidrs), rfc3339())
        register_node(core, manifest)
        taken.add(node_name)
        cidrs.append(manifest["spec"]["podCIDR"])
        names.append(node_name)
    return names


def remove_node(core: Any, name: str) -> int:
    """Cordons a sandbox node, deletes (grace 0) the pods bound to it, then the node; returns the pod count.

    Pods go first so that the count is exact; any bound in between are deleted by the agent when it
    sees the node go.
    """
    from kubernetes import client

    try:
        node = _json(core.read_node(name, _preload_content=False))
    except client.ApiException as exc:
        if exc.status == 404:
            raise NodeAgentError(f"no node named {name}") from None
        raise
    if POOL_LABEL not in (node["metadata"].get("labels") or {}):
        raise NodeAgentError(
            f"node {name} is not a sandbox node (it has no {POOL_LABEL} label): not removing it"
        )
    core.patch_node(name, {"spec": {"unschedulable": True}})  # cordon: the scheduler places nothing new
    deleted = delete_pods_on_node(core, name)
    core.delete_node(name)
    return deleted


# ---------------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManagedNode:
    name: str
    uid: str
    internal_ip: str
    pod_cidr: str


def _managed_node(node: Mapping[str, Any]) -> ManagedNode | None:
    metadata, spec, status = node["metadata"], node.get("spec") or {}, node.get("status") or {}
    internal_ip = next(
        (a["address"] for a in status.get("addresses") or [] if a.get("type") == "InternalIP"), None
    )
    if not internal_ip or not spec.get("podCIDR"):
        log.warning(
            "node %s has no InternalIP or podCIDR: not a node this agent can run pods on", metadata["name"]
        )
        return None
    return ManagedNode(metadata["name"], metadata.get("uid", ""), internal_ip, spec["podCIDR"])


class KeyedTimers:
    """Delayed calls by key (a later schedule of the same key replaces the earlier one)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._calls: dict[str, tuple[int, Callable[[], None]]] = {}
        self._sequence = 0
        self._wakeup = threading.Condition()

    def schedule(self, key: str, delay_s: float, call: Callable[[], None]) -> None:
        with self._wakeup:
            self._sequence += 1
            self._calls[key] = (self._sequence, call)
            heapq.heappush(self._heap, (time.monotonic() + max(delay_s, 0.0), self._sequence, key))
            self._wakeup.notify()

    def cancel(self, key: str) -> None:
        with self._wakeup:
            self._calls.pop(key, None)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._wakeup:
                due: Callable[[], None] | None = None
                if self._heap and self._heap[0][0] <= time.monotonic():
                    _, sequence, key = heapq.heappop(self._heap)
                    entry = self._calls.get(key)
                    if entry and entry[0] == sequence:  # else cancelled or rescheduled
                        del self._calls[key]
                        due = entry[1]
                else:
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else 1.0
                    self._wakeup.wait(timeout=min(max(timeout, 0.0), 1.0))
            if due is not None:
                try:
                    due()
                except Exception:  # noqa: BLE001 - one failed call must not stop the timers
                    log.exception("timer call failed")


class NodeAgent:
    """Plays the kubelet for every node labelled POOL_LABEL (see the module docstring)."""

    def __init__(self, kubeconfig: str | Path, heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.stop_event = threading.Event()
        self._nodes: dict[str, ManagedNode] = {}
        self._nodes_lock = threading.Lock()
        self._nodes_synced = threading.Event()
        self._ips = PodIPAllocator()
        self._timers = KeyedTimers()
        self._reported_invalid: set[tuple[str, str]] = set()
        self._last_contact = time.monotonic()

    def _new_core(self) -> Any:
        # Read the kubeconfig afresh on every (re)connect: a `sandbox up` may have moved the API server.
        return _core(new_api_client(self.kubeconfig))

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> None:
        log.info("node agent starting (kubeconfig %s)", self.kubeconfig)
        for target, name in ((self._node_loop, "node-watch"), (self._pod_loop, "pod-watch")):
            threading.Thread(target=target, name=name, daemon=True).start()
        self._timers.schedule("heartbeat", self.heartbeat_interval_s, self._heartbeat)
        self._timers.run(self.stop_event)
        log.info("node agent stopped")

    def stop(self) -> None:
        self.stop_event.set()

    def _reconnecting(self, loop_name: str, body: Callable[[Any], None]) -> None:
        """Runs body(core) for ever: relists after 410 or a closed watch, backs off on errors."""
        failures = 0
        while not self.stop_event.is_set():
            try:
                body(self._new_core())
                failures = 0
            except WatchExpired as exc:
                log.info("%s: watch expired (%s), listing again", loop_name, exc)
            except Exception as exc:  # noqa: BLE001 - API down or restarting: retry, never die
                delay = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
                failures += 1
                log.warning("%s: %s: %s; retrying in %.1fs", loop_name, type(exc).__name__, exc, delay)
                self.stop_event.wait(delay)

    def _watch(
        self,
        list_function: Callable[..., Any],
        resource_version: str,
        handle: Callable[[dict], None],
        **selectors: Any,
    ) -> None:
        """Watches from resource_version for ever, resuming from the last version seen each time the
        server ends the watch (every WATCH_TIMEOUT_S); WatchExpired (410) goes up for a fresh list."""
        while not self.stop_event.is_set():
            for event in watch_events(list_function, resource_version, **selectors):
                resource_version = event["object"]["metadata"]["resourceVersion"]
                self._last_contact = time.monotonic()
                if event["type"] != "BOOKMARK":
                    handle(event)

    # -- nodes ----------------------------------------------------------------------------------

    def _node_loop(self) -> None:
        self._reconnecting("node watch", self._list_and_watch_nodes)

    def _list_and_watch_nodes(self, core: Any) -> None:
        nodes, resource_version = list_sandbox_nodes(core)
        self._last_contact = time.monotonic()
        log.info("listed %d sandbox node(s); watching from resourceVersion %s", len(nodes), resource_version)
        seen = set()
        for node in nodes:
            seen.add(node["metadata"]["name"])
            self._node_changed(core, node)
        with self._nodes_lock:
            gone = set(self._nodes) - seen
        for name in gone:
            self._node_deleted(core, name)
        self._nodes_synced.set()

        def handle(event: dict) -> None:
            if event["type"] == "DELETED":
                self._node_deleted(core, event["object"]["metadata"]["name"])
            else:
                self._node_changed(core, event["object"])

        self._watch(core.list_node, resource_version, handle, label_selector=POOL_LABEL)

    def _node_changed(self, core: Any, node: Mapping[str, Any]) -> None:
        managed = _managed_node(node)
        if managed is None:
            return
        with self._nodes_lock:
            known = self._nodes.get(managed.name)
            self._nodes[managed.name] = managed
        if _node_needs_fixing(node):
            log.info("node %s: removing the not-ready taint and reporting Ready", managed.name)
            make_node_ready(core, node)
        if known is None or known.uid != managed.uid:
            log.info("managing node %s (%s, pods in %s)", managed.name, managed.internal_ip, managed.pod_cidr)
            if self._nodes_synced.is_set():
                # Pods may have been bound before this node's event reached us: look at them now.
                pods = _json(
                    core.list_pod_for_all_namespaces(
                        field_selector=f"spec.nodeName={managed.name}", _preload_content=False
                    )
                )
                for pod in pods.get("items", []):
                    self._pod_changed(core, pod)

    def _node_deleted(self, core: Any, name: str) -> None:
        with self._nodes_lock:
            if self._nodes.pop(name, None) is None:
                return
        deleted = delete_pods_on_node(core, name)
        log.info("node %s deleted: deleted the %d pod(s) bound to it", name, deleted)

    def _heartbeat(self) -> None:
        try:
            core = self._new_core()
            with self._nodes_lock:
                nodes = list(self._nodes.values())
            if not nodes:
                from kubernetes import client

                client.VersionApi(core.api_client).get_code()  # still proves the API server is there
            now = rfc3339()
            for node in nodes:
                self._heartbeat_node(core, node, now)
            self._last_contact = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - logged; the next heartbeat retries
            log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
            if time.monotonic() - self._last_contact > ORPHAN_TIMEOUT_S:
                log.error("API server unreachable for %.0fs: the sandbox is down, exiting", ORPHAN_TIMEOUT_S)
                self.stop()
        finally:
            if not self.stop_event.is_set():
                self._timers.schedule("heartbeat", self.heartbeat_interval_s, self._heartbeat)

    def _heartbeat_node(self, core: Any, node: ManagedNode, now: str) -> None:
        from kubernetes import client

        # Only the heartbeat: conditions merge on `type`, so lastTransitionTime and the rest stay.
        heartbeat = [{"type": kind, "lastHeartbeatTime": now} for kind in
                     ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")]  # fmt: skip
        try:
            core.patch_node_status(node.name, {"status": {"conditions": heartbeat}})
        except client.ApiException as exc:
            if exc.status != 404:  # a node deleted a moment ago is not an error
                raise
            return
        self._renew_lease(core, node, now)

    def _renew_lease(self, core: Any, node: ManagedNode, now: str) -> None:
        """The node Lease a kubelet renews (kube-node-lease), so a node lifecycle controller sees life."""
        from kubernetes import client

        coordination = client.CoordinationV1Api(core.api_client)
        renew_time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # MicroTime
        spec = {
            "holderIdentity": node.name,
            "leaseDurationSeconds": LEASE_DURATION_S,
            "renewTime": renew_time,
        }
        try:
            coordination.patch_namespaced_lease(node.name, NODE_LEASE_NAMESPACE, {"spec": spec})
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node.uid}
            lease: Any = {"metadata": {"name": node.name, "ownerReferences": [owner]}, "spec": spec}
            try:
                coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, lease)
            except client.ApiException as create_exc:
                if create_exc.status not in (404, 409):  # namespace missing (old server) or a race
                    raise

    # -- pods -----------------------------------------------------------------------------------

    def _pod_loop(self) -> None:
        self._nodes_synced.wait()
        self._reconnecting("pod watch", self._list_and_watch_pods)

    def _list_and_watch_pods(self, core: Any) -> None:
        # Only pods bound to some node; a pod enters this watch (as ADDED) when the scheduler binds it.
        selector = {"field_selector": "spec.nodeName!="}
        body = _json(core.list_pod_for_all_namespaces(_preload_content=False, **selector))
        pods = body.get("items", [])
        resource_version = body["metadata"]["resourceVersion"]
        log.info("listed %d bound pod(s); watching from resourceVersion %s", len(pods), resource_version)
        for pod in pods:  # every IP in use first, so a new pod never gets one a listed pod holds
            self._ips.observe(pod["metadata"]["uid"], (pod.get("status") or {}).get("podIP"))
        for pod in pods:
            self._pod_changed(core, pod)

        def handle(event: dict) -> None:
            pod = event["object"]
            if event["type"] == "DELETED":
                uid = pod["metadata"]["uid"]
                self._ips.release(uid)
                self._timers.cancel(f"delete/{uid}")
            else:
                self._pod_changed(core, pod)

        self._watch(core.list_pod_for_all_namespaces, resource_version, handle, **selector)

    def _pod_changed(self, core: Any, pod: Mapping[str, Any]) -> None:
        from kubernetes import client

        metadata = pod["metadata"]
        namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
        with self._nodes_lock:
            node = self._nodes.get(pod["spec"].get("nodeName", ""))
        if node is None:
            return
        self._ips.observe(uid, (pod.get("status") or {}).get("podIP"))
        seen = time.monotonic()
        action = decide(pod, datetime.now(UTC))
        try:
            if action.kind == "run":
                pod_ip = self._ips.allocate(uid, node.pod_cidr)
                core.patch_namespaced_pod_status(
                    name, namespace, running_status_patch(pod, node.internal_ip, pod_ip, rfc3339())
                )
                took_ms = (time.monotonic() - seen) * 1000
                log.info(
                    "pod %s/%s on %s: Running (%s), %.1f ms after seen",
                    namespace,
                    name,
                    node.name,
                    pod_ip,
                    took_ms,
                )
            elif action.kind == "exit":
                assert action.exit_code is not None
                pod_ip = self._ips.allocate(uid, node.pod_cidr)
                patch = exited_status_patch(pod, action.exit_code, node.internal_ip, pod_ip, rfc3339())
                core.patch_namespaced_pod_status(name, namespace, patch)
                log.info("pod %s/%s on %s: %s (exit code %d)", namespace, name, node.name,
                         patch["status"]["phase"], action.exit_code)  # fmt: skip
            elif action.kind == "delete":
                assert action.delete_at is not None
                delay = (action.delete_at - datetime.now(UTC)).total_seconds()
                self._timers.schedule(f"delete/{uid}", delay, lambda: self._delete_now(namespace, name, uid))
            elif action.kind == "invalid":
                self._report_invalid(core, pod, node.name, action.message)
        except client.ApiException as exc:
            if exc.status != 404:  # deleted while we acted: nothing to do
                log.warning("pod %s/%s: %s %s: %s", namespace, name, action.kind, exc.status, exc.body)

    def _delete_now(self, namespace: str, name: str, uid: str) -> None:
        if _delete_pod(self._new_core(), namespace, name, uid):
            log.info("pod %s/%s: grace period over, deleted", namespace, name)

    def _report_invalid(self, core: Any, pod: Mapping[str, Any], node_name: str, message: str) -> None:
        metadata = pod["metadata"]
        key = (metadata["uid"], message)
        if key in self._reported_invalid:
            return  # one Event per bad value, not one per watch event
        self._reported_invalid.add(key)
        log.warning("pod %s/%s: %s", metadata["namespace"], metadata["name"], message)
        now = rfc3339()
        event = {
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata["uid"],
            },  # fmt: skip
            "reason": "InvalidSandboxAnnotation",
            "message": message,
            "type": "Warning",
            "source": {"component": "kubefit-sandbox-agent", "host": node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        core.create_namespaced_event(metadata["namespace"], event)


# ---------------------------------------------------------------------------------------------
# Starting and stopping the agent process
# ---------------------------------------------------------------------------------------------


def _is_agent_process(pid: int) -> bool:
    """True if pid is a live node agent (guards against a recycled PID in a stale pid file)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and AGENT_MODULE.encode() in cmdline


def running_agent_pid(state_dir: str | Path) -> int | None:
    """The PID of the node agent running for this sandbox, or None.

    From agent.pid (written by start_agent), else from agent.lock (written by the agent itself once it
    holds the lock), so that an agent whose pid file was lost is still found.
    """
    for name in (AGENT_PID_FILE, AGENT_LOCK_FILE):
        try:
            pid = int((Path(state_dir) / name).read_text().strip())
        except (OSError, ValueError):
            continue
        if _is_agent_process(pid):
            return pid
    return None


def default_cluster_file() -> Path | None:
    """$KUBEFIT_SANDBOX_CLUSTER, else the repository's examples/sandbox/cluster.yaml when present."""
    override = os.environ.get(CLUSTER_FILE_ENV)
    if override:
        return Path(override)
    return EXAMPLE_CLUSTER_FILE if EXAMPLE_CLUSTER_FILE.is_file() else None


def start_agent(sandbox: Any, cluster_file: str | Path | None = None) -> int:
    """Creates the cluster file's missing nodes (Ready, untainted), starts the agent unless it runs.

    Returns the agent's PID.

    `sandbox` needs `state_dir` and `kubeconfig_path` (kubefit.sandbox.controlplane.Sandbox). Without
    `cluster_file`, default_cluster_file() is used; with none at all, only existing nodes are managed.
    The PID goes to <state_dir>/agent.pid; stop_agent(state_dir) stops it.
    """
    state_dir, kubeconfig = Path(sandbox.state_dir), Path(sandbox.kubeconfig_path)
    path = Path(cluster_file) if cluster_file is not None else default_cluster_file()
    if path is not None:
        created = ensure_pool_nodes(_core(new_api_client(kubeconfig)), load_cluster_config(path))
        if created:
            print(f"  simulated nodes from {path}: created {', '.join(created)}", file=sys.stderr, flush=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    # Serialises concurrent start_agent calls (several test sessions): one check-and-spawn at a time.
    with open(state_dir / AGENT_START_LOCK_FILE, "w") as start_lock:
        fcntl.flock(start_lock, fcntl.LOCK_EX)
        pid = running_agent_pid(state_dir)
        if pid is not None:
            return pid
        return _spawn_agent(state_dir, kubeconfig)


def _spawn_agent(state_dir: Path, kubeconfig: Path) -> int:
    log_path = state_dir / AGENT_LOG_FILE
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", AGENT_MODULE, "--kubeconfig", str(kubeconfig)]
    command += ["--lock-file", str(state_dir / AGENT_LOCK_FILE)]
    with open(log_path, "ab") as log_file:
        # Own session: it outlives `kubefit sandbox up` and its terminal's signals.
        process = subprocess.Popen(
            command,
            cwd=state_dir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file = state_dir / AGENT_PID_FILE
    pid_file.write_text(f"{process.pid}\n")
    try:
        process.wait(timeout=0.5)  # an agent that cannot start (bad install, lock held) dies at once
    except subprocess.TimeoutExpired:
        print(f"  started node agent (pid {process.pid}), log {log_path}", file=sys.stderr, flush=True)
        return process.pid
    pid_file.unlink(missing_ok=True)
    if process.returncode == LOCK_HELD_EXIT_CODE:
        # An agent this state dir did not record (its pid file lost) already runs: adopt it.
        running = running_agent_pid(state_dir)
        if running is not None:
            pid_file.write_text(f"{running}\n")
            return running
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    raise NodeAgentError(f"node agent exited at once ({process.returncode}); {log_path}:\n{tail}")


def stop_agent(state_dir: str | Path, timeout_s: float = 5.0) -> bool:
    """Stops the node agent recorded in <state_dir>/agent.pid (SIGTERM, then SIGKILL); True if one ran."""
    pid = running_agent_pid(state_dir)
    (Path(state_dir) / AGENT_PID_FILE).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _is_agent_process(pid) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
        except ChildProcessError:
            pass
        time.sleep(0.05)
    if _is_agent_process(pid):
        os.kill(pid, signal.SIGKILL)
    return True


# ---------------------------------------------------------------------------------------------
# `kubefit sandbox node ...`
# ---------------------------------------------------------------------------------------------


def _kubeconfig_for(args: argparse.Namespace) -> Path:
    if getattr(args, "kubeconfig", None):
        return Path(args.kubeconfig)
    state_dir = getattr(args, "state_dir", None)
    if not state_dir:
        from kubefit.sandbox.controlplane import default_state_dir

        state_dir = default_state_dir()
    return Path(state_dir) / "kubeconfig"


def _run_node_command(args: argparse.Namespace, action: Callable[[Any], int]) -> int:
    from kubernetes.client import ApiException

    kubeconfig = _kubeconfig_for(args)
    if not kubeconfig.is_file():
        print(
            f"kubefit: no sandbox kubeconfig at {kubeconfig}: run `kubefit sandbox up` first", file=sys.stderr
        )
        return 1
    try:
        return action(_core(new_api_client(kubeconfig)))
    except NodeAgentError as exc:
        print(f"kubefit: {exc}", file=sys.stderr)
        return 2
    except ApiException as exc:
        print(f"kubefit: API server answered {exc.status} {exc.reason}: {exc.body}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"kubefit: cannot reach the sandbox API server: {exc}", file=sys.stderr)
        return 1


def _node_add(args: argparse.Namespace) -> int:
    def action(core: Any) -> int:
        names = add_nodes(
            core, args.accelerator, args.count, args.pool, args.name, args.nodes, args.cpu, args.memory
        )
        print(f"added {', '.join(names)}")
        return 0

    return _run_node_command(args, action)


def _node_remove(args: argparse.Namespace) -> int:
    def action(core: Any) -> int:
        for name in args.names:
            deleted = remove_node(core, name)
            print(f"removed {name} (deleted {deleted} pod(s) bound to it)")
        return 0

    return _run_node_command(args, action)


def node_rows(nodes: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Rows of `node list`: NAME POOL ACCELERATOR DEVICES CPU MEMORY READY PODS."""
    active = [p for p in pods if (p.get("status") or {}).get("phase") not in TERMINAL_PHASES]
    rows = []
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        labels = node["metadata"].get("labels") or {}
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        devices = [f"{value} {key}" for key, value in allocatable.items() if "/" in key]
        conditions = (node.get("status") or {}).get("conditions") or []
        ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), "Unknown")
        name = node["metadata"]["name"]
        rows.append(
            [
                name,
                labels.get(POOL_LABEL, ""),
                labels.get(ACCELERATOR_LABEL, ""),
                ", ".join(devices) or "-",
                str(allocatable.get("cpu", "")),
                str(allocatable.get("memory", "")),
                "True" if ready == "True" else ready,
                str(sum(1 for p in active if p["spec"].get("nodeName") == name)),
            ]
        )
    return rows


def _node_list(args: argparse.Namespace) -> int:
    def action(core: Any) -> int:
        nodes, _ = list_sandbox_nodes(core)
        pods = _json(
            core.list_pod_for_all_namespaces(field_selector="spec.nodeName!=", _preload_content=False)
        )
        rows = [["NAME", "POOL", "ACCELERATOR", "DEVICES", "CPU", "MEMORY", "READY", "PODS"]]
        rows += node_rows(nodes, pods.get("items", []))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return 0

    return _run_node_command(args, action)


def add_node_commands(subparsers: Any) -> None:
    """Adds `node add|remove|list` to the `kubefit sandbox` sub-commands."""
    node = subparsers.add_parser("node", help="add, remove and list simulated GPU/TPU nodes")
    node.add_argument("--kubeconfig", help="the sandbox's kubeconfig (default: <state dir>/kubeconfig)")
    actions = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="add simulated node(s) while the sandbox runs")
    add.add_argument(
        "--accelerator", default=None, help="catalog name, e.g. nvidia-h100-80gb (omit: CPU-only)"
    )
    add.add_argument("--count", type=int, default=None, help="accelerators per node (default: the pool's)")
    add.add_argument("--pool", default=None, help="pool name (default: the pool of that accelerator)")
    add.add_argument("--name", default=None, help="node name (default: <pool>-<first free index>)")
    add.add_argument("--nodes", type=int, default=1, help="how many nodes to add (default 1)")
    add.add_argument("--cpu", default=None, help="CPU capacity, e.g. 96 (default: the pool's)")
    add.add_argument("--memory", default=None, help="memory capacity, e.g. 1Ti (default: the pool's)")
    add.set_defaults(handler=_node_add)

    remove = actions.add_parser("remove", help="delete simulated node(s) and the pods bound to them")
    remove.add_argument("names", nargs="+", metavar="NAME")
    remove.set_defaults(handler=_node_remove)

    listing = actions.add_parser("list", help="list the simulated nodes")
    listing.set_defaults(handler=_node_list)


# ---------------------------------------------------------------------------------------------
# The agent process
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {AGENT_MODULE}", description="kubefit sandbox node agent"
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--heartbeat-seconds", type=float, default=HEARTBEAT_INTERVAL_S)
    parser.add_argument("--lock-file", help="held while running; a second agent with the same file exits")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    # urllib3 logs each of its own connection retries; the agent's one line per failed attempt is enough.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    if args.lock_file:
        # Not opened with "w": that would empty the file, and the PID in it, under the agent holding it.
        lock = os.open(args.lock_file, os.O_RDWR | os.O_CREAT, 0o644)  # held open until the process exits
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Two agents would both patch the same pods, with different pod IPs.
            log.error("another node agent holds %s: exiting", args.lock_file)
            return LOCK_HELD_EXIT_CODE
        os.ftruncate(lock, 0)
        os.write(lock, f"{os.getpid()}\n".encode())
    agent = NodeAgent(args.kubeconfig, heartbeat_interval_s=args.heartbeat_seconds)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
