"""The tutorials: Jupytext percent-format ``docs/tutorials/*.py`` paired with ``*.ipynb``, and their execution.

A tutorial is executed once per version of its source and of fnet's code (:func:`code_key`): the executed copy,
outputs included, is kept in ``build/tutorials/<name>.ipynb`` of the checkout, which the tests
(``tests/test_tutorials.py``) and the docs build (``docs/hooks.py``) share, so CI runs each tutorial once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
EXECUTED = ROOT / "build" / "tutorials"
#: the kernel's environment: no progress bars in the rendered outputs
QUIET = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore:IProgress not found",
}


def names() -> list[str]:
    """The tutorials' names (``find_networks``, ...), from the paired ``.py`` files."""
    return sorted(p.stem for p in TUTORIALS.glob("*.py"))


def code_key() -> str:
    """A hash of everything a tutorial's outputs depend on besides its own source: fnet's code and configs."""
    digest = hashlib.sha256()
    package = ROOT / "fnet"
    for path in sorted(list(package.rglob("*.py")) + list((package / "conf").rglob("*.yaml"))):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def source_key(name: str) -> str:
    """A hash of the tutorial's cells (their types and sources) and of :func:`code_key`."""
    import nbformat

    nb = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    cells = [(c.cell_type, c.source) for c in nb.cells]
    return hashlib.sha256(json.dumps([cells, code_key()]).encode()).hexdigest()[:16]


def executed(name: str, timeout: int = 1800) -> Path:
    """The executed copy of tutorial ``name`` (executed now unless a copy of the same sources and code exists).

    Raises nbclient's ``CellExecutionError`` when a cell fails. The notebook runs in a fresh temporary folder with
    this checkout first on ``PYTHONPATH``.
    """
    import nbformat
    from nbclient import NotebookClient

    EXECUTED.mkdir(parents=True, exist_ok=True)
    out = EXECUTED / f"{name}.ipynb"
    key = source_key(name)
    if out.is_file():
        done = nbformat.read(out, as_version=4)
        if done.metadata.get("fnet", {}).get("key") == key:
            return out
    nb = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    started = time.time()
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [saved.get("PYTHONPATH")] if p])
    os.environ.update(QUIET)
    try:
        with tempfile.TemporaryDirectory() as work:
            NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": work}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nb.metadata["fnet"] = {"key": key, "seconds": round(time.time() - started, 1), "python": sys.version.split()[0]}
    tmp = out.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(out)
    return out
