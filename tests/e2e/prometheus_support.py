"""A real Prometheus for end-to-end tests: started on loopback in a temp dir with the scrape jobs and rule
groups a test gives it, queried through its HTTP API, stopped at the end.

The binary is Debian's /usr/bin/prometheus (package `prometheus`, installed by `make system`). The rules
come from the chart as users get them: `helm template` with the monitoring API enabled and the test's
values, and the PrometheusRule's `spec.groups` written to a rule file (render_rule_groups).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubefit_sandbox.binaries import helm_path

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_BINARY = Path("/usr/bin/prometheus")
CHART = REPO / "charts" / "kubefit"
DASHBOARD_FILE = CHART / "files" / "dashboards" / "kubefit.json"
MONITORING_API = "monitoring.coreos.com/v1"
START_ATTEMPTS = 3  # a port picked free may be taken by another process before Prometheus binds it


class PrometheusError(RuntimeError):
    """Prometheus refused a query (bad syntax) or cannot be reached; the message says which and why."""


def render_chart(values: Mapping[str, Any], work_dir: Path) -> list[dict[str, Any]]:
    """The chart's objects as `helm template` renders them with `values` and the monitoring API present."""
    values_file = work_dir / "values.yaml"
    values_file.write_text(yaml.safe_dump(dict(values)))
    command = [str(helm_path()), "template", "kf", str(CHART), "--namespace", "kubefit",
               "--api-versions", MONITORING_API, "--values", str(values_file)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"helm template failed ({result.returncode}):\n{result.stderr}")
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def render_rule_groups(values: Mapping[str, Any], work_dir: Path) -> list[dict[str, Any]]:
    """The rule groups of the chart's PrometheusRule rendered with `values` (which must enable it)."""
    rules = [
        document for document in render_chart(values, work_dir) if document.get("kind") == "PrometheusRule"
    ]
    if len(rules) != 1:
        raise AssertionError(f"expected one PrometheusRule from the chart, got {len(rules)}")
    groups: list[dict[str, Any]] = rules[0]["spec"]["groups"]
    return groups


def alert_rules(groups: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each alerting rule of the groups by its alert name."""
    return {rule["alert"]: dict(rule) for group in groups for rule in group["rules"] if "alert" in rule}


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: a static target at `url`, with extra target labels and honor_labels as given."""

    name: str
    url: str
    honor_labels: bool = True
    target_labels: Mapping[str, str] = field(default_factory=dict)

    def config(self, interval: str) -> dict[str, Any]:
        parsed = urllib.parse.urlsplit(self.url)
        target: dict[str, Any] = {"targets": [parsed.netloc]}
        if self.target_labels:
            target["labels"] = dict(self.target_labels)
        return {
            "job_name": self.name,
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "honor_labels": self.honor_labels,
            "scheme": parsed.scheme or "http",
            "metrics_path": parsed.path or "/metrics",
            "static_configs": [target],
        }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Prometheus:
    """/usr/bin/prometheus on 127.0.0.1 with its config, rules and TSDB under `directory`."""

    def __init__(
        self,
        directory: Path,
        jobs: Sequence[ScrapeJob],
        rule_groups: Sequence[Mapping[str, Any]],
        scrape_interval: str = "2s",
        evaluation_interval: str = "1s",
    ) -> None:
        self.directory = directory
        self.jobs = tuple(jobs)
        self.rule_groups = [dict(group) for group in rule_groups]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = directory / "prometheus.log"

    def _write_config(self) -> Path:
        rules = self.directory / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": self.rule_groups}, sort_keys=False))
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(rules)],
            "scrape_configs": [job.config(self.scrape_interval) for job in self.jobs],
        }
        path = self.directory / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self, timeout: float = 120.0) -> None:
        if not PROMETHEUS_BINARY.is_file():
            raise AssertionError(
                f"{PROMETHEUS_BINARY} is missing: install Debian's prometheus (`make system`)"
            )
        config = self._write_config()
        for _ in range(START_ATTEMPTS):
            port = _free_port()
            command = [str(PROMETHEUS_BINARY), f"--config.file={config}",
                       f"--storage.tsdb.path={self.directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                       "--log.level=warn"]  # fmt: skip
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.directory
                )
            self.url = f"http://127.0.0.1:{port}"
            if self._wait_ready(timeout):
                return
        raise AssertionError(f"Prometheus did not start ({START_ATTEMPTS} attempts):\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        """True once /-/ready answers 200; False if the process exited first (a port taken)."""
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"Prometheus not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- the HTTP API -----------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a success, PrometheusError (with Prometheus's words) otherwise."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                body = json.loads(error.read())
            except ValueError:
                raise PrometheusError(f"{path}: HTTP {error.code}") from None
        except OSError as error:
            raise PrometheusError(f"{path}: cannot reach Prometheus at {self.url}: {error}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result as a list of {metric, value} (a scalar becomes one such item)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Every active alert (pending or firing), with its labels, state and annotations."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def targets_up(self) -> dict[str, bool]:
        """Each scrape job's target: health up after at least one scrape."""
        targets = self.api("targets", state="active")["activeTargets"]
        return {target["labels"]["job"]: target["health"] == "up" for target in targets}

    def rule_health(self) -> dict[str, str]:
        """Each rule's health after its last evaluation (ok, err, unknown), with the error if any."""
        found = {}
        for group in self.api("rules")["groups"]:
            for rule in group["rules"]:
                found[rule["name"]] = rule["health"] + (
                    f": {rule['lastError']}" if rule.get("lastError") else ""
                )
        return found


def finite_values(result: Sequence[Mapping[str, Any]]) -> list[float]:
    """The finite sample values of an instant query's result (NaN, as from histogram_quantile over no
    observations, is not data)."""
    values = [float(item["value"][1]) for item in result]
    return [value for value in values if math.isfinite(value)]


def job_alerts(
    alerts: Sequence[Mapping[str, Any]], namespace: str, name: str, state: str = "firing"
) -> set[str]:
    """The names of the alerts in `state` about the TrainingJob namespace/name."""
    return {
        alert["labels"]["alertname"]
        for alert in alerts
        if alert["state"] == state
        and alert["labels"].get("namespace") == namespace
        and alert["labels"].get("name") == name
    }


def dashboard_queries(path: Path = DASHBOARD_FILE) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' nested panels included, with Grafana's
    interval variables replaced by durations Prometheus reads."""
    document = json.loads(path.read_text())
    found: list[tuple[str, str]] = []

    def visit(panels: Sequence[Mapping[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    found.append((str(panel.get("title", "")), _without_grafana_variables(target["expr"])))
            visit(panel.get("panels") or [])

    visit(document.get("panels") or [])
    return found


def _without_grafana_variables(expr: str) -> str:
    for variable, duration in (("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "1h")):
        expr = expr.replace(variable, duration)
    return expr
