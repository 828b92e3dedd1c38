"""Rendezvous environment for each worker: how the framework's processes find each other.

pytorch: the classic MASTER_ADDR/WORLD_SIZE/RANK variables plus torchrun's PET_* variables (torchrun
reads PET_<OPTION> for each command-line option). Elastic jobs get the c10d rendezvous with the job's
UID as its id and PET_NNODES=min:max, so torchrun re-forms the group when workers come and go. The
store lives on worker 0, which a scale-down never removes (the highest index goes first), and only
worker 0 hosts it (PET_RDZV_CONF is_host=1, the others 0): torchrun's own guess compares host names and
addresses, which fails where pods share a machine (the sandbox) or a name resolves elsewhere.
PET_MAX_RESTARTS=elastic.maxRestarts, as Kubeflow's elasticPolicy.maxRestarts: when a peer leaves, the
survivors' training processes fail and torchrun restarts them in place, which costs one restart.
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: with torch's default (the rank-0 agent shares its own TCPStore
with the workers), a worker added to a running group never joins it. The rank-0 agent publishes that
store's address once, under the first round's key prefix, and keeps it (`_bootstrap_store_info`,
torch 2.13 torch/distributed/elastic/rendezvous/dynamic_rendezvous.py:1209); the new agent, not rank 0
and with nothing cached, waits for the address under the new round's prefix (rendezvous/api.py:102),
which nobody writes, so rank 0's exchange of ranks (`_assign_worker_ranks`, agent/server/api.py:635)
times out after 60 s and every agent exits. With the option each round's rank 0 publishes a fresh
address and its first training process hosts the store, as before pytorch/pytorch#128096 made sharing
the default. Measured by hand with three torchrun agents (docs/sandbox.md).
PET_RDZV_CONF also sets read_timeout=RENDEZVOUS_READ_TIMEOUT_SECONDS: the c10d backend's default of 60 s
is how long a worker's agent waits to reach worker 0's store (torch/distributed/elastic/rendezvous/
c10d_rendezvous_backend.py, `_create_tcp_store`), and workers are created together while worker 0 may
still pull its image. A template's PET_RDZV_CONF keeps its own keys; is_host stays the operator's.
jax: the coordinator address and process count/id for `jax.distributed.initialize`, fixed when the pod
is created (jax reads JAX_COORDINATOR_ADDRESS alone from the environment: pass the other two); a change of the worker count restarts every worker, elastic or not
(decisions/running.py, `_restart_plan`), so a new pod always sees the current count.
none: nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubefit.api.models import Framework, TrainingJobSpec
from kubefit.builders.naming import RENDEZVOUS_PORT

# How long an elastic worker's torchrun agent waits for worker 0's rendezvous store: torchrun's own
# rendezvous join timeout (600 s), where the c10d backend's 60 s gave up on a worker 0 still pulling its
# image, so every other worker failed.
RENDEZVOUS_READ_TIMEOUT_SECONDS = 600
RENDEZVOUS_CONF = "PET_RDZV_CONF"
# The variables set under both names, torchrun reading the PET_ one: a template that sets one of a pair sets
# both (builders/pods.py). NNODES is not one: an elastic job's PET_NNODES is a range.
_PAIRS = {name: f"PET_{name}" for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "NPROC_PER_NODE")}
TORCHRUN_TWINS = _PAIRS | {pet: plain for plain, pet in _PAIRS.items()}


def fixed_world(spec: TrainingJobSpec) -> bool:
    """Whether the workers' group size is fixed when they start: a job that is not elastic (static
    rendezvous, WORLD_SIZE), and an elastic jax one (JAX_NUM_PROCESSES is read once). Such a group cannot
    lose or gain a worker while it runs: a new count, or a failed worker, restarts every worker."""
    return not spec.elastic.enabled or spec.framework == "jax"


SHUTDOWN_TIMEOUT = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
TORCHRUN_EXIT_SECONDS = 5  # of the grace period, left to torchrun after its processes' shutdown timeout


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
    rendezvous_host: str  # worker 0's fully qualified DNS name (naming.rendezvous_host)
    max_restarts: int = 0  # torchrun's in-place restarts (PET_MAX_RESTARTS), elastic jobs only
    termination_grace_seconds: int = 0  # the pod's; 0: torchrun's own shutdown timeout is left alone

    @property
    def nnodes(self) -> str:
        """torchrun's node range of an elastic group (PET_NNODES): read once, when the worker starts."""
        return f"{self.min_workers}:{self.max_workers}"


def rendezvous_env(framework: Framework, group: WorkerGroup, index: int) -> list[dict[str, str]]:
    if framework == "pytorch":
        variables = _pytorch(group, index)
    elif framework == "jax":
        variables = _jax(group, index)
    else:
        variables = {}
    return [{"name": name, "value": value} for name, value in variables.items()]


def _pytorch(group: WorkerGroup, index: int) -> dict[str, str]:
    host = group.rendezvous_host
    nnodes = group.nnodes if group.elastic else str(group.workers)
    variables = {
        "MASTER_ADDR": host,
        "MASTER_PORT": str(RENDEZVOUS_PORT),
        "WORLD_SIZE": str(group.workers),
        "RANK": str(index),
        "NODE_RANK": str(index),
        # The range on an elastic job, as PET_NNODES: `torchrun --nnodes=$NNODES` must not make it static.
        "NNODES": nnodes,
        "NPROC_PER_NODE": str(group.processes_per_worker),
        "PET_MASTER_ADDR": host,
        "PET_MASTER_PORT": str(RENDEZVOUS_PORT),
        "PET_NNODES": nnodes,
        "PET_NODE_RANK": str(index),
        "PET_NPROC_PER_NODE": str(group.processes_per_worker),
    }
    if group.termination_grace_seconds:
        # torchrun, the container's first process, forwards SIGTERM to the training processes and SIGKILLs
        # them after 30 s unless told otherwise: a save on SIGTERM gets the pod's grace period, less a few
        # seconds for torchrun to exit. Read by torchrun since its --shutdown-timeout (older ones ignore it).
        variables[SHUTDOWN_TIMEOUT] = str(max(1, group.termination_grace_seconds - TORCHRUN_EXIT_SECONDS))
    if group.elastic:
        variables |= {
            "PET_RDZV_BACKEND": "c10d",
            "PET_RDZV_ENDPOINT": f"{host}:{RENDEZVOUS_PORT}",
            "PET_RDZV_ID": group.job_uid or group.job_name,
            RENDEZVOUS_CONF: f"is_host={1 if index == 0 else 0},read_timeout={RENDEZVOUS_READ_TIMEOUT_SECONDS}",
            "PET_MAX_RESTARTS": str(group.max_restarts),
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",  # so that workers can join a running group (doc)
        }
    return variables


def _jax(group: WorkerGroup, index: int) -> dict[str, str]:
    return {
        "JAX_COORDINATOR_ADDRESS": f"{group.rendezvous_host}:{RENDEZVOUS_PORT}",
        "JAX_NUM_PROCESSES": str(group.workers),
        "JAX_PROCESS_ID": str(index),
    }


def merged_rendezvous_conf(ours: str, template: str) -> str:
    """torchrun's rendezvous options (`key=value,...`) with a template's own keys: theirs win, but is_host
    stays ours, since one template serves every worker and only worker 0 hosts the store."""
    options = dict(_options(ours))
    for key, value in _options(template):
        if key != "is_host":
            options[key] = value
    return ",".join(f"{key}={value}" for key, value in options.items())


def _options(conf: str) -> list[tuple[str, str]]:
    pairs = (part.partition("=") for part in conf.split(",") if part.strip())
    return [(key.strip(), value.strip()) for key, _, value in pairs]
