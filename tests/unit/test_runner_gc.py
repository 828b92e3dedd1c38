"""The operator process's garbage-collector settings (controller/runner.py, docs/performance.md)."""

from __future__ import annotations

import gc

from kubefit.controller.runner import YOUNG_GENERATION_THRESHOLD, tune_garbage_collection


def test_the_young_generation_waits_longer_and_the_imports_are_frozen() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    try:
        tune_garbage_collection()
        young, middle, oldest = gc.get_threshold()
        assert young == YOUNG_GENERATION_THRESHOLD > before[0]
        assert (middle, oldest) == before[1:]
        assert gc.get_freeze_count() > frozen_before
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
