"""The reconcile decision for one TrainingJob: pure, from an observation to the changes to make.

The controller observes (the job, its worker pods, the node inventory), calls `decide`, and applies the
Decision: Service and pods to create, pods to delete, the status to write, events to post. Calling it
again with the same observation gives the same decision, so every trigger can share this one path.

Pods to create are worker indices, not manifests: the controller builds each one just before creating
it (`Decision.worker_pod`), a bounded batch at a time, so what a decision holds does not grow with the
worker count. Operator-wide limits come in as `ReconcileSettings`, so `decide` stays a pure function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from kubefit.api.conditions import (
    FINISHED_PHASES,
    ConditionType,
    EventReason,
    EventType,
    JobPhase,
    Phase,
    Reason,
)
from kubefit.api.formatting import sizing_summary, workers_column
from kubefit.api.models import SizingStatus, TrainingJobSpec, TrainingJobStatus
from kubefit.api.units import format_gib, parse_rfc3339, rfc3339
from kubefit.api.validation import FieldError, InvalidSpec, parse_spec
from kubefit.builders.naming import DNS_LABEL_MAX, JobRef, job_selector, worker_name
from kubefit.builders.pods import WorkerSet, build_worker_pod
from kubefit.builders.service import build_headless_service
from kubefit.decisions.conditions import ConditionUpdate, apply_conditions, find_condition, is_true
from kubefit.decisions.observed import POD_SUCCEEDED, WorkerPod
from kubefit.decisions.workers import WorkerBounds, scale_workers, stop_workers, worker_bounds
from kubefit.sizing.catalog import Catalog
from kubefit.sizing.planner import NodeInventory, plan
from kubefit.sizing.suggest import with_overprovisioning_advice

if TYPE_CHECKING:
    from kubefit.decisions.admission import Demand

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# 1024 workers of 8 accelerators are 8,192 devices: more than all but the largest clusters hold, yet a
# typo (replicas: 100000) cannot make the operator create and track tens of thousands of pods. A cluster
# that runs bigger jobs raises it with `kubefit run --max-workers-per-job` (chart: maxWorkersPerJob).
DEFAULT_MAX_WORKERS_PER_JOB = 1024


@dataclass(frozen=True)
class ReconcileSettings:
    """Operator-wide settings that decisions depend on (from `kubefit run`'s flags)."""

    max_workers_per_job: int = DEFAULT_MAX_WORKERS_PER_JOB
    # The checkpoint handshake: the URL workers are told, and the HMAC key of their per-job tokens.
    # Either None: workers get no handshake environment (and acknowledge nothing).
    checkpoint_url: str | None = None
    checkpoint_key: bytes | None = None


@dataclass(frozen=True)
class JobObservation:
    job: JobRef
    generation: int | None
    spec: Any  # the raw manifest spec
    status: Mapping[str, Any]
    pods: Sequence[WorkerPod]  # pods labelled with this job's name
    inventory: Sequence[NodeInventory]  # accelerator nodes a worker pod could land on
    now: datetime
    already_replaced: frozenset[str] = frozenset()  # uids of failed pods deleted for replacement
    # Accelerator nodes the template's nodeSelector, required node affinity or tolerations rule out.
    excluded: Sequence[NodeInventory] = ()
    # Workers the scheduling pass grants the job (AdmissionPlan.grants); None: not decided yet (queued).
    grant: int | None = None
    # Why a queued job waits (AdmissionPlan.waiting), and why its grant changed (AdmissionPlan.reasons).
    waiting: str | None = None
    grant_reason: str | None = None
    # Acknowledgements of the open checkpoint request (status.checkpoint.requestId): worker pod -> step.
    checkpoint_acks: Mapping[str, int] = field(default_factory=dict)
    # metadata.creationTimestamp: the queue's age order (older first). None: `now`.
    created: datetime | None = None


@dataclass(frozen=True)
class JobEvent:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    # The whole status; the controller patches status.model_dump(by_alias=True, exclude_none=False).
    status: TrainingJobStatus
    service: dict[str, Any] | None = None
    create: tuple[int, ...] = ()  # worker indices to create, lowest first; `worker_pod` builds each
    worker_set: WorkerSet | None = None  # what every worker of this decision shares (None: no creates)
    delete: tuple[str, ...] = ()
    replace: tuple[WorkerPod, ...] = ()  # failed workers deleted for replacement, counted in status.restarts
    adopt: tuple[str, ...] = ()  # labelled worker pods without a controller: take ownership
    events: tuple[JobEvent, ...] = ()
    delete_job: bool = False  # ttlSecondsAfterFinished has passed
    # Reconcile again this many seconds from now even if nothing changes: when the TTL of a finished job
    # expires (no event marks that moment, and the resync timer may be much later).
    requeue_after: float | None = None
    sizing: SizingStatus | None = None
    desired_workers: int = 0
    requested_accelerators: int = 0
    # What the job asks of the scheduling pass; None when it needs nothing (invalid, finished,
    # suspended, does not fit, or in a gang-timeout backoff).
    demand: Demand | None = None
    # The checkpoint request that must be open on the board for this job; None: close any.
    checkpoint_request: str | None = None

    def worker_pod(self, index: int) -> dict[str, Any]:
        """The manifest of worker `index`, one of `create`."""
        if self.worker_set is None:
            raise ValueError("this decision creates no workers")
        return build_worker_pod(self.worker_set, index)


@dataclass
class _Draft:
    """The parts of a decision being assembled by one of the paths below."""

    phase: Phase
    updates: list[ConditionUpdate] = field(default_factory=list)
    create: tuple[int, ...] = ()
    worker_set: WorkerSet | None = None
    delete: tuple[str, ...] = ()
    replace: tuple[WorkerPod, ...] = ()
    events: list[JobEvent] = field(default_factory=list)
    restarts: int = 0
    desired: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    delete_job: bool = False


# ------------------------------------------------------------------------------------------ entry


def decide(
    observation: JobObservation, catalog: Catalog, settings: ReconcileSettings = ReconcileSettings()
) -> Decision:
    previous = observation.status
    ours, adopt = _our_workers(observation)
    if is_true(_conditions(previous), ConditionType.SUCCEEDED) or is_true(
        _conditions(previous), ConditionType.FAILED
    ):
        return _to_decision(observation, _already_finished(observation, ours), None, ours, adopt)
    try:
        spec = parse_spec(observation.spec)
        _check_worker_limit(spec, settings.max_workers_per_job)
        _check_name(observation.job.name, spec)
        sizing, bounds = _size(spec, observation, catalog)
        sizing, advice = with_overprovisioning_advice(spec, sizing, catalog)
    except InvalidSpec as invalid:
        return _to_decision(observation, _invalid(invalid), None, ours, adopt)
    if spec.run_policy.suspend:
        draft = _suspended(sizing, ours)
    elif not bounds.feasible or not sizing.fits:
        draft = _blocked(spec, sizing, bounds)
    else:
        draft = _active(observation, spec, sizing, bounds, ours, catalog)
    draft.events.extend(_overprovisioning_events(advice, observation.status))
    return _to_decision(observation, draft, sizing, ours, adopt)


def _overprovisioning_events(advice: str | None, previous: Mapping[str, Any]) -> list[JobEvent]:
    """A Normal event the first time a fixed layout is found far bigger than the job needs."""
    already_told = advice in ((previous.get("sizing") or {}).get("warnings") or [])
    return [JobEvent("Normal", EventReason.OVER_PROVISIONED, advice)] if advice and not already_told else []


def _size(
    spec: TrainingJobSpec, observation: JobObservation, catalog: Catalog
) -> tuple[SizingStatus, WorkerBounds]:
    """The sizing of the layout that actually runs.

    The planner evaluates spec.workers.replicas; when the clamp to [floor, ceiling] changes the worker
    count (e.g. memory needs more workers than replicas asks for), the effective count is evaluated again.
    When the pod's placement rules out every accelerator node, it is planned from the whole catalog.
    """
    inventory = observation.inventory or (None if observation.excluded else observation.inventory)
    sizing = plan(spec, catalog=catalog, inventory=inventory)
    bounds = worker_bounds(spec, sizing)
    if bounds.feasible and bounds.desired != spec.workers.replicas:
        workers = spec.workers.model_copy(update={"replicas": bounds.desired})
        sizing = plan(spec.model_copy(update={"workers": workers}), catalog=catalog, inventory=inventory)
    warning = _placement_warning(sizing.accelerator, observation.inventory, observation.excluded)
    if warning is not None:
        sizing = sizing.model_copy(update={"warnings": [*sizing.warnings, warning]})
    return sizing, bounds


def _placement_warning(
    accelerator: str, placeable: Sequence[NodeInventory], excluded: Sequence[NodeInventory]
) -> str | None:
    """Why the chosen accelerator has no node to run on, when the pod's own placement is the reason."""
    constraints = "the worker pod's nodeSelector, required node affinity and tolerations, or a cordon"
    if not excluded or any(node.accelerator == accelerator for node in placeable):
        return None
    if not placeable:
        return (
            f"no node matches the pod's placement constraints: {constraints} rule out all "
            f"{len(excluded)} accelerator nodes; sized against the whole catalog, the workers stay Pending"
        )
    ruled_out = sum(1 for node in excluded if node.accelerator == accelerator)
    if not ruled_out:
        return None
    return (
        f"no {accelerator} node matches the pod's placement constraints: {constraints} rule out all "
        f"{ruled_out}; the workers stay Pending"
    )


# ------------------------------------------------------------------------------------------ paths


def _invalid(invalid: InvalidSpec) -> _Draft:
    message = "invalid spec: " + "; ".join(str(error) for error in invalid.errors)
    return _Draft(
        phase=JobPhase.PENDING,
        updates=[
            ConditionUpdate(
                ConditionType.SIZED,
                "Unknown",
                Reason.INVALID_SPEC,
                "the spec must be valid before it can be sized",
            ),
            ConditionUpdate(ConditionType.READY, "False", Reason.INVALID_SPEC, message),
            ConditionUpdate(
                ConditionType.RUNNING,
                "False",
                Reason.INVALID_SPEC,
                "no workers are started for an invalid spec",
            ),
        ],
    )


def _suspended(sizing: SizingStatus, ours: Sequence[WorkerPod]) -> _Draft:
    message = "spec.runPolicy.suspend is true: the workers are deleted and the job is kept"
    return _Draft(
        phase=JobPhase.SUSPENDED,
        updates=[
            _sized(sizing),
            ConditionUpdate(ConditionType.SUSPENDED, "True", Reason.SUSPENDED, message),
            *_not_running(Reason.SUSPENDED, message),
        ],
        delete=stop_workers(ours, keep_finished=False),
        desired=0,
    )


def _blocked(spec: TrainingJobSpec, sizing: SizingStatus, bounds: WorkerBounds) -> _Draft:
    if bounds.feasible:
        reason = Reason.DOES_NOT_FIT
        headroom = spec.resources.memory_headroom
        usable = format_gib(int(sizing.device_memory_bytes * (1 - headroom)))
        message = (
            f"{sizing_summary(sizing)}: more than the {usable} usable with {headroom:.0%} headroom; "
            "no workers are started"
        )
    else:
        reason = Reason.TOO_FEW_WORKERS
        field_name = "maxReplicas" if spec.workers.max_replicas is not None else "replicas"
        message = (
            f"memory needs at least {bounds.floor} workers but spec.workers.{field_name} allows "
            f"{bounds.ceiling}; no workers are started"
        )
    return _Draft(
        phase=JobPhase.PENDING,
        updates=[_sized(sizing), *_not_running(reason, message)],
        desired=0,
    )


def _active(
    observation: JobObservation,
    spec: TrainingJobSpec,
    sizing: SizingStatus,
    bounds: WorkerBounds,
    ours: Sequence[WorkerPod],
    catalog: Catalog,
) -> _Draft:
    desired = bounds.desired
    foreign = [pod for pod in observation.pods if pod not in ours]
    changes = scale_workers(desired, ours, observation.already_replaced, foreign)
    restarts = _restarts(observation.status) + len(changes.replace)
    if restarts > spec.run_policy.max_restarts:
        return _failed(observation, spec, changes.replace, ours)
    if _all_succeeded(ours, desired):
        return _succeeded(observation, sizing, desired)

    accelerator = catalog.get(sizing.accelerator)
    if accelerator is None:  # the planner chose it from this catalog, so this is a bug, not bad input
        raise LookupError(f"planner chose {sizing.accelerator!r}, which is not in the catalog")
    worker_set = WorkerSet(observation.job, spec, sizing, accelerator, desired, bounds.floor, bounds.ceiling)
    ready = _ready(ours, desired)
    start_time = observation.status.get("startTime") or (
        rfc3339(observation.now) if ready >= desired else None
    )
    draft = _Draft(
        phase=_active_phase(ours, desired, ready, start_time),
        updates=[_sized(sizing), *_readiness(ready, desired, bounds.floor), *_resumed(observation.status)],
        create=changes.create,
        worker_set=worker_set if changes.create else None,
        delete=changes.delete,
        replace=changes.replace,
        restarts=restarts,
        desired=desired,
        start_time=start_time,
    )
    draft.events.extend(_restart_events(changes.replace, restarts, spec.run_policy.max_restarts))
    return draft


def _failed(
    observation: JobObservation,
    spec: TrainingJobSpec,
    failures: Sequence[WorkerPod],
    ours: Sequence[WorkerPod],
) -> _Draft:
    names = ", ".join(pod.name for pod in failures)
    message = (
        f"worker(s) {names} failed after {_restarts(observation.status)} restart(s); "
        f"spec.runPolicy.maxRestarts is {spec.run_policy.max_restarts}"
    )
    return _Draft(
        phase=JobPhase.FAILED,
        updates=[
            ConditionUpdate(ConditionType.FAILED, "True", Reason.RESTART_LIMIT_EXCEEDED, message),
            *_not_running(Reason.JOB_FAILED, message),
        ],
        # Running workers of a failed job hold accelerators for nothing; finished ones keep their logs.
        delete=stop_workers(ours, keep_finished=True),
        restarts=_restarts(observation.status),
        desired=0,
        completion_time=rfc3339(observation.now),
    )


def _succeeded(observation: JobObservation, sizing: SizingStatus, desired: int) -> _Draft:
    message = f"all {desired} workers succeeded"
    return _Draft(
        phase=JobPhase.SUCCEEDED,
        updates=[
            _sized(sizing),
            ConditionUpdate(ConditionType.SUCCEEDED, "True", Reason.ALL_WORKERS_SUCCEEDED, message),
            *_not_running(Reason.JOB_SUCCEEDED, message),
        ],
        restarts=_restarts(observation.status),
        desired=0,
        completion_time=rfc3339(observation.now),
    )


def _already_finished(observation: JobObservation, ours: Sequence[WorkerPod]) -> _Draft:
    """A job that already succeeded or failed: nothing more runs; the TTL may delete it."""
    status = observation.status
    failed = is_true(_conditions(status), ConditionType.FAILED)
    completion = status.get("completionTime") or rfc3339(observation.now)
    phase = JobPhase.FAILED if failed else JobPhase.SUCCEEDED
    reason = Reason.JOB_FAILED if failed else Reason.JOB_SUCCEEDED
    ready = find_condition(_conditions(status), ConditionType.READY)
    # A reconcile error (e.g. the TTL's delete failed) is over once a reconcile of the job succeeds.
    recovered = ready is not None and ready.get("reason") == Reason.RECONCILE_ERROR
    return _Draft(
        phase=phase,
        updates=[ConditionUpdate(ConditionType.READY, "False", reason, f"the job {phase.lower()}")]
        if recovered
        else [],
        delete=stop_workers(ours, keep_finished=True) if failed else (),
        restarts=_restarts(status),
        desired=0,
        start_time=status.get("startTime"),
        completion_time=completion,
        delete_job=_ttl_left(observation, completion) == 0,
    )


# ------------------------------------------------------------------------------------------ helpers


def _not_running(reason: str, message: str) -> list[ConditionUpdate]:
    """Ready=False and Running=False for the same reason: no workers run in this state."""
    return [
        ConditionUpdate(ConditionType.READY, "False", reason, message),
        ConditionUpdate(ConditionType.RUNNING, "False", reason, message),
    ]


def _conditions(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(status.get("conditions") or [])


def _restarts(status: Mapping[str, Any]) -> int:
    return int(status.get("restarts") or 0)


def _check_worker_limit(spec: TrainingJobSpec, limit: int) -> None:
    """Refuses a job that asks for more workers than this operator runs per job (--max-workers-per-job)."""
    workers = spec.workers
    counts: dict[str, int | None] = {
        "replicas": workers.replicas,
        "maxReplicas": workers.max_replicas,
        "minReplicas": workers.min_replicas,
    }
    errors = [
        FieldError(
            f"spec.workers.{name}",
            f"{count} workers exceed this operator's limit of {limit} per job "
            "(kubefit run --max-workers-per-job)",
        )
        for name, count in counts.items()
        if count is not None and count > limit
    ]
    if errors:
        raise InvalidSpec(errors)


def _check_name(job_name: str, spec: TrainingJobSpec) -> None:
    """The job name becomes the Service name and part of each worker's hostname: both DNS labels."""
    longest = worker_name(job_name, spec.workers.ceiling - 1)
    if not _DNS_1035.match(job_name):
        problem = "must be a DNS label (lowercase letters, digits and '-', starting with a letter)"
    elif len(longest) > DNS_LABEL_MAX:
        problem = f"is too long: worker hostname {longest!r} exceeds {DNS_LABEL_MAX} characters"
    else:
        return
    raise InvalidSpec([FieldError("metadata.name", problem)])


def _our_workers(observation: JobObservation) -> tuple[list[WorkerPod], tuple[str, ...]]:
    """Worker pods that belong to this job, and those among them to adopt (labelled, no controller).

    A labelled pod controlled by another uid belongs to an earlier job of the same name that the garbage
    collector is still removing: it is not ours to count or delete.
    """
    ours = [
        pod
        for pod in observation.pods
        if pod.index is not None and pod.controller_uid in (None, observation.job.uid)
    ]
    adopt = tuple(pod.name for pod in ours if pod.controller_uid is None and not pod.terminating)
    return ours, adopt


def _counted(pods: Sequence[WorkerPod], already_replaced: frozenset[str]) -> list[WorkerPod]:
    return [pod for pod in pods if not pod.terminating and pod.uid not in already_replaced]


def _ready(ours: Sequence[WorkerPod], desired: int) -> int:
    return sum(1 for pod in ours if pod.running and pod.index is not None and pod.index < desired)


def _all_succeeded(ours: Sequence[WorkerPod], desired: int) -> bool:
    succeeded = {pod.index for pod in ours if pod.phase == POD_SUCCEEDED and not pod.terminating}
    return desired > 0 and all(index in succeeded for index in range(desired))


def _active_phase(ours: Sequence[WorkerPod], desired: int, ready: int, start_time: str | None) -> Phase:
    existing = [pod for pod in ours if not pod.terminating]
    if ready >= desired and len(existing) == desired:
        return JobPhase.RUNNING
    if start_time:
        return JobPhase.SCALING
    if any(pod.unscheduled for pod in existing):
        return JobPhase.QUEUED
    return JobPhase.PENDING


def _sized(sizing: SizingStatus) -> ConditionUpdate:
    if sizing.fits:
        return ConditionUpdate(ConditionType.SIZED, "True", Reason.FITS, sizing_summary(sizing))
    return ConditionUpdate(ConditionType.SIZED, "False", Reason.DOES_NOT_FIT, sizing_summary(sizing))


def _readiness(ready: int, desired: int, floor: int) -> list[ConditionUpdate]:
    counts = f"{ready}/{desired} workers running"
    return [
        ConditionUpdate(ConditionType.READY, "True", Reason.ALL_WORKERS_READY, counts)
        if ready >= desired
        else ConditionUpdate(ConditionType.READY, "False", Reason.WORKERS_NOT_READY, counts),
        # Running: enough workers to train (the elastic floor), even while scaling.
        ConditionUpdate(ConditionType.RUNNING, "True", Reason.WORKERS_RUNNING, counts)
        if ready >= floor
        else ConditionUpdate(ConditionType.RUNNING, "False", Reason.WORKERS_STARTING, counts),
    ]


def _resumed(status: Mapping[str, Any]) -> list[ConditionUpdate]:
    if is_true(_conditions(status), ConditionType.SUSPENDED):
        return [
            ConditionUpdate(
                ConditionType.SUSPENDED, "False", Reason.RESUMED, "spec.runPolicy.suspend is false"
            )
        ]
    return []


def _restart_events(replaced: Sequence[WorkerPod], restarts: int, max_restarts: int) -> list[JobEvent]:
    first = restarts - len(replaced) + 1
    return [
        JobEvent(
            "Warning",
            EventReason.WORKER_FAILED,
            f"worker {pod.name} failed{f' on {pod.node_name}' if pod.node_name else ''}; replacing it "
            f"(restart {first + offset} of at most {max_restarts})",
        )
        for offset, pod in enumerate(replaced)
    ]


def _ttl_left(observation: JobObservation, completion: str | None) -> float | None:
    """Seconds until ttlSecondsAfterFinished deletes a job that finished at `completion` (0: now), or
    None when the job is kept."""
    try:
        ttl = parse_spec(observation.spec).run_policy.ttl_seconds_after_finished
    except InvalidSpec:
        return None
    finished_at = parse_rfc3339(completion)
    if ttl is None or finished_at is None:
        return None
    return max(0.0, (finished_at + timedelta(seconds=ttl) - observation.now).total_seconds())


# Conditions whose change is worth an Event, and the Event's type.
_EVENTFUL: dict[tuple[str, str], EventType] = {
    (ConditionType.SIZED, "True"): "Normal",
    (ConditionType.SIZED, "False"): "Warning",
    (ConditionType.READY, "True"): "Normal",
    (ConditionType.SUSPENDED, "True"): "Normal",
    (ConditionType.SUSPENDED, "False"): "Normal",
    (ConditionType.SUCCEEDED, "True"): "Normal",
    (ConditionType.FAILED, "True"): "Warning",
}
_EVENTFUL_READY_REASONS: dict[str, EventType] = {
    Reason.INVALID_SPEC: "Warning",
    Reason.TOO_FEW_WORKERS: "Warning",
}


def _transition_events(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> list[JobEvent]:
    events = []
    for condition in current:
        before = find_condition(previous, condition["type"])
        key = (condition["status"], condition["reason"], condition["message"])
        if before is not None and (before.get("status"), before.get("reason"), before.get("message")) == key:
            continue
        event_type = _EVENTFUL.get((condition["type"], condition["status"]))
        if condition["type"] == ConditionType.READY and condition["status"] == "False":
            event_type = _EVENTFUL_READY_REASONS.get(condition["reason"])
        if event_type:
            events.append(JobEvent(event_type, condition["reason"], condition["message"]))
    return events


def _to_decision(
    observation: JobObservation,
    draft: _Draft,
    sizing: SizingStatus | None,
    ours: Sequence[WorkerPod],
    adopt: tuple[str, ...],
) -> Decision:
    previous = observation.status
    now = rfc3339(observation.now)
    conditions = apply_conditions(_conditions(previous), draft.updates, observation.generation, now)
    existing = _counted(ours, observation.already_replaced)
    ready = sum(1 for pod in existing if pod.running)
    if sizing is None and draft.phase in FINISHED_PHASES:
        sizing = _previous_sizing(previous)
    completion = draft.completion_time or previous.get("completionTime")
    status = {
        "observedGeneration": observation.generation,
        "conditions": conditions,
        "phase": draft.phase,
        "sizing": sizing.model_dump(by_alias=True) if sizing else None,
        "replicas": len(existing),
        "readyReplicas": ready,
        "selector": job_selector(observation.job.name),
        "restarts": draft.restarts,
        "workers": workers_column(ready, draft.desired),
        "perDeviceMemory": format_gib(sizing.per_device_bytes) if sizing else None,
        "startTime": draft.start_time or previous.get("startTime"),
        "completionTime": completion,
    }
    per_worker = sizing.accelerators_per_worker if sizing else 0
    live = [pod for pod in existing if not pod.finished]
    finished = draft.phase in FINISHED_PHASES and not draft.delete_job
    requeue_after = _ttl_left(observation, completion) if finished else None
    return Decision(
        status=TrainingJobStatus.model_validate(status),
        service=None if draft.phase in FINISHED_PHASES else build_headless_service(observation.job),
        create=draft.create,
        worker_set=draft.worker_set,
        delete=draft.delete,
        replace=draft.replace,
        adopt=adopt,
        events=tuple(_transition_events(_conditions(previous), conditions) + draft.events),
        delete_job=draft.delete_job,
        requeue_after=requeue_after,
        sizing=sizing,
        desired_workers=draft.desired or 0,
        requested_accelerators=len(live) * per_worker,
    )


def _previous_sizing(status: Mapping[str, Any]) -> SizingStatus | None:
    raw = status.get("sizing")
    try:
        return SizingStatus.model_validate(raw) if raw else None
    except ValueError:
        return None


__all__ = [
    "Decision",
    "JobEvent",
    "JobObservation",
    "ReconcileSettings",
    "decide",
]
