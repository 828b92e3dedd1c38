"""The node agent's pod list and watch (NodeAgent._list_and_watch_pods) with a fake API and real processes."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubefit_sandbox import nodeagent, processpods
from kubefit_sandbox.nodeagent import ManagedNode, NodeAgent
from kubefit_sandbox.processpods import EXIT_FILE, LOG_FILE, latest_run

NS = "team-a"
SIMULATED = ManagedNode("sim-0", "node-uid-1", "10.240.0.8", "10.1.0.0/24")
PROCESSES = ManagedNode("cpu-0", "node-uid-2", "10.240.0.7", "10.2.0.0/24", processes=True)


def script(ignore_sigterm: bool) -> str:
    """Records its PID for the clean-up, says when it is ready, ends by itself in 20 s."""
    return (
        "import os, signal, time\n"
        + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_sigterm else "")
        + "open('pid', 'w').write(str(os.getpid()))\n"
        "print('ready', flush=True)\n"
        "time.sleep(20)\n"
    )


def make_pod(name: str, node: ManagedNode, command: list[str] | None = None) -> dict[str, Any]:
    container = {"name": "main", "command": command or ["true"]}
    return {
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": {"containers": [container], "nodeName": node.name, "terminationGracePeriodSeconds": 30},
        "status": {"phase": "Pending"},
    }


class Listing:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.data = json.dumps({"metadata": {"resourceVersion": "5"}, "items": pods}).encode()


class FakeCore:
    def __init__(self) -> None:
        self.listed: list[dict[str, Any]] = []

    def list_pod_for_all_namespaces(self, **_: Any) -> Listing:
        return Listing(self.listed)

    def patch_namespaced_pod_status(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        pass

    def delete_namespaced_pod(self, name: str, namespace: str, body: Any = None) -> None:
        pass


def wait_for(what: str, condition: Callable[[], object], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NodeAgent]:
    monkeypatch.setattr(processpods, "STOP_ALL_GRACE_S", 0.2)
    agent = NodeAgent(tmp_path / "kubeconfig", state_dir=tmp_path)
    agent._nodes = {SIMULATED.name: SIMULATED, PROCESSES.name: PROCESSES}
    yield agent
    for pid_file in tmp_path.glob("pods/*/*/*/work/pid"):  # what a failed test left running
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def list_and_watch(
    agent: NodeAgent, core: FakeCore, monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]]
) -> None:
    """One list (core.listed), then the watch's events, then the watch ends and the loop stops."""

    def watch_events(*_: Any, **__: Any) -> Iterator[dict[str, Any]]:
        yield from events
        agent.stop_event.set()

    monkeypatch.setattr(nodeagent, "watch_events", watch_events)
    agent.stop_event.clear()
    agent._processes._new_core = lambda: core  # type: ignore[method-assign]
    agent._list_and_watch_pods(core)


def wait_ready(state: Path, name: str) -> Path:
    def run() -> Path | None:
        found = latest_run(state, NS, name)
        return found if found and b"ready" in (found / LOG_FILE).read_bytes() else None

    wait_for("the process to start", run)
    found = run()
    assert found is not None
    return found


def test_a_relist_handles_the_pods_missing_from_it_as_deleted(
    agent: NodeAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = FakeCore()
    simulated = make_pod("simulated", SIMULATED)
    process = make_pod("process", PROCESSES, [sys.executable, "-c", script(ignore_sigterm=False)])
    core.listed = [simulated, process]
    list_and_watch(agent, core, monkeypatch, [])
    assert agent._ips.ip_of("uid-simulated") is not None
    run = wait_ready(tmp_path, "process")
    # Both deleted while the watch was broken: the next list does not have them.
    core.listed = []
    list_and_watch(agent, core, monkeypatch, [])
    assert agent._ips.ip_of("uid-simulated") is None
    wait_for("the process to get SIGTERM", lambda: (run / EXIT_FILE).exists())
    assert (run / EXIT_FILE).read_text().strip() == "143"
    wait_for("the process pod's IP to be released", lambda: agent._ips.ip_of("uid-process") is None)


def test_a_force_deleted_process_pod_keeps_its_ip_until_its_process_has_exited(
    agent: NodeAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = FakeCore()
    pod = make_pod("stubborn", PROCESSES, [sys.executable, "-c", script(ignore_sigterm=True)])
    core.listed = [pod]
    list_and_watch(agent, core, monkeypatch, [])
    wait_ready(tmp_path, "stubborn")
    ip = agent._ips.ip_of("uid-stubborn")
    assert ip is not None
    list_and_watch(agent, core, monkeypatch, [{"type": "DELETED", "object": pod}])
    # In its grace period (SIGTERM ignored): a replacement of the same name must not get its address.
    assert agent._ips.ip_of("uid-stubborn") == ip
    agent._processes.stop_all()
    wait_for("the IP to be released", lambda: agent._ips.ip_of("uid-stubborn") is None)


def test_a_deleted_simulated_pods_ip_is_released_at_once(
    agent: NodeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = FakeCore()
    pod = make_pod("simulated", SIMULATED)
    core.listed = [pod]
    list_and_watch(agent, core, monkeypatch, [{"type": "DELETED", "object": pod}])
    assert agent._ips.ip_of("uid-simulated") is None
