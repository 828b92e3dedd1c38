"""InventoryMemo gives what build_inventory gives, for every job and placement, while the nodes and pods stay
the same objects and after any of them changes; its pools are pool_inventory's of the placeable nodes."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Mapping

import pytest

from kubefit.decisions.inventory import InventoryMemo, NodeFacts, PodUsage, build_inventory
from kubefit.decisions.node_match import ANYWHERE, Placement, Taint
from kubefit.sizing.catalog import load_catalog
from kubefit.sizing.planner import NodeInventory, pool_inventory, with_changed_nodes

CATALOG = load_catalog()
PRODUCTS = (
    {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    {"nvidia.com/gpu.product": "NVIDIA-L4"},
    {},  # a CPU node
)
JOBS = [("ml", f"job-{index}") for index in range(6)]
PLACEMENTS = [
    ANYWHERE,
    Placement({"pool": "a"}, (), ()),
    Placement({}, (), ({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},)),
]


def random_node(rng: random.Random, index: int) -> NodeFacts:
    labels = {**rng.choice(PRODUCTS), "pool": rng.choice("ab")}
    taints = (Taint("dedicated", "x", "NoSchedule"),) if rng.random() < 0.2 else ()
    allocatable = (
        {"nvidia.com/gpu": str(rng.choice((0, 4, 8)))} if labels.get("nvidia.com/gpu.product") else {}
    )
    return NodeFacts(f"node-{index:03d}", labels, allocatable, rng.random() > 0.1, taints)


def random_usage(rng: random.Random, nodes: list[NodeFacts]) -> dict[str, list[PodUsage]]:
    usage: dict[str, list[PodUsage]] = {}
    for index in range(rng.randint(0, 3 * len(nodes))):
        node = rng.choice(nodes).name
        job = rng.choice([*JOBS, None])
        requests = {"nvidia.com/gpu": rng.choice((1, 2, 4, 8, 9))}  # 9: more than the node has
        usage.setdefault(node, []).append(PodUsage(node, requests, job))
        del index
    return usage


def assert_same(memo: InventoryMemo, nodes: list[NodeFacts], usage: Mapping[str, list[PodUsage]]) -> None:
    for placement in PLACEMENTS:
        for job in [*JOBS, None]:
            expected = build_inventory(nodes, usage, CATALOG, for_job=job, placement=placement)
            got = memo.inventory(nodes, usage, CATALOG, for_job=job, placement=placement)
            assert (got.placeable, got.excluded) == (expected.placeable, expected.excluded)
            assert got.pools == pool_inventory(expected.placeable)
            for accelerator in ("nvidia-h100-80gb", "nvidia-l4"):
                names = {node.name for node in expected.placeable if node.accelerator == accelerator}
                assert got.names_of(accelerator) == names


@pytest.mark.parametrize("seed", range(40))
def test_the_memo_equals_build_inventory_as_nodes_and_pods_change(seed: int) -> None:
    rng = random.Random(seed)
    nodes = [random_node(rng, index) for index in range(rng.randint(1, 30))]
    usage = random_usage(rng, nodes)
    memo = InventoryMemo()
    assert_same(memo, nodes, usage)
    assert_same(memo, nodes, usage)  # the same snapshot: from the memo
    # A pod changed (kopf's index holds a new object for it), then a node's facts, then one node is gone.
    usage = {node: list(pods) for node, pods in usage.items()}
    node = rng.choice(nodes).name
    usage.setdefault(node, []).append(PodUsage(node, {"nvidia.com/gpu": 2}, rng.choice(JOBS)))
    assert_same(memo, nodes, usage)
    nodes = [*nodes[:-1], random_node(rng, len(nodes) - 1)]
    assert_same(memo, nodes, usage)
    assert_same(memo, nodes[1:], usage)


def change_some_pods(
    rng: random.Random, nodes: list[NodeFacts], usage: dict[str, list[PodUsage]]
) -> set[str]:
    """What kopf's index sees as workers come and go: pods added, removed, replaced by a new object (a
    change of the pod), a node's last pod gone (its key with it, or an empty list). Returns the nodes."""
    touched = set()
    for _ in range(rng.randint(1, 4)):
        node = rng.choice(nodes).name
        pods = usage.setdefault(node, [])
        action = rng.choice(("add", "remove", "replace", "empty"))
        if action == "add" or not pods:
            pods.append(
                PodUsage(node, {"nvidia.com/gpu": rng.choice((1, 2, 4, 8))}, rng.choice([*JOBS, None]))
            )
        elif action == "remove":
            pods.pop(rng.randrange(len(pods)))
        elif action == "replace":
            index = rng.randrange(len(pods))
            pods[index] = PodUsage(node, dict(pods[index].requests), pods[index].job)
        else:
            pods.clear()
        if not pods and rng.random() < 0.5:
            del usage[node]
        touched.add(node)
    return touched


@pytest.mark.parametrize("seed", range(40))
def test_the_memo_follows_pods_changing_a_few_nodes_at_a_time(seed: int) -> None:
    """Each step changes some pods; the memo counts those nodes again and must equal build_inventory."""
    rng = random.Random(seed)
    nodes = [random_node(rng, index) for index in range(rng.randint(8, 30))]
    usage = random_usage(rng, nodes)
    memo = InventoryMemo()
    assert_same(memo, nodes, usage)
    for _ in range(12):
        usage = {node: list(pods) for node, pods in usage.items()}  # same objects, new lists: no change
        change_some_pods(rng, nodes, usage)
        assert_same(memo, nodes, usage)


def test_an_unchanged_snapshot_is_worked_out_once() -> None:
    rng = random.Random(7)
    nodes = [random_node(rng, index) for index in range(20)]
    usage = random_usage(rng, nodes)
    memo = InventoryMemo()
    first = memo.inventory(nodes, usage, CATALOG)
    assert memo.inventory(list(nodes), {node: list(pods) for node, pods in usage.items()}, CATALOG) is first
    changed = {**usage, nodes[0].name: [*usage.get(nodes[0].name, []), PodUsage(nodes[0].name, {}, None)]}
    assert memo.inventory(nodes, changed, CATALOG) is not first


@pytest.mark.parametrize("seed", range(200))
def test_pools_with_changed_nodes_count_as_pool_inventory(seed: int) -> None:
    rng = random.Random(seed)
    accelerators = ("nvidia-h100-80gb", "nvidia-l4")
    before = [
        NodeInventory(f"n{index}", rng.choice(accelerators), allocatable, rng.randint(-1, allocatable + 1))
        for index in range(rng.randint(1, 12))
        for allocatable in [rng.choice((0, 1, 4, 8))]
    ]
    after = list(before)
    changes = []
    for index in rng.sample(range(len(before)), rng.randint(0, len(before))):
        after[index] = NodeInventory(
            before[index].name, before[index].accelerator, before[index].allocatable, rng.randint(0, 8)
        )
        changes.append((before[index], after[index]))
    pools = with_changed_nodes(pool_inventory(before), changes)
    assert pools == pool_inventory(after)


def test_more_placements_than_the_memo_keeps_still_give_the_inventory_build_inventory_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the cap, the memo forgets placements; an inventory kept must not outlive its placement's places
    (a KeyError on the next pod change, then free devices of an older snapshot)."""
    from kubefit.decisions import inventory

    monkeypatch.setattr(inventory, "REMEMBERED_PLACEMENTS", 4)
    nodes = [NodeFacts(f"node-{index}", dict(PRODUCTS[0]), {"nvidia.com/gpu": "8"}) for index in range(8)]
    placements = [Placement({}, (), ({"key": f"team-{index}", "operator": "Exists"},)) for index in range(6)]
    memo = InventoryMemo()
    usages = [
        {},
        {f"node-{index}": [PodUsage(f"node-{index}", {"nvidia.com/gpu": 1})] for index in range(4)},
    ]
    usages.append({**usages[1], "node-7": [PodUsage("node-7", {"nvidia.com/gpu": 8})]})
    for placement in placements[:4]:
        memo.inventory(nodes, usages[0], CATALOG, placement=placement)
    for usage, placement in [
        (usages[1], placements[0]),
        (usages[1], placements[4]),
        (usages[2], placements[4]),
    ]:
        expected = build_inventory(nodes, usage, CATALOG, placement=placement)
        got = memo.inventory(nodes, usage, CATALOG, placement=placement)
        assert (got.placeable, got.excluded) == (expected.placeable, expected.excluded)


def excluding(name: str) -> Placement:
    """A placement that admits every node but `name`: one set of admitted nodes per name."""
    term = {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": [name]}]}
    return Placement({}, (term,), ())


def test_the_inventories_of_placements_share_each_node_entry() -> None:
    """A node's entry does not depend on the placement: one object in the inventory of every placement,
    also after a pod changed; a job's own workers get new entries, the shared ones stay as they were."""
    rng = random.Random(11)
    nodes = [random_node(rng, index) for index in range(30)]
    usage = random_usage(rng, nodes)
    memo = InventoryMemo()

    def entries(placement: Placement, for_job: tuple[str, str] | None = None) -> dict[str, NodeInventory]:
        got = memo.inventory(nodes, usage, CATALOG, for_job=for_job, placement=placement)
        return {entry.name: entry for entry in [*got.placeable, *got.excluded]}

    for _ in range(2):
        first, second = entries(PLACEMENTS[1]), entries(PLACEMENTS[2])
        assert first.keys() == second.keys()
        assert all(first[name] is second[name] for name in first)
        usage = {node: list(pods) for node, pods in usage.items()}
        change_some_pods(rng, nodes, usage)
    entries(PLACEMENTS[1], for_job=JOBS[0])
    assert_same(memo, nodes, usage)


def test_placements_admitting_the_same_nodes_share_one_inventory() -> None:
    nodes = [NodeFacts(f"node-{index}", dict(PRODUCTS[0]), {"nvidia.com/gpu": "8"}) for index in range(8)]
    memo = InventoryMemo()
    tolerating = Placement({}, (), ({"key": "team-a", "operator": "Exists", "effect": "NoSchedule"},))
    assert memo.inventory(nodes, {}, CATALOG, placement=tolerating) is memo.inventory(nodes, {}, CATALOG)
    other = memo.inventory(nodes, {}, CATALOG, placement=excluding("node-3"))
    assert other is not memo.inventory(nodes, {}, CATALOG)
    assert [entry.name for entry in other.excluded] == ["node-3"]


def test_many_placements_take_little_more_memory_than_one() -> None:
    """Each placement's inventory points at the shared node entries: at 1,000 nodes, 32 placements (each
    admitting other nodes) took 32 times the memory of one when each had its own copy."""
    rng = random.Random(5)
    nodes = [
        NodeFacts(
            f"node-{index:04d}", dict(PRODUCTS[0]), {"nvidia.com/gpu": "8", "cpu": "96", "memory": "1Ti"}
        )
        for index in range(1000)
    ]
    usage = {
        node.name: [PodUsage(node.name, {"nvidia.com/gpu": 4}, rng.choice(JOBS))]
        for node in nodes
        if rng.random() < 0.5
    }
    InventoryMemo().inventory(nodes, usage, CATALOG)  # fills the caches the memo does not own

    def held_by_memo(placements: int) -> int:
        gc.collect()
        tracemalloc.start()
        try:
            memo = InventoryMemo()
            for index in range(placements):
                memo.inventory(
                    nodes, usage, CATALOG, for_job=JOBS[0], placement=excluding(f"node-{index:04d}")
                )
            gc.collect()
            return tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    one, many = held_by_memo(1), held_by_memo(32)
    assert many < 3 * one, (one, many)


def test_more_sets_of_admitted_nodes_than_the_memo_keeps_still_give_what_build_inventory_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubefit.decisions import inventory

    monkeypatch.setattr(inventory, "REMEMBERED_NODE_SETS", 2)
    monkeypatch.setattr(inventory, "REMEMBERED_PLACEMENTS", 3)
    rng = random.Random(2)
    nodes = [random_node(rng, index) for index in range(12)]
    usage = random_usage(rng, nodes)
    memo = InventoryMemo()
    for step in range(20):
        placement = excluding(rng.choice(nodes).name)
        for job in (None, rng.choice(JOBS)):
            expected = build_inventory(nodes, usage, CATALOG, for_job=job, placement=placement)
            got = memo.inventory(nodes, usage, CATALOG, for_job=job, placement=placement)
            assert (got.placeable, got.excluded) == (expected.placeable, expected.excluded), step
            assert got.pools == pool_inventory(expected.placeable)
        usage = {node: list(pods) for node, pods in usage.items()}
        change_some_pods(rng, nodes, usage)
