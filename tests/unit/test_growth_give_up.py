"""A grown worker that never binds is given up after the gang timeout (decisions/running.py,
_growth_given_up).

An elastic job training at or above its floor is granted one more worker; kube-scheduler cannot bind it for a
reason the scheduling pass does not count (CPU, memory, a pod limit, a taint it does not see). The gang timeout
no longer applies (the floor is placed), and the pass reserved the unbound worker's place in every pass: for
24 h a queued job of the same priority stayed InsufficientCapacity beside a node with free devices. Now the
worker is deleted once it has been unbound for spec.scheduling.gangTimeoutSeconds since its creation, the
job asks for no more than it runs for one more gang timeout (status.gang.since of a started gang), and the
pass gives the node to whoever fits there.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from test_reconcile import CATALOG, ELASTIC, NOW, decide, events_of, observe, pod, raw_spec, status_of

from kubefit.api.units import rfc3339
from kubefit.decisions.admission import Demand, Holding, NodeCapacity, plan_admissions
from kubefit.decisions.job import Decision

TIMEOUT = 60
SPEC = raw_spec(
    workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 2},
    elastic=ELASTIC,
    scheduling={"gangTimeoutSeconds": TIMEOUT},
)
STATUS = {"phase": "Scaling", "desiredReplicas": 2, "readyReplicas": 1, "gang": {"started": True}}
GROWN_AT = NOW - timedelta(seconds=30)  # worker 1 created then, for the node the pass reserved
GROWN = pod(1, "Pending", created=rfc3339(GROWN_AT))  # not bound to a node
GIVE_UP_AT = GROWN_AT + timedelta(seconds=TIMEOUT)
ACCELERATOR = "nvidia-h100-80gb"
NODES = [NodeCapacity("n0", ACCELERATOR, 1, 0), NodeCapacity("n1", ACCELERATOR, 1, 0)]
QUEUED = Demand(("team-a", "fixed"), 0, NOW.timestamp(), ACCELERATOR, 1, 1, 1, False, "Never")


def _stored(decision: Decision) -> dict[str, Any]:
    """The status as stored: the merge patch's nulls remove fields."""
    return {key: value for key, value in status_of(decision).items() if value is not None}


def _given_up() -> Decision:
    return decide(observe(SPEC, [pod(0), GROWN], STATUS, GIVE_UP_AT, grant=2), CATALOG)


def _holding(decision: Decision) -> Holding:
    """The elastic job as the next pass sees it: worker 0 bound on n0, worker 1's place still reserved on n1."""
    assert decision.demand is not None
    return Holding(decision.demand, granted=2, placed={"n0": 1}, nodes_by_index=("n0",), reserved={"n1": 1})


def test_an_unbound_grown_worker_is_kept_until_the_gang_timeout() -> None:
    before = decide(
        observe(SPEC, [pod(0), GROWN], STATUS, GIVE_UP_AT - timedelta(seconds=1), grant=2), CATALOG
    )
    assert before.delete == () and ("Normal", "CapacityChanged") not in events_of(before)
    assert before.demand is not None and before.demand.want_workers == 2
    assert status_of(before)["desiredReplicas"] == 2


def test_an_unbound_grown_worker_is_deleted_after_the_gang_timeout_without_a_checkpoint() -> None:
    given_up = _given_up()
    assert given_up.delete == ("llama-worker-1",) and given_up.create == ()
    assert given_up.checkpoint_request is None  # it never ran: nobody is asked to save for it
    event = next(event for event in given_up.events if event.reason == "CapacityChanged")
    assert "llama-worker-1" in event.message and f"within {TIMEOUT} s" in event.message
    status = status_of(given_up)
    assert status["desiredReplicas"] == 1 and status["gang"]["started"] is True
    assert status["gang"]["since"] == rfc3339(GIVE_UP_AT)
    # The grant drops to what runs: the pass is asked for one worker, and the job wakes when it may grow.
    assert given_up.demand is not None and given_up.demand.want_workers == 1
    assert given_up.requeue_after == TIMEOUT
    admitted = next(item for item in status["conditions"] if item["type"] == "Admitted")
    assert admitted["status"] == "True" and "llama-worker-1 found no node" in admitted["message"]


def test_the_floor_is_not_given_up_the_gang_timeout_covers_it() -> None:
    floor_two = raw_spec(
        workers={"replicas": 2, "minReplicas": 2, "maxReplicas": 2},
        elastic=ELASTIC,
        scheduling={"gangTimeoutSeconds": TIMEOUT},
    )
    waiting = {**STATUS, "gang": {"started": False}}
    decision = decide(observe(floor_two, [pod(0), GROWN], waiting, GIVE_UP_AT, grant=2), CATALOG)
    assert decision.delete == () and ("Normal", "CapacityChanged") not in events_of(decision)
    assert status_of(decision)["gang"]["started"] is False and status_of(decision)["desiredReplicas"] == 2


def test_a_grown_worker_that_binds_before_the_timeout_is_kept() -> None:
    bound = pod(1, "Pending", node="node-b", created=rfc3339(GROWN_AT))  # bound, still pulling its image
    later = decide(
        observe(SPEC, [pod(0), bound], STATUS, GIVE_UP_AT + timedelta(seconds=600), grant=2), CATALOG
    )
    assert later.delete == () and ("Normal", "CapacityChanged") not in events_of(later)
    assert later.demand is not None and later.demand.want_workers == 2
    assert status_of(later)["desiredReplicas"] == 2


def test_the_job_does_not_grow_again_until_one_more_gang_timeout() -> None:
    given_up = _given_up()
    # The pass has not lowered the grant yet (or grants 2 again): worker 1 is not made again.
    soon = decide(
        observe(SPEC, [pod(0)], _stored(given_up), GIVE_UP_AT + timedelta(seconds=5), grant=2), CATALOG
    )
    assert soon.create == () and soon.delete == ()
    assert soon.demand is not None and soon.demand.want_workers == 1
    assert status_of(soon)["gang"]["since"] == rfc3339(GIVE_UP_AT) and soon.requeue_after == TIMEOUT - 5
    held = next(item for item in status_of(soon)["conditions"] if item["type"] == "Admitted")
    assert "1 of 2 workers granted: a worker above the floor found no node" in held["message"]
    # One gang timeout later it asks for its growth again, and the hold is cleared.
    after = GIVE_UP_AT + timedelta(seconds=TIMEOUT)
    again = decide(observe(SPEC, [pod(0)], _stored(soon), after, grant=1), CATALOG)
    assert again.demand is not None and again.demand.want_workers == 2
    assert status_of(again)["gang"].get("since") is None
    grown = decide(observe(SPEC, [pod(0)], _stored(again), after + timedelta(seconds=1), grant=2), CATALOG)
    assert grown.create == (1,)


def test_the_next_pass_does_not_offer_the_node_to_the_job_again() -> None:
    plan = plan_admissions([], [_holding(_given_up())], NODES, "BestEffortFIFO", GIVE_UP_AT.timestamp(), 300)
    assert plan.grants[("team-a", "llama")] == 1
    assert not plan.reserved.get(("team-a", "llama"))


def test_another_job_can_use_the_node_once_the_grown_worker_is_given_up() -> None:
    before = decide(
        observe(SPEC, [pod(0), GROWN], STATUS, GIVE_UP_AT - timedelta(seconds=1), grant=2), CATALOG
    )
    kept = plan_admissions([QUEUED], [_holding(before)], NODES, "BestEffortFIFO", NOW.timestamp(), 300)
    assert kept.grants[QUEUED.key] == 0  # still reserved for worker 1 before its timeout
    freed = plan_admissions([QUEUED], [_holding(_given_up())], NODES, "BestEffortFIFO", NOW.timestamp(), 300)
    assert freed.grants[QUEUED.key] == 1 and freed.reserved[QUEUED.key] == {"n1": 1}
    assert freed.grants[("team-a", "llama")] == 1


def test_a_floor_raised_during_the_hold_is_started_at_once() -> None:
    """The hold stops growth above the floor, not a raised floor: minReplicas 1 -> 2 during the hold, and the
    pass grants 2. The job kept 1 worker until the hold ended, saying it waited for a grant it had."""
    raised = raw_spec(
        workers={"replicas": 3, "minReplicas": 2, "maxReplicas": 3},
        elastic=ELASTIC,
        scheduling={"gangTimeoutSeconds": TIMEOUT},
    )
    soon = decide(
        observe(raised, [pod(0)], _stored(_given_up()), GIVE_UP_AT + timedelta(seconds=5), grant=2), CATALOG
    )
    assert soon.create == (1,) and status_of(soon)["desiredReplicas"] == 2


def test_a_shrink_by_the_pass_during_the_hold_is_the_pass_s_to_explain() -> None:
    """Two of three workers placed, the third given up; the pass then shrinks the job to 1 (a higher priority
    job): the message is the pass's, not 'found no node' (both workers were placed)."""
    three = raw_spec(
        workers={"replicas": 3, "minReplicas": 1, "maxReplicas": 3},
        elastic=ELASTIC,
        scheduling={"gangTimeoutSeconds": TIMEOUT},
    )
    grown = pod(2, "Pending", created=rfc3339(GROWN_AT))
    status = {**STATUS, "desiredReplicas": 3, "readyReplicas": 2}
    given_up = decide(observe(three, [pod(0), pod(1), grown], status, GIVE_UP_AT, grant=3), CATALOG)
    assert given_up.delete == ("llama-worker-2",)
    shrunk = decide(
        observe(three, [pod(0), pod(1)], _stored(given_up), GIVE_UP_AT + timedelta(seconds=5), grant=1),
        CATALOG,
    )
    assert shrunk.checkpoint_request is not None  # worker 1 ran: asked to save before it goes
    admitted = next(item for item in status_of(shrunk)["conditions"] if item["type"] == "Admitted")
    assert "found no node" not in admitted["message"] and "found no node" not in status_of(shrunk)["message"]


def test_the_hold_is_still_said_once_the_pass_grants_what_runs() -> None:
    """After the give-up the pass lowers the grant to the worker placed: the job still runs fewer than its
    replicas because of the hold, and says so (it said only 'wants 1')."""
    given_up = _given_up()
    lowered = decide(
        observe(SPEC, [pod(0)], _stored(given_up), GIVE_UP_AT + timedelta(seconds=5), grant=1), CATALOG
    )
    assert lowered.create == () and "grows again from" in (status_of(lowered)["message"] or "")
