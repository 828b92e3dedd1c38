"""Simulated node pools for the sandbox: the cluster file, and the Node objects built from it.

A cluster file (see examples/sandbox/cluster.yaml) lists pools of identical nodes:

    pools:
    - {name: h100, accelerator: nvidia-h100-80gb, nodes: 2, acceleratorsPerNode: 8, cpu: 96, memory: 1Ti}
    - {name: cpu, nodes: 1, cpu: 16, memory: 64Gi}          # no accelerator: a CPU-only node
    - {name: l4-run, accelerator: nvidia-l4, nodes: 3, acceleratorsPerNode: 1, processes: true}

`processes: true` makes a pool's nodes run each pod's command as a real local process
(kubefit_sandbox.podprocess); other pools only simulate their pods.

Everything here is pure (no API calls) so that it can be unit-tested; kubefit_sandbox.nodes creates
the nodes and kubefit_sandbox.nodeagent keeps them alive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubefit.api.quantity import parse_bytes
from kubefit.sizing.catalog import (
    SINGLE_HOST_TOPOLOGIES,
    TPU_TOPOLOGY_LABEL,
    Accelerator,
    Catalog,
    load_catalog,
)

# Every node the agent manages carries this label; its value is the pool name.
POOL_LABEL = "kubefit.dev/sandbox-pool"
# The catalog name of the node's accelerator ("none" on CPU-only nodes), read by `node list` and `node add`.
ACCELERATOR_LABEL = "kubefit.dev/sandbox-accelerator"
# "true" on the nodes of a pool with `processes: true`: the node agent runs their pods as local processes.
PROCESSES_LABEL = "kubefit.dev/sandbox-processes"
# The taint of those nodes; a pod meant to run as a process tolerates it (examples/elastic-ddp/sandbox_manifest.py).
PROCESSES_TAINT = {"key": PROCESSES_LABEL, "value": "true", "effect": "NoSchedule"}
NO_ACCELERATOR = "none"

# Taint the API server's admission plugin (TaintNodesByCondition) puts on every new Node; a real kubelet
# has it removed once it reports Ready.
NOT_READY_TAINT_KEY = "node.kubernetes.io/not-ready"

# Kubelet's default --max-pods.
DEFAULT_MAX_PODS = 110
DEFAULT_CPU = "32"
DEFAULT_MEMORY = "128Gi"
DEFAULT_EPHEMERAL_STORAGE = "500Gi"

# Pod and node addresses. A node's index picks its pod CIDR (10.244.<index>.0/24, the flannel/kubeadm
# default range) and its InternalIP (10.240.<index / 250>.<index % 250 + 2>). Nothing routes them:
# they only have to be unique and look like a cluster's.
POD_NETWORK_PREFIX = "10.244"
NODE_NETWORK_PREFIX = "10.240"
MAX_NODES = 256  # one /24 per node inside 10.244.0.0/16

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CPU_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_POOL_FIELDS = {
    "name",
    "accelerator",
    "nodes",
    "acceleratorsPerNode",
    "cpu",
    "memory",
    "ephemeralStorage",
    "pods",
    "instanceType",
    "labels",
    "taints",
    "processes",
}


class ClusterConfigError(ValueError):
    """A cluster file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class NodePool:
    name: str
    accelerator: Accelerator | None  # None: CPU-only nodes
    nodes: int
    accelerators_per_node: int  # 0 on CPU-only nodes
    cpu: str
    memory: str
    ephemeral_storage: str = DEFAULT_EPHEMERAL_STORAGE
    pods: int = DEFAULT_MAX_PODS
    instance_type: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, str], ...] = ()
    processes: bool = False  # run pods as local processes (docs/sandbox.md, "Real processes")

    @property
    def accelerator_name(self) -> str:
        return self.accelerator.name if self.accelerator else NO_ACCELERATOR

    def node_names(self) -> list[str]:
        return [f"{self.name}-{index}" for index in range(self.nodes)]


@dataclass(frozen=True)
class ClusterConfig:
    pools: tuple[NodePool, ...]

    def pool(self, name: str) -> NodePool | None:
        return next((pool for pool in self.pools if pool.name == name), None)

    def node_names(self) -> list[str]:
        return [name for pool in self.pools for name in pool.node_names()]


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def _positive_int(value: Any, where: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        floor = "a non-negative" if allow_zero else "a positive"
        raise ClusterConfigError(f"{where} must be {floor} integer, got {value!r}")
    return value


def _cpu(value: Any, where: str) -> str:
    # An int (cores) or a Kubernetes CPU quantity ("96", "0.5", "500m").
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _CPU_QUANTITY.match(text) or float(text.rstrip("m")) <= 0:
        raise ClusterConfigError(
            f"{where} must be a positive CPU quantity such as 96 or '500m', got {value!r}"
        )
    return text


def _bytes_quantity(value: Any, where: str) -> str:
    try:
        parse_bytes(value)
    except (ValueError, TypeError) as exc:
        raise ClusterConfigError(f"{where}: {exc}") from None
    return str(value)


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClusterConfigError(f"{where} must be a mapping of label names to values")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str | int | float | bool):
            raise ClusterConfigError(f"{where}.{key} must be a string value")
    return {key: str(item).lower() if isinstance(item, bool) else str(item) for key, item in value.items()}


def _taints(value: Any, where: str) -> tuple[dict[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ClusterConfigError(f"{where} must be a list of {{key, value, effect}}")
    taints = []
    for index, raw in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("key"), str) or not raw["key"]:
            raise ClusterConfigError(f"{at}.key is required (a taint is {{key, value, effect}})")
        unknown = set(raw) - {"key", "value", "effect"}
        if unknown:
            raise ClusterConfigError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
        effect = raw.get("effect")
        if effect not in _TAINT_EFFECTS:
            raise ClusterConfigError(
                f"{at}.effect must be one of {', '.join(_TAINT_EFFECTS)}, got {effect!r}"
            )
        taint = {"key": raw["key"], "effect": effect}
        if raw.get("value") is not None:
            taint["value"] = str(raw["value"])
        taints.append(taint)
    return tuple(taints)


def default_instance_type(accelerator: Accelerator | None, accelerators_per_node: int, cpu: str) -> str:
    """A made-up but self-describing node.kubernetes.io/instance-type, e.g. sandbox-8x-nvidia-h100-80gb."""
    if accelerator is None:
        return f"sandbox-cpu-{cpu}"
    return f"sandbox-{accelerators_per_node}x-{accelerator.name}"


def _pool_accelerator(name: Any, where: str, catalog: Catalog) -> Accelerator | None:
    """The pool's catalog accelerator; None for a CPU-only pool (no name, or "none")."""
    if name in (None, NO_ACCELERATOR):
        return None
    if not isinstance(name, str) or name not in catalog:
        raise ClusterConfigError(
            f"{where}.accelerator: unknown accelerator {name!r}; "
            f"known: {', '.join(catalog.names())} (or omit it for a CPU-only pool)"
        )
    return catalog.get(name)


def _accelerators_per_node(raw: Mapping[str, Any], accelerator: Accelerator | None, where: str) -> int:
    if accelerator is None:
        if raw.get("acceleratorsPerNode") not in (None, 0):
            raise ClusterConfigError(f"{where}.acceleratorsPerNode is set but the pool has no accelerator")
        return 0
    # Default: the largest count a worker may ask for on one node of that kind (the catalog's perNode).
    return _positive_int(
        raw.get("acceleratorsPerNode", max(accelerator.per_node)), f"{where}.acceleratorsPerNode"
    )


def parse_pool(raw: Any, where: str, catalog: Catalog) -> NodePool:
    """One entry of `pools`; `where` (e.g. "cluster.yaml: pools[0]") prefixes every error."""
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{where} must be a mapping with at least a name")
    unknown = set(raw) - _POOL_FIELDS
    if unknown:
        raise ClusterConfigError(
            f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
            f"known fields: {', '.join(sorted(_POOL_FIELDS))}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 50:
        raise ClusterConfigError(
            f"{where}.name must be a lowercase DNS label (a-z, 0-9, '-') of at most 50 characters, "
            f"got {name!r}"
        )
    where = f"{where}({name})"
    accelerator = _pool_accelerator(raw.get("accelerator"), where, catalog)
    nodes = _positive_int(raw.get("nodes", 1), f"{where}.nodes", allow_zero=True)
    per_node = _accelerators_per_node(raw, accelerator, where)
    cpu = _cpu(raw.get("cpu", DEFAULT_CPU), f"{where}.cpu")
    memory = _bytes_quantity(raw.get("memory", DEFAULT_MEMORY), f"{where}.memory")
    storage = _bytes_quantity(
        raw.get("ephemeralStorage", DEFAULT_EPHEMERAL_STORAGE), f"{where}.ephemeralStorage"
    )
    pods = _positive_int(raw.get("pods", DEFAULT_MAX_PODS), f"{where}.pods")
    instance_type = raw.get("instanceType") or default_instance_type(accelerator, per_node, cpu)
    if not isinstance(instance_type, str):
        raise ClusterConfigError(f"{where}.instanceType must be a string")
    labels = _string_map(raw.get("labels"), f"{where}.labels")
    for reserved in (POOL_LABEL, PROCESSES_LABEL):
        if reserved in labels:
            raise ClusterConfigError(f"{where}.labels.{reserved} is set by the sandbox, not the cluster file")
    processes = raw.get("processes", False)
    if not isinstance(processes, bool):
        raise ClusterConfigError(f"{where}.processes must be true or false, got {processes!r}")
    return NodePool(
        name=name,
        accelerator=accelerator,
        nodes=nodes,
        accelerators_per_node=per_node,
        cpu=cpu,
        memory=memory,
        ephemeral_storage=storage,
        pods=pods,
        instance_type=instance_type,
        labels=labels,
        taints=_taints(raw.get("taints"), f"{where}.taints"),
        processes=processes,
    )


def parse_cluster_config(
    text: str, source: str = "cluster.yaml", catalog: Catalog | None = None
) -> ClusterConfig:
    """Parses and validates a cluster file; errors name the file, the pool and the field."""
    catalog = catalog if catalog is not None else load_catalog()
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ClusterConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("pools"), list):
        raise ClusterConfigError(f"{source}: expected a top-level 'pools' list")
    unknown = set(document) - {"pools"}
    if unknown:
        raise ClusterConfigError(
            f"{source}: unknown top-level field(s) {', '.join(sorted(map(str, unknown)))}"
        )
    pools = tuple(
        parse_pool(raw, f"{source}: pools[{index}]", catalog) for index, raw in enumerate(document["pools"])
    )
    seen: set[str] = set()
    for index, pool in enumerate(pools):
        if pool.name in seen:
            raise ClusterConfigError(
                f"{source}: pools[{index}].name {pool.name!r} is used by an earlier pool"
            )
        seen.add(pool.name)
    names = [name for pool in pools for name in pool.node_names()]
    if len(names) > MAX_NODES:
        raise ClusterConfigError(
            f"{source}: {len(names)} nodes in all; the sandbox supports at most {MAX_NODES}"
        )
    return ClusterConfig(pools=pools)


def load_cluster_config(path: str | Path, catalog: Catalog | None = None) -> ClusterConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ClusterConfigError(f"{path}: cannot read cluster file: {exc.strerror}") from None
    return parse_cluster_config(text, str(path), catalog)


# ---------------------------------------------------------------------------------------------
# Node objects
# ---------------------------------------------------------------------------------------------


def single_host_topology(catalog_topology: str, chips: int) -> str:
    """GKE's topology label of a single-host TPU slice of `chips` chips, with as many dimensions as the
    catalog's (2x2 for v5e's 4 chips, 2x2x1 for v5p's): the catalog's one label would make a node of
    another chip count read as one host of a multi-host slice, which the operator leaves out."""
    dimensions = catalog_topology.count("x") + 1
    for topology, topology_chips in SINGLE_HOST_TOPOLOGIES.items():
        if topology_chips == chips and topology.count("x") + 1 == dimensions:
            return topology
    return catalog_topology


def node_labels(pool: NodePool, node_name: str) -> dict[str, str]:
    """The labels a node of this pool carries, as on a real cluster, plus the sandbox's own two."""
    labels = {
        # Set by every kubelet (well-known labels, kubernetes.io/docs/reference/labels-annotations-taints).
        "kubernetes.io/hostname": node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": pool.instance_type,
    }
    if pool.accelerator is not None:
        labels.update(pool.accelerator.node_labels)  # GFD / GKE / AMD labeller labels, from the catalog
        if pool.accelerator.resource_name == "nvidia.com/gpu":
            # GPU Feature Discovery also publishes the device count (sizing-calibration.md section 3.2).
            labels["nvidia.com/gpu.count"] = str(pool.accelerators_per_node)
            labels["nvidia.com/gpu.present"] = "true"  # added by the GPU Operator (same section)
        if TPU_TOPOLOGY_LABEL in labels:
            labels[TPU_TOPOLOGY_LABEL] = single_host_topology(
                labels[TPU_TOPOLOGY_LABEL], pool.accelerators_per_node
            )
    labels.update(pool.labels)
    labels[POOL_LABEL] = pool.name
    labels[ACCELERATOR_LABEL] = pool.accelerator_name
    if pool.processes:
        labels[PROCESSES_LABEL] = "true"
    return labels


def node_resources(pool: NodePool) -> dict[str, str]:
    """status.capacity (= allocatable: the sandbox reserves nothing for system daemons)."""
    resources = {
        "cpu": pool.cpu,
        "memory": pool.memory,
        "ephemeral-storage": pool.ephemeral_storage,
        "pods": str(pool.pods),
    }
    if pool.accelerator is not None:
        resources[pool.accelerator.resource_name] = str(pool.accelerators_per_node)
    return resources


def node_addresses(index: int, node_name: str) -> tuple[str, str]:
    """(InternalIP, pod CIDR) for the node with this index."""
    if not 0 <= index < MAX_NODES:
        raise ValueError(f"node index {index} out of range 0..{MAX_NODES - 1}")
    internal_ip = f"{NODE_NETWORK_PREFIX}.{index // 250}.{index % 250 + 2}"
    return internal_ip, f"{POD_NETWORK_PREFIX}.{index}.0/24"


def free_node_index(pod_cidrs: Iterable[str | None]) -> int:
    """The lowest node index whose pod CIDR none of the existing nodes uses."""
    used = set()
    for cidr in pod_cidrs:
        match = re.match(rf"^{re.escape(POD_NETWORK_PREFIX)}\.(\d+)\.0/24$", cidr or "")
        if match:
            used.add(int(match.group(1)))
    for index in range(MAX_NODES):
        if index not in used:
            return index
    raise ValueError(f"all {MAX_NODES} node address blocks are in use")


def ready_conditions(now: str, since: str | None = None) -> list[dict[str, str]]:
    """The conditions a healthy kubelet reports (messages as the kubelet words them)."""
    since = since or now

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since,
        }

    return [
        condition(
            "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"
        ),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        condition("Ready", "True", "KubeletReady", "kubefit sandbox node agent is posting ready status"),
    ]


def build_node(pool: NodePool, node_name: str, index: int, now: str) -> dict[str, Any]:
    """The Node object (with status) for one node of the pool; `index` picks its addresses."""
    if not _DNS_LABEL.match(node_name) or len(node_name) > 63:
        raise ValueError(f"node name {node_name!r} must be a lowercase DNS label of at most 63 characters")
    internal_ip, pod_cidr = node_addresses(index, node_name)
    resources = node_resources(pool)
    spec: dict[str, Any] = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    taints = [dict(taint) for taint in pool.taints]
    if pool.processes:
        # Only pods that ask for it run as real processes here: an untainted pool took other jobs' workers
        # (a job scaled up, any `auto` one) and ran them on this machine.
        taints.append(dict(PROCESSES_TAINT))
    if taints:
        spec["taints"] = taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name,
            "labels": node_labels(pool, node_name),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},  # as a kubelet-registered node has
        },
        "spec": spec,
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "conditions": ready_conditions(now),
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "kubefit sandbox (simulated)",
                "kernelVersion": "simulated",
                "kubeletVersion": "v1.20.2-kubefit-sandbox",
                "kubeProxyVersion": "v1.20.2-kubefit-sandbox",
                "containerRuntimeVersion": "sandbox://0.1.0",
                "machineID": node_name,
                "systemUUID": node_name,
                "bootID": node_name,
            },
        },
    }


def without_not_ready_taint(taints: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The node's taints minus the API server's not-ready one; other taints (the pool's, a user's) stay."""
    return [dict(taint) for taint in (taints or []) if taint.get("key") != NOT_READY_TAINT_KEY]
