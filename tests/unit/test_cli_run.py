"""`kubefit run` against an API server it cannot reach: one line naming the server and the cause, exit 1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# kopf retries a failed request for about a minute (its error_backoffs); here once, after 10 ms.
FAST_RETRIES = """
import sys
from kubefit.controller import runner

settings = runner.operator_settings

def fast():
    fast = settings()
    fast.networking.error_backoffs = [0.01]
    return fast

runner.operator_settings = fast
from kubefit.cli.main import main

sys.exit(main(["run", "--metrics-port", "0", "--liveness-port", "0", "--checkpoint-port", "0"]))
"""


def closed_port() -> int:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def kubeconfig(tmp_path: Path, server: str) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "main",
        "users": [{"name": "u", "user": {"token": "t"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_an_unreachable_api_server_ends_run_in_one_line(tmp_path: Path) -> None:
    # Through kopf itself: what escapes kopf.run is aiohttp's ClientConnectorError, which ended the process
    # in two chained tracebacks (kopf's log of it, then the uncaught one).
    server = f"https://127.0.0.1:{closed_port()}"
    result = subprocess.run(
        [sys.executable, "-c", FAST_RETRIES],
        capture_output=True,
        text=True,
        timeout=25,
        env={**os.environ, "KUBECONFIG": kubeconfig(tmp_path, server), "KUBEFIT_CATALOG": ""},
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"kubefit run: cannot reach the API server at {server}: Connection refused"
    )


def test_the_cause_of_a_failed_name_lookup_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp import ClientConnectorDNSError
    from kubernetes import client

    from kubefit.cli.run import cannot_reach

    configuration = client.Configuration()
    configuration.host = "https://api.example.invalid:6443"
    monkeypatch.setattr(client.Configuration, "get_default_copy", lambda: configuration)

    class Key:
        host, port, ssl = "api.example.invalid", 6443, True

    lookup = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert cannot_reach(ClientConnectorDNSError(Key(), lookup)) == (  # type: ignore[arg-type]
        "kubefit run: cannot reach the API server at https://api.example.invalid:6443: Name or service not known"
    )
