"""What a worker needs to take part in the checkpoint handshake: the operator's URL and its job's token.

The token is HMAC-SHA256(operator key, job uid) in hex: the operator recomputes it from the job's uid
(it never stores tokens), a worker can only speak for its own job, and a job deleted and recreated under
the same name gets a new uid and so a new token. The contract is in docs/checkpoint-handshake.md.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

CHECKPOINT_URL_ENV = "KUBEFIT_CHECKPOINT_URL"
CHECKPOINT_TOKEN_ENV = "KUBEFIT_CHECKPOINT_TOKEN"
JOB_NAMESPACE_ENV = "KUBEFIT_JOB_NAMESPACE"
JOB_NAME_ENV = "KUBEFIT_JOB_NAME"
WORKER_ENV = "KUBEFIT_WORKER"


@dataclass(frozen=True)
class CheckpointEnv:
    """The handshake endpoint (the operator's checkpoint Service) and this job's bearer token."""

    url: str
    token: str


def checkpoint_token(key: bytes, job_uid: str) -> str:
    """The bearer token of the job with this uid: HMAC-SHA256(key, uid), 64 hex characters."""
    if not key:
        raise ValueError("checkpoint key is empty")
    if not job_uid:
        raise ValueError("job uid is empty: a token needs the job's metadata.uid")
    return hmac.new(key, job_uid.encode("utf-8"), hashlib.sha256).hexdigest()


def checkpoint_env(checkpoint: CheckpointEnv, namespace: str, job_name: str) -> list[dict[str, object]]:
    """The worker container's variables; KUBEFIT_WORKER is the pod's own name, from the downward API."""
    return [
        {"name": CHECKPOINT_URL_ENV, "value": checkpoint.url.rstrip("/")},
        {"name": CHECKPOINT_TOKEN_ENV, "value": checkpoint.token},
        {"name": JOB_NAMESPACE_ENV, "value": namespace},
        {"name": JOB_NAME_ENV, "value": job_name},
        {"name": WORKER_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
