"""A study's evaluate results as summary rows: one row per finished evaluate job (:func:`load_results`), grouped
by task, variant, condition, target and K (:func:`summarize`), each beside the unmasked model, chance and the
paper's number (:func:`paper_tables`).

Single jobs carry their own interval (Wilson for accuracy, bootstrap otherwise); random controls are the mean over
seeds with a 95 % t interval (:func:`fnet.report.sweep.mean_ci`). Split from :mod:`fnet.study.report` (which
imports these names, so they import from there as before) to keep each module near 500 lines: the rows here, the
effects and statements made from them there.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fnet.report.sweep import mean_ci

__all__ = [
    "CONDITION_ORDER",
    "FINISHED",
    "RANDOM_CONDITIONS",
    "SUMMARY_COLUMNS",
    "load_results",
    "paper_tables",
    "paper_value",
    "part_name",
    "summarize",
]

SUMMARY_COLUMNS = [
    "task",
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
    "unmasked_ci_low",
    "unmasked_ci_high",
    "chance",
    "unmasked_at_chance",
    "paper",
]
RANDOM_CONDITIONS = ("count", "magnitude", "preserve_count", "preserve_magnitude")
FINISHED = ("ran", "skipped", "done")  # job statuses whose results exist
CONDITION_ORDER = [
    "unmasked",
    "lesion",
    "count",
    "magnitude",
    "spared",
    "unit",
    "preserve",
    "preserve_count",
    "preserve_magnitude",
]


def part_name(text: str) -> str:
    """A part as the report names it: ``sst2``, or ``sst2 (zero-shot)`` (also written ``sst2-zeroshot``).

    >>> part_name("sst2-zeroshot"), part_name("sst2")
    ('sst2 (zero-shot)', 'sst2')
    """
    text = text.strip()
    return f"{text[: -len('-zeroshot')]} (zero-shot)" if text.endswith("-zeroshot") else text


def paper_tables() -> dict:
    """The paper's numbers (``fnet/study/paper_tables.json``, transcribed from Liu et al. 2025)."""
    return json.loads((Path(__file__).with_name("paper_tables.json")).read_text())


def load_results(records: Sequence[dict]) -> list[dict]:
    """One row per finished evaluate job: its meta (task, condition, target, seed, K, variant) and result."""
    rows = []
    for rec in records:
        if rec.get("stage") != "evaluate" or rec.get("status") not in FINISHED:
            continue
        result = json.loads((Path(rec["folder"]) / "result.json").read_text())
        mask = result.get("mask") or {}
        n_neurons = mask.get("n_neurons")
        n_kept = mask.get("n_preserved")
        if n_kept is None and n_neurons and rec["meta"].get("condition", "").startswith("preserve"):
            n_kept = n_neurons - int(mask.get("n_masked") or 0)
        ci = result.get("ci") or [None, None]
        chance = ((result.get("metrics") or {}).get(result.get("metric")) or {}).get("chance")  # the metric's
        if chance is None:
            chance = result.get("chance")
            chance = chance.get("majority") if isinstance(chance, dict) else chance  # {majority, uniform}
        rows.append(
            {
                **rec["meta"],
                "folder": rec["folder"],
                "metric": result.get("metric"),
                "score": result.get("score"),
                "ci_low": ci[0],
                "ci_high": ci[1],
                "n_masked": mask.get("n_masked"),
                "n_kept": n_kept,
                "n_neurons": n_neurons,
                "chance": chance,
                "n": result.get("n"),
            }
        )
    return rows


def _f(x: Any) -> float:
    return math.nan if x is None else float(x)


def summarize(rows: Sequence[dict], paper: dict | None = None) -> list[dict]:
    """Rows grouped by (task, variant, condition, target, K): single jobs keep their CI, seeds are pooled."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], r.get("variant", "raw"), r["condition"], r.get("target"), r.get("K"))].append(r)
    unmasked = {task: g[0] for (task, _, cond, _, _), g in groups.items() if cond == "unmasked"}
    out = []
    for (task, variant, cond, target, K), group in groups.items():
        if cond not in RANDOM_CONDITIONS and len(group) == 1:  # one job: its own (Wilson / bootstrap) CI
            score, lo, hi = _f(group[0]["score"]), _f(group[0]["ci_low"]), _f(group[0]["ci_high"])
        else:  # random draws: between-seed t interval (one seed: no interval, so nothing is claimed)
            score, lo, hi = mean_ci([_f(g["score"]) for g in group])
        base = unmasked.get(task, {})
        chance = base.get("chance", group[0].get("chance"))
        masked = [g["n_masked"] for g in group if g.get("n_masked") is not None]
        kept = [g["n_kept"] for g in group if g.get("n_kept") is not None]
        out.append(
            {
                "task": task,
                "variant": variant if cond != "unmasked" else "",
                "condition": cond,
                "target": target,
                "K": K,
                "metric": group[0]["metric"],
                "score": score,
                "ci_low": lo,
                "ci_high": hi,
                "n_rows": group[0].get("n"),
                "n_jobs": len(group),
                "n_neurons": group[0].get("n_neurons"),
                "n_masked": float(np.mean(masked)) if masked else None,
                "n_kept": float(np.mean(kept)) if kept else None,
                "unmasked": base.get("score"),
                "unmasked_ci_low": base.get("ci_low"),
                "unmasked_ci_high": base.get("ci_high"),
                "chance": chance,
                "unmasked_at_chance": _at_chance(base, chance),
                "paper": paper_value(paper, task, cond, target, K, variant),
                "folders": [g["folder"] for g in group],
            }
        )
    order = {c: i for i, c in enumerate(CONDITION_ORDER)}
    out.sort(
        key=lambda r: (r["task"], r["variant"], order.get(r["condition"], 99), r["K"] or 0, _target_order(r["target"]))
    )
    return out


def _target_order(target: Any) -> tuple:
    text = str(target or "")
    digits = "".join(c for c in text if c.isdigit())
    return (text.rstrip("0123456789"), int(digits) if digits else -1)


def _at_chance(base: dict, chance: Any) -> bool | None:
    if not base or chance is None or base.get("ci_low") is None:
        return None
    return bool(base["ci_low"] <= chance)


def paper_value(paper: dict | None, task: str, cond: str, target: Any, K: Any, variant: str) -> float | None:
    """The paper's score of a condition (``paper``: one model's tables, :func:`paper_tables`), or None where it
    reports none: the unmasked model, all networks lesioned, one network lesioned, preservation at K."""
    if not paper or variant == "normalised":
        return None
    if cond == "unmasked":
        return paper.get("unmasked", {}).get(task)
    if cond == "lesion" and target == "all":
        return paper.get("lesion_all", {}).get(task)
    if cond == "lesion" and str(target).startswith("net"):
        each = paper.get("lesion_each", {}).get(task)
        k = int(str(target)[3:])
        return each["scores"][k] if each and k < len(each["scores"]) else None
    if cond == "preserve":
        return ((paper.get("preserve", {}).get(task) or {}).get(str(K)) or {}).get("score")
    return None
