"""How the operator process sets Python's garbage collector: a large, long-lived heap that changes slowly.

A collection holds the interpreter lock, so every thread (reconciles, scheduling passes, kopf's watch loop)
waits while one runs, and a full collection walks every object that is not frozen. On the 5,000-node sandbox
the operator's full collections took 0.46 to 1.3 s on average, and most of what they walked was the same
node, pod and job objects as the time before (docs/performance.md, the tenth and eleventh rounds).

So, as `kubefit run` sets it:
- the imports (modules, classes, functions: never garbage) are frozen once at the start;
- the youngest generation is collected every YOUNG_GENERATION_THRESHOLD allocations, not Python's 700;
- what survives a full collection is frozen right after it, so the next full one walks only what was promoted
  since. An object frozen that way is still freed by reference counting the moment nothing holds it; only a
  reference cycle that becomes garbage among frozen objects would wait. For those, a full collection at least
  FULL_WALK_SECONDS after the last such walk first unfreezes everything, and walks it all.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

# Allocations (less deallocations) between two collections of the youngest generation; Python's default is 700.
# A scheduling pass at 5,000 nodes allocates hundreds of thousands of short-lived objects: at 700 the
# collector ran so often that every tenth pass or so also walked the whole heap, 240-280 ms of a pause for all
# threads, and collections were a quarter of the passes' time; at 10,000 they took a twentieth of it with no
# pause above 10 ms (docs/performance.md, the seventh round). Garbage in reference cycles waits for at most
# this many more allocations.
YOUNG_GENERATION_THRESHOLD = 10_000
# How often, at most, a full collection walks the frozen heap too: the longest a reference cycle that became
# garbage among frozen objects is kept (until the next full collection after it), and the rate of the long
# pauses that remain.
FULL_WALK_SECONDS = 600.0


class FreezeAfterFullCollection:
    """A `gc.callbacks` entry: freezes what survived each full collection; unfreezes everything before the
    first full collection at least `full_walk_seconds` after the last walk of everything."""

    def __init__(
        self, full_walk_seconds: float = FULL_WALK_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        self.full_walk_seconds = full_walk_seconds
        self._clock = clock
        self._last_full_walk = clock()
        self.full_collections = 0
        self.full_walks = 0  # full collections that walked the frozen heap too

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            now = self._clock()
            if now - self._last_full_walk >= self.full_walk_seconds:
                # Merged into the oldest generation before the collection takes it: this one walks everything.
                gc.unfreeze()
                self._last_full_walk = now
                self.full_walks += 1
        else:
            self.full_collections += 1
            gc.freeze()

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def tune_garbage_collection(full_walk_seconds: float = FULL_WALK_SECONDS) -> FreezeAfterFullCollection:
    """Collects once, freezes what the imports made, raises the youngest generation's threshold and installs
    the freezing after each full collection (returned, for tests and benchmarks to uninstall)."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, oldest)
    freezing = FreezeAfterFullCollection(full_walk_seconds)
    freezing.install()
    return freezing
