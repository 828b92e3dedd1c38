"""The sandbox's process mode, pure parts: env, hostnames, addresses, exit codes and the status patches."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from typing import Any

import pytest

from kubefit_sandbox.podprocess import (
    LaunchContext,
    PeerLookup,
    PodAddress,
    ProcessSpecError,
    build_launch,
    exit_code_of,
    expand,
    hostname_rewriter,
    pod_loopback_ip,
)
from kubefit_sandbox.podstatus import PodIPAllocator, exited_status_patch, waiting_status_patch

NS = "team-a"
ADDRESS = PodAddress(pod_ip="127.130.1.1", host_ip="10.240.0.7")
NOW = "2026-01-02T03:04:05Z"


def pod(
    env: list[dict[str, Any]] | None = None, command: list[str] | None = None, **spec: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "trainer",
        "image": "x:1",
        "command": command or ["python", "train.py"],
    }
    if env is not None:
        container["env"] = env
    container |= spec.pop("container", {})
    return {
        "metadata": {"name": "job-worker-1", "namespace": NS, "uid": "u-1"},
        "spec": {"containers": [container], "nodeName": "cpu-0", "hostname": "job-worker-1", "subdomain": "job",
                 **spec},
    }  # fmt: skip


def launch(manifest: dict[str, Any], peers: PeerLookup | None = None, address: PodAddress = ADDRESS):
    context = LaunchContext(address, peers or PeerLookup(), bin_dir="/venv/bin", home="/state/pods/x/work")
    return build_launch(manifest, context)


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------


def test_env_values_field_refs_and_expansion_in_order() -> None:
    env = [
        {"name": "A", "value": "one"},
        {"name": "B", "value": "$(A)-two $$(A) $(UNDEFINED)"},
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "EMPTY"},
    ]
    result = launch(pod(env, command=["echo", "$(B)"], container={"args": ["$(NAME)"]}))
    assert result.env["B"] == "one-two $(A) $(UNDEFINED)"
    assert (result.env["NAME"], result.env["NAMESPACE"]) == ("job-worker-1", NS)
    assert (result.env["IP"], result.env["HOST_IP"], result.env["EMPTY"]) == ("127.130.1.1", "10.240.0.7", "")
    assert result.argv == ("echo", "one-two $(A) $(UNDEFINED)", "job-worker-1")


def test_base_env_puts_the_virtualenv_first_and_the_pod_env_wins_over_the_rest() -> None:
    result = launch(pod([{"name": "HOME", "value": "/custom"}, {"name": "PATH", "value": "/opt/bin"}]))
    assert result.env["PATH"] == "/venv/bin:/opt/bin"
    assert result.env["HOME"] == "/custom" and result.env["HOSTNAME"] == "job-worker-1"
    assert launch(pod()).env["PATH"].startswith("/venv/bin:/usr/local/bin")
    assert launch(pod()).env["HOME"] == "/state/pods/x/work"


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ({"secretKeyRef": {"name": "s", "key": "k"}}, "secretKeyRef"),
        ({"configMapKeyRef": {"name": "c", "key": "k"}}, "configMapKeyRef"),
        ({"resourceFieldRef": {"resource": "limits.cpu"}}, "resourceFieldRef"),
        ({"fieldRef": {"fieldPath": "metadata.labels['a']"}}, "fieldRef metadata.labels['a']"),
    ],
)
def test_unsupported_env_sources_name_the_variable_and_the_source(source: dict, named: str) -> None:
    env = [{"name": "OK", "value": "1"}, {"name": "SECRET", "valueFrom": source}]
    with pytest.raises(ProcessSpecError) as error:
        launch(pod(env))
    assert "spec.containers[0].env[1].valueFrom (SECRET)" in str(error.value) and named in str(error.value)


def test_env_from_and_a_missing_command_are_refused_naming_the_field() -> None:
    with pytest.raises(ProcessSpecError, match=r"spec.containers\[0\].envFrom"):
        launch(pod(container={"envFrom": [{"secretRef": {"name": "s"}}]}))
    manifest = pod()
    del manifest["spec"]["containers"][0]["command"]
    with pytest.raises(ProcessSpecError, match=r"spec.containers\[0\].command is required"):
        launch(manifest)


# ---------------------------------------------------------------------------------------------
# Hostnames and addresses
# ---------------------------------------------------------------------------------------------


def test_every_dns_form_of_a_job_pod_is_rewritten_and_nothing_else() -> None:
    worker0 = pod_loopback_ip(NS, "job-worker-0", "job-worker-0", "job")
    rewrite = hostname_rewriter("job", NS, PeerLookup())
    for name in ("job-worker-0.job", f"job-worker-0.job.{NS}", f"job-worker-0.job.{NS}.svc",
                 f"job-worker-0.job.{NS}.svc.cluster.local"):  # fmt: skip
        assert rewrite(f"tcp://{name}:29500") == f"tcp://{worker0}:29500", name
    untouched = [
        "job",  # the bare job name (KUBEFIT_JOB_NAME): never an address
        "job-worker-0.jobs",  # another subdomain
        "my-job-worker-0.job.other",  # inside a longer name
        "/ckpt/job-worker-0.job.pt",  # a file name
        "x.job-worker-0.job",  # a label in front: not the pod's name
        "job-worker-0.job.other-ns",  # another namespace
    ]
    for text in untouched:
        assert rewrite(text) == text, text


def test_a_running_peer_resolves_to_its_actual_address_and_the_service_to_its_first_pod() -> None:
    peers = PeerLookup({("job-worker-1", "job"): "127.64.0.9", ("job-worker-0", "job"): "127.64.0.8"})
    rewrite = hostname_rewriter("job", NS, peers)
    assert rewrite("job-worker-1.job:1") == "127.64.0.9:1"
    assert rewrite(f"job.{NS}.svc") == "127.64.0.8" and rewrite(f"job.{NS}") == "127.64.0.8"
    assert (
        hostname_rewriter("job", NS, PeerLookup())(f"job.{NS}.svc") == f"job.{NS}.svc"
    )  # no pod: unresolved


def test_loopback_addresses_share_a_block_per_job_and_worker_0_is_first() -> None:
    ips = [
        ipaddress.ip_address(pod_loopback_ip(NS, f"job-worker-{i}", f"job-worker-{i}", "job"))
        for i in range(12)
    ]
    assert all(ip in ipaddress.ip_network("127.128.0.0/9") for ip in ips)
    assert len({str(ip) for ip in ips}) == 12
    assert len({int(ip) >> 8 for ip in ips}) == 1  # one /24 per job
    assert min(str(ip) for ip in ips) == str(ips[0])  # torch sorts its nodes by address string
    other_job = pod_loopback_ip(NS, "other-worker-0", "other-worker-0", "other")
    assert other_job != str(ips[0])
    # The same address in another process with another hash seed: a recreated pod gets its old one back.
    code = f"from kubefit_sandbox.podprocess import pod_loopback_ip; print(pod_loopback_ip({NS!r}, 'x', None, None))"
    elsewhere = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        for seed in ("1", "2")
    }  # fmt: skip
    assert elsewhere == {pod_loopback_ip(NS, "x", None, None)}


def test_claim_keeps_the_preferred_address_unless_another_pod_holds_it() -> None:
    allocator = PodIPAllocator()
    assert allocator.claim("a", "127.128.0.1", "127.64.0.0/10") == "127.128.0.1"
    assert allocator.claim("a", "127.128.0.1", "127.64.0.0/10") == "127.128.0.1"
    assert allocator.claim("b", "127.128.0.1", "127.64.0.0/10") == "127.64.0.1"
    allocator.release("a")
    assert allocator.claim("c", "127.128.0.1", "127.64.0.0/10") == "127.128.0.1"


def test_torchrun_is_told_which_pod_hosts_the_store_and_its_own_address() -> None:
    worker0 = pod_loopback_ip(NS, "job-worker-0", "job-worker-0", "job")
    env = [
        {"name": "PET_RDZV_BACKEND", "value": "c10d"},
        {"name": "PET_RDZV_ENDPOINT", "value": f"job-worker-0.job.{NS}.svc.cluster.local:29500"},
    ]
    host = launch(pod(env), address=PodAddress(worker0, "10.240.0.7"))
    assert host.env["PET_RDZV_ENDPOINT"] == f"{worker0}:29500"
    assert host.env["PET_RDZV_CONF"] == "is_host=true" and host.env["PET_LOCAL_ADDR"] == worker0
    other = launch(pod(env))
    assert other.env["PET_RDZV_CONF"] == "is_host=false" and other.env["PET_LOCAL_ADDR"] == ADDRESS.pod_ip
    kept = launch(pod([*env, {"name": "PET_RDZV_CONF", "value": "join_timeout=60"},
                       {"name": "PET_LOCAL_ADDR", "value": "me"}]))  # fmt: skip
    assert kept.env["PET_RDZV_CONF"] == "join_timeout=60,is_host=false" and kept.env["PET_LOCAL_ADDR"] == "me"
    master = {"name": "MASTER_ADDR", "value": f"job-worker-0.job.{NS}.svc.cluster.local"}
    assert "PET_RDZV_CONF" not in launch(pod([master])).env


# ---------------------------------------------------------------------------------------------
# Exit codes and status
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("returncode", "code", "phase"), [(0, 0, "Succeeded"), (3, 3, "Failed"), (-15, 143, "Failed"),
                                                            (-9, 137, "Failed")])  # fmt: skip
def test_exit_codes_map_to_the_pod_phase(returncode: int, code: int, phase: str) -> None:
    assert exit_code_of(returncode) == code
    patch = exited_status_patch(pod(), code, "10.240.0.7", "127.130.1.1", NOW, "why")
    assert patch["status"]["phase"] == phase
    terminated = patch["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == code and terminated["message"] == "why"
    assert terminated["reason"] == ("Completed" if code == 0 else "Error")


def test_a_pod_that_cannot_run_stays_pending_with_the_reason() -> None:
    patch = waiting_status_patch(pod(), "CreateContainerConfigError", "spec.containers[0].command ...", NOW)
    status = patch["status"]
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"


def test_expand_follows_kubernetes() -> None:
    assert expand("$(A)$(B)$$(A)$", {"A": "1"}) == "1$(B)$(A)$"
