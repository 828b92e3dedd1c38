"""Placement of workers on nodes of the chosen accelerator.

The accelerator's catalog `match` label sets become required nodeAffinity terms (terms are ORed, so
any one label set identifies a node), each with a DoesNotExist expression per GPU partition or sharing
label it does not name (sizing/catalog.py SHARED_GPU_LABELS): a worker sized for whole GPUs never lands
on a node that offers slices of them under the same accelerator label, as identification says. A TPU
worker's terms also keep it off the hosts of multi-host slices (catalog.slice_topologies), which the
inventory does not count either. A user's
own required terms are kept by ANDing each of them with each accelerator term; nodeSelector, preferred
terms and pod (anti-)affinity are left untouched.

A worker is also steered, softly, to the nodes the scheduling pass reserved for the job: one preferred term
of the highest weight on their kubernetes.io/hostname labels. kube-scheduler scores nodes by its own rules
(spreading by CPU and memory among them) and, left alone, can put a small job on the empty node a gang was
counted on; a preference, not a requirement, so a worker still starts elsewhere if its reserved node went.
The label, not the node's name: kube-scheduler before 1.21 scores preferred terms by their matchExpressions
only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from kubefit.sizing.catalog import (
    INSTANCE_TYPE_LABEL,
    MULTI_HOST_MACHINE_TYPES,
    TPU_TOPOLOGY_LABEL,
    SliceTopologies,
    absent_labels,
)

Term = dict[str, Any]
HOSTNAME_LABEL = "kubernetes.io/hostname"
PREFERENCE_WEIGHT = 100  # the most a preferred term can weigh (PreferredSchedulingTerm.weight: 1-100)


def accelerator_terms(
    match: Sequence[Mapping[str, str]], topologies: SliceTopologies | None = None
) -> list[Term]:
    """One nodeSelectorTerm per label set; each label becomes an `In` expression, and each partition or
    sharing label it does not name a `DoesNotExist` one (catalog.term_matches, for the scheduler). With
    `topologies` (a TPU worker's), each label set becomes one term per slice_requirements alternative."""
    terms: list[Term] = []
    for labels in match:
        identifies = [
            *({"key": key, "operator": "In", "values": [value]} for key, value in sorted(labels.items())),
            *({"key": key, "operator": "DoesNotExist"} for key in absent_labels(labels)),
        ]
        alternatives = slice_requirements(topologies) if topologies is not None else [[]]
        terms.extend({"matchExpressions": [*identifies, *slice_of]} for slice_of in alternatives)
    return terms


def slice_requirements(topologies: SliceTopologies) -> list[list[dict[str, Any]]]:
    """Alternative expressions that keep a TPU worker off the hosts of multi-host slices, which the inventory
    leaves out (catalog.is_multi_host_slice_host): a single-host topology that holds it; a topology a
    multi-host slice's host also carries, on another machine type; or no topology label (not GKE)."""
    alternatives: list[list[dict[str, Any]]] = []
    if topologies.single_host:
        alternatives.append([_in(TPU_TOPOLOGY_LABEL, topologies.single_host)])
    if topologies.shared:
        machine_types = {
            "key": INSTANCE_TYPE_LABEL,
            "operator": "NotIn",
            "values": list(MULTI_HOST_MACHINE_TYPES),
        }
        alternatives.append([_in(TPU_TOPOLOGY_LABEL, topologies.shared), machine_types])
    alternatives.append([{"key": TPU_TOPOLOGY_LABEL, "operator": "DoesNotExist"}])
    return alternatives


def _in(key: str, values: Sequence[str]) -> dict[str, Any]:
    return {"key": key, "operator": "In", "values": list(values)}


def _and_terms(user_term: Term, accelerator_term: Term) -> Term:
    combined = copy.deepcopy(user_term)
    combined["matchExpressions"] = [
        *(user_term.get("matchExpressions") or []),  # null is allowed, as an empty list
        *accelerator_term["matchExpressions"],
    ]
    return combined


def merge_required_terms(user_terms: Sequence[Term], required: Sequence[Term]) -> list[Term]:
    """(u1 OR u2) AND (a1 OR a2) as the disjunction of every ui AND aj."""
    if not required:
        return [copy.deepcopy(term) for term in user_terms]
    if not user_terms:
        return [copy.deepcopy(term) for term in required]
    return [_and_terms(user_term, term) for user_term in user_terms for term in required]


def with_accelerator_affinity(
    affinity: Mapping[str, Any] | None,
    match: Sequence[Mapping[str, str]],
    topologies: SliceTopologies | None = None,
) -> dict[str, Any]:
    """A copy of `affinity` whose required node affinity also demands the accelerator (and, for a TPU
    worker, a node that is not a host of a multi-host slice)."""
    merged: dict[str, Any] = copy.deepcopy(dict(affinity or {}))
    node_affinity = merged["nodeAffinity"] = merged.get("nodeAffinity") or {}  # null: none
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = merge_required_terms(
        required.get("nodeSelectorTerms") or [], accelerator_terms(match, topologies)
    )
    if terms:
        node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
            **required,
            "nodeSelectorTerms": terms,
        }
    return merged


def with_preferred_hostnames(affinity: Mapping[str, Any], hostnames: Sequence[str]) -> dict[str, Any]:
    """A copy of `affinity` that also prefers nodes whose kubernetes.io/hostname is one of `hostnames`."""
    merged: dict[str, Any] = copy.deepcopy(dict(affinity))
    if not hostnames:
        return merged
    node_affinity = merged["nodeAffinity"] = merged.get("nodeAffinity") or {}
    preferred = list(node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or [])
    expression = {"key": HOSTNAME_LABEL, "operator": "In", "values": sorted(hostnames)}
    preferred.append({"weight": PREFERENCE_WEIGHT, "preference": {"matchExpressions": [expression]}})
    node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    return merged


def with_accelerator_toleration(
    tolerations: Sequence[Mapping[str, Any]] | None, resource_name: str
) -> list[dict]:
    """Accelerator nodes are commonly tainted with their resource name (GKE, GPU operator); tolerate that."""
    result = [dict(toleration) for toleration in tolerations or []]
    if not any(_tolerates_any_value(toleration, resource_name, "NoSchedule") for toleration in result):
        result.append({"key": resource_name, "operator": "Exists", "effect": "NoSchedule"})
    return result


def _tolerates_any_value(toleration: Mapping[str, Any], key: str, effect: str) -> bool:
    """Whether `toleration` tolerates the taint `key:effect` whatever its value (clusters set different
    ones), by Kubernetes' Toleration.ToleratesTaint: an empty effect matches every effect, an empty key
    with Exists every key, and Equal only the value it names."""
    return (
        toleration.get("effect") in (None, "", effect)
        and toleration.get("key") in (None, "", key)
        and toleration.get("operator") == "Exists"
    )
