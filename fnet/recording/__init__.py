"""Record: stimulus texts in, a model's MLP signal per text out, stored on disk with its provenance.

* :mod:`fnet.recording.texts`, :mod:`fnet.recording.sources` (the paper's named data sets in
  :mod:`fnet.recording.corpora`), :mod:`fnet.recording.stimuli` -- where texts come from and the template /
  individual samples of each data set (``conf/data``); the built-in corpus is ``corpus/``;
* :mod:`fnet.recording.recorder` -- :class:`Recorder`: ``acts  # [tokens, n_layers*width]`` per text;
* :mod:`fnet.recording.store` -- :class:`ActivationStore`: float16 shards with a checked manifest;
* :mod:`fnet.recording.cached` -- :func:`record_dataset`: texts into the store of the cache keyed by their content.
"""

from fnet.recording.cached import model_key, record_dataset, slug
from fnet.recording.recorder import Recorder, record_texts, stack_arrays, tokenize_texts
from fnet.recording.sources import SOURCES, builtin_genres, load_texts, trim_at_word_boundary, valid_sources
from fnet.recording.stimuli import load_stimulus_sets, sample_stimuli
from fnet.recording.store import ActivationStore, CorruptShardError, text_sha1
from fnet.recording.texts import DATA_DIR_ENV, HubUnavailableError, StimulusSet, Text, data_root, hub_reachable

__all__ = [
    "ActivationStore",
    "CorruptShardError",
    "DATA_DIR_ENV",
    "HubUnavailableError",
    "Recorder",
    "SOURCES",
    "StimulusSet",
    "Text",
    "builtin_genres",
    "data_root",
    "hub_reachable",
    "load_stimulus_sets",
    "load_texts",
    "model_key",
    "record_dataset",
    "record_texts",
    "sample_stimuli",
    "slug",
    "stack_arrays",
    "text_sha1",
    "tokenize_texts",
    "trim_at_word_boundary",
    "valid_sources",
]
