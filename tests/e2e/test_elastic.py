"""Elastic scheduling on the real control plane: admission, gang start, capacity-aware scaling, priority.

Issue 8's "What it must show" 1-6, each on a private pool of simulated H100 nodes (operator_support), so
the capacity each test counts is exactly its own. The real kube-scheduler binds the workers; the node
agent turns bound pods Running, and ends one when it is annotated sandbox.kubefit.dev/exit (docs/sandbox.md).
No worker here answers the checkpoint handshake, so every planned removal waits out the job's
checkpointGracePeriodSeconds (GRACE): the operator's side of the handshake, not the trainer's.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from operator_support import (
    Kube,
    PoolNodes,
    PrivatePool,
    _node_pool,
    job_manifest,
    remove_private_pool,
    running_names,
    wait_for,
)

from kubefit_sandbox.cluster import build_node, free_node_index
from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.kubeclient import core_api, new_api_client
from kubefit_sandbox.nodes import list_sandbox_nodes, register_node, remove_node
from kubefit_sandbox.podstatus import START_ANNOTATION, rfc3339

pytestmark = pytest.mark.e2e

H100 = "nvidia-h100-80gb"
GRACE = 3  # checkpointGracePeriodSeconds: nobody acknowledges, so removals wait this long
EXIT_ANNOTATION = "sandbox.kubefit.dev/exit"


def elastic_job(
    name: str, namespace: str, pool: PrivatePool, *, replicas: int, low: int, high: int, **spec: Any
) -> dict[str, Any]:
    """`replicas` workers of 4 H100s, elastic between `low` and `high`."""
    return job_manifest(
        name,
        namespace,
        pool=pool,
        resources={"accelerator": H100, "acceleratorsPerWorker": 4},
        workers={"replicas": replicas, "minReplicas": low, "maxReplicas": high},
        elastic={"enabled": True, "checkpointGracePeriodSeconds": GRACE},
        **spec,
    )


def fixed_job(
    name: str, namespace: str, pool: PrivatePool, *, replicas: int, per_worker: int, **spec: Any
) -> dict[str, Any]:
    """All-or-nothing at `replicas` workers of `per_worker` H100s."""
    return job_manifest(
        name,
        namespace,
        pool=pool,
        resources={"accelerator": H100, "acceleratorsPerWorker": per_worker},
        workers={"replicas": replicas},
        elastic={"enabled": False, "checkpointGracePeriodSeconds": GRACE},
        **spec,
    )


def live(kube: Kube, namespace: str, job: str) -> list[dict[str, Any]]:
    return [pod for pod in kube.workers(namespace, job) if not pod["metadata"].get("deletionTimestamp")]


def running(kube: Kube, namespace: str, job: str) -> int:
    return len(running_names(kube.workers(namespace, job)))


def condition_is(
    kube: Kube, namespace: str, job: str, kind: str, status: str, reason: str | None = None
) -> Any:
    found = kube.condition(namespace, job, kind)
    if found is None or found["status"] != status or (reason is not None and found["reason"] != reason):
        return None
    return found


def explained(kube: Kube, namespace: str, *jobs: str) -> Any:
    """A context manager: if the block fails, print the jobs' status and events and their pods."""
    from contextlib import contextmanager

    @contextmanager
    def explaining() -> Iterator[None]:
        try:
            yield
        except BaseException:
            for job in jobs:
                status = kube.job_status(namespace, job)
                print(f"--- {job}: {json.dumps(status, indent=1)}")
                print(f"    events: {[(e['reason'], e.get('message')) for e in kube.events(namespace, job)]}")
                pods = kube.workers(namespace, job)
                print(
                    f"    pods: {[(p['metadata']['name'], p['status'].get('phase'), p['spec'].get('nodeName')) for p in pods]}"
                )
            raise

    return explaining()


def event_reasons(kube: Kube, namespace: str, job: str) -> set[str]:
    return {event["reason"] for event in kube.events(namespace, job)}


def run_other_workload(
    kube: Kube, name: str, namespace: str, pool: PrivatePool, node: str, resources: dict[str, Any]
) -> None:
    """A pod that is no TrainingJob's, bound to `node` of the pool with `resources`, and Running."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"sandbox.kubefit.dev/shutdown-seconds": "0"},
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "other", "image": "busybox", "resources": resources}],
        },
    }
    kube.apply(pool.pin(pod))
    wait_for(
        f"{name} running",
        lambda: (kube.get("pod", name, namespace) or {}).get("status", {}).get("phase") == "Running",
    )


# ---------------------------------------------------------------------------------------------- pools


@pytest.fixture
def grow_pool(sandbox: Sandbox) -> Iterator[Callable[[PrivatePool, int], tuple[str, ...]]]:
    """grow_pool(pool, n) registers n more 8-GPU nodes in `pool` (same label and taint); all removed at the end."""
    added: list[str] = []
    core = core_api(new_api_client(sandbox.kubeconfig_path))

    def grow(pool: PrivatePool, count: int) -> tuple[str, ...]:
        shape = _node_pool(
            PoolNodes(H100, nodes=count, per_node=8), f"{pool.name}-{uuid.uuid4().hex[:4]}", pool.name
        )
        existing, _ = list_sandbox_nodes(core)
        cidrs = [(node.get("spec") or {}).get("podCIDR") for node in existing]
        names = []
        for node_name in shape.node_names():
            manifest = build_node(shape, node_name, free_node_index(cidrs), rfc3339())
            register_node(core, manifest)
            cidrs.append(manifest["spec"]["podCIDR"])
            names.append(node_name)
            added.append(node_name)
        return tuple(names)

    yield grow
    remove_private_pool(sandbox, PrivatePool("grown", tuple(added)))


def remove_pool_node(sandbox: Sandbox, name: str) -> None:
    remove_node(core_api(new_api_client(sandbox.kubeconfig_path)), name)


# ---------------------------------------------------------------------------------------------- watching


@dataclass
class Watch:
    """Samples a job's workers in a thread: the fewest running, and pods left unbound too long."""

    kube: Kube
    namespace: str
    job: str
    # A created worker the kube-scheduler has not bound by then is a partial gang: one waits for capacity
    # until the test's 60 s waits end; a kube-scheduler slowed by a loaded box takes seconds, not 30.
    unbound_limit: float = 30.0
    fewest: int | None = None
    stuck: set[str] = field(default_factory=set)
    history: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)  # (time, running) on change
    _unbound_since: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    samples: int = 0  # taken; a listing that fails (a busy API server) is tried again at the next one
    failures: list[str] = field(default_factory=list)

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, error_type: object, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        # A sampler that saw nothing would let every assertion on `fewest` and `stuck` pass.
        assert error_type is not None or self.samples > 0, (
            f"no sample of {self.job}'s workers was taken: {self.failures[-3:]}"
        )

    def _run(self) -> None:
        while True:  # from the start: what the block does can be over within the first interval
            try:
                self._sample()
            except Exception as error:  # noqa: BLE001 - kept and shown; the next sample tries again
                self.failures.append(repr(error))
            if self._stop.wait(0.3):
                return

    def _sample(self) -> None:
        pods = self.kube.workers(self.namespace, self.job)
        names = tuple(sorted(running_names(pods)))
        count = len(names)
        self.fewest = count if self.fewest is None else min(self.fewest, count)
        now = time.monotonic()
        if not self.history or self.history[-1][1] != names:
            self.history.append((now, names))
        for pod in pods:
            name = pod["metadata"]["name"]
            if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                self._unbound_since.pop(name, None)
                continue
            since = self._unbound_since.setdefault(name, now)
            if now - since > self.unbound_limit:
                self.stuck.add(name)
        self.samples += 1


# ---------------------------------------------------------------------------------------------- 1


def test_an_elastic_job_follows_capacity_without_going_below_its_minimum(
    kube: Kube,
    namespace: str,
    sandbox: Sandbox,
    pool: PrivatePool,
    grow_pool: Callable[[PrivatePool, int], tuple[str, ...]],
) -> None:
    kube.apply(elastic_job("elastic", namespace, pool, replicas=4, low=2, high=4))
    wait_for("4 running workers on two 8-GPU nodes", lambda: running(kube, namespace, "elastic") == 4)
    assert condition_is(kube, namespace, "elastic", "Admitted", "True")

    with Watch(kube, namespace, "elastic") as watch:
        # The node without the rendezvous host (worker 0) goes, with its two workers: the harder case when
        # worker 1 is among them (the survivors are not the lowest indices).
        where = {
            pod["metadata"]["name"]: pod["spec"]["nodeName"] for pod in kube.workers(namespace, "elastic")
        }
        other = next(name for name in pool.nodes if name != where["elastic-worker-0"])
        remove_pool_node(sandbox, other)
        wait_for(
            "the job at 2 workers, desired 2",
            lambda: (
                running(kube, namespace, "elastic") == 2
                and len(live(kube, namespace, "elastic")) == 2
                and kube.job_status(namespace, "elastic").get("desiredReplicas") == 2
            ),
            timeout=60,
        )
        names = sorted(pod["metadata"]["name"] for pod in live(kube, namespace, "elastic"))
        assert "elastic-worker-0" in names  # the rendezvous host was never removed

        grow_pool(pool, 1)
        wait_for("back to 4 running workers", lambda: running(kube, namespace, "elastic") == 4, timeout=60)

    assert watch.fewest is not None and watch.fewest >= 2, f"fell to {watch.fewest}: {watch.history}"
    assert not watch.stuck, f"workers left unbound (a partial gang): {sorted(watch.stuck)}"
    # The status follows the operator's own watch of the pods: a moment after kubectl shows them running.
    wait_for(
        "the status counting 4 of 4 workers ready",
        lambda: (
            (status := kube.job_status(namespace, "elastic")).get("readyReplicas") == 4
            and status.get("desiredReplicas") == 4
        ),
        timeout=30,
    )


def test_an_elastic_job_left_below_its_minimum_is_released_by_its_gang_timeout_and_runs_again(
    kube: Kube,
    namespace: str,
    sandbox: Sandbox,
    add_pool: Callable[..., PrivatePool],
    grow_pool: Callable[[PrivatePool, int], tuple[str, ...]],
) -> None:
    # min = max = 2 workers of 8 GPUs on two nodes; one node goes and no other has room. torchrun cannot
    # re-form with one: the survivor held its node for ever (Running=False), where the gang clock now runs
    # again from the loss and releases it.
    two = add_pool(PoolNodes(H100, nodes=2, per_node=8))
    job = elastic_job(
        "floor", namespace, two, replicas=2, low=2, high=2, scheduling={"gangTimeoutSeconds": 10}
    )
    job["spec"]["resources"]["acceleratorsPerWorker"] = 8
    kube.apply(job)
    wait_for("2 running workers", lambda: running(kube, namespace, "floor") == 2)
    with explained(kube, namespace, "floor"):
        where = {pod["metadata"]["name"]: pod["spec"]["nodeName"] for pod in kube.workers(namespace, "floor")}
        remove_pool_node(sandbox, where["floor-worker-1"])
        timed_out = wait_for(
            "Admitted=False, reason GangTimeout",
            lambda: condition_is(kube, namespace, "floor", "Admitted", "False", "GangTimeout"),
            timeout=90,
        )
        assert "left it below its minimum" in timed_out["message"], timed_out
        wait_for("every worker released", lambda: live(kube, namespace, "floor") == [])
        assert kube.job_status(namespace, "floor").get("restarts", 0) == 0  # requeued, not failed

        grow_pool(two, 1)
        wait_for("2 running workers again", lambda: running(kube, namespace, "floor") == 2, timeout=90)


# ---------------------------------------------------------------------------------------------- 2


def test_a_minimum_that_cannot_fit_creates_no_pods_says_why_and_starts_when_a_node_comes(
    kube: Kube,
    namespace: str,
    add_pool: Callable[..., PrivatePool],
    grow_pool: Callable[[PrivatePool, int], tuple[str, ...]],
) -> None:
    small = add_pool(PoolNodes(H100, nodes=1, per_node=8))
    kube.apply(elastic_job("big", namespace, small, replicas=4, low=3, high=4))
    queued = wait_for(
        "Admitted=False, reason InsufficientCapacity, with what is missing",
        lambda: (
            (found := condition_is(kube, namespace, "big", "Admitted", "False", "InsufficientCapacity"))
            and "needs" in found["message"]
            and found
        ),
    )
    # 3 workers of 4 GPUs need two 8-GPU nodes' worth; one node holds 2 of them.
    assert "needs room for 3 workers of 4 nvidia-h100-80gb" in queued["message"], queued
    assert "only 2 fit now" in queued["message"], queued
    time.sleep(2)  # a queued job must create nothing, not merely not yet
    assert kube.workers(namespace, "big") == []

    grow_pool(small, 1)
    wait_for(
        "4 running workers once a second node is there",
        lambda: running(kube, namespace, "big") == 4,
        timeout=60,
    )
    assert condition_is(kube, namespace, "big", "Admitted", "True")


# ---------------------------------------------------------------------------------------------- 3


def test_a_higher_priority_job_shrinks_a_lower_priority_elastic_job_to_its_minimum(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    kube.apply(elastic_job("low", namespace, pool, replicas=4, low=2, high=4))
    wait_for("low at 4 workers", lambda: running(kube, namespace, "low") == 4)

    with Watch(kube, namespace, "low") as watch:
        kube.apply(fixed_job("high", namespace, pool, replicas=2, per_worker=4, scheduling={"priority": 100}))
        wait_for("high at 2 running workers", lambda: running(kube, namespace, "high") == 2, timeout=60)
        wait_for("low at its minimum of 2", lambda: len(live(kube, namespace, "low")) == 2)
    assert running(kube, namespace, "low") == 2
    assert watch.fewest is not None and watch.fewest >= 2
    assert "ShrunkForPriority" in (kube.job_status(namespace, "low").get("message") or "") or any(
        "ShrunkForPriority" in (event.get("message") or "") + event["reason"]
        for event in kube.events(namespace, "low")
    ), kube.events(namespace, "low")


def test_a_job_shrunk_then_suspended_and_resumed_in_its_handshake_keeps_the_workers_it_was_shrunk_to(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    # Shrunk from 4 to 2 for a higher-priority job, suspended while workers 2 and 3 wait to checkpoint
    # (nobody acknowledges), resumed: it was taken back at no grant, as if preempted, and lost all four.
    low = elastic_job("low", namespace, pool, replicas=4, low=2, high=4)
    low["spec"]["elastic"]["checkpointGracePeriodSeconds"] = 600
    kube.apply(low)
    wait_for("low at 4 workers", lambda: running(kube, namespace, "low") == 4)
    kept = {
        pod["metadata"]["name"]: pod["metadata"]["uid"]
        for pod in kube.workers(namespace, "low")
        if pod["metadata"]["name"] in ("low-worker-0", "low-worker-1")
    }
    kube.apply(fixed_job("high", namespace, pool, replicas=2, per_worker=4, scheduling={"priority": 100}))
    wait_for(
        "low's shrink handshake",
        lambda: (
            (kube.job_status(namespace, "low").get("checkpoint") or {}).get("reason") == "ShrunkForPriority"
        ),
    )
    suspend = '{"spec": {"runPolicy": {"suspend": %s}}}'
    kube.run("patch", "trainingjob", "low", "-n", namespace, "--type", "merge", "-p", suspend % "true")
    wait_for("Suspended=True", lambda: condition_is(kube, namespace, "low", "Suspended", "True"))
    kube.run("patch", "trainingjob", "low", "-n", namespace, "--type", "merge", "-p", suspend % "false")
    with explained(kube, namespace, "low"):
        wait_for("low admitted again", lambda: condition_is(kube, namespace, "low", "Admitted", "True"))
        status = kube.job_status(namespace, "low")
        assert (status.get("checkpoint") or {}).get("targetReplicas") == 2, status
        pods = {pod["metadata"]["name"]: pod for pod in live(kube, namespace, "low")}
        assert {name: pods[name]["metadata"]["uid"] for name in kept if name in pods} == kept, pods.keys()


@pytest.mark.parametrize(
    ("per_worker", "preemption"),
    [(4, "Never"), (8, "LowerPriority")],
    ids=["shrink", "preemption"],
)
def test_a_gang_admitted_by_a_shrink_waits_out_the_victims_longer_checkpoint_grace_without_timing_out(
    kube: Kube, namespace: str, pool: PrivatePool, per_worker: int, preemption: str
) -> None:
    """The victim's removed workers save for up to 30 s (nobody acknowledges); the newcomer's gang timeout
    is 15 s. Its clock waits for those places: it starts once they are free, and never times out. Two
    workers of 4 devices are made room for by shrinking the victim to its minimum; two of 8 need both
    nodes, so the whole victim is preempted. No worker of the newcomer exists while the victim's workers hold
    its places: a Pending one could be bound on devices the pass keeps for another job."""
    slow_saver = elastic_job("slow-saver", namespace, pool, replicas=4, low=2, high=4)
    slow_saver["spec"]["elastic"]["checkpointGracePeriodSeconds"] = 30
    kube.apply(slow_saver)
    wait_for("slow-saver at 4 workers", lambda: running(kube, namespace, "slow-saver") == 4)
    started = time.monotonic()
    kube.apply(
        fixed_job(
            "impatient", namespace, pool, replicas=2, per_worker=per_worker,
            scheduling={"priority": 100, "gangTimeoutSeconds": 15, "preemption": preemption},
        )
    )  # fmt: skip
    with explained(kube, namespace, "impatient", "slow-saver"):
        waiting = wait_for(
            "impatient's Ready naming slow-saver",
            lambda: (
                "slow-saver to leave"
                in (kube.condition(namespace, "impatient", "Ready") or {}).get("message", "")
            ),
        )
        created = kube.workers(namespace, "impatient")
        victims = kube.workers(namespace, "slow-saver")  # read after: still leaving then, so before too
        assert len(victims) > (2 if preemption == "Never" else 0), "the victim's workers left too soon"
        assert waiting and created == [], [pod["metadata"]["name"] for pod in created]
        wait_for("impatient at 2 running workers", lambda: running(kube, namespace, "impatient") == 2, 90)
    took = time.monotonic() - started
    print(
        f"\nthe newcomer ran {took:.1f} s after it was applied (victim's grace 30 s, its gang timeout 15 s)"
    )
    assert took >= 25, "the newcomer ran before the victim's workers could have left: no grace was waited"
    assert "GangTimeout" not in event_reasons(kube, namespace, "impatient")
    assert (kube.job_status(namespace, "impatient").get("gang") or {}).get("retries", 0) == 0


def test_preemption_stops_a_whole_lower_priority_job_which_requeues_and_does_not_fail(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    kube.apply(elastic_job("victim", namespace, pool, replicas=4, low=2, high=4))
    wait_for("victim at 4 workers", lambda: running(kube, namespace, "victim") == 4)

    # 2 workers of 8 GPUs need both nodes: shrinking the victim to 2 is not enough.
    preemptor = fixed_job(
        "urgent",
        namespace,
        pool,
        replicas=2,
        per_worker=8,
        scheduling={"priority": 100, "preemption": "LowerPriority"},
    )
    kube.apply(preemptor)
    with explained(kube, namespace, "urgent", "victim"):
        wait_for("urgent at 2 running workers", lambda: running(kube, namespace, "urgent") == 2, timeout=60)
    # Admitted=False, reason Preempted while its workers checkpoint and go; then Queued like any job
    # waiting for room (its message says what it waits for), never Failed.
    with explained(kube, namespace, "urgent", "victim"):
        wait_for("every worker of the victim gone", lambda: live(kube, namespace, "victim") == [], timeout=60)
        preempted = next(
            event for event in kube.events(namespace, "victim") if event["reason"] == "Preempted"
        )
    assert "urgent" in preempted["message"] and preempted["type"] == "Warning"
    assert condition_is(kube, namespace, "victim", "Admitted", "False")
    assert not condition_is(kube, namespace, "victim", "Failed", "True")
    assert kube.job_status(namespace, "victim").get("phase") != "Failed"
    assert "Preempted" in event_reasons(kube, namespace, "victim")

    # It requeued: once the devices are free again it runs.
    for pod in live(kube, namespace, "urgent"):  # urgent finishes: its devices are free again
        kube.run("annotate", "pod", pod["metadata"]["name"], "-n", namespace, f"{EXIT_ANNOTATION}=0")
    wait_for("the victim running again", lambda: running(kube, namespace, "victim") == 4, timeout=60)


def test_a_preemptor_starts_on_a_node_added_while_its_victim_saves_and_the_victim_keeps_its_worker(
    kube: Kube,
    namespace: str,
    add_pool: Callable[..., PrivatePool],
    grow_pool: Callable[[PrivatePool, int], tuple[str, ...]],
) -> None:
    """A job admitted onto devices its victim still holds creates its workers only for places free now
    (docs/scheduling.md, "Gang start"): none while its one place is the victim's, and one on a node added
    meanwhile, which the next pass reserves for it, long before the victim's grace (120 s, nobody
    acknowledges) ends. Holding every worker until the victim had gone, it started only then. Its worker
    bound there, the preemption is undone: the victim keeps the worker it had, never deleted, and is
    admitted again with its checkpoint request closed, rather than restarting once its grace ended."""
    pool = add_pool(PoolNodes(H100, nodes=1, per_node=8))
    victim = fixed_job("victim", namespace, pool, replicas=1, per_worker=8)
    victim["spec"]["elastic"]["checkpointGracePeriodSeconds"] = 120
    kube.apply(victim)
    wait_for("victim running", lambda: running(kube, namespace, "victim") == 1)
    (first,) = [pod["metadata"]["uid"] for pod in live(kube, namespace, "victim")]
    urgent = fixed_job(
        "urgent", namespace, pool, replicas=1, per_worker=8,
        scheduling={"priority": 100, "preemption": "LowerPriority"},
    )  # fmt: skip
    kube.apply(urgent)
    with explained(kube, namespace, "urgent", "victim"):
        wait_for(
            "the victim preempted",
            lambda: condition_is(kube, namespace, "victim", "Admitted", "False", "Preempted"),
        )
        assert kube.workers(namespace, "urgent") == []  # its only place is the victim's, still saving
        (added,) = grow_pool(pool, 1)
        wait_for("urgent running", lambda: running(kube, namespace, "urgent") == 1, timeout=90)
        saving = live(kube, namespace, "victim")
    assert [pod["spec"]["nodeName"] for pod in live(kube, namespace, "urgent")] == [added]
    assert saving, "the victim's worker had gone: the test shows nothing"
    with explained(kube, namespace, "urgent", "victim"):
        admitted = wait_for(
            "the victim admitted again",
            lambda: condition_is(kube, namespace, "victim", "Admitted", "True"),
            timeout=60,
        )
        assert "preemption undone" in admitted["message"] and f"{namespace}/urgent" in admitted["message"]
        wait_for("the victim running", lambda: running(kube, namespace, "victim") == 1)
        assert [pod["metadata"]["uid"] for pod in live(kube, namespace, "victim")] == [first]
        assert kube.job_status(namespace, "victim").get("checkpoint") is None
        deleted = [event for event in kube.events(namespace, "victim") if event["reason"] == "DeletedWorkers"]
        assert deleted == [] and running(kube, namespace, "urgent") == 1


def test_a_preemptor_kube_scheduler_cannot_place_for_another_reason_preempts_only_once(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    # Its claim misnamed, the LowerPriority job's worker never bound: it preempted the victim again after
    # every gang timeout (its backoff 10 s, 20 s, ...), restarting the victim each time.
    kube.apply(fixed_job("victim", namespace, pool, replicas=2, per_worker=8))
    wait_for("victim at 2 workers", lambda: running(kube, namespace, "victim") == 2)
    urgent = fixed_job(
        "urgent",
        namespace,
        pool,
        replicas=1,
        per_worker=8,
        scheduling={"priority": 100, "preemption": "LowerPriority", "gangTimeoutSeconds": 5},
    )
    urgent["spec"]["template"]["spec"]["volumes"] = [
        {"name": "ckpt", "persistentVolumeClaim": {"claimName": "typo-ckpt"}}
    ]
    kube.apply(urgent)
    timed_out = wait_for(
        "urgent's gang timeout",
        lambda: condition_is(kube, namespace, "urgent", "Admitted", "False", "GangTimeout"),
        timeout=60,
    )
    assert "typo-ckpt" in timed_out["message"] and "takes no room from other jobs" in timed_out["message"]
    assert "typo-ckpt" in kube.job_status(namespace, "urgent")["gang"]["unplaceable"]
    wait_for("the victim running again", lambda: running(kube, namespace, "victim") == 2, timeout=60)
    time.sleep(
        35
    )  # past urgent's backoff (10 s) and, had it been admitted, its next gang timeout and backoff
    preempted = [event for event in kube.events(namespace, "victim") if event["reason"] == "Preempted"]
    assert len(preempted) == 1 and preempted[0].get("count", 1) == 1
    assert running(kube, namespace, "victim") == 2
    assert condition_is(kube, namespace, "urgent", "Admitted", "False")


# ---------------------------------------------------------------------------------------------- 4


def test_an_admitted_gang_that_cannot_all_run_is_released_and_requeued(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    # The operator admits on accelerators only. A pod of another workload holds most of one node's CPUs, so
    # of a gang admitted on both nodes' GPUs the kube-scheduler can bind only one worker: the same
    # situation as a node tainted right after admission, without racing the kube-scheduler.
    run_other_workload(kube, "cpu-hog", namespace, pool, pool.nodes[1], {"requests": {"cpu": "80"}})

    gang = fixed_job("gang", namespace, pool, replicas=2, per_worker=8, scheduling={"gangTimeoutSeconds": 5})
    gang["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "40"}}
    kube.apply(gang)
    wait_for("gang admitted", lambda: condition_is(kube, namespace, "gang", "Admitted", "True"))
    timed_out = wait_for(
        "Admitted=False, reason GangTimeout",
        lambda: condition_is(kube, namespace, "gang", "Admitted", "False", "GangTimeout"),
        timeout=60,
    )
    assert "5" in timed_out["message"]
    wait_for("every worker of the gang released", lambda: live(kube, namespace, "gang") == [])
    wait_for("a GangTimeout event", lambda: "GangTimeout" in event_reasons(kube, namespace, "gang"))

    # Requeued, not failed: with the hog gone it is admitted again after its backoff and runs.
    kube.run("delete", "pod", "cpu-hog", "-n", namespace, "--wait=false")
    wait_for("the gang running after its backoff", lambda: running(kube, namespace, "gang") == 2, timeout=90)


def test_a_gang_bound_to_its_nodes_but_still_starting_is_not_released(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    # Every worker is bound at once, and the node agent starts them only `start` s after their creation (an
    # image pull): the gang holds its devices, so its gang timeout does not release it. The timeout counts
    # from the whole second of admission: 10 s leaves a loaded box room for the status write, the creates and
    # both binds (1.4 s under disk pressure), where 3 s left as little as 2. The checks below run before the
    # workers start: a slow bind and kubectl calls on a loaded box have 45 - 12 s.
    start = 45
    gang = fixed_job(
        "pulling", namespace, pool, replicas=2, per_worker=8, scheduling={"gangTimeoutSeconds": 10}
    )
    gang["spec"]["template"]["metadata"]["annotations"][START_ANNOTATION] = str(start)
    with explained(kube, namespace, "pulling"):
        kube.apply(gang)
        wait_for(
            "both workers bound and not running yet",
            lambda: (
                len(pods := live(kube, namespace, "pulling")) == 2
                and all(
                    pod["spec"].get("nodeName") and pod["status"].get("phase") == "Pending" for pod in pods
                )
            ),
        )
        uids = {pod["metadata"]["uid"] for pod in live(kube, namespace, "pulling")}
        admitted = condition_is(kube, namespace, "pulling", "Admitted", "True")
        assert admitted is not None
        time.sleep(12)  # past the gang timeout from admission, well before the workers start
        assert running(kube, namespace, "pulling") == 0
        assert condition_is(kube, namespace, "pulling", "Admitted", "True") is not None
        assert {pod["metadata"]["uid"] for pod in live(kube, namespace, "pulling")} == uids
        assert (kube.job_status(namespace, "pulling") or {}).get("gang", {}).get("started") is True
        wait_for("both workers running", lambda: running(kube, namespace, "pulling") == 2, timeout=start + 60)
        assert {pod["metadata"]["uid"] for pod in live(kube, namespace, "pulling")} == uids
        assert "GangTimeout" not in event_reasons(kube, namespace, "pulling")


# ---------------------------------------------------------------------------------------------- 5


def test_twenty_jobs_onto_room_for_ten_run_ten_and_queue_ten_without_a_pod(
    kube: Kube, namespace: str, add_pool: Callable[..., PrivatePool]
) -> None:
    room = add_pool(PoolNodes(H100, nodes=5, per_node=8))  # 5 x 8 GPUs: room for ten 4-GPU workers
    names = [f"job-{index:02d}" for index in range(20)]
    manifests = [fixed_job(name, namespace, room, replicas=1, per_worker=4) for name in names]
    kube.run("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))

    def with_pods() -> dict[str, list[dict[str, Any]]]:
        pods = kube.items("pods", namespace)
        grouped: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            job = (pod["metadata"].get("labels") or {}).get("kubefit.dev/job")
            if job and not pod["metadata"].get("deletionTimestamp"):
                grouped.setdefault(job, []).append(pod)
        return grouped

    def running_jobs() -> set[str]:
        return {job for job, pods in with_pods().items() if running_names(pods)}

    wait_for("10 jobs running", lambda: len(running_jobs()) == 10, timeout=90)
    wait_for(
        "10 jobs queued for want of capacity",
        lambda: (
            sum(
                1
                for name in names
                if condition_is(kube, namespace, name, "Admitted", "False", "InsufficientCapacity")
            )
            == 10
        ),
        timeout=60,
    )
    first = running_jobs()
    grouped = with_pods()
    assert set(grouped) == first, f"jobs with pods but not running: {sorted(set(grouped) - first)}"
    assert all(len(pods) == 1 for pods in grouped.values())

    for job in sorted(first):
        (pod,) = grouped[job]
        kube.run("annotate", "pod", pod["metadata"]["name"], "-n", namespace, f"{EXIT_ANNOTATION}=0")
    with explained(kube, namespace, *names):
        wait_for(
            "the first ten Succeeded",
            lambda: all((kube.job_status(namespace, job).get("phase") == "Succeeded") for job in first),
            timeout=90,
        )
        wait_for("the other ten running", lambda: running_jobs() - first == set(names) - first, timeout=90)


# ---------------------------------------------------------------------------------------------- 6


def test_kubectl_scale_and_a_raw_scale_subresource_write_move_the_worker_count(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    kube.apply(elastic_job("scaled", namespace, pool, replicas=2, low=1, high=4))
    wait_for("2 running workers", lambda: running(kube, namespace, "scaled") == 2)

    kube.run("scale", "trainingjob/scaled", "-n", namespace, "--replicas=3")
    wait_for(
        "3 running workers after kubectl scale", lambda: running(kube, namespace, "scaled") == 3, timeout=60
    )

    # What an HPA does: read the Scale, write it back with new replicas (PUT on the subresource).
    path = f"/apis/kubefit.dev/v1alpha1/namespaces/{namespace}/trainingjobs/scaled/scale"
    scale = json.loads(kube.run("get", "--raw", path).stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3
    scale["spec"]["replicas"] = 1
    kube.run("replace", "--raw", path, "-f", "-", input=json.dumps(scale))
    wait_for(
        "1 worker after the scale subresource write (and the handshake's grace period)",
        lambda: len(live(kube, namespace, "scaled")) == 1 and running(kube, namespace, "scaled") == 1,
        timeout=60,
    )
    assert [pod["metadata"]["name"] for pod in live(kube, namespace, "scaled")] == ["scaled-worker-0"]
    job = kube.get("trainingjob", "scaled", namespace)
    assert job is not None and job["spec"]["workers"]["replicas"] == 1


def test_a_scale_up_right_after_a_scale_down_starts_a_worker_beside_the_one_still_terminating(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    # Worker 1, removed by the scale-down, takes 120 s to stop (saving on SIGTERM). Before, the scale-up
    # made worker 1 again and so waited for that pod's name: up to its grace period.
    manifest = elastic_job("rescaled", namespace, pool, replicas=2, low=1, high=3)
    manifest["spec"]["template"]["metadata"]["annotations"] = {"sandbox.kubefit.dev/shutdown-seconds": "120"}
    manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 180
    kube.apply(manifest)
    wait_for("2 running workers", lambda: running(kube, namespace, "rescaled") == 2)

    kube.run("scale", "trainingjob/rescaled", "-n", namespace, "--replicas=1")
    wait_for(
        "worker 1 terminating after the scale-down's handshake",
        lambda: (
            [pod["metadata"]["name"] for pod in live(kube, namespace, "rescaled")] == ["rescaled-worker-0"]
        ),
        timeout=30,
    )
    kube.run("scale", "trainingjob/rescaled", "-n", namespace, "--replicas=2")
    with explained(kube, namespace, "rescaled"):
        wait_for(
            "a new worker running while worker 1 still stops",
            lambda: (
                sorted(running_names(kube.workers(namespace, "rescaled")))
                == ["rescaled-worker-0", "rescaled-worker-2"]
            ),
            timeout=30,
        )
    leaving = [pod for pod in kube.workers(namespace, "rescaled") if pod["metadata"].get("deletionTimestamp")]
    assert [pod["metadata"]["name"] for pod in leaving] == ["rescaled-worker-1"]


def test_a_job_written_without_a_workers_section_can_be_scaled(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    # The CRD gave spec.workers no default: the API server stored no .spec.workers.replicas, and the scale
    # subresource (what kubectl scale and an HPA read) answered that the field does not exist.
    manifest = fixed_job("bare", namespace, pool, replicas=1, per_worker=1)
    del manifest["spec"]["workers"]
    kube.apply(manifest)
    stored = kube.get("trainingjob", "bare", namespace)
    assert stored is not None and stored["spec"]["workers"]["replicas"] == 1  # defaulted by the API server
    path = f"/apis/kubefit.dev/v1alpha1/namespaces/{namespace}/trainingjobs/bare/scale"
    assert json.loads(kube.run("get", "--raw", path).stdout)["spec"]["replicas"] == 1
    kube.run("scale", "trainingjob/bare", "-n", namespace, "--replicas=2")
    wait_for(
        "2 running workers after kubectl scale", lambda: running(kube, namespace, "bare") == 2, timeout=60
    )


def test_a_fixed_job_scaled_up_beyond_the_room_keeps_running_until_the_new_size_fits_whole(
    kube: Kube,
    namespace: str,
    add_pool: Callable[..., PrivatePool],
    grow_pool: Callable[[PrivatePool, int], tuple[str, ...]],
) -> None:
    # Granted its new size with no room, the running worker was stopped (after the handshake) for a gang of
    # 2 that could not start, which the gang timeout then released.
    one = add_pool(PoolNodes(H100, nodes=1, per_node=8))
    kube.apply(fixed_job("resized", namespace, one, replicas=1, per_worker=8))
    wait_for("1 running worker", lambda: running(kube, namespace, "resized") == 1)
    (first,) = [pod["metadata"]["uid"] for pod in live(kube, namespace, "resized")]

    kube.run("scale", "trainingjob/resized", "-n", namespace, "--replicas=2")
    with explained(kube, namespace, "resized"):
        wait_for(
            "the status to say the running worker keeps its world size",
            lambda: "keep their world size" in (kube.job_status(namespace, "resized").get("message") or ""),
        )
        time.sleep(3 * GRACE)  # well past the handshake a restart would wait out
        assert [pod["metadata"]["uid"] for pod in live(kube, namespace, "resized")] == [first]
        assert running(kube, namespace, "resized") == 1

        grow_pool(one, 1)

        def restarted() -> list[dict[str, Any]] | None:
            pods = live(kube, namespace, "resized")
            fresh = [pod for pod in pods if pod["metadata"]["uid"] != first]
            return pods if len(fresh) == 2 and running(kube, namespace, "resized") == 2 else None

        pods = wait_for("2 new running workers once a second node is there", restarted, timeout=90)
        assert sorted(pod["metadata"]["name"] for pod in pods) == ["resized-worker-0", "resized-worker-1"]


def _jax_processes(pod: dict[str, Any]) -> str | None:
    env = pod["spec"]["containers"][0].get("env") or []
    return next((item.get("value") for item in env if item["name"] == "JAX_NUM_PROCESSES"), None)


def test_scaling_an_elastic_jax_job_restarts_every_worker_with_the_new_process_count(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    # jax.distributed.initialize reads JAX_NUM_PROCESSES once: a worker added beside the running two would
    # wait for a third process the other two never expect.
    kube.apply(elastic_job("jaxed", namespace, pool, replicas=2, low=1, high=4, framework="jax"))
    wait_for("2 running workers", lambda: running(kube, namespace, "jaxed") == 2)
    before = {pod["metadata"]["uid"] for pod in live(kube, namespace, "jaxed")}
    assert {_jax_processes(pod) for pod in live(kube, namespace, "jaxed")} == {"2"}

    kube.run("scale", "trainingjob/jaxed", "-n", namespace, "--replicas=3")
    with explained(kube, namespace, "jaxed"):

        def restarted() -> list[dict[str, Any]] | None:
            pods = live(kube, namespace, "jaxed")
            fresh = [pod for pod in pods if pod["metadata"]["uid"] not in before]
            return pods if len(fresh) == 3 and running(kube, namespace, "jaxed") == 3 else None

        pods = wait_for("3 new running workers after the handshake's grace period", restarted, timeout=90)
        assert sorted(pod["metadata"]["name"] for pod in pods) == [f"jaxed-worker-{i}" for i in range(3)]
        assert {_jax_processes(pod) for pod in pods} == {"3"}
        # Both old workers were asked to checkpoint before the restart removed them (Ready=False Restarting
        # lasts only the GRACE seconds of that handshake: too short to poll for reliably).
        asked = [event["message"] for event in kube.events(namespace, "jaxed")]
        assert any("before removing 2 (Restarting)" in message for message in asked), asked


# ---------------------------------------------------------------------------------------------- placement


def test_a_worker_lands_where_the_pass_reserved_it_so_a_gang_counted_on_the_empty_node_runs(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    # Another workload holds 4 GPUs and some CPUs of the first node. The pass puts a 4-GPU worker there
    # (best fit), keeping the second node whole; kube-scheduler, left alone, spreads by CPU and memory and
    # would take the emptier second node, and the 8-GPU job after it would find no node with 8 free.
    resources = {"requests": {"cpu": "8"}, "limits": {"nvidia.com/gpu": "4"}}
    run_other_workload(kube, "other-workload", namespace, pool, pool.nodes[0], resources)
    with explained(kube, namespace, "small", "whole-node"):
        kube.apply(fixed_job("small", namespace, pool, replicas=1, per_worker=4))
        wait_for("the small job running", lambda: running(kube, namespace, "small") == 1)
        assert [pod["spec"]["nodeName"] for pod in live(kube, namespace, "small")] == [pool.nodes[0]]
        preferred = live(kube, namespace, "small")[0]["spec"]["affinity"]["nodeAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert preferred[-1]["preference"]["matchExpressions"][0]["values"] == [pool.nodes[0]]

        kube.apply(fixed_job("whole-node", namespace, pool, replicas=1, per_worker=8))
        wait_for(
            "the 8-GPU job running on the second node", lambda: running(kube, namespace, "whole-node") == 1
        )
        assert [pod["spec"]["nodeName"] for pod in live(kube, namespace, "whole-node")] == [pool.nodes[1]]


def test_a_grown_worker_no_node_takes_is_given_up_and_its_node_freed_for_a_while(
    kube: Kube, namespace: str, add_pool: Callable[..., PrivatePool]
) -> None:
    """kubefit counts accelerators only: a grown worker granted a node whose CPU another pod holds stays
    Pending, and its place was reserved in every pass for ever. Now it is deleted after the gang timeout,
    the job runs what is placed, and grows again one gang timeout later."""
    pool = add_pool(PoolNodes("nvidia-h100-80gb", nodes=2, per_node=1, cpu="8", memory="64Gi"))
    timeout = 15
    manifest = job_manifest(
        "grow", namespace, pool=pool,
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1, "cpu": "6"},
        workers={"replicas": 1, "minReplicas": 1, "maxReplicas": 2},
        elastic={"enabled": True, "checkpointGracePeriodSeconds": 0},
        scheduling={"gangTimeoutSeconds": timeout},
    )  # fmt: skip
    kube.apply(manifest)
    wait_for("worker 0 running", lambda: running_names(kube.workers(namespace, "grow")) == ["grow-worker-0"])
    taken = kube.workers(namespace, "grow")[0]["spec"]["nodeName"]
    (other,) = [node for node in pool.nodes if node != taken]
    hog = pool.pin({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cpu-hog", "namespace": namespace},
        "spec": {"nodeName": other, "containers": [
            {"name": "hog", "image": "busybox", "resources": {"requests": {"cpu": "6"}}}
        ]},
    })  # fmt: skip
    kube.apply(hog)
    kube.run("scale", "tj", "grow", "-n", namespace, "--replicas=2")
    wait_for("worker 1 created", lambda: len(kube.workers(namespace, "grow")) == 2)
    worker_1 = kube.workers(namespace, "grow")[1]
    # The operator's clock starts at the pod's creationTimestamp (whole seconds), not when a poll saw it.
    created = datetime.fromisoformat(worker_1["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    assert not worker_1["spec"].get("nodeName")  # no CPU for it on the other node

    def given_up() -> list[dict[str, Any]]:
        return [e for e in kube.events(namespace, "grow") if "grow-worker-1 was not placed" in e["message"]]

    wait_for("worker 1 given up", lambda: given_up() and len(kube.workers(namespace, "grow")) == 1, 90)
    assert (datetime.now(UTC) - created).total_seconds() >= timeout - 1  # not before the gang timeout
    assert given_up()[0]["reason"] == "CapacityChanged"
    assert "grows again from" in (kube.job_status(namespace, "grow").get("message") or "")
    time.sleep(timeout / 3)  # held: not created again at once
    assert [pod["metadata"]["name"] for pod in kube.workers(namespace, "grow")] == ["grow-worker-0"]
    kube.run("delete", "pod", "cpu-hog", "-n", namespace, "--grace-period=0", "--force", check=False)
    wait_for(
        "worker 1 running once the hold ends and the node has CPU",
        lambda: running_names(kube.workers(namespace, "grow")) == ["grow-worker-0", "grow-worker-1"],
        timeout=120,
    )
