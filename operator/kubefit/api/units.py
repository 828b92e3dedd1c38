"""Byte units and timestamps, defined once for the whole operator.

`GIB`/`MIB` are the binary units Kubernetes quantities use (`Gi`, `Mi`); timestamps in a status are
RFC 3339 in UTC to the second, the form `metav1.Time` serializes to.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

GIB: Final = 2**30
MIB: Final = 2**20


def format_gib(byte_count: float) -> str:
    """E.g. 65712999424 -> "61.2 GiB"."""
    return f"{byte_count / GIB:.1f} GiB"


def rfc3339(moment: datetime) -> str:
    """E.g. "2024-05-01T12:00:00Z": UTC, whole seconds."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> datetime | None:
    """The moment an RFC 3339 timestamp names, or None when it is empty or unreadable."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
