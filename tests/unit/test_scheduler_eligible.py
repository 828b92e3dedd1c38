"""The eligible nodes of each placement (controller/scheduler.py EligibleSets) when nodes change: only the
changed nodes are checked again, and the sets are always those a check of every node gives."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest
from test_scheduler import CATALOG, FakeCluster, demand, node, sync_scheduler

import kubefit.decisions.node_sets as node_sets
from kubefit.controller.cluster import remembering
from kubefit.controller.scheduler import Scheduler, SchedulerSettings
from kubefit.decisions.inventory import NodeFacts
from kubefit.decisions.node_match import ANYWHERE, Placement, Taint
from kubefit.decisions.node_sets import eligible_nodes
from kubefit.metrics import OperatorMetrics

IDENTIFYING = remembering(CATALOG)  # as the operator's: the catalog's own identify is slow


def tolerating(team: str) -> Placement:
    return Placement({}, (), ({"key": team, "operator": "Exists", "effect": "NoSchedule"},))


def counting_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of nodes each call of eligible_nodes checks."""
    checked: list[int] = []
    real = node_sets.eligible_nodes

    def counted(placement: Placement, nodes: Iterable[NodeFacts], catalog: Any) -> frozenset[str]:
        listed = list(nodes)
        checked.append(len(listed))
        return real(placement, listed, catalog)

    monkeypatch.setattr(node_sets, "eligible_nodes", counted)
    return checked


def test_one_node_changed_is_checked_once_per_placement_not_every_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = FakeCluster(nodes=[node(f"n{index:02d}") for index in range(40)])
    scheduler, _ = sync_scheduler()
    placements = [tolerating(f"team-{index}") for index in range(10)]
    for index, placement in enumerate(placements):
        scheduler.offer(
            ("ns", f"j{index}"), demand(f"j{index}", min_workers=1, want=1), placement, cluster.view()
        )
    checked = counting_checks(monkeypatch)

    cluster.nodes[17] = replace(cluster.nodes[17], schedulable=False)  # cordoned
    scheduler.run_pass(cluster.view())
    assert checked == [1] * 10  # was 10 x 40
    names = {entry.eligible[2] for entry in scheduler._entries.values() if entry.eligible}
    assert names == {frozenset(f"n{index:02d}" for index in range(40) if index != 17)}

    checked.clear()  # most nodes new (a relist): every node is checked again
    cluster.nodes = [node(f"n{index:02d}", labels={"zone": "b"}) for index in range(40)]
    scheduler.run_pass(cluster.view())
    assert checked == [40] * 10


def changed_at_random(nodes: list[NodeFacts], rng: random.Random, serial: int) -> None:
    """One change kopf's index could make: a node added, removed, relabelled, tainted, cordoned."""
    change = rng.choice(["add", "remove", "relabel", "taint", "untaint", "cordon", "uncordon", "cpu"])
    if change == "add" or not nodes:
        nodes.append(node(f"new-{serial}", labels={"pool": rng.choice("ab")}))
        return
    index = rng.randrange(len(nodes))
    facts = nodes[index]
    if change == "remove":
        nodes.pop(index)
    elif change == "relabel":
        nodes[index] = replace(facts, labels={**facts.labels, "pool": rng.choice("abc")})
    elif change == "taint":
        nodes[index] = replace(facts, taints=(Taint(rng.choice(["team-0", "team-1"]), "x", "NoSchedule"),))
    elif change == "untaint":
        nodes[index] = replace(facts, taints=())
    elif change in ("cordon", "uncordon"):
        nodes[index] = replace(facts, schedulable=change == "uncordon")
    else:  # no accelerator label: no worker's node
        nodes[index] = NodeFacts(facts.name, {"pool": "a"}, {"cpu": "96"})


def assert_as_if_every_node_were_checked(scheduler: Scheduler, nodes: list[NodeFacts]) -> None:
    demands = scheduler._demands(scheduler._entries, nodes)
    every = frozenset(facts.name for facts in nodes if IDENTIFYING.identify(facts.labels) is not None)
    fresh_sets: dict[str, frozenset[str]] = {}
    sets: list[frozenset[str]] = []
    for key, entry in scheduler._entries.items():
        placement = repr(entry.placement)
        if placement not in fresh_sets:
            fresh_sets[placement] = eligible_nodes(entry.placement, nodes, IDENTIFYING)
        fresh = fresh_sets[placement]
        assert entry.eligible is not None and entry.eligible[2] == fresh
        assert demands[key].eligible_nodes == (None if fresh == every else fresh)
        sets.append(entry.eligible[2])
    assert len({id(names) for names in sets}) == len(set(sets))  # equal sets: one object


def test_after_random_node_changes_the_eligible_sets_are_those_of_checking_every_node() -> None:
    rng = random.Random(28)
    nodes = [node(f"n{index}", labels={"pool": "ab"[index % 2]}) for index in range(24)]
    scheduler = Scheduler(IDENTIFYING, OperatorMetrics(), SchedulerSettings(debounce=None))
    pool_a, pool_b = Placement({"pool": "a"}, (), ()), Placement({"pool": "b"}, (), ())
    placements = [ANYWHERE, pool_a, pool_b, tolerating("team-0"), tolerating("team-1")]
    placements.append(Placement({"pool": "a"}, (), tolerating("team-0").tolerations))
    view = FakeCluster(nodes=nodes).view()
    for index, placement in enumerate(placements * 2):
        scheduler.offer(("ns", f"j{index}"), demand(f"j{index}", min_workers=1, want=1), placement, view)
    for step in range(300):
        for serial in range(rng.choice([1, 1, 2, 3])):
            changed_at_random(nodes, rng, step * 10 + serial)
        if step % 50 == 49:  # most nodes new at once
            nodes[:] = [replace(facts, labels={**facts.labels, "step": str(step)}) for facts in nodes]
        rng.shuffle(nodes)
        assert_as_if_every_node_were_checked(scheduler, nodes)
        assert_as_if_every_node_were_checked(scheduler, nodes)  # unchanged: the same answer


def test_two_facts_of_one_name_are_checked_in_full() -> None:
    """kopf's index keys nodes by name; were one name there twice, a set updated by name could not be right."""
    sets = node_sets.EligibleSets(CATALOG)
    nodes = [node("n1"), node("n2")]
    sets.advance(1, nodes)
    assert sets.of(ANYWHERE, nodes) == {"n1", "n2"}
    twice = [node("n1"), node("n2"), replace(nodes[1], schedulable=False)]
    sets.advance(2, twice)
    assert sets.of(ANYWHERE, twice) == eligible_nodes(ANYWHERE, twice, CATALOG) == {"n1", "n2"}
    moved = [node("n1"), replace(nodes[1], schedulable=False)]
    sets.advance(3, moved)
    assert sets.of(ANYWHERE, moved) == {"n1"}


def test_a_set_of_every_node_kept_when_a_node_it_cannot_use_joins_is_no_longer_every_node() -> None:
    """A demand whose set is every node's carries None: the same names are not every node's any more."""
    nodes = [node("n1", labels={"pool": "a"}), node("n2", labels={"pool": "a"})]
    scheduler = Scheduler(IDENTIFYING, OperatorMetrics(), SchedulerSettings(debounce=None))
    scheduler.offer(
        ("ns", "a"), demand("a"), Placement({"pool": "a"}, (), ()), FakeCluster(nodes=nodes).view()
    )
    assert scheduler._demands(scheduler._entries, nodes)[("ns", "a")].eligible_nodes is None
    nodes.append(node("n3", labels={"pool": "b"}))
    assert scheduler._demands(scheduler._entries, nodes)[("ns", "a")].eligible_nodes == {"n1", "n2"}
