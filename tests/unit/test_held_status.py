"""What the status says of a job whose spec became invalid or stopped fitting (decisions/held.py), and the
events of a fixed group's failure.

Before, workers held through such an edit read Running=False ("no workers are started"), phase Pending and
desiredReplicas 0 while they trained; a job never admitted read Admitted=False "waiting for the operator's
scheduling pass", a pass that never saw it; and one failure of a fixed group posted its words twice.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from test_reconcile import CATALOG, NOW, condition, observe, pod, raw_spec, status_of

from kubefit.decisions.job import JobObservation, ReconcileSettings, decide

# A limit lowered under a running job makes its spec invalid (InvalidSpec) without any edit of it.
LOWERED_LIMIT = ReconcileSettings(max_workers_per_job=1)
TOO_BIG = {"parameters": "70B"}  # no longer fits the job's device: DoesNotFit
TOO_FEW = {
    "model": {"parameters": "70B"},
    "workers": {"replicas": 1, "maxReplicas": 1},
    "training": {"sharding": "zero3"},
}  # memory needs more workers than its bounds allow: TooFewWorkers


def _later(observation: JobObservation, minutes: int, generation: int) -> JobObservation:
    return replace(observation, now=NOW + timedelta(minutes=minutes), generation=generation)


def test_workers_held_through_an_invalid_then_too_big_spec_still_read_as_running() -> None:
    pods = [pod(0), pod(1)]
    running = decide(observe(pods=pods), CATALOG)
    started = condition(running, "Running")
    assert started["status"] == "True"

    invalid = decide(_later(observe(raw_spec(), pods, running.status), 1, 4), CATALOG, LOWERED_LIMIT)
    too_big = decide(_later(observe(raw_spec(model=TOO_BIG), pods, invalid.status), 2, 5), CATALOG)
    for held, generation in ((invalid, 4), (too_big, 5)):
        kept = condition(held, "Running")
        assert (kept["status"], kept["lastTransitionTime"]) == ("True", started["lastTransitionTime"])
        assert "no workers" not in kept["message"] and kept["message"].startswith("2/2 workers running")
        assert condition(held, "Ready")["status"] == "False"
        assert status_of(held)["phase"] == "Scaling"
        assert status_of(held)["desiredReplicas"] == 2 and status_of(held)["workers"] == "2/2"
        admitted = condition(held, "Admitted")
        assert (admitted["status"], admitted["observedGeneration"]) == ("True", generation)
        assert held.delete == () and held.create == () and held.demand is None
    assert "its running workers (2) are left alone" in condition(too_big, "Ready")["message"]

    # Put right before any scheduling pass: back with the workers it kept, Running never having moved.
    fixed = decide(_later(observe(raw_spec(), pods, too_big.status, grant=None), 3, 6), CATALOG)
    assert status_of(fixed)["phase"] == "Running"
    assert condition(fixed, "Running")["lastTransitionTime"] == started["lastTransitionTime"]
    assert fixed.delete == () and fixed.create == ()


def test_a_held_fixed_group_short_of_a_worker_does_not_read_as_running() -> None:
    """A fixed group trains only whole: one of its two workers failed while the spec was invalid."""
    pods = [replace(pod(0), world_size=2), replace(pod(1), world_size=2)]
    running = decide(observe(pods=pods), CATALOG)
    struck = [pods[0], replace(pod(1, "Failed"), world_size=2)]
    held = decide(_later(observe(raw_spec(), struck, running.status), 1, 4), CATALOG, LOWERED_LIMIT)
    running_now = condition(held, "Running")
    assert (running_now["status"], running_now["reason"]) == ("False", "WorkersStarting")
    assert running_now["message"].startswith("1/2 workers running")
    assert status_of(held)["phase"] == "Scaling" and status_of(held)["desiredReplicas"] == 2
    assert held.delete == () and held.create == ()


def test_a_job_not_admitted_is_not_queued_while_its_spec_is_invalid_or_blocked() -> None:
    queued = decide(observe(grant=None), CATALOG)
    assert (condition(queued, "Admitted")["status"], condition(queued, "Admitted")["reason"]) == (
        "False",
        "Queued",
    )
    blocked = (
        (raw_spec(), LOWERED_LIMIT, "InvalidSpec"),
        (raw_spec(model=TOO_BIG), ReconcileSettings(), "DoesNotFit"),
        (raw_spec(**TOO_FEW), ReconcileSettings(), "TooFewWorkers"),
    )
    for spec, settings, reason in blocked:
        held = decide(_later(observe(spec, [], queued.status, grant=None), 1, 4), CATALOG, settings)
        admitted = condition(held, "Admitted")
        assert (admitted["status"], admitted["reason"]) == ("False", reason)
        assert "not queued until the spec is fixed" in admitted["message"]
        assert condition(held, "Ready")["reason"] == reason
        assert status_of(held)["phase"] == "Pending" and held.demand is None
        assert not [event for event in held.events if event.reason in ("Admitted", "Queued")]

        # Fixed: queued again, and admitted by the next pass as before.
        fixed = decide(_later(observe(raw_spec(), [], held.status, grant=None), 2, 5), CATALOG)
        assert (condition(fixed, "Admitted")["reason"], status_of(fixed)["phase"]) == ("Queued", "Queued")
        assert fixed.demand is not None
        admitted_again = decide(_later(observe(raw_spec(), [], fixed.status), 3, 5), CATALOG)
        assert condition(admitted_again, "Admitted")["status"] == "True"
        assert admitted_again.create == (0, 1)


def test_a_fixed_group_failure_is_one_event_and_a_restart_for_a_new_size_still_has_its_own() -> None:
    running = decide(observe(pods=[pod(0), pod(1)]), CATALOG)
    for pods in ([pod(0), pod(1, "Failed")], [pod(0)]):  # a worker failed; a worker gone
        struck = decide(_later(observe(pods=pods, status=running.status), 1, 3), CATALOG)
        assert condition(struck, "Ready")["reason"] == "Restarting"
        told = [event for event in struck.events if "the group cannot run without it" in event.message]
        assert [(event.type, event.reason) for event in told] in (
            [("Warning", "WorkerFailed")],
            [("Warning", "WorkerLost")],
        ), struck.events

    # A restart for a new world size has no worker event: its Restarting transition is the event.
    grace = {"checkpointGracePeriodSeconds": 30}
    three = raw_spec(workers={"replicas": 3}, elastic=grace)
    asked = decide(_later(observe(three, [pod(0), pod(1)], running.status), 1, 4), CATALOG)
    assert condition(asked, "Ready")["reason"] == "Restarting"
    assert [event.type for event in asked.events if event.reason == "Restarting"] == ["Normal"]


def test_a_fixed_groups_running_workers_keep_their_auto_device_count_when_the_planner_now_chooses_another() -> (
    None
):
    # Workers created with 4 devices each (an operator version that split tensorParallel 8 over two workers
    # of 4); this planner keeps a TP group on one node and chooses 8. Re-planned under the running workers,
    # status.sizing and the demand said 8 per worker: the scheduling pass counted 16 devices for 8 held.
    training = {"tensorParallel": 8}
    pinned = raw_spec(
        training=training, resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 4}
    )
    workers = [replace(pod(index), world_size=2) for index in range(2)]
    created = decide(observe(pinned, pods=workers), CATALOG)
    assert created.status.sizing is not None and created.status.sizing.accelerators_per_worker == 4
    auto = raw_spec(
        training=training, resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": "auto"}
    )
    assert decide(observe(auto), CATALOG).status.sizing.accelerators_per_worker == 8  # afresh: 8
    later = decide(
        observe(auto, pods=workers, status=created.status, now=NOW + timedelta(minutes=5)), CATALOG
    )
    assert later.status.sizing is not None and later.status.sizing.accelerators_per_worker == 4
    assert later.demand is not None and later.demand.per_worker == 4
    assert later.delete == () and later.create == ()


def test_an_invalid_or_too_big_spec_keeps_the_restart_count() -> None:
    """status.restarts is what runPolicy.maxRestarts is counted against: a spec made invalid, too big or
    short of workers for a while (with or without running workers) must not give the job a fresh budget."""
    pods = [pod(0), pod(1)]
    running = decide(observe(pods=pods), CATALOG)
    restarted = {**status_of(running), "restarts": 2, "lastFailureTime": "2025-01-01T11:00:00Z"}
    for workers in (pods, []):
        invalid = decide(_later(observe(raw_spec(), workers, restarted), 1, 4), CATALOG, LOWERED_LIMIT)
        too_big = decide(_later(observe(raw_spec(model=TOO_BIG), workers, restarted), 1, 4), CATALOG)
        too_few = decide(_later(observe(raw_spec(**TOO_FEW), workers, restarted), 1, 4), CATALOG)
        for held in (invalid, too_big, too_few):
            assert status_of(held)["restarts"] == 2
        fixed = decide(_later(observe(raw_spec(), workers, status_of(invalid)), 2, 5), CATALOG)
        assert status_of(fixed)["restarts"] == 2


def test_a_fixed_group_that_lost_a_worker_while_its_spec_was_invalid_restarts_once_it_is_fixed() -> None:
    # The held path counted the gone worker out of readyReplicas; fixed, the group read as never all
    # running, and a lone new worker 1 was created beside a worker 0 mid-training.
    w0, w1 = (replace(pod(index, attempt=0), world_size=2) for index in (0, 1))  # as created: 2 ranks
    running = decide(observe(pods=[w0, w1]), CATALOG)
    invalid = decide(_later(observe(raw_spec(), [w0, w1], running.status), 1, 4), CATALOG, LOWERED_LIMIT)
    gone = decide(_later(observe(raw_spec(), [w0], invalid.status), 2, 4), CATALOG, LOWERED_LIMIT)
    assert status_of(gone)["readyReplicas"] == 1 and gone.create == ()
    fixed = decide(_later(observe(raw_spec(), [w0], gone.status), 3, 5), CATALOG)
    assert fixed.create == () and fixed.delete == ("llama-worker-0",)
    assert status_of(fixed)["gang"]["attempt"] == 1


def test_a_suspend_on_an_invalid_spec_waits_for_a_training_that_has_ended() -> None:
    # As with a valid spec: worker 0 succeeded, so the training is over. Stopping the group deleted the
    # succeeded worker too and cleared succeededWorkers, and the resume ran the whole training again.
    w0, w1 = pod(0, "Succeeded", attempt=0), pod(1, attempt=0)
    running = decide(observe(pods=[pod(0, attempt=0), w1]), CATALOG)
    ended = decide(_later(observe(raw_spec(), [w0, w1], running.status), 1, 3), CATALOG)
    suspended = raw_spec(runPolicy={"suspend": True})
    held = decide(_later(observe(suspended, [w0, w1], ended.status), 2, 4), CATALOG, LOWERED_LIMIT)
    assert held.delete == () and status_of(held)["phase"] != "Suspended"
    assert status_of(held)["message"].startswith("spec.runPolicy.suspend waits: the training has ended")
    assert status_of(held)["succeededWorkers"] == "0"
    # The last worker succeeded too: the job succeeded, its training kept (the suspend stopped every worker,
    # cleared succeededWorkers and, resumed, ran it all again).
    both = [w0, replace(w1, phase="Succeeded")]
    done = decide(_later(observe(suspended, both, held.status), 3, 4), CATALOG, LOWERED_LIMIT)
    assert status_of(done)["phase"] == "Succeeded" and done.delete == ()
    assert status_of(done)["succeededWorkers"] == "0-1"
    # A worker that failed beside the succeeded one: nothing is stopped; it is judged once the spec is
    # valid again (held workers' failures are), and the training having ended there, the job succeeds.
    failed = [w0, replace(w1, phase="Failed")]
    kept = decide(_later(observe(suspended, failed, ended.status), 2, 4), CATALOG, LOWERED_LIMIT)
    assert kept.delete == () and status_of(kept)["phase"] != "Suspended"
    valid = decide(_later(observe(suspended, failed, kept.status), 3, 5), CATALOG)
    assert status_of(valid)["phase"] == "Succeeded"
    # framework none: one process done says nothing of the others, so the suspend stops the workers.
    free = raw_spec(framework="none", runPolicy={"suspend": True})
    stopped = decide(_later(observe(free, [w0, w1], ended.status), 2, 4), CATALOG, LOWERED_LIMIT)
    assert status_of(stopped)["phase"] == "Suspended" or stopped.delete
