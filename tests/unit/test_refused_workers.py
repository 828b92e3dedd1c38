"""Workers whose creates the API server refuses (Pod Security Admission, an admission webhook, a quota: a
400, 403 or 422), remembered per job by the reconciler (_JobState.refused, .refusal) and passed to decide
(JobObservation.refused_creates, .refusal).

A job of a high priority whose every worker is refused preempted a lower-priority job, held the grant until
its gang timeout, then asked again after its backoff and preempted that job once more, every cycle; its
GangTimeout message ("0 of 2 admitted workers were placed ...") hid the refusal. Now a gang whose needed
workers are refused again at a retry gives its grant back at once, says why, and its demand takes no room
from other jobs (Demand.makes_room) until a create of its workers goes through or its spec changes.

An elastic job whose worker above its floor was refused kept that worker's device reserved for ever: the
give-up after the gang timeout (running._growth_given_up) only saw unplaced pods, and a refused worker has
none. Now a refused worker is given up like an unplaced one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import test_reconciler
from test_admission import gang, key, low_jobs, nodes, plan
from test_reconciler import KEY, NAMESPACE, QUOTA_403, Harness, api_error, harness, job_manifest

from kubefit.api.units import parse_rfc3339, rfc3339
from kubefit.controller import reconciler as reconciler_module
from kubefit.controller import refusals as refusals_module
from kubefit.controller.kube import PodNameTaken, ServiceTaken
from kubefit.decisions.inventory import NodeFacts
from kubefit.decisions.job import JobObservation

__all__ = ["harness"]  # the fixture, by import

OTHER = (NAMESPACE, "other")
PSA = api_error(
    403,
    'pods "llama-worker-0" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation '
    '!= false (container "trainer" must set securityContext.allowPrivilegeEscalation=false)',
)


@pytest.fixture(autouse=True)
def one_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """One node of 2 GPUs: two workers of 1 GPU fill it."""
    node = NodeFacts("h0", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {"nvidia.com/gpu": "2"})
    monkeypatch.setattr(test_reconciler, "NODES", [node])


def run_on_h0(harness: Harness, job: str) -> None:
    for name, pod in list(harness.kube.pods.items()):
        if name.startswith(f"{job}-worker-"):
            harness.kube.pods[name] = replace(pod, phase="Running", node_name="h0")


def refused_since(harness: Harness, seconds: float) -> None:
    """The job's refusals in a row began `seconds` earlier than they did (time passes, retried meanwhile)."""
    state = harness.reconciler._jobs[KEY]
    earlier = timedelta(seconds=seconds)
    refusals = state.refusals
    refusals.refused = {
        name: (first - earlier, message) for name, (first, message) in refusals.refused.items()
    }
    # And the jobs that made room for it left that much earlier too (their departure counts as a start).
    entry = harness.reconciler.scheduler._entries.get(KEY)
    if entry is not None and entry.places_freed_at is not None:
        entry.places_freed_at -= earlier
    gang = harness.kube.jobs["llama"].get("status", {}).get("gang") or {}
    if gang.get("roomFreedAt"):  # as its status recorded it for a restarted operator
        gang["roomFreedAt"] = rfc3339(parse_rfc3339(gang["roomFreedAt"]) - earlier)


def both_reconciled(harness: Harness, rounds: int = 3) -> None:
    for _ in range(rounds):
        harness.reconcile("update", key=OTHER)
        harness.reconcile("update")


def preempting_for_refused_workers(harness: Harness, refusals: dict[str, Exception]) -> None:
    """The other job runs on the node; llama, of a higher priority that may preempt it, is created, and the
    API server refuses the creates of its workers named in `refusals`."""
    harness.kube.jobs["other"] = job_manifest("other", replicas=2)
    harness.reconcile(key=OTHER)
    run_on_h0(harness, "other")
    harness.reconcile("pod", key=OTHER)
    for name, error in refusals.items():
        harness.kube.fail[("create_pod", name)] = error
    llama = job_manifest(replicas=2)
    llama["spec"]["scheduling"] = {"priority": 100, "preemption": "LowerPriority"}
    harness.kube.jobs["llama"] = llama
    harness.reconcile()


def test_a_gang_refused_by_admission_gives_its_grant_back_at_once_and_preempts_no_one_again(
    harness: Harness,
) -> None:
    preempting_for_refused_workers(harness, {"llama-worker-0": PSA, "llama-worker-1": PSA})
    both_reconciled(harness)  # the other job's workers leave for it; its own are refused
    assert len(harness.events("Preempted")) == 1
    assert harness.condition("Admitted")["status"] == "True"  # refused at tries moments apart: kept
    refused_since(harness, 10)  # refused again at the retry, 5 s after the first refusal
    harness.reconcile("retry")
    admitted, ready = harness.condition("Admitted"), harness.condition("Ready")
    assert (admitted["status"], admitted["reason"]) == ("False", "GangTimeout")
    assert admitted["message"].startswith(
        'the API server refused worker llama-worker-0: pods "llama-worker-0'
    )
    assert "taking no room from other jobs" in admitted["message"]
    assert ready["message"] == admitted["message"] and "placed on a node" not in ready["message"]
    assert not [name for name in harness.kube.pods if name.startswith("llama-")]
    both_reconciled(harness)  # the other job is admitted again
    run_on_h0(harness, "other")
    harness.reconcile("pod", key=OTHER)
    assert harness.condition("Admitted", "other")["status"] == "True"
    harness.kube.jobs["llama"]["status"]["gang"]["retryAfter"] = "2000-01-01T00:00:00Z"  # the backoff ended
    harness.reconcile("timer")
    both_reconciled(harness)
    assert len(harness.events("Preempted")) == 1  # asked again without taking the other job's room
    assert harness.condition("Admitted", "other")["status"] == "True"
    assert sorted(harness.kube.pods) == ["other-worker-0", "other-worker-1"]
    assert harness.condition("Admitted")["status"] == "False"


def test_a_refusal_that_gave_the_grant_back_takes_no_room_after_an_operator_restart_either(
    harness: Harness,
) -> None:
    # The refusal was remembered by the operator process alone: one restarted while the job waited out its
    # backoff preempted the other job again for workers the API server refused again. status.gang.refused
    # now carries it over, until a create of its workers goes through.
    preempting_for_refused_workers(harness, {"llama-worker-0": PSA, "llama-worker-1": PSA})
    both_reconciled(harness)
    refused_since(harness, 10)
    harness.reconcile("retry")  # refused again: the grant goes back
    refused = harness.kube.jobs["llama"]["status"]["gang"]["refused"]
    assert refused.startswith("the API server refused worker llama-worker-0: ") and "PodSecurity" in refused
    both_reconciled(harness)
    run_on_h0(harness, "other")
    harness.reconcile("pod", key=OTHER)
    assert len(harness.events("Preempted")) == 1
    restarted(harness)
    harness.kube.jobs["llama"]["status"]["gang"]["retryAfter"] = "2000-01-01T00:00:00Z"  # backoff over
    both_reconciled(harness)
    assert len(harness.events("Preempted")) == 1  # no second preemption for the refused workers
    assert sorted(harness.kube.pods) == ["other-worker-0", "other-worker-1"]
    assert harness.kube.jobs["llama"]["status"]["gang"]["refused"] == refused
    # The cause put right and room free: the creates go through, and the refusal is over.
    del (
        harness.kube.fail[("create_pod", "llama-worker-0")],
        harness.kube.fail[("create_pod", "llama-worker-1")],
    )
    del harness.kube.jobs["other"]
    for name in ("other-worker-0", "other-worker-1"):
        del harness.kube.pods[name]
    harness.reconcile("delete", key=OTHER)
    harness.reconcile("timer")
    harness.reconcile("update")
    assert sorted(harness.kube.pods) == ["llama-worker-0", "llama-worker-1"]
    assert harness.kube.jobs["llama"]["status"]["gang"].get("refused") is None


def restarted(harness: Harness) -> None:
    """The operator restarted: a new reconciler, nothing in memory."""
    for job_key in (KEY, OTHER):
        harness.reconciler.forget(job_key)
    harness.reconciler = reconciler_module.Reconciler(
        harness.kube, test_reconciler.CATALOG, harness.metrics, None
    )


def test_a_refusal_is_recalled_only_for_its_generation_and_a_job_without_live_workers(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An edit while the operator was down may have put the cause right: the job is sized and admitted as new.
    seen = observations(monkeypatch)
    harness.kube.fail[("create_pod", "*")] = PSA  # no worker is created: none is live
    job = job_manifest(replicas=2)
    job["metadata"]["generation"] = 3
    job["status"] = {"observedGeneration": 2, "gang": {"refused": "the API server refused worker x: no"}}
    harness.kube.jobs["llama"] = job
    harness.reconcile()
    assert seen[-1].refusal is None or seen[-1].refusal[0] != "the API server refused worker x: no"
    job["status"] = {"observedGeneration": 3, "gang": {"refused": "the API server refused worker x: no"}}
    restarted(harness)
    harness.reconcile()
    assert seen[-1].refusal is not None and seen[-1].refusal[0] == "the API server refused worker x: no"


def test_a_restart_just_after_the_creates_went_through_recalls_no_refusal(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pass that creates the workers writes its status before the creates, still naming the refusal; an
    # operator restarted before the next pass recalled it for a job whose workers run, which then took no
    # room for the rest of its run (a review of this change).
    seen = observations(monkeypatch)
    job = job_manifest(replicas=2)
    job["status"] = {"observedGeneration": 1, "gang": {"refused": "the API server refused worker x: no"}}
    harness.kube.jobs["llama"] = job
    harness.reconcile()
    assert sorted(harness.kube.pods) == ["llama-worker-0", "llama-worker-1"]
    harness.kube.jobs["llama"]["status"]["gang"]["refused"] = "the API server refused worker x: no"
    restarted(harness)
    harness.reconcile("update")
    assert seen[-1].refusal is None
    assert harness.kube.jobs["llama"]["status"]["gang"].get("refused") is None


def refused_and_queued(harness: Harness) -> None:
    """The other job runs on the node; llama, of a higher priority, preempted it once, was refused twice by
    Pod Security, gave its grant back, and its backoff is over: it waits, taking no room."""
    preempting_for_refused_workers(harness, {"llama-worker-0": PSA, "llama-worker-1": PSA})
    both_reconciled(harness)
    refused_since(harness, 10)
    harness.reconcile("retry")  # refused again: the grant goes back
    both_reconciled(harness)
    run_on_h0(harness, "other")
    harness.reconcile("pod", key=OTHER)
    harness.kube.jobs["llama"]["status"]["gang"]["retryAfter"] = "2000-01-01T00:00:00Z"  # backoff over
    both_reconciled(harness)
    assert len(harness.events("Preempted")) == 1
    assert not [name for name in harness.kube.pods if name.startswith("llama-")]


def test_a_refused_job_asks_with_a_dry_run_create_and_takes_room_again_once_the_cause_is_gone(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While refused the job takes no room, so with none free no create of its workers could ever show that
    # the cause was put right: only the other job ending, or an edit, let it in (a review of this change).
    monkeypatch.setattr(refusals_module, "REFUSAL_TRY_SECONDS", 0.0)
    refused_and_queued(harness)
    tried = len(harness.calls("try_pod"))
    assert tried  # asked, still refused: no room taken (refused_and_queued)
    # The cause put right (the policy changed): the next try is admitted, and the job takes room again.
    del (
        harness.kube.fail[("create_pod", "llama-worker-0")],
        harness.kube.fail[("create_pod", "llama-worker-1")],
    )
    harness.reconcile("timer")
    assert len(harness.calls("try_pod")) == tried + 1
    both_reconciled(harness, rounds=4)
    run_on_h0(harness, "llama")
    harness.reconcile("pod")
    assert len(harness.events("Preempted")) == 2
    llama = sorted(name for name in harness.kube.pods if name.startswith("llama-"))
    assert llama == ["llama-worker-0", "llama-worker-1"]
    assert harness.kube.jobs["llama"]["status"]["gang"].get("refused") is None


def test_a_dry_run_create_is_tried_at_most_every_refusal_try_seconds(harness: Harness) -> None:
    refused_and_queued(harness)
    tried = len(harness.calls("try_pod"))
    assert tried == 1  # the passes above came within REFUSAL_TRY_SECONDS of it
    state = harness.reconciler._jobs[KEY]
    assert state.refusals.tried_at is not None
    state.refusals.tried_at -= refusals_module.REFUSAL_TRY_SECONDS
    harness.reconcile("update")
    assert len(harness.calls("try_pod")) == 2 and state.refusals.refusal is not None
    assert len(harness.events("Preempted")) == 1


def test_an_elastic_jobs_refused_worker_above_its_floor_gives_its_device_back_after_the_gang_timeout(
    harness: Harness,
) -> None:
    job = job_manifest(replicas=2, minReplicas=1, maxReplicas=2)
    job["spec"]["elastic"] = {"enabled": True, "checkpointGracePeriodSeconds": 0}
    job["spec"]["framework"] = "pytorch"
    job["spec"]["scheduling"] = {"gangTimeoutSeconds": 60}
    harness.kube.jobs["llama"] = job
    harness.kube.fail[("create_pod", "llama-worker-1")] = QUOTA_403
    harness.reconcile()
    run_on_h0(harness, "llama")
    harness.reconcile("update")  # the floor runs: the gang started; worker 1 is refused again
    assert harness.reconciler.scheduler.snapshot()[KEY].workers == 2
    refused_since(harness, 61)
    harness.reconcile("update")
    assert harness.reconciler.scheduler.snapshot()[KEY].workers == 1
    (event,) = harness.events("CapacityChanged")
    assert event[2].startswith("the API server refused worker llama-worker-1 for 60 s: ")
    assert "exceeded quota" in event[2] and event[2].endswith(
        "the job runs 1 workers and grows again after 60 s"
    )
    told = [
        call[2]
        for call in harness.events()
        if "the API server refused worker llama-worker-1 for 60 s " in call[2]
    ]
    assert told and told[0].startswith("1 of 2 workers granted: ")  # the Admitted condition's change
    assert "refused by the API server" in harness.condition("Admitted")["message"]  # the hold since
    harness.kube.jobs["other"] = job_manifest("other", replicas=1)
    harness.reconcile(key=OTHER)
    assert harness.condition("Admitted", "other")["status"] == "True"
    assert "other-worker-0" in harness.kube.pods


def observations(monkeypatch: pytest.MonkeyPatch) -> list[JobObservation]:
    """Every observation the reconciler decides on, from now on."""
    seen: list[JobObservation] = []
    decide = reconciler_module.decide

    def recording(observation: JobObservation, *args: Any) -> Any:
        seen.append(observation)
        return decide(observation, *args)

    monkeypatch.setattr(reconciler_module, "decide", recording)
    return seen


def test_the_refusal_is_forgotten_once_a_create_goes_through_or_the_spec_changes(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = observations(monkeypatch)
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.fail[("create_pod", "llama-worker-1")] = QUOTA_403
    harness.reconcile()
    harness.reconcile("retry")
    refusal = seen[-1].refusal
    assert set(seen[-1].refused_creates) == {"llama-worker-1"}
    assert refusal is not None and "exceeded quota: no-pods" in refusal[0]
    harness.kube.jobs["llama"]["metadata"]["generation"] = 2  # an edit: it may have put the cause right
    harness.reconcile("update")
    assert seen[-1].refusal is None and not seen[-1].refused_creates
    del harness.kube.fail[("create_pod", "llama-worker-1")]
    harness.reconcile("retry")  # refused again before this: now it goes through
    harness.reconcile("update")
    assert seen[-1].refusal is None and not seen[-1].refused_creates
    assert sorted(harness.kube.pods) == ["llama-worker-0", "llama-worker-1"]


def test_a_demand_that_makes_no_room_neither_shrinks_nor_preempts() -> None:
    may_preempt = gang("high", 1, per_worker=8, priority=10, preemption="LowerPriority")
    assert plan([may_preempt], low_jobs(), nodes(2)).preempt == {key("low-young")}
    refused = plan([replace(may_preempt, makes_room=False)], low_jobs(), nodes(2))
    assert not refused.preempt and not refused.shrink and not refused.grants.get(key("high"))
    may_shrink = gang("high", 1, per_worker=4, priority=10)
    assert plan([may_shrink], low_jobs(), nodes(2)).shrink == {key("low-young"): 2}
    refused = plan([replace(may_shrink, makes_room=False)], low_jobs(), nodes(2))
    assert not refused.shrink and not refused.grants.get(key("high"))


def test_a_gang_refused_long_enough_gives_its_grant_back_in_the_pass_that_sees_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Event-driven passes that failed moments apart doubled the backoff (four in 0.3 s: the retry 40 s
    # later, on the sandbox); the refusal that showed the gang could not start then waited for the next
    # retry, 80 s more, holding the devices taken from the preempted job. Now the reconcile goes round at once.
    import time

    from kubefit.decisions import running

    # 2 s: room for a loaded machine between the two first refusals, which must count as moments apart.
    monkeypatch.setattr(refusals_module, "REFUSED_FOR_SECONDS", 2.0)
    monkeypatch.setattr(running, "REFUSED_FOR_SECONDS", 2.0)
    preempting_for_refused_workers(harness, {"llama-worker-0": PSA, "llama-worker-1": PSA})
    both_reconciled(harness)
    assert harness.condition("Admitted")["status"] == "True"  # refused moments apart: kept
    time.sleep(2.1)
    harness.reconcile("retry")  # refused again, 2.1 s after the first: the same call gives the grant back
    admitted = harness.condition("Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "GangTimeout"), admitted
    # No worker was ever created, and no gang timed out: it said "every worker is deleted" and "(gang
    # timeout 1)" (an audit, 5 December).
    assert "every worker is deleted" not in admitted["message"]
    assert admitted["message"].endswith("(grant given back 1 time)"), admitted["message"]
    assert "the API server refused worker llama-worker-0" in admitted["message"]


def test_a_gang_a_quota_admits_only_in_part_is_not_tried_with_one_workers_dry_run(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A quota with room for worker 0 but not worker 1: worker 0's dry run is admitted whenever the gang has
    # given its grant back, so each try preempted the other job again, every gang backoff, for ever (a
    # review of the dry-run create).
    monkeypatch.setattr(refusals_module, "REFUSAL_TRY_SECONDS", 0.0)
    preempting_for_refused_workers(harness, {"llama-worker-1": QUOTA_403})
    both_reconciled(harness)
    refused_since(harness, 10)
    harness.reconcile("retry")  # worker 1 refused again: the grant goes back, worker 0 deleted
    assert harness.condition("Admitted")["reason"] == "GangTimeout"
    for _ in range(3):  # three backoffs over
        backoff_over_and_reconciled(harness)
    assert not harness.calls("try_pod")
    assert len(harness.events("Preempted")) == 1
    assert harness.kube.jobs["llama"]["status"]["gang"]["refused"].startswith(
        "the API server refused worker llama-worker-1"
    )


def test_a_refusal_is_recalled_beside_workers_still_terminating(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workers the gang timeout deleted may still be terminating when the operator restarts: they are no
    # live workers, and the refusal holds (a review of the dry-run create).
    seen = observations(monkeypatch)
    harness.kube.fail[("create_pod", "*")] = PSA
    job = job_manifest(replicas=2)
    job["status"] = {"observedGeneration": 1, "gang": {"refused": "the API server refused worker x: no"}}
    harness.kube.jobs["llama"] = job
    harness.kube.pods["llama-worker-0"] = test_reconciler.WorkerPod(
        "llama-worker-0", 0, "uid-0", "Running", "h0", terminating=True, controller_uid="uid-llama"
    )
    harness.reconcile()
    assert seen[0].refusal is not None and seen[0].refusal[0] == "the API server refused worker x: no"


def test_a_refused_job_that_waits_is_reconciled_again_for_its_next_dry_run(harness: Harness) -> None:
    # Nothing else may bring it: no event, and the resync comes when it comes.
    refused_and_queued(harness)
    requeue = harness.reconciler.pending_requeue(KEY)
    assert requeue is not None and requeue.trigger == "timer"


@pytest.mark.parametrize("gives_back", ["suspend", "gang-timeout"])
def test_a_job_whose_service_create_keeps_failing_still_gives_its_grant_back(
    harness: Harness, gives_back: str
) -> None:
    # The pass's offer came after its writes: with the Service's create failing every pass, a suspended or
    # timed-out llama held both devices for good, and `other` stayed queued on an empty node.
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.jobs["llama"]["spec"]["scheduling"] = {"gangTimeoutSeconds": 1}
    harness.kube.fail[("create_service", "llama")] = ServiceTaken(
        "Service team-a/llama exists and is not this TrainingJob's (owned by Deployment llama)"
    )
    harness.reconcile()
    harness.reconcile("update")
    assert harness.reconciler.scheduler._entries[KEY].granted == 2
    harness.kube.jobs["other"] = job_manifest("other", replicas=2)
    harness.reconcile(key=OTHER)
    assert harness.condition("Admitted", "other")["status"] == "False"
    if gives_back == "suspend":
        harness.kube.jobs["llama"]["spec"]["runPolicy"] = {"suspend": True}
        harness.kube.jobs["llama"]["metadata"]["generation"] = 2
    else:
        time.sleep(1.1)  # past its gang timeout, with no worker placed
    for _ in range(2):
        harness.reconciler._jobs[KEY].retry_at = 0.0
        harness.reconcile("retry")
        harness.reconcile("update", key=OTHER)
    # The Service still cannot be created, and with nothing to create that is no reconcile error: it read
    # ReconcileError for good, its failure series growing (an audit, 5 December).
    assert harness.condition("Ready")["reason"] == ("Suspended" if gives_back == "suspend" else "GangTimeout")
    assert harness.reconciler._jobs[KEY].failures == 0
    entry = harness.reconciler.scheduler._entries.get(KEY)
    assert entry is None or not entry.granted
    assert harness.condition("Admitted", "other")["status"] == "True"


def worker_name_taken_and_grant_given_back(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama, of a higher priority, preempted the other job; a pod that is not its own has worker 1's name,
    refused twice 5 s or more apart: the grant went back (dry runs are due at once)."""
    monkeypatch.setattr(refusals_module, "REFUSAL_TRY_SECONDS", 0.0)
    preempting_for_refused_workers(harness, {"llama-worker-1": foreign_pod("llama-worker-1")})
    both_reconciled(harness)
    refused_since(harness, 10)
    harness.reconcile("retry")  # worker 1's name still taken: the grant goes back, worker 0 deleted


def foreign_pod(name: str, lasting: bool = True) -> PodNameTaken:
    return PodNameTaken(
        f"Pod team-a/{name} exists and is not this TrainingJob's (owned by Deployment web (uid w))",
        lasting=lasting,
    )


def test_a_worker_name_another_pod_keeps_gives_the_grant_back_and_its_dry_run_tries_that_name(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name taken failed the pass as any error: the gang held both devices until its timeout, then asked
    # again after its backoff and preempted the other job once more, every cycle (a review, 5 December).
    worker_name_taken_and_grant_given_back(harness, monkeypatch)
    admitted = harness.condition("Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "GangTimeout")
    assert admitted["message"].startswith(
        "worker llama-worker-1 cannot be created: Pod team-a/llama-worker-1 exists and is not this "
        "TrainingJob's (owned by Deployment web (uid w)); every worker is deleted"
    )
    assert "taking no room from other jobs until that name is free" in admitted["message"]
    assert not [name for name in harness.kube.pods if name.startswith("llama-")]
    for _ in range(2):  # two backoffs over, the other job running again
        backoff_over_and_reconciled(harness)
    assert len(harness.events("Preempted")) == 1
    tries = harness.calls("try_pod")
    assert tries and {call[1] for call in tries} == {"llama-worker-1"}  # worker 0's would be admitted
    # The pod of that name deleted: the next try is admitted, and the job takes room again.
    del harness.kube.fail[("create_pod", "llama-worker-1")]
    harness.reconcile("timer")
    both_reconciled(harness, rounds=4)
    assert len(harness.events("Preempted")) == 2
    assert sorted(name for name in harness.kube.pods if name.startswith("llama-")) == [
        "llama-worker-0",
        "llama-worker-1",
    ]


def test_a_worker_name_held_by_a_pod_on_its_way_out_is_retried_without_giving_the_grant_back(
    harness: Harness,
) -> None:
    # A job deleted and applied again: the old one's workers keep their names until the garbage collector
    # removes them. That passes by itself; giving the grant back for it would cost a gang cycle.
    preempting_for_refused_workers(harness, {"llama-worker-1": foreign_pod("llama-worker-1", lasting=False)})
    both_reconciled(harness)
    refused_since(harness, 10)
    harness.reconcile("retry")
    assert harness.condition("Admitted")["status"] == "True"
    assert harness.condition("Ready")["reason"] == "ReconcileError"
    assert harness.reconciler._jobs[KEY].refusals.refusal is None


def test_a_service_name_another_object_keeps_gives_the_grant_back_until_the_service_is_created(
    harness: Harness,
) -> None:
    taken = ServiceTaken("Service team-a/llama exists and is not this TrainingJob's (owned by nothing)")
    harness.kube.fail[("create_service", "llama")] = taken
    preempting_for_refused_workers(harness, {})
    both_reconciled(harness)
    refused_since(harness, 10)
    harness.reconciler._jobs[KEY].retry_at = 0.0
    harness.reconcile("retry")  # the Service's name still taken: the grant goes back
    admitted = harness.condition("Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "GangTimeout")
    assert admitted["message"].startswith(
        "workers llama-worker-0, llama-worker-1 cannot be created: Service "
    )
    assert "until its Service can be created" in admitted["message"]
    assert "dry-run" not in admitted["message"]  # the Service's create is its try
    for _ in range(2):
        both_reconciled(harness)
        run_on_h0(harness, "other")
        harness.reconcile("pod", key=OTHER)
        harness.kube.jobs["llama"]["status"]["gang"]["retryAfter"] = "2000-01-01T00:00:00Z"
        harness.reconciler._jobs[KEY].retry_at = 0.0
        harness.reconcile("retry")
        both_reconciled(harness)
    assert len(harness.events("Preempted")) == 1
    assert not harness.calls("try_pod")  # the Service's create is its try
    del harness.kube.fail[("create_service", "llama")]
    harness.reconciler._jobs[KEY].retry_at = 0.0
    harness.reconcile("retry")
    both_reconciled(harness, rounds=4)
    assert len(harness.events("Preempted")) == 2
    assert harness.reconciler._jobs[KEY].refusals.refusal is None
    assert harness.kube.jobs["llama"]["status"]["gang"].get("refused") is None


def test_a_taken_worker_name_is_tried_after_an_operator_restart_too(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The restarted process recalled the refusal from status.gang.refused but not whose name was taken: its
    # dry run of worker 0 was admitted, and the job preempted the other one again (a review, 5 December).
    worker_name_taken_and_grant_given_back(harness, monkeypatch)
    both_reconciled(harness)
    run_on_h0(harness, "other")
    harness.reconcile("pod", key=OTHER)
    restarted(harness)
    harness.log.clear()
    harness.kube.jobs["llama"]["status"]["gang"]["retryAfter"] = "2000-01-01T00:00:00Z"  # backoff over
    both_reconciled(harness)
    assert {call[1] for call in harness.calls("try_pod")} == {"llama-worker-1"}
    assert not harness.events("Preempted")
    assert harness.condition("Admitted", "other")["status"] == "True"


def test_a_taken_service_name_is_recalled_after_a_restart_and_retried_every_refusal_try(
    harness: Harness,
) -> None:
    harness.kube.fail[("create_service", "llama")] = ServiceTaken(
        "Service team-a/llama exists and is not this TrainingJob's (owned by nothing)"
    )
    preempting_for_refused_workers(harness, {})
    both_reconciled(harness)
    refused_since(harness, 10)
    harness.reconciler._jobs[KEY].retry_at = 0.0
    harness.reconcile("retry")
    restarted(harness)
    harness.reconcile("resume")
    tried = len(harness.calls("create_service"))
    for _ in range(3):
        harness.reconcile("timer")
    # Queued with nothing to create, the refusal holds without failing the reconcile (Ready read
    # ReconcileError for good before), and each reconcile tries the Service's create; the next one comes
    # within REFUSAL_TRY_SECONDS, as a refused worker's dry run does.
    state = harness.reconciler._jobs[KEY]
    assert state.refusals.service_taken and state.failures == 0
    assert len(harness.calls("create_service")) == tried + 3
    ready = harness.condition("Ready")
    assert (ready["reason"], ready["status"]) == ("GangTimeout", "False"), ready
    requeue = harness.reconciler.pending_requeue(KEY)
    assert requeue is not None and requeue.delay <= refusals_module.REFUSAL_TRY_SECONDS
    assert not harness.calls("try_pod")


def test_a_taken_service_name_gives_the_grant_back_in_the_reconcile_that_sees_it_long_enough(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Service's create raised before the check that goes round at once: the grant waited for the next
    # retry (80 s on, after event-driven failures), holding the devices (a review, 5 December).
    from kubefit.decisions import running

    monkeypatch.setattr(refusals_module, "REFUSED_FOR_SECONDS", 2.0)
    monkeypatch.setattr(running, "REFUSED_FOR_SECONDS", 2.0)
    harness.kube.fail[("create_service", "llama")] = ServiceTaken(
        "Service team-a/llama exists and is not this TrainingJob's (owned by nothing)"
    )
    preempting_for_refused_workers(harness, {})
    both_reconciled(harness)
    assert harness.condition("Admitted")["status"] == "True"
    time.sleep(2.1)
    harness.reconciler._jobs[KEY].retry_at = 0.0
    harness.reconcile("retry")  # refused again, 2.1 s after the first: the same call gives the grant back
    admitted = harness.condition("Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "GangTimeout"), admitted
    # No worker was ever created, and no gang timed out: it said "every worker is deleted" and "(gang
    # timeout 1)" (an audit, 5 December).
    assert "every worker is deleted" not in admitted["message"]
    assert admitted["message"].endswith("(grant given back 1 time)"), admitted["message"]


PVC_MISSING = '0/1 nodes are available: 1 persistentvolumeclaim "typo-ckpt" not found.'


def unplaceable_gang_timed_out(harness: Harness, why: str) -> None:
    """The other job runs on the node; llama, of a higher priority, preempted it and its workers were created,
    but kube-scheduler placed none of them (`why`) within its gang timeout."""
    harness.kube.jobs["other"] = job_manifest("other", replicas=2)
    harness.reconcile(key=OTHER)
    run_on_h0(harness, "other")
    harness.reconcile("pod", key=OTHER)
    llama = job_manifest(replicas=2)
    llama["spec"]["scheduling"] = {"priority": 100, "preemption": "LowerPriority", "gangTimeoutSeconds": 1}
    harness.kube.jobs["llama"] = llama
    harness.reconcile()
    both_reconciled(harness)  # the other job's workers leave for it; its own are created
    assert sorted(harness.kube.pods) == ["llama-worker-0", "llama-worker-1"]
    short_of = frozenset({"nvidia.com/gpu"}) if "Insufficient nvidia.com/gpu" in why else frozenset()
    for name, pod in list(harness.kube.pods.items()):
        harness.kube.pods[name] = replace(pod, unschedulable=why, short_of=short_of)
    time.sleep(1.1)  # past its gang timeout
    harness.reconcile("timer")
    assert harness.condition("Admitted")["reason"] == "GangTimeout"


def backoff_over_and_reconciled(harness: Harness) -> None:
    both_reconciled(harness)
    run_on_h0(harness, "other")
    harness.reconcile("pod", key=OTHER)
    harness.kube.jobs["llama"]["status"]["gang"]["retryAfter"] = "2000-01-01T00:00:00Z"
    harness.reconcile("timer")
    both_reconciled(harness)


def test_a_gang_kube_scheduler_placed_for_no_want_of_devices_preempts_no_one_again(harness: Harness) -> None:
    # A LowerPriority job whose claim was misnamed preempted the same victim after every gang timeout: its
    # workers never bound, whatever room was made (the scheduling audit, 5 December).
    unplaceable_gang_timed_out(harness, PVC_MISSING)
    admitted = harness.condition("Admitted")["message"]
    assert PVC_MISSING in admitted and "takes no room from other jobs" in admitted
    assert harness.kube.jobs["llama"]["status"]["gang"]["unplaceable"] == PVC_MISSING
    for _ in range(2):
        backoff_over_and_reconciled(harness)
    assert len(harness.events("Preempted")) == 1
    assert harness.condition("Admitted", "other")["status"] == "True"
    waiting = harness.condition("Admitted")["message"]  # past its backoff, the queued message says so too
    assert (
        "it takes no room from other jobs until a worker of it is placed" in waiting
        and PVC_MISSING in waiting
    )
    restarted(harness)  # status.gang.unplaceable holds it across a restart
    backoff_over_and_reconciled(harness)
    assert len(harness.events("Preempted")) == 1
    # The claim's name put right in the spec: it takes room again.
    harness.kube.jobs["llama"]["metadata"]["generation"] = 2
    harness.kube.jobs["llama"]["spec"]["workers"]["replicas"] = 1
    both_reconciled(harness, rounds=4)
    assert len(harness.events("Preempted")) == 2
    assert harness.kube.jobs["llama"]["status"]["gang"].get("unplaceable") is None


def test_a_gang_kube_scheduler_left_for_want_of_devices_may_take_room_again(harness: Harness) -> None:
    # The devices it was admitted onto were taken meanwhile: room made again places it.
    unplaceable_gang_timed_out(harness, "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    assert harness.kube.jobs["llama"]["status"]["gang"].get("unplaceable") is None
    backoff_over_and_reconciled(harness)
    assert len(harness.events("Preempted")) == 2


def other_preempted_for_llama(harness: Harness) -> None:
    """other (2 workers, a 600 s checkpoint grace) runs on h0; llama (priority 100, LowerPriority) preempts it,
    and other's workers save."""
    harness.kube.jobs["other"] = job_manifest("other", replicas=2)
    harness.kube.jobs["other"]["spec"]["elastic"] = {"checkpointGracePeriodSeconds": 600}
    harness.reconcile(key=OTHER)
    run_on_h0(harness, "other")
    harness.reconcile("pod", key=OTHER)
    llama = job_manifest(replicas=2)
    llama["spec"]["scheduling"] = {"priority": 100, "preemption": "LowerPriority"}
    harness.kube.jobs["llama"] = llama
    harness.reconcile()
    both_reconciled(harness)
    assert harness.condition("Admitted", "other")["reason"] == "Preempted"


def test_a_preempted_job_suspended_and_resumed_during_its_handshake_says_it_is_preempted(
    harness: Harness,
) -> None:
    # It said Suspended=True and Admitted=False Suspended ("spec.runPolicy.suspend is true") for the whole
    # grace period after the resume (the scheduling audit, 5 December).
    other_preempted_for_llama(harness)
    other = harness.kube.jobs["other"]
    for suspend, generation in ((True, 2), (False, 3)):
        other["spec"]["runPolicy"] = {"suspend": suspend}
        other["metadata"]["generation"] = generation
        harness.reconcile("update", key=OTHER)
    assert sorted(name for name in harness.kube.pods if name.startswith("other-")) == [
        "other-worker-0",
        "other-worker-1",
    ]  # still saving within their grace
    suspended = harness.condition("Suspended", "other")
    assert (suspended["status"], suspended["reason"]) == ("False", "Resumed")
    admitted = harness.condition("Admitted", "other")
    assert (admitted["status"], admitted["reason"]) == ("False", "Preempted")
    assert harness.kube.jobs["other"]["status"]["phase"] == "Queued"


@pytest.mark.parametrize("policy", ["BestEffortFIFO", "StrictFIFO"])
def test_a_demand_that_makes_no_room_holds_back_no_job_behind_it(policy: str) -> None:
    # An unplaceable (or refused) job that had waited past the head-of-line limit kept the devices free for
    # itself: a job behind it that fitted waited too, for a job whose pods cannot bind (a review).
    from test_admission import NOW, gang, holding, job

    from kubefit.decisions.admission import plan_admissions

    low = holding(job("low", per_worker=4, created=1.0), 1, {"node-0": 1})
    urgent = replace(gang("urgent", 1, per_worker=8, priority=10, created=2.0), makes_room=False)
    urgent = replace(urgent, queued_since=NOW - 3600)
    small = gang("small", 1, per_worker=4, created=3.0)
    result = plan_admissions([urgent, small], [low], nodes(1), policy, NOW, 300.0)  # type: ignore[arg-type]
    assert result.grants[key("small")] == 1 and result.grants[key("urgent")] == 0


def test_a_reason_past_the_cut_of_the_message_still_names_a_shortage() -> None:
    # Newer kube-schedulers add a preemption note: the verdicts were past the 200 characters kept, and the
    # job was taken as short of devices, preempting again (a review, 5 December).
    from kubefit.decisions.observed import worker_from_pod

    claim = "llama3-70b-pretraining-checkpoints-fsx-lustre-research-v2-shared"
    message = (
        f'0/40 nodes are available: 40 persistentvolumeclaim "{claim}" not found. preemption: 0/40 nodes are '
        "available: 40 Preemption is not helpful for scheduling."
    )
    short = f"0/40 nodes are available: {'7 node(s) had taint {x: y}, that the pod did not tolerate, ' * 4}"
    short += "1 Insufficient nvidia.com/gpu."
    for text, lacking in ((message, frozenset()), (short, frozenset({"nvidia.com/gpu"}))):
        pod = {
            "metadata": {"name": "llama-worker-0", "labels": {"kubefit.dev/job": "llama"}},
            "spec": {},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": text}
            ]},
        }  # fmt: skip
        worker = worker_from_pod(pod)
        assert worker is not None and worker.unschedulable is not None and worker.unschedulable.endswith("…")
        assert worker.short_of == lacking


SERVICE_TAKEN = "Service team-a/llama exists and is not this TrainingJob's (owned by Deployment web (uid d1))"


def test_a_taken_service_name_nothing_has_told_yet_stays_a_reconcile_error(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Swallowed whenever nothing was to be created, it was told nowhere for a running job whose Service
    # went and another owner's took its name, nor for a job queued before any admission (a review).
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconcile()
    run_on_h0(harness, "llama")
    harness.reconcile("pod")
    harness.kube.fail[("create_service", "llama")] = ServiceTaken(SERVICE_TAKEN)
    state = harness.reconciler._jobs[KEY]
    state.service_at = -1e9  # the resync's recheck of the Service is due
    harness.reconcile("timer")
    ready = harness.condition("Ready")
    assert (ready["reason"], state.failures) == ("ReconcileError", 1), ready
    assert SERVICE_TAKEN in ready["message"]


def test_a_job_preempted_for_one_deleted_during_its_handshake_keeps_its_workers_and_runs_on(
    harness: Harness,
) -> None:
    """The job it was preempted for is deleted while its workers save: the next pass grants it its workers
    again, and its reconcile takes them back (the request closed, none deleted, Admitted again and saying
    why) rather than stopping them at the end of the grace and starting again from the queue."""
    other_preempted_for_llama(harness)
    assert harness.kube.jobs["other"]["status"]["checkpoint"]["reason"] == "Preempted"
    for name in [name for name in harness.kube.pods if name.startswith("llama-")]:
        del harness.kube.pods[name]
    del harness.kube.jobs["llama"]
    harness.reconciler.job_deleted(KEY, None, harness.view())
    harness.reconcile("update", key=OTHER)
    status = harness.kube.jobs["other"]["status"]
    admitted = harness.condition("Admitted", "other")
    assert (admitted["status"], admitted["reason"]) == ("True", "Admitted")
    assert status["phase"] == "Running" and status.get("checkpoint") is None
    assert not [call for call in harness.calls("delete_pod") if call[1].startswith("other-")]
    assert sorted(name for name in harness.kube.pods if name.startswith("other-")) == [
        "other-worker-0",
        "other-worker-1",
    ]
    told = [call for call in harness.events("Admitted") if "preemption undone" in call[2]]
    assert told and "team-a/llama no longer needs their places" in told[-1][2], harness.events("Admitted")
