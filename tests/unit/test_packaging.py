"""The operator's distribution holds only the operator: its wheel has no sandbox module and its console
script no sandbox command (the sandbox is its own distribution, sandbox/pyproject.toml)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kubefit.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def operator_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # What the Dockerfile copies, in a clean folder: no stale build/ or egg-info of the checkout can leak
    # into the wheel, and the build leaves nothing in the working tree.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "operator" / "kubefit", source / "operator" / "kubefit",
        ignore=shutil.ignore_patterns("__pycache__"),
    )  # fmt: skip
    out = tmp_path_factory.mktemp("wheel")
    # Offline: no build isolation (the virtualenv's setuptools), no index, no dependencies.
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
               "--no-index", "--disable-pip-version-check", "--quiet", "-w", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=source)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("kubefit-*.whl")
    return wheel


@pytest.mark.timeout(150)
def test_the_operator_wheel_contains_no_sandbox_module(operator_wheel: Path) -> None:
    names = zipfile.ZipFile(operator_wheel).namelist()
    modules = [name for name in names if name.endswith(".py")]
    assert (
        "kubefit/cli/main.py" in modules and "kubefit/sizing/catalog.py" in modules
    )  # the operator is there
    assert "kubefit/sizing/accelerators.yaml" in names
    sandbox = [name for name in names if "sandbox" in name.lower()]
    assert sandbox == [], sandbox
    assert {name.split("/")[0] for name in modules} == {"kubefit"}


@pytest.mark.timeout(150)
def test_the_operator_console_script_has_no_sandbox_command(operator_wheel: Path) -> None:
    with zipfile.ZipFile(operator_wheel) as wheel:
        (entry_points,) = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]
        parsed = configparser.ConfigParser()
        parsed.read_string(wheel.read(entry_points).decode())
    assert dict(parsed["console_scripts"]) == {"kubefit": "kubefit.cli.main:main"}


def test_kubefit_help_lists_no_sandbox_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert all(f"    {command} " in help_text for command in ("crd", "size", "run"))
    assert "sandbox" not in help_text
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["sandbox", "up"])
    assert refused.value.code == 2
    assert "invalid choice: 'sandbox'" in capsys.readouterr().err


def test_the_operator_image_gets_no_sandbox() -> None:
    # .dockerignore: everything is left out, then only the operator's sources are let back in.
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in patterns if line and not line.startswith("#")]
    assert patterns[0] == "*"
    assert not any(line.startswith("!") and "sandbox" in line for line in patterns)
    assert "sandbox/" in patterns
    copies = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY")]
    assert copies and not any("sandbox" in line or line.split()[1] == "." for line in copies), copies
