"""Names, labels and owner references shared by everything the operator creates for a job."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubefit.api.resource import API_VERSION, GROUP, KIND

JOB_LABEL = f"{GROUP}/job"
WORKER_INDEX_LABEL = f"{GROUP}/worker-index"
# The worker count a worker whose group size is fixed at start was started with (its WORLD_SIZE or
# JAX_NUM_PROCESSES): a worker of an older world that survived a restart is told apart by it.
WORLD_SIZE_ANNOTATION = f"{GROUP}/world-size"
# torchrun's node range an elastic pytorch worker was started with (its PET_NNODES, floor:ceiling).
NNODES_ANNOTATION = f"{GROUP}/nnodes"
# The restart attempt of the fixed group a worker was created for (status.gang.attempt): a worker of an
# earlier attempt is stopped, and no new one starts beside it (decisions/running.py).
ATTEMPT_ANNOTATION = f"{GROUP}/restart-attempt"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubefit"
RENDEZVOUS_PORT = 29500
RENDEZVOUS_PORT_NAME = "rendezvous"
DNS_LABEL_MAX = 63
DNS_NAME_MAX = 253  # a whole DNS name, without the trailing dot (RFC 1035: 255 octets on the wire)
DEFAULT_CLUSTER_DOMAIN = "cluster.local"  # the kubelet's --cluster-domain in most clusters
# How a name the job needs that another object holds is told (controller/kube.py): a refusal of its own kind
# (decisions/running.py words it), read back from status.gang.refused after a restart (controller/refusals.py).
NOT_THE_JOBS = "exists and is not this TrainingJob's"
LABEL_LOST = "is this TrainingJob's worker but lost its label"
HELD_POD = re.compile(rf"\bPod [^/\s]+/(\S+) (?:{re.escape(NOT_THE_JOBS)}|{re.escape(LABEL_LOST)})")
HELD_SERVICE = re.compile(rf"\bService [^/\s]+/\S+ {re.escape(NOT_THE_JOBS)}")


@dataclass(frozen=True)
class JobRef:
    """The identity of one TrainingJob: enough to name, label and own its children."""

    name: str
    namespace: str
    uid: str


def worker_name(job_name: str, index: int) -> str:
    return f"{job_name}-worker-{index}"


def widest_index(workers: int) -> int:
    """The largest worker index written with no more digits than `workers - 1`: the job-name checks
    (decisions.job._name_errors: the hostname, and its FQDN) passed that index, so every such name fits."""
    return 10 ** len(str(max(workers - 1, 0))) - 1


def worker_index(pod_name: str, job_name: str) -> int | None:
    """The index encoded in a worker's name, or None for a name this job would not give a worker."""
    prefix = f"{job_name}-worker-"
    digits = pod_name.removeprefix(prefix)
    if (
        digits == pod_name
        or not (digits.isascii() and digits.isdigit())
        or (len(digits) > 1 and digits.startswith("0"))
    ):
        return None
    return int(digits)


def job_selector(job_name: str) -> str:
    """The label selector of a job's workers, as the scale subresource reports it."""
    return f"{JOB_LABEL}={job_name}"


def host_domain(namespace: str, cluster_domain: str) -> str:
    """The DNS domain of a job's namespace: a worker's FQDN is <hostname>.<job>.<this>."""
    return f"{namespace}.svc.{cluster_domain}"


def rendezvous_host(job_name: str, domain: str) -> str:
    """Worker 0's fully qualified DNS name, <hostname>.<subdomain (the headless Service)>.<domain>, `domain`
    being host_domain's. Not the relative <hostname>.<subdomain>: with a pod's search list, where that has
    no answer yet (worker 0 not yet created, or being replaced), the resolver tries it in the next domain,
    svc.<cluster domain>, where it is the Service <job>-worker-0 of a namespace named <job>, which another
    tenant can own (docs/security.md). The FQDN's own expansions by the search list have more labels than any
    name the cluster DNS answers."""
    return f"{worker_name(job_name, 0)}.{job_name}.{domain}"


def owner_reference(job: JobRef) -> dict[str, Any]:
    # controller=true lets the garbage collector delete children with the job; blockOwnerDeletion makes
    # foreground deletion wait for them. Setting it needs update on trainingjobs/finalizers where the
    # OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift's default): the chart grants it.
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_labels(job_name: str) -> dict[str, str]:
    return {JOB_LABEL: job_name, MANAGED_BY_LABEL: MANAGED_BY}
