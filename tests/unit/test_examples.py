"""Every example manifest parses, is sized by the planner, and can be placed on the sandbox cluster.

The planner is being rewritten, so these tests check the structure of its answer, not its numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubefit.api.models import SizingStatus, TrainingJobSpec
from kubefit.api.validation import parse_spec
from kubefit.sizing.catalog import load_catalog
from kubefit.sizing.planner import NodeInventory, plan
from kubefit_sandbox.cluster import load_cluster_config

REPO = Path(__file__).resolve().parents[2]
# examples/sandbox/ holds cluster files, not jobs; a job with files of its own has a folder (elastic-ddp/).
EXAMPLES = sorted([*(REPO / "examples").glob("*.yaml"), *(REPO / "examples").glob("*/trainingjob.yaml")])
REQUIRED_EXAMPLES = {"quickstart.yaml", "llama3-8b-fsdp.yaml", "bert-large-dp.yaml", "jax-tpu-v5e.yaml"}

# The sandbox's simulated accelerator nodes, read from its cluster file: accelerator -> (nodes, devices
# per node). Every example must be placeable there, so that `kubefit-sandbox up` runs them all.
SANDBOX_CLUSTER = load_cluster_config(REPO / "examples" / "sandbox" / "cluster.yaml")
SANDBOX_POOLS = {
    pool.accelerator.name: (pool.nodes, pool.accelerators_per_node)
    for pool in SANDBOX_CLUSTER.pools
    if pool.accelerator is not None
}
SANDBOX_INVENTORY = [
    NodeInventory(name=f"{accelerator}-{index}", accelerator=accelerator, allocatable=devices, free=devices)
    for accelerator, (nodes, devices) in SANDBOX_POOLS.items()
    for index in range(nodes)
]


def _manifest(path: Path) -> dict[str, Any]:
    documents = [document for document in yaml.safe_load_all(path.read_text()) if document is not None]
    assert len(documents) == 1, f"{path.name}: one TrainingJob per example file"
    return documents[0]


def _spec(path: Path) -> TrainingJobSpec:
    return parse_spec(_manifest(path)["spec"])


def _workers_placeable(accelerator: str, devices_per_worker: int) -> int:
    """How many workers of `devices_per_worker` devices the sandbox holds (each on one node)."""
    nodes, devices = SANDBOX_POOLS.get(accelerator, (0, 0))
    return nodes * (devices // devices_per_worker)


def test_the_promised_examples_exist() -> None:
    assert REQUIRED_EXAMPLES <= {path.name for path in EXAMPLES}


def test_sandbox_has_the_accelerators_the_examples_were_written_for() -> None:
    # the examples' comments count devices against these pools; a smaller sandbox must update them
    a100_nodes, a100_per_node = SANDBOX_POOLS["nvidia-a100-40gb"]
    assert a100_nodes >= 2 and a100_per_node >= 8
    assert SANDBOX_POOLS["nvidia-l4"][1] >= 4
    assert SANDBOX_POOLS["google-tpu-v5e"][1] >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_is_a_trainingjob_with_a_realistic_template(path: Path) -> None:
    manifest = _manifest(path)
    assert manifest["apiVersion"] == "kubefit.dev/v1alpha1" and manifest["kind"] == "TrainingJob"
    assert manifest["metadata"]["name"]
    assert path.read_text().lstrip().startswith("#"), f"{path.name}: start with a comment saying what it runs"
    for container in manifest["spec"]["template"]["spec"]["containers"]:
        image = container.get("image", "")
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{image!r}: pin a tag"
        assert container.get("command"), f"{path.name}: say what the container runs"
        # the operator adds the accelerator request; a hand-written one would fight the sizing
        limits = (container.get("resources") or {}).get("limits") or {}
        assert not any(name.endswith("/gpu") or name.endswith("/tpu") for name in limits), path.name


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_parses(path: Path) -> None:
    spec = _spec(path)
    assert spec.model.parameter_count or spec.model.memory_bytes


@pytest.mark.parametrize("inventory", [None, SANDBOX_INVENTORY], ids=["no-inventory", "sandbox-inventory"])
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_is_sized_by_the_planner(path: Path, inventory: list[NodeInventory] | None) -> None:
    spec = _spec(path)
    sizing = plan(spec, inventory=inventory)
    assert isinstance(sizing, SizingStatus)
    accelerator = load_catalog().get(sizing.accelerator)
    assert accelerator is not None, f"{path.name}: planner chose {sizing.accelerator!r}, not in the catalog"
    assert sizing.resource_name == accelerator.resource_name
    assert sizing.device_memory_bytes == accelerator.memory_bytes
    if spec.resources.accelerator != "auto":
        assert sizing.accelerator == spec.resources.accelerator
    if isinstance(spec.resources.accelerators_per_worker, int):
        assert sizing.accelerators_per_worker == spec.resources.accelerators_per_worker
    assert sizing.accelerators_per_worker >= 1 and sizing.min_workers >= 1
    breakdown = sizing.breakdown.model_dump()
    assert all(value >= 0 for value in breakdown.values()), breakdown
    assert sizing.per_device_bytes >= sum(breakdown.values()) - len(breakdown)  # integer rounding per part
    # round trip through the wire format: the operator writes this object into status.sizing
    assert SizingStatus.model_validate(sizing.model_dump(by_alias=True)) == sizing


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_is_placeable_on_the_sandbox(path: Path) -> None:
    spec = _spec(path)
    sizing = plan(spec, inventory=SANDBOX_INVENTORY)
    assert sizing.accelerator in SANDBOX_POOLS, f"{path.name}: the sandbox has no {sizing.accelerator}"
    placeable = _workers_placeable(sizing.accelerator, sizing.accelerators_per_worker)
    # the job starts with replicas workers and may grow to maxReplicas: both must find room
    wanted = max(spec.workers.replicas, spec.workers.ceiling, sizing.min_workers)
    assert wanted <= placeable, (
        f"{path.name}: {wanted} workers x {sizing.accelerators_per_worker} {sizing.accelerator}, "
        f"the sandbox holds {placeable}"
    )


def test_examples_cover_the_frameworks_and_accelerator_vendors() -> None:
    specs = {path.name: _spec(path) for path in EXAMPLES}
    assert {"pytorch", "jax"} <= {spec.framework for spec in specs.values()}
    assert specs["quickstart.yaml"].resources.accelerator == "auto"
    assert specs["llama3-8b-fsdp.yaml"].training.sharding in ("fsdp", "zero3")
    assert specs["bert-large-dp.yaml"].training.sharding == "none"
    assert specs["jax-tpu-v5e.yaml"].framework == "jax"
    assert specs["jax-tpu-v5e.yaml"].resources.accelerator == "google-tpu-v5e"


# Architectures copied from each model's config.json on Hugging Face (meta-llama/Meta-Llama-3-8B,
# google-bert/bert-large-uncased): a typo here would skew every activation estimate.
@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("llama3-8b-fsdp.yaml", (32, 4096, 32, 8, 14336, 128256)),
        ("bert-large-dp.yaml", (24, 1024, 16, None, 4096, 30522)),
    ],
)
def test_example_architecture_matches_the_published_config(name: str, shape: tuple[int | None, ...]) -> None:
    architecture = _spec(REPO / "examples" / name).model.architecture
    assert architecture is not None
    actual = (
        architecture.layers,
        architecture.hidden_size,
        architecture.attention_heads,
        architecture.kv_heads,
        architecture.intermediate_size,
        architecture.vocab_size,
    )
    assert actual == shape
