"""benchmarks/horizon_decisions.py's options: a share of unbound jobs outside 0..1 is refused, naming it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import horizon_decisions  # noqa: E402


@pytest.mark.parametrize("share", ["-0.1", "1.5"])
def test_an_unbound_share_outside_zero_to_one_is_refused(
    share: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        horizon_decisions.arguments(["--unbound", share])
    assert exited.value.code == 2
    assert f"--unbound must be between 0 and 1, got {float(share)}" in capsys.readouterr().err


def test_the_defaults_are_the_full_horizon() -> None:
    args = horizon_decisions.arguments([])
    assert (args.nodes, args.jobs, args.unbound, args.python_gc_defaults) == (5000, 2000, 0.4, False)
