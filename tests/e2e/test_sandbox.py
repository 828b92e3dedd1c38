"""The real control plane comes up, serves the API, and `up` is idempotent."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from kubefit_sandbox.controlplane import Sandbox

pytestmark = pytest.mark.e2e


def test_readyz_through_kubectl(sandbox: Sandbox) -> None:
    result = sandbox.kubectl("get", "--raw", "/readyz")
    assert result.stdout.strip() == "ok"


def test_all_components_alive(sandbox: Sandbox) -> None:
    assert all(component.alive for component in sandbox.status())
    assert sandbox.is_up()


def test_namespace_and_configmap_round_trip(sandbox: Sandbox) -> None:
    namespace = f"e2e-sandbox-{uuid.uuid4().hex[:8]}"
    sandbox.kubectl("create", "namespace", namespace)
    try:
        # A map-valued field: the API server crashed encoding maps before the reflect2 fix.
        sandbox.kubectl(
            "create",
            "configmap",
            "settings",
            "-n",
            namespace,
            "--from-literal=gpus=8",
            "--from-literal=zone=a",
        )
        fetched = json.loads(
            sandbox.kubectl("get", "configmap", "settings", "-n", namespace, "-o", "json").stdout
        )
        assert fetched["data"] == {"gpus": "8", "zone": "a"}
        # The controller manager is running: it creates the default ServiceAccount in new namespaces.
        deadline = time.monotonic() + 30
        while (
            sandbox.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode != 0
        ):
            assert time.monotonic() < deadline, "default ServiceAccount never appeared in the new namespace"
            time.sleep(0.2)
    finally:
        sandbox.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_up_twice_is_idempotent(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    pids_before = {component.name: component.pid for component in sandbox.status()}
    api_url_before = sandbox.api_url
    said: list[str] = []
    monkeypatch.setattr(sandbox, "log", said.append)
    started = time.monotonic()
    sandbox.up()
    sandbox.up()
    elapsed = time.monotonic() - started
    assert {component.name: component.pid for component in sandbox.status()} == pids_before
    assert sandbox.api_url == api_url_before
    assert sum(line.startswith("sandbox already up:") for line in said) == 2, said
    # At once, not after waiting for anything: a start takes ~15 s, a wait for readiness up to 180 s.
    assert elapsed < 30, f"up on a healthy sandbox took {elapsed:.1f} s"


def test_only_loopback_listeners(sandbox: Sandbox) -> None:
    pids = {component.pid for component in sandbox.status()}
    listening = _listening_sockets_of(pids)
    assert listening, "found no listening sockets for the sandbox processes"
    assert all(address.startswith("127.0.0.1:") for address in listening), listening


def _listening_sockets_of(pids: set[int | None]) -> list[str]:
    """Local addresses of TCP listeners owned by the given PIDs (from /proc, no external tools)."""
    inodes: set[str] = set()
    for pid in pids:
        if pid is None:
            continue
        fd_dir = f"/proc/{pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A = LISTEN
                    addresses.append(_decode_address(local))
    return addresses


def _decode_address(hex_address: str) -> str:
    host_hex, port_hex = hex_address.split(":")
    if len(host_hex) == 8:
        host = ".".join(str(int(host_hex[i : i + 2], 16)) for i in (6, 4, 2, 0))
    else:
        host = f"[ipv6 {host_hex}]"
    return f"{host}:{int(port_hex, 16)}"
