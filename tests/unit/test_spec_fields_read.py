"""Every TrainingJob spec field is read by code outside kubefit/api/, or is declared not enforced yet.

A field that validation accepts but nothing reads is a promise nobody keeps (issue 6: priority, gang
timeout and checkpoint grace period were documented as behaviour and read by no code). This test scans
the operator's sources (operator/kubefit, api/ excluded) with a small type inference over the AST:
`spec.scheduling.priority`, `s = spec.scheduling; s.priority`, `def f(training: Training): training.loss`,
`lambda spec: spec.training.sharding`, and the properties the models define (`spec.workers.floor`
reads minReplicas, maxReplicas and replicas) all count as reads. A field counts only when its parent is
read too. Fields that are accepted and stored but enforced by no code are listed in NOT_ENFORCED_YET,
and their description (which is also `kubectl explain`'s text) must say so.
"""

from __future__ import annotations

import ast
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import BaseModel

from kubefit.api.models import TrainingJobSpec

OPERATOR = Path(__file__).resolve().parents[2] / "operator" / "kubefit"
MODELS_SOURCE = OPERATOR / "api" / "models.py"

# Accepted and stored, read by no code yet: the elastic scheduling work builds them. When it reads one,
# this test fails and asks to remove it from here (and the "Not enforced yet: " from its description).
# `scheduling` itself is listed because none of its fields is read.
NOT_ENFORCED_YET: set[str] = set()  # every spec field is read by the operator now
NOT_ENFORCED_PREFIX = "Not enforced yet: "


# ------------------------------------------------------------------ the model tree


@dataclass
class ModelTree:
    """The spec's models: each class's fields, nested model fields, properties, and where it sits."""

    root: str
    fields: dict[str, set[str]] = field(default_factory=dict)  # class -> field names
    nested: dict[str, dict[str, str]] = field(default_factory=dict)  # class -> field -> model class
    paths: dict[str, str] = field(default_factory=dict)  # class -> dotted path ("" for the root)
    properties: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # class -> property -> fields
    descriptions: dict[str, str | None] = field(default_factory=dict)  # dotted field path -> description

    def field_paths(self) -> set[str]:
        return {_join(self.paths[cls], name) for cls, names in self.fields.items() for name in names}

    def hints(self) -> dict[str, str]:
        """Variable names that, unannotated and not assigned, are taken as the model of that name."""
        by_name = {"spec": self.root}
        for children in self.nested.values():
            by_name.update(children)
        return by_name


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _model_classes(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [cls for arg in typing.get_args(annotation) for cls in _model_classes(arg)]
    return []


def build_tree(root: type[BaseModel], models_source: str) -> ModelTree:
    tree = ModelTree(root=root.__name__)
    pending: list[tuple[type[BaseModel], str]] = [(root, "")]
    while pending:
        model, path = pending.pop()
        assert model.__name__ not in tree.paths, f"{model.__name__} is used twice; the scan assumes once"
        tree.paths[model.__name__] = path
        tree.fields[model.__name__] = set(model.model_fields)
        tree.nested[model.__name__] = {}
        for name, info in model.model_fields.items():
            tree.descriptions[_join(path, name)] = info.description
            for child in _model_classes(info.annotation):
                tree.nested[model.__name__][name] = child.__name__
                pending.append((child, _join(path, name)))
    tree.properties = _properties(models_source, tree.fields)
    return tree


def _properties(source: str, fields: dict[str, set[str]]) -> dict[str, dict[str, set[str]]]:
    """For each model class, the fields each @property reads through `self` (transitively)."""
    direct: dict[str, dict[str, set[str]]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.ClassDef) and node.name in fields):
            continue
        direct[node.name] = {
            item.name: {
                sub.attr
                for sub in ast.walk(item)
                if isinstance(sub, ast.Attribute)
                and isinstance(sub.value, ast.Name)
                and sub.value.id == "self"
            }
            for item in node.body
            if isinstance(item, ast.FunctionDef)
            and any(ast.unparse(decorator).endswith("property") for decorator in item.decorator_list)
        }
    closed: dict[str, dict[str, set[str]]] = {}
    for cls, props in direct.items():
        closed[cls] = {}
        for prop in props:
            seen, todo = set(), [prop]
            while todo:
                for name in props[todo.pop()]:
                    if name in props and name not in seen:
                        todo.append(name)
                    seen.add(name)
            closed[cls][prop] = seen & fields[cls]
    return closed


# ------------------------------------------------------------------ the scanner

Env = dict[str, str | None]  # variable -> model class (None: known not to be one)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _scope_nodes(body: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Nodes of one scope; nested functions and lambdas are yielded but not entered."""
    todo = list(body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, SCOPES):
            todo.extend(ast.iter_child_nodes(node))


class Scanner:
    def __init__(self, tree: ModelTree):
        self.tree = tree
        self.hints = tree.hints()
        self.classes = set(tree.fields)
        self.reads: set[tuple[str, str]] = set()  # (class, field)

    def scan(self, source: str) -> None:
        module = ast.parse(source)
        self._scope(module.body, {})

    # ---------------------------------------------------------- types

    def _annotation(self, annotation: ast.expr | None) -> str | None:
        if annotation is None:
            return None
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            annotation = ast.parse(annotation.value, mode="eval").body  # a quoted annotation
        named = {node.id for node in ast.walk(annotation) if isinstance(node, ast.Name)}
        found = [cls for cls in self.classes if cls in named]
        return found[0] if len(found) == 1 else None

    def _infer(self, node: ast.AST, env: Env) -> str | None:
        if isinstance(node, ast.Name):
            return env[node.id] if node.id in env else self.hints.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self._infer(node.value, env)
            if owner is not None:
                return self.tree.nested[owner].get(node.attr)
            return self.hints.get(node.attr)
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "model_copy" and isinstance(func, ast.Attribute):
                return self._infer(func.value, env)
            if name == "parse_spec":
                return self.tree.root
            if name in self.classes:
                return name
            if name in ("model_validate", "model_construct") and isinstance(func, ast.Attribute):
                return ast.unparse(func.value) if ast.unparse(func.value) in self.classes else None
        return None

    # ---------------------------------------------------------- scopes

    def _arguments(self, args: ast.arguments, env: Env) -> None:
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        for arg in every:
            if arg is None:
                continue
            if arg.annotation is not None:
                env[arg.arg] = self._annotation(arg.annotation)
            elif arg.arg in env:
                del env[arg.arg]  # an unannotated parameter shadows an outer variable: fall back to hints

    def _assign(self, target: ast.expr, value: ast.expr | None, env: Env) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = self._infer(value, env) if value is not None else None
        elif isinstance(target, ast.Tuple | ast.List):
            values = value.elts if isinstance(value, ast.Tuple | ast.List) else [None] * len(target.elts)
            for sub_target, sub_value in zip(target.elts, values, strict=False):
                self._assign(sub_target, sub_value, env)

    def _bind(self, nodes: list[ast.AST], env: Env) -> None:
        for _ in range(3):  # flow-insensitive; a few rounds settle chains such as a = spec.model; b = a.x
            for node in nodes:
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        self._assign(target, node.value, env)
                elif isinstance(node, ast.AnnAssign):
                    annotated = self._annotation(node.annotation)
                    if isinstance(node.target, ast.Name):
                        env[node.target.id] = annotated or (
                            self._infer(node.value, env) if node.value is not None else None
                        )
                elif isinstance(node, ast.For | ast.comprehension | ast.withitem | ast.NamedExpr):
                    target = getattr(node, "target", None) or getattr(node, "optional_vars", None)
                    if target is not None:
                        self._assign(target, None, env)

    def _scope(self, body: Iterable[ast.AST], outer: Env, args: ast.arguments | None = None) -> None:
        env = dict(outer)
        if args is not None:
            self._arguments(args, env)
        nodes = list(_scope_nodes(body))
        self._bind(nodes, env)
        for node in nodes:
            if isinstance(node, ast.Lambda):
                self._scope([node.body], env, node.args)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self._scope(node.body, env, node.args)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                self._read(self._infer(node.value, env), node.attr)
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and node.args:
                name = node.args[1] if len(node.args) > 1 else None
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    self._read(self._infer(node.args[0], env), name.value)

    def _read(self, owner: str | None, name: str) -> None:
        if owner is None:
            return
        if name in self.tree.fields[owner]:
            self.reads.add((owner, name))
        for read in self.tree.properties.get(owner, {}).get(name, ()):
            self.reads.add((owner, read))

    # ---------------------------------------------------------- result

    def read_paths(self) -> set[str]:
        """Dotted paths of the fields read, each only if its parent is read too."""
        read = {_join(self.tree.paths[owner], name) for owner, name in self.reads}
        return {path for path in read if all(parent in read for parent in _parents(path))}


def _parents(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def operator_sources() -> list[Path]:
    return sorted(path for path in OPERATOR.rglob("*.py") if path.relative_to(OPERATOR).parts[0] != "api")


@pytest.fixture(scope="module")
def tree() -> ModelTree:
    return build_tree(TrainingJobSpec, MODELS_SOURCE.read_text())


@pytest.fixture(scope="module")
def read_paths(tree: ModelTree) -> set[str]:
    scanner = Scanner(tree)
    for path in operator_sources():
        scanner.scan(path.read_text())
    return scanner.read_paths()


# ------------------------------------------------------------------ the rule


def test_every_spec_field_is_read_outside_api_or_declared_not_enforced(
    tree: ModelTree, read_paths: set[str]
) -> None:
    unread = sorted(tree.field_paths() - read_paths - NOT_ENFORCED_YET)
    assert not unread, (
        f"spec fields read by no code outside kubefit/api/: {unread}. Make the operator use them, or add "
        f"them to NOT_ENFORCED_YET and start their description with {NOT_ENFORCED_PREFIX!r}"
    )


def test_not_enforced_yet_lists_only_fields_that_exist_and_nothing_reads(
    tree: ModelTree, read_paths: set[str]
) -> None:
    assert NOT_ENFORCED_YET <= tree.field_paths(), NOT_ENFORCED_YET - tree.field_paths()
    now_read = sorted(NOT_ENFORCED_YET & read_paths)
    assert not now_read, (
        f"{now_read} are read by the operator now: remove them from NOT_ENFORCED_YET, and the "
        f"{NOT_ENFORCED_PREFIX!r} from their descriptions (api/models.py) and from docs/api.md"
    )


def test_a_description_says_not_enforced_yet_exactly_when_it_is_not(tree: ModelTree) -> None:
    # The description is also `kubectl explain`'s text: it must not promise behaviour, nor deny it.
    wrong = [
        f"spec.{path}: {description!r}"
        for path, description in sorted(tree.descriptions.items())
        if (description or "").startswith(NOT_ENFORCED_PREFIX) != (path in NOT_ENFORCED_YET)
    ]
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------ the scanner can fail


def _reads(source: str, tree: ModelTree) -> set[str]:
    scanner = Scanner(tree)
    scanner.scan(source)
    return {_join(tree.paths[owner], name) for owner, name in scanner.reads}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f(spec):\n    return spec.scheduling.priority", {"scheduling", "scheduling.priority"}),
        (
            "def f(job):\n    s = job.spec.scheduling\n    return s.gang_timeout_seconds",
            {"scheduling", "scheduling.gang_timeout_seconds"},
        ),
        ("def f(t: Training):\n    return t.loss", {"training.loss"}),
        ("def f(t: 'Training | None'):\n    return t.loss", {"training.loss"}),
        ("f = lambda spec: spec.elastic.enabled", {"elastic", "elastic.enabled"}),
        (
            "def f(spec):\n    model, training = spec.model, spec.training\n    return training.offload",
            {"model", "training", "training.offload"},
        ),
        (
            "def f(spec):\n    return spec.workers.floor",
            {"workers", "workers.min_replicas", "workers.max_replicas", "workers.replicas"},
        ),
        ("def f(raw):\n    return parse_spec(raw).run_policy.suspend", {"run_policy", "run_policy.suspend"}),
        ("def f(spec):\n    return getattr(spec.resources, 'cpu')", {"resources", "resources.cpu"}),
        # Not reads: an object of unknown type, a local that is not a model, a dict key, a write.
        ("def f(x):\n    return x.priority", set()),
        ("def f():\n    resources = load()\n    return resources.memory", set()),
        ("def f(spec: dict):\n    return spec['scheduling']['priority']", set()),
        ("def f(job: Job):\n    return job.scheduling", set()),
    ],
)
def test_scanner_on_synthetic_sources(tree: ModelTree, source: str, expected: set[str]) -> None:
    assert _reads(source, tree) == expected


class _Inner(BaseModel):
    used: int = 0
    forgotten: int = 0


class _Orphan(BaseModel):
    used: int = 0


class _Root(BaseModel):
    inner: _Inner = _Inner()
    orphan: _Orphan | None = None


def test_an_unread_field_is_found() -> None:
    # A scratch model tree with one field nobody reads, and one whose parent nobody reads.
    tree = build_tree(_Root, "")
    scanner = Scanner(tree)
    scanner.scan(
        "def f(spec):\n    inner = spec.inner\n    return inner.used\n\ndef g(o: _Orphan):\n    o.used"
    )
    assert "orphan.used" in {_join(tree.paths[owner], name) for owner, name in scanner.reads}
    assert tree.field_paths() - scanner.read_paths() == {"inner.forgotten", "orphan", "orphan.used"}
