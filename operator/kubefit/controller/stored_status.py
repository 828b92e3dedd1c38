"""What the reconciler reads of a job as stored before it decides (its priority, the grant its status
records, the target of its open checkpoint request), and whether a status it would write changes anything.

Functions of the job's stored object alone; they write nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubefit.api.conditions import ConditionType, Reason

# An open checkpoint request of these reasons moves an admitted job to its target count.
ADMITTED_REQUESTS = frozenset({Reason.SHRUNK_FOR_PRIORITY, Reason.SCALED_DOWN, Reason.RESTARTING})


def same_but_status(read: Mapping[str, Any], written: Mapping[str, Any]) -> bool:
    """`written` is `read` but for its status and resourceVersion (nobody else changed the job meanwhile)."""
    return bool(
        read.get("spec") == written.get("spec")
        and {**read.get("metadata", {}), "resourceVersion": None, "managedFields": None}
        == {**written.get("metadata", {}), "resourceVersion": None, "managedFields": None}
    )


def priority_of(job: Mapping[str, Any]) -> int:
    """spec.scheduling.priority as stored (0 where absent or not a number: a job the reconcile finds invalid)."""
    scheduling = (job.get("spec") or {}).get("scheduling")
    priority = scheduling.get("priority") if isinstance(scheduling, Mapping) else None
    return priority if isinstance(priority, int) and not isinstance(priority, bool) else 0


def admitted_with(status: Mapping[str, Any]) -> int | None:
    """The workers the job's status says it was admitted with; None when it says it is not admitted
    (preempted, released). A status without the condition (lost, or restored from a backup) says nothing:
    0, and the workers found are taken for admitted."""
    admitted = [
        item.get("status") == "True"
        for item in status.get("conditions") or []
        if item.get("type") == ConditionType.ADMITTED
    ]
    if admitted and not admitted[0]:
        return None
    desired = status.get("desiredReplicas")
    return desired if admitted and isinstance(desired, int) else 0


def checkpoint_target(status: Mapping[str, Any], job: Mapping[str, Any] | None = None) -> int | None:
    """The worker count an open checkpoint request of an admitted job goes to (None: no such request). A
    scale-down's request (its id `<generation>-<n>`) opened for another generation of the spec, which now
    asks for more workers than its target, was undone while the operator was down (a capacity cut also
    reads ScaledDown: with the spec as it was, or asking for the target, the request stands)."""
    checkpoint = status.get("checkpoint") or {}
    target = checkpoint.get("targetReplicas")
    if checkpoint.get("reason") not in ADMITTED_REQUESTS or not isinstance(target, int):
        return None
    if checkpoint.get("reason") == Reason.SCALED_DOWN and job is not None:
        opened_for = str(checkpoint.get("requestId") or "").partition("-")[0]
        replicas = ((job.get("spec") or {}).get("workers") or {}).get("replicas")
        asks_more = isinstance(replicas, int) and not isinstance(replicas, bool) and replicas > target
        if asks_more and opened_for != str((job.get("metadata") or {}).get("generation")):
            return None
    return target


def present(value: Any) -> Any:
    """`value` without the None fields at any depth: what is stored of a status whose None fields are absent
    (a status is written whole, and a decision's None removes a field)."""
    if isinstance(value, Mapping):
        return {key: present(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [present(item) for item in value]
    return value


def status_changed(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return bool(present(current) != present(desired))


def error_kept(read: Mapping[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
    """`status` with the Ready condition and replicas of the status `read`, when that Ready records a
    ReconcileError; None when it does not."""
    error = next(
        (item for item in read.get("conditions") or [] if item.get("type") == ConditionType.READY), None
    )
    if error is None or error.get("reason") != Reason.RECONCILE_ERROR:
        return None
    conditions = [error if item.get("type") == ConditionType.READY else item for item in status["conditions"]]
    return {**status, "conditions": conditions, "replicas": read.get("replicas")}
