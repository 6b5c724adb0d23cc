"""Aggregate a study's jobs into ``report.md``, ``summary.csv`` and figures.

Every statement of the report is computed from the numbers: a lesion "hurts more" than a control only when
their 95 % intervals are apart; a task is "at chance" when the unmasked model's interval covers the chance
level; the paper's numbers (``fnet/study/paper_tables.json``) stand beside ours where they exist. Single jobs carry
their own interval (Wilson for accuracy, bootstrap otherwise); random controls are the mean over seeds with a
95 % t interval (:func:`fnet.report.sweep.mean_ci`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fnet.report import markdown_table
from fnet.report.sweep import mean_ci

__all__ = ["load_results", "summarize", "statements", "write_report", "paper_tables", "SUMMARY_COLUMNS"]

SUMMARY_COLUMNS = ["task", "variant", "condition", "target", "K", "metric", "score", "ci_low", "ci_high", "n_jobs",
                   "n_masked", "n_kept", "unmasked", "unmasked_ci_low", "unmasked_ci_high", "chance",
                   "unmasked_at_chance", "paper"]
RANDOM_CONDITIONS = ("count", "magnitude", "preserve_count", "preserve_magnitude")
CONDITION_ORDER = ["unmasked", "lesion", "count", "magnitude", "spared", "unit", "preserve", "preserve_count",
                   "preserve_magnitude"]


def paper_tables() -> dict:
    """The paper's numbers (``fnet/study/paper_tables.json``, transcribed from Liu et al. 2025)."""
    return json.loads((Path(__file__).with_name("paper_tables.json")).read_text())


def load_results(records: Sequence[dict]) -> list[dict]:
    """One row per finished evaluate job: its meta (task, condition, target, seed, K, variant) and result."""
    rows = []
    for rec in records:
        if rec.get("stage") != "evaluate" or rec.get("status") not in ("ran", "skipped", "done"):
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
        rows.append({**rec["meta"], "metric": result.get("metric"), "score": result.get("score"),
                     "ci_low": ci[0], "ci_high": ci[1], "n_masked": mask.get("n_masked"), "n_kept": n_kept,
                     "n_neurons": n_neurons, "chance": chance, "n": result.get("n")})
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
        out.append({
            "task": task, "variant": variant if cond != "unmasked" else "", "condition": cond, "target": target,
            "K": K, "metric": group[0]["metric"], "score": score, "ci_low": lo, "ci_high": hi, "n_jobs": len(group),
            "n_neurons": group[0].get("n_neurons"),
            "n_masked": float(np.mean(masked)) if masked else None, "n_kept": float(np.mean(kept)) if kept else None,
            "unmasked": base.get("score"), "unmasked_ci_low": base.get("ci_low"),
            "unmasked_ci_high": base.get("ci_high"), "chance": chance,
            "unmasked_at_chance": _at_chance(base, chance),
            "paper": _paper_value(paper, task, cond, target, K, variant),
        })
    order = {c: i for i, c in enumerate(CONDITION_ORDER)}
    out.sort(key=lambda r: (r["task"], r["variant"], order.get(r["condition"], 99), r["K"] or 0,
                            _target_order(r["target"])))
    return out


def _target_order(target: Any) -> tuple:
    text = str(target or "")
    digits = "".join(c for c in text if c.isdigit())
    return (text.rstrip("0123456789"), int(digits) if digits else -1)


def _at_chance(base: dict, chance: Any) -> bool | None:
    if not base or chance is None or base.get("ci_low") is None:
        return None
    return bool(base["ci_low"] <= chance)


def _paper_value(paper: dict | None, task: str, cond: str, target: Any, K: Any, variant: str) -> float | None:
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


# --------------------------------------------------------------------------------------------------------------
# Statements
# --------------------------------------------------------------------------------------------------------------
def _fmt(r: dict | None) -> str:
    if r is None:
        return "n/a"
    ci = "" if math.isnan(r["ci_low"]) else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    seeds = f" ({r['n_jobs']} seeds)" if r["n_jobs"] > 1 else ""
    return f"{r['score']:.3f}{ci}{seeds}"


def _compare(a: dict, b: dict | None, lower: str, higher: str) -> str:
    """``a`` vs ``b``: which is lower, by how much, and whether their intervals are apart."""
    if b is None:
        return "no control"
    diff = b["score"] - a["score"]
    if any(math.isnan(x) for x in (a["ci_high"], b["ci_low"], a["ci_low"], b["ci_high"])):
        return f"difference {diff:+.3f} (no interval on one side: not decided)"
    if a["ci_high"] < b["ci_low"]:
        return f"{lower} by {diff:.3f} (intervals apart)"
    if b["ci_high"] < a["ci_low"]:
        return f"{higher} by {-diff:.3f} (intervals apart)"
    return f"not distinguishable (difference {diff:+.3f}, intervals overlap)"


def statements(summary: Sequence[dict]) -> list[str]:
    """The report's findings, each computed from ``summary`` rows."""
    by = {(r["task"], r["variant"], r["condition"], r["target"], r["K"]): r for r in summary}
    lines = []
    tasks = sorted({r["task"] for r in summary})
    for task in tasks:
        base = by.get((task, "", "unmasked", None, None))
        if base is not None and base["unmasked_at_chance"]:
            lines.append(f"- **{task}: at chance.** The unmasked score {_fmt(base)} covers chance "
                         f"({base['chance']:.3f}); no lesion or preservation on {task} says anything.")
        lesions = [r for r in summary if r["task"] == task and r["condition"] == "lesion"]
        for les in lesions:
            key = (task, les["variant"])
            count = by.get(key + ("count", les["target"], les["K"]))
            mag = by.get(key + ("magnitude", les["target"], les["K"]))
            what = "all networks" if les["target"] == "all" else f"network {les['target'][3:]}"
            tag = "" if les["variant"] == "raw" else f" ({les['variant']} ICA)"
            text = (f"- {task}, {what}{tag} lesioned ({les['n_masked']:.0f} neurons): {_fmt(les)} vs count-matched "
                    f"{_fmt(count)} vs magnitude-matched {_fmt(mag)}; unmasked {_fmt(base)}. Against count-matched: "
                    f"{_compare(les, count, 'hurts more', 'hurts less')}; against magnitude-matched: "
                    f"{_compare(les, mag, 'hurts more', 'hurts less')}.")
            spared = by.get(key + ("spared", les["target"], les["K"]))
            if spared is not None and base is not None:
                drop = base["score"] - les["score"]
                recovered = spared["score"] - les["score"]
                share = f"{recovered / drop:.0%} of the drop" if drop > 0 else "no drop to explain"
                text += (f" With the massive units spared: {_fmt(spared)} ({spared['n_masked']:.0f} neurons), "
                         f"so the massive units carry {share}.")
            lines.append(text)
        for unit in (r for r in summary if r["task"] == task and r["condition"] == "unit"):
            lines.append(f"- {task}, massive unit rank {unit['target'][4:]} alone ({unit['n_masked']:.0f} neurons): "
                         f"{_fmt(unit)}; vs unmasked: {_compare(unit, base, 'lower', 'higher')}.")
        for pres in (r for r in summary if r["task"] == task and r["condition"] == "preserve"):
            count = by.get((task, pres["variant"], "preserve_count", None, pres["K"]))
            mag = by.get((task, pres["variant"], "preserve_magnitude", None, pres["K"]))
            frac = (f" ({pres['n_kept'] / pres.get('n_neurons', 1):.1%} of neurons)"
                    if pres.get("n_neurons") and pres.get("n_kept") is not None else "")
            kept = f"{pres['n_kept']:.0f}" if pres["n_kept"] is not None else "?"
            lines.append(f"- {task}, only K={pres['K']} networks kept ({kept} neurons{frac}): {_fmt(pres)}; vs "
                         f"unmasked {_fmt(base)}: {_compare(pres, base, 'lower', 'higher')}; vs count-matched random "
                         f"kept {_fmt(count)}: {_compare(pres, count, 'lower', 'higher')}; vs magnitude-matched "
                         f"{_fmt(mag)}: {_compare(pres, mag, 'lower', 'higher')}.")
    return lines


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_preservation(summary: Sequence[dict], path: Path) -> Path | None:
    """Score vs neurons kept per task: networks (points), count-matched control band, unmasked, chance."""
    tasks = sorted({r["task"] for r in summary if r["condition"] == "preserve"})
    if not tasks:
        return None
    fig = _figure(4.0 * len(tasks), 3.5)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        for cond, style in (("preserve", "o-"), ("preserve_count", "s--"), ("preserve_magnitude", "^:")):
            pts = sorted((r for r in summary if r["task"] == task and r["condition"] == cond and r["n_kept"]),
                         key=lambda r: r["n_kept"])
            if not pts:
                continue
            x = [p["n_kept"] for p in pts]
            y = np.array([p["score"] for p in pts])
            ax.plot(x, y, style, label=cond.replace("preserve_", "random ").replace("preserve", "networks"))
            if cond != "preserve":
                ax.fill_between(x, [_f(p["ci_low"]) for p in pts], [_f(p["ci_high"]) for p in pts], alpha=0.2)
        row = next(r for r in summary if r["task"] == task)
        if row["unmasked"] is not None:
            ax.axhline(row["unmasked"], linestyle="--", color="k", linewidth=1, label="unmasked")
        if row["chance"] is not None:
            ax.axhline(row["chance"], linestyle=":", color="grey", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("neurons kept")
        ax.set_ylabel(row["metric"])
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path


def plot_layers(network_files: dict[str, str], path: Path) -> Path | None:
    """Neurons of all networks per layer, one line per network file (e.g. raw vs normalised ICA)."""
    from fnet.networks import NetworkSet

    if not network_files:
        return None
    fig = _figure(6.0, 3.5)
    ax = fig.add_subplot()
    for label, file in sorted(network_files.items()):
        nets = NetworkSet.load(file)
        per_layer = nets.masks.sum(dim=(0, 2)).numpy()  # [layer]: neuron memberships
        ax.plot(range(len(per_layer)), per_layer / max(1, per_layer.sum()), marker="o", label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of network neurons")
    ax.set_title("Where the networks sit")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path


def _layer_centres(network_files: dict[str, str]) -> dict[str, float]:
    from fnet.networks import NetworkSet

    out = {}
    for label, file in network_files.items():
        per_layer = NetworkSet.load(file).masks.sum(dim=(0, 2)).double().numpy()
        out[label] = float((per_layer * np.arange(len(per_layer))).sum() / max(1.0, per_layer.sum()))
    return out


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------
def _machine() -> str:
    import torch

    from fnet.provenance import cpu_model

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {cpu_model()}, {os.cpu_count()} CPUs, {gpu}"


def write_report(root: str | Path, *, preset: dict, records: Sequence[dict]) -> dict:
    """Write ``report.md``, ``summary.csv``, ``preservation.png`` and ``layers.png`` into ``root``."""
    root = Path(root)
    paper = paper_tables()["models"].get(preset.get("model"))
    summary = summarize(load_results(records), paper)
    with open(root / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary)
    files = {f"{r['meta']['scope']} {r['meta']['variant']}": str(Path(r["folder"]) / r["output"])
             for r in records if r.get("stage") == "analyze" and r.get("status") in ("ran", "skipped")
             and r["meta"].get("K") == preset.get("n_networks") and r.get("output")}
    pres_png = plot_preservation(summary, root / "preservation.png")
    layers_png = plot_layers(files, root / "layers.png")
    massive = []
    for r in records:
        if r.get("stage") == "controls" and r.get("status") in ("ran", "skipped"):
            info = json.loads((Path(r["folder"]) / "controls.json").read_text())
            for m in info["massive_units"]:
                massive.append({"networks of": f"{r['meta']['scope']} K={r['meta']['K']} {r['meta']['variant']}",
                                "unit": m["unit"], "in networks": len(m["network_ids"]),
                                "network ids": ", ".join(map(str, m["network_ids"])),
                                "layers": ", ".join(map(str, m["layers"]))})
    stages: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "seconds": 0.0})
    for r in records:
        stages[r["stage"]]["jobs"] += 1
        stages[r["stage"]]["seconds"] += float(r.get("seconds") or 0.0)
    lines = [f"# Study `{preset['name']}`: {preset['model']} ({preset['path']})", "",
             f"Machine: {_machine()}.", "",
             "Every claim below is computed from the table: a difference counts only when the 95 % intervals are "
             "apart. Count-matched = as many random neurons per layer as the networks; magnitude-matched = the "
             "same counts drawn from the same per-layer quantile bins of the neurons' RMS activation; spared = the "
             "networks without the massive units (top-magnitude units most frequent across networks).", "",
             "## Findings", ""] + (statements(summary) or ["- no finished evaluation yet"]) + [""]
    if files:
        centres = _layer_centres(files)
        lines += ["## Where the networks sit", "", "Mean layer of network neurons: " + "; ".join(
            f"{k}: {v:.2f}" for k, v in sorted(centres.items())) + ". Figure: `layers.png`.", ""]
    if massive:
        lines += ["## Massive units", "", markdown_table(massive), ""]
    cols = [c for c in SUMMARY_COLUMNS if c not in ("unmasked_ci_low", "unmasked_ci_high")]
    lines += ["## All conditions", "", "Paper: Liu et al. 2025 (`fnet/study/paper_tables.json`) where the table has it.",
              "", markdown_table(summary, cols), ""]
    if pres_png:
        lines += ["Preservation curves: `preservation.png`.", ""]
    lines += ["## Wall time", "", markdown_table([{"stage": s, "jobs": v["jobs"], "seconds": round(v["seconds"], 1)}
                                                   for s, v in stages.items()]), ""]
    failed = [r for r in records if r["status"] in ("failed", "blocked", "pending", "excluded")]
    if failed:
        lines += ["## Not finished", "", markdown_table([{"job": r["name"], "status": r["status"]}
                                                          for r in failed]), ""]
    (root / "report.md").write_text("\n".join(lines))
    return {"report": root / "report.md", "summary": root / "summary.csv", "summary_rows": summary,
            "preservation": pres_png, "layers": layers_png}
