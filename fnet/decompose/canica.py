"""Spatial ICA in the style of fMRI CanICA (samples = neurons): :class:`CanICA`.

Per-text PCA over tokens, group PCA of the stacked text bases, then ICA whose samples are neurons, so maps are
independent over neurons. **Why it exists:** nothing in scikit-learn does the subject/group reduction;
nilearn's CanICA works on brain images, not on activation matrices.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from fnet.decompose._base import (
    DTYPES,
    FUNS,
    WHITEN_SOLVERS,
    _check_choice,
    _check_fun_args,
    _check_int,
    _column_stats,
    _numpy,
    _pca,
    _project,
    _resolve_solver,
    _TokenMatrix,
    _warn_not_converged,
)
from fnet.decompose.fastica import _fastica_rotation
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

__all__ = ["CanICA"]


# ----------------------------------------------------------------------------------------------------------------
# CanICA: spatial ICA (samples = neurons) after per-text and group PCA
# ----------------------------------------------------------------------------------------------------------------


class CanICA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """CanICA-style spatial ICA: components independent *over neurons* (as fMRI CanICA is over voxels).

    1. Per text (subject) ``X_s  # [tokens_s, neurons]``: centre each neuron over the text's tokens (and
       z-score it if ``standardize``), keep the ``subject_components`` leading principal axes, each scaled by its
       standard deviation (singular value / sqrt(tokens_s)) so texts of any length weigh alike per token:
       ``loadings_s  # [k, neurons]``.
    2. Group PCA: the K leading right singular vectors of the stacked loadings ``[texts * k, neurons]``.
    3. ICA with neurons as samples on ``group_axes  # [K, neurons]`` (centred over neurons, whitened), giving
       ``spatial_maps_  # [K, neurons]`` with zero mean and unit variance over neurons, each signed so that its
       heavy tail (skewness) is positive.

    A single array is one text. ``transform`` gives per-token component activity by least squares
    (``(X - mean_) @ pinv(spatial_maps_)``).

    Attributes: ``components_`` = ``spatial_maps_`` [K, neurons], ``group_axes_`` [K, neurons], ``mean_``
    [neurons] (over all tokens), ``n_iter_``, ``converged_``, ``n_features_in_``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> _ = rng.laplace(size=(3000, 2)), rng.normal(size=(2, 50))    # (keeps the draws of FastICA's example)
    >>> maps = rng.laplace(size=(2, 400)) * (rng.random((2, 400)) < 0.1)   # [2, neurons] sparse over neurons
    >>> texts = [rng.normal(size=(300, 2)) @ maps + 0.05 * rng.normal(size=(300, 400)) for _ in range(3)]
    >>> can = CanICA(n_components=2, random_state=0).fit(texts)       # 3 texts [tokens, neurons]
    >>> corr = np.abs(np.corrcoef(np.vstack([maps, can.spatial_maps_]))[:2, 2:]).max(axis=1)
    >>> bool(corr.min() > 0.99)
    True
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        subject_components: int | None = None,
        standardize: bool = False,
        fun: str = "cube",
        fun_args: dict | None = None,
        max_iter: int = 200,
        tol: float = 1e-4,
        pca_solver: str = "auto",
        n_oversamples: int | None = None,
        n_power_iter: int = 4,
        sketch_dtype: str = "float32",
        random_state: Any = None,
        device: str = "cpu",
        dtype: str = "float64",
        block_rows: int | None = None,
    ):
        self.n_components = n_components
        self.subject_components = subject_components
        self.standardize = standardize
        self.fun = fun
        self.fun_args = fun_args
        self.max_iter = max_iter
        self.tol = tol
        self.pca_solver = pca_solver
        self.n_oversamples = n_oversamples
        self.n_power_iter = n_power_iter
        self.sketch_dtype = sketch_dtype
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.block_rows = block_rows

    def _subject_k(self) -> int:
        return int(self.n_components if self.subject_components is None else self.subject_components)

    def _min_tokens(self) -> int:
        return self._subject_k() + 1

    def fit(self, X, y=None):
        """Fit on a list of texts ``[tokens_s, neurons]`` (or one array = one text)."""
        K = _check_int(self.n_components, "n_components", 1)
        k = _check_int(self._subject_k(), "subject_components", 1)
        _check_choice(self.fun, "fun", FUNS)
        _check_choice(self.pca_solver, "pca_solver", WHITEN_SOLVERS)
        _check_choice(self.dtype, "dtype", tuple(DTYPES))
        _check_int(self.max_iter, "max_iter", 1)
        fun_args = _check_fun_args(self.fun_args)
        dtype, device = DTYPES[self.dtype], torch.device(self.device)
        data = _TokenMatrix(X)
        if K > data.n_neurons:
            raise ValueError(f"n_components={K} is larger than the number of neurons ({data.n_neurons})")
        if k > data.n_neurons:
            raise ValueError(f"subject_components={k} is larger than the number of neurons ({data.n_neurons})")
        for index, n_part in enumerate(data.part_tokens):
            if n_part <= k:
                raise ValueError(
                    f"text {index} has {n_part} tokens; CanICA keeps {k} components per text and needs at least "
                    f"{k + 1} tokens per text"
                )
        if k * len(data.parts) < K:
            raise ValueError(
                f"n_components={K} exceeds the {k * len(data.parts)} stacked text components "
                f"({len(data.parts)} texts x subject_components={k})"
            )
        rng = check_random_state(self.random_state)
        w_init = torch.as_tensor(rng.normal(size=(K, K)), dtype=dtype, device=device)
        _check_choice(self.sketch_dtype, "sketch_dtype", tuple(DTYPES))
        pca_args = dict(n_oversamples=self.n_oversamples, n_power_iter=self.n_power_iter, rng=rng, dtype=dtype,
                        device=device, block_rows=self.block_rows, sketch_dtype=DTYPES[self.sketch_dtype])

        # 1. per-text PCA over tokens
        loadings, mean_sum = [], torch.zeros(data.n_neurons, dtype=torch.float64, device=device)
        for index, part in enumerate(data.parts):
            text = _TokenMatrix(part)
            try:
                mean, std = _column_stats(text, dtype, device, self.block_rows, with_std=self.standardize)
            except ValueError as error:
                raise ValueError(f"text {index}: {error}") from None
            scale = torch.where(std > 0, std, torch.ones_like(std)) if self.standardize else None
            solver = _resolve_solver(self.pca_solver, k, self.n_oversamples, text.n_tokens, text.n_neurons)
            try:
                pca = _pca(text, k, solver, mean=mean, scale=scale, **pca_args)
            except ValueError as error:
                raise ValueError(f"text {index}: {error}") from None
            loadings.append((pca.neuron_axes * (pca.singular_values / math.sqrt(text.n_tokens))).T)  # [k, neurons]
            mean_sum += mean.to(torch.float64) * text.n_tokens

        # 2. group PCA of the stacked loadings (not centred: they are axes, not samples)
        stacked = _TokenMatrix(torch.cat(loadings, dim=0))  # [texts * k, neurons]
        solver = _resolve_solver(self.pca_solver, K, self.n_oversamples, stacked.n_tokens, stacked.n_neurons)
        group = _pca(stacked, K, solver, mean=None, scale=None, **pca_args)
        group_axes = group.neuron_axes.T  # [K, neurons], orthonormal rows

        # 3. ICA over neurons: centre each group axis over neurons and whiten the K x K covariance
        n_neurons = data.n_neurons
        centred = group_axes - group_axes.mean(dim=1, keepdim=True)  # [K, neurons]
        eigenvalues, eigenvectors = torch.linalg.eigh(centred @ centred.T / n_neurons)
        if float(eigenvalues.min()) <= float(eigenvalues.max()) * n_neurons * torch.finfo(dtype).eps:
            raise ValueError("the group components are linearly dependent after centring over neurons; "
                             "lower n_components")
        white = (eigenvectors * eigenvalues.rsqrt()).T @ centred  # [K, neurons], identity covariance
        W, n_iter, converged, change = _fastica_rotation(
            white, w_init, fun=self.fun, fun_args=fun_args, algorithm="parallel", max_iter=self.max_iter,
            tol=self.tol,
        )
        maps = W @ white  # [K, neurons]
        maps = maps * torch.sign((maps**3).mean(dim=1) + torch.finfo(dtype).tiny)[:, None]

        self.components_ = _numpy(maps)
        self.group_axes_ = _numpy(group_axes)
        self.mean_ = _numpy((mean_sum / data.n_tokens).to(dtype))
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        self.n_features_in_ = n_neurons
        self._projection = _numpy(torch.linalg.pinv(maps))  # [neurons, K]
        if not converged:
            _warn_not_converged("CanICA", n_iter, change, self.tol)
        return self

    def transform(self, X) -> np.ndarray:
        """Per-token activity of each map, ``[tokens, K]``: least squares of ``X - mean_`` on the maps."""
        check_is_fitted(self, "components_")
        data = _TokenMatrix(X)
        dtype, device = DTYPES[self.dtype], torch.device(self.device)
        projection = torch.as_tensor(self._projection, dtype=dtype, device=device)
        mean = torch.as_tensor(self.mean_, dtype=dtype, device=device)
        return _numpy(_project(data, projection, mean=mean, scale=None, block_rows=self.block_rows))

    def inverse_transform(self, X) -> np.ndarray:
        check_is_fitted(self, "components_")
        return np.asarray(X) @ self.components_ + self.mean_

    @property
    def spatial_maps_(self) -> np.ndarray:
        """``maps  # [K, neurons]``, zero mean and unit variance over neurons, heavy tail positive."""
        check_is_fitted(self, "components_")
        return np.array(self.components_, copy=True)

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]
