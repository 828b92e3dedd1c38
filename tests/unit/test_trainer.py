"""kubefit-trainer (trainer/kubefit_trainer): the training loop's side of the checkpoint handshake.

End to end against the operator's real checkpoint server on loopback: the board opens a request, the
helper sees it, acknowledges, and the board shows the ack. The package must import only the standard
library, so that it goes into any training image.
"""

from __future__ import annotations

import ast
import contextlib
import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubefit.builders.checkpoint import (
    CHECKPOINT_TOKEN_ENV,
    CHECKPOINT_URL_ENV,
    JOB_NAME_ENV,
    JOB_NAMESPACE_ENV,
    WORKER_ENV,
    checkpoint_token,
)
from kubefit.controller.checkpoints import (
    CheckpointBoard,
    CheckpointServer,
    start_checkpoint_server,
    token_lookup,
)
from kubefit_trainer import ENV_VARIABLES, CheckpointHandshake, Endpoint

REPO = Path(__file__).resolve().parents[2]
TRAINER = REPO / "trainer"
KEY = b"k" * 32
JOB = ("team-a", "llama")
TOKEN = checkpoint_token(KEY, "uid-1")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator[CheckpointServer]:
    token_for = token_lookup(KEY, lambda namespace, name: "uid-1" if (namespace, name) == JOB else None)
    running = start_checkpoint_server(CheckpointBoard(), token_for, "127.0.0.1", 0)
    try:
        yield running
    finally:
        running.shutdown()
        running.server_close()


@pytest.fixture
def board(server: CheckpointServer) -> CheckpointBoard:
    server.board = CheckpointBoard()
    return server.board


def environment(
    server: CheckpointServer, token: str = TOKEN, worker: str = "llama-worker-1"
) -> dict[str, str]:
    return {
        CHECKPOINT_URL_ENV: f"http://127.0.0.1:{server.server_address[1]}",
        CHECKPOINT_TOKEN_ENV: token,
        JOB_NAMESPACE_ENV: "team-a",
        JOB_NAME_ENV: "llama",
        WORKER_ENV: worker,
    }


def handshake(server: CheckpointServer, clock: Clock, **overrides: str) -> CheckpointHandshake:
    # The poll cadence is tested with a clock the test moves, not with sleeps.
    return CheckpointHandshake(
        CheckpointHandshake.from_env(environment(server, **overrides)).endpoint, clock=clock
    )


def test_the_env_names_match_what_the_pod_builder_sets() -> None:
    assert set(ENV_VARIABLES) == {
        CHECKPOINT_URL_ENV,
        CHECKPOINT_TOKEN_ENV,
        JOB_NAMESPACE_ENV,
        JOB_NAME_ENV,
        WORKER_ENV,
    }


def test_end_to_end_request_seen_saved_and_acknowledged(
    server: CheckpointServer, board: CheckpointBoard
) -> None:
    clock = Clock()
    worker = handshake(server, clock)
    assert worker.enabled
    assert not worker.requested()
    board.open(JOB, "r1")
    clock.now += 2.0
    assert worker.requested()
    assert worker.request_id == "r1"
    assert worker.acknowledge(120) is True
    assert board.acknowledged(JOB, "r1") == {"llama-worker-1": 120}
    assert not worker.requested()  # acknowledged: the loop does not save again for the same request
    clock.now += 2.0
    assert not worker.requested()
    board.open(JOB, "r2")  # a later removal asks again
    clock.now += 2.0
    assert worker.requested() and worker.request_id == "r2"


def test_a_process_that_never_polled_acknowledges_the_open_request(
    server: CheckpointServer, board: CheckpointBoard, caplog: pytest.LogCaptureFixture
) -> None:
    """The documented pattern: rank 0 polls and broadcasts, local rank 0 of every pod acknowledges. Those
    other pods' processes never called requested(); their acks were dropped, and every removal waited out
    its grace period."""
    poller = handshake(server, Clock(), worker="llama-worker-0")
    other = handshake(server, Clock(), worker="llama-worker-1")
    assert other.acknowledge(5) is False  # nothing open: nothing sent, and said why
    assert "no request open" in caplog.text
    board.open(JOB, "r1")
    assert poller.requested()
    assert poller.acknowledge(100) is True
    assert other.acknowledge(100) is True
    assert board.acknowledged(JOB, "r1") == {"llama-worker-0": 100, "llama-worker-1": 100}
    assert not other.requested()  # handled: its loop does not save again for r1
    board.close(JOB)
    board.open(JOB, "r2")  # the next removal: it knows r1 only, and asks again
    assert other.acknowledge(200) is True
    assert board.acknowledged(JOB, "r2") == {"llama-worker-1": 200}


def test_a_second_ack_of_the_same_open_request_sends_the_later_step(
    server: CheckpointServer, board: CheckpointBoard, caplog: pytest.LogCaptureFixture
) -> None:
    """The contract: a worker may acknowledge the same request again and the last step counts. The helper
    took the still-open request it had acknowledged for none open, sent nothing and logged so."""
    worker = handshake(server, Clock())
    board.open(JOB, "r1")
    assert worker.requested()
    assert worker.acknowledge(100) is True
    with caplog.at_level(logging.WARNING, logger="kubefit_trainer"):
        assert worker.acknowledge(150) is True
    assert board.acknowledged(JOB, "r1") == {"llama-worker-1": 150}
    assert "no request open" not in caplog.text
    board.close(JOB)
    with caplog.at_level(logging.WARNING, logger="kubefit_trainer"):
        assert worker.acknowledge(200) is False  # closed since: nothing sent
    assert "no request open" in caplog.text


def test_polls_at_most_every_poll_seconds(server: CheckpointServer, board: CheckpointBoard) -> None:
    clock = Clock()
    worker = handshake(server, clock)
    assert not worker.requested()  # first call asks the operator
    board.open(JOB, "r1")
    clock.now += 1.9
    assert not worker.requested()  # within 2 s: the last answer stands, no HTTP call
    clock.now += 0.1
    assert worker.requested()


def test_a_wrong_token_is_never_acknowledged(server: CheckpointServer, board: CheckpointBoard) -> None:
    board.open(JOB, "r1")
    honest = handshake(server, Clock())
    assert honest.requested()
    forged = handshake(server, Clock(), token=checkpoint_token(KEY, "uid-other"))
    assert not forged.requested()  # 401: no request seen
    forged.request_id = "r1"  # even knowing the id
    assert forged.acknowledge(5) is False
    assert board.acknowledged(JOB, "r1") == {}


def test_an_ack_for_a_closed_request_is_refused_without_retries(
    server: CheckpointServer, board: CheckpointBoard, caplog: pytest.LogCaptureFixture
) -> None:
    board.open(JOB, "r1")
    worker = handshake(server, Clock())
    assert worker.requested()
    board.close(JOB)
    with caplog.at_level(logging.WARNING, logger="kubefit_trainer"):
        assert worker.acknowledge(7) is False
    assert "409" in caplog.text
    assert board.acknowledged(JOB, "r1") == {}


@pytest.mark.parametrize("step", [-1, 1.5, True, "3"])
def test_acknowledge_refuses_a_step_that_is_not_a_count_without_raising_into_the_loop(
    server: CheckpointServer, board: CheckpointBoard, step: object, caplog: pytest.LogCaptureFixture
) -> None:
    # Raised, it stopped the training loop right after its checkpoint was saved.
    board.open(JOB, "r1")
    worker = handshake(server, Clock())
    assert worker.requested()
    with caplog.at_level(logging.WARNING, logger="kubefit_trainer"):
        assert worker.acknowledge(step) is False  # type: ignore[arg-type]
    assert "step must be a non-negative integer" in caplog.text
    assert board.acknowledged(JOB, "r1") == {}


def test_acknowledge_takes_an_integer_tensor_as_its_step(
    server: CheckpointServer, board: CheckpointBoard
) -> None:
    import torch  # the venv's torch extra (scripts/setup-venv.sh): missing, this fails, never skips

    board.open(JOB, "r1")
    worker = handshake(server, Clock())
    assert worker.requested() and worker.acknowledge(torch.tensor(7)) is True
    assert list(board.acknowledged(JOB, "r1").values()) == [7]


def test_an_ack_the_operator_lost_is_sent_again_while_the_request_stays_open(
    server: CheckpointServer, board: CheckpointBoard
) -> None:
    # Acks live in the operator's memory: after a restart it reopens the same request with none recorded,
    # and the worker, which already saved, answered requested() False for it until the grace period ended.
    board.open(JOB, "r1")
    clock = Clock()
    worker = handshake(server, clock)
    assert worker.requested() and worker.acknowledge(7) is True
    restarted = server.board = CheckpointBoard()  # the restarted operator's board, the request reopened
    restarted.open(JOB, "r1")
    clock.now += 3.0
    assert worker.requested() is False  # not asked to save again
    assert list(restarted.acknowledged(JOB, "r1").values()) == [7]


def test_outside_kubefit_it_is_a_no_op() -> None:
    nothing = CheckpointHandshake.from_env({})
    assert not nothing.enabled
    assert not nothing.requested()
    assert nothing.acknowledge(3) is False


def test_a_partial_environment_is_a_no_op_and_says_what_is_missing(
    server: CheckpointServer, caplog: pytest.LogCaptureFixture
) -> None:
    partial = environment(server)
    del partial[WORKER_ENV]
    with caplog.at_level(logging.WARNING, logger="kubefit_trainer"):
        assert not CheckpointHandshake.from_env(partial).enabled
    assert WORKER_ENV in caplog.text


def test_an_unreachable_operator_means_no_request_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clock = Clock()
    endpoint = Endpoint(f"http://127.0.0.1:{port}", TOKEN, "team-a", "llama", "llama-worker-0")
    worker = CheckpointHandshake(endpoint, timeout_seconds=2, clock=clock)
    with caplog.at_level(logging.WARNING, logger="kubefit_trainer"):
        for _ in range(3):
            assert not worker.requested()
            clock.now += 2.0
    assert len([record for record in caplog.records if record.levelno == logging.WARNING]) == 1


def test_sigterm_handler_saves_then_exits_143(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from kubefit_trainer import CheckpointHandshake
        handshake = CheckpointHandshake.from_env({{}})
        handshake.install_sigterm_handler(lambda: open({str(saved)!r}, "w").write("step 9"))
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """
    )
    returncode, _ = _terminated_when_ready(script)
    assert returncode == 143
    assert saved.read_text() == "step 9"


def test_a_save_that_fails_on_sigterm_exits_1_with_its_traceback() -> None:
    # os._exit in the finally dropped the exception: a full disk exited 143, as a save that worked.
    script = textwrap.dedent(
        """
        import time
        from kubefit_trainer import CheckpointHandshake
        def save():
            raise OSError(28, "No space left on device")
        CheckpointHandshake.from_env({}).install_sigterm_handler(save)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """
    )
    returncode, stderr = _terminated_when_ready(script)
    assert returncode == 1
    assert "No space left on device" in stderr


def _terminated_when_ready(script: str) -> tuple[int, str]:
    """Runs `script` until it prints "ready", sends it SIGTERM; its exit status and standard error."""
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.stderr is not None
    return returncode, process.stderr.read()


# ---------------------------------------------------------------------------------------------- packaging


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def test_the_trainer_package_imports_only_the_standard_library() -> None:
    sources = sorted((TRAINER / "kubefit_trainer").rglob("*.py"))
    assert sources, "trainer/kubefit_trainer has no Python files"
    imported = set().union(*(_imported_modules(path) for path in sources))
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported - sys.stdlib_module_names


def test_the_trainer_distribution_declares_no_dependencies() -> None:
    project = tomllib.loads((TRAINER / "pyproject.toml").read_text())["project"]
    assert project["name"] == "kubefit-trainer"
    assert project["dependencies"] == []


def test_the_trainer_runs_with_nothing_but_the_standard_library() -> None:
    # -S: no site-packages at all (no kubefit, kopf, kubernetes); -I: ignore PYTHON* env and the cwd.
    code = "import kubefit_trainer, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubefit', 'kopf', 'kubernetes')))"
    result = subprocess.run(
        [sys.executable, "-S", "-I", "-c", f"import sys; sys.path.insert(0, {str(TRAINER)!r}); {code}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- a faulty operator


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of the server's script; the last one repeats."""

    server: _ScriptedServer

    def _answer(self) -> None:
        self.server.hits.append((self.command, self.path))
        if self.command == "POST":
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status, body = self.server.script[min(len(self.server.hits) - 1, len(self.server.script) - 1)]
        if status == 0:  # a garbled status line
            self.wfile.write(b"garbage\r\n\r\n")
            return
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload) + (100 if status == 299 else 0)))
        self.end_headers()
        self.wfile.write(payload)  # 299: the body is cut off (an operator that died mid-reply)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ScriptedServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    script: list[tuple[int, object]]
    hits: list[tuple[str, str]]


@pytest.fixture
def scripted() -> Iterator[_ScriptedServer]:
    running = _ScriptedServer(("127.0.0.1", 0), _Scripted)
    running.script, running.hits = [(200, {"requestId": None})], []
    threading.Thread(target=running.serve_forever, daemon=True).start()
    try:
        yield running
    finally:
        running.shutdown()
        running.server_close()


def _worker(server: _ScriptedServer, clock: Clock) -> CheckpointHandshake:
    endpoint = Endpoint(
        f"http://127.0.0.1:{server.server_address[1]}", TOKEN, "team-a", "llama", "llama-worker-0"
    )
    return CheckpointHandshake(endpoint, timeout_seconds=2, clock=clock)


def test_a_failed_ack_does_not_make_the_loop_save_on_every_step(scripted: _ScriptedServer) -> None:
    # The request is seen, the ack refused, then every call unauthorised (an operator restarted without
    # its key file): the loop saved once, and is not asked again.
    scripted.script = [(200, {"requestId": "7-2"}), (400, {"error": "bad"}), (401, {"error": "token"})]
    clock = Clock()
    worker = _worker(scripted, clock)
    assert worker.requested()
    assert worker.acknowledge(10) is False
    asked_again = 0
    for _ in range(100):
        clock.now += 1.0
        asked_again += worker.requested()
    assert asked_again == 0


@pytest.mark.parametrize("status", [0, 299], ids=["garbled-status-line", "cut-off-body"])
def test_a_garbled_answer_is_no_request_and_never_the_loops_exception(
    scripted: _ScriptedServer, status: int
) -> None:
    scripted.script = [(status, {"requestId": "7-2"})]
    worker = _worker(scripted, Clock())
    assert worker.requested() is False
    worker.request_id = "7-2"
    assert worker.acknowledge(3) is False


def test_failed_polls_back_off_and_a_success_restores_the_cadence(scripted: _ScriptedServer) -> None:
    scripted.script = [(503, {"error": "down"})]
    clock = Clock()
    worker = _worker(scripted, clock)
    for _ in range(61):  # a step a second for a minute
        worker.requested()
        clock.now += 1.0
    # Polls at 0, 4, 12 s (each wait doubled), then every 15 s: 27, 42 and 57; not every 2 s (31 polls).
    assert len(scripted.hits) == 6
    scripted.script, scripted.hits = [(200, {"requestId": None})], []
    clock.now += 64.0
    for _ in range(10):
        worker.requested()
        clock.now += 1.0
    assert len(scripted.hits) == 5  # at 0, 2, 4, 6 and 8 s of the ten


def test_an_operator_unreachable_for_days_never_breaks_the_loop(scripted: _ScriptedServer) -> None:
    # Every poll refused (a key that no longer matches): after 1,024 failed polls 2**failures no longer
    # fit a float, which raised OverflowError out of requested() into the training loop (about 17 h).
    scripted.script = [(401, {"error": "token"})]
    clock = Clock()
    worker = _worker(scripted, clock)
    worker._poll_failures = 2000  # as after 2,000 failed polls, without making them
    clock.now += 61.0
    assert worker.requested() is False
    clock.now += 14.0
    worker.requested()
    assert len(scripted.hits) == 1  # the wait stays capped at 15 s
    clock.now += 1.0
    worker.requested()
    assert len(scripted.hits) == 2


def test_a_poll_interval_of_0_still_backs_off_from_an_unreachable_operator(scripted: _ScriptedServer) -> None:
    # 0 * 2**n is 0: every step waited out a failed call.
    scripted.script = [(503, {"error": "down"})]
    clock = Clock()
    endpoint = Endpoint(
        f"http://127.0.0.1:{scripted.server_address[1]}", TOKEN, "team-a", "llama", "llama-worker-0"
    )
    worker = CheckpointHandshake(endpoint, poll_seconds=0, timeout_seconds=2, clock=clock)
    for _ in range(20):
        worker.requested()
        clock.now += 0.5
    assert len(scripted.hits) <= 5  # 0, 2, 6 s (doubling from 1 s) of the 10 s, not 20 calls


AGREE = """
import sys
import torch.distributed as dist
from kubefit_trainer import CheckpointHandshake, Endpoint

rank, store, acked = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "acked"
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
# An operator nobody answers at: requested() is replaced below, and rank 0's poll for the id finds none.
worker = CheckpointHandshake(Endpoint("http://127.0.0.1:9", "t", "team-a", "llama", f"llama-worker-{rank}"))
if acked:
    worker._acknowledged = "r0"  # acknowledged an earlier request: it polls too, to send that ack again
# Rank 1 would see the request at step 3, rank 0 only at step 9 (each polls on its own clock).
calls = []
worker.requested = lambda: calls.append(1) or len(calls) > (3 if rank == 1 else 9)
print(next(step for step in range(20) if worker.requested_by_any()), len(calls))
dist.destroy_process_group()
"""


@pytest.mark.parametrize(("acked", "expected"), [("acked", ["3 4", "3 4"]), ("never", ["9 10", "9 0"])])
def test_requested_by_any_gives_every_rank_the_same_answer_at_the_same_step(
    tmp_path: Path, acked: str, expected: list[str]
) -> None:
    # With requested() alone the two ranks would enter save_checkpoint 6 steps apart, and a collective in
    # it would hang both. Rank 1 polls (calls requested()) only once it has acknowledged a request: before
    # that it learns the request from rank 0 through the all-reduce, and never asks the operator.
    ranks = [
        subprocess.Popen([sys.executable, "-c", AGREE, str(rank), str(tmp_path / "store"), acked],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]  # fmt: skip
    answers = [process.communicate(timeout=120) for process in ranks]
    assert [out.strip() for out, _ in answers] == expected, [err[-1500:] for _, err in answers]


OFF_EVERYWHERE = """
import sys
import torch.distributed as dist
from kubefit_trainer import CheckpointHandshake

rank, store = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
collectives = []
all_reduce = dist.all_reduce
dist.all_reduce = lambda *args, **kwargs: collectives.append(1) or all_reduce(*args, **kwargs)
worker = CheckpointHandshake.from_env({})  # outside kubefit
print(sum(worker.requested_by_any() for _ in range(50)), len(collectives))
dist.destroy_process_group()
"""


def test_outside_kubefit_requested_by_any_makes_one_collective_not_one_a_step(tmp_path: Path) -> None:
    # An all-reduce and its .item() at every step, with no handshake anywhere: on NCCL a device-to-host
    # sync each step, in code the docs call a no-op.
    ranks = [
        subprocess.Popen([sys.executable, "-c", OFF_EVERYWHERE, str(rank), str(tmp_path / "store")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]  # fmt: skip
    answers = [process.communicate(timeout=120) for process in ranks]
    assert [out.strip() for out, _ in answers] == ["0 1", "0 1"], [err[-1500:] for _, err in answers]


def test_requested_by_any_is_requested_without_torch_distributed(
    server: CheckpointServer, board: CheckpointBoard
) -> None:
    worker = handshake(server, Clock())
    assert worker.requested_by_any() is False
    board.open(JOB, "r2")
    worker = handshake(server, Clock())
    assert worker.requested_by_any() is True


def test_requested_by_any_is_true_once_per_request_without_an_ack(
    server: CheckpointServer, board: CheckpointBoard
) -> None:
    # Ranks other than local rank 0 never acknowledge: requested_by_any() alone must end the request there.
    clock = Clock()
    worker = handshake(server, clock)
    board.open(JOB, "r1")
    assert worker.requested_by_any() is True
    for _ in range(3):
        clock.now += 2.0
        assert worker.requested_by_any() is False and worker.requested() is False
    assert board.acknowledged(JOB, "r1") == {}  # nothing sent: acknowledging is left to the loop
    board.open(JOB, "r2")  # a later removal asks again
    clock.now += 2.0
    assert worker.requested_by_any() is True


ONE_POD = """
import sys
import time
from pathlib import Path
import torch.distributed as dist
from kubefit_trainer import CheckpointHandshake, Endpoint

rank, folder, url, token, acks = int(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:6]
dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=2)
# Both processes are one pod (torchrun --nproc-per-node 2). The clock is the step. Rank 0 polls every 2
# steps and sees the requests opened before steps 3 and 13 at steps 4 and 14; rank 1 polls (every 3 steps)
# only once it has acknowledged, and otherwise learns each request from rank 0.
now = [0.0]
endpoint = Endpoint(url, token, "team-a", "llama", "llama-worker-0")
worker = CheckpointHandshake(endpoint, poll_seconds=2 + rank, clock=lambda: now[0])
saves = []
for step in range(20):
    now[0] = float(step)
    if step in (3, 13):  # the test opens a request while both ranks wait here
        if rank == 0:
            (folder / f"at-{step}").touch()
            while not (folder / f"go-{step}").exists():
                time.sleep(0.02)
        dist.barrier()
    if worker.requested_by_any():
        saves.append(step)
        dist.barrier()  # a collective in the save
        if rank == 0 or acks == "every-rank":
            worker.acknowledge(step)
print(saves)
dist.destroy_process_group()
"""


def _at_step(folder: Path, step: int, action: Callable[[], object]) -> None:
    """Runs action while the ranks of ONE_POD wait before `step`."""
    deadline = time.monotonic() + 120
    while not (folder / f"at-{step}").exists():
        assert time.monotonic() < deadline, f"the ranks never reached step {step}"
        time.sleep(0.02)
    action()
    (folder / f"go-{step}").touch()


@contextlib.contextmanager
def _reaped(ranks: list[subprocess.Popen[str]]) -> Iterator[None]:
    """Kills the rank processes still running when the block ends (a failed assertion, a timeout)."""
    try:
        yield
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()


@pytest.mark.parametrize("acks", ["local-rank-0", "every-rank"])
def test_several_processes_per_pod_save_once_per_request(
    server: CheckpointServer, board: CheckpointBoard, tmp_path: Path, acks: str
) -> None:
    """docs/checkpoint-handshake.md: every rank calls requested_by_any(), local rank 0 acknowledges. The
    other ranks' requested() stayed True, so the all-reduce made every rank save again at every step until
    the operator closed the request (up to the grace period), and local rank 0 warned "ack not sent"."""
    url = f"http://127.0.0.1:{server.server_address[1]}"
    ranks = [
        subprocess.Popen([sys.executable, "-c", ONE_POD, str(rank), str(tmp_path), url, TOKEN, acks],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]  # fmt: skip
    acked: dict[str, dict[str, int]] = {}
    with _reaped(ranks):
        _at_step(tmp_path, 3, lambda: board.open(JOB, "r1"))

        def replace() -> None:
            acked["r1"] = dict(board.acknowledged(JOB, "r1"))
            board.close(JOB)
            board.open(JOB, "r2")

        _at_step(tmp_path, 13, replace)
        answers = [process.communicate(timeout=120) for process in ranks]
    errors = [err[-1500:] for _, err in answers]
    assert [out.strip() for out, _ in answers] == ["[4, 14]", "[4, 14]"], errors
    assert acked["r1"] == {"llama-worker-0": 4}
    assert board.acknowledged(JOB, "r2") == {"llama-worker-0": 14}
    assert not any("not sent" in err for err in errors), errors


TWO_PODS = """
import json
import sys
import time
from pathlib import Path
import torch.distributed as dist
import kubefit_trainer
from kubefit_trainer import CheckpointHandshake, Endpoint

rank, folder, url, token = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=4)
# Two pods of two processes each (torchrun --nproc-per-node 2): ranks 0 and 1 are llama-worker-0, ranks 2
# and 3 llama-worker-1. The clock is the step; every process would poll every 2 steps.
local_rank, pod = rank % 2, rank // 2
now = [0.0]
endpoint = Endpoint(url, token, "team-a", "llama", f"llama-worker-{pod}")
worker = CheckpointHandshake(endpoint, poll_seconds=2, clock=lambda: now[0])
calls, step = [], 0
opener = kubefit_trainer._OPENER.open

def counting(request, *args, **kwargs):  # every HTTP call the helper makes goes through here
    calls.append([step, request.get_method(), request.full_url.rsplit("/checkpoint", 1)[1]])
    return opener(request, *args, **kwargs)

kubefit_trainer._OPENER.open = counting
saves = []
for step in range(30):
    now[0] = float(step)
    if step in (5, 15, 21):  # the test acts on the operator while every rank waits here
        if rank == 0:
            (folder / f"at-{step}").touch()
            while not (folder / f"go-{step}").exists():
                time.sleep(0.02)
        dist.barrier()
    if worker.requested_by_any():
        saves.append(step)
        dist.barrier()  # a collective in the save
        if local_rank == 0:
            worker.acknowledge(step)
print(json.dumps({"saves": saves, "http": calls}))
dist.destroy_process_group()
"""


def test_only_rank_0_polls_and_every_pod_still_acknowledges(
    server: CheckpointServer, board: CheckpointBoard, tmp_path: Path
) -> None:
    """Every process polled the operator every 2 s: a 2,000-process job sent one operator about 1,000
    polls a second, more than it answered in time (a timed-out poll is "no request"). Now global rank 0
    polls; the others learn the request, and its id, from it through the collective, so no other process
    makes an HTTP call before the save; local rank 0 of each pod acknowledges for its pod with no poll of
    its own, and from then on polls to send its ack again to an operator that lost it (restarted)."""
    url = f"http://127.0.0.1:{server.server_address[1]}"
    ranks = [
        subprocess.Popen([sys.executable, "-c", TWO_PODS, str(rank), str(tmp_path), url, TOKEN],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(4)
    ]  # fmt: skip
    seen: dict[str, object] = {}
    with _reaped(ranks):
        _at_step(tmp_path, 5, lambda: board.open(JOB, "r1"))

        def restart() -> None:  # the operator restarted: the same request reopened, its acks lost
            seen["r1"] = dict(board.acknowledged(JOB, "r1"))
            seen["restarted"] = server.board = CheckpointBoard()
            server.board.open(JOB, "r1")

        _at_step(tmp_path, 15, restart)

        def replace() -> None:  # the next removal
            restarted = seen["restarted"]
            assert isinstance(restarted, CheckpointBoard)
            seen["r1 again"] = dict(restarted.acknowledged(JOB, "r1"))
            restarted.close(JOB)
            restarted.open(JOB, "r2")

        _at_step(tmp_path, 21, replace)
        answers = [process.communicate(timeout=120) for process in ranks]
    errors = [err[-1500:] for _, err in answers]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in answers if out.strip()]
    assert len(results) == 4, errors
    http = [result["http"] for result in results]
    # (a) the ranks that never acknowledge never called the operator at all
    assert http[1] == [] and http[3] == [], http
    # (b) r1 seen by rank 0 at its poll of step 6, r2 by rank 2 (polling at odd steps since its ack) at
    # step 21, when rank 0 asked for its id and gave it to the others: each saved once, on every rank.
    assert [result["saves"] for result in results] == [[6, 21]] * 4, errors
    # rank 0 polled every 2 steps (and at 21 for the id of the request rank 2 saw), and no other rank
    # before the first save; local rank 0 of the second pod learned r1's id from rank 0 (its first call
    # is its ack, no poll) and polls from then on, every 2 steps, each poll sending its ack again while
    # the request stays open
    assert [call[0] for call in http[0] if call[1] == "GET"] == [*range(0, 21, 2), *range(21, 30, 2)]
    assert http[2][0] == [6, "POST", "/ack"], http[2]
    assert [call[0] for call in http[2] if call[1] == "GET"] == list(range(7, 30, 2))
    # (c) one ack per pod, from that pod's own process, for the step all of them saved
    assert seen["r1"] == {"llama-worker-0": 6, "llama-worker-1": 6}
    # sent again, once the restarted operator offered the request again, by each pod's acknowledging process
    assert seen["r1 again"] == {"llama-worker-0": 6, "llama-worker-1": 6}
    restarted = seen["restarted"]
    assert isinstance(restarted, CheckpointBoard)
    assert restarted.acknowledged(JOB, "r2") == {"llama-worker-0": 21, "llama-worker-1": 21}


@pytest.mark.parametrize("url", ["kubefit-checkpoints.kubefit-system.svc", "http://[fd00::1:8081"])
def test_a_url_that_does_not_parse_is_no_request_not_an_exception_in_the_loop(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # urllib's Request was built outside the try: its ValueError stopped the training step, and under
    # torch.distributed left the other ranks in their collective.
    worker = CheckpointHandshake(Endpoint(url, TOKEN, "team-a", "llama", "llama-worker-0"), poll_seconds=0)
    assert worker.requested() is False
    assert worker.acknowledge(3) is False
    assert "cannot reach" in caplog.text
    assert "the operator could not be asked for its open request" in caplog.text  # not "has no request"


def test_an_answer_nested_too_deep_is_no_answer() -> None:
    from kubefit_trainer import _decode

    assert isinstance(_decode(b"[" * 200_000), str)


def test_the_environment_s_values_are_stripped(server: CheckpointServer, board: CheckpointBoard) -> None:
    # A token written into a pod template by hand with its trailing newline: an invalid header on every call.
    values = {
        **environment(server),
        CHECKPOINT_TOKEN_ENV: TOKEN + "\n",
        CHECKPOINT_URL_ENV: " " + environment(server)[CHECKPOINT_URL_ENV],
    }
    worker = CheckpointHandshake.from_env(values, poll_seconds=0)
    board.open(JOB, "r1")
    assert worker.requested() and worker.acknowledge(9) is True


class _Cuda:
    def __init__(self, count: int, current: int) -> None:
        self.count, self.current = count, current

    def device_count(self) -> int:
        return self.count

    def current_device(self) -> int:
        return self.current


class _Torch:
    def __init__(self, count: int, current: int) -> None:
        self.cuda = _Cuda(count, current)

    @staticmethod
    def device(kind: str, index: int | None = None) -> str:
        return kind if index is None else f"{kind}:{index}"


class _Dist:
    def __init__(self, backend: str) -> None:
        self.backend = backend

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def is_initialized() -> bool:
        return True

    def get_backend(self) -> str:
        return self.backend


@pytest.mark.parametrize(
    ("backend", "gpus", "current", "local_rank", "device"),
    [
        ("gloo", 8, 0, "3", "cpu"),
        ("cpu:gloo,cuda:nccl", 8, 0, "3", "cpu"),  # a CPU backend in the group: CPU tensors
        ("nccl", 8, 0, "3", "cuda:3"),  # torchrun's LOCAL_RANK, set_device not called (yet)
        ("nccl", 8, 3, "3", "cuda:3"),
        ("nccl", 1, 0, "3", "cuda:0"),  # one GPU visible per process: LOCAL_RANK 3 names no device
        ("nccl", 8, 5, "1", "cuda:5"),  # the training code's own set_device
        ("nccl", 8, 0, "x", "cuda:0"),  # not a number: no exception in the loop
    ],
)
def test_the_collective_s_device_is_the_process_s_own_gpu(
    monkeypatch: pytest.MonkeyPatch, backend: str, gpus: int, current: int, local_rank: str, device: str
) -> None:
    from kubefit_trainer import _collective

    monkeypatch.setitem(sys.modules, "torch", _Torch(gpus, current))
    monkeypatch.setitem(sys.modules, "torch.distributed", _Dist(backend))
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    found = _collective()
    assert found is not None and found[2] == device
