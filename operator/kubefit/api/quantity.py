"""Parsing of counts ("8.03B") and Kubernetes quantities ("120Gi", "500m") into whole numbers.

Each grammar is one regular expression, used both here and as the CRD's `pattern` (Go's RE2 and
Python's `re` read it alike), so the API server and the operator accept exactly the same strings.
A parsed value must be a whole number of at least one after conversion ("0.4" parameters or "500m"
bytes are refused: the estimator divides by them) and at most the field's maximum; a huge exponent is
refused before any arithmetic, so no input can overflow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from decimal import MAX_EMAX, MIN_EMIN, ROUND_CEILING, Context, Decimal, InvalidOperation, localcontext

# A count: digits, an optional fraction and exponent, and a decimal K/M/B/T suffix ("8.03B", "2e9").
COUNT_PATTERN = r"^([0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?)([KMBT]?)$"
_COUNT_RE = re.compile(COUNT_PATTERN)  # groups: 1 the number, 3 its exponent, 4 the suffix
_COUNT_SUFFIXES = {"": 0, "K": 3, "M": 6, "B": 9, "T": 12}  # powers of ten

# The Kubernetes quantity grammar (k8s.io/apimachinery/pkg/api/resource/quantity.go, "The serialization
# format is: <quantity> ::= <signedNumber><suffix> ..."), without the sign: no size here may be negative.
# No whitespace anywhere: "16 Gi" is not a quantity, and the API server refuses a pod that requests it.
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)  # groups: 1 the number, 3 the suffix
_QUANTITY_SUFFIXES = {
    "": Decimal(1),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
# Beyond 10^40 nothing is a plausible size; refusing it first keeps Decimal arithmetic from overflowing
# ("1e999999999" would raise decimal.Overflow) and every result far inside a float.
_LARGEST_MAGNITUDE = 40
# An exponent with more digits is far beyond that magnitude either way (and int() refuses 4,300 digits).
_EXPONENT_DIGITS = 9


# How much of a value a message echoes: the operator writes messages into status conditions, which must stay
# short whatever was written ("9" * 100000 parameters).
ECHO_LIMIT = 40


def echo(value: object) -> str:
    """`value` as a message shows it: as repr() writes it, a Decimal as its exact digits ("1.5", not rounded
    to a context's precision), and past ECHO_LIMIT characters only the first of them, "…" and the full
    length: "'99999999…' (100000 characters)"."""
    quoted = isinstance(value, str)
    if isinstance(value, Decimal):
        with _exactly(len(value.as_tuple().digits)):
            text = f"{value.normalize():f}"
    else:
        text = value if isinstance(value, str) else repr(value)
    if len(text) <= ECHO_LIMIT:
        return repr(text) if quoted else text
    if not quoted:
        return f"{text[:ECHO_LIMIT]}… ({len(text)} characters)"
    head = repr(text[:ECHO_LIMIT])  # the ellipsis goes inside its quotes
    return f"{head[:-1]}…{head[-1]} ({len(text)} characters)"


class _TooLarge(ValueError):
    """A value beyond any plausible size; the parse functions say what the maximum is."""


def _number(digits: str, value: object, exponent: int = 0, factor: Decimal = Decimal(1)) -> Decimal:
    """`digits` x 10**exponent x factor (a suffix). The magnitude is judged with integers before any Decimal
    arithmetic, and as the value's, not the mantissa's: 10^41 x 10^-30 bytes is 10^11, not too large."""
    try:
        number = Decimal(digits)
    except (InvalidOperation, ValueError) as exc:  # pragma: no cover - the patterns admit only decimals
        raise ValueError(f"{echo(value)} is not a number") from exc
    if not number.is_finite():
        raise ValueError("must be a finite number")
    if number:
        magnitude = number.adjusted() + exponent + factor.adjusted()
        if magnitude > _LARGEST_MAGNITUDE:
            raise _TooLarge(value)
        if magnitude < -_LARGEST_MAGNITUDE:
            raise ValueError(f"{echo(value)} is less than one unit; it must be at least 1")
    if not number:
        return number  # zero whatever the exponent (Decimal(0).scaleb(10**9) raises InvalidOperation)
    return number.scaleb(exponent) * factor


def _exponent(text: str) -> int:
    """The power of an exponent suffix ("e-30": -30); a longer one than _EXPONENT_DIGITS as one _number
    refuses."""
    sign = -1 if text[1:2] == "-" else 1
    digits = text[1:].lstrip("+-").lstrip("0") or "0"
    return sign * (int(digits) if len(digits) <= _EXPONENT_DIGITS else 10**_EXPONENT_DIGITS)


def _whole(number: Decimal, value: object, unit: str, maximum: int | None, *, round_up: bool = False) -> int:
    """`number` as an integer (truncated, or rounded up), refused below one or above `maximum`."""
    if number.adjusted() > _LARGEST_MAGNITUDE or (maximum is not None and number > maximum):
        raise _TooLarge(value)
    whole = int(number.to_integral_value(rounding=ROUND_CEILING)) if round_up else int(number)
    if whole < 1:
        raise ValueError(f"{echo(value)} is less than one {unit} after conversion; it must be at least 1")
    return whole


def _bounded(parse: Callable[[], int], value: object, unit: str, maximum: int | None) -> int:
    try:
        return parse()
    except _TooLarge:
        limit = f"at most {maximum:,} {unit}s" if maximum is not None else f"a plausible number of {unit}s"
        raise ValueError(f"{echo(value)} is too large: it must be {limit}") from None


def _plain(value: object, kind: str) -> Decimal | None:
    """A number given as a number (not a string); None for a string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a number or a string such as {kind}, not {type(value).__name__}")
    if isinstance(value, str):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return _number(str(value), value)


def parse_count(value: int | float | str, maximum: int | None = None) -> int:
    """A parameter count: a number, or a string with a decimal K/M/B/T suffix ("8.03B")."""
    return _bounded(lambda: _count(value, maximum), value, "parameter", maximum)


def _count(value: int | float | str, maximum: int | None) -> int:
    number = _plain(value, "'8.03B'")
    if number is None:
        assert isinstance(value, str)
        match = _COUNT_RE.fullmatch(value)
        if not match:
            raise ValueError(f"{echo(value)} is not a count; use a number or a K/M/B/T suffix, e.g. '8.03B'")
        number_text, exponent_text = match.group(1), match.group(3) or ""
        exponent = _exponent(exponent_text) + _COUNT_SUFFIXES[match.group(4)]
        number = _number(number_text[: len(number_text) - len(exponent_text)], value, exponent)
    if number <= 0:
        raise ValueError("must be greater than zero")
    return _whole(number, value, "parameter", maximum)


def _quantity(value: int | float | str, example: str) -> Decimal:
    number = _plain(value, example)
    if number is None:
        assert isinstance(value, str)
        match = _QUANTITY_RE.fullmatch(value)
        if not match:
            raise ValueError(
                f"{echo(value)} is not a positive Kubernetes quantity (digits, then an optional suffix such as "
                f"Ki, Mi, Gi, m, k, M, G, with no spaces), e.g. {example}"
            )
        suffix = match.group(3) or ""
        if suffix[:1] in ("e", "E") and suffix not in _QUANTITY_SUFFIXES:
            number = _number(match.group(1), value, _exponent(suffix))
        else:
            number = _number(match.group(1), value, factor=_QUANTITY_SUFFIXES[suffix])
    if number <= 0:
        raise ValueError(f"{echo(value)} must be a Kubernetes quantity greater than zero, e.g. {example}")
    return number


def parse_bytes(value: int | float | str, maximum: int | None = None) -> int:
    """A Kubernetes memory quantity ("120Gi", "80G", 1073741824) in bytes."""

    def parse() -> int:
        return _whole(_quantity(value, "'120Gi' or '80G'"), value, "byte", maximum)

    return _bounded(parse, value, "byte", maximum)


def parse_cpu_millis(value: int | float | str, maximum: int | None = None) -> int:
    """A Kubernetes CPU quantity ("8", "500m", 0.5) in millicores, rounded up as Kubernetes rounds a CPU
    finer than a millicore ("1.0005" is 1001m, "100u" 1m): the pod holds the rounded value, so the fit must
    too."""

    def parse() -> int:
        millis = _quantity(value, "'8' or '500m'") * 1000
        return _whole(millis, value, "millicore", maximum, round_up=True)

    return _bounded(parse, value, "millicore", maximum)


def int_or_string(value: object, example: str) -> object:
    """What an int-or-string field (the CRD's x-kubernetes-int-or-string) takes: an integer or a string, with
    one message for anything else instead of one per union branch. A whole float (YAML's 2.0) is the integer
    the API server reads; a fraction must be quoted, since the API server refuses an unquoted 0.5 there."""
    if isinstance(value, bool):
        raise ValueError("must be a number or a string, not true/false")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if not value.is_integer():
            raise ValueError(
                f"{echo(value)} is a fraction: this field takes an integer or a string, so quote it, e.g. {example}"
            )
        return int(value)
    if value is not None and not isinstance(value, int | str):
        kind = (
            "a list"
            if isinstance(value, list)
            else "a mapping"
            if isinstance(value, dict)
            else type(value).__name__
        )
        raise ValueError(f"must be an integer or a string such as {example}, not {kind}")
    return value


def is_quantity(value: object) -> bool:
    """Whether `value` is what a Kubernetes quantity field takes: a non-negative integer or a string in the
    quantity grammar (used for the requests and limits a pod template already carries)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and _QUANTITY_RE.fullmatch(value) is not None


def _exactly(digits: int) -> AbstractContextManager[Context]:
    """A decimal context in which a number of up to `digits` digits, scaled by any suffix, stays exact."""
    return localcontext(prec=digits + 40, Emax=MAX_EMAX, Emin=MIN_EMIN)


def exact_quantity(value: int | str) -> Decimal | None:
    """The exact value of a Kubernetes quantity the template or the spec holds (bytes, or cores for cpu):
    parse_bytes and parse_cpu_millis truncate. 0 for zero or below 10^-40, None above 10^40 (no plausible
    size)."""
    with _exactly(len(str(value))):
        try:
            return _quantity(value, "'1Gi'")
        except _TooLarge:
            return None
        except ValueError:  # zero, or far below one unit: the grammar admits nothing else here
            return Decimal(0)


def exact_count(value: int | str) -> Decimal:
    """The exact value of a count that parse_count accepted (so its exponent is bounded): parse_count
    truncates."""
    match = _COUNT_RE.fullmatch(str(value))
    assert match is not None  # parse_count accepted it
    with _exactly(len(str(value))):
        return Decimal(match.group(1)).scaleb(_COUNT_SUFFIXES[match.group(4)])
