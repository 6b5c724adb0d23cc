"""Prompts for scoring a causal LM on a task: the prompt text (few-shot shots, optional chat template) and its
tokens (:class:`PromptBuilder`, :class:`Request`).

Split out of :mod:`fnet.scoring` (which re-exports these names).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from fnet.scoring.tasks import TaskSpec

__all__ = [
    "CONTENT_FREE",
    "PromptBuilder",
    "Request",
    "sample_shots",
    "use_chat_template",
    "common_prefix_len",
    "align_prefixes",
]

CONTENT_FREE = "N/A"


class PromptFields(dict):
    def __missing__(self, key: str) -> str:  # a template field the row lacks renders empty
        return ""


def use_chat_template(task: TaskSpec, tokenizer: Any) -> bool:
    """``task.chat_template``: true / false, or ``auto`` = the tokenizer has a chat template (instruct models).

    Parameters
    ----------
    task : TaskSpec
        The task.
    tokenizer : Any
        The model's tokenizer.

    Returns
    -------
    bool
        Whether prompts are chat-formatted.
    """
    if task.chat_template == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    if task.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"task {task.name!r}: chat_template=true but the tokenizer has no chat template")
    return bool(task.chat_template)


def sample_shots(
    pool: Sequence[Mapping],
    k: int,
    rng: np.random.Generator,
    *,
    balanced: bool = False,
    n_classes: int = 0,
    exclude_index: int | None = None,
) -> list[Mapping]:
    """``k`` rows of ``pool`` without replacement. ``balanced``: as equal a count per class as the pool allows
    (remainder classes chosen at random), then shuffled. ``exclude_index``: a row index never drawn (used when
    shots come from the scored split itself).

    Parameters
    ----------
    pool : Sequence of Mapping
        The few-shot rows (with ``index`` and, when balanced, ``label``).
    k : int
        Shots wanted (fewer when the pool is smaller).
    rng : numpy.random.Generator
        The draw's generator.
    balanced : bool
        Balance the classes (default False).
    n_classes : int
        Number of classes; balancing needs at least 2 (default 0).
    exclude_index : int, optional
        A row index never drawn.

    Returns
    -------
    list of Mapping
        The shots.
    """
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

    Parameters
    ----------
    task : TaskSpec
        The task.
    tokenizer : Any
        The model's tokenizer.
    fewshot_pool : Sequence of Mapping, optional
        The rows shots are drawn from (at least ``task.num_fewshot``).
    same_split : bool
        The pool is the scored split itself: a row is never its own shot (default False).
    """

    def __init__(
        self, task: TaskSpec, tokenizer: Any, fewshot_pool: Sequence[Mapping] | None = None, same_split: bool = False
    ):
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
            raise ValueError(
                f"task {task.name!r}: {task.num_fewshot} shots requested but the few-shot pool has "
                f"{len(self.pool)} rows"
            )
        self._fixed: list[Mapping] | None = None
        self._prefix_cache: tuple[str, list[int]] | None = None
        self._warned_boundary: set[str] = set()

    # ----------------------------------------------------------------------------------------------------------
    def shots_for(self, row: Mapping) -> list[Mapping]:
        k = self.task.num_fewshot
        if not k:
            return []
        if self.sampling == "fixed":
            if self._fixed is None:
                self._fixed = sample_shots(
                    self.pool,
                    k,
                    np.random.default_rng(self.seed),
                    balanced=self.balanced,
                    n_classes=self.task.n_choices,
                )
            return self._fixed
        rng = np.random.default_rng([self.seed, int(row["index"])])
        return sample_shots(
            self.pool,
            k,
            rng,
            balanced=self.balanced,
            n_classes=self.task.n_choices,
            exclude_index=row["index"] if self.same_split else None,
        )

    def question(self, row: Mapping) -> str:
        return self.task.prompt["template"].format_map(PromptFields({k: v for k, v in row.items() if v is not None}))

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
                messages += [
                    {"role": "user", "content": self.question(shot)},
                    {"role": "assistant", "content": self.answer(shot)},
                ]
            messages.append({"role": "user", "content": self.question(row)})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        sep = self.task.prompt.get("fewshot_delimiter", "\n\n")
        parts = [
            self.question(shot) + self.task.prompt.get("target_delimiter", " ") + self.answer(shot) for shot in shots
        ]
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
        """``text`` encoded on its own (no special tokens). Not how choices are scored: see :meth:`choice_tokens`."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def choice_tokens(self, context: str, context_tokens: Sequence[int]) -> list[list[int]]:
        """The tokens of each choice after ``context``: the joint encoding of ``context + choice`` minus the
        context's own tokens (lm-evaluation-harness's rule).

        Encoding a choice on its own is wrong for SentencePiece tokenisers that mark the start of a text (ChatGLM3,
        Gemma, Llama 2: ``" positive"`` alone encodes as ``["▁", "▁positive"]`` or ``["▁▁positive"]``, but after a
        context it is ``["▁positive"]``), so the scored tokens would not be the ones the model sees in the prompt.
        When the context's tokens are not a prefix of the joint encoding (the tokeniser merged across the
        boundary), the harness's rule still applies, and a warning (once per choice) says the scored sequence is
        not the joint encoding."""
        context_tokens = list(context_tokens)
        out = []
        for text in self.continuations():
            whole = self.encode_context(context + text)
            tokens = whole[len(context_tokens) :]
            if not tokens:
                raise ValueError(
                    f"task {self.task.name!r}: choice {text!r} adds no tokens after the prompt "
                    f"{context[-40:]!r}; choices: {self.continuations()}"
                )
            if whole[: len(context_tokens)] != context_tokens and text not in self._warned_boundary:
                self._warned_boundary.add(text)
                warnings.warn(
                    f"task {self.task.name!r}: the tokeniser merges choice {text!r} with the end of the "
                    f"prompt {context[-20:]!r}; scoring the prompt's own tokens followed by the joint "
                    "encoding's remainder (lm-evaluation-harness's rule)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            out.append(tokens)
        return out

    @property
    def shares_prefix(self) -> bool:
        """Fixed shots in a plain prompt: every row's prompt starts with the same shots block, so (in the usual
        case) the same leading tokens, whose keys/values the scorer computes once."""
        return self.sampling == "fixed" and self.task.num_fewshot > 0 and not self.chat

    def _prefix(self) -> tuple[str, list[int]]:
        """The fixed shots block (text, and its tokens encoded alone)."""
        if getattr(self, "_prefix_cache", None) is None:
            sep = self.task.prompt.get("fewshot_delimiter", "\n\n")
            shots = self.shots_for({"index": -1})
            text = (
                sep.join(
                    self.question(shot) + self.task.prompt.get("target_delimiter", " ") + self.answer(shot)
                    for shot in shots
                )
                + sep
            )
            self._prefix_cache = (text, self.encode_context(text))
        return self._prefix_cache

    def request(self, row: Mapping, calibrate: bool = False) -> "Request":
        """Row -> :class:`Request`. The prompt is always encoded as a whole (shots and question together), so its
        tokens are the ones a tokeniser gives the full text; with fixed shots, ``prefix_len`` is the length of the
        longest common prefix of the shots block's own tokens and this prompt's tokens (the whole block when the
        boundary does not merge, e.g. SmolLM2 encodes ``"\n\n"`` alone but ``"\n" + "Review"`` in the prompt).
        :func:`align_prefixes` then gives every request of a task the shortest of these, a prefix of them all."""
        shots = self.shots_for(row)
        context = self.context(row, shots)
        tokens = self.encode_context(context)
        continuations = self.choice_tokens(context, tokens)
        cf = cf_continuations = None
        if calibrate:
            cf_context = self.context(self.content_free(row), shots)
            cf = self.encode_context(cf_context)
            cf_continuations = self.choice_tokens(cf_context, cf)
        prefix_len = 0
        if self.shares_prefix:
            prefix_len = common_prefix_len([self._prefix()[1], tokens] + ([cf] if cf is not None else []))
        return Request(
            index=int(row["index"]),
            label=int(row.get("label", -1)),
            context=context,
            context_tokens=tokens,
            continuation_tokens=continuations,
            content_free_tokens=cf,
            content_free_continuation_tokens=cf_continuations,
            row=dict(row),
            prefix_len=prefix_len,
        )


def common_prefix_len(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences (0 for none).

    Parameters
    ----------
    sequences : Sequence of Sequence of int
        Token sequences.

    Returns
    -------
    int
        The prefix length.
    """
    if not sequences:
        return 0
    n = min(len(s) for s in sequences)
    first = sequences[0]
    for i in range(n):
        if any(s[i] != first[i] for s in sequences[1:]):
            return i
    return n


def align_prefixes(requests: Sequence["Request"]) -> int:
    """Give every request the same ``prefix_len``: the shortest of theirs, a token prefix of every prompt (and of
    every content-free prompt), so one set of prefix keys/values serves the whole task. Returns it.

    Parameters
    ----------
    requests : Sequence of Request
        The task's requests, changed in place.

    Returns
    -------
    int
        The shared ``prefix_len``.
    """
    if not requests:
        return 0
    shared = min(r.prefix_len for r in requests)
    for r in requests:
        r.prefix_len = shared
    return shared


@dataclass
class Request:
    """One scored row, tokenised. ``continuation_tokens[i]`` are the tokens of choice i (empty list for
    generation tasks); ``content_free_tokens`` the calibration prompt (or None); the first ``prefix_len`` context
    tokens are the same for every row (fixed shots), so their keys/values can be computed once. Choice tokens
    depend on the prompt they follow (:meth:`PromptBuilder.choice_tokens`), hence
    ``content_free_continuation_tokens`` for the calibration prompt.

    Parameters
    ----------
    index : int
        The row's index in its split.
    label : int
        The row's label (-1 when it has none).
    context : str
        The prompt text.
    context_tokens : list of int
        The prompt's tokens.
    continuation_tokens : list of list of int
        Tokens of each choice (empty for generation tasks).
    content_free_tokens : list of int, optional
        Tokens of the calibration prompt.
    content_free_continuation_tokens : list of list of int, optional
        Tokens of each choice after the calibration prompt.
    row : dict
        The task row.
    prefix_len : int
        Leading tokens shared by every request of the task (default 0).
    """

    index: int
    label: int
    context: str
    context_tokens: list[int]
    continuation_tokens: list[list[int]] = field(default_factory=list)
    content_free_tokens: list[int] | None = None
    content_free_continuation_tokens: list[list[int]] | None = None  # the choices after the calibration prompt
    row: dict = field(default_factory=dict)
    prefix_len: int = 0  # leading tokens shared by every request of the task (fixed shots)
