"""ResourceQuotas: kopf's index of them by namespace, and the trigger that decides again the jobs a quota's
change may concern (decisions/quota.py reads them).

Index: kubefit_quotas: namespace -> Quota of each ResourceQuota with a status. Trigger: a quota created,
deleted or given other limits decides every job of its namespace again; one whose usage alone changed (a pod
created or deleted there, most often) decides again only the jobs a quota held back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from kubefit.controller.cluster import ClusterView
from kubefit.controller.reconciler import Reconciler
from kubefit.decisions.quota import quota_from

QUOTA_INDEX = "kubefit_quotas"


class QuotaLimits:
    """The limits (spec) of each quota as last seen, to tell a change of what it allows from one of its usage."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[str, Any] = {}  # uid -> (hard, scopes, scope selector)

    def changed(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """Whether this event changes what the quota allows: it is new, deleted, or its spec changed."""
        uid = (body.get("metadata") or {}).get("uid") or ""
        spec = body.get("spec") or {}
        limits = repr((spec.get("hard"), spec.get("scopes"), spec.get("scopeSelector")))
        with self._lock:
            if event_type == "DELETED":
                self._limits.pop(uid, None)
                return True
            before = self._limits.get(uid)
            self._limits[uid] = limits
            return before != limits


def register_quotas(
    registry: kopf.OperatorRegistry,
    run: Callable[[Callable[..., None], Mapping[str, Any]], Any],
    reconciler: Reconciler,
    view_of: Callable[[Mapping[str, Any]], ClusterView],
) -> None:
    """Adds the quota index and trigger to `registry`. `run`: how a handler body runs off kopf's event loop
    (HandlerThreads.run); `view_of`: the cluster view of a handler's kwargs (kopf's indexes)."""

    @kopf.index("", "v1", "resourcequotas", id=QUOTA_INDEX, registry=registry)
    async def kubefit_quotas(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, Any]:
        quota = quota_from(body)
        # {} and not None: kopf keeps an object's previous entries when its indexer returns None.
        return {namespace or "": quota} if quota is not None else {}

    limits = QuotaLimits()

    @kopf.on.event("", "v1", "resourcequotas", id="quota_changed", registry=registry)
    async def quota_event(**kwargs: Any) -> None:
        if kwargs["type"] is None:
            # The listing at the start: indexed before any job is reconciled, so nothing to decide again.
            limits.changed(None, kwargs["body"])
            return
        await run(on_quota_event, kwargs)

    def on_quota_event(type: str | None, body: kopf.Body, namespace: str | None, **kwargs: Any) -> None:
        every_job = limits.changed(type, body)
        reconciler.quota_changed(namespace or "", view_of(kwargs), every_job=every_job)
