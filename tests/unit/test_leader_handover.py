"""The edges of leading (controller/leader.py): when the renew deadline starts, how long the Lease calls may
take, and a release that a renewal stuck in its request cannot undo. In-memory Leases as in test_leader.py,
on a clock the test moves; the API client's retries against a real socket that never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from test_leader import LEASE, Clock, FakeLeases, _Lost

from kubefit.controller import leader as leader_module
from kubefit.controller.leader import LeaderElector, LeaseApi, LeaseTimings

FAST = LeaseTimings(lease_seconds=15, renew_deadline=10.0, retry_period=0.02)


def test_the_renew_deadline_counts_from_the_attempt_that_took_the_lease() -> None:
    """A standby may take the Lease a lease after it was written: what the new leader does between
    taking it and renewing (freeing the standby's port, labelling its pod) must not move the deadline."""
    leases, clock = FakeLeases(), Clock()
    reads = leases.read

    def slow_read(namespace: str, name: str) -> dict[str, Any] | None:
        clock.now += 3.0  # the acquiring attempt itself takes 3 s before it writes
        return reads(namespace, name)

    leases.read = slow_read  # type: ignore[method-assign]
    a = LeaderElector(leases, LEASE, "a", FAST, clock=clock)  # type: ignore[arg-type]
    a.acquire()
    started = clock.now - 3.0
    leases.read = reads  # type: ignore[method-assign]
    leases.unreachable = True  # no renewal succeeds from here
    clock.now = started + FAST.renew_deadline + 0.5  # 7.5 s after the write, 10.5 s after the attempt began
    lost = _Lost(clock)
    a.keep_leading(lost)
    try:
        assert lost.wait(5), "the deadline restarted when keep_leading was called"
    finally:
        a.stop_renewing()


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """An API server that accepts connections and never answers; the accepted connections."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(50)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda api: api.read("ns", "lease"),
        lambda api: api.replace("ns", "lease", {"metadata": {"name": "lease"}}),
        lambda api: api.label_pod("ns", "pod", {"a": "b"}),
    ],
    ids=["read", "replace", "label_pod"],
)
def test_a_lease_call_takes_one_timeout_not_four(
    silent_server: tuple[str, list[socket.socket]],
    monkeypatch: pytest.MonkeyPatch,
    call: Callable[[LeaseApi], Any],
) -> None:
    """urllib3 retries a GET or PUT three times by default: the 5 s timeout became 20 s, past the renew
    deadline's arithmetic and a SIGTERM's grace."""
    host, accepted = silent_server
    configuration = client.Configuration()
    configuration.host = host
    monkeypatch.setattr(client.Configuration, "_default", configuration)  # what LeaseApi() starts from
    api = LeaseApi(request_timeout=0.3)
    began = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017, PT011 - whichever timeout error the client raises
        call(api)
    # One connection: no retry (the count, not the clock, says so; the clock only rules out 20 s).
    assert len(accepted) == 1
    assert time.monotonic() - began < 5


def _hang_in(thread_name: str, leases: FakeLeases) -> tuple[threading.Event, threading.Event]:
    """Makes reads from the thread `thread_name` hang until the first Event is set; the second is set
    once one hangs. The read returns the Lease as it is when it ends (an answer that came late)."""
    hang, hanging = threading.Event(), threading.Event()
    reads = leases.read

    def read(namespace: str, name: str) -> dict[str, Any] | None:
        if threading.current_thread().name == thread_name:
            hanging.set()
            hang.wait(20)
        return reads(namespace, name)

    leases.read = read  # type: ignore[method-assign]
    return hang, hanging


def _leading_fast(leases: FakeLeases, timings: LeaseTimings = FAST) -> tuple[LeaderElector, _Lost]:
    clock = Clock()
    a = LeaderElector(leases, LEASE, "a", timings, clock=clock)  # type: ignore[arg-type]
    a.acquire()
    lost = _Lost(clock)
    a.keep_leading(lost)
    return a, lost


def test_a_renewal_whose_read_returns_after_stop_does_not_write() -> None:
    leases = FakeLeases()
    a, lost = _leading_fast(leases)
    hang, hanging = _hang_in("kubefit-lease", leases)
    try:
        assert hanging.wait(10)
        a.stop_renewing()
        version = leases.version
        hang.set()
        assert a._renewer is not None
        a._renewer.join(5)
        assert leases.version == version, "a renewal wrote after renewing had stopped"
        assert not lost.is_set()
    finally:
        hang.set()


def test_a_renewal_stuck_past_the_release_does_not_take_the_released_lease_back() -> None:
    """release() waits for a stuck renewal only so long; the renewal, answered afterwards with the
    released Lease (no holder), must not write this replica back in."""
    leases = FakeLeases()
    timings = LeaseTimings(lease_seconds=15, renew_deadline=0.2, retry_period=0.02)
    a, lost = _leading_fast(leases, timings)
    hang, hanging = _hang_in("kubefit-lease", leases)
    try:
        assert hanging.wait(10)
        a.release()
        assert leases.holder == ""
        hang.set()
        assert a._renewer is not None
        a._renewer.join(5)
        assert leases.holder == "", "the late renewal took the released Lease back"
        assert not lost.is_set()
    finally:
        hang.set()


def test_a_renewal_that_finds_the_lease_released_by_someone_stops_leading() -> None:
    """Only a Lease this replica holds is renewed; one emptied under a running leader is lost (a standby
    may take it at once), not taken back."""
    leases = FakeLeases()
    a, lost = _leading_fast(leases)
    try:
        assert leases.stored is not None
        leases.stored["spec"]["holderIdentity"] = ""
        leases.version += 1
        leases.stored["metadata"]["resourceVersion"] = str(leases.version)
        assert lost.wait(5)
        assert leases.holder == ""
    finally:
        a.stop_renewing()


def test_release_gives_up_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM'd leader has its pod's grace period: a release whose calls hang leaves the Lease to
    expire rather than keep the process past it."""
    monkeypatch.setattr(leader_module, "RELEASE_BUDGET_SECONDS", 0.3, raising=False)
    leases = FakeLeases()
    a = LeaderElector(leases, LEASE, "a", FAST)  # type: ignore[arg-type]
    a.acquire()
    hang = threading.Event()
    reads = leases.read

    def hanging_read(namespace: str, name: str) -> dict[str, Any] | None:
        hang.wait(3)  # an API server that never answers, up to the request timeout
        return reads(namespace, name)

    leases.read = hanging_read  # type: ignore[method-assign]
    try:
        began = time.monotonic()
        a.release()
        assert time.monotonic() - began < 5, "release waited for its hanging calls"  # they hang for ever
    finally:
        hang.set()
