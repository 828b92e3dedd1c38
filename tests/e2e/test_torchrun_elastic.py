"""The real torchrun job (issue 8, check 7): examples/elastic-ddp through the operator on process nodes.

The workers are real processes (the sandbox's process mode): torchrun's elastic agent, c10d rendezvous
on worker 0, DDP over gloo. Started with 2 workers, scaled to 3, then to 1. Each time torchrun re-forms
the group and train.py resumes from the newest checkpoint, which for the scale-down is the one the
operator's checkpoint handshake asked for; the step counter never goes back past it, and the job ends
Succeeded. Everything is read from the workers' logs (`kubefit-sandbox logs`), as a user would.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from operator_support import Kube, PoolNodes, PrivatePool, wait_for

from kubefit_sandbox.controlplane import Sandbox

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "elastic-ddp"
JOB = "elastic-ddp"
TOTAL_STEPS = 600
# Steps to see at one world size before the next change: proof that the group trained at that size.
STEPS_PER_SIZE = 20
PHASE_TIMEOUT_S = 300.0
LINE = re.compile(
    r"^(?:step=(?P<step>\d+) loss=(?P<loss>[0-9.]+) world_size=(?P<world>\d+) rank=(?P<rank>\d+)"
    r"|resumed step=(?P<resumed>\d+) world_size=(?P<resumed_world>\d+) rank=\d+"
    r"|checkpoint saved step=(?P<saved>\d+) reason=(?P<reason>[\w-]+)"
    r"|checkpoint acknowledged step=(?P<acked>\d+))$"
)


def _sandbox_manifest() -> Callable[..., dict[str, Any]]:
    spec = importlib.util.spec_from_file_location(
        "elastic_ddp_sandbox_manifest", EXAMPLE / "sandbox_manifest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sandbox_manifest


@dataclass(frozen=True)
class Event:
    kind: str  # step | resumed | saved | acked
    step: int
    world: int = 0
    loss: float = 0.0
    reason: str = ""


def parse_log(text: str) -> list[Event]:
    events = []
    for line in text.splitlines():
        match = LINE.match(line.strip())
        if match is None:
            continue
        if match["step"]:
            events.append(Event("step", int(match["step"]), int(match["world"]), float(match["loss"])))
        elif match["resumed"]:
            events.append(Event("resumed", int(match["resumed"]), int(match["resumed_world"])))
        elif match["saved"]:
            events.append(Event("saved", int(match["saved"]), reason=match["reason"]))
        else:
            events.append(Event("acked", int(match["acked"])))
    return events


def worker_log(sandbox: Sandbox, namespace: str, index: int) -> str:
    command = [sys.executable, "-m", "kubefit_sandbox.cli", "--state-dir", str(sandbox.state_dir), "logs",
               f"{namespace}/{JOB}-worker-{index}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return result.stdout if result.returncode == 0 else ""


def wait_trained_at(sandbox: Sandbox, namespace: str, world: int, after: int = 0) -> list[Event]:
    """Worker 0's events once it has logged STEPS_PER_SIZE steps at `world` after event number `after`."""

    def probe() -> list[Event] | None:
        events = parse_log(worker_log(sandbox, namespace, 0))
        steps = [e for e in events[after:] if e.kind == "step" and e.world == world]
        return events if len(steps) >= STEPS_PER_SIZE else None

    return wait_for(
        f"worker 0 to train {STEPS_PER_SIZE} steps with world_size={world}", probe, PHASE_TIMEOUT_S, 1.0
    )


def check_resumptions(events: list[Event]) -> None:
    """Every (re)start resumes from the newest checkpoint saved before it, and counts on from there."""
    saved = 0
    for index, event in enumerate(events):
        if event.kind == "saved":
            assert event.step >= saved, f"a checkpoint went back: {event} after step {saved}"
            saved = event.step
        elif event.kind == "resumed":
            assert event.step == saved, f"resumed at {event.step}, but the newest checkpoint was {saved}"
            following = next((e for e in events[index + 1 :] if e.kind == "step"), None)
            assert following is None or following.step == event.step + 1, (event, following)


def free_port() -> int:
    """A port free on this machine now: worker 0's torchrun agent hosts the rendezvous store on it. Its
    TCPStore listens on every address of the machine, and the sandbox's worker pods are processes of this
    machine, so the default 29500 is taken when another elastic job (a `make demo` beside) hosts there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker0_uid(kube: Kube, namespace: str) -> str:
    found = kube.get("pod", f"{JOB}-worker-0", namespace)
    return found["metadata"]["uid"] if found else ""


def scale(kube: Kube, namespace: str, replicas: int) -> None:
    kube.run("scale", "trainingjob", JOB, "-n", namespace, f"--replicas={replicas}")


def test_torchrun_job_scales_2_3_1_resuming_from_checkpoints_and_succeeds(
    sandbox: Sandbox, kube: Kube, operator: Any, namespace: str, add_pool: Callable[..., PrivatePool],
    tmp_path: Path,
) -> None:  # fmt: skip
    pool = add_pool(PoolNodes("nvidia-l4", nodes=1, per_node=4, processes=True))
    # The template's PET_RDZV_ENDPOINT wins over the operator's (docs/operator.md); $(MASTER_ADDR), defined
    # before it, is worker 0's name, and PET_RDZV_CONF's is_host stays the operator's (worker 0 only).
    rendezvous = {"PET_RDZV_ENDPOINT": f"$(MASTER_ADDR):{free_port()}"}
    manifest = _sandbox_manifest()(
        tmp_path / "checkpoints", {"TOTAL_STEPS": str(TOTAL_STEPS), "STEP_SECONDS": "0.2", **rendezvous}
    )
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["resources"]["accelerator"] = "nvidia-l4"
    kube.apply(pool.pin(manifest))

    at_two = wait_trained_at(sandbox, namespace, world=2)
    rendezvous_host = worker0_uid(kube, namespace)
    scale(kube, namespace, 3)
    at_three = wait_trained_at(sandbox, namespace, world=3, after=len(at_two))
    # torchrun re-formed the group in the running pods: worker 0 (the rendezvous host) was not replaced.
    assert worker0_uid(kube, namespace) == rendezvous_host, "worker 0 was replaced while scaling 2 -> 3"
    scale(kube, namespace, 1)
    at_one = wait_trained_at(sandbox, namespace, world=1, after=len(at_three))
    assert worker0_uid(kube, namespace) == rendezvous_host, "worker 0 was replaced while scaling 3 -> 1"

    # The scale-down was preceded by the handshake: a checkpoint saved for it and acknowledged, and the
    # single worker resumed from it or from a later one (never from before it).
    down = at_one[len(at_three) :]
    handshake = [e.step for e in down if e.kind == "acked"]
    resumed_alone = next(e for e in down if e.kind == "resumed" and e.world == 1)
    assert handshake, f"no acknowledged checkpoint before the scale to 1: {down[:40]}"
    assert resumed_alone.step >= handshake[0]
    assert any(e.kind == "saved" and e.reason == "handshake" for e in down)
    for index in (1, 2):  # the removed workers acknowledged too
        assert "checkpoint acknowledged" in worker_log(sandbox, namespace, index), f"worker {index}"

    def succeeded() -> bool:
        return kube.job_status(namespace, JOB).get("phase") == "Succeeded"

    wait_for("the job to succeed", succeeded, PHASE_TIMEOUT_S, 1.0)
    events = parse_log(worker_log(sandbox, namespace, 0))
    check_resumptions(events)
    steps = [e for e in events if e.kind == "step"]
    assert {e.world for e in steps} >= {1, 2, 3}
    assert steps[-1].step == TOTAL_STEPS and steps[-1].world == 1
    assert [e for e in events if e.kind == "saved"][-1].reason == "done"
    first_losses = [e.loss for e in steps[:10]]
    last_losses = [e.loss for e in steps[-10:]]
    assert sum(last_losses) < 0.5 * sum(first_losses), (first_losses, last_losses)  # it learned
