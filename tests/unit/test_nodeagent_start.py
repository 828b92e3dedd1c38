"""start_agent returns only once the agent process reports ready, and notices one that dies first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kubefit_sandbox import nodeagent
from kubefit_sandbox.errors import NodeAgentError


def _process(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", script])


def test_ready_when_the_file_carries_the_process_pid(tmp_path: Path) -> None:
    ready = tmp_path / "agent.ready"
    process = _process(
        f"import os, time; open({str(ready)!r}, 'w').write(f'{{os.getpid()}}\\n'); time.sleep(5)"
    )
    try:
        assert nodeagent._wait_until_ready(process, ready) is True
    finally:
        process.kill()
        process.wait()


def test_a_stale_ready_file_of_another_pid_is_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready = tmp_path / "agent.ready"
    ready.write_text("1\n")  # left by an earlier agent
    monkeypatch.setattr(nodeagent, "AGENT_READY_TIMEOUT_S", 0.5)
    process = _process("import time; time.sleep(5)")
    try:
        with pytest.raises(NodeAgentError, match="not ready"):
            nodeagent._wait_until_ready(process, ready)
    finally:
        process.kill()
        process.wait()


def test_an_agent_that_exits_first_is_not_ready(tmp_path: Path) -> None:
    process = _process("raise SystemExit(3)")
    assert nodeagent._wait_until_ready(process, tmp_path / "agent.ready") is False
    assert process.returncode == 3


# Looks like an agent (the module in its cmdline) and holds the lock file it is given, as the agent does.
HOLDS_LOCK = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "time.sleep(20)\n"
)


def test_a_stale_pid_of_another_sandboxs_agent_is_not_this_sandboxs_agent(tmp_path: Path) -> None:
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    command = [
        sys.executable,
        "-c",
        HOLDS_LOCK,
        str(other / nodeagent.AGENT_LOCK_FILE),
        nodeagent.AGENT_MODULE,
    ]
    agent = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        assert agent.stdout is not None and agent.stdout.readline() == b"locked\n"
        for name in (nodeagent.AGENT_PID_FILE, nodeagent.AGENT_LOCK_FILE):
            (mine / name).write_text(f"{agent.pid}\n")  # left from an agent of this sandbox that is gone
        (other / nodeagent.AGENT_LOCK_FILE).write_text(f"{agent.pid}\n")
        assert nodeagent.running_agent_pid(mine) is None
        assert nodeagent.running_agent_pid(other) == agent.pid
    finally:
        agent.kill()
        agent.wait()
