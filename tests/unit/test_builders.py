"""Worker Pod and headless Service builders: pure functions, called directly."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kubefit.api.models import MemoryBreakdown, SizingStatus
from kubefit.api.validation import InvalidSpec, parse_spec
from kubefit.builders.checkpoint import CheckpointEnv, checkpoint_token
from kubefit.builders.naming import (
    JOB_LABEL,
    WORKER_INDEX_LABEL,
    JobRef,
    job_selector,
    worker_index,
    worker_name,
)
from kubefit.builders.placement import accelerator_terms, merge_required_terms, with_accelerator_affinity
from kubefit.builders.pods import KUBERNETES_DEFAULT_GRACE_SECONDS, WorkerSet, build_worker_pod
from kubefit.builders.rendezvous import WorkerGroup, rendezvous_env
from kubefit.builders.resources import HostShare, default_cpu, default_memory, worker_resources
from kubefit.builders.service import build_headless_service
from kubefit.decisions.node_match import placement_of
from kubefit.sizing.catalog import load_catalog

JOB = JobRef(name="llama", namespace="team-a", uid="1234-uid")
RENDEZVOUS_HOST = "llama-worker-0.llama.team-a.svc.cluster.local"  # worker 0's FQDN
CATALOG = load_catalog()
H100 = CATALOG.get("nvidia-h100-80gb")


def raw_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}},
            "spec": {"containers": [{"name": "trainer", "image": "ghcr.io/acme/train:1"}]},
        },
        "model": {"parameters": "1B"},
        "workers": {"replicas": 2},
    }
    spec.update(overrides)
    return spec


def sizing(accelerator: str = "nvidia-h100-80gb", per_worker: int = 8, min_workers: int = 1) -> SizingStatus:
    entry = CATALOG.get(accelerator)
    assert entry is not None
    return SizingStatus(
        accelerator=accelerator,
        resource_name=entry.resource_name,
        device_memory_bytes=entry.memory_bytes,
        accelerators_per_worker=per_worker,
        min_workers=min_workers,
        per_device_bytes=30 * 2**30,
        fits=True,
        breakdown=MemoryBreakdown(
            weights=1, gradients=1, optimizer_states=1, activations=1, logits=1, overhead=1
        ),
    )


def worker_set(
    spec: dict[str, Any] | None = None,
    workers: int = 2,
    accelerator: str = "nvidia-h100-80gb",
    per_worker: int = 8,
    bounds: tuple[int, int] = (2, 2),
    checkpoint: CheckpointEnv | None = None,
) -> WorkerSet:
    entry = CATALOG.get(accelerator)
    assert entry is not None
    return WorkerSet(
        job=JOB,
        spec=parse_spec(spec or raw_spec()),
        sizing=sizing(accelerator, per_worker),
        accelerator=entry,
        workers=workers,
        min_workers=bounds[0],
        max_workers=bounds[1],
        checkpoint=checkpoint,
    )


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or -> valueFrom for a variable the kubelet fills in (the downward API)."""
    return {
        variable["name"]: variable["value"] if "value" in variable else variable["valueFrom"]
        for variable in pod["spec"]["containers"][0].get("env", [])
    }


# ---------------------------------------------------------------------------------------------- naming


def test_worker_names_round_trip() -> None:
    assert worker_name("llama", 3) == "llama-worker-3"
    assert worker_index("llama-worker-3", "llama") == 3
    assert worker_index("llama-worker-12", "llama") == 12


@pytest.mark.parametrize(
    "name", ["llama-worker-", "llama-worker-x", "llama-worker-01", "other-worker-1", "llama"]
)
def test_names_not_made_by_the_operator_have_no_index(name: str) -> None:
    assert worker_index(name, "llama") is None


def test_selector_names_the_job_label() -> None:
    assert job_selector("llama") == "kubefit.dev/job=llama"


# ---------------------------------------------------------------------------------------------- pod


def test_pod_identity_labels_and_owner() -> None:
    pod = build_worker_pod(worker_set(), 1)
    metadata = pod["metadata"]
    assert metadata["name"] == "llama-worker-1"
    assert metadata["namespace"] == "team-a"
    assert metadata["labels"] == {
        "team": "a",
        JOB_LABEL: "llama",
        WORKER_INDEX_LABEL: "1",
        "app.kubernetes.io/managed-by": "kubefit",
    }
    # The template's, and the world size a worker of a fixed-size group starts with (a non-elastic job).
    assert metadata["annotations"] == {
        "note": "x",
        "kubefit.dev/world-size": "2",
        "kubefit.dev/restart-attempt": "0",
    }
    (owner,) = metadata["ownerReferences"]
    assert owner == {
        "apiVersion": "kubefit.dev/v1alpha1",
        "kind": "TrainingJob",
        "name": "llama",
        "uid": "1234-uid",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_pod_has_stable_dns_and_is_never_restarted_by_the_kubelet() -> None:
    spec = build_worker_pod(worker_set(), 0)["spec"]
    assert spec["hostname"] == "llama-worker-0"
    assert spec["subdomain"] == "llama"
    assert spec["restartPolicy"] == "Never"


def test_user_restart_policy_is_overridden() -> None:
    spec = raw_spec()
    spec["template"]["spec"]["restartPolicy"] = "OnFailure"
    assert build_worker_pod(worker_set(spec), 0)["spec"]["restartPolicy"] == "Never"


def test_accelerator_is_requested_on_the_first_container_only() -> None:
    spec = raw_spec()
    spec["template"]["spec"]["containers"].append({"name": "sidecar", "image": "busybox"})
    containers = build_worker_pod(worker_set(spec, per_worker=4), 0)["spec"]["containers"]
    assert containers[0]["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert containers[0]["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert "resources" not in containers[1]


def test_tpu_request_uses_the_tpu_resource_name() -> None:
    resources = build_worker_pod(worker_set(accelerator="google-tpu-v5e", per_worker=4), 0)["spec"][
        "containers"
    ][0]["resources"]
    assert resources["limits"] == {"google.com/tpu": "4"}


def test_builder_does_not_mutate_the_template() -> None:
    worker = worker_set()
    before = repr(worker.spec.template)
    build_worker_pod(worker, 0)
    assert repr(worker.spec.template) == before


@pytest.mark.parametrize("index", [-1, 2, 5])
def test_index_outside_the_worker_count_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match="worker index"):
        build_worker_pod(worker_set(workers=2), index)


def test_an_elastic_pytorch_worker_may_be_numbered_above_the_count_a_fixed_world_may_not() -> None:
    # torchrun's rendezvous assigns an elastic group's ranks: a new worker skips an index still
    # terminating (decisions.workers.worker_slots). jax's JAX_PROCESS_ID is the index, so it stays in range.
    spec = raw_spec(elastic={"enabled": True}, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 3})
    pod = build_worker_pod(worker_set(spec, workers=2, bounds=(1, 3)), 3)
    assert pod["metadata"]["name"].endswith("-worker-3")
    assert env_of(pod)["PET_NNODES"] == "1:3"
    jax = raw_spec(framework="jax", elastic={"enabled": True}, workers={"replicas": 2, "minReplicas": 1})
    with pytest.raises(ValueError, match="worker index 3 outside 0..1"):
        build_worker_pod(worker_set(jax, workers=2, bounds=(1, 2)), 3)


# ---------------------------------------------------------------------------------------------- resources


def test_default_cpu_and_memory_take_at_most_nine_tenths_of_the_nodes_share() -> None:
    share = HostShare(cpu_millis=7910, memory_bytes=15 * 2**30)  # one device on a small node
    assert default_cpu(1, share) == "7119m"
    assert default_cpu(2, HostShare(cpu_millis=12000)) == "16"  # 21.6 cores offered: the usual 16
    assert default_memory(1, share=share) == f"{int(15 * 1024 * 0.9)}Mi"
    # The offloaded state is the job's need, not a default: it is never cut to fit.
    assert default_memory(1, 2**30, share) == f"{int(15 * 1024 * 0.9) + 1024}Mi"
    assert default_cpu(1, HostShare()) == "8" and default_memory(1, share=HostShare()) == f"{16 * 1024}Mi"


def test_default_cpu_and_memory_scale_with_accelerators() -> None:
    assert default_cpu(1) == "8"
    assert default_cpu(8) == "64"
    assert default_cpu(16) == "96"  # capped
    assert default_memory(2) == f"{32 * 1024}Mi"
    assert default_memory(1, offloaded_bytes=2**30) == f"{17 * 1024}Mi"


def test_the_worker_requests_the_host_bytes_the_sizing_path_gave_it() -> None:
    from dataclasses import replace

    worker = replace(worker_set(per_worker=8), host_bytes_per_worker=40 * 2**30)
    requests = build_worker_pod(worker, 0)["spec"]["containers"][0]["resources"]["requests"]
    assert requests["memory"] == f"{(8 * 16 + 40) * 1024}Mi"
    plain = build_worker_pod(worker_set(per_worker=8), 0)["spec"]["containers"][0]["resources"]["requests"]
    assert plain["memory"] == f"{8 * 16 * 1024}Mi"


def test_the_builders_never_run_the_estimator() -> None:
    # The host-offload bytes come with the sizing (decisions.job_sizing); estimating again per pod is what
    # the one sizing path removed.
    import grimp

    graph = grimp.build_graph("kubefit")
    importers = graph.find_downstream_modules("kubefit.sizing.estimator")
    assert not {module for module in importers if module.startswith("kubefit.builders")}


def test_spec_resources_beat_the_template_which_beats_the_default() -> None:
    spec = parse_spec(raw_spec(resources={"cpu": "12", "accelerator": "nvidia-h100-80gb"}))
    template_resources = {"requests": {"cpu": "4", "memory": "10Gi"}, "limits": {"memory": "20Gi"}}
    resources = worker_resources(template_resources, spec, sizing(per_worker=2))
    assert resources["requests"] == {"cpu": "12", "memory": "10Gi", "nvidia.com/gpu": "2"}
    assert resources["limits"] == {"memory": "20Gi", "nvidia.com/gpu": "2"}
    assert template_resources["requests"] == {"cpu": "4", "memory": "10Gi"}  # not mutated


def test_template_resources_other_than_requests_and_limits_are_kept() -> None:
    # Dynamic resource claims (resources.claims, a list) were dropped without a word.
    spec = parse_spec(raw_spec())
    claims = [{"name": "rdma"}]
    resources = worker_resources({"claims": claims, "requests": None}, spec, sizing(per_worker=1))
    assert resources["claims"] == claims
    assert resources["requests"]["nvidia.com/gpu"] == "1"


def test_a_template_limit_without_a_request_is_the_request_as_kubernetes_defaults_it() -> None:
    # The derived default (8 cores, 16Gi per device: 64 and 128Gi here) above the limit: a pod the API
    # server refuses ("must be less than or equal to cpu limit").
    spec = parse_spec(raw_spec())
    template_resources = {"limits": {"cpu": "4", "memory": "8Gi"}}
    resources = worker_resources(template_resources, spec, sizing(per_worker=8))
    assert resources["requests"] == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "8"}
    assert resources["limits"] == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "8"}


def test_a_spec_request_at_the_template_limit_is_kept_and_one_above_it_is_refused() -> None:
    template = {
        "spec": {"containers": [{"name": "trainer", "image": "x", "resources": {"limits": {"cpu": "4"}}}]}
    }
    spec = parse_spec(
        raw_spec(resources={"cpu": "4000m", "accelerator": "nvidia-h100-80gb"}, template=template)
    )
    assert (
        worker_resources({"limits": {"cpu": "4"}}, spec, sizing(per_worker=2))["requests"]["cpu"] == "4000m"
    )
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(raw_spec(resources={"cpu": "4001m"}, template=template))
    assert [error.path for error in refused.value.errors] == ["spec.resources.cpu"]
    assert "limit 4" in str(refused.value)


def test_sizing_overrides_a_template_accelerator_request() -> None:
    spec = parse_spec(raw_spec())
    resources = worker_resources({"limits": {"nvidia.com/gpu": "1"}}, spec, sizing(per_worker=8))
    assert resources["limits"]["nvidia.com/gpu"] == "8"


# ---------------------------------------------------------------------------------------------- placement


NOT_SPLIT_OR_SHARED = [
    {"key": "cloud.google.com/gke-gpu-partition-size", "operator": "DoesNotExist"},
    {"key": "cloud.google.com/gke-gpu-sharing-strategy", "operator": "DoesNotExist"},
    {"key": "cloud.google.com/gke-max-shared-clients-per-gpu", "operator": "DoesNotExist"},
]


def test_accelerator_terms_are_ored_label_sets() -> None:
    assert H100 is not None
    terms = accelerator_terms(H100.match)
    assert len(terms) == len(H100.match) >= 2
    assert terms[0] == {
        "matchExpressions": [
            {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]},
            *NOT_SPLIT_OR_SHARED,
        ]
    }


def test_accelerator_terms_keep_workers_off_gke_nodes_whose_gpus_are_split_or_shared() -> None:
    # GKE keeps gke-accelerator on such a node and offers each slice or share as one nvidia.com/gpu.
    a100 = CATALOG.get("nvidia-a100-40gb")
    assert a100 is not None
    terms = accelerator_terms(a100.match)
    assert all(term["matchExpressions"][-3:] == NOT_SPLIT_OR_SHARED for term in terms)
    whole = {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
    split = {**whole, "cloud.google.com/gke-gpu-partition-size": "1g.5gb"}
    shared = {
        **whole,
        "cloud.google.com/gke-gpu-sharing-strategy": "time-sharing",
        "cloud.google.com/gke-max-shared-clients-per-gpu": "2",
    }
    placement = placement_of(
        build_worker_pod(worker_set(accelerator="nvidia-a100-40gb", per_worker=4), 0)["spec"]
    )
    tolerations = placement.tolerations_on("nvidia.com/gpu")
    # The scheduler's reading of the terms agrees with the catalog's identification, node by node.
    for labels, lands in ((whole, True), (split, False), (shared, False)):
        assert placement.admits("n", labels, (), tolerations) is lands
        assert (CATALOG.identify(labels) is a100) is lands


def test_a_label_set_naming_a_partition_label_requires_it_and_still_excludes_sharing() -> None:
    term = {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-a100",
        "cloud.google.com/gke-gpu-partition-size": "1g.5gb",
    }
    assert accelerator_terms([term]) == [
        {
            "matchExpressions": [
                {
                    "key": "cloud.google.com/gke-accelerator",
                    "operator": "In",
                    "values": ["nvidia-tesla-a100"],
                },
                {"key": "cloud.google.com/gke-gpu-partition-size", "operator": "In", "values": ["1g.5gb"]},
                *NOT_SPLIT_OR_SHARED[1:],
            ]
        }
    ]


def test_pod_requires_a_node_of_the_chosen_accelerator() -> None:
    assert H100 is not None
    affinity = build_worker_pod(worker_set(), 0)["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == accelerator_terms(H100.match)


def test_user_required_terms_are_anded_with_the_accelerator() -> None:
    zone_a = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    zone_b = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}
    accel = [
        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]},
        {"matchExpressions": [{"key": "gke", "operator": "In", "values": ["h100"]}]},
    ]
    merged = merge_required_terms([zone_a, zone_b], accel)
    assert len(merged) == 4
    assert merged[0]["matchExpressions"] == zone_a["matchExpressions"] + accel[0]["matchExpressions"]
    assert merged[3]["matchExpressions"] == zone_b["matchExpressions"] + accel[1]["matchExpressions"]


def test_a_required_term_with_null_match_expressions_is_anded_as_an_empty_one() -> None:
    # The schema allows null there (a Helm template rendering an empty list): it crashed the builder.
    by_name = {
        "matchExpressions": None,
        "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}],
    }
    spec = raw_spec()
    spec["template"]["spec"]["affinity"] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [by_name]}}
    }
    affinity = build_worker_pod(worker_set(spec), 0)["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert H100 is not None
    assert terms == [
        {"matchExpressions": term["matchExpressions"], "matchFields": by_name["matchFields"]}
        for term in accelerator_terms(H100.match)
    ]


def test_user_affinity_node_selector_and_preferences_are_kept() -> None:
    spec = raw_spec()
    preferred = [{"weight": 1, "preference": {"matchExpressions": [{"key": "k", "operator": "Exists"}]}}]
    anti = {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname"}]}
    spec["template"]["spec"]["nodeSelector"] = {"pool": "train"}
    spec["template"]["spec"]["affinity"] = {
        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred},
        "podAntiAffinity": anti,
    }
    pod_spec = build_worker_pod(worker_set(spec), 0)["spec"]
    assert pod_spec["nodeSelector"] == {"pool": "train"}
    assert pod_spec["affinity"]["podAntiAffinity"] == anti
    assert (
        pod_spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    )
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod_spec["affinity"]["nodeAffinity"]


def test_affinity_without_match_sets_is_left_alone() -> None:
    assert with_accelerator_affinity(None, []) == {"nodeAffinity": {}}


def test_accelerator_taint_is_tolerated_once() -> None:
    spec = raw_spec()
    spec["template"]["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    tolerations = build_worker_pod(worker_set(spec), 0)["spec"]["tolerations"]
    assert tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    default = build_worker_pod(worker_set(), 0)["spec"]["tolerations"]
    assert default == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


# ---------------------------------------------------------------------------------------------- rendezvous


def test_pytorch_env_for_a_fixed_size_job() -> None:
    env = env_of(build_worker_pod(worker_set(workers=3, per_worker=8, bounds=(3, 3)), 2))
    assert env["MASTER_ADDR"] == RENDEZVOUS_HOST
    assert env["MASTER_PORT"] == "29500"
    assert env["WORLD_SIZE"] == env["NNODES"] == env["PET_NNODES"] == "3"
    assert env["RANK"] == env["NODE_RANK"] == env["PET_NODE_RANK"] == "2"
    assert env["NPROC_PER_NODE"] == env["PET_NPROC_PER_NODE"] == "8"
    assert "PET_RDZV_BACKEND" not in env


def test_pytorch_env_for_an_elastic_job_gives_torchrun_a_range() -> None:
    spec = raw_spec(elastic={"enabled": True}, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 4})
    env = env_of(build_worker_pod(worker_set(spec, workers=2, bounds=(1, 4)), 0))
    assert env["PET_NNODES"] == env["NNODES"] == "1:4"  # a `torchrun --nnodes=$NNODES` stays elastic
    assert env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ENDPOINT"] == f"{RENDEZVOUS_HOST}:29500"
    assert env["PET_RDZV_ID"] == "1234-uid"
    assert env["PET_RDZV_CONF"] == "is_host=1,read_timeout=600"
    # elastic.maxRestarts' default: every planned removal uses one on each survivor, so it is not
    # runPolicy.maxRestarts (3), which four scale-downs would have used up.
    assert env["PET_MAX_RESTARTS"] == "100"


def test_elastic_rendezvous_is_hosted_by_worker_0_alone_and_every_worker_points_there() -> None:
    spec = raw_spec(elastic={"enabled": True}, workers={"replicas": 3, "minReplicas": 2, "maxReplicas": 6})
    spec["runPolicy"] = {"maxRestarts": 2}  # counts failed pods, not torchrun's in-place restarts
    spec["elastic"]["maxRestarts"] = 7
    envs = [env_of(build_worker_pod(worker_set(spec, workers=3, bounds=(2, 6)), index)) for index in range(3)]
    hosts = [env["PET_RDZV_CONF"].split(",")[0] for env in envs]
    assert hosts == ["is_host=1", "is_host=0", "is_host=0"]
    assert {env["PET_RDZV_ENDPOINT"] for env in envs} == {f"{RENDEZVOUS_HOST}:29500"}
    assert {env["PET_RDZV_ID"] for env in envs} == {"1234-uid"}
    assert {env["PET_NNODES"] for env in envs} == {"2:6"}
    assert {env["PET_MAX_RESTARTS"] for env in envs} == {"7"}


def test_elastic_workers_wait_for_worker_0s_store_as_long_as_torchruns_join_timeout() -> None:
    """Created together, the others reach worker 0's store while it may still pull its image: the c10d
    backend's 60 s default read timeout made their agents give up and every one of them fail."""
    spec = raw_spec(elastic={"enabled": True}, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 2})
    env = env_of(build_worker_pod(worker_set(spec, workers=2, bounds=(1, 2)), 1))
    assert env["PET_RDZV_CONF"] == "is_host=0,read_timeout=600"
    # A template's own options are kept (they win), but is_host stays the operator's for each worker.
    container = spec["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "PET_RDZV_CONF", "value": "read_timeout=900,is_host=1,join_timeout=1200"}]
    envs = [env_of(build_worker_pod(worker_set(spec, workers=2, bounds=(1, 2)), index)) for index in (0, 1)]
    assert [env["PET_RDZV_CONF"] for env in envs] == [
        "is_host=1,read_timeout=900,join_timeout=1200",
        "is_host=0,read_timeout=900,join_timeout=1200",
    ]


def test_elastic_workers_keep_torchs_store_per_round_so_that_a_new_worker_can_join() -> None:
    spec = raw_spec(elastic={"enabled": True}, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 3})
    envs = [env_of(build_worker_pod(worker_set(spec, workers=3, bounds=(1, 3)), index)) for index in range(3)]
    assert {env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] for env in envs} == {"1"}
    fixed = env_of(build_worker_pod(worker_set(workers=2, bounds=(2, 2)), 0))
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in fixed  # one round only: nothing to rejoin


def test_a_template_variable_overrides_the_store_sharing_choice() -> None:
    spec = raw_spec(elastic={"enabled": True}, workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 3})
    spec["template"]["spec"]["containers"][0]["env"] = [
        {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "0"}
    ]
    pod = build_worker_pod(worker_set(spec, workers=2, bounds=(1, 3)), 1)
    names = [variable["name"] for variable in pod["spec"]["containers"][0]["env"]]
    assert names.count("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == 1
    assert env_of(pod)["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "0"


def test_fixed_size_pytorch_uses_the_static_rendezvous_on_worker_0() -> None:
    envs = [env_of(build_worker_pod(worker_set(workers=2, bounds=(2, 2)), index)) for index in range(2)]
    for index, env in enumerate(envs):
        assert env["PET_MASTER_ADDR"] == RENDEZVOUS_HOST
        assert env["PET_NODE_RANK"] == str(index)
        assert not {"PET_RDZV_BACKEND", "PET_RDZV_ENDPOINT", "PET_RDZV_CONF", "PET_MAX_RESTARTS"} & env.keys()


def test_rendezvous_env_reflects_the_worker_count_when_the_pod_is_built() -> None:
    # A restart of every worker (decide's answer to a membership change of a fixed-size or jax job)
    # builds new pods from the new count: the env follows it.
    for workers in (2, 3, 5):
        jax = env_of(build_worker_pod(worker_set(raw_spec(framework="jax"), workers=workers), workers - 1))
        assert (jax["JAX_NUM_PROCESSES"], jax["JAX_PROCESS_ID"]) == (str(workers), str(workers - 1))
        torch = env_of(build_worker_pod(worker_set(workers=workers, bounds=(workers, workers)), 0))
        assert torch["WORLD_SIZE"] == torch["PET_NNODES"] == str(workers)


def test_jax_env() -> None:
    env = env_of(build_worker_pod(worker_set(raw_spec(framework="jax"), workers=2), 1))
    assert env == {
        "JAX_COORDINATOR_ADDRESS": f"{RENDEZVOUS_HOST}:29500",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "1",
    }


@pytest.mark.parametrize(
    ("namespace", "cluster_domain", "fqdn"),
    [
        ("team-a", None, "llama-worker-0.llama.team-a.svc.cluster.local"),  # WorkerSet's default domain
        ("ml-prod", "corp.example", "llama-worker-0.llama.ml-prod.svc.corp.example"),  # --cluster-domain
    ],
)
def test_every_workers_rendezvous_address_is_worker_0s_fully_qualified_name(
    namespace: str, cluster_domain: str | None, fqdn: str
) -> None:
    """Not the relative <job>-worker-0.<job>: a pod's resolver tries it under each search domain, and where
    worker 0 has no answer yet (not created, or being replaced), under svc.<domain> it is the Service
    <job>-worker-0 of a namespace named <job>, which another tenant can own (docs/security.md)."""
    job = JobRef(name="llama", namespace=namespace, uid="u")
    elastic = raw_spec(elastic={"enabled": True}, workers={"replicas": 3, "minReplicas": 1, "maxReplicas": 3})
    expected = {
        "pytorch": {"MASTER_ADDR": fqdn, "PET_MASTER_ADDR": fqdn, "PET_RDZV_ENDPOINT": f"{fqdn}:29500"},
        "jax": {"JAX_COORDINATOR_ADDRESS": f"{fqdn}:29500"},
    }
    for spec in (elastic, raw_spec(framework="jax", workers={"replicas": 3})):
        built = worker_set(spec, workers=3, bounds=(1, 3))
        domain = {} if cluster_domain is None else {"cluster_domain": cluster_domain}
        workers = replace(built, job=job, **domain)
        for index in range(3):
            env = env_of(build_worker_pod(workers, index))
            wanted = expected[built.spec.framework]
            assert {name: env.get(name) for name in wanted} == wanted, (built.spec.framework, index)


def test_framework_none_injects_nothing() -> None:
    pod = build_worker_pod(worker_set(raw_spec(framework="none")), 0)
    assert env_of(pod) == {}
    assert "ports" not in pod["spec"]["containers"][0]
    group = WorkerGroup(
        "j", "u", 1, 1, 1, 1, elastic=False, rendezvous_host="j-worker-0.j.n.svc.cluster.local"
    )
    assert rendezvous_env("none", group, 0) == []


def test_user_env_wins_over_injected_env() -> None:
    spec = raw_spec()
    spec["template"]["spec"]["containers"][0]["env"] = [{"name": "MASTER_PORT", "value": "1234"}]
    env = build_worker_pod(worker_set(spec), 0)["spec"]["containers"][0]["env"]
    assert [variable for variable in env if variable["name"] == "MASTER_PORT"] == [
        {"name": "MASTER_PORT", "value": "1234"}
    ]


def test_rendezvous_port_is_declared_once() -> None:
    pod = build_worker_pod(worker_set(), 0)
    assert pod["spec"]["containers"][0]["ports"] == [
        {"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"}
    ]


def test_a_template_port_named_rendezvous_does_not_get_a_second_port_of_that_name() -> None:
    # Two ports of one name in a container: the API server refuses the pod, so no worker could start.
    spec = raw_spec()
    spec["template"]["spec"]["containers"][0]["ports"] = [{"name": "rendezvous", "containerPort": 29400}]
    pod = build_worker_pod(worker_set(spec), 0)
    ports = pod["spec"]["containers"][0]["ports"]
    assert [port.get("name") for port in ports] == ["rendezvous", None]
    assert ports[1]["containerPort"] == 29500


# ---------------------------------------------------------------------------------------------- checkpoint

HANDSHAKE = CheckpointEnv(url="http://kubefit.kubefit-system.svc:8081/", token="ab" * 32)


def test_checkpoint_env_names_the_endpoint_the_job_and_the_pod_itself() -> None:
    env = env_of(build_worker_pod(worker_set(checkpoint=HANDSHAKE), 1))
    assert env["KUBEFIT_CHECKPOINT_URL"] == "http://kubefit.kubefit-system.svc:8081"  # no trailing slash
    assert env["KUBEFIT_CHECKPOINT_TOKEN"] == "ab" * 32
    assert env["KUBEFIT_JOB_NAMESPACE"] == "team-a"
    assert env["KUBEFIT_JOB_NAME"] == "llama"
    assert env["KUBEFIT_WORKER"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize("framework", ["pytorch", "jax", "none"])
def test_checkpoint_env_comes_with_every_framework_and_only_when_set(framework: str) -> None:
    with_handshake = env_of(
        build_worker_pod(worker_set(raw_spec(framework=framework), checkpoint=HANDSHAKE), 0)
    )
    without = env_of(build_worker_pod(worker_set(raw_spec(framework=framework)), 0))
    assert "KUBEFIT_CHECKPOINT_TOKEN" in with_handshake
    assert not any(name.startswith("KUBEFIT_") for name in without)


def test_checkpoint_token_is_an_hmac_of_the_job_uid() -> None:
    token = checkpoint_token(b"k" * 32, "1234-uid")
    assert len(token) == 64 and int(token, 16) >= 0
    assert token == checkpoint_token(b"k" * 32, "1234-uid")
    assert token != checkpoint_token(b"k" * 32, "1234-uid2")  # a recreated job has a new uid
    assert token != checkpoint_token(b"j" * 32, "1234-uid")  # another operator key


@pytest.mark.parametrize(("key", "uid", "named"), [(b"", "u", "key"), (b"k" * 32, "", "uid")])
def test_checkpoint_token_refuses_an_empty_key_or_uid(key: bytes, uid: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        checkpoint_token(key, uid)


@pytest.mark.parametrize(
    ("own", "checkpoint_grace", "expected"),
    [
        (None, 120, 120),  # the default grace period is longer than Kubernetes' 30 s
        (None, 10, KUBERNETES_DEFAULT_GRACE_SECONDS),  # never shorter than what the pod would have had
        (600, 120, 600),  # the template's own longer period is kept
        (5, 120, 120),
        (0, 0, 0),  # a template that asks for an immediate kill, with no checkpoint wait, keeps it
    ],
)
def test_workers_have_time_to_save_on_sigterm(own: int | None, checkpoint_grace: int, expected: int) -> None:
    spec = raw_spec(elastic={"checkpointGracePeriodSeconds": checkpoint_grace})
    if own is not None:
        spec["template"]["spec"]["terminationGracePeriodSeconds"] = own
    assert build_worker_pod(worker_set(spec), 0)["spec"]["terminationGracePeriodSeconds"] == expected


@pytest.mark.parametrize(
    ("own", "framework", "expected"),
    [
        (None, "pytorch", "115"),  # the default 120 s checkpoint grace, less 5 s for torchrun to exit
        (600, "pytorch", "595"),
        (5, "pytorch", "115"),  # 120 s, the checkpoint grace, wins over the template's 5 s
        (0, "pytorch", None),  # an immediate kill, with no checkpoint wait: torchrun's own default
        (None, "jax", None),
        (None, "none", None),
    ],
)
def test_torchrun_gives_its_processes_the_pods_grace_period_to_save(
    own: int | None, framework: str, expected: str | None
) -> None:
    # torchrun, the container's first process, forwards SIGTERM to the training processes and SIGKILLed
    # them after its default 30 s: a save longer than that was cut, whatever the pod's grace period.
    spec = raw_spec(framework=framework)
    if own is not None:
        spec["template"]["spec"]["terminationGracePeriodSeconds"] = own
    if own == 0:
        spec["elastic"] = {"checkpointGracePeriodSeconds": 0}
    env = env_of(build_worker_pod(worker_set(spec), 0))
    assert env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT") == expected
    # The template's own value wins, as for every variable the operator sets.
    spec["template"]["spec"]["containers"][0]["env"] = [
        {"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": "9"}
    ]
    if framework == "pytorch":
        assert env_of(build_worker_pod(worker_set(spec), 0))["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "9"


# ---------------------------------------------------------------------------------------------- service


def test_headless_service_selects_the_workers() -> None:
    service = build_headless_service(JOB)
    assert service["metadata"]["name"] == "llama"
    assert service["metadata"]["namespace"] == "team-a"
    assert service["metadata"]["ownerReferences"][0]["uid"] == "1234-uid"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {JOB_LABEL: "llama"}
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert [port["port"] for port in service["spec"]["ports"]] == [29500]


def test_preferred_hostnames_add_one_preferred_term_and_keep_the_users() -> None:
    from kubefit.builders.placement import with_preferred_hostnames

    users = {
        "weight": 5,
        "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
    }
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [users]}}
    merged = with_preferred_hostnames(affinity, ["b-host", "a-host"])
    assert merged["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == [
        users,
        {
            "weight": 100,
            "preference": {
                "matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["a-host", "b-host"]}
                ]
            },
        },
    ]
    assert affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == [
        users
    ]  # not changed
    assert with_preferred_hostnames(affinity, []) == affinity


@pytest.mark.parametrize(
    ("elastic", "framework", "stamped"),
    [
        (False, "pytorch", True),
        (False, "none", True),
        (True, "jax", True),
        (True, "pytorch", False),
        (True, "none", False),
    ],  # fmt: skip
)
def test_a_worker_whose_world_is_fixed_at_start_carries_its_size_and_the_worker_view_reads_it(
    elastic: bool, framework: str, stamped: bool
) -> None:
    """Non-elastic jobs and elastic jax ones restart every worker for a new count: a worker of the old
    world that survived is told apart by it. An elastic pytorch group re-forms: no size to carry."""
    from kubefit.decisions.observed import worker_from_pod

    spec = raw_spec(elastic={"enabled": elastic}, framework=framework)
    manifest = build_worker_pod(worker_set(spec, workers=3, bounds=(1, 3) if elastic else (3, 3)), 1)
    annotations = manifest["metadata"]["annotations"]
    assert annotations.get("kubefit.dev/world-size") == ("3" if stamped else None)
    # An elastic pytorch worker carries torchrun's range instead: the same as its PET_NNODES.
    ranged = elastic and framework == "pytorch"
    assert annotations.get("kubefit.dev/nnodes") == ("1:3" if ranged else None)
    assert not ranged or env_of(manifest)["PET_NNODES"] == "1:3"
    seen = worker_from_pod({**manifest, "metadata": {**manifest["metadata"], "uid": "u"}})
    assert seen is not None and seen.world_size == (3 if stamped else None)
    assert seen.nnodes == ("1:3" if ranged else None)
    for garbled in ("three", "-3", "", "9" * 12, "1:", "1-3", "²", "1:²"):  # "²": isdigit, not int
        garbage = {"kubefit.dev/world-size": garbled, "kubefit.dev/nnodes": garbled}
        metadata = {**manifest["metadata"], "annotations": garbage}
        garbled_view = worker_from_pod({**manifest, "metadata": metadata})
        assert garbled_view is not None and (garbled_view.world_size, garbled_view.nnodes) == (None, None)


@pytest.mark.parametrize(
    ("phase", "statuses", "started"),
    [
        ("Pending", None, False),  # nothing reported yet
        ("Pending", [{"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}], False),
        # the trainer runs; a sidecar still pulling keeps the pod Pending
        (
            "Pending",
            [
                {"name": "proxy", "state": {"waiting": {"reason": "ErrImagePull"}}},
                {"name": "trainer", "state": {"running": {}}},
            ],
            True,
        ),  # fmt: skip
        (
            "Pending",
            [{"name": "trainer", "state": {"waiting": {}}, "lastState": {"terminated": {"exitCode": 1}}}],
            True,
        ),
        ("Running", None, True),
    ],
)
def test_the_worker_view_says_whether_its_trainer_container_has_started(
    phase: str, statuses: list[dict[str, Any]] | None, started: bool
) -> None:
    from kubefit.decisions.observed import worker_from_pod

    manifest = build_worker_pod(worker_set(raw_spec(), workers=2, bounds=(2, 2)), 1)
    manifest["spec"]["containers"][0]["name"] = "trainer"
    manifest["status"] = {"phase": phase, **({"containerStatuses": statuses} if statuses else {})}
    seen = worker_from_pod({**manifest, "metadata": {**manifest["metadata"], "uid": "u"}})
    assert seen is not None and seen.trainer_started is started
