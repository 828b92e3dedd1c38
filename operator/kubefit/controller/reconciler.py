"""The one reconcile path: observe a job (API + kopf indexes), `decide`, apply the decision.

Every trigger (create/update/resume, the timer, pod events) calls `Reconciler.reconcile`. Calls for
the same job are serialised and coalesced: a trigger arriving while that job is being reconciled
only marks it dirty, and the running reconcile goes round once more with fresh observations. A decision
that asks to be reconciled again later (`requeue_after`: a finished job's TTL) gets a one-shot timer.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from kubefit.builders.naming import JobRef, owner_reference
from kubefit.controller.kube import KubeApi
from kubefit.metrics import OperatorMetrics
from kubefit.reconcile.inventory import NodeFacts, PodUsage, build_inventory
from kubefit.reconcile.job import Decision, JobObservation, decide
from kubefit.reconcile.observed import WorkerPod
from kubefit.sizing.catalog import Catalog

logger = logging.getLogger("kubefit.reconciler")
JobKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class ClusterView:
    """What kopf's indexes hold: the nodes, the accelerators pods hold per node, each job's workers."""

    nodes: Callable[[], Iterable[NodeFacts]]
    usage: Callable[[], Mapping[str, Iterable[PodUsage]]]
    workers: Callable[[JobKey], list[WorkerPod]]


@dataclass
class _JobState:
    busy: bool = False
    dirty: bool = False
    replaced: set[str] = field(default_factory=set)  # uids of failed pods this process deleted


class Reconciler:
    def __init__(self, api: KubeApi, catalog: Catalog, metrics: OperatorMetrics):
        self.api = api
        self.catalog = catalog
        self.metrics = metrics
        self._lock = threading.Lock()
        self._jobs: dict[JobKey, _JobState] = {}
        self._requeues: dict[JobKey, threading.Timer] = {}

    def reconcile(self, key: JobKey, trigger: str, view: ClusterView) -> None:
        state = self._claim(key)
        if state is None:
            return  # a reconcile of this job is running; it will go round again
        try:
            while self._take_dirty(state):
                with self.metrics.reconciling(trigger):
                    self._reconcile_once(key, state, view)
        finally:
            with self._lock:
                state.busy = False

    def forget(self, key: JobKey) -> None:
        self.metrics.forget_job(*key)
        self._requeue(key, None, None)
        with self._lock:
            state = self._jobs.get(key)
            if state is not None and not state.busy:
                del self._jobs[key]

    # ------------------------------------------------------------------ coalescing

    def _claim(self, key: JobKey) -> _JobState | None:
        with self._lock:
            state = self._jobs.setdefault(key, _JobState())
            state.dirty = True
            if state.busy:
                return None
            state.busy = True
            return state

    def _take_dirty(self, state: _JobState) -> bool:
        with self._lock:
            dirty, state.dirty = state.dirty, False
            return dirty

    # ------------------------------------------------------------------ observe, decide, apply

    def _reconcile_once(self, key: JobKey, state: _JobState, view: ClusterView) -> None:
        namespace, name = key
        job = self.api.get_job(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            self.metrics.forget_job(namespace, name)
            return
        pods = view.workers(key)
        state.replaced &= {pod.uid for pod in pods}  # forget pods that are gone for good
        observation = JobObservation(
            job=JobRef(name, namespace, job["metadata"]["uid"]),
            generation=job["metadata"].get("generation"),
            spec=job.get("spec"),
            status=job.get("status") or {},
            pods=pods,
            inventory=build_inventory(view.nodes(), view.usage(), self.catalog, for_job=key),
            now=datetime.now(UTC),
            already_replaced=frozenset(state.replaced),
        )
        decision = decide(observation, self.catalog)
        self._apply(job, observation, decision, state)
        self.metrics.observe_job(namespace, name, decision)
        self._requeue(key, decision.requeue_after, view)

    def _requeue(self, key: JobKey, delay: float | None, view: ClusterView | None) -> None:
        """Reconciles `key` again after `delay` seconds (replacing any earlier request), or cancels."""
        timer = None
        if delay is not None and view is not None:
            # kopf.event needs the handler's context variables (settings, event queue): carry them.
            context = contextvars.copy_context()
            timer = threading.Timer(delay, context.run, args=(self.reconcile, key, "timer", view))
            timer.daemon = True
        with self._lock:
            previous = self._requeues.pop(key, None)
            if timer is not None:
                self._requeues[key] = timer
        if previous is not None:
            previous.cancel()
        if timer is not None:
            timer.start()

    def _apply(
        self, job: dict[str, Any], observation: JobObservation, decision: Decision, state: _JobState
    ) -> None:
        ref = observation.job
        if decision.service is not None:
            self.api.create_service(ref.namespace, decision.service)
        for name in decision.adopt:
            self.api.adopt_pod(ref.namespace, name, owner_reference(ref))
        # A failure is recorded in status.restarts before its evidence (the failed pod) is deleted.
        state.replaced.update(pod.uid for pod in decision.replace)
        if _status_changed(observation.status, decision.status):
            self.api.patch_job_status(ref.namespace, ref.name, decision.status)
        deleted = [
            name
            for name in (*decision.delete, *(p.name for p in decision.replace))
            if self.api.delete_pod(ref.namespace, name)
        ]
        created = [
            pod["metadata"]["name"] for pod in decision.create if self.api.create_pod(ref.namespace, pod)
        ]
        self._post_events(job, decision, created, deleted)
        if decision.delete_job:
            logger.info("deleting %s/%s: ttlSecondsAfterFinished has passed", ref.namespace, ref.name)
            self.api.delete_job(ref.namespace, ref.name)

    @staticmethod
    def _post_events(
        raw_job: dict[str, Any], decision: Decision, created: list[str], deleted: list[str]
    ) -> None:
        job = kopf.Body(cast(kopf.RawBody, raw_job))
        for event in decision.events:
            kopf.event(job, type=event.type, reason=event.reason, message=event.message)
        if created:
            kopf.event(job, type="Normal", reason="CreatedWorkers", message="created " + ", ".join(created))
        if deleted:
            kopf.event(job, type="Normal", reason="DeletedWorkers", message="deleted " + ", ".join(deleted))


def _present(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value is not None}


def _status_changed(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return _present(current) != _present(desired)
