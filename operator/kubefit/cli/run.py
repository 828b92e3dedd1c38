"""`kubefit run`: the TrainingJob operator."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
from typing import Any, NoReturn
from urllib.parse import urlsplit

# A Lease's name and namespace: a DNS subdomain and a DNS label (Kubernetes object names).
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# What the chart's values.schema.json allows for checkpoint.url: a host, an optional path, nothing else.
# Workers append the API's paths to it, so a query or fragment would swallow them.
_HTTP_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
_NAMESPACE_GLOB = re.compile(r"^[-a-z0-9*?\[\]!]{1,63}$")  # fnmatch's: *, ?, [seq], [!seq]
MIN_LEASE_SECONDS = 2
# Each period lists every watched namespace's jobs and asks for a scheduling pass, which the pacing of the
# period's reconciles does not slow down.
MIN_RESYNC_SECONDS = 0.5
DEFAULT_WEBHOOK_PORT = 9443
DEFAULT_LEASE_NAME = "kubefit"
DEFAULT_LEASE_SECONDS = 15
_LEADER_ELECTION_FLAGS = {
    "leader_election_lease_name": "--leader-election-lease-name",
    "leader_election_namespace": "--leader-election-namespace",
    "leader_election_lease_seconds": "--leader-election-lease-seconds",
}


class UsageError(Exception):
    """Flags that cannot work together (or with the environment); the message names them."""


def _run(args: argparse.Namespace) -> int:
    # Imported here: kopf and the kubernetes client are slow to import and only `run` needs them.
    from aiohttp import ClientConnectionError

    from kubefit.controller.runner import StartupError, run_operator

    try:
        options = operator_options(args)
    except UsageError as error:
        print(f"kubefit run: error: {error}", file=sys.stderr)
        return 2
    _quiet_connection_tracebacks()
    try:
        run_operator(options)
    except StartupError as error:  # a port taken, an unreadable kubeconfig, catalog or certificate
        print(f"kubefit run: {error}", file=sys.stderr)
        return 1
    except ClientConnectionError as error:  # kopf gave up retrying (aiohttp's ClientConnectorError)
        print(cannot_reach(error), file=sys.stderr)
        _exit_now(1)
    except Exception:  # kopf stopped on a failure of its own (a watcher that failed): said, and gone now
        logging.getLogger("kubefit").exception("kubefit run: the operator stopped on an error")
        _exit_now(1)
    return 0


def _exit_now(code: int) -> NoReturn:
    """Not through the interpreter's shutdown: it joins every worker thread, and one still blocked (a
    handler waiting on the API server) kept the process up, serving nothing, until SIGKILL."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def cannot_reach(error: Exception) -> str:
    """The one line for an API server kopf could not reach: its URL (the kubeconfig's) and the cause."""
    import ssl

    from kubernetes import client

    server = client.Configuration.get_default_copy().host
    cause: BaseException = getattr(error, "os_error", None) or error  # ClientConnectorError wraps an OSError
    if isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError) and (cause.errno or 0) > 0:
        text = os.strerror(cause.errno or 0)  # "Connection refused", not asyncio's "Connect call failed"
    else:
        text = (cause.strerror if isinstance(cause, OSError) else None) or str(cause) or type(cause).__name__
    return f"kubefit run: cannot reach the API server at {server}: {text}"


def _quiet_connection_tracebacks() -> None:
    """kopf logs the traceback of the failure that ends it (its guard's logger.exception, on the logger of
    kopf._core.reactor.running); for a connection failure the message line is enough: _run prints the cause."""
    import logging

    from aiohttp import ClientConnectionError

    def no_traceback(record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ClientConnectionError):
            record.exc_info, record.exc_text = None, None
        return True

    logging.getLogger("kopf._core.reactor.running").addFilter(no_traceback)


def operator_options(args: argparse.Namespace) -> Any:
    """The operator's options from the flags, or UsageError naming the flags that cannot work."""
    from kubefit.controller.handlers import RESYNC_SECONDS
    from kubefit.controller.runner import OperatorOptions, default_bind_address
    from kubefit.decisions.job import DEFAULT_CLUSTER_DOMAIN, DEFAULT_MAX_WORKERS_PER_JOB

    webhook = _webhook(args)
    _check_distinct_ports(args, webhook is not None)
    if args.bind_address is not None:
        _check_bind_address(args.bind_address)
    return OperatorOptions(
        namespaces=tuple(args.namespace or ()),
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
        bind_address=args.bind_address or default_bind_address(),
        resync_seconds=args.resync_seconds or RESYNC_SECONDS,
        catalog_path=args.catalog,
        max_workers_per_job=args.max_workers_per_job or DEFAULT_MAX_WORKERS_PER_JOB,
        cluster_domain=args.cluster_domain or DEFAULT_CLUSTER_DOMAIN,
        admission_policy=args.admission_policy,
        head_of_line_timeout_seconds=args.head_of_line_timeout_seconds,
        checkpoint_port=args.checkpoint_port,
        checkpoint_url=args.checkpoint_url,
        checkpoint_key_file=args.checkpoint_key_file,
        webhook=webhook,
        leader_election=_leader_election(args),
        verbose=args.verbose,
        debug=args.debug,
    )


def _webhook(args: argparse.Namespace) -> Any:
    from kubefit.controller.runner import AdmissionWebhook

    if not (args.webhook_cert_file or args.webhook_key_file):
        if args.webhook_port is not None:
            raise UsageError("--webhook-port goes with --webhook-cert-file and --webhook-key-file (no webhook "
                             "is served without them)")  # fmt: skip
        return None
    if not (args.webhook_cert_file and args.webhook_key_file):
        raise UsageError("--webhook-cert-file and --webhook-key-file go together")
    port = DEFAULT_WEBHOOK_PORT if args.webhook_port is None else args.webhook_port
    return AdmissionWebhook(port, args.webhook_cert_file, args.webhook_key_file)


def _leader_election(args: argparse.Namespace) -> Any:
    from kubefit.controller.leader import LeaseTimings
    from kubefit.controller.runner import LeaderElection

    if not args.leader_election:
        given = [flag for field, flag in _LEADER_ELECTION_FLAGS.items() if getattr(args, field) is not None]
        if given:
            raise UsageError(
                f"{', '.join(given)} {'goes' if len(given) == 1 else 'go'} with --leader-election"
            )
        return None
    namespace = args.leader_election_namespace
    if namespace is None:
        namespace = os.environ.get("POD_NAMESPACE") or "default"
        if not _DNS_LABEL.match(namespace):
            raise UsageError(f"$POD_NAMESPACE {namespace!r}, the Lease's namespace by default, is not a valid "
                             "namespace name (lowercase DNS label); set --leader-election-namespace")  # fmt: skip
    seconds = args.leader_election_lease_seconds or DEFAULT_LEASE_SECONDS
    timings = LeaseTimings.for_lease(seconds)
    return LeaderElection(args.leader_election_lease_name or DEFAULT_LEASE_NAME, namespace, timings)


def _check_distinct_ports(args: argparse.Namespace, webhook: bool) -> None:
    """Each endpoint binds its own port on the one address (0: any free one); a clash would fail late, at
    bind, or for the checkpoint port only once this replica leads."""
    ports = {"--metrics-port": args.metrics_port, "--liveness-port": args.liveness_port,
             "--checkpoint-port": args.checkpoint_port}  # fmt: skip
    if webhook:
        ports["--webhook-port"] = DEFAULT_WEBHOOK_PORT if args.webhook_port is None else args.webhook_port
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port and port in seen:
            raise UsageError(f"{seen[port]} and {flag} are both {port}: each endpoint needs a port of its own "
                             "(0 = any free port)")  # fmt: skip
        seen.setdefault(port, flag)


def _check_bind_address(address: str) -> None:
    try:
        socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise UsageError(f"--bind-address {address!r}: cannot resolve it ({error})") from None


def _dns_subdomain(text: str) -> str:
    if not _DNS_SUBDOMAIN.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid object name (lowercase DNS subdomain)")
    return text


def _dns_label(text: str) -> str:
    if not _DNS_LABEL.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid namespace name (lowercase DNS label)")
    return text


def _lease_seconds(text: str) -> int:
    value = positive_int(text)
    if value < MIN_LEASE_SECONDS:
        raise argparse.ArgumentTypeError(f"{value} is less than {MIN_LEASE_SECONDS} seconds")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of seconds >= 0")
    return value


def _resync_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= MIN_RESYNC_SECONDS or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text} is not a finite number of seconds >= {MIN_RESYNC_SECONDS:g}"
        )
    return value


def cluster_domain_name(text: str) -> str:
    """A DNS subdomain, as the kubelet's --cluster-domain (a trailing dot, as in a resolv.conf, dropped)."""
    domain = text.removesuffix(".")
    if not _DNS_SUBDOMAIN.match(domain):
        raise argparse.ArgumentTypeError(f"{text!r} is not a DNS domain such as cluster.local")
    return domain


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535; 0 = any free port)")
    return value


def _http_url(text: str) -> str:
    if not _HTTP_URL.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http:// or https:// URL of a host and an optional path (no query or fragment)"
        )
    try:
        urlsplit(text).port  # noqa: B018 - read for its check: a port above 65535 no worker can reach
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    return text.rstrip("/")


def _namespace_pattern(text: str) -> str:
    """A namespace name, or a glob of one (team-*), either after '!' to leave it out. Anything else matched
    no namespace: the operator started, healthy, and served nothing. One pattern a flag: the webhook's
    match (runner.serves) reads no comma-separated list, as kopf would."""
    body = text.removeprefix("!")
    globbed = any(char in body for char in "*?[")
    if not (_NAMESPACE_GLOB.match(body) if globbed else _DNS_LABEL.match(body)):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a namespace name (lowercase DNS label) or a glob of one (team-*), "
            "optionally after '!' to leave it out; give one per --namespace"
        )
    return text


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="run the operator (kubeconfig from $KUBECONFIG, else in-cluster)",
        description="Run the TrainingJob operator: sizes jobs, runs their workers, exports metrics.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        type=_namespace_pattern,
        metavar="NS",
        help="watch this namespace (repeatable; globs allowed)",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=8000,
        metavar="N",
        help="Prometheus /metrics port; 0 = any free port",
    )
    parser.add_argument(
        "--liveness-port", type=_port, default=8080, metavar="N", help="/healthz port; 0 = any free port"
    )
    parser.add_argument(
        "--bind-address",
        metavar="ADDR",
        help="address of every endpoint: metrics, liveness, checkpoints, webhook (default: 0.0.0.0 in a pod, :: in a pod of an IPv6 cluster, 127.0.0.1 elsewhere)",
    )
    parser.add_argument(
        "--resync-seconds",
        type=_resync_seconds,
        metavar="S",
        help="reconcile every job at least this often (default 30; at least 0.5), or as often as keeps those reconciles to "
        "a fifth of the time when there are many jobs",
    )
    _add_job_check_arguments(parser)
    _add_scheduling_arguments(parser)
    _add_webhook_arguments(parser)
    _add_leader_election_arguments(parser)
    parser.add_argument(
        "--catalog", metavar="FILE", help="extra accelerator catalog (default: $KUBEFIT_CATALOG)"
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="kopf's log line for every handled watch event, and its watch-stream starts and stops",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log everything at DEBUG: kopf's internals, HTTP access and retries",
    )
    parser.set_defaults(handler=_run)


def _add_job_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-workers-per-job",
        type=positive_int,
        metavar="N",
        help="refuse (InvalidSpec) a job whose spec.workers asks for more workers than this (default 1024)",
    )
    parser.add_argument(
        "--cluster-domain",
        type=cluster_domain_name,
        metavar="DOMAIN",
        help="the cluster's DNS domain (the kubelets' --cluster-domain): workers rendezvous at worker 0's fully "
        "qualified name under it, and a job whose template sets setHostnameAsFQDN is refused (InvalidSpec) when "
        "a worker's FQDN would pass the kubelet's 64 characters (default cluster.local)",
    )


def _add_scheduling_arguments(parser: argparse.ArgumentParser) -> None:
    # The choices are the planner's (decisions/admission.py): listed here so `--help` needs no import.
    parser.add_argument(
        "--admission-policy",
        choices=("StrictFIFO", "BestEffortFIFO"),
        default="BestEffortFIFO",
        help="head-of-line policy of the admission queue (docs/scheduling.md; default BestEffortFIFO)",
    )
    parser.add_argument(
        "--head-of-line-timeout-seconds",
        type=_non_negative_seconds,
        default=300.0,
        metavar="S",
        help="BestEffortFIFO: once the first job that does not fit has waited longer than this, nothing behind it "
        "takes devices it needs (default 300)",
    )
    parser.add_argument(
        "--checkpoint-port",
        type=_port,
        default=8081,
        metavar="N",
        help="port of the checkpoint handshake API that workers call; 0 = any free port (default 8081)",
    )
    parser.add_argument(
        "--checkpoint-url",
        type=_http_url,
        metavar="URL",
        help="the handshake URL worker pods are told (default http://<bind address>:<port>, this host's "
        "address where the bind address is 0.0.0.0: the pod IP in a pod)",
    )
    parser.add_argument(
        "--checkpoint-key-file",
        metavar="FILE",
        help="HMAC key of the workers' handshake tokens (default: a random key per operator process)",
    )


def _add_webhook_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--webhook-cert-file",
        metavar="FILE",
        help="serve the validating admission webhook over HTTPS with this certificate (PEM; with "
        "--webhook-key-file; default: no webhook)",
    )
    parser.add_argument(
        "--webhook-key-file", metavar="FILE", help="the webhook certificate's private key (PEM)"
    )
    parser.add_argument(
        "--webhook-port",
        type=_port,
        metavar="N",
        help="port of the validating admission webhook, POST /validate; 0 = any free port (default 9443)",
    )


def _add_leader_election_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--leader-election",
        action="store_true",
        help="run as one of several replicas: only the holder of a coordination.k8s.io Lease reconciles, the "
        "others wait and take over when it stops renewing (docs/operator.md)",
    )
    parser.add_argument(
        "--leader-election-lease-name",
        type=_dns_subdomain,
        metavar="NAME",
        help="the Lease's name (default kubefit)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        type=_dns_label,
        metavar="NS",
        help="the Lease's namespace (default $POD_NAMESPACE, else default)",
    )
    parser.add_argument(
        "--leader-election-lease-seconds",
        type=_lease_seconds,
        metavar="S",
        help="how long a Lease lasts unrenewed (default 15); the leader renews every S/7.5 s and gives up "
        "leading after S*2/3 s without renewing; a standby takes over at most S + 2*S/7.5 s after the "
        "leader died",
    )
