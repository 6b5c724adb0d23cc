"""A study on a cluster: ``python -m fnet.study PRESET --executor slurm`` submits the plan's parts through submitit.

The plan is cut into **units** (``--unit run``, the default: one per training run, i.e. a fine-tuned task and
seed with its networks, controls and evaluations, or a zero-shot part; ``--unit stage``: one per stage group of
such a part, train -> analyze -> controls -> evaluate). Each unit is one submitted job, which runs the unit's jobs
with the study's own runner (:func:`run_unit` -> :func:`fnet.study.scheduler.run_jobs` with ``only=`` the
unit's job names): the same content-hashed folders, the same ``job.json`` done-markers written last, the same
folder owner (:mod:`fnet.owner`), evaluate jobs batched as locally. A unit whose jobs need another unit's jobs is
submitted with ``afterok`` on that unit's SLURM job (``--kill-on-invalid-dep=yes``: a failed unit cancels its
dependents instead of leaving them pending forever); submitit's local executor has no dependencies, so there
the dispatcher submits a unit once the units it needs have finished. A unit whose jobs are all done is not
submitted; one whose recorded job (``<root>/submitit/units.json``) is still queued or running is not submitted
again, so a second command never runs a unit twice, and its dependents wait for it.

Resubmission: with ``--retries N`` (default 1) the dispatcher waits for the round it submitted, reads the
done-markers, and submits what is not done again (a killed, preempted or timed-out unit: its finished jobs are
skipped, the rest redone), up to N more rounds. ``--no-wait`` (SLURM) submits and returns; rerunning the same
command later submits what failed and reports what is done.

The executors: ``slurm`` (sbatch; ``--slurm-partition``, ``--slurm-gpus`` (per job), ``--slurm-time``
(minutes), ``--slurm-account``, ``--slurm-cpus``, ``--slurm-mem``, and any submitit parameter as
``--executor-opt key=value``, e.g. ``slurm_qos=high`` or ``slurm_setup='[source .venv/bin/activate]'``) and
``submitit_local`` (the same code path as local processes: the tests run it). ``--dry-run`` lists the units,
their dependencies and the ``#SBATCH`` lines of the first, and submits nothing. The settings, a unit's job
parameters and ``#SBATCH`` lines, and the units' records are :mod:`fnet.study.submission`'s.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from fnet.study.runlog import append_run
from fnet.study.scheduler import Job, machine, run_jobs
from fnet.study.submission import (
    Handle,
    Records,
    Settings,
    executor_parameters,
    exported_pythonpath,
    make_executor,
    sbatch_lines,
)
from fnet.study.units import UNITS, Unit, closure, ordered, part_of, units_of

__all__ = [
    "EXECUTORS",
    "UNITS",
    "Settings",
    "Unit",
    "dispatch",
    "executor_parameters",
    "parse_options",
    "part_of",
    "run_unit",
    "units_of",
]

#: ``--executor`` choices: ``local`` is the study's own runner (no submitit)
EXECUTORS = ("local", "slurm", "submitit_local")


def parse_options(items: Sequence[str]) -> dict:
    """``key=value`` strings (``--executor-opt``) as a dict, each value read as YAML (``3``, ``[a, b]``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--executor-opt takes key=value, not {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


# --------------------------------------------------------------------------------------------------------------
# What a submitted job runs
# --------------------------------------------------------------------------------------------------------------
def run_unit(
    jobs: Sequence[Job],
    names: Sequence[str],
    root: str,
    env_key: str,
    workers: int = 1,
    batch: int = 32,
    unit: str = "",
) -> dict:
    """Run one unit's jobs with the study's runner: what a submitted job executes.

    Parameters
    ----------
    jobs
        the unit's jobs and every job they need (those must be done).
    names
        the unit's job names.
    root, env_key, workers, batch
        as for :func:`fnet.study.scheduler.run_jobs`.
    unit
        the unit's name (in ``runs.jsonl`` and errors).

    Returns
    -------
    ``{"unit", "counts"}``; raises ``RuntimeError`` when a job of the unit is not done, so the submitted job fails
    and SLURM cancels the units that need it.
    """
    started = time.time()
    result = run_jobs(jobs, root, only=set(names), env_key=env_key, workers=workers, batch=batch)
    mine = [r for r in result["jobs"] if r["name"] in set(names)]
    counts = {s: sum(1 for r in mine if r["status"] == s) for s in ("skipped", "ran", "failed", "blocked", "pending")}
    append_run(
        Path(root),
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "unit": unit,
            "workers": workers,
            "machine": machine(),
            "seconds": time.time() - started,
            "counts": counts,
            "job_id": os.environ.get("SLURM_JOB_ID"),
        },
    )
    left = [r for r in mine if r["status"] not in ("skipped", "ran")]
    if left:
        raise RuntimeError(
            f"unit {unit}: {len(left)} of {len(mine)} jobs not done: "
            + "; ".join(
                f"{r['name']} {r['status']}" + (f" ({r.get('why')})" if r.get("why") else "") for r in left[:10]
            )
        )
    return {"unit": unit, "counts": counts}


# --------------------------------------------------------------------------------------------------------------
# Submitting the units and following them
# --------------------------------------------------------------------------------------------------------------
def _statuses(jobs: Sequence[Job], root: Path, env_key: str) -> dict[str, dict]:
    """Every job's record by name, as a dry run of the study's runner sees it (``skipped`` = done)."""
    result = run_jobs(jobs, root, dry_run=True, env_key=env_key, log=lambda *_: None)
    return {r["name"]: r for r in result["jobs"]}


class _Dispatcher:
    """Submits the units of one plan and follows them (:func:`dispatch`)."""

    def __init__(self, jobs: Sequence[Job], root: Path, settings: Settings, env_key: str, log):
        self.jobs, self.root, self.settings, self.env_key, self.log = list(jobs), root, settings, env_key, log
        self.folder = root / "submitit"
        self.units = ordered(units_of(self.jobs, settings.unit))
        self.records = Records(self.folder)
        self.native = settings.executor == "slurm"  # SLURM resolves afterok itself; the local executor cannot
        self.max_jobs = settings.max_jobs or (None if self.native else 2)

    def done(self, statuses: dict) -> set[str]:
        return {u.name for u in self.units if all(statuses[j]["status"] == "skipped" for j in u.jobs)}

    def job_name(self, unit: Unit) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"fnet-{self.settings.name}-{unit.name}")

    def submit(self, unit: Unit, after: Sequence[str]):
        """Submit one unit (``after``: job ids it needs); returns the submitit job."""
        self.folder.mkdir(parents=True, exist_ok=True)
        executor = make_executor(self.settings, self.folder)  # a fresh one: parameters (a dependency) never carry over
        executor.update_parameters(**executor_parameters(self.settings, self.job_name(unit), after))
        s = self.settings
        with exported_pythonpath():
            job = executor.submit(
                run_unit,
                closure(self.jobs, unit.jobs),
                unit.jobs,
                str(self.root),
                self.env_key,
                s.workers,
                s.batch,
                unit.name,
            )
        self.records.add(unit.name, job.job_id, s.executor)
        self.log(
            f"[study] submitted {unit.name} ({len(unit.jobs)} jobs) as job {job.job_id}"
            + (f", after {','.join(after)}" if after else "")
        )
        return job

    def round(self, statuses: dict) -> dict[str, str]:
        """Submit every unit that is not done and not in flight (dependencies: afterok on SLURM, else the units it
        needs must have finished first), wait for them when ``settings.wait``; returns each unit's outcome (done,
        failed, blocked, submitted)."""
        done = self.done(statuses)
        waiting = [u for u in self.units if u.name not in done]
        ids: dict[str, str] = {}
        running: dict[str, Any] = {}
        for unit in waiting:
            job_id = self.records.active(unit.name, self.folder)
            if job_id is not None:
                ids[unit.name], running[unit.name] = job_id, Handle(self.records, unit.name, self.folder)
                self.log(
                    f"[study] {unit.name}: job {job_id} of an earlier command is still queued or running; "
                    "not submitted again"
                )
        waiting = [u for u in waiting if u.name not in ids]
        outcome: dict[str, str] = {}
        try:
            while True:
                self._submit_ready(waiting, done, ids, running, outcome)
                if not self.settings.wait:
                    return dict(outcome, **{u: "submitted" for u in running})
                if not running:
                    for unit in waiting:
                        outcome[unit.name] = "blocked"
                    return outcome
                time.sleep(self.settings.poll)
                ended = [u for u, job in running.items() if job.done()]
                if ended:
                    done = self.done(_statuses(self.jobs, self.root, self.env_key))
                for name in ended:
                    running.pop(name)
                    outcome[name] = "done" if name in done else "failed"
                    self.log(f"[study] {name}: job {ids[name]} ended, unit {outcome[name]}")
        except BaseException:  # Ctrl-C, SIGTERM, errors: stop what runs here; cluster jobs go on
            self._interrupted(running)
            raise

    def _submit_ready(self, waiting: list[Unit], done: set, ids: dict, running: dict, outcome: dict) -> None:
        for unit in list(waiting):
            if self.max_jobs is not None and len(running) >= self.max_jobs:
                return
            needs = [n for n in unit.needs if n not in done]
            if any(outcome.get(n) in ("failed", "blocked") for n in needs):
                outcome[unit.name] = "blocked"
                waiting.remove(unit)
                continue
            if any(n not in ids for n in needs) or (needs and not self.native):
                continue  # submitted once what it needs is (SLURM) or has finished (local)
            waiting.remove(unit)
            try:
                running[unit.name] = self.submit(unit, [ids[n] for n in needs])
            except Exception as err:  # noqa: BLE001 - sbatch refused it: said, and the rest go on
                self.log(f"[study] FAILED to submit {unit.name}: {type(err).__name__}: {err}")
                outcome[unit.name] = "failed"
                continue
            ids[unit.name] = str(running[unit.name].job_id)

    def _interrupted(self, running: dict) -> None:
        if self.native:
            ids = [str(getattr(job, "job_id", "")) for job in running.values()]
            if ids:
                self.log(
                    f"[study] the submitted jobs go on ({', '.join(i for i in ids if i)}): rerun the same "
                    "command to follow them, or scancel them"
                )
            return
        for job in running.values():
            job.cancel()

    def plan_lines(self, statuses: dict) -> list[str]:
        """The dry run's account of what would be submitted, and the first unit's ``#SBATCH`` lines."""
        done = self.done(statuses)
        s = self.settings
        what = "training run" if s.unit == "run" else "stage group of a training run"
        todo = [u for u in self.units if u.name not in done]
        lines = [
            f"executor {s.executor}, one job per {what}: {len(self.units)} units, {len(todo)} to submit, "
            f"{len(done)} done"
        ]
        for unit in self.units:
            n_done = sum(1 for j in unit.jobs if statuses[j]["status"] == "skipped")
            active = self.records.active(unit.name, self.folder) if unit.name not in done else None
            state = "done" if unit.name in done else ("in flight" if active else "submit")
            after = f"  after {', '.join(unit.needs)}" if unit.needs else ""
            lines.append(f"  {state:>9}  {unit.name}  ({len(unit.jobs)} jobs, {n_done} done){after}")
        if todo and s.executor == "slurm":
            lines.append(
                f"#SBATCH lines of {todo[0].name}"
                + (" (with --dependency=afterok:<its needs' job ids>)" if todo[0].needs else "")
                + ":"
            )
            lines += ["  " + line for line in sbatch_lines(s, self.job_name(todo[0]), self.folder / "%j")]
        return lines


def _result(jobs: Sequence[Job], statuses: dict, first_done: set, outcome: dict, dispatcher: _Dispatcher) -> dict:
    """``run_jobs``-shaped result of a dispatch: each job's record and the counts."""
    unit_of = {name: u for u in dispatcher.units for name in u.jobs}
    records = []
    for job in jobs:
        r = dict(statuses[job.name])
        state = outcome.get(unit_of[job.name].name)
        if r["status"] == "skipped":
            r["status"] = "skipped" if job.name in first_done else "ran"
        elif state == "submitted":
            r["status"] = "pending"
        elif state in ("failed", "blocked"):
            folder = Path(r["folder"]) if r.get("folder") else None
            failed = folder / "failed.json" if folder is not None else None
            if failed is not None and failed.exists():
                r.update(status="failed", why=json.loads(failed.read_text()).get("why", "failed"))
            elif folder is not None and folder.exists():
                r.update(status="failed", why=f"its unit's job ({unit_of[job.name].name}) ended before it finished")
            else:
                r.update(
                    status="blocked",
                    waiting_for=[d for d in job.deps if statuses[d]["status"] != "skipped"]
                    or [f"unit {unit_of[job.name].name}"],
                )
        records.append(r)
    counts = {
        s: sum(1 for r in records if r["status"] == s)
        for s in ("skipped", "ran", "failed", "blocked", "pending", "excluded")
    }
    return {
        "jobs": records,
        "counts": counts,
        "deadline_reached": False,
        "units": {u.name: outcome.get(u.name, "done") for u in dispatcher.units},
    }


def dispatch(
    jobs: Sequence[Job], root: str | Path, settings: Settings, *, env_key: str, log=print, dry_run: bool = False
) -> dict:
    """Submit the plan's units that are not done (see the module's docstring) and, with ``settings.wait``, follow
    them and resubmit what did not finish up to ``settings.retries`` times.

    Parameters
    ----------
    jobs
        the study's plan (:func:`fnet.study.plan.plan`).
    root
        the study folder; the units' records and job logs go to ``root/submitit``.
    settings
        executor, unit, SLURM options, waiting and retries.
    env_key
        the environment part of every job's key (as for :func:`fnet.study.scheduler.run_jobs`).
    log
        called with each progress line.
    dry_run
        list the units and (SLURM) the first one's ``#SBATCH`` lines; submit nothing.

    Returns
    -------
    A :func:`fnet.study.scheduler.run_jobs`-shaped result (``jobs``, ``counts``) plus ``units``: each unit's
    outcome (done, failed, blocked, submitted).
    """
    if settings.executor not in EXECUTORS[1:]:
        raise ValueError(f"dispatch needs a submitit executor ({', '.join(EXECUTORS[1:])}), not {settings.executor!r}")
    if not settings.wait and settings.executor != "slurm":
        raise ValueError("--no-wait needs --executor slurm: local submitit jobs end with the command")
    root = Path(root).resolve()
    dispatcher = _Dispatcher(jobs, root, settings, env_key, log)
    statuses = _statuses(jobs, root, env_key)
    first_done = {n for n, r in statuses.items() if r["status"] == "skipped"}
    if dry_run:
        for line in dispatcher.plan_lines(statuses):
            log(line)
        return _result(jobs, statuses, first_done, {}, dispatcher)
    outcome: dict[str, str] = {}
    for attempt in range(1 + (max(0, settings.retries) if settings.wait else 0)):
        if attempt:
            left = [u.name for u in dispatcher.units if u.name not in dispatcher.done(statuses)]
            log(
                f"[study] resubmitting what did not finish ({len(left)} units: {', '.join(left[:6])}"
                f"{' ...' if len(left) > 6 else ''}), retry {attempt} of {settings.retries}"
            )
        outcome.update(dispatcher.round(statuses))
        statuses = _statuses(jobs, root, env_key)
        if not settings.wait or len(dispatcher.done(statuses)) == len(dispatcher.units):
            break
    return _result(jobs, statuses, first_done, outcome, dispatcher)
