"""Models: load a causal LM by name and find, by structure, where its MLP signals live.

* :mod:`fnet.models.discovery` -- blocks, MLP and down projection found on the module tree (no model-type list);
* :mod:`fnet.models.arch` -- that :class:`ArchSpec` resolved to modules, the two signals ``mlp_out``/``mlp_act``;
* :mod:`fnet.models.load` -- :func:`load_model` (names, folders, GGUF, ``device_map``) -> :class:`LoadedModel`;
* :mod:`fnet.models.fingerprint` -- a loaded model's identity (weights and tokenizer), the key of every cache;
* :mod:`fnet.models.tiny` and :mod:`fnet.models.tiny_chatglm` -- tiny random test models (no download);
* ``python -m fnet.models describe <name>`` -- what discovery found for a model.
"""

from fnet.models.arch import (
    SIGNALS,
    check_signal,
    down_proj_modules,
    find_blocks,
    get_arch,
    mlp_modules,
    model_dims,
    signal_modules,
    to_batch_first,
)
from fnet.models.discovery import ArchSpec, DiscoveryError, config_dims, discover, resolve_path
from fnet.models.fingerprint import model_fingerprint
from fnet.models.load import NAMED_MODELS, LoadedModel, load_model, read_config
from fnet.models.tiny import byte_tokenizer, tiny_config, tiny_model

__all__ = [
    "ArchSpec",
    "DiscoveryError",
    "LoadedModel",
    "NAMED_MODELS",
    "SIGNALS",
    "byte_tokenizer",
    "check_signal",
    "config_dims",
    "discover",
    "down_proj_modules",
    "find_blocks",
    "get_arch",
    "load_model",
    "mlp_modules",
    "model_dims",
    "model_fingerprint",
    "read_config",
    "resolve_path",
    "signal_modules",
    "tiny_config",
    "tiny_model",
    "to_batch_first",
]
