"""Whether the cluster's TrainingJob CustomResourceDefinition holds every field this operator writes.

Helm installs crds/ once and never upgrades it. An operator upgraded without `kubectl apply -f crds/` runs
on the older CRD, and the API server prunes every field that CRD does not list from each write: status
fields the operator keeps its state in (a group restart's attempt, a waiting gang's clock) are lost
without an error. The operator refuses to start then, naming the fields; an old replica that leads keeps
leading meanwhile (the new one never becomes ready).
"""

from __future__ import annotations

import logging

from kubefit.api.crd import fields_missing_from
from kubefit.api.resource import CRD_NAME
from kubefit.controller.kube import KubeApi, error_message
from kubefit.controller.resync import API_ERRORS

logger = logging.getLogger("kubefit.crd")

SHOWN_FIELDS = 5
APPLY_HINT = (
    "apply this release's CRD first: kubectl apply --server-side --force-conflicts -f crds/trainingjob.yaml "
    "(the chart's crds/ folder: helm installs it once and never upgrades it)"
)
# One try, answered within seconds: an API server that hangs must not keep the operator from serving its
# health (the liveness probe would restart it in a loop) while it starts.
CHECK_TIMEOUT = (5.0, 10.0)


def check_api() -> KubeApi:
    """A client for the check: one try of each request (urllib3's default makes 4), short waits."""
    return KubeApi.trying_once(CHECK_TIMEOUT)


def installed_crd_problem(api: KubeApi) -> str | None:
    """Why the cluster's TrainingJob CRD cannot serve this operator, or None. An API server that cannot be
    asked is no reason to refuse: logged, and the operator starts (kopf then waits for the API server)."""
    try:
        installed = api.installed_crd(CRD_NAME)
    except API_ERRORS as error:
        logger.warning(
            "could not read the CustomResourceDefinition %s to check it: %s", CRD_NAME, error_message(error)
        )
        return None
    if installed is None:
        return f"the CustomResourceDefinition {CRD_NAME} is not installed: {APPLY_HINT}"
    missing = fields_missing_from(installed)
    if not missing:
        return None
    shown = ", ".join(missing[:SHOWN_FIELDS])
    more = f" and {len(missing) - SHOWN_FIELDS} more" if len(missing) > SHOWN_FIELDS else ""
    return (
        f"the CustomResourceDefinition {CRD_NAME} in the cluster is older than this operator: it lacks "
        f"{shown}{more}, which the API server would drop from every write; {APPLY_HINT}"
    )
