"""Pods, nodes and ResourceQuotas deleted while a watch was broken, which kopf never reports as deleted.

A watch that cannot resume (410 Gone: the API server no longer has the revision it last saw, as after a
restart of the API server) makes kopf list the objects again and watch on, but it sends no DELETED event for
those deleted meanwhile (kopf 1.45, `_cogs/clients/watching.py` `continuous_watch`), so their entries stayed
in its indexes for good: a pod that went so held its devices in the inventory, a worker that went so stood
for a live one and was never made again, a node so offered devices that are not there, a quota so held its
namespace's jobs back. client-go's informers
handle the same case at their relist (`DeletedFinalStateUnknown`).

A listing's events reach the handlers with no type. After one for pods, nodes or quotas, a check runs once
the listing's events have stopped for CHECK_AFTER_LISTING_SECONDS (check_soon; the next resync period too, for a check that failed or
found the indexes not read yet): a deleted pod's devices counted as held for up to a resync period after an
API server restart could make a pass preempt a job for nothing. It checks that kind: it notes what the indexes hold, then lists those objects' metadata (nodes once, pods
and quotas once per namespace noted). An object noted before that list began and absent from it was deleted (uids are never
used again), and is dropped as its DELETED event would have dropped it. The operator's own start is a listing
too, so the first period checks once; nothing more is listed until kopf lists again. The check is by kind,
over every namespace the indexes hold pods of: an API server restart breaks every watch, and any listing of
pods brings them all. One limit: a single namespace's watch that breaks alone and lists nothing again (every
pod of it deleted meanwhile) sends no listing event, and its entries wait for the next listing of pods.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger("kubefit.relist")

NODES, PODS, QUOTAS = "nodes", "pods", "resourcequotas"
# How long after the last event of a listing the check runs (check_soon).
CHECK_AFTER_LISTING_SECONDS = 2.0


@dataclass(frozen=True)
class Indexed:
    """An object kopf's indexes hold an entry of."""

    kind: str  # NODES, PODS or QUOTAS
    namespace: str | None  # None for a node
    name: str
    uid: str
    job: str | None = field(default=None, compare=False)  # the TrainingJob of a worker pod

    @property
    def key(self) -> tuple[str | None, str, str]:
        """kopf's key of the object's entries (kopf `_core/engines/indexing.py`, `make_key`)."""
        return (self.namespace, self.name, self.uid)

    def __str__(self) -> str:
        kind = {PODS: "pod", QUOTAS: "ResourceQuota"}.get(self.kind, self.kind)
        return f"{kind} {self.namespace}/{self.name}" if self.namespace else f"node {self.name}"


class UidLister(Protocol):
    def node_uids(self) -> set[str]: ...

    def pod_uids(self, namespace: str) -> set[str]: ...

    def quota_uids(self, namespace: str) -> set[str]: ...


def gone(noted: Iterable[Indexed], lister: UidLister) -> list[Indexed]:
    """Those of `noted` (read from the indexes before this call) that the API server no longer has."""
    noted = list(noted)
    listed: dict[tuple[str, str | None], set[str]] = {}
    for item in noted:
        where = (item.kind, item.namespace)
        if where not in listed:
            listed[where] = _uids_of(item.kind, item.namespace or "", lister)
    return [item for item in noted if item.uid not in listed[(item.kind, item.namespace)]]


def _uids_of(kind: str, namespace: str, lister: UidLister) -> set[str]:
    if kind == NODES:
        return lister.node_uids()
    return lister.quota_uids(namespace) if kind == QUOTAS else lister.pod_uids(namespace)


class RelistCheck:
    """Notes kopf's listings (on its event loop) and, at the resync, drops what they hid the deletion of."""

    def __init__(self, lister: UidLister, delay: float = CHECK_AFTER_LISTING_SECONDS) -> None:
        self._lister = lister
        self._lock = threading.Lock()
        self._due: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delay = delay
        self._soon: Callable[[], object] | None = None
        self._timer: threading.Timer | None = None
        self._last_listed = 0.0  # time.monotonic() of the latest listing event

    def check_soon(self, check: Callable[[], object]) -> None:
        """Runs `check` (a call of `check` with the operator's indexes) `delay` seconds after a listing's first
        event, on a thread of its own; it may raise, and the next resync checks again."""
        self._soon = check

    def listed(self, kind: str) -> None:
        """An event of kopf's listing of `kind` arrived; called on kopf's event loop."""
        with self._lock:
            self._due.add(kind)
            self._loop = asyncio.get_running_loop()
            self._last_listed = time.monotonic()
            if self._soon is None or self._timer is not None:
                return
            # kopf's context (its settings, the event poster) rides along: the check reconciles jobs.
            self._timer = self._start_timer(self._delay, contextvars.copy_context())

    def _start_timer(self, delay: float, context: contextvars.Context) -> threading.Timer:
        timer = threading.Timer(delay, context.run, args=(self._check_when_quiet, context))
        timer.daemon = True
        timer.start()
        return timer

    def _check_when_quiet(self, context: contextvars.Context) -> None:
        """Runs the check once the listing's events have stopped for `delay` seconds (one check a listing)."""
        with self._lock:
            quiet_for = time.monotonic() - self._last_listed
            if quiet_for < self._delay:
                self._timer = self._start_timer(self._delay - quiet_for, context)
                return
            self._timer = None
            check = self._soon
        try:
            if check is not None:
                check()
        except Exception as error:  # noqa: BLE001 - the resync checks again
            logger.warning("checking for objects deleted while a watch was broken failed: %s", error)

    def check(
        self,
        held: Callable[[], Iterable[Indexed]],
        discard: Callable[[list[Indexed]], None],
        handle: Callable[[list[Indexed]], None],
    ) -> list[Indexed]:
        """The objects of the kinds listed since the last check that are gone: `discard` drops their
        entries (run on kopf's loop, which alone changes its indexes), then `handle` does what their DELETED
        events would have. A failed list or discard leaves the kind due for the next check."""
        with self._lock:
            due, self._due = self._due, set()
            loop = self._loop
        if not due or loop is None:
            return []
        try:
            vanished = gone([item for item in held() if item.kind in due], self._lister)
        except Exception:
            with self._lock:
                self._due |= due
            raise
        if vanished:
            logger.warning(
                "gone while a watch was broken: %s; dropping them", ", ".join(sorted(map(str, vanished)))
            )
            try:
                asyncio.run_coroutine_threadsafe(_on_loop(discard, vanished), loop).result(timeout=60)
                handle(vanished)
            except Exception:
                # Due again: entries not discarded would otherwise stay until kopf's next listing of the kind.
                with self._lock:
                    self._due |= due
                raise
        return vanished


async def _on_loop(discard: Callable[[list[Indexed]], None], vanished: list[Indexed]) -> None:
    discard(vanished)
