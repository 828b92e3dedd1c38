"""The node agent's pure pieces: what it does with a pod, the status patches, pod IPs, `node list` rows."""

from __future__ import annotations

import argparse
import copy
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubefit_sandbox.cli import _as_option_error, add_node_commands, node_rows
from kubefit_sandbox.errors import NodeAgentError
from kubefit_sandbox.kubeclient import WatchExpired, watch_events
from kubefit_sandbox.nodeagent import KeyedTimers
from kubefit_sandbox.nodes import NodeRequest, NodeRequestError, _check_request, _pool_for
from kubefit_sandbox.podstatus import (
    EXIT_ANNOTATION,
    SHUTDOWN_ANNOTATION,
    START_ANNOTATION,
    PodIPAllocator,
    decide,
    exit_code_from,
    exited_status_patch,
    parse_rfc3339,
    rfc3339,
    running_status_patch,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NOW_TEXT = "2026-01-02T03:04:05Z"


def make_pod(
    phase: str | None = None,
    annotations: dict[str, str] | None = None,
    init_containers: bool = False,
    **metadata: Any,
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {"name": "worker-0", "namespace": "ml", "uid": "uid-1", "annotations": annotations or {}},
        "spec": {
            "nodeName": "h100-0",
            "containers": [
                {"name": "trainer", "image": "ghcr.io/acme/train:1"},
                {"name": "sidecar", "image": "busybox"},
            ],
        },
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-02T03:04:00Z"}
            ]
        },
    }
    pod["metadata"].update(metadata)
    if phase:
        pod["status"]["phase"] = phase
    if init_containers:
        pod["spec"]["initContainers"] = [{"name": "fetch", "image": "curl"}]
    return pod


# ---------------------------------------------------------------------------------------------
# decide
# ---------------------------------------------------------------------------------------------


def test_a_pending_pod_is_run() -> None:
    assert decide(make_pod("Pending"), NOW).kind == "run"
    assert decide(make_pod(None), NOW).kind == "run"  # no phase yet


def test_a_start_annotation_keeps_a_bound_pod_pending_until_that_long_after_its_creation() -> None:
    created = rfc3339(NOW - timedelta(seconds=10))
    slow = make_pod("Pending", {START_ANNOTATION: "30"}, creationTimestamp=created)
    action = decide(slow, NOW)
    assert (action.kind, action.start_at) == ("start-later", NOW + timedelta(seconds=20))
    assert decide(slow, NOW + timedelta(seconds=20)).kind == "run"
    assert decide(make_pod("Pending", {START_ANNOTATION: "5"}, creationTimestamp=created), NOW).kind == "run"
    assert (
        decide(make_pod("Running", {START_ANNOTATION: "30"}, creationTimestamp=created), NOW).kind == "none"
    )
    # An exit asked for ends it at once, pulling or not.
    assert decide(make_pod("Pending", {START_ANNOTATION: "30", EXIT_ANNOTATION: "0"}), NOW).kind == "exit"


@pytest.mark.parametrize("value", ["-1", "soon", "86400"])
def test_a_bad_start_annotation_is_reported_with_its_name(value: str) -> None:
    action = decide(make_pod("Pending", {START_ANNOTATION: value}, creationTimestamp=NOW_TEXT), NOW)
    assert action.kind == "invalid" and START_ANNOTATION in action.message and repr(value) in action.message


def test_a_running_pod_without_annotation_is_left_alone() -> None:
    assert decide(make_pod("Running"), NOW).kind == "none"


@pytest.mark.parametrize(("value", "code"), [("0", 0), ("1", 1), (" 137 ", 137), ("255", 255)])
def test_exit_annotation_ends_the_pod_with_its_code(value: str, code: int) -> None:
    action = decide(make_pod("Running", {EXIT_ANNOTATION: value}), NOW)
    assert (action.kind, action.exit_code) == ("exit", code)


def test_exit_annotation_on_a_pod_not_yet_running_ends_it_directly() -> None:
    action = decide(make_pod("Pending", {EXIT_ANNOTATION: "0"}), NOW)
    assert (action.kind, action.exit_code) == ("exit", 0)


def test_a_finished_pod_is_not_changed_again_even_if_the_annotation_changes() -> None:
    for phase in ("Succeeded", "Failed"):
        assert decide(make_pod(phase, {EXIT_ANNOTATION: "9"}), NOW).kind == "none"


@pytest.mark.parametrize("value", ["-1", "256", "yes", "", "1.5", "0x1"])
def test_bad_exit_annotation_is_reported_with_its_name(value: str) -> None:
    action = decide(make_pod("Running", {EXIT_ANNOTATION: value}), NOW)
    assert action.kind == "invalid"
    assert EXIT_ANNOTATION in action.message and repr(value) in action.message


def test_exit_code_from_without_annotation_is_none() -> None:
    assert exit_code_from(make_pod("Running")) is None


def test_a_terminating_running_pod_is_deleted_when_its_grace_period_ends() -> None:
    deadline = NOW + timedelta(seconds=30)
    pod = make_pod("Running", deletionTimestamp=rfc3339(deadline), deletionGracePeriodSeconds=30)
    action = decide(pod, NOW)
    assert (action.kind, action.delete_at) == ("delete", deadline)


def test_shutdown_annotation_shortens_the_wait_but_never_beyond_the_grace_period() -> None:
    requested = NOW
    deadline = requested + timedelta(seconds=30)
    fast = make_pod(
        "Running",
        {SHUTDOWN_ANNOTATION: "2"},
        deletionTimestamp=rfc3339(deadline),
        deletionGracePeriodSeconds=30,
    )
    assert decide(fast, NOW).delete_at == requested + timedelta(seconds=2)
    slow = make_pod(
        "Running",
        {SHUTDOWN_ANNOTATION: "600"},
        deletionTimestamp=rfc3339(deadline),
        deletionGracePeriodSeconds=30,
    )
    assert decide(slow, NOW).delete_at == deadline


def test_a_bad_shutdown_annotation_falls_back_to_the_grace_period() -> None:
    deadline = NOW + timedelta(seconds=30)
    pod = make_pod(
        "Running",
        {SHUTDOWN_ANNOTATION: "soon"},
        deletionTimestamp=rfc3339(deadline),
        deletionGracePeriodSeconds=30,
    )
    assert decide(pod, NOW).delete_at == deadline


@pytest.mark.parametrize("phase", ["Pending", "Succeeded", "Failed"])
def test_a_terminating_pod_without_running_containers_is_deleted_at_once(phase: str) -> None:
    pod = make_pod(
        phase, deletionTimestamp=rfc3339(NOW + timedelta(seconds=30)), deletionGracePeriodSeconds=30
    )
    assert decide(pod, NOW).delete_at == NOW


# ---------------------------------------------------------------------------------------------
# Status patches
# ---------------------------------------------------------------------------------------------


def test_running_patch_has_everything_a_kubelet_reports() -> None:
    status = running_status_patch(make_pod("Pending"), "10.240.0.2", "10.244.0.2", NOW_TEXT)["status"]
    assert status["phase"] == "Running"
    assert (status["hostIP"], status["podIP"], status["podIPs"]) == (
        "10.240.0.2",
        "10.244.0.2",
        [{"ip": "10.244.0.2"}],
    )
    assert status["startTime"] == NOW_TEXT
    conditions = {c["type"]: c for c in status["conditions"]}
    assert {kind: c["status"] for kind, c in conditions.items()} == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    # PodScheduled was already True (set by the scheduler): its transition time is left as it was.
    assert "lastTransitionTime" not in conditions["PodScheduled"]
    assert conditions["Ready"]["lastTransitionTime"] == NOW_TEXT
    containers = status["containerStatuses"]
    assert [c["name"] for c in containers] == ["trainer", "sidecar"]
    trainer = containers[0]
    assert trainer["image"] == "ghcr.io/acme/train:1"
    assert (trainer["ready"], trainer["started"], trainer["restartCount"]) == (True, True, 0)
    assert trainer["state"] == {"running": {"startedAt": NOW_TEXT}}
    assert trainer["containerID"] != containers[1]["containerID"]
    assert "initContainerStatuses" not in status


def test_running_patch_keeps_an_existing_start_time_and_completes_init_containers() -> None:
    pod = make_pod("Pending", init_containers=True)
    pod["status"]["startTime"] = "2026-01-02T03:00:00Z"
    status = running_status_patch(pod, "10.240.0.2", "10.244.0.9", NOW_TEXT)["status"]
    assert status["startTime"] == "2026-01-02T03:00:00Z"
    (init,) = status["initContainerStatuses"]
    assert init["name"] == "fetch" and init["state"]["terminated"]["exitCode"] == 0


def test_running_patch_sets_pod_scheduled_for_a_pod_that_skipped_the_scheduler() -> None:
    pod = make_pod("Pending")
    pod["status"]["conditions"] = []
    conditions = running_status_patch(pod, "10.240.0.2", "10.244.0.2", NOW_TEXT)["status"]["conditions"]
    assert conditions[0] == {"type": "PodScheduled", "status": "True", "lastTransitionTime": NOW_TEXT}


@pytest.mark.parametrize(
    ("pod_ip", "host_ip", "error"),
    [("10.244.0.300", "10.240.0.2", "10.244.0.300"), ("10.244.0.2", "node-a", "node-a")],
)
def test_running_patch_refuses_bad_addresses(pod_ip: str, host_ip: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        running_status_patch(make_pod("Pending"), host_ip, pod_ip, NOW_TEXT)


def test_running_patch_refuses_a_pod_without_containers() -> None:
    pod = make_pod("Pending")
    pod["spec"]["containers"] = []
    with pytest.raises(ValueError, match="spec.containers"):
        running_status_patch(pod, "10.240.0.2", "10.244.0.2", NOW_TEXT)


def test_running_patch_does_not_modify_the_pod() -> None:
    pod = make_pod("Pending", init_containers=True)
    before = copy.deepcopy(pod)
    running_status_patch(pod, "10.240.0.2", "10.244.0.2", NOW_TEXT)
    assert pod == before


def running_pod() -> dict[str, Any]:
    pod = make_pod("Pending")
    pod["status"].update(
        running_status_patch(pod, "10.240.0.2", "10.244.0.2", "2026-01-02T03:04:01Z")["status"]
    )
    return pod


def test_exit_zero_succeeds_with_every_container_terminated() -> None:
    status = exited_status_patch(running_pod(), 0, "10.240.0.2", "10.244.0.2", NOW_TEXT)["status"]
    assert status["phase"] == "Succeeded"
    for container in status["containerStatuses"]:
        terminated = container["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
        assert terminated["startedAt"] == "2026-01-02T03:04:01Z"  # when it started running
        assert terminated["finishedAt"] == NOW_TEXT
        assert container["ready"] is False and container["started"] is False
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "PodCompleted"
    assert status["podIP"] == "10.244.0.2"


def test_non_zero_exit_fails_with_that_code() -> None:
    status = exited_status_patch(running_pod(), 137, "10.240.0.2", "10.244.0.2", NOW_TEXT)["status"]
    assert status["phase"] == "Failed"
    assert {c["state"]["terminated"]["exitCode"] for c in status["containerStatuses"]} == {137}
    assert {c["state"]["terminated"]["reason"] for c in status["containerStatuses"]} == {"Error"}


@pytest.mark.parametrize("code", [-1, 256])
def test_exit_patch_refuses_out_of_range_codes(code: int) -> None:
    with pytest.raises(ValueError, match=f"exit code {code}"):
        exited_status_patch(running_pod(), code, "10.240.0.2", "10.244.0.2", NOW_TEXT)


# ---------------------------------------------------------------------------------------------
# Pod IPs
# ---------------------------------------------------------------------------------------------


def test_pod_ips_are_unique_stable_and_reused_after_release() -> None:
    allocator = PodIPAllocator()
    first = allocator.allocate("a", "10.244.3.0/24")
    second = allocator.allocate("b", "10.244.3.0/24")
    assert first == "10.244.3.2"  # .1 is left for the node's bridge
    assert second == "10.244.3.3"
    assert allocator.allocate("a", "10.244.3.0/24") == first
    allocator.release("a")
    assert allocator.allocate("c", "10.244.3.0/24") == first


def test_observed_ips_are_never_handed_out_again() -> None:
    allocator = PodIPAllocator()
    allocator.observe("running-before-restart", "10.244.0.2")
    assert allocator.allocate("new", "10.244.0.0/24") == "10.244.0.3"


def test_a_full_pod_cidr_is_an_error() -> None:
    allocator = PodIPAllocator()
    # A /30 has two usable hosts; .1 is left for the bridge, so exactly one pod fits.
    assert allocator.allocate("only", "10.244.0.0/30") == "10.244.0.2"
    with pytest.raises(NodeAgentError, match="no free pod IP left in 10.244.0.0/30"):
        allocator.allocate("one-too-many", "10.244.0.0/30")


# ---------------------------------------------------------------------------------------------
# Time format, `node list`, the CLI parser
# ---------------------------------------------------------------------------------------------


def test_rfc3339_round_trip() -> None:
    assert rfc3339(NOW) == NOW_TEXT
    assert parse_rfc3339(NOW_TEXT) == NOW


def test_node_rows_count_only_active_pods_per_node() -> None:
    node = {
        "metadata": {
            "name": "h100-0",
            "labels": {
                "kubefit.dev/sandbox-pool": "h100",
                "kubefit.dev/sandbox-accelerator": "nvidia-h100-80gb",
            },
        },
        "status": {
            "allocatable": {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    pods = [
        {"spec": {"nodeName": "h100-0"}, "status": {"phase": "Running"}},
        {"spec": {"nodeName": "h100-0"}, "status": {"phase": "Succeeded"}},
        {"spec": {"nodeName": "a100-0"}, "status": {"phase": "Running"}},
    ]
    assert node_rows([node], pods) == [
        ["h100-0", "h100", "nvidia-h100-80gb", "8 nvidia.com/gpu", "96", "1Ti", "True", "1"]
    ]


def test_node_commands_parse() -> None:
    parser = argparse.ArgumentParser()
    add_node_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["node", "add", "--accelerator", "nvidia-l4", "--count", "2", "--pool", "l4"])
    assert (args.accelerator, args.count, args.pool, args.nodes) == ("nvidia-l4", 2, "l4", 1)
    assert callable(args.handler)
    assert parser.parse_args(["node", "remove", "a-0", "a-1"]).names == ["a-0", "a-1"]
    with pytest.raises(SystemExit):
        parser.parse_args(["node", "add", "--count", "many"])


@pytest.mark.parametrize(
    ("request_", "field", "option_message"),
    [
        (NodeRequest("tpu-v99"), "accelerator", "--accelerator: unknown accelerator 'tpu-v99'"),
        (NodeRequest("nvidia-l4", nodes=0), "nodes", "--nodes must be at least 1, got 0"),
        (NodeRequest(None, count=2), "count", "--count must be a positive number of accelerators"),
        (NodeRequest("nvidia-l4", name="x", nodes=2), "name", "--name names a single node"),
    ],
)
def test_a_bad_node_request_names_its_field_and_the_cli_words_it_as_the_option(
    request_: NodeRequest, field: str, option_message: str
) -> None:
    from kubefit.sizing.catalog import load_catalog

    with pytest.raises(NodeRequestError) as raised:
        _check_request(request_, load_catalog())
    assert raised.value.field == field
    assert str(raised.value).startswith(field)  # the library speaks of NodeRequest fields
    assert _as_option_error(raised.value).startswith(option_message)  # the CLI of its options


def test_pool_field_errors_of_a_node_request_name_the_request_field_not_the_cluster_file() -> None:
    from kubefit.sizing.catalog import load_catalog

    with pytest.raises(NodeRequestError) as raised:
        _pool_for(NodeRequest("nvidia-l4", cpu="lots"), "nvidia-l4", [], load_catalog())
    assert raised.value.field == "cpu"
    assert str(raised.value).startswith("cpu must be a positive CPU quantity")
    assert _as_option_error(raised.value).startswith("--cpu must be a positive CPU quantity")
    pool = _pool_for(NodeRequest("nvidia-l4", count=2, cpu=8), "nvidia-l4", [], load_catalog())
    assert (pool.name, pool.accelerators_per_node, pool.cpu) == ("nvidia-l4", 2, "8")


# ---------------------------------------------------------------------------------------------
# Watch stream parsing and timers (no API server: a recorded response stands in for the stream)
# ---------------------------------------------------------------------------------------------


class RecordedResponse:
    def __init__(self, lines: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(line) + "\n" for line in lines)
        # Split mid-line to check that events spanning chunks are put back together.
        self._chunks = [text[:7].encode(), text[7:].encode()]
        self.closed = False

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        yield from self._chunks

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


def pod_event(kind: str, version: str) -> dict[str, Any]:
    return {"type": kind, "object": {"metadata": {"name": "p", "resourceVersion": version}}}


def test_watch_events_yields_each_event_and_asks_for_bookmarks() -> None:
    calls: list[dict[str, Any]] = []
    response = RecordedResponse(
        [pod_event("ADDED", "11"), pod_event("BOOKMARK", "12"), pod_event("DELETED", "13")]
    )

    def list_pods(**kwargs: Any) -> RecordedResponse:
        calls.append(kwargs)
        return response

    events = list(watch_events(list_pods, "10", field_selector="spec.nodeName!="))
    assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in events] == [
        ("ADDED", "11"),
        ("BOOKMARK", "12"),
        ("DELETED", "13"),
    ]
    (call,) = calls
    assert (
        call["watch"] is True and call["resource_version"] == "10" and call["allow_watch_bookmarks"] is True
    )
    assert call["field_selector"] == "spec.nodeName!="
    assert response.closed


def test_watch_events_turns_410_into_watch_expired() -> None:
    gone = {
        "type": "ERROR",
        "object": {"kind": "Status", "code": 410, "message": "too old resource version: 5"},
    }
    response = RecordedResponse([pod_event("ADDED", "6"), gone])
    events = watch_events(lambda **_: response, "5")
    assert next(events)["type"] == "ADDED"
    with pytest.raises(WatchExpired, match="too old resource version"):
        next(events)
    assert response.closed


def test_watch_events_raises_other_errors() -> None:
    failure = {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcd is sad"}}
    with pytest.raises(NodeAgentError, match="watch error: etcd is sad"):
        list(watch_events(lambda **_: RecordedResponse([failure]), "1"))


def test_timers_run_in_due_order_and_a_rescheduled_or_cancelled_key_runs_once_or_never() -> None:
    timers = KeyedTimers()
    stop = threading.Event()
    ran: list[str] = []
    timers.schedule("late", 0.15, lambda: ran.append("late"))
    timers.schedule("early", 0.05, lambda: ran.append("early"))
    timers.schedule("moved", 0.01, lambda: ran.append("moved-first"))
    timers.schedule("moved", 0.10, lambda: ran.append("moved-again"))  # replaces the first
    timers.schedule("cancelled", 0.02, lambda: ran.append("cancelled"))
    timers.cancel("cancelled")
    timers.schedule("stop", 0.3, stop.set)
    runner = threading.Thread(target=timers.run, args=(stop,))
    runner.start()
    runner.join(timeout=5)
    assert ran == ["early", "moved-again", "late"]
