"""Gang start and the two backoffs: after a gang timeout, and before replacing a failed worker.

Gang timeout (after Kueue's waitForPodsReady, kueue.sigs.k8s.io/docs/tasks/manage/setup_wait_for_pods_ready):
an admitted job whose workers are not all Running within spec.scheduling.gangTimeoutSeconds of admission
(the Admitted condition's lastTransitionTime) gives every device back and asks for admission again after
a backoff. Kueue's requeuing backoff doubles from backoffBaseSeconds (default 60) up to backoffMaxSeconds;
kubefit doubles from a shorter base, GANG_BACKOFF_BASE_SECONDS, up to GANG_BACKOFF_MAX_SECONDS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from kubefit.api.conditions import ConditionType
from kubefit.api.models import GangStatus
from kubefit.api.units import parse_rfc3339, rfc3339
from kubefit.api.validation import pruned
from kubefit.decisions.conditions import find_condition

GANG_BACKOFF_BASE_SECONDS = 10
GANG_BACKOFF_MAX_SECONDS = 600
# A failed worker is replaced after 5 s, doubled per restart, at most 5 minutes (the shape of the
# kubelet's CrashLoopBackOff: 10 s doubling to 5 minutes, kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle).
RESTART_BACKOFF_BASE_SECONDS = 5
RESTART_BACKOFF_MAX_SECONDS = 300


def doubling(base: int, maximum: int, count: int) -> float:
    """base, 2 x base, 4 x base, ... for count 1, 2, 3, ..., at most `maximum` (0 for count 0)."""
    if count <= 0:
        return 0.0
    return float(min(maximum, base * 2 ** min(count - 1, 30)))


def previous_gang(status: Mapping[str, Any]) -> GangStatus:
    """status.gang, without a field a newer CRD defaults into it (validation.pruned): read whole, one such
    field lost the group's bookkeeping (started, attempt), and a healthy group was timed out or stopped."""
    raw = status.get("gang")
    try:
        return GangStatus.model_validate(pruned(raw, "status", "gang")[0]) if raw else GangStatus()
    except ValueError:
        return GangStatus()


def room_from(status: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    """The jobs (namespace, name) status.gang.roomFrom says were leaving to make room for a gang that has not
    started (none for a started one, or an entry that is not namespace/name)."""
    gang = previous_gang(status)
    if gang.started:
        return frozenset()
    found = (entry.split("/", 1) for entry in gang.room_from or ())
    return frozenset((pair[0], pair[1]) for pair in found if len(pair) == 2 and all(pair))


def room_entries(jobs: frozenset[tuple[str, str]]) -> list[str] | None:
    """status.gang.roomFrom's entries for `jobs`: namespace/name, sorted; None for none."""
    return sorted(f"{namespace}/{name}" for namespace, name in jobs) or None


def backoff_left(gang: GangStatus, now: datetime) -> float:
    """Seconds until a job that timed out may ask for admission again (0: it may now)."""
    until = parse_rfc3339(gang.retry_after)
    return max(0.0, (until - now).total_seconds()) if until is not None else 0.0


def admitted_at(conditions: Sequence[Mapping[str, Any]]) -> datetime | None:
    """When the job was admitted: the lastTransitionTime of Admitted=True."""
    admitted = find_condition(conditions, ConditionType.ADMITTED)
    if admitted is None or admitted.get("status") != "True":
        return None
    return parse_rfc3339(admitted.get("lastTransitionTime"))


def gang_timed_out(gang: GangStatus, admitted: datetime | None, timeout: int, now: datetime) -> bool:
    """An admitted gang whose workers were not all placed on nodes at once within `timeout` seconds of its
    admission."""
    return not gang.started and admitted is not None and now >= admitted + timedelta(seconds=timeout)


def growth_held_until(gang: GangStatus, timeout: int) -> datetime | None:
    """Until when an elastic job whose grown worker was given up (never placed on a node within the gang
    timeout of its creation: decisions.running._growth_given_up) grows no more: one gang timeout after it.
    A started gang's `since` records when (before it starts, `since` is when its clock began)."""
    since = parse_rfc3339(gang.since) if gang.started else None
    return since + timedelta(seconds=timeout) if since is not None else None


def after_timeout(gang: GangStatus, now: datetime) -> GangStatus:
    """The bookkeeping after one more gang timeout: the backoff starts now."""
    retries = gang.retries + 1
    wait = doubling(GANG_BACKOFF_BASE_SECONDS, GANG_BACKOFF_MAX_SECONDS, retries)
    return GangStatus(
        started=False,
        retries=retries,
        retry_after=rfc3339(now + timedelta(seconds=wait)),
        attempt=gang.attempt,
    )


def restart_backoff(restarts: int) -> float:
    """Seconds from a failure to the replacement, after `restarts` restarts in all (this one included)."""
    return doubling(RESTART_BACKOFF_BASE_SECONDS, RESTART_BACKOFF_MAX_SECONDS, restarts)


def restart_backoff_left(status: Mapping[str, Any], restarts: int, now: datetime) -> float:
    """Seconds before a replacement worker may be created after the last failure (0: now)."""
    failed_at = parse_rfc3339(status.get("lastFailureTime"))
    if failed_at is None or restarts <= 0:
        return 0.0
    wait = restart_backoff(restarts)
    return max(0.0, (failed_at + timedelta(seconds=wait) - now).total_seconds())
