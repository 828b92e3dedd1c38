"""kopf handlers: thin triggers of the one reconcile path, and the indexes it observes.

Indexes (kept current by kopf's watches, populated before any handler runs):
- kubefit_nodes: node name -> NodeFacts (labels, allocatable);
- kubefit_pod_usage: node name -> PodUsage of each bound, non-terminated pod (any pod, not only workers);
- kubefit_workers: (namespace, job name) -> WorkerPod of each pod labelled kubefit.dev/job;
- kubefit_quotas: namespace -> Quota of each ResourceQuota (controller/quotas.py, with its trigger);
- kubefit_jobs: (namespace, name) -> uid of each TrainingJob: read by the scheduler's restart settle, which
  waits for every job to offer its demand before a pass changes anything (controller/scheduler.py). An entry
  of a job deleted while the watch was broken stays until the process ends (kopf sends no DELETED for it);
  nothing reads the index after the settle.
Triggers of a job's reconcile: a TrainingJob event that shows it new or changed (the operator's listing at
its start included; its own status patches are no change), the resync (controller/resync.py: every job once
per RESYNC_SECONDS, spread over the period), and an event of one of its worker pods that changes what the
decisions read of it. Triggers of a scheduling pass (controller/scheduler.py, debounced): a job's demand
changing (after its reconcile), a job deleted, a node added, removed or changed (not its heartbeats), a
worker pod bound (unless on a node the last pass counted its job's workers on already), finished, being
deleted or deleted, any other pod finished or deleted (devices freed), and the resync (one pass per period
for all jobs).

No handler here needs a finalizer or writes to the job: kopf writes nothing to TrainingJobs (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import kopf

from kubefit.api.resource import GROUP, PLURAL, VERSION, JobKey
from kubefit.builders.naming import JOB_LABEL
from kubefit.controller.cluster import ClusterView
from kubefit.controller.leader import POD_NAMESPACE_ENV
from kubefit.controller.quotas import QUOTA_INDEX, register_quotas
from kubefit.controller.reconciler import Reconciler
from kubefit.controller.relist import NODES, PODS, QUOTAS, Indexed, RelistCheck
from kubefit.controller.resync import ResyncLoop, log_step_failure
from kubefit.controller.scheduler import Scheduler
from kubefit.decisions.inventory import NodeFacts, PodUsage, node_facts, node_is_ready, pod_usage
from kubefit.decisions.observed import POD_FINISHED_PHASES, WorkerPod, worker_from_pod
from kubefit.decisions.quota import Quota

logger = logging.getLogger("kubefit.handlers")

RESYNC_SECONDS = 30.0
T = TypeVar("T")
JOBS = (GROUP, VERSION, PLURAL)
JOB_INDEX = "kubefit_jobs"


# The reconciler and the scheduler read kopf's indexes on their own threads while kopf's event loop changes
# them; a read that meets a change fails with RuntimeError ("dictionary changed size during iteration") and is
# read again. On a 1,000-node sandbox 27 reads failed so in 7 minutes, each failing a reconcile or a pass.
INDEX_READ_ATTEMPTS = 20
# Threads of the handlers that reconcile or plan (HandlerThreads): kopf's own pool has min(32, cores + 4).
HANDLER_THREADS = 16


class HandlerThreads:
    """Runs a handler's blocking body on the operator's threads without making kopf wait for it when kopf
    stops watching (a namespace deleted, the operator stopping).

    kopf runs a plain `def` handler in its executor shielded from cancellation: stopping a namespace's watch
    then waits for every such call of that namespace, queued ones included, and kopf starts watching a new
    namespace only after that (its orchestrator holds one lock for both). Under load that took 61 s and over
    180 s on the 2-core sandbox. Here kopf awaits a coroutine it may cancel; the body still runs to its end
    on its thread, so no event handled is lost."""

    def __init__(self, threads: int = HANDLER_THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="kubefit-handler")

    async def run(self, body: Callable[..., None], kwargs: Mapping[str, Any]) -> None:
        call = functools.partial(contextvars.copy_context().run, body, **kwargs)
        await asyncio.shield(asyncio.get_running_loop().run_in_executor(self._pool, call))


def read_consistently(read: Callable[[], T]) -> T:
    """`read()`, again while an index changed under it (the last attempt's error is raised): a dict changed
    during iteration (RuntimeError), or a key yielded and deleted before its lookup (KeyError: kopf's Index
    takes items() and values() from Mapping)."""
    for _ in range(INDEX_READ_ATTEMPTS - 1):
        try:
            return read()
        except (RuntimeError, KeyError):
            time.sleep(0)  # gives the event loop the GIL to finish its change
    return read()


def _values(index: kopf.Index[Any, Any]) -> list[Any]:
    return read_consistently(lambda: [value for store in index.values() for value in store])


def cluster_view(
    kubefit_nodes: kopf.Index[str, NodeFacts],
    kubefit_pod_usage: kopf.Index[str, PodUsage],
    kubefit_workers: kopf.Index[JobKey, WorkerPod],
    kubefit_quotas: kopf.Index[str, Quota] | None = None,
    kubefit_jobs: kopf.Index[JobKey, str] | None = None,
) -> ClusterView:
    """Reads the live indexes lazily, so a reconcile that goes round again sees fresh contents."""

    def usage() -> Mapping[str, Iterable[PodUsage]]:
        return read_consistently(lambda: {node: list(store) for node, store in kubefit_pod_usage.items()})

    def workers(key: JobKey) -> list[WorkerPod]:
        return read_consistently(lambda: list(kubefit_workers.get(key, [])))

    def quotas(namespace: str) -> list[Quota]:
        if kubefit_quotas is None:
            return []
        return read_consistently(lambda: list(kubefit_quotas.get(namespace, [])))

    return ClusterView(
        nodes=lambda: _values(kubefit_nodes),
        usage=usage,
        workers=workers,
        jobs_with_workers=lambda: read_consistently(lambda: list(kubefit_workers.keys())),
        jobs=lambda: read_consistently(lambda: list(kubefit_jobs.keys())) if kubefit_jobs is not None else [],
        node_exists=lambda name: name in kubefit_nodes,
        quotas=quotas,
    )


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
    # client's configuration, i.e. $KUBECONFIG or the pod's service account. kopf posts its events about
    # nodes in the login's namespace, which the client leaves unset ("default"): the pod's own instead.
    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = kopf.login_via_client(**kwargs)
        own_namespace = os.environ.get(POD_NAMESPACE_ENV)
        if info is None or not own_namespace or info.default_namespace:
            return info
        return replace(info, default_namespace=own_namespace)

    nodes_seen, threads, relists = SameFacts(), HandlerThreads(), RelistCheck(reconciler.api)
    _register_indexes(registry, nodes_seen)
    workers_seen = WorkerChanges(reconciler.created_here)
    _register_triggers(
        registry, threads, (reconciler, workers_seen), scheduler, resync_seconds, (relists, nodes_seen)
    )
    _register_capacity_triggers(
        registry, threads, (reconciler, workers_seen), scheduler, (nodes_seen, relists)
    )
    view_of = lambda kwargs: cluster_view(**_indexes(kwargs))  # noqa: E731
    register_quotas(
        registry, threads.run, reconciler, view_of, relists, lambda view: scheduler.request("quota", view)
    )


class SameFacts:
    """A node's facts object kept while what scheduling reads of the node (labels, allocatable, taints,
    cordon) does not change: the scheduler recomputes the jobs' eligible nodes when any node's facts object
    is a new one (controller/scheduler.py), and without this every node heartbeat made a new one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._facts: dict[str, NodeFacts] = {}

    def same_or_new(self, facts: NodeFacts) -> NodeFacts:
        with self._lock:
            held = self._facts.get(facts.name)
            if held == facts:
                return held
            self._facts[facts.name] = facts
            return facts

    def forget(self, name: str) -> None:
        with self._lock:
            self._facts.pop(name, None)


def _register_indexes(registry: kopf.OperatorRegistry, nodes_seen: SameFacts) -> None:
    # Coroutines, not plain functions: they are cheap, and kopf can cancel them (HandlerThreads).
    @kopf.index("", "v1", "nodes", id="kubefit_nodes", registry=registry)
    async def kubefit_nodes(body: kopf.Body, name: str, **_: Any) -> dict[str, NodeFacts]:
        return {name: nodes_seen.same_or_new(node_facts(body))}

    @kopf.index("", "v1", "pods", id="kubefit_pod_usage", registry=registry)
    async def kubefit_pod_usage(body: kopf.Body, **_: Any) -> dict[str, PodUsage]:
        usage = pod_usage(body)
        # {} and not None: kopf keeps an object's previous entries when its indexer returns None, so a pod
        # that finished would hold its devices in the index for as long as it exists.
        return {usage.node_name: usage} if usage else {}

    @kopf.index(*JOBS, id=JOB_INDEX, registry=registry)
    async def kubefit_jobs(namespace: str | None, name: str, uid: str, **_: Any) -> dict[JobKey, str]:
        return {(namespace or "", name): uid}

    @kopf.index("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT}, id="kubefit_workers", registry=registry)
    async def kubefit_workers(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> dict[JobKey, WorkerPod]:
        worker = worker_from_pod(body)
        return {(namespace or "", labels[JOB_LABEL]): worker} if worker else {}


def _resync_loop(
    reconciler: Reconciler,
    scheduler: Scheduler,
    resync_seconds: float,
    live_indexes: Mapping[str, Any],
    check_relists: Callable[[], object],
) -> ResyncLoop:
    """The resync over the jobs, reading kopf's indexes as the handlers last saw them."""

    def resync_pass() -> None:
        if live_indexes:
            scheduler.request("timer", cluster_view(**live_indexes))

    def prune() -> None:
        try:
            check_relists()
        except Exception as error:  # noqa: BLE001 - an API error now is retried next period
            log_step_failure("checking for pods and nodes deleted while a watch was broken failed", error)
        reconciler.forget_vanished(cluster_view(**live_indexes))

    return ResyncLoop(
        resync_seconds,
        keys=reconciler.jobs.keys,
        reconcile=lambda key: reconciler.reconcile(key, "timer", cluster_view(**live_indexes)),
        schedule=resync_pass,
        prune=prune,
    )


def _relist_checker(
    relisting: tuple[RelistCheck, SameFacts],
    workers_seen: WorkerChanges,
    scheduler: Scheduler,
    reconciler: Reconciler,
    live_indexes: Mapping[str, Any],
) -> Callable[[], object]:
    """The resync's check for pods and nodes deleted while a watch was broken (controller/relist.py)."""
    relists, nodes_seen = relisting

    def after_vanished(vanished: list[Indexed]) -> None:
        """What the DELETED events of `vanished` would have done."""
        view = cluster_view(**live_indexes)
        registered_again = {facts.name for facts in view.nodes()}  # the same name, a new node (its own uid)
        for item in vanished:
            if item.kind == NODES and item.name not in registered_again:
                nodes_seen.forget(item.name)
                scheduler.node_changed(None, item.name, False, view)
            elif item.job is not None:
                workers_seen.observe("DELETED", {"metadata": {"uid": item.uid}})
                reconciler.reconcile((item.namespace or "", item.job), "pod", view)
        for namespace in sorted({item.namespace or "" for item in vanished if item.kind == QUOTAS}):
            reconciler.quota_changed(namespace, view, every_job=True)
        scheduler.request("pod", view)

    def check() -> list[Indexed]:
        return relists.check(
            lambda: _indexed(live_indexes), lambda gone: _discard(live_indexes, gone), after_vanished
        )

    # Soon after a listing too; not before a job's event has handed over kopf's indexes (the resync then).
    relists.check_soon(lambda: check() if live_indexes else None)
    return check


def _indexed(indexes: Mapping[str, Any]) -> list[Indexed]:
    """The objects kopf's indexes hold entries of (a worker pod once, with its job)."""
    nodes = [Indexed(NODES, None, facts.name, facts.uid) for facts in _values(indexes["kubefit_nodes"])]
    quotas = read_consistently(
        lambda: [
            Indexed(QUOTAS, namespace, quota.name, quota.uid)
            for namespace, store in (indexes.get(QUOTA_INDEX) or {}).items()
            for quota in store
        ]
    )
    pods = [Indexed(PODS, *usage.pod) for usage in _values(indexes["kubefit_pod_usage"])]
    workers = read_consistently(
        lambda: [
            Indexed(PODS, key[0], worker.name, worker.uid, job=key[1])
            for key, store in indexes["kubefit_workers"].items()
            for worker in store
        ]
    )
    return list({item.key: item for item in [*nodes, *pods, *workers, *quotas]}.values())


def _discard(indexes: Mapping[str, Any], vanished: Iterable[Indexed]) -> None:
    """Drops the objects' entries from kopf's indexes as kopf does on their DELETED event (its indexers'
    own `discard`, kopf `_core/engines/indexing.py`; tests/unit/test_relist.py holds kopf to it)."""
    for index in indexes.values():
        for item in vanished:
            index._discard(item.key)


def _register_triggers(
    registry: kopf.OperatorRegistry,
    threads: HandlerThreads,
    reconciling: tuple[Reconciler, WorkerChanges],
    scheduler: Scheduler,
    resync_seconds: float,
    relisting: tuple[RelistCheck, SameFacts],
) -> None:
    reconciler, workers_seen = reconciling
    jobs = reconciler.jobs
    live_indexes: dict[str, Any] = {}  # kopf's live index objects, for the resync's reconciles
    relists = relisting[0]

    def reconcile_job(trigger: str, namespace: str | None, name: str, **indexes: Any) -> None:
        reconciler.reconcile((namespace or "", name), trigger, cluster_view(**indexes))

    check_relists = _relist_checker(relisting, workers_seen, scheduler, reconciler, live_indexes)
    resync = _resync_loop(reconciler, scheduler, resync_seconds, live_indexes, check_relists)

    # Every TrainingJob event, with no finalizer and no annotation of kopf's: the job is kept in the reconciler's
    # cache and reconciled if it is new or changed (its status as this operator wrote it is no change). The
    # listing at the operator's start is the "resume"; kopf removes the finalizer that earlier versions of the
    # operator put on jobs (it is settings.persistence.finalizer, and no handler needs it now).
    @kopf.on.event(*JOBS, id="job", registry=registry)
    async def job_event(**kwargs: Any) -> None:
        await threads.run(on_job_event, kwargs)

    def on_job_event(
        type: str | None, event: Mapping[str, Any], namespace: str | None, name: str, **kwargs: Any
    ) -> None:
        key, indexes = (namespace or "", name), _indexes(kwargs)
        live_indexes.update(indexes)
        resync.start(contextvars.copy_context())
        job = event.get("object") or {}
        if type == "DELETED":
            # Metrics of a deleted job go with it (kopf's delete handlers would need the object to linger).
            reconciler.job_deleted(key, (job.get("metadata") or {}).get("uid"), cluster_view(**indexes))
            return
        known = key in jobs
        if jobs.observe(key, dict(job)):
            trigger = "resume" if type is None else "update" if known else "create"
            reconcile_job(trigger, namespace, name, **indexes)

    @kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT}, id="worker_pod", registry=registry)
    async def worker_pod_event(**kwargs: Any) -> None:
        if kwargs["type"] is None:
            relists.listed(PODS)
        await threads.run(on_worker_pod_event, kwargs)

    def on_worker_pod_event(
        type: str | None, body: kopf.Body, namespace: str | None, labels: kopf.Labels, **kwargs: Any
    ) -> None:
        indexes = _indexes(kwargs)
        _after_worker_event(
            workers_seen.observe(type, body),
            (namespace or "", labels[JOB_LABEL]),
            reconcile=lambda job: reconciler.reconcile(job, "pod", cluster_view(**indexes)),
            request_pass=lambda: scheduler.request("pod", cluster_view(**indexes)),
            bound_as_counted=lambda job, node: scheduler.worker_bound(job, node, cluster_view(**indexes)),
        )


def _after_worker_event(
    change: WorkerChange,
    job: JobKey,
    reconcile: Callable[[JobKey], None],
    request_pass: Callable[[], None],
    bound_as_counted: Callable[[JobKey, str], bool],
) -> None:
    if change.left is not None:  # relabelled from another job: a worker gone for that one
        reconcile(change.left)
    if change.news is WorkerNews.CHANGED:
        reconcile(job)
    if change.moves_devices and not (change.bound_on and bound_as_counted(job, change.bound_on)):
        request_pass()


class WorkerNews(enum.Enum):
    NONE = "none"  # nothing a decision reads changed, or the reconciler's own create
    BOUND = "bound"  # only bound to a node: the job's decisions and status are the same (not a reconcile),
    # but where it holds devices is news to the scheduler
    CHANGED = "changed"  # a reconcile


@dataclass(frozen=True)
class WorkerChange:
    """What a worker pod event means for the job's reconcile (`news`) and for the scheduling pass."""

    news: WorkerNews
    # What a pass reads of the worker changed: its node, or whether it is live (terminating, finished, deleted).
    moves_devices: bool = False
    # That change was a live worker's bind alone, to this node: a pass is needed only if the last pass did not
    # count the job's workers there already (Scheduler.worker_bound).
    bound_on: str | None = None
    # The job the pod was a worker of until its job label was changed or removed: to it the worker is gone.
    left: JobKey | None = None


def _holds(worker: WorkerPod) -> tuple[int | None, str | None, bool, bool]:
    """What a scheduling pass reads of a worker (controller/scheduler.py: live_workers;
    decisions/node_sets.py: node_capacity)."""
    return (worker.index, worker.node_name, worker.terminating, worker.finished)


def _pass_change(before: WorkerPod | None, after: WorkerPod | None) -> WorkerChange:
    """The pass's part of a change from `before` (None: first seen) to `after` (None: deleted)."""
    if after is None:
        return WorkerChange(WorkerNews.CHANGED, moves_devices=True)
    if before is None:
        # A new unbound pod changes nothing yet: its job's grant counted it when the pod was made.
        return WorkerChange(WorkerNews.CHANGED, moves_devices=after.node_name is not None)
    held, holds = _holds(before), _holds(after)
    if held == holds:
        return WorkerChange(WorkerNews.CHANGED)
    live = after.index is not None and not after.terminating and not after.finished
    # Index, terminating and finished as they were: only the node is new.
    only_bound = before.node_name is None and (held[0], *held[2:]) == (holds[0], *holds[2:])
    return WorkerChange(
        WorkerNews.CHANGED, moves_devices=True, bound_on=after.node_name if live and only_bound else None
    )


class WorkerChanges:
    """The worker view (decisions/observed.py) of each worker pod as last seen, to tell a pod event that
    changes what a decision reads from one that does not: a worker pod has four to six events on its way to
    Running, and each was a reconcile and a scheduling request. The creation of a worker the reconciler made
    itself is no news either: the reconcile that created it counted it in status.replicas. Its binding to a
    node changes no decision: nothing in the status or the metrics tells a bound Pending worker from an
    unbound one (the order in which an elastic job's workers are removed does, read at the next reconcile)."""

    def __init__(self, created_here: Callable[[JobKey, str], bool] = lambda key, name: False) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, WorkerPod | None] = {}  # pod uid -> its worker view
        self._job_of: dict[str, JobKey] = {}  # pod uid -> the job its label named when last seen
        self._created_here = created_here

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> WorkerChange:
        metadata = body.get("metadata") or {}
        uid = metadata.get("uid") or ""
        job = (metadata.get("namespace") or "", (metadata.get("labels") or {}).get(JOB_LABEL, ""))
        with self._lock:
            if event_type == "DELETED":
                self._job_of.pop(uid, None)
                return _pass_change(self._seen.pop(uid, None), None)
            worker = worker_from_pod(body)
            known, before = uid in self._seen, self._seen.get(uid)
            left = self._job_of.get(uid)
            self._job_of[uid] = job
            if left != job and known:
                # Relabelled to another job: a worker gone for the one, a new pod for the other.
                self._seen[uid] = worker
                return replace(_pass_change(None, worker), left=left)
            if known and before == worker:
                return WorkerChange(WorkerNews.NONE)
            self._seen[uid] = worker
            if known and _only_unschedulable_text(before, worker):
                # kube-scheduler rewrites its message at each retry as node counts move: the resync
                # carries the new text; a reconcile and a status write per retry would not.
                return WorkerChange(WorkerNews.NONE)
        if worker is None:
            return WorkerChange(WorkerNews.CHANGED)
        change = _pass_change(before, worker)
        if known and _only_bound(before, worker):
            return replace(change, news=WorkerNews.BOUND)
        if event_type == "ADDED" and worker.node_name is None and self._created_here(job, worker.name):
            return WorkerChange(WorkerNews.NONE)
        return change

    def released(self, body: Mapping[str, Any]) -> JobKey | None:
        """A pod seen without the job label: the job it was last seen a worker of, if any (its label was
        removed; the pod is forgotten here, as kopf's index of workers forgets it), else None."""
        uid = (body.get("metadata") or {}).get("uid") or ""
        with self._lock:
            self._seen.pop(uid, None)
            return self._job_of.pop(uid, None)


def _only_unschedulable_text(before: WorkerPod | None, after: WorkerPod | None) -> bool:
    return (
        before is not None
        and after is not None
        and before.unschedulable is not None
        and after.unschedulable is not None
        and replace(before, unschedulable=after.unschedulable) == after
    )


def _only_bound(before: WorkerPod | None, after: WorkerPod | None) -> bool:
    return (
        before is not None
        and after is not None
        and before.node_name is None
        and after.node_name is not None
        and replace(before, node_name=after.node_name) == after
    )


def _register_capacity_triggers(
    registry: kopf.OperatorRegistry,
    threads: HandlerThreads,
    reconciling: tuple[Reconciler, WorkerChanges],
    scheduler: Scheduler,
    node_tracking: tuple[SameFacts, RelistCheck],
) -> None:
    reconciler, workers_seen = reconciling
    nodes_seen, relists = node_tracking

    # A listing's events come with no type (kopf's start, and its relisting after a watch broke for good).
    @kopf.on.event("", "v1", "nodes", id="node_changed", registry=registry)
    async def node_event(**kwargs: Any) -> None:
        if kwargs["type"] is None:
            relists.listed(NODES)
        await threads.run(on_node_event, kwargs)

    def on_node_event(type: str | None, body: kopf.Body, name: str, **kwargs: Any) -> None:
        if type == "DELETED":
            nodes_seen.forget(name)
        facts = None if type == "DELETED" else node_facts(body)
        scheduler.node_changed(facts, name, node_is_ready(body), cluster_view(**_indexes(kwargs)))

    # Other workloads' pods: devices they free may admit a queued job or grow an elastic one.
    @kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.ABSENT}, id="pod_released", registry=registry)
    async def pod_event(**kwargs: Any) -> None:
        if kwargs["type"] is None:
            relists.listed(PODS)
        await threads.run(on_pod_event, kwargs)

    def on_pod_event(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
        left = workers_seen.released(body)
        if left is not None:
            # A worker whose job label was removed: to its job (and kopf's index of workers) it is gone.
            view = cluster_view(**_indexes(kwargs))
            reconciler.reconcile(left, "pod", view)
            scheduler.request("pod", view)
        elif (body.get("spec") or {}).get("nodeName") and _frees_devices(type, body):
            scheduler.request("pod", cluster_view(**_indexes(kwargs)))


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    names = ("kubefit_nodes", "kubefit_pod_usage", "kubefit_workers", QUOTA_INDEX, JOB_INDEX)
    return {name: kwargs[name] for name in names if name in kwargs}
