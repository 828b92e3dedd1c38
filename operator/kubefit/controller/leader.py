"""Leader election over a coordination.k8s.io/v1 Lease, so that of several operator replicas one reconciles.

The rules are client-go's (k8s.io/client-go/tools/leaderelection/leaderelection.go, tryAcquireOrRenew):
- a replica takes the Lease when it does not exist, when its holder is empty (released), or when the
  record has not changed for leaseDurationSeconds *as this replica observed it* (its own monotonic clock,
  so clock skew between machines does not matter);
- every write is an update with the resourceVersion that was read: of two replicas racing for an expired
  Lease, the API server lets exactly one through (409 Conflict for the other);
- the leader renews every `retry_period`; if it has not renewed for `renew_deadline` (shorter than the
  lease), it stops leading before anyone else may take over. Here "stops" means the process exits at
  once (as kube-controller-manager does): nothing half-done keeps writing, and the Deployment restarts
  it as a standby;
- a leader that stops cleanly (SIGTERM) releases the Lease (empty holder), so a standby takes over
  within one retry period instead of waiting out the lease.

A standby does nothing but try to take the Lease every `retry_period`: no watches, no handlers. So after
the leader dies, a standby leads within leaseDurationSeconds + 2 x retry_period (LeaseTimings.takeover_bound;
at most 19 s with the defaults), and then starts the operator, whose resume handlers reconcile every job.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3 import exceptions as urllib3_errors

logger = logging.getLogger("kubefit.leader")

# On the operator's own pod: "leader" on the replica that holds the Lease, "standby" on the others. The
# chart's checkpoints Service selects the leader by it, so every replica can be ready (a rollout completes)
# while workers' handshakes reach the one that acts.
ROLE_LABEL = "kubefit.dev/role"
POD_NAME_ENV = "POD_NAME"
POD_NAMESPACE_ENV = "POD_NAMESPACE"
DEFAULT_LEASE_SECONDS = 15  # client-go's defaults: lease 15 s, renew deadline 10 s, retry 2 s
LOST_EXIT_CODE = 3
# A SIGTERM'd leader first waits up to 10 s for its writes (runner.hand_over), all within the pod's 30 s of
# grace; a release that cannot finish in this long leaves the Lease to expire instead.
RELEASE_BUDGET_SECONDS = 5.0
ROLE_LABEL_RETRY_SECONDS = 2.0  # between patches of the role label that failed
ROLE_LABEL_WARN_SECONDS = 300.0  # between warnings of the same failure, while it goes on


@dataclass(frozen=True)
class LeaseTimings:
    """How long a lease lasts, how long the leader keeps trying to renew it, and how often anyone tries."""

    lease_seconds: int = DEFAULT_LEASE_SECONDS
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @classmethod
    def for_lease(cls, lease_seconds: int) -> LeaseTimings:
        """client-go's proportions (15 / 10 / 2) for another lease duration."""
        return cls(lease_seconds, renew_deadline=lease_seconds * 2 / 3, retry_period=lease_seconds / 7.5)

    @property
    def takeover_bound(self) -> float:
        """Longest time from the leader's death to a standby holding the lease (API latency aside).

        The leader renewed at most one retry period before it died; a standby saw that renewal at most one
        retry period later, waits the lease duration from then, and tries every retry period.
        """
        return self.lease_seconds + 2 * self.retry_period


def micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds), as the Lease's acquireTime/renewTime want."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseApi:
    """The three Lease calls (get, create, update); create and update answer None on a 409 Conflict.

    Each call is one request of at most `request_timeout`: urllib3 would otherwise retry a GET or PUT three
    times, and the renew deadline and a release's budget count on the timeout."""

    def __init__(self, configuration: client.Configuration | None = None, request_timeout: float = 5.0):
        configuration = copy.deepcopy(configuration or client.Configuration.get_default_copy())
        configuration.retries = False  # no retries: a failed request raises its own error at once
        api_client = client.ApiClient(configuration)
        self.coordination = client.CoordinationV1Api(api_client)
        self.core = client.CoreV1Api(api_client)  # only to label the replica's own pod (mark_role)
        self.timeout = request_timeout

    def label_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        self.core.patch_namespaced_pod(
            name, namespace, {"metadata": {"labels": labels}}, _request_timeout=self.timeout
        )

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._lease_or_none(
            404,
            lambda: self.coordination.read_namespaced_lease(name, namespace, _request_timeout=self.timeout),
        )

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return self._lease_or_none(
            409,
            lambda: self.coordination.create_namespaced_lease(
                namespace,
                body,  # type: ignore[arg-type]
                _request_timeout=self.timeout,
            ),
        )

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return self._lease_or_none(
            409,
            lambda: self.coordination.replace_namespaced_lease(
                name,
                namespace,
                body,  # type: ignore[arg-type]
                _request_timeout=self.timeout,
            ),
        )

    def _lease_or_none(self, none_on_status: int, call: Callable[[], Any]) -> dict[str, Any] | None:
        """The Lease the call answers, as a dict; None when the API server answers `none_on_status`."""
        try:
            lease = call()
        except ApiException as error:
            if error.status == none_on_status:
                return None
            raise
        return _as_dict(self.coordination.api_client, lease)


def _as_dict(api_client: client.ApiClient, lease: Any) -> dict[str, Any]:
    serialized: dict[str, Any] = api_client.sanitize_for_serialization(lease)
    return serialized


@dataclass
class _Observed:
    """The Lease as this replica last saw it, and when (monotonic): the expiry clock of client-go."""

    spec: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0


class LeaderElector:
    """Takes, renews and releases one Lease for `identity`."""

    def __init__(
        self,
        api: LeaseApi,
        lease: tuple[str, str],  # (namespace, name)
        identity: str,
        timings: LeaseTimings,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.api = api
        self.namespace, self.name = lease
        self.identity = identity
        self.timings = timings
        self.clock = clock
        self._observed = _Observed()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._renewed_at = 0.0  # clock() at the start of the last attempt that wrote the Lease
        self._lost_once = threading.Lock()

    # -- one attempt ---------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True if this replica holds the Lease afterwards."""
        now, started = datetime.now(UTC), self.clock()
        current = self.api.read(self.namespace, self.name)
        if current is None:
            created = self.api.create(self.namespace, self._lease_body(self._spec(now, {}), None))
            return self._record(created, started)
        spec = current.get("spec") or {}
        if spec != self._observed.spec:
            self._observed = _Observed(spec, self.clock())
        if self._held_by_another(spec):
            return False
        body = self._lease_body(self._spec(now, spec), current["metadata"].get("resourceVersion"))
        return self._record(self.api.replace(self.namespace, self.name, body), started)

    def _renew(self) -> bool:
        """One renewal: True if written. Only a Lease this replica still holds is renewed, and nothing is
        written once renewing has stopped: a renewal answered late, after release() emptied the holder,
        must not write this replica back."""
        now, started = datetime.now(UTC), self.clock()
        current = self.api.read(self.namespace, self.name)
        spec = (current or {}).get("spec") or {}
        if spec != self._observed.spec:
            self._observed = _Observed(spec, self.clock())
        if current is None or not self._holds(spec) or self._stop.is_set():
            return False
        body = self._lease_body(self._spec(now, spec), current["metadata"].get("resourceVersion"))
        return self._record(self.api.replace(self.namespace, self.name, body), started)

    def _holds(self, spec: dict[str, Any]) -> bool:
        return spec.get("holderIdentity") == self.identity

    def _held_by_another(self, spec: dict[str, Any]) -> bool:
        holder = spec.get("holderIdentity") or ""
        if not holder or holder == self.identity:
            return False
        duration = spec.get("leaseDurationSeconds") or self.timings.lease_seconds
        return self._observed.at + duration > self.clock()

    def _spec(self, now: datetime, previous: dict[str, Any]) -> dict[str, Any]:
        ours = previous.get("holderIdentity") == self.identity
        transitions = int(previous.get("leaseTransitions") or 0)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.timings.lease_seconds,
            "acquireTime": previous.get("acquireTime") if ours else micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions if ours or not previous else transitions + 1,
        }

    def _lease_body(self, spec: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _record(self, written: dict[str, Any] | None, started: float) -> bool:
        if written is None:
            return False  # another replica wrote first (409)
        self._observed = _Observed(written.get("spec") or {}, self.clock())
        # The renew deadline counts from when the attempt began, not when its answer came: a standby
        # counts the lease from when it saw the write, which can only be later.
        self._renewed_at = started
        return True

    def _attempt(self, attempt: Callable[[], bool]) -> bool:
        """try_acquire_or_renew or _renew, with an unreachable API server counted as a failed attempt."""
        try:
            return attempt()
        except Exception as error:  # noqa: BLE001 - any failure is a failed attempt, retried
            logger.warning("lease %s/%s: %s", self.namespace, self.name, error)
            return False

    # -- the loops -----------------------------------------------------------------------------

    def acquire(self) -> None:
        """Blocks until this replica holds the Lease (or renewing is stopped). The renew deadline already
        runs then (from the start of the attempt that took it): keep_leading should follow at once."""
        while not self._stop.is_set():
            if self._attempt(self.try_acquire_or_renew):
                return
            self._stop.wait(self.timings.retry_period)

    def keep_leading(self, on_lost: Callable[[], None]) -> None:
        """Renews the Lease in a thread; calls `on_lost` once it could not renew for the renew deadline.

        A watchdog thread holds that deadline too: an attempt can hang in its requests (each up to the
        API's timeout, a read and a replace) well past it, and a standby may take the Lease from the lease
        duration on, so the leader must stop on time whatever the renewing thread is waiting for (client-go
        cancels the request instead). The deadline runs from the acquiring attempt, not from this call.
        """
        lost = self._once(on_lost)
        self._renewer = threading.Thread(
            target=self._renew_until_lost, args=(lost,), name="kubefit-lease", daemon=True
        )
        self._renewer.start()
        threading.Thread(
            target=self._watch_deadline, args=(lost,), name="kubefit-lease-deadline", daemon=True
        ).start()

    def _once(self, on_lost: Callable[[], None]) -> Callable[[], None]:
        def lost() -> None:
            if not self._stop.is_set() and self._lost_once.acquire(blocking=False):
                on_lost()

        return lost

    def _past_deadline(self) -> bool:
        return self.clock() - self._renewed_at > self.timings.renew_deadline

    def _renew_until_lost(self, on_lost: Callable[[], None]) -> None:
        while not self._stop.wait(self.timings.retry_period):
            renewed = self._attempt(self._renew)
            # Taken, or emptied (anyone may take it now): lost at once; on_lost does nothing if stopping.
            if not renewed and (not self._holds(self._observed.spec) or self._past_deadline()):
                on_lost()
                return

    def _watch_deadline(self, on_lost: Callable[[], None]) -> None:
        check = min(1.0, self.timings.retry_period / 2)
        while not self._stop.wait(check):
            if self._past_deadline():
                on_lost()
                return

    def stop_renewing(self) -> None:
        """Renews no more: the Lease expires a lease after the last renewal (and no one is told it is lost)."""
        self._stop.set()

    def release(self) -> None:
        """Stops renewing and, if this replica still holds the Lease, empties its holder; gives up after
        RELEASE_BUDGET_SECONDS, the Lease then expiring, so that a stopping pod exits within its grace."""
        self._stop.set()
        budget = RELEASE_BUDGET_SECONDS
        releasing = threading.Thread(
            target=self._empty_holder, args=(budget,), name="kubefit-lease-release", daemon=True
        )
        releasing.start()
        releasing.join(budget)
        if releasing.is_alive():
            logger.warning("lease %s/%s: not released within %g s, it expires instead",
                           self.namespace, self.name, budget)  # fmt: skip

    def _empty_holder(self, budget: float) -> None:
        if self._renewer is not None:
            # A renewal in flight would make the release's write a conflict; one that is stuck past this
            # cannot write any more (_renew).
            self._renewer.join(min(budget, self.timings.renew_deadline))
        try:
            current = self.api.read(self.namespace, self.name)
            spec = (current or {}).get("spec") or {}
            if current is None or not self._holds(spec):
                return
            released = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}
            self.api.replace(
                self.namespace,
                self.name,
                self._lease_body(released, current["metadata"].get("resourceVersion")),
            )
        except Exception as error:  # noqa: BLE001 - the lease then simply expires
            logger.warning("could not release lease %s/%s: %s", self.namespace, self.name, error)


def exit_on_lost_lease(namespace: str, name: str) -> Callable[[], None]:
    """What a leader does when it lost the Lease: exit at once, so that two replicas never both reconcile."""

    def lost() -> None:
        logger.critical("kubefit: lost the lease %s/%s: exiting (%d)", namespace, name, LOST_EXIT_CODE)
        os._exit(LOST_EXIT_CODE)

    return lost


class LabelFailures:
    """The log of this process's role-label patches, retried every ROLE_LABEL_RETRY_SECONDS: a warning for
    the first failure, for a new reason, and for the same one again every ROLE_LABEL_WARN_SECONDS; one INFO
    line once a patch sticks after failures."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failing: str | None = None  # the last failure's message
        self._warned_at = 0.0
        self._failures = 0

    def failed(self, message: str) -> None:
        self._failures += 1
        now = self._clock()
        if message != self._failing or now - self._warned_at >= ROLE_LABEL_WARN_SECONDS:
            again = f" (failed {self._failures} times)" if message == self._failing else ""
            logger.warning("%s%s; trying again every %g s", message, again, ROLE_LABEL_RETRY_SECONDS)
            self._failing, self._warned_at = message, now

    def written(self, pod: str, label: str) -> None:
        if self._failing is not None:
            logger.info("labelled pod %s %s after %d failed patches", pod, label, self._failures)
        self._failing, self._failures = None, 0


_label_failures = LabelFailures()  # one pod per process: its own


def mark_role(role: str, api: LeaseApi | None = None, environ: Any = None) -> bool | None:
    """Labels this process's own pod (POD_NAME, POD_NAMESPACE: the chart sets them from the downward API)
    with ROLE_LABEL = `role`; True once patched, None outside a pod (nothing to do). A patch that fails
    answers False (RoleLabeller tries again) and is logged as LabelFailures says."""
    env = os.environ if environ is None else environ
    name, namespace = env.get(POD_NAME_ENV), env.get(POD_NAMESPACE_ENV)
    if not name or not namespace:
        return None
    label = f"{ROLE_LABEL}={role}"
    try:
        (api or LeaseApi()).label_pod(namespace, name, {ROLE_LABEL: role})
    except (ApiException, OSError, urllib3_errors.HTTPError) as error:
        reason = getattr(error, "reason", None) or error
        _label_failures.failed(f"could not label pod {namespace}/{name} {label}: {reason}")
        return False
    _label_failures.written(f"{namespace}/{name}", label)
    return True


class RoleLabeller:
    """Keeps this replica's pod labelled with the role it was last given: one background thread patches
    it, again every ROLE_LABEL_RETRY_SECONDS until a patch sticks, for as long as the process lives.

    A leader whose label did not stick gets no handshakes (the checkpoints Service selects the label); a
    standby whose old `leader` label stayed would get them and not serve them. One thread writes every
    role, in order, so a `standby` patch still being retried cannot land after `leader`."""

    def __init__(self, mark: Callable[[str], bool | None] = mark_role) -> None:
        self._mark = mark
        self._changed = threading.Condition()
        self._wanted: str | None = None
        self._written: str | None = None
        self._failures = 0  # patches of the wanted role that failed
        self._writer: threading.Thread | None = None

    def label(self, role: str, wait_attempts: int = 0) -> bool:
        """Asks for `role`, then waits until it is written or `wait_attempts` patches of it failed (the
        thread goes on trying); True if it is written."""
        with self._changed:
            if role != self._wanted:
                self._wanted, self._failures = role, 0
                self._changed.notify_all()
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_forever, name="kubefit-role-label", daemon=True
                )
                self._writer.start()
            self._changed.wait_for(
                lambda: self._written == role or self._wanted != role or self._failures >= wait_attempts
            )
            return self._written == role

    def _write_forever(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._wanted != self._written)
                role = self._wanted
            if role is not None:
                self._write(role)

    def _write(self, role: str) -> None:
        written = self._mark(role) is not False  # None: not in a pod, nothing to write
        with self._changed:
            if written:
                self._written = role  # if another role is wanted meanwhile, it is written next
            elif role == self._wanted:
                self._failures += 1
            self._changed.notify_all()
            if not written:  # a new role is written at once, the same one after the pause
                self._changed.wait_for(lambda: self._wanted != role, timeout=ROLE_LABEL_RETRY_SECONDS)
