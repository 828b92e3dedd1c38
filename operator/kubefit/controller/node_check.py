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
from concurrent.futures import Future
from dataclasses import dataclass

from kubefit.controller.kube import error_message
from kubefit.controller.resync import API_ERRORS

logger = logging.getLogger("kubefit.node_check")

NODE_CHECK_SECONDS = 5.0
# How long a reconcile waits for a LIST another one began for the same nodes.
NODE_CHECK_WAIT_SECONDS = 5.0
EVERY_NODE = "*"  # not a node name (names are DNS subdomains)


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
        # LISTs in flight, by question: a node's name, or EVERY_NODE.
        self._flights: dict[str, Future[frozenset[str] | None]] = {}

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
            every = (
                self._every if self._every and now - self._every[1].returned < NODE_CHECK_SECONDS else None
            )
            known = {}
            for name in names:
                answer = self._answers.get(name)
                if every is not None and (answer is None or every[1].asked > answer.asked):
                    known[name] = name in every[0]  # the later-begun LIST stands
                elif answer is not None:
                    known[name] = answer.present
            return known

    def _ask(self, names: set[str]) -> dict[str, bool]:
        """The API server's answer for `names`: one LIST, or the one in flight for the same question (a pool
        reclaimed makes many reconciles ask at once), waited for NODE_CHECK_WAIT_SECONDS at most: past that,
        the nodes read as present, unkept (a stuck LIST holds up no other reconcile for longer)."""
        question = next(iter(names)) if len(names) == 1 else EVERY_NODE
        with self._lock:
            flight = self._flights.get(question)
            mine = flight is None
            if mine:
                flight = self._flights[question] = Future()
        assert flight is not None
        if not mine:
            try:
                present = flight.result(timeout=NODE_CHECK_WAIT_SECONDS)
            except TimeoutError:
                present = None
            # None: that LIST failed or is slow; the nodes are not known to be gone.
            return {name: present is None or name in present for name in names}
        try:
            answers, listed = self._list(names)
            # Those asked of a LIST of every node get all its names; of a LIST by name, its answer.
            flight.set_result(
                listed
                if listed is not None or question == EVERY_NODE
                else frozenset(name for name, present in answers.items() if present)
            )
            return answers
        except BaseException as error:
            flight.set_exception(error)
            raise
        finally:
            with self._lock:
                self._flights.pop(question, None)

    def _list(self, names: set[str]) -> tuple[dict[str, bool], frozenset[str] | None]:
        """The answers for `names`, kept, and every node's name where every node was listed (None: by name,
        or the LIST failed)."""
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
        return {name: name in found for name in names}, listed
