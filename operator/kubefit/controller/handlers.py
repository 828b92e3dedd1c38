"""kopf handlers: thin triggers of the one reconcile path, and the indexes it observes.

Indexes (kept current by kopf's watches, populated before any handler runs):
- kubefit_nodes: node name -> NodeFacts (labels, allocatable);
- kubefit_pod_usage: node name -> PodUsage of each bound, non-terminated pod (any pod, not only workers);
- kubefit_workers: (namespace, job name) -> WorkerPod of each pod labelled kubefit.dev/job.
Triggers of a job's reconcile: TrainingJob create/update/resume, a timer every RESYNC_SECONDS, and any
event of one of its worker pods. Triggers of a scheduling pass (controller/scheduler.py, debounced): a
job's demand changing (after its reconcile), a job deleted, a node added, removed or changed (not its
heartbeats), a worker pod bound, finished or deleted, any other pod finished or deleted (devices freed),
and the resync timers (one pass per period for all jobs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from kubefit.api.resource import GROUP, PLURAL, VERSION, JobKey
from kubefit.builders.naming import JOB_LABEL
from kubefit.controller.cluster import ClusterView
from kubefit.controller.reconciler import OncePer, Reconciler
from kubefit.controller.scheduler import Scheduler
from kubefit.decisions.inventory import NodeFacts, PodUsage, node_facts, pod_usage
from kubefit.decisions.observed import POD_FINISHED_PHASES, WorkerPod, worker_from_pod

RESYNC_SECONDS = 30.0
JOBS = (GROUP, VERSION, PLURAL)


def _values(index: kopf.Index[Any, Any]) -> list[Any]:
    return [value for store in index.values() for value in store]


def cluster_view(
    kubefit_nodes: kopf.Index[str, NodeFacts],
    kubefit_pod_usage: kopf.Index[str, PodUsage],
    kubefit_workers: kopf.Index[JobKey, WorkerPod],
) -> ClusterView:
    """Reads the live indexes lazily, so a reconcile that goes round again sees fresh contents."""

    def usage() -> Mapping[str, Iterable[PodUsage]]:
        return {node: list(store) for node, store in kubefit_pod_usage.items()}

    def workers(key: JobKey) -> list[WorkerPod]:
        return list(kubefit_workers.get(key, []))

    return ClusterView(nodes=lambda: _values(kubefit_nodes), usage=usage, workers=workers)


def node_ready(body: Mapping[str, Any]) -> bool:
    """The node's Ready condition is True (the kubelet reports in)."""
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(item.get("type") == "Ready" and item.get("status") == "True" for item in conditions)


def _frees_devices(event_type: str | None, body: Mapping[str, Any]) -> bool:
    """A pod event after which a bound pod holds its devices no longer (deleted or finished)."""
    phase = (body.get("status") or {}).get("phase")
    return event_type == "DELETED" or phase in POD_FINISHED_PHASES


def register(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    scheduler: Scheduler,
    resync_seconds: float = RESYNC_SECONDS,
) -> None:
    """Adds the indexes and handlers to `registry` (explicit, so that importing has no side effects)."""

    # A plain OperatorRegistry has no default login (kopf's global one does): use the kubernetes
    # client's configuration, i.e. $KUBECONFIG or the pod's service account.
    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    _register_indexes(registry)
    _register_triggers(registry, reconciler, scheduler, resync_seconds)
    _register_capacity_triggers(registry, scheduler)


def _register_indexes(registry: kopf.OperatorRegistry) -> None:
    @kopf.index("", "v1", "nodes", id="kubefit_nodes", registry=registry)
    def kubefit_nodes(body: kopf.Body, name: str, **_: Any) -> dict[str, NodeFacts]:
        return {name: node_facts(body)}

    @kopf.index("", "v1", "pods", id="kubefit_pod_usage", registry=registry)
    def kubefit_pod_usage(body: kopf.Body, **_: Any) -> dict[str, PodUsage]:
        usage = pod_usage(body)
        # {} and not None: kopf keeps an object's previous entries when its indexer returns None, so a pod
        # that finished would hold its devices in the index for as long as it exists.
        return {usage.node_name: usage} if usage else {}

    @kopf.index("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT}, id="kubefit_workers", registry=registry)
    def kubefit_workers(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> dict[JobKey, WorkerPod]:
        worker = worker_from_pod(body)
        return {(namespace or "", labels[JOB_LABEL]): worker} if worker else {}


def _register_triggers(
    registry: kopf.OperatorRegistry, reconciler: Reconciler, scheduler: Scheduler, resync_seconds: float
) -> None:
    def reconcile_job(trigger: str, namespace: str | None, name: str, **indexes: Any) -> None:
        reconciler.reconcile((namespace or "", name), trigger, cluster_view(**indexes))

    # create, update (incl. `kubectl scale`) and resume (operator start) all lead to the same reconcile.
    @kopf.on.resume(*JOBS, id="resume", registry=registry)
    @kopf.on.create(*JOBS, id="create", registry=registry)
    @kopf.on.update(*JOBS, id="update", registry=registry)
    def job_changed(namespace: str | None, name: str, reason: str, **kwargs: Any) -> None:
        reconcile_job(str(reason), namespace, name, **_indexes(kwargs))

    # One scheduling pass per resync period for all jobs, not one per job's timer (H8, docs/performance.md).
    resync_pass = OncePer(resync_seconds)

    @kopf.timer(*JOBS, interval=resync_seconds, id="resync", registry=registry)
    def job_resync(namespace: str | None, name: str, **kwargs: Any) -> None:
        indexes = _indexes(kwargs)
        reconcile_job("timer", namespace, name, **indexes)
        if resync_pass.due():
            scheduler.request("timer", cluster_view(**indexes))

    @kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT}, id="worker_pod", registry=registry)
    def worker_pod_event(
        type: str | None, body: kopf.Body, namespace: str | None, labels: kopf.Labels, **kwargs: Any
    ) -> None:
        indexes = _indexes(kwargs)
        reconcile_job("pod", namespace, labels[JOB_LABEL], **indexes)
        # Bound, finished or deleted: what the job holds changed (a new unbound pod changes nothing yet).
        if (body.get("spec") or {}).get("nodeName") or type == "DELETED":
            scheduler.request("pod", cluster_view(**indexes))

    @kopf.on.event(*JOBS, id="job_deleted", registry=registry)
    def job_event(type: str, namespace: str | None, name: str, **kwargs: Any) -> None:
        # Metrics of a deleted job go with it (kopf's delete handlers would need the object to linger).
        if type == "DELETED":
            reconciler.forget((namespace or "", name))
            scheduler.forget((namespace or "", name), cluster_view(**_indexes(kwargs)))


def _register_capacity_triggers(registry: kopf.OperatorRegistry, scheduler: Scheduler) -> None:
    @kopf.on.event("", "v1", "nodes", id="node_changed", registry=registry)
    def node_event(type: str | None, body: kopf.Body, name: str, **kwargs: Any) -> None:
        facts = None if type == "DELETED" else node_facts(body)
        scheduler.node_changed(facts, name, node_ready(body), cluster_view(**_indexes(kwargs)))

    # Other workloads' pods: devices they free may admit a queued job or grow an elastic one.
    @kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.ABSENT}, id="pod_released", registry=registry)
    def pod_event(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
        if (body.get("spec") or {}).get("nodeName") and _frees_devices(type, body):
            scheduler.request("pod", cluster_view(**_indexes(kwargs)))


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {name: kwargs[name] for name in ("kubefit_nodes", "kubefit_pod_usage", "kubefit_workers")}
