"""``python -m fnet.study <preset>``: the whole protocol for one model in one command, resumable.

The command reads a preset (:func:`fnet.study.preset.load_preset`), plans its jobs (:func:`fnet.study.plan.plan`:
``train.py``, ``analyze.py``, the scale job, ``evaluate.py``), runs them (:func:`fnet.study.scheduler.run_jobs`:
subprocesses in content-hashed folders, ``--workers N`` at once, evaluate jobs of one task and model in one process
with ``--batch``), then writes the report (:func:`fnet.study.render.write_report`). ``--compose`` instead writes
one report from committed study reports (:mod:`fnet.study.compose`).

Resuming: a job's folder is named by a content hash of its entry point, its overrides (with its inputs' paths),
the content digests of its inputs (checkpoint, networks file), the fnet code and configs, and the offline data
listing. The folder's ``job.json`` is written last, only after the job's output exists, so a job is done or not:
a stopped study continues where it stopped, a rerun of a finished study recomputes nothing and says so, and a
changed setting gives a new hash, hence a new folder (the old one is kept). A failed job is recorded
(``failed.json``), the jobs that need it are blocked, the rest run, and the command exits non-zero listing them.
Usage::

    python -m fnet.study smollm2 [key=value ...] [--dry-run] [--only STAGE] [--root DIR] [--workers N] [--batch N]
                                 [--hours H]
    python -m fnet.study smollm2 --executor slurm --slurm-partition gpu --slurm-gpus 1 --slurm-time 240 [--dry-run]

``--executor slurm`` submits the plan's training runs (``--unit stage``: their stage groups) as SLURM jobs through
submitit, with afterok dependencies, and resubmits what did not finish (:mod:`fnet.study.dispatch`).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from filelock import Timeout

from fnet.cache import lock
from fnet.study.archive import archive_units, restore
from fnet.study.compose import compose_report
from fnet.study.dispatch import EXECUTORS, UNITS, Settings, dispatch, parse_options
from fnet.study.estimate import estimate_lines
from fnet.study.plan import plan
from fnet.study.preset import load_preset
from fnet.study.rekey import adopt_jobs
from fnet.study.runlog import append_run
from fnet.study.scheduler import REPO_ROOT, STAGES, environment_key, environment_parts, machine, run_jobs, summary_lines

__all__ = ["main"]


def _compose(
    preset: dict, items: Sequence[str], out: str | None, accept_code: Sequence[str] = (), any_code: bool = False
) -> int:
    """``--compose``: one report from committed study reports (:func:`fnet.study.compose.compose_report`)."""
    if not out:
        print("--compose writes a new report: give it a folder with --report-dir", file=sys.stderr)
        return 2
    sources = []
    for item in items:
        parts, sep, folder = item.rpartition("=")
        sources.append((folder, [p for p in parts.split(",") if p] if sep else None))
    try:
        paths = compose_report(preset, sources, out, accept_code=accept_code, any_code=any_code)
    except (ValueError, FileNotFoundError) as err:
        print(f"--compose: {err}", file=sys.stderr)
        return 2
    for part, folder in paths["parts"].items():
        print(f"{part:>20}  from {folder}")
    print(f"report: {paths['report']}")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fnet.study", description="Run a study preset, resumably.")
    parser.add_argument(
        "preset", help="conf/study/<preset>.yaml (smollm2, gpt2, qwen2_5_3b, chatglm3_6b, tiny) or a YAML path"
    )
    parser.add_argument("set", nargs="*", help="preset overrides key=value (e.g. seeds=3 'tasks=[sst2]')")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and what is done; run nothing")
    parser.add_argument("--only", choices=STAGES, help="run only this stage's jobs")
    parser.add_argument("--root", help="study folder (default outputs/study/<name>)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the jobs done so far; run nothing (works while a run goes on)",
    )
    parser.add_argument("--report-dir", help="where the report goes (default: the study folder)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="jobs run at once (default 1); without OMP_NUM_THREADS the cores are split among them",
    )
    parser.add_argument(
        "--adopt",
        metavar="REASON",
        help="first move finished jobs whose key changed only through the environment (see "
        "fnet.study.rekey) to their new folders, keeping REASON and the old key; then go on",
    )
    parser.add_argument(
        "--hours",
        type=float,
        help="start no job after this many hours; running jobs finish, the rest wait for a rerun "
        "(a session's or SLURM allocation's budget: leave room for the longest job)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=32,
        help="evaluate jobs of one task and model run in one process, up to this many (default 32; "
        "1 = a process per job, exactly as typed)",
    )
    parser.add_argument(
        "--compose",
        action="append",
        metavar="[TASKS=]FOLDER",
        help="write one report for the whole plan from committed study reports (repeat: one per "
        "folder, in order of preference), each task whole from one folder that finished it; "
        "TASKS (comma-separated, e.g. sst2,sst2-zeroshot) picks them; runs nothing; needs "
        "--report-dir (fnet.study.compose)",
    )
    parser.add_argument(
        "--accept-code",
        action="append",
        metavar="CODEKEY",
        help="with --compose: also take sources made by this code key (a study report's Code: line; "
        "repeat for several), once you have checked that the change does not matter",
    )
    parser.add_argument(
        "--any-code",
        action="store_true",
        help="with --compose: take sources of any code, also reports that record none (made before "
        "study reports recorded their code)",
    )
    parser.add_argument(
        "--archive",
        metavar="FOLDER",
        help="copy every finished training run (all its jobs done) into FOLDER without its checkpoints, "
        "figures and files over --archive-mb, to commit; runs nothing (fnet.study.archive)",
    )
    parser.add_argument(
        "--archive-mb", type=float, default=2.0, metavar="MB", help="--archive leaves out files over MB (default 2)"
    )
    parser.add_argument(
        "--restore",
        metavar="FOLDER",
        help="first copy an archive's finished jobs into the study folder (never over finished ones), then go on",
    )
    _cluster_options(parser.add_argument_group("cluster (fnet.study.dispatch; submitit, the cluster extra)"))
    return parser


def _cluster_options(group) -> None:
    group.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: this process runs the jobs (default); slurm: submit units of the plan with "
        "sbatch through submitit, with afterok dependencies; submitit_local: the same through "
        "submitit's local executor",
    )
    group.add_argument(
        "--unit",
        choices=UNITS,
        default="run",
        help="one submitted job per training run (default) or per stage group of one",
    )
    group.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition")
    group.add_argument("--slurm-account", metavar="NAME", help="SLURM account")
    group.add_argument("--slurm-gpus", type=int, metavar="N", help="GPUs per submitted job")
    group.add_argument(
        "--slurm-time", type=int, default=240, metavar="MIN", help="time limit per submitted job, minutes (default 240)"
    )
    group.add_argument("--slurm-cpus", type=int, metavar="N", help="CPUs per submitted job")
    group.add_argument("--slurm-mem", type=float, metavar="GB", help="memory per submitted job, GB")
    group.add_argument(
        "--executor-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any submitit parameter, value read as YAML (repeat): slurm_qos=high, "
        "slurm_constraint=a100, 'slurm_setup=[source .venv/bin/activate]'",
    )
    group.add_argument(
        "--no-wait",
        action="store_true",
        help="slurm: submit and return (rerun the same command to follow up and resubmit what failed)",
    )
    group.add_argument(
        "--retries",
        type=int,
        default=1,
        metavar="N",
        help="resubmit units that did not finish up to N times while waiting (default 1)",
    )
    group.add_argument(
        "--max-jobs",
        type=int,
        metavar="N",
        help="submitted jobs in flight at once (default: all on SLURM, 2 with submitit_local)",
    )


def _settings(args: argparse.Namespace, preset: dict) -> Settings:
    """The ``--executor`` options as :class:`fnet.study.dispatch.Settings`."""
    if args.hours is not None or args.only or args.adopt:
        raise ValueError(
            "--hours, --only and --adopt are the local runner's: with --executor, give each job its "
            "time with --slurm-time"
        )
    return Settings(
        executor=args.executor,
        unit=args.unit,
        partition=args.slurm_partition,
        account=args.slurm_account,
        gpus=args.slurm_gpus,
        minutes=args.slurm_time,
        cpus=args.slurm_cpus,
        mem_gb=args.slurm_mem,
        options=parse_options(args.executor_opt),
        wait=not args.no_wait,
        retries=args.retries,
        max_jobs=args.max_jobs,
        workers=args.workers,
        batch=args.batch,
        name=str(preset["name"]),
    )


def _run(args: argparse.Namespace, preset: dict, jobs: list, root: Path) -> dict | int:
    """Run the jobs under the study folder's lock; the result, or an exit status when the run did not end."""
    started = time.time()
    run = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "workers": args.workers,
        "dry_run": args.dry_run,
        "only": args.only,
        "machine": machine(),
        "environment": environment_parts(),
    }  # so a later change of key says which part changed
    env_key = environment_key(parts=run["environment"])  # read and hashed once for adopt and the run
    previous = signal.signal(signal.SIGTERM, _interrupt)  # kill / scancel: stop like Ctrl-C
    try:
        with lock(root / "study", timeout=0):  # two runners on one folder would run the same jobs twice
            if args.adopt:
                run["adopted"] = adopt_jobs(jobs, root, reason=args.adopt, env_key=env_key)["adopted"]
            deadline = None if args.hours is None else started + 3600 * args.hours
            if args.executor != "local":
                run["executor"] = args.executor
                result = dispatch(jobs, root, args.settings, env_key=env_key, dry_run=args.dry_run)
            else:
                result = run_jobs(
                    jobs,
                    root,
                    only=args.only,
                    dry_run=args.dry_run,
                    workers=args.workers,
                    batch=args.batch,
                    env_key=env_key,
                    deadline=deadline,
                )
    except Timeout:
        print(
            f"another `python -m fnet.study` is running on {root} (it holds {root / 'study.lock'}); wait for "
            "it, pass another --root, or write the report so far with --report-only",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        append_run(root, dict(run, seconds=time.time() - started, interrupted=True))
        print(
            "interrupted: the running jobs were stopped, every finished job is kept; rerun the same command "
            "to continue",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    seconds = time.time() - started
    (root / "study.json").write_text(
        json.dumps({"preset": preset, "jobs": result["jobs"], "seconds": seconds}, indent=1, default=str)
    )
    append_run(
        root,
        dict(
            run,
            seconds=seconds,
            counts=result["counts"],
            hours=args.hours,
            deadline_reached=result.get("deadline_reached", False),
        ),
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fnet.study PRESET [key=value ...]``: run a study preset, resumably; returns the exit status.

    Parameters
    ----------
    argv : Sequence of str, optional
        The arguments; default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status.
    """
    args = _parser().parse_args(argv)
    preset = load_preset(args.preset, args.set)
    if args.compose:
        return _compose(preset, args.compose, args.report_dir, args.accept_code or (), args.any_code)
    root = Path(args.root or REPO_ROOT / "outputs" / "study" / preset["name"]).resolve()
    if args.executor != "local":
        try:
            args.settings = _settings(args, preset)
        except ValueError as err:
            print(f"--executor {args.executor}: {err}", file=sys.stderr)
            return 2
    jobs = plan(preset)
    root.mkdir(parents=True, exist_ok=True)
    if args.restore:
        print(f"restored {restore(args.restore, root)} finished jobs from {args.restore} into {root}")
    if args.archive:
        done = archive_units(
            jobs, run_jobs(jobs, root, dry_run=True)["jobs"], root, args.archive, max_mb=args.archive_mb
        )
        print(
            f"archived {len(done['units'])} finished training runs into {args.archive}: {done['jobs']} job folders "
            f"copied ({done['bytes'] / 2**20:.1f} MB), {done['kept']} there already"
        )
        return 0
    if args.report_only:  # statuses only (a dry run needs no lock), then the report
        result = run_jobs(jobs, root, dry_run=True)
    else:
        result = _run(args, preset, jobs, root)
        if isinstance(result, int):
            return result
    submitted = [u for u, state in (result.get("units") or {}).items() if state == "submitted"]
    if submitted and not args.dry_run:  # --no-wait: the jobs run on the cluster; nothing to report yet
        print(
            f"submitted {len(submitted)} units ({root / 'submitit' / 'units.json'}); rerun the same command to "
            "follow them up and resubmit what failed, or write the report so far with --report-only"
        )
        return 0
    if args.dry_run:
        for r in result["jobs"]:
            print(f"{r['status']:>8}  {r['name']}")
        print("\n".join(estimate_lines(jobs, preset)))
    elif not args.no_report:
        # matplotlib behind both; only when a report is written. Training runs: the v2 report, pooled over them
        from fnet.study.render import write_report
        from fnet.study.render_pooled import write_pooled_report  # (as above)

        writer = write_pooled_report if preset.get("training_runs") else write_report
        paths = writer(root, preset=preset, records=result["jobs"], out=args.report_dir)
        print(f"report: {paths['report']}")
    if args.report_only:
        print(summary_lines(result)[0].replace("not run", "not done yet"))
        return 0
    for line in summary_lines(result):
        print(line)
    if result.get("deadline_reached"):
        print(f"stopped starting jobs after --hours {args.hours:g}: rerun the same command to continue")
    return 1 if result["counts"]["failed"] or result["counts"]["blocked"] else 0


if __name__ == "__main__":
    sys.exit(main())
