"""fnet.study.stats: effects pooled over training runs, multiple-comparison corrections, equivalence tests and
mechanism groups, each on planted numbers with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from fnet.study.stats import RunEffect, bootstrap_p, correct, mechanism_groups, pooled_effect, run_p


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


def test_every_run_on_its_own_shows_a_replicated_effect_the_mean_over_few_runs_cannot():
    """SST-2's raw lesion in its first two v2 runs: +0.13 and +0.33, each run's interval far from 0. The t test of
    the mean (df 1) cannot show it; the every-run test (twice the largest one-sided p) can, and only while every
    run shows it: one run without the effect, or one the other way, leaves nothing to claim."""
    runs = _runs([0.13, 0.33], spread=0.03)
    e = pooled_effect(runs)
    assert e["p"] > 0.05  # t with one degree of freedom
    assert e["all_runs_side"] == 1 and e["p_all_runs"] == pytest.approx(2 * max(run_p(r, +1) for r in runs))
    assert e["p_all_runs"] == pytest.approx(2 * sps.norm.sf(0.13 / 0.03), rel=0.05)  # the weaker run decides
    assert e["p_all_runs"] < 1e-4
    assert pooled_effect(_runs([0.13, 0.33, 0.0], spread=0.03))["p_all_runs"] > 0.5
    assert pooled_effect(_runs([0.13, 0.33, -0.2], spread=0.03))["p_all_runs"] > 0.5
    down = pooled_effect(_runs([-0.13, -0.33], spread=0.03))
    assert down["all_runs_side"] == -1 and down["p_all_runs"] < 1e-4


def test_run_p_has_no_bootstrap_floor_and_equivalence_in_every_run_needs_every_run_inside_the_margin():
    """A run 10 SDs from 0 gets a p far below 1/(B+1), which a family of hundreds of tests needs; equivalence in
    every run (intersection-union) fails as soon as one run leaves the margin."""
    far = RunEffect("r", 0.1, 0.1 + np.random.default_rng(1).normal(0, 0.01, 2000))
    assert run_p(far, +1) < 1e-15 < 1 / 2001 and run_p(far, -1) > 0.99
    assert run_p(RunEffect("flat", 0.1, np.full(10, 0.1)), +1) == 0.0  # no spread: exactly what was measured
    inside = pooled_effect(_runs([0.004, -0.003, 0.001], spread=0.002), margin=0.02)
    assert inside["p_tost_all_runs"] < 1e-10
    assert pooled_effect(_runs([0.004, -0.003, 0.03], spread=0.002), margin=0.02)["p_tost_all_runs"] > 0.99


def test_claims_say_which_test_a_verdict_rests_on_and_correct_both_tests_as_one_family():
    """Planted per-run effects through pool() and claims(): a consistent effect holds on its mean; one that
    varies in size between runs but is there in each holds 'in each of the 2 runs'; a single run's effect is
    named as not replicated; a null effect is not shown; a tight zero is kept. The family is both tests of every
    comparison: each adjusted p is at least its raw p times nothing less than 1 (Holm over 2m)."""
    from fnet.study.pooled import claims, pool

    def effects(a, b, diffs, spread=0.01, seed=0):
        rng = np.random.default_rng(seed)
        return [
            {"task": "sst2", "run": i, "variant": "raw", "target": "all", "K": 10, "a": a, "b": b,
             "metric": "accuracy", "diff": d, "replicates": d + rng.normal(0, spread, 2000), "n": 200,
             "n_a": 1, "n_b": 5}
            for i, d in enumerate(diffs)
        ]  # fmt: skip

    rows = pool(
        effects("count", "lesion", [0.300, 0.302, 0.301, 0.299, 0.300])
        + effects("unmasked", "lesion", [0.13, 0.33], spread=0.02)
        + effects("unmasked", "unit", [0.36])
        + effects("magnitude", "lesion", [0.01, -0.01], spread=0.02)
        + effects("unmasked", "preserve", [0.001, -0.001, 0.0], spread=0.002)
    )
    verdict = {(r["a"], r["b"]): v["verdict"] for r, v in zip(rows, claims(rows, []))}
    assert verdict == {
        ("count", "lesion"): "count > lesion",
        ("unmasked", "lesion"): "unmasked > lesion in each of the 2 runs",
        ("unmasked", "unit"): "unmasked > unit in its one run only (not replicated)",
        ("magnitude", "lesion"): "not shown",
        ("unmasked", "preserve"): "kept (equivalent within the margin)",
    }
    ps = sorted([r["p"] for r in rows] + [r["p_all_runs"] for r in rows])
    adjusted = sorted([r["p_adjusted"] for r in rows] + [r["p_all_runs_adjusted"] for r in rows])
    assert adjusted[0] == pytest.approx(min(1.0, 10 * ps[0]))  # Holm's first step: times 2 x 5 tests
    at_chance = [{"task": "sst2", "run": "pooled", "condition": "unmasked", "unmasked_at_chance": True}]
    assert {v["verdict"] for v in claims(rows, at_chance)} == {"no claim: task at chance"}
