"""Two operator replicas with leader election (`kubefit run --leader-election`) on the real control plane.

The leader is killed with SIGKILL (no chance to release its Lease): the standby must take over within
the bound leader election states (LeaseTimings.takeover_bound: lease + 2 x retry period, 19 s with the
defaults, plus the time of a few API calls) and reconcile a job created while nobody led, leaving the
first job's workers alone. Then a third replica stands by and the new leader is stopped with SIGTERM: it
releases the Lease, and the third leads within a few retry periods instead of a whole lease.
Only one replica reconciles at a time: a standby's log shows no handler until the line saying it leads,
and the killed leader's log none after it died.

The replicas watch this module's namespaces only; the module's shared `operator` fixture is not used
(a third operator without leader election would reconcile the same jobs).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_support import (
    Kube,
    OperatorProcess,
    PrivatePool,
    job_manifest,
    running_names,
    wait_for,
)

from kubefit.controller.leader import LeaseTimings
from kubefit_sandbox.controlplane import Sandbox

pytestmark = pytest.mark.e2e

LEASE_NAMESPACE = "default"
TIMINGS = LeaseTimings()  # the defaults `kubefit run --leader-election` uses: 15 s lease, 2 s retry
# API calls and process start on a loaded 2-core machine, on top of the bound leader election states.
SLACK_S = 10.0
HANDLER_LINE = re.compile(r"^\[(\S+ \S+)\] kopf\.objects .*Handler '")


class Replica(OperatorProcess):
    """`kubefit run --leader-election`: started, it answers /healthz, leading or not. `pod_env` names a pod
    that stands for its own (POD_NAME, POD_NAMESPACE), which it labels with its role."""

    pod_env: dict[str, str] = {}

    def start(self, timeout: float = 60.0) -> None:
        command = [
            sys.executable, "-m", "kubefit.cli.main", "run", "--namespace", self.namespace_pattern,
            "--metrics-port", "0", "--liveness-port", "0", "--checkpoint-port", "0",
            "--bind-address", "127.0.0.1", "--resync-seconds", "10", "--verbose", *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1", **self.pod_env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.liveness_url = wait_for(
            "the replica's liveness address", lambda: self._logged("liveness on (\\S+)"), timeout
        )
        wait_for("the replica's /healthz", self.healthy, timeout)

    def identity(self) -> str | None:
        return self._logged(r"(?:leading|standby) as (\S+)")

    def leading(self) -> bool:
        return self._logged(r"leading as (\S+)") is not None

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def leader_gauge(self, name: str = "kubefit_leader") -> float | None:
        """kubefit_leader (KubefitOperatorAbsent's series), or another gauge `name`, from the replica's
        /metrics."""
        url = self._logged(r"metrics on (\S+)")
        assert url is not None
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    def handler_lines_before(self, marker: str) -> list[str]:
        """kopf handler lines logged before the first line containing `marker` (all if it never came)."""
        lines = self.text().splitlines()
        end = next((i for i, line in enumerate(lines) if marker in line), len(lines))
        return [line for line in lines[:end] if HANDLER_LINE.match(line)]


def role_of(kube: Kube, pod: str) -> str | None:
    found = kube.get("pod", pod, LEASE_NAMESPACE) or {}
    return ((found.get("metadata") or {}).get("labels") or {}).get("kubefit.dev/role")


def stand_in_pod(kube: Kube, name: str) -> dict[str, str]:
    """A pod that stands for a replica's own (it never runs: no node has its label), and the environment
    the chart gives the operator container about it."""
    kube.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
        "spec": {"nodeSelector": {"e2e.kubefit.dev/never": "true"},
                 "containers": [{"name": "operator", "image": "kubefit:stand-in"}]},
    })  # fmt: skip
    return {"POD_NAME": name, "POD_NAMESPACE": LEASE_NAMESPACE}


def lease(kube: Kube, name: str) -> dict:
    return (kube.get("lease", name, LEASE_NAMESPACE) or {}).get("spec") or {}


@pytest.fixture
def replicas(
    sandbox: Sandbox, kube: Kube, node_agent: int, namespace_prefix: str, tmp_path: Path
) -> Iterator[tuple[list[Replica], str, str]]:
    """A factory's worth of replicas sharing one fresh Lease, and a namespace they watch."""
    lease_name = f"kubefit-e2e-{uuid.uuid4().hex[:6]}"
    namespace = f"{namespace_prefix}-{uuid.uuid4().hex[:6]}"
    kube.run("create", "namespace", namespace)
    wait_for(
        "the default ServiceAccount",
        lambda: kube.run("get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0,
    )
    started: list[Replica] = []
    yield started, lease_name, namespace
    kube.run("delete", "trainingjobs", "--all", "-n", namespace, "--wait=false", check=False)
    if any(replica.process and replica.process.poll() is None and replica.leading() for replica in started):
        wait_for("the jobs' finalizers removed", lambda: not kube.items("trainingjobs", namespace), 120, 1)
    for replica in started:
        replica.stop()
        if replica.pod_env:
            kube.run(
                "delete",
                "pod",
                replica.pod_env["POD_NAME"],
                "-n",
                LEASE_NAMESPACE,
                "--wait=false",
                check=False,
            )
    kube.run("delete", "namespace", namespace, "--wait=false", check=False)
    kube.run("delete", "lease", lease_name, "-n", LEASE_NAMESPACE, "--ignore-not-found", check=False)


def _replica(
    sandbox: Sandbox, started: list[Replica], lease_name: str, namespace_prefix: str, log_dir: Path
) -> Replica:
    args = ("--leader-election", f"--leader-election-lease-name={lease_name}",
            f"--leader-election-namespace={LEASE_NAMESPACE}")  # fmt: skip
    replica = Replica(
        sandbox.kubeconfig_path, f"{namespace_prefix}-*", log_dir / f"replica-{len(started)}.log", args
    )
    replica.pod_env = stand_in_pod(Kube(sandbox), f"{lease_name}-{len(started)}")
    started.append(replica)
    replica.start()
    return replica


def _job(name: str, namespace: str, pool: PrivatePool) -> dict:
    """Two one-device workers, elastic up to 4, removing workers without a checkpoint wait."""
    return job_manifest(
        name,
        namespace,
        pool=pool,
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
        elastic={"enabled": True, "checkpointGracePeriodSeconds": 0},
    )


def _uids(kube: Kube, namespace: str, job: str) -> dict[str, str]:
    return {pod["metadata"]["name"]: pod["metadata"]["uid"] for pod in kube.workers(namespace, job)}


def _two_running(kube: Kube, namespace: str, job: str) -> bool:
    return len(running_names(kube.workers(namespace, job))) == 2


def test_the_standby_takes_over_a_killed_leader_in_the_stated_time_and_a_stopped_one_at_once(
    sandbox: Sandbox,
    kube: Kube,
    replicas: tuple[list[Replica], str, str],
    namespace_prefix: str,
    pool: PrivatePool,
    tmp_path: Path,
) -> None:
    started, lease_name, namespace = replicas
    first = _replica(sandbox, started, lease_name, namespace_prefix, tmp_path)
    wait_for("the first replica leading", first.leading, 60)
    second = _replica(sandbox, started, lease_name, namespace_prefix, tmp_path)
    assert "standby as" in second.text() and not second.leading()
    # The chart's checkpoints Service selects kubefit.dev/role=leader: each replica labels its own pod.
    assert (role_of(kube, f"{lease_name}-0"), role_of(kube, f"{lease_name}-1")) == ("leader", "standby")

    kube.apply(_job("before", namespace, pool))
    wait_for("the first job's 2 workers", lambda: _two_running(kube, namespace, "before"), 120, 1)
    before = _uids(kube, namespace, "before")
    assert lease(kube, lease_name)["holderIdentity"] == first.identity()
    assert second.handler_lines_before("leading as") == []  # the standby reconciled nothing
    time.sleep(2 * TIMINGS.retry_period)  # the standby has seen a renewal
    assert not second.leading()  # while the leader lives and renews, the standby stays one
    assert (first.leader_gauge(), second.leader_gauge()) == (1.0, 0.0)
    assert second.leader_gauge("kubefit_leader_start_time_seconds") == 0.0

    first.kill()
    killed = time.monotonic()
    kube.apply(_job("during", namespace, pool))  # created while nobody leads
    wait_for("the standby leading", second.leading, TIMINGS.takeover_bound + SLACK_S + 30, 0.1)
    takeover = time.monotonic() - killed
    print(f"\ntakeover after SIGKILL: {takeover:.1f} s (bound {TIMINGS.takeover_bound:.0f} s + API calls)")
    assert takeover <= TIMINGS.takeover_bound + SLACK_S
    wait_for("the new job's 2 workers", lambda: _two_running(kube, namespace, "during"), 120, 1)
    reconciled = time.monotonic() - killed
    print(f"new job's workers running {reconciled:.1f} s after the kill")
    spec = lease(kube, lease_name)
    assert spec["holderIdentity"] == second.identity() and spec["leaseTransitions"] == 1, spec
    assert _uids(kube, namespace, "before") == before  # the first job's workers were left alone
    assert second.handler_lines_before("leading as") == []
    assert second.leader_gauge() == 1.0
    # The per-job alerts bridge a gap in a job's series while the leader is new (docs/alerts.md).
    leads_since = second.leader_gauge("kubefit_leader_start_time_seconds")
    assert leads_since is not None and time.time() - 120 < leads_since <= time.time(), leads_since
    assert role_of(kube, f"{lease_name}-1") == "leader"

    # A stopped leader releases the Lease: a standby leads within a few retry periods, not a lease.
    third = _replica(sandbox, started, lease_name, namespace_prefix, tmp_path)
    assert not third.leading()
    time.sleep(2 * TIMINGS.retry_period)
    stopped = time.monotonic()  # from the signal: kopf waited 5 s more for a task of its own to end
    second.stop()
    assert (exited := time.monotonic() - stopped) < 5.0, second.log_tail()
    assert second.process is not None and second.process.returncode == 0, second.log_tail()
    assert role_of(kube, f"{lease_name}-2") == "standby"
    wait_for("the third replica leading", third.leading, TIMINGS.lease_seconds, 0.1)
    assert role_of(kube, f"{lease_name}-2") == "leader"
    handover = time.monotonic() - stopped
    print(f"SIGTERM to exit: {exited:.1f} s; handover after SIGTERM: {handover:.1f} s")
    assert handover < TIMINGS.lease_seconds - TIMINGS.retry_period  # sooner than an expiry could give
    kube.run("scale", "tj", "during", "-n", namespace, "--replicas=3")
    wait_for("the third replica scaling the job to 3", lambda: len(running_names(kube.workers(namespace, "during"))) == 3, 120, 1)  # fmt: skip
    assert third.handler_lines_before("leading as") == []
    assert (
        json.loads(kube.run("get", "lease", lease_name, "-n", LEASE_NAMESPACE, "-o", "json").stdout)["spec"][
            "holderIdentity"
        ]
        == third.identity()
    )
