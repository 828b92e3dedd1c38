"""Rules of decisions/running.py pinned at their boundaries: each test fails on a one-token change of the
rule (a comparison flipped, a condition dropped) that every other test let through (a hand mutation run)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from test_reconcile import CATALOG, NOW, condition, decide, elastic_spec, observe, pod, raw_spec, status_of

from kubefit.decisions.running import REFUSED_FOR_SECONDS


def test_the_restart_that_reaches_max_restarts_is_still_made() -> None:
    """api.md: maxRestarts are the restarts allowed before the job is marked Failed: with maxRestarts 1,
    the first failure is restart 1, not the end of the job."""
    spec = raw_spec(runPolicy={"maxRestarts": 1})
    running = decide(observe(spec, pods=[pod(0), pod(1)]), CATALOG)
    first = decide(observe(spec, pods=[pod(0), pod(1, "Failed")], status=running.status), CATALOG)
    assert status_of(first)["phase"] != "Failed"
    assert status_of(first)["restarts"] == 1


def test_a_refusal_exactly_refused_for_seconds_after_the_first_gives_the_grant_back() -> None:
    """A worker create refused again REFUSED_FOR_SECONDS or more after the first refusal gives the grant
    back (Admitted=False), so the devices go to jobs that can use them."""
    first = NOW - timedelta(seconds=REFUSED_FOR_SECONDS)
    observation = replace(
        observe(pods=[pod(0, "Pending")]),
        refused_creates={"llama-worker-1": (first, "forbidden")},
        refusal=("llama-worker-1", NOW),
    )
    assert condition(decide(observation, CATALOG), "Admitted")["status"] == "False"


def test_worker_0_is_never_given_up_as_unplaced_growth() -> None:
    """Worker 0 hosts the rendezvous: an elastic job's unplaced growth is given up after the gang timeout,
    but never worker 0, however long it has been Pending."""
    spec = elastic_spec(replicas=3, minimum=1, maximum=3, framework="pytorch")
    started = decide(observe(spec, pods=[pod(0), pod(1), pod(2)]), CATALOG)
    pending_long = [pod(0, "Pending", created="2024-12-31T00:00:00Z"), pod(1), pod(2)]
    later = decide(observe(spec, pods=pending_long, status=started.status), CATALOG)
    assert "llama-worker-0" not in later.delete
    assert status_of(later)["desiredReplicas"] == 3


def test_a_group_running_whole_now_is_asked_to_checkpoint_though_its_last_status_said_not_yet() -> None:
    """never_formed stops a fixed group without a checkpoint only if it has not run whole and does not now:
    all four running at this reconcile may hold training state, so a scale to two asks them first."""
    grace = {"checkpointGracePeriodSeconds": 120}
    half = [pod(i, "Running" if i < 2 else "Pending", attempt=0) for i in range(4)]
    first = decide(
        observe(raw_spec(framework="pytorch", workers={"replicas": 4}, elastic=grace), pods=half), CATALOG
    )
    assert status_of(first)["gang"]["running"] is False
    whole = [pod(i, attempt=0) for i in range(4)]
    spec = raw_spec(framework="pytorch", workers={"replicas": 2}, elastic=grace)
    scaled = decide(observe(spec, pods=whole, status=first.status, now=NOW + timedelta(seconds=10)), CATALOG)
    assert scaled.status.checkpoint is not None


def test_a_jax_group_below_a_raised_minimum_restarts_at_the_new_size_not_at_the_grant() -> None:
    """A jax group fixes its process count at start: two workers granted one below a minimum raised to 3
    restart as three (after the handshake), never shrink to the grant's one."""
    spec = elastic_spec(replicas=3, minimum=3, maximum=4, framework="jax")
    two = [replace(pod(i), world_size=2) for i in range(2)]
    decision = decide(observe(spec, pods=two, status={"desiredReplicas": 2}, grant=1), CATALOG)
    checkpoint = status_of(decision)["checkpoint"]
    assert (checkpoint["reason"], checkpoint["targetReplicas"]) == ("Restarting", 3)
    assert decision.delete == ()
