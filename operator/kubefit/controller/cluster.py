"""What the controller reads of the cluster between API calls: kopf's indexes, behind plain callables, and the
accelerator catalog with each node's accelerator remembered."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from kubefit.api.resource import JobKey
from kubefit.decisions.inventory import NodeFacts, PodUsage
from kubefit.decisions.observed import WorkerPod
from kubefit.decisions.quota import Quota
from kubefit.sizing.catalog import Accelerator, Catalog

# Distinct node label sets remembered; past it the memory starts afresh (labels changed on many nodes).
REMEMBERED_LABEL_SETS = 50_000


@dataclass(frozen=True)
class ClusterView:
    """What kopf's indexes hold: the nodes, the accelerators pods hold per node, each job's workers, and the jobs
    it holds worker pods of (none where not given)."""

    nodes: Callable[[], Sequence[NodeFacts]]
    usage: Callable[[], Mapping[str, Iterable[PodUsage]]]
    workers: Callable[[JobKey], list[WorkerPod]]
    jobs_with_workers: Callable[[], Iterable[JobKey]] = lambda: ()
    # Every TrainingJob the operator watches, with workers or not (kopf's index; none where not given).
    jobs: Callable[[], Iterable[JobKey]] = lambda: ()
    # Whether the cluster has a node of that name (kopf's index; every name where not given).
    node_exists: Callable[[str], bool] = lambda name: True
    # The ResourceQuotas of a namespace, as their status reads (none where not given).
    quotas: Callable[[str], Sequence[Quota]] = lambda namespace: ()


class RememberingCatalog(Catalog):
    """The catalog, whose `identify` remembers the answer for each node label set it has seen.

    Every reconcile and every scheduling pass identifies the accelerator of every node, and matching a
    node's labels against every catalog entry's label terms was most of a reconcile's time at 5,000 nodes
    (docs/performance.md). A node's labels rarely change, so the answer is looked up by their content.
    """

    def __init__(self, catalog: Catalog) -> None:
        super().__init__(catalog)
        self._identified: dict[frozenset[tuple[str, str]], Accelerator | None] = {}
        # The same labels object again (kopf's index keeps a node's facts until the node changes): by identity,
        # the labels held so that their id is not reused; dropped wholesale once twice the label sets known.
        self._by_identity: dict[int, tuple[Mapping[str, str], Accelerator | None]] = {}

    def identify(self, labels: Mapping[str, str]) -> Accelerator | None:
        seen = self._by_identity.get(id(labels))
        if seen is not None and seen[0] is labels:
            return seen[1]
        key = frozenset(labels.items())
        try:
            accelerator = self._identified[key]
        except KeyError:
            accelerator = super().identify(labels)
            if len(self._identified) >= REMEMBERED_LABEL_SETS:
                self._identified = {}  # one dict swap: a reader on another thread keeps the old one
            self._identified[key] = accelerator
        if len(self._by_identity) >= 2 * len(self._identified) + 1024:
            self._by_identity = {}
        self._by_identity[id(labels)] = (labels, accelerator)
        return accelerator

    def extended(self, extra: Iterable[Accelerator]) -> Catalog:
        return RememberingCatalog(super().extended(extra))


def remembering(catalog: Catalog) -> Catalog:
    """`catalog` with remembered identification (itself if it already is)."""
    return catalog if isinstance(catalog, RememberingCatalog) else RememberingCatalog(catalog)
