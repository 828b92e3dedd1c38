"""ResourceQuotas: kopf's index of them by namespace, and the trigger that decides again the jobs a quota's
change may concern (decisions/quota.py reads them).

Index: kubefit_quotas: namespace -> Quota of each ResourceQuota (one not counted yet by its spec). Trigger (QuotaChange): a quota
created, deleted, given other limits or first counted decides every job of its namespace again; one whose
usage fell (a pod gone) decides again only the jobs a quota held back; one whose usage grew (a pod created
there, the most frequent change) decides none.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import kopf

from kubefit.controller.cluster import ClusterView
from kubefit.controller.reconciler import Reconciler
from kubefit.controller.relist import QUOTAS, RelistCheck
from kubefit.decisions.quota import quota_from

QUOTA_INDEX = "kubefit_quotas"


class QuotaChange(enum.Enum):
    NONE = (
        "none"  # its usage alone grew: the jobs it held back stay held (their messages wait for the resync)
    )
    ROOM = "room"  # its usage fell (a pod gone): the jobs a quota held back are decided again
    LIMITS = "limits"  # created, deleted, other limits or first counted: every job of its namespace


class QuotaLimits:
    """Each quota's limits (its spec and status.hard) and usage as last seen, to tell what an event changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[str, Mapping[str, Decimal]]] = {}  # uid -> (limits, status.used)

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> QuotaChange:
        """What this event changed. A listing's event (`event_type` None) of a quota not seen before is the
        operator's start, which decides every job anyway: no change."""
        uid = (body.get("metadata") or {}).get("uid") or ""
        spec, status = body.get("spec") or {}, body.get("status") or {}
        limits = repr((spec.get("hard"), spec.get("scopes"), spec.get("scopeSelector"), status.get("hard")))
        quota = quota_from(body)
        used = quota.used if quota is not None else {}
        with self._lock:
            if event_type == "DELETED":
                self._seen.pop(uid, None)
                return QuotaChange.LIMITS
            before = self._seen.get(uid)
            self._seen[uid] = (limits, used)
        if before is None:
            return QuotaChange.NONE if event_type is None else QuotaChange.LIMITS
        if before[0] != limits:
            return QuotaChange.LIMITS
        fell = any(amount < before[1].get(resource, amount) for resource, amount in used.items())
        return QuotaChange.ROOM if fell or set(before[1]) - set(used) else QuotaChange.NONE


def register_quotas(  # noqa: PLR0913 - the registry, and what its handlers call
    registry: kopf.OperatorRegistry,
    run: Callable[[Callable[..., None], Mapping[str, Any]], Any],
    reconciler: Reconciler,
    view_of: Callable[[Mapping[str, Any]], ClusterView],
    relists: RelistCheck,
    request_pass: Callable[[ClusterView], None],
) -> None:
    """Adds the quota index and trigger to `registry`. `run`: how a handler body runs off kopf's event loop
    (HandlerThreads.run); `view_of`: the cluster view of a handler's kwargs (kopf's indexes); `relists`:
    told of kopf's listings, for quotas deleted while the watch was broken (controller/relist.py);
    `request_pass`: a scheduling pass, which reads the quotas' room afresh for every job that claims it."""

    @kopf.index("", "v1", "resourcequotas", id=QUOTA_INDEX, registry=registry)
    async def kubefit_quotas(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, Any]:
        quota = quota_from(body)
        # {} and not None: kopf keeps an object's previous entries when its indexer returns None.
        return {namespace or "": quota} if quota is not None else {}

    limits = QuotaLimits()

    @kopf.on.event("", "v1", "resourcequotas", id="quota_changed", registry=registry)
    async def quota_event(**kwargs: Any) -> None:
        if kwargs["type"] is None:
            relists.listed(QUOTAS)  # kopf listed them: one deleted meanwhile is found at the resync
        change = limits.observe(kwargs["type"], kwargs["body"])
        if change is not QuotaChange.NONE:
            await run(on_quota_change, {**kwargs, "change": change})

    def on_quota_change(change: QuotaChange, namespace: str | None, **kwargs: Any) -> None:
        every_job, view = change is QuotaChange.LIMITS, view_of(kwargs)
        if reconciler.quota_changed(namespace or "", view, every_job=every_job):
            request_pass(view)
