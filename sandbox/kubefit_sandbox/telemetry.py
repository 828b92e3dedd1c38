"""GPU telemetry of the simulated nodes, shaped like NVIDIA's dcgm-exporter, so that Prometheus rules and
dashboards written for real clusters can be tried on the sandbox.

For every GPU of every sandbox node whose capacity holds `nvidia.com/gpu`, the node agent serves four
gauges at http://127.0.0.1:<port>/metrics (the address is in <state dir>/telemetry-url and printed by
`kubefit-sandbox telemetry`):

    DCGM_FI_DEV_GPU_UTIL           utilisation in percent (0-100)
    DCGM_FI_PROF_GR_ENGINE_ACTIVE  graphics engine active, a ratio (0-1)
    DCGM_FI_DEV_FB_USED            framebuffer used, MiB
    DCGM_FI_DEV_FB_FREE            framebuffer free, MiB

with dcgm-exporter's labels `gpu` (index on the node), `UUID`, `device` (nvidiaN), `modelName` and
`Hostname` (the node), and, on a GPU a pod holds, that pod's `pod`, `namespace` and `container` (what
dcgm-exporter adds from the kubelet's pod-resources API). Names and units as in dcgm-exporter's
default-counters.csv (github.com/NVIDIA/dcgm-exporter, etc/default-counters.csv).

Which GPUs a pod holds: every container's `nvidia.com/gpu` limit (else request) gets the lowest free
indices of its node when the pod is bound and not yet ended, as a device plugin assigns them; they are
free again when the pod succeeds, fails or is deleted. What a held GPU reports comes from the pod:

    sandbox.kubefit.dev/gpu-utilization: "0.02"   # 0.0-1.0, per GPU of the pod
    sandbox.kubefit.dev/gpu-memory-used: "30Gi"    # a Kubernetes quantity, per GPU (capped at the GPU's memory)

Without them (or with an unusable value, reported as an InvalidSandboxAnnotation Event) a held GPU of a
Running pod is busy: DEFAULT_UTILIZATION and DEFAULT_MEMORY_FRACTION of its memory; one of a pod bound but
not Running yet (its image pulling, its start delayed) is idle, 0 and no memory used, as on a real node
where no container has opened it. That applies alike to simulated pods
and to pods of `processes: true` nodes, whose real processes use no GPU. A GPU no pod holds reports 0 and
all its memory free. Annotations may change while a pod runs (`kubectl annotate --overwrite`): the next
scrape shows the new values.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubefit.api.quantity import QUANTITY_PATTERN, parse_bytes
from kubefit.api.units import MIB
from kubefit.sizing.catalog import load_catalog
from kubefit_sandbox.cluster import ACCELERATOR_LABEL

GPU_RESOURCE = "nvidia.com/gpu"
UTILIZATION_ANNOTATION = "sandbox.kubefit.dev/gpu-utilization"
MEMORY_USED_ANNOTATION = "sandbox.kubefit.dev/gpu-memory-used"
DEFAULT_UTILIZATION = 0.9
DEFAULT_MEMORY_FRACTION = 0.9
PRODUCT_LABEL = "nvidia.com/gpu.product"  # GPU Feature Discovery's, e.g. NVIDIA-H100-80GB-HBM3
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # GPU Feature Discovery's, MiB
TELEMETRY_URL_FILE = "telemetry-url"
METRICS_PATH = "/metrics"
# Fixed, so that a GPU keeps its UUID across agent restarts (uuid5 of the node's uid and the index).
_UUID_NAMESPACE = uuid.UUID("5b0a3c57-0f2e-4c1b-9d5e-6b1f0c7a9e21")
_TERMINAL_PHASES = ("Succeeded", "Failed")

# (name, HELP text as dcgm-exporter's default-counters.csv words it)
GAUGES = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "Ratio of time the graphics engine is active."),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)."),
)


class InvalidTelemetryAnnotation(ValueError):
    """A telemetry annotation whose value cannot be used; the message names the annotation."""


@dataclass(frozen=True)
class GpuLoad:
    """What each GPU of a pod reports: utilisation (0-1) and framebuffer used (bytes; None = the default
    fraction of the GPU's memory)."""

    utilization: float = DEFAULT_UTILIZATION
    memory_used_bytes: int | None = None


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def utilization_from(pod: Mapping[str, Any]) -> float | None:
    """The pod's UTILIZATION_ANNOTATION as a fraction, or None without it."""
    value = _annotations(pod).get(UTILIZATION_ANNOTATION)
    if value is None:
        return None
    try:
        fraction = float(str(value).strip())
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction <= 1.0:  # also refuses nan
        raise InvalidTelemetryAnnotation(
            f"annotation {UTILIZATION_ANNOTATION}={value!r} must be a fraction from 0.0 to 1.0 "
            "(the utilisation of each GPU the pod holds)"
        )
    return fraction


def memory_used_from(pod: Mapping[str, Any]) -> int | None:
    """The pod's MEMORY_USED_ANNOTATION in bytes, or None without it."""
    value = _annotations(pod).get(MEMORY_USED_ANNOTATION)
    if value is None:
        return None
    text = str(value).strip()
    zero = re.fullmatch(QUANTITY_PATTERN, text)
    if zero is not None and float(zero.group(1)) == 0:
        return 0  # parse_bytes refuses zero sizes; no memory used is a fair thing to stage
    try:
        return parse_bytes(text)
    except ValueError as error:
        raise InvalidTelemetryAnnotation(
            f"annotation {MEMORY_USED_ANNOTATION}={value!r} must be a Kubernetes memory quantity such as "
            f"'30Gi' (the framebuffer each GPU of the pod uses): {error}"
        ) from None


def load_from(pod: Mapping[str, Any]) -> tuple[GpuLoad, list[str]]:
    """The pod's GPU load, with the default for each missing or unusable annotation (busy once the pod
    runs, idle before); and the messages naming the unusable ones."""
    problems: list[str] = []
    utilization: float | None = None
    memory: int | None = None
    try:
        utilization = utilization_from(pod)
    except InvalidTelemetryAnnotation as error:
        problems.append(str(error))
    try:
        memory = memory_used_from(pod)
    except InvalidTelemetryAnnotation as error:
        problems.append(str(error))
    if ((pod.get("status") or {}).get("phase") or "Pending") != "Running":
        load = GpuLoad(0.0 if utilization is None else utilization, 0 if memory is None else memory)
    else:
        load = GpuLoad(DEFAULT_UTILIZATION if utilization is None else utilization, memory)
    return load, problems


def gpu_requests(pod: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(container name, GPUs) for each container of the pod that asks for `nvidia.com/gpu`."""
    found = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get(GPU_RESOURCE, (resources.get("requests") or {}).get(
            GPU_RESOURCE))  # fmt: skip
        try:
            count = int(str(amount)) if amount is not None else 0
        except ValueError:
            count = 0  # the API server accepts only whole extended resources; nothing to hold otherwise
        if count > 0:
            found.append((str(container.get("name", "")), count))
    return found


@dataclass(frozen=True)
class GpuNode:
    """A node's GPUs as dcgm-exporter describes them."""

    name: str
    uid: str
    gpus: int
    model_name: str
    memory_mib: int

    def gpu_uuid(self, index: int) -> str:
        return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{self.uid}/{index}')}"


def gpu_node(node: Mapping[str, Any]) -> GpuNode | None:
    """The node's GPUs, or None when its capacity holds no nvidia.com/gpu."""
    metadata, status = node.get("metadata") or {}, node.get("status") or {}
    try:
        gpus = int(str((status.get("capacity") or {}).get(GPU_RESOURCE, "0")))
    except ValueError:
        gpus = 0
    if gpus <= 0:
        return None
    labels = metadata.get("labels") or {}
    accelerator = load_catalog().get(labels.get(ACCELERATOR_LABEL, ""))
    product = labels.get(PRODUCT_LABEL) or (accelerator.name if accelerator else "unknown")
    try:
        memory_mib = int(labels[GPU_MEMORY_LABEL])
    except (KeyError, ValueError):
        memory_mib = accelerator.memory_bytes // MIB if accelerator else 0
    # GFD writes the product with hyphens for spaces; dcgm-exporter's modelName is the driver's name.
    return GpuNode(
        metadata.get("name", ""), metadata.get("uid", ""), gpus, product.replace("-", " "), memory_mib
    )


@dataclass
class HeldGpus:
    """The GPUs one pod holds on its node, and what they report."""

    namespace: str
    pod: str
    node: str
    devices: list[tuple[int, str]]  # (GPU index, container)
    load: GpuLoad = field(default_factory=GpuLoad)


class GpuTelemetry:
    """The sandbox's GPUs and the pods holding them (thread-safe: watches update it, scrapes read it)."""

    def __init__(self) -> None:
        self._nodes: dict[str, GpuNode] = {}
        self._held: dict[str, HeldGpus] = {}  # by pod uid
        self._lock = threading.Lock()

    def node_changed(self, node: Mapping[str, Any]) -> None:
        described = gpu_node(node)
        name = (node.get("metadata") or {}).get("name", "")
        with self._lock:
            if described is None:
                self._nodes.pop(name, None)
            else:
                self._nodes[name] = described

    def node_deleted(self, name: str) -> None:
        with self._lock:
            self._nodes.pop(name, None)
            for uid in [uid for uid, held in self._held.items() if held.node == name]:
                del self._held[uid]

    def pod_changed(self, pod: Mapping[str, Any]) -> list[str]:
        """Takes or frees the pod's GPUs and reads its load; returns messages for unusable annotations."""
        metadata = pod.get("metadata") or {}
        uid, node = metadata.get("uid", ""), (pod.get("spec") or {}).get("nodeName") or ""
        if ((pod.get("status") or {}).get("phase") or "Pending") in _TERMINAL_PHASES:
            self.pod_deleted(pod)
            return []
        requests = gpu_requests(pod)
        if not requests:
            return []
        load, problems = load_from(pod)
        with self._lock:
            held = self._held.get(uid)
            if held is None and node in self._nodes:
                held = HeldGpus(metadata.get("namespace", ""), metadata.get("name", ""), node,
                                self._assign(node, requests))  # fmt: skip
                self._held[uid] = held
            if held is not None:
                held.load = load
        return problems

    def pod_deleted(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            self._held.pop((pod.get("metadata") or {}).get("uid", ""), None)

    def _assign(self, node: str, requests: Sequence[tuple[str, int]]) -> list[tuple[int, str]]:
        """The lowest free indices of the node, per container in order (called with the lock held)."""
        taken = {index for held in self._held.values() if held.node == node for index, _ in held.devices}
        free = iter([index for index in range(self._nodes[node].gpus) if index not in taken])
        devices: list[tuple[int, str]] = []
        for container, count in requests:
            for _ in range(count):
                index = next(free, None)
                if index is None:  # more asked than free: only what the node has is held
                    return devices
                devices.append((index, container))
        return devices

    def render(self) -> str:
        """The Prometheus text exposition of every GPU's gauges."""
        rows = list(self._rows())
        lines: list[str] = []
        for position, (name, help_text) in enumerate(GAUGES):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines += [f"{name}{{{labels}}} {_number(values[position])}" for labels, values in rows]
        return "\n".join(lines) + "\n"

    def _rows(self) -> Iterator[tuple[str, tuple[float, float, float, float]]]:
        with self._lock:
            nodes = sorted(self._nodes.values(), key=lambda node: node.name)
            holders = {(held.node, index): (held, container) for held in self._held.values()
                       for index, container in held.devices}  # fmt: skip
        for node in nodes:
            for index in range(node.gpus):
                labels = {"gpu": str(index), "UUID": node.gpu_uuid(index), "device": f"nvidia{index}",
                          "modelName": node.model_name, "Hostname": node.name}  # fmt: skip
                holder = holders.get((node.name, index))
                load = GpuLoad(0.0, 0)
                if holder is not None:
                    held, container = holder
                    labels |= {"container": container, "namespace": held.namespace, "pod": held.pod}
                    load = held.load
                yield _label_text(labels), _gauge_values(load, node.memory_mib)


def _gauge_values(load: GpuLoad, memory_mib: int) -> tuple[float, float, float, float]:
    if load.memory_used_bytes is None:
        used_mib = int(memory_mib * DEFAULT_MEMORY_FRACTION)
    else:
        used_mib = min(load.memory_used_bytes // MIB, memory_mib)
    return round(load.utilization * 100), load.utilization, used_mib, memory_mib - used_mib


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label_text(labels: Mapping[str, str]) -> str:
    def escaped(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{key}="{escaped(value)}"' for key, value in labels.items())


# ---------------------------------------------------------------------------------------------
# The HTTP endpoint
# ---------------------------------------------------------------------------------------------


class TelemetryServer:
    """Serves a GpuTelemetry's gauges at http://host:port/metrics from a daemon thread."""

    def __init__(self, telemetry: GpuTelemetry, host: str = "127.0.0.1", port: int = 0) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
                if self.path.split("?", 1)[0] != METRICS_PATH:
                    self.send_error(404, f"only {METRICS_PATH} is served here")
                    return
                body = telemetry.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not news
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="telemetry", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{METRICS_PATH}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def write_telemetry_url(state_dir: str | Path, url: str) -> None:
    """Records the endpoint in <state dir>/telemetry-url (replaced atomically: readers never see half)."""
    target = Path(state_dir) / TELEMETRY_URL_FILE
    staging = target.with_name(f".{TELEMETRY_URL_FILE}.tmp")
    staging.write_text(f"{url}\n")
    staging.replace(target)


def read_telemetry_url(state_dir: str | Path) -> str | None:
    """The endpoint the sandbox's node agent recorded, or None when none did."""
    try:
        return (Path(state_dir) / TELEMETRY_URL_FILE).read_text().strip() or None
    except OSError:
        return None
