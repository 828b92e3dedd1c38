"""What a `kubectl scale` of a running elastic job tells before the scheduling pass has planned the new count.

The reconcile that sees the new replicas runs before the pass has planned them: its grant is the old
count, and the Admitted condition read "2 of 4 workers granted: no capacity for more" (an event too) on
every scale up, with devices free, a moment before the pass granted them (ScaledUp). Now the condition
stays as it was until a pass has planned the count the job asks for; a pass that cannot grant it then
tells "no capacity for more" (the job is reconciled for it although its grant did not change).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import test_reconciler
from test_reconciler import Harness, harness, job_manifest

from kubefit.decisions.inventory import NodeFacts

__all__ = ["harness"]  # the fixture, by import


def running_elastic(harness: Harness, replicas: int) -> None:
    manifest = job_manifest(replicas=replicas, minReplicas=1, maxReplicas=8)
    manifest["spec"]["elastic"] = {"enabled": True, "checkpointGracePeriodSeconds": 0}
    harness.kube.jobs["llama"] = manifest
    harness.reconcile()
    harness.reconcile("update")
    for name, pod in list(harness.kube.pods.items()):
        harness.kube.pods[name] = replace(pod, phase="Running", node_name="n")
    harness.reconcile("pod")
    assert harness.condition("Admitted")["message"] == f"{replicas} workers granted"


def scaled(harness: Harness, replicas: int) -> None:
    job = harness.kube.jobs["llama"]
    job["spec"]["workers"]["replicas"] = replicas
    job["metadata"]["generation"] += 1


def admitted_events(harness: Harness) -> list[str]:
    return [call[2] for call in harness.events() if call[1] in ("Admitted", "ScaledUp", "ScaledDown")]


def test_a_scale_up_with_room_tells_no_capacity_at_no_moment(harness: Harness) -> None:
    running_elastic(harness, 2)
    harness.log.clear()
    scaled(harness, 4)
    harness.reconcile("update")  # waits for the pass (synchronous here), whose grant of 4 reconciles it
    assert harness.condition("Admitted")["message"] == "4 workers granted"
    assert admitted_events(harness) == ["4 workers granted"]
    assert not [call for call in harness.events() if "no capacity" in call[2]]
    assert len(harness.calls("patch_job_status")) == 1


def test_a_scale_up_the_pass_cannot_grant_is_told_once_the_pass_planned_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = NodeFacts("n", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {"nvidia.com/gpu": "3"})
    monkeypatch.setattr(test_reconciler, "NODES", [node])
    running_elastic(harness, 2)
    harness.log.clear()
    scaled(harness, 4)
    harness.reconcile("update")  # the pass planned 4 and grants 3
    assert harness.condition("Admitted")["message"] == "3 of 4 workers granted: 2 -> 3 workers (wants 4)"
    scaled(harness, 5)
    harness.reconcile("update")  # the pass planned 5 and grants 3, as before: the job is reconciled for it
    assert harness.condition("Admitted")["message"] == "3 of 5 workers granted: no capacity for more"
    assert admitted_events(harness) == [
        "3 of 4 workers granted: 2 -> 3 workers (wants 4)",
        "3 of 5 workers granted: no capacity for more",
    ]
