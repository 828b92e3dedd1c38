"""The sandbox's process pods (kubefit_sandbox.processpods) with real local processes and a fake API."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiException

from kubefit_sandbox import processpods
from kubefit_sandbox.cli import _logs
from kubefit_sandbox.podstatus import PodIPAllocator, rfc3339
from kubefit_sandbox.processpods import EXIT_FILE, LOG_FILE, ProcessNode, ProcessPods, latest_run

NS = "team-a"
NODE = ProcessNode("cpu-0", "10.240.0.7")
# Ignores SIGTERM (a process in its grace period), records its PID for the clean-up, ends by itself in 20 s.
STUBBORN = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "open('pid', 'w').write(str(os.getpid()))\n"
    "print('ready', flush=True)\n"
    "time.sleep(20)\n"
)


class FakeCore:
    """Records the status patches (by phase) and deletes; fails Running patches while told to."""

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.deleted: list[str] = []
        self.running_failures = 0
        self.error = ApiException(status=500, reason="Internal Server Error")

    def patch_namespaced_pod_status(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        phase = body["status"]["phase"]
        self.phases.append(phase)
        if phase == "Running" and self.running_failures > 0:
            self.running_failures -= 1
            raise self.error

    def delete_namespaced_pod(self, name: str, namespace: str, body: Any = None) -> None:
        self.deleted.append(name)


class FakeTimers:
    def __init__(self) -> None:
        self.due: dict[str, tuple[float, Callable[[], None]]] = {}

    def schedule(self, key: str, delay_s: float, call: Callable[[], None]) -> None:
        self.due[key] = (delay_s, call)

    def cancel(self, key: str) -> None:
        self.due.pop(key, None)


def make_pod(name: str, script: str, uid: str | None = None, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "command": [sys.executable, "-c", script], **spec.pop("container", {})}
    return {
        "metadata": {"name": name, "namespace": NS, "uid": uid or f"uid-{name}"},
        "spec": {"containers": [container], "nodeName": NODE.name, **spec},
        "status": {"phase": "Pending"},
    }


def deleting(pod: dict[str, Any], in_s: float) -> dict[str, Any]:
    moment = datetime.now(UTC) + timedelta(seconds=in_s)
    return {**pod, "metadata": {**pod["metadata"], "deletionTimestamp": rfc3339(moment)}}


def wait_for(what: str, condition: Callable[[], object], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run_dir(state: Path, pod: dict[str, Any]) -> Path:
    found = latest_run(state, NS, pod["metadata"]["name"])
    assert found is not None
    return found


def wait_ready(state: Path, pod: dict[str, Any]) -> None:
    wait_for("the process to start", lambda: b"ready" in (run_dir(state, pod) / LOG_FILE).read_bytes())


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for pid_file in tmp_path.glob("pods/*/*/*/work/pid"):  # what a failed test left running
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processpods, "STOP_ALL_GRACE_S", 0.2)
    monkeypatch.setattr(processpods, "STATUS_WRITE_BACKOFF_S", (0.0, 0.0, 0.0), raising=False)


def make_pods(state: Path, core: FakeCore, timers: FakeTimers | None = None) -> ProcessPods:
    return ProcessPods(state, lambda: core, PodIPAllocator(), timers or FakeTimers())


def test_a_force_deleted_pods_process_in_its_grace_period_stops_with_the_agent(
    state: Path, fast: None
) -> None:
    core = FakeCore()
    pods = make_pods(state, core)
    pod = make_pod("stubborn", STUBBORN, terminationGracePeriodSeconds=30)
    pods.pod_changed(core, pod, NODE)
    wait_ready(state, pod)
    pods.pod_deleted(pod)  # SIGTERM (ignored); SIGKILL would be 30 s away
    pods.stop_all()
    wait_for("the process to be killed", lambda: (run_dir(state, pod) / EXIT_FILE).exists())
    assert (run_dir(state, pod) / EXIT_FILE).read_text().strip() == "137"


def test_nothing_starts_once_the_agent_stops(state: Path, fast: None) -> None:
    core = FakeCore()
    pods = make_pods(state, core)
    pods.stop_all()
    pods.pod_changed(core, make_pod("late", "pass"), NODE)
    assert core.phases == [] and latest_run(state, NS, "late") is None


def test_a_failed_running_write_is_retried(state: Path, fast: None) -> None:
    core = FakeCore()
    core.running_failures = 2
    make_pods(state, core).pod_changed(core, make_pod("flaky", "raise SystemExit(3)"), NODE)
    assert core.phases[:3] == ["Running"] * 3
    wait_for("the exit to be reported", lambda: "Failed" in core.phases)


def test_a_process_whose_running_write_failed_for_good_is_still_reaped_and_reported(
    state: Path, fast: None
) -> None:
    core = FakeCore()
    core.running_failures = 100
    pod = make_pod("unreported", "raise SystemExit(3)")
    with pytest.raises(ApiException):
        make_pods(state, core).pod_changed(core, pod, NODE)
    assert core.phases == ["Running"] * 4  # a few tries, not for ever
    wait_for("the exit to be reported", lambda: "Failed" in core.phases)
    assert (run_dir(state, pod) / EXIT_FILE).read_text().strip() == "3"


def test_a_client_error_on_the_running_write_is_not_retried(state: Path, fast: None) -> None:
    core = FakeCore()
    core.running_failures, core.error = 1, ApiException(status=422, reason="Unprocessable Entity")
    with pytest.raises(ApiException):
        make_pods(state, core).pod_changed(core, make_pod("invalid", "pass"), NODE)
    assert core.phases[0] == "Running" and core.phases.count("Running") == 1


def test_a_pod_that_cannot_run_leaves_no_run_directory(state: Path) -> None:
    core = FakeCore()
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    make_pods(state, core).pod_changed(core, make_pod("secretive", "pass", container={"env": env}), NODE)
    assert core.phases == ["Pending"]
    assert latest_run(state, NS, "secretive") is None


def test_logs_of_a_run_without_output_says_the_pod_did_not_start(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (processpods.pod_runs_dir(state, NS, "secretive") / "0000000000001-uid-secr" / "work").mkdir(parents=True)
    assert _logs(argparse.Namespace(pod=f"{NS}/secretive", state_dir=str(state), follow=False)) == 1
    assert "did not start a process" in capsys.readouterr().err


def test_a_pod_seen_by_two_callers_at_once_is_started_once(
    state: Path, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = FakeCore()
    pods = make_pods(state, core)
    pod = make_pod("twice", "pass")
    build_launch, calls = processpods.build_launch, []

    def racing_build_launch(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the other watch sees the same pod while this caller is starting it
            pods.pod_changed(core, pod, NODE)
        return build_launch(*args)

    monkeypatch.setattr(processpods, "build_launch", racing_build_launch)
    pods.pod_changed(core, pod, NODE)
    assert core.phases.count("Running") == 1
    assert len(list(processpods.pod_runs_dir(state, NS, "twice").iterdir())) == 1


def test_concurrent_callers_start_a_pod_once(state: Path, fast: None) -> None:
    core = FakeCore()
    pods = make_pods(state, core)
    pod = make_pod("crowd", "pass")
    threads = [threading.Thread(target=pods.pod_changed, args=(core, pod, NODE)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert core.phases.count("Running") == 1


def test_a_second_delete_with_a_shorter_grace_period_brings_the_kill_forward(state: Path, fast: None) -> None:
    core, timers = FakeCore(), FakeTimers()
    pods = make_pods(state, core, timers)
    pod = make_pod("stubborn", STUBBORN)
    pods.pod_changed(core, pod, NODE)
    wait_ready(state, pod)
    key = f"kill/{pod['metadata']['uid']}"
    pods.pod_changed(core, deleting(pod, 30), NODE)
    assert timers.due[key][0] > 25
    pods.pod_changed(core, deleting(pod, 1), NODE)
    assert timers.due[key][0] <= 1
    pods.pod_changed(core, deleting(pod, 20), NODE)  # a later deadline changes nothing
    assert timers.due[key][0] <= 1
    timers.due[key][1]()  # the grace period ends
    wait_for("the pod to be removed", lambda: core.deleted == ["stubborn"])
    assert (run_dir(state, pod) / EXIT_FILE).read_text().strip() == "137"


def test_a_force_deleted_pods_ip_is_held_until_its_process_has_exited(state: Path, fast: None) -> None:
    core, timers, ips = FakeCore(), FakeTimers(), PodIPAllocator()
    pods = ProcessPods(state, lambda: core, ips, timers)
    pod = make_pod("stubborn", STUBBORN, terminationGracePeriodSeconds=30)
    uid = pod["metadata"]["uid"]
    pods.pod_changed(core, pod, NODE)
    wait_ready(state, pod)
    assert pods.pod_deleted(pod) is True  # still running: the caller keeps the IP
    assert ips.ip_of(uid) is not None
    timers.due[f"kill/{uid}"][1]()
    wait_for("the IP to be released", lambda: ips.ip_of(uid) is None)
    assert pods.pod_deleted(make_pod("done", "pass")) is False  # nothing of it runs
