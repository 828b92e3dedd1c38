"""Benchmarks refuse contradictory or out-of-range options before starting anything, naming the option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _refused(script: str, *args: str) -> str:
    finished = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 2, finished.stderr
    return finished.stderr


def test_scale_500_refuses_cpu_only_without_a_profile_directory() -> None:
    assert "--cpu-only goes with --profile DIR" in _refused("scale_500.py", "--cpu-only")


@pytest.mark.parametrize(
    "args", [["--collections", "1"], ["--nodes", "0"], ["--pods", "-1"]], ids=["collections", "nodes", "pods"]
)
def test_full_collections_refuses_out_of_range_sizes(args: list[str]) -> None:
    assert args[0] in _refused("full_collections.py", *args)
