"""The operator's checkpoint board and its HTTP API, served for real on loopback.

Paths, headers and bodies come from pods: every malformed one gets a clear 4xx that names what is wrong,
and none of them stops the server from answering the next request.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kubefit.builders.checkpoint import checkpoint_token
from kubefit.controller.checkpoints import (
    MAX_ACKS_PER_REQUEST,
    MAX_BODY_BYTES,
    MIN_KEY_BYTES,
    CheckpointBoard,
    CheckpointServer,
    FirstTimes,
    load_checkpoint_key,
    serve_checkpoints,
    start_checkpoint_server,
    token_lookup,
)

KEY = b"k" * 32
JOB = ("team-a", "llama")
UIDS = {JOB: "uid-1", ("team-a", "other"): "uid-2"}
TOKEN = checkpoint_token(KEY, "uid-1")
PATH = "/v1/namespaces/team-a/trainingjobs/llama/checkpoint"


# ---------------------------------------------------------------------------------------------- board


def test_board_opens_records_acks_and_closes() -> None:
    board = CheckpointBoard()
    assert board.current(JOB) is None
    board.open(JOB, "r1")
    assert board.current(JOB) == "r1"
    assert board.acknowledge(JOB, "r1", "llama-worker-0", 10)
    assert board.acknowledge(JOB, "r1", "llama-worker-1", 12)
    assert board.acknowledged(JOB, "r1") == {"llama-worker-0": 10, "llama-worker-1": 12}
    assert board.acknowledged(JOB, "r0") == {}  # another request's acks are not these
    board.close(JOB)
    assert board.current(JOB) is None
    assert not board.acknowledge(JOB, "r1", "llama-worker-2", 13)  # closed: no more acks
    assert board.acknowledged(JOB, "r1") == {"llama-worker-0": 10, "llama-worker-1": 12}


def test_reopening_the_same_request_keeps_its_acks_and_a_new_one_starts_empty() -> None:
    board = CheckpointBoard()
    board.open(JOB, "r1")
    board.acknowledge(JOB, "r1", "llama-worker-0", 10)
    board.open(JOB, "r1")  # decide asks for the same request on every reconcile until it is done
    assert board.acknowledged(JOB, "r1") == {"llama-worker-0": 10}
    board.open(JOB, "r2")
    assert board.acknowledged(JOB, "r2") == {}
    assert not board.acknowledge(JOB, "r1", "llama-worker-0", 11)  # the old request is not open


def test_board_keeps_jobs_apart_and_forgets_one() -> None:
    board = CheckpointBoard()
    board.open(JOB, "r1")
    board.open(("team-b", "llama"), "r1")
    board.acknowledge(JOB, "r1", "llama-worker-0", 1)
    assert board.acknowledged(("team-b", "llama"), "r1") == {}
    board.forget(JOB)
    assert board.current(JOB) is None
    assert board.acknowledged(JOB, "r1") == {}
    assert board.current(("team-b", "llama")) == "r1"


@pytest.mark.parametrize("request_id", ["", "a b", "x" * 129, "id/with/slash", "é"])
def test_board_refuses_a_request_id_workers_could_not_send_back(request_id: str) -> None:
    with pytest.raises(ValueError, match="checkpoint request id"):
        CheckpointBoard().open(JOB, request_id)


def test_acks_per_request_are_bounded() -> None:
    board = CheckpointBoard()
    board.open(JOB, "r1")
    for index in range(MAX_ACKS_PER_REQUEST):
        assert board.acknowledge(JOB, "r1", f"llama-worker-{index}", 1)
    assert not board.acknowledge(JOB, "r1", f"llama-worker-{MAX_ACKS_PER_REQUEST}", 1)
    assert board.acknowledge(JOB, "r1", "llama-worker-0", 2)  # a worker already counted may ack again


def test_only_the_job_s_worker_pods_may_ack_and_a_reopen_updates_them() -> None:
    board = CheckpointBoard()
    board.open(JOB, "r1", ["llama-worker-0", "llama-worker-1"])
    assert board.acknowledge(JOB, "r1", "llama-worker-1", 5)
    refusal = board.refused_ack(JOB, "r1", "llama-worker-9999", 5)  # a made-up index: the token allows any
    assert refusal is not None and refusal.startswith("worker: llama-worker-9999 is not one of")
    board.open(JOB, "r1", ["llama-worker-0", "llama-worker-2"])  # the next reconcile saw worker 2 created
    assert board.acknowledge(JOB, "r1", "llama-worker-2", 6)
    assert board.acknowledge(JOB, "r1", "llama-worker-1", 7)  # acked before: its ack again is taken
    assert board.acknowledged(JOB, "r1") == {"llama-worker-1": 7, "llama-worker-2": 6}


def test_board_is_safe_under_concurrent_acks() -> None:
    board = CheckpointBoard()
    board.open(JOB, "r1")

    def ack(worker: int) -> None:
        for step in range(200):
            board.acknowledge(JOB, "r1", f"llama-worker-{worker}", step)

    threads = [threading.Thread(target=ack, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert board.acknowledged(JOB, "r1") == {f"llama-worker-{worker}": 199 for worker in range(8)}


# ---------------------------------------------------------------------------------------------- key


def test_key_file_is_read_and_stripped(tmp_path: Any) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"  " + b"s" * 40 + b"\n")
    assert load_checkpoint_key(str(path)) == b"s" * 40


def test_without_a_key_file_each_process_gets_a_random_key() -> None:
    first, second = load_checkpoint_key(None), load_checkpoint_key(None)
    assert len(first) == 32 and first != second


def test_a_short_or_missing_key_file_is_refused_naming_the_flag(tmp_path: Any) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"x" * (MIN_KEY_BYTES - 1) + b"\n")
    with pytest.raises(ValueError, match=r"--checkpoint-key-file .*short: the key has 15 bytes"):
        load_checkpoint_key(str(short))
    with pytest.raises(ValueError, match=r"--checkpoint-key-file .*absent: cannot read it"):
        load_checkpoint_key(str(tmp_path / "absent"))


def test_token_lookup_knows_only_jobs_with_a_uid() -> None:
    token_for = token_lookup(KEY, lambda namespace, name: UIDS.get((namespace, name)))
    assert token_for("team-a", "llama") == TOKEN
    assert token_for("team-a", "missing") is None


# ---------------------------------------------------------------------------------------------- HTTP


class Api:
    """A real server on 127.0.0.1 and a client that returns (status, decoded JSON)."""

    def __init__(self, board: CheckpointBoard, port: int) -> None:
        self.board = board
        self.port = port

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            connection.close()

    def get(self, path: str = PATH, token: str | None = TOKEN) -> tuple[int, Any]:
        return self.call("GET", path, headers=_auth(token))

    def ack(self, document: Any, path: str = PATH + "/ack", token: str | None = TOKEN) -> tuple[int, Any]:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        return self.call(
            "POST", path, body=body, headers={**_auth(token), "Content-Type": "application/json"}
        )


def _auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server() -> Iterator[CheckpointServer]:
    token_for = token_lookup(KEY, lambda namespace, name: UIDS.get((namespace, name)))
    running = start_checkpoint_server(CheckpointBoard(), token_for, "127.0.0.1", 0)
    try:
        yield running
    finally:
        running.shutdown()  # returns within serve_forever's poll interval (0.5 s): once per module
        running.server_close()


@pytest.fixture
def api(server: CheckpointServer) -> Api:
    server.board = CheckpointBoard()  # a fresh board for each test, on the same server
    return Api(server.board, server.server_address[1])


def test_workers_see_the_open_request_and_their_ack_lands_on_the_board(api: Api) -> None:
    assert api.get() == (200, {"requestId": None})
    api.board.open(JOB, "r1")
    assert api.get() == (200, {"requestId": "r1"})
    assert api.ack({"requestId": "r1", "worker": "llama-worker-1", "step": 42}) == (
        200,
        {"requestId": "r1", "acknowledged": True},
    )
    assert api.board.acknowledged(JOB, "r1") == {"llama-worker-1": 42}
    api.board.close(JOB)
    assert api.get() == (200, {"requestId": None})


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (None, "a Bearer token is required"),
        ("", "a Bearer token is required"),
        (checkpoint_token(KEY, "uid-2"), "wrong token"),  # another job's token
        (checkpoint_token(b"j" * 32, "uid-1"), "wrong token"),  # another operator key
        (TOKEN[:-1], "wrong token"),
        ("é" * 64, "wrong token"),  # not ASCII: compared as bytes, refused, not a crash
    ],
)
def test_a_missing_or_wrong_token_is_401_and_changes_nothing(api: Api, token: str | None, why: str) -> None:
    api.board.open(JOB, "r1")
    status, answer = api.get(token=token)
    assert status == 401 and why in answer["error"]
    status, answer = api.ack({"requestId": "r1", "worker": "llama-worker-0", "step": 1}, token=token)
    assert status == 401
    assert api.board.acknowledged(JOB, "r1") == {}


def test_a_non_bearer_scheme_is_401(api: Api) -> None:
    status, answer = api.call("GET", PATH, headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401 and "Authorization" in answer["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/namespaces/team-a/trainingjobs/missing/checkpoint",  # no such job
        "/v1/namespaces/team-a/trainingjobs/llama/status",
        "/v1/namespaces/team-a/trainingjobs/llama/checkpoint/nack",
        "/v1/namespaces/team-a/trainingjobs/llama",
        "/v2/namespaces/team-a/trainingjobs/llama/checkpoint",
        "/v1/namespaces/team-a/pods/llama/checkpoint",
        "/v1/namespaces/Team-A/trainingjobs/llama/checkpoint",  # not a DNS label
        "/v1/namespaces/team-a/trainingjobs/..%2Fllama/checkpoint",
        "/v1/namespaces//trainingjobs/llama/checkpoint",
        "/" + "a" * 5000,
        "/",
    ],
)
def test_unknown_jobs_and_paths_are_404(api: Api, path: str) -> None:
    status, answer = api.get(path)
    assert status == 404 and answer["error"]


def test_the_query_string_is_ignored(api: Api) -> None:
    api.board.open(JOB, "r1")
    assert api.get(PATH + "?watch=true") == (200, {"requestId": "r1"})


def test_ack_from_a_worker_the_job_does_not_have_is_409_naming_the_worker(api: Api) -> None:
    api.board.open(JOB, "r1", ["llama-worker-0"])
    status, answer = api.ack({"requestId": "r1", "worker": "llama-worker-7", "step": 1})
    assert status == 409 and answer["error"].startswith("worker: llama-worker-7 is not one of")
    assert api.board.acknowledged(JOB, "r1") == {}
    assert api.ack({"requestId": "r1", "worker": "llama-worker-0", "step": 1})[0] == 200


def test_a_refusal_is_logged_once_per_job_and_again_for_a_job_made_again_under_its_name(
    api: Api, server: CheckpointServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.refusals = FirstTimes()
    stale = {"requestId": "r0", "worker": "llama-worker-0", "step": 1}
    with caplog.at_level(logging.WARNING, logger="kubefit.checkpoints"):
        assert api.ack(stale)[0] == 409
        assert api.ack(stale)[0] == 409  # a worker's retry: logged once
        monkeypatch.setitem(UIDS, JOB, "uid-1b")  # the job deleted and applied again
        assert api.ack(stale, token=checkpoint_token(KEY, "uid-1b"))[0] == 409
    refused = [record for record in caplog.records if "refused, 409" in record.getMessage()]
    assert len(refused) == 2


def test_a_worker_refused_after_a_stale_request_is_logged_too(
    api: Api, server: CheckpointServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.refusals = FirstTimes()
    api.board.open(JOB, "r1", ["llama-worker-0"])
    with caplog.at_level(logging.WARNING, logger="kubefit.checkpoints"):
        assert api.ack({"requestId": "r0", "worker": "llama-worker-0", "step": 1})[0] == 409
        assert api.ack({"requestId": "r1", "worker": "llama-worker-1", "step": 1})[0] == 409
        assert api.ack({"requestId": "r1", "worker": "llama-worker-1", "step": 1})[0] == 409
    refused = [record.getMessage() for record in caplog.records if "refused, 409" in record.getMessage()]
    assert len(refused) == 2 and "worker: llama-worker-1 is not one of" in refused[1]


def test_ack_of_a_request_that_is_not_open_is_409(api: Api) -> None:
    status, answer = api.ack({"requestId": "r1", "worker": "llama-worker-0", "step": 1})
    assert status == 409 and "requestId" in answer["error"]
    api.board.open(JOB, "r2")
    assert api.ack({"requestId": "r1", "worker": "llama-worker-0", "step": 1})[0] == 409
    assert api.board.acknowledged(JOB, "r2") == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"[1, 2]", "body"),
        (b"\xff\xfe", "body"),
        ({"worker": "llama-worker-0", "step": 1}, "requestId"),
        ({"requestId": 7, "worker": "llama-worker-0", "step": 1}, "requestId"),
        ({"requestId": "r1", "step": 1}, "worker"),
        ({"requestId": "r1", "worker": "other-worker-0", "step": 1}, "worker"),  # another job's pod
        ({"requestId": "r1", "worker": "llama-worker-01", "step": 1}, "worker"),
        ({"requestId": "r1", "worker": "llama-worker-\u00b2", "step": 1}, "worker"),  # isdigit, not int()
        ({"requestId": "r1", "worker": "llama-worker-\u0661", "step": 1}, "worker"),  # Arabic-Indic 1
        ({"requestId": "r1", "worker": ["llama-worker-0"], "step": 1}, "worker"),
        ({"requestId": "r1", "worker": "llama-worker-0"}, "step"),
        ({"requestId": "r1", "worker": "llama-worker-0", "step": -1}, "step"),
        ({"requestId": "r1", "worker": "llama-worker-0", "step": 1.5}, "step"),
        ({"requestId": "r1", "worker": "llama-worker-0", "step": True}, "step"),
        ({"requestId": "r1", "worker": "llama-worker-0", "step": "3"}, "step"),
        ({"requestId": "r1", "worker": "llama-worker-0", "step": 2**63}, "step"),
    ],
)
def test_a_malformed_ack_is_400_naming_the_field(api: Api, body: Any, field: str) -> None:
    api.board.open(JOB, "r1")
    status, answer = api.ack(body)
    assert status == 400
    assert answer["error"].startswith(f"{field}:")
    assert api.board.acknowledged(JOB, "r1") == {}


def test_a_body_over_the_limit_is_413_and_is_not_read(api: Api) -> None:
    api.board.open(JOB, "r1")
    status, answer = api.ack(b"x" * (MAX_BODY_BYTES + 1))
    assert status == 413 and answer["error"].startswith("body:")


def test_a_body_without_its_length_is_400(api: Api) -> None:
    api.board.open(JOB, "r1")
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    connection.putrequest("POST", PATH + "/ack")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    connection.send(b"2\r\n{}\r\n0\r\n\r\n")
    response = connection.getresponse()
    assert response.status == 400
    assert json.loads(response.read())["error"].startswith("Transfer-Encoding:")
    connection.close()


def _raw_ack(api: Api, length: str, body: bytes) -> tuple[int, Any]:
    """An ack sent byte for byte, with the Content-Length header as given."""
    head = (f"POST {PATH}/ack HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {length}\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as raw:
        raw.sendall(head.encode("latin-1") + body)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize(
    ("length", "body", "field"),
    [
        ("\u00b9", b"{}", "Content-Length"),  # a digit to isdigit(), not to int()
        (None, b"[" * 4000, "body"),  # nested past the recursion limit: RecursionError, not ValueError
    ],
    ids=["superscript-length", "deep-json"],
)
def test_a_malformed_length_or_body_is_400_not_an_error(
    api: Api, caplog: pytest.LogCaptureFixture, length: str | None, body: bytes, field: str
) -> None:
    api.board.open(JOB, "r1")
    with caplog.at_level(logging.DEBUG, logger="kubefit.checkpoints"):
        status, answer = _raw_ack(api, str(len(body)) if length is None else length, body)
    assert status == 400 and answer["error"].startswith(f"{field}:")
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", PATH, "GET"),
        ("GET", PATH + "/ack", "POST"),
        ("PUT", PATH, "GET"),
        ("DELETE", PATH + "/ack", "POST"),
        ("OPTIONS", PATH, "GET"),  # these three were http.server's 501 HTML page
        ("TRACE", PATH + "/ack", "POST"),
        ("CONNECT", PATH, "GET"),
    ],
)
def test_wrong_methods_are_405(api: Api, method: str, path: str, allow: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    headers = {**_auth(TOKEN), "Content-Length": "0"}
    connection.request(method, path, headers=headers)
    response = connection.getresponse()
    assert response.status == 405
    assert response.getheader("Allow") == allow
    connection.close()


def test_garbage_on_the_socket_does_not_stop_the_server(api: Api) -> None:
    for garbage in (b"\x00\x01\x02 nonsense\r\n\r\n", b"GET " + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b""):
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as raw:
            raw.sendall(garbage)
            raw.shutdown(socket.SHUT_WR)
            raw.recv(65536)
    api.board.open(JOB, "r1")
    assert api.get() == (200, {"requestId": "r1"})


def test_a_failing_token_lookup_is_a_500_and_the_server_keeps_answering() -> None:
    calls = []

    def token_for(namespace: str, name: str) -> str | None:
        calls.append(name)
        if name == "broken":
            raise RuntimeError("index not ready")
        return TOKEN

    board = CheckpointBoard()
    server = start_checkpoint_server(board, token_for, "127.0.0.1", 0)
    try:
        api = Api(board, server.server_address[1])
        status, answer = api.get("/v1/namespaces/team-a/trainingjobs/broken/checkpoint")
        assert (status, answer) == (500, {"error": "internal error"})
        assert api.get() == (200, {"requestId": None})
        assert calls == ["broken", "llama"]
    finally:
        server.shutdown()
        server.server_close()


def test_serve_checkpoints_returns_the_port_it_bound() -> None:
    board = CheckpointBoard()
    board.open(JOB, "r9")
    port = serve_checkpoints(
        board, token_lookup(KEY, lambda namespace, name: UIDS.get((namespace, name))), "127.0.0.1", 0
    )
    assert port > 0
    assert Api(board, port).get() == (200, {"requestId": "r9"})


def test_a_body_shorter_than_its_length_is_400_not_an_error(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    # The client announced 100 bytes and sent 13. Cut short, the 13 were parsed as the body; left open, the
    # read timed out and was answered as an operator error (500, a traceback logged).
    api.board.open(JOB, "r1")
    head = (f"POST {PATH}/ack HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 100\r\n\r\n")  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="kubefit.checkpoints"):
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as raw:
            raw.sendall(head.encode() + b'{"requestId":')
            raw.shutdown(socket.SHUT_WR)  # then nothing more: the read ends short (or, open, times out)
            answer = b""
            while chunk := raw.recv(65536):
                answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert int(status_line.split()[1]) == 400
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"] == "body: 13 of the 100 bytes announced"
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert api.board.acknowledged(JOB, "r1") == {}
