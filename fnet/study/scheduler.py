"""The jobs of a study and the runner of them: content-hashed folders, done-markers, dependencies, workers.

A :class:`Job` is one run of an entry point of the repository with Hydra overrides and dependencies.
:func:`run_jobs` runs jobs as subprocesses (``sys.executable``, cwd = the repository root), a job as soon as its
dependencies are done, ``workers`` at once; ready ``evaluate.py`` jobs of one task and model share a process
(``batch``, :mod:`fnet.pipelines.evaluate_batch`). Resuming: a job's folder is named by :func:`job_key`, and its
``job.json`` is written last, only after the job's output exists (see :mod:`fnet.study.cli`). A job folder has one
owner at a time (:mod:`fnet.owner`): the job process holds its lock while it runs and dies with the runner, and a
rerun sets an unfinished folder aside only once no process of the earlier run holds it, so a runner killed with
SIGKILL and restarted at once never has two processes writing one job folder.

Written here rather than taken from a workflow tool (snakemake, luigi): the jobs are a few hundred local commands
whose identity is fnet's own content key, and a study must run where only fnet's pinned dependencies are. On a
cluster, :mod:`fnet.study.dispatch` submits parts of the plan through submitit, each running this runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

from fnet.cache import atomic_write_text, file_digest
from fnet.owner import RUNNER_ENV, FolderOwned, own
from fnet.study.jobs import (
    CODE_ROOT,
    ENTRY_MODULES,
    REPO_ROOT,
    STAGES,
    Job,
    code_key,
    cpu_signature,
    done_record,
    environment_key,
    environment_parts,
    job_key,
    machine,
    output_of,
    slug,
)

__all__ = ["Job", "OWNED", "OWNER_WAIT", "Ready", "STAGES", "code_key", "environment_key", "environment_parts", "job_key", "machine", "cpu_signature",
           "prepare", "done_record", "output_of", "run_jobs", "summary_lines"]

# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------
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
    digests = {d: file_digest(outputs[d]) for d in job.deps}
    key = job_key(job, _resolve(job, outputs, Path("{out}")), digests, env_key)
    folder = root / job.stage / f"{slug(job.name.split('/', 1)[-1])}-{key}"
    overrides = _resolve(job, outputs, folder)
    base = {"name": job.name, "stage": job.stage, "key": key, "folder": str(folder), "meta": job.meta,
            "entry": job.entry, "overrides": overrides, "inputs": digests}
    return Ready(job, key, folder, overrides, base)


#: seconds a runner waits for a process of an earlier run to let go of a job folder (such a process dies with its
#: runner, so it is gone at once on Linux and within a second elsewhere)
OWNER_WAIT = 60.0
#: the exit status of ``python -m fnet.owner`` when the folder is owned by another live process
_OWNED_EXIT = 75


def _claim(item: Ready, log) -> bool:
    """Make ``item``'s folder fresh for this run; False when the job turns out to be done. A folder left by an
    earlier run is set aside (nothing finished is lost) once no process of that run still owns it
    (:func:`fnet.owner.own`: a worker of a runner killed with SIGKILL dies with it, and this waits for that); a
    batch worker of that run may have finished the job meanwhile. Raises :class:`fnet.owner.FolderOwned` when the
    folder is still owned after :data:`OWNER_WAIT` seconds."""
    folder = item.folder
    if folder.exists():
        with own(folder, wait=OWNER_WAIT, log=lambda line: log(f"[study] {item.job.name}: {line}"), record=False):
            if done_record(folder, item.key, item.job.output) is not None:
                return False
            aside = folder.with_name(f"{folder.name}.interrupted-{int(time.time())}")
            while aside.exists():
                aside = aside.with_name(aside.name + "_")
            folder.rename(aside)
    folder.mkdir(parents=True)
    return True


def _child_env(workers: int) -> dict:
    """The jobs' environment: with several workers and no OMP_NUM_THREADS of the user's, the cores are shared;
    ``$FNET_RUNNER_PID`` tells a job process whose death it must not outlive (:func:`fnet.owner.die_with_runner`);
    ``$PYTHONPATH`` starts with the folder of the fnet the runner imported, so every job (also one started from
    another working folder) runs the code whose key names its folder."""
    env = dict(os.environ)
    if workers > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    env[RUNNER_ENV] = str(os.getpid())
    env["PYTHONPATH"] = os.pathsep.join([str(CODE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                           if p and p != str(CODE_ROOT)])
    return env


#: the job processes now running (so an interrupted runner can stop them)
_RUNNING: set = set()
_RUNNING_LOCK = threading.Lock()


def _call(argv: list[str], **kwargs) -> int:
    """``subprocess.run(argv).returncode``, with the process registered in :data:`_RUNNING` while it runs. The job
    process stays in the runner's process group and dies with the runner (:mod:`fnet.owner`)."""
    proc = subprocess.Popen(argv, **kwargs)
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
    try:
        return proc.wait()
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)


def _stop_running(log) -> None:
    """Terminate every running job process (their folders are set aside and redone on the next run; a batch's
    finished jobs keep their markers)."""
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if procs:
        log(f"[study] interrupted: stopped {len(procs)} running job process(es); rerun to continue")


#: the return code of a job that did not run because a process of an earlier run still owns its folder
OWNED = -_OWNED_EXIT


def _run_one(item: Ready, python: str, cwd: Path, env: dict, log) -> list[tuple[Ready, int, float, bool]]:
    """One job in its own process, which owns the job's folder (``python -m fnet.owner FOLDER -- COMMAND``)."""
    try:
        if not _claim(item, log):
            return [(item, 0, 0.0, True)]  # finished by an earlier run's process: its marker is there
    except FolderOwned:
        return [(item, OWNED, 0.0, False)]
    entry = item.job.entry
    command = [python, *(["-m", ENTRY_MODULES[entry[0]]] if entry[0] in ENTRY_MODULES else entry[:1]), *entry[1:],
               *item.overrides]
    if item.job.entry[0].endswith(".py"):
        command.append(f"hydra.run.dir={item.folder}")
    log(f"[study] run {item.job.name}: {' '.join(command[1:])}")
    started = time.time()
    with open(item.folder / "job.log", "w") as handle:
        rc = _call([python, "-m", "fnet.owner", str(item.folder), "--", *command], cwd=str(cwd), env=env,
                   stdout=handle, stderr=subprocess.STDOUT)
    return [(item, OWNED if rc == _OWNED_EXIT else rc, time.time() - started, False)]


def _batch_group(job: Job) -> tuple:
    """evaluate.py jobs of one task on one model (its first dependency: the checkpoint, or none) share a process."""
    return tuple(job.entry), job.meta.get("task"), tuple(job.deps[:1])


def _run_batch(items: list[Ready], python: str, cwd: Path, env: dict, log, root: Path):
    """evaluate.py jobs in one process (fnet.pipelines.evaluate_batch), which owns each job's folder in turn and
    writes its marker."""
    settled, todo = [], []
    for item in items:
        try:
            (todo if _claim(item, log) else settled).append((item, 0, 0.0, True))
        except FolderOwned:
            settled.append((item, OWNED, 0.0, False))
    items = [item for item, *_ in todo]
    if not items:
        return settled
    batches = root / "batches"
    batches.mkdir(exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{items[0].key[:8]}"
    spec = batches / f"{stem}.json"
    spec.write_text(json.dumps({"jobs": [{"folder": str(i.folder), "overrides": i.overrides, "marker": i.base}
                                         for i in items]}, indent=1))
    log(f"[study] run {len(items)} evaluate jobs in one process ({items[0].job.name} ...); log: {spec.with_suffix('.log')}")
    started = time.time()
    with open(spec.with_suffix(".log"), "w") as handle:
        rc = _call([python, "-m", "fnet.pipelines.evaluate_batch", str(spec)], cwd=str(cwd), env=env,
                   stdout=handle, stderr=subprocess.STDOUT)
    seconds = (time.time() - started) / len(items)
    return settled + [(item, rc, seconds, True) for item in items]


class _Run:
    """The state of one :func:`run_jobs` call: what is waiting, queued, running and finished."""

    def __init__(self, jobs: Sequence[Job], root: Path, env_key: str, only: str | Collection[str] | None,
                 dry_run: bool):
        self.jobs, self.root, self.env_key, self.only, self.dry_run = list(jobs), root, env_key, only, dry_run
        self.outputs: dict[str, Path] = {}
        self.records: dict[str, dict] = {}
        self.status: dict[str, str] = {}
        self.waiting = list(jobs)
        self.queue: list[Ready] = []
        self.order = {job.name: i for i, job in enumerate(jobs)}

    def not_run(self, job: Job, state: str) -> dict:
        return {"name": job.name, "stage": job.stage, "status": state, "meta": job.meta,
                "waiting_for": [d for d in job.deps if d not in self.outputs]}

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
            self.outputs[job.name] = output_of(item.folder, job.output)
            self.status[job.name] = "skipped"
            self.records[job.name] = dict(record, status="skipped", folder=str(item.folder))
        elif self.dry_run or not self.included(job):
            self.status[job.name] = "pending" if self.dry_run else "excluded"
            self.records[job.name] = dict(item.base, status=self.status[job.name])
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
            marker = dict(item.base, status="done", seconds=seconds, output=str(produced.relative_to(folder)),
                          finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
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
        counts = {s: sum(1 for r in ordered if r["status"] == s)
                  for s in ("skipped", "ran", "failed", "blocked", "pending", "excluded")}
        left = bool(self.queue or self.waiting)
        return {"jobs": ordered, "counts": counts,
                "deadline_reached": left and deadline is not None and time.time() >= deadline}


def run_jobs(jobs: Sequence[Job], root: str | Path, *, only: str | Collection[str] | None = None,
             dry_run: bool = False, python: str = sys.executable, cwd: str | Path = REPO_ROOT,
             env_key: str | None = None, log=print, workers: int = 1, batch: int = 1,
             deadline: float | None = None) -> dict:
    """Run ``jobs``, skipping finished ones; returns ``{"jobs": [records], "counts": {...}}``.

    A job starts as soon as its dependencies are done, in the order of ``jobs`` (so a preset's first task is
    finished first); ``workers`` jobs run at once. ``batch`` > 1: up to that many ready ``evaluate.py`` jobs with
    the same inputs run in one process (:mod:`fnet.pipelines.evaluate_batch`: the model is loaded once); each
    still has its own folder, result and marker. ``only``: run only jobs of that stage (earlier stages must be
    done; their outputs are used), or only the jobs so named (a submitted unit of :mod:`fnet.study.dispatch`: the
    others must be done). ``dry_run``: say what would run, run nothing. ``deadline`` (a ``time.time()``
    value): start no job after it; running jobs finish, the rest stay pending (a session's or an allocation's
    wall-clock budget; rerun to continue). Every record: name, stage, status (done | skipped | ran | failed |
    blocked | pending | excluded), key, folder, seconds; the result's ``deadline_reached`` says whether jobs were
    left for that reason.

    Parameters
    ----------
    jobs : Sequence of Job
        The jobs, dependencies first.
    root : str or pathlib.Path
        The study's folder (one subfolder per job).
    only : str, optional
        Run only jobs of this stage.
    dry_run : bool
        Say what would run, run nothing (default False).
    python : str
        The interpreter jobs run with (default ``sys.executable``).
    cwd : str or pathlib.Path
        The jobs' working folder (default the repository root).
    env_key : str, optional
        Content key of code, data and libraries, part of every job's key (default :func:`environment_key`).
    log : callable
        Takes each progress line (default ``print``).
    workers : int
        Jobs run at once (default 1).
    batch : int
        Most ``evaluate.py`` jobs per process (default 1).
    deadline : float, optional
        A ``time.time()`` value after which no job starts.

    Returns
    -------
    dict
        ``{"jobs": [records], "counts": {status: n}, "deadline_reached": bool}``.
    """
    root, cwd = Path(root).resolve(), Path(cwd)
    state = _Run(jobs, root, env_key or environment_key(cwd if (cwd / "fnet").is_dir() else CODE_ROOT), only, dry_run)
    env = _child_env(workers)
    running: dict = {}
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        try:
            while True:
                state.settle()
                while state.queue and len(running) < max(1, int(workers)) and (deadline is None
                                                                               or time.time() < deadline):
                    units = state.next_units(batch)
                    if len(units) > 1 or units[0].job.entry == ["evaluate.py"] and batch > 1:
                        running[pool.submit(_run_batch, units, python, cwd, env, log, root)] = units
                    else:
                        running[pool.submit(_run_one, units[0], python, cwd, env, log)] = units
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    running.pop(future)
                    for item, rc, seconds, batched in future.result():
                        state.finish(item, rc, seconds, batched, log)
        except BaseException:  # Ctrl-C, SIGTERM (fnet.study.cli turns it into KeyboardInterrupt), errors
            _stop_running(log)
            raise
    return state.result(deadline)


def summary_lines(result: dict) -> list[str]:
    """The end-of-run lines: totals, then one line per failed or blocked job.

    Parameters
    ----------
    result : dict
        What :func:`run_jobs` returned.

    Returns
    -------
    list of str
        The lines.
    """
    c = result["counts"]
    n = len(result["jobs"])
    lines = [f"{n} jobs, {c['skipped']} already done, recomputed {c['ran']}, failed {c['failed']}, "
             f"blocked {c['blocked']}, not run {c['pending'] + c['excluded']}"]
    if c["ran"] == 0 and c["skipped"] == n:
        lines.append("the study is complete: nothing was recomputed")
    for r in result["jobs"]:
        if r["status"] == "failed":
            lines.append(f"  failed: {r['name']} ({r.get('why')}); see {r['folder']}/job.log")
        elif r["status"] == "blocked":
            lines.append(f"  blocked: {r['name']} (needs {', '.join(r['waiting_for'])})")
    return lines
