"""parse_spec: bad specs raise InvalidSpec naming the field; good specs parse to the documented values."""

from __future__ import annotations

import copy
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from bad_specs import BAD_SPECS as SHARED_BAD_SPECS
from bad_specs import BASE_SPEC, GENERATED_BASE, KUBECTL, BadSpec, bad_spec_strategy
from hypothesis import given, settings
from hypothesis import strategies as st

from kubefit.api.models import (
    MAX_HIDDEN_SIZE,
    MAX_LAYERS,
    MAX_MICRO_BATCH_SIZE,
    MAX_SEQUENCE_LENGTH,
    MAX_WORKERS,
    TrainingJobSpec,
)
from kubefit.api.quantity import QUANTITY_PATTERN, parse_bytes
from kubefit.api.validation import SPEC_DEPTH_MAX, InvalidSpec, parse_spec
from kubefit.builders.naming import JobRef
from kubefit.decisions.inventory import EMPTY_INVENTORY
from kubefit.decisions.job import JobObservation, decide
from kubefit.decisions.job_sizing import size_job
from kubefit.sizing.catalog import load_catalog
from kubefit.sizing.planner import plan

CATALOG = load_catalog()

TEMPLATE = {"spec": {"containers": [{"name": "trainer", "image": "ghcr.io/acme/llm-train:1.4"}]}}

# A spec that uses every field (the field reference is docs/api.md); whatever a user may write there must
# parse.
CONTRACT_EXAMPLE = yaml.safe_load(
    """
template:
  spec:
    containers:
    - name: trainer
      image: ghcr.io/acme/llm-train:1.4
      command: ["python", "-m", "train"]
framework: pytorch
model:
  parameters: 8.03B
  memory: 120Gi
  architecture:
    layers: 32
    hiddenSize: 4096
    attentionHeads: 32
    kvHeads: 8
    intermediateSize: 14336
    vocabSize: 128256
  precision: bf16-mixed
  optimizer: adamw
  finetuning:
    method: full
    loraRank: 8
    trainableParameters: 4.2M
training:
  microBatchSize: 4
  sequenceLength: 512
  activationCheckpointing: none
  attention: sdpa
  sharding: none
  tensorParallel: 1
  pipelineParallel: 1
  offload: none
resources:
  accelerator: auto
  acceleratorsPerWorker: auto
  memoryHeadroom: 0.10
workers:
  replicas: 4
  minReplicas: 2
  maxReplicas: 8
elastic:
  enabled: true
  checkpointGracePeriodSeconds: 120
scheduling:
  priority: 0
  gangTimeoutSeconds: 300
runPolicy:
  maxRestarts: 3
  suspend: false
  ttlSecondsAfterFinished: null
"""
)


def _spec(**overrides: Any) -> dict[str, Any]:
    """A minimal valid spec with top-level sections replaced by `overrides`."""
    spec: dict[str, Any] = {"template": copy.deepcopy(TEMPLATE), "model": {"parameters": "1B"}}
    spec.update(overrides)
    return spec


def _model(**fields: Any) -> dict[str, Any]:
    return {"parameters": "1B", **fields}


ARCH = {"layers": 2, "hiddenSize": 64, "attentionHeads": 4}

# (id, spec, the error's path, a word that must appear in "path: message")
BAD_SPECS: list[tuple[str, Any, str, str]] = [
    # negative and zero sizes
    ("negative-parameters", _spec(model={"parameters": -5}), "spec.model.parameters", "greater than zero"),
    ("zero-parameters", _spec(model={"parameters": 0}), "spec.model.parameters", "greater than zero"),
    ("negative-parameters-string", _spec(model={"parameters": "-5B"}), "spec.model.parameters", "count"),
    ("negative-memory", _spec(model={"memory": "-1Gi"}), "spec.model.memory", "quantity"),
    ("zero-replicas", _spec(workers={"replicas": 0}), "spec.workers.replicas", "greater than"),
    ("negative-min-replicas", _spec(workers={"minReplicas": -1}), "spec.workers.minReplicas", "greater than"),
    (
        "zero-micro-batch",
        _spec(training={"microBatchSize": 0}),
        "spec.training.microBatchSize",
        "greater than",
    ),
    (
        "negative-sequence",
        _spec(training={"sequenceLength": -1}),
        "spec.training.sequenceLength",
        "greater than",
    ),
    (
        "zero-tensor-parallel",
        _spec(training={"tensorParallel": 0}),
        "spec.training.tensorParallel",
        "greater than",
    ),
    (
        "zero-pipeline-parallel",
        _spec(training={"pipelineParallel": 0}),
        "spec.training.pipelineParallel",
        "greater than",
    ),
    (
        "negative-layers",
        _spec(model=_model(architecture={**ARCH, "layers": -2})),
        "spec.model.architecture.layers",
        "greater than",
    ),
    (
        "zero-accelerators-per-worker",
        _spec(resources={"acceleratorsPerWorker": 0}),
        "spec.resources.acceleratorsPerWorker",
        "from 1 to 64",
    ),
    (
        "headroom-one",
        _spec(resources={"memoryHeadroom": 1.0}),
        "spec.resources.memoryHeadroom",
        "less than 1",
    ),
    (
        "negative-headroom",
        _spec(resources={"memoryHeadroom": -0.1}),
        "spec.resources.memoryHeadroom",
        "greater",
    ),
    (
        "negative-grace-period",
        _spec(elastic={"checkpointGracePeriodSeconds": -1}),
        "spec.elastic.checkpointGracePeriodSeconds",
        "greater than",
    ),
    (
        "zero-gang-timeout",
        _spec(scheduling={"gangTimeoutSeconds": 0}),
        "spec.scheduling.gangTimeoutSeconds",
        "greater than",
    ),
    (
        "negative-max-restarts",
        _spec(runPolicy={"maxRestarts": -1}),
        "spec.runPolicy.maxRestarts",
        "greater than",
    ),
    (
        "negative-ttl",
        _spec(runPolicy={"ttlSecondsAfterFinished": -1}),
        "spec.runPolicy.ttlSecondsAfterFinished",
        "greater than",
    ),
    # unknown enum values
    ("unknown-framework", _spec(framework="tensorflow"), "spec.framework", "pytorch"),
    ("unknown-precision", _spec(model=_model(precision="int4")), "spec.model.precision", "bf16-mixed"),
    ("unknown-optimizer", _spec(model=_model(optimizer="sophia")), "spec.model.optimizer", "adamw"),
    (
        "unknown-finetuning",
        _spec(model=_model(finetuning={"method": "prefix"})),
        "spec.model.finetuning.method",
        "lora",
    ),
    ("unknown-sharding", _spec(training={"sharding": "zero4"}), "spec.training.sharding", "fsdp"),
    ("unknown-attention", _spec(training={"attention": "sparse"}), "spec.training.attention", "flash"),
    (
        "unknown-checkpointing",
        _spec(training={"activationCheckpointing": "some"}),
        "spec.training.activationCheckpointing",
        "selective",
    ),
    ("unknown-offload", _spec(training={"offload": "nvme"}), "spec.training.offload", "optimizer"),
    ("unknown-loss", _spec(training={"loss": "fused"}), "spec.training.loss", "chunked"),
    (
        "accelerators-per-worker-word",
        _spec(resources={"acceleratorsPerWorker": "many"}),
        "spec.resources.acceleratorsPerWorker",
        "integer",
    ),
    # missing model, or a model with neither parameters nor memory
    ("missing-model", {"template": TEMPLATE}, "spec.model", "required"),
    ("empty-model", _spec(model={}), "spec.model", "parameters"),
    ("missing-template", {"model": {"parameters": "1B"}}, "spec.template", "required"),
    # min > max, and more grouped-query heads than query heads
    (
        "fit-policy-warn-on-auto",
        _spec(resources={"fitPolicy": "Warn", "acceleratorsPerWorker": 8}),
        "spec.resources.fitPolicy",
        "both named",
    ),
    (
        "min-above-max",
        _spec(workers={"replicas": 2, "minReplicas": 4, "maxReplicas": 3}),
        "spec.workers.minReplicas",
        "maxReplicas (3)",
    ),
    # The architecture's rules name the field at fault (they named spec.model.architecture, which the
    # webhook's ratcheting, by path, took for every field of it).
    (
        "kv-heads-above-heads",
        _spec(model=_model(architecture={**ARCH, "kvHeads": 8})),
        "spec.model.architecture.kvHeads",
        "attentionHeads (4)",
    ),
    (
        "kv-heads-not-dividing-heads",
        _spec(model=_model(architecture={**ARCH, "kvHeads": 3})),
        "spec.model.architecture.kvHeads",
        "must divide attentionHeads (4)",
    ),
    (
        "heads-above-hidden-size",
        _spec(model=_model(architecture={"layers": 2, "hiddenSize": 8, "attentionHeads": 16})),
        "spec.model.architecture.attentionHeads",
        "hiddenSize (8)",
    ),
    # bad counts and quantities
    ("count-bad-suffix", _spec(model={"parameters": "8.03X"}), "spec.model.parameters", "8.03X"),
    ("count-binary-suffix", _spec(model={"parameters": "8Gi"}), "spec.model.parameters", "count"),
    ("quantity-GB", _spec(model={"memory": "120GB"}), "spec.model.memory", "quantity"),
    ("quantity-word", _spec(model={"memory": "lots"}), "spec.model.memory", "quantity"),
    (
        "trainable-parameters-word",
        _spec(model=_model(finetuning={"method": "lora", "trainableParameters": "few"})),
        "spec.model.finetuning.trainableParameters",
        "count",
    ),
    ("host-memory-word", _spec(resources={"memory": "lots"}), "spec.resources.memory", "quantity"),
    # unknown fields: a typo must be an error, not silently ignored
    ("unknown-top-level", _spec(modle={"parameters": "1B"}), "spec.modle", "unknown field"),
    ("unknown-nested", _spec(training={"microBatch": 4}), "spec.training.microBatch", "unknown field"),
    # empty or missing containers
    (
        "empty-containers",
        _spec(template={"spec": {"containers": []}}),
        "spec.template.spec.containers",
        "at least 1",
    ),
    ("no-pod-spec", _spec(template={}), "spec.template.spec", "required"),
    (
        "containers-not-list",
        _spec(template={"spec": {"containers": {"name": "x"}}}),
        "spec.template.spec.containers",
        "list",
    ),
    # not an object at all
    ("spec-is-a-list", [TEMPLATE], "spec", "object"),
]


@pytest.mark.parametrize(
    ("spec", "path", "word"), [case[1:] for case in BAD_SPECS], ids=[c[0] for c in BAD_SPECS]
)
def test_bad_spec_is_refused_naming_the_field(spec: Any, path: str, word: str) -> None:
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(spec)
    errors = raised.value.errors
    assert [error.path for error in errors] == [path], str(raised.value)
    assert word.lower() in str(errors[0]).lower(), str(errors[0])
    assert path in str(raised.value)  # the message the operator writes into the Ready condition


def test_bad_cpu_quantity_is_refused() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.resources\.cpu"):
        parse_spec(_spec(resources={"cpu": "lots"}))


def test_snake_case_field_is_refused_like_the_api_server_prunes_it() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.workers\.min_replicas: unknown field"):
        parse_spec(_spec(workers={"min_replicas": 2, "replicas": 2}))


def test_every_bad_field_is_reported_once() -> None:
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(_spec(framework="tf", training={"sharding": "zero4", "microBatchSize": 0}))
    paths = [error.path for error in raised.value.errors]
    assert sorted(paths) == ["spec.framework", "spec.training.microBatchSize", "spec.training.sharding"]


def test_contract_example_parses() -> None:
    spec = parse_spec(CONTRACT_EXAMPLE)
    assert spec.model.parameter_count == 8_030_000_000
    assert spec.model.memory_bytes == 120 * 2**30
    assert spec.model.architecture is not None and spec.model.architecture.kv_heads == 8
    assert spec.workers.floor == 2 and spec.workers.ceiling == 8
    assert spec.run_policy.ttl_seconds_after_finished is None
    assert spec.elastic.enabled is True


def test_minimal_spec_gets_the_documented_defaults() -> None:
    spec = parse_spec(_spec())
    assert spec.framework == "pytorch"
    assert (spec.model.precision, spec.model.optimizer, spec.model.finetuning.method) == (
        "bf16-mixed",
        "adamw",
        "full",
    )
    assert (spec.training.micro_batch_size, spec.training.sequence_length) == (1, 2048)
    assert (spec.training.sharding, spec.training.attention, spec.training.offload, spec.training.loss) == (
        "none",
        "sdpa",
        "none",
        "standard",
    )
    assert (spec.resources.accelerator, spec.resources.accelerators_per_worker) == ("auto", "auto")
    assert spec.resources.memory_headroom == pytest.approx(0.10)
    assert (spec.workers.replicas, spec.workers.floor, spec.workers.ceiling) == (1, 1, 1)
    assert spec.elastic.enabled is False and spec.elastic.checkpoint_grace_period_seconds == 120
    assert (spec.scheduling.priority, spec.scheduling.gang_timeout_seconds) == (0, 300)
    assert (spec.run_policy.max_restarts, spec.run_policy.suspend) == (3, False)


@pytest.mark.parametrize(
    ("written", "count"),
    [("8.03B", 8_030_000_000), ("340M", 340_000_000), ("4.2M", 4_200_000), ("1.5T", 1_500_000_000_000),
     ("125K", 125_000), ("7000000000", 7_000_000_000), (1_100_000_000, 1_100_000_000),
     ("2e9", 2_000_000_000)],
)  # fmt: skip
def test_parameter_counts(written: str | int, count: int) -> None:
    assert parse_spec(_spec(model={"parameters": written})).model.parameter_count == count


@pytest.mark.parametrize(
    ("written", "size"),
    [("120Gi", 120 * 2**30), ("80G", 80 * 10**9), ("512Mi", 512 * 2**20), ("1.5Ti", int(1.5 * 2**40)),
     (1073741824, 2**30)],
)  # fmt: skip
def test_memory_quantities(written: str | int, size: int) -> None:
    assert parse_spec(_spec(model={"memory": written})).model.memory_bytes == size


@pytest.mark.parametrize("loss", ["standard", "chunked"])
def test_loss_values(loss: str) -> None:
    assert parse_spec(_spec(training={"loss": loss})).training.loss == loss


def test_negative_zero_headroom_is_accepted_as_zero() -> None:
    # -0.0 passes ge=0 (the CRD's minimum: 0 too); kept negative it printed "-0% headroom" in every message.
    headroom = parse_spec(_spec(resources={"memoryHeadroom": -0.0})).resources.memory_headroom
    assert headroom == 0.0 and math.copysign(1.0, headroom) == 1.0
    assert f"{headroom:.0%}" == "0%"


def test_memory_alone_is_enough() -> None:
    spec = parse_spec(_spec(model={"memory": "120Gi"}))
    assert spec.model.parameter_count is None and spec.model.memory_bytes == 120 * 2**30


def test_fixed_accelerator_count_and_lora() -> None:
    spec = parse_spec(
        _spec(
            model=_model(finetuning={"method": "qlora", "loraRank": 16}),
            resources={"accelerator": "nvidia-l4", "acceleratorsPerWorker": 4},
        )
    )
    assert spec.resources.accelerators_per_worker == 4
    assert spec.model.finetuning.method == "qlora" and spec.model.finetuning.lora_rank == 16


@pytest.mark.parametrize(("field", "off_default"), [("doubleQuantization", False), ("quantizedHead", True)])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_4_bit_detail_without_a_4_bit_base_is_refused_naming_the_field(
    field: str, off_default: bool, method: str
) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(_spec(model=_model(finetuning={"method": method, field: off_default})))
    assert f"spec.model.finetuning.{field}" in str(refused.value) and "method qlora" in str(refused.value)
    parse_spec(
        _spec(model=_model(finetuning={"method": method, field: not off_default}))
    )  # the default: fine
    parsed = parse_spec(_spec(model=_model(finetuning={"method": "qlora", field: off_default})))
    assert parsed.model.finetuning.method == "qlora"


@pytest.mark.parametrize("sharding", ["none", "zero1", "zero2", "zero3"])
def test_an_fsdp_wrap_without_fsdp_is_refused_naming_the_field(sharding: str) -> None:
    wrapped = {"sharding": sharding, "fsdpWrap": "blocks-and-embeddings"}
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(_spec(training=wrapped))
    assert "spec.training.fsdpWrap" in str(refused.value) and "sharding fsdp" in str(refused.value)
    parse_spec(_spec(training={"sharding": sharding, "fsdpWrap": "blocks"}))  # the default: fine
    parsed = parse_spec(_spec(training={**wrapped, "sharding": "fsdp"}))
    assert parsed.training.fsdp_wrap == "blocks-and-embeddings"


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=10**15))
def test_parsed_spec_round_trips_through_the_wire_format(parameters: int) -> None:
    # What the operator writes back (by_alias, camelCase) must parse to the same spec.
    spec = parse_spec(_spec(model={"parameters": parameters}))
    again = parse_spec(spec.model_dump(by_alias=True, exclude_none=True))
    assert again == spec
    assert isinstance(again, TrainingJobSpec) and again.model.parameter_count == parameters


@pytest.mark.parametrize("field", ["parameters", "memory"])
def test_boolean_is_not_a_size(field: str) -> None:
    # YAML reads `yes`/`true` as a boolean, which Python would otherwise treat as the integer 1
    with pytest.raises(InvalidSpec, match=rf"spec\.model\.{field}: must be a number or a string"):
        parse_spec(_spec(model={field: True}))


# ------------------------------------------------------------------ the shared table of bad specs


def _observe(spec: Any) -> JobObservation:
    return JobObservation(
        job=JobRef(name="bad", namespace="team-a", uid="job-uid"),
        generation=1,
        spec=spec,
        status={},
        pods=[],
        inventory=EMPTY_INVENTORY,
        now=datetime(2025, 1, 1, tzinfo=UTC),
        grant=4096,  # admitted in full: what a valid spec then does is create its workers
    )


def _assert_refused_by_decide(spec: Any, field: str) -> None:
    decision = decide(_observe(spec), CATALOG)
    (ready,) = [
        item for item in decision.status.model_dump(by_alias=True)["conditions"] if item["type"] == "Ready"
    ]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec"), ready
    assert field in ready["message"], ready["message"]
    assert decision.create == () and decision.desired_workers == 0
    assert any(event.reason == "InvalidSpec" and field in event.message for event in decision.events)


def test_the_table_holds_every_input_of_the_issue_and_more() -> None:
    ids = {case.id for case in SHARED_BAD_SPECS}
    assert len(ids) == len(SHARED_BAD_SPECS) >= 25
    issue = {"parameters-below-one", "parameters-1e400", "parameters-1e999999999", "containers-of-strings",
             "memory-with-space", "replicas-100000", "max-replicas-100000", "accelerators-per-worker-1000",
             "headroom-nan", "parameters-infinity"}  # fmt: skip
    assert issue <= ids


def test_the_base_of_the_table_is_valid_and_creates_workers() -> None:
    for base in (BASE_SPEC, GENERATED_BASE):
        decision = decide(_observe(base), CATALOG)
        assert len(decision.create) == 2, decision.status.model_dump(by_alias=True)["conditions"]


def _with_depth(depth: int) -> dict[str, Any]:
    """The base spec with a container field that makes the spec `depth` levels deep, counted from spec."""
    spec = copy.deepcopy(BASE_SPEC)
    value: Any = "leaf"
    for _ in range(depth - 5):  # template, spec, containers, [0], x-deep
        value = {"a": value}
    spec["template"]["spec"]["containers"][0]["x-deep"] = value
    return spec


def test_a_spec_at_the_depth_limit_creates_workers_and_one_level_more_is_refused() -> None:
    # About 300 levels broke the pod builder's copies (an internal error): the limit keeps well below that.
    decision = decide(_observe(_with_depth(SPEC_DEPTH_MAX)), CATALOG)
    assert len(decision.create) == 2
    with pytest.raises(InvalidSpec, match=r"containers\[0\]\.x-deep\.a\.\.\.: nested more than 100 levels"):
        parse_spec(_with_depth(SPEC_DEPTH_MAX + 1))
    with pytest.raises(InvalidSpec, match="nested more than"):
        parse_spec(_with_depth(5000))  # deeper than Python's recursion limit: still a named field


# An unknown field ("kubectl" rows) never reaches the reconcile: the API server prunes it, and the reconcile
# drops one a newer CRD adds likewise (tests/unit/test_upgrade_tolerance.py).
@pytest.mark.parametrize(
    "case", [case for case in SHARED_BAD_SPECS if case.refused_by != KUBECTL], ids=lambda case: case.id
)
def test_decide_marks_every_bad_spec_invalid_naming_the_field_and_creates_nothing(case: BadSpec) -> None:
    _assert_refused_by_decide(case.spec(), case.field)


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(bad_spec_strategy())
def test_decide_marks_generated_bad_specs_invalid(case: tuple[dict[str, Any], str]) -> None:
    spec, field = case
    _assert_refused_by_decide(spec, field)


# ------------------------------------------------------------------ quantities and counts


@pytest.mark.parametrize(
    ("field", "written", "expected"),
    [("memory", "1e3", 1000), ("memory", ".5Ki", 512), ("memory", "5.", 5), ("memory", "2000m", 2),
     ("memory", "1E", 10**18), ("memory", "1Ei", 2**60), ("parameters", "1000T", 10**15),
     ("parameters", "1", 1), ("parameters", "1.9K", 1900)],
)  # fmt: skip
def test_kubernetes_quantity_forms_and_bounds_parse(field: str, written: str, expected: int) -> None:
    model = parse_spec(_spec(model={field: written})).model
    assert (model.memory_bytes if field == "memory" else model.parameter_count) == expected


@pytest.mark.parametrize(
    "written", ["16 Gi", " 16Gi", "16Gi ", "16Gi\n", "16gi", "1e", "1e2.5", "+1Gi", "Gi", "", "1.2.3"]
)
def test_strings_outside_the_quantity_grammar_are_refused(written: str) -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.resources\.memory: .*not a positive Kubernetes quantity"):
        parse_spec(_spec(resources={"memory": written}))


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(st.text(alphabet="0123456789.eE+-KMGTPEikmnu ", max_size=8))
def test_the_crd_pattern_and_the_operator_accept_the_same_quantity_strings(text: str) -> None:
    # The API server checks QUANTITY_PATTERN with Go's regexp, which anchors like fullmatch does.
    grammatical = re.fullmatch(QUANTITY_PATTERN, text) is not None
    try:
        parse_bytes(text)
        parsed = True
    except ValueError as error:
        parsed = False
        message = str(error)
    assert grammatical or not parsed
    if grammatical and not parsed:  # refused for its size only, never for its form
        assert "less than one" in message or "too large" in message or "greater than zero" in message


@pytest.mark.parametrize("written", ["1e999999999", "9" * 60, "1e41", "1e400Ki"])
def test_no_quantity_overflows(written: str) -> None:
    with pytest.raises(ValueError, match="too large|not a positive"):
        parse_bytes(written)


# ------------------------------------------------------------------ valid specs never crash the planner

_EDGE = {
    "replicas": (1, MAX_WORKERS), "sequenceLength": (1, MAX_SEQUENCE_LENGTH),
    "microBatchSize": (1, MAX_MICRO_BATCH_SIZE), "hiddenSize": (1, MAX_HIDDEN_SIZE), "layers": (1, MAX_LAYERS),
}  # fmt: skip


def _edge(name: str) -> st.SearchStrategy[int]:
    low, high = _EDGE[name]
    return st.one_of(st.sampled_from([low, high]), st.integers(low, high))


@st.composite
def _valid_extreme_spec(draw: st.DrawFn) -> dict[str, Any]:
    hidden = draw(_edge("hiddenSize"))
    heads = draw(st.integers(1, min(hidden, 64)))
    architecture = {"layers": draw(_edge("layers")), "hiddenSize": hidden, "attentionHeads": heads}
    size = draw(
        st.sampled_from([{"parameters": 1}, {"parameters": "1000T"}, {"memory": "1Ei"}, {"memory": 1}])
    )
    return _spec(
        model={
            **size,
            "architecture": architecture,
            "precision": draw(st.sampled_from(["fp32", "bf16-mixed"])),
        },
        training={
            "sequenceLength": draw(_edge("sequenceLength")),
            "microBatchSize": draw(_edge("microBatchSize")),
            "attention": draw(st.sampled_from(["eager", "sdpa"])),
            "sharding": draw(st.sampled_from(["none", "zero3"])),
        },
        resources={"acceleratorsPerWorker": draw(st.sampled_from(["auto", 1, 64]))},
        workers={"replicas": draw(_edge("replicas"))},
    )


# 60 plans at the bounds, 0.2-0.45 s each on 2 cores (the slower with a sandbox beside it): above the unit
# tier's 30 s, still far below a hang.
@pytest.mark.timeout(90)
@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(_valid_extreme_spec())
def test_specs_at_the_bounds_are_sized_without_an_exception_and_fit_the_status_integers(raw: dict) -> None:
    # Anything but InvalidSpec from a spec that passed validation is a bug (the issue's ZeroDivisionError,
    # OverflowError); status.sizing is written to the API server, whose integers are int64.
    spec = parse_spec(raw)
    try:
        sizing = plan(spec, CATALOG)
    except InvalidSpec as invalid:
        assert all(error.path.startswith("spec.") for error in invalid.errors)
        return
    figures = [sizing.per_device_bytes, *sizing.breakdown.model_dump().values()]
    assert all(0 <= figure <= 2**63 - 1 for figure in figures), figures


def test_nan_and_infinity_from_yaml_are_refused() -> None:
    raw = yaml.safe_load("resources: {memoryHeadroom: .nan}\nworkers: {replicas: .inf}\n")
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(_spec(**raw))
    assert {error.path for error in raised.value.errors} == {
        "spec.resources.memoryHeadroom",
        "spec.workers.replicas",
    }


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_SECTIONS = ["template", "model", "training", "resources", "workers", "elastic", "scheduling", "runPolicy"]


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(st.sampled_from(_SECTIONS), st.sampled_from([None, "spec", "parameters", "memory", "replicas"]), _JSON)
def test_decide_never_raises_whatever_a_section_holds(section: str, key: str | None, value: Any) -> None:
    # Junk anywhere in the spec becomes an InvalidSpec condition (or a valid decision), never an exception.
    spec = copy.deepcopy(BASE_SPEC)
    spec[section] = value if key is None else {**(spec.get(section) or {}), key: value}
    decision = decide(_observe(spec), CATALOG)
    (ready,) = [
        item for item in decision.status.model_dump(by_alias=True)["conditions"] if item["type"] == "Ready"
    ]
    assert ready["reason"] in ("InvalidSpec", "WorkersNotReady"), ready


ARCH_32_HEADS = {"layers": 32, "hiddenSize": 4096, "attentionHeads": 32}


@pytest.mark.parametrize(
    ("kv_heads", "tensor_parallel"),
    [(None, 3), (2, 4), (None, 4096), (8, 16), (4, 8)],
    ids=["3-of-32-heads", "4-of-2-kv-heads", "4096-of-32-heads", "16-of-8-kv-heads", "8-of-4-kv-heads"],
)
def test_tensor_parallel_must_divide_the_attention_and_kv_heads(
    kv_heads: int | None, tensor_parallel: int
) -> None:
    architecture = {**ARCH_32_HEADS, **({} if kv_heads is None else {"kvHeads": kv_heads})}
    raw = _spec(
        model={"parameters": "7B", "architecture": architecture}, training={"tensorParallel": tensor_parallel}
    )
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(raw)
    (error,) = raised.value.errors
    assert error.path == "spec.training.tensorParallel" and "heads" in error.message


@pytest.mark.parametrize(("kv_heads", "tensor_parallel"), [(None, 8), (8, 8), (8, 4), (None, 32), (32, 16)])
def test_tensor_parallel_dividing_the_heads_is_accepted(kv_heads: int | None, tensor_parallel: int) -> None:
    architecture = {**ARCH_32_HEADS, **({} if kv_heads is None else {"kvHeads": kv_heads})}
    raw = _spec(
        model={"parameters": "7B", "architecture": architecture}, training={"tensorParallel": tensor_parallel}
    )
    assert parse_spec(raw).training.tensor_parallel == tensor_parallel


def test_tensor_parallel_is_not_checked_against_heads_without_an_architecture() -> None:
    assert parse_spec(_spec(training={"tensorParallel": 3})).training.tensor_parallel == 3


def test_lora_details_parse_and_their_defaults_are_accepted_on_full_training() -> None:
    parsed = parse_spec(
        _spec(
            model=_model(
                finetuning={"method": "qlora", "loraDropout": 0.1, "loraTargets": ["value", "query"]}
            )
        )
    )
    assert parsed.model.finetuning.lora_dropout == 0.1
    assert parsed.model.finetuning.lora_targets == ["value", "query"]
    # A full-training spec written back with every default filled in, the list in any order, still parses.
    every = ["down", "up", "gate", "output", "value", "key", "query"]
    full = parse_spec(
        _spec(model=_model(finetuning={"method": "full", "loraDropout": 0, "loraTargets": every}))
    )
    assert full.model.finetuning.method == "full"
    assert parse_spec(_spec()).model.finetuning.lora_targets == list(reversed(every))


def test_an_accelerator_name_longer_than_a_label_value_is_refused_by_its_length() -> None:
    # Echoed in every message that names it: a 200 KB name made a 200 KB denial and status condition.
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(_spec(resources={"accelerator": "x" * 200_000}))
    assert [str(error) for error in raised.value.errors] == [
        "spec.resources.accelerator: String should have at most 63 characters"
    ]
    for name in ("auto", "x" * 63, *CATALOG.names()):
        assert parse_spec(_spec(resources={"accelerator": name})).resources.accelerator == name
    crd = yaml.safe_load((Path(__file__).parents[2] / "crds" / "trainingjob.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema["properties"]["resources"]["properties"]["accelerator"]["maxLength"] == 63


@pytest.mark.parametrize("labels", ["match: [{}]", "match: [{a: b}, {}]"])
def test_a_catalog_entry_with_an_empty_label_set_is_refused_when_the_catalog_loads(labels: str) -> None:
    # An empty node-selector term selects no node, where the pass would count every node for it.
    from kubefit.sizing.catalog import CatalogError, parse_catalog

    entry = "accelerators:\n- {name: npu, vendor: acme, memoryMiB: 1024, resourceName: acme.com/npu, %s}\n"
    assert parse_catalog(entry % "match: [{a: b}]")[0].match == ({"a": "b"},)
    assert parse_catalog(entry % "nodeLabels: {}")[0].match == ()  # sized, never placed: no label set
    with pytest.raises(CatalogError, match=r"accelerators\[npu\]\.match: each label set needs at least one"):
        parse_catalog(entry % labels)


def test_a_catalog_entry_whose_name_no_spec_could_pin_is_refused_when_the_catalog_loads() -> None:
    from kubefit.sizing.catalog import CatalogError, parse_catalog

    entry = "accelerators:\n- {name: %s, vendor: acme, memoryMiB: 1024, resourceName: acme.com/npu}\n"
    assert parse_catalog(entry % ("a" * 63))[0].name == "a" * 63
    with pytest.raises(CatalogError, match="longer than 63 characters"):
        parse_catalog(entry % ("a" * 64))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("memoryMiB: true", r"accelerators\[npu\]\.memoryMiB must be a positive integer"),  # was 1 MiB
        (
            "memoryMiB: 1024, perNode: [true]",
            r"accelerators\[npu\]\.perNode must be a list of integers from 1",
        ),
        (
            "memoryMiB: 1024, perNode: [8, 1000]",
            r"from 1 to 64, the most spec.resources.acceleratorsPerWorker",
        ),
    ],
)
def test_a_catalog_entry_with_a_boolean_or_a_count_no_worker_can_request_is_refused(
    fields: str, message: str
) -> None:
    # YAML's true is an int to Python: an H100 became 1 MiB. A perNode of 1000 was planned as 1000 devices
    # a worker, which the spec's acceleratorsPerWorker (at most 64) could never pin.
    from kubefit.sizing.catalog import CatalogError, parse_catalog

    entry = "accelerators:\n- {name: npu, vendor: acme, resourceName: acme.com/npu, %s}\n"
    assert parse_catalog(entry % "memoryMiB: 1024, perNode: [1, 64]")[0].per_node == (1, 64)
    with pytest.raises(CatalogError, match=message):
        parse_catalog(entry % fields)


# ------------------------------------------------------------------ the template parts the pod builder reads


def _with_pod(**fields: Any) -> dict[str, Any]:
    return _spec(template={"spec": {**copy.deepcopy(TEMPLATE["spec"]), **fields}})


def _with_trainer(**fields: Any) -> dict[str, Any]:
    return _with_pod(containers=[{**TEMPLATE["spec"]["containers"][0], **fields}])


_POD = "spec.template.spec"
_PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        (_with_trainer(volumeMounts="data"), f"{_POD}.containers[0].volumeMounts"),
        (_with_trainer(volumeMounts=["data"]), f"{_POD}.containers[0].volumeMounts[0]"),
        (_with_trainer(volumeMounts=[{"name": "data"}]), f"{_POD}.containers[0].volumeMounts[0].mountPath"),
        (_with_trainer(volumeMounts=[{"mountPath": "/d"}]), f"{_POD}.containers[0].volumeMounts[0].name"),
        (_with_trainer(volumeMounts=[{"name": "d", "mountPath": 5}]), f"{_POD}.containers[0].volumeMounts[0].mountPath"),
        (_with_pod(volumes={"a": 1}), f"{_POD}.volumes"),
        (_with_pod(volumes=["x"]), f"{_POD}.volumes[0]"),
        (_with_pod(volumes=[{"emptyDir": {}}]), f"{_POD}.volumes[0].name"),
        (_with_pod(volumes=[{"name": 5}]), f"{_POD}.volumes[0].name"),
        (_with_pod(affinity={"nodeAffinity": {_PREFERRED: 5}}), f"{_POD}.affinity.nodeAffinity.{_PREFERRED}"),
        (_with_pod(affinity={"nodeAffinity": {_PREFERRED: "ab"}}), f"{_POD}.affinity.nodeAffinity.{_PREFERRED}"),
        (_with_pod(affinity={"nodeAffinity": {_PREFERRED: ["x"]}}), f"{_POD}.affinity.nodeAffinity.{_PREFERRED}[0]"),
    ],
    ids=["mounts-a-string", "mounts-of-strings", "mount-without-path", "mount-without-name", "mount-path-a-number",
         "volumes-a-mapping", "volumes-of-strings", "volume-without-name", "volume-name-a-number",
         "preferred-a-number", "preferred-a-string", "preferred-of-strings"],
)  # fmt: skip
def test_a_template_part_the_pod_builder_reads_is_refused_naming_it(spec: dict[str, Any], path: str) -> None:
    # Each of these passed parse_spec, then crashed build_worker_pod (.get on a string) or made a worker pod
    # the API server refuses: the job must be refused instead, naming the field.
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(spec)
    assert [error.path for error in raised.value.errors] == [path], str(raised.value)


def test_volumes_mounts_and_preferred_terms_of_the_right_shape_pass_through_to_the_workers() -> None:
    mount = {"name": "data", "mountPath": "/data", "readOnly": True, "subPath": "x"}
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}
    preferred = {"weight": 5, "preference": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}
    spec = copy.deepcopy(BASE_SPEC)
    spec["template"]["spec"] |= {"volumes": [volume], "affinity": {"nodeAffinity": {_PREFERRED: [preferred]}}}
    spec["template"]["spec"]["containers"][0]["volumeMounts"] = [mount]
    decision = decide(_observe(spec), CATALOG)
    pod_spec = decision.worker_pod(decision.create[0])["spec"]
    assert pod_spec["volumes"][0] == volume and pod_spec["containers"][0]["volumeMounts"][0] == mount
    assert pod_spec["affinity"]["nodeAffinity"][_PREFERRED][0] == preferred


# ------------------------------------------------------------------ requests against the template's limits


@pytest.mark.parametrize(
    ("resource", "requested", "limit"),
    [("cpu", "2", "0"), ("cpu", "2", 0), ("cpu", "1m", "0.5m"), ("memory", "2", "500m"), ("memory", "2", "0"),
     ("memory", "1Gi", "1e-50"), ("cpu", "2001m", "2")],
)  # fmt: skip
def test_a_request_above_a_zero_or_tiny_template_limit_is_refused_naming_it(
    resource: str, requested: str, limit: str | int
) -> None:
    # A limit below one unit was skipped: every worker pod was then refused (request above limit).
    spec = _spec(
        resources={resource: requested},
        template={"spec": {"containers": [{"name": "trainer", "resources": {"limits": {resource: limit}}}]}},
    )
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(spec)
    assert [error.path for error in raised.value.errors] == [f"spec.resources.{resource}"], str(raised.value)
    assert "a request may not exceed its limit" in str(raised.value)


@pytest.mark.parametrize(
    ("resource", "requested", "limit"),
    [("cpu", "2", "2"), ("cpu", "2", "2000m"), ("cpu", "2", "1e50"), ("memory", "1Gi", "1e999999999"),
     ("memory", "1024Mi", "1Gi"), ("memory", "1", "1000m")],
)  # fmt: skip
def test_a_request_at_or_below_the_template_limit_is_accepted(
    resource: str, requested: str, limit: str
) -> None:
    spec = _spec(
        resources={resource: requested},
        template={"spec": {"containers": [{"name": "trainer", "resources": {"limits": {resource: limit}}}]}},
    )
    assert getattr(parse_spec(spec).resources, resource) == requested


def test_a_container_request_above_its_own_limit_is_refused_where_it_reaches_the_pods() -> None:
    def containers(**spec: Any) -> dict[str, Any]:
        return {"spec": spec}

    trainer = {
        "name": "trainer",
        "resources": {
            "requests": {"cpu": "8", "ephemeral-storage": "2Gi"},
            "limits": {"cpu": "4", "ephemeral-storage": "1Gi"},
        },
    }
    init = {
        "name": "fetch",
        "image": "busybox",
        "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "512Mi"}},
    }
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(_spec(template=containers(containers=[trainer], initContainers=[init])))
    assert [error.path for error in refused.value.errors] == [
        "spec.template.spec.containers[0].resources.requests.cpu",
        "spec.template.spec.containers[0].resources.requests.ephemeral-storage",
        "spec.template.spec.initContainers[0].resources.requests.memory",
    ]
    # spec.resources.cpu replaces the trainer's own cpu request (checked against the limit on its own);
    # a request at its limit, or without one, passes.
    fine = {
        "name": "trainer",
        "resources": {"requests": {"cpu": "8", "memory": "1Gi"}, "limits": {"cpu": "4", "memory": "1024Mi"}},
    }
    assert parse_spec(_spec(resources={"cpu": "2"}, template=containers(containers=[fine])))
    unlimited = {"name": "trainer", "resources": {"requests": {"cpu": "8"}}}
    assert parse_spec(_spec(template=containers(containers=[unlimited])))
    # An accelerator's request and limit the pod builder replaces (it ran before this check existed).
    accelerator = {
        "name": "trainer",
        "resources": {"requests": {"nvidia.com/gpu": "8"}, "limits": {"nvidia.com/gpu": "1"}},
    }
    assert parse_spec(_spec(template=containers(containers=[accelerator])))


# ------------------------------------------------------------------ LoRA's rank


def test_a_lora_rank_on_full_training_is_refused_naming_it_and_its_default_is_accepted() -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(_spec(model=_model(finetuning={"method": "full", "loraRank": 16})))
    assert [error.path for error in refused.value.errors] == ["spec.model.finetuning.loraRank"]
    assert "applies only to methods lora and qlora" in str(refused.value)
    # What the API server stores for a full-training job (the CRD's default 8) still parses.
    assert parse_spec(_spec(model=_model(finetuning={"method": "full", "loraRank": 8}))).model.finetuning
    for method in ("lora", "qlora"):
        parsed = parse_spec(_spec(model=_model(finetuning={"method": method, "loraRank": 16})))
        assert parsed.model.finetuning.lora_rank == 16


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"elastic": {"maxRestarts": 5}}, "elastic.enabled is false"),
        ({"framework": "jax", "elastic": {"enabled": True, "maxRestarts": 5}}, "framework is jax"),
        ({"framework": "none", "elastic": {"enabled": True, "maxRestarts": 0}}, "framework is none"),
    ],
)
def test_elastic_max_restarts_where_torchrun_does_not_run_is_accepted_with_a_sizing_warning(
    spec: dict[str, Any], why: str
) -> None:
    # Only an elastic pytorch worker's PET_MAX_RESTARTS reads it: elsewhere it was accepted and limited
    # nothing without a word. Refused instead, a stored job with it would turn InvalidSpec on an upgrade.
    sizing = size_job(parse_spec(_spec(**spec)), CATALOG).sizing
    (warning,) = [line for line in sizing.warnings if "elastic.maxRestarts" in line]
    assert why in warning and "runPolicy.maxRestarts" in warning


def test_elastic_max_restarts_where_torchrun_reads_it_or_at_its_default_has_no_warning() -> None:
    for spec in (
        _spec(elastic={"enabled": True, "maxRestarts": 5}),
        _spec(framework="jax", elastic={"enabled": True, "maxRestarts": 100}),
        _spec(elastic={"enabled": False, "maxRestarts": 100}),
    ):
        warnings = size_job(parse_spec(spec), CATALOG).sizing.warnings
        assert not [line for line in warnings if "maxRestarts" in line]


# ------------------------------------------------------------------ counts and bytes are whole


@pytest.mark.parametrize(
    ("model", "path"),
    [({"parameters": "1.5"}, "parameters"), ({"parameters": "1.9"}, "parameters"),
     ({"parameters": "2.5e0"}, "parameters"), ({"parameters": "1.0000000005B"}, "parameters"),
     ({"memory": "1.5"}, "memory"), ({"memory": "1500m"}, "memory"), ({"memory": "1.0000000001Ki"}, "memory"),
     ({"parameters": "8B", "finetuning": {"method": "lora", "trainableParameters": "10.5"}},
      "finetuning.trainableParameters")],
)  # fmt: skip
def test_a_count_or_size_that_is_no_whole_number_is_refused_naming_it(
    model: dict[str, Any], path: str
) -> None:
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(_spec(model=model))
    assert [error.path for error in raised.value.errors] == [f"spec.model.{path}"], str(raised.value)
    assert "whole number" in str(raised.value)


@pytest.mark.parametrize("memory", ["1.5", "0.1Gi", "1500m"])
def test_a_host_memory_that_is_no_whole_number_of_bytes_is_refused(memory: str) -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.resources\.memory: .*whole number"):
        parse_spec(_spec(resources={"memory": memory}))


@pytest.mark.parametrize(
    ("field", "written", "expected"),
    [("parameters", "1.5B", 1_500_000_000), ("parameters", "2.5e1", 25), ("parameters", "1.0", 1),
     ("parameters", "0.5K", 500), ("memory", "1.5Ki", 1536), ("memory", "2000m", 2), ("memory", "0.5e1", 5),
     ("memory", "1.000", 1)],
)  # fmt: skip
def test_a_fraction_that_comes_to_a_whole_number_is_accepted(field: str, written: str, expected: int) -> None:
    model = parse_spec(_spec(model={field: written})).model
    assert (model.memory_bytes if field == "memory" else model.parameter_count) == expected


def test_a_refused_gradient_accumulation_is_the_only_error_of_a_pipelined_optimizer_in_backward() -> None:
    """pipelineParallel's check reads gradientAccumulation; refused, it is absent, not unset."""
    raw = {
        "template": {"spec": {"containers": [{"name": "t", "image": "i"}]}},
        "model": {"parameters": "8B"},
        "training": {"optimizerInBackward": True, "pipelineParallel": 2, "gradientAccumulation": 0},
    }
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(raw)
    assert [error.path for error in refused.value.errors] == ["spec.training.gradientAccumulation"]
    raw["training"]["gradientAccumulation"] = 1
    assert parse_spec(raw).training.pipeline_parallel == 2
