"""The jobs of a study and the runner of them: content-hashed folders, done-markers, dependencies, workers.

A :class:`Job` is one run of an entry point of the repository with Hydra overrides and dependencies.
:func:`run_jobs` runs jobs as subprocesses (``sys.executable``, cwd = the repository root), a job as soon as its
dependencies are done, ``workers`` at once; ready ``evaluate.py`` jobs of one task and model share a process
(``batch``, :mod:`fnet.pipelines.evaluate_batch`). Resuming: a job's folder is named by :func:`job_key`, and its
``job.json`` is written last, only after the job's output exists (see :mod:`fnet.study.cli`). A job folder has one
owner at a time (:mod:`fnet.owner`): the job process holds its lock while it runs and dies with the runner, and a
rerun sets an unfinished folder aside only once no process of the earlier run holds it, so a runner killed with
SIGKILL and restarted at once never has two processes writing one job folder. What a run knows (which jobs wait,
are queued, ran or failed) is :class:`fnet.study.runstate.RunState`; the job processes are started and stopped here.

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
from pathlib import Path
from typing import Collection, Sequence

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
    set_aside,
)
from fnet.study.runstate import Ready, RunState, prepare

__all__ = [
    "Job",
    "OWNED",
    "OWNER_WAIT",
    "Ready",
    "STAGES",
    "code_key",
    "environment_key",
    "environment_parts",
    "job_key",
    "machine",
    "cpu_signature",
    "prepare",
    "done_record",
    "output_of",
    "run_jobs",
    "summary_lines",
]

# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------
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
            set_aside(folder)
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
    env["PYTHONPATH"] = os.pathsep.join(
        [str(CODE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(CODE_ROOT)]
    )
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
    command = [
        python,
        *(["-m", ENTRY_MODULES[entry[0]]] if entry[0] in ENTRY_MODULES else entry[:1]),
        *entry[1:],
        *item.overrides,
    ]
    if item.job.entry[0].endswith(".py"):
        command.append(f"hydra.run.dir={item.folder}")
    log(f"[study] run {item.job.name}: {' '.join(command[1:])}")
    started = time.time()
    with open(item.folder / "job.log", "w") as handle:
        rc = _call(
            [python, "-m", "fnet.owner", str(item.folder), "--", *command],
            cwd=str(cwd),
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    return [(item, OWNED if rc == _OWNED_EXIT else rc, time.time() - started, False)]


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
    spec.write_text(
        json.dumps(
            {"jobs": [{"folder": str(i.folder), "overrides": i.overrides, "marker": i.base} for i in items]}, indent=1
        )
    )
    log(
        f"[study] run {len(items)} evaluate jobs in one process ({items[0].job.name} ...); "
        f"log: {spec.with_suffix('.log')}"
    )
    started = time.time()
    with open(spec.with_suffix(".log"), "w") as handle:
        rc = _call(
            [python, "-m", "fnet.pipelines.evaluate_batch", str(spec)],
            cwd=str(cwd),
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    seconds = (time.time() - started) / len(items)
    return settled + [(item, rc, seconds, True) for item in items]


def run_jobs(
    jobs: Sequence[Job],
    root: str | Path,
    *,
    only: str | Collection[str] | None = None,
    dry_run: bool = False,
    python: str = sys.executable,
    cwd: str | Path = REPO_ROOT,
    env_key: str | None = None,
    log=print,
    workers: int = 1,
    batch: int = 1,
    deadline: float | None = None,
) -> dict:
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
    state = RunState(
        jobs, root, env_key or environment_key(cwd if (cwd / "fnet").is_dir() else CODE_ROOT), only, dry_run
    )
    env = _child_env(workers)
    running: dict = {}
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        try:
            while True:
                state.settle()
                while (
                    state.queue and len(running) < max(1, int(workers)) and (deadline is None or time.time() < deadline)
                ):
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
    lines = [
        f"{n} jobs, {c['skipped']} already done, recomputed {c['ran']}, failed {c['failed']}, "
        f"blocked {c['blocked']}, not run {c['pending'] + c['excluded']}"
    ]
    if c["ran"] == 0 and c["skipped"] == n:
        lines.append("the study is complete: nothing was recomputed")
    for r in result["jobs"]:
        if r["status"] == "failed":
            lines.append(f"  failed: {r['name']} ({r.get('why')}); see {r['folder']}/job.log")
        elif r["status"] == "blocked":
            lines.append(f"  blocked: {r['name']} (needs {', '.join(r['waiting_for'])})")
    return lines
