"""Whether a node kopf's index lacks is really gone: asked of the API server before a worker is read as lost.

A worker on a node the index does not hold is read as on a lost node (not running), and a scale-down or a
suspend deletes such a worker without asking it for a checkpoint. kopf's watches are separate streams with
no order between kinds, so the index can lack a node that exists: its ADDED not processed yet, or a node
added while the node watch was broken and not listed again yet. A LIST tells which (the `list` verb the
node watch has already; no `get` is granted): by name for one node, of every node's name for more (a pool
reclaimed at once), whose answer then stands for any node. Answers are kept NODE_CHECK_SECONDS from when
their LIST returned, so that the reconciles of a deleted node's jobs (its pods stay about 40 s) do not each
ask again. No lock is held across a LIST: reconciles missing other nodes do not wait for a slow one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kubefit.controller.kube import error_message
from kubefit.controller.resync import API_ERRORS

logger = logging.getLogger("kubefit.node_check")

NODE_CHECK_SECONDS = 5.0


@dataclass(frozen=True)
class _Answer:
    present: bool
    asked: float  # when its LIST began: of two answers, the later-begun one stands
    returned: float  # when its LIST returned: kept NODE_CHECK_SECONDS from then


class NodeCheck:
    """`present(names)`: of nodes kopf's index lacks, those the API server has (answers kept a while).

    An API error answers "present" for its nodes, kept as an answer: a node not known to be gone is not taken
    for gone (its workers would lose their checkpoint), and a server that does not answer is asked again
    only after NODE_CHECK_SECONDS."""

    def __init__(
        self,
        listed: Callable[[str], bool],
        every_node: Callable[[], set[str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listed = listed
        self._every_node = every_node
        self._clock = clock
        self._lock = threading.Lock()  # guards the answers; never held across a LIST
        self._answers: dict[str, _Answer] = {}
        self._every: tuple[frozenset[str], _Answer] | None = None  # the last LIST of every node

    def present(self, names: Iterable[str]) -> frozenset[str]:
        wanted = set(names)
        if not wanted:
            return frozenset()
        known = self._known(wanted)
        unknown = wanted - known.keys()
        if unknown:
            known.update(self._ask(unknown))
        return frozenset(name for name in wanted if known[name])

    def _known(self, names: set[str]) -> dict[str, bool]:
        """The answers kept for `names`. A LIST of every node answers for any node: one added after it began
        is not in it, but a worker runs on a node only well after the node was added (its kubelet registered,
        then ready, the pod bound and started), far longer than an answer is kept, and a worker that does not
        run is asked for no checkpoint anyway."""
        now = self._clock()
        with self._lock:
            self._answers = {
                node: answer
                for node, answer in self._answers.items()
                if now - answer.returned < NODE_CHECK_SECONDS
            }
            known = {name: answer.present for name, answer in self._answers.items() if name in names}
            every = self._every
            if every is not None and now - every[1].returned < NODE_CHECK_SECONDS:
                known.update({name: name in every[0] for name in names - known.keys()})
            return known

    def _ask(self, names: set[str]) -> dict[str, bool]:
        asked = self._clock()
        listed: frozenset[str] | None = None
        try:
            if len(names) == 1:
                (name,) = names
                found = {name} if self._listed(name) else set()
            else:
                listed = frozenset(self._every_node())
                found = names & listed
            failed = False
        except API_ERRORS as error:
            logger.warning(
                "nodes %s are not in the node index and could not be listed (%s): not taken as lost",
                ", ".join(sorted(names)[:10]),
                error_message(error),
            )
            found, failed = set(names), True
        if found and not failed:
            logger.info(
                "nodes %s exist though the node index lacks them (its watch lags): their workers are not lost",
                ", ".join(sorted(found)[:10]),
            )
        returned = self._clock()
        with self._lock:
            for name in names:
                held = self._answers.get(name)
                if held is None or held.asked <= asked:
                    self._answers[name] = _Answer(name in found, asked, returned)
            if listed is not None and (self._every is None or self._every[1].asked <= asked):
                self._every = (listed, _Answer(True, asked, returned))
        return {name: name in found for name in names}
