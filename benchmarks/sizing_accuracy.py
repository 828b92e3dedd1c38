"""Accuracy of the kubefit memory estimator against published peak-memory measurements.

Runs every row of benchmarks/data/calibration_rows.yaml, prints measured vs estimated with the error and
the DeepSpeed and Accelerate estimates beside them, then a summary and the time one estimate takes.

    .venv/bin/python benchmarks/sizing_accuracy.py

What is compared: the estimator predicts peak reserved memory plus the runtime context (what must fit
on the device). A row measured as `smi` is compared with that total, `reserved` with the total less the
runtime context, `alloc` with that less the allocator's fragmentation reserve.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import accelerate_training_bytes, deepspeed_zero2, deepspeed_zero3  # noqa: E402
from kubefit.api.models import TrainingJobSpec  # noqa: E402
from kubefit.api.units import GIB, MIB  # noqa: E402
from kubefit.api.validation import parse_spec  # noqa: E402
from kubefit.sizing.architecture import shape_from_architecture  # noqa: E402
from kubefit.sizing.catalog import Accelerator, load_catalog  # noqa: E402
from kubefit.sizing.estimator import Estimate, Layout, estimate  # noqa: E402

ROWS = Path(__file__).resolve().parent / "data" / "calibration_rows.yaml"
UNITS = {"GiB": GIB, "GB": 10**9}
TEMPLATE = {"spec": {"containers": [{"name": "trainer", "image": "calibration"}]}}


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    source: str
    device: Accelerator
    layout: Layout
    spec: TrainingJobSpec
    metric: str | None
    measured_bytes: int | None
    oom: bool
    fully_specified: bool
    expressible: bool
    why_not: str
    assumed: tuple[str, ...]


@dataclass(frozen=True)
class Result:
    row: Row
    estimate: Estimate
    compared_bytes: int  # the estimate in the row's metric
    error: float | None  # (estimated - measured) / measured
    fits: bool  # the estimate fits the device's reported memory

    @property
    def prediction_right(self) -> bool:
        return (not self.fits) if self.row.oom else self.fits


def _bytes(text: str) -> int:
    number, unit = str(text).split()
    return round(float(number) * UNITS[unit])


def load_rows(path: Path = ROWS) -> list[Row]:
    document = yaml.safe_load(path.read_text())
    catalog = load_catalog()
    extra = {
        name: Accelerator(
            name=name,
            vendor=raw["vendor"],
            memory_bytes=raw["memoryMiB"] * MIB,
            resource_name="nvidia.com/gpu",
            per_node=(1, 2, 4, 8),
        )
        for name, raw in document["devices"].items()
    }
    rows = []
    for raw in document["rows"]:
        device = catalog.get(raw["device"]) or extra[raw["device"]]
        rows.append(
            Row(
                id=str(raw["id"]),
                label=raw["label"],
                source=raw["source"],
                device=device,
                layout=Layout(raw["layout"]["devicesPerWorker"], raw["layout"]["workers"]),
                spec=parse_spec({"template": TEMPLATE, **raw["spec"]}),
                metric=raw.get("metric"),
                measured_bytes=_bytes(raw["measured"]) if "measured" in raw else None,
                oom=bool(raw.get("oom", False)),
                fully_specified=bool(raw["fully_specified"]),
                expressible=bool(raw.get("expressible", True)),
                why_not=raw.get("why_not", ""),
                assumed=tuple(raw.get("assumed", ())),
            )
        )
    return rows


def compared(result: Estimate, metric: str | None) -> int:
    if metric == "alloc":
        return result.allocated_peak
    if metric == "reserved":
        return result.reserved_peak
    return result.total


def evaluate(row: Row) -> Result:
    result = estimate(row.spec, row.device, row.layout)
    value = compared(result, row.metric)
    error = None if row.measured_bytes is None else (value - row.measured_bytes) / row.measured_bytes
    return Result(row, result, value, error, result.total <= row.device.memory_bytes)


def baselines(row: Row) -> tuple[float | None, float | None, float | None]:
    """DeepSpeed ZeRO-2, ZeRO-3 and Accelerate per-device GiB for the row's full parameter count."""
    spec = row.spec
    parameters = spec.model.parameter_count
    if parameters is None:
        return None, None, None
    offload = spec.training.offload != "none"
    gpus = row.layout.devices
    largest = None
    if spec.model.architecture is not None:
        largest = shape_from_architecture(spec.model.architecture, parameters).largest_matrix()
    zero2 = deepspeed_zero2(parameters, gpus, 1, offload).gpu_bytes / GIB
    zero3 = None
    if largest is not None:
        params_offload = spec.training.offload == "optimizer-and-parameters"
        zero3 = deepspeed_zero3(parameters, largest, gpus, 1, offload, params_offload).gpu_bytes / GIB
    dtype = "float32" if spec.model.precision == "fp32" else "bfloat16"
    accelerate = accelerate_training_bytes(parameters, dtype)
    return zero2, zero3, None if accelerate is None else accelerate / GIB


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def timing(rows: list[Row], repeat: int = 2000) -> float:
    """Mean seconds per estimate over all rows."""
    start = time.perf_counter()
    for _ in range(repeat // len(rows) + 1):
        for row in rows:
            estimate(row.spec, row.device, row.layout)
    return (time.perf_counter() - start) / ((repeat // len(rows) + 1) * len(rows))


def print_baseline_summary(full: list[Result]) -> None:
    """The same error statistics for the published estimators, over the same fully specified rows.

    They estimate model states only (DeepSpeed) or a per-component maximum (Accelerate), so they are
    compared as a user reads them: as the memory the job needs per device.
    """
    names = ("DeepSpeed ZeRO-2", "DeepSpeed ZeRO-3", "Accelerate estimate-memory")
    columns: list[list[float]] = [[], [], []]
    for result in full:
        measured = result.row.measured_bytes
        if measured is None:
            continue
        for column, value in zip(columns, baselines(result.row), strict=True):
            if value is not None:
                column.append(abs(value * GIB - measured) / measured)
    for name, errors in zip(names, columns, strict=True):
        if errors:
            print(
                f"  {name:<27} median |error| {statistics.median(errors):.1%}, "
                f"within 25%: {sum(e <= 0.25 for e in errors)}/{len(errors)}"
            )


def main() -> int:
    rows = load_rows()
    results = [evaluate(row) for row in rows]
    header = (
        f"{'row':>7} {'label':<52} {'metric':>8} {'meas GiB':>9} {'est GiB':>8} {'error':>7} "
        f"{'fits':>5} {'ok':>3} {'DS-z2':>6} {'DS-z3':>6} {'Accel':>6}"
    )
    print("Per-device GiB (2^30). est = kubefit estimate in the row's metric; fits = total <= device memory.")
    print(header)
    print("-" * len(header))
    for result in results:
        row = result.row
        zero2, zero3, accelerate = baselines(row)
        measured = "OOM" if row.oom else _gib(row.measured_bytes / GIB if row.measured_bytes else None)
        error = "-" if result.error is None else f"{result.error:+.1%}"
        flag = ("" if row.fully_specified else "~") + ("" if row.expressible else "x")
        print(
            f"{row.id + flag:>7} {row.label[:52]:<52} {row.metric or '-':>8} {measured:>9} "
            f"{result.compared_bytes / GIB:>8.1f} {error:>7} {'yes' if result.fits else 'no':>5} "
            f"{'ok' if result.prediction_right else 'NO':>3} {_gib(zero2):>6} {_gib(zero3):>6} {_gib(accelerate):>6}"
        )
    print("~ = not fully specified (fields assumed); x = not expressible in the API, kept out of the summary")
    for result in results:
        if not result.row.expressible:
            print(f"  row {result.row.id}: {result.row.why_not}")

    summary = [r for r in results if r.row.expressible]
    full = [r for r in summary if r.row.fully_specified and r.error is not None]
    errors = [abs(r.error) for r in full if r.error is not None]
    everything = [abs(r.error) for r in summary if r.error is not None]
    print()
    print(f"fully specified measured rows: {len(full)}")
    if errors:
        worst = max(full, key=lambda r: abs(r.error or 0))
        print(
            f"  median |error| {statistics.median(errors):.1%}   max |error| {max(errors):.1%} (row {worst.row.id})"
        )
        print(f"  within 25%: {sum(e <= 0.25 for e in errors)}/{len(errors)}")
        print("  the published estimators on the same rows (full parameter count, as a user reads them):")
        print_baseline_summary(full)
        full_training = [r for r in full if r.row.spec.model.finetuning.method == "full"]
        ours = [abs(r.error) for r in full_training if r.error is not None]
        if ours:
            print(
                f"  full-training rows only ({len(ours)}): kubefit median |error| {statistics.median(ours):.1%}; "
                "published estimators:"
            )
            print_baseline_summary(full_training)
    if everything:
        print(
            f"all measured rows ({len(everything)}): median |error| {statistics.median(everything):.1%}, "
            f"max {max(everything):.1%}"
        )
    ooms = [r for r in summary if r.row.oom]
    print(f"OOM rows predicted not fitting: {sum(r.prediction_right for r in ooms)}/{len(ooms)}")
    measured = [r for r in summary if not r.row.oom]
    print(f"measured rows predicted fitting: {sum(r.prediction_right for r in measured)}/{len(measured)}")
    print(f"time per estimate: {timing(rows) * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
