"""Leader election's rules (controller/leader.py) against an in-memory Lease store with the API server's
optimistic concurrency (a write with a stale resourceVersion is a 409), on a clock the test moves.

The real API server and two real operator processes are in tests/e2e/test_leader_election.py.
"""

from __future__ import annotations

import argparse
import copy
import logging
import threading
import time
from typing import Any

import pytest

from kubefit.cli.run import register
from kubefit.controller.leader import LeaderElector, LeaseTimings, micro_time

TIMINGS = LeaseTimings(lease_seconds=15, renew_deadline=10.0, retry_period=2.0)
LEASE = ("kubefit-system", "kubefit")


class FakeLeases:
    """get/create/update with resourceVersion checks, like the API server's."""

    def __init__(self) -> None:
        self.stored: dict[str, Any] | None = None
        self.version = 0
        self.unreachable = False

    def _check(self) -> None:
        if self.unreachable:
            raise ConnectionRefusedError("API server down")

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.stored)

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        self._check()
        if self.stored is not None:
            return None
        return self._store(body)

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        self._check()
        assert self.stored is not None
        if body["metadata"].get("resourceVersion") != self.stored["metadata"]["resourceVersion"]:
            return None
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.stored = copy.deepcopy(body)
        self.stored["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.stored)

    @property
    def holder(self) -> str:
        return ((self.stored or {}).get("spec") or {}).get("holderIdentity", "")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(leases: FakeLeases, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(leases, LEASE, identity, TIMINGS, clock=clock)  # type: ignore[arg-type]


def test_the_first_replica_creates_the_lease_and_the_second_waits_it_out() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    assert a.try_acquire_or_renew()
    assert leases.holder == "a"
    assert leases.stored is not None and leases.stored["spec"]["leaseTransitions"] == 0
    assert not b.try_acquire_or_renew()  # held and fresh

    # The leader renews: the record changes, so the standby's expiry clock starts again from now.
    clock.now += 10
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock.now += TIMINGS.lease_seconds - 1
    assert not b.try_acquire_or_renew()  # 14 s since b saw the renewal: still a's
    clock.now += 2
    assert b.try_acquire_or_renew()  # 16 s without a change: expired
    assert leases.holder == "b"
    assert leases.stored is not None and leases.stored["spec"]["leaseTransitions"] == 1


def test_expiry_is_measured_on_the_standbys_own_clock_not_the_recorded_times() -> None:
    leases, clock = FakeLeases(), Clock()
    assert elector(leases, "a", clock).try_acquire_or_renew()
    assert leases.stored is not None
    leases.stored["spec"]["renewTime"] = "2001-01-01T00:00:00.000000Z"  # a leader whose clock is far behind
    b = elector(leases, "b", clock)
    assert not b.try_acquire_or_renew()  # first sight of this record: b waits a whole lease from now


def test_a_released_lease_is_taken_at_once() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert leases.holder == ""
    assert b.try_acquire_or_renew()
    assert leases.holder == "b"


def test_release_leaves_a_lease_someone_else_holds_alone() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    assert a.try_acquire_or_renew()
    b.release()
    assert leases.holder == "a"


def test_of_two_replicas_racing_for_an_expired_lease_exactly_one_wins() -> None:
    leases, clock = FakeLeases(), Clock()
    assert elector(leases, "a", clock).try_acquire_or_renew()
    b, c = elector(leases, "b", clock), elector(leases, "c", clock)
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    clock.now += TIMINGS.lease_seconds + 1
    # Both read the same expired record; b writes first, so c's write carries a stale resourceVersion.
    stale = leases.read(*LEASE)
    original_read = leases.read
    leases.read = lambda namespace, name: copy.deepcopy(stale)  # type: ignore[method-assign]
    assert b.try_acquire_or_renew()
    assert not c.try_acquire_or_renew()
    leases.read = original_read  # type: ignore[method-assign]
    assert leases.holder == "b"


def _renewed_at(leases: FakeLeases, clock: Clock, moment: float) -> None:
    """Moves the clock to `moment` and waits until a renewal that began there was written: the leader's
    last renewal is then `moment`, whatever a loaded box did to its threads' timing."""
    clock.now = moment
    version = leases.version
    deadline = time.monotonic() + 20
    # The 2nd write's attempt began after the move; the 3rd's began once the 2nd had been recorded.
    while leases.version < version + 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert leases.version >= version + 3, "the leader stopped renewing"


class _Lost(threading.Event):
    """Set when the leader gives up; `at` holds the test clock's reading at each call."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock, self.at = clock, []  # type: list[float]

    def __call__(self) -> None:
        self.at.append(self.clock.now)
        self.set()


def _leading(leases: FakeLeases, timings: LeaseTimings) -> tuple[LeaderElector, Clock, _Lost]:
    """A leader renewing every 20 ms (real time) on a clock the test moves; an Event set when it gives up.

    It renews fine while the clock moves 1 s, over three renew deadlines, in 0.1 s steps."""
    clock = Clock()
    a = LeaderElector(leases, LEASE, "a", timings, clock=clock)  # type: ignore[arg-type]
    assert a.try_acquire_or_renew()
    lost = _Lost(clock)
    a.keep_leading(lost)
    for step in range(1, 11):
        _renewed_at(leases, clock, 1000.0 + step / 10)
        assert not lost.is_set()
    return a, clock, lost


def test_a_leader_that_cannot_renew_for_the_renew_deadline_stops_before_the_lease_expires() -> None:
    timings = LeaseTimings(lease_seconds=1, renew_deadline=0.3, retry_period=0.02)
    leases = FakeLeases()
    a, clock, lost = _leading(leases, timings)
    renewed = clock.now
    try:
        leases.unreachable = True  # an unreachable API server is a failed attempt, not a crash
        clock.now = renewed + 0.25
        assert not lost.wait(0.3)  # failed attempts, within the renew deadline: still leading
        clock.now = renewed + 0.35
        # Gave up after the deadline and before the lease (1 s) could have expired for anyone else.
        assert lost.wait(10)
        # Given up once, at the first reading past the renew deadline: before the lease could expire.
        assert lost.at == [renewed + 0.35] and lost.at[0] - renewed < timings.lease_seconds
    finally:
        a.release()


def test_a_leader_whose_renewal_hangs_stops_by_the_renew_deadline_not_when_the_request_returns() -> None:
    timings = LeaseTimings(lease_seconds=1, renew_deadline=0.3, retry_period=0.02)
    leases = FakeLeases()
    a, clock, lost = _leading(leases, timings)
    renewed = clock.now
    hang, hanging = threading.Event(), threading.Event()
    reads = leases.read

    def slow_read(namespace: str, name: str) -> dict[str, Any] | None:
        hanging.set()
        hang.wait(60)  # an API server that accepted the connection and never answers (up to the timeout)
        return reads(namespace, name)

    leases.read = slow_read  # type: ignore[method-assign]
    try:
        assert hanging.wait(10)  # a renewal is in its request, which does not return
        clock.now = renewed + 0.25
        assert not lost.wait(0.3)
        clock.now = renewed + 0.35
        # Stopped by the deadline (0.3 s from the last renewal) while the request still hangs, and before
        # the lease (1 s) could have expired for a standby.
        assert lost.wait(10)
        # Given up once, at the first reading past the renew deadline: before the lease could expire.
        assert lost.at == [renewed + 0.35] and lost.at[0] - renewed < timings.lease_seconds
    finally:
        hang.set()
        a.release()


def test_a_leader_whose_lease_another_replica_took_stops_at_once() -> None:
    timings = LeaseTimings(lease_seconds=30, renew_deadline=20.0, retry_period=0.02)
    leases = FakeLeases()
    a = LeaderElector(leases, LEASE, "a", timings)  # type: ignore[arg-type]
    assert a.try_acquire_or_renew()
    lost = threading.Event()
    a.keep_leading(lost.set)
    assert leases.stored is not None
    leases.stored["spec"]["holderIdentity"] = "b"  # e.g. this process was frozen for longer than the lease
    assert lost.wait(10)  # at its next attempt, long before the 20 s renew deadline
    a.release()
    assert leases.holder == "b"


def test_timings_keep_client_gos_proportions_and_state_the_takeover_bound() -> None:
    assert LeaseTimings.for_lease(15) == LeaseTimings(15, 10.0, 2.0)
    assert LeaseTimings().takeover_bound == 19.0
    assert micro_time(__import__("datetime").datetime(2026, 1, 2, 3, 4, 5, 6789)).endswith(".006789Z")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["run", *argv])


def test_leader_election_flags_parse_and_bad_ones_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("--leader-election", "--leader-election-lease-name", "my-lease", "--leader-election-namespace",
                  "ops", "--leader-election-lease-seconds", "30")  # fmt: skip
    assert (args.leader_election, args.leader_election_lease_name) == (True, "my-lease")
    assert (args.leader_election_namespace, args.leader_election_lease_seconds) == ("ops", 30)
    assert not _parse().leader_election
    for flag, value in [
        ("--leader-election-lease-name", "Not_A_Name"),
        ("--leader-election-namespace", "a.b"),
        ("--leader-election-lease-seconds", "1"),
    ]:
        with pytest.raises(SystemExit):
            _parse(flag, value)
        assert flag in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--resync-seconds", "0"),
        ("--resync-seconds", "-5"),
        ("--resync-seconds", "nan"),
        ("--resync-seconds", "inf"),
        ("--metrics-port", "70000"),
        ("--metrics-port", "-1"),
        ("--liveness-port", "65536"),
    ],  # fmt: skip
)
def test_run_refuses_a_period_or_port_that_cannot_work_naming_the_flag(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """0 had silently become 30 s; a negative or NaN period would spin the resync loop; a port out of range
    failed only at bind."""
    with pytest.raises(SystemExit):
        _parse(flag, value)
    assert flag in capsys.readouterr().err
    assert _parse("--resync-seconds", "0.5", "--metrics-port", "0").resync_seconds == 0.5


def test_a_standby_answers_healthz_and_frees_the_port_for_kopf() -> None:
    import socket
    import urllib.error
    import urllib.request

    from kubefit.controller.runner import _serve_standby_health

    server = _serve_standby_health("127.0.0.1", 0)
    port = server.server_address[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert response.status == 200 and response.read() == b"standby\n"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert refused.value.code == 404
    server.shutdown()
    server.server_close()
    with socket.socket() as probe:  # the leader's kopf binds the same port next
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


class _Labels:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.error = error

    def label_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        self.calls.append((namespace, name, labels))
        if self.error is not None:
            raise self.error


def test_a_replica_labels_its_own_pod_with_its_role_and_only_in_a_pod(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kubefit.controller.leader import ROLE_LABEL, mark_role

    api = _Labels()
    in_pod = {"POD_NAME": "kubefit-7d9-abc", "POD_NAMESPACE": "ops"}
    assert mark_role("leader", api, in_pod) is True  # type: ignore[arg-type]
    assert api.calls == [("ops", "kubefit-7d9-abc", {ROLE_LABEL: "leader"})]
    assert mark_role("standby", api, {"POD_NAMESPACE": "ops"}) is None  # not in a pod: nothing sent
    assert len(api.calls) == 1
    refused = _Labels(OSError("connection refused"))
    with caplog.at_level(logging.WARNING, logger="kubefit.leader"):
        assert mark_role("standby", refused, in_pod) is False  # type: ignore[arg-type]
    assert "could not label pod ops/kubefit-7d9-abc" in caplog.text


def test_the_role_label_is_written_until_it_sticks(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubefit.controller import leader
    from kubefit.controller.leader import RoleLabeller

    monkeypatch.setattr(leader, "ROLE_LABEL_RETRY_SECONDS", 0.01)

    answers = iter([False, False, True])
    calls: list[str] = []

    def mark(role: str) -> bool | None:
        calls.append(role)
        return next(answers, True)

    labeller = RoleLabeller(mark)
    assert labeller.label("leader", wait_attempts=1) is False  # the caller waited for one patch only
    deadline = time.monotonic() + 10
    while calls != ["leader"] * 3 and time.monotonic() < deadline:  # the thread goes on trying
        time.sleep(0.05)
    assert calls == ["leader"] * 3 and labeller.label("leader") is True
    assert RoleLabeller(lambda role: None).label("standby", wait_attempts=2) is True  # not in a pod
