"""The operator's Prometheus metrics (docs/metrics.md lists each, with its labels and a query).

Operator: `kubefit_build_info{version}`, `kubefit_leader`, `kubefit_leader_start_time_seconds`,
`kubefit_reconcile_total{trigger,result}`, `kubefit_reconcile_duration_seconds`.
Per job (labels namespace, name): `kubefit_trainingjob_info{accelerator,phase,uid}`,
`kubefit_trainingjob_workers{state}`, `kubefit_trainingjob_accelerators{accelerator,state}`,
`kubefit_trainingjob_memory_estimated_bytes{accelerator}`, `kubefit_trainingjob_memory_requested_bytes
{accelerator}`; every series of a job is removed when the job is deleted, and a series whose labels
changed (a new phase, another accelerator) is replaced, never left behind.
Scheduling: `kubefit_queue_wait_seconds`, `kubefit_scheduling_latency_seconds` (once per job),
`kubefit_scale_events_total{direction,reason}`, `kubefit_preemptions_total{reason}`,
`kubefit_worker_binds_total{placement}`, and `kubefit_cluster_accelerators{accelerator,state}`, read from the
scheduler at each scrape.
Process (with process_metrics): the process collector's `process_*`, and
`kubefit_garbage_collection_seconds{generation}`.
Labels are bounded: job names, catalog accelerator names and fixed words, never pod names or messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubefit import __version__
from kubefit.api.resource import JobKey
from kubefit.decisions.job import Decision, JobObservation
from kubefit.metrics.garbage_collection import GarbageCollectionTimer
from kubefit.metrics.job_series import JobSeries, first_admission, first_run, job_series

logger = logging.getLogger("kubefit.metrics")

_JOB = ["namespace", "name"]
# To 60 s: passes of 30 s were seen on a saturated 5,000-node sandbox (docs/performance.md), and a bucket
# bound below them would put them all in +Inf, where histogram_quantile cannot see past 10 s.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds to minutes for an idle cluster, hours for a busy one.
_WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
# Reconcile triggers (controller/handlers.py, scheduler.py, reconciler.py); anything else is "other".
TRIGGERS = frozenset(
    {"create", "update", "resume", "timer", "pod", "admission", "checkpoint", "quota", "retry"}
)
SCALE_DIRECTIONS = frozenset({"up", "down"})
# The scheduling pass's reason words (decisions/admission.py); anything else is "Other".
SCALE_REASONS = frozenset({"ScaledUp", "ScaledDown", "CapacityChanged", "ShrunkForPriority"})
PREEMPTION_REASONS = frozenset({"HigherPriority"})
# kubefit_worker_binds_total's placement: where kube-scheduler bound a live worker, against the last pass.
BIND_COUNTED, BIND_ELSEWHERE = "counted", "elsewhere"
BIND_PLACEMENTS = (BIND_COUNTED, BIND_ELSEWHERE)
OTHER_TRIGGER, OTHER_REASON = "other", "Other"
# Deleted jobs remembered, so that a reconcile finishing after the deletion cannot re-add their series; a
# reconcile lasts seconds, so far fewer jobs than this are deleted meanwhile.
_DELETED_KEPT = 10_000

_Labels = tuple[str, ...]
_Samples = dict[Gauge, dict[_Labels, float]]


@dataclass(frozen=True)
class AcceleratorCount:
    """One accelerator type across the cluster: devices on its ready nodes, and those pods hold."""

    allocatable: int
    allocated: int

    @property
    def free(self) -> int:
        return max(0, self.allocatable - self.allocated)


ClusterSource = Callable[[], Mapping[str, AcceleratorCount]]
_NONE = AcceleratorCount(allocatable=0, allocated=0)


class OperatorMetrics:
    """All metrics of one operator process, in their own registry (tests make as many as they like)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        process_metrics: bool = False,
        version: str = __version__,
    ):
        self.registry = registry or CollectorRegistry()
        self.garbage_collection: GarbageCollectionTimer | None = None
        if process_metrics:
            ProcessCollector(registry=self.registry)
            self.garbage_collection = GarbageCollectionTimer(self.registry)
            self.garbage_collection.install()
        Gauge(
            "kubefit_build_info",
            "The operator's version; the value is 1.",
            ["version"],
            registry=self.registry,
        ).labels(version).set(1)
        # 0 until this replica leads (the runner sets it): a standby is scraped and healthy while it waits,
        # so only this says whether any replica reconciles (KubefitOperatorAbsent).
        self.leader = Gauge(
            "kubefit_leader",
            "1 on the replica that reconciles and schedules; 0 on a standby waiting for the leader Lease.",
            registry=self.registry,
        )
        # The per-job alerts bridge the gap in a job's series only while a leader is missing or new (a
        # restart, a handover): a job's series gone under leaders that have led for long is a deleted job.
        self.leader_start_time = Gauge(
            "kubefit_leader_start_time_seconds",
            "Unix time at which this replica became the leader; 0 on a standby.",
            registry=self.registry,
        )
        self._add_reconcile_metrics()
        self._add_job_metrics()
        self._add_scheduling_metrics()
        self._start_counters_at_zero()
        self._cluster = _ClusterCollector()
        self.registry.register(self._cluster)
        self._lock = threading.Lock()
        self._series: dict[JobKey, _Samples] = {}  # what each job exports now, to remove it exactly
        self._admitted: dict[JobKey, str] = {}  # job -> uid whose queue wait was observed
        self._started: dict[JobKey, str] = {}  # job -> uid whose scheduling latency was observed
        self._uids: dict[JobKey, str] = {}  # job -> uid last observed
        self._failing: set[JobKey] = set()  # jobs with a kubefit_trainingjob_reconcile_failures series
        # uids of deleted jobs, latest last: a reconcile that read the job before its deletion and ends
        # after it must not bring its series back.
        self._deleted: OrderedDict[str, None] = OrderedDict()

    def _add_reconcile_metrics(self) -> None:
        self.reconciles = Counter(
            "kubefit_reconcile",
            "Reconciles of TrainingJobs, by trigger and result (success, error).",
            ["trigger", "result"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "kubefit_reconcile_duration_seconds",
            "Time to observe, decide and apply one reconcile.",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )

    def _add_job_metrics(self) -> None:
        def gauge(name: str, documentation: str, *labels: str) -> Gauge:
            return Gauge(name, documentation, [*_JOB, *labels], registry=self.registry)

        self.job_info = gauge(
            "kubefit_trainingjob_info",
            "A TrainingJob, its accelerator, phase and uid; the value is 1.",
            "accelerator",
            "phase",
            "uid",
        )
        self.job_workers = gauge(
            "kubefit_trainingjob_workers",
            "Workers of a TrainingJob by state: desired, running, pending (pods not running yet), succeeded "
            "(pods that finished their part), min, max.",
            "state",
        )
        self.job_accelerators = gauge(
            "kubefit_trainingjob_accelerators",
            "Accelerators of a TrainingJob by state: requested by its live worker pods, allocated to its "
            "running ones.",
            "accelerator",
            "state",
        )
        self.memory_estimated = gauge(
            "kubefit_trainingjob_memory_estimated_bytes",
            "Estimated peak memory per device of the job's layout.",
            "accelerator",
        )
        self.memory_requested = gauge(
            "kubefit_trainingjob_memory_requested_bytes",
            "Memory of one device of the job's accelerator (what each device it holds offers).",
            "accelerator",
        )
        self.reconcile_failures = gauge(
            "kubefit_trainingjob_reconcile_failures",
            "Reconciles of a TrainingJob that failed in a row; present only while its latest one failed.",
        )

    def _add_scheduling_metrics(self) -> None:
        self.queue_wait = Histogram(
            "kubefit_queue_wait_seconds",
            "Time from a TrainingJob's creation (or its last resume) to its first admission.",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.scheduling_latency = Histogram(
            "kubefit_scheduling_latency_seconds",
            "Time from a TrainingJob's creation (or its last resume) to its minimum of workers first running.",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.scale_events = Counter(
            "kubefit_scale_events",
            "Changes of an admitted job's granted workers, by direction (up, down) and reason.",
            ["direction", "reason"],
            registry=self.registry,
        )
        self.scheduling_pass_duration = Histogram(
            "kubefit_scheduling_pass_duration_seconds",
            "Time of one scheduling pass: every job's grant decided against the cluster.",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.scheduling_pass_cpu = Histogram(
            "kubefit_scheduling_pass_cpu_seconds",
            "CPU time the operator's thread spent in one scheduling pass; below the pass's duration by the time"
            " it waited for a CPU or for Python's interpreter lock.",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.preemptions = Counter(
            "kubefit_preemptions",
            "Whole jobs stopped and requeued to make room for another, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.worker_binds = Counter(
            "kubefit_worker_binds",
            "Workers bound to a node, by placement against the last scheduling pass: counted (where it counted"
            " the job's workers) or elsewhere.",
            ["placement"],
            registry=self.registry,
        )

    def _start_counters_at_zero(self) -> None:
        """Every label value a counter can have exists from the start, so rate() and increase() see 0
        rather than no data before the first event."""
        for trigger in (*sorted(TRIGGERS), OTHER_TRIGGER):
            for result in ("success", "error"):
                self.reconciles.labels(trigger, result)
        for direction in sorted(SCALE_DIRECTIONS):
            for reason in (*sorted(SCALE_REASONS), OTHER_REASON):
                self.scale_events.labels(direction, reason)
        for reason in (*sorted(PREEMPTION_REASONS), OTHER_REASON):
            self.preemptions.labels(reason)
        for placement in BIND_PLACEMENTS:
            self.worker_binds.labels(placement)

    # ------------------------------------------------------------------ reconciles

    def became_leader(self) -> None:
        """This replica leads from now: kubefit_leader 1, and the time it started."""
        self.leader_start_time.set(time.time())
        self.leader.set(1)

    @contextmanager
    def reconciling(self, trigger: str) -> Iterator[None]:
        """Counts one reconcile and its duration; an exception counts as an error and propagates."""
        trigger = trigger if trigger in TRIGGERS else OTHER_TRIGGER
        started = time.perf_counter()
        result = "error"
        try:
            yield
            result = "success"
        finally:
            self.reconciles.labels(trigger, result).inc()
            self.reconcile_duration.observe(time.perf_counter() - started)

    # ------------------------------------------------------------------ jobs

    def observe_job(self, observation: JobObservation, decision: Decision) -> None:
        """Sets the job's gauges from its latest decision, and observes its latencies the first time."""
        job = observation.job
        key, uid = (job.namespace, job.name), job.uid
        samples = self._samples(key, job_series(observation, decision))
        admission = first_admission(observation, decision)
        running = first_run(observation, decision)
        with self._lock:
            if uid in self._deleted:
                return
            if self._uids.get(key) not in (None, uid):
                self._drop_failures(key)  # the failures of the job deleted before this one took its name
            self._uids[key] = uid
            self._replace_series(key, samples)
            if admission is not None and self._admitted.get(key) != uid:
                self._admitted[key] = uid
                self.queue_wait.observe(admission)
            if running is not None and self._started.get(key) != uid:
                self._started[key] = uid
                self.scheduling_latency.observe(running)

    def job_reconcile_failed(self, namespace: str, name: str, uid: str | None, failures: int) -> None:
        """The job's latest reconcile failed, the `failures`-th in a row. Its overall share of reconciles
        hides a job that keeps failing among healthy ones: a failing job is retried at most every 5 minutes,
        each healthy one every 30 s (KubefitJobReconcileFailing reads this). Not for a job never read (no
        uid) or deleted."""
        with self._lock:
            if uid is None or uid in self._deleted:
                return
            self._failing.add((namespace, name))
            self.reconcile_failures.labels(namespace, name).set(failures)

    def job_reconcile_succeeded(self, namespace: str, name: str) -> None:
        if (namespace, name) not in self._failing:  # every reconcile comes here: no lock for the usual case
            return
        with self._lock:
            self._drop_failures((namespace, name))

    def _drop_failures(self, key: JobKey) -> None:
        if key in self._failing:
            self._failing.discard(key)
            _remove(self.reconcile_failures, key)

    def forget_job(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Removes every series of a deleted job, so dashboards and alerts do not show it forever. `uid`, the
        deleted job's, keeps a reconcile still running from setting them again, even one that had not
        observed the job yet (a job deleted during its first reconcile)."""
        key = (namespace, name)
        with self._lock:
            if uid is not None and self._uids.get(key) not in (None, uid):
                # Another job has its name already (kopf handles each uid on its own, so the old job's DELETED
                # event can come after the new one's first reconcile): only the deleted one is barred.
                self._deleted[uid] = None
                self._trim_deleted()
                return
            self._replace_series(key, {})
            self._drop_failures(key)
            self._series.pop(key, None)
            self._admitted.pop(key, None)
            self._started.pop(key, None)
            for deleted in dict.fromkeys((self._uids.pop(key, None), uid)):
                if deleted is not None:
                    self._deleted[deleted] = None
            self._trim_deleted()

    def _trim_deleted(self) -> None:
        while len(self._deleted) > _DELETED_KEPT:
            self._deleted.popitem(last=False)

    def jobs_observed(self) -> int:
        with self._lock:
            return len(self._series)

    def _samples(self, key: JobKey, series: JobSeries) -> _Samples:
        job = key
        accelerator = series.accelerator
        samples: _Samples = {
            self.job_info: {(*job, accelerator, series.phase, series.uid): 1},
            self.job_workers: {(*job, state): count for state, count in series.workers.items()},
            self.job_accelerators: {
                (*job, accelerator, state): count for state, count in series.accelerators.items()
            },
        }
        if series.memory_estimated_bytes is not None:
            samples[self.memory_estimated] = {(*job, accelerator): series.memory_estimated_bytes}
        if series.memory_requested_bytes is not None:
            samples[self.memory_requested] = {(*job, accelerator): series.memory_requested_bytes}
        return samples

    def _replace_series(self, key: JobKey, samples: _Samples) -> None:
        """Sets `samples`, then removes the job's series that are not among them (under the lock, which a
        scrape does not take: removed first, a scrape in between saw the job without its info series)."""
        before = self._series.get(key, {})
        for gauge, labelled in samples.items():
            for labels, value in labelled.items():
                gauge.labels(*labels).set(value)
        for gauge, labelled in before.items():
            for labels in labelled.keys() - samples.get(gauge, {}).keys():
                _remove(gauge, labels)
        self._series[key] = samples

    # ------------------------------------------------------------------ scheduling

    def count_scale_events(self, events: Iterable[tuple[str, str]]) -> None:
        """Grant changes of one scheduling pass, as (direction, reason word)."""
        for direction, reason in events:
            if direction not in SCALE_DIRECTIONS:
                raise ValueError(
                    f"scale direction must be one of {sorted(SCALE_DIRECTIONS)}, got {direction!r}"
                )
            self.scale_events.labels(direction, reason if reason in SCALE_REASONS else OTHER_REASON).inc()

    def count_preemptions(self, reasons: Iterable[str]) -> None:
        for reason in reasons:
            self.preemptions.labels(reason if reason in PREEMPTION_REASONS else OTHER_REASON).inc()

    def count_worker_bind(self, placement: str) -> None:
        if placement not in BIND_PLACEMENTS:
            raise ValueError(f"bind placement must be one of {list(BIND_PLACEMENTS)}, got {placement!r}")
        self.worker_binds.labels(placement).inc()

    def watch_cluster(self, source: ClusterSource | None) -> None:
        """Where kubefit_cluster_accelerators comes from at each scrape (the scheduler's view)."""
        self._cluster.source = source


class _ClusterCollector(Collector):
    """kubefit_cluster_accelerators, computed when scraped so that it is never staler than the indexes."""

    def __init__(self) -> None:
        self.source: ClusterSource | None = None
        # Types seen since the operator started: one whose nodes were all deleted reads 0, not absent, so
        # an alert on a low count sees it go.
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # two scrapes at once: one would iterate while the other adds

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        source = self.source
        counts: Mapping[str, AcceleratorCount] = {}
        if source is not None:
            try:
                counts = source()
            except Exception:  # noqa: BLE001 - a scrape must not fail on one metric
                logger.exception("could not count the cluster's accelerators")
                counts = {}
            else:
                with self._lock:
                    self._seen.update(counts)
                    seen = sorted(self._seen)
                counts = {accelerator: counts.get(accelerator, _NONE) for accelerator in seen}
        for accelerator, count in sorted(counts.items()):
            family.add_metric([accelerator, "allocatable"], count.allocatable)
            family.add_metric([accelerator, "allocated"], count.allocated)
            family.add_metric([accelerator, "free"], count.free)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "kubefit_cluster_accelerators",
            "Accelerators of each type on the cluster's ready nodes: allocatable, allocated (held by bound "
            "pods) and free.",
            labels=["accelerator", "state"],
        )


def _remove(gauge: Gauge, labels: _Labels) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass  # never set: nothing to remove


def serve_metrics(metrics: OperatorMetrics, address: str, port: int) -> int:
    """Serves /metrics on address:port (0 = any free port) in a thread; returns the port bound."""
    server, _thread = start_http_server(port, addr=address, registry=metrics.registry)
    return int(server.server_port)
