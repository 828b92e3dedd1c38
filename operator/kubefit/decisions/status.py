"""Derived, human-facing parts of the status: phase, printing helpers, sizing message, timestamps."""

from __future__ import annotations

from datetime import UTC, datetime

from kubefit.api.models import SizingStatus

GIB = 2**30


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def gib(byte_count: int) -> str:
    return f"{byte_count / GIB:.1f} GiB"


def sizing_message(sizing: SizingStatus) -> str:
    """E.g. "8 x nvidia-h100-80gb, 61.2 GiB of 79.6 GiB per device"."""
    message = (
        f"{sizing.accelerators_per_worker} x {sizing.accelerator}, "
        f"{gib(sizing.per_device_bytes)} of {gib(sizing.device_memory_bytes)} per device"
    )
    if sizing.min_workers > 1:
        message += f", at least {sizing.min_workers} workers"
    return message


def workers_column(ready: int, desired: int | None) -> str:
    return f"{ready}/{'-' if desired is None else desired}"
