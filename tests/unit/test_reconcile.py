"""Reconcile decisions: pure functions from an observation to the changes to make."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kubefit.api.formatting import index_ranges, parse_index_ranges, sizing_summary
from kubefit.api.models import MemoryBreakdown, SizingStatus, TrainingJobStatus
from kubefit.api.units import parse_rfc3339
from kubefit.api.validation import parse_spec
from kubefit.builders.checkpoint import checkpoint_token
from kubefit.builders.naming import JobRef
from kubefit.decisions.conditions import ConditionUpdate, apply_conditions
from kubefit.decisions.failure import MESSAGE_LIMIT, reconcile_error
from kubefit.decisions.inventory import (
    EMPTY_INVENTORY,
    Inventory,
    NodeFacts,
    build_inventory,
    node_facts,
    pod_usage,
)
from kubefit.decisions.job import (
    DEFAULT_MAX_WORKERS_PER_JOB,
    Decision,
    JobObservation,
    ReconcileSettings,
)
from kubefit.decisions.job import decide as decide_unchecked
from kubefit.decisions.observed import WorkerPod, worker_from_pod
from kubefit.decisions.running import FAILURE_BURST_SECONDS
from kubefit.decisions.workers import scale_workers, stop_workers, worker_bounds, worker_slots
from kubefit.sizing.catalog import Catalog, load_catalog
from kubefit.sizing.planner import NodeInventory

CATALOG = load_catalog()
REPO = Path(__file__).resolve().parents[2]
STATUS_SCHEMA = yaml.safe_load((REPO / "crds" / "trainingjob.yaml").read_text())["spec"]["versions"][0][
    "schema"
]["openAPIV3Schema"]["properties"]["status"]


def schema_errors(value: Any, schema: dict[str, Any], path: str = "status") -> list[str]:
    """Where `value` breaks the CRD's structural schema: types, required and unknown fields, enums,
    bounds and patterns (what the API server checks of a status write)."""
    kind = schema.get("type")
    checks = {
        "object": lambda item: isinstance(item, dict),
        "array": lambda item: isinstance(item, list),
        "string": lambda item: isinstance(item, str),
        "integer": lambda item: isinstance(item, int) and not isinstance(item, bool),
        "number": lambda item: isinstance(item, int | float) and not isinstance(item, bool),
        "boolean": lambda item: isinstance(item, bool),
    }
    if kind and not checks[kind](value):
        return [f"{path}: {value!r} is not of type {kind}"]
    errors = (
        [f"{path}: {value!r} not in {schema['enum']}"] if value not in schema.get("enum", [value]) else []
    )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errors.append(f"{path}: {value} outside [{schema.get('minimum')}, {schema.get('maximum')}]")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{path}[{index}]")
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        properties = schema.get("properties", {})
        errors += [f"{path}.{name}: unknown field" for name in value if name not in properties]
        errors += [f"{path}.{name}: required" for name in schema.get("required", []) if name not in value]
        for name, item in value.items():
            if name in properties:
                errors += schema_errors(item, properties[name], f"{path}.{name}")
    return errors


def decide(
    observation: JobObservation, catalog: Catalog, options: ReconcileSettings | None = None
) -> Decision:
    """decide, and every status it produces checked against the CRD's schema, as the API server would
    (the merge patch's nulls remove fields, so the stored status has none)."""
    decision = decide_unchecked(observation, catalog, options or ReconcileSettings())
    stored = decision.status.model_dump(by_alias=True, exclude_none=True)
    assert not schema_errors(stored, STATUS_SCHEMA), schema_errors(stored, STATUS_SCHEMA)
    return decision


JOB = JobRef(name="llama", namespace="team-a", uid="job-uid")
NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def raw_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "trainer", "image": "ghcr.io/acme/train:1"}]}},
        "model": {"parameters": "1B"},
        "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
        "workers": {"replicas": 2},
    }
    spec.update(overrides)
    return spec


def pod(
    index: int,
    phase: str = "Running",
    *,
    uid: str | None = None,
    owner: str | None = "job-uid",
    node: str | None = "node-a",
    terminating: bool = False,
    attempt: int | None = None,
    deletion: str | None = None,
    disrupted: bool = False,
    created: str | None = None,
) -> WorkerPod:
    return WorkerPod(
        name=f"llama-worker-{index}",
        index=index,
        uid=uid or f"pod-{index}",
        phase=phase,
        node_name=None if phase == "Pending" and node == "node-a" else node,
        terminating=terminating or deletion is not None,
        controller_uid=owner,
        deletion_timestamp=deletion,
        attempt=attempt,
        disrupted=disrupted,
        created=created,
    )


# The scheduling pass grants a job at most what it asks for: this grant admits every job in full.
GRANT_ALL = 4096


def observe(
    spec: Any = None,
    pods: list[WorkerPod] | None = None,
    status: dict[str, Any] | TrainingJobStatus | None = None,
    now: datetime = NOW,
    replaced: frozenset[str] = frozenset(),
    job: JobRef = JOB,
    grant: int | None = GRANT_ALL,
    acks: dict[str, int] | None = None,
) -> JobObservation:
    if isinstance(status, TrainingJobStatus):
        status = status.model_dump(by_alias=True, exclude_none=True)
    return JobObservation(
        job=job,
        generation=3,
        spec=raw_spec() if spec is None else spec,
        status=status or {},
        pods=pods or [],
        inventory=EMPTY_INVENTORY,
        now=now,
        already_replaced=replaced,
        grant=grant,
        checkpoint_acks=acks or {},
    )


def status_of(decision: Decision) -> dict[str, Any]:
    """The status as the controller writes it (None: the merge patch removes the field)."""
    return decision.status.model_dump(by_alias=True, exclude_none=False)


def condition(decision: Decision, condition_type: str) -> dict[str, Any]:
    found = [item for item in status_of(decision)["conditions"] if item["type"] == condition_type]
    assert found, f"no {condition_type} condition in {status_of(decision)['conditions']}"
    return found[0]


def created_names(decision: Decision) -> list[str]:
    return [decision.worker_pod(index)["metadata"]["name"] for index in decision.create]


# ---------------------------------------------------------------------------------------------- new job


def test_new_job_creates_the_service_and_every_worker() -> None:
    decision = decide(observe(), CATALOG)
    assert decision.service is not None and decision.service["metadata"]["name"] == "llama"
    assert created_names(decision) == ["llama-worker-0", "llama-worker-1"]
    assert decision.delete == ()
    assert status_of(decision)["phase"] == "Pending"
    assert status_of(decision)["observedGeneration"] == 3
    assert status_of(decision)["selector"] == "kubefit.dev/job=llama"
    assert status_of(decision)["replicas"] == 2  # the two it creates: none of them is ready yet
    assert status_of(decision)["workers"] == "0/2"
    assert status_of(decision)["sizing"]["accelerator"] == "nvidia-h100-80gb"
    assert status_of(decision)["perDeviceMemory"].endswith(" GiB")
    sized = condition(decision, "Sized")
    assert (sized["status"], sized["reason"]) == ("True", "Fits")
    assert sized["message"].startswith("1 x nvidia-h100-80gb, ")
    assert sized["message"].endswith(" of 79.6 GiB per device")
    assert condition(decision, "Ready")["status"] == "False"
    assert ("Normal", "Fits") in [(event.type, event.reason) for event in decision.events]


def test_sizing_summary_format() -> None:
    sizing = SizingStatus(
        accelerator="nvidia-h100-80gb",
        resource_name="nvidia.com/gpu",
        device_memory_bytes=81559 * 2**20,
        accelerators_per_worker=8,
        min_workers=1,
        per_device_bytes=int(61.2 * 2**30),
        fits=True,
        breakdown=MemoryBreakdown(
            weights=0, gradients=0, optimizer_states=0, activations=0, logits=0, overhead=0
        ),
    )
    assert sizing_summary(sizing) == "8 x nvidia-h100-80gb, 61.2 GiB of 79.6 GiB per device"


def test_all_workers_running_makes_the_job_running_and_ready() -> None:
    decision = decide(observe(pods=[pod(0), pod(1)]), CATALOG)
    assert decision.create == () and decision.delete == ()
    assert status_of(decision)["phase"] == "Running"
    assert status_of(decision)["readyReplicas"] == 2
    assert status_of(decision)["workers"] == "2/2"
    assert status_of(decision)["startTime"] == "2025-01-01T12:00:00Z"
    assert condition(decision, "Ready")["status"] == "True"
    assert condition(decision, "Running")["status"] == "True"
    assert decision.requested_accelerators == 2


def test_admitted_workers_not_yet_scheduled_are_pending() -> None:
    decision = decide(observe(pods=[pod(0, "Pending"), pod(1)]), CATALOG)
    assert status_of(decision)["phase"] == "Pending"  # Queued is for jobs not admitted
    assert status_of(decision)["readyReplicas"] == 1


def test_running_elastic_job_that_loses_a_worker_is_scaling_and_makes_it_again() -> None:
    spec = elastic_spec(replicas=2, minimum=1, maximum=2)
    status = status_of(decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG))
    decision = decide(observe(spec, pods=[pod(0)], status=status), CATALOG)
    assert created_names(decision) == ["llama-worker-1"]
    assert decision.delete == ()
    assert status_of(decision)["phase"] == "Scaling"
    assert status_of(decision)["startTime"] == status["startTime"]


def test_a_running_fixed_group_that_loses_a_worker_restarts_whole_and_uncounted() -> None:
    """Worker 1's node went: worker 0's static rendezvous cannot take a new worker 1, so both start again
    (a disruption, not a restart against maxRestarts), and none before the old worker 0 is gone."""
    status = status_of(decide(observe(pods=[pod(0, attempt=0), pod(1, attempt=0)]), CATALOG))
    assert status["gang"]["started"] is True
    decision = decide(observe(pods=[pod(0, attempt=0)], status=status), CATALOG)
    assert decision.create == () and decision.delete == ("llama-worker-0",)
    assert status_of(decision)["restarts"] == 0
    assert status_of(decision)["phase"] == "Scaling"
    lost = [event for event in decision.events if event.reason == "WorkerLost"]
    assert [event.type for event in lost] == ["Warning"]
    assert "llama-worker-1 is gone" in lost[0].message
    assert condition(decision, "Ready")["reason"] == "Restarting"
    assert status_of(decision)["gang"]["started"] is False
    assert status_of(decision)["gang"]["attempt"] == 1
    going = decide(observe(pods=[pod(0, attempt=0, terminating=True)], status=decision.status), CATALOG)
    assert going.create == () and going.delete == ()  # no new worker 1 beside the old worker 0
    gone = decide(observe(status=decision.status), CATALOG)
    assert gone.create == (0, 1)
    assert gone.worker_pod(1)["metadata"]["annotations"]["kubefit.dev/restart-attempt"] == "1"
    assert status_of(gone)["restarts"] == 0
    # Once the new group runs whole, a worker gone again is lost again (attempt 2).
    running = [pod(0, attempt=1, uid="new-0"), pod(1, attempt=1, uid="new-1")]
    whole = decide(observe(pods=running, status=gone.status), CATALOG)
    assert whole.delete == () and status_of(whole)["gang"]["started"] is True
    again = decide(observe(pods=running[:1], status=whole.status), CATALOG)
    assert again.delete == ("llama-worker-0",) and status_of(again)["gang"]["attempt"] == 2


def test_a_fixed_group_whose_workers_were_all_deleted_by_someone_restarts_as_a_new_gang() -> None:
    """`kubectl delete pods -l kubefit.dev/job=llama`: no survivor to stop, but the new group is a new
    attempt and a gang again, with its own timeout."""
    running = [pod(0, attempt=0), pod(1, attempt=0)]
    status = status_of(decide(observe(pods=running, status=None), CATALOG))
    deleted = [replace(worker, terminating=True) for worker in running]
    decision = decide(observe(pods=deleted, status=status), CATALOG)
    assert "WorkerLost" in [event.reason for event in decision.events]
    gang = status_of(decision)["gang"]
    assert (gang["started"], gang["attempt"]) == (False, 1) and status_of(decision)["restarts"] == 0
    recreated = decide(observe(status=decision.status), CATALOG)
    assert recreated.create == (0, 1)
    # The index shows one new worker so far: nothing is taken for lost.
    partly = decide(observe(pods=[pod(0, "Pending", attempt=1)], status=recreated.status), CATALOG)
    assert partly.delete == () and "WorkerLost" not in [event.reason for event in partly.events]


def test_an_elastic_jax_worker_not_created_yet_is_not_a_lost_one() -> None:
    """Two of three running, worker 2's create refused so far: it is created again, and the two running
    are not restarted."""
    spec = elastic_spec(replicas=3, minimum=2, maximum=3, framework="jax")
    first = decide(observe(spec, pods=[pod(0, attempt=0), pod(1, attempt=0)], grant=3), CATALOG)
    again = decide(observe(spec, pods=[pod(0, attempt=0), pod(1, attempt=0)], status=first.status), CATALOG)
    assert again.create == (2,) and again.delete == ()
    assert status_of(again)["gang"]["attempt"] == 0


def test_a_group_restart_whose_deletes_were_lost_deletes_the_old_workers_again() -> None:
    """The status said attempt 1 and then the deletes failed (or the operator stopped): the old workers
    are still there, and no new worker starts beside them."""
    failed = decide(observe(pods=[pod(0, attempt=0), pod(1, "Failed", attempt=0)]), CATALOG)
    assert status_of(failed)["gang"]["attempt"] == 1 and status_of(failed)["restarts"] == 1
    retry = decide(
        observe(pods=[pod(0, attempt=0)], status=failed.status, now=NOW + timedelta(seconds=30)), CATALOG
    )
    assert retry.delete == ("llama-worker-0",) and retry.create == ()
    assert status_of(retry)["restarts"] == 1
    # An old failed worker whose delete was lost is not a new failure either.
    stale = decide(
        observe(pods=[pod(0, attempt=0), pod(1, "Failed", attempt=0)], status=failed.status), CATALOG
    )
    assert set(stale.delete) == {"llama-worker-0", "llama-worker-1"} and status_of(stale)["restarts"] == 1


def test_a_world_size_restart_is_one_new_attempt_and_no_worker_is_taken_for_lost() -> None:
    spec3 = raw_spec(workers={"replicas": 3}, elastic={"checkpointGracePeriodSeconds": 0})
    old = [pod(index, attempt=0) for index in range(3)]
    running = decide(observe(spec3, pods=old), CATALOG)
    spec2 = raw_spec(workers={"replicas": 2}, elastic={"checkpointGracePeriodSeconds": 0})
    restart = decide(observe(spec2, pods=old, status=running.status), CATALOG)
    assert set(restart.delete) == {"llama-worker-0", "llama-worker-1", "llama-worker-2"}
    assert status_of(restart)["gang"]["attempt"] == 1
    # The index does not show the deletions yet (or they were lost): deleted again, nothing else.
    for _ in range(2):
        again = decide(observe(spec2, pods=old, status=restart.status), CATALOG)
        assert set(again.delete) == set(restart.delete) and again.create == ()
        assert status_of(again)["gang"]["attempt"] == 1
        assert "WorkerLost" not in [event.reason for event in again.events]
    gone = decide(observe(spec2, status=restart.status), CATALOG)
    assert gone.create == (0, 1) and "WorkerLost" not in [event.reason for event in gone.events]


def test_a_worker_made_before_attempts_were_numbered_still_holds_the_new_group_back() -> None:
    failed = decide(observe(pods=[pod(0), pod(1, "Failed")]), CATALOG)
    unnumbered = [pod(0, deletion="2025-01-01T12:00:30Z")]
    going = decide(observe(pods=unnumbered, status=failed.status, now=NOW + timedelta(seconds=10)), CATALOG)
    assert going.create == ()
    past = decide(observe(pods=unnumbered, status=failed.status, now=NOW + timedelta(seconds=90)), CATALOG)
    assert past.create == (1,)


def test_a_group_with_a_finished_worker_that_loses_a_running_one_does_not_run_again() -> None:
    """A static group's rank 0 exits 0 only after the last collective and its own save: the training is
    over, and a worker lost after that is done, not a reason to run the whole group again. Before worker 0
    succeeded, another rank's success does not make a lost worker done (tests/unit/test_finishing_groups.py)."""
    spec = raw_spec(workers={"replicas": 3})
    pods = [pod(0, "Succeeded", attempt=0), pod(1, attempt=0), pod(2, attempt=0)]
    first = decide(observe(spec, pods=pods), CATALOG)
    assert status_of(first)["succeededWorkers"] == "0"
    lost = decide(observe(spec, pods=[pods[0], pods[2]], status=first.status), CATALOG)
    assert "WorkerLost" not in [event.reason for event in lost.events]
    assert lost.delete == () and lost.create == ()
    assert status_of(lost)["succeededWorkers"] == "0-1"


def test_an_old_worker_stuck_terminating_past_its_grace_does_not_hold_the_new_group_back() -> None:
    failed = decide(observe(pods=[pod(0, attempt=0), pod(1, "Failed", attempt=0)]), CATALOG)
    stuck = [pod(0, attempt=0, deletion="2025-01-01T12:00:30Z")]
    within = decide(observe(pods=stuck, status=failed.status, now=NOW + timedelta(seconds=10)), CATALOG)
    assert within.create == () and within.requeue_after == 80.0  # stuck a minute after its grace
    # Just past its grace the kubelet is still removing it: it still holds the new group back.
    removing = decide(observe(pods=stuck, status=failed.status, now=NOW + timedelta(seconds=40)), CATALOG)
    assert removing.create == ()
    past = decide(observe(pods=stuck, status=failed.status, now=NOW + timedelta(seconds=90)), CATALOG)
    assert past.create == (1,)  # worker 0's name is still taken by the stuck pod


def test_a_worker_waiting_for_its_old_pod_on_a_lost_node_says_which_pod_and_what_frees_it() -> None:
    """Worker 1's node went NotReady: its pod, deleted, never finishes terminating, and the restarted group's
    worker 1 cannot be created under its name. Ready says so from the first pass, not only the gang timeout."""
    running = decide(observe(pods=[pod(0, attempt=0), pod(1, attempt=0)]), CATALOG)
    old = replace(pod(1, attempt=0, node="node-b", deletion="2025-01-01T12:00:40Z"), node_lost=True)
    restart = decide(observe(pods=[pod(0, attempt=0), old], status=running.status), CATALOG)
    assert status_of(restart)["gang"]["attempt"] == 1
    waits = (
        "worker 1 waits for its old pod llama-worker-1, still terminating on node-b (deletionTimestamp "
        "2025-01-01T12:00:40Z); node node-b NotReady or gone: no kubelet confirms the delete; deleting the "
        "node has the pod garbage collector remove the pod, or kubectl delete pod -n team-a llama-worker-1 "
        "--force once sure it no longer runs"
    )
    within = decide(observe(pods=[old], status=restart.status, now=NOW + timedelta(seconds=20)), CATALOG)
    assert condition(within, "Ready")["message"] == f"0/2 workers running; {waits}"
    new = [pod(0, attempt=1), old]
    past = decide(observe(pods=new, status=within.status, now=NOW + timedelta(seconds=110)), CATALOG)
    assert past.create == ()  # its name is still taken
    assert (condition(past, "Ready")["reason"], condition(past, "Ready")["message"]) == (
        "WorkersNotReady",
        f"1/2 workers running; {waits}",
    )


def test_an_old_pod_is_named_only_once_stuck_where_its_node_is_ready() -> None:
    failed = decide(observe(pods=[pod(0, attempt=0), pod(1, "Failed", attempt=0)]), CATALOG)
    going = [pod(0, attempt=0, deletion="2025-01-01T12:00:30Z")]
    within = decide(observe(pods=going, status=failed.status, now=NOW + timedelta(seconds=10)), CATALOG)
    assert condition(within, "Ready")["message"] == "0/2 workers running"  # gone in seconds
    new = [*going, pod(1, attempt=1)]
    past = decide(observe(pods=new, status=within.status, now=NOW + timedelta(seconds=95)), CATALOG)
    assert condition(past, "Ready")["message"] == (
        "1/2 workers running; worker 0 waits for its old pod llama-worker-0, still terminating on node-a "
        "(deletionTimestamp 2025-01-01T12:00:30Z)"
    )


def test_the_pods_on_lost_nodes_are_named_first_and_the_advice_names_only_the_pods_shown() -> None:
    """Three old pods stuck past their grace on a Ready node, a fourth on a NotReady one: the fourth is
    the one to act on, so it is shown, and the kubectl command names it (it named no pod at all)."""
    spec = raw_spec(workers={"replicas": 4})
    running = decide(observe(spec, pods=[pod(i, attempt=0) for i in range(4)]), CATALOG)
    old = [pod(i, attempt=0, node="node-a", deletion="2025-01-01T12:00:30Z") for i in range(3)]
    old.append(replace(pod(3, attempt=0, node="node-b", deletion="2025-01-01T12:00:30Z"), node_lost=True))
    restart = decide(observe(spec, pods=old, status=running.status), CATALOG)
    later = decide(observe(spec, pods=old, status=restart.status, now=NOW + timedelta(seconds=120)), CATALOG)
    message = condition(later, "Ready")["message"]
    assert message.startswith("0/4 workers running; worker 3 waits for its old pod llama-worker-3")
    assert "kubectl delete pod -n team-a llama-worker-3 --force" in message
    assert "; ..." in message and "llama-worker-2" not in message  # three shown of four


def test_the_nodes_named_are_those_of_the_pods_shown() -> None:
    """Every old pod on a lost node of its own: the message names three pods and their three nodes, not
    every node (256 nodes made an 11,000-character condition message)."""
    spec = raw_spec(workers={"replicas": 64})
    running = decide(observe(spec, pods=[pod(i, attempt=0) for i in range(64)]), CATALOG)
    old = [
        replace(pod(i, attempt=0, node=f"ip-10-0-{i}-1.compute.internal", deletion="2025-01-01T12:00:30Z"),
                node_lost=True)
        for i in range(64)
    ]  # fmt: skip
    restart = decide(observe(spec, pods=old, status=running.status), CATALOG)
    waiting = decide(observe(spec, pods=old, status=restart.status, now=NOW + timedelta(seconds=20)), CATALOG)
    message = condition(waiting, "Ready")["message"]
    assert message.count(".compute.internal") == 6  # each shown pod's node, in its line and in the list
    assert len(message) < 1000


def test_a_fixed_group_being_created_is_not_taken_for_one_that_lost_workers() -> None:
    """Workers not created yet (a gang not placed yet) are not lost workers."""
    first = decide(observe(raw_spec(workers={"replicas": 4})), CATALOG)
    partly = decide(
        observe(raw_spec(workers={"replicas": 4}), pods=[pod(0), pod(1)], status=first.status), CATALOG
    )
    assert partly.create == (2, 3) and partly.delete == ()


def test_the_same_observation_gives_the_same_decision() -> None:
    first = decide(observe(pods=[pod(0)]), CATALOG)
    again = decide(observe(pods=[pod(0)], status=first.status, now=NOW + timedelta(minutes=1)), CATALOG)
    assert again.status == first.status  # nothing changed: no status write, no transition
    assert created_names(again) == created_names(first) == ["llama-worker-1"]
    assert again.events == ()


# ---------------------------------------------------------------------------------------------- scaling


def test_scale_down_deletes_the_highest_indices_first() -> None:
    spec = raw_spec(workers={"replicas": 1, "maxReplicas": 4}, elastic={"checkpointGracePeriodSeconds": 0})
    decision = decide(observe(spec, pods=[pod(0), pod(1), pod(2), pod(3)]), CATALOG)
    assert decision.delete == ("llama-worker-3", "llama-worker-2", "llama-worker-1")
    assert decision.create == ()
    assert decision.checkpoint_request is None  # a grace period of 0 asks for no checkpoint


def test_scale_up_is_clamped_to_max_replicas() -> None:
    spec = raw_spec(workers={"replicas": 9, "minReplicas": 1, "maxReplicas": 3})
    decision = decide(observe(spec), CATALOG)
    assert created_names(decision) == ["llama-worker-0", "llama-worker-1", "llama-worker-2"]
    assert status_of(decision)["workers"] == "0/3"


def test_pods_being_deleted_are_neither_counted_nor_recreated() -> None:
    decision = decide(observe(pods=[pod(0), pod(1, terminating=True)]), CATALOG)
    assert decision.create == () and decision.delete == ()
    assert status_of(decision)["replicas"] == 1


@pytest.mark.parametrize(
    ("workers", "min_workers", "expected"),
    [
        ({"replicas": 4}, 1, (4, 4, 4)),
        ({"replicas": 4, "minReplicas": 2, "maxReplicas": 8}, 1, (2, 8, 4)),
        ({"replicas": 1, "minReplicas": 1, "maxReplicas": 8}, 3, (3, 8, 3)),  # memory raises the floor
        ({"replicas": 12, "minReplicas": 1, "maxReplicas": 8}, 1, (1, 8, 8)),
        ({"replicas": 2, "maxReplicas": 2}, 4, (4, 2, 2)),  # infeasible: floor above ceiling
    ],
)
def test_worker_bounds(workers: dict[str, int], min_workers: int, expected: tuple[int, int, int]) -> None:
    spec = parse_spec(raw_spec(workers=workers))
    sizing = decide(observe(), CATALOG).sizing
    assert sizing is not None
    bounds = worker_bounds(spec, sizing.model_copy(update={"min_workers": min_workers}))
    assert (bounds.floor, bounds.ceiling, bounds.desired) == expected
    assert bounds.feasible == (expected[0] <= expected[1])


@pytest.mark.parametrize(
    ("workers", "ceiling"),
    [
        ({"replicas": 1, "maxReplicas": 2}, "spec.workers.maxReplicas allows 2"),
        ({"replicas": 1, "minReplicas": 2}, "spec.workers.minReplicas allows 2"),  # min sets the ceiling
        ({"replicas": 2, "minReplicas": 1}, "spec.workers.replicas allows 2"),
    ],
)
def test_memory_needing_more_workers_than_allowed_starts_nothing(
    workers: dict[str, int], ceiling: str
) -> None:
    spec = raw_spec(
        model={"parameters": "70B"},
        training={"sharding": "fsdp"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
        workers=workers,
    )
    decision = decide(observe(spec), CATALOG)
    assert decision.create == ()
    ready = condition(decision, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TooFewWorkers")
    assert ceiling in ready["message"]
    assert status_of(decision)["phase"] == "Pending"


def test_too_few_workers_for_a_tp_group_names_the_group_not_memory() -> None:
    spec = raw_spec(
        model={"parameters": "1B"},
        training={"tensorParallel": 3},
        resources={"accelerator": "nvidia-a10g"},
        workers={"replicas": 2},
    )
    ready = condition(decide(observe(spec), CATALOG), "Ready")
    assert ready["reason"] == "TooFewWorkers"
    assert ready["message"].startswith(
        "a tensorParallel x pipelineParallel group of 3 devices needs at least 3"
    )


def test_memory_floor_raises_the_worker_count_and_sizes_that_layout() -> None:
    spec = raw_spec(
        model={"parameters": "70B"},
        training={"sharding": "fsdp"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
        workers={"replicas": 1, "maxReplicas": 16},
    )
    decision = decide(observe(spec), CATALOG)
    assert decision.sizing is not None and decision.sizing.fits
    assert len(decision.create) == decision.desired_workers == decision.sizing.min_workers > 1


def test_a_layout_that_does_not_fit_starts_nothing() -> None:
    spec = raw_spec(
        model={"parameters": "70B"}, resources={"accelerator": "nvidia-l4", "acceleratorsPerWorker": 1}
    )
    decision = decide(observe(spec), CATALOG)
    assert decision.create == ()
    sized = condition(decision, "Sized")
    assert (sized["status"], sized["reason"]) == ("False", "DoesNotFit")
    assert "nvidia-l4" in sized["message"]
    assert status_of(decision)["sizing"]["fits"] is False
    assert ("Warning", "DoesNotFit") in [(event.type, event.reason) for event in decision.events]


def test_a_named_layout_that_does_not_fit_starts_anyway_under_fit_policy_warn() -> None:
    # A layout the user has run, whose estimate is above what they measured (calibration row 73: litgpt's
    # 13B LoRA on one 40 GB A100, estimated above the usable 36 GiB), could never start.
    resources = {"accelerator": "nvidia-l4", "acceleratorsPerWorker": 1, "fitPolicy": "Warn"}
    decision = decide(observe(raw_spec(model={"parameters": "70B"}, resources=resources)), CATALOG)
    assert created_names(decision) == ["llama-worker-0", "llama-worker-1"]
    sized = condition(decision, "Sized")
    assert (sized["status"], sized["reason"]) == ("False", "DoesNotFit")  # still said, and a Warning event
    assert ("Warning", "DoesNotFit") in [(event.type, event.reason) for event in decision.events]
    sizing = status_of(decision)["sizing"]
    assert sizing["fits"] is False
    assert any(
        w.startswith("resources.fitPolicy Warn: the estimate does not fit") for w in sizing["warnings"]
    )
    # More workers than the spec allows still start none: no layout to vouch for.
    too_few = raw_spec(
        model={"parameters": "70B"},
        training={"sharding": "zero3"},
        resources={**resources, "accelerator": "nvidia-h100-80gb"},
        workers={"replicas": 1},
    )
    blocked = decide(observe(too_few), CATALOG)
    assert blocked.create == () and condition(blocked, "Ready")["reason"] == "TooFewWorkers"
    assert not any("fitPolicy" in w for w in status_of(blocked)["sizing"]["warnings"])


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (raw_spec(workers={"replicas": 2, "minReplicas": 4, "maxReplicas": 3}), "spec.workers"),
        (raw_spec(resources={"accelerator": "nvidia-z9000"}), "spec.resources.accelerator"),
        (raw_spec(model={"precision": "fp64"}), "spec.model"),
        ({key: value for key, value in raw_spec().items() if key != "model"}, "spec.model"),
        (raw_spec(workers={"replicas": -1}), "spec.workers.replicas"),
        (raw_spec(template={"spec": {"containers": []}}), "spec.template"),
        ("not an object", "spec"),
    ],
)
def test_invalid_spec_names_the_field_and_starts_nothing(spec: Any, field: str) -> None:
    decision = decide(observe(spec), CATALOG)
    ready = condition(decision, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert field in ready["message"]
    assert decision.create == () and decision.delete == ()
    assert status_of(decision)["phase"] == "Pending"
    assert status_of(decision)["sizing"] is None
    assert [(event.type, event.reason) for event in decision.events] == [("Warning", "InvalidSpec")]


def test_invalid_spec_event_is_posted_once() -> None:
    spec = raw_spec(resources={"accelerator": "nvidia-z9000"})
    first = decide(observe(spec), CATALOG)
    again = decide(observe(spec, status=first.status, now=NOW + timedelta(minutes=1)), CATALOG)
    assert again.events == ()
    assert condition(again, "Ready")["lastTransitionTime"] == "2025-01-01T12:00:00Z"


def test_invalid_spec_leaves_existing_workers_alone() -> None:
    spec = raw_spec(workers={"replicas": 2, "minReplicas": 4, "maxReplicas": 3})
    decision = decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG)
    assert decision.delete == () and decision.create == ()
    assert status_of(decision)["replicas"] == 2


@pytest.mark.parametrize("name", ["Llama", "llama.v2", "9lives", "x" * 60, "x" * 100])
def test_job_names_that_cannot_become_hostnames_are_refused(name: str) -> None:
    decision = decide(observe(job=JobRef(name=name, namespace="n", uid="u")), CATALOG)
    ready = condition(decision, "Ready")
    assert (ready["reason"], "metadata.name" in ready["message"]) == ("InvalidSpec", True)
    assert decision.create == ()
    # A Service of that name the API server would refuse: asked for, it turned InvalidSpec into a
    # ReconcileError retried for ever (where no webhook refuses such a job).
    assert (decision.service is None) == (name != "x" * 60)


def test_a_worker_fqdn_longer_than_the_kubelet_allows_is_refused_in_the_jobs_namespace_and_domain() -> None:
    # Under setHostnameAsFQDN the kubelet would never start the pod (ContainerCreating, no failure).
    spec = raw_spec()
    spec["template"]["spec"]["setHostnameAsFQDN"] = True
    job = JobRef(name="llama", namespace="n" * 30, uid="u")
    ready = condition(decide(observe(spec, job=job), CATALOG), "Ready")
    assert ready["reason"] == "InvalidSpec" and "setHostnameAsFQDN" in ready["message"]
    assert ".svc.cluster.local'" in ready["message"]
    short = ReconcileSettings(cluster_domain="k8s")
    assert condition(decide(observe(spec, job=job), CATALOG, short), "Ready")["reason"] != "InvalidSpec"


def test_workers_rendezvous_at_worker_0s_fqdn_in_the_namespace_and_the_operators_cluster_domain() -> None:
    # The relative <job>-worker-0.<job> could resolve to another namespace's Service (docs/security.md).
    job = JobRef(name="llama", namespace="ml", uid="u")
    for domain in ("cluster.local", "corp.example"):
        decision = decide(observe(job=job), CATALOG, ReconcileSettings(cluster_domain=domain))
        assert decision.create == (0, 1)
        for index in decision.create:
            trainer = decision.worker_pod(index)["spec"]["containers"][0]
            env = {variable["name"]: variable["value"] for variable in trainer["env"]}
            assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == f"llama-worker-0.llama.ml.svc.{domain}"


def test_a_job_whose_rendezvous_fqdn_is_no_dns_name_is_refused_naming_metadata_name() -> None:
    # Worker 0's FQDN, the rendezvous address: 2 * 54 + 79 characters and the cluster domain's; DNS allows 253.
    name = "x" * 54  # x...x-worker-1: 63 characters, the longest worker hostname
    job = JobRef(name=name, namespace="n" * 63, uid="u")
    too_long = ReconcileSettings(cluster_domain="a" * 33 + "." + "b" * 33)  # 187 + 67 = 254
    ready = condition(decide(observe(job=job), CATALOG, too_long), "Ready")
    assert ready["reason"] == "InvalidSpec" and ready["message"].startswith("invalid spec: metadata.name: ")
    assert "rendezvous address" in ready["message"] and "254 characters; DNS allows 253" in ready["message"]
    fits = ReconcileSettings(cluster_domain="a" * 33 + "." + "b" * 32)  # 253
    assert decide(observe(job=job), CATALOG, fits).create == (0, 1)
    wide_label = ReconcileSettings(cluster_domain="c" * 64 + ".local")
    ready = condition(decide(observe(), CATALOG, wide_label), "Ready")
    assert ready["reason"] == "InvalidSpec" and "metadata.name" in ready["message"]
    assert f"the label {'c' * 64!r}, longer than DNS's 63 characters" in ready["message"]
    # framework none: the workers get no rendezvous address, so nothing to refuse
    none = decide(observe(raw_spec(framework="none"), job=job), CATALOG, too_long)
    assert condition(none, "Ready")["reason"] != "InvalidSpec"


# ---------------------------------------------------------------------------------------------- worker limit


@pytest.mark.parametrize(
    ("workers", "fields"),
    [
        ({"replicas": 9}, ["spec.workers.replicas"]),
        ({"replicas": 2, "maxReplicas": 9}, ["spec.workers.maxReplicas"]),
        (
            {"replicas": 9, "minReplicas": 9, "maxReplicas": 12},
            [f"spec.workers.{name}" for name in ("replicas", "maxReplicas", "minReplicas")],
        ),
    ],
)
def test_more_workers_than_the_operator_allows_is_invalid_and_names_the_field(
    workers: dict[str, int], fields: list[str]
) -> None:
    decision = decide(observe(raw_spec(workers=workers)), CATALOG, ReconcileSettings(max_workers_per_job=8))
    ready = condition(decision, "Ready")
    assert ready["reason"] == "InvalidSpec"
    named = [part.split(":")[0] for part in ready["message"].removeprefix("invalid spec: ").split("; ")]
    assert named == fields
    assert "exceed this operator's limit of 8 per job (kubefit run --max-workers-per-job)" in ready["message"]
    assert decision.create == () and status_of(decision)["sizing"] is None


def test_a_job_at_the_limit_runs() -> None:
    spec = raw_spec(workers={"replicas": 8, "maxReplicas": 8})
    decision = decide(observe(spec), CATALOG, ReconcileSettings(max_workers_per_job=8))
    assert decision.create == tuple(range(8))
    assert ReconcileSettings().max_workers_per_job == DEFAULT_MAX_WORKERS_PER_JOB == 1024


def test_a_decision_holds_worker_indices_not_manifests() -> None:
    # Building 4096 manifests up front took seconds and ~32 MiB; indices and one shared WorkerSet do not.
    spec = raw_spec(workers={"replicas": 4096})
    decision = decide(observe(spec), CATALOG, ReconcileSettings(max_workers_per_job=4096))
    assert decision.create == tuple(range(4096))
    assert decision.worker_pod(4095)["metadata"]["name"] == "llama-worker-4095"
    assert decide(observe(), CATALOG).worker_pod(0)["spec"]["hostname"] == "llama-worker-0"
    with pytest.raises(ValueError, match="creates no workers"):
        decide(observe(raw_spec(runPolicy={"suspend": True})), CATALOG).worker_pod(0)


def test_new_workers_prefer_the_nodes_the_pass_reserved_for_them() -> None:
    reserved = replace(observe(), reserved_hostnames=frozenset({"gpu-b", "gpu-a"}))
    affinity = decide(reserved, CATALOG).worker_pod(0)["spec"]["affinity"]["nodeAffinity"]
    assert affinity["preferredDuringSchedulingIgnoredDuringExecution"] == [
        {
            "weight": 100,
            "preference": {
                "matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-a", "gpu-b"]}
                ]
            },
        }
    ]
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"]  # the accelerator's terms stay
    plain = decide(observe(), CATALOG).worker_pod(0)["spec"]["affinity"]["nodeAffinity"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in plain


def test_workers_request_the_host_memory_of_the_one_sizing_path_without_estimating_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubefit.builders.resources import default_memory
    from kubefit.decisions.job_sizing import size_job
    from kubefit.sizing import estimator

    spec = raw_spec(
        model={"parameters": "8B"},
        training={"offload": "optimizer", "sharding": "zero2"},
        workers={"replicas": 6},
    )
    host_bytes = size_job(parse_spec(spec), CATALOG).host_bytes_per_worker
    assert host_bytes > 0  # 8B parameters of Adam state, split over six workers, do not round to nothing
    decision = decide(observe(spec), CATALOG)

    def no_estimate(*_: Any) -> Any:
        raise AssertionError("the pod builder estimated memory again")

    monkeypatch.setattr(estimator, "estimate", no_estimate)
    pods = [decision.worker_pod(index) for index in decision.create]
    requests = [pod["spec"]["containers"][0]["resources"]["requests"]["memory"] for pod in pods]
    assert len(pods) == 6 and set(requests) == {default_memory(1, host_bytes)}
    assert default_memory(1, host_bytes) != default_memory(1)


# ---------------------------------------------------------------------------------------------- reconcile errors


def test_a_reconcile_error_is_recorded_once_per_message() -> None:
    status = status_of(decide(observe(), CATALOG))
    first = reconcile_error(status, 3, "ZeroDivisionError:  division\nby zero", "2025-01-01T12:00:00Z")
    assert first.status is not None
    conditions = {item["type"]: item for item in first.status["conditions"]}
    assert set(conditions) == {"Sized", "Admitted", "Ready", "Running"}  # the others are kept as they were
    assert conditions["Sized"] == next(c for c in status["conditions"] if c["type"] == "Sized")
    assert (conditions["Ready"]["reason"], conditions["Ready"]["message"]) == (
        "ReconcileError",
        "ZeroDivisionError: division by zero",
    )
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "ReconcileError")]
    after = {**status, **first.status}
    again = reconcile_error(after, 3, "ZeroDivisionError: division by zero", "2025-01-01T12:05:00Z")
    assert again.status is None and again.events == ()
    other = reconcile_error(after, 3, "a different error", "2025-01-01T12:05:00Z")
    assert other.status is not None and other.events[0].message == "a different error"
    long = reconcile_error({}, None, "x" * 5000, "2025-01-01T12:00:00Z")
    assert len(long.events[0].message) == MESSAGE_LIMIT and long.events[0].message.endswith("...")


# ---------------------------------------------------------------------------------------------- ownership


def test_pods_of_an_earlier_job_with_the_same_name_are_ignored() -> None:
    decision = decide(observe(pods=[pod(0, owner="old-uid"), pod(1)]), CATALOG)
    assert decision.delete == ()
    assert decision.create == ()  # worker-0's name is still taken until the garbage collector removes it
    assert status_of(decision)["replicas"] == 1


def test_labelled_pods_without_a_controller_are_adopted() -> None:
    decision = decide(observe(pods=[pod(0, owner=None), pod(1)]), CATALOG)
    assert decision.adopt == ("llama-worker-0",)
    assert status_of(decision)["readyReplicas"] == 2


# ---------------------------------------------------------------------------------------------- restarts


def test_a_failed_worker_of_a_fixed_group_restarts_the_group_once_counted() -> None:
    """Not elastic: the others' rendezvous (WORLD_SIZE 2) cannot take a new worker 1, so both go, and
    come back together after the backoff; one restart."""
    decision = decide(observe(pods=[pod(0), pod(1, "Failed")]), CATALOG)
    assert [failed.name for failed in decision.replace] == ["llama-worker-1"]
    assert decision.delete == ("llama-worker-0",)
    assert decision.create == ()  # recreated once the old pods are gone and the backoff is over
    assert status_of(decision)["restarts"] == 1
    failed_events = [event for event in decision.events if event.reason == "WorkerFailed"]
    assert [event.type for event in failed_events] == ["Warning"]
    assert "llama-worker-1 failed on node-a" in failed_events[0].message
    assert "(restart 1 of at most 3)" in failed_events[0].message
    restarting = condition(decision, "Ready")
    assert (restarting["status"], restarting["reason"]) == ("False", "Restarting")
    assert status_of(decision)["lastFailureTime"] == "2025-01-01T12:00:00Z"
    # The new group's gang clock starts when its backoff ends, not now.
    assert status_of(decision)["gang"]["started"] is False
    assert status_of(decision)["gang"]["since"] == "2025-01-01T12:00:05Z"

    going = decide(observe(pods=[pod(0, terminating=True)], status=decision.status), CATALOG)
    assert going.create == () and going.delete == () and status_of(going)["restarts"] == 1
    gone = decide(observe(status=decision.status), CATALOG)
    assert gone.create == () and gone.requeue_after == 5.0  # the first restart waits 5 s
    assert "restart backoff" in status_of(gone)["message"]
    waiting = condition(gone, "Ready")
    assert (waiting["reason"], waiting["message"]) == (
        "RestartBackoff",
        "0/2 workers running; replacing failed workers at 2025-01-01T12:00:05Z",
    )
    later = decide(observe(status=decision.status, now=NOW + timedelta(seconds=5)), CATALOG)
    assert created_names(later) == ["llama-worker-0", "llama-worker-1"]
    assert condition(later, "Ready")["reason"] == "WorkersNotReady"
    assert status_of(later)["restarts"] == 1


def test_workers_of_a_fixed_group_failing_together_are_one_restart() -> None:
    """One rank's crash takes the others down: four failed workers are one incident, not four restarts
    (which at maxRestarts 3 would fail the job at its first crash)."""
    spec = raw_spec(workers={"replicas": 4})
    decision = decide(observe(spec, pods=[pod(index, "Failed") for index in range(4)]), CATALOG)
    assert status_of(decision)["phase"] != "Failed"
    assert status_of(decision)["restarts"] == 1
    assert {failed.name for failed in decision.replace} == {f"llama-worker-{index}" for index in range(4)}
    # A worker of the old group that fails while it is being stopped is not counted either.
    cascade = decide(
        observe(spec, pods=[pod(0, "Failed", terminating=True)], status=decision.status), CATALOG
    )
    assert status_of(cascade)["restarts"] == 1 and cascade.replace == ()


def test_elastic_pytorch_workers_failing_together_are_one_restart_and_a_replacement_failing_is_another() -> (
    None
):
    """An agent that gives up closes torchrun's rendezvous (worker 0's takes the store with it), so the
    other workers fail after it, seconds or a collective timeout later. Counted one per pod, one crash of
    four workers passed maxRestarts 3 and failed the job."""
    spec = elastic_spec(replicas=4, minimum=1, maximum=4)
    started = "2025-01-01T11:00:00Z"
    first = decide(observe(spec, pods=[pod(0), pod(1), pod(2, "Failed", created=started), pod(3)]), CATALOG)
    assert status_of(first)["restarts"] == 1
    assert status_of(first)["lastFailureTime"] == "2025-01-01T12:00:00Z"
    # The rest of the group, created before that failure, fail within the collectives' timeout.
    later = NOW + timedelta(minutes=3)
    rest = [pod(index, "Failed", created=started) for index in (0, 1, 3)]
    cascade = decide(observe(spec, pods=rest, status=first.status, now=later), CATALOG)
    assert status_of(cascade)["phase"] != "Failed"
    assert status_of(cascade)["restarts"] == 1
    assert status_of(cascade)["lastFailureTime"] == "2025-01-01T12:00:00Z"  # the burst's start
    assert {failed.name for failed in cascade.replace} == {f"llama-worker-{index}" for index in (0, 1, 3)}
    notes = [event.message for event in cascade.events if event.reason == "WorkerFailed"]
    assert len(notes) == 3 and all("(part of restart 1 of at most 3, not counted again)" in n for n in notes)
    assert [e.message for e in first.events if e.reason == "WorkerFailed"][0].endswith(
        "(restart 1 of at most 3)"
    )
    # One created in the second the failure was seen (timestamps are to the second) was there before it.
    same_second = [pod(1, "Failed", created="2025-01-01T12:00:00Z")]
    quick = decide(observe(spec, pods=same_second, status=first.status, now=later), CATALOG)
    assert status_of(quick)["restarts"] == 1
    # A replacement, created after the failure, failing is a new one.
    replacement = pod(2, "Failed", uid="pod-2b", created="2025-01-01T12:00:05Z")
    again = decide(observe(spec, pods=[replacement], status=cascade.status, now=later), CATALOG)
    assert status_of(again)["restarts"] == 2
    # So is an old worker failing long after the last failure, and one whose creation is not known.
    long_after = NOW + timedelta(seconds=FAILURE_BURST_SECONDS + 1)
    old = decide(
        observe(spec, pods=[pod(1, "Failed", created=started)], status=first.status, now=long_after), CATALOG
    )
    assert status_of(old)["restarts"] == 2
    unknown = decide(observe(spec, pods=[pod(1, "Failed")], status=first.status, now=later), CATALOG)
    assert status_of(unknown)["restarts"] == 2


def test_a_group_restart_after_a_failure_reruns_the_workers_that_had_finished() -> None:
    # framework none: one process finishing says nothing of the others (a pytorch or jax group's training
    # ended with it, and a later failure restarts nothing: tests/unit/test_finishing_groups.py).
    spec = raw_spec(framework="none")
    first = decide(observe(spec, pods=[pod(0, "Succeeded"), pod(1)]), CATALOG)
    assert status_of(first)["succeededWorkers"] == "0"
    failed = decide(observe(spec, pods=[pod(0, "Succeeded"), pod(1, "Failed")], status=first.status), CATALOG)
    assert failed.delete == ("llama-worker-0",)
    assert status_of(failed)["succeededWorkers"] is None
    later = decide(observe(spec, status=failed.status, now=NOW + timedelta(seconds=5)), CATALOG)
    assert later.create == (0, 1)


def test_a_failed_worker_of_an_elastic_jax_job_restarts_the_group() -> None:
    spec = elastic_spec(replicas=3, minimum=2, maximum=3, framework="jax")
    decision = decide(observe(spec, pods=[pod(0), pod(1), pod(2, "Failed")], grant=3), CATALOG)
    assert set(decision.delete) == {"llama-worker-0", "llama-worker-1"}
    assert status_of(decision)["restarts"] == 1


def test_a_restarted_group_not_placed_in_time_after_its_backoff_times_out() -> None:
    failed = decide(observe(pods=[pod(0), pod(1, "Failed")]), CATALOG)
    timeout = 300  # scheduling.gangTimeoutSeconds' default
    pending = [pod(0, "Pending"), pod(1, "Pending")]
    in_time = decide(
        observe(pods=pending, status=failed.status, now=NOW + timedelta(seconds=5 + timeout - 1)), CATALOG
    )
    assert condition(in_time, "Admitted")["status"] == "True"
    late = decide(
        observe(pods=pending, status=failed.status, now=NOW + timedelta(seconds=5 + timeout)), CATALOG
    )
    assert condition(late, "Admitted")["reason"] == "GangTimeout"


def test_a_replaced_worker_still_in_the_cache_is_not_counted_twice() -> None:
    first = decide(observe(pods=[pod(0), pod(1, "Failed")]), CATALOG)
    stale = decide(
        observe(pods=[pod(0), pod(1, "Failed")], status=first.status, replaced=frozenset({"pod-1"})), CATALOG
    )
    assert stale.replace == ()
    assert status_of(stale)["restarts"] == 1
    assert stale.delete == ("llama-worker-1",)  # deleting again is harmless if the first delete was lost


def test_exceeding_max_restarts_fails_the_job_and_stops_running_workers() -> None:
    spec = raw_spec(runPolicy={"maxRestarts": 1})
    decision = decide(observe(spec, pods=[pod(0), pod(1, "Failed")], status={"restarts": 1}), CATALOG)
    assert status_of(decision)["phase"] == "Failed"
    failed = condition(decision, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "RestartLimitExceeded")
    assert "spec.runPolicy.maxRestarts is 1" in failed["message"]
    assert decision.delete == ("llama-worker-0",)  # the failed pod is kept for its logs
    assert status_of(decision)["completionTime"] == "2025-01-01T12:00:00Z"
    assert status_of(decision)["restarts"] == 1
    assert decision.service is None


def test_a_failed_job_stays_failed() -> None:
    spec = raw_spec(runPolicy={"maxRestarts": 0})
    failed = decide(observe(spec, pods=[pod(0), pod(1, "Failed")]), CATALOG)
    later = decide(
        observe(spec, pods=[pod(1, "Failed")], status=failed.status, now=NOW + timedelta(hours=1)), CATALOG
    )
    assert later.create == () and status_of(later)["phase"] == "Failed"
    assert status_of(later)["completionTime"] == status_of(failed)["completionTime"]
    assert later.events == ()


# ---------------------------------------------------------------------------------------------- completion


def test_all_workers_succeeded_completes_the_job() -> None:
    decision = decide(observe(pods=[pod(0, "Succeeded"), pod(1, "Succeeded")]), CATALOG)
    assert status_of(decision)["phase"] == "Succeeded"
    assert condition(decision, "Succeeded")["status"] == "True"
    assert status_of(decision)["completionTime"] == "2025-01-01T12:00:00Z"
    assert decision.create == () and decision.delete == ()
    assert decision.requested_accelerators == 0


def test_one_worker_succeeded_is_not_yet_success() -> None:
    decision = decide(observe(pods=[pod(0, "Succeeded"), pod(1)]), CATALOG)
    assert status_of(decision)["phase"] != "Succeeded"


def test_a_worker_that_succeeded_is_not_run_again_when_its_pod_goes() -> None:
    """A node removed after its worker finished (a cluster autoscaler removes nodes that hold only finished
    pods) takes the pod with it: status.succeededWorkers keeps the worker done."""
    one_done = decide(observe(pods=[pod(0, "Succeeded"), pod(1)]), CATALOG)
    assert status_of(one_done)["succeededWorkers"] == "0"
    gone = decide(observe(pods=[pod(1)], status=one_done.status), CATALOG)
    assert gone.create == () and gone.delete == ()
    assert status_of(gone)["succeededWorkers"] == "0"
    finished = decide(observe(pods=[pod(1, "Succeeded")], status=gone.status), CATALOG)
    assert status_of(finished)["phase"] == "Succeeded"
    assert status_of(finished)["succeededWorkers"] == "0-1"
    # The scheduling pass counts it placed, on no node: it reserved a place for it, or lowered the grant.
    assert one_done.demand is not None and one_done.demand.finished_workers == 1
    assert gone.demand is not None and gone.demand.finished_workers == 1


def test_an_elastic_job_keeps_a_succeeded_worker_whose_pod_went_instead_of_starting_another() -> None:
    spec = elastic_spec(replicas=3, minimum=1, maximum=4)
    pods = [pod(0), pod(1), pod(2, "Succeeded")]
    one_done = decide(observe(spec, pods=pods), CATALOG)
    assert status_of(one_done)["succeededWorkers"] == "2"
    gone = decide(observe(spec, pods=pods[:2], status=one_done.status), CATALOG)
    assert gone.create == () and gone.delete == ()


def test_a_restarted_group_forgets_what_succeeded_in_it() -> None:
    """A fixed group restarted after a failure: the new group's every worker runs. (framework none: a
    pytorch or jax group with a worker that succeeded is finishing, and is neither restarted, preempted nor
    suspended: tests/unit/test_finishing_groups.py.)"""
    spec = raw_spec(framework="none")
    one_done = decide(observe(spec, pods=[pod(0, "Succeeded"), pod(1)]), CATALOG)
    failed = decide(
        observe(spec, pods=[pod(0, "Succeeded"), pod(1, "Failed")], status=one_done.status), CATALOG
    )
    assert status_of(failed)["succeededWorkers"] is None
    again = decide(observe(spec, status=failed.status, now=NOW + timedelta(seconds=10)), CATALOG)
    assert again.create == (0, 1)


def test_a_garbled_succeeded_workers_record_counts_as_none() -> None:
    spec = elastic_spec(replicas=2, minimum=1, maximum=2)  # a fixed group would restart whole instead
    one_done = decide(observe(spec, pods=[pod(0, "Succeeded"), pod(1)]), CATALOG)
    for hand_edited in ("0-x", "0-²", "²"):  # "²" is a digit to isdigit(), not to int()
        garbled = {
            **one_done.status.model_dump(by_alias=True, exclude_none=True),
            "succeededWorkers": hand_edited,
        }
        decision = decide(observe(spec, pods=[pod(1)], status=garbled), CATALOG)
        assert decision.create == (0,)
        assert status_of(decision)["succeededWorkers"] is None


@given(st.frozensets(st.integers(min_value=0, max_value=300), max_size=40))
@settings(deadline=None, max_examples=200, derandomize=True, database=None)
def test_worker_index_ranges_read_back_as_written(indices: frozenset[int]) -> None:
    written = index_ranges(indices)
    assert parse_index_ranges(written) == indices
    assert re.fullmatch(r"(\d+(-\d+)?(,\d+(-\d+)?)*)?", written)


@pytest.mark.parametrize(("elapsed", "deleted"), [(59, False), (60, True)])
def test_ttl_after_finished_deletes_the_job(elapsed: int, deleted: bool) -> None:
    spec = raw_spec(runPolicy={"ttlSecondsAfterFinished": 60})
    done = decide(observe(spec, pods=[pod(0, "Succeeded"), pod(1, "Succeeded")]), CATALOG)
    assert not done.delete_job
    later = decide(observe(spec, status=done.status, now=NOW + timedelta(seconds=elapsed)), CATALOG)
    assert later.delete_job is deleted


def test_ttl_after_finished_deletes_a_finished_job_whose_spec_was_made_invalid_since() -> None:
    # Read through the parsed spec, the TTL of a job edited past validation after it finished (the webhook
    # off, or a rule an upgrade made stricter) was never reached: the job stayed for ever.
    spec = raw_spec(runPolicy={"ttlSecondsAfterFinished": 60})
    done = decide(observe(spec, pods=[pod(0, "Succeeded"), pod(1, "Succeeded")]), CATALOG)
    invalid = raw_spec(
        runPolicy={"ttlSecondsAfterFinished": 60}, workers={"minReplicas": 3, "maxReplicas": 2}
    )
    kept = decide(observe(invalid, status=done.status, now=NOW + timedelta(seconds=59)), CATALOG)
    assert not kept.delete_job and kept.requeue_after == 1
    expired = decide(observe(invalid, status=done.status, now=NOW + timedelta(seconds=60)), CATALOG)
    assert expired.delete_job
    for unreadable in ("60", -1, True):  # not a count as written: kept, as without a TTL
        written = raw_spec(runPolicy={"ttlSecondsAfterFinished": unreadable})
        assert not decide(
            observe(written, status=done.status, now=NOW + timedelta(days=1)), CATALOG
        ).delete_job


def test_without_ttl_a_finished_job_is_kept() -> None:
    done = decide(observe(pods=[pod(0, "Succeeded"), pod(1, "Succeeded")]), CATALOG)
    assert done.requeue_after is None
    later = decide(observe(status=done.status, now=NOW + timedelta(days=30)), CATALOG)
    assert not later.delete_job and later.requeue_after is None


def test_ttl_after_finished_asks_to_be_reconciled_when_it_expires() -> None:
    # No event marks the moment the TTL expires: without a requeue the job would wait for the next
    # resync (30 s by default) however short its TTL.
    spec = raw_spec(runPolicy={"ttlSecondsAfterFinished": 60})
    done = decide(observe(spec, pods=[pod(0, "Succeeded"), pod(1, "Succeeded")]), CATALOG)
    assert done.requeue_after == 60
    later = decide(observe(spec, status=done.status, now=NOW + timedelta(seconds=45.5)), CATALOG)
    assert later.requeue_after == 14.5 and not later.delete_job
    expired = decide(observe(spec, status=done.status, now=NOW + timedelta(seconds=60)), CATALOG)
    assert expired.delete_job and expired.requeue_after is None


def test_ttl_after_a_failure_asks_to_be_reconciled_when_it_expires() -> None:
    spec = raw_spec(runPolicy={"maxRestarts": 0, "ttlSecondsAfterFinished": 0})
    failed = decide(observe(spec, pods=[pod(0), pod(1, "Failed")]), CATALOG)
    assert status_of(failed)["phase"] == "Failed" and failed.requeue_after == 0
    assert decide(observe(spec, pods=[pod(1, "Failed")], status=failed.status), CATALOG).delete_job


def test_running_and_suspended_jobs_ask_for_no_requeue() -> None:
    spec = raw_spec(runPolicy={"ttlSecondsAfterFinished": 60})
    assert decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG).requeue_after is None
    suspended = raw_spec(runPolicy={"ttlSecondsAfterFinished": 60, "suspend": True})
    assert decide(observe(suspended), CATALOG).requeue_after is None


# ---------------------------------------------------------------------------------------------- suspend


def test_suspend_deletes_every_worker_and_resume_recreates_them() -> None:
    spec = raw_spec(runPolicy={"suspend": True}, elastic={"checkpointGracePeriodSeconds": 0})
    suspended = decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG)
    assert suspended.delete == ("llama-worker-1", "llama-worker-0")
    assert suspended.demand is None  # a suspended job asks the scheduling pass for nothing
    assert suspended.create == ()
    assert status_of(suspended)["phase"] == "Suspended"
    assert condition(suspended, "Suspended")["status"] == "True"
    resumed = decide(observe(raw_spec(), status=suspended.status), CATALOG)
    assert created_names(resumed) == ["llama-worker-0", "llama-worker-1"]
    assert (condition(resumed, "Suspended")["status"], condition(resumed, "Suspended")["reason"]) == (
        "False",
        "Resumed",
    )


# ---------------------------------------------------------------------------------------------- conditions


def test_last_transition_time_changes_only_with_the_status() -> None:
    first = apply_conditions([], [ConditionUpdate("Ready", "False", "A", "a")], 1, "t1")
    same_status = apply_conditions(first, [ConditionUpdate("Ready", "False", "B", "b")], 2, "t2")
    flipped = apply_conditions(same_status, [ConditionUpdate("Ready", "True", "C", "c")], 3, "t3")
    assert first[0]["lastTransitionTime"] == "t1"
    assert same_status[0] == {
        "type": "Ready",
        "status": "False",
        "reason": "B",
        "message": "b",
        "observedGeneration": 2,
        "lastTransitionTime": "t1",
    }
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_untouched_conditions_are_kept_in_order() -> None:
    before = apply_conditions(
        [], [ConditionUpdate("A", "True", "x"), ConditionUpdate("B", "True", "y")], 1, "t1"
    )
    after = apply_conditions(
        before, [ConditionUpdate("C", "True", "z"), ConditionUpdate("A", "False", "w")], 1, "t2"
    )
    assert [item["type"] for item in after] == ["A", "B", "C"]
    assert after[1] == before[1]


# ---------------------------------------------------------------------------------------------- observation


def test_worker_from_pod_manifest() -> None:
    manifest = {
        "metadata": {
            "name": "llama-worker-2",
            "uid": "u2",
            "labels": {"kubefit.dev/job": "llama"},
            "ownerReferences": [
                {"uid": "other", "controller": False},
                {"uid": "job-uid", "controller": True},
            ],
            "deletionTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": {"nodeName": "gpu-1"},
        "status": {"phase": "Running"},
    }
    worker = worker_from_pod(manifest)
    assert worker == WorkerPod(
        "llama-worker-2",
        2,
        "u2",
        "Running",
        "gpu-1",
        True,
        "job-uid",
        deletion_timestamp="2025-01-01T00:00:00Z",
    )
    assert not worker.ready  # terminating
    assert worker_from_pod({"metadata": {"name": "x"}}) is None


def test_scale_workers_and_stop_workers_directly() -> None:
    pods = [pod(0), pod(3), pod(5, terminating=True)]
    fixed = scale_workers(worker_slots(2, pods, (), keep_survivors=False), pods)
    assert fixed.create == (1,)
    assert fixed.delete == ("llama-worker-3",)
    # An elastic job keeps its survivors: workers 0 and 3 are its two; nothing is traded.
    elastic = scale_workers(worker_slots(2, pods, (), keep_survivors=True), pods)
    assert elastic.create == () and elastic.delete == ()
    assert worker_slots(4, pods, (), keep_survivors=True) == {0, 1, 2, 3}  # grows into the gaps
    assert worker_slots(2, [pod(2), pod(3)], (), keep_survivors=True) == {0, 2}  # worker 0 always
    assert stop_workers([pod(0), pod(1, "Failed"), pod(2, terminating=True)], keep_finished=True) == (
        "llama-worker-0",
    )


# ---------------------------------------------------------------------------------------------- inventory


def gpu_pod(node: str | None, gpus: str, phase: str = "Running", job: str | None = None) -> dict[str, Any]:
    labels = {"kubefit.dev/job": job} if job else {}
    return {
        "metadata": {"namespace": "team-a", "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": gpus, "cpu": "2"}}}],
        },
        "status": {"phase": phase},
    }


def test_pod_usage_counts_bound_live_pods_only() -> None:
    usage = pod_usage(gpu_pod("n1", "4"))
    assert usage is not None
    assert (usage.node_name, usage.requests, usage.job) == ("n1", {"nvidia.com/gpu": 4}, None)
    assert usage.pod[0] == "team-a"  # kopf's key of the pod: (namespace, name, uid)
    assert pod_usage(gpu_pod("n1", "4", job="llama")).job == ("team-a", "llama")
    assert pod_usage(gpu_pod(None, "4")) is None
    assert pod_usage(gpu_pod("n1", "4", phase="Succeeded")) is None


def test_pod_usage_charges_init_containers_and_sidecars_as_kube_scheduler_does() -> None:
    def with_init(*inits: dict) -> dict:
        pod = gpu_pod("n1", "1")
        pod["spec"]["initContainers"] = list(inits)
        return pod

    def init(count: str, sidecar: bool = False) -> dict:
        container = {"name": "i", "resources": {"limits": {"nvidia.com/gpu": count}}}
        return {**container, "restartPolicy": "Always"} if sidecar else container

    def held(pod: dict) -> dict:
        usage = pod_usage(pod)
        assert usage is not None
        return usage.requests

    # An init container's 8 devices stay charged beside a 1-device container: the node has 8 fewer.
    assert held(with_init(init("8"))) == {"nvidia.com/gpu": 8}
    assert held(with_init(init("0"))) == {"nvidia.com/gpu": 1}
    # A sidecar runs beside the containers: 1 + 2; an init container after it runs beside it: 2 + 4.
    assert held(with_init(init("2", sidecar=True))) == {"nvidia.com/gpu": 3}
    assert held(with_init(init("2", sidecar=True), init("4"))) == {"nvidia.com/gpu": 6}
    assert held(with_init(init("4"), init("2", sidecar=True))) == {"nvidia.com/gpu": 4}


def test_inventory_free_devices_and_own_job_excluded() -> None:
    h100 = node_facts(
        {
            "metadata": {"name": "h1", "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
            "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "32"}},
        }
    )
    cpu_only = NodeFacts("c1", {}, {"cpu": "8"})
    cordoned = NodeFacts("h2", dict(h100.labels), {"nvidia.com/gpu": "8"}, schedulable=False)
    usage = {"h1": [pod_usage(gpu_pod("h1", "4", job="other")), pod_usage(gpu_pod("h1", "2", job="llama"))]}
    inventory = build_inventory([h100, cpu_only, cordoned], usage, CATALOG)
    assert inventory.placeable == [NodeInventory("h1", "nvidia-h100-80gb", 8, 2, cpu_millis=32000)]
    assert inventory.excluded == [NodeInventory("h2", "nvidia-h100-80gb", 8, 8)]  # cordoned
    mine_free = build_inventory([h100], usage, CATALOG, for_job=("team-a", "llama"))
    assert mine_free.placeable == [NodeInventory("h1", "nvidia-h100-80gb", 8, 4, cpu_millis=32000)]


# ---------------------------------------------------------------------------------------------- waste


def test_overprovisioned_fixed_layout_is_warned_in_status_and_told_once_as_an_event() -> None:
    # A 1B model pinned to 8 x H100 per worker: far more than it needs.
    wasteful = raw_spec(resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8})
    first = decide(observe(spec=wasteful), CATALOG)
    warnings = status_of(first)["sizing"]["warnings"]
    advice = [event for event in first.events if event.reason == "OverProvisioned"]
    assert len(advice) == 1 and advice[0].type == "Normal"
    assert advice[0].message in warnings

    again = decide(observe(spec=wasteful, status=first.status), CATALOG)
    assert not [event for event in again.events if event.reason == "OverProvisioned"]
    assert advice[0].message in status_of(again)["sizing"]["warnings"]


def test_layout_the_planner_chose_is_not_called_overprovisioned() -> None:
    chosen = raw_spec(resources={"accelerator": "auto", "acceleratorsPerWorker": "auto"})
    decision = decide(observe(spec=chosen), CATALOG)
    assert not [event for event in decision.events if event.reason == "OverProvisioned"]


# ---------------------------------------------------------------------------------------------- the status schema


def test_the_schema_check_finds_what_the_api_server_would_refuse() -> None:
    stored = decide(observe(), CATALOG).status.model_dump(by_alias=True, exclude_none=True)
    assert schema_errors(stored, STATUS_SCHEMA) == []
    assert schema_errors({**stored, "phase": "Dancing"}, STATUS_SCHEMA) == [
        "status.phase: 'Dancing' not in ['Pending', 'Queued', 'Running', 'Scaling', 'Succeeded', 'Failed', "
        "'Suspended']"
    ]
    assert schema_errors({**stored, "restarts": "1"}, STATUS_SCHEMA) == [
        "status.restarts: '1' is not of type integer"
    ]
    assert schema_errors({**stored, "surprise": 1}, STATUS_SCHEMA) == ["status.surprise: unknown field"]
    broken = {**stored, "conditions": [{"type": "Ready"}]}
    assert "status.conditions[0].status: required" in schema_errors(broken, STATUS_SCHEMA)


_PHASES = st.sampled_from(["Pending", "Running", "Succeeded", "Failed"])
_PODS = st.lists(
    st.tuples(st.integers(0, 5), _PHASES, st.booleans(), st.sampled_from(["job-uid", None, "old"])),
    max_size=6,
    unique_by=lambda item: item[0],
)
_WORKERS = st.fixed_dictionaries(
    {"replicas": st.integers(1, 5)},
    optional={"minReplicas": st.integers(1, 3), "maxReplicas": st.integers(3, 6)},
)


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(
    workers=_WORKERS,
    elastic=st.booleans(),
    suspend=st.booleans(),
    pods=_PODS,
    grant=st.one_of(st.none(), st.integers(0, 6)),
    steps=st.lists(st.integers(0, 400), min_size=1, max_size=4),
    acked=st.booleans(),
)
def test_every_status_decide_produces_fits_the_crd_schema(
    workers: dict[str, int],
    elastic: bool,
    suspend: bool,
    pods: list[tuple[int, str, bool, str | None]],
    grant: int | None,
    steps: list[int],
    acked: bool,
) -> None:
    # A few reconciles in a row, each from the status the one before wrote: every status fits the schema
    # (checked inside `decide`), and none of them raises.
    if "minReplicas" in workers and "maxReplicas" in workers:
        workers["minReplicas"] = min(workers["minReplicas"], workers["maxReplicas"])
    spec = raw_spec(
        workers=workers,
        elastic={"enabled": elastic, "checkpointGracePeriodSeconds": 30},
        runPolicy={"suspend": suspend, "maxRestarts": 2},
        scheduling={"gangTimeoutSeconds": 60},
    )
    observed = [
        pod(index, phase, terminating=terminating, owner=owner) for index, phase, terminating, owner in pods
    ]
    status: dict[str, Any] | TrainingJobStatus = {}
    now = NOW
    for seconds in steps:
        now += timedelta(seconds=seconds)
        acks = {worker.name: 7 for worker in observed} if acked else {}
        status = decide(observe(spec, observed, status, now, grant=grant, acks=acks), CATALOG).status


# ---------------------------------------------------------------------------------------------- admission


ELASTIC = {"enabled": True, "checkpointGracePeriodSeconds": 30}


def elastic_spec(replicas: int = 4, minimum: int = 1, maximum: int = 4, **overrides: Any) -> dict[str, Any]:
    workers = {"replicas": replicas, "minReplicas": minimum, "maxReplicas": maximum}
    return raw_spec(workers=workers, elastic=ELASTIC, **overrides)


def events_of(decision: Decision) -> list[tuple[str, str]]:
    return [(event.type, event.reason) for event in decision.events]


def test_a_job_not_admitted_creates_no_pod_and_says_what_is_missing() -> None:
    waiting = "needs 2 nodes with 1 free nvidia-h100-80gb; 1 has"
    observation = observe(grant=None)
    planned = f"InsufficientCapacity: {waiting}"  # AdmissionPlan.waiting's "Word: detail"
    queued = decide(JobObservation(**{**observation.__dict__, "waiting": planned}), CATALOG)
    assert queued.create == () and queued.worker_set is None
    admitted = condition(queued, "Admitted")
    assert (admitted["status"], admitted["reason"], admitted["message"]) == (
        "False",
        "InsufficientCapacity",
        waiting,
    )
    assert status_of(queued)["phase"] == "Queued"
    assert status_of(queued)["desiredReplicas"] == 0
    assert (
        status_of(queued)["workers"] == "0/2"
    )  # what it asks for, as the contract's "ready/desired"; was 0/0
    assert waiting in status_of(queued)["message"]
    assert queued.demand is not None  # it asks the scheduling pass for its workers
    assert decide(observe(grant=0), CATALOG).create == ()


def test_a_queued_job_posts_one_event_however_its_waiting_message_changes() -> None:
    def waiting(status: dict[str, Any] | None, why: str) -> Decision:
        return decide(
            JobObservation(**{**observe(status=status, grant=None).__dict__, "waiting": why}), CATALOG
        )

    first = waiting(None, "InsufficientCapacity: 1 has")
    assert ("Normal", "InsufficientCapacity") in events_of(first)
    later = waiting(first.status, "InsufficientCapacity: 0 has")
    assert condition(later, "Admitted")["message"] == "0 has"
    assert events_of(later) == []
    # Between waiting for capacity and waiting behind another job, as the queue moves: no Event either.
    behind = waiting(later.status, "Queued: behind ml/big in the queue (StrictFIFO)")
    assert condition(behind, "Admitted")["reason"] == "Queued" and events_of(behind) == []
    assert events_of(waiting(behind.status, "InsufficientCapacity: 0 has")) == []


def test_an_admitted_elastic_job_runs_its_grant_and_says_why_it_is_fewer() -> None:
    observation = observe(elastic_spec(), grant=2)
    decision = decide(
        JobObservation(**{**observation.__dict__, "grant_reason": "CapacityChanged: 2 nodes have room"}),
        CATALOG,
    )
    assert created_names(decision) == ["llama-worker-0", "llama-worker-1"]
    admitted = condition(decision, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("True", "Admitted")
    assert admitted["message"] == "2 of 4 workers granted: 2 nodes have room"
    status = status_of(decision)
    # The Workers column reads what the spec asks (4), not the grant: kubectl get shows the shortfall.
    assert status["desiredReplicas"] == 2 and status["workers"] == "0/4"
    assert status["message"] == "running 2 of spec.workers.replicas 4 workers: 2 nodes have room"
    assert ("Normal", "Admitted") in events_of(decision)
    assert decision.worker_pod(0)["spec"]["containers"][0]["env"]  # built with the grant's world


def test_a_grant_below_the_floor_still_runs_the_floor_and_above_replicas_runs_replicas() -> None:
    assert len(decide(observe(elastic_spec(minimum=3), grant=1), CATALOG).create) == 3
    assert len(decide(observe(elastic_spec(replicas=2), grant=9), CATALOG).create) == 2


def test_the_demand_carries_the_minimum_the_want_and_the_eligible_nodes() -> None:
    nodes = [
        NodeInventory(name="h100-a", accelerator="nvidia-h100-80gb", allocatable=8, free=8),
        NodeInventory(name="l4-a", accelerator="nvidia-l4", allocatable=8, free=8),
    ]
    excluded = [NodeInventory(name="h100-tainted", accelerator="nvidia-h100-80gb", allocatable=8, free=8)]
    created = NOW - timedelta(hours=1)
    spec = elastic_spec(
        replicas=3, minimum=2, maximum=4, scheduling={"priority": 7, "preemption": "LowerPriority"}
    )
    observation = observe(spec, grant=None)
    observation = JobObservation(
        **{**observation.__dict__, "inventory": Inventory(nodes, excluded), "created": created}
    )
    demand = decide(observation, CATALOG).demand
    assert demand is not None
    assert (demand.key, demand.priority, demand.created) == (("team-a", "llama"), 7, created.timestamp())
    assert (demand.accelerator, demand.per_worker) == ("nvidia-h100-80gb", 1)
    assert (demand.min_workers, demand.want_workers, demand.elastic) == (2, 3, True)
    assert demand.preemption == "LowerPriority"
    assert demand.eligible_nodes == frozenset({"h100-a"})
    fixed = decide(observe(raw_spec(workers={"replicas": 3}), grant=None), CATALOG).demand
    assert fixed is not None
    assert (fixed.min_workers, fixed.want_workers, fixed.elastic, fixed.preemption) == (3, 3, False, "Never")
    assert fixed.eligible_nodes is None  # no node known at all: every node of its accelerator


def test_the_demand_has_been_queued_since_admitted_turned_false_not_before() -> None:
    # The pass measures a head of line's wait from its requeue, not from its creation.
    queued = decide(observe(elastic_spec(), grant=0), CATALOG)  # its first reconcile: Admitted=False now
    since = parse_rfc3339(condition(queued, "Admitted")["lastTransitionTime"]).timestamp()
    assert queued.demand is not None and queued.demand.queued_since == since
    an_hour_on = NOW + timedelta(hours=1)
    later = decide(observe(elastic_spec(), status=queued.status, grant=0, now=an_hour_on), CATALOG)
    assert later.demand is not None and later.demand.queued_since == since  # kept while it stays False
    admitted = decide(observe(elastic_spec(), status=queued.status, grant=2), CATALOG)
    assert admitted.demand is not None and admitted.demand.queued_since is None  # Admitted=True
    # Equal demands otherwise: the new field alone asks the scheduler for no pass.
    assert queued.demand == replace(queued.demand, queued_since=None)


def test_no_demand_from_a_job_that_needs_nothing() -> None:
    assert decide(observe({"model": {}}), CATALOG).demand is None  # invalid
    huge = raw_spec(
        model={"parameters": "400B"}, resources={"accelerator": "nvidia-l4", "acceleratorsPerWorker": 1}
    )
    assert decide(observe(huge), CATALOG).demand is None  # does not fit


def test_an_operator_restart_keeps_the_workers_of_an_admitted_job_until_the_pass_decides() -> None:
    running = decide(observe(elastic_spec(), pods=[pod(0), pod(1)], grant=2), CATALOG)
    after_restart = decide(
        observe(elastic_spec(), pods=[pod(0), pod(1)], status=running.status, grant=None), CATALOG
    )
    assert after_restart.delete == () and after_restart.create == ()
    assert condition(after_restart, "Admitted")["status"] == "True"
    assert after_restart.checkpoint_request is None


# ---------------------------------------------------------------------------------------------- the handshake


def test_a_shrink_asks_for_a_checkpoint_waits_for_every_ack_then_deletes_the_highest_first() -> None:
    spec = elastic_spec()
    pods = [pod(0), pod(1), pod(2), pod(3)]
    running = decide(observe(spec, pods=pods, grant=4), CATALOG)
    shrink = "ShrunkForPriority: team-b/urgent (priority 100) needs 2 nvidia-h100-80gb"
    asked = decide(
        JobObservation(**{**observe(spec, pods, running.status, grant=2).__dict__, "grant_reason": shrink}),
        CATALOG,
    )
    assert asked.delete == () and asked.checkpoint_request == "3-1"
    checkpoint = status_of(asked)["checkpoint"]
    assert checkpoint["requestId"] == "3-1" and checkpoint["reason"] == "ShrunkForPriority"
    assert (checkpoint["targetReplicas"], checkpoint["workers"], checkpoint["acknowledged"]) == (2, 4, 0)
    assert checkpoint["requestedAt"] == "2025-01-01T12:00:00Z"
    assert asked.requeue_after is not None and asked.requeue_after <= 30
    assert ("Normal", "CheckpointRequested") in events_of(asked)
    assert condition(asked, "Admitted")["reason"] == "ShrunkForPriority"
    assert "acknowledge checkpoint 3-1" in status_of(asked)["message"]
    # Running counts the workers kept, and says the others still run ("2/2" alone while 4 ran); Ready's
    # message stays, or each change would post an AllWorkersReady event.
    assert (
        condition(asked, "Running")["message"]
        == "2/2 workers running; 2 more running until they save a checkpoint"
    )
    assert condition(asked, "Ready")["message"] == "2/2 workers running"

    later = NOW + timedelta(seconds=10)
    partial = decide(observe(spec, pods, asked.status, later, grant=2, acks={"llama-worker-0": 40}), CATALOG)
    assert partial.delete == () and partial.checkpoint_request == "3-1"
    assert status_of(partial)["checkpoint"]["acknowledged"] == 1
    acks = {worker.name: 40 for worker in pods}
    done = decide(observe(spec, pods, partial.status, later, grant=2, acks=acks), CATALOG)
    assert done.delete == ("llama-worker-3", "llama-worker-2")
    assert condition(done, "Running")["message"] == "2/2 workers running"
    assert done.checkpoint_request is None and status_of(done)["checkpoint"] is None
    assert ("Normal", "CheckpointDone") in events_of(done)
    assert status_of(done)["checkpointRequests"] == 1


def test_the_grace_period_ends_the_wait_without_acks() -> None:
    spec = elastic_spec(replicas=1)
    pods = [pod(0), pod(1)]
    asked = decide(observe(spec, pods), CATALOG)
    assert asked.delete == () and asked.checkpoint_request is not None
    waiting = decide(observe(spec, pods, asked.status, NOW + timedelta(seconds=29)), CATALOG)
    assert waiting.delete == () and waiting.requeue_after == 1.0
    expired = decide(observe(spec, pods, asked.status, NOW + timedelta(seconds=30)), CATALOG)
    assert expired.delete == ("llama-worker-1",)  # worker-0, the rendezvous host, stays
    # A Warning (progress since the last save may be lost), not CheckpointDone; status.message says so too.
    timed_out = [
        (event.type, event.message) for event in expired.events if event.reason == "CheckpointTimedOut"
    ]
    told = (
        "0 of 2 running workers acknowledged checkpoint 3-1 within "
        "spec.elastic.checkpointGracePeriodSeconds (30 s); removing anyway"
    )
    assert timed_out == [("Warning", told)]
    assert ("Normal", "CheckpointDone") not in events_of(expired)
    assert status_of(expired)["message"].endswith(f"deleting 1 workers: {told}")


def test_a_worker_failed_during_a_scale_down_goes_in_place_of_a_running_one_and_is_told() -> None:
    """4 workers scaled to 3 while the handshake waits, worker 1 fails: the lowered count keeps the running
    workers, so worker 1 is removed, not replaced or counted; before, it went with no event at all."""
    spec = elastic_spec(replicas=3)
    asked = decide(observe(spec, [pod(index) for index in range(4)]), CATALOG)
    assert asked.checkpoint_request is not None and asked.delete == ()
    pods = [pod(0), pod(1, "Failed"), pod(2), pod(3)]
    failed = decide(observe(spec, pods, asked.status, NOW + timedelta(seconds=5)), CATALOG)
    assert failed.delete == ("llama-worker-1",) and failed.create == ()
    assert [(event.type, event.message) for event in failed.events if event.reason == "WorkerFailed"] == [
        (
            "Warning",
            "worker llama-worker-1 failed on node-a; not replaced: the job's count is lowered to 3, and failed "
            "workers are removed first",
        )
    ]
    assert status_of(failed).get("restarts", 0) == 0
    # A failed worker replaced already whose delete is tried again is not told again.
    again = decide(
        observe(spec, pods, asked.status, NOW + timedelta(seconds=5), replaced=frozenset({"pod-1"})), CATALOG
    )
    assert ("Warning", "WorkerFailed") not in events_of(again)
    # Once its pod is terminating, nothing more is told.
    gone = [pod(0), pod(1, "Failed", terminating=True), pod(2), pod(3)]
    after = decide(observe(spec, gone, failed.status, NOW + timedelta(seconds=6)), CATALOG)
    assert ("Warning", "WorkerFailed") not in events_of(after)


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        (
            {"replicas": 8, "minReplicas": 2, "maxReplicas": 5},
            "running 4 of spec.workers.replicas 8 workers: spec.workers.maxReplicas is 5 (4 in whole groups of 2)",
        ),
        (
            {"replicas": 5, "minReplicas": 2, "maxReplicas": 8},
            "running 4 of spec.workers.replicas 5 workers: the scheduling pass granted 4",
        ),
    ],
)
def test_a_cap_rounded_to_whole_groups_is_told_as_the_cap(workers: dict[str, int], message: str) -> None:
    # Groups of 2 workers (TP 8 x PP 2 on 8-device nodes): maxReplicas 5 runs 4, which read as "maxReplicas is
    # 5, and the scheduling pass granted 4", a shortage that was not there (a review).
    h100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    nodes = [NodeFacts(f"h{index}", h100, {"nvidia.com/gpu": "8"}) for index in range(8)]
    spec = raw_spec(
        workers=workers,
        elastic=ELASTIC,
        model={"parameters": "13B"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": "auto"},
        training={"tensorParallel": 8, "pipelineParallel": 2},
    )
    observed = replace(
        observe(spec, [pod(index) for index in range(4)]), inventory=build_inventory(nodes, {}, CATALOG)
    )
    decision = decide(observed, CATALOG)
    assert decision.create == decision.delete == ()
    assert status_of(decision)["message"] == message


def test_a_scale_down_undone_before_the_deadline_closes_the_request_and_deletes_nothing() -> None:
    pods = [pod(0), pod(1)]
    asked = decide(observe(elastic_spec(replicas=1), pods), CATALOG)
    undone = decide(
        observe(elastic_spec(replicas=2), pods, asked.status, NOW + timedelta(seconds=5)), CATALOG
    )
    assert undone.delete == () and undone.checkpoint_request is None
    assert status_of(undone)["checkpoint"] is None


def test_surplus_workers_that_never_ran_are_removed_without_a_checkpoint() -> None:
    decision = decide(observe(elastic_spec(replicas=1), pods=[pod(0), pod(1, "Pending")]), CATALOG)
    assert decision.delete == ("llama-worker-1",) and decision.checkpoint_request is None


def test_a_scale_down_deletes_its_workers_that_never_started_at_once_and_waits_only_for_the_others() -> None:
    # 4 -> 2 with worker 3 unscheduled and worker 2 running: worker 3 went only after worker 2's checkpoint,
    # and could be bound and start meanwhile, joining the group in the middle of the save. So does a bound one
    # still pulling its image; one Pending with its trainer running (a sidecar still pulling) waits.
    spec = elastic_spec(replicas=2)
    pods = [pod(0), pod(1), pod(2), pod(3, "Pending", node=None)]
    asked = decide(observe(spec, pods), CATALOG)
    assert asked.delete == ("llama-worker-3",) and asked.checkpoint_request is not None
    assert status_of(asked)["checkpoint"]["workers"] == 3  # the running ones are asked
    pulling = [pod(0), pod(1), pod(2), replace(pod(3, "Pending", node="node-b"), trainer_started=False)]
    assert decide(observe(spec, pulling), CATALOG).delete == ("llama-worker-3",)
    beside_a_sidecar = [pod(0), pod(1), pod(2), pod(3, "Pending", node="node-b")]  # its trainer started
    assert decide(observe(spec, beside_a_sidecar), CATALOG).delete == ()
    gone = [pod(0), pod(1), pod(2), pod(3, "Pending", node=None, terminating=True)]
    acks = {f"llama-worker-{index}": 7 for index in range(3)}
    done = decide(observe(spec, gone, asked.status, NOW + timedelta(seconds=1), acks=acks), CATALOG)
    assert done.delete == ("llama-worker-2",) and done.checkpoint_request is None


def test_suspend_asks_for_a_checkpoint_before_deleting_every_worker() -> None:
    spec = raw_spec(runPolicy={"suspend": True}, elastic={"checkpointGracePeriodSeconds": 60})
    pods = [pod(0), pod(1)]
    asked = decide(observe(spec, pods), CATALOG)
    assert asked.delete == () and asked.checkpoint_request is not None
    assert status_of(asked)["checkpoint"]["reason"] == "Suspended"
    assert status_of(asked)["phase"] == "Suspended" and asked.demand is None
    acks = {"llama-worker-0": 3, "llama-worker-1": 3}
    done = decide(observe(spec, pods, asked.status, NOW + timedelta(seconds=1), acks=acks), CATALOG)
    assert done.delete == ("llama-worker-1", "llama-worker-0") and done.checkpoint_request is None


def test_a_preempted_job_checkpoints_then_stops_every_worker_and_requeues() -> None:
    spec = elastic_spec(replicas=2)
    pods = [pod(0), pod(1)]
    running = decide(observe(spec, pods, grant=2), CATALOG)
    preempted = "Preempted: team-b/urgent (priority 100) needs the devices"
    observation = observe(spec, pods, running.status, NOW + timedelta(seconds=1), grant=0)
    asked = decide(JobObservation(**{**observation.__dict__, "grant_reason": preempted}), CATALOG)
    assert asked.delete == () and status_of(asked)["checkpoint"]["reason"] == "Preempted"
    admitted = condition(asked, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "Preempted")
    assert ("Warning", "Preempted") in events_of(asked)
    assert asked.demand is not None  # it requeues; it does not fail
    acks = {"llama-worker-0": 9, "llama-worker-1": 9}
    observation = observe(spec, pods, asked.status, NOW + timedelta(seconds=2), grant=0, acks=acks)
    done = decide(JobObservation(**{**observation.__dict__, "grant_reason": preempted}), CATALOG)
    assert done.delete == ("llama-worker-1", "llama-worker-0")
    assert status_of(done)["phase"] == "Queued"
    assert all(item["type"] != "Failed" for item in status_of(done)["conditions"])


@pytest.mark.parametrize(
    "spec",
    [raw_spec(), elastic_spec(replicas=2, minimum=2, maximum=2, framework="jax")],
    ids=["static", "elastic jax"],
)
@pytest.mark.parametrize("stop", ["preempted", "suspended"])
def test_a_fixed_group_stopped_whole_starts_again_only_once_its_old_workers_are_gone(
    spec: dict[str, Any], stop: str
) -> None:
    """A preemption or a suspend keeps the group's attempt: its old workers are neither another attempt
    nor were they waited for, so a new worker 1 started beside the old worker 0 still saving on SIGTERM,
    which may still host the rendezvous it joins."""
    old = [pod(0, attempt=0), pod(1, attempt=0)]
    running = decide(observe(spec, old), CATALOG)
    stopping = {**spec, "runPolicy": {"suspend": True}} if stop == "suspended" else spec
    grant = 0 if stop == "preempted" else GRANT_ALL
    asked = decide(
        observe(stopping, old, running.status, grant=grant, now=NOW + timedelta(seconds=10)), CATALOG
    )
    stopped = decide(
        observe(stopping, old, asked.status, grant=grant, now=NOW + timedelta(seconds=300)), CATALOG
    )
    assert set(stopped.delete) == {"llama-worker-0", "llama-worker-1"}
    saving = [replace(old[0], terminating=True, deletion_timestamp="2025-01-01T12:07:00Z")]
    back = decide(observe(spec, saving, stopped.status, now=NOW + timedelta(seconds=305)), CATALOG)
    assert back.create == () and back.worker_set is None
    # status.message says what it waits for (it read nothing for the old workers' whole grace).
    assert "waiting for 1 terminating worker(s) to stop before new ones start" in status_of(back)["message"]
    assert back.requeue_after is not None and back.requeue_after <= 175.0  # stuck a minute past its grace
    gone = decide(observe(spec, [], stopped.status, now=NOW + timedelta(seconds=310)), CATALOG)
    assert gone.create == (0, 1)


def test_a_non_elastic_job_restarts_every_worker_with_the_new_world_size() -> None:
    grace = {"checkpointGracePeriodSeconds": 30}
    two = raw_spec(workers={"replicas": 2}, elastic=grace)
    pods = [pod(0), pod(1)]
    running = decide(observe(two, pods), CATALOG)
    assert status_of(running)["desiredReplicas"] == 2
    three = raw_spec(workers={"replicas": 3}, elastic=grace)
    asked = decide(observe(three, pods, running.status, NOW + timedelta(seconds=1)), CATALOG)
    assert asked.create == () and asked.delete == ()  # no third worker joins a world of two
    ready = condition(asked, "Ready")
    assert (ready["reason"], "from 2 to 3 workers" in ready["message"]) == ("Restarting", True)
    assert status_of(asked)["checkpoint"]["reason"] == "Restarting"
    assert status_of(asked)["desiredReplicas"] == 2
    assert status_of(asked)["phase"] == "Scaling"  # Running while every worker waits to be restarted
    acks = {"llama-worker-0": 5, "llama-worker-1": 5}
    stopped = decide(observe(three, pods, asked.status, NOW + timedelta(seconds=2), acks=acks), CATALOG)
    assert stopped.delete == ("llama-worker-1", "llama-worker-0") and stopped.create == ()
    assert status_of(stopped)["desiredReplicas"] == 3
    restarted = decide(observe(three, [], stopped.status, NOW + timedelta(seconds=3)), CATALOG)
    assert created_names(restarted) == ["llama-worker-0", "llama-worker-1", "llama-worker-2"]
    assert restarted.worker_set is not None and restarted.worker_set.workers == 3


def test_a_restart_whose_old_workers_were_not_all_deleted_restarts_again() -> None:
    """The restart to 2 workers wrote desiredReplicas 2 and deleted workers 3 and 2 of 4, then the operator
    stopped: workers 0 and 1 still run with WORLD_SIZE 4. Taken for the new world they would hang; their
    annotation tells them apart, and the job restarts them."""
    grace = {"checkpointGracePeriodSeconds": 30}
    two = raw_spec(workers={"replicas": 2}, elastic=grace)
    old_world = [replace(pod(0), world_size=4), replace(pod(1), world_size=4)]
    status = {"phase": "Running", "desiredReplicas": 2, "readyReplicas": 2}
    decision = decide(observe(two, old_world, status), CATALOG)
    ready = condition(decision, "Ready")
    assert (ready["reason"], "from 4 to 2 workers" in ready["message"]) == ("Restarting", True)
    acks = {"llama-worker-0": 5, "llama-worker-1": 5}
    stopped = decide(observe(two, old_world, decision.status, NOW + timedelta(seconds=1), acks=acks), CATALOG)
    assert stopped.delete == ("llama-worker-1", "llama-worker-0")
    # Workers of the new world, and workers made before the annotation existed, are the world they say.
    new_world = [replace(pod(0), world_size=2), replace(pod(1), world_size=2)]
    for pods in (new_world, [pod(0), pod(1)]):
        settled = decide(observe(two, pods, status), CATALOG)
        assert settled.delete == () and condition(settled, "Ready")["reason"] != "Restarting"


def test_elastic_pytorch_workers_whose_node_range_is_no_longer_the_jobs_restart_with_the_new_one() -> None:
    """No minReplicas or maxReplicas: the bounds follow replicas, and torchrun's range with them. Scaled
    from 4 to 2, survivors started with 4:4 would wait for 4 peers; they restart with 2:2 instead."""
    fixed_range = raw_spec(workers={"replicas": 2}, elastic=ELASTIC)
    started = [replace(pod(index), nnodes="4:4") for index in range(4)]
    status = {"phase": "Running", "desiredReplicas": 4, "readyReplicas": 4}
    decision = decide(observe(fixed_range, started, status), CATALOG)
    ready = condition(decision, "Ready")
    assert ready["reason"] == "Restarting" and "from 4:4 to 2:2" in ready["message"]
    assert decision.create == ()
    acks = {pod.name: 7 for pod in started}
    stopped = decide(
        observe(fixed_range, started, decision.status, NOW + timedelta(seconds=1), acks=acks), CATALOG
    )
    assert stopped.delete == tuple(f"llama-worker-{index}" for index in (3, 2, 1, 0))
    assert status_of(stopped)["desiredReplicas"] == 2
    restarted = decide(observe(fixed_range, [], stopped.status, NOW + timedelta(seconds=2)), CATALOG)
    assert restarted.worker_set is not None and restarted.worker_set.group.nnodes == "2:2"
    # A count inside the workers' range needs no restart: scaled up from 3 (3:4) to 4, the new worker
    # joins the three.
    up = raw_spec(workers={"replicas": 4, "maxReplicas": 4}, elastic=ELASTIC)
    three = [replace(pod(index), nnodes="3:4") for index in range(3)]
    grown = decide(observe(up, three, {**status, "desiredReplicas": 3}), CATALOG)
    assert created_names(grown) == ["llama-worker-3"] and grown.delete == ()
    # With its own bounds the range stays: a scale-down removes workers, and the others re-form.
    own_range = elastic_spec(replicas=2, minimum=1, maximum=4)
    steady = [replace(pod(index), nnodes="1:4") for index in range(4)]
    shrunk = decide(observe(own_range, steady, status), CATALOG)
    assert condition(shrunk, "Ready")["reason"] != "Restarting"
    assert status_of(shrunk)["checkpoint"]["reason"] == "ScaledDown"
    # Workers made before the range was recorded are left as they are.
    assert (
        condition(decide(observe(fixed_range, [pod(0), pod(1)], status), CATALOG), "Ready")["reason"]
        != "Restarting"
    )


def test_an_elastic_jax_job_restarts_every_worker_when_its_grant_changes() -> None:
    # jax.distributed.initialize reads JAX_NUM_PROCESSES once: a third worker cannot join a group of two.
    spec = elastic_spec(replicas=4, minimum=1, maximum=4, framework="jax")
    pods = [pod(0), pod(1)]
    running = decide(observe(spec, pods, grant=2), CATALOG)
    assert running.create == () and running.delete == () and status_of(running)["desiredReplicas"] == 2
    grown = observe(spec, pods, running.status, NOW + timedelta(seconds=1), grant=3)
    asked = decide(grown, CATALOG)
    assert asked.create == () and asked.delete == ()
    ready = condition(asked, "Ready")
    assert ready["reason"] == "Restarting" and "from 2 to 3 workers (framework jax" in ready["message"]
    assert status_of(asked)["checkpoint"]["reason"] == "Restarting"
    acks = {"llama-worker-0": 5, "llama-worker-1": 5}
    stopped = decide(
        observe(spec, pods, asked.status, NOW + timedelta(seconds=2), grant=3, acks=acks), CATALOG
    )
    assert stopped.delete == ("llama-worker-1", "llama-worker-0") and stopped.create == ()
    assert status_of(stopped)["desiredReplicas"] == 3
    restarted = decide(observe(spec, [], stopped.status, NOW + timedelta(seconds=3), grant=3), CATALOG)
    assert created_names(restarted) == ["llama-worker-0", "llama-worker-1", "llama-worker-2"]
    assert restarted.worker_set is not None and restarted.worker_set.workers == 3
    # A shrink restarts them too; a pytorch job under the same grants only adds or removes workers.
    three = [pod(0), pod(1), pod(2)]
    shrunk = decide(observe(spec, three, restarted.status, NOW + timedelta(seconds=4), grant=1), CATALOG)
    assert condition(shrunk, "Ready")["reason"] == "Restarting"
    torch = elastic_spec(replicas=4, minimum=1, maximum=4)
    torch_running = decide(observe(torch, pods, grant=2), CATALOG)
    torch_grown = decide(
        observe(torch, pods, torch_running.status, NOW + timedelta(seconds=1), grant=3), CATALOG
    )
    assert created_names(torch_grown) == ["llama-worker-2"] and torch_grown.delete == ()


def test_a_world_restarted_with_a_new_size_is_a_gang_again_with_its_own_timeout() -> None:
    # The new world's workers could not all be placed: those placed would hold devices with nobody to
    # rendezvous with. The gang timeout counts from the restart and releases them.
    grace = {"checkpointGracePeriodSeconds": 0}
    two = raw_spec(workers={"replicas": 2}, elastic=grace, scheduling={"gangTimeoutSeconds": 60})
    three = raw_spec(workers={"replicas": 3}, elastic=grace, scheduling={"gangTimeoutSeconds": 60})
    old = [pod(0), pod(1)]
    running = decide(observe(two, old), CATALOG)
    assert status_of(running)["gang"]["started"] is True
    later = NOW + timedelta(minutes=30)  # long after admission
    restarting = decide(observe(three, old, running.status, later), CATALOG)
    assert restarting.delete == ("llama-worker-1", "llama-worker-0")
    gang = status_of(restarting)["gang"]
    assert gang["started"] is False and gang["since"] == "2025-01-01T12:30:00Z"
    new = [pod(0), pod(1), pod(2, "Pending")]
    waiting = decide(observe(three, new, restarting.status, later + timedelta(seconds=30)), CATALOG)
    assert waiting.delete == () and waiting.requeue_after == 30.0  # 60 s from the restart, not admission
    timed_out = decide(observe(three, new, waiting.status, later + timedelta(seconds=60)), CATALOG)
    released = condition(timed_out, "Admitted")
    assert released["reason"] == "GangTimeout" and "60 s after the restart" in released["message"]
    assert set(timed_out.delete) == {"llama-worker-0", "llama-worker-1", "llama-worker-2"}
    # Old workers that take their termination grace to go (saving on SIGTERM; deleted at 12:30:00 with 300 s
    # of grace) hold the new ones' names: the clock starts when that grace ends, not while they save.
    saving = "2025-01-01T12:35:00Z"
    going = [replace(pod(index, terminating=True), deletion_timestamp=saving) for index in (0, 1)]
    slow = decide(observe(three, going, restarting.status, later + timedelta(seconds=90)), CATALOG)
    assert condition(slow, "Admitted")["reason"] != "GangTimeout"
    assert status_of(slow)["gang"]["since"] == saving
    fresh = decide(observe(three, new, slow.status, later + timedelta(seconds=330)), CATALOG)
    assert condition(fresh, "Admitted")["reason"] != "GangTimeout" and fresh.requeue_after == 30.0
    # One stuck terminating (its node unreachable) does not hold the clock back for ever.
    stuck = [going[0], pod(1), pod(2, "Pending")]
    held = decide(observe(three, stuck, slow.status, later + timedelta(hours=2)), CATALOG)
    assert condition(held, "Admitted")["reason"] == "GangTimeout"
    # Placed in time instead: started, and the restart's time is dropped.
    placed = [pod(0), pod(1), pod(2)]
    settled = decide(observe(three, placed, restarting.status, later + timedelta(seconds=30)), CATALOG)
    assert status_of(settled)["gang"]["started"] is True and status_of(settled)["gang"]["since"] is None


def test_a_non_elastic_job_keeps_its_world_until_the_whole_new_size_is_granted() -> None:
    pods = [pod(0), pod(1)]
    running = decide(observe(raw_spec(workers={"replicas": 2}), pods), CATALOG)
    grow = decide(observe(raw_spec(workers={"replicas": 4}), pods, running.status, grant=2), CATALOG)
    assert grow.create == () and grow.delete == () and grow.checkpoint_request is None
    assert "until the scheduling pass grants 4" in status_of(grow)["message"]


# ---------------------------------------------------------------------------------------------- gang timeout


def test_a_gang_not_all_placed_in_time_releases_every_pod_and_backs_off() -> None:
    spec = raw_spec(scheduling={"gangTimeoutSeconds": 60})
    pods = [pod(0), pod(1, "Pending")]
    admitted = decide(observe(spec, pods), CATALOG)
    assert condition(admitted, "Admitted")["lastTransitionTime"] == "2025-01-01T12:00:00Z"
    assert admitted.requeue_after == 60.0  # wake up when the gang timeout expires
    before = decide(observe(spec, pods, admitted.status, NOW + timedelta(seconds=59)), CATALOG)
    assert before.delete == ()
    timed_out = decide(observe(spec, pods, admitted.status, NOW + timedelta(seconds=60)), CATALOG)
    assert timed_out.delete == ("llama-worker-1", "llama-worker-0")
    released = condition(timed_out, "Admitted")
    assert (released["status"], released["reason"]) == ("False", "GangTimeout")
    assert "1 of 2 admitted workers were placed on a node 60 s after admission" in released["message"]
    assert ("Warning", "GangTimeout") in events_of(timed_out)
    assert timed_out.demand is None and timed_out.requeue_after == 10.0
    assert status_of(timed_out)["gang"] == {
        "started": False,
        "running": False,
        "since": None,
        "retries": 1,
        "retryAfter": "2025-01-01T12:01:10Z",
        "attempt": 0,
        "refused": None,  # placed too late, not refused
        "unplaceable": None,  # kube-scheduler gave no reason
        "roomFrom": None,  # no job made room for it
        "roomFreedAt": None,
    }

    backing_off = decide(observe(spec, [], timed_out.status, NOW + timedelta(seconds=65)), CATALOG)
    assert backing_off.create == () and backing_off.demand is None and backing_off.requeue_after == 5.0
    retried = decide(observe(spec, [], timed_out.status, NOW + timedelta(seconds=70), grant=None), CATALOG)
    assert retried.demand is not None and condition(retried, "Admitted")["reason"] == "Queued"
    readmitted = decide(observe(spec, [], retried.status, NOW + timedelta(seconds=71)), CATALOG)
    assert len(readmitted.create) == 2
    assert condition(readmitted, "Admitted")["lastTransitionTime"] == "2025-01-01T12:01:11Z"


def test_an_elastic_jax_gang_starts_only_once_its_whole_world_is_placed() -> None:
    """jax.distributed.initialize waits for JAX_NUM_PROCESSES processes: three of four placed do not train,
    so the gang timeout still releases the devices they hold."""
    spec = elastic_spec(
        replicas=4, minimum=2, maximum=4, framework="jax", scheduling={"gangTimeoutSeconds": 300}
    )
    pods = [pod(0), pod(1), pod(2), pod(3, "Pending")]
    first = decide(observe(spec, pods, grant=4), CATALOG)
    assert status_of(first)["gang"]["started"] is False
    later = decide(observe(spec, pods, first.status, NOW + timedelta(seconds=300), grant=4), CATALOG)
    assert condition(later, "Admitted")["reason"] == "GangTimeout"


def test_an_elastic_gang_has_started_once_its_floor_is_placed() -> None:
    # Three of four workers train (floor 2); the fourth cannot be placed. The gang timeout must not delete
    # the three, without a checkpoint, and requeue the job.
    spec = elastic_spec(replicas=4, minimum=2, maximum=4, scheduling={"gangTimeoutSeconds": 300})
    pods = [pod(0), pod(1), pod(2), pod(3, "Pending")]
    first = decide(observe(spec, pods, grant=4), CATALOG)
    assert status_of(first)["gang"]["started"] is True
    later = decide(observe(spec, pods, first.status, NOW + timedelta(seconds=300), grant=4), CATALOG)
    assert later.delete == () and condition(later, "Admitted")["status"] == "True"
    # Below its floor it has not started: the timeout still releases it.
    few = [pod(0), pod(1, "Pending"), pod(2, "Pending"), pod(3, "Pending")]
    waiting = decide(observe(spec, few, grant=4), CATALOG)
    released = decide(observe(spec, few, waiting.status, NOW + timedelta(seconds=300), grant=4), CATALOG)
    assert condition(released, "Admitted")["reason"] == "GangTimeout"


def test_undoing_an_edit_that_blocked_a_running_job_keeps_its_workers() -> None:
    # The blocked spec withdrew the job's demand, so the scheduler forgot its grant (None): the running
    # workers are kept until the pass decides, not taken for a preemption.
    grace = {"checkpointGracePeriodSeconds": 0}
    fits = raw_spec(workers={"replicas": 2}, elastic=grace)
    pods = [pod(0), pod(1)]
    running = decide(observe(fits, pods), CATALOG)
    too_big = raw_spec(workers={"replicas": 2}, elastic=grace, model={"parameters": "70B"})
    blocked = decide(observe(too_big, pods, running.status, NOW + timedelta(seconds=1)), CATALOG)
    assert blocked.demand is None and blocked.delete == ()
    undone = decide(observe(fits, pods, blocked.status, NOW + timedelta(seconds=2), grant=None), CATALOG)
    assert undone.delete == () and undone.checkpoint_request is None
    assert ("Warning", "Preempted") not in events_of(undone)
    assert status_of(undone)["desiredReplicas"] == 2


def test_a_resumed_job_that_must_queue_is_no_longer_suspended() -> None:
    grace = {"checkpointGracePeriodSeconds": 0}
    suspended = raw_spec(runPolicy={"suspend": True}, elastic=grace)
    stopping = decide(observe(suspended, [pod(0), pod(1)]), CATALOG)
    stopped = decide(observe(suspended, [], stopping.status, NOW + timedelta(seconds=5)), CATALOG)
    assert condition(stopped, "Suspended")["status"] == "True"
    queued = decide(
        observe(raw_spec(elastic=grace), [], stopped.status, NOW + timedelta(seconds=9), grant=None), CATALOG
    )
    assert status_of(queued)["phase"] == "Queued"
    assert (condition(queued, "Suspended")["status"], condition(queued, "Suspended")["reason"]) == (
        "False",
        "Resumed",
    )


def test_the_gang_clock_waits_while_its_places_are_held_by_workers_leaving_for_it() -> None:
    """Admitted by shrinking a lower-priority job whose removed workers save for 600 s (their checkpoint
    grace) against this job's gang timeout of 60 s: the clock waits until those places are given up."""
    spec = raw_spec(scheduling={"gangTimeoutSeconds": 60})
    pods = [pod(0, "Pending"), pod(1, "Pending")]
    admitted = decide(observe(spec, pods), CATALOG)

    def at(seconds: int, **grant: Any) -> Decision:
        observed = observe(spec, pods, admitted.status, NOW + timedelta(seconds=seconds))
        return decide(replace(observed, **grant), CATALOG)

    held = at(300, places_held=True)
    assert condition(held, "Admitted")["status"] == "True" and held.delete == ()
    assert held.requeue_after == 60.0
    freed_at = NOW + timedelta(seconds=590)
    assert condition(at(649, places_freed_at=freed_at), "Admitted")["status"] == "True"
    late = at(650, places_freed_at=freed_at)
    assert condition(late, "Admitted")["reason"] == "GangTimeout"
    # Without the handshake in the way, the clock runs from admission as before.
    assert condition(at(60), "Admitted")["reason"] == "GangTimeout"


def test_a_gang_waiting_for_the_workers_leaving_for_it_says_so_not_only_kube_schedulers_shortage() -> None:
    # "0/1 workers running; llama-worker-0 not scheduled: 0/3 nodes are available: 3 Insufficient
    # nvidia.com/gpu." for the whole checkpoint grace read like a failure (an audit, 5 December).
    spec = raw_spec(scheduling={"gangTimeoutSeconds": 60})
    short = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    gpu = frozenset({"nvidia.com/gpu"})
    pods = [replace(pod(index, "Pending"), unschedulable=short, short_of=gpu) for index in (0, 1)]
    admitted = decide(observe(spec, pods), CATALOG)
    observed = observe(spec, pods, admitted.status, NOW + timedelta(seconds=30))
    held = decide(replace(observed, places_held=True, places_held_by=frozenset({("ml", "big")})), CATALOG)
    ready = condition(held, "Ready")["message"]
    assert (
        ready
        == "0/2 workers running; waiting for the workers of ml/big to leave (shrunk or preempted for this job)"
    )
    # Once they are gone, or where a worker waits for something else, kube-scheduler's reason is told.
    assert "Insufficient nvidia.com/gpu" in condition(decide(observed, CATALOG), "Ready")["message"]
    volume = '0/3 nodes are available: 3 persistentvolumeclaim "ckpt" not found.'
    pods[1] = replace(pods[1], unschedulable=volume, short_of=frozenset())
    observed = observe(spec, pods, admitted.status, NOW + timedelta(seconds=30))
    other = decide(replace(observed, places_held=True, places_held_by=frozenset({("ml", "big")})), CATALOG)
    assert "not scheduled (and 1 more)" in condition(other, "Ready")["message"]


def test_no_worker_is_created_while_workers_leaving_for_the_job_still_hold_its_places() -> None:
    # Created at once, a worker waited Pending, and kube-scheduler bound it to the first free device, which
    # could be one the pass kept for a job ahead; that job then preempted it (the closed-loop simulator:
    # 19 preemptions in one timing, the cluster steady). It is created once the places are free.
    spec = raw_spec(scheduling={"gangTimeoutSeconds": 60})
    admitted = decide(observe(spec, []), CATALOG)
    observed = observe(spec, [], admitted.status, NOW + timedelta(seconds=30))
    held = decide(replace(observed, places_held=True, places_held_by=frozenset({("ml", "big")})), CATALOG)
    assert held.create == () and condition(held, "Admitted")["status"] == "True"
    assert (
        condition(held, "Ready")["message"]
        == "0/2 workers running; waiting for the workers of ml/big to leave (shrunk or preempted for this job)"
    )
    freed = decide(replace(observed, places_freed_at=NOW + timedelta(seconds=29)), CATALOG)
    assert freed.create == (0, 1)
    # Where reserved places are free now, their workers are created (they pull their image meanwhile):
    # node-a has a device free, node-b none, node-c one that the job's own inventory counts as free.
    elastic = elastic_spec(replicas=3, maximum=3)
    nodes = [
        NodeInventory("node-a", "nvidia-h100-80gb", 8, 1),
        NodeInventory("node-b", "nvidia-h100-80gb", 8, 0),
        NodeInventory("node-c", "nvidia-h100-80gb", 8, 1),
    ]
    partly = replace(
        observe(elastic, [], decide(observe(elastic, []), CATALOG).status, NOW + timedelta(seconds=30)),
        places_held=True,
        places_held_by=frozenset({("ml", "big")}),
        inventory=Inventory(nodes, []),
        reserved_places={"node-a": 1, "node-b": 1, "node-c": 1},
    )
    assert decide(partly, CATALOG).create == (0, 1)
    # On node-c that device is the job's own worker's, terminating: still held.
    leaving = replace(pod(5, "Running", node="node-c"), terminating=True)
    assert decide(replace(partly, pods=[leaving]), CATALOG).create == (0,)
    # A worker of the job still unbound takes a free place first.
    assert decide(replace(partly, pods=[pod(0, "Pending")]), CATALOG).create == (1,)
    # An own worker from before an edit of the device count holds what it was created with: node-c's 8.
    old_count = replace(pod(5, "Running", node="node-c"), terminating=True, devices=(("nvidia.com/gpu", 8),))
    wide = [*nodes[:2], NodeInventory("node-c", "nvidia-h100-80gb", 8, 8)]
    assert decide(replace(partly, pods=[old_count], inventory=Inventory(wide, [])), CATALOG).create == (0,)
    # Every desired worker live and bound (its image still pulling): Ready names no one it waits for.
    pulling = replace(partly, pods=[pod(index, "Pending", node="node-b") for index in range(3)])
    assert "waiting for the workers" not in condition(decide(pulling, CATALOG), "Ready")["message"]
    # An elastic job that lost a worker creates its replacement only then, too.
    elastic = elastic_spec(replicas=2, maximum=2)
    running = [pod(0, "Running", node="node-a")]
    started = decide(observe(elastic, [*running, pod(1, "Running", node="node-b")]), CATALOG)
    lost = observe(elastic, running, started.status, NOW + timedelta(seconds=40))
    leaving = frozenset({("ml", "big")})
    assert decide(replace(lost, places_held=True, places_held_by=leaving), CATALOG).create == ()
    assert decide(lost, CATALOG).create == (1,)


def test_the_gang_backoff_doubles_per_timeout() -> None:
    spec = raw_spec(scheduling={"gangTimeoutSeconds": 60})
    status = {**status_of(decide(observe(spec, [pod(0, "Pending")]), CATALOG))}
    status["gang"] = {"started": False, "retries": 2}
    status = {key: value for key, value in status.items() if value is not None}
    timed_out = decide(observe(spec, [pod(0, "Pending")], status, NOW + timedelta(seconds=60)), CATALOG)
    assert status_of(timed_out)["gang"]["retries"] == 3 and timed_out.requeue_after == 40.0


def test_a_gang_bound_to_its_nodes_but_not_running_yet_is_not_timed_out() -> None:
    """Every worker bound (pulling a large image, say): the gang holds its devices, nothing to release."""
    spec = raw_spec(scheduling={"gangTimeoutSeconds": 60})
    pulling = [pod(0, "Pending", node="node-b"), pod(1, "Pending", node="node-c")]
    bound = decide(observe(spec, pulling), CATALOG)
    assert status_of(bound)["gang"]["started"] is True and bound.requeue_after is None
    later = decide(observe(spec, pulling, bound.status, NOW + timedelta(minutes=30)), CATALOG)
    assert later.delete == () and condition(later, "Admitted")["status"] == "True"
    assert status_of(later)["phase"] == "Pending"  # placed is not running: the phase still says so


def test_a_gang_that_ran_once_is_not_timed_out_later() -> None:
    spec = raw_spec(scheduling={"gangTimeoutSeconds": 60})
    started = decide(observe(spec, [pod(0), pod(1)]), CATALOG)
    assert status_of(started)["gang"]["started"] is True and started.requeue_after is None
    later = decide(
        observe(spec, [pod(0), pod(1, "Pending")], started.status, NOW + timedelta(hours=1)), CATALOG
    )
    assert later.delete == () and condition(later, "Admitted")["status"] == "True"


# ---------------------------------------------------------------------------------------------- failures


def test_replacements_back_off_longer_with_each_restart() -> None:
    status = status_of(decide(observe(pods=[pod(0), pod(1)]), CATALOG))
    status.update(restarts=3, lastFailureTime="2025-01-01T12:00:00Z", readyReplicas=1)
    status["gang"] = {**status["gang"], "started": False, "running": False, "attempt": 1}  # as restarted
    status = {key: value for key, value in status.items() if value is not None}
    # The group's old workers are gone (a fixed group restarts whole).
    waiting = decide(observe(status=status, now=NOW + timedelta(seconds=19)), CATALOG)
    assert waiting.create == () and waiting.requeue_after == 1.0  # 5 s doubled twice: 20 s
    assert created_names(decide(observe(status=status, now=NOW + timedelta(seconds=20)), CATALOG))


def test_an_elastic_job_keeps_training_on_fewer_workers_while_its_minimum_runs() -> None:
    spec = elastic_spec(replicas=3, minimum=2, maximum=3)
    decision = decide(observe(spec, pods=[pod(0), pod(1), pod(2, "Failed")], grant=3), CATALOG)
    assert [failed.name for failed in decision.replace] == ["llama-worker-2"]
    assert decision.delete == ()  # torchrun re-forms the group: the others train on
    running = condition(decision, "Running")
    assert (running["status"], running["reason"]) == ("True", "WorkersRunning")


# ---------------------------------------------------------------------------------------------- the handshake's env


def test_workers_get_the_checkpoint_endpoint_and_their_jobs_token() -> None:
    settings_ = ReconcileSettings(
        checkpoint_url="http://kubefit.kubefit-system.svc:8081", checkpoint_key=b"k"
    )
    decision = decide(observe(), CATALOG, settings_)
    assert decision.worker_set is not None and decision.worker_set.checkpoint is not None
    assert decision.worker_set.checkpoint.url == "http://kubefit.kubefit-system.svc:8081"
    assert decision.worker_set.checkpoint.token == checkpoint_token(b"k", "job-uid")
    assert decide(observe(), CATALOG).worker_set.checkpoint is None  # type: ignore[union-attr]


def test_a_finished_job_asks_for_nothing() -> None:
    failed = decide(observe(raw_spec(runPolicy={"maxRestarts": 0}), pods=[pod(0), pod(1, "Failed")]), CATALOG)
    assert status_of(failed)["phase"] == "Failed" and failed.demand is None
    succeeded = decide(observe(pods=[pod(0, "Succeeded"), pod(1, "Succeeded")]), CATALOG)
    assert status_of(succeeded)["phase"] == "Succeeded" and succeeded.demand is None


def test_an_elastic_grant_runs_whole_tensor_and_pipeline_parallel_groups() -> None:
    """TP 8 x PP 2 on 8 devices a worker: a group is two workers, so a grant of 5 runs 4, never a half
    group that the training code cannot place."""
    spec = elastic_spec(
        replicas=6,
        minimum=2,
        maximum=6,
        model={"parameters": "8B"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
        training={"tensorParallel": 8, "pipelineParallel": 2},
    )
    assert decide(observe(spec, grant=5), CATALOG).create == (0, 1, 2, 3)
    assert decide(observe(spec, grant=6), CATALOG).create == tuple(range(6))
    assert decide(observe(spec, grant=3), CATALOG).create == (0, 1)


def test_a_restart_with_a_new_world_size_removes_the_old_groups_finished_workers() -> None:
    """Worker 3 of 4 succeeded; replicas go to 6: the new group needs a new worker 3, so the finished pod
    goes with the rest and is not recorded as done for the new group. (framework none: a pytorch or jax
    group's training ended with worker 3, and it finishes as it is: tests/unit/test_finishing_groups.py.)"""
    no_grace = {"checkpointGracePeriodSeconds": 0}
    spec4 = raw_spec(workers={"replicas": 4}, elastic=no_grace, framework="none")
    pods = [pod(0), pod(1), pod(2), pod(3, "Succeeded")]
    before = decide(observe(spec4, pods=pods), CATALOG)
    assert status_of(before)["succeededWorkers"] == "3"
    spec6 = raw_spec(workers={"replicas": 6}, elastic=no_grace, framework="none")
    restart = decide(observe(spec6, pods=pods, status=before.status), CATALOG)
    assert "llama-worker-3" in restart.delete
    assert set(restart.delete) == {f"llama-worker-{index}" for index in range(4)}
    assert status_of(restart)["succeededWorkers"] is None
    after = decide(observe(spec6, status=restart.status), CATALOG)
    assert after.create == tuple(range(6))


def test_an_elastic_group_with_a_finished_worker_whose_pod_went_is_not_shrunk_but_left_to_finish() -> None:
    """A worker of it succeeded: torchrun's agents all exit once training ends, so a lower grant neither
    removes workers (asking them to save a finished training) nor trades them for new ones."""
    workers = {"replicas": 4, "minReplicas": 2, "maxReplicas": 4}
    spec = raw_spec(workers=workers, elastic={"enabled": True, "checkpointGracePeriodSeconds": 0})
    running = [pod(0), pod(1), pod(2)]
    done = decide(observe(spec, pods=[*running, pod(3, "Succeeded")]), CATALOG)
    assert status_of(done)["succeededWorkers"] == "3"
    shrunk = decide(observe(spec, pods=running, status=done.status, grant=2), CATALOG)
    assert shrunk.delete == () and shrunk.create == ()


@pytest.mark.parametrize("status", [None, {"phase": "Running"}, {"gang": {"started": True}}])
def test_a_status_that_lost_its_attempt_takes_the_one_its_running_workers_carry(status: Any) -> None:
    """A wiped status, a restore without it, or an operator rolled back and forward: the healthy group
    of attempt 1 keeps running instead of being taken for an old one."""
    running = [pod(0, attempt=1), pod(1, attempt=1)]
    decision = decide(observe(pods=running, status=status), CATALOG)
    assert decision.delete == () and decision.create == ()
    assert status_of(decision)["gang"]["attempt"] == 1


def test_a_worker_kubernetes_disrupted_is_replaced_without_counting_a_restart() -> None:
    """Kubernetes 1.26+ marks a pod it stops for its own reasons (node deleted, taint, preemption,
    eviction) Failed with DisruptionTarget=True: not the training's fault, so not against maxRestarts."""
    fixed = decide(observe(pods=[pod(0, attempt=0), pod(1, "Failed", attempt=0, disrupted=True)]), CATALOG)
    assert status_of(fixed)["restarts"] == 0 and status_of(fixed)["lastFailureTime"] is None
    assert [failed.name for failed in fixed.replace] == ["llama-worker-1"]
    assert fixed.delete == ("llama-worker-0",) and status_of(fixed)["gang"]["attempt"] == 1
    assert [event.reason for event in fixed.events if event.type == "Warning"] == ["WorkerLost"]
    spec = elastic_spec(replicas=3, minimum=2, maximum=3)
    elastic = decide(observe(spec, pods=[pod(0), pod(1), pod(2, "Failed", disrupted=True)], grant=3), CATALOG)
    assert [failed.name for failed in elastic.replace] == ["llama-worker-2"] and elastic.delete == ()
    assert status_of(elastic)["restarts"] == 0
    assert "WorkerLost" in [event.reason for event in elastic.events]


def test_the_disruption_target_condition_is_read_from_the_pod() -> None:
    manifest = {
        "metadata": {"name": "llama-worker-1", "uid": "u", "labels": {"kubefit.dev/job": "llama"}},
        "status": {
            "phase": "Failed",
            "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC"}],
        },
    }
    seen = worker_from_pod(manifest)
    assert seen is not None and seen.disrupted
    manifest["status"]["conditions"][0]["status"] = "False"
    seen = worker_from_pod(manifest)
    assert seen is not None and not seen.disrupted
    # Kubernetes 1.20 to 1.25 set no DisruptionTarget: the kubelet's eviction, its preemption for a critical
    # pod and a graceful node shutdown say so in the failed pod's status.reason only.
    for reason in ("Evicted", "Preempting", "Terminated", "Shutdown", "NodeShutdown"):
        manifest["status"] = {
            "phase": "Failed",
            "reason": reason,
            "message": "The node was low on resource: memory.",
        }
        seen = worker_from_pod(manifest)
        assert seen is not None and seen.disrupted, reason
    manifest["status"] = {"phase": "Running", "reason": "Evicted"}
    assert not getattr(worker_from_pod(manifest), "disrupted", True)
    manifest["status"] = {"phase": "Failed", "reason": "UnexpectedAdmissionError"}
    assert not getattr(worker_from_pod(manifest), "disrupted", True)


def test_an_eviction_before_kubernetes_1_26_does_not_count_against_max_restarts() -> None:
    """A node-pressure eviction on Kubernetes 1.25: phase Failed, reason Evicted, no DisruptionTarget. It
    counted as a restart, and at spec.runPolicy.maxRestarts failed the job."""
    evicted = worker_from_pod(
        {
            "metadata": {"name": "llama-worker-1", "uid": "u1", "labels": {"kubefit.dev/job": "llama"},
                         "ownerReferences": [{"controller": True, "uid": "job-uid"}]},
            "spec": {"nodeName": "node-a"},
            "status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."},
        }
    )  # fmt: skip
    assert evicted is not None
    spec = elastic_spec(replicas=2, minimum=1, maximum=2, runPolicy={"maxRestarts": 0})
    running = decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG)
    replaced = decide(observe(spec, [pod(0), evicted], running.status, NOW + timedelta(seconds=5)), CATALOG)
    assert status_of(replaced)["phase"] != "Failed" and status_of(replaced)["restarts"] == 0
    assert [worker.name for worker in replaced.replace] == ["llama-worker-1"]
    lost = [event.message for event in replaced.events if event.reason == "WorkerLost"]
    assert lost == [
        "worker llama-worker-1 was stopped by Kubernetes (Evicted); replacing it (not counted as a restart)"
    ]
    fixed = raw_spec(runPolicy={"maxRestarts": 0})
    running = decide(observe(fixed, pods=[pod(0), pod(1)]), CATALOG)
    restarted = decide(observe(fixed, [pod(0), evicted], running.status, NOW + timedelta(seconds=5)), CATALOG)
    assert status_of(restarted)["phase"] != "Failed" and status_of(restarted)["restarts"] == 0
    assert "WorkerLost" in [event.reason for event in restarted.events]


def test_an_elastic_job_whose_minimum_was_raised_keeps_running_on_its_grant_until_the_pass_grants_more() -> (
    None
):
    """No minReplicas: kubectl scale from 2 to 6 raises the minimum to 6. The pass grants 6 only once it
    fits whole (admission._reserve_admitted); meanwhile the 2 running, whose torchrun range 2:8 holds 2,
    go on."""
    raised = raw_spec(workers={"replicas": 6, "maxReplicas": 8}, elastic=ELASTIC)
    running = [replace(pod(index), nnodes="2:8") for index in range(2)]
    status = {"phase": "Running", "desiredReplicas": 2, "readyReplicas": 2, "gang": {"started": True}}
    held = decide(observe(raised, running, status, grant=2), CATALOG)
    assert held.create == () and held.delete == () and held.checkpoint_request is None
    assert "the 2 running keep running until the scheduling pass grants 6" in status_of(held)["message"]
    assert status_of(held)["gang"]["started"] is True
    # Workers whose range does not hold the grant cannot go on at it (3 of min = max = 4 left after a node
    # loss, the grant taken from them after an operator restart): the minimum is made up.
    short = [replace(pod(index), nnodes="4:4") for index in range(3)]
    made_up = decide(observe(elastic_spec(replicas=4, minimum=4, maximum=4), short, status, grant=3), CATALOG)
    assert created_names(made_up) == ["llama-worker-3"]
    # Granted whole, the 4 more are made and join.
    grown = decide(observe(raised, running, status, grant=6), CATALOG)
    assert created_names(grown) == [f"llama-worker-{index}" for index in range(2, 6)]


def test_an_elastic_job_below_its_minimum_after_it_started_is_released_by_its_gang_timeout() -> None:
    """min = max = 4, a node lost: torchrun cannot re-form with 3, so the 3 left hold their devices for
    nothing. The gang clock runs again from the loss; placed again in time, the job goes on."""
    spec = elastic_spec(replicas=4, minimum=4, maximum=4, scheduling={"gangTimeoutSeconds": 60})
    full = [pod(index, node=f"node-{index}") for index in range(4)]
    started = decide(observe(spec, full), CATALOG)
    assert status_of(started)["gang"]["started"] is True
    three = full[:3]
    lost = decide(observe(spec, three, started.status, NOW + timedelta(seconds=10)), CATALOG)
    assert created_names(lost) == ["llama-worker-3"]
    gang = status_of(lost)["gang"]
    assert gang.get("started") is not True and gang["since"] == "2025-01-01T12:00:10Z"
    waiting = [*three, pod(3, "Pending", node=None)]
    later = NOW + timedelta(seconds=40)
    still = decide(observe(spec, waiting, lost.status, later), CATALOG)
    assert status_of(still)["gang"]["since"] == gang["since"] and still.delete == ()
    assert still.requeue_after is not None and 29 <= still.requeue_after <= 31  # when the timeout ends
    timed_out = decide(observe(spec, waiting, still.status, NOW + timedelta(seconds=71)), CATALOG)
    assert condition(timed_out, "Admitted")["reason"] == "GangTimeout"
    assert "the loss that left it below its minimum" in condition(timed_out, "Admitted")["message"]
    assert sorted(timed_out.delete) == [f"llama-worker-{index}" for index in range(4)]
    # Placed again before the timeout: started, the clock stopped.
    back = decide(observe(spec, full, still.status, later), CATALOG)
    assert status_of(back)["gang"]["started"] is True and status_of(back)["gang"].get("since") is None


def test_an_elastic_jobs_gang_clock_below_its_minimum_waits_out_the_restart_backoff() -> None:
    """A failed worker of a job at its minimum is replaced after the restart backoff: the clock counts
    from the end of the backoff, not from the failure."""
    spec = elastic_spec(replicas=2, minimum=2, maximum=2, scheduling={"gangTimeoutSeconds": 60})
    status = {
        "phase": "Running",
        "desiredReplicas": 2,
        "gang": {"started": True},
        "restarts": 3,
        "lastFailureTime": "2025-01-01T12:00:00Z",
    }
    one = [pod(0, node="node-0")]
    backing_off = decide(observe(spec, one, status, NOW + timedelta(seconds=5)), CATALOG)
    assert backing_off.create == ()
    since = status_of(backing_off)["gang"]["since"]
    assert since == "2025-01-01T12:00:20Z"  # the third restart's backoff: 5 s doubled twice


def test_a_raised_minimum_granted_at_once_leaves_the_running_group_training_and_its_clock_stopped() -> None:
    """minReplicas raised from 2 to 4 and granted (it fits): the 2 running, started with the range 2:8,
    go on training while the 2 new ones start; one that never binds is not a loss of the running group."""
    spec = raw_spec(
        workers={"replicas": 4, "minReplicas": 4, "maxReplicas": 8},
        elastic=ELASTIC,
        scheduling={"gangTimeoutSeconds": 60},
    )
    running = [replace(pod(index, node=f"node-{index}"), nnodes="2:8") for index in range(2)]
    status = {"phase": "Running", "desiredReplicas": 2, "readyReplicas": 2, "gang": {"started": True}}
    grown = decide(observe(spec, running, status, grant=4), CATALOG)
    assert created_names(grown) == ["llama-worker-2", "llama-worker-3"]
    assert status_of(grown)["gang"]["started"] is True
    assert condition(grown, "Running")["status"] == "True"
    starting = [*running, *[replace(pod(index, "Pending", node=None), nnodes="4:8") for index in (2, 3)]]
    later = decide(observe(spec, starting, grown.status, NOW + timedelta(seconds=61), grant=4), CATALOG)
    assert later.delete == () and condition(later, "Admitted")["reason"] != "GangTimeout"


def test_a_lowered_minimum_does_not_let_a_running_group_below_its_own_floor_hold_its_devices() -> None:
    """minReplicas lowered from 2 to 1 while 2 workers run with the range 2:4, then worker 1's node goes.
    Worker 0's torchrun waits for a second node; its replacement (range 1:4) finds no room. Judged by the
    new minimum, or by the replacement's range, the job showed Running=True and held its devices for ever."""
    spec = elastic_spec(replicas=2, minimum=1, maximum=4, scheduling={"gangTimeoutSeconds": 60})
    worker_0 = replace(pod(0, node="node-0"), nnodes="2:4")
    status = {"phase": "Running", "desiredReplicas": 2, "readyReplicas": 2, "gang": {"started": True}}
    both = decide(observe(spec, [worker_0, replace(pod(1, node="node-1"), nnodes="2:4")], status), CATALOG)
    assert condition(both, "Running")["status"] == "True"
    lost = decide(observe(spec, [worker_0], both.status, NOW + timedelta(seconds=10)), CATALOG)
    assert created_names(lost) == ["llama-worker-1"]
    assert condition(lost, "Running")["status"] == "False"
    assert status_of(lost)["gang"].get("started") is not True
    waiting = [worker_0, replace(pod(1, "Pending", node=None), nnodes="1:4")]
    still = decide(observe(spec, waiting, lost.status, NOW + timedelta(seconds=40)), CATALOG)
    assert condition(still, "Running")["status"] == "False" and still.delete == ()
    timed_out = decide(observe(spec, waiting, still.status, NOW + timedelta(seconds=71)), CATALOG)
    assert condition(timed_out, "Admitted")["reason"] == "GangTimeout"
    assert sorted(timed_out.delete) == ["llama-worker-0", "llama-worker-1"]


def test_a_worker_that_succeeded_and_whose_pod_went_is_not_a_loss_below_the_minimum() -> None:
    """min = max = 2; worker 1 succeeds and its node is scaled away while worker 0 writes its last
    checkpoint: the job is not a gang again, and nothing is deleted or run again."""
    spec = elastic_spec(replicas=2, minimum=2, maximum=2, scheduling={"gangTimeoutSeconds": 60})
    both = [pod(index, node=f"node-{index}") for index in range(2)]
    started = decide(observe(spec, both), CATALOG)
    done = decide(observe(spec, [both[0], pod(1, "Succeeded", node="node-1")], started.status), CATALOG)
    assert status_of(done)["succeededWorkers"] == "1"
    status = done.status
    for seconds in (600, 700):
        later = decide(observe(spec, [both[0]], status, NOW + timedelta(seconds=seconds)), CATALOG)
        assert later.delete == () and later.create == ()
        assert status_of(later)["gang"]["started"] is True and status_of(later)["succeededWorkers"] == "1"
        status = later.status


# ------------------------------------------------------------------ review findings (3 December): lifecycle


def _gpu_node(name: str, product: str) -> NodeFacts:
    return node_facts(
        {
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
            "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "64", "memory": "512Gi"}},
        }
    )


def test_a_running_auto_job_keeps_its_accelerator_when_another_comes_free() -> None:
    # Admitted onto H100s while the A100 node was full; the A100s then came free. The job was re-sized onto
    # them: a Fits event per capacity swing, and a replacement worker required an A100 beside H100 workers.
    nodes = [_gpu_node("a1", "NVIDIA-A100-SXM4-40GB"), _gpu_node("h1", "NVIDIA-H100-80GB-HBM3")]
    spec = elastic_spec(replicas=3, minimum=1, maximum=3, resources={"accelerator": "auto"})
    busy = build_inventory(
        nodes,
        {"a1": [pod_usage(gpu_pod("a1", "8", job="other"))]},
        CATALOG,
        for_job=(JOB.namespace, JOB.name),
    )
    free = build_inventory(nodes, {}, CATALOG, for_job=(JOB.namespace, JOB.name))
    workers = [pod(index, node="h1") for index in range(3)]
    running = decide(replace(observe(spec, pods=workers), inventory=busy), CATALOG)
    assert running.status.sizing is not None and running.status.sizing.accelerator == "nvidia-h100-80gb"
    later = decide(replace(observe(spec, pods=workers, status=running.status), inventory=free), CATALOG)
    assert later.status.sizing is not None and later.status.sizing.accelerator == "nvidia-h100-80gb"
    assert later.demand is not None and later.demand.accelerator == "nvidia-h100-80gb"
    assert "Fits" not in [event.reason for event in later.events]
    # Queued, with nothing running, it is planned against every free device again.
    queued = decide(replace(observe(spec, status=running.status, grant=0), inventory=free), CATALOG)
    assert queued.status.sizing is not None and queued.status.sizing.accelerator == "nvidia-a100-40gb"


def test_an_elastic_job_whose_training_ended_succeeds_though_a_granted_worker_never_started() -> None:
    # Workers 0 and 1 ran and finished (torchrun's agents exit together); 2 and 3 were never placed. The job
    # stayed Pending with them asking for devices, and ended Failed once they could not rendezvous.
    spec = elastic_spec(replicas=4, minimum=2, maximum=4)
    started = decide(
        observe(spec, pods=[pod(0), pod(1), pod(2, "Pending"), pod(3, "Pending")], grant=4), CATALOG
    )
    finished = [pod(0, "Succeeded"), pod(1, "Succeeded"), pod(2, "Pending"), pod(3, "Pending")]
    for grant in (4, 2):  # the pass may have lowered the grant meanwhile
        done = decide(observe(spec, pods=finished, status=started.status, grant=grant), CATALOG)
        assert status_of(done)["phase"] == "Succeeded", grant
        assert sorted(done.delete) == ["llama-worker-2", "llama-worker-3"]  # the finished pods stay, for logs
    # While another worker still runs, the job is not done.
    running = [pod(0, "Succeeded"), pod(1), pod(2, "Pending"), pod(3, "Pending")]
    assert (
        status_of(decide(observe(spec, pods=running, status=started.status, grant=4), CATALOG))["phase"]
        != "Succeeded"
    )


def test_a_finished_job_deletes_workers_left_unfinished_and_keeps_the_finished() -> None:
    spec = elastic_spec(replicas=4, minimum=2, maximum=4)
    started = decide(observe(spec, pods=[pod(0), pod(1)], grant=2), CATALOG)
    done = decide(
        observe(spec, pods=[pod(0, "Succeeded"), pod(1, "Succeeded")], status=started.status, grant=2),
        CATALOG,
    )
    assert status_of(done)["phase"] == "Succeeded"
    leftover = [pod(0, "Succeeded"), pod(1, "Succeeded"), pod(2, "Pending")]
    again = decide(observe(spec, pods=leftover, status=done.status, grant=2), CATALOG)
    assert again.delete == ("llama-worker-2",)


def test_resuming_during_a_gang_timeout_backoff_clears_suspended_at_once() -> None:
    spec = elastic_spec(replicas=2, minimum=2, maximum=2)
    admitted = decide(observe(spec, pods=[pod(0), pod(1, "Pending")], grant=2), CATALOG)
    timed_out = decide(
        observe(
            spec,
            pods=[pod(0), pod(1, "Pending")],
            status=admitted.status,
            grant=2,
            now=NOW + timedelta(hours=1),
        ),
        CATALOG,
    )
    assert status_of(timed_out)["gang"]["retryAfter"]  # backing off
    suspended_spec = {**spec, "runPolicy": {"suspend": True}}
    paused = decide(
        observe(suspended_spec, status=timed_out.status, now=NOW + timedelta(hours=1, seconds=2)), CATALOG
    )
    assert condition(paused, "Suspended")["status"] == "True"
    resumed_at = NOW + timedelta(hours=1, seconds=5)  # within the first backoff (10 s)
    resumed_now = decide(observe(spec, status=paused.status, now=resumed_at), CATALOG)
    assert parse_rfc3339(status_of(resumed_now)["gang"]["retryAfter"]) > resumed_at  # still backing off
    assert condition(resumed_now, "Suspended")["status"] == "False"
    # The resume as the API server stores it, a new generation: the backoff of a gang placed too late stands.
    edited = decide(replace(observe(spec, status=paused.status, now=resumed_at), generation=4), CATALOG)
    assert edited.demand is None and parse_rfc3339(status_of(edited)["gang"]["retryAfter"]) > resumed_at


def test_a_spec_edited_during_the_backoff_of_a_refused_gang_asks_for_admission_at_once() -> None:
    """The API server refused the gang's workers (a template it refuses): the edit may have put that right,
    and it waited out the backoff, up to 10 minutes, before. Its retries stand: the next timeout backs off
    longer. The backoff of a gang that timed out for any other reason stands whatever is written (an HPA's
    scale every few seconds re-admitted it each gang timeout)."""
    spec = elastic_spec(replicas=2, minimum=2, maximum=2)
    pods = [pod(0), pod(1, "Pending")]
    admitted = decide(observe(spec, pods, grant=2), CATALOG)
    timed_out = decide(observe(spec, pods, admitted.status, NOW + timedelta(hours=1), grant=2), CATALOG)
    assert status_of(timed_out)["gang"]["retries"] == 1 and timed_out.demand is None
    later = NOW + timedelta(hours=1, seconds=3)  # within the first backoff (10 s)
    placed_late = decide(replace(observe(spec, [], timed_out.status, later, grant=0), generation=4), CATALOG)
    assert placed_late.demand is None and status_of(placed_late)["gang"]["retryAfter"]
    refused_status = copy.deepcopy(status_of(timed_out))
    refused_status["gang"]["refused"] = 'pods "llama-worker-0" is invalid: spec.containers[0].env[0].name'
    same_spec = decide(observe(spec, [], refused_status, later, grant=0), CATALOG)
    assert same_spec.demand is None and status_of(same_spec)["gang"]["retryAfter"]
    edited = decide(replace(observe(spec, [], refused_status, later, grant=0), generation=4), CATALOG)
    assert edited.demand is not None and condition(edited, "Admitted")["reason"] == "Queued"
    assert status_of(edited)["gang"]["retryAfter"] is None and status_of(edited)["gang"]["retries"] == 1


def test_the_accelerator_is_kept_while_workers_run_and_auto_only_while_its_nodes_are_there() -> None:
    nodes = [_gpu_node("a1", "NVIDIA-A100-SXM4-40GB"), _gpu_node("h1", "NVIDIA-H100-80GB-HBM3")]
    free = build_inventory(nodes, {}, CATALOG, for_job=(JOB.namespace, JOB.name))
    busy = build_inventory(
        nodes,
        {"a1": [pod_usage(gpu_pod("a1", "8", job="other"))]},
        CATALOG,
        for_job=(JOB.namespace, JOB.name),
    )
    workers = [pod(index, node="h1") for index in range(3)]
    auto = elastic_spec(replicas=3, minimum=1, maximum=3, resources={"accelerator": "auto"})
    running = decide(replace(observe(auto, pods=workers), inventory=busy), CATALOG)
    # The spec now names another device (the webhook off): new workers would join the H100 group on A100s,
    # so the job stays on the H100s while its workers run, and says when the edit applies.
    named = elastic_spec(replicas=3, minimum=1, maximum=3, resources={"accelerator": "nvidia-a100-40gb"})
    kept = decide(replace(observe(named, pods=workers, status=running.status), inventory=free), CATALOG)
    assert kept.status.sizing is not None and kept.status.sizing.accelerator == "nvidia-h100-80gb"
    assert any(
        warning.startswith("spec.resources.accelerator nvidia-a100-40gb applies when the job starts afresh")
        for warning in kept.status.sizing.warnings
    )
    # With no worker left, it is planned on the device it names, with the cluster's nodes of it.
    moved = decide(replace(observe(named, status=kept.status), inventory=free), CATALOG)
    assert moved.status.sizing is not None and moved.status.sizing.accelerator == "nvidia-a100-40gb"
    assert not any("no node in the cluster carries" in warning for warning in moved.status.sizing.warnings)
    assert not any("applies when" in warning for warning in moved.status.sizing.warnings)
    # The H100 nodes are gone (the workers' too, not yet seen): planned against what is there.
    only_a100 = build_inventory(nodes[:1], {}, CATALOG, for_job=(JOB.namespace, JOB.name))
    gone = decide(replace(observe(auto, pods=workers, status=running.status), inventory=only_a100), CATALOG)
    assert gone.status.sizing is not None and gone.status.sizing.accelerator == "nvidia-a100-40gb"


def test_the_early_success_is_torchruns_alone() -> None:
    # framework none: one process finishing says nothing of the others; a worker still starting is not deleted.
    spec = elastic_spec(replicas=3, minimum=1, maximum=3, framework="none")
    started = decide(
        observe(spec, pods=[pod(0), pod(1, "Pending", node="node-b"), pod(2, "Pending")], grant=3), CATALOG
    )
    later = [pod(0, "Succeeded"), pod(1, "Pending", node="node-b"), pod(2, "Pending")]
    decision = decide(observe(spec, pods=later, status=started.status, grant=3), CATALOG)
    assert status_of(decision)["phase"] != "Succeeded" and "llama-worker-1" not in decision.delete


def test_a_head_waits_from_the_end_of_its_suspension_not_its_start() -> None:
    spec = elastic_spec(replicas=2, minimum=2, maximum=2)
    queued = decide(observe(spec, grant=0), CATALOG)
    paused = decide(
        observe(
            {**spec, "runPolicy": {"suspend": True}},
            status=queued.status,
            grant=0,
            now=NOW + timedelta(minutes=1),
        ),
        CATALOG,
    )
    resumed_at = NOW + timedelta(hours=2)
    resumed_now = decide(observe(spec, status=paused.status, grant=0, now=resumed_at), CATALOG)
    later = decide(
        observe(spec, status=resumed_now.status, grant=0, now=resumed_at + timedelta(seconds=30)), CATALOG
    )
    assert later.demand is not None and later.demand.queued_since == resumed_at.timestamp()


def test_default_cpu_and_memory_fit_a_node_with_one_accelerator_and_little_host() -> None:
    """An 8-vCPU, 16 GiB node with one L4 (AWS g6.xlarge-like: a little under 8 cores allocatable): 8 cores
    and 16Gi a device would leave the worker Pending for good. A 96-core node keeps the usual default."""
    from dataclasses import replace as with_fields

    from kubefit.decisions.inventory import node_facts

    def node(name: str, cpu: str, memory: str, devices: str) -> NodeFacts:
        labels = {"nvidia.com/gpu.product": "NVIDIA-L4"}
        allocatable = {"nvidia.com/gpu": devices, "cpu": cpu, "memory": memory}
        return node_facts(
            {"metadata": {"name": name, "labels": labels}, "status": {"allocatable": allocatable}}
        )

    def requests(*nodes: NodeFacts, per_worker: int = 1) -> dict[str, str]:
        spec = raw_spec(
            model={"parameters": "300M"},
            resources={"accelerator": "nvidia-l4", "acceleratorsPerWorker": per_worker},
            workers={"replicas": 1},
        )
        inventory = build_inventory(list(nodes), {}, CATALOG)
        decision = decide(with_fields(observe(spec), inventory=inventory), CATALOG)
        created = decision.worker_pod(decision.create[0])
        return {
            resource: value
            for resource, value in created["spec"]["containers"][0]["resources"]["requests"].items()
            if resource != "nvidia.com/gpu"
        }

    small = node("small", "7910m", "15Gi", "1")
    assert requests(small) == {"cpu": "7119m", "memory": "13824Mi"}  # 90% of what the node offers
    assert requests(node("big", "96", "1Ti", "8")) == {"cpu": "8", "memory": "16384Mi"}
    assert requests(small, node("big", "96", "1Ti", "8")) == requests(small)  # fits either node
    assert requests(node("big", "96", "1Ti", "8"), node("c", "8", "32Gi", "1"), per_worker=8) == {
        "cpu": "64",
        "memory": "131072Mi",
    }  # the 1-device node cannot hold an 8-device worker: it sets no bound


def _auto_13b(replicas: int, *, elastic: bool = True, framework: str = "pytorch") -> dict[str, Any]:
    workers = (
        {"replicas": replicas, "minReplicas": 1, "maxReplicas": 4} if elastic else {"replicas": replicas}
    )
    spec = raw_spec(
        model={"parameters": "13B"},
        training={"sharding": "zero3"},
        framework=framework,
        resources={"accelerator": "auto", "acceleratorsPerWorker": "auto"},
        workers=workers,
    )
    return {**spec, "elastic": ELASTIC} if elastic else spec


def test_an_elastic_auto_job_keeps_its_workers_device_count_when_scaled() -> None:
    # Planned at 1 worker the job takes 4 H100s a worker; at 2, 2 a worker. Scaled while worker 0 ran, the
    # new worker got 2 devices beside worker 0's 4, and status.sizing described only the 2 (API review).
    nodes = [_gpu_node(f"h{index}", "NVIDIA-H100-80GB-HBM3") for index in range(4)]
    free = build_inventory(nodes, {}, CATALOG, for_job=(JOB.namespace, JOB.name))
    started = decide(replace(observe(_auto_13b(1)), inventory=free), CATALOG)
    assert started.sizing is not None and started.sizing.accelerators_per_worker == 4
    scaled = decide(
        replace(observe(_auto_13b(2), pods=[pod(0)], status=started.status), inventory=free), CATALOG
    )
    assert scaled.create == (1,) and scaled.sizing is not None
    assert scaled.sizing.accelerators_per_worker == 4
    resources = scaled.worker_pod(1)["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "4"
    # A count written into the spec meanwhile (the webhook off) waits too, and says so.
    edited = _auto_13b(2)
    edited["resources"] = {"accelerator": "auto", "acceleratorsPerWorker": 2}
    waits = decide(replace(observe(edited, pods=[pod(0)], status=started.status), inventory=free), CATALOG)
    assert waits.sizing is not None and waits.sizing.accelerators_per_worker == 4
    assert any(
        "acceleratorsPerWorker 2 applies when the job starts afresh" in w for w in waits.sizing.warnings
    )
    # With no worker left it is planned afresh; a fixed group (restarted whole) and a jax job too, once
    # the workers they restart are gone: till then their auto count is the running workers' (the pass
    # counts each running worker at the sizing's count).
    afresh = decide(replace(observe(_auto_13b(2), status=started.status), inventory=free), CATALOG)
    assert afresh.sizing is not None and afresh.sizing.accelerators_per_worker == 2
    for other in (_auto_13b(2, elastic=False), _auto_13b(2, framework="jax")):
        first = decide(
            replace(observe({**other, "workers": {**other["workers"], "replicas": 1}}), inventory=free),
            CATALOG,
        )
        again = decide(replace(observe(other, pods=[pod(0)], status=first.status), inventory=free), CATALOG)
        assert again.sizing is not None and again.sizing.accelerators_per_worker == 4
        gone = decide(replace(observe(other, status=again.status), inventory=free), CATALOG)
        assert gone.sizing is not None and gone.sizing.accelerators_per_worker == 2


def test_the_device_count_is_kept_only_with_the_device() -> None:
    # An auto job whose H100 nodes are gone is planned on what is there (kept_accelerator): its workers'
    # count is not kept either, or new workers would take the H100 count on another device (a count the
    # A10G nodes do not offer: review of this change).
    spec = elastic_spec(
        replicas=3, minimum=1, maximum=4, resources={"accelerator": "auto", "acceleratorsPerWorker": "auto"}
    )
    status = {"phase": "Running", "sizing": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 2}}
    a10g = build_inventory([_gpu_node("g1", "NVIDIA-A10G")], {}, CATALOG, for_job=(JOB.namespace, JOB.name))
    moved = decide(replace(observe(spec, pods=[pod(0), pod(1)], status=status), inventory=a10g), CATALOG)
    afresh = decide(replace(observe(spec, status=status), inventory=a10g), CATALOG)
    assert moved.sizing is not None and afresh.sizing is not None
    assert moved.sizing.accelerator == afresh.sizing.accelerator == "nvidia-a10g"
    assert moved.sizing.accelerators_per_worker == afresh.sizing.accelerators_per_worker
    assert not any("no node in the cluster offers" in warning for warning in moved.sizing.warnings)


def test_a_held_count_that_no_longer_fits_says_why() -> None:
    # The model grew while 1-device workers ran: the job is planned at their count, and the sizing says the
    # count is held by them, not chosen (the "raise maxReplicas" advice alone misled).
    nodes = [_gpu_node(f"h{index}", "NVIDIA-H100-80GB-HBM3") for index in range(4)]
    free = build_inventory(nodes, {}, CATALOG, for_job=(JOB.namespace, JOB.name))
    small = {**_auto_13b(2), "model": {"parameters": "1B"}}
    started = decide(replace(observe(small), inventory=free), CATALOG)
    assert started.sizing is not None and started.sizing.accelerators_per_worker == 1
    grown = {**small, "model": {"parameters": "70B"}, "training": {}}
    held = decide(
        replace(observe(grown, pods=[pod(0), pod(1)], status=started.status), inventory=free), CATALOG
    )
    assert held.sizing is not None and held.sizing.accelerators_per_worker == 1
    assert any("acceleratorsPerWorker auto is held at 1" in warning for warning in held.sizing.warnings)


def test_a_grant_lowered_because_workers_no_longer_fit_is_a_scale_down() -> None:
    """Nodes went away under a running elastic job: the pass lowers its grant (CapacityChanged in
    kubefit_scale_events_total). Condition Admitted said `Admitted` with a Normal `Admitted` event mid-run,
    while its checkpoint request said ScaledDown; Reason.SCALED_DOWN covers less capacity."""
    spec = elastic_spec(framework="pytorch")
    four = [pod(i) for i in range(4)]
    running = decide(observe(spec, four, grant=4), CATALOG)
    lost = decide(
        replace(
            observe(spec, four, running.status, grant=2),
            grant_reason="CapacityChanged: 2 workers no longer fit on nvidia-h100-80gb nodes",
        ),
        CATALOG,
    )
    admitted = condition(lost, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("True", "ScaledDown")
    assert admitted["message"] == "2 of 4 workers granted: 2 workers no longer fit on nvidia-h100-80gb nodes"
    assert status_of(lost)["checkpoint"]["reason"] == "ScaledDown"
    assert ("Normal", "ScaledDown") in events_of(lost) and ("Normal", "Admitted") not in events_of(lost)


def test_the_demand_says_whether_worker_0_hosts_the_rendezvous() -> None:
    """decide keeps worker 0 whatever the grant where it hosts the rendezvous; under framework none only
    while it lives. The pass counts its reserved place the same way (Demand.host_kept)."""
    for framework, kept in (("pytorch", True), ("jax", True), ("none", False)):
        demand = decide(observe(elastic_spec(framework=framework), grant=None), CATALOG).demand
        assert demand is not None and demand.host_kept is kept, framework


def test_one_worker_granted_is_said_in_the_singular() -> None:
    decision = decide(observe(elastic_spec(replicas=1, minimum=1, maximum=4), grant=1), CATALOG)
    assert condition(decision, "Admitted")["message"] == "1 worker granted"


def test_why_kube_scheduler_cannot_place_a_worker_is_in_the_ready_message_and_the_gang_timeout() -> None:
    """A claim the template names that does not exist (the bert example on a cluster without it): the job
    said "0/2 workers running" for five minutes, then a gang timeout, again and again; only kubectl
    describe pod said why."""
    why = 'persistentvolumeclaim "bert-output" not found'
    failed = decide(observe(pods=[pod(0), pod(1, "Failed")]), CATALOG)
    pending = [replace(pod(index, "Pending", node=None), unschedulable=why) for index in (0, 1)]
    waiting = decide(observe(pods=pending, status=failed.status, now=NOW + timedelta(seconds=60)), CATALOG)
    assert (
        condition(waiting, "Ready")["message"]
        == f"0/2 workers running; llama-worker-0 not scheduled (and 1 more): {why}"
    )
    late = decide(observe(pods=pending, status=failed.status, now=NOW + timedelta(seconds=305)), CATALOG)
    released = condition(late, "Admitted")
    assert released["reason"] == "GangTimeout"
    assert (
        f"; llama-worker-0 not scheduled (and 1 more): {why}; that is no shortage of nvidia.com/gpu"
        in (released["message"])
    )
    assert status_of(late)["gang"]["unplaceable"] == why
    assert late.demand is None  # backing off; after it, its demand takes no room (test_refused_workers)
    # A timeout in the reconcile that also sees a spec edit (generation 3 over a status of 2): the edit ends
    # such a hold, so none is set, and the message does not say it takes no room (a review).
    edited = decide(
        observe(
            pods=pending,
            status={**status_of(failed), "observedGeneration": 2},
            now=NOW + timedelta(seconds=305),
        ),
        CATALOG,
    )
    assert status_of(edited)["gang"].get("unplaceable") is None
    assert "takes no room" not in condition(edited, "Admitted")["message"]


def test_a_reason_naming_the_count_wanted_before_a_scale_is_not_told_after_it() -> None:
    """Scaled from 2 to 1 ("ScaledDown: wants 1"), then to 3 while the leaving worker still held the node:
    the scale-up's reconcile read the old reason, and posted a ScaledDown event "1 of 3 workers granted:
    wants 1"."""
    spec = elastic_spec(replicas=1, minimum=1, maximum=4)
    one = decide(
        replace(observe(spec, [pod(0)], grant=1), grant_reason="ScaledDown: wants 1", grant_reason_want=1),
        CATALOG,
    )
    assert condition(one, "Admitted")["reason"] == "ScaledDown"
    up = elastic_spec(replicas=3, minimum=1, maximum=4)
    stale = replace(
        observe(up, [pod(0)], one.status, grant=1), grant_reason="ScaledDown: wants 1", grant_reason_want=1
    )
    admitted = condition(decide(stale, CATALOG), "Admitted")
    assert (admitted["reason"], admitted["message"]) == (
        "Admitted",
        "1 of 3 workers granted: no capacity for more",
    )
    assert ("Normal", "ScaledDown") not in events_of(decide(stale, CATALOG))
    # The same reason given for the count the job wants now is told as it is.
    current = replace(stale, grant_reason="ScaledDown: wants 3", grant_reason_want=3)
    assert condition(decide(current, CATALOG), "Admitted")["reason"] == "ScaledDown"
