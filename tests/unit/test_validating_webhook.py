"""The validating admission webhook: its decision (decisions/validating.py) on the shared bad-spec table,
and its HTTPS endpoint (controller/webhook.py) with a real TLS handshake."""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bad_specs import BAD_SPECS, BASE_SPEC, OPERATOR
from kubernetes.client.exceptions import ApiException
from self_signed import self_signed_certificate

from kubefit.cli.run import UsageError, _webhook, register
from kubefit.controller.runner import serves
from kubefit.controller.webhook import (
    VALIDATE_PATH,
    WebhookServer,
    start_webhook_server,
    with_template_checked,
)
from kubefit.decisions.validating import TEMPLATE_CHECK_PREFIX, review, template_check, template_refusal
from kubefit.sizing.catalog import load_catalog

CATALOG = load_catalog()
MAX_WORKERS = 1024


def admission_review(
    spec: Any, operation: str = "CREATE", old_spec: Any = None, namespace: str = "ml", **metadata: Any
) -> dict[str, Any]:
    job = {
        "apiVersion": "kubefit.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "llama", "namespace": namespace, **metadata},
        "spec": spec,
    }
    request: dict[str, Any] = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "kubefit.dev", "version": "v1alpha1", "kind": "TrainingJob"},
        "operation": operation,
        "namespace": namespace,
        "name": "llama",
        "object": job,
    }
    if old_spec is not None:
        request["oldObject"] = {**copy.deepcopy(job), "spec": old_spec}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def answer(document: dict[str, Any], **options: Any) -> dict[str, Any]:
    reviewed = review(document, CATALOG, MAX_WORKERS, **options)
    assert reviewed["apiVersion"] == "admission.k8s.io/v1" and reviewed["kind"] == "AdmissionReview"
    assert reviewed["response"]["uid"] == document["request"]["uid"]
    return reviewed["response"]


OPERATOR_REFUSALS = [bad for bad in BAD_SPECS if bad.refused_by == OPERATOR and bad.json]


@pytest.mark.parametrize("bad", OPERATOR_REFUSALS, ids=[bad.id for bad in OPERATOR_REFUSALS])
def test_what_the_operator_refuses_the_webhook_refuses_naming_the_field(bad: Any) -> None:
    response = answer(admission_review(bad.spec()))
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert bad.field in response["status"]["message"], response


def scale_review(replicas: int, namespace: str = "ml", operation: str = "UPDATE") -> dict[str, Any]:
    """What the API server sends for `kubectl scale` (the scale subresource: a Scale, not the job)."""
    scale = {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": "llama", "namespace": namespace},
    }
    request = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800003",
        "kind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
        "resource": {"group": "kubefit.dev", "version": "v1alpha1", "resource": "trainingjobs"},
        "subResource": "scale",
        "operation": operation,
        "namespace": namespace,
        "name": "llama",
        "object": {**scale, "spec": {"replicas": replicas}},
        "oldObject": {**scale, "spec": {"replicas": 2}},
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def test_a_spec_that_does_not_fit_is_allowed_without_searching_for_remedies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The remedy search plans a job that does not fit dozens of times (seconds for an extreme spec, past
    the webhook's timeout); whether a spec is valid never depends on it."""
    from kubefit.sizing import planner

    def no_remedies(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the webhook searched for remedies")

    monkeypatch.setattr(planner, "_remedy_search", no_remedies)
    too_big = {
        **copy.deepcopy(BASE_SPEC),
        "model": {"parameters": "70B"},
        "resources": {"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 8},
        "workers": {"replicas": 2},
    }
    assert answer(admission_review(too_big))["allowed"] is True
    over_limit = {**too_big, "workers": {"replicas": MAX_WORKERS + 1}}
    refused = answer(admission_review(over_limit))
    assert refused["allowed"] is False and "spec.workers.replicas" in refused["status"]["message"]


def test_a_scale_beyond_the_worker_limit_is_refused_naming_the_field_and_one_within_passes() -> None:
    refused = answer(scale_review(MAX_WORKERS + 1))
    assert refused["allowed"] is False and refused["status"]["code"] == 422
    assert refused["status"]["message"].startswith(f"spec.workers.replicas: {MAX_WORKERS + 1} workers exceed")
    assert answer(scale_review(MAX_WORKERS))["allowed"] is True
    # Another operator's namespace is its own business.
    assert answer(scale_review(MAX_WORKERS + 1), serves=lambda namespace: False)["allowed"] is True


def test_a_valid_job_is_allowed() -> None:
    assert answer(admission_review(copy.deepcopy(BASE_SPEC))) == {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "allowed": True,
    }


def test_the_operator_limits_and_the_job_name_are_checked_too() -> None:
    too_many = {**copy.deepcopy(BASE_SPEC), "workers": {"replicas": 8}}
    response = review(admission_review(too_many), CATALOG, max_workers_per_job=4)["response"]
    assert not response["allowed"] and "spec.workers.replicas" in response["status"]["message"]
    named = admission_review(copy.deepcopy(BASE_SPEC))
    named["request"]["object"]["metadata"]["name"] = "Llama.3"
    response = answer(named)
    assert not response["allowed"] and "metadata.name" in response["status"]["message"]


def test_a_worker_fqdn_the_kubelet_would_refuse_is_refused_with_the_namespace_and_cluster_domain() -> None:
    # <job>-worker-0.<job>.<namespace>.svc.<domain>: the kubelet allows 64 characters under setHostnameAsFQDN.
    spec = copy.deepcopy(BASE_SPEC)
    spec["template"]["spec"]["setHostnameAsFQDN"] = True
    assert answer(admission_review(spec, namespace="ml"))["allowed"]  # 41 characters
    long_namespace = "team-" + "x" * 21  # llama-worker-3.llama.<26>.svc.cluster.local: 65 characters
    response = answer(admission_review(spec, namespace=long_namespace))
    assert not response["allowed"]
    message = response["status"]["message"]
    assert "metadata.name" in message and "setHostnameAsFQDN" in message and "65 characters" in message
    assert answer(admission_review(spec, namespace=long_namespace[:-1]))["allowed"]  # 64: allowed
    assert not answer(admission_review(spec, namespace="ml"), cluster_domain="x" * 40)["allowed"]
    del spec["template"]["spec"]["setHostnameAsFQDN"]
    assert answer(admission_review(spec, namespace=long_namespace))["allowed"]  # the hostname alone is short


def test_a_rendezvous_address_longer_than_dns_allows_is_refused_naming_metadata_name() -> None:
    # The workers' rendezvous address is worker 0's FQDN: llama-worker-0.llama.<63>.svc.<167>, 256 characters.
    domain = ".".join(["d" * 55] * 3)
    response = answer(admission_review(copy.deepcopy(BASE_SPEC), namespace="n" * 63), cluster_domain=domain)
    assert not response["allowed"]
    message = response["status"]["message"]
    assert "metadata.name" in message and "rendezvous address" in message and "256 characters" in message
    shorter = admission_review(copy.deepcopy(BASE_SPEC), namespace="n" * 60)  # 253 characters
    assert answer(shorter, cluster_domain=domain)["allowed"]


def test_an_update_that_keeps_an_invalid_spec_is_allowed_and_one_that_makes_it_invalid_is_not() -> None:
    invalid = next(bad for bad in OPERATOR_REFUSALS).spec()
    # Labels, annotations or finalizers of a job that was already invalid: it must stay deletable.
    assert answer(admission_review(invalid, "UPDATE", old_spec=copy.deepcopy(invalid)))["allowed"]
    changed = answer(admission_review(invalid, "UPDATE", old_spec=copy.deepcopy(BASE_SPEC)))
    assert changed["allowed"] is False


def _running(spec: dict[str, Any], old_spec: dict[str, Any], workers: int = 2) -> dict[str, Any]:
    document = admission_review(spec, "UPDATE", old_spec=old_spec)
    sizing = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 4}
    document["request"]["oldObject"]["status"] = {"replicas": workers, "sizing": sizing}
    return document


@pytest.mark.parametrize(
    ("section", "changes", "field"),
    [
        ("resources", {"accelerator": "nvidia-a100-80gb"}, "spec.resources.accelerator"),
        ("resources", {"acceleratorsPerWorker": 2}, "spec.resources.acceleratorsPerWorker"),
        ("resources", {"acceleratorsPerWorker": "auto"}, "spec.resources.acceleratorsPerWorker"),
        ("framework", "jax", "spec.framework"),
    ],
)
def test_what_a_running_groups_workers_share_cannot_change_while_they_exist(
    section: str, changes: Any, field: str
) -> None:
    # A worker created after the edit (a replacement, an elastic job's new worker) joined the running group
    # on another device, device count or rendezvous, while status.sizing sized only the new spec.
    edited = copy.deepcopy(BASE_SPEC)
    edited[section] = {**edited[section], **changes} if isinstance(changes, dict) else changes
    refused = answer(_running(edited, copy.deepcopy(BASE_SPEC)))
    assert refused["allowed"] is False and field in refused["status"]["message"]
    assert "suspend" in refused["status"]["message"]
    # Allowed once no worker pod exists, or when the same update suspends the job.
    assert answer(_running(edited, copy.deepcopy(BASE_SPEC), workers=0))["allowed"]
    suspending = {**edited, "runPolicy": {"suspend": True}}
    assert answer(_running(suspending, copy.deepcopy(BASE_SPEC)))["allowed"]


def test_naming_what_the_running_workers_already_have_is_allowed() -> None:
    old = {**copy.deepcopy(BASE_SPEC), "resources": {"accelerator": "auto", "acceleratorsPerWorker": "auto"}}
    assert answer(_running(copy.deepcopy(BASE_SPEC), old))["allowed"]  # h100 x 4, as status.sizing says
    scaled = {**copy.deepcopy(BASE_SPEC), "workers": {"replicas": 3, "minReplicas": 1, "maxReplicas": 4}}
    assert answer(_running(scaled, copy.deepcopy(BASE_SPEC)))["allowed"]


def test_an_edit_elsewhere_of_a_job_already_at_fault_is_allowed_though_the_fault_message_quotes_it() -> None:
    # The name's fault quotes the longest worker hostname, which the worker count sets: halving the workers
    # changed the message, not the field at fault (the name), and was refused as a new error.
    stored = {**copy.deepcopy(BASE_SPEC), "workers": {"replicas": 100, "minReplicas": 1, "maxReplicas": 100}}
    halved = {**copy.deepcopy(stored), "workers": {"replicas": 50, "minReplicas": 1, "maxReplicas": 50}}
    long_name = "j" * 54  # j...j-worker-99 is 64 characters, j...j-worker-49 too
    update = admission_review(halved, "UPDATE", old_spec=stored)
    for part in (update["request"]["object"], update["request"]["oldObject"]):
        part["metadata"]["name"] = long_name
    assert "worker-99" in answer(admission_review(stored, name=long_name))["status"]["message"]
    assert answer(update)["allowed"]
    # A new fault on a field that was valid is still refused.
    update["request"]["object"]["spec"]["resources"]["accelerator"] = "nvidia-h900"
    refused = answer(update)
    assert not refused["allowed"] and refused["status"]["message"].startswith("spec.resources.accelerator")


def test_a_field_path_names_its_value_through_lists_and_keys_with_dots() -> None:
    from kubefit.decisions.validating import _ABSENT, _value_at

    job = {"spec": {"template": {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": 8}}}]}}}}
    assert _value_at(job, "spec.template.spec.containers[0].resources.limits[nvidia.com/gpu]") == 8
    assert _value_at(job, "spec.template.spec.containers[1]") is _ABSENT
    assert _value_at(job, "spec.workers.replicas") is _ABSENT


def test_an_update_changing_a_dotted_map_key_at_fault_to_another_invalid_value_is_refused() -> None:
    # The path named labels.app.kubernetes.io/name, which read back as no value at all, before and after:
    # the change from one invalid label to another passed as "at fault before, unchanged".
    def labelled(value: Any) -> dict[str, Any]:
        spec = copy.deepcopy(BASE_SPEC)
        spec["template"]["metadata"] = {"labels": {"app.kubernetes.io/name": value}}
        return spec

    refused = answer(admission_review(labelled(["a"]), "UPDATE", old_spec=labelled(5)))
    assert refused["allowed"] is False
    assert refused["status"]["message"].startswith("spec.template.metadata.labels[app.kubernetes.io/name]:")
    assert answer(admission_review(labelled(5), "UPDATE", old_spec=labelled(5)))["allowed"]  # unchanged


def _over_the_limit() -> dict[str, Any]:
    """A job stored under a higher --max-workers-per-job than the operator now runs with."""
    return {**copy.deepcopy(BASE_SPEC), "workers": {"replicas": 1500, "minReplicas": 1, "maxReplicas": 1500}}


def test_an_update_of_a_job_that_became_invalid_is_refused_only_for_errors_it_adds() -> None:
    stored = _over_the_limit()
    suspended = {**copy.deepcopy(stored), "runPolicy": {"suspend": True}}
    allowed = answer(admission_review(suspended, "UPDATE", old_spec=stored))
    assert allowed["allowed"]
    # Said at the apply, not only in the job's condition afterwards (kubectl prints each warning).
    assert [warning.partition("InvalidSpec: ")[2].partition(":")[0] for warning in allowed["warnings"]] == [
        "spec.workers.replicas",
        "spec.workers.maxReplicas",
    ]
    assert all(
        warning.startswith("still invalid, the job stays Ready=False") for warning in allowed["warnings"]
    )
    assert "warnings" not in answer(admission_review(BASE_SPEC, "CREATE"))
    gone = {**copy.deepcopy(stored), "resources": {"accelerator": "nvidia-h900", "acceleratorsPerWorker": 4}}
    refused = answer(admission_review(gone, "UPDATE", old_spec=stored))
    assert refused["allowed"] is False
    # Only the new error: the one the stored spec already had is not the update's fault.
    assert refused["status"]["message"].startswith("spec.resources.accelerator: unknown accelerator")
    assert "spec.workers.replicas" not in refused["status"]["message"]
    # A worse value of the same field is a new error too.
    more = {**copy.deepcopy(stored), "workers": {"replicas": 1600, "minReplicas": 1, "maxReplicas": 1600}}
    assert answer(admission_review(more, "UPDATE", old_spec=stored))["allowed"] is False


def test_a_create_names_every_field_at_fault_at_once() -> None:
    spec = copy.deepcopy(BASE_SPEC)
    spec["resources"]["accelerator"] = "nvidia-h900"
    spec["training"] = {"tensorParallel": 3}
    spec["model"] = {
        "parameters": "1B",
        "architecture": {"layers": 16, "hiddenSize": 2048, "attentionHeads": 16},
    }
    message = answer(admission_review(spec, name="x" * 60))["status"]["message"]
    for path in ("spec.training.tensorParallel", "metadata.name", "spec.resources.accelerator"):
        assert message.count(f"{path}:") == 1, message


def test_a_huge_accelerator_name_is_refused_by_its_length_not_echoed() -> None:
    spec = copy.deepcopy(BASE_SPEC)
    spec["resources"]["accelerator"] = "x" * 200_000
    response = answer(admission_review(spec))
    assert response["allowed"] is False
    assert response["status"]["message"].startswith("spec.resources.accelerator:")
    assert len(response["status"]["message"]) < 200


@pytest.mark.parametrize(
    "request_",
    [
        {"kind": "TrainingJob"},
        {"kind": ["TrainingJob"], "operation": "CREATE"},
        {"subResource": "scale", "operation": "UPDATE", "object": []},
        {"subResource": "scale", "operation": "UPDATE", "object": {"spec": "5000"}},
        {"kind": {"kind": "TrainingJob"}, "operation": "CREATE", "object": ["a"]},
        {"kind": {"kind": "TrainingJob"}, "operation": "CREATE", "object": {"metadata": "x", "spec": []}},
        {
            "kind": {"kind": "TrainingJob"},
            "operation": "UPDATE",
            "namespace": 7,
            "object": {},
            "oldObject": [],
        },
    ],
)
def test_a_malformed_request_is_answered_not_raised(request_: dict[str, Any]) -> None:
    response = answer({"request": {"uid": "u-1", **request_}})
    if response["allowed"] is False:  # a TrainingJob without a usable object: its spec is missing
        assert response["status"]["message"].startswith("spec: must be an object")
    assert review({"request": ["not", "a", "mapping"]}, CATALOG, MAX_WORKERS)["response"]["allowed"]


def test_jobs_being_deleted_and_jobs_of_namespaces_not_served_are_allowed() -> None:
    invalid = next(bad for bad in OPERATOR_REFUSALS).spec()
    deleting = admission_review(invalid, deletionTimestamp="2026-12-02T00:00:00Z")
    assert answer(deleting)["allowed"]
    served = serves(("team-*", "!team-x"))
    assert answer(admission_review(invalid, namespace="other"), serves=served)["allowed"]
    assert answer(admission_review(invalid, namespace="team-x"), serves=served)["allowed"]
    assert not answer(admission_review(invalid, namespace="team-a"), serves=served)["allowed"]


def test_serves_matches_namespaces_as_kopf_does() -> None:
    assert serves(())("anything")
    assert serves(("ml",))("ml") and not serves(("ml",))("ml-2")
    assert serves(("ml-*",))("ml-2") and not serves(("ml-*", "!ml-x"))("ml-x")
    assert serves(("!kube-*",))("ml") and not serves(("!kube-*",))("kube-system")


# ---------------------------------------------------------------------------------------------- HTTPS


def _self_signed(directory: Path, name: str = "webhook") -> tuple[Path, Path]:
    return self_signed_certificate(directory, name)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[WebhookServer, Path]]:
    cert, key = _self_signed(tmp_path)

    def decide(document: dict[str, Any]) -> dict[str, Any]:
        return review(document, CATALOG, MAX_WORKERS)

    server = start_webhook_server(decide, "127.0.0.1", 0, str(cert), str(key))
    try:
        yield server, cert
    finally:
        server.shutdown()
        server.server_close()


def _post(server: WebhookServer, cafile: Path, body: bytes, path: str = VALIDATE_PATH) -> tuple[int, Any]:
    context = ssl.create_default_context(cafile=str(cafile))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.server_address[1], context=context, timeout=10
    )
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_endpoint_answers_an_admission_review_over_tls(served: tuple[WebhookServer, Path]) -> None:
    server, cert = served
    bad = OPERATOR_REFUSALS[0]
    status, document = _post(server, cert, json.dumps(admission_review(bad.spec())).encode())
    assert status == 200 and document["response"]["allowed"] is False
    assert bad.field in document["response"]["status"]["message"]
    status, document = _post(server, cert, json.dumps(admission_review(copy.deepcopy(BASE_SPEC))).encode())
    assert status == 200 and document["response"]["allowed"] is True


def test_the_endpoint_refuses_what_is_not_a_review_and_outlives_a_client_without_tls(
    served: tuple[WebhookServer, Path],
) -> None:
    server, cert = served
    assert _post(server, cert, b"{}", path="/other")[0] == 404
    assert _post(server, cert, b"[1, 2")[0] == 400
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as plain:
        plain.sendall(b"POST /validate HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        plain.recv(100)  # the TLS alert or nothing: the server drops it
    status, _ = _post(server, cert, json.dumps(admission_review(copy.deepcopy(BASE_SPEC))).encode())
    assert status == 200


def test_clients_without_tls_cost_a_debug_line_not_a_traceback(
    served: tuple[WebhookServer, Path], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    server, cert = served
    with caplog.at_level(logging.DEBUG, logger="kubefit.webhook"):
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as plain:
            plain.sendall(b"GET /validate HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to a TLS port
            plain.recv(100)
        body = json.dumps(admission_review(copy.deepcopy(BASE_SPEC))).encode()
        assert _post(server, cert, body)[0] == 200  # answered after it, so its thread has finished
    assert "Traceback" not in capfd.readouterr().err
    assert any("webhook connection from" in record.getMessage() for record in caplog.records)


def test_a_replaced_certificate_is_served_to_the_next_connection(
    served: tuple[WebhookServer, Path], tmp_path: Path
) -> None:
    server, served_cert = served
    old_cert = tmp_path / "old.crt"
    old_cert.write_bytes(served_cert.read_bytes())
    new_cert, new_key = _self_signed(tmp_path, "rotated")
    os.replace(new_key, tmp_path / "webhook.key")
    os.replace(new_cert, tmp_path / "webhook.crt")
    stat = (tmp_path / "webhook.crt").stat()
    os.utime(tmp_path / "webhook.crt", (stat.st_atime, stat.st_mtime + 5))  # a new mtime, however fast
    body = json.dumps(admission_review(copy.deepcopy(BASE_SPEC))).encode()
    assert _post(server, tmp_path / "webhook.crt", body)[0] == 200  # trusted only as the new certificate
    with pytest.raises(ssl.SSLError):
        _post(server, old_cert, body)


# ---------------------------------------------------------------------------------------------- flags


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["run", *argv])


def test_webhook_flags_go_together_and_a_bad_port_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert _webhook(_parse()) is None
    webhook = _webhook(
        _parse("--webhook-cert-file", "c.pem", "--webhook-key-file", "k.pem", "--webhook-port", "0")
    )
    assert (webhook.port, webhook.certfile, webhook.keyfile) == (0, "c.pem", "k.pem")
    both = ("--webhook-cert-file", "c.pem", "--webhook-key-file", "k.pem")
    assert _webhook(_parse(*both)).port == 9443
    with pytest.raises(UsageError, match="--webhook-cert-file and --webhook-key-file go together"):
        _webhook(_parse("--webhook-cert-file", "c.pem"))
    with pytest.raises(UsageError, match="--webhook-port goes with --webhook-cert-file"):
        _webhook(_parse("--webhook-port", "9444"))  # it was accepted and served nothing
    with pytest.raises(SystemExit):
        _parse("--webhook-port", "70000")
    assert "--webhook-port" in capsys.readouterr().err


def test_an_edit_the_running_workers_device_count_takes_by_rounding_is_judged_as_the_operator_would() -> None:
    """An elastic pytorch job running 8 devices per worker (count `auto`) keeps that count for new workers
    (running_group); tensorParallel 16 with minReplicas 1 then needs 2 workers a group. The count is still
    the spec's `auto`, so the planner rounds the floor to 2 with a warning, as it would have at the start;
    taken for a count the user wrote, it was InvalidSpec (a valid job turned invalid once its workers
    existed). The webhook judges with the running count, as the reconcile does."""
    running = {
        **copy.deepcopy(BASE_SPEC),
        "model": {
            "parameters": "7B",
            "architecture": {"layers": 16, "hiddenSize": 4096, "attentionHeads": 32},
        },
        "elastic": {"enabled": True},
        "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": "auto"},
        "workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4},
    }
    edited = {**copy.deepcopy(running), "training": {"tensorParallel": 16}}
    document = _running(edited, running)
    document["request"]["oldObject"]["status"]["sizing"]["acceleratorsPerWorker"] = 8
    assert answer(document)["allowed"] is True
    # A count the user wrote must hold whole groups: refused, naming the field.
    written = copy.deepcopy(document)
    for side in ("object", "oldObject"):
        written["request"][side]["spec"]["resources"]["acceleratorsPerWorker"] = 8
    refused = answer(written)
    assert refused["allowed"] is False
    assert refused["status"]["message"].startswith("spec.workers.minReplicas: 1 workers x 8 = 8 devices")
    # With no worker left, or suspended in the same update, the count is planned afresh: allowed.
    document["request"]["oldObject"]["status"]["replicas"] = 0
    assert answer(document)["allowed"]


def test_an_edit_of_another_architecture_field_of_a_job_stored_with_bad_heads_is_allowed() -> None:
    # Stored while the webhook was off. The heads rules named spec.model.architecture, so ratcheting (by
    # path) took a change of vocabSize alone for a change of the field at fault and refused it.
    architecture = {"layers": 16, "hiddenSize": 2048, "attentionHeads": 16, "kvHeads": 3, "vocabSize": 32000}
    stored = {**copy.deepcopy(BASE_SPEC), "model": {"parameters": "1B", "architecture": architecture}}
    assert answer(admission_review(stored))["status"]["message"].startswith(
        "spec.model.architecture.kvHeads: "
    )
    edited = copy.deepcopy(stored)
    edited["model"]["architecture"]["vocabSize"] = 50000
    assert answer(admission_review(edited, "UPDATE", old_spec=stored))["allowed"]
    # kvHeads changed to another bad value is the update's own fault.
    edited["model"]["architecture"]["kvHeads"] = 5
    refused = answer(admission_review(edited, "UPDATE", old_spec=stored))
    assert not refused["allowed"] and refused["status"]["message"].startswith(
        "spec.model.architecture.kvHeads"
    )
    # attentionHeads above hiddenSize ratchets on its own field the same way.
    wide = {
        **copy.deepcopy(BASE_SPEC),
        "model": {"parameters": "1B", "architecture": {**architecture, "hiddenSize": 8}},
    }
    wide["model"]["architecture"].pop("kvHeads")
    assert answer(admission_review(wide))["status"]["message"].startswith(
        "spec.model.architecture.attentionHeads: "
    )
    deeper = copy.deepcopy(wide)
    deeper["model"]["architecture"]["layers"] = 20
    assert answer(admission_review(deeper, "UPDATE", old_spec=wide))["allowed"]


def test_a_finished_job_s_kept_pods_are_no_running_group_an_edit_must_wait_for() -> None:
    """status.replicas counts a finished job's pods kept for their logs; it creates no worker again, so an
    edit of its accelerator was refused 'while 2 worker pod(s) exist' for nothing."""
    import copy
    from datetime import timedelta

    from test_reconcile import CATALOG as CATALOG_OF_DECIDE
    from test_reconcile import NOW, decide, observe, pod, raw_spec

    spec, status = raw_spec(), None
    for minute, phase in enumerate(["Running", "Succeeded", "Succeeded"]):
        observed = observe(spec, [pod(0, phase), pod(1, phase)], status, now=NOW + timedelta(minutes=minute))
        status = decide(observed, CATALOG_OF_DECIDE).status.model_dump(by_alias=True, exclude_none=True)
    assert status["phase"] == "Succeeded" and status["replicas"] == 2
    edited = copy.deepcopy(spec)
    edited["resources"] = {**edited.get("resources", {}), "accelerator": "nvidia-a100-80gb"}
    request = {
        "uid": "u",
        "kind": {"kind": "TrainingJob"},
        "operation": "UPDATE",
        "namespace": "ml",
        "name": "llama",
        "object": {"metadata": {"name": "llama"}, "spec": edited},
        "oldObject": {"metadata": {"name": "llama"}, "spec": spec, "status": status},
    }
    assert review({"request": request}, CATALOG_OF_DECIDE, 1024)["response"]["allowed"] is True


# ------------------------------------------------------------------------------ the template as a pod


def _with_template(spec: dict[str, Any], **pod_spec: Any) -> dict[str, Any]:
    changed = copy.deepcopy(spec)
    changed["template"] = {
        "metadata": {"labels": {"team": "ml"}},
        "spec": {**spec["template"]["spec"], **pod_spec},
    }
    return changed


def test_the_template_is_checked_as_a_pod_at_a_create_and_where_an_update_changes_it() -> None:
    spec = copy.deepcopy(BASE_SPEC)
    check = template_check(admission_review(spec), CATALOG)
    assert check is not None
    namespace, pod = check
    assert namespace == "ml" and pod["kind"] == "Pod"
    assert pod["spec"] == {**spec["template"]["spec"], "restartPolicy": "Never"}
    assert pod["metadata"]["generateName"] == TEMPLATE_CHECK_PREFIX and "name" not in pod["metadata"]
    edited = _with_template(spec, hostNetwork=True)
    changed = template_check(admission_review(edited, "UPDATE", old_spec=spec), CATALOG)
    assert changed is not None and changed[1]["metadata"]["labels"] == {"team": "ml"}
    assert changed[1]["spec"]["hostNetwork"] is True
    # Nothing to check: the template as it was, a namespace not served, a scale, a job being deleted.
    scaled = {**spec, "workers": {"replicas": 3}}
    assert template_check(admission_review(scaled, "UPDATE", old_spec=spec), CATALOG) is None
    assert template_check(admission_review(spec), CATALOG, serves=lambda namespace: False) is None
    assert template_check(scale_review(3), CATALOG) is None
    assert template_check(admission_review(spec, deletionTimestamp="2026-12-06T00:00:00Z"), CATALOG) is None
    assert template_check(admission_review({**spec, "template": "not a template"}), CATALOG) is None


def test_the_api_servers_refusal_of_the_pod_names_the_templates_fields() -> None:
    document = admission_review(copy.deepcopy(BASE_SPEC))
    said = (
        'Pod "kubefit-template-check-x7k2p" is invalid: [spec.containers[0].env[0].name: Invalid value: "1 A": '
        "a valid environment variable name must consist of alphabetic characters, metadata.annotations: "
        'Invalid value: "a b": name part must consist of alphanumeric characters]'
    )
    refused = template_refusal(document, said)
    response = refused["response"]
    assert refused["kind"] == "AdmissionReview" and response["uid"] == document["request"]["uid"]
    assert response["allowed"] is False and response["status"]["code"] == 422
    message = response["status"]["message"]
    assert message.startswith("spec.template: the API server refuses the worker pod it makes: [")
    assert "spec.template.spec.containers[0].env[0].name: Invalid value" in message
    assert ", spec.template.metadata.annotations: Invalid value" in message
    assert "kubefit-template-check" not in message


class _DryRuns:
    """KubeApi's core calls as the webhook makes them: each dry-run create answered by `outcome`."""

    def __init__(self, outcome: BaseException | None) -> None:
        self.outcome, self.calls = outcome, []
        self.core = self

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any], dry_run: bool = False) -> None:
        self.calls.append((namespace, body["metadata"]["generateName"], dry_run))
        if self.outcome is not None:
            raise self.outcome


def _refused(status: int, message: str) -> ApiException:
    error = ApiException(status=status, reason="refused")
    error.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return error


@pytest.mark.parametrize(
    ("outcome", "allowed"),
    [
        (None, True),
        (
            _refused(
                422,
                'Pod "p" is invalid: spec.containers[0].ports[0].name: Invalid value: "a-very-long-port-name"',
            ),
            False,
        ),
        (_refused(403, 'pods "p" is forbidden: exceeded quota: gpus'), True),  # no fault of the template
        (_refused(422, "admission denied by a policy"), True),  # a policy's 422, not the pod's validation
        (_refused(500, "etcd is down"), True),
        (OSError("connection refused"), True),  # the check is a courtesy: the operator still handles refusals
    ],
    ids=["admitted", "invalid", "quota", "policy", "server-error", "unreachable"],
)
def test_only_the_api_servers_422_for_the_template_refuses_the_job(outcome: Any, allowed: bool) -> None:
    document = admission_review(copy.deepcopy(BASE_SPEC))
    reviewed = review(document, CATALOG, MAX_WORKERS)
    api = _DryRuns(outcome)
    response = with_template_checked(reviewed, document, api, CATALOG, lambda namespace: True)["response"]  # type: ignore[arg-type]
    assert api.calls == [("ml", TEMPLATE_CHECK_PREFIX, True)]
    assert response["allowed"] is allowed
    if not allowed:
        assert (
            "spec.template.spec.containers[0].ports[0].name: Invalid value" in response["status"]["message"]
        )


def test_what_the_operator_sets_in_every_worker_is_not_checked_from_the_template() -> None:
    """The worker's accelerator requests, the trainer's cpu and memory, its hostname and restart policy are
    the operator's: a template value the API server would refuse there (an accelerator request without a
    limit, half a GPU, a memory request above the limit that spec.resources.memory replaces, a hostname with
    capitals) is not what the worker gets, and refusing it refused a valid job (a review)."""
    spec = copy.deepcopy(BASE_SPEC)
    pod_spec = spec["template"]["spec"]
    pod_spec["hostname"], pod_spec["subdomain"], pod_spec["restartPolicy"] = "Not_A_Hostname", "x", "Always"
    trainer = pod_spec["containers"][0]
    trainer["resources"] = {
        "requests": {"nvidia.com/gpu": "0.5", "memory": "64Gi", "cpu": "4", "example.com/foo": "1"},
        "limits": {"memory": "32Gi", "example.com/foo": "1"},
    }
    pod_spec["containers"].append(
        {
            "name": "sidecar",
            "image": "busybox",
            "resources": {"requests": {"nvidia.com/gpu": 8, "memory": "1Gi"}},
        }
    )
    check = template_check(admission_review(spec), CATALOG)
    assert check is not None
    checked = check[1]["spec"]
    assert "hostname" not in checked and "subdomain" not in checked and checked["restartPolicy"] == "Never"
    # The memory request above its limit is taken as the limit (spec.resources replaces it in the worker);
    # cpu and memory stay, or hugepages beside them would be refused.
    assert checked["containers"][0]["resources"] == {
        "requests": {"memory": "32Gi", "cpu": "4", "example.com/foo": "1"},
        "limits": {"memory": "32Gi", "example.com/foo": "1"},
    }
    assert checked["containers"][1]["resources"] == {"requests": {"memory": "1Gi"}}  # its own memory stays
    assert pod_spec["hostname"] == "Not_A_Hostname"  # the job's spec itself is left as it is
    # An empty required node affinity (a Helm-rendered template's): the worker gets the accelerator's terms.
    empty = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    pod_spec["affinity"] = {"nodeAffinity": {**empty, "preferredDuringSchedulingIgnoredDuringExecution": []}}
    affinity = template_check(admission_review(spec), CATALOG)[1]["spec"]["affinity"]  # type: ignore[index]
    assert affinity == {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
