"""Starting the operator: kopf settings, the metrics, liveness and checkpoint endpoints, the admission
scheduler, and kopf's run loop."""

from __future__ import annotations

import asyncio
import errno
import fnmatch
import ipaddress
import logging
import os
import random
import signal
import socket
import ssl
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from threading import Thread
from typing import Any

import kopf
import yaml
from kubernetes import config

from kubefit.api.resource import GROUP
from kubefit.controller.bounded_http import (
    BoundedHTTPServer,
    DeadlineRequestHandler,
    address_family,
    url_host,
)
from kubefit.controller.checkpoints import load_checkpoint_key, serve_checkpoints, token_lookup
from kubefit.controller.cluster import remembering
from kubefit.controller.garbage_collection import tune_garbage_collection
from kubefit.controller.handlers import RESYNC_SECONDS, register
from kubefit.controller.installed_crd import check_api, installed_crd_problem
from kubefit.controller.kube import KubeApi
from kubefit.controller.leader import (
    LeaderElector,
    LeaseApi,
    LeaseTimings,
    RoleLabeller,
    exit_on_lost_lease,
    mark_role,
)
from kubefit.controller.reconciler import NotifyingBoard, Reconciler
from kubefit.controller.scheduler import (
    DEFAULT_HEAD_OF_LINE_TIMEOUT,
    DEFAULT_POLICY,
    Scheduler,
    SchedulerSettings,
)
from kubefit.controller.webhook import VALIDATE_PATH, start_webhook_server, with_template_checked
from kubefit.decisions.admission import AdmissionPolicy
from kubefit.decisions.job import DEFAULT_CLUSTER_DOMAIN, DEFAULT_MAX_WORKERS_PER_JOB, ReconcileSettings
from kubefit.decisions.validating import review
from kubefit.metrics import OperatorMetrics, serve_metrics
from kubefit.sizing.catalog import CATALOG_ENV, Catalog, CatalogError, load_catalog

FINALIZER = f"{GROUP}/finalizer"
# A standby tries its label a few times before it answers /healthz, then goes on and keeps trying in the
# background (an operator without the RBAC to label its pod still runs; docs/operator.md).
STANDBY_LABEL_ATTEMPTS = 5
WRITES_DRAIN_SECONDS = 10.0  # how long a stopping leader waits for its writes in flight (see hand_over)
logger = logging.getLogger("kubefit.operator")


class StartupError(Exception):
    """What keeps the operator from starting, naming the flag or file: a port that cannot be bound, an
    unreadable kubeconfig, catalog, key or certificate, a TrainingJob CRD older than the operator."""


@dataclass(frozen=True)
class LeaderElection:
    """Run as one of several replicas: only the holder of the Lease `namespace`/`name` reconciles."""

    name: str
    namespace: str
    timings: LeaseTimings = LeaseTimings()
    identity: str = ""  # empty: <hostname>_<random>, as client-go (the hostname is the pod's name)


@dataclass(frozen=True)
class AdmissionWebhook:
    """Serve the validating admission webhook (controller/webhook.py) over HTTPS."""

    port: int
    certfile: str
    keyfile: str


@dataclass(frozen=True)
class OperatorOptions:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    metrics_port: int = 8000  # 0: any free port
    liveness_port: int = 8080  # 0: any free port
    bind_address: str = "127.0.0.1"  # see default_bind_address
    resync_seconds: float = RESYNC_SECONDS
    catalog_path: str | None = None
    max_workers_per_job: int = DEFAULT_MAX_WORKERS_PER_JOB
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    admission_policy: AdmissionPolicy = DEFAULT_POLICY
    head_of_line_timeout_seconds: float = DEFAULT_HEAD_OF_LINE_TIMEOUT
    checkpoint_port: int = 8081  # 0: any free port
    checkpoint_url: str | None = None  # what worker pods are told; None: http://<bind address>:<port>
    checkpoint_key_file: str | None = None  # None: a random key for the life of the process
    webhook: AdmissionWebhook | None = None  # None: no admission webhook
    leader_election: LeaderElection | None = None  # None: this process is the only operator
    verbose: bool = False
    debug: bool = False


def default_bind_address() -> str:
    # In a pod the kubelet probes and Prometheus scrapes the pod IP; on a workstation stay on loopback. The
    # API server's Service address tells the cluster's family: on a single-stack IPv6 cluster the pod IP is
    # IPv6, which a 0.0.0.0 bind does not answer (the probes failed and the pod restarted for ever).
    service_host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not service_host:
        return "127.0.0.1"
    return "::" if ":" in service_host else "0.0.0.0"


class _NoEssence(kopf.AnnotationsDiffBaseStorage):
    """kopf builds an object's "essence" (a deep copy of its body) on every event of every watched kind, for
    change-detecting handlers (on.create/update/field). The operator has none (handlers.py: events and indexes
    only), so none is built or read: the copies were 5% of the operator's CPU in the 200-job benchmark."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    # Annotations, not status.kopf: the status schema is structural and would prune kopf's field.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = _NoEssence(prefix=GROUP)
    settings.posting.enabled = True
    # Only the operator's own events and real problems; kopf's per-handler chatter stays in the log.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    return settings


# Where the kernel takes the local ports of outgoing connections (Linux's default, if unreadable).
EPHEMERAL_PORTS = "/proc/sys/net/ipv4/ip_local_port_range"
LOWEST_PICKED_PORT = 10000


def _free_port(address: str, ephemeral: str = EPHEMERAL_PORTS) -> int:
    """A port free now for the liveness endpoint, which kopf binds only later. Below the ephemeral range:
    a port from it can meanwhile become the local port of an outgoing connection (this operator's or
    another process's), and kopf's bind then fails, as it did once in an e2e run. Any free port if none
    is found below."""
    try:
        with open(ephemeral) as ports:
            low = int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.sample(range(LOWEST_PICKED_PORT, low), k=min(64, max(low - LOWEST_PICKED_PORT, 0))):
        with socket.socket(address_family(address), socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
            return port
    with socket.socket(address_family(address), socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def _load_kubeconfig() -> None:
    """KUBECONFIG (or ~/.kube/config), else, in a pod, the pod's service account. Outside a pod the
    kubeconfig's own error is the one to show, not the service account's."""
    try:
        config.load_kube_config()
        return
    except (config.ConfigException, yaml.YAMLError, OSError) as error:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            where = os.environ.get("KUBECONFIG") or "~/.kube/config"
            detail = " ".join(str(error).split())  # a YAML error spans lines
            raise StartupError(f"cannot read the kubeconfig ({where}): {detail}") from error
    try:
        config.load_incluster_config()
    except config.ConfigException as error:
        raise StartupError(f"no kubeconfig and no service account to use: {error}") from error


def _bind_error(flag: str, address: str, port: int, error: OSError) -> StartupError:
    if error.errno == errno.EADDRNOTAVAIL:  # the address, not the port
        return StartupError(f"--bind-address {address}: not an address of this host ({error.strerror})")
    return StartupError(
        f"{flag} {port}: cannot listen on {url_host(address)}:{port} ({error.strerror or error})"
    )


def _check_port_free(flag: str, address: str, port: int) -> None:
    """A port bound later (by kopf, or once this replica leads) is tried now, so that a clash is told at
    start; SO_REUSEADDR as the servers bind, so a port in TIME_WAIT passes as it will bind."""
    if port == 0:
        return
    with socket.socket(address_family(address), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            raise _bind_error(flag, address, port, error) from error


def _catalog(path: str | None) -> Catalog:
    flag = "--catalog" if path else f"${CATALOG_ENV}"
    try:
        catalog = load_catalog(path)
    except CatalogError as error:
        raise StartupError(f"{flag}: {error}") from error
    # `kubefit size` sizes for a label-less entry; the operator could never place its workers (the chart
    # refuses such an entry the same way).
    unplaceable = [accelerator.name for accelerator in catalog if not accelerator.match]
    if unplaceable:
        raise StartupError(
            f"{flag}: accelerators[{unplaceable[0]}] has neither match nor nodeLabels: the operator would "
            "identify no node as it"
        )
    return catalog


def _start_checkpoints(
    options: OperatorOptions, key: bytes, board: NotifyingBoard, uid_of: Callable[[str, str], str | None]
) -> str:
    """Serves the checkpoint handshake; returns the URL worker pods are told."""
    token_for = token_lookup(key, uid_of)
    try:
        port = serve_checkpoints(board, token_for, options.bind_address, options.checkpoint_port)
    except OSError as error:
        raise _bind_error(
            "--checkpoint-port", options.bind_address, options.checkpoint_port, error
        ) from error
    address = advertised_address(options.bind_address)
    served = f"http://{_url_host(address)}:{port}"
    print(f"kubefit: checkpoints on {served}", flush=True)
    if options.checkpoint_url is None and options.bind_address in WILDCARDS and _loopback(address):
        print(
            "kubefit: warning: no address of this host but loopback was found for the checkpoint handshake; "
            "workers on other machines cannot reach it: pass --checkpoint-url",
            flush=True,
        )
    return options.checkpoint_url or served


WILDCARDS = ("0.0.0.0", "::", "")


def advertised_address(bind_address: str) -> str:
    """The address workers can reach the operator on: a wildcard bind (every interface, the default in a
    pod) is no address to connect to (a worker dialling 0.0.0.0 reaches its own pod), so this host's own
    address stands for it: POD_IP where the downward API gives it, else the first of the host name's
    addresses that is not loopback (the pod IP in a pod), else loopback."""
    if bind_address not in WILDCARDS:
        return bind_address
    pod_ip = os.environ.get("POD_IP")
    if pod_ip:
        return pod_ip
    try:
        found = [str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)]
    except OSError:
        found = []
    return next((address for address in found if not _loopback(address)), "127.0.0.1")


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class _StandbyHealth(DeadlineRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        found = self.path.split("?", 1)[0] == "/healthz"
        body = b"standby\n" if found else b"not found\n"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the kubelet probes every few seconds


class _StandbyHealthServer(BoundedHTTPServer):
    """Capped and with deadlines as the other servers: the port is the pod's, any pod can reach it."""

    name = "standby-health"
    max_connections = 16  # the kubelet probes one at a time; a few more for a person's curl


def _serve_standby_health(address: str, port: int) -> BoundedHTTPServer:
    """/healthz while waiting for the Lease (kopf serves it once leading), so the kubelet keeps a standby."""
    server = _StandbyHealthServer((address, port), _StandbyHealth)
    Thread(target=server.serve_forever, name="kubefit-standby-health", daemon=True).start()
    return server


class _StopOnTerm:
    """SIGTERM before kopf runs. The container's entrypoint is PID 1, which ignores a signal it has no handler
    for, and kopf installs its own only inside kopf.run: a standby sat out its whole grace period on every
    rollout, one being deleted could take the Lease and be killed holding it, and a leader signalled between
    taking the Lease and starting kopf led on until SIGKILL (the handshakes unanswered meanwhile, since a
    Terminating pod leaves the Service). The handler sets `stopped` (kopf.run's stop flag) and, while this
    replica waits for the Lease, stops the wait. Installed from the main thread only, where Python runs
    signal handlers. An asyncio.Event, bound to kopf's loop when kopf first waits on it: kopf waits on a
    threading.Event in an executor thread, which its loop's shutdown then waits for, for ever."""

    def __init__(self) -> None:
        self.stopped = asyncio.Event()
        self._waiting: LeaderElector | None = None
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._stop)

    @property
    def requested(self) -> bool:
        return self.stopped.is_set()

    def waiting_for(self, elector: LeaderElector | None) -> None:
        """The elector whose wait for the Lease a SIGTERM stops; None once it leads."""
        self._waiting = elector
        if elector is not None and self.requested:
            elector.stop_renewing()

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopped.set()
        if self._waiting is not None:
            self._waiting.stop_renewing()  # acquire() returns at its next wait

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _become_leader(
    election: LeaderElection, address: str, liveness_port: int, termination: _StopOnTerm | None = None
) -> LeaderElector | None:
    """Blocks, answering /healthz, until this replica holds the Lease; then renews it in a thread. None if
    SIGTERM came first. Given `termination` (the process's, installed before anything else), its handler
    stays for the leader too, until kopf's replaces it; without, one is installed for the wait only."""
    identity = election.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    api = LeaseApi()
    elector = LeaderElector(api, (election.namespace, election.name), identity, election.timings)
    labeller = RoleLabeller(lambda role: mark_role(role, api))
    where = f"{election.namespace}/{election.name}"
    own = termination is None
    waiting = _StopOnTerm() if termination is None else termination
    waiting.waiting_for(elector)
    try:
        # Before this replica answers /healthz: a container restarted after leading must not keep the label
        # that sends the handshakes to it. Past these attempts the labeller goes on trying in the background.
        labeller.label("standby", wait_attempts=STANDBY_LABEL_ATTEMPTS)
        if waiting.requested:
            return None
        logger.info("kubefit: standby as %s, waiting for the lease %s", identity, where)
        try:
            health = _serve_standby_health(address, liveness_port)
        except OSError as error:
            raise _bind_error("--liveness-port", address, liveness_port, error) from error
        try:
            elector.acquire()
            # At once: a SIGTERM after this must not stop the renewing of a Lease this replica leads with.
            waiting.waiting_for(None)
            if own:
                waiting.restore()
            if waiting.requested:
                elector.release()  # in case the attempt that took it was already under way
                return None
            # At once: the renew deadline runs from the attempt that took the Lease, whatever follows here.
            elector.keep_leading(exit_on_lost_lease(election.namespace, election.name))
        finally:
            health.shutdown()
            health.server_close()  # kopf binds the same port next
    finally:
        waiting.waiting_for(None)
        if own:
            waiting.restore()
    # Tried once before the line that says so (the label is there then), on in the background if it failed.
    labeller.label("leader", wait_attempts=1)
    logger.info("kubefit: leading as %s (lease %s)", identity, where)
    return elector


def configure_logging(verbose: bool = False, debug: bool = False) -> None:
    """kopf's handler and format on the root logger, at INFO: the operator's own lines and everyone's
    warnings. `verbose` adds kopf's line for every handled watch event and its watch-stream starts and
    stops; `debug` logs everything at DEBUG."""
    # log_prefix: kopf's per-object lines start with [namespace/name], as under kopf's own CLI.
    kopf.configure(debug=debug, log_prefix=True)
    quiet = not (verbose or debug)
    levels = {
        # "Handler ... succeeded" for every watch event at INFO: 5% of the operator's CPU at 200 jobs, and
        # nothing a reader needs. Its warnings and errors stay.
        "kopf.objects": logging.WARNING if quiet else logging.NOTSET,
        # Which namespaces and resources kopf watches (tests/e2e wait on these lines).
        "kopf._cogs.clients.watching": logging.DEBUG if verbose else logging.NOTSET,
        # A line for every kubelet probe of kopf's /healthz.
        "aiohttp.access": logging.NOTSET if debug else logging.WARNING,
        # "Retrying ..." before the error the operator logs once the last retry failed.
        "urllib3.connectionpool": logging.NOTSET if debug else logging.ERROR,
    }
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


# The API server stores objects nested up to 10,000 levels (it refuses deeper JSON). Python's default of
# 1,000 frames made json.loads of one such object (a TrainingJob, or any Pod or ResourceQuota through its
# managedFields) raise in kopf's watch stream: the operator stopped, for every job, at each restart too.
# Not much more: a comparison of two lists 49,000 deep, in a thread's 8 MiB stack, overflowed the C stack
# (a crash, where the limit raises RecursionError); 40,000 held. A body deeper than the limit, which only a
# client other than the API server sends the webhook, is answered 400.
RECURSION_LIMIT = 25_000


def allow_objects_as_deep_as_the_api_server_stores() -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))


def run_operator(options: OperatorOptions) -> None:
    termination = _StopOnTerm()  # first: until kopf.run installs its own
    allow_objects_as_deep_as_the_api_server_stores()
    tune_garbage_collection()
    configure_logging(verbose=options.verbose, debug=options.debug)
    _load_kubeconfig()
    try:
        key = load_checkpoint_key(options.checkpoint_key_file)  # a bad key file fails before anything starts
    except ValueError as error:
        raise StartupError(str(error)) from error
    # Read before waiting for the Lease: a bad catalog, or a port the leader would bind, found at failover
    # would stop every replica in turn.
    catalog = _catalog(options.catalog_path)
    _check_port_free("--checkpoint-port", options.bind_address, options.checkpoint_port)
    _check_port_free("--liveness-port", options.bind_address, options.liveness_port)
    metrics = OperatorMetrics(process_metrics=True)
    try:
        metrics_port = serve_metrics(metrics, options.bind_address, options.metrics_port)
    except OSError as error:
        raise _bind_error("--metrics-port", options.bind_address, options.metrics_port, error) from error
    liveness_port = options.liveness_port or _free_port(options.bind_address)
    # Printed (and flushed) so that whoever started the operator can find the chosen ports.
    host = url_host(options.bind_address)
    print(f"kubefit: metrics on http://{host}:{metrics_port}/metrics", flush=True)
    print(f"kubefit: liveness on http://{host}:{liveness_port}/healthz", flush=True)
    crd_problem = installed_crd_problem(check_api())  # before the Lease: a standby would be ready, then fail
    if crd_problem is not None:
        raise StartupError(crd_problem)
    if options.webhook is not None:  # every replica, standby too: validation reads only the request
        _start_webhook(options, options.webhook, catalog)
    elector = None
    if options.leader_election is not None:
        elector = _become_leader(options.leader_election, options.bind_address, liveness_port, termination)
        if elector is None:
            logger.info("kubefit: stopped (SIGTERM) while standby")
            return
    metrics.became_leader()
    api = KubeApi()
    try:
        if termination.requested:
            logger.info("kubefit: stopped (SIGTERM) before the operator started")
        else:
            _run_leading(options, api, key, metrics, liveness_port, catalog, termination.stopped)
    finally:
        if elector is not None:
            hand_over(elector, api)


def hand_over(
    elector: LeaderElector,
    api: KubeApi,
    drain_seconds: float = WRITES_DRAIN_SECONDS,
    exit_now: Callable[[int], None] = os._exit,
) -> None:
    """A stopped leader releases the Lease, so that a standby takes over at once instead of after the
    lease, but only once none of its writes can follow: reconciles still running in threads kopf cannot
    cancel would otherwise act beside the new leader. A write still hanging after `drain_seconds` leaves
    the Lease to expire instead: renewing stops and the process exits at once, since the hung write's
    thread (not a daemon) would otherwise keep it, and its Lease, alive."""
    if api.stop_writes(drain_seconds):
        elector.release()
        return
    elector.stop_renewing()
    logger.warning("kubefit: writes still in flight after %g s: exiting, the lease expires", drain_seconds)
    exit_now(0)


# (connect, read) seconds of the webhook's dry-run create of a job's template as a pod.
TEMPLATE_CHECK_TIMEOUT = (0.5, 1.5)


def _start_webhook(options: OperatorOptions, webhook: AdmissionWebhook, catalog: Catalog) -> None:
    served = serves(options.namespaces)  # once, not per request
    # One try of 2 s at most, within the API server's wait for the webhook (the chart's timeoutSeconds, 5 s).
    api = KubeApi.trying_once(TEMPLATE_CHECK_TIMEOUT)

    def answer(admission_review: dict[str, Any]) -> dict[str, Any]:
        reviewed = review(
            admission_review, catalog, options.max_workers_per_job, served, options.cluster_domain
        )
        if not reviewed["response"]["allowed"]:
            return reviewed
        return with_template_checked(reviewed, admission_review, api, catalog, served)

    try:
        server = start_webhook_server(
            answer, options.bind_address, webhook.port, webhook.certfile, webhook.keyfile
        )
    except (ssl.SSLError, FileNotFoundError, PermissionError, IsADirectoryError) as error:
        # The certificate is loaded before the port is bound (webhook.py, _Certificate).
        files = f"--webhook-cert-file {webhook.certfile} / --webhook-key-file {webhook.keyfile}"
        raise StartupError(f"{files}: cannot load the certificate ({error})") from error
    except OSError as error:
        raise _bind_error("--webhook-port", options.bind_address, webhook.port, error) from error
    print(f"kubefit: admission webhook on https://{url_host(options.bind_address)}:{server.server_address[1]}"
          f"{VALIDATE_PATH}", flush=True)  # fmt: skip


def serves(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a namespace is one `--namespace` names, as kopf matches them: globs, `!` excluding; none
    given, every namespace."""
    included = [pattern for pattern in patterns if not pattern.startswith("!")]
    excluded = [pattern[1:] for pattern in patterns if pattern.startswith("!")]

    def matches(namespace: str) -> bool:
        if any(fnmatch.fnmatchcase(namespace, pattern) for pattern in excluded):
            return False
        return not included or any(fnmatch.fnmatchcase(namespace, pattern) for pattern in included)

    return matches


def _run_leading(  # noqa: PLR0913 - what the process set up before leading
    options: OperatorOptions,
    api: KubeApi,
    key: bytes,
    metrics: OperatorMetrics,
    liveness_port: int,
    plain_catalog: Catalog,
    stop: asyncio.Event,
) -> None:
    """The operator proper: the scheduler, the checkpoint API, the reconciler and kopf's loop, which `stop`
    (set by a SIGTERM before kopf's own handler is in place) stops."""
    # One remembering catalog for the scheduler and the reconciler: node accelerators identified once.
    catalog = remembering(plain_catalog)
    scheduler = Scheduler(
        catalog,
        metrics,
        SchedulerSettings(options.admission_policy, options.head_of_line_timeout_seconds),
        live_quotas=api.quotas,
    )
    board = NotifyingBoard()
    # The server asks the reconciler for job uids, which it records as it reads jobs.
    url = _start_checkpoints(options, key, board, lambda namespace, name: reconciler.job_uid(namespace, name))
    settings = ReconcileSettings(
        max_workers_per_job=options.max_workers_per_job,
        cluster_domain=options.cluster_domain,
        checkpoint_url=url,
        checkpoint_key=key,
    )
    reconciler = Reconciler(api, catalog, metrics, settings, scheduler=scheduler, board=board)
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, scheduler, options.resync_seconds)

    @kopf.on.cleanup(registry=registry)
    async def stop_flag_too(**_: Any) -> None:
        # kopf's own SIGTERM handler stops it without setting `stop`, whose waiter kopf then held for its
        # 5 s hung-task timeout before cancelling it: every stop, and a rollout's leader handover, took 5 s
        # longer. On kopf's loop: the event is bound to it.
        stop.set()

    kopf.run(
        registry=registry,
        settings=operator_settings(),
        standalone=True,  # no kopf peering: replicas are kept apart by the Lease (leader.py)
        clusterwide=not options.namespaces,
        namespaces=options.namespaces,
        liveness_endpoint=f"http://{url_host(options.bind_address)}:{liveness_port}/healthz",
        stop_flag=stop,
    )
