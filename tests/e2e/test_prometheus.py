"""The chart's alert rules and dashboard on a real Prometheus that scrapes the operator and the sandbox's
GPU telemetry (issue 9).

Prometheus (Debian's /usr/bin/prometheus) runs on loopback in a temp dir, scraping every 2 s:
- the operator of this module (`kubefit run`, its /metrics), with honor_labels as the chart's
  ServiceMonitor sets it (metrics.serviceMonitor.honorLabels, true);
- the node agent's dcgm-exporter-shaped telemetry (docs/sandbox.md, "GPU telemetry"), the way a
  ServiceMonitor with honorLabels false scrapes a dcgm-exporter pod: the target carries the exporter's
  own pod and namespace, so the workload's labels arrive as exported_pod / exported_namespace, the
  renaming the idle rule and the dashboard must undo.
Its rules are the chart's PrometheusRule rendered by `helm template` with short `for:` values, set through
metrics.prometheusRule.rules.<Alert>.for as a user sets them. Waste is staged with the sandbox's
annotations (sandbox.kubefit.dev/gpu-utilization).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_support import (
    FAST_SHUTDOWN,
    Kube,
    OperatorProcess,
    PoolNodes,
    PrivatePool,
    create_private_pool,
    job_manifest,
    remove_private_pool,
    running_names,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_support import (
    Prometheus,
    PrometheusError,
    ScrapeJob,
    alert_rules,
    dashboard_queries,
    finite_values,
    job_alerts,
    render_rule_groups,
)

from kubefit_sandbox.controlplane import Sandbox
from kubefit_sandbox.kubeclient import core_api, new_api_client
from kubefit_sandbox.nodes import remove_node
from kubefit_sandbox.telemetry import MEMORY_USED_ANNOTATION, UTILIZATION_ANNOTATION, read_telemetry_url

pytestmark = pytest.mark.e2e

KUBEFIT = Path(sys.executable).with_name("kubefit")
FOR = "15s"  # every alert's `for:`, through the chart's values
FOR_SECONDS = 15
RULE_VALUES: dict[str, dict[str, Any]] = {
    "KubefitAcceleratorMemoryOverprovisioned": {"for": FOR, "threshold": 0.5},
    "KubefitPartialGangHoldingAccelerators": {"for": FOR},
    "KubefitJobStuckPending": {"for": "30s"},
    "KubefitAcceleratorsIdle": {"for": FOR, "threshold": 0.01},
    "KubefitAcceleratorTelemetryMissing": {"for": FOR},
    "KubefitReconcileErrors": {"for": FOR, "threshold": 0.1},
    "KubefitJobReconcileFailing": {"for": FOR},
    "KubefitOperatorAbsent": {"for": FOR},
}
VALUES = {"metrics": {"prometheusRule": {"enabled": True, "rules": RULE_VALUES}}}
DCGM_EXPORTER_TARGET = {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-sandbox"}

# Sizes against the estimator (kubefit size): 2B parameters need about 64% of an H100's memory per device,
# 500M about 17%; the over-provisioning threshold is 50%.
FITTING_MODEL = {"parameters": "2B"}
SMALL_MODEL = {"parameters": "500M"}
ONE_H100 = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1}
TWO_FIXED = {"replicas": 2, "minReplicas": 2, "maxReplicas": 2}

RUNNING_TIMEOUT_S = 300.0  # a loaded 2-core machine, several e2e runs at once
ALERT_TIMEOUT_S = 240.0  # for: 15 s, plus scrapes, evaluations and the operator's reconciles under load
SETTLE_S = 5.0  # several rule evaluations (1 s apart) after Prometheus has scraped a change


def staged_job(
    name: str, namespace: str, pool: PrivatePool, utilization: str | None = None, **spec: Any
) -> dict[str, Any]:
    """A 2-worker job of one H100 each that fits its devices well, busy unless `utilization` says otherwise."""
    annotations = dict(FAST_SHUTDOWN)
    if utilization is not None:
        annotations[UTILIZATION_ANNOTATION] = utilization
    fields: dict[str, Any] = {"model": FITTING_MODEL, "resources": ONE_H100, "workers": TWO_FIXED, **spec}
    manifest = job_manifest(name, namespace, pool=pool, **fields)
    manifest["spec"]["template"].setdefault("metadata", {})["annotations"] = annotations
    return manifest


def wait_running(kube: Kube, namespace: str, name: str, workers: int) -> None:
    wait_for(
        f"{namespace}/{name}: {workers} running workers",
        lambda: len(running_names(kube.workers(namespace, name))) == workers,
        RUNNING_TIMEOUT_S,
        interval=1.0,
    )


def wait_alert(prometheus: Prometheus, alert: str, namespace: str, name: str) -> set[str]:
    """Waits until `alert` fires for the job; returns every alert firing for it then."""

    def firing() -> set[str] | None:
        found = job_alerts(prometheus.alerts(), namespace, name)
        return found if alert in found else None

    return wait_for(f"{alert} firing for {namespace}/{name}", firing, ALERT_TIMEOUT_S, interval=1.0)


def seen_by_prometheus(prometheus: Prometheus, query: str) -> Callable[[], bool]:
    return lambda: bool(prometheus.query(query))


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prometheus(
    sandbox: Sandbox, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Prometheus scraping this module's operator and the sandbox's GPU telemetry, with the chart's rules."""
    directory = tmp_path_factory.mktemp("prometheus")
    telemetry_url = read_telemetry_url(sandbox.state_dir)
    assert telemetry_url, f"the node agent wrote no telemetry-url in {sandbox.state_dir}"
    jobs = [
        ScrapeJob("kubefit", operator.metrics_url, honor_labels=True),
        ScrapeJob("dcgm-exporter", telemetry_url, honor_labels=False, target_labels=DCGM_EXPORTER_TARGET),
    ]
    server = Prometheus(directory, jobs, render_rule_groups(VALUES, directory))
    server.start()
    try:
        wait_for(
            "both scrape targets up",
            lambda: all(server.targets_up().values()) and len(server.targets_up()) == 2,
            120,
            interval=1.0,
        )
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def staged(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess, namespace_prefix: str, prometheus: Prometheus
) -> Iterator[tuple[str, dict[str, str]]]:
    """One namespace with three running jobs on a pool of their own: a healthy one, an over-provisioned one
    (500M parameters on H100s) and an idle one (its GPUs 0% busy). Yields (namespace, {role: job name})."""
    namespace = f"{namespace_prefix}-{uuid.uuid4().hex[:6]}"
    kube.run("create", "namespace", namespace)
    wait_for(
        "the default ServiceAccount",
        lambda: kube.run("get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0,
    )
    pool = create_private_pool(sandbox, PoolNodes("nvidia-h100-80gb", nodes=1, per_node=8))
    jobs = {"healthy": "healthy", "overprovisioned": "roomy", "idle": "idle"}
    try:
        kube.apply(staged_job(jobs["healthy"], namespace, pool))
        kube.apply(staged_job(jobs["overprovisioned"], namespace, pool, model=SMALL_MODEL))
        kube.apply(staged_job(jobs["idle"], namespace, pool, utilization="0"))
        for name in jobs.values():
            wait_running(kube, namespace, name, 2)
        # Prometheus sees every worker running; then a few evaluations resolve what a slow start (one worker
        # running before the other, a wait in the queue) may have fired, so the tests read steady alerts.
        all_running = (
            f'count(kubefit_trainingjob_workers{{namespace="{namespace}",state="running"}} == 2) == 3'
        )
        seen = seen_by_prometheus(prometheus, all_running)
        wait_for("Prometheus to see every staged worker running", seen, 120, interval=1.0)
        time.sleep(SETTLE_S)
        yield namespace, jobs
    finally:
        kube.run("delete", "trainingjobs", "--all", "-n", namespace, "--wait=false", check=False)
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)
        remove_private_pool(sandbox, pool)


# ---------------------------------------------------------------------------------------------- tests


def test_the_chart_renders_every_alert_with_the_for_values_set_and_prometheus_evaluates_them(
    prometheus: Prometheus,
) -> None:
    rules = alert_rules(prometheus.rule_groups)
    assert set(rules) == set(RULE_VALUES)
    assert {name: rule["for"] for name, rule in rules.items()} == {
        name: values["for"] for name, values in RULE_VALUES.items()
    }
    assert all(rule["labels"]["severity"] and rule["annotations"]["summary"] for rule in rules.values())

    def evaluated() -> dict[str, str] | None:
        found = prometheus.rule_health()
        return found if all(state != "unknown" for state in found.values()) else None

    health = wait_for("every rule evaluated", evaluated, 120, interval=1.0)
    assert health == {name: "ok" for name in RULE_VALUES}


def test_operator_absent_fires_only_where_no_operator_is_scraped(
    sandbox: Sandbox, prometheus: Prometheus, tmp_path: Path
) -> None:
    telemetry_url = read_telemetry_url(sandbox.state_dir)
    assert telemetry_url
    # The same rules in a second Prometheus that scrapes the GPU telemetry but no operator.
    jobs = [ScrapeJob("dcgm-exporter", telemetry_url, honor_labels=False, target_labels=DCGM_EXPORTER_TARGET)]
    without_operator = Prometheus(tmp_path, jobs, render_rule_groups(VALUES, tmp_path))
    without_operator.start()
    try:

        def firing() -> bool:
            return any(
                alert["labels"]["alertname"] == "KubefitOperatorAbsent" and alert["state"] == "firing"
                for alert in without_operator.alerts()
            )

        wait_for("KubefitOperatorAbsent firing without an operator", firing, ALERT_TIMEOUT_S, interval=1.0)
    finally:
        without_operator.stop()
    # The module's Prometheus scrapes the operator: its rule was evaluated (the test above) and is quiet.
    assert not [
        alert for alert in prometheus.alerts() if alert["labels"]["alertname"] == "KubefitOperatorAbsent"
    ]


def test_overprovisioned_and_idle_jobs_fire_their_alerts_and_a_healthy_job_fires_nothing(
    prometheus: Prometheus, staged: tuple[str, dict[str, str]]
) -> None:
    namespace, jobs = staged
    overprovisioned = wait_alert(
        prometheus, "KubefitAcceleratorMemoryOverprovisioned", namespace, jobs["overprovisioned"]
    )
    idle = wait_alert(prometheus, "KubefitAcceleratorsIdle", namespace, jobs["idle"])
    assert overprovisioned == {"KubefitAcceleratorMemoryOverprovisioned"}
    assert idle == {"KubefitAcceleratorsIdle"}
    firing = {
        alert["labels"]["alertname"]: alert for alert in prometheus.alerts() if alert["state"] == "firing"
    }
    assert f"{namespace}/{jobs['idle']}" in firing["KubefitAcceleratorsIdle"]["annotations"]["summary"]
    assert "KubefitAcceleratorTelemetryMissing" not in firing  # the sandbox's DCGM series are there

    # Healthy: busy GPUs (the telemetry's default), 64% of each device's memory, every worker running. A
    # rule that held for it would fire within any window longer than its `for:`; none does.
    healthy = seen_by_prometheus(
        prometheus,
        f'kubefit_trainingjob_workers{{namespace="{namespace}",name="{jobs["healthy"]}",state="running"}} == 2',
    )
    wait_for("Prometheus to see the healthy job's 2 running workers", healthy, 120, interval=1.0)
    time.sleep(SETTLE_S)
    deadline = time.monotonic() + 3 * FOR_SECONDS + 10
    while time.monotonic() < deadline:
        assert job_alerts(prometheus.alerts(), namespace, jobs["healthy"]) == set()
        time.sleep(1.0)


def test_every_dashboard_query_parses_and_returns_data(
    prometheus: Prometheus, staged: tuple[str, dict[str, str]]
) -> None:
    namespace, jobs = staged
    idle_seen = seen_by_prometheus(
        prometheus,
        f'DCGM_FI_DEV_GPU_UTIL{{exported_namespace="{namespace}",exported_pod="{jobs["idle"]}-worker-0"}} == 0',
    )
    wait_for("the idle job's GPUs in Prometheus", idle_seen, 120, interval=1.0)
    queries = dashboard_queries()
    assert len(queries) >= 10
    missing = []
    for title, query in queries:
        try:
            values = finite_values(prometheus.query(query))
        except PrometheusError as error:
            pytest.fail(f"panel {title!r}: {query}\n{error}", pytrace=False)
        if not values:
            missing.append(f"{title}: {query}")
    assert missing == []


def test_kubefit_top_reads_utilisation_from_prometheus_and_names_the_waste(
    sandbox: Sandbox, prometheus: Prometheus, staged: tuple[str, dict[str, str]]
) -> None:
    namespace, jobs = staged
    for name in jobs.values():
        gpus_seen = seen_by_prometheus(
            prometheus,
            f'count(DCGM_FI_DEV_GPU_UTIL{{exported_namespace="{namespace}",exported_pod=~"{name}-worker-.*"}}) == 2',
        )
        wait_for(f"both GPUs of {name} in Prometheus", gpus_seen, 120, interval=1.0)
    command = [str(KUBEFIT), "top", "-n", namespace, "--prometheus", prometheus.url, "-o", "json"]
    env = {"KUBECONFIG": str(sandbox.kubeconfig_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["jobs"]}

    table = subprocess.run(command[:-2], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert table.returncode == 0, table.stderr
    print(f"\n{table.stdout}")
    idle_line = next(line for line in table.stdout.splitlines() if line.split()[1] == jobs["idle"])
    assert idle_line.split()[-3:] == ["0%", "2.0", "idle"]

    healthy, roomy, idle = (rows[jobs[role]] for role in ("healthy", "overprovisioned", "idle"))
    assert healthy["waste"] == [] and healthy["utilization"] == pytest.approx(0.9)
    assert roomy["waste"] == ["overprovisioned"] and roomy["utilization"] == pytest.approx(0.9)
    assert idle["waste"] == ["idle"] and idle["utilization"] == 0.0
    assert idle["idle_accelerators"] == pytest.approx(2.0) and healthy["idle_accelerators"] == pytest.approx(
        0.2
    )


def test_deleting_a_job_removes_its_series(
    prometheus: Prometheus, kube: Kube, namespace: str, add_pool: Callable[..., PrivatePool]
) -> None:
    pool = add_pool(PoolNodes("nvidia-h100-80gb", nodes=1, per_node=8))
    kube.apply(staged_job("short", namespace, pool))
    wait_running(kube, namespace, "short", 2)
    job_series = f'{{__name__=~"kubefit_.+",namespace="{namespace}",name="short"}}'
    gpu_series = f'{{__name__=~"DCGM_.+",exported_namespace="{namespace}"}}'
    wait_for(
        "the job's series in Prometheus",
        seen_by_prometheus(prometheus, f"count({job_series}) >= 6"),
        120,
        interval=1.0,
    )
    wait_for(
        "its GPUs' series in Prometheus",
        seen_by_prometheus(prometheus, f"count({gpu_series}) == 8"),
        120,
        interval=1.0,
    )
    names = {item["metric"]["__name__"] for item in prometheus.query(job_series)}
    assert {
        "kubefit_trainingjob_info",
        "kubefit_trainingjob_workers",
        "kubefit_trainingjob_accelerators",
    } <= names

    kube.run("delete", "trainingjob", "short", "-n", namespace, "--wait=true", "--timeout=180s")
    wait_for(
        "the job's series gone from Prometheus", lambda: prometheus.query(job_series) == [], 120, interval=1.0
    )
    wait_for("its GPUs' series gone", lambda: prometheus.query(gpu_series) == [], 120, interval=1.0)


def test_a_partial_gang_holding_accelerators_fires_its_alert(
    prometheus: Prometheus, sandbox: Sandbox, kube: Kube, namespace: str, add_pool: Callable[..., PrivatePool]
) -> None:
    # A gang of 2 workers of 8 H100s each, one per node. Admission starts it only when both fit; then the
    # node under worker 1 goes away (its pods with it). The group restarts whole: one of its new workers
    # finds the node left and holds its 8 GPUs, the other has nowhere to run. The gang timeout is long:
    # the job does not give up during the test.
    pool = add_pool(PoolNodes("nvidia-h100-80gb", nodes=2, per_node=8))
    gang = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8}
    kube.apply(staged_job("gang", namespace, pool, resources=gang, scheduling={"gangTimeoutSeconds": 3600}))
    wait_running(kube, namespace, "gang", 2)
    worker_1 = next(
        pod for pod in kube.workers(namespace, "gang") if pod["metadata"]["name"] == "gang-worker-1"
    )
    remove_node(core_api(new_api_client(sandbox.kubeconfig_path)), worker_1["spec"]["nodeName"])

    firing = wait_alert(prometheus, "KubefitPartialGangHoldingAccelerators", namespace, "gang")
    assert "KubefitAcceleratorsIdle" not in firing
    running = running_names(kube.workers(namespace, "gang"))
    assert len(running) == 1, running
    held = prometheus.query(
        f'kubefit_trainingjob_accelerators{{namespace="{namespace}",name="gang",state="allocated"}}'
    )
    assert finite_values(held) == [8.0]


# ---------------------------------------------------------------------------------------------- the telemetry


def gpus_of(url: str, node: str) -> dict[str, dict[str, tuple[float, dict[str, str]]]]:
    """GPU index -> metric -> (value, labels) of one node, from a scrape of the sandbox's telemetry."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, dict[str, tuple[float, dict[str, str]]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels["Hostname"] == node:
                found.setdefault(sample.labels["gpu"], {})[sample.name] = (sample.value, sample.labels)
    return found


def gpu_pod(
    name: str, namespace: str, pool: PrivatePool, gpus: int, annotations: dict[str, str]
) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return pool.pin({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": {**FAST_SHUTDOWN, **annotations}},
        "spec": {"containers": [{"name": "main", "image": "ghcr.io/acme/train:1", "resources": resources}]},
    })  # fmt: skip


def test_the_sandbox_names_its_telemetry_address_and_serves_each_pods_gpus(
    sandbox: Sandbox, kube: Kube, namespace: str, add_pool: Callable[..., PrivatePool]
) -> None:
    command = [
        str(Path(sys.executable).with_name("kubefit-sandbox")),
        "--state-dir",
        str(sandbox.state_dir),
        "telemetry",
    ]
    printed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    url = printed.stdout.strip()
    assert url == read_telemetry_url(sandbox.state_dir) and url.startswith("http://127.0.0.1:")

    pool = add_pool(PoolNodes("nvidia-h100-80gb", nodes=1, per_node=8))
    node = pool.nodes[0]
    # The node agent learns of the node through its own watch: a moment after the node is there.
    wait_for(
        "the node's 8 GPUs in the telemetry",
        lambda: sorted(gpus_of(url, node), key=int) == [str(index) for index in range(8)],
    )
    kube.apply(
        gpu_pod(
            "staged", namespace, pool, 2, {UTILIZATION_ANNOTATION: "0.25", MEMORY_USED_ANNOTATION: "10Gi"}
        )
    )
    kube.apply(gpu_pod("mistyped", namespace, pool, 1, {UTILIZATION_ANNOTATION: "lots"}))

    def held() -> dict[str, str] | None:
        holders = {
            gpu: metrics["DCGM_FI_DEV_GPU_UTIL"][1].get("pod", "")
            for gpu, metrics in gpus_of(url, node).items()
        }
        return holders if sorted(holders.values()).count("") == 5 else None

    holders = wait_for("3 GPUs held in the telemetry", held, 120, interval=1.0)
    staged = [gpu for gpu, pod in holders.items() if pod == "staged"]
    mistyped = [gpu for gpu, pod in holders.items() if pod == "mistyped"]
    assert len(staged) == 2 and len(mistyped) == 1
    gpus = gpus_of(url, node)
    labels = gpus[staged[0]]["DCGM_FI_DEV_GPU_UTIL"][1]
    assert (labels["namespace"], labels["container"], labels["modelName"]) == (
        namespace,
        "main",
        "NVIDIA H100 80GB HBM3",
    )
    assert gpus[staged[0]]["DCGM_FI_DEV_GPU_UTIL"][0] == 25
    assert gpus[staged[1]]["DCGM_FI_DEV_FB_USED"][0] == 10 * 1024
    # The default once it runs (0 while bound and not Running yet), the bad value reported:
    wait_for(
        "the mistyped pod's GPU at the default",
        lambda: gpus_of(url, node)[mistyped[0]]["DCGM_FI_DEV_GPU_UTIL"][0] == 90,
        60,
        interval=0.5,
    )

    def warning() -> list[dict[str, Any]] | None:
        events = kube.items("events", namespace)
        return [event for event in events if event["reason"] == "InvalidSandboxAnnotation"] or None

    (event, *_) = wait_for("an InvalidSandboxAnnotation event", warning, 120, interval=1.0)
    assert event["involvedObject"]["name"] == "mistyped" and UTILIZATION_ANNOTATION in event["message"]

    kube.run("delete", "pod", "staged", "-n", namespace, "--wait=true", "--timeout=120s")
    wait_for(
        "the deleted pod's GPUs free",
        lambda: (
            "staged" not in {m["DCGM_FI_DEV_GPU_UTIL"][1].get("pod") for m in gpus_of(url, node).values()}
        ),
        60,
        interval=1.0,
    )


def test_a_process_pod_reports_the_default_load_on_its_gpus_until_it_exits(
    sandbox: Sandbox, kube: Kube, namespace: str, add_pool: Callable[..., PrivatePool]
) -> None:
    # processes: true runs the pod's command as a local process (which uses no GPU): the default applies.
    url = read_telemetry_url(sandbox.state_dir)
    assert url
    pool = add_pool(PoolNodes("nvidia-l4", nodes=1, per_node=4, processes=True))
    node = pool.nodes[0]
    pod = gpu_pod("sleeper", namespace, pool, 2, {})
    pod["spec"]["containers"][0]["command"] = ["sleep", "20"]
    pod["spec"]["restartPolicy"] = "Never"
    kube.apply(pod)

    def held() -> list[float] | None:
        gpus = gpus_of(url, node).values()
        found = [
            m["DCGM_FI_DEV_GPU_UTIL"][0] for m in gpus if m["DCGM_FI_DEV_GPU_UTIL"][1].get("pod") == "sleeper"
        ]
        return found or None

    # Idle (0) while the pod is bound but not Running yet, then the default once its process runs.
    wait_for(
        "the process pod's GPUs busy in the telemetry", lambda: held() == [90.0, 90.0], 120, interval=0.5
    )
    labels = next(iter(gpus_of(url, node).values()))["DCGM_FI_DEV_GPU_UTIL"][1]
    assert labels["modelName"] == "NVIDIA L4"
    wait_for(
        "the pod Succeeded",
        lambda: (kube.get("pod", "sleeper", namespace) or {}).get("status", {}).get("phase") == "Succeeded",
        120,
    )
    wait_for("its GPUs free once it ended", lambda: held() is None, 60, interval=0.5)
