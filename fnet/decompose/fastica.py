"""Temporal ICA (samples = tokens): :class:`FastICA`, a torch re-implementation of scikit-learn's FastICA.

**Why it exists:** scikit-learn whitens with a full SVD of the centred [neurons, tokens] matrix (about 1e13
flops for 17,280 x 9,000, minutes on a laptop) and needs the whole matrix in RAM as float64. fnet only keeps
K << neurons components, so it whitens with a randomized range finder, streamed over row blocks of one or many
float16 arrays (memory-maps of many texts; :mod:`fnet.decompose.temporal`), then runs the same fixed-point
iteration (:func:`fixed_point_rotation`, this module's core) on the small whitened [K, tokens] data.
``backend="sklearn"`` runs scikit-learn's FastICA instead, as the reference. The spatial maps are
``spatial_maps_  # [K, neurons]``.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.decomposition import FastICA as SklearnFastICA
from sklearn.exceptions import ConvergenceWarning

from fnet.decompose.base import Choice, fill_doc
from fnet.decompose.temporal import TemporalICA, symmetric_decorrelation
from fnet.decompose.tokens import TokenMatrix, to_numpy

__all__ = ["FastICA", "ALGORITHMS", "BACKENDS", "fixed_point_rotation"]

#: how the fixed-point iteration treats the components
ALGORITHMS = ("parallel", "deflation")
#: who computes the decomposition
BACKENDS = ("torch", "sklearn")


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


def fixed_point_rotation(
    white: torch.Tensor,  # [K, samples], identity covariance
    w_init: torch.Tensor,  # [K, K]
    *,
    fun: str,
    fun_args: dict,
    algorithm: str,
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, int, bool, float]:
    """FastICA's fixed-point iteration on whitened data (scikit-learn's algorithm and stopping rule).

    Parameters
    ----------
    white : torch.Tensor
        ``[K, samples]`` with identity covariance (samples: tokens for temporal ICA, neurons for CanICA).
    w_init : torch.Tensor
        ``[K, K]`` initial unmixing (decorrelated first by the parallel algorithm).
    fun, fun_args, algorithm, max_iter, tol
        Keyword arguments as in :class:`FastICA`; ``fun_args`` already checked.

    Returns
    -------
    (W, n_iter, converged, change)
        ``W  # [K, K]`` orthogonal, the iterations run, whether ``change < tol`` was reached, and the final
        ``change = max_k | |<w_k_new, w_k_old>| - 1 |``.
    """
    with _few_threads_for(white):
        return _fastica_iterate(
            white, w_init, fun=fun, fun_args=fun_args, algorithm=algorithm, max_iter=max_iter, tol=tol
        )


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
        W = symmetric_decorrelation(w_init)
        for iteration in range(1, max_iter + 1):
            g_wx, g_prime_mean = g(W @ white)
            W_next = symmetric_decorrelation(g_wx @ white.T / n_samples - g_prime_mean[:, None] * W)
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


@fill_doc
class FastICA(TemporalICA):
    """Temporal FastICA of ``X  # [tokens, neurons]`` (samples = tokens), torch, scikit-learn compatible.

    Same model and conventions as ``sklearn.decomposition.FastICA`` (same ``w_init`` drawn from ``random_state``,
    same sign convention, same stopping rule), so with ``whiten_solver="eigh"`` both give the same components to
    rounding; the randomized whitening gives the same components up to the sketch's accuracy. The whitening and
    everything after the rotation are :class:`~fnet.decompose.temporal.TemporalICA`'s; this class adds the
    fixed-point rotation (:func:`fixed_point_rotation`) and the scikit-learn reference backend.

    Parameters
    ----------
    %(n_components)s
    algorithm : {"parallel", "deflation"}
        Symmetric decorrelation of all components at once, or one component at a time.
    %(fun)s
    %(fun_args)s
    max_iter, tol : int, float
        Fixed-point iteration limit and tolerance (scikit-learn's criterion,
        ``max_k | |<w_k_new, w_k_old>| - 1 | < tol``).
    %(whiten)s
    %(whiten_solver)s
    %(n_oversamples)s
    %(n_power_iter)s
    %(sketch_dtype)s
    %(random_state)s
    %(device)s
    %(dtype)s
    backend : {"torch", "sklearn"}
        ``sklearn`` runs ``sklearn.decomposition.FastICA`` on the same, concatenated data and copies its
        attributes (``whiten_solver`` "auto" maps to scikit-learn's default "svd").
    %(block_rows)s
    %(standardize)s

    Attributes
    ----------
    %(attributes)s
    unmixing_ : ndarray [K, neurons]
        Is ``components_``: ``sources = (X - mean_) @ components_.T`` (unmixing including whitening).
    whitening_ : ndarray [K, neurons]
        scikit-learn's convention (principal axes / singular values; ``(X - mean_) @ whitening_.T *
        sqrt(tokens)`` is white).
    whiten_solver_ : str
        The solver used.
    scale_ : ndarray [neurons] or None
        The standard deviations divided out when ``standardize=True``.

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

    _parameter_rules: ClassVar[dict[str, Any]] = {"algorithm": Choice(ALGORITHMS), "backend": Choice(BACKENDS)}

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

    def _check_param_combinations(self) -> None:
        if self.backend == "sklearn" and self.standardize:
            raise ValueError("standardize=True is implemented by backend='torch' only; use backend='torch'")
        if self.backend == "sklearn" and self.whiten_solver == "randomized":
            raise ValueError(
                "backend='sklearn' has no randomized whitening; use whiten_solver='auto' (scikit-learn's 'svd') "
                "or 'eigh'"
            )

    # -- the core: the fixed-point rotation ------------------------------------------------------------------
    def _rotate(self, white: torch.Tensor, w_init: torch.Tensor) -> tuple[torch.Tensor, int, bool, str]:
        W, n_iter, converged, change = fixed_point_rotation(
            white,
            w_init,
            fun=self.fun,
            fun_args=dict(self.fun_args or {}),
            algorithm=self.algorithm,
            max_iter=self.max_iter,
            tol=self.tol,
        )
        detail = f"stopped after {n_iter} iterations with final change {change:.3g} > tol={self.tol:g}"
        return W, n_iter, converged, detail

    def _fit_core(self, data: TokenMatrix) -> np.ndarray:
        if self.backend == "sklearn":
            return self._fit_sklearn(data)
        return super()._fit_core(data)

    def _fit_sklearn(self, data: TokenMatrix) -> np.ndarray:
        """Reference path: scikit-learn's FastICA on the concatenated data (it needs the whole matrix anyway)."""
        np_dtype = np.float32 if self.dtype == "float32" else np.float64
        X = np.concatenate(
            [to_numpy(torch.as_tensor(p)) if isinstance(p, torch.Tensor) else np.asarray(p) for p in data.parts], axis=0
        ).astype(np_dtype, copy=False)
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or infinity; decompositions need finite activations")
        reference = SklearnFastICA(
            n_components=self.n_components,
            algorithm=self.algorithm,
            whiten=self.whiten,
            fun=self.fun,
            fun_args=self.fun_args,
            max_iter=self.max_iter,
            tol=self.tol,
            whiten_solver="eigh" if self.whiten_solver == "eigh" else "svd",
            random_state=self.random_state,
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
        self.unmixing_ = self.components_
        self.mixing_ = reference.mixing_
        self.mean_ = reference.mean_
        self.whitening_ = reference.whitening_
        self.whiten_solver_ = reference.whiten_solver
        n_iter = int(reference.n_iter_)
        # scikit-learn warns for "parallel" only; for "deflation" reaching max_iter is the only signal it gives
        self._record_convergence(
            n_iter,
            not sklearn_warned and n_iter < self.max_iter,
            f"stopped after {n_iter} iterations (tol={self.tol:g}; scikit-learn does not report the final change)",
            label="FastICA (backend='sklearn')",
        )
        return sources
