"""The base estimator every decomposition extends: :class:`BaseDecomposition`.

The base owns everything the algorithms share -- parameter validation (:attr:`BaseDecomposition._parameter_rules`,
rules :class:`Choice`, :class:`Integer`, :class:`Positive`, :class:`Boolean`, :class:`FunArgs`), reading the input
(:class:`~fnet.decompose.tokens.TokenMatrix`), the PCA / whitening helper, ``fit``, ``fit_transform``,
``transform``, ``inverse_transform``, ``spatial_maps_`` and convergence reporting -- and the parameter docs
(:data:`DOCS`, filled into docstrings by :func:`fill_doc`). An algorithm implements its core, ``_fit_core``,
in one module: see :mod:`fnet.decompose.temporal` (whitening + a rotation: FastICA, Picard),
:mod:`fnet.decompose.canica` and :mod:`fnet.decompose.dictlearning`.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from fnet.decompose.tokens import PrincipalAxes, TokenMatrix, principal_axes, project, resolve_solver, to_numpy

__all__ = [
    "BaseDecomposition",
    "Boolean",
    "Choice",
    "DOCS",
    "DTYPES",
    "FUNS",
    "FunArgs",
    "Integer",
    "Positive",
    "WHITEN_SOLVERS",
    "fill_doc",
]

#: compute dtypes by name
DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: negentropy proxies / source densities of the ICA estimators
FUNS = ("logcosh", "exp", "cube")
#: PCA solvers (:func:`fnet.decompose.tokens.resolve_solver`)
WHITEN_SOLVERS = ("auto", "randomized", "eigh")


# ----------------------------------------------------------------------------------------------------------------
# Parameter rules: each names the parameter and what it accepts when it fails
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """A value out of ``choices``; the error names the parameter and every valid choice."""

    choices: Sequence[Any]

    def check(self, name: str, value: Any) -> Any:
        """Return ``value``, or raise ValueError naming ``name`` and the valid choices."""
        if value not in tuple(self.choices):
            raise ValueError(f"unknown {name}={value!r}; valid choices: {', '.join(map(repr, self.choices))}")
        return value


@dataclass(frozen=True)
class Integer:
    """An integer ``>= minimum`` (booleans refused); ``optional`` also accepts None."""

    minimum: int
    optional: bool = False

    def check(self, name: str, value: Any) -> int | None:
        """Return ``int(value)`` (or None when optional), or raise ValueError naming ``name``."""
        if value is None and self.optional:
            return None
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < self.minimum:
            none = " or None" if self.optional else ""
            raise ValueError(f"{name} must be an integer >= {self.minimum}{none}; got {value!r}")
        return int(value)


@dataclass(frozen=True)
class Positive:
    """A real number > 0."""

    def check(self, name: str, value: Any) -> float:
        """Return ``value``, or raise ValueError naming ``name``."""
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{name} must be a positive number; got {value!r}")
        return value


@dataclass(frozen=True)
class Boolean:
    """True or False (``optional`` also accepts None)."""

    optional: bool = False

    def check(self, name: str, value: Any) -> bool | None:
        """Return ``value``, or raise ValueError naming ``name``."""
        if isinstance(value, (bool, np.bool_)) or (value is None and self.optional):
            return value
        raise ValueError(f"{name} must be true or false{' or null' if self.optional else ''}; got {value!r}")


@dataclass(frozen=True)
class FunArgs:
    """``fun_args``: None or a dict whose ``alpha`` (logcosh's slope, default 1) lies in [1, 2]."""

    def check(self, name: str, value: Any) -> dict:
        """Return the arguments as a new dict, or raise ValueError naming ``name``."""
        fun_args = {} if value is None else dict(value)
        alpha = fun_args.get("alpha", 1.0)
        if not 1 <= alpha <= 2:
            raise ValueError(f"{name}['alpha'] must be in [1, 2]; got {alpha}")
        return fun_args


# ----------------------------------------------------------------------------------------------------------------
# Shared parameter docs (numpydoc entries), filled into the estimators' docstrings as %(name)s
# ----------------------------------------------------------------------------------------------------------------

#: numpydoc entries of the parameters and attributes the estimators share; ``%(name)s`` in a docstring
#: decorated with :func:`fill_doc` is replaced by the entry (written for the 4-space indent of a class docstring)
DOCS: dict[str, str] = {
    "n_components": """n_components : int
        K, the number of components.""",
    "fun": """fun : {"logcosh", "exp", "cube"}
        Negentropy proxy (FastICA) or source log-density (Picard): ``logcosh`` (``G(u) = log cosh(a u) / a``,
        for heavy-tailed sources), ``exp`` (``-exp(-u^2 / 2)``) or ``cube`` (``u^4 / 4``).""",
    "fun_args": """fun_args : dict or None
        ``{"alpha": a}`` with 1 <= a <= 2, the slope of ``logcosh`` (default 1).""",
    "whiten": """whiten : {"unit-variance", "arbitrary-variance"}
        ``unit-variance`` scales every source to unit variance over the training tokens.""",
    "whiten_solver": """whiten_solver : {"auto", "randomized", "eigh"}
        PCA of the whitening: ``auto`` is randomized when ``4 (K + oversamples) <= min(tokens, neurons)``, else
        exact; ``randomized`` = streamed range finder + Rayleigh-Ritz; ``eigh`` = exact, from the Gram matrix of
        the smaller side.""",
    "n_oversamples": """n_oversamples : int or None
        Extra sketch columns of the randomized PCA (sketch width K + n_oversamples); None = max(10, K), because
        activation spectra are flat around K ~ 64 and 10 extra columns then miss part of the top-K subspace.""",
    "n_power_iter": """n_power_iter : int
        Subspace iterations of the randomized PCA.""",
    "sketch_dtype": """sketch_dtype : {"float32", "float64"}
        Precision of the randomized PCA's subspace iterations only.""",
    "random_state": """random_state : int, RandomState or None
        Seeds the initial rotation (drawn first, as scikit-learn does) and then the PCA sketch.""",
    "device": """device : str
        Torch device of the computation.""",
    "dtype": """dtype : {"float64", "float32"}
        Compute dtype.""",
    "block_rows": """block_rows : int or None
        Rows per streamed block; None sizes blocks to ~256 MiB.""",
    "standardize": """standardize : bool
        Divide every neuron by its standard deviation first (variance normalisation, FSL MELODIC's default), so a
        few high-variance neurons do not dominate; ``spatial_maps_`` are then in units of each neuron's standard
        deviation. Default False (the paper's unstandardised ICA).""",
    "attributes": """components_ : ndarray [K, neurons]
        The fitted components (see the estimator for what they are).
    mixing_ : ndarray [neurons, K]
        Maps sources back to neurons: ``X ~ sources @ mixing_.T + mean_`` (:meth:`inverse_transform`).
    spatial_maps_ : ndarray [K, neurons]
        What :mod:`fnet.networks` thresholds: ``mixing_.T`` (divided by ``scale_`` when standardized).
    mean_ : ndarray [neurons]
        The mean over the training tokens.
    n_iter_ : int
        Iterations run.
    converged_ : bool
        Whether the stopping rule was met (a ConvergenceWarning names the estimator when not).
    n_features_in_ : int
        Neurons.""",
}


def fill_doc(obj):
    """Replace every ``%(name)s`` of ``obj.__doc__`` by ``DOCS[name]`` and return ``obj`` (a decorator).

    Raises
    ------
    KeyError
        For a placeholder without an entry in :data:`DOCS`.
    """
    doc = obj.__doc__ or ""
    while "%(" in doc:
        start = doc.index("%(")
        stop = doc.index(")s", start)
        doc = doc[:start] + DOCS[doc[start + 2 : stop]] + doc[stop + 2 :]
    obj.__doc__ = doc
    return obj


# ----------------------------------------------------------------------------------------------------------------
# The base estimator
# ----------------------------------------------------------------------------------------------------------------


@fill_doc
class BaseDecomposition(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Base of fnet's decompositions of ``X  # [tokens, neurons]`` into K components (scikit-learn compatible).

    Input: one array ``[tokens, neurons]`` (numpy, memmap, torch; float16 accepted) or a list of such arrays of
    equal width, read as if stacked along tokens (:class:`~fnet.decompose.tokens.TokenMatrix`).

    The base owns :meth:`fit`, :meth:`fit_transform`, :meth:`transform`, :meth:`inverse_transform`,
    :attr:`spatial_maps_`, :meth:`check_params` and the convergence warning; a subclass implements

    * ``_fit_core(data)`` (required): fit on a :class:`~fnet.decompose.tokens.TokenMatrix`; set ``components_``,
      ``mixing_  # [neurons, K]``, ``mean_`` and, for a linear ``transform``, ``unmixing_  # [K, neurons]``
      (sources = ``(X - mean_) @ unmixing_.T``); call :meth:`_record_convergence`; return the training sources
      ``[tokens, K]`` or None (then ``fit_transform`` calls ``transform``);
    * optionally ``_check_param_combinations()``, ``_check_data(data)`` (sizes), ``_encode(data)`` (a
      non-linear ``transform``) and :meth:`min_tokens`;
    * ``_parameter_rules``: parameter name -> rule, merged along the class hierarchy and checked before fitting.

    Helpers for subclasses: :meth:`_compute` (dtype, device), :meth:`_principal_axes` (streamed PCA with the
    estimator's sketch settings), :meth:`_record_convergence`.

    Parameters
    ----------
    %(n_components)s

    Attributes
    ----------
    %(attributes)s
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {"n_components": Integer(1), "dtype": Choice(tuple(DTYPES))}

    def __init__(self, n_components: int = 10):
        self.n_components = n_components

    # -- validation ------------------------------------------------------------------------------------------
    @classmethod
    def parameter_rules(cls) -> dict[str, Any]:
        """Parameter name -> rule, every class's ``_parameter_rules`` merged from the base down (a subclass's rule
        replaces its parent's for the same name)."""
        rules: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            rules.update(klass.__dict__.get("_parameter_rules", {}))
        return rules

    def check_params(self) -> None:
        """Check every parameter against its rule, then the combinations the estimator refuses.

        Raises
        ------
        ValueError
            Naming the parameter and the values it accepts (e.g. ``unknown fun='tanh'; valid choices: ...``).
        """
        for name, rule in self.parameter_rules().items():
            if hasattr(self, name):
                rule.check(name, getattr(self, name))
        self._check_param_combinations()

    def _check_param_combinations(self) -> None:
        """Hook: raise ValueError for parameter values that are valid alone but not together."""

    def _check_data(self, data: TokenMatrix) -> None:
        """Hook: refuse data too small for the fit; default: K <= neurons and K < tokens."""
        n_components, n_tokens, n_neurons = int(self.n_components), data.n_tokens, data.n_neurons
        if n_components > n_neurons:
            raise ValueError(f"n_components={n_components} is larger than the number of neurons ({n_neurons})")
        if n_components >= n_tokens:
            raise ValueError(
                f"n_components={n_components} needs at least {n_components + 1} tokens (centring removes one "
                f"dimension); got {n_tokens} tokens"
            )

    def min_tokens(self) -> int:
        """The fewest tokens one text needs for a fit of its own (:func:`~fnet.decompose.individual_decompositions`
        checks every text against it before fitting): K + 1, as centring removes one dimension."""
        return int(self.n_components) + 1

    # -- fitting ---------------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit on ``X  # [tokens, neurons]`` or a list of such arrays (stacked along tokens, streamed).

        Parameters
        ----------
        X : array or list of arrays
            ``[tokens, neurons]`` each.
        y : ignored

        Returns
        -------
        self
        """
        self._fit(X)
        return self

    def fit_transform(self, X, y=None, **fit_params) -> np.ndarray:
        """Fit and return the training sources ``[tokens, K]`` (without a second pass where the core gives them).

        Parameters
        ----------
        X : array or list of arrays
            ``[tokens, neurons]`` each.
        y : ignored

        Returns
        -------
        ndarray
            ``sources  # [tokens, K]``.
        """
        sources = self._fit(X)
        return self.transform(X) if sources is None else sources

    def _fit(self, X) -> np.ndarray | None:
        self.check_params()
        data = TokenMatrix(X)
        self._check_data(data)
        sources = self._fit_core(data)
        self.n_features_in_ = data.n_neurons
        if not self.converged_:
            label, detail = self._convergence_detail
            # stacklevel 3: the line that called fit / fit_transform
            warnings.warn(
                f"{label} did not converge: {detail}. Increase max_iter or tol; the components may be unreliable.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return sources

    def _fit_core(self, data: TokenMatrix) -> np.ndarray | None:
        raise NotImplementedError(f"{type(self).__name__} must implement _fit_core(data), its algorithm's core")

    def _record_convergence(self, n_iter: int, converged: bool, detail: str, label: str | None = None) -> None:
        """Set ``n_iter_`` and ``converged_``; ``detail`` says how the fit stopped (e.g. ``stopped after 200
        iterations with final change 0.2 > tol=0.0001``) and goes into the warning when it did not converge."""
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        self._convergence_detail = (label or type(self).__name__, detail)

    # -- helpers for the cores -------------------------------------------------------------------------------
    def _compute(self) -> tuple[torch.dtype, torch.device]:
        """The compute dtype and device of the parameters ``dtype`` and ``device`` (CPU when absent)."""
        dtype = DTYPES.get(getattr(self, "dtype", "float64"), torch.float64)
        return dtype, torch.device(getattr(self, "device", "cpu"))

    def _principal_axes(
        self, data: TokenMatrix, n_keep: int, solver: str, *, mean, scale, rng
    ) -> tuple[PrincipalAxes, str]:
        """The streamed PCA (:func:`~fnet.decompose.tokens.principal_axes`) with this estimator's ``n_oversamples``,
        ``n_power_iter``, ``sketch_dtype`` and ``block_rows``; ``solver`` may be ``auto``. Returns the axes and the
        solver used."""
        dtype, device = self._compute()
        solver = resolve_solver(solver, n_keep, self.n_oversamples, data.n_tokens, data.n_neurons)
        axes = principal_axes(
            data,
            n_keep,
            solver,
            mean=mean,
            scale=scale,
            n_oversamples=self.n_oversamples,
            n_power_iter=self.n_power_iter,
            rng=rng,
            dtype=dtype,
            device=device,
            block_rows=self.block_rows,
            sketch_dtype=DTYPES[self.sketch_dtype],
        )
        return axes, solver

    # -- applying --------------------------------------------------------------------------------------------
    def transform(self, X) -> np.ndarray:
        """Each component's activity per token.

        Parameters
        ----------
        X : array or list of arrays
            ``[tokens, neurons]`` each, as many neurons as in training.

        Returns
        -------
        ndarray
            ``sources  # [tokens, K]``: ``(X - mean_) @ unmixing_.T`` streamed over row blocks, unless the
            estimator encodes otherwise (dictionary learning: sparse codes).
        """
        check_is_fitted(self, "components_")
        data = TokenMatrix(X)
        if data.n_neurons != self.n_features_in_:
            raise ValueError(
                f"X has {data.n_neurons} neurons; this {type(self).__name__} was fitted on {self.n_features_in_}"
            )
        return self._encode(data)

    def _encode(self, data: TokenMatrix) -> np.ndarray:
        """Hook: ``sources  # [tokens, K]`` of ``data``; default linear, ``(X - mean_) @ unmixing_.T``."""
        dtype, device = self._compute()
        unmixing_t = torch.as_tensor(self.unmixing_, dtype=dtype, device=device).T  # [neurons, K]
        mean = torch.as_tensor(self.mean_, dtype=dtype, device=device)  # [neurons]
        block_rows = getattr(self, "block_rows", None)
        return to_numpy(project(data, unmixing_t, mean=mean, scale=None, block_rows=block_rows))

    def inverse_transform(self, X) -> np.ndarray:
        """Neurons from sources.

        Parameters
        ----------
        X : array-like
            ``sources  # [tokens, K]``.

        Returns
        -------
        ndarray
            ``X_reconstructed  # [tokens, neurons] = sources @ mixing_.T + mean_``.
        """
        check_is_fitted(self, "mixing_")
        sources = to_numpy(X) if isinstance(X, torch.Tensor) else np.asarray(X, dtype=self.mixing_.dtype)
        return sources @ self.mixing_.T + self.mean_

    @property
    def spatial_maps_(self) -> np.ndarray:
        """``maps  # [K, neurons]`` = ``mixing_.T``: each component's loading on every neuron, a new array.

        With ``standardize=True`` (``scale_`` set), in units of each neuron's standard deviation
        (``mixing_.T / scale_``), so that thresholding the maps does not favour high-variance neurons again."""
        check_is_fitted(self, "mixing_")
        maps = np.asarray(self.mixing_).T  # [K, neurons]
        if getattr(self, "scale_", None) is not None:
            maps = maps / self.scale_[None, :]
        return np.array(maps, order="C", copy=True)

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]
