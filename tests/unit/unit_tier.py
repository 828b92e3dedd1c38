"""Settings and errors of the unit tier's guards (used by tests/unit/conftest.py)."""

UNIT_TIMEOUT_SECONDS = 30


class NetworkUsed(AssertionError):
    """A unit test tried to reach beyond this machine."""
