"""A count's or quantity's size is judged by its value, not its mantissa's: 10^41 x 10^-30 is 10^11; and a
count as a message shows it reads back as one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kubefit.api.quantity import parse_bytes, parse_count, parse_cpu_millis
from kubefit.api.units import format_count, format_number

LONG_MANTISSA = "1" + "0" * 41  # 10^41, above the largest plausible magnitude on its own


@pytest.mark.parametrize(
    ("parse", "written", "expected"),
    [
        (parse_bytes, LONG_MANTISSA + "e-30", 10**11),
        (parse_cpu_millis, LONG_MANTISSA + "e-30", 10**14),
        (parse_count, LONG_MANTISSA + "e-30", 10**11),
        (parse_bytes, "0." + "0" * 45 + "1e50", 10**4),  # a tiny mantissa with a large exponent
        (parse_count, "0." + "0" * 45 + "1e50T", 10**16),
        (parse_bytes, LONG_MANTISSA + "e-0030", 10**11),
    ],
)
def test_a_long_mantissa_with_a_small_exponent_is_its_value(
    parse: Callable[[str], int], written: str, expected: int
) -> None:
    assert parse(written) == expected


@pytest.mark.parametrize("parse", [parse_bytes, parse_count])
@pytest.mark.parametrize("written", ["1e" + "9" * 50, "1e" + "9" * 5000, "9" * 60, LONG_MANTISSA + "e+1"])
def test_a_huge_value_is_too_large_whatever_its_spelling(parse: Callable[[str], int], written: str) -> None:
    with pytest.raises(ValueError, match="too large"):
        parse(written)


@pytest.mark.parametrize("parse", [parse_bytes, parse_count])
@pytest.mark.parametrize("written", ["1e-" + "9" * 50, "1e-" + "9" * 5000, LONG_MANTISSA + "e-999999999"])
def test_a_tiny_value_is_less_than_one_whatever_its_spelling(
    parse: Callable[[str], int], written: str
) -> None:
    with pytest.raises(ValueError, match="less than one"):
        parse(written)


@pytest.mark.parametrize("written", ["0e9999999999", "0.0e-9999999999", "0e40"])
@pytest.mark.parametrize("parse", [parse_bytes, parse_count, parse_cpu_millis])
def test_zero_with_any_exponent_is_zero_and_refused_as_such(
    parse: Callable[[str], int], written: str
) -> None:
    # Decimal(0).scaleb(10**9) raised InvalidOperation, not a ValueError: it escaped validation, the reconcile
    # and the webhook instead of naming the field.
    with pytest.raises(ValueError, match="greater than zero"):
        parse(written)


@pytest.mark.parametrize(
    ("written", "millicores"),
    [
        ("1.0005", 1001),
        ("0.0015", 2),
        ("1500u", 2),
        ("2", 2000),
        ("250m", 250),
        (0.0011, 2),
        ("1e-3", 1),
        ("100u", 1),  # below a millicore: 1m, as Kubernetes stores it, not refused
        ("999999n", 1),
    ],
)
def test_cpu_finer_than_a_millicore_rounds_up_as_kubernetes_does(
    written: str | float, millicores: int
) -> None:
    # The pod holds the rounded-up request (resource.Quantity's MilliValue rounds up); a truncated figure let
    # the pass count a node whose allocatable CPU kube-scheduler then refuses.
    assert parse_cpu_millis(written) == millicores


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (1, "1"),
        (999, "999"),
        (1234, "1.23K"),
        (999_999, "1M"),  # as rounded: not "1000K"
        (890_000_000, "890M"),
        (8_030_261_248, "8.03B"),
        (70_553_706_496, "70.6B"),
        (10**15, "1000T"),  # the largest count: not "1e+06B"
    ],
)
def test_a_count_is_shown_with_its_suffix_never_an_exponent(count: int, shown: str) -> None:
    assert format_count(count) == shown
    assert parse_count(shown) == pytest.approx(count, rel=0.005)  # what a message shows parses back


@pytest.mark.parametrize(
    ("value", "shown"), [(1000.0, "1000"), (1024.0, "1024"), (18.0000001, "18"), (2.013, "2.01"), (-0.0, "0")]
)
def test_a_number_is_shown_to_three_digits_never_an_exponent(value: float, shown: str) -> None:
    assert format_number(value) == shown
