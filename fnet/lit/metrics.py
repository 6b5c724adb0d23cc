"""Metrics and result rows of fine-tuned classification heads
(:class:`fnet.lit.classification.SequenceClassificationModule`).

:func:`classification_metrics` builds the torchmetrics each stage logs (``accuracy``, ``f1``, ``mcc``, the task
configs' names); :func:`gather_records` collects per-row test records from every process; and
:func:`classification_result` turns them into the result row ``evaluate.py`` reports, each metric with its 95 % CI
and chance level.
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix

from fnet import scoring

__all__ = ["ConfusionMCC", "classification_metrics", "gather_records", "classification_result"]


class ConfusionMCC(MulticlassConfusionMatrix):
    """Matthews correlation from the (DDP-synced) confusion matrix via ``fnet.scoring.mcc_from_confusion``: 0 for a
    constant predictor, as GLUE and scikit-learn report it. torchmetrics' MatthewsCorrCoef gives 0.077 there,
    which would make a degenerate CoLA model look above chance."""

    def compute(self) -> torch.Tensor:
        return torch.tensor(scoring.mcc_from_confusion(super().compute()), dtype=torch.float32)


def classification_metrics(names: Sequence[str], num_labels: int) -> MetricCollection:
    """torchmetrics for ``names`` (the task configs' metric names) among ``accuracy``, ``f1`` (binary F1 of class 1
    for two labels, macro F1 otherwise) and ``mcc`` (Matthews correlation, CoLA's metric)."""
    from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassF1Score

    makers = {
        "accuracy": lambda: MulticlassAccuracy(num_classes=num_labels, average="micro"),
        "f1": lambda: (
            BinaryF1Score() if num_labels == 2 else MulticlassF1Score(num_classes=num_labels, average="macro")
        ),
        "mcc": lambda: ConfusionMCC(num_classes=num_labels),
    }
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise ValueError(f"unknown classification metrics {unknown}; valid: {sorted(makers)}")
    return MetricCollection({name: makers[name]() for name in names})


def gather_records(module: pl.LightningModule, records: list[dict]) -> list[dict]:
    """Per-row records of every process (DDP: all_gather_object), de-duplicated by ``index`` (the distributed
    sampler repeats rows to even out the ranks) and sorted by it."""
    if module.trainer is not None and module.trainer.world_size > 1 and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * module.trainer.world_size
        torch.distributed.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]
    unique = {r["index"]: r for r in records}
    return [unique[k] for k in sorted(unique)]


def classification_result(
    task_name: str | None,
    metric_names: Sequence[str],
    preds,
    targets,
    n_classes: int,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The result row evaluate.py reports (the zero-shot module's layout): per metric its value, 95 % CI (Wilson
    for accuracy, percentile bootstrap otherwise) and chance level (best constant predictor); the primary metric
    (the first) as ``score``/``ci``; ``above_chance`` = its CI lies above chance."""
    preds = np.asarray(preds, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    metrics = {
        name: scoring.metric_entry(name, preds, targets, n_classes, n_boot=bootstrap, seed=seed)
        for name in metric_names
    }
    primary = metrics[metric_names[0]]
    return {
        "task": task_name,
        "n": int(len(targets)),
        "metric": metric_names[0],
        "scoring": "finetuned_head",
        "metrics": metrics,
        "chance": scoring.chance_levels(targets, n_classes),
        "n_classes": n_classes,
        "label_counts": np.bincount(targets, minlength=n_classes).tolist(),
        "pred_counts": np.bincount(preds, minlength=n_classes).tolist(),
        "score": primary["value"],
        "ci": [primary["ci_low"], primary["ci_high"]],
        "above_chance": bool(primary["ci_low"] > primary["chance"]),
    }
