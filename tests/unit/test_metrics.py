"""Operator metrics: reconcile counters and per-job gauges, and their removal with the job."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest

from kubefit.builders.naming import JobRef
from kubefit.decisions.job import Decision, JobObservation, decide
from kubefit.decisions.observed import WorkerPod
from kubefit.metrics import OperatorMetrics
from kubefit.sizing.catalog import load_catalog

CATALOG = load_catalog()


def decision_for(accelerator: str = "nvidia-h100-80gb", running: int = 2) -> Decision:
    spec = {
        "template": {"spec": {"containers": [{"name": "trainer", "image": "img"}]}},
        "model": {"parameters": "1B"},
        "resources": {"accelerator": accelerator, "acceleratorsPerWorker": 2},
        "workers": {"replicas": 2},
    }
    pods = [
        WorkerPod(f"llama-worker-{i}", i, f"uid-{i}", "Running", "n", False, "job") for i in range(running)
    ]
    observation = JobObservation(
        JobRef("llama", "team-a", "job"), 1, spec, {}, pods, [], datetime(2025, 1, 1, tzinfo=UTC), grant=4096
    )
    return decide(observation, CATALOG)


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_job_gauges_follow_the_decision() -> None:
    metrics = OperatorMetrics()
    metrics.observe_job("team-a", "llama", decision_for(running=1))
    job = {"namespace": "team-a", "job": "llama"}
    assert value(metrics, "kubefit_job_desired_workers", **job) == 2
    assert value(metrics, "kubefit_job_ready_workers", **job) == 1
    sized = {**job, "accelerator": "nvidia-h100-80gb"}
    assert value(metrics, "kubefit_job_requested_accelerators", **sized, resource="nvidia.com/gpu") == 2
    assert (
        value(metrics, "kubefit_job_device_memory_bytes", **sized)
        == CATALOG.get("nvidia-h100-80gb").memory_bytes
    )
    assert 0 < value(metrics, "kubefit_job_estimated_per_device_bytes", **sized) < 80 * 2**30


def test_deleted_job_series_are_removed() -> None:
    metrics = OperatorMetrics()
    metrics.observe_job("team-a", "llama", decision_for())
    metrics.observe_job("team-a", "other", decision_for())
    metrics.forget_job("team-a", "llama")
    exposition = generate_latest(metrics.registry).decode()
    assert 'job="llama"' not in exposition
    assert 'job="other"' in exposition
    metrics.forget_job("team-a", "never-seen")  # harmless


def test_a_changed_accelerator_replaces_the_series() -> None:
    metrics = OperatorMetrics()
    metrics.observe_job("team-a", "llama", decision_for("nvidia-h100-80gb"))
    metrics.observe_job("team-a", "llama", decision_for("nvidia-a100-80gb"))
    exposition = generate_latest(metrics.registry).decode()
    assert "nvidia-h100-80gb" not in exposition
    assert "nvidia-a100-80gb" in exposition


def test_reconcile_count_errors_and_duration() -> None:
    metrics = OperatorMetrics()
    with metrics.reconciling("timer"):
        pass
    with pytest.raises(RuntimeError), metrics.reconciling("pod"):
        raise RuntimeError("api down")
    assert value(metrics, "kubefit_reconciles_total", trigger="timer") == 1
    assert value(metrics, "kubefit_reconciles_total", trigger="pod") == 1
    assert value(metrics, "kubefit_reconcile_errors_total", trigger="pod") == 1
    assert value(metrics, "kubefit_reconcile_errors_total", trigger="timer") in (None, 0)
    assert value(metrics, "kubefit_reconcile_duration_seconds_count", trigger="pod") == 1
