"""The trainer's side of kubefit's checkpoint handshake.

Before kubefit removes workers of a job (scale-down, a shrink for a higher-priority job, preemption,
suspension) it asks every worker to checkpoint and waits for their acknowledgements, at most
spec.elastic.checkpointGracePeriodSeconds. A training loop takes part like this:

    from kubefit_trainer import CheckpointHandshake

    handshake = CheckpointHandshake.from_env()   # a no-op outside a kubefit worker pod
    for step in range(start, steps):
        train_one_step()
        if handshake.requested_by_any():         # every rank, every step: one answer for all of them
            save_checkpoint(step)
            if torch.distributed.is_initialized():
                torch.distributed.barrier()     # every rank's shard is written before the ack
            if os.environ.get("LOCAL_RANK", "0") == "0":  # one ack per pod (every rank may send one)
                handshake.acknowledge(step)

Plain requested() polls the operator from the process that calls it, on its own clock: with several
processes it turns True at different steps on different ranks, and a save_checkpoint with a collective
(a sharded save, a barrier) would hang. requested_by_any() agrees through torch.distributed when it is
initialised (requested() otherwise), and is True once per request on every rank, whether or not that
rank acknowledges. It polls from as few processes as the handshake allows: global rank 0 (the others
learn the request and its id from rank 0 through the collective), plus each process that has
acknowledged a request, which keeps polling so that it can send its ack again to an operator that lost
it (docs/checkpoint-handshake.md). Every rank polling every 2 s made a large job (thousands of GPU
processes) send the operator about 1,000 polls a second, more than one operator answers in time.

Standard library only. The HTTP contract, for other languages, is docs/checkpoint-handshake.md.
"""

from __future__ import annotations

import http.client
import json
import logging
import operator
import os
import signal
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ENV_VARIABLES", "CheckpointHandshake", "Endpoint"]

logger = logging.getLogger("kubefit_trainer")

URL_ENV = "KUBEFIT_CHECKPOINT_URL"
TOKEN_ENV = "KUBEFIT_CHECKPOINT_TOKEN"
NAMESPACE_ENV = "KUBEFIT_JOB_NAMESPACE"
JOB_NAME_ENV = "KUBEFIT_JOB_NAME"
WORKER_ENV = "KUBEFIT_WORKER"
ENV_VARIABLES = (URL_ENV, TOKEN_ENV, NAMESPACE_ENV, JOB_NAME_ENV, WORKER_ENV)

DEFAULT_POLL_SECONDS = 2.0
DEFAULT_TIMEOUT_SECONDS = 5.0
ACK_ATTEMPTS = 3
ACK_RETRY_SECONDS = 0.5
# After a poll that failed, the next waits twice as long, up to this: each failure can block a training
# step for the whole timeout, which every 2 s would take most of the loop's time.
# Kept well below the grace periods the examples use (60 s): a request opened as the operator comes back
# is seen at most this late.
MAX_POLL_BACKOFF_SECONDS = 15.0
# The wait a backoff doubles from when poll_seconds is 0 (poll on every call while the operator answers).
MIN_BACKOFF_BASE_SECONDS = 1.0
# Far past any poll interval times 2**n reaching MAX_POLL_BACKOFF_SECONDS, and far below float overflow.
MAX_POLL_DOUBLINGS = 64
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM
# requestId is at most 128 characters of [A-Za-z0-9._:-] (docs/checkpoint-handshake.md): what rank 0
# broadcasts to the other ranks, NUL-padded.
MAX_REQUEST_ID_BYTES = 128


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would resend the Authorization header to wherever a redirect points: never follow one.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies either: the operator is an in-cluster Service, and the token must not travel through a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


@dataclass(frozen=True)
class Endpoint:
    """Where this worker's job is reached on the operator, and as whom (the KUBEFIT_* variables)."""

    url: str  # the operator's checkpoint API, e.g. http://kubefit.kubefit-system.svc:8081
    token: str  # the job's bearer token
    namespace: str
    job_name: str
    worker: str  # this pod's name

    @property
    def checkpoint_url(self) -> str:
        namespace, name = (urllib.parse.quote(part, safe="") for part in (self.namespace, self.job_name))
        return f"{self.url.rstrip('/')}/v1/namespaces/{namespace}/trainingjobs/{name}/checkpoint"


class CheckpointHandshake:
    """Asks kubefit's operator whether a checkpoint is wanted and acknowledges it once saved."""

    def __init__(
        self,
        endpoint: Endpoint | None,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """endpoint None makes a no-op handshake: requested() is always False, acknowledge() does nothing."""
        if poll_seconds < 0 or timeout_seconds <= 0:
            raise ValueError("poll_seconds must be >= 0 and timeout_seconds > 0")
        self.endpoint = endpoint
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self._clock = clock
        self.request_id: str | None = None  # the operator's open request, as last seen
        self._handled: str | None = None  # the request this process saved for: requested() is False for it
        self._acknowledged: str | None = None  # the request this worker already acknowledged
        self._acknowledged_step: int | None = None  # and the step it saved for it
        self._last_poll: float | None = None
        self._poll_failures = 0  # consecutive failed polls: the next waits longer
        self._warned = False
        # Whether any process of the group has a handshake, agreed at the first requested_by_any() (None:
        # not yet): with none, later calls make no collective at all.
        self._any_enabled: bool | None = None

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, poll_seconds: float = DEFAULT_POLL_SECONDS
    ) -> CheckpointHandshake:
        """From the variables kubefit sets on worker pods; a no-op handshake when they are absent."""
        env = os.environ if environ is None else environ
        # Stripped: a value written into a pod template by hand often ends in a newline, which made every
        # call fail (an invalid header) with the handshake seemingly on.
        values = {name: env.get(name, "").strip() for name in ENV_VARIABLES}
        missing = [name for name, value in values.items() if not value]
        if missing:
            if len(missing) < len(ENV_VARIABLES):
                logger.warning("checkpoint handshake off: %s not set", ", ".join(missing))
            return cls(None)
        endpoint = Endpoint(
            url=values[URL_ENV],
            token=values[TOKEN_ENV],
            namespace=values[NAMESPACE_ENV],
            job_name=values[JOB_NAME_ENV],
            worker=values[WORKER_ENV],
        )
        return cls(endpoint, poll_seconds=poll_seconds)

    def requested(self) -> bool:
        """True while the operator has a checkpoint request open that this process has not handled.

        Handled: acknowledged here, or already answered True by requested_by_any() on this process.

        Asks the operator at most every poll_seconds (in between, the last answer stands). An operator that
        cannot be reached, or answers with an error, means no request: training goes on (the first error
        is logged as a warning), and each further failure doubles the wait before the next poll, up to
        MAX_POLL_BACKOFF_SECONDS.
        """
        if self.endpoint is None:
            return False
        now = self._clock()
        # The exponent stops growing once the wait is capped: an operator that stays unreachable for
        # hours would otherwise make 2**failures too large for a float (OverflowError after 1024 polls).
        doublings = min(self._poll_failures, MAX_POLL_DOUBLINGS)
        wait = self.poll_seconds
        if doublings:
            base = max(self.poll_seconds, MIN_BACKOFF_BASE_SECONDS)
            wait = min(base * 2**doublings, max(self.poll_seconds, MAX_POLL_BACKOFF_SECONDS))
        if self._last_poll is None or now - self._last_poll >= wait:
            self._last_poll = now
            self._poll(self.endpoint)
            self._ack_again()
        return self.request_id is not None and self.request_id != self._handled

    def requested_by_any(self) -> bool:
        """requested() agreed by every process of the job: True on all of them once one sees a request.

        A collective when torch.distributed is initialised (an all-reduce of one integer, MAX, and on the
        step it answers True a broadcast of the request's id from rank 0): every rank must call it at the
        same point of each step. The first call agrees whether any rank has a handshake; with none (outside
        kubefit) every later call is False with no collective. Without torch.distributed, this process's
        requested().

        With torch.distributed, only global rank 0 polls the operator (requested()), and so does a process
        that has acknowledged a request (local rank 0 of each pod), so that its ack is sent again to an
        operator that lost it; the others make no HTTP call here and learn the request from the
        collective. One poller per job instead of one per process: every rank polling every 2 s made a
        2,000-process job send its operator about 1,000 polls a second.

        True once per request: the request then counts as handled on every process (each one saves at
        this step), acknowledged or not, so ranks that never acknowledge (all but local rank 0 of a pod)
        do not make every later step save again. A new request is True again."""
        collective = _collective()
        if collective is None:
            agreed = self.requested()
            if agreed:
                self._handle_agreed()
            return agreed
        dist, torch, device = collective
        if self._any_enabled is None:  # once: every rank's first call, so every rank takes part
            enabled = torch.tensor([1 if self.endpoint is not None else 0], device=device)
            dist.all_reduce(enabled, op=dist.ReduceOp.MAX)
            self._any_enabled = bool(enabled.item())
        if not self._any_enabled:
            return False  # off on every rank (outside kubefit): no collective and no sync at each step
        # Which ranks poll is this process's own business (HTTP only); the collectives below run on every
        # rank on every call, whatever its state: one that skipped them while the others entered would
        # hang the job.
        polls = dist.get_rank() == 0 or self._acknowledged is not None
        mine = self.requested() if polls else self._pending()
        flag = torch.tensor([1 if mine else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        agreed = bool(flag.item())
        if agreed:  # the same answer on every rank: all of them reach the broadcast
            self._adopt(self._share_request_id(dist, torch, device))
        return agreed

    def _pending(self) -> bool:
        """requested() without asking the operator: what this process last learned."""
        return self.endpoint is not None and self.request_id is not None and self.request_id != self._handled

    def _share_request_id(self, dist: Any, torch: Any, device: Any) -> str | None:
        """The open request's id as global rank 0 knows it, on every rank (a broadcast); None if unknown.

        Rank 0 asks the operator first when the request was seen by another rank (one that polls because
        it acknowledged before), so that it does not see it at its next poll and make every rank save
        again. The other ranks make no HTTP call."""
        data = b""
        if dist.get_rank() == 0:
            if self.endpoint is not None and (self.request_id is None or self.request_id == self._handled):
                self._last_poll = self._clock()
                self._poll(self.endpoint)
            if self._pending() and self.request_id is not None:
                data = self.request_id.encode("utf-8", "replace")
                if len(data) > MAX_REQUEST_ID_BYTES or b"\0" in data:
                    data = b""  # not an id the operator sends: the others learn it when they acknowledge
        buffer = torch.zeros(MAX_REQUEST_ID_BYTES, dtype=torch.uint8)
        if data:
            buffer[: len(data)] = torch.tensor(list(data), dtype=torch.uint8)
        buffer = buffer.to(device)
        dist.broadcast(buffer, src=0)
        shared = bytes(buffer.cpu().tolist()).split(b"\0", 1)[0]
        return shared.decode("utf-8", "replace") or None

    def _adopt(self, shared: str | None) -> None:
        """Marks the open request handled here, after requested_by_any() answered True for it with a
        process group; `shared` is rank 0's id for it. This process's own unseen id, when it has one, is
        handled too: the checkpoint saved at this step is newer than both."""
        if self.endpoint is None:
            return
        if shared is not None and (self.request_id is None or self.request_id == self._handled):
            self.request_id = shared  # what acknowledge() sends: no poll needed on this process
        if self.request_id is not None:
            self._handled = self.request_id

    def _handle_agreed(self) -> None:
        """Marks the open request handled here, after requested_by_any() answered True for it (one process)."""
        if self.endpoint is None:
            return
        if self.request_id is None or self.request_id == self._handled:
            # Not seen here (a requested() the loop replaced): learn its id now, or the next poll would
            # answer True again for it.
            self._last_poll = self._clock()
            self._poll(self.endpoint)
        if self.request_id is not None:
            self._handled = self.request_id

    def _ack_again(self) -> None:
        """An ack this worker sent for a request still open is sent again, once per poll: the operator keeps
        acks in memory, so one that restarted (or an ack lost on the way) would otherwise wait out the grace
        period for a checkpoint that was saved."""
        if self.endpoint is None or self._acknowledged_step is None:
            return
        if self.request_id is None or self.request_id != self._acknowledged:
            return
        body = {"requestId": self.request_id, "worker": self.endpoint.worker, "step": self._acknowledged_step}
        self._call(self.endpoint, "/ack", body)

    def acknowledge(self, step: int) -> bool:
        """Tells the operator this worker saved `step` for the open request; True once it is recorded.

        Makes up to ACK_ATTEMPTS attempts on network errors and 5xx answers (0.5 s, then 1 s apart, each
        bounded by timeout_seconds); a refusal (4xx, e.g. 409 for a request the operator has meanwhile
        closed) is not retried. Either way the request counts as handled: requested() stays False for it,
        so a failed ack never makes the loop save again on every step (the operator then waits out the
        grace period).

        A process that knows no open request (one that never polled and was not given the id by
        requested_by_any()) asks the operator for it first; with none open, nothing is sent (logged).
        From then on requested_by_any() polls on this process too, so that the ack is sent again while
        the request stays open (an operator that restarted has lost it).
        """
        if self.endpoint is None:
            return False
        try:  # an int, or what stands for one: numpy.int64, a one-element integer tensor
            step = -1 if isinstance(step, bool) else operator.index(step)
        except TypeError:
            step = -1
        if step < 0:
            # Raised here, it would stop the training loop just after its checkpoint was saved.
            logger.warning("checkpoint ack not sent: step must be a non-negative integer, not %r", step)
            return False
        if self.request_id is None or self.request_id == self._acknowledged:
            # Never polled, or what it knows is the request it already acknowledged: ask for the open one.
            # The same one still open is acknowledged again: the operator keeps the last step.
            self._last_poll = self._clock()
            self._poll(self.endpoint)
            if self.request_id is None:
                why = (
                    "could not be asked for its open request"
                    if self._poll_failures
                    else "has no request open"
                )
                logger.warning("checkpoint ack of step %d not sent: the operator %s", step, why)
                return False
        body = {"requestId": self.request_id, "worker": self.endpoint.worker, "step": step}
        self._acknowledged, self._acknowledged_step = self.request_id, step
        self._handled = self.request_id
        for attempt in range(ACK_ATTEMPTS):
            status, answer = self._call(self.endpoint, "/ack", body)
            if status == 200:
                return True
            if status is not None and status < 500:
                logger.warning("checkpoint ack of %s refused (%s): %s", self.request_id, status, answer)
                return False
            if attempt + 1 < ACK_ATTEMPTS:
                time.sleep(ACK_RETRY_SECONDS * (attempt + 1))
        logger.warning("checkpoint ack of %s not delivered after %d attempts", self.request_id, ACK_ATTEMPTS)
        return False

    def install_sigterm_handler(self, save: Callable[[], Any]) -> None:
        """On SIGTERM (a worker being removed), call save() and exit with 143 (1, with its traceback on
        stderr, when save() raised).

        Kubernetes waits terminationGracePeriodSeconds (kubefit makes it at least the checkpoint grace
        period) before SIGKILL; torchrun, which forwards the SIGTERM, kills its processes after its shutdown
        timeout, which kubefit sets to that period less 5 s (TORCH_ELASTIC_SHUTDOWN_TIMEOUT; an older
        torchrun, and its restart when a worker joins, allow 30 s). save() runs in the main thread between two Python bytecodes: possibly in
        the middle of an optimizer step, so what it saves may be half updated. It must save state already
        in memory and must not wait on the other workers (no collectives). A second SIGTERM during save() is
        ignored, and the process then ends at once (os._exit, after flushing stdout and stderr): an
        interpreter shutdown with a live process group can block until SIGKILL. A loop that checks a flag
        at a step boundary (examples/elastic-ddp/train.py) avoids both limits.
        """

        def handler(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            code = SIGTERM_EXIT_CODE
            try:
                save()
            except Exception:  # noqa: BLE001 - said, and a failed save exits 1, not as a saved one
                traceback.print_exc()
                code = 1
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError):
                        pass
                os._exit(code)

        signal.signal(signal.SIGTERM, handler)

    def _poll(self, endpoint: Endpoint) -> None:
        status, answer = self._call(endpoint, "", None)
        if status == 200 and isinstance(answer, dict):
            request_id = answer.get("requestId")
            self.request_id = request_id if isinstance(request_id, str) and request_id else None
            self._poll_failures = 0
            return
        if status is not None:
            self._warn_once("checkpoint poll answered %s: %s", status, answer)
        self.request_id = None  # no answer is no request (docs/checkpoint-handshake.md)
        self._poll_failures += 1

    def _call(
        self, endpoint: Endpoint, suffix: str, body: Mapping[str, Any] | None
    ) -> tuple[int | None, Any]:
        """(HTTP status, decoded JSON answer); (None, error) when the operator cannot be reached."""
        url = endpoint.checkpoint_url + suffix
        data = None if body is None else json.dumps(body).encode()
        try:
            # Inside the try: a URL that does not parse (no scheme, a broken IPv6 host) is no answer, not
            # an exception out of the training loop.
            request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
            request.add_header("Authorization", f"Bearer {endpoint.token}")
            if data is not None:
                request.add_header("Content-Type", "application/json")
            with _OPENER.open(request, timeout=self.timeout_seconds) as response:
                return response.status, _decode(response.read())
        except urllib.error.HTTPError as error:
            try:
                return error.code, _decode(error.read())
            except (OSError, http.client.HTTPException):
                return error.code, None
        # URLError, timeouts, resets, a malformed URL; a garbled or cut-off answer (BadStatusLine,
        # IncompleteRead: an operator that died mid-reply) is no answer either, never the loop's exception.
        except (OSError, ValueError, http.client.HTTPException) as error:
            self._warn_once("checkpoint handshake: cannot reach %s: %s", url, error)
            return None, str(error)

    def _warn_once(self, message: str, *args: Any) -> None:
        if self._warned:
            logger.debug(message, *args)
        else:
            self._warned = True
            logger.warning(message + " (further errors are logged at debug level)", *args)


def _collective() -> tuple[Any, Any, Any] | None:
    """(torch.distributed, torch, the device its collectives use) when a process group is initialised."""
    # Not imported here: a process group exists only where the training code imported torch.distributed
    # (and the package stays standard library only).
    dist, torch = sys.modules.get("torch.distributed"), sys.modules.get("torch")
    if dist is None or torch is None or not (dist.is_available() and dist.is_initialized()):
        return None
    backend = str(dist.get_backend())
    # A group with a CPU backend (gloo, "cpu:gloo,cuda:nccl") reduces CPU tensors; NCCL alone needs each
    # rank's own GPU.
    if "nccl" not in backend or "gloo" in backend or "cpu:" in backend:
        return dist, torch, torch.device("cpu")
    return dist, torch, torch.device("cuda", _own_gpu(torch))


def _own_gpu(torch: Any) -> int:
    """The GPU this process trains on, as NCCL must see it: the one the training code set
    (torch.cuda.set_device) if not the first; else torchrun's LOCAL_RANK where this process sees that
    many GPUs; else the only one it sees (CUDA_VISIBLE_DEVICES narrowed to one GPU per process, where
    LOCAL_RANK would name a device that does not exist)."""
    current = int(torch.cuda.current_device())
    if current != 0:
        return current
    local = os.environ.get("LOCAL_RANK", "").strip()
    if local.isdigit() and int(local) < int(torch.cuda.device_count()):
        return int(local)
    return 0


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # Recursion: an answer nested too deep
        return raw[:200].decode("utf-8", "replace")
