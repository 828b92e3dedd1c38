"""The set-up scripts behind `make demo` and `make test`, run against stubs (no apt, no pip, no sandbox):
scripts/setup-system.sh, scripts/demo.sh (both only define functions when sourced), and the Makefile's
virtualenv rule with scripts/setup-venv.sh."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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


def _restricted_path(tmp_path: Path) -> str:
    """A PATH with bash and the few tools main() needs, without sudo (whether or not this machine has it)."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("awk", "bash", "env", "id", "ls", "realpath", "tr"):
        found = shutil.which(tool)
        assert found is not None, tool
        (tools / tool).symlink_to(found)
    return f"{tmp_path / 'bin'}:{tools}"


@pytest.mark.parametrize(
    ("deb_src", "command"),
    [
        ("true", "su -c 'apt-get update && apt-get install -y --no-install-recommends etcd-server gcc'"),
        ("false", f"su -c 'bash {REPO / 'scripts' / 'setup-system.sh'}'"),  # it also adds the deb-src entry
    ],
)
def test_a_user_without_sudo_is_told_what_to_run_as_root(tmp_path: Path, deb_src: str, command: str) -> None:
    # A minimal Debian has no sudo: "sudo: command not found" said neither what was missing nor what to do.
    log = tmp_path / "calls"
    _stub(tmp_path / "bin" / "apt-get", f'echo "apt-get $*" >> {log}')
    result = _bash(
        f"source scripts/setup-system.sh; SUDO=sudo; has_deb_src() {{ {deb_src}; }}; "
        "missing_packages() { echo etcd-server gcc; }; main",
        env={"PATH": _restricted_path(tmp_path)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not found" not in result.stderr
    assert "sudo is not installed" in result.stderr
    assert "setup-system: missing packages: etcd-server gcc" in result.stderr.splitlines()
    assert result.stderr.splitlines()[-1].strip() == command
    assert not log.exists()  # nothing was attempted


def test_a_failed_apt_get_says_what_to_check(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    _stub(
        tmp_path / "bin" / "apt-get",
        f'echo "apt-get $*" >> {log}; echo "E: mirror unreachable" >&2; exit 100',
    )
    result = _bash(
        'source scripts/setup-system.sh; SUDO=""; has_deb_src() { true; }; '
        "missing_packages() { echo etcd-server; }; main",
        env={"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"},
    )
    assert result.returncode == 100
    hint = result.stderr.splitlines()[-1]
    assert hint.startswith("setup-system: apt-get update failed (exit 100)"), result.stderr
    assert "the network" in hint and "apt mirror" in hint and "rerun `make system`" in hint
    assert [call.split()[3] for call in log.read_text().splitlines()] == ["update"]  # install not tried


_DEBIAN_DEB = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n"
_DEB822_BOTH = _DEBIAN_DEB.replace("Types: deb\n", "Types: deb deb-src\n")
_DEB_SRC_LINE = "deb-src http://deb.debian.org/debian bookworm main\n"


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="asks apt-get, which only Debian has")
@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("", "", False),
        ("sources.list.d/debian.list.disabled", _DEB_SRC_LINE, False),
        ("sources.list.save", _DEB_SRC_LINE, False),
        ("sources.list.d/old.sources", _DEB822_BOTH + "Enabled: no\n", False),
        (
            "sources.list.d/vendor.list",
            "deb-src https://download.example.com/debian bookworm stable\n",
            False,
        ),
        ("sources.list.d/src.list", _DEB_SRC_LINE, True),
        ("sources.list.d/old.sources", _DEB822_BOTH + "Enabled: yes\n", True),
        (
            "sources.list",
            "deb-src [signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n",
            True,
        ),
    ],
    ids=["none", "disabled-file", "save-file", "enabled-no", "other-component", "list", "sources", "mirror"],
)
def test_a_deb_src_entry_counts_only_when_apt_uses_it(
    tmp_path: Path, name: str, text: str, expected: bool
) -> None:
    # A scratch /etc/apt (APT_CONFIG moves apt's Dir::Etc there); debian.sources gives the binary packages.
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "apt.conf.d").mkdir()
    (etc / "sources.list.d" / "debian.sources").write_text(_DEBIAN_DEB)
    if name:
        (etc / name).write_text(text)
    (tmp_path / "apt.conf").write_text(f'Dir::Etc "{etc}";\n')
    result = _bash(
        "source scripts/setup-system.sh; has_deb_src", env={"APT_CONFIG": str(tmp_path / "apt.conf")}
    )
    assert result.returncode == (0 if expected else 1), result.stderr


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
# scripts/demo.sh: waiting for the job (a copy of the script in a fake checkout: stub sandbox and operator)
# ---------------------------------------------------------------------------------------------

_FAKE_SANDBOX = """echo "sandbox $*" >> "$STUB_LOG"
case "$1" in
  env) echo 'export KUBECONFIG=/dev/null' ;;
  kubectl) case "$*" in
    *jsonpath*) if [ -e "$STUB_LOG.deleted" ]; then echo "${STUB_PHASE#*,}"; else echo "${STUB_PHASE%%,*}"; fi ;;
    *delete*) touch "$STUB_LOG.deleted" ;;
  esac ;;
esac"""
# `kubefit run` as the operator: STUB_OPERATOR says how it behaves; `kubefit size` prints a line.
_FAKE_KUBEFIT = """if [ "$1" != run ]; then echo "size: stub"; exit 0; fi
if [ "$STUB_OPERATOR" = crash ]; then
  echo "kubefit: cannot start: bad flag" >&2; echo "operator exited" >> "$STUB_LOG"; exit 1
fi
while :; do /bin/sleep 1; done"""


def _fake_checkout(tmp_path: Path, venv: str = ".venv") -> Path:
    """A copy of scripts/demo.sh and the quickstart in tmp_path/repo, with stubs in repo/<venv>/bin: the
    script runs nothing real, whichever virtualenv it uses."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "examples").mkdir()
    shutil.copy(REPO / "scripts" / "demo.sh", repo / "scripts" / "demo.sh")
    shutil.copy(REPO / "examples" / "quickstart.yaml", repo / "examples" / "quickstart.yaml")
    bin_dir = repo / venv / "bin"
    _stub(bin_dir / "kubefit-sandbox", _FAKE_SANDBOX)
    _stub(bin_dir / "kubefit", _FAKE_KUBEFIT)
    (bin_dir / "python").symlink_to(sys.executable)
    return repo


def _run_demo(tmp_path: Path, operator: str, phase: str) -> subprocess.CompletedProcess[str]:
    repo = _fake_checkout(tmp_path)
    _stub(tmp_path / "stubs" / "sleep", 'echo "sleep $*" >> "$STUB_LOG"')  # polls without waiting
    env = {
        "PATH": f"{tmp_path / 'stubs'}:{os.environ['PATH']}",
        "KUBEFIT_SANDBOX_DIR": str(tmp_path / "state"),
        "STUB_LOG": str(tmp_path / "calls"),
        "STUB_OPERATOR": operator,
        "STUB_PHASE": phase,
    }
    inherited = {name: value for name, value in os.environ.items() if name != "VENV"}  # the default .venv
    try:
        return subprocess.run(
            ["bash", str(repo / "scripts" / "demo.sh")],
            env=inherited | env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        pid_file = tmp_path / "state" / "demo-operator.pid"
        if pid_file.exists():  # a stub operator left running
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


_APPLY = "sandbox kubectl apply -f examples/quickstart.yaml"


def _polls(calls: list[str]) -> list[str]:
    """The demo's polls for Running: the phase reads after it applied the quickstart."""
    after = calls[calls.index(_APPLY) + 1 :] if _APPLY in calls else calls
    return [call for call in after if call.startswith("sandbox kubectl get tj") and "jsonpath" in call]


def test_the_demo_fails_at_once_when_the_operator_died_at_start(tmp_path: Path) -> None:
    result = _run_demo(tmp_path, operator="crash", phase="")
    assert result.returncode == 1, result.stdout + result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(_polls(calls[calls.index("operator exited") :])) <= 1  # not 90 polls of a job nobody runs
    assert "kubefit: cannot start: bad flag" in result.stderr  # the end of the operator's log
    assert "The demo keeps running" not in result.stdout


def test_the_demo_says_it_waits_and_fails_when_the_job_is_not_running_in_time(tmp_path: Path) -> None:
    result = _run_demo(tmp_path, operator="alive", phase="Pending")
    assert result.returncode == 1, result.stdout + result.stderr
    progress = [line for line in result.stdout.splitlines() if "waiting for Running" in line]
    assert [line.split(":")[0].strip() for line in progress] == [f"{s}s" for s in range(10, 91, 10)]
    assert "phase Pending" in progress[0]
    assert "not Running after 90s (phase: Pending)" in result.stderr
    assert "The demo keeps running" not in result.stdout


def test_the_demo_ends_well_when_the_job_runs(tmp_path: Path) -> None:
    result = _run_demo(tmp_path, operator="alive", phase="Running")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(_polls((tmp_path / "calls").read_text().splitlines())) == 1
    assert "size: stub" in result.stdout and "The demo keeps running" in result.stdout


def test_a_quickstart_an_earlier_demo_left_finished_is_started_again(tmp_path: Path) -> None:
    """STUB_PHASE "Succeeded,Running": the phase before the delete, then after. The demo waited 90 s for a
    Running that a finished job never reaches, and failed."""
    result = _run_demo(tmp_path, operator="alive", phase="Succeeded,Running")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    delete = "sandbox kubectl delete tj quickstart --wait=true"
    assert delete in calls and calls.index(delete) < calls.index(_APPLY)
    assert len(_polls(calls)) == 1


def test_the_demo_uses_the_virtualenv_it_is_given(tmp_path: Path) -> None:
    repo = _fake_checkout(tmp_path)  # repo/.venv: stubs too, so a script ignoring VENV runs nothing real
    other = tmp_path / "other-venv"
    _stub(other / "bin" / "kubefit-sandbox", 'echo "other-venv sandbox $*" >> "$STUB_LOG"')
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "demo.sh"), "down"],
        env={**os.environ, "VENV": str(other), "KUBEFIT_SANDBOX_DIR": str(tmp_path / "state"),
             "STUB_LOG": str(tmp_path / "calls")},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calls").read_text().splitlines() == ["other-venv sandbox down"]


def _recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_make_demo_and_demo_down_pass_their_virtualenv_to_the_script() -> None:
    assert _recipe("demo") == ['@VENV="$(VENV)" bash scripts/demo.sh']
    assert _recipe("demo-down") == ['@VENV="$(VENV)" bash scripts/demo.sh down']


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
