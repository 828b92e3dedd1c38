"""Faults on the real control plane: the operator killed during a storm, the API server restarted, a node
with running workers removed. Each test is bounded (a few minutes on a loaded 2-core machine).

1. A storm of 100 TrainingJobs created, scaled and deleted (kubectl, as users would), while the operator
   is SIGKILLed at random moments and started again. The plan and the kill moments come from a seed,
   printed (KUBEFIT_CHAOS_SEED replays one). Afterwards every surviving job has exactly the workers it
   asks for (indices unique, owned by it, Running), deleted jobs are gone with their pods, no pod is
   orphaned, and every status says Ready=True with the right counts.
   Soak: KUBEFIT_SOAK_SECONDS=N repeats storms of 100 jobs with kills for N seconds, checks after each
   round and prints the figures (docs/performance.md, "Soak").
2. kube-apiserver restarted (SIGTERM, down a few seconds, started again on the same port and data) while
   jobs run: the same operator process, without a restart, sees jobs created, scaled and deleted after
   it, and nothing that ran before is lost or duplicated.
3. A node with running workers removed: the elastic job keeps its surviving workers, never runs below its
   minimum, and is back at its size on the remaining room; the fixed-size job, one group, starts again
   whole (its surviving worker too), and that is not counted as a restart.
4. Pods deleted while the operator's watches were broken for good (the operator frozen, the API server
   restarted, then the deletions): kopf lists again and sends no DELETED event for them, and the operator
   still sees that they went: the deleted worker is made again, and a queued job runs on the devices the
   other deleted pod held.
5. A node's kubelet cut off (the node agent stops heartbeating it, and the node is marked NotReady as the
   node lifecycle controller, off in the sandbox, would): the elastic job's worker there, still shown Running, is the one removed when the grant
   drops, at once, and its healthy workers stay.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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

from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.kubeclient import core_api, new_api_client
from kubefit_sandbox.nodes import remove_node

pytestmark = pytest.mark.e2e

H100 = "nvidia-h100-80gb"
JOBS = 100
MAX_WORKERS = 3  # a job's replicas and scales stay within 1..MAX_WORKERS, one device a worker
CONVERGE_S = 300.0  # after the storm, on a loaded 2-core machine with 100 jobs
SEED = int(os.environ.get("KUBEFIT_CHAOS_SEED") or random.SystemRandom().randrange(1_000_000))
SOAK_SECONDS = float(os.environ.get("KUBEFIT_SOAK_SECONDS") or 0)


def one_device_job(name: str, namespace: str, pool: PrivatePool, replicas: int) -> dict[str, Any]:
    """Elastic 1..MAX_WORKERS workers of one device; removals without a checkpoint wait."""
    return job_manifest(
        name,
        namespace,
        pool=pool,
        resources={"accelerator": H100, "acceleratorsPerWorker": 1},
        workers={"replicas": replicas, "minReplicas": 1, "maxReplicas": MAX_WORKERS},
        elastic={"enabled": True, "checkpointGracePeriodSeconds": 0},
    )


def resident_mib(operator: OperatorProcess) -> float:
    assert operator.process is not None
    found = re.search(r"^VmRSS:\s+(\d+) kB$", Path(f"/proc/{operator.process.pid}/status").read_text(), re.M)
    assert found
    return int(found.group(1)) / 1024


# ---------------------------------------------------------------------------------------------- the plan


@dataclass
class Storm:
    """A seeded list of operations and the state they must lead to."""

    prefix: str
    rng: random.Random
    operations: list[tuple[str, Any]] = field(default_factory=list)
    replicas: dict[str, int] = field(default_factory=dict)  # surviving job -> workers it asks for
    deleted: set[str] = field(default_factory=set)

    @classmethod
    def plan(cls, prefix: str, rng: random.Random) -> Storm:
        storm = cls(prefix, rng)
        names = [f"{prefix}{index:03d}" for index in range(JOBS)]
        for start in range(0, JOBS, 10):
            batch = {name: rng.randint(1, 2) for name in names[start : start + 10]}
            storm.operations.append(("create", batch))
            storm.replicas.update(batch)
            for _ in range(rng.randint(2, 6)):
                name, count = rng.choice(sorted(storm.replicas)), rng.randint(1, MAX_WORKERS)
                storm.operations.append(("scale", (name, count)))
                storm.replicas[name] = count
            if rng.random() < 0.6:
                doomed = rng.sample(sorted(storm.replicas), rng.randint(1, 4))
                storm.operations.append(("delete", doomed))
                for name in doomed:
                    del storm.replicas[name]
                storm.deleted.update(doomed)
        return storm

    def run(self, kube: Kube, namespace: str, pool: PrivatePool, pause: float = 0.0) -> None:
        """Applies the operations in order, `pause` seconds (at most, seeded) apart."""
        pauses = random.Random(self.rng.random())
        for kind, argument in self.operations:
            time.sleep(pauses.uniform(0, pause))
            if kind == "create":
                items = [one_device_job(name, namespace, pool, count) for name, count in argument.items()]
                kube.apply({"apiVersion": "v1", "kind": "List", "items": items})
            elif kind == "scale":
                kube.run("scale", "tj", argument[0], "-n", namespace, f"--replicas={argument[1]}")
            else:
                kube.run("delete", "tj", *argument, "-n", namespace, "--wait=false")


class Killer:
    """SIGKILLs the operator at seeded moments and starts it again, until stopped."""

    def __init__(self, operator: OperatorProcess, rng: random.Random, every: tuple[float, float] = (2, 6)):
        self.operator, self.rng, self.every = operator, rng, every
        self.kills: list[float] = []  # seconds after start
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def __enter__(self) -> Killer:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.rng.uniform(*self.every)):
                self.operator.kill()
                self.kills.append(time.monotonic() - self._started)
                time.sleep(self.rng.uniform(0, 2))  # down a moment, as a restarted pod would be
                self.operator.start(timeout=120)
        except BaseException as error:  # noqa: BLE001 - reported by the test, not lost in the thread
            self.error = error


# ---------------------------------------------------------------------------------------------- checks


def problems(kube: Kube, namespace: str, expected: dict[str, int], deleted: set[str]) -> list[str]:
    """Everything that differs from `expected` (job -> workers) in the namespace; [] once converged."""
    jobs = {job["metadata"]["name"]: job for job in kube.items("trainingjobs", namespace)}
    pods = kube.items("pods", namespace)
    found: list[str] = []
    if gone := sorted(set(expected) - set(jobs)):
        found.append(f"jobs missing: {gone}")
    if lingering := sorted(set(jobs) & deleted):
        found.append(f"deleted jobs still there: {lingering}")
    by_job: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        job = (pod["metadata"].get("labels") or {}).get(JOB_LABEL)
        owners = [ref for ref in pod["metadata"].get("ownerReferences") or [] if ref.get("controller")]
        if job not in jobs or len(owners) != 1 or owners[0]["uid"] != jobs[job]["metadata"]["uid"]:
            found.append(f"orphan pod {pod['metadata']['name']} (job {job}, owners {owners})")
            continue
        by_job.setdefault(job, []).append(pod)
    for name, count in sorted(expected.items()):
        if name in jobs:
            found += _job_problems(name, count, jobs[name], by_job.get(name, []))
    return found


def _job_problems(name: str, count: int, job: dict[str, Any], pods: list[dict[str, Any]]) -> list[str]:
    names = sorted(pod["metadata"]["name"] for pod in pods)
    running = running_names(pods)
    if len(names) != count or len(running) != count or f"{name}-worker-0" not in names:
        return [f"{name}: wants {count}, has {names} ({len(running)} running)"]
    status = job.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    counts = (status.get("desiredReplicas"), status.get("readyReplicas"), ready.get("status"))
    if counts != (count, count, "True"):
        return [f"{name}: status desired/ready/Ready = {counts}, wants ({count}, {count}, 'True')"]
    return []


def converge(kube: Kube, namespace: str, storm: Storm, timeout: float = CONVERGE_S) -> float:
    """Waits until the namespace holds exactly what the storm leads to; returns how long it took."""
    started = time.monotonic()
    last: list[str] = []

    def settled() -> bool:
        nonlocal last
        last = problems(kube, namespace, storm.replicas, storm.deleted)
        return not last

    try:
        wait_for("the storm's end state", settled, timeout, interval=2)
    except BaseException:
        print(
            f"\nnot converged (seed {SEED}); {len(last)} problems, first ones:\n  " + "\n  ".join(last[:15])
        )
        raise
    return time.monotonic() - started


def room_for(storm_jobs: int) -> PoolNodes:
    # Every job at its largest, with a node to spare: admission never has to queue anyone for long.
    return PoolNodes(H100, nodes=storm_jobs * MAX_WORKERS // 8 + 2, per_node=8)


# ---------------------------------------------------------------------------------------------- 1


@pytest.mark.timeout(900 + 2 * SOAK_SECONDS)
def test_operator_killed_at_random_during_a_storm_of_100_jobs_ends_with_exactly_the_right_pods(
    kube: Kube, operator: OperatorProcess, namespace: str, add_pool: Callable[..., PrivatePool]
) -> None:
    print(f"\nchaos seed {SEED} (KUBEFIT_CHAOS_SEED={SEED} replays the plan and the kill moments)")
    rng = random.Random(SEED)
    pool = add_pool(room_for(JOBS))
    deadline = time.monotonic() + SOAK_SECONDS
    rounds, kills, jobs_seen = 0, 0, 0
    while True:
        storm = Storm.plan(f"r{rounds}-", rng)
        started = time.monotonic()
        with Killer(operator, random.Random(rng.random())) as killer:
            storm.run(kube, namespace, pool, pause=0.6)  # about 20 s more than kubectl alone: more kills
        stormed = time.monotonic() - started
        assert killer.error is None, f"restarting the operator failed: {killer.error}"
        assert killer.kills, "the storm ended before the first kill: nothing was tested"
        if not operator.healthy():
            operator.start()
        took = converge(kube, namespace, storm)
        rounds, kills, jobs_seen = rounds + 1, kills + len(killer.kills), jobs_seen + JOBS
        print(
            f"round {rounds}: {len(storm.operations)} operations in {stormed:.0f} s, "
            f"kills at {[round(moment, 1) for moment in killer.kills]} s, converged {took:.0f} s later "
            f"({sum(storm.replicas.values())} workers of {len(storm.replicas)} jobs), "
            f"operator RSS {resident_mib(operator):.0f} MiB"
        )
        # Every job deleted while the operator runs (it removes their finalizers): the next round, or the
        # next test module, starts from an empty namespace.
        kube.run("delete", "tj", "--all", "-n", namespace, "--wait=false")
        converge(kube, namespace, Storm("", rng, deleted=set(storm.replicas) | storm.deleted))
        if time.monotonic() >= deadline:
            break
    print(f"{rounds} rounds, {jobs_seen} jobs, {kills} operator kills, seed {SEED}")


# ---------------------------------------------------------------------------------------------- 2


def test_the_operator_recovers_its_watches_after_an_api_server_restart_and_loses_nothing(
    sandbox: Sandbox,
    kube: Kube,
    operator: OperatorProcess,
    namespace: str,
    add_pool: Callable[..., PrivatePool],
) -> None:
    pool = add_pool(PoolNodes(H100, nodes=2, per_node=8))
    before = {f"before-{index}": 2 for index in range(4)}
    for name, count in before.items():
        kube.apply(one_device_job(name, namespace, pool, count))
    storm = Storm("", random.Random(0), replicas=dict(before))
    converge(kube, namespace, storm, timeout=180)
    uids = {pod["metadata"]["uid"] for pod in kube.items("pods", namespace)}
    assert operator.process is not None
    pid = operator.process.pid

    sandbox.restart_component("kube-apiserver", down_seconds=3)
    restarted = time.monotonic()
    # Changes after the restart reach the operator only through watches it re-established itself.
    kube.apply(one_device_job("after", namespace, pool, 2))
    kube.run("scale", "tj", "before-0", "-n", namespace, "--replicas=3")
    kube.run("delete", "tj", "before-3", "-n", namespace, "--wait=false")
    storm.replicas.update({"after": 2, "before-0": 3})
    del storm.replicas["before-3"]
    storm.deleted.add("before-3")
    took = converge(kube, namespace, storm, timeout=180)
    print(f"\nconverged {took:.1f} s after the API server came back ({time.monotonic() - restarted:.1f} s)")

    assert operator.process.pid == pid and operator.process.poll() is None and operator.healthy()
    surviving = {pod["metadata"]["uid"] for pod in kube.items("pods", namespace)}
    kept = [f"before-{index}-worker-{worker}" for index in range(3) for worker in range(2)]
    assert {pod["metadata"]["name"] for pod in kube.items("pods", namespace) if pod["metadata"]["uid"] in uids} == set(kept)  # fmt: skip
    assert len(surviving) == sum(storm.replicas.values())


# ---------------------------------------------------------------------------------------------- 3


def _running_count(kube: Kube, namespace: str, job: str) -> int:
    return len(running_names(kube.workers(namespace, job)))


class _WorkerSampler:
    """Counts a job's running workers every 0.1 s in a thread, from `start` to `stop`."""

    def __init__(self, kube: Kube, namespace: str, job: str):
        self.count = lambda: _running_count(kube, namespace, job)
        # Each successful sample's count; a failed listing is tried at the next one.
        self.samples: list[int] = []
        self.failures: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            try:
                self.samples.append(self.count())
            except Exception as error:  # noqa: BLE001 - a busy API server; reported by wait_past
                self.failures.append(repr(error))
            if self.done.wait(0.1):
                return

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)

    def wait_past(self, taken: int, more: int, timeout: float) -> None:
        """Waits for `more` samples after the first `taken`. A sampler that saw nothing after an event (its
        listings all failed) would let what it watches for pass unseen."""
        deadline = time.monotonic() + timeout
        while len(self.samples) < taken + more and time.monotonic() < deadline:
            time.sleep(0.05)
        got = len(self.samples) - taken
        assert got >= more, f"{got} of {more} samples after the event: {self.failures[-2:]}"


def test_a_node_with_running_workers_removed_each_job_recovers_per_its_policy(
    sandbox: Sandbox,
    kube: Kube,
    operator: OperatorProcess,
    namespace: str,
    add_pool: Callable[..., PrivatePool],
) -> None:
    # 32 devices; after a node goes, 24: room for both jobs whole (12 + 4). Elastic workers of 3 devices
    # leave 2 free on a node of 8, where the fixed job's 2-device workers fit best: a node with both.
    pool = add_pool(PoolNodes(H100, nodes=4, per_node=8))
    elastic = job_manifest(
        "elastic", namespace, pool=pool,
        resources={"accelerator": H100, "acceleratorsPerWorker": 3},
        workers={"replicas": 4, "minReplicas": 2, "maxReplicas": 4},
        elastic={"enabled": True, "checkpointGracePeriodSeconds": 0},
    )  # fmt: skip
    fixed = job_manifest(
        "fixed", namespace, pool=pool,
        resources={"accelerator": H100, "acceleratorsPerWorker": 2},
        workers={"replicas": 2},
        elastic={"enabled": False, "checkpointGracePeriodSeconds": 0},
    )  # fmt: skip
    # Its two workers on two nodes, so that the removed node holds exactly one of them: the group then
    # restarts whole, its survivor too (placement alone left that to chance).
    fixed["spec"]["template"]["spec"]["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"kubefit.dev/job": "fixed"}}, "topologyKey": "kubernetes.io/hostname"}]}}  # fmt: skip
    kube.apply(elastic)
    wait_for("4 elastic workers", lambda: _running_count(kube, namespace, "elastic") == 4, 120, 1)
    kube.apply(fixed)
    wait_for("2 fixed workers", lambda: _running_count(kube, namespace, "fixed") == 2, 120, 1)

    where = {pod["metadata"]["name"]: pod for pod in kube.items("pods", namespace)}
    hosts = {pod["spec"]["nodeName"] for pod in where.values()}

    def holds(node: str, job: str) -> bool:
        return any(pod["spec"]["nodeName"] == node for name, pod in where.items() if name.startswith(job))

    # A node with a worker of each job when there is one, then a fixed worker, then the most workers, not
    # elastic worker 0's.
    victim = max(
        sorted(hosts),
        key=lambda node: (
            holds(node, "fixed") and holds(node, "elastic"),
            holds(node, "fixed"),
            sum(pod["spec"]["nodeName"] == node for pod in where.values()),
            where["elastic-worker-0"]["spec"]["nodeName"] != node,
        ),
    )
    survivors = {
        name: pod["metadata"]["uid"] for name, pod in where.items() if pod["spec"]["nodeName"] != victim
    }
    sampler = _WorkerSampler(kube, namespace, "elastic")
    sampler.start()
    try:
        lost = remove_node(core_api(new_api_client(sandbox.kubeconfig_path)), victim)
        assert lost >= 1
        # The replacement can run within a second: sampled from the removal on, not only once it is back.
        # Counted from the removal: the first listing can end after it (CI once saw [3, 4] and no more).
        sampler.wait_past(taken=len(sampler.samples), more=2, timeout=30)
        wait_for("the elastic job back at 4", lambda: _running_count(kube, namespace, "elastic") == 4, 180, 1)
        wait_for("the fixed job back at 2", lambda: _running_count(kube, namespace, "fixed") == 2, 180, 1)
    finally:
        sampler.stop()
    fewest = min(sampler.samples)
    assert fewest >= 2, f"the elastic job ran {fewest} workers, below its minimum of 2"
    now = {pod["metadata"]["name"]: pod["metadata"]["uid"] for pod in kube.items("pods", namespace)}
    # Elastic: every worker that survived the node is the same pod; only the lost ones are new.
    assert {name: now.get(name) for name in survivors if name.startswith("elastic")} == {
        name: uid for name, uid in survivors.items() if name.startswith("elastic")
    }
    assert all(pod["spec"]["nodeName"] != victim for pod in kube.items("pods", namespace))
    # Both at their size, with the right status, and no pod left over from the node.
    converge(kube, namespace, Storm("", random.Random(0), replicas={"elastic": 4, "fixed": 2}), timeout=60)
    # Fixed: one group. If it lost a worker, its survivor was restarted with it, uncounted; else untouched.
    fixed_survivors = {name: uid for name, uid in survivors.items() if name.startswith("fixed")}
    assert len(fixed_survivors) == 1, f"the removed node held {2 - len(fixed_survivors)} fixed workers"
    assert all(now.get(name) != uid for name, uid in fixed_survivors.items())  # restarted with the lost one
    assert "WorkerLost" in [event["reason"] for event in kube.events(namespace, "fixed")]
    assert kube.job_status(namespace, "fixed").get("restarts", 0) == 0


# ---------------------------------------------------------------------------------------------- 4


def test_a_high_priority_gang_that_lost_a_node_preempts_a_lower_priority_job_at_once(
    sandbox: Sandbox,
    kube: Kube,
    operator: OperatorProcess,
    namespace: str,
    add_pool: Callable[..., PrivatePool],
) -> None:
    # Three whole nodes: urgent's two whole-node workers and filler's one. A node of urgent's goes, and no
    # node is free: urgent preempts filler for its lost worker as soon as its survivor has gone (the group
    # starts again whole), not after its gang timeout of 600 s requeues it.
    pool = add_pool(PoolNodes(H100, nodes=3, per_node=8))
    whole_node = {"accelerator": H100, "acceleratorsPerWorker": 8}
    no_grace = {"enabled": False, "checkpointGracePeriodSeconds": 0}
    urgent = job_manifest(
        "urgent", namespace, pool=pool, resources=whole_node, workers={"replicas": 2}, elastic=no_grace,
        scheduling={"priority": 100, "preemption": "LowerPriority", "gangTimeoutSeconds": 600},
    )  # fmt: skip
    filler = job_manifest(
        "filler", namespace, pool=pool, resources=whole_node, workers={"replicas": 1}, elastic=no_grace
    )
    kube.apply(urgent)
    wait_for("2 urgent workers", lambda: _running_count(kube, namespace, "urgent") == 2, 120, 1)
    kube.apply(filler)
    wait_for("the filler's worker", lambda: _running_count(kube, namespace, "filler") == 1, 120, 1)

    gone = kube.workers(namespace, "urgent")[0]["spec"]["nodeName"]
    assert remove_node(core_api(new_api_client(sandbox.kubeconfig_path)), gone) == 1
    wait_for("urgent back at 2 workers", lambda: _running_count(kube, namespace, "urgent") == 2, 120, 1)
    assert "Preempted" in [event["reason"] for event in kube.events(namespace, "filler")]
    assert _running_count(kube, namespace, "filler") == 0
    assert "GangTimeout" not in [event["reason"] for event in kube.events(namespace, "urgent")]
    assert all(pod["spec"]["nodeName"] != gone for pod in kube.workers(namespace, "urgent"))


def test_pods_deleted_while_the_operators_watches_were_broken_neither_hold_devices_nor_stand_for_workers(
    sandbox: Sandbox,
    kube: Kube,
    operator: OperatorProcess,
    namespace: str,
    add_pool: Callable[..., PrivatePool],
) -> None:
    """The operator frozen while the API server restarts and two pods are deleted: its watches then resume
    from a revision the new API server does not have (410 Gone), kopf lists again and sends no DELETED event
    for the two. The operator must still see that they went (controller/relist.py)."""
    pool = add_pool(PoolNodes(H100, nodes=1, per_node=8))
    kube.apply(one_device_job("kept", namespace, pool, 2))
    wait_for("2 kept workers", lambda: _running_count(kube, namespace, "kept") == 2, 120, 1)
    other = pool.pin({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other-workload", "namespace": namespace},
        "spec": {"containers": [{"name": "main", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": 6}}}]},
    })  # fmt: skip
    kube.apply(other)
    wait_for("the other workload running", lambda: running_names([kube.get("pod", "other-workload", namespace) or {"metadata": {}, "status": {}}]), 60, 1)  # fmt: skip
    kube.apply(one_device_job("waiting", namespace, pool, 1))
    wait_for("the waiting job queued", lambda: (kube.condition(namespace, "waiting", "Admitted") or {}).get("status") == "False", 60, 1)  # fmt: skip
    worker_uid = kube.get("pod", "kept-worker-0", namespace)["metadata"]["uid"]

    assert operator.process is not None
    os.killpg(operator.process.pid, signal.SIGSTOP)
    try:
        # Restarted first: the frozen operator's connections close, so no event of the deletions can wait
        # in its sockets, and the new API server's watch cache begins after the revision it last saw.
        sandbox.restart_component("kube-apiserver", down_seconds=1)
        for pod in ("other-workload", "kept-worker-0"):
            kube.run("delete", "pod", pod, "-n", namespace, "--grace-period=0", "--force", "--wait=true")
    finally:
        os.killpg(operator.process.pid, signal.SIGCONT)

    def replaced() -> bool:
        pod = kube.get("pod", "kept-worker-0", namespace)
        return pod is not None and pod["metadata"]["uid"] != worker_uid and bool(running_names([pod]))

    wait_for("kept-worker-0 made again", replaced, 120, 1)
    wait_for("the waiting job admitted onto the freed devices", lambda: _running_count(kube, namespace, "waiting") >= 1, 120, 1)  # fmt: skip
    assert operator.logged(r"gone while a watch was broken: .*other-workload") is not None


# ---------------------------------------------------------------------------------------------- 5


def test_a_worker_on_a_node_gone_not_ready_is_the_one_removed_and_the_healthy_ones_stay(
    sandbox: Sandbox,
    kube: Kube,
    operator: OperatorProcess,
    namespace: str,
    add_pool: Callable[..., PrivatePool],
) -> None:
    # Four whole nodes, four whole-node workers: no spare place. A node's kubelet falls silent (the node
    # agent stops heartbeating it) and the node is marked NotReady; the pod there still reads Running.
    # The pass no longer counts the node and lowers the grant to 3: the worker removed must be the one on
    # that node, not the highest index on a healthy node.
    pool = add_pool(PoolNodes(H100, nodes=4, per_node=8))
    elastic = job_manifest(
        "cutoff", namespace, pool=pool,
        resources={"accelerator": H100, "acceleratorsPerWorker": 8},
        workers={"replicas": 4, "minReplicas": 2, "maxReplicas": 4},
        elastic={"enabled": True, "checkpointGracePeriodSeconds": 30},
    )  # fmt: skip
    kube.apply(elastic)
    wait_for("4 workers running", lambda: _running_count(kube, namespace, "cutoff") == 4, 120, 1)
    pods = {pod["metadata"]["name"]: pod for pod in kube.workers(namespace, "cutoff")}
    cut = pods["cutoff-worker-1"]["spec"]["nodeName"]  # neither worker 0 nor the highest index
    healthy = {name: pod["metadata"]["uid"] for name, pod in pods.items() if name != "cutoff-worker-1"}
    core = core_api(new_api_client(sandbox.kubeconfig_path))
    core.patch_node(cut, {"metadata": {"annotations": {UNREACHABLE: "true"}}})
    try:
        # The sandbox runs no node lifecycle controller (docs/sandbox.md): the test writes what it would
        # once the heartbeats stopped for its grace period, and the agent leaves it so.
        unknown = {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}
        core.patch_node_status(cut, {"status": {"conditions": [unknown]}})
        wait_for(f"node {cut} NotReady", lambda: not _node_ready(core, cut), 10, 0.5)

        def removed() -> bool:
            pod = next(
                (p for p in kube.workers(namespace, "cutoff") if p["metadata"]["name"] == "cutoff-worker-1"),
                None,
            )
            return pod is None or pod["metadata"].get("deletionTimestamp") is not None

        # The unreachable worker cannot acknowledge a checkpoint request: it goes at once, not after 30 s.
        wait_for("the worker on the NotReady node deleted", removed, 20, 0.5)
        now = {pod["metadata"]["name"]: pod for pod in kube.workers(namespace, "cutoff")}
        assert {name: now[name]["metadata"]["uid"] for name in healthy if name in now} == healthy
        assert all(now[name]["metadata"].get("deletionTimestamp") is None for name in healthy)
        wait_for(
            "status: 3 ready", lambda: kube.job_status(namespace, "cutoff").get("readyReplicas") == 3, 30, 1
        )
    finally:
        core.patch_node(cut, {"metadata": {"annotations": {UNREACHABLE: None}}})


UNREACHABLE = "sandbox.kubefit.dev/unreachable"


def _node_ready(core: Any, name: str) -> bool:
    conditions = core.read_node(name).status.conditions or []
    return any(item.type == "Ready" and item.status == "True" for item in conditions)
