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


def index_ranges(indices: frozenset[int]) -> str:
    """Worker indices as Kubernetes writes an Indexed Job's completedIndexes: "0-2,5"."""
    ranges: list[str] = []
    ordered = sorted(indices)
    start = previous = ordered[0] if ordered else 0
    for index in [*ordered[1:], None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        ranges.append(f"{start}-{previous}" if previous > start else str(start))
        if index is not None:
            start = previous = index
    return ",".join(ranges) if ordered else ""


def parse_index_ranges(text: object) -> frozenset[int]:
    """index_ranges' inverse; anything else (a status edited by hand) is no indices."""
    if not isinstance(text, str) or not text:
        return frozenset()
    indices: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if (
            not part.isascii() or not first.isdigit() or not (last.isdigit() or not last)
        ):  # "²": not for int()
            return frozenset()
        low, high = int(first), int(last or first)
        if high < low or high - low > 100_000:
            return frozenset()
        indices.update(range(low, high + 1))
    return frozenset(indices)


def workers_column(ready: int, desired: int | None) -> str:
    """status.workers, the Workers printer column: "ready/desired", "-" for an unknown desired count."""
    return f"{ready}/{'-' if desired is None else desired}"
