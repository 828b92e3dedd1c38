"""The node agent's heartbeat interval is configurable, and a round of many nodes is spread over it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from kubefit_sandbox import nodeagent
from kubefit_sandbox.nodeagent import (
    HEARTBEAT_INTERVAL_S,
    ManagedNode,
    NodeAgent,
    agent_command,
    heartbeat_batches,
)


def test_a_round_is_split_into_even_batches_spread_over_the_interval() -> None:
    names = [f"n{index}" for index in range(120)]
    batches, spacing = heartbeat_batches(names, 20.0, batch_nodes=50)
    assert [len(batch) for batch in batches] == [40, 40, 40]
    assert [name for batch in batches for name in batch] == names
    assert spacing == pytest.approx(20.0 / 3)


def test_a_small_round_is_one_batch_and_an_empty_one_waits_the_interval() -> None:
    assert heartbeat_batches(["a", "b"], 20.0) == ([["a", "b"]], 20.0)
    assert heartbeat_batches([], 20.0) == ([], 20.0)
    batches, spacing = heartbeat_batches([str(index) for index in range(5000)], 200.0)
    assert len(batches) == 100 and {len(batch) for batch in batches} == {50} and spacing == 2.0
    with pytest.raises(ValueError):
        heartbeat_batches(["a"], 20.0, batch_nodes=0)


def test_the_default_interval_stays_the_kubelets_20_seconds(tmp_path: Path) -> None:
    assert HEARTBEAT_INTERVAL_S == 20.0
    assert NodeAgent(tmp_path / "kubeconfig").heartbeat_interval_s == 20.0
    assert "--heartbeat-seconds" not in agent_command(tmp_path, tmp_path / "kubeconfig")


def test_start_agent_passes_the_interval_to_the_agent_process(tmp_path: Path) -> None:
    command = agent_command(tmp_path, tmp_path / "kubeconfig", heartbeat_interval_s=200)
    assert command[:3] == [sys.executable, "-m", nodeagent.AGENT_MODULE]
    assert command[command.index("--heartbeat-seconds") + 1] == "200.0"
    with pytest.raises(ValueError, match="positive"):
        agent_command(tmp_path, tmp_path / "kubeconfig", heartbeat_interval_s=0)


def test_start_agent_spawns_with_its_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[list[str]] = []

    class Process:
        pid, returncode = 12345, None

        def __init__(self, command: list[str], **_: Any) -> None:
            spawned.append(command)

    monkeypatch.setattr(nodeagent.subprocess, "Popen", Process)
    monkeypatch.setattr(nodeagent, "_wait_until_ready", lambda process, ready: True)
    monkeypatch.setattr(nodeagent, "new_api_client", lambda kubeconfig: None)  # no API server here
    monkeypatch.setattr(nodeagent, "ensure_pool_nodes", lambda core, config: [])
    sandbox = type("Sandbox", (), {"state_dir": tmp_path, "kubeconfig_path": tmp_path / "kubeconfig"})()
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("pools: []\n")
    assert nodeagent.start_agent(sandbox, cluster, heartbeat_interval_s=45) == 12345
    assert spawned[0][spawned[0].index("--heartbeat-seconds") + 1] == "45.0"


def test_the_agent_process_reads_the_interval_from_its_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    made: dict[str, Any] = {}

    class Agent:
        def __init__(self, kubeconfig: str, **options: Any) -> None:
            made.update(options)

        def run(self) -> None:
            pass

        def stop(self) -> None:
            pass

    monkeypatch.setattr(nodeagent, "NodeAgent", Agent)
    monkeypatch.setattr(nodeagent.signal, "signal", lambda *args: None)
    assert nodeagent.main(["--kubeconfig", "k", "--heartbeat-seconds", "200"]) == 0
    assert made["heartbeat_interval_s"] == 200.0


class Recorder:
    """What the agent's heartbeat writes and schedules, without an API server."""

    def __init__(self, agent: NodeAgent) -> None:
        self.beats: list[str] = []
        self.delays: list[float] = []
        agent._new_core = lambda: object()  # type: ignore[method-assign]
        agent._heartbeat_node = lambda core, node, now: self.beats.append(node.name)  # type: ignore[method-assign]
        agent._timers.schedule = lambda key, delay_s, call: self.delays.append(delay_s)  # type: ignore[method-assign]


def _agent_with_nodes(tmp_path: Path, count: int, interval: float) -> NodeAgent:
    agent = NodeAgent(tmp_path / "kubeconfig", heartbeat_interval_s=interval)
    for index in range(count):
        name = f"h100-{index:05d}"
        agent._nodes[name] = ManagedNode(name, f"uid-{index}", "10.240.0.2", "10.244.0.0/24")
    return agent


def test_each_node_is_heartbeated_once_a_round_one_batch_per_call(tmp_path: Path) -> None:
    agent = _agent_with_nodes(tmp_path, 120, interval=60.0)
    recorder = Recorder(agent)
    for _ in range(3):
        agent._heartbeat()
    assert sorted(recorder.beats) == sorted(agent._nodes) and len(recorder.beats) == 120
    assert len(recorder.delays) == 3 and all(19.0 < delay <= 20.0 for delay in recorder.delays)
    agent._heartbeat()  # a new round
    assert len(recorder.beats) == 160


def test_a_node_gone_since_its_round_began_is_skipped(tmp_path: Path) -> None:
    agent = _agent_with_nodes(tmp_path, 60, interval=20.0)
    recorder = Recorder(agent)
    agent._heartbeat()  # the first batch of 30; the round's second batch is planned already
    del agent._nodes["h100-00059"]
    agent._heartbeat()
    assert len(recorder.beats) == 59 and "h100-00059" not in recorder.beats


def test_an_unreachable_node_gets_no_heartbeat_and_its_pods_no_status(tmp_path: Path) -> None:
    from kubefit_sandbox.nodeagent import UNREACHABLE_ANNOTATION, _managed_node

    manifest = {
        "metadata": {"name": "h100-00000", "uid": "u", "annotations": {UNREACHABLE_ANNOTATION: "true"}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.240.0.2"}]},
    }
    cut = _managed_node(manifest)
    assert cut is not None and cut.unreachable
    agent = _agent_with_nodes(tmp_path, 2, interval=20.0)
    agent._nodes[cut.name] = cut
    recorder = Recorder(agent)
    agent._heartbeat()
    assert recorder.beats == ["h100-00001"]
    simulated: list[str] = []
    agent._simulate = lambda core, pod, node: simulated.append(node.name)  # type: ignore[method-assign]
    for node in ("h100-00000", "h100-00001"):
        agent._pod_changed(
            object(), {"metadata": {"uid": node, "name": "p", "namespace": "n"}, "spec": {"nodeName": node}}
        )
    assert simulated == ["h100-00001"]
