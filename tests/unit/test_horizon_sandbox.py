"""benchmarks/horizon_sandbox.py's pure pieces: heartbeat interval, node addresses past 256, the jobs as
applied, the /metrics histogram and its verdict, the settled state."""

from __future__ import annotations

import ipaddress
import math
import os
import random
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import horizon_sandbox as horizon  # noqa: E402
from kubefit.sizing.catalog import load_catalog  # noqa: E402
from kubefit_sandbox.cluster import parse_pool  # noqa: E402

METRICS = """\
# HELP kubefit_reconcile_duration_seconds Time to observe, decide and apply one reconcile.
# TYPE kubefit_reconcile_duration_seconds histogram
kubefit_reconcile_duration_seconds_bucket{le="0.005"} 1.0
kubefit_reconcile_duration_seconds_bucket{le="0.01"} 3.0
kubefit_reconcile_duration_seconds_bucket{le="0.5"} 8.0
kubefit_reconcile_duration_seconds_bucket{le="1.0"} 9.0
kubefit_reconcile_duration_seconds_bucket{le="2.5"} 10.0
kubefit_reconcile_duration_seconds_bucket{le="+Inf"} 10.0
kubefit_reconcile_duration_seconds_count 10.0
kubefit_reconcile_duration_seconds_sum 4.2
kubefit_reconcile_duration_seconds_created 1.7e+09
kubefit_queue_wait_seconds_bucket{le="1.0"} 5.0
kubefit_queue_wait_seconds_bucket{le="+Inf"} 6.0
kubefit_queue_wait_seconds_count 6.0
kubefit_queue_wait_seconds_sum 30.0
"""


def test_heartbeats_slow_down_past_500_nodes_unless_told() -> None:
    assert horizon.heartbeat_interval(64) == 20.0
    assert horizon.heartbeat_interval(300) == 20.0
    assert horizon.heartbeat_interval(5000) == 200.0  # 25 nodes, 50 writes a second
    assert horizon.heartbeat_interval(5000, override=30.0) == 30.0


@pytest.mark.parametrize("nodes", [1, 7, 300, 5000])
def test_the_pools_add_up_to_the_nodes_asked_for(nodes: int) -> None:
    sizes = horizon.pool_sizes(nodes)
    assert sum(count for _, _, count in sizes) == nodes
    assert [accelerator for _, accelerator, _ in sizes] == ["nvidia-h100-80gb", "nvidia-a100-80gb"]
    assert horizon.pool_sizes(5000) == [
        ("h100", "nvidia-h100-80gb", 3000),
        ("a100", "nvidia-a100-80gb", 2000),
    ]


def test_node_addresses_are_unique_and_valid_past_the_sandboxs_256() -> None:
    addresses = [horizon.node_addresses(index) for index in range(5001)]
    internal, cidrs = zip(*addresses, strict=True)
    assert len(set(internal)) == len(set(cidrs)) == 5001
    networks = [ipaddress.IPv4Network(cidr) for cidr in cidrs]
    assert all(
        network.prefixlen == 24 and network.subnet_of(ipaddress.IPv4Network("10.64.0.0/11"))
        for network in networks
    )
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.240.0.0/16") for ip in internal)
    with pytest.raises(ValueError, match="out of range"):
        horizon.node_addresses(8192)


def test_a_node_manifest_carries_its_own_addresses() -> None:
    pool = parse_pool(
        {"name": "h100", "accelerator": "nvidia-h100-80gb", "acceleratorsPerNode": 8}, "h100", load_catalog()
    )
    manifest = horizon.node_manifest(pool, "h100-04999", 4999, "2026-12-01T00:00:00Z")
    internal, cidr = horizon.node_addresses(4999)
    assert manifest["spec"]["podCIDR"] == cidr and manifest["spec"]["podCIDRs"] == [cidr]
    assert {"type": "InternalIP", "address": internal} in manifest["status"]["addresses"]
    assert manifest["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_the_jobs_are_horizon_decisions_mix_as_a_client_applies_them() -> None:
    rng = random.Random(11)
    jobs = [horizon.horizon_job(index, rng) for index in range(400)]
    assert jobs[7]["metadata"] == {"name": "job-00007"}  # no uid, namespace or timestamps for the server
    template = jobs[0]["spec"]["template"]
    assert template["metadata"]["annotations"] == horizon.FAST_SHUTDOWN
    assert template["spec"]["containers"][0]["command"] == ["train"]
    elastic = [job for job in jobs if job["spec"]["elastic"].get("enabled")]
    singles = [job for job in jobs if job["spec"]["workers"] == {"replicas": 1}]
    assert 0.05 < len(elastic) / len(jobs) < 0.15 and 0.5 < len(singles) / len(jobs) < 0.7
    assert {job["spec"]["resources"]["accelerator"] for job in jobs} == {
        "nvidia-h100-80gb",
        "nvidia-a100-80gb",
    }


def test_a_gang_timeout_given_is_every_jobs_and_a_bad_one_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(11)
    assert all(
        job["spec"]["scheduling"]["gangTimeoutSeconds"] == 3600
        for job in (horizon.horizon_job(index, rng, 3600) for index in range(50))
    )
    plain = horizon.horizon_job(0, random.Random(11))
    assert "gangTimeoutSeconds" not in plain["spec"].get("scheduling", {})
    monkeypatch.setattr(sys, "argv", ["horizon_sandbox.py", "--gang-timeout-seconds", "3600"])
    assert horizon.arguments().gang_timeout_seconds == 3600
    monkeypatch.setattr(sys, "argv", ["horizon_sandbox.py", "--gang-timeout-seconds", "0"])
    with pytest.raises(SystemExit):
        horizon.arguments()
    assert "--gang-timeout-seconds must be at least 1" in capsys.readouterr().err


def test_the_probe_asks_for_an_accelerator_no_other_job_does() -> None:
    spec = horizon.probe_job()["spec"]
    rng = random.Random(11)
    others = {horizon.horizon_job(index, rng)["spec"]["resources"]["accelerator"] for index in range(400)}
    assert spec["resources"]["accelerator"] == horizon.PROBE_ACCELERATOR not in others
    assert spec["workers"] == {"replicas": 1, "minReplicas": 1, "maxReplicas": 2}
    assert spec["elastic"]["enabled"]


def test_a_histogram_is_read_from_the_metrics_page() -> None:
    histogram = horizon.parse_histogram(METRICS, "kubefit_reconcile_duration_seconds")
    assert histogram.count == 10 and histogram.total == pytest.approx(4.2)
    assert histogram.buckets[0] == (0.005, 1.0) and histogram.buckets[-1] == (math.inf, 10.0)
    assert histogram.at_most(1.0) == 9 and histogram.smallest_bound_holding_all() == 2.5
    assert horizon.parse_histogram(METRICS, "kubefit_queue_wait_seconds").count == 6
    assert horizon.parse_histogram("", "kubefit_reconcile_duration_seconds") == horizon.Histogram()


COLLECTIONS = """\
kubefit_garbage_collection_seconds_bucket{generation="0",le="0.001"} 40.0
kubefit_garbage_collection_seconds_bucket{generation="0",le="+Inf"} 40.0
kubefit_garbage_collection_seconds_count{generation="0"} 40.0
kubefit_garbage_collection_seconds_sum{generation="0"} 0.02
kubefit_garbage_collection_seconds_bucket{generation="2",le="0.1"} 1.0
kubefit_garbage_collection_seconds_bucket{generation="2",le="0.25"} 3.0
kubefit_garbage_collection_seconds_bucket{generation="2",le="+Inf"} 3.0
kubefit_garbage_collection_seconds_count{generation="2"} 3.0
kubefit_garbage_collection_seconds_sum{generation="2"} 0.48
"""


def test_a_labelled_histogram_is_read_by_its_label_values() -> None:
    by_generation = horizon.collections_by_generation(COLLECTIONS)
    assert by_generation["0"].count == 40 and by_generation["0"].total == pytest.approx(0.02)
    assert by_generation["2"].buckets == ((0.1, 1.0), (0.25, 3.0), (math.inf, 3.0))
    assert by_generation["1"] == horizon.Histogram()
    line = horizon.collections_line("gc", by_generation, operator_cpu=10.0)
    assert line == (
        "gc: 0.5 s in all; 5.0% of the operator's CPU time; generation 0: 40, 20 ms (mean 0.5 ms, each at most "
        "1 ms); generation 1: none; generation 2: 3, 480 ms (mean 160.0 ms, each at most 250 ms)"
    )


def test_a_phase_is_the_difference_of_two_scrapes() -> None:
    after = horizon.parse_histogram(METRICS, "kubefit_reconcile_duration_seconds")
    before = horizon.Histogram(
        ((0.005, 1.0), (0.01, 1.0), (0.5, 2.0), (1.0, 2.0), (2.5, 2.0), (math.inf, 2.0)), 2.0, 0.2
    )
    phase = after.minus(before)
    assert phase.count == 8 and phase.total == pytest.approx(4.0)
    assert phase.at_most(1.0) == 7 and phase.at_most(0.005) == 0


def test_the_verdict_line_says_what_the_buckets_can() -> None:
    line = horizon.decisions_line(
        "fill", horizon.parse_histogram(METRICS, "kubefit_reconcile_duration_seconds")
    )
    assert line == (
        "fill: 10 reconciles, mean 420.0 ms, 1 above 1 s (10.0%); every one at most 2.5 s (histogram bucket)"
    )
    past = horizon.Histogram(((1.0, 1.0), (10.0, 1.0), (math.inf, 2.0)), 2.0, 30.0)
    assert "past the last bucket (10 s)" in horizon.decisions_line("x", past)
    assert horizon.decisions_line("x", horizon.Histogram()) == "x: no reconciles"
    assert horizon.buckets_line("wait", horizon.parse_histogram(METRICS, "kubefit_queue_wait_seconds")) == (
        "wait (6): <= 1 s: 5, <= inf s: 6"
    )


def test_settled_is_every_job_running_or_queued() -> None:
    states = {"a": horizon.JobState("Running", 1.0), "b": horizon.JobState("Queued")}
    assert horizon.settled(states, ["a", "b"])
    assert not horizon.settled(states, ["a", "b", "c"])  # not seen yet
    assert not horizon.settled({**states, "b": horizon.JobState("Pending")}, ["a", "b"])
    assert not horizon.settled({**states, "a": horizon.JobState("Scaling", 1.0)}, ["a", "b"])


def test_admitted_is_the_admitted_condition_true() -> None:
    job = {"status": {"conditions": [{"type": "Admitted", "status": "True"}]}}
    assert horizon.is_admitted(job)
    assert not horizon.is_admitted({"status": {"conditions": [{"type": "Admitted", "status": "False"}]}})
    assert not horizon.is_admitted({})


def test_request_rates_are_per_second_and_the_largest_first() -> None:
    lines = horizon.rate_lines(
        {"PATCH nodes/status": 10.0}, {"PATCH nodes/status": 110.0, "CREATE pods": 20.0}, 10.0
    )
    assert lines.splitlines() == ["       10.0/s  PATCH nodes/status", "        2.0/s  CREATE pods"]


def _histogram(fast: float, slow: float) -> horizon.Histogram:
    return horizon.Histogram(((1.0, fast), (math.inf, fast + slow)), fast + slow, 0.0)


def test_the_windows_with_slow_decisions_are_named_from_the_first_apply() -> None:
    timeline = [
        (100.0, _histogram(5, 0), _histogram(1, 0)),
        (110.0, _histogram(50, 3), _histogram(9, 0)),  # 3 slow reconciles between 0 and 10 s
        (120.0, _histogram(80, 3), _histogram(12, 0)),  # none
        (130.0, _histogram(90, 4), _histogram(14, 2)),  # 1 reconcile, 2 passes
    ]
    assert horizon.slow_windows(timeline, since=100.0) == [
        "0-10 s: 3 reconciles, 0 passes",
        "20-30 s: 1 reconciles, 2 passes",
    ]
    assert horizon.slow_windows(timeline[:1], since=0.0) == []


def test_the_pass_line_names_passes() -> None:
    assert horizon.decisions_line("x", horizon.Histogram(), "passes") == "x: no passes"
    assert horizon.decisions_line("x", _histogram(4, 0), "passes").startswith(
        "x: 4 passes, mean 0.0 ms, 0 above 1 s"
    )


def _job(phase: str | None, admitted: bool = False, retries: int = 0) -> dict:
    conditions = [{"type": "Admitted", "status": "True" if admitted else "False"}]
    return {
        "metadata": {"name": "a"},
        "status": {"phase": phase, "conditions": conditions, "gang": {"retries": retries}},
    }


def test_a_job_is_settled_from_when_it_last_turned_running_or_queued() -> None:
    states: dict[str, horizon.JobState] = {}
    horizon.record_job(states, "ADDED", {"metadata": {"name": "a"}}, 1.0)
    horizon.record_job(states, "MODIFIED", _job("Queued"), 2.0)
    horizon.record_job(states, "MODIFIED", _job("Queued"), 3.0)  # still queued: still settled since 2
    assert states["a"].settled_at == 2.0 and states["a"].admitted_at is None
    horizon.record_job(states, "MODIFIED", _job("Pending", admitted=True), 4.0)
    horizon.record_job(states, "MODIFIED", _job("Running", admitted=True), 5.0)
    horizon.record_job(states, "MODIFIED", _job("Queued", retries=1), 6.0)  # a gang timeout requeued it
    assert states["a"] == horizon.JobState("Queued", admitted_at=4.0, gang_timeouts=1, settled_at=5.0)
    horizon.record_job(states, "DELETED", _job("Queued"), 7.0)
    assert states == {}


def test_the_machine_line_says_busy_stolen_and_idle_seconds_of_a_phase() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    before = horizon.machine_cpu(
        f"cpu  {100 * ticks} 0 {50 * ticks} {400 * ticks} 0 0 0 {10 * ticks} 0 0\ncpu0 1\n"
    )
    after = horizon.machine_cpu(f"cpu  {160 * ticks} 0 {70 * ticks} {420 * ticks} 0 0 0 {30 * ticks} 0 0\n")
    assert before == {"busy": 150.0, "idle": 400.0, "steal": 10.0}
    assert horizon.machine_line(before, after) == (
        "  the machine's CPUs: busy 80.0 s, stolen by the hypervisor 20.0 s (20.0% of busy and stolen), idle 20.0 s"
    )
    assert set(horizon.machine_cpu()) == {"busy", "idle", "steal"}  # this machine's /proc/stat reads
