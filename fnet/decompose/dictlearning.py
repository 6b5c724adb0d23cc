"""Dictionary learning as a decomposition: :class:`DictionaryLearningDecomposition`.

scikit-learn's ``MiniBatchDictionaryLearning`` on centred [tokens, neurons] data; the atoms are the spatial maps.
**Why the wrapper exists:** to give the three decompositions one interface (list-of-texts input, centring,
``spatial_maps_``, ``converged_``, ``n_iter_``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import MiniBatchDictionaryLearning

from fnet.decompose.base import DTYPES, BaseDecomposition, fill_doc
from fnet.decompose.tokens import TokenMatrix, to_numpy

__all__ = ["DictionaryLearningDecomposition"]


# ----------------------------------------------------------------------------------------------------------------
# Dictionary learning
# ----------------------------------------------------------------------------------------------------------------


@fill_doc
class DictionaryLearningDecomposition(BaseDecomposition):
    """Sparse dictionary learning on centred ``X  # [tokens, neurons]``: ``Xc ~= codes @ atoms`` with sparse
    ``codes  # [tokens, K]``; the unit-norm atoms are the spatial maps ``[K, neurons]``.

    A thin wrapper over ``sklearn.decomposition.MiniBatchDictionaryLearning`` (parameters pass through). It exists
    to give the same interface as the ICA estimators: list-of-texts input (concatenated in ``dtype``, float32 by
    default to halve memory; scikit-learn needs one array), per-neuron centring (``center``), ``spatial_maps_``,
    ``n_iter_`` and ``converged_`` (False, with a ConvergenceWarning, when all ``max_iter`` epochs ran without
    scikit-learn's early stopping firing). Its core is ``_fit_core`` (the learner) and ``_encode`` (sparse
    codes: ``transform`` is not linear).

    Parameters
    ----------
    %(n_components)s
    alpha, max_iter, batch_size, fit_algorithm, transform_algorithm, transform_alpha
        Passed to ``MiniBatchDictionaryLearning`` (``max_iter``: epochs).
    positive_code, positive_dict, tol, max_no_improvement
        Passed to ``MiniBatchDictionaryLearning``.
    center : bool
        Subtract each neuron's mean first.
    random_state : int, RandomState or None
        Passed to the learner.
    %(dtype)s

    Attributes
    ----------
    %(attributes)s
    components_ : ndarray [K, neurons]
        The atoms (``mixing_`` is their transpose). learner_ : the fitted learner. n_steps_ : its mini-batch steps.
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        alpha: float = 1.0,
        max_iter: int = 100,
        batch_size: int = 256,
        fit_algorithm: str = "lars",
        transform_algorithm: str = "lasso_lars",
        transform_alpha: float | None = None,
        positive_code: bool = False,
        positive_dict: bool = False,
        tol: float = 1e-3,
        max_no_improvement: int | None = 10,
        center: bool = True,
        random_state: Any = None,
        dtype: str = "float32",
    ):
        self.n_components = n_components
        self.alpha = alpha
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.fit_algorithm = fit_algorithm
        self.transform_algorithm = transform_algorithm
        self.transform_alpha = transform_alpha
        self.positive_code = positive_code
        self.positive_dict = positive_dict
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.center = center
        self.random_state = random_state
        self.dtype = dtype

    def _stacked(self, data: TokenMatrix) -> np.ndarray:
        """``stacked  # [tokens, neurons]`` in ``dtype``: scikit-learn needs one array."""
        np_dtype = np.float32 if self.dtype == "float32" else np.float64
        stacked = np.empty((data.n_tokens, data.n_neurons), dtype=np_dtype)
        for _, start, stop, block in data.row_blocks(DTYPES[self.dtype], torch.device("cpu")):
            stacked[start:stop] = to_numpy(block)
        if not np.isfinite(stacked).all():
            raise ValueError("X contains NaN or infinity; decompositions need finite activations")
        return stacked

    # -- the core: the learner and the sparse codes ----------------------------------------------------------
    def _fit_core(self, data: TokenMatrix) -> None:
        stacked = self._stacked(data)  # [tokens, neurons]
        self.mean_ = stacked.mean(axis=0) if self.center else np.zeros(stacked.shape[1], dtype=stacked.dtype)
        stacked -= self.mean_
        learner = MiniBatchDictionaryLearning(
            n_components=int(self.n_components),
            alpha=self.alpha,
            max_iter=self.max_iter,
            batch_size=self.batch_size,
            fit_algorithm=self.fit_algorithm,
            transform_algorithm=self.transform_algorithm,
            transform_alpha=self.transform_alpha,
            positive_code=self.positive_code,
            positive_dict=self.positive_dict,
            tol=self.tol,
            max_no_improvement=self.max_no_improvement,
            random_state=self.random_state,
        )
        learner.fit(stacked)
        batches_per_epoch = math.ceil(stacked.shape[0] / min(self.batch_size, stacked.shape[0]))
        self.learner_ = learner
        self.components_ = learner.components_  # [K, neurons]
        self.mixing_ = self.components_.T  # [neurons, K]: spatial_maps_ = the atoms
        self.n_steps_ = int(learner.n_steps_)
        self._record_convergence(
            learner.n_iter_,
            learner.n_steps_ < self.max_iter * batches_per_epoch,
            f"ran all {self.max_iter} epochs ({learner.n_steps_} mini-batch steps) without early stopping "
            f"(tol={self.tol:g})",
            label="MiniBatchDictionaryLearning",
        )

    def _encode(self, data: TokenMatrix) -> np.ndarray:
        """Sparse codes ``[tokens, K]`` of ``X - mean_``."""
        return self.learner_.transform(self._stacked(data) - self.mean_)
