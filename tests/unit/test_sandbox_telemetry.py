"""The sandbox's dcgm-exporter-shaped GPU telemetry: which pod holds which GPU, what each GPU reports, the
exposition text and its HTTP endpoint (kubefit_sandbox.telemetry)."""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubefit.sizing.catalog import load_catalog
from kubefit_sandbox.cli import _telemetry
from kubefit_sandbox.cluster import build_node, parse_pool
from kubefit_sandbox.telemetry import (
    DEFAULT_UTILIZATION,
    MEMORY_USED_ANNOTATION,
    TELEMETRY_URL_FILE,
    UTILIZATION_ANNOTATION,
    GpuTelemetry,
    TelemetryServer,
    read_telemetry_url,
    write_telemetry_url,
)

H100_MIB = 81559  # the catalog's nvidia-h100-80gb, as nvidia-smi reports it
GIB_IN_MIB = 1024


def node(
    name: str = "h100-0", accelerator: str | None = "nvidia-h100-80gb", per_node: int = 8
) -> dict[str, Any]:
    raw: dict[str, Any] = {"name": "pool", "accelerator": accelerator}
    if accelerator is not None:
        raw["acceleratorsPerNode"] = per_node
    manifest = build_node(parse_pool(raw, "test", load_catalog()), name, 3, "2026-01-02T03:04:05Z")
    manifest["metadata"]["uid"] = f"uid-of-{name}"
    return manifest


def pod(
    name: str,
    gpus: int | dict[str, int],
    annotations: dict[str, str] | None = None,
    phase: str = "Running",
    node_name: str = "h100-0",
) -> dict[str, Any]:
    per_container = gpus if isinstance(gpus, dict) else {"trainer": gpus}
    containers = [
        {"name": container, "resources": {"limits": {"nvidia.com/gpu": str(count)}} if count else {}}
        for container, count in per_container.items()
    ]
    return {
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "annotations": annotations or {}},
        "spec": {"nodeName": node_name, "containers": containers},
        "status": {"phase": phase},
    }


def samples(telemetry: GpuTelemetry) -> dict[tuple[str, str, str], tuple[float, dict[str, str]]]:
    """(metric, node, gpu) -> (value, labels), parsed back with prometheus_client's text parser."""
    found = {}
    for family in text_string_to_metric_families(telemetry.render()):
        assert family.type == "gauge"
        for sample in family.samples:
            found[(sample.name, sample.labels["Hostname"], sample.labels["gpu"])] = (
                sample.value,
                sample.labels,
            )
    return found


def value(telemetry: GpuTelemetry, metric: str, gpu: int, node_name: str = "h100-0") -> float:
    return samples(telemetry)[(metric, node_name, str(gpu))][0]


def holder(telemetry: GpuTelemetry, gpu: int, node_name: str = "h100-0") -> str | None:
    labels = samples(telemetry)[("DCGM_FI_DEV_GPU_UTIL", node_name, str(gpu))][1]
    return labels.get("pod")


def test_every_gpu_of_a_node_reports_dcgm_exporter_labels_and_idle_values() -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node())
    found = samples(telemetry)
    metrics = {
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
    }
    assert {key[0] for key in found} == metrics
    assert sorted({key[2] for key in found}, key=int) == [str(index) for index in range(8)]
    labels = found[("DCGM_FI_DEV_FB_FREE", "h100-0", "5")][1]
    assert labels["modelName"] == "NVIDIA H100 80GB HBM3" and labels["device"] == "nvidia5"
    assert labels["UUID"].startswith("GPU-") and "pod" not in labels and "namespace" not in labels
    assert len({found[("DCGM_FI_DEV_GPU_UTIL", "h100-0", str(gpu))][1]["UUID"] for gpu in range(8)}) == 8
    assert value(telemetry, "DCGM_FI_DEV_FB_FREE", 5) == H100_MIB
    assert value(telemetry, "DCGM_FI_DEV_GPU_UTIL", 5) == value(telemetry, "DCGM_FI_DEV_FB_USED", 5) == 0


def test_a_gpu_keeps_its_uuid_when_the_agent_sees_the_node_again() -> None:
    first, second = GpuTelemetry(), GpuTelemetry()
    first.node_changed(node())
    second.node_changed(node())
    assert (
        samples(first)[("DCGM_FI_DEV_GPU_UTIL", "h100-0", "2")][1]["UUID"]
        == samples(second)[("DCGM_FI_DEV_GPU_UTIL", "h100-0", "2")][1]["UUID"]
    )


def test_a_pod_holds_the_lowest_free_gpus_and_reports_its_annotations() -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node())
    staged = {UTILIZATION_ANNOTATION: "0.02", MEMORY_USED_ANNOTATION: "30Gi"}
    assert telemetry.pod_changed(pod("idle-0", 4, staged)) == []
    found = samples(telemetry)
    labels = found[("DCGM_FI_DEV_GPU_UTIL", "h100-0", "3")][1]
    assert (labels["pod"], labels["namespace"], labels["container"]) == ("idle-0", "ml", "trainer")
    assert [holder(telemetry, gpu) for gpu in range(8)] == ["idle-0"] * 4 + [None] * 4
    assert value(telemetry, "DCGM_FI_DEV_GPU_UTIL", 0) == 2
    assert value(telemetry, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0) == pytest.approx(0.02)
    assert value(telemetry, "DCGM_FI_DEV_FB_USED", 0) == 30 * GIB_IN_MIB
    assert value(telemetry, "DCGM_FI_DEV_FB_FREE", 0) == H100_MIB - 30 * GIB_IN_MIB
    assert value(telemetry, "DCGM_FI_DEV_GPU_UTIL", 4) == 0


def test_without_annotations_a_held_gpu_is_busy_by_the_documented_default() -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node())
    telemetry.pod_changed(pod("busy-0", 2))
    assert value(telemetry, "DCGM_FI_DEV_GPU_UTIL", 1) == 90
    assert value(telemetry, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", 1) == pytest.approx(0.9)
    assert value(telemetry, "DCGM_FI_DEV_FB_USED", 1) == int(H100_MIB * 0.9)


def test_ended_and_deleted_pods_free_their_gpus_for_the_next_pod() -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node())
    telemetry.pod_changed(pod("a", 4))
    telemetry.pod_changed(pod("b", 2))
    telemetry.pod_changed(pod("a", 4, phase="Succeeded"))
    telemetry.pod_changed(pod("c", 3))
    assert [holder(telemetry, gpu) for gpu in range(8)] == ["c", "c", "c", None, "b", "b", None, None]
    telemetry.pod_deleted(pod("b", 2))
    telemetry.pod_changed(pod("d", 5))
    assert [holder(telemetry, gpu) for gpu in range(8)] == ["c", "c", "c", "d", "d", "d", "d", "d"]
    assert 'pod="a"' not in telemetry.render() and 'pod="b"' not in telemetry.render()


def test_a_pending_pod_bound_to_the_node_holds_its_gpus_and_keeps_them_when_it_runs() -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node())
    telemetry.pod_changed(pod("first", 2, phase="Pending"))
    telemetry.pod_changed(pod("second", 2))
    telemetry.pod_changed(pod("first", 2))
    assert [holder(telemetry, gpu) for gpu in range(4)] == ["first", "first", "second", "second"]


def test_gpus_of_a_pod_not_running_yet_are_idle_unless_annotated() -> None:
    """A gang whose workers never started read 90% busy (an audit): dcgm-exporter shows about 0 there."""
    telemetry = GpuTelemetry()
    telemetry.node_changed(node())
    telemetry.pod_changed(pod("starting", 1, phase="Pending"))
    telemetry.pod_changed(pod("told", 1, {UTILIZATION_ANNOTATION: "0.5"}, phase="Pending"))
    found = samples(telemetry)
    assert [found[("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "h100-0", gpu)][0] for gpu in "01"] == [0.0, 0.5]
    assert found[("DCGM_FI_DEV_FB_USED", "h100-0", "0")][0] == 0
    telemetry.pod_changed(pod("starting", 1))
    assert samples(telemetry)[("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "h100-0", "0")][0] == DEFAULT_UTILIZATION


def test_each_container_is_named_on_the_gpus_it_holds() -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node())
    telemetry.pod_changed(pod("multi", {"sidecar": 0, "trainer": 2, "eval": 1}))
    containers = [samples(telemetry)[("DCGM_FI_DEV_GPU_UTIL", "h100-0", str(gpu))][1].get("container")
                  for gpu in range(4)]  # fmt: skip
    assert containers == ["trainer", "trainer", "eval", None]


def test_annotations_changed_on_a_running_pod_show_on_the_next_scrape() -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node())
    telemetry.pod_changed(pod("w", 1))
    telemetry.pod_changed(pod("w", 1, {UTILIZATION_ANNOTATION: "0"}))
    assert value(telemetry, "DCGM_FI_DEV_GPU_UTIL", 0) == 0
    assert holder(telemetry, 0) == "w"


@pytest.mark.parametrize(
    ("annotations", "named"),
    [
        ({UTILIZATION_ANNOTATION: "1.5"}, UTILIZATION_ANNOTATION),
        ({UTILIZATION_ANNOTATION: "busy"}, UTILIZATION_ANNOTATION),
        ({UTILIZATION_ANNOTATION: "nan"}, UTILIZATION_ANNOTATION),
        ({MEMORY_USED_ANNOTATION: "thirty gigs"}, MEMORY_USED_ANNOTATION),
        ({MEMORY_USED_ANNOTATION: "-1Gi"}, MEMORY_USED_ANNOTATION),
    ],
)
def test_an_unusable_annotation_is_named_and_the_default_applies(
    annotations: dict[str, str], named: str
) -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node())
    problems = telemetry.pod_changed(pod("w", 1, annotations))
    assert len(problems) == 1 and problems[0].startswith(f"annotation {named}=")
    assert holder(telemetry, 0) == "w"
    assert value(telemetry, "DCGM_FI_DEV_GPU_UTIL", 0) == 90
    assert value(telemetry, "DCGM_FI_DEV_FB_USED", 0) == int(H100_MIB * 0.9)


def test_memory_used_is_capped_at_the_gpu_and_may_be_zero() -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node())
    telemetry.pod_changed(pod("big", 1, {MEMORY_USED_ANNOTATION: "200Gi"}))
    telemetry.pod_changed(pod("none", 1, {MEMORY_USED_ANNOTATION: "0"}))
    assert (value(telemetry, "DCGM_FI_DEV_FB_USED", 0), value(telemetry, "DCGM_FI_DEV_FB_FREE", 0)) == (
        H100_MIB,
        0,
    )
    assert (value(telemetry, "DCGM_FI_DEV_FB_USED", 1), value(telemetry, "DCGM_FI_DEV_FB_FREE", 1)) == (
        0,
        H100_MIB,
    )


def test_only_nodes_with_nvidia_gpus_report_and_a_deleted_node_takes_its_series() -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node("tpu-0", "google-tpu-v5e", 4))
    telemetry.node_changed(node("cpu-0", None))
    telemetry.node_changed(node("h100-0"))
    telemetry.node_changed(node("a100-0", "nvidia-a100-40gb", 2))
    telemetry.pod_changed(pod("w", 2, node_name="a100-0"))
    assert {key[1] for key in samples(telemetry)} == {"h100-0", "a100-0"}
    telemetry.node_deleted("a100-0")
    assert {key[1] for key in samples(telemetry)} == {"h100-0"}
    telemetry.pod_changed(pod("x", 1, node_name="tpu-0"))  # not a GPU node: nothing held
    assert 'pod="' not in telemetry.render()


def test_a_pod_asking_more_than_the_node_has_holds_what_there_is() -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node(per_node=2))
    telemetry.pod_changed(pod("greedy", 3))
    assert [holder(telemetry, gpu) for gpu in range(2)] == ["greedy", "greedy"]


def test_the_endpoint_serves_the_exposition_at_metrics_only(tmp_path: Path) -> None:
    telemetry = GpuTelemetry()
    telemetry.node_changed(node(per_node=1))
    telemetry.pod_changed(pod("w", 1, {UTILIZATION_ANNOTATION: "0.5"}))
    server = TelemetryServer(telemetry)
    server.start()
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/metrics")
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = response.read().decode()
        assert body == telemetry.render()
        assert 'DCGM_FI_DEV_GPU_UTIL{gpu="0"' in body and 'pod="w"} 50\n' in body
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url.replace("/metrics", "/other"), timeout=5)
        assert missing.value.code == 404
    finally:
        server.stop()


def test_the_url_file_round_trips_and_the_cli_refuses_without_an_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert read_telemetry_url(tmp_path) is None
    write_telemetry_url(tmp_path, "http://127.0.0.1:1234/metrics")
    assert (tmp_path / TELEMETRY_URL_FILE).read_text() == "http://127.0.0.1:1234/metrics\n"
    assert read_telemetry_url(tmp_path) == "http://127.0.0.1:1234/metrics"
    # A file left by an agent that no longer runs is not an address to scrape.
    assert _telemetry(argparse.Namespace(state_dir=str(tmp_path))) == 1
    assert "no node agent runs for" in capsys.readouterr().err
