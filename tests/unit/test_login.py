"""The operator's kopf login: the kubernetes client's configuration, in the operator pod's namespace."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import kopf
import kubernetes
import pytest

from kubefit.controller import handlers

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t0ken}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def _not_in_a_pod(*args: Any, **kwargs: Any) -> None:
    raise kubernetes.config.ConfigException("Service host/port is not set.")


def _login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    # The client reads $KUBECONFIG once, when imported; in a pod (a CI runner) it would log in in-cluster
    # first; and the login sets the client's default configuration, which later tests must not inherit.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.setattr(kubernetes.config, "load_incluster_config", _not_in_a_pod)
    monkeypatch.setattr(kubernetes.client.Configuration, "_default", kubernetes.client.Configuration._default)
    registry = kopf.OperatorRegistry()
    stand_in = SimpleNamespace(
        jobs=SimpleNamespace(keys=list), created_here=lambda key, name: False, api=None
    )
    handlers.register(registry, cast(Any, stand_in), cast(Any, SimpleNamespace()))
    (login,) = [handler for handler in registry._activities.get_all_handlers() if handler.id == "login"]
    return login.fn(logger=logging.getLogger("test"), settings=kopf.OperatorSettings())


def test_kopf_posts_its_events_about_nodes_in_the_operator_pods_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chart grants events: create there (a Role of its own when other namespaces are watched).
    monkeypatch.setenv("POD_NAMESPACE", "kubefit-system")
    info = _login(tmp_path, monkeypatch)
    assert info.default_namespace == "kubefit-system"
    assert info.server == "https://127.0.0.1:6443" and info.token == "t0ken"


def test_outside_a_pod_the_login_is_the_clients_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert _login(tmp_path, monkeypatch).default_namespace is None  # kopf then posts in "default"
