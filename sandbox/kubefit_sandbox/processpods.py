"""Process mode: the node agent runs pods bound to `processes: true` nodes as local processes.

What runs, with which environment and address, is decided in kubefit_sandbox.podprocess (pure); this
module starts and stops the processes and reports them as a kubelet would:

* a pod bound to such a node starts at once: the process runs in <state dir>/pods/<namespace>/<pod>/
  <run>/work, with stdout and stderr in <run>/output.log (`kubefit-sandbox logs NAMESPACE/POD`), and the
  pod turns Running with its loopback address as status.podIP;
* the process's exit ends the pod: exit code 0 -> Succeeded, any other -> Failed, with the code (128 + N
  for signal N) in the container's terminated state; <run>/exit-code records it;
* a deleted pod's process group gets SIGTERM at once and SIGKILL (with everything it started) when the grace
  period (deletionTimestamp) ends (a later delete with a shorter grace period brings that forward); the pod
  is removed once the process is gone;
* a pod the agent cannot run (no command, an unsupported `valueFrom`) stays Pending with the reason in
  its container's waiting state, like the kubelet's CreateContainerConfigError;
* a Running pod whose process the agent does not know (it ran under an agent that stopped: the agent
  stops its processes when it stops) is reported Failed (137).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from kubefit_sandbox.nodes import delete_pod_now
from kubefit_sandbox.podprocess import (
    LOOPBACK_FALLBACK_CIDR,
    LaunchContext,
    PeerLookup,
    PodAddress,
    ProcessSpecError,
    build_launch,
    exit_code_of,
    pod_loopback_ip,
)
from kubefit_sandbox.podstatus import (
    TERMINAL_PHASES,
    PodIPAllocator,
    exited_status_patch,
    parse_rfc3339,
    rfc3339,
    running_status_patch,
    waiting_status_patch,
)

PODS_DIR = "pods"
LOG_FILE = "output.log"
EXIT_FILE = "exit-code"
WORK_DIR = "work"
START_FAILED_EXIT_CODE = 128  # what container runtimes report when the command cannot be started
LOST_EXIT_CODE = 137
STOP_ALL_GRACE_S = 2.0
# Pauses between the tries of a status write (Running, the exit) that failed on a connection error, a 5xx or
# a 409: a few short tries, never for ever (the write is made with the lock held).
STATUS_WRITE_BACKOFF_S = (0.2, 0.5, 1.0)

log = logging.getLogger("kubefit_sandbox.nodeagent")


class Scheduler(Protocol):
    def schedule(self, key: str, delay_s: float, call: Callable[[], None]) -> None: ...
    def cancel(self, key: str) -> None: ...


@dataclass(frozen=True)
class ProcessNode:
    """The node a process pod is bound to: its name and InternalIP (the pod's hostIP)."""

    name: str
    internal_ip: str


def pod_runs_dir(state_dir: str | Path, namespace: str, name: str) -> Path:
    """<state dir>/pods/<namespace>/<pod>: one <run> directory per pod (uid) of that name."""
    return Path(state_dir) / PODS_DIR / namespace / name


def latest_run(state_dir: str | Path, namespace: str, name: str) -> Path | None:
    """The newest run directory of that pod name (run names start with the start time), or None."""
    runs = pod_runs_dir(state_dir, namespace, name)
    found = sorted(path for path in runs.iterdir() if path.is_dir()) if runs.is_dir() else []
    return found[-1] if found else None


def _processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, session id) of every process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                found.append((int(entry.name), int(fields[1]), int(fields[3])))
            except (OSError, IndexError, ValueError):
                continue
    return found


def process_tree(root: int) -> list[int]:
    """root, every process descended from it, and every process of its session (the processes it started
    that were re-parented when their parent exited): what a container's end takes with it."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, parent, _ in table:
        children.setdefault(parent, []).append(pid)
    tree, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return sorted(tree | {pid for pid, _, session in table if session == root})


def _retryable(exc: Exception) -> bool:
    """A connection error, a 5xx or a conflict: worth another try."""
    from kubernetes import client
    from urllib3.exceptions import HTTPError

    if isinstance(exc, client.ApiException):
        return exc.status == 409 or (exc.status or 0) >= 500
    return isinstance(exc, (HTTPError, OSError))


def _with_retries(write: Callable[[], object]) -> None:
    """write(), tried again after each pause of STATUS_WRITE_BACKOFF_S while it fails retryably; the last
    failure is raised (for the caller to log)."""
    for pause in (*STATUS_WRITE_BACKOFF_S, None):
        try:
            write()
            return
        except Exception as exc:
            if pause is None or not _retryable(exc):
                raise
            log.info("status write failed (%s: %s), trying again in %.1fs", type(exc).__name__, exc, pause)
            time.sleep(pause)


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


@dataclass
class PodRun:
    """One process pod this agent started (kept until the pod is deleted, so its exit is not lost)."""

    pod: dict[str, Any]  # the pod as reported Running (its status is the base of the exit patch)
    node: ProcessNode
    ip: str
    directory: Path
    process: subprocess.Popen[bytes]
    exit_code: int | None = None
    deleting: bool = False
    kill_at: datetime | None = None  # when the deleted pod's grace period ends (SIGKILL)
    tree: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        metadata = self.pod["metadata"]
        return f"{metadata['namespace']}/{metadata['name']}"


class ProcessPods:
    """The process pods of one node agent (see the module docstring)."""

    def __init__(
        self, state_dir: str | Path, new_core: Callable[[], Any], ips: PodIPAllocator, timers: Scheduler
    ) -> None:
        self.state_dir = Path(state_dir)
        self._new_core = new_core
        self._ips = ips
        self._timers = timers
        self._runs: dict[str, PodRun] = {}  # by pod uid
        # Runs whose pod is gone from the API while their process still runs (its grace period): by pod uid,
        # until the process exits; its IP stays claimed until then, and stop_all stops them too.
        self._terminating: dict[str, PodRun] = {}
        self._starting: set[str] = set()  # uids being started (claimed, so only one caller starts a pod)
        self._refused: set[str] = set()  # uids reported as not runnable
        self._stopping = False  # set by stop_all: nothing starts after it
        self._lock = threading.Lock()  # held while a status is sent, so Running never lands after an exit
        # The virtualenv's bin (python, torchrun) comes first on the processes' PATH.
        self.bin_dir = str(Path(sys.executable).parent)

    # -- events ---------------------------------------------------------------------------------

    def pod_changed(self, core: Any, pod: Mapping[str, Any], node: ProcessNode) -> None:
        metadata = pod["metadata"]
        uid = metadata["uid"]
        with self._lock:
            run = self._runs.get(uid)
        if metadata.get("deletionTimestamp"):
            if run is not None and run.exit_code is None:
                self._terminate(run, parse_rfc3339(metadata["deletionTimestamp"]))
            else:
                delete_pod_now(core, metadata["namespace"], metadata["name"], uid)
            return
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        if run is not None or phase in TERMINAL_PHASES:
            return
        if phase == "Running":
            self._report_lost(core, pod, node)
            return
        with self._lock:
            # The node watch and the pod watch may both see a new pod: the first to claim it starts it.
            if self._stopping or uid in self._refused or uid in self._runs or uid in self._starting:
                return
            self._starting.add(uid)
        try:
            self._start(core, pod, node)
        finally:
            with self._lock:
                self._starting.discard(uid)

    def pod_deleted(self, pod: Mapping[str, Any]) -> bool:
        """The pod is gone from the API; a process still running (a forced delete, its node removed) gets
        SIGTERM now and SIGKILL after the pod's terminationGracePeriodSeconds.

        True while that process runs: the pod's IP is then released when it exits, not by the caller."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            run = self._runs.pop(uid, None)
            self._refused.discard(uid)
            running = run is not None and run.exit_code is None
            if run is not None and running:
                self._terminating[uid] = run
        if run is not None and running:
            grace = pod["spec"].get("terminationGracePeriodSeconds")
            self._terminate(run, datetime.now(UTC) + timedelta(seconds=30 if grace is None else grace))
        else:
            self._timers.cancel(f"kill/{uid}")
        return running

    def stop_all(self) -> None:
        """SIGTERM to every running process (pods deleted in their grace period included), SIGKILL to what
        is left after STOP_ALL_GRACE_S; nothing starts after this."""
        with self._lock:
            self._stopping = True
            runs = [*self._runs.values(), *self._terminating.values()]
            running = [run for run in runs if run.exit_code is None]
        trees = {id(run): process_tree(run.process.pid) for run in running}
        for run in running:
            _signal_group(run.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_ALL_GRACE_S
        while time.monotonic() < deadline and any(run.process.poll() is None for run in running):
            time.sleep(0.05)
        for run in running:
            _signal_all(trees[id(run)], signal.SIGKILL)

    # -- starting -------------------------------------------------------------------------------

    def _peers(self, namespace: str) -> PeerLookup:
        with self._lock:
            runs = [run.pod for run in self._runs.values() if run.exit_code is None]
        ips = {}
        for pod in runs:
            spec = pod["spec"]
            if pod["metadata"]["namespace"] == namespace and spec.get("hostname") and spec.get("subdomain"):
                ips[(spec["hostname"], spec["subdomain"])] = pod["status"]["podIP"]
        return PeerLookup(ips)

    def _new_run_dir(self, pod: Mapping[str, Any]) -> Path:
        """The path of the pod's run directory (made only once the pod can run: `logs` reads its output)."""
        metadata = pod["metadata"]
        run = f"{time.time_ns() // 1_000_000:013d}-{metadata['uid'][:8]}"
        return pod_runs_dir(self.state_dir, metadata["namespace"], metadata["name"]) / run

    def _start(self, core: Any, pod: Mapping[str, Any], node: ProcessNode) -> None:
        metadata, spec = pod["metadata"], pod["spec"]
        preferred = pod_loopback_ip(metadata["namespace"], metadata["name"], spec.get("hostname"),
                                    spec.get("subdomain"))  # fmt: skip
        address = PodAddress(
            self._ips.claim(metadata["uid"], preferred, LOOPBACK_FALLBACK_CIDR), node.internal_ip
        )
        directory = self._new_run_dir(pod)
        try:
            context = LaunchContext(address, self._peers(metadata["namespace"]), self.bin_dir,
                                    str(directory / WORK_DIR))  # fmt: skip
            launch = build_launch(pod, context)
        except ProcessSpecError as error:
            self._refuse(core, pod, str(error))
            return
        patch = running_status_patch(pod, node.internal_ip, address.pod_ip, rfc3339())
        with self._lock:
            if self._stopping:  # stop_all has begun: it would not stop a process started now
                return
            (directory / WORK_DIR).mkdir(parents=True)
            with open(directory / LOG_FILE, "ab") as output:
                try:
                    process = subprocess.Popen(
                        list(launch.argv), env=dict(launch.env), cwd=directory / WORK_DIR,
                        stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                except OSError as error:
                    message = f"cannot start {launch.argv[0]!r}: {error.strerror}"
                    output.write(f"kubefit-sandbox: {message}\n".encode())
                    (directory / EXIT_FILE).write_text(f"{START_FAILED_EXIT_CODE}\n")
                    failed = exited_status_patch(pod, START_FAILED_EXIT_CODE, node.internal_ip,
                                                 address.pod_ip, rfc3339(), message)  # fmt: skip
                    core.patch_namespaced_pod_status(metadata["name"], metadata["namespace"], failed)
                    log.warning("pod %s/%s: %s", metadata["namespace"], metadata["name"], message)
                    return
            run = PodRun({**pod, "status": patch["status"]}, node, address.pod_ip, directory, process)
            self._runs[metadata["uid"]] = run
            # Its reaper at once, so that the process has one even if the Running write fails; the exit is
            # reported after that write all the same (_wait needs the lock).
            threading.Thread(
                target=self._wait, args=(run,), name=f"process-{process.pid}", daemon=True
            ).start()
            _with_retries(
                partial(core.patch_namespaced_pod_status, metadata["name"], metadata["namespace"], patch)
            )
        log.info("pod %s on %s: Running as process %d (%s), in %s", run.key, node.name, process.pid,
                 address.pod_ip, directory)  # fmt: skip

    def _refuse(self, core: Any, pod: Mapping[str, Any], message: str) -> None:
        metadata = pod["metadata"]
        with self._lock:
            self._refused.add(metadata["uid"])
        log.warning("pod %s/%s cannot run as a process: %s", metadata["namespace"], metadata["name"], message)
        patch = waiting_status_patch(pod, "CreateContainerConfigError", message, rfc3339())
        core.patch_namespaced_pod_status(metadata["name"], metadata["namespace"], patch)

    def _report_lost(self, core: Any, pod: Mapping[str, Any], node: ProcessNode) -> None:
        metadata, status = pod["metadata"], pod.get("status") or {}
        message = "the sandbox node agent that ran this pod's process stopped, and the process with it"
        patch = exited_status_patch(pod, LOST_EXIT_CODE, node.internal_ip, status.get("podIP") or "127.0.0.1",
                                    rfc3339(), message)  # fmt: skip
        core.patch_namespaced_pod_status(metadata["name"], metadata["namespace"], patch)
        log.warning("pod %s/%s: Failed (%s)", metadata["namespace"], metadata["name"], message)

    # -- ending ---------------------------------------------------------------------------------

    def _wait(self, run: PodRun) -> None:
        code = exit_code_of(run.process.wait())
        # The container ends with its main process: nothing it started outlives it.
        _signal_all([pid for pid in (*process_tree(run.process.pid), *run.tree) if pid != run.process.pid],
                    signal.SIGKILL)  # fmt: skip
        (run.directory / EXIT_FILE).write_text(f"{code}\n")
        metadata = run.pod["metadata"]
        with self._lock:
            run.exit_code = code
            deleting = run.deleting
            self._timers.cancel(f"kill/{metadata['uid']}")
            if self._terminating.get(metadata["uid"]) is run:
                # Its pod is gone already: the process held the pod's IP until now.
                del self._terminating[metadata["uid"]]
                self._ips.release(metadata["uid"])
            try:
                core = self._new_core()
                if deleting:
                    # The container is gone: what the kubelet confirms by removing the pod.
                    _with_retries(partial(delete_pod_now, core, metadata["namespace"], metadata["name"],
                                          metadata["uid"]))  # fmt: skip
                else:
                    patch = exited_status_patch(run.pod, code, run.node.internal_ip, run.ip, rfc3339())
                    _with_retries(partial(core.patch_namespaced_pod_status, metadata["name"],
                                          metadata["namespace"], patch))  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the pod may be gone; logged, never fatal
                log.warning(
                    "pod %s: reporting exit %d failed: %s: %s", run.key, code, type(exc).__name__, exc
                )
        log.info("pod %s: process exited with %d%s", run.key, code, " (deleted)" if deleting else "")

    def _terminate(self, run: PodRun, deadline: datetime) -> None:
        """SIGTERM now (once), SIGKILL at the deadline; a later call with an earlier deadline (a second
        delete with a shorter grace period) brings the SIGKILL forward."""
        with self._lock:
            first = not run.deleting
            if not first and run.kill_at is not None and deadline >= run.kill_at:
                return
            run.deleting, run.kill_at = True, deadline
            if first:
                run.tree = process_tree(run.process.pid)
            delay = (deadline - datetime.now(UTC)).total_seconds()
            # Scheduled with the lock held: of two calls at once, the earlier deadline is the one that stays.
            self._timers.schedule(f"kill/{run.pod['metadata']['uid']}", delay, lambda: self._kill(run))
        if first:
            _signal_group(run.process.pid, signal.SIGTERM)
            log.info(
                "pod %s deleted: SIGTERM to process %d, SIGKILL in %.0fs", run.key, run.process.pid, delay
            )
        else:
            log.info("pod %s deleted again: SIGKILL now in %.0fs", run.key, delay)

    def _kill(self, run: PodRun) -> None:
        if run.process.poll() is None:
            log.info("pod %s: grace period over, SIGKILL", run.key)
            _signal_all([*process_tree(run.process.pid), *run.tree], signal.SIGKILL)
