"""A scheduling pass that takes workers from jobs for others confirms the ResourceQuotas it plans under.

kopf's index of ResourceQuotas lags the API server: the pods the API server charged, and a quota created,
changed or deleted a moment ago, reach it on a watch stream apart from the jobs'. A plan that preempts or
shrinks jobs for others reads those others' namespaces' quotas from the API server first, QUOTA_CONFIRM_ROUNDS
times at most as the plan made again names other namespaces. Where the index holds another usage, the plan is
made again with the quotas as read; where it holds other limits (or lacks a quota), the jobs' demands were
decided on them, so the pass stores nothing and is asked for again QUOTA_RECHECK_SECONDS later, for
QUOTA_LAG_LIMIT_SECONDS at most; then it goes on with what it has. A lag not seen for QUOTA_LAG_GAP_SECONDS
has ended: the next one waits afresh.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from kubefit.api.resource import JobKey
from kubefit.controller.cluster import ClusterView
from kubefit.controller.pass_inputs import quota_limits, quota_usage, with_quotas
from kubefit.decisions.admission import AdmissionPlan
from kubefit.decisions.quota import Quota

logger = logging.getLogger("kubefit.scheduler")

QUOTA_CONFIRM_ROUNDS = 3
QUOTA_RECHECK_SECONDS = 1.0
QUOTA_LAG_LIMIT_SECONDS = 10.0
QUOTA_LAG_GAP_SECONDS = 5.0

LiveQuotas = Callable[[str], Iterable[Quota]]


class QuotaIndexLag:
    """Per namespace, the first and last time a pass found kopf's index of its quotas behind the API server's."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, float]] = {}

    def lagging(
        self, namespaces: Sequence[str], live: Mapping[str, Sequence[Quota]], view: ClusterView
    ) -> set[str]:
        """Of `namespaces`, those whose quotas kopf's index holds with other limits than `live`, for less than
        QUOTA_LAG_LIMIT_SECONDS (a lag not seen for QUOTA_LAG_GAP_SECONDS starts afresh)."""
        now, lagging = self._clock(), set()
        with self._lock:
            self._seen = {ns: at for ns, at in self._seen.items() if now - at[1] <= QUOTA_LAG_GAP_SECONDS}
            for namespace in namespaces:
                if quota_limits(live[namespace]) == quota_limits(view.quotas(namespace)):
                    self._seen.pop(namespace, None)
                    continue
                first = self._seen.get(namespace, (now, now))[0]
                self._seen[namespace] = (first, now)
                if now - first < QUOTA_LAG_LIMIT_SECONDS:
                    lagging.add(namespace)
                else:
                    logger.warning(
                        "scheduling passes go on %.0f s after kopf's index of the ResourceQuotas of %s first "
                        "differed from the API server's (its watch broken?)",
                        now - first,
                        namespace,
                    )
        return lagging


def confirm_quotas(
    plan: AdmissionPlan,
    plan_with: Callable[[ClusterView], AdmissionPlan],
    view: ClusterView,
    live_quotas: LiveQuotas | None,
    lag: QuotaIndexLag,
) -> AdmissionPlan | None:
    """A plan that preempts or shrinks jobs for others, made again with the ResourceQuotas of those others'
    namespaces as the API server has them now, where kopf's index holds another usage. None where the index
    holds other limits, or lacks a quota (one created a moment ago), for QUOTA_LAG_LIMIT_SECONDS at most.
    `live_quotas` None: kopf's index is trusted (tests, benchmarks)."""
    live: dict[str, list[Quota]] = {}
    for _ in range(QUOTA_CONFIRM_ROUNDS if live_quotas is not None else 0):
        unread = sorted({job[0] for job in room_made_for(plan)} - live.keys())
        if not unread or live_quotas is None:
            break
        try:
            live.update({namespace: list(live_quotas(namespace)) for namespace in unread})
        except Exception as error:  # noqa: BLE001 - the index is all a pass has then, as before
            logger.warning("reading the ResourceQuotas of %s: %s", ", ".join(unread), error)
            break
        lagging = lag.lagging(unread, live, view)
        if lagging:
            logger.info("scheduling pass waits for the watch of the ResourceQuotas of %s", ", ".join(lagging))
            return None
        if all(quota_usage(live[ns]) == quota_usage(view.quotas(ns)) for ns in unread):
            break  # the index is current: the plan stands
        plan = plan_with(with_quotas(view, live))
    return plan


def room_made_for(plan: AdmissionPlan) -> set[JobKey]:
    """The jobs the plan preempts or shrinks other jobs for."""
    taken = set(plan.preempt) | set(plan.shrink)
    return {job for victim in taken for job in plan.made_room_for.get(victim, ())}
