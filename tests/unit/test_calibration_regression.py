"""The estimator against the published measurements in benchmarks/data/calibration_rows.yaml.

A change that makes the estimate worse on these rows fails here; benchmarks/sizing_accuracy.py prints
the full table. Rows beyond the 25% target are listed with the reason and marked xfail(strict), so they
show in every run and a fix makes the test say so.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
_spec = importlib.util.spec_from_file_location("sizing_accuracy", BENCHMARKS / "sizing_accuracy.py")
assert _spec is not None and _spec.loader is not None
accuracy = importlib.util.module_from_spec(_spec)
sys.modules["sizing_accuracy"] = accuracy  # dataclasses look their module up
_spec.loader.exec_module(accuracy)

ROWS = accuracy.load_rows()
IN_SUMMARY = [row for row in ROWS if row.expressible]
MEASURED = [row for row in IN_SUMMARY if row.fully_specified and row.measured_bytes is not None]

ROW_TOLERANCE = 0.25  # the accuracy target per fully specified row
MEDIAN_TOLERANCE = 0.07  # the target is 10%; the estimator reaches 6.0% (docs/sizing.md)

# Over-estimates beyond the target, with the physics the API cannot state. Each stays on the safe side
# (over, not under) and below the bound given, so it cannot silently get worse.
KNOWN_OVERESTIMATES = {
    "54": (
        0.36,
        "no AC: torch.compile (the README runs it) recomputes pointwise ops instead of saving them, and "
        "Llama has no dropout masks; neither is in the API",
    ),
    "57": (
        0.29,
        "weights + saved layer inputs alone are 41.4 GiB of the 41.7 measured: the source's 'GB' is "
        "probably GiB, or the run used the config's batch_size 1",
    ),
}


def _params(rows):
    return [pytest.param(row, id=f"row-{row.id}") for row in rows]


@pytest.mark.parametrize("row", _params([r for r in MEASURED if r.id not in KNOWN_OVERESTIMATES]))
def test_fully_specified_row_within_tolerance(row) -> None:
    result = accuracy.evaluate(row)
    assert abs(result.error) <= ROW_TOLERANCE, f"{row.label}: {result.error:+.1%}"


@pytest.mark.parametrize("row", _params([r for r in MEASURED if r.id in KNOWN_OVERESTIMATES]))
def test_known_overestimate_stays_safe_and_bounded(row) -> None:
    bound, _why = KNOWN_OVERESTIMATES[row.id]
    result = accuracy.evaluate(row)
    assert 0 < result.error <= bound, f"{row.label}: {result.error:+.1%}"


@pytest.mark.parametrize("row", _params([r for r in MEASURED if r.id in KNOWN_OVERESTIMATES]))
@pytest.mark.xfail(strict=True, reason="beyond the 25% target; see KNOWN_OVERESTIMATES and docs/sizing.md")
def test_known_overestimate_meets_the_target(row) -> None:
    assert abs(accuracy.evaluate(row).error) <= ROW_TOLERANCE


def test_median_error_of_fully_specified_rows() -> None:
    errors = [abs(accuracy.evaluate(row).error) for row in MEASURED]
    assert len(errors) >= 15
    assert statistics.median(errors) <= MEDIAN_TOLERANCE


@pytest.mark.parametrize("row", _params([r for r in IN_SUMMARY if r.oom]))
def test_out_of_memory_row_is_predicted_not_to_fit(row) -> None:
    assert not accuracy.evaluate(row).fits


@pytest.mark.parametrize("row", _params([r for r in IN_SUMMARY if not r.oom]))
def test_measured_row_is_predicted_to_fit(row) -> None:
    assert accuracy.evaluate(row).fits


def test_rows_not_in_the_summary_say_why() -> None:
    for row in ROWS:
        assert row.expressible or row.why_not, row.id
        assert row.source and row.assumed is not None
