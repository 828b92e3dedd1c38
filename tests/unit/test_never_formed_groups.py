"""A fixed pytorch or jax group whose workers never all ran at once holds no training state: stopping it
(a scale to what fits, a suspend, a preemption) asks for no checkpoint (docs/api.md,
checkpointGracePeriodSeconds: "Workers that never ran are removed without asking"). It waited out the
grace, keeping the unplaced workers' devices reserved, and could outlast the gang timeout."""

from __future__ import annotations

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
