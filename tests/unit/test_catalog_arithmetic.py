"""Which precisions a catalog accelerator can run is the catalog's to say (`bf16`, `fp8`), so an entry an
operator adds (the chart's `catalog` value, KUBEFIT_CATALOG, `kubefit size --catalog`) is planned as it is,
not as a device whose name kubefit does not know."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from kubefit.api.models import TrainingJobSpec
from kubefit.api.validation import parse_spec
from kubefit.sizing.catalog import Catalog, CatalogError, load_catalog, parse_catalog
from kubefit.sizing.planner import NodeInventory, plan, unsupported

QUICKSTART = yaml.safe_load((Path(__file__).parents[2] / "examples" / "quickstart.yaml").read_text())["spec"]

# docs/install.md's example entry, an Ada GPU with FP8 tensor cores, and a V100 under a name of one's own.
ADA = """\
- name: nvidia-rtx-6000-ada
  memoryMiB: 49140
  resourceName: nvidia.com/gpu
  fp8: true
  match: [{nvidia.com/gpu.product: NVIDIA-RTX-6000-Ada-Generation}]
"""
V100 = """\
- name: v100-pcie-32gb-mine
  memoryMiB: 32768
  resourceName: nvidia.com/gpu
  bf16: false
  match: [{nvidia.com/gpu.product: Tesla-V100-PCIE-32GB}]
"""
PLAIN = """\
- name: unstated
  memoryMiB: 49140
  resourceName: nvidia.com/gpu
  match: [{nvidia.com/gpu.product: Unstated}]
"""


def catalog_with(*entries: str) -> Catalog:
    return load_catalog().extended(parse_catalog("accelerators:\n" + "".join(entries), "extra.yaml"))


def spec(precision: str, accelerator: str = "auto") -> TrainingJobSpec:
    raw = copy.deepcopy(QUICKSTART)
    raw["model"]["precision"] = precision
    if accelerator != "auto":
        raw["resources"] = {"accelerator": accelerator, "acceleratorsPerWorker": 1}
    return parse_spec(raw)


def test_an_added_fp8_device_is_planned_for_fp8_as_for_bf16() -> None:
    catalog = catalog_with(ADA)
    inventory = [
        NodeInventory(name="ada-0", accelerator="nvidia-rtx-6000-ada", allocatable=8, free=8),
        NodeInventory(name="h100-0", accelerator="nvidia-h100-80gb", allocatable=8, free=8),
    ]
    bf16 = plan(spec("bf16-mixed"), catalog, inventory)
    fp8 = plan(spec("fp8-mixed"), catalog, inventory)
    assert bf16.accelerator == "nvidia-rtx-6000-ada"
    assert fp8.accelerator == bf16.accelerator
    pinned = plan(spec("fp8-mixed", "nvidia-rtx-6000-ada"), catalog, inventory)
    assert not any("FP8" in warning for warning in pinned.warnings), pinned.warnings


def test_an_added_device_without_bf16_refuses_bf16_and_one_unstated_runs_bf16_not_fp8() -> None:
    catalog = catalog_with(V100, PLAIN)
    v100, plain = catalog.get("v100-pcie-32gb-mine"), catalog.get("unstated")
    assert v100 is not None and plain is not None
    assert "no bf16 arithmetic" in (unsupported(spec("bf16-mixed"), v100) or "")
    assert unsupported(spec("fp16-mixed"), v100) is None
    assert unsupported(spec("bf16-true"), plain) is None
    reason = unsupported(spec("fp8-mixed"), plain)
    assert reason is not None and "fp8: true" in reason  # it says what the entry lacks


def test_built_in_entries_state_the_documented_arithmetic() -> None:
    catalog = load_catalog()
    assert {a.name for a in catalog if not a.has_bf16} == {
        "nvidia-t4",
        "nvidia-v100-16gb",
        "nvidia-v100-32gb",
    }
    assert {a.name for a in catalog if a.has_fp8} == {
        "nvidia-l4",
        "nvidia-l40s",
        "nvidia-h100-80gb",
        "nvidia-h200",
        "nvidia-b200",
        "amd-mi300x",
    }


def test_an_entry_replacing_a_built_in_one_keeps_its_arithmetic_unless_it_states_its_own() -> None:
    memory_only = "- name: nvidia-h100-80gb\n  memoryMiB: 80000\n  resourceName: nvidia.com/gpu\n"
    kept = catalog_with(memory_only).get("nvidia-h100-80gb")
    assert kept is not None and kept.memory_bytes == 80000 * 2**20 and kept.has_fp8 and kept.has_bf16
    t4 = catalog_with("- name: nvidia-t4\n  memoryMiB: 15000\n  resourceName: nvidia.com/gpu\n").get(
        "nvidia-t4"
    )
    assert t4 is not None and not t4.has_bf16
    no_fp8 = catalog_with(memory_only + "  fp8: false\n").get("nvidia-h100-80gb")
    assert no_fp8 is not None and not no_fp8.has_fp8


@pytest.mark.parametrize(("key", "value"), [("fp8", '"yes"'), ("bf16", "1"), ("fp8", "[true]")])
def test_an_arithmetic_key_that_is_not_a_boolean_is_refused_naming_the_entry_and_key(
    key: str, value: str
) -> None:
    text = (
        f"accelerators:\n- name: npu\n  memoryMiB: 1024\n  resourceName: vendor.com/npu\n  {key}: {value}\n"
    )
    with pytest.raises(CatalogError, match=rf"extra\.yaml: accelerators\[npu\]\.{key} must be true or false"):
        parse_catalog(text, "extra.yaml")
