"""Accuracy of the kubefit memory estimator against published peak-memory measurements.

Runs every row of benchmarks/data/*rows.yaml (calibration_rows.yaml and colossalai_rows.yaml: public
measurements, each with its source; gpu_grid_rows.yaml: kubefit's own GPU grid) and reports the development and the
held-out set apart (the split, by whole sources, is benchmarks/data/sizing_split.yaml). Development
figures are FITS: the formulas were developed on those rows. Held-out figures are predictions.

    .venv/bin/python benchmarks/sizing_accuracy.py

What is compared: the estimator predicts peak reserved memory plus the runtime context (what must fit
on the device). A row measured as `smi` (or with no stated metric) is compared with that total,
`reserved` with the total less the runtime context, `alloc` with that less the allocator's fragmentation
reserve. Fit verdicts are judged as users meet them: a job is admitted when its total fits the device
memory less the operator's default headroom (resources.memoryHeadroom, 10%).
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import accelerate_training_bytes, deepspeed_zero2, deepspeed_zero3  # noqa: E402
from kubefit.api.models import TrainingJobSpec  # noqa: E402
from kubefit.api.units import GIB, MIB  # noqa: E402
from kubefit.api.validation import parse_spec  # noqa: E402
from kubefit.sizing.architecture import shape_from_architecture  # noqa: E402
from kubefit.sizing.catalog import Accelerator, load_catalog  # noqa: E402
from kubefit.sizing.estimator import Estimate, Layout, estimate  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
SPLIT = DATA / "sizing_split.yaml"
UNITS = {"GiB": GIB, "GB": 10**9, "MiB": MIB, "MB": 10**6}
TEMPLATE = {"spec": {"containers": [{"name": "trainer", "image": "calibration"}]}}
DEVELOPMENT, HELD_OUT = "development", "held-out"

# The issue-10 targets, on all fully specified rows of each set, with the default headroom.
WORST_UNDERESTIMATE = -0.10
MEDIAN_ABS_ERROR = 0.07


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    source: str
    source_key: str
    split: str
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

    @property
    def headroom(self) -> float:
        return self.spec.resources.memory_headroom

    @property
    def usable_bytes(self) -> float:
        return self.device.memory_bytes * (1.0 - self.headroom)

    @property
    def in_headroom_band(self) -> bool:
        """The measured peak itself is above device memory less the headroom: the operator's default
        refuses a job that did run. Measured as allocated or reserved, the device held more still."""
        measured = self.measured_bytes
        return not self.oom and measured is not None and measured > self.usable_bytes

    @property
    def in_summary(self) -> bool:
        """Counted in the target figures: expressible, fully specified, with a measured peak."""
        return self.expressible and self.fully_specified and self.measured_bytes is not None


@dataclass(frozen=True)
class Result:
    row: Row
    estimate: Estimate
    compared_bytes: int  # the estimate in the row's metric
    error: float | None  # (estimated - measured) / measured
    fits_device: bool  # the estimate fits the device's reported memory, no headroom
    fits: bool  # ... with the row's (the operator's default) headroom kept free

    @property
    def prediction_right(self) -> bool:
        """OOM rows: predicted not to fit even without headroom. Measured rows: predicted to fit with
        the headroom (a row whose measured peak lies in the headroom band cannot be, and is listed)."""
        return (not self.fits_device) if self.row.oom else self.fits


# ---------------------------------------------------------------- the split


def split_of(source_key: str, split: dict[str, Any]) -> str:
    """The set of a source: fixed for the sources listed, else the seeded hash of its key."""
    key = source_key.lower()
    fixed = split["fixed"]
    if key in fixed:
        return str(fixed[key])
    digest = hashlib.sha256(f"{split['seed']}:{key}".encode()).hexdigest()
    return HELD_OUT if int(digest, 16) % 2 == 0 else DEVELOPMENT


# ---------------------------------------------------------------- loading


def _bytes(text: str) -> int:
    number, unit = str(text).split()
    return round(float(number) * UNITS[unit])


def _devices(documents: Iterable[dict[str, Any]]) -> dict[str, Accelerator]:
    extra = {}
    for document in documents:
        for name, raw in (document.get("devices") or {}).items():
            extra[name] = Accelerator(
                name=name,
                vendor=raw["vendor"],
                memory_bytes=raw["memoryMiB"] * MIB,
                resource_name="nvidia.com/gpu",
                per_node=(1, 2, 4, 8),
            )
    return extra


def _row(raw: dict[str, Any], device: Accelerator, split: dict[str, Any]) -> Row:
    return Row(
        id=str(raw["id"]),
        label=raw["label"],
        source=raw["source"],
        source_key=raw["sourceKey"],
        split=split_of(raw["sourceKey"], split),
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


def row_files(data: Path = DATA) -> list[Path]:
    return sorted(data.glob("*rows.yaml"))


def load_rows(paths: Sequence[Path] | None = None, split_path: Path = SPLIT) -> list[Row]:
    documents = [yaml.safe_load(path.read_text()) for path in (paths or row_files())]
    split = yaml.safe_load(split_path.read_text())
    catalog = load_catalog()
    extra = _devices(documents)
    rows = []
    for document in documents:
        for raw in document["rows"]:
            device = catalog.get(raw["device"]) or extra[raw["device"]]
            rows.append(_row(raw, device, split))
    return rows


# ---------------------------------------------------------------- evaluation


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
    fits_device = result.total <= row.device.memory_bytes
    return Result(row, result, value, error, fits_device, result.total <= row.usable_bytes)


def is_full_training(row: Row) -> bool:
    return row.spec.model.finetuning.method == "full"


def baselines(row: Row) -> tuple[float | None, float | None, float | None]:
    """DeepSpeed ZeRO-2, ZeRO-3 and Accelerate per-device GiB, on full-training rows only.

    None of them models LoRA or QLoRA (a frozen base, adapters, 4-bit weights), so on those rows there
    is no baseline to show: the comparison there is kubefit against the measurement alone.
    """
    spec = row.spec
    parameters = spec.model.parameter_count
    if parameters is None or not is_full_training(row):
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


@dataclass(frozen=True)
class SetFigures:
    """The issue-10 figures for one set, over its fully specified measured rows (and its OOM rows)."""

    name: str
    measured: int
    median_abs_error: float | None
    worst_underestimate: Result | None
    underestimates_beyond_target: tuple[Result, ...]
    oom_right: int
    oom_total: int
    fits_right: int
    fits_total: int
    blocked: tuple[Result, ...]  # measured rows predicted not to fit with the headroom
    headroom_band: tuple[Result, ...]  # ... of which the measured peak itself lies in the band


def figures(name: str, results: Sequence[Result]) -> SetFigures:
    summary = [r for r in results if r.row.in_summary and r.error is not None]
    errors = [abs(r.error) for r in summary if r.error is not None]
    worst = min(summary, key=lambda r: r.error or 0.0, default=None)
    ooms = [r for r in results if r.row.expressible and r.row.oom]
    ran = [r for r in results if r.row.expressible and not r.row.oom]
    blocked = tuple(r for r in ran if not r.fits)
    return SetFigures(
        name=name,
        measured=len(summary),
        median_abs_error=statistics.median(errors) if errors else None,
        worst_underestimate=worst if worst is not None and (worst.error or 0.0) < 0 else None,
        underestimates_beyond_target=tuple(r for r in summary if (r.error or 0.0) < WORST_UNDERESTIMATE),
        oom_right=sum(r.prediction_right for r in ooms),
        oom_total=len(ooms),
        fits_right=sum(r.prediction_right for r in ran),
        fits_total=len(ran),
        blocked=blocked,
        headroom_band=tuple(r for r in blocked if r.row.in_headroom_band),
    )


# ---------------------------------------------------------------- printing


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


HEADER = (
    f"{'row':>9} {'label':<50} {'metric':>8} {'meas GiB':>9} {'est GiB':>8} {'error':>7} "
    f"{'fits':>5} {'ok':>3} {'DS-z2':>6} {'DS-z3':>6} {'Accel':>6}"
)


def _table_line(result: Result) -> str:
    row = result.row
    zero2, zero3, accelerate = baselines(row)
    measured = "OOM" if row.oom else _gib(row.measured_bytes / GIB if row.measured_bytes else None)
    error = "-" if result.error is None else f"{result.error:+.1%}"
    flag = ("" if row.fully_specified else "~") + ("" if row.expressible else "x")
    flag += "b" if row.in_headroom_band else ""
    return (
        f"{row.id + flag:>9} {row.label[:50]:<50} {row.metric or '-':>8} {measured:>9} "
        f"{result.compared_bytes / GIB:>8.1f} {error:>7} {'yes' if result.fits else 'no':>5} "
        f"{'ok' if result.prediction_right else 'NO':>3} {_gib(zero2):>6} {_gib(zero3):>6} {_gib(accelerate):>6}"
    )


def print_table(title: str, results: Sequence[Result]) -> None:
    print(title)
    print(HEADER)
    print("-" * len(HEADER))
    source = None
    for result in results:
        if result.row.source_key != source:
            source = result.row.source_key
            print(f"  [{source}]")
        print(_table_line(result))
    print()


def print_exclusions(results: Sequence[Result]) -> None:
    """Every row kept out of the target figures, with the reason."""
    print("Kept out of the target figures (printed above, not counted):")
    for result in results:
        row = result.row
        if not row.expressible:
            print(f"  row {row.id} ({row.split}): not expressible in the API: {row.why_not}")
        elif not row.fully_specified and not row.oom:
            print(f"  row {row.id} ({row.split}): not fully specified; assumed: {'; '.join(row.assumed)}")
    print()


def _baseline_errors(results: Sequence[Result]) -> list[list[float]]:
    columns: list[list[float]] = [[], [], []]
    for result in results:
        measured = result.row.measured_bytes
        if measured is None:
            continue
        for column, value in zip(columns, baselines(result.row), strict=True):
            if value is not None:
                column.append(abs(value * GIB - measured) / measured)
    return columns


def print_baselines(results: Sequence[Result]) -> None:
    """kubefit beside the published estimators on the rows they are meant for: full training.

    They estimate model states only (DeepSpeed) or a per-component maximum (Accelerate), so they are
    compared as a user reads them: as the memory the job needs per device.
    """
    full = [r for r in results if r.row.in_summary and is_full_training(r.row) and r.error is not None]
    if not full:
        print("  full-training rows: none in this set, so no comparison with DeepSpeed or Accelerate")
        return
    ours = [abs(r.error) for r in full if r.error is not None]
    print(f"  full-training rows ({len(full)}): kubefit median |error| {statistics.median(ours):.1%}")
    names = ("DeepSpeed ZeRO-2", "DeepSpeed ZeRO-3", "Accelerate estimate-memory")
    for name, errors in zip(names, _baseline_errors(full), strict=True):
        if errors:
            print(f"  {name:<27} median |error| {statistics.median(errors):.1%} ({len(errors)} rows)")
    lora = sum(1 for r in results if r.row.in_summary and not is_full_training(r.row))
    print(f"  LoRA/QLoRA rows ({lora}): no baseline models LoRA, so none is shown on them")


def _verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def print_figures(set_figures: SetFigures, fitted: bool) -> None:
    kind = "FIT (the formulas were developed on these rows)" if fitted else "prediction (rows not used)"
    f = set_figures
    print(f"{f.name}: {kind}")
    print(f"  fully specified measured rows: {f.measured}")
    if f.median_abs_error is not None:
        ok = f.median_abs_error <= MEDIAN_ABS_ERROR
        print(f"  median |error| {f.median_abs_error:.1%} (target <= {MEDIAN_ABS_ERROR:.0%}: {_verdict(ok)})")
    worst = f.worst_underestimate
    if worst is not None and worst.error is not None:
        ok = worst.error >= WORST_UNDERESTIMATE
        print(
            f"  worst under-estimate {worst.error:+.1%} (row {worst.row.id}; target >= "
            f"{WORST_UNDERESTIMATE:.0%}: {_verdict(ok)})"
        )
    for result in f.underestimates_beyond_target:
        print(
            f"    under-estimated beyond the target: row {result.row.id} {result.error:+.1%} {result.row.label}"
        )
    print(f"  OOM rows predicted not to fit even without headroom: {f.oom_right}/{f.oom_total}")
    print(f"  measured rows predicted to fit with the default headroom: {f.fits_right}/{f.fits_total}")
    for result in f.blocked:
        band = "measured peak inside the headroom band" if result.row.in_headroom_band else "NOT in the band"
        print(f"    blocked although it ran: row {result.row.id} ({band}) {result.row.label}")


def timing(rows: Sequence[Row], repeat: int = 2000) -> float:
    """Mean seconds per estimate over all rows."""
    start = time.perf_counter()
    rounds = repeat // len(rows) + 1
    for _ in range(rounds):
        for row in rows:
            estimate(row.spec, row.device, row.layout)
    return (time.perf_counter() - start) / (rounds * len(rows))


def by_set(results: Sequence[Result]) -> dict[str, list[Result]]:
    return {name: [r for r in results if r.row.split == name] for name in (DEVELOPMENT, HELD_OUT)}


def main() -> int:
    rows = load_rows()
    results = by_set([evaluate(row) for row in rows])
    print("Per-device GiB (2^30). est = kubefit estimate in the row's metric; fits = total <= device memory")
    print(
        "less the default 10% headroom; ok = OOM rows predicted not to fit (no headroom), other rows to fit."
    )
    print("~ = not fully specified; x = not expressible in the API; b = measured peak in the headroom band.")
    print("DeepSpeed/Accelerate columns only on full-training rows (none of them models LoRA/QLoRA).")
    print()
    print_table("DEVELOPMENT SET (figures are fits)", results[DEVELOPMENT])
    print_table("HELD-OUT SET (predictions: whole sources kept out of development)", results[HELD_OUT])
    print_exclusions(results[DEVELOPMENT] + results[HELD_OUT])
    for name, fitted in ((DEVELOPMENT, True), (HELD_OUT, False)):
        print_figures(figures(name, results[name]), fitted)
        print_baselines(results[name])
        print()
    print(f"time per estimate: {timing(rows) * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
