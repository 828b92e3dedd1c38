"""A throttled answer (API Priority and Fairness' 429, a 5xx with Retry-After) is resent inside the REST call
after the server's Retry-After, as client-go's REST client does (controller/kube.py _Rest), instead of
failing the reconcile at once; other errors still raise ApiException at once."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3 import HTTPHeaderDict

from kubefit.controller.kube import KubeApi, WritesStopped, _Rest

REASONS = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class _Response:
    """What kubernetes.client.rest.RESTResponse exposes: status, reason, read(), the urllib3 headers
    (case-insensitive) as `headers`, getheaders() and getheader(); ApiException(http_resp=...) reads
    status, reason and headers."""

    def __init__(self, status: int, body: bytes = b"{}", retry_after: str | None = None) -> None:
        self.status = status
        self.reason = REASONS.get(status, "")
        self.data = body
        self.headers = HTTPHeaderDict({"Content-Type": "application/json"})
        if retry_after is not None:
            self.headers["Retry-After"] = retry_after

    def read(self) -> bytes:
        return self.data

    def getheaders(self) -> HTTPHeaderDict:
        return self.headers

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


def _status(code: int, reason: str) -> bytes:
    return json.dumps({"kind": "Status", "code": code, "reason": reason, "message": reason}).encode()


class ScriptedClient:
    """The two ApiClient methods _Rest uses; call_api answers the scripted responses in turn."""

    def __init__(self, *responses: _Response) -> None:
        self.responses = list(responses)
        self.sent: list[tuple[str, str]] = []

    def param_serialize(self, method: str, path: str, **_: Any) -> tuple[str, str]:
        return method, path

    def call_api(self, method: str, path: str, _request_timeout: object = None) -> _Response:
        assert _request_timeout is not None
        self.sent.append((method, path))
        return self.responses.pop(0)


def _rest(*responses: _Response) -> tuple[_Rest, ScriptedClient, list[float]]:
    api_client = ScriptedClient(*responses)
    rest = _Rest(cast(Any, api_client))
    slept: list[float] = []
    rest.sleep = slept.append
    return rest, api_client, slept


def _throttled(retry_after: str | None = "1") -> _Response:
    return _Response(429, _status(429, "TooManyRequests"), retry_after)


def test_a_429_is_resent_after_its_retry_after() -> None:
    rest, api_client, slept = _rest(_throttled("2"), _Response(200, b'{"kind": "Pod"}'))
    assert rest.call("GET", "/api/v1/namespaces/ns/pods/w-0") == b'{"kind": "Pod"}'
    assert slept == [2]
    assert api_client.sent == [("GET", "/api/v1/namespaces/ns/pods/w-0")] * 2


def test_a_429_without_retry_after_waits_a_second() -> None:
    rest, api_client, slept = _rest(_throttled(None), _Response(200))
    assert rest.call("GET", "/api/v1/nodes") == b"{}"
    assert slept == [1]
    assert len(api_client.sent) == 2


def test_a_429_with_an_unreadable_retry_after_waits_a_second() -> None:
    rest, _, slept = _rest(_throttled("Wed, 21 Oct 2015 07:28:00 GMT"), _throttled("1.5"), _Response(200))
    assert rest.call("GET", "/api/v1/nodes") == b"{}"
    assert slept == [1, 1]


def test_a_5xx_with_retry_after_is_resent() -> None:
    """The API server starting (or stopping) answers a 5xx with Retry-After."""
    unavailable = _Response(503, _status(503, "ServiceUnavailable"), "3")
    rest, api_client, slept = _rest(unavailable, _Response(200, b'{"ok": true}'))
    assert rest.call("POST", "/api/v1/namespaces/ns/pods", {"kind": "Pod"}) == b'{"ok": true}'
    assert slept == [3]
    assert api_client.sent == [("POST", "/api/v1/namespaces/ns/pods")] * 2


@pytest.mark.parametrize("retry_after", [None, "soon"])
def test_a_5xx_without_a_usable_retry_after_raises_at_once(retry_after: str | None) -> None:
    failed = _Response(500, _status(500, "InternalError"), retry_after)
    rest, api_client, slept = _rest(failed, _Response(200))
    with pytest.raises(ApiException) as raised:
        rest.call("GET", "/api/v1/nodes")
    assert raised.value.status == 500
    assert slept == []
    assert len(api_client.sent) == 1


@pytest.mark.parametrize("status", [403, 404, 409, 422])
def test_other_errors_raise_at_once_even_with_retry_after(status: int) -> None:
    rest, api_client, slept = _rest(_Response(status, _status(status, "Nope"), "1"), _Response(200))
    with pytest.raises(ApiException) as raised:
        rest.call("POST", "/api/v1/namespaces/ns/pods", {"kind": "Pod"})
    assert raised.value.status == status
    assert (slept, len(api_client.sent)) == ([], 1)


def test_a_throttling_that_persists_raises_the_429_after_the_bound() -> None:
    bound = 5
    rest, api_client, slept = _rest(*[_throttled("1") for _ in range(bound + 5)])
    with pytest.raises(ApiException) as raised:
        rest.call("GET", "/api/v1/nodes")
    assert raised.value.status == 429
    assert raised.value.reason == "Too Many Requests"
    assert raised.value.headers is not None and raised.value.headers["retry-after"] == "1"
    assert json.loads(raised.value.body or "")["reason"] == "TooManyRequests"
    assert len(api_client.sent) == bound + 1
    assert slept == [1] * bound


def test_a_huge_or_negative_retry_after_is_clamped() -> None:
    rest, _, slept = _rest(_throttled("3600"), _throttled("-4"), _Response(200))
    assert rest.call("GET", "/api/v1/nodes") == b"{}"
    assert slept == [5, 0]


def test_a_stopped_gate_sends_no_write() -> None:
    rest, api_client, slept = _rest(_throttled("1"), _Response(200))
    rest.writes.stop(0)
    with pytest.raises(WritesStopped):
        rest.call("POST", "/api/v1/namespaces/ns/pods", {"kind": "Pod"})
    assert (api_client.sent, slept) == ([], [])


def test_a_throttled_write_is_one_write_in_flight_until_it_is_answered() -> None:
    """The whole retry is inside the gate: a stopping leader's drain waits for it."""
    rest, api_client, _ = _rest(_throttled("1"), _Response(200))
    drained: list[bool] = []

    def stop_while_waiting(_: float) -> None:
        drained.append(rest.writes.stop(0))

    rest.sleep = stop_while_waiting
    with pytest.raises(WritesStopped):
        rest.call("POST", "/api/v1/namespaces/ns/pods", {"kind": "Pod"})
    assert drained == [False]  # still in flight while it waited
    assert api_client.sent == [("POST", "/api/v1/namespaces/ns/pods")]  # and not resent once stopped
    assert rest.writes.stop(0)  # drained once it gave up


def test_a_throttled_read_is_resent_after_the_gate_closed() -> None:
    """Reads are not gated: a stopping leader's reads still finish."""
    rest, api_client, _ = _rest(_throttled("1"), _Response(200))

    def stop_while_waiting(_: float) -> None:
        rest.writes.stop(0)

    rest.sleep = stop_while_waiting
    assert rest.call("GET", "/api/v1/nodes") == b"{}"
    assert len(api_client.sent) == 2


def test_kube_api_reads_through_a_throttled_answer() -> None:
    """Through KubeApi, as the reconciler calls it: the job is read, not a ReconcileError."""
    job = {"metadata": {"name": "j", "namespace": "ns", "uid": "u1"}}
    api_client = ScriptedClient(_throttled("1"), _Response(200, json.dumps(job).encode()))
    api = KubeApi(cast(Any, api_client))
    api.custom._rest.sleep = lambda _: None
    assert api.get_job("ns", "j") == job
    assert len(api_client.sent) == 2


def test_the_wait_is_a_real_sleep_by_default() -> None:
    assert _Rest(cast(Any, ScriptedClient())).sleep is time.sleep
