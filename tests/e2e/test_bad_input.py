"""Bad TrainingJobs on the real control plane: the shared table (tests/unit/bad_specs.py) and
hypothesis-generated specs. Each one is refused by the API server (or, for an unknown field, by kubectl's
schema check) naming the field, or accepted and marked Ready=False InvalidSpec/ReconcileError naming the
field, with no pods. Meanwhile a good job keeps running and the operator process stays up and healthy.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from operator_support import Kube, OperatorProcess, PrivatePool, job_manifest, running_names, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the table is shared with unit tests
from bad_specs import BAD_SPECS, bad_spec_strategy  # noqa: E402

pytestmark = pytest.mark.e2e

REFUSED_BY_OPERATOR = ("InvalidSpec", "ReconcileError")
GENERATED_EXAMPLES = 20


def _job(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubefit.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _apply_all(kube: Kube, jobs: list[dict[str, Any]]) -> dict[str, str]:
    """Applies the jobs in one kubectl call; the API server's error for each job it refused, by name.

    --validate=false: the API server's own verdict, not kubectl's client-side check.
    """
    listed = {"apiVersion": "v1", "kind": "List", "items": jobs}
    result = kube.run("apply", "--validate=false", "-f", "-", input=json.dumps(listed), check=False)
    refusals: dict[str, str] = {}
    for line in result.stderr.splitlines():
        found = re.search(r'TrainingJob\.kubefit\.dev "([^"]+)" is invalid: (.*)', line)
        if found:
            refusals[found.group(1)] = found.group(2)
    unexplained = [line for line in result.stderr.splitlines() if line.strip() and "is invalid" not in line]
    assert not unexplained, result.stderr
    return refusals


def _kubectl_form(field: str) -> str:
    """How kubectl's schema check names an unknown field: ValidationError(TrainingJob.spec): unknown field "x"."""
    parent, _, leaf = field.rpartition(".")
    return f'ValidationError(TrainingJob.{parent}): unknown field "{leaf}"'


def _verdicts(kube: Kube, namespace: str, names: set[str]) -> dict[str, dict[str, Any]] | None:
    """The Ready condition of every job in `names` once the operator has refused them all."""
    jobs = {job["metadata"]["name"]: job for job in kube.items("trainingjobs", namespace)}
    ready: dict[str, dict[str, Any]] = {}
    for name in names:
        conditions = (jobs.get(name, {}).get("status") or {}).get("conditions") or []
        found = next((item for item in conditions if item["type"] == "Ready"), None)
        if found is None or found["reason"] not in REFUSED_BY_OPERATOR:
            return None
        ready[name] = found
    return ready


@pytest.fixture
def good_job(kube: Kube, namespace: str, pool: PrivatePool) -> str:
    """A job that runs (on this test's own nodes) before the bad ones arrive; returns its worker's uid."""
    manifest = job_manifest("good", namespace, pool=pool, workers={"replicas": 1})
    kube.apply(manifest)
    wait_for(
        "the good job's worker running",
        lambda: running_names(kube.workers(namespace, "good")) == ["good-worker-0"],
        timeout=90,
    )
    # The schema declares parts of the template; everything else in it must survive the API server's pruning.
    stored = kube.get("trainingjob", "good", namespace)
    assert stored is not None and stored["spec"]["template"] == manifest["spec"]["template"]
    (worker,) = kube.workers(namespace, "good")
    (trainer,) = worker["spec"]["containers"]
    assert (trainer["image"], trainer["command"]) == ("ghcr.io/acme/train:1", ["train"])
    return str(worker["metadata"]["uid"])


def _assert_unharmed(kube: Kube, namespace: str, operator: OperatorProcess, good_uid: str) -> None:
    assert operator.healthy(), operator.log_tail()  # fails the test if the process has exited
    workers = kube.workers(namespace, "good")
    assert [pod["metadata"]["uid"] for pod in workers] == [good_uid], "the good job's worker was replaced"
    assert running_names(workers) == ["good-worker-0"]
    ready = kube.condition(namespace, "good", "Ready")
    assert ready is not None and ready["status"] == "True", ready
    pods = kube.items("pods", namespace)
    strays = [pod["metadata"]["name"] for pod in pods if not pod["metadata"]["name"].startswith("good-")]
    assert not strays, f"pods created for bad jobs: {strays}"


def _check_refusals(
    kube: Kube, namespace: str, cases: dict[str, tuple[dict[str, Any], str, str | None]]
) -> dict[str, str]:
    """Applies every case; checks what the API server refused and what the operator marked.

    `cases` maps a job name to (the field to be named, where the refusal is expected or None when
    either place will do). Returns where each was refused.
    """
    refusals = _apply_all(kube, [_job(name, namespace, spec) for name, (spec, _, _) in cases.items()])
    where: dict[str, str] = {}
    unnamed: list[str] = []
    stored = {job["metadata"]["name"] for job in kube.items("trainingjobs", namespace)}
    for name, message in refusals.items():
        _, field, _ = cases[name]
        if not _names(message, field):
            unnamed.append(f"{name}: the API server's refusal does not name {field}: {message}")
        assert name not in stored
        where[name] = "api-server"
    accepted = set(cases) - set(refusals)
    verdicts = (
        wait_for(
            "the operator's verdict on every accepted bad job",
            lambda: _verdicts(kube, namespace, accepted),
            timeout=60,
            interval=1.0,
        )
        if accepted
        else {}
    )
    for name, ready in verdicts.items():
        _, field, _ = cases[name]
        if ready["status"] != "False" or field not in ready["message"]:
            unnamed.append(f"{name}: the operator's condition does not name {field}: {ready}")
        where[name] = "operator"
    assert not unnamed, "\n".join(unnamed)
    return where


def _names(message: str, field: str) -> bool:
    # Kubernetes 1.20 names an array without the item's index: spec.template.spec.containers.
    return field in message or re.sub(r"\[\d+\]", "", field) in message


def test_the_table_of_bad_jobs_is_refused_naming_the_field(
    kube: Kube, namespace: str, operator: OperatorProcess, good_job: str
) -> None:
    sent = [case for case in BAD_SPECS if case.json and case.refused_by != "kubectl"]
    cases = {f"bad-{index}": (case.spec(), case.field, case.refused_by) for index, case in enumerate(sent)}
    where = _check_refusals(kube, namespace, cases)
    expected = {name: refused_by for name, (_, _, refused_by) in cases.items()}
    ids = {f"bad-{index}": case.id for index, case in enumerate(sent)}
    wrong = {ids[name]: (expected[name], where[name]) for name in cases if where[name] != expected[name]}
    assert not wrong, f"refused elsewhere than the table says (expected, actual): {wrong}"

    for index, case in enumerate(case for case in BAD_SPECS if case.refused_by == "kubectl"):
        name = f"typo-{index}"
        result = kube.run(
            "apply", "-f", "-", input=json.dumps(_job(name, namespace, case.spec())), check=False
        )
        assert result.returncode != 0, f"{case.id}: kubectl accepted an unknown field"
        assert _kubectl_form(case.field) in result.stderr, result.stderr
        assert kube.get("trainingjob", name, namespace) is None
    _assert_unharmed(kube, namespace, operator, good_job)


def _generated(count: int) -> list[tuple[dict[str, Any], str]]:
    """`count` bad specs from the shared strategy, the same ones on every run (derandomized)."""
    drawn: list[tuple[dict[str, Any], str]] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(bad_spec_strategy())
    def collect(case: tuple[dict[str, Any], str]) -> None:
        drawn.append(case)

    collect()
    unique = {json.dumps(case, sort_keys=True): case for case in drawn}
    return list(unique.values())


def test_generated_bad_jobs_are_refused_naming_the_field(
    kube: Kube, namespace: str, operator: OperatorProcess, good_job: str
) -> None:
    generated = _generated(GENERATED_EXAMPLES)
    assert len(generated) >= GENERATED_EXAMPLES // 2, "hypothesis drew too few distinct specs"
    cases = {f"gen-{index}": (spec, field, None) for index, (spec, field) in enumerate(generated)}
    where = _check_refusals(kube, namespace, cases)
    assert set(where) == set(cases)
    # Both doors are exercised: values the schema refuses, and grammatical strings out of range.
    assert set(where.values()) == {"api-server", "operator"}, where
    _assert_unharmed(kube, namespace, operator, good_job)
