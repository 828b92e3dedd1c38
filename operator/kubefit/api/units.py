"""Byte units, counts in messages and timestamps, defined once for the whole operator.

`GIB`/`MIB` are the binary units Kubernetes quantities use (`Gi`, `Mi`); timestamps in a status are
RFC 3339 in UTC to the second, the form `metav1.Time` serializes to.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final

GIB: Final = 2**30
MIB: Final = 2**20
# The decimal suffixes a count may carry (the COUNT_PATTERN grammar), largest first.
_COUNT_SUFFIXES: Final = (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3))


def format_gib(byte_count: float) -> str:
    """E.g. 65712999424 -> "61.2 GiB"."""
    return f"{byte_count / GIB:.1f} GiB"


def format_number(value: float, significant: int = 3) -> str:
    """`value` to `significant` digits as %g writes it, but never with an exponent: 1000 -> "1000", not
    "1e+03"; 18.0 -> "18"."""
    if not value or not math.isfinite(value):
        return f"{value + 0.0:g}"  # + 0.0: no "-0"
    decimals = max(0, significant - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_count(count: float, significant: int = 3) -> str:
    """A parameter count with the largest K/M/B/T suffix it reaches: 8030261248 -> "8.03B", 1234 -> "1.23K",
    1 -> "1" (in billions it read "0.00B" or "1e-09B")."""
    for suffix, unit in _COUNT_SUFFIXES:
        text = format_number(count / unit, significant)
        if float(text) >= 1:  # as rounded: 999999 is "1M", not "1000K"
            return text + suffix
    return format_number(count, significant)


def rfc3339(moment: datetime) -> str:
    """E.g. "2024-05-01T12:00:00Z": UTC, whole seconds."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> datetime | None:
    """The moment an RFC 3339 timestamp names, or None when it is empty or unreadable. One without a zone
    (RFC 3339 requires it; a status edited by hand) is read as UTC, as Kubernetes writes every time: compared
    with an aware one, it failed every reconcile of its job."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
