"""Which catalog accelerator a node carries, from its labels as real clusters write them (Catalog.identify).

GKE keeps `cloud.google.com/gke-accelerator` on nodes whose GPUs it splits or shares; an operator's own
catalog entries are tried before the built-in ones; the AMD terms use what the ROCm node labeller writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubefit.controller.cluster import remembering
from kubefit.sizing import catalog as catalog_module
from kubefit.sizing.catalog import Catalog, load_catalog, parse_catalog

CATALOG = load_catalog()

GKE_A100 = {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
PARTITION = "cloud.google.com/gke-gpu-partition-size"
SHARING = "cloud.google.com/gke-gpu-sharing-strategy"
CLIENTS = "cloud.google.com/gke-max-shared-clients-per-gpu"


def identified(labels: dict[str, str], catalog: Catalog = CATALOG) -> str | None:
    accelerator = catalog.identify(labels)
    return accelerator.name if accelerator is not None else None


def entry(name: str, *match: dict[str, str], memory_mib: int = 4864) -> str:
    terms = "".join(f"\n  - {term}" for term in match)
    return f"- name: {name}\n  memoryMiB: {memory_mib}\n  resourceName: nvidia.com/gpu\n  match:{terms}\n"


def extra(*entries: str) -> list:
    return parse_catalog("accelerators:\n" + "".join(entries), "extra.yaml")


# ------------------------------------------------------------------ GKE multi-instance and shared GPUs


@pytest.mark.parametrize(
    ("accelerator", "labels"),
    [
        # a2-highgpu-1g with gpu-partition-size=1g.5gb: 7 x nvidia.com/gpu, 5 GB each (GKE how-to/gpus-multi)
        ("nvidia-tesla-a100", {PARTITION: "1g.5gb"}),
        ("nvidia-h100-80gb", {PARTITION: "1g.10gb"}),
        # time-sharing, 8 clients: 8 x nvidia.com/gpu on one T4 (GKE concepts/timesharing-gpus)
        ("nvidia-tesla-t4", {SHARING: "time-sharing", CLIENTS: "8"}),
        # NVIDIA MPS (GKE how-to/nvidia-mps-gpus)
        ("nvidia-l4", {SHARING: "mps", CLIENTS: "4"}),
        # time-sharing on MIG partitions: 7 x 3 shares of one A100
        ("nvidia-tesla-a100", {PARTITION: "1g.5gb", SHARING: "time-sharing", CLIENTS: "3"}),
        ("nvidia-tesla-t4", {CLIENTS: "2"}),  # either label alone says the GPU is shared
    ],
)
def test_a_gke_node_whose_gpus_are_split_or_shared_is_no_whole_gpu_accelerator(
    accelerator: str, labels: dict[str, str]
) -> None:
    whole = {"cloud.google.com/gke-accelerator": accelerator}
    assert identified(whole) is not None
    assert identified({**whole, **labels}) is None


def test_a_gfd_labelled_node_with_gke_shared_gpus_is_not_identified_either() -> None:
    # The GPU Operator on GKE: GFD's product label is unchanged, the devices are GKE's shares all the same.
    gfd = {"nvidia.com/gpu.product": "NVIDIA-L4", "cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert identified(gfd) == "nvidia-l4"
    assert identified({**gfd, SHARING: "time-sharing", CLIENTS: "4"}) is None


def test_an_entry_that_names_the_partition_label_identifies_the_partitioned_node() -> None:
    slices = extra(entry("a100-1g5gb", {**GKE_A100, PARTITION: "1g.5gb"}))
    catalog = CATALOG.extended(slices)
    assert identified({**GKE_A100, PARTITION: "1g.5gb"}, catalog) == "a100-1g5gb"
    assert identified({**GKE_A100, PARTITION: "2g.10gb"}, catalog) is None
    # Its slices shared in turn are still not what it describes: it does not name the sharing labels.
    assert (
        identified({**GKE_A100, PARTITION: "1g.5gb", SHARING: "time-sharing", CLIENTS: "3"}, catalog) is None
    )
    assert identified(GKE_A100, catalog) == "nvidia-a100-40gb"


def test_the_shared_gpu_labels_are_gkes() -> None:
    assert catalog_module.SHARED_GPU_LABELS == (PARTITION, SHARING, CLIENTS)


# ------------------------------------------------------------------ an operator's entries come first

H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
RESERVED = {**H100, "example.com/pool": "reserved"}


def test_an_extra_entry_wins_over_a_built_in_one_the_node_also_matches() -> None:
    catalog = CATALOG.extended(extra(entry("h100-reserved", RESERVED, memory_mib=70000)))
    assert identified(RESERVED, catalog) == "h100-reserved"
    assert identified(H100, catalog) == "nvidia-h100-80gb"  # the built-in one still identifies the others
    assert catalog.names()[: len(CATALOG)] == CATALOG.names()  # listed after the built-in ones, as before


def test_an_extra_catalog_file_wins_through_load_catalog_and_the_controller_s_remembering_catalog(
    tmp_path: Path,
) -> None:
    path = tmp_path / "accelerators.yaml"
    path.write_text(
        "accelerators:\n"
        + entry("a100-1g5gb", {**GKE_A100, PARTITION: "1g.5gb"})
        + entry("h100-reserved", RESERVED, memory_mib=70000)
    )
    for catalog in (load_catalog(str(path)), remembering(load_catalog(str(path)))):
        assert identified(RESERVED, catalog) == "h100-reserved"
        assert identified({**GKE_A100, PARTITION: "1g.5gb"}, catalog) == "a100-1g5gb"
        assert identified(H100, catalog) == "nvidia-h100-80gb"
    assert identified(RESERVED, remembering(CATALOG).extended(extra(entry("mine", RESERVED)))) == "mine"


def test_extra_entries_are_tried_in_their_order_the_latest_extension_first() -> None:
    both = extra(entry("first", H100), entry("second", RESERVED))
    assert identified(RESERVED, CATALOG.extended(both)) == "first"
    later = CATALOG.extended(extra(entry("earlier", H100))).extended(extra(entry("later", H100)))
    assert identified(H100, later) == "later"
    assert identified(H100, Catalog(later)) == "later"  # a catalog made from another keeps the order


def test_replacing_a_built_in_entry_by_name_replaces_its_terms_and_keeps_its_place() -> None:
    tighter = {**H100, "nvidia.com/gpu.memory": "81559"}
    replaced = CATALOG.extended(extra(entry("nvidia-h100-80gb", tighter, memory_mib=80000)))
    assert replaced.names() == CATALOG.names()
    accelerator = replaced.identify(tighter)
    assert accelerator is not None and accelerator.name == "nvidia-h100-80gb"
    assert accelerator.memory_bytes == 80000 * 2**20  # the replacement, not the built-in entry
    assert replaced.identify(H100) is None  # the built-in entry's terms are gone with it


# ------------------------------------------------------------------ AMD, as the ROCm node labeller writes


# ROCm/k8s-device-plugin docs/user-guide/installation.md, "Example labels for an AMD MI300X GPU".
MI300X = {
    "amd.com/gpu.cu-count": "304",
    "amd.com/gpu.device-id": "74a1",
    "amd.com/gpu.family": "AI",
    "amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM",
    "amd.com/gpu.simd-count": "1216",
    "amd.com/gpu.vram": "192G",
}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (MI300X, "amd-mi300x"),
        ({"amd.com/gpu.device-id": "74a1", "amd.com/gpu.vram": "192G"}, "amd-mi300x"),  # no product name
        ({"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM", "amd.com/gpu.vram": "192G"}, "amd-mi300x"),
        ({**MI300X, "amd.com/gpu.vram": "191G"}, "amd-mi300x"),  # OpenShift's example of the labeller
        ({**MI300X, "amd.com/gpu.vram": "24G"}, None),  # devices of a quarter the memory: not whole MI300Xs
        ({"amd.com/gpu.vram": "192G", "amd.com/gpu.family": "AI"}, None),  # a size is no device
        ({"amd.com/gpu.device-id": "7408", "amd.com/gpu.vram": "64G"}, "amd-mi250x"),
        # MI210 (amdgpu.ids 740F) and a Strix Halo APU: 64G as one MI250X GCD, and neither is one
        (
            {
                "amd.com/gpu.product-name": "AMD_Instinct_MI210",
                "amd.com/gpu.device-id": "740f",
                "amd.com/gpu.vram": "64G",
                "amd.com/gpu.family": "AI",
            },
            None,
        ),
        (
            {
                "amd.com/gpu.product-name": "AMD_Radeon_8060S_Graphics",
                "amd.com/gpu.device-id": "1586",
                "amd.com/gpu.vram": "64G",
                "amd.com/gpu.family": "GC_11_5_0",
            },
            None,
        ),
        ({"amd.com/gpu.device-id": "740c", "amd.com/gpu.vram": "64G"}, None),  # "MI250X / MI250"
        ({"amd.com/gpu.vram": "64G"}, None),
    ],
)
def test_amd_nodes_as_the_rocm_node_labeller_labels_them(
    labels: dict[str, str], expected: str | None
) -> None:
    assert identified(labels) == expected


# ------------------------------------------------------------------ V100


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"cloud.google.com/gke-accelerator": "nvidia-tesla-v100"}, "nvidia-v100-16gb"),
        ({"nvidia.com/gpu.product": "Tesla-V100-PCIE-32GB"}, "nvidia-v100-32gb"),
        ({"nvidia.com/gpu.product": "Tesla-V100-SXM2-32GB"}, "nvidia-v100-32gb"),
        ({"nvidia.com/gpu.product": "Tesla-V100-PCIE-16GB"}, "nvidia-v100-16gb"),
    ],
)
def test_v100_nodes_of_gke_and_of_gfd(labels: dict[str, str], expected: str) -> None:
    assert identified(labels) == expected


def test_every_built_in_entry_identifies_the_labels_it_documents() -> None:
    # The sandbox labels its simulated nodes with an entry's nodeLabels: they must be identified as it.
    for accelerator in CATALOG:
        assert accelerator.node_labels, accelerator.name
        assert identified(dict(accelerator.node_labels)) == accelerator.name
