"""An elastic pytorch job's group restarts (decisions/running.py): a new torchrun node range, or static
workers left from before elastic.enabled was turned on. The new group's workers wait for the old ones to
stop, as a fixed group's do: the old worker 0 may still host the c10d store the new agents would join."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from test_reconcile import (
    CATALOG,
    ELASTIC,
    NOW,
    condition,
    created_names,
    decide,
    elastic_spec,
    observe,
    pod,
    raw_spec,
    status_of,
)

from kubefit.decisions.job import Decision
from kubefit.decisions.observed import WorkerPod

RUNNING_TWO = {"phase": "Running", "desiredReplicas": 2, "readyReplicas": 2}
# Deleted at NOW + 2 s with the 30 s checkpoint grace of ELASTIC.
GRACE_ENDS = "2025-01-01T12:00:32Z"


def terminating(pods: list[WorkerPod]) -> list[WorkerPod]:
    return [replace(worker, terminating=True, deletion_timestamp=GRACE_ENDS) for worker in pods]


def restart_through_handshake(
    spec: dict[str, object], pods: list[WorkerPod], status: dict[str, object]
) -> Decision:
    """The restart asked for, every worker acknowledging its checkpoint, and the old group deleted."""
    asked = decide(observe(spec, pods, status), CATALOG)
    assert condition(asked, "Ready")["reason"] == "Restarting" and asked.create == ()
    assert status_of(asked)["checkpoint"]["reason"] == "Restarting"
    acks = {worker.name: 7 for worker in pods}
    stopped = decide(observe(spec, pods, asked.status, NOW + timedelta(seconds=2), acks=acks), CATALOG)
    assert set(stopped.delete) == {worker.name for worker in pods} and stopped.create == ()
    return stopped


def test_a_range_restart_creates_no_new_worker_while_an_old_one_is_still_terminating() -> None:
    """2 workers started with 2:2, scaled to 4: the new group (4:4) must not start beside the old one."""
    four = raw_spec(workers={"replicas": 4}, elastic=ELASTIC)
    old = [replace(pod(index), nnodes="2:2") for index in range(2)]
    stopped = restart_through_handshake(four, old, RUNNING_TWO)
    assert status_of(stopped)["desiredReplicas"] == 4
    saving = decide(observe(four, terminating(old), stopped.status, NOW + timedelta(seconds=3)), CATALOG)
    assert saving.create == () and saving.worker_set is None
    assert saving.requeue_after == 89.0  # when they count as stuck: a minute past their grace
    assert status_of(saving)["gang"]["since"] == GRACE_ENDS  # the new gang's clock starts once they are gone
    # Worker 1 gone, worker 0 (the store's host) still saving: still nothing, not even a new worker 1.
    one_left = terminating(old[:1])
    still = decide(observe(four, one_left, saving.status, NOW + timedelta(seconds=20)), CATALOG)
    assert still.create == ()
    # Stuck terminating (its node unreachable) it is not waited for; its name stays taken.
    stuck = decide(observe(four, one_left, saving.status, NOW + timedelta(seconds=92)), CATALOG)
    assert created_names(stuck) == ["llama-worker-1", "llama-worker-2", "llama-worker-3"]
    gone = decide(observe(four, [], saving.status, NOW + timedelta(seconds=40)), CATALOG)
    assert created_names(gone) == [f"llama-worker-{index}" for index in range(4)]
    assert gone.worker_set is not None and gone.worker_set.group.nnodes == "4:4"


def test_a_scale_up_that_keeps_the_group_does_not_wait_for_a_removed_worker() -> None:
    """Its own bounds (1:4): a worker removed by an earlier scale-down is still saving; the group goes on,
    and the new workers join the running ones at once: neither waits for the removed worker's name."""
    spec = elastic_spec(replicas=4, minimum=1, maximum=4)
    pods = [replace(pod(index), nnodes="1:4") for index in range(2)]
    removed = terminating([replace(pod(2), nnodes="1:4")])
    grown = decide(observe(spec, [*pods, *removed], {**RUNNING_TWO, "desiredReplicas": 3}), CATALOG)
    assert condition(grown, "Ready")["reason"] != "Restarting"
    assert created_names(grown) == ["llama-worker-3", "llama-worker-4"] and grown.delete == ()


def static_workers(count: int) -> list[WorkerPod]:
    return [replace(pod(index, attempt=0), world_size=count) for index in range(count)]


def test_static_workers_restart_as_an_elastic_group_once_elastic_is_turned_on() -> None:
    """Static workers (WORLD_SIZE, no node range) cannot re-form: after a scale-down the survivors would
    wait for their static world; after a scale-up, new c10d agents would look for worker 0's static store."""
    status = {"phase": "Running", "desiredReplicas": 4, "readyReplicas": 4, "gang": {"started": True}}
    shrunk = elastic_spec(replicas=2, minimum=1, maximum=4)
    stopped = restart_through_handshake(shrunk, static_workers(4), status)
    assert "static rendezvous" in condition(stopped, "Ready")["message"]
    saving = decide(
        observe(shrunk, terminating(static_workers(4)[:1]), stopped.status, NOW + timedelta(seconds=3)),
        CATALOG,
    )
    assert saving.create == ()  # no new worker 1 beside the old static worker 0
    restarted = decide(observe(shrunk, [], stopped.status, NOW + timedelta(seconds=40)), CATALOG)
    assert created_names(restarted) == ["llama-worker-0", "llama-worker-1"]
    assert restarted.worker_set is not None and restarted.worker_set.group.nnodes == "1:4"
    # Scaled up, or at the same count: the static group restarts too.
    grown = elastic_spec(replicas=4, minimum=1, maximum=4)
    restart_through_handshake(grown, static_workers(2), {**status, "desiredReplicas": 2})
    restart_through_handshake(grown, static_workers(4), status)
    # Workers made before any annotation existed are left as they are.
    unstamped = decide(observe(grown, [pod(index) for index in range(4)], status), CATALOG)
    assert condition(unstamped, "Ready")["reason"] != "Restarting"


def test_elastic_workers_restart_as_a_static_group_when_elastic_is_turned_off_and_the_count_changes() -> None:
    """The reverse toggle needs nothing new: a new count restarts a fixed group, and its new workers wait
    for the old ones (they carry no attempt: the rule for workers made before attempts were numbered)."""
    status = {"phase": "Running", "desiredReplicas": 4, "readyReplicas": 4, "gang": {"started": True}}
    elastic = [replace(pod(index), nnodes="1:4") for index in range(4)]
    two = raw_spec(workers={"replicas": 2}, elastic={"checkpointGracePeriodSeconds": 30})
    stopped = restart_through_handshake(two, elastic, status)
    saving = decide(
        observe(two, terminating(elastic[:1]), stopped.status, NOW + timedelta(seconds=3)), CATALOG
    )
    assert saving.create == ()
    restarted = decide(observe(two, [], stopped.status, NOW + timedelta(seconds=40)), CATALOG)
    assert created_names(restarted) == ["llama-worker-0", "llama-worker-1"]
    assert restarted.worker_set is not None and restarted.worker_set.fixed_world


def test_no_new_worker_starts_beside_a_worker_0_still_going_with_none_in_its_place() -> None:
    """Back from a suspend within its node range (both bounds given, so no range restart): the old worker 0
    still saves on SIGTERM and may host the c10d store of the same run id. Worker 1 started now would join
    it and fail when it goes; it waits, as a restarted group's workers do."""
    spec = elastic_spec(replicas=2, minimum=1, maximum=4)
    going = [replace(pod(0), nnodes="1:4", terminating=True, deletion_timestamp=GRACE_ENDS)]
    queued = {"phase": "Queued", "desiredReplicas": 0}
    held = decide(observe(spec, going, queued, grant=2), CATALOG)
    assert held.create == ()
    assert held.requeue_after is not None
    gone = decide(observe(spec, [], queued, grant=2), CATALOG)
    assert gone.create == (0, 1)
    # A scale-up of a running group is not held back: worker 0 runs.
    running = [replace(pod(index), nnodes="1:4") for index in (0, 1)]
    grown = decide(
        observe(elastic_spec(replicas=3, minimum=1, maximum=4), running, RUNNING_TWO, grant=3), CATALOG
    )
    assert grown.create == (2,)


def test_bounds_lowered_while_a_worker_is_missing_restart_the_group_with_the_new_range() -> None:
    """12 workers started with 12:16, worker 11 gone with its node; minReplicas and maxReplicas lowered to
    2 and 8. Every reconcile crashed (StopIteration): the restart kept the old world of 12, one more than
    runs, and no free index was left for it below 9 (names no wider than the new ceiling's)."""
    spec = elastic_spec(replicas=4, minimum=2, maximum=8)
    old = [replace(pod(index), nnodes="12:16") for index in range(11)]
    status = {"phase": "Running", "desiredReplicas": 12, "readyReplicas": 12, "gang": {"started": True}}
    stopped = restart_through_handshake(spec, old, status)
    assert status_of(stopped)["desiredReplicas"] == 4
    restarted = decide(observe(spec, [], stopped.status, NOW + timedelta(seconds=40)), CATALOG)
    assert created_names(restarted) == [f"llama-worker-{index}" for index in range(4)]
    assert restarted.worker_set is not None and restarted.worker_set.group.nnodes == "2:8"
