"""Inputs shared by the sizing tests: a worker template, real model shapes, and a spec builder."""

from __future__ import annotations

from typing import Any

from kubefit.api.models import TrainingJobSpec
from kubefit.api.validation import parse_spec

TEMPLATE = {"spec": {"containers": [{"name": "trainer", "image": "example/train:1"}]}}
LLAMA3_8B = {  # meta-llama/Meta-Llama-3-8B config.json
    "parameters": "8.03B",
    "architecture": {
        "layers": 32,
        "hiddenSize": 4096,
        "attentionHeads": 32,
        "kvHeads": 8,
        "intermediateSize": 14336,
        "vocabSize": 128256,
    },
}
LLAMA2_70B = {  # meta-llama/Llama-2-70b-hf config.json
    "parameters": "69B",
    "architecture": {
        "layers": 80,
        "hiddenSize": 8192,
        "attentionHeads": 64,
        "kvHeads": 8,
        "intermediateSize": 28672,
        "vocabSize": 32000,
    },
}
# The keys of status.sizing, as the API contract lists them (kubefit size -o json prints exactly these).
SIZING_KEYS = {
    "accelerator",
    "resourceName",
    "deviceMemoryBytes",
    "acceleratorsPerWorker",
    "minWorkers",
    "perDeviceBytes",
    "fits",
    "breakdown",
    "warnings",
}


def make_spec(**sections: Any) -> TrainingJobSpec:
    """A 1B-parameter spec with the given top-level sections replaced."""
    raw: dict[str, Any] = {"template": TEMPLATE, "model": {"parameters": "1B"}}
    raw.update(sections)
    return parse_spec(raw)
