"""A fixed pytorch or jax group whose workers never all ran at once holds no training state: stopping it
(a scale to what fits, a suspend, a preemption) asks for no checkpoint (docs/api.md,
checkpointGracePeriodSeconds: "Workers that never ran are removed without asking"). It waited out the
grace, keeping the unplaced workers' devices reserved, and could outlast the gang timeout."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from test_reconcile import CATALOG, NOW, decide, observe, pod, raw_spec, status_of

from kubefit.decisions.job import Decision

GRACE = {"checkpointGracePeriodSeconds": 120}
ALL = ["llama-worker-3", "llama-worker-2", "llama-worker-1", "llama-worker-0"]


def spec(framework: str = "pytorch", replicas: int = 4, **more: Any) -> dict[str, Any]:
    return raw_spec(framework=framework, workers={"replicas": replicas}, elastic=GRACE, **more)


def started(framework: str, ready: int) -> tuple[list[Any], Decision]:
    """Four workers admitted: `ready` of them running, the others found no node."""
    pods = [pod(index, "Running" if index < ready else "Pending", attempt=0) for index in range(4)]
    return pods, decide(observe(spec(framework), pods=pods), CATALOG)


@pytest.mark.parametrize("framework", ["pytorch", "jax"])
@pytest.mark.parametrize(
    "change", [{"replicas": 2}, {"runPolicy": {"suspend": True}}], ids=["scaled-to-fit", "suspended"]
)
def test_a_fixed_group_that_never_ran_whole_is_stopped_without_a_checkpoint(
    framework: str, change: dict[str, Any]
) -> None:
    pods, first = started(framework, ready=2)
    assert status_of(first)["gang"]["running"] is False
    stopped = decide(observe(spec(framework, **change), pods=pods, status=first.status, now=NOW + timedelta(seconds=10)), CATALOG)  # fmt: skip
    assert list(stopped.delete) == ALL
    assert stopped.status.checkpoint is None


@pytest.mark.parametrize("framework", ["pytorch", "jax", "none"])
def test_a_group_that_ran_whole_or_organises_itself_is_asked_first(framework: str) -> None:
    ready = 2 if framework == "none" else 4  # framework none: the operator cannot tell what its workers hold
    pods, first = started(framework, ready=ready)
    scaled = decide(observe(spec(framework, replicas=2), pods=pods, status=first.status, now=NOW + timedelta(seconds=10)), CATALOG)  # fmt: skip
    running = [name for name in scaled.delete if name in ALL[-ready:]]
    assert running == [] and scaled.status.checkpoint is not None


def _formed() -> tuple[list[Any], Decision]:
    pods = [replace(pod(index, attempt=0), world_size=4) for index in range(4)]
    return pods, decide(observe(spec(), pods=pods), CATALOG)


def test_a_status_without_gang_running_is_asked_as_before() -> None:
    """An older operator's status has no gang.running, which the model reads as false: a formed group that
    had lost a node was suspended with every worker deleted at once."""
    pods, first = _formed()
    older = status_of(first)
    older["gang"] = {key: value for key, value in older["gang"].items() if key != "running"}
    older = {key: value for key, value in older.items() if value is not None}
    lost = [*pods[:3], replace(pods[3], node_lost=True)]
    suspended = decide(observe(spec(runPolicy={"suspend": True}), lost, older, now=NOW + timedelta(seconds=10)), CATALOG)  # fmt: skip
    assert suspended.delete == () and suspended.status.checkpoint is not None


@pytest.mark.parametrize("stop", ["suspend", "preempt"])
def test_an_open_request_keeps_its_grace_when_a_worker_stops_running(stop: str) -> None:
    """A suspend or preemption writes gang.running false with its request; a worker whose node is lost (or
    that fails) mid-grace made the group read as never formed, and the others were deleted at once."""
    pods, first = _formed()
    changed = spec(runPolicy={"suspend": True}) if stop == "suspend" else spec()
    grant = 0 if stop == "preempt" else None
    opened = decide(
        observe(changed, pods, first.status, now=NOW + timedelta(seconds=10), grant=grant), CATALOG
    )
    assert opened.status.checkpoint is not None and opened.delete == ()
    lost = [*pods[:3], replace(pods[3], node_lost=True)]
    later = decide(
        observe(changed, lost, opened.status, now=NOW + timedelta(seconds=20), grant=grant), CATALOG
    )
    assert later.delete == () and later.status.checkpoint is not None


@pytest.mark.parametrize("stop", ["suspend", "preempt"])
def test_a_formed_group_whose_stop_was_undone_is_still_asked_to_checkpoint(stop: str) -> None:
    """A release wrote gang.running false with its request; undone before the workers answered, while one
    worker's node was NotReady, the group trained on with gang.running false and no request open, and a
    later suspend deleted its workers at once."""
    pods, formed = _formed()
    stopping = spec(runPolicy={"suspend": True}) if stop == "suspend" else spec()
    later = NOW + timedelta(hours=3)
    opened = decide(observe(stopping, pods, formed.status, now=later, grant=0 if stop == "preempt" else None), CATALOG)  # fmt: skip
    assert opened.status.checkpoint is not None
    blip = [*pods[:3], replace(pods[3], node_lost=True)]
    undone = decide(observe(spec(), blip, opened.status, now=later + timedelta(seconds=5)), CATALOG)
    suspended = decide(observe(spec(runPolicy={"suspend": True}), blip, undone.status, now=later + timedelta(seconds=35)), CATALOG)  # fmt: skip
    assert suspended.delete == () and suspended.status.checkpoint is not None
