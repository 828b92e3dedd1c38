"""The cluster-wide scheduling pass: how many workers every TrainingJob is granted right now (pure).

One pass sees every job the operator knows (queued and admitted) and the accelerator nodes, and returns a
grant for each: 0 for a queued job, at least its effective minimum for an admitted one. The rules:
- each worker needs `per_worker` free devices of the job's accelerator on ONE node (of its eligible nodes);
- free = allocatable - other workloads' devices - devices of admitted jobs' bound workers; then every
  admitted job's granted-but-unbound workers are reserved on nodes (best fit, minimums first) before anyone
  new is admitted, so two admissions never count the same devices;
- the queue is ordered by priority (high first), then age (old first), then namespace/name. A queued job is
  admitted at its minimum when that fits. StrictFIFO: the first job that does not fit blocks everyone
  behind it. BestEffortFIFO: jobs behind it may pass, until it has waited longer than `head_wait_limit`:
  then nothing behind it is admitted, grows, or has a minimum that lost its places re-placed on the nodes it
  may use (no starvation); nodes of its accelerator it cannot use stay open to them;
- a job whose demand claims ResourceQuota keys (Demand.quota_claims) is granted only within their budget
  (QuotaBudget: the latest reading of each key, less the workers granted and not charged yet): a queued job
  whose minimum is over it waits (QUOTA_EXCEEDED), blocks no one and makes no room; growth stops there;
- a queued job whose minimum does not fit may shrink strictly lower-priority elastic jobs toward their
  minimums (lowest priority first, then youngest), and, only if that is not enough and its preemption is
  LowerPriority, preempt whole lower-priority jobs; only when that makes it fit, and only as much as needed;
- so may an admitted job whose minimum lost its places (a node gone, its devices taken), for those places,
  before any queued job is admitted; not while room made for it, or its own old workers, are still leaving
  (Holding.room_coming), nor for a raise, nor over its quota (_make_room_for_lost_places);
- spare capacity then grows admitted elastic jobs toward `want_workers` (priority, then age); a job whose
  want dropped is scaled down to it; a non-elastic job is all-or-nothing at `want_workers`. Spare is free
  now: not the devices of workers a shrink or preemption takes away (they save first), nor, in the pass
  that admits a job onto those, the nodes that job may use (the next pass gives it their free devices).
Pure and deterministic: the same inputs give the same plan.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from itertools import accumulate
from typing import Literal

from kubefit.api.resource import JobKey
from kubefit.decisions.quota import QuotaBudget, QuotaClaim, QuotaState

AdmissionPolicy = Literal["StrictFIFO", "BestEffortFIFO"]
Preemption = Literal["Never", "LowerPriority"]
ADMISSION_POLICIES: tuple[AdmissionPolicy, ...] = ("StrictFIFO", "BestEffortFIFO")

# Reason words of AdmissionPlan.reasons ("Word: detail"), for conditions and Events.
ADMITTED = "Admitted"
SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"
CAPACITY_CHANGED = "CapacityChanged"
SHRUNK_FOR_PRIORITY = "ShrunkForPriority"
PREEMPTED = "Preempted"
# Reason words of AdmissionPlan.waiting ("Word: detail"): the Admitted=False reason of a queued job.
INSUFFICIENT_CAPACITY = "InsufficientCapacity"  # its minimum does not fit the free devices it may use
QUOTA_EXCEEDED = "QuotaExceeded"  # its minimum is over its namespace's quota, less the jobs granted before it
QUEUED = "Queued"  # it waits behind another job (StrictFIFO, or a head of line keeping its nodes)

# The "node" of a shrink removal that takes a finished worker (Demand.finished_workers) off a grant: it frees
# no device anywhere. Node names are never empty.
_FINISHED = ""


@dataclass(frozen=True)
class Demand:
    """What one job asks of the cluster (built by the controller from the spec and its sizing)."""

    key: JobKey
    priority: int
    created: float  # creationTimestamp, epoch seconds: older first among equal priorities
    accelerator: str
    per_worker: int
    min_workers: int  # effective minimum: max(minReplicas, the sizing floor)
    want_workers: int  # bounds.desired: what it runs with unlimited capacity
    elastic: bool  # False: all-or-nothing at max(min_workers, want_workers)
    preemption: Preemption
    eligible_nodes: frozenset[str] | None = None  # None: every node of its accelerator
    # An elastic job's grants come in multiples of this (whole TP x PP groups; min and want are multiples).
    worker_step: int = 1
    # Workers of its running group that succeeded (status.succeededWorkers: their pods finished or gone).
    # decide counts them as placed and never runs them again, so the pass counts them placed too, on no
    # node: it reserved a place for each, took the job for short of its minimum, or lowered its grant.
    finished_workers: int = 0
    # When it last entered the queue (its Admitted=False transition), epoch seconds; None: created. A head
    # of line has waited from then: a job requeued by preemption or a gang timeout has not waited its life.
    # Not compared: it is written with the status a pass's decision causes, and alone asks for no pass.
    queued_since: float | None = field(default=None, compare=False)
    # False: it neither shrinks nor preempts other jobs (its last worker create was refused: decisions.job).
    makes_room: bool = True
    # The quota keys its workers are charged under (decisions/quota.py): the pass grants it no more than the
    # budget of those keys has room for, unless `quota_exempt` (a lower-priority job of its namespace runs,
    # whose shrink or preemption frees the quota too), and counts its grant in the budget either way.
    quota_claims: tuple[QuotaClaim, ...] = ()
    quota_exempt: bool = False
    # Worker 0 hosts the rendezvous (framework pytorch or jax): decide keeps it whatever the grant, created or
    # not. Under framework none only a live worker 0 is kept (decisions/workers._zero_pinned).
    host_kept: bool = True
    # Its group runs indices 0 to N-1 and restarts whole (rendezvous.fixed_world): a worker's replacement
    # takes the same name. An elastic pytorch job's takes a free index instead.
    fixed_world: bool = False

    @property
    def waiting_since(self) -> float:
        return self.created if self.queued_since is None else self.queued_since

    def __post_init__(self) -> None:
        for name in ("per_worker", "min_workers", "worker_step"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"Demand.{name} of {_name(self.key)} must be >= 1, got {getattr(self, name)}"
                )
        if self.want_workers < 0:
            raise ValueError(
                f"Demand.want_workers of {_name(self.key)} must be >= 0, got {self.want_workers}"
            )


@dataclass(frozen=True)
class Holding:
    """An admitted job and what it has now."""

    demand: Demand
    granted: int  # workers currently granted (its target)
    placed: Mapping[str, int]  # node name -> its worker pods bound there (non-terminating)
    # The node of each bound worker in the order decide keeps them (workers.keep_order). Given, a shrink frees
    # workers the way decide removes them (that order reversed), so the devices it counts on come free.
    nodes_by_index: Sequence[str] = ()
    # Where the last pass reserved its unbound workers (AdmissionPlan.reserved). They are reserved there again
    # while those nodes have room: the workers created since prefer those nodes (builders/placement.py).
    reserved: Mapping[str, int] = field(default_factory=dict)
    # Worker 0 is not bound (not created yet, or waiting for a node) and decide keeps it whatever the grant
    # (Demand.host_kept, or a live one), so a shrink frees none of its reserved places for it.
    first_unbound: bool = False
    # Devices are on their way to it: workers of jobs shrunk or preempted for it, or its own terminating
    # ones, still hold them. A minimum short of places then waits for those and makes no more room.
    room_coming: bool = False
    # Its own workers terminating within their grace (their devices still held).
    terminating: int = 0


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    accelerator: str | None  # catalog name; None for nodes without one
    allocatable: int  # devices of that accelerator
    used_by_others: int  # devices held by bound pods that are not workers of any Holding


@dataclass(frozen=True)
class AdmissionPlan:
    grants: Mapping[JobKey, int]  # new worker count for every job passed in (0 = queued)
    admitted_now: frozenset[JobKey]  # queued -> admitted in this pass
    shrink: Mapping[JobKey, int]  # admitted elastic jobs shrunk for priority, to how many (also in grants)
    preempt: frozenset[JobKey]  # whole jobs to stop and requeue (grants 0)
    # queued jobs: "Word: what is missing" (INSUFFICIENT_CAPACITY, QUOTA_EXCEEDED or QUEUED)
    waiting: Mapping[JobKey, str]
    reasons: Mapping[JobKey, str]  # changed grants: "Word: detail" (the words are the constants above)
    # where the plan counts each granted job's workers: node -> bound pods there plus the places it reserved
    # for the rest. A job shrunk or preempted was planned to lose its workers on the nodes missing here.
    placement: Mapping[JobKey, Mapping[str, int]] = field(default_factory=dict)
    # the part of `placement` not bound yet: node -> workers the plan reserved there for each job's unbound
    # (and not yet created) workers; the pod builder steers new workers to these nodes.
    reserved: Mapping[JobKey, Mapping[str, int]] = field(default_factory=dict)
    # jobs shrunk or preempted in this pass, or whose leaving workers' places were taken -> the jobs each
    # made room for
    made_room_for: Mapping[JobKey, frozenset[JobKey]] = field(default_factory=dict)
    # admitted jobs whose minimum lost places that the pass found no room for (it may not shrink or preempt
    # enough): they keep their grant, and their gang timeout requeues them
    unplaced: frozenset[JobKey] = frozenset()


def _name(key: JobKey) -> str:
    return f"{key[0]}/{key[1]}"


@dataclass(eq=False)
class _Job:
    """One job's working state during the pass."""

    demand: Demand
    nodes: list[str]  # the nodes its workers may use, by name
    before: int  # its grant when the pass started (0: queued)
    admitted: bool  # admitted before the pass
    grant: int = 0
    bound: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)
    lost: int = 0  # granted workers that lost their place (capacity went away)
    shrunk_for: JobKey | None = None
    preempted_for: JobKey | None = None
    # The job whose places its workers leaving anyway (beyond its grant: a scale-down's handshake) make.
    freed_for: JobKey | None = None
    made_room: set[JobKey] = field(default_factory=set)  # every job it was shrunk, preempted or freed for
    # Bound workers whose places a trial of this pass took (leaving, or removed by a shrink), per node: the
    # first of them in removal_order are not there to take again.
    released: Counter[str] = field(default_factory=Counter)
    removal_order: tuple[str, ...] = ()  # bound workers' nodes, the first removed first (highest index)
    reserved_before: Mapping[str, int] = field(default_factory=dict)  # Holding.reserved
    first_unbound: bool = False  # Holding.first_unbound
    # Its worker 0, which decide keeps whatever the grant (Demand.host_kept), is bound on a node outside the pass.
    first_elsewhere: bool = False
    room_coming: bool = False  # Holding.room_coming
    terminating: int = 0  # Holding.terminating
    # Its workers bound on nodes outside the pass (NotReady, or no longer of its accelerator): not placed,
    # yet not lost either; they may come back.
    elsewhere: int = 0
    finished: int = 0  # Demand.finished_workers still in its grant: placed on no node
    quota_charged: int = 0  # its workers charged to its quotas now (QuotaState.charged)
    quota_held: bool = False  # queued, its minimum over its quotas' budget at the pass's start
    quota_capped: bool = False  # its growth in this pass was held below its want by its quotas' budget
    # Queue order, worked out once: the demand is frozen, and passes compare it many times.
    order: tuple[int, float, str, str] = field(init=False)
    # Workers in `bound` and `reserved`, and `finished`, kept by the places that change them (_jobs, take,
    # release, _commit).
    placed_count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.order = (-self.demand.priority, self.demand.created, *self.demand.key)

    @property
    def key(self) -> JobKey:
        return self.demand.key

    @property
    def floor(self) -> int:
        """Fewest workers it runs with: its minimum; a non-elastic job's whole gang."""
        return self.demand.min_workers if self.demand.elastic else self.target

    @property
    def target(self) -> int:
        return max(self.demand.min_workers, self.demand.want_workers)

    @property
    def placed(self) -> int:
        return self.placed_count

    def whole_groups(self, workers: int) -> int:
        """`workers` rounded down to whole TP x PP groups: an elastic job runs no part of a group."""
        return workers - workers % self.demand.worker_step

    @property
    def holds(self) -> bool:
        return self.grant > 0 and self.preempted_for is None


@dataclass
class _Cluster:
    free: dict[str, int]
    allocatable: dict[str, int]
    accelerator_of: dict[str, str]
    nodes_of: dict[str, list[str]]  # accelerator -> node names, sorted
    eligible_cache: dict[tuple[str, frozenset[str]], list[str]] = field(default_factory=dict)
    # id of a node list the pass hands to jobs (every node of an accelerator, or those of it a job's placement
    # admits) -> (the list, free devices -> its nodes with that many free, sorted by name). A job finds its
    # best-fit places and counts its slots from these few lists instead of walking thousands of nodes
    # (docs/performance.md, the seventh round); one node tainted or cordoned makes every job's list an
    # eligible one (the tenth round).
    rooms: dict[int, tuple[list[str], dict[int, list[str]]]] = field(default_factory=dict)
    # accelerator -> the room groups of its whole node list; node -> those of the other indexed lists that
    # hold it (few: one per distinct placement that leaves some nodes out). add_free keeps both current.
    accelerator_rooms: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    rooms_holding: dict[str, list[dict[int, list[str]]]] = field(default_factory=dict)
    # accelerator -> the lowest priority of the pass's jobs on it: a job at or below it has nobody to shrink
    # or preempt, found without looking at every job (_make_room; most clusters use one priority).
    lowest_priority: dict[str, int] = field(default_factory=dict)
    # (id of a node list, devices per worker) -> workers it holds with nothing else running (_satisfiable).
    capacity_slots: dict[tuple[int, int], int] = field(default_factory=dict)
    # node -> its free devices with no job of the pass on it: the most shrinking and preempting can free.
    jobless_free: dict[str, int] = field(default_factory=dict)
    # (id of a node list, devices per worker) -> (the list, workers it holds on jobless_free): the list is
    # kept, so no other list takes its id while the pass runs (some are made per job: _Queue.usable).
    jobless_slots: dict[tuple[int, int], tuple[Sequence[str], int]] = field(default_factory=dict)
    # Quota key -> the jobs shrunk or preempted in the pass whose freed quota is QuotaBudget.exempt_extra.
    extra_from: dict[tuple[str, str, str], list[_Job]] = field(default_factory=dict)
    # accelerator -> (priorities, the pass's jobs on it), lowest priority then youngest first (_lower).
    lowest_first: dict[str, tuple[list[int], list[_Job]]] = field(default_factory=dict)
    # id of a node list -> the devices of its largest node.
    largest_of: dict[int, int] = field(default_factory=dict)
    # node -> the jobs whose bound workers this pass took away there (shrunk, preempted, or leaving anyway
    # for someone): a job given places there waits for them, so each of them makes room for it too.
    vacating: dict[str, set[_Job]] = field(default_factory=dict)
    # node -> the devices of those bound workers, which the plan counts free: held until they leave. A job
    # given places on the node is counted on its other free devices first; what it takes beyond them is
    # vacated devices, and it waits for them (`awaiting`).
    vacated: Counter[str] = field(default_factory=Counter)
    # Jobs admitted in this pass on vacated devices: their minimum has no place until those workers leave
    # (the next pass finds them short of it), and they keep their nodes from every job's growth (_grow).
    awaiting: list[_Job] = field(default_factory=list)

    def nodes_for(self, demand: Demand) -> list[str]:
        nodes = self.nodes_of.get(demand.accelerator, [])
        if demand.eligible_nodes is None:
            return nodes
        cache_key = (demand.accelerator, demand.eligible_nodes)
        if cache_key not in self.eligible_cache:
            eligible = self.eligible_cache[cache_key] = [
                name for name in nodes if name in demand.eligible_nodes
            ]
            self.index(eligible)
        return self.eligible_cache[cache_key]

    def index_rooms(self) -> None:
        """Indexes every accelerator's whole node list (once, after `free` and `nodes_of` are filled)."""
        for accelerator, nodes in self.nodes_of.items():
            self.accelerator_rooms[accelerator] = self._grouped(nodes)

    def index(self, nodes: list[str]) -> None:
        """Indexes a list of some nodes of one accelerator (sorted by name, as every list of the pass is)."""
        groups = self._grouped(nodes)
        for node in nodes:
            self.rooms_holding.setdefault(node, []).append(groups)

    def _grouped(self, nodes: list[str]) -> dict[int, list[str]]:
        """`nodes` grouped by their free devices now, each group sorted by name."""
        groups: dict[int, list[str]] = {}
        for node in nodes:
            groups.setdefault(self.free[node], []).append(node)
        self.rooms[id(nodes)] = (nodes, groups)
        return groups

    def add_free(self, node: str, devices: int) -> None:
        """Every change of a node's free devices comes here, so that the room groups follow it."""
        before = self.free[node]
        self.free[node] = before + devices
        if devices:
            _move(self.accelerator_rooms[self.accelerator_of[node]], node, before, before + devices)
            for groups in self.rooms_holding.get(node, ()):
                _move(groups, node, before, before + devices)

    def rooms_of(self, nodes: Sequence[str], per_worker: int) -> list[tuple[int, list[str]]] | None:
        """(free devices, nodes) with room for a worker, fewest free first, when `nodes` is a list the pass
        indexed; None for any other list (its nodes are walked)."""
        indexed = self.rooms.get(id(nodes))
        if indexed is None or indexed[0] is not nodes:
            return None
        groups = indexed[1]
        return [(free, groups[free]) for free in sorted(groups) if free >= per_worker]

    def slots(self, nodes: Sequence[str], per_worker: int) -> int:
        """Workers of `per_worker` devices that fit on `nodes` now."""
        rooms = self.rooms_of(nodes, per_worker)
        if rooms is None:
            return _slots(self.free, nodes, per_worker)
        return _room_slots(rooms, per_worker)

    def hosts(self, nodes: Sequence[str], per_worker: int) -> int:
        """Nodes of `nodes` with room for one worker of `per_worker` devices now."""
        rooms = self.rooms_of(nodes, per_worker)
        if rooms is None:
            return sum(1 for node in nodes if self.free[node] >= per_worker)
        return sum(len(names) for _, names in rooms)

    def slots_when_empty(self, nodes: list[str], per_worker: int) -> int:
        """Workers of `per_worker` devices `nodes` would hold if no pod held any device (per list, once)."""
        cache_key = (id(nodes), per_worker)
        if cache_key not in self.capacity_slots:
            self.capacity_slots[cache_key] = _slots(self.allocatable, nodes, per_worker)
        return self.capacity_slots[cache_key]

    def slots_without_jobs(self, nodes: Sequence[str], per_worker: int) -> int:
        """Workers of `per_worker` devices `nodes` would hold with every job of the pass gone, other pods
        staying (per list, once): no trial of _make_room gets more."""
        cache_key = (id(nodes), per_worker)
        cached = self.jobless_slots.get(cache_key)
        if cached is None:
            cached = self.jobless_slots[cache_key] = (nodes, _slots(self.jobless_free, nodes, per_worker))
        return cached[1]

    def largest(self, nodes: list[str]) -> int:
        """The devices of the largest node of `nodes` (per list, once)."""
        if id(nodes) not in self.largest_of:
            self.largest_of[id(nodes)] = max(self.allocatable[node] for node in nodes)
        return self.largest_of[id(nodes)]

    def take(self, job: _Job, spots: Mapping[str, int]) -> None:
        for node, workers in spots.items():
            for leaving in self.vacating.get(node, ()):
                if leaving is not job:
                    leaving.made_room.add(job.key)
            self.add_free(node, -workers * job.demand.per_worker)
            job.reserved[node] = job.reserved.get(node, 0) + workers
            job.placed_count += workers

    def evict(self, job: _Job) -> None:
        """Every place of a preempted job goes back; its bound workers leave after their checkpoint."""
        for node, workers in job.bound.items():
            self.vacating.setdefault(node, set()).add(job)
            self.vacated[node] += workers * job.demand.per_worker
        for held in (job.reserved, job.bound):
            for node, workers in held.items():
                self.add_free(node, workers * job.demand.per_worker)
            held.clear()

    def release(self, job: _Job, node: str, from_reserved: bool) -> None:
        held = job.reserved if from_reserved else job.bound
        if not from_reserved:  # a bound worker: it leaves, after its checkpoint
            self.vacating.setdefault(node, set()).add(job)
            self.vacated[node] += job.demand.per_worker
        held[node] -= 1
        job.placed_count -= 1
        if not held[node]:
            del held[node]
        self.add_free(node, job.demand.per_worker)


def _move(groups: dict[int, list[str]], node: str, before: int, after: int) -> None:
    """A node from the room group of `before` free devices to that of `after`."""
    bucket = groups[before]
    del bucket[bisect_left(bucket, node)]
    if not bucket:
        del groups[before]
    insort(groups.setdefault(after, []), node)


def _cluster(nodes: Iterable[NodeCapacity], held: Mapping[str, int]) -> _Cluster:
    cluster = _Cluster({}, {}, {}, {})
    for node in sorted(nodes, key=lambda node: node.name):
        if node.accelerator is None:
            continue
        cluster.free[node.name] = node.allocatable - node.used_by_others - held.get(node.name, 0)
        cluster.allocatable[node.name] = node.allocatable
        cluster.accelerator_of[node.name] = node.accelerator
    for name, accelerator in cluster.accelerator_of.items():
        cluster.nodes_of.setdefault(accelerator, []).append(name)
    cluster.jobless_free = dict(cluster.free)
    cluster.index_rooms()
    return cluster


def _slots(free: Mapping[str, int], nodes: Iterable[str], per_worker: int) -> int:
    return sum(free[node] // per_worker for node in nodes if free[node] >= per_worker)


def _room_slots(rooms: Iterable[tuple[int, list[str]]], per_worker: int) -> int:
    """Workers of `per_worker` devices that fit in groups of (free devices, nodes)."""
    return sum(free // per_worker * len(names) for free, names in rooms)


def _fits(cluster: _Cluster, nodes: Sequence[str], per_worker: int, count: int) -> bool:
    """Whether `count` workers of `per_worker` devices each find a node (early exit)."""
    rooms = cluster.rooms_of(nodes, per_worker)
    if rooms is not None:
        return _room_slots(rooms, per_worker) >= count
    free = cluster.free
    for node in nodes:
        if free[node] >= per_worker:
            count -= free[node] // per_worker
            if count <= 0:
                return True
    return count <= 0


def _spots(cluster: _Cluster, nodes: Sequence[str], per_worker: int, count: int) -> dict[str, int]:
    """Up to `count` worker places, best fit: the fullest node that still has room first (by name among
    equals)."""
    if count <= 0:
        return {}
    rooms = cluster.rooms_of(nodes, per_worker)
    if rooms is None:
        rooms = _rooms_by_walk(cluster.free, nodes, per_worker)
    spots: dict[str, int] = {}
    for free, names in rooms:
        for node in names:
            workers = min(free // per_worker, count)
            spots[node] = workers
            count -= workers
            if not count:
                return spots
    return spots


def _rooms_by_walk(
    free: Mapping[str, int], nodes: Iterable[str], per_worker: int
) -> list[tuple[int, list[str]]]:
    """_Cluster.rooms_of for any node list: its nodes with room, grouped by free devices, fewest first."""
    rooms: dict[int, list[str]] = {}
    for node in nodes:
        if free[node] >= per_worker:
            rooms.setdefault(free[node], []).append(node)
    return [(devices, sorted(rooms[devices])) for devices in sorted(rooms)]


def _jobs(queued: Sequence[Demand], admitted: Sequence[Holding], cluster: _Cluster) -> list[_Job]:
    """Working state of every job, in queue order; admitted jobs' bound workers taken off the nodes."""
    jobs: dict[JobKey, _Job] = {}
    for holding in admitted:
        demand = holding.demand
        job = _Job(demand, cluster.nodes_for(demand), max(holding.granted, 0), admitted=True)
        job.removal_order = tuple(reversed(holding.nodes_by_index))
        job.reserved_before = holding.reserved
        job.first_unbound = holding.first_unbound
        job.first_elsewhere = (
            demand.host_kept
            and not holding.first_unbound  # then worker 0 is bound, and first in nodes_by_index (keep_order)
            and bool(holding.nodes_by_index)
            and cluster.accelerator_of.get(holding.nodes_by_index[0]) != demand.accelerator
        )
        job.room_coming = holding.room_coming
        job.terminating = holding.terminating
        for node, workers in sorted(holding.placed.items()):
            if workers > 0 and cluster.accelerator_of.get(node) == demand.accelerator:
                job.bound[node] = workers
                job.placed_count += workers
                cluster.add_free(node, -workers * demand.per_worker)
            elif workers > 0:
                job.elsewhere += workers
        # Finished workers are slots of its grant (decide's succeededWorkers), never more than it has left.
        job.finished = min(demand.finished_workers, max(0, job.before - job.placed_count))
        job.placed_count += job.finished
        jobs[demand.key] = job
    for demand in queued:
        if demand.key not in jobs:  # a job listed as admitted too is admitted
            jobs[demand.key] = _Job(demand, cluster.nodes_for(demand), 0, admitted=False)
    lowest = cluster.lowest_priority
    for job in jobs.values():
        accelerator, priority = job.demand.accelerator, job.demand.priority
        if priority < lowest.get(accelerator, priority + 1):
            lowest[accelerator] = priority
    return sorted(jobs.values(), key=lambda job: job.order)


def _reserve(cluster: _Cluster, job: _Job, upto: int, nodes: Sequence[str] | None = None) -> None:
    """Places up to `upto` workers: where the last pass reserved them, then anywhere on `nodes` (default:
    all of the job's)."""
    # Most admitted jobs have every worker placed already (bound): nothing to look for.
    missing = upto - job.placed
    if missing <= 0:
        return
    cluster.take(job, _spots_as_before(cluster, job, missing))
    missing = upto - job.placed
    if missing > 0:
        nodes = job.nodes if nodes is None else nodes
        cluster.take(job, _spots(cluster, nodes, job.demand.per_worker, missing))


def _spots_as_before(cluster: _Cluster, job: _Job, count: int) -> dict[str, int]:
    """Up to `count` worker places on the nodes the last pass reserved for the job, as far as they have room:
    best fit, the order _spots placed them in (its minimum first). By name, a minimum re-placed where the job
    had grown could leave its first place to another job's minimum, and the job lost a worker it was given."""
    spots: dict[str, int] = {}
    per_worker, eligible, free = job.demand.per_worker, job.demand.eligible_nodes, cluster.free
    for node, workers in sorted(
        job.reserved_before.items(), key=lambda item: (free.get(item[0], 0), item[0])
    ):
        if count <= 0:
            break
        if cluster.accelerator_of.get(node) != job.demand.accelerator or (
            eligible is not None and node not in eligible
        ):
            continue
        take = min(workers - job.reserved.get(node, 0), free[node] // per_worker, count)
        if take > 0:
            spots[node] = take
            count -= take
    return spots


def _reserve_admitted(cluster: _Cluster, jobs: Sequence[_Job], queue: _Queue) -> None:
    """Admitted jobs keep their grant (lowered to a dropped want): minimums are placed first, then the rest.

    Workers above the minimum that find no place any more are released (the grant drops to what is
    placed); a minimum that finds no place stays granted (the gang timeout releases it). A worker 0 that
    decide keeps without a place counts as placed (_kept_unplaced). A minimum raised
    above a running group's grant (replicas of a fixed job raised) is granted only once it fits whole: the
    group keeps running at its grant meanwhile (decisions/running.py holds it), where a new world granted
    without room would stop it for a gang that cannot start.

    A worker above the minimum that has lost its place finds a new one only off the nodes of the jobs ahead
    of it whose minimum has no place (as _Queue.usable keeps them): those nodes are theirs once freed (the
    workers of a job preempted for them still leave), and a place there was growth onto a node they wait for.
    A minimum that has lost its places finds new ones off the nodes of the heads of line ahead of it, as
    when it was admitted (_off_heads), and off those of the admitted jobs ahead of it whose minimum has no
    place either (_off_short).
    """
    held = [job for job in jobs if job.admitted]
    queued = [job for job in jobs if not job.admitted]
    minimum_nodes: dict[_Job, list[str]] = {}  # where a minimum that lost its places may find new ones
    short_minimums: list[_Job] = []  # the jobs so far whose minimum waits for room coming (_waits_for_room)
    for job in held:
        job.grant = max(job.floor, job.whole_groups(min(job.before, job.target)))
        _drop_finished_beyond(job)
        cluster.take(job, _spots_as_before(cluster, job, job.floor - job.placed))
        if job.placed < job.floor:
            minimum_nodes[job] = _off_short(
                job, short_minimums, queue, _off_heads(cluster, queued, job, queue)
            )
            _reserve(cluster, job, job.floor, minimum_nodes[job])
        if job.placed < job.floor and _raised_above_running(job):
            job.grant = job.whole_groups(job.before)
            _release_reserved_beyond(cluster, job)
        if _waits_for_room(job):
            short_minimums.append(job)
    short: list[_Job] = []  # the jobs so far whose minimum has no place
    for job in held:
        nodes = minimum_nodes.get(job) if job.placed < job.floor else None
        _reserve(cluster, job, job.grant, _growth_nodes(job, short, queue) if nodes is None else nodes)
        if job.holds and job.placed < min(job.floor, job.grant):
            short.append(job)
        if job.placed < job.grant and job.grant > job.floor:
            kept = max(job.whole_groups(job.placed + _kept_unplaced(job)), job.floor)
            job.lost = job.grant - kept
            job.grant = kept
            _release_reserved_beyond(cluster, job)


def _kept_unplaced(job: _Job) -> int:
    """A worker 0 with no place in the pass that decide keeps whatever the grant (Demand.host_kept): bound on a
    node outside it (NotReady), or unbound while a worker of the job terminates within its grace (decide
    removed it for worker 0's place, which its going frees). Counted as placed, a lower grant removed one
    running worker a pass down to the minimum."""
    return int(job.first_elsewhere or (job.demand.host_kept and job.first_unbound and job.terminating > 0))


def _off_heads(cluster: _Cluster, queued: Sequence[_Job], job: _Job, queue: _Queue) -> list[str]:
    """The job's nodes for a minimum that lost its places: less those of the `queued` jobs ahead of it that
    do not fit and keep their nodes (_Queue.blocked finds them later in the pass). Admitted, the job was kept
    off those nodes and made room elsewhere (a shrink, whose workers still save); re-placed on a head's free
    devices instead, it took the node the head waits for, and the job shrunk for it took its workers back."""
    accelerator = job.demand.accelerator
    heads = []
    for other in queued:
        if other.order > job.order:
            break
        if other.demand.accelerator != accelerator or other.quota_held:  # held by its quota: no head
            continue
        if _fits(cluster, other.nodes, other.demand.per_worker, other.floor):
            continue
        if queue.keeps_nodes(other, _satisfiable(cluster, other)):
            heads.append((other, queue.head_reason))
            if queue.policy == "StrictFIFO":
                break  # the first that does not fit is StrictFIFO's only head
    return _unkept(job.nodes, heads, queue)[0] if heads else job.nodes


def _waits_for_room(job: _Job) -> bool:
    """An admitted job whose minimum has no place yet and whose room is on its way (Holding.room_coming:
    workers leaving for it): the nodes it may use are its once freed. One whose room is not coming keeps
    none: it may never fit there (a device another workload holds for good)."""
    return job.holds and job.room_coming and job.placed < min(job.floor, job.grant)


def _growth_nodes(job: _Job, short: Sequence[_Job], queue: _Queue) -> list[str]:
    """The job's nodes for its workers above its minimum: less those of the `short` jobs (ahead of it) that
    hold one of their workers. A minimum still missing keeps the nodes of the first loop."""
    if job.placed >= job.grant or job.placed < job.floor:
        return job.nodes
    return _off_short(job, short, queue, job.nodes)


def _off_short(job: _Job, short: Sequence[_Job], queue: _Queue, nodes: list[str]) -> list[str]:
    """`nodes` less those the `short` jobs (admitted, ahead of `job`, their minimum without a place) may
    use: those are theirs once freed. A minimum that lost its places and found new ones on them took the
    last free device of a node a higher-priority job waits for; that job then made room again, and two
    lower-priority jobs preempted each other in turn (a closed-loop simulation)."""
    accelerator = job.demand.accelerator
    ahead = [(other, _short_reason) for other in short if other.demand.accelerator == accelerator]
    return _unkept(nodes, ahead, queue)[0] if ahead else nodes


def _drop_finished_beyond(job: _Job) -> None:
    """A grant lowered below its workers drops finished ones first, as decide does (workers.worker_slots
    keeps them last)."""
    beyond = job.finished - max(0, job.grant - sum(job.bound.values()))
    if beyond > 0:
        job.finished -= beyond
        job.placed_count -= beyond


def _raised_above_running(job: _Job) -> bool:
    """Whether the job's minimum rose above the grant its workers run on: some of them are bound (one of
    them failed or lost meanwhile does not end the hold; with none left there is nothing to keep)."""
    running = job.whole_groups(job.before)
    return 0 < running < job.floor and sum(job.bound.values()) > 0


def _release_reserved_beyond(cluster: _Cluster, job: _Job) -> None:
    """Reserved places beyond the grant (a part group the grant was rounded down from) go back."""
    for node in sorted(job.reserved, reverse=True):
        while job.placed > job.grant and job.reserved.get(node):
            cluster.release(job, node, from_reserved=True)


@dataclass
class _Queue:
    """Admission state: who keeps which nodes from whom.

    A protector keeps the nodes it may use from every job behind it in the queue: the first job that did
    not fit (StrictFIFO; BestEffortFIFO once it waited too long), and an admitted job whose minimum has no
    place yet (its devices are still being freed, e.g. by a preemption). Jobs behind it may still use the
    nodes of its accelerator it cannot use (another pool, a taint only they tolerate)."""

    policy: AdmissionPolicy
    now: float
    head_wait_limit: float
    allocatable: Mapping[str, int] = field(default_factory=dict)  # _Cluster.allocatable
    strict_head: _Job | None = None
    # accelerator -> the admitted jobs whose minimum has no place yet, in queue order
    short: dict[str, list[_Job]] = field(default_factory=dict)
    # accelerator -> the queued jobs that did not fit and keep the devices they need, in queue order
    heads: dict[str, list[_Job]] = field(default_factory=dict)
    waiting: dict[JobKey, str] = field(default_factory=dict)
    # The queued jobs that did not fit, in queue order (not those waiting behind StrictFIFO's head).
    did_not_fit: list[_Job] = field(default_factory=list)
    node_sets: dict[int, frozenset[str]] = field(default_factory=dict)  # id of a job's node list -> its set
    # Set by _grow: node -> the devices of every job's workers leaving (_leaving_devices), and accelerator ->
    # the lowest priority of the jobs holding devices of it.
    leaving: Mapping[str, int] = field(default_factory=dict)
    lowest_holding: Mapping[str, int] = field(default_factory=dict)
    lowest_shrinkable: Mapping[str, int] = field(
        default_factory=dict
    )  # the same of elastic jobs above their floor
    # (id of a node list, devices per worker) -> its slots on the free devices and the leaving places
    slots_with_leaving: dict[tuple[int, int], int] = field(default_factory=dict)
    # (id of a node list, devices per worker) -> its nodes big enough for one such worker (keepable)
    keepable_sets: dict[tuple[int, int], frozenset[str]] = field(default_factory=dict)
    # (the job's node list, the protectors ahead of it) -> usable(): jobs share node lists (_Cluster.nodes_for)
    usable_cache: dict[tuple[int, tuple[int, ...]], tuple[list[str], str | None]] = field(
        default_factory=dict
    )

    def anyone_waits_for(self, job: _Job, free: Mapping[str, int]) -> bool:
        """Whether a job that did not fit in this pass, or an admitted one short of its minimum, may use a
        node where this job has workers bound (those beyond its grant are the ones leaving). One that did
        not fit and can take from nobody (no job of a lower priority holds its accelerator) counts only
        where the places of every job's leaving workers (`leaving`), with the devices `free`, would give it
        its minimum: one they could not make fit kept a scale-down going after `replicas` was raised back
        (a worker deleted and another created, two restarts of the training for nothing, and "no capacity
        for more" with devices free). One short of its minimum waits for room made for it, and one that may
        shrink or preempt others may make the rest of its room: both count as before."""
        accelerator = job.demand.accelerator
        for other in (*self.did_not_fit, *self.short.get(accelerator, ())):
            if other is job or other.demand.accelerator != accelerator:
                continue
            usable = self.node_set(other.nodes)
            per_worker = other.demand.per_worker
            if not any(node in usable and self.allocatable.get(node, 0) >= per_worker for node in job.bound):
                continue
            if other.admitted or self._may_take(other) or self._fits_with_leaving(other, free):
                return True
        return False

    def _may_take(self, other: _Job) -> bool:
        """Whether `other` may make room of its own: a lower-priority elastic job above its minimum holds its
        accelerator (a shrink), or, with preemption LowerPriority, any lower-priority job."""
        accelerator, priority = other.demand.accelerator, other.demand.priority
        if priority > self.lowest_shrinkable.get(accelerator, priority):
            return True
        return other.demand.preemption == "LowerPriority" and priority > self.lowest_holding.get(
            accelerator, priority
        )

    def _fits_with_leaving(self, other: _Job, free: Mapping[str, int]) -> bool:
        """Whether `other`'s minimum fits on the free devices with the leaving workers' places. Their slots
        are counted once per pass and node list: growth only takes devices, so a count from before it says
        yes more often."""
        per_worker = other.demand.per_worker
        cache_key = (id(other.nodes), per_worker)
        slots = self.slots_with_leaving.get(cache_key)
        if slots is None:
            leaving = self.leaving
            slots = sum(max(free[node] + leaving.get(node, 0), 0) // per_worker for node in other.nodes)
            self.slots_with_leaving[cache_key] = slots
        return slots >= other.floor - other.placed

    def node_set(self, nodes: list[str]) -> frozenset[str]:
        """A node list of the pass as a set (per list, once)."""
        found = self.node_sets.get(id(nodes))
        if found is None:
            found = self.node_sets[id(nodes)] = frozenset(nodes)
        return found

    def keepable(self, job: _Job) -> frozenset[str]:
        """The job's nodes big enough for one of its workers: those it keeps as a protector. Per node list and
        devices per worker, once: every head of a long queue shares them (_Cluster.nodes_for)."""
        per_worker = job.demand.per_worker
        cache_key = (id(job.nodes), per_worker)
        found = self.keepable_sets.get(cache_key)
        if found is None:
            allocatable = self.allocatable
            found = frozenset(node for node in job.nodes if allocatable.get(node, 0) >= per_worker)
            self.keepable_sets[cache_key] = found
        return found

    def note_short(self, jobs: Sequence[_Job]) -> None:
        for job in jobs:
            # One held below a raised minimum (_reserve_admitted) runs on its grant: not short.
            if job.admitted and job.holds and job.placed < min(job.floor, job.grant):
                self.short.setdefault(job.demand.accelerator, []).append(job)

    def usable(self, job: _Job, *, growing: bool = False) -> tuple[list[str], str | None]:
        """The job's nodes that no protector ahead of it keeps, and why any were left out (None: none was).
        `growing` (an elastic job raised above what it has): a protector of its priority or higher keeps
        its nodes from it wherever it stands in the queue, or an older job that keeps growing into every
        node freed would starve a head of its priority for good.

        A short job's reason comes before a head's, then queue order."""
        accelerator = job.demand.accelerator
        protectors = [
            (other, reason)
            for group, reason in ((self.short, _short_reason), (self.heads, self.head_reason))
            for other in group.get(accelerator, ())
            if other is not job
            and (other.order < job.order or (growing and other.demand.priority >= job.demand.priority))
        ]
        if not protectors:
            return job.nodes, None
        cache_key = (id(job.nodes), tuple(id(other) for other, _ in protectors))
        if cache_key not in self.usable_cache:
            self.usable_cache[cache_key] = _unkept(job.nodes, protectors, self)
        return self.usable_cache[cache_key]

    def head_reason(self, head: _Job) -> str:
        waited = int(self.now - head.demand.waiting_since)
        return f"waiting behind {_name(head.key)}, which has waited {waited}s (head of line)"

    def blocked(self, job: _Job, message: str, satisfiable: bool) -> None:
        """A job that did not fit. It holds back the jobs behind it: under StrictFIFO always (strict, also
        behind a job bigger than the cluster, until nodes are added); under BestEffortFIFO once it waited too
        long, unless its minimum exceeds the whole cluster: waiting for it would stop the accelerator for
        good, and it gets in when nodes are added anyway."""
        self.waiting[job.key] = f"{INSUFFICIENT_CAPACITY}: {message}"
        if not job.demand.makes_room:
            # It takes no room (refused, or unplaceable for another reason than devices): it waits for devices
            # free anyway, holding back no job behind it and keeping no place for itself.
            return
        if satisfiable:  # one that cannot fit even on an empty cluster waits for nothing freed here
            self.did_not_fit.append(job)
        if self.policy == "StrictFIFO":
            self.strict_head = self.strict_head or job  # every later queued job waits: _admit_queue
        if self.keeps_nodes(job, satisfiable):
            self.heads.setdefault(job.demand.accelerator, []).append(job)

    def keeps_nodes(self, job: _Job, satisfiable: bool) -> bool:
        """Whether a queued job that does not fit keeps the nodes it may use from the jobs behind it (blocked)."""
        if self.policy == "StrictFIFO":
            return True
        return satisfiable and self.now - job.demand.waiting_since > self.head_wait_limit


def _unkept(
    nodes: list[str], protectors: Sequence[tuple[_Job, Callable[[_Job], str]]], queue: _Queue
) -> tuple[list[str], str | None]:
    """Queue.usable without the cache: `nodes` less those any protector may use, and the first such reason.
    A node too small for one of a protector's workers (4 devices for workers of 8, or one device failed)
    is not its to keep (_Queue.keepable)."""
    kept: set[str] = set()
    why = None
    mine = queue.node_set(nodes)
    for other, reason in protectors:
        overlap = mine.intersection(queue.keepable(other))
        if overlap:
            kept |= overlap
            why = why or reason(other)
            if len(kept) == len(mine):
                break  # later protectors change neither the nodes (none left) nor the reason (the first's)
    return ([node for node in nodes if node not in kept] if kept else nodes), why


def _short_reason(short: _Job) -> str:
    return f"waiting for {_name(short.key)}, admitted, whose workers have no place yet"


@dataclass
class _Trial:
    """Devices that shrinking and preempting lower-priority jobs would free for one queued job."""

    job: _Job
    free: dict[str, int]  # of the nodes it may use
    slots: int
    need: int  # the places it lacks: its minimum (queued), the part of it that lost its places (admitted)
    removals: list[tuple[_Job, str, bool]] = field(default_factory=list)  # (job, node, from reserved)
    leaving: list[tuple[_Job, str]] = field(default_factory=list)  # (job, node) of workers going anyway
    victims: dict[_Job, dict[str, int]] = field(default_factory=dict)  # victim -> node -> devices freed
    # Quota keys the job's minimum is short of (an exempt job: _quota_short) -> the amount: the workers taken
    # from jobs charged under those keys must free it too, or the API server refuses the job's creates.
    quota_short: Mapping[tuple[str, str, str], Decimal] = field(default_factory=dict)
    # What the workers taken so far free of those keys, kept as they are taken and given back (count).
    freed: dict[tuple[str, str, str], Decimal] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.slots >= self.need and self.quota_freed

    @property
    def quota_freed(self) -> bool:
        return all(self.freed.get(pool, 0) >= short for pool, short in self.quota_short.items())

    def needs_from(self, other: _Job) -> bool:
        """Whether taking `other`'s workers helps: the job lacks devices, or quota that `other` is charged."""
        if self.slots < self.need:
            return True
        return not self.quota_freed and _frees_quota(self.quota_short, other)

    def count(self, other: _Job, workers: int) -> None:
        """`workers` of `other` taken (negative: given back): what they free of the keys the job is short of
        (a finished worker frees none; its callers do not count it)."""
        for claim in other.demand.quota_claims if self.quota_short else ():
            if claim.pool in self.quota_short:
                self.freed[claim.pool] = self.freed.get(claim.pool, Decimal(0)) + workers * claim.per_worker

    def take(self, other: _Job, node: str, from_reserved: bool) -> None:
        self.removals.append((other, node, from_reserved))
        if node != _FINISHED:
            self.count(other, 1)

    def change(self, node: str, devices: int) -> None:
        if node in self.free:
            per_worker = self.job.demand.per_worker
            old = self.free[node]
            self.free[node] = old + devices
            self.slots += max(old + devices, 0) // per_worker - max(old, 0) // per_worker


def _shrink(trial: _Trial, other: _Job) -> None:
    """Take workers of `other` off, one at a time, until the job fits or `other` is at its minimum, and on
    to whole TP x PP groups: reserved places first (no pod to remove), each on the trial's node with the
    most free devices; then bound workers, in the order decide removes them (highest index first) when
    that order is known."""
    leaving = _leaving(other)
    room = _take_finished(trial, other, other.grant - other.floor)
    takeable = _takeable_reserved(trial, other)
    reserved = {n: c for n, c in takeable.items() if n in trial.free}
    room = _take_by_room(trial, other, reserved, room, from_reserved=True)
    room = _complete_group_from_reserved(trial, other, takeable, room)
    if other.removal_order:
        room = _take_reserved_elsewhere(trial, other, takeable, room)
        _take_in_order(trial, other, room, leaving)
    else:
        bound = {n: c for n, c in other.bound.items() if n in trial.free}
        _take_by_room(trial, other, bound, room, from_reserved=False)


def _takeable_reserved(trial: _Trial, other: _Job) -> dict[str, int]:
    """`other`'s reserved places a shrink may take: all but worker 0's while it is unbound (decide never
    removes worker 0, so counting its place as freed cost a running worker instead). Which place is its
    is not known: the one kept is where the trial gains least."""
    takeable = {node: count for node, count in other.reserved.items() if count > 0}
    if other.first_unbound and takeable:
        kept = min(takeable, key=lambda node: (node in trial.free, trial.free.get(node, 0), node))
        takeable[kept] -= 1
        if not takeable[kept]:
            del takeable[kept]
    return takeable


def _take_finished(trial: _Trial, other: _Job, room: int) -> int:
    """Before anything else, `other`'s finished workers still in its grant: they free nothing, but decide
    drops a lowered grant's finished workers first (workers.worker_slots keeps them last), so a worker
    counted as removed while they stayed would stay too."""
    taken = sum(1 for job, node, _ in trial.removals if job is other and node == _FINISHED)
    left = min(other.finished, other.grant - len(other.removal_order)) - taken
    while left > 0 and room > 0 and _wants_more(trial, other, room):
        trial.take(other, _FINISHED, False)
        left, room = left - 1, room - 1
    return room


def _take_reserved_elsewhere(trial: _Trial, other: _Job, reserved: Mapping[str, int], room: int) -> int:
    """Before any of `other`'s bound workers, its reserved places off the trial's nodes: they free nothing
    for the trial, but decide drops a lowered grant's unscheduled workers before its bound ones
    (workers.keep_order), so a bound worker counted as removed while they stayed would stay too."""
    taken = Counter(node for job, node, from_reserved in trial.removals if job is other and from_reserved)
    for node in sorted(reserved):
        left = reserved[node] - taken[node]
        while left > 0 and room > 0 and _wants_more(trial, other, room):
            trial.take(other, node, True)
            left, room = left - 1, room - 1
    return room


def _leaving(other: _Job) -> int:
    """How many of `other`'s removal order decide removes whatever the pass does: its bound workers beyond
    its grant (a scale-down whose handshake is still open; those a trial of this pass took included)."""
    return max(0, len(other.removal_order) - other.grant) if other.removal_order else 0


def _take_leaving(trial: _Trial, other: _Job) -> None:
    """Places of `other`'s workers leaving anyway (_leaving): they come first, and cost `other` nothing.
    Taken as a shrink instead, they lowered its grant again, and decide removed one more worker, whose
    place nobody had counted. Those an earlier trial of the pass took are not taken again."""
    skip = Counter(other.released)
    for node in other.removal_order[: _leaving(other)]:
        if not trial.needs_from(other):
            return
        if skip[node] > 0:
            skip[node] -= 1
        elif node in trial.free:
            trial.change(node, other.demand.per_worker)
            trial.leaving.append((other, node))
            trial.count(other, 1)


def _complete_group_from_reserved(trial: _Trial, other: _Job, reserved: Mapping[str, int], room: int) -> int:
    """A group taken in part once the job fits is completed with `other`'s reserved places on any node
    (no pod to remove) before any of its running workers."""
    if not trial.fits:
        return room
    taken = Counter(node for job, node, from_reserved in trial.removals if job is other and from_reserved)
    for node in sorted(reserved):
        left = reserved[node] - taken[node]
        while left > 0 and room > 0 and room % other.demand.worker_step:
            trial.change(node, other.demand.per_worker)
            trial.take(other, node, True)
            left, room = left - 1, room - 1
    return room


def _wants_more(trial: _Trial, other: _Job, room: int) -> bool:
    """Whether to take another worker of `other`: the job still needs what `other` frees, or a group is
    taken in part."""
    return trial.needs_from(other) or room % other.demand.worker_step != 0


def _take_by_room(trial: _Trial, other: _Job, pool: dict[str, int], room: int, from_reserved: bool) -> int:
    while room > 0 and pool and _wants_more(trial, other, room):
        node = max(pool, key=lambda name: (trial.free[name], name))
        pool[node] -= 1
        if not pool[node]:
            del pool[node]
        trial.change(node, other.demand.per_worker)
        trial.take(other, node, from_reserved)
        room -= 1
    return room


def _take_in_order(trial: _Trial, other: _Job, room: int, leaving: int) -> None:
    """Bound workers in the order decide removes them, after the `leaving` ones it removes anyway; one on a
    node the job cannot use still goes (decide removes it all the same), and frees nothing for the trial."""
    for node in other.removal_order[leaving : leaving + max(room, 0)]:
        if not _wants_more(trial, other, room):
            return
        room -= 1
        trial.change(node, other.demand.per_worker)
        trial.take(other, node, False)


def _preempt(trial: _Trial, victim: _Job) -> None:
    """Free every worker of `victim` (those an earlier shrink took are freed already), if any is on the
    trial's nodes: a job elsewhere would be stopped for nothing."""
    remaining = Counter(victim.bound) + Counter(victim.reserved)
    remaining.subtract(node for other, node, _ in trial.removals if other is victim)
    remaining.subtract(node for other, node in trial.leaving if other is victim)
    freed = {node: workers * victim.demand.per_worker for node, workers in remaining.items() if workers > 0}
    if not any(node in trial.free for node in freed) and not _frees_quota(trial.quota_short, victim):
        return
    for node, devices in sorted(freed.items()):
        trial.change(node, devices)
    trial.victims[victim] = freed
    trial.count(victim, _workers_of(victim, freed))


def _workers_of(victim: _Job, freed: Mapping[str, int]) -> int:
    return sum(freed.values()) // victim.demand.per_worker


def _trim(trial: _Trial) -> None:
    """Give back what the job does not need once victims were preempted: victims first (the latest, of the
    highest priority among them, first), then shrink removals (latest first)."""
    victims = list(trial.victims.items())
    for victim, freed in reversed(victims):
        for node, devices in freed.items():
            trial.change(node, -devices)
        trial.count(victim, -_workers_of(victim, freed))
        del trial.victims[victim]
        if not trial.fits:
            for node, devices in freed.items():
                trial.change(node, devices)
            trial.count(victim, _workers_of(victim, freed))
            trial.victims[victim] = freed
    trial.victims = {victim: freed for victim, freed in victims if victim in trial.victims}  # their order
    _give_back_removals(trial)
    _give_back_leaving(trial)


def _give_back_removals(trial: _Trial) -> None:
    """Shrink removals the job fits without go back, latest first, a whole TP x PP group at a time."""
    needed: set[_Job] = set()  # jobs removed in index order: only their lowest removals can go back
    groups = _whole_group_removals(trial.removals)
    starts = list(accumulate((len(group) for group in groups), initial=0))[:-1]
    for start, group in reversed(list(zip(starts, groups, strict=True))):
        other = group[0][0]
        if other in trial.victims or other in needed:
            continue
        freeing = sum(1 for _, node, _ in group if node != _FINISHED)
        for _, node, _ in group:
            trial.change(node, -other.demand.per_worker)
        trial.count(other, -freeing)
        del trial.removals[start : start + len(group)]
        if not trial.fits:
            for _, node, _ in group:
                trial.change(node, other.demand.per_worker)
            trial.count(other, freeing)
            trial.removals[start:start] = group
            if other.removal_order:
                needed.add(other)


def _give_back_leaving(trial: _Trial) -> None:
    """Leaving places the job fits without go back (a victim preempted later freed enough), latest first:
    their job then keeps them for its own growth, and no one's clock waits for them."""
    for index in reversed(range(len(trial.leaving))):
        other, node = trial.leaving.pop(index)
        trial.change(node, -other.demand.per_worker)
        trial.count(other, -1)
        if not trial.fits:
            trial.change(node, other.demand.per_worker)
            trial.count(other, 1)
            trial.leaving.insert(index, (other, node))


def _whole_group_removals(
    removals: Sequence[tuple[_Job, str, bool]],
) -> list[list[tuple[_Job, str, bool]]]:
    """The removals in the units that may go back: a job's TP x PP groups (one worker when its step is 1).
    A job's removals are consecutive: _shrink takes one job at a time."""
    groups: list[list[tuple[_Job, str, bool]]] = []
    for removal in removals:
        other = removal[0]
        last = groups[-1] if groups else None
        if last is not None and last[0][0] is other and len(last) < other.demand.worker_step:
            last.append(removal)
        else:
            groups.append([removal])
    return groups


def _lower(cluster: _Cluster, jobs: Sequence[_Job], job: _Job) -> list[_Job]:
    """Admitted jobs on the job's accelerator with strictly lower priority: lowest priority, then youngest.
    The pass's jobs are sorted so once per accelerator; each call takes those below the job's priority."""
    accelerator = job.demand.accelerator
    if accelerator not in cluster.lowest_first:
        ranked = sorted(
            (other for other in jobs if other.demand.accelerator == accelerator),
            key=lambda other: (other.demand.priority, -other.demand.created, other.key),
        )
        cluster.lowest_first[accelerator] = ([other.demand.priority for other in ranked], ranked)
    priorities, ranked = cluster.lowest_first[accelerator]
    return [other for other in ranked[: bisect_left(priorities, job.demand.priority)] if other.holds]


def _make_room(  # noqa: PLR0913 - the pass's state, the job, and what it is short of in the quota
    cluster: _Cluster,
    jobs: Sequence[_Job],
    job: _Job,
    nodes: Sequence[str],
    quota_short: Mapping[tuple[str, str, str], Decimal],
    budget: QuotaBudget,
    need: int,
) -> bool:
    """Shrink, then if allowed and still needed preempt, lower-priority jobs so that `need` of the job's
    workers fit on `nodes` and, for `quota_short`, within its quotas (a job is taken only for what the job
    still lacks: devices, or quota it is charged); commits the changes only when it then fits. The quota it
    was short of goes back to `budget`: the job's grant takes it again, and a later job of the pass does not
    make that room a second time."""
    if not _may_make_room(cluster, job, nodes, need):
        return False
    lower = _lower(cluster, jobs, job)
    if not lower:
        return False
    trial = _new_trial(cluster, job, nodes, need, quota_short, lower)
    if trial.fits:
        _give_back_removals(trial)  # a shrink that a later one made unneeded
        _give_back_leaving(trial)
    elif job.demand.preemption == "LowerPriority":
        trial = _preempt_lower(trial, lower, alone=not _others_queued(jobs, job))
    if not trial.fits:
        return False
    _commit(cluster, trial)
    for pool, short in quota_short.items():
        # What it was short of goes back to the budget; the rest only to later exempt jobs (QuotaBudget): the
        # victims' pods stay charged until they are gone, and a job admitted into it meanwhile is refused.
        freed = trial.freed.get(pool, Decimal(0))
        budget.free[pool] += min(short, freed)
        if freed > short:
            budget.exempt_extra[pool] = budget.exempt_extra.get(pool, Decimal(0)) + freed - short
            cluster.extra_from.setdefault(pool, []).extend(_quota_takers(trial, pool))
    return True


def _quota_takers(trial: _Trial, pool: tuple[str, str, str]) -> list[_Job]:
    """The jobs the trial takes workers from that are charged under `pool`."""
    taken = (
        [other for other, _, _ in trial.removals]
        + [other for other, _ in trial.leaving]
        + list(trial.victims)
    )
    return [
        other
        for other in dict.fromkeys(taken)
        if any(claim.pool == pool for claim in other.demand.quota_claims)
    ]


def _may_make_room(cluster: _Cluster, job: _Job, nodes: Sequence[str], need: int) -> bool:
    if not job.demand.makes_room:
        return False
    if job.demand.priority <= cluster.lowest_priority.get(job.demand.accelerator, job.demand.priority):
        return False  # no job on its accelerator has a lower priority
    # Other pods may hold too much: even with every job gone it would not fit.
    return cluster.slots_without_jobs(nodes, job.demand.per_worker) >= need


def _new_trial(  # noqa: PLR0913 - what _make_room was given
    cluster: _Cluster,
    job: _Job,
    nodes: Sequence[str],
    need: int,
    quota_short: Mapping[tuple[str, str, str], Decimal],
    lower: Sequence[_Job],
) -> _Trial:
    """A trial on the nodes' free devices with the lower-priority elastic jobs shrunk for it."""
    free = {node: cluster.free[node] for node in nodes}
    trial = _Trial(job, free, _slots(free, nodes, job.demand.per_worker), need, quota_short=quota_short)
    _shrink_lower(trial, lower)
    return trial


def _preempt_lower(trial: _Trial, lower: Sequence[_Job], alone: bool) -> _Trial:
    """Whole lower-priority jobs preempted in `lower`'s order until the job fits, those then unneeded given
    back; for a job `alone` in the queue of its accelerator, the fewest devices taken (_fewest_taken)."""
    shrunk = _copied(trial) if alone else None
    for victim in lower:
        if trial.needs_from(victim):
            _preempt(trial, victim)
    _trim(trial)
    return _fewest_taken(trial, lower, shrunk) if trial.fits and shrunk is not None else trial


def _others_queued(jobs: Sequence[_Job], job: _Job) -> bool:
    """Whether another job of the job's accelerator waits for places: queued and not admitted in this pass
    (one its quota holds back, or that takes no room, aside), or admitted with its minimum short of places
    (a node lost under several jobs at once). Devices a preemption frees beyond the job's need may be that
    job's, in this pass or the next."""
    accelerator = job.demand.accelerator
    for other in jobs:
        if other is job or other.demand.accelerator != accelerator:
            continue
        if not other.admitted and other.grant == 0 and other.demand.makes_room and not other.quota_held:
            return True
        if other.admitted and other.holds and other.placed < other.floor and not other.room_coming:
            return True
    return False


def _copied(trial: _Trial) -> _Trial:
    """A trial to go on from separately: what it took so far, copied (the jobs it took from are shared)."""
    return replace(
        trial,
        free=dict(trial.free),
        removals=list(trial.removals),
        leaving=list(trial.leaving),
        victims=dict(trial.victims),
        freed=dict(trial.freed),
    )


# Single victims tried against the lowest-priority-then-youngest choice: enough for the usual cluster, and
# bounded, since each try shrinks the lower-priority jobs again.
ALTERNATIVE_VICTIMS = 16


def _fewest_taken(chosen: _Trial, lower: Sequence[_Job], shrunk: _Trial) -> _Trial:
    """Where `chosen` (victims in `lower`'s order, then trimmed) stops one job, the preemption that takes
    the fewest devices: it, or another single job of a priority no higher that is enough with the shrinks
    (`shrunk`: the trial before any preemption). Taken in order, the youngest job went first whatever its
    size: 7 workers stopped for a gang of 3 that a job of 3 workers would have made room for, and the 4
    devices left over stayed idle while the 7 could not come back. Several victims were each needed (the
    trim gave back the others): not tried."""
    if len(chosen.victims) != 1:
        return chosen
    best, best_taken = chosen, _devices_taken(chosen)
    first = next(iter(chosen.victims))
    tried = 0
    for victim in lower:
        if tried == ALTERNATIVE_VICTIMS or victim.demand.priority > first.demand.priority:
            break
        if victim is first or _devices_held(victim) >= best_taken:
            continue
        tried += 1
        trial = _copied(shrunk)
        _preempt(trial, victim)
        _trim(trial)
        if trial.fits and trial.victims and _devices_taken(trial) < best_taken:
            best, best_taken = trial, _devices_taken(trial)
    return best


def _devices_held(job: _Job) -> int:
    return (sum(job.bound.values()) + sum(job.reserved.values())) * job.demand.per_worker


def _devices_taken(trial: _Trial) -> int:
    """Devices the trial takes from other jobs: its victims' and its shrinks' (a finished worker's none)."""
    shrunk = sum(other.demand.per_worker for other, node, _ in trial.removals if node != _FINISHED)
    return shrunk + sum(sum(freed.values()) for freed in trial.victims.values())


def _shrink_lower(trial: _Trial, lower: Sequence[_Job]) -> None:
    """Lower-priority elastic jobs' places toward the trial: those of workers leaving anyway first, from
    every job (they cost nobody anything), then shrinks in `lower`'s order."""
    elastic = [other for other in lower if other.demand.elastic]
    for other in elastic:
        if trial.needs_from(other):
            _take_leaving(trial, other)
    for other in elastic:
        if trial.needs_from(other):
            _shrink(trial, other)


def _commit(cluster: _Cluster, trial: _Trial) -> None:
    for other, node in trial.leaving:
        cluster.release(other, node, from_reserved=False)
        other.released[node] += 1
        other.freed_for = trial.job.key
        other.made_room.add(trial.job.key)
    for other, node, from_reserved in trial.removals:
        # A worker on a node outside the pass (NotReady) goes all the same, and frees nothing in it.
        if from_reserved or other.bound.get(node, 0) > 0:
            cluster.release(other, node, from_reserved)
        elif node == _FINISHED:
            other.finished -= 1
            other.placed_count -= 1
        if not from_reserved and node != _FINISHED:
            other.released[node] += 1
        other.grant -= 1
        other.shrunk_for = trial.job.key
        other.made_room.add(trial.job.key)
    for other in {other for other, _, _ in trial.removals}:
        # A group taken in part (its other workers had no place to take) goes whole.
        other.grant = max(other.floor, other.whole_groups(other.grant))
        _release_reserved_beyond(cluster, other)
    for victim in trial.victims:
        cluster.evict(victim)
        victim.preempted_for = trial.job.key
        victim.made_room.add(trial.job.key)
        victim.grant = 0


def _admit(  # noqa: PLR0913 - the pass's state, the job, and what it is short of in the quota
    cluster: _Cluster,
    jobs: Sequence[_Job],
    job: _Job,
    nodes: Sequence[str],
    quota_short: Mapping[tuple[str, str, str], Decimal],
    budget: QuotaBudget,
) -> bool:
    """Admit the job at its floor on `nodes` (its own, less those kept by jobs ahead of it); a job short of
    quota room (`quota_short`) only by shrinking or preempting jobs that free it."""
    if quota_short or not _fits(cluster, nodes, job.demand.per_worker, job.floor):
        if not _make_room(cluster, jobs, job, nodes, quota_short, budget, job.floor):
            return False
    _take_places(cluster, job, nodes, job.floor)
    job.grant = job.floor
    return True


def _take_places(cluster: _Cluster, job: _Job, nodes: Sequence[str], count: int) -> None:
    """`count` worker places on `nodes` for the job, best fit; on devices this pass took from other jobs it
    waits for their workers to leave (_Cluster.awaiting)."""
    per_worker = job.demand.per_worker
    spots = _spots(cluster, nodes, per_worker, count)
    free, vacated = cluster.free, cluster.vacated
    if any(workers * per_worker > free[node] - vacated[node] for node, workers in spots.items()):
        cluster.awaiting.append(job)
    cluster.take(job, spots)


def _make_room_for_lost_places(
    cluster: _Cluster, jobs: Sequence[_Job], queue: _Queue, budget: QuotaBudget
) -> frozenset[JobKey]:
    """An admitted job whose minimum lost its places (their node removed, or other pods took the devices)
    makes room as it did when queued, in queue order: it shrinks, or if allowed preempts, lower-priority
    jobs now. Kept short instead, it held its grant with no place until its gang timeout requeued it.

    Not while devices are on their way to it (Holding.room_coming: room made for it earlier, or its own
    workers terminating), nor for its workers bound on nodes outside the pass (`elsewhere`: a NotReady node
    may come back, and the pod still stands for the worker): room made for those stopped a job for nothing.
    Nor for a minimum raised above the grant it ran on (replicas of a fixed job raised: a raise waits for
    free devices, also while the group restarts), nor while its quotas' budget is over in a key it claims
    (its new workers would be refused, as a queued job waits QuotaExceeded). Returns the jobs it found no
    room for (AdmissionPlan.unplaced): the next passes plan every job while they wait, up to their gang
    timeout."""
    queued = [job for job in jobs if not job.admitted]
    unplaced = []
    waiting: list[_Job] = []  # the admitted jobs so far whose room is coming (_waits_for_room)
    for job in jobs:
        if job.admitted and _waits_for_room(job):
            waiting.append(job)
        if not job.admitted or not job.holds or job.room_coming or job.grant < job.floor:
            continue
        if job.whole_groups(job.before) < job.floor or _quota_over(budget, job):
            continue
        lost = job.floor - job.placed - job.elsewhere
        if lost <= 0:
            continue
        nodes = _off_short(job, waiting, queue, _off_heads(cluster, queued, job, queue))
        if _make_room(cluster, jobs, job, nodes, {}, budget, lost):
            _take_places(cluster, job, nodes, lost)
        else:
            unplaced.append(job.key)
    return frozenset(unplaced)


def _quota_over(budget: QuotaBudget, job: _Job) -> bool:
    """Whether a key the job claims has less than nothing left once every admitted job's workers not charged
    yet are counted (_take_admitted, which counts the job at its grant before the pass where that was
    higher: given back here): some of those workers' creates would be refused."""
    free, granted = budget.free, job.grant - job.finished
    extra = _uncharged(job, max(job.before, job.grant) - job.finished) - _uncharged(job, granted)
    return any(
        claim.pool in free and free[claim.pool] + extra * claim.per_worker < 0
        for claim in job.demand.quota_claims
    )


def _satisfiable(cluster: _Cluster, job: _Job) -> bool:
    """Whether its minimum would fit on its nodes if no other pod held any device."""
    return cluster.slots_when_empty(job.nodes, job.demand.per_worker) >= job.floor


def _quota_counted_on(budget: QuotaBudget, job: _Job) -> bool:
    """Whether jobs admitted under a quota the job is charged to count on quota its leaving workers still
    hold: their workers not charged yet take the budget below nothing (not a quota read over its limit
    already). Taken back, those workers kept it, and a job that shrank this one for its quota (its devices
    free elsewhere) waited for good."""
    return any(
        budget.free.get(claim.pool, Decimal(0)) < min(Decimal(0), budget.read.get(claim.pool, Decimal(0)))
        for claim in job.demand.quota_claims
    )


def _quota_budget(jobs: Sequence[_Job], quotas: QuotaState | None) -> QuotaBudget:
    """The quotas' free amounts as the pass reads them; each job's workers charged now; and the queued jobs
    whose minimum is over what is left once the admitted jobs' workers not charged yet are counted (they
    keep no nodes from the jobs behind them: _off_heads)."""
    budget = QuotaBudget(quotas.free if quotas is not None else {})
    if quotas is None:
        return budget
    for job in jobs:
        job.quota_charged = quotas.charged.get(job.key, 0)
    ahead = QuotaBudget(budget.free)
    _take_admitted(ahead, jobs)
    for job in jobs:
        if not job.admitted and _over_quota(ahead, job) is not None:
            job.quota_held = True
    return budget


def _take_admitted(budget: QuotaBudget, jobs: Sequence[_Job]) -> None:
    """Counts the admitted jobs' granted workers not charged to their quotas yet (not created, or not
    counted by the quota yet), a minimum raised by _reserve_admitted included."""
    for job in jobs:
        if job.admitted and job.demand.quota_claims:
            budget.take(job.demand.quota_claims, _uncharged(job, max(job.before, job.grant) - job.finished))


def _uncharged(job: _Job, workers: int, beyond: int = 0) -> int:
    """Of the job's first `workers` workers, those beyond `beyond` not charged to its quotas yet."""
    return max(0, workers - max(beyond, job.quota_charged))


def _over_quota(budget: QuotaBudget, job: _Job) -> str | None:
    """Why the job's minimum does not fit its quotas' budget (None: it fits, it is exempt, or no quota the
    pass read limits it)."""
    claims = job.demand.quota_claims
    needed = _uncharged(job, job.floor)
    if not claims or job.demand.quota_exempt or budget.more(claims, needed) >= needed:
        return None
    return _quota_exceeded(budget, job)


def _quota_short(budget: QuotaBudget, job: _Job) -> dict[tuple[str, str, str], Decimal]:
    """An exempt job's quota keys whose budget its minimum is over -> by how much (empty for another job:
    _over_quota holds it back). Exempt, it is admitted only by taking workers charged under those keys."""
    if not job.demand.quota_exempt:
        return {}
    needed = _uncharged(job, job.floor)
    if needed <= 0:
        return {}  # its minimum is charged already (its own pods): nothing to make room for
    short = {}
    for claim in job.demand.quota_claims:
        if claim.pool not in budget.free:
            continue
        room = budget.free[claim.pool] + budget.exempt_extra.get(claim.pool, Decimal(0))
        if needed * claim.per_worker > room:
            short[claim.pool] = needed * claim.per_worker - room
    return short


def _charge_admitted(cluster: _Cluster, budget: QuotaBudget, job: _Job) -> None:
    """A job admitted by the pass: its workers not charged yet come off its quotas' budget."""
    workers = _uncharged(job, job.grant)
    if job.demand.quota_exempt:
        _take_extra(cluster, budget, job, workers)
    budget.take(job.demand.quota_claims, workers)


def _take_extra(cluster: _Cluster, budget: QuotaBudget, job: _Job, workers: int) -> None:
    """An exempt job granted into quota that jobs shrunk or preempted earlier in the pass free
    (QuotaBudget.exempt_extra): those jobs made room for it too, so its gang keeps its grant while their
    workers leave (leaving_for; decisions/running._refused_gang)."""
    for claim in job.demand.quota_claims:
        if claim.pool in budget.exempt_extra and workers * claim.per_worker > budget.free[claim.pool]:
            for other in cluster.extra_from.get(claim.pool, ()):
                other.made_room.add(job.key)


def _frees_quota(quota_short: Mapping[tuple[str, str, str], Decimal], other: _Job) -> bool:
    return any(claim.pool in quota_short for claim in other.demand.quota_claims)


def _quota_out_of_reach(
    cluster: _Cluster, jobs: Sequence[_Job], job: _Job, quota_short: Mapping[tuple[str, str, str], Decimal]
) -> bool:
    """Whether every lower-priority job charged under the keys the job is short of, taken down to its
    minimum (or whole, where the job may preempt), would still leave it short."""
    freed: dict[tuple[str, str, str], Decimal] = {}
    for other in _lower(cluster, jobs, job) if job.demand.makes_room else ():
        # What a trial can take: placed or reserved workers (finished ones free no quota), all of them
        # where the job may preempt, those above an elastic job's minimum where it may only shrink.
        placed = sum(other.bound.values()) + sum(other.reserved.values())
        if job.demand.preemption == "LowerPriority":
            workers = placed
        else:
            above = other.grant - other.floor - other.finished if other.demand.elastic else 0
            workers = max(0, min(above, placed))
        for claim in other.demand.quota_claims:
            if claim.pool in quota_short:
                freed[claim.pool] = freed.get(claim.pool, Decimal(0)) + workers * claim.per_worker
    return any(freed.get(pool, 0) < short for pool, short in quota_short.items())


def _not_admitted(  # noqa: PLR0913 - the pass's state, the job, and what it is short of in the quota
    cluster: _Cluster,
    queue: _Queue,
    budget: QuotaBudget,
    job: _Job,
    nodes: Sequence[str],
    quota_short: Mapping[tuple[str, str, str], Decimal],
) -> None:
    """A job the pass could not admit: one that had the devices and lacked only quota room waits for the
    quota (blocking no one), any other for devices."""
    if quota_short and _fits(cluster, nodes, job.demand.per_worker, job.floor):
        _wait_for_quota(queue, budget, job, _quota_exceeded(budget, job))
        return
    queue.blocked(job, *_unfit(cluster, job))


def _quota_wait(
    cluster: _Cluster, jobs: Sequence[_Job], budget: QuotaBudget, job: _Job
) -> tuple[str | None, dict[tuple[str, str, str], Decimal]]:
    """Why the job waits for its quotas (None: it does not), and what an exempt job is short of. An exempt
    job that even the lower-priority jobs charged under those keys would not make room for waits like
    one not exempt, and stops no one for workers the API server would refuse."""
    over_quota = _over_quota(budget, job)
    if over_quota is not None:
        return over_quota, {}
    short = _quota_short(budget, job)
    if short and _quota_out_of_reach(cluster, jobs, job, short):
        return _quota_exceeded(budget, job), {}
    return None, short


def _quota_exceeded(budget: QuotaBudget, job: _Job) -> str:
    return f"{QUOTA_EXCEEDED}: {budget.describe(job.demand.quota_claims, _uncharged(job, job.floor))}"


def _wait_for_quota(queue: _Queue, budget: QuotaBudget, job: _Job, why: str) -> None:
    """The job waits for its namespace's quota, not for devices: it blocks no one, and no job behind it
    grows into the keys it waits on."""
    queue.waiting[job.key] = why
    for claim in job.demand.quota_claims:
        budget.held.setdefault(claim.pool, job.order)


def _admit_queue(cluster: _Cluster, jobs: Sequence[_Job], queue: _Queue, budget: QuotaBudget) -> None:
    for job in jobs:
        if job.admitted:
            continue
        if queue.strict_head is not None:
            queue.waiting[job.key] = (
                f"{QUEUED}: behind {_name(queue.strict_head.key)} in the queue (StrictFIFO)"
            )
            continue
        over_quota, short = _quota_wait(cluster, jobs, budget, job)
        if over_quota is not None:
            _wait_for_quota(queue, budget, job, over_quota)
            continue
        nodes, kept_by = queue.usable(job)
        if kept_by is None:
            if not _admit(cluster, jobs, job, nodes, short, budget):
                _not_admitted(cluster, queue, budget, job, nodes, short)
        elif not nodes or not _admit(cluster, jobs, job, nodes, short, budget):
            # Still the first that did not fit (StrictFIFO's head) or a head past its wait: those behind it
            # must not take the nodes it may use, whoever keeps the others.
            queue.blocked(job, *_unfit(cluster, job))
            queue.waiting[job.key] = f"{QUEUED}: {kept_by}"
        if job.grant > 0 and job.demand.quota_claims:
            _charge_admitted(cluster, budget, job)


def _taken_back(cluster: _Cluster, queue: _Queue, budget: QuotaBudget, job: _Job) -> bool:
    """Whether a job with workers beyond its grant, its want raised back, takes them back (_grow): asked
    only of such a job, since the waiting jobs' check may walk their nodes."""
    return not queue.anyone_waits_for(job, cluster.free) and not _quota_counted_on(budget, job)


def _lowest_holding(jobs: Sequence[_Job]) -> dict[str, int]:
    """Accelerator -> the lowest priority of the jobs holding devices of it."""
    lowest: dict[str, int] = {}
    for job in jobs:
        if job.holds:
            accelerator = job.demand.accelerator
            lowest[accelerator] = min(lowest.get(accelerator, job.demand.priority), job.demand.priority)
    return lowest


def _leaving_devices(jobs: Sequence[_Job]) -> Counter[str]:
    """Node -> the devices of every job's bound workers beyond its grant (_leaving): places that come free
    once their checkpoint is saved."""
    devices: Counter[str] = Counter()
    for job in jobs:
        for node in job.removal_order[: _leaving(job)]:
            devices[node] += job.demand.per_worker
    return devices


def _grow(cluster: _Cluster, jobs: Sequence[_Job], queue: _Queue, budget: QuotaBudget) -> None:
    """Spare capacity raises elastic jobs toward their want, in queue order. A job shrunk or preempted in
    this pass does not grow in it (the plan counts the places it gives up as someone else's), nor does one
    whose workers beyond its grant are still bound: they are leaving for someone else (a shrink waiting for
    its checkpoint), and a grant raised again would keep them where that job was counted. Those workers
    are its own again, with no new place, when its want rose meanwhile (replicas raised back during the
    handshake) and no job that did not fit, or is short of its minimum, may use their nodes.

    Growth takes only devices free now, not those of workers this pass took away (_Cluster.vacated), and
    none on the nodes of a job admitted on such devices (_Cluster.awaiting): those workers stay bound
    through their checkpoint, and the next pass, run meanwhile, finds that job short of its minimum and
    gives it the free devices of its nodes first. Grown there, a job lost its new worker in that pass (a
    grant raised and lowered, pods created and deleted), and the place kept for it could be on the node the
    other job was admitted for. It grows once the workers are gone."""
    withheld = _withhold(cluster, cluster.vacated)
    kept = _kept_from_growth(cluster)
    queue.leaving = _leaving_devices(jobs)
    queue.lowest_holding = _lowest_holding(jobs)
    queue.lowest_shrinkable = _lowest_holding(
        [job for job in jobs if job.demand.elastic and job.grant > job.floor]
    )
    for job in jobs:
        if not job.holds or not job.demand.elastic or job.shrunk_for or job.freed_for:
            continue
        if job.grant < min(job.target, job.placed) and _taken_back(cluster, queue, budget, job):
            job.grant = max(job.grant, job.whole_groups(min(job.placed, job.target)))
        if job.grant >= job.target or job.placed != job.grant:
            continue
        nodes, _ = queue.usable(job, growing=True)
        if kept.get(job.demand.accelerator):
            nodes = [node for node in nodes if node not in kept[job.demand.accelerator]]
        room = _quota_growth(budget, job)
        job.quota_capped = room < job.target - job.grant
        spots = _spots(cluster, nodes, job.demand.per_worker, room)
        found = sum(spots.values())
        if job.grant + found < job.floor:
            continue  # held below a raised minimum (_reserve_admitted): that minimum comes whole
        if job.whole_groups(found) != found:  # the same best-fit places, up to whole groups
            spots = _spots(cluster, nodes, job.demand.per_worker, job.whole_groups(found))
        cluster.take(job, spots)
        grown_from, job.grant = job.grant, job.grant + sum(spots.values())
        if job.demand.quota_claims:
            budget.take(job.demand.quota_claims, _uncharged(job, job.grant, beyond=grown_from))
    for node, devices in withheld.items():
        cluster.add_free(node, devices)


def _quota_growth(budget: QuotaBudget, job: _Job) -> int:
    """How many workers the job may grow by: toward its target, as far as its quotas' budget has room (its
    workers charged already but not granted need none)."""
    wanted = job.target - job.grant
    claims = job.demand.quota_claims
    if not claims:
        return wanted
    if any(budget.held.get(claim.pool, job.order) < job.order for claim in claims):
        return max(0, job.quota_charged - job.grant)  # a job ahead waits for that room: no growth into it
    charged_spare = max(0, job.quota_charged - job.grant)
    return min(wanted, charged_spare + budget.more(claims, wanted))


def _kept_from_growth(cluster: _Cluster) -> dict[str, set[str]]:
    """accelerator -> the nodes the jobs admitted on vacated devices may use (_Cluster.awaiting), those that
    hold one of their workers."""
    kept: dict[str, set[str]] = {}
    for job in cluster.awaiting:
        per_worker = job.demand.per_worker
        nodes = kept.setdefault(job.demand.accelerator, set())
        nodes.update(node for node in job.nodes if cluster.allocatable[node] >= per_worker)
    return kept


def _withhold(cluster: _Cluster, devices: Mapping[str, int]) -> dict[str, int]:
    """Takes up to `devices` per node off the free devices (as far as any are free); returns what it took."""
    withheld = {}
    for node, count in sorted(devices.items()):
        taken = min(count, cluster.free.get(node, 0))
        if taken > 0:
            cluster.add_free(node, -taken)
            withheld[node] = taken
    return withheld


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _unfit(cluster: _Cluster, job: _Job) -> tuple[str, bool]:
    """What the job's minimum lacks (_missing), and whether it would fit with nothing else running
    (_satisfiable); the message says when it would not: it read like any wait."""
    message, satisfiable = _missing(cluster, job), _satisfiable(cluster, job)
    if not satisfiable and job.nodes and cluster.largest(job.nodes) >= job.demand.per_worker:
        slots = cluster.slots_when_empty(job.nodes, job.demand.per_worker)
        held = f"{slots} of its {_plural(job.floor, 'worker')}"
        # Cordoned and NotReady nodes are none of its nodes here: they may come back (a review).
        message += (
            f"; its nodes hold {held} even with nothing else running: it waits for more nodes it may use "
            "(added, uncordoned or Ready again)"
        )
    return message, satisfiable


def _missing(cluster: _Cluster, job: _Job) -> str:
    """What the job's minimum lacks, e.g. "needs 2 nodes with 8 free nvidia-h100-80gb; 1 has"."""
    demand, count = job.demand, job.floor
    scope = "eligible node" if demand.eligible_nodes is not None else "node"
    per_worker, accelerator = demand.per_worker, demand.accelerator
    wanted = f"needs {_plural(count, scope)} with {per_worker} free {accelerator}"
    if not job.nodes:
        return f"{wanted}; no {scope} has {accelerator}"
    largest = cluster.largest(job.nodes)
    if largest < per_worker:
        return f"{wanted}; the largest {scope} has {largest}"
    hosts = cluster.hosts(job.nodes, per_worker)
    if largest < 2 * per_worker:  # one worker per node at most
        return f"{wanted}; {hosts} {'has' if hosts == 1 else 'have'}"
    slots = cluster.slots(job.nodes, per_worker)
    return (
        f"needs room for {_plural(count, 'worker')} of {per_worker} {accelerator}, each on one {scope}; "
        f"only {slots} fit now ({_plural(hosts, scope)} with {per_worker} free)"
    )


def _short_of(job: _Job) -> str:
    """Why an elastic job's grant is below what it wants."""
    short = _plural(job.target - job.grant, "more worker")
    if job.quota_capped:
        return f"its namespace's ResourceQuota has no room for {short}"
    return f"no room now for {short}"


def _reason(job: _Job) -> str | None:
    if job.preempted_for is not None:
        return f"{PREEMPTED}: to make room for {_name(job.preempted_for)}"
    if job.grant == job.before:
        return None
    if not job.admitted:
        if job.grant < job.target:  # an elastic job started on fewer than it wants: why, not the count
            return f"{ADMITTED}: {_short_of(job)}"
        return f"{ADMITTED}: {_plural(job.grant, 'worker')}"
    if job.grant > job.before:
        unplaced = job.grant - job.placed  # a non-elastic gang resized beyond the room there is
        waiting = f"; {unplaced} have no room yet" if unplaced > 0 else ""
        # Why it grew no further, after the step: the job's messages tell that part (running.py, _grant_why).
        short = f"; {_short_of(job)}" if job.grant < job.target else ""
        return f"{SCALED_UP}: {job.before} -> {job.grant} workers (wants {job.target}){waiting}{short}"
    if job.shrunk_for is not None:
        return f"{SHRUNK_FOR_PRIORITY}: to make room for {_name(job.shrunk_for)}"
    if job.lost:
        return f"{CAPACITY_CHANGED}: {_plural(job.lost, 'worker')} no longer fit on {job.demand.accelerator} nodes"
    return f"{SCALED_DOWN}: wants {job.target}"


def plan_admissions(  # noqa: PLR0913 - the pass's inputs, each named at the call
    queued: Sequence[Demand],
    admitted: Sequence[Holding],
    nodes: Sequence[NodeCapacity],
    policy: AdmissionPolicy,
    now: float,
    head_wait_limit: float,
    quotas: QuotaState | None = None,
) -> AdmissionPlan:
    """One scheduling pass over every job the operator knows (the module docstring has the rules).

    Settled jobs (admitted, granted their target, every granted worker bound on a node of their accelerator)
    keep their grant in any pass in which no job waits, is shrunk or is preempted, and no admitted job whose
    minimum lost its places found no room for it (AdmissionPlan.unplaced): nothing in it can move them. So
    the pass plans the others first, with the settled jobs' devices counted as held, and plans everyone
    only when that leaves a job waiting, takes workers from one, or leaves such a job without room; the
    same plan either way
    (tests/unit/test_admission_settled.py), and a pass after a burst of new jobs plans the new ones, not
    the hundreds already running."""
    accelerators = {node.name: node.accelerator for node in nodes}
    settled = [holding for holding in admitted if _settled(holding, accelerators)]
    if settled:
        keys = {holding.demand.key for holding in settled}
        others = [holding for holding in admitted if holding.demand.key not in keys]
        admitted_keys = {holding.demand.key for holding in admitted}
        new = [demand for demand in queued if demand.key not in admitted_keys]
        if _may_all_fit(new, admitted, nodes):
            held = _devices(settled)
            plan = _plan(new, others, nodes, policy, now, head_wait_limit, held, quotas)
            # A job that waits for its quota alone takes nothing the settled jobs hold: the same plan. Not an
            # exempt one: the settled jobs of its namespace may be the ones to free its quota.
            for_devices = any(not why.startswith(QUOTA_EXCEEDED) for why in plan.waiting.values())
            exempt_waits = any(demand.quota_exempt and demand.key in plan.waiting for demand in new)
            if not (for_devices or exempt_waits or plan.shrink or plan.preempt or plan.unplaced):
                return _with_settled(plan, settled)
    return _plan(queued, admitted, nodes, policy, now, head_wait_limit, None, quotas)


def _settled(holding: Holding, accelerators: Mapping[str, str | None]) -> bool:
    demand = holding.demand
    if holding.granted != max(demand.min_workers, demand.want_workers):
        return False
    placed = [(node, workers) for node, workers in holding.placed.items() if workers > 0]
    return (
        all(accelerators.get(node) == demand.accelerator for node, _ in placed)
        and sum(workers for _, workers in placed) + demand.finished_workers == holding.granted
    )


def _devices(holdings: Sequence[Holding]) -> Counter[str]:
    """node -> the devices the holdings' bound workers use there."""
    held: Counter[str] = Counter()
    for holding in holdings:
        for node, workers in holding.placed.items():
            if workers > 0:
                held[node] += workers * holding.demand.per_worker
    return held


def _may_all_fit(
    queued: Sequence[Demand], admitted: Sequence[Holding], nodes: Sequence[NodeCapacity]
) -> bool:
    """False when the queued jobs' minimums need more devices of an accelerator than are free (some job
    would wait, shrink or preempt: a contended cluster, where planning only some jobs first is wasted)."""
    needed: Counter[str] = Counter()
    for demand in queued:
        needed[demand.accelerator] += demand.min_workers * demand.per_worker
    if not needed:
        return True
    held = _devices(admitted)
    free: Counter[str] = Counter()
    for node in nodes:
        if node.accelerator is not None and node.accelerator in needed:
            free[node.accelerator] += max(0, node.allocatable - node.used_by_others - held[node.name])
    return all(devices <= free[accelerator] for accelerator, devices in needed.items())


def _with_settled(plan: AdmissionPlan, settled: Sequence[Holding]) -> AdmissionPlan:
    grants = dict(plan.grants)
    placement = dict(plan.placement)
    for holding in settled:
        grants[holding.demand.key] = holding.granted
        placement[holding.demand.key] = {node: count for node, count in holding.placed.items() if count > 0}
    return replace(plan, grants=grants, placement=placement)


def _plan(  # noqa: PLR0913 - as plan_admissions
    queued: Sequence[Demand],
    admitted: Sequence[Holding],
    nodes: Sequence[NodeCapacity],
    policy: AdmissionPolicy,
    now: float,
    head_wait_limit: float,
    held: Mapping[str, int] | None = None,
    quotas: QuotaState | None = None,
) -> AdmissionPlan:
    """The pass over every job given; `held`: node -> devices held by jobs left out of it (settled: all their
    workers bound, so charged to their quotas already)."""
    cluster = _cluster(nodes, held or {})
    jobs = _jobs(queued, admitted, cluster)
    queue = _Queue(policy, now, head_wait_limit, cluster.allocatable)
    budget = _quota_budget(jobs, quotas)
    _reserve_admitted(cluster, jobs, queue)
    _take_admitted(budget, jobs)
    unplaced = _make_room_for_lost_places(cluster, jobs, queue, budget)
    queue.note_short(jobs)
    _admit_queue(cluster, jobs, queue, budget)
    _grow(cluster, jobs, queue, budget)
    reasons = {job.key: reason for job in jobs if (reason := _reason(job)) is not None}
    return AdmissionPlan(
        grants={job.key: job.grant for job in jobs},
        admitted_now=frozenset(job.key for job in jobs if not job.admitted and job.grant > 0),
        shrink={
            job.key: job.grant for job in jobs if job.holds and job.shrunk_for and job.grant < job.before
        },
        preempt=frozenset(job.key for job in jobs if job.preempted_for is not None),
        waiting=dict(queue.waiting),
        reasons=reasons,
        placement={job.key: _added(job.bound, job.reserved) for job in jobs if job.holds},
        reserved={
            job.key: _added(job.reserved, {}) for job in jobs if job.holds and any(job.reserved.values())
        },
        made_room_for={job.key: frozenset(job.made_room) for job in jobs if job.made_room},
        unplaced=unplaced,
    )


def _added(first: Mapping[str, int], second: Mapping[str, int]) -> dict[str, int]:
    """Workers per node of both, only nodes with some (Counter's + without two Counters per job and pass)."""
    total = dict(first)
    for node, workers in second.items():
        total[node] = total.get(node, 0) + workers
    return {node: workers for node, workers in total.items() if workers > 0}


def leaving_for(
    victims: Mapping[JobKey, frozenset[JobKey]],
    holding: Mapping[JobKey, int],
    grants: Mapping[JobKey, int],
    terminating: Mapping[JobKey, int] | None = None,
) -> dict[JobKey, frozenset[JobKey]]:
    """Of the jobs shrunk or preempted to make room for others (`victims`: victim -> the jobs it made room
    for, AdmissionPlan.made_room_for, kept across passes and after the victim itself is deleted), those
    whose workers are still leaving: they hold more bound workers (`holding`: bound, not finished, not
    terminating) than the pass grants them (a handshake still open), or some are terminating within their
    grace (`terminating`), which keep their devices: counted apart, since a victim that grew on other nodes
    meanwhile holds no more than its grant and its leaving workers still sit on the places. Each maps to the
    jobs it made room for that still hold a grant. Such workers save within their checkpoint grace, which
    can be longer than those jobs' gang timeouts: their gang clocks must not run meanwhile
    (decisions/running.py)."""
    going = terminating or {}
    leaving = {}
    for victim, beneficiaries in victims.items():
        if not going.get(victim, 0) and holding.get(victim, 0) <= grants.get(victim, 0):
            continue
        waiting = frozenset(job for job in beneficiaries if grants.get(job, 0) > 0)
        if waiting:
            leaving[victim] = waiting
    return leaving
