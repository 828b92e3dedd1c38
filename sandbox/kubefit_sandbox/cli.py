"""`kubefit-sandbox build|up|down|status|env|kubectl|tools|node|logs|telemetry`: argument parsing and output only.

The work is done in kubefit_sandbox (controlplane, nodeagent, nodes, binaries); this module turns its
results and errors into printed lines and exit statuses.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# None of these imports the kubernetes package (it is imported when a client is made), so that
# `kubefit-sandbox --help` and `env` start fast.
from kubefit_sandbox.cluster import ACCELERATOR_LABEL, POOL_LABEL, ClusterConfigError, load_cluster_config
from kubefit_sandbox.errors import NodeAgentError
from kubefit_sandbox.kubeclient import core_api, new_api_client, response_json
from kubefit_sandbox.nodeagent import CLUSTER_FILE_ENV, running_agent_pid, start_agent, stop_agent
from kubefit_sandbox.nodes import NodeRequest, NodeRequestError, add_nodes, list_sandbox_nodes, remove_node
from kubefit_sandbox.podstatus import TERMINAL_PHASES
from kubefit_sandbox.processpods import EXIT_FILE, LOG_FILE, latest_run
from kubefit_sandbox.telemetry import read_telemetry_url

PROG = "kubefit-sandbox"
DEFAULT_CLUSTER_FILE = Path("examples/sandbox/cluster.yaml")
_REPO_ROOT = Path(__file__).resolve().parents[2]


def _sandbox(args: argparse.Namespace) -> Any:
    from kubefit_sandbox.controlplane import Sandbox

    return Sandbox(state_dir=args.state_dir)


def _default_cluster_file() -> Path | None:
    """$KUBEFIT_SANDBOX_CLUSTER, else examples/sandbox/cluster.yaml (here or in the repository)."""
    override = os.environ.get(CLUSTER_FILE_ENV)
    if override:
        return Path(override).resolve()
    for candidate in (DEFAULT_CLUSTER_FILE, _REPO_ROOT / DEFAULT_CLUSTER_FILE):
        if candidate.is_file():
            return candidate.resolve()
    return None


def _build(args: argparse.Namespace) -> int:
    from kubefit_sandbox.build import build_controlplane, cached_binaries, controlplane_cache_dir

    if cached_binaries() is not None and not args.force:
        print(f"control-plane binaries already cached in {controlplane_cache_dir()} (use --force to rebuild)")
        return 0
    print(build_controlplane(force=args.force, keep_source=args.keep_source))
    return 0


def _up(args: argparse.Namespace) -> int:
    cluster_file = None
    if not args.no_agent:
        cluster_file = Path(args.cluster).resolve() if args.cluster else _default_cluster_file()
        if cluster_file is not None:
            # A bad cluster file is refused (ClusterConfigError, exit 2) before anything is built or started;
            # start_agent reads the file it was checked from again when it creates the nodes.
            load_cluster_config(cluster_file)
    sandbox = _sandbox(args)
    sandbox.up(timeout=args.timeout)
    if args.no_agent:
        return 0
    start_agent(sandbox, cluster_file)
    return 0


def _down(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args)
    # The node agent talks to the API server: stop it first.
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
    url = read_telemetry_url(sandbox.state_dir) if running_agent_pid(sandbox.state_dir) else None
    print(f"{'GPU telemetry':<26} {url or '- (no node agent)'}")
    print(f"state dir: {sandbox.state_dir}")
    return 0 if all_alive else 1


def _telemetry(args: argparse.Namespace) -> int:
    """Prints the node agent's GPU telemetry address (docs/sandbox.md, "GPU telemetry")."""
    state_dir = _state_dir(args)
    url = read_telemetry_url(state_dir) if running_agent_pid(state_dir) else None
    if url is None:
        print(f"{PROG} telemetry: no node agent runs for {state_dir} (start one with `{PROG} up`)",
              file=sys.stderr)  # fmt: skip
        return 1
    print(url)
    return 0


def _env(args: argparse.Namespace) -> int:
    for name, value in _sandbox(args).env().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _tools(args: argparse.Namespace) -> int:
    from kubefit_sandbox.binaries import ensure_binaries

    for name, path in ensure_binaries().items():
        print(f"{name}: {path}")
    return 0


def _kubectl(args: argparse.Namespace) -> int:
    kubectl_args = list(args.kubectl_args)
    if kubectl_args[:1] == ["--"]:
        kubectl_args = kubectl_args[1:]
    command = _sandbox(args).kubectl_command(*kubectl_args)
    sys.stdout.flush()
    return subprocess.call(command)


# ---------------------------------------------------------------------------------------------
# `kubefit-sandbox node add|remove|list`
# ---------------------------------------------------------------------------------------------


def _kubeconfig_for(args: argparse.Namespace) -> Path:
    if getattr(args, "kubeconfig", None):
        return Path(args.kubeconfig)
    state_dir = getattr(args, "state_dir", None)
    if not state_dir:
        from kubefit_sandbox.controlplane import default_state_dir

        state_dir = default_state_dir()
    return Path(state_dir) / "kubeconfig"


def _run_node_command(args: argparse.Namespace, action: Callable[[Any], int]) -> int:
    from kubernetes.client import ApiException

    kubeconfig = _kubeconfig_for(args)
    if not kubeconfig.is_file():
        print(
            f"{PROG}: no sandbox kubeconfig at {kubeconfig}: run `kubefit-sandbox up` first", file=sys.stderr
        )
        return 1
    try:
        return action(core_api(new_api_client(kubeconfig)))
    except NodeAgentError as exc:
        print(f"{PROG}: {_as_option_error(exc)}", file=sys.stderr)
        return 2
    except ApiException as exc:
        print(f"{PROG}: API server answered {exc.status} {exc.reason}: {exc.body}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: cannot reach the sandbox API server: {exc}", file=sys.stderr)
        return 1


# NodeRequest fields as `node add` spells them.
_OPTION_FOR_FIELD = {"accelerator": "--accelerator", "count": "--count", "pool": "--pool", "name": "--name",
                     "nodes": "--nodes", "cpu": "--cpu", "memory": "--memory"}  # fmt: skip


def _as_option_error(error: NodeAgentError) -> str:
    """ "cpu must be ..." -> "--cpu must be ...": a bad request is worded as the option the user typed."""
    if isinstance(error, NodeRequestError) and error.field in _OPTION_FOR_FIELD:
        return _OPTION_FOR_FIELD[error.field] + error.detail
    return str(error)


def _node_add(args: argparse.Namespace) -> int:
    request = NodeRequest(
        accelerator=args.accelerator,
        count=args.count,
        pool=args.pool,
        name=args.name,
        nodes=args.nodes,
        cpu=args.cpu,
        memory=args.memory,
        processes=args.processes,
    )

    def action(core: Any) -> int:
        names = add_nodes(core, request)
        print(f"added {', '.join(names)}")
        return 0

    return _run_node_command(args, action)


def _node_remove(args: argparse.Namespace) -> int:
    def action(core: Any) -> int:
        for name in args.names:
            deleted = remove_node(core, name)
            print(f"removed {name} (deleted {deleted} pod(s) bound to it)")
        return 0

    return _run_node_command(args, action)


def node_rows(nodes: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Rows of `node list`: NAME POOL ACCELERATOR DEVICES CPU MEMORY READY PODS."""
    active = [p for p in pods if (p.get("status") or {}).get("phase") not in TERMINAL_PHASES]
    rows = []
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        labels = node["metadata"].get("labels") or {}
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        devices = [f"{value} {key}" for key, value in allocatable.items() if "/" in key]
        conditions = (node.get("status") or {}).get("conditions") or []
        ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), "Unknown")
        name = node["metadata"]["name"]
        rows.append(
            [
                name,
                labels.get(POOL_LABEL, ""),
                labels.get(ACCELERATOR_LABEL, ""),
                ", ".join(devices) or "-",
                str(allocatable.get("cpu", "")),
                str(allocatable.get("memory", "")),
                "True" if ready == "True" else ready,
                str(sum(1 for p in active if p["spec"].get("nodeName") == name)),
            ]
        )
    return rows


def _node_list(args: argparse.Namespace) -> int:
    def action(core: Any) -> int:
        nodes, _ = list_sandbox_nodes(core)
        pods = response_json(
            core.list_pod_for_all_namespaces(field_selector="spec.nodeName!=", _preload_content=False)
        )
        rows = [["NAME", "POOL", "ACCELERATOR", "DEVICES", "CPU", "MEMORY", "READY", "PODS"]]
        rows += node_rows(nodes, pods.get("items", []))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return 0

    return _run_node_command(args, action)


def add_node_commands(subparsers: Any) -> None:
    """Adds `node add|remove|list` to the `kubefit-sandbox` commands."""
    node = subparsers.add_parser("node", help="add, remove and list simulated GPU/TPU nodes")
    node.add_argument("--kubeconfig", help="the sandbox's kubeconfig (default: <state dir>/kubeconfig)")
    actions = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="add simulated node(s) while the sandbox runs")
    add.add_argument(
        "--accelerator", default=None, help="catalog name, e.g. nvidia-h100-80gb (omit: CPU-only)"
    )
    add.add_argument("--count", type=int, default=None, help="accelerators per node (default: the pool's)")
    add.add_argument("--pool", default=None, help="pool name (default: the pool of that accelerator)")
    add.add_argument("--name", default=None, help="node name (default: <pool>-<first free index>)")
    add.add_argument("--nodes", type=int, default=1, help="how many nodes to add (default 1)")
    add.add_argument("--cpu", default=None, help="CPU capacity, e.g. 96 (default: the pool's)")
    add.add_argument("--memory", default=None, help="memory capacity, e.g. 1Ti (default: the pool's)")
    add.add_argument(
        "--processes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the node's pods as local processes (default: as the pool's nodes do; docs/sandbox.md)",
    )
    add.set_defaults(handler=_node_add)

    remove = actions.add_parser("remove", help="delete simulated node(s) and the pods bound to them")
    remove.add_argument("names", nargs="+", metavar="NAME")
    remove.set_defaults(handler=_node_remove)

    listing = actions.add_parser("list", help="list the simulated nodes")
    listing.set_defaults(handler=_node_list)


# ---------------------------------------------------------------------------------------------
# `kubefit-sandbox logs NAMESPACE/POD [--follow]`
# ---------------------------------------------------------------------------------------------

FOLLOW_POLL_S = 0.2


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    from kubefit_sandbox.controlplane import default_state_dir

    return Path(default_state_dir())


def _copy_new_output(log_file: Any) -> bool:
    chunk = log_file.read()
    if chunk:
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    return bool(chunk)


def _logs(args: argparse.Namespace) -> int:
    namespace, _, pod = args.pod.partition("/")
    if not namespace or not pod:
        print(f"{PROG} logs: give the pod as NAMESPACE/POD, got {args.pod!r}", file=sys.stderr)
        return 2
    state_dir = _state_dir(args)
    run = latest_run(state_dir, namespace, pod)
    if run is None:
        print(
            f"{PROG} logs: no process ran for pod {namespace}/{pod} in {state_dir} (only pods on "
            "`processes: true` nodes have logs; a pod that could not start says why in its status)",
            file=sys.stderr,
        )
        return 1
    if not (run / LOG_FILE).is_file():  # a run directory an earlier agent made for a pod it then refused
        print(
            f"{PROG} logs: pod {namespace}/{pod} did not start a process (its status says why)",
            file=sys.stderr,
        )
        return 1
    with open(run / LOG_FILE, "rb") as log_file:
        _copy_new_output(log_file)
        # --follow: until the process has exited and its last output is printed (or Ctrl-C).
        while args.follow and not (run / EXIT_FILE).exists():
            if not _copy_new_output(log_file):
                time.sleep(FOLLOW_POLL_S)
        _copy_new_output(log_file)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A real local Kubernetes 1.20 control plane (etcd, kube-apiserver, kube-scheduler, "
        "kube-controller-manager) on 127.0.0.1, built from Debian's sources, with simulated GPU/TPU nodes.",
    )
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("KUBEFIT_SANDBOX_DIR"),
        help="where PIDs, logs, keys and the kubeconfig live (default: $KUBEFIT_SANDBOX_DIR or "
        "~/.cache/kubefit/sandbox)",
    )
    actions = parser.add_subparsers(dest="sandbox_command", required=True, metavar="COMMAND")

    build = actions.add_parser("build", help="build and cache the control-plane binaries (~6 min cold)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--keep-source", action="store_true", help="keep the unpacked source tree")
    build.set_defaults(handler=_build)

    tools = actions.add_parser("tools", help="fetch kubectl and helm into ~/.cache/kubefit/bin (once)")
    tools.set_defaults(handler=_tools)

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

    env = actions.add_parser("env", help=f'print exports; use: eval "$({PROG} env)"')
    env.set_defaults(handler=_env)

    kubectl = actions.add_parser(
        "kubectl",
        help="run kubectl against the sandbox (put -- before args that start with -)",
        add_help=False,
    )
    kubectl.add_argument("kubectl_args", nargs=argparse.REMAINDER)
    kubectl.set_defaults(handler=_kubectl)

    add_node_commands(actions)
    _add_pod_commands(actions)
    return parser


def _add_pod_commands(actions: Any) -> None:
    """`logs` (a process pod's output) and `telemetry` (the address of the pods' GPU telemetry)."""
    logs = actions.add_parser("logs", help="print a process pod's output (stdout and stderr)")
    logs.add_argument("pod", metavar="NAMESPACE/POD")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the process exits")
    logs.set_defaults(handler=_logs)

    telemetry = actions.add_parser(
        "telemetry", help="print the URL of the simulated GPUs' dcgm-exporter-shaped /metrics"
    )
    telemetry.set_defaults(handler=_telemetry)


def _error_status(error: Exception) -> int | None:
    """The exit status for an error whose message says it all (the sandbox's own errors, and the system's:
    a full disk, a permission), printed as one message instead of a traceback; None for any other error.
    2: a cluster file that cannot be used (a bad input); 1: the rest."""
    from kubefit_sandbox.binaries import BinariesError
    from kubefit_sandbox.build import BuildError
    from kubefit_sandbox.controlplane import SandboxError

    if isinstance(error, ClusterConfigError):
        return 2
    if isinstance(error, BuildError | BinariesError | SandboxError | NodeAgentError | OSError):
        return 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except Exception as error:
        status = _error_status(error)
        if status is None:
            raise
        print(f"{PROG}: {error}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
