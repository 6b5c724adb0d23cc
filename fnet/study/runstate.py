"""The bookkeeping of one run of the study's runner (:func:`fnet.study.scheduler.run_jobs`): a job prepared once its
inputs exist (:func:`prepare`: its key, folder and resolved overrides), and :class:`RunState`, which jobs wait,
are queued, were skipped, ran or failed, and the run's result.

Split from :mod:`fnet.study.scheduler` to keep each module near 500 lines: what the run knows here, how its job
processes are started and stopped there.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

from fnet.cache import atomic_write_text
from fnet.owner import FolderOwned, own
from fnet.study.jobs import (
    ARCHIVED,
    Job,
    done_record,
    finished_output,
    job_key,
    machine,
    output_digest,
    output_of,
    slug,
)

__all__ = ["Ready", "RunState", "prepare"]


def _resolve(job: Job, outputs: dict[str, Path], folder: Path) -> list[str]:
    values = {name: str(path) for name, path in outputs.items()}
    values["out"] = str(folder)
    out = []
    for item in job.overrides:
        for name, value in values.items():
            item = item.replace("{" + name + "}", value)
        out.append(item)
    return out


@dataclass
class Ready:
    """A job whose inputs exist, with its key, folder, resolved overrides and record (:func:`prepare`)."""

    job: Job
    key: str
    folder: Path
    overrides: list[str]
    base: dict


def prepare(job: Job, outputs: dict[str, Path], root: Path, env_key: str) -> Ready:
    """``job`` with its inputs' ``outputs`` resolved: its key, its folder under ``root`` and its record."""
    digests = {d: output_digest(outputs[d]) for d in job.deps}
    # the key reads the study folder as {root}: a study copied or restored elsewhere keeps its keys
    keyed = [item.replace(str(root), "{root}") for item in _resolve(job, outputs, Path("{out}"))]
    key = job_key(job, keyed, digests, env_key)
    folder = root / job.stage / f"{slug(job.name.split('/', 1)[-1])}-{key}"
    overrides = _resolve(job, outputs, folder)
    base = {
        "name": job.name,
        "stage": job.stage,
        "key": key,
        "folder": str(folder),
        "meta": job.meta,
        "entry": job.entry,
        "overrides": overrides,
        "inputs": digests,
    }
    return Ready(job, key, folder, overrides, base)


@functools.cache
def _machine() -> str:
    """This machine in words (:func:`fnet.study.jobs.machine`), read once: every finished job records it."""
    return machine()


def _batch_group(job: Job) -> tuple:
    """evaluate.py jobs of one task on one model (its first dependency: the checkpoint, or none) share a process."""
    return tuple(job.entry), job.meta.get("task"), tuple(job.deps[:1])


class RunState:
    """The state of one :func:`fnet.study.scheduler.run_jobs` call: what is waiting, queued, running and finished.

    Parameters
    ----------
    jobs : Sequence of Job
        The jobs, dependencies first (their order is the order they start in).
    root : pathlib.Path
        The study's folder.
    env_key : str
        The environment part of every job's key.
    only : str or Collection of str, optional
        A stage's name, or the names of the jobs this run may start (None: all).
    dry_run : bool
        Queue nothing: a job not done is pending.
    """

    def __init__(
        self, jobs: Sequence[Job], root: Path, env_key: str, only: str | Collection[str] | None, dry_run: bool
    ):
        self.jobs, self.root, self.env_key, self.only, self.dry_run = list(jobs), root, env_key, only, dry_run
        self.outputs: dict[str, Path] = {}
        self.records: dict[str, dict] = {}
        self.status: dict[str, str] = {}
        self.waiting = list(jobs)
        self.queue: list[Ready] = []
        self.order = {job.name: i for i, job in enumerate(jobs)}

    def not_run(self, job: Job, state: str) -> dict:
        return {
            "name": job.name,
            "stage": job.stage,
            "status": state,
            "meta": job.meta,
            "waiting_for": [d for d in job.deps if d not in self.outputs],
        }

    def settle(self) -> None:
        """Move every job whose dependencies are settled out of ``waiting``: skipped, queued, or not run."""
        changed = True
        while changed:
            changed, still = False, []
            for job in self.waiting:
                if any(self.status.get(d) in ("failed", "blocked") for d in job.deps):
                    self.status[job.name] = "blocked"
                    self.records[job.name] = self.not_run(job, "blocked")
                elif any(d not in self.outputs for d in job.deps):
                    still.append(job)
                    continue
                else:
                    self.settle_ready(prepare(job, self.outputs, self.root, self.env_key))
                changed = True
            self.waiting = still
        self.queue.sort(key=lambda i: self.order[i.job.name])

    def included(self, job: Job) -> bool:
        """Whether ``only`` lets this run start ``job`` (a stage's name, or a collection of job names)."""
        if self.only is None:
            return True
        return job.stage == self.only if isinstance(self.only, str) else job.name in self.only

    def settle_ready(self, item: Ready) -> None:
        job = item.job
        record = done_record(item.folder, item.key, job.output)
        if record is not None:
            self.outputs[job.name] = finished_output(item.folder, job.output)
            self.status[job.name] = "skipped"
            self.records[job.name] = dict(record, status="skipped", folder=str(item.folder))
        elif self.dry_run or not self.included(job):
            self.status[job.name] = "pending" if self.dry_run else "excluded"
            self.records[job.name] = dict(item.base, status=self.status[job.name])
        elif missing := [d for d in job.deps if not self.outputs[d].exists()]:
            self.status[job.name] = "failed"
            folder = self.outputs[missing[0]].parent
            while not (folder / ARCHIVED).exists() and folder != self.root:
                folder = folder.parent
            self.records[job.name] = dict(
                item.base,
                status="failed",
                why=f"it needs the output of {missing[0]}, which was archived without it ({folder / ARCHIVED}): "
                f"put the file back, or delete {folder} to redo {missing[0]} and every job that needs it",
            )
        else:
            self.status[job.name] = "queued"
            self.queue.append(item)

    def finish(self, item: Ready, rc: int, seconds: float, batched: bool, log) -> None:
        job, folder = item.job, item.folder
        produced = output_of(folder, job.output)
        marker = None
        if batched:  # the batch process wrote the marker of each job it finished
            marker = done_record(folder, item.key, job.output)
        elif rc == 0 and produced is not None:
            marker = dict(
                item.base,
                status="done",
                machine=_machine(),
                seconds=seconds,
                output=str(produced.relative_to(folder)),
                finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
            )
            atomic_write_text(folder / "job.json", json.dumps(marker, indent=1))  # the marker: written last
        if marker is None:
            why = f"exit code {rc}" if rc != 0 else f"no output {job.output!r} (or more than one)"
            failed = folder / "failed.json"
            try:  # failed.json goes only into a folder no other process writes
                held = own(folder, record=False)
            except FolderOwned as err:
                held, why = None, f"not run: {err}"
            detail = json.loads(failed.read_text()) if held is not None and failed.exists() else {}
            logs = [p for p in (folder / "job.log", folder / "evaluate.log") if p.exists()]
            tail = logs[0].read_text(errors="replace")[-2000:] if logs else ""
            record = dict(item.base, status="failed", why=detail.get("error") or why, seconds=seconds, log_tail=tail)
            if held is not None:
                with held:
                    atomic_write_text(failed, json.dumps(record, indent=1))
            log(f"[study] FAILED {job.name} ({record['why']}); log: {logs[0] if logs else folder}")
            self.status[job.name] = "failed"
            self.records[job.name] = record
            return
        self.outputs[job.name] = produced
        self.status[job.name] = "ran"
        self.records[job.name] = dict(marker, status="ran")

    def next_units(self, batch: int) -> list[Ready]:
        """The next job to start, with the ready evaluate jobs that share its process (up to ``batch``)."""
        first = self.queue.pop(0)
        if batch <= 1 or first.job.entry != ["evaluate.py"]:
            return [first]
        units = [first] + [i for i in self.queue if _batch_group(i.job) == _batch_group(first.job)][: int(batch) - 1]
        for i in units[1:]:
            self.queue.remove(i)
        return units

    def result(self, deadline: float | None) -> dict:
        for item in self.queue:  # ready, but the deadline came first
            self.records[item.job.name] = dict(item.base, status="pending")
        for job in self.waiting:  # dependencies never done (dry run, --only, failed, deadline): pending or blocked
            state = "blocked" if any(self.status.get(d) in ("failed", "blocked") for d in job.deps) else "pending"
            self.records[job.name] = self.not_run(job, state)
        ordered = [self.records[job.name] for job in self.jobs]
        counts = {
            s: sum(1 for r in ordered if r["status"] == s)
            for s in ("skipped", "ran", "failed", "blocked", "pending", "excluded")
        }
        left = bool(self.queue or self.waiting)
        return {
            "jobs": ordered,
            "counts": counts,
            "deadline_reached": left and deadline is not None and time.time() >= deadline,
        }
