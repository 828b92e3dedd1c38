"""The head-of-line policy on the real control plane: a starved head keeps only the nodes it may use.

The operator of this module runs BestEffortFIFO with a head-of-line timeout of HEAD_WAIT seconds, so a
head is starved within the test. Two private pools of H100 nodes stand for two node pools of one
accelerator (a tainted pool only some jobs tolerate): the head may use the first only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from operator_support import Kube, PoolNodes, PrivatePool, wait_for
from test_elastic import condition_is, explained, fixed_job, live, run_other_workload, running

pytestmark = pytest.mark.e2e

HEAD_WAIT = 5
OPERATOR_ARGS = ("--head-of-line-timeout-seconds", str(HEAD_WAIT))
H100 = "nvidia-h100-80gb"


def test_a_starved_head_holds_back_jobs_on_its_nodes_only(
    kube: Kube, namespace: str, add_pool: Callable[..., PrivatePool]
) -> None:
    heads_pool = add_pool(PoolNodes(H100, nodes=2, per_node=8))
    other_pool = add_pool(PoolNodes(H100, nodes=1, per_node=8))
    gpus = {"limits": {"nvidia.com/gpu": "8"}}
    run_other_workload(kube, "holder", namespace, heads_pool, heads_pool.nodes[1], gpus)
    with explained(kube, namespace, "head", "on-heads-pool", "on-other-pool"):
        kube.apply(fixed_job("head", namespace, heads_pool, replicas=2, per_worker=8))
        wait_for(
            "the head queued for want of a second whole node",
            lambda: condition_is(kube, namespace, "head", "Admitted", "False", "InsufficientCapacity"),
        )
        time.sleep(HEAD_WAIT + 1)  # the head has now waited past the limit

        kube.apply(fixed_job("on-other-pool", namespace, other_pool, replicas=1, per_worker=4))
        kube.apply(fixed_job("on-heads-pool", namespace, heads_pool, replicas=1, per_worker=4))
        # Same accelerator, a node the head cannot use: not held back.
        wait_for("the job on the other pool running", lambda: running(kube, namespace, "on-other-pool") == 1)
        # The head's free node would take it, but the head keeps it.
        held_back = wait_for(
            "the job on the head's pool held back, naming the head",
            lambda: condition_is(kube, namespace, "on-heads-pool", "Admitted", "False", "Queued"),
        )
        assert "waiting behind" in held_back["message"] and "/head" in held_back["message"], held_back
        assert "(head of line)" in held_back["message"], held_back
        assert kube.workers(namespace, "on-heads-pool") == []

        # The holder goes: the devices go to the head, not to the job behind it.
        kube.run("delete", "pod", "holder", "-n", namespace, "--wait=false")
        wait_for("the head's two workers running", lambda: running(kube, namespace, "head") == 2, timeout=60)
        assert sorted(pod["spec"]["nodeName"] for pod in live(kube, namespace, "head")) == sorted(
            heads_pool.nodes
        )
        assert kube.workers(namespace, "on-heads-pool") == []
