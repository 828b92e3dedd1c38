"""Simulated GPU/TPU nodes for the sandbox: a small kwok-like node agent.

Nothing runs containers on these machines, so the agent plays the kubelet for every Node that carries
the label `kubefit.dev/sandbox-pool`:

* nodes: removes the API server's `node.kubernetes.io/not-ready` taint, reports Ready with fresh
  heartbeats (node status and node Lease, every HEARTBEAT_INTERVAL_S unless `--heartbeat-seconds` or
  start_agent's heartbeat_interval_s says otherwise; a round of more than HEARTBEAT_BATCH_NODES nodes is
  written in batches spread over the interval, not in one burst);
* pods bound to its nodes by the real kube-scheduler turn Running (podIP, hostIP, conditions,
  containerStatuses) through the status subresource;
* the annotation `sandbox.kubefit.dev/exit: "<code>"` ends a pod: 0 -> Succeeded, else Failed with that
  exit code (restartPolicy is not simulated: the containers are never restarted);
* `sandbox.kubefit.dev/start-seconds: "<s>"` keeps a bound pod Pending until s seconds after its
  creation (an image pull), then it turns Running;
* a pod being deleted is removed (grace 0, since no kubelet confirms) when its grace period ends, or
  sooner if `sandbox.kubefit.dev/shutdown-seconds: "<s>"` says its containers stop faster on SIGTERM;
* on the nodes of a `processes: true` pool (label kubefit.dev/sandbox-processes=true), pods are not
  simulated: each runs as a local process (kubefit_sandbox.processpods; the annotations above do not
  apply there);
* the node annotation `sandbox.kubefit.dev/unreachable: "true"` plays a kubelet cut off from the API server:
  the node gets no heartbeat (the node lifecycle controller marks it NotReady after its grace period, 40 s
  by default) and its pods no status, so a pod deleted there stays Terminating; removing the annotation
  ends it;
* when one of its nodes is deleted, the pods bound to it are deleted at once (the controller manager's
  pod GC would do it too, but only after its 40 s quarantine: quarantineTime in Kubernetes'
  pkg/controller/podgc/gc_controller.go);
* it serves dcgm-exporter-shaped GPU telemetry of its nodes at an HTTP /metrics endpoint on loopback,
  whose address it writes to <state dir>/telemetry-url (kubefit_sandbox.telemetry).

It runs as one background process (`python -m kubefit_sandbox.nodeagent --kubeconfig K`), started by
`start_agent` with its PID in <state dir>/agent.pid and its log in <state dir>/logs/node-agent.log, and
stopped by `stop_agent`. Three threads: a node watch, a pod watch (only bound pods: field selector
spec.nodeName!=), and a timer loop for heartbeats and delayed deletions, plus the telemetry server's;
idle, it costs nothing.

This module is the loop and the process; what to do with a pod is in kubefit_sandbox.podstatus (pure),
node operations in kubefit_sandbox.nodes, the API client and watches in kubefit_sandbox.kubeclient.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubefit_sandbox.cluster import POOL_LABEL, PROCESSES_LABEL, load_cluster_config
from kubefit_sandbox.errors import NodeAgentError
from kubefit_sandbox.kubeclient import WatchExpired, core_api, new_api_client, response_json, watch_events
from kubefit_sandbox.locks import exclusive_lock, try_exclusive_lock
from kubefit_sandbox.nodes import (
    delete_pod_now,
    delete_pods_on_node,
    ensure_pool_nodes,
    list_sandbox_nodes,
    make_node_ready,
    node_needs_fixing,
)
from kubefit_sandbox.podstatus import (
    PodIPAllocator,
    decide,
    exited_status_patch,
    rfc3339,
    running_status_patch,
)
from kubefit_sandbox.processpods import ProcessNode, ProcessPods
from kubefit_sandbox.telemetry import TELEMETRY_URL_FILE, GpuTelemetry, TelemetryServer, write_telemetry_url

HEARTBEAT_INTERVAL_S = 20.0
# A node annotated so is played as a kubelet cut off from the API server (module docstring).
UNREACHABLE_ANNOTATION = "sandbox.kubefit.dev/unreachable"
# Nodes heartbeated in one go; a round of more is split into batches whose starts are spread evenly over the
# interval (each node is still heartbeated once per interval), so many nodes are not 2 writes each at once
# and the timer thread (which also runs the delayed pod deletions) is never held by a whole round.
HEARTBEAT_BATCH_NODES = 50
NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40  # the kubelet's default --node-lease-duration-seconds
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
# With the API server gone this long, the agent exits: a control plane stopped without stop_agent (a test
# session's fixture stopping it) must not leave it behind. A down/up or an API server restart is shorter.
ORPHAN_TIMEOUT_S = 60.0

AGENT_PID_FILE = "agent.pid"
AGENT_LOCK_FILE = "agent.lock"  # held by the running agent for its lifetime: one agent per sandbox
AGENT_READY_FILE = "agent.ready"  # written with the agent's PID once it has listed its nodes and pods
AGENT_READY_TIMEOUT_S = 30.0
AGENT_START_LOCK_FILE = "agent-start.lock"
LOCK_HELD_EXIT_CODE = 3  # the agent's exit status when another agent holds the lock
AGENT_LOG_FILE = Path("logs") / "node-agent.log"
# `python -m` runs this module as the agent process; _is_agent_process looks for it in /proc cmdlines.
AGENT_MODULE = "kubefit_sandbox.nodeagent"
CLUSTER_FILE_ENV = "KUBEFIT_SANDBOX_CLUSTER"
# The repository's example, used when no cluster file is named (editable installs and checkouts).
EXAMPLE_CLUSTER_FILE = Path(__file__).resolve().parents[2] / "examples" / "sandbox" / "cluster.yaml"

log = logging.getLogger("kubefit_sandbox.nodeagent")


# ---------------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManagedNode:
    """A node the agent runs pods on: what the status patches and heartbeats need from it."""

    name: str
    uid: str
    internal_ip: str
    pod_cidr: str
    processes: bool = False  # its pods run as local processes
    unreachable: bool = False  # UNREACHABLE_ANNOTATION: no heartbeat, no pod status


def _managed_node(node: Mapping[str, Any]) -> ManagedNode | None:
    metadata, spec, status = node["metadata"], node.get("spec") or {}, node.get("status") or {}
    internal_ip = next(
        (a["address"] for a in status.get("addresses") or [] if a.get("type") == "InternalIP"), None
    )
    if not internal_ip or not spec.get("podCIDR"):
        log.warning(
            "node %s has no InternalIP or podCIDR: not a node this agent can run pods on", metadata["name"]
        )
        return None
    processes = (metadata.get("labels") or {}).get(PROCESSES_LABEL) == "true"
    unreachable = (metadata.get("annotations") or {}).get(UNREACHABLE_ANNOTATION) == "true"
    return ManagedNode(
        metadata["name"], metadata.get("uid", ""), internal_ip, spec["podCIDR"], processes, unreachable
    )


def heartbeat_batches(
    names: Sequence[str], interval_s: float, batch_nodes: int = HEARTBEAT_BATCH_NODES
) -> tuple[list[list[str]], float]:
    """One heartbeat round: the nodes in as few batches of at most `batch_nodes` as will do, of sizes that
    differ by at most one, and the spacing between the starts of consecutive batches (the interval divided
    by their number). No nodes: no batches, and the interval."""
    if batch_nodes < 1:
        raise ValueError(f"batch_nodes must be at least 1, got {batch_nodes}")
    count = -(-len(names) // batch_nodes)
    if count == 0:
        return [], interval_s
    size, extra = divmod(len(names), count)
    batches, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        batches.append(list(names[start:end]))
        start = end
    return batches, interval_s / count


class KeyedTimers:
    """Delayed calls by key (a later schedule of the same key replaces the earlier one)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._calls: dict[str, tuple[int, Callable[[], None]]] = {}
        self._sequence = 0
        self._wakeup = threading.Condition()

    def schedule(self, key: str, delay_s: float, call: Callable[[], None]) -> None:
        with self._wakeup:
            self._sequence += 1
            self._calls[key] = (self._sequence, call)
            heapq.heappush(self._heap, (time.monotonic() + max(delay_s, 0.0), self._sequence, key))
            self._wakeup.notify()

    def cancel(self, key: str) -> None:
        with self._wakeup:
            self._calls.pop(key, None)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._wakeup:
                due: Callable[[], None] | None = None
                if self._heap and self._heap[0][0] <= time.monotonic():
                    _, sequence, key = heapq.heappop(self._heap)
                    entry = self._calls.get(key)
                    if entry and entry[0] == sequence:  # else cancelled or rescheduled
                        del self._calls[key]
                        due = entry[1]
                else:
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else 1.0
                    self._wakeup.wait(timeout=min(max(timeout, 0.0), 1.0))
            if due is not None:
                try:
                    due()
                except Exception:  # noqa: BLE001 - one failed call must not stop the timers
                    log.exception("timer call failed")


class NodeAgent:
    """Plays the kubelet for every node labelled POOL_LABEL (see the module docstring)."""

    def __init__(
        self,
        kubeconfig: str | Path,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        ready_file: str | Path | None = None,
        state_dir: str | Path | None = None,
        telemetry_port: int = 0,
    ) -> None:
        """state_dir (default: the working directory) holds the process pods' directories and the
        telemetry-url file; telemetry_port 0 takes any free port."""
        self.ready_file = Path(ready_file) if ready_file else None
        self.state_dir = Path(state_dir or ".")
        self.telemetry = GpuTelemetry()
        self._telemetry_port = telemetry_port
        self.kubeconfig = Path(kubeconfig)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.stop_event = threading.Event()
        self._nodes: dict[str, ManagedNode] = {}
        self._nodes_lock = threading.Lock()
        self._nodes_synced = threading.Event()
        self._ips = PodIPAllocator()
        self._timers = KeyedTimers()
        self._processes = ProcessPods(Path(state_dir or "."), self._new_core, self._ips, self._timers)
        self._reported_invalid: set[tuple[str, str]] = set()
        # The last seen state of every bound pod, by uid: a relist handles those missing from it as deleted.
        self._pods: dict[str, Mapping[str, Any]] = {}
        self._pods_lock = threading.Lock()
        self._last_contact = time.monotonic()
        self._heartbeat_round: deque[list[str]] = deque()  # the current round's batches still to write
        self._heartbeat_spacing = heartbeat_interval_s

    def _new_core(self) -> Any:
        # Read the kubeconfig afresh on every (re)connect: a `sandbox up` may have moved the API server.
        return core_api(new_api_client(self.kubeconfig))

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> None:
        log.info("node agent starting (kubeconfig %s)", self.kubeconfig)
        server = TelemetryServer(self.telemetry, port=self._telemetry_port)
        server.start()
        write_telemetry_url(self.state_dir, server.url)
        log.info("GPU telemetry on %s", server.url)
        for target, name in ((self._node_loop, "node-watch"), (self._pod_loop, "pod-watch")):
            threading.Thread(target=target, name=name, daemon=True).start()
        self._timers.schedule("heartbeat", self.heartbeat_interval_s, self._heartbeat)
        self._timers.run(self.stop_event)
        self._processes.stop_all()
        server.stop()
        (self.state_dir / TELEMETRY_URL_FILE).unlink(missing_ok=True)
        log.info("node agent stopped")

    def stop(self) -> None:
        self.stop_event.set()

    def _reconnecting(self, loop_name: str, body: Callable[[Any], None]) -> None:
        """Runs body(core) for ever: relists after 410 or a closed watch, backs off on errors."""
        failures = 0
        while not self.stop_event.is_set():
            try:
                body(self._new_core())
                failures = 0
            except WatchExpired as exc:
                log.info("%s: watch expired (%s), listing again", loop_name, exc)
            except Exception as exc:  # noqa: BLE001 - API down or restarting: retry, never die
                delay = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
                failures += 1
                log.warning("%s: %s: %s; retrying in %.1fs", loop_name, type(exc).__name__, exc, delay)
                self.stop_event.wait(delay)

    def _watch(
        self,
        list_function: Callable[..., Any],
        resource_version: str,
        handle: Callable[[dict], None],
        **selectors: Any,
    ) -> None:
        """Watches from resource_version for ever, resuming from the last version seen each time the
        server ends the watch (every WATCH_TIMEOUT_S); WatchExpired (410) goes up for a fresh list."""
        while not self.stop_event.is_set():
            for event in watch_events(list_function, resource_version, **selectors):
                resource_version = event["object"]["metadata"]["resourceVersion"]
                self._last_contact = time.monotonic()
                if event["type"] != "BOOKMARK":
                    handle(event)

    # -- nodes ----------------------------------------------------------------------------------

    def _node_loop(self) -> None:
        self._reconnecting("node watch", self._list_and_watch_nodes)

    def _list_and_watch_nodes(self, core: Any) -> None:
        nodes, resource_version = list_sandbox_nodes(core)
        self._last_contact = time.monotonic()
        log.info("listed %d sandbox node(s); watching from resourceVersion %s", len(nodes), resource_version)
        seen = set()
        for node in nodes:
            seen.add(node["metadata"]["name"])
            self._node_changed(core, node)
        with self._nodes_lock:
            gone = set(self._nodes) - seen
        for name in gone:
            self._node_deleted(core, name)
        self._nodes_synced.set()

        def handle(event: dict) -> None:
            if event["type"] == "DELETED":
                self._node_deleted(core, event["object"]["metadata"]["name"])
            else:
                self._node_changed(core, event["object"])

        self._watch(core.list_node, resource_version, handle, label_selector=POOL_LABEL)

    def _node_changed(self, core: Any, node: Mapping[str, Any]) -> None:
        managed = _managed_node(node)
        if managed is None:
            return
        self.telemetry.node_changed(node)
        with self._nodes_lock:
            known = self._nodes.get(managed.name)
            self._nodes[managed.name] = managed
        if managed.unreachable:
            if known is None or not known.unreachable:
                log.info(
                    "node %s: unreachable (no heartbeat, no pod status) until the annotation goes",
                    managed.name,
                )
            return
        if node_needs_fixing(node) or (known is not None and known.unreachable):
            log.info("node %s: removing the not-ready taint and reporting Ready", managed.name)
            make_node_ready(core, node)
        if known is None or known.uid != managed.uid or known.unreachable:
            log.info("managing node %s (%s, pods in %s)", managed.name, managed.internal_ip, managed.pod_cidr)
            # As a kubelet does on start: report at once, not an interval later. Nodes kept in etcd
            # across `sandbox down`/`up` would otherwise show a stale heartbeat and lease meanwhile.
            self._heartbeat_node(core, managed, rfc3339())
            if self._nodes_synced.is_set():
                # Pods may have been bound before this node's event reached us: look at them now.
                pods = response_json(
                    core.list_pod_for_all_namespaces(
                        field_selector=f"spec.nodeName={managed.name}", _preload_content=False
                    )
                )
                for pod in pods.get("items", []):
                    self._pod_changed(core, pod)

    def _node_deleted(self, core: Any, name: str) -> None:
        with self._nodes_lock:
            if self._nodes.pop(name, None) is None:
                return
        self.telemetry.node_deleted(name)
        deleted = delete_pods_on_node(core, name)
        log.info("node %s deleted: deleted the %d pod(s) bound to it", name, deleted)

    def _heartbeat(self) -> None:
        """One batch of the heartbeat round (heartbeat_batches); the next is due a spacing after this one
        began, so the round's batches start evenly over the interval."""
        began = time.monotonic()
        try:
            core = self._new_core()
            batch = self._next_heartbeat_batch()
            if not batch:
                from kubernetes import client

                client.VersionApi(core.api_client).get_code()  # still proves the API server is there
            now = rfc3339()
            for node in batch:
                self._heartbeat_node(core, node, now)
            self._last_contact = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - logged; the next heartbeat retries
            log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
            if time.monotonic() - self._last_contact > ORPHAN_TIMEOUT_S:
                log.error("API server unreachable for %.0fs: the sandbox is down, exiting", ORPHAN_TIMEOUT_S)
                self.stop()
        finally:
            if not self.stop_event.is_set():
                delay = max(0.0, self._heartbeat_spacing - (time.monotonic() - began))
                self._timers.schedule("heartbeat", delay, self._heartbeat)

    def _next_heartbeat_batch(self) -> list[ManagedNode]:
        """The next batch of the round, a new round (of the nodes managed now) when the last one is done;
        a node gone since its round began is skipped."""
        with self._nodes_lock:
            if not self._heartbeat_round:
                batches, self._heartbeat_spacing = heartbeat_batches(
                    sorted(self._nodes), self.heartbeat_interval_s
                )
                self._heartbeat_round.extend(batches)
            names = self._heartbeat_round.popleft() if self._heartbeat_round else []
            return [
                self._nodes[name]
                for name in names
                if name in self._nodes and not self._nodes[name].unreachable
            ]

    def _heartbeat_node(self, core: Any, node: ManagedNode, now: str) -> None:
        from kubernetes import client

        # Only the heartbeat: conditions merge on `type`, so lastTransitionTime and the rest stay.
        heartbeat = [{"type": kind, "lastHeartbeatTime": now} for kind in
                     ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")]  # fmt: skip
        try:
            core.patch_node_status(node.name, {"status": {"conditions": heartbeat}})
        except client.ApiException as exc:
            if exc.status != 404:  # a node deleted a moment ago is not an error
                raise
            return
        self._renew_lease(core, node, now)

    def _renew_lease(self, core: Any, node: ManagedNode, now: str) -> None:
        """The node Lease a kubelet renews (kube-node-lease), so a node lifecycle controller sees life."""
        from kubernetes import client

        coordination = client.CoordinationV1Api(core.api_client)
        renew_time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # MicroTime
        spec = {
            "holderIdentity": node.name,
            "leaseDurationSeconds": LEASE_DURATION_S,
            "renewTime": renew_time,
        }
        try:
            coordination.patch_namespaced_lease(node.name, NODE_LEASE_NAMESPACE, {"spec": spec})
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node.uid}
            lease: Any = {"metadata": {"name": node.name, "ownerReferences": [owner]}, "spec": spec}
            try:
                coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, lease)
            except client.ApiException as create_exc:
                if create_exc.status not in (404, 409):  # namespace missing (old server) or a race
                    raise

    def _mark_ready(self) -> None:
        """Nodes listed (and heartbeated), bound pods listed: start_agent may return."""
        if self.ready_file is not None and not self.ready_file.exists():
            self.ready_file.write_text(f"{os.getpid()}\n")

    # -- pods -----------------------------------------------------------------------------------

    def _pod_loop(self) -> None:
        self._nodes_synced.wait()
        self._reconnecting("pod watch", self._list_and_watch_pods)

    def _list_and_watch_pods(self, core: Any) -> None:
        # Only pods bound to some node; a pod enters this watch (as ADDED) when the scheduler binds it.
        selector = {"field_selector": "spec.nodeName!="}
        with self._pods_lock:
            known = dict(self._pods)  # taken before the list: a pod seen later may be newer than the list
        body = response_json(core.list_pod_for_all_namespaces(_preload_content=False, **selector))
        pods = body.get("items", [])
        resource_version = body["metadata"]["resourceVersion"]
        log.info("listed %d bound pod(s); watching from resourceVersion %s", len(pods), resource_version)
        # Pods deleted while there was no watch (the API server down, a 410): their DELETED event is lost.
        listed = {pod["metadata"]["uid"] for pod in pods}
        for uid, gone in known.items():
            if uid not in listed:
                log.info("pod %s/%s: gone from the list, handled as deleted", gone["metadata"]["namespace"],
                         gone["metadata"]["name"])  # fmt: skip
                self._pod_deleted(gone)
        for pod in pods:  # every IP in use first, so a new pod never gets one a listed pod holds
            self._ips.observe(pod["metadata"]["uid"], (pod.get("status") or {}).get("podIP"))
        for pod in pods:
            self._pod_changed(core, pod)
        self._mark_ready()

        def handle(event: dict) -> None:
            if event["type"] == "DELETED":
                self._pod_deleted(event["object"])
            else:
                self._pod_changed(core, event["object"])

        self._watch(core.list_pod_for_all_namespaces, resource_version, handle, **selector)

    def _pod_deleted(self, pod: Mapping[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._pods_lock:
            self._pods.pop(uid, None)
        self.telemetry.pod_deleted(pod)
        # A process pod's process may still run (its grace period): its IP is released when it exits.
        if not self._processes.pod_deleted(pod):
            self._ips.release(uid)
        self._timers.cancel(f"delete/{uid}")
        self._timers.cancel(f"start/{uid}")

    def _pod_changed(self, core: Any, pod: Mapping[str, Any]) -> None:
        from kubernetes import client

        metadata = pod["metadata"]
        with self._pods_lock:
            self._pods[metadata["uid"]] = pod
        with self._nodes_lock:
            node = self._nodes.get(pod["spec"].get("nodeName", ""))
        if node is None or node.unreachable:
            return
        self._ips.observe(metadata["uid"], (pod.get("status") or {}).get("podIP"))
        try:
            for message in self.telemetry.pod_changed(pod):
                self._report_invalid(core, pod, node.name, message)
            if node.processes:
                self._processes.pod_changed(core, pod, ProcessNode(node.name, node.internal_ip))
            else:
                self._simulate(core, pod, node)
        except client.ApiException as exc:
            if exc.status != 404:  # deleted while we acted: nothing to do
                log.warning(
                    "pod %s/%s: %s: %s", metadata["namespace"], metadata["name"], exc.status, exc.body
                )

    def _simulate(self, core: Any, pod: Mapping[str, Any], node: ManagedNode) -> None:
        """A pod on a simulated node: Running at once, ended by its exit annotation (module docstring)."""
        metadata = pod["metadata"]
        namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
        seen = time.monotonic()
        action = decide(pod, datetime.now(UTC))
        if action.kind == "run":
            pod_ip = self._ips.allocate(uid, node.pod_cidr)
            core.patch_namespaced_pod_status(
                name, namespace, running_status_patch(pod, node.internal_ip, pod_ip, rfc3339())
            )
            took_ms = (time.monotonic() - seen) * 1000
            log.info("pod %s/%s on %s: Running (%s), %.1f ms after seen", namespace, name, node.name, pod_ip,
                     took_ms)  # fmt: skip
        elif action.kind == "exit":
            assert action.exit_code is not None
            pod_ip = self._ips.allocate(uid, node.pod_cidr)
            patch = exited_status_patch(pod, action.exit_code, node.internal_ip, pod_ip, rfc3339())
            core.patch_namespaced_pod_status(name, namespace, patch)
            log.info("pod %s/%s on %s: %s (exit code %d)", namespace, name, node.name,
                     patch["status"]["phase"], action.exit_code)  # fmt: skip
        elif action.kind == "start-later":
            assert action.start_at is not None
            delay = (action.start_at - datetime.now(UTC)).total_seconds()
            self._timers.schedule(f"start/{uid}", delay, lambda: self._look_again(namespace, name, uid))
        elif action.kind == "delete":
            assert action.delete_at is not None
            delay = (action.delete_at - datetime.now(UTC)).total_seconds()
            self._timers.schedule(f"delete/{uid}", delay, lambda: self._delete_now(namespace, name, uid))
        elif action.kind == "invalid":
            self._report_invalid(core, pod, node.name, action.message)

    def _look_again(self, namespace: str, name: str, uid: str) -> None:
        """A pod whose start was delayed: read it again and act on it as on a watch event (if it is the same
        pod and still there)."""
        from kubernetes import client

        core = self._new_core()
        try:
            pod = response_json(core.read_namespaced_pod(name, namespace, _preload_content=False))
        except client.ApiException as exc:
            if exc.status == 404:
                return
            raise
        if pod["metadata"]["uid"] == uid:
            self._pod_changed(core, pod)

    def _delete_now(self, namespace: str, name: str, uid: str) -> None:
        if delete_pod_now(self._new_core(), namespace, name, uid):
            log.info("pod %s/%s: grace period over, deleted", namespace, name)

    def _report_invalid(self, core: Any, pod: Mapping[str, Any], node_name: str, message: str) -> None:
        metadata = pod["metadata"]
        key = (metadata["uid"], message)
        if key in self._reported_invalid:
            return  # one Event per bad value, not one per watch event
        self._reported_invalid.add(key)
        log.warning("pod %s/%s: %s", metadata["namespace"], metadata["name"], message)
        now = rfc3339()
        event = {
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata["uid"],
            },  # fmt: skip
            "reason": "InvalidSandboxAnnotation",
            "message": message,
            "type": "Warning",
            "source": {"component": "kubefit-sandbox-agent", "host": node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        core.create_namespaced_event(metadata["namespace"], event)


# ---------------------------------------------------------------------------------------------
# Starting and stopping the agent process
# ---------------------------------------------------------------------------------------------


def _is_agent_process(pid: int) -> bool:
    """True if pid is a live node agent (guards against a recycled PID in a stale pid file)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and AGENT_MODULE.encode() in cmdline


def _holds_open(pid: int, path: Path) -> bool:
    """True if process pid has the file `path` open (the agent keeps its agent.lock open while it runs)."""
    try:
        wanted = path.stat()
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            found = fd.stat()
        except OSError:  # closed meanwhile
            continue
        if (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino):
            return True
    return False


def running_agent_pid(state_dir: str | Path) -> int | None:
    """The PID of the node agent running for this sandbox, or None.

    From agent.pid (written by start_agent), else from agent.lock (written by the agent itself once it
    holds the lock), so that an agent whose pid file was lost is still found. Either is this sandbox's
    agent only if that process holds this sandbox's agent.lock open: a stale PID may be any process's,
    another sandbox's agent included.
    """
    lock = Path(state_dir) / AGENT_LOCK_FILE
    for name in (AGENT_PID_FILE, AGENT_LOCK_FILE):
        try:
            pid = int((Path(state_dir) / name).read_text().strip())
        except (OSError, ValueError):
            continue
        if _is_agent_process(pid) and _holds_open(pid, lock):
            return pid
    return None


def default_cluster_file() -> Path | None:
    """$KUBEFIT_SANDBOX_CLUSTER, else the repository's examples/sandbox/cluster.yaml when present."""
    override = os.environ.get(CLUSTER_FILE_ENV)
    if override:
        return Path(override)
    return EXAMPLE_CLUSTER_FILE if EXAMPLE_CLUSTER_FILE.is_file() else None


def start_agent(
    sandbox: Any, cluster_file: str | Path | None = None, heartbeat_interval_s: float | None = None
) -> int:
    """Creates the cluster file's missing nodes (Ready, untainted), starts the agent unless it runs.

    Returns the agent's PID.

    `sandbox` needs `state_dir` and `kubeconfig_path` (kubefit_sandbox.controlplane.Sandbox). Without
    `cluster_file`, default_cluster_file() is used; with none at all, only existing nodes are managed.
    `heartbeat_interval_s` (default HEARTBEAT_INTERVAL_S) is how often the agent heartbeats each node; an
    agent already running keeps its own. The PID goes to <state_dir>/agent.pid; stop_agent(state_dir) stops it.
    """
    state_dir, kubeconfig = Path(sandbox.state_dir), Path(sandbox.kubeconfig_path)
    path = Path(cluster_file) if cluster_file is not None else default_cluster_file()
    if path is not None:
        created = ensure_pool_nodes(core_api(new_api_client(kubeconfig)), load_cluster_config(path))
        if created:
            print(f"  simulated nodes from {path}: created {', '.join(created)}", file=sys.stderr, flush=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    # Serialises concurrent start_agent calls (several test sessions): one check-and-spawn at a time.
    with exclusive_lock(state_dir / AGENT_START_LOCK_FILE):
        pid = running_agent_pid(state_dir)
        if pid is not None:
            return pid
        return _spawn_agent(state_dir, kubeconfig, heartbeat_interval_s)


def agent_command(state_dir: Path, kubeconfig: Path, heartbeat_interval_s: float | None = None) -> list[str]:
    """The agent process's command line (`python -m kubefit_sandbox.nodeagent ...`)."""
    command = [sys.executable, "-m", AGENT_MODULE, "--kubeconfig", str(kubeconfig)]
    command += ["--lock-file", str(state_dir / AGENT_LOCK_FILE)]
    command += ["--ready-file", str(state_dir / AGENT_READY_FILE), "--state-dir", str(state_dir)]
    if heartbeat_interval_s is not None:
        if heartbeat_interval_s <= 0:
            raise ValueError(f"heartbeat_interval_s must be positive, got {heartbeat_interval_s}")
        command += ["--heartbeat-seconds", repr(float(heartbeat_interval_s))]
    return command


def _spawn_agent(state_dir: Path, kubeconfig: Path, heartbeat_interval_s: float | None = None) -> int:
    log_path = state_dir / AGENT_LOG_FILE
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ready_file = state_dir / AGENT_READY_FILE
    ready_file.unlink(missing_ok=True)
    command = agent_command(state_dir, kubeconfig, heartbeat_interval_s)
    with open(log_path, "ab") as log_file:
        # Own session: it outlives `kubefit-sandbox up` and its terminal's signals.
        process = subprocess.Popen(
            command,
            cwd=state_dir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file = state_dir / AGENT_PID_FILE
    pid_file.write_text(f"{process.pid}\n")
    if _wait_until_ready(process, ready_file):
        print(f"  started node agent (pid {process.pid}), log {log_path}", file=sys.stderr, flush=True)
        return process.pid
    pid_file.unlink(missing_ok=True)
    if process.returncode == LOCK_HELD_EXIT_CODE:
        # An agent this state dir did not record (its pid file lost) already runs: adopt it.
        running = running_agent_pid(state_dir)
        if running is not None:
            pid_file.write_text(f"{running}\n")
            return running
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    raise NodeAgentError(f"node agent exited at once ({process.returncode}); {log_path}:\n{tail}")


def _wait_until_ready(process: subprocess.Popen[bytes], ready_file: Path) -> bool:
    """True once the agent reports ready; False if it exited (bad install, lock held) first.

    Returning earlier would let a caller read nodes the agent has not yet heartbeated, or create pods
    before it watches them.
    """
    deadline = time.monotonic() + AGENT_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready_file.exists() and ready_file.read_text().strip() == str(process.pid):
            return True
        time.sleep(0.05)
    raise NodeAgentError(f"node agent (pid {process.pid}) not ready after {AGENT_READY_TIMEOUT_S:.0f}s")


def stop_agent(state_dir: str | Path, timeout_s: float = 5.0) -> bool:
    """Stops the node agent recorded in <state_dir>/agent.pid (SIGTERM, then SIGKILL); True if one ran."""
    pid = running_agent_pid(state_dir)
    (Path(state_dir) / AGENT_PID_FILE).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _is_agent_process(pid) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
        except ChildProcessError:
            pass
        time.sleep(0.05)
    if _is_agent_process(pid):
        os.kill(pid, signal.SIGKILL)
    return True


# ---------------------------------------------------------------------------------------------
# The agent process's entry point (`python -m kubefit_sandbox.nodeagent`, run by _spawn_agent)
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {AGENT_MODULE}", description="kubefit sandbox node agent"
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--heartbeat-seconds", type=float, default=HEARTBEAT_INTERVAL_S)
    parser.add_argument("--lock-file", help="held while running; a second agent with the same file exits")
    parser.add_argument("--ready-file", help="written with the agent's PID once it has listed nodes and pods")
    parser.add_argument(
        "--state-dir", default=".", help="the sandbox's state dir (process pods run under it)"
    )
    parser.add_argument(
        "--telemetry-port", type=int, default=0, help="port of the GPU telemetry on 127.0.0.1 (0: any free)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    # urllib3 logs each of its own connection retries; the agent's one line per failed attempt is enough.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    if args.lock_file:
        # Not opened with "w": that would empty the file, and the PID in it, under the agent holding it.
        lock = try_exclusive_lock(args.lock_file)  # held open until the process exits
        if lock is None:
            # Two agents would both patch the same pods, with different pod IPs.
            log.error("another node agent holds %s: exiting", args.lock_file)
            return LOCK_HELD_EXIT_CODE
        os.ftruncate(lock, 0)
        os.write(lock, f"{os.getpid()}\n".encode())
    agent = NodeAgent(
        args.kubeconfig,
        heartbeat_interval_s=args.heartbeat_seconds,
        ready_file=args.ready_file,
        state_dir=args.state_dir,
        telemetry_port=args.telemetry_port,
    )
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
