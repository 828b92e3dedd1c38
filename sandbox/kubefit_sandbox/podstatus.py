"""What the node agent does with a pod, and the status patches a kubelet would send (pure).

No API calls here: `decide` and the patches take a pod as a dict and return plain data, so that they
are unit-tested without a cluster (kubefit_sandbox.nodeagent sends them).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubefit.api import units
from kubefit_sandbox.errors import NodeAgentError

EXIT_ANNOTATION = "sandbox.kubefit.dev/exit"
SHUTDOWN_ANNOTATION = "sandbox.kubefit.dev/shutdown-seconds"
START_ANNOTATION = "sandbox.kubefit.dev/start-seconds"
TERMINAL_PHASES = ("Succeeded", "Failed")


class InvalidAnnotation(ValueError):
    """A sandbox annotation on a pod whose value cannot be used; the message names the annotation."""


# ---------------------------------------------------------------------------------------------
# Time (Kubernetes' timestamp format)
# ---------------------------------------------------------------------------------------------


def rfc3339(moment: datetime | None = None) -> str:
    """Kubernetes' metav1.Time format (kubefit.api.units.rfc3339); now, when no moment is given."""
    return units.rfc3339(moment or datetime.now(UTC))


def parse_rfc3339(text: str) -> datetime:
    """The moment a metav1.Time names, in UTC; ValueError when it is not one."""
    parsed = units.parse_rfc3339(text)
    if parsed is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    return parsed.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# What to do with a pod, and the status patches
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
    return _seconds_from(pod, SHUTDOWN_ANNOTATION)


def start_seconds_from(pod: Mapping[str, Any]) -> float | None:
    """How long after its creation the pod's containers start (START_ANNOTATION: an image pull), or None."""
    return _seconds_from(pod, START_ANNOTATION)


def _seconds_from(pod: Mapping[str, Any], annotation: str) -> float | None:
    value = _annotations(pod).get(annotation)
    if value is None:
        return None
    try:
        seconds = float(str(value).strip())
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 86400:
        raise InvalidAnnotation(
            f"annotation {annotation}={value!r} must be a number of seconds from 0 to 86400"
        )
    return seconds


@dataclass(frozen=True)
class PodAction:
    """What the agent does with a pod bound to one of its nodes."""

    kind: str  # "none" | "run" | "start-later" | "exit" | "delete" | "invalid"
    exit_code: int | None = None
    delete_at: datetime | None = None  # for "delete"
    start_at: datetime | None = None  # for "start-later": look at the pod again then
    message: str = ""  # for "invalid"


def decide(pod: Mapping[str, Any], now: datetime) -> PodAction:
    """The next step for a pod bound to a sandbox node (pure: the caller checks the node)."""
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return _deletion(pod, phase, now)
    if phase in TERMINAL_PHASES:
        return PodAction("none")
    try:
        exit_code = exit_code_from(pod)
    except InvalidAnnotation as exc:
        return PodAction("invalid", message=str(exc))
    if exit_code is not None:
        return PodAction("exit", exit_code=exit_code)
    if phase == "Running":
        return PodAction("none")
    return _start(pod, now)


def _deletion(pod: Mapping[str, Any], phase: str, now: datetime) -> PodAction:
    if phase != "Running":
        return PodAction("delete", delete_at=now)  # no running container to wait for
    metadata = pod["metadata"]
    deadline = parse_rfc3339(metadata["deletionTimestamp"])
    try:
        shutdown = shutdown_seconds_from(pod)
    except InvalidAnnotation:
        shutdown = None  # fall back to the full grace period; the annotation is reported elsewhere
    if shutdown is not None:
        # deletionTimestamp = time of the delete request + the grace period.
        requested = deadline - timedelta(seconds=metadata.get("deletionGracePeriodSeconds") or 0)
        deadline = min(deadline, requested + timedelta(seconds=shutdown))
    return PodAction("delete", delete_at=deadline)


def _start(pod: Mapping[str, Any], now: datetime) -> PodAction:
    """A pod not running yet: now, or at its creation plus START_ANNOTATION's seconds."""
    try:
        start = start_seconds_from(pod)
    except InvalidAnnotation as exc:
        return PodAction("invalid", message=str(exc))
    created = pod.get("metadata", {}).get("creationTimestamp")
    if start is not None and created:
        start_at = parse_rfc3339(created) + timedelta(seconds=start)
        if start_at > now:
            return PodAction("start-later", start_at=start_at)
    return PodAction("run")


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
    pod: Mapping[str, Any], exit_code: int, host_ip: str, pod_ip: str, now: str, message: str | None = None
) -> dict[str, Any]:
    """The status patch for a pod whose containers all exited with `exit_code` (0 -> Succeeded).

    `message` (why it ended, e.g. a command that could not start) goes into the containers' terminated
    state.
    """
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
        if message:
            terminated["message"] = message
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


def waiting_status_patch(pod: Mapping[str, Any], reason: str, message: str, now: str) -> dict[str, Any]:
    """A pod whose containers cannot be created (the kubelet's CreateContainerConfigError): Pending, with
    the reason and message in every container's waiting state."""
    if not pod.get("spec", {}).get("containers"):
        raise ValueError("pod has no spec.containers")
    waiting = {"waiting": {"reason": reason, "message": message}}
    return {
        "status": {
            "phase": "Pending",
            "conditions": _conditions(pod, now, ready=False, reason="ContainersNotReady"),
            "containerStatuses": [
                _container_status(pod, container, waiting, ready=False)
                for container in pod["spec"]["containers"]
            ],
        }
    }


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

    def claim(self, pod_uid: str, preferred_ip: str, fallback_cidr: str) -> str:
        """`preferred_ip` for the pod unless another pod holds it; else the first free one of fallback_cidr."""
        with self._lock:
            if pod_uid in self._by_pod:
                return self._by_pod[pod_uid]
            used = set(self._by_pod.values())
            if preferred_ip not in used:
                self._by_pod[pod_uid] = preferred_ip
                return preferred_ip
            for host in ipaddress.ip_network(fallback_cidr).hosts():
                if str(host) not in used:
                    self._by_pod[pod_uid] = str(host)
                    return str(host)
        raise NodeAgentError(f"no free pod IP left in {fallback_cidr}")

    def release(self, pod_uid: str) -> None:
        with self._lock:
            self._by_pod.pop(pod_uid, None)

    def ip_of(self, pod_uid: str) -> str | None:
        with self._lock:
            return self._by_pod.get(pod_uid)
