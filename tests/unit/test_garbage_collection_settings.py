"""The operator process's garbage-collector settings (controller/garbage_collection.py, docs/performance.md)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from kubefit.controller.garbage_collection import (
    YOUNG_GENERATION_THRESHOLD,
    FreezeAfterFullCollection,
    tune_garbage_collection,
)


@pytest.fixture
def restored_collector() -> Iterator[None]:
    """Whatever a test does to the collector is undone: thresholds, frozen objects, callbacks."""
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    try:
        yield
    finally:
        gc.callbacks[:] = callbacks
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class _Cycle:
    """An object in a reference cycle with itself: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.usefixtures("restored_collector")
def test_the_young_generation_waits_longer_the_imports_are_frozen_and_full_collections_freeze() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    freezing = tune_garbage_collection()
    young, middle, oldest = gc.get_threshold()
    assert young == YOUNG_GENERATION_THRESHOLD > before[0]
    assert (middle, oldest) == before[1:]
    assert gc.get_freeze_count() > frozen_before
    assert freezing in gc.callbacks
    freezing.uninstall()
    assert freezing not in gc.callbacks


@pytest.mark.usefixtures("restored_collector")
def test_what_survives_a_full_collection_is_frozen_and_a_young_collection_freezes_nothing() -> None:
    freezing = FreezeAfterFullCollection(full_walk_seconds=600.0, clock=_Clock())
    freezing.install()
    gc.unfreeze()
    survivors = [{"node": index} for index in range(1000)]
    gc.collect(0)
    assert gc.get_freeze_count() == 0
    assert freezing.full_collections == 0
    gc.collect()
    assert freezing.full_collections == 1
    assert gc.get_freeze_count() >= len(survivors)
    tracked = {
        id(item) for item in gc.get_objects()
    }  # the generations' objects: frozen ones are not among them
    assert not any(id(survivor) in tracked for survivor in survivors)


@pytest.mark.usefixtures("restored_collector")
def test_a_frozen_object_is_still_freed_by_reference_counting() -> None:
    freezing = FreezeAfterFullCollection(full_walk_seconds=600.0, clock=_Clock())
    freezing.install()

    class Body(dict):  # type: ignore[type-arg]
        """A dict that a weak reference can follow."""

    body = Body(node="a")
    gone = weakref.ref(body)
    gc.collect()
    assert gc.get_freeze_count() > 0
    del body
    assert gone() is None


@pytest.mark.usefixtures("restored_collector")
def test_a_cycle_that_became_garbage_while_frozen_waits_for_the_periodic_walk_of_everything() -> None:
    clock = _Clock()
    freezing = FreezeAfterFullCollection(full_walk_seconds=600.0, clock=clock)
    freezing.install()
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    gc.collect()  # survives, and is frozen
    del cycle
    clock.now = 599.0
    gc.collect()  # walks only what is not frozen: the cycle stays
    assert gone() is not None
    assert freezing.full_walks == 0
    clock.now = 600.0
    gc.collect()  # the walk of everything
    assert gone() is None
    assert freezing.full_walks == 1
    assert gc.get_freeze_count() > 0  # and what survived it is frozen again
    clock.now = 1000.0
    gc.collect()
    assert freezing.full_walks == 1  # next one 600 s after the last
