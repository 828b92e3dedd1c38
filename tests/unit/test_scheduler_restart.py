"""After an operator restart (or a new leader), passes wait for every job to offer its demand.

kopf fills its index of worker pods before any handler runs, but the jobs' first reconciles run in any order
on the handler threads: a pass before a running job's first offer counted its bound workers as another
workload's and its unbound ones nowhere (controller/scheduler.py, the module's docstring, Restart).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest
from kopf._cogs.structs import bodies, ephemera, references
from kopf._core.engines import indexing
from kopf._core.reactor.inventory import ResourceMemories
from test_reconciler import NAMESPACE, FakeKube, job_manifest
from test_scheduler import CATALOG, GPU, FakeCluster, Recorder, demand, node, sync_scheduler, worker

import kubefit.controller.scheduler as scheduler_module
from kubefit.api.resource import GROUP, PLURAL, VERSION, JobKey
from kubefit.api.units import rfc3339
from kubefit.controller import handlers
from kubefit.controller.cluster import ClusterView
from kubefit.controller.handlers import cluster_view
from kubefit.controller.kube import KubeApi
from kubefit.controller.reconciler import Reconciler
from kubefit.controller.scheduler import RESTART_SETTLE_SECONDS, Scheduler, SchedulerSettings
from kubefit.decisions.inventory import PodUsage
from kubefit.decisions.node_match import ANYWHERE
from kubefit.decisions.observed import WorkerPod
from kubefit.metrics import OperatorMetrics


def indexed_view(cluster: FakeCluster) -> ClusterView:
    """The view with kopf's index of workers listing the jobs it holds pods of, as handlers.cluster_view's."""
    return replace(cluster.view(), jobs_with_workers=lambda: list(cluster.workers))


def test_a_queued_job_offered_first_after_a_restart_is_not_admitted_on_a_running_jobs_devices() -> None:
    """One 8-GPU node; a (2 x 4 GPUs) holds it, worker 0 bound and worker 1 not yet; b (1 x 4) waited behind it.
    b's first reconcile after the restart comes before a's: it was admitted on the 4 GPUs of a's unbound worker."""
    a, b = ("ns", "a"), ("ns", "b")
    pods = [worker("a", 0, "n1"), worker("a", 1, None, phase="Pending")]
    cluster = FakeCluster(nodes=[node("n1")], workers={a: pods})
    scheduler, recorder = sync_scheduler()

    assert scheduler.grant(b, []).workers is None
    scheduler.offer(
        b,
        replace(demand("b", min_workers=1, want=1, created=2), elastic=False),
        ANYWHERE,
        indexed_view(cluster),
    )
    assert scheduler.snapshot()[b].workers is None  # no pass decided anything: a has not offered yet
    assert recorder.keys() == []

    assert scheduler.grant(a, pods, admitted_with=2).workers == 2
    a_demand = replace(demand("a", min_workers=2, want=2, created=1), elastic=False)
    scheduler.offer(a, a_demand, ANYWHERE, indexed_view(cluster))  # the last one: the pass runs now
    grants = scheduler.snapshot()
    assert grants[a].workers == 2 and grants[b].workers == 0
    assert b in recorder.keys() and a not in recorder.keys()


def test_a_shrink_for_priority_open_at_a_restart_is_not_undone_before_its_beneficiary_offers() -> None:
    """victim (4 -> 2 for urgent, a whole 8-GPU node): its workers 2 and 3 on n2 still save (the checkpoint request
    open); urgent's worker is pending. victim's first reconcile after the restart came first: it grew back to 4."""
    victim, urgent = ("ns", "victim"), ("ns", "urgent")
    victim_pods = [worker("victim", index, "n1" if index < 2 else "n2") for index in range(4)]
    urgent_pods = [worker("urgent", 0, None, phase="Pending")]
    cluster = FakeCluster(nodes=[node("n1"), node("n2")], workers={victim: victim_pods, urgent: urgent_pods})
    scheduler, _ = sync_scheduler()

    assert scheduler.grant(victim, victim_pods, admitted_with=4, target=2).workers == 2
    scheduler.offer(
        victim, demand("victim", min_workers=2, want=4, created=1), ANYWHERE, indexed_view(cluster)
    )
    assert scheduler.snapshot()[victim].workers == 2
    assert scheduler.grant(urgent, urgent_pods, admitted_with=1).workers == 1
    urgent_demand = demand("urgent", per_worker=8, min_workers=1, want=1, priority=100, created=2)
    scheduler.offer(urgent, urgent_demand, ANYWHERE, indexed_view(cluster))
    for _ in range(3):
        scheduler.request("timer", indexed_view(cluster))

    grants = scheduler.snapshot()
    assert grants[victim].workers == 2 and grants[urgent].workers == 1


def test_a_queued_job_is_waited_for_so_an_elastic_job_does_not_grow_onto_its_devices_first() -> None:
    """n2 was freed while the operator was down. elastic (priority 0, 2 to 4 x 4 GPUs) runs 2 workers on n1;
    urgent (priority 10, 1 x 8 GPUs) is queued, with no workers. elastic's first reconcile came first: it
    grew onto n2 (2 -> 4 workers, pods made) and was shrunk back for urgent by the next pass, after a
    checkpoint handshake, for nothing."""
    elastic, urgent = ("ns", "elastic"), ("ns", "urgent")
    pods = [worker("elastic", 0, "n1"), worker("elastic", 1, "n1")]
    cluster = FakeCluster(nodes=[node("n1"), node("n2")], workers={elastic: pods})
    view = replace(indexed_view(cluster), jobs=lambda: [elastic, urgent])  # kopf's index of TrainingJobs
    scheduler, _ = sync_scheduler()
    assert scheduler.grant(elastic, pods, admitted_with=2).workers == 2
    assert scheduler.grant(urgent, []).workers is None

    scheduler.offer(elastic, demand("elastic", min_workers=2, want=4, created=2), ANYWHERE, view)
    assert scheduler.snapshot()[elastic].workers == 2  # no pass yet: urgent has not offered
    urgent_demand = replace(
        demand("urgent", per_worker=8, min_workers=1, want=1, priority=10, created=1), elastic=False
    )
    scheduler.offer(urgent, urgent_demand, ANYWHERE, view)
    grants = scheduler.snapshot()
    assert grants[elastic].workers == 2 and grants[urgent].workers == 1


def test_jobs_created_after_the_first_pass_are_not_waited_for() -> None:
    """A fresh operator under a burst of applies: the index grows with every apply, and waiting for each
    new job's offer held passes back until the burst ended."""
    listed: list[JobKey] = [("ns", "first")]
    cluster = FakeCluster(nodes=[node("n1"), node("n2")])
    view = replace(indexed_view(cluster), jobs=lambda: list(listed))
    scheduler, _ = sync_scheduler()
    listed.append(("ns", "second"))  # applied before the first offer: there at the first pass
    scheduler.offer(("ns", "first"), demand("first", min_workers=1, want=1), ANYWHERE, view)
    assert scheduler.snapshot()[("ns", "first")].workers is None  # waits for second
    listed.append(("ns", "third"))  # applied after the first pass: not waited for
    scheduler.offer(("ns", "second"), demand("second", min_workers=1, want=1), ANYWHERE, view)
    grants = scheduler.snapshot()
    assert grants[("ns", "first")].workers == 1 and grants[("ns", "second")].workers == 1


def test_a_job_whose_first_reconcile_fails_in_its_writes_has_offered_already(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """paused (suspended, no workers) failed every first reconcile at its Service's create (its name taken by
    another object): every restart then waited the whole settle limit before admitting anything. Its offer
    now goes before the writes."""
    kube = FakeKube([])
    kube.jobs["paused"] = job_manifest("paused", replicas=1)
    kube.jobs["paused"]["spec"]["runPolicy"] = {"suspend": True}
    kube.jobs["queued"] = job_manifest("queued", replicas=1)
    kube.fail[("create_service", "paused")] = RuntimeError('services "paused" is taken by another object')
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)
    reconciler = Reconciler(cast(KubeApi, kube), CATALOG, OperatorMetrics())
    paused, queued = (NAMESPACE, "paused"), (NAMESPACE, "queued")
    cluster = FakeCluster(nodes=[node("n1")])
    view = replace(indexed_view(cluster), jobs=lambda: [paused, queued])
    reconciler.reconcile(queued, "resume", view)
    assert reconciler.scheduler.snapshot()[queued].workers is None  # paused not reconciled yet
    reconciler.reconcile(paused, "resume", view)
    assert ("create_service", "paused") in kube.log  # it failed there
    assert reconciler.scheduler.snapshot()[queued].workers == 1
    for key in (paused, queued):
        reconciler.forget(key)  # its retry timer would fire in a later test
    reconciler.forget(paused)


def test_a_victim_that_keeps_its_workers_holds_a_gang_at_most_the_hold_limit() -> None:
    """victim, shrinking 4 -> 2 for urgent (status.gang.roomFrom after a restart), left the queue keeping its 4
    workers (its spec edited invalid: running workers are left alone). urgent's places stayed held, its
    gang clock stopped, for ever."""
    now = [1_000.0]
    scheduler = Scheduler(CATALOG, OperatorMetrics(), SchedulerSettings(debounce=None), clock=lambda: now[0])
    scheduler.reconcile_with(Recorder())
    victim, urgent = ("ns", "victim"), ("ns", "urgent")
    victim_pods = [worker("victim", index, "n1" if index < 2 else "n2") for index in range(4)]
    urgent_pods = [worker("urgent", 0, None, phase="Pending")]
    cluster = FakeCluster(nodes=[node("n1"), node("n2")], workers={victim: victim_pods, urgent: urgent_pods})
    view = replace(indexed_view(cluster), jobs=lambda: [victim, urgent])
    scheduler.grant(victim, victim_pods, admitted_with=4, target=2)
    assert scheduler.grant(urgent, urgent_pods, admitted_with=1, room_from=frozenset({victim})).places_held
    scheduler.offer(victim, None, ANYWHERE, view)
    urgent_demand = demand("urgent", per_worker=8, min_workers=1, want=1, priority=100, created=2)
    scheduler.offer(urgent, urgent_demand, ANYWHERE, view)
    scheduler.request("timer", view)
    assert scheduler.grant(urgent, urgent_pods).places_held  # still leaving, as far as anyone knows
    now[0] += scheduler_module.LEAVING_HOLD_LIMIT_SECONDS + 1
    scheduler.request("timer", view)
    grant = scheduler.grant(urgent, urgent_pods)
    assert not grant.places_held and grant.places_freed_at is not None  # its gang clock runs from now


def test_a_gang_with_no_worker_yet_whose_status_names_jobs_leaving_for_it_is_taken_back_admitted() -> None:
    """urgent creates its workers only once the places victim is leaving are free (decisions/running.py): an
    operator restarted meanwhile found no worker of it and queued it, and the pass preempted another job
    for it while victim's devices were on their way (the review's simulation)."""
    scheduler = Scheduler(CATALOG, OperatorMetrics(), SchedulerSettings(debounce=None))
    scheduler.reconcile_with(Recorder())
    victim, urgent = ("ns", "victim"), ("ns", "urgent")
    grant = scheduler.grant(urgent, [], admitted_with=1, room_from=frozenset({victim}))
    assert grant.workers == 1 and grant.places_held and grant.places_held_by == {victim}
    # Without jobs leaving for it, a job with no worker is queued as before (its status may be stale).
    assert scheduler.grant(("ns", "other"), [], admitted_with=1).workers is None


@pytest.mark.parametrize("leaving", ["terminating", "in-its-handshake"])
def test_a_victim_still_saving_holds_a_gang_past_the_hold_limit(leaving: str) -> None:
    """victim (a checkpoint grace of hours) shrunk 4 -> 2 for urgent, in the queue: its workers 2 and 3
    terminating within a grace ending in 2 h, or still running through the handshake. The limit released
    urgent's clock after an hour while victim still held n2."""
    now = [1_000.0]
    scheduler = Scheduler(CATALOG, OperatorMetrics(), SchedulerSettings(debounce=None), clock=lambda: now[0])
    scheduler.reconcile_with(Recorder())
    victim, urgent = ("ns", "victim"), ("ns", "urgent")
    ends = rfc3339(datetime.now(UTC) + timedelta(hours=2))
    saving = [worker("victim", index, "n2") for index in (2, 3)]
    if leaving == "terminating":
        saving = [replace(pod, terminating=True, deletion_timestamp=ends) for pod in saving]
    victim_pods = [worker("victim", index, "n1") for index in range(2)] + saving
    urgent_pods = [worker("urgent", 0, None, phase="Pending")]
    cluster = FakeCluster(nodes=[node("n1"), node("n2")], workers={victim: victim_pods, urgent: urgent_pods})
    view = replace(indexed_view(cluster), jobs=lambda: [victim, urgent])
    scheduler.grant(victim, victim_pods, admitted_with=4, target=2)
    assert scheduler.grant(urgent, urgent_pods, admitted_with=1, room_from=frozenset({victim})).places_held
    scheduler.offer(victim, demand("victim", min_workers=2, want=2, created=1), ANYWHERE, view)
    urgent_demand = demand("urgent", per_worker=8, min_workers=1, want=1, priority=100, created=2)
    scheduler.offer(urgent, urgent_demand, ANYWHERE, view)
    scheduler.request("timer", view)
    now[0] += scheduler_module.LEAVING_HOLD_LIMIT_SECONDS + 1
    scheduler.request("timer", view)
    assert scheduler.grant(urgent, urgent_pods).places_held


def test_kopfs_index_of_trainingjobs_reaches_the_settle_through_the_registered_handlers() -> None:
    """The index handlers.register registers, fed TrainingJob events through kopf's own indexing, is what
    the view's jobs() reads (a job deleted leaves it; one made again under its name stays)."""
    registry = kopf.OperatorRegistry()
    stand_in = SimpleNamespace(
        jobs=SimpleNamespace(keys=list), created_here=lambda key, name: False, api=None
    )
    handlers.register(registry, cast(Any, stand_in), cast(Any, SimpleNamespace()))
    indexers = indexing.OperatorIndexers()
    indexers.ensure(registry._indexing.get_all_handlers())  # noqa: SLF001 - kopf keeps them there
    resource = references.Resource(GROUP, VERSION, PLURAL, namespaced=True)
    memories = ResourceMemories()

    async def feed(event_type: str | None, namespace: str, name: str, uid: str) -> None:
        job = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob",
               "metadata": {"namespace": namespace, "name": name, "uid": uid}}  # fmt: skip
        memory = await memories.recall(raw_body=job)
        await indexing.index_resource(
            indexers=indexers, registry=registry, settings=kopf.OperatorSettings(), resource=resource,
            raw_event={"type": event_type, "object": job}, body=bodies.Body(job),
            memory=memory.indexing_memory, logger=logging.getLogger("test"), memo=ephemera.Memo(),
        )  # fmt: skip

    async def events() -> None:
        await feed(None, "ml", "queued", "uid-1")  # the listing at the start
        await feed(None, "team-b", "running", "uid-2")
        await feed("ADDED", "ml", "gone", "uid-3")
        await feed("DELETED", "ml", "gone", "uid-3")

    asyncio.run(events())
    view = handlers.cluster_view(**handlers._indexes(dict(indexers.indices)))  # noqa: SLF001
    assert sorted(view.jobs()) == [("ml", "queued"), ("team-b", "running")]


def test_the_view_lists_every_job_kopfs_index_of_trainingjobs_holds() -> None:
    indexes: dict[str, Any] = {"kubefit_nodes": {}, "kubefit_pod_usage": {}, "kubefit_workers": {}}
    assert list(cluster_view(**indexes).jobs()) == []
    jobs = {("ns", "queued"): ["uid-queued"], ("other", "running"): ["uid-running"]}
    assert sorted(cluster_view(**indexes, kubefit_jobs=cast(Any, jobs)).jobs()) == sorted(jobs)


def test_a_running_job_that_never_offers_holds_passes_back_for_the_settle_limit_only() -> None:
    """a's reconcile keeps failing: after RESTART_SETTLE_SECONDS from the first pass that waited, passes go on,
    a's bound worker counted as another workload's devices."""
    now = [1_000.0]
    scheduler = Scheduler(CATALOG, OperatorMetrics(), SchedulerSettings(debounce=None), clock=lambda: now[0])
    scheduler.reconcile_with(Recorder())
    a, b = ("ns", "a"), ("ns", "b")
    cluster = FakeCluster(nodes=[node("n1")], workers={a: [worker("a", 0, "n1")]})
    scheduler.offer(b, demand("b", min_workers=1, want=2, created=2), ANYWHERE, indexed_view(cluster))
    now[0] += RESTART_SETTLE_SECONDS - 1
    scheduler.request("timer", indexed_view(cluster))
    assert scheduler.snapshot()[b].workers is None

    now[0] += 1
    scheduler.request("timer", indexed_view(cluster))
    assert scheduler.snapshot()[b].workers == 1  # 4 of the 8 GPUs: a's worker holds the others


def test_a_start_with_no_live_workers_is_not_held_back() -> None:
    """Jobs whose workers have all finished or are being deleted are not waited for as running jobs (this
    view has no index of TrainingJobs: with one, every job listed at the start is waited for)."""
    gone, b = ("ns", "gone"), ("ns", "b")
    pods = [worker("gone", 0, "n1", phase="Succeeded"), worker("gone", 1, "n1", terminating=True)]
    cluster = FakeCluster(nodes=[node("n1")], workers={gone: pods})
    scheduler, _ = sync_scheduler()
    scheduler.offer(b, demand("b", min_workers=1, want=1), ANYWHERE, indexed_view(cluster))
    assert scheduler.snapshot()[b].workers == 1


def test_the_last_running_job_offering_nothing_still_lets_the_waiting_pass_run() -> None:
    """A job with live workers that needs nothing now (suspended, its workers still saving) offers None: that is
    its offer, and the pass runs at once, not at the next trigger."""
    a, b = ("ns", "a"), ("ns", "b")
    cluster = FakeCluster(nodes=[node("n1")], workers={a: [worker("a", 0, "n1")]})
    scheduler, _ = sync_scheduler()
    scheduler.offer(b, demand("b", min_workers=1, want=1), ANYWHERE, indexed_view(cluster))
    assert scheduler.snapshot()[b].workers is None
    scheduler.offer(a, None, ANYWHERE, indexed_view(cluster))
    assert scheduler.snapshot()[b].workers == 1


def test_the_operators_view_lists_the_jobs_kopfs_index_holds_workers_of() -> None:
    pod = worker("a", 0, "n1")
    view = cluster_view(cast(Any, {}), cast(Any, {}), cast(Any, {("ns", "a"): [pod]}))
    assert list(view.jobs_with_workers()) == [("ns", "a")]
    assert list(FakeCluster().view().jobs_with_workers()) == []  # a view built without the index: none


def test_through_the_reconciler_a_restart_that_reconciles_the_queued_job_first_admits_no_one_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first test's cluster, with each process's reconciles: b's pod was not created by the restarted one."""
    monkeypatch.setattr(kopf, "event", lambda *_, **__: None)
    kube = FakeKube([])
    nodes = [node("n1")]

    def view() -> ClusterView:
        def workers(key: JobKey) -> list[WorkerPod]:
            return [pod for name, pod in kube.pods.items() if name.startswith(f"{key[1]}-worker-")]

        def usage() -> dict[str, list[PodUsage]]:
            bound = [pod.node_name for pod in kube.pods.values() if pod.node_name and not pod.finished]
            return {name: [PodUsage(name, {GPU: 4})] * bound.count(name) for name in set(bound)}

        jobs = lambda: sorted({(NAMESPACE, name.split("-worker-")[0]) for name in kube.pods})  # noqa: E731
        return ClusterView(lambda: nodes, usage, workers, jobs)

    for name, replicas, created in (("a", 2, "2025-01-01T00:00:00Z"), ("b", 1, "2025-01-01T00:01:00Z")):
        manifest = job_manifest(name, replicas=replicas)
        manifest["spec"]["resources"]["acceleratorsPerWorker"] = 4
        manifest["metadata"]["creationTimestamp"] = created
        kube.jobs[name] = manifest
    before = Reconciler(cast(KubeApi, kube), CATALOG, OperatorMetrics())
    before.reconcile((NAMESPACE, "a"), "create", view())
    before.reconcile((NAMESPACE, "b"), "create", view())
    kube.pods["a-worker-0"] = replace(kube.pods["a-worker-0"], node_name="n1")
    before.reconcile((NAMESPACE, "b"), "pod", view())

    after = Reconciler(cast(KubeApi, kube), CATALOG, OperatorMetrics())
    for name in ("b", "a"):  # b's listing event handled first
        after.jobs.observe((NAMESPACE, name), copy.deepcopy(kube.jobs[name]))
        after.reconcile((NAMESPACE, name), "resume", view())
    grants = after.scheduler.snapshot()
    assert grants[(NAMESPACE, "a")].workers == 2 and grants[(NAMESPACE, "b")].workers == 0
    assert "b-worker-0" not in kube.pods


def test_with_the_operators_debounce_the_pass_runs_at_the_settle_limit_with_no_other_trigger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduler_module, "RESTART_SETTLE_SECONDS", 0.3)
    scheduler = Scheduler(CATALOG, OperatorMetrics(), SchedulerSettings())
    scheduler.reconcile_with(Recorder())
    a, b = ("ns", "a"), ("ns", "b")
    cluster = FakeCluster(nodes=[node("n1")], workers={a: [worker("a", 0, "n1")]})
    scheduler.offer(b, demand("b", min_workers=1, want=2), ANYWHERE, indexed_view(cluster))
    time.sleep(0.15)
    assert scheduler.snapshot()[b].workers is None
    deadline = time.monotonic() + 5
    while scheduler.snapshot()[b].workers is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert scheduler.snapshot()[b].workers == 1
