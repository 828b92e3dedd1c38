"""Fixtures for end-to-end tests against the real local control plane (kubefit-sandbox).

Every test run gets a control plane of its own (kubefit_sandbox.ephemeral), never the developer's
sandbox: a running `make demo`, another test run, or state left by an earlier one cannot change what
a test sees, and the run leaves nothing behind (processes, nodes, state dir).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from kubefit_sandbox.controlplane import SANDBOX_DIR_ENV, Sandbox
from kubefit_sandbox.ephemeral import ephemeral_sandbox


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of this folder is an e2e test, with or without its own `pytestmark`: `pytest -m e2e`
    (docs/sandbox.md) must not leave a file out."""
    folder = Path(__file__).resolve().parent
    for item in items:
        if folder in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """This run's own sandbox, in a fresh state dir under ~/.cache/kubefit/ephemeral/.

    Fails, never skips, when the control plane cannot come up: a broken sandbox must not look like a
    green run. At the end its node agent and control plane are stopped and the state dir deleted.
    """
    with ExitStack() as stack:
        try:
            control_plane = stack.enter_context(ephemeral_sandbox("e2e"))
        except Exception as error:  # noqa: BLE001 - any failure to start is a test failure
            pytest.fail(f"kubefit-sandbox could not come up: {error}", pytrace=False)
        # Code under test that reads these (kopf, the kubernetes client, the kubefit CLI) finds this
        # run's sandbox, even in a shell where `eval "$(kubefit-sandbox env)"` points at a demo.
        previous = {name: os.environ.get(name) for name in ("KUBECONFIG", SANDBOX_DIR_ENV)}
        os.environ.update(control_plane.env())
        try:
            yield control_plane
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


# The operator tier's fixtures, shared by every module (see operator_support's docstring).
from operator_support import (  # noqa: E402, F401
    add_pool,
    kube,
    namespace,
    namespace_prefix,
    node_agent,
    operator,
    pool,
)
