"""Whether a node kopf's index lacks is really gone: asked of the API server before a worker is read as lost.

A worker on a node the index does not hold is read as on a lost node (not running), and a scale-down or a
suspend deletes such a worker without asking it for a checkpoint. kopf's watches are separate streams with
no order between kinds, so the index can lack a node that exists: its ADDED not processed yet, or a node
added while the node watch was broken and not listed again yet. A LIST tells which (the `list` verb the
node watch has already; no `get` is granted): by name for one node, of every node's metadata for more (a
pool reclaimed at once). The answers are kept NODE_CHECK_SECONDS from when the LIST returned, so that the
reconciles of a deleted node's jobs (its pods stay about 40 s) do not each ask again, and one LIST runs at a
time: a reconcile missing the same nodes waits for it and reads its answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from kubefit.controller.kube import error_message
from kubefit.controller.resync import API_ERRORS

logger = logging.getLogger("kubefit.node_check")

NODE_CHECK_SECONDS = 5.0


class NodeCheck:
    """`present(names)`: of nodes kopf's index lacks, those the API server has (answers kept a while).

    An API error answers "present" for its nodes, kept as an answer: a node not known to be gone is not taken
    for gone (its workers would lose their checkpoint), and a server that does not answer is asked once per
    NODE_CHECK_SECONDS, not once per reconcile."""

    def __init__(
        self,
        listed: Callable[[str], bool],
        every_node: Callable[[], set[str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listed = listed
        self._every_node = every_node
        self._clock = clock
        self._lock = threading.Lock()  # guards _answers
        self._listing = threading.Lock()  # one LIST at a time
        self._answers: dict[str, tuple[bool, float]] = {}

    def present(self, names: Iterable[str]) -> frozenset[str]:
        wanted = set(names)
        if not wanted:
            return frozenset()
        known = self._known(wanted)
        if len(known) < len(wanted):
            with self._listing:
                known = self._known(wanted)  # what a LIST that ran meanwhile answered
                unknown = wanted - known.keys()
                if unknown:
                    known.update(self._ask(unknown))
        return frozenset(name for name in wanted if known[name])

    def _known(self, names: set[str]) -> dict[str, bool]:
        now = self._clock()
        with self._lock:
            self._answers = {
                node: seen for node, seen in self._answers.items() if now - seen[1] < NODE_CHECK_SECONDS
            }
            return {name: self._answers[name][0] for name in names if name in self._answers}

    def _ask(self, names: set[str]) -> dict[str, bool]:
        try:
            if len(names) == 1:
                (name,) = names
                found = {name} if self._listed(name) else set()
            else:
                found = self._every_node() & names
        except API_ERRORS as error:
            logger.warning(
                "nodes %s are not in the node index and could not be listed (%s): not taken as lost",
                ", ".join(sorted(names)[:10]),
                error_message(error),
            )
            found = set(names)
        if found:
            logger.info(
                "nodes %s exist though the node index lacks them (its watch lags): their workers are not lost",
                ", ".join(sorted(found)[:10]),
            )
        answers = {name: name in found for name in names}
        at = self._clock()  # from when the LIST returned: a slow one does not leave its answers stale
        with self._lock:
            self._answers.update({name: (answer, at) for name, answer in answers.items()})
        return answers
