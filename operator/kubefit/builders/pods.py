"""The worker Pod of a TrainingJob, built from the user's template and the sizing decision."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from kubefit.api.models import SizingStatus, TrainingJobSpec
from kubefit.api.resource import GROUP
from kubefit.builders.checkpoint import CheckpointEnv, checkpoint_env
from kubefit.builders.naming import (
    ATTEMPT_ANNOTATION,
    DEFAULT_CLUSTER_DOMAIN,
    NNODES_ANNOTATION,
    RENDEZVOUS_PORT,
    RENDEZVOUS_PORT_NAME,
    WORKER_INDEX_LABEL,
    WORLD_SIZE_ANNOTATION,
    JobRef,
    child_labels,
    host_domain,
    owner_reference,
    rendezvous_host,
    worker_name,
)
from kubefit.builders.placement import (
    with_accelerator_affinity,
    with_accelerator_toleration,
    with_preferred_hostnames,
)
from kubefit.builders.rendezvous import (
    RENDEZVOUS_CONF,
    TORCHRUN_TWINS,
    WorkerGroup,
    fixed_world,
    merged_rendezvous_conf,
    rendezvous_env,
)
from kubefit.builders.resources import HostShare, worker_resources
from kubefit.sizing.catalog import Accelerator, worker_topologies

# What Kubernetes gives a pod that sets no terminationGracePeriodSeconds (PodSpec API reference).
KUBERNETES_DEFAULT_GRACE_SECONDS = 30
# A memory-backed /dev/shm for the trainer: the runtime's default is 64 MiB, where NCCL's shared-memory
# transport between a worker's GPUs and PyTorch's DataLoader workers fail ("No space left on device", bus
# errors). Its size is bounded by the worker's memory request, against which its pages count.
SHARED_MEMORY_VOLUME = "kubefit-shm"
SHARED_MEMORY_PATH = "/dev/shm"
# Kubernetes' DNS policy for a hostNetwork pod that resolves cluster names (with none, ClusterFirst falls
# back to the node's resolver, where <job>-worker-0.<job>.<namespace>.svc.<cluster domain> does not resolve).
HOST_NETWORK_DNS_POLICY = "ClusterFirstWithHostNet"


@dataclass(frozen=True)
class WorkerSet:
    """Everything that is the same for all workers of a job at one reconcile."""

    job: JobRef
    spec: TrainingJobSpec
    sizing: SizingStatus
    accelerator: Accelerator  # the catalog entry named by sizing.accelerator
    workers: int  # effective worker count
    min_workers: int
    max_workers: int
    checkpoint: CheckpointEnv | None = None  # the handshake endpoint and token; None: no handshake env
    # Training state offloaded to host memory per worker, added to the default memory request: sized once
    # per job with the rest of the sizing (decisions.job_sizing), never estimated here.
    host_bytes_per_worker: int = 0
    # The catalog's accelerator resources (nvidia.com/gpu, amd.com/gpu, ...): taken out of the requests and
    # limits of every container and initContainer, where a template that names one would make a pod that
    # needs more devices than sized, or fits no node; the first container then gets the sizing's (the
    # accelerator is the operator's to request, docs/security.md). The chosen one is always among them.
    accelerator_resources: frozenset[str] = frozenset()
    # The kubernetes.io/hostname labels of the nodes the scheduling pass reserved for the workers to create
    # (a preference: builders/placement.py).
    preferred_hostnames: tuple[str, ...] = ()
    # The fixed group's restart attempt the workers are created for (status.gang.attempt).
    attempt: int = 0
    # What the job's nodes offer per device, which the default cpu and memory requests fit (None: not known).
    host_share: HostShare | None = None
    # The kubelets' --cluster-domain (ReconcileSettings.cluster_domain): the rendezvous address is worker 0's
    # FQDN in it (naming.rendezvous_host).
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN

    @property
    def fixed_world(self) -> bool:
        """Whether a new worker count restarts every worker (decisions/running.py; rendezvous.fixed_world)."""
        return fixed_world(self.spec)

    @property
    def group(self) -> WorkerGroup:
        return WorkerGroup(
            job_name=self.job.name,
            job_uid=self.job.uid,
            workers=self.workers,
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            processes_per_worker=self.sizing.accelerators_per_worker,
            elastic=self.spec.elastic.enabled,
            rendezvous_host=rendezvous_host(
                self.job.name, host_domain(self.job.namespace, self.cluster_domain)
            ),
            max_restarts=self.spec.elastic.max_restarts,
            termination_grace_seconds=termination_grace_seconds(
                self.spec.template.get("spec") or {}, self.spec.elastic.checkpoint_grace_period_seconds
            ),
        )


def _with_env(container: dict[str, Any], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A variable the user sets in the template wins (e.g. NCCL_*, or a rendezvous option), except that the
    # rendezvous options are merged: worker 0 alone hosts the store (rendezvous.merged_rendezvous_conf).
    # Ours come first: Kubernetes expands $(MASTER_ADDR) in a value only if it is defined earlier.
    ours = {variable["name"]: variable for variable in extra}
    env = [_merged(variable, ours.get(variable.get("name"))) for variable in container.get("env") or []]
    in_front, env = _with_twins(env, ours)
    present = {variable.get("name") for variable in env}
    return [
        in_front.get(variable["name"], variable) for variable in extra if variable["name"] not in present
    ] + env


def _with_twins(
    env: list[dict[str, Any]], ours: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """A copy of each variable whose torchrun twin (MASTER_PORT, PET_MASTER_PORT) the operator sets and the
    template does not, so both agree: {twin: copy} to stand in the operator's place at the front, where a
    reference from anywhere in the template sees it; a value that refers to others ($(...)) is copied into
    `env` right after its last definition instead (the one Kubernetes keeps), as it may refer to the
    template's own variables."""
    names = [variable.get("name") for variable in env]
    in_front: dict[str, dict[str, Any]] = {}
    result = []
    for index, variable in enumerate(env):
        result.append(variable)
        twin = TORCHRUN_TWINS.get(str(variable.get("name")), "")
        refers = f"$({twin})" in str(variable.get("value", ""))  # MASTER_PORT: $(PET_MASTER_PORT) keeps ours
        if (
            twin in ours
            and twin not in names
            and not refers
            and variable.get("name") not in names[index + 1 :]
        ):
            copy = {**variable, "name": twin}
            if "$(" in str(variable.get("value", "")):
                result.append(copy)
            else:
                in_front[twin] = copy
    return in_front, result


def _merged(variable: dict[str, Any], ours: dict[str, Any] | None) -> dict[str, Any]:
    value = variable.get("value")
    if ours is None or variable.get("name") != RENDEZVOUS_CONF or not isinstance(value, str):
        return variable
    return {**variable, "value": merged_rendezvous_conf(ours["value"], value)}


def _with_rendezvous_port(container: dict[str, Any]) -> list[dict[str, Any]]:
    ports = list(container.get("ports") or [])
    if not any(port.get("containerPort") == RENDEZVOUS_PORT for port in ports):
        port = {"name": RENDEZVOUS_PORT_NAME, "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}
        if any(existing.get("name") == RENDEZVOUS_PORT_NAME for existing in ports):
            del port["name"]  # a second port of that name would have the API server refuse every worker
        ports.append(port)
    return ports


def _without_rendezvous_port(container: dict[str, Any]) -> dict[str, Any]:
    """The container's `ports` entry without the rendezvous port; none when nothing else is left."""
    ports = [port for port in container.get("ports") or [] if port.get("containerPort") != RENDEZVOUS_PORT]
    return {"ports": ports} if ports else {}


def _without(container: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """The container without the resources `names` in its requests and limits."""
    resources = container.get("resources")
    if not names or not isinstance(resources, dict):
        return container
    kept = dict(resources)
    for kind in ("requests", "limits"):
        if isinstance(resources.get(kind), dict):
            kept[kind] = {name: value for name, value in resources[kind].items() if name not in names}
    return {**container, "resources": kept}


def _trainer_container(container: dict[str, Any], worker_set: WorkerSet, index: int) -> dict[str, Any]:
    trainer = dict(container)
    trainer["resources"] = worker_resources(
        container.get("resources"),
        worker_set.spec,
        worker_set.sizing,
        worker_set.host_bytes_per_worker,
        worker_set.host_share,
    )
    extra: list[dict[str, Any]] = [*rendezvous_env(worker_set.spec.framework, worker_set.group, index)]
    if worker_set.checkpoint is not None:
        extra += checkpoint_env(worker_set.checkpoint, worker_set.job.namespace, worker_set.job.name)
    trainer["env"] = _with_env(container, extra)
    # On the host network a declared port becomes a port of the node (hostPort), which kube-scheduler
    # gives one pod per node: only worker 0 listens on it (the store's or coordinator's host), so only
    # worker 0 declares it, and the other workers may share a node as the scheduling pass counted them.
    listens = index == 0 or (worker_set.spec.template.get("spec") or {}).get("hostNetwork") is not True
    if worker_set.spec.framework != "none" and listens:
        trainer["ports"] = _with_rendezvous_port(container)
    elif worker_set.spec.framework != "none":
        # The template's own 29500 would be a node port on every worker just as well.
        trainer.pop("ports", None)
        trainer.update(_without_rendezvous_port(container))
    return trainer


def _metadata(template: dict[str, Any], worker_set: WorkerSet, index: int) -> dict[str, Any]:
    metadata = copy.deepcopy(template.get("metadata") or {})
    labels = {**(metadata.get("labels") or {}), **child_labels(worker_set.job.name)}
    labels[WORKER_INDEX_LABEL] = str(index)
    # The operator reads its own annotations back (decisions/observed.py): a template's would pass for them.
    annotations = {
        key: value
        for key, value in (metadata.get("annotations") or {}).items()
        if not key.startswith(f"{GROUP}/")
    }
    if worker_set.fixed_world:
        annotations[WORLD_SIZE_ANNOTATION] = str(worker_set.workers)
        annotations[ATTEMPT_ANNOTATION] = str(worker_set.attempt)
    elif worker_set.spec.framework == "pytorch":
        annotations[NNODES_ANNOTATION] = worker_set.group.nnodes
    return {
        "name": worker_name(worker_set.job.name, index),
        "namespace": worker_set.job.namespace,
        "labels": labels,
        "annotations": annotations,
        "ownerReferences": [owner_reference(worker_set.job)],
    }


def _init_containers(
    pod_spec: dict[str, Any], accelerators: frozenset[str], sizing: SizingStatus
) -> dict[str, Any]:
    init = pod_spec.get("initContainers")
    if not isinstance(init, list):
        return {}
    return {
        "initContainers": [
            _init_container(container, accelerators, sizing) if isinstance(container, dict) else container
            for container in init
        ]
    }


def _init_container(
    container: dict[str, Any], accelerators: frozenset[str], sizing: SizingStatus
) -> dict[str, Any]:
    """A native sidecar (restartPolicy Always) runs beside the trainer, so its requests add to the pod's: it
    holds no accelerator. A classic init container runs before it, and the pod needs the larger of the two:
    it keeps the chosen accelerator (a GPU check, a warm-up), at most the worker's count, and no other."""
    if container.get("restartPolicy") == "Always":
        return _without(container, accelerators)
    chosen, count = sizing.resource_name, sizing.accelerators_per_worker
    kept = _without(container, accelerators - {chosen})
    resources = kept.get("resources")
    if not isinstance(resources, dict):
        return kept
    capped = dict(resources)
    for kind in ("requests", "limits"):
        amounts = resources.get(kind)
        if isinstance(amounts, dict) and chosen in amounts:
            capped[kind] = {**amounts, chosen: str(min(_devices(amounts[chosen], count), count))}
    return {**kept, "resources": capped}


def _devices(quantity: Any, otherwise: int) -> int:
    try:
        return int(str(quantity))
    except ValueError:
        return otherwise


def _shared_memory(
    pod_spec: dict[str, Any], trainer: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer, pod fields): a memory-backed /dev/shm mounted in the trainer, unless the template mounts
    something there or already has a volume of that name."""
    mounts = trainer.get("volumeMounts") or []
    volumes = pod_spec.get("volumes") or []
    if any(str(mount.get("mountPath", "")).rstrip("/") == SHARED_MEMORY_PATH for mount in mounts) or any(
        volume.get("name") == SHARED_MEMORY_VOLUME for volume in volumes
    ):
        return trainer, {}
    size = (trainer.get("resources") or {}).get("requests", {}).get("memory")
    empty_dir = {"medium": "Memory", **({"sizeLimit": size} if size else {})}
    mounted = {
        **trainer,
        "volumeMounts": [*mounts, {"name": SHARED_MEMORY_VOLUME, "mountPath": SHARED_MEMORY_PATH}],
    }
    return mounted, {"volumes": [*volumes, {"name": SHARED_MEMORY_VOLUME, "emptyDir": empty_dir}]}


def _host_network_dns(pod_spec: dict[str, Any]) -> dict[str, Any]:
    # On the host network Kubernetes runs ClusterFirst (the default, and what a pod copied from
    # `kubectl get -o yaml` states) as Default, the node's resolver: worker 0's name would not resolve.
    if pod_spec.get("hostNetwork") is True and pod_spec.get("dnsPolicy") in (None, "", "ClusterFirst"):
        return {"dnsPolicy": HOST_NETWORK_DNS_POLICY}
    return {}


def termination_grace_seconds(pod_spec: dict[str, Any], checkpoint_grace_seconds: int) -> int:
    """At least the checkpoint grace period, so a worker told to stop has time to save on SIGTERM."""
    own = pod_spec.get("terminationGracePeriodSeconds")
    if isinstance(own, bool) or not isinstance(own, int):
        own = KUBERNETES_DEFAULT_GRACE_SECONDS
    return max(own, checkpoint_grace_seconds)


def build_worker_pod(worker_set: WorkerSet, index: int) -> dict[str, Any]:
    """Worker `index` of the job: deterministic name, stable DNS, accelerator request and placement."""
    # A fixed world's indices are its ranks. An elastic pytorch group's are names only (torchrun's
    # rendezvous assigns ranks): survivors keep theirs, and a new worker skips one still terminating.
    if index < 0 or (fixed_world(worker_set.spec) and index >= worker_set.workers):
        raise ValueError(f"worker index {index} outside 0..{worker_set.workers - 1}")
    template = copy.deepcopy(worker_set.spec.template)
    pod_spec: dict[str, Any] = template.get("spec") or {}
    accelerators = worker_set.accelerator_resources | {worker_set.sizing.resource_name}
    containers = [_without(container, accelerators) for container in pod_spec["containers"]]
    containers[0] = _trainer_container(containers[0], worker_set, index)
    pod_spec |= _init_containers(pod_spec, accelerators, worker_set.sizing) | _host_network_dns(pod_spec)
    containers[0], shared_memory = _shared_memory(pod_spec, containers[0])
    pod_spec |= shared_memory
    pod_spec |= {
        "containers": containers,
        # The operator replaces failed workers itself (counting restarts), so the kubelet must not.
        "restartPolicy": "Never",
        "hostname": worker_name(worker_set.job.name, index),
        "subdomain": worker_set.job.name,
        "affinity": with_preferred_hostnames(
            with_accelerator_affinity(
                pod_spec.get("affinity"),
                worker_set.accelerator.match,
                worker_topologies(worker_set.accelerator, worker_set.sizing.accelerators_per_worker),
            ),
            worker_set.preferred_hostnames,
        ),
        "tolerations": with_accelerator_toleration(
            pod_spec.get("tolerations"), worker_set.sizing.resource_name
        ),
        "terminationGracePeriodSeconds": worker_set.group.termination_grace_seconds,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(template, worker_set, index),
        "spec": pod_spec,
    }
