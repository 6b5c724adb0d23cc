"""A study's tables and findings -> ``report.md``, ``summary.csv``, ``effects.csv``, ``jobs.csv`` and
``preservation.png``.

:func:`render_report` only lays out what it is given, so a report written from a study folder's jobs
(:func:`write_report`) and one composed from committed study folders
(:func:`fnet.study.compose.compose_report`) read the same way and make the same statements.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from fnet.report import markdown_table
from fnet.study.explorer import csv_table, write_study_explorer
from fnet.study.figures import layer_centres, plot_layers, plot_preservation
from fnet.study.report import (
    EFFECT_COLUMNS,
    FINISHED,
    JOB_COLUMNS,
    SUMMARY_COLUMNS,
    chance_tasks,
    effects,
    headline,
    ids_text,
    load_results,
    normalisation,
    paper_tables,
    statements,
    summarize,
    whole_counts,
)
from fnet.study.runlog import machines_line, read_runs, runs_table
from fnet.study.scheduler import code_key

__all__ = ["render_report", "write_report", "paper_for", "INTRO"]

INTRO = (
    "Every claim below is computed from the numbers. An effect counts only when the 95 % CI of its paired "
    "difference with the control excludes zero: both are scored on the same held-out rows, the rows are "
    "resampled (2,000 bootstrap replicates) and so are a random control's seeds. Count-matched = as many "
    "random neurons per layer as the networks; magnitude-matched = the same counts drawn from the same "
    "per-layer quantile bins of the neurons' RMS activation; spared = the networks without the massive "
    "units (top-magnitude units most frequent across networks). Scores carry their own 95 % CI (Wilson "
    "for accuracy, bootstrap otherwise; random controls: mean over seeds, t interval). A massive unit "
    "lies far above the rest of its layer's top decile, so the magnitude-matched control (decile bins) "
    "rarely draws one: the spared lesions and single-unit lesions, not that control, test how much of an "
    "effect the massive units carry."
)
#: what a study report's code key covers (its ``Code:`` line)
CODE_COVERS = "fnet's sources, entry points and configs that every finished job here ran with: the code part of its key"
_ONE_TRAINING_RUN = (
    " Each fine-tuned task's effects are those of one fine-tuned model (one training run): the CIs "
    "cover held-out rows and control seeds, not training runs, and fine-tuning on CPU is not "
    "bit-identical across CPU models (see Machines)."
)


def paper_for(preset: dict) -> tuple[str | None, dict | None]:
    """The paper's model whose numbers stand beside the study's (the preset's model if the paper studied it,
    else GPT-2 for a fine-tuned study, for orientation), and its tables."""
    models = paper_tables()["models"]
    name = (
        preset.get("model") if preset.get("model") in models else ("gpt2" if preset.get("path") == "finetune" else None)
    )
    return name, models.get(name) if name else None


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _wall_time(jobs: Sequence[dict]) -> list[str]:
    stages: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "done": 0, "seconds": 0.0})
    for r in jobs:
        stages[r["stage"]]["jobs"] += 1
        stages[r["stage"]]["done"] += r.get("status") in FINISHED
        seconds = r.get("seconds")
        stages[r["stage"]]["seconds"] += 0.0 if seconds in (None, "") else float(seconds)
    return [
        "Seconds summed over jobs (with several workers, jobs overlap):",
        "",
        markdown_table(
            [
                {"stage": s, "jobs": v["jobs"], "done": v["done"], "job seconds": round(v["seconds"])}
                for s, v in stages.items()
            ]
        ),
        "",
    ]


def _not_finished(jobs: Sequence[dict]) -> list[str]:
    failed = [r for r in jobs if r["status"] in ("failed", "blocked", "pending", "excluded")]
    if not failed:
        return []
    left: dict[tuple, int] = defaultdict(int)
    for r in failed:
        left[(r.get("part") or "", r["stage"], r["status"])] += 1
    return (
        [
            "## Not finished",
            "",
            f"{len(failed)} of {len(jobs)} jobs. Rerun the study command to continue "
            "(finished jobs are skipped); `jobs.csv` lists every job.",
            "",
            markdown_table([{"task": t, "stage": st, "status": s, "jobs": n} for (t, st, s), n in left.items()]),
            "",
        ]
        + [f"- failed: {r['name']} ({r.get('why')})" for r in failed if r["status"] == "failed"]
        + [""]
    )


def render_report(
    out: str | Path,
    *,
    preset: dict,
    summary: Sequence[dict],
    effect_rows: Sequence[dict],
    jobs: Sequence[dict],
    centres: dict[str, float],
    massive: Sequence[dict],
    overlap: Sequence[str],
    machines: str,
    runs_lines: Sequence[str],
    layers_png: Path | None,
    title: str | None = None,
    sources_lines: Sequence[str] = (),
    job_columns: Sequence[str] = JOB_COLUMNS,
    codes: Sequence[tuple[str | None, str]] = (),
) -> dict:
    """Write the report and its tables into ``out``.

    Parameters
    ----------
    summary, effect_rows : list of dict
        :func:`fnet.study.report.summarize` and :func:`fnet.study.report.effects` rows.
    jobs : list of dict
        Every job of the plan (``name``, ``stage``, ``status``, ``key``, ``seconds``, ``finished``; ``part``, the
        task it belongs to, and ``why`` for the unfinished-jobs section).
    centres : dict
        Mean layer of the networks' neurons, by ``"<scope> <variant>"``.
    massive, overlap : list
        Massive-unit table rows and magnitude-matched-overlap lines.
    machines, runs_lines
        The Machines line and the runs table's lines.
    layers_png : Path or None
        The figure of where the networks sit, if drawn.
    title, sources_lines
        A composed report's title and its section on where each task's numbers come from.
    codes : list of (str or None, str)
        The code keys (:func:`fnet.study.scheduler.code_key`) the jobs ran with, each with what it covers: the
        ``Code:`` line, which :func:`fnet.study.compose.read_source` reads back (None: not recorded). Empty: no line.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paper_model, paper = paper_for(preset)
    for name, rows, columns in (
        ("summary.csv", summary, SUMMARY_COLUMNS),
        ("effects.csv", effect_rows, EFFECT_COLUMNS),
        ("jobs.csv", jobs, job_columns),
    ):
        _write_csv(out / name, rows, columns)
    pres_png = plot_preservation(
        summary,
        out / "preservation.png",
        paper=paper,
        paper_name=paper_model,
        same_model=paper_model == preset.get("model"),
    )
    lines = _head_lines(preset, title, machines, codes, sources_lines)
    lines += _findings_lines(summary, effect_rows, centres)
    lines += _networks_lines(centres, layers_png, massive, overlap)
    lines += _tables_lines(preset, paper_model, summary, effect_rows)
    if pres_png:
        lines += ["Preservation curves: `preservation.png`.", ""]
    lines += ["## Wall time", ""] + _wall_time(jobs) + list(runs_lines) + _not_finished(jobs)
    (out / "report.md").write_text("\n".join(lines))
    return {
        "report": out / "report.md",
        "summary": out / "summary.csv",
        "effects": out / "effects.csv",
        "summary_rows": summary,
        "effect_rows": effect_rows,
        "preservation": pres_png,
        "layers": layers_png,
    }


def _head_lines(
    preset: dict,
    title: str | None,
    machines: str,
    codes: Sequence[tuple[str | None, str]],
    sources_lines: Sequence[str],
) -> list[str]:
    """The title, Machines and Code lines, the introduction, a composed report's Sources and the Settings."""
    lines = [
        title or f"# Study `{preset['name']}`: {preset['model']} ({preset['path']})",
        "",
        f"Machines: {machines}.",
        "",
    ]
    if codes:
        lines += [
            "Code: " + "; ".join((f"`{key}`" if key else "not recorded") + f" ({what})" for key, what in codes) + ".",
            "",
        ]
    lines += [INTRO + _ONE_TRAINING_RUN * (preset.get("path") == "finetune"), ""]
    lines += list(sources_lines)
    lines += (
        [
            "## Settings",
            "",
            "Preset `conf/study/" + preset["name"] + ".yaml` (held-out rows scored per job: `n_rows`):",
            "",
        ]
        + [f"- {k}: `{v}`" for k, v in preset.items() if v not in (None, [], {})]
        + [""]
    )
    return lines


def _findings_lines(summary: Sequence[dict], effect_rows: Sequence[dict], centres: dict[str, float]) -> list[str]:
    """What holds (the tallies), raw vs variance-normalised networks where both ran, and the Findings."""
    lines = ["## What holds", ""] + (headline(summary, effect_rows) or ["- no finished comparison yet"]) + [""]
    norm = normalisation(effect_rows, centres, chance_tasks(summary))
    if norm:
        lines += ["## Raw vs variance-normalised networks", ""] + norm + [""]
    lines += ["## Findings", ""] + (statements(summary, effect_rows) or ["- no finished evaluation yet"]) + [""]
    return lines


def _networks_lines(
    centres: dict[str, float], layers_png: Path | None, massive: Sequence[dict], overlap: Sequence[str]
) -> list[str]:
    """Where the networks sit, their massive units, and the magnitude-matched draws that fell inside them."""
    lines: list[str] = []
    if centres:
        figure = f" Figure: `{layers_png.name}`." if layers_png else ""
        lines += [
            "## Where the networks sit",
            "",
            "Mean layer of network neurons: "
            + "; ".join(f"{k}: {v:.2f}" for k, v in sorted(centres.items()))
            + "."
            + figure,
            "",
        ]
    if massive:
        lines += ["## Massive units", "", markdown_table(list(massive)), ""]
    if overlap:
        lines += (
            [
                "## Magnitude-matched draws inside the networks",
                "",
                "Where the networks' union fills a layer, its magnitude-matched draw cannot avoid it and is drawn "
                "among all of the layer's neurons (same counts, same bins); such controls are closer to the "
                "networks than elsewhere:",
                "",
            ]
            + [f"- {line}" for line in overlap]
            + [""]
        )
    return lines


def _tables_lines(
    preset: dict, paper_model: str | None, summary: Sequence[dict], effect_rows: Sequence[dict]
) -> list[str]:
    """The All conditions table (with where its paper column comes from) and the Paired differences table."""
    cols = [
        c
        for c in SUMMARY_COLUMNS
        if c not in ("unmasked_ci_low", "unmasked_ci_high") and any(r.get(c) not in (None, "") for r in summary)
    ]  # e.g. n_neurons, absent from older reports
    if paper_model == preset.get("model"):
        source = "Liu et al. 2025 (`fnet/study/paper_tables.json`) where the table has it."
    elif paper_model:
        source = (
            f"the paper did not study {preset.get('model')}: its column holds Liu et al. 2025's {paper_model} "
            "numbers (fine-tuned, Tables 4, 5, 8), for orientation only, never as a target."
        )
    else:
        source = f"the paper did not study {preset.get('model')}: no column."
    lines = [
        "## All conditions",
        "",
        f"Paper: {source}",
        "",
        markdown_table([whole_counts(r) for r in summary], cols),
        "",
    ]
    if effect_rows:
        lines += [
            "## Paired differences",
            "",
            "`a - b` on the same rows (`effects.csv`).",
            "",
            markdown_table(list(effect_rows), EFFECT_COLUMNS),
            "",
        ]
    return lines


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------
def _controls_info(records: Sequence[dict]) -> tuple[list[dict], list[str]]:
    """The massive units of every scale job (a table row each) and where magnitude-matched draws fell inside the
    networks (a line per control and layers, seeds listed; from each evaluate job's mask)."""
    massive, seeds_of = [], defaultdict(list)
    for r in records:
        m = r.get("meta") or {}
        if r.get("status") not in FINISHED:
            continue
        if r.get("stage") == "controls":
            info = json.loads((Path(r["folder"]) / "controls.json").read_text())
            massive += [
                {
                    "networks of": f"{m['scope']} K={m['K']} {m['variant']}",
                    "unit": u["unit"],
                    "in networks": len(u["network_ids"]),
                    "network ids": ids_text(u["network_ids"], int(m["K"])),
                    "layers": ", ".join(map(str, u["layers"])),
                }
                for u in info["massive_units"]
            ]
        elif m.get("condition") in ("magnitude", "preserve_magnitude"):
            mask = json.loads((Path(r["folder"]) / "result.json").read_text()).get("mask") or {}
            layers = tuple((mask.get("meta") or {}).get("overlap_layers") or ())
            if layers:
                key = (m.get("scope"), m.get("K"), m.get("variant", "raw"), f"magnitude/{m.get('target') or 'all'}")
                seeds_of[key + (layers,)].append(str(m.get("seed")))
    overlap = [
        f"{scope} K={K} {variant}, {control} (seeds {', '.join(seeds)}): layers {list(layers)}"
        for (scope, K, variant, control, layers), seeds in seeds_of.items()
    ]
    return massive, overlap


def write_report(
    root: str | Path,
    *,
    preset: dict,
    records: Sequence[dict],
    out: str | Path | None = None,
    n_boot: int = 2000,
    code: str | None = None,
) -> dict:
    """Write ``report.md``, ``summary.csv``, ``effects.csv``, ``jobs.csv``, ``preservation.png``, ``layers.png``
    and ``explorer.html`` (:mod:`fnet.study.explorer`) into ``out`` (default: the study folder ``root``).
    ``code``: the code key the jobs' keys were computed with (default: this checkout's,
    :func:`fnet.study.scheduler.code_key`), recorded as the ``Code:`` line."""
    root = Path(root)
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(load_results(records), paper_for(preset)[1])
    effect_rows = effects(summary, n_boot=n_boot)
    jobs = [
        {
            "name": r["name"],
            "stage": r["stage"],
            "status": r["status"],
            "key": r.get("key"),
            "seconds": r.get("seconds"),
            "finished": r.get("finished"),
            "why": r.get("why"),
            "part": r["meta"].get("task") or r["meta"].get("scope") or "",
        }
        for r in records
    ]
    files = {
        f"{r['meta']['scope']} {r['meta']['variant']}": str(Path(r["folder"]) / r["output"])
        for r in records
        if r.get("stage") == "analyze"
        and r.get("status") in ("ran", "skipped")
        and r["meta"].get("K") == preset.get("n_networks")
        and r.get("output")
    }
    massive, overlap = _controls_info(records)
    runs = read_runs(root)
    paths = render_report(
        out,
        preset=preset,
        summary=summary,
        effect_rows=effect_rows,
        jobs=jobs,
        centres=layer_centres(files) if files else {},
        massive=massive,
        overlap=overlap,
        machines=machines_line(runs),
        runs_lines=runs_table(runs),
        layers_png=plot_layers(files, out / "layers.png"),
        codes=[(code or code_key(), CODE_COVERS)],
    )
    paths["explorer"] = write_study_explorer(
        out,
        preset=preset,
        records=records,
        effect_rows=effect_rows,
        figures=[paths["preservation"], paths["layers"]],
        title=f"Study {preset['name']}: {preset['model']}",
        tables=[
            csv_table("summary", "All conditions (summary.csv)", summary, SUMMARY_COLUMNS),
            csv_table("effects", "Paired differences (effects.csv)", effect_rows, EFFECT_COLUMNS),
        ],
    )
    with open(paths["report"], "a") as handle:  # a composed report (render_report alone) has no explorer
        handle.write(
            "\n\nThe figures and tables with a card per network (what it responds to, what lesioning it "
            "costs): `explorer.html`, one self-contained page; open it in a browser.\n"
        )
    return paths
