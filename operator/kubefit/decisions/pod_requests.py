"""The extended resources (accelerators) a pod holds, read from its manifest as kube-scheduler charges them
(pure): the scheduling pass's inventory and a job's own device counts use the same reading."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any


def count_quantity(quantity: Any) -> int:
    """Extended resources are whole numbers; anything else counts as none."""
    try:
        return int(str(quantity))
    except ValueError:
        return 0


def _is_extended(resource: str) -> bool:
    return "/" in resource and not resource.startswith(("kubernetes.io/", "requests.", "limits."))


def _extended_requests(container: Mapping[str, Any]) -> Counter[str]:
    resources = container.get("resources") or {}
    # An extended resource given only as a limit is requested at that limit.
    amounts = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return Counter(
        {name: count_quantity(quantity) for name, quantity in amounts.items() if _is_extended(name)}
    )


def effective_requests(spec: Mapping[str, Any]) -> Counter[str]:
    """The extended resources a pod holds on its node, as kube-scheduler charges them: its containers and
    sidecars (init containers with restartPolicy Always) together, or an init container with the sidecars
    started before it, whichever is more. An init container's devices stay charged for the pod's life."""
    running: Counter[str] = Counter()
    for container in spec.get("containers") or []:
        running += _extended_requests(container)
    sidecars: Counter[str] = Counter()
    init_peak: Counter[str] = Counter()
    for init in spec.get("initContainers") or []:
        if init.get("restartPolicy") == "Always":
            sidecars += _extended_requests(init)
        else:
            init_peak |= _extended_requests(init) + sidecars
    return (running + sidecars) | init_peak
