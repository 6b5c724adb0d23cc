"""Zero-/few-shot evaluation of a causal LM as a Lightning module, so ``trainer.validate``/``trainer.test`` run the
scoring batched, with a progress bar, under any callback (the mask callback hooks ``pl_module.model``), on one
or many devices.

* :class:`~fnet.lit.zeroshot_data.ZeroShotDataModule` (:mod:`fnet.lit.zeroshot_data`) -- the scored rows of a
  task (``limit``: a seeded subsample), tokenised into :class:`fnet.scoring.Request`\\ s, sorted by length so
  batches pad little; under DDP each example goes to exactly one process
  (:class:`~fnet.lit.zeroshot_data.UnpaddedDistributedSampler`: no duplicated rows, unlike ``DistributedSampler``'s
  padding).
* :class:`ZeroShotModule` -- ``self.model`` is the causal LM; each step scores a batch (loglik / generate /
  perplexity, see :mod:`fnet.scoring`) and updates torchmetrics metrics, whose states Lightning/torchmetrics sync
  across processes at epoch end. ``self.results`` then holds the task's result row (metrics, 95 % CIs, chance
  levels, ``above_chance``), identical on every rank.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torchmetrics import CatMetric, Metric
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from fnet import scoring
from fnet.scoring import Request
from fnet.scoring.tasks import TaskSpec, get_task

log = logging.getLogger(__name__)

__all__ = ["ZeroShotModule", "ExampleStore"]


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------
class ExampleStore(Metric):
    """Per-example outcomes (index, prediction, target, up to two values, parse failure), gathered across
    processes at compute time and returned sorted by index -- the input of CIs and chance levels, identical
    whatever the number of processes."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("index", "pred", "target", "value_a", "value_b", "failed"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index, pred, target, value_a=None, value_b=None, failed=None) -> None:  # noqa: D401
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        n = index.numel()
        zeros = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.index.append(index)
        self.pred.append(torch.as_tensor(pred, dtype=torch.long, device=self.device))
        self.target.append(torch.as_tensor(target, dtype=torch.long, device=self.device))
        self.value_a.append(
            zeros if value_a is None else torch.as_tensor(value_a, dtype=torch.float64, device=self.device)
        )
        self.value_b.append(
            zeros if value_b is None else torch.as_tensor(value_b, dtype=torch.float64, device=self.device)
        )
        self.failed.append(
            torch.zeros(n, dtype=torch.long, device=self.device)
            if failed is None
            else torch.as_tensor(failed, dtype=torch.long, device=self.device)
        )

    def compute(self) -> dict[str, np.ndarray]:
        def cat(state):
            if isinstance(state, list):
                return torch.cat(state) if state else torch.zeros(0)
            return state

        index = cat(self.index).cpu()
        order = torch.argsort(index)
        out = {"index": index[order].numpy()}
        for name in ("pred", "target", "value_a", "value_b", "failed"):
            out[name] = cat(getattr(self, name)).cpu()[order].numpy()
        return out


class ZeroShotModule(pl.LightningModule):
    """Scores a causal LM on a task under ``trainer.validate``/``test`` (see module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        The causal LM (``self.model``; the mask callback hooks it).
    tokenizer : transformers tokenizer
        Its tokenizer.
    task : str, mapping or TaskSpec
        Task name / config / :class:`~fnet.scoring.tasks.TaskSpec`.
    max_length : int, optional
        Token budget of a sequence (default: the model's ``max_position_embeddings``/``n_positions``).
    bootstrap : int
        Resamples for bootstrap CIs (MCC, F1, SQuAD, perplexity); accuracy uses the Wilson interval.
    ci_seed : int
        Seed of the bootstrap.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        task: Any,
        *,
        max_length: int | None = None,
        bootstrap: int = 1000,
        ci_seed: int = 0,
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.task: TaskSpec = get_task(task)
        self.max_length = max_length or _model_max_length(model)
        self.bootstrap = int(bootstrap)
        self.ci_seed = int(ci_seed)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad if pad is not None else tokenizer.eos_token_id)
        self.metrics = self._make_metrics()
        self.store = ExampleStore()
        self.results: dict | None = None
        self.outputs: list[dict] = []  # this process's per-example records (texts included), for predictions.jsonl
        # shared-prefix keys/values and content-free scores; computed under the current mask, so cleared at the
        # start of every evaluation epoch (a mask callback enters before it)
        self._kv_memo: dict = {}
        self._cf_memo: dict = {}

    def _make_metrics(self) -> torch.nn.ModuleDict:
        task = self.task
        if task.type == "multiple_choice":
            n = task.n_choices
            # generate-mode parse failures are predicted as an extra class n (see scoring.class_metric)
            n_pred = n + 1 if task.scoring == "generate" else n
            made: dict[str, Metric] = {}
            for name in task.metric:
                if name == "accuracy":
                    made[name] = MulticlassAccuracy(num_classes=n_pred, average="micro")
                elif name == "mcc":  # MCC from the (synced) confusion matrix: see scoring.mcc_from_confusion
                    made[name] = MulticlassConfusionMatrix(num_classes=n_pred)
                elif name == "f1":  # GLUE: binary F1 of class 1; fed (pred == 1)
                    made[name] = BinaryF1Score() if n == 2 else MulticlassF1Score(num_classes=n_pred, average="macro")
            return torch.nn.ModuleDict(made)
        if task.type == "generation":
            # SQuAD totals are the means of the per-question scores in self.store (synced across processes), not
            # torchmetrics' SQuAD: its F1 is 1 where gold and prediction both normalise to empty (three dev answers
            # are "."), the official v1.1 script's is 0 -- and the CIs are bootstrapped from the same values
            return torch.nn.ModuleDict()
        return torch.nn.ModuleDict({"nll": CatMetric(), "n_tokens": CatMetric()})

    def _update_class_metrics(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        for name, metric in self.metrics.items():
            if name == "f1" and self.task.n_choices == 2:
                metric.update((preds == 1).long(), targets)
            else:
                metric.update(preds, targets)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    # ----------------------------------------------------------------------------------------------------------
    def score_batch(self, batch: list) -> list[dict]:
        """Score one batch; returns one record per example (and updates the metrics)."""
        task = self.task
        if task.type == "perplexity":
            return self._score_perplexity(batch)
        if task.type == "generation":
            return self._score_squad(batch)
        if task.scoring == "loglik":
            return self._score_loglik(batch)
        return self._score_generate_choice(batch)

    def _score_loglik(self, batch: list[Request]) -> list[dict]:
        prefix_len = batch[0].prefix_len if all(r.prefix_len == batch[0].prefix_len for r in batch) else 0
        scores = scoring.score_loglik(
            self.model,
            [r.context_tokens for r in batch],
            [r.continuation_tokens for r in batch],
            pad_token_id=self.pad_token_id,
            max_length=self.max_length,
            prefix_len=prefix_len,
            kv_memo=self._kv_memo,
        )  # [row, choice]
        if self.task.calibrate:
            scores = scores - self._content_free_scores(batch, prefix_len)
        preds = scores.argmax(dim=1)
        return self._update_class(batch, preds, [None] * len(batch), scores=scores)

    def _content_free_scores(self, batch: list[Request], prefix_len: int) -> torch.Tensor:
        """Choice scores of each row's content-free prompt; identical prompts (fixed shots) are scored once."""

        def key(r: Request) -> tuple:
            return (tuple(r.content_free_tokens), tuple(tuple(c) for c in self._cf_choices(r)))

        todo = [r for r in batch if key(r) not in self._cf_memo]
        unique = list({key(r): r for r in todo}.values())
        if unique:
            cf = scoring.score_loglik(
                self.model,
                [r.content_free_tokens for r in unique],
                [self._cf_choices(r) for r in unique],
                pad_token_id=self.pad_token_id,
                max_length=self.max_length,
                prefix_len=prefix_len,
                kv_memo=self._kv_memo,
            )
            for r, row_scores in zip(unique, cf):
                self._cf_memo[key(r)] = row_scores
        return torch.stack([self._cf_memo[key(r)] for r in batch])

    @staticmethod
    def _cf_choices(r: Request) -> list[list[int]]:
        """The choices' tokens after the content-free prompt (the row's own when a Request predates them)."""
        return r.content_free_continuation_tokens or r.continuation_tokens

    def _score_generate_choice(self, batch: list[Request]) -> list[dict]:
        texts = scoring.generate_greedy(
            self.model,
            self.tokenizer,
            [r.context_tokens for r in batch],
            max_new_tokens=int(self.task.generation.get("max_new_tokens", 5)),
            until=self.task.generation.get("until", ["\n"]),
            pad_token_id=self.pad_token_id,
            max_length=self.max_length,
        )
        parsed = [scoring.parse_choice(t, self.task.choices) for t in texts]
        # a parse failure is predicted as the extra class n_choices, which no target has (always wrong)
        preds = torch.tensor([p if p is not None else self.task.n_choices for p in parsed])
        return self._update_class(batch, preds, texts, failed=[p is None for p in parsed])

    def _update_class(
        self,
        batch: list[Request],
        preds: torch.Tensor,
        texts: list,
        scores: torch.Tensor | None = None,
        failed: list[bool] | None = None,
    ) -> list[dict]:
        targets = torch.tensor([r.label for r in batch])
        self._update_class_metrics(preds.to(self.device), targets.to(self.device))
        self.store.update(
            [r.index for r in batch], preds, targets, failed=None if failed is None else [int(f) for f in failed]
        )
        records = []
        for i, r in enumerate(batch):
            record = {"index": r.index, "label": r.label, "pred": int(preds[i])}
            if scores is not None:
                record["scores"] = [round(float(s), 5) for s in scores[i]]
            if texts[i] is not None:
                record["generated"] = texts[i]
                record["parse_failed"] = bool(failed[i]) if failed else False
            records.append(record)
        return records

    def _score_squad(self, batch: list[Request]) -> list[dict]:
        generation = self.task.generation
        texts = scoring.generate_greedy(
            self.model,
            self.tokenizer,
            [r.context_tokens for r in batch],
            max_new_tokens=int(generation.get("max_new_tokens", 32)),
            until=generation.get("until", ["\n"]),
            pad_token_id=self.pad_token_id,
            max_length=self.max_length,
        )
        texts = [t.strip() for t in texts]
        ems, f1s = zip(*[scoring.squad_scores(t, r.row["answers"]) for t, r in zip(texts, batch)])
        self.store.update([r.index for r in batch], [0] * len(batch), [-1] * len(batch), value_a=ems, value_b=f1s)
        return [
            {"index": r.index, "id": r.row["id"], "generated": t, "answers": r.row["answers"], "em": em, "f1": f1}
            for r, t, em, f1 in zip(batch, texts, ems, f1s)
        ]

    def _score_perplexity(self, batch: list[dict]) -> list[dict]:
        nll = scoring.window_nll(
            self.model, [b["tokens"] for b in batch], [b["n_scored"] for b in batch], pad_token_id=self.pad_token_id
        )  # [window]
        counts = torch.tensor([b["n_scored"] for b in batch], dtype=torch.float64)
        self.metrics["nll"].update(nll.to(self.device))
        self.metrics["n_tokens"].update(counts.to(self.device))
        self.store.update([b["index"] for b in batch], [0] * len(batch), [-1] * len(batch), value_a=nll, value_b=counts)
        return [{"index": b["index"], "nll": float(v), "n_scored": int(c)} for b, v, c in zip(batch, nll, counts)]

    # ----------------------------------------------------------------------------------------------------------
    def _eval_step(self, batch: list, batch_idx: int) -> None:
        self.outputs.extend(self.score_batch(batch))

    def validation_step(self, batch: list, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def test_step(self, batch: list, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def predict_step(self, batch: list, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        return self.score_batch(batch)

    def on_validation_epoch_start(self) -> None:
        self._reset()

    def on_test_epoch_start(self) -> None:
        self._reset()

    def on_predict_epoch_start(self) -> None:
        self._reset()

    def _reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        self.store.reset()
        self.outputs = []
        self.results = None
        self._kv_memo.clear()
        self._cf_memo.clear()

    def on_validation_epoch_end(self) -> None:
        self._finish()

    def on_test_epoch_end(self) -> None:
        self._finish()

    def _finish(self) -> None:
        self.results = self.compute_results()
        scalars = {
            f"{self.task.name}/{k}": v["value"]
            for k, v in self.results["metrics"].items()
            if v.get("value") is not None and math.isfinite(v["value"])
        }
        if "parse_failure_rate" in self.results:
            scalars[f"{self.task.name}/parse_failure_rate"] = self.results["parse_failure_rate"]
        # values are already synced (identical on every rank): no further reduction, and Lightning's advice to
        # use sync_dist=True does not apply
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            self.log_dict(scalars, sync_dist=False, rank_zero_only=True)

    # ----------------------------------------------------------------------------------------------------------
    def compute_results(self) -> dict:
        """The task's result row from the (synced) metric states."""
        task = self.task
        examples = self.store.compute()
        n = int(examples["index"].size)
        out: dict[str, Any] = {
            "task": task.name,
            "n": n,
            "metric": task.primary_metric,
            "scoring": task.scoring,
            "num_fewshot": task.num_fewshot,
            "calibrate": bool(task.calibrate),
        }
        if n == 0:
            raise RuntimeError(f"task {task.name!r}: no examples were scored")
        if task.type == "multiple_choice":
            out.update(self._class_results(examples))
        elif task.type == "generation":
            out.update(self._squad_results(examples))
        else:
            out.update(self._perplexity_results(examples))
        primary = out["metrics"][task.primary_metric]
        out["score"] = primary["value"]
        out["ci"] = [primary["ci_low"], primary["ci_high"]]
        chance = primary.get("chance")
        out["above_chance"] = None if chance is None else bool(primary["ci_low"] > chance)
        return out

    def _class_results(self, ex: dict) -> dict:
        task = self.task
        preds, targets = ex["pred"], ex["target"]
        n_classes = task.n_choices
        computed = {
            k: (scoring.mcc_from_confusion(m.compute()) if k == "mcc" else float(m.compute()))
            for k, m in self.metrics.items()
        }  # torchmetrics states, synced
        levels = scoring.chance_levels(targets, n_classes)
        failure = task.scoring == "generate"
        metrics = {
            name: scoring.metric_entry(
                name,
                preds,
                targets,
                n_classes,
                value=computed[name],
                failure_class=failure,
                n_boot=self.bootstrap,
                seed=self.ci_seed,
            )
            for name in task.metric
        }
        out = {
            "metrics": metrics,
            "chance": levels,
            "n_classes": n_classes,
            "label_counts": np.bincount(targets, minlength=n_classes).tolist(),
            "pred_counts": np.bincount(preds, minlength=n_classes + int(failure)).tolist(),
        }
        if task.scoring == "generate":
            failures = int(ex["failed"].sum())
            out["parse_failures"] = failures
            out["parse_failure_rate"] = failures / len(targets)
        return out

    def _squad_results(self, ex: dict) -> dict:
        """EM and F1 (official SQuAD v1.1 rules, :func:`fnet.scoring.squad_scores`): the mean over questions and
        a bootstrap CI of the same per-question values, in the order of ``task.metric`` (F1 first: the paper's)."""
        per_question = {"exact_match": ex["value_a"], "f1": ex["value_b"]}
        metrics = {}
        for name in list(self.task.metric) + [m for m in per_question if m not in self.task.metric]:
            values = per_question[name]
            lo, hi = scoring.bootstrap_interval(np.mean, [values], n_boot=self.bootstrap, seed=self.ci_seed)
            metrics[name] = {
                "value": float(np.mean(values)),
                "ci_low": lo,
                "ci_high": hi,
                "ci_method": "bootstrap",
                "chance": 0.0,
            }
        return {"metrics": metrics, "chance": {"majority": 0.0, "uniform": 0.0}}

    def _perplexity_results(self, ex: dict) -> dict:
        nll_state, count_state = self.metrics["nll"].compute(), self.metrics["n_tokens"].compute()
        total_nll, total_tokens = float(nll_state.sum()), float(count_state.sum())
        nll, counts = ex["value_a"], ex["value_b"]
        lo, hi = scoring.bootstrap_interval(
            lambda a, b: math.exp(a.sum() / b.sum()), [nll, counts], n_boot=self.bootstrap, seed=self.ci_seed
        )
        value = math.exp(total_nll / total_tokens)
        return {
            "metrics": {
                "perplexity": {
                    "value": value,
                    "ci_low": lo,
                    "ci_high": hi,
                    "ci_method": "bootstrap",
                    "chance": None,
                    "nll_per_token": total_nll / total_tokens,
                    "n_tokens": int(total_tokens),
                }
            },
            "chance": {"uniform_perplexity": float(_vocab_size(self.model))},
        }


def _model_max_length(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _vocab_size(model: torch.nn.Module) -> int:
    return int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
