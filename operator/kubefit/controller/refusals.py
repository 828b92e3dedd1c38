"""Worker creates the API server refuses for what the pod is (Pod Security Admission, an admission webhook,
a quota, a LimitRange: 400, 403 or 422), or that a name taken by another's pod or Service stops (until that
one is deleted), remembered per job by the reconciler and handed to decide (JobObservation.refused_creates,
.refusal).

A job whose creates are refused gives its gang's grant back (decisions/running._refused_gang) and then takes
no room from other jobs: its demand neither preempts nor shrinks them until a create of its workers goes
through, a dry-run create of one is admitted (try_due, tried; of the worker whose name was taken), its
Service is created (service_created), or its spec changes. status.gang.refused
carries that over an operator restart (recall).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubefit.builders.naming import HELD_POD, HELD_SERVICE, worker_index
from kubefit.controller.kube import PodNameTaken, ServiceTaken, error_message
from kubefit.decisions.gang import previous_gang
from kubefit.decisions.running import REFUSAL_TRY_SECONDS, REFUSED_FOR_SECONDS

# The answers to a worker's create that say the cluster refuses that pod as it is (refused_by_admission).
REFUSED_STATUSES = frozenset({400, 403, 422})
NAME_TAKEN = 409
# A try this much early still counts as due: the resync that brings it is paced, not exact.
_TRY_SLACK = 0.9
# The API server's 422 for a container whose cpu or memory request is above its limit ("must be less than or
# equal to cpu limit", newer versions adding "of 2"). Where the template gives no limit, a LimitRange's
# default limit is what the operator's request is above (docs/operator.md).
_ABOVE_LIMIT = re.compile(r"must be less than or equal to (cpu|memory) limit")
LIMIT_HINT = (
    "; where the template sets no limit, a LimitRange's default limit applies: set spec.resources.cpu and "
    "memory, or the template's requests, within it, or give the template's first container its own limits"
)


def with_limit_hint(message: str) -> str:
    """`message`, with LIMIT_HINT after it where the API server refused a cpu or memory request above its
    limit: the operator's default request against a namespace's LimitRange default, most often."""
    return message + LIMIT_HINT if _ABOVE_LIMIT.search(message) else message


def refused_by_admission(error: BaseException) -> bool:
    """A create the API server refused for what the pod is (400, 403, 422: Pod Security Admission, an
    admission webhook, a quota), not for a conflict (409), its load (429) or a fault of its own (5xx)."""
    return isinstance(error, ApiException) and int(error.status or 0) in REFUSED_STATUSES


def _told(error: BaseException) -> str:
    """The refusal's message: a name held by another's object told as kube.py words it (decisions/running.py
    and recall read it by those words), any other with the API server's answer."""
    if isinstance(error, (PodNameTaken, ServiceTaken)):
        return str(error)
    return with_limit_hint(error_message(error))


def holds_back(error: BaseException) -> bool:
    """A create refused by admission, or stopped by a name another's pod or Service keeps: retried, it
    fails the same way until someone acts, so the job gives its grant back for it (a name being freed, a
    deleted job's workers the garbage collector removes, is retried as any failure)."""
    return refused_by_admission(error) or (isinstance(error, (PodNameTaken, ServiceTaken)) and error.lasting)


@dataclass
class Refusals:
    """One job's refused creates, for one spec generation."""

    # Worker name -> (the first of its refusals in a row, the last one's message), until a create of it goes
    # through or a decision no longer creates it.
    refused: dict[str, tuple[datetime, str]] = field(default_factory=dict)
    # The job's last worker create, refused (its message, when), until one goes through: the job's demand
    # then takes no room from other jobs (JobObservation.refusal), also after its gang gave its grant back.
    refusal: tuple[str, datetime] | None = None
    generation: int | None = None  # the spec generation of both: an edit forgets them
    recalled: bool = False  # status.gang.refused was read once (recall)
    tried_at: float | None = None  # time.monotonic() of the last dry-run create (try_due)
    # Workers whose creates went through while this generation's creates were refused, and whether a
    # refusal came with some of the gang's creates going through (partial): a quota that admits some of
    # the gang but not all. A dry run of one worker cannot stand for such a gang, so none is tried.
    went_through: set[str] = field(default_factory=set)
    partial: bool = False
    rechecked: datetime | None = None  # the first refusal of the run the reconcile went round for
    # Workers refused because another's pod has their name, until a create or dry run of theirs goes through
    # (kept while the queued job creates none): the dry run tries the first of them (one of another worker
    # would be admitted, and the job would take room again for a create that fails).
    taken: set[str] = field(default_factory=set)
    service_taken: bool = False  # the refusal is the job's Service's name, taken: its create ends it

    def of_generation(self, generation: int | None) -> None:
        """Forgets the refused creates of another spec generation: the edit may have put right the cause."""
        if self.generation != generation:
            self._clear()
            self.went_through.clear()
            self.generation, self.partial = generation, False

    def _clear(self) -> None:
        self.refused.clear()
        self.taken.clear()
        self.refusal, self.service_taken = None, False

    def recall(self, status: Mapping[str, Any], generation: int | None, now: datetime, live: bool) -> None:
        """Once per job and process: a refusal that gave the gang's grant back before an operator restart
        (status.gang.refused, written at this generation) holds as if this process had seen it, so that the
        job does not preempt or shrink others for workers the API server would refuse again. Not with `live`
        workers: their creates went through (the status written before them still named the refusal)."""
        if self.recalled:
            return
        self.recalled = True
        refused = previous_gang(status).refused
        if refused and not live and self.refusal is None and status.get("observedGeneration") == generation:
            self.refusal, self.generation = (refused, now), generation
            # Whose name was taken, as the refusal told it: the dry run tries that worker (worker 0's would
            # be admitted, and the job would take room again), or the Service's create does.
            held = HELD_POD.search(refused)
            if held is not None:
                self.taken.add(held.group(1))
            self.service_taken = HELD_SERVICE.search(refused) is not None

    def forget_untried(self, wanted: set[str]) -> None:
        """Workers a decision no longer creates: their refusals in a row have ended."""
        for name in set(self.refused) - wanted:
            del self.refused[name]

    def note(self, manifests: Sequence[dict[str, Any]], errors: Sequence[BaseException | None]) -> None:
        """Records which of a wave's creates the API server refused, and forgets those of workers it created;
        the job's refusal holds while none of its creates goes through (a wave with both leaves it refused:
        its gang cannot start whole)."""
        now, refusal = datetime.now(UTC), None
        for manifest, error in zip(manifests, errors, strict=True):
            name = manifest["metadata"]["name"]
            if error is None:
                self.refused.pop(name, None)
                self.taken.discard(name)
                self.went_through.add(name)
            elif holds_back(error):
                refusal = _told(error)
                self.refused[name] = (self.refused.get(name, (now, ""))[0], refusal)
                if isinstance(error, PodNameTaken):
                    self.taken.add(name)
                else:
                    self.taken.discard(name)
        if refusal is not None:
            self.refusal = (refusal, now)
            self.partial = self.partial or bool(self.went_through - set(self.refused))
        elif any(error is None for error in errors):
            self.refusal = None

    def long_enough(self) -> bool:
        """Once per run of refusals: the last create refused REFUSED_FOR_SECONDS or more after the first
        (what running._refused_gang gives a gang's grant back at), and not gone round for yet."""
        if self.refusal is None or not self.refused:
            return False
        first = min(first for first, _ in self.refused.values())
        if self.rechecked == first or self.refusal[1] < first + timedelta(seconds=REFUSED_FOR_SECONDS):
            return False
        self.rechecked = first
        return True

    def try_due(self) -> bool:
        """Whether to try a dry-run create now (and then one is counted as tried): the refusal holds, no create
        of the gang went through beside it (partial; unless a name was taken: the try is then of that name),
        and REFUSAL_TRY_SECONDS have about passed since the last try."""
        last = self.tried_at
        if self.refusal is None or (self.partial and not self.taken):
            return False
        if self.service_taken:
            return False  # every reconcile tries to create the Service first: that is its try
        if last is not None and time.monotonic() - last < REFUSAL_TRY_SECONDS * _TRY_SLACK:
            return False
        self.tried_at = time.monotonic()
        return True

    def tried(self, error: BaseException | None) -> bool:
        """The dry-run create's answer: True when it was admitted (a name taken comes after admission too),
        which ends the refusal; refused, it holds, with the new message. Any other error is raised."""
        if error is not None and holds_back(error):
            self.refusal = (_told(error), datetime.now(UTC))
            return False
        if error is not None and not (isinstance(error, ApiException) and error.status == NAME_TAKEN):
            raise error
        self._clear()
        return True

    def probe_index(self, job: str) -> int:
        """The worker the dry run tries: the first whose name another's pod took, else worker 0 (an
        admission refusal is the same for every worker)."""
        indices = sorted(index for name in self.taken if (index := worker_index(name, job)) is not None)
        return indices[0] if indices else 0

    def note_service(self, wanted: Sequence[str], error: ServiceTaken) -> None:
        """The job's Service could not be created, its name another's for good: the workers the decision
        would have created next count as refused with its message (no worker is created without it)."""
        if not error.lasting or not wanted:
            return
        now, refusal = datetime.now(UTC), _told(error)
        for name in wanted:
            self.refused[name] = (self.refused.get(name, (now, ""))[0], refusal)
        self.refusal, self.service_taken = (refusal, now), True

    def service_created(self) -> None:
        """The job's Service was created (or found the job's): a refusal for its name is over."""
        if self.service_taken:
            self._clear()
