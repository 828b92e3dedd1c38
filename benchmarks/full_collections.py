"""Full garbage collections over an operator-like heap: as `kubefit run` sets the collector, against Python's
collector with only the imports frozen, in the same run.

The heap: node and pod bodies as a watch parses them (JSON objects with labels, managed fields and
conditions), held in dicts as kopf's indexes hold them. Before each full collection a share of the nodes get
new bodies (heartbeats and label changes replace a node's object). Each setting runs in a fresh interpreter
(the collector's state is process-wide), and the CPU time of each `gc.collect()` is printed; the first
walks everything in both settings, the later ones show what freezing after each full collection leaves
(controller/garbage_collection.py, docs/performance.md, the eleventh round).

    .venv/bin/python benchmarks/full_collections.py [--nodes 5000] [--pods 6000] [--collections 4]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

SETTINGS = ("python", "kubefit")
CHANGED_SHARE = 4  # one node in this many gets a new body before each collection


def body() -> str:
    return json.dumps(
        {
            "metadata": {
                "name": "node",
                "labels": {f"label-{index}": "value" * 2 for index in range(20)},
                "managedFields": [
                    {"manager": "kubelet", "fieldsV1": {f"f:{index}": {} for index in range(30)}}
                    for _ in range(3)
                ],
            },
            "status": {
                "conditions": [{"type": f"T{index}", "status": "True", "reason": "R"} for index in range(6)],
                "allocatable": {"cpu": "64", "memory": "1Ti", "nvidia.com/gpu": "8"},
            },
        }
    )


def collections(setting: str, nodes: int, pods: int, count: int) -> list[float]:
    """CPU milliseconds of `count` full collections over the heap, the collector set as `setting` says."""
    if setting == "kubefit":
        from kubefit.controller.garbage_collection import tune_garbage_collection

        tune_garbage_collection()
    else:
        gc.collect()
        gc.freeze()
    text = body()
    held = {f"node-{index}": json.loads(text) for index in range(nodes)}
    held.update({f"pod-{index}": json.loads(text) for index in range(pods)})
    times = []
    for _ in range(count):
        for index in range(0, nodes, CHANGED_SHARE):
            held[f"node-{index}"] = json.loads(text)
        started = time.process_time()
        gc.collect()
        times.append(1000 * (time.process_time() - started))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=6000)
    parser.add_argument("--collections", type=int, default=4)
    parser.add_argument("--setting", choices=SETTINGS, help=argparse.SUPPRESS)  # one side, in a child
    args = parser.parse_args()
    if args.nodes < 1 or args.pods < 0 or args.collections < 2:
        parser.error("--nodes must be at least 1, --pods at least 0, --collections at least 2")
    if args.setting:
        print(json.dumps(collections(args.setting, args.nodes, args.pods, args.collections)))
        return 0
    print(
        f"{args.nodes} node and {args.pods} pod bodies; a quarter of the nodes replaced before each collection"
    )
    later = {}
    for setting in SETTINGS:
        child = [sys.executable, __file__, "--setting", setting, "--nodes", str(args.nodes)]
        child += ["--pods", str(args.pods), "--collections", str(args.collections)]
        times = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
        later[setting] = statistics.median(times[1:])
        name = "as kubefit run sets it" if setting == "kubefit" else "Python's, the imports frozen"
        print(f"  {name:<30} full collections, CPU ms: {' '.join(f'{ms:.0f}' for ms in times)}")
    ratio = later["kubefit"] / later["python"]
    print(f"after the first: median {later['kubefit']:.0f} against {later['python']:.0f} ms ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
