"""What the worker pod builder does with the parts of a template that would break the job as written."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
from test_builders import CATALOG, env_of, raw_spec, worker_set
from test_reconcile import decide, observe
from test_reconcile import raw_spec as job_spec

from kubefit.builders.placement import (
    accelerator_terms,
    with_accelerator_toleration,
    with_preferred_hostnames,
)
from kubefit.builders.pods import build_worker_pod

ALL_ACCELERATORS = frozenset(entry.resource_name for entry in CATALOG)


def expanded(env: list[dict[str, Any]]) -> dict[str, str]:
    """The values a container sees: Kubernetes expands $(NAME) only to a variable defined before it."""
    seen: dict[str, str] = {}
    for variable in env:
        value = variable.get("value", "")
        seen[variable["name"]] = re.sub(r"\$\((\w+)\)", lambda ref: seen.get(ref[1], ref[0]), value)
    return seen


# ---------------------------------------------------------------------------------------------- accelerators


def _template_asking_for_accelerators() -> dict[str, Any]:
    spec = raw_spec()
    pod_spec = spec["template"]["spec"]
    pod_spec["containers"][0]["resources"] = {"limits": {"amd.com/gpu": "2"}}
    pod_spec["containers"].append(
        {
            "name": "side",
            "image": "b",
            "resources": {"limits": {"nvidia.com/gpu": "1", "vendor.com/efa": "1"}},
        }
    )
    init = {
        "requests": {"cpu": "1", "amd.com/gpu": "1"},
        "limits": {"amd.com/gpu": "1", "nvidia.com/gpu": "1"},
    }
    pod_spec["initContainers"] = [{"name": "init", "image": "b", "resources": init}]
    return spec


def test_only_the_trainer_asks_for_an_accelerator_and_only_for_the_sizings() -> None:
    # A sidecar's nvidia.com/gpu: 1 beside 8 for the trainer made a pod of 9 devices, which fits no node.
    worker = replace(worker_set(_template_asking_for_accelerators()), accelerator_resources=ALL_ACCELERATORS)
    pod_spec = build_worker_pod(worker, 0)["spec"]
    trainer, side = pod_spec["containers"]
    assert trainer["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert side["resources"] == {"limits": {"vendor.com/efa": "1"}}  # other extended resources pass
    # A classic init container runs before the trainer: it keeps the chosen accelerator, not another vendor's.
    assert pod_spec["initContainers"][0]["resources"] == {
        "requests": {"cpu": "1"},
        "limits": {"nvidia.com/gpu": "1"},
    }


def test_a_native_sidecar_holds_no_accelerator_and_an_init_container_at_most_the_workers() -> None:
    spec = raw_spec()
    spec["template"]["spec"]["initContainers"] = [
        {"name": "sidecar", "image": "b", "restartPolicy": "Always", "resources": {"limits": {"nvidia.com/gpu": "1"}}},
        {"name": "check", "image": "b", "resources": {"limits": {"nvidia.com/gpu": "16"}, "requests": {"nvidia.com/gpu": "16"}}},
    ]  # fmt: skip
    worker = replace(worker_set(spec), accelerator_resources=ALL_ACCELERATORS)
    sidecar, check = build_worker_pod(worker, 0)["spec"]["initContainers"]
    assert sidecar["resources"] == {"limits": {}}  # it runs beside the trainer: its devices would add up
    assert check["resources"] == {"limits": {"nvidia.com/gpu": "8"}, "requests": {"nvidia.com/gpu": "8"}}


def test_the_reconcile_takes_every_catalog_accelerator_out_of_the_template() -> None:
    spec = job_spec(template=_template_asking_for_accelerators()["template"])
    pod_spec = decide(observe(spec), CATALOG).worker_pod(0)["spec"]
    limits = [container["resources"]["limits"] for container in pod_spec["containers"]]
    assert limits == [{"nvidia.com/gpu": "1"}, {"vendor.com/efa": "1"}]
    assert pod_spec["initContainers"][0]["resources"] == {
        "requests": {"cpu": "1"},
        "limits": {"nvidia.com/gpu": "1"},
    }


def test_init_containers_of_another_shape_pass_through() -> None:
    spec = raw_spec()
    spec["template"]["spec"]["initContainers"] = [{"name": "init", "image": "b", "resources": None}]
    init = build_worker_pod(worker_set(spec), 0)["spec"]["initContainers"]
    assert init == [{"name": "init", "image": "b", "resources": None}]


# ---------------------------------------------------------------------------------------------- host network


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"hostNetwork": True}, "ClusterFirstWithHostNet"),  # else worker 0's name would not resolve
        ({"hostNetwork": True, "dnsPolicy": "Default"}, "Default"),  # the template's own choice
        # Kubernetes runs ClusterFirst on the host network as Default: `kubectl get pod -o yaml` writes it.
        ({"hostNetwork": True, "dnsPolicy": "ClusterFirst"}, "ClusterFirstWithHostNet"),
        ({"hostNetwork": False}, None),
        ({}, None),
    ],
)
def test_a_host_network_worker_resolves_cluster_names(given: dict[str, Any], expected: str | None) -> None:
    spec = raw_spec()
    spec["template"]["spec"] |= given
    assert build_worker_pod(worker_set(spec), 0)["spec"].get("dnsPolicy") == expected


@pytest.mark.parametrize("framework", ["pytorch", "jax"])
def test_on_the_host_network_only_worker_0_declares_the_rendezvous_port(framework: str) -> None:
    """A declared port of a host-network pod is a port of the node, which kube-scheduler gives one pod per
    node: declared by every worker, two workers of 4 devices could never share the 8-device node the
    scheduling pass counted them on. Only worker 0 listens on it."""
    spec = raw_spec(framework=framework)
    spec["template"]["spec"]["hostNetwork"] = True
    workers = worker_set(spec, per_worker=4)
    ports = [build_worker_pod(workers, index)["spec"]["containers"][0].get("ports") for index in range(2)]
    assert [port["containerPort"] for port in ports[0]] == [29500]
    assert not ports[1]
    spec["template"]["spec"]["hostNetwork"] = False  # on the pod network every worker declares it
    assert build_worker_pod(worker_set(spec, per_worker=4), 1)["spec"]["containers"][0]["ports"]


# ---------------------------------------------------------------------------------------------- env


def test_template_variables_can_refer_to_the_injected_ones() -> None:
    spec = raw_spec()
    spec["template"]["spec"]["containers"][0]["env"] = [
        {"name": "MASTER_PORT", "value": "1234"},
        {"name": "INIT_METHOD", "value": "tcp://$(MASTER_ADDR):$(MASTER_PORT)"},
    ]
    env = build_worker_pod(worker_set(spec), 1)["spec"]["containers"][0]["env"]
    names = [variable["name"] for variable in env]
    assert names.count("MASTER_PORT") == 1  # the template's, which wins
    assert expanded(env)["INIT_METHOD"] == "tcp://llama-worker-0.llama.team-a.svc.cluster.local:1234"
    assert names[-2:] == ["MASTER_PORT", "INIT_METHOD"]  # the template's last, in its order


def test_a_reference_before_the_templates_own_torchrun_variable_sees_its_value_in_both_names() -> None:
    """Setting PET_MASTER_PORT alone made MASTER_PORT a copy after it, in place of the operator's at the
    front: a template variable above it that refers to $(MASTER_PORT) was left unexpanded."""
    spec = raw_spec()
    spec["template"]["spec"]["containers"][0]["env"] = [
        {"name": "LAUNCH_ARGS", "value": "--master-port=$(MASTER_PORT) --port=$(PET_MASTER_PORT)"},
        {"name": "PET_MASTER_PORT", "value": "23456"},
        {"name": "BASE", "value": "7"},
        {"name": "PET_NPROC_PER_NODE", "value": "$(BASE)"},  # refers to the template's own: copied after it
    ]
    env = build_worker_pod(worker_set(spec), 1)["spec"]["containers"][0]["env"]
    names = [variable["name"] for variable in env]
    assert len(names) == len(set(names))
    values = expanded(env)
    assert (
        values["LAUNCH_ARGS"] == "--master-port=23456 --port=$(PET_MASTER_PORT)"
    )  # PET_ is defined after it
    assert values["MASTER_PORT"] == values["PET_MASTER_PORT"] == "23456"
    assert values["NPROC_PER_NODE"] == values["PET_NPROC_PER_NODE"] == "7"
    assert names.index("NPROC_PER_NODE") > names.index("PET_NPROC_PER_NODE")


def test_a_template_that_sets_one_of_torchruns_pairs_sets_both() -> None:
    spec = raw_spec(elastic={"enabled": True}, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 4})
    from_field = {"fieldRef": {"fieldPath": "metadata.annotations['procs']"}}
    spec["template"]["spec"]["containers"][0]["env"] = [
        {"name": "MASTER_PORT", "value": "1234"},
        {"name": "PET_NPROC_PER_NODE", "valueFrom": from_field},
        {"name": "MASTER_ADDR", "value": "a"},
        {"name": "PET_MASTER_ADDR", "value": "b"},
        {"name": "NNODES", "value": "3"},  # not a pair: an elastic PET_NNODES is a range
    ]
    pod = build_worker_pod(worker_set(spec, workers=2, bounds=(1, 4)), 0)
    env = env_of(pod)
    assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "1234"
    assert env["NPROC_PER_NODE"] == env["PET_NPROC_PER_NODE"] == from_field
    assert (env["MASTER_ADDR"], env["PET_MASTER_ADDR"]) == ("a", "b")  # both set: both kept
    assert (env["NNODES"], env["PET_NNODES"]) == ("3", "1:4")
    names = [variable["name"] for variable in pod["spec"]["containers"][0]["env"]]
    assert len(names) == len(set(names))


def test_a_variable_that_refers_to_its_twin_leaves_the_twin_the_operators() -> None:
    spec = raw_spec()
    spec["template"]["spec"]["containers"][0]["env"] = [
        {"name": "MASTER_PORT", "value": "$(PET_MASTER_PORT)"}
    ]
    env = expanded(build_worker_pod(worker_set(spec), 0)["spec"]["containers"][0]["env"])
    assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "29500"


def test_a_pair_is_only_filled_in_where_the_operator_sets_it() -> None:
    spec = raw_spec(framework="jax")
    spec["template"]["spec"]["containers"][0]["env"] = [{"name": "MASTER_PORT", "value": "1234"}]
    assert "PET_MASTER_PORT" not in env_of(build_worker_pod(worker_set(spec), 0))


# ---------------------------------------------------------------------------------------------- placement

ADDED = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("toleration", "tolerates"),
    [
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}, False),
        ({"key": "nvidia.com/gpu", "value": "present"}, False),  # Equal, the default
        ({"key": "amd.com/gpu", "operator": "Exists"}, False),
        ({"key": "nvidia.com/gpu", "operator": "Exists"}, True),
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, True),
        ({"operator": "Exists"}, True),  # every taint
    ],
)
def test_the_accelerator_toleration_is_added_unless_one_tolerates_its_taint(
    toleration: dict[str, Any], tolerates: bool
) -> None:
    # The taint's value differs between clusters: only Exists tolerates it whatever it is.
    spec = raw_spec()
    spec["template"]["spec"]["tolerations"] = [toleration]
    tolerations = build_worker_pod(worker_set(spec), 0)["spec"]["tolerations"]
    assert tolerations == ([toleration] if tolerates else [toleration, ADDED])
    assert with_accelerator_toleration([toleration], "nvidia.com/gpu") == tolerations


def test_a_null_node_affinity_is_none() -> None:
    spec = raw_spec()
    spec["template"]["spec"]["affinity"] = {"nodeAffinity": None}
    affinity = build_worker_pod(worker_set(spec), 0)["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == accelerator_terms(CATALOG.get("nvidia-h100-80gb").match)  # type: ignore[union-attr]
    preferred = with_preferred_hostnames({"nodeAffinity": None}, ["n1"])["nodeAffinity"]
    assert len(preferred["preferredDuringSchedulingIgnoredDuringExecution"]) == 1


# ---------------------------------------------------------------------------------------------- metadata


def test_a_templates_kubefit_annotations_never_reach_a_worker() -> None:
    # The operator reads its own back (decisions/observed.py): a template's would pass for them.
    forged = {"kubefit.dev/nnodes": "1:8", "kubefit.dev/world-size": "9", "kubefit.dev/x": "y", "note": "x"}
    elastic = raw_spec(elastic={"enabled": True}, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 4})
    elastic["template"]["metadata"]["annotations"] = forged
    pod = build_worker_pod(worker_set(elastic, workers=2, bounds=(1, 4)), 0)
    assert pod["metadata"]["annotations"] == {"note": "x", "kubefit.dev/nnodes": "1:4"}
    fixed = raw_spec()
    fixed["template"]["metadata"]["annotations"] = forged
    annotations = build_worker_pod(worker_set(fixed), 0)["metadata"]["annotations"]
    assert annotations == {"note": "x", "kubefit.dev/world-size": "2", "kubefit.dev/restart-attempt": "0"}


# ---------------------------------------------------------------------------------------------- /dev/shm


def test_the_trainer_gets_a_memory_backed_dev_shm_as_large_as_its_memory_request() -> None:
    pod_spec = build_worker_pod(worker_set(raw_spec()), 0)["spec"]
    trainer = pod_spec["containers"][0]
    memory = trainer["resources"]["requests"]["memory"]
    assert {"name": "kubefit-shm", "mountPath": "/dev/shm"} in trainer["volumeMounts"]
    assert {"name": "kubefit-shm", "emptyDir": {"medium": "Memory", "sizeLimit": memory}} in pod_spec[
        "volumes"
    ]


def test_a_dev_shm_of_the_templates_own_is_kept_and_none_is_added() -> None:
    spec = raw_spec()
    pod_spec = spec["template"]["spec"]
    pod_spec["containers"][0]["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm/"}]
    pod_spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}]
    built = build_worker_pod(worker_set(spec), 0)["spec"]
    assert built["volumes"] == pod_spec["volumes"]
    assert built["containers"][0]["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm/"}]
