"""Tests use reverie the way its users and its other layers do: no test imports a private name
(a leading underscore) from reverie, so renaming an internal never breaks a test that meant
something else."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def private_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("reverie"):
            parts = node.module.split(".") + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            parts = [p for a in node.names if a.name.startswith("reverie") for p in a.name.split(".")]
        else:
            continue
        found += [f"line {node.lineno}: {p}" for p in parts if p.startswith("_") and not p.startswith("__")]
    return found


def test_the_check_sees_a_private_import():
    assert private_imports("from reverie.render.tiny import _secret\nimport reverie._inner") == \
        ["line 1: _secret", "line 2: _inner"]
    assert private_imports("from reverie.render.tiny import build_tokenizer\nfrom os import _exit") == []


def test_no_test_imports_a_private_name():
    offenders = {p.name: private_imports(p.read_text()) for p in sorted(TESTS.glob("*.py"))}
    assert {name: lines for name, lines in offenders.items() if lines} == {}
