"""Creating, readying and removing the sandbox's simulated nodes through the API server.

Used by the agent (start_agent creates the cluster file's nodes; the agent readies nodes and clears
the pods of deleted ones) and by `kubefit-sandbox node add|remove|list`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubefit.sizing.catalog import Catalog, load_catalog
from kubefit_sandbox.cluster import (
    ACCELERATOR_LABEL,
    DEFAULT_CPU,
    DEFAULT_EPHEMERAL_STORAGE,
    DEFAULT_MAX_PODS,
    DEFAULT_MEMORY,
    NO_ACCELERATOR,
    NOT_READY_TAINT_KEY,
    POOL_LABEL,
    PROCESSES_LABEL,
    ClusterConfig,
    ClusterConfigError,
    NodePool,
    build_node,
    free_node_index,
    parse_pool,
    ready_conditions,
    without_not_ready_taint,
)
from kubefit_sandbox.errors import NodeAgentError
from kubefit_sandbox.kubeclient import response_json
from kubefit_sandbox.podstatus import rfc3339


def list_sandbox_nodes(core: Any) -> tuple[list[dict], str]:
    """The nodes labelled POOL_LABEL, and the list's resourceVersion to watch from."""
    body = response_json(core.list_node(label_selector=POOL_LABEL, _preload_content=False))
    return body.get("items", []), body["metadata"]["resourceVersion"]


def delete_pod_now(core: Any, namespace: str, name: str, uid: str) -> bool:
    """Deletes the pod now (grace 0); the uid precondition spares a new pod of the same name."""
    from kubernetes import client

    try:
        core.delete_namespaced_pod(
            name,
            namespace,
            body=client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
            ),
        )
        return True
    except client.ApiException as exc:
        if exc.status in (404, 409):  # gone already, or replaced by a pod with another uid
            return False
        raise


def delete_pods_on_node(core: Any, node_name: str) -> int:
    """Deletes (grace 0) every pod bound to the node; returns how many were deleted."""
    pods = response_json(
        core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node_name}", _preload_content=False)
    )
    deleted = 0
    for pod in pods.get("items", []):
        metadata = pod["metadata"]
        deleted += delete_pod_now(core, metadata["namespace"], metadata["name"], metadata["uid"])
    return deleted


def node_needs_fixing(node: Mapping[str, Any]) -> bool:
    """True if the node is not Ready or still has the not-ready taint (make_node_ready fixes both)."""
    taints = (node.get("spec") or {}).get("taints") or []
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return not ready or any(t.get("key") == NOT_READY_TAINT_KEY for t in taints)


def make_node_ready(core: Any, node: Mapping[str, Any]) -> None:
    """Drops the not-ready taint and reports Ready (what a kubelet does after registering)."""
    name = node["metadata"]["name"]
    taints = (node.get("spec") or {}).get("taints") or []
    if any(t.get("key") == NOT_READY_TAINT_KEY for t in taints):
        # Taints have no merge key: the list is replaced as a whole.
        core.patch_node(name, {"spec": {"taints": without_not_ready_taint(taints) or None}})
    now = rfc3339()
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    since = ready.get("lastTransitionTime") if ready and ready.get("status") == "True" else now
    core.patch_node_status(name, {"status": {"conditions": ready_conditions(now, since)}})


def register_node(core: Any, manifest: Mapping[str, Any]) -> None:
    """Creates the Node, then makes it Ready and untainted (the API server adds the taint on create)."""
    from kubernetes import client

    name = manifest["metadata"]["name"]
    try:
        created = response_json(core.create_node(manifest, _preload_content=False))
    except client.ApiException as exc:
        if exc.status == 409:
            raise NodeAgentError(f"a node named {name} already exists") from None
        raise
    # Nodes may carry status on create, but set it through the status subresource as a kubelet does.
    core.patch_node_status(name, {"status": manifest["status"]})
    make_node_ready(core, created)


def _pool_from_node(node: Mapping[str, Any], catalog: Catalog) -> NodePool:
    """The pool a running node belongs to, rebuilt from its labels and capacity (for `node add`)."""
    labels = node["metadata"].get("labels") or {}
    capacity = (node.get("status") or {}).get("capacity") or {}
    accelerator = catalog.get(labels.get(ACCELERATOR_LABEL, NO_ACCELERATOR))
    per_node = int(capacity.get(accelerator.resource_name, 0)) if accelerator else 0
    raw = {
        "name": labels[POOL_LABEL],
        "accelerator": accelerator.name if accelerator else None,
        "acceleratorsPerNode": per_node or None,
        "cpu": capacity.get("cpu", DEFAULT_CPU),
        "memory": capacity.get("memory", DEFAULT_MEMORY),
        "ephemeralStorage": capacity.get("ephemeral-storage", DEFAULT_EPHEMERAL_STORAGE),
        "pods": int(capacity.get("pods", DEFAULT_MAX_PODS)),
        "instanceType": labels.get("node.kubernetes.io/instance-type"),
        "processes": labels.get(PROCESSES_LABEL) == "true",
    }
    return parse_pool(
        {k: v for k, v in raw.items() if v is not None}, f"node {node['metadata']['name']}", catalog
    )


def ensure_pool_nodes(core: Any, config: ClusterConfig) -> list[str]:
    """Creates the cluster file's nodes that do not exist yet; returns their names. Others are left alone."""
    nodes, _ = list_sandbox_nodes(core)
    existing = {node["metadata"]["name"] for node in nodes}
    cidrs = [(node.get("spec") or {}).get("podCIDR") for node in nodes]
    created = []
    for pool in config.pools:
        for name in pool.node_names():
            if name in existing:
                continue
            index = free_node_index(cidrs)
            manifest = build_node(pool, name, index, rfc3339())
            register_node(core, manifest)
            cidrs.append(manifest["spec"]["podCIDR"])
            created.append(name)
    return created


@dataclass(frozen=True)
class NodeRequest:
    """What add_nodes is asked for: `nodes` nodes of a pool; None means "the pool's, or the default"."""

    accelerator: str | None = None  # catalog name; None (or "none") for CPU-only nodes
    count: int | None = None  # accelerators per node
    pool: str | None = None  # default: the one pool of that accelerator, else one named after it
    name: str | None = None  # default: <pool>-<first free index>; only with nodes == 1
    nodes: int = 1
    cpu: str | int | None = None
    memory: str | None = None
    processes: bool | None = None  # run pods as local processes (default: as the pool's nodes do)


class NodeRequestError(NodeAgentError):
    """A NodeRequest that cannot be met; `field` names the NodeRequest field at fault, `detail` says why.

    str() reads "<field><detail>", e.g. "cpu must be a positive CPU quantity ..."; the CLI words the field
    as its option instead.
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}{detail}")
        self.field = field
        self.detail = detail


# Cluster-file fields, as the NodeRequest names them.
_REQUEST_FIELD = {"acceleratorsPerNode": "count", "cpu": "cpu", "memory": "memory", "name": "pool"}


def _request_error(error: ClusterConfigError) -> NodeAgentError:
    """ "node add(h100).cpu must be ..." -> NodeRequestError("cpu", " must be ...")."""
    match = re.match(r"^node add(?:\([^)]*\))?\.(\w+)(.*)$", str(error), re.DOTALL)
    if match and match.group(1) in _REQUEST_FIELD:
        return NodeRequestError(_REQUEST_FIELD[match.group(1)], match.group(2))
    return NodeAgentError(str(error))


def _check_request(request: NodeRequest, catalog: Catalog) -> str | None:
    """The request's accelerator (None for CPU-only) once the request is consistent."""
    accelerator = None if request.accelerator in (None, "", NO_ACCELERATOR) else request.accelerator
    if accelerator is not None and accelerator not in catalog:
        known = ", ".join(catalog.names())
        raise NodeRequestError("accelerator", f": unknown accelerator {accelerator!r}; known: {known}")
    if request.nodes < 1:
        raise NodeRequestError("nodes", f" must be at least 1, got {request.nodes}")
    if request.count is not None and (accelerator is None or request.count < 1):
        raise NodeRequestError(
            "count", " must be a positive number of accelerators, and needs an accelerator"
        )
    if request.name is not None and request.nodes != 1:
        raise NodeRequestError("name", " names a single node: it cannot be used with more than 1 node")
    return accelerator


def _pool_for(
    request: NodeRequest, accelerator: str | None, existing: list[dict], catalog: Catalog
) -> NodePool:
    """The pool the new nodes join: an existing one's sizes (unless overridden), or a new pool."""
    wanted_label = accelerator or NO_ACCELERATOR
    pool = request.pool
    if pool is None:
        pools = {n["metadata"]["labels"][POOL_LABEL] for n in existing
                 if n["metadata"]["labels"].get(ACCELERATOR_LABEL) == wanted_label}  # fmt: skip
        pool = pools.pop() if len(pools) == 1 else (accelerator or "cpu")
    members = [n for n in existing if n["metadata"]["labels"].get(POOL_LABEL) == pool]
    raw: dict[str, Any] = {"name": pool, "accelerator": accelerator}
    if members:
        template = _pool_from_node(members[0], catalog)
        if template.accelerator_name != wanted_label:
            raise NodeRequestError(
                "pool", f": pool {pool!r} holds {template.accelerator_name} nodes, not {wanted_label}"
            )
        raw.update(
            acceleratorsPerNode=template.accelerators_per_node or None,
            cpu=template.cpu,
            memory=template.memory,
            ephemeralStorage=template.ephemeral_storage,
            pods=template.pods,
            processes=template.processes,
        )
    overrides = {"acceleratorsPerNode": request.count, "cpu": request.cpu, "memory": request.memory,
                 "processes": request.processes}  # fmt: skip
    raw.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return parse_pool({k: v for k, v in raw.items() if v is not None}, "node add", catalog)
    except ClusterConfigError as exc:
        raise _request_error(exc) from None


def _new_node_names(request: NodeRequest, pool: str, taken: set[str]) -> list[str]:
    if request.name is not None:
        if request.name in taken:
            raise NodeRequestError("name", f": a node named {request.name} already exists")
        return [request.name]
    names: list[str] = []
    index = 0
    while len(names) < request.nodes:
        if f"{pool}-{index}" not in taken:
            names.append(f"{pool}-{index}")
        index += 1
    return names


def add_nodes(core: Any, request: NodeRequest, catalog: Catalog | None = None) -> list[str]:
    """Adds request.nodes nodes with request.count accelerators each; returns their names.

    Without a pool, the nodes join the one existing pool of that accelerator, or a new pool named after it
    (`cpu` for no accelerator). A new node of an existing pool copies its sizes unless given.
    """
    catalog = catalog if catalog is not None else load_catalog()
    accelerator = _check_request(request, catalog)
    existing, _ = list_sandbox_nodes(core)
    node_pool = _pool_for(request, accelerator, existing, catalog)
    names = _new_node_names(request, node_pool.name, {n["metadata"]["name"] for n in existing})
    cidrs = [(n.get("spec") or {}).get("podCIDR") for n in existing]
    for node_name in names:
        manifest = build_node(node_pool, node_name, free_node_index(cidrs), rfc3339())
        register_node(core, manifest)
        cidrs.append(manifest["spec"]["podCIDR"])
    return names


def remove_node(core: Any, name: str) -> int:
    """Cordons a sandbox node, deletes (grace 0) the pods bound to it, then the node; returns the pod count.

    Pods go first so that the count is exact; any bound in between are deleted by the agent when it
    sees the node go.
    """
    from kubernetes import client

    try:
        node = response_json(core.read_node(name, _preload_content=False))
    except client.ApiException as exc:
        if exc.status == 404:
            raise NodeAgentError(f"no node named {name}") from None
        raise
    if POOL_LABEL not in (node["metadata"].get("labels") or {}):
        raise NodeAgentError(
            f"node {name} is not a sandbox node (it has no {POOL_LABEL} label): not removing it"
        )
    core.patch_node(name, {"spec": {"unschedulable": True}})  # cordon: the scheduler places nothing new
    deleted = delete_pods_on_node(core, name)
    core.delete_node(name)
    return deleted
