"""Scoring a causal LM on a task: prompts, few-shot shots, log-likelihood and generation scoring, perplexity,
the label parser, and the statistics every result row carries (confidence intervals, chance levels).

Scoring modes (``task.scoring``):

* ``loglik`` (default) -- for each row, the summed log-probability of every choice's tokens after the prompt;
  the prediction is the argmax. All sequences of a batch go through **one** forward pass (right padding; the
  target tokens' log-probs are gathered at their positions). When every choice is a single token the choices
  are read off the prompt's last position, so one sequence per row is enough. ``calibrate=true`` subtracts the
  choice scores of a content-free input ("N/A" in place of the row's text, same shots; Zhao et al. 2021).
  No parse failure is possible.
* ``generate`` -- greedy generation (left padding), then :func:`parse_choice` (whole words, longest label
  first, independent of the order of the labels); rows the parser cannot map count as parse failures (and as
  wrong). SQuAD uses generation, the answer is the text up to the first newline.
* ``perplexity`` -- token-level perplexity over windows of ``max_length`` tokens (:func:`perplexity_windows`).

Names follow TransformerLens habits: ``tokens`` are token ids, ``logits``/``log_probs`` say their axes.
"""

from __future__ import annotations

import math
import re
import string
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fnet.compat import accepts, cache_argument, output_cache
from fnet.tasks import TaskSpec

__all__ = [
    "CONTENT_FREE",
    "PromptBuilder",
    "Request",
    "sample_shots",
    "use_chat_template",
    "score_loglik",
    "prefix_key_values",
    "generate_greedy",
    "parse_choice",
    "perplexity_windows",
    "window_nll",
    "wilson_interval",
    "bootstrap_interval",
    "chance_levels",
    "class_metric",
    "mcc_from_confusion",
    "normalize_answer",
    "squad_scores",
]

CONTENT_FREE = "N/A"


# --------------------------------------------------------------------------------------------------------------
# Prompts and few-shot shots
# --------------------------------------------------------------------------------------------------------------
class _Fields(dict):
    def __missing__(self, key: str) -> str:  # a template field the row lacks renders empty
        return ""


def use_chat_template(task: TaskSpec, tokenizer: Any) -> bool:
    """``task.chat_template``: true / false, or ``auto`` = the tokenizer has a chat template (instruct models)."""
    if task.chat_template == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    if task.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"task {task.name!r}: chat_template=true but the tokenizer has no chat template")
    return bool(task.chat_template)


def sample_shots(pool: Sequence[Mapping], k: int, rng: np.random.Generator, *, balanced: bool = False,
                 n_classes: int = 0, exclude_index: int | None = None) -> list[Mapping]:
    """``k`` rows of ``pool`` without replacement. ``balanced``: as equal a count per class as the pool allows
    (remainder classes chosen at random), then shuffled. ``exclude_index``: a row index never drawn (used when
    shots come from the scored split itself)."""
    candidates = [r for r in pool if exclude_index is None or r["index"] != exclude_index]
    k = min(int(k), len(candidates))
    if k <= 0:
        return []
    if not balanced or n_classes < 2:
        picks = rng.choice(len(candidates), size=k, replace=False)
        return [candidates[i] for i in picks]
    by_class: dict[int, list[int]] = {c: [] for c in range(n_classes)}
    for i, row in enumerate(candidates):
        by_class.setdefault(int(row["label"]), []).append(i)
    quota = {c: k // n_classes for c in by_class}
    for c in rng.permutation(sorted(by_class))[: k % n_classes]:
        quota[int(c)] += 1
    picks: list[int] = []
    for c, members in sorted(by_class.items()):
        take = min(quota.get(c, 0), len(members))
        picks.extend(rng.choice(members, size=take, replace=False).tolist())
    if len(picks) < k:  # some class too small: fill from the rest
        rest = np.setdiff1d(np.arange(len(candidates)), picks)
        picks.extend(rng.choice(rest, size=k - len(picks), replace=False).tolist())
    picks = [picks[i] for i in rng.permutation(len(picks))]
    return [candidates[i] for i in picks]


class PromptBuilder:
    """Turns task rows into model inputs: the prompt text (with few-shot shots, optionally chat-formatted) and the
    continuations to score.

    Shots: ``task.num_fewshot`` rows of ``fewshot_pool`` (the task's ``fewshot_split``, disjoint from the scored
    rows), drawn with ``task.fewshot.seed`` -- per scored row (``sampling: per_example``, the row's index seeds the
    draw, so a row gets the same shots in any batch, order or process) or once for all rows (``fixed``).
    """

    def __init__(self, task: TaskSpec, tokenizer: Any, fewshot_pool: Sequence[Mapping] | None = None,
                 same_split: bool = False):
        self.task = task
        self.tokenizer = tokenizer
        self.pool = list(fewshot_pool or [])
        self.same_split = same_split
        self.chat = use_chat_template(task, tokenizer)
        fewshot = task.fewshot or {}
        self.seed = int(fewshot.get("seed", 1234))
        self.sampling = fewshot.get("sampling", "per_example")
        if self.sampling not in ("per_example", "fixed"):
            raise ValueError(f"fewshot.sampling must be per_example or fixed, not {self.sampling!r}")
        self.balanced = bool(fewshot.get("balanced", False)) and task.type == "multiple_choice"
        if task.num_fewshot and len(self.pool) < task.num_fewshot:
            raise ValueError(f"task {task.name!r}: {task.num_fewshot} shots requested but the few-shot pool has "
                             f"{len(self.pool)} rows")
        self._fixed: list[Mapping] | None = None
        self._prefix_cache: tuple[str, list[int]] | None = None

    # ----------------------------------------------------------------------------------------------------------
    def shots_for(self, row: Mapping) -> list[Mapping]:
        k = self.task.num_fewshot
        if not k:
            return []
        if self.sampling == "fixed":
            if self._fixed is None:
                self._fixed = sample_shots(self.pool, k, np.random.default_rng(self.seed), balanced=self.balanced,
                                           n_classes=self.task.n_choices)
            return self._fixed
        rng = np.random.default_rng([self.seed, int(row["index"])])
        return sample_shots(self.pool, k, rng, balanced=self.balanced, n_classes=self.task.n_choices,
                            exclude_index=row["index"] if self.same_split else None)

    def question(self, row: Mapping) -> str:
        return self.task.prompt["template"].format_map(_Fields({k: v for k, v in row.items() if v is not None}))

    def answer(self, row: Mapping) -> str:
        """The gold answer text of a row (shots show it)."""
        if self.task.type == "multiple_choice":
            return self.task.choices[int(row["label"])]
        if self.task.type == "generation":
            return row["answers"][0]
        return ""

    @property
    def delimiter(self) -> str:
        return "" if self.chat else self.task.prompt.get("target_delimiter", " ")

    def context(self, row: Mapping, shots: Sequence[Mapping] | None = None) -> str:
        """The text the model continues: shots (question + answer) then the row's question."""
        shots = self.shots_for(row) if shots is None else shots
        if self.chat:
            messages: list[dict] = []
            for shot in shots:
                messages += [{"role": "user", "content": self.question(shot)},
                             {"role": "assistant", "content": self.answer(shot)}]
            messages.append({"role": "user", "content": self.question(row)})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        sep = self.task.prompt.get("fewshot_delimiter", "\n\n")
        parts = [self.question(shot) + self.task.prompt.get("target_delimiter", " ") + self.answer(shot)
                 for shot in shots]
        return sep.join(parts + [self.question(row)])

    def content_free(self, row: Mapping) -> Mapping:
        """The row with its text replaced by the content-free input (same index, so the same shots)."""
        out = dict(row)
        for key in ("text_a", "text_b", "context", "question", "title"):
            if out.get(key) is not None:
                out[key] = CONTENT_FREE
        return out

    def continuations(self) -> list[str]:
        return [self.delimiter + choice for choice in (self.task.choices or [])]

    # ----------------------------------------------------------------------------------------------------------
    def encode_context(self, text: str) -> list[int]:
        # a chat-formatted prompt already holds its special tokens
        return list(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def encode_continuation(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def shares_prefix(self) -> bool:
        """Fixed shots in a plain prompt: every row's prompt starts with the same shots block, whose tokens are
        encoded once and whose keys/values the scorer computes once."""
        return self.sampling == "fixed" and self.task.num_fewshot > 0 and not self.chat

    def _prefix(self) -> tuple[str, list[int]]:
        if getattr(self, "_prefix_cache", None) is None:
            sep = self.task.prompt.get("fewshot_delimiter", "\n\n")
            shots = self.shots_for({"index": -1})
            text = sep.join(self.question(shot) + self.task.prompt.get("target_delimiter", " ") + self.answer(shot)
                            for shot in shots) + sep
            self._prefix_cache = (text, list(self.tokenizer(text, add_special_tokens=True)["input_ids"]))
        return self._prefix_cache

    def request(self, row: Mapping, calibrate: bool = False) -> "Request":
        continuations = [self.encode_continuation(c) for c in self.continuations()]
        if any(len(c) == 0 for c in continuations):
            raise ValueError(f"task {self.task.name!r}: a choice encodes to no tokens: {self.continuations()}")
        if self.shares_prefix:
            # shots block and question are tokenised separately and concatenated (a valid tokenisation of the
            # prompt text), so all rows share the shots' tokens exactly
            prefix_text, prefix = self._prefix()
            question = self.question(row)
            tokens = prefix + list(self.tokenizer(question, add_special_tokens=False)["input_ids"])
            cf = None
            if calibrate:
                cf_question = self.question(self.content_free(row))
                cf = prefix + list(self.tokenizer(cf_question, add_special_tokens=False)["input_ids"])
            return Request(index=int(row["index"]), label=int(row.get("label", -1)), context=prefix_text + question,
                           context_tokens=tokens, continuation_tokens=continuations, content_free_tokens=cf,
                           row=dict(row), prefix_len=len(prefix))
        shots = self.shots_for(row)
        context = self.context(row, shots)
        cf = self.encode_context(self.context(self.content_free(row), shots)) if calibrate else None
        return Request(index=int(row["index"]), label=int(row.get("label", -1)), context=context,
                       context_tokens=self.encode_context(context), continuation_tokens=continuations,
                       content_free_tokens=cf, row=dict(row))


@dataclass
class Request:
    """One scored row, tokenised. ``continuation_tokens[i]`` are the tokens of choice i (empty list for
    generation tasks); ``content_free_tokens`` the calibration prompt (or None); the first ``prefix_len`` context
    tokens are the same for every row (fixed shots), so their keys/values can be computed once."""

    index: int
    label: int
    context: str
    context_tokens: list[int]
    continuation_tokens: list[list[int]] = field(default_factory=list)
    content_free_tokens: list[int] | None = None
    row: dict = field(default_factory=dict)
    prefix_len: int = 0  # leading tokens shared by every request of the task (fixed shots)


# --------------------------------------------------------------------------------------------------------------
# Log-likelihood scoring
# --------------------------------------------------------------------------------------------------------------
def _left_truncate(context: list[int], continuation: list[int], max_length: int | None) -> list[int]:
    if max_length is None or len(context) + len(continuation) <= max_length:
        return context
    keep = max(max_length - len(continuation), 1)
    return context[-keep:]


@torch.no_grad()
def prefix_key_values(model: torch.nn.Module, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a shared prompt prefix (e.g. a fixed set of few-shot shots), computed once.
    Compute it under the same mask as the scoring that reuses it."""
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
        warnings.warn(f"{what} scoring is not available for {type(model).__name__} ({why}); scoring full "
                      "sequences instead: same numbers, more work", RuntimeWarning, stacklevel=3)


@torch.no_grad()
def score_loglik(model: torch.nn.Module, contexts: Sequence[list[int]], continuations: Sequence[Sequence[list[int]]],
                 *, pad_token_id: int, max_length: int | None = None, prefix_len: int = 0,
                 kv_memo: dict | None = None, share_context: bool = True) -> torch.Tensor:
    """Summed log-probabilities ``scores  # [row, choice]`` of each row's choice tokens after its context.

    ``contexts[r]`` are row r's prompt tokens; ``continuations[r][c]`` the tokens of choice c (rows may differ
    in their choices' tokens but not in their number). Contexts longer than ``max_length`` minus the choice are cut
    from the left. One forward pass for the batch: if every choice of every row is a single token, one sequence
    per row (the choices are read at the prompt's last position); otherwise one sequence per (row, choice).

    ``prefix_len``: the first ``prefix_len`` tokens are the same in every context (fixed few-shot shots). Their
    keys/values are computed once (kept in ``kv_memo``, a dict the caller owns and clears whenever the model or
    its mask changes) and only the rest of each sequence goes through the model -- the same numbers, a fraction of
    the work. Falls back to full sequences when the model takes no key/value cache (:mod:`fnet.compat`) or a sequence is too long.

    ``share_context``: with multi-token choices, each row's context goes through the model once and its
    keys/values are repeated for the row's choices (:func:`_score_shared_context`), instead of one full sequence
    per (row, choice) -- n_choices times less work on the context, the same numbers.
    """
    n_rows = len(contexts)
    n_choices = len(continuations[0]) if n_rows else 0
    longest = max(len(ctx) + max(len(c) for c in conts) for ctx, conts in zip(contexts, continuations))
    use_prefix = (prefix_len > 0 and _supports_prefix_cache(model)
                  and all(len(ctx) > prefix_len for ctx in contexts)
                  and (max_length is None or longest <= max_length))
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
        targets = [[(r, len(seq) - 1, [conts[c][0]]) for c in range(n_choices)]
                   for r, (seq, conts) in enumerate(zip(sequences, continuations))]
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
def _score_shared_context(model: torch.nn.Module, contexts: Sequence[list[int]],
                          continuations: Sequence[Sequence[list[int]]], pad_token_id: int,
                          max_length: int | None) -> torch.Tensor:
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
    input_ids = torch.full((n_rows, width), pad_token_id, dtype=torch.long)  # [row, pos], right padded
    context_mask = torch.zeros_like(input_ids)
    for r, ctx in enumerate(contexts):
        input_ids[r, : len(ctx)] = torch.tensor(ctx)
        context_mask[r, : len(ctx)] = 1
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
    position_ids = (torch.tensor(lengths).repeat_interleave(n_choices)[:, None] + torch.arange(rest_width)[None])
    logits = model(input_ids=rest_ids.to(device), attention_mask=attention_mask.to(device),
                   position_ids=position_ids.to(device), use_cache=True, **{cache_argument(model): cache}).logits.float()
    for r in range(n_rows):
        for c in range(n_choices):
            tokens = continuations[r][c]
            if len(tokens) < 2:
                continue
            log_probs = F.log_softmax(logits[r * n_choices + c, : len(tokens) - 1], dim=-1)  # [m - 1, vocab]
            picked = log_probs.gather(-1, torch.tensor(tokens[1:], device=log_probs.device)[:, None])
            scores[r, c] += float(picked.sum())
    return scores


def _forward_right_padded(model: torch.nn.Module, sequences: Sequence[list[int]], pad_token_id: int,
                          first_read: int, key_values: list | None = None) -> tuple[torch.Tensor, int]:
    """One forward pass of right-padded sequences (after a shared cached prefix when ``key_values`` is given).
    Returns ``(logits  # [seq, pos - offset, vocab], offset)``."""
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    n = len(sequences)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)  # [seq, pos], right padded
    attention_mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
    kwargs: dict[str, Any] = {}
    offset = 0
    if accepts(model, "logits_to_keep") and first_read > 0:
        kwargs["logits_to_keep"] = width - first_read
        offset = first_read
    if key_values is not None:
        from transformers.cache_utils import DynamicCache

        n_prefix = key_values[0][0].shape[-2]
        kwargs[cache_argument(model)] = DynamicCache(
            ddp_cache_data=[(k.expand(n, *k.shape[1:]).contiguous(), v.expand(n, *v.shape[1:]).contiguous())
                            for k, v in key_values], config=getattr(model, "config", None))
        kwargs["use_cache"] = True
        kwargs["position_ids"] = (n_prefix + torch.arange(width, device=device))[None].expand(n, -1)
        attention_mask = torch.cat([torch.ones(n, n_prefix, dtype=attention_mask.dtype), attention_mask], dim=1)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs).logits
    return logits.float(), offset


# --------------------------------------------------------------------------------------------------------------
# Generation and the label parser
# --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_greedy(model: torch.nn.Module, tokenizer: Any, contexts: Sequence[list[int]], *, max_new_tokens: int,
                    until: Sequence[str] = ("\n",), pad_token_id: int, max_length: int | None = None) -> list[str]:
    """Greedy continuations of a batch of prompts (left padding), cut at the first ``until`` string."""
    device = next(model.parameters()).device
    budget = None if max_length is None else max(max_length - max_new_tokens, 1)
    sequences = [list(c)[-budget:] if budget else list(c) for c in contexts]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)  # [row, pos], left padded
    attention_mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(sequences):
        input_ids[i, width - len(seq):] = torch.tensor(seq)
        attention_mask[i, width - len(seq):] = 1
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                            max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                            pad_token_id=pad_token_id)
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
    kept = [s for s in spans
            if not any(o is not s and o[0] <= s[0] and s[1] <= o[1] and (o[1] - o[0]) > (s[1] - s[0]) for o in spans)]
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
def window_nll(model: torch.nn.Module, windows: Sequence[list[int]], n_scored: Sequence[int], *,
               pad_token_id: int) -> torch.Tensor:
    """Summed negative log-likelihood ``nll  # [window]`` of each window's last ``n_scored`` tokens."""
    device = next(model.parameters()).device
    width = max(len(w) for w in windows)
    input_ids = torch.full((len(windows), width), pad_token_id, dtype=torch.long)  # [window, pos]
    attention_mask = torch.zeros_like(input_ids)
    target_mask = torch.zeros(len(windows), width, dtype=torch.bool)  # [window, pos]: this token is scored
    for i, (tokens, k) in enumerate(zip(windows, n_scored)):
        input_ids[i, : len(tokens)] = torch.tensor(tokens)
        attention_mask[i, : len(tokens)] = 1
        target_mask[i, len(tokens) - k: len(tokens)] = True
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float()
    log_probs = F.log_softmax(logits[:, :-1], dim=-1)  # [window, pos-1, vocab]: predicts token pos+1
    token_log_probs = log_probs.gather(-1, input_ids[:, 1:, None].to(device))[..., 0]  # [window, pos-1]
    scored = target_mask[:, 1:].to(device)
    return -(token_log_probs * scored).sum(dim=1).double().cpu()


# --------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------
def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); ``(nan, nan)`` for n = 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def class_metric(name: str, preds: torch.Tensor, targets: torch.Tensor, n_classes: int,
                 failure_class: bool = False) -> float:
    """accuracy / mcc / f1 (binary F1 of class 1) of class predictions, via torchmetrics' functional API.

    ``failure_class``: predictions may also be ``n_classes`` (a generate-mode parse failure), an extra class that
    no target has: wrong for accuracy, its own class for MCC (so constant failures give MCC 0, not -1), "not
    class 1" for binary F1."""
    from torchmetrics.functional import accuracy, f1_score

    preds, targets = torch.as_tensor(preds).long(), torch.as_tensor(targets).long()
    n_pred = n_classes + 1 if failure_class else n_classes
    if name == "accuracy":
        return float(accuracy(preds, targets, task="multiclass", num_classes=n_pred, average="micro"))
    if name == "mcc":
        from torchmetrics.functional.classification import multiclass_confusion_matrix

        return mcc_from_confusion(multiclass_confusion_matrix(preds, targets, num_classes=n_pred))
    if name == "f1":
        if n_classes != 2:
            return float(f1_score(preds, targets, task="multiclass", num_classes=n_pred, average="macro"))
        return float(f1_score((preds == 1).long(), targets, task="binary"))
    raise ValueError(f"unknown class metric {name!r}")


def mcc_from_confusion(confusion: torch.Tensor) -> float:
    """Matthews correlation from a confusion matrix ``[true, pred]`` (Gorodkin's K-class form; the usual binary MCC
    for 2 classes), **0 when undefined** (a constant prediction or a single true class), as scikit-learn and GLUE
    report it. ``torchmetrics``' MatthewsCorrCoef returns a nonzero value for a constant predictor (0.077 for all
    "acceptable" on 68 % acceptable rows), which would make a degenerate model look above chance."""
    cm = torch.as_tensor(confusion, dtype=torch.float64)
    total = cm.sum()
    correct = torch.trace(cm)
    pred_counts, true_counts = cm.sum(dim=0), cm.sum(dim=1)
    numerator = correct * total - (pred_counts * true_counts).sum()
    denominator = torch.sqrt((total**2 - (pred_counts**2).sum()) * (total**2 - (true_counts**2).sum()))
    return 0.0 if float(denominator) == 0.0 else float(numerator / denominator)


def bootstrap_interval(statistic, arrays: Sequence[np.ndarray], *, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*resampled_arrays)`` (rows resampled jointly, seeded)."""
    n = len(arrays[0])
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, n, size=n)
        values[b] = statistic(*[a[pick] for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    alpha = (1 - level) / 2
    return (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)))


def chance_levels(targets: Sequence[int], n_classes: int) -> dict[str, float]:
    """``majority`` (rate of the most frequent class among the scored rows) and ``uniform`` (1 / n_classes)."""
    targets = np.asarray(targets, dtype=np.int64)
    counts = np.bincount(targets, minlength=n_classes) if targets.size else np.zeros(n_classes)
    return {"majority": float(counts.max() / max(targets.size, 1)), "uniform": 1.0 / n_classes,
            "majority_class": int(counts.argmax()) if targets.size else -1}


def metric_chance(name: str, targets: Sequence[int], n_classes: int) -> float:
    """The score of the best trivial (constant) predictor under a metric: majority rate for accuracy, 0 for MCC,
    F1 of always answering class 1 for F1 (= 2p / (1 + p), p = rate of class 1)."""
    levels = chance_levels(targets, n_classes)
    if name == "accuracy":
        return levels["majority"]
    if name == "mcc":
        return 0.0
    if name == "f1" and n_classes == 2:
        p = float(np.mean(np.asarray(targets) == 1)) if len(targets) else 0.0
        return 2 * p / (1 + p) if p > 0 else 0.0
    return levels["uniform"]


# SQuAD v1.1 official normalisation (lowercase, strip punctuation, drop a/an/the, collapse whitespace)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_scores(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """Per-question (EM, F1) in [0, 1], the max over the gold answers, with the official normalisation. (Kept for
    per-example CIs; the reported totals come from ``torchmetrics.text.SQuAD``, which implements the same.)"""
    from collections import Counter

    def f1(pred: str, gold: str) -> float:
        p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
        common = sum((Counter(p) & Counter(g)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(g)
        return 2 * precision * recall / (precision + recall)

    em = max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers)
    return em, max(f1(prediction, a) for a in answers)
