"""A hung API server (it accepts the connection and never answers) holds a call of the operator's client for
one read timeout: urllib3's default sent a GET or DELETE again after each read timeout, three times."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from kubernetes import client
from test_leader_handover import silent_server

from kubefit.controller.kube import KubeApi

__all__ = ["silent_server"]  # the fixture, by import

READ_TIMEOUT = 0.5


@pytest.fixture
def hung_server(
    silent_server: tuple[str, list[socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> list[socket.socket]:
    """The default client configuration (what the operator loads) points at a server that never answers;
    the list holds each connection it accepted."""
    url, accepted = silent_server
    configuration = client.Configuration()
    configuration.host = url
    monkeypatch.setattr(client.Configuration, "_default", configuration)
    return accepted


@pytest.mark.parametrize(
    "call",
    [
        lambda api: api.get_job("team-a", "llama"),
        lambda api: api.delete_pod("team-a", "llama-worker-0"),
    ],
    ids=["GET", "DELETE"],
)
def test_a_hung_api_server_is_asked_once_per_call(hung_server: list[socket.socket], call) -> None:  # noqa: ANN001
    api = KubeApi(request_timeout=(1.0, READ_TIMEOUT))
    started = time.monotonic()
    with pytest.raises(Exception, match="timed out|Read timed out"):
        call(api)
    held = time.monotonic() - started
    assert len(hung_server) == 1, f"{len(hung_server)} requests sent"
    assert held < 3 * READ_TIMEOUT, f"held {held:.1f} s"


def test_a_pooled_connection_the_server_closed_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # The API server (or a load balancer) closes an idle keep-alive connection just as it is reused: the
    # request is sent again on a new one, as urllib3's default did, not failed.
    body = json.dumps(
        {"apiVersion": "kubefit.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "llama"}}
    )
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body.encode(),
    )
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def answer_once_then_close(connection: socket.socket) -> None:
        connection.recv(65536)
        connection.sendall(answer)
        connection.recv(65536)  # the reused connection's next request: closed unanswered
        connection.close()

    def accept() -> None:
        while True:
            try:
                connection = server.accept()[0]
            except OSError:
                return
            threading.Thread(target=answer_once_then_close, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setattr(client.Configuration, "_default", configuration)
    api = KubeApi(request_timeout=(1.0, 2.0))
    try:
        for _ in range(3):
            job = api.get_job("team-a", "llama")
            assert job is not None and job["metadata"]["name"] == "llama"
    finally:
        server.close()
