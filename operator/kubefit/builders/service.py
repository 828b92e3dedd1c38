"""The headless Service that gives workers stable DNS names (<job>-worker-<i>.<job>)."""

from __future__ import annotations

from typing import Any

from kubefit.builders.naming import (
    JOB_LABEL,
    RENDEZVOUS_PORT,
    RENDEZVOUS_PORT_NAME,
    JobRef,
    child_labels,
    owner_reference,
)


def build_headless_service(job: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": job.name,
            "namespace": job.namespace,
            "labels": child_labels(job.name),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": {JOB_LABEL: job.name},
            # Workers resolve each other while they start, before any readiness probe passes.
            "publishNotReadyAddresses": True,
            "ports": [
                {
                    "name": RENDEZVOUS_PORT_NAME,
                    "port": RENDEZVOUS_PORT,
                    "targetPort": RENDEZVOUS_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }
