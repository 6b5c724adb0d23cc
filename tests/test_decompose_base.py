"""The decomposition base class (issue 23, item 3): the base owns fit / transform / maps / validation, an
algorithm is its core only, and ``fnet/decompose`` imports no other module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

import fnet.decompose
from fnet.decompose import BaseDecomposition, FastICA, TemporalICA, best_match_abs_corr

DECOMPOSE = Path(fnet.decompose.__file__).resolve().parent

#: what the base class owns: a subclass that defines one of these re-implements shared behaviour
OWNED = {
    "fit",
    "fit_transform",
    "_fit",
    "transform",
    "inverse_transform",
    "spatial_maps_",
    "check_params",
    "parameter_rules",
    "_record_convergence",
    "_principal_axes",
    "_compute",
    "_n_features_out",
}


def _all_subclasses(cls) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


def test_no_estimator_reimplements_what_the_base_owns():
    estimators = {c for c in _all_subclasses(BaseDecomposition) if c.__module__.startswith("fnet.decompose")}
    assert {"FastICA", "CanICA", "DictionaryLearningDecomposition", "TemporalICA"} <= {c.__name__ for c in estimators}
    overridden = {c.__name__: sorted(OWNED & set(vars(c))) for c in estimators if OWNED & set(vars(c))}
    assert overridden == {}, f"estimators re-implementing what BaseDecomposition owns: {overridden}"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_decompose_imports_no_private_names_and_stays_below_networks():
    allowed = ("fnet.cache", "fnet.compat", "fnet.batching", "fnet.decompose")
    private, upward = [], []
    for path in sorted(DECOMPOSE.glob("*.py")):
        for module, names in _imports(path):
            if not module.startswith("fnet"):
                continue
            if any(part.startswith("_") for part in module.split(".")) or any(n.startswith("_") for n in names):
                private.append(f"{path.name}: from {module} import {', '.join(names)}")
            if not module.startswith(allowed):
                upward.append(f"{path.name}: {module}")
    assert private == [], private
    assert upward == [], upward


def test_parameter_docs_are_filled_in():
    for cls in _all_subclasses(BaseDecomposition) | {BaseDecomposition}:
        if cls.__module__.startswith("fnet.decompose"):
            assert "%(" not in cls.__doc__, cls
            assert "n_components : int" in cls.__doc__, cls


class _Whitened(TemporalICA):
    """PCA whitening and no rotation: the smallest temporal ICA, to show what a new algorithm has to write."""

    def __init__(
        self,
        n_components=3,
        *,
        fun="logcosh",
        fun_args=None,
        max_iter=1,
        tol=1e-4,
        whiten="unit-variance",
        whiten_solver="auto",
        n_oversamples=None,
        n_power_iter=4,
        sketch_dtype="float32",
        random_state=None,
        device="cpu",
        dtype="float64",
        block_rows=None,
        standardize=False,
        converge=True,
    ):
        self.n_components, self.fun, self.fun_args, self.max_iter, self.tol = n_components, fun, fun_args, max_iter, tol
        self.whiten, self.whiten_solver, self.n_oversamples = whiten, whiten_solver, n_oversamples
        self.n_power_iter, self.sketch_dtype, self.random_state = n_power_iter, sketch_dtype, random_state
        self.device, self.dtype, self.block_rows, self.standardize = device, dtype, block_rows, standardize
        self.converge = converge

    def _rotate(self, white, w_init):
        return torch.eye(len(w_init), dtype=white.dtype), 1, self.converge, "it never tried"


def test_a_new_temporal_algorithm_is_its_rotation_only():
    rng = np.random.default_rng(0)
    X = rng.laplace(size=(400, 3)) @ rng.normal(size=(3, 40)) + rng.normal(size=40)  # [tokens, neurons], rank 3
    est = _Whitened(3, random_state=0).fit(X)
    assert est.spatial_maps_.shape == (3, 40) and est.converged_ and est.n_iter_ == 1
    np.testing.assert_allclose(est.inverse_transform(est.transform(X)), X, atol=1e-8)
    np.testing.assert_allclose(clone(est).fit_transform(X), est.transform(X), atol=1e-10)
    # PCA spans the same subspace as FastICA: FastICA's maps are rotations of these
    ica = FastICA(3, random_state=0).fit(X)
    projection = ica.spatial_maps_ @ np.linalg.pinv(est.spatial_maps_) @ est.spatial_maps_
    np.testing.assert_allclose(projection, ica.spatial_maps_, atol=1e-8)
    not_converged = r"^_Whitened did not converge: it never tried\. Increase max_iter"
    with pytest.warns(ConvergenceWarning, match=not_converged) as caught:
        _Whitened(3, converge=False).fit(X)
    assert caught[0].filename == __file__  # the warning points at the caller of fit
    with pytest.raises(ValueError, match=r"unknown whiten='zca'; valid choices: 'unit-variance', 'arbitrary-variance'"):
        _Whitened(3, whiten="zca").fit(X)
    with pytest.raises(ValueError, match=r"X has 39 neurons; this _Whitened was fitted on 40"):
        est.transform(X[:, 1:])


def test_parameter_rules_merge_down_the_hierarchy():
    rules = FastICA.parameter_rules()
    assert {"n_components", "dtype", "fun", "whiten_solver", "algorithm", "backend"} <= set(rules)
    with pytest.raises(ValueError, match=r"n_oversamples must be an integer >= 0 or None; got -1"):
        FastICA(2, n_oversamples=-1).check_params()
    with pytest.raises(ValueError, match=r"tol must be a positive number; got 0"):
        FastICA(2, tol=0).check_params()
    with pytest.raises(ValueError, match=r"fun_args\['alpha'\] must be in \[1, 2\]; got 3"):
        FastICA(2, fun_args={"alpha": 3}).check_params()


def test_canica_and_dictionary_learning_share_the_base_transforms():
    from fnet.decompose import CanICA, DictionaryLearningDecomposition

    rng = np.random.default_rng(1)
    maps = (rng.random((3, 120)) < 0.1) * rng.uniform(1, 2, (3, 120))  # [3, neurons]
    texts = [rng.standard_normal((150, 3)) @ maps + 0.05 * rng.standard_normal((150, 120)) for _ in range(3)]
    can = CanICA(3, random_state=0).fit(texts)
    assert best_match_abs_corr(maps, can.spatial_maps_)[0].min() > 0.95
    np.testing.assert_array_equal(can.spatial_maps_, can.components_)
    np.testing.assert_allclose(can.fit_transform(texts), can.transform(texts), atol=1e-10)
    with pytest.warns(ConvergenceWarning, match=r"^MiniBatchDictionaryLearning did not converge: ran all 3 epochs"):
        learner = DictionaryLearningDecomposition(3, random_state=0, max_iter=3).fit(texts)
    assert learner.transform(texts[0]).shape == (150, 3)
    np.testing.assert_array_equal(learner.spatial_maps_, learner.components_)
