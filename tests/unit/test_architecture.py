"""The package layering holds: import-linter's contracts (pyproject.toml [tool.importlinter]) are kept."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = REPO / "operator"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

EXPECTED_LAYERS = [
    "kubefit.cli",
    "kubefit.controller | kubefit.sandbox",
    "kubefit.metrics",
    "kubefit.decisions",
    "kubefit.builders",
    "kubefit.sizing",
    "kubefit.api",
]
PURE_CORE = {"kubefit.api", "kubefit.sizing", "kubefit.builders", "kubefit.decisions"}
CLUSTER_LIBRARIES = {"kubernetes", "kopf", "prometheus_client"}


def _lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), (
        f"lint-imports is not installed beside {sys.executable} (pip install import-linter)"
    )
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _contracts() -> list[dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert config["root_package"] == "kubefit"
    return config["contracts"]


def test_contracts_declare_the_intended_layers_and_forbidden_imports() -> None:
    contracts = _contracts()
    layers = [contract for contract in contracts if contract["type"] == "layers"]
    forbidden = [contract for contract in contracts if contract["type"] == "forbidden"]
    assert len(layers) == 1 and layers[0]["layers"] == EXPECTED_LAYERS
    assert len(forbidden) == 1
    assert set(forbidden[0]["source_modules"]) == PURE_CORE
    assert set(forbidden[0]["forbidden_modules"]) == CLUSTER_LIBRARIES


def test_lint_imports_keeps_every_contract() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_lint_imports_catches_a_violation(tmp_path: Path) -> None:
    # Guards against a config that lint-imports silently passes: a copy of the package with one
    # forbidden import (sizing -> kopf) and one upward import (api -> controller) must break both contracts.
    shutil.copytree(
        PACKAGE_ROOT / "kubefit", tmp_path / "kubefit", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tmp_path / "kubefit" / "sizing" / "_violation.py").write_text("import kopf  # noqa: F401\n")
    (tmp_path / "kubefit" / "api" / "_violation.py").write_text("import kubefit.controller  # noqa: F401\n")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    result = _lint_imports(tmp_path, pythonpath=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "2 broken" in result.stdout, result.stdout + result.stderr


def test_no_package_is_named_operator() -> None:
    # `operator/` holds the sources but must never become a package: it would shadow the standard
    # library's `operator` module, which many libraries (pydantic, kopf) import.
    assert not (PACKAGE_ROOT / "__init__.py").exists(), "operator/ must stay a plain source folder"
    for init in PACKAGE_ROOT.rglob("__init__.py"):
        assert init.parent.name != "operator", f"{init.parent} is a package named 'operator'"
    spec = importlib.util.find_spec("operator")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent == Path(sysconfig.get_paths()["stdlib"]), spec.origin
