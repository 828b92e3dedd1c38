"""Fixtures for end-to-end tests against the real local control plane (kubefit sandbox)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kubefit.sandbox.controlplane import Sandbox, default_state_dir
from kubefit.sandbox.nodeagent import stop_agent


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The sandbox, started once per test run (a developer's running sandbox is reused).

    When none runs, the run gets a cluster of its own in a fresh state dir, so nothing an earlier run
    left in etcd (nodes added by hand, jobs) leaks into this one. Fails, never skips, when the control
    plane cannot come up: a broken sandbox must not look like a green run. It is stopped at the end
    only if this fixture started it.
    """
    control_plane = Sandbox()
    already_up = control_plane.is_up()
    if not already_up:
        control_plane = Sandbox(state_dir=default_state_dir().with_name("sandbox-e2e"))
        control_plane.purge()
    try:
        control_plane.up()
    except Exception as error:  # noqa: BLE001 - any failure to start is a test failure
        pytest.fail(f"kubefit sandbox could not come up ({control_plane.state_dir}): {error}", pytrace=False)
    previous_kubeconfig = os.environ.get("KUBECONFIG")
    # Lets code under test that reads KUBECONFIG (kopf, kubernetes client) find the sandbox.
    os.environ["KUBECONFIG"] = str(control_plane.kubeconfig_path)
    try:
        yield control_plane
    finally:
        if previous_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous_kubeconfig
        if not already_up:
            stop_agent(control_plane.state_dir)  # it would outlive its API server by a minute
            control_plane.down()


# The operator tier's fixtures (kube, node_agent, operator, a namespace per test), shared by every module.
from operator_support import kube, namespace, namespace_prefix, node_agent, operator  # noqa: E402, F401
