"""Attribution: which MLP neurons a model's next-token predictions depend on, and POS key neurons.

* :mod:`fnet.attribution.methods` -- integrated gradients and activation x gradient over every layer's signal;
* :mod:`fnet.attribution.keyneurons` -- :class:`KeyNeuronCounter`: per tag, how often a neuron is a top neuron;
* :mod:`fnet.attribution.conllu` -- Universal Dependencies treebanks (CoNLL-U), offline or from the hub;
* :mod:`fnet.attribution.pos_align`, :mod:`~fnet.attribution.pos_probe`, :mod:`~fnet.attribution.pos_lesion`,
  :mod:`~fnet.attribution.pos_data` -- the POS key-neuron analysis's parts (``analysis=pos`` runs them).
"""

from fnet.attribution.keyneurons import RANK_BY, SELECTION_RULES, KeyNeuronCounter, n_top, select_key_neurons
from fnet.attribution.methods import (
    BASELINES,
    METHODS,
    AttributionResult,
    activation_x_gradient,
    attribute,
    gauss_legendre_01,
    integrated_gradients,
    replace_signals,
    target_log_probs,
)
from fnet.attribution.pos_align import (
    AlignedSentence,
    WordSamples,
    align_sentences,
    align_words,
    cap_per_tag,
    word_samples,
)
from fnet.attribution.pos_lesion import key_neuron_set, lesion_effects, word_log_probs
from fnet.attribution.pos_probe import (
    attribute_samples,
    bootstrap_metrics,
    columns_of,
    compare_classifiers,
    mean_signal,
    random_matched_columns,
    record_word_features,
    seed_interval,
)

__all__ = [
    "AlignedSentence",
    "AttributionResult",
    "BASELINES",
    "KeyNeuronCounter",
    "METHODS",
    "RANK_BY",
    "SELECTION_RULES",
    "WordSamples",
    "activation_x_gradient",
    "align_sentences",
    "align_words",
    "attribute",
    "attribute_samples",
    "bootstrap_metrics",
    "cap_per_tag",
    "columns_of",
    "compare_classifiers",
    "gauss_legendre_01",
    "integrated_gradients",
    "key_neuron_set",
    "lesion_effects",
    "mean_signal",
    "n_top",
    "random_matched_columns",
    "record_word_features",
    "replace_signals",
    "seed_interval",
    "select_key_neurons",
    "target_log_probs",
    "word_log_probs",
    "word_samples",
]
