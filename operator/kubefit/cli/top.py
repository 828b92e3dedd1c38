"""`kubefit top`: the TrainingJobs of a cluster, what accelerators they hold, and what of it is wasted.

Reads the TrainingJobs through the kubeconfig (the operator's status: phase, workers, sizing) and, with
`--prometheus URL`, each worker GPU's utilisation from DCGM exporter series in that Prometheus. The waste
column names the same conditions the shipped alert rules fire on (docs/alerts.md), judged at this instant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO, cast

from kubefit.api.conditions import FINISHED_PHASES, Reason
from kubefit.api.formatting import parse_index_ranges
from kubefit.api.resource import GROUP, PLURAL, VERSION
from kubefit.api.template import DNS_LABEL_MAX, DNS_LABEL_PATTERN
from kubefit.api.units import GIB
from kubefit.builders.naming import worker_index
from kubefit.decisions.job import previous_sizing
from kubefit.decisions.workers import min_max_workers

# A cluster that does not answer fails the command in bounded time (as `kubefit size --cluster` does).
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 60

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # flags that do nothing together, as argparse exits for a bad flag

# Defaults shared with the alert rules' defaults (charts/kubefit/values.yaml): a device whose estimated
# peak is under half its memory is over-provisioned; a GPU under 1% busy is idle (DCGM's noise floor).
OVERPROVISIONED_BELOW = 0.5
IDLE_BELOW = 0.01

WASTE_IDLE = "idle"
WASTE_OVERPROVISIONED = "overprovisioned"
WASTE_PARTIAL_GANG = "partial-gang"

# Utilisation per GPU of a pod: the fraction of time its graphics engine was busy. dcgm-exporter scraped
# with honorLabels false carries the workload's pod and namespace in exported_*.
_POD_LABELS = (
    'label_replace(label_replace({metric}, "namespace", "$1", "exported_namespace", "(.+)"),'
    ' "pod", "$1", "exported_pod", "(.+)")'
)
ENGINE_ACTIVE_QUERY = _POD_LABELS.format(metric="DCGM_FI_PROF_GR_ENGINE_ACTIVE")
GPU_UTIL_QUERY = _POD_LABELS.format(metric="DCGM_FI_DEV_GPU_UTIL") + " / 100"

GpuKey = tuple[str, str, str]  # namespace, pod, the GPU (its UUID, else host and index)


class TopError(Exception):
    """A failure to read the cluster or Prometheus, with a message for the user."""


@dataclass(frozen=True)
class JobRow:
    """One line of `kubefit top`; `-o json` prints these fields (bytes as integers)."""

    namespace: str
    name: str
    phase: str
    running_workers: int
    desired_workers: int
    min_workers: int
    accelerator: str
    accelerators_allocated: int
    accelerators_requested: int
    memory_estimated_bytes: int | None
    memory_requested_bytes: int | None
    utilization: float | None
    idle_accelerators: float | None
    waste: list[str]


@dataclass(frozen=True)
class Thresholds:
    overprovisioned_below: float = OVERPROVISIONED_BELOW
    idle_below: float = IDLE_BELOW


def min_workers_of(spec: Mapping[str, Any], sizing: Mapping[str, Any], desired: int = 0) -> int:
    """The fewest workers the job trains with, as the operator's `min` workers series (the partial-gang
    alert's): a gang's whole size, an elastic job's floor with what its memory needs, an elastic jax
    job's group (`desired`, status.desiredReplicas)."""
    sized = previous_sizing(sizing)  # a newer operator's fields dropped, as the operator reads it
    found = min_max_workers(spec, sized, desired)
    if found is not None:
        return found[0]
    workers = spec.get("workers") or {}  # a spec the operator refuses runs nothing; a rough figure
    return int(workers.get("minReplicas") or workers.get("replicas") or 1)


def job_gpu_utilization(namespace: str, name: str, gpus: Mapping[GpuKey, float]) -> list[float]:
    """Utilisation of each GPU that Prometheus reports for the job's worker pods."""
    return [
        value
        for (gpu_namespace, pod, _gpu), value in gpus.items()
        if gpu_namespace == namespace and worker_index(pod, name) is not None
    ]


def job_row(job: Mapping[str, Any], gpus: Mapping[GpuKey, float] | None, limits: Thresholds) -> JobRow:
    """The row of one TrainingJob object; `gpus` is utilisation per GPU, None without Prometheus.

    UTIL is the mean over the job's GPUs; "idle" means that even its busiest GPU is under the threshold,
    as in the KubefitAcceleratorsIdle alert."""
    metadata, status = job.get("metadata") or {}, job.get("status") or {}
    namespace, name = str(metadata.get("namespace", "")), str(metadata.get("name", ""))
    sizing = status.get("sizing") or {}
    per_worker = int(sizing.get("acceleratorsPerWorker") or 0)
    running, desired = int(status.get("readyReplicas") or 0), int(status.get("desiredReplicas") or 0)
    allocated = running * per_worker
    estimated, requested = sizing.get("perDeviceBytes"), sizing.get("deviceMemoryBytes")
    busy = job_gpu_utilization(namespace, name, gpus) if gpus is not None else []
    utilization = sum(busy) / len(busy) if busy else None
    idle = allocated * (1.0 - utilization) if utilization is not None else None
    minimum = min_workers_of(job.get("spec") or {}, sizing, desired)
    waste = []
    if busy and allocated and max(busy) < limits.idle_below:
        waste.append(WASTE_IDLE)
    if allocated and estimated and requested and estimated / requested < limits.overprovisioned_below:
        waste.append(WASTE_OVERPROVISIONED)
    # As the alert: workers that finished their part count, so a gang finishing is not short; the devices
    # held are those of every live worker pod (bound ones that never start too), not only running ones.
    # A finished job holds nothing (status.replicas still counts its pods kept for their logs), and one whose
    # spec is invalid exports no minimum (metrics/job_series.py), so the alert cannot fire for either.
    finished = len(parse_index_ranges(status.get("succeededWorkers")))
    held = max(0, max(int(status.get("replicas") or 0), running) - finished) * per_worker
    if status.get("phase") in FINISHED_PHASES:
        held = 0
    invalid = any(
        condition.get("reason") == Reason.INVALID_SPEC for condition in status.get("conditions") or []
    )
    if held and not invalid and running + finished < minimum:
        waste.append(WASTE_PARTIAL_GANG)
    return JobRow(
        namespace=namespace,
        name=name,
        phase=str(status.get("phase") or "Pending"),
        running_workers=running,
        desired_workers=desired,
        min_workers=minimum,
        accelerator=str(sizing.get("accelerator") or ""),
        accelerators_allocated=allocated,
        accelerators_requested=desired * per_worker,
        memory_estimated_bytes=int(estimated) if estimated is not None else None,
        memory_requested_bytes=int(requested) if requested is not None else None,
        utilization=utilization,
        idle_accelerators=idle,
        waste=waste,
    )


def build_rows(
    jobs: Iterable[Mapping[str, Any]], gpus: Mapping[GpuKey, float] | None, limits: Thresholds
) -> list[JobRow]:
    rows = [job_row(job, gpus, limits) for job in jobs]
    return sorted(rows, key=lambda row: (row.namespace, row.name))


# ---------------------------------------------------------------- rendering

_HEADERS = ("NAMESPACE", "NAME", "PHASE", "WORKERS", "ACCELERATORS", "MEMORY/DEVICE", "UTIL", "IDLE", "WASTE")


def _memory_cell(row: JobRow) -> str:
    if not row.memory_estimated_bytes or not row.memory_requested_bytes:
        return "-"
    share = row.memory_estimated_bytes / row.memory_requested_bytes
    return f"{row.memory_estimated_bytes / GIB:.1f}/{row.memory_requested_bytes / GIB:.1f} GiB ({share:.0%})"


def _idle_cell(row: JobRow) -> str:
    """Allocated accelerators times the share of time they were not busy: GPU-equivalents doing nothing."""
    return f"{row.idle_accelerators:.1f}" if row.idle_accelerators is not None else "-"


def _cells(row: JobRow) -> tuple[str, ...]:
    accelerators = f"{row.accelerators_allocated}/{row.accelerators_requested}"
    if row.accelerator:
        accelerators += f" {row.accelerator}"
    utilization = f"{row.utilization:.0%}" if row.utilization is not None else "-"
    workers = f"{row.running_workers}/{row.desired_workers}"
    waste = ", ".join(row.waste) or "-"
    return (row.namespace, row.name, row.phase, workers, accelerators, _memory_cell(row), utilization,
            _idle_cell(row), waste)  # fmt: skip


def render_table(rows: Sequence[JobRow]) -> str:
    if not rows:
        return "No TrainingJobs found.\n"
    lines = [_HEADERS, *(_cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(_HEADERS))]
    return "".join(
        "   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def render_json(rows: Sequence[JobRow]) -> str:
    return json.dumps({"jobs": [asdict(row) for row in rows]}, indent=2) + "\n"


# ---------------------------------------------------------------- reading the cluster and Prometheus


def prometheus_vector(base_url: str, query: str, timeout: float = 10.0) -> dict[GpuKey, float]:
    """Runs an instant query; returns the value per GPU of the series that name a pod and namespace."""
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the user's URL
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TopError(f"--prometheus {base_url}: cannot query it ({exc})") from exc
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error", body) if isinstance(body, dict) else body
        raise TopError(f"--prometheus {base_url}: query failed: {error}")
    values: dict[GpuKey, float] = {}
    try:
        for sample in body.get("data", {}).get("result", []):
            labels = sample.get("metric", {})
            value = float(sample["value"][1])
            # NaN (an exporter's gap) says nothing about the GPU, and is not JSON for `-o json`.
            if "namespace" in labels and "pod" in labels and math.isfinite(value):
                gpu = labels.get("UUID") or f"{labels.get('Hostname', '')}/{labels.get('gpu', '')}"
                values[(labels["namespace"], labels["pod"], gpu)] = value
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise TopError(f"--prometheus {base_url}: not a Prometheus instant-query answer ({exc!r})") from exc
    return values


def gpu_utilization(base_url: str) -> dict[GpuKey, float]:
    """DCGM_FI_PROF_GR_ENGINE_ACTIVE where a GPU reports it, else DCGM_FI_DEV_GPU_UTIL / 100."""
    merged = prometheus_vector(base_url, GPU_UTIL_QUERY)
    merged.update(prometheus_vector(base_url, ENGINE_ACTIVE_QUERY))
    return merged


def list_jobs(namespace: str | None, context: str | None) -> list[dict[str, Any]]:
    """TrainingJobs of one namespace, or of all when namespace is None."""
    import yaml
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    timeout = (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)
    configuration = client.Configuration()
    try:
        config.load_kube_config(kubeconfig_path(), context=context, client_configuration=configuration)
    except (config.ConfigException, yaml.YAMLError, OSError, ValueError) as exc:
        raise TopError(f"cannot read the kubeconfig: {_one_line(exc)}") from exc
    # One retry, as `kubefit size --cluster`: urllib3's default of three would quadruple the timeouts.
    configuration.retries = 1
    try:
        api = client.CustomObjectsApi(client.ApiClient(configuration))
        if namespace is None:
            listing = cast(
                dict[str, Any],
                api.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=timeout),
            )
        else:
            listing = cast(
                dict[str, Any],
                api.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _request_timeout=timeout
                ),
            )
    except ApiException as exc:
        raise TopError(
            f"cannot list TrainingJobs: HTTP {exc.status} {exc.reason}{_status_message(exc)}"
        ) from exc
    except (HTTPError, OSError) as exc:  # HTTPError: urllib3's, e.g. MaxRetryError
        reason = getattr(exc, "reason", None) or exc
        raise TopError(f"cannot reach the cluster: {reason}") from exc
    items = listing.get("items") if isinstance(listing, dict) else None
    if not isinstance(items, list):  # a proxy's login page answered 200, say
        raise TopError("cannot list TrainingJobs: the answer is not a Kubernetes list")
    return list(items)


def _status_message(exc: Any) -> str:
    """The API server's own message (the user, verb and namespace a 403 names), when its body is a Status."""
    try:
        body = json.loads(exc.body) if exc.body else None
    except (TypeError, ValueError):
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {message}" if isinstance(message, str) and message else ""


def kubeconfig_path() -> str:
    # Read now: the client's default is $KUBECONFIG as it was when the client was imported.
    return os.environ.get("KUBECONFIG") or "~/.kube/config"


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # a YAML error spans lines; the command reports in one


def context_namespace(config_file: str, context: str | None) -> str:
    """The namespace of the kubeconfig's context `context` (None: its current-context), as kubectl uses it;
    "default" when it names none. A named context needs no current-context in the file (kubectl --context
    needs none): config.list_kube_config_contexts did, and refused such a file. Raises what reading the
    kubeconfig raises (ConfigException, YAMLError, OSError)."""
    from kubernetes.config.kube_config import ConfigException, KubeConfigLoader, KubeConfigMerger

    merged = KubeConfigMerger(config_file).config
    if merged is None:
        raise ConfigException(f"Invalid kube-config file. No configuration found in {config_file}")
    chosen = KubeConfigLoader(config_dict=merged, active_context=context).current_context
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def current_namespace(context: str | None) -> str:
    """The kubeconfig context's namespace, as kubectl uses it; "default" when it names none."""
    import yaml
    from kubernetes import config

    try:
        return context_namespace(kubeconfig_path(), context)
    except (config.ConfigException, yaml.YAMLError, OSError, ValueError) as exc:
        raise TopError(f"cannot read the kubeconfig: {_one_line(exc)}") from exc


# ---------------------------------------------------------------- command


def run_top(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        return _top(args, out, err)
    except BrokenPipeError:  # `kubefit top | head`: the reader left, nothing more to say
        _discard(out)
        return EXIT_OK


def _discard(out: TextIO) -> None:
    """`out` to /dev/null: what is still buffered would fail again at the interpreter's exit."""
    try:
        fileno = out.fileno()
    except (OSError, ValueError):  # no file behind it (a StringIO): nothing is flushed at exit
        return
    os.dup2(os.open(os.devnull, os.O_WRONLY), fileno)


def _top(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.idle_below is not None and not args.prometheus:
        err.write(
            "kubefit top: --idle-below: only used with --prometheus (utilisation comes from its DCGM series)\n"
        )
        return EXIT_USAGE
    try:
        namespace = None if args.all_namespaces else (args.namespace or current_namespace(args.context))
        jobs = list_jobs(namespace, args.context)
        gpus = gpu_utilization(args.prometheus) if args.prometheus else None
    except TopError as exc:
        err.write(f"kubefit top: {exc}\n")
        return EXIT_FAILED
    limits = Thresholds(
        args.overprovisioned_below, IDLE_BELOW if args.idle_below is None else args.idle_below
    )
    rows = build_rows(jobs, gpus, limits)
    try:
        out.write(render_json(rows) if args.output == "json" else render_table(rows))
        out.flush()  # a write error is raised here, inside run_top, not at the interpreter's exit
    except BrokenPipeError:
        raise
    except OSError as exc:  # e.g. `kubefit top > /dev/full`
        _discard(out)
        err.write(f"kubefit top: cannot write the output: {exc.strerror or exc}\n")
        return EXIT_FAILED
    return EXIT_OK


def _namespace_name(text: str) -> str:
    """A namespace name is a DNS label: any other named none, and `top` printed "No TrainingJobs found." as
    for a namespace without jobs."""
    if not re.fullmatch(DNS_LABEL_PATTERN, text) or len(text) > DNS_LABEL_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace name (lowercase DNS label)")
    return text


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def register(commands: Any) -> None:
    top = commands.add_parser(
        "top",
        help="show TrainingJobs with their accelerators, memory per device and waste",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = top.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", type=_namespace_name, help="namespace (default: the kubeconfig context's)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    top.add_argument("--context", help="kubeconfig context (default: the current one)")
    top.add_argument(
        "--prometheus", metavar="URL", help="Prometheus with DCGM exporter series, for utilisation"
    )
    top.add_argument("-o", "--output", choices=("table", "json"), default="table")
    top.add_argument(
        "--overprovisioned-below", type=_fraction, default=OVERPROVISIONED_BELOW, metavar="FRACTION",
        help="estimated/requested memory per device under which a job is over-provisioned (default 0.5)",
    )  # fmt: skip
    top.add_argument(
        "--idle-below", type=_fraction, default=None, metavar="FRACTION",
        help="with --prometheus: utilisation under which a job's GPUs are idle (default 0.01)",
    )  # fmt: skip
    top.set_defaults(handler=run_top)
