"""`kubefit size`: estimate a TrainingJob's accelerator memory and choose its layout, offline.

Imports beyond argparse happen inside the handler, so that `kubefit --help` and `kubefit size` stay fast
(no kopf, kubernetes or prometheus_client on this path).
"""

from __future__ import annotations

import argparse
import codecs
import math
import re
import sys
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from kubefit.api.conditions import Reason
from kubefit.api.resource import API_VERSION, KIND
from kubefit.api.units import GIB, format_gib
from kubefit.api.validation import field_schema
from kubefit.cli.run import cluster_domain_name, positive_int
from kubefit.decisions.workers import worker_bounds

if TYPE_CHECKING:
    from kubefit.api.models import TrainingJobSpec

EXIT_OK = 0
EXIT_FAILED = 1  # an internal error, or the output cannot be written; one line, never a traceback
EXIT_INVALID = 2  # unreadable file, not YAML, not a TrainingJob, invalid spec or catalog
EXIT_CLUSTER = 3  # --cluster: the kubeconfig cannot be read or the cluster cannot be reached or listed
DEFAULT_CLUSTER_DOMAIN = "cluster.local"  # decisions.job's, the operator's; not imported: --help stays fast
# The most of a manifest read: the API server takes a request body of 3 MiB at most (its MaxRequestBodyBytes).
INPUT_MAX_BYTES = 3 * 2**20
NAMESPACE_PATTERN = re.compile(r"(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # a DNS-1123 label

DESCRIPTION = """\
Estimate the peak accelerator memory per device of a TrainingJob and choose (or check) its layout:
accelerator type, accelerators per worker and the fewest workers that hold it. Runs offline against the
accelerator catalog, or with --cluster against the live cluster's nodes; either way it sizes the job
through the operator's own code and prints the object the operator writes to status.sizing."""

EPILOG = """\
inputs:
  -f JOB.yaml     a TrainingJob manifest (apiVersion kubefit.dev/v1alpha1, kind TrainingJob), YAML or
                  JSON; '-' reads standard input. A multi-document file must hold exactly one
                  TrainingJob; other documents are ignored.
  --catalog FILE  extra accelerator entries (same shape as the built-in catalog) that extend or
                  override it; without it $KUBEFIT_CATALOG is used when set.
  --cluster       plan against the live cluster, read through the kubeconfig ($KUBECONFIG, else
                  ~/.kube/config; --context NAME picks a context): its nodes and the accelerators
                  bound pods hold, as the operator reads them. Only the nodes the worker pod's
                  nodeSelector, required node affinity and tolerations admit are offered; the job's
                  own workers (metadata.namespace, else the context's namespace, and metadata.name)
                  count as free; while they run, an accelerator: auto job is planned on their
                  accelerator alone, as the operator plans it. Needs list on nodes and on pods in all
                  namespaces. --context NAME needs no current-context in the kubeconfig.
  --cluster-domain DOMAIN
                  the kubelets' cluster domain (default cluster.local), as `kubefit run` takes it: with
                  setHostnameAsFQDN, a worker's FQDN <job>-worker-<i>.<job>.<namespace>.svc.<domain>
                  must fit the kubelet's 64 characters. Checked when the namespace is known:
                  metadata.namespace, else with --cluster the context's.

what is assumed:
  - Memory per device is the estimator's figure: weights, gradients, optimizer states, activations,
    logits and overhead (runtime context, optimizer-step temporaries, communication buffers,
    fragmentation). A job fits when it is at most device memory x (1 - resources.memoryHeadroom),
    device memory being what the driver reports (the catalog's figure).
  - resources.accelerator auto: every catalog accelerator that can run the spec (bf16 and fp8
    only where its catalog entry says the device has them: no bf16 on T4/V100, fp8 on L4, L40S, H100,
    H200, B200, MI300X; no TPUs for framework pytorch) is a candidate. The cheapest layout that
    fits wins: one the cluster can hold (with --cluster), within the worker bounds, running the replicas
    asked; then fewest total devices, devices free now, smallest device memory, fewest workers.
  - resources.acceleratorsPerWorker auto: the per-node counts the catalog lists for the accelerator.
  - minWorkers is the fewest workers that hold the job (sharding over more devices shrinks per-device
    memory; tensorParallel x pipelineParallel devices are the least a replica needs). It is the
    elastic floor together with workers.minReplicas.
  - Every layout is judged at the worker count the operator runs: replicas kept within
    [max(minReplicas, minWorkers), maxReplicas]; an elastic job at the largest estimate between that
    floor and that count. With accelerator and acceleratorsPerWorker both fixed, fits may be false.
  - training.loss standard (the default) counts the whole fp32 logits of a plain cross-entropy, the
    safe figure; declare chunked only when the training code uses a chunked or fused loss.
  - Suggestions and "would fit" remedies draw from: ZeRO stages, selective/full recompute,
    micro-batch 1, a chunked loss, 8-bit AdamW/Adafactor, optimizer offload, bf16-true, fp8, LoRA,
    QLoRA and other accelerators; each is re-estimated, none is applied to the job.
  - Without --cluster no cluster is consulted: every catalog accelerator counts as present and free.
    With it, only accelerator types and per-worker counts that some admitted node holds are
    candidates, and a layout placeable on free devices now is preferred (a note says when it is not).
  - When a fixed layout is far bigger than the job needs, a warning says so (the operator adds the
    same sentence to status.sizing.warnings).

output:
  -o table  (default) a breakdown for a person: GiB per component, the layout and the warnings.
  -o json   exactly the status.sizing object: camelCase keys, bytes as integers. With --cluster it
            equals the operator's status.sizing for the same job, cluster and catalog (an operator
            that watches only some namespaces does not count the pods of the others; this does).
  -o yaml   the same object as YAML.
  --suggest adds cheaper alternatives, ranked by total devices then device memory, each re-estimated
            (against the catalog, not the cluster), with what it trades away. Devices and "workers" are
            what the changed job runs (replicas kept within its bounds), the count its estimate was
            made at. With -o json/yaml the output becomes
            {"sizing": <status.sizing>, "suggestions": [{"change", "changes": [{"field", "value"}],
            "accelerator", "acceleratorsPerWorker", "workers", "devices", "perDeviceBytes",
            "deviceMemoryBytes", "fits", "tradeOff"}, ...]}.

exit status:
  0  the job could be estimated (also when it does not fit: see "fits" and the warnings)
  2  invalid input: unreadable file, not YAML, wrong apiVersion/kind, invalid spec or catalog; the
     field is named on stderr, e.g. "error: spec.model.parameters: ..."
  3  --cluster: the kubeconfig cannot be read, or the cluster cannot be reached or listed (the
     message names the kubeconfig, the server and the cause)
  1  an internal error, or the output cannot be written, e.g. a full disk (reported in one line)

examples:
  kubefit size -f examples/llama3-8b-fsdp.yaml
  kubefit size -f job.yaml -o json | jq .minWorkers
  cat job.yaml | kubefit size -f - --suggest
  kubefit size -f job.yaml --cluster -o json
"""


class ClusterError(Exception):
    """--cluster could not read the cluster; the message names the kubeconfig, server and cause."""


class OutputError(Exception):
    """The output could not be written (a full disk): the message is the cause."""


class InvalidInput(Exception):
    """Input the command cannot use; each line names the field or file at fault."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("; ".join(lines))


# What aliases in a manifest may expand to (_kubectl_loader): far more than any TrainingJob has.
ALIASED_NODES_MAX = 100_000


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "size",
        help="estimate a TrainingJob's memory and choose its accelerator layout (offline, or with --cluster against the live nodes)",
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
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="plan against the live cluster's nodes and free accelerators (through the kubeconfig), "
        "as the operator does",
    )
    parser.add_argument("--context", help="kubeconfig context for --cluster (default: the current one)")
    parser.add_argument(
        "--max-workers-per-job",
        type=positive_int,
        default=1024,
        metavar="N",
        help="refuse a job asking for more workers, as `kubefit run --max-workers-per-job N` does (default "
        "1024, the operator's)",
    )
    parser.add_argument(
        "--cluster-domain",
        type=cluster_domain_name,
        default=DEFAULT_CLUSTER_DOMAIN,
        metavar="DOMAIN",
        help="the kubelets' cluster domain, as `kubefit run --cluster-domain` (default cluster.local): with "
        "setHostnameAsFQDN, a job whose workers' FQDN would pass 64 characters is refused",
    )
    parser.set_defaults(handler=run_size)


# ------------------------------------------------------------------ input


def read_text(filename: str, stdin: TextIO | None = None) -> str:
    """The manifest's text, at most INPUT_MAX_BYTES of it, counted in bytes before decoding (`kubefit size
    -f /dev/zero` read until out of memory)."""
    if filename == "-":
        stream = stdin or sys.stdin
        # The bytes, decoded here: the stream's own decoding (the locale's) raised an internal error.
        raw = getattr(stream, "buffer", None)
        if raw is None:
            text = stream.read(INPUT_MAX_BYTES + 1)
            _bounded(len(text.encode("utf-8", "surrogatepass")), "<stdin>")
            return text
        data = bytes(raw.read(INPUT_MAX_BYTES + 1))
        _bounded(len(data), "<stdin>")
        return _decoded(data, "<stdin>", "not UTF-8 or UTF-16 text")
    try:
        with open(filename, "rb") as handle:
            data = handle.read(INPUT_MAX_BYTES + 1)
    except OSError as exc:
        raise InvalidInput([f"{filename}: cannot read: {exc.strerror or exc}"]) from None
    _bounded(len(data), filename)
    return _decoded(data, filename, "not a text file")


def _decoded(data: bytes, source: str, refusal: str) -> str:
    """UTF-8, or UTF-16 where a byte-order mark says so, as `kubectl apply -f` reads: Windows PowerShell's
    `>` writes UTF-16 with a mark (a `kubectl get -o yaml > job.yaml` there was refused)."""
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # UTF-32-LE's mark begins as UTF-16-LE's
        raise InvalidInput([f"{source}: {refusal} (expected a YAML manifest)"])
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise InvalidInput([f"{source}: {refusal} (expected a YAML manifest)"]) from None


def _bounded(size: int, source: str) -> None:
    if size > INPUT_MAX_BYTES:
        raise InvalidInput(
            [
                f"{source}: larger than {INPUT_MAX_BYTES // 2**20} MiB, more than the API server takes in one request"
            ]
        )


class _RepeatedKeysRefused:
    """The loader's mappings checked for a key written twice as they are composed, before any merge key
    flattens one in place (a mapping merged into another then lists its merged keys beside its overrides)."""

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)  # type: ignore[misc]
        _refuse_repeated_keys(self, node)
        return node


def _kubectl_loader() -> Any:
    """PyYAML's safe loader reading numbers as kubectl does. kubectl's parser (sigs.k8s.io/yaml's
    goyaml.v2/resolve.go) drops every "_" and reads as an integer what Go's strconv.ParseInt(s, 0, 64) does:
    1_000, 0x1F, 0o17 and 017 (octal), 0b101, prefixes in capitals too; YAML 1.1's base 60 (PyYAML's 90 for
    `1:30`) stays a string, which the API server refuses; and `1e-1`, a string to YAML 1.1 (no dot), is 0.1.
    A whole float (`2.0`, `7.0e9`) is the integer the API server is sent (_go_json_number).
    Not matched: `08` (to Go the float 8) and a negative decimal below -2^63 (to Go a float)."""
    import yaml

    class Loader(_RepeatedKeysRefused, yaml.SafeLoader):
        """Also refuses aliases that expand past ALIASED_NODES_MAX nodes: a few hundred bytes of nested
        aliases stand for millions of nodes, which every later walk over the spec would visit."""

        aliased = 0
        sizes: dict[int, int]

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                anchored = self.anchors.get(event.anchor)
                if anchored is not None:
                    self.aliased += _expanded_size(anchored, self.__dict__.setdefault("sizes", {}))
                    if self.aliased > ALIASED_NODES_MAX:
                        raise yaml.composer.ComposerError(
                            None,
                            None,
                            f"its aliases expand to more than {ALIASED_NODES_MAX:,} nodes",
                            event.start_mark,
                        )
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            return _go_mapping(self, node, deep)

    int_tag, float_tag = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
    # Without YAML 1.1's int and float (both read base 60), timestamps (goyaml.v2 keeps `2024-01-01` a
    # string) and `=` (a "value" PyYAML cannot construct; a string to goyaml.v2).
    dropped = (int_tag, float_tag, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in dropped]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    # goyaml.v2's booleans are YAML 1.1's and also y, Y, n and N.
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
    Loader.bool_values = {**yaml.SafeLoader.bool_values, "y": True, "n": False}
    # A Go integer literal, with an "_" anywhere after its first character (a sign or a digit).
    integer = (
        r"0_*[bB]_*[01][01_]*|0_*[oO]_*[0-7][0-7_]*|0_*[xX]_*[0-9a-fA-F][0-9a-fA-F_]*|0[0-7_]*|[1-9][0-9_]*"
    )
    Loader.add_implicit_resolver(int_tag, re.compile(rf"^(?:[-+]_*)?(?:{integer})$"), list("-+0123456789"))
    Loader.add_constructor(int_tag, _go_int)
    # YAML 1.1's floats but base 60's, then exponents without a dot; tried after ints (0x1e5 is one).
    dotted = r"[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    special = r"[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
    number = r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+"
    for floats in (f"{dotted}|{special}", number):
        Loader.add_implicit_resolver(float_tag, re.compile(rf"^(?:{floats})$"), list("-+0123456789."))
    Loader.add_constructor(float_tag, _go_json_number)
    return Loader


def _go_mapping(loader: Any, node: Any, deep: bool) -> dict[Any, Any]:
    """sigs.k8s.io/yaml writes every key as a JSON string: `on:` is "true", `1:` is "1". Converted before the
    dict is built, where True and 1 would be one key."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = _go_key(loader.construct_object(key_node, deep=deep))
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


def _refuse_repeated_keys(loader: Any, node: Any) -> None:
    """A key written twice in one mapping as composed (a key given beside `<<` overrides the merged one:
    not a repetition). kubectl keeps the last without a word; a second `framework:` is more likely a slip
    than a choice, so it is refused with both lines."""
    import yaml

    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = _go_key(loader.construct_object(key_node))
        if key in seen:
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found {key!r} a second time (first on line {first}); kubectl would keep the last silently",
                key_node.start_mark,
            )
        seen[key] = key_node


def _go_key(key: Any) -> Any:
    """A mapping key as sigs.k8s.io/yaml's YAMLToJSON writes it: booleans and numbers as their text."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int | float):
        return str(key) if isinstance(key, int) else repr(key)
    return key


def _go_int(loader: Any, node: Any) -> int:
    import yaml

    plain = loader.construct_scalar(node).replace("_", "")
    digits = plain.lstrip("+-")
    try:  # Go's base 0 reads 017 as octal; Python's refuses it
        return int(plain, 8 if digits[:1] == "0" and digits[1:2].isdigit() else 0)
    except ValueError as exc:  # an explicit !!int that is none
        raise yaml.constructor.ConstructorError(None, None, str(exc), node.start_mark) from None


def _go_json_number(loader: Any, node: Any) -> float | int:
    """A YAML float as the API server receives it from kubectl, which sends YAML as JSON through Go's
    encoding/json: a whole float64 is written without a fraction (2.0 as `2`), read back as an int64. From
    1e21 Go writes an exponent, and past int64 the server keeps a float: both stay floats here."""
    return _go_float(loader.construct_yaml_float(node))


def _go_float(value: float) -> float | int:
    if math.isfinite(value) and value.is_integer() and -(2**63) <= value < 2**63:
        return int(value)
    return value


def _expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """The nodes `node` stands for, aliases expanded (each distinct node counted once, by identity)."""
    import yaml

    known = sizes.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(key, sizes) + _expanded_size(value, sizes) for key, value in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


def _without_nulls(spec: Any) -> Any:
    """The spec as the API server stores it: a null (`training:` with nothing after it, an empty `limits:` or
    label value in the pod template) is dropped before defaulting wherever the CRD gives the field a schema,
    since none is nullable (apiextensions' PruneNonNullableNullsWithoutDefaults); a dropped field then takes
    the model's default, which is the CRD's. A null under a key the CRD does not name stays as written."""
    from kubefit.api.crd import openapi_schema

    return _nulls_dropped(spec, openapi_schema()["properties"]["spec"])


def _nulls_dropped(value: Any, schema: dict[str, Any] | None) -> Any:
    if schema is None:  # under a key the CRD does not name, the API server drops no null
        return value
    if isinstance(value, list):
        return [_nulls_dropped(item, schema.get("items")) for item in value]
    if not isinstance(value, dict):
        return value
    kept: dict[Any, Any] = {}
    for key, item in value.items():
        field = field_schema(schema, key)
        if item is not None or field is None or field.get("nullable"):
            kept[key] = _nulls_dropped(item, field)
    return kept


_JSON_TEXT = re.compile(r"[^ \t\n\r]")  # past JSON's whitespace


def _documents(text: str, source: str) -> list[Any]:
    """The documents of `text` as kubectl reads them (apimachinery's YAMLOrJSONDecoder): text that starts
    with `{` is JSON values, one after another (PyYAML refuses tab-indented JSON), and from the first that
    does not parse, YAML: kubectl takes JSON followed by `---` and YAML, or JSON that is only valid YAML."""
    import json

    decoder = json.JSONDecoder(parse_float=lambda number: _go_float(float(number)), parse_constant=_not_json)
    documents: list[Any] = []
    at = _past_json_space(text, 0)
    if not text.startswith("{", at):
        return _yaml_documents(text, source)
    while at < len(text):
        try:
            document, at = decoder.raw_decode(text, at)
        except ValueError as exc:  # JSONDecodeError, or NaN/Infinity: not JSON to Go, strings to YAML
            if documents:  # the rest as YAML, its lines and columns where they are in the file
                return documents + _yaml_documents(re.sub(r"[^\n]", " ", text[:at]) + text[at:], source)
            try:
                return _yaml_documents(text, source)
            except InvalidInput:
                raise _json_error(exc, source) from None
        documents.append(document)
        at = _past_json_space(text, at)
    return documents


def _past_json_space(text: str, at: int) -> int:
    found = _JSON_TEXT.search(text, at)
    return found.start() if found else len(text)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_error(exc: ValueError, source: str) -> InvalidInput:
    import json

    if isinstance(exc, json.JSONDecodeError):
        return InvalidInput([f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"])
    return InvalidInput([f"{source}: not valid JSON: {exc}"])


def _yaml_documents(text: str, source: str) -> list[Any]:
    import yaml

    try:
        return list(yaml.load_all(text, Loader=_kubectl_loader()))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput([f"{source}: not valid YAML{at}: {problem}"]) from None


def load_training_job(text: str, source: str) -> dict[str, Any]:
    """The one TrainingJob document in `text`, checked for apiVersion and kind, its spec as the API server
    would store it (_without_nulls)."""
    try:
        documents = [document for document in _documents(text, source) if document is not None]
    except RecursionError:  # PyYAML's composer and json recurse once or more per level
        raise InvalidInput([f"{source}: nested too deeply to read"]) from None
    documents = _unlisted(documents)
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
    return {**manifest, "spec": _without_nulls(manifest["spec"])}


def _unlisted(documents: list[Any]) -> list[Any]:
    """The documents with each `kind: List` (`kubectl get trainingjobs -o yaml`) replaced by its items, as
    kubectl apply reads them."""
    unlisted: list[Any] = []
    for document in documents:
        is_list = isinstance(document, dict) and document.get("kind") == "List"
        if is_list and isinstance(document.get("items"), list):
            unlisted.extend(item for item in document["items"] if item is not None)
        else:
            unlisted.append(document)
    return unlisted


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


def render_table(  # noqa: PLR0913 - the job, its sizing, and what it was planned against
    manifest: dict[str, Any],
    spec: Any,
    job_sizing: Any,
    suggestions: list[Any] | None,
    inventory: Any = None,
    kept_on: str | None = None,
) -> str:
    sizing = job_sizing.sizing
    lines = _summary_lines(manifest, spec, job_sizing) + _context_lines(job_sizing, inventory, kept_on)
    lines += _breakdown_lines(sizing)
    if sizing.warnings:
        lines += ["", "  warnings"]
        lines += [f"    - {warning}" for warning in sizing.warnings]
    if suggestions is not None:
        lines += _suggestion_lines(suggestions)
    return "\n".join(lines) + "\n"


def _summary_lines(manifest: dict[str, Any], spec: Any, job_sizing: Any) -> list[str]:
    sizing = job_sizing.sizing
    metadata = manifest.get("metadata") or {}
    name = metadata.get("name") or "(unnamed)"
    namespace = metadata.get("namespace")
    title = f"{KIND} {namespace}/{name}" if namespace else f"{KIND} {name}"
    usable = sizing.device_memory_bytes * (1 - spec.resources.memory_headroom)
    workers = job_sizing.evaluated_workers
    per_worker = sizing.accelerators_per_worker
    verdict = "fits" if sizing.fits else "DOES NOT FIT"
    if sizing.fits or sizing.min_workers > workers:
        needs = f"memory needs at least {_count(sizing.min_workers, 'worker')} (minWorkers)"
    else:
        needs = "no worker count fits as configured (see warnings)"
    runs, devices, elastic = _count(workers, "worker"), _count(per_worker * workers, "device"), []
    bounds = worker_bounds(spec, sizing)
    if not sizing.fits and bounds.feasible and spec.resources.fit_policy == "Warn":
        verdict += " (fitPolicy Warn: the workers start anyway)"
    if not bounds.feasible:
        # More workers than the spec allows are needed: the operator starts none (TooFewWorkers). Memory's
        # need is judged at the most workers allowed (fits false); a minReplicas rounded up to whole
        # TP x PP groups can be above the ceiling while memory fits.
        needs += f", more than the spec allows ({bounds.ceiling})"
        verdict = f"{verdict}; no worker starts ({Reason.TOO_FEW_WORKERS}; see warnings)"
    if spec.elastic.enabled and bounds.feasible and bounds.floor != bounds.desired:
        # An elastic job runs anything from its floor to its desired count: say so, and which was sized.
        runs = f"{bounds.floor}-{bounds.desired} workers"
        devices = f"up to {_count(per_worker * bounds.desired, 'device')}"
        elastic = [
            f"  elastic       sized at {_count(workers, 'worker')}: the count where each device holds most"
        ]
    return [
        title,
        f"  accelerator   {sizing.accelerator} ({sizing.resource_name}), "
        f"{format_gib(sizing.device_memory_bytes)} per device",
        f"  layout        {per_worker} per worker x {runs} = {devices}; {needs}",
        *elastic,
        f"  per device    {format_gib(sizing.per_device_bytes)} estimated, {format_gib(usable)} usable "
        f"({spec.resources.memory_headroom:.0%} headroom): {verdict}",
    ]


def _context_lines(job_sizing: Any, inventory: Any, kept_on: str | None = None) -> list[str]:
    """Where the plan was made, and the host memory a worker needs for offloaded state. The cluster's nodes
    are counted for the chosen accelerator: the others' devices are none the workers could use."""
    if inventory is None:
        lines = ["  cluster       not consulted: planned against the whole catalog (--cluster: the live one)"]
    else:
        accelerator = job_sizing.sizing.accelerator
        usable = [node for node in inventory.placeable if node.accelerator == accelerator]
        ruled_out = sum(node.accelerator == accelerator for node in inventory.excluded)
        line = (
            f"  cluster       {_count(len(usable), f'{accelerator} node')} the workers may use "
            f"({sum(node.free for node in usable)} of {sum(node.allocatable for node in usable)} devices "
            f"free), {ruled_out} ruled out by their placement"
        )
        others = len(inventory.placeable) - len(usable)
        if kept_on is not None:
            line += "; kept on it, as the operator keeps it: the job's workers run there"
        elif others:
            line += f"; {_count(others, 'node')} of other accelerators"
        lines = [line]
    if job_sizing.host_bytes_per_worker:
        lines.append(
            f"  host memory   {format_gib(job_sizing.host_bytes_per_worker)} per worker of offloaded "
            "state, added to the pod's default memory request"
        )
    return lines


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


def _as_written(manifest: Mapping[str, Any], spec: TrainingJobSpec) -> TrainingJobSpec:
    """`spec` with the acceleratorsPerWorker the manifest gives: a count held from the running workers
    (--cluster) is their `auto`, which suggestions plan afresh."""
    from kubefit.sizing.remedies import replace_field

    resources = (manifest.get("spec") or {}).get("resources") or {}
    written = resources.get("acceleratorsPerWorker", "auto") if isinstance(resources, Mapping) else "auto"
    if written == "auto" and spec.resources.accelerators_per_worker != "auto":
        return replace_field(spec, "resources.acceleratorsPerWorker", "auto")
    return spec


def size(args: argparse.Namespace, stdout: TextIO, stdin: TextIO | None = None) -> int:
    from kubefit.decisions.job import operator_check
    from kubefit.sizing.suggest import suggest

    if args.context is not None and not args.cluster:
        raise InvalidInput(["--context: only used with --cluster"])
    source = "<stdin>" if args.filename == "-" else args.filename
    manifest = load_training_job(read_text(args.filename, stdin), source)
    catalog = _catalog(args.catalog)
    name, namespace = _job_identity(manifest, catalog, args)
    # The operator's checks first, without the cluster (no advice, little work): an invalid job exits 2
    # naming the field even where the cluster cannot be read.
    spec, job_sizing = _size(manifest, catalog, None, args, (name, namespace), advise=not args.cluster)
    inventory, kept_on = None, None
    if args.cluster:
        namespace, kept = _on_the_cluster(manifest, catalog, args, (name, namespace))
        inventory, kept_on = kept.inventory, kept.kept_on
        spec, job_sizing = _size(manifest, catalog, inventory, args, (name, namespace), running=kept.running)
    check = operator_check(name, args.max_workers_per_job, _domain(namespace, args.cluster_domain))
    suggestions = suggest(_as_written(manifest, spec), catalog, check) if args.suggest else None

    if args.output == "table":
        _emit(stdout, render_table(manifest, spec, job_sizing, suggestions, inventory, kept_on))
        return EXIT_OK
    document: Any = job_sizing.sizing.model_dump(by_alias=True, mode="json")
    if suggestions is not None:
        document = {"sizing": document, "suggestions": [suggestion.to_dict() for suggestion in suggestions]}
    _emit(stdout, render_data(document, args.output))
    return EXIT_OK


def _emit(stdout: TextIO, text: str) -> None:
    """Writes and flushes `text`: a write error is raised here, not at the interpreter's exit, and is the
    output's (OutputError), not an internal one. A closed pipe stays BrokenPipeError (run_size: quiet)."""
    try:
        stdout.write(text)
        stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(exc.strerror or str(exc)) from exc


def _catalog(catalog_file: str | None) -> Any:
    from kubefit.sizing.catalog import CatalogError, load_catalog

    try:
        return load_catalog(catalog_file)
    except CatalogError as exc:
        raise InvalidInput([str(exc)]) from None


def _job_identity(
    manifest: dict[str, Any], catalog: Any, args: argparse.Namespace
) -> tuple[str | None, str | None]:
    """metadata.name and metadata.namespace, None when absent (an empty namespace too: kubectl then takes
    the context's). A value that is not a string is refused naming the field, as the API server refuses it
    (a number was taken for no name, and the name's checks skipped), with the spec's errors in one answer."""
    metadata = manifest.get("metadata") or {}
    errors = [
        f"metadata.{field}: must be a string, got {type(value).__name__} {value!r}"
        for field in ("name", "namespace")
        if (value := metadata.get(field)) is not None and not isinstance(value, str)
    ]
    namespace = metadata.get("namespace")
    if isinstance(namespace, str) and namespace and not NAMESPACE_PATTERN.fullmatch(namespace):
        # It names the workers' DNS domain, which the rendezvous check reads: the API server refuses it.
        errors.append(
            "metadata.namespace: must be a DNS label (lowercase letters, digits and '-', beginning and ending "
            "with a letter or digit, at most 63 characters)"
        )
    if errors:
        try:
            _size(manifest, catalog, None, args, (None, None), advise=False)
        except InvalidInput as more:
            errors += more.lines
        raise InvalidInput(errors)
    return metadata.get("name"), metadata.get("namespace") or None


def _domain(namespace: str | None, cluster_domain: str) -> str | None:
    """The workers' DNS domain (decisions.job.host_domain); None, and no FQDN check, without a namespace."""
    from kubefit.decisions.job import host_domain

    return None if namespace is None else host_domain(namespace, cluster_domain)


def _size(  # noqa: PLR0913 - the job, the flags, and what its running workers keep
    manifest: dict[str, Any],
    catalog: Any,
    inventory: Any,
    args: argparse.Namespace,
    job: tuple[str | None, str | None],
    advise: bool = True,
    running: Any = None,
) -> tuple[Any, Any]:
    """The operator's own checks and sizing path (decisions.job.checked_spec) for the job (name, namespace):
    what it would mark InvalidSpec is refused here too, naming every field at fault, the name's among them
    (with a namespace, the length of the workers' FQDN too)."""
    from kubefit.api.validation import InvalidSpec
    from kubefit.decisions.job import checked_spec

    name, namespace = job
    try:
        return checked_spec(
            name,
            manifest["spec"],
            catalog,
            args.max_workers_per_job,
            inventory,
            domain=_domain(namespace, args.cluster_domain),
            advise=advise,
            running=running,
            strict=True,  # a file: a field the CRD does not name is a typo, as kubectl's validation says
        )
    except InvalidSpec as exc:
        raise InvalidInput([str(error) for error in exc.errors]) from None


def _on_the_cluster(
    manifest: dict[str, Any], catalog: Any, args: argparse.Namespace, job: tuple[str | None, str | None]
) -> tuple[str, Any]:
    """The job's namespace (the context's when the manifest names none) and the live inventory, with the
    accelerator and the device count the job's running workers keep (cluster_inventory.KeptInventory). A
    job the context's namespace makes invalid (its workers' FQDN) is refused before the cluster is listed."""
    from kubefit.cli.cluster_inventory import ClusterUnreadable, connect, read_inventory

    name, namespace = job
    try:
        connection = connect(args.context)
        if namespace is None:
            namespace = connection.namespace
            _size(manifest, catalog, None, args, (name, namespace), advise=False)
        kept = read_inventory(connection, manifest, catalog, namespace)
    except ClusterUnreadable as exc:
        raise ClusterError(f"--cluster: {exc}") from None
    return namespace, kept


def run_size(args: argparse.Namespace) -> int:
    """Handler of `kubefit size`: exit 0 when estimated, 2 for invalid input, 3 when --cluster cannot read the
    cluster, 1 for internal errors."""
    try:
        return size(args, sys.stdout)
    except BrokenPipeError:  # e.g. `kubefit size ... | head`: the reader left, nothing more to say
        _discard_stdout()
        return EXIT_OK
    except OutputError as exc:  # e.g. `kubefit size ... > /dev/full`
        _discard_stdout()
        print(f"error: cannot write the output: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except InvalidInput as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_INVALID
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CLUSTER
    except Exception as exc:  # noqa: BLE001 - the command promises one line, never a traceback
        print(
            f"error: internal error while sizing ({type(exc).__name__}: {exc}); please report it",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _discard_stdout() -> None:
    """Standard output to /dev/null: what is still buffered would fail again at the interpreter's exit."""
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
