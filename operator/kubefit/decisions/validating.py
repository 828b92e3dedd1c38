"""The validating admission webhook's decision: an AdmissionReview request in, its response out (pure).

The API server sends each CREATE and UPDATE of a TrainingJob (charts/kubefit/templates/webhook.yaml). A spec
that breaks a rule the CRD's schema cannot express is refused, naming every field at fault, by the same
rules the reconcile applies (decisions.job.checked_spec): `kubectl apply` fails at once instead of the job
turning Ready=False, reason InvalidSpec. The operator still checks every job it reconciles, so the webhook
may be off or down (failurePolicy Ignore) without letting anything invalid run.

The scale subresource (`kubectl scale`, an HPA) comes as a Scale, without the job: its count is held to the
operator's worker limit, and the rules that need the rest of the spec are left to the reconcile.

An UPDATE is refused only for errors the stored spec (oldObject) did not already have, as Kubernetes
ratchets a CRD's schema: a job that became invalid (a lower --max-workers-per-job, an accelerator gone from
the catalog) can still be suspended or otherwise edited while its workers run on.

Allowed whatever the spec:
- an UPDATE that leaves the spec as it was: a job that was already invalid (created before the webhook, or
  while it was down) must still take label, annotation and finalizer changes, or it could not be deleted;
- a job being deleted;
- a job in a namespace this operator does not serve (another operator's, with its own rules).

While worker pods exist (status.replicas), an UPDATE may not change what the running group's workers share:
resources.accelerator, resources.acceleratorsPerWorker (but to the values status.sizing shows) and
framework, unless it also suspends the job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from kubefit.api.conditions import FINISHED_PHASES
from kubefit.api.resource import KIND
from kubefit.api.validation import FieldError, InvalidSpec
from kubefit.decisions.job import DEFAULT_CLUSTER_DOMAIN, checked_spec, host_domain
from kubefit.decisions.running_group import RunningGroup, sizing_group
from kubefit.sizing.catalog import Catalog

REVIEW_API_VERSION = "admission.k8s.io/v1"
UNPROCESSABLE = 422  # the API server's own code for an invalid object
# Warnings an allowed update carries (kubectl prints each): the errors the job keeps, at most this many, each
# cut to this length (the API server keeps 256 characters of each, 4 KiB in all).
MAX_WARNINGS = 8
MAX_WARNING_CHARS = 256


def review(
    admission_review: Mapping[str, Any],
    catalog: Catalog,
    max_workers_per_job: int,
    serves: Callable[[str], bool] = lambda namespace: True,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> dict[str, Any]:
    """The AdmissionReview to answer `admission_review` with."""
    request = _mapping(admission_review.get("request"))
    kept: list[FieldError] = []
    refusal = _refusal(request, catalog, max_workers_per_job, serves, cluster_domain, kept)
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": refusal is None}
    if refusal is not None:
        response["status"] = {"code": UNPROCESSABLE, "reason": "Invalid", "message": refusal}
    elif kept:
        response["warnings"] = _warnings(kept)
    return {"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": response}


# The name prefix of the pod a template check asks the API server to admit (dryRun=All: nothing is stored).
TEMPLATE_CHECK_PREFIX = "kubefit-template-check-"
# "Pod "x" is invalid: " before the API server's field errors.
_POD_INVALID = re.compile(r'^Pod "[^"]*" is invalid: ')
# A field path of the pod, at the start of an error or after a separator ("[", ", ").
_POD_PATH = re.compile(r"(^|[\[ ])(spec|metadata)\.")


def template_check(
    admission_review: Mapping[str, Any],
    catalog: Catalog,
    serves: Callable[[str], bool] = lambda namespace: True,
) -> tuple[str, dict[str, Any]] | None:
    """(namespace, pod manifest) of the TrainingJob's spec.template as a pod, for the API server to admit
    without storing it; None where there is no template to check: no create or update of a TrainingJob
    whose template changed, a namespace not served, a job being deleted. The API server checks a pod's
    fields the CRD's schema leaves open (an env var name, a port name, an extended resource's amount,
    annotations), and a template it refuses was accepted: every worker create then failed, and a running
    group restarted after such an edit could not start again."""
    request = _mapping(admission_review.get("request"))
    if request.get("subResource") or _mapping(request.get("kind")).get("kind") != KIND:
        return None
    operation, job = request.get("operation"), _mapping(request.get("object"))
    namespace = _text(request.get("namespace")) or _text(_mapping(job.get("metadata")).get("namespace"))
    if operation not in ("CREATE", "UPDATE") or _mapping(job.get("metadata")).get("deletionTimestamp"):
        return None
    if not namespace or not serves(namespace):
        return None
    accelerators = frozenset(entry.resource_name for entry in catalog)
    template = _mapping(_mapping(job.get("spec")).get("template"))
    old_spec = _mapping(_mapping(_mapping(request.get("oldObject")).get("spec")))
    if operation == "UPDATE" and template == _mapping(old_spec.get("template")):
        return None
    pod_spec = template.get("spec")
    if not isinstance(pod_spec, Mapping) or not isinstance(pod_spec.get("containers"), list):
        return None
    template_metadata = _mapping(template.get("metadata"))
    metadata: dict[str, Any] = {"generateName": TEMPLATE_CHECK_PREFIX, "namespace": namespace}
    for field in ("labels", "annotations"):
        if isinstance(template_metadata.get(field), Mapping):
            metadata[field] = template_metadata[field]
    checked = _without_what_the_operator_sets(pod_spec, accelerators)
    return namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": checked}


def _without_what_the_operator_sets(
    pod_spec: Mapping[str, Any], accelerators: frozenset[str]
) -> dict[str, Any]:
    """The template's pod spec less what the operator replaces in every worker (builders/pods.py), where the
    template's own value may be one the API server refuses although the worker's is fine: the accelerator
    resources of every container (it requests its own), a trainer's cpu or memory request above its limit
    (spec.resources replaces the request; its own rules check the rest: decisions/job.py), an empty
    required node affinity (it adds the accelerator's), the hostname, subdomain and restart policy."""
    checked = {key: value for key, value in pod_spec.items() if key not in ("hostname", "subdomain")}
    checked["restartPolicy"] = "Never"
    for field in ("containers", "initContainers"):
        containers = pod_spec.get(field)
        if isinstance(containers, list):
            checked[field] = [
                _without_resources(container, accelerators, trainer=(field, index) == ("containers", 0))
                for index, container in enumerate(containers)
            ]
    node_affinity = _mapping(_mapping(pod_spec.get("affinity")).get("nodeAffinity"))
    required = _mapping(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution"))
    if "requiredDuringSchedulingIgnoredDuringExecution" in node_affinity and not required.get(
        "nodeSelectorTerms"
    ):
        kept = {
            key: value
            for key, value in node_affinity.items()
            if key != "requiredDuringSchedulingIgnoredDuringExecution"
        }
        checked["affinity"] = {**_mapping(pod_spec.get("affinity")), "nodeAffinity": kept}
    return checked


# What the operator sets in the trainer's (the first container's) requests (builders/resources.py).
_TRAINER_SET = ("cpu", "memory")


def _without_resources(container: Any, accelerators: frozenset[str], trainer: bool) -> Any:
    """The container's resources without `accelerators`; for the trainer, a cpu or memory request with a
    limit beside it taken as the limit (kept, not removed: hugepages need one of them)."""
    if not isinstance(container, Mapping) or not isinstance(container.get("resources"), Mapping):
        return container
    resources = dict(container["resources"])
    for kind in ("requests", "limits"):
        if isinstance(resources.get(kind), Mapping):
            resources[kind] = {
                name: value for name, value in resources[kind].items() if name not in accelerators
            }
    requests, limits = resources.get("requests"), resources.get("limits")
    if trainer and isinstance(requests, Mapping) and isinstance(limits, Mapping):
        resources["requests"] = {
            **requests,
            **{name: limits[name] for name in _TRAINER_SET if name in requests and name in limits},
        }
    return {**container, "resources": resources}


def refuses_the_pod(message: str) -> bool:
    """Whether a 422 is the API server's validation of the pod (`Pod "..." is invalid: ...`), not a policy's."""
    return _POD_INVALID.match(message) is not None


def template_refusal(admission_review: Mapping[str, Any], message: str) -> dict[str, Any]:
    """The answer refusing the request whose template the API server refused as a pod (`message`: its
    words), each pod field named as the template's."""
    request = _mapping(admission_review.get("request"))
    errors = _POD_PATH.sub(
        lambda found: f"{found.group(1)}spec.template.{found.group(2)}.", _POD_INVALID.sub("", message)
    )
    refusal = f"spec.template: the API server refuses the worker pod it makes: {errors}"
    response = {"uid": request.get("uid", ""), "allowed": False}
    response["status"] = {"code": UNPROCESSABLE, "reason": "Invalid", "message": refusal}
    return {"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": response}


def _warnings(kept: list[FieldError]) -> list[str]:
    """An update allowed although the job stays invalid (its errors were there before, on fields it leaves
    alone): said at the apply, not only in the job's Ready condition afterwards."""
    lines = [f"still invalid, the job stays Ready=False InvalidSpec: {error}" for error in kept]
    if len(lines) > MAX_WARNINGS:
        lines = [*lines[: MAX_WARNINGS - 1], f"and {len(lines) - MAX_WARNINGS + 1} more errors"]
    return [
        line if len(line) <= MAX_WARNING_CHARS else line[: MAX_WARNING_CHARS - 3] + "..." for line in lines
    ]


def _mapping(value: Any) -> Mapping[str, Any]:
    """A part of the request as a mapping: a malformed part (a list, a string) reads as absent, so the
    answer is the one for a missing part instead of a 500 (the API server never sends one)."""
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _refusal(  # noqa: PLR0913 - the request, the operator's settings, and where the kept errors go
    request: Mapping[str, Any],
    catalog: Catalog,
    max_workers_per_job: int,
    serves: Callable[[str], bool],
    cluster_domain: str,
    kept: list[FieldError],
) -> str | None:
    """Why `request` is refused, or None; `kept` gets the errors an allowed update leaves in place."""
    if request.get("subResource") == "scale":
        return _scale_refusal(request, max_workers_per_job, serves)
    job = _mapping(request.get("object"))
    metadata = _mapping(job.get("metadata"))
    operation = request.get("operation")
    if _mapping(request.get("kind")).get("kind") != KIND or operation not in ("CREATE", "UPDATE"):
        return None
    if metadata.get("deletionTimestamp") or not serves(_text(request.get("namespace"))):
        return None
    spec, old_spec = job.get("spec"), _mapping(request.get("oldObject")).get("spec")
    if operation == "UPDATE" and spec == old_spec:
        return None
    name = _text(metadata.get("name")) or _text(request.get("name"))
    namespace = _text(request.get("namespace")) or _text(metadata.get("namespace"))
    domain = host_domain(namespace, cluster_domain) if namespace else None
    running = _running_of(request, spec)
    errors = _errors(name, spec, catalog, max_workers_per_job, domain, running)
    if operation == "UPDATE":
        errors += _running_group_errors(
            spec, old_spec, _mapping(_mapping(request.get("oldObject")).get("status"))
        )
    if errors and operation == "UPDATE":
        # Ratcheting, as Kubernetes does for a CRD's schema: an error on a field the update leaves as it
        # was, and at fault before too, is no reason to refuse it, or a job that a lower
        # --max-workers-per-job or a smaller catalog made invalid could not even be suspended while its
        # workers run on. By field, not message: a message may quote another field (the worker count in
        # a hostname) that the update changes.
        faulty_before = {
            error.path for error in _errors(name, old_spec, catalog, max_workers_per_job, domain, running)
        }
        old_job = {"metadata": _mapping(_mapping(request.get("oldObject")).get("metadata")), "spec": old_spec}
        new_job = {"metadata": metadata, "spec": spec}
        added = [
            error
            for error in errors
            if error.path not in faulty_before
            or _value_at(new_job, error.path) != _value_at(old_job, error.path)
        ]
        kept.extend(error for error in errors if error not in added)
        errors = added
    return str(InvalidSpec(errors)) if errors else None


# What every worker of a running group must share, with the value an absent field means: a worker created
# after an edit (a replacement, an elastic job's new worker) would join the group on another device, with
# another device count or another rendezvous, while status.sizing sized only the new spec.
_GROUP_FIELDS = (
    (("resources", "accelerator"), "auto", "accelerator"),
    (("resources", "acceleratorsPerWorker"), "auto", "acceleratorsPerWorker"),
    (("framework",), "pytorch", None),
)


def _running_group_errors(spec: Any, old_spec: Any, old_status: Mapping[str, Any]) -> list[FieldError]:
    """An UPDATE that changes what a running group's workers share, while worker pods exist, unless the
    same update suspends the job; a change to what the workers already have (status.sizing) is allowed."""
    workers = _group_pods(old_status)
    if not workers:
        return []
    if _mapping(_mapping(spec).get("runPolicy")).get("suspend") is True:
        return []
    sizing = _mapping(old_status.get("sizing"))
    errors = []
    for path, default, sized in _GROUP_FIELDS:
        new, old = _field(spec, path, default), _field(old_spec, path, default)
        if new == old or (sized is not None and new == sizing.get(sized)):
            continue
        errors.append(
            FieldError(
                "spec." + ".".join(path),
                f"cannot change from {old!r} to {new!r} while {workers} worker pod(s) exist: workers created "
                "later would join the running group with the new value. Suspend the job "
                "(spec.runPolicy.suspend: true) in this update or before it, and resume it once its workers "
                "are gone",
            )
        )
    return errors


def _field(spec: Any, path: tuple[str, ...], default: Any) -> Any:
    value: Any = spec
    for key in path:
        value = _mapping(value).get(key)
    return default if value is None else value


_PATH_PART = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")
_ABSENT = object()


def _value_at(document: Any, path: str) -> Any:
    """The value a FieldError's path (`spec.workers.replicas`, `...containers[0].image`, `...limits[x.y/z]`)
    names in `document`; _ABSENT where there is none."""
    value = document
    for name, bracketed in _PATH_PART.findall(path):
        key: Any = name or bracketed
        if isinstance(value, list) and str(key).isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, Mapping) and key in value:
            value = value[key]
        else:
            return _ABSENT
    return value


def _running_of(request: Mapping[str, Any], spec: Any) -> RunningGroup | None:
    """What a job's live workers share, as the reconcile keeps it for an elastic pytorch job (running_group):
    from the old object's status while it counts worker pods; none for an update that suspends the job.
    Judged without it, an edit the reconcile then refuses (the running device count against a new
    tensorParallel) was admitted."""
    if (
        request.get("operation") != "UPDATE"
        or _mapping(_mapping(spec).get("runPolicy")).get("suspend") is True
    ):
        return None
    status = _mapping(_mapping(request.get("oldObject")).get("status"))
    return sizing_group(status) if _group_pods(status) else None


def _group_pods(status: Mapping[str, Any]) -> int:
    """The worker pods of a group that may still run (status.replicas); none for a finished job, whose pods
    are kept for their logs and which creates no worker again."""
    workers = status.get("replicas")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers <= 0:
        return 0
    return 0 if status.get("phase") in FINISHED_PHASES else workers


def _errors(  # noqa: PLR0913 - the job, the operator's settings, and its running workers
    name: str,
    spec: Any,
    catalog: Catalog,
    max_workers_per_job: int,
    domain: str | None,
    running: RunningGroup | None = None,
) -> list[FieldError]:
    try:
        # Without the planner's advice: a spec that does not fit would be re-planned for its remedies,
        # seconds for an extreme one, past the API server's timeout for this webhook.
        checked_spec(name, spec, catalog, max_workers_per_job, domain=domain, advise=False, running=running)
    except InvalidSpec as invalid:
        return invalid.errors
    return []


def _scale_refusal(
    request: Mapping[str, Any], max_workers_per_job: int, serves: Callable[[str], bool]
) -> str | None:
    """`kubectl scale` and an HPA write the scale subresource: an autoscaling/v1 Scale, not the job. Its
    count goes to spec.workers.replicas, so the operator's limit applies to it; the bounds need no check
    (a count outside minReplicas..maxReplicas is clamped, docs/api.md)."""
    if request.get("operation") != "UPDATE" or not serves(_text(request.get("namespace"))):
        return None
    replicas = _mapping(_mapping(request.get("object")).get("spec")).get("replicas")
    if isinstance(replicas, int) and replicas > max_workers_per_job:
        return (
            f"spec.workers.replicas: {replicas} workers exceed this operator's limit of "
            f"{max_workers_per_job} per job (kubefit run --max-workers-per-job)"
        )
    return None
