"""`kubefit sandbox build|up|down|status|env|kubectl` (and `node ...` when the node agent is present)."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

DEFAULT_CLUSTER_FILE = Path("examples/sandbox/cluster.yaml")
_REPO_ROOT = Path(__file__).resolve().parents[3]
NODE_AGENT_MODULE = "kubefit.sandbox.nodeagent"


def _node_agent() -> ModuleType | None:
    """kubefit.sandbox.nodeagent if it has been written (it is optional)."""
    try:
        return importlib.import_module(NODE_AGENT_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != NODE_AGENT_MODULE:
            raise
        return None


def _sandbox(args: argparse.Namespace) -> Any:
    from kubefit.sandbox.controlplane import Sandbox

    return Sandbox(state_dir=args.state_dir)


def _default_cluster_file() -> Path | None:
    for candidate in (DEFAULT_CLUSTER_FILE, _REPO_ROOT / DEFAULT_CLUSTER_FILE):
        if candidate.is_file():
            return candidate.resolve()
    return None


def _build(args: argparse.Namespace) -> int:
    from kubefit.sandbox.build import build_controlplane, cached_binaries, controlplane_cache_dir

    if cached_binaries() is not None and not args.force:
        print(f"control-plane binaries already cached in {controlplane_cache_dir()} (use --force to rebuild)")
        return 0
    print(build_controlplane(force=args.force, keep_source=args.keep_source))
    return 0


def _up(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args)
    sandbox.up(timeout=args.timeout)
    if args.no_agent:
        return 0
    agent = _node_agent()
    start_agent = getattr(agent, "start_agent", None)
    if start_agent is not None:
        cluster_file = Path(args.cluster).resolve() if args.cluster else _default_cluster_file()
        start_agent(sandbox, cluster_file)
    return 0


def _down(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args)
    # The node agent talks to the API server: stop it first. Its stop_agent takes the state dir.
    stop_agent = getattr(_node_agent(), "stop_agent", None)
    if stop_agent is not None:
        stop_agent(sandbox.state_dir)
    if args.purge:
        sandbox.purge()
    else:
        sandbox.down()
    return 0


def _status(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args)
    components = sandbox.status()
    for component in components:
        state = "alive" if component.alive else "DOWN"
        pid = component.pid if component.pid is not None else "-"
        print(f"{component.name:<26} {state:<6} pid {pid}")
    all_alive = all(component.alive for component in components)
    if all_alive:
        ready = sandbox.api_get("/readyz")[0] == 200
        print(f"{'api /readyz':<26} {'ok' if ready else 'FAILING':<6} {sandbox.api_url}")
        all_alive = ready
    print(f"state dir: {sandbox.state_dir}")
    return 0 if all_alive else 1


def _env(args: argparse.Namespace) -> int:
    for name, value in _sandbox(args).env().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _kubectl(args: argparse.Namespace) -> int:
    kubectl_args = list(args.kubectl_args)
    if kubectl_args[:1] == ["--"]:
        kubectl_args = kubectl_args[1:]
    command = _sandbox(args).kubectl_command(*kubectl_args)
    sys.stdout.flush()
    return subprocess.call(command)


def register(commands: Any) -> None:
    sandbox = commands.add_parser(
        "sandbox",
        help="a real local Kubernetes control plane (etcd, apiserver, scheduler, controller manager)",
        description="Runs a real Kubernetes 1.20 control plane on 127.0.0.1, built from Debian's sources.",
    )
    sandbox.add_argument(
        "--state-dir",
        default=os.environ.get("KUBEFIT_SANDBOX_DIR"),
        help="where PIDs, logs, keys and the kubeconfig live (default: $KUBEFIT_SANDBOX_DIR or "
        "~/.cache/kubefit/sandbox)",
    )
    actions = sandbox.add_subparsers(dest="sandbox_command", required=True, metavar="ACTION")

    build = actions.add_parser("build", help="build and cache the control-plane binaries (~6 min cold)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--keep-source", action="store_true", help="keep the unpacked source tree")
    build.set_defaults(handler=_build)

    up = actions.add_parser("up", help="start the control plane (builds it first if needed); idempotent")
    up.add_argument(
        "--cluster",
        metavar="FILE",
        help=f"cluster description for the node agent (default: {DEFAULT_CLUSTER_FILE} if it exists)",
    )
    up.add_argument("--no-agent", action="store_true", help="start only the control plane")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    up.set_defaults(handler=_up)

    down = actions.add_parser("down", help="stop the processes `up` started (keeps data and the build)")
    down.add_argument("--purge", action="store_true", help="also delete the state dir (etcd data, keys)")
    down.set_defaults(handler=_down)

    status = actions.add_parser("status", help="show each component; exit 0 only if all are up")
    status.set_defaults(handler=_status)

    env = actions.add_parser("env", help='print exports; use: eval "$(kubefit sandbox env)"')
    env.set_defaults(handler=_env)

    kubectl = actions.add_parser(
        "kubectl",
        help="run kubectl against the sandbox (put -- before args that start with -)",
        add_help=False,
    )
    kubectl.add_argument("kubectl_args", nargs=argparse.REMAINDER)
    kubectl.set_defaults(handler=_kubectl)

    add_node_commands = getattr(_node_agent(), "add_node_commands", None)
    if add_node_commands is not None:
        add_node_commands(actions)
