"""Map similarity, restarts and group / individual fits of any decomposition estimator.

:func:`abs_corr_matrix` and :func:`best_match_abs_corr` (vectorised map similarity), :func:`fit_with_restarts`
(several seeds, keep the most stable solution, per-component stability), :func:`group_decomposition` (one fit
over the stacked texts) and :func:`individual_decompositions` (one fit per text).
"""

from __future__ import annotations

import logging
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils import check_random_state

from fnet.decompose.base import Choice, Integer
from fnet.decompose.tokens import to_numpy

log = logging.getLogger(__name__)

__all__ = [
    "MIN_STABILITY",
    "ON_TOO_SHORT",
    "RestartResult",
    "fit_with_restarts",
    "restart_stability",
    "abs_corr_matrix",
    "best_match_abs_corr",
    "group_decomposition",
    "individual_decompositions",
]

#: what :func:`individual_decompositions` does with a text too short for its own fit
ON_TOO_SHORT = ("raise", "skip")
#: below this stability over restarts a component is logged as unreliable (ICASSO's quality index is judged
#: on the same 0..1 scale; a component that does not reach 0.6 is not reproduced by the other restarts)
MIN_STABILITY = 0.6


# ----------------------------------------------------------------------------------------------------------------
# Similarity, restarts, group and individual fits
# ----------------------------------------------------------------------------------------------------------------


def _as_2d_float64(x: Any, name: str) -> np.ndarray:
    array = to_numpy(x).astype(np.float64) if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [components, neurons]; got shape {array.shape}")
    return array


def abs_corr_matrix(a: Any, b: Any) -> np.ndarray:
    """``|corr|  # [K1, K2]`` between the rows of ``a  # [K1, N]`` and ``b  # [K2, N]`` (Pearson, vectorised).

    A constant row has correlation 0 with everything (not NaN).

    Parameters
    ----------
    a : array-like [K1, N]
        Rows to correlate (ndarray or tensor).
    b : array-like [K2, N]
        Rows to correlate, as wide as ``a``.

    Returns
    -------
    ndarray [K1, K2]
        Absolute Pearson correlations (float64).
    """
    a, b = _as_2d_float64(a, "a"), _as_2d_float64(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same width; got {a.shape} and {b.shape}")

    def unit_rows(m):
        m = m - m.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)

    return np.abs(unit_rows(a) @ unit_rows(b).T)


def best_match_abs_corr(reference: Any, estimate: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``reference  # [K1, N]``: the highest |corr| with any row of ``estimate  # [K2, N]`` and
    that row's index; returns ``(abs_corr  # [K1], index  # [K1])``. Not one-to-one (a greedy best match).

    Parameters
    ----------
    reference : array-like [K1, N]
        The reference rows.
    estimate : array-like [K2, N]
        The rows searched for a match.

    Returns
    -------
    abs_corr : ndarray [K1]
        The best |corr| per reference row.
    index : ndarray [K1]
        Index of that row of ``estimate``.
    """
    similarity = abs_corr_matrix(reference, estimate)  # [K1, K2]
    return similarity.max(axis=1), similarity.argmax(axis=1)


@dataclass
class RestartResult:
    """Outcome of :func:`fit_with_restarts`.

    Parameters
    ----------
    best : estimator
        The kept fitted estimator.
    stability : ndarray [K]
        For its components (in its own order): mean over the other restarts of the best-match |corr| of spatial
        maps (NaN when n_init == 1).
    all_stability : ndarray [n_init, K]
        The same for every restart.
    seeds : list of int
        The random_state of each restart.
    best_index : int
        Index of ``best`` in ``seeds``.
    estimators : list
        Every fitted restart.
    """

    best: Any
    stability: np.ndarray
    all_stability: np.ndarray
    seeds: list
    best_index: int = 0
    estimators: list = field(default_factory=list)


def _restart_seeds(estimator, n_init: int) -> list[int]:
    base = getattr(estimator, "random_state", None)
    if isinstance(base, numbers.Integral) and not isinstance(base, bool):
        return [int(base) + i for i in range(n_init)]
    rng = check_random_state(base)  # a RandomState is advanced; None draws fresh entropy
    return [int(s) for s in rng.randint(0, 2**31 - 1, size=n_init)]


def restart_stability(maps: Sequence[Any]) -> np.ndarray:
    """``stability  # [R, K]`` for ``R`` solutions ``maps[r]  # [K, N]``: for component k of restart r, the mean
    over the other restarts s != r of ``max_j |corr(maps[r][k], maps[s][j])|``. All pairs in one matmul.

    Parameters
    ----------
    maps : Sequence of array-like [K, N]
        The spatial maps of each restart.

    Returns
    -------
    ndarray [R, K]
        The stabilities (NaN when ``R < 2``).
    """
    stacked = np.stack([_as_2d_float64(m, "maps") for m in maps])  # [R, K, N]
    n_restarts, n_components, _ = stacked.shape
    if n_restarts < 2:
        return np.full((n_restarts, n_components), np.nan)
    flat = stacked.reshape(n_restarts * n_components, -1)
    similarity = abs_corr_matrix(flat, flat).reshape(n_restarts, n_components, n_restarts, n_components)
    best = similarity.max(axis=3)  # [R, K, R]: best match of (r, k) within restart s
    off_diagonal = ~np.eye(n_restarts, dtype=bool)  # [R, R]
    return (best * off_diagonal[:, None, :]).sum(axis=2) / (n_restarts - 1)


def fit_with_restarts(
    estimator, X, n_init: int = 5, seeds: Sequence[int] | None = None, min_stability: float = MIN_STABILITY
) -> RestartResult:
    """Fit ``n_init`` clones of ``estimator`` with different ``random_state`` and keep the most stable one.

    Seeds: ``seeds`` if given; otherwise ``random_state + 0 .. n_init-1`` for an int ``random_state``, or drawn
    from it (RandomState or fresh entropy for None). Rule: keep the restart whose components have the highest
    *mean* stability (see :func:`restart_stability`, ICASSO-style); ties go to the earliest seed. Every restart's
    warnings (e.g. ConvergenceWarning) are passed through. With two or more restarts, the kept solution's
    components whose stability is below ``min_stability`` are logged (one warning line naming them).

    Parameters
    ----------
    estimator : an unfitted estimator with ``random_state`` and ``spatial_maps_``
    X : array or list of arrays
        ``[tokens, neurons]`` each, passed to every ``fit``.
    n_init : int
        Restarts, when ``seeds`` is not given.
    seeds : sequence of int, optional
        The restarts' ``random_state`` values.
    min_stability : float
        Threshold of the warning (default :data:`MIN_STABILITY`).

    Returns
    -------
    RestartResult
    """
    if seeds is None:
        n_init = Integer(1).check("n_init", n_init)
        seeds = _restart_seeds(estimator, n_init)
    else:
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds must not be empty")
    if isinstance(X, (list, tuple)):
        X = list(X)  # a generator would be used up by the first restart
    fit_all = getattr(estimator, "fit_restarts", None)  # TemporalICA: one whitening for all seeds where exact
    fitted = fit_all(X, seeds) if fit_all else [clone(estimator).set_params(random_state=s).fit(X) for s in seeds]
    all_stability = restart_stability([f.spatial_maps_ for f in fitted])  # [n_init, K]
    best_index = 0 if len(fitted) == 1 else int(np.argmax(all_stability.mean(axis=1)))
    if len(fitted) > 1:
        _log_unstable(fitted[best_index], all_stability[best_index], len(fitted), min_stability)
    return RestartResult(
        best=fitted[best_index],
        stability=all_stability[best_index],
        all_stability=all_stability,
        seeds=list(seeds),
        best_index=best_index,
        estimators=fitted,
    )


def _log_unstable(fitted, stability: np.ndarray, n_restarts: int, min_stability: float) -> None:
    """One warning line for the components of ``fitted`` whose ``stability  # [K]`` is below ``min_stability``."""
    unstable = np.flatnonzero(stability < min_stability)
    if unstable.size:
        listing = ", ".join(f"{k}: {stability[k]:.2f}" for k in unstable)
        log.warning(
            "%s (K=%d, %d restarts): %d component(s) below stability %.2g (%s); their networks are not "
            "reproduced by the other restarts",
            type(fitted).__name__,
            len(stability),
            n_restarts,
            unstable.size,
            min_stability,
            listing,
        )


def _min_tokens(estimator) -> int:
    if hasattr(estimator, "min_tokens"):
        return int(estimator.min_tokens())
    return int(getattr(estimator, "n_components")) + 1


def group_decomposition(estimator, arrays: Sequence[Any]):
    """Fit a clone of ``estimator`` on all texts together (``arrays[i]  # [tokens_i, neurons]``) and return it.

    FastICA streams the texts as one matrix stacked along tokens; CanICA treats each as a subject.

    Parameters
    ----------
    estimator : estimator
        An unfitted decomposition estimator (cloned, not changed).
    arrays : Sequence of array-like [tokens_i, neurons]
        The texts' activations.

    Returns
    -------
    estimator
        The fitted clone.
    """
    arrays = list(arrays)
    if not arrays:
        raise ValueError("empty input: group_decomposition got no arrays")
    return clone(estimator).fit(arrays)


def individual_decompositions(estimator, arrays: Sequence[Any], *, on_too_short: str = "raise") -> list:
    """Fit one clone of ``estimator`` per text; returns the fitted estimators in input order.

    A text with too few tokens (fewer than ``n_components + 1``: centring removes one dimension) raises a
    ValueError naming every such text and its token count, before anything is fitted; with
    ``on_too_short="skip"`` its entry is None and a warning names it.

    Parameters
    ----------
    estimator : estimator
        An unfitted decomposition estimator (cloned per text).
    arrays : Sequence of array-like [tokens_i, neurons]
        The texts' activations.
    on_too_short : str
        ``"raise"`` (default) or ``"skip"``.

    Returns
    -------
    list
        One fitted estimator per text (None for a skipped text).
    """
    Choice(ON_TOO_SHORT).check("on_too_short", on_too_short)
    arrays = list(arrays)
    if not arrays:
        raise ValueError("empty input: individual_decompositions got no arrays")
    needed = _min_tokens(estimator)
    too_short = [(i, int(a.shape[0])) for i, a in enumerate(arrays) if int(a.shape[0]) < needed]
    if too_short:
        listing = ", ".join(f"text {i} has {n} tokens" for i, n in too_short[:10])
        more = f" (and {len(too_short) - 10} more)" if len(too_short) > 10 else ""
        message = (
            f"{listing}{more}; {type(estimator).__name__} with n_components={estimator.n_components} "
            f"needs at least {needed} tokens per text"
        )
        if on_too_short == "raise":
            raise ValueError(message)
        warnings.warn(f"skipping: {message}", UserWarning, stacklevel=2)
    skipped = {i for i, _ in too_short}
    return [None if i in skipped else clone(estimator).fit(a) for i, a in enumerate(arrays)]
