"""The checkpoint API's and the webhook's server (controller/bounded_http.py): connections served at once
are capped, and a request that trickles in is cut at its deadline, over real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from kubefit.controller.bounded_http import BoundedHTTPServer, DeadlineRequestHandler


class _Hello(DeadlineRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10.0  # per read, as the real handlers

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Small(BoundedHTTPServer):
    max_connections = 2
    request_deadline_seconds = 1.0


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[_Small]:
    """Two connections at most; the request deadline is 1 s, or the test's (indirect parametrization)."""
    deadline = getattr(request, "param", _Small.request_deadline_seconds)
    server_class = type("_Small", (_Small,), {"request_deadline_seconds": deadline})
    server = server_class(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _connect(server: _Small, timeout: float = 5.0) -> socket.socket:
    connection = socket.create_connection(server.server_address[:2], timeout=timeout)
    return connection


def _get(connection: socket.socket) -> bytes:
    """The whole answer (headers and the 2-byte body), however the reads split it."""
    connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return _answer(connection)


def _answer(connection: socket.socket) -> bytes:
    answer = b""
    while not answer.endswith(b"\r\n\r\nok"):
        chunk = connection.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


def _closed_within(connection: socket.socket, seconds: float) -> bool:
    connection.settimeout(seconds)
    try:
        return connection.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("server", [3.0], indirect=True)
def test_past_the_cap_a_connection_waits_until_a_deadline_frees_a_slot(server: _Small) -> None:
    held = [_connect(server), _connect(server)]
    assert all(_get(connection).startswith(b"HTTP/1.1 200") for connection in held)  # both being served
    started = time.monotonic()
    third = _connect(server, timeout=20)  # accepted by the kernel, not served: both slots are held
    answer = _get(third)
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 200")
    # When the 3 s deadline cut a held one (a slow box only makes it later): not at once, and not when the
    # held ones' 10 s read timeout would have.
    assert 1.0 < waited < 8.0, f"served after {waited:.1f} s"
    assert any(_closed_within(connection, 2.0) for connection in held)
    for connection in (*held, third):
        connection.close()


@pytest.mark.parametrize("server", [20.0], indirect=True)
def test_a_slot_freed_by_a_client_serves_the_waiting_connection_at_once(server: _Small) -> None:
    held = [_connect(server), _connect(server)]
    assert all(_get(connection).startswith(b"HTTP/1.1 200") for connection in held)
    third = _connect(server, timeout=20)
    third.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    held[0].close()
    assert _answer(third).startswith(b"HTTP/1.1 200")
    # At once, not when a held one's 10 s read timeout or the 20 s deadline would have freed a slot.
    waited = time.monotonic() - started
    assert waited < 5.0, f"served after {waited:.1f} s"
    for connection in (held[1], third):
        connection.close()


def test_a_request_that_trickles_in_is_cut_at_its_deadline(server: _Small) -> None:
    """One byte every 0.2 s never meets the 10 s read timeout; the 1 s deadline ends it."""
    connection = _connect(server)
    started = time.monotonic()
    cut = False
    for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 100:
        try:
            connection.sendall(bytes([byte]))
        except OSError:
            cut = True
            break
        connection.settimeout(0.2)
        try:
            if connection.recv(1) == b"":
                cut = True
                break
        except TimeoutError:
            pass
    elapsed = time.monotonic() - started
    connection.close()
    # Cut by the 1 s deadline (the bytes would take 21 s), and not by the 10 s read timeout.
    assert cut and elapsed < 8.0, f"still open after {elapsed:.1f} s"


@pytest.mark.parametrize("server", [2.0], indirect=True)
def test_each_request_on_a_kept_alive_connection_gets_its_own_deadline(server: _Small) -> None:
    connection = _connect(server)
    for _ in range(3):  # 3 x 1 s on one connection: past one 2 s deadline in all, within it each time
        assert _get(connection).startswith(b"HTTP/1.1 200")
        time.sleep(1.0)
    assert _get(connection).startswith(b"HTTP/1.1 200")
    connection.close()


def test_a_watcher_that_cannot_start_costs_that_connection_not_the_slot(
    server: _Small, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread left for the deadline watcher: the connection is closed and its slot freed, and the next
    connection, with a watcher again, is served and bounded."""
    real_start = threading.Thread.start
    failed: list[str] = []

    def start_once_failing(thread: threading.Thread) -> None:
        if thread.name == "kubefit-http-deadlines" and not failed:
            failed.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_once_failing)
    refused = _connect(server)
    assert _closed_within(refused, 5.0)
    assert failed
    served = [_connect(server), _connect(server)]  # both slots: the refused connection's was freed
    assert all(_get(connection).startswith(b"HTTP/1.1 200") for connection in served)
    for connection in [refused, *served]:
        connection.close()


def test_a_kept_alive_connection_is_closed_once_old_so_pollers_share_the_slots() -> None:
    # Two clients polling over kept-alive connections hold both slots; without a lifetime a third
    # waited for ever (past the cap, accepting waits for a slot).
    short = type("_Short", (_Small,), {"request_deadline_seconds": 30.0, "connection_lifetime_seconds": 1.0})
    server = short(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pollers = [_connect(server), _connect(server)]
        for poller in pollers:
            assert b"Connection: close" not in _get(poller)  # young: kept alive
        time.sleep(1.2)
        third = _connect(server)
        for poller in pollers:
            assert b"Connection: close" in _get(poller)  # old: answered, then closed
            assert _closed_within(poller, 2.0)
        assert _get(third).startswith(b"HTTP/1.1 200")  # a slot freed for the waiting client
        third.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("host", ["::1", "::"])
def test_an_ipv6_bind_address_serves(host: str) -> None:
    # `--bind-address ::` (a single-stack IPv6 cluster) failed at start: socketserver binds IPv4 only.
    server = _Small((host, 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        connection = socket.create_connection(("::1", server.server_address[1]), timeout=5.0)
        assert _get(connection).startswith(b"HTTP/1.1 200")
        connection.close()
    finally:
        server.shutdown()
        server.server_close()


def _serving(**limits: object) -> BoundedHTTPServer:
    server_class = type("_Limited", (_Small,), limits)
    server = server_class(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_client_address_past_its_cap_has_a_new_connection_closed_at_once_and_others_are_served() -> None:
    # 128 slow connections from one unauthenticated client held every slot of the checkpoint API: no
    # worker's poll or ack was answered, and removals went ahead without their checkpoint.
    server = _serving(max_connections=4, max_connections_per_client=2, request_deadline_seconds=30.0)
    try:
        held = [_connect(server), _connect(server)]
        for connection in held:
            connection.sendall(b"GET / HTTP/1.1\r\n")  # slow: the headers never end
        time.sleep(0.3)
        third = _connect(server)
        assert _closed_within(third, 2.0)  # not queued behind the slots: closed at once
        held[0].close()
        time.sleep(0.3)
        fourth = _connect(server)  # the address holds one now
        assert _get(fourth).startswith(b"HTTP/1.1 200")
        for connection in (held[1], third, fourth):
            connection.close()
    finally:
        server.shutdown()
        server.server_close()


def test_the_request_line_and_headers_have_their_own_shorter_deadline() -> None:
    server = _serving(request_deadline_seconds=30.0, header_deadline_seconds=0.5)
    try:
        slow = _connect(server)
        started = time.monotonic()
        slow.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
        assert _closed_within(slow, 5.0)
        assert time.monotonic() - started < 3.0  # the header deadline's, not the request's 30 s
        prompt = _connect(server)
        assert _get(prompt).startswith(b"HTTP/1.1 200")
        for connection in (slow, prompt):
            connection.close()
    finally:
        server.shutdown()
        server.server_close()


def test_the_checkpoint_api_caps_each_client_and_the_headers_the_webhook_does_not() -> None:
    # The API server calls the webhook from one address with many connections at once: no cap there.
    from kubefit.controller.checkpoints import CheckpointServer
    from kubefit.controller.webhook import WebhookServer

    assert CheckpointServer.max_connections_per_client == 32
    assert CheckpointServer.header_deadline_seconds == 5.0
    assert WebhookServer.max_connections_per_client is None
