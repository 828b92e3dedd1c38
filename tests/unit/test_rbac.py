"""The chart's RBAC is exactly what the operator's code uses, derived from the code itself.

Three sources make up what the operator does, as (apiGroup, resource, verb):
- its own API calls: every call in controller/kube.py, read from the AST, through the kubernetes client
  (the method names say the verb and the resource: `create_namespaced_pod` is create pods) or through
  kube.py's REST helper (`self._call("POST", _core_path(namespace, "pods"), ...)` is create pods);
  the Lease calls of leader election (controller/leader.py) are granted by a Role of their own in the
  release's namespace, limited to the one Lease by name where Kubernetes allows it (not for create);
- the resources its kopf handlers and indexes serve (controller/handlers.py, quotas.py): kopf lists and watches
  each one, and patches the ones with changing handlers or timers (its finalizer and its progress
  annotations), see kopf/on.py (timers and daemons set requires_finalizer=True) and
  https://kopf.readthedocs.io/en/stable/deployment/ ;
- kopf's own needs (kopf/_core/reactor/observation.py, kopf/_cogs/clients/events.py): list/watch
  CustomResourceDefinitions always, list/watch namespaces only when it serves a list of namespaces
  (not with --all-namespaces), and create core v1 events when posting is enabled.
The rendered chart is compared with that in both directions: nothing used is missing, nothing granted is
unused. The scanners are also run on small synthetic sources, so a call they missed would show.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from test_chart import NAMESPACE, _by_kind, _one, _permissions, _render

import kubefit.controller.kube as kube_module
import kubefit.controller.leader as leader_module
from kubefit.builders.naming import JobRef, owner_reference
from kubefit.controller.runner import operator_settings

OPERATOR = Path(__file__).resolve().parents[2] / "operator" / "kubefit"
CONTROLLER = OPERATOR / "controller"
Permission = tuple[str, str, str]  # (apiGroup, resource, verb)

# kubernetes client method prefix -> RBAC verb (https://kubernetes.io/docs/reference/access-authn-authz/authorization/#determine-the-request-verb)
CLIENT_VERBS = {
    "read": "get",
    "get": "get",
    "list": "list",
    "create": "create",
    "patch": "patch",
    "replace": "update",
    "delete_collection": "deletecollection",
    "delete": "delete",
}
API_CLASS_GROUPS = {
    "CoreV1Api": "",
    "AppsV1Api": "apps",
    "BatchV1Api": "batch",
    "CoordinationV1Api": "coordination.k8s.io",
    "ApiextensionsV1Api": "apiextensions.k8s.io",
}
SUBRESOURCES = ("status", "scale", "log", "binding", "eviction", "ephemeralcontainers", "resize", "exec")
CLUSTER_SCOPED = {"nodes", "namespaces", "customresourcedefinitions"}

# kopf's decorators: which ones only watch, which also patch the object (finalizer, progress annotations).
KOPF_WATCHING = {"index", "event"}
KOPF_PATCHING = {"create", "update", "resume", "delete", "field", "timer", "daemon"}
KOPF_FRAMEWORK = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
KOPF_NAMESPACE_PATTERNS = {("", "namespaces", "list"), ("", "namespaces", "watch")}
# kopf removes the finalizer named in settings.persistence.finalizer from an object no handler needs it for
# (kopf/_core/reactor/processing.py, "Removing the finalizer, as there are no handlers requiring it"): the
# TrainingJobs that operator versions with per-job kopf timers finalized are patched once, on an upgrade.
KOPF_LEGACY_FINALIZER_REMOVAL = {("kubefit.dev", "trainingjobs", "patch")}
KOPF_EVENT_FUNCTIONS = {"event", "info", "warn", "exception"}
# The children's owner references set blockOwnerDeletion (builders/naming.py): the
# OwnerReferencesPermissionEnforcement admission plugin allows that only with update on the owner's finalizers
# (https://kubernetes.io/docs/reference/access-authn-authz/admission-controllers/#ownerreferencespermissionenforcement).
OWNER_DELETION_BLOCKING = {("kubefit.dev", "trainingjobs/finalizers", "update")}


# ------------------------------------------------------------------ the operator's own client calls


def _api_attributes(tree: ast.Module) -> dict[str, str]:
    """`self.X = client.SomeApi(...)` anywhere in the module: X -> SomeApi."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if not name.endswith("Api") or name == "ApiClient":
                continue
            for target in node.targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                    found[target.attr] = name
    return found


def _split_method(method: str) -> tuple[str, str, str]:
    """`patch_namespaced_custom_object_status` -> ("patch", "custom_object", "status")."""
    prefix = next((prefix for prefix in CLIENT_VERBS if method.startswith(prefix + "_")), None)
    assert prefix is not None, f"{method}: not a kubernetes client call this test knows; extend CLIENT_VERBS"
    verb, rest = CLIENT_VERBS[prefix], method.removeprefix(prefix + "_")
    rest = rest.removeprefix("namespaced_").removeprefix("cluster_").removesuffix("_for_all_namespaces")
    for subresource in SUBRESOURCES:
        if rest.endswith("_" + subresource):
            return verb, rest.removesuffix("_" + subresource), subresource
    return verb, rest, ""


def _plural(kind: str) -> str:
    joined = kind.replace("_", "")
    return joined if joined.endswith("s") else joined + "s"


def _resolve(node: ast.expr, namespace: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in namespace:
        return namespace[node.id]
    return None


def client_permissions(source: str, namespace: dict[str, Any]) -> set[Permission]:
    """Every `self.<api>.<method>(...)` call on a kubernetes client API object, as permissions.

    Custom-object calls name their group and plural in the arguments (group, version, [namespace,]
    plural, ...); `namespace` resolves the names used there (the module's globals).
    """
    tree = ast.parse(source)
    apis = _api_attributes(tree)
    found: set[Permission] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = node.func.value
        if not (isinstance(receiver, ast.Attribute) and receiver.attr in apis):
            continue
        api_class = apis[receiver.attr]
        verb, kind, subresource = _split_method(node.func.attr)
        if api_class == "CustomObjectsApi":
            args = [_resolve(arg, namespace) for arg in node.args]
            plural_at = 2 if node.func.attr.split("_")[1] == "cluster" else 3
            group, resource = args[0], args[plural_at]
            assert isinstance(group, str) and isinstance(resource, str), ast.unparse(node)
        else:
            assert api_class in API_CLASS_GROUPS, f"{api_class}: add its API group to API_CLASS_GROUPS"
            group, resource = API_CLASS_GROUPS[api_class], _plural(kind)
        found.add((group, f"{resource}/{subresource}" if subresource else resource, verb))
    return found


# kube.py may also call the API server through its own REST helper: self._call("METHOD", <path>, ...),
# the path built by _job_path(namespace, name) (the TrainingJob; + "/status" for its subresource) or
# _core_path(namespace, "<plural>"[, name]) (core v1). A GET of a path without a name would be a list.
REST_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _rest_resource(path: ast.expr, namespace: dict[str, Any]) -> tuple[str, str, bool]:
    """(apiGroup, resource, names one object) of a path expression; fails on a shape it does not know."""
    if isinstance(path, ast.BinOp) and isinstance(path.op, ast.Add) and isinstance(path.right, ast.Constant):
        group, resource, named = _rest_resource(path.left, namespace)
        return group, f"{resource}{path.right.value}", named
    if isinstance(path, ast.Call) and isinstance(path.func, ast.Name):
        if path.func.id == "_job_path":
            return namespace["GROUP"], namespace["PLURAL"], True
        if path.func.id == "_core_path":
            plural = _resolve(path.args[1], namespace)
            assert isinstance(plural, str), ast.unparse(path)
            return "", plural, len(path.args) > 2
    raise AssertionError(f"cannot tell the resource of {ast.unparse(path)}: teach _rest_resource its shape")


def rest_permissions(source: str, namespace: dict[str, Any]) -> set[Permission]:
    """Every `self._call("METHOD", path, ...)`, as permissions."""
    found: set[Permission] = set()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "_call" or not (
            isinstance(node.func.value, ast.Name) and node.func.value.id == "self"
        ):
            continue
        method = _resolve(node.args[0], namespace)
        assert method in REST_VERBS, f"{ast.unparse(node)}: say which verb {method!r} is"
        group, resource, named = _rest_resource(node.args[1], namespace)
        verb = "list" if REST_VERBS[method] == "get" and not named else REST_VERBS[method]
        found.add((group, resource, verb))
    return found


def _module_namespace(module: Any) -> dict[str, Any]:
    return {name: getattr(module, name) for name in dir(module)}


# ------------------------------------------------------------------ kopf: handlers, events, its own needs


def _decorator_kind(decorator: ast.expr) -> str | None:
    """`kopf.on.create(...)` -> "create", `kopf.index(...)` -> "index"; None for anything else."""
    if not isinstance(decorator, ast.Call):
        return None
    dotted = ast.unparse(decorator.func)
    match = re.fullmatch(r"kopf\.(?:on\.)?(\w+)", dotted)
    return match.group(1) if match else None


def _resource_args(call: ast.Call, namespace: dict[str, Any]) -> tuple[str, str, str] | None:
    values: list[Any] = []
    for arg in call.args:
        if isinstance(arg, ast.Starred):
            values.extend(_resolve(arg.value, namespace) or ())
        else:
            values.append(_resolve(arg, namespace))
    if len(values) != 3:
        return None
    group, version, plural = values
    return ("" if group == "" and version == "v1" else group), version, plural


def kopf_handler_permissions(source: str, namespace: dict[str, Any]) -> set[Permission]:
    found: set[Permission] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            kind = _decorator_kind(decorator)
            if kind is None or kind in {"login", "startup", "cleanup", "probe"}:
                continue
            assert kind in KOPF_WATCHING | KOPF_PATCHING, f"kopf.{kind}: say which verbs it needs"
            assert isinstance(decorator, ast.Call)
            resource = _resource_args(decorator, namespace)
            assert resource is not None, f"cannot resolve the resource of {ast.unparse(decorator)}"
            group, _, plural = resource
            verbs = {"list", "watch"} | ({"patch"} if kind in KOPF_PATCHING else set())
            found |= {(group, plural, verb) for verb in verbs}
    return found


def posts_events(source: str) -> bool:
    """Whether the module calls kopf.event/info/warn/exception (kopf creates core v1 events)."""
    return any(
        isinstance(node, ast.Call) and ast.unparse(node.func) in {f"kopf.{f}" for f in KOPF_EVENT_FUNCTIONS}
        for node in ast.walk(ast.parse(source))
    )


# ------------------------------------------------------------------ what the operator uses


def _read(path: Path) -> str:
    return path.read_text()


def used_permissions(watch_namespaces: bool) -> tuple[set[Permission], set[Permission]]:
    """(namespaced, cluster-scoped) permissions the operator uses, derived from its code."""
    kube_source, kube_names = _read(CONTROLLER / "kube.py"), _module_namespace(kube_module)
    used = client_permissions(kube_source, kube_names) | rest_permissions(kube_source, kube_names)
    for path in sorted(CONTROLLER.glob("*.py")):  # kopf handlers and indexes, in whichever module
        module = importlib.import_module(f"kubefit.controller.{path.stem}")
        used |= kopf_handler_permissions(_read(path), _module_namespace(module))
    used |= KOPF_FRAMEWORK
    if operator_settings().persistence.finalizer:
        used |= KOPF_LEGACY_FINALIZER_REMOVAL
    if watch_namespaces:
        used |= KOPF_NAMESPACE_PATTERNS
    if owner_reference(JobRef("job", "namespace", "uid")).get("blockOwnerDeletion"):
        used |= OWNER_DELETION_BLOCKING
    controller_sources = [_read(path) for path in sorted(CONTROLLER.glob("*.py"))]
    if operator_settings().posting.enabled or any(posts_events(source) for source in controller_sources):
        used.add(("", "events", "create"))
    cluster = {permission for permission in used if permission[1] in CLUSTER_SCOPED}
    return used - cluster, cluster


def leader_election_permissions() -> set[Permission]:
    """The Lease calls of leader election (controller/leader.py), derived like kube.py's."""
    return client_permissions(_read(CONTROLLER / "leader.py"), _module_namespace(leader_module))


def _kubernetes_client_importers(paths: Iterable[Path], root: Path = OPERATOR) -> set[str]:
    importers = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            # The exception classes make no calls; anything else of the client could.
            calls = [name for name in names if not name.startswith("kubernetes.client.exceptions")]
            if any(name.startswith(("kubernetes.client", "kubernetes.dynamic")) for name in calls):
                importers.add(str(path.relative_to(root)))
    return importers


def test_only_kube_py_and_leader_py_talk_to_the_api_server_through_the_client() -> None:
    # Otherwise a call elsewhere would escape the scans above. sandbox/ and cli/ are not the operator.
    operator_code = [
        path
        for path in OPERATOR.rglob("*.py")
        if path.relative_to(OPERATOR).parts[0] not in ("sandbox", "cli")
    ]
    assert _kubernetes_client_importers(operator_code) == {"controller/kube.py", "controller/leader.py"}


# ------------------------------------------------------------------ the chart


@pytest.fixture(scope="module")
def all_namespaces() -> list[dict[str, Any]]:
    return _render()


@pytest.fixture(scope="module")
def two_namespaces() -> list[dict[str, Any]]:
    return _render("--set", "watchNamespaces={team-a,team-b}")


LEADER_ROLE_SUFFIX = "-leader-election"


def _leader_role(objects: list[dict[str, Any]]) -> dict[str, Any] | None:
    found = [
        role for role in _by_kind(objects, "Role") if role["metadata"]["name"].endswith(LEADER_ROLE_SUFFIX)
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


EVENTS_ROLE_SUFFIX = "-events"


def _watched_roles(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        role
        for role in _by_kind(objects, "Role")
        if role is not _leader_role(objects) and not role["metadata"]["name"].endswith(EVENTS_ROLE_SUFFIX)
    ]


def _events_roles(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        role for role in _by_kind(objects, "Role") if role["metadata"]["name"].endswith(EVENTS_ROLE_SUFFIX)
    ]


def _compare(granted: set[Permission], used: set[Permission], where: str) -> None:
    missing, unused = sorted(used - granted), sorted(granted - used)
    assert not missing, f"{where}: the operator uses {missing} but the chart does not grant it"
    assert not unused, f"{where}: the chart grants {unused}, which no code uses"


def test_all_namespaces_grants_exactly_what_the_code_uses(all_namespaces: list[dict[str, Any]]) -> None:
    namespaced, cluster = used_permissions(watch_namespaces=False)
    assert not _watched_roles(all_namespaces)
    _compare(_permissions(_one(all_namespaces, "ClusterRole")), namespaced | cluster, "ClusterRole")


def test_watched_namespaces_grant_exactly_what_the_code_uses(two_namespaces: list[dict[str, Any]]) -> None:
    namespaced, cluster = used_permissions(watch_namespaces=True)
    _compare(_permissions(_one(two_namespaces, "ClusterRole")), cluster, "ClusterRole")
    roles = _watched_roles(two_namespaces)
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    for role in roles:
        _compare(_permissions(role), namespaced, f"Role in {role['metadata']['namespace']}")
    assert all(
        subject["namespace"] == NAMESPACE
        for binding in _by_kind(two_namespaces, "RoleBinding")
        for subject in binding["subjects"]
    )


def test_watched_namespaces_let_kopf_post_events_about_nodes_in_the_operators_namespace(
    two_namespaces: list[dict[str, Any]],
) -> None:
    # kopf posts events about cluster-scoped objects in its own namespace, which is not watched here.
    (role,) = _events_roles(two_namespaces)
    assert role["metadata"]["namespace"] == NAMESPACE
    assert _permissions(role) == {("", "events", "create")}
    (binding,) = [
        b for b in _by_kind(two_namespaces, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]
    ]
    assert binding["metadata"]["namespace"] == NAMESPACE and binding["subjects"][0]["namespace"] == NAMESPACE


@pytest.mark.parametrize("scope", [(), ("--set", f"watchNamespaces={{team-a,{NAMESPACE}}}")])
def test_no_events_role_where_the_operators_namespace_is_already_covered(scope: tuple[str, ...]) -> None:
    assert not _events_roles(_render(*scope))


@pytest.mark.parametrize("scope", [(), ("--set", "watchNamespaces={team-a,team-b}")])
def test_leader_election_grants_exactly_the_lease_calls_on_its_own_lease(scope: tuple[str, ...]) -> None:
    objects = _render(*scope, "--set", "leaderElection.leaseName=my-lease")
    role = _leader_role(objects)
    assert role is not None and role["metadata"]["namespace"] == NAMESPACE
    _compare(_permissions(role), leader_election_permissions(), "leader-election Role")
    assert leader_election_permissions() == {
        ("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")
    } | {("", "pods", "patch")}  # each replica labels its own pod with its role
    for rule in role["rules"]:  # create cannot name its object; every other Lease verb is held to the one
        if rule["resources"] == ["leases"]:
            assert rule.get("resourceNames") == (None if rule["verbs"] == ["create"] else ["my-lease"]), rule
    (binding,) = [
        b for b in _by_kind(objects, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]
    ]
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    # Nothing else grants leases.
    others = _by_kind(objects, "ClusterRole") + _watched_roles(objects)
    assert not any(p[1] == "leases" for r in others for p in _permissions(r))


def test_without_leader_election_no_lease_is_granted() -> None:
    objects = _render("--set", "leaderElection.enabled=false")
    assert _leader_role(objects) is None
    assert not any(p[1] == "leases" for r in _by_kind(objects, "ClusterRole") for p in _permissions(r))


def test_the_derived_list_is_what_the_operator_is_known_to_do() -> None:
    # A reader's check of the derivation (and of its scanners) against the calls named in kube.py.
    namespaced, cluster = used_permissions(watch_namespaces=False)
    assert ("kubefit.dev", "trainingjobs", "delete") in namespaced  # ttlSecondsAfterFinished
    assert ("kubefit.dev", "trainingjobs/status", "patch") in namespaced
    assert ("kubefit.dev", "trainingjobs", "patch") in namespaced  # kopf removing earlier versions' finalizer
    assert ("", "pods", "patch") in namespaced  # adopting an orphaned worker
    assert ("", "nodes", "watch") in cluster
    assert not {p for p in namespaced | cluster if p[1] in ("secrets", "configmaps", "trainingjobs/scale")}


# ------------------------------------------------------------------ the scanners can fail

SYNTHETIC_KUBE = """
class Api:
    def __init__(self):
        self.core = client.CoreV1Api(self._api_client)
        self.custom = client.CustomObjectsApi(self._api_client)
        self.apps = client.AppsV1Api()

    def calls(self):
        self.core.read_namespaced_secret("x", "ns")
        self.core.delete_collection_namespaced_pod("ns")
        self.core.list_node()
        self.core.read_namespaced_pod_log("p", "ns")
        self.apps.patch_namespaced_deployment_scale("d", "ns", {})
        self.custom.patch_namespaced_custom_object_scale(GROUP, "v1", "ns", PLURAL, "n", {})
        self.custom.list_cluster_custom_object("example.com", "v1", "widgets")
        self.other.create_namespaced_pod("ns", {})  # not a client API object: ignored
"""

SYNTHETIC_HANDLERS = """
JOBS = ("kubefit.dev", "v1alpha1", "trainingjobs")

@kopf.index("", "v1", "secrets", id="x")
def index(**_): ...

@kopf.on.delete(*JOBS)
def deleted(**_): ...

@kopf.timer("apps", "v1", "deployments", interval=1)
def tick(**_): ...

@kopf.on.login()
def login(**_): ...
"""


def test_client_scanner_reads_verbs_resources_and_subresources() -> None:
    found = client_permissions(SYNTHETIC_KUBE, {"GROUP": "kubefit.dev", "PLURAL": "trainingjobs"})
    assert found == {
        ("", "secrets", "get"),
        ("", "pods", "deletecollection"),
        ("", "nodes", "list"),
        ("", "pods/log", "get"),
        ("apps", "deployments/scale", "patch"),
        ("kubefit.dev", "trainingjobs/scale", "patch"),
        ("example.com", "widgets", "list"),
    }


SYNTHETIC_REST = """
class Api:
    def _call(self, method, path, body=None):
        return self._api_client.call_api(method, path)

    def calls(self):
        self._call("GET", _job_path(namespace, name))
        self._call("PATCH", _job_path(namespace, name) + "/status", {})
        self._call("POST", _core_path(namespace, "pods"), {})
        self._call("DELETE", _core_path(namespace, "services", name))
        self._call("GET", _core_path(namespace, EVENTS))
        other._call("PUT", _core_path(namespace, "secrets", name))  # not this object: ignored
"""


def test_rest_scanner_reads_methods_paths_and_subresources() -> None:
    names = {"GROUP": "kubefit.dev", "PLURAL": "trainingjobs", "EVENTS": "events"}
    assert rest_permissions(SYNTHETIC_REST, names) == {
        ("kubefit.dev", "trainingjobs", "get"),
        ("kubefit.dev", "trainingjobs/status", "patch"),
        ("", "pods", "create"),
        ("", "services", "delete"),
        ("", "events", "list"),
    }
    with pytest.raises(AssertionError, match="cannot tell the resource"):
        rest_permissions('self._call("GET", "/api/v1/nodes")', names)


def test_handler_scanner_reads_kopf_decorators() -> None:
    found = kopf_handler_permissions(
        SYNTHETIC_HANDLERS, {"JOBS": ("kubefit.dev", "v1alpha1", "trainingjobs")}
    )
    assert found == {
        ("", "secrets", "list"),
        ("", "secrets", "watch"),
        *(("kubefit.dev", "trainingjobs", verb) for verb in ("list", "watch", "patch")),
        *(("apps", "deployments", verb) for verb in ("list", "watch", "patch")),
    }


def test_event_scanner_sees_kopf_event_calls() -> None:
    assert posts_events("kopf.event(body, type='Normal', reason='R', message='m')")
    assert posts_events("kopf.warn(body, reason='R', message='m')")
    assert not posts_events("logger.warning('kopf.event is not called here')")


def test_an_extra_or_missing_grant_is_reported() -> None:
    used = {("", "pods", "create")}
    with pytest.raises(AssertionError, match="grants"):
        _compare(used | {("", "services", "delete")}, used, "Role")
    with pytest.raises(AssertionError, match="does not grant"):
        _compare(set(), used, "Role")


def test_client_import_guard_sees_a_client_outside_kube_py(tmp_path: Path) -> None:
    sneaky, harmless = tmp_path / "sneaky.py", tmp_path / "harmless.py"
    sneaky.write_text("from kubernetes import client\n")
    harmless.write_text("from kubernetes.client.exceptions import ApiException\n")
    assert _kubernetes_client_importers([sneaky, harmless], root=tmp_path) == {"sneaky.py"}
