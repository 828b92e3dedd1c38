"""A job's life after it starts, on the real control plane: failures, completion, suspension, TTL.

The node agent ends a pod when it carries `sandbox.kubefit.dev/exit: "<code>"` (0 -> Succeeded, else
Failed), which is how these tests make workers fail or finish. Every job runs on the test's own private
pool (operator_support `pool`), and its pods stop at once when deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from operator_support import (
    JOB_LABEL,
    Kube,
    OperatorProcess,
    PoolNodes,
    PrivatePool,
    job_manifest,
    running_names,
    wait_for,
)

pytestmark = pytest.mark.e2e

SMALL = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1}
EXIT = "sandbox.kubefit.dev/exit"
POKE = "e2e.kubefit.dev/poke"


def small_job(name: str, namespace: str, pool: PrivatePool, replicas: int, **spec: Any) -> dict[str, Any]:
    workers = {"replicas": replicas, "minReplicas": replicas, "maxReplicas": replicas}
    return job_manifest(name, namespace, pool=pool, resources=SMALL, workers=workers, **spec)


def annotate_pod(kube: Kube, namespace: str, pod: str, key: str, value: str) -> None:
    kube.run("annotate", "pod", pod, "-n", namespace, f"{key}={value}", "--overwrite")


def exit_worker(kube: Kube, namespace: str, pod: str, code: int) -> None:
    annotate_pod(kube, namespace, pod, EXIT, str(code))


def pods_by_name(kube: Kube, namespace: str, job: str) -> dict[str, dict[str, Any]]:
    return {pod["metadata"]["name"]: pod for pod in kube.workers(namespace, job)}


def start(kube: Kube, namespace: str, manifest: dict[str, Any], replicas: int) -> dict[str, str]:
    """Applies the job, waits for all its workers to run; returns their uids by name."""
    name = manifest["metadata"]["name"]
    kube.apply(manifest)
    wait_for(
        f"{replicas} running workers of {name}",
        lambda: len(running_names(kube.workers(namespace, name))) == replicas,
    )
    return {pod: body["metadata"]["uid"] for pod, body in pods_by_name(kube, namespace, name).items()}


def phase(kube: Kube, namespace: str, job: str) -> str | None:
    return kube.job_status(namespace, job).get("phase")


def event_reasons(kube: Kube, namespace: str, job: str) -> list[str]:
    return [event["reason"] for event in kube.events(namespace, job)]


def wait_for_events(kube: Kube, namespace: str, job: str, *reasons: str) -> None:
    """kopf posts an event after the status write that the test saw: waited for, not read once."""
    wait_for(f"events {', '.join(reasons)}", lambda: set(reasons) <= set(event_reasons(kube, namespace, job)))


def completed_reconciles(operator: OperatorProcess) -> int:
    """Reconciles of a job's update the operator has finished so far (kubefit_reconcile_total counts each
    as it ends). Not the resync's or a pod event's, which would not prove the poke's reconcile has run."""
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("kubefit_reconcile_total{") and 'trigger="update"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def reconciled_after_poke(kube: Kube, operator: OperatorProcess, namespace: str, job: str) -> None:
    """Makes the operator reconcile `job` once more, and waits until a reconcile has finished.

    A new annotation on the TrainingJob is an update, which reconciles it (or, if a reconcile is under
    way, makes it go round again). Whatever the operator would still do to the job, e.g. recreate a
    worker, it has done when this returns: the negative checks after it need no guessed sleep.
    """
    before = completed_reconciles(operator)
    kube.run("annotate", "trainingjob", job, "-n", namespace, f"{POKE}={time.monotonic_ns()}", "--overwrite")
    wait_for(
        f"a reconcile after an update of {job}", lambda: completed_reconciles(operator) > before, timeout=20
    )


def delete_pods(kube: Kube, namespace: str, *names: str) -> None:
    """Deletes finished workers, as someone done with their logs would, and waits until they are gone."""
    kube.run("delete", "pod", *names, "-n", namespace, "--wait=true", "--timeout=30s")


# ---------------------------------------------------------------------------------------------- failures


def replaced_group(kube: Kube, namespace: str, job: str, uids: dict[str, str]) -> dict[str, str]:
    """Waits until every worker in `uids` runs again as a new pod and the job is Running; their new uids."""
    pods = wait_for(
        f"every worker of {job} replaced by a new running pod",
        lambda: (
            (pods := pods_by_name(kube, namespace, job))
            and set(running_names(list(pods.values()))) == set(uids)
            and all(pods[name]["metadata"]["uid"] != uid for name, uid in uids.items())
            and pods
        ),
        timeout=60,
    )
    for pod in pods.values():
        assert EXIT not in (pod["metadata"].get("annotations") or {})
        assert pod["metadata"]["labels"][JOB_LABEL] == job
    wait_for(f"{job} Running again", lambda: phase(kube, namespace, job) == "Running")
    return {name: pod["metadata"]["uid"] for name, pod in pods.items()}


def test_a_failed_worker_restarts_its_group_until_the_restart_limit_fails_the_job(
    kube: Kube, namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    """A job that is not elastic is one group (static rendezvous, WORLD_SIZE 2): a failed worker restarts
    every worker, and workers failing together (one rank's crash taking the other down) are one restart."""
    job = "flaky"
    uids = start(
        kube, namespace, small_job(job, namespace, pool, 2, runPolicy={"maxRestarts": 2}), replicas=2
    )
    worker0, worker1 = f"{job}-worker-0", f"{job}-worker-1"

    # First incident: both workers exit 1 at once. Both come back as new pods; one restart, told.
    kube.run("annotate", "pod", worker0, worker1, "-n", namespace, f"{EXIT}=1", "--overwrite")
    uids = replaced_group(kube, namespace, job, uids)
    assert kube.job_status(namespace, job).get("restarts") == 1
    failed_events = wait_for(
        "a WorkerFailed event",
        lambda: [e for e in kube.events(namespace, job) if e["reason"] == "WorkerFailed"],
    )
    assert [event["type"] for event in failed_events] == ["Warning"]
    assert "(restart 1 of at most 2)" in failed_events[0]["message"]

    # Second incident: worker-0 alone fails, and worker-1, still running, restarts with it.
    exit_worker(kube, namespace, worker0, 1)
    uids = replaced_group(kube, namespace, job, uids)
    assert kube.job_status(namespace, job).get("restarts") == 2

    # Third incident: one more than maxRestarts allows.
    exit_worker(kube, namespace, worker0, 1)
    failed = wait_for(
        "condition Failed=True",
        lambda: (c := kube.condition(namespace, job, "Failed")) and c["status"] == "True" and c,
        timeout=30,
    )
    assert failed["reason"] == "RestartLimitExceeded"
    status = kube.job_status(namespace, job)
    assert status["phase"] == "Failed"
    assert status["restarts"] == 2
    assert status["completionTime"]
    wait_for_events(kube, namespace, job, "RestartLimitExceeded")

    # The running worker is stopped to free its GPU; the failed one is kept for its logs.
    wait_for("worker-1 deleted", lambda: worker1 not in pods_by_name(kube, namespace, job), timeout=30)
    reconciled_after_poke(kube, operator, namespace, job)
    pods = pods_by_name(kube, namespace, job)
    assert list(pods) == [worker0], "a worker was recreated after the job failed"
    assert pods[worker0]["status"]["phase"] == "Failed"

    # Nothing is started again, not even once the failed worker is cleaned up (the restart count no
    # longer holds the job back: only its Failed condition does).
    delete_pods(kube, namespace, worker0)
    reconciled_after_poke(kube, operator, namespace, job)
    assert not kube.workers(namespace, job), "a worker was recreated after the job failed"
    status = kube.job_status(namespace, job)
    assert (status["phase"], status["restarts"]) == ("Failed", 2)


def test_elastic_pytorch_workers_failing_one_after_another_are_one_restart(
    kube: Kube, namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    """An agent that gives up closes torchrun's rendezvous, and the rest of the group fails after it. Four
    workers failing a few seconds apart were four restarts: at maxRestarts 1 the job failed at once."""
    job = "cascade"
    elastic = {"enabled": True, "checkpointGracePeriodSeconds": 0}
    manifest = job_manifest(
        job,
        namespace,
        pool=pool,
        resources=SMALL,
        workers={"replicas": 4, "minReplicas": 1, "maxReplicas": 4},
        elastic=elastic,
        runPolicy={"maxRestarts": 1},
    )
    uids = start(kube, namespace, manifest, replicas=4)
    for name in sorted(uids, reverse=True):  # worker 3 first, the store host last
        exit_worker(kube, namespace, name, 1)
        time.sleep(1)
    replaced_group(kube, namespace, job, uids)
    status = kube.job_status(namespace, job)
    assert (status["phase"], status["restarts"]) == ("Running", 1), status


# ---------------------------------------------------------------------------------------------- success


def test_all_workers_exiting_zero_succeeds_the_job(
    kube: Kube, namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    job = "done"
    uids = start(kube, namespace, small_job(job, namespace, pool, 2), replicas=2)

    for pod in uids:
        exit_worker(kube, namespace, pod, 0)
    succeeded = wait_for(
        "condition Succeeded=True",
        lambda: (c := kube.condition(namespace, job, "Succeeded")) and c["status"] == "True" and c,
        timeout=30,
    )
    assert succeeded["reason"] == "AllWorkersSucceeded"
    status = kube.job_status(namespace, job)
    assert status["phase"] == "Succeeded"
    completion = status["completionTime"]
    assert completion
    assert status["restarts"] == 0
    wait_for_events(kube, namespace, job, "AllWorkersSucceeded")

    reconciled_after_poke(kube, operator, namespace, job)
    pods = pods_by_name(kube, namespace, job)
    assert {name: pod["metadata"]["uid"] for name, pod in pods.items()} == uids, "a worker was recreated"
    assert all(pod["status"]["phase"] == "Succeeded" for pod in pods.values())

    # Finished is final: workers cleaned up after success are not started again.
    delete_pods(kube, namespace, *uids)
    reconciled_after_poke(kube, operator, namespace, job)
    assert not kube.workers(namespace, job), "a worker was recreated after the job succeeded"
    status = kube.job_status(namespace, job)
    assert (status["phase"], status["completionTime"]) == ("Succeeded", completion)


def test_a_worker_that_succeeded_is_not_run_again_when_its_pod_goes(
    kube: Kube, namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    """Worker 0 finishes first and its pod goes (as with a node that a cluster autoscaler removes once it
    holds only finished pods); worker 1 trains on. Worker 0 is not started again, and the job succeeds
    when worker 1 does."""
    job = "staggered"
    uids = start(kube, namespace, small_job(job, namespace, pool, 2), replicas=2)
    first, second = sorted(uids)
    exit_worker(kube, namespace, first, 0)
    wait_for(
        f"{first} recorded as succeeded",
        lambda: kube.job_status(namespace, job).get("succeededWorkers") == "0",
        timeout=30,
    )
    delete_pods(kube, namespace, first)
    reconciled_after_poke(kube, operator, namespace, job)
    pods = pods_by_name(kube, namespace, job)
    assert list(pods) == [second], "the worker that succeeded was started again"
    assert pods[second]["metadata"]["uid"] == uids[second]

    exit_worker(kube, namespace, second, 0)
    wait_for(
        "condition Succeeded=True",
        lambda: (c := kube.condition(namespace, job, "Succeeded")) and c["status"] == "True",
        timeout=30,
    )
    status = kube.job_status(namespace, job)
    assert (status["phase"], status["succeededWorkers"], status["restarts"]) == ("Succeeded", "0-1", 0)


def test_the_device_of_a_worker_that_succeeded_goes_to_the_next_job(
    kube: Kube, namespace: str, operator: OperatorProcess, add_pool: Callable[..., PrivatePool]
) -> None:
    """A gang of 2 on a node of 2 GPUs; worker 0 finishes first, worker 1 trains on. The pass counted the
    finished worker as missing: it kept its GPU for it and held the queue behind the gang, so a job
    applied then waited for the whole gang to end."""
    two_gpus = add_pool(PoolNodes("nvidia-h100-80gb", nodes=1, per_node=2))
    uids = start(kube, namespace, small_job("gang", namespace, two_gpus, 2), replicas=2)
    first, second = sorted(uids)
    exit_worker(kube, namespace, first, 0)
    wait_for(
        f"{first} recorded as succeeded",
        lambda: kube.job_status(namespace, "gang").get("succeededWorkers") == "0",
        timeout=30,
    )
    kube.apply(small_job("next", namespace, two_gpus, 1))
    wait_for(
        "the next job's worker running on the finished worker's GPU",
        lambda: running_names(kube.workers(namespace, "next")) == ["next-worker-0"],
        timeout=60,
    )
    pods = pods_by_name(kube, namespace, "gang")
    assert sorted(pods) == [first, second]
    # The same pod, finished: a recreated worker 0 would have its name but not its uid.
    assert pods[first]["metadata"]["uid"] == uids[first], "the worker that succeeded was started again"
    assert pods[first]["status"]["phase"] == "Succeeded"
    assert pods[second]["status"]["phase"] == "Running"
    assert kube.job_status(namespace, "gang")["phase"] != "Failed"


# ---------------------------------------------------------------------------------------------- suspend


def set_suspend(kube: Kube, namespace: str, job: str, suspend: bool) -> None:
    patch = '{"spec": {"runPolicy": {"suspend": %s}}}' % ("true" if suspend else "false")
    kube.run("patch", "trainingjob", job, "-n", namespace, "--type", "merge", "-p", patch)


def test_suspend_deletes_the_workers_and_resume_recreates_them(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    job = "pausable"
    # The simulated workers never acknowledge a checkpoint: no grace to wait out before they go.
    no_grace = {"checkpointGracePeriodSeconds": 0}
    uids = start(kube, namespace, small_job(job, namespace, pool, 2, elastic=no_grace), replicas=2)

    set_suspend(kube, namespace, job, True)
    wait_for("every worker deleted", lambda: not kube.workers(namespace, job), timeout=30)
    wait_for("phase Suspended", lambda: phase(kube, namespace, job) == "Suspended")
    suspended = kube.condition(namespace, job, "Suspended")
    assert suspended is not None and suspended["status"] == "True"
    # The first Suspended status is written before the deletes; the counts follow the pods' events.
    wait_for(
        "status counting no workers",
        lambda: (
            (
                (status := kube.job_status(namespace, job)).get("replicas"),
                status.get("readyReplicas"),
            )
            == (0, 0)
        ),
    )
    assert kube.get("trainingjob", job, namespace) is not None

    set_suspend(kube, namespace, job, False)
    wait_for("2 running workers again", lambda: len(running_names(kube.workers(namespace, job))) == 2)
    pods = pods_by_name(kube, namespace, job)
    assert sorted(pods) == sorted(uids)
    assert all(pod["metadata"]["uid"] != uids[name] for name, pod in pods.items())
    wait_for("phase Running", lambda: phase(kube, namespace, job) == "Running")
    resumed = kube.condition(namespace, job, "Suspended")
    assert resumed is not None and (resumed["status"], resumed["reason"]) == ("False", "Resumed")
    wait_for_events(kube, namespace, job, "Suspended", "Resumed")


def test_a_job_resumed_while_its_workers_wait_to_checkpoint_keeps_them(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    # Suspended with a grace of a minute (nobody acknowledges), then resumed: the workers, still running,
    # were stopped after the grace and the job requeued as Preempted.
    job = "undecided"
    grace = {"checkpointGracePeriodSeconds": 60}
    uids = start(kube, namespace, small_job(job, namespace, pool, 2, elastic=grace), replicas=2)
    set_suspend(kube, namespace, job, True)
    wait_for(
        "the suspend's checkpoint request",
        lambda: (kube.job_status(namespace, job).get("checkpoint") or {}).get("reason") == "Suspended",
    )
    set_suspend(kube, namespace, job, False)
    wait_for(
        "Suspended=False, reason Resumed",
        lambda: (c := kube.condition(namespace, job, "Suspended")) and c["reason"] == "Resumed",
    )
    wait_for("phase Running", lambda: phase(kube, namespace, job) == "Running")
    status = kube.job_status(namespace, job)
    assert status.get("checkpoint") is None, status  # the request is closed
    pods = pods_by_name(kube, namespace, job)
    assert {name: pod["metadata"]["uid"] for name, pod in pods.items()} == uids, "a worker was replaced"
    assert all(not pod["metadata"].get("deletionTimestamp") for pod in pods.values())
    assert "Preempted" not in set(event_reasons(kube, namespace, job))


# ---------------------------------------------------------------------------------------------- TTL


def test_ttl_after_finished_deletes_the_job_and_its_objects(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    job, ttl = "ephemeral", 2
    (pod,) = start(
        kube, namespace, small_job(job, namespace, pool, 1, runPolicy={"ttlSecondsAfterFinished": ttl}), 1
    )
    assert kube.get("service", job, namespace) is not None

    exit_worker(kube, namespace, pod, 0)
    completion = wait_for(
        "completionTime", lambda: kube.job_status(namespace, job).get("completionTime"), timeout=30
    )
    completed_at = datetime.fromisoformat(completion.replace("Z", "+00:00")).timestamp()
    wait_for("the TrainingJob deleted", lambda: kube.get("trainingjob", job, namespace) is None, timeout=30)
    gone_after = time.time() - completed_at
    # completionTime is whole seconds (rounded down): the job is deleted at the earliest ttl after it.
    assert gone_after >= ttl - 0.1, f"deleted {gone_after:.1f}s after completion, before the {ttl}s TTL"
    assert gone_after <= ttl + 4, f"deleted {gone_after:.1f}s after completion, long after the {ttl}s TTL"
    # Kubernetes' garbage collector deletes them. It watches a custom resource only after its discovery
    # resync, every 30 s, has seen the CRD: on a sandbox whose CRD is this new (this test run alone), the
    # pods went 39 s after the job; in the whole suite, at once.
    wait_for("its pods deleted", lambda: not kube.workers(namespace, job), timeout=90)
    wait_for("its Service deleted", lambda: kube.get("service", job, namespace) is None, timeout=30)
