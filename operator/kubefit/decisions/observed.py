"""What the operator observes of a job's worker pods, reduced to the facts its decisions use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubefit.builders.naming import JOB_LABEL, worker_index

RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
PENDING = "Pending"
FINISHED_PHASES = frozenset({SUCCEEDED, FAILED})


@dataclass(frozen=True)
class WorkerPod:
    name: str
    index: int | None  # from the deterministic name; None for a labelled pod not named like a worker
    uid: str
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    node_name: str | None = None
    terminating: bool = False  # deletionTimestamp set
    controller_uid: str | None = None  # uid of the owner reference with controller=true

    @property
    def running(self) -> bool:
        return self.phase == RUNNING and not self.terminating

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES

    @property
    def unscheduled(self) -> bool:
        return self.phase == PENDING and not self.node_name


def _controller_uid(metadata: Mapping[str, Any]) -> str | None:
    for reference in metadata.get("ownerReferences") or []:
        if reference.get("controller"):
            return reference.get("uid")
    return None


def worker_from_pod(pod: Mapping[str, Any]) -> WorkerPod | None:
    """The worker view of a pod manifest, or None if the pod carries no job label."""
    metadata = pod.get("metadata") or {}
    job_name = (metadata.get("labels") or {}).get(JOB_LABEL)
    if not job_name:
        return None
    name = metadata.get("name", "")
    return WorkerPod(
        name=name,
        index=worker_index(name, job_name),
        uid=metadata.get("uid", ""),
        phase=(pod.get("status") or {}).get("phase") or PENDING,
        node_name=(pod.get("spec") or {}).get("nodeName") or None,
        terminating=metadata.get("deletionTimestamp") is not None,
        controller_uid=_controller_uid(metadata),
    )
