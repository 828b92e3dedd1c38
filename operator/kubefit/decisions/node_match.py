"""Whether a worker pod could land on a node: its nodeSelector, required node affinity and tolerations.

The rules are the scheduler's (https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/
and .../taint-and-toleration/):
- every nodeSelector label must be on the node;
- at least one required nodeSelectorTerm must hold (terms are ORed, a term's requirements ANDed);
- every NoSchedule or NoExecute taint must be tolerated (PreferNoSchedule only steers); a cordoned node
  counts as tainted node.kubernetes.io/unschedulable:NoSchedule, as in the NodeUnschedulable plugin.

The template arrives as the raw manifest (decide validates it later), so anything of the wrong shape is
read as absent or as a requirement that no node meets, never as an error.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubefit.builders.placement import with_accelerator_toleration

SCHEDULING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
_INT64 = re.compile(r"^[+-]?[0-9]+$")
_NAME_FIELD = "metadata.name"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = ""


UNSCHEDULABLE_TAINT = Taint("node.kubernetes.io/unschedulable", effect="NoSchedule")


def node_taints(node_spec: Mapping[str, Any]) -> tuple[Taint, ...]:
    """The taints of a node manifest's spec."""
    return tuple(
        Taint(str(taint.get("key", "")), str(taint.get("value") or ""), str(taint.get("effect", "")))
        for taint in node_spec.get("taints") or []
        if isinstance(taint, Mapping)
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


@dataclass(frozen=True)
class Placement:
    """What of a worker pod's spec decides which nodes it may land on."""

    node_selector: Mapping[str, Any]
    terms: tuple[Any, ...]  # the template's required node-affinity terms, ORed; none: any node
    tolerations: tuple[Mapping[str, Any], ...]

    def tolerations_on(self, resource_name: str) -> list[dict[str, Any]]:
        """A worker's tolerations on nodes of `resource_name`: the template's and the builder's."""
        return with_accelerator_toleration(self.tolerations, resource_name)

    def admits(
        self,
        name: str,
        labels: Mapping[str, str],
        taints: Sequence[Taint],
        tolerations: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Whether the pod may land on the node `name` with `labels` and `taints`."""
        return (
            all(labels.get(key) == value for key, value in self.node_selector.items())
            and (not self.terms or any(_term_holds(term, name, labels) for term in self.terms))
            and all(
                taint.effect not in SCHEDULING_EFFECTS or tolerated(taint, tolerations) for taint in taints
            )
        )


ANYWHERE = Placement({}, (), ())


def template_pod_spec(job_spec: Any) -> Mapping[str, Any]:
    """spec.template.spec of a raw TrainingJob spec; empty when absent or of the wrong shape."""
    return _mapping(_mapping(_mapping(job_spec).get("template")).get("spec"))


def placement_of(pod_spec: Mapping[str, Any]) -> Placement:
    """The placement rules of a raw pod spec, as the pod builder passes them to every worker."""
    node_affinity = _mapping(_mapping(pod_spec.get("affinity")).get("nodeAffinity"))
    required = _mapping(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution"))
    return Placement(
        node_selector=_mapping(pod_spec.get("nodeSelector")),
        terms=tuple(_list(required.get("nodeSelectorTerms"))),
        tolerations=tuple(item for item in _list(pod_spec.get("tolerations")) if isinstance(item, Mapping)),
    )


# ------------------------------------------------------------------ node affinity


def _compare(compare: Callable[[int, int], bool]) -> Callable[[str | None, list[Any]], bool]:
    def holds(value: str | None, values: list[Any]) -> bool:
        if value is None or len(values) != 1 or not _INT64.match(value) or not _INT64.match(str(values[0])):
            return False
        return compare(int(value), int(str(values[0])))

    return holds


# Each operator of a NodeSelectorRequirement, given the node's value for the key (None: absent).
_LABEL_OPERATORS: dict[str, Callable[[str | None, list[Any]], bool]] = {
    "In": lambda value, values: value is not None and value in values,
    "NotIn": lambda value, values: value is None or value not in values,
    "Exists": lambda value, values: value is not None,
    "DoesNotExist": lambda value, values: value is None,
    "Gt": _compare(operator.gt),
    "Lt": _compare(operator.lt),
}
# matchFields supports only metadata.name, with In and NotIn.
_FIELD_OPERATORS = {name: _LABEL_OPERATORS[name] for name in ("In", "NotIn")}


def _requirement_holds(
    requirement: Any,
    value_of: Callable[[str], str | None],
    operators: Mapping[str, Callable[[str | None, list[Any]], bool]],
) -> bool:
    requirement = _mapping(requirement)
    key, values = requirement.get("key"), requirement.get("values") or []
    holds = operators.get(requirement.get("operator"))
    if holds is None or not isinstance(key, str) or not isinstance(values, list):
        return False
    return holds(value_of(key), values)


def _term_holds(term: Any, name: str, labels: Mapping[str, str]) -> bool:
    """All requirements of one term hold.

    A term without requirements holds here, unlike in Kubernetes, because the pod builder ANDs every
    template term with the accelerator's label term, which the node (of that accelerator) satisfies.
    """
    term = _mapping(term)

    def field_of(key: str) -> str | None:
        return name if key == _NAME_FIELD else None

    fields = _list(term.get("matchFields"))
    if any(_mapping(requirement).get("key") != _NAME_FIELD for requirement in fields):
        return False  # the only field Kubernetes selects nodes by

    return all(
        _requirement_holds(requirement, labels.get, _LABEL_OPERATORS)
        for requirement in _list(term.get("matchExpressions"))
    ) and all(_requirement_holds(requirement, field_of, _FIELD_OPERATORS) for requirement in fields)


# ------------------------------------------------------------------ taints


def _tolerates(toleration: Mapping[str, Any], taint: Taint) -> bool:
    """Kubernetes' Toleration.ToleratesTaint: empty effect matches every effect, empty key every key."""
    if toleration.get("effect") and toleration.get("effect") != taint.effect:
        return False
    if toleration.get("key") and toleration.get("key") != taint.key:
        return False
    match toleration.get("operator") or "Equal":
        case "Exists":
            return True
        case "Equal":
            return (toleration.get("value") or "") == taint.value
        case _:
            return False


def tolerated(taint: Taint, tolerations: Sequence[Mapping[str, Any]]) -> bool:
    return any(_tolerates(toleration, taint) for toleration in tolerations)
