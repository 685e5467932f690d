"""The measuring scripts (``gpu_check``, ``bench_*``) are thin like the others: parse, call
``dissecting_adam.bench``, print; under 80 lines of statements, no private name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
NAMES = sorted(p.stem for p in SCRIPTS.glob("bench_*.py")) + ["gpu_check"]


def code_lines(tree: ast.Module) -> int:
    """Lines of statements, the module docstring left out."""
    body = tree.body[1:] if ast.get_docstring(tree) else tree.body
    return len({n for node in body for n in range(node.lineno, node.end_lineno + 1)})


def private_names(tree: ast.Module) -> list[str]:
    imported = [f"{node.module}.{alias.name}" for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("dissecting_adam")
                for alias in node.names if alias.name.startswith("_")]  # fmt: skip
    modules = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and any(p.startswith("_") for p in (node.module or "").split(".")[1:])]  # fmt: skip
    attrs = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
             and node.attr.startswith("_") and not node.attr.startswith("__")]  # fmt: skip
    return imported + modules + attrs


def test_there_are_measuring_scripts():
    assert {"bench_optim", "bench_minibatch", "gpu_check"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_measuring_script_is_short_and_imports_no_private_name(name):
    tree = ast.parse((SCRIPTS / f"{name}.py").read_text())
    assert code_lines(tree) < 80
    assert not private_names(tree)
    if name != "gpu_check":  # gpu_check composes Hydra configs, which bench/ may not
        calls = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert any((m or "").startswith("dissecting_adam.bench") for m in calls), calls
