"""Dictionary learning as a decomposition: :class:`DictionaryLearningDecomposition`.

scikit-learn's ``MiniBatchDictionaryLearning`` on centred [tokens, neurons] data; the atoms are the spatial maps.
**Why the wrapper exists:** to give the three decompositions one interface (list-of-texts input, centring,
``spatial_maps_``, ``converged_``, ``n_iter_``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from fnet.decompose._base import DTYPES, _check_choice, _check_int, _check_n_components_fit, _numpy, _TokenMatrix
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

__all__ = ["DictionaryLearningDecomposition"]


# ----------------------------------------------------------------------------------------------------------------
# Dictionary learning
# ----------------------------------------------------------------------------------------------------------------


class DictionaryLearningDecomposition(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Sparse dictionary learning on centred ``X  # [tokens, neurons]``: ``Xc ~= codes @ atoms`` with sparse
    ``codes  # [tokens, K]``; the unit-norm atoms are the spatial maps ``[K, neurons]``.

    A thin wrapper over ``sklearn.decomposition.MiniBatchDictionaryLearning`` (parameters pass through). It exists
    to give the same interface as the ICA estimators: list-of-texts input (concatenated in ``dtype``, float32 by
    default to halve memory; scikit-learn needs one array), per-neuron centring (``center``), ``spatial_maps_``,
    ``n_iter_`` and ``converged_`` (False, with a ConvergenceWarning, when all ``max_iter`` epochs ran without
    scikit-learn's early stopping firing).
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

    def _min_tokens(self) -> int:
        return int(self.n_components) + 1

    def _stacked(self, X) -> np.ndarray:
        data = _TokenMatrix(X)
        np_dtype = np.float32 if self.dtype == "float32" else np.float64
        stacked = np.empty((data.n_tokens, data.n_neurons), dtype=np_dtype)
        for _, start, stop, block in data.row_blocks(DTYPES[self.dtype], torch.device("cpu")):
            stacked[start:stop] = _numpy(block)
        if not np.isfinite(stacked).all():
            raise ValueError("X contains NaN or infinity; decompositions need finite activations")
        return stacked

    def fit(self, X, y=None):
        from sklearn.decomposition import MiniBatchDictionaryLearning

        K = _check_int(self.n_components, "n_components", 1)
        _check_choice(self.dtype, "dtype", tuple(DTYPES))
        stacked = self._stacked(X)  # [tokens, neurons]
        _check_n_components_fit(K, stacked.shape[0], stacked.shape[1])
        self.mean_ = stacked.mean(axis=0) if self.center else np.zeros(stacked.shape[1], dtype=stacked.dtype)
        stacked -= self.mean_
        learner = MiniBatchDictionaryLearning(
            n_components=K, alpha=self.alpha, max_iter=self.max_iter, batch_size=self.batch_size,
            fit_algorithm=self.fit_algorithm, transform_algorithm=self.transform_algorithm,
            transform_alpha=self.transform_alpha, positive_code=self.positive_code,
            positive_dict=self.positive_dict, tol=self.tol, max_no_improvement=self.max_no_improvement,
            random_state=self.random_state,
        )
        learner.fit(stacked)
        batches_per_epoch = math.ceil(stacked.shape[0] / min(self.batch_size, stacked.shape[0]))
        self.learner_ = learner
        self.components_ = learner.components_  # [K, neurons]
        self.n_iter_ = int(learner.n_iter_)
        self.n_steps_ = int(learner.n_steps_)
        self.converged_ = bool(learner.n_steps_ < self.max_iter * batches_per_epoch)
        self.n_features_in_ = stacked.shape[1]
        if not self.converged_:
            warnings.warn(
                f"MiniBatchDictionaryLearning did not converge: ran all {self.max_iter} epochs "
                f"({learner.n_steps_} mini-batch steps) without early stopping (tol={self.tol:g}). "
                "Increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def transform(self, X) -> np.ndarray:
        """Sparse codes ``[tokens, K]`` of ``X - mean_``."""
        check_is_fitted(self, "components_")
        return self.learner_.transform(self._stacked(X) - self.mean_)

    def inverse_transform(self, X) -> np.ndarray:
        check_is_fitted(self, "components_")
        return np.asarray(X) @ self.components_ + self.mean_

    @property
    def spatial_maps_(self) -> np.ndarray:
        """``atoms  # [K, neurons]`` (unit norm)."""
        check_is_fitted(self, "components_")
        return np.array(self.components_, copy=True)

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]
