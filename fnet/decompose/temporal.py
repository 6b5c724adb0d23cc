"""Temporal ICA (samples = tokens) as whitening plus a rotation: :class:`TemporalICA`, the base of FastICA and Picard.

Everything but the rotation is shared: the streamed column statistics (and variance normalisation), the
randomized or exact PCA whitening ``white  # [K, tokens]`` (identity covariance), the initial rotation
``w_init  # [K, K]`` drawn from ``random_state`` before the PCA sketch (as scikit-learn does), the unit-variance
scaling of the sources and the unmixing / mixing matrices. A temporal ICA algorithm implements only
``_rotate(white, w_init)``, the orthogonal (or not) ``W  # [K, K]`` that makes ``W @ white`` independent.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from sklearn.base import clone
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
from fnet.decompose.tokens import TokenMatrix, column_stats, to_numpy

__all__ = ["TemporalICA", "WHITEN_MODES", "symmetric_decorrelation"]

#: scaling of the sources
WHITEN_MODES = ("unit-variance", "arbitrary-variance")


def symmetric_decorrelation(W: torch.Tensor) -> torch.Tensor:
    """``(W W^T)^(-1/2) W`` for ``W  # [K, K]``: the nearest orthogonal matrix, all rows treated alike.

    Parameters
    ----------
    W : torch.Tensor
        ``[K, K]``, full rank.

    Returns
    -------
    torch.Tensor
        ``[K, K]`` with orthonormal rows.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(W @ W.T)
    eigenvalues = eigenvalues.clamp_min(torch.finfo(W.dtype).tiny)
    return (eigenvectors * eigenvalues.rsqrt()) @ eigenvectors.T @ W


@fill_doc
class TemporalICA(BaseDecomposition):
    """Base of the temporal ICAs of ``X  # [tokens, neurons]``: shared whitening, a subclass's rotation.

    ``_fit_core`` centres (and with ``standardize`` scales) the neurons, whitens with the K leading principal
    axes, asks the subclass for ``W = _rotate(white, w_init)`` and sets the attributes below; a subclass
    implements ``_rotate`` and its ``__init__`` (scikit-learn reads the parameters from the signature).

    ``_rotate(white  # [K, tokens], w_init  # [K, K]) -> (W  # [K, K], n_iter, converged, detail)``: the rotation
    such that ``W @ white`` are the sources, with ``detail`` describing how the iteration stopped (the
    ConvergenceWarning's text).

    Parameters
    ----------
    %(n_components)s
    %(fun)s
    %(fun_args)s
    max_iter, tol : int, float
        The rotation's iteration limit and tolerance (each algorithm's own stopping rule).
    %(whiten)s
    %(whiten_solver)s
    %(n_oversamples)s
    %(n_power_iter)s
    %(sketch_dtype)s
    %(random_state)s
    %(device)s
    %(dtype)s
    %(block_rows)s
    %(standardize)s

    Attributes
    ----------
    %(attributes)s
    unmixing_ : ndarray [K, neurons]
        Is ``components_``, the unmixing including whitening: ``sources = (X - mean_) @ components_.T``.
    whitening_ : ndarray [K, neurons]
        scikit-learn's convention (principal axes / singular values; ``(X - mean_) @ whitening_.T *
        sqrt(tokens)`` is white).
    whiten_solver_ : str
        The PCA solver used.
    scale_ : ndarray [neurons] or None
        The standard deviations divided out when ``standardize=True``.
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "fun": Choice(FUNS),
        "fun_args": FunArgs(),
        "whiten": Choice(WHITEN_MODES),
        "whiten_solver": Choice(WHITEN_SOLVERS),
        "max_iter": Integer(1),
        "n_oversamples": Integer(0, optional=True),
        "n_power_iter": Integer(0),
        "sketch_dtype": Choice(tuple(DTYPES)),
        "tol": Positive(),
    }

    def _rotate(self, white: torch.Tensor, w_init: torch.Tensor) -> tuple[torch.Tensor, int, bool, str]:
        raise NotImplementedError(f"{type(self).__name__} must implement _rotate(white, w_init), its core")

    def fit_restarts(self, X, seeds: Sequence[int]) -> list:
        """One clone fitted per seed (``random_state=seed``), each equal to its own ``fit``, sharing the whitening
        where it does not depend on the seed.

        With the exact PCA (``whiten_solver="eigh"``, or ``auto`` where the sketch would not be much smaller than
        the data, e.g. K=512 on a few thousand tokens) every restart computes the same whitening; it is computed
        once and the restarts differ only in their rotation, bit for bit as separate fits. The randomized solver
        draws its sketch from the seed, so there each restart still whitens on its own.
        :func:`~fnet.decompose.fit_with_restarts` calls this when the estimator has it.

        Parameters
        ----------
        X : array or list of arrays
            ``[tokens, neurons]`` each.
        seeds : sequence of int
            The restarts' ``random_state``.

        Returns
        -------
        list
            The fitted clones, in the order of ``seeds``.
        """
        if isinstance(X, (list, tuple)):
            X = list(X)
        shared: dict = {}
        fitted = []
        for seed in seeds:
            restart = clone(self).set_params(random_state=int(seed))
            restart._shared_whitening = shared
            try:
                restart.fit(X)
            finally:
                del restart._shared_whitening
            fitted.append(restart)
        return fitted

    def _fit_core(self, data: TokenMatrix) -> np.ndarray:
        dtype, device = self._compute()
        K, n_tokens = int(self.n_components), data.n_tokens
        rng = check_random_state(self.random_state)
        # drawn before anything else, exactly as scikit-learn does, so an int seed gives every backend one w_init
        w_init = torch.as_tensor(rng.normal(size=(K, K)), dtype=dtype, device=device)  # [K, K]

        shared = getattr(self, "_shared_whitening", None)  # set by fit_restarts only
        if shared and "pca" in shared:  # an exact whitening of the same data: the same for every seed
            mean, scale, pca, solver = shared["mean"], shared["scale"], shared["pca"], shared["solver"]
        else:
            mean, std = column_stats(data, dtype, device, self.block_rows, with_std=bool(self.standardize))
            # variance normalisation (FSL MELODIC's default): every neuron divided by its std before the PCA, so
            # the decomposition is not dominated by the few neurons with the largest variance; constant neurons
            # keep 1
            scale = None if std is None else torch.where(std > 0, std, torch.ones_like(std))  # [neurons]
            pca, solver = self._principal_axes(data, K, self.whiten_solver, mean=mean, scale=scale, rng=rng)
            if shared is not None and solver == "eigh":  # the randomized sketch is drawn from the seed: not shared
                shared.update(mean=mean, scale=scale, pca=pca, solver=solver)
        white = pca.token_axes.T * math.sqrt(n_tokens)  # [K, tokens], identity covariance
        whitening = (pca.neuron_axes / pca.singular_values).T  # [K, neurons]

        W, n_iter, converged, detail = self._rotate(white, w_init)  # [K, K]
        sources = W @ white / math.sqrt(n_tokens)  # [K, tokens] == W @ whitening @ Xc.T
        if self.whiten == "unit-variance":
            source_std = sources.std(dim=1, correction=0)  # [K]
            W = W / source_std[:, None]
            sources = sources / source_std[:, None]
        components = W @ whitening  # [K, neurons], on the standardized neurons when standardize=True
        if scale is not None:
            whitening = whitening / scale[None, :]  # back to raw units: sources = (X - mean_) @ components_.T
            components = components / scale[None, :]

        self.components_ = to_numpy(components)
        self.unmixing_ = self.components_
        self.mixing_ = to_numpy(torch.linalg.pinv(components))  # [neurons, K]
        self.mean_ = to_numpy(mean)
        self.scale_ = None if scale is None else to_numpy(scale)
        self.whitening_ = to_numpy(whitening)
        self.whiten_solver_ = solver
        self._record_convergence(n_iter, converged, detail)
        return to_numpy(sources.T)
