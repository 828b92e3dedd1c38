"""The unit tier: fast, offline, and each test bounded on its own.

- Every test gets a short timeout (UNIT_TIMEOUT_SECONDS) unless it sets its own with
  `@pytest.mark.timeout`: a hang fails in seconds instead of waiting for the suite's global limit.
- No network: a connection to anything but loopback fails the test at once. The unit tier must not
  download or reach a cluster; what it needs (the helm binary) is installed by `make` beforehand.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from unit_tier import NetworkUsed, limit_unit_tests


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    limit_unit_tests(items)


def _is_local(address: Any) -> bool:
    if isinstance(address, str):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: that is the network


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> Any:
        if not _is_local(address):
            raise NetworkUsed(f"unit tests run offline; connection to {address!r} refused")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if not _is_local(address):
            raise NetworkUsed(f"unit tests run offline; connection to {address!r} refused")
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield
