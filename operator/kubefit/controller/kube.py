"""Kubernetes I/O for the reconciler: every call idempotent (a 409 on creating what is already the job's, or
a quota's 403 answering such a create, a 404 on delete, are success)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import quote

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.connectionpool import ConnectionPool
from urllib3.response import BaseHTTPResponse

from kubefit.api.resource import GROUP, KIND, PLURAL, VERSION
from kubefit.builders.naming import JOB_LABEL, LABEL_LOST, NOT_THE_JOBS
from kubefit.decisions.quota import Quota, quota_from

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# For built-in kinds only: lists merge by their keys (ownerReferences by uid), where a merge patch replaces them.
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


def _status_of(error: ApiException) -> int:
    return int(error.status or 0)


def error_message(error: BaseException) -> str:
    """What to tell the job's owner about `error`.

    For an API error, the API server's own message (a 422 names the object and the field, a 403 the
    quota), then the HTTP status; for anything else, the exception's type and message.
    """
    if isinstance(error, ApiException):
        try:
            body = json.loads(error.body or "")
        except ValueError:
            body = None
        message = body.get("message") if isinstance(body, dict) else None
        return f"{message or error.reason or 'API error'} (HTTP {_status_of(error)})"
    return f"{type(error).__name__}: {error}"


# (connect, read) seconds of every call through KubeApi: a LIST of a namespace's jobs at thousands of jobs
# reads in well under the read timeout.
REQUEST_TIMEOUT = (10.0, 60.0)


class _NoResendAfterReadTimeout(urllib3.Retry):
    """urllib3's retries, but a request whose answer timed out is not sent again: a hung API server held a
    reconcile's GET or DELETE four times the read timeout (4 minutes). A refused connection, or a pooled one
    the server closed as it was reused, is tried again; a 429 or 5xx is resent by _Rest, after the server's
    Retry-After."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        if isinstance(error, urllib3.exceptions.ReadTimeoutError) and _pool is not None:
            raise urllib3.exceptions.MaxRetryError(_pool, url or "", error) from error
        return super().increment(method, url, response, error, _pool, _stacktrace)


RETRIES = _NoResendAfterReadTimeout(total=3, status=0, redirect=0, raise_on_status=False)
LIST_PAGE = 500  # objects per page of a list (metadata only)


class JobReplaced(Exception):
    """The job was deleted and another created under its name since it was read."""


class _NameTaken(Exception):
    """An object the job needs has its name taken by another's. `lasting` unless that one is on its way out
    (being deleted, or a deleted TrainingJob's of the same name, which the garbage collector removes): a
    lasting one holds back the job's creates as an admission refusal does (controller/refusals.py)."""

    def __init__(self, message: str, lasting: bool = True) -> None:
        super().__init__(message)
        self.lasting = lasting


class ServiceTaken(_NameTaken):
    """A Service of the job's name exists and is not the job's: the workers' names would not resolve."""


class PodNameTaken(_NameTaken):
    """A pod of a worker's name exists and is not the job's: that worker cannot be created."""


class WritesStopped(Exception):
    """This operator stopped writing (it is handing the Lease over): the write was not sent."""


class WriteGate:
    """Lets writes through until `stop`, which then waits for those already sent to finish.

    kopf runs sync handlers in threads it cannot cancel, and the scheduler's and requeue's threads outlive
    kopf's loop; without the gate they could still write after this replica gave up the Lease, beside the
    replica that took it."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._in_flight = 0
        self._stopped = False

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._changed:
            if self._stopped:
                raise WritesStopped("the operator is stopping: no more writes")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def stop(self, timeout: float) -> bool:
        """Refuses every write from now on; True once none is in flight, False if some still were after
        `timeout` seconds."""
        with self._changed:
            self._stopped = True
            return self._changed.wait_for(lambda: self._in_flight == 0, timeout)


# A throttled answer (API Priority and Fairness: a 429 with Retry-After, usually 1 s; a 5xx with Retry-After)
# is resent after the header's seconds inside the call, as client-go's REST client does (rest/request.go
# NewRequest: maxRetries 10; rest/with_retry.go IsNextRetry and checkWait: a 429, or any 5xx, that carries
# an integer Retry-After), rather than failing the reconcile into ReconcileError, a Warning event (more
# writes to the overloaded server) and the job's backoff. Fewer, shorter waits than client-go: a reconcile
# thread is held at most 5 x 5 s, and one wait fits in a stopping leader's drain of its writes (10 s).
# Resending is safe: a 429 was not processed, and every call here is idempotent (a 409, a 404 is done).
THROTTLE_RETRIES = 5
THROTTLE_WAIT_CAP = 5.0  # seconds, per wait


def _throttle_wait(response: Any) -> float | None:
    """Seconds to wait before resending the non-2xx `response`, or None when it is not to be resent."""
    status = int(response.status)
    if status != 429 and status < 500:
        return None
    value = (getattr(response, "headers", None) or {}).get("Retry-After", "")
    try:
        seconds = int(value)  # integer seconds only, as client-go's retryAfterSeconds (no HTTP-date)
    except ValueError:
        # client-go resends neither without a usable value; a 429 is throttling all the same: 1 s.
        return 1.0 if status == 429 else None
    return float(min(max(seconds, 0), THROTTLE_WAIT_CAP))


class _Rest:
    """Plain REST on the kubernetes client's ApiClient (its configuration, auth and connection pool)."""

    def __init__(self, api_client: client.ApiClient, timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.writes = WriteGate()
        self.sleep: Callable[[float], None] = time.sleep  # the wait before resending a throttled call

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | list[dict[str, Any]] | None = None,
        merge: bool | str = False,
        accept: str = "application/json",
    ) -> bytes:
        """The answer's body; raises ApiException (with the API server's Status as its body) unless 2xx.
        A PATCH is a merge patch, or a JSON patch when `body` is a list of operations; `merge` may name
        the patch's content type instead (STRATEGIC_MERGE_PATCH)."""
        if method == "GET":
            return self._send(method, path, body, merge, accept)
        with self.writes.writing():
            return self._send(method, path, body, merge, accept)

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | list[dict[str, Any]] | None,
        merge: bool | str,
        accept: str,
    ) -> bytes:
        if isinstance(merge, str):
            content_type = merge
        else:
            content_type = (
                JSON_PATCH if isinstance(body, list) else MERGE_PATCH if merge else "application/json"
            )
        headers = {"Accept": accept, "Content-Type": content_type}
        request = self.api_client.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        for resent in range(THROTTLE_RETRIES + 1):
            # The whole retry of a write is inside `call`'s writing(); passing the gate again, a resend is
            # refused (WritesStopped) once a stopping leader closed it, rather than prolong its drain.
            with self.writes.writing() if resent and method != "GET" else nullcontext():
                # Bounded: a connection that stopped answering (an idle one a load balancer dropped) held the
                # job's reconcile, and the resync of every job behind it, for as long as TCP retransmits.
                response = self.api_client.call_api(*request, _request_timeout=self.timeout)
            data = response.read()
            if 200 <= response.status <= 299:
                return cast(bytes, data)
            wait = _throttle_wait(response)
            if wait is None or resent == THROTTLE_RETRIES:
                break
            self.sleep(wait)
        raise ApiException(http_resp=response, body=data.decode("utf-8", errors="replace"))


def _quoted(*parts: str) -> str:
    return "/".join(quote(part, safe="") for part in parts)


class CoreV1Api:
    """The core calls the operator makes, named and called as the kubernetes client's generated CoreV1Api
    (so tests/unit/test_rbac.py derives the operator's RBAC from them alike), as plain REST: the generated
    class costs 20 MiB and 1.3 s to import, validates every argument with pydantic and turns every answer
    into models nobody reads (docs/performance.md, "Where the time and memory went")."""

    def __init__(self, rest: _Rest) -> None:
        self._rest = rest

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any], dry_run: bool = False) -> None:
        query = "?dryRun=All" if dry_run else ""
        self._rest.call("POST", f"/api/v1/namespaces/{_quoted(namespace)}/pods{query}", body)

    def delete_namespaced_pod(self, name: str, namespace: str) -> None:
        self._rest.call("DELETE", f"/api/v1/namespaces/{_quoted(namespace, 'pods', name)}")

    def patch_namespaced_pod(
        self, name: str, namespace: str, body: dict[str, Any], patch_type: str = MERGE_PATCH
    ) -> None:
        self._rest.call(
            "PATCH", f"/api/v1/namespaces/{_quoted(namespace, 'pods', name)}", body, merge=patch_type
        )

    def create_namespaced_service(self, namespace: str, body: dict[str, Any]) -> None:
        self._rest.call("POST", f"/api/v1/namespaces/{_quoted(namespace)}/services", body)

    def read_namespaced_service(self, name: str, namespace: str) -> dict[str, Any]:
        path = f"/api/v1/namespaces/{_quoted(namespace, 'services', name)}"
        return cast(dict[str, Any], json.loads(self._rest.call("GET", path)))

    def list_node(self, limit: int, continue_token: str = "", field_selector: str = "") -> dict[str, Any]:
        """One page of the nodes' metadata (a PartialObjectMetadataList; those `field_selector` selects)."""
        return _page(self._rest, "/api/v1/nodes", limit, continue_token, field_selector)

    def list_namespaced_pod(
        self, namespace: str, limit: int, continue_token: str = "", field_selector: str = ""
    ) -> dict[str, Any]:
        """One page of the metadata of the pods in `namespace` (those `field_selector` selects)."""
        path = f"/api/v1/namespaces/{_quoted(namespace)}/pods"
        return _page(self._rest, path, limit, continue_token, field_selector)

    def list_namespaced_resource_quota(
        self, namespace: str, limit: int, continue_token: str = "", whole: bool = False
    ) -> dict[str, Any]:
        """One page of the metadata of the ResourceQuotas in `namespace` (`whole`: of the objects)."""
        path = f"/api/v1/namespaces/{_quoted(namespace)}/resourcequotas"
        return _page(self._rest, path, limit, continue_token, whole=whole)


def _page(  # noqa: PLR0913 - the list's path and page, and how much of each object
    rest: _Rest, path: str, limit: int, continue_token: str, field_selector: str = "", whole: bool = False
) -> dict[str, Any]:
    query = f"?limit={limit}" + (f"&continue={quote(continue_token, safe='')}" if continue_token else "")
    query += f"&fieldSelector={quote(field_selector, safe='')}" if field_selector else ""
    accept = "application/json" if whole else METADATA_ONLY
    return cast(dict[str, Any], json.loads(rest.call("GET", path + query, accept=accept)))


class ApiextensionsV1Api:
    """The CustomResourceDefinition read, as the kubernetes client's ApiextensionsV1Api names it."""

    def __init__(self, rest: _Rest) -> None:
        self._rest = rest

    def list_custom_resource_definition(self, field_selector: str) -> dict[str, Any]:
        """The whole definitions that `field_selector` selects (one page of at most one)."""
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        return _page(self._rest, path, 1, "", field_selector, whole=True)


class CustomObjectsApi:
    """The TrainingJob calls, as the kubernetes client's CustomObjectsApi names them (see CoreV1Api)."""

    def __init__(self, rest: _Rest) -> None:
        self._rest = rest

    @staticmethod
    def _path(group: str, version: str, namespace: str, plural: str, name: str) -> str:
        return f"/apis/{_quoted(group, version)}/namespaces/{_quoted(namespace, plural, name)}"

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        found = json.loads(self._rest.call("GET", self._path(group, version, namespace, plural, name)))
        return cast(dict[str, Any], found)

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str
    ) -> dict[str, Any]:
        """The objects' metadata only (a PartialObjectMetadataList): names and uids, not 500 bodies."""
        path = f"/apis/{_quoted(group, version)}/namespaces/{_quoted(namespace, plural)}"
        found = json.loads(self._rest.call("GET", path, accept=METADATA_ONLY))
        return cast(dict[str, Any], found)

    def patch_namespaced_custom_object_status(  # noqa: PLR0913 - the kubernetes client's signature
        self, group: str, version: str, namespace: str, plural: str, name: str, body: list[dict[str, Any]]
    ) -> dict[str, Any]:
        path = self._path(group, version, namespace, plural, name) + "/status"
        return cast(dict[str, Any], json.loads(self._rest.call("PATCH", path, body, merge=True)))

    def delete_namespaced_custom_object(  # noqa: PLR0913 - the kubernetes client's signature, and a uid
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        propagation_policy: str,
        uid: str | None = None,
    ) -> None:
        options: dict[str, Any] = {"propagationPolicy": propagation_policy}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        self._rest.call("DELETE", self._path(group, version, namespace, plural, name), options)


class KubeApi:
    """The few calls the operator makes, with Kubernetes' idempotence rules applied."""

    def __init__(
        self,
        api_client: client.ApiClient | None = None,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ):
        if api_client is None:
            configuration = client.Configuration.get_default_copy()
            configuration.retries = RETRIES
            api_client = client.ApiClient(configuration)
        rest = _Rest(api_client, request_timeout)
        self.core = CoreV1Api(rest)
        self.custom = CustomObjectsApi(rest)
        self.extensions = ApiextensionsV1Api(rest)
        self._writes = rest.writes

    @classmethod
    def trying_once(cls, request_timeout: tuple[float, float]) -> KubeApi:
        """A client that makes one try of each request (no urllib3 retries), with `request_timeout`."""
        configuration = client.Configuration.get_default_copy()
        configuration.retries = False
        return cls(client.ApiClient(configuration), request_timeout)

    def stop_writes(self, timeout: float) -> bool:
        """No write is sent from now on (each raises WritesStopped); True once those in flight finished,
        False if some had not after `timeout` seconds."""
        return self._writes.stop(timeout)

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if _status_of(error) == 404:
                return None
            raise

    def patch_job_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> dict[str, Any]:
        """Sets the status of the job `uid` to `status` (whole: what it omits goes) and returns the job as it
        is then. Raises JobReplaced when the job of that name is another one now: deleted and created again
        while a reconcile of the old one ran, whose status must not land on the new one. A JSON patch, for
        its `test` of the uid, which the API server applies to the job as it is when it writes."""
        operations: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "add", "path": "/status", "value": status},  # add replaces a member that exists
        ]
        try:
            return self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, operations
            )
        except ApiException as error:
            # A failed test is a 422 that names nothing ("the server rejected our request due to an error in
            # our request"), as a status the schema refuses is not: which one, the job's uid now tells.
            if (
                _status_of(error) == 422
                and (self.get_job(namespace, name) or {}).get("metadata", {}).get("uid") != uid
            ):
                raise JobReplaced(f"{namespace}/{name} is no longer the job {uid}") from error
            raise

    def job_uids(self, namespace: str) -> dict[str, str]:
        """name -> uid of every TrainingJob in `namespace` now (one LIST of their metadata)."""
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return {item["metadata"]["name"]: item["metadata"]["uid"] for item in listed.get("items") or []}

    def node_uids(self) -> set[str]:
        """The uid of every node now (their metadata listed in pages of LIST_PAGE)."""
        return _uids(lambda token: self.core.list_node(LIST_PAGE, token))

    def node_exists(self, name: str) -> bool:
        """Whether the cluster has a node of that name now (one LIST by name: `list` is granted, `get` is not)."""
        return bool(self.core.list_node(1, field_selector=f"metadata.name={name}").get("items"))

    def installed_crd(self, name: str) -> dict[str, Any] | None:
        """The CustomResourceDefinition `name` as the cluster has it, or None (one LIST by name: `list` is
        granted, `get` is not)."""
        items = self.extensions.list_custom_resource_definition(f"metadata.name={name}").get("items") or []
        return cast(dict[str, Any], items[0]) if items else None

    def node_names(self) -> set[str]:
        """The name of every node now (their metadata listed in pages of LIST_PAGE)."""
        return _uids(lambda token: self.core.list_node(LIST_PAGE, token), field="name")

    def pod_uids(self, namespace: str) -> set[str]:
        """The uid of every pod in `namespace` now."""
        return _uids(lambda token: self.core.list_namespaced_pod(namespace, LIST_PAGE, token))

    def quotas(self, namespace: str) -> list[Quota]:
        """The ResourceQuotas of `namespace` now, read as kopf's index of them reads each (quota_from)."""
        quotas, token = [], ""
        while True:
            listed = self.core.list_namespaced_resource_quota(namespace, LIST_PAGE, token, whole=True)
            quotas += [quota for item in listed.get("items") or [] if (quota := quota_from(item)) is not None]
            token = (listed.get("metadata") or {}).get("continue") or ""
            if not token:
                return quotas

    def quota_uids(self, namespace: str) -> set[str]:
        """The uid of every ResourceQuota in `namespace` now."""
        return _uids(lambda token: self.core.list_namespaced_resource_quota(namespace, LIST_PAGE, token))

    def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        """Deletes the job `uid` (a precondition, as Kubernetes' TTL-after-finished controller sends): one
        created again under its name since is left alone. False when that job is gone already: a 404, or
        the 409 of a uid that no longer matches."""
        try:
            return self._ignoring_404(
                lambda: self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background", uid=uid
                )
            )
        except ApiException as error:
            if _status_of(error) == 409:
                return False
            raise

    def try_pod(self, namespace: str, manifest: dict[str, Any]) -> None:
        """Asks the API server to admit `manifest` as a new pod without creating it (dryRun=All: every
        admission plugin, quota and webhook runs, nothing is stored); raises its refusal, and PodNameTaken
        where a pod of that name is another's (the API server's 409 alone does not say whose)."""
        refused = _refused_if_there(
            lambda: self.core.create_namespaced_pod(namespace, manifest, dry_run=True)
        )
        if refused is not None:
            self._pod_there(namespace, manifest, refused)
            if _status_of(refused) != 409:
                raise refused  # a quota's, beside the job's own pod (terminating): it still refuses

    def create_pod(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """True if created, False if the job's own worker of that name is there already (deterministic names:
        an earlier create whose answer was lost, or an orphan of the job's, which its reconcile adopts);
        raises PodNameTaken when a pod of that name belongs to something else (a 409 alone left the job
        waiting for a worker that never came, with nothing saying why)."""
        refused = _refused_if_there(lambda: self.core.create_namespaced_pod(namespace, manifest))
        if refused is None:
            return True
        self._pod_there(namespace, manifest, refused)
        return False

    def _pod_there(self, namespace: str, manifest: dict[str, Any], refused: ApiException) -> None:
        """After a create of `manifest` answered `refused` (a 409, or a quota's 403): returns if the job's own
        pod of that name is there, or none is (gone since the 409), raises `refused` (a quota's) where none
        is, and PodNameTaken where another's is."""
        metadata = manifest["metadata"]
        # A LIST of metadata by name: the operator lists pods (kopf's index) and gets none.
        selector = f"metadata.name={metadata['name']}"
        listed = self.core.list_namespaced_pod(namespace, 1, field_selector=selector)
        found = next(iter(listed.get("items") or []), None)
        if found is None and _status_of(refused) != 409:
            raise refused  # the quota refused a pod that is not there
        if found is None:
            return  # gone since the 409: created once the reconcile no longer remembers this create
        found_metadata = found.get("metadata") or {}
        owners = found_metadata.get("ownerReferences") or []
        controller = next((ref for ref in owners if ref.get("controller")), None)
        job = metadata["labels"][JOB_LABEL]
        labelled = (found_metadata.get("labels") or {}).get(JOB_LABEL)
        if controller is None:
            ours = labelled == job
        else:
            ours = controller.get("uid") == metadata["ownerReferences"][0]["uid"]
            if ours and labelled != job:
                raise PodNameTaken(_unlabelled(namespace, metadata["name"], job, labelled))
        if ours:
            return
        held_by = ", ".join(f"{ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})" for ref in owners)
        raise PodNameTaken(
            f"Pod {namespace}/{metadata['name']} {NOT_THE_JOBS} (owned by "
            f"{held_by or 'nothing'}). Delete or rename that pod "
            "(or what owns it), or the job; a TrainingJob of this name deleted moments ago keeps its workers "
            "until the garbage collector removes them",
            lasting=_lasting(found_metadata, job),
        )

    def delete_pod(self, namespace: str, name: str) -> bool:
        """True if deleted now, False if it was already gone."""
        return self._ignoring_404(lambda: self.core.delete_namespaced_pod(name, namespace))

    def adopt_pod(self, namespace: str, name: str, owner: dict[str, Any]) -> bool:
        # Strategic: the job's reference joins any the pod has (a merge patch replaced them all).
        patch = {"metadata": {"ownerReferences": [owner]}}
        return self._ignoring_404(
            lambda: self.core.patch_namespaced_pod(name, namespace, patch, STRATEGIC_MERGE_PATCH)
        )

    def create_service(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """True if created, False if the job's own Service is there already; raises ServiceTaken when a
        Service of that name belongs to something else (a 409 alone would leave the workers unable to
        resolve each other, with nothing saying why)."""
        refused = _refused_if_there(lambda: self.core.create_namespaced_service(namespace, manifest))
        if refused is None:
            return True
        metadata = manifest["metadata"]
        owner = metadata["ownerReferences"][0]
        try:
            found = self.core.read_namespaced_service(metadata["name"], namespace)
        except ApiException as error:
            if _status_of(error) == 404 and _status_of(refused) != 409:
                raise refused from None  # the quota refused a Service that is not there
            raise
        owners = (found.get("metadata") or {}).get("ownerReferences") or []
        if any(ref.get("uid") == owner["uid"] for ref in owners):
            return False
        held_by = ", ".join(f"{ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})" for ref in owners)
        raise ServiceTaken(
            f"Service {namespace}/{metadata['name']} {NOT_THE_JOBS} (owned by "
            f"{held_by or 'nothing'}): the workers could not find each other by name. Delete or rename that "
            "Service, or the job; a TrainingJob of this name deleted moments ago keeps its Service until "
            "the garbage collector removes it",
            lasting=_lasting(found.get("metadata") or {}, metadata["name"]),
        )

    @staticmethod
    def _ignoring_404(call: Callable[[], object]) -> bool:
        """True if `call` succeeded, False if the object is already gone (404 Not Found)."""
        return _done_unless(call, already_done=404)


def _uids(page: Callable[[str], dict[str, Any]], field: str = "uid") -> set[str]:
    """The uids (or another metadata `field`) of a paged list's items: every page of one list is of the same
    revision (the API server's continue token carries it)."""
    uids: set[str] = set()
    token = ""
    while True:
        listed = page(token)
        uids.update(item["metadata"][field] for item in listed.get("items") or [])
        token = (listed.get("metadata") or {}).get("continue") or ""
        if not token:
            return uids


def _refused_if_there(create: Callable[[], object]) -> ApiException | None:
    """Runs `create`: None if it created the object, or the API server's answer when the object may be there
    already: a 409, or a ResourceQuota's 403, as its admission runs before the check that the name is free
    (kubernetes/kubernetes#106842: a namespace at its `services` limit answers the job's own Service so)."""
    try:
        create()
    except ApiException as error:
        status = _status_of(error)
        if status == 409 or (status == 403 and "exceeded quota" in error_message(error)):
            return error
        raise
    return None


def _done_unless(call: Callable[[], object], already_done: int) -> bool:
    """Runs `call`: True if it succeeded, False if the API server answered `already_done`."""
    try:
        call()
    except ApiException as error:
        if _status_of(error) == already_done:
            return False
        raise
    return True


def _lasting(found: dict[str, Any], job: str) -> bool:
    """Whether an object found under a name the job needs (its `metadata`) stays: not when it is being
    deleted, or is a deleted TrainingJob's of the job's name (deleted and applied again), which the garbage
    collector removes."""
    if found.get("deletionTimestamp"):
        return False
    owners = found.get("ownerReferences") or []
    return not any(
        ref.get("kind") == KIND
        and ref.get("name") == job
        and str(ref.get("apiVersion", "")).startswith(GROUP)
        for ref in owners
    )


def _unlabelled(namespace: str, name: str, job: str, labelled: object) -> str:
    """The error for the job's own worker pod that lost its job label: the operator counts workers by that
    label, so it no longer sees the pod, and a new worker of that name cannot be made beside it (as a
    StatefulSet's pod taken out of its selector)."""
    now = f"now {JOB_LABEL}={labelled}" if labelled is not None else f"{JOB_LABEL} removed"
    return (
        f"Pod {namespace}/{name} {LABEL_LOST} {JOB_LABEL}={job} ({now}): "
        f"the operator no longer counts it, and the worker of that name cannot be created beside it. Put the "
        f"label back (kubectl label pod {name} -n {namespace} {JOB_LABEL}={job} --overwrite) or delete the pod"
    )
