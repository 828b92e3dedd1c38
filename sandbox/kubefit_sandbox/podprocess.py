"""Process mode (pure): how a pod bound to a `processes: true` node becomes a local process.

The node agent runs the pod's first container's command + args as a process on this machine
(kubefit_sandbox.processpods does the I/O). Everything here is plain data in, plain data out:

* the pod's address: a loopback IP (127.0.0.0/8, all of which Linux routes to `lo`), so that every
  pod can bind its own ports; see pod_loopback_ip;
* its environment: the container's `env` (values with Kubernetes' `$(VAR)` expansion, and `valueFrom:
  fieldRef` for the fields in FIELD_REFS; any other `valueFrom` or `envFrom` is refused, naming the
  variable), on top of a small base (PATH with the sandbox's virtualenv first, HOME, HOSTNAME);
* hostnames: nothing on this machine resolves `<pod>.<service>` names, and the sandbox changes no file
  of the machine (/etc/hosts), so every occurrence of a DNS name of a pod of the same job (`<hostname>.
  <subdomain>`, optionally `.<namespace>`, `.svc`, `.cluster.local`) or of its headless Service
  (`<subdomain>.<namespace>[.svc[.cluster.local]]`) in the command, the args and the env values is
  rewritten to that pod's loopback IP before the process starts;
* torchrun: every agent on one machine would think it hosts the c10d store (torch's
  `_matches_machine_hostname` counts any loopback address as this machine), so the sandbox tells each
  one, as separate machines would: `is_host` is true only on the pod the endpoint names (PET_RDZV_CONF),
  and PET_LOCAL_ADDR is the pod's own address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Process pods live in 127.128.0.0/9; a job's pods share one /24 (chosen by namespace and subdomain) and a
# pod named <anything>-<N> gets .<N + 1>, so worker 0 is .1: the lowest address of its job, and the
# first in the string order torch's rendezvous sorts its nodes by (the rendezvous host keeps rank 0).
LOOPBACK_BASE = ipaddress.IPv4Address("127.128.0.0")
LOOPBACK_BLOCKS = 1 << 15  # /24 blocks in 127.128.0.0/9
# Addresses for a pod whose preferred one is taken (see PodIPAllocator.claim): 127.64.0.0/10.
LOOPBACK_FALLBACK_CIDR = "127.64.0.0/10"
CLUSTER_DOMAIN = "cluster.local"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# fieldRef paths a process pod's env may use: the pod's own identity and addresses.
FIELD_REFS = {
    "metadata.name": lambda pod, ip, host: pod["metadata"]["name"],
    "metadata.namespace": lambda pod, ip, host: pod["metadata"]["namespace"],
    "metadata.uid": lambda pod, ip, host: pod["metadata"].get("uid", ""),
    "spec.nodeName": lambda pod, ip, host: pod["spec"].get("nodeName", ""),
    "spec.serviceAccountName": lambda pod, ip, host: pod["spec"].get("serviceAccountName", ""),
    "status.podIP": lambda pod, ip, host: ip,
    "status.hostIP": lambda pod, ip, host: host,
}
_INDEXED = re.compile(r"-([0-9]{1,3})$")
_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z0-9]+)\)")


class ProcessSpecError(ValueError):
    """A pod that process mode cannot run; the message names the field (the kubelet's
    CreateContainerConfigError)."""


# ---------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def pod_loopback_ip(namespace: str, name: str, hostname: str | None, subdomain: str | None) -> str:
    """The loopback address a process pod prefers: stable for its DNS name, so that a pod that starts
    before a peer already knows the peer's address, and a recreated pod gets its old one back."""
    if hostname and subdomain:
        block, label = _digest(f"{namespace}/{subdomain}") % LOOPBACK_BLOCKS, hostname
    else:
        block, label = _digest(f"{namespace}/{name}") % LOOPBACK_BLOCKS, name
    indexed = _INDEXED.search(label)
    host = int(indexed.group(1)) + 1 if indexed and int(indexed.group(1)) < 250 else 250 + _digest(label) % 5
    return str(LOOPBACK_BASE + block * 256 + host)


# ---------------------------------------------------------------------------------------------
# Hostname rewriting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerLookup:
    """Where the pods of a namespace are: process pods the agent runs, by (hostname, subdomain)."""

    pod_ips: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (hostname, subdomain) -> IP

    def pod_ip(self, namespace: str, hostname: str, subdomain: str) -> str:
        found = self.pod_ips.get((hostname, subdomain))
        return found or pod_loopback_ip(namespace, hostname, hostname, subdomain)

    def service_ip(self, subdomain: str) -> str | None:
        """A headless Service's name resolves to its pods; a process gets the first one's address."""
        members = sorted(host for host, sub in self.pod_ips if sub == subdomain)
        return self.pod_ips[(members[0], subdomain)] if members else None


def hostname_pattern(subdomain: str, namespace: str) -> re.Pattern[str]:
    """`<label>.<subdomain>[.<namespace>[.svc[.cluster.local]]]` and `<subdomain>.<namespace>[...]`,
    as whole names only (not inside a longer name such as a file name or another domain)."""
    sub, ns, domain = (re.escape(part) for part in (subdomain, namespace, CLUSTER_DOMAIN))
    suffix = rf"(?:\.{ns}(?:\.svc(?:\.{domain})?)?)"
    return re.compile(
        rf"(?<![-A-Za-z0-9.])(?:(?P<host>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.{sub}{suffix}?"
        rf"|(?P<service>{sub}){suffix})(?![-A-Za-z0-9]|\.[A-Za-z0-9])"
    )


def rewrite_hostnames(text: str, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str]) -> str:
    return pattern.sub(replace, text)


def hostname_rewriter(subdomain: str | None, namespace: str, peers: PeerLookup) -> Callable[[str], str]:
    """text -> text with the DNS names of the job's pods and Service replaced by loopback addresses."""
    if not subdomain:
        return lambda text: text
    pattern = hostname_pattern(subdomain, namespace)

    def replace(match: re.Match[str]) -> str:
        if match.group("host"):
            return peers.pod_ip(namespace, match.group("host"), subdomain)
        return peers.service_ip(subdomain) or match.group(0)

    return lambda text: rewrite_hostnames(text, pattern, replace)


# ---------------------------------------------------------------------------------------------
# Environment and command
# ---------------------------------------------------------------------------------------------


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`, and a
    reference to an undefined variable is left as written."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return variables.get(match.group(1), match.group(0))

    return _REFERENCE.sub(substitute, text)


@dataclass(frozen=True)
class PodAddress:
    """The addresses a process pod has: its own (loopback) IP, its node's InternalIP."""

    pod_ip: str
    host_ip: str


def _env_value(pod: Mapping[str, Any], variable: Mapping[str, Any], where: str, address: PodAddress) -> str:
    source = variable.get("valueFrom")
    if source is None:
        return str(variable.get("value") or "")
    field_ref = source.get("fieldRef") if isinstance(source, Mapping) else None
    path = field_ref.get("fieldPath") if isinstance(field_ref, Mapping) else None
    if len(source) == 1 and path in FIELD_REFS:
        return str(FIELD_REFS[path](pod, address.pod_ip, address.host_ip))
    kind = ", ".join(sorted(source)) if isinstance(source, Mapping) else repr(source)
    detail = f"fieldRef {path}" if field_ref is not None else kind
    raise ProcessSpecError(
        f"{where}.valueFrom ({variable.get('name')}): {detail} is not supported in the sandbox's process "
        f"mode; supported: value, and fieldRef {', '.join(FIELD_REFS)}"
    )


def pod_env(pod: Mapping[str, Any], address: PodAddress) -> dict[str, str]:
    """The first container's env, resolved in order (a later variable may refer to an earlier one)."""
    container = pod["spec"]["containers"][0]
    where = "spec.containers[0]"
    if container.get("envFrom"):
        raise ProcessSpecError(f"{where}.envFrom is not supported in the sandbox's process mode")
    resolved: dict[str, str] = {}
    for index, variable in enumerate(container.get("env") or []):
        value = _env_value(pod, variable, f"{where}.env[{index}]", address)
        resolved[variable["name"]] = expand(value, resolved) if "valueFrom" not in variable else value
    return resolved


def _torchrun_env(env: dict[str, str], pod_ip: str) -> dict[str, str]:
    """PET_RDZV_CONF is_host and PET_LOCAL_ADDR, as separate machines would answer them (module doc)."""
    endpoint = env.get("PET_RDZV_ENDPOINT")
    if not endpoint or env.get("PET_RDZV_BACKEND", "c10d") != "c10d":
        return {}
    extra = {}
    conf = env.get("PET_RDZV_CONF", "")
    if "is_host" not in conf:
        is_host = endpoint.rsplit(":", 1)[0] == pod_ip
        extra["PET_RDZV_CONF"] = ",".join(filter(None, [conf, f"is_host={str(is_host).lower()}"]))
    if "PET_LOCAL_ADDR" not in env:
        extra["PET_LOCAL_ADDR"] = pod_ip
    return extra


@dataclass(frozen=True)
class Launch:
    """What to run for a process pod: argv and the complete environment."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True)
class LaunchContext:
    """What the agent knows when it starts a pod: its addresses, peers, bin dir and work dir."""

    address: PodAddress
    peers: PeerLookup
    bin_dir: str  # the sandbox's virtualenv bin: its python and torchrun come first on PATH
    home: str  # the pod's own working directory


def build_launch(pod: Mapping[str, Any], context: LaunchContext) -> Launch:
    """argv and env of a process pod; ProcessSpecError (naming the field) when it cannot run here."""
    containers = pod.get("spec", {}).get("containers") or []
    if not containers:
        raise ProcessSpecError("spec.containers is empty")
    container = containers[0]
    command: Sequence[str] = container.get("command") or []
    if not command:
        raise ProcessSpecError(
            "spec.containers[0].command is required in the sandbox's process mode (there is no image "
            "entrypoint to fall back on)"
        )
    metadata, spec = pod["metadata"], pod["spec"]
    rewrite = hostname_rewriter(spec.get("subdomain"), metadata["namespace"], context.peers)
    variables = {name: rewrite(value) for name, value in pod_env(pod, context.address).items()}
    argv = tuple(rewrite(expand(str(part), variables)) for part in [*command, *(container.get("args") or [])])
    path = variables.get("PATH", DEFAULT_PATH)
    env = {
        "HOME": context.home,
        "HOSTNAME": spec.get("hostname") or metadata["name"],
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",  # logs as they are written, not a buffer at a time
        **variables,
        "PATH": f"{context.bin_dir}:{path}",
    }
    env |= _torchrun_env(env, context.address.pod_ip)
    return Launch(argv=argv, env=env)


# ---------------------------------------------------------------------------------------------
# Exit codes
# ---------------------------------------------------------------------------------------------


def exit_code_of(returncode: int) -> int:
    """A container's exit code from Popen's returncode: killed by signal N -> 128 + N, as a shell says."""
    return 128 - returncode if returncode < 0 else returncode
