"""Spatial ICA in the style of fMRI CanICA (samples = neurons): :class:`CanICA`.

Per-text PCA over tokens, group PCA of the stacked text bases, then ICA whose samples are neurons, so maps are
independent over neurons. **Why it exists:** nothing in scikit-learn does the subject/group reduction;
nilearn's CanICA works on brain images, not on activation matrices.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from sklearn.utils import check_random_state

from fnet.decompose.base import (
    DTYPES,
    FUNS,
    WHITEN_SOLVERS,
    BaseDecomposition,
    Choice,
    FunArgs,
    Integer,
    Positive,
    fill_doc,
)
from fnet.decompose.fastica import fixed_point_rotation
from fnet.decompose.tokens import TokenMatrix, column_stats, to_numpy

__all__ = ["CanICA"]


# ----------------------------------------------------------------------------------------------------------------
# CanICA: spatial ICA (samples = neurons) after per-text and group PCA
# ----------------------------------------------------------------------------------------------------------------


@fill_doc
class CanICA(BaseDecomposition):
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

    Parameters
    ----------
    %(n_components)s
    subject_components : int or None
        Principal axes kept per text (None: ``n_components``).
    standardize : bool
        z-score every neuron within each text before its PCA.
    %(fun)s
    %(fun_args)s
    max_iter, tol : int, float
        The fixed-point iteration's limit and tolerance (as :class:`~fnet.decompose.FastICA`'s).
    pca_solver : {"auto", "randomized", "eigh"}
        Solver of the per-text and group PCAs (as FastICA's ``whiten_solver``).
    %(n_oversamples)s
    %(n_power_iter)s
    %(sketch_dtype)s
    %(random_state)s
    %(device)s
    %(dtype)s
    %(block_rows)s

    Attributes
    ----------
    %(attributes)s
    components_ : ndarray [K, neurons]
        Here the spatial maps themselves (``mixing_`` is their transpose).
    unmixing_ : ndarray [K, neurons]
        ``pinv(spatial_maps_).T``: least-squares activity, ``sources = (X - mean_) @ unmixing_.T``.
    group_axes_ : ndarray [K, neurons]
        The group PCA's orthonormal axes.

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

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "subject_components": Integer(1, optional=True),
        "fun": Choice(FUNS),
        "fun_args": FunArgs(),
        "pca_solver": Choice(WHITEN_SOLVERS),
        "max_iter": Integer(1),
        "tol": Positive(),
        "n_oversamples": Integer(0, optional=True),
        "n_power_iter": Integer(0),
        "sketch_dtype": Choice(tuple(DTYPES)),
    }

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

    def min_tokens(self) -> int:
        """The fewest tokens one text needs: ``subject_components + 1``."""
        return self._subject_k() + 1

    def _check_data(self, data: TokenMatrix) -> None:
        K, k = int(self.n_components), self._subject_k()
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

    # -- the core: per-text PCA, group PCA, ICA over neurons -------------------------------------------------
    def _fit_core(self, data: TokenMatrix) -> None:
        K, k = int(self.n_components), self._subject_k()
        dtype, device = self._compute()
        rng = check_random_state(self.random_state)
        w_init = torch.as_tensor(rng.normal(size=(K, K)), dtype=dtype, device=device)

        # 1. per-text PCA over tokens
        loadings, mean_sum = [], torch.zeros(data.n_neurons, dtype=torch.float64, device=device)
        for index, part in enumerate(data.parts):
            text = TokenMatrix(part)
            try:
                mean, std = column_stats(text, dtype, device, self.block_rows, with_std=self.standardize)
            except ValueError as error:
                raise ValueError(f"text {index}: {error}") from None
            scale = torch.where(std > 0, std, torch.ones_like(std)) if self.standardize else None
            try:
                pca, _ = self._principal_axes(text, k, self.pca_solver, mean=mean, scale=scale, rng=rng)
            except ValueError as error:
                raise ValueError(f"text {index}: {error}") from None
            loadings.append((pca.neuron_axes * (pca.singular_values / math.sqrt(text.n_tokens))).T)  # [k, neurons]
            mean_sum += mean.to(torch.float64) * text.n_tokens

        # 2. group PCA of the stacked loadings (not centred: they are axes, not samples)
        stacked = TokenMatrix(torch.cat(loadings, dim=0))  # [texts * k, neurons]
        group, _ = self._principal_axes(stacked, K, self.pca_solver, mean=None, scale=None, rng=rng)
        group_axes = group.neuron_axes.T  # [K, neurons], orthonormal rows

        # 3. ICA over neurons: centre each group axis over neurons and whiten the K x K covariance
        n_neurons = data.n_neurons
        centred = group_axes - group_axes.mean(dim=1, keepdim=True)  # [K, neurons]
        eigenvalues, eigenvectors = torch.linalg.eigh(centred @ centred.T / n_neurons)
        if float(eigenvalues.min()) <= float(eigenvalues.max()) * n_neurons * torch.finfo(dtype).eps:
            raise ValueError(
                "the group components are linearly dependent after centring over neurons; lower n_components"
            )
        white = (eigenvectors * eigenvalues.rsqrt()).T @ centred  # [K, neurons], identity covariance
        W, n_iter, converged, change = fixed_point_rotation(
            white,
            w_init,
            fun=self.fun,
            fun_args=dict(self.fun_args or {}),
            algorithm="parallel",
            max_iter=self.max_iter,
            tol=self.tol,
        )
        maps = W @ white  # [K, neurons]
        maps = maps * torch.sign((maps**3).mean(dim=1) + torch.finfo(dtype).tiny)[:, None]

        self.components_ = to_numpy(maps)
        self.mixing_ = self.components_.T  # [neurons, K]: spatial_maps_ = mixing_.T = the maps
        self.unmixing_ = to_numpy(torch.linalg.pinv(maps)).T  # [K, neurons]
        self.group_axes_ = to_numpy(group_axes)
        self.mean_ = to_numpy((mean_sum / data.n_tokens).to(dtype))
        self._record_convergence(
            n_iter, converged, f"stopped after {n_iter} iterations with final change {change:.3g} > tol={self.tol:g}"
        )
