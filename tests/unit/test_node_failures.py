"""A fixed group that loses a worker with its node: the kubelet dies first, so the worker reads not ready
(node_lost) before it is evicted, and the status written meanwhile counts it out."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any, cast

from test_reconcile import CATALOG, NOW, decide, events_of, observe, pod, status_of

from kubefit.api.units import rfc3339
from kubefit.controller.handlers import cluster_view
from kubefit.controller.reconciler import _on_lost_nodes


def test_a_fixed_groups_worker_evicted_from_a_node_that_went_not_ready_is_lost_and_the_group_restarts() -> (
    None
):
    # It stayed Scaling 1/2 for ever: no WorkerLost, no restart, and its place reserved for nobody.
    w0, w1 = pod(0, attempt=0, node="node-a"), pod(1, attempt=0, node="node-b")
    healthy = decide(observe(pods=[w0, w1]), CATALOG).status
    silent = replace(w1, node_lost=True)
    not_ready = decide(observe(pods=[w0, silent], status=healthy, now=NOW + timedelta(seconds=40)), CATALOG)
    assert status_of(not_ready)["readyReplicas"] == 1 and not_ready.delete == ()
    evicted = replace(
        silent, terminating=True, disrupted=True, deletion_timestamp=rfc3339(NOW + timedelta(seconds=370))
    )
    lost = decide(
        observe(pods=[w0, evicted], status=not_ready.status, now=NOW + timedelta(seconds=400)), CATALOG
    )
    assert ("Warning", "WorkerLost") in events_of(lost)
    assert lost.delete == ("llama-worker-0",)
    assert status_of(lost)["restarts"] == 0  # a node's loss is not the job's failure


def test_a_worker_that_never_ran_on_a_node_lost_is_not_taken_for_a_lost_one() -> None:
    w0, w1 = pod(0, attempt=0, node="node-a"), pod(1, "Pending", attempt=0, node="node-b")
    started = decide(observe(pods=[w0, w1]), CATALOG).status
    gone = replace(w1, node_lost=True, terminating=True)
    decision = decide(observe(pods=[w0, gone], status=started, now=NOW + timedelta(seconds=60)), CATALOG)
    assert ("Warning", "WorkerLost") not in events_of(decision)


def test_a_worker_on_a_deleted_node_is_lost_before_the_pod_garbage_collector_removes_it() -> None:
    # Its pod reads Running for the ~40 s quarantine: a scale-down asked it for a checkpoint and then
    # deleted a healthy worker in its place.
    on_deleted, on_live = pod(0, node="gone"), pod(1, node="node-a")
    view = cluster_view(cast(Any, {"node-a": []}), cast(Any, {}), cast(Any, {}))
    marked = _on_lost_nodes([on_deleted, on_live], frozenset(), view.node_exists)
    assert [worker.node_lost for worker in marked] == [True, False]
    not_ready = _on_lost_nodes([on_deleted, on_live], frozenset({"node-a"}))
    assert [worker.node_lost for worker in not_ready] == [False, True]
    assert _on_lost_nodes([pod(2, "Pending", node=None)], frozenset(), view.node_exists)[0].node_lost is False


def test_a_worker_whose_node_went_not_ready_and_whose_pod_then_vanished_restarts_the_group() -> None:
    # The pod went without being seen terminating (the node object deleted, the pod garbage collector's
    # force delete; or `kubectl delete pod --force`, the way out a stuck worker's message gives). The status
    # written while its node was lost counted it out, so the group read as never all running, and a lone
    # new rank 1 was created to join a worker 0 mid-training: a hang until the collectives time out.
    w0, w1 = pod(0, attempt=0, node="node-a"), pod(1, attempt=0, node="node-b")
    first = decide(observe(pods=[w0, w1]), CATALOG)
    assert status_of(first)["gang"]["running"] is True
    healthy = first.status
    silent = replace(w1, node_lost=True)
    not_ready = decide(observe(pods=[w0, silent], status=healthy, now=NOW + timedelta(seconds=40)), CATALOG)
    assert status_of(not_ready)["readyReplicas"] == 1
    vanished = decide(observe(pods=[w0], status=not_ready.status, now=NOW + timedelta(seconds=80)), CATALOG)
    assert ("Warning", "WorkerLost") in events_of(vanished)
    assert vanished.create == () and vanished.delete == ("llama-worker-0",)
    assert status_of(vanished)["gang"]["attempt"] == 1 and status_of(vanished)["restarts"] == 0
    assert status_of(vanished)["gang"]["running"] is False  # the new attempt has not run yet
