"""The TrainingJob CustomResourceDefinition, generated from the pydantic models.

The output is a structural OpenAPI v3 schema that Kubernetes 1.20 and later accept: every `$ref` is
inlined, `X | None` becomes the plain type (optional fields are simply absent), `int | str` becomes
`x-kubernetes-int-or-string` (keeping the integer form's bounds and the string form's pattern), a section
built from its own defaults (spec.workers, spec.training, ...) gets `default: {}`, an open
object (pydantic's extra="allow", inside spec.template) is marked x-kubernetes-preserve-unknown-fields so
the API server prunes nothing from it, and there is no CEL (`x-kubernetes-validations`), which 1.20
refuses. Rules the schema cannot express (min <= max, a known accelerator, a string count below the
maximum) are enforced by the operator.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from kubefit.api.models import TrainingJobSpec, TrainingJobStatus
from kubefit.api.resource import (
    API_VERSION,
    CATEGORIES,
    CRD_NAME,
    GROUP,
    KIND,
    LIST_KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)

_DROP_KEYS = {"title"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {key: value for key, value in node.items() if key != "$ref"}
        target.update(extra)  # a field's own description wins over the model's docstring
        return _resolve(target, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one resolved pydantic schema node into a structural CRD schema node."""
    node = dict(node)
    for key in _DROP_KEYS:
        node.pop(key, None)
    description = node.get("description")
    default = node.pop("default", None)
    _merge_union(node)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    _rewrite_children(node)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node["type"] = "object"
    if "exclusiveMaximum" in node:  # OpenAPI v3.0 spells it as a boolean beside maximum
        node["maximum"] = node.pop("exclusiveMaximum")
        node["exclusiveMaximum"] = True
    # An omitted section is created empty and its fields defaulted in turn (the API server defaults
    # top-down), so `kubectl scale` finds .spec.workers.replicas on a job written without spec.workers.
    if default == {} and node.get("type") == "object" and not node.get("required"):
        node["default"] = {}
    # 1.20 reads an empty-string default as null and refuses the CRD, so only non-empty scalars
    elif (
        default not in (None, "")
        and not isinstance(default, dict | list)
        and "x-kubernetes-int-or-string" not in node
    ):
        node["default"] = default
    if description:
        node["description"] = " ".join(description.split())
    return node


def _merge_union(node: dict[str, Any]) -> None:
    """`X | None` becomes X; `int | str` becomes x-kubernetes-int-or-string with both forms' checks."""
    variants = node.pop("anyOf", None)
    if variants is None:
        return
    non_null = [variant for variant in variants if variant.get("type") != "null"]
    types = {variant.get("type") for variant in non_null}
    if types == {"integer", "string"}:
        node["x-kubernetes-int-or-string"] = True
        _lift_int_or_string_checks(node, non_null)
    elif len(non_null) == 1:
        node.update(_structural(non_null[0]))
    else:  # pragma: no cover - the models use no other unions
        raise ValueError(f"cannot express union {variants} structurally")


def _rewrite_children(node: dict[str, Any]) -> None:
    """Properties, map values and array items, each made structural in turn."""
    extra = node.pop("additionalProperties", None)
    if extra is True:  # an open object: keep whatever the user wrote in it
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict) and "properties" not in node:  # a map: every value has this schema
        node["additionalProperties"] = _structural(extra)
    if node.get("type") == "object" and "properties" in node:
        node["properties"] = {name: _structural(child) for name, child in node["properties"].items()}
    if node.get("type") == "array" and "items" in node:
        node["items"] = _structural(node["items"])


def _lift_int_or_string_checks(node: dict[str, Any], variants: list[dict[str, Any]]) -> None:
    """Checks of the union's branches onto the int-or-string node, where the API server applies them:
    minimum/maximum only to an integer, pattern only to a string."""
    for variant in variants:
        if variant.get("type") == "integer":
            for key in ("minimum", "maximum"):
                if key in variant:
                    node.setdefault(key, variant[key])
        elif "const" in variant or "enum" in variant:  # e.g. Literal["auto"]
            words = [variant["const"]] if "const" in variant else variant["enum"]
            node.setdefault("pattern", "^(" + "|".join(re.escape(word) for word in words) + ")$")
        elif "pattern" in variant:
            node.setdefault("pattern", variant["pattern"])


class _SectionDefaults(GenerateJsonSchema):
    """pydantic writes no default for a default_factory; a section the model builds from its own class
    (`workers: Workers = Field(default_factory=Workers)`) gets {} here, which _structural keeps."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            return {}
        return super().get_default_value(schema)


def model_schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_SectionDefaults)
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def _model_requirement(spec_schema: dict[str, Any]) -> None:
    """`model` needs parameters or memory: expressible structurally as anyOf over `required`."""
    model = spec_schema["properties"]["model"]
    model["anyOf"] = [{"required": ["parameters"]}, {"required": ["memory"]}]


def openapi_schema() -> dict[str, Any]:
    spec = model_schema(TrainingJobSpec)
    _model_requirement(spec)
    status = model_schema(TrainingJobStatus)
    return {
        "type": "object",
        "description": "A training job whose accelerators kubefit sizes from its model and runs as worker pods.",
        "properties": {
            "apiVersion": {"type": "string", "description": f"The API version, {API_VERSION}."},
            "kind": {"type": "string", "description": f"{KIND}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Workers",
        "type": "string",
        "jsonPath": ".status.workers",
        "description": "Ready/desired workers",
    },
    {"name": "Accelerator", "type": "string", "jsonPath": ".status.sizing.accelerator"},
    {
        "name": "Per-Device",
        "type": "string",
        "jsonPath": ".status.perDeviceMemory",
        "description": "Estimated peak memory per device (GiB)",
    },
    {"name": "Fits", "type": "boolean", "jsonPath": ".status.sizing.fits"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": LIST_KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.workers.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def fields_missing_from(installed: Mapping[str, Any]) -> list[str]:
    """What this operator's TrainingJob schema has that the `installed` CustomResourceDefinition lacks: a
    version it does not serve, fields (dotted paths; `[]` an array's items, `*` a map's values) that the API
    server would prune from every write, a subresource. Empty when the cluster's CRD is this one or newer."""
    ours = crd()["spec"]["versions"][0]
    versions = {version.get("name"): version for version in installed.get("spec", {}).get("versions") or []}
    theirs = versions.get(VERSION)
    if theirs is None or not theirs.get("served", False):
        return [f"version {VERSION}"]
    missing: list[str] = []
    _missing_properties(ours["schema"]["openAPIV3Schema"], _schema_of(theirs), "", missing)
    missing += [
        f"subresources.{name}"
        for name in ours["subresources"]
        if name not in (theirs.get("subresources") or {})
    ]
    return missing


def _schema_of(version: Mapping[str, Any]) -> Mapping[str, Any]:
    return (version.get("schema") or {}).get("openAPIV3Schema") or {}


def _missing_properties(
    ours: Mapping[str, Any], theirs: Mapping[str, Any], path: str, missing: list[str]
) -> None:
    if theirs.get("x-kubernetes-preserve-unknown-fields"):
        return  # kept whole, whatever it holds
    their_properties = theirs.get("properties") or {}
    for name, schema in (ours.get("properties") or {}).items():
        child = f"{path}.{name}" if path else name
        if name not in their_properties:
            missing.append(child)
        else:
            _missing_properties(schema, their_properties[name], child, missing)
    for key, suffix in (("items", "[]"), ("additionalProperties", ".*")):
        if isinstance(ours.get(key), Mapping) and isinstance(theirs.get(key), Mapping):
            _missing_properties(ours[key], theirs[key], path + suffix, missing)


def crd_yaml() -> str:
    header = "# Generated by `kubefit crd` from operator/kubefit/api/models.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
