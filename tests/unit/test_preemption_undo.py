"""Undoing a preemption (controller/preemption_undo.py) through the real Scheduler: when the pass takes a
preempted job back with its running workers, and when it lets the preemption run on because another job
would have had those devices, their quota, or a worker of the victim's group."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from test_scheduler import (
    FakeCluster,
    _preempted_for_urgent,
    _urgent_placed_on_added_nodes,
    demand,
    node,
    sync_scheduler,
    worker,
)

from kubefit.api.resource import JobKey
from kubefit.controller.cluster import ClusterView
from kubefit.controller.scheduler import Scheduler
from kubefit.decisions.admission import Demand
from kubefit.decisions.node_match import ANYWHERE, Placement
from kubefit.decisions.quota import Quota, QuotaClaim

QUOTA_GPU = "requests.nvidia.com/gpu"


def granted(scheduler: Scheduler, key: JobKey) -> int:
    return scheduler.snapshot()[key].workers or 0


def fixed(name: str, created: float, **options: object) -> Demand:
    return replace(demand(name, created=created, **options), elastic=False)  # type: ignore[arg-type]


def whole_nodes_urgent(created: float = 2) -> Demand:
    return replace(
        fixed("urgent", created, per_worker=8, min_workers=2, want=2, priority=100),
        preemption="LowerPriority",
    )


def test_a_preemption_goes_on_while_a_job_of_higher_priority_waits_for_the_victims_quota() -> None:
    """The victim (priority 0) holds all 16 GPUs of its namespace's quota; w (priority 50, same namespace)
    waits for that quota; urgent, of another namespace, preempts the victim and then runs on nodes added
    meanwhile. Once the victim's workers were gone w would be admitted: the victim is not taken back."""
    victim, urgent, waiting = ("ns", "victim"), ("ns2", "urgent"), ("ns", "w")
    used = {QUOTA_GPU: Decimal(16)}
    claim = (QuotaClaim(("ns", "gpus", QUOTA_GPU), Decimal(4)),)
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])

    def view() -> ClusterView:
        quota = [Quota("gpus", {QUOTA_GPU: Decimal(16)}, dict(used))]
        return replace(cluster.view(), quotas=lambda namespace: quota if namespace == "ns" else [])

    scheduler, _ = sync_scheduler()
    cluster.workers[victim] = [worker("victim", index, "n1" if index < 2 else "n2") for index in range(4)]
    scheduler.grant(victim, cluster.workers[victim], admitted_with=4)
    scheduler.offer(
        victim, replace(fixed("victim", 1, min_workers=4, want=4), quota_claims=claim), ANYWHERE, view()
    )
    w_demand = replace(
        fixed("w", 2, per_worker=4, min_workers=2, want=2, priority=50), quota_claims=claim, quota_exempt=True
    )
    scheduler.offer(waiting, w_demand, ANYWHERE, view())
    scheduler.offer(urgent, replace(whole_nodes_urgent(3), key=urgent), ANYWHERE, view())
    assert granted(scheduler, victim) == 0 and granted(scheduler, urgent) == 2
    cluster.nodes += [node("n3"), node("n4")]
    scheduler.request("node", view())
    cluster.workers[urgent] = [worker("urgent", 0, "n3"), worker("urgent", 1, "n4")]
    cluster.per_worker[urgent] = 8
    scheduler.request("pod", view())
    assert granted(scheduler, victim) == 0 and granted(scheduler, waiting) == 0
    cluster.workers[victim] = []
    used[QUOTA_GPU] = Decimal(0)
    scheduler.request("pod", view())
    assert granted(scheduler, waiting) == 2


def test_a_victim_the_kept_plan_would_shrink_for_another_job_is_not_taken_back() -> None:
    """q (priority 50) arrives while the victim saves: taken back, the victim would be shrunk for it at once
    (and told its workers were kept). The preemption runs on, and q gets the devices when they are free."""
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    queued = ("ns", "q")
    scheduler.offer(
        queued, fixed("q", 3, per_worker=4, min_workers=2, want=2, priority=50), ANYWHERE, cluster.view()
    )
    _urgent_placed_on_added_nodes(cluster, scheduler, urgent)
    scheduler.request("pod", cluster.view())
    assert granted(scheduler, victim) == 0
    assert "preemption undone" not in (scheduler.snapshot()[victim].reason or "")


def test_a_victim_of_a_deleted_job_is_taken_back_once_the_job_that_wanted_its_devices_is_gone_too() -> None:
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    queued = ("ns", "q")
    scheduler.offer(
        queued, fixed("q", 3, per_worker=8, min_workers=2, want=2, priority=50), ANYWHERE, cluster.view()
    )
    scheduler.forget(urgent, cluster.view())
    assert granted(scheduler, victim) == 0  # q would have the victim's devices
    scheduler.forget(queued, cluster.view())
    assert granted(scheduler, victim) == 4


def test_victims_whose_devices_nobody_else_wants_are_taken_back_without_the_others() -> None:
    """v1 runs on pool a, v2 on pool b; both are preempted for urgent, which then runs on pool c. q (priority
    50, pool b only) waits for v2's node: v2's preemption runs on, v1's is undone."""
    urgent, queued = ("ns", "urgent"), ("ns", "q")
    pool_a, pool_b, pool_c = {"pool": "a"}, {"pool": "b"}, {"pool": "c"}
    cluster = FakeCluster(nodes=[node("n1", labels=pool_a), node("n2", labels=pool_b)])
    scheduler, _ = sync_scheduler()
    v1, v2 = two_one_node_victims(cluster, scheduler)
    only_b = Placement(pool_b, (), ())
    scheduler.offer(
        queued, fixed("q", 3, per_worker=8, min_workers=1, want=1, priority=50), only_b, cluster.view()
    )
    cluster.nodes += [node("n3", labels=pool_c), node("n4", labels=pool_c)]
    scheduler.request("node", cluster.view())
    cluster.workers[urgent] = [worker("urgent", 0, "n3"), worker("urgent", 1, "n4")]
    cluster.per_worker[urgent] = 8
    scheduler.request("pod", cluster.view())
    assert (granted(scheduler, v1), granted(scheduler, v2), granted(scheduler, queued)) == (1, 0, 0)


def test_a_victim_whose_running_workers_are_no_whole_grant_is_not_taken_back() -> None:
    """Its TP x PP groups are 2 workers and one of its 4 failed meanwhile; a fixed group whose replicas were
    lowered during its handshake. Granted back, the first would lose a running worker at once and the second
    would restart every one, while told its workers were kept."""
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    scheduler.offer(victim, replace(demand("victim", created=1), worker_step=2), ANYWHERE, cluster.view())
    cluster.workers[victim][3] = worker("victim", 3, "n2", phase="Failed")
    _urgent_placed_on_added_nodes(cluster, scheduler, urgent)
    scheduler.request("pod", cluster.view())
    assert granted(scheduler, victim) == 0

    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    scheduler.offer(victim, fixed("victim", 1, min_workers=2, want=2), ANYWHERE, cluster.view())
    _urgent_placed_on_added_nodes(cluster, scheduler, urgent)
    scheduler.request("pod", cluster.view())
    assert granted(scheduler, victim) == 0


def test_a_job_made_room_for_that_no_pass_has_decided_since_a_restart_still_needs_its_places() -> None:
    """A restarted operator whose passes go on without urgent's demand (its reconciles failing): urgent's
    workers wait Pending for the victim's devices, so the victim is not taken back."""
    victim, urgent = ("ns", "victim"), ("ns", "urgent")
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    cluster.workers[victim] = [worker("victim", index, "n1" if index < 2 else "n2") for index in range(4)]
    cluster.workers[urgent] = [worker("urgent", index, None, phase="Pending") for index in (0, 1)]
    cluster.per_worker[urgent] = 8
    scheduler, _ = sync_scheduler()
    scheduler.grant(victim, cluster.workers[victim], admitted_with=None)
    scheduler.grant(urgent, cluster.workers[urgent], admitted_with=2, room_from=frozenset({victim}))
    scheduler.offer(victim, demand("victim", created=1), ANYWHERE, cluster.view())  # urgent has not offered
    assert granted(scheduler, victim) == 0


@pytest.mark.parametrize("how", ["removed", "not ready"])
def test_a_victim_with_a_worker_on_a_node_gone_from_the_pass_is_not_taken_back(how: str) -> None:
    """Its worker there is lost: taken back, the victim recreated it at once and was preempted again for the
    job whose own worker that node took with it (a closed-loop simulation)."""
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    # Its minimum is all four: a minimum that lost its places stays granted (until its gang timeout).
    scheduler.offer(victim, demand("victim", created=1, min_workers=4), ANYWHERE, cluster.view())
    _urgent_placed_on_added_nodes(cluster, scheduler, urgent)
    n2 = next(facts for facts in cluster.nodes if facts.name == "n2")
    if how == "removed":
        cluster.nodes.remove(n2)
        scheduler.node_changed(None, "n2", False, cluster.view())
    else:
        scheduler.node_changed(n2, "n2", False, cluster.view())
    scheduler.request("pod", cluster.view())
    assert granted(scheduler, victim) == 0


def two_one_node_victims(cluster: FakeCluster, scheduler: Scheduler) -> tuple[JobKey, JobKey]:
    """v1 on n1 and v2 on n2, 8 GPUs each (priority 0), both preempted for urgent (2 x 8, priority 100)."""
    v1, v2 = ("ns", "v1"), ("ns", "v2")
    for key, where, created in ((v1, "n1", 1.0), (v2, "n2", 1.5)):
        scheduler.offer(
            key, fixed(key[1], created, per_worker=8, min_workers=1, want=1), ANYWHERE, cluster.view()
        )
        cluster.workers[key] = [worker(key[1], 0, where)]
        cluster.per_worker[key] = 8
    scheduler.request("pod", cluster.view())
    scheduler.offer(("ns", "urgent"), whole_nodes_urgent(), ANYWHERE, cluster.view())
    assert granted(scheduler, v1) == granted(scheduler, v2) == 0
    return v1, v2


def test_a_victim_is_not_taken_back_onto_a_node_a_higher_job_gets_once_another_victims_workers_are_gone() -> (
    None
):
    """q (priority 50, 2 whole nodes) waits while urgent runs on nodes added meanwhile; v2's handshake ended
    first (its worker terminates). Both victims' nodes are q's once their workers are gone: v1 is not taken
    back, or q would wait behind a job of lower priority until it finished."""
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    scheduler, _ = sync_scheduler()
    v1, v2 = two_one_node_victims(cluster, scheduler)
    queued, urgent = ("ns", "q"), ("ns", "urgent")
    scheduler.offer(
        queued, fixed("q", 3, per_worker=8, min_workers=2, want=2, priority=50), ANYWHERE, cluster.view()
    )
    cluster.nodes += [node("n3"), node("n4")]
    scheduler.request("node", cluster.view())
    cluster.workers[urgent] = [worker("urgent", 0, "n3"), worker("urgent", 1, "n4")]
    cluster.per_worker[urgent] = 8
    cluster.workers[v2] = [worker("v2", 0, "n2", terminating=True)]
    scheduler.request("pod", cluster.view())
    scheduler.request("pod", cluster.view())  # the pass after tries a victim alone
    assert granted(scheduler, v1) == 0
    cluster.workers[v1] = cluster.workers[v2] = []
    scheduler.request("pod", cluster.view())
    assert granted(scheduler, queued) == 2


def test_an_elastic_victim_with_room_to_grow_is_taken_back_at_its_running_count_and_grows_after() -> None:
    victim, urgent = ("ns", "victim"), ("ns", "urgent")
    cluster = FakeCluster(nodes=[node("n1")])
    scheduler, _ = sync_scheduler()
    scheduler.offer(victim, demand("victim", created=1, min_workers=2, want=4), ANYWHERE, cluster.view())
    cluster.workers[victim] = [worker("victim", index, "n1") for index in range(2)]
    scheduler.request("pod", cluster.view())
    one_node = replace(whole_nodes_urgent(), min_workers=1, want_workers=1)
    scheduler.offer(urgent, one_node, ANYWHERE, cluster.view())
    assert granted(scheduler, victim) == 0
    cluster.nodes += [node("n2"), node("n3")]
    scheduler.request("node", cluster.view())
    (where,) = scheduler.grant(urgent, []).reserved
    cluster.workers[urgent] = [worker("urgent", 0, where)]
    cluster.per_worker[urgent] = 8
    scheduler.request("pod", cluster.view())
    taken_back = scheduler.snapshot()[victim]
    assert taken_back.workers == 2 and "preemption undone" in (taken_back.reason or "")
    scheduler.request("pod", cluster.view())
    assert granted(scheduler, victim) == 4  # the next pass grows it on the node left free


def test_a_bind_asks_for_no_pass_for_a_preemption_whose_victim_has_no_running_worker_left() -> None:
    cluster, scheduler, victim, urgent = _preempted_for_urgent()
    cluster.workers[victim] = [worker("victim", index, "n2", terminating=True) for index in (2, 3)]
    scheduler.request("pod", cluster.view())
    cluster.workers[urgent] = [worker("urgent", 0, "n1")]
    cluster.per_worker[urgent] = 8
    assert scheduler.worker_bound(urgent, "n1", cluster.view())  # counted there: no pass


def test_devices_another_workload_holds_beside_a_victim_are_not_counted_as_coming_free() -> None:
    """n1 holds the victim's worker (4 GPUs) and another workload's pod (4 GPUs). q (priority 50) needs a
    whole node of 8: once the victim's worker is gone n1 has 4 free, not 8, so q would not start there and
    taking the victim back deprives it of nothing."""
    victim, urgent, queued = ("ns", "victim"), ("ns", "urgent"), ("ns", "q")
    cluster = FakeCluster(nodes=[node("n1")], others={"n1": 4})
    scheduler, _ = sync_scheduler()
    scheduler.offer(victim, demand("victim", created=1, min_workers=1, want=1), ANYWHERE, cluster.view())
    cluster.workers[victim] = [worker("victim", 0, "n1")]
    scheduler.request("pod", cluster.view())
    four = replace(whole_nodes_urgent(), per_worker=4, min_workers=1, want_workers=1)
    scheduler.offer(urgent, four, ANYWHERE, cluster.view())
    assert granted(scheduler, victim) == 0
    scheduler.offer(
        queued, fixed("q", 3, per_worker=8, min_workers=1, want=1, priority=50), ANYWHERE, cluster.view()
    )
    cluster.nodes.append(node("n2"))
    scheduler.request("node", cluster.view())
    assert scheduler.grant(urgent, []).reserved == {"n2": 1}
    cluster.workers[urgent] = [worker("urgent", 0, "n2")]
    scheduler.request("pod", cluster.view())
    assert granted(scheduler, victim) == 1 and granted(scheduler, queued) == 0
