"""A job whose spec became invalid, or stopped fitting, while its workers run (decisions/held.py).

Its workers are left alone until the spec is put right, but the job still suspends, succeeds and says when
it is resumed. Before, an invalid job ignored `suspend` (the webhook lets it through for that very job), and
a job whose workers all finished while it was invalid or too big stayed Pending for good.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from test_reconcile import CATALOG, NOW, condition, observe, pod, raw_spec, status_of

from kubefit.decisions.job import ReconcileSettings, decide

# A limit lowered under a running job makes its spec invalid (InvalidSpec) without any edit of it.
LOWERED_LIMIT = ReconcileSettings(max_workers_per_job=1)
TOO_BIG = {"parameters": "70B"}  # no longer fits the job's device: DoesNotFit


def _running() -> dict:
    decision = decide(observe(pods=[pod(0), pod(1)]), CATALOG)
    assert status_of(decision)["phase"] == "Running"
    return status_of(decision)


def test_an_invalid_job_is_suspended_with_the_handshake_then_its_workers_go() -> None:
    suspend = raw_spec(runPolicy={"suspend": True}, elastic={"checkpointGracePeriodSeconds": 30})
    asked = decide(observe(suspend, [pod(0), pod(1)], _running()), CATALOG, LOWERED_LIMIT)
    assert status_of(asked)["phase"] == "Suspended"
    assert condition(asked, "Suspended")["status"] == "True"
    assert asked.delete == () and asked.checkpoint_request is not None  # asked to save first
    assert condition(asked, "Sized")["reason"] == "InvalidSpec"
    later = observe(suspend, [pod(0), pod(1)], asked.status, NOW + timedelta(seconds=31))
    gone = decide(later, CATALOG, LOWERED_LIMIT)
    assert sorted(gone.delete) == ["llama-worker-0", "llama-worker-1"]


def test_an_invalid_job_without_workers_is_suspended_too() -> None:
    decision = decide(observe(raw_spec(runPolicy={"suspend": True}), []), CATALOG, LOWERED_LIMIT)
    assert condition(decision, "Suspended")["status"] == "True"
    assert status_of(decision)["phase"] == "Suspended"


def test_workers_that_all_succeed_while_the_spec_is_invalid_or_too_big_finish_the_job() -> None:
    done = [pod(0, "Succeeded"), pod(1, "Succeeded")]
    invalid = decide(observe(raw_spec(), done, _running()), CATALOG, LOWERED_LIMIT)
    too_big = decide(observe(raw_spec(model=TOO_BIG), done, _running()), CATALOG)
    for finished in (invalid, too_big):
        assert status_of(finished)["phase"] == "Succeeded"
        assert condition(finished, "Succeeded")["status"] == "True"
        assert status_of(finished)["completionTime"] is not None
        assert finished.delete == ()


def test_a_held_job_with_a_worker_still_running_or_failed_is_left_alone() -> None:
    """A worker still running keeps the job Scaling (it has run: test_held_status.py); with none left
    running the job is Pending."""
    for pods, phase in (
        ([pod(0, "Succeeded"), pod(1)], "Scaling"),
        ([pod(0, "Failed"), pod(1)], "Scaling"),
        ([pod(0, "Failed")], "Pending"),
    ):
        decision = decide(observe(raw_spec(), pods, _running()), CATALOG, LOWERED_LIMIT)
        assert status_of(decision)["phase"] == phase, pods
        assert decision.delete == () and decision.create == ()


def test_a_suspended_job_resumed_into_an_invalid_or_too_big_spec_is_no_longer_suspended() -> None:
    suspended = status_of(decide(observe(raw_spec(runPolicy={"suspend": True}), []), CATALOG))
    assert any(item["type"] == "Suspended" and item["status"] == "True" for item in suspended["conditions"])
    for spec, settings in ((raw_spec(), LOWERED_LIMIT), (raw_spec(model=TOO_BIG), ReconcileSettings())):
        resumed = decide(observe(spec, [], suspended), CATALOG, settings)
        assert condition(resumed, "Suspended")["status"] == "False"
        assert condition(resumed, "Suspended")["reason"] == "Resumed"


def test_an_invalid_scale_keeps_the_running_count_in_the_status() -> None:
    """`kubectl scale` (or an HPA) to a count the webhook lets through but the operator refuses (not whole
    TP groups): the running workers stay, and the status says they run (desiredReplicas and the Workers
    column read 0 and 2/-)."""
    spec = raw_spec(
        training={"tensorParallel": 2},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
        workers={"replicas": 3},
    )
    running = {"phase": "Running", "desiredReplicas": 2, "readyReplicas": 2}
    pods = [replace(pod(index), world_size=2) for index in range(2)]
    decision = decide(observe(spec, pods, running), CATALOG)
    status = status_of(decision)
    assert decision.delete == () and decision.create == ()
    ready = next(item for item in status["conditions"] if item["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert status["desiredReplicas"] == 2 and status["workers"] == "2/2"
