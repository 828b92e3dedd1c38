"""The reconcile decision for one TrainingJob: pure, from an observation to the changes to make.

The controller observes (the job, its worker pods, the node inventory), calls `decide`, and applies the
Decision: Service and pods to create, pods to delete, the status to write, events to post. Calling it
again with the same observation gives the same decision, so every trigger can share this one path.

Pods to create are worker indices, not manifests: the controller builds each one just before creating
it (`Decision.worker_pod`), a bounded batch at a time, so what a decision holds does not grow with the
worker count. Operator-wide limits come in as `ReconcileSettings`, so `decide` stays a pure function.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from kubefit.api.conditions import FINISHED_PHASES, ConditionType, EventReason, EventType, JobPhase, Reason
from kubefit.api.formatting import index_ranges, parse_index_ranges, sizing_summary, workers_column
from kubefit.api.models import Condition, GangStatus, SizingStatus, TrainingJobSpec, TrainingJobStatus
from kubefit.api.units import format_gib, parse_rfc3339, rfc3339
from kubefit.api.validation import FieldError, InvalidSpec, parse_spec, pruned, rule_errors, schema_spec
from kubefit.builders.naming import DEFAULT_CLUSTER_DOMAIN as DEFAULT_CLUSTER_DOMAIN  # re-exported
from kubefit.builders.naming import (
    DNS_LABEL_MAX,
    DNS_NAME_MAX,
    JobRef,
    job_selector,
    rendezvous_host,
    worker_name,
)
from kubefit.builders.naming import host_domain as host_domain  # re-exported: the workers' DNS domain
from kubefit.builders.pods import WorkerSet, build_worker_pod
from kubefit.builders.service import build_headless_service
from kubefit.decisions.conditions import ConditionUpdate, apply_conditions, find_condition, is_true
from kubefit.decisions.draft import (
    Draft,
    JobContext,
    JobEvent,
    conditions_of,
    not_running,
    restarts_of,
    sized,
)
from kubefit.decisions.gang import previous_gang
from kubefit.decisions.held import with_held_workers
from kubefit.decisions.inventory import Inventory
from kubefit.decisions.job_sizing import JobSizing, size_job
from kubefit.decisions.observed import WorkerPod
from kubefit.decisions.quota import Quota
from kubefit.decisions.running import training_ended
from kubefit.decisions.running_group import (
    RunningGroup,
    held_count_note,
    kept_by_running_group,
    running_group,
)
from kubefit.decisions.scheduled import scheduled, suspended
from kubefit.decisions.workers import WorkerBounds, stop_workers
from kubefit.sizing.catalog import Catalog
from kubefit.sizing.planner import floor_needs

if TYPE_CHECKING:
    from kubefit.decisions.admission import Demand

logger = logging.getLogger("kubefit.decisions")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# 1024 workers of 8 accelerators are 8,192 devices: more than all but the largest clusters hold, yet a
# typo (replicas: 100000) cannot make the operator create and track tens of thousands of pods. A cluster
# that runs bigger jobs raises it with `kubefit run --max-workers-per-job` (chart: maxWorkersPerJob).
DEFAULT_MAX_WORKERS_PER_JOB = 1024
# The kubelet refuses a pod whose FQDN hostname (setHostnameAsFQDN) is longer (kubelet_pods.go, hostnameMaxLen).
FQDN_HOSTNAME_MAX = 64


@dataclass(frozen=True)
class ReconcileSettings:
    """Operator-wide settings that decisions depend on (from `kubefit run`'s flags)."""

    max_workers_per_job: int = DEFAULT_MAX_WORKERS_PER_JOB
    # The kubelets' --cluster-domain: a worker's FQDN ends in it (the rendezvous address, setHostnameAsFQDN).
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
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
    # The accelerator nodes: those a worker pod could land on (placeable) and those the template's
    # nodeSelector, required node affinity or tolerations rule out (excluded).
    inventory: Inventory
    now: datetime
    already_replaced: frozenset[str] = frozenset()  # uids of failed pods deleted for replacement
    # Workers the scheduling pass grants the job (AdmissionPlan.grants); None: not decided yet (queued).
    grant: int | None = None
    # Why a queued job waits (AdmissionPlan.waiting), and why its grant changed (AdmissionPlan.reasons).
    waiting: str | None = None
    grant_reason: str | None = None
    grant_reason_want: int | None = None  # the workers the job wanted when the pass gave grant_reason
    # The kubernetes.io/hostname labels of the nodes the pass reserved for the job's unbound workers: new
    # workers prefer them (scheduler.Grant.hostnames).
    reserved_hostnames: frozenset[str] = frozenset()
    # Workers of a job shrunk or preempted for it still hold devices (scheduler.Grant), and when they were
    # last seen gone: the gang clock waits for them (decisions/running.py).
    places_held: bool = False
    places_freed_at: datetime | None = None
    # The jobs (namespace, name) whose leaving workers hold them: status.gang.roomFrom.
    places_held_by: frozenset[tuple[str, str]] = frozenset()
    # The places the pass reserved for the job's unbound workers, node name -> workers (scheduler.Grant).
    reserved_places: Mapping[str, int] = field(default_factory=dict)
    # Acknowledgements of the open checkpoint request (status.checkpoint.requestId): worker pod -> step.
    checkpoint_acks: Mapping[str, int] = field(default_factory=dict)
    # When this operator process offered that request to the workers (None: when it was opened). An operator
    # restarted during the wait tells them only then, and they get the whole grace from there.
    checkpoint_told_at: datetime | None = None
    # metadata.creationTimestamp: the queue's age order (older first). None: `now`.
    created: datetime | None = None
    # Worker creates the API server refused in a row (a 400, 403 or 422: Pod Security Admission, an admission
    # webhook, a quota), for this generation: worker name -> the first of those refusals, the last's message.
    refused_creates: Mapping[str, tuple[datetime, str]] = field(default_factory=dict)
    # The job's last worker create when it was refused and none has gone through since (this generation), nor
    # a dry-run create of its first worker (controller/refusals.py): its message and when. Its demand then
    # neither shrinks nor preempts other jobs: its workers would likely be refused again, and the room taken
    # for nothing.
    refusal: tuple[str, datetime] | None = None
    # The ResourceQuotas of the job's namespace (decisions/quota.py): its demand stays within their room.
    quotas: tuple[Quota, ...] = ()
    # Workers this process created that kopf's index of pods does not show yet: charged to the quotas already.
    unseen_creates: int = 0
    # A job of a lower priority in the namespace has live workers, whose shrink or preemption frees quota too:
    # the quotas are left to the API server (its refusal handled as before).
    quota_waived: bool = False


@dataclass(frozen=True)
class Decision:
    # The whole status; the controller patches status.model_dump(by_alias=True, exclude_none=False).
    status: TrainingJobStatus
    service: dict[str, Any] | None = None
    create: tuple[int, ...] = ()  # worker indices to create, lowest first; `worker_pod` builds each
    worker_set: WorkerSet | None = None  # what every worker of this decision shares (None: no creates)
    # A queued job whose refusal holds (JobObservation.refusal): its first worker, to try with a dry-run
    # create (probe_pod); None: nothing to try.
    probe: WorkerSet | None = None
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
    requested_accelerators: int = 0  # devices the live workers' pods hold (request)
    allocated_accelerators: int = 0  # of those, the devices of running workers
    # What the job asks of the scheduling pass; None when it needs nothing (invalid, finished,
    # suspended, does not fit, or in a gang-timeout backoff).
    demand: Demand | None = None
    # The checkpoint request that must be open on the board for this job; None: close any.
    checkpoint_request: str | None = None
    # A ResourceQuota of its namespace holds the job below what it asks: decide it again when one changes.
    quota_limited: bool = False

    def worker_pod(self, index: int) -> dict[str, Any]:
        """The manifest of worker `index`, one of `create`."""
        if self.worker_set is None:
            raise ValueError("this decision creates no workers")
        return build_worker_pod(self.worker_set, index)

    def probe_pod(self, index: int = 0) -> dict[str, Any] | None:
        """Worker `index`, to try with a dry-run create while the job's refusal holds (None: none)."""
        return build_worker_pod(self.probe, index) if self.probe is not None else None


# ------------------------------------------------------------------------------------------ entry


def decide(
    observation: JobObservation, catalog: Catalog, settings: ReconcileSettings = ReconcileSettings()
) -> Decision:
    previous = observation.status
    ours, adopt = _our_workers(observation)
    if is_true(conditions_of(previous), ConditionType.SUCCEEDED) or is_true(
        conditions_of(previous), ConditionType.FAILED
    ):
        return _to_decision(observation, _already_finished(observation, ours), None, ours, adopt)
    running = running_group(previous, ours)
    try:
        spec, job_sizing = checked_spec(
            observation.job.name,
            observation.spec,
            catalog,
            settings.max_workers_per_job,
            kept_accelerator(observation.inventory, running, spec_accelerator(observation.spec)),
            domain=host_domain(observation.job.namespace, settings.cluster_domain),
            running=running,
        )
    except InvalidSpec as invalid:
        return _to_decision(
            observation, with_held_workers(_invalid(invalid), observation, ours), None, ours, adopt
        )
    sizing, bounds = job_sizing.sizing, job_sizing.bounds
    context = JobContext(
        observation, spec, sizing, bounds, ours, catalog, settings, job_sizing.host_bytes_per_worker
    )
    if spec.run_policy.suspend and not training_ended(context):
        draft = suspended(context)
    elif not bounds.feasible or (not sizing.fits and spec.resources.fit_policy == "Enforce"):
        draft = with_held_workers(_blocked(spec, sizing, bounds, len(context.live)), observation, ours)
    else:
        draft = scheduled(context)
    draft.events.extend(_overprovisioning_events(job_sizing.advice, observation.status))
    return _to_decision(observation, draft, sizing, ours, adopt, _wanted_workers(context, draft))


def _wanted_workers(ctx: JobContext, draft: Draft) -> int | None:
    """The desired count of the Workers column: what the spec asks within its bounds (`replicas` where
    they allow no count), not only what was granted, so that a queued job reads 0/4, not 0/0, and one
    granted 2 of 4 reads 2/4. None (the grant) for a job suspended or finished, or whose training ended."""
    if draft.phase in (*FINISHED_PHASES, JobPhase.SUSPENDED) or training_ended(ctx):
        return None
    return ctx.bounds.desired if ctx.bounds.feasible else ctx.spec.workers.replicas


def kept_accelerator(
    inventory: Inventory | None, running: RunningGroup | None, declared: Any
) -> Inventory | None:
    """While workers run, the planner sees only the nodes of the accelerator they run on. Planned against
    every free device instead, `accelerator: auto` moved to another device whenever capacity elsewhere came
    free, and new or replacement workers then joined the running group on that other device. `running`:
    what the live workers share (running_group); `declared`: the spec's resources.accelerator
    (spec_accelerator). `kubefit size --cluster` applies it too."""
    accelerator = running.accelerator if running is not None else None
    if inventory is None or accelerator is None:
        return inventory
    if declared not in (None, "auto") or accelerator not in inventory.pools:
        return inventory  # a spec that names its device, or one whose nodes are gone: planned as any job
    return inventory.only(accelerator)


def spec_accelerator(raw_spec: Any) -> Any:
    """spec.resources.accelerator as written, None where the spec does not have it."""
    resources = raw_spec.get("resources") if isinstance(raw_spec, Mapping) else None
    return resources.get("accelerator") if isinstance(resources, Mapping) else None


def checked_spec(  # noqa: PLR0913 - the job, the operator's settings, and how much to work out
    name: str | None,
    raw_spec: Any,
    catalog: Catalog,
    max_workers_per_job: int,
    inventory: Inventory | None = None,
    domain: str | None = None,
    advise: bool = True,
    running: RunningGroup | None = None,
    strict: bool = False,
) -> tuple[TrainingJobSpec, JobSizing]:
    """The spec and its sizing, or InvalidSpec naming every field at fault: every rule the CRD's schema
    cannot express, for the reconcile (Ready=False InvalidSpec), the admission webhook and `kubefit size`
    alike. `name` None (a manifest without one, for `kubefit size`) skips the job-name check, and `domain`
    None (host_domain: no namespace known) the length of a worker's FQDN. `advise` False (the webhook, which
    needs only the errors) leaves the planner's notes and remedies out of the sizing. `running`: what
    the job's live workers share, which an elastic pytorch job keeps (decisions/running_group.py).
    `strict` False (a stored or admitted object) drops the fields this operator's CRD does not name, as
    the API server would have (validation.pruned); True (a file) refuses them as typos.

    Every check that can run does, so one apply shows every error: the schema's errors stop the rest
    (they need a parsed spec) but for the name's pattern. One error per field, the earliest check's."""
    if not strict:
        raw_spec = _as_stored(name, raw_spec)
    try:
        spec = schema_spec(raw_spec)
    except InvalidSpec as invalid:
        raise _once([*invalid.errors, *_name_errors(name, None)]) from None
    device_kept = inventory is None or running is None or running.accelerator in inventory.pools
    kept = kept_by_running_group(spec, running, catalog, device_kept)
    spec = kept.spec
    errors = [*rule_errors(spec), *_operator_errors(spec, name, max_workers_per_job, domain)]
    try:
        check = operator_check(name, max_workers_per_job, domain)
        job_sizing = size_job(
            spec,
            catalog,
            inventory,
            check=check,
            advise=advise,
            has_live_workers=running is not None,
            count_held=kept.count_held,
        )
    except InvalidSpec as invalid:
        errors.extend(invalid.errors)
    if errors:
        raise _once(errors)
    waiting = list(kept.waiting)
    if kept.count_held and not (job_sizing.sizing.fits and job_sizing.bounds.feasible):
        waiting.append(held_count_note(job_sizing.sizing.accelerators_per_worker))
    if waiting:
        warned = job_sizing.sizing.model_copy(update={"warnings": [*job_sizing.sizing.warnings, *waiting]})
        job_sizing = replace(job_sizing, sizing=warned)
    return spec, job_sizing


def _as_stored(name: str | None, raw_spec: Any) -> Any:
    """`raw_spec` without the fields this operator's CRD does not name: only a newer CRD puts one in a
    stored object (the API server prunes the others), so it is a field of a newer version, not a typo."""
    spec, dropped = pruned(raw_spec, "spec")
    if dropped:
        logger.debug("job %s: ignored fields this operator does not know: %s", name, ", ".join(dropped))
    return spec


def _once(errors: Sequence[FieldError]) -> InvalidSpec:
    """InvalidSpec with the first of `errors` on each field: a later check often fails only because of an
    earlier one's fault (tensorParallel splitting the heads also straddles the workers)."""
    first: dict[str, FieldError] = {}
    for error in errors:
        first.setdefault(error.path, error)
    return InvalidSpec(list(first.values()))


@dataclass(frozen=True)
class OperatorCheck:
    """The checks of a parsed spec beyond its schema and the planner's: the per-job worker limit and the
    job name's length with its workers' host names (`name` None skips it). The planner runs them on its
    remedies too, so none names a change the operator would refuse. A value, so that plans made with equal
    checks are remembered as one (decisions.job_sizing)."""

    name: str | None
    max_workers_per_job: int
    domain: str | None = None

    def __call__(self, spec: TrainingJobSpec) -> None:
        errors = _operator_errors(spec, self.name, self.max_workers_per_job, self.domain)
        if errors:
            raise InvalidSpec(errors)


def operator_check(name: str | None, max_workers_per_job: int, domain: str | None = None) -> OperatorCheck:
    return OperatorCheck(name, max_workers_per_job, domain)


def _operator_errors(
    spec: TrainingJobSpec, name: str | None, max_workers_per_job: int, domain: str | None = None
) -> list[FieldError]:
    return [*_worker_limit_errors(spec, max_workers_per_job), *_name_errors(name, spec, domain)]


def _overprovisioning_events(advice: str | None, previous: Mapping[str, Any]) -> list[JobEvent]:
    """A Normal event the first time a fixed layout is found far bigger than the job needs."""
    already_told = advice in ((previous.get("sizing") or {}).get("warnings") or [])
    return [JobEvent("Normal", EventReason.OVER_PROVISIONED, advice)] if advice and not already_told else []


# ------------------------------------------------------------------------------------------ paths


def _invalid(invalid: InvalidSpec) -> Draft:
    message = "invalid spec: " + "; ".join(str(error) for error in invalid.errors)
    return Draft(
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


def _blocked(spec: TrainingJobSpec, sizing: SizingStatus, bounds: WorkerBounds, live: int) -> Draft:
    """No worker is started; `live` workers that run already are left alone (decisions/held.py)."""
    workers = f"its running workers ({live}) are left alone" if live else "no workers are started"
    if bounds.feasible:
        reason = Reason.DOES_NOT_FIT
        headroom = spec.resources.memory_headroom
        usable = format_gib(int(sizing.device_memory_bytes * (1 - headroom)))
        message = (
            f"{sizing_summary(sizing)}: more than the {usable} usable with {headroom:.0%} headroom; {workers}"
        )
    else:
        reason = Reason.TOO_FEW_WORKERS
        field_name = spec.workers.ceiling_field
        needs = floor_needs(spec, bounds, sizing.min_workers, sizing.accelerators_per_worker)
        message = f"{needs} but spec.workers.{field_name} allows {bounds.ceiling}; {workers}"
    return Draft(
        phase=JobPhase.PENDING,
        updates=[sized(sizing), *not_running(reason, message)],
        desired=0,
    )


def _already_finished(observation: JobObservation, ours: Sequence[WorkerPod]) -> Draft:
    """A job that already succeeded or failed: nothing more runs; the TTL may delete it."""
    status = observation.status
    failed = is_true(conditions_of(status), ConditionType.FAILED)
    completion = status.get("completionTime") or rfc3339(observation.now)
    phase = JobPhase.FAILED if failed else JobPhase.SUCCEEDED
    reason = Reason.JOB_FAILED if failed else Reason.JOB_SUCCEEDED
    ready = find_condition(conditions_of(status), ConditionType.READY)
    # A reconcile error (e.g. the TTL's delete failed) is over once a reconcile of the job succeeds.
    recovered = ready is not None and ready.get("reason") == Reason.RECONCILE_ERROR
    return Draft(
        phase=phase,
        updates=[ConditionUpdate(ConditionType.READY, "False", reason, f"the job {phase.lower()}")]
        if recovered
        else [],
        delete=stop_workers(ours, keep_finished=True),  # finished pods stay, for their logs
        restarts=restarts_of(status),
        desired=0,
        start_time=status.get("startTime"),
        completion_time=completion,
        delete_job=_ttl_left(observation, completion) == 0,
    )


# ------------------------------------------------------------------------------------------ helpers


def _worker_limit_errors(spec: TrainingJobSpec, limit: int) -> list[FieldError]:
    """A job that asks for more workers than this operator runs per job (--max-workers-per-job)."""
    workers = spec.workers
    counts: dict[str, int | None] = {
        "replicas": workers.replicas,
        "maxReplicas": workers.max_replicas,
        "minReplicas": workers.min_replicas,
    }
    return [
        FieldError(
            f"spec.workers.{name}",
            f"{count} workers exceed this operator's limit of {limit} per job "
            "(kubefit run --max-workers-per-job)",
        )
        for name, count in counts.items()
        if count is not None and count > limit
    ]


def _service(job: JobRef, draft: Draft) -> dict[str, Any] | None:
    """The job's headless Service: none for a finished job, nor for one whose name no Service may have (a
    DNS label): the API server refuses it, and a refused create, after the InvalidSpec status that names
    metadata.name, turned it into a ReconcileError retried for ever."""
    if draft.phase in FINISHED_PHASES or len(job.name) > DNS_LABEL_MAX or not _DNS_1035.fullmatch(job.name):
        return None
    return build_headless_service(job)


def _name_errors(
    job_name: str | None, spec: TrainingJobSpec | None, domain: str | None = None
) -> list[FieldError]:
    """The job name becomes the Service name and part of each worker's hostname: both DNS labels, and part
    of the rendezvous address, worker 0's FQDN in `domain` (host_domain). None skips the check; without a
    parsed `spec` (the worker count) only the pattern is checked, and without `domain` no FQDN."""
    if job_name is None:
        return []
    if not _DNS_1035.fullmatch(job_name):
        problem = "must be a DNS label (lowercase letters, digits and '-', starting with a letter)"
    elif spec is not None and len(longest := worker_name(job_name, spec.workers.ceiling - 1)) > DNS_LABEL_MAX:
        problem = f"is too long: worker hostname {longest!r} exceeds {DNS_LABEL_MAX} characters"
    elif rendezvous := _rendezvous_problem(job_name, spec, domain):
        problem = rendezvous
    elif spec is not None and domain is not None and _fqdn_hostname(spec):
        fqdn = f"{worker_name(job_name, spec.workers.ceiling - 1)}.{job_name}.{domain}"
        if len(fqdn) <= FQDN_HOSTNAME_MAX:
            return []
        # The kubelet refuses the pod's sandbox: the worker would wait in ContainerCreating, never failing.
        problem = (
            f"with spec.template.spec.setHostnameAsFQDN, worker FQDN {fqdn!r} is {len(fqdn)} characters; the "
            f"kubelet allows {FQDN_HOSTNAME_MAX}: shorten the job or namespace name, or unset setHostnameAsFQDN"
        )
    else:
        return []
    return [FieldError("metadata.name", problem)]


def _rendezvous_problem(job_name: str, spec: TrainingJobSpec | None, domain: str | None) -> str | None:
    """Why worker 0's FQDN, the workers' rendezvous address (builders/rendezvous.py), is no DNS name: longer
    than 253 characters, or with a label longer than 63 (the namespace's or the cluster domain's: the job's
    are checked before). None when it is one, when the framework has no rendezvous, or with no `spec` or
    `domain` to tell."""
    if spec is None or domain is None or spec.framework == "none":
        return None
    fqdn = rendezvous_host(job_name, domain)
    if len(fqdn) > DNS_NAME_MAX:
        return (
            f"is too long: the rendezvous address {fqdn!r} (worker 0's FQDN) is {len(fqdn)} characters; DNS "
            f"allows {DNS_NAME_MAX}: shorten the job or namespace name"
        )
    label = max(fqdn.split("."), key=len)
    if len(label) > DNS_LABEL_MAX:
        return (
            f"is unusable: the rendezvous address {fqdn!r} (worker 0's FQDN) has the label {label!r}, longer "
            f"than DNS's {DNS_LABEL_MAX} characters (the namespace's or kubefit run --cluster-domain's)"
        )
    return None


def _fqdn_hostname(spec: TrainingJobSpec) -> bool:
    pod_spec = spec.template.get("spec") if isinstance(spec.template, Mapping) else None
    return isinstance(pod_spec, Mapping) and pod_spec.get("setHostnameAsFQDN") is True


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


def _ttl_left(observation: JobObservation, completion: str | None) -> float | None:
    """Seconds until ttlSecondsAfterFinished deletes a job that finished at `completion` (0: now), or
    None when the job is kept."""
    try:
        ttl = parse_spec(pruned(observation.spec, "spec")[0]).run_policy.ttl_seconds_after_finished
    except InvalidSpec:
        ttl = _ttl_as_written(observation.spec)  # edited past validation after it finished: as held.py reads
    finished_at = parse_rfc3339(completion)
    if ttl is None or finished_at is None:
        return None
    return max(0.0, (finished_at + timedelta(seconds=ttl) - observation.now).total_seconds())


def _ttl_as_written(raw: object) -> int | None:
    """spec.runPolicy.ttlSecondsAfterFinished of a spec that does not parse, if it is a count."""
    run_policy = raw.get("runPolicy") if isinstance(raw, Mapping) else None
    ttl = run_policy.get("ttlSecondsAfterFinished") if isinstance(run_policy, Mapping) else None
    return ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl >= 0 else None


# Conditions whose change is worth an Event, and the Event's type.
_EVENTFUL: dict[tuple[str, str], EventType] = {
    (ConditionType.SIZED, "True"): "Normal",
    (ConditionType.SIZED, "False"): "Warning",
    (ConditionType.READY, "True"): "Normal",
    (ConditionType.SUSPENDED, "True"): "Normal",
    (ConditionType.SUSPENDED, "False"): "Normal",
    (ConditionType.SUCCEEDED, "True"): "Normal",
    (ConditionType.FAILED, "True"): "Warning",
    (ConditionType.ADMITTED, "True"): "Normal",  # admitted, scaled up or down, shrunk for priority
}
_EVENTFUL_REASONS: dict[tuple[str, str], EventType] = {
    (ConditionType.READY, Reason.INVALID_SPEC): "Warning",
    (ConditionType.READY, Reason.TOO_FEW_WORKERS): "Warning",
    (ConditionType.READY, Reason.RESTARTING): "Normal",
    (ConditionType.ADMITTED, Reason.QUEUED): "Normal",
    (ConditionType.ADMITTED, Reason.INSUFFICIENT_CAPACITY): "Normal",
    (ConditionType.ADMITTED, Reason.QUOTA_EXCEEDED): "Warning",  # the namespace's quota must change
    (ConditionType.ADMITTED, Reason.GANG_TIMEOUT): "Warning",
    (ConditionType.ADMITTED, Reason.PREEMPTED): "Warning",
}


def _transition_events(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> list[JobEvent]:
    events = []
    for condition in current:
        before = find_condition(previous, condition["type"])
        if before is not None and not _eventful_change(before, condition):
            continue
        event_type = _EVENTFUL.get((condition["type"], condition["status"]))
        if condition["status"] == "False" and condition["type"] in (
            ConditionType.READY,
            ConditionType.ADMITTED,
        ):
            event_type = _EVENTFUL_REASONS.get((condition["type"], condition["reason"]))
        if event_type:
            events.append(JobEvent(event_type, condition["reason"], condition["message"], condition["type"]))
    return events


# The path's own Warning about a failed or lost worker of a fixed group (decisions/running.py) says what
# its Ready=False Restarting says, word for word.
_WORKER_EVENTS = frozenset({EventReason.WORKER_FAILED, EventReason.WORKER_LOST})


def _condition_events(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]], posted: Sequence[JobEvent]
) -> list[JobEvent]:
    """The transition events, less a Restarting that a WorkerFailed or WorkerLost event of the path
    already tells: one failure, one event."""
    told = {event.message for event in posted if event.reason in _WORKER_EVENTS}
    return [
        event
        for event in _transition_events(previous, current)
        if event.reason != Reason.RESTARTING or event.message not in told
    ]


_WAITING_REASONS = frozenset({Reason.QUEUED, Reason.INSUFFICIENT_CAPACITY})


def _eventful_change(before: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """A queued job's message follows the free capacity, and whether it waits for capacity or behind another
    job can change every pass: only a new status, or a reason outside those two, is an Event."""
    queued = now["type"] == ConditionType.ADMITTED and now["status"] == "False"
    if (
        queued
        and before.get("status") == "False"
        and {before.get("reason"), now["reason"]} <= _WAITING_REASONS
    ):
        return False
    fields: tuple[str, ...] = ("status", "reason") if queued else ("status", "reason", "message")
    return any(before.get(name) != now[name] for name in fields)


def _to_decision(
    observation: JobObservation,
    draft: Draft,
    sizing: SizingStatus | None,
    ours: Sequence[WorkerPod],
    adopt: tuple[str, ...],
    wanted: int | None = None,
) -> Decision:
    previous = observation.status
    conditions = apply_conditions(
        conditions_of(previous), draft.updates, observation.generation, rfc3339(observation.now)
    )
    existing = _counted(ours, observation.already_replaced)
    if sizing is None and (draft.phase in FINISHED_PHASES or any(not pod.finished for pod in existing)):
        # A finished job, or one whose spec became invalid while its workers run on (they keep their
        # devices until the spec is put right): the last sizing is still what its workers were given.
        sizing = previous_sizing(previous.get("sizing"))
    status = _status(observation, draft, sizing, existing, conditions, wanted)
    live = [pod for pod in existing if not pod.finished]
    finished = draft.phase in FINISHED_PHASES and not draft.delete_job
    ttl = _ttl_left(observation, status.completion_time) if finished else None
    waits = [wait for wait in (*draft.requeue_after, ttl) if wait is not None]
    return Decision(
        status=status,
        service=_service(observation.job, draft),
        create=draft.create,
        worker_set=draft.worker_set,
        probe=draft.probe,
        delete=draft.delete,
        replace=draft.replace,
        adopt=adopt,
        events=tuple(_condition_events(conditions_of(previous), conditions, draft.events) + draft.events),
        delete_job=draft.delete_job,
        requeue_after=max(0.0, min(waits)) if waits else None,
        sizing=sizing,
        desired_workers=draft.desired or 0,
        requested_accelerators=_devices_held(live, sizing),
        allocated_accelerators=_devices_held([pod for pod in existing if pod.ready], sizing),
        demand=_taking_room(draft.demand, observation, _gang_kept(draft, observation)),
        checkpoint_request=draft.checkpoint.request_id if draft.checkpoint else None,
        quota_limited=draft.quota_limited,
    )


def _taking_room(
    demand: Demand | None, observation: JobObservation, gang: GangStatus | None
) -> Demand | None:
    """The demand, which takes no room from other jobs while the job's workers are refused (refusal), or
    kube-scheduler placed none for a reason other than room (gang.unplaceable)."""
    held = observation.refusal or (gang is not None and gang.unplaceable)
    return replace(demand, makes_room=False) if demand is not None and held else demand


def _devices_held(pods: Sequence[WorkerPod], sizing: SizingStatus | None) -> int:
    """The accelerators `pods` hold, each by its own manifest: a worker created before an edit of the
    device count (stored where the webhook is off) holds the count it was created with."""
    if sizing is None:
        return 0
    held = (pod.holds(sizing.resource_name) for pod in pods)
    return sum(sizing.accelerators_per_worker if count is None else count for count in held)


def _status(
    observation: JobObservation,
    draft: Draft,
    sizing: SizingStatus | None,
    existing: Sequence[WorkerPod],
    conditions: Sequence[Mapping[str, Any]],
    wanted: int | None = None,
) -> TrainingJobStatus:
    previous = observation.status
    ready = sum(1 for pod in existing if pod.ready)
    return TrainingJobStatus(
        observed_generation=observation.generation,
        conditions=[Condition.model_validate(condition) for condition in conditions],
        phase=draft.phase,
        sizing=sizing,
        # The workers this decision creates count already: they exist once it is applied, and counted only
        # when their pods' events come back, each new worker cost one more status patch (docs/performance.md).
        replicas=len(existing) + len(draft.create),
        ready_replicas=ready,
        selector=job_selector(observation.job.name),
        restarts=restarts_of(previous) if draft.restarts is None else draft.restarts,
        workers=workers_column(ready, draft.desired if wanted is None else wanted),
        desired_replicas=draft.desired or 0,
        message=draft.message,
        checkpoint=draft.checkpoint,
        checkpoint_requests=_kept(draft.checkpoint_requests, previous.get("checkpointRequests")),
        gang=_gang_kept(draft, observation),
        succeeded_workers=_succeeded_workers(draft, previous),
        last_failure_time=draft.last_failure_time or previous.get("lastFailureTime"),
        per_device_memory=format_gib(sizing.per_device_bytes) if sizing else None,
        start_time=draft.start_time or previous.get("startTime"),
        completion_time=draft.completion_time or previous.get("completionTime"),
    )


def _kept(value: int | None, before: Any) -> int | None:
    if value is not None:
        return value
    return before if isinstance(before, int) else None


def _succeeded_workers(draft: Draft, previous: Mapping[str, Any]) -> str | None:
    if draft.succeeded_workers is None:
        kept = parse_index_ranges(previous.get("succeededWorkers"))
        return index_ranges(kept) if kept else None
    return index_ranges(draft.succeeded_workers) or None


def _previous_gang(status: Mapping[str, Any]) -> GangStatus | None:
    return previous_gang(status) if status.get("gang") else None


def _gang_kept(draft: Draft, observation: JobObservation) -> GangStatus | None:
    """status.gang as the draft leaves it, with status.gang.refused while the job's refusal holds
    (observation.refusal: a create of its workers that went through, or a spec edit, ends it), and
    status.gang.unplaceable until a worker of the job is placed on a node (one the draft keeps: a gang
    timeout deletes the placed few of a gang it releases), or the spec changes."""
    gang = draft.gang or _previous_gang(observation.status)
    if gang is None:
        return gang
    if gang.refused is not None and observation.refusal is None:
        gang = gang.model_copy(update={"refused": None})
    edited = observation.generation != observation.status.get("observedGeneration")
    if gang.unplaceable is not None and (edited or _placed_any(observation, draft)):
        gang = gang.model_copy(update={"unplaceable": None})
    return gang


def _placed_any(observation: JobObservation, draft: Draft) -> bool:
    """Whether a live worker of the job that the draft keeps is on a node."""
    uid = observation.job.uid
    return any(
        pod.node_name
        and not pod.terminating
        and pod.controller_uid in (None, uid)
        and pod.name not in draft.delete
        for pod in observation.pods
    )


def previous_sizing(raw: Any) -> SizingStatus | None:
    """status.sizing as stored (None where absent or not readable), without the fields a newer operator's
    CRD added (validation.pruned): one unknown field dropped the whole sizing, and with it the devices the
    metrics count for a job whose workers run."""
    if not raw:
        return None
    try:
        return SizingStatus.model_validate(pruned(raw, "status", "sizing")[0])
    except ValueError:
        return None


__all__ = [
    "Decision",
    "JobEvent",
    "JobObservation",
    "ReconcileSettings",
    "decide",
]
