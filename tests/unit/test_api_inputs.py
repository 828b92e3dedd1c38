"""Template and int-or-string inputs: each refusal names the field and says what to write instead.

A fraction where the CRD takes an integer or a string, a map key
that reads like a pydantic union tag, a negative request, a grace period that is not a number.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from kubefit.api.crd import crd_yaml
from kubefit.api.validation import InvalidSpec, field_path, parse_spec
from kubefit.builders.naming import ATTEMPT_ANNOTATION, NNODES_ANNOTATION, WORLD_SIZE_ANNOTATION, JobRef
from kubefit.builders.rendezvous import RENDEZVOUS_CONF
from kubefit.decisions.inventory import EMPTY_INVENTORY
from kubefit.decisions.job import JobObservation, checked_spec, decide
from kubefit.sizing.catalog import Accelerator, load_catalog

CATALOG = load_catalog()
TRAINER = {"name": "trainer", "image": "ghcr.io/acme/train:1"}


def _spec(container: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{**TRAINER, **(container or {})}]}},
        "model": {"parameters": "1B"},
    }
    spec.update(overrides)
    return spec


def _errors(raw: Any) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(raw)
    return {error.path: error.message for error in raised.value.errors}


# ------------------------------------------------------------------ accelerators in the template


def _worker(raw: dict[str, Any], catalog: Any = CATALOG) -> dict[str, Any]:
    observation = JobObservation(
        job=JobRef(name="job", namespace="team-a", uid="uid"),
        generation=1,
        spec=raw,
        status={},
        pods=[],
        inventory=EMPTY_INVENTORY,
        now=datetime(2025, 1, 1, tzinfo=UTC),
        grant=4096,
    )
    decision = decide(observation, catalog)
    assert decision.create, decision.status
    return decision.worker_pod(decision.create[0])


def test_another_vendors_accelerator_in_the_template_is_taken_out_of_every_container() -> None:
    # Sized for an AMD device, the pod asked for nvidia.com/gpu: 8 and amd.com/gpu: 1 at once and fit no
    # node. Refusing the spec instead turned running jobs that had nvidia.com/gpu there invalid.
    raw = _spec(
        {"resources": {"limits": {"nvidia.com/gpu": 8, "cpu": "4"}}}, resources={"accelerator": "amd-mi300x"}
    )
    raw["template"]["spec"]["containers"].append(
        {"name": "side", "image": "i:1", "resources": {"requests": {"nvidia.com/gpu": "1", "cpu": "1"}}}
    )
    trainer, side = _worker(raw)["spec"]["containers"]
    assert (
        trainer["resources"]["limits"]["amd.com/gpu"]
        and "nvidia.com/gpu" not in trainer["resources"]["limits"]
    )
    assert trainer["resources"]["limits"]["cpu"] == "4"
    assert side["resources"]["requests"] == {"cpu": "1"}


def test_the_chosen_accelerator_in_the_template_is_replaced_by_the_sized_count() -> None:
    raw = _spec(
        {"resources": {"limits": {"nvidia.com/gpu": 8}}},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
    )
    checked_spec("job", raw, CATALOG, 1024)  # a valid spec, as it always was
    limits = _worker(raw)["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": "1"}


def test_a_catalog_entry_added_by_the_cluster_operator_counts_too() -> None:
    gaudi = Accelerator("intel-gaudi2", "intel", 96 * 2**30, "habana.ai/gaudi", (8,))
    raw = _spec(
        {"resources": {"limits": {"habana.ai/gaudi": 8}}}, resources={"accelerator": "nvidia-h100-80gb"}
    )
    assert (
        "habana.ai/gaudi" in _worker(raw)["spec"]["containers"][0]["resources"]["limits"]
    )  # not a catalog accelerator
    extended = CATALOG.extended([gaudi])
    assert "habana.ai/gaudi" not in _worker(raw, extended)["spec"]["containers"][0]["resources"]["limits"]


def test_other_extended_resources_pass_through() -> None:
    # EFA and RDMA devices are what multi-node training asks for beside its accelerators.
    limits = {"vpc.amazonaws.com/efa": 4, "rdma/hca": "1", "hugepages-2Mi": "1Gi", "cpu": "8"}
    raw = _spec({"resources": {"limits": limits}}, resources={"accelerator": "nvidia-h100-80gb"})
    built = _worker(raw)["spec"]["containers"][0]["resources"]["limits"]
    assert {name: built[name] for name in limits} == limits


# ------------------------------------------------------------------ int-or-string fields


@pytest.mark.parametrize(
    ("section", "field", "value", "example"),
    [
        ("resources", "cpu", 0.5, "'500m'"),
        ("resources", "memory", 1.5, "'1.5Gi'"),
        ("model", "parameters", 8.5, "'8.03B'"),
        ("model", "memory", 0.25, "'1.5Gi'"),
    ],
)
def test_a_fraction_in_an_int_or_string_field_is_refused_asking_to_quote_it(
    section: str, field: str, value: float, example: str
) -> None:
    # The CRD's x-kubernetes-int-or-string refuses an unquoted 0.5 at kubectl apply; the operator says why.
    raw = _spec()
    raw[section] = {**raw.get(section, {}), field: value}
    message = _errors(raw)[f"spec.{section}.{field}"]
    assert "quote it" in message and example in message and "valid integer" not in message


def test_a_fraction_in_a_template_quantity_is_refused_naming_the_resource() -> None:
    errors = _errors(_spec({"resources": {"requests": {"cpu": 0.5}}}))
    assert list(errors) == ["spec.template.spec.containers[0].resources.requests.cpu"]
    assert "quote it" in errors["spec.template.spec.containers[0].resources.requests.cpu"]


def test_a_whole_float_is_the_integer_the_api_server_reads() -> None:
    spec = parse_spec(_spec({"resources": {"limits": {"cpu": 4.0}}}, resources={"cpu": 2.0}))
    assert spec.resources.cpu == 2 and isinstance(spec.resources.cpu, int)
    assert spec.template["spec"]["containers"][0]["resources"]["limits"]["cpu"] == 4


@pytest.mark.parametrize(("value", "kind"), [([8], "a list"), ({"b": 8}, "a mapping")])
def test_a_wrong_type_says_integer_or_string(value: Any, kind: str) -> None:
    message = _errors(_spec(model={"parameters": value}))["spec.model.parameters"]
    assert message == f"must be an integer or a string such as '8.03B', not {kind}"


def test_a_negative_template_quantity_names_the_resource() -> None:
    errors = _errors(_spec({"resources": {"requests": {"cpu": -1}}}))
    assert "not negative" in errors["spec.template.spec.containers[0].resources.requests.cpu"]


# ------------------------------------------------------------------ field paths


@pytest.mark.parametrize("key", ["str", "int", "float", "bool", "function-after", "literal['auto']"])
def test_a_map_key_that_reads_like_a_union_tag_stays_in_the_path(key: str) -> None:
    labels = _spec(template={"metadata": {"labels": {key: "a b"}}, "spec": {"containers": [TRAINER]}})
    assert list(_errors(labels)) == [f"spec.template.metadata.labels.{key}"]
    selector = _spec(template={"spec": {"containers": [TRAINER], "nodeSelector": {key: 1}}})
    assert list(_errors(selector)) == [f"spec.template.spec.nodeSelector.{key}"]
    limits = _spec({"resources": {"limits": {key: "x y"}}})
    assert list(_errors(limits)) == [f"spec.template.spec.containers[0].resources.limits.{key}"]


def test_a_union_branch_tag_is_still_dropped() -> None:
    raw = {"model": {"parameters": [8]}}
    assert field_path(("model", "parameters", "int"), raw) == "spec.model.parameters"
    assert field_path(("model", "parameters", "function-after[check()]"), raw) == "spec.model.parameters"
    assert field_path(("template", "spec", "containers", 0, "name"), {"template": {}}) == (
        "spec.template.spec.containers[0].name"
    )


# ------------------------------------------------------------------ what kubectl explain promises


@pytest.mark.parametrize("value", ["sixty", -1, 60.5, True])
def test_an_invalid_termination_grace_period_is_refused_naming_it(value: Any) -> None:
    raw = _spec(template={"spec": {"containers": [TRAINER], "terminationGracePeriodSeconds": value}})
    assert list(_errors(raw)) == ["spec.template.spec.terminationGracePeriodSeconds"]


def test_a_valid_termination_grace_period_parses() -> None:
    raw = _spec(template={"spec": {"containers": [TRAINER], "terminationGracePeriodSeconds": 600}})
    assert parse_spec(copy.deepcopy(raw)).template["spec"]["terminationGracePeriodSeconds"] == 600


def _template_description(*path: str) -> str:
    schema = yaml.safe_load(crd_yaml())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    node = schema["properties"]["spec"]["properties"]["template"]
    for name in path:
        node = node["items"] if name == "[]" else node["properties"][name]
    return str(node["description"])


def test_explain_says_which_env_and_annotations_the_operator_overrides() -> None:
    env = _template_description("spec", "containers", "[]", "env")
    assert RENDEZVOUS_CONF in env and "is_host" in env
    annotations = _template_description("metadata", "annotations")
    assert all(name in annotations for name in (WORLD_SIZE_ANNOTATION, ATTEMPT_ANNOTATION, NNODES_ANNOTATION))
