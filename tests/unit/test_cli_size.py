"""`kubefit size`: outputs, exit codes and error messages, in-process and as a real subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from bad_specs import BAD_SPECS, BadSpec
from sizing_inputs import LLAMA3_8B, SIZING_KEYS, TEMPLATE

from kubefit.api.validation import parse_spec
from kubefit.cli.main import main
from kubefit.sizing.planner import plan

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


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump(LLAMA3_8B_FSDP)))
    code, out, _ = run_main(capsys, "-f", "-", "-o", "json")
    assert code == 0 and json.loads(out)["accelerator"] == "nvidia-a100-40gb"


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
        "error: spec.workers: minReplicas must not exceed maxReplicas",
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
