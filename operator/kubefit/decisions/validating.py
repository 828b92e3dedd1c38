"""The validating admission webhook's decision: an AdmissionReview request in, its response out (pure).

The API server sends each CREATE and UPDATE of a TrainingJob (charts/kubefit/templates/webhook.yaml). A spec
that breaks a rule the CRD's schema cannot express is refused, naming every field at fault, by the same
rules the reconcile applies (decisions.job.checked_spec): `kubectl apply` fails at once instead of the job
turning Ready=False, reason InvalidSpec. The operator still checks every job it reconciles, so the webhook
may be off or down (failurePolicy Ignore) without letting anything invalid run.

The scale subresource (`kubectl scale`, an HPA) comes as a Scale, without the job: its count is held to the
operator's worker limit, and the rules that need the rest of the spec are left to the reconcile.

Allowed whatever the spec:
- an UPDATE that leaves the spec as it was: a job that was already invalid (created before the webhook, or
  while it was down) must still take label, annotation and finalizer changes, or it could not be deleted;
- a job being deleted;
- a job in a namespace this operator does not serve (another operator's, with its own rules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kubefit.api.resource import KIND
from kubefit.api.validation import InvalidSpec
from kubefit.decisions.job import checked_spec
from kubefit.sizing.catalog import Catalog

REVIEW_API_VERSION = "admission.k8s.io/v1"
UNPROCESSABLE = 422  # the API server's own code for an invalid object


def review(
    admission_review: Mapping[str, Any],
    catalog: Catalog,
    max_workers_per_job: int,
    serves: Callable[[str], bool] = lambda namespace: True,
) -> dict[str, Any]:
    """The AdmissionReview to answer `admission_review` with."""
    request = admission_review.get("request") or {}
    refusal = _refusal(request, catalog, max_workers_per_job, serves)
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": refusal is None}
    if refusal is not None:
        response["status"] = {"code": UNPROCESSABLE, "reason": "Invalid", "message": refusal}
    return {"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": response}


def _refusal(
    request: Mapping[str, Any], catalog: Catalog, max_workers_per_job: int, serves: Callable[[str], bool]
) -> str | None:
    if request.get("subResource") == "scale":
        return _scale_refusal(request, max_workers_per_job, serves)
    job = request.get("object") or {}
    metadata = job.get("metadata") or {}
    if (request.get("kind") or {}).get("kind") != KIND or request.get("operation") not in (
        "CREATE",
        "UPDATE",
    ):
        return None
    if metadata.get("deletionTimestamp") or not serves(request.get("namespace") or ""):
        return None
    spec = job.get("spec")
    if request.get("operation") == "UPDATE" and spec == (request.get("oldObject") or {}).get("spec"):
        return None
    name = metadata.get("name") or request.get("name") or ""
    try:
        checked_spec(name, spec, catalog, max_workers_per_job)
    except InvalidSpec as invalid:
        return str(invalid)
    return None


def _scale_refusal(
    request: Mapping[str, Any], max_workers_per_job: int, serves: Callable[[str], bool]
) -> str | None:
    """`kubectl scale` and an HPA write the scale subresource: an autoscaling/v1 Scale, not the job. Its
    count goes to spec.workers.replicas, so the operator's limit applies to it; the bounds need no check
    (a count outside minReplicas..maxReplicas is clamped, docs/api.md)."""
    if request.get("operation") != "UPDATE" or not serves(request.get("namespace") or ""):
        return None
    replicas = ((request.get("object") or {}).get("spec") or {}).get("replicas")
    if isinstance(replicas, int) and replicas > max_workers_per_job:
        return (
            f"spec.workers.replicas: {replicas} workers exceed this operator's limit of "
            f"{max_workers_per_job} per job (kubefit run --max-workers-per-job)"
        )
    return None
