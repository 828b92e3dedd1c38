"""Bad TrainingJob specs, each with the field its refusal must name: one table for every entry point.

`kubefit size` (tests/unit/test_cli_size.py), the pure reconcile decision (tests/unit/test_api_validation.py)
and the real API server with the operator (tests/e2e/test_bad_input.py) all take this table, so a value
refused at one door is refused at all of them. `bad_spec_strategy` adds hypothesis-generated ones: a
valid spec with one field given a value outside its type or bounds.

`refused_by` says where the table expects the refusal on a cluster:
- "api-server": the CRD schema refuses it (kubectl apply fails, naming the field);
- "operator": the schema cannot express the rule, so the operator marks the job Ready=False/InvalidSpec;
- "kubectl": an unknown field, which the API server prunes silently (structural schemas drop unknown
  fields, Kubernetes 1.20 has no server-side field validation); kubectl's own schema check names it.
`json` is False for values JSON cannot carry (NaN, infinity): YAML can, so `kubefit size` and a
reconcile of a hand-made object see them, but kubectl cannot send them.
"""

from __future__ import annotations

import copy
import json
import math
import re
import string
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from kubefit.api import models
from kubefit.api.quantity import COUNT_PATTERN, QUANTITY_PATTERN

CONTAINER = {"name": "trainer", "image": "ghcr.io/acme/train:1", "command": ["train"]}
BASE_SPEC: dict[str, Any] = {
    "template": {"spec": {"containers": [CONTAINER]}},
    "framework": "pytorch",
    "model": {"parameters": "1B"},
    "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 4},
    "workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4},
}


@dataclass(frozen=True)
class BadSpec:
    id: str
    changes: dict[str, Any]  # top-level spec sections replaced, as tests/e2e job_manifest takes them
    field: str  # the path the refusal must name
    refused_by: str  # api-server | operator | kubectl
    json: bool = True

    def spec(self) -> dict[str, Any]:
        return {**copy.deepcopy(BASE_SPEC), **copy.deepcopy(self.changes)}


def _in(section: str, **fields: Any) -> dict[str, Any]:
    """The base spec's `section` with `fields` set in it."""
    return {section: {**copy.deepcopy(BASE_SPEC.get(section, {})), **fields}}


def _model(**fields: Any) -> dict[str, Any]:
    return {"model": {"parameters": "1B", **fields}}


def _pod(**fields: Any) -> dict[str, Any]:
    return {"template": {"spec": {"containers": [CONTAINER], **fields}}}


def _container(**fields: Any) -> dict[str, Any]:
    return {"template": {"spec": {"containers": [{**CONTAINER, **fields}]}}}


def _nested(depth: int) -> Any:
    """A value `depth` objects deep, as a template's unknown fields may carry it past the schema."""
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


ARCHITECTURE = {"layers": 16, "hiddenSize": 2048, "attentionHeads": 16}
API, OPERATOR, KUBECTL = "api-server", "operator", "kubectl"

BAD_SPECS: list[BadSpec] = [
    # the inputs of the issue
    BadSpec("parameters-below-one", _model(parameters="0.4"), "spec.model.parameters", OPERATOR),
    BadSpec("parameters-1e400", _model(parameters="1e400"), "spec.model.parameters", OPERATOR),
    BadSpec("parameters-1e999999999", _model(parameters="1e999999999"), "spec.model.parameters", OPERATOR),
    BadSpec("containers-of-strings", {"template": {"spec": {"containers": ["x"]}}}, "spec.template.spec.containers[0]", API),
    BadSpec("memory-with-space", _in("resources", memory="16 Gi"), "spec.resources.memory", API),
    BadSpec("replicas-100000", _in("workers", replicas=100_000), "spec.workers.replicas", API),
    BadSpec("max-replicas-100000", _in("workers", maxReplicas=100_000), "spec.workers.maxReplicas", API),
    BadSpec("accelerators-per-worker-1000", _in("resources", acceleratorsPerWorker=1000), "spec.resources.acceleratorsPerWorker", API),
    BadSpec("headroom-nan", _in("resources", memoryHeadroom=math.nan), "spec.resources.memoryHeadroom", API, json=False),
    BadSpec("parameters-infinity", _model(parameters=math.inf), "spec.model.parameters", API, json=False),
    BadSpec("sequence-infinity", {"training": {"sequenceLength": -math.inf}}, "spec.training.sequenceLength", API, json=False),
    # counts: zero, negative, huge, wrong type
    BadSpec("replicas-zero", _in("workers", replicas=0), "spec.workers.replicas", API),
    BadSpec("replicas-negative", _in("workers", replicas=-2), "spec.workers.replicas", API),
    BadSpec("replicas-string", _in("workers", replicas="4"), "spec.workers.replicas", API),
    BadSpec("replicas-fraction", _in("workers", replicas=2.5), "spec.workers.replicas", API),
    BadSpec("min-replicas-above-max", _in("workers", minReplicas=4, maxReplicas=3), "spec.workers", OPERATOR),
    BadSpec("parameters-zero", _model(parameters=0), "spec.model.parameters", API),
    BadSpec("parameters-fraction", _model(parameters="1.5"), "spec.model.parameters", OPERATOR),
    BadSpec("parameters-negative-string", _model(parameters="-5B"), "spec.model.parameters", API),
    BadSpec("parameters-word", _model(parameters="lots"), "spec.model.parameters", API),
    BadSpec("parameters-boolean", _model(parameters=True), "spec.model.parameters", API),
    BadSpec("parameters-above-max", _model(parameters=10**16), "spec.model.parameters", API),
    BadSpec("parameters-above-max-string", _model(parameters="2000T"), "spec.model.parameters", OPERATOR),
    BadSpec("trainable-below-one", _model(finetuning={"method": "lora", "trainableParameters": "0.1"}), "spec.model.finetuning.trainableParameters", OPERATOR),
    BadSpec("trainable-above-parameters", _model(finetuning={"method": "lora", "trainableParameters": "100B"}), "spec.model.finetuning.trainableParameters", OPERATOR),
    BadSpec("lora-rank-zero", _model(finetuning={"method": "lora", "loraRank": 0}), "spec.model.finetuning.loraRank", API),
    BadSpec("double-quantization-off-without-qlora", _model(finetuning={"method": "lora", "doubleQuantization": False}), "spec.model.finetuning.doubleQuantization", OPERATOR),
    BadSpec("double-quantization-string", _model(finetuning={"method": "qlora", "doubleQuantization": "no"}), "spec.model.finetuning.doubleQuantization", API),
    BadSpec("lora-dropout-one", _model(finetuning={"method": "lora", "loraDropout": 1.0}), "spec.model.finetuning.loraDropout", API),
    BadSpec("lora-dropout-word", _model(finetuning={"method": "lora", "loraDropout": "0.1"}), "spec.model.finetuning.loraDropout", API),
    BadSpec("lora-dropout-on-full-training", _model(finetuning={"method": "full", "loraDropout": 0.1}), "spec.model.finetuning.loraDropout", OPERATOR),
    BadSpec("lora-targets-unknown", _model(finetuning={"method": "lora", "loraTargets": ["attention"]}), "spec.model.finetuning.loraTargets", API),
    BadSpec("lora-targets-empty", _model(finetuning={"method": "lora", "loraTargets": []}), "spec.model.finetuning.loraTargets", API),
    BadSpec("lora-targets-repeated", _model(finetuning={"method": "lora", "loraTargets": ["query", "query"]}), "spec.model.finetuning.loraTargets", API),
    BadSpec("lora-targets-on-full-training", _model(finetuning={"method": "full", "loraTargets": ["query"]}), "spec.model.finetuning.loraTargets", OPERATOR),
    BadSpec("lora-rank-on-full-training", _model(finetuning={"method": "full", "loraRank": 16}), "spec.model.finetuning.loraRank", OPERATOR),
    BadSpec("quantized-head-on-full-training", _model(finetuning={"method": "full", "quantizedHead": True}), "spec.model.finetuning.quantizedHead", OPERATOR),
    BadSpec("accelerators-per-worker-zero", _in("resources", acceleratorsPerWorker=0), "spec.resources.acceleratorsPerWorker", API),
    BadSpec("accelerators-per-worker-word", _in("resources", acceleratorsPerWorker="many"), "spec.resources.acceleratorsPerWorker", API),
    BadSpec("micro-batch-zero", {"training": {"microBatchSize": 0}}, "spec.training.microBatchSize", API),
    BadSpec("sequence-above-max", {"training": {"sequenceLength": 2**30}}, "spec.training.sequenceLength", API),
    BadSpec("fsdp-wrap-without-fsdp", {"training": {"sharding": "zero3", "fsdpWrap": "blocks-and-embeddings"}}, "spec.training.fsdpWrap", OPERATOR),
    BadSpec("optimizer-in-backward-with-accumulation", {"training": {"optimizerInBackward": True, "gradientAccumulation": 4}}, "spec.training.optimizerInBackward", OPERATOR),
    BadSpec("optimizer-in-backward-pipelined-accumulation-unset", {"training": {"optimizerInBackward": True, "pipelineParallel": 2}}, "spec.training.pipelineParallel", OPERATOR),
    BadSpec("optimizer-in-backward-string", {"training": {"optimizerInBackward": "yes"}}, "spec.training.optimizerInBackward", API),
    BadSpec("fsdp-wrap-unknown", {"training": {"sharding": "fsdp", "fsdpWrap": "layers"}}, "spec.training.fsdpWrap", API),
    BadSpec("layers-above-max", _model(architecture={**ARCHITECTURE, "layers": 10**6}), "spec.model.architecture.layers", API),
    BadSpec("heads-above-width", _model(architecture={**ARCHITECTURE, "attentionHeads": 4096}), "spec.model.architecture.attentionHeads", OPERATOR),
    BadSpec("kv-heads-above-heads", _model(architecture={**ARCHITECTURE, "kvHeads": 32}), "spec.model.architecture.kvHeads", OPERATOR),
    BadSpec("kv-heads-not-dividing-heads", _model(architecture={**ARCHITECTURE, "kvHeads": 6}), "spec.model.architecture.kvHeads", OPERATOR),
    BadSpec("tensor-parallel-indivisible", {"training": {"tensorParallel": 3}}, "spec.training.tensorParallel", OPERATOR),
    BadSpec("tensor-parallel-above-heads", {**_model(architecture=ARCHITECTURE), "training": {"tensorParallel": 32}}, "spec.training.tensorParallel", OPERATOR),
    BadSpec("tensor-parallel-not-dividing-kv-heads", {**_model(architecture={**ARCHITECTURE, "kvHeads": 4}), "training": {"tensorParallel": 8}}, "spec.training.tensorParallel", OPERATOR),
    BadSpec("pipeline-parallel-indivisible", {"training": {"tensorParallel": 2, "pipelineParallel": 3}}, "spec.training.pipelineParallel", OPERATOR),
    BadSpec("min-replicas-not-whole-groups", {"training": {"tensorParallel": 8}}, "spec.workers.minReplicas", OPERATOR),
    BadSpec("ttl-beyond-int32", {"runPolicy": {"ttlSecondsAfterFinished": 10**12}}, "spec.runPolicy.ttlSecondsAfterFinished", API),
    BadSpec("priority-above-max", {"scheduling": {"priority": 2 * 10**9}}, "spec.scheduling.priority", API),
    BadSpec("gang-timeout-zero", {"scheduling": {"gangTimeoutSeconds": 0}}, "spec.scheduling.gangTimeoutSeconds", API),
    BadSpec("headroom-one", _in("resources", memoryHeadroom=1.0), "spec.resources.memoryHeadroom", API),
    # The CRD's types: a string or a bool is no number, and a string or a number no bool (kubectl apply
    # refuses them; kubefit size had taken them and said the job was fine).
    BadSpec("headroom-string", _in("resources", memoryHeadroom="0.1"), "spec.resources.memoryHeadroom", API),
    BadSpec("headroom-bool", _in("resources", memoryHeadroom=True), "spec.resources.memoryHeadroom", API),
    BadSpec("suspend-string", {"runPolicy": {"suspend": "yes"}}, "spec.runPolicy.suspend", API),
    BadSpec("suspend-number", {"runPolicy": {"suspend": 1}}, "spec.runPolicy.suspend", API),
    BadSpec("elastic-enabled-string", {"elastic": {"enabled": "true"}}, "spec.elastic.enabled", API),
    # quantities
    BadSpec("model-memory-GB", _model(memory="120GB"), "spec.model.memory", API),
    BadSpec("model-memory-below-one-byte", {"model": {"memory": "0.5"}}, "spec.model.memory", OPERATOR),
    BadSpec("model-memory-fraction-of-a-byte", {"model": {"memory": "1.5"}}, "spec.model.memory", OPERATOR),
    BadSpec("host-memory-fraction-of-a-byte", _in("resources", memory="0.1Gi"), "spec.resources.memory", OPERATOR),
    BadSpec("model-memory-above-max", {"model": {"memory": "2Ei"}}, "spec.model.memory", OPERATOR),
    BadSpec("host-memory-negative", _in("resources", memory="-1Gi"), "spec.resources.memory", API),
    BadSpec("cpu-word", _in("resources", cpu="lots"), "spec.resources.cpu", API),
    BadSpec("cpu-above-max", _in("resources", cpu="1e9"), "spec.resources.cpu", OPERATOR),
    BadSpec("cpu-above-template-limit", {**_in("resources", cpu="16"), **_container(resources={"limits": {"cpu": "4"}})}, "spec.resources.cpu", OPERATOR),
    BadSpec("memory-above-template-limit", {**_in("resources", memory="64Gi"), **_container(resources={"limits": {"memory": "8Gi"}})}, "spec.resources.memory", OPERATOR),
    BadSpec("cpu-above-zero-template-limit", {**_in("resources", cpu="2"), **_container(resources={"limits": {"cpu": "0"}})}, "spec.resources.cpu", OPERATOR),
    BadSpec("memory-above-sub-byte-template-limit", {**_in("resources", memory="2"), **_container(resources={"limits": {"memory": "500m"}})}, "spec.resources.memory", OPERATOR),
    BadSpec("template-nested-too-deep", _container(**{"x-deep": _nested(150)}), "spec.template.spec.containers[0].x-deep", OPERATOR),
    BadSpec("container-request-with-space", _container(resources={"requests": {"cpu": "2 cores"}}), "spec.template.spec.containers[0].resources.requests", API),
    BadSpec("container-request-fraction", _container(resources={"requests": {"cpu": 0.5}}), "spec.template.spec.containers[0].resources.requests.cpu", API),
    BadSpec("container-request-negative", _container(resources={"requests": {"cpu": -1}}), "spec.template.spec.containers[0].resources.requests.cpu", API),
    BadSpec("grace-period-word", _pod(terminationGracePeriodSeconds="sixty"), "spec.template.spec.terminationGracePeriodSeconds", API),
    BadSpec("template-node-name", _pod(nodeName="gpu-node-1"), "spec.template.spec.nodeName", OPERATOR),
    BadSpec("container-request-above-own-limit", _container(resources={"requests": {"cpu": "8"}, "limits": {"cpu": "4"}}), "spec.template.spec.containers[0].resources.requests.cpu", OPERATOR),
    BadSpec("sidecar-request-above-own-limit", {"template": {"spec": {"containers": [CONTAINER, {"name": "log", "image": "busybox", "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}]}}}, "spec.template.spec.containers[1].resources.requests.memory", OPERATOR),
    # enums
    BadSpec("framework-unknown", {"framework": "tensorflow"}, "spec.framework", API),
    BadSpec("precision-unknown", _model(precision="fp64"), "spec.model.precision", API),
    BadSpec("sharding-unknown", {"training": {"sharding": "zero4"}}, "spec.training.sharding", API),
    BadSpec("accelerator-unknown", _in("resources", accelerator="nvidia-z9000"), "spec.resources.accelerator", OPERATOR),
    # unknown fields
    BadSpec("unknown-section", {"modle": {"parameters": "1B"}}, "spec.modle", KUBECTL),
    BadSpec("unknown-nested", {"training": {"microBatch": 4}}, "spec.training.microBatch", KUBECTL),
    BadSpec("snake-case-field", _in("workers", min_replicas=1), "spec.workers.min_replicas", KUBECTL),
    # the pod template
    BadSpec("containers-empty", {"template": {"spec": {"containers": []}}}, "spec.template.spec.containers", API),
    BadSpec("template-without-spec", {"template": {"metadata": {}}}, "spec.template.spec", API),
    BadSpec("pod-spec-a-list", {"template": {"spec": [CONTAINER]}}, "spec.template.spec", API),
    BadSpec("container-without-name", {"template": {"spec": {"containers": [{"image": "x"}]}}}, "spec.template.spec.containers[0].name", API),
    BadSpec("container-name-not-dns", _container(name="Trainer_1"), "spec.template.spec.containers[0].name", API),
    BadSpec("container-names-repeat", _pod(containers=[CONTAINER, CONTAINER]), "spec.template.spec.containers", OPERATOR),
    BadSpec("env-a-mapping", _container(env={"A": "b"}), "spec.template.spec.containers[0].env", API),
    BadSpec("env-without-name", _container(env=[{"value": "x"}]), "spec.template.spec.containers[0].env[0].name", API),
    BadSpec("env-value-a-number", _container(env=[{"name": "A", "value": 5}]), "spec.template.spec.containers[0].env[0].value", API),
    BadSpec("ports-of-strings", _container(ports=["29500"]), "spec.template.spec.containers[0].ports[0]", API),
    BadSpec("resources-a-list", _container(resources=["gpu"]), "spec.template.spec.containers[0].resources", API),
    BadSpec("labels-a-string", {"template": {"metadata": {"labels": "team"}, "spec": {"containers": [CONTAINER]}}}, "spec.template.metadata.labels", API),
    BadSpec("label-value-a-list", {"template": {"metadata": {"labels": {"team": ["a"]}}, "spec": {"containers": [CONTAINER]}}}, "spec.template.metadata.labels.team", API),
    BadSpec("label-key-invalid", {"template": {"metadata": {"labels": {"bad key!": "a"}}, "spec": {"containers": [CONTAINER]}}}, "spec.template.metadata.labels", OPERATOR),
    BadSpec("tolerations-a-mapping", _pod(tolerations={"key": "x"}), "spec.template.spec.tolerations", API),
    BadSpec("affinity-a-string", _pod(affinity="anywhere"), "spec.template.spec.affinity", API),
    BadSpec("node-affinity-terms-a-mapping", _pod(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": {"a": 1}}}}), "spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms", API),
    BadSpec("node-selector-value-a-number", _pod(nodeSelector={"zone": 1}), "spec.template.spec.nodeSelector.zone", API),
    # the template parts the pod builder reads (each crashed it, or made every worker pod be refused)
    BadSpec("volume-mounts-a-string", _container(volumeMounts="data"), "spec.template.spec.containers[0].volumeMounts", API),
    BadSpec("volume-mount-without-path", _container(volumeMounts=[{"name": "data"}]), "spec.template.spec.containers[0].volumeMounts[0].mountPath", API),
    BadSpec("volumes-a-mapping", _pod(volumes={"a": 1}), "spec.template.spec.volumes", API),
    BadSpec("volumes-of-strings", _pod(volumes=["x"]), "spec.template.spec.volumes[0]", API),
    BadSpec("volume-without-name", _pod(volumes=[{"emptyDir": {}}]), "spec.template.spec.volumes[0].name", API),
    BadSpec("preferred-node-affinity-a-number", _pod(affinity={"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": 5}}), "spec.template.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution", API),
]  # fmt: skip


def as_json(value: Any) -> str:
    return json.dumps(value, allow_nan=False)


# ------------------------------------------------------------------ generated


@dataclass(frozen=True)
class _Bounded:
    section: str  # top-level spec section, "" for top-level fields
    path: tuple[str, ...]  # inside the section
    minimum: int
    maximum: int


# Every bounded integer field, with the bounds the models declare.
BOUNDED = [
    _Bounded("workers", ("replicas",), 1, models.MAX_WORKERS),
    _Bounded("workers", ("minReplicas",), 1, models.MAX_WORKERS),
    _Bounded("workers", ("maxReplicas",), 1, models.MAX_WORKERS),
    _Bounded("resources", ("acceleratorsPerWorker",), 1, models.MAX_ACCELERATORS_PER_WORKER),
    _Bounded("training", ("microBatchSize",), 1, models.MAX_MICRO_BATCH_SIZE),
    _Bounded("training", ("sequenceLength",), 1, models.MAX_SEQUENCE_LENGTH),
    _Bounded("training", ("tensorParallel",), 1, models.MAX_PARALLEL_DEGREE),
    _Bounded("training", ("pipelineParallel",), 1, models.MAX_PARALLEL_DEGREE),
    _Bounded("model", ("parameters",), 1, models.MAX_PARAMETERS),
    _Bounded("model", ("architecture", "layers"), 1, models.MAX_LAYERS),
    _Bounded("model", ("architecture", "hiddenSize"), 1, models.MAX_HIDDEN_SIZE),
    _Bounded("model", ("architecture", "vocabSize"), 1, models.MAX_VOCAB_SIZE),
    _Bounded("model", ("finetuning", "loraRank"), 1, models.MAX_LORA_RANK),
    _Bounded("elastic", ("checkpointGracePeriodSeconds",), 0, models.MAX_INT32),
    _Bounded("scheduling", ("priority",), -models.MAX_PRIORITY, models.MAX_PRIORITY),
    _Bounded("scheduling", ("gangTimeoutSeconds",), 1, models.MAX_INT32),
    _Bounded("runPolicy", ("maxRestarts",), 0, models.MAX_INT32),
    _Bounded("runPolicy", ("ttlSecondsAfterFinished",), 0, models.MAX_INT32),
]
QUANTITIES = [("resources", "memory"), ("resources", "cpu"), ("model", "memory")]
# The base of generated cases also names an architecture and LoRA, so that their fields exist to spoil.
GENERATED_BASE: dict[str, Any] = {
    **BASE_SPEC,
    "model": {"parameters": "1B", "architecture": ARCHITECTURE, "finetuning": {"method": "lora"}},
}
_WRONG_TYPES = st.sampled_from(["ten", [1], {"a": 1}, True, 2.5])
_PRINTABLE = string.ascii_letters + string.digits + " .-+_/%"


def _set(spec: dict[str, Any], section: str, path: tuple[str, ...], value: Any) -> None:
    node = spec.setdefault(section, {})
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = value


def _path(section: str, path: tuple[str, ...]) -> str:
    return ".".join(("spec", section, *path))


@st.composite
def _bad_bound(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    target = draw(st.sampled_from(BOUNDED))
    outside = st.one_of(
        st.integers(max_value=target.minimum - 1, min_value=target.minimum - 10**12),
        st.integers(min_value=target.maximum + 1, max_value=target.maximum + 10**12),
    )
    value = draw(st.one_of(outside, _WRONG_TYPES))
    if target.path == ("parameters",) and isinstance(value, str):
        value = True  # a word is a valid-looking count to the type; keep the case about type and bounds
    spec = copy.deepcopy(GENERATED_BASE)
    _set(spec, target.section, target.path, value)
    return spec, _path(target.section, target.path)


def _not_matching(pattern: str) -> st.SearchStrategy[str]:
    compiled = re.compile(pattern)
    return st.text(alphabet=_PRINTABLE, min_size=1, max_size=8).filter(
        lambda text: not compiled.fullmatch(text)
    )


@st.composite
def _bad_string(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    kind = draw(st.sampled_from(["quantity", "count", "container-name"]))
    spec = copy.deepcopy(GENERATED_BASE)
    if kind == "quantity":
        section, name = draw(st.sampled_from(QUANTITIES))
        _set(spec, section, (name,), draw(_not_matching(QUANTITY_PATTERN)))
        return spec, _path(section, (name,))
    if kind == "count":
        _set(spec, "model", ("parameters",), draw(_not_matching(COUNT_PATTERN)))
        return spec, "spec.model.parameters"
    name = draw(_not_matching(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    spec["template"] = {"spec": {"containers": [{**CONTAINER, "name": name}]}}
    return spec, "spec.template.spec.containers[0].name"


@st.composite
def _out_of_range_string(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A string in the field's grammar (so the CRD's pattern admits it) whose value is out of range: below
    one after conversion, or above the maximum. Only the operator can refuse these."""
    section, name, too_large = draw(
        st.sampled_from(
            [
                ("model", "parameters", st.integers(1001, 10**6).map(lambda count: f"{count}T")),
                ("model", "memory", st.integers(2, 1000).map(lambda size: f"{size}Ei")),
                ("resources", "memory", st.integers(2, 1000).map(lambda size: f"{size}Pi")),
                ("resources", "cpu", st.integers(16, 40).map(lambda exponent: f"1e{exponent}")),
            ]
        )
    )
    # below one unit after conversion: a byte or parameter (cpu below a millicore is 1m, as in Kubernetes)
    below_one = st.from_regex(r"0\.[0-9]{1,4}", fullmatch=True)
    spec = copy.deepcopy(GENERATED_BASE)
    _set(spec, section, (name,), draw(too_large if name == "cpu" else st.one_of(below_one, too_large)))
    return spec, _path(section, (name,))


def bad_spec_strategy() -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    """A valid spec with one field made invalid, and that field's path."""
    return st.one_of(_bad_bound(), _bad_string(), _out_of_range_string())
