"""The operator's Prometheus metrics.

Reconcile loop: `kubefit_reconciles_total{trigger}`, `kubefit_reconcile_errors_total{trigger}`,
`kubefit_reconcile_duration_seconds{trigger}`.
Per job (labels namespace, job): `kubefit_job_desired_workers`, `kubefit_job_ready_workers`,
`kubefit_job_requested_accelerators{accelerator, resource}`, `kubefit_job_estimated_per_device_bytes{accelerator}`
and `kubefit_job_device_memory_bytes{accelerator}` (compare the two to see the margin).
A job's series are removed when the job is deleted, and a series whose accelerator changed is replaced.
Admission queue (controller/scheduler.py): `kubefit_queued_jobs` (jobs waiting for admission after the
last scheduling pass), `kubefit_admissions_total`, `kubefit_scale_events_total{direction}` (direction
up: an admitted job's grant grew; down: it shrank; preempt: a whole job was stopped and requeued).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from kubefit.api.resource import JobKey
from kubefit.decisions.job import Decision

_JOB = ["namespace", "job"]
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class OperatorMetrics:
    """All metrics of one operator process, in their own registry (tests make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None, process_metrics: bool = False):
        self.registry = registry or CollectorRegistry()
        if process_metrics:
            ProcessCollector(registry=self.registry)
        self.reconciles = Counter(
            "kubefit_reconciles",
            "Reconciles of TrainingJobs, by trigger.",
            ["trigger"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "kubefit_reconcile_errors",
            "Reconciles that raised, by trigger.",
            ["trigger"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "kubefit_reconcile_duration_seconds",
            "Time to observe, decide and apply one reconcile.",
            ["trigger"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.desired_workers = Gauge(
            "kubefit_job_desired_workers", "Effective worker count of the job.", _JOB, registry=self.registry
        )
        self.ready_workers = Gauge(
            "kubefit_job_ready_workers", "Worker pods running.", _JOB, registry=self.registry
        )
        self.requested_accelerators = Gauge(
            "kubefit_job_requested_accelerators",
            "Accelerators requested by the job's live worker pods.",
            [*_JOB, "accelerator", "resource"],
            registry=self.registry,
        )
        self.per_device_bytes = Gauge(
            "kubefit_job_estimated_per_device_bytes",
            "Estimated peak memory per device of the job's layout.",
            [*_JOB, "accelerator"],
            registry=self.registry,
        )
        self.device_memory_bytes = Gauge(
            "kubefit_job_device_memory_bytes",
            "Memory of the job's accelerator as the driver reports it.",
            [*_JOB, "accelerator"],
            registry=self.registry,
        )
        self._add_queue_metrics()
        self._lock = threading.Lock()
        self._sized_labels: dict[JobKey, tuple[str, str]] = {}  # job -> (accelerator, resource) in use

    def _add_queue_metrics(self) -> None:
        self.queued_jobs = Gauge(
            "kubefit_queued_jobs", "TrainingJobs waiting for admission.", registry=self.registry
        )
        self.admissions = Counter(
            "kubefit_admissions", "TrainingJobs admitted (queued -> admitted).", registry=self.registry
        )
        self.scale_events = Counter(
            "kubefit_scale_events",
            "Changes of an admitted job's granted worker count, by direction (up, down, preempt).",
            ["direction"],
            registry=self.registry,
        )

    @contextmanager
    def reconciling(self, trigger: str) -> Iterator[None]:
        """Counts one reconcile and its duration; an exception counts as an error and propagates."""
        self.reconciles.labels(trigger).inc()
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.reconcile_errors.labels(trigger).inc()
            raise
        finally:
            self.reconcile_duration.labels(trigger).observe(time.perf_counter() - started)

    def observe_job(self, namespace: str, name: str, decision: Decision) -> None:
        key = (namespace, name)
        with self._lock:
            self.desired_workers.labels(namespace, name).set(decision.desired_workers)
            self.ready_workers.labels(namespace, name).set(decision.status.ready_replicas or 0)
            sizing = decision.sizing
            labels = (sizing.accelerator, sizing.resource_name) if sizing else None
            if self._sized_labels.get(key) != labels:
                self._remove_sized(key)
            if sizing is None or labels is None:
                return
            self._sized_labels[key] = labels
            self.requested_accelerators.labels(namespace, name, *labels).set(decision.requested_accelerators)
            self.per_device_bytes.labels(namespace, name, sizing.accelerator).set(sizing.per_device_bytes)
            self.device_memory_bytes.labels(namespace, name, sizing.accelerator).set(
                sizing.device_memory_bytes
            )

    def observe_queue(self, queued: int, admitted: int, scaled: Mapping[str, int]) -> None:
        """One scheduling pass: the jobs still queued, those admitted now, grant changes by direction."""
        self.queued_jobs.set(queued)
        if admitted:
            self.admissions.inc(admitted)
        for direction, count in scaled.items():
            if count:
                self.scale_events.labels(direction).inc(count)

    def forget_job(self, namespace: str, name: str) -> None:
        """Removes every series of a deleted job, so dashboards do not show it forever."""
        key = (namespace, name)
        with self._lock:
            for gauge in (self.desired_workers, self.ready_workers):
                _remove(gauge, namespace, name)
            self._remove_sized(key)

    def _remove_sized(self, key: JobKey) -> None:
        labels = self._sized_labels.pop(key, None)
        if labels is None:
            return
        accelerator, resource = labels
        _remove(self.requested_accelerators, *key, accelerator, resource)
        _remove(self.per_device_bytes, *key, accelerator)
        _remove(self.device_memory_bytes, *key, accelerator)


def _remove(metric: Gauge, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass  # never set: nothing to remove


def serve_metrics(metrics: OperatorMetrics, address: str, port: int) -> int:
    """Serves /metrics on address:port (0 = any free port) in a thread; returns the port bound."""
    server, _thread = start_http_server(port, addr=address, registry=metrics.registry)
    return int(server.server_port)
