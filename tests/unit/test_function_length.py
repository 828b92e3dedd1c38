"""No function in the operator or the sandbox is longer than a reader can hold in their head.

ruff's complexity and argument rules (pyproject.toml) bound the branching; this bounds the length, which
ruff has no rule for. Declarative tables (argument parsers, metric registries) may be exempted by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = (REPO / "operator" / "kubefit", REPO / "sandbox" / "kubefit_sandbox")
MAX_LINES = 60
EXEMPT: set[str] = set()  # "path/to/module.py:function" for a declarative table that must stay whole


def long_functions(source: str, where: str, max_lines: int = MAX_LINES) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > max_lines and f"{where}:{node.name}" not in EXEMPT:
                found.append(f"{where}:{node.lineno} {node.name} is {length} lines")
    return found


def test_no_function_is_longer_than_the_limit() -> None:
    found = [
        problem
        for root in SOURCES
        for path in sorted(root.rglob("*.py"))
        for problem in long_functions(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert not found, "\n".join(found)


def test_the_check_sees_a_long_function() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    assert long_functions(f"def long():\n{body}\n", "synthetic.py") == ["synthetic.py:1 long is 61 lines"]
    assert long_functions("def short():\n    return 1\n", "synthetic.py") == []
