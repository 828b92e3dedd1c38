"""The operator under hard edges, on the real control plane: failing writes and absurd sizes.

- A ResourceQuota that forbids pods, of a scope the operator does not read (so it does not hold the job
  back itself), makes every worker create fail with 403: the job gets
  Ready=False/ReconcileError naming the quota, the transition events written before the creates are
  still there, and once the quota is gone the retry (after its backoff) runs the job.
- A worker whose job label is removed: the job says so (Ready=False/ReconcileError naming the pod and the
  label) instead of waiting for it, and counts it again once the label is back.
- A job at the CRD's maximum worker count, beyond the operator's --max-workers-per-job, and a job whose
  workers are created over several batches leave the operator's resident memory within 50 MiB of what
  it was before, and the operator healthy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from operator_support import (
    JOB_LABEL,
    Kube,
    OperatorProcess,
    PoolNodes,
    PrivatePool,
    job_manifest,
    running_names,
    wait_for,
)

from kubefit.controller.reconciler import CREATE_BATCH
from kubefit.decisions.job import DEFAULT_MAX_WORKERS_PER_JOB

MIB = 2**20
CRD_MAX_REPLICAS = 4096  # spec.workers.replicas' maximum in the CRD


def resident_bytes(operator: OperatorProcess) -> int:
    assert operator.process is not None
    status = Path(f"/proc/{operator.process.pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)
    assert found, status
    return int(found.group(1)) * 1024


def reasons(kube: Kube, namespace: str, job: str) -> list[str]:
    return [event["reason"] for event in kube.events(namespace, job)]


def quota(name: str, namespace: str, hard: dict[str, str], scope_selector: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"hard": hard}
    if scope_selector is not None:
        spec["scopeSelector"] = scope_selector
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


# A quota the operator leaves to the API server (docs/scheduling.md, ResourceQuotas): a PriorityClass scope
# for workers whose template names no class. A plain `pods: 0` now holds the job back as QuotaExceeded before
# any create (tests/e2e/test_namespace_quotas.py); this one still reaches the API server's refusal.
UNREAD_SCOPE = {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "DoesNotExist"}]}


def test_a_quota_that_forbids_pods_becomes_a_reconcile_error_and_the_job_runs_once_it_is_gone(
    kube: Kube, operator: OperatorProcess, namespace: str, pool: PrivatePool
) -> None:
    kube.apply(quota("no-pods", namespace, {"pods": "0"}, UNREAD_SCOPE))
    # The quota admission refuses every pod until the controller manager has computed the quota's usage.
    wait_for(
        "the quota's usage",
        lambda: (kube.get("resourcequota", "no-pods", namespace) or {}).get("status", {}).get("used"),
    )
    kube.apply(job_manifest("quota", namespace, pool=pool))

    ready = wait_for(
        "Ready=False/ReconcileError naming the quota",
        lambda: (
            found
            if (found := kube.condition(namespace, "quota", "Ready"))
            and found["reason"] == "ReconcileError"
            and "exceeded quota: no-pods" in found["message"]
            else None
        ),
        timeout=120,
        interval=1,
    )
    assert ready["status"] == "False" and "(HTTP 403)" in ready["message"], ready
    sized = kube.condition(namespace, "quota", "Sized")
    assert sized is not None and sized["reason"] == "Fits"
    # The Sized transition was written before the first create failed: its event was not lost.
    events = wait_for(
        "the Fits and ReconcileError events",
        lambda: (
            found if {"Fits", "ReconcileError"} <= set(found := reasons(kube, namespace, "quota")) else None
        ),
        timeout=60,
        interval=1,
    )
    assert "CreatedWorkers" not in events
    assert kube.workers(namespace, "quota") == []
    assert operator.healthy()

    kube.run("delete", "resourcequota", "no-pods", "-n", namespace)
    # Backoff: 5 s doubling; a few failures before the delete mean a retry within about a minute.
    wait_for(
        "the job running after the quota is deleted",
        lambda: kube.job_status(namespace, "quota").get("phase") == "Running",
        timeout=240,
        interval=1,
    )
    ready = kube.condition(namespace, "quota", "Ready") or {}
    assert (ready.get("status"), ready.get("reason")) == ("True", "AllWorkersReady"), ready
    assert len(running_names(kube.workers(namespace, "quota"))) == 2
    assert reasons(kube, namespace, "quota").count("Fits") == 1  # told once, not again by the retries


def test_a_worker_whose_job_label_is_removed_is_reported_and_counted_again_once_it_is_back(
    kube: Kube, operator: OperatorProcess, namespace: str, pool: PrivatePool
) -> None:
    """The job no longer sees a worker whose label was removed (kopf's index drops it), and a worker of that
    name cannot be created beside it: the job waited for it with nothing said. Now it says why and how, and
    the pod counts again once its label is back. Elastic, so that the worker's loss restarts nobody (a fixed
    group restarts every worker when one is gone, this one included once it is back)."""
    kube.apply(job_manifest("relabel", namespace, pool=pool, elastic={"enabled": True}))
    both = ["relabel-worker-0", "relabel-worker-1"]
    wait_for("both workers running", lambda: running_names(kube.workers(namespace, "relabel")) == both, 120)
    uid = kube.workers(namespace, "relabel")[1]["metadata"]["uid"]
    kube.run("label", "pod", "relabel-worker-1", "-n", namespace, f"{JOB_LABEL}-")

    def ready_is(status: str, reason: str | None = None) -> dict[str, Any] | None:
        found = kube.condition(namespace, "relabel", "Ready")
        return found if found and found["status"] == status and reason in (None, found["reason"]) else None

    ready = wait_for("Ready=False naming the label", lambda: ready_is("False", "ReconcileError"), timeout=60)
    assert (
        f"Pod {namespace}/relabel-worker-1 is this TrainingJob's worker but lost its label"
        in ready["message"]
    )
    # The event is posted by kopf's poster after the status write: waited for, not read once.
    wait_for(
        "a Warning event naming the label",
        lambda: any(
            event["type"] == "Warning" and "lost its label" in event["message"]
            for event in kube.events(namespace, "relabel")
        ),
    )

    kube.run("label", "pod", "relabel-worker-1", "-n", namespace, f"{JOB_LABEL}=relabel")
    wait_for("Ready=True once the label is back", lambda: ready_is("True"), timeout=90, interval=1)
    pods = kube.items("pods", namespace)
    assert [pod["metadata"]["name"] for pod in pods] == both  # none made beside it, none deleted
    assert pods[1]["metadata"]["uid"] == uid


def test_absurd_and_large_worker_counts_leave_the_operators_memory_flat(
    kube: Kube, operator: OperatorProcess, namespace: str, add_pool: Callable[..., PrivatePool]
) -> None:
    large = 3 * CREATE_BATCH + 7  # over several batches
    # Room for the warm-up job and the large one, one device a worker: both are admitted whole.
    pool = add_pool(PoolNodes("nvidia-h100-80gb", nodes=(large + 2 + 7) // 8, per_node=8))
    one_device = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1}

    def job(name: str, workers: dict[str, int]) -> dict[str, Any]:
        return job_manifest(name, namespace, pool=pool, resources=one_device, workers=workers)

    # Warm up every code path a reconcile takes (sizing, pod building, creates, events) before measuring.
    kube.apply(job("warm", {"replicas": 2}))
    wait_for("the warm-up job's workers", lambda: len(kube.workers(namespace, "warm")) == 2, interval=1)
    before = resident_bytes(operator)

    absurd = {"replicas": CRD_MAX_REPLICAS, "maxReplicas": CRD_MAX_REPLICAS}
    kube.apply(job("absurd", absurd))
    kube.apply(job("large", {"replicas": large}))

    ready = wait_for(
        "the absurd job refused with InvalidSpec",
        lambda: (
            found
            if (found := kube.condition(namespace, "absurd", "Ready")) and found["reason"] == "InvalidSpec"
            else None
        ),
        timeout=120,
        interval=1,
    )
    assert "spec.workers.replicas" in ready["message"], ready
    assert f"limit of {DEFAULT_MAX_WORKERS_PER_JOB} per job" in ready["message"], ready
    wait_for(
        f"{large} workers of the large job",
        lambda: len(kube.items("pods", namespace, f"{JOB_LABEL}=large")) == large,
        timeout=300,
        interval=2,
    )

    def created_events() -> list[str]:
        events = kube.events(namespace, "large")
        created = [event["message"] for event in events if event["reason"] == "CreatedWorkers"]
        return created if len(created) >= 4 else []

    # kopf posts events after the creates, from a loop busy with the pods' watch events: waited for.
    created = wait_for("4 CreatedWorkers events", created_events, timeout=60, interval=1)
    assert all(len(message.split(", ")) <= CREATE_BATCH for message in created)
    # Let resyncs (every 10 s here) reconcile both jobs again with everything in place.
    reconciles = _reconciles(operator)
    wait_for("two more resyncs", lambda: _reconciles(operator) >= reconciles + 4, timeout=60, interval=1)

    after = resident_bytes(operator)
    assert after - before < 50 * MIB, f"resident memory grew {(after - before) / MIB:.1f} MiB"
    assert kube.items("pods", namespace, f"{JOB_LABEL}=absurd") == []
    assert operator.healthy()


def _reconciles(operator: OperatorProcess) -> float:
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("kubefit_reconcile_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
