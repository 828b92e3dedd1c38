"""Kubernetes I/O for the reconciler: every call idempotent (409 on create, 404 on delete are success)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubefit.api.resource import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"


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


class KubeApi:
    """The few calls the operator makes, with Kubernetes' idempotence rules applied.

    Manifests are plain dicts: the client serialises them as they are (its annotations name only the
    model classes, hence the type: ignore on create calls).
    """

    def __init__(self, api_client: client.ApiClient | None = None):
        self._api_client = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self._api_client)
        self.custom = client.CustomObjectsApi(self._api_client)

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            return cast(dict[str, Any], found)
        except ApiException as error:
            if _status_of(error) == 404:
                return None
            raise

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        # A merge patch: null removes a field (e.g. sizing of a spec that became invalid).
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE_PATCH
        )

    def delete_job(self, namespace: str, name: str) -> bool:
        return self._ignoring_404(
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background"
            )
        )

    def create_pod(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """True if created, False if a pod of that name already exists (deterministic names)."""
        return self._ignoring_409(
            lambda: self.core.create_namespaced_pod(namespace, manifest)  # type: ignore[arg-type]
        )

    def delete_pod(self, namespace: str, name: str) -> bool:
        """True if deleted now, False if it was already gone."""
        return self._ignoring_404(lambda: self.core.delete_namespaced_pod(name, namespace))

    def adopt_pod(self, namespace: str, name: str, owner: dict[str, Any]) -> bool:
        patch = {"metadata": {"ownerReferences": [owner]}}
        return self._ignoring_404(
            lambda: self.core.patch_namespaced_pod(name, namespace, patch, _content_type=MERGE_PATCH)
        )

    def create_service(self, namespace: str, manifest: dict[str, Any]) -> bool:
        return self._ignoring_409(
            lambda: self.core.create_namespaced_service(namespace, manifest)  # type: ignore[arg-type]
        )

    @staticmethod
    def _ignoring_409(call: Callable[[], object]) -> bool:
        """True if `call` succeeded, False if the object already exists (409 Conflict)."""
        return _done_unless(call, already_done=409)

    @staticmethod
    def _ignoring_404(call: Callable[[], object]) -> bool:
        """True if `call` succeeded, False if the object is already gone (404 Not Found)."""
        return _done_unless(call, already_done=404)


def _done_unless(call: Callable[[], object], already_done: int) -> bool:
    """Runs `call`: True if it succeeded, False if the API server answered `already_done`."""
    try:
        call()
    except ApiException as error:
        if _status_of(error) == already_done:
            return False
        raise
    return True
