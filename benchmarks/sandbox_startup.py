"""Measures how long `kubefit-sandbox up` takes.

Warm (default): binaries cached; stops the sandbox, then times `up` until the API server is ready
and the default ServiceAccount exists. With --cold, deletes the cached control-plane binaries first
and times the build too (minutes; the Go build cache under ~/.cache/kubefit is kept unless
--cold-go-cache is given too).

    .venv/bin/python benchmarks/sandbox_startup.py [--runs N] [--cold [--cold-go-cache]]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time

from kubefit_sandbox.build import build_controlplane, controlplane_cache_dir, go_build_cache_dir
from kubefit_sandbox.controlplane import Sandbox


def _quiet(message: str) -> None:
    pass


def measure_cold_build(drop_go_cache: bool) -> float:
    shutil.rmtree(controlplane_cache_dir(), ignore_errors=True)
    if drop_go_cache:
        shutil.rmtree(go_build_cache_dir(), ignore_errors=True)
    started = time.monotonic()
    build_controlplane(force=True)
    return time.monotonic() - started


def measure_warm_up(sandbox: Sandbox) -> float:
    sandbox.down()
    started = time.monotonic()
    sandbox.up()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="warm down/up cycles to time")
    parser.add_argument("--cold", action="store_true", help="delete the cached binaries and time the build")
    parser.add_argument(
        "--cold-go-cache", action="store_true", help="with --cold: also drop Go's build cache"
    )
    args = parser.parse_args()

    sandbox = Sandbox(log=_quiet)
    if args.cold:
        cold = measure_cold_build(args.cold_go_cache)
        print(f"cold build: {cold:.1f}s ({cold / 60:.1f} min)")
    timings = [measure_warm_up(sandbox) for _ in range(args.runs)]
    print(f"warm up: median {statistics.median(timings):.2f}s over {len(timings)} runs "
          f"(min {min(timings):.2f}s, max {max(timings):.2f}s)")  # fmt: skip
    # Leave the sandbox up: other work on this machine expects it running.
    return 0


if __name__ == "__main__":
    sys.exit(main())
