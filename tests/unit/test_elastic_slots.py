"""Which workers an elastic job keeps when its grant falls (decisions/workers.py worker_slots).

The case from tests/e2e/test_elastic.py's flake (1 run in 19): a node took workers 1 and 2 with it, the
scheduling pass saw the loss in two steps (grant 4 -> 3 -> 2), and the first step created a new worker 1
that had no room. Keeping "the lowest existing indices" then kept that unscheduled 1 and removed the
running 3: the job ran one worker for seconds, below its minimum of two.
"""

from __future__ import annotations

from kubefit.api.units import parse_rfc3339
from kubefit.builders.naming import widest_index
from kubefit.decisions.elastic import HandshakeInput, HandshakeState, Removal, checkpoint_handshake
from kubefit.decisions.observed import WorkerPod
from kubefit.decisions.workers import scale_workers, worker_slots


def worker(index: int, phase: str = "Running", node: str | None = "gpu-a") -> WorkerPod:
    return WorkerPod(f"job-worker-{index}", index, f"uid-{index}", phase, node)


def test_a_running_survivor_is_kept_over_a_new_worker_that_has_no_room() -> None:
    pods = [worker(0), worker(3), worker(1, "Pending", None)]
    slots = worker_slots(2, pods, (), keep_survivors=True)
    assert slots == {0, 3}
    changes = scale_workers(slots, pods)
    assert changes.delete == ("job-worker-1",) and changes.create == ()


def test_running_then_bound_then_unscheduled_then_lowest_index() -> None:
    pods = [
        worker(0),
        worker(5),
        worker(2, "Pending", None),
        worker(4, "Pending", "gpu-b"),
        worker(1, "Pending", None),
    ]
    assert worker_slots(2, pods, (), keep_survivors=True) == {0, 5}
    assert worker_slots(3, pods, (), keep_survivors=True) == {0, 5, 4}  # bound before unscheduled
    assert worker_slots(4, pods, (), keep_survivors=True) == {0, 5, 4, 1}  # then the lowest index
    # Among running workers the lowest indices stay, as before.
    assert worker_slots(2, [worker(0), worker(3), worker(1)], (), keep_survivors=True) == {0, 1}


def test_a_worker_that_succeeded_is_dropped_first_whether_its_pod_is_there_or_gone() -> None:
    # The scheduling pass counts a succeeded worker placed on no node and takes it off a lowered grant
    # first (Demand.finished_workers); kept by index like a bound one, worker 3, still starting, went
    # instead, and the node the pass had counted as kept came free.
    pods = [worker(0), worker(1, "Succeeded"), worker(2), worker(3, "Pending")]
    assert worker_slots(3, pods, frozenset(), keep_survivors=True) == {0, 2, 3}
    gone = [worker(0), worker(2), worker(3, "Pending")]
    assert worker_slots(3, gone, frozenset(), keep_survivors=True, finished=(1,)) == {0, 2, 3}
    assert worker_slots(4, pods, frozenset(), keep_survivors=True) == {0, 1, 2, 3}


def test_removing_only_the_unscheduled_worker_needs_no_checkpoint_wait() -> None:
    pods = [worker(0), worker(3), worker(1, "Pending", None)]
    doomed = scale_workers(worker_slots(2, pods, (), keep_survivors=True), pods).delete
    state = checkpoint_handshake(
        HandshakeInput(
            removal=Removal("CapacityChanged", 2, doomed),
            running=[pod for pod in pods if pod.ready],
            acks={},
            previous=None,
            requests=0,
            grace_seconds=300,
            now=parse_rfc3339("2026-01-01T00:00:00Z"),
            generation=1,
        )
    )
    assert state.proceed and state.checkpoint is None  # no running worker is removed: at once


def test_a_fixed_size_job_still_runs_indices_zero_to_n() -> None:
    pods = [worker(0), worker(3), worker(1, "Pending", None)]
    assert worker_slots(2, pods, (), keep_survivors=False) == {0, 1}


def test_an_operator_restarted_during_the_wait_gives_the_workers_the_whole_grace_from_its_offer() -> None:
    """The request opened at 00:00 with 120 s of grace; the operator was down from 00:00:01 to 00:03 and
    offers it again only then: the workers, who could not see it meanwhile, get until 00:05."""
    pods = [WorkerPod(f"j-worker-{index}", index, f"u{index}", "Running", "n1", False) for index in (0, 1)]
    opened = checkpoint_handshake(
        HandshakeInput(
            removal=Removal("ScaledDown", 1, ("j-worker-1",)), running=pods, acks={}, previous=None,
            requests=0, grace_seconds=120, now=parse_rfc3339("2026-01-01T00:00:00Z"), generation=1,
        )
    )  # fmt: skip
    assert opened.checkpoint is not None

    def at(now: str, told_at: str | None) -> HandshakeState:
        return checkpoint_handshake(
            HandshakeInput(
                removal=Removal("ScaledDown", 1, ("j-worker-1",)), running=pods, acks={},
                previous=opened.checkpoint, requests=1, grace_seconds=120, now=parse_rfc3339(now),
                generation=1, told_at=parse_rfc3339(told_at) if told_at else None,
            )
        )  # fmt: skip

    assert at("2026-01-01T00:03:00Z", None).proceed  # told when opened: the grace is over
    waiting = at("2026-01-01T00:03:00Z", "2026-01-01T00:03:00Z")
    assert not waiting.proceed and waiting.checkpoint == opened.checkpoint.model_copy(
        update={"acknowledged": 0, "workers": 2}
    )
    assert not at("2026-01-01T00:04:59Z", "2026-01-01T00:03:00Z").proceed
    assert at("2026-01-01T00:05:00Z", "2026-01-01T00:03:00Z").proceed


def leaving(index: int) -> WorkerPod:
    pod = worker(index)
    return WorkerPod(pod.name, pod.index, pod.uid, pod.phase, pod.node_name, terminating=True)


def test_a_scale_up_right_after_a_scale_down_does_not_wait_for_the_index_still_terminating() -> None:
    # Scaled 3 -> 2 -> 3: worker 2 is still saving on SIGTERM. Its name stays taken until its pod is gone
    # (up to the grace period); an elastic pytorch job's ranks come from torchrun, so the new worker is 3.
    pods = [worker(0), worker(1), leaving(2)]
    slots = worker_slots(3, pods, (), keep_survivors=True, new_index_limit=99)
    assert slots == {0, 1, 3}
    assert scale_workers(slots, pods).create == (3,)
    # Two leaving, two wanted: neither index is taken.
    pods = [worker(0), leaving(1), leaving(2)]
    assert worker_slots(3, pods, (), keep_survivors=True, new_index_limit=99) == {0, 3, 4}


def test_a_fixed_world_waits_for_its_rank_and_worker_0_is_always_kept() -> None:
    # jax's JAX_PROCESS_ID is the index: ranks 0..n-1 are reused whatever is still terminating.
    pods = [worker(0), worker(1), leaving(2)]
    assert worker_slots(3, pods, (), keep_survivors=True) == {0, 1, 2}
    assert scale_workers(frozenset({0, 1, 2}), pods).create == ()
    # Worker 0 hosts torchrun's store: its slot stays, whatever is terminating.
    assert 0 in worker_slots(2, [leaving(0), worker(1)], (), keep_survivors=True, new_index_limit=99)


def test_a_terminating_index_is_reused_only_when_no_other_name_fits() -> None:
    # The job-name checks passed the names up to the ceiling's last index: a new index adds no digit.
    assert widest_index(9) == 9 and widest_index(10) == 9 and widest_index(11) == 99 and widest_index(1) == 9
    pods = [*(worker(index) for index in range(8)), leaving(8), leaving(9)]
    # 0-7 run; 8 and 9 are terminating: a ninth worker has only those indices left, and takes the lowest.
    slots = worker_slots(9, pods, (), keep_survivors=True, new_index_limit=widest_index(10))
    assert slots == {*range(8), 8}


def test_a_count_beyond_the_free_indices_below_the_limit_gets_those_there_are() -> None:
    """It raised StopIteration, on every reconcile of the job."""
    pods = [worker(index) for index in range(3)]
    assert worker_slots(5, pods, (), keep_survivors=True, new_index_limit=3) == {0, 1, 2, 3}


def test_a_worker_on_a_not_ready_node_goes_first_and_without_a_checkpoint_wait() -> None:
    # Node n1 went NotReady: the pass counts nothing there and lowers the grant from 4 to 3. The pod on n1
    # still reads Running until the node controller evicts it; the healthy worker 3 must stay.
    from dataclasses import replace

    from test_reconcile import CATALOG, decide, observe, pod, raw_spec, status_of

    spec = raw_spec(
        workers={"replicas": 4, "minReplicas": 2, "maxReplicas": 4},
        elastic={"enabled": True, "checkpointGracePeriodSeconds": 60},
    )
    pods = [pod(index, node=f"n{index}") for index in range(4)]
    running = status_of(decide(observe(spec, pods, grant=4), CATALOG))
    lost = [replace(item, node_lost=True) if item.index == 1 else item for item in pods]
    shrunk = decide(observe(spec, lost, running, grant=3), CATALOG)
    # Removed at once: a worker that cannot be reached cannot acknowledge a checkpoint request.
    assert shrunk.delete == ("llama-worker-1",) and shrunk.status.checkpoint is None
    assert shrunk.status.ready_replicas == 3


def test_the_reconciler_shows_workers_on_not_ready_nodes_as_not_running() -> None:
    from kubefit.controller.reconciler import _on_lost_nodes

    pods = [worker(0, node="n0"), worker(1, node="n1"), worker(2, "Pending", None)]
    marked = _on_lost_nodes(pods, frozenset({"n1"}))
    assert [item.ready for item in marked] == [True, False, False]
    assert marked[1].node_lost and _on_lost_nodes(pods, frozenset()) is pods
