"""The cluster-wide admission pass (kubefit.decisions.admission.plan_admissions): each rule on a small
cluster, and a hypothesis property over random clusters (no node over-committed, minimums kept)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubefit.api.resource import JobKey
from kubefit.decisions.admission import (
    AdmissionPlan,
    AdmissionPolicy,
    Demand,
    Holding,
    NodeCapacity,
    Preemption,
    plan_admissions,
)

H100 = "nvidia-h100-80gb"
L4 = "nvidia-l4"
NOW = 10_000.0


def key(name: str) -> JobKey:
    return ("ml", name)


def job(
    name: str,
    *,
    per_worker: int = 4,
    min_workers: int = 1,
    want: int | None = None,
    elastic: bool = True,
    priority: int = 0,
    created: float = NOW - 10,
    preemption: Preemption = "Never",
    accelerator: str = H100,
    eligible: frozenset[str] | None = None,
    step: int = 1,
) -> Demand:
    return Demand(
        key=key(name),
        priority=priority,
        created=created,
        accelerator=accelerator,
        per_worker=per_worker,
        min_workers=min_workers,
        want_workers=min_workers if want is None else want,
        elastic=elastic,
        preemption=preemption,
        eligible_nodes=eligible,
        worker_step=step,
    )


def gang(name: str, workers: int, **kwargs: object) -> Demand:
    """A non-elastic job: all-or-nothing at `workers`."""
    return job(name, min_workers=workers, want=workers, elastic=False, **kwargs)  # type: ignore[arg-type]


def holding(demand: Demand, granted: int, placed: dict[str, int] | None = None) -> Holding:
    return Holding(demand, granted, placed or {})


def nodes(count: int, devices: int = 8, accelerator: str = H100, prefix: str = "node") -> list[NodeCapacity]:
    return [NodeCapacity(f"{prefix}-{index}", accelerator, devices, 0) for index in range(count)]


def plan(
    queued: Sequence[Demand] = (),
    admitted: Sequence[Holding] = (),
    cluster: Sequence[NodeCapacity] = (),
    policy: AdmissionPolicy = "BestEffortFIFO",
    limit: float = 300.0,
) -> AdmissionPlan:
    return plan_admissions(queued, admitted, cluster, policy, NOW, limit)


def admitted_keys(result: AdmissionPlan) -> set[str]:
    return {name for (_, name), grant in result.grants.items() if grant > 0}


# -- per-node packing --------------------------------------------------------------------------------------


def test_unbound_workers_are_reserved_again_where_the_last_pass_put_them_while_there_is_room() -> None:
    # node-0 has 4 free, node-1 8: best fit puts a 4-GPU worker on node-0, but the last pass reserved node-1
    # (its worker, created since, prefers node-1), so it is reserved there again.
    cluster = [NodeCapacity("node-0", H100, 8, 4), NodeCapacity("node-1", H100, 8, 0)]
    fresh = plan(admitted=[holding(gang("small", 1), 1)], cluster=cluster)
    assert fresh.reserved[key("small")] == {"node-0": 1}
    before = Holding(gang("small", 1), 1, {}, reserved={"node-1": 1})
    again = plan(admitted=[before], cluster=cluster)
    assert again.reserved[key("small")] == again.placement[key("small")] == {"node-1": 1}
    # Where it no longer has room (another workload took node-1), best fit decides again.
    taken = [cluster[0], NodeCapacity("node-1", H100, 8, 8)]
    assert plan(admitted=[before], cluster=taken).reserved[key("small")] == {"node-0": 1}
    # A newly queued job is then counted on what is left: the whole node-0 is not promised twice.
    both = plan([gang("next", 1, per_worker=8, created=NOW)], [before], cluster)
    assert both.grants[key("next")] == 0 and both.reserved[key("small")] == {"node-1": 1}


def test_workers_of_four_pack_two_per_eight_gpu_node() -> None:
    four = plan([gang("four", 4)], cluster=nodes(2))
    assert four.grants[key("four")] == 4
    assert four.placement[key("four")] == {"node-0": 2, "node-1": 2}
    assert four.admitted_now == {key("four")}
    five = plan([gang("five", 5)], cluster=nodes(2))
    assert five.grants[key("five")] == 0 and not five.admitted_now
    assert five.waiting[key("five")] == (
        "InsufficientCapacity: needs room for 5 workers of 4 nvidia-h100-80gb, each on one node; only 4 fit now "
        "(2 nodes with 4 free); its nodes hold 4 of its 5 workers even with nothing else running: it waits for "
        "more nodes it may use (added, uncordoned or Ready again)"
    )


def test_devices_spread_over_nodes_do_not_make_a_worker() -> None:
    # 3 nodes x 6 free = 18 devices >= 4 x 4, but each node hosts one worker of 4
    result = plan([gang("job", 4)], cluster=nodes(3, devices=6))
    assert result.grants[key("job")] == 0
    assert plan([gang("job", 3)], cluster=nodes(3, devices=6)).grants[key("job")] == 3


def test_the_message_counts_nodes_that_could_host_a_worker() -> None:
    cluster = [NodeCapacity("a", H100, 8, 0), NodeCapacity("b", H100, 8, 4), NodeCapacity("c", None, 0, 0)]
    result = plan([gang("big", 2, per_worker=8)], cluster=cluster)
    assert (
        result.waiting[key("big")]
        == "InsufficientCapacity: needs 2 nodes with 8 free nvidia-h100-80gb; 1 has"
    )
    missing = plan([gang("l4", 1, per_worker=8, accelerator=L4)], cluster=cluster)
    assert (
        missing.waiting[key("l4")]
        == "InsufficientCapacity: needs 1 node with 8 free nvidia-l4; no node has nvidia-l4"
    )
    too_wide = plan([gang("wide", 1, per_worker=16)], cluster=cluster)
    assert (
        too_wide.waiting[key("wide")]
        == "InsufficientCapacity: needs 1 node with 16 free nvidia-h100-80gb; the largest node has 8"
    )


def test_other_workloads_usage_counts() -> None:
    cluster = [NodeCapacity("a", H100, 8, 5), NodeCapacity("b", H100, 8, 4)]
    result = plan([gang("job", 2, per_worker=4)], cluster=cluster)
    assert result.grants[key("job")] == 0
    assert plan([gang("job", 1, per_worker=4)], cluster=cluster).placement[key("job")] == {"b": 1}


def test_eligible_nodes_are_the_only_ones_used() -> None:
    cluster = nodes(2)
    held = holding(gang("other", 1, per_worker=8), 1, {"node-1": 1})
    only_full = plan([gang("job", 1, per_worker=8, eligible=frozenset({"node-1"}))], [held], cluster)
    assert only_full.grants[key("job")] == 0
    assert (
        only_full.waiting[key("job")]
        == "InsufficientCapacity: needs 1 eligible node with 8 free nvidia-h100-80gb; 0 have"
    )
    only_free = plan([gang("job", 1, per_worker=8, eligible=frozenset({"node-0"}))], [held], cluster)
    assert only_free.placement[key("job")] == {"node-0": 1}


# -- reservations: no double counting -------------------------------------------------------------------------


def test_granted_but_unbound_workers_hold_their_devices() -> None:
    early = holding(gang("early", 2, per_worker=8), granted=2)  # admitted, no pod bound yet
    result = plan([gang("late", 1, per_worker=8)], [early], nodes(2))
    assert result.grants == {key("early"): 2, key("late"): 0}
    assert result.placement[key("early")] == {"node-0": 1, "node-1": 1}
    assert (
        result.waiting[key("late")]
        == "InsufficientCapacity: needs 1 node with 8 free nvidia-h100-80gb; 0 have"
    )


def test_twenty_jobs_onto_room_for_ten_admit_exactly_ten_across_passes() -> None:
    jobs = [gang(f"job-{index:02}", 1, per_worker=8, created=float(index)) for index in range(20)]
    cluster = nodes(10)
    first = plan(jobs, cluster=cluster)
    assert admitted_keys(first) == {f"job-{index:02}" for index in range(10)}
    # the next pass sees the ten as admitted, none bound yet: nobody else gets in
    held = [holding(demand, first.grants[demand.key]) for demand in jobs[:10]]
    second = plan(jobs[10:], held, cluster)
    assert sum(second.grants.values()) == 10 and not second.admitted_now
    # three finish: exactly three more start, the oldest waiting ones
    third = plan(jobs[10:], held[3:], cluster)
    assert third.admitted_now == {key(f"job-{index}") for index in (10, 11, 12)}


def test_bound_workers_count_where_they_are() -> None:
    early = holding(gang("early", 2, per_worker=4), 2, {"node-0": 2})
    result = plan([gang("late", 2, per_worker=4)], [early], nodes(2))
    assert result.placement[key("late")] == {"node-1": 2}


# -- queue order and head-of-line policies --------------------------------------------------------------------


def test_queue_order_is_priority_then_age_then_name() -> None:
    contenders = [
        gang("old-low", 1, per_worker=8, priority=0, created=1.0),
        gang("young-high", 1, per_worker=8, priority=5, created=50.0),
        gang("old-high", 1, per_worker=8, priority=5, created=20.0),
    ]
    assert admitted_keys(plan(contenders, cluster=nodes(1))) == {"old-high"}
    assert admitted_keys(plan(contenders, cluster=nodes(2))) == {"old-high", "young-high"}
    twins = [gang(name, 1, per_worker=8, created=1.0) for name in ("b", "a")]
    assert admitted_keys(plan(twins, cluster=nodes(1))) == {"a"}


def head_and_small(waited: float) -> list[Demand]:
    return [
        gang("big", 2, per_worker=8, created=NOW - waited),
        gang("small", 1, per_worker=4, created=NOW - 1),
        gang("other-kind", 1, per_worker=4, accelerator=L4, created=NOW - 1),
    ]


def test_strict_fifo_head_blocks_everyone_behind_it() -> None:
    cluster = [*nodes(1), *nodes(1, accelerator=L4, prefix="l4")]
    result = plan(head_and_small(10), cluster=cluster, policy="StrictFIFO")
    assert admitted_keys(result) == set()
    assert result.waiting[key("small")] == "Queued: behind ml/big in the queue (StrictFIFO)"
    assert result.waiting[key("other-kind")] == "Queued: behind ml/big in the queue (StrictFIFO)"


def test_best_effort_lets_small_jobs_pass_until_the_head_waited_too_long() -> None:
    cluster = [*nodes(2), *nodes(1, accelerator=L4, prefix="l4")]
    held = [holding(gang("held", 1, per_worker=8), 1, {"node-1": 1})]  # the head fits once it finishes
    fresh = plan(head_and_small(10), held, cluster, limit=300)
    assert admitted_keys(fresh) == {"held", "small", "other-kind"}
    starved = plan(head_and_small(400), held, cluster, limit=300)
    assert admitted_keys(starved) == {"held", "other-kind"}  # another accelerator is not the head's
    assert (
        starved.waiting[key("small")] == "Queued: waiting behind ml/big, which has waited 400s (head of line)"
    )


def test_a_head_bigger_than_the_whole_cluster_never_holds_others_back() -> None:
    cluster = [*nodes(1), *nodes(1, prefix="spare")]
    huge = gang("huge", 3, per_worker=8, created=NOW - 400)  # 3 whole nodes; the cluster has 2
    held = holding(gang("held", 1, per_worker=8), 1, {"node-0": 1})
    result = plan([huge, gang("small", 1, per_worker=4)], [held], cluster, limit=300)
    assert admitted_keys(result) == {"held", "small"}
    strict = plan([huge, gang("small", 1, per_worker=4)], [held], cluster, policy="StrictFIFO")
    assert admitted_keys(strict) == {"held"}  # StrictFIFO means strict
    # Its message says it waits for nodes, not for others to finish (it read like any wait: an audit).
    assert result.waiting[key("huge")] == (
        "InsufficientCapacity: needs 3 nodes with 8 free nvidia-h100-80gb; 1 has; its nodes hold 2 of its "
        "3 workers even with nothing else running: it waits for more nodes it may use (added, uncordoned or "
        "Ready again)"
    )


def test_a_starved_head_stops_elastic_growth_behind_it() -> None:
    grower = holding(job("grower", per_worker=4, want=4, created=NOW - 5), 1, {"node-0": 1})
    head = gang("big", 2, per_worker=8, created=NOW - 400)
    assert plan([head], [grower], nodes(2), limit=300).grants[key("grower")] == 1
    assert plan([head], [grower], nodes(2), limit=600).grants[key("grower")] == 4


def test_a_starved_head_stops_the_growth_of_an_older_job_of_its_priority_too() -> None:
    """The older job is ahead of the head in the queue, but growth is new capacity: were it to take every
    node that frees up, the head, which cannot shrink a job of its own priority, would wait for its end."""
    head = gang("big", 2, per_worker=8, created=NOW - 400)
    others_running = {"node-1": 8, "node-2": 8, "node-3": 8}  # freed one node per pass
    grower_nodes = {"node-0": 1}
    grants = []
    for freed in ("node-1", "node-2", "node-3"):
        cluster = [NodeCapacity(f"node-{i}", H100, 8, others_running.get(f"node-{i}", 0)) for i in range(4)]
        grower = holding(job("older", per_worker=8, want=4, created=NOW - 1000), 1, grower_nodes)
        result = plan([head], [grower], cluster, limit=300)
        grants.append((result.grants[key("older")], result.grants.get(key("big"), 0)))
        grower_nodes = dict(result.placement[key("older")])
        del others_running[freed]
    assert grants == [(1, 0), (1, 0), (1, 2)]  # the freed node waits for the head, which then starts whole
    # A head of lower priority does not hold back the growth of a job above it.
    low_head = gang("big", 2, per_worker=8, created=NOW - 400, priority=-1)
    grower = holding(job("older", per_worker=8, want=4, created=NOW - 1000), 1, {"node-0": 1})
    assert plan([low_head], [grower], nodes(2), limit=300).grants[key("older")] == 2


def pools_with_a_starved_head() -> tuple[list[NodeCapacity], Holding, Demand]:
    """Two H100 pools: `pool-*` (the head's) and `own-0` (tainted; only some jobs tolerate it). The head
    needs both pool nodes whole, one is held, and it has waited past the limit."""
    cluster = [*nodes(2, prefix="pool"), *nodes(1, prefix="own")]
    held = holding(gang("held", 1, per_worker=8), 1, {"pool-1": 1})
    head = gang("big", 2, per_worker=8, created=NOW - 400, eligible=frozenset({"pool-0", "pool-1"}))
    return cluster, held, head


def test_a_starved_head_keeps_only_the_nodes_it_may_use() -> None:
    cluster, held, head = pools_with_a_starved_head()
    on_pool = gang("on-pool", 1, eligible=frozenset({"pool-0"}))
    on_own = gang("on-own", 1, eligible=frozenset({"own-0"}))
    anywhere = gang("anywhere", 1)  # may use every H100 node: goes where the head cannot
    result = plan([head, on_pool, on_own, anywhere], [held], cluster, limit=300)
    assert admitted_keys(result) == {"held", "on-own", "anywhere"}
    assert (
        result.waiting[key("on-pool")]
        == "Queued: waiting behind ml/big, which has waited 400s (head of line)"
    )
    assert result.placement[key("on-own")] == result.placement[key("anywhere")] == {"own-0": 1}


def test_a_job_that_fits_only_on_the_heads_nodes_waits_and_says_for_whom() -> None:
    cluster, held, head = pools_with_a_starved_head()
    too_big_for_own = gang("two-nodes", 2, per_worker=8)  # own-0 alone holds one of its workers
    result = plan([head, too_big_for_own], [held], cluster, limit=300)
    assert result.grants[key("two-nodes")] == 0
    assert (
        result.waiting[key("two-nodes")]
        == "Queued: waiting behind ml/big, which has waited 400s (head of line)"
    )
    # Before the limit the head keeps nothing: the job takes the head's free node too.
    fresh = plan([replace(head, created=NOW - 10), too_big_for_own], [held], cluster, limit=300)
    assert fresh.placement[key("two-nodes")] == {"own-0": 1, "pool-0": 1}


def test_heads_on_disjoint_pools_each_keep_their_own() -> None:
    cluster = [*nodes(2, prefix="pool"), *nodes(2, prefix="own")]
    held = [
        holding(gang("held-pool", 1, per_worker=8), 1, {"pool-1": 1}),
        holding(gang("held-own", 1, per_worker=8), 1, {"own-1": 1}),
    ]
    pool = frozenset({"pool-0", "pool-1"})
    own = frozenset({"own-0", "own-1"})
    heads = [
        gang("head-pool", 2, per_worker=8, created=NOW - 500, eligible=pool),
        gang("head-own", 2, per_worker=8, created=NOW - 400, eligible=own),
    ]
    small = gang("small", 1)
    result = plan([*heads, small], held, cluster, limit=300)
    assert result.grants[key("small")] == 0
    assert (
        result.waiting[key("small")]
        == "Queued: waiting behind ml/head-pool, which has waited 500s (head of line)"
    )
    # The second head only waited 200 s: it keeps nothing, and the small job takes its pool's free node.
    younger = [heads[0], replace(heads[1], created=NOW - 200)]
    assert plan([*younger, small], held, cluster, limit=300).placement[key("small")] == {"own-0": 1}


def test_a_starved_head_stops_growth_only_on_its_nodes() -> None:
    cluster, held, head = pools_with_a_starved_head()
    grower = holding(job("grower", per_worker=4, want=4, created=NOW - 5), 1, {"own-0": 1})
    result = plan([head], [held, grower], cluster, limit=300)
    assert result.grants[key("grower")] == 2  # the second half of own-0, not pool-0
    assert result.placement[key("grower")] == {"own-0": 2}


def test_an_admitted_job_without_room_keeps_only_its_own_nodes_from_later_jobs() -> None:
    waiting_for_room = holding(gang("high", 1, per_worker=8, priority=10, eligible=frozenset({"a"})), 1, {})
    cluster = [NodeCapacity("a", H100, 8, 4), NodeCapacity("b", H100, 8, 0)]
    result = plan([job("later", per_worker=4)], [waiting_for_room], cluster)
    assert result.placement[key("later")] == {"b": 1}
    only_a = job("only-a", per_worker=4, eligible=frozenset({"a"}))
    assert "ml/high" in plan([only_a], [waiting_for_room], cluster).waiting[key("only-a")]


# -- elastic growth and scale-down ----------------------------------------------------------------------------


def test_elastic_jobs_grow_to_their_want_when_capacity_appears() -> None:
    demand = job("elastic", per_worker=4, min_workers=2, want=4)
    running = holding(demand, 2, {"node-0": 2})
    assert plan([], [running], nodes(1)).grants[key("elastic")] == 2
    grown = plan([], [running], nodes(2))
    assert grown.grants[key("elastic")] == 4
    assert grown.reasons[key("elastic")] == "ScaledUp: 2 -> 4 workers (wants 4)"
    part = plan([], [running], nodes(2, devices=6))
    assert part.grants[key("elastic")] == 3
    # The step, then why not further: the job's messages tell the latter (it read the step alone).
    assert part.reasons[key("elastic")] == "ScaledUp: 2 -> 3 workers (wants 4); no room now for 1 more worker"


def test_a_new_elastic_job_is_admitted_at_its_minimum_and_grows_in_the_same_pass() -> None:
    result = plan([job("new", per_worker=4, min_workers=2, want=8)], cluster=nodes(3))
    assert result.grants[key("new")] == 6 and result.admitted_now == {key("new")}


def test_growth_goes_by_priority_then_age() -> None:
    low = holding(job("low", per_worker=8, want=3, priority=0, created=1.0), 1, {"node-0": 1})
    high = holding(job("high", per_worker=8, want=3, priority=1, created=2.0), 1, {"node-1": 1})
    result = plan([], [low, high], nodes(4))
    assert result.grants == {key("high"): 3, key("low"): 1}


def test_a_lower_want_scales_down_but_never_below_the_minimum() -> None:
    running = holding(job("job", per_worker=4, min_workers=2, want=2), 4, {"node-0": 2, "node-1": 2})
    result = plan([], [running], nodes(2))
    assert result.grants[key("job")] == 2 and not result.shrink
    assert result.reasons[key("job")] == "ScaledDown: wants 2"
    zero = holding(job("job", per_worker=4, min_workers=2, want=0), 4, {"node-0": 2, "node-1": 2})
    assert plan([], [zero], nodes(2)).grants[key("job")] == 2


def test_workers_on_a_removed_node_shrink_the_job_to_what_fits_and_not_below_its_minimum() -> None:
    demand = job("job", per_worker=4, min_workers=2, want=4)
    result = plan([], [holding(demand, 4, {"node-0": 2, "gone": 2})], nodes(1))
    assert result.grants[key("job")] == 2
    assert result.reasons[key("job")] == "CapacityChanged: 2 workers no longer fit on nvidia-h100-80gb nodes"
    alone = plan([], [holding(demand, 4, {"gone": 4})], [])
    assert alone.grants[key("job")] == 2  # its minimum stays granted: the gang timeout releases it


def test_a_resized_running_gang_is_granted_its_new_size_only_once_it_fits_whole() -> None:
    resized = holding(gang("gang", 3, per_worker=8), 1, {"node-0": 1})
    fits = plan([], [resized], nodes(3))
    assert fits.grants[key("gang")] == 3 and fits.reasons[key("gang")] == "ScaledUp: 1 -> 3 workers (wants 3)"
    # With room for 2 of the 3, a grant of 3 would stop the running worker for a gang that cannot start
    # (decide restarts a fixed group at its new size): it keeps its grant, and nothing is reserved for it.
    short = plan([], [resized], nodes(2))
    assert short.grants[key("gang")] == 1 and key("gang") not in short.reasons
    assert short.placement[key("gang")] == {"node-0": 1} and key("gang") not in short.reserved
    # Nor is it short of its minimum: a younger job takes the free node.
    younger = plan([job("younger", per_worker=8, created=NOW)], [resized], nodes(2))
    assert younger.grants[key("younger")] == 1 and younger.grants[key("gang")] == 1


def test_a_resized_gang_keeps_its_grant_while_any_worker_is_bound_and_gets_the_new_size_with_none() -> None:
    # One of its two workers failed (or is not placed yet): the other still holds its place, and the new
    # size waits for room as before. A hold that ended here would stop the group for a gang that cannot
    # start. With no worker bound there is nothing to keep: the new size is granted, and the gang timeout
    # releases it if it finds no place.
    one_bound = plan([], [holding(gang("gang", 3, per_worker=8), 2, {"node-0": 1})], nodes(2))
    assert one_bound.grants[key("gang")] == 2 and key("gang") not in one_bound.reasons
    none_bound = plan([], [holding(gang("gang", 3, per_worker=8), 2, {})], nodes(2))
    assert none_bound.grants[key("gang")] == 3
    assert none_bound.reasons[key("gang")] == "ScaledUp: 2 -> 3 workers (wants 3); 1 have no room yet"


def test_an_elastic_jobs_raised_minimum_is_granted_whole_or_not_at_all() -> None:
    # min follows replicas (no minReplicas): kubectl scale 2 -> 6 raises it; 2 of the 4 more fit.
    raised = holding(job("raised", per_worker=8, min_workers=6, want=6), 2, {"node-0": 1, "node-1": 1})
    short = plan([], [raised], nodes(4))
    assert short.grants[key("raised")] == 2 and key("raised") not in short.reserved
    fits = plan([], [raised], nodes(6))
    assert fits.grants[key("raised")] == 6


# -- priority: shrink, then preempt ---------------------------------------------------------------------------


def low_jobs(old_priority: int = 1) -> list[Holding]:
    return [
        holding(job("low-old", per_worker=2, want=4, priority=old_priority, created=1.0), 4, {"node-0": 4}),
        holding(job("low-young", per_worker=2, want=4, priority=1, created=2.0), 4, {"node-1": 4}),
    ]


def test_shrinks_the_youngest_lowest_priority_job_only_as_much_as_needed() -> None:
    high = gang("high", 1, per_worker=4, priority=10)
    result = plan([high], low_jobs(), nodes(2))
    assert result.grants == {key("high"): 1, key("low-young"): 2, key("low-old"): 4}
    assert result.shrink == {key("low-young"): 2}
    assert result.reasons[key("low-young")] == "ShrunkForPriority: to make room for ml/high"
    assert result.placement[key("high")] == {"node-1": 1}
    lowest_first = plan([high], low_jobs(old_priority=0), nodes(2))
    assert lowest_first.shrink == {key("low-old"): 2}


def test_a_shrink_never_counts_an_unbound_worker_0s_reserved_place_as_freed() -> None:
    # Workers 1-3 run on n1-n3; worker 0 waits for a node, its place reserved on n0. decide never removes
    # worker 0 (it hosts the rendezvous): counting n0 as freed, the newcomer raced worker 0 for it while
    # decide removed the running worker 3, whose node nobody had counted.
    low = job("low", per_worker=8, min_workers=2, want=4)
    high = gang("high", 1, per_worker=8, priority=10)
    cluster = [NodeCapacity(name, H100, 8, 0) for name in ("n0", "n1", "n2", "n3")]
    bound = {"n1": 1, "n2": 1, "n3": 1}
    held = Holding(low, 4, bound, ("n1", "n2", "n3"), reserved={"n0": 1}, first_unbound=True)
    plan = plan_admissions([high], [held], cluster, "BestEffortFIFO", NOW, 300)
    assert plan.grants[key("low")] == 3 and plan.grants[key("high")] == 1
    # The place freed is the last worker decide removes (3, on n3), and worker 0 keeps n0.
    assert plan.placement[key("low")] == {"n0": 1, "n1": 1, "n2": 1}
    assert plan.reserved[key("high")] == {"n3": 1}
    # With worker 0 bound, the reserved place is a new worker's, freed first (no pod to remove).
    bound_first = Holding(low, 4, bound, ("n1", "n2", "n3"), reserved={"n0": 1})
    plan = plan_admissions([high], [bound_first], cluster, "BestEffortFIFO", NOW, 300)
    assert plan.reserved[key("high")] == {"n0": 1}


def test_shrinking_stops_at_the_minimum_and_never_happens_for_nothing() -> None:
    high = gang("high", 2, per_worker=8, priority=10)  # needs both nodes whole: minimums are in the way
    result = plan([high], low_jobs(), nodes(2))
    assert result.grants == {key("high"): 0, key("low-young"): 4, key("low-old"): 4}
    assert not result.shrink and not result.preempt and not result.reasons
    # The youngest toward its minimum, then the older by two; the youngest's third removal (6 free devices
    # hold one worker of 4, as 4 do) is given back once the job fits.
    two = gang("high", 2, per_worker=4, priority=10)
    shrunk = plan([two], low_jobs(), nodes(2))
    assert shrunk.grants == {key("high"): 2, key("low-young"): 2, key("low-old"): 2}
    assert shrunk.shrink == {key("low-young"): 2, key("low-old"): 2}


# -- whole TP x PP groups ----------------------------------------------------------------------------------


def test_an_elastic_job_grows_by_whole_groups_only() -> None:
    """Groups of 2 workers (TP x PP over 2 nodes' worth), room for 5 workers: it is granted 4, and the
    fifth place stays free for someone else."""
    grouped = job("grouped", per_worker=8, min_workers=2, want=6, step=2)
    result = plan([grouped], cluster=nodes(5))
    assert result.grants[key("grouped")] == 4
    assert sum(result.reserved[key("grouped")].values()) == 4
    small = job("small", per_worker=8, created=NOW)
    assert plan([grouped, small], cluster=nodes(5)).grants[key("small")] == 1


def test_a_shrink_for_priority_takes_whole_groups_and_gives_back_only_whole_groups() -> None:
    low = job("low", per_worker=4, min_workers=2, want=6, step=2, priority=1)
    held = holding(low, 6, {"node-0": 2, "node-1": 2, "node-2": 2})
    one = plan([gang("high", 1, per_worker=4, priority=10)], [held], nodes(3))
    assert one.grants == {key("high"): 1, key("low"): 4} and one.shrink == {key("low"): 4}
    three = plan([gang("high", 3, per_worker=4, priority=10)], [held], nodes(3))
    assert three.grants == {key("high"): 3, key("low"): 2}  # two groups: one and a half would do


def test_a_group_taken_in_part_is_completed_with_reserved_places_before_running_workers() -> None:
    """`low` (groups of 2) runs 2 workers on a and has 2 places reserved, on b and c; `high` may use b
    only. Taking b's place is enough for high, and the group is completed with c's place, not with a
    running worker on a (a checkpoint and a re-form for nothing)."""
    cluster = [NodeCapacity("a", H100, 8, 0), NodeCapacity("b", H100, 4, 0), NodeCapacity("c", H100, 4, 0)]
    low = Holding(job("low", per_worker=4, min_workers=2, want=4, step=2), 4, {"a": 2}, ("a", "a"),
                  reserved={"b": 1, "c": 1})  # fmt: skip
    high = gang("high", 1, per_worker=4, priority=10, eligible=frozenset({"b"}))
    result = plan([high], [low], cluster)
    assert result.grants == {key("high"): 1, key("low"): 2}
    assert result.placement[key("low")] == {"a": 2}


def test_a_shrink_partly_unneeded_after_a_preemption_gives_back_whole_groups_only() -> None:
    """Shrinking `low` by 2 is not enough for 3 workers, preempting `other` frees 2 more: one of low's
    workers could go back, but not half of a group."""

    def low_grant(step: int) -> int:
        low = job("low", per_worker=4, min_workers=2, want=4, step=step, priority=1)
        held = holding(low, 4, {"node-0": 1, "node-1": 1, "node-2": 1, "node-3": 1})
        other = holding(gang("other", 2, per_worker=4), 2, {"node-4": 1, "node-5": 1})
        high = gang("high", 3, per_worker=4, priority=10, preemption="LowerPriority")
        result = plan([high], [held, other], nodes(6, devices=4))
        assert result.preempt == {key("other")} and result.grants[key("high")] == 3
        return result.grants[key("low")]

    assert low_grant(step=1) == 3
    assert low_grant(step=2) == 2


def test_workers_whose_places_went_away_leave_whole_groups() -> None:
    """Granted 6 in groups of 2, one node gone: 5 places remain, the job keeps 4 and reserves nothing for
    the part group."""
    grouped = job("grouped", per_worker=8, min_workers=2, want=6, step=2)
    held = Holding(grouped, 6, {"node-0": 1, "node-1": 1, "node-2": 1, "node-3": 1},
                   reserved={"node-4": 1, "node-5": 1})  # fmt: skip
    result = plan(admitted=[held], cluster=nodes(5))
    assert result.grants[key("grouped")] == 4
    assert result.reserved.get(key("grouped"), {}) == {}
    assert plan([job("small", per_worker=8)], [held], nodes(5)).grants[key("small")] == 1


def test_a_job_shrunk_for_another_does_not_grow_back_while_its_leaving_workers_are_still_bound() -> None:
    """`low` was shrunk from 2 to 1 for `high`, which may use only pool a; low's second worker waits for its
    checkpoint on a node of pool a. Growing low onto pool b now would raise its grant to 2 again, and the
    reconcile would then keep the leaving worker where high was counted: high would never start."""
    pool_a = [NodeCapacity(f"a{index}", H100, 8, 0) for index in range(2)]
    cluster = [*pool_a, NodeCapacity("b0", H100, 8, 0)]
    low = Holding(job("low", per_worker=8, want=2, priority=1), 1, {"a0": 1, "a1": 1}, ("a0", "a1"))
    high = Holding(gang("high", 1, per_worker=8, priority=10, eligible=frozenset({"a0", "a1"})), 1, {},
                   reserved={"a1": 1})  # fmt: skip
    result = plan(admitted=[low, high], cluster=cluster)
    assert result.grants[key("low")] == 1
    assert key("low") not in result.reserved or not result.reserved[key("low")]


def test_replicas_raised_back_during_a_scale_down_take_the_leaving_workers_back() -> None:
    """Scaled 8 -> 4, its 4 leaving workers still bound (the handshake): raised back to 8, it keeps them, and
    no new place is reserved for workers it has."""
    raised = job("raised", per_worker=1, want=8)
    result = plan(admitted=[Holding(raised, 4, {"node-0": 8})], cluster=nodes(4))
    assert result.grants[key("raised")] == 8
    assert not result.reserved.get(key("raised"))
    # Raised to 6 only: 6 of them, still without a new place.
    six = plan(admitted=[Holding(job("raised", per_worker=1, want=6), 4, {"node-0": 8})], cluster=nodes(4))
    assert six.grants[key("raised")] == 6 and not six.reserved.get(key("raised"))


def test_preempts_only_when_allowed_and_shrinking_is_not_enough() -> None:
    never = plan([gang("high", 2, per_worker=8, priority=10)], low_jobs(), nodes(2))
    assert not never.preempt
    allowed = gang("high", 1, per_worker=8, priority=10, preemption="LowerPriority")
    result = plan([allowed], low_jobs(), nodes(2))
    assert result.preempt == {key("low-young")} and result.grants[key("low-young")] == 0
    assert result.grants[key("low-old")] == 4 and not result.shrink  # the trial's shrink was given back
    assert result.reasons[key("low-young")] == "Preempted: to make room for ml/high"
    enough = plan(
        [gang("high", 1, per_worker=4, priority=10, preemption="LowerPriority")], low_jobs(), nodes(2)
    )
    assert not enough.preempt and enough.shrink == {key("low-young"): 2}


def test_preempts_non_elastic_jobs_lowest_priority_first_and_keeps_shrinks_that_are_not_needed_out() -> None:
    gang_low = holding(gang("gang-low", 1, per_worker=8, priority=0), 1, {"node-0": 1})
    elastic = holding(job("elastic", per_worker=4, want=2, priority=1), 2, {"node-1": 2})
    high = gang("high", 1, per_worker=8, priority=5, preemption="LowerPriority")
    result = plan([high], [gang_low, elastic], nodes(2))
    assert result.preempt == {key("gang-low")} and result.grants[key("elastic")] == 2
    assert result.placement[key("high")] == {"node-0": 1}


def test_preempts_only_jobs_whose_devices_it_can_use_and_gives_back_victims_not_needed() -> None:
    cluster = [NodeCapacity("a", H100, 8, 4), NodeCapacity("b", H100, 8, 0)]
    lowest = holding(gang("lowest", 1, per_worker=4, priority=0), 1, {"a": 1})
    low = holding(gang("low", 1, per_worker=8, priority=1), 1, {"b": 1})
    high = gang("high", 1, per_worker=8, priority=5, preemption="LowerPriority")
    # stopping `lowest` leaves 4 free on a: not enough alone, and not needed once `low` is stopped
    assert plan([high], [lowest, low], cluster).preempt == {key("low")}
    only_a = gang("high", 1, per_worker=4, priority=5, preemption="LowerPriority", eligible=frozenset({"a"}))
    assert plan([only_a], [lowest, low], cluster).preempt == {key("lowest")}
    only_b = gang("high", 1, per_worker=8, priority=5, preemption="LowerPriority", eligible=frozenset({"b"}))
    assert plan([only_b], [lowest, low], cluster).preempt == {key("low")}


def test_preempts_the_job_that_frees_the_fewest_devices_not_a_larger_younger_one() -> None:
    """12 devices of 3 jobs of one priority: `fill` (7 workers, the youngest), `beta` (elastic 2 to 3) and
    `gamma` (2). Taken youngest first, a gang of 3 stopped `fill` and 4 devices stayed idle while `fill`
    could not come back (an audit on the sandbox); `gamma` alone, with `beta` shrunk by one, is enough."""
    cluster = nodes(3, devices=4)
    beta = holding(job("beta", per_worker=1, min_workers=2, want=3, created=1.0), 3, {"node-0": 3})
    gamma = holding(
        job("gamma", per_worker=1, min_workers=2, want=2, created=2.0), 2, {"node-0": 1, "node-1": 1}
    )
    fill = holding(gang("fill", 7, per_worker=1, created=3.0), 7, {"node-1": 3, "node-2": 4})
    newc = gang("newc", 3, per_worker=1, priority=10, preemption="LowerPriority")
    result = plan([newc], [beta, gamma, fill], cluster)
    assert result.preempt == {key("gamma")} and result.shrink == {key("beta"): 2}
    assert result.grants[key("newc")] == 3 and result.grants[key("fill")] == 7
    assert result.reasons[key("gamma")] == "Preempted: to make room for ml/newc"
    # Where only the larger job is enough, it goes; one of a higher priority is not taken to save devices.
    big = gang("newc", 6, per_worker=1, priority=10, preemption="LowerPriority")
    assert plan([big], [beta, gamma, fill], cluster).preempt == {key("fill")}
    higher = holding(gang("gamma", 2, per_worker=1, priority=5, created=2.0), 2, {"node-0": 1, "node-1": 1})
    beta_fixed = holding(gang("beta", 3, per_worker=1, priority=5, created=1.0), 3, {"node-0": 3})
    assert plan([newc], [beta_fixed, higher, fill], cluster).preempt == {key("fill")}


def test_a_burst_of_preempting_jobs_takes_the_youngest_victim_whose_spare_devices_the_next_one_uses() -> None:
    """Two gangs of one device arrive together: `l2` (2 devices, the youngest) makes room for both. The
    fewest devices for the first alone (`l1`, 1 device) would stop both lower jobs (a review)."""
    cluster = [NodeCapacity("n0", H100, 2, 0), NodeCapacity("n1", H100, 1, 0)]
    l1 = holding(gang("l1", 1, per_worker=1, created=NOW - 500), 1, {"n1": 1})
    l2 = holding(gang("l2", 1, per_worker=2, created=NOW - 100), 1, {"n0": 1})
    first = gang("a", 1, per_worker=1, priority=10, preemption="LowerPriority", created=NOW - 20)
    second = gang("b", 1, per_worker=1, priority=10, preemption="LowerPriority", created=NOW - 10)
    result = plan([first, second], [l1, l2], cluster)
    assert result.preempt == {key("l2")} and result.grants[key("a")] == result.grants[key("b")] == 1
    # Alone, the first takes the one that frees least.
    assert plan([first], [l1, l2], cluster).preempt == {key("l1")}
    # Admitted both and short of places together (their node went): as in a burst (a second review).
    lost = [holding(first, 1, {}), holding(second, 1, {})]
    assert plan([], [l1, l2, *lost], cluster).preempt == {key("l2")}


def test_a_grant_lowered_for_an_unbound_worker_0_is_not_lowered_again_while_the_removed_worker_terminates() -> (
    None
):
    """Workers 1-4 run on A (4 devices); worker 0's node was removed and decide keeps worker 0 (Pending)
    whatever the grant. The first pass lowers 8 -> 4, so decide removes running worker 4 for worker 0's
    place. While worker 4 terminates (its device still held), the grant stays: lowered again, it removed
    one running worker a pass down to the minimum (a closed-loop simulation)."""
    demand = job("j", per_worker=1, min_workers=1, want=8)
    first = plan(
        admitted=[Holding(demand, 8, {"A-0": 4}, ("A-0",) * 4, first_unbound=True)],
        cluster=nodes(1, 4, prefix="A"),
    )
    assert first.grants[key("j")] == 4
    terminating = NodeCapacity("A-0", H100, 4, 1)  # worker 4's pod, terminating, holds its device
    during = Holding(demand, 4, {"A-0": 3}, ("A-0",) * 3, first_unbound=True, room_coming=True, terminating=1)
    assert plan(admitted=[during], cluster=[terminating]).grants[key("j")] == 4
    # Once it is gone and another pod took that device, it is lowered: decide removes a worker for worker 0.
    taken = replace(during, room_coming=False, terminating=0)
    assert plan(admitted=[taken], cluster=[terminating]).grants[key("j")] == 3
    # Room coming for another reason (a job preempted for it still leaving, a worker stuck terminating) is no
    # place for lost workers: held, an unplaceable grant was kept for good (a jax group that could not start)
    # and growth went ahead of the queue (a third review).
    elsewhere = replace(during, terminating=0)
    assert plan(admitted=[elsewhere], cluster=[terminating]).grants[key("j")] == 3
    # Worker 0 bound, a worker of a scale-down terminating: the lost places are released at once.
    bound_first = Holding(demand, 4, {"A-0": 3}, ("A-0",) * 3, room_coming=True, terminating=1)
    assert plan(admitted=[bound_first], cluster=[terminating]).grants[key("j")] == 3


def test_a_worker_0_on_a_node_not_ready_counts_as_placed_for_the_grant() -> None:
    """Worker 0 on a NotReady node (outside the pass), workers 1-3 on full nodes: decide keeps worker 0
    whatever the grant, so a grant lowered to the 3 placed removed a healthy worker, one a pass (a
    closed-loop simulation). Worker 3 on that node instead is not kept: the grant drops for it."""
    demand = job("j", per_worker=4, min_workers=1, want=4)
    cluster = [NodeCapacity("good", H100, 8, 0), NodeCapacity("good2", H100, 4, 0)]
    first_away = Holding(demand, 4, {"bad": 1, "good": 2, "good2": 1}, ("bad", "good", "good", "good2"))
    result = plan(admitted=[first_away], cluster=cluster)
    assert result.grants[key("j")] == 4 and result.placement[key("j")] == {"good": 2, "good2": 1}
    last_away = Holding(demand, 4, {"bad": 1, "good": 2, "good2": 1}, ("good", "good", "good2", "bad"))
    assert plan(admitted=[last_away], cluster=cluster).grants[key("j")] == 3


def lost_node_cluster() -> tuple[Demand, list[NodeCapacity]]:
    """`high` ran two workers of 8 on node-0 and node-1; node-1 is gone, node-2 and node-3 remain."""
    high = gang("high", 2, per_worker=8, priority=10, preemption="LowerPriority")
    return high, [NodeCapacity(name, H100, 8, 0) for name in ("node-0", "node-2", "node-3")]


def test_an_admitted_job_whose_node_was_lost_makes_room_at_once_as_when_it_was_queued() -> None:
    """Its minimum lost its place: it shrinks or preempts lower-priority jobs in this pass, where before it
    held its grant with no place until its gang timeout requeued it (300 s by default)."""
    high, cluster = lost_node_cluster()
    low = holding(gang("low", 1, per_worker=8, priority=1), 1, {"node-2": 1})
    other = holding(gang("other", 1, per_worker=8, priority=1, created=1.0), 1, {"node-3": 1})
    result = plan([], [holding(high, 2, {"node-0": 1}), low, other], cluster)
    assert result.preempt == {key("low")}  # the youngest of the lowest priority
    assert result.grants[key("high")] == 2 and result.grants[key("other")] == 1
    assert result.reserved[key("high")] == {"node-2": 1}
    assert result.placement[key("high")] == {"node-0": 1, "node-2": 1}
    assert result.made_room_for[key("low")] == {key("high")}
    assert result.reasons[key("low")] == "Preempted: to make room for ml/high"
    # An elastic lower-priority job is shrunk rather than stopped.
    elastic = holding(job("elastic", per_worker=8, want=2, priority=1), 2, {"node-2": 1, "node-3": 1})
    shrunk = plan([], [holding(high, 2, {"node-0": 1}), elastic], cluster)
    assert shrunk.shrink == {key("elastic"): 1} and not shrunk.preempt
    assert shrunk.grants[key("high")] == 2 and sum(shrunk.reserved[key("high")].values()) == 1
    # Not allowed to preempt: it keeps its grant and waits, as before.
    never = plan([], [holding(replace(high, preemption="Never"), 2, {"node-0": 1}), low, other], cluster)
    assert not never.preempt and never.grants == {key("high"): 2, key("low"): 1, key("other"): 1}
    assert never.unplaced == {key("high")} and not result.unplaced


def test_an_admitted_job_short_of_places_makes_no_room_while_room_is_on_its_way() -> None:
    """Workers leaving for it (shrunk or preempted for it, or its own terminating: Holding.room_coming), or
    its workers bound on a node outside the pass (NotReady: they may come back), are no lost places: room
    made for them stopped a job for nothing."""
    high, cluster = lost_node_cluster()
    low = holding(gang("low", 1, per_worker=8, priority=1), 1, {"node-2": 1})
    other = holding(gang("other", 1, per_worker=8, priority=1, created=1.0), 1, {"node-3": 1})
    coming = Holding(high, 2, {"node-0": 1}, room_coming=True)
    result = plan([], [coming, low, other], cluster)
    assert not result.preempt and not result.shrink and result.grants[key("high")] == 2
    assert not result.unplaced  # it waits for what comes, without a full pass each time
    on_a_node_not_ready = holding(high, 2, {"node-0": 1, "node-1": 1})  # node-1 is left out of the pass
    result = plan([], [on_a_node_not_ready, low, other], cluster)
    assert not result.preempt and not result.shrink and result.grants[key("high")] == 2


def test_a_raised_fixed_group_restarting_or_a_job_over_its_quota_makes_no_room_for_lost_places() -> None:
    """A fixed group's replicas raised 1 -> 2 ran on its one worker; restarting, none is bound: the raise
    still waits for free devices (docs/scheduling.md), it does not preempt. A job whose quota has no room
    for its replacement would have its create refused: it preempts no one for it."""
    from decimal import Decimal

    from kubefit.decisions.quota import QuotaClaim, QuotaState

    high, cluster = lost_node_cluster()
    low = holding(gang("low", 1, per_worker=8, priority=1), 1, {"node-2": 1})
    other = holding(gang("other", 1, per_worker=8, priority=1, created=1.0), 1, {"node-3": 1})
    raised = plan([], [holding(high, 1, {}), low, other], cluster)
    assert not raised.preempt and raised.grants[key("high")] == 2 and not raised.unplaced
    claim = QuotaClaim(("ml", "gpu-quota", "requests.nvidia.com/gpu"), Decimal(8))
    quota_bound = replace(high, quota_claims=(claim,))
    full = QuotaState({claim.pool: Decimal(0)}, {key("high"): 1})  # another pod took what the lost one freed
    admitted = [holding(quota_bound, 2, {"node-0": 1}), low, other]
    refused = plan_admissions([], admitted, cluster, "BestEffortFIFO", NOW, 300, quotas=full)
    assert not refused.preempt and refused.grants[key("high")] == 2
    room = QuotaState({claim.pool: Decimal(8)}, {key("high"): 1})
    allowed = plan_admissions([], admitted, cluster, "BestEffortFIFO", NOW, 300, quotas=room)
    assert allowed.preempt == {key("low")}
    # An elastic job granted 4 before the pass, down to its minimum of 2 in it: the quota needs room for its
    # one replacement, not for the two workers above its minimum it no longer has.
    lower_priority: Preemption = "LowerPriority"
    elastic = job("high", per_worker=8, min_workers=2, want=4, priority=10, preemption=lower_priority)
    elastic = replace(elastic, quota_claims=(claim,))
    shrinking = [holding(elastic, 4, {"node-0": 1}), low, other]
    result = plan_admissions([], shrinking, cluster, "BestEffortFIFO", NOW, 300, quotas=room)
    assert result.grants[key("high")] == 2 and result.shrink == {} and result.preempt == {key("low")}


def test_equal_priority_never_shrinks_or_preempts() -> None:
    peer = gang("peer", 1, per_worker=4, priority=1, preemption="LowerPriority")
    result = plan([peer], low_jobs(), nodes(2))
    assert result.grants[key("peer")] == 0 and not result.shrink and not result.preempt


# -- determinism and input checks -----------------------------------------------------------------------------


def test_the_same_inputs_give_the_same_plan_in_any_order() -> None:
    queued = [
        gang(f"q{index}", 1 + index % 3, per_worker=2 * (1 + index % 2), created=index % 4)
        for index in range(12)
    ]
    admitted = low_jobs()
    cluster = [*nodes(3), *nodes(2, devices=4, prefix="small")]
    expected = plan(queued, admitted, cluster)
    shuffler = random.Random(7)
    for _ in range(5):
        queued_, admitted_, cluster_ = list(queued), list(admitted), list(cluster)
        shuffler.shuffle(queued_)
        shuffler.shuffle(admitted_)
        shuffler.shuffle(cluster_)
        assert plan(queued_, admitted_, cluster_) == expected


@pytest.mark.parametrize("field_name", ["per_worker", "min_workers"])
def test_a_demand_below_one_names_the_field(field_name: str) -> None:
    with pytest.raises(ValueError, match=f"Demand.{field_name} of ml/bad must be >= 1, got 0"):
        job("bad", **{field_name: 0})  # type: ignore[arg-type]


def test_workers_leaving_after_a_scale_down_make_room_for_a_higher_priority_job_before_any_shrink() -> None:
    """low was scaled from 4 to 2 and its workers 2 and 3 (on node-1) wait to checkpoint. high needs one
    worker of 4 GPUs: a place of those leaving is enough, and low keeps its grant. Taken as a shrink, low's
    grant fell to 1, and decide removed worker 1 as well, whose place nobody counted."""
    high = gang("high", 1, per_worker=4, priority=10)
    low = job("low", per_worker=4, min_workers=1, want=2, priority=0)
    leaving = Holding(low, 2, {"node-0": 2, "node-1": 2}, ("node-0", "node-0", "node-1", "node-1"))
    result = plan([high], [leaving], nodes(2))
    assert result.grants[key("high")] == 1 and result.placement[key("high")] == {"node-1": 1}
    assert result.grants[key("low")] == 2 and key("low") not in result.shrink
    assert key("low") not in result.reasons  # no ShrunkForPriority: nothing more is taken from it
    # high's gang clock waits for low's leaving workers (admission.leaving_for).
    assert result.made_room_for == {key("low"): frozenset({key("high")})}


def test_a_job_waiting_for_room_keeps_only_the_nodes_one_of_its_workers_fits_on() -> None:
    """A node smaller than a worker (4 devices for workers of 8, or an 8-GPU node with a failed GPU) is
    not kept from the jobs behind: the short job or the head could never use it."""
    small = job("small", per_worker=4, created=NOW - 10)
    short = job("short", per_worker=8, min_workers=3, want=3, created=NOW - 1000)
    cluster = [
        NodeCapacity("n8-0", H100, 8, 0),
        NodeCapacity("n8-1", H100, 8, 0),
        NodeCapacity("n4", H100, 4, 0),
    ]
    behind_short = plan([small], [Holding(short, 3, {"n8-0": 1, "n8-1": 1}, ("n8-0", "n8-1"))], cluster)
    assert behind_short.grants[key("small")] == 1 and behind_short.placement[key("small")] == {"n4": 1}
    head = job("head", per_worker=8, elastic=False, created=NOW - 1000)
    tight = [NodeCapacity("n8-0", H100, 8, 4), NodeCapacity("n4", H100, 4, 0)]
    behind_head = plan([head, small], [], tight, limit=300)
    assert behind_head.grants[key("head")] == 0 and behind_head.grants[key("small")] == 1
    assert behind_head.placement[key("small")] == {"n4": 1}
    # A node that fits the head's worker stays kept.
    kept = plan(
        [head, small], [], [NodeCapacity("n8-0", H100, 8, 4), NodeCapacity("n8-1", H100, 8, 4)], limit=300
    )
    assert kept.grants[key("small")] == 0 and "head of line" in kept.waiting[key("small")]


def test_places_one_trial_of_a_pass_took_are_not_taken_again_by_the_next() -> None:
    """low runs 2 workers of 4 GPUs on its only node, at its grant. high1 shrinks it by one; high2, planned
    next, must not take low's remaining worker's place as if it were leaving too (node-0 promised twice)."""
    low = Holding(job("low", per_worker=4, min_workers=1, want=2), 2, {"node-0": 2}, ("node-0", "node-0"))
    high1 = gang("high1", 1, per_worker=4, priority=10, created=1)
    high2 = gang("high2", 1, per_worker=4, priority=10, created=2)
    result = plan([high1, high2], [low], nodes(1))
    assert result.grants == {key("high1"): 1, key("high2"): 0, key("low"): 1}
    used = sum(4 * workers for places in result.placement.values() for workers in places.values())
    assert used == 8


def test_leaving_places_of_any_lower_job_come_before_shrinking_the_lowest() -> None:
    """A (priority 0) runs at its grant; B (priority 1) was scaled down and its worker 1 leaves anyway.
    high takes B's leaving place: A, the lowest, is not shrunk for what costs nobody anything."""
    a = Holding(
        job("A", per_worker=4, min_workers=1, want=2, priority=0), 2, {"node-0": 2}, ("node-0", "node-0")
    )
    b = Holding(
        job("B", per_worker=4, min_workers=1, want=1, priority=1), 1, {"node-1": 2}, ("node-1", "node-1")
    )
    result = plan([gang("high", 1, per_worker=4, priority=10)], [a, b], nodes(2))
    assert result.grants[key("high")] == 1 and result.placement[key("high")] == {"node-1": 1}
    assert result.grants[key("A")] == 2 and not result.shrink
    assert result.made_room_for == {key("B"): frozenset({key("high")})}


def test_a_job_whose_leaving_places_two_jobs_took_holds_both_their_clocks() -> None:
    low = Holding(
        job("low", per_worker=8, min_workers=1, want=1),
        1,
        {"node-0": 1, "node-1": 1, "node-2": 1},
        ("node-0", "node-1", "node-2"),
    )
    h1 = gang("h1", 1, per_worker=8, priority=10, created=1)
    h2 = gang("h2", 1, per_worker=8, priority=10, created=2)
    result = plan([h1, h2], [low], nodes(3))
    assert result.grants[key("h1")] == 1 and result.grants[key("h2")] == 1
    assert result.made_room_for == {key("low"): frozenset({key("h1"), key("h2")})}


def test_leaving_places_a_preemption_made_unneeded_are_given_back() -> None:
    """B's leaving worker (4 GPUs on node-1) is not enough for high's worker of 8; preempting C frees
    node-0, which is. B's place goes back: B is nobody's victim, and no clock waits for it."""
    b = Holding(
        job("B", per_worker=4, min_workers=1, want=1, priority=1), 1, {"node-1": 2}, ("node-1", "node-1")
    )
    c = holding(gang("C", 1, per_worker=8, priority=0), 1, {"node-0": 1})
    high = gang("high", 1, per_worker=8, priority=10, preemption="LowerPriority")
    result = plan([high], [b, c], nodes(2))
    assert result.preempt == {key("C")} and result.placement[key("high")] == {"node-0": 1}
    assert result.made_room_for == {key("C"): frozenset({key("high")})}


def test_a_shrink_that_reaches_a_worker_on_a_node_outside_the_pass_still_plans() -> None:
    """Worker 2 of low is on a NotReady node X, which the pass leaves out. Reached in removal order, it goes
    like any other (decide removes it) and frees nothing here; the pass used to fail (KeyError)."""
    cluster = [NodeCapacity(name, H100, 8, 0) for name in ("A", "B", "C")]
    low = Holding(
        job("low", per_worker=8, min_workers=1, want=4),
        3,
        {"A": 1, "B": 1, "C": 1, "X": 1},
        ("A", "B", "X", "C"),
    )
    high = job("high", per_worker=8, min_workers=2, want=2, priority=1)
    result = plan([high], [low], cluster)
    assert result.grants == {key("high"): 2, key("low"): 1}
    assert result.placement[key("low")] == {"A": 1} and result.placement[key("high")] == {"B": 1, "C": 1}


def test_a_shrink_drops_the_unscheduled_workers_places_before_a_bound_one_as_decide_does() -> None:
    """low: workers on A and B, a third reserved on Z (not created or not bound yet). high may use A and
    B only. decide drops a lowered grant's unscheduled workers first (workers.keep_order): taking B's
    worker alone would leave it there, and high's pod unbound."""
    cluster = [NodeCapacity(name, H100, 8, 0) for name in ("A", "B", "Z")]
    low = Holding(job("low", per_worker=8, min_workers=1, want=3), 3, {"A": 1, "B": 1}, ("A", "B"), {"Z": 1})
    high = job("high", per_worker=8, priority=1, eligible=frozenset({"A", "B"}))
    result = plan([high], [low], cluster)
    assert result.grants == {key("high"): 1, key("low"): 1}
    assert result.placement[key("low")] == {"A": 1} and result.placement[key("high")] == {"B": 1}


# -- property: never over-commit, always keep minimums --------------------------------------------------------

KINDS = ("a", "b")


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Demand], list[Holding], list[NodeCapacity]]:
    cluster = []
    for index in range(draw(st.integers(0, 6))):
        allocatable = draw(st.sampled_from([0, 1, 2, 4, 8]))
        cluster.append(
            NodeCapacity(
                f"n{index}",
                draw(st.sampled_from([*KINDS, None])),
                allocatable,
                draw(st.integers(0, allocatable)),
            )
        )
    free = {node.name: node.allocatable - node.used_by_others for node in cluster if node.accelerator}

    def demand(name: str) -> Demand:
        elastic = draw(st.booleans())
        step = draw(st.sampled_from([1, 2, 3])) if elastic else 1  # whole TP x PP groups
        minimum = draw(st.integers(1, 3)) * step
        eligible = draw(st.none() | st.frozensets(st.sampled_from([f"n{i}" for i in range(6)])))
        return Demand(
            key("j" + name),
            priority=draw(st.integers(0, 2)),
            created=float(draw(st.integers(0, 3))),
            accelerator=draw(st.sampled_from(KINDS)),
            per_worker=draw(st.sampled_from([1, 2, 4, 8])),
            min_workers=minimum,
            want_workers=draw(st.integers(0, 5)) * step,
            elastic=elastic,
            preemption=draw(st.sampled_from(["Never", "LowerPriority"])),
            eligible_nodes=eligible,
            worker_step=step,
        )

    admitted = []
    for index in range(draw(st.integers(0, 5))):
        held = demand(f"h{index}")
        placed: Counter[str] = Counter()
        for node in cluster:
            if node.accelerator == held.accelerator:
                workers = draw(st.integers(0, max(free[node.name], 0) // held.per_worker))
                free[node.name] -= workers * held.per_worker
                placed[node.name] = workers
        # What the last pass reserved for its unbound workers: any nodes, even gone or full ones.
        reserved = draw(
            st.dictionaries(st.sampled_from([f"n{i}" for i in range(7)]), st.integers(1, 3), max_size=3)
        )
        # The order decide removes its bound workers in (reversed), when known: a shrink follows it, and
        # takes the places of workers beyond the grant (leaving anyway) first.
        bound = sorted(placed.elements())
        if draw(st.booleans()):  # a worker on a node the pass leaves out (NotReady)
            placed["gone"] = draw(st.integers(1, 2))
            bound += ["gone"] * placed["gone"]
        order = tuple(draw(st.permutations(bound))) if draw(st.booleans()) else ()
        held = replace(held, finished_workers=draw(st.integers(0, 2)))  # succeeded: placed on no node
        admitted.append(Holding(held, draw(st.integers(1, 6)), dict(+placed), order, reserved=reserved))
    queued = [demand(f"q{index}") for index in range(draw(st.integers(0, 8)))]
    return queued, admitted, cluster


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.sampled_from(["StrictFIFO", "BestEffortFIFO"]), st.sampled_from([0.0, 1e9]))
def test_no_node_is_over_committed_and_every_admitted_job_keeps_its_minimum(
    scenario: tuple[list[Demand], list[Holding], list[NodeCapacity]], policy: AdmissionPolicy, limit: float
) -> None:
    queued, admitted, cluster = scenario
    result = plan_admissions(queued, admitted, cluster, policy, 10.0, limit)
    assert_whole_groups_and_no_place_held_for_nothing(result, queued, admitted)
    per_worker = {demand.key: demand.per_worker for demand in [*queued, *(h.demand for h in admitted)]}
    assert set(result.grants) == set(per_worker)
    priorities = {held.demand.key: held.demand.priority for held in admitted}
    used: Counter[str] = Counter()
    for job_key, places in result.placement.items():
        for name, workers in places.items():
            used[name] += workers * per_worker[job_key]
    for node in cluster:
        assert used[node.name] <= node.allocatable - node.used_by_others, node.name
    for held in admitted:
        assert_keeps_its_minimum(held, result)
    # A victim is preempted for a job of higher priority that may preempt and holds a grant: a queued one
    # admitted, or an admitted one whose minimum lost its places.
    demands = {d.key: d for d in [*queued, *(h.demand for h in admitted)]}
    for victim in result.preempt:
        assert any(
            demands[taker].priority > priorities[victim]
            and demands[taker].preemption == "LowerPriority"
            and result.grants[taker] > 0
            for taker in result.made_room_for[victim]
        )
    for demand in queued:
        grant = result.grants[demand.key]
        if demand.key in result.admitted_now:
            floor = demand.min_workers if demand.elastic else max(demand.min_workers, demand.want_workers)
            assert grant >= floor and sum(result.placement[demand.key].values()) == grant
            # Nothing of it is bound yet: every place is reserved for a worker to create.
            assert result.reserved[demand.key] == result.placement[demand.key]
        else:
            assert grant == 0 and demand.key in result.waiting
    assert_reserved_is_the_placement_not_bound(result, admitted)
    if policy == "BestEffortFIFO" and limit == 0.0:
        assert_no_one_admitted_behind_a_head_takes_its_nodes(result, queued, cluster)


def assert_keeps_its_minimum(held: Holding, result: AdmissionPlan) -> None:
    demand, grant = held.demand, result.grants[held.demand.key]
    floor = demand.min_workers if demand.elastic else max(demand.min_workers, demand.want_workers)
    if demand.key in result.preempt:
        assert grant == 0
    elif grant < floor:
        # A minimum raised above the grant its bound workers run on waits until it fits whole; bound workers
        # beyond the grant (leaving) may be taken back meanwhile.
        assert 0 < held.granted - held.granted % demand.worker_step <= grant
        assert grant <= max(held.granted, sum(held.placed.values()))
    else:
        assert floor <= grant <= max(floor, demand.want_workers)


def assert_whole_groups_and_no_place_held_for_nothing(
    result: AdmissionPlan, queued: list[Demand], admitted: list[Holding]
) -> None:
    for demand in [*queued, *(held.demand for held in admitted)]:
        grant = result.grants[demand.key]
        assert grant % demand.worker_step == 0, (demand.key, grant, demand.worker_step)
        reserved = sum(result.reserved.get(demand.key, {}).values())
        bound = sum(result.placement.get(demand.key, {}).values()) - reserved
        assert reserved <= max(grant - bound, 0), demand.key  # no place held for a worker never made


def assert_no_one_admitted_behind_a_head_takes_its_nodes(
    result: AdmissionPlan, queued: list[Demand], cluster: list[NodeCapacity]
) -> None:
    """Every job waited past a limit of 0: each one that did not fit for want of room (and would fit on an
    empty cluster) is a head, and no job behind it is admitted on a node it may use."""

    def nodes_of(demand: Demand) -> set[str]:
        return {
            node.name
            for node in cluster
            if node.accelerator == demand.accelerator
            and (demand.eligible_nodes is None or node.name in demand.eligible_nodes)
        }

    def order(demand: Demand) -> tuple[int, float, str, str]:
        return (-demand.priority, demand.created, *demand.key)

    allocatable = {node.name: node.allocatable for node in cluster}
    for head in queued:
        if result.grants[head.key] or not result.waiting[head.key].startswith("InsufficientCapacity: needs"):
            continue
        floor = head.min_workers if head.elastic else max(head.min_workers, head.want_workers)
        if sum(allocatable[name] // head.per_worker for name in nodes_of(head)) < floor:
            continue  # bigger than the cluster: keeps nothing
        # A node too small for one of the head's workers is not the head's to keep.
        kept = {name for name in nodes_of(head) if allocatable[name] >= head.per_worker}
        for later in queued:
            if later.key in result.admitted_now and order(later) > order(head):
                assert not kept & set(result.placement[later.key]), (head.key, later.key)


def assert_reserved_is_the_placement_not_bound(result: AdmissionPlan, admitted: list[Holding]) -> None:
    for job_key, reserved in result.reserved.items():
        placed = next((held.placed for held in admitted if held.demand.key == job_key), {})
        for name, places in result.placement[job_key].items():
            # What is not reserved on a node is bound there.
            assert 0 <= places - reserved.get(name, 0) <= placed.get(name, 0)
        assert all(workers > 0 for workers in reserved.values())


def test_a_shrink_frees_the_highest_indices_where_they_really_are() -> None:
    """decide removes the highest worker indices first; the plan counts the devices those free."""
    high = gang("high", 1, per_worker=8, priority=10)

    def shrink_for_high(nodes_by_index: tuple[str, ...], min_workers: int) -> AdmissionPlan:
        demand = job("low", per_worker=4, min_workers=min_workers, want=4, priority=0)
        placed = dict(Counter(nodes_by_index))
        return plan([high], [Holding(demand, 4, placed, nodes_by_index)], nodes(2))

    grouped = shrink_for_high(("node-0", "node-0", "node-1", "node-1"), min_workers=2)
    assert grouped.grants == {key("high"): 1, key("low"): 2}
    # Spread by the scheduler: removing workers 3 and 2 frees half of each node, which holds no 8-GPU
    # worker; the plan does not pretend it does.
    spread = ("node-0", "node-1", "node-0", "node-1")
    assert shrink_for_high(spread, min_workers=2).grants == {key("high"): 0, key("low"): 4}
    # With a lower minimum, workers 3, 2 and 1 go (worker 2 frees nothing useful but is above worker 1).
    deeper = shrink_for_high(spread, min_workers=1)
    assert deeper.grants == {key("high"): 1, key("low"): 1}


def test_a_worker_that_succeeded_counts_as_placed_and_keeps_no_device() -> None:
    """Worker 3 of a job succeeded and its pod is gone (decide counts it done and never runs it again).
    The pass took it for missing: it reserved a place for it, lowered an elastic job's grant on a full
    cluster (decide then dropped the succeeded worker and ran it again later), and took a gang for short
    of its minimum, keeping its nodes from the jobs behind it."""
    three = {"node-0": 1, "node-1": 1, "node-2": 1}
    elastic = replace(job("a", per_worker=8, min_workers=2, want=4), finished_workers=1)
    full = [NodeCapacity(name, H100, 8, 0) for name in three]
    # A job that cannot fit anywhere makes every pass a full one (no settled shortcut).
    waits = job("waits", per_worker=8, min_workers=2, created=NOW + 1)
    result = plan([waits], [Holding(elastic, 4, three)], full)
    assert result.grants == {key("a"): 4, key("waits"): 0}

    later = job("later", per_worker=8, created=NOW)
    free_node = [*full, NodeCapacity("node-3", H100, 8, 0)]
    result = plan([later, waits], [Holding(elastic, 4, three)], free_node)
    assert result.grants == {key("a"): 4, key("later"): 1, key("waits"): 0}
    assert key("a") not in result.reserved

    fixed = replace(gang("f", 4, per_worker=8), finished_workers=1)
    small = job("small", per_worker=4, created=NOW)
    half_free = [*full, NodeCapacity("node-4", H100, 8, 4)]
    result = plan([small, waits], [Holding(fixed, 4, three)], half_free)
    assert result.grants[key("small")] == 1
    assert "ml/f" not in result.waiting[key("waits")]
    # Lowered to 3 (replicas dropped), the grant keeps the three running workers: the finished one goes.
    lowered = replace(elastic, want_workers=3)
    assert plan([waits], [Holding(lowered, 4, three)], full).grants[key("a")] == 3


def test_a_shrink_takes_a_finished_worker_off_the_grant_first_as_decide_does() -> None:
    """decide drops a lowered grant's finished workers before any that still holds a device. Counting
    worker 2's node as freed by a grant of 3, while decide drops worker 3's slot and keeps worker 2, would
    promise that node twice."""
    high = gang("high", 1, per_worker=8, priority=10)
    low = replace(job("low", per_worker=8, min_workers=1, want=4), finished_workers=1)
    order = ("node-0", "node-1", "node-2")  # workers 0..2; worker 3 succeeded
    held = Holding(low, 4, dict(Counter(order)), order)
    result = plan([high], [held], [NodeCapacity(name, H100, 8, 0) for name in order])
    # Worker 3's slot goes first and frees nothing; worker 2's node then makes room for high.
    assert result.grants == {key("high"): 1, key("low"): 2}
    assert result.placement[key("high")] == {"node-2": 1}


def test_an_admitted_job_without_room_yet_keeps_later_jobs_off_its_devices() -> None:
    """Devices a preemption is still freeing go to the job it was for, not to whoever asks next."""
    waiting_for_room = holding(gang("high", 1, per_worker=8, priority=10), 1, {})
    node = [NodeCapacity("node-0", H100, 8, 4)]  # the victim's last pods still hold 4 devices
    later = job("later", per_worker=4, priority=0)
    result = plan([later], [waiting_for_room], node)
    assert result.grants[key("later")] == 0
    assert "ml/high" in result.waiting[key("later")]
    higher = job("higher", per_worker=4, priority=20)  # a job before it in the queue is not held back
    assert plan([higher], [waiting_for_room], node).grants[key("higher")] == 1


# -- review findings (3 December): a kept-out head, room made for a second job, the wait since requeued --


@pytest.mark.parametrize("policy", ["StrictFIFO", "BestEffortFIFO"])
def test_a_head_kept_out_in_part_by_a_short_job_still_holds_back_the_jobs_behind_it(policy: str) -> None:
    # S is admitted with one of its two workers bound on n1 and no place yet for the other (short): it keeps
    # n1 from the jobs behind it. A, the oldest queued gang, needs n1 and n3; B only one node. B was admitted
    # on n3, because A, kept out by S, never became StrictFIFO's head or a head of line past its wait.
    short = Holding(gang("S", 2, per_worker=8, created=NOW - 2000, eligible=frozenset({"n1", "n2"})), 2,
                    {"n1": 1}, ("n1",))  # fmt: skip
    head = gang("A", 2, per_worker=8, created=NOW - 1000)
    behind = gang("B", 1, per_worker=8, created=NOW - 40)
    cluster = [NodeCapacity("n1", H100, 8, 0), NodeCapacity("n2", H100, 8, 8),
               NodeCapacity("n3", H100, 8, 0), NodeCapacity("n4", H100, 8, 8)]  # fmt: skip
    result = plan([head, behind], [short], cluster, policy=policy)  # type: ignore[arg-type]
    assert admitted_keys(result) == {"S"}
    assert result.waiting[key("A")].startswith("Queued: waiting for ml/S")
    assert result.waiting[key("B")].startswith("Queued: ")


def test_a_second_job_placed_on_devices_a_preemption_frees_has_its_gang_clock_held_too() -> None:
    # H1 preempts V on n1; H2 fits in the same pass on the other half of V's devices. Both wait for V's
    # checkpoint, so V makes room for both (the scheduler then holds both gang clocks, leaving_for).
    victim = gang("V", 1, per_worker=8, created=NOW - 500)
    first = gang("H1", 1, per_worker=4, priority=5, preemption="LowerPriority", created=NOW - 20)
    second = gang("H2", 1, per_worker=4, priority=5, created=NOW - 10)
    result = plan([first, second], [Holding(victim, 1, {"n1": 1}, ("n1",))], [NodeCapacity("n1", H100, 8, 0)])
    assert result.preempt == {key("V")} and admitted_keys(result) == {"H1", "H2"}
    assert result.made_room_for[key("V")] == {key("H1"), key("H2")}


def test_a_job_that_did_not_fit_on_free_devices_makes_no_room_claim() -> None:
    # Placed on devices nobody leaves: no victim, no made_room_for entry.
    result = plan([gang("A", 1, per_worker=4)], [], nodes(1))
    assert admitted_keys(result) == {"A"} and result.made_room_for == {}


def test_a_requeued_head_has_waited_from_its_requeue_not_from_its_creation() -> None:
    # A was created a day ago and requeued (preempted, or a gang timeout) 5 s ago: it has not waited past
    # the head-of-line limit, so B behind it still goes to a node A could use.
    cluster = [NodeCapacity("n1", H100, 8, 0), NodeCapacity("n2", H100, 8, 8)]
    requeued = replace(gang("A", 2, per_worker=8, created=NOW - 86_400), queued_since=NOW - 5)
    behind = gang("B", 1, per_worker=8, created=NOW - 60)
    assert admitted_keys(plan([requeued, behind], [], cluster)) == {"B"}
    waited = replace(requeued, queued_since=NOW - 400)
    result = plan([waited, behind], [], cluster)
    assert admitted_keys(result) == set()
    assert result.waiting[key("B")] == "Queued: waiting behind ml/A, which has waited 400s (head of line)"
    # Never admitted: it has waited since it was created.
    assert plan([gang("A", 2, per_worker=8, created=NOW - 400), behind], [], cluster).waiting[key("B")] == (
        "Queued: waiting behind ml/A, which has waited 400s (head of line)"
    )


def test_leaving_workers_are_taken_back_unless_a_job_that_did_not_fit_may_use_their_nodes() -> None:
    # E runs 4 workers of 2 on n1; a scale-down to 2 waits for its checkpoint and replicas is raised back to 4.
    # H, a head past its wait, can use only n3: E's workers on n1 are no use to it, so E takes them back
    # (they were removed, and regrown on n1 by the next pass: a checkpoint and a restart for nothing).
    elastic = job("E", per_worker=2, want=4, created=NOW - 100, eligible=frozenset({"n1", "n2"}))
    elsewhere = gang("H", 1, per_worker=8, created=NOW - 1000, eligible=frozenset({"n3"}))
    cluster = [NodeCapacity("n1", H100, 8, 0), NodeCapacity("n2", H100, 8, 0), NodeCapacity("n3", H100, 8, 8)]
    leaving = Holding(elastic, 2, {"n1": 4}, ("n1",) * 4)
    assert plan([elsewhere], [leaving], cluster).grants[key("E")] == 4
    # Q, older than E and not yet past its wait, needs a whole node: the nodes of E's leaving workers are
    # what it waits for, so E does not take them back.
    spread = job("E", per_worker=4, want=4, created=NOW - 50)
    waiting = gang("Q", 1, per_worker=8, created=NOW - 100)
    two_nodes = [NodeCapacity("n1", H100, 8, 0), NodeCapacity("n2", H100, 8, 0)]
    result = plan([waiting], [Holding(spread, 2, {"n1": 2, "n2": 2}, ("n1", "n1", "n2", "n2"))], two_nodes)
    assert result.grants[key("E")] == 2 and result.waiting[key("Q")].startswith("InsufficientCapacity")


def test_leaving_workers_are_taken_back_when_their_places_would_not_make_the_waiting_job_fit() -> None:
    """E (scaled 3 -> 2, raised back to 3 during the handshake) and Q, a gang of 7 of E's priority that did
    not fit: with E's leaving worker Q has 4 places, so E takes it back. Before, E's worker was deleted
    and another created, and E read "2 of 3 workers granted: no capacity for more" with 3 devices free (an
    audit on the sandbox)."""
    elastic = job("E", per_worker=1, want=3, created=NOW - 100)
    cluster = [NodeCapacity("n1", H100, 4, 0), NodeCapacity("n2", H100, 4, 2)]
    leaving = Holding(elastic, 2, {"n1": 3}, ("n1",) * 3)
    result = plan([gang("Q", 7, per_worker=1, created=NOW - 50)], [leaving], cluster)
    assert result.grants[key("E")] == 3 and result.grants[key("Q")] == 0
    # A gang of 4 fits with that place: E does not take it back.
    fits_with_it = plan([gang("Q", 4, per_worker=1, created=NOW - 50)], [leaving], cluster)
    assert fits_with_it.grants[key("E")] == 2


def test_a_waiting_job_that_may_preempt_for_the_rest_keeps_the_leaving_workers_from_being_taken_back() -> (
    None
):
    """Q (a gang of 5 that may preempt L) has 4 places with L's devices and needs E's leaving worker's: E does
    not take it back, and once it is gone Q preempts L (a review: taken back, Q waited for good)."""
    cluster = [NodeCapacity("n1", H100, 4, 0), NodeCapacity("n2", H100, 4, 1)]
    elastic = job("E", per_worker=1, want=3, priority=5, created=NOW - 100)
    low = Holding(gang("L", 3, per_worker=1, created=NOW - 200), 3, {"n2": 3}, ("n2",) * 3)
    waiting = gang("Q", 5, per_worker=1, priority=5, preemption="LowerPriority", created=NOW - 50)
    first = plan([waiting], [Holding(elastic, 2, {"n1": 3}, ("n1",) * 3), low], cluster)
    assert first.grants[key("E")] == 2 and first.grants[key("Q")] == 0
    second = plan([waiting], [Holding(elastic, 2, {"n1": 2}, ("n1",) * 2), low], cluster)
    assert second.grants[key("Q")] == 5 and second.preempt == {key("L")}
    # Q may not preempt, and L is a fixed gang: Q can take from nobody, so E takes its worker back.
    never = replace(waiting, preemption="Never")
    assert plan([never], [Holding(elastic, 2, {"n1": 3}, ("n1",) * 3), low], cluster).grants[key("E")] == 3


def test_a_job_that_cannot_fit_even_on_an_empty_cluster_does_not_stop_workers_being_taken_back() -> None:
    # U needs 3 whole nodes of a 2-node cluster: nothing freed in a pass lets it in, so E's leaving workers
    # are taken back (they were removed and regrown).
    elastic = job("E", per_worker=2, want=4, created=NOW - 100)
    never = gang("U", 3, per_worker=8, created=NOW - 1000)
    cluster = [NodeCapacity("n1", H100, 8, 0), NodeCapacity("n2", H100, 8, 8)]
    leaving = Holding(elastic, 2, {"n1": 4}, ("n1",) * 4)
    assert plan([never], [leaving], cluster).grants[key("E")] == 4


def test_a_job_whose_leaving_workers_were_given_to_another_does_not_grow_back_over_them() -> None:
    """x was shrunk to 2 workers for y; its workers 2 and 3 on n2 are still bound (their checkpoint
    handshake open). A grant of 4 would have decide keep them on n2, the devices counted for y, which would
    then wait out its gang timeout."""
    nodes = [NodeCapacity("n1", H100, 8, 0), NodeCapacity("n2", H100, 8, 0), NodeCapacity("n3", H100, 8, 0)]
    x = Demand(key("x"), 0, 100.0, H100, per_worker=4, min_workers=1, want_workers=4, elastic=True,
               preemption="Never")  # fmt: skip
    y = Demand(key("y"), 1, 200.0, H100, per_worker=8, min_workers=1, want_workers=1, elastic=False,
               preemption="Never", eligible_nodes=frozenset({"n2"}))  # fmt: skip
    held = Holding(x, 2, {"n1": 2, "n2": 2}, ("n1", "n1", "n2", "n2"))
    plan = plan_admissions([y], [held], nodes, "BestEffortFIFO", 300.0, 600.0)
    assert plan.grants[key("y")] == 1
    assert plan.made_room_for[key("x")] == frozenset({key("y")})
    assert plan.grants[key("x")] == 2


def test_under_strict_fifo_only_the_first_job_that_does_not_fit_keeps_its_nodes_from_a_re_placed_job() -> (
    None
):
    """StrictFIFO has one head of line, the first queued job that does not fit (q1): only its nodes are kept
    from a re-placed job. The second queued job's (n2, n4) are not, so j's worker lands on n2, the one node
    with room."""
    nodes = [NodeCapacity("n1", H100, 8, 8), NodeCapacity("n2", H100, 8, 0), NodeCapacity("n4", H100, 8, 8)]
    q1 = Demand(key("q1"), 5, 10.0, H100, per_worker=8, min_workers=1, want_workers=1, elastic=False,
                preemption="Never", eligible_nodes=frozenset({"n1"}))  # fmt: skip
    q2 = Demand(key("q2"), 5, 20.0, H100, per_worker=8, min_workers=2, want_workers=2, elastic=False,
                preemption="Never", eligible_nodes=frozenset({"n2", "n4"}))  # fmt: skip
    j = Demand(key("j"), 0, 5.0, H100, per_worker=8, min_workers=1, want_workers=1, elastic=False,
               preemption="Never")  # fmt: skip
    plan = plan_admissions([q1, q2], [Holding(j, 1, {})], nodes, "StrictFIFO", 300.0, 600.0)
    assert plan.placement[key("j")] == {"n2": 1}, plan


def test_an_elastic_job_started_on_fewer_than_it_wants_is_told_why_not_its_count() -> None:
    """The reason read "Admitted: 3 workers", and the job "3 of 4 workers granted: 3 workers"."""
    result = plan([job("e", per_worker=8, min_workers=1, want=4)], [], nodes(3))
    assert result.grants[key("e")] == 3
    assert result.reasons[key("e")] == "Admitted: no room now for 1 more worker"
    whole = plan([job("w", per_worker=8, min_workers=1, want=2)], [], nodes(3))
    assert whole.reasons[key("w")] == "Admitted: 2 workers"


def test_growth_held_by_a_quota_is_told_as_the_quota_not_as_room() -> None:
    """A quota with room for one of two workers, three free nodes: "no room now for 1 more worker" sent the
    user to look for capacity that was there."""
    from decimal import Decimal

    from kubefit.decisions.quota import QuotaClaim, QuotaState

    claim = QuotaClaim(("ml", "gpu-quota", "requests.nvidia.com/gpu"), Decimal(8))
    elastic = replace(job("e", per_worker=8, min_workers=1, want=2), quota_claims=(claim,))
    quotas = QuotaState({claim.pool: Decimal(8)}, {})
    result = plan_admissions([elastic], [], nodes(3), "BestEffortFIFO", NOW, 300, quotas=quotas)
    assert result.grants[key("e")] == 1
    assert result.reasons[key("e")] == "Admitted: its namespace's ResourceQuota has no room for 1 more worker"


def test_a_minimum_that_lost_its_places_is_not_placed_where_an_admitted_job_ahead_waits() -> None:
    """The pass right after a preemption (a closed-loop simulation): `top` waits for node n9, whose second
    device a preempted job's worker still holds while it saves; `mid`, admitted behind it, lost two places
    (n2 and n7, held the same way). Re-placed on n9's free device, `mid` took the node `top` waits for, `top`
    made room again, and two lower-priority jobs preempted each other in turn. `mid` waits for n2 and n7."""
    top = Holding(
        job("top", per_worker=2, priority=3, preemption="LowerPriority"),
        1,
        {},
        reserved={"n9": 1},
        first_unbound=True,
        room_coming=True,
    )
    mid = Holding(
        gang("mid", 3, per_worker=1, priority=2, preemption="LowerPriority"),
        3,
        {},
        reserved={"n2": 1, "n6": 1, "n7": 1},
        first_unbound=True,
        room_coming=True,
    )
    cluster = [NodeCapacity("n2", H100, 1, 1), NodeCapacity("n6", H100, 1, 0), NodeCapacity("n7", H100, 1, 1)]
    cluster.append(NodeCapacity("n9", H100, 2, 1))
    result = plan([], [top, mid], cluster)
    assert "n9" not in result.reserved.get(key("mid"), {})
    assert dict(result.reserved[key("mid")]) == {"n6": 1}
    assert result.grants == {key("top"): 1, key("mid"): 3}  # both wait for what is being freed
    assert not result.preempt and not result.shrink
    # With nobody ahead waiting for n9, the free device there is mid's; so it is when top's room is not on its
    # way (it may never fit there: n9's other device held for good), and when mid makes room for its lost
    # places rather than waiting for them, only while top's room is coming.
    alone = plan([], [mid], cluster)
    assert alone.reserved[key("mid")].get("n9") == 1
    nothing_coming = plan([], [replace(top, room_coming=False), mid], cluster)
    assert nothing_coming.reserved[key("mid")].get("n9") == 1
    lost = replace(mid, reserved={}, room_coming=False)  # its places gone: it makes room instead
    low = holding(gang("low", 1, per_worker=1, priority=1), 1, {"n2": 1})
    making_room = plan([], [top, lost, low], cluster)
    assert "n9" not in making_room.reserved.get(key("mid"), {})
    assert plan([], [replace(top, room_coming=False), lost, low], cluster).reserved[key("mid")].get("n9") == 1
