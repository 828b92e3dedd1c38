"""TPU slices: hosts of multi-host slices are neither counted nor admitted, and TPU memory is XLA's limit."""

from __future__ import annotations

from typing import Any

import pytest

from kubefit.api.models import MemoryBreakdown, SizingStatus
from kubefit.api.validation import parse_spec
from kubefit.builders.naming import JobRef
from kubefit.builders.placement import accelerator_terms
from kubefit.builders.pods import WorkerSet, build_worker_pod
from kubefit.decisions.inventory import InventoryMemo, build_inventory, node_facts
from kubefit.decisions.node_match import node_taints, placement_of
from kubefit.sizing.catalog import is_multi_host_slice_host, load_catalog, slice_topologies, topology_chips
from kubefit.sizing.planner import plan

CATALOG = load_catalog()
GIB = 2**30
TOPOLOGY = "cloud.google.com/gke-tpu-topology"
V5E_LABEL = {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice"}


def tpu_node(name: str, chips: int, topology: str | None, machine_type: str) -> dict[str, Any]:
    """A GKE v5e node as the kubelet reports it: tainted google.com/tpu, `chips` chips."""
    labels = {**V5E_LABEL, "node.kubernetes.io/instance-type": machine_type, "kubernetes.io/hostname": name}
    if topology is not None:
        labels["cloud.google.com/gke-tpu-topology"] = topology
    resources = {"google.com/tpu": str(chips), "cpu": "110", "memory": "180Gi"}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [{"key": "google.com/tpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


NODES = [
    tpu_node("slice-host", 4, "2x4", "ct5lp-hightpu-4t"),  # one of the 2 hosts of a 2x4 slice
    tpu_node("single-4", 4, "2x2", "ct5lp-hightpu-4t"),
    tpu_node("single-8", 8, "2x4", "ct5lp-hightpu-8t"),
    tpu_node("no-topology", 4, None, "tpu-vm"),  # TPU labels without GKE's topology: used as before
]


def test_topology_chips_multiply_the_dimensions() -> None:
    assert topology_chips({"cloud.google.com/gke-tpu-topology": "2x4"}) == 8
    assert topology_chips({"cloud.google.com/gke-tpu-topology": "2x2x1"}) == 4
    assert topology_chips({"cloud.google.com/gke-tpu-topology": "two"}) is None
    assert topology_chips({}) is None
    assert is_multi_host_slice_host({"cloud.google.com/gke-tpu-topology": "2x4"}, 4)
    assert not is_multi_host_slice_host({"cloud.google.com/gke-tpu-topology": "2x4"}, 8)


def test_a_host_of_a_multi_host_slice_is_not_placeable() -> None:
    facts = [node_facts(node) for node in NODES]
    inventory = build_inventory(facts, {}, CATALOG)
    assert [node.name for node in inventory.placeable] == ["no-topology", "single-4", "single-8"]
    assert inventory.excluded == []
    remembered = InventoryMemo().inventory(facts, {}, CATALOG)
    assert [node.name for node in remembered.placeable] == ["no-topology", "single-4", "single-8"]


def v5e_worker(chips: int) -> dict[str, Any]:
    spec = parse_spec(
        {
            "template": {"spec": {"containers": [{"name": "trainer", "image": "ghcr.io/acme/jax:1"}]}},
            "framework": "jax",
            "model": {"parameters": "300M"},
            "resources": {"accelerator": "google-tpu-v5e", "acceleratorsPerWorker": chips},
            "workers": {"replicas": 1},
        }
    )
    entry = CATALOG.get("google-tpu-v5e")
    assert entry is not None
    sizing = SizingStatus(
        accelerator=entry.name,
        resource_name=entry.resource_name,
        device_memory_bytes=entry.memory_bytes,
        accelerators_per_worker=chips,
        min_workers=1,
        per_device_bytes=GIB,
        fits=True,
        breakdown=MemoryBreakdown(
            weights=1, gradients=1, optimizer_states=1, activations=1, logits=1, overhead=1
        ),
    )
    workers = WorkerSet(
        job=JobRef("gemma", "ml", "uid"),
        spec=spec,
        sizing=sizing,
        accelerator=entry,
        workers=1,
        min_workers=1,
        max_workers=1,
    )
    return build_worker_pod(workers, 0)["spec"]


def admitted_by(pod_spec: dict[str, Any]) -> list[str]:
    placement = placement_of(pod_spec)
    return [
        node["metadata"]["name"]
        for node in NODES
        if placement.admits(
            node["metadata"]["name"],
            node["metadata"]["labels"],
            node_taints(node["spec"]),
            pod_spec["tolerations"],
        )
    ]


@pytest.mark.parametrize(
    ("chips", "expected"),
    [
        # A 2x4 node takes a worker of up to 4 chips only on a machine type no multi-host slice uses.
        (1, ["single-4", "single-8", "no-topology"]),
        (4, ["single-4", "single-8", "no-topology"]),
        # A 4-chip host cannot hold 8 chips: every 2x4 node with room for the worker is a whole slice.
        (8, ["slice-host", "single-8", "no-topology"]),
    ],
)
def test_a_tpu_worker_is_kept_off_hosts_of_multi_host_slices(chips: int, expected: list[str]) -> None:
    assert admitted_by(v5e_worker(chips)) == expected


def test_slice_topologies_hold_the_worker() -> None:
    assert slice_topologies(1) == (("1x1", "2x2", "2x2x1"), ("2x4",))
    assert slice_topologies(4) == (("2x2", "2x2x1"), ("2x4",))
    assert slice_topologies(8) == (("2x4",), ())


def test_only_a_tpu_worker_gets_a_topology_requirement() -> None:
    h100 = CATALOG.get("nvidia-h100-80gb")
    assert h100 is not None
    assert TOPOLOGY not in str(accelerator_terms(h100.match))
    assert TOPOLOGY in str(v5e_worker(4)["affinity"]["nodeAffinity"])


def v6e_spec(sequence_length: int) -> Any:
    return parse_spec(
        {
            "template": {"spec": {"containers": [{"name": "t", "image": "x"}]}},
            "framework": "jax",
            "training": {
                "sharding": "fsdp",
                "activationCheckpointing": "full",
                "microBatchSize": 1,
                "sequenceLength": sequence_length,
            },
            "model": {"precision": "bf16-true", "optimizer": "adamw", "parameters": "3B"},
            "resources": {"accelerator": "google-tpu-v6e", "acceleratorsPerWorker": 1, "memoryHeadroom": 0.0},
            "workers": {"replicas": 1},
        }
    )


def test_a_v6e_plan_over_xlas_limit_does_not_fit() -> None:
    """XLA lets a program use 31.25 GiB of a v6e chip ("Used X of 31.25G hbm"); the estimate carries the
    0.25 GiB TPU runtime reserve on top of the program."""
    sizing = plan(v6e_spec(5632))
    program = sizing.per_device_bytes - GIB // 4
    assert 31.25 * GIB < program < 32 * GIB - GIB // 4  # fitted 32 GiB with the reserve
    assert not sizing.fits
    assert plan(v6e_spec(5120)).fits  # 31.01 GiB of program: within XLA's limit


@pytest.mark.parametrize("vendor", ["google", "Google", None])
def test_a_tpu_entry_carries_the_tpu_runtime_reserve_whatever_its_vendor_says(vendor: str | None) -> None:
    """install.md has a TPU entry's memory given as XLA's limit plus the 256 MiB TPU reserve: an entry of
    one's own for google.com/tpu carried the GPU's 0.75 GiB unless its `vendor` was exactly `google`."""
    from kubefit.sizing.catalog import parse_catalog
    from kubefit.sizing.estimator import Layout, estimate

    stated = f"vendor: {vendor}, " if vendor else ""
    entry = (
        f"accelerators: [{{name: my-v6e, {stated}memoryMiB: 32256, resourceName: google.com/tpu, "
        "perNode: [1, 4, 8], match: [{cloud.google.com/gke-tpu-accelerator: tpu-v6e-slice}]}]"
    )
    mine = parse_catalog(entry)[0]
    assert mine.is_tpu
    built_in = CATALOG.get("google-tpu-v6e")
    assert built_in is not None
    spec = v6e_spec(4096)
    ours, theirs = estimate(spec, mine, Layout(1, 1)), estimate(spec, built_in, Layout(1, 1))
    assert ours.runtime_reserve == theirs.runtime_reserve == GIB // 4
    assert ours.total == theirs.total
