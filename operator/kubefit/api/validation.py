"""Turning a raw manifest spec into a TrainingJobSpec, with errors that name the field."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

from pydantic import ValidationError

from kubefit.api.crd import openapi_schema
from kubefit.api.models import FIELD_ERROR, TrainingJobSpec
from kubefit.api.quantity import echo, exact_quantity, is_quantity

_HUGEPAGES = "hugepages-"

# A real spec nests about 12 levels (template.spec.affinity...matchExpressions[0].values[0]); the schema
# preserves a template's unknown fields at any depth, and Python's copies and encoders recurse per level.
SPEC_DEPTH_MAX = 100


@dataclass(frozen=True)
class FieldError:
    path: str  # e.g. "spec.workers.minReplicas"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidSpec(ValueError):
    """A spec that cannot be used; `errors` name each offending field."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(error) for error in errors))


def pruned(value: Any, *location: str) -> tuple[Any, list[str]]:
    """`value`, the object at `location` of a TrainingJob ("spec"; "status", "gang"), as the API server
    stores it under this operator's CRD, and the paths of the fields it dropped. A structural schema
    prunes every field it does not name, except under x-kubernetes-preserve-unknown-fields; a stored
    object has such a field only from a newer CRD's schema or defaults (applied before the operator is
    rolled), and the reconcile and the webhook read it as this operator's CRD would have stored it: a
    job is not refused for what a newer version added. A file (`kubefit size`) is checked unpruned, as
    kubectl's own validation names a typo."""
    schema: dict[str, Any] | None = _crd_schema()
    for name in location:
        schema = field_schema(schema, name) if schema is not None else None
    dropped: list[str] = []
    return _prune(value, schema, ".".join(location), dropped), dropped


@cache
def _crd_schema() -> dict[str, Any]:
    return openapi_schema()


def _prune(value: Any, schema: dict[str, Any] | None, path: str, dropped: list[str]) -> Any:
    if schema is None:  # under a key an open object keeps without a schema: the API server keeps it whole
        return value
    if isinstance(value, list):
        items = schema.get("items")
        return [_prune(item, items, f"{path}[{index}]", dropped) for index, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    open_object = schema.get("x-kubernetes-preserve-unknown-fields") is True
    kept: dict[Any, Any] = {}
    for key, item in value.items():
        field = field_schema(schema, key)
        if field is not None or open_object:
            kept[key] = _prune(item, field, f"{path}.{key}", dropped)
        else:
            dropped.append(f"{path}.{key}")
    return kept


def field_schema(schema: dict[str, Any], key: Any) -> dict[str, Any] | None:
    """The schema of `key` in an object: its property's, else the map's value schema, else none."""
    properties = schema.get("properties") or {}
    if key in properties:
        return properties[key]  # type: ignore[no-any-return]
    values = schema.get("additionalProperties")
    return values if isinstance(values, dict) else None


def _is_union_tag(item: str) -> bool:
    # pydantic adds the tried union branch to the location: "int", "str", "literal['auto']", "function-..."
    return item in {"int", "str", "float", "bool"} or "[" in item or item.startswith("function-")


def field_path(location: tuple[int | str, ...], raw: Any, root: str = "spec") -> str:
    """The manifest path of an error `location` in `raw`. A union branch's tag is dropped only where `raw`
    has no such key: a user's map key that reads like one (labels: {str: ...}) stays in the path."""
    path, node = root, raw
    for item in location:
        if isinstance(item, int):
            path += f"[{item}]"
        elif not _is_union_tag(item) or (isinstance(node, dict) and item in node):
            # Already the manifest's (camelCase) name: validation is by alias. A map key with a dot
            # (app.kubernetes.io/name, nvidia.com/gpu) is bracketed, so that the path reads back as one key.
            path += f"[{item}]" if "." in item else "." + item
        else:
            continue  # the tag names no value of the input: the path stays where it is
        node = _child(node, item)
    return path


def _child(node: Any, item: int | str) -> Any:
    """The input at `item` of `node`; None where there is none (a missing field)."""
    if isinstance(node, dict):
        return node.get(item)
    if isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
        return node[item]
    return None


def _message(error: Any) -> str:
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def parse_spec(raw: Any) -> TrainingJobSpec:
    """Validate `raw` (the manifest's spec) or raise InvalidSpec naming every bad field once."""
    spec = schema_spec(raw)
    errors = rule_errors(spec)
    if errors:
        raise InvalidSpec(errors)
    return spec


def schema_spec(raw: Any) -> TrainingJobSpec:
    """`raw` checked against the schema only (InvalidSpec naming every bad field once); `rule_errors`
    are the checks of a parsed spec that parse_spec adds."""
    if not isinstance(raw, dict):
        raise InvalidSpec([FieldError("spec", "must be an object")])
    too_deep = _too_deep(raw, SPEC_DEPTH_MAX)
    if too_deep is not None:
        raise InvalidSpec([FieldError(too_deep, f"nested more than {SPEC_DEPTH_MAX} levels deep")])
    try:
        # By alias only: a Python name such as min_replicas is an unknown field, as the API server sees it.
        spec = TrainingJobSpec.model_validate(raw, by_alias=True, by_name=False)
    except ValidationError as exc:
        seen: dict[str, str] = {}
        for error in exc.errors():
            location = tuple(error["loc"])
            if error["type"] == FIELD_ERROR:
                location += (error["ctx"]["field"],)
            path = field_path(location, raw)
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            else:
                message = _message(error)
            seen.setdefault(path, message)  # a union reports each branch; the first message is enough
        raise InvalidSpec([FieldError(path, message) for path, message in seen.items()]) from None
    return spec


def _too_deep(raw: dict[str, Any], limit: int) -> str | None:
    """The path of the first field nested deeper than `limit` levels below spec (None: none is). Walked
    without recursion, so any depth the API server stores is answered."""
    pending: list[tuple[Any, tuple[int | str, ...]]] = [(raw, ())]
    while pending:
        node, location = pending.pop()
        if len(location) > limit:
            shown = field_path(location[:6], raw)
            return f"{shown}..." if len(location) > 6 else shown
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        pending.extend((child, (*location, key)) for key, child in items)
    return None


def rule_errors(spec: TrainingJobSpec) -> list[FieldError]:
    """What a schema-valid spec breaks among the rules the pydantic models do not express."""
    return [
        *_node_name_set(spec),
        *_requests_above_template_limits(spec),
        *_container_requests_above_own_limits(spec),
        *_hugepages_without_cpu_or_memory(spec),
        *_hugepages_not_whole_pages(spec),
        *_tensor_parallel_splits_heads(spec),
    ]


def _node_name_set(spec: TrainingJobSpec) -> list[FieldError]:
    """A rule, not the schema's: refused with the other faults of the spec, not instead of them."""
    node_name = spec.template["spec"].get("nodeName")
    if not node_name:
        return []
    return [
        FieldError(
            "spec.template.spec.nodeName",
            f"{echo(node_name)}: a node name binds every worker to that one node past kube-scheduler and "
            "kubefit's placement of the gang, which would count the workers on other nodes; to pin workers to "
            "nodes, use nodeSelector (kubernetes.io/hostname) or a required node affinity",
        )
    ]


def _tensor_parallel_splits_heads(spec: TrainingJobSpec) -> list[FieldError]:
    """Each tensor-parallel rank holds whole query heads and whole key/value heads: Megatron-Core divides
    both by the TP size and refuses a remainder (megatron/core/transformer/attention.py,
    `divide(num_attention_heads, tp)` and `divide(num_query_groups, tp)`); torchtitan's colwise split of
    wq/wk/wv needs the same. Checked when model.architecture gives the heads."""
    architecture = spec.model.architecture
    tensor_parallel = spec.training.tensor_parallel
    if architecture is None or tensor_parallel == 1:
        return []
    heads = architecture.attention_heads
    kv_heads = architecture.kv_heads if architecture.kv_heads is not None else heads
    if heads % tensor_parallel == 0 and kv_heads % tensor_parallel == 0:
        return []
    given = f"attentionHeads {heads}" + (f" and kvHeads {kv_heads}" if kv_heads != heads else "")
    return [
        FieldError(
            "spec.training.tensorParallel",
            f"{tensor_parallel} must divide model.architecture {given}: each tensor-parallel rank holds "
            "whole attention heads and whole key/value heads",
        )
    ]


def _container_requests_above_own_limits(spec: TrainingJobSpec) -> list[FieldError]:
    """A template container's own request above its own limit for a native resource (cpu, memory,
    ephemeral-storage, hugepages-*), or a hugepages-* one below it or without one, which reaches every worker pod as
    written and has the API server refuse each one. The trainer's cpu and memory requests are
    spec.resources' where that gives them (checked by _requests_above_template_limits)."""
    errors = []
    for kind, index, resources in _template_resources(spec):
        requests, limits = resources.get("requests"), resources.get("limits")
        if not isinstance(requests, dict):
            continue
        limits = limits if isinstance(limits, dict) else {}
        for name, requested in requests.items():
            if "/" in name:
                continue  # an extended resource (nvidia.com/gpu): the pod builder rewrites accelerators
            limit = limits.get(name)
            replaced = name in ("cpu", "memory") and getattr(spec.resources, name) is not None
            if kind == "containers" and index == 0 and replaced:
                continue  # spec.resources.cpu/memory replaces this request in the pod
            if limit is None and name.startswith("hugepages-"):
                problem: str | None = (
                    f"{requested} has no {name} limit beside it; huge pages cannot be overcommitted, so "
                    "Kubernetes needs a limit equal to the request (the API server would refuse every "
                    "worker pod)"
                )
            elif limit is None or not (is_quantity(requested) and is_quantity(limit)):
                continue  # no limit, or a malformed one (the schema names those in containers)
            else:
                problem = _request_against_limit(name, requested, limit)
            if problem is not None:
                errors.append(
                    FieldError(f"spec.template.spec.{kind}[{index}].resources.requests.{name}", problem)
                )
    return errors


def _template_resources(spec: TrainingJobSpec) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(kind, index, resources) of each template container and init container that has a resources map."""
    pod_spec = spec.template["spec"]
    for kind in ("containers", "initContainers"):
        containers = pod_spec.get(kind)
        for index, container in enumerate(containers if isinstance(containers, list) else []):
            resources = container.get("resources") if isinstance(container, dict) else None
            if isinstance(resources, dict):
                yield kind, index, resources


def _hugepages_without_cpu_or_memory(spec: TrainingJobSpec) -> list[FieldError]:
    """A container with huge pages but no cpu or memory request or limit: the API server refuses the pod
    ("HugePages require cpu or memory"). Not the trainer, which the pod builder always gives both."""
    errors = []
    for kind, index, resources in _template_resources(spec):
        if kind == "containers" and index == 0:
            continue
        names = {
            name
            for part in ("requests", "limits")
            if isinstance(resources.get(part), dict)
            for name in resources[part]
        }
        if any(name.startswith("hugepages-") for name in names) and not names & {"cpu", "memory"}:
            errors.append(
                FieldError(
                    f"spec.template.spec.{kind}[{index}].resources",
                    "huge pages need a cpu or memory request or limit beside them (the API server would "
                    "refuse every worker pod)",
                )
            )
    return errors


def _hugepages_not_whole_pages(spec: TrainingJobSpec) -> list[FieldError]:
    """A hugepages-<size> request or limit that is not a whole number of pages of its size: Kubernetes
    refuses the pod ("is not positive integer multiple of hugepages-2Mi"; pod validation's
    AllowIndivisibleHugePagesValues is false for a new pod in current releases; the sandbox's 1.20 accepted
    it)."""
    errors = []
    for kind, index, resources in _template_resources(spec):
        for part in ("requests", "limits"):
            amounts = resources.get(part)
            for name, amount in amounts.items() if isinstance(amounts, dict) else ():
                page = _page_size(name)
                value = exact_quantity(amount) if is_quantity(amount) else None
                if page is None or value is None or value % page == 0:
                    continue
                errors.append(
                    FieldError(
                        f"spec.template.spec.{kind}[{index}].resources.{part}.{name}",
                        f"{amount} is not a whole number of {name[len(_HUGEPAGES) :]} pages (the API server "
                        "would refuse every worker pod)",
                    )
                )
    return errors


def _page_size(name: str) -> Decimal | None:
    """The page size a hugepages-<size> resource name gives, or None (another resource, or no size)."""
    size = name[len(_HUGEPAGES) :] if name.startswith(_HUGEPAGES) else ""
    page = exact_quantity(size) if size and is_quantity(size) else None
    return page if page else None


def _request_against_limit(name: str, requested: int | str, limit: int | str) -> str | None:
    """What the API server would refuse in a request beside its own limit, or None."""
    if _exceeds(requested, limit):
        return (
            f"{requested} is above the container's {name} limit {limit}; a request may not exceed its limit "
            "(the API server would refuse every worker pod)"
        )
    # Huge pages cannot be overcommitted: Kubernetes refuses a request below the limit as well.
    if name.startswith("hugepages-") and _exceeds(limit, requested):
        return (
            f"{requested} is below the container's {name} limit {limit}; a huge pages request must equal its "
            "limit (the API server would refuse every worker pod)"
        )
    return None


def _exceeds(requested: int | str, limit: int | str) -> bool:
    """Whether a quantity request is above its limit, compared exactly as the API server does; a value
    beyond any plausible size (exact_quantity None) is not compared."""
    requested_value, limit_value = exact_quantity(requested), exact_quantity(limit)
    return requested_value is not None and limit_value is not None and requested_value > limit_value


def _requests_above_template_limits(spec: TrainingJobSpec) -> list[FieldError]:
    """spec.resources.cpu/memory above the first container's own limit, zero or below one unit included:
    the API server would refuse every worker pod (a request may not exceed its limit; it compares the
    exact quantities)."""
    containers = spec.template["spec"]["containers"]
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    errors = []
    for resource in ("cpu", "memory"):
        requested, limit = getattr(spec.resources, resource), limits.get(resource)
        if requested is None or limit is None:
            continue
        if _exceeds(requested, limit):
            errors.append(
                FieldError(
                    f"spec.resources.{resource}",
                    f"{requested} is above the trainer container's {resource} limit {limit} "
                    f"(spec.template.spec.containers[0].resources.limits.{resource}); a request may not "
                    "exceed its limit",
                )
            )
    return errors
