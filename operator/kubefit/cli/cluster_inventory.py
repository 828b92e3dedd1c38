"""`kubefit size --cluster`: the live accelerator inventory, read the way the operator reads it.

The operator keeps every node and every pod in kopf indexes and turns them into an inventory with
decisions.inventory (node_facts, pod_usage, build_inventory), counting the job's own workers as free and
offering only the nodes the worker pod's nodeSelector, required node affinity and tolerations admit. Here
the same functions run over one listing of the nodes and of the pods of all namespaces, through the
kubeconfig ($KUBECONFIG, else ~/.kube/config) and its current context or --context.

Imported only when --cluster is given, so that the offline `kubefit size` never loads the Kubernetes client.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubefit.decisions.inventory import Inventory, PodUsage, build_inventory, node_facts, pod_usage
from kubefit.decisions.node_match import placement_of, template_pod_spec
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
    """A client for the kubeconfig's current context (or `context`); no request is sent yet."""
    configuration = client.Configuration()
    where = f"kubeconfig {kubeconfig_source()}" + (f", context {context!r}" if context else "")
    try:
        # Read now, not from the client's default (taken from the environment when it was imported).
        source = kubeconfig_source()
        config.load_kube_config(config_file=source, context=context, client_configuration=configuration)
        contexts, active = config.list_kube_config_contexts(config_file=source)
    except (config.ConfigException, yaml.YAMLError, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())  # a YAML error spans lines; the command reports in one
        raise ClusterUnreadable(f"cannot read the {where}: {detail}") from None
    chosen = next((item for item in contexts if item["name"] == context), active) if context else active
    namespace = str(((chosen or {}).get("context") or {}).get("namespace") or "default")
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
        yield from page.get("items") or []
        token = (page.get("metadata") or {}).get("continue") or None
        if token is None:
            return


def job_key(manifest: Mapping[str, Any], default_namespace: str) -> tuple[str, str]:
    """(namespace, name) of the TrainingJob, as the operator keys its workers."""
    metadata = manifest.get("metadata") or {}
    return str(metadata.get("namespace") or default_namespace), str(metadata.get("name") or "")


def read_inventory(manifest: Mapping[str, Any], catalog: Catalog, context: str | None) -> Inventory:
    """The inventory the operator would size `manifest` against: nodes split by the worker pod's
    placement, free devices net of every bound, unfinished pod except the job's own workers."""
    connection = connect(context)
    nodes = [node_facts(node) for node in _pages(connection, "nodes")]
    usage: dict[str, list[PodUsage]] = {}
    for pod in _pages(connection, "pods"):
        held = pod_usage(pod)
        if held is not None:
            usage.setdefault(held.node_name, []).append(held)
    placement = placement_of(template_pod_spec(manifest.get("spec")))
    return build_inventory(
        nodes, usage, catalog, for_job=job_key(manifest, connection.namespace), placement=placement
    )
