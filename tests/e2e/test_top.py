"""`kubefit top` against the real control plane: the table and JSON built from the operator's status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from operator_support import Kube, PrivatePool, job_manifest, running_names, wait_for

from kubefit_sandbox.controlplane import Sandbox

pytestmark = pytest.mark.e2e

KUBEFIT = Path(sys.executable).with_name("kubefit")


def top(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"KUBECONFIG": str(sandbox.kubeconfig_path), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(KUBEFIT), "top", *args], capture_output=True, text=True, timeout=60, env=env)


def rows_by_name(sandbox: Sandbox, namespace: str) -> dict[str, dict[str, Any]]:
    result = top(sandbox, "-n", namespace, "-o", "json")
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)["jobs"]}


def test_top_shows_running_and_queued_jobs_with_their_accelerators_and_waste(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    # 1B parameters on 4 x 80 GB per worker: far more memory per device than the estimate needs.
    kube.apply(job_manifest("small", namespace, pool=pool))
    wait_for("2 running workers", lambda: len(running_names(kube.workers(namespace, "small"))) == 2, 180)
    # Needs 2 workers of 8 devices: the whole pool, 8 devices of which "small" holds.
    big = {"replicas": 2, "minReplicas": 2, "maxReplicas": 2}
    kube.apply(job_manifest("big", namespace, pool=pool, workers=big,
                            resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8}))  # fmt: skip
    wait_for("big queued", lambda: kube.job_status(namespace, "big").get("phase") == "Queued", 120)
    wait_for(
        "small status Running", lambda: kube.job_status(namespace, "small").get("readyReplicas") == 2, 120
    )

    rows = rows_by_name(sandbox, namespace)
    small, queued = rows["small"], rows["big"]
    assert (small["phase"], small["running_workers"], small["desired_workers"]) == ("Running", 2, 2)
    assert (small["accelerators_allocated"], small["accelerators_requested"]) == (8, 8)
    assert small["accelerator"] == "nvidia-h100-80gb"
    assert 0 < small["memory_estimated_bytes"] < small["memory_requested_bytes"] / 2
    assert small["waste"] == ["overprovisioned"] and small["utilization"] is None
    assert (queued["phase"], queued["accelerators_allocated"], queued["waste"]) == ("Queued", 0, [])

    table = top(sandbox, "-n", namespace)
    assert table.returncode == 0, table.stderr
    small_line = next(line for line in table.stdout.splitlines() if line.split()[1] == "small")
    assert small_line.split()[2:5] == ["Running", "2/2", "8/8"] and "overprovisioned" in small_line

    everywhere = top(sandbox, "-A", "-o", "json")
    assert everywhere.returncode == 0, everywhere.stderr
    assert {"small", "big"} <= {row["name"] for row in json.loads(everywhere.stdout)["jobs"]}


def test_top_names_an_unreachable_prometheus(sandbox: Sandbox, namespace: str) -> None:
    result = top(sandbox, "-n", namespace, "--prometheus", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.startswith("kubefit top: --prometheus http://127.0.0.1:9: cannot query it")
