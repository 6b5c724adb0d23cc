"""Adopt a study's finished jobs under a new environment key, when the environment changed in a way the user has
checked does not matter.

A job's folder is named by its content key, and that key covers the environment (:func:`~fnet.study.scheduler.
environment_key`). When the environment key changes, every finished job is redone. That is right when code,
versions or data changed. It is wrong when only the key's recipe changed: studies made before the data part of
the key was content-based (it hashed the data files' modification times) lose every job when the data is
re-provisioned with the same bytes.

:func:`adopt_jobs` moves each finished job to the folder of its new key, only when it is the same job: same
name, entry point, input digests (the content of its inputs), and overrides once the old folders of its inputs
read as their new ones. The old key and the user's reason are kept in ``job.json`` (``adopted``), and a link at
the old folder keeps the paths recorded inside results valid. Nothing is recomputed and nothing is deleted.
Check the claim before you adopt (rerun a few jobs into another root and compare their outputs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from fnet.cache import atomic_write_text
from fnet.study.jobs import set_aside
from fnet.study.scheduler import CODE_ROOT, REPO_ROOT, STAGES, Job, done_record, environment_key, output_of, prepare

__all__ = ["adopt_jobs"]


def _finished_by_name(root: Path) -> dict[str, list[tuple[Path, dict]]]:
    """Every finished job's folder and record in ``root`` (not links, not folders set aside), by job name (a name
    can have several: runs with other settings)."""
    found: dict[str, list[tuple[Path, dict]]] = {}
    for stage in STAGES:
        if not (root / stage).is_dir():
            continue
        for folder in sorted((root / stage).iterdir()):
            if folder.is_symlink() or not folder.is_dir() or ".interrupted-" in folder.name:
                continue
            try:
                record = json.loads((folder / "job.json").read_text())
            except (OSError, ValueError):
                continue
            if record.get("status") == "done":
                found.setdefault(record["name"], []).append((folder, record))
    return found


def _same_job(job: Job, item, folder: Path, record: dict, moved: dict) -> bool:
    """Whether ``record`` (in ``folder``) ran ``item``: same entry, input digests, and overrides once the old
    folders of its inputs (``moved``) and its own read as the new ones."""
    expected = []
    for value in record.get("overrides", []):
        for before, after in sorted(moved.items(), key=lambda kv: -len(kv[0])):
            value = value.replace(before, after)
        expected.append(value.replace(str(folder), str(item.folder)))
    return (
        record.get("entry") == job.entry and record.get("inputs") == item.base["inputs"] and expected == item.overrides
    )


def _adopt_one(
    job: Job, root: Path, env_key: str, reason: str, old: dict, outputs: dict, moved: dict, counts: dict
) -> None:
    """One job: current already, adopted from its old folder, or left (its old record is another job)."""
    item = prepare(job, outputs, root, env_key)
    if done_record(item.folder, item.key, job.output) is not None:
        counts["current"] += 1
        outputs[job.name] = output_of(item.folder, job.output)
        return
    if job.name not in old:
        return
    for folder, record in old[job.name]:
        if _same_job(job, item, folder, record, moved):
            break
    else:
        counts["differ"].append(job.name)
        return
    if item.folder.exists():  # an unfinished attempt under the new key: set aside, like the runner does
        set_aside(item.folder)
    folder.rename(item.folder)
    folder.symlink_to(item.folder.name if folder.parent == item.folder.parent else item.folder)
    adopted = {
        "from_key": record["key"],
        "from_folder": str(folder),
        "reason": reason,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(
        item.folder / "job.json", json.dumps(dict(record, **item.base, status="done", adopted=adopted), indent=1)
    )
    moved[str(folder)] = str(item.folder)
    outputs[job.name] = output_of(item.folder, job.output)
    counts["adopted"] += 1


def adopt_jobs(
    jobs: Sequence[Job],
    root: str | Path,
    *,
    reason: str,
    env_key: str | None = None,
    cwd: str | Path = REPO_ROOT,
    log=print,
) -> dict:
    """Move the finished jobs of ``root`` whose key changed only through the environment to their new folders.

    Parameters
    ----------
    jobs : sequence of Job
        The study's plan (any order: a job is looked at once its inputs are placed).
    root : path
        The study folder.
    reason : str
        Why the environment change does not matter; kept in each adopted ``job.json``.
    env_key : str, optional
        The new environment key (default: :func:`~fnet.study.scheduler.environment_key` of ``cwd``).

    Returns
    -------
    dict
        ``{"adopted": n, "current": n, "differ": [job names whose old record is another job]}``.
    """
    if not reason.strip():
        raise ValueError("adopt_jobs: give the reason the environment change does not matter (reason=...)")
    root = Path(root).resolve()
    env_key = env_key or environment_key(Path(cwd) if (Path(cwd) / "fnet").is_dir() else CODE_ROOT)
    old = _finished_by_name(root)
    outputs: dict[str, Path] = {}
    moved: dict[str, str] = {}  # old folder -> new folder
    counts = {"adopted": 0, "current": 0, "differ": []}
    waiting = list(jobs)
    progress = True
    while progress:  # in dependency order, whatever the order of the plan
        progress = False
        for job in list(waiting):
            if any(d not in outputs for d in job.deps):
                continue
            waiting.remove(job)
            progress = True
            _adopt_one(job, root, env_key, reason, old, outputs, moved, counts)
    log(
        f"[study] adopted {counts['adopted']} finished jobs under the new environment key "
        f"({counts['current']} already current, {len(counts['differ'])} differ and stay)"
    )
    return counts
