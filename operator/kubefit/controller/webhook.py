"""The validating admission webhook's HTTPS endpoint: POST /validate, an AdmissionReview in and out.

The decision is decisions.validating.review (pure); this module only serves it, over TLS with the
certificate and key files given (the chart's Secret, which cert-manager or helm may replace: the files are
read again when they change). Each connection gets a daemon thread, and its TLS handshake runs there, so
a client that stalls mid-handshake holds only its own thread, within bounded_http's cap and deadline.
Every replica serves it, leading or standby: validation reads nothing but the request.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from kubefit.controller.bounded_http import BoundedHTTPServer, DeadlineRequestHandler
from kubefit.controller.kube import KubeApi, error_message
from kubefit.decisions.validating import refuses_the_pod, template_check, template_refusal
from kubefit.sizing.catalog import Catalog

logger = logging.getLogger("kubefit.webhook")

VALIDATE_PATH = "/validate"
# An AdmissionReview of an UPDATE carries the object twice; the API server keeps objects under 1.5 MiB.
MAX_BODY_BYTES = 8 * 2**20
# Bodies read, parsed and reviewed at once, in bytes: each is held as text and as the objects parsed from
# it (for `[{}, {}, ...]` 25 times its size), so 128 connections at the largest size took gigabytes and
# the operator's memory limit with it. Real reviews are a few KiB: only large ones wait.
BODY_BUDGET_BYTES = MAX_BODY_BYTES
BODY_WAIT_SECONDS = 5.0  # the chart's webhook timeoutSeconds: past it the API server has stopped waiting

Review = Callable[[dict[str, Any]], dict[str, Any]]


_Stamp = tuple[tuple[int, int], ...]


class _Certificate:
    """An SSL context for the certificate and key files, loaded again when either file changes.

    A pair that does not load (the certificate replaced before its key, a file missing or half-written)
    leaves the previous context serving: logged once for that state of the files, tried again once they
    change. Failing instead, the server would reset every connection without a word."""

    def __init__(self, certfile: str, keyfile: str) -> None:
        self.certfile, self.keyfile = certfile, keyfile
        self._lock = threading.Lock()
        self._stamp = self._files_stamp()
        self._failed: _Stamp | None = None  # the files' state that last failed to load
        self._context = self._load()  # a missing or bad file fails at start, not at the first request

    def context(self) -> ssl.SSLContext:
        stamp = self._files_stamp()
        with self._lock:
            if stamp not in (self._stamp, self._failed):
                self._reload(stamp)
            return self._context

    def _files_stamp(self) -> _Stamp:
        stamps = []
        for path in (self.certfile, self.keyfile):
            try:
                status = os.stat(path)
            except OSError:
                stamps.append((-1, -1))  # missing for now: loading it fails, and is logged
            else:
                stamps.append((status.st_mtime_ns, status.st_size))
        return tuple(stamps)

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.certfile, self.keyfile)
        return context

    def _reload(self, stamp: _Stamp) -> None:
        try:
            self._context = self._load()
        except OSError as error:  # ssl.SSLError is one
            self._failed = stamp
            logger.warning("webhook certificate %s / key %s: cannot load them (%s): serving the previous "
                           "certificate until they change", self.certfile, self.keyfile, error)  # fmt: skip
            return
        self._stamp, self._failed = stamp, None


class _ByteBudget:
    """At most `limit` bytes of request bodies held at once (BODY_BUDGET_BYTES)."""

    def __init__(self, limit: int) -> None:
        self.limit, self._used = limit, 0
        self._condition = threading.Condition()

    @contextmanager
    def hold(self, size: int, timeout: float) -> Iterator[bool]:
        """Whether `size` bytes were granted within `timeout` seconds; given back on leaving."""
        with self._condition:
            granted = self._condition.wait_for(lambda: self._used + size <= self.limit, timeout)
            if granted:
                self._used += size
        try:
            yield granted
        finally:
            if granted:
                with self._condition:
                    self._used -= size
                    self._condition.notify_all()


class WebhookServer(BoundedHTTPServer):
    name = "webhook"
    review: Review
    certificate: _Certificate
    bodies: _ByteBudget
    body_wait_seconds = BODY_WAIT_SECONDS

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        try:
            wrapped = self.certificate.context().wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ssl.SSLError):
            connection.close()
            raise
        return wrapped, address


class _Handler(DeadlineRequestHandler):
    server: WebhookServer
    server_version = "kubefit-webhook"

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        self.request.do_handshake()  # here, in this connection's thread (WebhookServer.get_request)
        super().setup()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] != VALIDATE_PATH:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no {self.path}; POST {VALIDATE_PATH}"})
            return
        length = self.headers.get("Content-Length", "")
        # isascii too: "²" is a digit to isdigit() and not to int()
        if not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY_BYTES:
            self._send(
                HTTPStatus.BAD_REQUEST, {"error": f"Content-Length: required, at most {MAX_BODY_BYTES}"}
            )
            return
        with self.server.bodies.hold(int(length), self.server.body_wait_seconds) as granted:
            if not granted:
                busy = {"error": "busy: other large reviews are being read; try again"}
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, busy)
                return
            self._review(int(length))

    def _review(self, length: int) -> None:
        try:
            document = json.loads(self.rfile.read(length))
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as error:  # RecursionError: arrays or objects nested too deep
            self._send(HTTPStatus.BAD_REQUEST, {"error": f"body: not an AdmissionReview ({error})"})
            return
        try:
            answer = self.server.review(document)
        except (
            Exception
        ):  # a bug here must cost one request (allowed by failurePolicy Ignore), not the thread
            logger.exception("admission review failed")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
            return
        self._send(HTTPStatus.OK, answer)

    def _send(self, status: HTTPStatus, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status != HTTPStatus.OK:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("webhook %s: " + format, self.address_string(), *args)


def with_template_checked(
    answer: dict[str, Any],
    admission_review: Mapping[str, Any],
    api: KubeApi,
    catalog: Catalog,
    serves: Callable[[str], bool],
) -> dict[str, Any]:
    """`answer`, an allowed review, or a refusal where the API server refuses the job's template as a pod (a
    dry-run create answered 422: validating.template_check). Any other answer, or none in time, leaves the
    request as answered: the check names a bad template at the apply, and the operator's own handling of
    refused workers stays the gate."""
    check = template_check(admission_review, catalog, serves)
    if check is None:
        return answer
    namespace, pod = check
    try:
        api.core.create_namespaced_pod(namespace, pod, dry_run=True)
    except ApiException as error:
        message = error_message(error).removesuffix(f" (HTTP {HTTPStatus.UNPROCESSABLE_ENTITY.value})")
        if error.status == HTTPStatus.UNPROCESSABLE_ENTITY and refuses_the_pod(message):
            return template_refusal(admission_review, message)
        logger.info("template check of a TrainingJob in %s not made: %s", namespace, error_message(error))
    except (OSError, ValueError, urllib3.exceptions.HTTPError) as error:
        logger.info("template check of a TrainingJob in %s not made: %s", namespace, error)
    return answer


def start_webhook_server(
    review: Review, address: str, port: int, certfile: str, keyfile: str
) -> WebhookServer:
    """Binds address:port (0: any free port) and serves in a daemon thread; `.shutdown()` stops it."""
    certificate = _Certificate(certfile, keyfile)
    server = WebhookServer((address, port), _Handler)
    server.review, server.certificate = review, certificate
    server.bodies = _ByteBudget(BODY_BUDGET_BYTES)
    threading.Thread(target=server.serve_forever, name="kubefit-webhook", daemon=True).start()
    return server
