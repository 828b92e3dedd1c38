"""trainingjob.yaml made runnable on the sandbox's process mode (docs/sandbox.md): prints it as JSON.

    python examples/elastic-ddp/sandbox_manifest.py | kubefit-sandbox kubectl -- apply -f -

On a cluster the image holds train.py at /workspace and a ReadWriteMany volume is mounted at /checkpoints.
Process pods have no image and no volumes: the command runs this checkout's train.py, and every worker
shares a checkpoint directory on this machine's disk.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
IMAGE_DIR = "/workspace"
# The label and taint key of the sandbox's `processes: true` nodes (kubefit_sandbox.cluster.PROCESSES_LABEL):
# simulated nodes would only pretend to run the workers.
PROCESSES_LABEL = "kubefit.dev/sandbox-processes"


def sandbox_manifest(checkpoint_dir: str | Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The example job with its command pointed at this checkout, its checkpoints at checkpoint_dir, no
    volumes, only process nodes, and `env` overriding the container's variables (e.g. TOTAL_STEPS)."""
    manifest = yaml.safe_load((HERE / "trainingjob.yaml").read_text())
    pod_spec = manifest["spec"]["template"]["spec"]
    pod_spec.pop("volumes", None)
    pod_spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), PROCESSES_LABEL: "true"}
    toleration = {"key": PROCESSES_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    pod_spec["tolerations"] = [*(pod_spec.get("tolerations") or []), toleration]
    container = pod_spec["containers"][0]
    container.pop("volumeMounts", None)
    container["command"] = [part.replace(IMAGE_DIR, str(HERE)) for part in container["command"]]
    values = {item["name"]: item["value"] for item in container.get("env", [])}
    values |= {"CHECKPOINT_DIR": str(checkpoint_dir), **(env or {})}
    container["env"] = [{"name": name, "value": value} for name, value in values.items()]
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--checkpoint-dir", default=str(Path.cwd() / ".elastic-ddp-checkpoints"))
    args = parser.parse_args()
    print(json.dumps(sandbox_manifest(Path(args.checkpoint_dir).resolve()), indent=2))


if __name__ == "__main__":
    main()
