"""`kubefit size`: estimate a TrainingJob's accelerator memory and choose its layout, offline.

Imports beyond argparse happen inside the handler, so that `kubefit --help` and `kubefit size` stay fast
(no kopf, kubernetes or prometheus_client on this path).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from kubefit.api.resource import API_VERSION, KIND
from kubefit.api.units import GIB, format_gib

EXIT_OK = 0
EXIT_FAILED = 1  # an internal error; reported in one line, never a traceback
EXIT_INVALID = 2  # unreadable file, not YAML, not a TrainingJob, invalid spec or catalog

DESCRIPTION = """\
Estimate the peak accelerator memory per device of a TrainingJob and choose (or check) its layout:
accelerator type, accelerators per worker and the fewest workers that hold it. Runs offline; prints
the same object the operator writes to status.sizing."""

EPILOG = """\
inputs:
  -f JOB.yaml     a TrainingJob manifest (apiVersion kubefit.dev/v1alpha1, kind TrainingJob), YAML or
                  JSON; '-' reads standard input. A multi-document file must hold exactly one
                  TrainingJob; other documents are ignored.
  --catalog FILE  extra accelerator entries (same shape as the built-in catalog) that extend or
                  override it; without it $KUBEFIT_CATALOG is used when set.

what is assumed:
  - Memory per device is the estimator's figure: weights, gradients, optimizer states, activations,
    logits and overhead (runtime context, optimizer-step temporaries, communication buffers,
    fragmentation). A job fits when it is at most device memory x (1 - resources.memoryHeadroom),
    device memory being what the driver reports (the catalog's figure).
  - resources.accelerator auto: every catalog accelerator that can run the spec (no bf16 on T4/V100,
    fp8 only with FP8 units, no TPUs for framework pytorch) is a candidate. The cheapest layout that
    fits wins: fewest total devices, then smallest device memory, then fewest workers.
  - resources.acceleratorsPerWorker auto: the per-node counts the catalog lists for the accelerator.
  - minWorkers is the fewest workers that hold the job (sharding over more devices shrinks per-device
    memory; tensorParallel x pipelineParallel devices are the least a replica needs). It is the
    elastic floor together with workers.minReplicas.
  - With accelerator and acceleratorsPerWorker both fixed and workers.replicas given, that layout is
    evaluated at replicas (kept within minReplicas..maxReplicas) and fits may be false.
  - training.loss standard (the default) counts the whole fp32 logits of a plain cross-entropy, the
    safe figure; declare chunked only when the training code uses a chunked or fused loss.
  - Suggestions and "would fit" remedies draw from: ZeRO stages, selective/full recompute,
    micro-batch 1, a chunked loss, 8-bit AdamW/Adafactor, optimizer offload, bf16-true, fp8, LoRA,
    QLoRA and other accelerators; each is re-estimated, none is applied to the job.
  - No cluster is consulted: free devices and node sizes are not known here (the operator knows them).
  - When a fixed layout is far bigger than the job needs, a warning says so (the operator adds the
    same sentence to status.sizing.warnings).

output:
  -o table  (default) a breakdown for a person: GiB per component, the layout and the warnings.
  -o json   exactly the status.sizing object: camelCase keys, bytes as integers.
  -o yaml   the same object as YAML.
  --suggest adds cheaper alternatives, ranked by total devices then device memory, each re-estimated,
            with what it trades away. With -o json/yaml the output becomes
            {"sizing": <status.sizing>, "suggestions": [{"change", "changes": [{"field", "value"}],
            "accelerator", "acceleratorsPerWorker", "workers", "devices", "perDeviceBytes",
            "deviceMemoryBytes", "fits", "tradeOff"}, ...]}.

exit status:
  0  the job could be estimated (also when it does not fit: see "fits" and the warnings)
  2  invalid input: unreadable file, not YAML, wrong apiVersion/kind, invalid spec or catalog; the
     field is named on stderr, e.g. "error: spec.model.parameters: ..."
  1  an internal error (reported in one line)

examples:
  kubefit size -f examples/llama3-8b-fsdp.yaml
  kubefit size -f job.yaml -o json | jq .minWorkers
  cat job.yaml | kubefit size -f - --suggest
"""


class InvalidInput(Exception):
    """Input the command cannot use; each line names the field or file at fault."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("; ".join(lines))


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "size",
        help="estimate a TrainingJob's memory and choose its accelerator layout (offline)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-f",
        "--filename",
        required=True,
        metavar="JOB.yaml",
        help="TrainingJob manifest (YAML or JSON); '-' reads standard input",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="table (default, for a person), or json/yaml: exactly the status.sizing object",
    )
    parser.add_argument(
        "--suggest", action="store_true", help="also print cheaper alternatives and what each trades away"
    )
    parser.add_argument(
        "--catalog", metavar="FILE", help="accelerator catalog file that extends the built-in one"
    )
    parser.set_defaults(handler=run_size)


# ------------------------------------------------------------------ input


def read_text(filename: str, stdin: TextIO | None = None) -> str:
    if filename == "-":
        return (stdin or sys.stdin).read()
    try:
        with open(filename, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidInput([f"{filename}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise InvalidInput([f"{filename}: not a text file (expected a YAML manifest)"]) from None


def load_training_job(text: str, source: str) -> dict[str, Any]:
    """The one TrainingJob document in `text`, checked for apiVersion and kind."""
    import yaml

    try:
        documents = [document for document in yaml.safe_load_all(text) if document is not None]
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput([f"{source}: not valid YAML{at}: {problem}"]) from None
    if not documents:
        raise InvalidInput([f"{source}: empty; expected a {KIND} manifest"])
    jobs = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == KIND]
    if len(jobs) > 1:
        raise InvalidInput([f"{source}: holds {len(jobs)} {KIND} documents; size one at a time"])
    manifest = jobs[0] if jobs else documents[0]
    if not isinstance(manifest, dict):
        raise InvalidInput(
            [f"{source}: expected a {KIND} manifest (a mapping), got {type(manifest).__name__}"]
        )
    if manifest.get("kind") != KIND:
        raise InvalidInput([f"kind: expected {KIND}, got {manifest.get('kind')!r}"])
    if manifest.get("apiVersion") != API_VERSION:
        raise InvalidInput([f"apiVersion: expected {API_VERSION}, got {manifest.get('apiVersion')!r}"])
    if "spec" not in manifest:
        raise InvalidInput(["spec: required"])
    if not isinstance(manifest.get("metadata") or {}, dict):
        raise InvalidInput(["metadata: must be a mapping"])
    return manifest


# ------------------------------------------------------------------ output


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


_BREAKDOWN_ROWS = (
    ("weights", "weights"),
    ("gradients", "gradients"),
    ("optimizer_states", "optimizer states"),
    ("activations", "activations"),
    ("logits", "logits"),
    ("overhead", "overhead"),
)


def render_table(manifest: dict[str, Any], spec: Any, sizing: Any, suggestions: list[Any] | None) -> str:
    lines = _summary_lines(manifest, spec, sizing) + _breakdown_lines(sizing)
    if sizing.warnings:
        lines += ["", "  warnings"]
        lines += [f"    - {warning}" for warning in sizing.warnings]
    if suggestions is not None:
        lines += _suggestion_lines(suggestions)
    return "\n".join(lines) + "\n"


def _summary_lines(manifest: dict[str, Any], spec: Any, sizing: Any) -> list[str]:
    from kubefit.sizing.planner import evaluated_workers

    metadata = manifest.get("metadata") or {}
    name = metadata.get("name", "(unnamed)")
    namespace = metadata.get("namespace")
    title = f"{KIND} {namespace}/{name}" if namespace else f"{KIND} {name}"
    usable = sizing.device_memory_bytes * (1 - spec.resources.memory_headroom)
    workers = evaluated_workers(spec, sizing)
    per_worker = sizing.accelerators_per_worker
    verdict = "fits" if sizing.fits else "DOES NOT FIT"
    if sizing.fits or sizing.min_workers > workers:
        needs = f"memory needs at least {_count(sizing.min_workers, 'worker')} (minWorkers)"
    else:
        needs = "no worker count fits as configured (see warnings)"
    return [
        title,
        f"  accelerator   {sizing.accelerator} ({sizing.resource_name}), "
        f"{format_gib(sizing.device_memory_bytes)} per device",
        f"  layout        {per_worker} per worker x {_count(workers, 'worker')} "
        f"= {_count(per_worker * workers, 'device')}; {needs}",
        f"  per device    {format_gib(sizing.per_device_bytes)} estimated, {format_gib(usable)} usable "
        f"({spec.resources.memory_headroom:.0%} headroom): {verdict}",
    ]


def _breakdown_lines(sizing: Any) -> list[str]:
    lines = ["", "  GiB per device"]
    breakdown = sizing.breakdown
    for attribute, label in _BREAKDOWN_ROWS:
        lines.append(f"    {label:<18}{getattr(breakdown, attribute) / GIB:>8.1f}")
    lines.append(f"    {'total':<18}{sizing.per_device_bytes / GIB:>8.1f}")
    return lines


def _suggestion_lines(suggestions: list[Any]) -> list[str]:
    lines = ["", "  suggestions, cheapest first (total devices, then device memory)"]
    if not suggestions:
        lines.append("    none: no single change makes this job cheaper")
    for rank, suggestion in enumerate(suggestions, start=1):
        lines.append(f"    {rank}. {suggestion.description}")
        per_device = suggestion.sizing.per_device_bytes / GIB
        device_memory = format_gib(suggestion.sizing.device_memory_bytes)
        lines.append(
            f"       {suggestion.layout} = {_count(suggestion.devices, 'device')}, "
            f"{per_device:.1f} of {device_memory} per device"
        )
        lines.append(f"       trade-off: {suggestion.trade_off}")
    return lines


def render_data(document: Any, output: str) -> str:
    if output == "json":
        import json

        return json.dumps(document, indent=2) + "\n"
    import yaml

    return str(yaml.safe_dump(document, sort_keys=False))


# ------------------------------------------------------------------ command


def size(args: argparse.Namespace, stdout: TextIO, stdin: TextIO | None = None) -> int:
    from kubefit.api.validation import InvalidSpec, parse_spec
    from kubefit.sizing.catalog import CatalogError, load_catalog
    from kubefit.sizing.planner import plan
    from kubefit.sizing.suggest import suggest, with_overprovisioning_advice

    source = "<stdin>" if args.filename == "-" else args.filename
    manifest = load_training_job(read_text(args.filename, stdin), source)
    try:
        catalog = load_catalog(args.catalog)
        spec = parse_spec(manifest["spec"])
        sizing = plan(spec, catalog)
    except CatalogError as exc:
        raise InvalidInput([str(exc)]) from None
    except InvalidSpec as exc:
        raise InvalidInput([str(error) for error in exc.errors]) from None
    sizing, _ = with_overprovisioning_advice(spec, sizing, catalog)
    suggestions = suggest(spec, catalog) if args.suggest else None

    if args.output == "table":
        stdout.write(render_table(manifest, spec, sizing, suggestions))
        return EXIT_OK
    document: Any = sizing.model_dump(by_alias=True, mode="json")
    if suggestions is not None:
        document = {"sizing": document, "suggestions": [suggestion.to_dict() for suggestion in suggestions]}
    stdout.write(render_data(document, args.output))
    return EXIT_OK


def run_size(args: argparse.Namespace) -> int:
    """Handler of `kubefit size`: exit 0 when estimated, 2 for invalid input, 1 for internal errors."""
    try:
        return size(args, sys.stdout)
    except BrokenPipeError:  # e.g. `kubefit size ... | head`: the reader left, nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except InvalidInput as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as exc:  # noqa: BLE001 - the command promises one line, never a traceback
        print(
            f"error: internal error while sizing ({type(exc).__name__}: {exc}); please report it",
            file=sys.stderr,
        )
        return EXIT_FAILED
