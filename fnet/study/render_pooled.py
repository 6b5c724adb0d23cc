"""A v2 study's report: ``report.md``, ``summary.csv`` (per run and pooled), ``effects.csv`` (per run and pooled,
with corrected p values), ``runs.csv`` (every training run and where it ran), figures a reader looks at first and
``explorer.html`` (:mod:`fnet.study.explorer`).

:func:`write_pooled_report` is what ``python -m fnet.study`` writes for a preset with training runs
(``training_runs``); the statistics are :mod:`fnet.study.pooled`'s, the layout is here.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Sequence

from fnet.report import markdown_table
from fnet.study.explorer import csv_table, write_study_explorer
from fnet.study.figures import (
    layer_profiles,
    plot_layer_profiles,
    plot_lesion_effects,
    plot_preservation_panels,
    run_count,
)
from fnet.study.pooled import (
    POOLED_COLUMNS,
    POOLED_EFFECT_COLUMNS,
    claims,
    mechanisms,
    pool,
    pooled_summary,
    run_effects,
    run_summary,
)
from fnet.study.preset import preset_dir
from fnet.study.render import paper_for
from fnet.study.report import FINISHED, load_results
from fnet.study.runlog import machines_line, read_runs, run_at, runs_table
from fnet.study.summary import paper_value, part_name

__all__ = ["write_pooled_report", "RUN_COLUMNS"]

RUN_COLUMNS = ["task", "run", "seed", "machine", "cpu", "code", "train_seconds", "finished", "unmasked", "metric"]

FAMILY = (
    "Each comparison is tested twice: its mean over runs (a one-sample t test on the runs' effects, which "
    "generalises to a new training run) and every run on its own (the partial conjunction of the runs' own "
    "tests: twice the largest of their one-sided p values, each from the run's bootstrap SD, so it is small only "
    "when each run shows the effect; fnet.study.stats). The family is both tests of every pooled comparison in "
    "`effects.csv` (all-networks lesions against the unmasked model and each random control, zero against mean "
    "ablation, spared and single-unit lesions, preservation against its controls and the as-published masking): "
    "{m} p values corrected together ({correction}); the corrected interval of the mean is the Bonferroni "
    "interval of that family. "
    '"Kept" is claimed only from the two one-sided tests (TOST) of the unmasked-minus-preserved score '
    "against a margin of ±{margin:g} (of the mean, or of every run), corrected over their own family ({k} "
    "tests); a non-significant loss is never called kept."
)


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _runs(records: Sequence[dict], per_run: Sequence[dict], code: str, log: Sequence[dict] = ()) -> list[dict]:
    """One row per training run: its seed, machine and CPU, code version, training time and unmasked score. A
    train record without its machine (written before records kept it) takes the machine and code of the study
    command's run it finished in (``runs.jsonl``, :func:`fnet.study.runlog.run_at`)."""
    unmasked = {(r["task"], r["run"]): r for r in per_run if r["condition"] == "unmasked"}
    rows = []
    for rec in records:
        m = rec.get("meta") or {}
        if rec.get("stage") != "train" or rec.get("status") not in FINISHED:
            continue
        score = unmasked.get((m.get("task"), m.get("run", 0))) or {}
        during = run_at(log, rec.get("finished")) or {}
        where = rec.get("machine") or during.get("machine") or "not recorded"
        cpu = re.search(r"\(([^()]*kernels)\)", where)  # the CPU's signature and kernel level (jobs.machine)
        rows.append(
            {
                "task": m.get("task"),
                "run": m.get("run", 0),
                "seed": m.get("run", 0),
                "machine": where,
                "cpu": rec.get("cpu") or (cpu.group(1) if cpu else "not recorded"),
                "code": (during.get("environment") or {}).get("code") or code,
                "train_seconds": rec.get("seconds"),
                "finished": rec.get("finished"),
                "unmasked": score.get("score"),
                "metric": score.get("metric"),
            }
        )
    return rows


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:+.{digits}f}" if isinstance(x, float) else str(x)


def _paper_difference(paper: dict | None, c: dict) -> float | None:
    """The paper's ``a - b`` for a pooled comparison, where it reports both conditions (raw networks only)."""
    if not paper:
        return None
    a, b = (paper_value(paper, c["task"], cond, c["target"], c["K"], c["variant"]) for cond in (c["a"], c["b"]))
    return None if a is None or b is None else round(a - b, 3)


def _networks(c: dict) -> str:
    return (
        c["variant"] + ("" if c["target"] in (None, "all") else f" {c['target']}") + (f" K={c['K']}" if c["K"] else "")
    )


# What holds is listed under the study's five questions (issue "Study v2, run"), in their order.
QUESTIONS = (
    "Networks against random neurons matched in count and in magnitude (Tables 4-5 analogues)",
    "What the massive-activation units carry (spared, single-unit and massive-included lesions, mean ablation)",
    "Keeping only the networks (Table 8 analogue)",
    "Raw vs variance-normalised networks",
    "Zero-shot (Tables 6-7 analogues)",
)
MATCHED = {("unmasked", "lesion"), ("count", "lesion"), ("magnitude", "lesion")}


def _question(c: dict) -> int:
    """The index in QUESTIONS a comparison answers: zero-shot and normalised networks first, by what they ran on."""
    if "zero-shot" in c["task"]:
        return 4
    if c["variant"] == "normalised":
        return 3
    if "preserve" in c["a"] or "preserve" in c["b"]:
        return 2
    return 0 if (c["a"], c["b"]) in MATCHED else 1


def _claim_line(c: dict, ref: float | None) -> str:
    """One comparison as a statement, with the paper's ``a - b`` (``ref``) where it reports one."""
    if c["verdict"].startswith("not shown"):  # listed only where the paper reports the effect
        return (
            f"- Not shown here: {c['task']}, {_networks(c)} networks, {c['a']} − {c['b']}: the paper reports "
            f"{ref:+.3f}; pooled {c['diff']:+.3f} [{c['ci_low_corrected']:+.3f}, {c['ci_high_corrected']:+.3f}], "
            f"on its own in {c['runs_holding']} of {run_count(c['n_runs'])}."
        )
    agrees = "" if ref is None else (
        f"; paper {ref:+.3f}, "
        + ("the same direction" if (ref > 0) == (c["diff"] > 0) and "kept" not in c["verdict"] else
           "**the opposite direction**" if "kept" not in c["verdict"] else "which it reports as a loss")
    )  # fmt: skip
    return (
        f"- {c['task']}, {_networks(c)} networks: {c['a']} − {c['b']} = {c['diff']:+.3f} "
        f"[{c['ci_low_corrected']:+.3f}, {c['ci_high_corrected']:+.3f}]: **{c['verdict']}**; on its own in "
        f"{c['runs_holding']} of {run_count(c['n_runs'])}{agrees}."
    )


def _claim_lines(verdicts: Sequence[dict], paper: dict | None, summary: Sequence[dict]) -> list[str]:
    """What holds, as statements: tasks at chance named first (no claim), then, under each of the issue's questions,
    every comparison with a verdict (its effect, corrected interval, runs holding on their own, and the paper's
    ``a - b`` with whether it agrees) and every paper effect this study does not show; last, how many comparisons
    show nothing."""
    unmasked = {r["task"]: r for r in summary if r.get("run") == "pooled" and r.get("condition") == "unmasked"}
    lines = []
    for task in sorted({c["task"] for c in verdicts if c["verdict"] == "no claim: task at chance"}):
        u = unmasked.get(task, {})
        lines.append(
            f"- **{task}**: the unmasked model is at chance ({u.get('metric', 'score')} {_fmt(u.get('score'))} "
            f"pooled over runs, interval [{_fmt(u.get('ci_low'))}, {_fmt(u.get('ci_high'))}], chance "
            f"{_fmt(u.get('chance'))}): it makes no claim."
        )
    with_ref = [(c, _paper_difference(paper, c)) for c in verdicts if not c["verdict"].startswith("no claim")]
    listed = [(c, ref) for c, ref in with_ref if ref is not None or not c["verdict"].startswith("not shown")]
    for q, question in enumerate(QUESTIONS):
        group = sorted(
            (x for x in listed if _question(x[0]) == q), key=lambda x: x[0]["verdict"].startswith("not shown")
        )
        if group:  # its claims, then the paper's effects it does not show
            lines += ([""] if lines else []) + [f"**{question}**", ""] + [_claim_line(c, ref) for c, ref in group]
    quiet = sum(1 for c in verdicts if c["verdict"].startswith("not shown"))
    lines += ["", f"- {quiet} of {len(verdicts)} comparisons show nothing after correction (all in the table below)."]
    return lines


def _holds_table(verdicts: Sequence[dict], paper: dict | None) -> list[str]:
    rows = []
    for c in verdicts:
        if str(c["target"]).startswith("net"):
            continue  # per-network results are per run (networks differ between runs): see Mechanisms
        rows.append(
            {
                "task": c["task"],
                "networks": _networks(c),
                "comparison": f"{c['a']} − {c['b']}",
                "pooled effect [corrected CI]": f"{c['diff']:+.3f} [{c['ci_low_corrected']:+.3f}, "
                f"{c['ci_high_corrected']:+.3f}]",
                "p mean (adj.)": f"{c['p_adjusted']:.3g}",
                "p every run (adj.)": f"{c['p_all_runs_adjusted']:.3g}",
                "runs holding": f"{c['runs_holding']} of {c['n_runs']}",
                "paper": _fmt(_paper_difference(paper, c)),
                "verdict": c["verdict"],
            }
        )
    return [markdown_table(rows)] if rows else ["- no finished comparison yet"]


def write_pooled_report(
    root: str | Path, *, preset: dict, records: Sequence[dict], out: str | Path | None = None, n_boot: int = 2000
) -> dict:
    """Write the v2 report of the study folder ``root`` (its jobs' ``records``) into ``out`` (default ``root``).

    Returns
    -------
    dict
        The paths written (``report``, ``summary``, ``effects``, ``runs``, figures) and the pooled claims.
    """
    root = Path(root)
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    paper_model, paper = paper_for(preset)
    rows = load_results(records)
    per_run = run_summary(rows, paper)
    pooled_rows = pooled_summary(per_run)
    summary = per_run + pooled_rows
    effects = run_effects(per_run, n_boot=n_boot)
    correction, margin = preset.get("correction") or "holm", float(preset.get("margin") or 0.02)
    pooled = pool([e for e in effects if not str(e["target"]).startswith("net")], correction=correction, margin=margin)
    verdicts = claims(pooled, summary)
    runs_log = read_runs(root)
    code = next((r.get("environment", {}).get("code") for r in reversed(runs_log) if r.get("environment")), None)
    runs = _runs(records, per_run, code or "not recorded", runs_log)
    _write_csv(out / "summary.csv", summary, POOLED_COLUMNS)
    _write_csv(
        out / "effects.csv", [dict(e, run=e["run"]) for e in effects] + verdicts, POOLED_EFFECT_COLUMNS + ["verdict"]
    )
    _write_csv(out / "runs.csv", runs, RUN_COLUMNS)
    lesion_png = plot_lesion_effects(verdicts, out / "lesion_effects.png")
    pres_png = plot_preservation_panels(
        summary,
        out / "preservation.png",
        paper=paper,
        paper_name=paper_model,
        same_model=paper_model == preset.get("model"),
    )
    profiles = layer_profiles(_network_files(records, preset))
    layers_png = plot_layer_profiles(profiles, out / "layers.png")
    description = _description(records, preset)
    lines = _head_lines(preset, description, runs_log, correction, margin, verdicts, paper, summary, records)
    figures = [p.name for p in (lesion_png, pres_png, layers_png) if p]
    if figures:
        lines += ["Figures: " + ", ".join(f"`{f}`" for f in figures) + ".", ""]
    lines += [
        "The same figures and tables, with a card per network (what it responds to, what lesioning it costs): "
        "`explorer.html`, one self-contained page; open it in a browser.",
        "",
    ]
    lines += _plan_lines(preset, records)
    lines += _layer_lines(profiles, verdicts)
    lines += _mechanism_lines(mechanisms(records, effects))
    lines += ["## Training runs", "", markdown_table(runs, RUN_COLUMNS) if runs else "- none finished yet", ""]
    lines += ["## Settings", "", f"Preset `conf/study/{preset['name']}.yaml`:", ""]
    lines += [f"- {k}: `{v}`" for k, v in preset.items() if v not in (None, [], {})] + [""]
    lines += ["## All conditions (per run and pooled)", "", markdown_table(summary, POOLED_COLUMNS), ""]
    lines += ["## Wall time", ""] + runs_table(runs_log)
    (out / "report.md").write_text("\n".join(lines))
    explorer = write_study_explorer(
        out,
        preset=preset,
        records=records,
        effect_rows=effects,
        figures=[lesion_png, pres_png, layers_png],
        title=f"Study {preset['name']}: {description}",
        meta=[("machines", machines_line(runs_log))],
        tables=[
            csv_table(
                "claims", "What holds (pooled over runs, corrected)", verdicts, POOLED_EFFECT_COLUMNS + ["verdict"]
            ),
            csv_table("runs", "Training runs (runs.csv)", runs, RUN_COLUMNS),
            csv_table("summary", "All conditions, per run and pooled (summary.csv)", summary, POOLED_COLUMNS),
        ],
    )
    return {
        "report": out / "report.md",
        "summary": out / "summary.csv",
        "effects": out / "effects.csv",
        "runs": out / "runs.csv",
        "figures": figures,
        "claims": verdicts,
        "explorer": explorer,
    }


def _network_files(records: Sequence[dict], preset: dict) -> dict[tuple[str, int, str], str]:
    """Every training run's raw and normalised networks at the preset's K, by ``(task, run, variant)``."""
    return {
        (part_name(str(r["meta"]["scope"]).split("/")[0]), int(r["meta"].get("run") or 0), r["meta"]["variant"]): str(
            Path(r["folder"]) / r["output"]
        )
        for r in records
        if r.get("stage") == "analyze"
        and r.get("status") in FINISHED
        and r.get("output")
        and r["meta"].get("K") == preset.get("n_networks")
        and r["meta"].get("variant") in ("raw", "normalised")
    }


def _layer_lines(profiles: dict, verdicts: Sequence[dict]) -> list[str]:
    """The raw-vs-normalised section: per task and variant, where the networks sit (mean layer over runs and its
    range), how many neurons they hold, and what lesioning them all costs (pooled, with its verdict)."""
    if not profiles:
        return []
    lesion = {
        (c["task"], c["variant"]): c
        for c in verdicts
        if (c["a"], c["b"]) == ("unmasked", "lesion") and c["target"] in (None, "all")
    }
    rows = []
    for (task, variant), p in sorted(profiles.items()):
        c = lesion.get((task, variant))
        top = [float(s[-3:].sum()) for s in p["shares"]]
        rows.append(
            {
                "task": task,
                "networks": variant,
                "runs": len(p["runs"]),
                "mean layer [runs' range]": f"{sum(p['centres']) / len(p['centres']):.1f} "
                f"[{min(p['centres']):.1f}, {max(p['centres']):.1f}]",
                "share in the last 3 layers": f"{sum(top) / len(top):.2f}",
                "neurons": round(sum(p["neurons"]) / len(p["neurons"])),
                "unmasked − lesion (pooled)": "n/a" if c is None else f"{c['diff']:+.3f}",
                "verdict": "n/a" if c is None else c["verdict"],
            }
        )
    return [
        "## Raw vs normalised networks: where they sit, what their lesions do",
        "",
        "Per task, the K networks of each training run (raw ICA, and ICA on variance-normalised neurons): their mean "
        "layer (mean over runs, the runs' range in brackets), the share of their neurons in the last three layers, "
        "their size, and the pooled effect of lesioning them all (`layers.png` draws the profiles).",
        "",
        markdown_table(rows),
        "",
    ]


def _description(records: Sequence[dict], preset: dict) -> str:
    """The model as the first finished evaluate job describes it (its provenance), else the preset's name of it."""
    return (
        next(
            (
                json.loads((Path(r["folder"]) / "result.json").read_text())
                .get("provenance", {})
                .get("model_description")
                for r in records
                if r.get("stage") == "evaluate" and r.get("status") in FINISHED
            ),
            None,
        )
        or preset["model"]
    )


def _head_lines(
    preset: dict,
    description: str,
    runs_log: Sequence[dict],
    correction: str,
    margin: float,
    verdicts: Sequence[dict],
    paper: dict | None,
    summary: Sequence[dict] = (),
    records: Sequence[dict] = (),
) -> list[str]:
    """The title, the Machines line, whether the plan is finished, how effects are pooled and corrected, What holds
    and its table."""
    kept_family = sum(1 for c in verdicts if c.get("p_tost_adjusted") is not None)
    return (
        [
            f"# Study `{preset['name']}`: {description} ({preset['path']})",
            "",
            f"Machines: {machines_line(runs_log)}.",
            "",
        ]
        + _interim_lines(records)
        + [
            "Every effect is measured per training run (paired on that run's held-out rows, rows and control seeds "
            "resampled) and pooled over runs (mean of the runs' effects, t interval over runs): a claim holds only "
            "when a corrected p value is below 0.05, and the table says in how many runs it holds on its own (its "
            "own 95 % interval, uncorrected). A verdict `a > b` rests on the mean over runs; `a > b in each of the n "
            "runs` on every run on its own, when the runs agree in direction but differ too much in size for "
            "the mean's interval with n - 1 degrees of freedom. The paper's column is its `a − b` where it "
            "reports both (Liu et al. 2025, another model: a direction to compare, not a value).",
            "",
            FAMILY.format(correction=correction, m=2 * len(verdicts), margin=margin, k=2 * kept_family),
            "",
            "## What holds",
            "",
        ]
        + _claim_lines(verdicts, paper, summary)
        + ["", "### Every pooled comparison", ""]
        + _holds_table(verdicts, paper)
        + [""]
    )


def _interim_lines(records: Sequence[dict]) -> list[str]:
    """A banner while the plan is unfinished: how many jobs and training runs are done, and that claims may change."""
    left = [r for r in records if r.get("status") not in FINISHED]
    if not left:
        return []
    trains = [r for r in records if r.get("stage") == "train"]
    done = sum(1 for r in trains if r.get("status") in FINISHED)
    return [
        f"**Interim report**: {len(records) - len(left)} of {len(records)} jobs finished ({done} of {len(trains)} "
        "training runs); the plan's other runs and tasks are not in it yet, and its claims and their corrections "
        "(the family grows with every comparison) may change.",
        "",
    ]


def _plan_lines(preset: dict, records: Sequence[dict]) -> list[str]:
    """Plan and cost: why the expensive parts run where they do (the preset file's header, where it has one) and
    the CPU hours its finished jobs took, by stage (a job's seconds; one job per core)."""
    path = preset_dir() / f"{preset['name']}.yaml"
    header = []
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            if not line[1:].strip().startswith("python "):  # its usage lines: the README gives the commands
                header.append(line[1:].strip())
    done = [r for r in records if r.get("status") in FINISHED and r.get("seconds") is not None]
    by_stage: dict[str, float] = {}
    for r in done:
        by_stage[r["stage"]] = by_stage.get(r["stage"], 0.0) + float(r["seconds"])
    lines = ["## Plan and cost", ""]
    if header:
        lines += [f"From `conf/study/{path.name}`:", "", "> " + " ".join(header), ""]
    lines += [
        f"Finished: {len(done)} of {len(records)} jobs, {sum(by_stage.values()) / 3600:.1f} CPU-hours ("
        + ", ".join(f"{stage} {seconds / 3600:.1f}" for stage, seconds in sorted(by_stage.items()))
        + f"); `python -m fnet.study {preset['name']} --dry-run` estimates the whole plan, "
        "`bench/results_study.md` sets the finished training runs beside their estimate.",
        "",
    ]
    return lines


def _mechanism_lines(mech: Sequence[dict]) -> list[str]:
    """The Mechanisms section (:func:`fnet.study.pooled.mechanisms`); none when no network hurt more than its
    control."""
    if not mech:
        return []
    return (
        ["## Mechanisms: single-network lesions by shared massive units", ""]
        + [
            f"- {m['task']} run {m['run']} ({m['variant']}): {len(m['networks'])} networks hurt more than their "
            f"count-matched control, {len(m['groups'])} distinct "
            f"{'mechanism' if len(m['groups']) == 1 else 'mechanisms'} (groups sharing a massive unit): "
            + "; ".join("[" + ", ".join(g) + "]" for g in m["groups"])
            for m in mech
        ]
        + [""]
    )
