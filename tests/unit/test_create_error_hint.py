"""A worker refused for a cpu or memory request above its limit (a LimitRange's default limit, where the
template sets none) gets the way out in its ReconcileError message (docs/operator.md)."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from kubefit.controller.kube import error_message
from kubefit.controller.refusals import LIMIT_HINT, with_limit_hint


def _invalid(message: str) -> ApiException:
    error = ApiException(status=422, reason="Unprocessable Entity")
    error.body = json.dumps({"kind": "Status", "code": 422, "reason": "Invalid", "message": message})
    return error


@pytest.mark.parametrize(
    "refusal",
    [
        # Newer Kubernetes versions name the limit; older ones do not.
        'Pod "train-worker-0" is invalid: spec.containers[0].resources.requests: Invalid value: "8": '
        "must be less than or equal to cpu limit of 2",
        'Pod "train-worker-0" is invalid: spec.containers[0].resources.requests: Invalid value: "16Gi": '
        "must be less than or equal to memory limit",
    ],
)
def test_a_request_above_its_limit_gets_the_hint(refusal: str) -> None:
    message = with_limit_hint(error_message(_invalid(refusal)))
    assert message == f"{refusal} (HTTP 422){LIMIT_HINT}"
    assert "LimitRange" in message and "spec.resources.cpu" in message


@pytest.mark.parametrize(
    "other",
    [
        'pods "train-worker-0" is forbidden: exceeded quota: gpu, requested: nvidia.com/gpu=8 (HTTP 403)',
        'Pod "train-worker-0" is invalid: spec.containers[0].resources.requests[nvidia.com/gpu]: '
        'Invalid value: "8": must be equal to nvidia.com/gpu limit (HTTP 422)',
        "RuntimeError: boom",
    ],
)
def test_other_failures_are_left_as_they_are(other: str) -> None:
    assert with_limit_hint(other) == other
