"""A gang whose places are held by workers leaving for it (a job preempted to make room, saving within its
checkpoint grace) keeps its gang clock stopped across an operator restart (or a new leader): the jobs it
waits for are recorded in its status (gang.roomFrom), and when they were seen gone (gang.roomFreedAt).
Before, only the process that preempted knew: a new one counted the clock from the admission and released
the gang at once (GangTimeout, its workers deleted, a backoff) while the job it preempted was still saving."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
import test_reconciler
from test_reconciler import NAMESPACE, Harness, harness, job_manifest
from test_refused_workers import OTHER, both_reconciled, run_on_h0

from kubefit.api.units import parse_rfc3339, rfc3339
from kubefit.controller.kube import KubeApi
from kubefit.controller.reconciler import Reconciler
from kubefit.decisions.inventory import NodeFacts
from kubefit.metrics import OperatorMetrics

__all__ = ["harness"]  # the fixture, by import


@pytest.fixture(autouse=True)
def one_node(monkeypatch: pytest.MonkeyPatch) -> None:
    node = NodeFacts("h0", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {"nvidia.com/gpu": "2"})
    monkeypatch.setattr(test_reconciler, "NODES", [node])


def _saving(h: Harness) -> None:
    """other's deleted workers are still there, terminating: they save within a 600 s termination grace."""
    grace_end = rfc3339(datetime.now(UTC) + timedelta(seconds=600))
    for index in (0, 1):
        name = f"other-worker-{index}"
        h.kube.pods[name] = test_reconciler.WorkerPod(
            name, index, f"uid-{name}-old", "Running", "h0", True, "uid-other", deletion_timestamp=grace_end
        )


def _admitted_ago(h: Harness, seconds: int) -> None:
    for item in h.kube.jobs["llama"]["status"]["conditions"]:
        if item["type"] == "Admitted":
            item["lastTransitionTime"] = rfc3339(datetime.now(UTC) - timedelta(seconds=seconds))


def _llama_preempts_other(h: Harness) -> None:
    """other (2 workers) runs on h0; llama (priority 100, gang timeout 60 s) preempts it; other's workers
    stay, saving, and llama's are Pending."""
    h.kube.jobs["other"] = job_manifest("other", replicas=2)
    h.reconcile(key=OTHER)
    run_on_h0(h, "other")
    h.reconcile("pod", key=OTHER)
    llama = job_manifest(replicas=2)
    llama["spec"]["scheduling"] = {"priority": 100, "preemption": "LowerPriority", "gangTimeoutSeconds": 60}
    h.kube.jobs["llama"] = llama
    real_delete = h.kube.delete_pod

    def delete_pod(namespace: str, name: str) -> bool:
        if not name.startswith("other-"):
            return real_delete(namespace, name)
        h.kube.log.append(("delete_pod", name))
        _saving(h)
        return True

    h.kube.delete_pod = delete_pod  # type: ignore[method-assign]
    h.reconcile()
    both_reconciled(h)
    assert h.events("Preempted")
    h.reconcile("pod", key=OTHER)
    h.reconcile("pod")


def _other_saved_and_gone(h: Harness) -> None:
    """other's workers have saved and are gone; both jobs reconciled on their pod events."""
    for index in (0, 1):
        h.kube.pods.pop(f"other-worker-{index}")
    h.reconcile("pod", key=OTHER)
    h.reconcile("pod")


def _restarted(h: Harness) -> None:
    """A new operator process (a restart, or a new leader), the same cluster; both jobs reconciled."""
    for name in ("other", "llama"):
        h.reconciler.forget((NAMESPACE, name))  # the old process's timers: they would fire in later tests
    h.reconciler = Reconciler(cast(KubeApi, h.kube), test_reconciler.CATALOG, OperatorMetrics())
    for name in ("other", "llama"):
        h.reconciler.jobs.observe((NAMESPACE, name), copy.deepcopy(h.kube.jobs[name]))
    h.log.clear()
    for name in ("other", "llama"):
        h.reconciler.reconcile((NAMESPACE, name), "resume", h.view())


def test_a_gang_waiting_for_a_preempted_job_to_save_is_not_released_by_an_operator_restart(
    harness: Harness,
) -> None:
    h = harness
    _llama_preempts_other(h)
    assert h.kube.jobs["llama"]["status"]["gang"]["roomFrom"] == [f"{NAMESPACE}/other"]
    _admitted_ago(h, 120)  # past its 60 s gang timeout; other still saving
    _restarted(h)
    admitted = h.condition("Admitted")
    assert (admitted["status"], admitted["reason"]) == ("True", "Admitted"), admitted["message"]
    assert not h.calls("delete_pod")
    assert h.kube.jobs["llama"]["status"]["gang"]["roomFrom"] == [f"{NAMESPACE}/other"]


def test_after_a_restart_the_clock_runs_from_when_the_preempted_jobs_workers_are_gone(
    harness: Harness,
) -> None:
    h = harness
    _llama_preempts_other(h)
    _admitted_ago(h, 120)
    _restarted(h)
    for index in (0, 1):
        h.kube.pods.pop(f"other-worker-{index}")  # saved and gone
    h.reconcile("pod", key=OTHER)
    h.reconcile("pod")
    gang = h.kube.jobs["llama"]["status"]["gang"]
    assert gang.get("roomFrom") is None
    freed = parse_rfc3339(gang["roomFreedAt"])
    assert freed is not None and abs((datetime.now(UTC) - freed).total_seconds()) < 5
    assert h.condition("Admitted")["status"] == "True"  # 60 s from the freeing, not from the admission

    # Another restart after the freeing: the recorded time holds, so 60 s after it the gang times out.
    gang["roomFreedAt"] = rfc3339(freed - timedelta(seconds=61))
    _restarted(h)
    admitted = h.condition("Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "GangTimeout")


def test_a_started_gang_records_no_room_any_more(harness: Harness) -> None:
    h = harness
    _llama_preempts_other(h)
    _other_saved_and_gone(h)
    assert h.kube.jobs["llama"]["status"]["gang"]["roomFreedAt"]
    run_on_h0(h, "llama")
    h.reconcile("pod")
    gang = h.kube.jobs["llama"]["status"]["gang"]
    assert gang["started"] is True
    assert gang.get("roomFrom") is None and gang.get("roomFreedAt") is None


@pytest.mark.parametrize("written", ["a day ago, no zone", "2999-01-01T00:00:00Z"], ids=["no-zone", "ahead"])
def test_a_room_freed_time_written_by_hand_that_cannot_hold_is_ignored(
    harness: Harness, written: str
) -> None:
    # Without a zone every reconcile failed (a naive and an aware time compared): now read as UTC. One ahead
    # held the gang until then: ignored.
    if written.startswith("a day ago"):
        written = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    h = harness
    _llama_preempts_other(h)
    _other_saved_and_gone(h)
    h.kube.jobs["llama"]["status"]["gang"]["roomFreedAt"] = written
    _admitted_ago(h, 120)
    _restarted(h)
    admitted = h.condition("Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "GangTimeout")  # 60 s from the admission


def test_a_time_without_a_zone_is_read_as_utc() -> None:
    # gang.since and gang.retryAfter written so by hand failed every reconcile of the job (naive and aware
    # times compared); Kubernetes writes every time in UTC.
    assert parse_rfc3339("2026-12-05T12:00:00") == datetime(2026, 12, 5, 12, tzinfo=UTC)
    assert parse_rfc3339("2026-12-05T12:00:00+01:00") == datetime(2026, 12, 5, 11, tzinfo=UTC)
