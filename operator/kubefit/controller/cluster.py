"""What the controller reads of the cluster between API calls: kopf's indexes, behind plain callables."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kubefit.api.resource import JobKey
from kubefit.decisions.inventory import NodeFacts, PodUsage
from kubefit.decisions.observed import WorkerPod


@dataclass(frozen=True)
class ClusterView:
    """What kopf's indexes hold: the nodes, the accelerators pods hold per node, each job's workers."""

    nodes: Callable[[], Iterable[NodeFacts]]
    usage: Callable[[], Mapping[str, Iterable[PodUsage]]]
    workers: Callable[[JobKey], list[WorkerPod]]
