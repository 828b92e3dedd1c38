"""Handlers kopf can cancel (controller/handlers.py, HandlerThreads): kopf stops watching a deleted namespace
without waiting for that namespace's handlers, which still run to their end."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import time
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest

from kubefit.controller import handlers
from kubefit.controller.handlers import HandlerThreads

LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="unset")


def test_every_handler_and_index_is_a_coroutine_kopf_can_cancel() -> None:
    """A plain `def` runs in kopf's executor shielded from cancellation: stopping a namespace's watch waits
    for it, and no new namespace is watched meanwhile."""
    registry = kopf.OperatorRegistry()
    stand_in = SimpleNamespace(
        jobs=SimpleNamespace(keys=list), created_here=lambda key, name: False, api=None
    )
    handlers.register(registry, cast(Any, stand_in), cast(Any, SimpleNamespace()))
    # kopf keeps them in private registries; these two hold every index and every event handler.
    found = [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers()]
    names = {handler.id for handler in found}
    assert {"job", "worker_pod", "node_changed", "pod_released", "kubefit_nodes", "kubefit_workers"} <= names
    assert "kubefit_jobs" in names  # the restart settle's list of every job (controller/scheduler.py)
    blocking = [handler.id for handler in found if not inspect.iscoroutinefunction(handler.fn)]
    assert blocking == []


def test_a_cancelled_handler_returns_at_once_and_its_body_and_the_queued_ones_still_run() -> None:
    threads = HandlerThreads(threads=1)
    release, finished = threading.Event(), []

    def body(name: str) -> None:
        release.wait(10)
        finished.append((name, LABEL.get()))

    async def scenario() -> float:
        LABEL.set("kopf's context")
        running = asyncio.create_task(threads.run(body, {"name": "running"}))
        queued = asyncio.create_task(threads.run(body, {"name": "queued"}))  # behind it: one thread
        await asyncio.sleep(0.05)
        started = time.monotonic()
        running.cancel()
        queued.cancel()
        for task in (running, queued):
            with pytest.raises(asyncio.CancelledError):
                await task
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    assert waited < 5  # not the 10 s the body would have held a shielded handler
    assert finished == []
    release.set()
    deadline = time.monotonic() + 10
    while len(finished) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert finished == [("running", "kopf's context"), ("queued", "kopf's context")]


def test_a_handlers_error_reaches_kopf() -> None:
    def failing() -> None:
        raise ValueError("bad event")

    with pytest.raises(ValueError, match="bad event"):
        asyncio.run(HandlerThreads(threads=1).run(failing, {}))
