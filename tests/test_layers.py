"""fnet's layers (README, "Architecture"): imports flow one way, and the package stays readable in pieces.

The layer order is the import-linter contract in ``pyproject.toml`` (``[tool.importlinter]``): a lower layer never
imports a higher one, directly or through another module, and no two modules of a package import each other.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fnet

PACKAGE = Path(fnet.__file__).resolve().parent
REPO = PACKAGE.parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the ``fnet`` package under ``root`` with ``root/pyproject.toml``'s contracts (in a fresh
    process, so the package it reads is the one under ``root``)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename=sys.argv[1] + '/pyproject.toml', no_cache=True))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(root)], cwd=root, capture_output=True, text=True, timeout=300
    )


def test_imports_flow_one_way():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check is not vacuous: one planted upward import (a model module importing the study) fails it, and the
    failure names the module; a function-level import counts as much as a module-level one."""
    shutil.copytree(PACKAGE, tmp_path / "fnet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "fnet" / "models" / "planted.py").write_text(
        "def plan_of(preset):\n    from fnet.study.report import FINISHED\n\n    return FINISHED\n"
    )
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "fnet.models.planted" in result.stdout


def _function_level_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    top = {id(node) for node in tree.body}
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top and not _in_type_checking(tree, node)
    ]


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test) and node in ast.walk(n) for n in tree.body
    )


def _fnet_targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module] if node.level == 0 and node.module and node.module.split(".")[0] == "fnet" else []
    return [a.name for a in node.names if a.name.split(".")[0] == "fnet"]


def test_function_level_fnet_imports_state_their_reason():
    """An fnet import inside a function hides a dependency from readers; it is allowed for a heavy optional
    dependency behind it, and the line (or the comment line above it) says so."""
    unexplained = []
    for path in MODULES:
        lines = path.read_text().splitlines()
        for node in _function_level_imports(ast.parse("\n".join(lines))):
            if not _fnet_targets(node):
                continue
            here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
            if "#" not in here and not above.startswith("#"):
                unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert unexplained == [], f"function-level fnet imports without a reason: {unexplained}"


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and _fnet_targets(node):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.module} {private}")
    assert offenders == [], f"imports of other modules' private names: {offenders}"


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function without its docstring (documentation is not what makes a flow hard to read)."""
    first = node.body[0]
    doc = (
        first.end_lineno - first.lineno + 1
        if isinstance(first, ast.Expr)
        and isinstance(getattr(first, "value", None), ast.Constant)
        and isinstance(first.value.value, str)
        else 0
    )
    return node.end_lineno - node.lineno + 1 - doc


def test_modules_and_functions_stay_short():
    """No module over 500 lines; at most 3 functions over 80 lines of code (a flow should fit a screen or two)."""
    long_modules = {str(p.relative_to(REPO)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 500}
    assert long_modules == {}, f"modules over 500 lines (split them along a seam): {long_modules}"
    long_functions = [
        f"{path.relative_to(REPO)}:{node.name} ({_code_lines(node)})"
        for path in MODULES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > 80
    ]
    assert len(long_functions) <= 3, f"functions over 80 lines of code: {long_functions}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def f():\n    from fnet.study import plan\n", 1),
        ("def f():\n    # heavy\n    from fnet.study import plan\n", 1),
        ("from fnet.study import plan\n", 0),
        ("def f():\n    import numpy\n", 1),
    ],
)
def test_the_walk_finds_function_level_imports(source, expected):
    assert len(_function_level_imports(ast.parse(source))) == expected
