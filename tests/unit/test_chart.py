"""The Helm chart: lints, renders with default and non-default values, and grants least privilege.

Uses the helm binary that `make tools` fetched into ~/.cache/kubefit/bin (looked up, never downloaded:
the unit tier is offline): without it these tests fail, saying to run `make tools`, rather than skip.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

import kubefit
from kubefit.api.crd import crd
from kubefit.cli.main import build_parser
from kubefit.decisions.job import DEFAULT_CLUSTER_DOMAIN, DEFAULT_MAX_WORKERS_PER_JOB
from kubefit.sizing.catalog import CatalogError, parse_catalog
from kubefit_sandbox.binaries import helm_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubefit"
RELEASE = "kf"
# What a cluster with the Prometheus Operator serves; `helm template` assumes it only when told.
MONITORING_API = "monitoring.coreos.com/v1"
DASHBOARD_TEMPLATE = "templates/configmap-dashboard.yaml"
NAMESPACE = "kubefit-system"
CLUSTER_SCOPED_KINDS = ("ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration")
# A webhook.caBundle: base64 of PEM certificates (the chart checks the PEM header; nothing here parses it).
CA_BUNDLE = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\nMIIBkubefit\n-----END CERTIFICATE-----\n"
).decode()

# What the operator does (controller/ and kopf), as (apiGroup, resource, verb). The chart must grant
# exactly this: one permission more is privilege nobody asked for, one less breaks the operator.
NAMESPACED_PERMISSIONS = {
    *(("kubefit.dev", "trainingjobs", verb) for verb in ("get", "list", "watch", "patch", "delete")),
    ("kubefit.dev", "trainingjobs/status", "patch"),
    ("kubefit.dev", "trainingjobs/finalizers", "update"),
    *(("", "pods", verb) for verb in ("create", "delete", "patch", "list", "watch")),
    ("", "services", "create"),
    ("", "services", "get"),
    ("", "events", "create"),
    ("", "resourcequotas", "list"),
    ("", "resourcequotas", "watch"),
}
CLUSTER_PERMISSIONS = {
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
# kopf follows namespaces only when it serves a list of them (watchNamespaces), not with --all-namespaces.
NAMESPACE_PATTERN_PERMISSIONS = {("", "namespaces", "list"), ("", "namespaces", "watch")}

EXTRA_CATALOG_ENTRY = {
    "name": "nvidia-rtx-6000-ada",
    "vendor": "nvidia",
    "memoryMiB": 49140,
    "resourceName": "nvidia.com/gpu",
    "perNode": [1, 2, 4, 8],
    "fp8": True,
    "match": [{"nvidia.com/gpu.product": "NVIDIA-RTX-6000-Ada-Generation"}],
}
NON_DEFAULT_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example.com/ml/kubefit", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
    "watchNamespaces": ["team-a", "team-b"],
    "metrics": {
        "port": 9100,
        "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "prometheus"}},
    },
    "liveness": {"port": 8181},
    "catalog": [EXTRA_CATALOG_ENTRY],
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux", "node-role.kubernetes.io/control-plane": ""},
    "tolerations": [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}
    ],
    "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    "serviceAccount": {"name": "kubefit-operator", "annotations": {"example.com/owner": "ml-platform"}},
    "maxWorkersPerJob": 4096,
    "clusterDomain": "corp.example",
    "admission": {"policy": "StrictFIFO", "headOfLineTimeoutSeconds": 60},
    "checkpoint": {"port": 8444, "existingSecret": "ml-checkpoint-key"},
    "webhook": {"enabled": False, "port": 9443, "failurePolicy": "Ignore", "timeoutSeconds": 5},
}


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_path()), *args], capture_output=True, text=True, timeout=120)


def _values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _render(*args: str) -> list[dict[str, Any]]:
    result = _helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def _by_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def _one(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = _by_kind(objects, kind)
    return found


def _permissions(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _service(objects: Iterable[dict[str, Any]], suffix: str) -> dict[str, Any]:
    (found,) = [obj for obj in _by_kind(objects, "Service") if obj["metadata"]["name"].endswith(suffix)]
    return found


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return _render()


@pytest.fixture(scope="module")
def custom_objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    values = _values_file(tmp_path_factory.mktemp("values"), NON_DEFAULT_VALUES)
    return _render("--values", str(values), "--api-versions", MONITORING_API)


# ------------------------------------------------------------------ chart metadata and lint


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "kubefit"
    project_version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == "0.1.0" == kubefit.__version__ == project_version


def test_helm_lint_default_values() -> None:
    result = _helm("lint", str(CHART), "--strict")
    assert result.returncode == 0, result.stdout + result.stderr


def test_helm_lint_non_default_values(tmp_path: Path) -> None:
    result = _helm(
        "lint", str(CHART), "--strict", "--values", str(_values_file(tmp_path, NON_DEFAULT_VALUES))
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "bad",
    [
        ["--set", "watchNamespaces=team-a"],  # a string, not a list
        ["--set", "metrics.port=0"],
        ["--set-json", 'catalog=[{"name": "gpu-without-memory", "resourceName": "nvidia.com/gpu"}]'],
        ["--set", "serviceAccount.create=false"],  # then serviceAccount.name is required
        ["--set", "maxWorkersPerJob=0"],
        ["--set", "maxWorkersPerJob=many"],
        ["--set", "clusterDomain=Cluster_Local"],
        ["--set", "admission.policy=LIFO"],
        ["--set", "admission.headOfLineTimeoutSeconds=-1"],
        ["--set", "checkpoint.port=0"],
        ["--set", "checkpoint.port=9090"],  # the metrics port
        ["--set", "checkpoint.url=ftp://kubefit:8081"],
        ["--set", "checkpoint.url=http://"],
        ["--set", "checkpoint.existingSecret=Not_A_Name"],
        ["--set", "checkpoint.portt=8081"],  # a misspelt key is an error, not ignored
        ["--set", "replicaCount=0"],
        ["--set", "replicaCount=2", "--set", "leaderElection.enabled=false"],  # two operators, no Lease
        ["--set", "leaderElection.leaseName=Not_A_Name"],
        ["--set", "metrics.serviceMonitor.interval=30 seconds"],
        ["--set", "metrics.dashboard.additionalLabels.team=1"],  # a label value must be a string
        ["--set", "webhook.existingSecret=Not_A_Name", "--set", f"webhook.caBundle={CA_BUNDLE}"],
        ["--set", "webhook.caBundle=not base64!"],
        ["--set", "podDisruptionBudget.enabled=maybe"],
        [
            "--set",
            "webhook.certManager.issuerRef.name=Not_A_Name",
            "--set",
            "webhook.certManager.enabled=true",
        ],
        # Each rendered fine and failed only at the API server, naming an object field, not the value.
        ["--set", "fullnameOverride=Bad_Name!"],
        ["--set", "nameOverride=Kubefit"],
        ["--set", "priorityClassName=Bad Class"],
        ["--set", "resources.requests.cpu=lots"],
        ["--set", "resources.limits.memory=1 GiB"],
        ["--set", "podLabels.bad key=x"],
        ["--set", "podLabels.team=two words"],
        ["--set", "serviceAccount.name=Bad_Name"],
        ["--set-json", 'extraEnv=[{"valu": "x"}]'],  # no name, a misspelt value
        ["--set", "tolerations[0].operator=Sometimes"],
        ["--set", "image.tag=v1 latest"],
    ],
    ids=[
        "namespaces-string",
        "port-zero",
        "catalog-entry-incomplete",
        "no-service-account-name",
        "max-workers-zero",
        "max-workers-string",
        "cluster-domain-not-dns",
        "admission-policy-unknown",
        "head-of-line-negative",
        "checkpoint-port-zero",
        "checkpoint-port-taken",
        "checkpoint-url-not-http",
        "checkpoint-url-no-host",
        "checkpoint-secret-bad-name",
        "checkpoint-misspelt-key",
        "replicas-zero",
        "replicas-without-leader-election",
        "lease-name-invalid",
        "scrape-interval-not-a-duration",
        "label-not-a-string",
        "webhook-secret-bad-name",
        "webhook-ca-bundle-not-base64",
        "disruption-budget-not-a-boolean",
        "webhook-issuer-bad-name",
        "fullname-not-a-dns-label",
        "name-with-capitals",
        "priority-class-with-a-space",
        "cpu-not-a-quantity",
        "memory-not-a-quantity",
        "pod-label-key-with-a-space",
        "pod-label-value-with-a-space",
        "service-account-bad-name",
        "env-without-a-name",
        "toleration-operator-unknown",
        "image-tag-with-a-space",
    ],
)
def test_bad_values_are_refused(bad: list[str]) -> None:
    result = _helm("template", RELEASE, str(CHART), *bad)
    assert result.returncode != 0, result.stdout


def test_names_priority_class_and_quantities_of_the_usual_forms_render() -> None:
    objects = _render(
        "--set", "fullnameOverride=kubefit-ops", "--set", "nameOverride=kf",
        "--set", "priorityClassName=system-cluster-critical",
        "--set", "resources.requests.cpu=250m", "--set", "resources.requests.memory=256Mi",
        "--set", "resources.limits.cpu=2", "--set", "resources.limits.memory=1.5Gi",
    )  # fmt: skip
    deployment = _one(objects, "Deployment")
    assert deployment["metadata"]["name"] == "kubefit-ops"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == 2


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["--metrics-port=9999"], "--metrics-port is set by the chart from metrics.port"),
        (["--metrics=9999"], "--metrics-port is set by the chart from metrics.port"),  # argparse's prefix
        (["--checkpoint-port", "7000"], "--checkpoint-port is set by the chart from checkpoint.port"),
        (["--leader-election-lease-name=other"], "from leaderElection.leaseName"),
        (["-n", "team-a"], "-n is set by the chart from watchNamespaces"),
        (["-vn", "team-a"], "-vn is set by the chart from watchNamespaces"),  # argparse: -v -n team-a
        (["--verbose", "--bind-address=::", "--leader-election-lease-seconds=30"], None),
        (["--resync-seconds", "60", "-vv", "--debug", "--catalog=/etc/c.yaml"], None),
        (["--bogus"], "--bogus is not a flag of kubefit run"),
        (["--help"], "--help is not a flag of kubefit run"),  # it prints and exits: CrashLoopBackOff
        (["-x"], "-x is not a flag of kubefit run"),
    ],
    ids=[
        "metrics-port",
        "metrics-port-prefix",
        "checkpoint-port",
        "lease-name",
        "namespace-short",
        "namespace-combined",
        "own-flags",
        "own-flags-with-values",
        "unknown-flag",
        "help",
        "unknown-short-flag",
    ],
)
def test_extra_args_may_not_repeat_a_flag_the_chart_sets(args: list[str], refused: str | None) -> None:
    """argparse keeps the last of a repeated flag: extraArgs [--metrics-port=9999] moved the listener off
    the port the Service and ServiceMonitor target, silently; a lease name off the one the Role names."""
    result = _helm("template", RELEASE, str(CHART), "--set-json", f"extraArgs={json.dumps(args)}")
    if refused is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0 and refused in result.stderr, result.stderr


def test_the_charts_two_lists_of_extra_args_flags_are_kubefit_runs_flags() -> None:
    """_helpers.tpl names each flag of `kubefit run` as set by the chart ($managed) or left to extraArgs ($own);
    a flag added to the command and to neither list would be refused in extraArgs."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    managed = re.search(r"\$managed := dict (.*) }}", helpers)
    own = re.search(r"\$own := list (.*) }}", helpers)
    assert managed and own
    chart_flags = set(re.findall(r'"(--[a-z-]+)"', managed.group(1))) | set(
        re.findall(r'"(--[a-z-]+)"', own.group(1))
    )
    run = next(action for action in build_parser()._actions if action.choices and "run" in action.choices)
    flags = {option for action in run.choices["run"]._actions for option in action.option_strings}
    assert chart_flags == {flag for flag in flags if flag.startswith("--")} - {"--help"}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"perNode": [1, 128]}, "perNode"),  # the loader takes 1 to 64
        ({"name": "n" * 64}, "name"),  # the loader takes up to 63 characters
        ({"match": [{}]}, "match"),  # an empty label set: the loader refuses it
        ({"fp8": "yes"}, "fp8"),  # the loader takes true or false
        ({"name": "auto"}, "name"),  # spec.resources.accelerator's word for the planner's choice
        ({"name": "Bad Name!"}, "name"),  # not a label value
        ({"memoryMiB": 2**30 + 1}, "memoryMiB"),  # past 1 PiB
        ({"resourceName": "example.com/big gpu"}, "resourceName"),  # no pod could request it
        ({"resourceName": "example.com/" + "g" * 64}, "resourceName"),  # a name part past 63 characters
        ({"resourceName": "a" * 254 + "/gpu"}, "resourceName"),  # a prefix past 253 characters
        ({"perNodes": [8]}, "perNodes"),  # misspelt: was dropped for the default [1, 2, 4, 8]
    ],
    ids=[
        "per-node-above-64",
        "name-too-long",
        "match-empty-label-set",
        "fp8-not-a-boolean",
        "name-auto",
        "name-not-a-label-value",
        "memory-above-1-pib",
        "resource-name-with-a-space",
        "resource-name-past-63",
        "resource-prefix-past-253",
        "misspelt-key",
    ],
)
def test_a_catalog_entry_the_operator_refuses_fails_helm_not_the_operator_s_start(
    change: dict[str, Any], path: str
) -> None:
    """The schema keeps to parse_catalog: an entry it lets through made the operator exit at start
    (CrashLoopBackOff, a rollout that never completes) after a helm install that succeeded."""
    entry = {**EXTRA_CATALOG_ENTRY, **change}
    with pytest.raises(CatalogError):
        parse_catalog(yaml.safe_dump({"accelerators": [entry]}))
    result = _helm("template", RELEASE, str(CHART), "--set-json", f"catalog=[{json.dumps(entry)}]")
    assert result.returncode != 0 and path in result.stderr, result.stderr


# ------------------------------------------------------------------ rendering


def test_default_render_has_the_expected_objects(default_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(obj["kind"] for obj in default_objects)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",  # the leader-election Lease
        "RoleBinding",
        "Secret",  # the checkpoint key
        "Secret",  # the webhook's certificate
        "Service",  # metrics
        "Service",  # checkpoints
        "Service",  # webhook
        "ServiceAccount",
        "ValidatingWebhookConfiguration",
    ]
    for obj in default_objects:
        if obj["kind"] in CLUSTER_SCOPED_KINDS:
            # two releases of one name in two namespaces must not share cluster-scoped objects
            assert obj["metadata"]["name"] == f"{NAMESPACE}-{RELEASE}-kubefit", obj["metadata"]
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["name"].startswith(RELEASE), obj["metadata"]
            assert obj["metadata"]["namespace"] == NAMESPACE


def _cluster_scoped(objects: Iterable[dict[str, Any]]) -> dict[str, str]:
    return {obj["kind"]: obj["metadata"]["name"] for obj in objects if obj["kind"] in CLUSTER_SCOPED_KINDS}


def test_same_named_releases_in_two_namespaces_have_their_own_cluster_scoped_objects() -> None:
    # The natural watchNamespaces set-up: release "kf" in team-a's namespace and in team-b's.
    names = [
        _cluster_scoped(
            _helm_template_objects("--namespace", namespace, "--set", f"watchNamespaces={{{namespace}}}")
        )
        for namespace in ("team-a", "team-b")
    ]
    assert set(names[0]) == set(CLUSTER_SCOPED_KINDS) == set(names[1])
    assert not set(names[0].values()) & set(names[1].values())
    assert names[0]["ClusterRole"] == f"team-a-{RELEASE}-kubefit"


def test_long_cluster_scoped_names_are_cut_to_63_characters_and_stay_distinct() -> None:
    prefix = "n" * 50
    found = []
    for namespace in (f"{prefix}-one", f"{prefix}-two"):
        objects = _helm_template_objects("--namespace", namespace)
        names = _cluster_scoped(objects)
        assert len(set(names.values())) == 1, names
        (name,) = set(names.values())
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        assert name.startswith(prefix) and re.search(r"-[0-9a-f]{8}$", name), name
        binding = _one(objects, "ClusterRoleBinding")
        assert binding["roleRef"]["name"] == name
        found.append(name)
    assert found[0] != found[1]  # the hash tells apart what the cut made equal


def _helm_template_objects(*args: str) -> list[dict[str, Any]]:
    """Like _render, for a namespace of the caller's choosing."""
    result = _helm("template", RELEASE, str(CHART), *args)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def test_custom_render_has_the_expected_objects(custom_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(obj["kind"] for obj in custom_objects)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]  # no Secret: checkpoint.existingSecret names one
        # team-a, team-b, the leader-election Lease, and kopf's events about nodes in the release's namespace
        + ["Role", "RoleBinding"] * 4
    )


def test_every_rendered_object_is_well_formed(
    default_objects: list[dict[str, Any]], custom_objects: list[dict[str, Any]]
) -> None:
    name = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    for obj in default_objects + custom_objects:
        assert obj.get("apiVersion") and obj.get("kind"), obj
        assert name.match(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 63, obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_deployment_defaults(default_objects: list[dict[str, Any]]) -> None:
    deployment = _one(default_objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # leader election is on by default: a new pod stands by (ready) before an old one stops
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["serviceAccountName"] == _one(default_objects, "ServiceAccount")["metadata"]["name"]
    container = _container(default_objects)
    assert container["image"] == f"ghcr.io/kubefit/kubefit:{kubefit.__version__}"
    assert "command" not in container  # the image's ENTRYPOINT is `kubefit run`
    assert container["args"] == [
        "--all-namespaces",
        "--metrics-port=9090",
        "--liveness-port=8080",
        f"--max-workers-per-job={DEFAULT_MAX_WORKERS_PER_JOB}",  # the chart's default is the operator's
        f"--cluster-domain={DEFAULT_CLUSTER_DOMAIN}",
        "--admission-policy=BestEffortFIFO",
        "--head-of-line-timeout-seconds=300",
        "--checkpoint-port=8081",
        f"--checkpoint-url=http://{RELEASE}-kubefit-checkpoints.{NAMESPACE}.svc:8081",
        "--checkpoint-key-file=/etc/kubefit/checkpoint/key",
        "--webhook-port=9443",
        "--webhook-cert-file=/etc/kubefit/webhook/tls.crt",
        "--webhook-key-file=/etc/kubefit/webhook/tls.key",
        "--leader-election",
        f"--leader-election-lease-name={RELEASE}-kubefit",
        f"--leader-election-namespace={NAMESPACE}",
    ]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 9090, "healthz": 8080, "checkpoints": 8081, "webhook": 9443}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    assert not any(env["name"] == "KUBEFIT_CATALOG" for env in container["env"])
    assert "priorityClassName" not in pod["spec"] and "nodeSelector" not in pod["spec"]


def test_pod_labels_cannot_change_the_selector_labels() -> None:
    objects = _render("--set", "podLabels.team=ml", "--set", r"podLabels.app\.kubernetes\.io/name=kubefit")
    deployment = _one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "ml"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # each key once: the template does not repeat the selector's keys (YAML would keep the last)
    result = _helm("template", RELEASE, str(CHART), "--set", r"podLabels.app\.kubernetes\.io/name=kubefit",
                   "-s", "templates/deployment.yaml")  # fmt: skip
    assert result.stdout.count("app.kubernetes.io/name:") == 3, result.stdout  # metadata, selector, pod
    for key, value in (("name", "other"), ("instance", "someone-else")):
        refused = _helm(
            "template", RELEASE, str(CHART), "--set", rf"podLabels.app\.kubernetes\.io/{key}={value}"
        )
        assert refused.returncode != 0, refused.stdout
        assert f"podLabels.app.kubernetes.io/{key} must not be set" in refused.stderr, refused.stderr


def test_deployment_runs_non_root_with_a_read_only_root(default_objects: list[dict[str, Any]]) -> None:
    pod_spec = _one(default_objects, "Deployment")["spec"]["template"]["spec"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] != 0
    container = _container(default_objects)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # the one writable path


def test_deployment_with_non_default_values(custom_objects: list[dict[str, Any]]) -> None:
    pod_spec = _one(custom_objects, "Deployment")["spec"]["template"]["spec"]
    container = _container(custom_objects)
    assert container["image"] == "registry.example.com/ml/kubefit:0.1.0-rc1"
    assert container["imagePullPolicy"] == "Always"
    assert container["args"] == [
        "--namespace=team-a",
        "--namespace=team-b",
        "--metrics-port=9100",
        "--liveness-port=8181",
        "--max-workers-per-job=4096",
        "--cluster-domain=corp.example",
        "--admission-policy=StrictFIFO",
        "--head-of-line-timeout-seconds=60",
        "--checkpoint-port=8444",
        f"--checkpoint-url=http://{RELEASE}-kubefit-checkpoints.{NAMESPACE}.svc:8444",
        "--checkpoint-key-file=/etc/kubefit/checkpoint/key",
        "--leader-election",
        f"--leader-election-lease-name={RELEASE}-kubefit",
        f"--leader-election-namespace={NAMESPACE}",
    ]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 9100, "healthz": 8181, "checkpoints": 8444}
    assert container["resources"] == NON_DEFAULT_VALUES["resources"]
    assert pod_spec["priorityClassName"] == "system-cluster-critical"
    assert pod_spec["nodeSelector"] == NON_DEFAULT_VALUES["nodeSelector"]
    assert pod_spec["tolerations"] == NON_DEFAULT_VALUES["tolerations"]
    assert pod_spec["serviceAccountName"] == "kubefit-operator"
    service_account = _one(custom_objects, "ServiceAccount")
    assert service_account["metadata"]["name"] == "kubefit-operator"
    assert service_account["metadata"]["annotations"] == {"example.com/owner": "ml-platform"}


def test_catalog_configmap_is_mounted_and_named_by_kubefit_catalog(
    custom_objects: list[dict[str, Any]],
) -> None:
    config_map = _one(custom_objects, "ConfigMap")
    (filename,) = config_map["data"]
    entries = parse_catalog(config_map["data"][filename], "rendered ConfigMap")
    assert [entry.name for entry in entries] == ["nvidia-rtx-6000-ada"]
    assert entries[0].memory_bytes == 49140 * 2**20
    pod_spec = _one(custom_objects, "Deployment")["spec"]["template"]["spec"]
    container = _container(custom_objects)
    volume = next(
        v for v in pod_spec["volumes"] if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]
    )
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount["readOnly"] is True
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["KUBEFIT_CATALOG"] == f"{mount['mountPath']}/{filename}"


def test_catalog_change_restarts_the_operator(
    default_objects: list[dict[str, Any]], custom_objects: list[dict[str, Any]]
) -> None:
    def checksum(objects: list[dict[str, Any]]) -> str:
        return _one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/catalog"]

    assert checksum(default_objects) != checksum(custom_objects)


def test_metrics_service_selects_the_operator_pod(default_objects: list[dict[str, Any]]) -> None:
    service = _service(default_objects, "-metrics")
    pod_labels = _one(default_objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["port"] == 9090 and port["targetPort"] == "metrics"


def test_service_monitor_scrapes_the_metrics_service(custom_objects: list[dict[str, Any]]) -> None:
    monitor = _one(custom_objects, "ServiceMonitor")
    service = _service(custom_objects, "-metrics")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["metrics"]


# ------------------------------------------------------------------ checkpoint handshake


@pytest.mark.parametrize("objects_fixture", ["default_objects", "custom_objects"])
def test_checkpoint_service_is_the_url_workers_are_told(
    objects_fixture: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(objects_fixture)
    service = _service(objects, "-checkpoints")
    pod_labels = _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = dict(service["spec"]["selector"])
    # The leader alone: each replica writes this label on its own pod (leader.py mark_role).
    assert selector.pop("kubefit.dev/role") == "leader"
    assert selector.items() <= pod_labels.items()
    env = {
        entry["name"]: entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        for entry in _container(objects)["env"]
    }
    assert (env["POD_NAME"], env["POD_NAMESPACE"]) == ("metadata.name", "metadata.namespace")
    (port,) = service["spec"]["ports"]
    container_ports = {entry["name"]: entry["containerPort"] for entry in _container(objects)["ports"]}
    assert port["targetPort"] == "checkpoints" and container_ports["checkpoints"] == port["port"]
    url = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port['port']}"
    assert f"--checkpoint-url={url}" in _container(objects)["args"]


def test_checkpoint_url_can_be_set() -> None:
    objects = _render("--set", "checkpoint.url=https://kubefit.example.com:8443/handshake")
    assert "--checkpoint-url=https://kubefit.example.com:8443/handshake" in _container(objects)["args"]


def _key_volume(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod_spec = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [volume for volume in pod_spec["volumes"] if volume["name"] == "checkpoint-key"]
    (mount,) = [mount for mount in _container(objects)["volumeMounts"] if mount["name"] == volume["name"]]
    return volume, mount


def test_checkpoint_key_is_a_generated_secret_mounted_as_the_key_file(
    default_objects: list[dict[str, Any]],
) -> None:
    (secret,) = [found for found in _by_kind(default_objects, "Secret") if "key" in found["data"]]
    key = base64.b64decode(secret["data"]["key"])
    assert re.fullmatch(rb"[A-Za-z0-9]{64}", key)
    volume, mount = _key_volume(default_objects)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "key", "path": "key"}]
    assert mount["readOnly"] is True
    assert f"--checkpoint-key-file={mount['mountPath']}/key" in _container(default_objects)["args"]


def test_the_webhook_trusts_the_generated_ca_which_signed_the_mounted_certificate(
    default_objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    (configuration,) = _by_kind(default_objects, "ValidatingWebhookConfiguration")
    (webhook,) = configuration["webhooks"]
    (secret,) = [
        found for found in _by_kind(default_objects, "Secret") if found["type"] == "kubernetes.io/tls"
    ]
    service = next(
        found
        for found in _by_kind(default_objects, "Service")
        if found["metadata"]["name"].endswith("-webhook")
    )
    assert webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert webhook["clientConfig"]["service"] == {
        "name": service["metadata"]["name"], "namespace": NAMESPACE, "path": "/validate", "port": 443,
    }  # fmt: skip
    assert (webhook["failurePolicy"], webhook["sideEffects"], webhook["timeoutSeconds"]) == (
        "Ignore",
        "None",
        5,
    )
    assert webhook["rules"][0]["resources"] == ["trainingjobs", "trainingjobs/scale"]
    assert webhook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    # Every replica answers once ready (its webhook port is bound before /healthz answers), standbys too.
    assert "publishNotReadyAddresses" not in service["spec"]
    assert service["spec"]["ports"] == [
        {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    # openssl: the serving certificate chains to the CA and names the Service's DNS name.
    for name in ("ca.crt", "tls.crt"):
        (tmp_path / name).write_bytes(base64.b64decode(secret["data"][name]))
    dns_name = f"{service['metadata']['name']}.{NAMESPACE}.svc"
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), "-verify_hostname", dns_name,
         str(tmp_path / "tls.crt")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    pod_spec = _one(default_objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [volume for volume in pod_spec["volumes"] if volume["name"] == "webhook-tls"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]


def test_the_webhook_can_be_turned_off_and_its_port_must_differ() -> None:
    objects = _render("--set", "webhook.enabled=false")
    assert not _by_kind(objects, "ValidatingWebhookConfiguration")
    assert not any(arg.startswith("--webhook") for arg in _container(objects)["args"])
    clash = _helm("template", RELEASE, str(CHART), "--set", "webhook.port=8081")
    assert clash.returncode != 0 and "webhook.port must differ" in clash.stderr, clash.stderr
    fail = _render("--set", "webhook.failurePolicy=Fail")
    assert _one(fail, "ValidatingWebhookConfiguration")["webhooks"][0]["failurePolicy"] == "Fail"
    wrong = _helm("template", RELEASE, str(CHART), "--set", "webhook.failurePolicy=Maybe")
    assert wrong.returncode != 0 and "failurePolicy" in wrong.stderr, wrong.stderr


def _webhook_configuration(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (webhook,) = _one(objects, "ValidatingWebhookConfiguration")["webhooks"]
    return webhook


def _webhook_volume(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod_spec = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [volume for volume in pod_spec["volumes"] if volume["name"] == "webhook-tls"]
    return volume


def _tls_secrets(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [found for found in _by_kind(objects, "Secret") if found["type"] == "kubernetes.io/tls"]


def test_the_webhook_can_use_an_existing_secret_and_ca_bundle() -> None:
    # GitOps: with the checkpoint key's Secret also given, every render is the same, nothing generated.
    values = (
        "--set", "webhook.existingSecret=ml-webhook-tls", "--set", f"webhook.caBundle={CA_BUNDLE}",
        "--set", "checkpoint.existingSecret=ml-checkpoint-key",
    )  # fmt: skip
    first, second = _render(*values), _render(*values)
    assert first == second
    assert not _by_kind(first, "Secret") and not _by_kind(first, "Certificate")
    assert _webhook_volume(first)["secret"]["secretName"] == "ml-webhook-tls"
    assert _webhook_volume(first)["secret"]["items"] == [
        {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"},
    ]  # fmt: skip
    assert _webhook_configuration(first)["clientConfig"]["caBundle"] == CA_BUNDLE


def test_the_webhook_certificate_can_come_from_cert_manager() -> None:
    objects = _render(
        "--set", "webhook.certManager.enabled=true",
        "--set", "webhook.certManager.issuerRef.name=kubefit-ca",
        "--set", "webhook.certManager.issuerRef.kind=ClusterIssuer",
    )  # fmt: skip
    assert not _tls_secrets(objects)  # cert-manager writes it
    certificate = _one(objects, "Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["metadata"]["namespace"] == NAMESPACE
    assert certificate["spec"]["issuerRef"] == {
        "name": "kubefit-ca", "kind": "ClusterIssuer", "group": "cert-manager.io",
    }  # fmt: skip
    assert _webhook_volume(objects)["secret"]["secretName"] == certificate["spec"]["secretName"]
    # Not the chart's generated Secret: switching modes, helm would delete the one cert-manager writes, or
    # refuse to take over the one it left behind.
    assert certificate["spec"]["secretName"] != _tls_secrets(_render())[0]["metadata"]["name"]
    service = _service(objects, "-webhook")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]  # what the API server calls
    configuration = _one(objects, "ValidatingWebhookConfiguration")
    annotation = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation == f"{NAMESPACE}/{certificate['metadata']['name']}"
    assert "caBundle" not in _webhook_configuration(objects)["clientConfig"]  # the cainjector's to fill in
    # The same on every render (GitOps); the default render has neither the annotation nor a Certificate.
    assert _ci("certmanager-values.yaml") == _ci("certmanager-values.yaml")
    assert "annotations" not in _one(_render(), "ValidatingWebhookConfiguration")["metadata"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "webhook.existingSecret=ml-webhook-tls"], "webhook.existingSecret needs webhook.caBundle"),
        (["--set", f"webhook.caBundle={CA_BUNDLE}"], "webhook.caBundle applies only with webhook.existingSecret"),
        (
            ["--set", "webhook.existingSecret=ml-webhook-tls", "--set", "webhook.caBundle=a3ViZWZpdA=="],
            "webhook.caBundle must be base64 of PEM certificates",
        ),
        (
            ["--set", "webhook.existingSecret=ml-webhook-tls", "--set", f"webhook.caBundle={CA_BUNDLE}",
             "--set", "webhook.certManager.enabled=true", "--set", "webhook.certManager.issuerRef.name=ca"],
            "exclude each other",
        ),
        (["--set", "webhook.certManager.enabled=true"], "needs webhook.certManager.issuerRef.name"),
    ],
    ids=["secret-without-ca", "ca-without-secret", "ca-not-pem", "secret-and-cert-manager", "no-issuer"],
)  # fmt: skip
def test_webhook_certificate_values_that_do_not_fit_are_refused(values: list[str], message: str) -> None:
    result = _helm("template", RELEASE, str(CHART), *values)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_the_webhook_asks_only_for_the_watched_namespaces_from_kubernetes_1_21() -> None:
    watched = ("--set", "watchNamespaces={team-a,team-b}")
    selector = {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
        ]
    }
    for version in ("1.21.0", "1.30.2"):
        objects = _render(*watched, "--kube-version", version)
        assert _webhook_configuration(objects)["namespaceSelector"] == selector, version
    # helm template's own default version (a recent one) gets it too
    assert _webhook_configuration(_render(*watched))["namespaceSelector"] == selector
    # Kubernetes 1.20 has no kubernetes.io/metadata.name label: every namespace, as before (docs/install.md)
    assert "namespaceSelector" not in _webhook_configuration(_render(*watched, "--kube-version", "1.20.15"))
    # all namespaces watched: no selector at all
    assert "namespaceSelector" not in _webhook_configuration(_render("--kube-version", "1.30.2"))


def test_each_fresh_render_generates_a_different_key() -> None:
    # Without a cluster to look the Secret up in, every render is a first install.
    first, second = (base64.b64decode(_checkpoint_key_secret(_render())["data"]["key"]) for _ in range(2))
    assert first != second


def _checkpoint_key_secret(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (secret,) = [found for found in _by_kind(objects, "Secret") if found["metadata"]["name"].endswith("-key")]
    return secret


def test_an_existing_secret_replaces_the_generated_one(custom_objects: list[dict[str, Any]]) -> None:
    assert not _by_kind(custom_objects, "Secret")  # and the webhook is off there
    volume, _ = _key_volume(custom_objects)
    assert volume["secret"]["secretName"] == "ml-checkpoint-key"


def _generated_secret_name(value: str, release: str, naming: list[str]) -> str:
    """The Secret the chart writes itself when `value` is empty."""
    result = _helm("template", release, str(CHART), "--namespace", NAMESPACE, *naming)
    assert result.returncode == 0, result.stderr
    objects = [document for document in yaml.safe_load_all(result.stdout) if document]
    if value == "checkpoint.existingSecret":
        return str(_checkpoint_key_secret(objects)["metadata"]["name"])
    (secret,) = _tls_secrets(objects)
    return str(secret["metadata"]["name"])


@pytest.mark.parametrize("value", ["checkpoint.existingSecret", "webhook.existingSecret"])
@pytest.mark.parametrize(
    ("release", "naming"),
    [
        (RELEASE, []),
        ("kubefit", []),  # fullname "kubefit": the chart's Secret is kubefit-checkpoint-key
        (RELEASE, ["--set", "fullnameOverride=ml-ops"]),
        (RELEASE, ["--set", f"fullnameOverride={'a' * 63}"]),  # the generated name is cut
    ],
    ids=["release-kf", "release-kubefit", "fullname-override", "fullname-63-characters"],
)
def test_an_existing_secret_must_not_be_the_one_the_chart_writes(
    value: str, release: str, naming: list[str]
) -> None:
    # Naming it would stop the chart rendering that Secret: `helm upgrade` deletes it while the pod mounts it.
    generated = _generated_secret_name(value, release, naming)
    ca_bundle = ["--set", f"webhook.caBundle={CA_BUNDLE}"] if value.startswith("webhook.") else []
    result = _helm("template", release, str(CHART), "--namespace", NAMESPACE, *naming,
                   "--set", f"{value}={generated}", *ca_bundle)  # fmt: skip
    assert result.returncode != 0, result.stdout
    refusal = f"{value} must not be {generated}, the Secret this chart writes itself"
    assert refusal in result.stderr, result.stderr


# ------------------------------------------------------------------ RBAC


LEADER_ELECTION_ROLE = f"{RELEASE}-kubefit-leader-election"
EVENTS_ROLE = f"{RELEASE}-kubefit-events"


def _workload_roles(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The (Cluster)Roles or bindings for TrainingJobs, without the leader-election Lease's own or the one
    for kopf's events about nodes."""
    return [
        obj
        for obj in _by_kind(objects, kind)
        if obj["metadata"]["name"] not in (LEADER_ELECTION_ROLE, EVENTS_ROLE)
    ]


def _all_rbac_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for obj in objects if obj["kind"] in ("ClusterRole", "Role") for rule in obj["rules"]]


@pytest.mark.parametrize("objects_fixture", ["default_objects", "custom_objects"])
def test_rbac_has_no_wildcards(objects_fixture: str, request: pytest.FixtureRequest) -> None:
    rules = _all_rbac_rules(request.getfixturevalue(objects_fixture))
    assert rules
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert all("*" not in item for item in rule[key]), rule
        assert "nonResourceURLs" not in rule, rule
        # names narrow a grant; only the leader-election Lease is named (get, update)
        assert "resourceNames" not in rule or rule["resources"] == ["leases"], rule


def test_all_namespaces_rbac_is_exactly_what_the_operator_needs(
    default_objects: list[dict[str, Any]],
) -> None:
    assert [role["metadata"]["name"] for role in _by_kind(default_objects, "Role")] == [LEADER_ELECTION_ROLE]
    cluster_role = _one(default_objects, "ClusterRole")
    assert _permissions(cluster_role) == NAMESPACED_PERMISSIONS | CLUSTER_PERMISSIONS
    assert not any(resource == "secrets" for _, resource, _ in _permissions(cluster_role))
    binding = _one(default_objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role["metadata"]["name"],
    }
    service_account = _one(default_objects, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": service_account["name"], "namespace": NAMESPACE}
    ]


def test_watched_namespaces_get_a_role_each(custom_objects: list[dict[str, Any]]) -> None:
    # Namespaced permissions only where TrainingJobs are watched; the ClusterRole keeps cluster-scoped reads.
    assert (
        _permissions(_one(custom_objects, "ClusterRole"))
        == CLUSTER_PERMISSIONS | NAMESPACE_PATTERN_PERMISSIONS
    )
    roles = {role["metadata"]["namespace"]: role for role in _workload_roles(custom_objects, "Role")}
    assert set(roles) == {"team-a", "team-b"}
    for role in roles.values():
        assert _permissions(role) == NAMESPACED_PERMISSIONS
    bindings = {
        binding["metadata"]["namespace"]: binding
        for binding in _workload_roles(custom_objects, "RoleBinding")
    }
    assert set(bindings) == {"team-a", "team-b"}
    for namespace, binding in bindings.items():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kubefit-operator", "namespace": NAMESPACE}
        ]


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    objects = _render("--set", "rbac.create=false")
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & {obj["kind"] for obj in objects}


# ------------------------------------------------------------------ CRD and image


def test_chart_installs_the_generated_crd() -> None:
    objects = _render("--include-crds")
    assert _one(objects, "CustomResourceDefinition") == crd()


def test_notes_render() -> None:
    result = _helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE)
    assert result.returncode == 0, result.stderr
    assert "all namespaces" in result.stdout and "kubectl get trainingjobs" in result.stdout


def test_notes_name_the_metrics_service_the_chart_creates_even_for_a_long_name() -> None:
    override = "a" * 60
    result = _helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                   "--set", f"fullnameOverride={override}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    objects = _render("--set", f"fullnameOverride={override}")
    (service,) = [obj for obj in _by_kind(objects, "Service") if obj["metadata"]["name"].endswith("-metrics")]
    notes = result.stdout.split("NOTES:")[1]
    assert f"http://{service['metadata']['name']}.{NAMESPACE}.svc:" in notes


def test_dockerfile_runs_kubefit_run_as_the_charts_non_root_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
    assert entrypoint and json.loads(entrypoint.group(1)) == ["kubefit", "run"]
    user = re.search(r"^USER (\d+)(?::(\d+))?$", dockerfile, re.M)
    assert user, "USER must be numeric so that the kubelet can verify runAsNonRoot"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(user.group(1)) == values["podSecurityContext"]["runAsUser"] != 0
    # the build context holds only what `pip install .` reads: everything is ignored, then these re-included
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in patterns if line and not line.startswith("#")]
    assert patterns[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!operator/"} <= set(patterns)


# ------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    "key",
    [
        "no.such.key",
        "image.tagg",
        "metrics.serviceMonitor.labels.release",  # the old name of additionalLabels
        "metrics.prometheusRule.rules.KubefitAcceleratorsIdle.treshold",
        "metrics.dashboard.label.team",
        "liveness.portt",
        "leaderElection.enable",
        "resources.request.cpu",
        "podSecurityContext.runAsUserr",
        "securityContext.readOnlyRootFileSystem",
        "serviceAccount.annotation.owner",
        "webhook.certManager.issuer",
        "webhook.certManager.issuerRef.nam",
        "podDisruptionBudget.enable",
    ],
)
def test_unknown_keys_are_refused_by_template_and_lint(key: str) -> None:
    template = _helm("template", RELEASE, str(CHART), "--set", f"{key}=1")
    assert template.returncode != 0 and "not allowed" in template.stderr, template.stderr
    lint = _helm("lint", str(CHART), "--set", f"{key}=1")
    assert lint.returncode != 0, lint.stdout


# ------------------------------------------------------------------ ci/*-values.yaml combinations

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# What each combination renders where the cluster serves the monitoring API.
# The webhook (on by default): its Service, its certificate's Secret, its configuration.
_WEBHOOK_KINDS = {"Service": 3, "ValidatingWebhookConfiguration": 1}
_BASE_KINDS = {
    "ClusterRole": 1,
    "ClusterRoleBinding": 1,
    "Deployment": 1,
    "ServiceAccount": 1,
    **_WEBHOOK_KINDS,
}
CI_EXPECTED_KINDS = {
    "default-values.yaml": {**_BASE_KINDS, "Role": 1, "RoleBinding": 1, "Secret": 2},
    "monitoring-values.yaml": {
        **_BASE_KINDS,
        "Role": 1,
        "RoleBinding": 1,
        "Secret": 2,
        "ServiceMonitor": 1,
        "PrometheusRule": 1,
        "ConfigMap": 1,  # the dashboard
    },
    # a Role per watched namespace, the Lease's and the events'; the catalog ConfigMap; the key is an
    # existing Secret
    "namespaces-values.yaml": {**_BASE_KINDS, "Role": 4, "RoleBinding": 4, "ConfigMap": 1, "Secret": 1},
    "ha-values.yaml": {**_BASE_KINDS, "Role": 1, "RoleBinding": 1, "Secret": 2, "PodDisruptionBudget": 1},
    "single-values.yaml": {"Deployment": 1, "Secret": 2, **_WEBHOOK_KINDS},
    # the webhook's Secret is cert-manager's to write; the checkpoint key is an existing Secret
    "certmanager-values.yaml": {**_BASE_KINDS, "Role": 1, "RoleBinding": 1, "Certificate": 1},
}


def _kind_counts(objects: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in objects:
        counts[obj["kind"]] = counts.get(obj["kind"], 0) + 1
    return counts


def test_a_63_character_fullname_keeps_every_service_name_a_dns_label() -> None:
    # Service names are DNS-1035 labels of at most 63 characters; the API server refuses longer ones.
    long_name = "a" * 63
    objects = _render(
        "--set", f"fullnameOverride={long_name}",
        "--set", "metrics.serviceMonitor.enabled=true",
        "--api-versions", MONITORING_API,
    )  # fmt: skip
    services = _by_kind(objects, "Service")
    assert len(services) >= 2  # metrics and checkpoints
    label = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    for service in services:
        assert label.match(service["metadata"]["name"]) and len(service["metadata"]["name"]) <= 63, service


def test_every_ci_values_file_has_expectations() -> None:
    assert len(CI_VALUES) >= 5
    assert {path.name for path in CI_VALUES} == set(CI_EXPECTED_KINDS)


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.name)
def test_ci_values_render_and_lint(values_file: Path) -> None:
    objects = _render("--values", str(values_file), "--api-versions", MONITORING_API)
    assert _kind_counts(objects) == CI_EXPECTED_KINDS[values_file.name]
    name = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    for obj in objects:
        assert name.match(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 63, obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    lint = _helm("lint", str(CHART), "--strict", "--values", str(values_file))
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _ci(name: str, *args: str) -> list[dict[str, Any]]:
    return _render("--values", str(CHART / "ci" / name), *args)


def test_replicas_and_a_named_lease() -> None:
    objects = _ci("ha-values.yaml")
    assert _one(objects, "Deployment")["spec"]["replicas"] == 3
    args = _container(objects)["args"]
    assert "--leader-election" in args and "--leader-election-lease-name=kubefit-leader" in args


def test_without_leader_election_one_operator_is_recreated() -> None:
    objects = _ci("single-values.yaml")
    deployment = _one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not [arg for arg in _container(objects)["args"] if arg.startswith("--leader-election")]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "kubefit-operator"


# ------------------------------------------------------------------ monitoring objects


def test_service_monitor_keeps_the_jobs_namespace_label(custom_objects: list[dict[str, Any]]) -> None:
    (endpoint,) = _one(custom_objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    objects = _render(
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.serviceMonitor.honorLabels=false",
        "--api-versions", MONITORING_API,
    )  # fmt: skip
    (endpoint,) = _one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is False


def test_monitoring_objects_need_the_monitoring_api() -> None:
    objects = _ci("monitoring-values.yaml")  # helm template serves no monitoring.coreos.com/v1 unless told
    assert not {"ServiceMonitor", "PrometheusRule"} & {obj["kind"] for obj in objects}
    assert _by_kind(objects, "ConfigMap")  # the dashboard needs no Prometheus Operator
    values = str(CHART / "ci" / "monitoring-values.yaml")
    result = _helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE, "-f", values)
    assert result.returncode == 0, result.stderr
    assert "WARNING: ServiceMonitor and PrometheusRule not installed" in result.stdout


def test_monitoring_objects_are_off_by_default(default_objects: list[dict[str, Any]]) -> None:
    objects = _render("--api-versions", MONITORING_API)
    assert _kind_counts(objects) == _kind_counts(default_objects)
    assert not _by_kind(objects, "ConfigMap")


def test_dashboard_configmap_holds_the_dashboard_for_grafanas_sidecar() -> None:
    (config_map,) = _ci("monitoring-values.yaml", "--api-versions", MONITORING_API, "-s", DASHBOARD_TEMPLATE)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["grafana_folder"] == "ml-platform"  # additionalLabels
    (filename,) = config_map["data"]
    text = config_map["data"][filename]
    idle = ") < 0.05) or vector(0)"  # the CI values' KubefitAcceleratorsIdle threshold
    assert text.count(idle) == 1
    rendered = json.loads(text.replace(idle, ") < 0.01) or vector(0)"))
    shipped = json.loads((CHART / "files" / "dashboards" / "kubefit.json").read_text())
    # The release's own uid, title and idle threshold; the rest as shipped
    assert filename == rendered["uid"] + ".json" and rendered["title"].startswith("kubefit (")
    assert {**rendered, "uid": shipped["uid"], "title": shipped["title"]} == shipped


def test_the_dashboards_idle_gpus_are_those_under_the_idle_alerts_threshold() -> None:
    """With the threshold at 5%, the alert fired for GPUs 3% busy while the panel counted those under 1%."""
    exprs = []
    for threshold in ([], ["--set", "metrics.prometheusRule.rules.KubefitAcceleratorsIdle.threshold=0.05"]):
        (config_map,) = _render(
            "--set", "metrics.dashboard.enabled=true", *threshold, "-s", DASHBOARD_TEMPLATE
        )
        (text,) = config_map["data"].values()
        panels = json.loads(text)["panels"]
        (idle,) = [panel for panel in panels if panel.get("title") == "Idle GPUs held by TrainingJobs"]
        exprs.append(idle["targets"][0]["expr"])
    assert ") < 0.01) or vector(0)" in exprs[0]
    assert ") < 0.05) or vector(0)" in exprs[1] and "0.01" not in exprs[1]


def test_two_releases_dashboards_differ_in_uid_title_and_file_name() -> None:
    """Grafana keeps one dashboard per uid, and per title in a folder; its sidecar one file per key."""
    dashboards = []
    for namespace in ("team-a", "team-b"):
        (config_map,) = _render(
            "--namespace", namespace, "--set", "metrics.dashboard.enabled=true", "-s", DASHBOARD_TEMPLATE
        )
        ((filename, text),) = config_map["data"].items()
        dashboard = json.loads(text)
        dashboards.append((filename, dashboard["uid"], dashboard["title"]))
    assert all(len(uid) <= 40 for _, uid, _ in dashboards)  # Grafana's limit
    assert len({item for dashboard in dashboards for item in dashboard}) == 6, dashboards


def test_prometheus_rule_and_service_monitor_carry_additional_labels() -> None:
    objects = _ci("monitoring-values.yaml", "--api-versions", MONITORING_API)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert _one(objects, kind)["metadata"]["labels"]["release"] == "prometheus", kind
    (endpoint,) = _one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "5s")


def test_a_scrape_timeout_is_left_to_prometheus_unless_set_and_never_longer_than_the_interval() -> None:
    monitor = ("--set", "metrics.serviceMonitor.enabled=true", "--api-versions", MONITORING_API)
    (endpoint,) = _one(_render(*monitor, "--set", "metrics.serviceMonitor.interval=5s"), "ServiceMonitor")[
        "spec"
    ]["endpoints"]
    assert endpoint["interval"] == "5s" and "scrapeTimeout" not in endpoint  # Prometheus caps its own
    for interval, timeout in (("5s", "10s"), ("1m30s", "90500ms"), ("1m", "1h")):
        result = _helm("template", RELEASE, str(CHART), *monitor,
                       "--set", f"metrics.serviceMonitor.interval={interval}",
                       "--set", f"metrics.serviceMonitor.scrapeTimeout={timeout}")  # fmt: skip
        assert result.returncode != 0, (interval, timeout)
        assert "metrics.serviceMonitor.scrapeTimeout" in result.stderr and "interval" in result.stderr
    (endpoint,) = _one(
        _render(
            *monitor,
            "--set",
            "metrics.serviceMonitor.interval=1m30s",
            "--set",
            "metrics.serviceMonitor.scrapeTimeout=90s",
        ),  # fmt: skip
        "ServiceMonitor",
    )["spec"]["endpoints"]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("1m30s", "90s")


def test_scrape_durations_are_rendered_as_strings() -> None:
    # "0" is a valid duration; unquoted it would be the number 0, which the ServiceMonitor CRD refuses.
    objects = _render(
        "--set", "metrics.serviceMonitor.enabled=true", "--api-versions", MONITORING_API,
        "--set-string", "metrics.serviceMonitor.interval=0", "--set-string", "metrics.serviceMonitor.scrapeTimeout=0",
    )  # fmt: skip
    (endpoint,) = _one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("0", "0")


def test_without_leader_election_the_checkpoints_service_selects_the_one_replica() -> None:
    objects = _render("--set", "leaderElection.enabled=false")
    assert "kubefit.dev/role" not in _service(objects, "-checkpoints")["spec"]["selector"]
    assert "POD_NAME" not in {entry["name"] for entry in _container(objects)["env"]}


# ------------------------------------------------------------------ disruption budget


def test_several_replicas_keep_one_through_a_node_drain() -> None:
    objects = _render("--set", "replicaCount=2", "--set", "leaderElection.enabled=true")
    budget = _one(objects, "PodDisruptionBudget")
    deployment = _one(objects, "Deployment")
    assert budget["metadata"]["name"] == deployment["metadata"]["name"]
    assert budget["metadata"]["namespace"] == NAMESPACE
    assert budget["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
    }


@pytest.mark.parametrize(
    "values",
    [[], ["--set", "replicaCount=2", "--set", "podDisruptionBudget.enabled=false"]],
    ids=["one-replica", "disabled"],
)
def test_no_disruption_budget_for_one_replica_or_when_disabled(values: list[str]) -> None:
    assert not _by_kind(_render(*values), "PodDisruptionBudget")


@pytest.mark.parametrize(
    ("capabilities", "api_version"),
    [
        ([], "policy/v1"),  # helm template: a recent Kubernetes, no kinds listed
        (["--kube-version", "1.21.0"], "policy/v1"),
        (["--kube-version", "1.20.15"], "policy/v1beta1"),
        # what a cluster serves decides: 1.20 lists only v1beta1, 1.21 to 1.24 both, 1.25 on only v1
        (["--api-versions", "policy/v1beta1/PodDisruptionBudget"], "policy/v1beta1"),
        (["--api-versions", "policy/v1beta1/PodDisruptionBudget",
          "--api-versions", "policy/v1/PodDisruptionBudget"], "policy/v1"),
        (["--kube-version", "1.20.15", "--api-versions", "policy/v1/PodDisruptionBudget"], "policy/v1"),
    ],
    ids=["default", "kube-1.21", "kube-1.20", "serves-v1beta1", "serves-both", "serves-v1"],
)  # fmt: skip
def test_the_disruption_budget_uses_an_api_version_the_cluster_serves(
    capabilities: list[str], api_version: str
) -> None:
    objects = _render("--set", "replicaCount=2", *capabilities)
    assert _one(objects, "PodDisruptionBudget")["apiVersion"] == api_version


def test_every_replica_is_ready_once_it_answers_healthz() -> None:
    # Only the leader was ready (a TCP check of the checkpoint port): with 3 replicas the Deployment never
    # completed its rollout, and `helm --wait` and kstatus-based tools waited forever.
    probe = _container(_render("--set", "replicaCount=3"))["readinessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "healthz"}


def test_notes_send_the_first_job_to_a_watched_namespace_and_read_the_leader_s_logs() -> None:
    """With watchNamespaces the quickstart went to the current namespace, which no operator handles; with two
    replicas `logs deployment/...` may show a standby; the CRD goes before an upgrade, not after."""
    result = _helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                   "--set", "replicaCount=2", "--set", "watchNamespaces={team-a,team-b}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:")[1]
    assert "kubectl apply -n team-a -f examples/quickstart.yaml" in notes
    assert f"logs -l app.kubernetes.io/instance={RELEASE},kubefit.dev/role=leader" in notes
    assert "before each\nupgrade apply the new chart's" in notes and "after an upgrade" not in notes
    plain = _helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE)
    assert "  kubectl apply -f examples/quickstart.yaml" in plain.stdout.split("NOTES:")[1]


def test_a_chart_catalog_entry_without_labels_fails_helm() -> None:
    """In the cluster nodes are identified by their labels: an entry with neither match nor nodeLabels
    matches no node, and a job planned on it would wait for ever."""
    entry = {key: value for key, value in EXTRA_CATALOG_ENTRY.items() if key != "match"}
    result = _helm("template", RELEASE, str(CHART), "--set-json", f"catalog=[{json.dumps(entry)}]")
    assert result.returncode != 0 and "match" in result.stderr, result.stderr
    for empty in ({"match": []}, {"nodeLabels": {}}):
        refused = _helm(
            "template", RELEASE, str(CHART), "--set-json", f"catalog=[{json.dumps({**entry, **empty})}]"
        )
        assert refused.returncode != 0, empty
    labelled = {**entry, "nodeLabels": {"nvidia.com/gpu.product": "NVIDIA-RTX-6000-Ada-Generation"}}
    assert (
        _helm("template", RELEASE, str(CHART), "--set-json", f"catalog=[{json.dumps(labelled)}]").returncode
        == 0
    )
