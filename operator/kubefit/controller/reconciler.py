"""The one reconcile path: observe a job (API + kopf indexes), `decide`, apply the decision.

Admission. Before `decide`, the job's grant (workers the scheduling pass allows it, controller/scheduler.py)
and the acknowledgements of its open checkpoint request (controller/checkpoints.py) are read; after the
decision is applied, the board's request is opened or closed as the decision says, and the decision's
demand is handed to the scheduler, whose pass reconciles every job whose grant changed.

Triggers. Every trigger (the job's events, the resync, pod events, a changed grant, a worker's
checkpoint acknowledgement) calls `Reconciler.reconcile`.
Calls for the same job are serialised and coalesced: a trigger arriving while that job is being
reconciled only marks it dirty, and the running reconcile goes round once more with fresh observations.
A decision that asks to be reconciled again later (`requeue_after`: a finished job's TTL, a gang timeout)
gets an entry in the requeue clock (one thread for every job). A new job's first reconcile writes nothing
while no scheduling pass has answered its demand: the pass, due within DEBOUNCE_SECONDS, reconciles it.

Write order. `_apply` writes in an order where a failing call cannot lose what an earlier one did:
1. the status patch (a failed worker is counted in status.restarts before the pod is deleted); a retry after
   a failure keeps the error's Ready condition and status.replicas in it, and writes the decision's once
   the pod writes below succeeded, so a retry refused again does not flip them twice;
2. at once, the events of that status's transitions (Sized, Ready, WorkerFailed, ...). They are derived
   from the difference between the previous status and the new one, so once the status is written they
   could never be derived again: they go out before any pod write can fail (a ResourceQuota's 403, a
   422). If the status patch itself fails, nothing is posted and the next reconcile derives them again;
3. adoption of orphaned workers, then deletes (a Service that cannot be created must not hold them up);
4. the headless Service, then creates: at most CREATE_BATCH worker manifests are built and created per
   pass, and a job with more to create goes round again, so memory does not grow with the worker count;
   none where the status patch's answer shows the spec edited since the read: the next round decides on it;
5. CreatedWorkers/DeletedWorkers events for the pods actually created or deleted, even when a later
   call of the same pass failed;
6. the TTL's delete of the job.

Safety net. Any exception while observing, deciding or applying is caught, so the operator neither
crashes nor stops serving other jobs: the job gets Ready=False, reason ReconcileError, with the error's
message (for an API error the API server's, which names the field or quota; with_limit_hint adds the way
out of a request above a LimitRange's default limit), one Warning event, and a
count in kubefit_reconcile_total{result="error"}. It is retried after a per-job backoff (BACKOFF_FIRST seconds,
doubling to BACKOFF_MAX; a successful reconcile resets it). While a job backs off, the resync and
pod events leave it alone (the retry observes afresh); a change to the job itself reconciles it at once,
one that came while a pass was failing too (the reconcile goes round for it rather than wait for the retry).
A resync or pod event that comes while such a pass runs makes it go round if it succeeds: its success
cancels the retry the event was left to.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubefit.api.conditions import ConditionType
from kubefit.api.resource import JobKey
from kubefit.api.units import parse_rfc3339, rfc3339
from kubefit.builders.naming import JobRef, owner_reference, worker_name
from kubefit.controller.checkpoints import CheckpointBoard
from kubefit.controller.cluster import ClusterView, remembering
from kubefit.controller.job_events import post_events, post_worker_events
from kubefit.controller.jobs import JobCache
from kubefit.controller.kube import (
    JobReplaced,
    KubeApi,
    PodNameTaken,
    ServiceTaken,
    WritesStopped,
    error_message,
)
from kubefit.controller.node_check import NodeCheck
from kubefit.controller.refusals import Refusals, with_limit_hint
from kubefit.controller.requeue import Requeue, RequeueClock, backoff_seconds
from kubefit.controller.resync import API_ERRORS
from kubefit.controller.scheduler import Grant, Scheduler, SchedulerSettings
from kubefit.controller.stored_status import (
    admitted_with,
    checkpoint_target,
    error_kept,
    present,
    priority_of,
    same_but_status,
    status_changed,
)
from kubefit.decisions.admission import Demand
from kubefit.decisions.failure import reconcile_error
from kubefit.decisions.gang import room_from
from kubefit.decisions.inventory import InventoryMemo
from kubefit.decisions.job import Decision, JobObservation, ReconcileSettings, decide
from kubefit.decisions.node_match import Placement, placement_of, template_pod_spec
from kubefit.decisions.observed import WorkerPod
from kubefit.decisions.running import REFUSAL_TRY_SECONDS
from kubefit.decisions.scheduled import resumed_while_suspended
from kubefit.metrics import OperatorMetrics
from kubefit.sizing.catalog import Catalog

logger = logging.getLogger("kubefit.reconciler")

# 50 manifests are about 0.4 MiB, and at the API server's 10-20 ms per create a batch takes about a
# second: a job deleted or suspended while its workers are being created stops within one batch.
CREATE_BATCH = 50
# Within a batch, creates run at once in growing waves (1, 2, 4, then CREATE_PARALLEL at a time), as the
# ReplicaSet controller's slow start does: a gang of 16 workers is 5 round trips to the API server instead of
# 16 (on a loaded 1,000-node sandbox those reconciles took over a second), and a create refused for a reason
# that refuses them all (a quota, an admission webhook) is one request, not 16.
CREATE_PARALLEL = 8
_CREATES = ThreadPoolExecutor(CREATE_PARALLEL, thread_name_prefix="kubefit-create")  # threads start on use
RETRY_TRIGGER = "retry"
# How long a created worker the index does not show yet is not created again. Kept only for the loop, each
# pod event or admission that came before the pod's own event created it again (a 409): 0.75 creates a job
# more at 500 jobs (docs/performance.md).
CREATED_MEMORY_SECONDS = 10.0
# How long a worker this process deleted is taken as terminating while the index still shows it live: its
# own event shows it terminating or gone within moments, unless the delete did not take.
DELETE_MEMORY_SECONDS = 30.0
# A resync checks that a job's Service is still there at most this often: a create answered 409 every
# resync was 17 API writes a second at 500 jobs.
SERVICE_RECHECK_SECONDS = 300.0
# Triggers that wait for a job's backoff to end: neither says that the job itself changed.
_DEFERRED_WHILE_BACKING_OFF = frozenset({"timer", "pod", "quota"})
# Triggers of a change to the job itself: of those that find a reconcile running, what its next round
# counts under before any other (kubefit_reconcile_total), then those not deferred while backing off.
_JOB_CHANGES = frozenset({"create", "update", "resume"})


def _trigger_rank(trigger: str) -> int:
    return 0 if trigger in _JOB_CHANGES else 2 if trigger in _DEFERRED_WHILE_BACKING_OFF else 1


@dataclass
class _JobState:
    busy: bool = False
    dirty: bool = False
    # The trigger the running reconcile's round counts under (kubefit_reconcile_total), and the first of
    # those that found it busy, for its next round: a job update during a pod event's reconcile counted as
    # "pod" (a test that waited for an "update" reconcile then waited in vain).
    trigger: str = ""
    next_trigger: str | None = None
    replaced: set[str] = field(default_factory=set)  # uids of failed pods this process deleted
    # Workers this process created that kopf's index does not show yet (name -> time.monotonic() of the
    # create): not created again, though a trigger of another watch (admission, the job) comes first.
    created: dict[str, float] = field(default_factory=dict)
    created_world: int | None = None  # the world size of those creates, for a group whose size is fixed
    # Workers this process deleted that kopf's index still shows live (uid -> time.monotonic() of the
    # delete): seen as terminating, so a removal that went ahead is not asked for again (a second
    # checkpoint request to the survivors, and its grace period waited out once more).
    deleted: dict[str, float] = field(default_factory=dict)
    failures: int = 0  # reconciles in a row that raised
    retry_at: float = 0.0  # time.monotonic() before which deferrable triggers are ignored
    service_for: str | None = None  # uid of the job whose Service this process created (or found)
    service_at: float = 0.0  # time.monotonic() of that create
    offered: bool = False  # its demand went to the scheduler before any status was written
    awaited_generation: int | None = None  # the spec generation _awaits_pass last looked at
    gone: bool = False  # the last pass found the job deleted: the state goes with the reconcile's end
    # A trigger that does not wait for the backoff (not in _DEFERRED_WHILE_BACKING_OFF: a change to the job)
    # came during the pass, or its status write showed one: the reconcile goes round even if the pass failed.
    urgent: bool = False
    refusals: Refusals = field(default_factory=Refusals)  # its workers' creates the API server refused
    quota_limited: bool = False  # its last decision: a ResourceQuota holds it below what it asks
    uid: str | None = None  # the job the fields above are of (None: none read yet)

    def of_job(self, uid: str) -> None:
        """Makes this the state of the job `uid`. One created again under a deleted job's name (its event
        handled before the old one's DELETED) starts afresh: the old job's creates, backoff and offer to the
        scheduler are not its own (it would skip its first pass). Only what says that the reconcile runs
        and must go round is kept."""
        if self.uid not in (None, uid):
            fresh = _JobState(
                busy=self.busy,
                dirty=self.dirty,
                urgent=self.urgent,
                trigger=self.trigger,
                next_trigger=self.next_trigger,
            )
            for name in (item.name for item in fields(self)):
                setattr(self, name, getattr(fresh, name))
        self.uid = uid


@dataclass
class _Progress:
    """What one pass has read and written so far: a failure is recorded on top of it."""

    job: dict[str, Any] | None = None
    status: Mapping[str, Any] | None = None  # the job's status as last read or written
    replicas: int | None = None  # status.replicas to write with the failure (workers whose create failed)
    # The status write's answer shows a spec edited since the read (before the status said workers exist, so
    # the webhook let it through): created now, workers took the old spec's devices or template for good.
    spec_changed: bool = False


class NotifyingBoard(CheckpointBoard):
    """The checkpoint board, which also calls `on_ack` when a worker's acknowledgement is accepted, so a
    removal goes ahead as soon as all workers acknowledged rather than after the grace period."""

    def __init__(self) -> None:
        super().__init__()
        self.on_ack: Callable[[JobKey], None] | None = None

    def refused_ack(self, key: JobKey, request_id: str, worker: str, step: int) -> str | None:
        # The one path of every ack (acknowledge() and the HTTP server's).
        already = self.acknowledged(key, request_id).get(worker) == step
        refusal = super().refused_ack(key, request_id, worker, step)
        # An ack sent again (kubefit_trainer repeats it while the request stays open) changes nothing.
        if refusal is None and not already and self.on_ack is not None:
            self.on_ack(key)
        return refusal


class Reconciler:
    def __init__(  # noqa: PLR0913 - the collaborators are each optional and named at the call
        self,
        api: KubeApi,
        catalog: Catalog,
        metrics: OperatorMetrics,
        settings: ReconcileSettings | None = None,
        scheduler: Scheduler | None = None,
        board: CheckpointBoard | None = None,
        jobs: JobCache | None = None,
    ):
        self.api = api
        # The jobs as the watch (handlers.py) and this reconciler's own status patches last showed them.
        self.jobs = jobs or JobCache()
        self.catalog = remembering(catalog)  # runner.py hands the Scheduler the same remembering catalog
        self.metrics = metrics
        # Each reconcile's inventory, from what the last one worked out while no node or pod has changed.
        self.inventories = InventoryMemo()
        self.settings = settings or ReconcileSettings()
        # Without a scheduler of its own (tests), passes run synchronously and reconcile inline.
        self.scheduler = scheduler or Scheduler(catalog, metrics, SchedulerSettings(debounce=None))
        self.scheduler.reconcile_with(self.reconcile)
        self.board = board or CheckpointBoard()
        if isinstance(self.board, NotifyingBoard):
            self.board.on_ack = lambda key: self.scheduler.reconcile_soon(key, "checkpoint")
        self._lock = threading.Lock()
        self._jobs: dict[JobKey, _JobState] = {}
        self._requeues = RequeueClock()
        self._uids: dict[JobKey, str] = {}
        # A node kopf's index lacks is asked of the API server before its workers are read as lost.
        self._nodes = NodeCheck(api.node_exists, api.node_names)

    def reconcile(self, key: JobKey, trigger: str, view: ClusterView) -> None:
        """Reconciles `key`; never raises (a failure is recorded on the job and retried after a backoff)."""
        state = self._claim(key, trigger)
        if state is None:
            return  # a reconcile of this job is running (it will go round again), or the job backs off
        if trigger == "timer" and time.monotonic() - state.service_at > SERVICE_RECHECK_SECONDS:
            state.service_for = None  # the resync checks that the Service is still there
        released = failed = False
        try:
            while not (released := self._release_unless_dirty(key, state, failed)):
                failed = not self._reconcile_safely(key, state.trigger, state, view)
        finally:
            if not released:
                with self._lock:
                    state.busy = False
                    _forget_old_creates(state.created)

    def forget(self, key: JobKey, uid: str | None = None) -> bool:
        """Drops what the operator holds of the job; `uid`, when known, is the deleted job's. A job created
        again under its name and already reconciled (kopf handles the old uid's DELETED and the new one's
        ADDED at once) keeps its own: returns False then."""
        self.metrics.forget_job(*key, uid)
        with self._lock:
            state = self._jobs.get(key)
            held = {self._uids.get(key), state.uid if state is not None else None} - {None}
            if uid is not None and held - {uid}:
                return False
        self.board.forget(key)
        self._requeue(key, None, None)
        with self._lock:
            self._uids.pop(key, None)
            state = self._jobs.get(key)
            if state is not None and not state.busy:
                del self._jobs[key]
            elif state is not None:
                # Its reconcile is under way and may offer the job again, or arm a timer: once more, and it
                # finds the job gone (state.gone) and lets it go. Urgent, as a change to the job itself: a
                # pass that failed goes round for it too, or the state would outlive the job.
                state.dirty = state.urgent = True
        return True

    def forget_vanished(self, view: ClusterView) -> list[JobKey]:
        """Forgets the held jobs that no longer exist (or exist again under a new uid): kopf lists again
        after its watch broke, but sends no DELETED event for a job deleted meanwhile. One LIST of metadata
        per namespace with jobs; the resync calls it once per period. Returns the keys forgotten."""
        held: dict[str, dict[str, str]] = {}
        for namespace, name in self.jobs.keys():
            job = self.jobs.read((namespace, name), lambda *_: None)
            if job is not None:
                held.setdefault(namespace, {})[name] = job["metadata"].get("uid", "")
        vanished = []
        failed: Exception | None = None
        for namespace, jobs in held.items():
            try:
                present = self.api.job_uids(namespace)
            except Exception as error:  # one namespace's error (a 403, a timeout) leaves the others checked
                failed = failed or error
                continue
            vanished += [(namespace, name) for name, uid in jobs.items() if present.get(name) != uid]
        for key in vanished:
            current = self.jobs.read(key, lambda *_: None)
            # Still the job that was listed as gone: one created again under its name meanwhile is not.
            if current is not None and current["metadata"].get("uid", "") == held[key[0]][key[1]]:
                logger.info("%s/%s is gone (no longer listed): forgetting it", *key)
                self.job_deleted(key, held[key[0]][key[1]], view)
        if failed is not None:
            raise failed  # the resync logs it, and lists that namespace again next period
        return vanished

    def created_here(self, key: JobKey, pod_name: str) -> bool:
        """This process created the worker `pod_name` of `key` moments ago (its own creation's event, which
        tells the reconcile that made it nothing new)."""
        with self._lock:
            state = self._jobs.get(key)
            return state is not None and pod_name in state.created

    def job_uid(self, namespace: str, name: str) -> str | None:
        """The uid of the job last read under that name (checkpoint tokens are per uid)."""
        with self._lock:
            return self._uids.get((namespace, name))

    def pending_requeue(self, key: JobKey) -> Requeue | None:
        """The reconcile of `key` scheduled for later, if any."""
        return self._requeues.pending(key)

    # ------------------------------------------------------------------ coalescing and backoff

    def _claim(self, key: JobKey, trigger: str) -> _JobState | None:
        """Takes the job for a reconcile, or None: when one is running, the job is marked dirty and that one
        goes round again (after a failed pass, only for a trigger that does not wait for the backoff); when
        none is and the job backs off, a trigger in _DEFERRED_WHILE_BACKING_OFF is left to the retry. One
        lock for both tests: a trigger left to the retry while a reconcile ran would be lost when that one
        succeeded (its success cancels the retry)."""
        deferrable = trigger in _DEFERRED_WHILE_BACKING_OFF
        with self._lock:
            state = self._jobs.setdefault(key, _JobState())
            if state.busy:
                state.dirty = True
                state.urgent = state.urgent or not deferrable
                # A change to the job itself is what its next round is for, before the pass's or a pod's.
                if state.next_trigger is None or _trigger_rank(trigger) < _trigger_rank(state.next_trigger):
                    state.next_trigger = trigger
                return None
            if deferrable and state.retry_at > time.monotonic():
                return None  # the retry observes afresh
            state.dirty = state.busy = True
            state.trigger, state.next_trigger = trigger, None
            return state

    def _release_unless_dirty(self, key: JobKey, state: _JobState, failed: bool = False) -> bool:
        """Takes the next round's trigger (False), or, if none came, ends the reconcile (True). After a
        `failed` pass only a trigger that does not wait for the backoff (a change to the job itself) is
        taken: the others wait for the retry, not a tight loop. One lock for both: a trigger that found the
        job busy and marked it dirty between a check and the release would otherwise be lost until the next
        resync (or the retry). A job gone from the cache (deleted: its workers' events reconciled it once
        more, or it answered 404) leaves no state behind."""
        with self._lock:
            if state.dirty and (state.urgent or not failed):
                state.dirty = state.urgent = False
                if state.next_trigger is not None:
                    state.trigger, state.next_trigger = state.next_trigger, None
                return False
            state.busy, state.next_trigger = False, None
            _forget_old_creates(state.created)
            if state.gone and self._jobs.get(key) is state:
                del self._jobs[key]
            return True

    def _go_round_again(self, state: _JobState, urgent: bool = False) -> None:
        with self._lock:
            state.dirty = True
            state.urgent = state.urgent or urgent

    def _reconcile_safely(self, key: JobKey, trigger: str, state: _JobState, view: ClusterView) -> bool:
        """One pass; False if it failed (recorded on the job, retried after the backoff)."""
        progress = _Progress()
        gone = False
        try:
            with self.metrics.reconciling(trigger):
                try:
                    if self._reconcile_once(key, state, view, progress):
                        # Its writes put off for a pass: not a success that ends a run of failures (its backoff,
                        # its failure series), nor a failure.
                        return True
                except _JobGone:  # deleted while it was reconciled: not a failed reconcile
                    gone = True
                except WritesStopped:  # handing the Lease over: the next leader reconciles it
                    return True
        except Exception as error:  # noqa: BLE001 - the safety net: any failure becomes a condition
            if _namespace_terminating(error):
                # Its namespace is being deleted, and the job with it: not a failure to count, tell or retry
                # (every job of a namespace deleted with its workers running logged an error and posted
                # events the API server then refused).
                logger.info("%s/%s: its namespace is being deleted; nothing more is written", *key)
                return True
            self._record_failure(key, state, view, progress, error)
            return False
        if gone:
            state.gone = True
            self._gone(key, progress, view)
            return True
        with self._lock:
            state.failures, state.retry_at = 0, 0.0
        # Every success, not only one after failures this state counted: a job deleted while failing, and
        # applied again under its name before its DELETED was handled, starts with a fresh state.
        self.metrics.job_reconcile_succeeded(*key)
        return True

    def _record_failure(
        self, key: JobKey, state: _JobState, view: ClusterView, progress: _Progress, error: Exception
    ) -> None:
        with self._lock:
            state.failures += 1
            failures = state.failures
            delay = backoff_seconds(failures)
            if state.refusals.service_taken:
                # Its Service's create, at each retry, is what tells that the name was freed: as often as
                # a refused worker's dry run, not at the backoff's 5 minutes.
                delay = min(delay, REFUSAL_TRY_SECONDS)
            state.retry_at = time.monotonic() + delay
        self.metrics.job_reconcile_failed(*key, state.uid, failures)
        message = with_limit_hint(error_message(error))
        # A bug (not an API error, an unreachable API server or a name taken) gets its traceback in the log;
        # the job's condition gets the message.
        logger.warning(
            "reconcile of %s/%s failed (retry in %.0f s): %s",
            *key,
            delay,
            message,
            exc_info=not isinstance(error, (*API_ERRORS, PodNameTaken, ServiceTaken)),
        )
        self._requeue(key, delay, view, RETRY_TRIGGER)
        try:
            self._write_failure(key, state, progress, message)
        except _JobGone:  # deleted meanwhile: forgotten, and its state goes as the reconcile ends
            state.gone = True
            self._gone(key, progress, view)
        except Exception as write_error:  # noqa: BLE001 - recording the error must not raise either
            logger.warning("could not record the failure on %s/%s: %s", *key, error_message(write_error))

    def quota_changed(self, namespace: str, view: ClusterView, every_job: bool = False) -> bool:
        """A ResourceQuota of `namespace` changed: the jobs there that a quota held back are decided again, and
        with `every_job` (a quota created, deleted or given other limits) all of them. Whether the namespace
        has any job (for which a scheduling pass may read the quota again)."""
        if not any(key[0] == namespace for key in self.jobs.keys()):
            return False
        if every_job:
            keys = [key for key in self.jobs.keys() if key[0] == namespace]
        else:
            with self._lock:
                keys = [
                    key for key, state in self._jobs.items() if key[0] == namespace and state.quota_limited
                ]
        for key in sorted(keys):
            self.reconcile(key, "quota", view)
        return True

    def job_deleted(self, key: JobKey, uid: str | None, view: ClusterView) -> None:
        """The job is gone (its DELETED event, a 404, or missing from a list): out of the cache, its metrics
        and its place in the queue."""
        if not self.jobs.deleted(key, uid):
            # The new job under its name came first: its state, queue place and series are not the old one's.
            self.metrics.forget_job(*key, uid)
            return
        if self.forget(key, uid):
            self.scheduler.forget(key, view)

    def _gone(self, key: JobKey, progress: _Progress, view: ClusterView) -> None:
        logger.info("%s/%s is gone (deleted, or deleted and created again): forgetting it", *key)
        self.job_deleted(key, (progress.job or {}).get("metadata", {}).get("uid"), view)

    def _write_failure(self, key: JobKey, state: _JobState, progress: _Progress, message: str) -> None:
        job = progress.job if progress.job is not None else self.jobs.read(key, self.api.get_job)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        read = job.get("status") or {}
        status = progress.status if progress.status is not None else read
        now, generation = rfc3339(datetime.now(UTC)), job["metadata"].get("generation")
        record = reconcile_error(status, generation, message, now)
        patch = dict(record.status or {})
        if progress.replicas is not None:
            patch["replicas"] = progress.replicas
        try:
            if patch:
                # Its answer may show an edit whose watch event the cache will now take for an older copy: the
                # reconcile goes round for it at once, not at the retry.
                self._patch_status(key, patch, {**job, "status": status}, state)
        finally:
            # Told once: a retry that fails the same way after writing its decision's status (which has no
            # error) records the error again, but the status it read had it already. Also when the status
            # write itself is refused (a webhook, RBAC): the event is then all the job's owner sees.
            if reconcile_error(read, generation, message, now).events:
                post_events(job, record.events)

    # ------------------------------------------------------------------ observe, decide, apply

    def _reconcile_once(self, key: JobKey, state: _JobState, view: ClusterView, progress: _Progress) -> bool:
        """One reconcile of the job; True when it put its writes off for a scheduling pass."""
        namespace, name = key
        job = self.jobs.read(key, self.api.get_job)
        if job is None or job["metadata"].get("deletionTimestamp"):
            state.gone = True
            with self._lock:  # put back by a pass that read the job before its deletion was handled
                self._uids.pop(key, None)
            self.metrics.forget_job(namespace, name, None if job is None else job["metadata"].get("uid"))
            self.scheduler.forget(key, view)
            # What a pass running when the job was forgotten opened again after it: its checkpoint request
            # and its timer.
            self.board.forget(key)
            self._requeue(key, None, None)
            return False
        state.gone = False
        progress.job, progress.status = job, job.get("status") or {}
        with self._lock:
            self._uids[key] = job["metadata"]["uid"]
            replaced = state.uid not in (None, job["metadata"]["uid"])
            state.of_job(job["metadata"]["uid"])
        if replaced:
            # Request ids are "<generation>-<n>": the old job's acks would pass for the new job's.
            self.board.forget(key)
        pods = self._marked_on_lost_nodes(_as_deleted(view.workers(key), state.deleted), view)
        state.replaced &= {pod.uid for pod in pods}  # forget pods that are gone for good
        for pod in pods:
            state.created.pop(pod.name, None)  # the index shows it now
        placement = placement_of(template_pod_spec(job.get("spec")))
        observation = self._observe(key, job, state, pods, view, placement)
        decision = decide(observation, self.catalog, self.settings)
        state.quota_limited = decision.quota_limited
        demand, uid = _for_the_queue(decision.demand), job["metadata"]["uid"]
        if self._awaits_first_pass(state, observation, decision) or self._awaits_pass(
            key, state, observation, decision
        ):
            # No pass has decided this job (or its new count) yet, and one is due within DEBOUNCE_SECONDS: its
            # status is written once with its admission (or its place in the queue, or its new grant) instead
            # of Queued (or "no capacity for more") now and Admitted after.
            self.scheduler.offer(key, demand, placement, view, uid=uid, awaited=True)
            return True
        if self.scheduler.awaits_offer(key):
            # A start's first pass waits for every job's offer: made before the writes, which may fail (a
            # Service name taken failed every first reconcile of a suspended job, and held every restart 30 s).
            self.scheduler.offer(key, demand, placement, view, uid=uid)
        try:
            self._apply(job, observation, decision, state, progress)
            self._requeue(key, decision.requeue_after, view)
        finally:
            # Also when a write failed: a suspended or timed-out job whose Service create kept failing held
            # its grant, and queued jobs saw its devices taken while no pod of it existed.
            self.scheduler.offer(key, demand, placement, view, uid=uid)
        return False

    def _marked_on_lost_nodes(self, pods: list[WorkerPod], view: ClusterView) -> list[WorkerPod]:
        """_on_lost_nodes, a node kopf's index lacks asked of the API server first (controller/node_check.py)."""
        unindexed = {pod.node_name for pod in pods if pod.node_name and not view.node_exists(pod.node_name)}
        present = self._nodes.present(unindexed)
        return _on_lost_nodes(
            pods, self.scheduler.not_ready_names(), lambda name: name not in unindexed or name in present
        )

    def _observe(
        self,
        key: JobKey,
        job: dict[str, Any],
        state: _JobState,
        pods: list[WorkerPod],
        view: ClusterView,
        placement: Placement,
    ) -> JobObservation:
        namespace, name = key
        metadata = job["metadata"]
        status = job.get("status") or {}
        inventory = self.inventories.inventory(
            view.nodes(), view.usage(), self.catalog, for_job=key, placement=placement
        )
        # Only its own workers: a job deleted and created again under the name leaves the old one's pods
        # behind for the garbage collector, which were granted to the new one as Recovered.
        own = [pod for pod in pods if pod.controller_uid in (None, metadata["uid"])]
        grant = self._grant(key, own, job, status)
        request_id = (status.get("checkpoint") or {}).get("requestId")
        quotas = tuple(view.quotas(namespace))
        now = datetime.now(UTC)
        state.refusals.of_generation(metadata.get("generation"))
        state.refusals.recall(
            status,
            metadata.get("generation"),
            now,
            any(not pod.finished and not pod.terminating for pod in own),
        )
        return JobObservation(
            job=JobRef(name, namespace, metadata["uid"]),
            generation=metadata.get("generation"),
            spec=job.get("spec"),
            status=status,
            pods=pods,
            inventory=inventory,
            now=now,
            already_replaced=frozenset(state.replaced),
            grant=grant.workers,
            waiting=grant.waiting,
            grant_reason=grant.reason,
            grant_reason_want=grant.reason_want,
            reserved_hostnames=grant.hostnames,
            places_held=grant.places_held,
            places_freed_at=grant.places_freed_at,
            places_held_by=grant.places_held_by,
            reserved_places=grant.reserved,
            checkpoint_acks=self.board.acknowledged(key, request_id) if request_id else {},
            # Not offered by this process yet (just restarted): it will be once this decision is applied.
            checkpoint_told_at=(self.board.told_at(key, request_id) or now) if request_id else None,
            created=parse_rfc3339(metadata.get("creationTimestamp")),
            refused_creates=dict(state.refusals.refused),
            refusal=state.refusals.refusal,
            quotas=quotas,
            unseen_creates=len(state.created),
            quota_waived=bool(quotas) and self._below_in_namespace(key, job, view),
        )

    def _grant(
        self, key: JobKey, own: list[WorkerPod], job: Mapping[str, Any], status: Mapping[str, Any]
    ) -> Grant:
        """The scheduler's grant, with what the job's status says of it for a process that first sees it."""
        resumed = resumed_while_suspended(job.get("spec"), status)
        uid = job["metadata"]["uid"]
        target = checkpoint_target(status, job)
        return self.scheduler.grant(key, own, admitted_with(status), resumed, target, uid, room_from(status))

    def _below_in_namespace(self, key: JobKey, job: Mapping[str, Any], view: ClusterView) -> bool:
        """Whether a job of a lower priority in `key`'s namespace has live workers. Shrinking or preempting
        it frees quota as well as devices: the job's quotas are then left to the API server, since their room
        alone would keep it from ever making that room."""
        priority = priority_of(job)
        for other in view.jobs_with_workers():
            held = self.jobs.held(other) if other[0] == key[0] and other != key else None
            if held is None or priority_of(held) >= priority:
                continue
            if any(not pod.finished and not pod.terminating for pod in view.workers(other)):
                return True
        return False

    @staticmethod
    def _awaits_first_pass(state: _JobState, observation: JobObservation, decision: Decision) -> bool:
        """Once per offer of a job's demand, while no scheduling pass has answered it (the next reconcile
        writes all): also when it offers again after withdrawing it (resumed, its gang backoff over), which
        wrote "waiting for the operator's scheduling pass" and its event before the pass's answer."""
        if decision.demand is None:
            state.offered = False
            return False
        first = observation.grant is None and not state.offered
        state.offered = state.offered or first
        return first

    def _awaits_pass(
        self, key: JobKey, state: _JobState, observation: JobObservation, decision: Decision
    ) -> bool:
        """Whether to put off the writes until a pass has decided the job's new count: an admitted job whose
        spec changed since its status was written (a `kubectl scale`, an HPA) to ask for more workers than
        it is granted. It was decided with the old grant, and told "2 of 4 workers granted: no capacity for
        more" (an event too) with devices free, a moment before the pass granted 4. The pass reconciles it
        (Scheduler._store); reconciles meanwhile wait too, for at most AWAIT_PASS_SECONDS. A want that moves
        with a quota's room, with no spec change, does not wait; nor the first reconciles after a start."""
        demand, grant, generation = decision.demand, observation.grant, observation.generation
        if demand is None or not grant or demand.want_workers <= grant:
            return False
        planned = self.scheduler.planned_want(key)
        if planned is None or planned == demand.want_workers:
            # Decided already; or no pass of this process has decided the job: a restart takes grants back
            # from the workers and open requests first (Scheduler.grant), which a wait would go past.
            return False
        if state.awaited_generation != generation:
            state.awaited_generation = generation
            if observation.status.get("observedGeneration") == generation:
                return False
            self.scheduler.await_pass(key)
            return True
        return self.scheduler.awaits_pass(key)

    def _request_checkpoint(self, key: JobKey, request_id: str | None, observation: JobObservation) -> None:
        """Keeps the board's open request as the decision says (None: none open), its acks taken from the
        job's worker pods as observed now (its own, or not yet adopted)."""
        if request_id is None:
            self.board.close(key)
            return
        uid = observation.job.uid
        workers = [pod.name for pod in observation.pods if pod.controller_uid in (None, uid)]
        self.board.open(key, request_id, workers)

    def _requeue(
        self, key: JobKey, delay: float | None, view: ClusterView | None, trigger: str = "timer"
    ) -> None:
        """Reconciles `key` again after `delay` seconds (replacing any earlier request), or cancels."""
        requeue = None
        if delay is not None and view is not None:
            # kopf.event needs the handler's context variables (settings, event queue): carry them.
            context = contextvars.copy_context()

            def run() -> None:
                context.run(self.reconcile, key, trigger, view)

            requeue = Requeue(trigger, delay, time.monotonic() + delay, run)
        self._requeues.schedule(key, requeue)

    def _apply(
        self,
        job: dict[str, Any],
        observation: JobObservation,
        decision: Decision,
        state: _JobState,
        progress: _Progress,
    ) -> None:
        ref = observation.job
        status = decision.status.model_dump(by_alias=True, exclude_none=False)
        service_due = decision.service is not None and state.service_for != ref.uid
        writes_due = service_due or any((decision.adopt, decision.delete, decision.replace, decision.create))
        # A retry keeps the error's Ready and replicas until its writes succeed: one status write per retry
        # that fails again, not the decision's status and then the error once more.
        held = error_kept(observation.status, status) if state.failures and writes_due else None
        if status_changed(observation.status, held or status):
            progress.status = self._patch_status(
                (ref.namespace, ref.name), held or status, job, state, progress
            )
        # Once the status says what the decision did, before the writes below that may fail: a job whose
        # workers a quota refuses still has its series, and its admission is observed once, now; and the
        # checkpoint request the status names is the one workers are told of, or its grace would run out
        # with nobody asked (the removals go ahead at the deadline even while a create keeps failing).
        self.metrics.observe_job(observation, decision)
        self._request_checkpoint((ref.namespace, ref.name), decision.checkpoint_request, observation)
        # Recorded in status.restarts now: deleted below, and never counted twice.
        state.replaced.update(pod.uid for pod in decision.replace)
        # Ready's transition is an event only once the status says it: held back, it is derived again at each
        # retry that fails, and was posted each time while the status still read ReconcileError.
        deferred = held is not None
        later = [event for event in decision.events if deferred and event.condition == ConditionType.READY]
        post_events(
            job,
            [event for event in decision.events if not deferred or event.condition != ConditionType.READY],
        )
        created: list[str] = []
        deleted: list[str] = []
        writes = self._writes_now((ref.namespace, ref.name), job, decision, state, progress)
        try:
            self._write_pods(observation, writes, state, service_due, (created, deleted))
        except Exception:
            # status.replicas counted every worker this decision creates: the failure's status must not.
            if isinstance(status.get("replicas"), int):
                replicas = status["replicas"] - (len(decision.create) - len(created))
                if progress.status is None or replicas != progress.status.get("replicas"):
                    progress.replicas = replicas
            raise
        finally:
            post_worker_events(job, created, deleted)
        if held is not None and progress.status is not None and status_changed(progress.status, status):
            progress.status = self._patch_status(
                (ref.namespace, ref.name), status, {**job, "status": progress.status}, state
            )
            post_events(job, later)
        if decision.delete_job:
            logger.info("deleting %s/%s: ttlSecondsAfterFinished has passed", ref.namespace, ref.name)
            self.api.delete_job(ref.namespace, ref.name, ref.uid)

    def _writes_now(  # noqa: PLR0913 - the job, what was decided for it, and what the pass saw so far
        self, key: JobKey, job: Mapping[str, Any], decision: Decision, state: _JobState, progress: _Progress
    ) -> Decision:
        """`decision` without its creates where the spec changed since the pass read the job: its workers
        wait for the round that decides on the new spec. Told by the status write's answer, or, with none
        written (a retry's kept error) or one written before the edit came, by the job as the watch shows it
        last; the job then goes round again."""
        if decision.create and not progress.spec_changed:
            held = self.jobs.held(key)
            if held is not None and held.get("spec") != job.get("spec"):
                progress.spec_changed = True
                self._go_round_again(state, urgent=True)
        return replace(decision, create=()) if progress.spec_changed else decision

    def _write_pods(
        self,
        observation: JobObservation,
        decision: Decision,
        state: _JobState,
        service_due: bool,
        done: tuple[list[str], list[str]],
    ) -> None:
        """Adopts, deletes, creates the Service (when `service_due`) and the workers, as the decision says;
        appends the workers created and deleted to `done`'s lists, as they go."""
        ref, (created, deleted) = observation.job, done
        uids = {pod.name: pod.uid for pod in observation.pods}
        for name in decision.adopt:
            self.api.adopt_pod(ref.namespace, name, owner_reference(ref))
        # Deletes before the Service: one that cannot be created (a policy, a full quota) must not keep a
        # suspended or preempted job's workers running, or a failed one from being deleted.
        for name in (*decision.delete, *(pod.name for pod in decision.replace)):
            if self.api.delete_pod(ref.namespace, name):
                deleted.append(name)
                if name in uids:
                    state.deleted[uids[name]] = time.monotonic()
        if service_due and decision.service is not None:
            # Once per job (and per resync): a create answered 409 on every reconcile was a tenth of the
            # operator's time and as many API writes as the rest together (docs/performance.md).
            try:
                self.api.create_service(ref.namespace, decision.service)
            except ServiceTaken as taken:
                state.refusals.note_service(
                    [worker_name(ref.name, index) for index in decision.create], taken
                )
                if state.refusals.long_enough():
                    self._go_round_again(state, urgent=True)  # as for a refused worker (below)
                told = state.refusals.service_taken or _suspended(observation.spec)
                if decision.create or not taken.lasting or not told:
                    raise
                # Nothing to create, and the refusal holds and says so (the grant given back) or nothing
                # needs the Service (suspended): the create is tried at the next reconcile, the decision's
                # REFUSAL_TRY_SECONDS requeue of a refused job's at the latest. Raised, it read ReconcileError
                # for good (an audit). Anywhere else (running workers whose Service went, a job never
                # admitted) it is raised: nothing else would tell it (a review).
                return
            state.service_for, state.service_at = ref.uid, time.monotonic()
            state.refusals.service_created()
        try:
            self._create_workers(ref, decision, state, created)
        finally:
            if state.refusals.long_enough():
                # The decision may now give the gang's grant back: it does not wait for the retry, whose
                # backoff each failed pass doubles (event-driven ones too: 40 s after four in 0.3 s).
                self._go_round_again(state, urgent=True)
        self._try_refused(ref, decision, state)

    def _try_refused(self, ref: JobRef, decision: Decision, state: _JobState) -> None:
        """While the job's refusal holds, it takes no room, so none of its creates may ever show that the cause
        was put right: a dry-run create of its first worker (or of the one whose name another's pod took) asks
        the API server (refusals.try_due), creating nothing. Admitted, the refusal ends and the job goes round to ask for room others may give; refused,
        it holds. Any other answer keeps it, and is logged."""
        manifest = decision.probe_pod(state.refusals.probe_index(ref.name))
        if manifest is None or not state.refusals.try_due():
            return
        try:
            error = None
            try:
                self.api.try_pod(ref.namespace, manifest)
            except Exception as refused:  # noqa: BLE001 - classified by Refusals.tried
                error = refused
            over = state.refusals.tried(error)
        except Exception as failed:  # noqa: BLE001 - a failed try changes nothing; the next one may answer
            logger.warning("dry-run create for %s/%s: %s", ref.namespace, ref.name, error_message(failed))
            return
        if over:
            logger.info(
                "%s/%s: the API server admits its workers now; its refusal is over", ref.namespace, ref.name
            )
            self._go_round_again(state, urgent=True)

    def _patch_status(
        self,
        key: JobKey,
        status: Mapping[str, Any],
        job: Mapping[str, Any],
        state: _JobState | None,
        progress: _Progress | None = None,
    ) -> dict[str, Any]:
        """Writes the status of `job` (the copy this reconcile read): `status` as a merge over the status it
        read (None removes a field), written whole and only onto that job, never onto one created under its
        name since. Keeps the answer, so the next reconcile reads what it wrote, and returns the status.

        The answer is the job as it is now: when someone changed it since the reconcile read it (a `kubectl
        scale` whose watch event is still queued, and which the cache will now take for an older copy), the
        reconcile goes round again (`state` given). A job that is gone (404: deleted while the watch was
        broken, so no DELETED event came) or replaced is forgotten."""
        whole = present({**(job.get("status") or {}), **status})
        try:
            written = self.api.patch_job_status(*key, job["metadata"]["uid"], whole)
        except JobReplaced as error:
            raise _JobGone from error
        except ApiException as error:
            if int(error.status or 0) == 404:
                raise _JobGone from error
            raise
        if isinstance(written, dict) and written.get("metadata"):
            self.jobs.observe(key, written)
            if state is not None and not same_but_status(job, written):
                self._go_round_again(state, urgent=True)
                if progress is not None and written.get("spec") != job.get("spec"):
                    progress.spec_changed = True
        return whole

    def _create_workers(self, ref: JobRef, decision: Decision, state: _JobState, created: list[str]) -> None:
        """Builds and creates at most CREATE_BATCH of the decision's workers, wave by wave (CREATE_PARALLEL);
        the loop goes round for more. A failed create stops it after its wave, and is raised."""
        workers = decision.worker_set
        world = workers.workers if workers is not None and workers.fixed_world else None
        if world is not None and state.created and state.created_world not in (None, world):
            # Workers of another world size were created moments ago and the index does not show them yet:
            # one of this size beside them would make a mixed group. Their events reconcile again, and the
            # decision then sees them (and restarts the group).
            return
        wanted = {worker_name(ref.name, index) for index in decision.create}
        state.refusals.forget_untried(wanted)
        todo = [index for index in decision.create if worker_name(ref.name, index) not in state.created]
        batch, wave = todo[:CREATE_BATCH], 1
        while batch:
            manifests = [decision.worker_pod(index) for index in batch[:wave]]
            batch, wave = batch[wave:], min(2 * wave, CREATE_PARALLEL)
            if len(manifests) == 1:
                outcomes = [_outcome(self.api.create_pod, ref.namespace, manifests[0])]
            else:
                outcomes = list(
                    _CREATES.map(lambda m: _outcome(self.api.create_pod, ref.namespace, m), manifests)
                )
            for manifest, (answer, error) in zip(manifests, outcomes, strict=True):
                if error is None:
                    name = manifest["metadata"]["name"]
                    if answer:
                        created.append(name)
                    state.created[name] = time.monotonic()  # created now, or already there (409): not again
                    state.created_world = world
            state.refusals.note(manifests, [error for _, error in outcomes])
            failed = next((error for _, error in outcomes if error is not None), None)
            if failed is not None:
                raise failed
        if len(todo) > CREATE_BATCH:
            self._go_round_again(state)


def _suspended(spec: Any) -> bool:
    """spec.runPolicy.suspend, as stored."""
    run_policy = spec.get("runPolicy") if isinstance(spec, Mapping) else None
    return isinstance(run_policy, Mapping) and run_policy.get("suspend") is True


def _namespace_terminating(error: BaseException) -> bool:
    """The API server's 403 for a create in a namespace being deleted (NamespaceLifecycle)."""
    return (
        isinstance(error, ApiException)
        and int(error.status or 0) == 403
        and "because it is being terminated" in error_message(error)
    )


def _outcome(
    create: Callable[[str, dict[str, Any]], bool], namespace: str, manifest: dict[str, Any]
) -> tuple[bool, Exception | None]:
    """create(namespace, manifest)'s answer, or the error it raised."""
    try:
        return create(namespace, manifest), None
    except Exception as error:  # noqa: BLE001 - handed back to the reconcile thread, which raises it
        return False, error


class _JobGone(Exception):
    """The job being reconciled is gone: the API server answered 404, or its name is another job's now."""


def _for_the_queue(demand: Demand | None) -> Demand | None:
    """The demand without its eligible node names: each pass works them out again from the placement and the
    nodes of that moment (Scheduler._demands), and one set of every node name kept per queued job was most of
    the operator's memory at 2,000 jobs and 5,000 nodes (docs/performance.md)."""
    return replace(demand, eligible_nodes=None) if demand is not None else None


def _as_deleted(pods: list[WorkerPod], deleted: dict[str, float]) -> list[WorkerPod]:
    """The index's workers, those this process deleted shown terminating until the index shows it; an
    entry is forgotten once its pod is gone or shown terminating, or after DELETE_MEMORY_SECONDS."""
    if not deleted:
        return pods
    now, present = time.monotonic(), {pod.uid: pod for pod in pods}
    for uid, at in list(deleted.items()):
        pod = present.get(uid)
        if pod is None or pod.terminating or now - at > DELETE_MEMORY_SECONDS:
            del deleted[uid]
    return [replace(pod, terminating=True) if pod.uid in deleted else pod for pod in pods]


def _on_lost_nodes(
    pods: list[WorkerPod], not_ready: frozenset[str], node_exists: Callable[[str], bool] = lambda name: True
) -> list[WorkerPod]:
    """The workers, those bound to a NotReady node shown as not running: the pass counts nothing there, and
    the node controller leaves such a pod Running until it evicts it (300 s by default). Likewise one bound
    to a node deleted: the pod garbage collector removes its pods only after a quarantine of about 40 s."""
    lost = [_node_lost(pod.node_name, not_ready, node_exists) for pod in pods]
    if not any(lost):
        return pods
    return [replace(pod, node_lost=True) if gone else pod for pod, gone in zip(pods, lost, strict=True)]


def _node_lost(node_name: str | None, not_ready: frozenset[str], node_exists: Callable[[str], bool]) -> bool:
    if not node_name:
        return False  # not bound yet
    return node_name in not_ready or not node_exists(node_name)


def _forget_old_creates(created: dict[str, float]) -> None:
    """Forgets creates the index should have shown by now (a pod deleted before it did is created again)."""
    oldest = time.monotonic() - CREATED_MEMORY_SECONDS
    for name in [name for name, at in created.items() if at < oldest]:
        del created[name]
