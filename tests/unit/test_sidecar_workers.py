"""Workers with a classic sidecar injected by a webhook (Istio's or Linkerd's proxy, a regular container, not
a native sidecar init container): under restartPolicy Never the proxy runs on once the trainer exits, so the
pod stays Running. The operator judges the worker by its trainer (decisions/observed.py), and deletes such a
pod when the job stops, finished or not (decisions/workers.py stop_workers): it holds its devices."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from test_reconcile import CATALOG, NOW, decide, observe, pod, raw_spec, status_of

from kubefit.decisions.observed import WorkerPod, worker_from_pod
from kubefit.decisions.workers import stop_workers

PROXY_RUNNING = {"name": "istio-proxy", "ready": True, "state": {"running": {}}}


def sidecar_worker(
    index: int,
    trainer_state: dict[str, Any],
    pod_status: dict[str, Any] | None = None,
    proxy: dict[str, Any] = PROXY_RUNNING,
) -> WorkerPod:
    """A worker pod as the kubelet shows it with an injected proxy (containerStatuses by name): Running, or
    with `pod_status` (phase, reason, conditions) instead."""
    manifest = {
        "metadata": {
            "name": f"llama-worker-{index}",
            "uid": f"pod-{index}",
            "labels": {"kubefit.dev/job": "llama"},
            "ownerReferences": [{"controller": True, "uid": "job-uid"}],
        },
        "spec": {
            "nodeName": "node-a",
            "containers": [{"name": "trainer"}, {"name": "istio-proxy", "image": "istio/proxyv2:1.22.0"}],
        },
        "status": {
            **(pod_status or {"phase": "Running"}),
            "containerStatuses": [proxy, {"name": "trainer", "state": trainer_state}],
        },
    }
    worker = worker_from_pod(manifest)
    assert worker is not None
    return worker


def test_a_trainer_that_exited_0_beside_a_running_proxy_is_a_succeeded_worker() -> None:
    worker = sidecar_worker(0, {"terminated": {"exitCode": 0, "reason": "Completed"}})
    assert (worker.phase, worker.ready, worker.finished, worker.outlived_by_sidecar) == (
        "Succeeded",
        False,
        True,
        True,
    )
    assert worker.exit_code is None  # said of failed workers only


def test_an_oom_killed_trainer_beside_a_running_proxy_is_a_failed_worker_that_says_how() -> None:
    worker = sidecar_worker(1, {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    assert (worker.phase, worker.exit_code, worker.exit_reason) == ("Failed", 137, "OOMKilled")
    assert worker.failure_cause == "exit code 137 (OOMKilled)" and worker.outlived_by_sidecar


def test_a_running_trainer_beside_a_proxy_is_a_running_worker() -> None:
    worker = sidecar_worker(0, {"running": {"startedAt": "2025-01-01T11:00:00Z"}})
    assert (worker.phase, worker.ready, worker.outlived_by_sidecar, worker.exit_code) == (
        "Running",
        True,
        False,
        None,
    )


def test_a_stopping_job_deletes_finished_workers_a_proxy_keeps_running_and_keeps_stopped_ones() -> None:
    outlived = sidecar_worker(1, {"terminated": {"exitCode": 0}})
    stopped = pod(0, "Succeeded")
    assert stop_workers([stopped, outlived], keep_finished=True) == ("llama-worker-1",)


def test_a_job_whose_trainers_exited_beside_running_proxies_succeeds_and_frees_their_devices() -> None:
    spec = raw_spec(workers={"replicas": 2})
    running = decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG)
    assert status_of(running)["phase"] == "Running"
    done = [sidecar_worker(index, {"terminated": {"exitCode": 0}}) for index in range(2)]
    succeeded = decide(observe(spec, done, running.status, NOW + timedelta(seconds=5)), CATALOG)
    assert status_of(succeeded)["phase"] == "Succeeded"
    assert sorted(succeeded.delete) == ["llama-worker-0", "llama-worker-1"]
    # Reconciled again once finished, while the deletes have not landed: still deleted, not kept.
    again = decide(observe(spec, done, succeeded.status, NOW + timedelta(seconds=10)), CATALOG)
    assert sorted(again.delete) == ["llama-worker-0", "llama-worker-1"]


def test_a_trainer_failed_beside_a_running_proxy_restarts_its_group_and_says_how_it_ended() -> None:
    spec = raw_spec(workers={"replicas": 2})
    running = decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG)
    failed = sidecar_worker(1, {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    restarted = decide(observe(spec, [pod(0), failed], running.status, NOW + timedelta(seconds=5)), CATALOG)
    assert status_of(restarted)["restarts"] == 1
    assert {"llama-worker-0", "llama-worker-1"} <= {*restarted.delete, *(w.name for w in restarted.replace)}
    assert "exit code 137 (OOMKilled)" in status_of(restarted)["message"]


PROXY_FAILED = {"name": "istio-proxy", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}


def test_a_trainer_that_exited_0_in_a_pod_failed_by_its_proxy_is_a_succeeded_worker() -> None:
    """The kubelet marks the pod Failed for the proxy's exit; the trainer, which judges the worker, succeeded."""
    trainer = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    worker = sidecar_worker(0, trainer, {"phase": "Failed"}, PROXY_FAILED)
    assert (worker.phase, worker.finished, worker.exit_code, worker.outlived_by_sidecar) == (
        "Succeeded",
        True,
        None,
        False,
    )


def test_a_pod_kubernetes_stopped_stays_failed_though_its_trainer_exited_0() -> None:
    """An evicted or disrupted pod's trainer may exit 0 from its SIGTERM handler before its work is done."""
    trainer = {"terminated": {"exitCode": 0}}
    evicted = sidecar_worker(0, trainer, {"phase": "Failed", "reason": "Evicted"}, PROXY_FAILED)
    disruption = [{"type": "DisruptionTarget", "status": "True"}]
    disrupted = sidecar_worker(1, trainer, {"phase": "Failed", "conditions": disruption}, PROXY_FAILED)
    assert (evicted.phase, evicted.disrupted, disrupted.phase, disrupted.disrupted) == (
        "Failed",
        True,
        "Failed",
        True,
    )


def test_a_job_whose_trainers_exited_0_in_pods_failed_by_their_proxies_succeeds() -> None:
    spec = raw_spec(workers={"replicas": 2})
    running = decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG)
    trainer = {"terminated": {"exitCode": 0}}
    done = [sidecar_worker(index, trainer, {"phase": "Failed"}, PROXY_FAILED) for index in range(2)]
    finished = decide(observe(spec, done, running.status, NOW + timedelta(seconds=5)), CATALOG)
    assert (status_of(finished)["phase"], status_of(finished)["restarts"]) == ("Succeeded", 0)
    assert finished.delete == () and finished.replace == ()  # stopped pods kept for their logs
