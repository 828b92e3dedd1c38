"""Throwaway sandboxes: a control plane in a state dir of its own, stopped and deleted when done.

The e2e tests and the latency benchmark each start one, so that they never share a control plane,
nodes or capacity with a developer's sandbox (`make demo`, ~/.cache/kubefit/sandbox) or with each
other. Each lives in ~/.cache/kubefit/ephemeral/<purpose>-<pid>-<random>/ and holds an exclusive lock
on owner.lock there for its whole life. A run killed before its cleanup (SIGKILL, a closed terminal)
leaves that lock free: the next ephemeral_sandbox() reaps the dir, stopping exactly the processes
recorded in it (PID and start time must both match) and deleting it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubefit_sandbox.build import Log, kubefit_cache_dir, print_log
from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.locks import try_exclusive_lock
from kubefit_sandbox.nodeagent import stop_agent

OWNER_LOCK_FILE = "owner.lock"
STAGING_PREFIX = ".new-"
# A staging dir is renamed into place microseconds after it is made; one this old was abandoned.
STAGING_ABANDONED_AFTER_S = 600.0


def ephemeral_root() -> Path:
    return kubefit_cache_dir() / "ephemeral"


def reap_abandoned(root: Path | None = None, log: Log = print_log) -> list[Path]:
    """Stops and deletes the ephemeral sandboxes whose owner is gone; returns their dirs."""
    root = root or ephemeral_root()
    reaped: list[Path] = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir():
            continue
        if path.name.startswith(STAGING_PREFIX):
            if time.time() - path.stat().st_mtime > STAGING_ABANDONED_AFTER_S:
                shutil.rmtree(path, ignore_errors=True)
                reaped.append(path)
            continue
        lock_fd = try_exclusive_lock(path / OWNER_LOCK_FILE)
        if lock_fd is None:
            continue  # its owner still runs
        try:
            log(f"reaping abandoned sandbox {path}")
            stop_agent(path)
            Sandbox(path, log=log).purge()
            reaped.append(path)
        finally:
            os.close(lock_fd)
    return reaped


def _claim_state_dir(root: Path, purpose: str) -> tuple[Path, int]:
    """A new state dir with its owner lock already held (made under a staging name, then renamed, so
    that a concurrent reaper never sees it unlocked)."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    lock_fd = try_exclusive_lock(staging / OWNER_LOCK_FILE)
    assert lock_fd is not None, "a fresh lock file cannot be held by anyone else"
    state_dir = root / f"{purpose}-{os.getpid()}-{secrets.token_hex(3)}"
    os.rename(staging, state_dir)
    return state_dir, lock_fd


@contextmanager
def ephemeral_sandbox(purpose: str, root: Path | None = None, log: Log = print_log) -> Iterator[Sandbox]:
    """A control plane up in a fresh state dir; on exit its node agent (if any) and its processes are
    stopped and the dir deleted. Abandoned ones from earlier runs are reaped first."""
    root = root or ephemeral_root()
    reap_abandoned(root, log)
    state_dir, lock_fd = _claim_state_dir(root, purpose)
    sandbox = Sandbox(state_dir, log=log)
    try:
        sandbox.up()
        yield sandbox
    finally:
        stop_agent(state_dir)  # it would outlive its API server by a minute
        sandbox.purge()
        os.close(lock_fd)
