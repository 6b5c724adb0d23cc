"""Statistics a reviewer accepts: effects pooled over training runs, corrected for the family of tests, and
"performance kept" only from an equivalence test.

A study's unit of replication is the training run (a fine-tuned model): the same plan on another run moves
effects by far more than the rows and control seeds of one run do. So an effect is estimated per run first
(:func:`fnet.study.paired.paired_difference`: rows and control seeds resampled, paired on the same rows) and
then pooled over runs by :func:`pooled_effect`:

* one run: the run's own two-level bootstrap (rows, control seeds) gives the interval and the p value;
* two or more runs: the summary-statistics form of a random-effects model over runs (the mean of the per-run
  effects, a t interval with runs - 1 degrees of freedom, a one-sample t test), so the interval covers the spread
  of training runs, whatever the precision within each run.

With three to five runs, that t interval (two to four degrees of freedom) cannot, after correction for a family
of a few hundred tests, establish an effect whose size varies between runs, however clear it is in each (SST-2's
raw lesion: +0.13 and +0.33 accuracy in its first two runs, each run's interval far from 0). What those runs do
show is a *replication*: the effect is there in every run. :func:`pooled_effect` tests that too, as the partial
conjunction of the runs' own tests (Benjamini & Heller 2008, "Screening for partial conjunction hypotheses",
Biometrics 64: u = n, the intersection-union test): ``p_all_runs`` is twice the largest of the runs' one-sided p
values in the direction they share, so it is small only when every run shows the effect on its own. Each run's
p comes from the normal approximation of its bootstrap (effect / bootstrap SD), not from counting replicates:
2,000 replicates cannot give a p below 1/2001, which a family of a few hundred tests needs. ``p_tost_all_runs``
is the same for equivalence (every run within the margin). A report says which of the two a claim rests on.

:func:`correct` adjusts the p values of a family of tests (Holm by default, Benjamini-Hochberg on request, both
through statsmodels); :func:`pooled_effect` also gives the two one-sided tests (TOST) against an equivalence
margin, which is the only way a report says an effect is absent ("kept"). :func:`mechanism_groups` groups
networks that share a massive unit, so a tally counts distinct mechanisms, not the same channel many times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import norm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import DescrStatsW

__all__ = ["RunEffect", "pooled_effect", "run_p", "bootstrap_p", "correct", "CORRECTIONS", "mechanism_groups"]

#: multiple-comparison corrections: name -> statsmodels' method
CORRECTIONS = {"holm": "holm", "bh": "fdr_bh", "none": None}


@dataclass
class RunEffect:
    """One training run's effect ``a - b`` on its own rows: the point estimate and its bootstrap replicates."""

    run: str
    diff: float
    replicates: np.ndarray = field(repr=False)  # [B]: the paired bootstrap's differences (rows and seeds resampled)

    @property
    def ci(self) -> tuple[float, float]:
        lo, hi = np.percentile(self.replicates, [2.5, 97.5])
        return float(lo), float(hi)


def bootstrap_p(replicates: np.ndarray, null: float = 0.0) -> float:
    """Two-sided p value of ``null`` from bootstrap replicates: twice the smaller tail beyond it (at least 1/(B+1)).

    Examples
    --------
    >>> round(bootstrap_p(np.linspace(0.1, 0.5, 999)), 3)  # every replicate above 0
    0.002
    >>> bootstrap_p(np.linspace(-1, 1, 1001))
    1.0
    """
    replicates = np.asarray(replicates, dtype=np.float64)
    n = replicates.size
    below, above = (np.sum(replicates <= null) + 1) / (n + 1), (np.sum(replicates >= null) + 1) / (n + 1)
    return float(min(1.0, 2 * min(below, above)))


def _one_sided(replicates: np.ndarray, margin: float) -> float:
    """TOST from replicates: the larger of P(effect <= -margin) and P(effect >= margin)."""
    n = replicates.size
    low = (np.sum(replicates <= -margin) + 1) / (n + 1)
    high = (np.sum(replicates >= margin) + 1) / (n + 1)
    return float(max(low, high))


def _bootstrap_sd(run: RunEffect) -> float:
    """The SD of a run's bootstrap replicates (0 with fewer than two)."""
    replicates = np.asarray(run.replicates, dtype=np.float64)
    return float(np.std(replicates, ddof=1)) if replicates.size > 1 else 0.0


def run_p(run: RunEffect, side: int) -> float:
    """One-sided p value of the run's effect being on ``side`` (+1: above 0, -1: below 0), from the normal
    approximation of its bootstrap (``diff / SD(replicates)``): small when the run shows it.

    Examples
    --------
    >>> run = RunEffect("r0", 0.2, 0.2 + np.random.default_rng(0).normal(0, 0.1, 4000))
    >>> round(run_p(run, +1), 2), round(run_p(run, -1), 2)  # z = 2
    (0.02, 0.98)
    """
    sd = _bootstrap_sd(run)
    if sd == 0:  # no spread: the effect is exactly what was measured
        return 0.0 if side * run.diff > 0 else 1.0
    return float(norm.sf(side * run.diff / sd))


def _run_tost(run: RunEffect, margin: float) -> float:
    """TOST of one run from the same normal approximation: the larger of the two one-sided p values."""
    sd = _bootstrap_sd(run)
    if sd == 0:
        return 0.0 if abs(run.diff) < margin else 1.0
    return float(max(norm.sf((run.diff + margin) / sd), norm.sf((margin - run.diff) / sd)))


def pooled_effect(runs: Sequence[RunEffect], margin: float = 0.02, level: float = 0.95) -> dict:
    """An effect pooled over training runs (see the module docstring).

    Parameters
    ----------
    runs : sequence of RunEffect
        One per training run that measured both sides.
    margin : float
        Equivalence margin of the TOST (absolute, in the metric's units): "no change" means within +-margin.
    level : float
        Confidence level of the interval.

    Returns
    -------
    dict
        ``diff`` (mean of the runs' effects), ``ci_low``, ``ci_high``, ``p`` (two-sided, effect = 0), ``p_tost``
        (equivalence within +-margin; small = equivalent), ``n_runs``, ``runs`` (per-run ``diff``, ``ci_low``,
        ``ci_high``, ``holds``: its own interval excludes 0 on the pooled effect's side) and ``runs_holding``;
        ``p_all_runs`` (two-sided: every run shows the effect, in one direction, on its own; ``all_runs_side``:
        that direction, +1 or -1) and
        ``p_tost_all_runs`` (every run within the margin), see the module docstring.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> runs = [RunEffect(f"r{i}", d, d + rng.normal(0, 0.01, 2000)) for i, d in enumerate([0.10, 0.12, 0.08])]
    >>> e = pooled_effect(runs)
    >>> round(e["diff"], 2), e["ci_low"] > 0, e["p"] < 0.05, e["runs_holding"], e["p_tost"] > 0.05
    (0.1, True, True, 3, True)
    """
    if not runs:
        raise ValueError("pooled_effect needs at least one training run")
    diffs = np.array([r.diff for r in runs], dtype=np.float64)
    if len(runs) == 1:
        boot = np.asarray(runs[0].replicates, dtype=np.float64)
        alpha = (1 - level) / 2
        lo, hi = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
        p, p_tost = bootstrap_p(boot), _one_sided(boot, margin)
    else:
        stats = DescrStatsW(diffs)
        if np.ptp(diffs) == 0:  # identical runs: no spread to estimate; fall back on the runs' own bootstrap
            boot = np.concatenate([np.asarray(r.replicates, dtype=np.float64) for r in runs])
            lo, hi = np.percentile(boot, [2.5, 97.5])
            p, p_tost = bootstrap_p(boot), _one_sided(boot, margin)
        else:
            lo, hi = stats.tconfint_mean(alpha=1 - level)
            p = float(stats.ttest_mean(0.0)[1])
            p_tost = float(stats.ttost_mean(-margin, margin)[0])
    diff = float(diffs.mean())
    # every run on its own (intersection-union): the largest one-sided p, in the better of the two directions
    p_up, p_down = max(run_p(r, +1) for r in runs), max(run_p(r, -1) for r in runs)
    p_all = min(1.0, 2 * min(p_up, p_down))
    p_tost_all = max(_run_tost(r, margin) for r in runs)
    per_run = []
    for r in runs:
        r_lo, r_hi = r.ci
        holds = (r_lo > 0 and diff > 0) or (r_hi < 0 and diff < 0)
        per_run.append({"run": r.run, "diff": float(r.diff), "ci_low": r_lo, "ci_high": r_hi, "holds": holds})
    return {
        "diff": diff,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p": float(p),
        "p_tost": float(p_tost),
        "p_all_runs": float(p_all),
        "all_runs_side": 1 if p_up <= p_down else -1,
        "p_tost_all_runs": float(p_tost_all),
        "margin": float(margin),
        "n_runs": len(runs),
        "runs": per_run,
        "runs_holding": sum(r["holds"] for r in per_run),
    }


def correct(pvalues: Sequence[float], method: str = "holm") -> np.ndarray:
    """Adjusted p values of one family of tests (``holm``: family-wise error; ``bh``: false discovery rate;
    ``none``). NaN p values (tests that could not be made) stay NaN and do not count in the family.

    Examples
    --------
    >>> correct([0.01, 0.04, 0.03, 0.2]).round(2).tolist()  # Holm: 4 x 0.01, 3 x 0.03, ...
    [0.04, 0.09, 0.09, 0.2]
    >>> correct([0.01, 0.04, 0.03, 0.2], "bh").round(3).tolist()
    [0.04, 0.053, 0.053, 0.2]
    """
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; valid: {sorted(CORRECTIONS)}")
    p = np.asarray(pvalues, dtype=np.float64)
    out = p.copy()
    ok = np.isfinite(p)
    if CORRECTIONS[method] is not None and ok.any():
        out[ok] = multipletests(p[ok], method=CORRECTIONS[method])[1]
    return out


def mechanism_groups(units_of: Mapping[str, Iterable[int]]) -> list[list[str]]:
    """Networks grouped by shared massive units: two networks are in one group when a chain of shared units joins
    them (connected components); a network with none is its own group. Groups and members keep the input order.

    Examples
    --------
    >>> mechanism_groups({"net0": [507], "net1": [507, 12], "net2": [12], "net3": [], "net4": [99]})
    [['net0', 'net1', 'net2'], ['net3'], ['net4']]
    """
    names = list(units_of)
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    owner: dict[int, str] = {}
    for name in names:
        for unit in units_of[name]:
            if unit in owner:
                parent[root(name)] = root(owner[unit])
            else:
                owner[unit] = name
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(root(name), []).append(name)
    return sorted(groups.values(), key=lambda g: names.index(g[0]))
