"""Bad manifests: refused by the API server's schema, or marked InvalidSpec by the operator, while a
good job in the same namespace keeps being served."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from operator_support import (
    Kube,
    PrivatePool,
    job_manifest,
    running_names,
    wait_for,
)

pytestmark = pytest.mark.e2e


def server_apply(kube: Kube, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    # --validate=false: the API server's own verdict, not kubectl's client-side check.
    return kube.run("apply", "--validate=false", "-f", "-", input=json.dumps(manifest), check=False)


def without_model(manifest: dict[str, Any]) -> dict[str, Any]:
    del manifest["spec"]["model"]
    return manifest


# (case, spec fields replaced, the field the API server's message names)
SCHEMA_REJECTIONS = [
    ("negative replicas", {"workers": {"replicas": -2}}, "spec.workers.replicas"),
    ("negative headroom", {"resources": {"memoryHeadroom": -0.5}}, "spec.resources.memoryHeadroom"),
    ("unknown framework", {"framework": "tensorflow"}, "spec.framework"),
    ("unknown precision", {"model": {"parameters": "1B", "precision": "fp64"}}, "spec.model.precision"),
    ("model without size", {"model": {"precision": "bf16-mixed"}}, "spec.model"),
    ("bad parameter count", {"model": {"parameters": "lots"}}, "spec.model.parameters"),
    ("empty containers", {"template": {"spec": {"containers": []}}}, "spec.template.spec.containers"),
]

# (case, spec fields replaced, the field the InvalidSpec condition names)
OPERATOR_REJECTIONS = [
    ("min above max", {"workers": {"replicas": 2, "minReplicas": 4, "maxReplicas": 3}}, "spec.workers"),
    ("unknown accelerator", {"resources": {"accelerator": "nvidia-z9000"}}, "spec.resources.accelerator"),
]


@pytest.mark.parametrize(
    ("case", "spec", "field"), SCHEMA_REJECTIONS, ids=[case[0] for case in SCHEMA_REJECTIONS]
)
def test_api_server_rejects(kube: Kube, namespace: str, case: str, spec: dict[str, Any], field: str) -> None:
    result = server_apply(kube, job_manifest("bad", namespace, **spec))
    assert result.returncode != 0, f"{case}: accepted"
    assert field in result.stderr, result.stderr
    assert kube.get("trainingjob", "bad", namespace) is None


def test_api_server_rejects_a_job_without_model(kube: Kube, namespace: str) -> None:
    result = server_apply(kube, without_model(job_manifest("bad", namespace)))
    assert result.returncode != 0
    assert "spec.model: Required value" in result.stderr, result.stderr


def test_operator_marks_invalid_specs_and_keeps_serving(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    names = [f"bad-{index}" for index in range(len(OPERATOR_REJECTIONS))]
    for name, (_, spec, _) in zip(names, OPERATOR_REJECTIONS, strict=True):
        kube.apply(job_manifest(name, namespace, **spec))
    kube.apply(job_manifest("good", namespace, pool=pool, workers={"replicas": 1}))

    for name, (case, _, field) in zip(names, OPERATOR_REJECTIONS, strict=True):
        ready = wait_for(f"{case}: Ready=False/InvalidSpec", lambda n=name: _invalid(kube, namespace, n))
        assert field in ready["message"], f"{case}: {ready['message']}"
        assert kube.job_status(namespace, name)["phase"] == "Pending"
        assert kube.workers(namespace, name) == []
    wait_for(
        "the good job's worker running",
        lambda: running_names(kube.workers(namespace, "good")) == ["good-worker-0"],
    )
    warnings = wait_for(
        "a Warning event for the unknown accelerator",
        lambda: [event for event in kube.events(namespace, names[1]) if event["type"] == "Warning"],
    )
    assert warnings[0]["reason"] == "InvalidSpec"
    assert "spec.resources.accelerator" in warnings[0]["message"]


def test_a_job_name_no_service_may_have_stays_invalid_spec(kube: Kube, namespace: str) -> None:
    """A TrainingJob name is a DNS subdomain; its Service's must be a DNS label. Where no webhook refuses
    such a job, the Service the API server refused after the InvalidSpec status turned it into a
    ReconcileError, retried with a backoff for ever."""
    kube.apply(job_manifest("9lives", namespace, workers={"replicas": 1}))
    ready = wait_for("Ready=False/InvalidSpec", lambda: _invalid(kube, namespace, "9lives"))
    assert ready["message"].startswith("invalid spec: metadata.name: ")
    time.sleep(
        3
    )  # a refused Service came within the reconcile that wrote InvalidSpec, and its retry 5 s later
    assert _invalid(kube, namespace, "9lives") is not None
    assert kube.get("service", "9lives", namespace) is None
    reasons = {event["reason"] for event in kube.events(namespace, "9lives")}
    assert "ReconcileError" not in reasons and "InvalidSpec" in reasons


def _invalid(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    ready = kube.condition(namespace, name, "Ready")
    return ready if ready and ready["status"] == "False" and ready["reason"] == "InvalidSpec" else None


def test_a_service_of_the_jobs_name_that_is_not_its_own_is_reported(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    """A 409 on the job's headless Service taken for its own: the workers' DNS names would never resolve."""
    kube.apply({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken", "namespace": namespace},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "inference"}},
    })  # fmt: skip
    kube.apply(job_manifest("taken", namespace, pool=pool, workers={"replicas": 1}))

    # It gives its grant back rather than hold the devices until its gang timeout (300 s here).
    admitted = wait_for("Admitted=False naming the Service", lambda: _given_back(kube, namespace, "taken"))
    assert f"Service {namespace}/taken exists and is not this TrainingJob's" in admitted["message"]
    assert kube.workers(namespace, "taken") == []  # no worker is made that could not find the others

    def settled() -> dict[str, Any] | None:
        ready = kube.condition(namespace, "taken", "Ready")
        return ready if ready and ready["reason"] == "GangTimeout" else None

    # With nothing left to create its reconciles no longer fail: Ready read ReconcileError for good (an audit).
    ready = wait_for("Ready=False GangTimeout", settled, 60)
    assert ready["status"] == "False"


def _given_back(kube: Kube, namespace: str, job: str) -> dict[str, Any] | None:
    admitted = kube.condition(namespace, job, "Admitted")
    given_back = admitted and admitted["status"] == "False" and admitted["reason"] == "GangTimeout"
    return admitted if given_back else None


def test_a_worker_name_another_pod_has_gives_the_grant_back_until_that_pod_is_deleted(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    """A pod of a worker's name that is not the job's: each create fails the same way until someone deletes it,
    so the job gives its devices back at once and takes no room (it preempted others for it every gang
    cycle); a dry run of that worker finds the name free again."""
    kube.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "squat-worker-0", "namespace": namespace},
        "spec": {"nodeSelector": {"kubefit.dev/no-such-node": "true"},
                 "containers": [{"name": "web", "image": "web:1"}]},
    })  # fmt: skip
    kube.apply(job_manifest("squat", namespace, pool=pool, workers={"replicas": 1}))
    admitted = wait_for("Admitted=False naming the pod", lambda: _given_back(kube, namespace, "squat"))
    assert f"Pod {namespace}/squat-worker-0 exists and is not this TrainingJob's" in admitted["message"]
    assert "taking no room from other jobs" in admitted["message"]
    assert "Pod " in kube.job_status(namespace, "squat")["gang"]["refused"]
    kube.run("delete", "pod", "squat-worker-0", "-n", namespace, "--wait=true")
    # The gang backoff (10 s), then the dry run (every 30 s) finds the name free.
    wait_for(
        "the job's own worker 0",
        lambda: [pod for pod in kube.workers(namespace, "squat") if pod["metadata"].get("ownerReferences")],
        timeout=120,
    )
    wait_for(
        "status.gang.refused cleared", lambda: not kube.job_status(namespace, "squat")["gang"].get("refused")
    )


NESTED = 9_000  # the API server stores JSON nested up to 10,000 levels


def test_objects_nested_as_deep_as_the_api_server_stores_stop_no_job(
    kube: Kube, namespace: str, pool: PrivatePool, tmp_path: Path
) -> None:
    """A TrainingJob, and a ResourceQuota through its managedFields, nested 9,000 levels deep: kopf's watch
    decoded them at Python's default limit of 1,000 frames and failed, and the operator stopped for every
    job, at each restart too. Read here through kubectl's jsonpath: the test's own json.loads has that
    limit."""
    deep = job_manifest("deep", namespace, workers={"replicas": 1})
    deep["spec"]["template"]["spec"]["deep"] = "__DEEP__"
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(deep).replace('"__DEEP__"', "[" * NESTED + "]" * NESTED))
    kube.run(
        "create",
        "--raw",
        f"/apis/kubefit.dev/v1alpha1/namespaces/{namespace}/trainingjobs",
        "-f",
        str(job_file),
    )
    fields = '{"f:a":' * NESTED + "{}" + "}" * NESTED
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "deep", "managedFields": "__MF__"},
             "spec": {"hard": {"pods": "100"}}}  # fmt: skip
    managed = [{"manager": "e2e", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
                "fieldsV1": "__FIELDS__"}]  # fmt: skip
    quota_file = tmp_path / "quota.json"
    quota_file.write_text(
        json.dumps(quota).replace('"__MF__"', json.dumps(managed).replace('"__FIELDS__"', fields))
    )
    kube.run("create", "--raw", f"/api/v1/namespaces/{namespace}/resourcequotas", "-f", str(quota_file))

    def ready_of_deep() -> str | None:
        jsonpath = '{.status.conditions[?(@.type=="Ready")].reason}: {.status.conditions[?(@.type=="Ready")].message}'
        found = kube.run("get", "trainingjob", "deep", "-n", namespace, "-o", f"jsonpath={jsonpath}").stdout
        return found if found.startswith("InvalidSpec") else None

    assert "nested more than 100 levels deep" in wait_for(
        "the deep job: Ready=False/InvalidSpec", ready_of_deep
    )
    kube.apply(job_manifest("after", namespace, pool=pool, workers={"replicas": 1}))
    wait_for(
        "a job applied after them running its worker",
        lambda: running_names(kube.workers(namespace, "after")) == ["after-worker-0"],
    )
    kube.run("delete", "resourcequota", "deep", "-n", namespace, "--wait=false")
