"""The controller's reconcile path against a recording fake of the Kubernetes API.

The fake records every call (and every event posted through kopf.event) in one ordered log, and fails a
chosen call with an ApiException, so these tests check what the pure `decide` tests cannot: the order of
writes, what survives a failing write, the safety net and its backoff, coalescing and create batches.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from kubefit.builders.naming import worker_index
from kubefit.cli.main import build_parser
from kubefit.controller import reconciler as reconciler_module
from kubefit.controller.cluster import RememberingCatalog, remembering
from kubefit.controller.kube import JobReplaced, KubeApi, PodNameTaken, WritesStopped, error_message
from kubefit.controller.reconciler import CREATE_BATCH, ClusterView, NotifyingBoard, Reconciler
from kubefit.controller.requeue import BACKOFF_FIRST, BACKOFF_MAX, Requeue, RequeueClock, backoff_seconds
from kubefit.decisions.inventory import NodeFacts, PodUsage
from kubefit.decisions.job import DEFAULT_MAX_WORKERS_PER_JOB, ReconcileSettings
from kubefit.decisions.node_match import ANYWHERE
from kubefit.decisions.observed import WorkerPod
from kubefit.decisions.quota import Quota
from kubefit.metrics import OperatorMetrics
from kubefit.sizing.catalog import Catalog, load_catalog

CATALOG = load_catalog()
# Room for every job below: the admission queue (controller/scheduler.py) admits what fits.
NODES = [
    NodeFacts(f"h{index}", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {"nvidia.com/gpu": "8"})
    for index in range(64)
]
NAMESPACE = "team-a"
KEY = (NAMESPACE, "llama")
Call = tuple[str, ...]


def job_manifest(name: str = "llama", replicas: int = 2, **workers: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubefit.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "template": {"spec": {"containers": [{"name": "trainer", "image": "ghcr.io/acme/train:1"}]}},
            "model": {"parameters": "1B"},
            "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
            "workers": {"replicas": replicas, **workers},
            # These tests are about write order: workers are removed without the checkpoint handshake.
            "elastic": {"checkpointGracePeriodSeconds": 0},
        },
    }


def elastic_workers(count: int, nnodes: str) -> dict[str, WorkerPod]:
    """`count` running workers of the job started with torchrun's node range `nnodes`."""
    return {
        f"llama-worker-{i}": WorkerPod(
            f"llama-worker-{i}",
            i,
            f"p{i}",
            "Running",
            "n",
            False,
            "uid-llama",
            world_size=None,
            nnodes=nnodes,
        )
        for i in range(count)
    }


def api_error(status: int, message: str) -> ApiException:
    error = ApiException(status=status, reason="Forbidden" if status == 403 else "Unprocessable Entity")
    error.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": status})
    return error


QUOTA_403 = api_error(
    403,
    'pods "llama-worker-1" is forbidden: exceeded quota: no-pods, requested: pods=1, used: pods=1, '
    "limited: pods=1",
)


class FakeKube:
    """KubeApi's calls, recorded in order in `log`; `fail[(call, name)]` raises instead ("*": any name)."""

    def __init__(self, log: list[Call]):
        self.log = log
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, WorkerPod] = {}  # name -> what kopf's index would show
        self.fail: dict[tuple[str, str], Exception] = {}
        self.on_get: Callable[[], None] | None = None
        self.nodes: set[str] = set()  # the nodes a LIST by name finds

    def _call(self, call: str, name: str) -> None:
        self.log.append((call, name))
        error = self.fail.get((call, name)) or self.fail.get((call, "*"))
        if error is not None:
            raise error

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._call("get_job", name)
        if self.on_get is not None:
            self.on_get()
        job = self.jobs.get(name)
        return copy.deepcopy(job) if job else None

    def node_exists(self, name: str) -> bool:
        self._call("node_exists", name)
        return name in self.nodes

    def node_names(self) -> set[str]:
        self._call("node_names", "*")
        return set(self.nodes)

    def patch_job_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        self._call("patch_job_status", name)
        if name not in self.jobs:
            raise api_error(404, f'trainingjobs "{name}" not found')
        if self.jobs[name]["metadata"]["uid"] != uid:  # the API server's test of /metadata/uid
            raise JobReplaced(f"{namespace}/{name} is no longer the job {uid}")
        self.jobs[name]["status"] = copy.deepcopy(status)  # written whole

    def job_uids(self, namespace: str) -> dict[str, str]:
        self._call("job_uids", namespace)
        return {name: job["metadata"]["uid"] for name, job in self.jobs.items()}

    def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        self._call("delete_job", name)
        if self.jobs.get(name, {}).get("metadata", {}).get("uid", uid) != uid:
            return False  # the API server's 409: the uid precondition fails for a job made again since
        return self.jobs.pop(name, None) is not None

    def try_pod(self, namespace: str, manifest: dict[str, Any]) -> None:
        """A dry-run create: refused as its create would be, and nothing created."""
        name = manifest["metadata"]["name"]
        self._call("try_pod", name)
        error = self.fail.get(("create_pod", name)) or self.fail.get(("create_pod", "*"))
        if error is not None:
            raise error

    def create_pod(self, namespace: str, manifest: dict[str, Any]) -> bool:
        name = manifest["metadata"]["name"]
        self._call("create_pod", name)
        if name in self.pods:
            return False  # 409
        job = manifest["metadata"]["labels"]["kubefit.dev/job"]
        owner = manifest["metadata"]["ownerReferences"][0]["uid"]
        world = manifest["metadata"].get("annotations", {}).get("kubefit.dev/world-size")
        self.pods[name] = WorkerPod(
            name, worker_index(name, job), f"uid-{name}", "Pending", None, False, owner,
            world_size=int(world) if world else None,
        )  # fmt: skip
        return True

    def delete_pod(self, namespace: str, name: str) -> bool:
        self._call("delete_pod", name)
        return self.pods.pop(name, None) is not None

    def adopt_pod(self, namespace: str, name: str, owner: dict[str, Any]) -> bool:
        self._call("adopt_pod", name)
        return True

    def create_service(self, namespace: str, manifest: dict[str, Any]) -> bool:
        self._call("create_service", manifest["metadata"]["name"])
        return True


class _Answer:
    """An HTTP response as _Rest reads it."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.reason, self.headers = status, "", {}
        self._data = json.dumps(body).encode()

    def read(self) -> bytes:
        return self._data


class PodServer:
    """The API server's pods (name -> metadata) behind the two ApiClient methods KubeApi's REST calls use:
    a create of a name that exists is a 409, and a list by name answers that pod's metadata."""

    def __init__(self, pods: dict[str, dict[str, Any]]) -> None:
        self.pods = pods
        self.sent: list[tuple[str, str]] = []

    def param_serialize(self, method: str, path: str, body: Any = None, **_: Any) -> tuple[str, str, Any]:
        return method, path, body

    def call_api(self, method: str, path: str, body: Any, _request_timeout: object = None) -> _Answer:
        self.sent.append((method, path))
        if method == "POST":
            name = body["metadata"]["name"]
            if name in self.pods:
                return _Answer(
                    409, {"kind": "Status", "code": 409, "message": f'pods "{name}" already exists'}
                )
            self.pods[name] = body["metadata"]
            return _Answer(201, body)
        (selector,) = parse_qs(urlsplit(path).query)["fieldSelector"]
        name = selector.removeprefix("metadata.name=")
        items = [{"metadata": self.pods[name]}] if name in self.pods else []
        return _Answer(200, {"kind": "PartialObjectMetadataList", "items": items})


def stateful_set_pod(name: str) -> dict[str, Any]:
    """A pod a StatefulSet `llama-worker` owns: not labelled as a worker, so kopf's index does not show it."""
    owner = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "llama-worker", "uid": "uid-sts",
             "controller": True}  # fmt: skip
    return {"name": name, "labels": {"app": "llama"}, "ownerReferences": [owner]}


class Harness:
    def __init__(self, settings: ReconcileSettings | None = None):
        self.log: list[Call] = []
        self.kube = FakeKube(self.log)
        self.metrics = OperatorMetrics()
        self.reconciler = Reconciler(cast(KubeApi, self.kube), CATALOG, self.metrics, settings)
        self.index_lags = False  # True: kopf's index shows none of the created pods yet
        self.quotas: list[Quota] = []  # the ResourceQuotas of NAMESPACE, as kopf's index would hold them

    def view(self) -> ClusterView:
        def workers(key: tuple[str, str]) -> list[WorkerPod]:
            if self.index_lags:
                return []
            return [pod for name, pod in self.kube.pods.items() if name.startswith(f"{key[1]}-worker-")]

        def quotas(namespace: str) -> list[Quota]:
            return list(self.quotas) if namespace == NAMESPACE else []

        def jobs_with_workers() -> list[tuple[str, str]]:
            return sorted({(NAMESPACE, name.rsplit("-worker-", 1)[0]) for name in self.kube.pods})

        return ClusterView(
            nodes=lambda: NODES,
            usage=lambda: {},
            workers=workers,
            jobs_with_workers=jobs_with_workers,
            quotas=quotas,
        )

    def reconcile(self, trigger: str = "create", key: tuple[str, str] = KEY) -> None:
        self.reconciler.reconcile(key, trigger, self.view())

    def calls(self, *kinds: str) -> list[Call]:
        return [call for call in self.log if not kinds or call[0] in kinds]

    def events(self, reason: str | None = None) -> list[Call]:
        return [call for call in self.log if call[0] == "event" and reason in (None, call[1])]

    def condition(self, condition_type: str, name: str = "llama") -> dict[str, Any]:
        conditions = self.kube.jobs[name].get("status", {}).get("conditions", [])
        return next(item for item in conditions if item["type"] == condition_type)


def record_events(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf.event records into the harness's log (no kopf context in unit tests)."""

    def record_event(body: kopf.Body, *, type: str, reason: str, message: str = "") -> None:
        harness.log.append(("event", reason, message, type))

    monkeypatch.setattr(kopf, "event", record_event)


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    harness = Harness()
    record_events(harness, monkeypatch)
    yield harness
    for key in [KEY, (NAMESPACE, "other")]:
        harness.reconciler.forget(key)  # cancels retry timers


def retrying(harness: Harness) -> bool:
    """A retry after a failure is scheduled (a timer for the gang timeout may be pending too)."""
    requeue = harness.reconciler.pending_requeue(KEY)
    return requeue is not None and requeue.trigger == "retry"


def fail_decide(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(reconciler_module, "decide", broken)


# ---------------------------------------------------------------------------------------------- write order


def test_a_new_job_waits_for_its_first_pass_then_writes_status_then_events_then_pods(
    harness: Harness,
) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconcile()
    assert [call[:2] for call in harness.log] == [
        # No pass has answered its demand yet: nothing is written, the demand goes to the scheduler.
        ("get_job", "llama"),
        # The pass (synchronous here) admitted it: the same reconcile goes round once more.
        ("get_job", "llama"),
        ("patch_job_status", "llama"),
        ("event", "Fits"),  # the Sized transition, before any pod write
        ("event", "Admitted"),
        ("create_service", "llama"),
        ("create_pod", "llama-worker-0"),
        ("create_pod", "llama-worker-1"),
        ("event", "CreatedWorkers"),
    ]
    assert harness.condition("Admitted")["status"] == "True"


def test_a_job_the_first_pass_queues_is_written_queued(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=600)  # more H100s than the 64 nodes hold
    harness.reconcile()
    assert [call[:2] for call in harness.log] == [
        ("get_job", "llama"),
        ("get_job", "llama"),
        ("patch_job_status", "llama"),
        ("event", "Fits"),
        ("event", "InsufficientCapacity"),
        ("create_service", "llama"),
    ]
    assert harness.condition("Admitted")["reason"] == "InsufficientCapacity"


def test_the_first_pass_is_awaited_once_only(harness: Harness) -> None:
    # A scheduler whose passes never answer (a pass that failed): the next trigger writes the status anyway.
    harness.reconciler.scheduler.offer = lambda *args, **kwargs: None  # type: ignore[method-assign]
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconcile()
    assert harness.calls("patch_job_status") == []
    harness.reconcile("pod")
    assert harness.calls("patch_job_status") == [("patch_job_status", "llama")]
    assert harness.condition("Admitted")["reason"] == "Queued"


def test_the_service_is_created_once_and_checked_again_by_a_later_resync(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconcile()
    harness.reconcile("pod")
    harness.reconcile("update")
    harness.reconcile("timer")  # a resync soon after the create trusts it
    assert harness.calls("create_service") == [("create_service", "llama")]
    monkeypatch.setattr(reconciler_module, "SERVICE_RECHECK_SECONDS", 0.0)
    harness.reconcile("timer")  # a later resync: a Service deleted behind the operator's back comes back
    assert harness.calls("create_service") == [("create_service", "llama")] * 2
    harness.reconcile("pod")
    assert len(harness.calls("create_service")) == 2


def running_then_service_refused(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama runs 2 ready workers; then a resync's check of its Service is refused (403): Ready=ReconcileError."""
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconcile()
    for name, pod in list(harness.kube.pods.items()):
        harness.kube.pods[name] = replace(pod, phase="Running", node_name="h0")
    harness.reconcile("pod")
    assert len(harness.events("AllWorkersReady")) == 1
    monkeypatch.setattr(reconciler_module, "SERVICE_RECHECK_SECONDS", -1.0)
    harness.kube.fail[("create_service", "*")] = api_error(403, "services is forbidden: denied by policy")
    harness.reconcile("timer")
    assert harness.condition("Ready")["reason"] == "ReconcileError"


def test_a_job_whose_status_writes_are_refused_still_gets_its_reconcile_error_event(harness: Harness) -> None:
    # The failure's status patch raised before its event was posted: the job's owner saw nothing at all.
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.fail[("patch_job_status", "*")] = api_error(
        403, 'admission webhook "status-policy.example.com" denied the request: status writes are frozen'
    )
    harness.reconcile()
    assert "status" not in harness.kube.jobs["llama"]
    (event,) = harness.events("ReconcileError")
    assert "status writes are frozen" in event[2] and event[3] == "Warning"
    assert retrying(harness)


def test_a_retry_that_fails_again_posts_no_ready_event_the_status_does_not_show(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While the Service create kept failing, each retry posted AllWorkersReady again, with the status still
    # Ready=False ReconcileError: Ready's transition is an event once the status says it.
    running_then_service_refused(harness, monkeypatch)
    failures = {"namespace": "team-a", "name": "llama"}
    for _ in range(3):
        harness.reconcile("retry")
    assert harness.condition("Ready")["reason"] == "ReconcileError"
    assert len(harness.events("AllWorkersReady")) == 1
    # KubefitJobReconcileFailing's series: the timer's failure, then three retries, in a row
    sample = "kubefit_trainingjob_reconcile_failures"
    assert harness.metrics.registry.get_sample_value(sample, failures) == 4
    del harness.kube.fail[("create_service", "*")]
    harness.reconcile("retry")
    assert harness.condition("Ready")["reason"] == "AllWorkersReady"
    assert len(harness.events("AllWorkersReady")) == 2  # once, when the status said so again
    assert harness.metrics.registry.get_sample_value(sample, failures) is None  # gone with a success


def test_a_suspend_on_a_retry_that_fails_again_still_posts_its_suspended_event(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ready=False Suspended says what Suspended=True says, word for word: held back with Ready's event, the
    # Suspended event was lost, the held status having written the Suspended condition already.
    running_then_service_refused(harness, monkeypatch)
    harness.kube.jobs["llama"]["spec"]["runPolicy"] = {"suspend": True}
    harness.kube.jobs["llama"]["metadata"]["generation"] = 2
    for _ in range(3):
        harness.reconcile("retry")
    assert len(harness.events("Suspended")) == 1


def test_a_created_worker_the_index_does_not_show_yet_is_not_created_again(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.index_lags = True  # kopf's index shows none of the created pods yet
    harness.reconcile()
    harness.reconcile("admission")  # another watch's trigger arrives before the pods' own events
    harness.reconcile("pod")
    assert [call[1] for call in harness.calls("create_pod")] == ["llama-worker-0", "llama-worker-1"]


def test_deletes_come_after_the_transition_events_and_before_creates(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2, maxReplicas=3)
    uid = "uid-llama"
    harness.kube.pods = {
        "llama-worker-1": WorkerPod("llama-worker-1", 1, "p1", "Failed", "n", False, uid),
        "llama-worker-2": WorkerPod("llama-worker-2", 2, "p2", "Running", "n", False, uid),
    }
    harness.reconcile()
    calls = [call[:2] for call in harness.log]
    assert calls[:3] == [("get_job", "llama"), ("patch_job_status", "llama"), ("event", "Fits")]
    # Found with workers (as after an operator restart): admitted with them, no Queued round. The job is
    # not elastic, so the failure restarts its group (Ready=False, Restarting): told once, by WorkerFailed.
    assert calls[3:5] == [("event", "Admitted"), ("event", "WorkerFailed")]
    writes = [call for call in calls if call[0] in ("delete_pod", "create_pod")]
    assert writes == [
        ("delete_pod", "llama-worker-2"),  # the rest of the group
        ("delete_pod", "llama-worker-1"),  # failed: replaced
    ]
    assert calls[-1:] == [("event", "DeletedWorkers")]
    assert harness.kube.jobs["llama"]["status"]["restarts"] == 1

    # The group comes back once its old pods are gone and the backoff is over: creates, then their event.
    harness.kube.pods = {}
    harness.kube.jobs["llama"]["status"]["lastFailureTime"] = "2000-01-01T00:00:00Z"
    harness.log.clear()
    harness.reconcile()
    writes = [call[:2] for call in harness.log if call[0] in ("delete_pod", "create_pod")]
    assert writes == [("create_pod", "llama-worker-0"), ("create_pod", "llama-worker-1")]
    assert [call[:2] for call in harness.log][-1:] == [("event", "CreatedWorkers")]
    assert harness.kube.jobs["llama"]["status"]["restarts"] == 1


def test_a_failing_create_keeps_the_transition_events_and_becomes_a_reconcile_error(
    harness: Harness,
) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=5)
    harness.kube.fail[("create_pod", "llama-worker-1")] = QUOTA_403
    harness.reconcile()  # raises nothing
    assert [call[1] for call in harness.events()] == [
        "Fits",
        "Admitted",
        "CreatedWorkers",
        "ReconcileError",
    ]
    # Creates go in waves of 1, 2, 4, ... at once: worker 2 shared the failed one's wave, 3 and 4 were not tried.
    assert harness.events("CreatedWorkers")[0][2] == "created llama-worker-0, llama-worker-2"
    assert sorted(name for _, name in harness.calls("create_pod")) == [f"llama-worker-{i}" for i in range(3)]
    assert harness.kube.jobs["llama"]["status"]["replicas"] == 2
    ((_, _, message, event_type),) = harness.events("ReconcileError")
    assert event_type == "Warning"
    assert "exceeded quota: no-pods" in message and "(HTTP 403)" in message
    ready = harness.condition("Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "ReconcileError", message)
    assert harness.condition("Sized")["reason"] == "Fits"  # the status written before the create stays
    requeue = harness.reconciler.pending_requeue(KEY)
    assert requeue is not None and (requeue.trigger, requeue.delay) == ("retry", BACKOFF_FIRST)
    # The failing round is the one the pass's grant brought (while the first, put off for it, ran).
    errors = harness.metrics.registry.get_sample_value(
        "kubefit_reconcile_total", {"trigger": "admission", "result": "error"}
    )
    assert errors == 1


def test_once_the_quota_is_gone_the_retry_creates_the_rest_and_clears_the_error(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=3)
    harness.kube.fail[("create_pod", "*")] = QUOTA_403
    harness.reconcile()
    assert harness.condition("Ready")["reason"] == "ReconcileError"
    del harness.kube.fail[("create_pod", "*")]
    harness.reconcile("retry")
    assert sorted(harness.kube.pods) == ["llama-worker-0", "llama-worker-1", "llama-worker-2"]
    assert harness.condition("Ready")["reason"] == "WorkersNotReady"
    assert not retrying(harness)  # the success cancelled the retry
    assert len(harness.events("Fits")) == 1  # the transition was told once, not again on the retry


def creates_through(harness: Harness, server: PodServer) -> None:
    """The harness's worker creates go through KubeApi.create_pod against `server` first (its 409 handling),
    then into the fake index."""
    api = KubeApi(cast(Any, server))
    index_shows = harness.kube.create_pod

    def create_pod(namespace: str, manifest: dict[str, Any]) -> bool:
        return api.create_pod(namespace, manifest) and index_shows(namespace, manifest)

    harness.kube.create_pod = create_pod  # type: ignore[method-assign]


def test_a_worker_name_taken_by_a_pod_not_the_jobs_is_a_reconcile_error_naming_its_owner(
    harness: Harness,
) -> None:
    """The create's 409 was taken for the job's own worker: the job waited for it forever, with no error."""
    creates_through(harness, PodServer({"llama-worker-1": stateful_set_pod("llama-worker-1")}))
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconcile()
    ready = harness.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ReconcileError")
    assert "team-a/llama-worker-1" in ready["message"]
    assert "owned by StatefulSet llama-worker (uid uid-sts)" in ready["message"]
    ((_, _, message, event_type),) = harness.events("ReconcileError")
    assert (message, event_type) == (ready["message"], "Warning")
    assert sorted(harness.kube.pods) == ["llama-worker-0"] and retrying(harness)


@pytest.mark.parametrize("found", ["controlled by the job", "an orphan labelled as its worker"])
def test_a_409_from_the_jobs_own_worker_is_success(harness: Harness, found: str) -> None:
    # An earlier create whose answer was lost, or a worker whose owner reference was removed (adopted).
    owner = {"kind": "TrainingJob", "name": "llama", "uid": "uid-llama", "controller": True}
    own = {"name": "llama-worker-1", "labels": {"kubefit.dev/job": "llama"}}
    own["ownerReferences"] = [owner] if found == "controlled by the job" else []
    server = PodServer({"llama-worker-1": own})
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.create_pod = KubeApi(cast(Any, server)).create_pod  # type: ignore[method-assign]
    harness.reconcile()
    assert harness.condition("Ready")["reason"] == "WorkersNotReady" and not retrying(harness)
    assert sorted(server.pods) == ["llama-worker-0", "llama-worker-1"]
    assert server.sent[-1] == (
        "GET",
        "/api/v1/namespaces/team-a/pods?limit=1&fieldSelector=metadata.name%3Dllama-worker-1",
    )


@pytest.mark.parametrize("label", [None, "other-job"])
def test_the_jobs_own_worker_that_lost_its_job_label_is_a_reconcile_error_saying_so(
    harness: Harness, label: str | None
) -> None:
    """The 409 of a worker the job controls but whose label was removed or changed was taken for the worker
    being there: kopf's index of workers no longer shows it, so the job waited for it with nothing said."""
    owner = {"kind": "TrainingJob", "name": "llama", "uid": "uid-llama", "controller": True}
    unlabelled = {"name": "llama-worker-1", "labels": {} if label is None else {"kubefit.dev/job": label},
                  "ownerReferences": [owner]}  # fmt: skip
    creates_through(harness, PodServer({"llama-worker-1": unlabelled}))
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconcile()
    ready = harness.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ReconcileError")
    now = "kubefit.dev/job removed" if label is None else "now kubefit.dev/job=other-job"
    assert (
        f"team-a/llama-worker-1 is this TrainingJob's worker but lost its label kubefit.dev/job=llama ({now})"
        in (ready["message"])
    )
    assert "kubectl label pod llama-worker-1 -n team-a kubefit.dev/job=llama --overwrite" in ready["message"]
    assert sorted(harness.kube.pods) == ["llama-worker-0"] and retrying(harness)


def test_a_pod_of_a_workers_name_owned_by_nothing_is_not_the_jobs() -> None:
    bare = {"name": "llama-worker-0", "labels": {"app": "llama"}}
    api = KubeApi(cast(Any, PodServer({"llama-worker-0": bare})))
    worker = {"metadata": {"name": "llama-worker-0", "labels": {"kubefit.dev/job": "llama"},
                           "ownerReferences": [{"uid": "uid-llama", "controller": True}]}}  # fmt: skip
    with pytest.raises(PodNameTaken, match=r"team-a/llama-worker-0 exists .* \(owned by nothing\)"):
        api.create_pod(NAMESPACE, worker)


@pytest.mark.parametrize(
    ("found", "lasting"),
    [
        ({"ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "w", "controller": True}]}, True),
        ({"deletionTimestamp": "2026-12-05T10:00:00Z"}, False),  # on its way out
        # A TrainingJob of this name deleted and applied again: the garbage collector removes the old workers.
        (
            {
                "ownerReferences": [
                    {
                        "apiVersion": "kubefit.dev/v1alpha1",
                        "kind": "TrainingJob",
                        "name": "llama",
                        "uid": "uid-old",
                        "controller": True,
                    }
                ]
            },
            False,
        ),  # fmt: skip
        (
            {
                "ownerReferences": [
                    {
                        "apiVersion": "kubefit.dev/v1alpha1",
                        "kind": "TrainingJob",
                        "name": "other",
                        "uid": "uid-o",
                        "controller": True,
                    }
                ]
            },
            True,
        ),  # fmt: skip
    ],
)
def test_a_workers_name_taken_says_whether_it_lasts_on_a_create_and_on_a_dry_run(
    found: dict[str, Any], lasting: bool
) -> None:
    taken = {"name": "llama-worker-0", "labels": {"app": "web"}, **found}
    worker = {"metadata": {"name": "llama-worker-0", "labels": {"kubefit.dev/job": "llama"},
                           "ownerReferences": [{"uid": "uid-llama", "controller": True}]}}  # fmt: skip
    for call in (KubeApi.create_pod, KubeApi.try_pod):
        server = PodServer({"llama-worker-0": taken})
        with pytest.raises(PodNameTaken, match="llama-worker-0 exists") as raised:
            call(KubeApi(cast(Any, server)), NAMESPACE, worker)
        assert raised.value.lasting is lasting
        assert [method for method, _ in server.sent] == ["POST", "GET"]
    server = PodServer({"llama-worker-0": worker["metadata"]})  # the job's own: a dry run is admitted
    KubeApi(cast(Any, server)).try_pod(NAMESPACE, worker)
    assert "dryRun=All" in server.sent[0][1]


def test_a_job_whose_namespace_is_being_deleted_records_no_failure(harness: Harness) -> None:
    # Its workers gone with the namespace, the replacements' creates were refused (403): each job logged an
    # error, counted a failed reconcile and posted events the API server then refused (the operations audit).
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.fail[("create_pod", "*")] = api_error(
        403,
        'pods "llama-worker-0" is forbidden: unable to create new content in namespace team-a because it is '
        "being terminated",
    )
    harness.reconcile()
    assert not harness.events("ReconcileError") and not retrying(harness)
    labels = {"namespace": "team-a", "name": "llama"}
    assert harness.metrics.registry.get_sample_value("kubefit_trainingjob_reconcile_failures", labels) is None
    assert harness.reconciler._jobs[KEY].failures == 0


def test_a_create_refused_the_same_way_on_every_retry_posts_one_warning(harness: Harness) -> None:
    # Each retry writes its decision's status (no error in it) before the create fails again: the error
    # was taken for news against that status, and every retry posted a Warning more.
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.fail[("create_pod", "llama-worker-1")] = QUOTA_403
    harness.reconcile()
    for _ in range(3):
        harness.reconcile("retry")
    assert len(harness.events("ReconcileError")) == 1
    ready = harness.condition("Ready")
    assert ready["reason"] == "ReconcileError" and "exceeded quota: no-pods" in ready["message"]
    assert harness.kube.jobs["llama"]["status"]["replicas"] == 1
    # Another failure is news.
    harness.kube.fail[("create_pod", "llama-worker-1")] = api_error(403, "exceeded quota: gpus")
    harness.reconcile("retry")
    assert [call[2] for call in harness.events("ReconcileError")][1:] == ["exceeded quota: gpus (HTTP 403)"]


def test_the_api_servers_message_names_the_field_of_a_422(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=1)
    harness.kube.fail[("create_pod", "*")] = api_error(
        422,
        'Pod "llama-worker-0" is invalid: spec.containers[0].resources.requests[memory]: '
        'Invalid value: "16 Gi": quantities must match the regular expression',
    )
    harness.reconcile()
    message = harness.condition("Ready")["message"]
    assert "spec.containers[0].resources.requests[memory]" in message and "(HTTP 422)" in message


# ---------------------------------------------------------------------------------------------- safety net


def test_an_exception_in_decide_becomes_a_condition_and_other_jobs_are_still_served(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.kube.jobs["llama"] = job_manifest()
    harness.kube.jobs["other"] = job_manifest("other", replicas=1)
    real_decide = reconciler_module.decide

    def decide_failing_for_llama(observation: Any, *args: Any) -> Any:
        if observation.job.name == "llama":
            raise ZeroDivisionError("division by zero")
        return real_decide(observation, *args)

    monkeypatch.setattr(reconciler_module, "decide", decide_failing_for_llama)
    harness.reconcile()
    harness.reconcile(key=(NAMESPACE, "other"))
    ready = harness.condition("Ready")
    assert (ready["reason"], ready["message"]) == ("ReconcileError", "ZeroDivisionError: division by zero")
    assert [call[1:3] for call in harness.events("ReconcileError")] == [
        ("ReconcileError", "ZeroDivisionError: division by zero")
    ]
    assert not harness.calls("create_pod", "create_service")[0][1].startswith("llama")
    assert "other-worker-0" in harness.kube.pods
    requeue = harness.reconciler.pending_requeue(KEY)
    assert requeue is not None and requeue.trigger == "retry"


def test_a_failure_that_cannot_be_recorded_does_not_escape_either(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.kube.jobs["llama"] = job_manifest()
    fail_decide(monkeypatch, RuntimeError("bug"))
    harness.kube.fail[("patch_job_status", "*")] = api_error(500, "etcd is unavailable")
    harness.reconcile()
    assert harness.calls("patch_job_status") == [("patch_job_status", "llama")]
    assert harness.reconciler.pending_requeue(KEY) is not None


def test_an_api_server_that_is_down_is_retried_with_backoff(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest()
    harness.kube.fail[("get_job", "*")] = api_error(503, "the server is shutting down")
    harness.reconcile()
    assert harness.calls() == [("get_job", "llama"), ("get_job", "llama")]  # the pass, then the record
    requeue = harness.reconciler.pending_requeue(KEY)
    assert requeue is not None and requeue.delay == BACKOFF_FIRST


def test_backoff_doubles_to_the_cap_and_a_success_resets_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.kube.jobs["llama"] = job_manifest()
    fail_decide(monkeypatch, RuntimeError("bug"))
    delays = []
    for _ in range(9):
        harness.reconcile("retry")
        requeue = harness.reconciler.pending_requeue(KEY)
        assert requeue is not None
        delays.append(requeue.delay)
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    assert [backoff_seconds(n) for n in (1, 2, 1000)] == [BACKOFF_FIRST, 2 * BACKOFF_FIRST, BACKOFF_MAX]
    # The same failure again changes nothing on the job: one status write and one event in all.
    assert len(harness.calls("patch_job_status")) == 1 and len(harness.events("ReconcileError")) == 1

    monkeypatch.undo()  # decide works again
    monkeypatch.setattr(kopf, "event", lambda *a, **k: None)
    harness.reconcile("retry")
    assert not retrying(harness)
    assert harness.condition("Ready")["reason"] == "WorkersNotReady"
    fail_decide(monkeypatch, RuntimeError("bug again"))
    harness.reconcile("retry")
    requeue = harness.reconciler.pending_requeue(KEY)
    assert requeue is not None and requeue.delay == BACKOFF_FIRST


def test_while_backing_off_only_a_change_to_the_job_reconciles_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.kube.jobs["llama"] = job_manifest()
    fail_decide(monkeypatch, RuntimeError("bug"))
    harness.reconcile()
    harness.log.clear()
    harness.reconcile("timer")
    harness.reconcile("pod")
    assert harness.log == []  # the retry timer will observe afresh; no tight loop
    harness.reconcile("update")
    assert harness.calls("get_job") == [("get_job", "llama")]


def test_a_pod_event_during_a_pass_that_succeeds_while_the_job_backs_off_is_reconciled(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker fails while an edit's reconcile of a job backing off runs, after it observed the pods: the
    pod event, left to the retry, was lost when the pass succeeded (its success cancels the retry)."""
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconcile()
    for name, pod in list(harness.kube.pods.items()):
        harness.kube.pods[name] = replace(pod, phase="Running", node_name="h0")
    decide = reconciler_module.decide
    fail_decide(monkeypatch, RuntimeError("bug"))
    harness.reconcile("pod")
    assert retrying(harness)  # backing off

    def worker_fails_as_the_pass_decides(*args: Any, **kwargs: Any) -> Any:
        decision = decide(*args, **kwargs)
        if harness.kube.pods["llama-worker-1"].phase != "Failed":
            harness.kube.pods["llama-worker-1"] = replace(harness.kube.pods["llama-worker-1"], phase="Failed")
            harness.reconcile("pod")  # its event: the job is busy
        return decision

    monkeypatch.setattr(reconciler_module, "decide", worker_fails_as_the_pass_decides)
    harness.kube.jobs["llama"]["metadata"]["labels"] = {"team": "a"}  # an edit: reconciled at once
    harness.log.clear()
    harness.reconcile("update")
    assert not retrying(harness)  # the pass succeeded
    assert ("delete_pod", "llama-worker-1") in harness.calls("delete_pod")  # and went round for the event


def test_a_finished_job_recovers_from_a_reconcile_error(harness: Harness) -> None:
    job = job_manifest()
    job["status"] = {
        "phase": "Succeeded",
        "completionTime": "2025-01-01T00:00:00Z",
        "conditions": [
            {"type": "Succeeded", "status": "True", "reason": "AllWorkersSucceeded", "message": ""},
            {"type": "Ready", "status": "False", "reason": "ReconcileError", "message": "boom"},
        ],
    }
    harness.kube.jobs["llama"] = job
    harness.reconcile("retry")
    ready = harness.condition("Ready")
    assert (ready["reason"], ready["message"]) == ("Succeeded", "the job succeeded")


# ---------------------------------------------------------------------------------------------- coalescing


def test_triggers_during_a_reconcile_make_it_go_round_exactly_once_more(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest()
    arrivals = iter([3, 0])  # three triggers during the first pass, none during the second

    def triggers_arrive() -> None:
        for _ in range(next(arrivals, 0)):
            harness.reconcile("pod")  # the job is busy: only marks it dirty

    harness.kube.on_get = triggers_arrive
    harness.reconcile()
    assert harness.calls("get_job") == [("get_job", "llama")] * 2
    # Each round counts under its own trigger: the second under what brought it, the pass's grant (which
    # reconciled the job while it ran) rather than the pod events before it.
    assert reconciles_by_trigger(harness) == {"create": 1, "admission": 1}


def reconciles_by_trigger(harness: Harness) -> dict[str, float]:
    counted = {
        trigger: harness.metrics.registry.get_sample_value(
            "kubefit_reconcile_total", {"trigger": trigger, "result": "success"}
        )
        for trigger in ("create", "admission", "update", "pod", "timer")
    }
    return {trigger: count for trigger, count in counted.items() if count}


def test_a_job_update_during_a_pod_reconcile_counts_its_round_as_an_update(harness: Harness) -> None:
    # Counted under the running reconcile's trigger, a poke that landed during a pod event's reconcile never
    # moved the "update" count an end-to-end test waited for (a flake audit, 5 December).
    harness.kube.jobs["llama"] = job_manifest()
    harness.reconcile()
    arrivals = iter([("timer", "admission", "update", "pod"), ()])

    def triggers_arrive() -> None:
        for trigger in next(arrivals, ()):
            harness.reconcile(trigger)

    harness.kube.on_get = triggers_arrive
    harness.reconcile("pod")
    assert reconciles_by_trigger(harness) == {"create": 1, "admission": 1, "pod": 1, "update": 1}


def test_a_trigger_after_the_reconcile_ends_runs_a_new_one(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest()
    harness.reconcile()  # queued, then admitted: two passes
    harness.reconcile("pod")
    assert harness.calls("get_job") == [("get_job", "llama")] * 3


def test_an_edit_made_while_a_reconcile_fails_is_reconciled_at_once_not_at_the_retry(
    harness: Harness,
) -> None:
    """The job suspended while a quota refuses its workers: the update event finds the failing reconcile
    running, which then waited for its retry (up to BACKOFF_MAX) before reading the edit."""
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.fail[("create_pod", "*")] = QUOTA_403
    create = harness.kube.create_pod

    def suspended_as_the_create_is_refused(namespace: str, manifest: dict[str, Any]) -> bool:
        if not harness.events("ReconcileError"):
            harness.kube.jobs["llama"]["spec"]["runPolicy"] = {"suspend": True}
            harness.reconcile("update")  # its watch event: the job is busy
        return create(namespace, manifest)

    harness.kube.create_pod = suspended_as_the_create_is_refused  # type: ignore[method-assign]
    harness.reconcile()
    assert len(harness.events("ReconcileError")) == 1  # the pass before the edit failed
    assert harness.condition("Suspended")["status"] == "True"  # and the edit was reconciled at once
    assert harness.condition("Ready")["reason"] != "ReconcileError" and not retrying(harness)


def test_an_edit_the_failures_status_write_answers_with_is_reconciled_at_once(harness: Harness) -> None:
    """The edit's watch event comes after the answer to the write that records the failure, which holds the
    edit and a newer resourceVersion: the cache keeps the answer and takes the event for an older copy, so
    the event reconciles nothing, and the edit waited for the retry."""
    job = job_manifest(replicas=2)
    job["metadata"]["resourceVersion"] = "10"
    harness.kube.jobs["llama"] = copy.deepcopy(job)
    harness.reconciler.jobs.observe(KEY, copy.deepcopy(job))
    harness.kube.fail[("create_pod", "llama-worker-1")] = QUOTA_403
    edits: list[dict[str, Any]] = []

    def patch(namespace: str, name: str, uid: str, status: dict[str, Any]) -> dict[str, Any]:
        stored = harness.kube.jobs[name]
        if not edits and any(item["reason"] == "ReconcileError" for item in status.get("conditions", [])):
            stored["spec"]["workers"]["replicas"] = 1  # kubectl scale, just before this write
            stored["metadata"]["resourceVersion"] = str(int(stored["metadata"]["resourceVersion"]) + 1)
            edits.append(copy.deepcopy(stored))  # its watch event, still on its way
        FakeKube.patch_job_status(harness.kube, namespace, name, uid, status)
        stored["metadata"]["resourceVersion"] = str(int(stored["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(stored)

    harness.kube.patch_job_status = patch  # type: ignore[assignment, method-assign]
    harness.reconcile()
    assert len(edits) == 1 and not harness.reconciler.jobs.observe(KEY, edits[0])  # the event comes too late
    assert harness.condition("Ready")["reason"] == "WorkersNotReady"  # decided again on 1 worker, at once
    assert harness.kube.jobs["llama"]["status"]["desiredReplicas"] == 1 and not retrying(harness)


def test_forget_cancels_the_requeue(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    harness.kube.jobs["llama"] = job_manifest()
    fail_decide(monkeypatch, RuntimeError("bug"))
    harness.reconcile()
    requeue = harness.reconciler.pending_requeue(KEY)
    assert requeue is not None and requeue.trigger == "retry"
    harness.reconciler.forget(KEY)
    assert harness.reconciler.pending_requeue(KEY) is None
    harness.reconcile("pod")  # and the backoff went with the job's state
    assert harness.calls("get_job")[-1] == ("get_job", "llama") and len(harness.calls("get_job")) == 2


def test_requeues_run_in_due_order_once_and_replaced_or_cancelled_ones_never() -> None:
    clock = RequeueClock()
    ran: list[str] = []
    done = threading.Event()

    def requeue(name: str, delay: float) -> Requeue:
        def run() -> None:
            ran.append(name)
            if name == "last":
                done.set()

        return Requeue("timer", delay, time.monotonic() + delay, run)

    clock.schedule(("ns", "a"), requeue("a-replaced", 0.05))
    clock.schedule(("ns", "a"), requeue("a", 0.15))  # replaces the one above
    clock.schedule(("ns", "b"), requeue("b", 0.05))
    clock.schedule(("ns", "c"), requeue("c-cancelled", 0.1))
    clock.schedule(("ns", "c"), None)
    clock.schedule(("ns", "d"), requeue("last", 0.3))
    assert done.wait(10)
    time.sleep(0.1)  # a late duplicate would show now
    assert ran == ["b", "a", "last"]
    assert clock.pending(("ns", "a")) is None


def test_the_requeue_heap_sheds_replaced_entries() -> None:
    clock = RequeueClock()
    for index in range(1000):  # a finished job's TTL requeue, replaced on every resync for a day
        clock.schedule(
            ("ns", "done"), Requeue("timer", 86400.0, time.monotonic() + 86400 + index, lambda: None)
        )
    assert len(clock._heap) <= 2 * 1 + 64 + 1


# ---------------------------------------------------------------------------------------------- batches


@pytest.mark.parametrize("index_lags", [False, True], ids=["index-current", "index-lagging"])
def test_workers_are_created_in_bounded_batches_each_once(harness: Harness, index_lags: bool) -> None:
    workers = 2 * CREATE_BATCH + 20
    harness.kube.jobs["llama"] = job_manifest(replicas=workers)
    harness.index_lags = index_lags
    harness.reconcile()
    per_pass: list[int] = []
    for call in harness.log:
        if call[0] == "get_job":
            per_pass.append(0)
        elif call[0] == "create_pod":
            per_pass[-1] += 1
    assert max(per_pass) <= CREATE_BATCH
    assert per_pass[:4] == [0, CREATE_BATCH, CREATE_BATCH, 20]  # queued first, then admitted
    created = [call[1] for call in harness.calls("create_pod")]
    assert len(created) == len(set(created)) == workers  # none twice, though the index lags
    assert all(len(event[2].split(", ")) <= CREATE_BATCH for event in harness.events("CreatedWorkers"))


def test_a_decisions_creates_run_in_growing_waves_at_once(harness: Harness) -> None:
    # 7 workers: waves of 1, 2 and 4. The 4 of the last wave each wait at a barrier for the other 3, which
    # only a wave sent at once passes (one at a time, the first would wait out the barrier's timeout).
    harness.kube.jobs["llama"] = job_manifest(replicas=7)
    barrier = threading.Barrier(4, timeout=10)
    create = harness.kube.create_pod
    waves: list[str] = []

    def create_in_waves(namespace: str, manifest: dict[str, Any]) -> bool:
        name = manifest["metadata"]["name"]
        if worker_index(name, "llama") >= 3:
            barrier.wait()
        waves.append(name)
        return create(namespace, manifest)

    harness.kube.create_pod = create_in_waves  # type: ignore[method-assign]
    harness.reconcile()
    assert sorted(harness.kube.pods) == [f"llama-worker-{index}" for index in range(7)]
    assert waves[0] == "llama-worker-0" and set(waves[1:3]) == {"llama-worker-1", "llama-worker-2"}
    assert harness.condition("Ready")["reason"] == "WorkersNotReady"  # no reconcile error


def test_memory_of_a_reconcile_does_not_grow_with_the_worker_count(harness: Harness) -> None:
    def peak_bytes(workers: int) -> int:
        harness.kube.jobs["llama"] = job_manifest(replicas=workers)
        harness.kube.pods.clear()
        harness.reconciler.forget(KEY)  # a new job: none of its workers created by this process yet
        tracemalloc.start()
        try:
            harness.reconcile("update")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_bytes(CREATE_BATCH), peak_bytes(8 * CREATE_BATCH)
    assert len(harness.kube.pods) == 8 * CREATE_BATCH
    # Building every manifest up front costs ~8 KiB a worker: 2.8 MiB more for the large job.
    assert large - small < 1 * 2**20, (small, large)


# ---------------------------------------------------------------------------------------------- limit


def test_a_job_over_the_operators_worker_limit_gets_invalid_spec_and_no_pods(harness: Harness) -> None:
    harness.reconciler.settings = ReconcileSettings(max_workers_per_job=8)
    harness.kube.jobs["llama"] = job_manifest(replicas=4, maxReplicas=9)
    harness.reconcile()
    ready = harness.condition("Ready")
    assert ready["reason"] == "InvalidSpec"
    assert "spec.workers.maxReplicas: 9 workers exceed this operator's limit of 8" in ready["message"]
    assert harness.calls("create_pod") == []


def test_the_limit_flag_reaches_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubefit.controller import runner

    seen: list[Any] = []
    monkeypatch.setattr(runner, "run_operator", seen.append)
    args = build_parser().parse_args(["run", "--max-workers-per-job", "64"])
    assert args.handler(args) == 0
    assert seen[0].max_workers_per_job == 64
    defaults = build_parser().parse_args(["run"])
    defaults.handler(defaults)
    assert seen[1].max_workers_per_job == DEFAULT_MAX_WORKERS_PER_JOB
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--max-workers-per-job", "0"])


def test_error_message_of_a_non_json_api_error() -> None:
    error = ApiException(status=500, reason="Internal Server Error")
    error.body = "<html>proxy error</html>"
    assert error_message(error) == "Internal Server Error (HTTP 500)"
    assert error_message(KeyError("containers")) == "KeyError: 'containers'"


# ---------------------------------------------------------------------------------------------- handshake


def test_a_scale_down_opens_a_checkpoint_request_and_the_last_ack_removes_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[Call] = []
    monkeypatch.setattr(
        kopf, "event", lambda body, *, type, reason, message="": log.append(("event", reason))
    )
    kube = FakeKube(log)
    board = NotifyingBoard()
    reconciler = Reconciler(cast(KubeApi, kube), CATALOG, OperatorMetrics(), board=board)
    job = job_manifest(replicas=2, maxReplicas=2, minReplicas=1)
    job["spec"]["elastic"] = {"enabled": True, "checkpointGracePeriodSeconds": 600}
    kube.jobs["llama"] = job
    view = ClusterView(
        nodes=lambda: NODES,
        usage=lambda: {},
        workers=lambda key: [replace(pod, phase="Running", node_name="h0") for pod in kube.pods.values()],
    )
    reconciler.reconcile(KEY, "create", view)
    assert sorted(kube.pods) == ["llama-worker-0", "llama-worker-1"]
    assert reconciler.scheduler.snapshot()[KEY].workers == 2

    kube.jobs["llama"]["spec"]["workers"]["replicas"] = 1  # kubectl scale
    reconciler.reconcile(KEY, "update", view)
    request = board.current(KEY)
    assert request is not None  # asked, and waiting: nobody acknowledged yet
    assert kube.jobs["llama"]["status"]["checkpoint"]["requestId"] == request
    assert sorted(kube.pods) == ["llama-worker-0", "llama-worker-1"]

    assert not board.acknowledge(KEY, request, "llama-worker-5", 120)  # no such pod: its ack is refused
    assert board.acknowledge(KEY, request, "llama-worker-0", 120)
    assert "llama-worker-1" in kube.pods  # one of two
    assert board.acknowledge(KEY, request, "llama-worker-1", 120)  # the last: reconciled at once
    assert sorted(kube.pods) == ["llama-worker-0"]
    assert board.current(KEY) is None  # closed once the removal is done
    reconciler.forget(KEY)
    assert board.acknowledged(KEY, request) == {}


# ---------------------------------------------------------------------------------------------- the catalog


def test_the_remembering_catalog_answers_as_the_catalog_and_matches_each_label_set_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog = remembering(CATALOG)
    assert remembering(catalog) is catalog
    matched: list[str] = []
    original = Catalog.identify

    def counting(self: Catalog, labels: Any) -> Any:
        matched.append(labels.get("kubernetes.io/hostname", ""))
        return original(self, labels)

    monkeypatch.setattr(Catalog, "identify", counting)
    nodes = [*NODES[:3], NodeFacts("cpu", {"kubernetes.io/hostname": "cpu"}, {})]
    for _ in range(5):
        assert [catalog.identify(node.labels) for node in nodes] == [
            CATALOG.identify(n.labels) for n in nodes
        ]
    assert sum(1 for name in matched if name == "cpu") == 5 + 1  # CATALOG's own five, and one for the memory
    assert catalog.identify(NODES[0].labels) is not None and catalog.identify(NODES[0].labels).name == (
        "nvidia-h100-80gb"
    )
    assert isinstance(catalog.extended([]), RememberingCatalog)


def test_the_queue_keeps_no_eligible_node_names_per_job(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconcile()
    grants = harness.reconciler.scheduler.snapshot()
    assert grants[KEY].workers == 2  # admitted on the 64 nodes, as before
    entry = harness.reconciler.scheduler._entries[KEY]
    assert entry.demand is not None and entry.demand.eligible_nodes is None


def test_a_job_the_watch_showed_is_reconciled_without_a_get_and_its_status_patch_answer_is_kept(
    harness: Harness,
) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, job_manifest(replicas=2))  # what handlers.py's job event keeps
    answered = []

    def patch_answering(namespace: str, name: str, uid: str, status: dict[str, Any]) -> dict[str, Any]:
        FakeKube.patch_job_status(harness.kube, namespace, name, uid, status)
        written = copy.deepcopy(harness.kube.jobs[name])
        answered.append(written)
        return written  # the API server answers a patch with the object

    harness.kube.patch_job_status = patch_answering  # type: ignore[assignment, method-assign]
    harness.reconcile()
    assert harness.calls("get_job") == [] and len(answered) == 1
    assert harness.reconciler.jobs.read(KEY, harness.kube.get_job) == answered[0]
    harness.reconcile("timer")  # the created workers are counted in the status
    writes = len(harness.calls("patch_job_status"))
    assert harness.reconciler.jobs.read(KEY, harness.kube.get_job) == answered[-1]
    harness.reconcile("timer")  # reads what it wrote: nothing to write again
    assert harness.calls("get_job") == [] and len(harness.calls("patch_job_status")) == writes


def test_a_change_that_came_while_the_status_was_written_makes_the_reconcile_go_round_again(
    harness: Harness,
) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, job_manifest(replicas=2))
    decided: list[int] = []
    original = reconciler_module.decide

    def recording(observation: Any, *args: Any) -> Any:
        decided.append(observation.spec["workers"]["replicas"])
        return original(observation, *args)

    def patch_after_a_scale(namespace: str, name: str, uid: str, status: dict[str, Any]) -> dict[str, Any]:
        FakeKube.patch_job_status(harness.kube, namespace, name, uid, status)
        if harness.kube.jobs[name]["spec"]["workers"]["replicas"] == 2:
            harness.kube.jobs[name]["spec"]["workers"]["replicas"] = (
                1  # kubectl scale, its event still queued
            )
        return copy.deepcopy(harness.kube.jobs[name])

    reconciler_module.decide = recording  # type: ignore[assignment]
    try:
        harness.kube.patch_job_status = patch_after_a_scale  # type: ignore[assignment, method-assign]
        harness.reconcile()
    finally:
        reconciler_module.decide = original  # type: ignore[assignment]
    assert decided[-1] == 1  # the answer showed the scale: decided again on it, not at the next resync


def test_no_worker_is_created_from_a_spec_edited_while_the_status_was_written(harness: Harness) -> None:
    """An edit that lands before the first status that counts workers passes the webhook's running-group
    guard (status.replicas still 0): workers created from the spec the pass read then held the old device
    count or template for good (the bad-input audit: acceleratorsPerWorker edited right after the apply)."""
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, job_manifest(replicas=2))
    created: list[dict[str, Any]] = []
    create = harness.kube.create_pod

    def recording(namespace: str, manifest: dict[str, Any]) -> bool:
        created.append(manifest)
        return create(namespace, manifest)

    def patch_after_an_edit(namespace: str, name: str, uid: str, status: dict[str, Any]) -> dict[str, Any]:
        FakeKube.patch_job_status(harness.kube, namespace, name, uid, status)
        container = harness.kube.jobs[name]["spec"]["template"]["spec"]["containers"][0]
        container.setdefault("env", [{"name": "EDITED", "value": "1"}])
        return copy.deepcopy(harness.kube.jobs[name])

    harness.kube.create_pod = recording  # type: ignore[method-assign]
    harness.kube.patch_job_status = patch_after_an_edit  # type: ignore[assignment, method-assign]
    harness.reconcile()
    assert len(created) == 2
    for manifest in created:
        assert {"name": "EDITED", "value": "1"} in manifest["spec"]["containers"][0]["env"], manifest[
            "metadata"
        ]


def test_a_job_gone_when_its_status_is_written_is_forgotten(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, job_manifest(replicas=2))
    harness.kube.fail[("patch_job_status", "*")] = api_error(404, 'trainingjobs "llama" not found')
    harness.reconcile()
    assert KEY not in harness.reconciler.jobs and not retrying(harness)
    assert harness.calls("create_pod") == [] and harness.events("ReconcileError") == []
    assert KEY not in harness.reconciler.scheduler.snapshot()
    # A deletion racing the reconcile is no failure for KubefitReconcileErrors to count.
    registry = harness.metrics.registry
    assert not registry.get_sample_value("kubefit_reconcile_total", {"trigger": "create", "result": "error"})
    assert registry.get_sample_value("kubefit_reconcile_total", {"trigger": "create", "result": "success"})


def test_the_status_of_a_job_deleted_and_created_again_meanwhile_does_not_land_on_the_new_one(
    harness: Harness,
) -> None:
    harness.reconciler.jobs.observe(KEY, job_manifest(replicas=2))  # the old job, as read
    new = job_manifest(replicas=1)
    new["metadata"]["uid"] = "uid-llama-again"
    new["status"] = {"phase": "Queued"}
    harness.kube.jobs["llama"] = copy.deepcopy(new)  # what the API server holds now
    harness.reconcile()
    assert harness.calls("patch_job_status") == [("patch_job_status", "llama")]  # tried, refused
    assert harness.kube.jobs["llama"] == new  # untouched
    assert harness.calls("create_pod") == [] and harness.events("ReconcileError") == []
    assert KEY not in harness.reconciler.jobs and not retrying(harness)
    assert KEY not in harness.reconciler.scheduler.snapshot()
    harness.reconciler.jobs.observe(KEY, copy.deepcopy(new))  # the new job's ADDED event
    harness.reconcile()
    assert harness.kube.jobs["llama"]["status"]["replicas"] == 1  # the new job is reconciled as itself


def test_a_status_is_written_whole_over_the_one_read_and_a_null_removes_a_field(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=1)
    harness.kube.jobs["llama"]["spec"]["runPolicy"] = {"suspend": True}  # sized, and no worker runs
    harness.reconcile()
    written = harness.kube.jobs["llama"]["status"]
    assert written["replicas"] == 0 and "sizing" in written
    assert all(value is not None for value in written.values())
    # Now invalid with no worker holding devices: no sizing (one whose workers run keeps theirs).
    harness.kube.jobs["llama"]["spec"]["model"] = {"parameters": "not a size"}
    harness.reconcile("update")
    assert "sizing" not in harness.kube.jobs["llama"]["status"]


def test_a_job_whose_spec_turns_invalid_while_its_workers_run_keeps_their_sizing(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=1)
    harness.reconcile()
    sizing = harness.kube.jobs["llama"]["status"]["sizing"]
    harness.kube.jobs["llama"]["spec"]["model"] = {"parameters": "not a size"}
    for _ in range(2):
        harness.reconcile("update")
    status = harness.kube.jobs["llama"]["status"]
    assert status["sizing"] == sizing
    assert any(item["reason"] == "InvalidSpec" for item in status["conditions"])


def test_jobs_deleted_while_no_watch_event_could_say_so_are_forgotten(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, job_manifest(replicas=2))
    harness.reconcile()
    assert KEY in harness.reconciler.scheduler.snapshot()
    assert harness.reconciler.forget_vanished(harness.view()) == []  # still there: kept
    del harness.kube.jobs["llama"]  # deleted while the watch was broken: no DELETED event
    assert harness.reconciler.forget_vanished(harness.view()) == [KEY]
    assert KEY not in harness.reconciler.jobs and KEY not in harness.reconciler.scheduler.snapshot()
    assert harness.reconciler.jobs.read(KEY, harness.kube.get_job) is None


def test_one_namespace_that_cannot_be_listed_leaves_the_others_checked(harness: Harness) -> None:
    # The first namespace's error ended the check: jobs deleted elsewhere stayed held until it listed again.
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, job_manifest(replicas=2))
    harness.reconcile()
    gone = copy.deepcopy(job_manifest(replicas=1))
    gone["metadata"] |= {"namespace": "team-b", "name": "gone", "uid": "uid-gone"}
    harness.reconciler.jobs.observe(("team-b", "gone"), gone)

    def listed(namespace: str) -> dict[str, str]:
        if namespace == NAMESPACE:
            raise ApiException(status=403, reason="Forbidden")
        return {}  # team-b/gone was deleted while the watch was broken

    harness.kube.job_uids = listed  # type: ignore[method-assign]
    with pytest.raises(ApiException):  # still reported: the resync logs it and lists again next period
        harness.reconciler.forget_vanished(harness.view())
    assert ("team-b", "gone") not in harness.reconciler.jobs
    assert KEY in harness.reconciler.jobs  # not judged from a list that failed


def test_a_job_created_again_while_the_jobs_were_listed_is_not_forgotten(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, job_manifest(replicas=2))
    harness.reconcile()
    again = job_manifest(replicas=1)
    again["metadata"]["uid"] = "uid-llama-again"

    def listed_before_the_new_job_arrived(namespace: str) -> dict[str, str]:
        harness.reconciler.jobs.observe(KEY, copy.deepcopy(again))  # its ADDED event, during the LIST
        return {}  # the LIST saw neither: the old one was deleted, the new one not created yet

    harness.kube.job_uids = listed_before_the_new_job_arrived  # type: ignore[method-assign]
    assert KEY in harness.reconciler.scheduler.snapshot()
    harness.reconciler.forget_vanished(harness.view())
    held = harness.reconciler.jobs.read(KEY, lambda *_: None)
    assert held is not None and held["metadata"]["uid"] == "uid-llama-again"
    assert KEY in harness.reconciler.scheduler.snapshot()  # its place in the queue is not taken from it


def test_the_old_jobs_deletion_that_comes_after_the_new_ones_event_leaves_the_new_job_alone(
    harness: Harness,
) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, job_manifest(replicas=2))
    harness.reconcile()
    old_uid = harness.kube.jobs["llama"]["metadata"]["uid"]
    again = job_manifest(replicas=1)
    again["metadata"]["uid"] = "uid-llama-again"
    harness.kube.jobs["llama"] = copy.deepcopy(again)
    harness.reconciler.jobs.observe(KEY, copy.deepcopy(again))  # kopf handled the new uid's ADDED first
    harness.reconcile("create")
    labels = {"namespace": NAMESPACE, "name": "llama", "state": "max"}
    assert harness.metrics.registry.get_sample_value("kubefit_trainingjob_workers", labels) == 1
    harness.reconciler.job_deleted(KEY, old_uid, harness.view())  # then the old uid's DELETED
    held = harness.reconciler.jobs.read(KEY, lambda *_: None)
    assert held is not None and held["metadata"]["uid"] == "uid-llama-again"
    assert KEY in harness.reconciler.scheduler.snapshot()
    assert harness.metrics.registry.get_sample_value("kubefit_trainingjob_workers", labels) == 1


def test_workers_whose_create_failed_are_not_counted_in_the_failures_status(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.fail[("create_pod", "llama-worker-1")] = QUOTA_403
    harness.reconcile()
    status = harness.kube.jobs["llama"]["status"]
    assert harness.condition("Ready")["reason"] == "ReconcileError"
    assert status["replicas"] == 1  # worker-0 was created, worker-1 was refused


def test_a_job_whose_workers_are_refused_has_its_series_and_its_admission_observed(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.jobs["llama"]["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    harness.kube.fail[("create_pod", "llama-worker-0")] = QUOTA_403
    harness.reconcile()
    assert harness.condition("Ready")["reason"] == "ReconcileError"
    labels = {"namespace": NAMESPACE, "name": "llama", "state": "desired"}
    assert harness.metrics.registry.get_sample_value("kubefit_trainingjob_workers", labels) == 2
    assert harness.metrics.registry.get_sample_value("kubefit_queue_wait_seconds_count") == 1


def test_a_trigger_that_comes_as_a_reconcile_ends_is_reconciled(harness: Harness) -> None:
    # A trigger that finds the job busy marks it dirty; if it lands just before the reconcile ends, the
    # reconcile goes round again rather than leaving the job dirty and idle until the resync.
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconcile("create")
    harness.reconcile("pod")
    reconciler = harness.reconciler
    release = reconciler._release_unless_dirty
    injected: list[bool] = []

    def trigger_then_release(key: tuple[str, str], state: Any, failed: bool = False) -> bool:
        if not injected:
            injected.append(True)
            harness.kube.jobs["llama"]["spec"]["runPolicy"] = {"suspend": True}
            other = threading.Thread(target=harness.reconcile, args=("update",))
            other.start()
            other.join()  # it found the job busy, marked it dirty and returned
        return release(key, state, failed)

    reconciler._release_unless_dirty = trigger_then_release  # type: ignore[method-assign]
    reads = len(harness.calls("get_job"))
    harness.reconcile("pod")
    assert injected and len(harness.calls("get_job")) > reads
    assert harness.condition("Suspended")["status"] == "True"


def test_a_deleted_jobs_state_goes_once_its_workers_events_are_reconciled(harness: Harness) -> None:
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, harness.kube.get_job(*KEY))
    harness.reconcile("create")
    job = harness.kube.jobs.pop("llama")
    harness.reconciler.job_deleted(KEY, job["metadata"]["uid"], harness.view())
    harness.kube.pods.clear()  # the garbage collector deletes the workers; their events reconcile the job
    harness.reconcile("pod")
    assert KEY not in harness.reconciler._jobs  # no per-job state left for a job that is gone


def test_a_job_deleted_while_its_failure_is_recorded_leaves_no_state_behind(harness: Harness) -> None:
    # The failure's status write answers 404: the job is forgotten, and so is its backoff (a job created
    # again under the name does not start out backing off, with the old job's creates remembered).
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, copy.deepcopy(harness.kube.jobs["llama"]))
    harness.kube.fail[("create_pod", "*")] = QUOTA_403
    patch = harness.kube.patch_job_status

    def deleted_as_the_failure_is_written(
        namespace: str, name: str, uid: str, status: dict[str, Any]
    ) -> None:
        if any(item["reason"] == "ReconcileError" for item in status.get("conditions", [])):
            harness.kube.jobs.pop(name)  # kubectl delete came first
        patch(namespace, name, uid, status)

    harness.kube.patch_job_status = deleted_as_the_failure_is_written  # type: ignore[method-assign]
    harness.reconcile()
    assert harness.calls("patch_job_status")[-1] == ("patch_job_status", "llama")  # answered 404
    assert KEY not in harness.reconciler.jobs and not retrying(harness)
    assert KEY not in harness.reconciler._jobs


def test_a_job_deleted_as_a_pass_of_it_fails_leaves_no_state_behind(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's DELETED event is handled while a failing pass records its failure: the pass, which goes
    round after a failure only for a change to the job, kept the deleted job's state for good."""
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, copy.deepcopy(harness.kube.jobs["llama"]))
    fail_decide(monkeypatch, RuntimeError("bug"))
    harness.reconcile()
    assert retrying(harness)
    reconciler = harness.reconciler
    write_failure = reconciler._write_failure

    def deleted_as_the_failure_is_recorded(*args: Any) -> None:
        write_failure(*args)
        if "llama" in harness.kube.jobs:
            job = harness.kube.jobs.pop("llama")
            reconciler.job_deleted(KEY, job["metadata"]["uid"], harness.view())  # the job is busy

    monkeypatch.setattr(reconciler, "_write_failure", deleted_as_the_failure_is_recorded)
    harness.reconcile("update")
    assert "llama" not in harness.kube.jobs and reconciler.pending_requeue(KEY) is None
    assert KEY not in reconciler._jobs


def test_a_job_deleted_just_after_a_pass_read_it_leaves_no_uid_behind(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's DELETED event is handled between a pass's read of the job and its record of the job's uid:
    the uid was put back after the deletion forgot it, and job_uid answered for a job that is gone."""
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    reconciler = harness.reconciler
    reconciler.jobs.observe(KEY, copy.deepcopy(harness.kube.jobs["llama"]))
    harness.reconcile()
    for name, pod in list(harness.kube.pods.items()):
        harness.kube.pods[name] = replace(pod, phase="Running", node_name="h0")
    for _ in range(2):  # until the status is steady: the racing pass writes nothing (no 404 to tell it)
        harness.reconcile("pod")
        reconciler.jobs.observe(KEY, copy.deepcopy(harness.kube.jobs["llama"]))  # the watch shows the status
    assert reconciler.job_uid(*KEY) == "uid-llama"
    read = reconciler.jobs.read

    def deleted_as_it_is_read(key: tuple[str, str], fetch: Any) -> dict[str, Any] | None:
        job = read(key, fetch)
        if job is not None and "llama" in harness.kube.jobs:
            gone = harness.kube.jobs.pop("llama")
            reconciler.job_deleted(KEY, gone["metadata"]["uid"], harness.view())  # the job is busy
        return job

    monkeypatch.setattr(reconciler.jobs, "read", deleted_as_it_is_read)
    harness.log.clear()
    harness.reconcile("pod")
    assert "llama" not in harness.kube.jobs and harness.calls("patch_job_status") == []
    assert reconciler.job_uid(*KEY) is None and KEY not in reconciler._uids
    assert KEY not in reconciler._jobs


def test_a_checkpoint_request_a_running_reconcile_opens_after_the_job_was_deleted_is_closed(
    harness: Harness,
) -> None:
    """The job's DELETED event is handled while its reconcile is between its status write and opening the
    request that status names: the request stayed open on the board, for a job that is gone."""
    manifest = job_manifest(replicas=3, minReplicas=1, maxReplicas=3)
    manifest["spec"]["elastic"] = {"enabled": True, "checkpointGracePeriodSeconds": 60}
    harness.kube.jobs["llama"] = manifest
    harness.kube.pods = {
        f"llama-worker-{index}": WorkerPod(
            f"llama-worker-{index}", index, f"p{index}", "Running", "n", False, "uid-llama"
        )
        for index in range(3)
    }
    harness.reconcile()
    patch = harness.kube.patch_job_status

    def deleted_as_the_request_is_written(
        namespace: str, name: str, uid: str, status: dict[str, Any]
    ) -> None:
        patch(namespace, name, uid, status)
        if status.get("checkpoint"):
            del harness.kube.jobs[name]
            harness.reconciler.job_deleted(KEY, uid, harness.view())  # the job is busy: marked dirty

    harness.kube.patch_job_status = deleted_as_the_request_is_written  # type: ignore[method-assign]
    harness.kube.jobs["llama"]["spec"]["workers"]["replicas"] = 2
    harness.reconcile("update")
    assert harness.events("CheckpointRequested")  # the status named the request
    assert harness.reconciler.board.current(KEY) is None
    assert harness.reconciler.pending_requeue(KEY) is None and KEY not in harness.reconciler._jobs


def test_a_reconcile_whose_writes_are_stopped_records_no_failure_and_schedules_no_retry(
    harness: Harness,
) -> None:
    """A leader handing the Lease over refuses its own writes (kube.WriteGate): a reconcile still running
    then is neither an error on the job (the next leader would read it) nor retried here."""
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.kube.fail[("patch_job_status", "*")] = WritesStopped("the operator is stopping")
    harness.reconcile()
    assert harness.calls("patch_job_status") == [("patch_job_status", "llama")]  # tried once, not recorded
    assert harness.calls("create_pod", "event") == []
    assert harness.reconciler.pending_requeue(KEY) is None
    errors = harness.metrics.registry.get_sample_value(
        "kubefit_reconcile_total", {"trigger": "create", "result": "error"}
    )
    assert not errors


def test_a_removal_that_went_ahead_is_not_asked_for_again_while_the_index_still_shows_the_worker(
    harness: Harness,
) -> None:
    """After the handshake the worker is deleted; kopf's index shows it live a moment longer. Taken as
    live, it opened a second checkpoint request: the survivors saved again, and a grace period ran again."""
    manifest = job_manifest(replicas=3, minReplicas=1, maxReplicas=3)
    manifest["spec"]["elastic"] = {"enabled": True, "checkpointGracePeriodSeconds": 60}
    harness.kube.jobs["llama"] = manifest
    uid = "uid-llama"
    running = {
        f"llama-worker-{index}": WorkerPod(
            f"llama-worker-{index}", index, f"p{index}", "Running", "n", False, uid
        )
        for index in range(3)
    }
    harness.kube.pods = dict(running)
    harness.reconcile()
    harness.kube.jobs["llama"]["spec"]["workers"]["replicas"] = 2
    harness.reconcile("update")
    request = harness.kube.jobs["llama"]["status"]["checkpoint"]["requestId"]
    assert len(harness.events("CheckpointRequested")) == 1
    for name in running:
        harness.reconciler.board.acknowledge(KEY, request, name, 100)
    harness.reconcile("pod")
    assert harness.calls("delete_pod") == [("delete_pod", "llama-worker-2")]
    harness.kube.pods["llama-worker-2"] = running["llama-worker-2"]  # the index, one event behind
    harness.reconcile("pod")
    assert len(harness.events("CheckpointRequested")) == 1
    assert harness.calls("delete_pod") == [("delete_pod", "llama-worker-2")]
    assert harness.kube.jobs["llama"]["status"].get("checkpoint") is None


def test_a_fixed_size_group_gets_no_worker_of_another_size_beside_ones_the_index_does_not_show_yet(
    harness: Harness,
) -> None:
    """Workers 0 and 1 were created for a world of 2; before kopf's index shows them the job asks for 3.
    Creating worker 2 for a world of 3 then made a mixed group (seen on the sandbox with a jax job)."""
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.index_lags = True
    harness.reconcile()
    assert harness.calls("create_pod") == [("create_pod", "llama-worker-0"), ("create_pod", "llama-worker-1")]
    harness.kube.jobs["llama"]["spec"]["workers"]["replicas"] = 3
    harness.reconcile("update")
    assert ("create_pod", "llama-worker-2") not in harness.calls("create_pod")
    harness.index_lags = False  # the index shows the two: the decision restarts the group with 3
    harness.reconcile("pod")
    assert ("create_pod", "llama-worker-2") not in harness.calls("create_pod")
    ready = harness.condition("Ready")
    assert ready["reason"] == "Restarting" and "from 2 to 3 workers" in ready["message"]


def test_a_job_resumed_before_its_suspend_handshake_ends_keeps_its_workers(harness: Harness) -> None:
    """Suspended, the job leaves the queue while its workers wait to checkpoint; resumed before they are
    deleted, they are its own again: not stopped, not requeued as if preempted."""
    manifest = job_manifest(replicas=2, minReplicas=1, maxReplicas=2)
    manifest["spec"]["elastic"] = {"enabled": True, "checkpointGracePeriodSeconds": 600}
    harness.kube.jobs["llama"] = manifest
    running = {
        f"llama-worker-{index}": WorkerPod(
            f"llama-worker-{index}", index, f"p{index}", "Running", "n", False, "uid-llama"
        )
        for index in range(2)
    }
    harness.kube.pods = dict(running)
    harness.reconcile()
    harness.kube.jobs["llama"]["spec"]["runPolicy"] = {"suspend": True}
    harness.reconcile("update")
    assert harness.condition("Suspended")["status"] == "True"
    assert harness.kube.jobs["llama"]["status"]["checkpoint"]["reason"] == "Suspended"
    assert KEY not in harness.reconciler.scheduler.snapshot()  # out of the queue

    harness.kube.jobs["llama"]["spec"]["runPolicy"] = {"suspend": False}
    harness.reconcile("update")
    assert harness.condition("Suspended")["status"] == "False"
    assert harness.condition("Admitted")["status"] == "True"
    assert harness.kube.jobs["llama"]["status"].get("checkpoint") is None  # the request is closed
    assert harness.kube.jobs["llama"]["status"]["phase"] == "Running"
    assert harness.calls("delete_pod") == []
    assert harness.reconciler.scheduler.snapshot()[KEY].workers == 2


def test_only_a_suspends_own_handshake_is_undone_by_resuming() -> None:
    from kubefit.decisions.scheduled import resumed_while_suspended

    suspended = {"type": "Suspended", "status": "True", "reason": "Suspended"}
    status = {"conditions": [suspended], "checkpoint": {"requestId": "3-1", "reason": "Suspended"}}
    assert resumed_while_suspended({"runPolicy": {"suspend": False}}, status)
    assert resumed_while_suspended({}, status)
    assert not resumed_while_suspended({"runPolicy": {"suspend": True}}, status)  # still suspended
    # Workers leaving for a preemption (the job suspended during that handshake) stay gone for the job
    # that preempted them.
    assert not resumed_while_suspended({}, {"conditions": []})  # never suspended


def test_a_job_resumed_while_its_workers_leave_for_a_preemption_is_not_taken_back(harness: Harness) -> None:
    """Preempted for another job, then suspended and resumed within the handshake: its workers' places are
    that job's, so the scheduler does not take it as admitted with them."""
    scheduler = harness.reconciler.scheduler
    pods = [
        WorkerPod(f"llama-worker-{index}", index, f"p{index}", "Running", "n", False, "uid")
        for index in range(2)
    ]
    scheduler.grant(KEY, pods)  # seen once: recovered (operator start)
    scheduler._entries[KEY].granted = 0  # a pass preempted it for another job
    scheduler.offer(KEY, None, ANYWHERE, harness.view())  # suspended: out of the queue
    scheduler._leaving[KEY] = frozenset({("team-a", "other")})  # a pass preempted it for another job
    assert scheduler.grant(KEY, pods, resumed=True).workers is None
    del scheduler._leaving[KEY]
    assert scheduler.grant(KEY, pods, resumed=True).workers == 2


def test_an_ack_through_the_checkpoint_api_wakes_the_job_s_reconcile() -> None:
    # The server records acks through refused_ack(): NotifyingBoard overriding acknowledge() alone left the
    # HTTP path without its wake-up, and the removal waited for the next 2 s poll.
    import http.client
    import json

    from kubefit.builders.checkpoint import checkpoint_token
    from kubefit.controller.checkpoints import start_checkpoint_server, token_lookup
    from kubefit.controller.reconciler import NotifyingBoard

    board, woken = NotifyingBoard(), []
    board.on_ack = woken.append
    key = ("team-a", "llama")
    board.open(key, "r1", ["llama-worker-0"])
    secret = b"k" * 32
    server = start_checkpoint_server(board, token_lookup(secret, lambda *_: "uid-1"), "127.0.0.1", 0)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        body = json.dumps({"requestId": "r1", "worker": "llama-worker-0", "step": 5})
        headers = {"Authorization": f"Bearer {checkpoint_token(secret, 'uid-1')}"}
        connection.request("POST", "/v1/namespaces/team-a/trainingjobs/llama/checkpoint/ack", body, headers)
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        server.shutdown()
        server.server_close()
    assert woken == [key]


def test_an_ack_sent_again_wakes_no_reconcile() -> None:
    # kubefit_trainer sends its ack again at each poll while the request stays open: each one reconciled
    # the job (about 64 reconciles a second for a job of 128 workers).
    from kubefit.controller.reconciler import NotifyingBoard

    board, woken = NotifyingBoard(), []
    board.on_ack = woken.append
    key = ("team-a", "llama")
    board.open(key, "r1")
    assert board.acknowledge(key, "r1", "llama-worker-1", 7)
    assert board.acknowledge(key, "r1", "llama-worker-1", 7)  # accepted, as before
    assert woken == [key]
    assert board.acknowledge(key, "r1", "llama-worker-1", 9)  # a new step is news
    assert woken == [key, key]


def on_one_node(harness: Harness) -> Callable[[str, str], None]:
    """One node of 8 GPUs, each worker running there and holding one; returns create(name, uid), which
    creates a job of 8 workers as its watch event would and reconciles it."""
    node = [NodeFacts("h0", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, {"nvidia.com/gpu": "8"})]

    def running() -> dict[str, WorkerPod]:
        return {
            name: replace(pod, node_name="h0", phase="Running") for name, pod in harness.kube.pods.items()
        }

    def view() -> ClusterView:
        usage = {
            "h0": [
                PodUsage("h0", {"nvidia.com/gpu": 1}, (NAMESPACE, name.rsplit("-worker-", 1)[0]))
                for name in running()
            ]
        }
        return ClusterView(
            nodes=lambda: node,
            usage=lambda: usage,
            workers=lambda key: [
                pod for name, pod in running().items() if name.startswith(key[1] + "-worker-")
            ],
        )

    harness.view = view  # type: ignore[method-assign]

    def create(name: str, uid: str) -> None:
        manifest = job_manifest(name, replicas=8)
        manifest["metadata"]["uid"] = uid
        harness.kube.jobs[name] = manifest
        harness.reconciler.jobs.observe((NAMESPACE, name), manifest)
        harness.reconcile("create", key=(NAMESPACE, name))

    return create


@pytest.mark.parametrize(
    "deletion_seen_first", [True, False], ids=["deleted-then-created", "created-then-deleted"]
)
def test_a_job_created_again_under_a_deleted_ones_name_is_not_granted_its_workers(
    harness: Harness, deletion_seen_first: bool
) -> None:
    # Deleted and applied again at once (kubectl replace --force): the old job's pods, not yet collected,
    # were granted to the new one as Recovered, ahead of the queue, with no scheduling pass.
    create = on_one_node(harness)
    create("llama", "uid-old")
    create("other", "uid-other")
    assert harness.reconciler.scheduler.snapshot()[(NAMESPACE, "llama")].workers == 8
    harness.kube.jobs.pop("llama")
    if deletion_seen_first:
        harness.reconciler.job_deleted((NAMESPACE, "llama"), "uid-old", harness.view())
    create("llama", "uid-new")  # the old workers are still there
    if not deletion_seen_first:  # kopf handles each uid on its own: the old one's DELETED can come after
        harness.reconciler.job_deleted((NAMESPACE, "llama"), "uid-old", harness.view())
    grant = harness.reconciler.scheduler.snapshot().get((NAMESPACE, "llama"))
    assert grant is None or not grant.workers, grant


def test_a_job_created_again_before_the_old_ones_deletion_is_seen_waits_for_a_pass(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kopf handles each uid on its own: the new job's ADDED can come before the old one's DELETED, while
    the queue still holds the old job's grant under the name. The new job took that grant: admitted with 8
    workers and created them with no pass, ahead of the job queued behind the old one."""
    create = on_one_node(harness)
    create("llama", "uid-old")
    create("other", "uid-other")  # queued: the old llama holds the node
    harness.kube.jobs.pop("llama")
    harness.kube.pods = {}  # the garbage collector removed the old workers; the DELETED is still queued
    scheduler = harness.reconciler.scheduler
    passes: list[str] = []
    run_pass = scheduler.request
    monkeypatch.setattr(scheduler, "request", lambda reason, view: passes.append(reason))  # due, not run
    harness.log.clear()
    create("llama", "uid-new")
    assert passes, "its demand went to the queue"
    assert harness.calls("create_pod", "patch_job_status") == [] and harness.events() == []
    assert "status" not in harness.kube.jobs["llama"]  # not admitted before a pass
    run_pass("job", harness.view())
    # The pass admits the job that waited longer; the new llama queues behind it.
    assert harness.condition("Admitted", "other")["status"] == "True"
    assert harness.condition("Admitted")["status"] == "False"
    assert sorted(harness.kube.pods) == [f"other-worker-{index}" for index in range(8)]


def test_after_a_restart_a_job_its_status_says_is_not_admitted_is_not_taken_back_with_its_workers(
    harness: Harness,
) -> None:
    """Preempted (Admitted=False) with its workers still saving: the restarted operator's first reconcile
    does not admit it with them (they would keep the devices of the job they leave for)."""
    uid = "uid-llama"
    job = job_manifest(replicas=2)
    job["status"] = {"conditions": [{"type": "Admitted", "status": "False", "reason": "Preempted"}]}
    harness.kube.jobs["llama"] = job
    harness.kube.pods = {
        f"llama-worker-{i}": WorkerPod(f"llama-worker-{i}", i, f"p{i}", "Running", "n", False, uid)
        for i in range(2)
    }
    harness.reconcile()
    # Its preemption goes on (this test's grace is 0): both workers are deleted, not kept as admitted.
    assert sorted(call[1] for call in harness.calls("delete_pod")) == ["llama-worker-0", "llama-worker-1"]


def restarted_with_a_request(  # noqa: PLR0913 - the job and its open request, as a test states them
    harness: Harness,
    reason: str,
    request_id: str,
    replicas: int = 4,
    desired: int = 2,
    generation: int = 1,
    admitted: str | None = None,
) -> None:
    """A restarted operator's first reconcile of an elastic job on 4 workers (range 1:4) whose status holds
    an open checkpoint request to 2 workers."""
    job = job_manifest(replicas=replicas, minReplicas=1, maxReplicas=4)
    job["spec"]["elastic"]["enabled"] = True
    job["metadata"]["generation"] = generation
    job["status"] = {
        "desiredReplicas": desired,
        "conditions": [{"type": "Admitted", "status": "True", "reason": admitted or reason}],
        "checkpoint": {"requestId": request_id, "reason": reason, "requestedAt": "2026-01-01T00:00:00Z",
                       "targetReplicas": 2, "acknowledged": 0, "workers": 4},
    }  # fmt: skip
    harness.kube.jobs["llama"] = job
    harness.kube.pods = elastic_workers(4, "1:4")
    harness.reconcile()


def test_after_a_restart_an_open_shrink_is_taken_back_at_its_target(harness: Harness) -> None:
    restarted_with_a_request(harness, "ShrunkForPriority", "r1")
    # The shrink goes on (this test's grace is 0): workers 3 and 2 go, as the open request said; taken
    # back at 4, the request was closed instead, to be opened again by a later pass.
    assert [call[1] for call in harness.calls("delete_pod")] == ["llama-worker-3", "llama-worker-2"]


@pytest.mark.parametrize(("replicas", "generation"), [(2, 3), (4, 2)])
def test_after_a_restart_a_scale_down_the_spec_still_asks_for_goes_on(
    harness: Harness, replicas: int, generation: int
) -> None:
    """Request 2-1 to 2 workers: the spec edited since (generation 3) but still asking for 2, or a capacity
    cut (ScaledDown too) with the spec as it was: taken back at its target, as before."""
    restarted_with_a_request(harness, "ScaledDown", "2-1", replicas=replicas, generation=generation)
    assert [call[1] for call in harness.calls("delete_pod")] == ["llama-worker-3", "llama-worker-2"]


def test_a_successful_reconcile_drops_a_failure_series_its_state_did_not_count(harness: Harness) -> None:
    # A job failing before it was ever observed, deleted and applied again under its name, the new one
    # handled first: its successes left the old one's series, and KubefitJobReconcileFailing fired on it.
    harness.metrics.job_reconcile_failed("team-a", "llama", "uid-old", 3)
    harness.kube.jobs["llama"] = job_manifest(replicas=1)
    harness.reconcile()
    labels = {"namespace": "team-a", "name": "llama"}
    assert harness.metrics.registry.get_sample_value("kubefit_trainingjob_reconcile_failures", labels) is None


def test_after_a_restart_a_scale_down_the_spec_undid_meanwhile_is_not_taken_back(harness: Harness) -> None:
    """Scaled 4 -> 2 at generation 2 (request 2-1), then back to 4 (generation 3) while the operator was
    down: its first grant was the request's 2, its status said 2 desired and a ScaledDown event 'no capacity
    for more'; a pass put it right later."""
    restarted_with_a_request(harness, "ScaledDown", "2-1", desired=4, generation=3, admitted="Admitted")
    assert harness.calls("delete_pod") == [] and harness.events("ScaledDown") == []
    status = harness.kube.jobs["llama"]["status"]
    assert status["desiredReplicas"] == 4 and status.get("checkpoint") is None


@pytest.mark.parametrize("new_count", [3, 1])
def test_after_a_restart_an_open_world_size_restart_goes_on_at_its_new_count(
    harness: Harness, new_count: int
) -> None:
    """A fixed group scaled (2 to 3 or to 1) waits for its workers' checkpoint before every worker restarts
    at the new size. An operator restarted meanwhile took the job back at the request's targetReplicas,
    which said 0: the job was released as Preempted (Admitted=False), its place in the queue lost."""
    job = job_manifest(replicas=2)
    job["spec"]["elastic"] = {"checkpointGracePeriodSeconds": 600}
    harness.kube.jobs["llama"] = job
    harness.reconcile()
    for name, pod in list(harness.kube.pods.items()):
        harness.kube.pods[name] = replace(pod, phase="Running", node_name="h0")
    harness.reconcile("pod")
    job["spec"]["workers"]["replicas"] = new_count
    job["metadata"]["generation"] = 2
    harness.reconcile("job")
    request = harness.kube.jobs["llama"]["status"]["checkpoint"]
    assert (request["reason"], request["targetReplicas"]) == ("Restarting", new_count)

    harness.reconciler = Reconciler(cast(KubeApi, harness.kube), CATALOG, harness.metrics, None)
    harness.log.clear()
    harness.reconcile("create")
    assert harness.condition("Admitted")["status"] == "True", harness.condition("Admitted")
    assert harness.calls("delete_pod") == []
    assert harness.kube.jobs["llama"]["status"]["checkpoint"]["requestId"] == request["requestId"]
    for name in list(harness.kube.pods):
        assert harness.reconciler.board.acknowledge(KEY, request["requestId"], name, 7)
    harness.reconcile("pod")
    harness.reconcile("pod")
    assert sorted(harness.kube.pods) == [f"llama-worker-{index}" for index in range(new_count)]
    assert harness.condition("Admitted")["status"] == "True"


def test_a_checkpoint_request_the_status_names_is_told_to_workers_though_a_later_write_fails(
    harness: Harness,
) -> None:
    """Found after a restart with 3 workers and `replicas` lowered to 2 meanwhile: the reconcile writes the
    request into the status, then its Service create fails. The workers must be asked all the same: the
    removal goes ahead at the deadline whether they were asked or not."""
    job = job_manifest(replicas=2, minReplicas=1, maxReplicas=3)
    job["spec"]["elastic"] = {"enabled": True, "checkpointGracePeriodSeconds": 60}
    job["status"] = {"desiredReplicas": 3, "conditions": [{"type": "Admitted", "status": "True"}]}
    harness.kube.jobs["llama"] = job
    harness.kube.pods = elastic_workers(3, "1:3")
    harness.kube.fail[("create_service", "llama")] = api_error(500, "etcd timeout")
    harness.reconcile()
    request = harness.kube.jobs["llama"]["status"]["checkpoint"]["requestId"]
    assert harness.reconciler.board.current(KEY) == request


def test_a_restarted_operator_gives_workers_the_grace_from_when_it_offers_the_request(
    harness: Harness,
) -> None:
    """A scale-down's request opened long ago, before the operator went down: its workers could not see it
    while it was down. The restarted operator offers it and waits the grace again, not removing at once."""
    job = job_manifest(replicas=1, minReplicas=1, maxReplicas=2)
    job["spec"]["elastic"] = {"enabled": True, "checkpointGracePeriodSeconds": 60}
    job["status"] = {
        "desiredReplicas": 1,
        "conditions": [{"type": "Admitted", "status": "True", "reason": "ScaledDown"}],
        "checkpoint": {"requestId": "1-1", "reason": "ScaledDown", "requestedAt": "2026-01-01T00:00:00Z",
                       "targetReplicas": 1, "acknowledged": 0, "workers": 2},
        "checkpointRequests": 1,
    }  # fmt: skip
    harness.kube.jobs["llama"] = job
    harness.kube.pods = elastic_workers(2, "1:2")
    harness.reconcile()
    assert harness.calls("delete_pod") == []
    assert harness.reconciler.board.current(KEY) == "1-1"
    for name in harness.kube.pods:  # both save and acknowledge: the removal goes ahead
        assert harness.reconciler.board.acknowledge(KEY, "1-1", name, 7)
    harness.reconcile("pod")
    assert harness.calls("delete_pod") == [("delete_pod", "llama-worker-1")]


class _AnsweringKube(FakeKube):
    """FakeKube whose status patch answers with the job as written, as the API server does."""

    version = 100

    def patch_job_status(self, namespace: str, name: str, uid: str, status: Any) -> Any:
        super().patch_job_status(namespace, name, uid, status)
        _AnsweringKube.version += 1
        self.jobs[name]["metadata"]["resourceVersion"] = str(_AnsweringKube.version)
        return copy.deepcopy(self.jobs[name])


def test_a_job_created_again_under_a_deleted_jobs_name_does_not_inherit_its_checkpoint_acks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Request ids are "<generation>-<n>": job B, scaled down at its generation 2 like job A before it,
    # opens "2-1" again. A's acks stayed on the board (B's ADDED came before A's DELETED), and B deleted a
    # worker that never checkpointed, with "CheckpointDone: all 2 running workers acknowledged".
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)
    kube = _AnsweringKube([])
    board = NotifyingBoard()
    reconciler = Reconciler(kube, CATALOG, OperatorMetrics(), board=board)
    view = ClusterView(
        nodes=lambda: NODES,
        usage=lambda: {},
        workers=lambda key: [replace(pod, phase="Running", node_name="h0") for pod in kube.pods.values()],
    )

    def elastic(uid: str, replicas: int = 2, generation: int = 1) -> dict[str, Any]:
        job = job_manifest(replicas=replicas, maxReplicas=2, minReplicas=1)
        job["metadata"].update(uid=uid, generation=generation)
        job["spec"]["elastic"] = {"enabled": True, "checkpointGracePeriodSeconds": 600}
        return job

    def apply(job: dict[str, Any], trigger: str) -> None:
        kube.jobs["llama"] = copy.deepcopy(job)
        reconciler.jobs.observe(KEY, copy.deepcopy(job))
        reconciler.reconcile(KEY, trigger, view)

    apply(elastic("uid-A"), "create")
    apply(elastic("uid-A", replicas=1, generation=2), "update")
    request = board.current(KEY)
    assert request == "2-1"
    for worker in ("llama-worker-0", "llama-worker-1"):
        board.acknowledge(KEY, request, worker, 100)
    kube.pods.clear()
    apply(elastic("uid-B"), "create")
    reconciler.job_deleted(KEY, "uid-A", view)  # A's DELETED, handled late
    apply(elastic("uid-B", replicas=1, generation=2), "update")
    assert kube.jobs["llama"]["status"]["checkpoint"]["requestId"] == "2-1"
    reconciler.reconcile(KEY, "pod", view)
    assert sorted(kube.pods) == ["llama-worker-0", "llama-worker-1"]  # waits for B's own acks
    assert board.acknowledged(KEY, "2-1") == {}
    reconciler.forget(KEY)


class _DeleteServer:
    """Answers every call with `status`, recording each method, path and body."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.sent: list[tuple[str, str, Any]] = []

    def param_serialize(self, method: str, path: str, body: Any = None, **_: Any) -> tuple[str, str, Any]:
        return method, path, body

    def call_api(self, method: str, path: str, body: Any, _request_timeout: object = None) -> _Answer:
        self.sent.append((method, path, body))
        return _Answer(self.status, {"kind": "Status", "code": self.status})


def test_the_ttl_delete_names_the_jobs_uid_and_leaves_a_job_made_again_under_its_name() -> None:
    # As Kubernetes' TTL-after-finished controller: a reconcile that read the finished job before it was
    # deleted and made again must not delete the new one.
    server = _DeleteServer(200)
    assert KubeApi(cast(Any, server)).delete_job("team-a", "llama", "uid-old")
    ((method, path, body),) = server.sent
    assert method == "DELETE" and path.endswith("/namespaces/team-a/trainingjobs/llama")
    assert body == {"propagationPolicy": "Background", "preconditions": {"uid": "uid-old"}}
    # The precondition fails (409): that job is gone already; so is one that answers 404.
    assert not KubeApi(cast(Any, _DeleteServer(409))).delete_job("team-a", "llama", "uid-old")
    assert not KubeApi(cast(Any, _DeleteServer(404))).delete_job("team-a", "llama", "uid-old")
    with pytest.raises(ApiException):
        KubeApi(cast(Any, _DeleteServer(500))).delete_job("team-a", "llama", "uid-old")


def test_a_service_create_that_fails_leaves_no_worker_counted_in_status_replicas(harness: Harness) -> None:
    # status.replicas (the scale subresource's, what kubectl and an HPA read) counted the 3 workers this
    # decision would create, though the failed Service create came before any of them.
    harness.kube.jobs["llama"] = job_manifest(replicas=3)
    quota = 'services "llama" is forbidden: exceeded quota: svc, requested: services=1, used: services=1'
    harness.kube.fail[("create_service", "*")] = api_error(403, quota)
    for trigger in ("create", "retry"):
        harness.reconcile(trigger)
    assert not harness.kube.pods
    status = harness.kube.jobs["llama"]["status"]
    assert status.get("replicas", 0) == 0, status
    assert harness.condition("Ready")["reason"] == "ReconcileError"


def test_a_reconcile_after_kopf_s_loop_closed_keeps_its_writes_and_drops_its_events() -> None:
    """A reconcile still on its thread when kopf.run returned (a stopping leader, before its write gate
    closes): kopf.event raised 'Event loop is closed', and the reconcile was taken for a failed one whose
    ReconcileError was written onto the job."""
    import asyncio
    import contextvars

    from kopf._core.engines import posting

    from kubefit.controller.runner import operator_settings

    def closed_loop_reconcile() -> Harness:
        loop = asyncio.new_event_loop()
        posting.event_queue_loop_var.set(loop)
        posting.settings_var.set(operator_settings())
        posting.event_queue_var.set(asyncio.Queue())
        loop.close()
        harness = Harness()
        harness.kube.jobs["llama"] = job_manifest(replicas=2)
        harness.reconcile()
        harness.reconciler.forget(KEY)
        return harness

    harness = contextvars.copy_context().run(closed_loop_reconcile)
    assert sorted(harness.kube.pods) == ["llama-worker-0", "llama-worker-1"]
    assert harness.condition("Ready")["reason"] != "ReconcileError", harness.condition("Ready")


def test_the_old_jobs_deleted_event_leaves_a_job_created_again_under_its_name_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf handles each uid on its own: the old job's DELETED and the new job's ADDED run at once. The new
    job reconciled between the DELETED's cache check and its forgetting lost its queue place, its state, its
    uid (the checkpoint API answered its workers 404) and its gang-timeout timer."""
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)
    h = Harness()
    old = job_manifest()
    old["metadata"]["uid"] = "uid-old"
    h.kube.jobs["llama"] = copy.deepcopy(old)
    h.reconciler.jobs.observe(KEY, copy.deepcopy(old))
    h.reconcile("create")
    h.kube.pods.clear()  # the old job's workers went with it
    new = job_manifest()
    new["metadata"]["uid"] = "uid-new"
    cache, checked = h.reconciler.jobs, h.reconciler.jobs.deleted

    def deleted_then_the_new_job_added(key: tuple[str, str], uid: str | None) -> bool:
        answer = checked(key, uid)
        h.kube.jobs["llama"] = copy.deepcopy(new)  # the ADDED of the new uid, handled on another thread
        cache.observe(KEY, copy.deepcopy(new))
        h.reconcile("create")
        return answer

    monkeypatch.setattr(cache, "deleted", deleted_then_the_new_job_added)
    h.reconciler.job_deleted(KEY, "uid-old", h.view())
    assert h.reconciler.job_uid(*KEY) == "uid-new"
    assert h.reconciler.scheduler.snapshot().get(KEY) is not None
    assert h.reconciler.pending_requeue(KEY) is not None  # the new gang's timeout
    assert sorted(h.kube.pods) == ["llama-worker-0", "llama-worker-1"]
    h.reconciler.forget(KEY)  # cancels the timer


def test_no_worker_is_created_from_a_spec_the_watch_has_shown_edited_during_the_pass(
    harness: Harness,
) -> None:
    """A pass that writes no status before its creates (a retry whose kept error is the status already)
    compares the spec it decided on with the job as the watch shows it last: an edit seen meanwhile leaves
    the creates to the next round (a second review)."""
    harness.kube.jobs["llama"] = job_manifest(replicas=2)
    harness.reconciler.jobs.observe(KEY, job_manifest(replicas=2))
    edited = job_manifest(replicas=2)
    edited["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "EDITED", "value": "1"}]
    original = reconciler_module.decide
    created: list[dict[str, Any]] = []
    create = harness.kube.create_pod

    def deciding_while_edited(observation: Any, *args: Any) -> Any:
        decision = original(observation, *args)
        if decision.create and "env" not in observation.spec["template"]["spec"]["containers"][0]:
            # the edit's watch event comes while the pass that creates the workers decides
            harness.kube.jobs["llama"] = copy.deepcopy(edited)
            harness.reconciler.jobs.observe(KEY, copy.deepcopy(edited))
        return decision

    def recording(namespace: str, manifest: dict[str, Any]) -> bool:
        created.append(manifest)
        return create(namespace, manifest)

    harness.kube.create_pod = recording  # type: ignore[method-assign]
    reconciler_module.decide = deciding_while_edited  # type: ignore[assignment]
    try:
        harness.reconcile()
    finally:
        reconciler_module.decide = original  # type: ignore[assignment]
    assert len(created) == 2
    for manifest in created:
        assert {"name": "EDITED", "value": "1"} in manifest["spec"]["containers"][0]["env"], manifest[
            "metadata"
        ]
