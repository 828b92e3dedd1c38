"""Creates the API server refuses: a ResourceQuota's 403 answering the create of an object that is there
already, a Service that cannot be created, and the status writes of a retry whose create is refused again.

The API server's quota admission runs before its check that the name is free, so in a namespace at its
`services` (or `pods`) limit the create of the job's own Service is answered 403 "exceeded quota", not
409 (kubernetes/kubernetes#106842). The operator creates the Service again after every restart.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes.client.exceptions import ApiException
from test_reconciler import (
    CATALOG,
    KEY,
    NAMESPACE,
    QUOTA_403,
    Harness,
    api_error,
    harness,
    job_manifest,
    retrying,
)

from kubefit.controller.kube import KubeApi, ServiceTaken
from kubefit.controller.reconciler import Reconciler
from kubefit.metrics import OperatorMetrics

__all__ = ["harness"]  # the fixture, by import

OWNER = {"kind": "TrainingJob", "name": "llama", "uid": "uid-llama", "controller": True}


class _Answer:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.reason = status, ""
        self.headers: dict[str, str] = {}
        self._data = json.dumps(body).encode()

    def read(self) -> bytes:
        return self._data


class QuotaServer:
    """A namespace's Services and pods (kind -> name -> metadata) behind the ApiClient methods KubeApi's REST
    calls use, with a ResourceQuota of `hard` objects of each kind: as the API server, a create is checked
    against the quota first (403), and only then against the names there (409)."""

    def __init__(self, hard: int, objects: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        self.hard = hard
        self.objects: dict[str, dict[str, dict[str, Any]]] = {"services": {}, "pods": {}, **(objects or {})}
        self.sent: list[tuple[str, str]] = []

    def param_serialize(self, method: str, path: str, body: Any = None, **_: Any) -> tuple[str, str, Any]:
        return method, path, body

    def call_api(self, method: str, path: str, body: Any, _request_timeout: object = None) -> _Answer:
        self.sent.append((method, path))
        parts = urlsplit(path).path.split("/")  # /api/v1/namespaces/<ns>/<kind>[/<name>]
        there = self.objects[parts[5]]
        if method == "POST":
            name = body["metadata"]["name"]
            if len(there) + 1 > self.hard:
                message = (
                    f'{parts[5]} "{name}" is forbidden: exceeded quota: q, requested: {parts[5]}=1, '
                    f"used: {parts[5]}={len(there)}, limited: {parts[5]}={self.hard}"
                )
                return _Answer(403, {"kind": "Status", "code": 403, "message": message})
            if name in there:
                return _Answer(409, {"kind": "Status", "code": 409, "message": f'"{name}" already exists'})
            there[name] = body["metadata"]
            return _Answer(201, body)
        if len(parts) > 6:  # a GET by name
            if parts[6] not in there:
                return _Answer(404, {"kind": "Status", "code": 404, "message": f'"{parts[6]}" not found'})
            return _Answer(200, {"metadata": there[parts[6]]})
        (selector,) = parse_qs(urlsplit(path).query)["fieldSelector"]
        name = selector.removeprefix("metadata.name=")
        return _Answer(200, {"items": [{"metadata": there[name]}] if name in there else []})


def manifest(name: str) -> dict[str, Any]:
    labels = {"kubefit.dev/job": "llama"}
    return {"metadata": {"name": name, "namespace": NAMESPACE, "labels": labels, "ownerReferences": [OWNER]}}


def running(harness: Harness, replicas: int = 2) -> None:
    """The job reconciled, its workers running, then the operator restarted (an upgrade, a leader change)."""
    harness.kube.jobs["llama"] = job_manifest(replicas=replicas)
    harness.reconcile()
    for name, pod in list(harness.kube.pods.items()):
        harness.kube.pods[name] = replace(pod, phase="Running", node_name="h0")
    harness.reconcile("pod")
    assert harness.condition("Ready")["reason"] == "AllWorkersReady"
    harness.reconciler.forget(KEY)
    harness.reconciler = Reconciler(cast(KubeApi, harness.kube), CATALOG, OperatorMetrics())


def test_a_full_services_quota_answering_the_jobs_own_service_leaves_a_restarted_job_healthy(
    harness: Harness,
) -> None:
    """The quota's 403 on the restarted operator's create of the Service that is there was a ReconcileError
    on every retry: a failed worker was counted in status.restarts but never deleted nor created again."""
    server = QuotaServer(hard=1)  # exactly used up by the job's own Service
    harness.kube.create_service = KubeApi(cast(Any, server)).create_service  # type: ignore[method-assign]
    running(harness)
    assert list(server.objects["services"]) == ["llama"]
    harness.reconcile("resume")
    assert server.sent[-2:] == [
        ("POST", "/api/v1/namespaces/team-a/services"),  # refused: exceeded quota
        ("GET", "/api/v1/namespaces/team-a/services/llama"),  # the job's own: there already
    ]
    assert harness.condition("Ready")["reason"] == "AllWorkersReady" and not retrying(harness)
    harness.kube.pods["llama-worker-1"] = replace(harness.kube.pods["llama-worker-1"], phase="Failed")
    harness.log.clear()
    harness.reconcile("update")
    # The group is stopped, to start again after its restart delay.
    assert harness.calls("delete_pod") == [("delete_pod", "llama-worker-0"), ("delete_pod", "llama-worker-1")]
    assert not harness.kube.pods and not retrying(harness)


def test_a_service_that_cannot_be_created_does_not_keep_a_suspended_jobs_workers(harness: Harness) -> None:
    """The Service create came before the deletes: its failure (a policy webhook, a quota) after a restart
    left the suspended job's workers running, though its status said Suspended."""
    running(harness)
    harness.kube.fail[("create_service", "*")] = api_error(403, 'admission webhook "policy" denied it')
    harness.kube.jobs["llama"]["spec"]["runPolicy"] = {"suspend": True}
    harness.reconcile("update")
    assert not harness.kube.pods
    assert harness.events("DeletedWorkers") and harness.condition("Suspended")["status"] == "True"
    assert harness.condition("Ready")["reason"] == "ReconcileError" and retrying(harness)


def test_a_quotas_403_for_the_jobs_own_object_is_already_there_and_otherwise_raised() -> None:
    theirs = {"name": "llama", "ownerReferences": [{"kind": "Job", "name": "x", "uid": "uid-x"}]}
    api = KubeApi(cast(Any, QuotaServer(1, {"services": {"llama": manifest("llama")["metadata"]}})))
    assert api.create_service(NAMESPACE, manifest("llama")) is False
    with pytest.raises(ServiceTaken, match="owned by Job x"):
        KubeApi(cast(Any, QuotaServer(1, {"services": {"llama": theirs}}))).create_service(
            NAMESPACE, manifest("llama")
        )
    with pytest.raises(ApiException, match="exceeded quota") as refused:
        KubeApi(cast(Any, QuotaServer(hard=0))).create_service(NAMESPACE, manifest("llama"))
    assert refused.value.status == 403  # the quota's answer, not the 404 of the read after it
    pods = QuotaServer(1, {"pods": {"llama-worker-0": manifest("llama-worker-0")["metadata"]}})
    assert KubeApi(cast(Any, pods)).create_pod(NAMESPACE, manifest("llama-worker-0")) is False
    with pytest.raises(ApiException, match="exceeded quota"):
        KubeApi(cast(Any, pods)).create_pod(NAMESPACE, manifest("llama-worker-1"))


def test_a_service_name_taken_lasts_unless_a_deleted_job_of_the_name_or_a_deletion_holds_it() -> None:
    old_job = {"apiVersion": "kubefit.dev/v1alpha1", "kind": "TrainingJob", "name": "llama", "uid": "uid-old"}
    for found, lasting in [
        ({"ownerReferences": [{"kind": "Job", "name": "x", "uid": "uid-x"}]}, True),
        ({"ownerReferences": [old_job]}, False),
        ({"deletionTimestamp": "2026-12-05T10:00:00Z"}, False),
    ]:
        server = QuotaServer(1, {"services": {"llama": {"name": "llama", **found}}})
        with pytest.raises(ServiceTaken) as raised:
            KubeApi(cast(Any, server)).create_service(NAMESPACE, manifest("llama"))
        assert raised.value.lasting is lasting


def test_a_dry_run_a_quota_refuses_beside_the_jobs_own_terminating_pod_is_refused() -> None:
    # The dry run took any answer that found the job's own pod for "admitted": a restarted operator's job,
    # refused by a quota while its workers terminated, then took room again (a review, 5 December).
    own = {**manifest("llama-worker-0")["metadata"], "deletionTimestamp": "2026-12-05T10:00:00Z"}
    with pytest.raises(ApiException, match="exceeded quota"):
        KubeApi(cast(Any, QuotaServer(1, {"pods": {"llama-worker-0": own}}))).try_pod(
            NAMESPACE, manifest("llama-worker-0")
        )


def test_a_403_that_is_not_a_quota_is_raised_without_a_read() -> None:
    class Forbidden(QuotaServer):
        def call_api(self, method: str, path: str, body: Any, _request_timeout: object = None) -> _Answer:
            self.sent.append((method, path))
            return _Answer(403, {"kind": "Status", "code": 403, "message": "services is forbidden: RBAC"})

    server = Forbidden(hard=1)
    with pytest.raises(ApiException, match="RBAC"):
        KubeApi(cast(Any, server)).create_service(NAMESPACE, manifest("llama"))
    assert server.sent == [("POST", "/api/v1/namespaces/team-a/services")]


def status_writes(harness: Harness) -> list[tuple[str, int | None]]:
    """Each status write's Ready reason and replicas, from now on."""
    writes: list[tuple[str, int | None]] = []
    patch = harness.kube.patch_job_status

    def recording(namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        ready = next(item for item in status["conditions"] if item["type"] == "Ready")
        writes.append((ready["reason"], status.get("replicas")))
        patch(namespace, name, uid, status)

    harness.kube.patch_job_status = recording  # type: ignore[method-assign]
    return writes


def test_a_retry_refused_again_leaves_the_error_in_the_status_until_its_creates_succeed(
    harness: Harness,
) -> None:
    """Each retry wrote the decision's status (Ready=WorkersNotReady, replicas counting the refused worker)
    before the create, then the error again: two watch events per retry, Ready and replicas flipping."""
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.fail[("create_pod", "llama-worker-1")] = QUOTA_403
    harness.reconcile()
    writes = status_writes(harness)
    for _ in range(3):
        harness.reconcile("retry")
    assert writes == []  # the error and replicas are what the status says already
    assert harness.condition("Ready")["reason"] == "ReconcileError"
    assert harness.kube.jobs["llama"]["status"]["replicas"] == 1
    del harness.kube.fail[("create_pod", "llama-worker-1")]
    harness.log.clear()
    harness.reconcile("retry")
    assert writes == [("WorkersNotReady", 2)] and not retrying(harness)
    assert harness.calls("create_pod", "patch_job_status") == [
        ("create_pod", "llama-worker-1"),
        ("patch_job_status", "llama"),
    ]


def test_a_retry_keeps_the_error_in_the_status_it_writes_before_its_deletes(harness: Harness) -> None:
    """A retry whose decision changes more than Ready (a suspend) writes that first, Ready still the error,
    and Ready once its deletes are done."""
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.fail[("create_pod", "llama-worker-1")] = QUOTA_403
    harness.reconcile()
    writes = status_writes(harness)
    harness.kube.jobs["llama"]["spec"]["runPolicy"] = {"suspend": True}
    harness.reconcile("update")
    assert writes == [("ReconcileError", 1), ("Suspended", 1)]
    assert not harness.kube.pods and not retrying(harness)
