"""fnet: functional networks and key neurons in causal language models.

Record every layer's MLP signal while a model reads texts, decompose tokens x neurons with ICA into functional
networks, and test them by lesion and preservation against matched random controls::

    import fnet
    lm = fnet.load_model()                                   # SmolLM2-135M-Instruct, offline
    store = fnet.record(lm, texts)                           # acts  # [tokens, layers*d_model] per text, cached
    nets = fnet.find_networks(store, n_components=10)        # NetworkSet: masks [K, layers, d_model]
    base = fnet.evaluate(lm, "sst2", limit=200)              # score, 95 % CI, chance
    with fnet.lesion(lm, nets, 0):
        lesioned = fnet.evaluate(lm, "sst2", limit=200)
    control = fnet.evaluate(lm, "sst2", mask=fnet.random_control(nets, 0, seed=0), limit=200)

Names are imported lazily on first use, so ``import fnet`` is cheap. The stages live in subpackages:
``models``, ``recording``, ``decompose``, ``networks``, ``intervene``, ``scoring``, ``attribution``, ``report``,
``lit`` (Lightning adapters) and ``pipelines`` (the Hydra entry points' code).
"""

from __future__ import annotations

import importlib
from typing import Any

from fnet.version import __version__

#: public name -> module that defines it
_API = {
    # models and recording
    "load_model": "fnet.models",
    "record": "fnet.recording.cached",
    "ActivationStore": "fnet.recording.store",
    # decomposition and networks
    "FastICA": "fnet.decompose",
    "CanICA": "fnet.decompose",
    "Picard": "fnet.decompose",
    "find_networks": "fnet.networks.find",
    "NetworkSet": "fnet.networks.netset",
    "match_templates": "fnet.networks.match",
    # interventions
    "apply_mask": "fnet.intervene.apply",
    "lesion": "fnet.intervene.context",
    "preserve": "fnet.intervene.context",
    "random_control": "fnet.intervene.context",
    # tasks and attribution
    "load_task": "fnet.lit.notebook",
    "evaluate": "fnet.lit.notebook",
    "attribute": "fnet.attribution.methods",
}

__all__ = sorted(_API) + ["__version__"]

#: the stage subpackages, importable as attributes (``fnet.networks``) without an import statement
_SUBPACKAGES = (
    "models",
    "recording",
    "decompose",
    "networks",
    "intervene",
    "scoring",
    "attribution",
    "report",
    "lit",
    "pipelines",
    "study",
    "cache",
    "compat",
    "hooks",
    "provenance",
)


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    module = _API.get(name)
    if module is None:
        if name in _SUBPACKAGES:  # fnet.recording.load_texts(...) without importing fnet.recording first
            return importlib.import_module(f"fnet.{name}")
        raise AttributeError(f"module 'fnet' has no attribute {name!r}; its public names: {sorted(_API)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
