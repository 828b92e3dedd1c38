"""The resync thread (controller/resync.py) outlives any failure of a period: it is started once, and
nothing starts it again."""

from __future__ import annotations

import logging
import threading

import pytest

from kubefit.api.resource import JobKey
from kubefit.controller.resync import ResyncLoop


def test_a_scheduling_pass_or_a_listing_that_raises_costs_one_period_not_the_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    passes, listings = [0], [0]
    reconciled: list[JobKey] = []
    enough = threading.Semaphore(0)

    def schedule() -> None:
        passes[0] += 1
        if passes[0] in (2, 3):
            raise RuntimeError("can't start new thread")

    def keys() -> list[JobKey]:
        listings[0] += 1
        if listings[0] in (4, 5):
            raise RuntimeError("index changed during iteration")
        return [("team", "job")]

    def reconcile(key: JobKey) -> None:
        reconciled.append(key)
        enough.release()

    loop = ResyncLoop(0.01, keys=keys, reconcile=reconcile, schedule=schedule)
    with caplog.at_level(logging.ERROR, logger="kubefit.resync"):
        loop.start()
        try:
            for _ in range(6):
                assert enough.acquire(timeout=5), f"the resync stopped after {len(reconciled)} reconciles"
        finally:
            loop.stop()
    assert loop._thread is not None and (loop._thread.join(5) or not loop._thread.is_alive())
    assert passes[0] >= 6 and listings[0] >= 6
    messages = [record.getMessage() for record in caplog.records]
    assert any("scheduling pass" in message for message in messages), messages
    assert any("resync period" in message for message in messages), messages


def test_a_failing_scheduling_pass_still_reconciles_the_jobs() -> None:
    now = [0.0]
    reconciled: list[JobKey] = []

    def schedule() -> None:
        raise RuntimeError("boom")

    loop = ResyncLoop(10.0, keys=lambda: [("team", "a")], reconcile=reconciled.append, schedule=schedule,
                      clock=lambda: now[0])  # fmt: skip

    def wait(seconds: float) -> bool:  # a clock that jumps instead of sleeping
        now[0] += seconds
        return False

    loop._stop.wait = wait  # type: ignore[method-assign]
    loop.run_period()
    assert reconciled == [("team", "a")] and now[0] == 10.0
