"""The accelerator catalog: names, driver-reported memory, extended resource and node labels.

Built-in entries live in `accelerators.yaml` beside this module. Operators extend or override the
catalog without a release through a file of the same shape (Helm value `catalog`, mounted from a
ConfigMap; the `KUBEFIT_CATALOG` environment variable; `kubefit size --catalog`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

import yaml

from kubefit.api.models import MAX_ACCELERATORS_PER_WORKER
from kubefit.api.units import MIB

BUILTIN_CATALOG = Path(__file__).with_name("accelerators.yaml")
NAME_MAX = 63  # spec.resources.accelerator's maxLength (api/models.py), a label value's
NAME_PATTERN = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")  # a label value's
# A pod's extended resource name: a DNS subdomain prefix and a qualified name (Kubernetes' IsQualifiedName).
RESOURCE_NAME_PATTERN = re.compile(
    r"(?=[^/]{1,253}/)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/(?=[^/]{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
MEMORY_MIB_MAX = 2**30  # 1 PiB: the bytes stay far inside the status's int64
ENTRY_KEYS = frozenset(
    {"name", "vendor", "memoryMiB", "resourceName", "perNode", "nodeLabels", "match", "bf16", "fp8"}
)
CATALOG_ENV = "KUBEFIT_CATALOG"

# GKE keeps cloud.google.com/gke-accelerator on a node whose GPUs it partitions (multi-instance GPU) or shares
# (time-sharing, NVIDIA MPS), and advertises each partition or share as one nvidia.com/gpu: 7 for an A100
# split 1g.5gb. GKE docs: how-to/gpus-multi (gke-gpu-partition-size), concepts/timesharing-gpus and
# how-to/nvidia-mps-gpus (gke-gpu-sharing-strategy: time-sharing or mps, gke-max-shared-clients-per-gpu).
# A label set identifies a node carrying one of these only if it names that label itself, so a whole-GPU
# entry neither counts nor sizes for slices (as GFD's renamed MIG and shared products are not matched
# either), and an operator's own entry for the partitions can still name them.
SHARED_GPU_LABELS = (
    "cloud.google.com/gke-gpu-partition-size",
    "cloud.google.com/gke-gpu-sharing-strategy",
    "cloud.google.com/gke-max-shared-clients-per-gpu",
)

TPU_RESOURCE = "google.com/tpu"  # GKE's TPU device plugin

# GKE labels each TPU node with its slice's topology (chips per dimension, "2x4", "2x2x1"). A slice of more
# chips than its node offers spans several hosts: libtpu on one of them waits for the others (pytorch/xla
# issue 7714), and kubefit forms no multi-host slice (docs/operator.md, "TPUs"), so such a node is not used.
TPU_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
# GKE's single-host TPU slice topologies and their chips (GKE docs, "Plan TPUs in GKE": v5e and v6e 1x1,
# 2x2, 2x4 on 1-, 4- and 8-chip machine types; v4 and v5p 2x2x1 on a 4-chip one).
SINGLE_HOST_TOPOLOGIES = {"1x1": 1, "2x2": 4, "2x2x1": 4, "2x4": 8}
# The hosts of GKE's multi-host slices: 4 chips each, of these machine types. A 2x4 node is a whole slice
# on a ct5lp-hightpu-8t and half of one on a ct5lp-hightpu-4t; only the machine type tells them apart.
MULTI_HOST_CHIPS_PER_HOST = 4
MULTI_HOST_MACHINE_TYPES = ("ct4p-hightpu-4t", "ct5lp-hightpu-4t", "ct5p-hightpu-4t", "ct6e-standard-4t")


class SliceTopologies(NamedTuple):
    """The gke-tpu-topology values of the single-host slices that hold a TPU worker."""

    single_host: tuple[str, ...]  # only ever a whole slice, or a node without room for the worker
    shared: tuple[str, ...]  # also a multi-host slice's host with room for it: told apart by machine type


def topology_chips(labels: Mapping[str, str]) -> int | None:
    """The chips of the TPU slice the node's gke-tpu-topology label describes; None without a readable one."""
    dimensions = labels.get(TPU_TOPOLOGY_LABEL, "").split("x")
    if not all(dimension.isdigit() for dimension in dimensions):
        return None
    return math.prod(int(dimension) for dimension in dimensions)


def is_multi_host_slice_host(labels: Mapping[str, str], chips: int) -> bool:
    """The node, offering `chips` TPU chips, is one host of a slice of more chips (its topology label)."""
    slice_chips = topology_chips(labels)
    return slice_chips is not None and slice_chips > chips


def slice_topologies(chips_per_worker: int) -> SliceTopologies:
    """The single-host topologies of at least `chips_per_worker` chips, split by whether a multi-host slice's
    host (4 chips) with room for the worker may carry the same one."""
    fitting = sorted(
        topology for topology, chips in SINGLE_HOST_TOPOLOGIES.items() if chips >= chips_per_worker
    )
    shared = [
        topology
        for topology in fitting
        if SINGLE_HOST_TOPOLOGIES[topology] > MULTI_HOST_CHIPS_PER_HOST >= chips_per_worker
    ]
    return SliceTopologies(tuple(t for t in fitting if t not in shared), tuple(shared))


class CatalogError(ValueError):
    """A catalog file that cannot be used; the message names the entry and field."""


@dataclass(frozen=True)
class Accelerator:
    name: str
    vendor: str  # descriptive only: what a device needs is read from resource_name
    memory_bytes: int  # as the driver reports it
    resource_name: str  # extended resource, e.g. nvidia.com/gpu
    per_node: tuple[int, ...]  # device counts a worker may request on one node
    node_labels: Mapping[str, str] = field(default_factory=dict)  # labels a node of this kind carries
    match: tuple[Mapping[str, str], ...] = ()  # alternative label sets that identify it
    # Arithmetic the device has; None: not stated (bf16 assumed, FP8 not), or the replaced entry's (extended).
    bf16: bool | None = None
    fp8: bool | None = None

    @property
    def has_bf16(self) -> bool:
        return self.bf16 is not False

    @property
    def has_fp8(self) -> bool:
        return self.fp8 is True

    @property
    def is_tpu(self) -> bool:
        """A Cloud TPU chip (GKE's device plugin resource), whatever the entry's `vendor` says."""
        return self.resource_name == TPU_RESOURCE

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(term_matches(term, labels) for term in self.match)


def worker_topologies(accelerator: Accelerator, chips_per_worker: int) -> SliceTopologies | None:
    """slice_topologies for a worker of a TPU accelerator; None for any other accelerator."""
    return slice_topologies(chips_per_worker) if accelerator.is_tpu else None


def absent_labels(term: Mapping[str, str]) -> tuple[str, ...]:
    """The labels a node must not carry for the label set `term` to identify it: the GPU partition and
    sharing labels (SHARED_GPU_LABELS) it does not name. The workers' node affinity says the same."""
    return tuple(key for key in SHARED_GPU_LABELS if key not in term)


def term_matches(term: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """The node labels `labels` carry every label of `term`, and none of its absent_labels."""
    return all(labels.get(key) == value for key, value in term.items()) and not any(
        key in labels for key in absent_labels(term)
    )


def _whole(value: Any) -> TypeGuard[int]:
    """An integer, not a boolean (YAML's `true` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_name(raw: Any, source: str) -> str:
    """Where an entry is, for its errors ("catalog: accelerators[NAME]"), once its name and keys are good."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{source}: each entry of accelerators must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{source}: an entry has no name")
    where = f"{source}: accelerators[{name}]"
    if len(name) > NAME_MAX:
        raise CatalogError(
            f"{where}: the name is longer than {NAME_MAX} characters, the most spec.resources.accelerator takes"
        )
    if not NAME_PATTERN.fullmatch(name) or name == "auto":
        raise CatalogError(
            f"{where}: the name must be letters, digits, '-', '_' and '.', beginning and ending with a letter "
            "or digit, and not auto (spec.resources.accelerator's word for the planner's choice)"
        )
    unknown = sorted(str(key) for key in raw if key not in ENTRY_KEYS)
    if unknown:
        # A misspelt key (perNodes, fp-8) was dropped for its default: a layout nobody wrote.
        raise CatalogError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(ENTRY_KEYS))})")
    return where


def _entry(raw: Any, source: str) -> Accelerator:
    where = _entry_name(raw, source)
    memory = raw.get("memoryMiB")
    if not _whole(memory) or not 0 < memory <= MEMORY_MIB_MAX:
        raise CatalogError(
            f"{where}.memoryMiB must be a positive integer (MiB as the driver reports it), at most "
            f"{MEMORY_MIB_MAX:,} (1 PiB)"
        )
    resource = raw.get("resourceName")
    if not isinstance(resource, str) or not RESOURCE_NAME_PATTERN.fullmatch(resource):
        raise CatalogError(
            f"{where}.resourceName must be an extended resource such as nvidia.com/gpu (a DNS subdomain, "
            "'/', and a name of letters, digits, '-', '_' and '.')"
        )
    per_node = raw.get("perNode", [1, 2, 4, 8])
    if (
        not isinstance(per_node, list)
        or not per_node
        or not all(_whole(n) and 0 < n <= MAX_ACCELERATORS_PER_WORKER for n in per_node)
    ):
        raise CatalogError(
            f"{where}.perNode must be a list of integers from 1 to {MAX_ACCELERATORS_PER_WORKER}, the most "
            "spec.resources.acceleratorsPerWorker takes"
        )
    labels = raw.get("nodeLabels", {}) or {}
    match = raw.get("match") or ([labels] if labels else [])
    if (
        not isinstance(labels, dict)
        or not isinstance(match, list)
        or not all(isinstance(t, dict) for t in match)
    ):
        raise CatalogError(f"{where}.nodeLabels must be a mapping and match a list of mappings")
    if not all(match):
        # The scheduling pass would count every node for an empty label set, where the node-selector term
        # it becomes selects none: the workers would never be placed.
        raise CatalogError(f"{where}.match: each label set needs at least one label")
    return Accelerator(
        **_arithmetic(raw, where),
        name=raw["name"],
        vendor=str(raw.get("vendor", "unknown")),
        memory_bytes=memory * MIB,
        resource_name=resource,
        per_node=tuple(sorted(set(per_node))),
        node_labels={str(k): str(v) for k, v in labels.items()},
        match=tuple({str(k): str(v) for k, v in term.items()} for term in match),
    )


def _arithmetic(raw: Mapping[str, Any], where: str) -> dict[str, bool | None]:
    """The entry's `bf16` and `fp8` keys, None where it leaves one out."""
    stated: dict[str, bool | None] = {}
    for key in ("bf16", "fp8"):
        value = raw.get(key)
        if value is not None and not isinstance(value, bool):
            raise CatalogError(
                f"{where}.{key} must be true or false (whether the device has {key} arithmetic)"
            )
        stated[key] = value
    return stated


def _inherit(added: Accelerator, replaced: Accelerator | None) -> Accelerator:
    """`added` with the arithmetic it leaves unstated taken from the entry of its name it replaces."""
    if replaced is None:
        return added
    return replace(
        added,
        bf16=replaced.bf16 if added.bf16 is None else added.bf16,
        fp8=replaced.fp8 if added.fp8 is None else added.fp8,
    )


def parse_catalog(text: str, source: str = "catalog") -> list[Accelerator]:
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        # One line, with where (as `kubefit size -f` reports a manifest's): the error's text spans five.
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise CatalogError(f"{source}: not valid YAML{at}: {problem}") from None
    entries = document.get("accelerators") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise CatalogError(f"{source}: expected a top-level 'accelerators' list")
    return [_entry(raw, source) for raw in entries]


class Catalog:
    """An ordered, name-indexed set of accelerators.

    Identification tries the entries an operator's catalog file added or replaced (`extended`) before the
    others, so that an entry of one's own wins over a built-in whose labels the node also carries.
    """

    def __init__(self, accelerators: Iterable[Accelerator], first: Iterable[str] = ()):
        self._by_name: dict[str, Accelerator] = {}
        for accelerator in accelerators:
            self._by_name[accelerator.name] = accelerator  # later entries override earlier ones
        # A catalog made from another (RememberingCatalog) keeps its order of identification.
        kept = accelerators._first if isinstance(accelerators, Catalog) else ()
        self._first: tuple[str, ...] = tuple(
            dict.fromkeys(name for name in (*first, *kept) if name in self._by_name)
        )
        self._identify_order = (
            *(self._by_name[name] for name in self._first),
            *(accelerator for name, accelerator in self._by_name.items() if name not in self._first),
        )

    def __iter__(self) -> Iterator[Accelerator]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Accelerator | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def identify(self, labels: Mapping[str, str]) -> Accelerator | None:
        """The accelerator a node carries, from its labels (GFD, GKE, AMD labeller): the first entry that
        matches, an extra catalog's entries (in their file's order) before the built-in ones."""
        for accelerator in self._identify_order:
            if accelerator.matches(labels):
                return accelerator
        return None

    def extended(self, extra: Iterable[Accelerator]) -> Catalog:
        """This catalog with `extra` added, an entry of the same name replacing the one here; `extra`'s
        entries are identified first, the latest extension's before an earlier one's."""
        added = [_inherit(entry, self._by_name.get(entry.name)) for entry in extra]
        first = [*(entry.name for entry in added), *self._first]
        return Catalog([*self._by_name.values(), *added], first=first)


# An accelerator catalog is a few kilobytes; the built-in one is under 20 KiB.
CATALOG_MAX_BYTES = 2**20


@lru_cache(maxsize=8)
def _load(extra_path: str | None) -> Catalog:
    catalog = Catalog(parse_catalog(BUILTIN_CATALOG.read_text(), str(BUILTIN_CATALOG.name)))
    if extra_path:
        try:
            with Path(extra_path).open("rb") as file:
                raw = file.read(CATALOG_MAX_BYTES + 1)  # bounded: /dev/zero named here is no catalog
            # UTF-8, not the locale's: the same file reads the same anywhere
            text = raw.decode("utf-8") if len(raw) <= CATALOG_MAX_BYTES else None
        except OSError as exc:
            raise CatalogError(f"{extra_path}: cannot read catalog file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CatalogError(f"{extra_path}: not UTF-8 text (expected a YAML catalog)") from None
        if text is None:
            raise CatalogError(
                f"{extra_path}: larger than {CATALOG_MAX_BYTES // 2**20} MiB (expected a YAML catalog)"
            )
        catalog = catalog.extended(parse_catalog(text, extra_path))
    return catalog


def load_catalog(extra_path: str | None = None) -> Catalog:
    """The built-in catalog, extended by `extra_path` or else by the file named in $KUBEFIT_CATALOG."""
    return _load(extra_path or os.environ.get(CATALOG_ENV) or None)
