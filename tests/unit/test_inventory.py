"""The inventory offers the planner only the nodes a worker pod could land on.

The rules are the scheduler's: nodeSelector, required node affinity (terms ORed, expressions ANDed) and
NoSchedule/NoExecute taints left untolerated by the template's tolerations plus the builder's own.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubefit.api.validation import parse_spec
from kubefit.builders.naming import JobRef
from kubefit.decisions.inventory import InventoryMemo, NodeFacts, build_inventory, node_facts
from kubefit.decisions.job import JobObservation, decide
from kubefit.decisions.node_match import Placement, Taint, placement_of, template_pod_spec
from kubefit.sizing.catalog import load_catalog
from kubefit.sizing.planner import plan

CATALOG = load_catalog()
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
L4 = {"nvidia.com/gpu.product": "NVIDIA-L4"}
QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart.yaml"


def gpu_node(
    name: str, labels: dict[str, str] | None = None, *taints: Taint, product: dict[str, str] = H100
) -> NodeFacts:
    return NodeFacts(name, {**product, **(labels or {})}, {"nvidia.com/gpu": "8"}, taints=taints)


def admitted(pod_spec: dict[str, Any], *nodes: NodeFacts) -> list[str]:
    """The names of `nodes` a worker of `pod_spec` may land on; the others must be kept as excluded."""
    inventory = build_inventory(nodes, {}, CATALOG, placement=placement_of(pod_spec))
    every = sorted([*inventory.placeable, *inventory.excluded], key=lambda node: node.name)
    assert [(node.name, node.allocatable, node.free) for node in every] == [
        (node.name, 8, 8) for node in sorted(nodes, key=lambda node: node.name)
    ]
    return [node.name for node in inventory.placeable]


def required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        }
    }


def expression(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {
        "matchExpressions": [
            {"key": key, "operator": operator, **({"values": list(values)} if values else {})}
        ]
    }


# ------------------------------------------------------------------ nodeSelector


def test_node_selector_needs_every_label_with_its_value() -> None:
    both = gpu_node("both", {"team": "a", "zone": "z1"})
    other_zone = gpu_node("other-zone", {"team": "a", "zone": "z2"})
    team_only = gpu_node("team-only", {"team": "a"})
    spec = {"nodeSelector": {"team": "a", "zone": "z1"}}
    assert admitted(spec, both, other_zone, team_only) == ["both"]
    assert admitted({}, both, other_zone, team_only) == ["both", "other-zone", "team-only"]


# ------------------------------------------------------------------ required node affinity


@pytest.mark.parametrize(
    ("operator", "values", "expected"),
    [
        ("In", ("a", "b"), ["team-a", "team-b"]),
        ("NotIn", ("a",), ["no-team", "team-b", "team-c7"]),  # a node without the label is not in
        ("Exists", (), ["team-a", "team-b", "team-c7"]),
        ("DoesNotExist", (), ["no-team"]),
    ],
)
def test_each_label_operator(operator: str, values: tuple[str, ...], expected: list[str]) -> None:
    nodes = [gpu_node("team-a", {"team": "a"}), gpu_node("team-b", {"team": "b"})]
    nodes += [gpu_node("team-c7", {"team": "c7"}), gpu_node("no-team")]
    assert admitted(required(expression("team", operator, *values)), *nodes) == expected


@pytest.mark.parametrize(
    ("operator", "values", "expected"),
    [
        ("Gt", ("4",), ["gen-10", "gen-5"]),  # numeric, not string order: 10 > 4
        ("Lt", ("6",), ["gen-5"]),
        ("Gt", ("4", "5"), []),  # exactly one value, or no node matches
        ("Gt", ("four",), []),
        ("Lt", ("-1",), []),
    ],
)
def test_gt_and_lt_compare_integers(operator: str, values: tuple[str, ...], expected: list[str]) -> None:
    nodes = [gpu_node("gen-5", {"gen": "5"}), gpu_node("gen-10", {"gen": "10"})]
    nodes += [gpu_node("gen-x", {"gen": "x"}), gpu_node("no-gen")]  # not an integer / absent: never
    assert admitted(required(expression("gen", operator, *values)), *nodes) == expected


def test_match_fields_select_by_node_name() -> None:
    nodes = [gpu_node("h1"), gpu_node("h2"), gpu_node("h3")]
    by_name = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["h1", "h3"]}]}
    assert admitted(required(by_name), *nodes) == ["h1", "h3"]
    not_h1 = {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["h1"]}]}
    assert admitted(required(not_h1), *nodes) == ["h2", "h3"]
    # Kubernetes supports no other field and no other operator there: such a term matches no node.
    other_field = {"matchFields": [{"key": "metadata.uid", "operator": "NotIn", "values": ["x"]}]}
    exists = {"matchFields": [{"key": "metadata.name", "operator": "Exists"}]}
    assert admitted(required(other_field), *nodes) == []
    assert admitted(required(exists), *nodes) == []


def test_terms_are_ored_and_the_requirements_of_a_term_anded() -> None:
    nodes = [
        gpu_node("a-z1", {"team": "a", "zone": "z1"}),
        gpu_node("a-z2", {"team": "a", "zone": "z2"}),
        gpu_node("b-z1", {"team": "b", "zone": "z1"}),
        gpu_node("b-z2", {"team": "b", "zone": "z2"}),
    ]
    team_a_in_z1 = {
        "matchExpressions": [
            {"key": "team", "operator": "In", "values": ["a"]},
            {"key": "zone", "operator": "In", "values": ["z1"]},
        ],
        "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["nothing"]}],
    }
    assert admitted(required(team_a_in_z1), *nodes) == ["a-z1"]
    assert admitted(required(team_a_in_z1, expression("team", "In", "b")), *nodes) == ["a-z1", "b-z1", "b-z2"]
    # nodeSelector and affinity must both hold.
    assert admitted({"nodeSelector": {"zone": "z2"}, **required(expression("team", "In", "b"))}, *nodes) == [
        "b-z2"
    ]


def test_an_empty_term_holds_because_the_builder_ands_it_with_the_accelerator_term() -> None:
    nodes = [gpu_node("h1", {"team": "a"}), gpu_node("h2")]
    assert admitted(required({}), *nodes) == ["h1", "h2"]
    assert admitted(required({}, expression("team", "In", "a")), *nodes) == ["h1", "h2"]
    assert admitted(required(), *nodes) == ["h1", "h2"]  # no terms: the builder keeps only its own


# ------------------------------------------------------------------ taints and tolerations


def test_only_no_schedule_and_no_execute_taints_keep_a_pod_away() -> None:
    nodes = [
        gpu_node("no-schedule", {}, Taint("dedicated", "infra", "NoSchedule")),
        gpu_node("no-execute", {}, Taint("dedicated", "infra", "NoExecute")),
        gpu_node("prefer", {}, Taint("dedicated", "infra", "PreferNoSchedule")),
        gpu_node("clean"),
    ]
    assert admitted({}, *nodes) == ["clean", "prefer"]


@pytest.mark.parametrize(
    ("toleration", "expected"),
    [
        ({"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}, ["infra-ns"]),
        ({"key": "dedicated", "value": "infra", "effect": "NoSchedule"}, ["infra-ns"]),  # Equal by default
        ({"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}, ["ml-ns"]),
        ({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}, ["infra-ns", "ml-ns"]),
        (
            {"key": "dedicated", "operator": "Equal", "value": "infra"},
            ["infra-ne", "infra-ns"],
        ),  # all effects
        ({"key": "dedicated", "operator": "Exists"}, ["infra-ne", "infra-ns", "ml-ns"]),
        ({"operator": "Exists"}, ["infra-ne", "infra-ns", "ml-ns", "other-ns"]),  # empty key: every taint
        ({"operator": "Exists", "effect": "NoExecute"}, ["infra-ne"]),
        ({"key": "dedicated", "operator": "Lt", "value": "infra"}, []),  # unknown operator: tolerates nothing
    ],
)
def test_each_toleration_form(toleration: dict[str, Any], expected: list[str]) -> None:
    nodes = [
        gpu_node("infra-ns", {}, Taint("dedicated", "infra", "NoSchedule")),
        gpu_node("infra-ne", {}, Taint("dedicated", "infra", "NoExecute")),
        gpu_node("ml-ns", {}, Taint("dedicated", "ml", "NoSchedule")),
        gpu_node("other-ns", {}, Taint("other", "", "NoSchedule")),
    ]
    assert admitted({"tolerations": [toleration]}, *nodes) == expected


def test_every_taint_of_a_node_must_be_tolerated() -> None:
    node = gpu_node("h1", {}, Taint("a", "1", "NoSchedule"), Taint("b", "1", "NoSchedule"))
    assert admitted({"tolerations": [{"key": "a", "operator": "Exists"}]}, node) == []
    assert admitted(
        {"tolerations": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}]}, node
    ) == ["h1"]


def test_the_builder_toleration_for_the_accelerator_counts() -> None:
    gpu_tainted = gpu_node("gpu-ns", {}, Taint("nvidia.com/gpu", "present", "NoSchedule"))
    gpu_evicting = gpu_node("gpu-ne", {}, Taint("nvidia.com/gpu", "present", "NoExecute"))
    # The pod builder adds {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}.
    assert admitted({}, gpu_tainted, gpu_evicting) == ["gpu-ns"]
    # A template's toleration of that key that does not tolerate the taint's value leaves the builder's in.
    own = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "other", "effect": "NoSchedule"}
    assert admitted({"tolerations": [own]}, gpu_tainted) == ["gpu-ns"]
    # One that tolerates every value of the key with NoSchedule takes its place.
    every = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert admitted({"tolerations": [every]}, gpu_tainted) == ["gpu-ns"]


def test_a_cordoned_node_admits_only_a_pod_tolerating_the_unschedulable_taint() -> None:
    cordoned = NodeFacts("h1", H100, {"nvidia.com/gpu": "8"}, schedulable=False)
    assert admitted({}, cordoned) == []
    assert admitted({"tolerations": [{"operator": "Exists"}]}, cordoned) == ["h1"]
    unschedulable = {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}
    assert admitted({"tolerations": [unschedulable]}, cordoned) == ["h1"]


def test_node_facts_keep_the_taints() -> None:
    node = node_facts(
        {
            "metadata": {"name": "h1", "labels": H100},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoExecute"}, "not a taint"]},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}},
        }
    )
    assert node.taints == (Taint("nvidia.com/gpu", "", "NoExecute"),)
    assert admitted({}, node) == []


def test_a_template_of_the_wrong_shape_is_read_without_error() -> None:
    assert template_pod_spec(None) == {} and template_pod_spec({"template": ["x"]}) == {}
    garbage = {"nodeSelector": ["team"], "affinity": "near", "tolerations": {"key": "a"}}
    assert placement_of(garbage) == Placement({}, (), ())
    bad_term = required(
        {"matchExpressions": ["team"]},
        {"matchExpressions": [{"key": "team", "operator": "In", "values": "a"}]},
    )
    assert admitted(bad_term, gpu_node("h1", {"team": "a"})) == []


# ------------------------------------------------------------------ GKE nodes with split or shared GPUs


def gke_node(name: str, accelerator: str, devices: int, **labels: str) -> dict[str, Any]:
    """A GKE GPU node as the API server returns it (no GPU Operator: GKE's own labels and taint)."""
    return {
        "metadata": {
            "name": name,
            "uid": name,
            "labels": {"cloud.google.com/gke-accelerator": accelerator, **labels},
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "94", "memory": "1000Gi", "nvidia.com/gpu": str(devices)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


GKE_NODES = [
    gke_node("a100-whole", "nvidia-tesla-a100", 8),
    # a2-highgpu-1g, gpu-partition-size=1g.5gb: 7 x nvidia.com/gpu of 5 GB, not 7 A100s of 40 GB
    gke_node("a100-mig", "nvidia-tesla-a100", 7, **{"cloud.google.com/gke-gpu-partition-size": "1g.5gb"}),
    # one T4 time-shared by 8 clients, one L4 by 4 under MPS
    gke_node(
        "t4-shared",
        "nvidia-tesla-t4",
        8,
        **{
            "cloud.google.com/gke-gpu-sharing-strategy": "time-sharing",
            "cloud.google.com/gke-max-shared-clients-per-gpu": "8",
        },
    ),
    gke_node(
        "l4-mps",
        "nvidia-l4",
        4,
        **{
            "cloud.google.com/gke-gpu-sharing-strategy": "mps",
            "cloud.google.com/gke-max-shared-clients-per-gpu": "4",
        },
    ),
]


def test_gke_nodes_whose_gpus_are_split_or_shared_are_neither_counted_nor_sized_for() -> None:
    facts = [node_facts(node) for node in GKE_NODES]
    for inventory in (build_inventory(facts, {}, CATALOG), InventoryMemo().inventory(facts, {}, CATALOG)):
        assert [(node.name, node.accelerator, node.allocatable) for node in inventory.placeable] == [
            ("a100-whole", "nvidia-a100-40gb", 8)
        ]
        assert inventory.excluded == []
        assert set(inventory.pools) == {"nvidia-a100-40gb"}
    # A job on T4s is sized as if no T4 were there, not for 8 whole T4s on one node.
    spec = quickstart_spec({})
    spec["resources"] = {"accelerator": "nvidia-t4"}
    sizing, _ = decide_on(spec, facts)
    assert "no node in the cluster carries nvidia-t4" in " ".join(sizing["warnings"])


def test_a_worker_for_whole_gpus_is_kept_off_split_or_shared_gke_nodes() -> None:
    facts = [node_facts(node) for node in GKE_NODES]
    spec = quickstart_spec({})
    spec["resources"] = {"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 4}
    _, observation = decide_on(spec, facts)
    worker = decide(observation, CATALOG).worker_pod(0)["spec"]
    placement = placement_of(worker)
    tolerations = placement.tolerations_on("nvidia.com/gpu")
    admits = {
        node.name: placement.admits(node.name, node.labels, node.scheduling_taints, tolerations)
        for node in facts
    }
    assert admits == {"a100-whole": True, "a100-mig": False, "t4-shared": False, "l4-mps": False}


# ------------------------------------------------------------------ decide: the bug found with plan()


def quickstart_spec(pod_spec: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = copy.deepcopy(yaml.safe_load(QUICKSTART.read_text())["spec"])
    spec["template"]["spec"].update(pod_spec)
    return spec


def decide_on(spec: dict[str, Any], nodes: list[NodeFacts]) -> tuple[dict[str, Any], JobObservation]:
    inventory = build_inventory(nodes, {}, CATALOG, placement=placement_of(template_pod_spec(spec)))
    observation = JobObservation(
        job=JobRef(name="quickstart", namespace="team-a", uid="job-uid"),
        generation=1,
        spec=spec,
        status={},
        pods=[],
        inventory=inventory,
        now=datetime(2025, 1, 1, tzinfo=UTC),
        grant=4096,  # admitted with room to spare: sizing is what these tests look at
    )
    return decide(observation, CATALOG).status.model_dump(by_alias=True)["sizing"], observation


TEAM_NODES = [
    gpu_node("h100-a", {"team": "a"}),
    gpu_node("l4-1", {"team": "b"}, product=L4),
    gpu_node("l4-2", product=L4),
]


def test_quickstart_with_a_node_selector_is_planned_on_the_only_node_it_may_use() -> None:
    # Without the nodeSelector the quickstart fits the smallest accelerator, an L4 ...
    anywhere, _ = decide_on(quickstart_spec({}), TEAM_NODES)
    assert anywhere["accelerator"] == "nvidia-l4"
    # ... but only the H100 node carries team=a: the L4 nodes must not be planned on.
    sizing, observation = decide_on(quickstart_spec({"nodeSelector": {"team": "a"}}), TEAM_NODES)
    assert sizing["accelerator"] == "nvidia-h100-80gb" and sizing["fits"]
    assert [node.name for node in observation.inventory.placeable] == ["h100-a"]
    assert [node.name for node in observation.inventory.excluded] == ["l4-1", "l4-2"]
    assert not [warning for warning in sizing["warnings"] if "placement" in warning]


def test_the_built_worker_pod_lands_where_the_inventory_says() -> None:
    spec = quickstart_spec({"nodeSelector": {"team": "a"}, **required(expression("zone", "NotIn", "z9"))})
    _, observation = decide_on(spec, TEAM_NODES)
    decision = decide(observation, CATALOG)
    worker = decision.worker_pod(0)["spec"]
    assert worker["nodeSelector"] == {"team": "a"}
    # The pod's own affinity (the template's ANDed with the accelerator's) and tolerations admit the same node.
    assert admitted(worker, *TEAM_NODES) == ["h100-a"]


def test_no_node_matching_plans_from_the_catalog_and_says_why() -> None:
    sizing, observation = decide_on(quickstart_spec({"nodeSelector": {"team": "z"}}), TEAM_NODES)
    assert observation.inventory.placeable == [] and len(observation.inventory.excluded) == 3
    # As if the cluster were unknown: the smallest accelerator of the whole catalog that fits.
    assert sizing["accelerator"] == plan(parse_spec(observation.spec), CATALOG).accelerator != "nvidia-l4"
    placement = [warning for warning in sizing["warnings"] if "placement constraints" in warning]
    assert placement == [
        "no node matches the pod's placement constraints: the worker pod's nodeSelector, required node "
        "affinity and tolerations, or a cordon rule out all 3 accelerator nodes; sized against the whole "
        "catalog, the job waits in the queue, with no worker created"
    ]
    assert not [warning for warning in sizing["warnings"] if "no node in the cluster carries" in warning]


def test_a_fixed_accelerator_whose_nodes_are_all_ruled_out_is_warned() -> None:
    spec = quickstart_spec({"nodeSelector": {"team": "b"}})
    spec["resources"] = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1}
    sizing, observation = decide_on(spec, TEAM_NODES)
    assert [node.name for node in observation.inventory.placeable] == ["l4-1"]
    assert sizing["accelerator"] == "nvidia-h100-80gb"
    assert "no nvidia-h100-80gb node matches the pod's placement constraints" in " ".join(sizing["warnings"])
