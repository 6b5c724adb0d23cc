"""Extractive question answering (SQuAD) on a causal LM: a start/end span head, span decoding and EM/F1.

The input is the question, then a window of the context (:class:`fnet.lit.datamodules.SquadDataModule`), so each
context token's final hidden state has seen the question. A linear head gives every token a start and an end
logit. Decoding (:func:`best_spans`) picks, per window, the span ``start <= end < start + max_answer_length``
over **context tokens only** with the highest ``start_logit + end_logit``; an example's answer is the best span
over its windows, cut from the context string with the tokenizer's character offsets (:func:`span_text`).
Scores are SQuAD v1.1's exact match and F1 as fractions in [0, 1] (like every fnet result), with the official
normalisation (lowercase, no punctuation, no articles a/an/the, collapsed whitespace) of
:func:`fnet.scoring.squad_scores`; per question the maximum over the gold answers counts.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fnet import scoring
from fnet.lit.classification import CausalLMTaskModule
from fnet.models import LoadedModel

log = logging.getLogger(__name__)

NEG_INF = -1e4  # logit given to positions that cannot start or end an answer (fits fp16/bf16)


def best_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    context_mask: torch.Tensor,
    max_answer_length: int = 30,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best span of every window.

    Parameters
    ----------
    start_logits, end_logits
        ``[batch, seq]``.
    context_mask
        ``[batch, seq]`` bool, True at context tokens (not question, separator or padding).
    max_answer_length
        longest answer in tokens.

    Returns ``start [batch]``, ``end [batch]`` (token indices, inclusive) and ``score [batch]`` =
    ``start_logit + end_logit`` (``-inf`` where a window has no context token)."""
    seq = start_logits.shape[-1]
    scores = start_logits.float()[:, :, None] + end_logits.float()[:, None, :]  # [batch, start, end]
    index = torch.arange(seq, device=start_logits.device)
    length = index[None, :] - index[:, None]  # [start, end] -> end - start
    allowed = (length >= 0) & (length < max_answer_length)  # [start, end]
    context = context_mask.bool()
    allowed = allowed[None] & context[:, :, None] & context[:, None, :]  # [batch, start, end]
    scores = scores.masked_fill(~allowed, float("-inf"))
    best, flat = scores.flatten(1).max(dim=-1)
    return flat // seq, flat % seq, best


def span_text(context: str, offsets: torch.Tensor | Sequence[Sequence[int]], start: int, end: int) -> str:
    """The context substring from token ``start``'s first character to token ``end``'s last (offsets
    ``[seq, 2]`` are character ``[begin, end)`` pairs into ``context``), stripped of surrounding spaces."""
    begin = int(offsets[start][0])
    stop = int(offsets[end][1])
    if begin < 0 or stop < begin:
        return ""
    return context[begin:stop].strip()


def squad_metrics(predictions: Mapping[str, str], examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """SQuAD v1.1 ``exact_match`` and ``f1`` in [0, 1] of ``predictions`` (id -> text) against ``examples`` (dicts
    with ``id`` and ``answers``: the gold texts): per question the max over its gold answers, with the official
    normalisation (:func:`fnet.scoring.squad_scores`, the evaluation's metric), then the mean. ``per_example``
    lists ``(em, f1)`` in the order of ``examples``."""
    per_example = [
        scoring.squad_scores(predictions.get(e["id"], ""), e["answers"]) if e["answers"] else (0.0, 0.0)
        for e in examples
    ]
    n = len(per_example)
    return {
        "exact_match": sum(p[0] for p in per_example) / n if n else float("nan"),
        "f1": sum(p[1] for p in per_example) / n if n else float("nan"),
        "per_example": per_example,
    }


def qa_result(task_name: str | None, scores: Mapping[str, Any], bootstrap: int = 1000, seed: int = 0) -> dict:
    """The result row evaluate.py reports (zero-shot layout): EM and F1 with bootstrap 95 % CIs, chance 0."""
    per_example = np.asarray(scores["per_example"], dtype=np.float64).reshape(-1, 2)
    metrics = {}
    for column, name in enumerate(("exact_match", "f1")):
        lo, hi = scoring.bootstrap_interval(np.mean, [per_example[:, column]], n_boot=bootstrap, seed=seed)
        metrics[name] = {
            "value": float(scores[name]),
            "ci_low": lo,
            "ci_high": hi,
            "ci_method": "bootstrap",
            "chance": 0.0,
        }
    primary = metrics["f1"]  # SQuAD's primary metric here, as in conf/task/squad.yaml (the paper reports F1)
    return {
        "task": task_name,
        "n": int(per_example.shape[0]),
        "metric": "f1",
        "scoring": "finetuned_span_head",
        "metrics": metrics,
        "chance": {"majority": 0.0, "uniform": 0.0},
        "score": primary["value"],
        "ci": [primary["ci_low"], primary["ci_high"]],
        "above_chance": bool(primary["ci_low"] > 0.0),
    }


class ExtractiveQAModule(CausalLMTaskModule):
    """Start/end span head on a causal LM (``self.model``), trained with the mean of the start and end
    cross-entropies over context tokens; logs ``{stage}/loss``, ``{stage}/exact_match`` and ``{stage}/f1``.

    Batches (from :class:`~fnet.lit.datamodules.SquadDataModule`): ``input_ids``, ``attention_mask``,
    ``offsets [batch, seq, 2]`` (-1 outside the context), ``start_positions``/``end_positions`` (-1 when the
    window lacks the answer) and, for evaluation, ``examples`` (id, context, answers of each window's example).
    After an evaluation epoch ``self.predictions[stage]`` maps example id -> predicted text; after a test epoch
    ``self.results`` is the result row (:func:`qa_result`) and ``self.outputs`` the per-question predictions.
    """

    def __init__(
        self,
        model: str | LoadedModel = "tiny:gpt2",
        max_answer_length: int = 30,
        task_name: str | None = "squad",
        bootstrap: int = 1000,
        model_kwargs: Mapping[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        trainable_layers: int | None = None,
        checkpoint_frozen: bool = True,
        lora: Mapping[str, Any] | None = None,
    ):
        super().__init__(
            model=model,
            model_kwargs=model_kwargs,
            optimizer=optimizer,
            scheduler=scheduler,
            trainable_layers=trainable_layers,
            checkpoint_frozen=checkpoint_frozen,
            lora=lora,
        )
        self.max_answer_length = int(max_answer_length)
        self.task_name = task_name
        self.metric_names = ["exact_match", "f1"]
        self.qa_outputs = nn.Linear(self.dims["d_model"], 2)
        nn.init.normal_(self.qa_outputs.weight, std=0.02)
        nn.init.zeros_(self.qa_outputs.bias)
        self._candidates: dict[str, tuple[float, str]] = {}
        self._examples: dict[str, dict] = {}
        self.predictions: dict[str, dict[str, str]] = {}
        self.bootstrap = int(bootstrap)
        self.outputs: list[dict] = []
        self.results: dict[str, Any] | None = None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lower_hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ``start_logits``, ``end_logits`` ``[batch, seq]`` (float32)."""
        hidden = self.hidden_states(input_ids, attention_mask, lower_hidden)  # [batch, seq, d_model]
        logits = self.qa_outputs(hidden.to(self.qa_outputs.weight.dtype)).float()  # [batch, seq, 2]
        return logits[..., 0], logits[..., 1]

    @staticmethod
    def context_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return batch["offsets"][..., 0] >= 0  # [batch, seq]

    def _loss(self, start_logits, end_logits, batch) -> torch.Tensor | None:
        starts, ends = batch["start_positions"], batch["end_positions"]
        has_answer = starts >= 0
        if not bool(has_answer.any()):
            return None
        mask = self.context_mask(batch)
        start_logits = start_logits.masked_fill(~mask, NEG_INF)[has_answer]
        end_logits = end_logits.masked_fill(~mask, NEG_INF)[has_answer]
        return (F.cross_entropy(start_logits, starts[has_answer]) + F.cross_entropy(end_logits, ends[has_answer])) / 2

    def training_step(self, batch, batch_idx):
        start_logits, end_logits = self(batch["input_ids"], batch.get("attention_mask"), batch.get("lower_hidden"))
        loss = self._loss(start_logits, end_logits, batch)
        if loss is None:  # cannot happen with SquadDataModule (training windows contain their answer)
            loss = (start_logits.sum() + end_logits.sum()) * 0.0
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    # ---- evaluation ---------------------------------------------------------------------------------------------
    def _eval_step(self, batch, stage: str) -> None:
        start_logits, end_logits = self(batch["input_ids"], batch.get("attention_mask"), batch.get("lower_hidden"))
        loss = self._loss(start_logits, end_logits, batch)
        if loss is not None:
            self.log(
                f"{stage}/loss",
                loss,
                on_step=False,
                on_epoch=True,
                batch_size=int((batch["start_positions"] >= 0).sum()),
                sync_dist=True,
            )
        starts, ends, scores = best_spans(start_logits, end_logits, self.context_mask(batch), self.max_answer_length)
        offsets = batch["offsets"].cpu()
        for i, example in enumerate(batch["examples"]):
            self._examples[example["id"]] = example
            score = float(scores[i])
            text = (
                span_text(example["context"], offsets[i], int(starts[i]), int(ends[i])) if score > float("-inf") else ""
            )
            best = self._candidates.get(example["id"])
            if best is None or score > best[0]:
                self._candidates[example["id"]] = (score, text)

    def _eval_epoch_end(self, stage: str) -> None:
        candidates, examples = self._candidates, self._examples
        self._candidates, self._examples = {}, {}
        if self.trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, (candidates, examples))
            candidates, examples = {}, {}
            for cands, exs in gathered:  # an example's windows may sit on different ranks: keep the best span
                examples.update(exs)
                for key, value in cands.items():
                    if key not in candidates or value[0] > candidates[key][0]:
                        candidates[key] = value
        predictions = {key: text for key, (_, text) in candidates.items()}
        ordered = sorted(examples.values(), key=lambda e: e.get("index", 0))
        scores = squad_metrics(predictions, ordered)
        self.predictions[stage] = predictions
        if stage == "test" and ordered:
            self.results = qa_result(self.task_name, scores, bootstrap=self.bootstrap)
            self.outputs = [
                {
                    "index": e.get("index", i),
                    "id": e["id"],
                    "prediction": predictions.get(e["id"], ""),
                    "answers": e["answers"],
                    "em": em,
                    "f1": f1,
                }
                for i, (e, (em, f1)) in enumerate(zip(ordered, scores["per_example"]))
            ]
        for name in ("exact_match", "f1"):
            self.log(f"{stage}/{name}", scores[name], on_step=False, on_epoch=True, prog_bar=True, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._candidates, self._examples = {}, {}

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._candidates, self._examples = {}, {}
        self.outputs, self.results = [], None

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        start_logits, end_logits = self(batch["input_ids"], batch.get("attention_mask"), batch.get("lower_hidden"))
        starts, ends, scores = best_spans(start_logits, end_logits, self.context_mask(batch), self.max_answer_length)
        offsets = batch["offsets"].cpu()
        return [
            {
                "id": ex["id"],
                "score": float(scores[i]),
                "text": span_text(ex["context"], offsets[i], int(starts[i]), int(ends[i])),
            }
            for i, ex in enumerate(batch["examples"])
        ]

    def fnet_checkpoint_info(self) -> dict[str, Any]:
        return dict(
            super().fnet_checkpoint_info(),
            task_name=self.task_name,
            metrics=self.metric_names,
            head="qa_outputs",
            max_answer_length=self.max_answer_length,
        )
