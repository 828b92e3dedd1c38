"""`kubefit size --cluster` against the real control plane prints exactly the operator's status.sizing.

Both size the job through decisions.job_sizing.size_job; the operator reads the inventory from its kopf
indexes, the command from one listing of the nodes and pods. Each test pins its job to a private pool
(operator_support `add_pool`), so the nodes its workers may use, and what holds their devices, are the
test's own; every other node of the sandbox is ruled out by the job's placement, for both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from operator_support import FAST_SHUTDOWN, Kube, PoolNodes, job_manifest, running_names, wait_for

pytestmark = pytest.mark.e2e

# Generous: several e2e modules may share the machine's two cores.
SETTLE_SECONDS = 300.0
AUTO_LAYOUT = {"accelerator": "auto", "acceleratorsPerWorker": "auto"}


def kubefit_size(manifest: dict[str, Any], *flags: str) -> dict[str, Any]:
    """`kubefit size -f - -o json` with `flags`, through this run's kubeconfig (conftest sets KUBECONFIG)."""
    result = subprocess.run(
        [sys.executable, "-m", "kubefit.cli.main", "size", "-f", "-", "-o", "json", *flags],
        input=json.dumps(manifest),
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def agree(kube: Kube, manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the command's JSON, the operator's status.sizing) once they are equal; None until then (the
    operator's indexes see a new node or pod a moment after the API server has it)."""
    metadata = manifest["metadata"]
    status = kube.job_status(metadata["namespace"], metadata["name"]).get("sizing")
    if not status:
        return None
    live = kubefit_size(manifest, "--cluster")
    return (live, status) if live == status else None


def test_size_cluster_json_equals_the_operators_status_sizing(
    kube: Kube, namespace: str, add_pool: Any
) -> None:
    pool = add_pool(PoolNodes("nvidia-h100-80gb", nodes=2, per_node=8))
    manifest = job_manifest("sized", namespace, pool=pool, resources=AUTO_LAYOUT, workers={"replicas": 1})
    offline = kubefit_size(manifest)
    kube.apply(manifest)
    wait_for(
        "the job's worker to run",
        lambda: running_names(kube.workers(namespace, "sized")),
        timeout=SETTLE_SECONDS,
    )
    live, status = wait_for(
        "kubefit size --cluster to equal status.sizing", lambda: agree(kube, manifest), SETTLE_SECONDS
    )
    assert live == status
    # The inventory changed the plan: the catalog's cheapest fit is not what this cluster offers the job.
    assert status["accelerator"] == "nvidia-h100-80gb" != offline["accelerator"]
    # Its own running worker holds an H100, yet counts as free: no note that the job must queue.
    assert not any("not enough free" in warning for warning in live["warnings"])


def test_devices_other_pods_hold_are_read_the_same_way(kube: Kube, namespace: str, add_pool: Any) -> None:
    pool = add_pool(PoolNodes("nvidia-h100-80gb", nodes=1, per_node=8))
    blocker = pool.pin(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "holds-all", "namespace": namespace, "annotations": dict(FAST_SHUTDOWN)},
            "spec": {
                "containers": [
                    {"name": "c", "image": "example/idle:1", "resources": {"limits": {"nvidia.com/gpu": "8"}}}
                ]
            },
        }
    )
    kube.apply(blocker)
    wait_for(
        "the pod holding every device to be bound",
        lambda: ((kube.get("pod", "holds-all", namespace) or {}).get("spec") or {}).get("nodeName"),
        timeout=SETTLE_SECONDS,
    )
    manifest = job_manifest("queued", namespace, pool=pool, resources=AUTO_LAYOUT, workers={"replicas": 1})
    kube.apply(manifest)
    live, status = wait_for(
        "kubefit size --cluster to equal status.sizing", lambda: agree(kube, manifest), SETTLE_SECONDS
    )
    assert live == status
    note = (
        "not enough free nvidia-h100-80gb now for 1 x nvidia-h100-80gb; the job queues until devices free up"
    )
    assert note in live["warnings"]
    assert note not in kubefit_size(manifest)["warnings"]  # offline, every device counts as free
