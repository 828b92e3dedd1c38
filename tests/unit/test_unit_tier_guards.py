"""The unit tier's own guards (tests/unit/conftest.py) do what they say."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from unit_tier import UNIT_DIR, UNIT_TIMEOUT_SECONDS, NetworkUsed, limit_unit_tests


def test_a_connection_beyond_loopback_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        with pytest.raises(NetworkUsed):
            probe.connect(("192.0.2.1", 443))  # TEST-NET-1: never routed, and never tried here


def test_loopback_stays_usable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass


def test_every_unit_test_has_a_short_timeout(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None and marker.args[0] == UNIT_TIMEOUT_SECONDS


def test_the_short_timeout_stays_in_the_unit_tier() -> None:
    """The hook sees every collected item; an e2e test (outside tests/unit) keeps the suite's own limit."""

    class Item:
        def __init__(self, path: Path) -> None:
            self.path = path
            self.markers: list[pytest.Mark] = []

        def get_closest_marker(self, name: str) -> None:
            return None

        def add_marker(self, marker: pytest.MarkDecorator) -> None:
            self.markers.append(marker.mark)

    unit, e2e = Item(UNIT_DIR / "test_x.py"), Item(UNIT_DIR.parent / "e2e" / "test_y.py")
    limit_unit_tests([unit, e2e])
    assert [mark.args for mark in unit.markers] == [(UNIT_TIMEOUT_SECONDS,)]
    assert e2e.markers == []
