"""The shape of spec.template the operator relies on, checked before any pod is built.

The template is a PodTemplateSpec that passes through to every worker pod. Only what the pod builder
reads (operator/kubefit/builders/) is typed here: the containers (the first is the trainer, whose env,
ports, resources and volumeMounts are merged with the operator's), volumes, metadata labels and
annotations, nodeSelector, affinity (node affinity's required and preferred terms), tolerations and
terminationGracePeriodSeconds; nodeName is refused (it would bypass the placement the operator counts). A wrong type there is refused naming the field,
instead of crashing the builder or failing every pod create. The rest of the pod spec passes through as
written and the API server checks it when the pod is created; of the metadata, only labels and
annotations are kept (builders/pods.py _metadata). Each object stays open (extra fields allowed), and
the CRD marks it x-kubernetes-preserve-unknown-fields, so nothing the user writes is pruned.

Patterns and lengths follow Kubernetes' own validation (k8s.io/apimachinery/pkg/util/validation).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, NotRequired

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, with_config
from typing_extensions import TypedDict

from kubefit.api.quantity import QUANTITY_PATTERN, echo, int_or_string, is_quantity

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL_MAX = 63
# A label value: empty, or up to 63 alphanumerics with '-', '_' or '.' inside (IsValidLabelValue).
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_VALUE_MAX = 63
# A qualified name: an optional DNS-subdomain prefix and '/', then a name of up to 63 (IsQualifiedName).
_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_PREFIX_MAX = 253

_OPEN = ConfigDict(extra="allow", strict=True)


def _dns_label(value: str) -> str:
    if not re.fullmatch(DNS_LABEL_PATTERN, value) or len(value) > DNS_LABEL_MAX:
        raise ValueError(
            f"{echo(value)} is not a DNS-1123 label: at most {DNS_LABEL_MAX} lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _label_keys(labels: dict[str, str] | None) -> dict[str, str] | None:
    for key in labels or {}:
        prefix, _, name = key.rpartition("/")
        if not _QUALIFIED_NAME.fullmatch(key) or len(prefix) > _PREFIX_MAX or len(name) > DNS_LABEL_MAX:
            raise ValueError(
                f"label key {echo(key)} is not a qualified name: an optional DNS prefix and '/', then at most "
                f"{DNS_LABEL_MAX} letters, digits, '-', '_' or '.' starting and ending with a letter or digit"
            )
    return labels


def _quantity(value: int | str) -> int | str:
    if not is_quantity(value):
        raise ValueError(
            f"{echo(value)} is not a Kubernetes quantity (e.g. '8', '500m', '16Gi', no spaces, not negative)"
        )
    return value


def _unique_names(containers: list[Container]) -> list[Container]:
    seen: set[str] = set()
    for index, container in enumerate(containers):
        if container["name"] in seen:
            raise ValueError(f"[{index}].name: duplicate container name {echo(container['name'])}")
        seen.add(container["name"])
    return containers


DnsLabel = Annotated[
    str,
    AfterValidator(_dns_label),
    Field(json_schema_extra={"pattern": DNS_LABEL_PATTERN, "maxLength": DNS_LABEL_MAX}),
]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=LABEL_VALUE_MAX)]
# One value checked at a time, so that an error names its resource (requests.cpu).
Quantity = Annotated[
    int | str,
    BeforeValidator(lambda value: int_or_string(value, "'0.5' or '500m'")),
    AfterValidator(_quantity),
]
QuantityMap = Annotated[
    dict[str, Quantity],
    Field(
        json_schema_extra={
            # minimum: the API server refuses a negative integer at apply, as the pattern a negative string
            "additionalProperties": {
                "x-kubernetes-int-or-string": True,
                "pattern": QUANTITY_PATTERN,
                "minimum": 0,
            }
        }
    ),
]


@with_config(_OPEN)
class EnvVar(TypedDict):
    name: Annotated[str, Field(min_length=1, description="Variable name.")]
    value: NotRequired[Annotated[str, Field(description="Variable value (a string).")]]


@with_config(_OPEN)
class ContainerPort(TypedDict):
    containerPort: Annotated[int, Field(ge=1, le=65535, description="Port number, 1 to 65535.")]


@with_config(_OPEN)
class VolumeMount(TypedDict):
    name: Annotated[str, Field(description="Name of the pod volume to mount.")]
    mountPath: Annotated[str, Field(description="Path in the container to mount it at.")]


@with_config(_OPEN)
class Volume(TypedDict):
    name: Annotated[str, Field(description="Volume name, which volumeMounts refer to.")]


@with_config(_OPEN)
class ResourceRequirements(TypedDict, total=False):
    requests: Annotated[QuantityMap, Field(description="Requested resources, as Kubernetes quantities.")]
    limits: Annotated[QuantityMap, Field(description="Resource limits, as Kubernetes quantities.")]


@with_config(_OPEN)
class Container(TypedDict):
    name: Annotated[DnsLabel, Field(description="Container name, a DNS-1123 label, unique in the pod.")]
    image: NotRequired[Annotated[str, Field(description="Container image.")]]
    env: NotRequired[
        Annotated[
            list[EnvVar] | None,
            Field(
                description="Environment variables. In the first container the operator's (MASTER_ADDR, "
                "RANK, ...) come first, so these can refer to them as $(MASTER_ADDR); one of them given "
                "here keeps the value given here (and so does its torchrun twin, MASTER_PORT and "
                "PET_MASTER_PORT say), except PET_RDZV_CONF, whose options are merged with the "
                "operator's: those given here win, but is_host stays the operator's (1 on worker 0 only)."
            ),
        ]
    ]
    ports: NotRequired[
        Annotated[
            list[ContainerPort] | None,
            Field(
                description="Ports. The first container also gets the rendezvous port 29500 unless "
                "framework is none or it lists that port."
            ),
        ]
    ]
    volumeMounts: NotRequired[
        Annotated[
            list[VolumeMount] | None,
            Field(
                description="Volume mounts. The first container also gets the volume kubefit-shm mounted "
                "at /dev/shm unless one of its mounts is at /dev/shm or spec.volumes has a volume of that "
                "name."
            ),
        ]
    ]
    resources: NotRequired[
        Annotated[
            ResourceRequirements | None,
            Field(
                description="Resources. Every accelerator resource of the catalog (nvidia.com/gpu, "
                "amd.com/gpu, google.com/tpu, ...), the chosen one included, is taken out of every "
                "container's requests and limits; the first container then gets the sizing's accelerator "
                "count as its request and limit, and its cpu and memory requests filled in (see "
                "spec.resources). Other extended resources (EFA, RDMA) pass through."
            ),
        ]
    ]


@with_config(_OPEN)
class NodeSelectorTerm(TypedDict, total=False):
    matchExpressions: Annotated[list[dict[str, Any]] | None, Field(description="Node label requirements.")]
    matchFields: Annotated[list[dict[str, Any]] | None, Field(description="Node field requirements.")]


@with_config(_OPEN)
class NodeSelector(TypedDict, total=False):
    nodeSelectorTerms: Annotated[
        list[NodeSelectorTerm] | None,
        Field(description="Terms, ORed; the operator ANDs each with the accelerator's node labels."),
    ]


@with_config(_OPEN)
class NodeAffinity(TypedDict, total=False):
    requiredDuringSchedulingIgnoredDuringExecution: Annotated[
        NodeSelector | None, Field(description="Required node affinity, merged with the accelerator's.")
    ]
    preferredDuringSchedulingIgnoredDuringExecution: Annotated[
        list[dict[str, Any]] | None,
        Field(
            description="Preferred terms (weight and preference), kept; the operator appends one for the "
            "nodes the scheduling pass reserved for a new worker."
        ),
    ]


@with_config(_OPEN)
class Affinity(TypedDict, total=False):
    nodeAffinity: Annotated[NodeAffinity | None, Field(description="Node affinity.")]


@with_config(_OPEN)
class Toleration(TypedDict, total=False):
    key: Annotated[str, Field(description="Taint key; empty with operator Exists matches every taint.")]
    operator: Annotated[str, Field(description="Exists or Equal.")]
    value: Annotated[str, Field(description="Taint value, for operator Equal.")]
    effect: Annotated[str, Field(description="NoSchedule, PreferNoSchedule or NoExecute; empty: all.")]
    tolerationSeconds: Annotated[int, Field(description="How long a NoExecute taint is tolerated.")]


@with_config(_OPEN)
class PodSpec(TypedDict):
    containers: Annotated[
        list[Container],
        Field(
            min_length=1,
            description="At least one container. The first is the trainer: it gets the accelerators, the "
            "rendezvous environment and port, and the cpu and memory requests.",
        ),
        AfterValidator(_unique_names),
    ]
    nodeSelector: NotRequired[
        Annotated[dict[str, str] | None, Field(description="Node labels a worker's node must carry.")]
    ]
    nodeName: NotRequired[
        Annotated[
            str | None,
            Field(
                description="Must be empty: workers are placed by kube-scheduler where kubefit's scheduling "
                "pass counted them. Use nodeSelector or node affinity to pin them."
            ),
        ]
    ]
    affinity: NotRequired[
        Annotated[
            Affinity | None,
            Field(description="Affinity. The operator adds a required node affinity for the accelerator."),
        ]
    ]
    tolerations: NotRequired[
        Annotated[
            list[Toleration] | None,
            Field(
                description="Tolerations. The operator adds {key: <the accelerator's resource name, e.g. "
                "nvidia.com/gpu>, operator: Exists, effect: NoSchedule} unless one given here already "
                "tolerates that taint whatever its value: operator Exists, key that key or none, and "
                "effect NoSchedule or none. One with that key and operator Equal, or another effect, "
                "does not stop it."
            ),
        ]
    ]
    volumes: NotRequired[
        Annotated[
            list[Volume] | None,
            Field(
                description="Volumes. The operator adds kubefit-shm, an emptyDir of medium Memory whose "
                "sizeLimit is the worker's memory request, for the first container's /dev/shm, unless "
                "one here has that name or the first container mounts something at /dev/shm."
            ),
        ]
    ]
    terminationGracePeriodSeconds: NotRequired[
        Annotated[
            int | None,
            Field(
                ge=0,
                description="Seconds a worker has to stop after SIGTERM. The operator raises it to at least "
                "spec.elastic.checkpointGracePeriodSeconds. Default: Kubernetes' 30, raised likewise.",
            ),
        ]
    ]


@with_config(_OPEN)
class ObjectMeta(TypedDict, total=False):
    labels: Annotated[
        dict[str, LabelValue] | None,
        AfterValidator(_label_keys),
        Field(
            description="Labels for every worker pod; the operator adds kubefit.dev/job, "
            "kubefit.dev/worker-index and app.kubernetes.io/managed-by, which win over labels given here."
        ),
    ]
    annotations: Annotated[
        dict[str, str] | None,
        Field(
            description="Annotations for every worker pod, less those under kubefit.dev/: the operator "
            "sets and reads back its own (kubefit.dev/world-size, kubefit.dev/restart-attempt, "
            "kubefit.dev/nnodes)."
        ),
    ]


@with_config(_OPEN)
class PodTemplate(TypedDict):
    metadata: NotRequired[
        Annotated[
            ObjectMeta | None,
            Field(
                description="Labels and annotations for the workers; nothing else of it is kept (the "
                "operator sets each worker's name, namespace and ownerReferences)."
            ),
        ]
    ]
    spec: Annotated[
        PodSpec,
        Field(
            description="The worker pod's spec. The operator sets restartPolicy Never (it replaces failed "
            "workers itself), hostname and subdomain (stable DNS for the rendezvous)."
        ),
    ]
