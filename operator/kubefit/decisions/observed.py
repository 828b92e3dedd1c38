"""What the operator observes of a job's worker pods, reduced to the facts its decisions use."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubefit.api.units import parse_rfc3339
from kubefit.builders.naming import (
    ATTEMPT_ANNOTATION,
    JOB_LABEL,
    NNODES_ANNOTATION,
    WORLD_SIZE_ANNOTATION,
    worker_index,
)
from kubefit.decisions.pod_requests import effective_requests

# Pod phases (core/v1 PodStatus.phase), not the job's: those are kubefit.api.conditions.JobPhase.
POD_RUNNING = "Running"
POD_SUCCEEDED = "Succeeded"
POD_FAILED = "Failed"
POD_PENDING = "Pending"
POD_FINISHED_PHASES = frozenset({POD_SUCCEEDED, POD_FAILED})
# A pod still shown terminating this long after its deletionTimestamp is taken for stuck (its node
# unreachable, a finalizer), not waited for. Not at the timestamp itself: the kubelet kills the containers
# then and removes the pod after, seconds later on a busy node, while it still holds its devices.
STUCK_AFTER_GRACE_SECONDS = 60
# A failed pod's status.reason where the kubelet stopped it, which Kubernetes before 1.26 (no DisruptionTarget
# condition) says only so: node-pressure eviction (eviction manager), preemption for a critical pod
# (kubelet preemption), graceful node shutdown ("Shutdown" in 1.20, "Terminated" since; "NodeShutdown": not
# admitted on a node shutting down).
DISRUPTION_REASONS = frozenset({"Evicted", "Preempting", "Terminated", "Shutdown", "NodeShutdown"})
# A container's state.terminated.reason that says nothing its exit code does not (the kubelet's own words).
_GENERIC_EXIT_REASONS = frozenset({None, "Error", "Completed"})
# Kept of a reason at most: the kubelet's are short CamelCase words; an odd one must not grow the index.
_REASON_CHARACTERS = 64


@dataclass(frozen=True)
class WorkerPod:
    name: str
    index: int | None  # from the deterministic name; None for a labelled pod not named like a worker
    uid: str
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    node_name: str | None = None
    terminating: bool = False  # deletionTimestamp set
    controller_uid: str | None = None  # uid of the owner reference with controller=true
    world_size: int | None = None  # the worker count it was started with, where that is fixed at start
    nnodes: str | None = None  # torchrun's node range it was started with (elastic pytorch), "floor:ceiling"
    # metadata.deletionTimestamp: when its termination grace ends (the API server sets it to the delete's
    # time plus the grace period)
    deletion_timestamp: str | None = None
    attempt: int | None = None  # the fixed group's restart attempt it was created for (None: not stated)
    # condition DisruptionTarget=True: Kubernetes (1.26+) stopped it for a reason not its own (its node
    # deleted, a taint, preemption, an eviction), not a fault of the training; before 1.26, a failed pod's
    # status.reason of the kubelet's eviction, preemption or node shutdown (DISRUPTION_REASONS)
    disrupted: bool = False
    created: str | None = None  # metadata.creationTimestamp
    # The extended resources the pod holds (decisions/pod_requests.py), as (name, count) pairs; empty for a
    # worker built without its manifest's resources.
    devices: tuple[tuple[str, int], ...] = ()
    # Not bound, and kube-scheduler said why (condition PodScheduled=False, reason Unschedulable): its
    # message (a claim not found, a node selector nothing matches, too little CPU), cut short.
    unschedulable: str | None = None
    # The resources that message, whole, says nodes lack ("Insufficient nvidia.com/gpu"): read before the
    # cut, which newer kube-schedulers' preemption note pushes the verdicts past.
    short_of: frozenset[str] = frozenset()
    # Bound to a node that is not Ready (the controller's view): it may run on, but unreachable; the
    # scheduling pass counts nothing on such a node, and the worker is taken as not running.
    node_lost: bool = False
    # Why a failed worker ended, for the messages that say it failed (its pod is deleted for its
    # replacement): the trainer container's (the first's) state.terminated.exitCode, and the pod's
    # status.reason (Evicted, ...) or else the trainer's terminated reason (OOMKilled, ...). None unless
    # the worker failed.
    exit_code: int | None = None
    exit_reason: str | None = None
    # Its trainer ended (phase says how) while its pod runs on: a classic sidecar injected by a webhook
    # (Istio's, Linkerd's proxy) does not stop with it under restartPolicy Never. The pod holds its
    # devices until deleted, so a stopping job does not keep it for its logs (workers.stop_workers).
    outlived_by_sidecar: bool = False
    # Its trainer container has started at some time (running, terminated, or restarted): a Pending pod
    # may be so while another container has not started (a sidecar still pulling). True when the pod's
    # status does not say (a view built without it).
    trainer_started: bool = True

    def holds(self, resource_name: str) -> int | None:
        """How many of `resource_name` the pod holds: what it was created with, which an edit of the job's
        spec since does not change; None when its resources are not known."""
        if not self.devices:
            return None
        return dict(self.devices).get(resource_name, 0)

    @property
    def ready(self) -> bool:
        """The one definition of a ready worker, used by every count and condition (the gang timeout
        counts placement instead: running.py _placed): its pod is Running and not terminating (a deleted
        pod still shown Running is on its way out), and its node is Ready (node_lost)."""
        return self.phase == POD_RUNNING and not self.terminating and not self.node_lost

    def stuck_terminating(self, now: datetime) -> bool:
        """Terminating, and past its deletionTimestamp by STUCK_AFTER_GRACE_SECONDS."""
        end = parse_rfc3339(self.deletion_timestamp) if self.terminating else None
        return end is not None and now >= end + timedelta(seconds=STUCK_AFTER_GRACE_SECONDS)

    @property
    def failure_cause(self) -> str | None:
        """How the failed pod ended, e.g. "exit code 137 (OOMKilled)", "Evicted"; None when not known. The
        kubelet's generic reasons (Error, Completed) add nothing to the exit code and are left out."""
        reason = self.exit_reason if self.exit_reason not in _GENERIC_EXIT_REASONS else None
        if self.exit_code is None:
            return reason
        return f"exit code {self.exit_code}" + (f" ({reason})" if reason else "")

    @property
    def finished(self) -> bool:
        return self.phase in POD_FINISHED_PHASES

    @property
    def unscheduled(self) -> bool:
        return self.phase == POD_PENDING and not self.node_name


def _controller_uid(metadata: Mapping[str, Any]) -> str | None:
    for reference in metadata.get("ownerReferences") or []:
        if reference.get("controller"):
            uid = reference.get("uid")
            return uid if isinstance(uid, str) else None
    return None


def worker_from_pod(pod: Mapping[str, Any]) -> WorkerPod | None:
    """The worker view of a pod manifest, or None if the pod carries no job label."""
    metadata = pod.get("metadata") or {}
    job_name = (metadata.get("labels") or {}).get(JOB_LABEL)
    if not job_name:
        return None
    name = metadata.get("name", "")
    status = pod.get("status") or {}
    phase, outlived_by_sidecar = _worker_phase(pod)
    exit_code, exit_reason = _how_it_ended(pod) if phase == POD_FAILED else (None, None)
    return WorkerPod(
        name=name,
        index=worker_index(name, job_name),
        uid=metadata.get("uid", ""),
        phase=phase,
        node_name=(pod.get("spec") or {}).get("nodeName") or None,
        terminating=metadata.get("deletionTimestamp") is not None,
        controller_uid=_controller_uid(metadata),
        world_size=_count_annotation(metadata, WORLD_SIZE_ANNOTATION),
        attempt=_count_annotation(metadata, ATTEMPT_ANNOTATION),
        disrupted=_disrupted(status),
        nnodes=_nnodes(metadata),
        deletion_timestamp=_text(metadata.get("deletionTimestamp")),
        created=_text(metadata.get("creationTimestamp")),
        devices=tuple(sorted(item for item in effective_requests(pod.get("spec") or {}).items() if item[1])),
        exit_code=exit_code,
        exit_reason=exit_reason,
        outlived_by_sidecar=outlived_by_sidecar,
        unschedulable=_unschedulable(pod),
        short_of=_short_of(pod),
        trainer_started=phase != POD_PENDING or _trainer_started(pod),
    )


# kube-scheduler's message names every node's verdict: the start of it is what a status can carry.
_UNSCHEDULABLE_SHOWN = 200


_INSUFFICIENT = re.compile(r"Insufficient (\S+?)[,.]?(?:\s|$)")


def _short_of(pod: Mapping[str, Any]) -> frozenset[str]:
    """The resources kube-scheduler's whole Unschedulable message says nodes lack (_unschedulable)."""
    message = _unschedulable(pod, cut=False)
    return frozenset(_INSUFFICIENT.findall(message)) if message else frozenset()


def _unschedulable(pod: Mapping[str, Any], cut: bool = True) -> str | None:
    """kube-scheduler's reason an unbound pod waits (PodScheduled=False, Unschedulable); None otherwise."""
    if (pod.get("spec") or {}).get("nodeName"):
        return None
    conditions = (pod.get("status") or {}).get("conditions")
    for condition in conditions if isinstance(conditions, list) else ():
        if (
            isinstance(condition, Mapping)
            and condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            message = " ".join(str(condition.get("message") or "no reason given").split())
            if cut and len(message) > _UNSCHEDULABLE_SHOWN:
                message = message[: _UNSCHEDULABLE_SHOWN - 1] + "…"
            return message
    return None


def _worker_phase(pod: Mapping[str, Any]) -> tuple[str, bool]:
    """The worker's phase, and whether its pod outlives its trainer. The pod's phase, but where the trainer
    has ended in a pod not finished, the trainer's exit code says: a classic injected sidecar (Istio's,
    Linkerd's proxy) runs on, and the pod with it stays Running, holding its devices, for ever. A Failed pod
    whose trainer exited 0 failed by another container (a proxy that exited non-zero after it): its worker
    succeeded, unless Kubernetes stopped the pod (a status.reason such as Evicted, or a disruption), where
    a trainer may exit 0 from its SIGTERM handler before its work is done."""
    status = pod.get("status") or {}
    phase = status.get("phase") or POD_PENDING
    code = _exit_code(_trainer_terminated(pod))
    if phase == POD_FAILED:
        stopped_by_kubernetes = bool(status.get("reason")) or _disrupted(status)
        return (POD_SUCCEEDED if code == 0 and not stopped_by_kubernetes else phase), False
    if phase in POD_FINISHED_PHASES or code is None:
        return phase, False
    return (POD_SUCCEEDED if code == 0 else POD_FAILED), True


def _how_it_ended(pod: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """A failed worker's trainer exit code, and the pod's status.reason or else the trainer's terminated
    reason."""
    terminated = _trainer_terminated(pod)
    reason = _text((pod.get("status") or {}).get("reason")) or _text(terminated.get("reason"))
    return _exit_code(terminated), reason[:_REASON_CHARACTERS] if reason else None


def _trainer_terminated(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The trainer container's state.terminated, {} while it has not ended."""
    terminated = (_trainer_status(pod).get("state") or {}).get("terminated")
    return terminated if isinstance(terminated, Mapping) else {}


def _trainer_started(pod: Mapping[str, Any]) -> bool:
    """Whether a Pending pod's trainer container has started (running or ended now, or before a restart).
    Without a status of it (none yet: unscheduled, or the kubelet has not reported), it has not."""
    found = _trainer_status(pod)
    state, last = found.get("state") or {}, found.get("lastState") or {}
    if not isinstance(state, Mapping) or not isinstance(last, Mapping):
        return False
    return any(state.get(key) is not None for key in ("running", "terminated")) or (
        last.get("terminated") is not None
    )


def _trainer_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The trainer container's containerStatuses entry, {} if none. The trainer is the first container
    (builders.pods); the kubelet orders containerStatuses by name, so it is found by its name (or taken as
    the only one)."""
    containers = (pod.get("spec") or {}).get("containers")
    first = containers[0] if isinstance(containers, list) and containers else None
    trainer = first.get("name") if isinstance(first, Mapping) else None
    listed = (pod.get("status") or {}).get("containerStatuses")
    statuses = [item for item in listed if isinstance(item, Mapping)] if isinstance(listed, list) else []
    named = [item for item in statuses if item.get("name") == trainer]
    return named[0] if named else statuses[0] if len(statuses) == 1 and trainer is None else {}


def _exit_code(terminated: Mapping[str, Any]) -> int | None:
    code = terminated.get("exitCode")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _disrupted(status: Mapping[str, Any]) -> bool:
    """Stopped by Kubernetes, not by a fault of its own: the DisruptionTarget condition (1.26+), or before it
    a failed pod's status.reason from the kubelet (DISRUPTION_REASONS)."""
    if status.get("phase") == POD_FAILED and status.get("reason") in DISRUPTION_REASONS:
        return True
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return False
    return any(
        isinstance(condition, Mapping)
        and condition.get("type") == "DisruptionTarget"
        and condition.get("status") == "True"
        for condition in conditions
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _nnodes(metadata: Mapping[str, Any]) -> str | None:
    value = (metadata.get("annotations") or {}).get(NNODES_ANNOTATION)
    return value if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}:[0-9]{1,9}", value) else None


def _count_annotation(metadata: Mapping[str, Any], key: str) -> int | None:
    value = (metadata.get("annotations") or {}).get(key)
    # isascii too: "²" is a digit to isdigit() and not to int() (an annotation edited by hand)
    return (
        int(value)
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10
        else None
    )
