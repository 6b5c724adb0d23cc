"""Decompose: a tokens x neurons activation matrix into K components whose spatial maps become networks.

fnet records a causal LM's MLP signal as ``acts  # [tokens, neurons]`` (SmolLM2-135M: 30 layers x 576 = 17,280
neurons) and decomposes it into K components. Each component's *spatial map* over neurons
(``spatial_maps_  # [K, neurons]``) is what :mod:`fnet.networks` thresholds into a functional network.
All estimators extend one base and are scikit-learn compatible (``get_params``/``set_params``/``clone`` work,
``fit`` returns self):

* :class:`BaseDecomposition` (:mod:`~fnet.decompose.base`) -- owns fit / transform / inverse_transform /
  ``spatial_maps_``, parameter validation, convergence reporting and the shared parameter docs;
* :class:`TemporalICA` (:mod:`~fnet.decompose.temporal`) -- temporal ICA as shared whitening plus a rotation;
* :class:`FastICA` (:mod:`~fnet.decompose.fastica`) -- its fixed-point rotation (and scikit-learn's as reference);
* :class:`Picard` (:mod:`~fnet.decompose.picard`) -- Picard / Picard-O's rotation (python-picard), same whitening;
* :class:`CanICA` (:mod:`~fnet.decompose.canica`) -- spatial ICA after per-text and group PCA;
* :class:`DictionaryLearningDecomposition` (:mod:`~fnet.decompose.dictlearning`);
* :mod:`~fnet.decompose.restarts` -- map similarity, restarts with stability, group and individual fits;
* :mod:`~fnet.decompose.tokens` -- the token matrix read in blocks and its streamed PCA, shared by all.

A new algorithm is one module implementing its core over :class:`BaseDecomposition` (or ``_rotate`` over
:class:`TemporalICA`) plus one YAML in ``conf/ica/``.
"""

from fnet.decompose.base import BaseDecomposition
from fnet.decompose.canica import CanICA
from fnet.decompose.dictlearning import DictionaryLearningDecomposition
from fnet.decompose.fastica import FastICA
from fnet.decompose.picard import Picard
from fnet.decompose.restarts import (
    RestartResult,
    abs_corr_matrix,
    best_match_abs_corr,
    fit_with_restarts,
    group_decomposition,
    individual_decompositions,
    restart_stability,
)
from fnet.decompose.temporal import TemporalICA

__all__ = [
    "BaseDecomposition",
    "CanICA",
    "DictionaryLearningDecomposition",
    "FastICA",
    "Picard",
    "RestartResult",
    "TemporalICA",
    "abs_corr_matrix",
    "best_match_abs_corr",
    "fit_with_restarts",
    "group_decomposition",
    "individual_decompositions",
    "restart_stability",
]
