"""The operator's side of the checkpoint handshake: an in-memory board of open requests and its HTTP API.

Before a planned removal of workers, decide asks for a checkpoint (Decision.checkpoint_request); the
controller opens that request on the board, workers poll

    GET  /v1/namespaces/{ns}/trainingjobs/{name}/checkpoint      -> {"requestId": "..." | null}
    POST /v1/namespaces/{ns}/trainingjobs/{name}/checkpoint/ack  {"requestId", "worker", "step"}

with `Authorization: Bearer <token>`, the token being HMAC-SHA256(operator key, job uid)
(kubefit.builders.checkpoint.checkpoint_token). The contract and why HTTP is in
docs/checkpoint-handshake.md. Everything a request carries is untrusted: paths, headers and bodies are
checked here, and no request can crash the serving thread.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

from kubefit.api.resource import PLURAL, JobKey
from kubefit.builders.checkpoint import checkpoint_token
from kubefit.builders.naming import worker_index
from kubefit.controller.bounded_http import BoundedHTTPServer, DeadlineRequestHandler

logger = logging.getLogger("kubefit.checkpoints")

API_PREFIX = "v1"
MAX_BODY_BYTES = 4096
MAX_REQUEST_ID_CHARS = 128
MAX_STEP = 2**63 - 1
# A job has at most a few thousand workers; more acks than this for one request is abuse, not training.
MAX_ACKS_PER_REQUEST = 10_000
MIN_KEY_BYTES = 16
# Refused calls (a 401 or 409 per job) whose warning was logged, remembered so that a worker's retries log
# nothing more: the latest this many.
MAX_REMEMBERED_REFUSALS = 4096
GENERATED_KEY_BYTES = 32

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_REQUEST_ID = re.compile(rf"^[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_CHARS}}}$")

TokenFor = Callable[[str, str], "str | None"]
_WRONG_TOKEN = "Authorization: wrong token for this trainingjob"
_REFUSAL_HINTS = {
    _WRONG_TOKEN: " (made with another key: was the operator restarted without --checkpoint-key-file?)"
}


@dataclass
class _Request:
    request_id: str
    open: bool = True
    acks: dict[str, int] = field(default_factory=dict)
    # The job's worker pods when last (re)opened, the only names whose acks are taken; None: any name.
    workers: frozenset[str] | None = None
    # When this process first offered it to the workers: after an operator restart, later than its
    # status.checkpoint.requestedAt.
    told_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class CheckpointBoard:
    """Open checkpoint requests and their acknowledgements, per job; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[JobKey, _Request] = {}

    def open(self, key: JobKey, request_id: str, workers: Collection[str] | None = None) -> None:
        """Asks the job's workers to checkpoint; reopening the same id keeps the acks already received.
        `workers`: the job's worker pod names, the only ones whose acks are taken until the next open (the
        controller opens again at each reconcile while the request stands); None takes any worker name."""
        if not _REQUEST_ID.match(request_id):
            raise ValueError(f"checkpoint request id {request_id!r} is not 1-128 of [A-Za-z0-9._:-]")
        names = frozenset(workers) if workers is not None else None
        with self._lock:
            current = self._requests.get(key)
            if current is not None and current.request_id == request_id:
                current.open = True
                current.workers = names
            else:
                self._requests[key] = _Request(request_id, workers=names)

    def close(self, key: JobKey) -> None:
        """No request is open any more; the acks of the last one stay readable until the next open."""
        with self._lock:
            current = self._requests.get(key)
            if current is not None:
                current.open = False

    def forget(self, key: JobKey) -> None:
        """The job is gone: drop everything about it."""
        with self._lock:
            self._requests.pop(key, None)

    def current(self, key: JobKey) -> str | None:
        """The id of the job's open request, or None."""
        with self._lock:
            request = self._requests.get(key)
            return request.request_id if request is not None and request.open else None

    def told_at(self, key: JobKey, request_id: str) -> datetime | None:
        """When this process first offered the request to the job's workers; None if it has not (yet)."""
        with self._lock:
            request = self._requests.get(key)
            return request.told_at if request is not None and request.request_id == request_id else None

    def acknowledged(self, key: JobKey, request_id: str) -> Mapping[str, int]:
        """Worker pod name -> the step it saved, for this request (empty for any other id)."""
        with self._lock:
            request = self._requests.get(key)
            if request is None or request.request_id != request_id:
                return {}
            return dict(request.acks)

    def acknowledge(self, key: JobKey, request_id: str, worker: str, step: int) -> bool:
        """Records a worker's ack; False when it was refused (see refused_ack)."""
        return self.refused_ack(key, request_id, worker, step) is None

    def refused_ack(self, key: JobKey, request_id: str, worker: str, step: int) -> str | None:
        """Records a worker's ack, or says why not: the request is not the job's open one, or `worker` is
        not one of the job's worker pods (a token can name any index: those would fill the board)."""
        with self._lock:
            request = self._requests.get(key)
            if request is None or not request.open or request.request_id != request_id:
                return f"requestId: {request_id} is not this job's open request"
            if worker not in request.acks:
                if request.workers is not None and worker not in request.workers:
                    return f"worker: {worker} is not one of this job's worker pods (a pod just created: ack again)"
                if len(request.acks) >= MAX_ACKS_PER_REQUEST:
                    return f"worker: this request already holds {MAX_ACKS_PER_REQUEST} workers' acks"
            request.acks[worker] = step
            return None


def load_checkpoint_key(path: str | None) -> bytes:
    """The HMAC key from `--checkpoint-key-file` (surrounding whitespace dropped), else a random one.

    A random key lives as long as the process: tokens given to pods before an operator restart stop
    verifying after it (their acks get 401 and the operator waits out checkpointGracePeriodSeconds).
    """
    if path is None:
        return secrets.token_bytes(GENERATED_KEY_BYTES)
    try:
        key = Path(path).read_bytes().strip()
    except OSError as error:
        raise ValueError(f"--checkpoint-key-file {path}: cannot read it ({error.strerror})") from error
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"--checkpoint-key-file {path}: the key has {len(key)} bytes, at least {MIN_KEY_BYTES} needed"
        )
    return key


def token_lookup(key: bytes, uid_of: Callable[[str, str], str | None]) -> TokenFor:
    """`token_for` for serve_checkpoints, from a lookup of a job's uid by (namespace, name)."""

    def token_for(namespace: str, name: str) -> str | None:
        uid = uid_of(namespace, name)
        return checkpoint_token(key, uid) if uid else None

    return token_for


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class _Target:
    namespace: str
    name: str
    ack: bool

    @property
    def key(self) -> JobKey:
        return (self.namespace, self.name)


def parse_path(raw_path: str) -> _Target:
    """The job a request is about; anything but the two documented paths is a 404."""
    path = raw_path.split("?", 1)[0]
    parts = path.split("/")
    if len(parts) not in (7, 8) or parts[:3] != ["", API_PREFIX, "namespaces"] or parts[4] != PLURAL:
        raise _HttpError(HTTPStatus.NOT_FOUND, "no such path")
    if parts[6] != "checkpoint" or (len(parts) == 8 and parts[7] != "ack"):
        raise _HttpError(HTTPStatus.NOT_FOUND, "no such path")
    namespace, name = parts[3], parts[5]
    if not _DNS_LABEL.match(namespace) or not _DNS_SUBDOMAIN.match(name):
        raise _HttpError(HTTPStatus.NOT_FOUND, "no such trainingjob")
    return _Target(namespace, name, ack=len(parts) == 8)


@dataclass(frozen=True)
class Ack:
    request_id: str
    worker: str
    step: int


def parse_ack(body: bytes, job_name: str) -> Ack:
    """The ack body, checked field by field; the error names the field."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # Recursion: nested too deep
        raise _HttpError(HTTPStatus.BAD_REQUEST, f"body: not JSON ({error})") from error
    if not isinstance(document, dict):
        raise _HttpError(HTTPStatus.BAD_REQUEST, "body: must be a JSON object")
    request_id = document.get("requestId")
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise _HttpError(HTTPStatus.BAD_REQUEST, "requestId: must be the string the GET returned")
    worker = document.get("worker")
    if not isinstance(worker, str) or worker_index(worker, job_name) is None:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, f"worker: must be a worker pod name, {job_name}-worker-<index>"
        )
    step = document.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise _HttpError(HTTPStatus.BAD_REQUEST, f"step: must be an integer from 0 to {MAX_STEP}")
    return Ack(request_id, worker, step)


def _bearer(header: str | None) -> bytes:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _HttpError(HTTPStatus.UNAUTHORIZED, "Authorization: a Bearer token is required")
    return token.strip().encode("utf-8", "surrogateescape")


class _Handler(DeadlineRequestHandler):
    server: CheckpointServer
    server_version = "kubefit-checkpoints"

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def do_PUT(self) -> None:
        self._answer(self._not_allowed)

    # Every method of HTTP (RFC 9110) but GET and POST; an unknown one is http.server's 501.
    do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = do_PUT

    def _answer(self, handle: Callable[[], dict[str, Any]]) -> None:
        try:
            status, document = HTTPStatus.OK, handle()
        except _HttpError as error:
            status, document = error.status, {"error": error.message}
        except Exception:  # a bug here must cost one request, never the serving thread
            logger.exception("checkpoint request %s %s failed", self.command, self.path)
            status, document = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"}
        self._send(status, document)

    def _send(self, status: HTTPStatus, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        if status >= HTTPStatus.BAD_REQUEST:
            self.send_header("Connection", "close")
            self.close_connection = True
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET" if self.path.split("?")[0].endswith("/checkpoint") else "POST")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> tuple[_Target, str]:
        """The call's job, and its token (one per job object: a job made again under its name has another)."""
        target = parse_path(self.path)
        expected = self.server.token_for(target.namespace, target.name)
        if expected is None:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no trainingjob {target.namespace}/{target.name}")
        try:
            if not hmac.compare_digest(_bearer(self.headers.get("Authorization")), expected.encode()):
                raise _HttpError(HTTPStatus.UNAUTHORIZED, _WRONG_TOKEN)
        except _HttpError as error:
            raise self._refused(target, expected, error) from None
        return target, expected

    def _refused(self, target: _Target, token: str, error: _HttpError) -> _HttpError:
        """`error`, logged the first time this job's calls get its status: a refused worker waits for
        nothing, and the scale-down it should have checkpointed for waits out its grace period. Remembered
        by the job's token: a job deleted and made again under its name is another job, told again."""
        field_named = error.message.partition(":")[0]  # a 409 for a stale request and one for a worker
        if self.server.refusals.first((target.namespace, target.name, token, error.status, field_named)):
            logger.warning(
                "checkpoint call for %s/%s from %s refused, %d: %s%s (logged once per job, status and field)",
                target.namespace,
                target.name,
                self.address_string(),
                error.status,
                error.message,
                _REFUSAL_HINTS.get(error.message, ""),
            )
        return error

    def _not_allowed(self) -> dict[str, Any]:
        parse_path(self.path)
        raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} not allowed")

    def _get(self) -> dict[str, Any]:
        target, _ = self._authorized()
        if target.ack:
            raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method GET not allowed on .../checkpoint/ack")
        return {"requestId": self.server.board.current(target.key)}

    def _post(self) -> dict[str, Any]:
        target, token = self._authorized()
        if not target.ack:
            raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method POST not allowed on .../checkpoint")
        ack = parse_ack(self._body(), target.name)
        refusal = self.server.board.refused_ack(target.key, ack.request_id, ack.worker, ack.step)
        if refusal is not None:
            raise self._refused(target, token, _HttpError(HTTPStatus.CONFLICT, refusal))
        return {"requestId": ack.request_id, "acknowledged": True}

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "Transfer-Encoding: not supported, send Content-Length")
        length_header = (self.headers.get("Content-Length") or "").strip()
        # isascii too: "¹" is a digit to isdigit() and not to int()
        if not (length_header.isascii() and length_header.isdigit()):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "Content-Length: required, a non-negative integer")
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body: larger than {MAX_BODY_BYTES} bytes")
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            body = b""
        if len(body) < length:  # the client sent less than it announced, then stopped or closed
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"body: {len(body)} of the {length} bytes announced")
        return body

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("checkpoint %s: " + format, self.address_string(), *args)


class FirstTimes:
    """Which keys were seen, the latest `limit` of them: memory stays bounded whatever callers send."""

    def __init__(self, limit: int = MAX_REMEMBERED_REFUSALS) -> None:
        self._limit = limit
        self._seen: dict[object, None] = {}  # in insertion order: the oldest goes first
        self._lock = threading.Lock()

    def first(self, key: object) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            if len(self._seen) >= self._limit:
                del self._seen[next(iter(self._seen))]
            self._seen[key] = None
            return True


class CheckpointServer(BoundedHTTPServer):
    """The handshake API's HTTP server: one daemon thread per connection, within bounded_http's cap."""

    name = "checkpoints"
    # Any pod may reach this port (a worker's token is checked only once its request is read): one address
    # holds at most a quarter of the connections, and the request line and headers must come within 5 s.
    # A pod polls from a process or two (kubefit_trainer), so 32 leave room for one that every rank polls.
    max_connections_per_client = 32
    header_deadline_seconds = 5.0
    board: CheckpointBoard
    token_for: TokenFor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refusals = FirstTimes()  # the (namespace, name, token, status, field) of refused calls logged


def start_checkpoint_server(
    board: CheckpointBoard, token_for: TokenFor, address: str, port: int
) -> CheckpointServer:
    """Binds address:port (0 = any free port) and serves in a daemon thread; `.shutdown()` stops it."""
    server = CheckpointServer((address, port), _Handler)
    server.board = board
    server.token_for = token_for
    thread = threading.Thread(target=server.serve_forever, name="kubefit-checkpoints", daemon=True)
    thread.start()
    return server


def serve_checkpoints(board: CheckpointBoard, token_for: TokenFor, address: str, port: int) -> int:
    """Serves the handshake API for the life of the process; returns the port bound."""
    server = start_checkpoint_server(board, token_for, address, port)
    return int(server.server_address[1])
