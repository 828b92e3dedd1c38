"""Parsing of counts ("8.03B") and Kubernetes memory quantities ("120Gi") into integers."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_COUNT_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_COUNT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([KMBT]?)\s*$")

# Kubernetes resource.Quantity suffixes (binary SI and decimal SI).
_QUANTITY_SUFFIXES = {
    "": 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QUANTITY_RE = re.compile(
    r"^\s*([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|)\s*$"
)


def parse_count(value: int | float | str) -> int:
    """A parameter count: a number, or a string with a decimal K/M/B/T suffix ("8.03B")."""
    if isinstance(value, bool):
        raise ValueError("must be a number or a string such as '8.03B'")
    if isinstance(value, int | float):
        number = Decimal(str(value))
    else:
        match = _COUNT_RE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a count; use a number or a K/M/B/T suffix, e.g. '8.03B'")
        try:
            number = Decimal(match.group(1)) * _COUNT_SUFFIXES[match.group(2)]
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
            raise ValueError(f"{value!r} is not a count") from exc
    if number <= 0:
        raise ValueError("must be greater than zero")
    return int(number)


def parse_bytes(value: int | float | str) -> int:
    """A Kubernetes memory quantity ("120Gi", "80G", 1073741824) in bytes."""
    if isinstance(value, bool):
        raise ValueError("must be a Kubernetes quantity such as '120Gi'")
    if isinstance(value, int | float):
        number = Decimal(str(value))
    else:
        match = _QUANTITY_RE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a Kubernetes quantity, e.g. '120Gi' or '80G'")
        number = Decimal(match.group(1)) * _QUANTITY_SUFFIXES[match.group(2)]
    if number <= 0:
        raise ValueError("must be greater than zero")
    return int(number)


_CPU_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)(m?)\s*$")


def parse_cpu_millis(value: int | float | str) -> int:
    """A Kubernetes CPU quantity ("8", "500m", 0.5) in millicores."""
    if isinstance(value, bool):
        raise ValueError("must be a CPU quantity such as '8' or '500m'")
    if isinstance(value, int | float):
        millis = Decimal(str(value)) * 1000
    else:
        match = _CPU_RE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a CPU quantity, e.g. '8' or '500m'")
        millis = Decimal(match.group(1)) * (1 if match.group(2) else 1000)
    if millis <= 0:
        raise ValueError("must be greater than zero")
    return int(millis)


def format_bytes(value: int) -> str:
    """Bytes as GiB with one decimal, the unit the status messages use."""
    return f"{value / 2**30:.1f} GiB"
