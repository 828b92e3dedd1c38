"""How a sizing and a worker count are written for people: the status's messages and printer columns,
and `kubefit size`. Byte units and timestamps are in api/units.py."""

from __future__ import annotations

from kubefit.api.models import SizingStatus
from kubefit.api.units import format_gib


def sizing_summary(sizing: SizingStatus) -> str:
    """One line for the Sized condition, e.g. "8 x nvidia-h100-80gb, 61.2 GiB of 79.6 GiB per device"."""
    summary = (
        f"{sizing.accelerators_per_worker} x {sizing.accelerator}, "
        f"{format_gib(sizing.per_device_bytes)} of {format_gib(sizing.device_memory_bytes)} per device"
    )
    if sizing.min_workers > 1:
        summary += f", at least {sizing.min_workers} workers"
    return summary


def workers_column(ready: int, desired: int | None) -> str:
    """status.workers, the Workers printer column: "ready/desired", "-" for an unknown desired count."""
    return f"{ready}/{'-' if desired is None else desired}"
