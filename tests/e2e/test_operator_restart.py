"""The operator killed mid-way and started again ends with exactly the right pods.

While it is down, the world moves on: a worker is deleted, another loses its owner reference and the
job is scaled up. The restarted operator must recreate the missing worker, adopt the orphan (same pod,
not a copy), add the new one, and leave the rest alone: no duplicates, no orphans.
"""

from __future__ import annotations

import json
import time

import pytest
from operator_support import (
    Kube,
    OperatorProcess,
    PrivatePool,
    job_manifest,
    running_names,
    wait_for,
)

from kubefit.controller.kube import JobReplaced, KubeApi
from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.kubeclient import new_api_client

pytestmark = pytest.mark.e2e

STABLE_FOR_S = 12.0  # longer than one resync interval of the test operator (10 s)


def uids(kube: Kube, namespace: str, job: str) -> dict[str, str]:
    return {pod["metadata"]["name"]: pod["metadata"]["uid"] for pod in kube.workers(namespace, job)}


def test_restart_mid_way_ends_with_exactly_the_right_pods(
    kube: Kube, namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    resources = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1}
    workers = {"replicas": 3, "maxReplicas": 4}
    # Elastic, so the scale to 4 adds a worker (a fixed-size gang would restart all of them instead).
    elastic = {"enabled": True, "checkpointGracePeriodSeconds": 0}
    manifest = job_manifest(
        "resilient", namespace, pool=pool, resources=resources, workers=workers, elastic=elastic
    )
    kube.apply(manifest)
    # All 3 first workers exist before the kill: worker-0 is deleted and worker-2 orphaned below.
    first = [f"resilient-worker-{index}" for index in range(3)]
    wait_for("the first 3 workers", lambda: sorted(uids(kube, namespace, "resilient")) == first)
    operator.kill()

    # The world moves on while the operator is down.
    before = uids(kube, namespace, "resilient")
    kube.run(
        "delete", "pod", "resilient-worker-0", "-n", namespace, "--grace-period=0", "--force", check=False
    )
    orphan = "resilient-worker-2"
    # Its only owner now is not a controller (a ConfigMap of someone else's): adopting it must keep that
    # reference (a merge patch of ownerReferences replaced the list).
    kube.run("create", "configmap", "keeper", "-n", namespace)
    keeper = kube.get("configmap", "keeper", namespace)
    assert keeper is not None
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": keeper["metadata"]["uid"]}
    patch = json.dumps({"metadata": {"ownerReferences": [other]}})
    kube.run("patch", "pod", orphan, "-n", namespace, "--type=merge", "-p", patch)
    kube.run("scale", "tj", "resilient", "-n", namespace, "--replicas=4")

    operator.start()
    expected = [f"resilient-worker-{index}" for index in range(4)]
    wait_for(
        "exactly 4 running workers", lambda: running_names(kube.workers(namespace, "resilient")) == expected
    )
    settled = uids(kube, namespace, "resilient")
    assert settled[orphan] == before[orphan], "the orphan was replaced instead of adopted"
    assert settled["resilient-worker-0"] != before["resilient-worker-0"], "worker 0 was not recreated"
    for pod in kube.workers(namespace, "resilient"):
        owners = pod["metadata"]["ownerReferences"]
        controllers = [(owner["name"], owner["kind"]) for owner in owners if owner.get("controller")]
        assert controllers == [("resilient", "TrainingJob")], owners
        others = [owner["uid"] for owner in owners if not owner.get("controller")]
        assert others == ([other["uid"]] if pod["metadata"]["name"] == orphan else []), owners
    wait_for("status 4/4", lambda: kube.job_status(namespace, "resilient").get("workers") == "4/4")

    time.sleep(STABLE_FOR_S)  # a resync later, nothing was created or deleted
    assert uids(kube, namespace, "resilient") == settled
    assert len(kube.items("pods", namespace)) == 4  # nothing else in the namespace either


def test_a_job_carries_nothing_of_kopf_and_is_deleted_while_the_operator_is_down(
    kube: Kube, namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    resources = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1}
    kube.apply(job_manifest("plain", namespace, pool=pool, resources=resources, workers={"replicas": 1}))
    wait_for("a running worker", lambda: running_names(kube.workers(namespace, "plain")))
    job = kube.get("trainingjob", "plain", namespace)
    assert job is not None
    # No finalizer and no kopf annotation: the operator follows jobs with a watch and a resync of its own.
    assert not job["metadata"].get("finalizers")
    assert not [key for key in job["metadata"].get("annotations") or {} if key.startswith("kubefit.dev/")]

    operator.stop()
    try:
        # Nothing of the operator's holds the delete; the garbage collector takes the worker.
        kube.run("delete", "trainingjob", "plain", "-n", namespace, "--wait=true", "--timeout=30s")
        wait_for("the worker collected", lambda: not kube.workers(namespace, "plain"), timeout=60)
    finally:
        operator.start()


def test_the_finalizer_of_an_earlier_version_is_removed(
    kube: Kube, namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    # A job as operator versions with per-job kopf timers left it: finalized by kopf.
    resources = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1}
    manifest = job_manifest("legacy", namespace, pool=pool, resources=resources, workers={"replicas": 1})
    manifest["metadata"]["finalizers"] = ["kubefit.dev/finalizer"]
    kube.apply(manifest)
    wait_for(
        "the finalizer removed",
        lambda: (
            (job := kube.get("trainingjob", "legacy", namespace)) and not job["metadata"].get("finalizers")
        ),
        timeout=30,
    )
    wait_for("a running worker", lambda: running_names(kube.workers(namespace, "legacy")))
    kube.run("delete", "trainingjob", "legacy", "-n", namespace, "--wait=true", "--timeout=30s")


def test_a_status_written_for_a_job_deleted_and_created_again_is_refused_by_the_api_server(
    kube: Kube, sandbox: Sandbox, namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    """The operator's status write names the job's uid: one for the old job, still in flight when the job
    was deleted and created again under its name, must not land on the new job (the real API server's
    answer to the JSON patch's test, which unit tests can only imitate)."""
    resources = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1}
    manifest = job_manifest("again", namespace, pool=pool, resources=resources, workers={"replicas": 1})
    kube.apply(manifest)
    wait_for("the first job's status", lambda: kube.job_status(namespace, "again").get("phase"))
    old = kube.get("trainingjob", "again", namespace)
    assert old is not None
    kube.run("delete", "trainingjob", "again", "-n", namespace, "--wait=true", "--timeout=30s")
    kube.apply(manifest)
    wait_for("the new job's status", lambda: kube.job_status(namespace, "again").get("phase") == "Running")
    new = kube.get("trainingjob", "again", namespace)
    assert new is not None and new["metadata"]["uid"] != old["metadata"]["uid"]

    api = KubeApi(new_api_client(sandbox.kubeconfig_path))
    with pytest.raises(JobReplaced):
        api.patch_job_status(namespace, "again", old["metadata"]["uid"], {"phase": "Failed"})
    after = kube.get("trainingjob", "again", namespace)
    assert after is not None and after["status"]["phase"] == "Running"
    # The right uid: the status written whole, what it omits gone (the operator writes it back after).
    written = api.patch_job_status(namespace, "again", new["metadata"]["uid"], {"phase": "Running"})
    assert written["status"] == {"phase": "Running"}


def test_a_restart_during_a_preemption_lets_the_handshake_go_on(
    kube: Kube, namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    """The operator is killed while a preempted job's workers are asked to checkpoint. The restarted one
    must not take the victim back as admitted with the workers still leaving it: on fcd5a6d it did, the
    victim kept its devices, and the preemptor was still not running 60 s after the restart."""
    grace = 20  # the simulated workers never acknowledge: the removal waits this long
    resources = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8}
    victim = job_manifest(
        "victim", namespace, pool=pool, resources=resources, workers={"replicas": 2},
        elastic={"enabled": False, "checkpointGracePeriodSeconds": grace},
    )  # fmt: skip
    kube.apply(victim)
    wait_for("the victim's 2 workers", lambda: len(running_names(kube.workers(namespace, "victim"))) == 2)
    urgent = job_manifest(
        "urgent", namespace, pool=pool, resources=resources, workers={"replicas": 1},
        scheduling={"priority": 100, "preemption": "LowerPriority"},
        elastic={"enabled": False, "checkpointGracePeriodSeconds": 0},
    )  # fmt: skip
    kube.apply(urgent)

    def request_id() -> str | None:
        return (kube.job_status(namespace, "victim").get("checkpoint") or {}).get("requestId")

    first = wait_for("the victim asked to checkpoint", request_id)
    operator.kill()
    operator.start()
    seen, admitted_again = {first}, False
    deadline = time.monotonic() + grace + 40
    while running_names(kube.workers(namespace, "urgent")) != ["urgent-worker-0"]:
        assert time.monotonic() < deadline, f"urgent not running; victim requests {seen}"
        current = request_id()
        if current is not None:
            seen.add(current)
        admitted = kube.condition(namespace, "victim", "Admitted") or {}
        admitted_again = admitted_again or admitted.get("status") == "True"
        time.sleep(0.3)
    assert seen == {first}, f"the victim was asked to checkpoint again: {sorted(seen)}"
    assert not admitted_again, "the restarted operator took the preempted victim back as admitted"


def test_a_gang_refused_by_the_api_server_preempts_no_one_again_after_a_restart(
    kube: Kube, namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    """A high-priority gang whose workers the API server refuses (here a LimitRange: the trainer's cpu
    request above the namespace's maximum) preempts the victim once, gives its grant back, and takes no
    room from other jobs until a create goes through. That was known to the operator process alone: one
    restarted during the gang's backoff preempted the victim again when the backoff ended. Once the cause is
    put right, a dry-run create finds it out, and the job preempts and runs."""
    victim = job_manifest(
        "victim", namespace, pool=pool, workers={"replicas": 2},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8, "cpu": "1"},
        elastic={"enabled": False, "checkpointGracePeriodSeconds": 0},
    )  # fmt: skip
    kube.apply(victim)
    wait_for("the victim's 2 workers", lambda: len(running_names(kube.workers(namespace, "victim"))) == 2)
    limits = {"type": "Container", "max": {"cpu": "2"}}
    kube.apply(
        {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "cpu-max", "namespace": namespace},
         "spec": {"limits": [limits]}}
    )  # fmt: skip
    urgent = job_manifest(
        "urgent", namespace, pool=pool, workers={"replicas": 1},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8, "cpu": "3"},
        scheduling={"priority": 100, "preemption": "LowerPriority"},
        elastic={"enabled": False, "checkpointGracePeriodSeconds": 0},
    )  # fmt: skip
    kube.apply(urgent)
    refused = wait_for(
        "the refused gang giving its grant back",
        lambda: (kube.job_status(namespace, "urgent").get("gang") or {}).get("refused"),
        timeout=120,
        interval=1,
    )
    assert refused.startswith("the API server refused worker urgent-worker-0: "), refused

    def preemptions() -> int:
        return sum(
            event.get("count") or 1
            for event in kube.events(namespace, "victim")
            if event["reason"] == "Preempted"
        )

    assert preemptions() == 1
    wait_for(
        "the victim running again",
        lambda: len(running_names(kube.workers(namespace, "victim"))) == 2,
        timeout=90,
    )
    running = uids(kube, namespace, "victim")
    operator.kill()
    operator.start()
    retry_after = kube.job_status(namespace, "urgent")["gang"]["retryAfter"]
    # The backoff ends within seconds; then the restarted operator reconciles the urgent job again (its
    # timer, the 10 s resync) and, without the refusal, would preempt the victim once more.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        assert uids(kube, namespace, "victim") == running, f"the victim lost its workers after {retry_after}"
        time.sleep(1)
    assert preemptions() == 1
    assert kube.job_status(namespace, "urgent")["gang"].get("refused") == refused
    admitted = kube.condition(namespace, "urgent", "Admitted") or {}
    assert admitted.get("status") == "False", admitted
    # The cause put right: a dry-run create of its worker (at most every 30 s, refusals.REFUSAL_TRY_SECONDS) is
    # admitted by the API server, so the job takes room again: it preempts the victim and runs.
    kube.run("delete", "limitrange", "cpu-max", "-n", namespace)
    wait_for(
        "the urgent job running once its workers are admitted",
        lambda: running_names(kube.workers(namespace, "urgent")) == ["urgent-worker-0"],
        timeout=150,
        interval=1,
    )
    assert preemptions() == 2
    assert kube.job_status(namespace, "urgent")["gang"].get("refused") is None
