"""One report for a whole plan, composed from committed study reports, each task taken whole from one of them.

A study folder holds its fine-tuned checkpoints and every job's outputs; what is committed of it (``report.md``,
``summary.csv``, ``effects.csv``, ``jobs.csv``) holds its numbers only. When a plan outlasts a machine and its
folder is lost with it, its tasks end up finished in different folders, each on the model that folder fine-tuned.
:func:`compose_report` writes one report for the plan from those reports:

* each *part* of the plan (a task's fine-tuned path, or its zero-shot path: its evaluate jobs and every job they
  need) comes whole from one source, never mixed, so a task's effects are all on one fine-tuned model;
* a source gives a part only when its ``jobs.csv`` lists every job of the part as finished, and its settings (read
  back from its report) plan the same jobs for the part: names, entry points, overrides, dependencies;
* effects and CIs are the source's own (paired on its rows); the report's tallies are recounted over all parts.

Committed reports keep layer centres, massive units, overlaps and runs only as text, so those are read back from
``report.md``, as :func:`fnet.study.render.render_report` wrote them.
"""

from __future__ import annotations

import ast
import csv
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from fnet.report import markdown_table
from fnet.study.figures import plot_centres
from fnet.study.plan import plan
from fnet.study.preset import PRESET_KEYS
from fnet.study.render import render_report
from fnet.study.report import FINISHED, JOB_COLUMNS, RANDOM_CONDITIONS
from fnet.study.scheduler import Job, code_key
from fnet.study.summary import part_name

__all__ = ["plan_parts", "read_source", "compose_report", "part_name"]


def plan_parts(jobs: Sequence[Job]) -> dict[str, list[Job]]:
    """Each part of a plan (its evaluate jobs' ``task`` label) -> those jobs and every job they need, in plan order."""
    by_name = {j.name: j for j in jobs}
    needs: dict[str, set[str]] = {}
    for job in jobs:
        if job.stage != "evaluate":
            continue
        names = needs.setdefault(job.meta["task"], set())
        todo = [job.name]
        while todo:
            name = todo.pop()
            if name not in names:
                names.add(name)
                todo += by_name[name].deps
    return {part: [j for j in jobs if j.name in names] for part, names in needs.items()}


# --------------------------------------------------------------------------------------------------------------
# Reading a committed report back
# --------------------------------------------------------------------------------------------------------------
def _num(x: str) -> float | None:
    return None if x in ("", None) else float(x)


def _summary_row(r: dict) -> dict:
    out: dict[str, Any] = dict(r)
    out["target"] = r["target"] or None
    out["K"] = int(float(r["K"])) if r["K"] else None
    for c in ("score", "ci_low", "ci_high"):
        out[c] = math.nan if r[c] == "" else float(r[c])
    for c in ("n_masked", "n_kept", "n_neurons", "unmasked", "unmasked_ci_low", "unmasked_ci_high", "chance", "paper"):
        out[c] = _num(r.get(c, ""))
    if (
        out["n_neurons"] is None
        and str(r["condition"]).startswith("preserve")
        and None not in (out["n_masked"], out["n_kept"])
    ):
        out["n_neurons"] = out["n_masked"] + out["n_kept"]  # older reports: a preservation masks all it does not keep
    out["n_rows"] = int(float(r["n_rows"])) if r["n_rows"] else None
    out["n_jobs"] = int(r["n_jobs"])
    out["unmasked_at_chance"] = {"True": True, "False": False}.get(r["unmasked_at_chance"])
    return out


def _effect_row(r: dict) -> dict:
    out: dict[str, Any] = dict(r, target=r["target"] or None, K=int(float(r["K"])) if r["K"] else None)
    for c in ("diff", "ci_low", "ci_high"):
        out[c] = float(r[c])
    for c in ("n_rows", "n_a", "n_b"):
        out[c] = int(r[c])
    # a random control of one seed decides nothing (fnet.study.report.effects); effects.csv keeps its seed counts
    out["one_seed"] = (r["a"] in RANDOM_CONDITIONS and out["n_a"] < 2) or (
        r["b"] in RANDOM_CONDITIONS and out["n_b"] < 2
    )
    return out


def _section(text: str, heading: str) -> list[str]:
    """The lines under ``## heading`` up to the next ``## `` heading."""
    lines = text.splitlines()
    try:
        start = lines.index(f"## {heading}") + 1
    except ValueError:
        return []
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def _table(lines: Sequence[str]) -> list[dict]:
    """The first markdown table in ``lines`` (as :func:`fnet.report.markdown_table` writes it) as rows."""
    rows = [line for line in lines if line.startswith("|")]
    if len(rows) < 2:
        return []
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    return [dict(zip(cells[0], r)) for r in cells[2:]]


def _settings(lines: Sequence[str], folder: Path) -> dict:
    """The preset a report was made with, from its Settings lines (``- key: `value```); keys it leaves out were
    empty (the report skips None, [] and {})."""
    found = {}
    for line in lines:
        if line.startswith("- ") and ": `" in line:
            key, _, value = line[2:].partition(": `")
            value = value[:-1] if value.endswith("`") else value
            try:
                found[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                found[key] = value  # a bare override such as ica.standardize=true
    if "model" not in found:
        raise ValueError(f"{folder / 'report.md'}: no Settings section to read the study's preset from")
    unknown = sorted(set(found) - set(PRESET_KEYS))
    if unknown:
        raise ValueError(f"{folder / 'report.md'}: unknown settings {unknown}; valid keys: {sorted(PRESET_KEYS)}")
    empty = {list: [], dict: {}}
    return {k: found.get(k, empty.get(type(v))) for k, v in PRESET_KEYS.items()}


def _centres(lines: Sequence[str]) -> dict[str, float]:
    text = next((line for line in lines if line.startswith("Mean layer of network neurons: ")), "")
    text = text.removeprefix("Mean layer of network neurons: ").split(". Figure:")[0].rstrip(".")
    return {k: float(v) for k, _, v in (item.rpartition(": ") for item in text.split("; ") if item)}


def read_source(folder: str | Path) -> dict:
    """A committed study report read back: ``settings`` (its preset), typed ``summary`` and ``effects`` rows,
    ``jobs`` rows, ``machines``, ``codes`` (the code keys of its ``Code:`` line; [] when it records none),
    ``centres``, ``massive`` rows, ``overlap`` lines and ``runs`` lines."""
    folder = Path(folder)
    files = {name: folder / name for name in ("report.md", "summary.csv", "effects.csv", "jobs.csv")}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a committed study report: it lacks {missing} (a study's report "
            "folder holds report.md, summary.csv, effects.csv and jobs.csv)"
        )
    text = files["report.md"].read_text()

    def rows(name: str) -> list[dict]:
        with open(files[name], newline="") as handle:
            return list(csv.DictReader(handle))

    machines = next(
        (line[len("Machines: ") :].rstrip(".") for line in text.splitlines() if line.startswith("Machines: ")),
        "not recorded",
    )
    code_line = next((line for line in text.splitlines() if line.startswith("Code: ")), "")
    wall = _section(text, "Wall time")
    runs_at = next((i for i, line in enumerate(wall) if line.startswith("Runs of the study command")), None)
    runs = []
    if runs_at is not None:
        runs = wall[runs_at : runs_at + 2] + [line for line in wall[runs_at + 2 :] if line.startswith("|")]
    return {
        "folder": folder,
        "settings": _settings(_section(text, "Settings"), folder),
        "summary": [_summary_row(r) for r in rows("summary.csv")],
        "effects": [_effect_row(r) for r in rows("effects.csv")],
        "jobs": rows("jobs.csv"),
        "machines": machines,
        "codes": re.findall(r"`([0-9a-f]+)`", code_line),
        "centres": _centres(_section(text, "Where the networks sit")),
        "massive": _table(_section(text, "Massive units")),
        "overlap": [
            line[2:] for line in _section(text, "Magnitude-matched draws inside the networks") if line.startswith("- ")
        ],
        "runs": runs,
    }


# --------------------------------------------------------------------------------------------------------------
# Composing
# --------------------------------------------------------------------------------------------------------------
def _same_jobs(ours: Sequence[Job], theirs: Sequence[Job]) -> str | None:
    """Why two plans' jobs of one part differ (first difference), or None."""
    mine, other = {j.name: j for j in ours}, {j.name: j for j in theirs}
    if set(mine) != set(other):
        extra, lacking = sorted(set(other) - set(mine)), sorted(set(mine) - set(other))
        return " and ".join(
            ([f"its plan has {len(extra)} other jobs ({extra[:3]})"] if extra else [])
            + ([f"its plan lacks {len(lacking)} of the plan's jobs ({lacking[:3]})"] if lacking else [])
        )
    for name, job in mine.items():
        for field in ("stage", "entry", "overrides", "deps", "output"):
            if getattr(job, field) != getattr(other[name], field):
                return f"job {name}: {field} {getattr(other[name], field)} here, {getattr(job, field)} in the plan"
    return None


def _settings_diff(preset: dict, settings: dict) -> str:
    """The settings a source's report and the plan differ in (``seeds: 2 in its report, 3 in the plan``)."""
    keys = [k for k in PRESET_KEYS if k != "name" and settings.get(k) != preset.get(k)]
    return ", ".join(f"{k}: {settings.get(k)!r} in its report, {preset.get(k)!r} in the plan" for k in keys)


def _assign(
    parts: dict[str, list[Job]], sources: Sequence[tuple[dict, list[str] | None]], preset: dict | None = None
) -> dict:
    """Part -> source: first the parts each source is asked for, then, in order, every part a source given
    without parts finished that none gave before. A part no source gave is an error that says, per source, why
    it did not (the jobs it did not finish, or the settings it ran with)."""
    taken: dict[str, dict] = {}
    passed: dict[str, list[str]] = {}  # part -> why each source given without parts did not give it
    asked = [(s, w) for s, w in sources if w is not None] + [(s, w) for s, w in sources if w is None]
    for source, wanted in asked:
        folder = source["folder"]
        theirs = plan_parts(plan(source["settings"]))
        finished = {r["name"] for r in source["jobs"] if r["status"] in FINISHED}
        unknown = sorted(set(wanted or []) - set(parts))
        if unknown:
            raise ValueError(f"--compose {folder}: {unknown} are not parts of the plan; valid parts: {sorted(parts)}")
        for part in wanted if wanted is not None else parts:
            if part in taken and wanted is None:
                continue
            if part in taken:
                raise ValueError(f"part {part!r} is asked of {taken[part]['folder']} and of {folder}; take it from one")
            lacking = [j.name for j in parts[part] if j.name not in finished]
            why = _same_jobs(parts[part], theirs.get(part, []))  # other settings say more than unfinished jobs
            if why and preset is not None and (differ := _settings_diff(preset, source["settings"])):
                why = f"{why}; settings that differ: {differ}"
            lacking = lacking if not why else []
            not_finished = (
                f"{folder} finished {len(parts[part]) - len(lacking)} of its {len(parts[part])} jobs "
                f"(not {lacking[:3]}{'...' if len(lacking) > 3 else ''})"
            )
            if wanted is None and (lacking or why):  # not complete there: another source may have it
                passed.setdefault(part, []).append(not_finished if lacking else f"{folder} ran other settings ({why})")
                continue
            if lacking:
                raise ValueError(f"part {part!r}: {not_finished}; a part is taken whole or not at all")
            if why:
                raise ValueError(f"part {part!r}: {folder} ran other settings ({why})")
            taken[part] = source
    left = sorted(set(parts) - set(taken))
    if left:
        reasons = "".join(
            f"\n  - {part}: " + "; ".join(passed.get(part) or ["no source was given for it"]) for part in left
        )
        raise ValueError(
            f"no source finished the parts {left} with the plan's settings: add a study report folder "
            f"that did, or leave those tasks out of the preset (e.g. 'tasks=[...]'):{reasons}"
        )
    return taken


def _check_code(read: Sequence[tuple[dict, Any]], code: str, accept_code: Sequence[str], any_code: bool) -> None:
    """Refuse a source made by other code than ``code`` (unless its key is in ``accept_code``), or one that records
    no code, unless ``any_code``."""
    if any_code:
        return
    for source, _ in read:
        folder, theirs = source["folder"], source["codes"]
        if not theirs:
            raise ValueError(
                f"{folder} records no code version (its report.md has no Code: line; it was made before study "
                f"reports recorded one), so it cannot be checked against this checkout's code `{code}`; if its "
                "numbers are still what this code computes, pass --any-code to compose from it anyway"
            )
        other = [k for k in theirs if k != code and k not in accept_code]
        if other:
            raise ValueError(
                f"{folder} was made by code `{other[0]}`, this checkout is code `{code}` (fnet's sources, entry points "
                "or configs differ, so its numbers may not be what this code computes); check that the change does "
                f"not matter, then pass --accept-code {other[0]} (or --any-code to take any code)"
            )


def _codes(used: Sequence[dict], rel: dict, code: str, accept_code: Sequence[str]) -> list[tuple[str | None, str]]:
    """The composed report's code keys, each with the sources made by it (this checkout's code first); none when
    no source recorded one."""
    if not any(s["codes"] for s in used):
        return []
    by_key: dict[str | None, list[str]] = {}
    for s in used:
        for key in s["codes"] or [None]:
            by_key.setdefault(key, []).append(rel[id(s)])
    order = sorted(by_key, key=lambda k: (k != code, k is None))

    def note(key: str | None) -> str:
        if key == code:
            return ""
        return ", accepted with --accept-code" if key in accept_code else ", accepted with --any-code"

    return [(key, ", ".join(by_key[key]) + note(key)) for key in order]


def _gather(parts: dict[str, list[Job]], taken: dict, rel: dict) -> tuple[list, list, list, dict, list, list]:
    """Each part's rows from its source: summary and effect rows, job rows (with ``part`` and ``source``), and the
    layer centres, massive units and overlap lines of the networks the part analyzed."""
    summary, effect_rows, job_rows, centres, massive, overlap = [], [], [], {}, [], []
    listed: set[tuple[str, str]] = set()
    for part in parts:
        src = taken[part]
        name = rel[id(src)]
        summary += [r for r in src["summary"] if r["task"] == part]
        effect_rows += [e for e in src["effects"] if e["task"] == part]
        by_name = {r["name"]: r for r in src["jobs"]}
        for job in parts[part]:
            if (job.name, name) not in listed:
                listed.add((job.name, name))
                job_rows.append({**by_name[job.name], "part": part, "source": name})
        scopes = {j.meta["scope"] for j in parts[part] if j.stage == "analyze"}
        centres.update({k: v for k, v in src["centres"].items() if k.rsplit(" ", 1)[0] in scopes})
        massive += [
            m for m in src["massive"] if m.get("networks of", "").split(" K=")[0] in scopes and m not in massive
        ]
        overlap += [line for line in src["overlap"] if line.split(" K=")[0] in scopes and line not in overlap]
    return summary, effect_rows, job_rows, centres, massive, overlap


def _sources_lines(
    used: Sequence[dict],
    parts: dict[str, list[Job]],
    taken: dict,
    rel: dict,
    job_rows: Sequence[dict],
    codes: Sequence[tuple[str | None, str]],
) -> list[str]:
    """The Sources section: how the report was composed, and a table of each source's tasks, jobs, job hours and
    machines (and code keys, when the report records any: ``codes``)."""

    def hours(s: dict) -> float:
        return sum(float(r["seconds"] or 0) for r in job_rows if r["source"] == rel[id(s)]) / 3600

    table = [
        {
            "tasks": ", ".join(p for p in parts if taken[p] is s),
            "from": f"[{rel[id(s)]}]({rel[id(s)]}/report.md)",
            "jobs": sum(r["source"] == rel[id(s)] for r in job_rows),
            "job hours": round(hours(s), 2),
            "machines": s["machines"],
            **({"code": ", ".join(f"`{k}`" for k in s["codes"]) or "not recorded"} if codes else {}),
        }
        for s in used
    ]
    return [
        "## Sources",
        "",
        f"No single study folder holds every job of this plan, so this report is composed from "
        f"{len(used)} committed study reports (`python -m fnet.study PRESET --compose FOLDER ...`). Each "
        "task is taken whole from one folder that finished all of its jobs with these settings (checked "
        "against the plan: the same jobs, overrides and dependencies), never mixed: its effects and CIs "
        "are that folder's, paired on its rows and its fine-tuned model. The tallies under What holds are "
        "counted over all tasks. Tasks from different folders ran on different machines, and fine-tuning "
        "on CPU is not bit-identical across machines: compare numbers across tasks with that in mind. "
        "Each source's `layers.png` shows how its networks spread over the layers; this report's shows "
        "the mean layers read back from them.",
        "",
        markdown_table(table),
        "",
    ]


def compose_report(
    preset: dict,
    sources: Sequence[tuple[str | Path, Sequence[str] | None]],
    out: str | Path,
    *,
    code: str | None = None,
    accept_code: Sequence[str] = (),
    any_code: bool = False,
) -> dict:
    """Write one report for ``preset``'s whole plan into ``out``, each part taken whole from one source.

    Parameters
    ----------
    preset : dict
        The study preset (:func:`fnet.study.preset.load_preset`) whose plan the report covers.
    sources : list of (folder, parts or None)
        Committed study report folders, in order of preference, each with the parts to take from it (names as
        :func:`part_name` reads them), or None: every part it finished that no earlier source gave.
    out : path
        Where ``report.md``, ``summary.csv``, ``effects.csv``, ``jobs.csv`` (with each job's ``source``) and the
        figures go.
    code : str, optional
        The code key every source must record (its ``Code:`` line): default this checkout's
        (:func:`fnet.study.scheduler.code_key`). A source made by other code is refused, naming both keys.
    accept_code : list of str
        Other code keys to take sources of (the user checked that the change does not matter).
    any_code : bool
        Take sources of any code, also those that record none (reports made before the Code: line existed).

    Returns
    -------
    dict
        :func:`fnet.study.render.render_report`'s paths and rows, and ``parts``: part -> source folder.
    """
    out = Path(out)
    jobs = plan(preset)
    parts = plan_parts(jobs)
    read = [
        (read_source(folder), None if wanted is None else [part_name(p) for p in wanted]) for folder, wanted in sources
    ]
    code = code or code_key()
    _check_code(read, code, list(accept_code), any_code)
    taken = _assign(parts, read, preset)
    out.mkdir(parents=True, exist_ok=True)
    rel = {id(s): str(os.path.relpath(s["folder"], out)) for s, _ in read}  # each source as the report links it
    summary, effect_rows, job_rows, centres, massive, overlap = _gather(parts, taken, rel)
    used = [s for s, _ in read if any(t is s for t in taken.values())]
    codes = _codes(used, rel, code, list(accept_code))
    sources_lines = _sources_lines(used, parts, taken, rel, job_rows, codes)
    runs_lines = []
    for s in used:
        runs_lines += [f"Runs that made `{rel[id(s)]}` (all of its jobs, not only the tasks taken here):", ""]
        runs_lines += s["runs"] + [""]
    paths = render_report(
        out,
        preset=preset,
        summary=summary,
        effect_rows=effect_rows,
        jobs=job_rows,
        centres=centres,
        massive=massive,
        overlap=overlap,
        machines="; ".join(f"{rel[id(s)]}: {s['machines']}" for s in used),
        runs_lines=runs_lines,
        layers_png=plot_centres(centres, out / "layers.png"),
        title=f"# Study `{preset['name']}`: {preset['model']} ({preset['path']}), composed from "
        f"{len(used)} study reports",
        sources_lines=sources_lines,
        job_columns=JOB_COLUMNS + ["part", "source"],
        codes=codes,
    )
    return {**paths, "parts": {p: taken[p]["folder"] for p in parts}}
