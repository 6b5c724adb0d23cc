"""Paired differences between evaluations of the same rows: an effect and its matched control, with a 95 % CI.

A lesion and its random controls are scored on the same held-out rows, so their difference is measured far more
precisely than two separate intervals suggest. :func:`paired_difference` resamples the rows (the same resample for
both sides) and, for a random control, its seeds too (two-level bootstrap: the control's value is a mean over
random draws, and which draws were made is part of its uncertainty). The metric is recomputed from each job's
``predictions.jsonl`` per resample (:func:`metric_from_counts`), and checked against the job's own score first.

Written here, not taken from a library: torchmetrics' bootstrapper resamples one metric at a time, and neither it
nor scipy's ``bootstrap`` shares one resample of rows across several jobs and seeds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["load_outcomes", "metric_from_counts", "paired_difference"]

#: metrics a per-row mean gives (SQuAD's per-question F1 and exact match)
MEAN_METRICS = ("exact_match", "em")


def load_outcomes(folder: str | Path, metric: str) -> dict | None:
    """A job's per-row outcomes from ``predictions.jsonl``: ``{"index": [n], "pred": [n], "target": [n]}`` for
    classification, ``{"index": [n], "value": [n]}`` for per-question metrics (SQuAD F1 / EM); None without them."""
    path = Path(folder) / "predictions.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    rows.sort(key=lambda r: r.get("index", 0))
    index = np.array([r.get("index", i) for i, r in enumerate(rows)])
    key = {"exact_match": "em"}.get(metric, metric)
    if "pred" in rows[0] and ("target" in rows[0] or "label" in rows[0]):
        target = [r["target"] if "target" in r else r["label"] for r in rows]
        return {"index": index, "pred": np.array([r["pred"] for r in rows]), "target": np.array(target)}
    if key in rows[0]:
        return {"index": index, "value": np.array([float(r[key]) for r in rows])}
    return None


def metric_from_counts(metric: str, outcomes: dict, weights: np.ndarray) -> np.ndarray:
    """``metric`` of ``outcomes`` under row ``weights`` ``[B, n]`` (bootstrap counts; ones = the plain score).

    accuracy, f1 (binary: class 1; more classes: macro), mcc (binary), and per-row means (SQuAD f1 / exact match).

    Examples
    --------
    >>> import numpy as np
    >>> o = {"pred": np.array([1, 1, 0, 0]), "target": np.array([1, 0, 0, 1])}
    >>> w = np.ones((1, 4))
    >>> float(metric_from_counts("accuracy", o, w)[0]), float(metric_from_counts("f1", o, w)[0])
    (0.5, 0.5)
    >>> float(metric_from_counts("mcc", o, w)[0])
    0.0
    """
    n_w = weights.sum(axis=1)
    if "value" in outcomes:
        return weights @ outcomes["value"] / n_w
    pred, target = outcomes["pred"], outcomes["target"]
    if metric == "accuracy":
        return weights @ (pred == target).astype(float) / n_w
    classes = np.union1d(np.unique(target), np.unique(pred))
    binary = set(classes.tolist()) <= {0, 1}

    def counts(c):
        p, t = pred == c, target == c
        return (weights @ (p & t).astype(float), weights @ (p & ~t).astype(float), weights @ (~p & t).astype(float))

    if metric == "f1":
        per_class = []
        for c in [1] if binary else classes:
            tp, fp, fn = counts(c)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_class.append(np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0))
        return np.mean(per_class, axis=0)
    if metric == "mcc" and binary:
        tp, fp, fn = counts(1)
        tn = n_w - tp - fp - fn
        den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (tp * tn - fp * fn) / den, 0.0)
    raise ValueError(
        f"paired differences: metric {metric!r} is not supported; valid: accuracy, f1, mcc, "
        f"exact_match (and per-row means)"
    )


def paired_difference(
    a: Sequence[dict],
    b: Sequence[dict],
    metric: str,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    keep_replicates: bool = False,
) -> dict | None:
    """``mean(a) - mean(b)`` over the same rows, with a 95 % percentile CI.

    ``a`` and ``b`` are lists of :func:`load_outcomes` results: one job (a network lesion, the unmasked model) or
    the seeds of a random control. Rows are matched by index (only rows every job scored) and resampled with one
    resample for all jobs; a side with several jobs also has its jobs resampled per replicate. Returns
    ``{"diff", "ci_low", "ci_high", "n", "n_a", "n_b"}`` (and ``replicates``, the ``[n_boot]`` bootstrap
    differences, with ``keep_replicates``: :class:`fnet.study.stats.RunEffect` pools them over training runs), or
    None when there is nothing to compare.

    Examples
    --------
    >>> import numpy as np
    >>> target = np.arange(200) % 2
    >>> good = {"index": np.arange(200), "pred": target, "target": target}
    >>> bad = {"index": np.arange(200), "pred": np.where(np.arange(200) < 60, 1 - target, target), "target": target}
    >>> d = paired_difference([good], [bad], "accuracy")
    >>> round(d["diff"], 2), d["ci_low"] > 0.2  # 60 of 200 rows flipped: 0.3 lower, and surely so
    (0.3, True)
    """
    if not a or not b or any(o is None for o in list(a) + list(b)):
        return None
    common = a[0]["index"]
    for o in list(a) + list(b):
        common = np.intersect1d(common, o["index"])
    if common.size < 2:
        return None

    def take(o: dict) -> dict:
        pos = np.searchsorted(o["index"], common)
        return {k: v[pos] for k, v in o.items()}

    rng = np.random.default_rng(seed)
    n = common.size
    weights = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)])  # [1 + B, n]

    def side(jobs: Sequence[dict]) -> tuple[float, np.ndarray]:
        scores = np.vstack([metric_from_counts(metric, take(o), weights) for o in jobs])  # [jobs, 1 + B]
        if len(jobs) == 1:
            return float(scores[0, 0]), scores[0, 1:]
        picks = rng.integers(0, len(jobs), size=(n_boot, len(jobs)))  # jobs (seeds) resampled per replicate
        return float(scores[:, 0].mean()), np.take_along_axis(scores[:, 1:].T, picks, axis=1).mean(axis=1)

    (a0, a_boot), (b0, b_boot) = side(a), side(b)
    diff = a0 - b0
    if not math.isfinite(diff):
        return None
    lo, hi = np.percentile(a_boot - b_boot, [2.5, 97.5])
    out = {"diff": diff, "ci_low": float(lo), "ci_high": float(hi), "n": int(n), "n_a": len(a), "n_b": len(b)}
    if keep_replicates:
        out["replicates"] = a_boot - b_boot
    return out
