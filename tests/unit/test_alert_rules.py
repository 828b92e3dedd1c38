"""The alert rules and the Grafana dashboard: promtool checks and unit-tests the rule file as it is and as
the chart renders it with overridden values, and parses every dashboard query.

promtool comes with Debian's `prometheus` package, which `make system` installs (scripts/setup-system.sh);
without it these tests fail, saying so, rather than skip. helm is looked up as in test_chart.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from kubefit.api.conditions import Phase
from kubefit.cli import top
from kubefit.metrics.operator_metrics import OperatorMetrics
from kubefit_sandbox.binaries import helm_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubefit"
RULE_FILE = CHART / "files" / "kubefit-alerts.rules.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "kubefit.json"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool"
DEFAULT_TESTS = PROMTOOL_TESTS / "kubefit-alerts.test.yaml"
OVERRIDDEN_TESTS = PROMTOOL_TESTS / "kubefit-alerts-overridden.test.yaml"
PER_RELEASE_TESTS = PROMTOOL_TESTS / "kubefit-alerts-per-release.test.yaml"
ALERTS_DOC = REPO / "docs" / "alerts.md"
MONITORING_API = "monitoring.coreos.com/v1"
RUNBOOK_BASE = "https://github.com/kubefit/kubefit/blob/main/docs/alerts.md#"
# The number the chart replaces with metrics.prometheusRule.rules.<alert>.threshold.
THRESHOLD_MARK = re.compile(r"([0-9][0-9.e+-]*)( *# threshold)")
# dcgm-exporter's utilisation gauges (NVIDIA/dcgm-exporter, etc/default-counters.csv and dcp-metrics-included.csv).
DCGM_UTILISATION = {"DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_DEV_GPU_UTIL"}

# What tests/unit/promtool/kubefit-alerts-overridden.test.yaml expects, set the ways users set values.
OVERRIDDEN_VALUES: dict[str, Any] = {
    "metrics": {
        "prometheusRule": {
            "enabled": True,
            "additionalLabels": {"release": "prometheus"},
            "rules": {
                "KubefitAcceleratorMemoryOverprovisioned": {"for": "2m", "threshold": 0.3},
                "KubefitPartialGangHoldingAccelerators": {"enabled": False},
                "KubefitJobStuckPending": {"for": "3m"},
                "KubefitAcceleratorsIdle": {"for": "1m"},
                "KubefitAcceleratorTelemetryMissing": {"for": "1m"},
                "KubefitReconcileErrors": {"for": "1m", "threshold": 0.5},
                "KubefitJobReconcileFailing": {"for": "3m"},
                "KubefitOperatorAbsent": {"for": "2m"},
            },
        }
    }
}
# `--set` hands helm a string for a decimal: the chart takes it as the number.
OVERRIDDEN_SET = ["--set", "metrics.prometheusRule.rules.KubefitAcceleratorsIdle.threshold=0.2"]


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: `make system` installs Debian's prometheus package, which has it"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=25, cwd=cwd)


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _alerts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _file_alerts() -> list[dict[str, Any]]:
    return _alerts(_load(RULE_FILE)["groups"])


def _values_rules() -> dict[str, dict[str, Any]]:
    rules: dict[str, dict[str, Any]] = _load(CHART / "values.yaml")["metrics"]["prometheusRule"]["rules"]
    return rules


def _render_prometheus_rules(tmp_path: Path, values: dict[str, Any], *args: str) -> list[dict[str, Any]]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    command = [str(helm_path()), "template", "kf", str(CHART), "--values", str(values_file), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=25)
    assert result.returncode == 0, result.stderr
    objects = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    return [obj for obj in objects if obj["kind"] == "PrometheusRule"]


def _rendered_groups(tmp_path: Path, values: dict[str, Any], *args: str) -> list[dict[str, Any]]:
    (rule,) = _render_prometheus_rules(tmp_path, values, "--api-versions", MONITORING_API, *args)
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def _exported_metric_names() -> set[str]:
    """Every series name the operator's registry can expose (names of counters and histograms expanded)."""
    suffixes = {"counter": ["_total"], "histogram": ["", "_bucket", "_count", "_sum"], "gauge": [""]}
    return {
        family.name + suffix
        for family in OperatorMetrics().registry.collect()
        for suffix in suffixes[family.type]
    }


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b(?:kubefit|DCGM)_[A-Za-z0-9_]+\b", text))


# ------------------------------------------------------------------ the rule file as it is


def test_rule_file_passes_promtool_check() -> None:
    result = _promtool("check", "rules", str(RULE_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_file_alerts())} rules found" in result.stdout


def test_rule_file_passes_its_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", DEFAULT_TESTS.name, cwd=PROMTOOL_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _minutes(duration: str) -> float:
    """A Prometheus duration as promtool's tests write them (1h30m, 2m, 30s), in minutes."""
    units = {"h": 60.0, "m": 1.0, "s": 1 / 60}
    return sum(float(number) * units[unit] for number, unit in re.findall(r"(\d+)([hms])", duration))


def _cases(test_file: Path, durations: dict[str, str] | None = None) -> dict[str, dict[str, int]]:
    """Per alert, how many evaluations expect it firing and how many expect it quiet. With `durations`, a
    quiet case counts only once the alert's `for:` has passed: before it, even an always-true rule is
    quiet."""
    counts: dict[str, dict[str, int]] = {}
    for test in _load(test_file)["tests"]:
        for case in test.get("alert_rule_test", []):
            name = case["alertname"]
            counted = counts.setdefault(name, {"firing": 0, "quiet": 0})
            if case["exp_alerts"]:
                counted["firing"] += 1
            elif durations is None or _minutes(str(case["eval_time"])) > _minutes(durations[name]):
                counted["quiet"] += 1
    return counts


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    names = [alert["alert"] for alert in _file_alerts()]
    assert len(names) == len(set(names)) == 8
    default_for = {alert["alert"]: str(alert.get("for", "0m")) for alert in _file_alerts()}
    overridden_for = {
        name: str(OVERRIDDEN_VALUES["metrics"]["prometheusRule"]["rules"][name].get("for", default_for[name]))
        for name in names
    }
    # The default file's firing cases list every alert exactly, with jobs that must stay quiet in the
    # same inputs; the overridden file's quiet cases must come after the overridden `for:`.
    default_cases = _cases(DEFAULT_TESTS)
    overridden_cases = _cases(OVERRIDDEN_TESTS, overridden_for)
    disabled = {
        name for name, settings in OVERRIDDEN_VALUES["metrics"]["prometheusRule"]["rules"].items()
        if settings.get("enabled") is False
    }  # fmt: skip
    for name in names:
        assert default_cases[name]["firing"] >= 1 and default_cases[name]["quiet"] >= 1, name
        assert overridden_cases[name]["quiet"] >= 1, name
        assert overridden_cases[name]["firing"] >= (0 if name in disabled else 1), name


def _firing_labels(test_file: Path) -> dict[str, set[str]]:
    """Per alert, the label names its expected firing alerts carry."""
    labels: dict[str, set[str]] = {}
    for test in _load(test_file)["tests"]:
        for case in test.get("alert_rule_test", []):
            for expected in case["exp_alerts"]:
                labels.setdefault(case["alertname"], set()).update(expected["exp_labels"])
    return labels


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    anchors = {
        _github_anchor(line.lstrip("#"))
        for line in ALERTS_DOC.read_text().splitlines()
        if line.startswith("#")
    }  # fmt: skip
    for alert in _file_alerts():
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, alert["alert"]
        annotations = alert["annotations"]
        assert annotations["summary"], alert["alert"]
        # the numbers, and for an alert per job, the job (an alert on a missing series has no numbers)
        if not alert["expr"].lstrip().startswith("absent("):
            assert "{{ $value" in annotations["description"] or "| query" in annotations["description"]
        if {"namespace", "name"} <= _firing_labels(DEFAULT_TESTS)[alert["alert"]]:
            assert "{{ $labels.namespace }}/{{ $labels.name }}" in annotations["description"], alert["alert"]
        assert annotations["runbook_url"] == RUNBOOK_BASE + alert["alert"].lower()
        assert alert["alert"].lower() in anchors, f"docs/alerts.md has no section {alert['alert']}"


def test_values_defaults_are_the_numbers_of_the_rule_file() -> None:
    values = _values_rules()
    assert list(values) == [alert["alert"] for alert in _file_alerts()]
    for alert in _file_alerts():
        settings = values[alert["alert"]]
        assert settings["enabled"] is True and settings["for"] == alert["for"], alert["alert"]
        marks = THRESHOLD_MARK.findall(alert["expr"])
        assert len(marks) == (1 if "threshold" in settings else 0), alert["alert"]
        if marks:
            assert float(marks[0][0]) == settings["threshold"], alert["alert"]


def test_kubefit_top_names_waste_by_the_alerts_default_thresholds() -> None:
    values = _values_rules()
    assert top.OVERPROVISIONED_BELOW == values["KubefitAcceleratorMemoryOverprovisioned"]["threshold"]
    assert top.IDLE_BELOW == values["KubefitAcceleratorsIdle"]["threshold"]


def test_every_metric_the_rules_and_dashboard_use_is_exported() -> None:
    used = _metric_names(RULE_FILE.read_text()) | _metric_names(DASHBOARD.read_text())
    kubefit_names = {name for name in used if name.startswith("kubefit_")}
    assert kubefit_names - _exported_metric_names() == set()
    assert {name for name in used if name.startswith("DCGM_")} == DCGM_UTILISATION
    assert len(kubefit_names) >= 8  # the check sees the names, not nothing


# ------------------------------------------------------------------ as the chart renders them


def test_chart_renders_the_rule_file_unchanged_with_default_values(tmp_path: Path) -> None:
    groups = _rendered_groups(tmp_path, {"metrics": {"prometheusRule": {"enabled": True}}})
    assert groups == _load(RULE_FILE)["groups"]


def test_chart_rules_with_overridden_values_pass_promtool(tmp_path: Path) -> None:
    groups = _rendered_groups(tmp_path, OVERRIDDEN_VALUES, *OVERRIDDEN_SET)
    rendered = {alert["alert"]: alert for alert in _alerts(groups)}
    assert "KubefitPartialGangHoldingAccelerators" not in rendered
    assert rendered["KubefitAcceleratorsIdle"]["for"] == "1m"
    assert "< 0.2 # threshold" in rendered["KubefitAcceleratorsIdle"]["expr"]
    assert "< 0.3 # threshold" in rendered["KubefitAcceleratorMemoryOverprovisioned"]["expr"]
    (tmp_path / "rendered-rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(OVERRIDDEN_TESTS, tmp_path / OVERRIDDEN_TESTS.name)
    check = _promtool("check", "rules", "rendered-rules.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    result = _promtool("test", "rules", OVERRIDDEN_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_with_its_service_monitor_a_release_alerts_when_its_own_operator_is_absent(tmp_path: Path) -> None:
    """One release per team: the absent rule counted any team's leader, so a release that was down stayed
    silent while another one led."""
    values = {"metrics": {"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True}}}
    groups = _rendered_groups(tmp_path, values, "--namespace", "team-b")
    rendered = {alert["alert"]: alert for alert in _alerts(groups)}
    assert rendered["KubefitOperatorAbsent"]["expr"].strip() == (
        'label_replace(absent(kubefit_leader{namespace="team-b"} == 1), "namespace", "team-b", "", "")'
    )
    (tmp_path / "rendered-rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(PER_RELEASE_TESTS, tmp_path / PER_RELEASE_TESTS.name)
    result = _promtool("test", "rules", PER_RELEASE_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Without the ServiceMonitor nothing says which series are this release's: any leader counts.
    plain = _rendered_groups(
        tmp_path, {"metrics": {"prometheusRule": {"enabled": True}}}, "--namespace", "team-b"
    )
    assert plain == _load(RULE_FILE)["groups"]


def test_prometheus_rule_carries_additional_labels(tmp_path: Path) -> None:
    (rule,) = _render_prometheus_rules(tmp_path, OVERRIDDEN_VALUES, "--api-versions", MONITORING_API)
    assert rule["apiVersion"] == MONITORING_API
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_prometheus_rule_is_off_by_default_and_needs_the_monitoring_api(tmp_path: Path) -> None:
    assert _render_prometheus_rules(tmp_path, {}, "--api-versions", MONITORING_API) == []
    assert _render_prometheus_rules(tmp_path, OVERRIDDEN_VALUES) == []  # no Prometheus Operator CRDs


@pytest.mark.parametrize(
    "bad",
    [
        "metrics.prometheusRule.rules.KubefitAcceleratorsIdle.threshold=1.5",
        "metrics.prometheusRule.rules.KubefitAcceleratorsIdle.threshold=-0.1",
        "metrics.prometheusRule.rules.KubefitAcceleratorsIdle.threshold=0.1 or vector(1)",
        "metrics.prometheusRule.rules.KubefitAcceleratorMemoryOverprovisioned.threshold=0",
        "metrics.prometheusRule.rules.KubefitAcceleratorsIdle.threshold=0",  # `< 0` never fires
        "metrics.prometheusRule.rules.KubefitReconcileErrors.threshold=1",  # `> 1` never fires
        "metrics.prometheusRule.rules.KubefitJobStuckPending.threshold=0.5",  # it has none
        "metrics.prometheusRule.rules.KubefitJobStuckPending.for=5 minutes",
        "metrics.prometheusRule.rules.KubefitJobStuckPending.for=30m1h",  # Prometheus wants units in order
        "metrics.prometheusRule.rules.KubefitJobStuckPending.for=1m1m",
        "metrics.prometheusRule.rules.KubefitJobStuckPending.for=",
        "metrics.serviceMonitor.interval=1h30",
        "metrics.prometheusRule.rules.KubefitNoSuchAlert.enabled=true",
        "metrics.prometheusRule.enable=true",
    ],
)
def test_bad_rule_values_are_refused(bad: str) -> None:
    command = [str(helm_path()), "template", "kf", str(CHART), "--api-versions", MONITORING_API]
    result = subprocess.run([*command, "--set", bad], capture_output=True, text=True, timeout=25)
    assert result.returncode != 0, result.stdout
    assert "metrics" in result.stderr  # the error names where the value is


@pytest.mark.parametrize(
    "never",
    [
        "KubefitAcceleratorsIdle.threshold=0",
        "KubefitAcceleratorsIdle.threshold=.0",
        "KubefitReconcileErrors.threshold=1",
        "KubefitReconcileErrors.threshold=1.0",
    ],
)
def test_a_threshold_whose_alert_could_never_fire_is_refused_as_a_string(never: str) -> None:
    command = [str(helm_path()), "template", "kf", str(CHART), "--api-versions", MONITORING_API]
    value = f"metrics.prometheusRule.rules.{never}"
    result = subprocess.run([*command, "--set-string", value], capture_output=True, text=True, timeout=25)
    assert result.returncode != 0, result.stdout
    assert "metrics" in result.stderr


@pytest.mark.parametrize("zero", ["0", "0.0", ".0", "0.000"])
def test_a_threshold_above_zero_is_refused_at_zero_as_a_string_too(zero: str) -> None:
    """`--set-string` passes a string: `< 0` would make an alert that can never fire."""
    value = f"metrics.prometheusRule.rules.KubefitAcceleratorMemoryOverprovisioned.threshold={zero}"
    command = [str(helm_path()), "template", "kf", str(CHART), "--api-versions", MONITORING_API]
    result = subprocess.run([*command, "--set-string", value], capture_output=True, text=True, timeout=25)
    assert result.returncode != 0, result.stdout
    assert "threshold" in result.stderr


# ------------------------------------------------------------------ the dashboard


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 10
    # promtool parses PromQL in rule files: one recording rule per panel query.
    rules = [{"record": f"kubefit_dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    (tmp_path / "dashboard.rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = _promtool("check", "rules", "dashboard.rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    text = " ".join(expr for _, expr in _dashboard_queries())
    for name in (
        'kubefit_trainingjob_accelerators{state="allocated"}',
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",  # used
        "kubefit_trainingjob_memory_estimated_bytes",
        "kubefit_trainingjob_memory_requested_bytes",
        "kubefit_queue_wait_seconds_bucket",
        "kubefit_scheduling_latency_seconds_bucket",
        "kubefit_scale_events_total",
        "kubefit_preemptions_total",
    ):
        assert name in text, name
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["templating"]["list"][0]["type"] == "datasource"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# ------------------------------------------------------------------ the labels they select on

SELECTOR = re.compile(r"\b(kubefit_[A-Za-z0-9_]+)\{([^{}]*)\}")
MATCHER = re.compile(r"""(\w+)\s*(?:=~|!~|!=|=)\s*(?:"([^"]*)"|'([^']*)')""")
SERIES_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def _selectors(text: str) -> list[tuple[str, str, str]]:
    """(metric, label, value) of every label matcher on a kubefit metric in `text`."""
    return [
        (metric, label, double or single)  # findall gives "" for the group that did not match
        for metric, inside in SELECTOR.findall(text)
        for label, double, single in MATCHER.findall(inside)
    ]


def _family(series: str) -> str:
    for suffix in SERIES_SUFFIXES:
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series


def _exported_labels() -> dict[str, set[str]]:
    """Each metric family's label names as the operator registers them (histograms add `le`)."""
    found: dict[str, set[str]] = {}
    for collector in list(OperatorMetrics().registry._collector_to_names):  # noqa: SLF001 - all of them
        if isinstance(collector, MetricWrapperBase):  # a Gauge, Counter or Histogram of the operator's
            histogram = collector._type == "histogram"  # noqa: SLF001
            found[collector._name] = {*collector._labelnames, *(["le"] if histogram else [])}  # noqa: SLF001
        else:  # a custom collector (the cluster's accelerators): its families name their labels
            for family in collector.describe():  # type: ignore[attr-defined]
                found[family.name] = set(getattr(family, "_labelnames", ()) or ())
    return found


def _job_state_values() -> dict[str, set[str]]:
    """The `state` values of the per-job metrics, from a job observed as the reconciler does."""
    from test_metrics import Job, job_spec, pod

    metrics = OperatorMetrics()
    Job(metrics, job_spec()).reconcile(10, [pod(0), pod(1, "Succeeded")], 2)
    values: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if family.name.startswith("kubefit_trainingjob_") and "state" in sample.labels:
                values.setdefault(family.name, set()).add(sample.labels["state"])
    return values


def _counter_label_values() -> dict[tuple[str, str], set[str]]:
    """The label values the operator's counters start at zero with (every one they can take): a test input
    of trigger="job", which no reconcile is counted under, tested nothing a real operator exports."""
    values: dict[tuple[str, str], set[str]] = {}
    for family in OperatorMetrics().registry.collect():
        if family.type != "counter":
            continue
        for sample in family.samples:
            for label, value in sample.labels.items():
                values.setdefault((family.name, label), set()).add(value)
    return values


def test_every_label_the_rules_the_dashboard_and_their_tests_select_on_is_exported() -> None:
    """Names alone could not catch `state="alocated"` or a renamed label written in a rule and its test
    alike: every matcher's label must be one the metric has, and every state and phase one it takes."""
    queries = "\n".join(expr for _, expr in _dashboard_queries())  # decoded from the JSON's escapes
    texts = [
        RULE_FILE.read_text(),
        queries,
        DEFAULT_TESTS.read_text(),
        OVERRIDDEN_TESTS.read_text(),
    ]
    selectors = [selector for text in texts for selector in _selectors(text)]
    labels, states, counted = _exported_labels(), _job_state_values(), _counter_label_values()
    phases = set(Phase.__args__)  # type: ignore[attr-defined]
    wrong = []
    for metric, label, value in selectors:
        family = _family(metric)
        if label not in labels.get(family, set()) | {"job", "instance", "namespace", "pod"}:
            wrong.append(
                f"{metric}{{{label}}}: not a label of {family} ({sorted(labels.get(family, set()))})"
            )
        elif label == "state" and family in states and not set(value.split("|")) <= states[family]:
            wrong.append(f'{metric}{{state="{value}"}}: it exports {sorted(states[family])}')
        elif label == "phase" and value and not set(value.split("|")) <= phases:
            wrong.append(f'{metric}{{phase="{value}"}}: phases are {sorted(phases)}')
        elif (family, label) in counted and value and not set(value.split("|")) <= counted[(family, label)]:
            wrong.append(f'{metric}{{{label}="{value}"}}: it counts {sorted(counted[(family, label)])}')
    assert wrong == []
    assert len(selectors) >= 40  # the check sees the matchers, not nothing
    assert {"succeeded", "min", "running", "pending"} <= states["kubefit_trainingjob_workers"]
