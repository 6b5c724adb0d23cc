"""Temporal ICA (samples = tokens): :class:`FastICA`, a torch re-implementation of scikit-learn's FastICA.

**Why it exists:** scikit-learn whitens with a full SVD of the centred [neurons, tokens] matrix (about 1e13
flops for 17,280 x 9,000, minutes on a laptop) and needs the whole matrix in RAM as float64. fnet only keeps
K << neurons components, so it whitens with a randomized range finder, streamed over row blocks of one or many
float16 arrays (memory-maps of many texts; :mod:`fnet.decompose._base`), then runs the same fixed-point
iteration on the small whitened [K, tokens] data. ``backend="sklearn"`` runs scikit-learn's FastICA instead, as
the reference. The spatial maps are ``spatial_maps_  # [K, neurons]``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch
from fnet.decompose._base import (
    ALGORITHMS,
    BACKENDS,
    DTYPES,
    FUNS,
    WHITEN_MODES,
    WHITEN_SOLVERS,
    _check_choice,
    _check_fun_args,
    _check_int,
    _check_n_components_fit,
    _column_stats,
    _numpy,
    _pca,
    _project,
    _resolve_solver,
    _TokenMatrix,
    _warn_not_converged,
)
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

__all__ = ["FastICA"]


# ----------------------------------------------------------------------------------------------------------------
# The FastICA fixed-point iteration on whitened data [K, samples].
# ----------------------------------------------------------------------------------------------------------------


def _nonlinearity(name: str, fun_args: dict):
    """Return ``g(u  # [K, samples]) -> (g(u)  # [K, samples], mean g'(u)  # [K])`` for the negentropy proxy."""
    if name == "logcosh":
        alpha = float(fun_args.get("alpha", 1.0))

        def g(u):
            gu = torch.tanh(alpha * u)
            return gu, alpha * (1 - gu * gu).mean(dim=-1)

    elif name == "exp":

        def g(u):
            bump = torch.exp(-0.5 * u * u)
            return u * bump, ((1 - u * u) * bump).mean(dim=-1)

    else:  # cube

        def g(u):
            return u**3, 3 * (u * u).mean(dim=-1)

    return g


def _sym_decorrelation(W: torch.Tensor) -> torch.Tensor:
    """``(W W^T)^(-1/2) W`` for ``W  # [K, K]``: the nearest orthogonal matrix, all rows treated alike."""
    eigenvalues, eigenvectors = torch.linalg.eigh(W @ W.T)
    eigenvalues = eigenvalues.clamp_min(torch.finfo(W.dtype).tiny)
    return (eigenvectors * eigenvalues.rsqrt()) @ eigenvectors.T @ W


# Below this many entries of the whitened data, the fixed-point iteration runs on one CPU thread: its ops are tiny
# (K x K eigh, [K, samples] tanh/matmul), and on a loaded machine an OpenMP region per op costs more than the op
# (measured: 70 ms instead of <1 ms per iteration for K=10 x 2,000 tokens while other jobs shared the 2 cores).
_SINGLE_THREAD_ENTRIES = 4 * 2**20


@contextlib.contextmanager
def _few_threads_for(white: torch.Tensor):
    if white.device.type != "cpu" or white.numel() > _SINGLE_THREAD_ENTRIES or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fastica_rotation(
    white: torch.Tensor,  # [K, samples], identity covariance
    w_init: torch.Tensor,  # [K, K]
    **kwargs,
) -> tuple[torch.Tensor, int, bool, float]:
    with _few_threads_for(white):
        return _fastica_iterate(white, w_init, **kwargs)


def _fastica_iterate(
    white: torch.Tensor,  # [K, samples], identity covariance
    w_init: torch.Tensor,  # [K, K]
    *,
    fun: str,
    fun_args: dict,
    algorithm: str,
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, int, bool, float]:
    """Return ``(W  # [K, K] orthogonal, n_iter, converged, final_change)``.

    ``change`` is scikit-learn's criterion: ``max_k | |<w_k_new, w_k_old>| - 1 |``.
    """
    g = _nonlinearity(fun, fun_args)
    n_samples = white.shape[1]
    change = float("inf")
    if algorithm == "parallel":
        W = _sym_decorrelation(w_init)
        for iteration in range(1, max_iter + 1):
            g_wx, g_prime_mean = g(W @ white)
            W_next = _sym_decorrelation(g_wx @ white.T / n_samples - g_prime_mean[:, None] * W)
            change = float((torch.abs(torch.abs((W_next * W).sum(dim=1)) - 1)).max())
            W = W_next
            if change < tol:
                return W, iteration, True, change
        return W, max_iter, False, change

    # deflation: one unit at a time, Gram-Schmidt against the units already found
    n_components = w_init.shape[0]
    W = torch.zeros_like(w_init)
    n_iters, all_converged, worst_change = [], True, 0.0
    for j in range(n_components):
        w = w_init[j] / torch.linalg.vector_norm(w_init[j])
        converged = False
        for iteration in range(1, max_iter + 1):
            g_wx, g_prime_mean = g((w @ white)[None])
            w_next = (white * g_wx).mean(dim=1) - g_prime_mean[0] * w
            w_next = w_next - (w_next @ W[:j].T) @ W[:j]
            w_next = w_next / torch.linalg.vector_norm(w_next)
            change = float(torch.abs(torch.abs(w_next @ w) - 1))
            w = w_next
            if change < tol:
                converged = True
                break
        W[j] = w
        n_iters.append(iteration)
        all_converged &= converged
        worst_change = max(worst_change, change)
    return W, max(n_iters), all_converged, worst_change


# ----------------------------------------------------------------------------------------------------------------
# FastICA
# ----------------------------------------------------------------------------------------------------------------


class FastICA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Temporal FastICA of ``X  # [tokens, neurons]`` (samples = tokens), torch, scikit-learn compatible.

    Same model and conventions as ``sklearn.decomposition.FastICA`` (same ``w_init`` drawn from ``random_state``,
    same sign convention, same stopping rule), so with ``whiten_solver="eigh"`` both give the same components to
    rounding; the randomized whitening gives the same components up to the sketch's accuracy.

    Parameters
    ----------
    n_components : K, the number of components.
    algorithm : "parallel" (symmetric decorrelation) or "deflation".
    fun, fun_args : negentropy proxy, "logcosh" (``fun_args={"alpha": a}``, 1 <= a <= 2), "exp" or "cube".
    max_iter, tol : fixed-point iteration limit and tolerance (scikit-learn's criterion).
    whiten : "unit-variance" (sources scaled to unit variance) or "arbitrary-variance".
    whiten_solver : "auto" (randomized when ``4 (K + oversamples) <= min(tokens, neurons)``, else exact),
        "randomized" (streamed range finder + Rayleigh-Ritz) or "eigh" (exact, Gram matrix of the smaller side).
    n_oversamples : extra sketch columns, sketch width K + n_oversamples; None (default) = max(10, K), because
        activation spectra are flat around K ~ 64 and 10 extra columns then miss part of the top-K subspace.
    n_power_iter : subspace iterations of the range finder.
    sketch_dtype : "float32" (default) or "float64": precision of the range finder's subspace iterations only.
    random_state : int, RandomState or None. ``w_init`` is drawn first (as scikit-learn does), then the sketch.
    device : torch device for the computation. dtype : "float64" (default) or "float32" (GPU speed).
    backend : "torch" or "sklearn" (runs ``sklearn.decomposition.FastICA`` on the same, concatenated data and
        copies its attributes; ``whiten_solver`` "auto" maps to scikit-learn's default "svd").
    block_rows : rows per streamed block; None sizes blocks to ~256 MiB.
    standardize : divide every neuron by its standard deviation before the decomposition (variance
        normalisation, FSL MELODIC's default), so that a few high-variance neurons do not dominate;
        ``spatial_maps_`` are then in units of each neuron's standard deviation. Default False (the paper's
        unstandardised ICA).

    Attributes
    ----------
    components_ : [K, neurons] unmixing incl. whitening: ``sources = (X - mean_) @ components_.T``.
    mixing_ : [neurons, K] pseudo-inverse of ``components_``. spatial_maps_ : ``mixing_.T`` [K, neurons].
    mean_ : [neurons]. whitening_ : [K, neurons], scikit-learn's convention (``principal axes / singular values``;
        ``(X - mean_) @ whitening_.T * sqrt(n_tokens)`` is white).
    n_iter_, converged_ : iterations run and whether ``change < tol`` was reached (ConvergenceWarning if not).
    whiten_solver_ : the solver actually used. n_features_in_ : neurons.
    scale_ : [neurons] the standard deviations divided out when ``standardize=True``, else None.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> sources = rng.laplace(size=(3000, 2))                 # [tokens, 2] independent, heavy-tailed
    >>> maps = rng.normal(size=(2, 50))                       # [2, neurons] planted spatial maps
    >>> ica = FastICA(n_components=2, random_state=0).fit(sources @ maps)
    >>> corr = np.abs(np.corrcoef(np.vstack([maps, ica.spatial_maps_]))[:2, 2:]).max(axis=1)
    >>> bool(corr.min() > 0.99)                               # each planted map recovered
    True
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        algorithm: str = "parallel",
        fun: str = "logcosh",
        fun_args: dict | None = None,
        max_iter: int = 200,
        tol: float = 1e-4,
        whiten: str = "unit-variance",
        whiten_solver: str = "auto",
        n_oversamples: int | None = None,
        n_power_iter: int = 4,
        sketch_dtype: str = "float32",
        random_state: Any = None,
        device: str = "cpu",
        dtype: str = "float64",
        backend: str = "torch",
        block_rows: int | None = None,
        standardize: bool = False,
    ):
        self.n_components = n_components
        self.algorithm = algorithm
        self.fun = fun
        self.fun_args = fun_args
        self.max_iter = max_iter
        self.tol = tol
        self.whiten = whiten
        self.whiten_solver = whiten_solver
        self.n_oversamples = n_oversamples
        self.n_power_iter = n_power_iter
        self.sketch_dtype = sketch_dtype
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.block_rows = block_rows
        self.standardize = standardize

    # -- validation ------------------------------------------------------------------------------------------
    def _validate_params(self) -> dict:
        _check_int(self.n_components, "n_components", 1)
        _check_choice(self.algorithm, "algorithm", ALGORITHMS)
        _check_choice(self.fun, "fun", FUNS)
        _check_choice(self.whiten, "whiten", WHITEN_MODES)
        _check_choice(self.whiten_solver, "whiten_solver", WHITEN_SOLVERS)
        _check_choice(self.backend, "backend", BACKENDS)
        _check_choice(self.dtype, "dtype", tuple(DTYPES))
        _check_int(self.max_iter, "max_iter", 1)
        if self.n_oversamples is not None:
            _check_int(self.n_oversamples, "n_oversamples", 0)
        _check_int(self.n_power_iter, "n_power_iter", 0)
        _check_choice(self.sketch_dtype, "sketch_dtype", tuple(DTYPES))
        if not (isinstance(self.tol, numbers.Real) and self.tol > 0):
            raise ValueError(f"tol must be a positive number; got {self.tol!r}")
        if self.backend == "sklearn" and self.standardize:
            raise ValueError("standardize=True is implemented by backend='torch' only; use backend='torch'")
        if self.backend == "sklearn" and self.whiten_solver == "randomized":
            raise ValueError(
                "backend='sklearn' has no randomized whitening; use whiten_solver='auto' (scikit-learn's 'svd') "
                "or 'eigh'"
            )
        return _check_fun_args(self.fun_args)

    # -- fitting ---------------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit on ``X  # [tokens, neurons]`` or a list of such arrays (stacked along tokens, streamed)."""
        self._fit(X)
        return self

    def fit_transform(self, X, y=None, **fit_params) -> np.ndarray:
        """Fit and return the training sources ``[tokens, K]`` (no extra pass over the data)."""
        return self._fit(X)

    def _fit(self, X) -> np.ndarray:
        fun_args = self._validate_params()
        data = _TokenMatrix(X)
        _check_n_components_fit(self.n_components, data.n_tokens, data.n_neurons)
        if self.backend == "sklearn":
            return self._fit_sklearn(data)

        dtype, device = DTYPES[self.dtype], torch.device(self.device)
        K, n_tokens = self.n_components, data.n_tokens
        rng = check_random_state(self.random_state)
        # drawn before anything else, exactly as scikit-learn does, so an int seed gives both backends one w_init
        w_init = torch.as_tensor(rng.normal(size=(K, K)), dtype=dtype, device=device)  # [K, K]

        mean, std = _column_stats(data, dtype, device, self.block_rows, with_std=bool(self.standardize))
        # variance normalisation (FSL MELODIC's default): every neuron divided by its std before the PCA, so the
        # decomposition is not dominated by the few neurons with the largest variance; constant neurons keep 1
        scale = None if std is None else torch.where(std > 0, std, torch.ones_like(std))  # [neurons]
        solver = _resolve_solver(self.whiten_solver, K, self.n_oversamples, n_tokens, data.n_neurons)
        pca = _pca(data, K, solver, mean=mean, scale=scale, n_oversamples=self.n_oversamples,
                   n_power_iter=self.n_power_iter, rng=rng, dtype=dtype, device=device, block_rows=self.block_rows,
                   sketch_dtype=DTYPES[self.sketch_dtype])
        white = pca.token_axes.T * math.sqrt(n_tokens)  # [K, tokens], identity covariance
        whitening = (pca.neuron_axes / pca.singular_values).T  # [K, neurons]

        W, n_iter, converged, change = _fastica_rotation(
            white, w_init, fun=self.fun, fun_args=fun_args, algorithm=self.algorithm,
            max_iter=self.max_iter, tol=self.tol,
        )
        sources = W @ white / math.sqrt(n_tokens)  # [K, tokens] == W @ whitening @ Xc.T
        if self.whiten == "unit-variance":
            source_std = sources.std(dim=1, correction=0)  # [K]
            W = W / source_std[:, None]
            sources = sources / source_std[:, None]
        components = W @ whitening  # [K, neurons], on the standardized neurons when standardize=True
        if scale is not None:
            whitening = whitening / scale[None, :]  # back to raw units: sources = (X - mean_) @ components_.T
            components = components / scale[None, :]

        self.components_ = _numpy(components)
        self.mixing_ = _numpy(torch.linalg.pinv(components))  # [neurons, K]
        self.mean_ = _numpy(mean)
        self.scale_ = None if scale is None else _numpy(scale)
        self.whitening_ = _numpy(whitening)
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        self.whiten_solver_ = solver
        self.n_features_in_ = data.n_neurons
        if not converged:
            _warn_not_converged("FastICA", n_iter, change, self.tol, stacklevel=4)  # user -> fit -> _fit
        return _numpy(sources.T)

    def _fit_sklearn(self, data: _TokenMatrix) -> np.ndarray:
        """Reference path: scikit-learn's FastICA on the concatenated data (it needs the whole matrix anyway)."""
        from sklearn.decomposition import FastICA as SklearnFastICA

        np_dtype = np.float32 if self.dtype == "float32" else np.float64
        X = np.concatenate([_numpy(torch.as_tensor(p)) if isinstance(p, torch.Tensor) else np.asarray(p)
                            for p in data.parts], axis=0).astype(np_dtype, copy=False)
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or infinity; decompositions need finite activations")
        reference = SklearnFastICA(
            n_components=self.n_components, algorithm=self.algorithm, whiten=self.whiten, fun=self.fun,
            fun_args=self.fun_args, max_iter=self.max_iter, tol=self.tol,
            whiten_solver="eigh" if self.whiten_solver == "eigh" else "svd", random_state=self.random_state,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            sources = reference.fit_transform(X)
        sklearn_warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
        for w in caught:  # re-emit everything else untouched
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.sklearn_estimator_ = reference
        self.components_ = reference.components_
        self.mixing_ = reference.mixing_
        self.mean_ = reference.mean_
        self.whitening_ = reference.whitening_
        self.n_iter_ = int(reference.n_iter_)
        # scikit-learn warns for "parallel" only; for "deflation" reaching max_iter is the only signal it gives
        self.converged_ = not sklearn_warned and self.n_iter_ < self.max_iter
        self.whiten_solver_ = reference.whiten_solver
        self.n_features_in_ = data.n_neurons
        if not self.converged_:
            warnings.warn(
                f"FastICA (backend='sklearn') did not converge: stopped after {self.n_iter_} iterations "
                f"(tol={self.tol:g}; scikit-learn does not report the final change). Increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=4,
            )
        return sources

    # -- applying --------------------------------------------------------------------------------------------
    def transform(self, X) -> np.ndarray:
        """``sources  # [tokens, K] = (X - mean_) @ components_.T``, streamed over row blocks."""
        check_is_fitted(self, "components_")
        data = _TokenMatrix(X)
        if data.n_neurons != self.components_.shape[1]:
            raise ValueError(f"X has {data.n_neurons} neurons; this FastICA was fitted on {self.components_.shape[1]}")
        dtype = DTYPES[self.dtype] if self.dtype in DTYPES else torch.float64
        device = torch.device(self.device)
        unmixing_t = torch.as_tensor(self.components_, dtype=dtype, device=device).T  # [neurons, K]
        mean = torch.as_tensor(self.mean_, dtype=dtype, device=device)
        return _numpy(_project(data, unmixing_t, mean=mean, scale=None, block_rows=self.block_rows))

    def inverse_transform(self, X) -> np.ndarray:
        """``X_reconstructed  # [tokens, neurons] = sources @ mixing_.T + mean_`` for ``sources  # [tokens, K]``."""
        check_is_fitted(self, "mixing_")
        sources = _numpy(X) if isinstance(X, torch.Tensor) else np.asarray(X, dtype=self.mixing_.dtype)
        return sources @ self.mixing_.T + self.mean_

    @property
    def spatial_maps_(self) -> np.ndarray:
        """``maps  # [K, neurons]`` = ``mixing_.T``: each component's loading on every neuron. With
        ``standardize=True``, in units of each neuron's standard deviation (``mixing_.T / scale_``), so that
        thresholding the maps does not favour high-variance neurons again."""
        check_is_fitted(self, "mixing_")
        maps = np.asarray(self.mixing_).T
        if getattr(self, "scale_", None) is not None:
            maps = maps / self.scale_[None, :]
        return np.ascontiguousarray(maps)

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def _min_tokens(self) -> int:
        return int(self.n_components) + 1
