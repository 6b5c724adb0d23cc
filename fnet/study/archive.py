"""Carry a study over machines: commit its finished training runs without their checkpoints, restore them elsewhere.

A study that outlasts a machine loses its folder with it. What a finished training run unit (:mod:`fnet.study.units`:
a fine-tuned task and seed with its networks, controls and evaluations) needs for the report is small (results,
per-row predictions, networks); what it does not is big (the fine-tuned checkpoints, 170 MB each for SmolLM2).

    python -m fnet.study smollm2_v2 --archive results/paper_smollm2_v2/study    # after (or while) it runs
    python -m fnet.study smollm2_v2 --restore results/paper_smollm2_v2/study --workers 2 --hours 3   # elsewhere

:func:`archive_units` copies every unit whose jobs are all finished (and every unit it needs too), leaving out
each file over ``max_mb``, the checkpoints, figures and explorer pages (:data:`LEAVE_OUT`) and network sets other
than an analyze job's output (:data:`OTHER_OUTPUTS`); a job folder that
lost files lists each one's size and digest in ``archived.json``, so the job still counts as finished and its
dependents keep their keys (a key covers its inputs' digests, and the study folder only as ``{root}``). A job that
would have to run on an archived-away file fails before it starts and says so. :func:`restore` copies the
archived folders back into a study folder, never over a finished one, and both merge the run log
(``runs.jsonl``) so the report lists every machine that worked on the study.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path
from typing import Sequence

from fnet.cache import atomic_write_text, file_digest
from fnet.study.jobs import ARCHIVED, Job, set_aside
from fnet.study.summary import FINISHED
from fnet.study.units import Unit, units_of

__all__ = ["archive_units", "finished_units", "restore"]

#: left out of an archive whatever their size (listed in ``archived.json`` all the same): checkpoints, and what a
#: job drew for a reader (figures, its explorer page), which the study's report draws again from the results
LEAVE_OUT = ("*.ckpt", "figures/*", "explorer.html")
#: left out unless it is the job's own output: an analyze job's other network sets (with one dataset, ``task``
#: repeats ``all``, its output); the report and the explorer read the output only
OTHER_OUTPUTS = ("networks/*.safetensors",)


def finished_units(jobs: Sequence[Job], records: Sequence[dict]) -> list[Unit]:
    """The plan's training-run units whose jobs are all finished, and whose needed units are too (a unit's jobs
    take inputs from those: restored without them, its keys could not be read)."""
    status = {r["name"]: r["status"] for r in records}
    units = units_of(jobs, "run")
    done = {u.name for u in units if all(status.get(name) in FINISHED for name in u.jobs)}
    by_name = {u.name: u for u in units}

    def whole(unit: Unit, seen: frozenset = frozenset()) -> bool:
        return unit.name in done and all(n in seen or whole(by_name[n], seen | {unit.name}) for n in unit.needs)

    return [u for u in units if whole(u)]


def _left_out(rel: str, size: int, max_bytes: int, output: str | None) -> bool:
    if rel == "job.json":
        return False
    if size > max_bytes or any(fnmatch.fnmatchcase(rel, p) for p in LEAVE_OUT):
        return True
    return rel != output and any(fnmatch.fnmatchcase(rel, p) for p in OTHER_OUTPUTS)


def _copy_job(folder: Path, target: Path, max_bytes: int) -> int:
    """Copy one job folder without what :func:`_left_out` says (listed with their digests); bytes copied."""
    output = json.loads((folder / "job.json").read_text()).get("output")
    left_out, copied = {}, 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(folder).as_posix()
        if rel.endswith(".lock") or rel == "owner.json":
            continue  # a lock or the owner of a running job: nothing a finished job needs
        size = path.stat().st_size
        if _left_out(rel, size, max_bytes, output):
            left_out[rel] = {"bytes": size, "digest": file_digest(path, memo=False)}
            continue
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / rel)
        copied += size
    if left_out:
        note = {
            "files": left_out,
            "max_bytes": max_bytes,
            "left_out": list(LEAVE_OUT + OTHER_OUTPUTS),
            "why": "not committed",
        }
        atomic_write_text(target / ARCHIVED, json.dumps(note, indent=1, sort_keys=True))
    return copied


def _merge_runs(source: Path, target: Path) -> None:
    """Append the run-log lines of ``source`` that ``target`` lacks (each run once, in their order)."""
    if not (source / "runs.jsonl").exists():
        return
    have = (target / "runs.jsonl").read_text().splitlines() if (target / "runs.jsonl").exists() else []
    new = [line for line in (source / "runs.jsonl").read_text().splitlines() if line.strip() and line not in have]
    if new:
        target.mkdir(parents=True, exist_ok=True)
        with open(target / "runs.jsonl", "a") as handle:
            handle.write("".join(line + "\n" for line in new))


def archive_units(
    jobs: Sequence[Job], records: Sequence[dict], root: str | Path, dest: str | Path, *, max_mb: float = 2.0
) -> dict:
    """Copy the finished units of a study folder to ``dest``, without files over ``max_mb``.

    Parameters
    ----------
    jobs : sequence of Job
        The study's plan.
    records : sequence of dict
        Its jobs' records (:func:`fnet.study.scheduler.run_jobs`, a dry run will do): status and folder.
    root, dest : path
        The study folder, and the archive (a committed folder, its layout the study folder's).
    max_mb : float
        Files over this many MB stay behind (default 2: results and the report's networks, at K=10, are
        smaller), and so do :data:`LEAVE_OUT`'s.

    Returns
    -------
    dict
        ``units`` (names archived), ``jobs`` (folders copied now), ``kept`` (already in ``dest``), ``bytes``.
    """
    root, dest = Path(root), Path(dest)
    folder_of = {r["name"]: Path(r["folder"]) for r in records if r.get("folder")}
    units = finished_units(jobs, records)
    copied = kept = size = 0
    for unit in units:
        for name in unit.jobs:
            folder = folder_of[name]
            target = dest / folder.relative_to(root)
            if (target / "job.json").exists():
                kept += 1  # archived before: the same key, so the same job
                continue
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            size += _copy_job(folder, partial, int(max_mb * 2**20))
            partial.rename(target)  # whole or not at all
            copied += 1
    _merge_runs(root, dest)
    return {"units": [u.name for u in units], "jobs": copied, "kept": kept, "bytes": size}


def restore(dest: str | Path, root: str | Path) -> int:
    """Copy an archive's job folders into a study folder, never over a folder it has; the number copied."""
    dest, root = Path(dest), Path(root)
    if not dest.is_dir():
        raise FileNotFoundError(f"--restore {dest}: no such folder (an archive written by --archive)")
    copied = 0
    for record in sorted(dest.glob("*/*/job.json")):
        folder = record.parent
        target = root / folder.relative_to(dest)
        if target.exists():
            try:
                if json.loads((target / "job.json").read_text()).get("status") == "done":
                    continue  # finished here: keep it
            except (OSError, ValueError):
                pass
            set_aside(target)  # an unfinished attempt: set aside, as the runner does
        shutil.copytree(folder, target)
        copied += 1
    _merge_runs(dest, root)
    return copied
