"""The addresses the operator tells worker pods (controller/runner.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kubefit.controller import runner


def test_workers_are_told_an_address_they_can_reach_not_a_wildcard_bind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a pod the operator binds 0.0.0.0; told http://0.0.0.0:8081, a worker reached its own pod, found
    no checkpoint request ever, and every removal waited out its whole grace period."""
    assert runner.advertised_address("127.0.0.1") == "127.0.0.1"
    assert runner.advertised_address("10.1.2.3") == "10.1.2.3"
    monkeypatch.delenv("POD_IP", raising=False)
    monkeypatch.setattr(runner.socket, "gethostname", lambda: "kubefit-7d9f")
    addresses = ["127.0.1.1", "fd00::17", "10.244.3.17"]  # a Debian hosts file lists 127.0.1.1 first
    infos = [(0, 0, 0, "", (address, 0)) for address in addresses]
    monkeypatch.setattr(runner.socket, "getaddrinfo", lambda host, port: infos)
    assert runner.advertised_address("0.0.0.0") == "fd00::17"
    assert runner.advertised_address("::") == "fd00::17"
    assert runner._url_host("fd00::17") == "[fd00::17]"
    monkeypatch.setenv("POD_IP", "10.244.3.17")  # the downward API's status.podIP, where given
    assert runner.advertised_address("0.0.0.0") == "10.244.3.17"
    monkeypatch.delenv("POD_IP")
    monkeypatch.setattr(runner.socket, "getaddrinfo", lambda host, port: infos[:1])
    assert runner.advertised_address("0.0.0.0") == "127.0.0.1"  # nothing better: loopback, with a warning


def test_the_standby_health_server_and_the_free_port_take_an_ipv6_bind_address() -> None:
    from kubefit.controller.runner import _free_port, _serve_standby_health

    port = _free_port("::1")
    server = _serve_standby_health("::1", port)
    try:
        connection = socket.create_connection(("::1", port), timeout=5.0)
        connection.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert connection.recv(64).startswith(b"HTTP/1.1 200")  # HTTP/1.1 servers answer so
        connection.close()
    finally:
        server.shutdown()
        server.server_close()


def test_the_free_liveness_port_lies_below_the_ephemeral_range(tmp_path: Path) -> None:
    # kopf binds the liveness port well after it is picked; one from the ephemeral range had meanwhile
    # become the local port of the operator's own API connection (an e2e run failed on it).
    from kubefit.controller.runner import LOWEST_PICKED_PORT, _free_port

    ports = tmp_path / "ip_local_port_range"
    ports.write_text("32768\t60999\n")
    for _ in range(20):
        assert LOWEST_PICKED_PORT <= _free_port("127.0.0.1", str(ports)) < 32768
    ports.write_text("1024 60999\n")  # no room below it: any free port
    assert _free_port("127.0.0.1", str(ports)) > 0
    assert LOWEST_PICKED_PORT <= _free_port("127.0.0.1", str(tmp_path / "missing")) < 32768


@pytest.mark.parametrize(
    ("service_host", "expected"),
    [(None, "127.0.0.1"), ("10.96.0.1", "0.0.0.0"), ("fd00:10:96::1", "::")],  # noqa: S104 - the pod's bind
)
def test_the_default_bind_address_answers_the_pod_ip_of_the_cluster_s_family(
    monkeypatch: pytest.MonkeyPatch, service_host: str | None, expected: str
) -> None:
    """On a single-stack IPv6 cluster the kubelet probes the pod's IPv6 address, which a 0.0.0.0 bind does not
    answer: the chart's operator failed its probes and restarted for ever unless given --bind-address=::."""
    if service_host is None:
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    else:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", service_host)
    assert runner.default_bind_address() == expected
