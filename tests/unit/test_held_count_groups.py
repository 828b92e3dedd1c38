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


def _sizing_before_and_while_running(raw: dict[str, Any], nodes: int = 4) -> tuple[Decision, Decision]:
    inventory = build_inventory(
        [NodeFacts(f"h{i}", H100, {"nvidia.com/gpu": "8"}) for i in range(nodes)], {}, CATALOG
    )

    def at(pods: list[Any], status: Any, after: float) -> Decision:
        observed = observe(raw, pods=pods, status=status, now=NOW + timedelta(seconds=after))
        return decide(JobObservation(**{**observed.__dict__, "inventory": inventory}), CATALOG)

    first = at([], None, 0)
    return first, at([pod(index) for index in range(len(first.create))], first.status, 300)


def test_a_held_count_keeps_the_auto_wording_and_the_no_overprovisioning_rule() -> None:
    """Both unchanged by the workers existing: the tensor-parallel note named a count the user never wrote,
    and a layout kubefit chose itself (both auto) got an OverProvisioned warning and event once it ran."""
    tp16 = {**spec({"replicas": 2}, tensor=16, pipeline=1)}
    before, running = _sizing_before_and_while_running(tp16)
    assert before.sizing is not None and running.sizing is not None
    note = [w for w in before.sizing.warnings if "tensorParallel 16" in w]
    assert note and [w for w in running.sizing.warnings if "tensorParallel 16" in w] == note
    small = {**spec({"replicas": 2}, tensor=1, pipeline=1), "model": {"parameters": "350M"}}
    small["resources"] = {"accelerator": "auto", "acceleratorsPerWorker": "auto"}
    before, running = _sizing_before_and_while_running(small)
    assert running.sizing is not None
    assert not [w for w in running.sizing.warnings if "more than this job needs" in w]
    assert "OverProvisioned" not in [event.reason for event in running.events]


def test_remedies_of_a_held_count_that_no_longer_fits_are_the_ones_planned_without_workers() -> None:
    """An edit that no longer fits (13B to 70B at 32k tokens) while 2 workers of a rounded 3 run: every
    remedy on the job's own device re-planned the held count as one the user wrote, failed the whole-group
    check and was dropped; status.sizing said no layout holds it even with zero3."""
    raw = spec({"replicas": 3}, tensor=8, pipeline=2)
    first, running = _sizing_before_and_while_running(raw, nodes=8)
    edited = {**raw, "model": {"parameters": "70B"}, "training": {**raw["training"], "sequenceLength": 32768}}
    inventory = build_inventory(
        [NodeFacts(f"h{i}", H100, {"nvidia.com/gpu": "8"}) for i in range(8)], {}, CATALOG
    )
    pods = [pod(index) for index in range(len(first.create))]
    held = decide(JobObservation(**{**observe(edited, pods=pods, status=running.status, now=NOW + timedelta(minutes=10)).__dict__, "inventory": inventory}), CATALOG)  # fmt: skip
    fresh = decide(JobObservation(**{**observe(edited, pods=[], status=None, now=NOW).__dict__, "inventory": inventory}), CATALOG)  # fmt: skip
    assert held.sizing is not None and fresh.sizing is not None
    would_fit = [w for w in fresh.sizing.warnings if "Would fit" in w]
    assert would_fit and [w for w in held.sizing.warnings if "Would fit" in w] == would_fit


@pytest.mark.parametrize(
    ("accelerator", "parameters", "tensor", "pipeline", "replicas", "training"),
    [
        ("google-tpu-v5p", "180B", 8, 4, 6, {}),  # the bigger device: no worker raise it does not need
        ("google-tpu-v4", "7B", 2, 4, 5, {"sequenceLength": 8192, "sharding": "zero1"}),  # another TPU
    ],
    ids=["bigger-device", "other-tpu"],
)
def test_remedies_on_another_device_plan_the_held_count_as_auto(  # noqa: PLR0913 - one job, as parametrized
    accelerator: str, parameters: str, tensor: int, pipeline: int, replicas: int, training: dict[str, Any]
) -> None:
    """On another device the held count means nothing: the remedies moving the job there planned it as a
    count the user wrote (a worker raise the job did not need, an acceleratorsPerWorker change of a field
    left auto, a TPU remedy lost) where the same job without workers got auto's."""
    from kubefit.api.validation import parse_spec
    from kubefit.sizing.planner import plan_job

    raw = spec({"replicas": replicas}, tensor=tensor, pipeline=pipeline)
    raw["model"] = {"parameters": parameters}
    raw["resources"]["accelerator"] = accelerator
    raw["training"].update(training)
    fresh = plan_job(parse_spec(raw), CATALOG, has_live_workers=True).sizing
    held_raw = copy.deepcopy(raw)
    held_raw["resources"]["acceleratorsPerWorker"] = fresh.accelerators_per_worker
    held = plan_job(parse_spec(held_raw), CATALOG, has_live_workers=True, count_held=True).sizing
    assert held.warnings == fresh.warnings
