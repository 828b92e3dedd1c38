"""What one admission pass costs as the queue grows, counted (no timing): a queue of heads of line (jobs that
waited past the head-of-line timeout) costs about linearly in its length, and a job that would not fit with
every job gone runs no trial of shrinking and preempting. Both keep the plan as it was."""

from __future__ import annotations

import random
from typing import Any

import pytest
from test_admission_settled import NOW, random_cluster

from kubefit.decisions import admission
from kubefit.decisions.admission import (
    INSUFFICIENT_CAPACITY,
    PREEMPTED,
    QUEUED,
    Demand,
    Holding,
    NodeCapacity,
    plan_admissions,
)

HEAD_WAIT_LIMIT = 300.0


class _CountedDemand(Demand):
    """A demand that counts how often the pass reads its devices per worker: once per job that looks at it."""

    reads = 0

    def __getattribute__(self, name: str) -> Any:
        if name == "per_worker":
            _CountedDemand.reads += 1
        return super().__getattribute__(name)


class _CountedAllocatable(dict[str, int]):
    """The cluster's allocatable devices, counting every node looked up."""

    lookups = 0

    def get(self, key: str, default: Any = None) -> Any:
        _CountedAllocatable.lookups += 1
        return super().get(key, default)

    def __getitem__(self, key: str) -> int:
        _CountedAllocatable.lookups += 1
        return super().__getitem__(key)


def _old_queue_pass(queued_count: int) -> tuple[admission.AdmissionPlan, int, int]:
    """A full cluster of 300 nodes and `queued_count` jobs that waited an hour: every one is a head of line.
    Returns the plan, the nodes looked up and the reads of the queued jobs' devices per worker."""
    nodes = [NodeCapacity(f"n{index:03d}", "a", 8, 8) for index in range(300)]
    queued = [
        _CountedDemand(("ml", f"q{index:03d}"), 0, NOW - 3600 + index, "a", 8, 1, 1, False, "LowerPriority")
        for index in range(queued_count)
    ]
    _CountedDemand.reads = _CountedAllocatable.lookups = 0
    plan = plan_admissions(queued, [], nodes, "BestEffortFIFO", NOW, HEAD_WAIT_LIMIT)
    return plan, _CountedAllocatable.lookups, _CountedDemand.reads


def test_a_queue_of_heads_of_line_costs_linearly_in_its_length(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster_of = admission._cluster

    def counted_cluster(*args: Any) -> admission._Cluster:
        cluster = cluster_of(*args)
        cluster.allocatable = _CountedAllocatable(cluster.allocatable)
        return cluster

    monkeypatch.setattr(admission, "_cluster", counted_cluster)
    plan, lookups, reads = _old_queue_pass(40)
    _, lookups_twice, reads_twice = _old_queue_pass(80)
    # Each head's nodes are looked up once per pass, not once per job behind it; and the first head ahead
    # keeps every node, so no job looks at the heads behind that one (quadratic: 4 times the count).
    assert lookups_twice < 3 * lookups, (lookups, lookups_twice)
    assert reads_twice < 3 * reads, (reads, reads_twice)
    # The plan: the first waits for room, every one behind it for it.
    assert plan.grants == {("ml", f"q{index:03d}"): 0 for index in range(40)}
    assert plan.waiting[("ml", "q000")].startswith(f"{INSUFFICIENT_CAPACITY}: needs 1 node with 8 free a")
    behind = f"{QUEUED}: waiting behind ml/q000, which has waited 3600s (head of line)"
    assert all(plan.waiting[("ml", f"q{index:03d}")] == behind for index in range(1, 40))


def _fragmented() -> tuple[list[Demand], list[Holding], list[NodeCapacity]]:
    """Six nodes, each with 4 of its 8 devices held by other pods and 4 by a low-priority job. Queued at a
    higher priority: a job of 8 devices a worker, which no preemption can place, and one of 4 devices a
    worker for two workers, which preempting two of them places."""
    nodes = [NodeCapacity(f"n{index}", "a", 8, 4) for index in range(6)]
    admitted = [
        Holding(
            Demand(("ml", f"low{index}"), 0, NOW - 1000 + index, "a", 4, 1, 1, False, "Never"),
            1,
            {f"n{index}": 1},
            (f"n{index}",),
        )
        for index in range(6)
    ]
    queued = [
        Demand(("ml", "whole-node"), 5, NOW - 60, "a", 8, 1, 1, False, "LowerPriority"),
        Demand(("ml", "half-nodes"), 5, NOW - 30, "a", 4, 2, 2, False, "LowerPriority"),
    ]
    return queued, admitted, nodes


def test_no_trial_for_a_job_that_would_not_fit_with_every_job_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[tuple[str, str]] = []
    shrink_lower = admission._shrink_lower

    def counted(trial: admission._Trial, lower: Any) -> None:
        tried.append(trial.job.key)
        shrink_lower(trial, lower)

    monkeypatch.setattr(admission, "_shrink_lower", counted)
    plan = plan_admissions(*_fragmented(), "BestEffortFIFO", NOW, HEAD_WAIT_LIMIT)
    assert tried == [("ml", "half-nodes")]  # the whole-node job's trial could never succeed
    assert plan.waiting[("ml", "whole-node")].startswith(f"{INSUFFICIENT_CAPACITY}: ")
    assert plan.admitted_now == {("ml", "half-nodes")}
    assert plan.preempt == {("ml", "low5"), ("ml", "low4")}  # the youngest first
    assert plan.reasons[("ml", "low5")] == f"{PREEMPTED}: to make room for ml/half-nodes"
    # The plan of trying every job.
    monkeypatch.setattr(admission._Cluster, "slots_without_jobs", lambda self, nodes, per_worker: 2**62)
    assert plan_admissions(*_fragmented(), "BestEffortFIFO", NOW, HEAD_WAIT_LIMIT) == plan


def _lower_per_call(cluster: admission._Cluster, jobs: Any, job: admission._Job) -> list[admission._Job]:
    """_lower as it was: every job looked at and sorted for each queued job."""
    found = [
        other
        for other in jobs
        if other.holds
        and other.demand.accelerator == job.demand.accelerator
        and other.demand.priority < job.demand.priority
    ]
    return sorted(found, key=lambda other: (other.demand.priority, -other.demand.created, other.key))


def test_the_guard_and_the_ranking_once_per_pass_give_the_plan_of_trying_every_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(20261204)
    cases = [random_cluster(rng) for _ in range(800)]
    guarded = [
        plan_admissions(queued, admitted, nodes, "BestEffortFIFO", NOW, 600.0)
        for queued, admitted, nodes in cases
    ]
    skipped = []
    slots_without_jobs = admission._Cluster.slots_without_jobs

    def unguarded(self: admission._Cluster, nodes: list[str], per_worker: int) -> int:
        skipped.append(slots_without_jobs(self, nodes, per_worker))
        return 2**62

    monkeypatch.setattr(admission._Cluster, "slots_without_jobs", unguarded)
    monkeypatch.setattr(admission, "_lower", _lower_per_call)
    tried = [
        plan_admissions(queued, admitted, nodes, "BestEffortFIFO", NOW, 600.0)
        for queued, admitted, nodes in cases
    ]
    assert tried == guarded
    assert sum(1 for plan in guarded if plan.shrink or plan.preempt) > 30  # room was made in many of them
    assert 0 in skipped  # and the guard would have skipped some trials
