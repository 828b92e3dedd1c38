"""The operator against the real control plane: pods, placement, status, scaling, deletion.

The real kube-scheduler binds the workers to simulated nodes; the node agent turns bound pods Running.
Each test pins its jobs to a private pool of its own (operator_support `pool`: 2 x 8 nvidia-h100-80gb
unless it asks for another shape), so no other job can hold the devices it needs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from operator_support import (
    Kube,
    OperatorProcess,
    PoolNodes,
    PrivatePool,
    job_manifest,
    running_names,
    wait_for,
)

pytestmark = pytest.mark.e2e

H100_PRODUCTS = {"NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"}


def node_labels(kube: Kube, node_name: str) -> dict[str, str]:
    return json.loads(kube.run("get", "node", node_name, "-o", "jsonpath={.metadata.labels}").stdout)


def test_job_runs_on_matching_nodes_with_status_and_columns(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    started = time.monotonic()
    kube.apply(job_manifest("llm", namespace, pool=pool))
    wait_for("2 running workers", lambda: len(running_names(kube.workers(namespace, "llm"))) == 2)
    elapsed = time.monotonic() - started
    print(f"\napply -> 2 workers Running: {elapsed:.2f}s")

    pods = kube.workers(namespace, "llm")
    assert [pod["metadata"]["name"] for pod in pods] == ["llm-worker-0", "llm-worker-1"]
    for index, pod in enumerate(pods):
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ]
        assert {"nvidia.com/gpu.product"} <= {
            expr["key"] for term in terms for expr in term["matchExpressions"]
        }
        assert node_labels(kube, pod["spec"]["nodeName"]).get("nvidia.com/gpu.product") in H100_PRODUCTS
        assert pod["spec"]["nodeName"] in pool.nodes
        assert pod["spec"]["hostname"] == f"llm-worker-{index}" and pod["spec"]["subdomain"] == "llm"
        assert pod["spec"]["restartPolicy"] == "Never"
        env = {item["name"]: item.get("value") for item in container["env"]}
        # Fully qualified: a relative name could resolve in another namespace (docs/security.md).
        assert env["MASTER_ADDR"] == f"llm-worker-0.llm.{namespace}.svc.cluster.local"
        assert env["RANK"] == str(index)
        (owner,) = pod["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("TrainingJob", "llm", True)

    service = kube.get("service", "llm", namespace)
    assert service is not None
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"kubefit.dev/job": "llm"}

    status = wait_for(
        "status readyReplicas 2", lambda: (s := kube.job_status(namespace, "llm"))["readyReplicas"] == 2 and s
    )
    assert status["phase"] == "Running"
    assert status["replicas"] == 2
    assert status["selector"] == "kubefit.dev/job=llm"
    assert status["sizing"]["accelerator"] == "nvidia-h100-80gb"
    sized = kube.condition(namespace, "llm", "Sized")
    assert (
        sized is not None
        and sized["status"] == "True"
        and sized["message"].startswith("4 x nvidia-h100-80gb, ")
    )

    table = kube.run("get", "tj", "llm", "-n", namespace, "--no-headers").stdout.split()
    name, phase, workers, accelerator, per_device, per_device_unit, fits = table[:7]
    assert (name, phase, workers, accelerator, fits) == ("llm", "Running", "2/2", "nvidia-h100-80gb", "true")
    assert per_device_unit == "GiB" and float(per_device) > 0


def test_kubectl_scale_changes_the_worker_count(kube: Kube, namespace: str, pool: PrivatePool) -> None:
    kube.apply(
        job_manifest(
            "elastic",
            namespace,
            pool=pool,
            resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 1},
            workers={"replicas": 1, "minReplicas": 1, "maxReplicas": 3},
            # The simulated workers never acknowledge a checkpoint: no grace to wait out on a scale-down.
            elastic={"enabled": True, "checkpointGracePeriodSeconds": 0},
        )
    )
    wait_for(
        "1 running worker", lambda: running_names(kube.workers(namespace, "elastic")) == ["elastic-worker-0"]
    )

    kube.run("scale", "tj", "elastic", "-n", namespace, "--replicas=3")
    expected = ["elastic-worker-0", "elastic-worker-1", "elastic-worker-2"]
    wait_for("3 running workers", lambda: running_names(kube.workers(namespace, "elastic")) == expected)
    wait_for("status 3/3", lambda: kube.job_status(namespace, "elastic").get("workers") == "3/3")
    # The reconcile that saw the new count waited for the pass that granted it: with room for 3, nothing
    # said "1 of 3 workers granted: no capacity for more" on the way.
    told = [event["message"] for event in kube.events(namespace, "elastic")]
    assert "3 workers granted" in told and not [message for message in told if "no capacity" in message]

    kube.run("scale", "tj", "elastic", "-n", namespace, "--replicas=2")
    # Scale-down removes the highest index; the others keep running untouched.
    wait_for(
        "worker 2 gone",
        lambda: [pod["metadata"]["name"] for pod in kube.workers(namespace, "elastic")] == expected[:2],
    )
    assert running_names(kube.workers(namespace, "elastic")) == expected[:2]

    kube.run("scale", "tj", "elastic", "-n", namespace, "--replicas=9")  # above maxReplicas: clamped
    wait_for(
        "status 3/3 after clamping", lambda: kube.job_status(namespace, "elastic").get("workers") == "3/3"
    )
    assert len(kube.workers(namespace, "elastic")) == 3


def test_deleting_the_job_deletes_its_pods_and_service(kube: Kube, namespace: str, pool: PrivatePool) -> None:
    kube.apply(job_manifest("doomed", namespace, pool=pool))
    wait_for("2 running workers", lambda: len(running_names(kube.workers(namespace, "doomed"))) == 2)
    kube.run("delete", "tj", "doomed", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for("the workers to be garbage-collected", lambda: kube.workers(namespace, "doomed") == [])
    wait_for("the service to be garbage-collected", lambda: kube.get("service", "doomed", namespace) is None)


def test_undoing_an_edit_that_made_a_running_job_not_fit_keeps_its_workers(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    """A slip (a model a thousand times larger) marks the job DoesNotFit and leaves its workers running;
    put right, the job runs on with the same workers. It was queued afresh, granted nothing, and its
    workers were deleted as if preempted (seen on fcd5a6d)."""
    # No grace to wait out, so that a removal, were one decided, would show at once.
    manifest = job_manifest("slip", namespace, pool=pool, elastic={"checkpointGracePeriodSeconds": 0})
    kube.apply(manifest)
    wait_for("2 running workers", lambda: len(running_names(kube.workers(namespace, "slip"))) == 2)
    uids = sorted(pod["metadata"]["uid"] for pod in kube.workers(namespace, "slip"))

    kube.apply({**manifest, "spec": {**manifest["spec"], "model": {"parameters": "1T"}}})
    wait_for(
        "Sized=False DoesNotFit",
        lambda: (kube.condition(namespace, "slip", "Sized") or {}).get("reason") == "DoesNotFit",
    )
    kube.apply(manifest)
    wait_for("Sized=True", lambda: (kube.condition(namespace, "slip", "Sized") or {}).get("status") == "True")
    wait_for("status 2/2", lambda: kube.job_status(namespace, "slip").get("workers") == "2/2")
    time.sleep(5)  # a pass and the reconciles it asks for take well under a second on the sandbox
    assert sorted(pod["metadata"]["uid"] for pod in kube.workers(namespace, "slip")) == uids
    assert kube.job_status(namespace, "slip")["phase"] == "Running"
    reasons = [event["reason"] for event in kube.events(namespace, "slip")]
    assert "Preempted" not in reasons and "DeletedWorkers" not in reasons, reasons


def test_a_named_layout_under_fit_policy_warn_runs_though_its_estimate_does_not_fit(
    kube: Kube, namespace: str, pool: PrivatePool
) -> None:
    """fitPolicy Warn: a layout the user vouches for starts although the estimate says it does not fit,
    and says so (Sized=False DoesNotFit, a Warning event); under Enforce it started nothing."""
    resources = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 4, "fitPolicy": "Warn"}
    kube.apply(job_manifest("vouched", namespace, pool=pool, model={"parameters": "1T"}, resources=resources))
    wait_for("2 running workers", lambda: len(running_names(kube.workers(namespace, "vouched"))) == 2)
    sized = kube.condition(namespace, "vouched", "Sized") or {}
    assert (sized.get("status"), sized.get("reason")) == ("False", "DoesNotFit"), sized
    warnings = [event for event in kube.events(namespace, "vouched") if event["type"] == "Warning"]
    assert any(event["reason"] == "DoesNotFit" for event in warnings), warnings
    sizing = kube.job_status(namespace, "vouched")["sizing"]
    assert sizing["fits"] is False and any("fitPolicy Warn" in w for w in sizing["warnings"])


def test_a_worker_runs_on_a_node_with_one_gpu_and_little_host_memory_and_cpu(
    kube: Kube, namespace: str, add_pool: Callable[..., PrivatePool]
) -> None:
    """An 8-vCPU node with one L4 and 15 GiB (a little under 8 cores allocatable, as clouds' g6.xlarge-like
    nodes): the default of 8 cores and 16Gi a device fit no such node, and the worker stayed Pending."""
    small = add_pool(PoolNodes("nvidia-l4", nodes=1, per_node=1, cpu="7910m", memory="15Gi"))
    kube.apply(
        job_manifest(
            "small", namespace, pool=small, model={"parameters": "300M"},
            resources={"accelerator": "nvidia-l4", "acceleratorsPerWorker": 1}, workers={"replicas": 1},
        )
    )  # fmt: skip
    wait_for(
        "the worker running", lambda: running_names(kube.workers(namespace, "small")) == ["small-worker-0"]
    )
    requests = kube.workers(namespace, "small")[0]["spec"]["containers"][0]["resources"]["requests"]
    assert (requests["cpu"], requests["memory"]) == ("7119m", "13824Mi")  # 90% of the node's


def test_jax_job_on_tpu_nodes(
    kube: Kube, namespace: str, operator: OperatorProcess, add_pool: Callable[..., PrivatePool]
) -> None:
    tpus = add_pool(PoolNodes("google-tpu-v5e", nodes=2, per_node=4))
    manifest = job_manifest(
        "jaxjob",
        namespace,
        pool=tpus,
        framework="jax",
        model={"parameters": "300M"},  # a v5e chip has 16 GB
        resources={"accelerator": "google-tpu-v5e", "acceleratorsPerWorker": 4},
        workers={"replicas": 2},
    )
    kube.apply(manifest)
    wait_for("2 running TPU workers", lambda: len(running_names(kube.workers(namespace, "jaxjob"))) == 2)
    for index, pod in enumerate(kube.workers(namespace, "jaxjob")):
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"] == {"google.com/tpu": "4"}
        labels = node_labels(kube, pod["spec"]["nodeName"])
        assert labels.get("cloud.google.com/gke-tpu-accelerator") == "tpu-v5-lite-podslice"
        assert pod["spec"]["nodeName"] in tpus.nodes
        env = {item["name"]: item.get("value") for item in container["env"]}
        rendezvous = {name: value for name, value in env.items() if not name.startswith("KUBEFIT_")}
        assert rendezvous == {
            "JAX_COORDINATOR_ADDRESS": f"jaxjob-worker-0.jaxjob.{namespace}.svc.cluster.local:29500",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(index),
        }
        # The checkpoint handshake's variables (docs/checkpoint-handshake.md), the worker's own name from
        # the downward API.
        assert (
            env["KUBEFIT_JOB_NAME"] == "jaxjob" and env["KUBEFIT_CHECKPOINT_URL"] == operator.checkpoint_url
        )
        assert env["KUBEFIT_WORKER"] is None  # valueFrom, not a value


def test_metrics_report_the_job_and_drop_it_when_deleted(
    kube: Kube, namespace: str, operator: OperatorProcess, pool: PrivatePool
) -> None:
    kube.apply(job_manifest("measured", namespace, pool=pool, workers={"replicas": 1}))
    wait_for("1 running worker", lambda: len(running_names(kube.workers(namespace, "measured"))) == 1)
    series = f'name="measured",namespace="{namespace}"'
    wait_for(
        "running-workers gauge at 1",
        lambda: f'kubefit_trainingjob_workers{{{series},state="running"}} 1.0' in operator.metrics(),
    )
    text = operator.metrics()
    sized = f'accelerator="nvidia-h100-80gb",{series}'
    assert f'kubefit_trainingjob_accelerators{{{sized},state="allocated"}} 4.0' in text
    stored = kube.get("trainingjob", "measured", namespace)
    assert stored is not None
    uid = stored["metadata"]["uid"]
    assert f'kubefit_trainingjob_info{{{sized},phase="Running",uid="{uid}"}} 1.0' in text
    assert 'kubefit_reconcile_total{result="success",trigger="create"}' in text
    # The job was admitted and its worker ran in this operator process: both latencies were observed.
    assert _sample(text, "kubefit_queue_wait_seconds_count") >= 1
    assert _sample(text, "kubefit_scheduling_latency_seconds_count") >= 1
    assert (
        _sample(text, 'kubefit_cluster_accelerators{accelerator="nvidia-h100-80gb",state="allocated"}') >= 4
    )
    kube.run("delete", "tj", "measured", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for("the job's series to disappear", lambda: 'name="measured"' not in operator.metrics())


def _sample(exposition: str, series: str) -> float:
    """The value of one series in a /metrics text (0 when absent)."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
