"""Record a causal LM's MLP signal for every layer, per text, as ``acts  # [tokens, n_layers * width]``.

Hooks come from the one primitive :func:`fnet.hooks.trace_signal`: the output (``mlp_out``) or the input
(``mlp_act``) of each layer's down projection, as found by :mod:`fnet.models.discovery`, delivered ``[batch, seq,
width]`` in every layout; each hook object owns its layer index.

Texts are batched with padding (sorted by length to waste little), padded positions are dropped by the
attention mask before anything is stored, and texts are truncated to ``max_length`` tokens. The forward pass
stops right after the last layer's signal is read (nothing downstream -- final norm, LM head -- is needed).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fnet.batching import right_pad
from fnet.hooks import trace_signal
from fnet.models import LoadedModel, check_signal
from fnet.recording.store import ActivationStore

log = logging.getLogger(__name__)

__all__ = ["Recorder", "record_texts", "signal_hooks", "stack_arrays", "tokenize_texts"]


@contextlib.contextmanager
def signal_hooks(
    model: torch.nn.Module,
    signal: str,
    on_signal: Callable[[int, torch.Tensor], None],
    *,
    spec=None,
    stop_after_last: bool = False,
):
    """Call ``on_signal(layer, hidden  # [batch, seq, width])`` with each layer's signal during forward passes
    inside the context (a read-only :func:`fnet.hooks.trace_signal`; ``stop_after_last`` ends the pass after the
    last layer and the context swallows the stop). Hooks are removed on exit, also on error."""
    with trace_signal(model, check_signal(signal), read=on_signal, stop=stop_after_last, spec=spec) as hooks:
        yield hooks


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated. Empty texts are an error naming their index, and so is no text at all.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        The model's tokenizer (special tokens added).
    texts : Sequence of str
        The texts, none empty.
    max_length : int
        Most tokens kept per text.

    Returns
    -------
    list of list of int
        Token ids per text, in input order.
    """
    if not texts:
        raise ValueError("no texts to record: got an empty list; give at least one non-empty text")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {index} is empty; every stimulus must contain text")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)
    ids = [list(x) for x in encoded["input_ids"]]
    for index, row in enumerate(ids):
        if not row:
            raise ValueError(f"text {index} has no tokens after tokenization")
    return ids


class Recorder:
    """Records one signal of every layer for a list of texts.

    ``iter_record(texts)`` yields ``(index, acts)`` with ``acts  # [tokens_i, n_layers*width]`` (CPU, ``dtype``)
    in length-sorted batch order; ``record`` returns them in input order; ``record_to_store`` writes them to an
    :class:`ActivationStore`, skipping texts already there (resume).

    Parameters
    ----------
    lm : LoadedModel
        The model to record.
    signal : str
        ``"mlp_out"`` (default) or ``"mlp_act"``.
    max_length : int
        Most tokens per text (default 1024; lowered to the model's positions when it has fewer).
    batch_size : int
        Texts per forward pass (default 4).
    dtype : torch.dtype
        dtype of the recorded activations (default ``torch.float32``).
    progress : bool
        Show a progress bar over tokens (default True).
    """

    def __init__(
        self,
        lm: LoadedModel,
        signal: str = "mlp_out",
        *,
        max_length: int = 1024,
        batch_size: int = 4,
        dtype: torch.dtype = torch.float32,
        progress: bool = True,
    ):
        self.lm = lm
        self.signal = check_signal(signal)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.progress = progress
        if self.batch_size < 1 or self.max_length < 1:
            raise ValueError(f"batch_size and max_length must be >= 1, got {batch_size}, {max_length}")
        limit = lm.max_positions
        if limit and self.max_length > limit:
            log.info(
                "max_length %d exceeds %s's %d positions; truncating texts to %d tokens",
                self.max_length,
                lm.name,
                limit,
                limit,
            )
            self.max_length = limit

    @property
    def n_layers(self) -> int:
        return self.lm.n_layers

    @property
    def width(self) -> int:
        return self.lm.width(self.signal)

    @torch.no_grad()
    def record_batch(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """Activations of one batch of token-id lists: one ``[len(row), n_layers*width]`` tensor per row."""
        input_ids, attention_mask = right_pad(rows, self.lm.tokenizer.pad_token_id)
        device = self.lm.device
        width, n_layers = self.width, self.n_layers
        # acts_padded: [batch, seq, n_layers*width] on CPU, layer-major columns; filled layer by layer by the hooks
        acts_padded = torch.empty((len(rows), input_ids.shape[1], n_layers * width), dtype=self.dtype)

        def on_signal(layer: int, hidden: torch.Tensor) -> None:  # hidden: [batch, seq, width]
            acts_padded[:, :, layer * width : (layer + 1) * width] = hidden.detach().to("cpu", self.dtype)

        with trace_signal(self.lm.model, self.signal, read=on_signal, stop=True, spec=self.lm.arch):
            self.lm.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
        return [acts_padded[b, : len(row)].clone() for b, row in enumerate(rows)]

    def iter_record(
        self, texts: Sequence[str], skip: Sequence[bool] | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        token_ids = tokenize_texts(self.lm.tokenizer, texts, self.max_length)
        todo = [i for i in range(len(texts)) if not (skip and skip[i])]
        order = sorted(todo, key=lambda i: -len(token_ids[i]))  # longest first: similar lengths share a batch
        total_tokens = sum(len(token_ids[i]) for i in order)
        with tqdm(total=total_tokens, unit="tok", desc=f"record {self.signal}", disable=not self.progress) as bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                for index, acts in zip(batch, self.record_batch([token_ids[i] for i in batch])):
                    bar.update(acts.shape[0])
                    yield index, acts

    def record(self, texts: Sequence[str]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(texts)
        for index, acts in self.iter_record(texts):
            out[index] = acts
        return out  # type: ignore[return-value]

    def open_store(self, root, extra: dict | None = None) -> ActivationStore:
        return ActivationStore.open(
            root,
            model=self.lm.name,
            signal=self.signal,
            n_layers=self.n_layers,
            width=self.width,
            max_length=self.max_length,
            extra=extra,
        )

    def record_to_store(
        self, texts: Sequence[str], store: ActivationStore, ids: Sequence[str] | None = None
    ) -> ActivationStore:
        """Record texts not yet in ``store`` and write each one as soon as its batch is done. A killed run
        resumes: finished texts are skipped, nothing is recorded twice."""
        ids = list(ids) if ids is not None else [f"text{i:05d}" for i in range(len(texts))]
        if len(ids) != len(texts) or len(set(ids)) != len(ids):
            raise ValueError("ids must be unique and as many as texts")
        done = [store.has(i, t) for i, t in zip(ids, texts)]
        if any(done):
            log.info("activation store %s: %d/%d texts already recorded, resuming", store.root, sum(done), len(ids))
        for index, acts in self.iter_record(texts, skip=done):
            store.add(ids[index], texts[index], acts.numpy())
        return store


def record_texts(
    lm: LoadedModel,
    texts: Sequence[str],
    signal: str = "mlp_out",
    max_length: int = 1024,
    batch_size: int = 4,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Convenience: ``[tokens_i, n_layers*width]`` float32 activations per text, in input order.

    Parameters
    ----------
    lm : LoadedModel
        The model to record.
    texts : Sequence of str
        The texts.
    signal : str
        ``"mlp_out"`` (default) or ``"mlp_act"``.
    max_length : int
        Most tokens per text (default 1024).
    batch_size : int
        Texts per forward pass (default 4).
    progress : bool
        Show a progress bar (default False).

    Returns
    -------
    list of torch.Tensor
        One ``[tokens_i, n_layers*width]`` tensor per text.
    """
    return Recorder(lm, signal, max_length=max_length, batch_size=batch_size, progress=progress).record(texts)


def stack_arrays(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Texts stacked along tokens (for small data; large group decompositions stream the list instead).

    Parameters
    ----------
    arrays : Sequence of ndarray
        Per-text arrays ``[tokens_i, n_layers*width]``.

    Returns
    -------
    ndarray [sum(tokens_i), n_layers*width]
        The arrays concatenated along tokens.
    """
    return np.concatenate([np.asarray(a) for a in arrays], axis=0)
