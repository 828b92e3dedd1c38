"""The resync: every job reconciled once per period on one thread, spread evenly over the period, and one
scheduling pass per period for all of them.

The period stretches when reconciling every job would take more than BUSY_SHARE of it: after each
reconcile the loop waits at least the time that keeps its reconciles to that share of the wall time. At
2,000 jobs of 10 ms each a 30 s period would keep two thirds of a core busy with a safety net (every
change is reconciled on its own event); paced, the period becomes 100 s. With few jobs nothing changes.

It replaces a kopf timer per job. Such a timer needs a finalizer on every job (a PATCH at each create and
each delete, and a delete that waits for the operator) and an asyncio task per job, and the timers of jobs
created together fire together: at 500 jobs, the first wave of them came with the slowest single-job changes
of the benchmark (docs/performance.md).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException
from urllib3 import exceptions as urllib3_errors

from kubefit.api.resource import JobKey
from kubefit.controller.kube import error_message

logger = logging.getLogger("kubefit.resync")

BUSY_SHARE = 0.2  # of the wall time, at most, that the resync's reconciles take
# What the kubernetes client raises when the API server refuses a call or cannot be reached (urllib3's
# errors, sockets'): expected, so one line each; anything else is a bug, logged with its traceback.
API_ERRORS = (ApiException, urllib3_errors.HTTPError, OSError)


def log_step_failure(failure: str, error: Exception) -> None:
    """Logs a failed step that is tried again next period."""
    if isinstance(error, API_ERRORS):
        logger.warning("%s (tried again next period): %s", failure, error_message(error))
    else:
        logger.error(failure, exc_info=error)


class ResyncLoop:
    def __init__(
        self,
        period: float,
        keys: Callable[[], list[JobKey]],
        reconcile: Callable[[JobKey], None],
        schedule: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        prune: Callable[[], object] = lambda: None,
    ) -> None:
        self.period = period
        self._keys, self._reconcile, self._schedule = keys, reconcile, schedule
        self._prune = prune  # forgets jobs deleted while no watch event could say so
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, context: contextvars.Context | None = None) -> None:
        """Starts the loop once (later calls do nothing), in `context`: kopf.event needs the context
        variables of kopf's handlers (its settings and event queue), so the first handler starts it."""
        with self._lock:
            if self._thread is not None:
                return
            run = context.run if context is not None else (lambda target: target())
            self._thread = threading.Thread(
                target=run, args=(self._loop,), name="kubefit-resync", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_period(self) -> None:
        """One period: the scheduling pass, then every job known now, the n-th of N at n/N of the period."""
        start = self._clock()
        # Either failing now is tried again next period; the jobs are reconciled meanwhile.
        self._guarded(self._prune, "checking for vanished jobs failed")
        self._guarded(self._schedule, "the resync's scheduling pass failed")
        keys = self._keys()
        paced_until = start
        for position, key in enumerate(keys):
            slot = max(start + self.period * position / len(keys), paced_until)
            if self._stop.wait(max(0.0, slot - self._clock())):
                return
            began = self._clock()
            try:
                self._reconcile(key)
            except Exception:  # noqa: BLE001 - the reconciler records its own failures; this must go on
                logger.exception("resync of %s/%s failed", *key)
            ended = self._clock()
            paced_until = ended + (ended - began) * (1 - BUSY_SHARE) / BUSY_SHARE
        self._stop.wait(max(0.0, start + self.period - self._clock()))

    @staticmethod
    def _guarded(step: Callable[[], object], failure: str) -> None:
        try:
            step()
        except Exception as error:  # noqa: BLE001 - an API error or a bug costs this period's step, not the loop
            log_step_failure(failure, error)

    def _loop(self) -> None:
        # The first period starts one period after the start: what the start found was reconciled already.
        if self._stop.wait(self.period):
            return
        while not self._stop.is_set():
            start = self._clock()
            try:
                self.run_period()
            except Exception:  # noqa: BLE001 - nothing restarts this thread: one failure must not end it
                logger.exception("resync period failed; the next one starts on time")
                self._stop.wait(max(0.0, start + self.period - self._clock()))
