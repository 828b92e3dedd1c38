"""Settings, errors and the timeout rule of the unit tier's guards (used by tests/unit/conftest.py)."""

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

UNIT_TIMEOUT_SECONDS = 30
UNIT_DIR = Path(__file__).resolve().parent


class NetworkUsed(AssertionError):
    """A unit test tried to reach beyond this machine."""


def limit_unit_tests(items: Iterable[Any]) -> None:
    """A short timeout for each unit test without its own. pytest hands the collection hook every item,
    e2e ones too: those keep the suite's own limit."""
    for item in items:
        if Path(item.path).is_relative_to(UNIT_DIR) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_SECONDS))
