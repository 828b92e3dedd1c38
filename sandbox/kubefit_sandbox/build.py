"""Builds kube-apiserver, kube-scheduler and kube-controller-manager from Debian's source package.

No release binaries can be downloaded on these machines, so the control plane comes from Debian
bookworm's `kubernetes` source package (1.20.2), built with Debian's Go (1.19). The vendored
reflect2 v1.0.1 crashes under Go >= 1.18, so it is patched to the upstream v1.0.2 layout first.
The three binaries are cached under ~/.cache/kubefit/controlplane/<version>-<patch level>/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kubefit_sandbox.locks import exclusive_lock, try_exclusive_lock

KUBERNETES_VERSION = "1.20.2"
# Bump when the patches or build flags change, so that older cached binaries are not reused.
PATCH_LEVEL = "reflect2fix1"
CACHE_KEY = f"v{KUBERNETES_VERSION}-{PATCH_LEVEL}"
CONTROL_PLANE_BINARIES = ("kube-apiserver", "kube-scheduler", "kube-controller-manager")
# Written by _install beside the binaries (what was built, with which Go): a cache without it was not
# completed by _install, so it is not used.
BUILD_INFO = "BUILD_INFO"
SOURCE_PACKAGE = "kubernetes"
PROGRESS_INTERVAL_S = 15.0

Log = Callable[[str], None]


class BuildError(RuntimeError):
    pass


def print_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Cache locations
# ---------------------------------------------------------------------------------------------


def kubefit_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kubefit"


def controlplane_cache_dir() -> Path:
    return kubefit_cache_dir() / "controlplane" / CACHE_KEY


def go_build_cache_dir() -> Path:
    return kubefit_cache_dir() / "go-build"


def source_work_dir() -> Path:
    # A fixed path (not a fresh temp dir) so Go's build cache, whose keys include source paths,
    # is hit when rebuilding.
    return kubefit_cache_dir() / "build" / f"kubernetes-{KUBERNETES_VERSION}"


def _is_usable_binary(path: Path) -> bool:
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return path.is_file() and size > 0 and os.access(path, os.X_OK)


def cached_binaries() -> dict[str, Path] | None:
    """Paths of the three cached binaries, or None if the cache is incomplete: no BUILD_INFO (not written
    by _install), or a binary missing, empty (truncated, e.g. by a crash before its blocks were on disk)
    or not executable."""
    directory = controlplane_cache_dir()
    paths = {name: directory / name for name in CONTROL_PLANE_BINARIES}
    if (directory / BUILD_INFO).is_file() and all(_is_usable_binary(path) for path in paths.values()):
        return paths
    return None


# ---------------------------------------------------------------------------------------------
# reflect2 fix (vendored v1.0.1 -> upstream v1.0.2 layout)
# ---------------------------------------------------------------------------------------------

REFLECT2_DIR = Path("vendor/github.com/modern-go/reflect2")

_OLD_MAPITERINIT = (
    "// m escapes into the return value, but the caller of mapiterinit\n"
    "// doesn't let the return value escape.\n"
    "//go:noescape\n"
    "//go:linkname mapiterinit reflect.mapiterinit\n"
    "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) *hiter\n"
)
# Since Go 1.18 reflect.mapiterinit fills an iterator owned by the caller instead of allocating one.
_NEW_MAPITERINIT = (
    "// mapiterinit fills the caller-owned it (Go >= 1.18 signature; reflect2 v1.0.2).\n"
    "//go:noescape\n"
    "//go:linkname mapiterinit reflect.mapiterinit\n"
    "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)\n"
)
_OLD_HITER = (
    "type hiter struct {\n"
    "\tkey   unsafe.Pointer // Must be in first position.  Write nil to indicate iteration end"
    " (see cmd/internal/gc/range.go).\n"
    "\tvalue unsafe.Pointer // Must be in second position (see cmd/internal/gc/range.go).\n"
    "\t// rest fields are ignored\n"
    "}\n"
)
# The runtime writes the whole iterator, so the struct must be as large as runtime.hiter.
_NEW_HITER = (
    "type hiter struct {\n"
    "\tkey         unsafe.Pointer\n"
    "\tvalue       unsafe.Pointer\n"
    "\tt           unsafe.Pointer\n"
    "\th           unsafe.Pointer\n"
    "\tbuckets     unsafe.Pointer\n"
    "\tbptr        unsafe.Pointer\n"
    "\toverflow    *[]unsafe.Pointer\n"
    "\toldoverflow *[]unsafe.Pointer\n"
    "\tstartBucket uintptr\n"
    "\toffset      uint8\n"
    "\twrapped     bool\n"
    "\tB           uint8\n"
    "\ti           uint8\n"
    "\tbucket      uintptr\n"
    "\tcheckBucket uintptr\n"
    "}\n"
)
_OLD_UNSAFE_ITERATE = (
    "func (type2 *UnsafeMapType) UnsafeIterate(obj unsafe.Pointer) MapIterator {\n"
    "\treturn &UnsafeMapIterator{\n"
    "\t\thiter:      mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj)),\n"
    "\t\tpKeyRType:  type2.pKeyRType,\n"
    "\t\tpElemRType: type2.pElemRType,\n"
    "\t}\n"
    "}\n"
)
_NEW_UNSAFE_ITERATE = (
    "func (type2 *UnsafeMapType) UnsafeIterate(obj unsafe.Pointer) MapIterator {\n"
    "\tvar it hiter\n"
    "\tmapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), &it)\n"
    "\treturn &UnsafeMapIterator{\n"
    "\t\thiter:      &it,\n"
    "\t\tpKeyRType:  type2.pKeyRType,\n"
    "\t\tpElemRType: type2.pElemRType,\n"
    "\t}\n"
    "}\n"
)


def _replace_once(text: str, old: str, new: str, what: str) -> str:
    if new in text:
        return text  # already patched
    count = text.count(old)
    if count != 1:
        raise BuildError(f"reflect2 patch: expected exactly one {what}, found {count}")
    return text.replace(old, new)


def patch_reflect2_unsafe_link(text: str) -> str:
    """unsafe_link.go: full runtime hiter layout and the Go >= 1.18 mapiterinit signature."""
    text = _replace_once(text, _OLD_MAPITERINIT, _NEW_MAPITERINIT, "mapiterinit declaration")
    return _replace_once(text, _OLD_HITER, _NEW_HITER, "hiter struct")


def patch_reflect2_unsafe_map(text: str) -> str:
    """unsafe_map.go: UnsafeIterate hands mapiterinit an iterator it owns."""
    return _replace_once(text, _OLD_UNSAFE_ITERATE, _NEW_UNSAFE_ITERATE, "UnsafeIterate")


def apply_reflect2_fix(source_root: Path) -> None:
    for name, patch in (
        ("unsafe_link.go", patch_reflect2_unsafe_link),
        ("unsafe_map.go", patch_reflect2_unsafe_map),
    ):
        path = source_root / REFLECT2_DIR / name
        path.write_text(patch(path.read_text()))


_FORCED_GOCACHE = 'export GOCACHE="${KUBE_GOPATH}/cache"'
_ENV_GOCACHE = 'export GOCACHE="${GOCACHE:-${KUBE_GOPATH}/cache}"'


def patch_golang_sh_gocache(text: str) -> str:
    """hack/lib/golang.sh forces GOCACHE into _output/; let ours (kept across builds) win."""
    if _ENV_GOCACHE in text:
        return text
    if text.count(_FORCED_GOCACHE) != 1:
        raise BuildError("hack/lib/golang.sh: GOCACHE export not found")
    return text.replace(_FORCED_GOCACHE, _ENV_GOCACHE)


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------


class _Progress:
    """Prints a line every PROGRESS_INTERVAL_S with elapsed time, the step and make's last output."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.started = time.monotonic()
        self.step = "starting"
        self.make_log: Path | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60}m{seconds % 60:02d}s"

    def set_step(self, step: str) -> None:
        self.step = step
        self.log(f"[build {self.elapsed()}] {step}")

    def _make_summary(self) -> str:
        if self.make_log is None or not self.make_log.exists():
            return ""
        lines = [line for line in self.make_log.read_text(errors="replace").splitlines() if line.strip()]
        if not lines:
            return ""
        # With GOFLAGS=-v go prints each package as it compiles: the count shows the build moving.
        packages = sum(1 for line in lines if not line.startswith(("+++", "!!!", "make", "go:")))
        return f" ({packages} packages so far) last: {lines[-1].strip()[:120]}"

    def _run(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            self.log(f"[build {self.elapsed()}] {self.step}...{self._make_summary()}")


def _run_checked(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        output = result.stdout[-2000:] + result.stderr[-4000:]
        raise BuildError(f"{' '.join(command)} failed ({result.returncode}):\n{output}")


def _fetch_source(download_dir: Path) -> Path:
    _run_checked(["apt-get", "source", "--download-only", SOURCE_PACKAGE], cwd=download_dir)
    tarballs = sorted(download_dir.glob(f"{SOURCE_PACKAGE}_*.orig.tar.gz"))
    if not tarballs:
        raise BuildError(f"apt-get source {SOURCE_PACKAGE}: no .orig.tar.gz in {download_dir}")
    return tarballs[-1]


def _unpack(tarball: Path, destination: Path) -> None:
    """Unpacks the tarball's single top-level folder as `destination`."""
    if destination.exists():
        shutil.rmtree(destination)
    staging = Path(tempfile.mkdtemp(prefix="unpack-", dir=destination.parent))
    try:
        # Plain tar (not dpkg-source): it needs no dpkg-dev.
        _run_checked(["tar", "-xzf", str(tarball), "-C", str(staging)], cwd=staging)
        entries = list(staging.iterdir())
        if len(entries) != 1 or not entries[0].is_dir():
            raise BuildError(f"{tarball.name}: expected one top-level folder, got {entries}")
        entries[0].rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make(source_root: Path, progress: _Progress) -> None:
    build_home = kubefit_cache_dir() / "build" / "home"
    build_home.mkdir(parents=True, exist_ok=True)
    go_build_cache_dir().mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(build_home),
        "GOCACHE": str(go_build_cache_dir()),
    }
    env.pop("GOFLAGS", None)  # passed on make's command line instead
    make_log = source_root.parent / "make.log"
    progress.make_log = make_log
    what = " ".join(f"cmd/{name}" for name in CONTROL_PLANE_BINARIES)
    with open(make_log, "w") as log_file:
        process = subprocess.Popen(
            ["make", f"WHAT={what}", "GOFLAGS=-v"],
            cwd=source_root,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        returncode = process.wait()
    if returncode != 0:
        tail = "\n".join(make_log.read_text(errors="replace").splitlines()[-40:])
        raise BuildError(f"make failed ({returncode}); full log: {make_log}\n{tail}")


def _fsync(path: Path) -> None:
    """Flushes a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(built_dir: Path) -> Path:
    """Copies the binaries into the cache atomically: a temp dir renamed into place, its files synced to
    disk first (else a crash soon after the rename can leave the new names on empty files)."""
    final_dir = controlplane_cache_dir()
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{CACHE_KEY}-", dir=final_dir.parent))
    try:
        for name in CONTROL_PLANE_BINARIES:
            source = built_dir / name
            if not source.is_file():
                raise BuildError(f"make did not produce {source}")
            shutil.copy2(source, staging / name)
            (staging / name).chmod(0o755)
        (staging / BUILD_INFO).write_text(
            f"kubernetes {KUBERNETES_VERSION} from Debian source package, patches: {PATCH_LEVEL}\n"
            f"go: {subprocess.run(['go', 'version'], capture_output=True, text=True).stdout.strip()}\n"
        )
        for name in (*CONTROL_PLANE_BINARIES, BUILD_INFO):
            _fsync(staging / name)
        staging.chmod(0o755)
        _fsync(staging)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        staging.rename(final_dir)
        _fsync(final_dir.parent)  # the rename itself
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final_dir


@contextmanager
def _build_lock(log: Log) -> Iterator[None]:
    """Holds build.lock; says so first when another build holds it (a cold build takes minutes, silently
    for this process)."""
    path = kubefit_cache_dir() / "build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = try_exclusive_lock(path)
    if fd is not None:
        try:
            yield
        finally:
            os.close(fd)
        return
    log(
        f"another control-plane build holds {path}: waiting for it to finish "
        f"(its make log: {source_work_dir().parent / 'make.log'})"
    )
    with exclusive_lock(path):
        yield


def build_controlplane(force: bool = False, log: Log = print_log, keep_source: bool = False) -> Path:
    """Builds the three control-plane binaries into the cache (unless cached) and returns that folder."""
    if not force and cached_binaries() is not None:
        return controlplane_cache_dir()
    # Two `up`s at once (e.g. parallel test sessions) must not build into the same work dir.
    with _build_lock(log):
        if not force and cached_binaries() is not None:
            return controlplane_cache_dir()  # another process built it while we waited
        for tool in ("apt-get", "go", "make", "rsync", "tar"):
            if shutil.which(tool) is None:
                raise BuildError(f"'{tool}' not found: run scripts/setup-system.sh first")
        source_root = source_work_dir()
        source_root.parent.mkdir(parents=True, exist_ok=True)
        log(f"building Kubernetes {KUBERNETES_VERSION} control plane into {controlplane_cache_dir()}")
        log(f"  work dir {source_root.parent}, Go cache {go_build_cache_dir()} (cold: ~6 min on 2 cores)")
        with _Progress(log) as progress:
            with tempfile.TemporaryDirectory(prefix="download-", dir=source_root.parent) as download:
                progress.set_step(f"downloading Debian source package '{SOURCE_PACKAGE}'")
                tarball = _fetch_source(Path(download))
                progress.set_step(f"unpacking {tarball.name}")
                _unpack(tarball, source_root)
            progress.set_step("patching vendored reflect2 to the v1.0.2 map iterator layout")
            apply_reflect2_fix(source_root)
            golang_sh = source_root / "hack/lib/golang.sh"
            golang_sh.write_text(patch_golang_sh_gocache(golang_sh.read_text()))
            progress.set_step("make (generating code, then compiling)")
            _make(source_root, progress)
            progress.set_step("installing binaries into the cache")
            final_dir = _install(source_root / "_output/local/bin/linux/amd64")
        if not keep_source:
            shutil.rmtree(source_root, ignore_errors=True)
        log(f"[build {progress.elapsed()}] done: {final_dir}")
        return final_dir
