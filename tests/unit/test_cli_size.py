"""`kubefit size`: outputs, exit codes and error messages, in-process and as a real subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from bad_specs import BAD_SPECS, BadSpec
from sizing_inputs import LLAMA2_70B, LLAMA3_8B, SIZING_KEYS, TEMPLATE

from kubefit.api.validation import parse_spec
from kubefit.builders.naming import JobRef
from kubefit.cli.main import main
from kubefit.decisions.inventory import Inventory, build_inventory, node_facts, pod_usage
from kubefit.decisions.job import JobObservation, decide
from kubefit.decisions.node_match import placement_of, template_pod_spec
from kubefit.decisions.observed import WorkerPod
from kubefit.sizing.catalog import load_catalog
from kubefit.sizing.planner import plan

REPO = Path(__file__).resolve().parents[2]
LLAMA3_8B_FSDP = {
    "apiVersion": "kubefit.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "llama3-8b", "namespace": "ml"},
    "spec": {
        "template": TEMPLATE,
        "model": LLAMA3_8B,
        "training": {"sharding": "fsdp", "activationCheckpointing": "full", "sequenceLength": 4096},
        "resources": {"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 8},
        "workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 2},
    },
}


def write(tmp_path: Path, manifest: Any, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(manifest if isinstance(manifest, str) else yaml.safe_dump(manifest))
    return str(path)


def with_spec(**changes: Any) -> dict[str, Any]:
    manifest = json.loads(json.dumps(LLAMA3_8B_FSDP))
    manifest["spec"].update(changes)
    return manifest


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["size", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------ in-process


def test_json_is_exactly_the_sizing_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "-f", write(tmp_path, LLAMA3_8B_FSDP), "-o", "json")
    assert code == 0 and err == ""
    printed = json.loads(out)
    assert set(printed) == SIZING_KEYS
    expected = plan(parse_spec(LLAMA3_8B_FSDP["spec"])).model_dump(by_alias=True, mode="json")
    assert {key: value for key, value in printed.items() if key != "warnings"} == {
        key: value for key, value in expected.items() if key != "warnings"
    }
    assert all(isinstance(value, int) for value in printed["breakdown"].values())
    assert isinstance(printed["perDeviceBytes"], int) and isinstance(printed["deviceMemoryBytes"], int)


def test_what_the_operator_refuses_for_its_name_or_worker_limit_is_refused_here_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # decisions.job.checked_spec, the operator's and the webhook's checks: status 2, naming the field.
    bad_name = json.loads(json.dumps(LLAMA3_8B_FSDP))
    bad_name["metadata"]["name"] = "Llama_3"
    code, _, err = run_main(capsys, "-f", write(tmp_path, bad_name))
    assert code == 2 and "metadata.name" in err, err
    many = with_spec(workers={"replicas": 2000})
    code, _, err = run_main(capsys, "-f", write(tmp_path, many))
    assert code == 2 and "spec.workers.replicas" in err and "1024" in err, err
    code, _, err = run_main(capsys, "-f", write(tmp_path, many), "--max-workers-per-job", "4096")
    assert code == 0, err
    unnamed = json.loads(json.dumps(LLAMA3_8B_FSDP))
    del unnamed["metadata"]
    assert run_main(capsys, "-f", write(tmp_path, unnamed))[0] == 0  # no name, nothing to check
    with pytest.raises(SystemExit):
        main(["size", "-f", write(tmp_path, unnamed), "--max-workers-per-job", "0"])
    assert "--max-workers-per-job" in capsys.readouterr().err


def test_the_worker_limit_defaults_to_the_operators() -> None:
    import argparse

    from kubefit.cli.size import register
    from kubefit.decisions.job import DEFAULT_MAX_WORKERS_PER_JOB

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["size", "-f", "x"]).max_workers_per_job == DEFAULT_MAX_WORKERS_PER_JOB


def test_an_elastic_job_shows_the_worker_range_it_runs_and_the_count_it_was_sized_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/llama3-8b-fsdp.yaml runs 1 to 2 workers of 8: "8 per worker x 1 worker = 8 devices" read
    as if 8 devices were all it would take."""
    manifest = yaml.safe_load((REPO / "examples" / "llama3-8b-fsdp.yaml").read_text())
    code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest))
    assert code == 0
    assert "8 per worker x 1-2 workers = up to 16 devices" in out
    assert "sized at 1 worker: the count where each device holds most" in out
    readme = (REPO / "README.md").read_text()
    shown = [line for line in out.splitlines() if line.startswith(("  layout", "  elastic", "  per device"))]
    assert all(line in readme for line in shown)  # the README's sample is this output


def test_yaml_prints_the_same_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, LLAMA3_8B_FSDP)
    _, as_json, _ = run_main(capsys, "-f", path, "-o", "json")
    code, as_yaml, _ = run_main(capsys, "-f", path, "-o", "yaml")
    assert code == 0 and yaml.safe_load(as_yaml) == json.loads(as_json)


def test_table_shows_layout_breakdown_in_gib_and_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_main(capsys, "-f", write(tmp_path, LLAMA3_8B_FSDP))
    sizing = plan(parse_spec(LLAMA3_8B_FSDP["spec"]))
    assert code == 0
    assert out.startswith("TrainingJob ml/llama3-8b\n")
    assert "nvidia-a100-40gb (nvidia.com/gpu), 40.0 GiB per device" in out
    assert "8 per worker x 2 workers = 16 devices" in out  # evaluated at replicas
    assert f"{sizing.per_device_bytes / 2**30:.1f} GiB estimated, 36.0 GiB usable (10% headroom): fits" in out
    for label in ("weights", "gradients", "optimizer states", "activations", "logits", "overhead", "total"):
        assert f"    {label}" in out


def test_negative_zero_headroom_prints_as_zero_percent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resources = {**LLAMA3_8B_FSDP["spec"]["resources"], "memoryHeadroom": -0.0}
    code, out, _ = run_main(capsys, "-f", write(tmp_path, with_spec(resources=resources)))
    assert code == 0
    assert "40.0 GiB usable (0% headroom): fits" in out and "-0%" not in out


def test_suggest_with_json_wraps_sizing_and_suggestions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, LLAMA3_8B_FSDP)
    _, plain, _ = run_main(capsys, "-f", path, "-o", "json")
    code, out, _ = run_main(capsys, "-f", path, "-o", "json", "--suggest")
    printed = json.loads(out)
    assert code == 0 and set(printed) == {"sizing", "suggestions"}
    assert printed["sizing"] == json.loads(plain)
    assert printed["suggestions"], "an 8-GPU FSDP job has cheaper alternatives (LoRA at least)"
    devices = [suggestion["devices"] for suggestion in printed["suggestions"]]
    assert devices == sorted(devices)


def test_suggest_in_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "-f", write(tmp_path, LLAMA3_8B_FSDP), "--suggest")
    assert code == 0 and "suggestions, cheapest first" in out and "trade-off: " in out


def test_suggest_counts_the_workers_the_changed_job_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fixed 4-worker job: LoRA at one device a worker runs 4 workers, as `kubefit size` of the changed job
    # says; it was listed as "1 device" with the per-device estimate made at 4.
    gang = with_spec(workers={"replicas": 4})
    code, out, err = run_main(capsys, "-f", write(tmp_path, gang), "--suggest", "-o", "json")
    assert code == 0, err
    suggestions = json.loads(out)["suggestions"]
    lora = next(s for s in suggestions if s["change"].startswith("model.finetuning.method: lora"))
    assert (lora["workers"], lora["devices"], lora["acceleratorsPerWorker"]) == (4, 4, 1)
    changed = json.loads(json.dumps(gang))
    changed["spec"]["model"]["finetuning"] = {"method": "lora"}
    changed["spec"]["resources"]["acceleratorsPerWorker"] = 1
    _, applied, _ = run_main(capsys, "-f", write(tmp_path, changed, "lora.yaml"), "-o", "json")
    assert json.loads(applied)["perDeviceBytes"] == lora["perDeviceBytes"]
    _, table, _ = run_main(capsys, "-f", write(tmp_path, changed, "lora.yaml"))
    assert "1 per worker x 4 workers = 4 devices" in table
    _, table, _ = run_main(capsys, "-f", write(tmp_path, gang), "--suggest")
    per_device = lora["perDeviceBytes"] / 2**30
    assert f"4 workers x 1 nvidia-a100-40gb = 4 devices, {per_device:.1f} of 40.0 GiB per device" in table


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump(LLAMA3_8B_FSDP)))
    code, out, _ = run_main(capsys, "-f", "-", "-o", "json")
    assert code == 0 and json.loads(out)["accelerator"] == "nvidia-a100-40gb"


def test_a_manifest_past_the_api_servers_request_limit_is_refused_without_reading_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `kubefit size -f /dev/zero` read until the process ran out of memory.
    code, _, err = run_main(capsys, "-f", "/dev/zero")
    assert code == 2 and "/dev/zero: larger than 3 MiB" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("#" * (3 * 2**20 + 1)))
    code, _, err = run_main(capsys, "-f", "-")
    assert code == 2 and "<stdin>: larger than 3 MiB" in err
    # Counted in bytes, not characters: 1.6 M two-byte characters are 3.2 MB (the tail was cut off and the
    # job sized without it when piped in; a file of them was read whole).
    multibyte = yaml.safe_dump(LLAMA3_8B_FSDP) + "# " + "é" * (1_600_000)
    for source in ("-", write(tmp_path, multibyte, "multibyte.yaml")):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(multibyte.encode()), encoding="utf-8"))
        code, _, err = run_main(capsys, "-f", source)
        assert code == 2 and "larger than 3 MiB" in err, err
    big_but_taken = yaml.safe_dump(LLAMA3_8B_FSDP) + "#" * (3 * 2**20 - 10_000)
    path = tmp_path / "padded.yaml"
    path.write_text(big_but_taken)
    code, _, _ = run_main(capsys, "-f", str(path), "-o", "json")
    assert code == 0


def test_a_key_written_twice_is_refused_naming_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # kubectl keeps the last silently: a second `framework:` sized the job for a TPU without a word.
    text = yaml.safe_dump(LLAMA3_8B_FSDP, sort_keys=False).replace(
        "spec:\n", "spec:\n  framework: pytorch\n  framework: jax\n", 1
    )
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    code, _, err = run_main(capsys, "-f", str(path))
    line = text.splitlines().index("  framework: jax") + 1
    assert (
        code == 2
        and f"(line {line}, column 3): found 'framework' a second time (first on line {line - 1})" in err
    )
    # A key given beside a merge key overrides the merged one, as YAML means it: not a repetition.
    merged = yaml.safe_dump(LLAMA3_8B_FSDP, sort_keys=False).replace(
        "  namespace: ml\n", "  namespace: ml\n  labels: {<<: {team: a, tier: b}, tier: c}\n", 1
    )
    assert "<<:" in merged
    code, _, err = run_main(capsys, "-f", write(tmp_path, merged, "merged.yaml"), "-o", "json")
    assert code == 0, err
    # Such a mapping merged again further up: flattening it in place once listed `tier` twice there.
    nested = """apiVersion: kubefit.dev/v1alpha1
kind: TrainingJob
spec:
  model: {parameters: 1B}
  template:
    metadata:
      labels: &labels
        <<: {team: ml, tier: batch}
        tier: training
    spec:
      containers: [{name: trainer, image: ghcr.io/acme/train:1}]
metadata:
  name: llama
  labels:
    <<: *labels
"""
    code, _, err = run_main(capsys, "-f", write(tmp_path, nested, "nested.yaml"), "-o", "json")
    assert code == 0, err


def test_a_namespace_that_is_not_a_dns_label_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = {**LLAMA3_8B_FSDP, "metadata": {"name": "llama", "namespace": "Bad_NS"}}
    code, _, err = run_main(capsys, "-f", write(tmp_path, manifest))
    assert code == 2 and "metadata.namespace: must be a DNS label" in err
    manifest["metadata"]["namespace"] = "team-a"
    code, _, _ = run_main(capsys, "-f", write(tmp_path, manifest))
    assert code == 0


def test_a_job_that_does_not_fit_still_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = with_spec(
        resources={"accelerator": "nvidia-t4", "acceleratorsPerWorker": 1}, workers={"replicas": 1}
    )
    manifest["spec"]["model"]["precision"] = "fp32"
    manifest["spec"]["training"] = {}
    code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest), "-o", "json")
    printed = json.loads(out)
    assert code == 0 and printed["fits"] is False
    assert any(warning.startswith("does not fit") for warning in printed["warnings"])
    code, table, _ = run_main(capsys, "-f", write(tmp_path, manifest))
    assert code == 0 and "DOES NOT FIT" in table and "no worker count fits as configured" in table


def test_overprovisioned_layout_is_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = with_spec(
        model={"parameters": "1B"},
        training={},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
    )
    code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest), "-o", "json")
    assert code == 0
    assert any("is more than this job needs" in warning for warning in json.loads(out)["warnings"])


def test_the_overprovisioning_warning_names_the_workers_its_figures_were_estimated_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 4 workers of 8 H100s with FSDP: "8 x nvidia-h100-80gb ... 1 x nvidia-h100-80gb holds it at 8.5 GiB",
    # figures estimated at 4 workers told of one (one device holds 20.6 GiB).
    from kubefit.api.units import format_gib

    gang = with_spec(
        model={"parameters": "1B"},
        training={"sharding": "fsdp"},
        resources={"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
        workers={"replicas": 4},
    )
    code, out, err = run_main(capsys, "-f", write(tmp_path, gang), "-o", "json")
    assert code == 0, err
    printed = json.loads(out)
    (warning,) = [w for w in printed["warnings"] if "is more than this job needs" in w]
    assert warning.startswith(
        f"4 workers x 8 nvidia-h100-80gb is more than this job needs ({format_gib(printed['perDeviceBytes'])} of"
    ), warning
    smaller = json.loads(json.dumps(gang))
    smaller["spec"]["resources"]["acceleratorsPerWorker"] = 1
    _, applied, _ = run_main(capsys, "-f", write(tmp_path, smaller, "smaller.yaml"), "-o", "json")
    per_device = format_gib(json.loads(applied)["perDeviceBytes"])
    assert f": 4 workers x 1 nvidia-h100-80gb holds it at {per_device} per device; set " in warning, warning


def test_catalog_file_extends_the_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "accelerators:\n- {name: acme-x1, vendor: acme, memoryMiB: 65536, resourceName: acme.com/npu, perNode: [4]}\n"
    )
    manifest = with_spec(resources={"accelerator": "acme-x1", "acceleratorsPerWorker": 4})
    code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest), "-o", "json", "--catalog", str(catalog))
    printed = json.loads(out)
    assert (
        code == 0
        and printed["resourceName"] == "acme.com/npu"
        and printed["deviceMemoryBytes"] == 65536 * 2**20
    )


def test_multi_document_file_uses_the_training_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n" + yaml.safe_dump(LLAMA3_8B_FSDP)
    code, out, _ = run_main(capsys, "-f", write(tmp_path, text), "-o", "json")
    assert code == 0 and json.loads(out)["accelerator"] == "nvidia-a100-40gb"


# ------------------------------------------------------------------ as a subprocess


def kubefit(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubefit.cli.main", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBEFIT_CATALOG": ""},
    )


BAD_INPUTS = {
    "missing file": (None, "error: /nonexistent/job.yaml: cannot read: No such file or directory"),
    "bad YAML": ("spec: [unclosed\n", "error: <stdin>: not valid YAML"),
    "wrong kind": (
        {**LLAMA3_8B_FSDP, "kind": "Deployment"},
        "error: kind: expected TrainingJob, got 'Deployment'",
    ),
    "wrong apiVersion": (
        {**LLAMA3_8B_FSDP, "apiVersion": "kubefit.dev/v1"},
        "error: apiVersion: expected kubefit.dev/v1alpha1, got 'kubefit.dev/v1'",
    ),
    "unknown enum": (
        with_spec(training={"sharding": "zero4"}),
        "error: spec.training.sharding: Input should be 'none', 'zero1', 'zero2', 'zero3' or 'fsdp'",
    ),
    "missing model": (
        {**LLAMA3_8B_FSDP, "spec": {"template": TEMPLATE}},
        "error: spec.model: Field required",
    ),
    "model without parameters or memory": (
        with_spec(model={"precision": "bf16-mixed"}),
        "error: spec.model: one of model.parameters or model.memory is required",
    ),
    "bad parameter count": (with_spec(model={"parameters": "8 billion"}), "error: spec.model.parameters: "),
    "min above max": (
        with_spec(workers={"minReplicas": 4, "maxReplicas": 2}),
        "error: spec.workers.minReplicas: must not exceed maxReplicas (2)",
    ),
    "unknown accelerator": (
        with_spec(resources={"accelerator": "nvidia-h100-800gb"}),
        "error: spec.resources.accelerator: unknown accelerator 'nvidia-h100-800gb'; known: auto, nvidia-t4",
    ),
    "no spec": (
        {key: value for key, value in LLAMA3_8B_FSDP.items() if key != "spec"},
        "error: spec: required",
    ),
    "empty": ("", "error: <stdin>: empty; expected a TrainingJob manifest"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_naming_the_field_without_a_traceback(case: str) -> None:
    manifest, expected = BAD_INPUTS[case]
    if manifest is None:
        result = kubefit("size", "-f", "/nonexistent/job.yaml")
    else:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        result = kubefit("size", "-f", "-", "-o", "json", stdin=text)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_catalog_file_exits_2(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("accelerators:\n- {name: broken, memoryMiB: -1, resourceName: acme.com/npu}\n")
    result = kubefit("size", "-f", "-", "--catalog", str(catalog), stdin=yaml.safe_dump(LLAMA3_8B_FSDP))
    assert result.returncode == 2 and "accelerators[broken].memoryMiB" in result.stderr
    assert "Traceback" not in result.stderr


def test_subprocess_json_exit_0() -> None:
    result = kubefit("size", "-f", "-", "-o", "json", stdin=yaml.safe_dump(LLAMA3_8B_FSDP))
    assert result.returncode == 0 and result.stderr == ""
    assert set(json.loads(result.stdout)) == SIZING_KEYS


def test_help_documents_inputs_assumptions_outputs_and_exit_status() -> None:
    result = kubefit("size", "--help")
    assert result.returncode == 0
    for needle in (
        "-f JOB.yaml",
        "--catalog FILE",
        "memoryHeadroom",
        "minWorkers",
        "acceleratorsPerWorker auto",
        '{"sizing": <status.sizing>, "suggestions"',
        "exit status:",
        "2  invalid input",
    ):
        assert needle in result.stdout, needle


def test_size_does_not_import_the_operator_stack(tmp_path: Path) -> None:
    code = (
        "import sys, io, contextlib\n"
        "from kubefit.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['size', '-f', sys.argv[1], '-o', 'json'])\n"
        "print(sorted(m for m in ('kopf', 'kubernetes', 'prometheus_client') if m in sys.modules))\n"
    )
    job = write(tmp_path, LLAMA3_8B_FSDP)
    result = subprocess.run([sys.executable, "-c", code, job], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------ the shared table of bad specs


@pytest.mark.parametrize("case", BAD_SPECS, ids=lambda case: case.id)
def test_every_bad_spec_of_the_table_exits_2_naming_the_field(
    case: BadSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = {**LLAMA3_8B_FSDP, "spec": case.spec()}
    code, out, err = run_main(capsys, "-f", write(tmp_path, manifest), "-o", "json")
    assert code == 2, err
    assert out == ""
    assert f"error: {case.field}" in err, err
    assert "internal error" not in err and "Traceback" not in err


def test_metadata_that_is_not_a_mapping_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "-f", write(tmp_path, {**LLAMA3_8B_FSDP, "metadata": ["x"]}))
    assert code == 2 and "error: metadata: must be a mapping" in err, err


# ------------------------------------------------------------------ --cluster and the one sizing path


def test_offline_json_is_the_operators_sizing_after_the_clamp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # replicas 1 holds less than memory needs: the operator runs (and sizes) the clamped count, and so does
    # `kubefit size`; the planner itself sizes that count, not replicas alone (which would not fit).
    manifest = with_spec(
        resources={"accelerator": "nvidia-a100-40gb", "acceleratorsPerWorker": 1},
        workers={"replicas": 1, "minReplicas": 1, "maxReplicas": 8},
    )
    code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest), "-o", "json")
    printed = json.loads(out)
    at_replicas = plan(parse_spec(manifest["spec"]))
    needed = at_replicas.min_workers
    assert code == 0 and printed["fits"] is True and printed["minWorkers"] == needed > 1
    assert at_replicas.fits is True and printed == at_replicas.model_dump(by_alias=True, mode="json")
    operator = decide(observation(manifest, inventory=[]), load_catalog())
    assert operator.sizing is not None
    assert printed == without_cluster_warning(operator.sizing.model_dump(by_alias=True, mode="json"))
    code, table, _ = run_main(capsys, "-f", write(tmp_path, manifest))
    assert f"1 per worker x {needed} workers = {needed} devices" in table and ": fits" in table


def without_cluster_warning(sizing: dict[str, Any]) -> dict[str, Any]:
    """The operator sees an empty cluster here; offline there is no cluster to warn about."""
    warnings = [warning for warning in sizing["warnings"] if "no node in the cluster" not in warning]
    return {**sizing, "warnings": warnings}


def observation(manifest: dict[str, Any], inventory: Any, excluded: Any = ()) -> JobObservation:
    metadata = manifest["metadata"]
    return JobObservation(
        job=JobRef(metadata["name"], metadata["namespace"], "uid"),
        generation=1,
        spec=manifest["spec"],
        status={},
        pods=[],
        inventory=Inventory(list(inventory), list(excluded)),
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )


H100_LABELS = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def node(name: str, labels: dict[str, str], taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints or []},
        "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "96"}},
    }


def pod_on(node_name: str, gpus: int, namespace: str = "other", job: str | None = None) -> dict[str, Any]:
    labels = {"kubefit.dev/job": job} if job else {}
    return {
        "metadata": {"name": f"p-{node_name}-{job}", "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": "Running"},
    }


class FakeApiServer:
    """Answers GET /api/v1/nodes and /api/v1/pods from fixed lists, one object per page (so the client's
    paging is exercised), or with a fixed HTTP error, or a fixed answer (200). A unit test's stand-in for
    reading: the e2e test tests/e2e/test_size_cluster.py runs the same command against a real control plane."""

    def __init__(
        self, nodes: list[Any], pods: list[Any], error: int | None = None, answer: Any = None
    ) -> None:
        import http.server
        import threading

        lists = {"/api/v1/nodes": nodes, "/api/v1/pods": pods}
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                from urllib.parse import parse_qs, urlsplit

                requests.append(self.path)
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                if answer is not None:
                    self._send(200, answer)
                    return
                if error is not None or url.path not in lists:
                    self._send(error or 404, {"kind": "Status", "code": error or 404, "reason": "Forbidden"})
                    return
                start = int(query.get("continue", ["0"])[0])
                items = lists[url.path]
                more = {"continue": str(start + 1)} if start + 1 < len(items) else {}
                self._send(200, {"items": items[start : start + 1], "metadata": more})

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def kubeconfig(tmp_path: Path, server: str, namespace: str | None = None) -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u", **({"namespace": namespace} if namespace else {})}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "contexts": [{"name": "main", "context": context}, {"name": "other", "context": context}],
        "current-context": "main",
        "users": [{"name": "u", "user": {"token": "t"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


SMALL_AUTO = {
    "apiVersion": "kubefit.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "small", "namespace": "ml"},
    "spec": {
        "template": {"spec": {**TEMPLATE["spec"], "tolerations": [{"key": "pool", "operator": "Exists"}]}},
        "model": {"parameters": "1B"},
        "resources": {"accelerator": "auto", "acceleratorsPerWorker": "auto"},
        "workers": {"replicas": 1},
    },
}
CLUSTER_NODES = [
    node("h100-a", H100_LABELS, [{"key": "pool", "value": "x", "effect": "NoSchedule"}]),
    node("h100-b", H100_LABELS),
    node("h100-c", H100_LABELS, [{"key": "gpu-team", "value": "y", "effect": "NoSchedule"}]),  # not tolerated
    node("cpu-0", {}),
]
CLUSTER_PODS = [
    pod_on("h100-a", 8),  # another workload fills h100-a
    pod_on("h100-b", 8, namespace="ml", job="small"),  # the job's own worker: counts as free
    {**pod_on("h100-b", 8), "status": {"phase": "Succeeded"}},  # finished: holds nothing
]


def operator_sizing(manifest: dict[str, Any], nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> Any:
    """status.sizing as the operator computes it from the same nodes and pods (its kopf indexes hold
    node_facts and pod_usage of each)."""
    usage: dict[str, list[Any]] = {}
    for item in pods:
        held = pod_usage(item)
        if held is not None:
            usage.setdefault(held.node_name, []).append(held)
    placement = placement_of(template_pod_spec(manifest["spec"]))
    catalog = load_catalog()
    key = (manifest["metadata"]["namespace"], manifest["metadata"]["name"])
    inventory = build_inventory(
        [node_facts(n) for n in nodes], usage, catalog, for_job=key, placement=placement
    )
    decision = decide(observation(manifest, inventory.placeable, inventory.excluded), catalog)
    assert decision.sizing is not None
    return decision.sizing.model_dump(by_alias=True, mode="json")


@pytest.fixture
def api_server() -> Any:
    servers: list[FakeApiServer] = []

    def start(
        nodes: list[Any], pods: list[Any], error: int | None = None, answer: Any = None
    ) -> FakeApiServer:
        servers.append(FakeApiServer(nodes, pods, error, answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_cluster_json_equals_the_operators_sizing_from_the_same_nodes_and_pods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, api_server: Any
) -> None:
    server = api_server(CLUSTER_NODES, CLUSTER_PODS)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, server.url)))
    job = write(tmp_path, SMALL_AUTO)
    code, out, err = run_main(capsys, "-f", job, "--cluster", "-o", "json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed == operator_sizing(SMALL_AUTO, CLUSTER_NODES, CLUSTER_PODS)
    # The inventory decides: only H100 nodes are placeable, and h100-b is free once the job's own worker
    # counts as free. Offline the plan is another accelerator.
    assert printed["accelerator"] == "nvidia-h100-80gb"
    assert not any("not enough free" in warning for warning in printed["warnings"])
    _, offline, _ = run_main(capsys, "-f", job, "-o", "json")
    assert json.loads(offline)["accelerator"] != "nvidia-h100-80gb"
    # Every page was asked for: 4 nodes and 3 pods, one per page.
    assert sum(path.startswith("/api/v1/nodes") for path in server.requests) == 4
    assert sum(path.startswith("/api/v1/pods") for path in server.requests) == 3


def test_cluster_counts_devices_other_pods_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, api_server: Any
) -> None:
    pods = [pod_on("h100-a", 8), pod_on("h100-b", 8, namespace="ml", job="someone-else")]
    server = api_server(CLUSTER_NODES, pods)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, server.url)))
    code, out, err = run_main(capsys, "-f", write(tmp_path, SMALL_AUTO), "--cluster", "-o", "json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed == operator_sizing(SMALL_AUTO, CLUSTER_NODES, pods)
    assert any(warning.startswith("not enough free nvidia-h100-80gb now") for warning in printed["warnings"])


def test_cluster_table_says_what_the_cluster_offers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, api_server: Any
) -> None:
    server = api_server(CLUSTER_NODES, CLUSTER_PODS)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, server.url)))
    code, out, _ = run_main(capsys, "-f", write(tmp_path, SMALL_AUTO), "--cluster", "--context", "other")
    assert code == 0
    assert (
        "  cluster       2 nvidia-h100-80gb nodes the workers may use (8 of 16 devices free), 1 ruled out"
        in out
    )
    _, offline, _ = run_main(capsys, "-f", write(tmp_path, SMALL_AUTO))
    assert "  cluster       not consulted" in offline


def test_the_cluster_line_counts_the_nodes_of_the_jobs_accelerator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, api_server: Any
) -> None:
    # One free L4 node, a job pinned to nvidia-a100-40gb: "1 accelerator node the workers may use (8 of 8
    # devices free)" stood next to "no node in the cluster carries nvidia-a100-40gb".
    server = api_server([node("l4-a", {"nvidia.com/gpu.product": "NVIDIA-L4"})], [])
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, server.url)))
    code, out, err = run_main(capsys, "-f", write(tmp_path, LLAMA3_8B_FSDP), "--cluster")
    assert code == 0, err
    assert (
        "  cluster       0 nvidia-a100-40gb nodes the workers may use (0 of 0 devices free), 0 ruled out by "
        "their placement; 1 node of other accelerators\n" in out
    )
    assert "no node in the cluster carries nvidia-a100-40gb" in out


def test_a_job_without_namespace_takes_the_contexts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, api_server: Any
) -> None:
    # The job's own worker lives in "ml", the context's namespace: it counts as free.
    manifest = {**SMALL_AUTO, "metadata": {"name": "small"}}
    server = api_server(CLUSTER_NODES, CLUSTER_PODS)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, server.url, namespace="ml")))
    code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest), "--cluster", "-o", "json")
    assert code == 0 and not any("not enough free" in warning for warning in json.loads(out)["warnings"])


L4_LABELS = {"nvidia.com/gpu.product": "NVIDIA-L4"}


def test_cluster_keeps_an_auto_job_on_the_accelerator_its_running_workers_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, api_server: Any
) -> None:
    # The job's worker runs on an H100 node; an L4 node is free. The operator plans a running auto job on
    # the accelerator its workers use (decisions.job.kept_accelerator): the CLI printed nvidia-l4.
    manifest = json.loads(json.dumps(SMALL_AUTO))
    manifest["spec"]["model"] = {"parameters": "300M"}
    nodes = [node("h100-a", H100_LABELS), node("l4-a", L4_LABELS)]
    worker = pod_on("h100-a", 1, namespace="ml", job="small")
    worker["metadata"]["name"] = "small-worker-0"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, api_server(nodes, [worker]).url)))
    code, out, err = run_main(capsys, "-f", write(tmp_path, manifest), "--cluster", "-o", "json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["accelerator"] == "nvidia-h100-80gb"
    # The operator's answer for the same cluster, its workers and last status on the H100.
    usage = {"h100-a": [pod_usage(worker)]}
    catalog = load_catalog()
    inventory = build_inventory(
        [node_facts(n) for n in nodes],
        usage,
        catalog,
        for_job=("ml", "small"),
        placement=placement_of(template_pod_spec(manifest["spec"])),
    )
    running = JobObservation(
        job=JobRef("small", "ml", "uid"),
        generation=1,
        spec=manifest["spec"],
        status={"phase": "Running", "sizing": printed},
        pods=[WorkerPod("small-worker-0", 0, "pod-uid", "Running", "h100-a", controller_uid="uid")],
        inventory=inventory,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    operator = decide(running, catalog).sizing
    assert operator is not None and printed == operator.model_dump(by_alias=True, mode="json")
    # Without a live worker of its own (another job's, a finished one) the job goes where it is cheapest.
    for other in (
        pod_on("h100-a", 1, namespace="ml", job="someone"),
        {**worker, "status": {"phase": "Failed"}},
    ):
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, api_server(nodes, [other]).url)))
        code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest), "--cluster", "-o", "json")
        assert code == 0 and json.loads(out)["accelerator"] == "nvidia-l4"


def test_cluster_keeps_the_device_count_of_an_elastic_jobs_running_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, api_server: Any
) -> None:
    # Worker 0 of an elastic 13B job runs with 4 H100s; at 2 workers the planner alone would choose 2 a
    # worker. The operator keeps 4 (decisions/running_group.py), and so does the CLI.
    manifest = json.loads(json.dumps(SMALL_AUTO))
    manifest["spec"] |= {
        "model": {"parameters": "13B"},
        "training": {"sharding": "zero3"},
        "workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4},
        "elastic": {"enabled": True},
    }
    nodes = [node(f"h100-{index}", H100_LABELS) for index in range(4)]
    worker = pod_on("h100-0", 4, namespace="ml", job="small")
    worker["metadata"]["name"] = "small-worker-0"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, api_server(nodes, [worker]).url)))
    code, out, err = run_main(capsys, "-f", write(tmp_path, manifest), "--cluster", "-o", "json")
    assert code == 0, err
    assert json.loads(out)["acceleratorsPerWorker"] == 4
    # No worker of its own: planned afresh.
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, api_server(nodes, []).url)))
    code, out, err = run_main(capsys, "-f", write(tmp_path, manifest), "--cluster", "-o", "json")
    assert code == 0 and json.loads(out)["acceleratorsPerWorker"] == 2


def test_host_offload_memory_is_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = with_spec(training={"sharding": "zero2", "offload": "optimizer"})
    code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest))
    assert code == 0 and "per worker of offloaded state" in out
    _, plain, _ = run_main(capsys, "-f", write(tmp_path, LLAMA3_8B_FSDP))
    assert "offloaded state" not in plain


def kubefit_with(kubeconfig_path: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubefit.cli.main", *argv],
        input=yaml.safe_dump(SMALL_AUTO),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBEFIT_CATALOG": "", "KUBECONFIG": kubeconfig_path},
    )


def test_an_unreachable_cluster_exits_3_naming_the_server_and_kubeconfig(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = str(kubeconfig(tmp_path, f"https://127.0.0.1:{port}"))
    result = kubefit_with(path, "size", "-f", "-", "--cluster", "-o", "json")
    assert result.returncode == 3 and result.stdout == ""
    assert f"error: --cluster: cannot reach the cluster at https://127.0.0.1:{port} (kubeconfig {path})" in (
        result.stderr
    )
    assert "Connection refused" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_kubeconfig_or_context_exits_3_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent")
    result = kubefit_with(missing, "size", "-f", "-", "--cluster")
    assert (
        result.returncode == 3 and f"error: --cluster: cannot read the kubeconfig {missing}" in result.stderr
    )
    malformed = tmp_path / "malformed"
    malformed.write_text("clusters: [\n")  # a YAML error: it was "internal error", exit 1
    result = kubefit_with(str(malformed), "size", "-f", "-", "--cluster")
    assert result.returncode == 3 and len(result.stderr.splitlines()) == 1
    assert f"error: --cluster: cannot read the kubeconfig {malformed}: while parsing" in result.stderr
    path = str(kubeconfig(tmp_path, "https://127.0.0.1:1"))
    result = kubefit_with(path, "size", "-f", "-", "--cluster", "--context", "nope")
    assert result.returncode == 3
    assert f"error: --cluster: cannot read the kubeconfig {path}, context 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_forbidden_listing_exits_3_naming_the_access_needed(tmp_path: Path, api_server: Any) -> None:
    server = api_server([], [], error=403)
    result = kubefit_with(str(kubeconfig(tmp_path, server.url)), "size", "-f", "-", "--cluster")
    assert result.returncode == 3, result.stderr
    assert f"the cluster at {server.url} refused to list nodes: HTTP 403" in result.stderr
    assert "needs list on nodes and on pods in all namespaces" in result.stderr


@pytest.mark.parametrize(
    ("nodes", "answer"),
    [
        ([], []),  # JSON, but no list object: was "internal error (AttributeError ...)", exit 1
        ([], {"kind": "Status"}),
        ([], {"items": 5}),
        ([], {"items": [], "metadata": []}),
        ([None], None),  # an item null or no object: was "internal error", exit 1
        ([5], None),
        (["node"], None),
        ([[]], None),
    ],
)
def test_a_listing_that_is_not_a_kubernetes_list_exits_3(
    nodes: list[Any],
    answer: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    api_server: Any,
) -> None:
    server = api_server(nodes, [], answer=answer)
    path = str(kubeconfig(tmp_path, server.url))
    monkeypatch.setenv("KUBECONFIG", path)
    code, out, err = run_main(capsys, "-f", write(tmp_path, SMALL_AUTO), "--cluster")
    assert (code, out) == (3, ""), err
    assert err == (
        f"error: --cluster: cannot list nodes from the cluster at {server.url} (kubeconfig {path}): the answer "
        "is not a Kubernetes list\n"
    )


@pytest.mark.parametrize(
    ("nodes", "pods", "named"),
    [
        ([{**node("h100-a", H100_LABELS), "status": "x"}], [], "node 'h100-a'"),
        ([{**node("h100-a", H100_LABELS), "spec": "x"}], [], "node 'h100-a'"),
        ([{"metadata": "x"}], [], "a node without a name"),
        ([{**node("h100-a", H100_LABELS), "metadata": {"name": ["h100-a"]}}], [], "a node without a name"),
        (CLUSTER_NODES, [{**pod_on("h100-a", 8), "spec": {"nodeName": ["h100-a"]}}], "pod 'p-h100-a-None'"),
        (CLUSTER_NODES, [{**pod_on("h100-a", 8), "spec": "x"}], "pod 'p-h100-a-None'"),
        (CLUSTER_NODES, [{**pod_on("h100-a", 8), "spec": {"nodeName": "h100-a", "containers": [5]}}], "pod "),
        (
            CLUSTER_NODES,
            [
                {
                    "metadata": {
                        **pod_on("h100-b", 8, "ml", "small")["metadata"],
                        "name": "small-worker-0",
                        "annotations": "x",
                    }
                }
            ],
            "pod 'small-worker-0'",
        ),
    ],
)
def test_a_listed_object_of_the_wrong_shape_exits_3_naming_it(
    nodes: list[Any],
    pods: list[Any],
    named: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    api_server: Any,
) -> None:
    # A field that should be an object is a string or a number: it was "internal error", exit 1.
    server = api_server(nodes, pods)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, server.url)))
    code, out, err = run_main(capsys, "-f", write(tmp_path, SMALL_AUTO), "--cluster", "-o", "json")
    assert (code, out) == (3, ""), err
    assert err.startswith(f"error: --cluster: cannot read {named}") and len(err.splitlines()) == 1, err
    assert f"from the cluster at {server.url}" in err and "a field has the wrong type" in err


def test_an_empty_listing_written_as_null_items_is_an_empty_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, api_server: Any
) -> None:
    server = api_server([], [], answer={"kind": "List", "items": None, "metadata": {}})  # Go's nil slice
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, server.url)))
    code, _, err = run_main(capsys, "-f", write(tmp_path, SMALL_AUTO), "--cluster", "-o", "json")
    assert code == 0 and "internal error" not in err, err


def test_context_without_cluster_is_invalid_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "-f", write(tmp_path, LLAMA3_8B_FSDP), "--context", "main")
    assert code == 2 and out == "" and "error: --context: only used with --cluster" in err


def test_the_table_says_no_worker_starts_when_memory_needs_more_workers_than_allowed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Llama 2 70B with zero3 and full recompute fits on 3 workers of 8 H100s; replicas: 2 allows 2, so the
    # operator starts none (TooFewWorkers): "fits" alone misled.
    manifest = {
        "apiVersion": "kubefit.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "r1"},
        "spec": {
            "template": TEMPLATE,
            "model": LLAMA2_70B,
            "training": {
                "microBatchSize": 2,
                "sequenceLength": 4096,
                "sharding": "zero3",
                "activationCheckpointing": "full",
            },
            "resources": {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8},
            "workers": {"replicas": 2},
        },
    }
    code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest))
    assert code == 0
    assert "no worker starts (TooFewWorkers" in out and "more than the spec allows (2)" in out
    # Judged at the 2 workers allowed, where it does not fit; the JSON's fits says so too (the Fits column).
    assert "8 per worker x 2 workers = 16 devices" in out and ": DOES NOT FIT; no worker starts" in out
    code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest), "-o", "json")
    assert code == 0
    printed = json.loads(out)
    assert (printed["fits"], printed["minWorkers"]) == (False, 3)


# ------------------------------------------------------------------ review findings: what the operator refuses


def fqdn_job(name: str, namespace: str | None) -> dict[str, Any]:
    manifest = json.loads(json.dumps(LLAMA3_8B_FSDP))
    manifest["metadata"] = {"name": name, **({"namespace": namespace} if namespace else {})}
    manifest["spec"]["template"] = {"spec": {**TEMPLATE["spec"], "setHostnameAsFQDN": True}}
    return manifest


def test_a_worker_fqdn_too_long_for_the_kubelet_is_refused_as_the_operator_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, api_server: Any
) -> None:
    # setHostnameAsFQDN, a 30-character name in team-ml: the operator and the webhook refuse it
    # (metadata.name), `kubefit size` exited 0.
    long_name = "a" * 30
    code, out, err = run_main(capsys, "-f", write(tmp_path, fqdn_job(long_name, "team-ml")))
    assert code == 2 and out == "", err
    assert err.startswith("error: metadata.name: with spec.template.spec.setHostnameAsFQDN, worker FQDN ")
    assert f"'{long_name}-worker-1.{long_name}.team-ml.svc.cluster.local' is 96 characters" in err
    code, _, err = run_main(
        capsys, "-f", write(tmp_path, fqdn_job(long_name, "team-ml")), "--cluster-domain", "c.io"
    )
    assert code == 2 and ".team-ml.svc.c.io' is 87 characters" in err
    assert run_main(capsys, "-f", write(tmp_path, fqdn_job("short", "team-ml")))[0] == 0
    # No namespace, nothing to check offline; with --cluster the context's namespace is the job's, and the
    # job is refused before the cluster is listed.
    assert run_main(capsys, "-f", write(tmp_path, fqdn_job(long_name, None)))[0] == 0
    server = api_server([], [])
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, server.url, namespace="team-ml")))
    code, _, err = run_main(capsys, "-f", write(tmp_path, fqdn_job(long_name, None)), "--cluster")
    assert code == 2 and ".team-ml.svc.cluster.local' is 96 characters" in err, err
    assert server.requests == []


def test_the_cluster_domain_defaults_to_the_operators() -> None:
    import argparse

    from kubefit.cli.size import register
    from kubefit.decisions.job import DEFAULT_CLUSTER_DOMAIN

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["size", "-f", "x"]).cluster_domain == DEFAULT_CLUSTER_DOMAIN
    assert parser.parse_args(["size", "-f", "x", "--cluster-domain", "corp.example."]).cluster_domain == (
        "corp.example"
    )


def test_an_invalid_spec_is_named_before_the_cluster_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # It exited 3 "cannot reach the cluster" where the spec alone was at fault.
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, f"http://127.0.0.1:{port}")))
    # Rules beyond the schema: the operator's worker limit, an accelerator no catalog lists.
    invalid = with_spec(workers={"replicas": 2000})
    code, out, err = run_main(capsys, "-f", write(tmp_path, invalid), "--cluster")
    assert code == 2 and out == ""
    assert err.startswith("error: spec.workers.replicas: 2000 workers exceed this operator's limit"), err
    invalid = with_spec(resources={"accelerator": "nvidia-h100-800gb"})
    code, _, err = run_main(capsys, "-f", write(tmp_path, invalid), "--cluster")
    assert code == 2 and err.startswith("error: spec.resources.accelerator: unknown accelerator"), err
    code, _, err = run_main(capsys, "-f", write(tmp_path, LLAMA3_8B_FSDP), "--cluster")
    assert code == 3 and "cannot reach the cluster" in err  # a valid one still needs the cluster


def test_a_schema_error_does_not_hide_the_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = with_spec(workers={"replicas": -1})
    manifest["metadata"]["name"] = "Bad_Name"
    code, _, err = run_main(capsys, "-f", write(tmp_path, manifest))
    lines = err.splitlines()
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith("error: spec.workers.replicas: ")
    assert lines[1].startswith("error: metadata.name: must be a DNS label")


def test_a_name_that_is_not_a_string_is_refused_and_an_absent_one_is_unnamed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `name: 12345` skipped the name's checks (exit 0) though the API server refuses it; `name:` (null)
    # titled the table "TrainingJob ml/None".
    numbered = json.loads(json.dumps(LLAMA3_8B_FSDP))
    numbered["metadata"]["name"] = 12345
    code, out, err = run_main(capsys, "-f", write(tmp_path, numbered))
    assert (code, out, err) == (2, "", "error: metadata.name: must be a string, got int 12345\n")
    numbered["spec"]["workers"] = {"replicas": -1}  # with the spec's errors, in one answer
    code, _, err = run_main(capsys, "-f", write(tmp_path, numbered))
    assert code == 2 and err.startswith("error: metadata.name: must be a string, got int 12345\n")
    assert "error: spec.workers.replicas: " in err
    unnamed = json.loads(json.dumps(LLAMA3_8B_FSDP))
    unnamed["metadata"]["name"] = None
    code, out, _ = run_main(capsys, "-f", write(tmp_path, unnamed))
    assert code == 0 and out.startswith("TrainingJob ml/(unnamed)\n")
    listed = json.loads(json.dumps(LLAMA3_8B_FSDP))
    listed["metadata"]["namespace"] = ["ml"]
    code, _, err = run_main(capsys, "-f", write(tmp_path, listed))
    assert code == 2 and "error: metadata.namespace: must be a string, got list ['ml']" in err


def test_a_catalog_past_its_size_bound_is_one_line_exit_2_without_reading_it_whole() -> None:
    # --catalog /dev/zero (or $KUBEFIT_CATALOG naming it) read until the machine ran out of memory.
    result = kubefit("size", "-f", "-", "--catalog", "/dev/zero", stdin=yaml.safe_dump(LLAMA3_8B_FSDP))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: /dev/zero: larger than 1 MiB (expected a YAML catalog)\n"


def test_a_catalog_that_is_not_utf8_or_not_yaml_is_one_line_exit_2(tmp_path: Path) -> None:
    # A UTF-16 catalog was an internal error (exit 1); a YAML error printed across five lines.
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("accelerators: []\n".encode("utf-16"))
    result = kubefit("size", "-f", "-", "--catalog", str(utf16), stdin=yaml.safe_dump(LLAMA3_8B_FSDP))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: {utf16}: not UTF-8 text (expected a YAML catalog)\n"
    broken = tmp_path / "broken.yaml"
    broken.write_text("accelerators: [\n")
    result = kubefit("size", "-f", "-", "--catalog", str(broken), stdin=yaml.safe_dump(LLAMA3_8B_FSDP))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {broken}: not valid YAML (line 2, column 1): ")


def test_standard_input_that_is_not_utf8_exits_2() -> None:
    # The stream's own strict decoding raised UnicodeDecodeError: an internal error, exit 1.
    result = subprocess.run(
        [sys.executable, "-m", "kubefit.cli.main", "size", "-f", "-"],
        input=b"kind: \xff\n",
        capture_output=True,
        timeout=60,
        env={**os.environ, "KUBEFIT_CATALOG": "", "PYTHONIOENCODING": "utf-8:strict"},
    )
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr == b"error: <stdin>: not UTF-8 or UTF-16 text (expected a YAML manifest)\n"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-8-sig"])
def test_a_manifest_with_a_byte_order_mark_is_read_as_kubectl_apply_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], encoding: str
) -> None:
    # Windows PowerShell's `>` writes UTF-16 with a mark; kubectl apply reads it, kubefit size refused it.
    manifest = tmp_path / "job.yaml"
    text = yaml.safe_dump(LLAMA3_8B_FSDP)
    manifest.write_bytes((("\ufeff" if encoding == "utf-16-le" else "") + text).encode(encoding))
    code, out, err = run_main(capsys, "-f", str(manifest), "-o", "json")
    assert code == 0, err
    code, expected, _ = run_main(capsys, "-f", write(tmp_path, LLAMA3_8B_FSDP, "plain.yaml"), "-o", "json")
    assert code == 0 and out == expected
    result = subprocess.run(
        [sys.executable, "-m", "kubefit.cli.main", "size", "-f", "-", "-o", "json"],
        input=manifest.read_bytes(),
        capture_output=True,
        timeout=60,
        env={**os.environ, "KUBEFIT_CATALOG": ""},
    )
    assert (result.returncode, result.stdout.decode()) == (0, expected), result.stderr


@pytest.mark.parametrize(
    ("encoding", "refusal"),
    [
        # UTF-32's mark starts with UTF-16-LE's: read as UTF-16 it failed as YAML on NUL characters (a review).
        ("utf-32", "not a text file (expected a YAML manifest)"),
        # No mark: read as UTF-8, whose NUL characters YAML refuses.
        ("utf-16-le", "not valid YAML: unacceptable character #x0000"),
    ],
)
def test_a_manifest_in_another_encoding_is_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], encoding: str, refusal: str
) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_bytes(yaml.safe_dump(LLAMA3_8B_FSDP).encode(encoding))
    code, out, err = run_main(capsys, "-f", str(manifest))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {manifest}: {refusal}"), err


def test_a_context_named_needs_no_current_context(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, api_server: Any
) -> None:
    # kubectl --context needs no current-context; --cluster --context failed "Expected key current-context".
    server = api_server(CLUSTER_NODES, CLUSTER_PODS)
    path = kubeconfig(tmp_path, server.url, namespace="ml")
    config = yaml.safe_load(path.read_text())
    del config["current-context"]
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    manifest = {**SMALL_AUTO, "metadata": {"name": "small"}}  # its namespace: the context's
    code, out, err = run_main(
        capsys, "-f", write(tmp_path, manifest), "--cluster", "--context", "main", "-o", "json"
    )
    assert code == 0, err
    assert json.loads(out) == operator_sizing(SMALL_AUTO, CLUSTER_NODES, CLUSTER_PODS)
    code, _, err = run_main(capsys, "-f", write(tmp_path, manifest), "--cluster")
    assert code == 3 and "current-context" in err  # none named, none current: kubectl fails too


def test_a_manifest_kubectl_stores_is_sized_empty_keys_and_exponent_numbers_included(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The API server drops a null field before defaulting, and kubectl reads 1e-1 as a number; PyYAML's
    # YAML 1.1 made it a string, and an empty key a null: both exited 2 for a manifest kubectl applies.
    text = yaml.safe_dump(LLAMA3_8B_FSDP).replace("  training:\n", "  framework:\n  training:\n")
    text += "  runPolicy:\n"
    text = text.replace("resources:\n", "resources:\n    memoryHeadroom: 1e-1\n", 1)
    assert "memoryHeadroom: 1e-1" in text and "  framework:\n" in text
    code, out, err = run_main(capsys, "-f", write(tmp_path, text), "-o", "json")
    assert code == 0, err
    plain = json.loads(run_main(capsys, "-f", write(tmp_path, LLAMA3_8B_FSDP, "plain.yaml"), "-o", "json")[1])
    assert json.loads(out) == plain  # headroom 0.1 is the default; an empty key is no key
    # Quoted, it is a string, as kubectl reads it too, and named as such.
    quoted = text.replace("memoryHeadroom: 1e-1", "memoryHeadroom: '1e-1'")
    code, _, err = run_main(capsys, "-f", write(tmp_path, quoted, "quoted.yaml"))
    assert code == 2 and "memoryHeadroom" in err


def test_aliases_that_expand_past_the_limit_are_refused_and_ordinary_ones_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A few hundred bytes of nested aliases stand for a million nodes: refused at once, not walked.
    levels = "".join(f"  l{i}: &l{i} {{x: *l{i - 1}, y: *l{i - 1}}}\n" for i in range(1, 21))
    bomb = (
        "apiVersion: kubefit.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: job}\n"
        f"x:\n  l0: &l0 {{a: 1, b: 2}}\n{levels}"
        "spec:\n  template: {spec: {containers: [{name: trainer, image: x}]}}\n"
        "  model: {parameters: 1B}\n  training: {extra: *l20}\n"
    )
    code, _, err = run_main(capsys, "-f", write(tmp_path, bomb))
    assert code == 2 and "aliases expand to more than 100,000 nodes" in err
    # An anchor reused as people do (one container's env for another) is read as written.
    shared = (
        "apiVersion: kubefit.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: job}\nspec:\n"
        "  template: {spec: {containers: [{name: trainer, image: x, env: &env [{name: A, value: '1'}]},"
        " {name: side, image: z, env: *env}]}}\n"
        "  model: {parameters: 1B}\n"
    )
    assert run_main(capsys, "-f", write(tmp_path, shared))[0] == 0


def test_base_60_stays_the_string_kubectl_reads_and_go_integer_prefixes_are_integers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # kubectl's parser (sigs.k8s.io/yaml, goyaml.v2) reads `1:30` as the string "1:30", which the API server
    # refuses for an integer; PyYAML's YAML 1.1 read 90 (base 60) and sized 90 workers.
    text = yaml.safe_dump(with_spec(workers={"replicas": 1}))
    assert "    replicas: 1\n" in text
    code, _, err = run_main(
        capsys, "-f", write(tmp_path, text.replace("    replicas: 1\n", "    replicas: 1:30\n"))
    )
    assert code == 2 and "spec.workers.replicas" in err, err
    # What Go's strconv.ParseInt(s, 0, 64) reads is the integer kubectl stores: sized as the plain 2 is.
    plain = run_main(
        capsys, "-f", write(tmp_path, text.replace("replicas: 1\n", "replicas: 2\n")), "-o", "json"
    )
    assert plain[0] == 0, plain[2]
    for written in ("0b10", "0B10", "0o2", "0O2", "02", "0x2", "0X2", "0_x2", "+2", "2_"):
        manifest = write(tmp_path, text.replace("replicas: 1\n", f"replicas: {written}\n"), f"{written}.yaml")
        assert run_main(capsys, "-f", manifest, "-o", "json") == plain, written


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("1:30", "1:30"),
        ("-1:30", "-1:30"),
        ("1:30.5", "1:30.5"),  # a base-60 float too
        ("0x1F", 31),
        ("-0x1F", -31),
        ("0o17", 15),
        ("017", 15),
        ("0b101", 5),
        ("1_000", 1000),
        ("12", 12),
        ("0", 0),
        ("1e-1", 0.1),
        ("1.5", 1.5),
        # kubectl sends JSON written by Go's encoding/json: a whole float64 as an integer (2.0 as `2`), which
        # the API server reads as an int64; from 1e21 an exponent, and past int64 a float either way.
        ("2.0", 2),
        ("-0.0", 0),
        ("7.0e9", 7_000_000_000),
        ("1e3", 1000),
        ("-9223372036854775808.0", -(2**63)),
        ("9.2e18", 9_200_000_000_000_000_000),
        ("1e19", 1e19),
        ("1e21", 1e21),
        ("2.5e0", 2.5),
        # Not numbers, read as goyaml.v2 reads them too: PyYAML made a date a datetime.date, could not
        # construct `=`, and took y and n for strings.
        ("2024-01-01", "2024-01-01"),
        ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z"),
        ("=", "="),
        ("y", True),
        ("Y", True),
        ("n", False),
        ("N", False),
        ("yes", True),
        ("Off", False),
    ],
)
def test_numbers_are_read_as_kubectl_reads_them(written: str, read: Any) -> None:
    from kubefit.cli.size import load_training_job

    text = f"apiVersion: kubefit.dev/v1alpha1\nkind: TrainingJob\nspec: {{value: {written}}}\n"
    value = load_training_job(text, "job.yaml")["spec"]["value"]
    assert value == read and type(value) is type(read)


def test_keys_that_read_as_booleans_or_numbers_are_strings_as_kubectl_sends_them() -> None:
    """sigs.k8s.io/yaml writes every mapping key as a JSON string; PyYAML kept `on:` a bool (and `1:` an int,
    the same dict key as True), which the spec's string maps refused."""
    from kubefit.cli.size import load_training_job

    text = "apiVersion: kubefit.dev/v1alpha1\nkind: TrainingJob\nspec: {value: {on: a, 1: b, n: c, 2.5: d, k: e}}\n"
    value = load_training_job(text, "job.yaml")["spec"]["value"]
    assert value == {"true": "a", "1": "b", "false": "c", "2.5": "d", "k": "e"}


def test_whole_floats_are_the_integers_kubectl_sends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `replicas: 2.0` reaches the API server as 2 (kubectl's JSON): it was refused, "Input should be a valid
    # integer", exit 2. JSON input goes through the same loader.
    whole = with_spec(
        training={**LLAMA3_8B_FSDP["spec"]["training"], "microBatchSize": 4},
        workers={"replicas": 2},
        elastic={"enabled": True, "checkpointGracePeriodSeconds": 60},
        resources={**LLAMA3_8B_FSDP["spec"]["resources"], "memoryHeadroom": 0},
    )
    as_floats = json.loads(json.dumps(whole))
    as_floats["spec"]["training"]["microBatchSize"] = 4.0
    as_floats["spec"]["workers"]["replicas"] = 2.0
    as_floats["spec"]["elastic"]["checkpointGracePeriodSeconds"] = 60.0
    as_floats["spec"]["resources"]["memoryHeadroom"] = 0.0  # a float field: an int is taken too
    expected = run_main(capsys, "-f", write(tmp_path, whole), "-o", "json")
    assert expected[0] == 0, expected[2]
    for name, text in (("job.yaml", yaml.safe_dump(as_floats)), ("job.json", json.dumps(as_floats))):
        assert "2.0" in text and "60.0" in text
        assert run_main(capsys, "-f", write(tmp_path, text, name), "-o", "json") == expected, name
    parameters = with_spec(model={**LLAMA3_8B, "parameters": 8.03e9})
    code, out, err = run_main(capsys, "-f", write(tmp_path, parameters), "-o", "json")
    assert code == 0 and out == run_main(capsys, "-f", write(tmp_path, with_spec()), "-o", "json")[1], err


def test_a_dated_value_an_equals_sign_and_y_are_read_as_kubectl_reads_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # kubectl stores `value: 2024-01-01` as a string and `enabled: y` as true: exit 2 here, "Input should be
    # a valid string" and "a valid boolean"; an `=` argument was "not valid YAML".
    manifest = with_spec(elastic={"enabled": True})
    manifest["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "SINCE", "value": "2024-01-01"}]
    manifest["spec"]["template"]["spec"]["containers"][0]["args"] = ["--sep", "="]
    expected = run_main(capsys, "-f", write(tmp_path, manifest), "-o", "json")
    assert expected[0] == 0, expected[2]
    text = yaml.safe_dump(manifest).replace("'2024-01-01'", "2024-01-01").replace("- '='", "- =")
    text = text.replace("enabled: true", "enabled: y")
    assert "value: 2024-01-01\n" in text and "- =\n" in text and "enabled: y\n" in text
    assert run_main(capsys, "-f", write(tmp_path, text, "plain.yaml"), "-o", "json") == expected


def test_tab_indented_json_is_read_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # kubectl decodes JSON as JSON; PyYAML refused a tab-indented file, "not valid YAML", exit 2.
    quickstart = str(REPO / "examples" / "quickstart.yaml")
    expected = run_main(capsys, "-f", quickstart, "-o", "json")
    assert expected[0] == 0, expected[2]
    text = json.dumps(yaml.safe_load(Path(quickstart).read_text()), indent="\t")
    assert '\n\t\t"' in text
    assert run_main(capsys, "-f", write(tmp_path, text, "job.json"), "-o", "json") == expected
    # JSON then `---` and YAML is a stream kubectl reads too.
    stream = write(tmp_path, f"{text}\n---\napiVersion: v1\nkind: ConfigMap\n", "stream.json")
    assert run_main(capsys, "-f", stream, "-o", "json") == expected
    broken = write(tmp_path, text.replace('"spec": {', '"spec": {,', 1), "broken.json")
    code, out, err = run_main(capsys, "-f", broken, "-o", "json")
    problem = "Expecting property name enclosed in double quotes"
    assert (code, out, err) == (2, "", f"error: {broken}: not valid JSON (line 7, column 11): {problem}\n")


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_a_manifest_nested_too_deeply_is_invalid_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # PyYAML's composer (and json) recurse per level: a RecursionError was an internal error, exit 1.
    deep = "[" * 1000 + "]" * 1000
    job = {
        "yaml": f"apiVersion: kubefit.dev/v1alpha1\nkind: TrainingJob\nspec:\n  x: {deep}\n",
        "json": f'{{"apiVersion": "kubefit.dev/v1alpha1", "kind": "TrainingJob", "spec": {{"x": {deep}}}}}',
    }
    path = write(tmp_path, job[suffix], f"deep.{suffix}")
    code, out, err = run_main(capsys, "-f", path)
    assert (code, out, err) == (2, "", f"error: {path}: nested too deeply to read\n")


def test_the_table_says_a_layout_that_does_not_fit_starts_anyway_under_fit_policy_warn(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = json.loads(json.dumps(LLAMA3_8B_FSDP))
    manifest["spec"]["model"]["parameters"] = "1T"
    manifest["spec"]["training"]["sharding"] = "none"  # no worker count fits: the bounds are not at fault
    manifest["spec"]["resources"] = {"accelerator": "nvidia-h100-80gb", "acceleratorsPerWorker": 8}
    code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest))
    assert code == 0 and ": DOES NOT FIT\n" in out and "fitPolicy" not in out
    manifest["spec"]["resources"]["fitPolicy"] = "Warn"
    code, out, _ = run_main(capsys, "-f", write(tmp_path, manifest))
    assert code == 0 and ": DOES NOT FIT (fitPolicy Warn: the workers start anyway)" in out


def test_template_fields_left_empty_are_dropped_as_the_api_server_drops_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The API server drops a null wherever the CRD types the field, inside the pod template too (map values
    # and list items included): `limits:` with only a comment, an empty env value or label value was exit 2
    # here ("resources.limits: Input should be a valid dictionary") for a job the cluster takes and runs.
    manifest = json.loads(json.dumps(LLAMA3_8B_FSDP))
    expected = run_main(capsys, "-f", write(tmp_path, manifest), "-o", "json")
    assert expected[0] == 0, expected[2]
    text = yaml.safe_dump(manifest).replace(
        "  template:\n    spec:\n      containers:\n      - image: example/train:1\n",
        "  template:\n    metadata:\n      labels:\n        team:\n    spec:\n      containers:\n"
        "      - image: example/train:1\n        resources:\n          limits:\n"
        "            # nvidia.com/gpu: 8   (the operator sets it)\n"
        "        env:\n        - name: EXTRA_ARGS\n          value:\n",
    )
    assert "team:\n" in text and "limits:\n" in text and "value:\n" in text
    assert run_main(capsys, "-f", write(tmp_path, text, "empty.yaml"), "-o", "json") == expected


def test_a_null_under_a_key_the_crd_does_not_name_is_kept() -> None:
    from kubefit.cli.size import load_training_job

    text = (
        "apiVersion: kubefit.dev/v1alpha1\nkind: TrainingJob\nspec:\n  training:\n  template:\n"
        "    spec:\n      priorityClassName:\n      containers:\n      - name: trainer\n"
        "        securityContext: {runAsUser: }\n        image:\n"
    )
    spec = load_training_job(text, "job.yaml")["spec"]
    assert spec == {
        "template": {
            "spec": {
                "priorityClassName": None,
                "containers": [{"name": "trainer", "securityContext": {"runAsUser": None}}],
            }
        }
    }


def test_a_kind_list_is_read_as_its_items_as_kubectl_reads_it() -> None:
    # `kubectl get trainingjob llama -o yaml` of a selector gives a List: it was refused ("got 'List'").
    from kubefit.cli.size import InvalidInput, load_training_job

    job = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    listed = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [job]})
    assert load_training_job(listed, "jobs.yaml")["metadata"]["name"] == "quickstart"
    with pytest.raises(InvalidInput, match="holds 2 TrainingJob documents; size one at a time"):
        load_training_job(yaml.safe_dump({"kind": "List", "items": [job, job]}), "jobs.yaml")
    with pytest.raises(InvalidInput, match="empty; expected a TrainingJob manifest"):
        load_training_job(yaml.safe_dump({"kind": "List", "items": []}), "jobs.yaml")
