"""The parts of one reconcile decision being assembled, shared by the paths of decisions.job and
decisions.scheduled."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kubefit.api.conditions import ConditionType, EventType, Phase, Reason
from kubefit.api.formatting import sizing_summary
from kubefit.api.models import CheckpointStatus, GangStatus, SizingStatus, TrainingJobSpec
from kubefit.builders.checkpoint import CheckpointEnv, checkpoint_token
from kubefit.builders.pods import WorkerSet
from kubefit.builders.resources import HostShare
from kubefit.decisions.conditions import ConditionUpdate
from kubefit.decisions.gang import previous_gang
from kubefit.decisions.observed import WorkerPod
from kubefit.decisions.workers import WorkerBounds
from kubefit.sizing.catalog import Catalog
from kubefit.sizing.planner import NodeInventory

if TYPE_CHECKING:
    from kubefit.decisions.admission import Demand
    from kubefit.decisions.job import JobObservation, ReconcileSettings


@dataclass(frozen=True)
class JobEvent:
    type: EventType
    reason: str
    message: str
    # The condition whose transition it tells (None: an event of the path's own): Ready's is posted only once
    # the status says it (controller/reconciler.py).
    condition: str | None = field(default=None, compare=False)


@dataclass
class Draft:
    """The parts of a decision being assembled by one of the paths."""

    phase: Phase
    updates: list[ConditionUpdate] = field(default_factory=list)
    create: tuple[int, ...] = ()
    worker_set: WorkerSet | None = None
    # A queued job whose workers the API server refused, which takes no room meanwhile: its first worker,
    # to be tried with a dry-run create (Decision.probe_pod).
    probe: WorkerSet | None = None
    delete: tuple[str, ...] = ()
    replace: tuple[WorkerPod, ...] = ()
    events: list[JobEvent] = field(default_factory=list)
    restarts: int | None = None  # None: as before (status.restarts is what runPolicy.maxRestarts counts)
    desired: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    delete_job: bool = False
    demand: Demand | None = None
    message: str | None = None
    checkpoint: CheckpointStatus | None = None  # the open request (None: none, any open one is closed)
    checkpoint_requests: int | None = None  # None: as before
    gang: GangStatus | None = None  # None: as before
    last_failure_time: str | None = None  # None: as before
    succeeded_workers: frozenset[int] | None = None  # None: as before
    requeue_after: list[float] = field(default_factory=list)  # the earliest one is used
    # A ResourceQuota of the namespace holds the job below what it asks (decisions/quota.py): the controller
    # decides it again when a quota there changes.
    quota_limited: bool = False


@dataclass(frozen=True)
class JobContext:
    """A valid job that fits, as one decision sees it."""

    observation: JobObservation
    spec: TrainingJobSpec
    sizing: SizingStatus
    bounds: WorkerBounds
    ours: Sequence[WorkerPod]  # this job's worker pods (see decisions.job._our_workers)
    catalog: Catalog
    settings: ReconcileSettings
    host_bytes_per_worker: int = 0  # offloaded training state per worker (decisions.job_sizing)
    # Why a grant the namespace's ResourceQuota holds below the replicas is so (QuotaRoom.describe), for
    # the Admitted message; None where no quota holds it.
    quota_cap: str | None = None

    @property
    def status(self) -> Mapping[str, Any]:
        return self.observation.status

    @property
    def now(self) -> datetime:
        return self.observation.now

    @property
    def conditions(self) -> list[Mapping[str, Any]]:
        return conditions_of(self.observation.status)

    @property
    def live(self) -> list[WorkerPod]:
        """Workers that hold devices: not terminating, not finished."""
        return [pod for pod in self.ours if not pod.terminating and not pod.finished]

    @property
    def running(self) -> list[WorkerPod]:
        return [pod for pod in self.ours if pod.ready]


def conditions_of(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(status.get("conditions") or [])


def restarts_of(status: Mapping[str, Any]) -> int:
    return int(status.get("restarts") or 0)


def not_running(reason: str, message: str) -> list[ConditionUpdate]:
    """Ready=False and Running=False for the same reason: no workers run in this state."""
    return [
        ConditionUpdate(ConditionType.READY, "False", reason, message),
        ConditionUpdate(ConditionType.RUNNING, "False", reason, message),
    ]


def sized(sizing: SizingStatus) -> ConditionUpdate:
    if sizing.fits:
        return ConditionUpdate(ConditionType.SIZED, "True", Reason.FITS, sizing_summary(sizing))
    return ConditionUpdate(ConditionType.SIZED, "False", Reason.DOES_NOT_FIT, sizing_summary(sizing))


def worker_set(ctx: JobContext, workers: int, min_workers: int | None = None) -> WorkerSet:
    """The workers to create now; `min_workers` is torchrun's minimum for them (None: the bounds' floor)."""
    accelerator = ctx.catalog.get(ctx.sizing.accelerator)
    if accelerator is None:  # the planner chose it from this catalog, so this is a bug, not bad input
        raise LookupError(f"planner chose {ctx.sizing.accelerator!r}, which is not in the catalog")
    settings, job = ctx.settings, ctx.observation.job
    checkpoint = None
    if settings.checkpoint_url and settings.checkpoint_key and job.uid:
        checkpoint = CheckpointEnv(
            settings.checkpoint_url, checkpoint_token(settings.checkpoint_key, job.uid)
        )
    bounds = ctx.bounds
    return WorkerSet(
        job,
        ctx.spec,
        ctx.sizing,
        accelerator,
        workers,
        bounds.floor if min_workers is None else min_workers,
        bounds.ceiling,
        checkpoint=checkpoint,
        host_bytes_per_worker=ctx.host_bytes_per_worker,
        preferred_hostnames=tuple(sorted(ctx.observation.reserved_hostnames)),
        attempt=previous_gang(ctx.status).attempt,
        accelerator_resources=frozenset(entry.resource_name for entry in ctx.catalog),
        host_share=host_share(
            ctx.observation.inventory.placeable, accelerator.name, ctx.sizing.accelerators_per_worker
        ),
        cluster_domain=settings.cluster_domain,
    )


def host_share(nodes: Iterable[NodeInventory], accelerator: str, per_worker: int = 1) -> HostShare | None:
    """Allocatable CPU and memory per device of the `accelerator` nodes the workers may land on (those with
    `per_worker` devices or more), each the smallest among them (so a default request fits whichever node a
    worker goes to); None without any."""
    shares = [
        (node.cpu_millis / node.allocatable, node.memory_bytes / node.allocatable)
        for node in nodes
        if node.accelerator == accelerator and node.allocatable >= max(1, per_worker)
    ]
    cpu = [share[0] for share in shares if share[0] > 0]
    memory = [share[1] for share in shares if share[1] > 0]
    if not cpu and not memory:
        return None
    return HostShare(int(min(cpu, default=0)), int(min(memory, default=0)))
