"""The admission webhook's endpoint (controller/webhook.py) against what it cannot control: certificate
files replaced one at a time, and request bytes any pod can send. Over real TLS on loopback."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from self_signed import self_signed_certificate

from kubefit.controller.webhook import VALIDATE_PATH, WebhookServer, start_webhook_server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[WebhookServer, Path, Path]]:
    cert, key = self_signed_certificate(tmp_path, "webhook")
    server = start_webhook_server(lambda document: {"allowed": True}, "127.0.0.1", 0, str(cert), str(key))
    try:
        yield server, cert, key
    finally:
        server.shutdown()
        server.server_close()


def _exchange(server: WebhookServer, cafile: Path, raw: bytes) -> bytes:
    """`raw` sent over TLS (trusting `cafile` alone); what came back until the server closed."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as plain:
        with context.wrap_socket(plain, server_hostname="127.0.0.1") as connection:
            connection.sendall(raw)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
            return answer


def _post(body: bytes, length: str | None = None) -> bytes:
    length = str(len(body)) if length is None else length
    head = (
        f"POST {VALIDATE_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _newer(path: Path) -> None:
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 5))  # a new mtime, however fast the test


def test_a_certificate_that_does_not_load_keeps_the_old_one_served_and_is_logged_once(
    served: tuple[WebhookServer, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """cert-manager or a person replaces the certificate, and its key a moment later (or never): in
    between the pair does not load. The old one must go on serving, not every connection be reset."""
    server, cert, key = served
    old_cert = tmp_path / "old.crt"
    old_cert.write_bytes(cert.read_bytes())
    new_cert, new_key = self_signed_certificate(tmp_path, "rotated")
    os.replace(new_cert, cert)  # the certificate only: it does not match the key
    _newer(cert)
    with caplog.at_level(logging.WARNING, logger="kubefit.webhook"):
        for _ in range(3):
            assert _exchange(server, old_cert, _post(b"{}")).startswith(b"HTTP/1.1 200")
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1, [record.getMessage() for record in caplog.records]
    assert str(cert) in warnings[0].getMessage() and "previous" in warnings[0].getMessage()
    os.replace(new_key, key)  # the key follows: the new pair loads
    _newer(key)
    assert _exchange(server, cert, _post(b"{}")).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_post(b"{}", length="\u00b2"), "Content-Length"),  # a digit to isdigit(), not to int()
        (_post(b"[" * 100_000), "body"),  # nested past the recursion limit: RecursionError, not ValueError
        (_post(b'{"a": ' * 5000 + b"1" + b"}" * 5000), "body"),
    ],
    ids=["superscript-length", "deep-array", "deep-object"],
)
def test_a_malformed_request_is_a_400_not_an_error(
    served: tuple[WebhookServer, Path, Path], caplog: pytest.LogCaptureFixture, raw: bytes, why: str
) -> None:
    server, cert, _ = served
    with caplog.at_level(logging.DEBUG):
        answer = _exchange(server, cert, raw)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    document: dict[str, Any] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert document["error"].startswith(why)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_large_body_waits_for_others_to_be_read_and_past_the_wait_is_503(
    served: tuple[WebhookServer, Path, Path],
) -> None:
    """Bodies are held as text and as the objects parsed from them, at up to 25 times their size: 128
    connections at the largest size ran the operator past its memory limit. Past BODY_BUDGET_BYTES held at
    once, a request waits, and past its wait it gets 503 (unread), not the memory."""
    server, cert, _ = served
    server.body_wait_seconds = 0.2
    review = json.dumps({"request": {"uid": "u"}}).encode()
    with server.bodies.hold(server.bodies.limit - 10, timeout=1) as granted:
        assert granted
        answer = _exchange(server, cert, _post(review))  # more than the 10 bytes left
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
    answer = _exchange(server, cert, _post(review))  # given back: served
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
