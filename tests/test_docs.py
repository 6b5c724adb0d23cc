"""Module hygiene (issue #8 "library"): library code stays free of the Hydra app machinery."""

from __future__ import annotations

import ast
from pathlib import Path

import fnet

PACKAGE = Path(fnet.__file__).resolve().parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def _imported_roots(tree: ast.AST) -> set[str]:
    """Top-level package names imported anywhere in a module (module level or inside functions)."""
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_walk_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    from omegaconf import OmegaConf\n    import hydra.utils\n")
    assert _imported_roots(tree) == {"omegaconf", "hydra"}


def test_only_pipelines_import_hydra_or_omegaconf():
    assert len(MODULES) > 50
    offenders = {}
    for path in MODULES:
        if "pipelines" in path.relative_to(PACKAGE).parts:
            continue
        found = _imported_roots(ast.parse(path.read_text(), str(path))) & {"hydra", "omegaconf"}
        if found:
            offenders[_relative(path)] = sorted(found)
    assert offenders == {}, f"library modules importing Hydra/OmegaConf (only fnet/pipelines/ may): {offenders}"
