"""Remedies planned against a cluster's nodes land on a layout some node holds.

A remedy is verified by planning the changed spec again; where none of the cluster's accelerators can
run the changed spec (bf16-true on V100s) or no node offers its devices per worker, planning falls back
to the whole catalog. Such a remedy would name a layout the job could never be placed on, so it is not
offered; one that lands on the cluster's nodes, on whichever of their accelerators, still is.
"""

from __future__ import annotations

from typing import Any

import pytest
from sizing_inputs import make_spec

from kubefit.api.models import TrainingJobSpec
from kubefit.api.validation import FieldError, InvalidSpec
from kubefit.sizing.catalog import load_catalog
from kubefit.sizing.planner import (
    NodeInventory,
    apply_changes,
    find_remedies,
    plan_job,
    pool_inventory,
)
from kubefit.sizing.remedies import Remedy

CATALOG = load_catalog()


def nodes(accelerator: str, count: int, devices: int = 8) -> list[NodeInventory]:
    return [NodeInventory(f"{accelerator}-{index}", accelerator, devices, devices) for index in range(count)]


TRAINING = {  # most memory savings already on
    "sequenceLength": 8192,
    "microBatchSize": 2,
    "activationCheckpointing": "full",
    "sharding": "zero1",
    "offload": "optimizer",
    "loss": "chunked",
}


def job(
    parameters: str = "1B",
    precision: str = "fp32",
    per_worker: int = 8,
    workers: int = 4,
    accelerator: str = "auto",
    **training: Any,
) -> TrainingJobSpec:
    """The review's job by default: fp32, 4 elastic workers of 8, accelerator auto."""
    return make_spec(
        model={"parameters": parameters, "precision": precision},
        training={**TRAINING, **training},
        resources={"accelerator": accelerator, "acceleratorsPerWorker": per_worker},
        workers={"replicas": workers, "maxReplicas": workers},
        elastic={"enabled": True},
    )


def assert_placeable(spec: TrainingJobSpec, remedy: Remedy, inventory: list[NodeInventory]) -> None:
    """The remedy's layout is one a node holds, and applying it and planning again against the same
    nodes gives that very layout, fitting."""
    largest = {node.accelerator: node.allocatable for node in inventory}
    sizing = remedy.sizing
    assert sizing.accelerator in largest, f"{remedy.description} -> {sizing.accelerator}"
    assert sizing.accelerators_per_worker <= largest[sizing.accelerator], remedy.description
    again = plan_job(apply_changes(spec, remedy.changes), CATALOG, inventory, advise=False).sizing
    assert again.fits, f"{remedy.description} was said to fit: {again.warnings}"
    assert again == sizing.model_copy(update={"warnings": again.warnings})


def shortfall(spec: TrainingJobSpec, inventory: list[NodeInventory], **kwargs: Any) -> str:
    sizing = plan_job(spec, CATALOG, inventory, **kwargs).sizing
    assert not sizing.fits
    (note,) = [warning for warning in sizing.warnings if warning.startswith("does not fit")]
    return note


def test_on_v100s_no_remedy_names_an_accelerator_no_node_carries() -> None:
    # V100s have no bf16: "model.precision: bf16-true" re-planned fell back to the catalog's A10G.
    spec, inventory = job(), nodes("nvidia-v100-16gb", 4)
    note = shortfall(spec, inventory)
    assert "Would fit: " in note and "nvidia-a10g" not in note and "bf16-true" not in note
    remedies = find_remedies(spec, CATALOG, pool_inventory(inventory))
    assert remedies and not any("bf16-true" in remedy.description for remedy in remedies)
    for remedy in remedies:
        assert_placeable(spec, remedy, inventory)


def test_on_v100s_the_remedies_that_land_on_them_are_still_offered() -> None:
    spec, inventory = job(), nodes("nvidia-v100-16gb", 4)
    named = {remedy.description for remedy in find_remedies(spec, CATALOG, pool_inventory(inventory))}
    assert {"training.sharding: zero3", "model.finetuning.method: lora"} <= named
    # Without the cluster the catalog's devices are fair game, bf16-true among them.
    assert "model.precision: bf16-true" in {remedy.description for remedy in find_remedies(spec, CATALOG)}


def test_a_remedy_moving_the_job_to_another_accelerator_of_the_cluster_is_offered() -> None:
    # V100s and A10Gs: bf16-true runs on the A10Gs the cluster has, zero3 on its V100s.
    spec = job("2B")
    inventory = [*nodes("nvidia-v100-16gb", 4), *nodes("nvidia-a10g", 4)]
    assert not plan_job(spec, CATALOG, inventory).sizing.fits
    remedies = find_remedies(spec, CATALOG, pool_inventory(inventory))
    landed = {remedy.description: remedy.sizing.accelerator for remedy in remedies}
    assert landed["model.precision: bf16-true"] == "nvidia-a10g"
    assert landed["training.sharding: zero3"] == "nvidia-v100-16gb"
    for remedy in remedies:
        assert_placeable(spec, remedy, inventory)


def test_changes_no_device_of_the_cluster_runs_are_left_out_of_the_combined_remedy() -> None:
    # T4s have no bf16 either: once bf16-true was accumulated, every set after it landed off the cluster,
    # and the one single change that fitted (bf16-true, on the catalog's A100) hid the combined remedy.
    spec, inventory = job("3B", per_worker=4), nodes("nvidia-t4", 4, 4)
    remedies = find_remedies(spec, CATALOG, pool_inventory(inventory))
    assert remedies and not any("bf16-true" in remedy.description for remedy in remedies)
    for remedy in remedies:
        assert_placeable(spec, remedy, inventory)


def test_nothing_on_the_cluster_holding_the_job_is_said_so_without_the_changes_it_cannot_run() -> None:
    # Only bf16-true held it, on a catalog device (an MI250X) no node carries: on V100s nothing does.
    spec, inventory = job(sequenceLength=65536, sharding="zero3"), nodes("nvidia-v100-16gb", 4)
    note = shortfall(spec, inventory)
    assert "no layout the cluster's nodes offer holds it even with " in note, note
    assert "bf16-true" not in note and "Would fit" not in note
    assert find_remedies(spec, CATALOG, pool_inventory(inventory)) == []


def refuse_more_than_two_workers(spec: TrainingJobSpec) -> None:
    """The operator's per-job limit (kubefit run --max-workers-per-job 2)."""
    if max(spec.workers.replicas, spec.workers.ceiling) > 2:
        raise InvalidSpec([FieldError("spec.workers.replicas", "more than 2 workers per job")])


@pytest.mark.parametrize("accelerator", ["auto", "nvidia-a100-40gb"])
def test_a_remedy_widening_workers_beyond_the_clusters_nodes_is_not_offered(accelerator: str) -> None:
    # Nodes of 4 A100s, at most 2 workers: widening the workers to 8 devices fell back to the catalog,
    # landing on a node size (for auto, an accelerator: an L40S) this cluster does not have. The changes
    # accumulated further fit on the nodes it has.
    spec = job("70B", "bf16-mixed", per_worker=4, workers=2, accelerator=accelerator)
    inventory = nodes("nvidia-a100-40gb", 8, 4)
    note = shortfall(spec, inventory, check=refuse_more_than_two_workers)
    assert "Would fit: " in note and "acceleratorsPerWorker" not in note, note
    remedies = find_remedies(spec, CATALOG, pool_inventory(inventory), refuse_more_than_two_workers)
    assert remedies
    for remedy in remedies:
        assert_placeable(spec, remedy, inventory)
    # Nodes of 8 hold the wider workers: that remedy is offered.
    inventory = nodes("nvidia-a100-40gb", 8, 8)
    (remedy,) = find_remedies(spec, CATALOG, pool_inventory(inventory), refuse_more_than_two_workers)
    assert remedy.description.endswith("resources.acceleratorsPerWorker: 8"), remedy.description
    assert_placeable(spec, remedy, inventory)


def test_a_declared_accelerator_no_node_carries_keeps_its_remedies() -> None:
    # The job is unplaceable as written (its own plan warns so) and stays so whatever the remedy: the
    # remedies are judged on memory, on the device it names, as before.
    spec = job("30B", accelerator="nvidia-h100-80gb")
    inventory = nodes("nvidia-v100-16gb", 4)
    sizing = plan_job(spec, CATALOG, inventory).sizing
    assert any("no node in the cluster carries nvidia-h100-80gb" in warning for warning in sizing.warnings)
    remedies = find_remedies(spec, CATALOG, pool_inventory(inventory))
    assert {remedy.sizing.accelerator for remedy in remedies} == {"nvidia-h100-80gb"}
    assert "training.sharding: zero3" in {remedy.description for remedy in remedies}
