"""The TrainingJob CRD: checked-in copies are current, the schema is structural and fully described.

Structural rules: https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema
The CRD must apply to Kubernetes 1.20 and later (docs/install.md: the supported versions), hence no CEL.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from test_leader_handover import silent_server

from kubefit.api.crd import crd_yaml, fields_missing_from
from kubefit.controller.installed_crd import installed_crd_problem
from kubefit.controller.kube import KubeApi

__all__ = ["silent_server"]  # the fixture, by import

REPO = Path(__file__).resolve().parents[2]
KUBEFIT = Path(sys.executable).with_name("kubefit")
CHECKED_IN_COPIES = [
    REPO / "crds" / "trainingjob.yaml",
    REPO / "charts" / "kubefit" / "crds" / "trainingjob.yaml",
]
# `make crd` runs `kubefit crd > crds/trainingjob.yaml` and copies the file into the chart.
REGENERATE = "make crd"

# Keys that may not appear inside anyOf/allOf/oneOf/not of a structural schema.
_TYPED_KEYS = {"type", "description", "default", "additionalProperties", "nullable", "properties", "items"}
_JUNCTORS = ("anyOf", "allOf", "oneOf", "not")


def _kubefit_crd_output() -> str:
    assert KUBEFIT.exists(), f"the kubefit console script is not installed beside {sys.executable}"
    result = subprocess.run([str(KUBEFIT), "crd"], capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(_kubefit_crd_output())


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    return only


@pytest.fixture(scope="module")
def schema(version: dict[str, Any]) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node that describes a value (properties and array items), with its dotted path."""
    yield path or "<root>", node
    for name, child in (node.get("properties") or {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")


def _fields(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every named field (a key under `properties`), as `kubectl explain` lists them."""
    for name, child in (node.get("properties") or {}).items():
        yield f"{path}.{name}", child
        yield from _fields(child, f"{path}.{name}")
        if isinstance(child.get("items"), dict):
            yield from _fields(child["items"], f"{path}.{name}")


def _resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any]:
    node = schema
    for name in json_path.lstrip(".").split("."):
        assert name in node.get("properties", {}), f"{json_path}: no field {name!r} in the schema"
        node = node["properties"][name]
    return node


@pytest.mark.parametrize("path", CHECKED_IN_COPIES, ids=lambda path: str(path.relative_to(REPO)))
def test_checked_in_copy_is_byte_identical_to_kubefit_crd(path: Path) -> None:
    assert path.exists(), f"{path} is missing; regenerate with: {REGENERATE}"
    assert path.read_bytes() == _kubefit_crd_output().encode(), (
        f"{path} is stale; regenerate with: {REGENERATE}"
    )


def test_console_script_prints_what_crd_yaml_returns() -> None:
    assert _kubefit_crd_output() == crd_yaml()


def test_identity(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "trainingjobs.kubefit.dev"
    spec = crd["spec"]
    assert spec["group"] == "kubefit.dev" and spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "TrainingJob",
        "trainingjobs",
        "trainingjob",
    )
    assert "tj" in names["shortNames"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]


def _shape_problems(path: str, node: dict[str, Any]) -> list[str]:
    """What breaks a structural schema at one node, apart from its junctors."""
    problems = []
    if "$ref" in node:
        problems.append(f"{path}: $ref is not allowed")
    if "x-kubernetes-validations" in node:
        problems.append(f"{path}: x-kubernetes-validations (CEL) is refused by Kubernetes 1.20")
    escape = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in node and not escape:
        problems.append(f"{path}: no type")
    if "properties" in node and node.get("type") != "object":
        problems.append(f"{path}: has properties but type {node.get('type')!r}")
    if "items" in node and node.get("type") != "array":
        problems.append(f"{path}: has items but type {node.get('type')!r}")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{path}: an array needs items")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
    return problems


def _junctor_problems(path: str, node: dict[str, Any]) -> list[str]:
    """allOf/anyOf/oneOf/not branches may only constrain, never declare types or new properties."""
    problems = []
    for junctor in _JUNCTORS:
        branches = node.get(junctor)
        if branches is None:
            continue
        for branch in branches if isinstance(branches, list) else [branches]:
            typed = _TYPED_KEYS & set(branch)
            if typed:
                problems.append(f"{path}.{junctor}: a branch specifies {sorted(typed)}")
            problems += [
                f"{path}.{junctor}: requires {name!r}, which is not a declared property"
                for name in branch.get("required", [])
                if name not in node.get("properties", {})
            ]
    return problems


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    problems: list[str] = []
    for path, node in _nodes(schema):
        problems += _shape_problems(path, node) + _junctor_problems(path, node)
    assert not problems, "\n".join(problems)


def test_defaults_satisfy_their_own_schema(schema: dict[str, Any]) -> None:
    # The API server rejects a CRD whose default violates the schema it sits in.
    python_types = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict}
    for path, node in _nodes(schema):
        if "default" not in node:
            continue
        default = node["default"]
        if node.get("type") == "object":  # a section's {}: valid only where it requires nothing
            assert default == {} and not node.get("required"), f"{path}: default {default!r}"
            continue
        expected = python_types.get(node.get("type", ""))
        assert expected is not None and isinstance(default, expected), f"{path}: default {default!r}"
        if "enum" in node:
            assert default in node["enum"], f"{path}: default {default!r} not in {node['enum']}"
        if "minimum" in node:
            assert default >= node["minimum"], f"{path}: default {default!r} below minimum"
        if "maximum" in node:
            above = default >= node["maximum"] if node.get("exclusiveMaximum") else default > node["maximum"]
            assert not above, f"{path}: default {default!r} above maximum"


def test_every_field_has_a_description(schema: dict[str, Any]) -> None:
    assert schema.get("description"), "the root schema needs a description (kubectl explain trainingjob)"
    # metadata is ObjectMeta: the API server refuses anything but name/generateName restrictions on it,
    # and kubectl explain shows ObjectMeta's own documentation.
    undescribed = [
        path
        for path, node in _fields(schema)
        if path != ".metadata" and not str(node.get("description", "")).strip()
    ]
    assert not undescribed, f"fields without a description: {undescribed}"


def test_spec_requires_template_and_model(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]
    assert {"template", "model"} <= set(spec["required"])
    assert spec["properties"]["template"]["x-kubernetes-preserve-unknown-fields"] is True
    # model needs parameters or memory; both are int-or-string so that "8.03B" and 8030000000 both apply
    model = spec["properties"]["model"]
    assert model["anyOf"] == [{"required": ["parameters"]}, {"required": ["memory"]}]
    assert model["properties"]["parameters"]["x-kubernetes-int-or-string"] is True
    assert model["properties"]["memory"]["x-kubernetes-int-or-string"] is True


def test_status_and_scale_subresources(version: dict[str, Any], schema: dict[str, Any]) -> None:
    subresources = version["subresources"]
    assert subresources["status"] == {}
    assert subresources["scale"] == {
        "specReplicasPath": ".spec.workers.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    # the scale subresource reads and writes these paths, so they must exist with the right types
    assert _resolve(schema, ".spec.workers.replicas")["type"] == "integer"
    assert _resolve(schema, ".status.replicas")["type"] == "integer"
    assert _resolve(schema, ".status.selector")["type"] == "string"


def test_a_job_without_spec_workers_gets_the_scale_subresources_replicas(schema: dict[str, Any]) -> None:
    # The scale subresource reads and writes .spec.workers.replicas: the API server must create it for a
    # job written without spec.workers, or `kubectl scale` and an HPA fail ("the spec replicas field does
    # not exist"). It defaults top-down, so the section's {} gets replicas' own default.
    spec = _resolve(schema, ".spec")
    stored = _with_defaults({"template": {}, "model": {"parameters": "1B"}}, spec)
    assert stored["workers"] == {"replicas": 1}


def test_every_section_that_requires_nothing_is_created_when_omitted(schema: dict[str, Any]) -> None:
    # Every section built from its own defaults (default_factory in models.py) is stored as the operator
    # reads it when omitted; model and template are required, architecture has required fields.
    sections = {
        path
        for path, node in _nodes(_resolve(schema, ".spec"), ".spec")
        if node.get("type") == "object" and node.get("default") == {}
    }
    assert sections == {
        ".spec.training",
        ".spec.resources",
        ".spec.workers",
        ".spec.elastic",
        ".spec.scheduling",
        ".spec.runPolicy",
        ".spec.model.finetuning",
    }


def test_template_quantities_and_grace_period_are_not_negative(schema: dict[str, Any]) -> None:
    # The operator refuses a negative request or grace period; the API server must refuse it at apply too.
    resources = _resolve(schema, ".spec.template.spec.containers").get("items", {})["properties"]["resources"]
    for kind in ("requests", "limits"):
        value = resources["properties"][kind]["additionalProperties"]
        assert value["x-kubernetes-int-or-string"] is True and value["minimum"] == 0, kind
    grace = _resolve(schema, ".spec.template.spec.terminationGracePeriodSeconds")
    assert (grace["type"], grace["minimum"]) == ("integer", 0)


def test_printer_columns(version: dict[str, Any], schema: dict[str, Any]) -> None:
    columns = {column["name"]: column for column in version["additionalPrinterColumns"]}
    assert {"Phase", "Workers", "Accelerator", "Per-Device", "Fits", "Age"} <= set(columns)
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    for name, column in columns.items():
        if column["jsonPath"].startswith(".metadata."):
            continue
        field = _resolve(schema, column["jsonPath"])
        assert field["type"] == column["type"], (
            f"column {name}: {column['type']} shows a {field['type']} field"
        )


def test_worker_counts_have_the_documented_maximums(schema: dict[str, Any]) -> None:
    # 4,096 workers: twice Llama 3 405B's 2,048 nodes; 64 per worker: twice the most devices one node
    # advertises (the justification is at the constants in operator/kubefit/api/models.py).
    for path in (".spec.workers.replicas", ".spec.workers.minReplicas", ".spec.workers.maxReplicas"):
        assert (_resolve(schema, path)["minimum"], _resolve(schema, path)["maximum"]) == (1, 4096), path
    per_worker = _resolve(schema, ".spec.resources.acceleratorsPerWorker")
    assert per_worker["x-kubernetes-int-or-string"] is True
    assert (per_worker["minimum"], per_worker["maximum"], per_worker["pattern"]) == (1, 64, "^(auto)$")


def test_every_number_of_the_spec_is_bounded(schema: dict[str, Any]) -> None:
    # Whatever reaches the estimator, the planner or a pod has a maximum the API server enforces.
    spec = schema["properties"]["spec"]
    unbounded = []
    for path, node in _fields(spec, ".spec"):
        if path.startswith(".spec.template"):
            continue
        numeric = node.get("type") in ("integer", "number") or node.get("x-kubernetes-int-or-string")
        if numeric and not {"minimum", "maximum"} <= set(node):
            unbounded.append(path)
        if node.get("x-kubernetes-int-or-string") and "pattern" not in node:
            unbounded.append(f"{path} (no pattern for its string form)")
    assert not unbounded, f"unbounded numeric fields: {unbounded}"


def test_quantities_carry_the_kubernetes_grammar(schema: dict[str, Any]) -> None:
    for path in (".spec.resources.memory", ".spec.resources.cpu", ".spec.model.memory"):
        pattern = _resolve(schema, path)["pattern"]
        assert re.fullmatch(pattern, "16Gi") and re.fullmatch(pattern, "500m"), path
        assert not re.fullmatch(pattern, "16 Gi") and not re.fullmatch(pattern, "-1Gi"), path


def test_nothing_inside_the_template_is_pruned(schema: dict[str, Any]) -> None:
    # The API server drops fields a structural schema does not declare, unless the object preserves
    # unknown fields: every object declared inside the pod template must, or image, command, volumes...
    # would vanish from the stored job.
    template = _resolve(schema, ".spec.template")
    closed = [
        path
        for path, node in _nodes(template, ".spec.template")
        if node.get("type") == "object"
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in node
    ]
    assert not closed, f"objects that would be pruned: {closed}"


def test_template_shape_is_in_the_schema(schema: dict[str, Any]) -> None:
    containers = _resolve(schema, ".spec.template.spec.containers")
    assert containers["type"] == "array" and containers["minItems"] == 1
    assert containers["items"]["type"] == "object" and containers["items"]["required"] == ["name"]
    assert containers["items"]["properties"]["name"]["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    labels = _resolve(schema, ".spec.template.metadata.labels")
    assert labels["additionalProperties"]["type"] == "string"


def _constants(namespace: type) -> set[str]:
    return {value for name, value in vars(namespace).items() if name.isupper()}


def test_phase_constants_are_exactly_the_phases_the_schema_allows() -> None:
    from typing import get_args

    from kubefit.api.conditions import JobPhase, Phase

    status = yaml.safe_load(crd_yaml())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    assert (
        _constants(JobPhase) == set(get_args(Phase)) == set(status["status"]["properties"]["phase"]["enum"])
    )


def test_condition_description_names_every_condition_type() -> None:
    from kubefit.api.conditions import ConditionType

    status = yaml.safe_load(crd_yaml())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    description = status["status"]["properties"]["conditions"]["items"]["properties"]["type"]["description"]
    named = set(re.findall(r"[A-Z][a-z]+", description.split(":", 1)[1]))
    assert named == _constants(ConditionType), description


def _with_defaults(value: Any, node: dict[str, Any]) -> Any:
    """`value` as the API server stores it: each absent property with a default set, in every object given."""
    if isinstance(value, dict):
        properties = node.get("properties") or {}
        filled = {key: _with_defaults(item, properties.get(key, {})) for key, item in value.items()}
        for key, child in properties.items():
            if key not in filled and "default" in child:
                filled[key] = _with_defaults(child["default"], child)
        return filled
    if isinstance(value, list) and "items" in node:
        return [_with_defaults(item, node["items"]) for item in value]
    return value


def _specs_to_size() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "TrainingJob":
                yield path.name, document["spec"]
    from sizing_inputs import LLAMA3_8B, TEMPLATE

    pipelined = {  # Llama-3-8B over a 4-stage pipeline, no gradientAccumulation given
        "template": TEMPLATE,
        "model": LLAMA3_8B,
        "training": {"sequenceLength": 8192, "pipelineParallel": 4},
        "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 4},
    }
    yield "pipelined", pipelined


@pytest.mark.parametrize(("name", "spec"), list(_specs_to_size()), ids=lambda item: str(item)[:24])
def test_a_job_is_sized_the_same_before_and_after_the_api_server_sets_the_crds_defaults(
    schema: dict[str, Any], name: str, spec: dict[str, Any]
) -> None:
    """kubefit size reads the manifest as written; the operator reads it as stored. A default in the CRD
    that the sizing reads as "not given" would make the two disagree (gradientAccumulation under a
    pipeline: 1 micro-batch in flight instead of 4)."""
    from kubefit.api.validation import parse_spec
    from kubefit.sizing.planner import plan

    stored = _with_defaults(spec, schema["properties"]["spec"])
    assert stored != spec  # defaults were set
    as_written = plan(parse_spec(spec)).model_dump(by_alias=True, mode="json")
    assert plan(parse_spec(stored)).model_dump(by_alias=True, mode="json") == as_written, name


# ------------------------------------------------------------------ kubectl explain and docs/api.md say what runs

API_DOC = REPO / "docs" / "api.md"


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_tolerations_text_says_which_toleration_keeps_the_operator_from_adding_its_own(
    schema: dict[str, Any],
) -> None:
    from kubefit.builders.placement import with_accelerator_toleration

    ours = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    # A toleration with that key but operator Equal, or another effect, does not stop it (the text said it did).
    for given in ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "x"},
                  {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}):  # fmt: skip
        assert ours in with_accelerator_toleration([given], "nvidia.com/gpu")
    for given in (
        {"key": "nvidia.com/gpu", "operator": "Exists"},
        {"operator": "Exists", "effect": "NoSchedule"},
    ):
        assert ours not in with_accelerator_toleration([given], "nvidia.com/gpu")
    text = _words(_resolve(schema, ".spec.template.spec.tolerations")["description"])
    assert "unless one with that key is given" not in text
    assert "operator Exists" in text and "that key or none" in text and "effect NoSchedule or none" in text


def test_the_container_resources_text_says_the_chosen_accelerator_leaves_the_other_containers(
    schema: dict[str, Any],
) -> None:
    containers = _resolve(schema, ".spec.template.spec.containers")
    text = _words(containers["items"]["properties"]["resources"]["description"])
    assert "the catalog's other accelerators are taken out of every container" not in text
    assert "the chosen one included" in text


def test_elastic_max_restarts_is_described_as_elastic_pytorch_only(schema: dict[str, Any]) -> None:
    # builders/rendezvous.py sets PET_MAX_RESTARTS only for an elastic pytorch group.
    text = _words(_resolve(schema, ".spec.elastic.maxRestarts")["description"])
    assert text.startswith("Elastic pytorch jobs only (enabled true, framework pytorch)"), text
    (row,) = [
        line for line in API_DOC.read_text().splitlines() if line.startswith("| `maxRestarts` | `100` |")
    ]
    assert "Elastic `pytorch` jobs only (`enabled: true`, `framework: pytorch`" in row, row


def test_lora_rank_is_described_as_lora_and_qlora_only(schema: dict[str, Any]) -> None:
    text = _words(_resolve(schema, ".spec.model.finetuning.loraRank")["description"])
    assert text.startswith("lora and qlora only"), text
    (row,) = [
        line for line in API_DOC.read_text().splitlines() if line.startswith("| `finetuning.loraRank` |")
    ]
    assert "`lora` and `qlora` only" in row, row


def test_api_doc_says_which_template_metadata_reaches_the_workers() -> None:
    from test_builders import raw_spec, worker_set

    from kubefit.builders.pods import build_worker_pod

    spec = raw_spec()
    spec["template"]["metadata"] |= {"name": "x", "generateName": "y-", "finalizers": ["f"], "namespace": "n"}
    metadata = build_worker_pod(worker_set(spec), 0)["metadata"]
    assert set(metadata) == {"name", "namespace", "labels", "annotations", "ownerReferences"}
    assert metadata["name"] != "x" and metadata["namespace"] != "n"
    text = _words(API_DOC.read_text())
    assert "everything else passes through to the pods as written" not in text
    assert "Of the template's `metadata` only `labels` and `annotations` are kept" in text


# ------------------------------------------------------------------ the cluster's CRD against this operator's


def _installed() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(crd_yaml()))


def _schema(installed: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], installed["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_the_crd_this_operator_generates_lacks_nothing() -> None:
    assert fields_missing_from(_installed()) == []


def test_an_older_crd_names_the_fields_the_api_server_would_prune() -> None:
    older = _installed()
    status = _schema(older)["properties"]["status"]["properties"]
    del status["gang"]["properties"]["attempt"]
    del status["conditions"]["items"]["properties"]["observedGeneration"]
    del older["spec"]["versions"][0]["subresources"]["scale"]
    assert fields_missing_from(older) == [
        "status.conditions[].observedGeneration",
        "status.gang.attempt",
        "subresources.scale",
    ]


def test_a_crd_that_keeps_unknown_fields_or_has_more_lacks_nothing() -> None:
    kept = _installed()
    _schema(kept)["properties"]["status"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert fields_missing_from(kept) == []
    newer = _installed()
    _schema(newer)["properties"]["spec"]["properties"]["fieldOfALaterRelease"] = {"type": "string"}
    assert fields_missing_from(newer) == []


@pytest.mark.parametrize("served", [None, False])
def test_a_crd_not_serving_this_version_lacks_it(served: bool | None) -> None:
    installed = _installed()
    if served is None:
        installed["spec"]["versions"][0]["name"] = "v1alpha0"
    else:
        installed["spec"]["versions"][0]["served"] = served
    assert fields_missing_from(installed) == ["version v1alpha1"]


class _Api:
    def __init__(self, installed: dict[str, Any] | None = None, error: Exception | None = None) -> None:
        self.installed, self.error = installed, error

    def installed_crd(self, name: str) -> dict[str, Any] | None:
        assert name == "trainingjobs.kubefit.dev"
        if self.error is not None:
            raise self.error
        return self.installed


def test_the_operator_refuses_to_start_on_an_older_or_missing_crd_and_says_what_to_apply() -> None:
    older = _installed()
    spec = _schema(older)["properties"]["spec"]["properties"]
    for name in list(spec)[:7]:
        del spec[name]
    problem = installed_crd_problem(cast(KubeApi, _Api(older)))
    assert problem is not None and "is older than this operator: it lacks spec." in problem
    assert (
        "and 2 more" in problem
        and "kubectl apply --server-side --force-conflicts -f crds/trainingjob.yaml" in problem
    )
    missing = installed_crd_problem(cast(KubeApi, _Api(None)))
    assert missing is not None and "is not installed" in missing
    assert installed_crd_problem(cast(KubeApi, _Api(_installed()))) is None


def test_an_api_server_that_cannot_be_asked_is_no_reason_to_refuse(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = _Api(error=ConnectionRefusedError(111, "Connection refused"))
    assert installed_crd_problem(cast(KubeApi, unreachable)) is None
    assert "could not read the CustomResourceDefinition" in caplog.text


def test_the_check_asks_an_api_server_that_does_not_answer_once_and_gives_up_within_its_timeout(
    silent_server: tuple[str, list[Any]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # With the client's defaults (4 tries, 60 s each) a hanging API server kept the operator from serving
    # its health for about 4 minutes: the liveness probe restarted it in a loop.
    from kubernetes import client

    import kubefit.controller.installed_crd as installed_crd

    url, accepted = silent_server
    configuration = client.Configuration()
    configuration.host = url
    monkeypatch.setattr(client.Configuration, "get_default_copy", staticmethod(lambda: configuration))
    monkeypatch.setattr(installed_crd, "CHECK_TIMEOUT", (0.5, 0.5))
    assert installed_crd.installed_crd_problem(installed_crd.check_api()) is None
    assert len(accepted) == 1  # one try
    assert "could not read the CustomResourceDefinition" in caplog.text
