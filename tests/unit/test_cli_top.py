"""`kubefit top`: rows from TrainingJob objects and utilisation, the waste verdicts, rendering, errors."""

from __future__ import annotations

import errno
import http.server
import io
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from kubefit.api.units import GIB
from kubefit.cli.main import build_parser
from kubefit.cli.top import (
    WASTE_IDLE,
    WASTE_OVERPROVISIONED,
    WASTE_PARTIAL_GANG,
    Thresholds,
    TopError,
    build_rows,
    job_gpu_utilization,
    job_row,
    prometheus_vector,
    render_json,
    render_table,
    run_top,
)

DEVICE = 80 * GIB


def job(
    name: str = "llm",
    namespace: str = "team",
    *,
    ready: int = 2,
    desired: int = 2,
    per_worker: int = 4,
    estimated: int = 60 * GIB,
    replicas: int = 2,
    min_replicas: int | None = None,
    phase: str = "Running",
    pods: int | None = None,  # status.replicas: worker pods that exist, running or not
) -> dict[str, Any]:
    workers: dict[str, Any] = {"replicas": replicas}
    if min_replicas is not None:
        workers["minReplicas"] = min_replicas
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"workers": workers},
        "status": {
            "phase": phase,
            **({} if pods is None else {"replicas": pods}),
            "readyReplicas": ready,
            "desiredReplicas": desired,
            "sizing": {
                "accelerator": "nvidia-h100-80gb",
                "acceleratorsPerWorker": per_worker,
                "perDeviceBytes": estimated,
                "deviceMemoryBytes": DEVICE,
            },
        },
    }


def test_a_busy_well_sized_job_wastes_nothing() -> None:
    utilization = {("team", "llm-worker-0", "GPU-0"): 0.9, ("team", "llm-worker-1", "GPU-1"): 0.7}
    row = job_row(job(), utilization, Thresholds())
    assert (row.accelerators_allocated, row.accelerators_requested) == (8, 8)
    assert row.utilization == pytest.approx(0.8)
    assert row.idle_accelerators == pytest.approx(8 * 0.2)
    assert row.waste == []


def test_each_kind_of_waste_is_named() -> None:
    idle = job_row(job(), {("team", "llm-worker-0", "GPU-0"): 0.0}, Thresholds())
    assert idle.waste == [WASTE_IDLE] and idle.idle_accelerators == pytest.approx(8.0)
    # One busy GPU is enough for the job not to be idle, as in the KubefitAcceleratorsIdle alert.
    gpus = {("team", "llm-worker-0", "GPU-0"): 0.0, ("team", "llm-worker-0", "GPU-1"): 0.2}
    assert job_row(job(), gpus, Thresholds()).waste == []

    small = job_row(job(estimated=10 * GIB), None, Thresholds())
    assert small.waste == [WASTE_OVERPROVISIONED]
    assert job_row(job(estimated=10 * GIB), None, Thresholds(overprovisioned_below=0.1)).waste == []

    partial = job_row(job(ready=1, desired=3, replicas=3, min_replicas=2), None, Thresholds())
    assert partial.waste == [WASTE_PARTIAL_GANG]
    assert (partial.accelerators_allocated, partial.accelerators_requested, partial.min_workers) == (4, 12, 2)
    # Bound workers that never start (an image that cannot be pulled) hold their devices all the same.
    unstarted = job_row(job(ready=0, desired=2, min_replicas=2, pods=2), None, Thresholds())
    assert unstarted.waste == [WASTE_PARTIAL_GANG] and unstarted.accelerators_allocated == 0
    assert job_row(job(ready=0, desired=0, min_replicas=2, pods=0), None, Thresholds()).waste == []


@pytest.mark.parametrize(
    ("elastic", "workers", "minimum"),
    [
        (False, {"replicas": 4, "minReplicas": 1, "maxReplicas": 4}, 4),  # a gang: all of it
        (True, {"replicas": 4, "minReplicas": 1, "maxReplicas": 4}, 3),  # its memory needs 3
    ],
)
def test_the_minimum_is_the_one_the_operator_exports_and_the_alert_reads(
    elastic: bool, workers: dict[str, int], minimum: int
) -> None:
    """The partial-gang alert compares running workers with the `min` workers series: a gang's whole size,
    an elastic job's floor raised to what its memory needs, not minReplicas as written."""
    from sizing_inputs import LLAMA3_8B, TEMPLATE

    from kubefit.api.validation import parse_spec
    from kubefit.decisions.workers import min_max_workers
    from kubefit.sizing.planner import plan

    spec = {
        "template": TEMPLATE, "model": LLAMA3_8B, "workers": workers, "elastic": {"enabled": elastic},
        "training": {"sharding": "fsdp", "sequenceLength": 2048},
        "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
    }  # fmt: skip
    sizing = plan(parse_spec(spec))
    assert sizing.min_workers == 3
    expected = min_max_workers(spec, sizing)
    assert expected is not None and expected[0] == minimum
    status = {"phase": "Scaling", "readyReplicas": 1, "desiredReplicas": 4,
              "sizing": sizing.model_dump(by_alias=True, mode="json")}  # fmt: skip
    row = job_row({"metadata": {"name": "llm", "namespace": "team"}, "spec": spec, "status": status}, None,
                  Thresholds())  # fmt: skip
    assert row.min_workers == minimum
    assert WASTE_PARTIAL_GANG in row.waste  # 1 running of at least 3


def test_a_job_holding_nothing_is_never_called_wasteful() -> None:
    queued = job(ready=0, desired=0, estimated=GIB, phase="Queued")
    row = job_row(queued, {}, Thresholds())
    assert row.accelerators_allocated == 0 and row.waste == [] and row.utilization is None


def test_utilisation_belongs_to_the_job_by_worker_name_and_namespace() -> None:
    gpus = {
        ("team", "llm-worker-0", "GPU-a"): 0.5,
        ("team", "llm-worker-12", "GPU-b"): 0.1,
        ("other", "llm-worker-1", "GPU-c"): 0.0,  # same name, another namespace
        ("team", "llm-worker-1-worker-0", "GPU-d"): 0.25,  # worker of a job named llm-worker-1
        ("team", "llm-eval", "GPU-e"): 0.0,
    }
    assert sorted(job_gpu_utilization("team", "llm", gpus)) == [0.1, 0.5]
    assert job_gpu_utilization("team", "llm-worker-1", gpus) == [0.25]
    assert job_gpu_utilization("team", "absent", gpus) == []


def test_table_and_json_show_every_job_sorted() -> None:
    rows = build_rows([job("b"), job("a", estimated=10 * GIB)], None, Thresholds())
    table = render_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "PHASE", "WORKERS", "ACCELERATORS", "MEMORY/DEVICE",
                                "UTIL", "IDLE", "WASTE"]  # fmt: skip
    assert lines[1].split()[:5] == ["team", "a", "Running", "2/2", "8/8"]
    assert "10.0/80.0 GiB (12%)" in lines[1] and "overprovisioned" in lines[1]
    assert lines[2].split()[1] == "b" and lines[2].rstrip().endswith("-")

    document = json.loads(render_json(rows))
    assert [item["name"] for item in document["jobs"]] == ["a", "b"]
    assert document["jobs"][0]["memory_estimated_bytes"] == 10 * GIB
    assert document["jobs"][0]["waste"] == [WASTE_OVERPROVISIONED]
    assert render_table([]) == "No TrainingJobs found.\n"


def test_thresholds_outside_zero_to_one_are_refused_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["top", "--idle-below", "5"])
    assert exit_info.value.code == 2
    assert "--idle-below" in capsys.readouterr().err


@pytest.mark.parametrize("namespace", ["BAD NS", "Team", "team_a", "a" * 64, ""])
def test_a_namespace_no_namespace_may_have_is_refused_naming_the_flag(
    capsys: pytest.CaptureFixture[str], namespace: str
) -> None:
    # It listed nothing and printed "No TrainingJobs found.", as for a namespace without jobs.
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["top", "-n", namespace])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--namespace" in err and f"{namespace!r} is not a namespace name" in err
    assert build_parser().parse_args(["top", "-n", "team-a1"]).namespace == "team-a1"


def test_idle_below_without_prometheus_is_refused_not_ignored() -> None:
    """Utilisation comes only from --prometheus: a threshold for it without one did nothing, exit 0 (kubefit
    size refuses --context without --cluster the same way). Nothing is read from the cluster first."""
    out, err = io.StringIO(), io.StringIO()
    assert run_top(build_parser().parse_args(["top", "-n", "team", "--idle-below", "0.1"]), out, err) == 2
    assert out.getvalue() == ""
    assert err.getvalue() == (
        "kubefit top: --idle-below: only used with --prometheus (utilisation comes from its DCGM series)\n"
    )


@pytest.mark.parametrize("kubeconfig", [None, "clusters: [\n", "{}"], ids=["missing", "malformed", "empty"])
@pytest.mark.parametrize("namespace", [["-n", "team"], [], ["-A"]], ids=["namespace", "current", "all"])
def test_a_kubeconfig_that_cannot_be_read_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kubeconfig: str | None, namespace: list[str]
) -> None:
    # A malformed one raised a YAML traceback; a missing one was told as a cluster that does not answer.
    if kubeconfig is not None:
        (tmp_path / "kubeconfig").write_text(kubeconfig)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    args = build_parser().parse_args(["top", *namespace])
    out, err = io.StringIO(), io.StringIO()
    assert run_top(args, out, err) == 1
    assert out.getvalue() == ""
    assert err.getvalue().startswith("kubefit top: cannot read the kubeconfig"), err.getvalue()
    assert len(err.getvalue().splitlines()) == 1


def test_a_cluster_that_refuses_connections_is_one_clear_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }  # fmt: skip
    (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    out, err = io.StringIO(), io.StringIO()
    assert run_top(build_parser().parse_args(["top", "-n", "team"]), out, err) == 1
    assert err.getvalue().startswith("kubefit top: cannot reach the cluster"), err.getvalue()
    assert len(err.getvalue().splitlines()) == 1 and "Traceback" not in err.getvalue()


def _unreachable_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kubeconfig whose server no one answers on, set as $KUBECONFIG (the API client is faked)."""
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                  "users": [{"name": "u", "user": {"token": "t"}}], "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                  "current-context": "x"}  # fmt: skip
    (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))


def test_top_retries_a_silent_cluster_once_like_size_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # urllib3's default of three retries made the bounded timeouts four times as long.
    from kubernetes import client

    retries: list[object] = []

    def listing_api(api_client: client.ApiClient) -> None:
        retries.append(api_client.configuration.retries)
        raise OSError("not sent")

    monkeypatch.setattr(client, "CustomObjectsApi", listing_api)
    _unreachable_kubeconfig(tmp_path, monkeypatch)
    assert run_top(build_parser().parse_args(["top", "-A"]), io.StringIO(), io.StringIO()) == 1
    assert retries == [1]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("<html>sign in</html>", "cannot list TrainingJobs: the answer is not a Kubernetes list"),
        (
            403,
            'cannot list TrainingJobs: HTTP 403 Forbidden: trainingjobs.kubefit.dev is forbidden: User "u" cannot list',
        ),
    ],
    ids=["login-page", "forbidden"],
)
def test_an_answer_that_is_no_list_or_a_refusal_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: object, expected: str
) -> None:
    # A proxy's login page (200, not JSON) ended in a traceback; a 403 lost the API server's message.
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    class Listing:
        def __init__(self, api_client: client.ApiClient) -> None:
            pass

        def list_cluster_custom_object(self, *args: Any, **kwargs: Any) -> object:
            if answer == 403:
                refusal = ApiException(status=403, reason="Forbidden")
                refusal.body = json.dumps(
                    {
                        "kind": "Status",
                        "message": 'trainingjobs.kubefit.dev is forbidden: User "u" cannot list',
                    }
                )
                raise refusal
            return answer

    monkeypatch.setattr(client, "CustomObjectsApi", Listing)
    _unreachable_kubeconfig(tmp_path, monkeypatch)
    err = io.StringIO()
    assert run_top(build_parser().parse_args(["top", "-A"]), io.StringIO(), err) == 1
    assert err.getvalue().startswith(f"kubefit top: {expected}"), err.getvalue()
    assert len(err.getvalue().splitlines()) == 1


class _Prometheus(http.server.BaseHTTPRequestHandler):
    answer: bytes = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b'{"status": "success", "data": {"result": [{"metric": {"namespace": "ml", "pod": "a-worker-0", "UUID": "G"}, "value": [1, "NaN"]}]}}', {}),
        (b"[1, 2]", "query failed"),
        (b'{"status": "success", "data": {"result": [{"metric": {"namespace": "ml", "pod": "p"}}]}}', "not a Prometheus"),
    ],
    ids=["nan-sample", "not-an-object", "sample-without-value"],
)  # fmt: skip
def test_odd_prometheus_answers_are_dropped_or_one_clear_error(answer: bytes, expected: object) -> None:
    handler = type("Answer", (_Prometheus,), {"answer": answer})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        if isinstance(expected, dict):
            assert prometheus_vector(url, "up") == expected  # a NaN sample is no utilisation
        else:
            with pytest.raises(TopError, match=str(expected)):
                prometheus_vector(url, "up")
    finally:
        server.shutdown()
        server.server_close()


def test_a_gang_finishing_is_not_a_partial_gang_as_in_the_alert() -> None:
    """KubefitPartialGangHoldingAccelerators counts running and succeeded workers; so does top."""
    finishing = job(ready=2, desired=4, replicas=4)
    finishing["status"]["succeededWorkers"] = "0-1"
    assert WASTE_PARTIAL_GANG not in job_row(finishing, None, Thresholds()).waste
    finishing["status"]["succeededWorkers"] = "0"  # 2 running + 1 done of a gang of 4: short
    assert WASTE_PARTIAL_GANG in job_row(finishing, None, Thresholds()).waste


def test_a_reader_that_leaves_ends_top_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kubefit top | head`: a closed pipe is exit 0 with no traceback, as `kubefit size`."""
    import kubefit.cli.top as top

    monkeypatch.setattr(top, "list_jobs", lambda namespace, context: [job()])
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as out:
        assert run_top(build_parser().parse_args(["top", "-n", "team"]), out, io.StringIO()) == 0


class _FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("output", ["table", "json"])
def test_output_that_cannot_be_written_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, output: str
) -> None:
    """`kubefit top > /dev/full`: one line and exit 1, as `kubefit size`; it was a traceback."""
    import kubefit.cli.top as top

    monkeypatch.setattr(top, "list_jobs", lambda namespace, context: [job()])
    err = io.StringIO()
    assert run_top(build_parser().parse_args(["top", "-n", "team", "-o", output]), _FullDisk(), err) == 1
    assert err.getvalue() == "kubefit top: cannot write the output: No space left on device\n"


def test_a_context_named_needs_no_current_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # kubectl --context needs no current-context in the kubeconfig; `kubefit top --context` failed on it
    # ("cannot read the kubeconfig: ... Expected key current-context").
    paths: list[str] = []

    class Jobs(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            paths.append(self.path)
            body = json.dumps({"items": [job(namespace="team-ml")]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Jobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        kubeconfig = {"apiVersion": "v1", "kind": "Config",
                      "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
                      "users": [{"name": "u", "user": {"token": "t"}}],
                      "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "team-ml"}}]}  # fmt: skip
        (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        out, err = io.StringIO(), io.StringIO()
        assert run_top(build_parser().parse_args(["top", "--context", "x"]), out, err) == 0, err.getvalue()
        assert paths and "/namespaces/team-ml/trainingjobs" in paths[0]
        assert "llm" in out.getvalue()
        # Without --context the current one is needed: none is set, as kubectl says too.
        err = io.StringIO()
        assert run_top(build_parser().parse_args(["top"]), io.StringIO(), err) == 1
        assert (
            err.getvalue().startswith("kubefit top: cannot read the kubeconfig")
            and "current-context" in err.getvalue()
        )
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("phase", ["Failed", "Succeeded"])
def test_a_finished_job_whose_pods_are_kept_is_no_partial_gang(phase: str) -> None:
    """status.replicas still counts a finished job's pods kept for their logs; they hold no device, and the
    operator exports none requested, so the alert stays silent: top called them partial-gang at 0/0."""
    finished = job(ready=0, desired=0, phase=phase, pods=2)
    assert WASTE_PARTIAL_GANG not in job_row(finished, None, Thresholds()).waste
    assert (
        WASTE_PARTIAL_GANG
        in job_row(job(ready=0, desired=2, phase="Pending", pods=2), None, Thresholds()).waste
    )


def test_a_job_whose_spec_is_invalid_is_no_partial_gang_as_the_metrics_export_no_minimum() -> None:
    short = job(ready=1, desired=2, pods=2)
    short["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": "InvalidSpec"}]
    assert WASTE_PARTIAL_GANG not in job_row(short, None, Thresholds()).waste
