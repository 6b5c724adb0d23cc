"""Module hygiene (issue #8 "library"): library code stays free of the Hydra app machinery."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
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


#: the readers of conf/ files outside the entry points (issue 23: one config reader): they load and merge YAML with
#: OmegaConf, as Hydra does, but never touch Hydra's app machinery
CONFIG_READERS = {"fnet/scoring/tasks.py": {"omegaconf"}, "fnet/study/preset.py": {"omegaconf"}}


def test_only_pipelines_import_hydra_or_omegaconf():
    assert len(MODULES) > 50
    offenders = {}
    for path in MODULES:
        if {"pipelines", "cli"} & set(path.relative_to(PACKAGE).parts):  # cli: the Hydra entry points
            continue
        found = _imported_roots(ast.parse(path.read_text(), str(path))) & {"hydra", "omegaconf"}
        found -= CONFIG_READERS.get(_relative(path), set())
        if found:
            offenders[_relative(path)] = sorted(found)
    assert offenders == {}, (
        f"library modules importing Hydra/OmegaConf (only fnet/pipelines/ and fnet/cli/ may, and OmegaConf "
        f"the config readers {sorted(CONFIG_READERS)}): {offenders}"
    )


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _public_objects():
    """(qualified name, object) for every name in every fnet module's ``__all__`` that the module defines."""
    for path in MODULES:
        if path.name == "__main__.py":
            continue  # importing it would run the CLI
        name = _module_name(path)
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", ()):
            obj = getattr(module, public)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == name:
                yield f"{name}.{public}", obj


def test_every_module_says_what_it_is_for():
    missing = [_relative(p) for p in MODULES if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()]
    assert missing == []


#: public names in files another engineer is rewriting right now (their docstrings come with that work); remove
#: an entry once it has one -- the test then fails to say so
PENDING: set[str] = set()


def test_every_public_function_and_class_has_a_numpydoc_docstring():
    objects = dict(_public_objects())
    assert {"fnet.models.load.load_model", "fnet.networks.netset.NetworkSet", "fnet.hooks.trace_signal"} <= set(objects)
    undocumented = sorted(name for name, obj in objects.items() if not (obj.__doc__ or "").strip())
    google = sorted(
        name
        for name, obj in objects.items()
        if re.search(r"^\s*(Args|Arguments|Attributes|Returns|Yields|Raises):\s*$", obj.__doc__ or "", re.M)
    )
    assert sorted(PENDING - set(undocumented)) == [], "documented now: remove from PENDING"
    undocumented = sorted(set(undocumented) - PENDING)
    assert undocumented == [], f"public names without a docstring: {undocumented}"
    assert google == [], f"Google-style sections (use numpydoc 'Parameters\\n----------'): {google}"


def test_google_section_detector_fires():
    def documented(x):
        """Do it.

        Args:
            x: a thing.
        """

    assert re.search(r"^\s*(Args|Arguments|Attributes|Returns|Yields|Raises):\s*$", documented.__doc__, re.M)
