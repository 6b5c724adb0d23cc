"""Decompose: a tokens x neurons activation matrix into K components whose spatial maps become networks.

fnet records a causal LM's MLP signal as ``acts  # [tokens, neurons]`` (SmolLM2-135M: 30 layers x 576 = 17,280
neurons) and decomposes it into K components. Each component's *spatial map* over neurons
(``spatial_maps_  # [K, neurons]``) is what :mod:`fnet.networks` thresholds into a functional network.
All estimators are scikit-learn compatible (``get_params``/``set_params``/``clone`` work, ``fit`` returns self):

* :class:`FastICA` (:mod:`~fnet.decompose.fastica`) -- temporal ICA, streamed randomized whitening;
* :class:`CanICA` (:mod:`~fnet.decompose.canica`) -- spatial ICA after per-text and group PCA;
* :class:`DictionaryLearningDecomposition` (:mod:`~fnet.decompose.dictlearning`);
* :mod:`~fnet.decompose.restarts` -- map similarity, restarts with stability, group and individual fits;
* :mod:`~fnet.decompose._base` -- the token matrix read in blocks and its streamed PCA, shared by all.
"""

from fnet.decompose.canica import CanICA
from fnet.decompose.dictlearning import DictionaryLearningDecomposition
from fnet.decompose.fastica import FastICA
from fnet.decompose.restarts import (RestartResult, abs_corr_matrix, best_match_abs_corr, fit_with_restarts,
                                     group_decomposition, individual_decompositions, restart_stability)

__all__ = [
    "CanICA", "DictionaryLearningDecomposition", "FastICA", "RestartResult", "abs_corr_matrix",
    "best_match_abs_corr", "fit_with_restarts", "group_decomposition", "individual_decompositions",
    "restart_stability",
]
