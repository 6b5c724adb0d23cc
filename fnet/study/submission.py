"""submitit's side of a dispatch (:mod:`fnet.study.dispatch`): how units are submitted (:class:`Settings`), the
parameters and ``#SBATCH`` lines of a unit's job, the executor, and the record of the job each unit was submitted as
(``<root>/submitit/units.json``), read back so that a second command never submits a unit twice.

Split from :mod:`fnet.study.dispatch` to keep each module near 500 lines: what a submitted job is here, which units
are submitted when there. submitit is optional (the cluster extra): it is imported only where a job is made or
looked up.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from fnet.cache import atomic_write_text
from fnet.study.jobs import REPO_ROOT

__all__ = [
    "ACTIVE",
    "NEW_JOB_S",
    "Handle",
    "Records",
    "Settings",
    "executor_parameters",
    "exported_pythonpath",
    "make_executor",
    "sbatch_lines",
]

#: SLURM job states of a job that may still run (a unit in one of them is not submitted again)
ACTIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
}
#: seconds after its submission a job that sacct does not know yet still counts as queued
NEW_JOB_S = 300


@dataclass
class Settings:
    """How units are submitted (the command line's ``--executor`` options)."""

    executor: str = "slurm"
    unit: str = "run"
    partition: str | None = None
    account: str | None = None
    gpus: int | None = None  # GPUs per job
    minutes: int = 240  # time limit per job
    cpus: int | None = None
    mem_gb: float | None = None
    options: dict = field(default_factory=dict)  # any submitit parameter (--executor-opt key=value)
    wait: bool = True
    retries: int = 1
    max_jobs: int | None = None  # submitted jobs in flight at once (None: all; the local executor: 2)
    workers: int = 1  # jobs at once inside a unit
    batch: int = 32  # evaluate jobs per process inside a unit
    poll: float = 10.0  # seconds between looks at the submitted jobs
    name: str = "study"  # the preset's name, in the job names


def executor_parameters(settings: Settings, name: str, after: Sequence[str] = ()) -> dict:
    """submitit ``AutoExecutor.update_parameters`` keywords of one unit's job.

    Parameters
    ----------
    settings : Settings
        How units are submitted.
    name : str
        The job's name.
    after : Sequence of str
        SLURM job ids it needs (``afterok``, and ``--kill-on-invalid-dep=yes``).

    Returns
    -------
    dict
        The keywords, those that are None left out.
    """
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": int(settings.minutes),
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": settings.gpus,
        "cpus_per_task": settings.cpus,
        "mem_gb": settings.mem_gb,
        "slurm_partition": settings.partition,
        "slurm_account": settings.account,
    }
    params.update(settings.options)
    extra = dict(params.get("slurm_additional_parameters") or {})
    if after:
        params["slurm_dependency"] = "afterok:" + ":".join(after)
        extra.setdefault("kill-on-invalid-dep", "yes")
    params["slurm_additional_parameters"] = extra or None
    return {k: v for k, v in params.items() if v is not None}


def sbatch_lines(settings: Settings, name: str, folder: str | Path, after: Sequence[str] = ()) -> list[str]:
    """The ``#SBATCH`` lines SLURM would get for a unit (the dry run shows them; submitit renders them).

    Parameters
    ----------
    settings : Settings
        How units are submitted.
    name : str
        The job's name.
    folder : str or pathlib.Path
        The job's log folder.
    after : Sequence of str
        SLURM job ids it needs.

    Returns
    -------
    list of str
        The lines.
    """
    from submitit.slurm.slurm import _make_sbatch_string  # optional (the cluster extra): only here and below

    params = executor_parameters(settings, name, after)
    generic = {
        "name": "job_name",
        "timeout_min": "time",
        "nodes": "nodes",
        "tasks_per_node": "ntasks_per_node",
        "gpus_per_node": "gpus_per_node",
        "cpus_per_task": "cpus_per_task",
    }
    slurm = {generic[k]: v for k, v in params.items() if k in generic}
    if "mem_gb" in params:
        slurm["mem"] = f"{int(params['mem_gb'])}GB"
    slurm.update({k.removeprefix("slurm_"): v for k, v in params.items() if k.startswith("slurm_")})
    text = _make_sbatch_string(command="python -u -m submitit.core._submit FOLDER", folder=folder, **slurm)
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def make_executor(settings: Settings, folder: Path):
    """A fresh submitit executor for one unit (so that no parameter, such as a dependency, carries over).

    Parameters
    ----------
    settings : Settings
        ``settings.executor`` picks the cluster (``slurm``, or ``submitit_local``: local processes).
    folder : pathlib.Path
        Where the jobs' logs go (one subfolder per job id).

    Returns
    -------
    submitit.AutoExecutor
        The executor.
    """
    import submitit  # optional (the cluster extra), as above

    cluster = "local" if settings.executor == "submitit_local" else settings.executor
    return submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)


@contextlib.contextmanager
def exported_pythonpath() -> Iterator[None]:
    """Submitted jobs import the fnet whose code keys their folders (as the runner's job processes do): its
    folder first on ``$PYTHONPATH`` while jobs are submitted (SLURM and the local executor pass the environment
    on).

    Yields
    ------
    None
        ``$PYTHONPATH`` is restored on exit.
    """
    before = os.environ.get("PYTHONPATH")
    parts = [p for p in (before or "").split(os.pathsep) if p and p != str(REPO_ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + parts)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


class Records:
    """``<root>/submitit/units.json``: the job each unit was last submitted as (id, executor, attempt, time).

    Parameters
    ----------
    folder : pathlib.Path
        The study's ``submitit`` folder.
    """

    def __init__(self, folder: Path):
        self.path = folder / "units.json"
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def add(self, unit: str, job_id: str, executor: str) -> None:
        attempt = int(self.data.get(unit, {}).get("attempt", 0)) + 1
        self.data[unit] = {
            "job_id": str(job_id),
            "executor": executor,
            "attempt": attempt,
            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(self.path, json.dumps(self.data, indent=1))

    def active(self, unit: str, folder: Path) -> str | None:
        """The job id of the unit's recorded job if that job may still run (queued, running), else None."""
        record = self.data.get(unit)
        if not record:
            return None
        job_id = record["job_id"]
        if record["executor"] == "submitit_local":  # the controller process of a local job (its pid)
            try:
                cmdline = Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
            except (OSError, ValueError):
                return None
            return job_id if b"submitit" in cmdline else None
        import submitit  # optional (the cluster extra), as above

        state = submitit.SlurmJob(folder / "%j", job_id).state.split(" ")[0].upper()
        if state == "UNKNOWN":  # not in sacct (yet, or any more)
            submitted = time.mktime(time.strptime(record["submitted"], "%Y-%m-%dT%H:%M:%S"))
            return job_id if time.time() - submitted < NEW_JOB_S else None
        return job_id if state in ACTIVE else None


class Handle:
    """A job submitted by an earlier command, known by its id only: whether it has ended.

    Parameters
    ----------
    records : Records
        The units' records, which know the job's id.
    unit : str
        The unit's name.
    folder : pathlib.Path
        The study's ``submitit`` folder.
    """

    def __init__(self, records: Records, unit: str, folder: Path):
        self.records, self.unit, self.folder = records, unit, folder

    def done(self) -> bool:
        return self.records.active(self.unit, self.folder) is None

    def cancel(self) -> None:  # not ours to stop: it was submitted by another command
        pass
