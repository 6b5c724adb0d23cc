"""Temporal ICA by Picard / Picard-O (python-picard): :class:`Picard`, the same whitening as FastICA, another rotation.

**Why it exists:** fnet's FastICA often stops at ``max_iter`` on real activations without meeting its
tolerance (bench/results_ica.md), so some networks come from unconverged rotations. Picard (Ablin, Cardoso &
Gramfort 2018) minimises the same ICA objective with a preconditioned L-BFGS; with ``ortho=True`` and
``extended=True`` (Picard-O, the default) it finds FastICA's solutions, faster and to a gradient tolerance.
Everything except the rotation -- streamed randomized whitening, restarts, stability, thresholding -- is
:class:`~fnet.decompose.temporal.TemporalICA`'s, exactly as for :class:`~fnet.decompose.FastICA`.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Any, ClassVar

import numpy as np
import picard
import torch
from picard.densities import Cube, Exp, Tanh
from threadpoolctl import threadpool_limits

from fnet.decompose.base import Boolean, Choice, Integer, Positive, fill_doc
from fnet.decompose.temporal import TemporalICA, symmetric_decorrelation
from fnet.decompose.tokens import to_numpy

__all__ = ["Picard"]

# python-picard reports non-convergence only by this warning (its info dict is not returned)
_NOT_CONVERGED = re.compile(r"Picard did not converge\. Final gradient norm : (\S+)\.")
# python-picard warns so for any density object it is given, also for its own Tanh (logcosh with fun_args' alpha)
_NOT_TANH = "Using a different density than tanh"

# Up to this many entries of the whitened data, python-picard's BLAS calls ([K, tokens] products, K x K solves) run
# on one thread: they are tiny, and on a shared machine a multi-threaded call per step costs far more than the step
# (measured on 10 x 12,243 whitened tokens at load 5 on 2 cores: 1.5 s per rotation with 2 threads, 0.12 s with 1).
_SINGLE_THREAD_ENTRIES = 4 * 2**20


@fill_doc
class Picard(TemporalICA):
    """Temporal ICA of ``X  # [tokens, neurons]`` by Picard-O (default) or Picard, on fnet's shared whitening.

    The rotation ``W  # [K, K]`` of the whitened data ``white  # [K, tokens]`` comes from ``picard.picard``
    (``whiten=False``, ``centering=False``: it gets exactly the data FastICA gets), started from the same
    ``w_init`` FastICA starts from (drawn from ``random_state``, symmetrically decorrelated). It stops when the
    largest entry of the relative gradient is below ``tol``; ``converged_`` says whether it did.

    Parameters
    ----------
    %(n_components)s
    ortho : bool
        Picard-O (orthogonal W: decorrelated sources, FastICA's model) if True, else Picard (Infomax's model).
    extended : bool or None
        Extended ICA (adapts each source to sub- or super-Gaussian); None = ``ortho``. ``ortho=True,
        extended=True`` has the same solutions as FastICA.
    %(fun)s
    %(fun_args)s
    algorithm : {"parallel"}
        Picard updates all components jointly; accepted so that ``conf/ica/picard.yaml`` can extend
        ``fastica.yaml``.
    max_iter : int
        L-BFGS iterations.
    tol : float
        Stop when ``max |G| < tol`` for the relative gradient G (python-picard's criterion; 1e-7 is its default).
    m, ls_tries, lambda_min : int, int, float
        L-BFGS memory, line-search attempts and the Hessian approximation's eigenvalue floor (python-picard's).
    %(whiten)s
    %(whiten_solver)s
    %(n_oversamples)s
    %(n_power_iter)s
    %(sketch_dtype)s
    %(random_state)s
    %(device)s
    %(dtype)s
    backend : {"torch"}
        The whitening runs in torch, the rotation in python-picard (numpy); accepted as FastICA's key.
    %(block_rows)s
    %(standardize)s

    Attributes
    ----------
    %(attributes)s
    unmixing_ : ndarray [K, neurons]
        Is ``components_``: ``sources = (X - mean_) @ components_.T``.
    whitening_ : ndarray [K, neurons]
        As FastICA's.
    whiten_solver_ : str
        The PCA solver used.
    scale_ : ndarray [neurons] or None
        The standard deviations divided out when ``standardize=True``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> sources = rng.laplace(size=(3000, 2))                 # [tokens, 2] independent, heavy-tailed
    >>> maps = rng.normal(size=(2, 50))                       # [2, neurons] planted spatial maps
    >>> ica = Picard(n_components=2, random_state=0).fit(sources @ maps)
    >>> corr = np.abs(np.corrcoef(np.vstack([maps, ica.spatial_maps_]))[:2, 2:]).max(axis=1)
    >>> bool(corr.min() > 0.99), ica.converged_
    (True, True)
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "ortho": Boolean(),
        "extended": Boolean(optional=True),
        "algorithm": Choice(("parallel",)),
        "m": Integer(1),
        "ls_tries": Integer(1),
        "lambda_min": Positive(),
        "backend": Choice(("torch",)),
    }

    def __init__(
        self,
        n_components: int = 10,
        *,
        ortho: bool = True,
        extended: bool | None = None,
        fun: str = "logcosh",
        fun_args: dict | None = None,
        algorithm: str = "parallel",
        max_iter: int = 500,
        tol: float = 1e-7,
        m: int = 7,
        ls_tries: int = 10,
        lambda_min: float = 0.01,
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
        self.ortho = ortho
        self.extended = extended
        self.fun = fun
        self.fun_args = fun_args
        self.algorithm = algorithm
        self.max_iter = max_iter
        self.tol = tol
        self.m = m
        self.ls_tries = ls_tries
        self.lambda_min = lambda_min
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

    def _density(self):
        """python-picard's density for ``fun``: the log-likelihood whose score is FastICA's nonlinearity g."""
        if self.fun == "logcosh":  # log cosh(a u) / a (+ const), score tanh(a u)
            return Tanh(params={"alpha": float(dict(self.fun_args or {}).get("alpha", 1.0))})
        if self.fun == "exp":  # -exp(-u^2 / 2), score u exp(-u^2 / 2) (python-picard's "exp" string uses a=0.1)
            return Exp(params={"alpha": 1.0})
        return Cube()  # u^4 / 4, score u^3

    # -- the core: Picard's rotation -------------------------------------------------------------------------
    def _rotate(self, white: torch.Tensor, w_init: torch.Tensor) -> tuple[torch.Tensor, int, bool, str]:
        start = to_numpy(symmetric_decorrelation(w_init)).astype(np.float64)  # [K, K], FastICA's first W
        one_thread = white.numel() <= _SINGLE_THREAD_ENTRIES
        with (
            warnings.catch_warnings(record=True) as caught,
            threadpool_limits(limits=1) if one_thread else contextlib.nullcontext(),
        ):
            warnings.simplefilter("always")
            _, W, _, n_iter = picard.picard(
                to_numpy(white).astype(np.float64, copy=False),
                fun=self._density(),
                ortho=bool(self.ortho),
                extended=self.extended,
                whiten=False,
                centering=False,
                return_n_iter=True,
                max_iter=self.max_iter,
                tol=self.tol,
                m=self.m,
                ls_tries=self.ls_tries,
                lambda_min=self.lambda_min,
                w_init=start,
            )
        gradient = None
        for w in caught:
            found = _NOT_CONVERGED.match(str(w.message))
            if found:
                gradient = found.group(1)
            elif not (self.fun == "logcosh" and str(w.message).startswith(_NOT_TANH)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # passed on
        converged = gradient is None
        n_iter = int(n_iter) if converged else int(self.max_iter)  # python-picard counts from 0
        detail = f"stopped after {n_iter} iterations with final gradient norm {gradient} > tol={self.tol:g}"
        return torch.as_tensor(W, dtype=white.dtype, device=white.device), n_iter, converged, detail
