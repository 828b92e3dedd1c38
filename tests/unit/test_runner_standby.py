"""A replica waiting for the Lease and becoming leader (runner._become_leader): its role label, its
/healthz server, and when it starts renewing. The Lease and the pod label are in memory (test_leader.py's
FakeLeases); the /healthz server is real, on loopback."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_leader import LEASE, FakeLeases

from kubefit.controller import leader as leader_module
from kubefit.controller import runner
from kubefit.controller.leader import ROLE_LABEL, LeaderElector, LeaseTimings
from kubefit.controller.runner import LeaderElection, _become_leader, _serve_standby_health

TIMINGS = LeaseTimings(lease_seconds=60, renew_deadline=40.0, retry_period=0.02)


class FakeCluster(FakeLeases):
    """The Lease store, and this replica's pod labels: `label_pod` fails `failures[role]` times for that
    role, and waits while `hold[role]` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: dict[str, int] = {}
        self.hold: dict[str, threading.Event] = {}
        self.asked: list[str] = []
        self.labelled: list[str] = []  # the roles written, in order
        self.label_asked = threading.Event()

    def label_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        role = labels[ROLE_LABEL]
        self.asked.append(role)
        self.label_asked.set()
        if role in self.hold:
            self.hold[role].wait(20)
        if self.failures.get(role, 0) > 0:
            self.failures[role] -= 1
            raise OSError("connection refused")
        self.labelled.append(role)


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    fake = FakeCluster()
    monkeypatch.setattr(runner, "LeaseApi", lambda: fake)
    monkeypatch.setattr(leader_module, "LeaseApi", lambda: fake)
    monkeypatch.setattr(runner, "exit_on_lost_lease", lambda namespace, name: lambda: None)
    monkeypatch.setattr(leader_module, "ROLE_LABEL_RETRY_SECONDS", 0.01, raising=False)
    monkeypatch.setenv("POD_NAME", "kubefit-abc")
    monkeypatch.setenv("POD_NAMESPACE", LEASE[0])
    yield fake
    for event in fake.hold.values():
        event.set()


def _become_leader_in_a_thread() -> tuple[threading.Thread, list[LeaderElector]]:
    election = LeaderElection(name=LEASE[1], namespace=LEASE[0], timings=TIMINGS, identity="me")
    elected: list[LeaderElector] = []
    thread = threading.Thread(
        target=lambda: elected.append(_become_leader(election, "127.0.0.1", 0)), daemon=True
    )
    thread.start()
    return thread, elected


def _until(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_a_standby_keeps_trying_its_label_until_it_sticks_and_a_late_one_does_not_undo_leader(
    cluster: FakeCluster,
) -> None:
    """Its five tries failed: the `leader` label of its previous life stayed, and the checkpoints Service
    sent workers' acks to a replica that does not serve them."""
    other = LeaderElector(cluster, LEASE, "other", TIMINGS)  # type: ignore[arg-type]
    assert other.try_acquire_or_renew()
    cluster.failures["standby"] = runner.STANDBY_LABEL_ATTEMPTS + 3
    thread, elected = _become_leader_in_a_thread()
    try:
        assert _until(lambda: "standby" in cluster.labelled), f"labels tried: {cluster.asked}"
        other.release()  # this replica leads next
        thread.join(10)
        assert elected, "it did not become leader"
        assert _until(lambda: cluster.labelled[-1:] == ["leader"])
        time.sleep(0.1)
        assert cluster.labelled[-1] == "leader"
    finally:
        for elector in elected:
            elector.stop_renewing()


def test_a_standby_label_failing_when_the_replica_leads_is_not_written_over_leader(
    cluster: FakeCluster,
) -> None:
    """One labeller writes the latest role: a `standby` patch still being retried when the replica
    becomes leader gives way to `leader`, and nothing writes `standby` after it."""
    cluster.failures["standby"] = 1000
    thread, elected = _become_leader_in_a_thread()
    try:
        thread.join(15)
        assert elected, "it did not become leader"
        cluster.failures["standby"] = 0  # the API server answers again
        assert _until(lambda: "leader" in cluster.labelled)
        time.sleep(0.1)
        assert cluster.labelled == ["leader"], cluster.labelled
    finally:
        for elector in elected:
            elector.stop_renewing()


def test_the_new_leader_renews_while_its_label_is_still_being_written(cluster: FakeCluster) -> None:
    """The Lease was written when the replica took it: a label PATCH that hangs (up to its timeout) must
    not keep it from renewing, or a standby could take the Lease from a leader that still acts."""
    cluster.hold["leader"] = threading.Event()
    thread, elected = _become_leader_in_a_thread()
    try:
        assert _until(lambda: "leader" in cluster.asked)
        version = cluster.version
        assert _until(lambda: cluster.version >= version + 3, seconds=5), "no renewal while labelling"
    finally:
        cluster.hold["leader"].set()
        thread.join(10)
        for elector in elected:
            elector.stop_renewing()


def test_the_standby_health_server_caps_connections_that_never_finish_their_request() -> None:
    server = _serve_standby_health("127.0.0.1", 0)
    port = server.server_address[1]
    before = threading.active_count()
    half_sent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
    try:
        for connection in half_sent:
            connection.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        time.sleep(0.5)
        assert threading.active_count() - before <= 20, "a thread for every half-sent request"
    finally:
        for connection in half_sent:
            connection.close()
        server.shutdown()
        server.server_close()


def test_sigterm_while_waiting_for_the_lease_stops_the_standby_and_takes_nothing(
    cluster: FakeCluster,
) -> None:
    # As the container's PID 1 the process ignores a signal it has no handler for, and kopf installs its
    # own only once leading: the standby sat out its grace period, and could take the Lease while being
    # deleted. Here the test's own handler stands for that default: reaching it fails the test.
    cluster.create(LEASE[0], {"metadata": {"name": LEASE[1]}, "spec": {"holderIdentity": "other"}})
    cluster.stored["spec"]["leaseDurationSeconds"] = 3600

    def default_handler(signum: int, frame: Any) -> None:
        raise AssertionError("SIGTERM reached the handler in place before _become_leader")

    previous = signal.signal(signal.SIGTERM, default_handler)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        election = LeaderElection(name=LEASE[1], namespace=LEASE[0], timings=TIMINGS, identity="me")
        started = time.monotonic()
        assert _become_leader(election, "127.0.0.1", 0) is None
        assert time.monotonic() - started < 5
        assert cluster.holder == "other"
        assert signal.getsignal(signal.SIGTERM) is default_handler  # kopf's comes later, over the original
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_as_the_lease_is_taken_releases_it(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The signal lands during the attempt that takes the Lease: the replica hands it back instead of leading.
    taken = LeaderElector.try_acquire_or_renew

    def take_then_signal(self: LeaderElector) -> bool:
        won = taken(self)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs in the main thread between bytecodes
        return won

    def default_handler(signum: int, frame: Any) -> None:
        raise AssertionError("SIGTERM reached the handler in place before _become_leader")

    monkeypatch.setattr(LeaderElector, "try_acquire_or_renew", take_then_signal)
    previous = signal.signal(signal.SIGTERM, default_handler)
    try:
        election = LeaderElection(name=LEASE[1], namespace=LEASE[0], timings=TIMINGS, identity="me")
        assert _become_leader(election, "127.0.0.1", 0) is None
        assert cluster.holder == ""
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_once_leading_is_not_taken_for_the_standbys_and_renewing_goes_on(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Right after the Lease is taken the standby's handler must be gone: it stopped the renewing, and the
    # replica went on to lead with a Lease that lapsed while a standby took it (review of this change).
    received: list[int] = []
    keep = LeaderElector.keep_leading

    def keep_then_signal(self: LeaderElector, on_lost: Any) -> None:
        keep(self, on_lost)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)

    monkeypatch.setattr(LeaderElector, "keep_leading", keep_then_signal)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    elector = None
    try:
        election = LeaderElection(name=LEASE[1], namespace=LEASE[0], timings=TIMINGS, identity="me")
        elector = _become_leader(election, "127.0.0.1", 0)
        assert elector is not None and received == [signal.SIGTERM]  # the handler kopf replaces later
        version = cluster.version
        assert _until(lambda: cluster.version > version + 2), "the Lease is no longer renewed"
    finally:
        signal.signal(signal.SIGTERM, previous)
        if elector is not None:
            elector.stop_renewing()


def _signal_while_labelling(cluster: FakeCluster, role: str) -> Any:
    """SIGTERM sent while the `role` label's patch hangs; the test's own handler fails a test it reaches.
    Returns the handler that was in place, to restore."""

    def default_handler(signum: int, frame: Any) -> None:
        raise AssertionError("SIGTERM reached the handler in place before the operator's")

    previous = signal.signal(signal.SIGTERM, default_handler)
    cluster.hold[role] = threading.Event()

    def signal_then_answer() -> None:
        assert _until(lambda: role in cluster.asked, seconds=5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        cluster.hold[role].set()

    threading.Thread(target=signal_then_answer, daemon=True).start()
    return previous


def test_sigterm_between_taking_the_lease_and_kopf_is_kept_for_kopf(cluster: FakeCluster) -> None:
    """As PID 1 a SIGTERM with no handler is dropped: after taking the Lease the wait's handler was restored,
    and one landing before kopf.run (here during a slow `leader` label patch) left the replica leading,
    holding the Lease, until SIGKILL. The process's handler stays and sets kopf's stop flag."""
    previous = _signal_while_labelling(cluster, "leader")
    termination = runner._StopOnTerm()  # over the test's handler, as run_operator's over the default
    try:
        election = LeaderElection(name=LEASE[1], namespace=LEASE[0], timings=TIMINGS, identity="me")
        elector = _become_leader(election, "127.0.0.1", 0, termination)
        assert elector is not None and termination.requested and termination.stopped.is_set()
        assert signal.getsignal(signal.SIGTERM) == termination._stop  # not restored: kopf's replaces it
        elector.stop_renewing()
    finally:
        termination.restore()
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_during_the_standby_label_stops_before_the_wait(cluster: FakeCluster) -> None:
    """The wait's handler was installed only after the standby label's attempts (10 s or more on a slow or
    refusing API server), during which a SIGTERM to PID 1 was dropped."""
    previous = _signal_while_labelling(cluster, "standby")
    try:
        election = LeaderElection(name=LEASE[1], namespace=LEASE[0], timings=TIMINGS, identity="me")
        assert _become_leader(election, "127.0.0.1", 0) is None
        assert cluster.holder in ("", None)
    finally:
        signal.signal(signal.SIGTERM, previous)
