"""The sandbox cluster file (node pools) and the Node objects built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubefit.sizing.catalog import is_multi_host_slice_host, load_catalog
from kubefit_sandbox.cluster import (
    ACCELERATOR_LABEL,
    NOT_READY_TAINT_KEY,
    POOL_LABEL,
    PROCESSES_LABEL,
    ClusterConfigError,
    build_node,
    free_node_index,
    load_cluster_config,
    node_addresses,
    parse_cluster_config,
    without_not_ready_taint,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sandbox" / "cluster.yaml"
NOW = "2026-01-02T03:04:05Z"


def parse(text: str):
    return parse_cluster_config(text, "test.yaml")


def only_pool(text: str):
    (pool,) = parse(text).pools
    return pool


# ---------------------------------------------------------------------------------------------
# The example file
# ---------------------------------------------------------------------------------------------


def test_example_cluster_file_parses_into_the_documented_pools() -> None:
    config = load_cluster_config(EXAMPLE)
    summary = {
        pool.name: (pool.accelerator_name, pool.nodes, pool.accelerators_per_node) for pool in config.pools
    }
    assert summary == {
        "h100": ("nvidia-h100-80gb", 2, 8),
        "a100": ("nvidia-a100-40gb", 2, 8),
        "l4": ("nvidia-l4", 1, 4),
        "tpu-v5e": ("google-tpu-v5e", 2, 4),
        "cpu": ("none", 1, 0),
    }
    assert config.node_names() == [
        "h100-0", "h100-1", "a100-0", "a100-1", "l4-0", "tpu-v5e-0", "tpu-v5e-1", "cpu-0",
    ]  # fmt: skip


def test_every_example_pool_accelerator_is_in_the_catalog_it_was_checked_against() -> None:
    catalog = load_catalog()
    for pool in load_cluster_config(EXAMPLE).pools:
        assert pool.accelerator is None or pool.accelerator is catalog.get(pool.accelerator.name)


# ---------------------------------------------------------------------------------------------
# Defaults and accepted forms
# ---------------------------------------------------------------------------------------------


def test_defaults_for_an_accelerator_pool() -> None:
    pool = only_pool("pools: [{name: big, accelerator: nvidia-a100-40gb}]")
    assert pool.nodes == 1
    # The catalog's largest perNode for the A100 40GB entry is 16.
    assert pool.accelerators_per_node == max(load_catalog().get("nvidia-a100-40gb").per_node) == 16
    assert (pool.cpu, pool.memory, pool.ephemeral_storage, pool.pods) == ("32", "128Gi", "500Gi", 110)
    assert pool.instance_type == "sandbox-16x-nvidia-a100-40gb"


def test_cpu_only_pool_with_accelerator_none_or_omitted() -> None:
    omitted = only_pool("pools: [{name: cpu, cpu: 8, memory: 16Gi}]")
    explicit = only_pool("pools: [{name: cpu, accelerator: none, cpu: 8, memory: 16Gi}]")
    assert omitted == explicit
    assert omitted.accelerator is None and omitted.accelerators_per_node == 0
    assert omitted.instance_type == "sandbox-cpu-8"


def test_quantities_in_their_kubernetes_forms() -> None:
    pool = only_pool("pools: [{name: x, cpu: 1500m, memory: 512Mi, ephemeralStorage: 1T, pods: 20}]")
    assert (pool.cpu, pool.memory, pool.ephemeral_storage, pool.pods) == ("1500m", "512Mi", "1T", 20)


def test_zero_nodes_is_allowed_for_a_pool_to_fill_later() -> None:
    assert only_pool("pools: [{name: later, accelerator: nvidia-l4, nodes: 0}]").node_names() == []


def test_labels_and_taints_are_kept() -> None:
    pool = only_pool(
        "pools: [{name: x, labels: {team: ml, spot: true},"
        " taints: [{key: nvidia.com/gpu, effect: NoSchedule}]}]"
    )
    assert pool.labels == {"team": "ml", "spot": "true"}
    assert pool.taints == ({"key": "nvidia.com/gpu", "effect": "NoSchedule"},)


# ---------------------------------------------------------------------------------------------
# Bad input: each error names the file, the pool and the field
# ---------------------------------------------------------------------------------------------


def test_unknown_accelerator_lists_the_known_names() -> None:
    with pytest.raises(ClusterConfigError) as error:
        parse("pools: [{name: h100, accelerator: nvidia-h1000}]")
    message = str(error.value)
    assert "test.yaml: pools[0](h100).accelerator" in message
    assert "'nvidia-h1000'" in message
    for known in ("nvidia-h100-80gb", "google-tpu-v5e", "amd-mi300x"):
        assert known in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("pools: [{name: a, nodes: -1}]", "pools[0](a).nodes"),
        ("pools: [{name: a, nodes: two}]", "pools[0](a).nodes"),
        ("pools: [{name: a, nodes: true}]", "pools[0](a).nodes"),
        (
            "pools: [{name: a, accelerator: nvidia-l4, acceleratorsPerNode: 0}]",
            "pools[0](a).acceleratorsPerNode",
        ),
        ("pools: [{name: a, acceleratorsPerNode: 4}]", "pools[0](a).acceleratorsPerNode"),
        ("pools: [{name: a, cpu: -2}]", "pools[0](a).cpu"),
        ("pools: [{name: a, cpu: lots}]", "pools[0](a).cpu"),
        ("pools: [{name: a, memory: 1TB}]", "pools[0](a).memory"),
        ("pools: [{name: a, memory: 0}]", "pools[0](a).memory"),
        ("pools: [{name: a, ephemeralStorage: big}]", "pools[0](a).ephemeralStorage"),
        ("pools: [{name: a, pods: 0}]", "pools[0](a).pods"),
        ("pools: [{name: a, labels: [x]}]", "pools[0](a).labels"),
        (
            "pools: [{name: a, labels: {kubefit.dev/sandbox-pool: b}}]",
            "pools[0](a).labels.kubefit.dev/sandbox-pool",
        ),
        ("pools: [{name: a, taints: [{key: k, effect: Sometimes}]}]", "pools[0](a).taints[0].effect"),
        ("pools: [{name: a, taints: [{effect: NoSchedule}]}]", "pools[0](a).taints[0].key"),
        ("pools: [{name: a, acceleratorPerNode: 8}]", "pools[0]: unknown field(s) acceleratorPerNode"),
        ("pools: [{name: H100}]", "pools[0].name"),
        ("pools: [{name: a_b}]", "pools[0].name"),
        ("pools: [{nodes: 2}]", "pools[0].name"),
        ("pools: [{name: a}, {name: a}]", "pools[1].name 'a' is used by an earlier pool"),
        ("pools: [x]", "pools[0] must be a mapping"),
        ("pools: [{name: a, processes: 'yes'}]", "pools[0](a).processes must be true or false"),
        ("pools: [{name: a, processes: 1}]", "pools[0](a).processes must be true or false"),
        (
            "pools: [{name: a, labels: {kubefit.dev/sandbox-processes: 'true'}}]",
            "pools[0](a).labels.kubefit.dev/sandbox-processes",
        ),
    ],
)
def test_bad_pool_fields_are_named(text: str, field: str) -> None:
    with pytest.raises(ClusterConfigError) as error:
        parse(text)
    assert f"test.yaml: {field}" in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pools: {name: a}", "expected a top-level 'pools' list"),
        ("nodes: []", "expected a top-level 'pools' list"),
        ("", "expected a top-level 'pools' list"),
        ("pools: []\nnodes: 3", "unknown top-level field(s) nodes"),
        ("pools: [", "not valid YAML"),
    ],
)
def test_bad_documents(text: str, expected: str) -> None:
    with pytest.raises(ClusterConfigError, match="test.yaml: ") as error:
        parse(text)
    assert expected in str(error.value)


def test_more_nodes_than_address_blocks_are_refused() -> None:
    with pytest.raises(ClusterConfigError, match="257 nodes in all; the sandbox supports at most 256"):
        parse("pools: [{name: a, nodes: 200}, {name: b, nodes: 57}]")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ClusterConfigError, match=f"{missing}: cannot read cluster file"):
        load_cluster_config(missing)


# ---------------------------------------------------------------------------------------------
# Node objects
# ---------------------------------------------------------------------------------------------


def test_h100_node_carries_the_labels_and_capacity_of_a_real_one() -> None:
    pool = load_cluster_config(EXAMPLE).pool("h100")
    node = build_node(pool, "h100-1", index=1, now=NOW)
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"  # from the catalog (GFD label)
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["kubernetes.io/hostname"] == "h100-1"
    assert labels["kubernetes.io/os"] == "linux" and labels["kubernetes.io/arch"] == "amd64"
    assert labels["node.kubernetes.io/instance-type"] == "sandbox-8x-nvidia-h100-80gb"
    assert labels[POOL_LABEL] == "h100" and labels[ACCELERATOR_LABEL] == "nvidia-h100-80gb"
    expected = {
        "cpu": "96",
        "memory": "1Ti",
        "ephemeral-storage": "500Gi",
        "pods": "110",
        "nvidia.com/gpu": "8",
    }
    assert node["status"]["capacity"] == expected
    assert node["status"]["allocatable"] == expected
    assert "taints" not in node["spec"]


def test_tpu_node_uses_the_tpu_resource_and_gke_labels_and_no_nvidia_labels() -> None:
    pool = load_cluster_config(EXAMPLE).pool("tpu-v5e")
    node = build_node(pool, "tpu-v5e-0", index=5, now=NOW)
    labels = node["metadata"]["labels"]
    assert labels["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5-lite-podslice"
    assert labels["cloud.google.com/gke-tpu-topology"] == "2x2"
    assert not any(key.startswith("nvidia.com/") for key in labels)
    assert node["status"]["capacity"]["google.com/tpu"] == "4"
    assert "nvidia.com/gpu" not in node["status"]["capacity"]


def test_cpu_node_has_no_extended_resource() -> None:
    node = build_node(load_cluster_config(EXAMPLE).pool("cpu"), "cpu-0", index=7, now=NOW)
    assert set(node["status"]["capacity"]) == {"cpu", "memory", "ephemeral-storage", "pods"}
    assert node["metadata"]["labels"][ACCELERATOR_LABEL] == "none"


def test_node_reports_ready_and_no_pressure_with_the_given_heartbeat() -> None:
    node = build_node(only_pool("pools: [{name: a}]"), "a-0", index=0, now=NOW)
    conditions = {c["type"]: c for c in node["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert all(
        conditions[kind]["status"] == "False" for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")
    )
    assert {c["lastHeartbeatTime"] for c in conditions.values()} == {NOW}


def test_user_labels_cannot_hide_the_pool_label_and_pool_taints_are_set() -> None:
    pool = only_pool(
        "pools: [{name: a, labels: {team: ml}, taints: [{key: gpu, value: 'yes', effect: NoSchedule}]}]"
    )
    node = build_node(pool, "a-0", index=0, now=NOW)
    assert node["metadata"]["labels"]["team"] == "ml"
    assert node["spec"]["taints"] == [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]


def test_node_addresses_are_unique_per_index() -> None:
    addresses = [node_addresses(index, f"n{index}") for index in range(256)]
    assert len({ip for ip, _ in addresses}) == 256
    assert len({cidr for _, cidr in addresses}) == 256
    assert addresses[0] == ("10.240.0.2", "10.244.0.0/24")
    assert addresses[255] == ("10.240.1.7", "10.244.255.0/24")
    with pytest.raises(ValueError, match="node index 256 out of range"):
        node_addresses(256, "n")


def test_bad_node_name_is_refused() -> None:
    with pytest.raises(ValueError, match="node name 'GPU_0'"):
        build_node(only_pool("pools: [{name: a}]"), "GPU_0", index=0, now=NOW)


def test_free_node_index_skips_used_cidrs_and_ignores_foreign_ones() -> None:
    assert free_node_index([]) == 0
    assert free_node_index(["10.244.0.0/24", "10.244.2.0/24", None, "192.168.0.0/24"]) == 1
    with pytest.raises(ValueError, match="all 256 node address blocks are in use"):
        free_node_index(f"10.244.{i}.0/24" for i in range(256))


def test_only_the_not_ready_taint_is_removed() -> None:
    taints = [
        {"key": NOT_READY_TAINT_KEY, "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "effect": "NoSchedule"},
    ]
    assert without_not_ready_taint(taints) == [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    assert without_not_ready_taint(None) == []


def test_a_processes_pool_labels_its_nodes_and_other_pools_do_not() -> None:
    config = parse("pools: [{name: run, processes: true}, {name: sim, accelerator: nvidia-l4}]")
    running, simulated = config.pools
    assert running.processes and not simulated.processes
    assert build_node(running, "run-0", index=0, now=NOW)["metadata"]["labels"][PROCESSES_LABEL] == "true"
    assert PROCESSES_LABEL not in build_node(simulated, "sim-0", index=1, now=NOW)["metadata"]["labels"]


@pytest.mark.parametrize(
    ("accelerator", "chips", "topology"),
    [
        ("google-tpu-v5e", 1, "1x1"),
        ("google-tpu-v5e", 4, "2x2"),
        ("google-tpu-v6e", 8, "2x4"),
        ("google-tpu-v5p", 4, "2x2x1"),
    ],
)
def test_a_tpu_node_is_labelled_a_single_host_slice_of_its_chips(
    accelerator: str, chips: int, topology: str
) -> None:
    # The catalog's one label on a node of another chip count read as a host of a multi-host slice, which the
    # inventory leaves out (a 1-chip v5e labelled 2x2).
    pool = only_pool(f"pools: [{{name: t, accelerator: {accelerator}, acceleratorsPerNode: {chips}}}]")
    labels = build_node(pool, "t-0", index=0, now=NOW)["metadata"]["labels"]
    assert labels["cloud.google.com/gke-tpu-topology"] == topology
    assert not is_multi_host_slice_host(labels, chips)


def test_a_process_pool_is_tainted_and_the_elastic_example_tolerates_it() -> None:
    # Untainted, a process pool took other jobs' workers (a job scaled up, any `auto` one) and ran them as
    # real processes on the machine; the elastic-ddp example's sandbox manifest asks for it.
    import importlib.util

    node = build_node(only_pool("pools: [{name: p, processes: true}]"), "p-0", index=0, now=NOW)
    taint = {"key": "kubefit.dev/sandbox-processes", "value": "true", "effect": "NoSchedule"}
    assert node["spec"]["taints"] == [taint]
    assert "taints" not in build_node(only_pool("pools: [{name: a}]"), "a-0", index=1, now=NOW)["spec"]
    path = Path(__file__).parents[2] / "examples" / "elastic-ddp" / "sandbox_manifest.py"
    spec = importlib.util.spec_from_file_location("sandbox_manifest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pod_spec = module.sandbox_manifest("/tmp/checkpoints")["spec"]["template"]["spec"]
    assert {**taint, "operator": "Equal"} in pod_spec["tolerations"]
