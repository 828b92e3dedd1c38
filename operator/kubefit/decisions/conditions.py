"""metav1.Condition bookkeeping: lastTransitionTime changes only when a condition's status does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubefit.api.conditions import ConditionStatus

Condition = dict[str, Any]


@dataclass(frozen=True)
class ConditionUpdate:
    type: str  # a kubefit.api.conditions.ConditionType
    status: ConditionStatus
    reason: str  # a kubefit.api.conditions.Reason
    message: str = ""


def find_condition(conditions: Sequence[Mapping[str, Any]], condition_type: str) -> Mapping[str, Any] | None:
    return next((condition for condition in conditions if condition.get("type") == condition_type), None)


def is_true(conditions: Sequence[Mapping[str, Any]], condition_type: str) -> bool:
    condition = find_condition(conditions, condition_type)
    return condition is not None and condition.get("status") == "True"


def apply_conditions(
    previous: Sequence[Mapping[str, Any]],
    updates: Sequence[ConditionUpdate],
    generation: int | None,
    now: str,
    observed: bool = True,
) -> list[Condition]:
    """The previous conditions with `updates` applied, in a stable order (previous first, then new ones).
    A condition no update touches still holds for the spec observed now: it takes `generation` too, unless
    `observed` is False (a reconcile that failed observed nothing)."""
    by_type = {update.type: update for update in updates}
    result: list[Condition] = []
    for condition in previous:
        update = by_type.pop(condition.get("type", ""), None)
        if update is None:
            result.append({**condition, "observedGeneration": generation} if observed else dict(condition))
        else:
            result.append(_updated(condition, update, generation, now))
    for update in by_type.values():
        result.append(_updated(None, update, generation, now))
    return result


def _updated(
    previous: Mapping[str, Any] | None, update: ConditionUpdate, generation: int | None, now: str
) -> Condition:
    unchanged = previous is not None and previous.get("status") == update.status
    transition = previous.get("lastTransitionTime") if unchanged and previous else None
    return {
        "type": update.type,
        "status": update.status,
        "reason": update.reason,
        "message": update.message,
        "observedGeneration": generation,
        "lastTransitionTime": transition or now,
    }
