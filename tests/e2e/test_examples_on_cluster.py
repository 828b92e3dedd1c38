"""Every shipped example, applied as a user would, runs on the sandbox's simulated GPU/TPU nodes.

For each file in examples/: the operator sizes it against the cluster, creates one pod per worker
with the chosen accelerator's request and node affinity, the real kube-scheduler binds the pods to
nodes that carry that accelerator, and status and `kubectl get tj` report the running workers.

Each example runs on a private copy of the example cluster's accelerator pools (operator_support
`add_pool`), so it never depends on devices that another job (a demo's quickstart, an earlier test)
holds on the shared nodes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_support import (
    Kube,
    PrivatePool,
    example_pool_shapes,
    running_names,
    wait_for,
)

from kubefit.sizing.catalog import load_catalog

pytestmark = pytest.mark.e2e

EXAMPLES = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))
CATALOG = load_catalog()


def test_every_example_is_exercised() -> None:
    assert {path.name for path in EXAMPLES} >= {"quickstart.yaml"} and len(EXAMPLES) >= 4


def _manifest(path: Path, namespace: str) -> dict[str, Any]:
    manifest = yaml.safe_load(path.read_text())
    manifest["metadata"]["namespace"] = namespace
    # The node agent deletes a pod right away instead of waiting out its grace period.
    template_meta = manifest["spec"]["template"].setdefault("metadata", {})
    template_meta.setdefault("annotations", {})["sandbox.kubefit.dev/shutdown-seconds"] = "0"
    # The sandbox has no storage provisioner, so a claim would never bind: keep the volume, not the claim.
    for volume in manifest["spec"]["template"]["spec"].get("volumes", []):
        if volume.pop("persistentVolumeClaim", None) is not None:
            volume["emptyDir"] = {}
    return manifest


def _printed_columns(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    header, row = kube.run("get", "tj", name, "-n", namespace).stdout.splitlines()[:2]
    # kubectl aligns each column under its header; values may contain spaces ("11.6 GiB").
    starts = [
        index for index, char in enumerate(header) if char != " " and (index == 0 or header[index - 1] == " ")
    ]
    ends = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_runs_on_matching_nodes(
    kube: Kube, namespace: str, add_pool: Callable[..., PrivatePool], path: Path
) -> None:
    pool = add_pool(*example_pool_shapes())
    manifest = pool.pin(_manifest(path, namespace))
    name = manifest["metadata"]["name"]
    kube.apply(manifest)

    def ready() -> dict[str, Any] | None:
        status = kube.job_status(namespace, name)
        desired = int(str(status.get("workers", "0/0")).split("/")[1] or 0)
        running = running_names(kube.workers(namespace, name))
        return status if desired and len(running) == desired == status.get("readyReplicas") else None

    status = wait_for(f"every worker of {path.name} to run", ready, timeout=90)
    assert status["phase"] == "Running"
    sizing = status["sizing"]
    assert sizing["fits"] is True
    accelerator = CATALOG.get(sizing["accelerator"])
    assert accelerator is not None and accelerator.resource_name == sizing["resourceName"]

    pods = kube.workers(namespace, name)
    assert len(pods) == status["replicas"] >= sizing["minWorkers"]
    for pod in pods:
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits[sizing["resourceName"]] == str(sizing["acceleratorsPerWorker"])
        assert pod["spec"]["nodeName"] in pool.nodes
        node = json.loads(kube.run("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout)
        # The scheduler placed it on a node the catalog recognises as the chosen accelerator.
        assert CATALOG.identify(node["metadata"]["labels"]) == accelerator

    columns = _printed_columns(kube, namespace, name)
    assert columns["PHASE"] == "Running"
    assert columns["WORKERS"] == f"{len(pods)}/{len(pods)}"
    assert columns["ACCELERATOR"] == sizing["accelerator"]
    assert columns["FITS"] == "true"


def test_an_example_whose_claim_is_missing_says_why_its_workers_wait(
    kube: Kube, namespace: str, add_pool: Callable[..., PrivatePool]
) -> None:
    """bert-large-dp as shipped, without its PersistentVolumeClaim: kube-scheduler cannot place a worker,
    and the job's Ready message says so (it said only "0/4 workers running" until each gang timeout)."""
    pool = add_pool(*example_pool_shapes())
    manifest = yaml.safe_load(EXAMPLES[0].with_name("bert-large-dp.yaml").read_text())
    manifest["metadata"]["namespace"] = namespace
    manifest = pool.pin(manifest)
    kube.apply(manifest)
    name = manifest["metadata"]["name"]

    def told() -> str | None:
        message = (kube.condition(namespace, name, "Ready") or {}).get("message") or ""
        return message if 'persistentvolumeclaim "bert-output" not found' in message else None

    message = wait_for("the Ready message to name the missing claim", told, timeout=90)
    assert "not scheduled" in message and "workers running" in message, message
