"""fnet.study.stats: effects pooled over training runs, multiple-comparison corrections, equivalence tests and
mechanism groups, each on planted numbers with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from fnet.study.stats import RunEffect, bootstrap_p, correct, mechanism_groups, pooled_effect


def _runs(diffs, spread=0.005, seed=0):
    rng = np.random.default_rng(seed)
    return [RunEffect(f"run{i}", d, d + rng.normal(0, spread, 4000)) for i, d in enumerate(diffs)]


def test_holm_on_a_known_family():
    """Holm: sorted p's times m, m-1, ...; monotone; the family's size is the number of finite p values."""
    p = [0.001, 0.02, 0.03, 0.5, float("nan")]
    adjusted = correct(p)
    assert adjusted[:4].round(4).tolist() == [0.004, 0.06, 0.06, 0.5] and np.isnan(adjusted[4])
    assert (correct(p, "none")[:4] == np.array(p[:4])).all()
    assert correct([0.01, 0.02, 0.03], "bh").round(3).tolist() == [0.03, 0.03, 0.03]
    with pytest.raises(ValueError, match="valid: \\['bh', 'holm', 'none'\\]"):
        correct(p, "bonferonni")


def test_pooled_effect_over_runs_is_a_t_interval_on_the_run_effects():
    """Three runs: the interval is the t interval of the three per-run effects (df 2), however precise each run
    is on its own; a run whose effect sits at the mean of the others does not narrow it below that."""
    diffs = [0.10, 0.30, 0.20]
    e = pooled_effect(_runs(diffs))
    half = sps.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / np.sqrt(3)
    assert e["diff"] == pytest.approx(0.2) and (e["ci_low"], e["ci_high"]) == pytest.approx((0.2 - half, 0.2 + half))
    assert e["p"] == pytest.approx(sps.ttest_1samp(diffs, 0).pvalue)
    assert e["n_runs"] == 3 and e["runs_holding"] == 3  # each run on its own: CI far from 0
    disagree = pooled_effect(_runs([0.15, -0.10, 0.02]))
    assert disagree["ci_low"] < 0 < disagree["ci_high"] and disagree["runs_holding"] == 2  # 0.15 and 0.02


def test_one_run_uses_its_own_bootstrap():
    e = pooled_effect(_runs([0.05], spread=0.01))
    assert e["n_runs"] == 1 and 0.02 < e["ci_low"] < 0.04 and 0.06 < e["ci_high"] < 0.08
    assert e["p"] == pytest.approx(2 / 4001)


def test_tost_says_kept_only_within_the_margin():
    """Equivalence: effects tightly around 0 are 'kept' within +-0.02 but not within +-0.001; an effect of 0.053
    (SQuAD K=128 in v1) is never 'kept', whatever its significance."""
    near_zero = pooled_effect(_runs([0.004, -0.003, 0.001]), margin=0.02)
    assert near_zero["p_tost"] < 0.05 and near_zero["p"] > 0.05
    assert pooled_effect(_runs([0.004, -0.003, 0.001]), margin=0.001)["p_tost"] > 0.05
    lost = pooled_effect(_runs([-0.053], spread=0.04), margin=0.02)
    assert lost["p"] > 0.05 and lost["p_tost"] > 0.5  # not significant, and not equivalent either


def test_bootstrap_p_is_two_sided():
    assert bootstrap_p(np.full(99, 1.0)) == pytest.approx(0.02)
    assert bootstrap_p(np.concatenate([np.full(50, -1.0), np.full(50, 1.0)])) == 1.0


def test_mechanism_groups_join_networks_through_shared_units():
    groups = mechanism_groups({f"net{k}": ([507] if k < 13 else [k]) for k in range(20)})
    assert len(groups) == 8 and groups[0] == [f"net{k}" for k in range(13)]
