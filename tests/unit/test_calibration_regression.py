"""The estimator against published measurements (benchmarks/data/*rows.yaml), held to issue 10's targets.

The rows are split by whole sources into a development and a held-out set (benchmarks/data/
sizing_split.yaml, committed before any formula of issue 10 changed). On every fully specified row of
each set, with the operator's default headroom (10%), the targets are:
- no under-estimate worse than -10%;
- a median absolute error of at most 7%;
- every out-of-memory row predicted not to fit, even without headroom;
- every measured row predicted to fit with the headroom, except the rows whose measured peak itself lies
  inside the headroom band (listed in HEADROOM_BAND_ROWS: a job the default would block although it ran).
The bounds are these targets, not the figures of the day; benchmarks/sizing_accuracy.py prints them all.
A target not met at the end of issue 10 is a strict xfail with its reason (UNMET): it shows in every run,
and meeting it makes the run fail until the entry is removed. An xfail alone would also hide a new miss,
so a second test holds every target as a ratchet: no row may miss one that is not in KNOWN_MISSES. Both
medians meet their target, so each is an ordinary assertion.
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
SETS = (accuracy.DEVELOPMENT, accuracy.HELD_OUT)

WORST_UNDERESTIMATE = -0.10  # issue 10: "no under-estimate worse than -10%"
MEDIAN_ABS_ERROR = 0.07  # issue 10: "median absolute error of at most 7% on each set"

# Measured rows whose measured peak is above device memory x 0.9: the default headroom blocks them
# although they ran. The set is fixed by the data (measurement, device), not by the estimator.
# torchtitan 8B at 83.9-84.5 GiB of the 96 GB H100's 89.4 GiB (10 is not expressible, printed only);
# Qwen-72B-Int4 QLoRA s=8192 at 75.6 GiB of 80 GiB; fsdp_qlora on 24 GB 3090s and 4090s at 22.0-23.0 GiB;
# ColossalAI's GPT2-XL under DDP at 37.0 GiB allocated of the 40 GB A100's 39.4 GiB.
HEADROOM_BAND_ROWS = {"10", "13", "14", "16", "141", "159", "160", "161", "163", "164", "165", "166", "300"}


# Targets not met at the end of issue 10, per (test, set), with the reason. strict: a target that comes
# to be met fails its xfail, so the entry must then be removed. Empty means every target is met.
UNMET: dict[tuple[str, str], str] = {
    ("test_no_underestimate_worse_than_the_target", "development"): (
        "11 rows below -10%: fsdp_qlora reserved peaks over whole runs (six of rows 150-163, to -26%; the "
        "two allocated peaks the source gives are within +2%) and litgpt's QLoRA tables, rows 71, 74, 202, "
        "206 and 209 (-11% to -21%), 11-27% above what litgpt's own modules hold on today's bitsandbytes "
        "(the H200 probe; the estimate is within -6% to +7% of it): before 0.43.3 its 4-bit layers kept "
        "their inputs, which a frozen layer now does not (the saved-tensor probe)"
    ),
    (
        "test_no_underestimate_worse_than_the_target",
        "held-out",
    ): (
        "Qwen-1.8B-Chat LoRA rows 100-104: -13% to -16%; ColossalAI's GPT-2 18B under DeepSpeed ZeRO-3 with "
        "parameters and optimizer offloaded on one A100 (row 302): -56%"
    ),
    ("test_measured_rows_fit_with_the_default_headroom_outside_the_band", "development"): (
        "row 28 (torchtune 8B full with optimizer in the backward on a 24 GB 4090, +13%: its torch.compile "
        "is not in the API) and row 54 (torchtune 8B LoRA on an A6000, +44%: the row assumes no activation "
        "checkpointing)"
    ),
    ("test_measured_rows_fit_with_the_default_headroom_outside_the_band", "held-out"): (
        "row 140 (Qwen-72B-Int4 QLoRA s=4096, 68.0 of 80 GiB) is over-estimated by 16.5%, past the headroom; "
        "row 301 (ColossalAI's GPT2-XL under DeepSpeed ZeRO-3, micro-batch 40) by 43.5%"
    ),
}
# The rows behind each unmet target, as they were recorded; the ratchet test allows no other.
KNOWN_MISSES: dict[tuple[str, str], set[str]] = {
    ("test_no_underestimate_worse_than_the_target", "development"): {
        "71", "74", "150", "152", "157", "161", "162", "163", "202", "206", "209"},
    ("test_no_underestimate_worse_than_the_target", "held-out"): {"100", "101", "102", "103", "104", "302"},
    ("test_measured_rows_fit_with_the_default_headroom_outside_the_band", "development"): {"28", "54"},
    ("test_measured_rows_fit_with_the_default_headroom_outside_the_band", "held-out"): {"140", "301"},
}  # fmt: skip
# The held-out sources report no out-of-memory run: that target applies to the sets that have OOM rows.
OOM_SETS = tuple(name for name in SETS if any(row.oom and row.split == name for row in ROWS))


def _sets(test: str, names: tuple[str, ...] = SETS) -> list:
    return [
        # raises=: only the target's own assertion is the expected failure, not a crash (KeyError, ...)
        pytest.param(
            name, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=UNMET[(test, name)])
        )
        if (test, name) in UNMET
        else name
        for name in names
    ]


def _results(name: str) -> list:
    return [accuracy.evaluate(row) for row in ROWS if row.split == name]


def _summary(name: str) -> list:
    return [result for result in _results(name) if result.row.in_summary]


def _describe(results) -> str:
    return "; ".join(f"row {r.row.id} {r.error:+.1%} ({r.row.label})" for r in results)


def test_the_split_is_by_whole_sources_and_keeps_its_committed_rule() -> None:
    split = accuracy.yaml.safe_load(accuracy.SPLIT.read_text())
    assert split["seed"] == "kubefit-heldout-2026-11-30"
    assert split["fixed"]["kubefit-gpu-grid"] == accuracy.DEVELOPMENT
    assert split["fixed"]["kubefit-gpu-holdout"] == accuracy.HELD_OUT
    for row in ROWS:
        assert row.split == accuracy.split_of(row.source_key, split), row.id
    sources = {name: {row.source_key for row in ROWS if row.split == name} for name in SETS}
    assert sources[accuracy.DEVELOPMENT].isdisjoint(sources[accuracy.HELD_OUT])


def test_a_new_source_goes_by_the_seeded_hash_of_its_key() -> None:
    split = {"seed": "kubefit-heldout-2026-11-30", "fixed": {"github:pytorch/torchtune": "development"}}
    assert accuracy.split_of("github:pytorch/torchtune", split) == accuracy.DEVELOPMENT
    # sha256("kubefit-heldout-2026-11-30:github:qwenlm/qwen") is even; the key is compared in lower case
    assert accuracy.split_of("github:QwenLM/Qwen", split) == accuracy.HELD_OUT
    assert accuracy.split_of("github:answerdotai/fsdp_qlora", split) == accuracy.DEVELOPMENT


@pytest.mark.parametrize("name", SETS)
def test_each_set_has_enough_fully_specified_rows(name: str) -> None:
    assert len(_summary(name)) >= 30


def _underestimated(name: str) -> list:
    return [r for r in _summary(name) if r.error < WORST_UNDERESTIMATE]


def _blocked(name: str) -> list:
    ran = [r for r in _results(name) if r.row.expressible and not r.row.oom]
    return [r for r in ran if not r.fits and not r.row.in_headroom_band]


@pytest.mark.parametrize("name", _sets("test_no_underestimate_worse_than_the_target"))
def test_no_underestimate_worse_than_the_target(name: str) -> None:
    under = _underestimated(name)
    message = f"{len(under)} rows under-estimated beyond {WORST_UNDERESTIMATE:.0%}: {_describe(under)}"
    assert not [r.row.id for r in under], message


@pytest.mark.parametrize("name", _sets("test_median_absolute_error_meets_the_target"))
def test_median_absolute_error_meets_the_target(name: str) -> None:
    median = statistics.median(abs(r.error) for r in _summary(name))
    assert median <= MEDIAN_ABS_ERROR, f"{name}: median |error| {median:.1%}"


@pytest.mark.parametrize(
    "name", _sets("test_out_of_memory_rows_are_predicted_not_to_fit_even_without_headroom", OOM_SETS)
)
def test_out_of_memory_rows_are_predicted_not_to_fit_even_without_headroom(name: str) -> None:
    ooms = [r for r in _results(name) if r.row.expressible and r.row.oom]
    wrong = [r.row.id for r in ooms if r.fits_device]
    assert not wrong, f"predicted to fit, but ran out of memory: rows {wrong}"


@pytest.mark.parametrize("name", _sets("test_measured_rows_fit_with_the_default_headroom_outside_the_band"))
def test_measured_rows_fit_with_the_default_headroom_outside_the_band(name: str) -> None:
    blocked = [r.row.id for r in _blocked(name)]
    assert not blocked, f"ran, but predicted not to fit with the default headroom: rows {blocked}"


@pytest.mark.parametrize("name", SETS)
def test_no_row_misses_a_target_it_was_not_recorded_missing(name: str) -> None:
    """The ratchet beside the xfails: a row newly under-estimated past -10%, newly blocked, or a known miss
    gone from the list fails here, whatever the xfail above says."""
    for test, missing in [
        ("test_no_underestimate_worse_than_the_target", _underestimated(name)),
        ("test_measured_rows_fit_with_the_default_headroom_outside_the_band", _blocked(name)),
    ]:
        found = {r.row.id for r in missing}
        known = KNOWN_MISSES.get((test, name), set())
        assert found <= known, f"{test}, {name}: new misses {sorted(found - known)}: {_describe(missing)}"
        # A known miss now met: take it off the list (and the xfail when the list is empty).
        assert found == known, f"{test}, {name}: met now, take off KNOWN_MISSES: {sorted(known - found)}"
        assert bool(known) == ((test, name) in UNMET), (test, name)


def test_the_headroom_band_rows_are_the_listed_ones() -> None:
    assert {row.id for row in ROWS if row.in_headroom_band} == HEADROOM_BAND_ROWS
    for row in ROWS:
        assert row.headroom == 0.10  # the operator's default, as users meet it


def test_out_of_memory_rows_exist_in_the_development_set() -> None:
    assert sum(1 for row in ROWS if row.oom and row.split == accuracy.DEVELOPMENT) >= 5


def test_rows_kept_out_say_why_and_are_printed(capsys: pytest.CaptureFixture[str]) -> None:
    results = [accuracy.evaluate(row) for row in ROWS]
    accuracy.print_exclusions(results)
    printed = capsys.readouterr().out
    for row in ROWS:
        assert row.source and row.source_key, row.id
        if not row.expressible:
            assert row.why_not and f"row {row.id} " in printed, row.id
        elif not row.fully_specified and not row.oom:
            assert row.assumed and f"row {row.id} " in printed, row.id


def test_baselines_are_shown_only_on_full_training_rows() -> None:
    for row in ROWS:
        shown = any(value is not None for value in accuracy.baselines(row))
        if row.spec.model.finetuning.method != "full":
            assert not shown, row.id


def test_verdicts_use_the_default_headroom() -> None:
    # A row whose estimate lies between device memory x 0.9 and device memory fits the device but not
    # the operator's default: fits (headroom) and fits_device (none) must differ there.
    for row in ROWS:
        result = accuracy.evaluate(row)
        total = result.estimate.total
        assert result.fits == (total <= row.device.memory_bytes * 0.9), row.id
        assert result.fits_device == (total <= row.device.memory_bytes), row.id
