"""Rendezvous environment for each worker: how the framework's processes find each other.

pytorch: the classic MASTER_ADDR/WORLD_SIZE/RANK variables plus torchrun's PET_* variables (torchrun
reads PET_<OPTION> for each command-line option). Elastic jobs get the c10d rendezvous and
PET_NNODES=min:max, so torchrun re-forms the group when workers come and go.
jax: the coordinator address and process count/id that `jax.distributed.initialize` expects.
none: nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubefit.api.models import Framework
from kubefit.builders.naming import RENDEZVOUS_PORT, rendezvous_host


@dataclass(frozen=True)
class WorkerGroup:
    """The group one worker belongs to, as the rendezvous variables describe it."""

    job_name: str
    job_uid: str
    workers: int  # effective worker count when the pod is built
    min_workers: int
    max_workers: int
    processes_per_worker: int  # one process per accelerator
    elastic: bool


def rendezvous_env(framework: Framework, group: WorkerGroup, index: int) -> list[dict[str, str]]:
    if framework == "pytorch":
        variables = _pytorch(group, index)
    elif framework == "jax":
        variables = _jax(group, index)
    else:
        variables = {}
    return [{"name": name, "value": value} for name, value in variables.items()]


def _pytorch(group: WorkerGroup, index: int) -> dict[str, str]:
    host = rendezvous_host(group.job_name)
    nnodes = f"{group.min_workers}:{group.max_workers}" if group.elastic else str(group.workers)
    variables = {
        "MASTER_ADDR": host,
        "MASTER_PORT": str(RENDEZVOUS_PORT),
        "WORLD_SIZE": str(group.workers),
        "RANK": str(index),
        "NODE_RANK": str(index),
        "NNODES": str(group.workers),
        "NPROC_PER_NODE": str(group.processes_per_worker),
        "PET_MASTER_ADDR": host,
        "PET_MASTER_PORT": str(RENDEZVOUS_PORT),
        "PET_NNODES": nnodes,
        "PET_NODE_RANK": str(index),
        "PET_NPROC_PER_NODE": str(group.processes_per_worker),
    }
    if group.elastic:
        variables |= {
            "PET_RDZV_BACKEND": "c10d",
            "PET_RDZV_ENDPOINT": f"{host}:{RENDEZVOUS_PORT}",
            "PET_RDZV_ID": group.job_uid or group.job_name,
        }
    return variables


def _jax(group: WorkerGroup, index: int) -> dict[str, str]:
    return {
        "JAX_COORDINATOR_ADDRESS": f"{rendezvous_host(group.job_name)}:{RENDEZVOUS_PORT}",
        "JAX_NUM_PROCESSES": str(group.workers),
        "JAX_PROCESS_ID": str(index),
    }
