"""How many of a job's workers its namespace's ResourceQuotas leave room for (pure).

The API server refuses a pod that would take a quota over its hard limit (403). A gang admitted past its
quota would preempt or shrink other jobs for workers that can never be created, so a job's demand is
capped at what the quotas allow, and a queued job whose minimum is over them asks for nothing
(decisions/scheduled.py, Reason.QUOTA_EXCEEDED). The reading follows kube-apiserver's pod evaluator
(pkg/quota/v1/evaluator/core/pods.go): a pod is charged `pods`/`count/pods`, its cpu, memory and
ephemeral-storage requests and limits, and its extended resources as `requests.<name>`, and a quota
charges only the pods its scopes select. A quota whose scopes cannot be read here is left to the API
server, whose refusal the operator still handles (controller/refusals.py).

A quota not counted yet (created a moment ago: kube-controller-manager has not written its status) limits
nothing at the API server until it is, which takes it a moment; its room is unknown till then, so it has
room for no new worker here: a job waits for the count rather than preempt other jobs for workers the
API server would refuse once it is done (QuotaRoom.counted). Its status's watch event decides them again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubefit.api.quantity import exact_quantity, is_quantity

# The quota keys a pod is charged under, for cpu, memory and ephemeral-storage: each resource's request is
# charged as "requests.<name>" and as plain "<name>", its limit as "limits.<name>".
_STANDARD = ("cpu", "memory", "ephemeral-storage")
_POD_COUNTS = ("pods", "count/pods")
_HUGE_PAGES = "hugepages-"
_NOT_TERMINAL = "NotTerminating"
QUOTA_MESSAGE_START = "ResourceQuota "  # how every message of a quota's room begins (QuotaRoom)


@dataclass(frozen=True)
class ScopeTerm:
    """One term of a quota's scopeSelector (or one of its `scopes`, as the API server turns them into
    terms with operator Exists)."""

    scope: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Quota:
    """A ResourceQuota as its status reads: what it allows and what is charged to it now. One not `counted`
    yet (no status) holds its spec's limits and no usage."""

    name: str
    hard: Mapping[str, Decimal]
    used: Mapping[str, Decimal]
    scopes: tuple[ScopeTerm, ...] = ()
    uid: str = field(default="", compare=False)  # kopf's key of its index entry, for the relist check
    counted: bool = True


@dataclass(frozen=True)
class QuotaRoom:
    """The quota that leaves room for the fewest of a job's workers, and for how many in all (its own pods'
    charges counted as room: they are its workers, or go)."""

    quota: str
    resource: str
    hard: Decimal
    used_by_others: Decimal
    per_worker: Decimal
    workers: int
    counted: bool = True

    def cap(self) -> str:
        """What the quota leaves a job it holds below its replicas, without the usage of other pods (which
        changes often, and would rewrite the job's status each time)."""
        if not self.counted:
            return self.describe()
        return (
            f"{QUOTA_MESSAGE_START}{self.quota} has room for {self.workers} of the job's workers ({self.resource}: "
            f"{_amount(self.hard)} in all, {_amount(self.per_worker)} per worker)"
        )

    def describe(self) -> str:
        if not self.counted:
            return (
                f"{QUOTA_MESSAGE_START}{self.quota} is not counted yet ({self.resource}: {_amount(self.hard)}; the "
                "quota controller has not written its status): the job waits for the count"
            )
        return (
            f"{QUOTA_MESSAGE_START}{self.quota} has room for {self.workers} of the job's workers "
            f"({self.resource}: {_amount(self.used_by_others)} of {_amount(self.hard)} used by other pods, "
            f"{_amount(self.per_worker)} per worker)"
        )


@dataclass(frozen=True)
class OwnPods:
    """The job's own pods as its quotas charge them now: `charged` live or terminating pods (and creates
    kopf's index does not show yet), each like the worker it would create, and `finished` ones, which
    only object counts (count/pods) charge."""

    charged: int = 0
    finished: int = 0

    def charge(self, resource: str, per_worker: Decimal) -> Decimal:
        finished = self.finished if resource == "count/pods" else 0
        return (self.charged + finished) * per_worker


def _amount(value: Decimal) -> str:
    return format(value.normalize(), "f")


def quota_from(body: Mapping[str, Any]) -> Quota | None:
    """A ResourceQuota object as a Quota: its status's limits and usage, or where it has no status yet its
    spec's limits, not counted (the module's docstring). None where a quantity does not parse, or it limits
    nothing."""
    metadata, spec, status = (body.get(key) or {} for key in ("metadata", "spec", "status"))
    try:
        asked = _quantities(spec.get("hard"))
        counted, used = _quantities(status.get("hard")), _quantities(status.get("used"))
    except ValueError:
        return None
    is_counted = bool(counted) and set(asked) <= set(counted)
    if is_counted:
        # A spec edited a moment ago: the API server goes by the status until the controller counts the
        # quota again; a limit lowered already is taken at once.
        hard = {key: min(limit, asked.get(key, limit)) for key, limit in counted.items()}
    else:
        hard, used = asked, {}  # not counted yet, or a key added to its spec that is not counted yet
    if not hard:
        return None
    terms = [ScopeTerm(str(scope), "Exists") for scope in spec.get("scopes") or []]
    for term in (spec.get("scopeSelector") or {}).get("matchExpressions") or []:
        values = tuple(str(value) for value in term.get("values") or [])
        terms.append(ScopeTerm(str(term.get("scopeName")), str(term.get("operator")), values))
    name, uid = str(metadata.get("name") or ""), str(metadata.get("uid") or "")
    return Quota(name, hard, used, tuple(terms), uid, is_counted)


def _quantities(amounts: Any) -> dict[str, Decimal]:
    """A quota's hard or used amounts by key (none where it states none); ValueError for one that does not
    parse."""
    if not isinstance(amounts, Mapping):
        return {}
    return {str(key): _quantity(value) for key, value in amounts.items()}


def _quantity(value: Any) -> Decimal:
    parsed = exact_quantity(value) if isinstance(value, int | str) and is_quantity(value) else None
    if parsed is None:
        raise ValueError(f"not a quantity: {value!r}")
    return parsed


def pod_charges(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """What creating `pod` charges to a quota that selects it, by quota key (the pod evaluator's usage)."""
    spec = pod.get("spec") or {}
    requests, limits = _pod_resources(spec, "requests"), _pod_resources(spec, "limits")
    charges = {key: Decimal(1) for key in _POD_COUNTS}
    for name, amount in requests.items():
        if name in _STANDARD or name.startswith(_HUGE_PAGES):
            charges[name] = charges[f"requests.{name}"] = amount
        elif _is_extended(name):
            charges[f"requests.{name}"] = amount
    for name, amount in limits.items():
        if name in _STANDARD:
            charges[f"limits.{name}"] = amount
    # A quota on the cpu or memory request or limit of a pod that states none: the API server refuses the pod
    # ("must specify"), unless a LimitRange's default fills it in first, which is not read here. Not judged
    # (no charge): judging it could keep a job waiting that the API server would admit.
    return charges


def _is_extended(name: str) -> bool:
    """An extended resource (nvidia.com/gpu), as Kubernetes tells it from a native one (kubernetes.io/...)."""
    return "/" in name and "kubernetes.io/" not in name and not name.startswith(("requests.", "limits."))


def _pod_resources(spec: Mapping[str, Any], kind: str) -> dict[str, Decimal]:
    """The pod's requests (or limits) as the API server totals them: its containers and sidecars (init
    containers with restartPolicy Always) together, or an init container with the sidecars started before
    it, whichever is more. A container's limit stands for its request where it gives none."""
    running: dict[str, Decimal] = {}
    sidecars: dict[str, Decimal] = {}
    peak: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        _add(running, _container_resources(container, kind))
    for init in spec.get("initContainers") or []:
        amounts = _container_resources(init, kind)
        if init.get("restartPolicy") == "Always":
            _add(sidecars, amounts)
        else:
            starting = dict(sidecars)
            _add(starting, amounts)
            for name, amount in starting.items():
                peak[name] = max(peak.get(name, Decimal(0)), amount)
    _add(running, sidecars)
    return {
        name: max(running.get(name, Decimal(0)), peak.get(name, Decimal(0))) for name in {*running, *peak}
    }


def _add(total: dict[str, Decimal], amounts: Mapping[str, Decimal]) -> None:
    for name, amount in amounts.items():
        total[name] = total.get(name, Decimal(0)) + amount


def _container_resources(container: Mapping[str, Any], kind: str) -> dict[str, Decimal]:
    resources = container.get("resources") or {}
    amounts = dict(resources.get("limits") or {})
    if kind == "requests":
        amounts.update(resources.get("requests") or {})
    parsed = {}
    for name, value in amounts.items():
        try:
            parsed[str(name)] = _quantity(value)
        except ValueError:
            continue  # the API server would refuse the pod itself; not the quota's to say
    return parsed


def selects(quota: Quota, pod: Mapping[str, Any]) -> bool | None:
    """Whether `quota` charges `pod`; None for a scope this reading does not know."""
    spec = pod.get("spec") or {}
    for term in quota.scopes:
        matched = _term_selects(term, spec)
        if matched is not True:
            return matched
    return True


def _term_selects(term: ScopeTerm, spec: Mapping[str, Any]) -> bool | None:
    if term.scope in ("Terminating", _NOT_TERMINAL):
        deadline = spec.get("activeDeadlineSeconds")
        terminating = isinstance(deadline, int) and deadline >= 0
        return terminating == (term.scope == "Terminating")
    if term.scope in ("BestEffort", "NotBestEffort"):
        # The QoS class: BestEffort is no cpu or memory request or limit in any container.
        best_effort = not any(
            name in ("cpu", "memory")
            for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
            for name in _container_resources(container, "requests")
        )
        return best_effort == (term.scope == "BestEffort")
    if term.scope == "PriorityClass":
        return _priority_selects(term, str(spec.get("priorityClassName") or ""))
    return None


def _priority_selects(term: ScopeTerm, priority_class: str) -> bool | None:
    if not priority_class:
        # The Priority admission plugin gives the pod the cluster's globalDefault class, if one is set, before
        # the quota sees it: which is not read here.
        return None
    if term.operator == "Exists":
        return True
    if term.operator == "DoesNotExist":
        return False
    if term.operator == "In":
        return priority_class in term.values
    if term.operator == "NotIn":
        return priority_class not in term.values
    return None


def quota_room(quotas: Sequence[Quota], pod: Mapping[str, Any], own: OwnPods = OwnPods()) -> QuotaRoom | None:
    """The quota of `quotas` that leaves room for the fewest pods like `pod` (a job's worker), counting the
    job's `own` pods' charges as its room too, and before that any quota not counted yet (room for none);
    None where no quota that selects the pod limits anything it is charged (or one does that this reading
    cannot judge: left to the API server)."""
    charges = pod_charges(pod)
    tightest: QuotaRoom | None = None
    for quota in quotas:
        if selects(quota, pod) is not True:
            continue
        for resource, hard in quota.hard.items():
            per_worker = charges.get(resource)
            if not per_worker:
                continue  # not charged: 0, or a cpu or memory key the worker does not state (pod_charges)
            others = quota.used.get(resource, Decimal(0)) - own.charge(resource, per_worker)
            others = max(others, Decimal(0))
            workers = max(int((hard - others) // per_worker), 0) if quota.counted else 0
            if tightest is None or (quota.counted, workers) < (tightest.counted, tightest.workers):
                tightest = QuotaRoom(quota.name, resource, hard, others, per_worker, workers, quota.counted)
    return tightest


@dataclass(frozen=True)
class QuotaClaim:
    """One quota key a job's workers are charged under: the scheduling pass shares that key's free amount,
    read at the pass, among the jobs of the namespace (QuotaBudget)."""

    pool: tuple[str, str, str]  # namespace, quota name, resource
    per_worker: Decimal


def quota_claims(namespace: str, quotas: Sequence[Quota], pod: Mapping[str, Any]) -> tuple[QuotaClaim, ...]:
    """Every key of `quotas` that `pod` (a job's worker) is charged under, for the pass's budget."""
    charges = pod_charges(pod)
    claims = []
    for quota in quotas:
        if selects(quota, pod) is not True:
            continue
        for resource in sorted(quota.hard):
            per_worker = charges.get(resource)
            if per_worker:
                claims.append(QuotaClaim((namespace, quota.name, resource), per_worker))
    return tuple(claims)


def quota_free(namespace: str, quotas: Iterable[Quota]) -> dict[tuple[str, str, str], Decimal]:
    """Each key of the namespace's quotas -> its free amount now (hard - used; none while not counted)."""
    free = {}
    for quota in quotas:
        for resource, hard in quota.hard.items():
            left = hard - quota.used.get(resource, Decimal(0))
            free[(namespace, quota.name, resource)] = left if quota.counted else Decimal(0)
    return free


@dataclass(frozen=True)
class QuotaState:
    """What the pass reads of the quotas: every claimed key's free amount now, and each job's workers
    charged to its quotas now (its pods not finished)."""

    free: Mapping[tuple[str, str, str], Decimal]
    charged: Mapping[tuple[str, str], int]


class QuotaBudget:
    """The free amount of every quota key the pass's jobs claim, shared as the pass grants workers: two jobs
    of a namespace that each fit its quota alone are not both granted its room."""

    def __init__(self, free: Mapping[tuple[str, str, str], Decimal]) -> None:
        self.free = dict(free)
        self.read = dict(free)  # as the quotas read, before any worker was counted
        # Quota that jobs shrunk or preempted in the pass free beyond what the exempt job they made room for
        # was short of: charged until their pods are gone, so only another exempt job (which makes room for
        # itself rather than wait) counts it, and no one is preempted for it a second time.
        self.exempt_extra: dict[tuple[str, str, str], Decimal] = {}
        # Keys a queued job waits on (its minimum over what is left) -> the queue order of the first such job:
        # no job behind it grows into them.
        self.held: dict[tuple[str, str, str], tuple[Any, ...]] = {}

    def more(self, claims: Sequence[QuotaClaim], limit: int) -> int:
        """How many of `limit` more workers, not charged to the quotas yet, the budget has room for."""
        allowed = limit
        for claim in claims:
            if claim.pool in self.free:
                allowed = min(allowed, max(int(self.free[claim.pool] // claim.per_worker), 0))
        return allowed

    def take(self, claims: Sequence[QuotaClaim], workers: int) -> None:
        """Charges `workers` granted workers, not charged to the quotas yet, to the budget."""
        for claim in claims:
            if claim.pool in self.free:
                self.free[claim.pool] -= workers * claim.per_worker

    def describe(self, claims: Sequence[QuotaClaim], needed: int) -> str:
        """Why `needed` more workers do not fit: the tightest of `claims`."""
        known = [claim for claim in claims if claim.pool in self.free]
        tightest = min(known, key=lambda claim: self.free[claim.pool] // claim.per_worker)
        namespace, quota, resource = tightest.pool
        left = max(self.free[tightest.pool], Decimal(0))
        return (
            f"ResourceQuota {quota} has room for {self.more(claims, needed)} more of its workers once the "
            f"jobs of {namespace} granted before it are counted ({resource}: {_amount(left)} left, "
            f"{_amount(tightest.per_worker)} per worker); it needs {needed}"
        )
