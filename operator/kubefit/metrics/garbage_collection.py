"""`kubefit_garbage_collection_seconds{generation}`: how long each of Python's garbage collections took.

A collection holds the interpreter lock from start to end, so every thread of the operator (reconciles,
scheduling passes, the watch loop) waits for it; a collection of the oldest generation walks every object
that is not frozen (controller/garbage_collection.py). The time is taken in `gc.callbacks`, which the
interpreter calls at the start and the end of each collection, in the thread that triggered it.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

GENERATIONS = ("0", "1", "2")
# On the 2-core sandbox at 5,000 nodes young collections took 23 to 38 ms on average and full ones 0.46 to
# 1.3 s, some over 1 s (waits for a CPU included; docs/performance.md, the tenth round); in one process a
# young one takes a millisecond or less.
_PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GarbageCollectionTimer:
    """Observes each collection's duration into a histogram by generation while installed."""

    def __init__(self, registry: CollectorRegistry):
        self.histogram = Histogram(
            "kubefit_garbage_collection_seconds",
            "Duration of each of the Python garbage collector's collections, by generation (2: a full one, "
            "which walks every object not frozen); every thread of the operator waits while one runs.",
            ["generation"],
            buckets=_PAUSE_BUCKETS,
            registry=registry,
        )
        self._by_generation = {generation: self.histogram.labels(generation) for generation in GENERATIONS}
        self._started: float | None = None

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        # Collections do not nest and run under the interpreter lock, so one start time is enough.
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            seconds, self._started = time.perf_counter() - self._started, None
            child = self._by_generation.get(str(info.get("generation")))
            if child is not None:
                child.observe(seconds)

    def install(self) -> None:
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)

    def uninstall(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
