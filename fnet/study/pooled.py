"""A v2 study's results pooled over training runs: per-run rows, per-run paired effects, pooled effects with
corrected p values, equivalence tests, and the claims they support.

Every evaluation belongs to one training run (``meta["run"]``; a zero-shot part is one run of the pretrained
model). Per run, each condition is summarised as in v1 (:func:`fnet.study.report.summarize`) and each comparison
is a paired difference on that run's rows with its bootstrap replicates (:func:`fnet.study.paired.paired_difference`).
Runs are then pooled by :func:`fnet.study.stats.pooled_effect` (the mean over runs with a t interval; every run on
its own, a partial conjunction), and both tests of every pooled comparison are corrected as one family (Holm by
default) before anything is claimed; a verdict says which test it rests on, and a comparison measured in one run
only says so. "Kept" (preservation without loss) is claimed only from the equivalence test against the preset's
margin, corrected over its own family.

Networks differ between training runs (each run has its own ICA), so a per-network lesion is never pooled by its
index: per-network results are tallied per run, grouped by shared massive units (:func:`fnet.study.stats.
mechanism_groups`), and the report says in how many runs each tally holds.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from statsmodels.stats.weightstats import DescrStatsW

from fnet.study.paired import load_outcomes, paired_difference
from fnet.study.report import summarize
from fnet.study.stats import RunEffect, correct, mechanism_groups, pooled_effect

__all__ = [
    "COMPARISONS",
    "run_summary",
    "pooled_summary",
    "run_effects",
    "pool",
    "claims",
    "mechanisms",
    "POOLED_COLUMNS",
    "POOLED_EFFECT_COLUMNS",
]

#: per condition of a row: the comparisons (a, b) it takes part in, as ``score(a) - score(b)`` on the same rows
COMPARISONS: dict[str, tuple[tuple[str, str], ...]] = {
    "lesion": (("unmasked", "lesion"), ("count", "lesion"), ("magnitude", "lesion"), ("massive_included", "lesion")),
    "lesion_mean": (
        ("unmasked", "lesion_mean"),
        ("lesion_mean", "lesion"),
        ("count_mean", "lesion_mean"),
        ("magnitude_mean", "lesion_mean"),
        ("massive_included_mean", "lesion_mean"),
    ),
    "spared": (("spared", "lesion"), ("count", "spared")),
    "spared_mean": (("spared_mean", "lesion_mean"),),
    "unit": (("unmasked", "unit"),),
    "unit_mean": (("unmasked", "unit_mean"),),
    "preserve": (("unmasked", "preserve"), ("preserve", "preserve_count"), ("preserve", "preserve_magnitude")),
    "preserve_as_published": (("preserve_as_published", "preserve"), ("preserve_as_published", "preserve_count")),
}
#: the comparison whose equivalence test says "performance kept"
KEPT = ("unmasked", "preserve")
POOLED_COLUMNS = [
    "task",
    "run",
    "variant",
    "condition",
    "target",
    "K",
    "metric",
    "score",
    "ci_low",
    "ci_high",
    "n_rows",
    "n_jobs",
    "n_masked",
    "n_kept",
    "n_neurons",
    "unmasked",
    "chance",
    "unmasked_at_chance",
    "paper",
]
POOLED_EFFECT_COLUMNS = [
    "task",
    "run",
    "variant",
    "target",
    "K",
    "a",
    "b",
    "metric",
    "diff",
    "ci_low",
    "ci_high",
    "ci_low_corrected",
    "ci_high_corrected",
    "p",
    "p_adjusted",
    "p_tost",
    "p_tost_adjusted",
    "p_all_runs",
    "p_all_runs_adjusted",
    "p_tost_all_runs",
    "p_tost_all_runs_adjusted",
    "n_runs",
    "runs_holding",
    "n_rows",
    "n_a",
    "n_b",
]


def _variant(row: dict) -> str:
    """The row's networks: raw / normalised, with the threshold of a preservation at another alpha."""
    variant = row.get("variant", "raw")
    return variant if row.get("alpha") is None else f"{variant.split('_a')[0]}_a{float(row['alpha']):g}"


def run_summary(rows: Sequence[dict], paper: dict | None = None) -> list[dict]:
    """Summary rows per training run (``run`` = the run's number; a part without runs: 0)."""
    by_run: dict[Any, list[dict]] = defaultdict(list)
    for r in rows:
        by_run[r.get("run", 0)].append({**r, "variant": _variant(r)})
    out = []
    for run, group in sorted(by_run.items(), key=lambda kv: kv[0]):
        out += [{**s, "run": run} for s in summarize(group, paper)]
    return out


def pooled_summary(per_run: Sequence[dict]) -> list[dict]:
    """One pooled row per (task, variant, condition, target, K): the mean over runs of the run scores, with a t
    interval over runs (one run: its own interval)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in per_run:
        groups[(r["task"], r["variant"], r["condition"], r["target"], r["K"])].append(r)
    out = []
    for (task, variant, cond, target, K), group in groups.items():
        scores = np.array([r["score"] for r in group], dtype=np.float64)
        if len(group) == 1 or np.ptp(scores) == 0:
            lo, hi = group[0]["ci_low"], group[0]["ci_high"]
        else:
            lo, hi = DescrStatsW(scores).tconfint_mean()
        unmasked = [r["unmasked"] for r in group if r.get("unmasked") is not None]
        chance = group[0].get("chance")
        base = [r for r in per_run if r["task"] == task and r["condition"] == "unmasked"]
        at_chance = _pooled_at_chance(base, chance)
        out.append(
            {
                **{
                    k: group[0].get(k)
                    for k in (
                        "task",
                        "variant",
                        "condition",
                        "target",
                        "K",
                        "metric",
                        "n_rows",
                        "n_neurons",
                        "chance",
                        "paper",
                    )
                },
                "run": "pooled",
                "score": float(scores.mean()),
                "ci_low": float(lo),
                "ci_high": float(hi),
                "n_jobs": sum(r["n_jobs"] for r in group),
                "n_runs": len(group),
                "n_masked": _mean(r.get("n_masked") for r in group),
                "n_kept": _mean(r.get("n_kept") for r in group),
                "unmasked": _mean(unmasked),
                "unmasked_at_chance": at_chance,
            }
        )
    return out


def _pooled_at_chance(base: Sequence[dict], chance: Any) -> bool | None:
    """Whether the unmasked model's pooled interval covers chance (a task at chance supports no claim)."""
    if not base or chance is None:
        return None
    scores = np.array([b["score"] for b in base], dtype=np.float64)
    lo = base[0]["ci_low"] if len(base) == 1 or np.ptp(scores) == 0 else DescrStatsW(scores).tconfint_mean()[0]
    return bool(lo <= chance)


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def run_effects(per_run: Sequence[dict], n_boot: int = 2000) -> list[dict]:
    """Every comparison of :data:`COMPARISONS` in every run, with its bootstrap replicates (``replicates``)."""
    by = {(r["task"], r["run"], r["variant"], r["condition"], r["target"], r["K"]): r for r in per_run}
    unmasked = {(r["task"], r["run"]): r for r in per_run if r["condition"] == "unmasked"}
    cache: dict[str, Any] = {}

    def outcomes(row: dict) -> list:
        return [cache.setdefault(f, load_outcomes(f, row["metric"])) for f in row.get("folders") or []]

    out = []
    for row in per_run:
        for a, b in COMPARISONS.get(row["condition"], ()):
            sides = [
                unmasked.get((row["task"], row["run"]))
                if c == "unmasked"
                else row
                if c == row["condition"]
                else by.get((row["task"], row["run"], row["variant"], c, row["target"], row["K"]))
                for c in (a, b)
            ]
            if None in sides:
                continue
            d = paired_difference(
                outcomes(sides[0]),
                outcomes(sides[1]),
                row["metric"],
                n_boot=n_boot,
                seed=len(out),
                keep_replicates=True,
            )
            if d is None:
                continue
            out.append(
                {
                    "task": row["task"],
                    "run": row["run"],
                    "variant": row["variant"],
                    "target": row["target"],
                    "K": row["K"],
                    "a": a,
                    "b": b,
                    "metric": row["metric"],
                    **d,
                }
            )
    return out


def pool(effects: Sequence[dict], *, correction: str = "holm", margin: float = 0.02) -> list[dict]:
    """Per-run effects pooled over runs, one row per (task, variant, target, K, a, b), with p values corrected over
    the family of all pooled comparisons (and TOST p values over the family of "kept" tests); the corrected
    interval is the Bonferroni interval of that family's size (level 1 - 0.05 / m)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for e in effects:
        groups[(e["task"], e["variant"], e["target"], e["K"], e["a"], e["b"])].append(e)
    rows = []
    for (task, variant, target, K, a, b), group in groups.items():
        runs = [RunEffect(str(e["run"]), e["diff"], e["replicates"]) for e in group]
        pooled = pooled_effect(runs, margin=margin)
        rows.append(
            {
                "task": task,
                "run": "pooled",
                "variant": variant,
                "target": target,
                "K": K,
                "a": a,
                "b": b,
                "metric": group[0]["metric"],
                **{
                    k: pooled[k]
                    for k in (
                        "diff",
                        "ci_low",
                        "ci_high",
                        "p",
                        "p_tost",
                        "p_all_runs",
                        "all_runs_side",
                        "p_tost_all_runs",
                        "n_runs",
                        "runs_holding",
                    )
                },
                "n_rows": int(np.mean([e["n"] for e in group])),
                "n_a": group[0]["n_a"],
                "n_b": group[0]["n_b"],
                "per_run": pooled["runs"],
                "_runs": runs,
            }
        )
    # two tests of each comparison (the mean over runs; every run on its own), corrected as one family of 2m
    m = 2 * len(rows)
    adjusted = correct([r["p"] for r in rows] + [r["p_all_runs"] for r in rows], correction)
    for row, p, p_all in zip(rows, adjusted[: len(rows)], adjusted[len(rows) :]):
        row["p_adjusted"], row["p_all_runs_adjusted"] = float(p), float(p_all)
    kept = [r for r in rows if (r["a"], r["b"]) == KEPT]
    adjusted = correct([r["p_tost"] for r in kept] + [r["p_tost_all_runs"] for r in kept], correction)
    for row, p, p_all in zip(kept, adjusted[: len(kept)], adjusted[len(kept) :]):
        row["p_tost_adjusted"], row["p_tost_all_runs_adjusted"] = float(p), float(p_all)
    for row in rows:
        lo_hi = pooled_effect(row.pop("_runs"), margin=margin, level=1 - 0.05 / max(1, m))
        row["ci_low_corrected"], row["ci_high_corrected"] = lo_hi["ci_low"], lo_hi["ci_high"]
        row.setdefault("p_tost_adjusted", None)
        row.setdefault("p_tost_all_runs_adjusted", None)
    return rows


def _below(p: float | None, alpha: float = 0.05) -> bool:
    return p is not None and p < alpha


def _runs_phrase(n: int) -> str:
    return "in its one run only (not replicated)" if n == 1 else f"in each of the {n} runs"


def claims(pooled: Sequence[dict], summary: Sequence[dict]) -> list[dict]:
    """What each pooled comparison supports, on its corrected p values: a direction ``a > b`` from the mean over
    runs, else ``a > b in each of the n runs`` from every run on its own (:func:`fnet.study.stats.pooled_effect`),
    ``kept`` from an equivalence test (of the mean, else of every run), or nothing; none on a task whose unmasked
    model is at chance."""
    chance = {
        r["task"]
        for r in summary
        if r["run"] == "pooled" and r["condition"] == "unmasked" and r.get("unmasked_at_chance")
    }
    out = []
    for e in pooled:
        if e["task"] in chance:
            verdict = "no claim: task at chance"
        elif e["n_runs"] == 1 and min(e["p_adjusted"], e["p_all_runs_adjusted"]) < 0.05:
            verdict = f"{e['a']} {'>' if e['diff'] > 0 else '<'} {e['b']} {_runs_phrase(1)}"
        elif e["p_adjusted"] < 0.05:
            verdict = f"{e['a']} > {e['b']}" if e["diff"] > 0 else f"{e['a']} < {e['b']}"
        elif e["p_all_runs_adjusted"] < 0.05:
            sign = ">" if e["all_runs_side"] > 0 else "<"
            verdict = f"{e['a']} {sign} {e['b']} {_runs_phrase(e['n_runs'])}"
        elif (e["a"], e["b"]) == KEPT and _below(e.get("p_tost_adjusted")):
            verdict = "kept (equivalent within the margin)" + ("" if e["n_runs"] > 1 else f" {_runs_phrase(1)}")
        elif (e["a"], e["b"]) == KEPT and _below(e.get("p_tost_all_runs_adjusted")):
            verdict = f"kept {_runs_phrase(e['n_runs'])} (each within the margin)"
        else:
            verdict = "not shown"
        out.append({**e, "verdict": verdict})
    return out


def mechanisms(records: Sequence[dict], per_run_effects: Sequence[dict]) -> list[dict]:
    """Per task and run: the networks whose own lesion hurts more than its count-matched control (the run's
    paired CI above 0), grouped by the massive units they share (the run's scale job's ``controls.json``)."""
    units: dict[tuple, dict[str, list[int]]] = {}
    scope_of: dict[tuple, str] = {}
    for r in records:
        m = r.get("meta") or {}
        if r.get("stage") == "evaluate" and m.get("scope") is not None:
            scope_of[(m.get("task"), m.get("run", 0))] = str(m["scope"])
        if r.get("stage") == "controls" and r.get("status") in ("ran", "skipped", "done") and m.get("K") is not None:
            info = json.loads((Path(r["folder"]) / "controls.json").read_text())
            per_net: dict[str, list[int]] = defaultdict(list)
            for unit, nets in (info.get("networks_with_massive") or {}).items():
                for k in nets:
                    per_net[f"net{k}"].append(int(unit))
            units[(str(m.get("scope")), m.get("variant"))] = per_net
    out = []
    hurts: dict[tuple, list[str]] = defaultdict(list)
    for e in per_run_effects:
        if (e["a"], e["b"]) == ("count", "lesion") and str(e["target"]).startswith("net") and e["ci_low"] > 0:
            hurts[(e["task"], e["run"], e["variant"])].append(e["target"])
    for (task, run, variant), nets in sorted(hurts.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        per_net = units.get((scope_of.get((task, run), task), variant)) or {}
        groups = mechanism_groups({n: per_net.get(n, []) for n in nets})
        out.append({"task": task, "run": run, "variant": variant, "networks": nets, "groups": groups})
    return out
