"""The admission queue: which TrainingJobs may run, and with how many workers, decided for all at once.

Every job the operator knows hands its latest Demand here after each reconcile (`offer`). A scheduling
pass (`kubefit.decisions.admission.plan_admissions`, pure) then decides every job's grant: 0 for a
queued job, at least its effective minimum for an admitted one. Passes run one at a time under one
lock, so two admissions never count the same devices, and they are debounced: the triggers of one
burst (a node added, a job applied, twenty pod events) are coalesced into one pass DEBOUNCE_SECONDS
after the first of them. Each job whose grant (or queue message) changed is reconciled at once; its
reconcile reads the grant (`grant`) and `decide` applies it.

Capacity comes from kopf's indexes (controller/cluster.py): per node, the devices of its accelerator,
minus those held by bound pods that are not live workers of an admitted job (other workloads, and
workers of jobs that are queued, preempted or terminating). An admitted job's bound workers are its
Holding.placed; devices granted but not yet bound are reserved by the pass itself.

Which nodes a job may use is computed here from the worker template's placement (nodeSelector,
required node affinity, tolerations, cordons), on every pass, so a node added a moment ago counts
before the job is reconciled again. What a pass reads from the view is built by controller/pass_inputs.py.

Restart: the queue is in memory. The first time this process sees a job that already has live worker
pods, it counts the job as admitted with those workers as its grant, so nothing is double-booked or
restarted by an operator restart. Until every job that kopf's indexes of TrainingJobs and of workers
(filled before any handler runs) show has offered its demand, or for RESTART_SETTLE_SECONDS at most, a pass
changes nothing: one before would count a running job still unknown to it as another workload's devices,
and give its unbound workers' places (or those a shrink for priority is freeing) away, or give devices freed
while the operator was down to an elastic job's growth before a queued job of higher priority is known.

Metrics (docs/metrics.md): each pass counts the grant changes of admitted jobs by direction and the
planner's reason word (kubefit_scale_events_total) and the whole jobs it preempts
(kubefit_preemptions_total); kubefit_cluster_accelerators is computed from the latest view when scraped.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from kubefit.api.resource import JobKey
from kubefit.controller.cluster import ClusterView
from kubefit.controller.pass_inputs import (
    PassWorld,
    accelerator_totals,
    bound_on,
    leaving_now,
    live_workers,
    owned_workers,
    pass_inputs,
    quota_state,
    recovered_workers,
    reserved_hostnames,
    still_awaited,
)
from kubefit.controller.preemption_undo import (
    UndoTrials,
    merged,
    preemptions_to_undo,
    still_preempted,
    still_running,
    with_undone_reasons,
)
from kubefit.controller.quota_confirmation import QUOTA_RECHECK_SECONDS, QuotaIndexLag, confirm_quotas
from kubefit.decisions.admission import (
    AdmissionPlan,
    AdmissionPolicy,
    Demand,
    Holding,
    NodeCapacity,
    plan_admissions,
)
from kubefit.decisions.inventory import NodeFacts
from kubefit.decisions.node_match import ANYWHERE, Placement
from kubefit.decisions.node_sets import (
    EligibleSets,
    NodeDevices,
    NodeGenerations,
)
from kubefit.decisions.observed import WorkerPod
from kubefit.decisions.quota import Quota, QuotaState
from kubefit.decisions.running import COUNTING_REASONS
from kubefit.metrics import AcceleratorCount, OperatorMetrics
from kubefit.metrics.operator_metrics import BIND_COUNTED, BIND_ELSEWHERE
from kubefit.sizing.catalog import Catalog

logger = logging.getLogger("kubefit.scheduler")

# Long enough to coalesce one burst of watch events, short against the 2 s a new node may take to be
# used (docs/scheduling.md).
DEBOUNCE_SECONDS = 0.05
# The longest a job's reconciles put off their writes for the pass that decides its new count (await_pass).
AWAIT_PASS_SECONDS = 5.0
# A debounced pass waits at least this many times as long as the last pass took: a pass plans every job, so
# at 500 jobs back-to-back passes during a storm of creates were 28% of the operator's CPU; this keeps passes
# under a third of one core whatever the job count (docs/performance.md).
PASS_SPACING = 2.0
# And at least this long after the last pass ended: during a storm of creates every job's reconcile asks for a
# pass, and cheap passes (settled jobs are not planned again) would otherwise run back to back, each walking
# every job's workers; a change that comes alone still waits only the debounce.
PASS_GAP_SECONDS = 0.25
# A pass that raised (the API server's answers kept changing under it, a bug) runs again after this; its
# triggers were already taken, and a new job waiting for its first pass would otherwise wait for the resync.
FAILED_PASS_RETRY_SECONDS = 5.0
DEFAULT_POLICY: AdmissionPolicy = "BestEffortFIFO"
DEFAULT_HEAD_OF_LINE_TIMEOUT = 300.0
ADMISSION_TRIGGER = "admission"
RECOVERED = "Recovered"  # Grant.reason of a job found with workers when this process first saw it
RECONCILE_THREADS = 4
# After a start (or taking the lead), how long passes wait at most for every job to offer
# their demand: one whose reconcile keeps failing must not hold the queue for ever (docs/scheduling.md).
RESTART_SETTLE_SECONDS = 30.0
# The longest a job shrunk or preempted for others holds their gang clocks while it keeps its workers with no
# demand and none terminating (_within_hold_limit): its workers may never go.
LEAVING_HOLD_LIMIT_SECONDS = 3600.0
# kubefit_preemptions_total's reason: the one way a whole job is stopped now (a higher-priority job that
# may preempt needed its devices, decisions/admission.py).
PREEMPTION_REASON = "HigherPriority"

ReconcileJob = Callable[[JobKey, str, ClusterView], None]
Planner = Callable[..., AdmissionPlan]


@dataclass(frozen=True)
class Grant:
    """What the scheduler holds for one job, as its reconcile reads it."""

    workers: int | None  # granted workers; None: no pass has decided yet (treat as queued)
    waiting: str | None = None  # a queued job: what is missing
    reason: str | None = None  # why the grant last changed (ScaledUp, ShrunkForPriority, Preempted, ...)
    # The kubernetes.io/hostname labels of the nodes the last pass reserved for the job's unbound workers.
    hostnames: frozenset[str] = frozenset()
    # Workers of a job shrunk or preempted for this one still hold devices (admission.leaving_for), and when
    # the last pass saw them all gone after that (None: never held, or not seen by this process).
    places_held: bool = False
    places_freed_at: datetime | None = None
    # The jobs whose leaving workers hold those places (status.gang.roomFrom, read again after a restart).
    places_held_by: frozenset[JobKey] = field(default=frozenset(), compare=False)
    # The workers the job wanted when the pass gave `reason`: one that names a count ("ScaledDown: wants 1")
    # is stale for a job since scaled to another (decisions/running.py, pass_reason).
    reason_want: int | None = field(default=None, compare=False)
    # The places the last pass reserved for the job's unbound workers: node name -> workers.
    reserved: Mapping[str, int] = field(default_factory=dict, compare=False)


@dataclass
class _Entry:
    demand: Demand | None
    placement: Placement = ANYWHERE
    granted: int | None = None
    waiting: str | None = None
    reason: str | None = None
    reason_want: int | None = None  # Grant.reason_want
    hostnames: frozenset[str] = frozenset()  # Grant.hostnames
    places_held: bool = False  # Grant.places_held
    places_freed_at: datetime | None = None  # Grant.places_freed_at
    places_held_by: frozenset[JobKey] = frozenset()  # Grant.places_held_by
    reserved: Mapping[str, int] = field(default_factory=dict)  # AdmissionPlan.reserved of the last pass
    counted: Mapping[str, int] = field(default_factory=dict)  # AdmissionPlan.placement of the last pass
    # (node generation, the placement it was worked out for, node names): the placement may change
    # (update(), under the lock) while a pass works it out (outside it).
    eligible: tuple[int, Placement, frozenset[str]] | None = None
    # (demand, eligible set, the demand with those nodes) of the last pass: the same objects, the same answer.
    planned: tuple[Demand, frozenset[str], Demand] | None = None
    # The workers the job asked for in the demand the last pass stored a result for (planned_want).
    decided_want: int | None = None
    # time.monotonic() when a reconcile put off its writes for the pass that decides its new demand
    # (await_pass): that pass reconciles the job, whatever it grants.
    awaited_at: float | None = None
    retell: bool = False  # its reason was dropped (it named a job since deleted): the next pass reconciles it
    uid: str | None = None  # the job's: workers of an earlier job of the same name are not its own


def _taken_back(
    found: int, admitted_with: int | None, resumed: bool, target: int | None, room_from: frozenset[JobKey]
) -> int:
    """The grant of a job first seen with `found` workers (Scheduler.grant); 0: not taken back. One with no
    worker yet whose status names jobs leaving for it (roomFrom) creates its workers once their places are
    free (decisions/running.py): admitted all the same."""
    if (not found and not room_from) or (admitted_with is None and not resumed):
        return 0
    if target is not None:
        return target
    return max(found, admitted_with or 0)


def _note_places_held(entry: _Entry, held_by: frozenset[JobKey]) -> bool:
    """Notes which jobs' leaving workers hold the job's places now; True if it is to be reconciled: its places
    freed up (its gang clock starts then, decisions/running.py), or other jobs hold them (its status's
    gang.roomFrom, read again by a restarted operator, changes)."""
    held = bool(held_by)
    reconcile = held_by != entry.places_held_by
    if held != entry.places_held and not held:
        entry.places_freed_at = datetime.now(UTC)
        reconcile = True
    entry.places_held, entry.places_held_by = held, held_by
    return reconcile


@dataclass(frozen=True)
class SchedulerSettings:
    policy: AdmissionPolicy = DEFAULT_POLICY
    head_of_line_timeout: float = DEFAULT_HEAD_OF_LINE_TIMEOUT
    # None: passes run synchronously inside `request` and reconciles inline (tests, benchmarks).
    debounce: float | None = DEBOUNCE_SECONDS
    pass_gap: float = PASS_GAP_SECONDS


class Scheduler:
    def __init__(
        self,
        catalog: Catalog,
        metrics: OperatorMetrics,
        settings: SchedulerSettings | None = None,
        planner: Planner = plan_admissions,
        clock: Callable[[], float] = time.time,
        live_quotas: Callable[[str], Sequence[Quota]] | None = None,
    ):
        """`live_quotas`: a namespace's ResourceQuotas read from the API server now (None: kopf's index is
        trusted, as in tests and benchmarks)."""
        self.catalog = catalog
        self.metrics = metrics
        self.settings = settings or SchedulerSettings()
        self._planner = planner
        self._clock = clock
        self._lock = threading.Lock()  # the queue's state
        self._pass_lock = threading.Lock()  # one pass at a time
        self._entries: dict[JobKey, _Entry] = {}
        # job shrunk or preempted -> the jobs it made room for, while its workers are leaving
        # (admission.leaving_for); their gang clocks wait.
        self._leaving: dict[JobKey, frozenset[JobKey]] = {}
        self._leaving_since: dict[JobKey, float] = {}  # when the passes first saw each victim leaving
        # job preempted -> the jobs it made room for, while any worker of it is left: a pass may take it back
        # with its running workers (controller/preemption_undo.py), also once none of those jobs holds a grant.
        self._preempted: dict[JobKey, frozenset[JobKey]] = {}
        self._seen: set[JobKey] = set()  # jobs this process has reconciled (restart recovery once)
        # Jobs that offered their demand since this process started; None once every job has, or the first
        # pass that waited for them did so RESTART_SETTLE_SECONDS ago (then its deadline).
        self._offered_since_start: set[JobKey] | None = set()
        self._settle_deadline: float | None = None
        self._jobs_at_start: frozenset[JobKey] | None = None  # kopf's index of TrainingJobs at the first pass
        # The grant of each job when it left the queue (offer None: suspended, finished): a victim resumed
        # during its handshake is taken back at it (a shrink's), or not at all (a preemption's 0).
        self._grant_on_leaving: dict[JobKey, int] = {}
        self._not_ready: set[str] = set()
        self._nodes: dict[str, NodeFacts] = {}
        self._node_devices = NodeDevices(catalog)
        self._undo = UndoTrials(catalog, self._node_devices, self._plan)
        # Eligible-node sets of the current nodes, one object per distinct set, shared by the jobs (H8).
        self._node_generations = NodeGenerations()
        self._eligible = EligibleSets(catalog)
        self._view: ClusterView | None = None
        self._context: contextvars.Context | None = None
        self._scheduled = False  # a debounced pass is pending
        self._in_pass = False  # a debounced pass is running
        self._retry_pending = False  # a failed pass's retry is pending
        self._passing = False  # synchronous mode: a pass is running (re-requests loop in it)
        self._requested = False
        self._reconcile: ReconcileJob | None = None
        self._executor: Executor | None = None
        self.passes = 0
        self._passes_running = 0  # worker_bound: a running pass may store a plan made before a bind
        self._binds_in_pass: list[tuple[JobKey, str]] = []  # (job, node) of binds seen while a pass ran
        self._live_quotas = live_quotas
        self._quota_lag = QuotaIndexLag(clock)
        self._last_pass_seconds = 0.0
        self._last_pass_end = 0.0  # time.monotonic() at the end of the last debounced pass
        metrics.watch_cluster(self.cluster_accelerators)

    def reconcile_with(self, reconcile: ReconcileJob, executor: Executor | None = None) -> None:
        """Who reconciles a job whose grant changed (the Reconciler), on which threads."""
        self._reconcile = reconcile
        if executor is None and self.settings.debounce is not None:
            executor = ThreadPoolExecutor(RECONCILE_THREADS, thread_name_prefix="kubefit-admission")
        self._executor = executor

    # ------------------------------------------------------------------ what reconciles tell it

    def grant(  # noqa: PLR0913 - what the job's status says of its grant rides along
        self,
        key: JobKey,
        pods: Sequence[WorkerPod],
        admitted_with: int | None = 0,
        resumed: bool = False,
        target: int | None = None,
        uid: str | None = None,
        room_from: frozenset[JobKey] = frozenset(),
    ) -> Grant:
        """The job's grant for its reconcile; the first time a job with workers is seen (operator restart),
        it is taken as admitted with those workers (a failed one awaiting its replacement included, so
        that a restart of the operator restarts no gang), or with `admitted_with` (what its status says it
        was admitted with) if that is more; with `target` (the count an open checkpoint request shrinks or
        restarts it to), at that count, so that the handshake goes on; with `admitted_with` None (its
        status says it is not admitted: preempted, or released after its gang timeout, its workers still
        leaving), not at all. So is a job `resumed` while its suspend's handshake was still waiting
        (scheduled.resumed_while_suspended): its workers never stopped holding their devices. Those leaving
        for another job too are that job's places: a job shrunk, then suspended, is taken back at the grant
        it was shrunk to; one preempted, then suspended, not at all. With `uid` (the job's), an entry of
        another job of the same name (deleted, its DELETED event not handled yet) is not its grant: none,
        as for a job no pass has decided, until its offer replaces that entry. `room_from` (status.gang.roomFrom):
        jobs whose workers were leaving for its gang; its places stay held by them until a pass sees them gone,
        and a job with it is taken back at `admitted_with` before any of its workers exists."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and uid is not None and entry.uid not in (None, uid):
                return Grant(None)
            if entry is None and (key not in self._seen or resumed):
                self._seen.add(key)
                # The status's admitted worker count keeps a gang whole when one of its pods went while
                # the operator was down (it is recreated, not the gang resized).
                workers = _taken_back(recovered_workers(pods), admitted_with, resumed, target, room_from)
                left_with = self._grant_on_leaving.pop(key, 0)
                if resumed and key in self._leaving:
                    workers = min(workers, left_with)
                if workers:
                    entry = self._entries[key] = _Entry(
                        demand=None, granted=workers, reason=RECOVERED, uid=uid
                    )
                    self._await_room_from(key, entry, room_from)
            self._seen.add(key)
            if entry is None:
                return Grant(None)
            return Grant(
                entry.granted,
                entry.waiting,
                entry.reason,
                entry.hostnames,
                entry.places_held,
                entry.places_freed_at,
                reason_want=entry.reason_want,
                places_held_by=entry.places_held_by,
                reserved=entry.reserved,
            )

    def _await_room_from(self, key: JobKey, entry: _Entry, victims: frozenset[JobKey]) -> None:
        """A job taken back at a restart whose places were held by `victims` leaving for it: held again, and
        the victims' going followed by the passes as if this process had made the room (under the lock)."""
        if not victims:
            return
        entry.places_held, entry.places_held_by = True, victims
        for victim in victims:
            self._leaving[victim] = self._leaving.get(victim, frozenset()) | {key}

    def offer(  # noqa: PLR0913 - the job's uid rides along with what its reconcile decided
        self,
        key: JobKey,
        demand: Demand | None,
        placement: Placement,
        view: ClusterView,
        uid: str | None = None,
        awaited: bool = False,
    ) -> None:
        """The job's latest demand after its reconcile (None: it needs nothing; it leaves the queue).
        `awaited`: that reconcile put its writes off for the pass (Reconciler._awaits_first_pass)."""
        with self._lock:
            self._seen.add(key)
            # A pass may be waiting for this job's first offer since the start (run_pass).
            first_offer = self._offered_since_start is not None and key not in self._offered_since_start
            if self._offered_since_start is not None:
                self._offered_since_start.add(key)
            entry = self._entries.get(key)
            if demand is None:
                changed = self._entries.pop(key, None) is not None
                if changed:
                    self._grant_on_leaving[key] = (entry.granted or 0) if entry is not None else 0
                    logger.info("%s/%s leaves the queue (needs nothing now)", *key)
            elif entry is None or (uid is not None and entry.uid not in (None, uid)):
                # A job created again under a deleted one's name (its event before the old one's DELETED)
                # starts afresh: nothing the old one was granted or reserved is its own.
                fresh = self._entries[key] = _Entry(demand, placement, uid=uid)
                if entry is None:
                    fresh.granted = self._kept_grant(key, view, uid)
                    # A kept grant the pass grants again changes nothing: told all the same, or the
                    # reconcile that waited for the pass wrote nothing until the resync (a review).
                    fresh.retell = awaited and fresh.granted is not None
                changed = True
            else:
                entry.uid = uid or entry.uid
                changed = entry.demand != demand or entry.placement != placement
                wanted = entry.demand.want_workers if entry.demand is not None else None
                if wanted != demand.want_workers and _tells_the_want(entry.reason):
                    # "ScaledDown: wants 1" would stand for a job since scaled to 3 whose grant no pass
                    # changes yet (its leaving worker still holds the devices): told afresh, not as a scale-down.
                    entry.reason = entry.reason_want = None
                entry.demand = demand
                if entry.placement != placement:  # an equal one is kept: `eligible` stays good for it
                    entry.placement = placement
        if changed or first_offer:
            self.request("job", view)

    def _kept_grant(self, key: JobKey, view: ClusterView, uid: str | None) -> int | None:
        """A job back in the queue that left it with a grant and kept its workers meanwhile (a spec edit
        that blocked it, DoesNotFit or InvalidSpec, undone): it holds those devices still, at no more than
        it left with, and is not queued afresh (the pass would give it nothing, and its workers would go
        as if preempted). None for any other newcomer."""
        left_with = self._grant_on_leaving.pop(key, 0)
        kept = len(live_workers(owned_workers(view.workers(key), uid)))
        return min(left_with, kept) or None

    def planned_want(self, key: JobKey) -> int | None:
        """The workers the job asked for when the last scheduling pass decided it (None: none has)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.decided_want if entry is not None else None

    def await_pass(self, key: JobKey) -> None:
        """A reconcile of the job puts off its writes until a pass has decided the demand it offers next: that
        pass reconciles the job even if its grant does not change (_store)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.awaited_at is None:
                entry.awaited_at = self._clock()

    def awaits_pass(self, key: JobKey) -> bool:
        """Whether a reconcile of the job still waits for the pass (await_pass), for at most AWAIT_PASS_SECONDS:
        a pass that never comes (it failed; the job left the queue) does not keep the job's status unwritten."""
        with self._lock:
            entry = self._entries.get(key)
            since = entry.awaited_at if entry is not None else None
            return since is not None and self._clock() - since < AWAIT_PASS_SECONDS

    def awaits_offer(self, key: JobKey) -> bool:
        """Whether the passes of this process's start still wait for the job's first offer."""
        with self._lock:
            return self._offered_since_start is not None and key not in self._offered_since_start

    def forget(self, key: JobKey, view: ClusterView | None = None) -> None:
        """The job was deleted: its place in the queue goes, and the devices it held are offered again."""
        with self._lock:
            known = self._entries.pop(key, None) is not None
            self._seen.discard(key)
            gone = f"to make room for {key[0]}/{key[1]}"
            for entry in self._entries.values():
                if entry.reason is not None and entry.reason.endswith(gone):
                    # "ShrunkForPriority: to make room for ml/c" stood while ml/c no longer existed and
                    # another job had taken the devices it left (the scheduling audit).
                    entry.reason = entry.reason_want = None
                    entry.retell = True
            if self._offered_since_start is not None:
                self._offered_since_start.add(key)  # deleted: no offer of it to wait for
            self._grant_on_leaving.pop(key, None)
            self._preempted.pop(key, None)
        if known and view is not None:
            self.request("job", view)

    def node_changed(self, facts: NodeFacts | None, name: str, ready: bool, view: ClusterView) -> None:
        """A node event: a pass only when what scheduling reads of the node changed (not a heartbeat)."""
        with self._lock:
            before = (self._nodes.get(name), name not in self._not_ready)
            if facts is None:
                self._nodes.pop(name, None)
                self._not_ready.discard(name)
            else:
                self._nodes[name] = facts
                (self._not_ready.discard if ready else self._not_ready.add)(name)
            after = (facts, ready or facts is None)
        if before != after:
            self.request("node", view)

    def worker_bound(self, key: JobKey, node: str, view: ClusterView) -> bool:
        """A live worker of the job was just bound on `node`: whether the last pass counted as many of the job's
        workers there (bound, or reserved for the unbound). Then a pass now would find the same free devices
        everywhere and change no grant, and none is needed (docs/performance.md, the eighth round). A bind seen
        while a pass runs is checked against the plan that pass stores (it may have read the cluster before the
        bind), and a pass is asked for then if it is not counted there. Counted in kubefit_worker_binds_total."""
        bound = bound_on(view, key, node)
        with self._lock:
            if self._passes_running:
                self._binds_in_pass.append((key, node))
                return True
            placement = self._bind_placement(key, node, bound)
            victims = self._victims_for(key)
        self.metrics.count_worker_bind(placement)
        return placement == BIND_COUNTED and not still_running(victims, view)

    def _victims_for(self, key: JobKey) -> list[JobKey]:
        """The preempted jobs (granted nothing) that made room for the job: once its workers are all bound, a
        pass may take such a job back with its workers still saving (controller/preemption_undo.py), so a
        bind of it asks for a pass even where the last pass counted it."""
        return [
            victim
            for victims in (self._leaving, self._preempted)
            for victim, beneficiaries in victims.items()
            if key in beneficiaries and not (victim in self._entries and self._entries[victim].granted)
        ]

    def _bind_placement(self, key: JobKey, node: str, bound: int) -> str:
        entry = self._entries.get(key)
        if entry is not None and entry.granted and 0 < bound <= entry.counted.get(node, 0):
            return BIND_COUNTED
        return BIND_ELSEWHERE

    def _check_binds_in_pass(self, view: ClusterView) -> None:
        """After the last running pass stored its plan: the binds seen meanwhile, checked against it."""
        with self._lock:
            if self._passes_running or not self._binds_in_pass:
                return
            binds, self._binds_in_pass = self._binds_in_pass, []
        placements, victims = [], []
        for key, node in binds:
            bound = bound_on(view, key, node)
            with self._lock:
                placements.append(self._bind_placement(key, node, bound))
                victims += self._victims_for(key)
        for placement in placements:
            self.metrics.count_worker_bind(placement)
        if still_running(victims, view) or any(placement != BIND_COUNTED for placement in placements):
            self.request("pod", view)

    def snapshot(self) -> dict[JobKey, Grant]:
        with self._lock:
            return {
                key: Grant(entry.granted, entry.waiting, entry.reason) for key, entry in self._entries.items()
            }

    def reconcile_soon(self, key: JobKey, trigger: str) -> None:
        """Reconciles one job on the scheduler's threads, in the context of the latest kopf handler
        (for callers outside kopf, such as the checkpoint server's threads)."""
        with self._lock:
            view, context = self._view, self._context
        if view is not None and context is not None:
            context.copy().run(self._trigger, [key], view, trigger)

    # ------------------------------------------------------------------ debounced passes

    def request(self, trigger: str, view: ClusterView) -> None:
        """Asks for a scheduling pass soon (one per burst of requests); never blocks on the pass."""
        context = contextvars.copy_context()
        with self._lock:
            self._view, self._context, self._requested = view, context, True
            if self.settings.debounce is None:
                if self._passing:
                    return  # the running synchronous pass goes round again
                self._passing = True
            elif self._scheduled or self._in_pass:
                # Merged: into the pending pass, or the running one asks for the next as it ends, its
                # spacing then measured from that end (a timer started now measured it from the pass before).
                return
            else:
                self._scheduled = True
        logger.debug("scheduling pass requested by %s", trigger)
        if self.settings.debounce is None:
            self._drain()
            return
        timer = threading.Timer(self.pass_delay(), context.run, args=(self._scheduled_pass,))
        timer.daemon = True
        timer.start()

    def pass_delay(self) -> float:
        """How long a requested pass waits: the debounce, or until the pass gap or PASS_SPACING times the last
        pass's duration, whichever is longer, has passed since it ended, if that is later (an idle cluster's
        next pass is not held back)."""
        since_last = time.monotonic() - self._last_pass_end
        gap = max(self.settings.pass_gap, PASS_SPACING * self._last_pass_seconds)
        return max(self.settings.debounce or 0.0, gap - since_last)

    def _drain(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._requested:
                        self._passing = False
                        return
                    self._requested = False
                    view = self._view
                if view is not None:
                    self._trigger(self.run_pass(view), view)
        except BaseException:
            with self._lock:
                self._passing = False
            raise

    def _scheduled_pass(self) -> None:
        changed: list[JobKey] | None = None
        with self._pass_lock:
            with self._lock:
                self._scheduled, self._requested, self._in_pass = False, False, True
                view = self._view
            started = time.monotonic()
            try:
                if view is not None:
                    changed = self.run_pass(view)
            except Exception:  # noqa: BLE001 - a failed pass must not kill the timer thread; the next retries
                logger.exception("scheduling pass failed; again in %.0f s", FAILED_PASS_RETRY_SECONDS)
                self._retry_later()
            finally:
                self._last_pass_end = time.monotonic()
                self._last_pass_seconds = self._last_pass_end - started
                with self._lock:
                    self._in_pass = False
                    again, latest = self._requested, self._view
        if again and latest is not None:
            self.request("during a pass", latest)
        if changed is not None and view is not None:
            self._trigger(changed, view)

    def _retry_later(self) -> None:
        """One retry of a failed pass, FAILED_PASS_RETRY_SECONDS on, whatever the number of failures: a
        retry for each failed pass made every event start a chain of its own, until passes ran back to back."""
        with self._lock:
            if self._retry_pending:
                return
            self._retry_pending = True

        def retry() -> None:
            with self._lock:
                self._retry_pending = False
                view = self._view
            if view is not None:
                self.request("retry", view)

        timer = threading.Timer(FAILED_PASS_RETRY_SECONDS, contextvars.copy_context().run, args=(retry,))
        timer.daemon = True
        timer.start()

    def _trigger(
        self, changed: Iterable[JobKey], view: ClusterView, trigger: str = ADMISSION_TRIGGER
    ) -> None:
        reconcile = self._reconcile
        if reconcile is None:
            return
        for key in changed:
            if self._executor is None:
                reconcile(key, trigger, view)
            else:
                # kopf.event needs the handler's context variables: each reconcile gets its own copy.
                self._executor.submit(contextvars.copy_context().run, reconcile, key, trigger, view)

    # ------------------------------------------------------------------ one pass

    def run_pass(self, view: ClusterView) -> list[JobKey]:
        """Plans every known job against the cluster now; returns the jobs whose grant changed or that began or
        stopped waiting in the queue. Nothing while a job (queued or running) has not offered its demand since
        this process started (the module's docstring, Restart)."""
        if self._awaiting_jobs(view):
            return []
        with self._lock:
            self._passes_running += 1
        try:
            return self._plan_and_store(view)
        finally:
            with self._lock:
                self._passes_running -= 1
            self._check_binds_in_pass(view)

    def _awaiting_jobs(self, view: ClusterView) -> bool:
        """Whether a job (in kopf's index of TrainingJobs at the first pass, or with live workers) has not
        offered its demand since this process started, and the first pass that waited for it did so less than
        RESTART_SETTLE_SECONDS ago (a pass is asked for at that deadline). False from then on, and at once on
        a start with no job. Queued jobs are waited for too: a pass before a queued job's offer grew an
        elastic job onto devices freed while the operator was down, and shrank it back once the queued job
        of higher priority offered (two checkpoint handshakes for nothing)."""
        with self._lock:
            if self._offered_since_start is None:
                return False
        running = [key for key in view.jobs_with_workers() if live_workers(view.workers(key))]
        # The jobs there at the first pass: kopf's index held every job of the start before any handler ran.
        # Not jobs created since: a burst of applies would hold passes back until it ended.
        listed = frozenset(view.jobs()) if self._jobs_at_start is None else None
        now = self._clock()
        with self._lock:
            offered = self._offered_since_start
            if offered is None:
                return False
            if self._jobs_at_start is None:
                self._jobs_at_start = listed
            expected = {*running, *(self._jobs_at_start or ())}
            missing = sorted(key for key in expected if key not in offered)
            if missing and self._settle_deadline is None:
                self._settle_deadline = now + RESTART_SETTLE_SECONDS
                if self.settings.debounce is not None:
                    self._pass_later(RESTART_SETTLE_SECONDS, "restart settle limit")
            deadline = self._settle_deadline
            if missing and deadline is not None and now < deadline:
                logger.debug("scheduling pass waits for %d job(s) to offer", len(missing))
                return True
            self._offered_since_start, self._jobs_at_start = None, frozenset()  # kept no longer
        if missing:
            logger.warning(
                "scheduling passes go on %.0f s after the start without the demand of %d job(s) (their "
                "reconciles failing?); the workers of any of them count as another workload's: %s",
                RESTART_SETTLE_SECONDS,
                len(missing),
                ", ".join(f"{namespace}/{name}" for namespace, name in missing[:10]),
            )
        elif deadline is not None:
            logger.info("every job offered its demand: scheduling passes go on")
        return False

    def _pass_later(self, delay: float, trigger: str) -> None:
        """A pass asked for `delay` seconds on, with the latest request's view then (starts a timer only: safe
        under the lock)."""

        def ask() -> None:
            with self._lock:
                view = self._view
            if view is not None:
                self.request(trigger, view)

        timer = threading.Timer(delay, contextvars.copy_context().run, args=(ask,))
        timer.daemon = True
        timer.start()

    def _plan_and_store(self, view: ClusterView) -> list[JobKey]:
        started, cpu_started = time.perf_counter(), time.thread_time()
        not_ready = self.not_ready_names()
        nodes = [node for node in view.nodes() if node.ready and node.name not in not_ready]
        with self._lock:
            entries = {key: entry for key, entry in self._entries.items() if entry.demand is not None}
            last_leaving = dict(self._leaving)
            preempted = merged(self._preempted, last_leaving)
        now = datetime.now(UTC)
        grants = {key: entry.granted or 0 for key, entry in entries.items()}
        demands = self._demands(entries, nodes)
        uids = {key: entry.uid for key, entry in entries.items()}
        self._node_devices.keep_only(nodes)
        last_places = {key: (entry.reserved, entry.counted) for key, entry in entries.items()}
        awaited = still_awaited(last_leaving, grants, view, now)
        world = PassWorld(view, nodes, demands, uids, last_places, awaited, now)
        inputs = pass_inputs(world, grants, self.catalog, self._node_devices)
        undone: Mapping[JobKey, int] = preemptions_to_undo(preempted, demands, grants, uids, view, nodes)
        if undone:
            inputs, undone = self._undo.taking_back(world, grants, undone, inputs, preempted.keys())
        queued, admitted, capacity, old_workers_going = inputs

        def plan_with(quota_view: ClusterView) -> AdmissionPlan:
            return self._plan(queued, admitted, capacity, quota_state(demands, uids, quota_view))

        confirmed = self._with_quotas_confirmed(plan_with(view), plan_with, view)
        self.passes += 1
        if confirmed is None:  # an index of quotas lags: nothing stored now, the pass runs again in a moment
            self.metrics.scheduling_pass_duration.observe(time.perf_counter() - started)
            return []
        plan = with_undone_reasons(confirmed, undone, preempted)
        self._note_preempted(plan, view, entries.keys())
        with self._lock:
            victims = dict(self._leaving)
        for victim, beneficiaries in plan.made_room_for.items():
            victims[victim] = victims.get(victim, frozenset()) | beneficiaries
        leaving, terminating = leaving_now(victims, plan.grants, view, now)
        still_leaving = self._within_hold_limit(leaving, entries.keys(), terminating)
        with self._lock:
            # Kept apart from the entries: a victim deleted (or suspended) meanwhile still holds devices
            # until its workers are gone.
            self._leaving = still_leaving
        awaiting: dict[JobKey, frozenset[JobKey]] = {}  # beneficiary -> the victims still leaving for it
        for victim, beneficiaries in still_leaving.items():
            for job in beneficiaries:
                awaiting[job] = awaiting.get(job, frozenset()) | {victim}
        changed = self._store(plan, entries, reserved_hostnames(plan, nodes), awaiting, old_workers_going)
        self.metrics.scheduling_pass_duration.observe(time.perf_counter() - started)
        self.metrics.scheduling_pass_cpu.observe(time.thread_time() - cpu_started)
        return changed

    def _note_preempted(self, plan: AdmissionPlan, view: ClusterView, in_queue: Collection[JobKey]) -> None:
        with self._lock:
            self._preempted = still_preempted(self._preempted, plan, view, in_queue)

    def _within_hold_limit(
        self,
        leaving: dict[JobKey, frozenset[JobKey]],
        queued: Collection[JobKey],
        terminating: Mapping[JobKey, int],
    ) -> dict[JobKey, frozenset[JobKey]]:
        """`leaving` without the victims that have kept workers for LEAVING_HOLD_LIMIT_SECONDS (since this
        process first saw them so) with no demand and none of them terminating: such a victim (its spec made
        invalid during its handshake: running workers are left alone) would hold its beneficiaries' gang
        clocks for ever. A victim in the queue is in its handshake, bounded by its checkpoint grace, and
        terminating workers by theirs (stuck_terminating), so neither is cut short."""
        now = self._clock()
        kept = {victim for victim in leaving if victim not in queued and not terminating.get(victim, 0)}
        self._leaving_since = {victim: self._leaving_since.get(victim, now) for victim in kept}
        over = sorted(
            victim for victim in kept if now - self._leaving_since[victim] > LEAVING_HOLD_LIMIT_SECONDS
        )
        for victim in over:
            logger.warning(
                "%s/%s has kept its workers without a demand for over %.0f s: the jobs it made room for no longer "
                "wait for it",
                *victim,
                LEAVING_HOLD_LIMIT_SECONDS,
            )
        return {victim: jobs for victim, jobs in leaving.items() if victim not in over}

    def _plan(
        self,
        queued: Sequence[Demand],
        admitted: Sequence[Holding],
        capacity: Sequence[NodeCapacity],
        quotas: QuotaState | None,
    ) -> AdmissionPlan:
        return self._planner(
            queued,
            admitted,
            capacity,
            self.settings.policy,
            self._clock(),
            self.settings.head_of_line_timeout,
            **({"quotas": quotas} if quotas is not None else {}),
        )

    def _with_quotas_confirmed(
        self, plan: AdmissionPlan, plan_with: Callable[[ClusterView], AdmissionPlan], view: ClusterView
    ) -> AdmissionPlan | None:
        """The plan with the quotas it takes room under read from the API server (controller/quota_confirmation.py);
        None while kopf's index of them lags: the pass stores nothing and runs again in a moment."""
        confirmed = confirm_quotas(plan, plan_with, view, self._live_quotas, self._quota_lag)
        if confirmed is None:
            self._pass_later(QUOTA_RECHECK_SECONDS, "quota index lag")
        return confirmed

    def not_ready_names(self) -> frozenset[str]:
        """The nodes whose Ready condition is not True, as their events said."""
        with self._lock:
            return frozenset(self._not_ready)

    def _demands(self, entries: Mapping[JobKey, _Entry], nodes: Sequence[NodeFacts]) -> dict[JobKey, Demand]:
        """Each demand with the nodes its workers may land on now (None: every accelerator node).

        Cached per job until the nodes change; kopf's index replaces a node's facts on every change.
        """
        generation = self._node_generations.of(nodes)
        self._eligible.advance(generation, nodes)
        every = frozenset(node.name for node in nodes if self.catalog.identify(node.labels) is not None)
        every = self._eligible.intern(every)
        demands = {}
        for key, entry in entries.items():
            demand, placement, cached = entry.demand, entry.placement, entry.eligible  # read once: see _Entry
            assert demand is not None
            if cached is None or cached[0] != generation or cached[1] is not placement:
                # Worked out once per placement when any node changed: per job, a cordoned node made the
                # next pass classify every node for each of 3,000 jobs, 30 s (docs/performance.md, the tenth
                # round). Jobs with the same eligible nodes share one set (EligibleSets).
                cached = entry.eligible = (generation, placement, self._eligible.of(placement, nodes))
            eligible = cached[2]
            planned = entry.planned
            if planned is None or planned[0] is not demand or planned[1] is not eligible:
                # `is`: the sets are interned in `shared`, so equal sets are the same object.
                with_nodes = replace(demand, eligible_nodes=None if eligible is every else eligible)
                planned = entry.planned = (demand, eligible, with_nodes)
            demands[key] = planned[2]
        return demands

    def _store(
        self,
        plan: AdmissionPlan,
        planned: Mapping[JobKey, _Entry],
        hostnames: Mapping[JobKey, frozenset[str]],
        awaiting: Mapping[JobKey, frozenset[JobKey]] | None = None,
        old_workers_going: Mapping[JobKey, str] | None = None,
    ) -> list[JobKey]:
        changed: list[JobKey] = []
        scaled: list[tuple[str, str]] = []  # (direction, reason word) of each admitted job's grant change
        preempted: list[str] = []
        with self._lock:
            for key, entry in planned.items():
                if self._entries.get(key) is not entry:
                    # Forgotten or replaced while the pass ran. One that left the queue meanwhile (suspended)
                    # is taken back, if resumed during its handshake, at no more than this pass left it.
                    if key in self._grant_on_leaving and key in plan.grants:
                        self._grant_on_leaving[key] = min(self._grant_on_leaving[key], plan.grants[key])
                    continue
                granted = plan.grants.get(key, entry.granted or 0)
                waiting = (
                    (plan.waiting.get(key) or (old_workers_going or {}).get(key)) if granted == 0 else None
                )
                reason = _unless_for_a_job_gone(plan.reasons.get(key), self._entries)
                _count_change(entry.granted or 0, granted, reason, key in plan.preempt, (scaled, preempted))
                # A queued job whose message alone changed (the free capacity it names moved) is not
                # reconciled now: every pass would rewrite the status of every queued job (docs/performance.md,
                # the horizon); its next reconcile (the resync at the latest) writes the new message.
                if granted != entry.granted or (waiting is None) != (entry.waiting is None):
                    changed.append(key)
                    if reason:
                        entry.reason = reason
                        entry.reason_want = entry.demand.want_workers if entry.demand is not None else None
                    if granted != (entry.granted or 0):  # not a queued job's first pass: 0 -> 0
                        logger.info(
                            "%s/%s: %d -> %d workers (%s)",
                            *key,
                            entry.granted or 0,
                            granted,
                            entry.reason or waiting or "no reason given",
                        )
                if _note_places_held(entry, (awaiting or {}).get(key, frozenset())) and key not in changed:
                    changed.append(key)
                if _decided(entry) and key not in changed:
                    changed.append(key)
                reserved = plan.reserved.get(key, {})
                # A job waiting for workers leaving for it creates a worker once its reserved place is free
                # (decisions/running.py, _wait_for_room). Past the pass that made room, a place is reserved
                # only on free devices (a victim gone, a node added): a new one is reconciled at once.
                if entry.places_held and reserved and reserved != entry.reserved and key not in changed:
                    changed.append(key)
                entry.granted, entry.waiting = granted, waiting
                entry.hostnames = hostnames.get(key, frozenset())
                entry.reserved = reserved
                entry.counted = plan.placement.get(key, {})
        self.metrics.count_scale_events(scaled)
        self.metrics.count_preemptions(preempted)
        return changed

    def cluster_accelerators(self) -> dict[str, AcceleratorCount]:
        """Per accelerator type, the devices of the ready nodes the passes count, and those that bound pods
        hold (kubefit_cluster_accelerators, read at each scrape)."""
        with self._lock:
            view, not_ready = self._view, frozenset(self._not_ready)
        if view is None:
            return {}
        return accelerator_totals(view.nodes(), view.usage(), self.catalog, not_ready)


def _count_change(
    before: int,
    granted: int,
    reason: str | None,
    preempt: bool,
    into: tuple[list[tuple[str, str]], list[str]],
) -> None:
    """Records a preemption of a job that held workers, or the direction and reason word of a grant change
    of an admitted job (a first admission is neither)."""
    scaled, preempted = into
    if preempt:
        if before:
            preempted.append(PREEMPTION_REASON)
        return
    if before and granted != before:
        word = (reason or "").split(":", 1)[0]
        scaled.append(("up" if granted > before else "down", word))


_MADE_ROOM_FOR = re.compile(r"to make room for ([^/\s]+)/(\S+)$")


def _unless_for_a_job_gone(reason: str | None, entries: Mapping[JobKey, _Entry]) -> str | None:
    """A pass's reason, None where it names a job forgotten since the pass planned (deleted while it ran:
    forget() dropped such reasons already, and the stored plan would bring them back)."""
    found = _MADE_ROOM_FOR.search(reason or "")
    return None if found is not None and (found.group(1), found.group(2)) not in entries else reason


def _decided(entry: _Entry) -> bool:
    """Records the want of the demand a pass decided (under the lock); True when a reconcile waited for that
    decision (Reconciler._awaits_pass), granted or not, or the job's reason was dropped (retell): the job is
    told now. A pass of an older demand than the entry's leaves the wait to the next one."""
    entry.decided_want = entry.planned[0].want_workers if entry.planned is not None else None
    if entry.retell:
        entry.retell = False
        return True
    if entry.awaited_at is None or entry.planned is None or entry.planned[0] is not entry.demand:
        return False
    entry.awaited_at = None
    return True


def _tells_the_want(reason: str | None) -> bool:
    """A pass's reason that names the worker count the job wanted then (or the count it was granted)."""
    return (reason or "").partition(":")[0].strip() in COUNTING_REASONS
