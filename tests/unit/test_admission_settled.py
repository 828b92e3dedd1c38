"""The pass's shortcut for settled jobs (plan_admissions plans the others first, with the settled jobs'
devices held, and everyone only when that leaves a job waiting or takes workers from one) gives exactly the
plan of the pass over everyone (admission._plan), on random clusters where the shortcut is taken and where
it is not."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from kubefit.decisions import admission
from kubefit.decisions.admission import Demand, Holding, NodeCapacity, plan_admissions

ACCELERATORS = ("nvidia-h100-80gb", "nvidia-a100-80gb")
NOW = 50_000.0


def random_cluster(rng: random.Random) -> tuple[list[Demand], list[Holding], list[NodeCapacity]]:
    nodes = [
        NodeCapacity(f"n{index:02d}", rng.choice(ACCELERATORS), 8, rng.choice((0, 0, 0, 2, 8)))
        for index in range(rng.randint(2, 12))
    ]
    free = {node.name: node.allocatable - node.used_by_others for node in nodes}
    admitted, queued = [], []
    for index in range(rng.randint(0, 14)):
        accelerator = rng.choice(ACCELERATORS)
        per_worker = rng.choice((1, 2, 4, 8))
        minimum = rng.randint(1, 3)
        elastic = rng.random() < 0.5
        want = rng.randint(minimum, minimum + 2) if elastic else minimum
        preemption = rng.choice(("Never", "LowerPriority"))
        names = [node.name for node in nodes if node.accelerator == accelerator]
        eligible = frozenset(rng.sample(names, len(names) // 2)) if names and rng.random() < 0.2 else None
        demand = Demand(
            ("ml", f"job-{index}"), rng.randint(0, 2), NOW - rng.randint(1, 900), accelerator, per_worker,
            minimum, want, elastic, preemption, eligible,
        )  # fmt: skip
        if rng.random() < 0.4:
            queued.append(demand)
            continue
        # Admitted: granted its target (most) or not, its workers bound where there is room (or fewer).
        granted = max(minimum, want) if rng.random() < 0.7 else rng.randint(minimum, max(minimum, want) + 1)
        placed: dict[str, int] = {}
        for _ in range(granted if rng.random() < 0.8 else rng.randint(0, granted)):
            roomy = [name for name in (eligible or names) if free[name] >= per_worker]
            if not roomy:
                break
            node = rng.choice(roomy)
            free[node] -= per_worker
            placed[node] = placed.get(node, 0) + 1
        admitted.append(Holding(demand, granted, placed))
    return queued, admitted, nodes


@pytest.mark.parametrize("policy", ["BestEffortFIFO", "StrictFIFO"])
def test_the_shortcut_gives_the_plan_of_the_pass_over_everyone(
    policy: admission.AdmissionPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_pass = admission._plan
    calls: list[bool] = []  # per call of the pass: whether it left settled jobs out

    def counting(*args: Any) -> admission.AdmissionPlan:
        calls.append(len(args) > 6 and bool(args[6]))
        return full_pass(*args)

    monkeypatch.setattr(admission, "_plan", counting)
    rng = random.Random(20261201)
    ways: Counter[str] = Counter()
    for _ in range(1500):
        queued, admitted, nodes = random_cluster(rng)
        calls.clear()
        planned = plan_admissions(queued, admitted, nodes, policy, NOW, 600.0)
        ways["shortcut" if calls == [True] else "tried, then all" if calls[0] else "all"] += 1
        assert planned == full_pass(queued, admitted, nodes, policy, NOW, 600.0)
    # Each way is exercised many times: the shortcut, the shortcut tried and given up, every job at once.
    assert min(ways["shortcut"], ways["tried, then all"], ways["all"]) > 50, ways


def test_a_settled_job_keeps_its_grant_and_place_when_a_new_job_fits_beside_it() -> None:
    nodes = [NodeCapacity("a", ACCELERATORS[0], 8, 0), NodeCapacity("b", ACCELERATORS[0], 8, 0)]
    running = Demand(("ml", "running"), 0, NOW - 60, ACCELERATORS[0], 8, 1, 1, False, "Never")
    new = Demand(("ml", "new"), 0, NOW - 1, ACCELERATORS[0], 8, 1, 1, False, "Never")
    plan = plan_admissions([new], [Holding(running, 1, {"a": 1})], nodes, "BestEffortFIFO", NOW, 600.0)
    assert plan.grants == {("ml", "running"): 1, ("ml", "new"): 1}
    assert plan.placement == {("ml", "running"): {"a": 1}, ("ml", "new"): {"b": 1}}
    assert plan.admitted_now == frozenset({("ml", "new")}) and not plan.waiting
