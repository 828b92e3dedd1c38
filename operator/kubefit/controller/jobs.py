"""The TrainingJobs as the operator last saw them: fed by kopf's watch and by the answers to its own status
patches, so a reconcile reads its job from memory instead of a GET (5.6 GETs a job at 500 jobs were a third
of the operator's API requests, docs/performance.md).

A job that is not here (the watch has not shown it yet, or the cache is not fed, as in unit tests) is read
from the API server. A job deleted a moment ago is answered as gone without asking: the pod events of its
workers' deletion would otherwise each make a GET answered 404.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubefit.api.resource import JobKey

# How long a deleted job is answered as gone from memory (its workers' deletion events come within it).
DELETED_MEMORY_SECONDS = 60.0
# What changes on every write and says nothing about the job: not a reason to reconcile it.
_VOLATILE_METADATA = frozenset({"resourceVersion", "managedFields"})

JobReader = Callable[[str, str], "dict[str, Any] | None"]


def _resource_version(job: Mapping[str, Any]) -> int | None:
    """The object's resourceVersion as a number, or None if it is not one.

    The API conventions call it opaque; every API server built on etcd writes etcd's revision there, which
    only grows. It is compared only to keep a newer copy (a status patch's answer) from being replaced by an
    older watch event still on its way; when it is not a number, the latest copy seen wins, as in client-go's
    informers.
    """
    value = (job.get("metadata") or {}).get("resourceVersion")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _essence(job: Mapping[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in (job.get("metadata") or {}).items() if k not in _VOLATILE_METADATA}
    return {**job, "metadata": metadata}


class JobCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[JobKey, dict[str, Any]] = {}
        self._deleted: dict[JobKey, tuple[str, float]] = {}  # key -> (uid, clock() of its DELETED event)
        self._clock = clock

    def observe(self, key: JobKey, job: dict[str, Any]) -> bool:
        """Keeps `job` (a watch event's object or a write's answer) unless a newer copy is held.

        True if it differs from the copy held in more than its resourceVersion: a job that is new to this
        process, or changed by someone else than this process's own status patches (whose answers were kept).
        """
        metadata = job.get("metadata") or {}
        uid = metadata.get("uid")
        if "managedFields" in metadata:  # several KiB a job that nothing here reads
            job = {**job, "metadata": {k: v for k, v in metadata.items() if k != "managedFields"}}
        with self._lock:
            if key in self._deleted and self._deleted[key][0] == uid:
                return False  # a status patch's answer that came back after the job's DELETED event
            self._deleted.pop(key, None)
            held = self._jobs.get(key)
            if held is not None:
                held_version, version = _resource_version(held), _resource_version(job)
                if held_version is not None and version is not None and version < held_version:
                    return False  # an older event, overtaken by a write's answer
            self._jobs[key] = job
            return held is None or _essence(held) != _essence(job)

    def deleted(self, key: JobKey, uid: str | None) -> bool:
        """The job `uid` is gone: forgotten, and answered as gone for a while, unless the copy held is already
        another job created under its name since (its event came first). False in that case."""
        with self._lock:
            held_uid = (self._jobs.get(key, {}).get("metadata") or {}).get("uid")
            replaced = uid is not None and held_uid not in (None, uid)
            if not replaced:
                self._jobs.pop(key, None)
            self._deleted[key] = (uid or "", self._clock())
            oldest = self._clock() - DELETED_MEMORY_SECONDS
            for gone in [gone for gone, (_, at) in self._deleted.items() if at < oldest]:
                del self._deleted[gone]
            return not replaced

    def keys(self) -> list[JobKey]:
        with self._lock:
            return list(self._jobs)

    def held(self, key: JobKey) -> dict[str, Any] | None:
        """The job as last seen, None where it is not held (nothing is fetched)."""
        with self._lock:
            return self._jobs.get(key)

    def read(self, key: JobKey, fetch: JobReader) -> dict[str, Any] | None:
        """The job as last seen; from `fetch` (the API server) when it is not held; None if it is gone."""
        with self._lock:
            held = self._jobs.get(key)
            deleted_at = self._deleted[key][1] if key in self._deleted else float("-inf")
            recently_deleted = self._clock() - deleted_at < DELETED_MEMORY_SECONDS
        if held is not None:
            return held
        if recently_deleted:
            return None
        return fetch(*key)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._jobs
