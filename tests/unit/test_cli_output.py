"""Output that cannot be written: a closed pipe ends `kubefit crd` and `kubefit size` quietly (exit 0), a
full disk or a closed standard output in one line (exit 1), never a traceback. Each runs with standard
output buffered (a file, a pipe) and unbuffered (PYTHONUNBUFFERED): buffered, a short output fails only at
the interpreter's last flush."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "examples" / "quickstart.yaml")
COMMANDS = {
    "crd": ["crd"],
    "size-table": ["size", "-f", QUICKSTART],
    "size-json": ["size", "-f", QUICKSTART, "-o", "json"],
}


def kubefit(argv: list[str], stdout: int, buffered: bool) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "kubefit.cli.main", *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=25,
        env={**env, "KUBEFIT_CATALOG": ""},
    )


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_reader_that_left_ends_the_command_quietly(command: str, buffered: bool) -> None:
    # `kubefit crd | head`: crd printed a BrokenPipeError traceback; size, buffered, "Exception ignored".
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = kubefit(COMMANDS[command], write_end, buffered)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("crd", "kubefit crd: cannot write the CRD: No space left on device"),
        ("size-table", "error: cannot write the output: No space left on device"),
        ("size-json", "error: cannot write the output: No space left on device"),
    ],
)
def test_a_full_disk_is_one_line_and_exit_1(command: str, message: str, buffered: bool) -> None:
    # crd printed a traceback; size called it "internal error while sizing (OSError ...); please report it"
    # or, buffered, failed at exit ("Exception ignored", status 120).
    with open("/dev/full", "w") as full:
        result = kubefit(COMMANDS[command], full.fileno(), buffered)
    assert (result.returncode, result.stderr) == (1, message + "\n")


@pytest.mark.parametrize("command", [*COMMANDS, "top"])
def test_a_closed_standard_output_is_one_line_and_exit_1(command: str) -> None:
    # `kubefit crd >&-`: Python starts with sys.stdout None; crd and top printed an AttributeError
    # traceback, size called it an internal error to report.
    argv = COMMANDS.get(command, ["top"])
    result = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" >&-', sys.executable, "-m", "kubefit.cli.main", *argv],
        stderr=subprocess.PIPE,
        text=True,
        timeout=25,
        env={**os.environ, "KUBEFIT_CATALOG": "", "KUBECONFIG": "/nonexistent"},
    )
    name = argv[0]
    assert (result.returncode, result.stderr) == (
        1,
        f"kubefit {name}: standard output is closed: nothing can be printed\n",
    )
