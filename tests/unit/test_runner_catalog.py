"""The catalog the operator starts with (controller/runner.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubefit.controller import runner


def test_the_operator_refuses_a_catalog_entry_that_identifies_no_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kubefit size` sizes for an entry with no labels; the operator could never place its workers, and a
    job naming it could never be placed, so it refuses to start, naming the entry, as the chart does."""
    entry = "accelerators: [{name: lab-gpu, memoryMiB: 24576, resourceName: example.com/gpu%s}]\n"
    monkeypatch.delenv("KUBEFIT_CATALOG", raising=False)
    bare = tmp_path / "bare.yaml"
    bare.write_text(entry % "")
    with pytest.raises(runner.StartupError, match=r"--catalog: accelerators\[lab-gpu\] has neither match"):
        runner._catalog(str(bare))
    monkeypatch.setenv("KUBEFIT_CATALOG", str(bare))
    with pytest.raises(runner.StartupError, match=r"^\$KUBEFIT_CATALOG: accelerators\[lab-gpu\]"):
        runner._catalog(None)
    labelled = tmp_path / "labelled.yaml"
    labelled.write_text(entry % ", nodeLabels: {example.com/gpu.product: lab}")
    assert "lab-gpu" in runner._catalog(str(labelled)).names()
