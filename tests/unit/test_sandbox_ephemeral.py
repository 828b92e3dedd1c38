"""Throwaway sandboxes left by a killed run are reaped; ones whose owner still runs are left alone."""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubefit_sandbox.controlplane import ComponentProcess, SandboxState, process_start_time
from kubefit_sandbox.ephemeral import OWNER_LOCK_FILE, STAGING_PREFIX, reap_abandoned


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for a control-plane component of a run that was killed."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def _run_dir(root: Path, name: str, process: subprocess.Popen[bytes]) -> Path:
    state_dir = root / name
    state_dir.mkdir(parents=True)
    (state_dir / OWNER_LOCK_FILE).touch()
    start_time = process_start_time(process.pid)
    assert start_time is not None
    component = ComponentProcess(
        "etcd", process.pid, start_time, ["sleep", "300"], str(state_dir / "etcd.log")
    )
    SandboxState(processes={"etcd": component}).save(state_dir / "state.json")
    return state_dir


def test_an_abandoned_sandbox_is_stopped_and_deleted(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    state_dir = _run_dir(tmp_path, "e2e-1-abcdef", sleeper)
    assert reap_abandoned(tmp_path, log=lambda _: None) == [state_dir]
    assert sleeper.wait(timeout=15) is not None  # stopped (SIGTERM), not left running
    assert not state_dir.exists()


def test_a_sandbox_whose_owner_runs_is_left_alone(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    state_dir = _run_dir(tmp_path, "e2e-2-abcdef", sleeper)
    owner = os.open(state_dir / OWNER_LOCK_FILE, os.O_RDWR)
    fcntl.flock(owner, fcntl.LOCK_EX)  # as ephemeral_sandbox holds it for the run's whole life
    try:
        assert reap_abandoned(tmp_path, log=lambda _: None) == []
    finally:
        os.close(owner)
    assert sleeper.poll() is None and (state_dir / "state.json").exists()


def test_a_fresh_staging_dir_is_left_for_its_creator(tmp_path: Path) -> None:
    staging = tmp_path / f"{STAGING_PREFIX}xyz"
    staging.mkdir()
    assert reap_abandoned(tmp_path, log=lambda _: None) == []
    assert staging.exists()
