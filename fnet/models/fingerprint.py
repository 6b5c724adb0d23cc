"""A loaded model's identity: a hash of its weights (names, dtypes, shapes, bytes) and of its tokenizer.

Computed from what is in memory, so a checkpoint overwritten at the same path, a local folder re-saved with new
weights, a ``model.dtype`` change or a fine-tuned backbone all give a new fingerprint, whatever the path or name
says. xxh3-128 runs at memory speed (SmolLM2-135M in float32, 540 MB: see the README for the measured time), so no
per-file memo is needed. Every cache key and every NetworkSet's provenance carries it.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import torch
import xxhash

__all__ = ["tensors_digest", "tokenizer_digest", "model_fingerprint"]


def tensors_digest(named_tensors: Iterable[tuple[str, Any]]) -> str:
    """xxh3-128 over ``(name, dtype, shape, bytes)`` of every tensor, in the given order. Tensors on another
    device are copied to the CPU one at a time; meta tensors (not loaded) contribute name, dtype and shape."""
    digest = xxhash.xxh3_128()
    for name, tensor in named_tensors:
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        if tensor.device.type == "meta":
            continue
        flat = tensor.to("cpu").contiguous().reshape(-1)
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().data)  # raw bytes, any dtype (bf16 included)
    return digest.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """A hash of a tokenizer's behaviour: its serialised backend (vocabulary, merges, normaliser, pre-tokeniser)
    when it has one (without the truncation and padding that each call sets), else its vocabulary; plus class,
    special tokens, padding side and chat template.

    Examples
    --------
    >>> from fnet.models import load_model
    >>> tok = load_model("tiny:gpt2").tokenizer
    >>> before = tokenizer_digest(tok)
    >>> _ = tok(["a b c"], truncation=True, max_length=2)  # a call that sets the backend's truncation
    >>> tokenizer_digest(tok) == before
    True
    """
    if tokenizer is None:
        return "none"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        if backend is not None:
            # the backend's truncation and padding are set by each call with max_length / padding: call state,
            # not identity (the same tokenizer after one batch of a run must keep its fingerprint)
            state = json.loads(backend.to_str())
            body = json.dumps({k: v for k, v in state.items() if k not in ("truncation", "padding")}, sort_keys=True)
        else:
            body = json.dumps(sorted(tokenizer.get_vocab().items()))
    except Exception:  # a tokenizer without either: its repr is the best identity left
        body = repr(tokenizer)
    extra = [
        type(tokenizer).__name__,
        getattr(tokenizer, "special_tokens_map", {}),
        getattr(tokenizer, "padding_side", None),
        getattr(tokenizer, "truncation_side", None),
        getattr(tokenizer, "chat_template", None),
    ]
    return xxhash.xxh3_128_hexdigest(body.encode() + json.dumps(extra, sort_keys=True, default=str).encode())


def model_fingerprint(model: Any, tokenizer: Any = None) -> str:
    """The identity of a loaded model: :func:`tensors_digest` of its state dict plus :func:`tokenizer_digest`.
    32 hex digits; equal only when weights (with dtype), shapes and tokenizer are equal.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose state dict is digested.
    tokenizer : optional
        Its tokenizer, digested by :func:`tokenizer_digest`.

    Returns
    -------
    str
        32 hex digits.

    Examples
    --------
    >>> import torch
    >>> from fnet.models import load_model
    >>> lm = load_model("tiny:gpt2")
    >>> model_fingerprint(lm.model, lm.tokenizer) == lm.fingerprint
    True
    >>> with torch.no_grad():
    ...     lm.model.transformer.h[0].mlp.c_proj.weight[0, 0] += 1.0  # one weight changed
    >>> model_fingerprint(lm.model, lm.tokenizer) == lm.fingerprint
    False
    """
    weights = tensors_digest(model.state_dict().items())
    return xxhash.xxh3_128_hexdigest(f"{weights}|{tokenizer_digest(tokenizer)}".encode())
