"""checked_spec names every field at fault in one InvalidSpec, for the webhook, the reconcile and `kubefit
size` alike: a spec with errors in several checks needs one apply to see them all, not one per check."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from bad_specs import BASE_SPEC

from kubefit.api.validation import InvalidSpec
from kubefit.builders.naming import JobRef
from kubefit.decisions.inventory import EMPTY_INVENTORY
from kubefit.decisions.job import JobObservation, ReconcileSettings, checked_spec, decide
from kubefit.sizing.catalog import load_catalog

CATALOG = load_catalog()
ARCHITECTURE = {"layers": 16, "hiddenSize": 2048, "attentionHeads": 16}
LONG_NAME = "x" * 60  # its workers' host names pass 63 characters


def _spec(**sections: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    for section, fields in sections.items():
        spec[section] = {**spec.get(section, {}), **fields}
    return spec


# One error from each check after the schema: the spec's own rules (template limits, tensor-parallel
# heads), the worker limit, the job name and the planner (an unknown accelerator).
EVERY_CHECK = _spec(
    template={
        "spec": {
            "nodeName": "gpu-node-1",  # refused by a rule, not the schema: it stopped every later check
            "containers": [{"name": "trainer", "image": "t", "resources": {"limits": {"cpu": "4"}}}],
        }
    },
    resources={"accelerator": "nvidia-h900", "cpu": "8"},
    training={"tensorParallel": 3},
    model={"parameters": "1B", "architecture": ARCHITECTURE},
    workers={"replicas": 8, "minReplicas": 1, "maxReplicas": 8},
)
EVERY_PATH = [
    "spec.template.spec.nodeName",
    "spec.resources.cpu",
    "spec.training.tensorParallel",
    "spec.workers.replicas",
    "spec.workers.maxReplicas",
    "metadata.name",
    "spec.resources.accelerator",
]


def _paths(name: str | None, raw: Any, max_workers: int = 4) -> list[str]:
    with pytest.raises(InvalidSpec) as raised:
        checked_spec(name, raw, CATALOG, max_workers)
    return [error.path for error in raised.value.errors]


def test_errors_of_every_check_come_in_one_invalid_spec_each_field_once() -> None:
    assert sorted(_paths(LONG_NAME, EVERY_CHECK)) == sorted(EVERY_PATH)


def test_the_reconcile_names_every_field_at_fault_in_its_ready_condition() -> None:
    observation = JobObservation(
        job=JobRef(LONG_NAME, "ml", "uid-1"),
        generation=1,
        spec=EVERY_CHECK,
        status={},
        pods=[],
        inventory=EMPTY_INVENTORY,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    status = decide(observation, CATALOG, ReconcileSettings(max_workers_per_job=4)).status
    ready = next(condition for condition in status.conditions if condition.type == "Ready")
    assert ready.reason == "InvalidSpec"
    for path in EVERY_PATH:
        assert ready.message.count(f"{path}:") == 1, (path, ready.message)


def test_a_field_two_checks_fault_is_named_once_by_the_earlier_check() -> None:
    # tensorParallel 3 splits 16 heads (the spec's rules) and straddles 4-device workers (the planner).
    raw = _spec(training={"tensorParallel": 3}, model={"parameters": "1B", "architecture": ARCHITECTURE})
    with pytest.raises(InvalidSpec) as raised:
        checked_spec("llama", raw, CATALOG, 1024)
    assert [error.path for error in raised.value.errors] == ["spec.training.tensorParallel"]
    assert "must divide model.architecture attentionHeads 16" in raised.value.errors[0].message


def test_a_schema_error_stops_the_later_checks_but_not_the_name_pattern() -> None:
    raw = _spec(resources={"memory": "16 Gi"}, training={"tensorParallel": 3})
    assert _paths("Llama.3", raw) == ["spec.resources.memory", "metadata.name"]
    assert _paths(None, raw) == ["spec.resources.memory"]  # `kubefit size` of a manifest without a name


def test_a_valid_spec_is_sized_as_before() -> None:
    spec, job_sizing = checked_spec("llama", copy.deepcopy(BASE_SPEC), CATALOG, 1024)
    assert spec.resources.accelerator == "nvidia-h100-80gb" == job_sizing.sizing.accelerator


def test_an_unknown_accelerator_hides_no_error_of_the_model() -> None:
    # The planner refuses the name before it estimates anything; the estimator's own refusals (adapters
    # larger than the model, more pipeline stages than layers) come in the same answer.
    raw = _spec(
        resources={"accelerator": "nvidia-h900"},
        model={
            "parameters": "1B",
            "architecture": ARCHITECTURE,
            "finetuning": {"method": "lora", "trainableParameters": "2B"},
        },
        training={"pipelineParallel": 32},
    )
    assert _paths("llama", raw) == [
        "spec.resources.accelerator",
        "spec.model.finetuning.trainableParameters",
    ]
    raw["model"]["finetuning"]["trainableParameters"] = "10M"
    assert _paths("llama", raw) == ["spec.resources.accelerator", "spec.training.pipelineParallel"]


def test_a_count_no_device_offers_hides_no_error_of_the_model() -> None:
    raw = _spec(
        resources={"accelerator": "auto", "acceleratorsPerWorker": 64},
        model={
            "parameters": "1B",
            "architecture": ARCHITECTURE,
            "finetuning": {"method": "qlora", "trainableParameters": "2B"},
        },
    )
    assert _paths("llama", raw) == [
        "spec.resources.acceleratorsPerWorker",
        "spec.model.finetuning.trainableParameters",
    ]


def _messages(name: str | None, raw: Any) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as raised:
        checked_spec(name, raw, CATALOG, 4)
    return {error.path: error.message for error in raised.value.errors}


@pytest.mark.parametrize(
    ("section", "field", "written"),
    [
        ("model", "parameters", "9" * 100_000),  # too large
        ("model", "parameters", "x" * 100_000),  # not a count
        ("model", "memory", "1." + "0" * 100_000 + "1"),  # not whole: the value, then its exact number
        ("resources", "cpu", "-" * 100_000),  # not a quantity
        ("resources", "acceleratorsPerWorker", "a" * 100_000),  # neither 'auto' nor an integer
    ],
)
def test_a_long_value_is_echoed_short_with_its_length(section: str, field: str, written: str) -> None:
    # The message goes into the job's status condition: 100,000 characters written are 40 echoed.
    message = _messages(None, _spec(**{section: {field: written}}))[f"spec.{section}.{field}"]
    assert f"{written[:40]!r}"[:-1] + "…' (" + f"{len(written)} characters)" in message
    assert len(message) < 300 and len(message.split("…")) <= 3, message  # the value, and a number


def test_long_template_values_are_echoed_short_too() -> None:
    long_name = "n" * 100000
    template = {"spec": {"nodeName": long_name, "containers": [{"name": "trainer", "image": "x"}]}}
    message = _messages(None, _spec(template=template))["spec.template.spec.nodeName"]
    assert "(100000 characters)" in message and len(message) < 400, message[:200]


def test_a_short_value_is_echoed_whole_as_before() -> None:
    message = _messages(None, _spec(model={"parameters": "x" * 40}))["spec.model.parameters"]
    assert message.startswith(f"{'x' * 40!r} is not a count")


@pytest.mark.parametrize(
    ("written", "exact"),
    [
        ("1.5", "1.5"),
        ("1.50B", None),  # whole: 1,500,000,000
        ("123456789012345.1234567890123456789", "123456789012345.1234567890123456789"),  # 34 digits, past 28
        (
            "999999999999999999999999999999999999999999999e-40",
            "99999.9999999999999999999999999999999999… (46",
        ),
    ],
)
def test_a_fraction_is_shown_exactly_not_rounded_to_a_whole_number(written: str, exact: str | None) -> None:
    # Rounded to Decimal's 28 digits, 99999.99… (45 nines) printed as "100000 parameters, not a whole number".
    raw = _spec(model={"parameters": written})
    if exact is None:
        checked_spec(None, raw, CATALOG, 4)
        return
    message = _messages(None, raw)["spec.model.parameters"]
    assert f" is {exact}" in message and "not a whole number" in message, message
    assert "100000 parameters" not in message


@pytest.mark.parametrize("name", ["job\n", "job\r\n", "\njob", "job\nx"])
def test_a_name_with_a_line_break_is_not_a_dns_label(name: str) -> None:
    # `$` matches before a trailing newline: "job\n" passed, and the API server refused the job.
    assert _paths(name, _spec()) == ["metadata.name"]
    checked_spec("job", _spec(), CATALOG, 4)
