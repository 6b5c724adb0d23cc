"""What a study plan will cost, before it runs: CPU hours per stage and task, from measured jobs.

The estimate is only as good as the jobs it is scaled from, so it comes from a committed study's ``jobs.csv`` and
``summary.csv`` (by default the v1 study, ``results/paper_smollm2``: 922 jobs measured on 2-core machines):

* analyze and scale jobs: the median seconds of that study's jobs of the same task and K (a threshold variant
  costs what its K cost; an unknown task or K: the median of its stage);
* evaluate jobs: seconds per scored row of that task in the reference (its unmasked job's rows), times the rows a
  job will score (the task's test split, or ``task.limit``), so longer test sets cost what they should;
* training runs: the preset's ``train_minutes`` per task (from ``bench/results_finetune.md``), else the
  reference's training time.

``python -m fnet.study PRESET --dry-run`` prints it beside the job list.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from fnet.paths import project_root
from fnet.scoring.rows import load_task_rows
from fnet.scoring.splits import fine_tuning_splits
from fnet.study.scheduler import Job
from fnet.study.summary import part_name

__all__ = ["REFERENCE", "estimate", "estimate_lines"]

#: the measured study the estimate scales from: committed in the repository, so an installed fnet (no checkout)
#: has none, and the dry run says so instead of an estimate
REFERENCE = project_root() / "results" / "paper_smollm2"


def _reference(folder: Path) -> tuple[dict, dict]:
    """``(seconds, rows)``: median seconds by (stage, task, K) and (stage, task), and scored rows per task."""
    with open(folder / "jobs.csv", newline="") as handle:
        jobs = list(csv.DictReader(handle))
    with open(folder / "summary.csv", newline="") as handle:
        rows = {r["task"]: int(float(r["n_rows"])) for r in csv.DictReader(handle) if r["condition"] == "unmasked"}
    by: dict[tuple, list[float]] = defaultdict(list)
    for job in jobs:
        if not job["seconds"]:
            continue
        parts, stage = job["name"].split("/"), job["stage"]
        task = parts[2] if stage == "evaluate" else parts[1]
        k = next((p[1:] for p in parts if p[:1] == "K" and p[1:].isdigit()), "")
        for key in ((stage, task, k), (stage, task), (stage,)):
            by[key].append(float(job["seconds"]))
    return {key: statistics.median(values) for key, values in by.items()}, rows


@lru_cache(maxsize=None)
def _test_rows(task: str, path: str) -> int:
    """Rows an evaluation of ``task`` scores without a limit: its fine-tuning test split, or (zero-shot) its
    scored split."""
    if path == "finetune":
        return len(fine_tuning_splits(task)[0]["test"])
    return len(load_task_rows(task, "validation"))


def _limit(job: Job) -> int | None:
    values = [o.split("=", 1)[1] for o in job.overrides if o.startswith("task.limit=")]
    return int(values[-1]) if values and values[-1] not in ("null", "None") else None


def estimate(jobs: Sequence[Job], preset: dict, reference: Path = REFERENCE) -> dict:
    """CPU seconds of every job (``{"jobs": {name: seconds}, "by_stage": ..., "by_task": ..., "hours": total}``).

    Parameters
    ----------
    jobs : sequence of Job
        The plan (:func:`fnet.study.plan.plan`).
    preset : dict
        Its preset (``train_minutes`` per task is read).
    reference : path
        A committed study report folder with ``jobs.csv`` and ``summary.csv``.
    """
    seconds, ref_rows = _reference(Path(reference))
    out: dict[str, float] = {}
    for job in jobs:
        task = job.meta.get("task", "").removesuffix(" (zero-shot)")
        scope = str(job.meta.get("scope", task)).split("/")[0]
        if job.stage == "train":
            minutes = (preset.get("train_minutes") or {}).get(task)
            cost = 60 * float(minutes) if minutes else seconds.get(("train", task), seconds[("train",)])
        elif job.stage in ("analyze", "controls"):
            k = str(job.meta.get("K", ""))
            cost = seconds.get((job.stage, scope, k)) or seconds.get((job.stage, scope)) or seconds[(job.stage,)]
        else:
            path = job.meta.get("path", "finetune")
            label = job.meta.get("task", task)
            per_row = (seconds.get(("evaluate", label)) or seconds[("evaluate",)]) / max(1, ref_rows.get(label, 200))
            rows = _test_rows(task, path)
            limit = _limit(job)
            cost = per_row * (rows if limit is None else min(rows, limit))
        out[job.name] = float(cost)
    by_stage: dict[str, float] = defaultdict(float)
    by_task: dict[str, float] = defaultdict(float)
    for job in jobs:
        by_stage[job.stage] += out[job.name]
        scope = str(job.meta.get("scope", "?")).split("/")[0]
        label = job.meta.get("task") or part_name(scope)
        by_task[str(label)] += out[job.name]
    return {"jobs": out, "by_stage": dict(by_stage), "by_task": dict(by_task), "hours": sum(out.values()) / 3600}


def estimate_lines(jobs: Sequence[Job], preset: dict, reference: Path = REFERENCE) -> list[str]:
    """The dry run's summary: job count and CPU hours, by stage and by task (only the count without a reference)."""
    counts: dict[str, int] = defaultdict(int)
    for job in jobs:
        counts[job.stage] += 1
    if not (Path(reference) / "jobs.csv").is_file():  # an installed fnet: the committed results are not in a wheel
        return [
            f"{len(jobs)} jobs (" + ", ".join(f"{stage}: {n}" for stage, n in counts.items()) + "); no CPU-hour "
            f"estimate: its reference study {reference} is not here (committed in fnet's repository, not part of "
            "an installed package: run from a checkout to see one)"
        ]
    e = estimate(jobs, preset, reference)
    lines = [
        f"{len(jobs)} jobs, about {e['hours']:.1f} CPU-hours (scaled from {reference.name}'s measured jobs; "
        "see fnet.study.estimate)"
    ]
    lines += [f"  {stage:>9}: {counts[stage]:5d} jobs, {hours / 3600:6.1f} h" for stage, hours in e["by_stage"].items()]
    lines += [
        f"  {task:>20}: {hours / 3600:6.1f} h" for task, hours in sorted(e["by_task"].items(), key=lambda kv: -kv[1])
    ]
    return lines
