"""A job that names its accelerator and leaves acceleratorsPerWorker auto, asking for worker counts the
planner rounds to whole TP x PP groups (docs/api.md), once its workers exist is planned with their device
count (running_group.kept_by_running_group). That count was taken for a layout the user wrote, whose counts
must be whole groups: the job turned InvalidSpec at its next reconcile, with no edit, and then ignored a
failed worker (no restart), keeping the others' devices."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from bad_specs import CONTAINER
from test_reconcile import CATALOG, NOW, decide, observe, pod, status_of

from kubefit.decisions.inventory import NodeFacts, build_inventory
from kubefit.decisions.job import Decision, JobObservation

H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
INVENTORY = build_inventory(
    [NodeFacts(f"h{i}", H100, {"nvidia.com/gpu": "8"}) for i in range(8)], {}, CATALOG
)


def spec(workers: dict[str, Any], tensor: int, pipeline: int, elastic: bool = False) -> dict[str, Any]:
    return {
        "template": {"spec": {"containers": [copy.deepcopy(CONTAINER)]}},
        "framework": "pytorch",
        "model": {"parameters": "13B"},
        "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": "auto"},
        "workers": workers,
        "training": {"tensorParallel": tensor, "pipelineParallel": pipeline},
        **({"elastic": {"enabled": True}} if elastic else {}),
    }


def reconcile(raw: dict[str, Any], pods: list[Any], status: Any, after: float) -> Decision:
    observed = observe(raw, pods=pods, status=status, now=NOW + timedelta(seconds=after))
    return decide(JobObservation(**{**observed.__dict__, "inventory": INVENTORY}), CATALOG)


def ready(decision: Decision) -> dict[str, Any]:
    return next(c for c in status_of(decision)["conditions"] if c["type"] == "Ready")


@pytest.mark.parametrize(
    ("raw", "runs"),
    [
        (spec({"replicas": 3}, tensor=8, pipeline=2), 2),  # 16-device groups of 2 workers of 8: 3 rounds to 2
        (spec({"replicas": 6, "minReplicas": 1, "maxReplicas": 6}, tensor=4, pipeline=2, elastic=True), 6),
    ],
    ids=["fixed", "elastic-floor"],
)
def test_a_count_held_from_the_running_workers_keeps_the_rounding_of_auto(
    raw: dict[str, Any], runs: int
) -> None:
    first = reconcile(raw, [], None, 0)
    assert len(first.create) == runs
    pending = [pod(index, "Pending") for index in range(runs)]
    second = reconcile(raw, pending, first.status, 2)
    assert ready(second)["reason"] != "InvalidSpec", ready(second)
    running = [pod(index) for index in range(runs)]
    third = reconcile(raw, running, second.status, 300)
    assert ready(third)["reason"] == "AllWorkersReady", ready(third)
    running[1] = pod(1, "Failed")
    failed = reconcile(raw, running, third.status, 360)
    assert "WorkerFailed" in [event.reason for event in failed.events]
    assert status_of(failed)["restarts"] == 1  # counted: replaced (elastic) or the group restarted (fixed)
