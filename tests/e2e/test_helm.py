"""The Helm chart against the real sandbox API server: install, CRD established, RBAC, uninstall.

Nothing runs containers in the sandbox, so the operator pod itself is not exercised here; what is
checked is what the API server decides: that the chart's objects are accepted, that the CRD serves
the examples, and that the ServiceAccount may do exactly what the operator needs.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubefit.api.crd import crd, fields_missing_from
from kubefit.controller.kube import KubeApi
from kubefit_sandbox.binaries import helm_path
from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.kubeclient import new_api_client

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubefit"
CRD_NAME = "trainingjobs.kubefit.dev"


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}-kubefit"

    @property
    def cluster_name(self) -> str:
        """The name of the release's cluster-scoped objects: its namespace is part of it."""
        return f"{self.namespace}-{self.name}-kubefit"


def _helm(sandbox: Sandbox, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [str(helm_path()), f"--kubeconfig={sandbox.kubeconfig_path}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert not check or result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def _can_i(sandbox: Sandbox, release: Release, verb: str, resource: str, *scope: str) -> bool:
    # exit status 0 is "yes", 1 is "no"; anything else is an error, not an answer
    result = sandbox.kubectl(
        "auth", "can-i", verb, resource, f"--as={release.service_account}", *scope, check=False
    )
    assert result.returncode in (0, 1), result.stderr
    return result.stdout.strip() == "yes"


def _install(sandbox: Sandbox, release: Release, *values: str) -> None:
    _helm(
        sandbox,
        "install",
        release.name,
        str(CHART),
        "--namespace",
        release.namespace,
        "--create-namespace",
        *values,
    )


def _uninstall(sandbox: Sandbox, release: Release) -> None:
    _helm(sandbox, "uninstall", release.name, "--namespace", release.namespace, "--wait", check=False)
    sandbox.kubectl(
        "delete", "namespace", release.namespace, "--wait=false", "--ignore-not-found", check=False
    )


def _wait_established(sandbox: Sandbox, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        crd = json.loads(sandbox.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
        if conditions.get("Established") == "True":
            return crd
        assert time.monotonic() < deadline, f"CRD {CRD_NAME} not established: {conditions}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def release(sandbox: Sandbox) -> Iterator[Release]:
    """The chart installed with default values (all namespaces) into a fresh namespace."""
    suffix = uuid.uuid4().hex[:6]
    installed = Release(name=f"kf{suffix}", namespace=f"e2e-helm-{suffix}")
    _install(sandbox, installed)
    try:
        yield installed
    finally:
        _uninstall(sandbox, installed)


def test_install_creates_the_operator_objects(sandbox: Sandbox, release: Release) -> None:
    listed = _helm(sandbox, "list", "--namespace", release.namespace, "--output", "json").stdout
    (entry,) = [item for item in json.loads(listed) if item["name"] == release.name]
    assert entry["status"] == "deployed" and entry["app_version"] == "0.1.0"
    deployment = json.loads(
        sandbox.kubectl(
            "get", "deployment", f"{release.name}-kubefit", "-n", release.namespace, "-o", "json"
        ).stdout
    )
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == f"{release.name}-kubefit"
    assert pod_spec["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sandbox.kubectl("get", "serviceaccount", f"{release.name}-kubefit", "-n", release.namespace)
    sandbox.kubectl("get", "service", f"{release.name}-kubefit-metrics", "-n", release.namespace)
    sandbox.kubectl("get", "clusterrole", release.cluster_name)
    sandbox.kubectl("get", "clusterrolebinding", release.cluster_name)
    sandbox.kubectl("get", "service", f"{release.name}-kubefit-webhook", "-n", release.namespace)
    configuration = json.loads(
        sandbox.kubectl("get", "validatingwebhookconfiguration", release.cluster_name, "-o", "json").stdout
    )
    (webhook,) = configuration["webhooks"]
    assert webhook["clientConfig"]["service"]["name"] == f"{release.name}-kubefit-webhook"
    assert webhook["failurePolicy"] == "Ignore"  # no operator pod runs here: applies must still pass


def _generated_secrets(sandbox: Sandbox, release: Release) -> tuple[dict, dict, str]:
    def data(name: str) -> dict:
        secret = sandbox.kubectl("get", "secret", name, "-n", release.namespace, "-o", "json").stdout
        return json.loads(secret)["data"]

    configuration = json.loads(
        sandbox.kubectl("get", "validatingwebhookconfiguration", release.cluster_name, "-o", "json").stdout
    )
    (webhook,) = configuration["webhooks"]
    return (
        data(f"{release.name}-kubefit-webhook-tls"),
        data(f"{release.name}-kubefit-checkpoint-key"),
        webhook["clientConfig"]["caBundle"],
    )


def test_upgrade_keeps_the_generated_webhook_certificate_and_checkpoint_key(
    sandbox: Sandbox, release: Release
) -> None:
    # helm lookup: an upgrade reuses what the install generated, so nothing rotates on every upgrade.
    before = _generated_secrets(sandbox, release)
    assert before[2] == before[0]["ca.crt"]  # the configuration trusts the CA in the Secret
    _helm(
        sandbox,
        "upgrade",
        release.name,
        str(CHART),
        "--namespace",
        release.namespace,
        "--reset-then-reuse-values",
    )
    assert _generated_secrets(sandbox, release) == before


def test_same_named_releases_in_two_namespaces_both_install(sandbox: Sandbox) -> None:
    # Each team's namespace with its own operator, both releases named alike: their ClusterRole,
    # ClusterRoleBinding and ValidatingWebhookConfiguration must not collide.
    suffix = uuid.uuid4().hex[:6]
    twins = [Release(name=f"kftw{suffix}", namespace=f"e2e-helm-{suffix}-{team}") for team in ("a", "b")]
    try:
        for twin in twins:
            _install(sandbox, twin, "--set", f"watchNamespaces={{{twin.namespace}}}")
        for twin in twins:
            for kind in ("clusterrole", "clusterrolebinding", "validatingwebhookconfiguration"):
                sandbox.kubectl("get", kind, twin.cluster_name)
            assert _can_i(sandbox, twin, "create", "pods", "-n", twin.namespace)
        assert not _can_i(sandbox, twins[0], "create", "pods", "-n", twins[1].namespace)
    finally:
        for twin in twins:
            _uninstall(sandbox, twin)


def test_crd_is_established_with_its_subresources(sandbox: Sandbox, release: Release) -> None:
    crd = _wait_established(sandbox)
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1"
    assert set(version["subresources"]) == {"status", "scale"}
    assert "tj" in crd["spec"]["names"]["shortNames"]


def test_kubectl_explain_shows_the_field_descriptions(sandbox: Sandbox, release: Release) -> None:
    _wait_established(sandbox)
    # The API server publishes CRD schemas to OpenAPI a moment after the CRD is established.
    deadline = time.monotonic() + 60
    while True:
        explained = sandbox.kubectl("explain", "trainingjob.spec.model.parameters", check=False)
        if explained.returncode == 0:
            break
        assert time.monotonic() < deadline, explained.stderr
        time.sleep(1)
    assert "8.03B" in explained.stdout, explained.stdout


def test_the_api_server_accepts_every_example(sandbox: Sandbox, release: Release) -> None:
    _wait_established(sandbox)
    for example in sorted((REPO / "examples").glob("*.yaml")):
        result = sandbox.kubectl(
            "apply", "--dry-run=server", "-n", release.namespace, "-f", str(example), check=False
        )
        assert result.returncode == 0, f"{example.name}: {result.stderr}"


# (spec override, what the refusal names): rules the CRD schema itself expresses (docs/api.md, Validation)
SCHEMA_REFUSALS = [
    ({"framework": "tensorflow"}, "spec.framework"),
    ({"workers": {"replicas": 0}}, "spec.workers.replicas"),
    ({"resources": {"memoryHeadroom": 1.5}}, "spec.resources.memoryHeadroom"),
    ({"model": {"precision": "fp32"}}, "spec.model"),  # neither parameters nor memory
    ({"modle": {"parameters": "1B"}}, "modle"),  # kubectl's strict field validation
]


@pytest.mark.parametrize(("override", "named"), SCHEMA_REFUSALS, ids=[named for _, named in SCHEMA_REFUSALS])
def test_the_api_server_refuses_what_the_schema_expresses(
    sandbox: Sandbox, release: Release, override: dict, named: str
) -> None:
    _wait_established(sandbox)
    spec = {
        "template": {"spec": {"containers": [{"name": "t", "image": "busybox:1.36"}]}},
        "model": {"parameters": "1B"},
    }
    manifest = {"apiVersion": "kubefit.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "refused"}}
    manifest["spec"] = {**spec, **override}
    result = sandbox.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        release.namespace,
        "-f",
        "-",
        input=json.dumps(manifest),
        check=False,
    )
    assert result.returncode != 0, result.stdout
    assert named in result.stderr, result.stderr


ALLOWED_EVERYWHERE = [
    ("get", "trainingjobs.kubefit.dev"),
    ("list", "trainingjobs.kubefit.dev"),
    ("watch", "trainingjobs.kubefit.dev"),
    ("patch", "trainingjobs.kubefit.dev"),
    ("delete", "trainingjobs.kubefit.dev"),  # ttlSecondsAfterFinished
    ("patch", "trainingjobs.kubefit.dev", "--subresource=status"),
    # blockOwnerDeletion on the children's owner references, where OwnerReferencesPermissionEnforcement is on
    ("update", "trainingjobs.kubefit.dev", "--subresource=finalizers"),
    ("create", "pods"),
    ("delete", "pods"),
    ("patch", "pods"),  # adopting an orphaned worker
    ("watch", "pods"),
    ("create", "services"),
    ("create", "events"),
]
ALLOWED_CLUSTER_WIDE = [
    ("list", "nodes"),
    ("watch", "nodes"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
]
DENIED = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("delete", "nodes"),
    ("patch", "nodes"),
    ("get", "configmaps"),
    ("create", "trainingjobs.kubefit.dev"),
    ("update", "trainingjobs.kubefit.dev"),
    ("create", "deployments.apps"),
    ("create", "pods", "--subresource=exec"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("delete", "namespaces"),
    # Nothing in the code does these (tests/unit/test_rbac.py derives the grants from the code):
    ("patch", "trainingjobs.kubefit.dev", "--subresource=scale"),
    ("delete", "services"),
    ("patch", "events"),
    ("watch", "namespaces"),  # kopf needs it only for a list of watched namespaces
]


def test_service_account_may_do_what_the_operator_needs(sandbox: Sandbox, release: Release) -> None:
    other_namespace = "default"  # all namespaces are watched: not only the release's own
    refused = [
        check for check in ALLOWED_EVERYWHERE if not _can_i(sandbox, release, *check, "-n", other_namespace)
    ]
    refused += [check for check in ALLOWED_CLUSTER_WIDE if not _can_i(sandbox, release, *check)]
    assert not refused, f"the operator's ServiceAccount may not: {refused}"


def test_service_account_may_do_nothing_else(sandbox: Sandbox, release: Release) -> None:
    granted = [check for check in DENIED if _can_i(sandbox, release, *check, "-n", release.namespace)]
    granted += [check for check in DENIED if _can_i(sandbox, release, *check, "--all-namespaces")]
    assert not granted, f"the operator's ServiceAccount may also: {granted}"


def test_watch_namespaces_limits_rbac_to_those_namespaces(sandbox: Sandbox, release: Release) -> None:
    suffix = uuid.uuid4().hex[:6]
    watched = f"e2e-team-{suffix}"
    sandbox.kubectl("create", "namespace", watched)
    scoped = Release(name=f"kfns{suffix}", namespace=f"e2e-helm-{suffix}")
    try:
        _install(sandbox, scoped, "--set", f"watchNamespaces={{{watched}}}")
        assert _can_i(sandbox, scoped, "create", "pods", "-n", watched)
        assert _can_i(
            sandbox, scoped, "patch", "trainingjobs.kubefit.dev", "--subresource=status", "-n", watched
        )
        assert not _can_i(sandbox, scoped, "create", "pods", "-n", "default")
        assert not _can_i(sandbox, scoped, "list", "trainingjobs.kubefit.dev", "--all-namespaces")
        assert _can_i(sandbox, scoped, "list", "nodes")  # cluster-scoped reads stay cluster-wide
        assert _can_i(sandbox, scoped, "watch", "namespaces")  # kopf finds the watched namespaces
    finally:
        _uninstall(sandbox, scoped)
        sandbox.kubectl("delete", "namespace", watched, "--wait=false", "--ignore-not-found", check=False)


def test_uninstall_removes_everything_but_the_crd(sandbox: Sandbox) -> None:
    suffix = uuid.uuid4().hex[:6]
    short_lived = Release(name=f"kfun{suffix}", namespace=f"e2e-helm-{suffix}")
    _install(sandbox, short_lived)
    try:
        _helm(sandbox, "uninstall", short_lived.name, "--namespace", short_lived.namespace, "--wait")
        name = f"{short_lived.name}-kubefit"
        for kind, scope in [
            ("deployment", ["-n", short_lived.namespace]),
            ("serviceaccount", ["-n", short_lived.namespace]),
            ("service", ["-n", short_lived.namespace]),
            ("secret", ["-n", short_lived.namespace]),
            ("validatingwebhookconfiguration", []),
            ("clusterrole", []),
            ("clusterrolebinding", []),
        ]:
            left = sandbox.kubectl(
                "get", kind, "-l", f"app.kubernetes.io/instance={short_lived.name}", *scope, "-o", "name"
            )
            assert left.stdout.strip() == "", f"{kind} left behind after uninstall: {left.stdout} ({name})"
        assert not _can_i(sandbox, short_lived, "list", "nodes")
        # Helm never deletes CRDs (that would delete every TrainingJob); the CRD stays established.
        _wait_established(sandbox)
    finally:
        _uninstall(sandbox, short_lived)


def test_the_operator_reads_the_cluster_s_crd_and_finds_what_an_older_one_lacks(sandbox: Sandbox) -> None:
    """The start-up check against what the API server returns for an installed CRD: copies of this release's
    CRD under groups of their own (the real one serves the other tests), one without a status field."""
    suffix = uuid.uuid4().hex[:6]
    api = KubeApi(new_api_client(sandbox.kubeconfig_path))
    copies = {}
    for kind, drop in (("same", False), ("older", True)):
        definition = copy.deepcopy(crd())
        group = f"{kind}-{suffix}.kubefit.test"
        definition["spec"]["group"] = group
        definition["metadata"]["name"] = f"trainingjobs.{group}"
        if drop:
            schema = definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            del schema["properties"]["status"]["properties"]["gang"]["properties"]["attempt"]
        copies[kind] = definition["metadata"]["name"]
        sandbox.kubectl("apply", "-f", "-", input=json.dumps(definition))
    try:
        same, older = api.installed_crd(copies["same"]), api.installed_crd(copies["older"])
        assert same is not None and older is not None
        assert fields_missing_from(same) == []
        assert fields_missing_from(older) == ["status.gang.attempt"]
        assert api.installed_crd(f"trainingjobs.absent-{suffix}.kubefit.test") is None
    finally:
        sandbox.kubectl("delete", "crd", *copies.values(), "--wait=false", "--ignore-not-found", check=False)
