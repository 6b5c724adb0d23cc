"""Generation scoring and perplexity: greedy generation, the label parser, perplexity windows.

Scoring modes (``task.scoring``) other than ``loglik`` (:mod:`fnet.scoring.loglik`):

* ``generate`` -- greedy generation (left padding), then :func:`parse_choice` (whole words, longest label
  first, independent of the order of the labels); rows the parser cannot map count as parse failures (and as
  wrong). SQuAD uses generation, the answer is the text up to the first newline.
* ``perplexity`` -- token-level perplexity over windows of ``max_length`` tokens (:func:`perplexity_windows`).

Names follow TransformerLens habits: ``tokens`` are token ids, ``logits``/``log_probs`` say their axes.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F

__all__ = ["generate_greedy", "parse_choice", "perplexity_windows", "window_nll"]


# --------------------------------------------------------------------------------------------------------------
# Generation and the label parser
# --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_greedy(
    model: torch.nn.Module,
    tokenizer: Any,
    contexts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    until: Sequence[str] = ("\n",),
    pad_token_id: int,
    max_length: int | None = None,
) -> list[str]:
    """Greedy continuations of a batch of prompts (left padding), cut at the first ``until`` string.

    Parameters
    ----------
    model : torch.nn.Module
        The causal LM.
    tokenizer : Any
        Its tokenizer (decodes the new tokens).
    contexts : Sequence of list of int
        Prompt tokens per row.
    max_new_tokens : int
        Most tokens generated.
    until : Sequence of str
        Stop strings; the text is cut at the first (default ``("\\n",)``).
    pad_token_id : int
        The padding token.
    max_length : int, optional
        Most tokens of prompt plus generation; prompts are cut from the left to fit.

    Returns
    -------
    list of str
        The continuation per row.
    """
    device = next(model.parameters()).device
    budget = None if max_length is None else max(max_length - max_new_tokens, 1)
    sequences = [list(c)[-budget:] if budget else list(c) for c in contexts]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)  # [row, pos], left padded
    attention_mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(sequences):
        input_ids[i, width - len(seq) :] = torch.tensor(seq)
        attention_mask[i, width - len(seq) :] = 1
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=int(max_new_tokens),
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_token_id,
    )
    texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    out = []
    for text in texts:
        for stop in until or ():
            if stop and stop in text:
                text = text[: text.index(stop)]
        out.append(text)
    return out


def _normalise_label_text(text: str) -> str:
    return " ".join(re.sub(r"[_\-]", " ", text.lower()).split())


def parse_choice(text: str, choices: Sequence[str]) -> int | None:
    """The choice a generated answer names, or ``None`` (a parse failure).

    Case-insensitive, whole-word matching (``\\b``: "acceptable" never matches inside "unacceptable"), with
    ``_``/``-`` read as spaces ("not_entailment" = "not entailment"). The **earliest** label in the text wins;
    at the same position the longest label wins, and a label inside a longer label's match does not count
    (so "not entailment" is never read as "entailment"). Neither rule depends on the order of ``choices``.

    Parameters
    ----------
    text : str
        The generated answer.
    choices : Sequence of str
        The label words.

    Returns
    -------
    int or None
        Index of the named choice; None when no choice or two equal ones match.
    """
    haystack = _normalise_label_text(text)
    spans = []  # (start, -length, choice index)
    for index, choice in enumerate(choices):
        needle = _normalise_label_text(choice)
        if not needle:
            continue
        pattern = r"(?<![\w])" + re.escape(needle) + r"(?![\w])"
        for match in re.finditer(pattern, haystack):
            spans.append((match.start(), match.end(), index))
    if not spans:
        return None
    # drop matches covered by a longer match (e.g. "entailment" inside "not entailment")
    kept = [
        s
        for s in spans
        if not any(o is not s and o[0] <= s[0] and s[1] <= o[1] and (o[1] - o[0]) > (s[1] - s[0]) for o in spans)
    ]
    kept.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    first = kept[0]
    rivals = {s[2] for s in kept if s[0] == first[0] and s[1] == first[1]}
    if len(rivals) > 1:  # two labels normalising to the same text: ambiguous
        return None
    return first[2]


# --------------------------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------------------------
def perplexity_windows(n_tokens: int, max_length: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """Windows ``(begin, end, n_scored)`` covering ``n_tokens``: each window is ``tokens[begin:end]`` (at most
    ``max_length`` long) and scores its last ``n_scored`` tokens, so every token but the first (which has no
    prediction) is scored exactly once.

    ``stride`` = tokens newly scored per window, at most ``max_length - 1`` (the default): then consecutive
    windows overlap by one token, just enough to predict each window's first scored token -- plain chunking.
    Smaller strides give each scored token up to ``max_length - stride`` tokens of extra context (sliding window).

    Parameters
    ----------
    n_tokens : int
        Length of the token sequence.
    max_length : int
        Most tokens per window (at least 2).
    stride : int, optional
        Tokens newly scored per window (default ``max_length - 1``).

    Returns
    -------
    list of tuple of int
        ``(begin, end, n_scored)`` per window.
    """
    max_length = int(max_length)
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    stride = min(int(stride or max_length - 1), max_length - 1)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    windows = []
    scored_until = 1  # token 0 is context only
    while scored_until < n_tokens:
        end = min(scored_until + stride, n_tokens)
        begin = max(0, end - max_length)
        windows.append((begin, end, end - scored_until))
        scored_until = end
    return windows


@torch.no_grad()
def window_nll(
    model: torch.nn.Module, windows: Sequence[list[int]], n_scored: Sequence[int], *, pad_token_id: int
) -> torch.Tensor:
    """Summed negative log-likelihood ``nll  # [window]`` of each window's last ``n_scored`` tokens.

    Parameters
    ----------
    model : torch.nn.Module
        The causal LM.
    windows : Sequence of list of int
        Token ids per window.
    n_scored : Sequence of int
        Tokens scored at the end of each window.
    pad_token_id : int
        The padding token.

    Returns
    -------
    torch.Tensor [window]
        Summed NLL per window (float64, CPU).
    """
    device = next(model.parameters()).device
    width = max(len(w) for w in windows)
    input_ids = torch.full((len(windows), width), pad_token_id, dtype=torch.long)  # [window, pos]
    attention_mask = torch.zeros_like(input_ids)
    target_mask = torch.zeros(len(windows), width, dtype=torch.bool)  # [window, pos]: this token is scored
    for i, (tokens, k) in enumerate(zip(windows, n_scored)):
        input_ids[i, : len(tokens)] = torch.tensor(tokens)
        attention_mask[i, : len(tokens)] = 1
        target_mask[i, len(tokens) - k : len(tokens)] = True
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float()
    log_probs = F.log_softmax(logits[:, :-1], dim=-1)  # [window, pos-1, vocab]: predicts token pos+1
    token_log_probs = log_probs.gather(-1, input_ids[:, 1:, None].to(device))[..., 0]  # [window, pos-1]
    scored = target_mask[:, 1:].to(device)
    return -(token_log_probs * scored).sum(dim=1).double().cpu()
