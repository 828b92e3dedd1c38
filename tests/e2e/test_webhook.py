"""The validating admission webhook on the real control plane: kube-apiserver calls the operator's
/validate over TLS, and `kubectl apply` of a spec the schema cannot refuse fails at once, naming the field.

The ValidatingWebhookConfiguration here points at the operator process by URL (the sandbox has no pod
network; the chart points at a Service instead) and selects only this module's labelled namespaces, so the
other tests' jobs, and those of a `make demo` running beside, never meet it. failurePolicy Fail: a refusal
that names the field can only come from the webhook, and an unreachable webhook would fail every apply.
"""

from __future__ import annotations

import base64
import copy
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_support import Kube, OperatorProcess, PrivatePool, job_manifest, running_names, wait_for

from kubefit_sandbox.controlplane import Sandbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the table is shared with unit tests
from bad_specs import BAD_SPECS, OPERATOR  # noqa: E402
from self_signed import self_signed_certificate  # noqa: E402

pytestmark = pytest.mark.e2e

SELECTOR_LABEL = "kubefit.dev/e2e-webhook"
OPERATOR_REFUSALS = [bad for bad in BAD_SPECS if bad.refused_by == OPERATOR and bad.json]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("webhook-tls"))


@pytest.fixture(scope="module")
def operator(
    sandbox: Sandbox,
    kube: Kube,
    node_agent: int,
    namespace_prefix: str,
    certificate: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """This module's operator, serving the webhook on a free port of 127.0.0.1."""
    cert, key = certificate
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    flags = ("--webhook-cert-file", str(cert), "--webhook-key-file", str(key), "--webhook-port", "0")
    process = OperatorProcess(sandbox.kubeconfig_path, f"{namespace_prefix}-*", log_path, flags)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def registered(kube: Kube, operator: OperatorProcess, certificate: tuple[Path, Path]) -> Iterator[str]:
    """A ValidatingWebhookConfiguration calling this module's operator; yields the namespace label value."""
    url = wait_for("the webhook's address", lambda: operator.logged(r"admission webhook on (\S+)"))
    selector = uuid.uuid4().hex[:8]
    name = f"kubefit-e2e-{selector}"
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "validate.trainingjobs.kubefit.dev",
                "clientConfig": {
                    "url": url,
                    "caBundle": base64.b64encode(certificate[0].read_bytes()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": ["kubefit.dev"],
                        "apiVersions": ["v1alpha1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["trainingjobs", "trainingjobs/scale"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {SELECTOR_LABEL: selector}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }
        ],
    }
    kube.apply(configuration)
    yield selector
    kube.run("delete", "validatingwebhookconfiguration", name, "--wait=false", check=False)


@pytest.fixture
def guarded(kube: Kube, namespace: str, registered: str) -> str:
    """The test's namespace, in the webhook's scope."""
    return _guard(kube, namespace, registered)


def _guard(kube: Kube, namespace: str, registered: str) -> str:
    kube.run("label", "namespace", namespace, f"{SELECTOR_LABEL}={registered}")
    # The API server's webhook source follows the configuration through a watch: wait until it calls. A
    # server-side dry run calls the webhook too, and stores nothing if it is not called yet.
    probe = json.dumps(_bad_job("probe", namespace, OPERATOR_REFUSALS[0].spec()))
    wait_for(
        "the API server calling the webhook",
        lambda: (
            "denied the request"
            in kube.run("apply", "--dry-run=server", "-f", "-", input=probe, check=False).stderr
        ),
        timeout=30,
        interval=0.5,
    )
    return namespace


def _bad_job(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubefit.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name, "namespace": namespace}, "spec": spec}  # fmt: skip


def test_kubectl_apply_of_what_the_operator_refuses_fails_at_once_naming_the_field(
    kube: Kube, guarded: str
) -> None:
    unnamed = []
    for index, bad in enumerate(OPERATOR_REFUSALS):
        result = kube.apply(_bad_job(f"bad-{index}", guarded, bad.spec()), check=False)
        if (
            result.returncode == 0
            or "denied the request" not in result.stderr
            or bad.field not in result.stderr
        ):
            unnamed.append(
                f"{bad.id}: rc {result.returncode}, {result.stderr.strip() or result.stdout.strip()}"
            )
    assert not unnamed, "\n".join(unnamed)
    assert kube.items("trainingjobs", guarded) == []  # nothing was stored


def test_a_valid_job_is_admitted_and_an_edit_that_breaks_it_is_refused(kube: Kube, guarded: str) -> None:
    manifest = job_manifest("fine", guarded, workers={"replicas": 1})
    kube.apply(manifest)
    stored = kube.get("trainingjob", "fine", guarded)
    assert stored is not None
    broken = copy.deepcopy(manifest)
    broken["spec"]["workers"] = {"replicas": 2, "minReplicas": 3, "maxReplicas": 2}
    refused = kube.apply(broken, check=False)
    assert refused.returncode != 0 and "spec.workers.minReplicas: must not exceed" in refused.stderr, (
        refused.stderr
    )
    after = kube.get("trainingjob", "fine", guarded)
    assert after is not None and after["spec"]["workers"] == stored["spec"]["workers"]
    # A change that leaves the spec alone still goes through.
    kube.run("label", "trainingjob", "fine", "-n", guarded, "team=a")
    labelled = kube.get("trainingjob", "fine", guarded)
    assert labelled is not None and labelled["metadata"]["labels"]["team"] == "a"


def test_a_template_the_api_server_refuses_as_a_pod_is_refused_naming_its_field(
    kube: Kube, guarded: str
) -> None:
    """The CRD's schema leaves a pod's fields to the API server: accepted, every worker create failed, and a
    running group restarted after such an edit could not start again."""
    manifest = job_manifest("env", guarded, workers={"replicas": 1})
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "1 A", "value": "x"}]
    refused = kube.apply(manifest, check=False)
    assert refused.returncode != 0 and "denied the request" in refused.stderr, refused.stderr
    assert "spec.template.spec.containers[0].env[0].name" in refused.stderr, refused.stderr
    assert kube.get("trainingjob", "env", guarded) is None
    container["env"] = [{"name": "MODE", "value": "x"}]
    kube.apply(manifest)  # put right, it goes through
    container["ports"] = [{"name": "a-port-name-too-long", "containerPort": 8080}]
    edited = kube.apply(manifest, check=False)
    assert edited.returncode != 0 and "spec.template.spec.containers[0].ports[0].name" in edited.stderr
    stored = kube.get("trainingjob", "env", guarded)
    assert stored is not None and "ports" not in stored["spec"]["template"]["spec"]["containers"][0]
    # What the operator sets in every worker is not checked from the template: an accelerator request
    # without its limit, a hostname with capitals (a review: such jobs, whose workers are fine, were refused).
    operators = job_manifest("own", guarded, workers={"replicas": 1})
    operators["spec"]["template"]["spec"]["hostname"] = "Not_A_Hostname"
    operators["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"nvidia.com/gpu": 8}}
    accepted = kube.apply(operators, check=False)
    assert accepted.returncode == 0, accepted.stderr
    # Hugepages beside the trainer's memory (an EFA template's): valid, with the memory kept in the check.
    huge = job_manifest("huge", guarded, workers={"replicas": 1})
    amounts = {"memory": "8Gi", "hugepages-2Mi": "1Gi"}
    huge["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": amounts, "limits": amounts}
    accepted = kube.apply(huge, check=False)
    assert accepted.returncode == 0, accepted.stderr


def test_an_edit_of_a_job_stored_invalid_goes_through_with_kubectl_warning_what_stays_invalid(
    kube: Kube, namespace: str, registered: str
) -> None:
    # Stored before the webhook watched its namespace (as with the webhook off, or a rule made stricter):
    # a suspend must go through, and kubectl now says the job stays invalid.
    manifest = job_manifest("stored", namespace, workers={"replicas": 2, "minReplicas": 3, "maxReplicas": 2})
    kube.apply(manifest)
    guarded = _guard(kube, namespace, registered)
    suspended = copy.deepcopy(manifest)
    suspended["spec"]["runPolicy"] = {"suspend": True}
    result = kube.apply(suspended)
    assert "Warning: still invalid, the job stays Ready=False InvalidSpec: spec.workers.minReplicas" in (
        result.stderr
    ), result.stderr
    stored = kube.get("trainingjob", "stored", guarded)
    assert stored is not None and stored["spec"]["runPolicy"]["suspend"] is True


def test_kubectl_scale_beyond_the_operators_worker_limit_is_refused_naming_the_field(
    kube: Kube, guarded: str
) -> None:
    # The scale subresource sends a Scale, not the job: without the rule for trainingjobs/scale the count
    # was stored and the job turned InvalidSpec afterwards.
    kube.apply(job_manifest("scaled", guarded, workers={"replicas": 1}))
    refused = kube.run("scale", "trainingjob/scaled", "-n", guarded, "--replicas=2000", check=False)
    assert refused.returncode != 0 and "denied the request" in refused.stderr, refused.stderr
    assert "spec.workers.replicas" in refused.stderr and "--max-workers-per-job" in refused.stderr
    stored = kube.get("trainingjob", "scaled", guarded)
    assert stored is not None and stored["spec"]["workers"]["replicas"] == 1
    kube.run("scale", "trainingjob/scaled", "-n", guarded, "--replicas=2")  # within the limit: stored
    stored = kube.get("trainingjob", "scaled", guarded)
    assert stored is not None and stored["spec"]["workers"]["replicas"] == 2


def test_a_running_groups_accelerator_cannot_change_until_the_job_is_suspended(
    kube: Kube, guarded: str, pool: PrivatePool
) -> None:
    # A worker created after such an edit would join the running group with the new value.
    # The simulated workers never acknowledge a checkpoint: no grace to wait out when suspended.
    no_grace = {"checkpointGracePeriodSeconds": 0}
    manifest = job_manifest("running", guarded, pool=pool, workers={"replicas": 1}, elastic=no_grace)
    kube.apply(manifest)
    wait_for("1 running worker", lambda: len(running_names(kube.workers(guarded, "running"))) == 1)
    wait_for(
        "status.replicas",
        lambda: (
            ((kube.get("trainingjob", "running", guarded) or {}).get("status") or {}).get("replicas") == 1
        ),
    )
    edited = copy.deepcopy(manifest)
    edited["spec"]["resources"] = {**edited["spec"]["resources"], "acceleratorsPerWorker": 2}
    refused = kube.apply(edited, check=False)
    assert refused.returncode != 0 and "spec.resources.acceleratorsPerWorker" in refused.stderr, (
        refused.stderr
    )
    assert "suspend" in refused.stderr
    stored = kube.get("trainingjob", "running", guarded)
    assert stored is not None and stored["spec"]["resources"]["acceleratorsPerWorker"] == 4
    # Suspending in the same update lets it through; the workers go, and resumed, the job starts with 2.
    edited["spec"]["runPolicy"] = {"suspend": True}
    kube.apply(edited)
    wait_for("the workers gone", lambda: kube.workers(guarded, "running") == [])
    edited["spec"]["runPolicy"] = {"suspend": False}
    kube.apply(edited)
    wait_for("1 running worker again", lambda: len(running_names(kube.workers(guarded, "running"))) == 1)
    (worker,) = kube.workers(guarded, "running")
    assert worker["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
