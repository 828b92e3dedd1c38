"""Reconcile decisions: pure functions from an observation to the changes to make."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubefit.api.formatting import sizing_summary
from kubefit.api.models import MemoryBreakdown, SizingStatus, TrainingJobStatus
from kubefit.api.validation import parse_spec
from kubefit.builders.naming import JobRef
from kubefit.decisions.conditions import ConditionUpdate, apply_conditions
from kubefit.decisions.failure import MESSAGE_LIMIT, reconcile_error
from kubefit.decisions.inventory import NodeFacts, PodUsage, build_inventory, node_facts, pod_usage
from kubefit.decisions.job import (
    DEFAULT_MAX_WORKERS_PER_JOB,
    Decision,
    JobObservation,
    ReconcileSettings,
    decide,
)
from kubefit.decisions.observed import WorkerPod, worker_from_pod
from kubefit.decisions.workers import scale_workers, stop_workers, worker_bounds
from kubefit.sizing.catalog import load_catalog
from kubefit.sizing.planner import NodeInventory

CATALOG = load_catalog()
JOB = JobRef(name="llama", namespace="team-a", uid="job-uid")
NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def raw_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "trainer", "image": "ghcr.io/acme/train:1"}]}},
        "model": {"parameters": "1B"},
        "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
        "workers": {"replicas": 2},
    }
    spec.update(overrides)
    return spec


def pod(
    index: int,
    phase: str = "Running",
    *,
    uid: str | None = None,
    owner: str | None = "job-uid",
    node: str | None = "node-a",
    terminating: bool = False,
) -> WorkerPod:
    return WorkerPod(
        name=f"llama-worker-{index}",
        index=index,
        uid=uid or f"pod-{index}",
        phase=phase,
        node_name=None if phase == "Pending" and node == "node-a" else node,
        terminating=terminating,
        controller_uid=owner,
    )


# The scheduling pass grants a job at most what it asks for: this grant admits every job in full.
GRANT_ALL = 4096


def observe(
    spec: Any = None,
    pods: list[WorkerPod] | None = None,
    status: dict[str, Any] | TrainingJobStatus | None = None,
    now: datetime = NOW,
    replaced: frozenset[str] = frozenset(),
    job: JobRef = JOB,
    grant: int | None = GRANT_ALL,
    acks: dict[str, int] | None = None,
) -> JobObservation:
    if isinstance(status, TrainingJobStatus):
        status = status.model_dump(by_alias=True, exclude_none=True)
    return JobObservation(
        job=job,
        generation=3,
        spec=raw_spec() if spec is None else spec,
        status=status or {},
        pods=pods or [],
        inventory=[],
        now=now,
        already_replaced=replaced,
        grant=grant,
        checkpoint_acks=acks or {},
    )


def status_of(decision: Decision) -> dict[str, Any]:
    """The status as the controller writes it (None: the merge patch removes the field)."""
    return decision.status.model_dump(by_alias=True, exclude_none=False)


def condition(decision: Decision, condition_type: str) -> dict[str, Any]:
    found = [item for item in status_of(decision)["conditions"] if item["type"] == condition_type]
    assert found, f"no {condition_type} condition in {status_of(decision)['conditions']}"
    return found[0]


def created_names(decision: Decision) -> list[str]:
    return [decision.worker_pod(index)["metadata"]["name"] for index in decision.create]


# ---------------------------------------------------------------------------------------------- new job


def test_new_job_creates_the_service_and_every_worker() -> None:
    decision = decide(observe(), CATALOG)
    assert decision.service is not None and decision.service["metadata"]["name"] == "llama"
    assert created_names(decision) == ["llama-worker-0", "llama-worker-1"]
    assert decision.delete == ()
    assert status_of(decision)["phase"] == "Pending"
    assert status_of(decision)["observedGeneration"] == 3
    assert status_of(decision)["selector"] == "kubefit.dev/job=llama"
    assert status_of(decision)["replicas"] == 0
    assert status_of(decision)["workers"] == "0/2"
    assert status_of(decision)["sizing"]["accelerator"] == "nvidia-h100-80gb"
    assert status_of(decision)["perDeviceMemory"].endswith(" GiB")
    sized = condition(decision, "Sized")
    assert (sized["status"], sized["reason"]) == ("True", "Fits")
    assert sized["message"].startswith("1 x nvidia-h100-80gb, ")
    assert sized["message"].endswith(" of 79.6 GiB per device")
    assert condition(decision, "Ready")["status"] == "False"
    assert ("Normal", "Fits") in [(event.type, event.reason) for event in decision.events]


def test_sizing_summary_format() -> None:
    sizing = SizingStatus(
        accelerator="nvidia-h100-80gb",
        resource_name="nvidia.com/gpu",
        device_memory_bytes=81559 * 2**20,
        accelerators_per_worker=8,
        min_workers=1,
        per_device_bytes=int(61.2 * 2**30),
        fits=True,
        breakdown=MemoryBreakdown(
            weights=0, gradients=0, optimizer_states=0, activations=0, logits=0, overhead=0
        ),
    )
    assert sizing_summary(sizing) == "8 x nvidia-h100-80gb, 61.2 GiB of 79.6 GiB per device"


def test_all_workers_running_makes_the_job_running_and_ready() -> None:
    decision = decide(observe(pods=[pod(0), pod(1)]), CATALOG)
    assert decision.create == () and decision.delete == ()
    assert status_of(decision)["phase"] == "Running"
    assert status_of(decision)["readyReplicas"] == 2
    assert status_of(decision)["workers"] == "2/2"
    assert status_of(decision)["startTime"] == "2025-01-01T12:00:00Z"
    assert condition(decision, "Ready")["status"] == "True"
    assert condition(decision, "Running")["status"] == "True"
    assert decision.requested_accelerators == 2


def test_admitted_workers_not_yet_scheduled_are_pending() -> None:
    decision = decide(observe(pods=[pod(0, "Pending"), pod(1)]), CATALOG)
    assert status_of(decision)["phase"] == "Pending"  # Queued is for jobs not admitted
    assert status_of(decision)["readyReplicas"] == 1


def test_running_job_that_loses_a_worker_is_scaling() -> None:
    status = status_of(decide(observe(pods=[pod(0), pod(1)]), CATALOG))
    decision = decide(observe(pods=[pod(0)], status=status), CATALOG)
    assert created_names(decision) == ["llama-worker-1"]
    assert status_of(decision)["phase"] == "Scaling"
    assert status_of(decision)["startTime"] == status["startTime"]


def test_the_same_observation_gives_the_same_decision() -> None:
    first = decide(observe(pods=[pod(0)]), CATALOG)
    again = decide(observe(pods=[pod(0)], status=first.status, now=NOW + timedelta(minutes=1)), CATALOG)
    assert again.status == first.status  # nothing changed: no status write, no transition
    assert created_names(again) == created_names(first) == ["llama-worker-1"]
    assert again.events == ()


# ---------------------------------------------------------------------------------------------- scaling


def test_scale_down_deletes_the_highest_indices_first() -> None:
    spec = raw_spec(workers={"replicas": 1, "maxReplicas": 4}, elastic={"checkpointGracePeriodSeconds": 0})
    decision = decide(observe(spec, pods=[pod(0), pod(1), pod(2), pod(3)]), CATALOG)
    assert decision.delete == ("llama-worker-3", "llama-worker-2", "llama-worker-1")
    assert decision.create == ()
    assert decision.checkpoint_request is None  # a grace period of 0 asks for no checkpoint


def test_scale_up_is_clamped_to_max_replicas() -> None:
    spec = raw_spec(workers={"replicas": 9, "minReplicas": 1, "maxReplicas": 3})
    decision = decide(observe(spec), CATALOG)
    assert created_names(decision) == ["llama-worker-0", "llama-worker-1", "llama-worker-2"]
    assert status_of(decision)["workers"] == "0/3"


def test_pods_being_deleted_are_neither_counted_nor_recreated() -> None:
    decision = decide(observe(pods=[pod(0), pod(1, terminating=True)]), CATALOG)
    assert decision.create == () and decision.delete == ()
    assert status_of(decision)["replicas"] == 1


@pytest.mark.parametrize(
    ("workers", "min_workers", "expected"),
    [
        ({"replicas": 4}, 1, (4, 4, 4)),
        ({"replicas": 4, "minReplicas": 2, "maxReplicas": 8}, 1, (2, 8, 4)),
        ({"replicas": 1, "minReplicas": 1, "maxReplicas": 8}, 3, (3, 8, 3)),  # memory raises the floor
        ({"replicas": 12, "minReplicas": 1, "maxReplicas": 8}, 1, (1, 8, 8)),
        ({"replicas": 2, "maxReplicas": 2}, 4, (4, 2, 2)),  # infeasible: floor above ceiling
    ],
)
def test_worker_bounds(workers: dict[str, int], min_workers: int, expected: tuple[int, int, int]) -> None:
    spec = parse_spec(raw_spec(workers=workers))
    sizing = decide(observe(), CATALOG).sizing
    assert sizing is not None
    bounds = worker_bounds(spec, sizing.model_copy(update={"min_workers": min_workers}))
    assert (bounds.floor, bounds.ceiling, bounds.desired) == expected
    assert bounds.feasible == (expected[0] <= expected[1])


def test_memory_needing_more_workers_than_allowed_starts_nothing() -> None:
    spec = raw_spec(
        model={"parameters": "70B"},
        training={"sharding": "fsdp"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
        workers={"replicas": 1, "maxReplicas": 2},
    )
    decision = decide(observe(spec), CATALOG)
    assert decision.create == ()
    ready = condition(decision, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TooFewWorkers")
    assert "spec.workers.maxReplicas" in ready["message"]
    assert status_of(decision)["phase"] == "Pending"


def test_memory_floor_raises_the_worker_count_and_sizes_that_layout() -> None:
    spec = raw_spec(
        model={"parameters": "70B"},
        training={"sharding": "fsdp"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
        workers={"replicas": 1, "maxReplicas": 16},
    )
    decision = decide(observe(spec), CATALOG)
    assert decision.sizing is not None and decision.sizing.fits
    assert len(decision.create) == decision.desired_workers == decision.sizing.min_workers > 1


def test_a_layout_that_does_not_fit_starts_nothing() -> None:
    spec = raw_spec(
        model={"parameters": "70B"}, resources={"accelerator": "nvidia-l4", "acceleratorsPerWorker": 1}
    )
    decision = decide(observe(spec), CATALOG)
    assert decision.create == ()
    sized = condition(decision, "Sized")
    assert (sized["status"], sized["reason"]) == ("False", "DoesNotFit")
    assert "nvidia-l4" in sized["message"]
    assert status_of(decision)["sizing"]["fits"] is False
    assert ("Warning", "DoesNotFit") in [(event.type, event.reason) for event in decision.events]


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (raw_spec(workers={"replicas": 2, "minReplicas": 4, "maxReplicas": 3}), "spec.workers"),
        (raw_spec(resources={"accelerator": "nvidia-z9000"}), "spec.resources.accelerator"),
        (raw_spec(model={"precision": "fp64"}), "spec.model"),
        ({key: value for key, value in raw_spec().items() if key != "model"}, "spec.model"),
        (raw_spec(workers={"replicas": -1}), "spec.workers.replicas"),
        (raw_spec(template={"spec": {"containers": []}}), "spec.template"),
        ("not an object", "spec"),
    ],
)
def test_invalid_spec_names_the_field_and_starts_nothing(spec: Any, field: str) -> None:
    decision = decide(observe(spec), CATALOG)
    ready = condition(decision, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert field in ready["message"]
    assert decision.create == () and decision.delete == ()
    assert status_of(decision)["phase"] == "Pending"
    assert status_of(decision)["sizing"] is None
    assert [(event.type, event.reason) for event in decision.events] == [("Warning", "InvalidSpec")]


def test_invalid_spec_event_is_posted_once() -> None:
    spec = raw_spec(resources={"accelerator": "nvidia-z9000"})
    first = decide(observe(spec), CATALOG)
    again = decide(observe(spec, status=first.status, now=NOW + timedelta(minutes=1)), CATALOG)
    assert again.events == ()
    assert condition(again, "Ready")["lastTransitionTime"] == "2025-01-01T12:00:00Z"


def test_invalid_spec_leaves_existing_workers_alone() -> None:
    spec = raw_spec(workers={"replicas": 2, "minReplicas": 4, "maxReplicas": 3})
    decision = decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG)
    assert decision.delete == () and decision.create == ()
    assert status_of(decision)["replicas"] == 2


@pytest.mark.parametrize("name", ["Llama", "llama.v2", "9lives", "x" * 60])
def test_job_names_that_cannot_become_hostnames_are_refused(name: str) -> None:
    decision = decide(observe(job=JobRef(name=name, namespace="n", uid="u")), CATALOG)
    ready = condition(decision, "Ready")
    assert (ready["reason"], "metadata.name" in ready["message"]) == ("InvalidSpec", True)
    assert decision.create == ()


# ---------------------------------------------------------------------------------------------- worker limit


@pytest.mark.parametrize(
    ("workers", "fields"),
    [
        ({"replicas": 9}, ["spec.workers.replicas"]),
        ({"replicas": 2, "maxReplicas": 9}, ["spec.workers.maxReplicas"]),
        (
            {"replicas": 9, "minReplicas": 9, "maxReplicas": 12},
            [f"spec.workers.{name}" for name in ("replicas", "maxReplicas", "minReplicas")],
        ),
    ],
)
def test_more_workers_than_the_operator_allows_is_invalid_and_names_the_field(
    workers: dict[str, int], fields: list[str]
) -> None:
    decision = decide(observe(raw_spec(workers=workers)), CATALOG, ReconcileSettings(max_workers_per_job=8))
    ready = condition(decision, "Ready")
    assert ready["reason"] == "InvalidSpec"
    named = [part.split(":")[0] for part in ready["message"].removeprefix("invalid spec: ").split("; ")]
    assert named == fields
    assert "exceed this operator's limit of 8 per job (kubefit run --max-workers-per-job)" in ready["message"]
    assert decision.create == () and status_of(decision)["sizing"] is None


def test_a_job_at_the_limit_runs() -> None:
    spec = raw_spec(workers={"replicas": 8, "maxReplicas": 8})
    decision = decide(observe(spec), CATALOG, ReconcileSettings(max_workers_per_job=8))
    assert decision.create == tuple(range(8))
    assert ReconcileSettings().max_workers_per_job == DEFAULT_MAX_WORKERS_PER_JOB == 1024


def test_a_decision_holds_worker_indices_not_manifests() -> None:
    # Building 4096 manifests up front took seconds and ~32 MiB; indices and one shared WorkerSet do not.
    spec = raw_spec(workers={"replicas": 4096})
    decision = decide(observe(spec), CATALOG, ReconcileSettings(max_workers_per_job=4096))
    assert decision.create == tuple(range(4096))
    assert decision.worker_pod(4095)["metadata"]["name"] == "llama-worker-4095"
    assert decide(observe(), CATALOG).worker_pod(0)["spec"]["hostname"] == "llama-worker-0"
    with pytest.raises(ValueError, match="creates no workers"):
        decide(observe(raw_spec(runPolicy={"suspend": True})), CATALOG).worker_pod(0)


def test_the_offload_estimate_runs_once_per_job_not_once_per_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubefit.builders import pods as pod_builder

    calls = []
    real_estimate = pod_builder.estimate

    def counted(*args: Any) -> Any:
        calls.append(args)
        return real_estimate(*args)

    monkeypatch.setattr(pod_builder, "estimate", counted)
    spec = raw_spec(training={"offload": "optimizer"}, workers={"replicas": 6})
    decision = decide(observe(spec), CATALOG)
    pods = [decision.worker_pod(index) for index in decision.create]
    assert len(pods) == 6 and len(calls) == 1


# ---------------------------------------------------------------------------------------------- reconcile errors


def test_a_reconcile_error_is_recorded_once_per_message() -> None:
    status = status_of(decide(observe(), CATALOG))
    first = reconcile_error(status, 3, "ZeroDivisionError:  division\nby zero", "2025-01-01T12:00:00Z")
    assert first.status is not None
    conditions = {item["type"]: item for item in first.status["conditions"]}
    assert set(conditions) == {"Sized", "Admitted", "Ready", "Running"}  # the others are kept as they were
    assert conditions["Sized"] == next(c for c in status["conditions"] if c["type"] == "Sized")
    assert (conditions["Ready"]["reason"], conditions["Ready"]["message"]) == (
        "ReconcileError",
        "ZeroDivisionError: division by zero",
    )
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "ReconcileError")]
    after = {**status, **first.status}
    again = reconcile_error(after, 3, "ZeroDivisionError: division by zero", "2025-01-01T12:05:00Z")
    assert again.status is None and again.events == ()
    other = reconcile_error(after, 3, "a different error", "2025-01-01T12:05:00Z")
    assert other.status is not None and other.events[0].message == "a different error"
    long = reconcile_error({}, None, "x" * 5000, "2025-01-01T12:00:00Z")
    assert len(long.events[0].message) == MESSAGE_LIMIT and long.events[0].message.endswith("...")


# ---------------------------------------------------------------------------------------------- ownership


def test_pods_of_an_earlier_job_with_the_same_name_are_ignored() -> None:
    decision = decide(observe(pods=[pod(0, owner="old-uid"), pod(1)]), CATALOG)
    assert decision.delete == ()
    assert decision.create == ()  # worker-0's name is still taken until the garbage collector removes it
    assert status_of(decision)["replicas"] == 1


def test_labelled_pods_without_a_controller_are_adopted() -> None:
    decision = decide(observe(pods=[pod(0, owner=None), pod(1)]), CATALOG)
    assert decision.adopt == ("llama-worker-0",)
    assert status_of(decision)["readyReplicas"] == 2


# ---------------------------------------------------------------------------------------------- restarts


def test_a_failed_worker_is_replaced_and_counted() -> None:
    decision = decide(observe(pods=[pod(0), pod(1, "Failed")]), CATALOG)
    assert [failed.name for failed in decision.replace] == ["llama-worker-1"]
    assert decision.create == ()  # recreated once the failed pod is gone
    assert status_of(decision)["restarts"] == 1
    assert ("Warning", "WorkerFailed") in [(event.type, event.reason) for event in decision.events]
    assert status_of(decision)["lastFailureTime"] == "2025-01-01T12:00:00Z"
    gone = decide(observe(pods=[pod(0)], status=decision.status), CATALOG)
    assert gone.create == () and gone.requeue_after == 5.0  # the first restart waits 5 s
    assert "restart backoff" in status_of(gone)["message"]
    later = decide(observe(pods=[pod(0)], status=decision.status, now=NOW + timedelta(seconds=5)), CATALOG)
    assert created_names(later) == ["llama-worker-1"]
    assert status_of(later)["restarts"] == 1


def test_a_replaced_worker_still_in_the_cache_is_not_counted_twice() -> None:
    first = decide(observe(pods=[pod(0), pod(1, "Failed")]), CATALOG)
    stale = decide(
        observe(pods=[pod(0), pod(1, "Failed")], status=first.status, replaced=frozenset({"pod-1"})), CATALOG
    )
    assert stale.replace == ()
    assert status_of(stale)["restarts"] == 1
    assert stale.delete == ("llama-worker-1",)  # deleting again is harmless if the first delete was lost


def test_exceeding_max_restarts_fails_the_job_and_stops_running_workers() -> None:
    spec = raw_spec(runPolicy={"maxRestarts": 1})
    decision = decide(observe(spec, pods=[pod(0), pod(1, "Failed")], status={"restarts": 1}), CATALOG)
    assert status_of(decision)["phase"] == "Failed"
    failed = condition(decision, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "RestartLimitExceeded")
    assert "spec.runPolicy.maxRestarts is 1" in failed["message"]
    assert decision.delete == ("llama-worker-0",)  # the failed pod is kept for its logs
    assert status_of(decision)["completionTime"] == "2025-01-01T12:00:00Z"
    assert status_of(decision)["restarts"] == 1
    assert decision.service is None


def test_a_failed_job_stays_failed() -> None:
    spec = raw_spec(runPolicy={"maxRestarts": 0})
    failed = decide(observe(spec, pods=[pod(0), pod(1, "Failed")]), CATALOG)
    later = decide(
        observe(spec, pods=[pod(1, "Failed")], status=failed.status, now=NOW + timedelta(hours=1)), CATALOG
    )
    assert later.create == () and status_of(later)["phase"] == "Failed"
    assert status_of(later)["completionTime"] == status_of(failed)["completionTime"]
    assert later.events == ()


# ---------------------------------------------------------------------------------------------- completion


def test_all_workers_succeeded_completes_the_job() -> None:
    decision = decide(observe(pods=[pod(0, "Succeeded"), pod(1, "Succeeded")]), CATALOG)
    assert status_of(decision)["phase"] == "Succeeded"
    assert condition(decision, "Succeeded")["status"] == "True"
    assert status_of(decision)["completionTime"] == "2025-01-01T12:00:00Z"
    assert decision.create == () and decision.delete == ()
    assert decision.requested_accelerators == 0


def test_one_worker_succeeded_is_not_yet_success() -> None:
    decision = decide(observe(pods=[pod(0, "Succeeded"), pod(1)]), CATALOG)
    assert status_of(decision)["phase"] != "Succeeded"


@pytest.mark.parametrize(("elapsed", "deleted"), [(59, False), (60, True)])
def test_ttl_after_finished_deletes_the_job(elapsed: int, deleted: bool) -> None:
    spec = raw_spec(runPolicy={"ttlSecondsAfterFinished": 60})
    done = decide(observe(spec, pods=[pod(0, "Succeeded"), pod(1, "Succeeded")]), CATALOG)
    assert not done.delete_job
    later = decide(observe(spec, status=done.status, now=NOW + timedelta(seconds=elapsed)), CATALOG)
    assert later.delete_job is deleted


def test_without_ttl_a_finished_job_is_kept() -> None:
    done = decide(observe(pods=[pod(0, "Succeeded"), pod(1, "Succeeded")]), CATALOG)
    assert done.requeue_after is None
    later = decide(observe(status=done.status, now=NOW + timedelta(days=30)), CATALOG)
    assert not later.delete_job and later.requeue_after is None


def test_ttl_after_finished_asks_to_be_reconciled_when_it_expires() -> None:
    # No event marks the moment the TTL expires: without a requeue the job would wait for the next
    # resync (30 s by default) however short its TTL.
    spec = raw_spec(runPolicy={"ttlSecondsAfterFinished": 60})
    done = decide(observe(spec, pods=[pod(0, "Succeeded"), pod(1, "Succeeded")]), CATALOG)
    assert done.requeue_after == 60
    later = decide(observe(spec, status=done.status, now=NOW + timedelta(seconds=45.5)), CATALOG)
    assert later.requeue_after == 14.5 and not later.delete_job
    expired = decide(observe(spec, status=done.status, now=NOW + timedelta(seconds=60)), CATALOG)
    assert expired.delete_job and expired.requeue_after is None


def test_ttl_after_a_failure_asks_to_be_reconciled_when_it_expires() -> None:
    spec = raw_spec(runPolicy={"maxRestarts": 0, "ttlSecondsAfterFinished": 0})
    failed = decide(observe(spec, pods=[pod(0), pod(1, "Failed")]), CATALOG)
    assert status_of(failed)["phase"] == "Failed" and failed.requeue_after == 0
    assert decide(observe(spec, pods=[pod(1, "Failed")], status=failed.status), CATALOG).delete_job


def test_running_and_suspended_jobs_ask_for_no_requeue() -> None:
    spec = raw_spec(runPolicy={"ttlSecondsAfterFinished": 60})
    assert decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG).requeue_after is None
    suspended = raw_spec(runPolicy={"ttlSecondsAfterFinished": 60, "suspend": True})
    assert decide(observe(suspended), CATALOG).requeue_after is None


# ---------------------------------------------------------------------------------------------- suspend


def test_suspend_deletes_every_worker_and_resume_recreates_them() -> None:
    spec = raw_spec(runPolicy={"suspend": True}, elastic={"checkpointGracePeriodSeconds": 0})
    suspended = decide(observe(spec, pods=[pod(0), pod(1, "Succeeded")]), CATALOG)
    assert suspended.delete == ("llama-worker-1", "llama-worker-0")
    assert suspended.demand is None  # a suspended job asks the scheduling pass for nothing
    assert suspended.create == ()
    assert status_of(suspended)["phase"] == "Suspended"
    assert condition(suspended, "Suspended")["status"] == "True"
    resumed = decide(observe(raw_spec(), status=suspended.status), CATALOG)
    assert created_names(resumed) == ["llama-worker-0", "llama-worker-1"]
    assert (condition(resumed, "Suspended")["status"], condition(resumed, "Suspended")["reason"]) == (
        "False",
        "Resumed",
    )


# ---------------------------------------------------------------------------------------------- conditions


def test_last_transition_time_changes_only_with_the_status() -> None:
    first = apply_conditions([], [ConditionUpdate("Ready", "False", "A", "a")], 1, "t1")
    same_status = apply_conditions(first, [ConditionUpdate("Ready", "False", "B", "b")], 2, "t2")
    flipped = apply_conditions(same_status, [ConditionUpdate("Ready", "True", "C", "c")], 3, "t3")
    assert first[0]["lastTransitionTime"] == "t1"
    assert same_status[0] == {
        "type": "Ready",
        "status": "False",
        "reason": "B",
        "message": "b",
        "observedGeneration": 2,
        "lastTransitionTime": "t1",
    }
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_untouched_conditions_are_kept_in_order() -> None:
    before = apply_conditions(
        [], [ConditionUpdate("A", "True", "x"), ConditionUpdate("B", "True", "y")], 1, "t1"
    )
    after = apply_conditions(
        before, [ConditionUpdate("C", "True", "z"), ConditionUpdate("A", "False", "w")], 1, "t2"
    )
    assert [item["type"] for item in after] == ["A", "B", "C"]
    assert after[1] == before[1]


# ---------------------------------------------------------------------------------------------- observation


def test_worker_from_pod_manifest() -> None:
    manifest = {
        "metadata": {
            "name": "llama-worker-2",
            "uid": "u2",
            "labels": {"kubefit.dev/job": "llama"},
            "ownerReferences": [
                {"uid": "other", "controller": False},
                {"uid": "job-uid", "controller": True},
            ],
            "deletionTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": {"nodeName": "gpu-1"},
        "status": {"phase": "Running"},
    }
    worker = worker_from_pod(manifest)
    assert worker == WorkerPod("llama-worker-2", 2, "u2", "Running", "gpu-1", True, "job-uid")
    assert not worker.ready  # terminating
    assert worker_from_pod({"metadata": {"name": "x"}}) is None


def test_scale_workers_and_stop_workers_directly() -> None:
    changes = scale_workers(2, [pod(0), pod(3), pod(5, terminating=True)])
    assert changes.create == (1,)
    assert changes.delete == ("llama-worker-3",)
    assert stop_workers([pod(0), pod(1, "Failed"), pod(2, terminating=True)], keep_finished=True) == (
        "llama-worker-0",
    )


# ---------------------------------------------------------------------------------------------- inventory


def gpu_pod(node: str | None, gpus: str, phase: str = "Running", job: str | None = None) -> dict[str, Any]:
    labels = {"kubefit.dev/job": job} if job else {}
    return {
        "metadata": {"namespace": "team-a", "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": gpus, "cpu": "2"}}}],
        },
        "status": {"phase": phase},
    }


def test_pod_usage_counts_bound_live_pods_only() -> None:
    assert pod_usage(gpu_pod("n1", "4")) == PodUsage("n1", {"nvidia.com/gpu": 4}, None)
    assert pod_usage(gpu_pod("n1", "4", job="llama")).job == ("team-a", "llama")
    assert pod_usage(gpu_pod(None, "4")) is None
    assert pod_usage(gpu_pod("n1", "4", phase="Succeeded")) is None


def test_inventory_free_devices_and_own_job_excluded() -> None:
    h100 = node_facts(
        {
            "metadata": {"name": "h1", "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
            "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "32"}},
        }
    )
    cpu_only = NodeFacts("c1", {}, {"cpu": "8"})
    cordoned = NodeFacts("h2", dict(h100.labels), {"nvidia.com/gpu": "8"}, schedulable=False)
    usage = {"h1": [pod_usage(gpu_pod("h1", "4", job="other")), pod_usage(gpu_pod("h1", "2", job="llama"))]}
    inventory = build_inventory([h100, cpu_only, cordoned], usage, CATALOG)
    assert inventory.placeable == [NodeInventory("h1", "nvidia-h100-80gb", 8, 2)]
    assert inventory.excluded == [NodeInventory("h2", "nvidia-h100-80gb", 8, 8)]  # cordoned
    mine_free = build_inventory([h100], usage, CATALOG, for_job=("team-a", "llama"))
    assert mine_free.placeable == [NodeInventory("h1", "nvidia-h100-80gb", 8, 4)]


# ---------------------------------------------------------------------------------------------- waste


def test_overprovisioned_fixed_layout_is_warned_in_status_and_told_once_as_an_event() -> None:
    # A 1B model pinned to 8 x H100 per worker: far more than it needs.
    wasteful = raw_spec(resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8})
    first = decide(observe(spec=wasteful), CATALOG)
    warnings = status_of(first)["sizing"]["warnings"]
    advice = [event for event in first.events if event.reason == "OverProvisioned"]
    assert len(advice) == 1 and advice[0].type == "Normal"
    assert advice[0].message in warnings

    again = decide(observe(spec=wasteful, status=first.status), CATALOG)
    assert not [event for event in again.events if event.reason == "OverProvisioned"]
    assert advice[0].message in status_of(again)["sizing"]["warnings"]


def test_layout_the_planner_chose_is_not_called_overprovisioned() -> None:
    chosen = raw_spec(resources={"accelerator": "auto", "acceleratorsPerWorker": "auto"})
    decision = decide(observe(spec=chosen), CATALOG)
    assert not [event for event in decision.events if event.reason == "OverProvisioned"]
