"""Shared by the benchmarks that start the operator: waiting until `kubefit run` serves (no benchmark here)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_until_serving(process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Returns once the operator printed its liveness address; raises with its log if it exits or hangs."""
    deadline = time.monotonic() + timeout
    while "liveness on" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the operator did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
