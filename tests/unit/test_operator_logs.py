"""The operator's log as an SRE reads it (`kubectl logs`): no line per kubelet probe, an API outage as one
line and a bug with its traceback, kopf's per-object lines naming the object, a role label that cannot be
written warned about without flooding, leader changes with a timestamp and level, and refused checkpoint
calls visible once."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest
from kubernetes.client.exceptions import ApiException
from test_reconciler import KEY, NAMESPACE, Harness, job_manifest
from test_runner_standby import FakeCluster, _become_leader_in_a_thread
from test_runner_standby import cluster as cluster  # the fixture
from urllib3.exceptions import MaxRetryError, NewConnectionError

from kubefit.controller import checkpoints, leader, runner
from kubefit.controller.checkpoints import (
    CheckpointBoard,
    checkpoint_token,
    start_checkpoint_server,
    token_lookup,
)
from kubefit.controller.handlers import _resync_loop
from kubefit.controller.leader import mark_role
from kubefit.controller.resync import ResyncLoop

TUNED = ("kopf.objects", "kopf._cogs.clients.watching", "aiohttp.access", "urllib3.connectionpool", "asyncio")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """runner.configure_logging changes the root logger and a few others: put them back for the next tests."""
    root = logging.getLogger()
    saved = [(root, root.level, root.handlers[:], root.propagate)]
    saved += [(lg, lg.level, lg.handlers[:], lg.propagate) for lg in map(logging.getLogger, TUNED)]
    yield
    for logger, level, handlers, propagate in saved:
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate


def _outage(path: str) -> MaxRetryError:
    """What the kubernetes client raises when nothing answers at the API server's address."""
    cause = NewConnectionError(
        cast(Any, None), "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    return MaxRetryError(None, path, cause)  # type: ignore[arg-type]


# 1. kopf's /healthz (aiohttp) logged an access line for every kubelet probe.
@pytest.mark.usefixtures("restore_logging")
def test_kubelet_probes_of_healthz_leave_no_line_unless_debug() -> None:
    runner.configure_logging()
    assert not logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)
    runner.configure_logging(verbose=True)
    assert not logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)
    runner.configure_logging(debug=True)
    assert logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)


# 2. An API server outage was logged as a bug, with urllib3's whole traceback.
@pytest.mark.parametrize(
    "error",
    [_outage("/apis/kubefit.dev/v1alpha1/namespaces/team-a/trainingjobs/llama"), OSError("unreachable")],
)
def test_a_reconcile_the_api_server_could_not_answer_is_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)
    harness = Harness()
    harness.kube.jobs["llama"] = job_manifest()
    harness.kube.fail[("get_job", "*")] = error
    try:
        with caplog.at_level(logging.WARNING, logger="kubefit.reconciler"):
            harness.reconcile("create", KEY)
    finally:
        harness.reconciler.forget(KEY)  # cancels the retry timer
    failed = [
        r for r in caplog.records if r.getMessage().startswith(f"reconcile of {NAMESPACE}/llama failed")
    ]
    assert len(failed) == 1 and not failed[0].exc_info, caplog.text
    assert type(error).__name__ in failed[0].getMessage()


def test_a_bug_in_a_reconcile_still_has_its_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)
    harness = Harness()
    harness.kube.jobs["llama"] = job_manifest()
    harness.kube.fail[("get_job", "*")] = KeyError("spec")
    try:
        with caplog.at_level(logging.WARNING, logger="kubefit.reconciler"):
            harness.reconcile("create", KEY)
    finally:
        harness.reconciler.forget(KEY)
    failed = [
        r for r in caplog.records if r.getMessage().startswith(f"reconcile of {NAMESPACE}/llama failed")
    ]
    assert len(failed) == 1 and failed[0].exc_info


def _one_period(prune: Any) -> None:
    loop = ResyncLoop(30.0, keys=lambda: [], reconcile=lambda key: None, schedule=lambda: None, prune=prune)
    loop.stop()  # the period ends without waiting for the next
    loop.run_period()


def test_a_resync_step_the_api_server_refused_is_one_line_naming_the_namespace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def prune() -> None:
        raise _outage("/apis/kubefit.dev/v1alpha1/namespaces/team-a/trainingjobs")

    with caplog.at_level(logging.INFO, logger="kubefit.resync"):
        _one_period(prune)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and not record.exc_info
    assert "checking for vanished jobs failed" in record.getMessage()
    assert "/namespaces/team-a/" in record.getMessage()


def test_a_bug_in_a_resync_step_still_has_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def prune() -> None:
        raise RuntimeError("dictionary changed size during iteration")

    with caplog.at_level(logging.INFO, logger="kubefit.resync"):
        _one_period(prune)
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info


def test_the_relist_check_refused_by_the_api_server_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    def check_relists() -> None:
        raise ApiException(status=403, reason="Forbidden")

    reconciler = SimpleNamespace(jobs=SimpleNamespace(keys=lambda: []), forget_vanished=lambda view: [])
    scheduler = SimpleNamespace(request=lambda *args: None)
    indexes: dict[str, Any] = {"kubefit_nodes": {}, "kubefit_pod_usage": {}, "kubefit_workers": {}}
    loop = _resync_loop(cast(Any, reconciler), cast(Any, scheduler), 30.0, indexes, check_relists)
    loop.stop()
    with caplog.at_level(logging.INFO):
        loop.run_period()
    [record] = [r for r in caplog.records if "deleted while a watch was broken" in r.getMessage()]
    assert record.levelno == logging.WARNING and not record.exc_info
    assert "Forbidden (HTTP 403)" in record.getMessage()


# 3. kopf's per-object lines did not say which object.
@pytest.mark.usefixtures("restore_logging")
def test_kopfs_lines_about_an_object_name_it() -> None:
    runner.configure_logging()
    [handler] = [h for h in logging.getLogger().handlers if type(h).__name__ == "_KopfStreamHandler"]
    record = logging.LogRecord(
        "kopf.objects", logging.ERROR, __file__, 1, "Handler 'worker_pod' failed", None, None
    )
    record.k8s_ref = {"namespace": "team-a", "name": "llama-worker-3"}
    assert "[team-a/llama-worker-3] Handler 'worker_pod' failed" in handler.format(record)


# 4. A role label that could not be written logged the same warning every 2 s.
class _Labels:
    def __init__(self) -> None:
        self.error: Exception | None = ApiException(status=403, reason="Forbidden")

    def label_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        if self.error is not None:
            raise self.error


def test_a_role_label_that_cannot_be_written_is_warned_about_once_per_reason_and_when_it_sticks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    monkeypatch.setattr(leader, "_label_failures", leader.LabelFailures(clock=lambda: now[0]))
    api, pod = _Labels(), {"POD_NAME": "kubefit-7d9c-abcde", "POD_NAMESPACE": "kubefit-system"}

    def lines() -> list[str]:
        found = [f"{r.levelname} {r.getMessage()}" for r in caplog.records]
        caplog.clear()
        return found

    with caplog.at_level(logging.INFO, logger="kubefit.leader"):
        for _ in range(5):
            assert mark_role("leader", cast(Any, api), pod) is False
        [first] = lines()
        assert first.startswith("WARNING could not label pod kubefit-system/kubefit-7d9c-abcde")
        assert "Forbidden" in first
        api.error = OSError("connection refused")  # a new reason is told
        mark_role("leader", cast(Any, api), pod)
        mark_role("leader", cast(Any, api), pod)
        [changed] = lines()
        assert "connection refused" in changed
        now[0] += leader.ROLE_LABEL_WARN_SECONDS  # the same one, a while later: still failing
        mark_role("leader", cast(Any, api), pod)
        [again] = lines()
        assert "failed 8 times" in again
        api.error = None
        assert mark_role("leader", cast(Any, api), pod) is True
        assert mark_role("leader", cast(Any, api), pod) is True
        assert lines() == [
            "INFO labelled pod kubefit-system/kubefit-7d9c-abcde kubefit.dev/role=leader after 8 failed patches"
        ]


# 5. --verbose turned on DEBUG for every logger.
@pytest.mark.usefixtures("restore_logging")
def test_verbose_adds_kopfs_handler_lines_and_debug_everything() -> None:
    runner.configure_logging()
    assert not logging.getLogger("kopf.objects").isEnabledFor(logging.INFO)
    runner.configure_logging(verbose=True)
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("kopf.objects").isEnabledFor(logging.INFO)  # "Handler ... succeeded"
    assert logging.getLogger("kopf._cogs.clients.watching").isEnabledFor(logging.DEBUG)  # watch-streams
    assert not logging.getLogger("kubefit.scheduler").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("kopf._core.reactor.queueing").isEnabledFor(logging.DEBUG)
    runner.configure_logging(debug=True)
    assert logging.getLogger("kubefit.scheduler").isEnabledFor(logging.DEBUG)
    # Left to its parent (the kubernetes client sets urllib3 itself): not held at ERROR any more.
    assert logging.getLogger("urllib3.connectionpool").level == logging.NOTSET
    runner.configure_logging()
    assert not logging.getLogger("urllib3.connectionpool").isEnabledFor(logging.WARNING)  # its "Retrying"
    assert not logging.getLogger("kopf._cogs.clients.watching").isEnabledFor(logging.DEBUG)


# 6. Leader changes were bare prints (no time, no level), the lost lease written twice.
def test_leader_changes_are_logged_with_time_and_level_not_printed(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.INFO, logger="kubefit.operator"):
        thread, elected = _become_leader_in_a_thread()
        try:
            thread.join(15)
            assert elected, "it did not become leader"
        finally:
            for elector in elected:
                elector.stop_renewing()
    messages = [r.getMessage() for r in caplog.records if r.name == "kubefit.operator"]
    assert "kubefit: standby as me, waiting for the lease kubefit-system/kubefit" in messages, messages
    assert "kubefit: leading as me (lease kubefit-system/kubefit)" in messages, messages
    assert "standby as" not in capsys.readouterr().out


def test_a_lost_lease_and_a_hand_over_that_cannot_drain_are_written_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    exits: list[int] = []
    monkeypatch.setattr(leader.os, "_exit", exits.append)
    with caplog.at_level(logging.INFO):
        leader.exit_on_lost_lease("kubefit-system", "kubefit")()
        elector = SimpleNamespace(stop_renewing=lambda: None)
        api = SimpleNamespace(stop_writes=lambda seconds: False)
        runner.hand_over(cast(Any, elector), cast(Any, api), drain_seconds=0.1, exit_now=exits.append)
    assert exits == [leader.LOST_EXIT_CODE, 0]
    assert [r.getMessage() for r in caplog.records] == [
        "kubefit: lost the lease kubefit-system/kubefit: exiting (3)",
        "kubefit: writes still in flight after 0.1 s: exiting, the lease expires",
    ]
    assert capsys.readouterr().out == ""


# 7. Refused checkpoint calls (401, 409) left nothing in the log.
def _call(url: str, token: str, body: dict[str, Any] | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, headers=headers), timeout=10
        ) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_a_refused_checkpoint_call_is_logged_once_per_job_and_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = b"k" * 32
    server = start_checkpoint_server(
        CheckpointBoard(), token_lookup(key, lambda ns, name: "uid-1"), "127.0.0.1", 0
    )
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/namespaces/team-a/trainingjobs/llama/checkpoint"
    stale_ack = {"requestId": "1-1", "worker": "llama-worker-3", "step": 10}
    try:
        with caplog.at_level(logging.INFO, logger="kubefit.checkpoints"):
            assert [_call(url, "old-token") for _ in range(3)] == [401] * 3
            good = checkpoint_token(key, "uid-1")
            assert [_call(url + "/ack", good, stale_ack) for _ in range(3)] == [409] * 3
    finally:
        server.shutdown()
        server.server_close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("checkpoint call for team-a/llama from 127.0.0.1 refused, 401")
    assert "--checkpoint-key-file" in warnings[0]
    assert warnings[1].startswith("checkpoint call for team-a/llama from 127.0.0.1 refused, 409")


def test_the_refusals_remembered_are_bounded() -> None:
    seen = checkpoints.FirstTimes(limit=2)
    assert [seen.first(key) for key in ("a", "b", "a", "c")] == [True, True, False, True]
    assert seen.first("a") is True  # the oldest was let go
    assert len(seen._seen) == 2
