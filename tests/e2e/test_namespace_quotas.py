"""A job over its namespace's ResourceQuota, on the sandbox's real API server and quota controller.

A high-priority gang whose namespace's quota has room for only part of it preempted a lower-priority job of
another namespace, had its creates refused (403 exceeded quota) and gave its grant back: the victim lost its
workers for nothing, and an operator restarted meanwhile did it again. Now the gang waits, Admitted=False
QuotaExceeded naming the quota, taking no room; once the quota is raised it preempts and runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from operator_support import (
    Kube,
    OperatorProcess,
    PrivatePool,
    job_manifest,
    running_names,
    wait_for,
    watched_namespace,
)

from kubefit_sandbox.controlplane import Sandbox

pytestmark = pytest.mark.e2e

GPU = "requests.nvidia.com/gpu"
STABLE_FOR_S = 15.0  # longer than one resync interval of the test operator (10 s)


def gpu_quota(namespace: str, devices: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "team-gpus", "namespace": namespace},
        "spec": {"hard": {GPU: str(devices)}},
    }


ROOM_FOR_ONE = (
    f"ResourceQuota team-gpus has room for 1 of the job's workers ({GPU}: 0 of 8 used by other pods, 8 per "
    "worker); the job needs 2 workers"
)


def quota_condition(kube: Kube, namespace: str, name: str, message_start: str) -> dict | None:
    """The job's Admitted condition while it is QuotaExceeded with a message that starts so (the quota
    controller's count may come between two reads: a job waits for the count first)."""
    admitted = kube.condition(namespace, name, "Admitted") or {}
    message = str(admitted.get("message"))
    held = admitted.get("reason") == "QuotaExceeded" and message.startswith(message_start)
    return admitted if held else None


def workers_by_uid(kube: Kube, namespace: str, job: str) -> dict[str, str]:
    return {pod["metadata"]["name"]: pod["metadata"]["uid"] for pod in kube.workers(namespace, job)}


FIXED = {"enabled": False, "checkpointGracePeriodSeconds": 0}
WHOLE_NODE = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8}


def run_victim(kube: Kube, namespace: str, pool: PrivatePool) -> dict[str, str]:
    """A fixed job of 2 whole-node workers in `namespace`, running: its workers' uids by name."""
    victim = job_manifest(
        "victim", namespace, pool=pool, workers={"replicas": 2}, resources=WHOLE_NODE, elastic=FIXED
    )
    kube.apply(victim)
    wait_for("the victim's 2 workers", lambda: len(running_names(kube.workers(namespace, "victim"))) == 2)
    return workers_by_uid(kube, namespace, "victim")


def urgent_gang(namespace: str, pool: PrivatePool) -> dict:
    """A fixed gang of 2 whole-node workers that may preempt lower-priority jobs."""
    return job_manifest(
        "urgent", namespace, pool=pool, workers={"replicas": 2}, resources=WHOLE_NODE, elastic=FIXED,
        scheduling={"priority": 100, "preemption": "LowerPriority"},
    )  # fmt: skip


@pytest.fixture
def team_namespace(kube: Kube, operator: OperatorProcess, namespace: str) -> Iterator[str]:
    """A second namespace the operator watches (its name matches the operator's pattern, as `namespace`'s)."""
    yield from watched_namespace(kube, operator, f"{namespace}-team")


def test_a_gang_over_its_quota_waits_without_preempting_and_runs_once_the_quota_is_raised(
    kube: Kube, namespace: str, team_namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    running = run_victim(kube, namespace, pool)
    # Another team's namespace, whose quota has room for one worker of 8 devices.
    kube.apply(gpu_quota(team_namespace, 8))
    urgent = urgent_gang(team_namespace, pool)
    kube.apply(urgent)

    def quota_exceeded() -> dict | None:
        return quota_condition(kube, team_namespace, "urgent", "ResourceQuota team-gpus has room for")

    admitted = wait_for("the urgent job held back by the quota", quota_exceeded, timeout=60, interval=1)
    assert admitted["status"] == "False"
    assert admitted["message"] == ROOM_FOR_ONE
    assert kube.job_status(team_namespace, "urgent")["phase"] == "Queued"
    # Neither this operator nor one restarted takes the victim's devices for workers the quota refuses.
    operator.kill()
    operator.start()
    deadline = time.monotonic() + STABLE_FOR_S
    while time.monotonic() < deadline:
        current = workers_by_uid(kube, namespace, "victim")
        assert current == running, "the victim lost its workers to a gang over its quota"
        assert not kube.workers(team_namespace, "urgent")
        time.sleep(1)
    assert not [event for event in kube.events(namespace, "victim") if event["reason"] == "Preempted"]
    assert quota_exceeded() is not None

    # The quota raised: its watch brings the job's decision again; it preempts the victim and runs.
    kube.apply(gpu_quota(team_namespace, 16))
    wait_for(
        "the urgent job running once the quota has room",
        lambda: (
            running_names(kube.workers(team_namespace, "urgent")) == ["urgent-worker-0", "urgent-worker-1"]
        ),
        timeout=90,
        interval=1,
    )
    assert (kube.condition(team_namespace, "urgent", "Admitted") or {}).get("status") == "True"
    assert [event["reason"] for event in kube.events(namespace, "victim")].count("Preempted") == 1


def test_a_gang_applied_before_its_quota_is_counted_waits_for_the_count_and_preempts_no_one(
    kube: Kube,
    namespace: str,
    team_namespace: str,
    operator: OperatorProcess,
    pool: PrivatePool,
    sandbox: Sandbox,
) -> None:
    """A quota kube-controller-manager has not counted yet limits nothing at the API server, and everything
    from its count on. The gang read it as no quota: it preempted the other namespace's job for workers over
    the quota (here the API server admitted them, the quota being uncounted; a moment later it refuses)."""
    running = run_victim(kube, namespace, pool)
    urgent = urgent_gang(team_namespace, pool)
    with sandbox.paused("kube-controller-manager"):  # the quota controller counts nothing meanwhile
        kube.apply(gpu_quota(team_namespace, 8))
        kube.apply(urgent)
        admitted = wait_for(
            "the urgent job waiting for the quota's count",
            lambda: quota_condition(kube, team_namespace, "urgent", "ResourceQuota team-gpus is not counted"),
            timeout=60,
            interval=1,
        )
        assert admitted["status"] == "False"
        assert admitted["message"] == (
            f"ResourceQuota team-gpus is not counted yet ({GPU}: 8; the quota controller has not written its "
            "status): the job waits for the count; the job needs 2 workers"
        )
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            assert workers_by_uid(kube, namespace, "victim") == running, "preempted for an uncounted quota"
            assert not kube.workers(team_namespace, "urgent")
            time.sleep(1)
    # Counted: room for 1 of its 2 workers, said so, and still no one preempted.
    admitted = wait_for(
        "the urgent job held back by the counted quota",
        lambda: quota_condition(kube, team_namespace, "urgent", "ResourceQuota team-gpus has room for"),
        timeout=60,
        interval=1,
    )
    assert admitted["message"] == ROOM_FOR_ONE
    assert workers_by_uid(kube, namespace, "victim") == running
    assert not kube.workers(team_namespace, "urgent")
    assert not [event for event in kube.events(namespace, "victim") if event["reason"] == "Preempted"]


def test_a_gang_its_quota_exempts_preempts_the_job_of_its_namespace_not_another_namespaces(
    kube: Kube, namespace: str, team_namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    """A lower-priority job of the gang's own namespace fills the quota, so preempting it frees the quota
    too and the gang is not held back. Another namespace's job of a still lower priority runs on the other
    node: the pass preempted that one (the lowest priority, and its node fits the gang), the quota then
    refused the gang's worker, and the bystander had lost its workers for nothing."""

    def one_worker(name: str, job_namespace: str, scheduling: dict, grace: int = 0) -> dict:
        return job_manifest(
            name, job_namespace, pool=pool, workers={"replicas": 1}, resources=WHOLE_NODE,
            elastic={**FIXED, "checkpointGracePeriodSeconds": grace}, scheduling=scheduling,
        )  # fmt: skip

    kube.apply(one_worker("bystander", namespace, {"priority": 0}))
    wait_for("the bystander's worker", lambda: running_names(kube.workers(namespace, "bystander")) != [])
    bystander = [pod["metadata"]["uid"] for pod in kube.workers(namespace, "bystander")]
    kube.apply(gpu_quota(team_namespace, 8))
    # Its worker saves for up to 20 s when preempted (no acknowledgement comes here), and the quota charges
    # it until it is gone: the gang's creates are refused meanwhile, and it keeps its grant.
    kube.apply(one_worker("own", team_namespace, {"priority": 10}, grace=20))
    wait_for("the team's own job running", lambda: running_names(kube.workers(team_namespace, "own")) != [])

    kube.apply(one_worker("urgent", team_namespace, {"priority": 100, "preemption": "LowerPriority"}))
    wait_for(
        "the urgent job running in its namespace's quota",
        lambda: running_names(kube.workers(team_namespace, "urgent")) == ["urgent-worker-0"],
        timeout=120,
        interval=1,
    )
    assert [event["reason"] for event in kube.events(team_namespace, "own")].count("Preempted") == 1
    assert [pod["metadata"]["uid"] for pod in kube.workers(namespace, "bystander")] == bystander
    assert "Preempted" not in [event["reason"] for event in kube.events(namespace, "bystander")]


def test_a_job_its_quota_exempts_shrinks_an_elastic_job_of_its_namespace_and_runs_once_it_has_left(
    kube: Kube, team_namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    """The elastic job's worker above its floor saves within its grace, charged by the quota, so the new job's
    create is refused meanwhile. That refusal made its demand take no room at once: the next pass took the
    shrink back (the elastic job grew to 2 again) and the job waited, QuotaExceeded, for good, with devices
    free (two audits, 5 December)."""
    half_node = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 4}
    kube.apply(gpu_quota(team_namespace, 8))
    kube.apply(
        job_manifest(
            "low", team_namespace, pool=pool, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 2},
            resources=half_node, elastic={"enabled": True, "checkpointGracePeriodSeconds": 10},
            scheduling={"priority": 0},
        )
    )  # fmt: skip
    wait_for("low's 2 workers", lambda: len(running_names(kube.workers(team_namespace, "low"))) == 2)
    kube.apply(
        job_manifest(
            "high", team_namespace, pool=pool, workers={"replicas": 1}, resources=half_node, elastic=FIXED,
            scheduling={"priority": 10},
        )
    )  # fmt: skip
    wait_for(
        "the high-priority job running in its namespace's quota",
        lambda: running_names(kube.workers(team_namespace, "high")) == ["high-worker-0"],
        timeout=90,
        interval=1,
    )
    assert running_names(kube.workers(team_namespace, "low")) == ["low-worker-0"]
