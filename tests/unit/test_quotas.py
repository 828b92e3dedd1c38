"""A job's demand within its namespace's ResourceQuotas (decisions/quota.py, scheduled._within_quota).

Before, a gang admitted past its namespace's quota preempted a lower-priority job, had its creates refused
(403 exceeded quota) and gave its grant back: the other job lost its workers for nothing. Now the job's demand
is capped at what the quotas have room for, and a queued job whose minimum is over it asks for nothing: it is
Queued with Admitted=False QuotaExceeded, naming the quota, and is decided again when a quota there changes.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import test_reconciler
from test_admission import NOW, gang, holding, job, key, low_jobs, nodes, plan
from test_reconcile import CATALOG, condition, decide, observe
from test_reconcile import NOW as NOW_DT
from test_reconciler import KEY, NAMESPACE, Harness, harness, job_manifest
from test_refused_workers import OTHER, both_reconciled, restarted, run_on_h0

from kubefit.controller.pass_inputs import charged_workers
from kubefit.controller.quotas import QuotaChange, QuotaLimits
from kubefit.decisions.admission import Demand, Holding, plan_admissions
from kubefit.decisions.inventory import NodeFacts
from kubefit.decisions.observed import WorkerPod
from kubefit.decisions.quota import (
    OwnPods,
    Quota,
    QuotaClaim,
    QuotaRoom,
    QuotaState,
    ScopeTerm,
    pod_charges,
    quota_free,
    quota_from,
    quota_room,
    selects,
)
from kubefit.decisions.scheduled import _within_quota

__all__ = ["harness"]  # the fixture, by import

GPU = "requests.nvidia.com/gpu"


def gpu_quota(hard: int, used: int, name: str = "team-gpus") -> Quota:
    return Quota(name, {GPU: Decimal(hard)}, {GPU: Decimal(used)})


def worker(requests: dict[str, Any] | None = None, limits: dict[str, Any] | None = None, **spec: Any) -> dict:
    resources = {"requests": requests or {}, "limits": limits or {}}
    return {"spec": {"containers": [{"name": "trainer", "resources": resources}], **spec}}


# ------------------------------------------------------------------------------------------ pure reading


def test_a_pod_is_charged_its_requests_limits_extended_resources_and_one_pod() -> None:
    pod = worker({"cpu": "4", "memory": "64Gi"}, {"memory": "80Gi", "nvidia.com/gpu": "8"})
    pod["spec"]["initContainers"] = [{"name": "fetch", "resources": {"requests": {"cpu": "6"}}}]
    charges = pod_charges(pod)
    assert charges["pods"] == charges["count/pods"] == 1
    # The init container's 6 cpu is more than the containers' 4: the API server charges the larger.
    assert charges["requests.cpu"] == charges["cpu"] == 6
    assert charges["requests.memory"] == charges["memory"] == 64 * 2**30
    assert charges["limits.memory"] == 80 * 2**30
    assert charges[GPU] == 8  # an extended resource given only as a limit is requested at it
    assert "limits.cpu" not in charges and "limits.nvidia.com/gpu" not in charges


def test_sidecars_add_to_the_containers_and_hugepages_are_charged_as_the_api_server_does() -> None:
    pod = worker({"cpu": "8", "hugepages-2Mi": "1Gi", "example.kubernetes.io/native": "1"})
    pod["spec"]["initContainers"] = [
        {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "2"}}},
        {"name": "fetch", "resources": {"requests": {"cpu": "9"}}},  # started after the proxy: 11 then
    ]
    charges = pod_charges(pod)
    assert charges["requests.cpu"] == 11  # max(8 + 2 running, 2 + 9 while fetching)
    assert charges["hugepages-2Mi"] == charges["requests.hugepages-2Mi"] == 2**30
    assert "requests.example.kubernetes.io/native" not in charges  # a native resource's name, not extended


def test_a_quota_is_read_from_its_status_with_its_scopes() -> None:
    body = {
        "metadata": {"name": "gpus"},
        "spec": {
            "scopes": ["NotTerminating"],
            "scopeSelector": {
                "matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]
            },
        },
        "status": {"hard": {GPU: "16", "requests.memory": "1Ti"}, "used": {GPU: "8"}},
    }
    quota = quota_from(body)
    assert quota == Quota(
        "gpus",
        {GPU: Decimal(16), "requests.memory": Decimal(2**40)},
        {GPU: Decimal(8)},
        (ScopeTerm("NotTerminating", "Exists"), ScopeTerm("PriorityClass", "In", ("high",))),
    )
    # Unreadable, or limiting nothing: left to the API server's refusal.
    assert quota_from({"metadata": {"name": "odd"}, "status": {"hard": {GPU: "many"}}}) is None
    assert quota_from({"metadata": {"name": "none"}, "spec": {"hard": {}}}) is None


def test_a_quota_whose_spec_is_ahead_of_its_status_is_read_as_the_api_server_goes_by_it() -> None:
    # The API server goes by the status until the quota controller counts the edited spec: a lowered limit
    # is taken at once (the stricter of the two), a key added to the spec is not counted yet.
    lowered = {
        "metadata": {"name": "q"},
        "spec": {"hard": {GPU: "3"}},
        "status": {"hard": {GPU: "4"}, "used": {GPU: "2"}},
    }
    assert quota_from(lowered) == Quota("q", {GPU: Decimal(3)}, {GPU: Decimal(2)})
    raised = {**lowered, "spec": {"hard": {GPU: "8"}}}
    assert quota_from(raised) == Quota("q", {GPU: Decimal(4)}, {GPU: Decimal(2)})
    added = {**lowered, "spec": {"hard": {GPU: "4", "pods": "10"}}}
    assert quota_from(added) == Quota("q", {GPU: Decimal(4), "pods": Decimal(10)}, {}, counted=False)


def test_a_quota_not_counted_yet_is_read_from_its_spec_and_has_room_for_no_worker() -> None:
    # Created a moment ago: kube-controller-manager has not written its status. The API server admits what it
    # would charge till then, and refuses it from the count on: the job waits for the count.
    body = {"metadata": {"name": "new", "uid": "u1"}, "spec": {"hard": {GPU: "16"}}, "status": {}}
    quota = quota_from(body)
    assert quota == Quota("new", {GPU: Decimal(16)}, {}, counted=False)
    room = quota_room([quota], worker({"nvidia.com/gpu": 8}))
    assert room is not None and (room.workers, room.counted) == (0, False)
    assert room.describe() == (
        "ResourceQuota new is not counted yet (requests.nvidia.com/gpu: 16; the quota controller has not "
        "written its status): the job waits for the count"
    )
    assert quota_free("ml", [quota]) == {("ml", "new", GPU): 0}
    # It stands before a counted quota with less room, whose message would say the wrong thing.
    tight = quota_room([gpu_quota(8, 8, "full"), quota], worker({"nvidia.com/gpu": 8}))
    assert tight is not None and tight.quota == "new"
    # A worker it does not charge is not held by it.
    assert quota_room([quota], worker({"cpu": "1"})) is None
    # Its first count is a change of limits: every job of the namespace is decided again.
    limits = QuotaLimits()
    assert limits.observe("ADDED", body) is QuotaChange.LIMITS
    counted = {**body, "status": {"hard": {GPU: "16"}, "used": {GPU: "0"}}}
    assert limits.observe("MODIFIED", counted) is QuotaChange.LIMITS


@pytest.mark.parametrize(
    ("term", "spec", "selected"),
    [
        (ScopeTerm("NotTerminating", "Exists"), {}, True),
        (ScopeTerm("Terminating", "Exists"), {}, False),
        (ScopeTerm("Terminating", "Exists"), {"activeDeadlineSeconds": 3600}, True),
        (ScopeTerm("NotBestEffort", "Exists"), {}, True),
        (ScopeTerm("BestEffort", "Exists"), {}, False),
        (ScopeTerm("PriorityClass", "In", ("high",)), {"priorityClassName": "high"}, True),
        (ScopeTerm("PriorityClass", "In", ("high",)), {"priorityClassName": "low"}, False),
        (ScopeTerm("PriorityClass", "NotIn", ("high",)), {"priorityClassName": "low"}, True),
        (ScopeTerm("PriorityClass", "Exists"), {"priorityClassName": "low"}, True),
        (ScopeTerm("PriorityClass", "DoesNotExist"), {"priorityClassName": "low"}, False),
        # No class named: the cluster's globalDefault class, if any, is the pod's (not read here).
        (ScopeTerm("PriorityClass", "DoesNotExist"), {}, None),
        (ScopeTerm("PriorityClass", "NotIn", ("high",)), {}, None),
        (ScopeTerm("CrossNamespacePodAffinity", "Exists"), {}, None),  # not read here: left to the API server
    ],
)
def test_a_quota_charges_only_the_pods_its_scopes_select(
    term: ScopeTerm, spec: dict[str, Any], selected: bool | None
) -> None:
    quota = Quota("q", {GPU: Decimal(1)}, {}, (term,))
    assert selects(quota, worker({"cpu": "1"}, {"nvidia.com/gpu": "1"}, **spec)) is selected


def test_the_room_is_the_tightest_quota_that_selects_the_worker() -> None:
    pod = worker({"cpu": "8"}, {"nvidia.com/gpu": "4"})
    quotas = [
        gpu_quota(64, 40, "roomy"),  # 6 more workers of 4
        Quota("cpus", {"requests.cpu": Decimal(40), "services": Decimal(1)}, {"requests.cpu": Decimal(20)}),
        Quota("elsewhere", {GPU: Decimal(0)}, {}, (ScopeTerm("Terminating", "Exists"),)),  # not selected
        Quota("unknown-scope", {GPU: Decimal(0)}, {}, (ScopeTerm("CrossNamespacePodAffinity", "Exists"),)),
    ]
    room = quota_room(quotas, pod)
    assert room is not None
    assert (room.quota, room.resource, room.workers) == ("cpus", "requests.cpu", 2)
    assert room.describe() == (
        "ResourceQuota cpus has room for 2 of the job's workers (requests.cpu: 20 of 40 used by other pods, "
        "8 per worker)"
    )
    # The job's own pods: two live (charged like a worker) and one finished (only object counts charge it).
    own = OwnPods(charged=2, finished=1)
    mine = quota_room(
        [gpu_quota(16, 12), Quota("objects", {"count/pods": Decimal(5)}, {"count/pods": Decimal(5)})],
        pod,
        own,
    )
    assert mine is not None and (mine.resource, mine.workers, mine.used_by_others) == (GPU, 3, 4)
    over = quota_room([gpu_quota(8, 10)], pod)  # used above hard (the quota was lowered): no room, not less
    assert over is not None and over.workers == 0
    assert quota_room([Quota("services", {"services": Decimal(5)}, {})], pod) is None


def test_a_limit_the_worker_does_not_state_is_left_to_the_api_server_and_the_rest_of_the_quota_judged() -> (
    None
):
    # The API server refuses such a pod ("must specify limits.memory") unless a LimitRange's default gives it
    # one first, which is not read here: judging that key could keep a job waiting that the API server admits.
    # The quota's other keys (the accelerators of Kubernetes' "compute-resources" example) still hold.
    pod = worker({"cpu": "8", "memory": "64Gi"}, {"nvidia.com/gpu": "4"})
    compute = Quota(
        "compute",
        {
            "limits.memory": Decimal(2**40),
            "limits.cpu": Decimal(1),
            "requests.ephemeral-storage": Decimal(1),
            GPU: Decimal(16),
        },
        {GPU: Decimal(12)},
    )
    room = quota_room([compute], pod)
    assert room is not None and (room.resource, room.workers) == (GPU, 1)
    stated = worker({"cpu": "8", "memory": "64Gi"}, {"cpu": "8", "nvidia.com/gpu": "4"})
    room = quota_room([compute], stated)
    assert room is not None and (room.resource, room.workers) == ("limits.cpu", 0)


# ------------------------------------------------------------------------------------------ decisions


@pytest.fixture(autouse=True)
def one_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """One node of 2 GPUs: two workers of 1 GPU fill it."""
    node = NodeFacts("h0", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {"nvidia.com/gpu": "2"})
    monkeypatch.setattr(test_reconciler, "NODES", [node])


def llama_pods(harness: Harness) -> list[str]:
    return sorted(name for name in harness.kube.pods if name.startswith("llama-"))


def other_running_on_h0(harness: Harness) -> None:
    """The other job's 2 workers run on the node, filling it."""
    harness.kube.jobs["other"] = job_manifest("other", replicas=2)
    harness.reconcile(key=OTHER)
    run_on_h0(harness, "other")
    harness.reconcile("pod", key=OTHER)


def test_a_gang_over_its_quota_is_queued_and_preempts_no_one_until_the_quota_has_room(
    harness: Harness,
) -> None:
    other_running_on_h0(harness)
    harness.quotas = [gpu_quota(3, 2)]  # the other job's 2 GPUs are charged; room for 1 more worker
    llama = job_manifest(replicas=2)
    llama["spec"]["scheduling"] = {"priority": 100, "preemption": "LowerPriority"}
    harness.kube.jobs["llama"] = llama
    harness.reconcile()
    both_reconciled(harness)
    admitted = harness.condition("Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "QuotaExceeded")
    assert admitted["message"] == (
        "ResourceQuota team-gpus has room for 1 of the job's workers (requests.nvidia.com/gpu: 2 of 3 used "
        "by other pods, 1 per worker); the job needs 2 workers"
    )
    assert harness.kube.jobs["llama"]["status"]["phase"] == "Queued"
    assert not harness.events("Preempted") and not llama_pods(harness)
    assert [(event[2], event[3]) for event in harness.events("QuotaExceeded")] == [
        (admitted["message"], "Warning")
    ]
    assert sorted(harness.kube.pods) == ["other-worker-0", "other-worker-1"]
    assert harness.reconciler._jobs[KEY].quota_limited
    # The quota raised: the job is decided again, preempts the other job and starts.
    harness.quotas = [gpu_quota(4, 2)]
    harness.reconciler.quota_changed(NAMESPACE, harness.view())
    both_reconciled(harness)
    assert len(harness.events("Preempted")) == 1
    assert harness.condition("Admitted")["status"] == "True"
    assert llama_pods(harness) == ["llama-worker-0", "llama-worker-1"]
    assert not harness.reconciler._jobs[KEY].quota_limited


def apply_elastic_llama(harness: Harness) -> None:
    """The elastic job llama, 1 to 2 workers of 1 GPU, wanting 2."""
    llama = job_manifest(replicas=2, minReplicas=1, maxReplicas=2)
    llama["spec"]["elastic"]["enabled"] = True
    harness.kube.jobs["llama"] = llama


def uncounted_gpu_quota(hard: int) -> Quota:
    return Quota("team-gpus", {GPU: Decimal(hard)}, {}, counted=False)


@pytest.mark.parametrize("same_namespace", [False, True], ids=["other-namespace", "own-namespace"])
def test_a_gang_whose_quota_is_not_counted_yet_waits_for_the_count_and_preempts_no_one(
    harness: Harness, same_namespace: bool
) -> None:
    # The quota was created just before the job, and the quota controller has not counted it: it reads as no
    # quota at all to the pass, which preempted the other job for a worker the API server then refused. The
    # other job in the job's own namespace would free the quota too, once counted: not before.
    other_running_on_h0(harness)
    harness.quotas = [uncounted_gpu_quota(3)]
    llama = job_manifest(replicas=2)
    llama["spec"]["scheduling"] = {"priority": 100, "preemption": "LowerPriority"}
    harness.kube.jobs["llama"] = llama
    if same_namespace:
        for name in ("other", "llama"):
            harness.reconciler.jobs.observe((NAMESPACE, name), harness.kube.jobs[name])
    harness.reconcile()
    both_reconciled(harness)
    admitted = harness.condition("Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "QuotaExceeded")
    assert admitted["message"] == (
        "ResourceQuota team-gpus is not counted yet (requests.nvidia.com/gpu: 3; the quota controller has not "
        "written its status): the job waits for the count; the job needs 2 workers"
    )
    assert not harness.events("Preempted") and not llama_pods(harness)
    assert sorted(harness.kube.pods) == ["other-worker-0", "other-worker-1"]
    # Counted, with the other job's 2 GPUs charged: room for 1 worker only, said so.
    harness.quotas = [gpu_quota(3, 2)]
    harness.reconciler.quota_changed(NAMESPACE, harness.view(), every_job=True)
    both_reconciled(harness)
    if same_namespace:  # preempting the other job frees its quota: it does
        assert len(harness.events("Preempted")) == 1
        assert llama_pods(harness) == ["llama-worker-0", "llama-worker-1"]
    else:
        assert harness.condition("Admitted")["message"].startswith("ResourceQuota team-gpus has room for 1 ")
        assert not harness.events("Preempted") and not llama_pods(harness)


def test_a_capped_jobs_admitted_message_does_not_follow_the_usage_of_other_pods(harness: Harness) -> None:
    # Every fall in the namespace's usage decides the quota-limited jobs again: a message naming the others'
    # usage rewrote the status and posted an Admitted event each time, the grant unchanged.
    apply_elastic_llama(harness)
    harness.quotas = [gpu_quota(4, 3)]
    harness.reconcile()
    run_on_h0(harness, "llama")
    harness.quotas = [gpu_quota(4, 4)]
    harness.reconcile("pod")
    message, writes = harness.condition("Admitted")["message"], len(harness.calls("patch_job_status"))
    # Half a GPU of another pod's gone: still room for 1 worker only.
    harness.quotas = [replace(harness.quotas[0], used={GPU: Decimal("3.5")})]
    harness.reconciler.quota_changed(NAMESPACE, harness.view())
    harness.reconcile("pod")
    assert harness.condition("Admitted")["message"] == message
    assert len(harness.calls("patch_job_status")) == writes


def test_a_recovered_grant_tells_its_quota_afresh_after_a_restart(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One node of 1 GPU: once the quota is gone, the node holds the job at 1 worker.
    node = NodeFacts("h0", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {"nvidia.com/gpu": "1"})
    monkeypatch.setattr(test_reconciler, "NODES", [node])
    apply_elastic_llama(harness)
    harness.quotas = [gpu_quota(1, 0)]
    harness.reconcile()
    run_on_h0(harness, "llama")
    harness.quotas = [gpu_quota(1, 1)]
    harness.reconcile("pod")
    assert "ResourceQuota team-gpus" in harness.condition("Admitted")["message"]
    # The quota deleted while the operator was down: its words do not outlive it.
    harness.quotas = []
    restarted(harness)
    for _ in range(2):
        harness.reconcile("pod")
    assert harness.condition("Admitted")["message"] == "1 of 2 workers granted: no capacity for more"


def test_a_running_job_keeps_its_workers_under_a_quota_not_counted_yet_and_does_not_grow(
    harness: Harness,
) -> None:
    apply_elastic_llama(harness)
    harness.quotas = [gpu_quota(1, 0)]
    harness.reconcile()
    run_on_h0(harness, "llama")
    harness.reconcile("pod")
    assert llama_pods(harness) == ["llama-worker-0"]
    # The quota replaced by a larger one, not counted yet: the job keeps its worker and waits for the count.
    harness.quotas = [uncounted_gpu_quota(2)]
    harness.reconciler.quota_changed(NAMESPACE, harness.view(), every_job=True)
    harness.reconcile("pod")
    assert llama_pods(harness) == ["llama-worker-0"]
    assert harness.condition("Admitted")["status"] == "True"
    harness.quotas = [gpu_quota(2, 1)]
    harness.reconciler.quota_changed(NAMESPACE, harness.view(), every_job=True)
    harness.reconcile("pod")
    assert llama_pods(harness) == ["llama-worker-0", "llama-worker-1"]


def test_an_elastic_job_grows_only_as_far_as_its_quota_allows(harness: Harness) -> None:
    apply_elastic_llama(harness)
    harness.quotas = [gpu_quota(1, 0)]
    harness.reconcile()
    assert llama_pods(harness) == ["llama-worker-0"]
    assert harness.reconciler._jobs[KEY].quota_limited
    # The quota holds it below its replicas, not capacity (the node has room for both): said so.
    assert harness.condition("Admitted")["message"] == (
        "1 of 2 workers granted: ResourceQuota team-gpus has room for 1 of the job's workers "
        "(requests.nvidia.com/gpu: 1 in all, 1 per worker)"
    )
    run_on_h0(harness, "llama")
    harness.quotas = [gpu_quota(1, 1)]  # its own worker is charged now: it keeps it, and grows no further
    harness.reconcile("pod")
    assert llama_pods(harness) == ["llama-worker-0"]
    assert harness.condition("Admitted")["status"] == "True"
    harness.quotas = [gpu_quota(2, 1)]
    harness.reconciler.quota_changed(NAMESPACE, harness.view())
    harness.reconcile("pod")
    assert llama_pods(harness) == ["llama-worker-0", "llama-worker-1"]


def test_a_granted_job_whose_workers_the_quota_shows_before_the_index_does_is_not_queued(
    harness: Harness,
) -> None:
    # The quota's watch can show the creates charged before kopf's index of pods shows the pods: the job
    # then seems to have no worker and no room. Its creates that the index does not show yet count as its
    # own, so it is neither queued nor shrunk.
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.quotas = [gpu_quota(2, 0)]
    harness.reconcile()
    assert llama_pods(harness) == ["llama-worker-0", "llama-worker-1"]
    harness.quotas = [gpu_quota(2, 2)]
    harness.index_lags = True
    harness.reconcile("pod")
    assert harness.condition("Admitted")["status"] == "True"
    assert llama_pods(harness) == ["llama-worker-0", "llama-worker-1"]


def test_a_quota_change_decides_again_only_the_jobs_a_quota_held_back_unless_its_limits_changed(
    harness: Harness,
) -> None:
    harness.kube.jobs["other"] = job_manifest("other", replicas=1)
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    for name in ("other", "llama"):
        harness.reconciler.jobs.observe((NAMESPACE, name), harness.kube.jobs[name])
    harness.quotas = [gpu_quota(2, 0)]
    harness.reconcile(key=OTHER)  # 1 worker: within the quota
    harness.quotas = [gpu_quota(2, 1)]
    harness.reconcile()  # 2 workers, room for 1: held back
    reconciled: list[tuple[str, str]] = []
    original = harness.reconciler.reconcile
    harness.reconciler.reconcile = lambda key, trigger, view: reconciled.append((key[1], trigger))  # type: ignore[method-assign]
    harness.reconciler.quota_changed(NAMESPACE, harness.view())
    assert reconciled == [("llama", "quota")]
    reconciled.clear()
    harness.reconciler.quota_changed(NAMESPACE, harness.view(), every_job=True)
    assert reconciled == [("llama", "quota"), ("other", "quota")]
    reconciled.clear()
    harness.reconciler.quota_changed("team-b", harness.view(), every_job=True)
    assert reconciled == []
    harness.reconciler.reconcile = original  # type: ignore[method-assign]


def test_what_a_quota_event_changed_decides_which_jobs_are_decided_again() -> None:
    limits = QuotaLimits()
    created = {"metadata": {"uid": "q1"}, "spec": {"hard": {GPU: "8"}}}
    counted = {**created, "status": {"hard": {GPU: "8"}, "used": {GPU: "0"}}}
    grown = {**created, "status": {"hard": {GPU: "8"}, "used": {GPU: "4"}}}
    raised = {
        "metadata": {"uid": "q1"},
        "spec": {"hard": {GPU: "16"}},
        "status": {"hard": {GPU: "16"}, "used": {GPU: "4"}},
    }
    fell = {**raised, "status": {"hard": {GPU: "16"}, "used": {GPU: "2"}}}
    assert limits.observe("ADDED", created) is QuotaChange.LIMITS
    # The quota controller's first count: the index has the quota only from now on.
    assert limits.observe("MODIFIED", counted) is QuotaChange.LIMITS
    assert limits.observe("MODIFIED", grown) is QuotaChange.NONE  # a pod created: held jobs stay held
    assert limits.observe("MODIFIED", raised) is QuotaChange.LIMITS
    assert limits.observe("MODIFIED", fell) is QuotaChange.ROOM  # a pod gone: the held jobs again
    assert limits.observe(None, fell) is QuotaChange.NONE  # listed again as it was
    assert limits.observe(None, raised) is QuotaChange.NONE  # usage grew during a watch break
    assert limits.observe(None, fell) is QuotaChange.ROOM  # and fell
    assert limits.observe("DELETED", fell) is QuotaChange.LIMITS
    # Listed at the operator's start (never seen): every job is decided then anyway.
    assert QuotaLimits().observe(None, counted) is QuotaChange.NONE


def test_a_job_keeps_its_live_workers_and_its_restart_whatever_the_quota_says_now() -> None:
    elastic = Demand(KEY, 0, 0.0, "nvidia-h100-80gb", 1, 4, 12, True, "Never", worker_step=4)
    no_room = QuotaRoom("q", GPU, Decimal(8), Decimal(8), Decimal(1), 0)
    # Seven live (one of a group of four failed), no room: it keeps eight (whole groups), and grows no more.
    kept = _within_quota(elastic, no_room, live=7)
    assert kept is not None and kept.want_workers == 8
    assert _within_quota(elastic, no_room, live=0) is None
    assert _within_quota(elastic, replace(no_room, workers=13), live=0) == replace(elastic, want_workers=12)


def test_a_job_whose_own_pods_fill_the_quota_is_not_held_back_by_them(harness: Harness) -> None:
    # Its failed workers (count/pods charges a pod object until it is deleted), and the workers its restart
    # deleted while the quota still counts them, are charged to the quota; read as other pods' usage they held
    # the job back (the failed pod is deleted only by the decision that replaces it) or cost it its admission.
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    objects = Quota("objects", {"count/pods": Decimal(2)}, {"count/pods": Decimal(0)})
    harness.quotas = [gpu_quota(2, 0), objects]
    harness.reconcile()
    run_on_h0(harness, "llama")
    harness.reconcile("pod")
    assert harness.condition("Admitted")["status"] == "True"
    harness.kube.pods["llama-worker-1"] = replace(harness.kube.pods["llama-worker-1"], phase="Failed")
    harness.quotas = [gpu_quota(2, 1), replace(objects, used={"count/pods": Decimal(2)})]
    harness.reconcile("pod")
    assert ("delete_pod", "llama-worker-1") in harness.calls("delete_pod")  # the group restarts
    assert not llama_pods(harness)
    # Deleted, but not counted off the quota yet: the restart keeps the job's admission.
    harness.quotas = [gpu_quota(2, 2), replace(objects, used={"count/pods": Decimal(2)})]
    harness.reconcile("pod")
    assert harness.condition("Admitted")["status"] == "True"
    assert not harness.events("QuotaExceeded")


def test_a_job_may_still_preempt_a_lower_priority_job_of_its_own_namespace_for_its_quota(
    harness: Harness,
) -> None:
    # The other job's workers fill the quota and the node: preempting it frees both, as it did before quotas
    # were read. Held back by that quota, the job could never make that room.
    other_running_on_h0(harness)
    harness.quotas = [gpu_quota(2, 2)]
    llama = job_manifest(replicas=2)
    llama["spec"]["scheduling"] = {"priority": 100, "preemption": "LowerPriority"}
    harness.kube.jobs["llama"] = llama
    for name in ("other", "llama"):
        harness.reconciler.jobs.observe((NAMESPACE, name), harness.kube.jobs[name])
    harness.reconcile()
    both_reconciled(harness)
    assert len(harness.events("Preempted")) == 1
    # Granted: the quota not counting the preempted workers off yet does not take the grant back. (The
    # preempted job is the one over the quota now.)
    assert harness.condition("Admitted")["status"] == "True"
    assert llama_pods(harness) == ["llama-worker-0", "llama-worker-1"]
    assert harness.condition("Admitted", "other")["reason"] == "QuotaExceeded"


# ------------------------------------------------------------------------------------------ the pass's budget


POOL = ("ml", "team-gpus", GPU)


def claims(per_worker: int = 4) -> tuple[QuotaClaim, ...]:
    return (QuotaClaim(POOL, Decimal(per_worker)),)


def planned(
    queued: list[Demand], admitted: list[Any], free: int, charged: dict[str, int] | None = None
) -> Any:
    """A pass that reads `free` devices left in the quota, and each job's workers charged to it now."""
    quotas = QuotaState({POOL: Decimal(free)}, {key(name): count for name, count in (charged or {}).items()})
    return plan_admissions(queued, admitted, nodes(2), "BestEffortFIFO", NOW, 300.0, quotas=quotas)


def test_one_pass_does_not_give_the_same_quota_room_to_two_jobs_of_a_namespace() -> None:
    # Each decided alone, both fit the quota's 4 free devices; admitted in one pass, the second's creates were
    # refused, after the pass had shrunk another job for it.
    first = replace(gang("first", 1, per_worker=4, priority=10, created=1.0), quota_claims=claims())
    second = replace(gang("second", 1, per_worker=4, priority=10, created=2.0), quota_claims=claims())
    result = planned([first, second], low_jobs(), free=4)
    assert result.grants[key("first")] == 1 and result.grants[key("second")] == 0
    assert result.shrink == {key("low-young"): 2}  # room made once, for the job the quota admits
    assert result.waiting[key("second")] == (
        "QuotaExceeded: ResourceQuota team-gpus has room for 0 more of its workers once the jobs of ml "
        "granted before it are counted (requests.nvidia.com/gpu: 0 left, 4 per worker); it needs 1"
    )
    # Without a reading of the quota (or claims), both are admitted, and the other job shrunk for both.
    assert plan([first, second], low_jobs(), nodes(2)).grants[key("second")] == 1
    # A job exempt (a lower-priority job of its namespace runs, charged under the quota) is not held back:
    # the shrink it makes frees the quota too. It counts in the budget, which the second job waits for.
    exempt = replace(first, quota_exempt=True)
    low_old, low_young = low_jobs()
    charged = replace(low_young, demand=replace(low_young.demand, quota_claims=claims(2)))
    result = planned([exempt, second], [low_old, charged], free=0, charged={"low-young": 4})
    assert result.grants[key("first")] == 1 and result.grants[key("second")] == 0
    assert result.shrink == {key("low-young"): 2}


def _exempt_high(**kwargs: Any) -> Demand:
    """A high-priority gang of its namespace (ml) exempt from the quota: a lower-priority job of ml runs."""
    high = gang("high", 2, per_worker=4, priority=10, preemption="LowerPriority", **kwargs)
    return replace(high, quota_claims=claims(), quota_exempt=True)


def _running(name: str, namespace: str, priority: int, node: str, charged: bool) -> Any:
    demand = replace(gang(name, 2, per_worker=4, priority=priority, created=1.0), key=(namespace, name))
    if charged:
        demand = replace(demand, quota_claims=claims())
    return holding(demand, 2, {node: 2})


def test_an_exempt_job_makes_its_quota_room_from_its_own_namespace_not_from_another() -> None:
    # The quota is full with ml's own lower-priority job (2 workers x 4 devices). Another namespace's job
    # of a still lower priority runs on the other node. Before, the pass preempted that one (the lowest, and
    # its node fits the gang): the API server then refused the gang's workers, and it had stopped a job for
    # nothing. Now the job it preempts is the one whose workers the quota charges.
    own = _running("own-low", "ml", 1, "node-0", charged=True)
    other = _running("other-low", "other", 0, "node-1", charged=False)
    quotas = QuotaState({POOL: Decimal(0)}, {key("own-low"): 2})
    result = plan_admissions(
        [_exempt_high()], [own, other], nodes(2), "BestEffortFIFO", NOW, 300.0, quotas=quotas
    )
    assert result.grants[key("high")] == 2
    assert result.preempt == frozenset({key("own-low")})
    assert result.grants[("other", "other-low")] == 2
    # Nodes with room to spare do not make it fit the quota: it still preempts the job the quota charges.
    result = plan_admissions(
        [_exempt_high()], [own, other], nodes(3), "BestEffortFIFO", NOW, 300.0, quotas=quotas
    )
    assert result.grants[key("high")] == 2 and result.preempt == frozenset({key("own-low")})


def test_an_exempt_job_its_namespace_cannot_make_quota_room_for_waits_and_stops_no_one() -> None:
    # ml's lower-priority job holds 4 of the quota's devices; the gang needs 8 and 0 are free: preempting
    # every job it may would leave it 4 short, so it waits for the quota, and the other namespace's job
    # keeps its workers.
    own = holding(
        replace(gang("own-low", 1, per_worker=4, priority=1, created=1.0), quota_claims=claims()),
        1,
        {"node-0": 1},
    )
    other = _running("other-low", "other", 0, "node-1", charged=False)
    quotas = QuotaState({POOL: Decimal(0)}, {key("own-low"): 1})
    result = plan_admissions(
        [_exempt_high()], [own, other], nodes(2), "BestEffortFIFO", NOW, 300.0, quotas=quotas
    )
    assert result.grants[key("high")] == 0 and not result.preempt and not result.shrink
    assert result.waiting[key("high")].startswith(
        "QuotaExceeded: ResourceQuota team-gpus has room for 0 more"
    )
    # A job that may only shrink others frees no quota from a gang: it waits too.
    never = replace(_exempt_high(), preemption="Never")
    own_gang = _running("own-low", "ml", 1, "node-0", charged=True)
    result = plan_admissions(
        [never], [own_gang, other], nodes(2), "BestEffortFIFO", NOW, 300.0, quotas=quotas
    )
    assert result.grants[key("high")] == 0 and result.waiting[key("high")].startswith("QuotaExceeded:")


def _charged_gang(name: str, node: str, priority: int = 1, namespace: str = "ml") -> Holding:
    demand = replace(gang(name, 1, per_worker=8, priority=priority, created=1.0), key=(namespace, name))
    return Holding(replace(demand, quota_claims=claims(8)), 1, {node: 1}, (node,))


def _plan_exempt(queued: list[Demand], admitted: list[Holding], free: int, count: int, **kwargs: Any) -> Any:
    charged = {holding.demand.key: 1 for holding in admitted if holding.demand.quota_claims}
    quotas = QuotaState({POOL: Decimal(free)}, charged)
    return plan_admissions(
        queued, admitted, nodes(count), kwargs.get("policy", "BestEffortFIFO"), NOW, 300.0, quotas=quotas
    )


def test_two_exempt_jobs_of_one_pass_preempt_one_job_each_not_more() -> None:
    # The quota freed by the first job's victim was not given back to the budget: the second job had to free
    # it again, and a third job was preempted for nothing.
    lows = [_charged_gang(f"low{index}", f"node-{index}") for index in range(3)]
    highs = [
        replace(gang(f"high{index}", 1, per_worker=8, priority=10, created=float(index), preemption="LowerPriority"),
                quota_claims=claims(8), quota_exempt=True)
        for index in range(2)
    ]  # fmt: skip
    result = _plan_exempt(highs, lows, free=0, count=5)
    assert result.grants[key("high0")] == 1 and result.grants[key("high1")] == 1
    assert len(result.preempt) == 2


def test_an_exempt_job_takes_the_lowest_priority_jobs_for_devices_and_its_namespaces_for_quota() -> None:
    # Charged jobs were sorted first for devices too: a priority-5 job was preempted where another
    # namespace's priority-0 job would do for the node, c1 freeing the quota.
    c1 = _charged_gang("c1", "node-0", priority=1)
    c2 = _charged_gang("c2", "node-1", priority=5)
    n0 = Holding(
        replace(gang("n0", 1, per_worker=8, created=1.0), key=("other", "n0")), 1, {"node-2": 1}, ("node-2",)
    )
    high = replace(
        gang("high", 2, per_worker=8, priority=10, preemption="LowerPriority"),
        quota_claims=claims(8),
        quota_exempt=True,
    )
    result = _plan_exempt([high], [c1, c2, n0], free=8, count=3)
    assert result.grants[key("high")] == 2
    assert result.preempt == frozenset({key("c1"), ("other", "n0")})


def test_an_exempt_job_whose_namespace_frees_no_quota_waits_for_it_and_blocks_no_one() -> None:
    # The lower-priority job's grant counted its finished workers, which free no quota: the job was taken
    # for one waiting on devices, InsufficientCapacity, and kept the job behind it waiting (StrictFIFO).
    done = replace(
        job("c", per_worker=8, want=3, priority=1, created=1.0), quota_claims=claims(8), finished_workers=2
    )
    behind = replace(gang("bystander", 1, per_worker=8, priority=5, created=3.0), key=("other", "bystander"))
    high = replace(
        gang("high", 1, per_worker=8, priority=10, created=2.0), quota_claims=claims(8), quota_exempt=True
    )
    for policy in ("StrictFIFO", "BestEffortFIFO"):
        result = _plan_exempt(
            [high, behind], [Holding(done, 3, {"node-0": 1}, ("node-0",))], free=0, count=3, policy=policy
        )
        assert result.waiting[key("high")].startswith("QuotaExceeded:")
        assert result.grants[("other", "bystander")] == 1


def test_an_exempt_job_whose_minimum_is_charged_already_is_not_short_of_quota() -> None:
    # Its own pod (terminating) is charged: it needs no more, and preempted the other job for nothing.
    low = replace(gang("low", 2, per_worker=8, priority=1, created=1.0), quota_claims=claims(8))
    high = replace(
        gang("high", 1, per_worker=8, priority=10, preemption="LowerPriority"),
        quota_claims=claims(8),
        quota_exempt=True,
    )
    quotas = QuotaState({POOL: Decimal(0)}, {key("low"): 1, key("high"): 1})
    result = plan_admissions(
        [high],
        [Holding(low, 2, {"node-0": 1}, ("node-0",))],
        nodes(3),
        "BestEffortFIFO",
        NOW,
        300.0,
        quotas=quotas,
    )
    assert result.grants[key("high")] == 1 and not result.preempt


def test_a_job_after_an_exempt_one_gets_no_quota_its_victims_still_hold() -> None:
    # The exempt job (2 GPUs) preempted a job of 8 charged GPUs: all 8 were credited to the pass's budget,
    # and a job after it (on another accelerator) was admitted into the other 6 while the victim's pods still
    # held them: its creates were refused. Now the budget gets back what the exempt job was short of.
    low = Holding(
        replace(gang("low", 4, per_worker=2, priority=1, created=1.0), quota_claims=claims(2)),
        4, {"node-0": 4}, ("node-0",) * 4,
    )  # fmt: skip
    exempt = replace(
        gang("exempt", 1, per_worker=2, priority=5, preemption="LowerPriority", created=2.0),
        quota_claims=claims(2), quota_exempt=True,
    )  # fmt: skip
    after = replace(
        gang("after", 2, per_worker=2, priority=0, created=3.0, accelerator="nvidia-a100-80gb"),
        quota_claims=claims(2),
    )  # fmt: skip
    cluster = [*nodes(1), *nodes(1, accelerator="nvidia-a100-80gb", prefix="a100")]
    quotas = QuotaState({POOL: Decimal(0)}, {key("low"): 4})
    result = plan_admissions([exempt, after], [low], cluster, "BestEffortFIFO", NOW, 300.0, quotas=quotas)
    assert result.grants[key("exempt")] == 1 and result.preempt == frozenset({key("low")})
    assert result.grants[key("after")] == 0 and result.waiting[key("after")].startswith("QuotaExceeded:")


def test_a_second_exempt_job_uses_the_quota_the_first_ones_victim_frees_beyond_its_need() -> None:
    # low2 (2 charged GPUs) is preempted for the first exempt job, which needs 1. The other one went back to
    # no budget, and the second exempt job preempted low, 4 workers, for quota low2's going frees anyway.
    low = Holding(
        replace(gang("low", 4, per_worker=1, priority=1, created=1.0), quota_claims=claims(1)),
        4, {"node-0": 4}, ("node-0",) * 4,
    )  # fmt: skip
    low2 = Holding(
        replace(gang("low2", 2, per_worker=1, priority=1, created=2.0), quota_claims=claims(1)),
        2, {"node-1": 2}, ("node-1",) * 2,
    )  # fmt: skip
    exempt = [
        replace(gang(name, 1, per_worker=1, priority=5, created=created, preemption="LowerPriority"),
                quota_claims=claims(1), quota_exempt=True)
        for name, created in (("exempt", 100.0), ("exempt2", 101.0))
    ]  # fmt: skip
    quotas = QuotaState({POOL: Decimal(0)}, {key("low"): 4, key("low2"): 2})
    result = plan_admissions(exempt, [low, low2], nodes(2), "BestEffortFIFO", NOW, 300.0, quotas=quotas)
    assert result.grants[key("exempt")] == 1 and result.grants[key("exempt2")] == 1
    assert result.preempt == frozenset({key("low2")})
    # low2 made room for both: the second's gang keeps its grant while low2's workers leave.
    assert result.made_room_for[key("low2")] == {key("exempt"), key("exempt2")}
    # A job not exempt after them gets none of it: low2's pods hold it until they are gone.
    after = replace(gang("after", 1, per_worker=1, priority=0, created=102.0), quota_claims=claims(1))
    result = plan_admissions(
        [*exempt[:1], after], [low, low2], nodes(2), "BestEffortFIFO", NOW, 300.0, quotas=quotas
    )
    assert result.grants[key("after")] == 0 and result.waiting[key("after")].startswith("QuotaExceeded:")


def test_an_exempt_elastic_job_grows_only_within_its_quota() -> None:
    # Growth takes free devices only and preempts no one, so the budget caps it whether or not the job is
    # exempt: grown past it, its new workers were refused.
    grown = holding(
        replace(job("grown", per_worker=4, want=4), quota_claims=claims(), quota_exempt=True),
        1,
        {"node-0": 1},
    )
    assert planned([], [grown], free=4, charged={"grown": 1}).grants[key("grown")] == 2


def test_the_budget_counts_granted_workers_not_charged_yet_and_limits_growth() -> None:
    # Admitted last pass at 1 worker, not created yet (charged 0): its grant takes 4 of the 8 free devices.
    admitted = holding(replace(job("grown", per_worker=4, want=3), quota_claims=claims()), 1)
    waiting = replace(gang("waiting", 2, per_worker=4, created=NOW - 5), quota_claims=claims())
    result = planned([waiting], [admitted], free=8)
    assert result.grants[key("waiting")] == 0
    assert result.waiting[key("waiting")].startswith(
        "QuotaExceeded: ResourceQuota team-gpus has room for 1 more"
    )
    # Elastic growth stops at the quota: 8 free devices and 1 granted worker not charged leave room for 1 more.
    assert planned([], [admitted], free=8).grants[key("grown")] == 2
    # Its worker created and charged (4 free now): the same total.
    bound = holding(admitted.demand, 1, {"node-0": 1})
    assert planned([], [bound], free=4, charged={"grown": 1}).grants[key("grown")] == 2


def test_a_raised_minimum_counts_in_the_budget_before_anyone_is_admitted() -> None:
    # A gang of 2 running (charged) raised to 4: _reserve_admitted grants its new minimum; those 2 more
    # workers take 4 of the quota's 6 free devices, and the queued job (4 devices) waits, though the nodes
    # have room for it.
    raised = holding(replace(gang("raised", 4, per_worker=2), quota_claims=claims(2)), 2, {"node-0": 2})
    queued = replace(gang("queued", 2, per_worker=2, created=NOW - 5), quota_claims=claims(2))
    result = planned([queued], [raised], free=6, charged={"raised": 2})
    assert result.grants[key("raised")] == 4
    assert result.grants[key("queued")] == 0
    assert result.waiting[key("queued")].startswith("QuotaExceeded:")
    assert planned([queued], [raised], free=8, charged={"raised": 2}).grants[key("queued")] == 2


def test_a_job_the_pass_holds_back_for_its_quota_says_so_and_is_decided_again_when_room_comes() -> None:
    why = (
        "ResourceQuota team-gpus has room for 0 more of its workers once the jobs of team-a granted before it"
    )
    quotas = (gpu_quota(4, 0),)
    observation = replace(observe(grant=0), waiting=f"QuotaExceeded: {why}", quotas=quotas)
    queued = decide(observation, CATALOG)
    admitted = condition(queued, "Admitted")
    assert (admitted["status"], admitted["reason"], admitted["message"]) == ("False", "QuotaExceeded", why)
    assert ("Warning", "QuotaExceeded") in [(event.type, event.reason) for event in queued.events]
    assert queued.quota_limited
    # Its demand carries what the pass shares: every key its workers are charged under.
    assert queued.demand is not None and not queued.demand.quota_exempt
    assert queued.demand.quota_claims == (QuotaClaim(("team-a", "team-gpus", GPU), Decimal(1)),)


def test_a_job_waiting_for_its_quota_is_not_starved_by_younger_jobs_growing_into_the_room() -> None:
    # The older gang needs 3 workers, the quota has room for 2: the younger elastic job of its namespace
    # grew into every room that came free, and the gang waited as long as that job wanted more.
    older = replace(gang("older", 3, per_worker=2, created=1.0), quota_claims=claims(2))
    younger = holding(
        replace(job("younger", per_worker=2, want=4, created=2.0), quota_claims=claims(2)), 1, {"node-0": 1}
    )
    result = planned([older], [younger], free=4, charged={"younger": 1})
    assert result.grants[key("older")] == 0 and result.waiting[key("older")].startswith("QuotaExceeded:")
    assert result.grants[key("younger")] == 1
    # Nobody ahead waits: it grows as far as the quota allows.
    assert planned([], [younger], free=4, charged={"younger": 1}).grants[key("younger")] == 3


def test_the_pass_counts_as_charged_only_the_jobs_workers_the_quota_still_charges() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    running = WorkerPod("a-worker-0", 0, "u0", "Running", "n", False, "uid-a")
    gone_long_ago = replace(
        running,
        name="a-worker-1",
        index=1,
        uid="u1",
        terminating=True,
        deletion_timestamp="2026-12-04T11:00:00Z",
    )
    leaving = replace(
        gone_long_ago, name="a-worker-2", index=2, uid="u2", deletion_timestamp="2026-12-04T12:00:30Z"
    )
    finished = replace(running, name="a-worker-3", index=3, uid="u3", phase="Succeeded")
    tensorboard = replace(running, name="a-tensorboard", index=None, uid="u4")
    assert charged_workers([running, gone_long_ago, leaving, finished, tensorboard], now) == 2


QUOTA_403_MESSAGE = 'pods "llama-worker-0" is forbidden: exceeded quota: team-gpus'


def test_a_gang_refused_while_the_jobs_it_preempted_are_still_leaving_keeps_its_grant() -> None:
    # An exempt job preempted the job of its namespace whose workers fill the quota; those save within their
    # checkpoint grace (120 s by default) and stay charged, so the gang's creates are refused meanwhile. It
    # gave its grant back 5 s later, and the job preempted for it could take the quota back: stopped for
    # nothing. Now it keeps its grant while they leave, and gives it back as before once they have gone.
    refused_at = NOW_DT + timedelta(seconds=1)
    refusals = {
        "llama-worker-0": (refused_at, QUOTA_403_MESSAGE),
        "llama-worker-1": (refused_at, QUOTA_403_MESSAGE),
    }
    retried = (QUOTA_403_MESSAGE, refused_at + timedelta(seconds=10))
    admitted = decide(observe(grant=2), CATALOG)

    def later(**grant: Any) -> Any:
        observed = replace(
            observe(status=admitted.status, grant=2, now=NOW_DT + timedelta(seconds=12)),
            refused_creates=refusals,
            refusal=retried,
            **grant,
        )
        return decide(observed, CATALOG)

    assert condition(later(places_held=True), "Admitted")["status"] == "True"
    # Gone a moment ago: the quota controller may not have counted them off yet.
    just_gone = NOW_DT + timedelta(seconds=9)
    assert condition(later(places_freed_at=just_gone), "Admitted")["status"] == "True"
    assert condition(later(places_held=False), "Admitted")["reason"] == "GangTimeout"


def test_a_shrink_for_quota_is_not_taken_back_while_the_job_it_was_for_counts_on_that_quota() -> None:
    # The elastic job was shrunk 2 -> 1 for the higher-priority one, which had devices free on another node
    # but not quota: the leaving worker is charged until it has gone, so the newcomer's create was refused.
    # No job waited for the leaving worker's node, so the next pass took it back (2 again), and the quota
    # stayed full for good (two audits, 5 December).
    low = holding(
        replace(job("low", want=2, priority=0, created=1.0), quota_claims=claims()), 1, {"node-0": 2}
    )
    high = holding(replace(gang("high", 1, priority=10, created=2.0), quota_claims=claims()), 1)
    quotas = QuotaState({POOL: Decimal(0)}, {key("low"): 2})  # 8 of 8 used, by low's 2 workers
    result = plan_admissions([], [low, high], nodes(2), "BestEffortFIFO", NOW, 300.0, quotas=quotas)
    assert result.grants[key("low")] == 1 and result.grants[key("high")] == 1
    # Once nothing counts on it (the newcomer gone), a worker still bound is taken back as before.
    result = plan_admissions([], [low], nodes(2), "BestEffortFIFO", NOW, 300.0, quotas=quotas)
    assert result.grants[key("low")] == 2


def test_a_quota_read_over_its_limit_already_does_not_keep_a_shrunk_jobs_leaving_worker() -> None:
    # The take-back is held only where workers granted and not charged yet take the budget below nothing: a
    # quota lowered below its usage counts on no leaving worker (a review of the rule, 5 December).
    low = holding(
        replace(job("low", want=2, priority=0, created=1.0), quota_claims=claims()), 1, {"node-0": 2}
    )
    quotas = QuotaState({POOL: Decimal(-4)}, {key("low"): 2})
    result = plan_admissions([], [low], nodes(2), "BestEffortFIFO", NOW, 300.0, quotas=quotas)
    assert result.grants[key("low")] == 2
