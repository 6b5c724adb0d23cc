"""Log-likelihood scoring of choices after a prompt: one forward pass per batch, with two fast paths (a shared
few-shot prefix's keys/values computed once; a row's context computed once for all its multi-token choices).
:data:`PATH_COUNTS` says which path each batch took.

Split out of :mod:`fnet.scoring` (which re-exports these names).
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from fnet.batching import right_pad
from fnet.compat import accepts, cache_argument, output_cache

__all__ = ["PATH_COUNTS", "score_loglik", "prefix_key_values"]


def _left_truncate(context: list[int], continuation: list[int], max_length: int | None) -> list[int]:
    if max_length is None or len(context) + len(continuation) <= max_length:
        return context
    keep = max(max_length - len(continuation), 1)
    return context[-keep:]


@torch.no_grad()
def prefix_key_values(model: torch.nn.Module, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a shared prompt prefix (e.g. a fixed set of few-shot shots), computed once.
    Compute it under the same mask as the scoring that reuses it.

    Parameters
    ----------
    model : torch.nn.Module
        The causal LM.
    prefix : Sequence of int
        The prefix's tokens.

    Returns
    -------
    list of tuple of torch.Tensor
        ``(keys, values)`` per layer.
    """
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True)
    cache = output_cache(out)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _supports_prefix_cache(model: torch.nn.Module) -> bool:
    return cache_argument(model) is not None and accepts(model, "position_ids")


#: how many ``score_loglik`` batches took each path since the last reset: ``"prefix"`` (shared few-shot keys and
#: values), ``"shared_context"`` (one context pass for multi-token choices) and ``"full"`` (whole sequences).
#: Tests assert that a fast path ran, not only that the numbers agree (a renamed cache argument once switched
#: both fast paths off without a word).
PATH_COUNTS: Counter = Counter()
_warned_slow: set[str] = set()


def _fast_path_unavailable(model: torch.nn.Module, what: str, why: str) -> None:
    PATH_COUNTS[f"{what}_unavailable"] += 1
    key = f"{type(model).__name__}:{what}"
    if key not in _warned_slow:
        _warned_slow.add(key)
        warnings.warn(
            f"{what} scoring is not available for {type(model).__name__} ({why}); scoring full "
            "sequences instead: same numbers, more work",
            RuntimeWarning,
            stacklevel=3,
        )


@torch.no_grad()
def score_loglik(
    model: torch.nn.Module,
    contexts: Sequence[list[int]],
    continuations: Sequence[Sequence[list[int]]],
    *,
    pad_token_id: int,
    max_length: int | None = None,
    prefix_len: int = 0,
    kv_memo: dict | None = None,
    share_context: bool = True,
) -> torch.Tensor:
    """Summed log-probabilities ``scores  # [row, choice]`` of each row's choice tokens after its context.

    ``contexts[r]`` are row r's prompt tokens; ``continuations[r][c]`` the tokens of choice c (rows may differ
    in their choices' tokens but not in their number). Contexts longer than ``max_length`` minus the choice are cut
    from the left. One forward pass for the batch: if every choice of every row is a single token, one sequence
    per row (the choices are read at the prompt's last position); otherwise one sequence per (row, choice).

    ``prefix_len``: the first ``prefix_len`` tokens are the same in every context (fixed few-shot shots). Their
    keys/values are computed once (kept in ``kv_memo``, a dict the caller owns and clears whenever the model or
    its mask changes) and only the rest of each sequence goes through the model -- the same numbers, a fraction of
    the work. Falls back to full sequences when the model takes no key/value cache (:mod:`fnet.compat`) or a sequence
    is too long.

    ``share_context``: with multi-token choices, each row's context goes through the model once and its
    keys/values are repeated for the row's choices (:func:`_score_shared_context`), instead of one full sequence
    per (row, choice) -- n_choices times less work on the context, the same numbers.

    Parameters
    ----------
    model : torch.nn.Module
        The causal LM.
    contexts : Sequence of list of int
        Prompt tokens per row.
    continuations : Sequence of Sequence of list of int
        Tokens of each choice per row.
    pad_token_id : int
        The padding token.
    max_length : int, optional
        Most tokens per sequence; contexts are cut from the left to fit.
    prefix_len : int
        Leading tokens shared by every context (default 0).
    kv_memo : dict, optional
        Keeps the shared prefix's keys/values between calls.
    share_context : bool
        Compute each row's context once for multi-token choices (default True).

    Returns
    -------
    torch.Tensor [row, choice]
        Summed log-probabilities (float64).
    """
    n_rows = len(contexts)
    n_choices = len(continuations[0]) if n_rows else 0
    longest = max(len(ctx) + max(len(c) for c in conts) for ctx, conts in zip(contexts, continuations))
    use_prefix = (
        prefix_len > 0
        and _supports_prefix_cache(model)
        and all(len(ctx) > prefix_len for ctx in contexts)
        and (max_length is None or longest <= max_length)
    )
    if prefix_len > 0 and not _supports_prefix_cache(model):
        _fast_path_unavailable(model, "shared-prefix", "its forward takes no key/value cache and position_ids")
    key_values = None
    if use_prefix:
        prefix = tuple(contexts[0][:prefix_len])
        if kv_memo is not None and prefix in kv_memo:
            key_values = kv_memo[prefix]
        else:
            try:
                key_values = prefix_key_values(model, prefix)
            except (AttributeError, TypeError, ValueError) as err:  # a model without a layered Cache
                _fast_path_unavailable(model, "shared-prefix", f"{type(err).__name__}: {err}")
                key_values = None
            if kv_memo is not None and key_values is not None:
                kv_memo.clear()
                kv_memo[prefix] = key_values
        if key_values is not None:
            contexts = [ctx[prefix_len:] for ctx in contexts]
            max_length = None
    single_token = all(len(tokens) == 1 for conts in continuations for tokens in conts)
    if not single_token and key_values is None and share_context:
        if not _supports_prefix_cache(model):
            _fast_path_unavailable(model, "shared-context", "its forward takes no key/value cache and position_ids")
        else:
            try:
                scores = _score_shared_context(model, contexts, continuations, pad_token_id, max_length)
                PATH_COUNTS["shared_context"] += 1
                return scores
            except (AttributeError, TypeError, NotImplementedError) as err:  # a cache that cannot be expanded
                _fast_path_unavailable(model, "shared-context", f"{type(err).__name__}: {err}")
    PATH_COUNTS["prefix" if key_values is not None else "full"] += 1
    if single_token:
        sequences = [_left_truncate(list(ctx), [0], max_length) for ctx in contexts]
        targets = [
            [(r, len(seq) - 1, [conts[c][0]]) for c in range(n_choices)]
            for r, (seq, conts) in enumerate(zip(sequences, continuations))
        ]
    else:
        sequences, targets = [], []
        for ctx, conts in zip(contexts, continuations):
            row_targets = []
            for cont in conts:
                seq = _left_truncate(list(ctx), cont, max_length) + list(cont)
                row_targets.append((len(sequences), len(seq) - len(cont) - 1, list(cont)))
                sequences.append(seq)
            targets.append(row_targets)
    # only logits from the first position any target reads onwards are needed (saves the LM head's work)
    first_read = min(t[1] for row in targets for t in row)
    logits, offset = _forward_right_padded(model, sequences, pad_token_id, first_read, key_values)
    scores = torch.empty(n_rows, n_choices, dtype=torch.float64)
    for r in range(n_rows):
        for c in range(n_choices):
            seq_i, pos, tokens = targets[r][c]
            positions = torch.arange(pos, pos + len(tokens), device=logits.device) - offset  # [n_tokens]
            log_probs = F.log_softmax(logits[seq_i, positions], dim=-1)  # [n_tokens, vocab]
            picked = log_probs.gather(-1, torch.tensor(tokens, device=logits.device)[:, None])  # [n_tokens, 1]
            scores[r, c] = float(picked.sum())
    return scores


@torch.no_grad()
def _score_shared_context(
    model: torch.nn.Module,
    contexts: Sequence[list[int]],
    continuations: Sequence[Sequence[list[int]]],
    pad_token_id: int,
    max_length: int | None,
) -> torch.Tensor:
    """Multi-token choices without repeating the context: (1) the right-padded contexts in one forward pass with
    a cache -- the logits at each row's last real position score every choice's first token; (2) the cache is
    repeated per choice and the choices' remaining tokens go through one more forward pass (right padded, explicit
    positions after each row's real context length, padded context positions masked out)."""
    from transformers.cache_utils import DynamicCache

    device = next(model.parameters()).device
    n_rows, n_choices = len(contexts), len(continuations[0])
    longest_cont = max(len(c) for conts in continuations for c in conts)
    contexts = [_left_truncate(list(ctx), [0] * longest_cont, max_length) for ctx in contexts]
    lengths = [len(ctx) for ctx in contexts]
    width = max(lengths)
    input_ids, context_mask = right_pad(contexts, pad_token_id)  # [row, pos], right padded
    kwargs: dict[str, Any] = {}
    offset = 0
    if accepts(model, "logits_to_keep"):  # only the positions from the shortest row's last token onwards
        offset = min(lengths) - 1
        kwargs["logits_to_keep"] = width - offset
    out = model(input_ids=input_ids.to(device), attention_mask=context_mask.to(device), use_cache=True, **kwargs)
    cache = output_cache(out)
    if not isinstance(cache, DynamicCache):
        raise NotImplementedError("shared-context scoring needs a DynamicCache")
    last = out.logits[torch.arange(n_rows), torch.tensor(lengths) - 1 - offset].float()  # [row, vocab]
    first_log_probs = F.log_softmax(last, dim=-1).cpu()  # [row, vocab]
    scores = torch.empty(n_rows, n_choices, dtype=torch.float64)
    for r in range(n_rows):
        for c in range(n_choices):
            scores[r, c] = float(first_log_probs[r, continuations[r][c][0]])
    rest_width = longest_cont - 1  # tokens after the first of each choice are inputs of the second pass
    if rest_width == 0:
        return scores
    cache.batch_repeat_interleave(n_choices)  # row r's cache -> rows r*n_choices .. r*n_choices + n_choices - 1
    n = n_rows * n_choices
    rest_ids = torch.full((n, rest_width), pad_token_id, dtype=torch.long)  # [row*choice, pos]
    rest_mask = torch.zeros_like(rest_ids)
    for r in range(n_rows):
        for c in range(n_choices):
            tokens = continuations[r][c][:-1]  # inputs predicting tokens 2..m
            if tokens:
                rest_ids[r * n_choices + c, : len(tokens)] = torch.tensor(tokens)
                rest_mask[r * n_choices + c, : len(tokens)] = 1
    attention_mask = torch.cat([context_mask.repeat_interleave(n_choices, dim=0), rest_mask], dim=1)
    position_ids = torch.tensor(lengths).repeat_interleave(n_choices)[:, None] + torch.arange(rest_width)[None]
    logits = model(
        input_ids=rest_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=True,
        **{cache_argument(model): cache},
    ).logits.float()
    for r in range(n_rows):
        for c in range(n_choices):
            tokens = continuations[r][c]
            if len(tokens) < 2:
                continue
            log_probs = F.log_softmax(logits[r * n_choices + c, : len(tokens) - 1], dim=-1)  # [m - 1, vocab]
            picked = log_probs.gather(-1, torch.tensor(tokens[1:], device=log_probs.device)[:, None])
            scores[r, c] += float(picked.sum())
    return scores


def _forward_right_padded(
    model: torch.nn.Module,
    sequences: Sequence[list[int]],
    pad_token_id: int,
    first_read: int,
    key_values: list | None = None,
) -> tuple[torch.Tensor, int]:
    """One forward pass of right-padded sequences (after a shared cached prefix when ``key_values`` is given).
    Returns ``(logits  # [seq, pos - offset, vocab], offset)``."""
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    n = len(sequences)
    input_ids, attention_mask = right_pad(sequences, pad_token_id)  # [seq, pos], right padded
    kwargs: dict[str, Any] = {}
    offset = 0
    if accepts(model, "logits_to_keep") and first_read > 0:
        kwargs["logits_to_keep"] = width - first_read
        offset = first_read
    if key_values is not None:
        from transformers.cache_utils import DynamicCache

        n_prefix = key_values[0][0].shape[-2]
        kwargs[cache_argument(model)] = DynamicCache(
            ddp_cache_data=[
                (k.expand(n, *k.shape[1:]).contiguous(), v.expand(n, *v.shape[1:]).contiguous()) for k, v in key_values
            ],
            config=getattr(model, "config", None),
        )
        kwargs["use_cache"] = True
        kwargs["position_ids"] = (n_prefix + torch.arange(width, device=device))[None].expand(n, -1)
        attention_mask = torch.cat([torch.ones(n, n_prefix, dtype=attention_mask.dtype), attention_mask], dim=1)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs).logits
    return logits.float(), offset
