"""The pass's index of nodes by free devices (admission._Cluster.rooms) gives exactly the plan of walking
every node, on random clusters, and follows every change of a node's free devices, in the lists of every
node of an accelerator and in those of the nodes a placement admits."""

from __future__ import annotations

import random

import pytest
from test_admission_settled import NOW, random_cluster

from kubefit.decisions import admission
from kubefit.decisions.admission import NodeCapacity, plan_admissions


@pytest.mark.parametrize("policy", ["BestEffortFIFO", "StrictFIFO"])
def test_the_room_index_gives_the_plan_of_walking_every_node(
    policy: admission.AdmissionPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(20261202)
    cases = [random_cluster(rng) for _ in range(1500)]
    indexed = [
        plan_admissions(queued, admitted, nodes, policy, NOW, 600.0) for queued, admitted, nodes in cases
    ]
    used: list[bool] = []
    used_on_part = []  # an indexed list that is not every node of its accelerator (a placement's eligible ones)
    rooms_of = admission._Cluster.rooms_of

    def counted(self: admission._Cluster, nodes: list[str], per_worker: int) -> object:
        found = rooms_of(self, nodes, per_worker)
        used.append(found is not None)
        whole = any(nodes is listed for listed in self.nodes_of.values())
        used_on_part.append(found is not None and not whole)
        return found

    monkeypatch.setattr(admission._Cluster, "rooms_of", counted)
    for (queued, admitted, nodes), plan in zip(cases[:50], indexed[:50], strict=True):
        assert plan_admissions(queued, admitted, nodes, policy, NOW, 600.0) == plan
    # Both ways are taken in these clusters: indexed lists (whole and eligible ones) and walked ones (the
    # nodes a queued job may use past the jobs that keep nodes from it).
    assert any(used) and not all(used) and any(used_on_part)
    monkeypatch.setattr(admission._Cluster, "rooms_of", lambda self, nodes, per_worker: None)
    walked = [
        plan_admissions(queued, admitted, nodes, policy, NOW, 600.0) for queued, admitted, nodes in cases
    ]
    assert walked == indexed
    assert sum(1 for plan in indexed if plan.reserved) > 500  # most passes place somebody


def test_the_rooms_follow_every_change_of_free_devices() -> None:
    rng = random.Random(7)
    nodes = [
        NodeCapacity(f"n{index:03d}", rng.choice(("a", "b")), 8, rng.choice((0, 1, 4, 8)))
        for index in range(60)
    ]
    cluster = admission._cluster(nodes, {})
    # Lists of some of an accelerator's nodes, as a placement that admits only those makes (nodes_for).
    eligible = [[name for name in names if rng.random() < 0.5] for names in cluster.nodes_of.values()]
    for names in eligible:
        cluster.index(names)
    for _ in range(2000):
        node = rng.choice(sorted(cluster.free))
        cluster.add_free(node, rng.randint(-3, 3))
    rebuilt = admission._Cluster(
        dict(cluster.free), cluster.allocatable, cluster.accelerator_of, cluster.nodes_of
    )
    rebuilt.index_rooms()
    for names in eligible:
        rebuilt.index(names)
    assert cluster.rooms == rebuilt.rooms
    for names in [*cluster.nodes_of.values(), *eligible]:
        for per_worker in (1, 2, 3, 8):
            walk = admission._rooms_by_walk(cluster.free, names, per_worker)
            assert cluster.rooms_of(names, per_worker) == walk
            assert cluster.slots(names, per_worker) == admission._slots(cluster.free, names, per_worker)
            assert cluster.rooms_of(list(names), per_worker) is None  # a copy is not known to be whole


def test_skipping_make_room_below_the_lowest_priority_gives_the_plan_of_looking_at_every_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(20261203)
    cases = [random_cluster(rng) for _ in range(1500)]
    assert len({demand.priority for queued, _, _ in cases for demand in queued}) > 1
    shortcut = [
        plan_admissions(queued, admitted, nodes, "BestEffortFIFO", NOW, 600.0)
        for queued, admitted, nodes in cases
    ]
    jobs = admission._jobs

    def without_shortcut(*args: object) -> list[admission._Job]:
        found = jobs(*args)  # type: ignore[arg-type]
        cluster = args[2]
        assert isinstance(cluster, admission._Cluster)
        cluster.lowest_priority = dict.fromkeys(cluster.lowest_priority, -(2**62))
        return found

    monkeypatch.setattr(admission, "_jobs", without_shortcut)
    looked = [
        plan_admissions(queued, admitted, nodes, "BestEffortFIFO", NOW, 600.0)
        for queued, admitted, nodes in cases
    ]
    assert looked == shortcut
    assert sum(1 for plan in shortcut if plan.shrink or plan.preempt) > 50  # room was made in many of them
