"""Score several masks in one forward pass: :func:`score_loglik_masks`.

The rows go through the model once per batch with ``len(masks)`` copies of them, mask-major, and
:func:`fnet.intervene.apply.apply_masks` edits each copy with its own mask. Every mask's scores equal those of a
separate :func:`fnet.scoring.loglik.score_loglik` call under :func:`fnet.intervene.apply.apply_mask` with the same
rows (``tests/test_mask_batch.py``). Shared-prefix caching (``prefix_len``) is not used: a prefix computed once
would see one mask only. What it buys depends on the machine: ``bench/results_mask_batch.md``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fnet.intervene.apply import MaskSpec, apply_masks
from fnet.scoring.loglik import score_loglik

__all__ = ["score_loglik_masks"]


def score_loglik_masks(
    model: nn.Module,
    masks: Sequence[torch.Tensor | MaskSpec | None],
    contexts: Sequence[list[int]],
    continuations: Sequence[Sequence[list[int]]],
    *,
    pad_token_id: int,
    max_length: int | None = None,
    signal: str | None = None,
    share_context: bool = True,
) -> torch.Tensor:
    """Summed log-probabilities ``scores  # [mask, row, choice]``: :func:`fnet.scoring.loglik.score_loglik` of
    the same rows under each mask, in one batched forward pass.

    Parameters
    ----------
    model
        a causal LM fnet can discover.
    masks
        bool ``[n_layers, width]`` tensors, :class:`MaskSpec` objects or ``None`` (unmasked), one signal.
    contexts, continuations, pad_token_id, max_length, share_context
        as :func:`fnet.scoring.loglik.score_loglik` takes them (no ``prefix_len``: see the module's docstring).
    signal
        ``mlp_out`` or ``mlp_act`` (default: the MaskSpecs' own).

    Returns
    -------
    ``[len(masks), len(contexts), n_choices]`` float64; ``scores[i]`` is what ``score_loglik`` gives under
    ``apply_mask(model, masks[i])``.

    Examples
    --------
    >>> import torch
    >>> from fnet.models import load_model
    >>> lm = load_model("tiny:llama")
    >>> mask = torch.zeros(lm.n_layers, lm.d_model, dtype=torch.bool)
    >>> mask[1, :16] = True
    >>> score_loglik_masks(lm.model, [None, mask], [[5, 6, 7], [8, 9]], [[[1], [2]], [[1], [2]]],
    ...                    pad_token_id=0).shape
    torch.Size([2, 2, 2])
    """
    n = len(masks)
    with apply_masks(model, masks, signal=signal):
        scores = score_loglik(
            model,
            list(contexts) * n,
            [list(c) for c in continuations] * n,
            pad_token_id=pad_token_id,
            max_length=max_length,
            share_context=share_context,
        )
    return scores.view(n, len(contexts), -1)
