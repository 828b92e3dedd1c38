"""`kubefit size --cluster`: the live accelerator inventory, read the way the operator reads it.

The operator keeps every node and every pod in kopf indexes and turns them into an inventory with
decisions.inventory (node_facts, pod_usage, build_inventory), counting the job's own workers as free and
offering only the nodes the worker pod's nodeSelector, required node affinity and tolerations admit. Here
the same functions run over one listing of the nodes and of the pods of all namespaces, through the
kubeconfig ($KUBECONFIG, else ~/.kube/config) and its current context or --context. While the job's own
workers run, the operator plans an `accelerator: auto` job on their accelerator alone
(decisions.job.kept_accelerator, keyed by the accelerator of its last status.sizing); here that
accelerator is the one the nodes of its live workers carry.

Imported only when --cluster is given, so that the offline `kubefit size` never loads the Kubernetes client.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubefit.builders.naming import JOB_LABEL
from kubefit.cli.top import context_namespace
from kubefit.decisions.inventory import (
    Inventory,
    NodeFacts,
    PodUsage,
    build_inventory,
    node_facts,
    pod_usage,
)
from kubefit.decisions.job import kept_accelerator, spec_accelerator
from kubefit.decisions.node_match import placement_of, template_pod_spec
from kubefit.decisions.observed import WorkerPod, worker_from_pod
from kubefit.decisions.pod_requests import effective_requests
from kubefit.decisions.running_group import RunningGroup
from kubefit.sizing.catalog import Catalog

PAGE_SIZE = 500  # objects per list call: a 5,000-node cluster is read in pages, never in one response
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 60
NEEDED_ACCESS = "kubefit size --cluster needs list on nodes and on pods in all namespaces"


class ClusterUnreadable(Exception):
    """The cluster could not be read: the message names the kubeconfig, the server and the cause."""


@dataclass(frozen=True)
class Connection:
    api: client.CoreV1Api
    server: str
    namespace: str  # the context's namespace, for a manifest that names none ("default" if it has none)


def kubeconfig_source() -> str:
    return os.environ.get("KUBECONFIG") or "~/.kube/config"


def connect(context: str | None) -> Connection:
    """A client for the kubeconfig's current context (or `context`, which needs no current-context in the
    file, as with kubectl); no request is sent yet."""
    configuration = client.Configuration()
    where = f"kubeconfig {kubeconfig_source()}" + (f", context {context!r}" if context else "")
    try:
        # Read now, not from the client's default (taken from the environment when it was imported).
        source = kubeconfig_source()
        config.load_kube_config(config_file=source, context=context, client_configuration=configuration)
        namespace = context_namespace(source, context)
    except (config.ConfigException, yaml.YAMLError, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())  # a YAML error spans lines; the command reports in one
        raise ClusterUnreadable(f"cannot read the {where}: {detail}") from None
    configuration.retries = 1  # fail in seconds, not minutes, when the server does not answer
    return Connection(client.CoreV1Api(client.ApiClient(configuration)), configuration.host, namespace)


def _pages(connection: Connection, kind: str) -> Iterator[dict[str, Any]]:
    """Every object of `kind` (nodes, or pods of all namespaces), one page at a time."""
    lists: dict[str, Callable[..., Any]] = {
        "nodes": connection.api.list_node,
        "pods": connection.api.list_pod_for_all_namespaces,
    }
    token: str | None = None
    while True:
        try:
            response = lists[kind](
                limit=PAGE_SIZE,
                _continue=token,
                _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
            )
            page = json.loads(response.data)
        except ApiException as exc:
            access = f" ({NEEDED_ACCESS})" if exc.status in (401, 403) else ""
            raise ClusterUnreadable(
                f"the cluster at {connection.server} refused to list {kind}: HTTP {exc.status} "
                f"{exc.reason}{access}"
            ) from None
        except (HTTPError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ClusterUnreadable(
                f"cannot reach the cluster at {connection.server} (kubeconfig {kubeconfig_source()}): {reason}"
            ) from None
        items, token = _list_page(page, connection.server, kind)
        yield from items
        if token is None:
            return


def _list_page(page: Any, server: str, kind: str) -> tuple[list[dict[str, Any]], str | None]:
    """The objects of one page of a listing and its continue token. An answer that is JSON but no Kubernetes
    list (`[]`, no items, an item null or no object) is the cluster's fault, exit 3, not an internal error."""
    if isinstance(page, dict) and "items" in page:
        items, metadata = page["items"], page.get("metadata")
        items = [] if items is None else items  # Go writes an empty (nil) slice as null
        metadata = {} if metadata is None else metadata
        if isinstance(items, list) and isinstance(metadata, dict) and all(isinstance(i, dict) for i in items):
            return items, metadata.get("continue") or None
    raise ClusterUnreadable(
        f"cannot list {kind} from the cluster at {server} (kubeconfig {kubeconfig_source()}): the answer is "
        "not a Kubernetes list"
    )


class KeptInventory(NamedTuple):
    """What `kubefit size --cluster` plans against: the inventory, the accelerator the job's running workers
    keep it on (None: not kept) and what its live workers share (None: none lives)."""

    inventory: Inventory
    kept_on: str | None
    running: RunningGroup | None


def read_inventory(
    connection: Connection, manifest: Mapping[str, Any], catalog: Catalog, namespace: str
) -> KeptInventory:
    """The inventory the operator would size `manifest` (a job in `namespace`) against: nodes split by the
    worker pod's placement, free devices net of every bound, unfinished pod except the job's own workers.
    While those run, an `accelerator: auto` job sees only the nodes of their accelerator, as in the
    operator: that accelerator is returned too (None when the inventory is whole), and with it the devices
    each worker requests, which an elastic pytorch job keeps (decisions/running_group.py)."""
    key = (namespace, str((manifest.get("metadata") or {}).get("name") or ""))
    nodes = [_read_item(connection, "nodes", node, _node_reading) for node in _pages(connection, "nodes")]
    usage: dict[str, list[PodUsage]] = {}
    ours: list[WorkerPod] = []
    devices: Counter[str] = Counter()  # the live workers' extended requests, summed
    for pod in _pages(connection, "pods"):
        held, worker, requests = _read_item(connection, "pods", pod, lambda item: _pod_reading(item, key))
        if held is not None:
            usage.setdefault(held.node_name, []).append(held)
        if worker is not None:
            ours.append(worker)
            if not worker.terminating and not worker.finished:
                devices += requests
    placement = placement_of(template_pod_spec(manifest.get("spec")))
    inventory = build_inventory(nodes, usage, catalog, for_job=key, placement=placement)
    running_on = _workers_accelerator(ours, nodes, catalog)
    per_worker = _per_worker(devices, ours, running_on, catalog)
    # The operator reads these from its last status.sizing, which names the accelerator the workers run on
    # and the devices each requests.
    running = RunningGroup(running_on, per_worker) if running_on else None
    kept = kept_accelerator(inventory, running, spec_accelerator(manifest.get("spec")))
    if kept is None or kept is inventory:
        return KeptInventory(inventory, None, running)
    return KeptInventory(kept, running_on, running)


def _pod_reading(
    pod: Mapping[str, Any], key: tuple[str, str]
) -> tuple[PodUsage | None, WorkerPod | None, Counter[str]]:
    """What one pod holds, whether it is a worker of the job `key`, and its effective requests."""
    worker = _own_worker(pod, key)
    requests = effective_requests(pod.get("spec") or {}) if worker is not None else Counter()
    held = pod_usage(pod)
    if held is not None and not isinstance(held.node_name, str):
        raise TypeError("spec.nodeName is not a string")
    return held, worker, requests


def _node_reading(node: Mapping[str, Any]) -> NodeFacts:
    facts = node_facts(node)
    if not isinstance(facts.name, str):
        raise TypeError("metadata.name is not a string")
    return facts


def _read_item(connection: Connection, kind: str, item: dict[str, Any], read: Callable[[Any], Any]) -> Any:
    """`read(item)`; an object of the listing whose fields have the wrong shape (a field that should be an
    object is a string, say) is the cluster's fault, exit 3 naming the object, not an internal error. A real
    API server never answers so; a proxy or a fake one may."""
    try:
        return read(item)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        metadata = item.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        which = f"{kind[:-1]} {name!r}" if isinstance(name, str) else f"a {kind[:-1]} without a name"
        raise ClusterUnreadable(
            f"cannot read {which} from the cluster at {connection.server} (kubeconfig {kubeconfig_source()}): "
            f"a field has the wrong type ({type(exc).__name__}: {exc})"
        ) from None


def _per_worker(
    devices: Counter[str], ours: Sequence[WorkerPod], running_on: str | None, catalog: Catalog
) -> int | None:
    """The devices of `running_on` each live worker requests (their mean, whole), None if none does."""
    live = sum(1 for worker in ours if not worker.terminating and not worker.finished)
    accelerator = catalog.get(running_on) if running_on else None
    total = devices.get(accelerator.resource_name, 0) if accelerator is not None else 0
    return total // live if live and total >= live else None


def _own_worker(pod: Mapping[str, Any], key: tuple[str, str]) -> WorkerPod | None:
    """`pod` as a worker of the job `key` (in its namespace, with its job label, named like a worker), else
    None. The operator also drops a pod another job of the same name controls; its uid is unknown here."""
    metadata = pod.get("metadata") or {}
    if metadata.get("namespace") != key[0] or (metadata.get("labels") or {}).get(JOB_LABEL) != key[1]:
        return None
    worker = worker_from_pod(pod)
    return worker if worker is not None and worker.index is not None else None


def _workers_accelerator(
    ours: Sequence[WorkerPod], nodes: Sequence[NodeFacts], catalog: Catalog
) -> str | None:
    """The accelerator the nodes of the job's live, bound workers carry (the most common, should they
    differ); None when none runs."""
    labels = {node.name: node.labels for node in nodes}
    found: Counter[str] = Counter()
    for worker in sorted(ours, key=lambda pod: pod.index or 0):
        if worker.terminating or worker.finished or worker.node_name not in labels:
            continue
        accelerator = catalog.identify(labels[worker.node_name])
        if accelerator is not None:
            found[accelerator.name] += 1
    return found.most_common(1)[0][0] if found else None
