"""How a failed worker ended (decisions/observed.py WorkerPod.exit_code, exit_reason), said by the messages
that report its failure (decisions/running.py): its pod is deleted for its replacement, so without them
nothing told an OOMKilled trainer from a script error."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from test_reconcile import CATALOG, NOW, condition, decide, elastic_spec, observe, pod, raw_spec, status_of

from kubefit.decisions.failure import MESSAGE_LIMIT
from kubefit.decisions.job import Decision
from kubefit.decisions.observed import WorkerPod, worker_from_pod

OOM = {"exitCode": 137, "reason": "OOMKilled"}
SCRIPT_ERROR = {"exitCode": 2, "reason": "Error", "message": "ModuleNotFoundError: No module named 'trl'"}


def failed_worker(index: int, terminated: dict[str, Any], pod_reason: str | None = None) -> WorkerPod:
    """A failed worker's manifest as the kubelet leaves it: the trainer (the first container) beside a log
    shipper, whose status comes first (the kubelet orders containerStatuses by name)."""
    status: dict[str, Any] = {
        "phase": "Failed",
        "containerStatuses": [
            {"name": "log-shipper", "state": {"terminated": {"exitCode": 143, "reason": "Error"}}},
            {"name": "trainer", "state": {"terminated": terminated}},
        ],
    }
    if pod_reason:
        status["reason"] = pod_reason
    manifest = {
        "metadata": {
            "name": f"llama-worker-{index}",
            "uid": f"pod-{index}",
            "labels": {"kubefit.dev/job": "llama"},
            "ownerReferences": [{"controller": True, "uid": "job-uid"}],
            "creationTimestamp": "2025-01-01T11:00:00Z",
        },
        "spec": {"nodeName": "gpu-node-7", "containers": [{"name": "trainer"}, {"name": "log-shipper"}]},
        "status": status,
    }
    worker = worker_from_pod(manifest)
    assert worker is not None
    return worker


def warnings(decision: Decision, reason: str) -> list[str]:
    return [event.message for event in decision.events if event.type == "Warning" and event.reason == reason]


def fail_one(spec: dict[str, Any], worker: WorkerPod) -> Decision:
    running = decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG)
    return decide(observe(spec, [pod(0), worker], running.status, NOW + timedelta(seconds=5)), CATALOG)


def test_the_trainers_exit_code_and_reason_are_read_from_a_failed_pod() -> None:
    oom = failed_worker(1, OOM)
    assert (oom.exit_code, oom.exit_reason) == (137, "OOMKilled")
    assert oom.failure_cause == "exit code 137 (OOMKilled)"
    error = failed_worker(1, SCRIPT_ERROR)
    assert error.failure_cause == "exit code 2"  # "Error" says nothing the exit code does not
    evicted = failed_worker(1, {"exitCode": 137, "reason": "Error"}, pod_reason="Evicted")
    assert evicted.failure_cause == "exit code 137 (Evicted)"
    # Only a failed pod carries them: the index holds every worker pod of the cluster.
    assert worker_from_pod({"metadata": {"name": "llama-worker-0", "labels": {"kubefit.dev/job": "llama"}},
                            "status": {"phase": "Running"}}) == WorkerPod("llama-worker-0", 0, "", "Running")  # fmt: skip


def test_a_fixed_group_restarted_for_an_oom_killed_worker_says_so_and_names_the_memory_request() -> None:
    restarted = fail_one(raw_spec(), failed_worker(1, OOM))
    [message] = warnings(restarted, "WorkerFailed")
    assert "llama-worker-1 failed on gpu-node-7 with exit code 137 (OOMKilled)" in message
    assert "spec.resources.memory" in message and "the default 16384Mi" in message
    assert condition(restarted, "Ready")["message"] == message == status_of(restarted)["message"]
    assert len(message) < MESSAGE_LIMIT
    given = fail_one(raw_spec(resources={**raw_spec()["resources"], "memory": "64Gi"}), failed_worker(1, OOM))
    assert "its request is spec.resources.memory 64Gi: raise it" in warnings(given, "WorkerFailed")[0]


def test_a_script_error_says_its_exit_code_and_no_memory_hint() -> None:
    [message] = warnings(fail_one(raw_spec(), failed_worker(1, SCRIPT_ERROR)), "WorkerFailed")
    assert "failed on gpu-node-7 with exit code 2:" in message
    assert "OOMKilled" not in message and "memory" not in message


def test_an_elastic_replacement_says_how_the_worker_ended() -> None:
    replaced = fail_one(elastic_spec(replicas=2, minimum=1, maximum=2), failed_worker(1, OOM))
    assert [worker.name for worker in replaced.replace] == ["llama-worker-1"]
    [message] = warnings(replaced, "WorkerFailed")
    assert (
        "worker llama-worker-1 failed on gpu-node-7 with exit code 137 (OOMKilled); replacing it" in message
    )
    assert "spec.resources.memory" in message


def test_the_restart_limit_says_how_the_workers_ended() -> None:
    spec = raw_spec(runPolicy={"maxRestarts": 0})
    failed = fail_one(spec, failed_worker(1, OOM))
    assert status_of(failed)["phase"] == "Failed"
    message = condition(failed, "Failed")["message"]
    assert message.startswith(
        "worker(s) llama-worker-1 failed with exit code 137 (OOMKilled) after 0 restart(s)"
    )
    assert "spec.resources.memory" in message and warnings(failed, "RestartLimitExceeded") == [message]


def test_several_failed_workers_each_say_how_they_ended_within_the_message_limit() -> None:
    spec = raw_spec(workers={"replicas": 8})
    running = decide(observe(spec, pods=[pod(index) for index in range(8)]), CATALOG)
    pods = [pod(0), *(failed_worker(index, OOM if index % 2 else SCRIPT_ERROR) for index in range(1, 8))]
    restarted = decide(observe(spec, pods, running.status, NOW + timedelta(seconds=5)), CATALOG)
    [message] = warnings(restarted, "WorkerFailed")
    assert "(llama-worker-1: exit code 137 (OOMKilled); llama-worker-2: exit code 2; " in message
    assert "; ...)" in message and message.count("OOMKilled: the trainer ran out of host memory") == 1
    assert len(message) < MESSAGE_LIMIT
