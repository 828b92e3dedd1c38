"""`kubefit run` refuses flags that cannot work, naming them (exit 2), and a start that cannot happen (a port
taken, a kubeconfig or catalog that cannot be read) ends in one line naming the cause (exit 1), before a
standby waits for the Lease, never in a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kubefit.cli.main import build_parser
from kubefit.cli.run import UsageError, operator_options

# A kubeconfig that loads; its server is never reached by the failures below.
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


def _options(*argv: str) -> object:
    return operator_options(build_parser().parse_args(["run", *argv]))


@pytest.mark.parametrize(
    "url",
    ["http:///", "http://host?x=1", "http://host/path#part", "http://a b", "ftp://host", "http://host:99999"],
)
def test_a_checkpoint_url_workers_cannot_append_paths_to_is_refused(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    # Workers call <url>/v1/...: with no host, or with a query, the handshake never reaches the operator.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--checkpoint-url", url])
    assert "--checkpoint-url" in capsys.readouterr().err


@pytest.mark.parametrize("pattern", ["", "BAD_NS", "team_a", "a" * 64, "team-a,", "team-*,!prod", "!"])
def test_a_namespace_no_namespace_can_have_is_refused(
    capsys: pytest.CaptureFixture[str], pattern: str
) -> None:
    # kopf matched none of them: the operator started, healthy, and served no TrainingJob.
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["run", "--namespace", pattern])
    assert exited.value.code == 2
    assert "--namespace" in (err := capsys.readouterr().err) and "is not a namespace name" in err


@pytest.mark.parametrize(
    "pattern", ["team-a", "team-*", "!kube-system", "!ml-?", "team-[ab]", "ml-[!x]*", "a" * 63]
)
def test_namespace_names_globs_and_exclusions_as_kopf_reads_them_are_taken(pattern: str) -> None:
    assert build_parser().parse_args(["run", "--namespace", pattern]).namespace == [pattern]


def test_a_checkpoint_url_with_a_host_and_a_path_is_taken_without_its_trailing_slash() -> None:
    args = build_parser().parse_args(["run", "--checkpoint-url", "https://kubefit.ops.svc:8081/hooks/"])
    assert args.checkpoint_url == "https://kubefit.ops.svc:8081/hooks"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--metrics-port", "9000", "--checkpoint-port", "9000"], ["--metrics-port", "--checkpoint-port"]),
        (["--liveness-port", "8000"], ["--metrics-port", "--liveness-port"]),  # the metrics default
        (
            ["--webhook-cert-file", "c", "--webhook-key-file", "k", "--webhook-port", "8081"],
            ["--checkpoint-port", "--webhook-port"],
        ),
        (["--leader-election-lease-seconds", "30"], ["--leader-election-lease-seconds", "--leader-election"]),
        (
            ["--leader-election-lease-name", "x", "--leader-election-namespace", "ops"],
            ["--leader-election-lease-name", "--leader-election-namespace"],
        ),
        (["--bind-address", "no-such-host.invalid"], ["--bind-address"]),
    ],  # fmt: skip
)
def test_flags_that_cannot_work_together_are_refused_naming_them(argv: list[str], named: list[str]) -> None:
    with pytest.raises(UsageError) as refused:
        _options(*argv)
    assert all(flag in str(refused.value) for flag in named), refused.value


def test_ports_of_0_may_repeat_and_the_webhook_port_counts_only_with_a_webhook() -> None:
    _options("--metrics-port", "0", "--liveness-port", "0", "--checkpoint-port", "0")
    webhook = _options("--webhook-cert-file", "c", "--webhook-key-file", "k").webhook  # type: ignore[attr-defined]
    assert webhook.port == 9443
    election = _options("--leader-election").leader_election  # type: ignore[attr-defined]
    assert (election.name, election.timings.lease_seconds) == ("kubefit", 15)


def test_an_invalid_pod_namespace_is_named_as_the_lease_namespace_it_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "Team_A")
    with pytest.raises(UsageError, match=r"\$POD_NAMESPACE 'Team_A'.*--leader-election-namespace"):
        _options("--leader-election")
    assert (
        _options("--leader-election", "--leader-election-namespace", "ops").leader_election.namespace == "ops"
    )  # type: ignore[attr-defined]


@pytest.mark.parametrize("seconds", ["0.1", "1e-300"])
def test_a_resync_period_that_would_list_jobs_back_to_back_is_refused(
    capsys: pytest.CaptureFixture[str], seconds: str
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--resync-seconds", seconds])
    assert "--resync-seconds" in capsys.readouterr().err


def _start(
    tmp_path: Path, *argv: str, kubeconfig: str | None = KUBECONFIG
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "KUBERNETES_SERVICE_HOST"}
    env["KUBECONFIG"] = str(tmp_path / "kubeconfig")
    if kubeconfig is not None:
        (tmp_path / "kubeconfig").write_text(kubeconfig)
    command = [sys.executable, "-m", "kubefit.cli.main", "run", "--metrics-port", "0", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("kubeconfig", "said"),
    [("clusters: [\n", "cannot read the kubeconfig"), (None, "cannot read the kubeconfig")],
    ids=["malformed", "missing"],
)
def test_an_unreadable_kubeconfig_is_told_in_one_line(
    tmp_path: Path, kubeconfig: str | None, said: str
) -> None:
    # Outside a pod the kubeconfig's own error, not the service account's "host/port is not set".
    started = _start(tmp_path, kubeconfig=kubeconfig)
    assert started.returncode == 1
    assert started.stderr.startswith(f"kubefit run: {said} ({tmp_path / 'kubeconfig'})")
    assert "Traceback" not in started.stderr and len(started.stderr.splitlines()) == 1


def test_a_bad_catalog_stops_a_replica_before_it_waits_for_the_lease(tmp_path: Path) -> None:
    # Read at failover before, every standby looked healthy and then failed in turn when it came to lead.
    started = _start(tmp_path, "--leader-election", "--catalog", str(tmp_path / "none.yaml"))
    assert started.returncode == 1 and "standby" not in started.stdout
    assert started.stderr.startswith("kubefit run: --catalog: ") and "Traceback" not in started.stderr


@pytest.mark.parametrize("flag", ["--checkpoint-port", "--liveness-port", "--metrics-port"])
def test_a_port_taken_is_named_with_its_flag(tmp_path: Path, flag: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = _start(tmp_path, "--bind-address", "127.0.0.1", "--checkpoint-port", "0",
                         "--liveness-port", "0", flag, str(port))  # fmt: skip
    assert started.returncode == 1 and "Traceback" not in started.stderr
    assert (
        started.stderr
        == f"kubefit run: {flag} {port}: cannot listen on 127.0.0.1:{port} (Address already in use)\n"
    )


def test_the_cluster_domain_defaults_to_cluster_local_and_a_bad_one_is_refused_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _options().cluster_domain == "cluster.local"  # type: ignore[attr-defined]
    assert _options("--cluster-domain", "corp.example.").cluster_domain == "corp.example"  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--cluster-domain", "Cluster_Local"])
    assert "--cluster-domain" in capsys.readouterr().err


def test_the_admission_policy_choices_are_the_planners() -> None:
    """cli/run.py lists the policies itself so that `--help` imports no planner: they must stay the same."""
    from kubefit.decisions.admission import ADMISSION_POLICIES

    parser = build_parser()
    run = next(
        action.choices["run"]
        for action in parser._actions
        if isinstance(action.choices, dict) and "run" in action.choices
    )
    policy = next(action for action in run._actions if action.dest == "admission_policy")
    assert tuple(policy.choices) == ADMISSION_POLICIES


DEEPEST_STORED = 10_000  # the API server refuses JSON nested deeper


def test_the_operator_reads_and_copies_an_object_as_deep_as_the_api_server_stores() -> None:
    # At Python's default limit, kopf's json.loads of one such object (any TrainingJob, or a Pod or
    # ResourceQuota through its managedFields) raised in its watch: the operator stopped for every job.
    script = textwrap.dedent(
        f"""
        import copy, json, sys, threading
        from kubefit.controller.runner import allow_objects_as_deep_as_the_api_server_stores
        line = '{{"metadata": {{"managedFields": ' + "[" * {DEEPEST_STORED} + "]" * {DEEPEST_STORED} + "}}}}"
        try:
            json.loads(line)
            print("default: read")
        except RecursionError:
            print("default: RecursionError")
        allow_objects_as_deep_as_the_api_server_stores()
        found = []
        def work():  # as the handler threads and kopf's loop do: read, copy, write again
            found.append(len(json.dumps(copy.deepcopy(json.loads(line)))))
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        work()
        print(found == [len(line), len(line)] or found)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split("\n")[:2] == ["default: RecursionError", "True"], result.stdout + result.stderr


def test_an_operator_that_kopf_stopped_on_an_error_exits_1_even_with_a_thread_still_blocked() -> None:
    # It stayed up, reconciling nothing and answering no probe, until SIGKILL: the interpreter's shutdown
    # waited for a handler thread.
    script = textwrap.dedent(
        """
        import sys, threading
        import kubefit.controller.runner as runner
        from kubefit.cli.main import main
        def run_operator(options):
            threading.Thread(target=threading.Event().wait).start()  # blocked for ever, not a daemon
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
        runner.run_operator = run_operator
        sys.argv = ["kubefit", "run", "--all-namespaces", "--metrics-port", "0", "--liveness-port", "0",
                    "--checkpoint-port", "0"]
        sys.exit(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "the operator stopped on an error" in result.stderr and "RecursionError" in result.stderr


def test_a_webhook_body_deeper_than_the_api_server_sends_is_refused_not_a_crash() -> None:
    # At a limit of 50,000 frames an UPDATE whose specs were lists 49,000 deep parsed, and comparing them
    # overflowed the C stack of the webhook's thread: the operator died (exit 139), leader and standbys alike.
    script = textwrap.dedent(
        """
        import json, threading
        from kubefit.controller.runner import allow_objects_as_deep_as_the_api_server_stores
        from kubefit.decisions.validating import review
        from kubefit.sizing.catalog import load_catalog
        allow_objects_as_deep_as_the_api_server_stores()
        catalog = load_catalog()
        def answer(depth):
            deep = "[" * depth + "]" * depth
            body = ('{"request": {"uid": "u", "operation": "UPDATE", "kind": {"kind": "TrainingJob"},'
                    ' "namespace": "ml", "object": {"metadata": {"name": "x"}, "spec": {"a": ' + deep + '}},'
                    ' "oldObject": {"metadata": {"name": "x"}, "spec": {"a": ' + deep + ', "b": 1}}}}')
            try:
                print(depth, review(json.loads(body), catalog, 1024)["response"]["allowed"])
            except RecursionError:
                print(depth, "too deep")  # the webhook's answer is a 400
        for depth in (10_000, 49_000):
            thread = threading.Thread(target=answer, args=(depth,))  # as the webhook's request threads
            thread.start()
            thread.join()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    # 10,000 deep: judged (allowed: the depth at fault was there before the update)
    assert (result.returncode, result.stdout) == (0, "10000 True\n49000 too deep\n"), result.stderr[-2000:]
