"""benchmarks/horizon_decisions.py: a share of unbound jobs outside 0..1 or a negative number of busy neighbours is
refused, naming it; a small horizon times its passes beside a neighbour and with a tainted node."""

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


def test_busy_neighbours_are_off_by_default_and_a_negative_count_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert horizon_decisions.arguments([]).busy_neighbours == 0
    with pytest.raises(SystemExit) as exited:
        horizon_decisions.arguments(["--busy-neighbours", "-1"])
    assert exited.value.code == 2
    assert "--busy-neighbours must be 0 or more, got -1" in capsys.readouterr().err


def _failed_reconciles(horizon: horizon_decisions.Horizon) -> float:
    return sum(
        sample.value
        for metric in horizon.metrics.registry.collect()
        if metric.name == "kubefit_reconcile"
        for sample in metric.samples
        if sample.name == "kubefit_reconcile_total" and sample.labels.get("result") == "error"
    )


def test_a_small_horizon_times_its_passes_beside_neighbours_and_with_a_tainted_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As the benchmark's main does: no kopf posting queue in one process. Without it every reconcile that
    # posts an event fails, and its retries run on the requeue thread after the test.
    monkeypatch.setattr(horizon_decisions.kopf, "event", lambda *args, **kwargs: None)
    horizon = horizon_decisions.Horizon(40, 20)
    horizon.fill()
    assert _failed_reconciles(horizon) == 0
    timings = horizon_decisions.timed_passes_beside(horizon, 1, 2)
    assert [len(timings[side]["cpu"]) for side in ("alone", "beside")] == [2, 2]
    assert all(seconds > 0 for side in timings.values() for values in side.values() for seconds in values)
    before = horizon.scheduler.snapshot()
    assert len(horizon.timed_passes_with_a_tainted_node(2)) == 2
    assert horizon.store.nodes[0].taints and not any(node.taints for node in horizon.store.nodes[1:])
    # The tainted node's workers keep running (NoSchedule); nobody's grant changes.
    assert {key: grant.workers for key, grant in horizon.scheduler.snapshot().items()} == {
        key: grant.workers for key, grant in before.items()
    }
    assert _failed_reconciles(horizon) == 0
