"""The one sizing path (decisions.job_sizing.size_job): what the operator and `kubefit size` both call."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from sizing_inputs import LLAMA3_8B, TEMPLATE

from kubefit.api.validation import InvalidSpec, parse_spec
from kubefit.builders.naming import JobRef
from kubefit.decisions import job_sizing
from kubefit.decisions.inventory import Inventory
from kubefit.decisions.job import JobObservation, checked_spec, decide, operator_check
from kubefit.decisions.job_sizing import size_job
from kubefit.decisions.observed import WorkerPod
from kubefit.decisions.running_group import RunningGroup
from kubefit.sizing import planner
from kubefit.sizing.catalog import Accelerator, load_catalog
from kubefit.sizing.estimator import Layout, estimate
from kubefit.sizing.planner import NodeInventory, plan, plan_job

CATALOG = load_catalog()


def device(name: str) -> Accelerator:
    found = CATALOG.get(name)
    assert found is not None
    return found


def raw_spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": TEMPLATE,
        "model": {"parameters": "1B"},
        "resources": {"accelerator": "auto", "acceleratorsPerWorker": "auto"},
        "workers": {"replicas": 1},
    }
    return {**spec, **changes}


# Fixed layout whose replicas (1) are fewer than memory needs (several A100-40GB under FSDP).
TOO_FEW_REPLICAS = raw_spec(
    model=LLAMA3_8B,
    training={"sharding": "fsdp", "activationCheckpointing": "full", "sequenceLength": 4096},
    resources={"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 1},
    workers={"replicas": 1, "minReplicas": 1, "maxReplicas": 8},
)


# Plain data parallel at 2 workers: DDP's gradient buckets make 2 devices hold more than 1 (issue: sized at
# 1 worker, 67.0 GiB of 71.7 usable on an H100, while the 2 workers the operator runs need 81.3 GiB).
TWO_DDP_WORKERS = raw_spec(
    model={"parameters": "3.5B"},
    training={"sequenceLength": 1024},
    resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": "auto"},
    workers={"replicas": 2},
)


def h100_nodes(count: int, free: int = 8) -> list[NodeInventory]:
    return [NodeInventory(f"h100-{index}", "nvidia-h100-80gb", 8, free) for index in range(count)]


def operator_sizing(
    raw: dict[str, Any], placeable: list[NodeInventory], excluded: list[NodeInventory]
) -> Any:
    observation = JobObservation(
        job=JobRef("job", "ns", "uid"),
        generation=1,
        spec=raw,
        status={},
        pods=[],
        inventory=Inventory(placeable, excluded),
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return decide(observation, CATALOG).sizing


@pytest.mark.parametrize(
    ("raw", "placeable", "excluded"),
    [
        (raw_spec(), h100_nodes(2), []),
        (raw_spec(), h100_nodes(2, free=0), []),  # a note says the job queues for free devices
        (raw_spec(), [], h100_nodes(2)),  # placement rules every node out: whole catalog, with a warning
        (raw_spec(), [], []),  # no accelerator node at all
        (TOO_FEW_REPLICAS, [], [NodeInventory("a100-0", "nvidia-a100-40gb", 8, 8)]),
        (TWO_DDP_WORKERS, h100_nodes(2), []),
        (
            raw_spec(resources={"accelerator": "auto", "acceleratorsPerWorker": 8}),
            [NodeInventory(f"h100-{index}", "nvidia-h100-80gb", 4, 4) for index in range(2)],
            [],
        ),  # no node offers 8: sized against the catalog, not InvalidSpec
    ],
    ids=["free", "busy", "all-excluded", "no-nodes", "clamped", "auto-two-workers", "count-no-node-offers"],
)
def test_the_operator_writes_exactly_what_size_job_returns(
    raw: dict[str, Any], placeable: list[NodeInventory], excluded: list[NodeInventory]
) -> None:
    expected = size_job(parse_spec(raw), CATALOG, Inventory(placeable, excluded)).sizing
    assert operator_sizing(raw, placeable, excluded) == expected


def test_the_inventory_changes_the_plan() -> None:
    spec = parse_spec(raw_spec())
    offline = size_job(spec, CATALOG).sizing
    live = size_job(spec, CATALOG, Inventory(h100_nodes(2), [])).sizing
    # Offline the cheapest device that holds 1B parameters of Adam state is a smaller one; a cluster that
    # has only H100s gets an H100 plan.
    assert offline.device_memory_bytes < live.device_memory_bytes
    assert live.accelerator == "nvidia-h100-80gb"
    assert live.fits and offline.fits


def test_busy_devices_add_the_queue_note_only_with_an_inventory() -> None:
    spec = parse_spec(raw_spec())
    busy = size_job(spec, CATALOG, Inventory(h100_nodes(2, free=0), [])).sizing
    free = size_job(spec, CATALOG, Inventory(h100_nodes(2), [])).sizing
    note = (
        "not enough free nvidia-h100-80gb now for 1 x nvidia-h100-80gb; the job queues until devices free up"
    )
    assert note in busy.warnings and note not in free.warnings


def test_a_count_no_node_offers_is_not_also_said_to_wait_for_free_devices() -> None:
    """16 per worker on a cluster of 8-GPU nodes: "the job waits in the queue, with no worker created, until
    such a node joins" was followed by "the job queues until devices free up", which freed devices never
    make true."""
    spec = parse_spec(raw_spec(resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 16}))
    warnings = size_job(spec, CATALOG, Inventory(h100_nodes(2, free=0), [])).sizing.warnings
    assert "no node offers 16 x nvidia-h100-80gb; the largest has 8" in warnings
    assert not any("until devices free up" in warning for warning in warnings), warnings


def _running_job_warnings(raw: dict[str, Any], inventory: Inventory) -> list[str]:
    worker = WorkerPod("job-worker-0", 0, "pod-0", "Running", node_name="h100-0", controller_uid="uid")
    observation = JobObservation(
        job=JobRef("job", "ns", "uid"),
        generation=1,
        spec=raw,
        status={},
        pods=[worker],
        inventory=inventory,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return decide(observation, CATALOG).status.sizing.warnings  # type: ignore[union-attr]


def test_a_count_the_whole_cluster_cannot_hold_is_told_so_not_to_wait_for_free_devices() -> None:
    """4 workers of 8 H100s on two 8-GPU nodes: "the job queues until devices free up", all 16 free."""
    spec = parse_spec(
        raw_spec(
            resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8}, workers={"replicas": 4}
        )
    )
    for free in (8, 0):
        warnings = size_job(spec, CATALOG, Inventory(h100_nodes(2, free=free), [])).sizing.warnings
        assert (
            "the cluster's nvidia-h100-80gb nodes hold at most 2 of the 4 workers of 8 even with every device "
            "free; the job queues until nodes join"
        ) in warnings
        assert not any("until devices free up" in warning for warning in warnings), warnings
    warnings = size_job(spec, CATALOG, Inventory(h100_nodes(4, free=0), [])).sizing.warnings
    assert any("the job queues until devices free up" in warning for warning in warnings)


def test_a_running_job_on_a_busy_cluster_is_not_said_to_queue() -> None:
    """Its worker runs; no device is free for another: only a worker it would create again waits. The
    operator and `kubefit size --cluster` (checked_spec with the running group) say the same."""
    raw = raw_spec(resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8})
    inventory = Inventory([NodeInventory("h100-0", "nvidia-h100-80gb", 8, 0)], [])
    warnings = _running_job_warnings(raw, inventory)
    note = (
        "not enough free nvidia-h100-80gb now for 8 x nvidia-h100-80gb; its workers keep the devices they "
        "hold, and a new or replacement worker waits until devices free up"
    )
    assert note in warnings and not any("queues" in warning for warning in warnings)
    running = RunningGroup("nvidia-h100-80gb", 8)
    assert checked_spec("job", raw, CATALOG, 64, inventory, running=running)[1].sizing.warnings == warnings
    queued = checked_spec("job", raw, CATALOG, 64, inventory)[1].sizing.warnings
    assert any("the job queues until devices free up" in warning for warning in queued)


def test_a_running_job_whose_node_lost_a_device_is_told_no_node_offers_its_count() -> None:
    """Its worker holds 8 devices of a node that now offers 7 (a GPU gone): no node offers 8, which freed
    devices do not change, so neither the running job nor a queued one is told to wait for them."""
    raw = raw_spec(resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8})
    inventory = Inventory([NodeInventory("h100-0", "nvidia-h100-80gb", 7, 7)], [])
    warnings = _running_job_warnings(raw, inventory)
    assert "no node offers 8 x nvidia-h100-80gb; the largest has 7" in warnings
    running = RunningGroup("nvidia-h100-80gb", 8)
    assert checked_spec("job", raw, CATALOG, 64, inventory, running=running)[1].sizing.warnings == warnings
    queued = checked_spec("job", raw, CATALOG, 64, inventory)[1].sizing.warnings
    for told in (warnings, queued):
        assert not any("until devices free up" in warning for warning in told), told


def test_placement_that_rules_out_every_node_plans_the_catalog_and_says_why() -> None:
    spec = parse_spec(raw_spec())
    sizing = size_job(spec, CATALOG, Inventory([], h100_nodes(3))).sizing
    assert sizing.accelerator == size_job(spec, CATALOG).sizing.accelerator
    assert any("rule out all 3 accelerator nodes" in warning for warning in sizing.warnings)


def test_too_few_replicas_are_sized_at_the_floor_memory_raises() -> None:
    spec = parse_spec(TOO_FEW_REPLICAS)
    sized = size_job(spec, CATALOG)
    needed = sized.sizing.min_workers
    assert needed > 1  # replicas is 1
    assert sized.bounds.desired == needed and sized.evaluated_workers == needed
    assert sized.sizing.fits and plan(spec, CATALOG) == sized.sizing
    layout = Layout(devices_per_worker=1, workers=needed)
    assert sized.sizing.per_device_bytes == estimate(spec, device("nvidia-a100-40gb"), layout).total


def fits_at(spec: Any, sizing: Any, workers: int) -> bool:
    layout = Layout(devices_per_worker=sizing.accelerators_per_worker, workers=workers)
    found = device(sizing.accelerator)
    return estimate(spec, found, layout).total <= found.memory_bytes * (1 - spec.resources.memory_headroom)


def test_an_auto_layout_is_sized_at_the_worker_count_the_operator_runs() -> None:
    spec = parse_spec(TWO_DDP_WORKERS)
    sized = size_job(spec, CATALOG)
    assert sized.bounds.desired == sized.evaluated_workers == 2
    layout = Layout(devices_per_worker=sized.sizing.accelerators_per_worker, workers=2)
    assert sized.sizing.per_device_bytes == estimate(spec, device("nvidia-h100-80gb"), layout).total
    assert sized.sizing.fits is fits_at(spec, sized.sizing, 2) is False
    # the same job with its per-worker count written out is the same answer
    explicit = raw_spec(
        **{**TWO_DDP_WORKERS, "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1}}
    )
    fixed = size_job(parse_spec(explicit), CATALOG).sizing
    assert (fixed.per_device_bytes, fixed.fits) == (sized.sizing.per_device_bytes, sized.sizing.fits)
    # a free choice of accelerator finds one that holds the 2 workers
    free_choice = raw_spec(**{**TWO_DDP_WORKERS, "resources": {"accelerator": "auto"}})
    chosen = size_job(parse_spec(free_choice), CATALOG)
    assert chosen.sizing.fits and chosen.evaluated_workers == 2 and fits_at(spec, chosen.sizing, 2)


def test_an_elastic_job_fits_at_every_worker_count_it_may_run_with() -> None:
    raw = raw_spec(
        model={"parameters": "3.5B"},
        training={"sequenceLength": 1024},
        workers={"replicas": 4, "minReplicas": 1},
        elastic={"enabled": True},
    )
    spec = parse_spec(raw)
    sized = size_job(spec, CATALOG)
    assert sized.sizing.fits and (sized.bounds.floor, sized.bounds.desired) == (1, 4)
    for workers in range(sized.bounds.floor, sized.bounds.desired + 1):
        assert fits_at(spec, sized.sizing, workers), workers
    layout = Layout(devices_per_worker=sized.sizing.accelerators_per_worker, workers=sized.evaluated_workers)
    assert sized.sizing.per_device_bytes == estimate(spec, device(sized.sizing.accelerator), layout).total


def test_no_offload_no_host_bytes() -> None:
    assert size_job(parse_spec(raw_spec()), CATALOG).host_bytes_per_worker == 0


def test_host_bytes_are_the_share_at_the_fewest_workers_the_job_may_run_with() -> None:
    raw = raw_spec(
        model={"parameters": "8B"},
        training={"offload": "optimizer", "sharding": "zero2"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
        workers={"replicas": 4, "minReplicas": 2, "maxReplicas": 4},
    )
    spec = parse_spec(raw)
    sized = size_job(spec, CATALOG)
    h100 = device("nvidia-h100-80gb")
    at_floor = estimate(spec, h100, Layout(devices_per_worker=8, workers=2)).host_bytes_per_worker
    at_replicas = estimate(spec, h100, Layout(devices_per_worker=8, workers=4)).host_bytes_per_worker
    assert sized.bounds.floor == 2
    assert sized.host_bytes_per_worker == at_floor > at_replicas > 0


def test_offload_with_more_workers_needed_than_allowed_sizes_like_without_offload() -> None:
    # Memory (and the two pipeline stages of one device each) needs 2 workers; replicas allows 1. The
    # host share was estimated at min(floor, ceiling) = 1 worker: 1 device for 2 stages, an InvalidSpec
    # naming spec.training.tensorParallel.
    training = {"pipelineParallel": 2}
    raw = raw_spec(model={"parameters": "8B"}, training=training, resources={"acceleratorsPerWorker": 1})
    plain = size_job(parse_spec(raw), CATALOG)
    offloaded = parse_spec({**raw, "training": {**training, "offload": "optimizer"}})
    sized = size_job(offloaded, CATALOG)
    assert not sized.bounds.feasible and not plain.bounds.feasible
    assert any("workers.replicas allows 1" in warning for warning in sized.sizing.warnings)
    layout = Layout(devices_per_worker=1, workers=sized.bounds.floor)
    expected = estimate(offloaded, device(sized.sizing.accelerator), layout).host_bytes_per_worker
    assert sized.host_bytes_per_worker == expected > 0


def test_an_unknown_accelerator_names_the_field() -> None:
    spec = parse_spec(raw_spec(resources={"accelerator": "acme-x9", "acceleratorsPerWorker": 1}))
    with pytest.raises(InvalidSpec) as raised:
        size_job(spec, CATALOG, Inventory(h100_nodes(1), []))
    assert [error.path for error in raised.value.errors] == ["spec.resources.accelerator"]


def test_overprovisioning_advice_is_returned_and_in_the_warnings() -> None:
    raw = raw_spec(resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8})
    sized = size_job(parse_spec(raw), CATALOG)
    assert sized.advice is not None and sized.advice in sized.sizing.warnings
    assert size_job(parse_spec(raw_spec()), CATALOG).advice is None


def test_the_over_provisioning_advice_is_worked_out_once_per_spec_and_layout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubefit.decisions import job_sizing

    asked: list[str] = []
    original = job_sizing.overprovisioned

    def counting(spec: Any, sizing: Any, catalog: Any, pools: Any = None) -> str | None:
        asked.append(sizing.accelerator)
        return original(spec, sizing, catalog, pools)

    monkeypatch.setattr(job_sizing, "overprovisioned", counting)
    monkeypatch.setattr(job_sizing, "_ADVICE", job_sizing._AdviceMemory(size=2))
    wasteful = parse_spec(raw_spec(resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8}))
    first = size_job(wasteful, CATALOG)
    assert first.advice is not None and first.advice in first.sizing.warnings
    for _ in range(3):  # every reconcile of the same job
        again = size_job(wasteful, CATALOG)
        assert (again.advice, again.sizing) == (first.advice, first.sizing)
    assert len(asked) == 1
    fitting = parse_spec(raw_spec())
    assert size_job(fitting, CATALOG).advice is None and len(asked) == 2  # another spec: worked out
    size_job(parse_spec(raw_spec(model={"parameters": "2B"})), CATALOG)  # a third: the first falls out
    size_job(wasteful, CATALOG)
    assert len(asked) == 4


# A job that does not fit anywhere: the planner looks for remedies by planning it again many times.
DOES_NOT_FIT = raw_spec(
    model={"parameters": "70B"},
    resources={"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 8},
    workers={"replicas": 2},
)


class CountingPlanner:
    """plan_job, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return plan_job(*args, **kwargs)


@pytest.fixture
def counting_planner(monkeypatch: pytest.MonkeyPatch) -> CountingPlanner:
    counter = CountingPlanner()
    monkeypatch.setattr(job_sizing, "plan_job", counter)
    monkeypatch.setattr(job_sizing, "_PLANS", job_sizing._PlanMemory())
    return counter


def test_a_plan_is_remembered_until_the_spec_the_cluster_or_the_check_changes(
    counting_planner: CountingPlanner,
) -> None:
    spec = parse_spec(DOES_NOT_FIT)
    cluster = Inventory([NodeInventory(f"a100-{i}", "nvidia-a100-40gb", 8, 8) for i in range(2)], [])
    first = size_job(spec, CATALOG, cluster, check=operator_check("job", 64))
    again = size_job(parse_spec(DOES_NOT_FIT), CATALOG, cluster, check=operator_check("job", 64))
    assert counting_planner.calls == 1
    assert again == first
    assert not first.sizing.fits and first.sizing.warnings  # the remembered plan keeps its advice

    busy = Inventory([NodeInventory(f"a100-{i}", "nvidia-a100-40gb", 8, 0) for i in range(2)], [])
    size_job(spec, CATALOG, busy, check=operator_check("job", 64))  # free devices changed
    size_job(spec, CATALOG, cluster, check=operator_check("job", 8))  # the operator's worker limit changed
    size_job(spec, CATALOG, cluster, check=operator_check("other", 64))  # another job's name
    bigger = parse_spec({**DOES_NOT_FIT, "workers": {"replicas": 3}})
    size_job(bigger, CATALOG, cluster, check=operator_check("job", 64))
    size_job(spec, copy.deepcopy(CATALOG), cluster, check=operator_check("job", 64))  # another catalog
    assert counting_planner.calls == 6


def test_a_remembered_plan_equals_a_fresh_one(counting_planner: CountingPlanner) -> None:
    for raw in (DOES_NOT_FIT, TOO_FEW_REPLICAS, TWO_DDP_WORKERS, raw_spec()):
        spec = parse_spec(raw)
        counting_planner.calls = 0
        remembered = [size_job(spec, CATALOG, Inventory(h100_nodes(2), [])) for _ in range(2)][1]
        assert counting_planner.calls == 1
        job_sizing._PLANS = job_sizing._PlanMemory()
        assert remembered == size_job(spec, CATALOG, Inventory(h100_nodes(2), []))


def test_without_advice_the_same_errors_and_layout_without_the_remedy_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    specs = [
        DOES_NOT_FIT,
        TOO_FEW_REPLICAS,
        raw_spec(),
        raw_spec(model={"parameters": "405B"}, workers={"minReplicas": 1, "maxReplicas": 4096}),
        raw_spec(
            training={"tensorParallel": 3}, resources={"accelerator": "auto", "acceleratorsPerWorker": 8}
        ),
        raw_spec(resources={"accelerator": "nvidia-nope"}),
        raw_spec(workers={"replicas": 100}),  # above the per-job worker limit below
    ]
    advised: list[Any] = []
    for raw in specs:
        try:
            advised.append(checked_spec("job", raw, CATALOG, 64)[1].sizing)
        except InvalidSpec as invalid:
            advised.append(invalid.errors)

    def no_remedies(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the remedy search ran")

    monkeypatch.setattr(planner, "_remedy_search", no_remedies)
    monkeypatch.setattr(job_sizing, "overprovisioned", no_remedies)
    monkeypatch.setattr(job_sizing, "_ADVICE", job_sizing._AdviceMemory())  # none remembered from above
    for raw, with_advice in zip(specs, advised, strict=True):
        try:
            sizing = checked_spec("job", raw, CATALOG, 64, advise=False)[1].sizing
        except InvalidSpec as invalid:
            assert invalid.errors == with_advice
            continue
        assert not isinstance(with_advice, list)
        plain = ("accelerator", "accelerators_per_worker", "min_workers", "per_device_bytes", "fits")
        assert {f: getattr(sizing, f) for f in plain} == {f: getattr(with_advice, f) for f in plain}


# Llama-3-8B, full training, ZeRO-3 with optimizer and parameters offloaded, on one A10G per worker: one
# worker offloads ~120 GiB, more than a 62 GiB node offers; four shard it to ~30 GiB each.
OFFLOADED_ON_A10G = raw_spec(
    model={**LLAMA3_8B, "precision": "bf16-mixed"},
    training={
        "sequenceLength": 4096,
        "activationCheckpointing": "full",
        "sharding": "zero3",
        "offload": "optimizer-and-parameters",
    },
    resources={"accelerator": "nvidia-a10g", "acceleratorsPerWorker": "auto"},
    workers={"replicas": 1},
)


def a10g_nodes(memory_gib: int, count: int = 4) -> Inventory:
    nodes = [
        NodeInventory(f"a10g-{index}", "nvidia-a10g", 1, 1, cpu_millis=15000, memory_bytes=memory_gib * 2**30)
        for index in range(count)
    ]
    return Inventory(nodes, [])


def node_memory_warnings(sizing: Any) -> list[str]:
    return [warning for warning in sizing.warnings if "allocatable on the largest" in warning]


def test_a_default_memory_request_no_node_holds_is_warned_with_the_worker_count_that_fits() -> None:
    # The planner reads no host memory: the one worker's default request (16 GiB + its offloaded state)
    # fits no node, and it was reported as fitting without a word.
    sized = size_job(parse_spec(OFFLOADED_ON_A10G), CATALOG, a10g_nodes(62))
    assert sized.sizing.fits and sized.host_bytes_per_worker > 62 * 2**30
    (warning,) = node_memory_warnings(sized.sizing)
    assert warning.startswith("the default memory request of 135.7 GiB per worker (119.7 GiB of it"), warning
    assert "above the 62.0 GiB allocatable on the largest nvidia-a10g node" in warning, warning
    assert warning.endswith(
        "at 3 workers (workers.replicas and minReplicas, and maxReplicas) it comes to 55.9 GiB"
    )
    # Nodes that hold it, the job at a worker count whose share fits, or no inventory: no warning.
    assert not node_memory_warnings(size_job(parse_spec(OFFLOADED_ON_A10G), CATALOG, a10g_nodes(192)).sizing)
    four = parse_spec({**OFFLOADED_ON_A10G, "workers": {"replicas": 4}})
    assert not node_memory_warnings(size_job(four, CATALOG, a10g_nodes(62)).sizing)
    assert not node_memory_warnings(size_job(parse_spec(OFFLOADED_ON_A10G), CATALOG).sizing)


def test_no_worker_count_the_nodes_hold_brings_the_default_within_a_node() -> None:
    sizing = size_job(parse_spec(OFFLOADED_ON_A10G), CATALOG, a10g_nodes(62, count=2)).sizing
    (warning,) = node_memory_warnings(sizing)
    assert warning.endswith("; offload less, or run on nodes with more memory"), warning


def test_a_given_memory_request_no_node_holds_is_warned() -> None:
    spec = parse_spec(
        raw_spec(resources={"accelerator": "nvidia-a10g", "acceleratorsPerWorker": 1, "memory": "100Gi"})
    )
    (warning,) = node_memory_warnings(size_job(spec, CATALOG, a10g_nodes(62)).sizing)
    assert warning.startswith("spec.resources.memory 100Gi (100.0 GiB) is above the 62.0 GiB"), warning
    assert not node_memory_warnings(size_job(spec, CATALOG, a10g_nodes(128)).sizing)


def test_a_remembered_plan_is_not_reused_for_a_spec_that_gives_a_field_the_other_leaves_unset() -> None:
    """loraTargets listing the seven defaults dumps to the JSON of loraTargets left out, but only a named
    gate the model lacks is warned of: the plan memory, keyed on that JSON, gave each form the other's."""
    gpt2_xl = {"layers": 48, "hiddenSize": 1600, "attentionHeads": 25, "vocabSize": 50257}

    def lora(**finetuning: Any) -> Any:
        return parse_spec(
            {
                "template": TEMPLATE,
                "model": {
                    "parameters": "1.56B",
                    "architecture": gpt2_xl,
                    "finetuning": {"method": "lora", **finetuning},
                },
            }
        )

    every = ["query", "key", "value", "output", "gate", "up", "down"]
    named, default = lora(loraTargets=every), lora()
    assert named.model_dump_json() == default.model_dump_json()
    for first, second in ((named, default), (default, named)):
        for spec in (first, second):
            warned = any("loraTargets: gate" in w for w in size_job(spec, CATALOG).sizing.warnings)
            assert warned == (spec is named)


def test_the_over_provisioning_advice_names_an_accelerator_the_cluster_has() -> None:
    # Planned against the whole catalog, the advice named an A10G on a cluster of L4s: following it queued
    # the job for good.
    pinned = parse_spec(
        raw_spec(
            model={"parameters": "500M"},
            resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
        )
    )
    l4s = [NodeInventory(f"l4-{index}", "nvidia-l4", 4, 4) for index in range(2)]
    h100s = [NodeInventory("h100-0", "nvidia-h100-80gb", 8, 8)]
    on_the_cluster = size_job(pinned, CATALOG, Inventory([*l4s, *h100s], [])).advice
    anywhere = size_job(pinned, CATALOG).advice
    assert anywhere is not None and "set resources.accelerator: nvidia-a10g" in anywhere  # the catalog's pick
    assert on_the_cluster is not None
    assert "set resources.accelerator: nvidia-l4" in on_the_cluster, on_the_cluster
    assert "nvidia-a10g" not in on_the_cluster


def test_the_over_provisioning_advice_follows_the_accelerators_there_not_how_many_are_free() -> None:
    # Planned against what was free, the advice named an A10G, then an L4 once the A10Gs were busy, then
    # nothing: each change rewrote the status and posted the OverProvisioned Event again.
    pinned = parse_spec(
        raw_spec(
            model={"parameters": "500M"},
            resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
        )
    )

    def cluster(free_l4: int, free_a10g: int) -> Inventory:
        l4s = [NodeInventory(f"l4-{i}", "nvidia-l4", 4, free_l4) for i in range(2)]
        a10gs = [NodeInventory(f"a10g-{i}", "nvidia-a10g", 4, free_a10g) for i in range(2)]
        return Inventory([*l4s, *a10gs, NodeInventory("h100-0", "nvidia-h100-80gb", 8, 8)], [])

    advice = {size_job(pinned, CATALOG, cluster(*free)).advice for free in ((4, 4), (4, 0), (0, 0), (0, 4))}
    assert len(advice) == 1 and None not in advice, advice
    # No accelerator of the cluster runs it (bf16 rules out V100s): the planner's catalog fallback is not
    # advice.
    v100s = Inventory([NodeInventory("v100-0", "nvidia-v100-16gb", 8, 8)], [])
    assert size_job(pinned, CATALOG, v100s).advice is None


def test_a_running_job_whose_nodes_are_all_cordoned_is_not_said_to_wait_in_the_queue() -> None:
    """Every H100 node cordoned for maintenance while the job runs there (a review): its workers run on;
    only a worker it adds or replaces waits. A queued job is told it waits with no worker created."""
    raw = raw_spec(resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8})
    cordoned = NodeInventory("h100-0", "nvidia-h100-80gb", 8, 0)
    inventory = Inventory([], [cordoned])
    running = [warning for warning in _running_job_warnings(raw, inventory) if "placement" in warning]
    assert len(running) == 1 and running[0].endswith(
        "its running workers go on, and a worker it adds or replaces waits for such a node"
    )
    queued = checked_spec("job", raw, CATALOG, 64, inventory)[1].sizing.warnings
    assert any(warning.endswith("the job waits in the queue, with no worker created") for warning in queued)
