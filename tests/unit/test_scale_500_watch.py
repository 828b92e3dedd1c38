"""benchmarks/scale_500.py's pod watch: a list after a broken watch drops the pods deleted meanwhile (a
namespace deletion waited for them forever before)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import scale_500  # noqa: E402


def pod(namespace: str, name: str, phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"namespace": namespace, "name": name}
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-01T17:00:00Z"
    return {"metadata": metadata, "status": {"phase": phase}}


def test_a_list_drops_the_pods_deleted_while_the_watch_was_down_and_keeps_the_others() -> None:
    pods: dict[tuple[str, str], scale_500.PodRecord] = {}
    for name in ("a", "b", "c"):
        scale_500.record_pod(pods, "ADDED", pod("plain", name, "Pending"), seen=1.0)
    scale_500.record_pod(pods, "MODIFIED", pod("plain", "b", deleting=True), seen=2.0)
    scale_500.relist(pods, [pod("plain", "a"), pod("other", "d", "Pending")], seen=5.0)
    assert sorted(pods) == [("other", "d"), ("plain", "a")]
    assert pods[("plain", "a")].first_seen == 1.0 and pods[("plain", "a")].running
    assert pods[("other", "d")].first_seen == 5.0 and not pods[("other", "d")].running


def test_events_record_first_sight_deletion_and_running() -> None:
    pods: dict[tuple[str, str], scale_500.PodRecord] = {}
    scale_500.record_pod(pods, "ADDED", pod("ns", "w", "Pending"), seen=1.0)
    scale_500.record_pod(pods, "MODIFIED", pod("ns", "w"), seen=2.0)
    assert pods[("ns", "w")].running and pods[("ns", "w")].deleting_at is None
    scale_500.record_pod(pods, "MODIFIED", pod("ns", "w", deleting=True), seen=3.0)
    scale_500.record_pod(pods, "MODIFIED", pod("ns", "w", deleting=True), seen=4.0)
    assert pods[("ns", "w")].deleting_at == 3.0
    scale_500.record_pod(pods, "DELETED", pod("ns", "w"), seen=5.0)
    assert pods == {}
