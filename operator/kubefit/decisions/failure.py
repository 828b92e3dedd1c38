"""The status and event that record a reconcile that raised (the controller's safety net).

Any unexpected exception while deciding or applying becomes Ready=False with reason ReconcileError and
the error's message, and one Warning event of the same reason. A retry that fails the same way changes
nothing and posts nothing, so a job backing off does not flood the namespace with events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubefit.api.conditions import ConditionType, Reason
from kubefit.decisions.conditions import ConditionUpdate, apply_conditions, find_condition
from kubefit.decisions.job import JobEvent

# metav1.Condition allows 32 KiB of message, but an Event's note is cut at 1 KiB: keep both readable.
MESSAGE_LIMIT = 1000


@dataclass(frozen=True)
class FailureRecord:
    status: dict[str, Any] | None  # the status merge patch; None when this failure is already recorded
    events: tuple[JobEvent, ...]


def reconcile_error(
    status: Mapping[str, Any], generation: int | None, message: str, now: str
) -> FailureRecord:
    """The change to `status` (the job's latest known status) that records a failed reconcile."""
    message = _shortened(message)
    previous = list(status.get("conditions") or [])
    before = find_condition(previous, ConditionType.READY)
    if before is not None and (before.get("reason"), before.get("message")) == (
        Reason.RECONCILE_ERROR,
        message,
    ):
        return FailureRecord(status=None, events=())
    update = ConditionUpdate(ConditionType.READY, "False", Reason.RECONCILE_ERROR, message)
    conditions = apply_conditions(previous, [update], generation, now, observed=False)
    return FailureRecord(
        status={"conditions": conditions}, events=(JobEvent("Warning", Reason.RECONCILE_ERROR, message),)
    )


def _shortened(message: str) -> str:
    message = " ".join(message.split()) or "unknown error"
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 3] + "..."
