"""Edges where a pod the builders make would be refused, kept Pending or short of host memory."""

from __future__ import annotations

from typing import Any

import pytest
from test_builders import CATALOG, raw_spec, worker_set

from kubefit.api.units import format_gib
from kubefit.api.validation import InvalidSpec, parse_spec
from kubefit.builders.naming import RENDEZVOUS_PORT
from kubefit.builders.pods import build_worker_pod
from kubefit.decisions.job_sizing import size_job

METRICS = {"name": "metrics", "containerPort": 9090}


def _ports(template_spec: dict[str, Any], framework: str = "pytorch") -> list[list[dict[str, Any]] | None]:
    """The first container's ports of each of three workers."""
    spec = raw_spec(template={"spec": template_spec}, workers={"replicas": 3}, framework=framework)
    pods = [build_worker_pod(worker_set(spec, workers=3, bounds=(3, 3)), index) for index in range(3)]
    return [pod["spec"]["containers"][0].get("ports") for pod in pods]


def test_host_network_keeps_the_templates_rendezvous_port_on_worker_0_only() -> None:
    # On the host network each declared port is a node port: kube-scheduler keeps two such pods apart.
    listed = {"containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}
    trainer = {"name": "trainer", "image": "x", "ports": [listed, METRICS]}
    assert _ports({"hostNetwork": True, "containers": [trainer]}) == [
        [listed, METRICS],
        [METRICS],
        [METRICS],
    ]
    alone = {"name": "trainer", "image": "x", "ports": [listed]}
    assert _ports({"hostNetwork": True, "containers": [alone]}) == [[listed], None, None]
    # Off the host network a container port takes no node port: every worker keeps it.
    assert _ports({"containers": [alone]}) == [[listed]] * 3
    # With framework none the operator injects no rendezvous: the port is the user's own.
    assert _ports({"hostNetwork": True, "containers": [trainer]}, framework="none") == [[listed, METRICS]] * 3


def _hugepages(requested: str, limit: str) -> dict[str, Any]:
    return {
        "requests": {"hugepages-2Mi": requested, "memory": "1Gi"},
        "limits": {"hugepages-2Mi": limit, "memory": "1Gi"},
    }


def test_a_hugepages_request_below_its_limit_is_refused_naming_the_request() -> None:
    trainer = {"name": "trainer", "image": "x", "resources": _hugepages("50Mi", "100Mi")}
    init = {"name": "warm", "image": "x", "resources": _hugepages("1Gi", "2Gi")}
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(raw_spec(template={"spec": {"containers": [trainer], "initContainers": [init]}}))
    assert [error.path for error in refused.value.errors] == [
        "spec.template.spec.containers[0].resources.requests.hugepages-2Mi",
        "spec.template.spec.initContainers[0].resources.requests.hugepages-2Mi",
    ]
    assert "50Mi is below the container's hugepages-2Mi limit 100Mi" in refused.value.errors[0].message
    # Equal quantities, however written, pass; so does a limit alone (Kubernetes copies it to the request).
    equal = {"name": "trainer", "image": "x", "resources": _hugepages("1Gi", "1024Mi")}
    assert parse_spec(raw_spec(template={"spec": {"containers": [equal]}}))
    limited = {
        "name": "trainer",
        "image": "x",
        "resources": {"limits": {"hugepages-1Gi": "2Gi", "memory": "1Gi"}},
    }
    assert parse_spec(raw_spec(template={"spec": {"containers": [limited]}}))
    # A request alone: Kubernetes needs the limit of a resource it cannot overcommit ("Limit must be set").
    unlimited = {"name": "trainer", "image": "x", "resources": {"requests": {"hugepages-2Mi": "64Mi"}}}
    with pytest.raises(InvalidSpec) as alone:
        parse_spec(raw_spec(template={"spec": {"containers": [unlimited]}}))
    assert [error.path for error in alone.value.errors] == [
        "spec.template.spec.containers[0].resources.requests.hugepages-2Mi"
    ]
    assert "no hugepages-2Mi limit" in alone.value.errors[0].message
    # Other resources may still request below their limit.
    below = {
        "name": "trainer",
        "image": "x",
        "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    }
    assert parse_spec(raw_spec(template={"spec": {"containers": [below]}}))


def test_hugepages_that_are_not_whole_pages_are_refused_naming_the_field() -> None:
    # Kubernetes refuses "3Mi is not positive integer multiple of hugepages-2Mi" on every worker pod.
    trainer = {"name": "trainer", "image": "x", "resources": _hugepages("3Mi", "3Mi")}
    sidecar = {
        "name": "side",
        "image": "x",
        "resources": {"limits": {"hugepages-1Gi": "1536Mi", "memory": "1Gi"}},
    }
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(raw_spec(template={"spec": {"containers": [trainer, sidecar]}}))
    assert [error.path for error in refused.value.errors] == [
        "spec.template.spec.containers[0].resources.requests.hugepages-2Mi",
        "spec.template.spec.containers[0].resources.limits.hugepages-2Mi",
        "spec.template.spec.containers[1].resources.limits.hugepages-1Gi",
    ]
    assert refused.value.errors[0].message.startswith("3Mi is not a whole number of 2Mi pages")
    # Whole pages, however written, pass.
    whole = {"name": "trainer", "image": "x", "resources": _hugepages("4Mi", "4194304")}
    assert parse_spec(raw_spec(template={"spec": {"containers": [whole]}}))


def _offloading(
    memory: str | None = None, container_resources: dict[str, Any] | None = None
) -> dict[str, Any]:
    trainer: dict[str, Any] = {"name": "trainer", "image": "x"}
    if container_resources is not None:
        trainer["resources"] = container_resources
    resources: dict[str, Any] = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8}
    if memory is not None:
        resources["memory"] = memory
    return raw_spec(
        template={"spec": {"containers": [trainer]}},
        model={"parameters": "8B"},
        training={"offload": "optimizer", "sharding": "zero2"},
        resources=resources,
        workers={"replicas": 2},
    )


def _offload_warnings(raw: dict[str, Any]) -> tuple[int, list[str]]:
    sized = size_job(parse_spec(raw), CATALOG)
    return sized.host_bytes_per_worker, [w for w in sized.sizing.warnings if "offloads to host memory" in w]


def test_a_given_memory_below_the_offloaded_state_is_warned_about_not_refused() -> None:
    host_bytes, warnings = _offload_warnings(_offloading(memory="16Gi"))
    assert host_bytes > 16 * 2**30
    assert len(warnings) == 1
    assert warnings[0].startswith("spec.resources.memory 16Gi (16.0 GiB) is below the ")
    assert format_gib(host_bytes) in warnings[0]
    # The template's request, else its limit, is the given memory when spec.resources has none.
    for kind in ("requests", "limits"):
        _, warnings = _offload_warnings(_offloading(container_resources={kind: {"memory": "8Gi"}}))
        assert len(warnings) == 1
        assert warnings[0].startswith(
            f"spec.template.spec.containers[0].resources.{kind}.memory 8Gi (8.0 GiB)"
        )
    # The default adds the offloaded state, and a memory that holds it needs no word.
    assert _offload_warnings(_offloading())[1] == []
    assert _offload_warnings(_offloading(memory="4Ti"))[1] == []


def test_huge_pages_in_a_container_without_cpu_or_memory_are_refused() -> None:
    # The API server: "HugePages require cpu or memory". The trainer always gets both from the pod builder.
    only_pages = {"requests": {"hugepages-2Mi": "64Mi"}, "limits": {"hugepages-2Mi": "64Mi"}}
    trainer = {"name": "trainer", "image": "x", "resources": only_pages}
    sidecar = {"name": "agent", "image": "x", "resources": only_pages}
    init = {"name": "warm", "image": "x", "resources": only_pages}
    template = {"spec": {"containers": [trainer, sidecar], "initContainers": [init]}}
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(raw_spec(template=template))
    assert [error.path for error in refused.value.errors] == [
        "spec.template.spec.containers[1].resources",
        "spec.template.spec.initContainers[0].resources",
    ]
    with_memory = {
        "requests": {**only_pages["requests"]},
        "limits": {**only_pages["limits"], "memory": "1Gi"},
    }
    fine = {"spec": {"containers": [trainer, {**sidecar, "resources": with_memory}]}}
    assert parse_spec(raw_spec(template=fine))
