"""Status conventions across a job's life: a pass with no news rewrites nothing and posts nothing, every
condition carries the generation observed, the phase agrees with the conditions, and every event reason
is a documented constant."""

from __future__ import annotations

import ast
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from test_reconcile import CATALOG, NOW, condition, decide, elastic_spec, events_of, observe, pod, status_of

from kubefit.api.conditions import EventReason, Reason
from kubefit.controller import scheduler
from kubefit.decisions import running
from kubefit.decisions.failure import reconcile_error
from kubefit.decisions.job import Decision, JobObservation

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "kubefit"


def _with(observation: JobObservation, **changes: Any) -> JobObservation:
    return replace(observation, **changes)


def _generations(decision: Decision) -> set[Any]:
    return {item["observedGeneration"] for item in status_of(decision)["conditions"]}


# ---------------------------------------------------------------------------- a grant recovered at start


SHRUNK = "ShrunkForPriority: to make room for team-b/urgent"


def _shrunk_and_running(shrink: str | None = SHRUNK) -> tuple[dict[str, Any], Decision]:
    """An elastic job of 4 shrunk to 2 (for a higher-priority job, or with no reason given), its 2 workers
    running."""
    spec = elastic_spec(framework="pytorch")
    four = [pod(index) for index in range(4)]
    running_four = decide(observe(spec, four, grant=4), CATALOG)
    shrunk = decide(_with(observe(spec, four, running_four.status, grant=2), grant_reason=shrink), CATALOG)
    two = [pod(index) for index in range(2)]
    settled = decide(_with(observe(spec, two, shrunk.status, grant=2), grant_reason=shrink), CATALOG)
    return spec, settled


def test_a_grant_recovered_at_an_operator_start_keeps_the_admitted_condition_and_posts_nothing() -> None:
    spec, settled = _shrunk_and_running()
    assert condition(settled, "Admitted")["reason"] == "ShrunkForPriority"
    observation = observe(spec, [pod(0), pod(1)], settled.status, NOW + timedelta(seconds=30), grant=2)
    recovered = decide(_with(observation, grant_reason=scheduler.RECOVERED), CATALOG)
    assert events_of(recovered) == []
    assert condition(recovered, "Admitted") == condition(settled, "Admitted")
    assert (
        condition(recovered, "Admitted")["message"]
        == "2 of 4 workers granted: to make room for team-b/urgent"
    )
    assert status_of(recovered)["message"] == status_of(settled)["message"]
    assert "Recovered" not in status_of(recovered)["message"]
    assert status_of(recovered) == status_of(settled)


def test_a_recovered_grant_below_the_replicas_for_no_given_reason_rewrites_nothing_either() -> None:
    spec, settled = _shrunk_and_running(shrink=None)
    assert condition(settled, "Admitted")["message"] == "2 of 4 workers granted: no capacity for more"
    observation = observe(spec, [pod(0), pod(1)], settled.status, NOW + timedelta(seconds=30), grant=2)
    recovered = decide(_with(observation, grant_reason=scheduler.RECOVERED), CATALOG)
    assert events_of(recovered) == []
    assert status_of(recovered) == status_of(settled)


def test_a_recovered_grant_of_another_count_is_told_afresh_without_the_word_recovered() -> None:
    spec, settled = _shrunk_and_running()
    three = [pod(index) for index in range(3)]
    observation = observe(spec, three, settled.status, NOW + timedelta(seconds=30), grant=3)
    recovered = decide(_with(observation, grant_reason=scheduler.RECOVERED), CATALOG)
    admitted = condition(recovered, "Admitted")
    assert admitted["message"] == "3 of 4 workers granted: no capacity for more"
    assert "Recovered" not in status_of(recovered)["message"]


def test_the_scheduler_and_the_decisions_spell_a_recovered_grant_alike() -> None:
    assert scheduler.RECOVERED == running.RECOVERED


# ------------------------------------------------------------------------------------ observedGeneration


def test_every_condition_takes_the_generation_observed_after_a_scale_of_a_resumed_job() -> None:
    spec = elastic_spec(framework="pytorch")
    workers = [pod(0), pod(1), pod(2), pod(3)]
    started = decide(observe(spec, workers), CATALOG)
    suspended = decide(observe({**spec, "runPolicy": {"suspend": True}}, workers, started.status), CATALOG)
    resumed = decide(observe(spec, [], suspended.status), CATALOG)
    assert condition(resumed, "Suspended")["reason"] == "Resumed"
    scaled_spec = elastic_spec(replicas=3, framework="pytorch")
    scaled = decide(_with(observe(scaled_spec, workers[:3], resumed.status), generation=4), CATALOG)
    assert status_of(scaled)["observedGeneration"] == 4
    assert _generations(scaled) == {4}
    # The same generation again: nothing to rewrite.
    again = decide(_with(observe(scaled_spec, workers[:3], scaled.status), generation=4), CATALOG)
    assert status_of(again)["conditions"] == status_of(scaled)["conditions"]


def test_every_condition_takes_the_generation_observed_after_an_edit_of_a_finished_job() -> None:
    done = decide(observe(pods=[pod(0, "Succeeded"), pod(1, "Succeeded")]), CATALOG)
    assert status_of(done)["phase"] == "Succeeded"
    edited = decide(
        _with(observe(pods=[pod(0, "Succeeded"), pod(1, "Succeeded")], status=done.status), generation=4),
        CATALOG,
    )
    assert status_of(edited)["observedGeneration"] == 4
    assert _generations(edited) == {4}


# ----------------------------------------------------------------------------------------------- phase


def test_an_elastic_job_training_on_its_floor_while_a_worker_starts_is_not_pending() -> None:
    spec = elastic_spec(replicas=2, minimum=1, maximum=2, framework="pytorch")
    admitted = decide(observe(spec, [], grant=2), CATALOG)
    waiting = decide(observe(spec, [pod(0), pod(1, "Pending")], admitted.status, grant=2), CATALOG)
    assert condition(waiting, "Running")["status"] == "True"
    assert status_of(waiting)["phase"] == "Scaling"


def test_a_fixed_group_with_some_workers_running_is_still_pending() -> None:
    admitted = decide(observe(), CATALOG)
    starting = decide(observe(pods=[pod(0), pod(1, "Pending")], status=admitted.status), CATALOG)
    assert condition(starting, "Running")["status"] == "False"
    assert status_of(starting)["phase"] == "Pending"


# ------------------------------------------------------------------------------------- restart backoff


def test_the_restart_backoff_names_its_end_and_the_status_stays_the_same_while_it_lasts() -> None:
    failed = decide(observe(pods=[pod(0), pod(1, "Failed")]), CATALOG)
    waiting = decide(observe(status=failed.status, now=NOW + timedelta(seconds=1)), CATALOG)
    later = decide(observe(status=waiting.status, now=NOW + timedelta(seconds=2)), CATALOG)
    assert condition(waiting, "Ready")["message"] == (
        "0/2 workers running; replacing failed workers at 2025-01-01T12:00:05Z"
    )
    assert (
        status_of(waiting)["message"] == "replacing failed workers at 2025-01-01T12:00:05Z (restart backoff)"
    )
    assert status_of(later) == status_of(waiting)
    assert later.events == ()


# --------------------------------------------------------------------------------------- event reasons


def _event_reason_arguments() -> list[tuple[str, ast.expr, ast.AST]]:
    """Every JobEvent(...) call's reason argument in the operator, with the function it is in."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            for call in ast.walk(function):
                if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "JobEvent":
                    reason = (
                        call.args[1]
                        if len(call.args) > 1
                        else next(keyword.value for keyword in call.keywords if keyword.arg == "reason")
                    )
                    found.append((f"{path.relative_to(REPO)}:{call.lineno}", reason, function))
    return found


def _constants(reason: ast.expr, function: ast.AST) -> list[str] | None:
    """The Reason/EventReason constants `reason` may be (a name: every value assigned to it in the function),
    or None when it is something else. A condition's reason (transition events) is checked by its type."""
    if isinstance(reason, ast.Attribute) and isinstance(reason.value, ast.Name):
        holder = {"Reason": Reason, "EventReason": EventReason}.get(reason.value.id)
        return [getattr(holder, reason.attr)] if holder is not None and hasattr(holder, reason.attr) else None
    if isinstance(reason, ast.Subscript) and ast.unparse(reason) == "condition['reason']":
        return []  # a condition's own reason: a Reason constant, posted when the condition changes
    if isinstance(reason, ast.Name):
        values = [
            node.value
            for node in ast.walk(function)
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == reason.id for t in node.targets)
        ]
        resolved = [_constants(value, function) for value in values]
        if values and all(item is not None for item in resolved):
            return [name for item in resolved for name in item or []]
    return None


def _operator_event_list() -> str:
    text = (REPO / "docs" / "operator.md").read_text()
    start = text.index("Events (on the TrainingJob):")
    return text[start : text.index("posted when the condition changes", start)]


def test_every_event_reason_posted_is_a_documented_constant_named_in_the_docs() -> None:
    listed = _operator_event_list()
    api_events = (REPO / "docs" / "api.md").read_text()
    posted = set()
    for where, reason, function in _event_reason_arguments():
        constants = _constants(reason, function)
        assert constants is not None, (
            f"{where}: event reason {ast.unparse(reason)} is no Reason/EventReason constant"
        )
        posted.update(constants)
    assert posted >= {EventReason.CAPACITY_CHANGED, EventReason.WORKER_FAILED}
    for name in posted | {value for key, value in vars(EventReason).items() if key.isupper()}:
        assert f"`{name}`" in listed, f"{name} is not in docs/operator.md's event list"
    for key, value in vars(EventReason).items():
        if key.isupper():
            assert f"`{value}`" in api_events, f"{value} is not in docs/api.md"


def test_a_failed_reconcile_leaves_the_generation_of_the_conditions_it_does_not_touch() -> None:
    # The reconcile of generation 3 failed: only its Ready=False ReconcileError says anything of generation 3.
    sized = {"type": "Sized", "status": "True", "reason": "Fits", "message": "fits", "observedGeneration": 2,
             "lastTransitionTime": "2025-01-01T11:00:00Z"}  # fmt: skip
    record = reconcile_error({"conditions": [sized]}, 3, "boom", "2025-01-01T12:00:00Z")
    assert record.status is not None
    by_type = {condition["type"]: condition for condition in record.status["conditions"]}
    assert by_type["Sized"] == sized
    assert by_type["Ready"]["observedGeneration"] == 3
