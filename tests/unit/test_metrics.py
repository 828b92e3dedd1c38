"""Operator metrics (docs/metrics.md): each metric's value from real `decide` decisions, the latencies
observed once per job, bounded labels, and every series of a job removed with it."""

from __future__ import annotations

import gc
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

import kubefit
from kubefit.builders.naming import JobRef
from kubefit.decisions.inventory import EMPTY_INVENTORY
from kubefit.decisions.job import Decision, JobObservation, decide
from kubefit.decisions.observed import WorkerPod
from kubefit.metrics import AcceleratorCount, OperatorMetrics, serve_metrics
from kubefit.sizing.catalog import load_catalog

CATALOG = load_catalog()
H100 = "nvidia-h100-80gb"
CREATED = datetime(2025, 1, 1, tzinfo=UTC)
JOB = {"namespace": "team-a", "name": "llama"}
UID = "uid-llama"


def job_spec(
    accelerator: str = H100, replicas: int = 2, elastic: tuple[int, int] | None = None, **extra: Any
) -> dict[str, Any]:
    workers: dict[str, Any] = {"replicas": replicas}
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "trainer", "image": "img"}]}},
        "model": {"parameters": "1B"},
        "resources": {"accelerator": accelerator, "acceleratorsPerWorker": 2},
        "workers": workers,
        **extra,
    }
    if elastic is not None:
        workers["minReplicas"], workers["maxReplicas"] = elastic
        spec["elastic"] = {"enabled": True}
    return spec


def pod(index: int, phase: str = "Running", node: str | None = "n1", **facts: Any) -> WorkerPod:
    return WorkerPod(f"llama-worker-{index}", index, f"pod-{index}", phase, node, controller_uid=UID, **facts)


class Job:
    """One TrainingJob reconciled again and again: each `reconcile` decides from the status the previous
    one wrote (as the reconciler patches it) and hands the observation and decision to the metrics."""

    def __init__(self, metrics: OperatorMetrics, spec: Mapping[str, Any], name: str = "llama"):
        self.metrics, self.spec, self.name = metrics, spec, name
        self.status: dict[str, Any] = {}

    def reconcile(
        self, after: float, pods: Sequence[WorkerPod] = (), grant: int | None = None, uid: str = UID
    ) -> Decision:
        observation = JobObservation(
            JobRef(self.name, "team-a", uid),
            1,
            self.spec,
            self.status,
            pods,
            EMPTY_INVENTORY,
            CREATED + timedelta(seconds=after),
            grant=grant,
            created=CREATED,
        )
        decision = decide(observation, CATALOG)
        self.metrics.observe_job(observation, decision)
        self.status = decision.status.model_dump(by_alias=True, exclude_none=True)
        return decision


def value(metrics: OperatorMetrics, sample: str, /, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(sample, labels)


def admitted(status: Mapping[str, Any]) -> tuple[str, str]:
    condition = next(item for item in status["conditions"] if item["type"] == "Admitted")
    return condition["status"], condition["reason"]


def series_of(metrics: OperatorMetrics, name: str) -> list[str]:
    """The exposition lines that carry the job's name label."""
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if f'name="{name}"' in line]


def test_build_info_names_the_package_version() -> None:
    metrics = OperatorMetrics()
    assert value(metrics, "kubefit_build_info", version=kubefit.__version__) == 1
    assert value(OperatorMetrics(version="9.9.9"), "kubefit_build_info", version="9.9.9") == 1


def test_reconciles_count_by_trigger_and_result_with_their_duration() -> None:
    metrics = OperatorMetrics()
    with metrics.reconciling("timer"):
        pass
    with pytest.raises(RuntimeError), metrics.reconciling("pod"):
        raise RuntimeError("api down")
    with metrics.reconciling("something-new"):  # an unknown trigger does not make a new label value
        pass
    assert value(metrics, "kubefit_reconcile_total", trigger="timer", result="success") == 1
    assert value(metrics, "kubefit_reconcile_total", trigger="timer", result="error") == 0  # there, at 0
    assert value(metrics, "kubefit_reconcile_total", trigger="pod", result="error") == 1
    assert value(metrics, "kubefit_reconcile_total", trigger="other", result="success") == 1
    assert value(metrics, "kubefit_reconcile_duration_seconds_count") == 3
    assert 'trigger="something-new"' not in generate_latest(metrics.registry).decode()


def test_job_gauges_follow_the_decision() -> None:
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec(replicas=3, elastic=(2, 4)))
    decision = job.reconcile(10, [pod(0), pod(1, "Pending", None), pod(2, "Running", terminating=True)], 3)
    assert decision.status.phase == "Pending" and decision.desired_workers == 3
    sizing = decision.sizing
    assert sizing is not None and sizing.accelerator == H100

    assert value(metrics, "kubefit_trainingjob_info", **JOB, accelerator=H100, phase="Pending", uid=UID) == 1
    workers = {
        state: value(metrics, "kubefit_trainingjob_workers", **JOB, state=state)
        for state in ("desired", "running", "pending", "min", "max")
    }
    # 1 runs; the unbound one is pending, the terminating one is neither.
    assert workers == {"desired": 3, "running": 1, "pending": 1, "min": 2, "max": 4}
    sized = {**JOB, "accelerator": H100}
    # Requested: the live pods (the unbound one included); allocated: the running one only.
    assert value(metrics, "kubefit_trainingjob_accelerators", **sized, state="requested") == 4
    assert value(metrics, "kubefit_trainingjob_accelerators", **sized, state="allocated") == 2
    assert (
        value(metrics, "kubefit_trainingjob_memory_requested_bytes", **sized)
        == CATALOG.get(H100).memory_bytes
    )
    assert value(metrics, "kubefit_trainingjob_memory_estimated_bytes", **sized) == sizing.per_device_bytes
    assert 0 < sizing.per_device_bytes < CATALOG.get(H100).memory_bytes


def test_a_gang_runs_with_its_whole_size_as_both_min_and_max() -> None:
    metrics = OperatorMetrics()
    Job(metrics, job_spec(replicas=3)).reconcile(10, [], 3)
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="min") == 3
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="max") == 3


def test_an_elastic_jax_job_runs_only_with_its_whole_group_so_that_is_its_min() -> None:
    """JAX_NUM_PROCESSES is fixed when the workers start: 2 of a group of 3 train on nothing, and the
    partial-gang alert (running below min) must see it."""
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec(replicas=3, elastic=(2, 4), framework="jax"))
    decision = job.reconcile(10, [pod(0), pod(1), pod(2, "Pending", None)], 3)
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="min") == 3
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="max") == 4
    running = next(c for c in decision.status.conditions or () if c.type == "Running")
    assert running.status == "False"
    pytorch = OperatorMetrics()
    Job(pytorch, job_spec(replicas=3, elastic=(2, 4))).reconcile(
        10, [pod(0), pod(1), pod(2, "Pending", None)], 3
    )
    assert value(pytorch, "kubefit_trainingjob_workers", **JOB, state="min") == 2


def test_a_job_held_below_a_raised_minimum_trains_on_its_group_and_is_no_partial_gang() -> None:
    """Fixed at 2, replicas raised to 4 with no room: the pass keeps its grant of 2, and the two running
    train. Judged by the new size, they would fire the partial-gang alert."""
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec(replicas=2))
    job.reconcile(10, [pod(0), pod(1)], 2)
    job.spec = job_spec(replicas=4)
    decision = job.reconcile(20, [pod(0), pod(1)], 2)
    assert decision.desired_workers == 2
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="min") == 2
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="max") == 4
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="running") == 2


def test_a_new_phase_or_accelerator_replaces_the_series_instead_of_adding_one() -> None:
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec())
    job.reconcile(1)  # queued: no grant yet
    assert value(metrics, "kubefit_trainingjob_info", **JOB, accelerator=H100, phase="Queued", uid=UID) == 1
    job.reconcile(2, [pod(0), pod(1)], 2)
    assert value(metrics, "kubefit_trainingjob_info", **JOB, accelerator=H100, phase="Running", uid=UID) == 1
    assert (
        value(metrics, "kubefit_trainingjob_info", **JOB, accelerator=H100, phase="Queued", uid=UID) is None
    )

    job.spec = job_spec("nvidia-a100-80gb")
    job.reconcile(3, [], 2)
    lines = series_of(metrics, "llama")
    assert lines and not any(H100 in line for line in lines)
    assert value(metrics, "kubefit_trainingjob_memory_requested_bytes", **JOB, accelerator="nvidia-a100-80gb")


def test_a_scrape_during_a_phase_change_sees_the_job_in_one_phase_or_the_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A scrape takes no lock of the operator's: one between removing the old series and setting the new
    # saw no info series, and KubefitJobStuckPending's `unless` on the current phase had nothing to hold it.
    import kubefit.metrics.operator_metrics as operator_metrics

    metrics = OperatorMetrics()
    job = Job(metrics, job_spec())
    job.reconcile(1)  # Queued
    seen: list[list[str]] = []
    remove = operator_metrics._remove

    def scraped_after(gauge: Any, labels: Any) -> None:
        remove(gauge, labels)
        seen.append([line for line in series_of(metrics, "llama") if "trainingjob_info" in line])

    monkeypatch.setattr(operator_metrics, "_remove", scraped_after)
    job.reconcile(2, [pod(0), pod(1)], 2)  # Running
    assert seen and all(seen), "a scrape in the middle of the change saw the job with no info series"


def test_an_invalid_job_exports_its_phase_without_accelerator_bounds_or_memory() -> None:
    metrics = OperatorMetrics()
    Job(metrics, {"workers": {"replicas": "many"}}).reconcile(1)
    assert value(metrics, "kubefit_trainingjob_info", **JOB, accelerator="", phase="Pending", uid=UID) == 1
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="desired") == 0
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="min") is None
    assert not [line for line in series_of(metrics, "llama") if "accelerators" in line or "memory" in line]


def test_a_spec_that_parses_but_is_invalid_exports_no_bounds_either() -> None:
    """Refused after parsing: a count over --max-workers-per-job, a name too long for its pods' names."""
    metrics = OperatorMetrics()
    Job(metrics, {**job_spec(), "workers": {"replicas": 2000}}).reconcile(1)
    Job(metrics, job_spec(), name="x" * 60).reconcile(1)
    for name in ("llama", "x" * 60):
        labels = {"namespace": "team-a", "name": name}
        assert value(metrics, "kubefit_trainingjob_workers", **labels, state="desired") == 0
        assert value(metrics, "kubefit_trainingjob_workers", **labels, state="min") is None
        assert value(metrics, "kubefit_trainingjob_workers", **labels, state="max") is None


def test_every_series_of_a_deleted_job_is_removed_and_the_others_stay() -> None:
    metrics = OperatorMetrics()
    Job(metrics, job_spec(), "llama").reconcile(10, [pod(0), pod(1)], 2)
    Job(metrics, job_spec(), "other").reconcile(10, [], None)
    before = series_of(metrics, "llama")
    assert len(before) == 11  # info, 6 worker states, 2 accelerator states, 2 memory gauges
    metrics.forget_job("team-a", "llama")
    assert series_of(metrics, "llama") == []
    assert series_of(metrics, "other")
    assert metrics.jobs_observed() == 1
    metrics.forget_job("team-a", "never-seen")  # harmless


def test_a_reconcile_that_ends_after_the_deletion_does_not_bring_the_series_back() -> None:
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec())
    job.reconcile(10, [pod(0), pod(1)], 2)
    metrics.forget_job("team-a", "llama")  # the job's DELETED event, while a reconcile of it runs
    job.reconcile(11, [pod(0), pod(1)], 2)  # that reconcile read the job before it was deleted
    assert series_of(metrics, "llama") == []
    job.status = {}  # created again under the same name: a new uid, a new status
    job.reconcile(12, [], None, uid="uid-of-a-new-llama")
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="desired") == 0


def test_a_job_deleted_during_its_first_reconcile_leaves_no_series() -> None:
    """Its DELETED event comes before the reconcile that first observes it ends: a job with no demand (here
    one that does not fit) is reconciled no more, and its Pending series would stay for good."""
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec())
    metrics.forget_job("team-a", "llama", UID)  # never observed: only the event's uid tells it
    job.reconcile(10, [], None)
    assert series_of(metrics, "llama") == []
    job.reconcile(12, [], None, uid="uid-of-a-new-llama")  # created again under the same name
    assert series_of(metrics, "llama")


def test_the_old_jobs_deletion_that_comes_after_the_new_ones_reconcile_leaves_the_new_series() -> None:
    """kopf handles each uid on its own: the old job's DELETED event can come after the first reconcile of
    the job created again under its name (kubectl delete, then apply)."""
    metrics = OperatorMetrics()
    Job(metrics, job_spec()).reconcile(10, [pod(0), pod(1)], 2)  # the old job, UID
    new = Job(metrics, job_spec())
    new.reconcile(20, [], 2, uid="uid-of-a-new-llama")
    before = series_of(metrics, "llama")
    metrics.forget_job("team-a", "llama", UID)
    assert series_of(metrics, "llama") == before
    new.reconcile(21, [], 2, uid="uid-of-a-new-llama")
    assert series_of(metrics, "llama")
    Job(metrics, job_spec()).reconcile(22, [pod(0), pod(1)], 2)  # a late reconcile of the old one: barred
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="running") == 0


def test_workers_that_finished_their_part_are_counted_apart_from_those_short_of_the_gang() -> None:
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec())
    job.reconcile(10, [pod(0), pod(1)], 2)
    job.reconcile(20, [pod(0, "Succeeded"), pod(1)], 2)  # worker 0 done, worker 1 still saving
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="succeeded") == 1
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="running") == 1
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="pending") == 0


@pytest.mark.parametrize("framework", [None, "pytorch"])
def test_finished_workers_whose_pods_went_still_count_as_succeeded(framework: str | None) -> None:
    """A gang of 4 whose workers 0 and 1 finished and whose pods then went (a cluster autoscaler removes a
    node holding only finished pods): the reconcile records them (status.succeededWorkers) and creates
    nothing, but the metric counted pods only, 2 running + 0 succeeded < min 4, and
    KubefitPartialGangHoldingAccelerators fired on a finishing gang."""
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec(replicas=4, **({"framework": framework} if framework else {})))
    job.reconcile(1, grant=4)
    job.reconcile(10, [pod(index) for index in range(4)], 4)
    job.reconcile(20, [pod(0, "Succeeded"), pod(1, "Succeeded"), pod(2), pod(3)], 4)
    decision = job.reconcile(30, [pod(2), pod(3)], 4)
    assert decision.create == () and job.status.get("succeededWorkers") == "0-1"
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="succeeded") == 2
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="running") == 2


def test_a_worker_on_a_node_that_stopped_answering_is_not_pending() -> None:
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec())
    job.reconcile(10, [pod(0), pod(1)], 2)
    job.reconcile(20, [pod(0), pod(1, node_lost=True)], 2)
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="running") == 1
    assert value(metrics, "kubefit_trainingjob_workers", **JOB, state="pending") == 0


def test_the_workers_help_text_names_every_state_it_exports() -> None:
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec(elastic=(1, 3)))
    job.reconcile(10, [pod(0), pod(1, "Succeeded"), pod(2, "Pending", node=None)], 3)
    text = generate_latest(metrics.registry).decode()
    help_line = next(
        line for line in text.splitlines() if line.startswith("# HELP kubefit_trainingjob_workers ")
    )
    states = {
        line.split('state="')[1].split('"')[0] for line in series_of(metrics, "llama") if "_workers{" in line
    }
    assert states >= {"desired", "running", "pending", "succeeded", "min", "max"}
    assert [state for state in sorted(states) if state not in help_line] == []


def test_queue_wait_is_creation_to_admission_observed_once() -> None:
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec())
    job.reconcile(5)  # queued
    assert value(metrics, "kubefit_queue_wait_seconds_count") == 0
    job.reconcile(42, [], 2)  # admitted 42 s after creation
    assert value(metrics, "kubefit_queue_wait_seconds_count") == 1
    assert value(metrics, "kubefit_queue_wait_seconds_sum") == 42
    assert value(metrics, "kubefit_queue_wait_seconds_bucket", le="60.0") == 1
    assert value(metrics, "kubefit_queue_wait_seconds_bucket", le="30.0") == 0
    job.reconcile(50, [pod(0), pod(1)], 2)  # still admitted: nothing more
    assert value(metrics, "kubefit_queue_wait_seconds_count") == 1


def test_queue_wait_and_scheduling_latency_of_a_job_created_suspended_count_from_its_resume() -> None:
    # A pipeline creates the job suspended and resumes it an hour later: the hour was its user's, not a
    # wait for capacity.
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec(runPolicy={"suspend": True}))
    job.reconcile(5)
    job.spec = job_spec(runPolicy={"suspend": False})
    job.reconcile(3600)  # resumed: queued
    job.reconcile(3642, [], 2)  # admitted 42 s later
    assert value(metrics, "kubefit_queue_wait_seconds_sum") == 42
    job.reconcile(3700, [pod(0), pod(1)], 2)
    assert value(metrics, "kubefit_scheduling_latency_seconds_sum") == 100


def test_an_operator_restart_does_not_observe_an_admission_again() -> None:
    first = OperatorMetrics()
    job = Job(first, job_spec())
    job.reconcile(42, [], 2)
    assert value(first, "kubefit_queue_wait_seconds_count") == 1
    restarted = OperatorMetrics()  # a new process reads the job with Admitted=True already
    job.metrics = restarted
    job.reconcile(60, [pod(0), pod(1)], 2)
    assert value(restarted, "kubefit_queue_wait_seconds_count") == 0
    assert value(restarted, "kubefit_trainingjob_workers", **JOB, state="running") == 2


def test_a_job_admitted_again_after_a_preemption_is_not_observed_again() -> None:
    for metrics in (OperatorMetrics(), None):  # in the same process, and in a process started meanwhile
        job = Job(metrics or OperatorMetrics(), job_spec())
        job.reconcile(42, [], 2)
        job.reconcile(50, [pod(0), pod(1)], 2)
        job.reconcile(60, [pod(0), pod(1)], 0)  # the pass took the grant back: preempted
        assert admitted(job.status) == ("False", "Preempted")
        job.metrics = metrics or OperatorMetrics()
        job.reconcile(80, [], 0)
        job.reconcile(90, [], 2)  # admitted again
        assert admitted(job.status) == ("True", "Admitted")
        assert value(job.metrics, "kubefit_queue_wait_seconds_count") == (1 if metrics else 0)


def test_scheduling_latency_is_creation_to_the_minimum_running_observed_once() -> None:
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec(replicas=3, elastic=(2, 3)))
    job.reconcile(10, [], 3)
    job.reconcile(20, [pod(0), pod(1, "Pending", None)], 3)  # 1 of a minimum of 2 runs
    assert value(metrics, "kubefit_scheduling_latency_seconds_count") == 0
    job.reconcile(75, [pod(0), pod(1), pod(2, "Pending", None)], 3)  # the minimum runs
    assert value(metrics, "kubefit_scheduling_latency_seconds_count") == 1
    assert value(metrics, "kubefit_scheduling_latency_seconds_sum") == 75
    job.reconcile(80, [pod(0)], 3)  # below the minimum again, then back: not a second observation
    job.reconcile(90, [pod(0), pod(1)], 3)
    assert value(metrics, "kubefit_scheduling_latency_seconds_count") == 1


def test_scale_events_and_preemptions_keep_their_labels_bounded() -> None:
    metrics = OperatorMetrics()
    assert value(metrics, "kubefit_scale_events_total", direction="down", reason="ScaledDown") == 0
    assert value(metrics, "kubefit_preemptions_total", reason="HigherPriority") == 0
    metrics.count_scale_events([("up", "ScaledUp"), ("down", "ShrunkForPriority"), ("down", "Whatever")])
    metrics.count_preemptions(["HigherPriority", "HigherPriority", "team-b/urgent wanted it"])
    assert value(metrics, "kubefit_scale_events_total", direction="up", reason="ScaledUp") == 1
    assert value(metrics, "kubefit_scale_events_total", direction="down", reason="ShrunkForPriority") == 1
    assert value(metrics, "kubefit_scale_events_total", direction="down", reason="Other") == 1
    assert value(metrics, "kubefit_preemptions_total", reason="HigherPriority") == 2
    assert value(metrics, "kubefit_preemptions_total", reason="Other") == 1
    with pytest.raises(ValueError, match="scale direction must be one of"):
        metrics.count_scale_events([("sideways", "ScaledUp")])


def test_worker_binds_start_at_zero_and_an_unknown_placement_is_refused_by_name() -> None:
    metrics = OperatorMetrics()
    assert value(metrics, "kubefit_worker_binds_total", placement="elsewhere") == 0
    metrics.count_worker_bind("counted")
    assert value(metrics, "kubefit_worker_binds_total", placement="counted") == 1
    with pytest.raises(ValueError, match="bind placement must be one of .*got 'nowhere'"):
        metrics.count_worker_bind("nowhere")
    assert value(metrics, "kubefit_worker_binds_total", placement="counted") == 1  # nothing counted for it


def test_cluster_accelerators_come_from_the_source_at_each_scrape_and_a_failing_source_drops_them() -> None:
    metrics = OperatorMetrics()
    assert value(metrics, "kubefit_cluster_accelerators", accelerator=H100, state="free") is None
    counts = {H100: AcceleratorCount(16, 12)}
    metrics.watch_cluster(lambda: counts)
    assert value(metrics, "kubefit_cluster_accelerators", accelerator=H100, state="allocatable") == 16
    assert value(metrics, "kubefit_cluster_accelerators", accelerator=H100, state="allocated") == 12
    assert value(metrics, "kubefit_cluster_accelerators", accelerator=H100, state="free") == 4
    counts[H100] = AcceleratorCount(8, 12)  # over-requested: free is never negative
    assert value(metrics, "kubefit_cluster_accelerators", accelerator=H100, state="free") == 0

    def broken() -> Mapping[str, AcceleratorCount]:
        raise RuntimeError("index changed during iteration")

    metrics.watch_cluster(broken)
    text = generate_latest(metrics.registry).decode()
    assert "kubefit_build_info" in text and "kubefit_cluster_accelerators{" not in text


def test_job_accelerators_count_what_each_worker_pod_holds_not_the_spec_after_an_edit() -> None:
    # A fixed group's acceleratorsPerWorker edited from 2 to 4 while its workers run (stored where the
    # webhook is off): its pods still hold 2 each, and the gauges say so.
    metrics = OperatorMetrics()
    spec = job_spec(replicas=2)
    spec["resources"]["acceleratorsPerWorker"] = 4
    held = (("nvidia.com/gpu", 2),)
    decision = Job(metrics, spec).reconcile(
        10, [pod(0, devices=held), pod(1, "Pending", None, devices=held)], 2
    )
    assert decision.sizing is not None and decision.sizing.accelerators_per_worker == 4
    sized = {**JOB, "accelerator": H100}
    assert value(metrics, "kubefit_trainingjob_accelerators", **sized, state="requested") == 4
    assert value(metrics, "kubefit_trainingjob_accelerators", **sized, state="allocated") == 2


def test_a_worker_pod_holds_the_devices_of_its_manifest() -> None:
    from kubefit.decisions.observed import worker_from_pod

    manifest = {
        "metadata": {"name": "llama-worker-0", "labels": {"kubefit.dev/job": "llama"}},
        "spec": {
            "containers": [
                {"name": "trainer", "resources": {"limits": {"nvidia.com/gpu": "2", "cpu": "4"}}},
                {"name": "sidecar", "resources": {"requests": {"example.com/nic": 1}}},
            ]
        },
    }
    worker = worker_from_pod(manifest)
    assert worker is not None
    assert worker.holds("nvidia.com/gpu") == 2 and worker.holds("google.com/tpu") == 0
    assert worker_from_pod({**manifest, "spec": {}}).holds("nvidia.com/gpu") is None  # type: ignore[union-attr]


def test_an_accelerator_type_whose_nodes_were_all_deleted_reads_zero_not_absent() -> None:
    metrics = OperatorMetrics()
    counts = {H100: AcceleratorCount(16, 4)}
    metrics.watch_cluster(lambda: counts)
    assert value(metrics, "kubefit_cluster_accelerators", accelerator=H100, state="allocatable") == 16
    counts.clear()  # the scheduler's view no longer has any node of the type
    for state in ("allocatable", "allocated", "free"):
        assert value(metrics, "kubefit_cluster_accelerators", accelerator=H100, state=state) == 0
    counts["nvidia-a100-80gb"] = AcceleratorCount(8, 0)  # a new type joins; the old one still reads 0
    assert value(metrics, "kubefit_cluster_accelerators", accelerator="nvidia-a100-80gb", state="free") == 8
    assert value(metrics, "kubefit_cluster_accelerators", accelerator=H100, state="allocatable") == 0


def test_metrics_are_served_over_http() -> None:
    metrics = OperatorMetrics()
    Job(metrics, job_spec()).reconcile(1, [], 2)
    port = serve_metrics(metrics, "127.0.0.1", 0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'kubefit_trainingjob_workers{name="llama",namespace="team-a",state="desired"} 2.0' in text


def test_each_garbage_collection_is_timed_by_its_generation_while_installed() -> None:
    metrics = OperatorMetrics(process_metrics=True)
    timer = metrics.garbage_collection
    assert timer is not None and timer._on_collection in gc.callbacks

    def collections(generation: str) -> float:
        value = metrics.registry.get_sample_value(
            "kubefit_garbage_collection_seconds_count", {"generation": generation}
        )
        return value or 0.0

    enabled = gc.isenabled()
    gc.disable()  # only the collections asked for below run
    try:
        before = {generation: collections(generation) for generation in ("0", "1", "2")}
        gc.collect(2)
        gc.collect(2)
        after_full = collections("2")
        assert after_full == before["2"] + 2
        assert (
            metrics.registry.get_sample_value("kubefit_garbage_collection_seconds_sum", {"generation": "2"})
            or 0.0
        ) > 0.0
        assert collections("1") == before["1"]  # a full collection is counted once, as generation 2
        gc.collect(0)
        assert collections("0") == before["0"] + 1
    finally:
        timer.uninstall()
        if enabled:
            gc.enable()
    assert timer._on_collection not in gc.callbacks
    gc.collect(2)
    assert collections("2") == after_full  # uninstalled: no longer observed


def test_an_operator_metrics_without_process_metrics_does_not_time_collections() -> None:
    callbacks = list(gc.callbacks)
    metrics = OperatorMetrics()
    assert metrics.garbage_collection is None and gc.callbacks == callbacks
    assert "kubefit_garbage_collection_seconds" not in generate_latest(metrics.registry).decode()


# ------------------------------------------------------------------------------------------ docs/metrics.md

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented_table() -> dict[str, set[str]]:
    """docs/metrics.md's table: metric -> its labels."""
    rows = re.findall(r"^\| `(kubefit_\w+)` \| \w+ \| (.+) \|$", DOC.read_text(), re.MULTILINE)
    return {name: set(re.findall(r"`(\w+)`", labels)) for name, labels in rows}


def exported(metrics: OperatorMetrics) -> dict[str, set[str]]:
    """What the registry exports: metric name as queried (counters with _total) -> its label names."""
    found: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = found.setdefault(name, set())
        for sample in family.samples:
            labels.update(label for label in sample.labels if label != "le")
    return found


def test_a_job_s_failing_reconciles_are_a_series_until_one_succeeds_or_the_job_goes() -> None:
    metrics = OperatorMetrics()
    name = "kubefit_trainingjob_reconcile_failures"
    metrics.job_reconcile_failed("ml", "broken", "uid-1", 1)
    metrics.job_reconcile_failed("ml", "broken", "uid-1", 2)
    assert value(metrics, name, namespace="ml", name="broken") == 2
    metrics.job_reconcile_succeeded("ml", "broken")
    assert value(metrics, name, namespace="ml", name="broken") is None
    metrics.job_reconcile_failed("ml", "broken", "uid-1", 1)
    metrics.forget_job("ml", "broken", "uid-1")
    assert value(metrics, name, namespace="ml", name="broken") is None
    metrics.job_reconcile_failed("ml", "broken", "uid-1", 2)  # a late failure of the deleted job
    metrics.job_reconcile_failed("ml", "unread", None, 1)  # a job never read: nothing to name it by
    assert value(metrics, name, namespace="ml", name="broken") is None
    assert value(metrics, name, namespace="ml", name="unread") is None


def test_a_job_made_again_under_a_failing_job_s_name_does_not_inherit_its_failures() -> None:
    metrics = OperatorMetrics()
    Job(metrics, job_spec()).reconcile(10, [pod(0)], 1, uid="uid-old")
    metrics.job_reconcile_failed("team-a", "llama", "uid-old", 5)
    sample = "kubefit_trainingjob_reconcile_failures"
    assert value(metrics, sample, namespace="team-a", name="llama") == 5
    Job(metrics, job_spec()).reconcile(
        20, [pod(0)], 1, uid="uid-new"
    )  # the old one's DELETED not handled yet
    assert value(metrics, sample, namespace="team-a", name="llama") is None


def test_every_exported_metric_is_documented_with_its_labels_and_nothing_else_is() -> None:
    metrics = OperatorMetrics(process_metrics=True)
    try:
        Job(metrics, job_spec()).reconcile(10, [pod(0), pod(1)], 2)
        metrics.job_reconcile_failed("ml", "broken", "uid-broken", 3)
        metrics.watch_cluster(lambda: {H100: AcceleratorCount(8, 4)})
        ours = {name: labels for name, labels in exported(metrics).items() if name.startswith("kubefit_")}
    finally:
        assert metrics.garbage_collection is not None
        metrics.garbage_collection.uninstall()
    assert ours == documented_table()
    for name in documented_table():
        assert re.search(rf"^### `{name}[{{`]", DOC.read_text(), re.MULTILINE), f"{name} has no section"


def test_every_example_query_in_the_docs_parses(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (Debian package prometheus: make system)"
    queries = re.findall(r"```promql\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(queries) >= len(documented_table())
    rules = {
        "groups": [
            {
                "name": "docs-metrics-examples",
                "rules": [{"record": f"example:{i}", "expr": query} for i, query in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "examples.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_running_job_whose_spec_turns_invalid_still_exports_the_devices_its_workers_hold() -> None:
    # The workers keep running (and holding 4 H100s) until the spec is put right; the waste alerts read
    # these series, so they must not vanish after the first reconcile of the invalid spec.
    metrics = OperatorMetrics()
    job = Job(metrics, job_spec())
    job.reconcile(10, [pod(0), pod(1)], 2)
    job.spec = {**job_spec(), "workers": {"replicas": 100_000}}
    for after in (20, 30, 40):
        decision = job.reconcile(after, [pod(0), pod(1)], 2)
        assert decision.delete == ()
    lines = series_of(metrics, "llama")
    assert any('state="allocated"} 4.0' in line for line in lines), lines
    assert any(line.startswith("kubefit_trainingjob_memory_estimated_bytes") for line in lines), lines


def test_the_leader_exports_when_it_became_the_leader_and_a_standby_zero() -> None:
    """The per-job alerts bridge a gap in a job's series only while the leader is new (docs/alerts.md)."""
    metrics = OperatorMetrics()
    assert value(metrics, "kubefit_leader") == 0 and value(metrics, "kubefit_leader_start_time_seconds") == 0
    before = time.time()
    metrics.became_leader()
    assert value(metrics, "kubefit_leader") == 1
    assert before <= value(metrics, "kubefit_leader_start_time_seconds") <= time.time()


def test_two_scrapes_at_once_while_a_new_accelerator_type_appears_both_answer() -> None:
    """prometheus_client serves each scrape on its own thread: one iterating the accelerator types seen while
    the other added a new one failed with 'Set changed size during iteration' (HTTP 500)."""
    metrics = OperatorMetrics()
    collector = metrics._cluster
    counts = {"nvidia-h100-80gb": AcceleratorCount(8, 0), "nvidia-a100-80gb": AcceleratorCount(8, 0)}
    collector.source = lambda: dict(counts)
    list(collector.collect())
    paused, resume = threading.Event(), threading.Event()

    class PausingCounts(dict):  # type: ignore[type-arg]
        def get(self, key: object, default: object = None) -> object:  # once per type the scrape lists
            if not paused.is_set():
                paused.set()
                resume.wait(5)
            return dict.get(self, key, default)

    answers = [PausingCounts(counts), {**counts, "nvidia-l4": AcceleratorCount(8, 0)}]
    collector.source = lambda: answers.pop(0)
    failures: list[BaseException] = []

    def first_scrape() -> None:
        try:
            list(collector.collect())
        except BaseException as error:  # noqa: BLE001 - the failure is the finding
            failures.append(error)

    first = threading.Thread(target=first_scrape)
    first.start()
    assert paused.wait(5)
    second = list(collector.collect())  # a node of a new type registered meanwhile
    resume.set()
    first.join(5)
    assert failures == []
    assert {sample.labels["accelerator"] for sample in second[0].samples} == {
        "nvidia-h100-80gb",
        "nvidia-a100-80gb",
        "nvidia-l4",
    }
