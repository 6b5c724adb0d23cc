"""A study's results as rows and statements: summary rows, paired effects and the claims they support.

:mod:`fnet.study.render` lays them out as ``report.md``, CSVs and figures. The summary rows are
:mod:`fnet.study.summary`'s (its names import from here too).

Every statement of the report is computed from the numbers. Each effect stands beside its control as a paired
difference on the same held-out rows with a 95 % CI (:mod:`fnet.study.paired`: rows resampled, and a random
control's seeds too); an effect is claimed only when that CI excludes zero. A task is "at chance" when the unmasked
model's interval covers the chance level, and a masked score is marked "at chance" when its own interval does
("below chance" when it lies under it: a lesion can push a model below the majority-class rate). The
paper's numbers (``fnet/study/paper_tables.json``) stand beside ours where they exist. Single jobs carry their own
interval (Wilson for accuracy, bootstrap otherwise); random controls are the mean over seeds with a 95 % t interval
(:func:`fnet.report.sweep.mean_ci`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from fnet.study.paired import load_outcomes, paired_difference
from fnet.study.summary import FINISHED, RANDOM_CONDITIONS, SUMMARY_COLUMNS, load_results, paper_tables, summarize

__all__ = [
    "load_results",
    "summarize",
    "effects",
    "statements",
    "headline",
    "normalisation",
    "paper_tables",
    "chance_tasks",
    "whole_counts",
    "ids_text",
    "SUMMARY_COLUMNS",
    "EFFECT_COLUMNS",
    "FINISHED",
]

# --------------------------------------------------------------------------------------------------------------
# Paired effects and statements
# --------------------------------------------------------------------------------------------------------------
#: per effect condition: comparisons (a, b) on the same rows, reported as a - b
COMPARISONS = {
    "lesion": (("unmasked", "lesion"), ("count", "lesion"), ("magnitude", "lesion")),
    "spared": (("spared", "lesion"), ("unmasked", "spared"), ("count", "spared")),
    "unit": (("unmasked", "unit"),),
    "preserve": (("unmasked", "preserve"), ("preserve", "preserve_count"), ("preserve", "preserve_magnitude")),
}
#: jobs.csv: every job of the plan with its content key (the folder name's suffix) and status
JOB_COLUMNS = ["name", "stage", "status", "key", "seconds", "finished"]
EFFECT_COLUMNS = [
    "task",
    "variant",
    "target",
    "K",
    "a",
    "b",
    "metric",
    "diff",
    "ci_low",
    "ci_high",
    "n_rows",
    "n_a",
    "n_b",
]


def _by_key(summary: Sequence[dict]) -> dict[tuple, dict]:
    """Summary rows by (task, variant, condition, target, K)."""
    return {(r["task"], r["variant"], r["condition"], r["target"], r["K"]): r for r in summary}


def effects(summary: Sequence[dict], n_boot: int = 2000) -> list[dict]:
    """Every effect beside its control as a paired difference ``a - b`` on the same rows, with a 95 % CI
    (:func:`fnet.study.paired.paired_difference`: rows resampled, and a random control's seeds)."""
    by = _by_key(summary)
    cache: dict[str, Any] = {}

    def outcomes(row: dict) -> list:
        return [cache.setdefault(f, load_outcomes(f, row["metric"])) for f in row.get("folders") or []]

    out = []
    for row in summary:
        for a_cond, b_cond in COMPARISONS.get(row["condition"], ()):
            sides = []
            for cond in (a_cond, b_cond):
                if cond == "unmasked":
                    sides.append(by.get((row["task"], "", "unmasked", None, None)))
                elif cond == row["condition"]:
                    sides.append(row)
                else:
                    sides.append(by.get((row["task"], row["variant"], cond, row["target"], row["K"])))
            if None in sides:
                continue
            d = paired_difference(outcomes(sides[0]), outcomes(sides[1]), row["metric"], n_boot=n_boot)
            if d is None:
                continue
            # a random control of one seed: its draw-to-draw spread is unknown, so nothing is decided on it
            one_seed = any(
                c in RANDOM_CONDITIONS and len(r.get("folders") or []) < 2 for c, r in zip((a_cond, b_cond), sides)
            )
            out.append(
                {
                    "task": row["task"],
                    "variant": row["variant"],
                    "target": row["target"],
                    "K": row["K"],
                    "a": a_cond,
                    "b": b_cond,
                    "metric": row["metric"],
                    "diff": d["diff"],
                    "ci_low": d["ci_low"],
                    "ci_high": d["ci_high"],
                    "n_rows": d["n"],
                    "n_a": d["n_a"],
                    "n_b": d["n_b"],
                    "one_seed": one_seed,
                }
            )
    return out


def ids_text(ids: list[int], k: int, show: int = 12) -> str:
    """Network ids for a table cell: all of them when few, else "all", "all but ..." or the first ones."""
    ids = sorted(ids)
    if len(ids) <= show:
        return ", ".join(map(str, ids))
    if len(ids) == k:
        return "all"
    missing = sorted(set(range(k)) - set(ids))
    if len(missing) <= show:
        return "all but " + ", ".join(map(str, missing))
    return ", ".join(map(str, ids[:show])) + ", ..."


def _fmt(r: dict | None) -> str:
    if r is None:
        return "n/a"
    ci = "" if math.isnan(r["ci_low"]) else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    seeds = f" ({r['n_jobs']} seeds)" if r["n_jobs"] > 1 else ""
    chance = r.get("chance")
    at = ""
    if chance is not None and not math.isnan(r["ci_low"]):  # chance: the majority-class rate (or the metric's)
        at = (
            " (at chance)"
            if r["ci_low"] <= chance <= r["ci_high"]
            else f" (below chance, {chance:.3f})"
            if r["ci_high"] < chance
            else ""
        )
    return f"{r['score']:.3f}{ci}{seeds}{at}"


def _d(e: dict | None) -> str:
    return "n/a" if e is None else f"{e['diff']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}]"


def _decided(e: dict) -> bool:
    return not e.get("one_seed")


def _verdict(e: dict | None, positive: str, negative: str, neither: str = "not distinguishable") -> str:
    if e is None:
        return "not measured"
    if not _decided(e):
        return "not decided (one random seed)"
    return positive if e["ci_low"] > 0 else negative if e["ci_high"] < 0 else neither


def _claim(e: dict | None, at_chance: bool, *words: str) -> str:
    """:func:`_verdict`, but no verdict on a task the unmasked model does at chance."""
    return "no claim: task at chance" if at_chance and e is not None else _verdict(e, *words)


def whole_counts(row: dict) -> dict:
    """``row`` with its neuron counts as ints where they are whole (a control's count is a mean over seeds
    of equal counts), so the table says 346, not 346.000."""
    return {
        **row,
        **{c: int(row[c]) for c in ("n_masked", "n_kept") if isinstance(row.get(c), float) and row[c].is_integer()},
    }


def chance_tasks(summary: Sequence[dict]) -> list[str]:
    """Tasks whose unmasked score covers chance."""
    return sorted({r["task"] for r in summary if r["condition"] == "unmasked" and r["unmasked_at_chance"]})


def statements(summary: Sequence[dict], effect_rows: Sequence[dict] | None = None) -> list[str]:
    """The report's findings, each computed from ``summary`` rows and their paired ``effect_rows``
    (:func:`effects`; computed here when not given)."""
    effect_rows = effects(summary) if effect_rows is None else effect_rows
    eff = {(e["task"], e["variant"], e["target"], e["K"], e["a"], e["b"]): e for e in effect_rows}
    by = _by_key(summary)
    lines = []
    for task in sorted({r["task"] for r in summary}):
        base = by.get((task, "", "unmasked", None, None))
        at_chance = base is not None and bool(base["unmasked_at_chance"])

        def v(e, *words, at_chance=at_chance):
            return _claim(e, at_chance, *words)

        if at_chance:
            lines.append(
                f"- **{task}: at chance.** The unmasked score {_fmt(base)} covers chance "
                f"({base['chance']:.3f}); no lesion or preservation on {task} says anything."
            )
        for les in (r for r in summary if r["task"] == task and r["condition"] == "lesion"):
            lines.append(_lesion_statement(les, base, by, eff, v))
        for unit in (r for r in summary if r["task"] == task and r["condition"] == "unit"):
            e = eff.get((task, unit["variant"], unit["target"], unit["K"], "unmasked", "unit"))
            lines.append(
                f"- {task}, massive unit rank {unit['target'][4:]} lesioned alone ({unit['n_masked']:.0f} "
                f"neurons): {_fmt(unit)}, drop {_d(e)}: {v(e, 'hurts', 'helps', 'no measurable effect')}."
            )
        for pres in (r for r in summary if r["task"] == task and r["condition"] == "preserve"):
            key = (task, pres["variant"], pres["target"], pres["K"])
            loss, vs_count, vs_mag = (
                eff.get(key + c)
                for c in (("unmasked", "preserve"), ("preserve", "preserve_count"), ("preserve", "preserve_magnitude"))
            )
            frac = (
                f", {pres['n_kept'] / pres['n_neurons']:.1%} of neurons"
                if pres.get("n_neurons") and pres.get("n_kept") is not None
                else ""
            )
            kept = f"{pres['n_kept']:.0f}" if pres["n_kept"] is not None else "?"
            lines.append(
                f"- {task}, only the K={pres['K']} networks kept ({kept} neurons{frac}): {_fmt(pres)}; loss vs "
                f"unmasked {_d(loss)} ({v(loss, 'performance lost', 'better than unmasked', 'performance kept')}); "
                f"vs count-matched random kept {_d(vs_count)} "
                f"({v(vs_count, 'networks keep more', 'random keeps more')}); "
                f"vs magnitude-matched {_d(vs_mag)} ({v(vs_mag, 'networks keep more', 'random keeps more')})."
            )
    return lines


def _lesion_statement(les: dict, base: dict | None, by: dict, eff: dict, v: Callable[..., str]) -> str:
    """A lesion's finding (:func:`statements`): its drop beside its count- and magnitude-matched random lesions
    and, where it was run, the same lesion with the massive units spared; ``v`` gives a verdict (:func:`_claim`)."""
    task = les["task"]
    key = (task, les["variant"], les["target"], les["K"])
    what = "all networks" if les["target"] == "all" else f"network {les['target'][3:]}"
    tag = "" if les["variant"] == "raw" else f" ({les['variant']} ICA)"
    drop, vs_count, vs_mag = (
        eff.get(key + c) for c in (("unmasked", "lesion"), ("count", "lesion"), ("magnitude", "lesion"))
    )
    count = by.get((task, les["variant"], "count", les["target"], les["K"]))
    magnitude = by.get((task, les["variant"], "magnitude", les["target"], les["K"]))
    text = (
        f"- {task}, {what}{tag} lesioned ({les['n_masked']:.0f} neurons): {_fmt(les)}, unmasked "
        f"{_fmt(base)}, drop {_d(drop)}. Count-matched random {_fmt(count)}: "
        f"extra drop {_d(vs_count)}, {v(vs_count, 'hurts more', 'hurts less')}. "
        f"Magnitude-matched {_fmt(magnitude)}: "
        f"extra drop {_d(vs_mag)}, {v(vs_mag, 'hurts more', 'hurts less')}."
    )
    spared, rec = by.get((task, les["variant"], "spared", les["target"], les["K"])), eff.get(key + ("spared", "lesion"))
    if spared is None or rec is None:
        return text
    share = f" ({rec['diff'] / drop['diff']:.0%} of the drop)" if drop and drop["diff"] > 0 else ""
    beyond = eff.get(key + ("count", "spared"))
    carried = v(
        rec,
        "the massive units carry part of the effect",
        "the massive units do not carry it (sparing them hurts more)",
        "the massive units carry no measurable part of it",
    )
    return text + (
        f" With the massive units spared ({spared['n_masked']:.0f} neurons): {_fmt(spared)}, "
        f"recovers {_d(rec)}{share}: {carried}; "
        f"without them the lesion still drops {_d(eff.get(key + ('unmasked', 'spared')))}, "
        f"{_d(beyond)} beyond the count-matched random lesion of the whole network "
        f"({v(beyond, 'still hurts more', 'hurts less')})."
    )


def normalisation(effect_rows: Sequence[dict], centres: dict[str, float], at_chance: Sequence[str] = ()) -> list[str]:
    """Raw vs variance-normalised networks per task: where they sit (mean layer) and what lesioning all of them
    does (drop, and extra drop beyond the magnitude-matched control; no verdict for tasks in ``at_chance``)."""
    eff = {(e["task"], e["variant"], e["target"], e["a"], e["b"]): e for e in effect_rows}
    lines = []
    for task in sorted({e["task"] for e in effect_rows if e["variant"] == "normalised"}):
        scope = task.replace(" (zero-shot)", "-zeroshot")
        where = ", ".join(
            f"{v} mean layer {centres[f'{scope} {v}']:.1f}" for v in ("raw", "normalised") if f"{scope} {v}" in centres
        )
        parts = []
        for v in ("raw", "normalised"):
            drop, extra = (
                eff.get((task, v, "all", "unmasked", "lesion")),
                eff.get((task, v, "all", "magnitude", "lesion")),
            )
            parts.append(
                f"{v}: drop {_d(drop)}, beyond magnitude-matched {_d(extra)} "
                f"({_claim(extra, task in at_chance, 'hurts more', 'hurts less')})"
            )
        lines.append(
            f"- {task}, raw vs variance-normalised ICA ({where or 'layers n/a'}); all networks lesioned, "
            + "; ".join(parts)
            + "."
        )
    return lines


def headline(summary: Sequence[dict], effect_rows: Sequence[dict]) -> list[str]:
    """The answers to the study's questions, counted over all effects (each with its paired 95 % CI)."""
    lines = []
    chance = chance_tasks(summary)
    effect_rows = [e for e in effect_rows if _decided(e) and e["task"] not in chance]  # nothing on chance tasks

    def tally(sel: list) -> str:
        more, less = sum(e["ci_low"] > 0 for e in sel), sum(e["ci_high"] < 0 for e in sel)
        return f"{more} of {len(sel)} hurt more, {less} hurt less, {len(sel) - more - less} not distinguishable"

    for variant in ("raw", "normalised"):
        tag = "" if variant == "raw" else " (variance-normalised ICA)"
        for a, b, what in (("count", "lesion", "count-matched"), ("magnitude", "lesion", "magnitude-matched")):
            rows = [e for e in effect_rows if e["a"] == a and e["b"] == b and e["variant"] == variant]
            for scope, pick in (
                ("single networks", lambda e: e["target"] != "all"),
                ("all networks together", lambda e: e["target"] == "all"),
            ):
                sel = [e for e in rows if pick(e)]
                if sel:
                    lines.append(f"- Lesions of {scope}{tag} vs {what} random lesions: {tally(sel)} (paired 95 % CIs).")
    rec = [e for e in effect_rows if e["a"] == "spared" and e["b"] == "lesion"]
    if rec:
        drops = {
            (e["task"], e["variant"], e["target"]): e["diff"]
            for e in effect_rows
            if e["a"] == "unmasked" and e["b"] == "lesion"
        }
        shares = [
            e["diff"] / drops[k] for e in rec if (k := (e["task"], e["variant"], e["target"])) in drops and drops[k] > 0
        ]
        median = f" (median share of the drop: {float(np.median(shares)):.0%})" if shares else ""
        lines.append(
            f"- Sparing the massive units recovers part of a lesion's drop in {sum(e['ci_low'] > 0 for e in rec)} "
            f"of {len(rec)} lesions{median}."
        )
        beyond = [e for e in effect_rows if e["a"] == "count" and e["b"] == "spared"]
        if beyond:
            lines.append(
                f"- Networks without their massive units vs the count-matched random lesion of the whole "
                f"network: {tally(beyond)}."
            )
    for a, b, what in (
        ("preserve", "preserve_count", "count-matched"),
        ("preserve", "preserve_magnitude", "magnitude-matched"),
    ):
        sel = [e for e in effect_rows if e["a"] == a and e["b"] == b]
        if sel:
            lines.append(
                f"- Preserving only the networks vs {what} random preservation: networks keep more in "
                f"{sum(e['ci_low'] > 0 for e in sel)} of {len(sel)} (task, K), random keeps more in "
                f"{sum(e['ci_high'] < 0 for e in sel)}."
            )
    kept = [
        e for e in effect_rows if e["a"] == "unmasked" and e["b"] == "preserve" and e["ci_high"] >= 0 >= e["ci_low"]
    ]
    if kept:
        lines.append(
            "- Preservation with no measurable loss: " + "; ".join(f"{e['task']} K={e['K']}" for e in kept) + "."
        )
    if chance:
        lines.append(f"- At chance unmasked (nothing about them is claimed): {', '.join(chance)}.")
    return lines
