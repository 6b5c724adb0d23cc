"""Differences between transformers releases that fnet's code meets, kept in one place (and :func:`plain`,
which turns any caller's containers into plain ones).

transformers 5 renamed a model forward's ``past_key_values`` argument (and the output field) to ``cache``.
Code that passes or reads a key/value cache asks this module for the name instead of spelling either one, so
a fast path that needs the cache cannot switch itself off silently when the name changes again.

>>> from transformers import GPT2Config, GPT2LMHeadModel
>>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11))
>>> cache_argument(model) in ("cache", "past_key_values")
True
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["accepts", "cache_argument", "output_cache", "plain"]

#: names a model forward has used for its key/value cache argument, newest first
CACHE_ARGUMENTS = ("cache", "past_key_values")


def accepts(model: Any, name: str) -> bool:
    """Whether ``model.forward`` takes a keyword ``name``."""
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def cache_argument(model: Any) -> str | None:
    """The keyword under which ``model.forward`` takes a key/value cache, or ``None`` when it takes none."""
    for name in CACHE_ARGUMENTS:
        if accepts(model, name):
            return name
    return None


def output_cache(output: Any) -> Any:
    """The key/value cache a forward returned (``output.cache`` or, before transformers 5, ``.past_key_values``)."""
    for name in CACHE_ARGUMENTS:
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise AttributeError(f"{type(output).__name__} holds no key/value cache (looked for {list(CACHE_ARGUMENTS)})")


def plain(value: Any) -> Any:
    """``value`` with every mapping turned into a ``dict`` and every non-string sequence into a ``list``.

    Library functions take plain arguments; Hydra's ``instantiate`` hands them OmegaConf containers (which are
    ``Mapping`` / ``Sequence`` types, resolved on access). This converts them without importing omegaconf.

    >>> plain({"a": (1, 2), "b": {"c": "x"}})
    {'a': [1, 2], 'b': {'c': 'x'}}
    """
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(item) for item in value]
    return value
