"""A group whose training has ended (decisions/running.py): one of its workers succeeded.

torchrun's agents all exit once an elastic group's training ends, and the rendezvous closes behind the
first (late nodes are told it is closed): a worker created then would only fail at it. A fixed group's
ranks run every collective together, so one that succeeded means every rank finished. And the restart
limit is judged when a worker fails, not when the limit is edited."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from test_reconcile import (
    CATALOG,
    ELASTIC,
    NOW,
    condition,
    decide,
    elastic_spec,
    observe,
    pod,
    raw_spec,
    status_of,
)

from kubefit.decisions.job import Decision
from kubefit.decisions.workers import worker_slots


def reasons(decision: Decision) -> list[str]:
    return [event.reason for event in decision.events]


# ---------------------------------------------------------------------------- elastic pytorch, finished


def _running_at_two() -> tuple[dict[str, Any], Decision]:
    spec = elastic_spec(replicas=3, minimum=1, maximum=3)
    return spec, decide(observe(spec, pods=[pod(0), pod(1)], grant=2), CATALOG)


def test_an_elastic_group_with_a_succeeded_worker_is_not_scaled_up() -> None:
    spec, running = _running_at_two()
    grown = decide(observe(spec, pods=[pod(0), pod(1, "Succeeded")], status=running.status, grant=3), CATALOG)
    assert grown.create == () and grown.worker_set is None
    # Worker 0 finishes too: the group is done, nothing else runs.
    done = decide(
        observe(spec, pods=[pod(0, "Succeeded"), pod(1, "Succeeded")], status=grown.status, grant=3), CATALOG
    )
    assert status_of(done)["phase"] == "Succeeded"


def test_an_elastic_group_with_a_succeeded_worker_does_not_recreate_one_that_went() -> None:
    spec = elastic_spec(replicas=3, minimum=1, maximum=3)
    running = decide(observe(spec, pods=[pod(0), pod(1), pod(2)]), CATALOG)
    gone = decide(observe(spec, pods=[pod(0), pod(1, "Succeeded")], status=running.status), CATALOG)
    assert gone.create == ()


def test_a_worker_failing_after_the_group_succeeded_is_neither_counted_nor_replaced() -> None:
    """A late joiner (created before the success was seen) fails at the closed rendezvous: the training
    ended, so this is no restart, and at the restart limit it does not fail the job."""
    spec, running = _running_at_two()
    status = {**status_of(running), "restarts": 3}  # runPolicy.maxRestarts defaults to 3
    late = [pod(0), pod(1, "Succeeded"), pod(2, "Failed")]
    waiting = decide(observe(spec, pods=late, status=status, grant=3), CATALOG)
    assert status_of(waiting)["phase"] not in ("Failed", "Succeeded")
    assert waiting.create == () and waiting.replace == () and waiting.delete == ()
    assert status_of(waiting)["restarts"] == 3 and "WorkerFailed" not in reasons(waiting)
    finished = [pod(0, "Succeeded"), pod(1, "Succeeded"), pod(2, "Failed")]
    done = decide(observe(spec, pods=finished, status=waiting.status, grant=3), CATALOG)
    assert status_of(done)["phase"] == "Succeeded" and status_of(done)["restarts"] == 3
    assert done.delete == ()  # the failed pod is kept for its logs


def test_an_elastic_group_where_nobody_succeeded_still_replaces_a_failed_worker() -> None:
    spec = elastic_spec(replicas=2, minimum=1, maximum=2)
    running = decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG)
    failed = decide(observe(spec, pods=[pod(0), pod(1, "Failed")], status=running.status), CATALOG)
    assert [worker.name for worker in failed.replace] == ["llama-worker-1"]
    assert status_of(failed)["restarts"] == 1


# ------------------------------------------------------------------------------------ fixed, finished

FIXED_SPECS = {
    "static": raw_spec(),
    "elastic jax": elastic_spec(replicas=2, minimum=2, maximum=2, framework="jax"),
}


@pytest.mark.parametrize("spec", FIXED_SPECS.values(), ids=FIXED_SPECS.keys())
def test_a_fixed_group_that_succeeded_is_not_restarted_for_a_pod_that_went(spec: dict[str, Any]) -> None:
    """Worker 1's pod went before its success was seen (its node removed, pods cleaned up while the
    operator was down): worker 0 succeeded, so worker 1 finished too."""
    running = decide(observe(spec, pods=[pod(0, attempt=0), pod(1, attempt=0)]), CATALOG)
    decision = decide(observe(spec, pods=[pod(0, "Succeeded", attempt=0)], status=running.status), CATALOG)
    assert status_of(decision)["phase"] == "Succeeded"
    assert decision.delete == () and decision.create == ()
    assert "WorkerLost" not in reasons(decision) and status_of(decision)["gang"]["attempt"] == 0
    assert status_of(decision)["succeededWorkers"] == "0-1"


def test_a_fixed_group_that_succeeded_waits_for_its_running_workers() -> None:
    """Worker 2 succeeded: workers 0 and 1 are waited for. Once worker 0 succeeded the training is done,
    and worker 1's pod going then (before its success was seen) leaves it done, not lost."""
    spec = raw_spec(workers={"replicas": 3})
    running = decide(observe(spec, pods=[pod(index, attempt=0) for index in range(3)]), CATALOG)
    pods = [pod(0, attempt=0), pod(1, attempt=0), pod(2, "Succeeded", attempt=0)]
    waiting = decide(observe(spec, pods=pods, status=running.status), CATALOG)
    assert waiting.create == () and waiting.delete == () and "WorkerLost" not in reasons(waiting)
    assert status_of(waiting)["succeededWorkers"] == "2"
    pods = [pod(0, "Succeeded", attempt=0), pod(2, "Succeeded", attempt=0)]
    done = decide(observe(spec, pods=pods, status=waiting.status), CATALOG)
    assert status_of(done)["phase"] == "Succeeded" and "WorkerLost" not in reasons(done)
    assert status_of(done)["succeededWorkers"] == "0-2"


# framework none (the job organises itself), a static pytorch group, an elastic jax one (fixed world)
UNFINISHED = {
    "none": raw_spec(framework="none"),
    "static pytorch": raw_spec(),
    "elastic jax": elastic_spec(replicas=2, minimum=2, maximum=2, framework="jax"),
}
TERMINATING = "2025-01-01T12:01:00Z"


@pytest.mark.parametrize("going", ["gone", "terminating"])
@pytest.mark.parametrize("spec", UNFINISHED.values(), ids=UNFINISHED.keys())
def test_a_fixed_group_does_not_succeed_for_a_worker_0_that_went_before_it_finished(
    spec: dict[str, Any], going: str
) -> None:
    """Worker 1 succeeded; worker 0, still saving after the last collective (or, with framework none,
    still working), is drained: its pod deleted (terminating) or gone with its node. That read "all 2
    workers succeeded" with worker 0 in succeededWorkers. Worker 0 never finished: it is lost, and the
    group starts again (uncounted, WorkerLost), as a running fixed group that loses a worker does."""
    running = decide(observe(spec, pods=[pod(0, attempt=0), pod(1, attempt=0)]), CATALOG)
    one = decide(observe(spec, [pod(0, attempt=0), pod(1, "Succeeded", attempt=0)], running.status), CATALOG)
    assert status_of(one)["succeededWorkers"] == "1"
    worker_0 = [] if going == "gone" else [pod(0, attempt=0, deletion=TERMINATING)]
    later = NOW + timedelta(seconds=10)
    lost = decide(observe(spec, [*worker_0, pod(1, "Succeeded", attempt=0)], one.status, later), CATALOG)
    status = status_of(lost)
    assert status["phase"] != "Succeeded" and status["completionTime"] is None
    assert "0" not in (status["succeededWorkers"] or "").replace("-", ",").split(",")
    assert "WorkerLost" in reasons(lost) and "AllWorkersSucceeded" not in reasons(lost)
    assert status["restarts"] == 0 and status["gang"]["attempt"] == 1
    # The group starts again: its training did not end (Running is not TrainingEnded).
    assert condition(lost, "Running")["reason"] == "WorkersStarting"


FIXED_THREES = {
    "static": raw_spec(workers={"replicas": 3}),
    "elastic jax": elastic_spec(replicas=3, minimum=3, maximum=3, framework="jax"),
}


@pytest.mark.parametrize("replicas", [1, 3])
def test_with_framework_none_a_scale_down_takes_a_succeeded_worker_0_s_slot_first(replicas: int) -> None:
    """An elastic framework-none job whose worker 0 finished first, 1 to 3 still running: worker 0 hosts
    nothing then, and is a finished worker like any other. Scaled to 1, the job was declared Succeeded
    ("all 1 workers succeeded") and its running workers deleted without a checkpoint; scaled to 3, a
    running worker was removed and the finished worker 0 kept. Followed over several reconciles (deletes
    done, the checkpoint acknowledged), worker 0 is not started again and the lowest running ones stay."""

    def spec(count: int) -> dict[str, Any]:
        return elastic_spec(replicas=count, minimum=1, maximum=4, framework="none")

    pods = {index: pod(index, "Succeeded" if index == 0 else "Running") for index in range(4)}
    decision = decide(observe(spec(4), pods=list(pods.values())), CATALOG)
    first = True
    for step in range(5):
        asked = status_of(decision).get("checkpoint")
        acks = {p.name: 7 for p in pods.values() if p.phase == "Running"} if asked and not first else None
        later = NOW + timedelta(seconds=5 * (step + 1))
        decision = decide(observe(spec(replicas), list(pods.values()), decision.status, now=later, acks=acks), CATALOG)  # fmt: skip
        assert status_of(decision)["phase"] != "Succeeded"
        if first:
            # The finished worker's slot goes at once; running workers only after the checkpoint handshake.
            assert list(decision.delete) == ["llama-worker-0"]
            assert (decision.status.checkpoint is not None) == (replicas == 1)
            first = False
        assert decision.create == ()
        pods = {index: p for index, p in pods.items() if p.name not in decision.delete}
    assert sorted(pods) == list(range(1, replicas + 1))


@pytest.mark.parametrize("kind", FIXED_SPECS)
def test_a_rank_failing_after_worker_0_of_its_fixed_group_succeeded_neither_restarts_nor_fails_it(
    kind: str,
) -> None:
    """Worker 0 succeeded, so every rank is past the last collective and rank 0's own work is done; rank 1
    then exits non-zero (in its teardown, say). That restarted the whole finished group, counted, or at
    spec.runPolicy.maxRestarts failed the job, where an elastic pytorch group in the same state ends
    Succeeded."""
    three = FIXED_THREES[kind]
    running = decide(observe(three, pods=[pod(index, attempt=0) for index in range(3)]), CATALOG)
    pods = [pod(0, "Succeeded", attempt=0), pod(1, "Failed", attempt=0), pod(2, attempt=0)]
    waiting = decide(observe(three, pods=pods, status=running.status), CATALOG)
    assert status_of(waiting)["phase"] not in ("Failed", "Succeeded")
    assert waiting.delete == () and waiting.create == () and waiting.replace == ()
    assert status_of(waiting)["restarts"] == 0 and "WorkerFailed" not in reasons(waiting)
    assert status_of(waiting)["gang"]["attempt"] == 0
    pods[2] = pod(2, "Succeeded", attempt=0)
    done = decide(observe(three, pods=pods, status=waiting.status), CATALOG)
    assert status_of(done)["phase"] == "Succeeded" and done.delete == ()  # the failed pod stays, for its logs
    assert condition(done, "Succeeded")["message"] == (
        "the training ended: 2 of 3 workers succeeded, the others failed or never started"
    )
    # At the restart limit, the same: the job succeeded.
    last = {**FIXED_SPECS[kind], "runPolicy": {"maxRestarts": 0}}
    running = decide(observe(last, pods=[pod(0, attempt=0), pod(1, attempt=0)]), CATALOG)
    pods = [pod(0, "Succeeded", attempt=0), pod(1, "Failed", attempt=0)]
    assert status_of(decide(observe(last, pods, running.status), CATALOG))["phase"] == "Succeeded"


@pytest.mark.parametrize("kind", FIXED_SPECS)
def test_worker_0_failing_after_another_rank_succeeded_is_the_jobs_failure(kind: str) -> None:
    """Another rank's success says only that the collectives are over: rank 0 commonly saves or uploads
    after them, and its failure then is the job's (Kubeflow's PyTorchJob succeeds with its master)."""
    spec = FIXED_SPECS[kind]
    running = decide(observe(spec, pods=[pod(0, attempt=0), pod(1, attempt=0)]), CATALOG)
    pods = [pod(0, "Failed", attempt=0), pod(1, "Succeeded", attempt=0)]
    restarted = decide(observe(spec, pods=pods, status=running.status), CATALOG)
    assert status_of(restarted)["phase"] != "Succeeded" and status_of(restarted)["restarts"] == 1
    assert "WorkerFailed" in reasons(restarted)
    last = {**spec, "runPolicy": {"maxRestarts": 0}}
    running = decide(observe(last, pods=[pod(0, attempt=0), pod(1, attempt=0)]), CATALOG)
    assert status_of(decide(observe(last, pods, running.status), CATALOG))["phase"] == "Failed"


SCALED = {
    "static": (raw_spec(), raw_spec(workers={"replicas": 3}), None),
    "elastic jax": (
        elastic_spec(replicas=2, minimum=1, maximum=4, framework="jax"),
        elastic_spec(replicas=3, minimum=1, maximum=4, framework="jax"),
        None,
    ),
    # Its bounds follow replicas: 3 lies outside the node range 2:2 its workers started with.
    "elastic pytorch": (
        raw_spec(workers={"replicas": 2}, elastic=ELASTIC),
        raw_spec(workers={"replicas": 3}, elastic=ELASTIC),
        "2:2",
    ),
}


@pytest.mark.parametrize(("before", "after", "nnodes"), SCALED.values(), ids=SCALED.keys())
def test_a_group_whose_training_ended_is_not_restarted_by_a_new_count(
    before: dict[str, Any], after: dict[str, Any], nnodes: str | None
) -> None:
    """Worker 0 succeeded, worker 1 still runs; replicas go from 2 to 3. The new world size (or node range)
    restarted the group after the handshake: its finished pod deleted, status.succeededWorkers cleared, and
    the whole training run again."""
    running = decide(observe(before, pods=[pod(0, attempt=0), pod(1, attempt=0)]), CATALOG)
    finishing = [
        replace(pod(0, "Succeeded", attempt=0), nnodes=nnodes),
        replace(pod(1, attempt=0), nnodes=nnodes),
    ]
    scaled = decide(observe(after, finishing, running.status), CATALOG)
    later = decide(observe(after, finishing, scaled.status, now=NOW + timedelta(seconds=300)), CATALOG)
    for decision in (scaled, later):
        assert condition(decision, "Ready")["reason"] != "Restarting"
        assert decision.delete == () and decision.create == () and status_of(decision)["checkpoint"] is None
        assert status_of(decision)["succeededWorkers"] == "0" and status_of(decision)["desiredReplicas"] == 2
        assert status_of(decision)["gang"]["attempt"] == 0
    assert status_of(later)["message"] == (
        "the training has ended (a worker succeeded): its 2 workers finish as they are, neither restarted nor "
        "scaled to the 3 the spec asks for"
    )
    done = [replace(worker, phase="Succeeded") for worker in finishing]
    finished = decide(observe(after, done, later.status, now=NOW + timedelta(seconds=310)), CATALOG)
    assert status_of(finished)["phase"] == "Succeeded" and status_of(finished)["succeededWorkers"] == "0-1"


def test_a_fixed_group_where_nobody_succeeded_still_restarts_for_a_lost_worker() -> None:
    running = decide(observe(pods=[pod(0, attempt=0), pod(1, attempt=0)]), CATALOG)
    lost = decide(observe(pods=[pod(0, attempt=0)], status=running.status), CATALOG)
    assert "WorkerLost" in reasons(lost) and lost.delete == ("llama-worker-0",)
    assert status_of(lost)["gang"]["attempt"] == 1


# ---------------------------------------------------------------------------------- the restart limit


def test_lowering_max_restarts_below_the_restarts_so_far_fails_only_on_the_next_failure() -> None:
    running = decide(observe(pods=[pod(0), pod(1)]), CATALOG)
    status = {**status_of(running), "restarts": 2}
    spec = raw_spec(runPolicy={"maxRestarts": 1})
    healthy = decide(observe(spec, pods=[pod(0), pod(1)], status=status), CATALOG)
    assert status_of(healthy)["phase"] == "Running" and status_of(healthy)["restarts"] == 2
    failing = decide(observe(spec, pods=[pod(0), pod(1, "Failed")], status=healthy.status), CATALOG)
    failed = condition(failing, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "RestartLimitExceeded")
    assert failed["message"] == (
        "worker(s) llama-worker-1 failed after 2 restart(s); spec.runPolicy.maxRestarts is 1"
    )


def test_a_finishing_job_is_neither_suspended_nor_preempted_into_running_again() -> None:
    """A worker succeeded: the training is over. A suspend, or the pass taking the grant back, deleted the
    finished pods, cleared status.succeededWorkers and queued the job: on resume all of it ran again."""
    from test_reconcile import CATALOG, observe, pod, raw_spec, status_of

    from kubefit.decisions.job import decide

    running = decide(observe(pods=[pod(0), pod(1)]), CATALOG)
    finishing = [pod(0, "Succeeded"), pod(1)]
    suspend = raw_spec(runPolicy={"suspend": True})
    for decision in (
        decide(observe(suspend, finishing, running.status), CATALOG),
        decide(observe(raw_spec(), finishing, running.status, grant=0), CATALOG),
    ):
        assert decision.delete == () and decision.create == ()
        assert status_of(decision)["phase"] not in ("Suspended", "Queued")
        assert status_of(decision)["succeededWorkers"] == "0"
    done = [pod(0, "Succeeded"), pod(1, "Succeeded")]
    for decision in (
        decide(observe(suspend, done, running.status), CATALOG),
        decide(observe(raw_spec(), done, running.status, grant=0), CATALOG),
    ):
        assert status_of(decision)["phase"] == "Succeeded"
        assert decision.delete == ()


def test_with_framework_none_a_succeeded_worker_does_not_end_the_training_for_a_suspend() -> None:
    """framework none: the workers organise themselves, and one that succeeded says nothing of the others
    (a failure still restarts the group, docs/api.md). A suspend stops the job; it was ignored."""
    plain = raw_spec(framework="none")
    running = decide(observe(plain, pods=[pod(0), pod(1)]), CATALOG)
    finishing = [pod(0, "Succeeded"), pod(1)]
    suspended = decide(
        observe(raw_spec(framework="none", runPolicy={"suspend": True}), finishing, running.status), CATALOG
    )
    assert status_of(suspended)["phase"] == "Suspended"
    # The running worker is asked to checkpoint before it goes, as in any suspend.
    assert suspended.status.checkpoint is not None and suspended.status.checkpoint.reason == "Suspended"


def test_with_framework_none_a_worker_gone_after_worker_0_succeeded_is_lost() -> None:
    """framework none: worker 0 finishing says nothing of the others, so worker 1's pod gone is a loss."""
    spec = raw_spec(framework="none")
    running = decide(observe(spec, pods=[pod(0, attempt=0), pod(1, attempt=0)]), CATALOG)
    one = decide(observe(spec, [pod(0, "Succeeded", attempt=0), pod(1, attempt=0)], running.status), CATALOG)
    lost = decide(observe(spec, [pod(0, "Succeeded", attempt=0)], one.status), CATALOG)
    assert status_of(lost)["phase"] != "Succeeded" and "WorkerLost" in reasons(lost)


@pytest.mark.parametrize("kind", FIXED_SPECS)
def test_a_training_that_ended_with_a_worker_failed_is_not_reported_as_all_workers_succeeded(
    kind: str,
) -> None:
    """Worker 0 succeeded and worker 1 failed after it: the job succeeded, but its reason said every worker
    had (AllWorkersSucceeded) while its message said the other failed. Every worker succeeding keeps it."""
    spec = FIXED_SPECS[kind]
    running = decide(observe(spec, pods=[pod(0, attempt=0), pod(1, attempt=0)]), CATALOG)
    pods = [pod(0, "Succeeded", attempt=0), pod(1, "Failed", attempt=0)]
    ended = decide(observe(spec, pods, running.status), CATALOG)
    assert status_of(ended)["phase"] == "Succeeded"
    assert condition(ended, "Succeeded")["reason"] == "TrainingEnded"
    assert reasons(ended) == ["TrainingEnded"]
    pods = [pod(0, "Succeeded", attempt=0), pod(1, "Succeeded", attempt=0)]
    done = decide(observe(spec, pods, running.status), CATALOG)
    assert condition(done, "Succeeded")["reason"] == "AllWorkersSucceeded"
    assert reasons(done) == ["AllWorkersSucceeded"]


@pytest.mark.parametrize(
    "spec",
    [raw_spec(workers={"replicas": 4}), elastic_spec(replicas=4, minimum=2, maximum=4)],
    ids=["static", "elastic pytorch"],
)
def test_a_group_whose_training_ended_is_not_reported_as_starting(spec: dict[str, Any]) -> None:
    """Workers 0 and 1 succeeded, 2 and 3 still save: a fixed group read Running=False WorkersStarting
    (and an elastic one Running=True WorkersRunning), as if the training were still to start or going on."""
    running = decide(observe(spec, pods=[pod(index) for index in range(4)]), CATALOG)
    pods = [pod(0, "Succeeded"), pod(1, "Succeeded"), pod(2), pod(3)]
    finishing = decide(observe(spec, pods, running.status, NOW + timedelta(seconds=5)), CATALOG)
    assert condition(finishing, "Running") | {"lastTransitionTime": None} == {
        "type": "Running",
        "status": "False",
        "reason": "TrainingEnded",
        "message": "the training has ended (a worker succeeded): 2 of 4 workers succeeded, 2 still running to finish",
        "observedGeneration": 3,
        "lastTransitionTime": None,
    }
    assert reasons(finishing) == []  # no event for it


def test_a_suspend_that_waits_for_the_end_of_the_training_says_so() -> None:
    """spec.runPolicy.suspend set while the training ends: the workers finish, and nothing said why the
    job was not suspended."""
    spec = raw_spec(workers={"replicas": 3})
    running = decide(observe(spec, pods=[pod(index) for index in range(3)]), CATALOG)
    suspend = raw_spec(workers={"replicas": 3}, runPolicy={"suspend": True})
    pods = [pod(0), pod(1), pod(2, "Succeeded")]
    waiting = decide(observe(suspend, pods, running.status, NOW + timedelta(seconds=5)), CATALOG)
    assert status_of(waiting)["phase"] != "Suspended" and waiting.delete == ()
    assert status_of(waiting)["message"] == (
        "spec.runPolicy.suspend waits: the training has ended (a worker succeeded), so the workers finish "
        "instead of being stopped"
    )
    # Without the suspend, nothing to say.
    assert status_of(decide(observe(spec, pods, running.status), CATALOG))["message"] is None


def test_with_framework_none_a_worker_0_still_to_start_keeps_its_slot_as_the_pass_counts_it() -> None:
    """The scheduling pass counts a live worker 0 as kept (Holding.first_unbound, the keep order): a shrink
    of a framework-none job that dropped its starting worker 0 instead of worker 3 freed a node the pass had
    not planned, and the job it shrank for waited out its gang timeout."""
    spec = elastic_spec(replicas=4, minimum=1, maximum=4, framework="none")
    pods = [pod(0, "Pending", node=None), pod(1), pod(2), pod(3)]
    running = decide(observe(spec, pods=pods), CATALOG)
    shrunk = decide(observe(spec, pods, running.status, now=NOW + timedelta(seconds=5), grant=3), CATALOG)
    assert shrunk.status.checkpoint is not None and "llama-worker-0" not in shrunk.delete
    assert worker_slots(3, pods, (), keep_survivors=True, host_kept=False) == {0, 1, 2}
