"""The set-up scripts behind `make demo` and `make test`, run against stubs (no apt, no pip, no sandbox):
scripts/setup-system.sh, scripts/demo.sh (both only define functions when sourced), and the Makefile's
virtualenv rule with scripts/setup-venv.sh."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bash(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )


def _stub(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------------------------------------
# scripts/setup-system.sh
# ---------------------------------------------------------------------------------------------


def test_go_gets_the_c_toolchain_that_cgo_needs() -> None:
    result = _bash('source scripts/setup-system.sh; echo "${PACKAGE_FILES[gcc]} ${PACKAGE_FILES[libc6-dev]}"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["/usr/bin/gcc", "/usr/include/stdio.h"]


def test_a_package_counts_as_present_by_a_file_that_need_not_be_executable(tmp_path: Path) -> None:
    header = tmp_path / "stdio.h"
    header.write_text("")
    result = _bash(
        "source scripts/setup-system.sh; "
        f"PACKAGE_FILES=([libc6-dev]={header} [gcc]={tmp_path / 'absent'}); missing_packages"
    )
    assert result.returncode == 0, result.stderr
    assert "gcc" in result.stdout.split() and "libc6-dev" not in result.stdout.split()


def test_install_waits_for_the_apt_lock_and_stops_the_services_the_packages_started(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    _stub(tmp_path / "bin" / "apt-get", f'echo "apt-get $*" >> {log}')
    result = _bash(
        'source scripts/setup-system.sh; SUDO=""; has_deb_src() { true; }; systemd_runs() { true; }; '
        "missing_packages() { echo etcd-server gcc; }; "
        f'systemctl() {{ echo "systemctl $*" >> {log}; }}; main',
        env={"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert "apt-get -o DPkg::Lock::Timeout=600 update -qq" in calls
    assert (
        "apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends etcd-server gcc" in calls
    )
    assert "systemctl disable --now etcd.service" in calls
    assert not any("prometheus" in call for call in calls)  # not installed now: left as it is


# ---------------------------------------------------------------------------------------------
# scripts/demo.sh: the operator's PID file
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def _operator_alive(state_dir: Path, pid: int) -> bool:
    (state_dir / "demo-operator.pid").write_text(f"{pid}\n")
    result = _bash("source scripts/demo.sh; operator_alive", env={"KUBEFIT_SANDBOX_DIR": str(state_dir)})
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def test_the_demo_operator_is_recognised_by_its_command_line(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # A console script like .venv/bin/kubefit: cmdline is "python .../kubefit run ...".
    kubefit = tmp_path / "bin" / "kubefit"
    kubefit.parent.mkdir()
    kubefit.write_text("import time\ntime.sleep(60)\n")
    processes.append(subprocess.Popen([sys.executable, str(kubefit), "run", "--all-namespaces"]))
    assert _operator_alive(tmp_path, processes[-1].pid)
    assert (tmp_path / "demo-operator.pid").exists()


def test_a_pid_file_naming_another_process_is_stale(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # After a reboot the recorded PID may be anyone's: `make demo-down` must not SIGTERM it.
    processes.append(subprocess.Popen(["sleep", "60"]))
    assert not _operator_alive(tmp_path, processes[-1].pid)
    assert not (tmp_path / "demo-operator.pid").exists()
    assert processes[-1].poll() is None  # untouched


def test_a_pid_file_of_an_exited_process_is_stale(tmp_path: Path) -> None:
    exited = subprocess.run(["bash", "-c", "echo $$"], capture_output=True, text=True, check=True)
    assert not _operator_alive(tmp_path, int(exited.stdout))
    assert not (tmp_path / "demo-operator.pid").exists()


# ---------------------------------------------------------------------------------------------
# Makefile: the virtualenv rule (scripts/setup-venv.sh)
# ---------------------------------------------------------------------------------------------

_FAKE_VENV_PYTHON = 'echo "venv-python $*" >> "$STUB_LOG"'
# Stands for Debian's python3: `python3 -m venv [--clear] DIR` writes a fake interpreter into DIR/bin.
_FAKE_PYTHON3 = f"""echo "python3 $*" >> "$STUB_LOG"
venv="${{@: -1}}"
mkdir -p "$venv/bin"
printf '#!/bin/bash\\n%s\\n' '{_FAKE_VENV_PYTHON}' > "$venv/bin/python"
chmod +x "$venv/bin/python"
"""


def _stubbed_env(tmp_path: Path) -> dict[str, str]:
    _stub(tmp_path / "stubs" / "python3", _FAKE_PYTHON3)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAKE")}
    env.update(
        PATH=f"{tmp_path / 'stubs'}:{os.environ['PATH']}",
        STUB_LOG=str(tmp_path / "calls"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    return env


def test_make_recreates_a_virtualenv_whose_creation_was_interrupted(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _stub(venv / "bin" / "python", "exit 1")  # python is there, pip is not
    result = subprocess.run(
        ["make", "--no-print-directory", f"VENV={venv}", f"{venv}/.kubefit-installed"],
        cwd=REPO, env=_stubbed_env(tmp_path), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 2 and calls[0] == f"python3 -m venv --clear {venv}"
    assert calls[1].startswith("venv-python -m pip install ")
    assert "--progress-bar on" in calls[1] and " -q " not in calls[1]  # the torch download shows progress
    assert (venv / ".kubefit-installed").exists()
    assert (tmp_path / "cache" / "kubefit" / "setup.lock").exists()  # taken against a concurrent make
    assert "downloads torch" in result.stdout


def test_a_make_that_waited_for_the_lock_finds_the_virtualenv_installed(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    stamp = venv / ".kubefit-installed"
    stamp.write_text("")
    sources = ("pyproject.toml", "sandbox/pyproject.toml", "trainer/pyproject.toml")
    future = max((REPO / name).stat().st_mtime for name in sources) + 60
    os.utime(stamp, (future, future))
    result = subprocess.run(
        ["bash", "scripts/setup-venv.sh", str(venv)],
        cwd=REPO, env=_stubbed_env(tmp_path), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "calls").exists()  # neither venv nor pip ran
    assert "installed by another make meanwhile" in result.stdout


def test_a_make_waiting_for_the_set_up_lock_says_so(tmp_path: Path) -> None:
    from kubefit_sandbox.locks import try_exclusive_lock

    venv = tmp_path / "venv"
    lock = tmp_path / "cache" / "kubefit" / "setup.lock"
    lock.parent.mkdir(parents=True)
    holder = try_exclusive_lock(lock)  # the other make, installing
    assert holder is not None
    make = subprocess.Popen(
        ["make", "--no-print-directory", f"VENV={venv}", f"{venv}/.kubefit-installed"],
        cwd=REPO, env=_stubbed_env(tmp_path), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert make.stdout is not None
        assert "waiting for the set-up" in make.stdout.readline()
        assert make.poll() is None  # blocked on the lock
    finally:
        os.close(holder)
    assert make.wait(20) == 0
    assert (venv / ".kubefit-installed").exists()
