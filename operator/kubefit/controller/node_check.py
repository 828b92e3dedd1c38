"""Whether a node kopf's index lacks is really gone: asked of the API server before a worker is read as lost.

A worker on a node the index does not hold is read as on a lost node (not running), and a scale-down or a
suspend deletes such a worker without asking it for a checkpoint. kopf's watches are separate streams with
no order between kinds, so the index can lack a node that exists: its ADDED not processed yet, or a node
added while the node watch was broken and not listed again yet. One LIST by name tells which (the `list`
verb the node watch has already; no `get` is granted), and the answer is kept NODE_CHECK_SECONDS so that
the reconciles of a deleted node's jobs (its pods stay about 40 s) do not each ask again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kubefit.controller.kube import error_message
from kubefit.controller.resync import API_ERRORS

logger = logging.getLogger("kubefit.node_check")

NODE_CHECK_SECONDS = 5.0


class NodeCheck:
    """`exists(name, indexed)`: True where `indexed(name)`, else the API server's answer (kept a while).

    An API error answers True: the node is not known to be gone, and taking it for gone would skip the
    checkpoint of its workers; the index's word is taken again on the next check."""

    def __init__(self, listed: Callable[[str], bool], clock: Callable[[], float] = time.monotonic) -> None:
        self._listed = listed
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[bool, float]] = {}

    def exists(self, name: str, indexed: Callable[[str], bool]) -> bool:
        if indexed(name):
            return True
        now = self._clock()
        with self._lock:
            self._answers = {
                node: seen for node, seen in self._answers.items() if now - seen[1] < NODE_CHECK_SECONDS
            }
            known = self._answers.get(name)
        if known is not None:
            return known[0]
        try:
            answer = self._listed(name)
        except API_ERRORS as error:
            logger.warning(
                "node %s is not in the node index and could not be listed (%s): not taken as lost",
                name,
                error_message(error),
            )
            return True
        if answer:
            logger.info(
                "node %s exists though the node index lacks it (its watch lags): its workers are not lost",
                name,
            )
        with self._lock:
            self._answers[name] = (answer, now)
        return answer
