"""A stopping leader's writes (controller/kube.py WriteGate) and its hand-over of the Lease
(controller/runner.py hand_over): no write of this replica may follow the release."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from kubefit.controller.kube import KubeApi, WriteGate, WritesStopped
from kubefit.controller.leader import LeaderElector
from kubefit.controller.runner import hand_over


class _Response:
    status = 200

    def read(self) -> bytes:
        return b"{}"


class RecordingClient:
    """The two ApiClient methods _Rest uses; `hold` keeps a request in flight until it is set."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.hold: threading.Event | None = None
        self.in_flight = threading.Event()

    def param_serialize(self, method: str, path: str, **_: Any) -> tuple[str, str]:
        return method, path

    def call_api(self, method: str, path: str, _request_timeout: object = None) -> _Response:
        assert (
            _request_timeout is not None
        )  # every call is bounded in time (a dead connection held a reconcile)
        self.sent.append((method, path))
        self.in_flight.set()
        if self.hold is not None:
            self.hold.wait(10)
        return _Response()


class RecordingElector:
    def __init__(self) -> None:
        self.released = False
        self.renewing = True

    def release(self) -> None:
        self.released = True

    def stop_renewing(self) -> None:
        self.renewing = False


def _api(client: RecordingClient) -> KubeApi:
    return KubeApi(cast(Any, client))


def test_after_stop_no_write_is_sent_and_reads_still_are() -> None:
    client = RecordingClient()
    api = _api(client)
    assert api.stop_writes(1.0)
    with pytest.raises(WritesStopped):
        api.create_pod("team", {"metadata": {"name": "llama-worker-0"}})
    with pytest.raises(WritesStopped):
        api.delete_pod("team", "llama-worker-0")
    assert api.get_job("team", "llama") == {}
    assert client.sent == [("GET", "/apis/kubefit.dev/v1alpha1/namespaces/team/trainingjobs/llama")]


def _write_held_in_flight() -> tuple[KubeApi, RecordingClient, threading.Thread]:
    """An api whose one write (a pod delete) is sent and not answered until client.hold is set."""
    client = RecordingClient()
    client.hold = threading.Event()
    api = _api(client)
    writer = threading.Thread(target=api.delete_pod, args=("team", "llama-worker-1"))
    writer.start()
    assert client.in_flight.wait(5)
    return api, client, writer


def test_stop_waits_for_a_write_in_flight_and_says_whether_it_finished() -> None:
    api, client, writer = _write_held_in_flight()
    assert not api.stop_writes(0.2)  # still in flight
    assert client.hold is not None
    client.hold.set()
    writer.join(5)
    assert api.stop_writes(1.0)


def test_hand_over_releases_only_once_no_write_can_follow() -> None:
    api, client, writer = _write_held_in_flight()
    hanging = RecordingElector()
    exits: list[int] = []
    hand_over(cast(LeaderElector, hanging), api, drain_seconds=0.2, exit_now=exits.append)
    assert not hanging.released  # left to expire: the hanging write may still land
    assert not hanging.renewing and exits == [0]  # and it does expire: no renewal, the process ends
    assert client.hold is not None
    client.hold.set()
    writer.join(5)
    drained = RecordingElector()
    hand_over(cast(LeaderElector, drained), api, drain_seconds=1.0, exit_now=exits.append)
    assert drained.released and exits == [0]


def test_a_write_begun_before_stop_is_not_cut_short() -> None:
    gate = WriteGate()
    inside = threading.Event()
    finish = threading.Event()
    done: list[bool] = []

    def write() -> None:
        with gate.writing():
            inside.set()
            finish.wait(5)
            done.append(True)

    thread = threading.Thread(target=write)
    thread.start()
    assert inside.wait(5)
    stopper = threading.Thread(target=lambda: done.append(gate.stop(5)))
    stopper.start()
    finish.set()
    thread.join(5)
    stopper.join(5)
    assert done == [True, True]
