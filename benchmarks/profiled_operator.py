"""`kubefit run` with tracemalloc on, for benchmarks/scale_500.py --profile (never the shipped path).

    python benchmarks/profiled_operator.py OUT_DIR run --namespace NS ...

Imports the operator's modules first (their cost is measured apart: docs/performance.md), then starts
tracemalloc (10 frames; with more, and on imports, the operator slows to a crawl) and runs `kubefit` with
the remaining arguments. On SIGUSR2 it writes OUT_DIR/tracemalloc-<n>.txt: the top allocations still alive,
grouped by line and by traceback, and the traced total. CPU is sampled from outside by py-spy, which
sees every thread (cProfile would see only kopf's event-loop thread, not the handlers' threads).
"""

from __future__ import annotations

import itertools
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 10
TOP = 40


def write_snapshot(out_dir: Path, number: int) -> Path:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*"),
        ]
    )
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced now {current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB", "", "== by line"]
    lines += [str(stat) for stat in snapshot.statistics("lineno")[:TOP]]
    lines += ["", "== by file"]
    lines += [str(stat) for stat in snapshot.statistics("filename")[:TOP]]
    lines += ["", "== by traceback (top 12)"]
    for stat in snapshot.statistics("traceback")[:12]:
        lines.append(f"{stat.size / 2**20:.2f} MiB in {stat.count} blocks")
        lines += [f"    {line}" for line in stat.traceback.format(limit=FRAMES)]
    path = out_dir / f"tracemalloc-{number}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    import kopf  # noqa: F401 - imported before tracing starts
    from kubernetes import client

    from kubefit.cli.main import main as kubefit_main
    from kubefit.controller import handlers, runner  # noqa: F401

    for api in ("CoreV1Api", "CustomObjectsApi", "CoordinationV1Api"):
        getattr(client, api)  # the client imports its API modules on first use
    tracemalloc.start(FRAMES)
    counter = itertools.count(1)

    def on_signal(_signal: int, _frame: FrameType | None) -> None:
        path = write_snapshot(out_dir, next(counter))
        print(f"kubefit profile: wrote {path}", flush=True)

    signal.signal(signal.SIGUSR2, on_signal)
    return int(kubefit_main(sys.argv[2:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
