"""Objects written under a newer CRD than this operator's: read as this operator's CRD would store them.

docs/install.md applies the new CRD before the operator is rolled, so for a while the API server returns
fields (and defaults) this operator does not know. A structural schema prunes every other unknown field,
so such a field can only be a newer version's: the reconcile and the webhook drop it instead of refusing
the job; `kubefit size` reads a file, where it is a typo, and names it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_reconcile import CATALOG, NOW, decide, elastic_spec, observe, pod, raw_spec, status_of

from kubefit.api.validation import pruned
from kubefit.cli.main import main
from kubefit.decisions.validating import review
from kubefit.decisions.workers import min_max_workers

# Fields a newer CRD defines (and defaults): this operator's schema names none of them.
NEWER_RESOURCES = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1, "topologyPolicy": "Prefer"}
NEWER_SPEC = raw_spec(resources=NEWER_RESOURCES, observability={"profiler": "off"})


def running_status() -> dict[str, Any]:
    """The stored status of a fixed group of 2 placed a while ago, at attempt 0."""
    pods = [pod(0, attempt=0), pod(1, attempt=0)]
    first = decide(observe(pods=pods), CATALOG)
    placed = decide(observe(pods=pods, status=first.status, now=NOW + timedelta(hours=1)), CATALOG)
    return placed.status.model_dump(by_alias=True, exclude_none=True)


def conditions(decision: Any) -> dict[str, tuple[str, str]]:
    return {item["type"]: (item["status"], item["reason"]) for item in status_of(decision)["conditions"]}


def test_a_running_job_with_fields_of_a_newer_crd_keeps_running_and_is_not_invalid() -> None:
    stored = running_status()
    status = {**stored, "gang": {**stored["gang"], "placedAt": "2025-01-01T12:00:00Z"}, "topology": {}}
    pods = [pod(0, attempt=0), pod(1, attempt=0)]
    decision = decide(observe(NEWER_SPEC, pods=pods, status=status, now=NOW + timedelta(hours=2)), CATALOG)
    assert decision.delete == () and decision.create == ()
    assert status_of(decision)["phase"] == "Running"
    assert conditions(decision)["Ready"] == ("True", "AllWorkersReady")
    assert decision.demand is not None and decision.demand.want_workers == 2
    assert decision.events == ()


def test_the_ignored_fields_are_logged_at_debug_not_reported_as_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="kubefit.decisions"):
        decision = decide(observe(NEWER_SPEC), CATALOG)
    plain = decide(observe(raw_spec()), CATALOG)
    assert len(decision.create) == 2 and decision.events == plain.events
    (record,) = [record for record in caplog.records if "ignored fields" in record.getMessage()]
    assert record.levelno == logging.DEBUG
    assert "spec.resources.topologyPolicy, spec.observability" in record.getMessage()


def test_the_pod_templates_unknown_fields_are_kept_as_the_api_server_keeps_them() -> None:
    container = {"name": "trainer", "image": "ghcr.io/acme/train:1", "futureField": {"a": 1}}
    spec = raw_spec(template={"spec": {"containers": [container], "futurePodField": True}})
    assert pruned({**spec, "extra": 1}, "spec") == (spec, ["spec.extra"])
    decision = decide(observe(spec), CATALOG)
    assert decision.worker_pod(0)["spec"]["containers"][0]["futureField"] == {"a": 1}


def test_a_group_restarted_once_keeps_its_attempt_when_status_gang_has_a_newer_field() -> None:
    """A field a newer CRD defaults into status.gang lost the whole bookkeeping: read as attempt 0, the
    healthy group of attempt 1 was stopped and restarted."""
    pods = [pod(0, attempt=1, uid="a"), pod(1, attempt=1, uid="b")]
    gang = {"started": True, "attempt": 1, "retries": 0, "placedAt": ""}
    later = NOW + timedelta(hours=2)
    decision = decide(observe(pods=pods, status={**running_status(), "gang": gang}, now=later), CATALOG)
    assert decision.delete == () and decision.create == ()
    assert status_of(decision)["gang"]["attempt"] == 1 and status_of(decision)["phase"] == "Running"


def test_an_open_checkpoint_request_with_a_newer_field_is_kept_and_ends_at_its_deadline() -> None:
    spec = elastic_spec(replicas=1)
    pods = [pod(0), pod(1)]
    asked = decide(observe(spec, pods), CATALOG)
    stored = asked.status.model_dump(by_alias=True, exclude_none=True)
    status = {**stored, "checkpoint": {**stored["checkpoint"], "storage": "s3"}}
    waiting = decide(observe(spec, pods, status, NOW + timedelta(seconds=10)), CATALOG)
    assert waiting.delete == () and waiting.checkpoint_request == asked.checkpoint_request
    assert status_of(waiting)["checkpoint"]["requestedAt"] == "2025-01-01T12:00:00Z"
    expired = decide(observe(spec, pods, status, NOW + timedelta(seconds=30)), CATALOG)
    assert expired.delete == ("llama-worker-1",)


def test_the_webhook_admits_a_job_with_a_newer_field_and_still_refuses_a_real_fault() -> None:
    def create(spec: dict[str, Any]) -> dict[str, Any]:
        request = {"uid": "1", "kind": {"kind": "TrainingJob"}, "operation": "CREATE", "namespace": "team-a"}
        document = {"request": {**request, "object": {"metadata": {"name": "new"}, "spec": spec}}}
        return review(document, CATALOG, 1024)["response"]  # type: ignore[no-any-return]

    assert create(NEWER_SPEC)["allowed"] is True
    unknown_device = {**NEWER_RESOURCES, "accelerator": "nvidia-z9000"}
    refused = create(raw_spec(resources=unknown_device, observability={}))
    assert refused["allowed"] is False
    assert "spec.resources.accelerator" in refused["status"]["message"]
    assert "observability" not in refused["status"]["message"]


def test_kubefit_size_still_refuses_a_typo_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = {
        "apiVersion": "kubefit.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "llama"},
        "spec": raw_spec(training={"microBatch": 4}),
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert main(["size", "-f", str(path)]) == 2
    assert "spec.training.microBatch: unknown field" in capsys.readouterr().err


@pytest.mark.parametrize(
    "gang",
    [
        {"started": True},  # lost: wiped, restored, or written by an operator before status.gang.attempt
        {"started": True, "attempt": 0, "retries": 0},  # the same status as the CRD's defaults return it
    ],
)
def test_a_status_behind_its_running_workers_attempt_takes_theirs(gang: dict[str, Any]) -> None:
    running = [pod(0, attempt=1), pod(1, attempt=1)]
    decision = decide(observe(pods=running, status={"gang": gang}), CATALOG)
    assert decision.delete == () and decision.create == ()
    assert status_of(decision)["gang"]["attempt"] == 1


def test_workers_of_an_attempt_behind_the_status_are_still_stopped() -> None:
    """The status is written before a new attempt's workers are created: workers behind it are old."""
    old = [pod(0, attempt=1), pod(1, attempt=1)]
    decision = decide(observe(pods=old, status={"gang": {"started": False, "attempt": 2}}), CATALOG)
    assert sorted(decision.delete) == ["llama-worker-0", "llama-worker-1"]
    assert status_of(decision)["gang"]["attempt"] == 2


def test_a_suspend_of_a_group_whose_training_ended_waits_though_the_status_read_its_attempt_as_0() -> None:
    # Workers of attempt 1 with the CRD's default attempt 0 in the status: they were taken for an old
    # attempt's, so the ended training went unseen and the suspend stopped the finishing workers.
    stored = running_status()
    status = {**stored, "gang": {**stored["gang"], "attempt": 0}}
    suspend = raw_spec(runPolicy={"suspend": True})
    pods = [pod(0, "Succeeded", attempt=1), pod(1, attempt=1)]
    decision = decide(observe(suspend, pods=pods, status=status, now=NOW + timedelta(hours=2)), CATALOG)
    assert status_of(decision)["phase"] != "Suspended" and decision.delete == ()
    assert "the training has ended" in (status_of(decision)["message"] or "")


def test_metrics_bounds_read_a_spec_with_a_newer_field() -> None:
    # min_max_workers judged a job with a newer CRD's field unparseable: no metrics, no kubefit top line.
    assert min_max_workers(NEWER_SPEC, None) == min_max_workers(raw_spec(), None) == (2, 2)


def test_a_sizing_with_a_newer_field_is_kept_for_a_finished_or_invalid_running_job() -> None:
    """The last sizing is carried over where the job is not planned again (finished; invalid while its
    workers run). Read strictly, one field a newer operator added dropped it whole: the finished job lost
    status.sizing, and the invalid one's metrics stopped counting the devices its workers hold."""
    from kubefit.cli.top import min_workers_of
    from kubefit.metrics.job_series import job_series

    spec, pods = raw_spec(), [pod(0), pod(1)]
    first = decide(observe(spec, pods=pods), CATALOG).status.model_dump(by_alias=True, exclude_none=True)
    done = [pod(0, "Succeeded"), pod(1, "Succeeded")]
    finished = decide(observe(spec, done, first, now=NOW + timedelta(hours=1)), CATALOG)
    stored = finished.status.model_dump(by_alias=True, exclude_none=True)
    newer = {**stored, "sizing": {**stored["sizing"], "interconnect": "nvlink"}}
    again = status_of(decide(observe(spec, done, newer, now=NOW + timedelta(hours=2)), CATALOG))
    assert again["sizing"] is not None and again["perDeviceMemory"] == stored["perDeviceMemory"]

    running = decide(observe(spec, pods, first, now=NOW + timedelta(minutes=5)), CATALOG)
    stored = running.status.model_dump(by_alias=True, exclude_none=True)
    newer = {**stored, "sizing": {**stored["sizing"], "interconnect": "nvlink"}}
    invalid = observe(raw_spec(workers={"replicas": 2000}), pods, newer, now=NOW + timedelta(hours=2))
    series = job_series(invalid, decide(invalid, CATALOG))
    assert dict(series.accelerators) == {"requested": 2, "allocated": 2}
    assert min_workers_of(spec, newer["sizing"], 2) == 2
