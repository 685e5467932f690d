"""The scripts are thin entry points: parse, call one package function, print. Each is
short, imports no private name of the package, and still starts (``--help``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
#: The entry points of the package's commands (gpu_check and bench_* measure: bench/).
THIN = ["reproduce", "train", "collect", "claims", "prepare_data", "fig2", "fig3", "wilson"]


def code_lines(tree: ast.Module) -> int:
    """Lines of statements, the module docstring left out."""
    body = tree.body[1:] if ast.get_docstring(tree) else tree.body
    lines = set()
    for node in body:
        lines |= set(range(node.lineno, node.end_lineno + 1))
    return len(lines)


@pytest.mark.parametrize("name", THIN)
def test_a_script_is_short_and_imports_no_private_name(name):
    tree = ast.parse((SCRIPTS / f"{name}.py").read_text())
    assert code_lines(tree) < 80
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dissecting_adam")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    private += [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_")
        and not node.attr.startswith("__")
    ]  # fmt: skip
    assert not private, private


@pytest.mark.parametrize("name", ["collect", "prepare_data", "fig3"])
def test_a_script_starts(name):
    done = subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), "--help"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert ("usage" in done.stdout.lower()) or ("== Config ==" in done.stdout), done.stdout
