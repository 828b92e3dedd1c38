"""The sandbox's set-up path: `kubefit-sandbox env` puts the cached kubectl on PATH, and a build that waits
for another one says so."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kubefit_sandbox import build, controlplane
from kubefit_sandbox.locks import try_exclusive_lock


def test_env_prints_the_cached_binaries_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubefit_sandbox.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert main(["--state-dir", str(tmp_path / "state"), "env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"export PATH={tmp_path / 'cache' / 'kubefit' / 'bin'}:/usr/bin:/bin" in lines
    assert f"export KUBECONFIG={tmp_path / 'state' / 'kubeconfig'}" in lines


def test_env_adds_the_binaries_dir_to_path_only_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/usr/bin")
    first = controlplane.Sandbox(state_dir=tmp_path / "state").env()["PATH"]
    monkeypatch.setenv("PATH", first)  # a second `eval "$(kubefit-sandbox env)"` in the same shell
    assert controlplane.Sandbox(state_dir=tmp_path / "state").env()["PATH"] == first
    assert first.split(os.pathsep) == [str(tmp_path / "kubefit" / "bin"), "/usr/bin"]


def test_a_build_waiting_for_another_says_so_and_uses_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lock = build.kubefit_cache_dir() / "build.lock"
    lock.parent.mkdir(parents=True)
    holder = try_exclusive_lock(lock)  # "another build" (flock: a second open file conflicts in-process too)
    assert holder is not None
    waiting = threading.Event()
    messages: list[str] = []

    def log(message: str) -> None:
        messages.append(message)
        waiting.set()

    result: list[Path] = []
    waiter = threading.Thread(target=lambda: result.append(build.build_controlplane(log=log)), daemon=True)
    waiter.start()
    try:
        assert waiting.wait(10), "the waiting build printed nothing"
        assert "another control-plane build holds" in messages[0] and str(lock) in messages[0]
        # The other build finishes: binaries in the cache, lock released.
        cache = build.controlplane_cache_dir()
        cache.mkdir(parents=True)
        for name in build.CONTROL_PLANE_BINARIES:
            (cache / name).write_text("#!/bin/sh\n")
            (cache / name).chmod(0o755)
        (cache / "BUILD_INFO").write_text("kubernetes 1.20.2\n")
    finally:
        os.close(holder)
    waiter.join(10)
    assert result == [cache]
    assert len(messages) == 1  # it built nothing itself
