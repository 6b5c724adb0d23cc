"""The tutorials (``docs/tutorials``): each Jupytext percent-format ``.py`` file and its paired ``.ipynb`` hold the
same cells, and each runs from top to bottom without an error (slow: minutes, on the default model).

The executed copies are kept in ``build/tutorials`` per version of the sources and of fnet's code
(``docs/notebooks.py``), so the docs build that follows in CI renders them without running them again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS))
jupytext = pytest.importorskip("jupytext", reason="jupytext is in the docs extra")
nbformat = pytest.importorskip("nbformat", reason="nbformat is in the docs extra")

import notebooks  # noqa: E402 - docs/notebooks.py, found through the path above

NAMES = notebooks.names()


def _cells(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def test_there_are_three_tutorials_each_paired():
    assert NAMES == ["find_networks", "lesion_controls", "pos_key_neurons"]
    for name in NAMES:
        assert (notebooks.TUTORIALS / f"{name}.ipynb").is_file(), f"{name}.py has no paired .ipynb (jupytext --sync)"


@pytest.mark.parametrize("name", NAMES)
def test_the_notebook_and_its_script_hold_the_same_cells(name):
    script = jupytext.read(notebooks.TUTORIALS / f"{name}.py")
    notebook = nbformat.read(notebooks.TUTORIALS / f"{name}.ipynb", as_version=4)
    assert _cells(script) == _cells(notebook), (
        f"docs/tutorials/{name}.py and .ipynb differ: run `jupytext --sync docs/tutorials/{name}.py`"
    )
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit the .ipynb without outputs (the docs render the executed copy)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_the_tutorial_runs(name, shared_data):
    executed = nbformat.read(notebooks.executed(name), as_version=4)  # raises on a failing cell
    errors = [o for cell in executed.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    assert sum(1 for cell in executed.cells for o in cell.get("outputs", [])) >= 3
