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
SANDBOX_ROOT = REPO / "sandbox"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

EXPECTED_LAYERS = [
    "kubefit.cli",
    "kubefit.controller",
    "kubefit.metrics",
    "kubefit.decisions",
    "kubefit.builders",
    "kubefit.sizing",
    "kubefit.api",
]
PURE_CORE = {"kubefit.api", "kubefit.sizing", "kubefit.builders", "kubefit.decisions"}
CLUSTER_LIBRARIES = {"kubernetes", "kopf", "prometheus_client"}
# All the sandbox may take from the operator: quantity parsing, units/timestamps, the accelerator catalog.
SANDBOX_MAY_IMPORT = {"kubefit", "kubefit.api", "kubefit.api.quantity", "kubefit.api.units", "kubefit.sizing",
                      "kubefit.sizing.catalog"}  # fmt: skip
SANDBOX_MUST_NOT_IMPORT = {"kubefit.cli", "kubefit.controller", "kubefit.metrics", "kubefit.decisions",
                           "kubefit.builders"}  # fmt: skip


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
    assert config["root_packages"] == ["kubefit", "kubefit_sandbox"]
    return config["contracts"]


def test_contracts_declare_the_intended_layers_and_forbidden_imports() -> None:
    contracts = _contracts()
    layers = [contract for contract in contracts if contract["type"] == "layers"]
    forbidden = {
        frozenset(contract["source_modules"]): contract
        for contract in contracts
        if contract["type"] == "forbidden"
    }
    assert len(layers) == 1 and layers[0]["layers"] == EXPECTED_LAYERS
    assert set(forbidden) == {frozenset(PURE_CORE), frozenset({"kubefit"}), frozenset({"kubefit_sandbox"})}
    assert set(forbidden[frozenset(PURE_CORE)]["forbidden_modules"]) == CLUSTER_LIBRARIES
    assert forbidden[frozenset({"kubefit"})]["forbidden_modules"] == ["kubefit_sandbox"]
    sandbox = forbidden[frozenset({"kubefit_sandbox"})]
    assert set(sandbox["forbidden_modules"]) == SANDBOX_MUST_NOT_IMPORT
    assert not sandbox.get("allow_indirect_imports", False)  # a chain through another module counts too


def test_the_sandbox_imports_only_quantity_units_and_the_catalog_from_the_operator() -> None:
    # The forbidden contract names what the sandbox must not reach; this names all it may.
    import grimp

    graph = grimp.build_graph("kubefit_sandbox", "kubefit")
    imported = {
        imported
        for module in graph.find_children("kubefit_sandbox") | {"kubefit_sandbox"}
        for imported in graph.find_modules_directly_imported_by(module)
        if imported == "kubefit" or imported.startswith("kubefit.")
    }
    assert imported, "the sandbox should use the operator's quantity parsing and catalog"
    assert imported <= SANDBOX_MAY_IMPORT, sorted(imported - SANDBOX_MAY_IMPORT)


def test_lint_imports_keeps_every_contract() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_lint_imports_catches_a_violation(tmp_path: Path) -> None:
    # Guards against a config that lint-imports silently passes: a copy of both packages with one violation
    # per contract must break all four: sizing -> kopf (pure core), api -> controller (layers),
    # builders -> kubefit_sandbox (the operator needs no sandbox), kubefit_sandbox -> decisions.
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PACKAGE_ROOT / "kubefit", tmp_path / "kubefit", ignore=ignore)
    shutil.copytree(SANDBOX_ROOT / "kubefit_sandbox", tmp_path / "kubefit_sandbox", ignore=ignore)
    violations = {
        "kubefit/sizing/_violation.py": "import kopf",
        "kubefit/api/_violation.py": "import kubefit.controller",
        "kubefit/builders/_violation.py": "import kubefit_sandbox.cluster",
        "kubefit_sandbox/_violation.py": "import kubefit.decisions.job",
    }
    for path, line in violations.items():
        (tmp_path / path).write_text(f"{line}  # noqa: F401\n")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    result = _lint_imports(tmp_path, pythonpath=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "4 broken" in result.stdout, result.stdout + result.stderr


def test_no_package_is_named_operator() -> None:
    # `operator/` holds the sources but must never become a package: it would shadow the standard
    # library's `operator` module, which many libraries (pydantic, kopf) import.
    assert not (PACKAGE_ROOT / "__init__.py").exists(), "operator/ must stay a plain source folder"
    for init in PACKAGE_ROOT.rglob("__init__.py"):
        assert init.parent.name != "operator", f"{init.parent} is a package named 'operator'"
    spec = importlib.util.find_spec("operator")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent == Path(sysconfig.get_paths()["stdlib"]), spec.origin
