"""Scheduled reconciles: a job's TTL, its gang timeout, a retry after a failed reconcile, on one clock.

Every job's next scheduled reconcile waits on one thread and a heap (RequeueClock), and the retry of a job
whose reconciles fail backs off (backoff_seconds).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from kubefit.api.resource import JobKey
from kubefit.decisions.gang import doubling

# The first retry of a job whose reconcile failed, doubling to the last.
BACKOFF_FIRST = 5
BACKOFF_MAX = 300
REQUEUE_THREADS = 2


def backoff_seconds(failures: int) -> float:
    """Delay before retrying a job whose last `failures` reconciles in a row failed (failures >= 1)."""
    return doubling(BACKOFF_FIRST, BACKOFF_MAX, max(failures, 1))


@dataclass(frozen=True)
class Requeue:
    """A scheduled reconcile of one job: why (`timer` for a TTL or a gang timeout, `retry` after a failure),
    after how long, and when (time.monotonic())."""

    trigger: str
    delay: float
    due: float
    run: Callable[[], None] = field(compare=False, repr=False)


class RequeueClock:
    """Every job's scheduled reconcile on one thread and a heap, instead of a threading.Timer (a thread) per
    job: 500 jobs waiting for their gang timeout were 500 sleeping threads, and every reconcile of each
    replaced its thread with a new one (docs/performance.md). Due calls run on a few worker threads, so a
    slow reconcile does not hold up the others."""

    def __init__(self, workers: int = REQUEUE_THREADS) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, JobKey]] = []
        self._pending: dict[JobKey, tuple[int, Requeue]] = {}
        self._sequence = 0
        self._thread: threading.Thread | None = None
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="kubefit-requeue")

    def schedule(self, key: JobKey, requeue: Requeue | None) -> None:
        """Replaces `key`'s scheduled reconcile with `requeue` (None: cancels it)."""
        with self._lock:
            self._pending.pop(key, None)
            if requeue is not None:
                self._sequence += 1
                self._pending[key] = (self._sequence, requeue)
                heapq.heappush(self._heap, (requeue.due, self._sequence, key))
            if len(self._heap) > 2 * len(self._pending) + 64:
                # Replaced entries stay in the heap until due (a day for a TTL): drop them now and then.
                self._heap = [(entry.due, sequence, k) for k, (sequence, entry) in self._pending.items()]
                heapq.heapify(self._heap)
            if requeue is not None:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="kubefit-requeues", daemon=True)
                    self._thread.start()
                self._lock.notify()

    def pending(self, key: JobKey) -> Requeue | None:
        with self._lock:
            entry = self._pending.get(key)
            return entry[1] if entry else None

    def _loop(self) -> None:
        while True:
            with self._lock:
                due = self._take_due()
                if due is None:
                    self._lock.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                    continue
            self._executor.submit(due.run)

    def _take_due(self) -> Requeue | None:
        """The earliest due requeue still scheduled, taken off (cancelled and replaced ones are dropped)."""
        while self._heap and self._heap[0][0] <= time.monotonic():
            _, sequence, key = heapq.heappop(self._heap)
            entry = self._pending.get(key)
            if entry is not None and entry[0] == sequence:
                del self._pending[key]
                return entry[1]
        return None
