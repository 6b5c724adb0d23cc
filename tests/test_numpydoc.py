"""The public API's docstrings pass numpydoc's validation (``numpydoc.validate``) for the checks that matter to a
reader: a docstring exists (GL08), every parameter is documented (PR01) and none that does not exist (PR02), and a
function says what it returns (RT01).

Scope: every name of ``fnet.__all__`` and of the stage packages' ``__all__`` (:data:`PACKAGES`) that is a
function or a class. ``PENDING`` lists the names still to be brought up to that standard, each with the checks it
fails today; the test fails when a name fails a check it is not listed for, and when a listed failure is fixed
(then remove it from the list), so the list only shrinks.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

numpydoc_validate = pytest.importorskip("numpydoc.validate", reason="numpydoc is in the docs extra")

#: the stage packages whose ``__all__`` is the public API beside ``fnet.__all__``
PACKAGES = (
    "fnet.models",
    "fnet.recording",
    "fnet.decompose",
    "fnet.networks",
    "fnet.intervene",
    "fnet.scoring",
    "fnet.attribution",
    "fnet.report",
    "fnet.study",
    "fnet.cli",
    "fnet.paths",
)
#: the numpydoc checks run (numpydoc.validate's codes)
CHECKS = ("GL08", "PR01", "PR02", "RT01")

#: public name -> the checks it still fails (to be documented; see the module docstring)
PENDING: dict[str, set[str]] = {
    # an abstract base: its Parameters are its subclasses' (FastICA, Picard), whose __init__ take them
    "fnet.decompose.TemporalICA": {"PR02"},
}


def _public() -> dict[str, object]:
    """``{public name: object}``: functions and classes of fnet.__all__ and of the stage packages' __all__."""
    import fnet

    out = {f"fnet.{name}": getattr(fnet, name) for name in fnet.__all__ if not name.startswith("_")}
    for package in PACKAGES:
        module = importlib.import_module(package)
        out.update({f"{package}.{name}": getattr(module, name) for name in getattr(module, "__all__", ())})
    return {name: obj for name, obj in out.items() if inspect.isfunction(obj) or inspect.isclass(obj)}


def failures(obj: object) -> set[str]:
    """The :data:`CHECKS` that ``obj``'s docstring fails."""
    qualified = f"{obj.__module__}.{obj.__qualname__}"
    return {code for code, _ in numpydoc_validate.validate(qualified)["errors"] if code in CHECKS}


def test_the_public_api_passes_numpydoc_validation():
    public = _public()
    assert {"fnet.load_model", "fnet.lesion", "fnet.models.load_model", "fnet.cli.main"} <= set(public)
    found = {name: failures(obj) for name, obj in public.items()}
    new = {
        name: sorted(codes - PENDING.get(name, set()))
        for name, codes in found.items()
        if codes - PENDING.get(name, set())
    }
    fixed = {
        name: sorted(codes - found.get(name, set()))
        for name, codes in PENDING.items()
        if codes - found.get(name, set())
    }
    assert new == {}, f"public names whose docstrings fail numpydoc checks {CHECKS}: {new}"
    assert fixed == {}, f"fixed now, remove from PENDING: {fixed}"


def test_the_check_catches_an_undocumented_parameter():
    assert failures(_example) == {"PR01", "RT01"}


def _example(x, y):
    """Add.

    Parameters
    ----------
    x : int
        One.
    """
    return x + y
