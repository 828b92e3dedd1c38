"""The events a reconcile posts on its TrainingJob, through kopf's event poster."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

import kopf

from kubefit.api.conditions import EventReason
from kubefit.decisions.job import JobEvent

logger = logging.getLogger("kubefit.reconciler")


def post_events(raw_job: dict[str, Any], events: Sequence[JobEvent]) -> None:
    """Posts `events` on the job through kopf (its handler context must be this thread's)."""
    job = kopf.Body(cast(kopf.RawBody, raw_job))
    for event in events:
        try:
            kopf.event(job, type=event.type, reason=event.reason, message=event.message)
        except RuntimeError as error:
            # kopf's loop has closed (the operator is stopping) under a reconcile still on its thread: what
            # it wrote stands, and the events are lost, not turned into a ReconcileError on the job.
            logger.warning("events of %s not posted (%s): %s", _job_name(raw_job), error, event.reason)
            return


def _job_name(raw_job: Mapping[str, Any]) -> str:
    metadata = raw_job.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"


def post_worker_events(raw_job: dict[str, Any], created: list[str], deleted: list[str]) -> None:
    """CreatedWorkers and DeletedWorkers, naming the pods a pass created and deleted."""
    events = []
    if created:
        events.append(JobEvent("Normal", EventReason.CREATED_WORKERS, "created " + ", ".join(created)))
    if deleted:
        events.append(JobEvent("Normal", EventReason.DELETED_WORKERS, "deleted " + ", ".join(deleted)))
    post_events(raw_job, events)
