"""Statistics every result row carries: confidence intervals (Wilson, percentile bootstrap), chance levels, class
metrics (accuracy, MCC, F1) and SQuAD v1.1 exact match / F1.

Split out of :mod:`fnet.scoring` (which re-exports these names).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "wilson_interval",
    "bootstrap_interval",
    "chance_levels",
    "metric_chance",
    "class_metric",
    "mcc_from_confusion",
    "normalize_answer",
    "squad_scores",
]


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); ``(nan, nan)`` for n = 0.

    Parameters
    ----------
    successes : float
        Number of successes.
    n : int
        Number of trials.
    z : float
        Normal quantile of the level (default 1.959964: 95 %).

    Returns
    -------
    tuple of float
        ``(low, high)``, clipped to [0, 1].
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def class_metric(
    name: str, preds: torch.Tensor, targets: torch.Tensor, n_classes: int, failure_class: bool = False
) -> float:
    """accuracy / mcc / f1 (binary F1 of class 1) of class predictions, via torchmetrics' functional API.

    ``failure_class``: predictions may also be ``n_classes`` (a generate-mode parse failure), an extra class that
    no target has: wrong for accuracy, its own class for MCC (so constant failures give MCC 0, not -1), "not
    class 1" for binary F1.

    Parameters
    ----------
    name : str
        ``"accuracy"``, ``"mcc"`` or ``"f1"``.
    preds : torch.Tensor
        Predicted classes ``[row]``.
    targets : torch.Tensor
        True classes ``[row]``.
    n_classes : int
        Number of classes.
    failure_class : bool
        ``preds`` may hold ``n_classes`` for a parse failure (default False).

    Returns
    -------
    float
        The metric.
    """
    from torchmetrics.functional import accuracy, f1_score  # torchmetrics takes ~1 s to import; rows-only users skip it

    preds, targets = torch.as_tensor(preds).long(), torch.as_tensor(targets).long()
    n_pred = n_classes + 1 if failure_class else n_classes
    if name == "accuracy":
        return float(accuracy(preds, targets, task="multiclass", num_classes=n_pred, average="micro"))
    if name == "mcc":
        from torchmetrics.functional.classification import multiclass_confusion_matrix  # as above

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
    "acceptable" on 68 % acceptable rows), which would make a degenerate model look above chance.

    Parameters
    ----------
    confusion : torch.Tensor
        Counts ``[true, pred]``.

    Returns
    -------
    float
        The MCC, 0.0 when undefined.
    """
    cm = torch.as_tensor(confusion, dtype=torch.float64)
    total = cm.sum()
    correct = torch.trace(cm)
    pred_counts, true_counts = cm.sum(dim=0), cm.sum(dim=1)
    numerator = correct * total - (pred_counts * true_counts).sum()
    denominator = torch.sqrt((total**2 - (pred_counts**2).sum()) * (total**2 - (true_counts**2).sum()))
    return 0.0 if float(denominator) == 0.0 else float(numerator / denominator)


def bootstrap_interval(
    statistic, arrays: Sequence[np.ndarray], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*resampled_arrays)`` (rows resampled jointly, seeded).

    Parameters
    ----------
    statistic : callable
        Maps the resampled arrays to a number; non-finite values are dropped.
    arrays : Sequence of ndarray
        Arrays of the same length, their rows resampled together.
    n_boot : int
        Bootstrap resamples (default 1000).
    seed : int
        Seed of the resampling (default 0).
    level : float
        Coverage of the interval (default 0.95).

    Returns
    -------
    tuple of float
        ``(low, high)``; ``(nan, nan)`` for empty arrays or no finite value.
    """
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
    """``majority`` (rate of the most frequent class among the scored rows) and ``uniform`` (1 / n_classes).

    Parameters
    ----------
    targets : Sequence of int
        True classes of the scored rows.
    n_classes : int
        Number of classes.

    Returns
    -------
    dict
        ``{"majority": float, "uniform": float, "majority_class": int}`` (``majority_class`` -1 for no rows).
    """
    targets = np.asarray(targets, dtype=np.int64)
    counts = np.bincount(targets, minlength=n_classes) if targets.size else np.zeros(n_classes)
    return {
        "majority": float(counts.max() / max(targets.size, 1)),
        "uniform": 1.0 / n_classes,
        "majority_class": int(counts.argmax()) if targets.size else -1,
    }


def metric_chance(name: str, targets: Sequence[int], n_classes: int) -> float:
    """The score of the best trivial (constant) predictor under a metric: majority rate for accuracy, 0 for MCC,
    F1 of always answering class 1 for F1 (= 2p / (1 + p), p = rate of class 1).

    Parameters
    ----------
    name : str
        ``"accuracy"``, ``"mcc"`` or ``"f1"`` (another metric gets the uniform rate).
    targets : Sequence of int
        True classes of the scored rows.
    n_classes : int
        Number of classes.

    Returns
    -------
    float
        The chance score.
    """
    levels = chance_levels(targets, n_classes)
    if name == "accuracy":
        return levels["majority"]
    if name == "mcc":
        return 0.0
    if name == "f1" and n_classes == 2:
        p = float(np.mean(np.asarray(targets) == 1)) if len(targets) else 0.0
        return 2 * p / (1 + p) if p > 0 else 0.0
    return levels["uniform"]


def metric_entry(
    name: str,
    preds: np.ndarray,
    targets: np.ndarray,
    n_classes: int,
    *,
    value: float | None = None,
    failure_class: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """One metric's result entry: its value, 95 % CI (Wilson for accuracy, percentile bootstrap otherwise) and
    chance level (the best constant predictor, :func:`metric_chance`).

    Parameters
    ----------
    name : str
        ``"accuracy"``, ``"mcc"`` or ``"f1"``.
    preds, targets : ndarray of int
        Predicted and true classes ``[row]``.
    n_classes : int
        Number of classes.
    value : float, optional
        The metric's value when the caller already has it (e.g. from synced torchmetrics states); computed with
        :func:`class_metric` otherwise.
    failure_class : bool
        ``preds`` may hold ``n_classes`` for a parse failure (see :func:`class_metric`).
    n_boot, seed : int
        Bootstrap resamples and their seed (metrics other than accuracy).

    Returns
    -------
    dict
        ``{"value", "ci_low", "ci_high", "ci_method", "chance"}``.
    """
    preds = np.asarray(preds, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)

    def metric(p: np.ndarray, t: np.ndarray) -> float:
        return class_metric(name, torch.from_numpy(p), torch.from_numpy(t), n_classes, failure_class=failure_class)

    if value is None:
        value = metric(preds, targets)
    if name == "accuracy":
        (lo, hi), method = wilson_interval(float((preds == targets).sum()), len(targets)), "wilson"
    else:
        (lo, hi), method = bootstrap_interval(metric, [preds, targets], n_boot=n_boot, seed=seed), "bootstrap"
    return {
        "value": value,
        "ci_low": lo,
        "ci_high": hi,
        "ci_method": method,
        "chance": metric_chance(name, targets, n_classes),
    }


# SQuAD v1.1 official normalisation (lowercase, strip punctuation, drop a/an/the, collapse whitespace)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's answer normalisation: lower case, no punctuation, no articles, single spaces.

    Parameters
    ----------
    text : str
        An answer.

    Returns
    -------
    str
        The normalised answer.

    Examples
    --------
    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_scores(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """Per-question (EM, F1) in [0, 1] by the official SQuAD v1.1 script (``evaluate-v1.1.py``): answers
    normalised by :func:`normalize_answer`, F1 from the overlap of whitespace tokens -- 0 when they share no token,
    so a prediction and a gold answer that both normalise to empty (gold ".") get EM 1 and F1 0 -- and the max over
    the gold answers. The reported totals are the means of these (``torchmetrics``' SQuAD gives F1 1 in the empty
    case, so it is not used).

    Parameters
    ----------
    prediction : str
        The generated answer.
    answers : Sequence of str
        The gold answers.

    Returns
    -------
    tuple of float
        ``(em, f1)``.
    """

    def f1(pred: str, gold: str) -> float:
        p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
        common = sum((Counter(p) & Counter(g)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(g)
        return 2 * precision * recall / (precision + recall)

    em = max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers)
    return em, max(f1(prediction, a) for a in answers)
