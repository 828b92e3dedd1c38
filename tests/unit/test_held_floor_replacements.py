"""A failed worker of an elastic pytorch group held below a raised minimum (decisions/running.py,
_held_below_floor): its replacement joins the running group, so it gets that group's torchrun range.

3 workers run with range 2:8; `kubectl scale` to 6 raises the floor to 6, which does not fit, so the group
goes on at its grant of 3. Before, worker 2's replacement was made with PET_NNODES=6:8: once it ran, its
range no longer held 3, the hold ended, and workers 3-5 were made beyond the grant (Pending, or on devices
the scheduling pass reserved for other jobs), with a range the running group could not satisfy.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from test_reconcile import CATALOG, ELASTIC, NOW, created_names, decide, observe, pod, raw_spec, status_of

from kubefit.builders.naming import NNODES_ANNOTATION
from kubefit.decisions.job import Decision
from kubefit.decisions.observed import WorkerPod

GRANT = 3
RAISED = raw_spec(workers={"replicas": 6, "maxReplicas": 8}, elastic=ELASTIC)
STATUS = {"phase": "Running", "desiredReplicas": GRANT, "readyReplicas": GRANT, "gang": {"started": True}}
RUNNING = [replace(pod(index), nnodes="2:8") for index in range(GRANT)]
AFTER_BACKOFF = NOW + timedelta(seconds=600)


def _stored(decision: Decision) -> dict[str, Any]:
    """The status as stored: the merge patch's nulls remove fields."""
    return {key: value for key, value in status_of(decision).items() if value is not None}


def _replacement_made() -> Decision:
    """Worker 2 fails while the group is held at its grant; after the restart backoff it is made again."""
    failed = [*RUNNING[:2], replace(pod(2, "Failed"), nnodes="2:8")]
    replaced = decide(observe(RAISED, failed, STATUS, grant=GRANT), CATALOG)
    assert [worker.name for worker in replaced.replace] == ["llama-worker-2"]
    observation = observe(
        RAISED, RUNNING[:2], _stored(replaced), AFTER_BACKOFF, replaced=frozenset({"pod-2"}), grant=GRANT
    )
    made = decide(observation, CATALOG)
    assert created_names(made) == ["llama-worker-2"]
    return made


def _env(manifest: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in manifest["spec"]["containers"][0]["env"]}


def _with_replacement_running(made: Decision) -> list[WorkerPod]:
    nnodes = made.worker_pod(2)["metadata"]["annotations"][NNODES_ANNOTATION]
    return [*RUNNING[:2], replace(pod(2, uid="pod-2b"), nnodes=nnodes)]


def test_a_replacement_in_a_group_held_below_a_raised_minimum_gets_the_running_groups_range() -> None:
    held = decide(observe(RAISED, RUNNING, STATUS, grant=GRANT), CATALOG)
    assert held.create == () and "the 3 running keep running" in status_of(held)["message"]
    manifest = _replacement_made().worker_pod(2)
    assert _env(manifest)["PET_NNODES"] == "2:8"
    assert manifest["metadata"]["annotations"][NNODES_ANNOTATION] == "2:8"


def test_the_held_group_goes_on_at_its_grant_once_the_replacement_runs() -> None:
    made = _replacement_made()
    later = AFTER_BACKOFF + timedelta(seconds=30)
    going_on = decide(
        observe(RAISED, _with_replacement_running(made), _stored(made), later, grant=GRANT), CATALOG
    )
    assert going_on.create == () and going_on.delete == ()
    assert status_of(going_on)["desiredReplicas"] == GRANT
    assert "the 3 running keep running until the scheduling pass grants 6" in status_of(going_on)["message"]


def test_once_the_raised_minimum_is_granted_the_group_with_the_replacement_grows_without_a_restart() -> None:
    made = _replacement_made()
    later = AFTER_BACKOFF + timedelta(seconds=30)
    grown = decide(observe(RAISED, _with_replacement_running(made), _stored(made), later, grant=6), CATALOG)
    # Every running range (2:8) holds 6: the new workers join with the bounds' range, none is restarted.
    assert created_names(grown) == [f"llama-worker-{index}" for index in range(3, 6)]
    assert grown.delete == ()
    assert all(_env(grown.worker_pod(index))["PET_NNODES"] == "6:8" for index in grown.create)
