"""The whole protocol for one model in one command, resumable: ``python -m fnet.study <preset>``.

A study is a list of :class:`Job` s, each an entry point of the repository (``train.py``, ``analyze.py``,
``evaluate.py``, ``-m fnet.pipelines.study_controls``) with Hydra overrides and dependencies. :func:`plan` turns a preset
(``conf/study/<preset>.yaml``, read and checked by :func:`fnet.study.preset.load_preset`) into jobs;
:func:`run_jobs` runs them as subprocesses (``sys.executable``, cwd = the repository root), so every job is what a
user would type; ``--workers N`` runs N at once, and evaluate jobs
of one task and model share a process (``--batch``, :mod:`fnet.pipelines.evaluate_batch`: same results).

Resuming: a job's folder is named by a content hash of its entry point, its overrides (with its inputs' paths),
the content digests of its inputs (checkpoint, networks file), the fnet code and configs, and the offline data
listing. The folder's ``job.json`` is written last, only after the job's output exists, so a job is done or not:
a stopped study continues where it stopped, a rerun of a finished study recomputes nothing and says so, and a
changed setting gives a new hash, hence a new folder (the old one is kept). A failed job is recorded
(``failed.json``), the jobs that need it are blocked, the rest run, and the command exits non-zero listing them.

Then :func:`fnet.study.render.write_report` aggregates every result into ``report.md``, ``summary.csv`` and
figures. Usage::

    python -m fnet.study smollm2 [--dry-run] [--only STAGE] [--root DIR] [--workers N] [--batch N] [--hours H] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from filelock import Timeout

from fnet.cache import lock
from fnet.pipelines.study_controls import controls_layout
from fnet.study.jobs import (STAGES, Job, environment_key, environment_parts, job_key, machine, run_jobs,
                             summary_lines)
from fnet.study.preset import load_preset
from fnet.study.runlog import append_run

__all__ = ["Job", "STAGES", "load_preset", "plan", "job_key", "run_jobs", "summary_lines", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------------------
# Presets (fnet.study.preset) -> jobs
# --------------------------------------------------------------------------------------------------------------
def _controls_args(p: dict) -> list[str]:
    m = p["massive"]
    return ["--seeds", str(p["seeds"]), "--n-units", str(m["n_units"]), "--top-k", str(m["top_k"]),
            "--n-bins", str(p["n_bins"])]


def plan(p: dict) -> list[Job]:
    """The jobs of a study preset (:func:`fnet.study.preset.load_preset`), task by task (in the preset's order),
    each task's stage by stage, so every dependency comes before its dependents and a runner finishes the first
    task first; with ``order: table``, every task's Table-5 jobs come before any Table-4 job, and those before
    Table 8's."""
    jobs: list[Job] = []
    model = [f"model={p['model']}"]
    K = int(p["n_networks"])
    seeds = range(int(p["seeds"]))
    n_units = int(p["massive"]["n_units"])
    layout = controls_layout(K, len(seeds), n_units)
    count, magnitude = "count" in p["controls"], "magnitude" in p["controls"]

    def over(stage: str, task: str) -> list[str]:
        """The preset's overrides of a stage, then the task's own (task_overrides)."""
        return list(p[stage]) + list((p["task_overrides"].get(task) or {}).get(stage) or [])

    def networks_jobs(scope: str, base: list[str], deps: list[str], k: int, task: str,
                      variant: str = "raw") -> tuple[str, str]:
        """An analyze job and its controls job; returns their names."""
        extra = [p["normalised"]] if variant == "normalised" else []
        a_name = f"analyze/{scope}/K{k}/{variant}"
        a_over = model + base + [f"ica.n_components={k}", "individual=false"] + extra + over("analyze", task)
        jobs.append(Job(a_name, "analyze", ["analyze.py"], a_over, list(deps),
                        {"scope": scope, "K": k, "variant": variant}, "networks/all_group.safetensors"))
        c_name = f"controls/{scope}/K{k}/{variant}"
        c_over = ["--networks", "{" + a_name + "}", "--out", "{out}"] + _controls_args(p) + ["--"] + a_over
        jobs.append(Job(c_name, "controls", ["-m", "fnet.pipelines.study_controls"], c_over, list(deps) + [a_name],
                        {"scope": scope, "K": k, "variant": variant}, "controls.safetensors"))
        return a_name, c_name

    def stage_order(first: int) -> None:  # a task's jobs stage by stage (stable): its dependencies come first
        jobs[first:] = sorted(jobs[first:], key=lambda j: STAGES.index(j.stage))

    zeroshot = p["zeroshot_tasks"] if p["path"] == "finetune" else []
    todo = []  # each task's zero-shot jobs right after its fine-tuned ones
    for t in p["tasks"]:
        todo += [(t, p["path"], True)] + ([(t, "zeroshot", False)] if t in zeroshot else [])
    todo += [(t, "zeroshot", False) for t in zeroshot if t not in p["tasks"]]
    for task, path, full in todo:
        first = len(jobs)
        label = task if path == p["path"] else f"{task} (zero-shot)"
        if p["stimuli"] == "task":  # networks of each task's own prompts (the published evaluation)
            stimuli = ["data=task", f"data.datasets.task.source=task:{task}"]
        else:
            stimuli = []
        if path == "finetune":
            t_name = f"train/{task}"
            if not any(j.name == t_name for j in jobs):
                jobs.append(Job(t_name, "train", ["train.py"], model + [f"task={task}"] + over("train", task),
                                [], {"task": task}, "checkpoints/best-*.ckpt"))
            scope, base, deps = task, ["ckpt_path={" + t_name + "}"], [t_name]
        else:
            scope, base, deps = ("model", [], []) if not stimuli else (f"{task}-zeroshot", [], [])
        ev_base = model + [f"task={task}"] + base + over("evaluate", task)

        def ev(name: str, overrides: list[str], ev_deps: list[str], **meta: Any) -> None:
            jobs.append(Job(f"evaluate/{path}/{task}/{name}", "evaluate", ["evaluate.py"], ev_base + overrides,
                            deps + ev_deps, {"task": label, "path": path, **meta}))

        ev("unmasked", ["mask=none"], [], condition="unmasked")
        for variant in ["raw"] + (["normalised"] if p["normalised"] and full else []):
            a, c = f"analyze/{scope}/K{K}/{variant}", f"controls/{scope}/K{K}/{variant}"
            if not any(j.name == a for j in jobs):
                networks_jobs(scope, base + stimuli, deps, K, task, variant)
            nets, ctl = ["mask.networks_file={" + a + "}"], ["mask.networks_file={" + c + "}"]
            v = {"variant": variant, "K": K}
            ev(f"{variant}/lesion/all", ["mask=lesion", "mask.networks=all"] + nets, [a], condition="lesion",
               target="all", **v)
            each = range(K) if full and task in p["lesion_each"] else []
            for s in seeds:
                if count:
                    ev(f"{variant}/count/all/seed{s}", ["mask=random", "mask.networks=all", f"mask.seed={s}"] + nets,
                       [a], condition="count", target="all", seed=s, **v)
                if magnitude:
                    ev(f"{variant}/magnitude/all/seed{s}",
                       ["mask=lesion", f"mask.networks={layout[f'magnitude/all/seed{s}']}"] + ctl, [c],
                       condition="magnitude", target="all", seed=s, **v)
            if variant != "raw":
                continue  # normalised networks: where they sit and what the all-networks lesion does
            ev("raw/spared/all", ["mask=lesion", f"mask.networks={layout['spared/all']}"] + ctl, [c],
               condition="spared", target="all", **v)
            for k in each:
                ev(f"raw/lesion/net{k}", ["mask=lesion", f"mask.networks={k}"] + nets, [a], condition="lesion",
                   target=f"net{k}", **v)
                ev(f"raw/spared/net{k}", ["mask=lesion", f"mask.networks={layout[f'spared/net{k}']}"] + ctl, [c],
                   condition="spared", target=f"net{k}", **v)
                for s in seeds:
                    if count:
                        ev(f"raw/count/net{k}/seed{s}", ["mask=random", f"mask.networks={k}", f"mask.seed={s}"]
                           + nets, [a], condition="count", target=f"net{k}", seed=s, **v)
                    if magnitude:
                        ev(f"raw/magnitude/net{k}/seed{s}",
                           ["mask=lesion", f"mask.networks={layout[f'magnitude/net{k}/seed{s}']}"] + ctl, [c],
                           condition="magnitude", target=f"net{k}", seed=s, **v)
            if each:
                for i in range(n_units):
                    ev(f"raw/unit/{i}", ["mask=lesion", f"mask.networks={layout[f'unit/{i}']}"] + ctl, [c],
                       condition="unit", target=f"unit{i}", unit_rank=i, **v)
        for k in (p["preserve_K"] if full else []):
            k = int(k)
            a, c = f"analyze/{scope}/K{k}/raw", f"controls/{scope}/K{k}/raw"
            if not any(j.name == a for j in jobs):
                networks_jobs(scope, base + stimuli, deps, k, task)
            klayout = controls_layout(k, len(seeds), n_units)
            nets, ctl = ["mask.networks_file={" + a + "}"], ["mask.networks_file={" + c + "}"]
            ev(f"preserve/K{k}/networks", ["mask=preserve", "mask.networks=all"] + nets, [a],
               condition="preserve", K=k)
            for s in seeds:
                if count:
                    ev(f"preserve/K{k}/count/seed{s}", ["mask=random_preserve", "mask.networks=all",
                                                        f"mask.seed={s}"] + nets, [a],
                       condition="preserve_count", K=k, seed=s)
                if magnitude:
                    ev(f"preserve/K{k}/magnitude/seed{s}",
                       ["mask=preserve", f"mask.networks={klayout[f'magnitude/all/seed{s}']}"] + ctl, [c],
                       condition="preserve_magnitude", K=k, seed=s)
        stage_order(first)
    if p["order"] == "table":  # stable: dependencies still come first (a table's jobs need only earlier tables')
        jobs.sort(key=lambda j: _table(j, K))
    return jobs


def _table(job: Job, n_networks: int) -> int:
    """0: training, the lesion study's networks and every all-networks job (Table 5); 1: per-network and
    single-unit lesions (Table 4); 2: preservation and its networks (Table 8)."""
    m = job.meta
    if job.stage in ("analyze", "controls"):
        return 0 if m.get("K") == n_networks else 2
    if job.stage == "train":
        return 0
    if str(m.get("condition", "")).startswith("preserve"):
        return 2
    return 0 if m.get("target", "all") == "all" else 1


def _compose(preset: dict, items: Sequence[str], out: str | None) -> int:
    """``--compose``: one report from committed study reports (:func:`fnet.study.compose.compose_report`)."""
    from fnet.study.compose import compose_report

    if not out:
        print("--compose writes a new report: give it a folder with --report-dir", file=sys.stderr)
        return 2
    sources = []
    for item in items:
        parts, sep, folder = item.rpartition("=")
        sources.append((folder, [p for p in parts.split(",") if p] if sep else None))
    try:
        paths = compose_report(preset, sources, out)
    except (ValueError, FileNotFoundError) as err:
        print(f"--compose: {err}", file=sys.stderr)
        return 2
    for part, folder in paths["parts"].items():
        print(f"{part:>20}  from {folder}")
    print(f"report: {paths['report']}")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fnet.study PRESET [key=value ...]``: run a study preset, resumably; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fnet.study", description="Run a study preset, resumably.")
    parser.add_argument("preset", help="conf/study/<preset>.yaml (smollm2, gpt2, qwen2_5_3b, chatglm3_6b, tiny) "
                                       "or a YAML path")
    parser.add_argument("set", nargs="*", help="preset overrides key=value (e.g. seeds=3 'tasks=[sst2]')")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and what is done; run nothing")
    parser.add_argument("--only", choices=STAGES, help="run only this stage's jobs")
    parser.add_argument("--root", help="study folder (default outputs/study/<name>)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the jobs done so far; run nothing (works while a run goes on)")
    parser.add_argument("--report-dir", help="where the report goes (default: the study folder)")
    parser.add_argument("--workers", type=int, default=1,
                        help="jobs run at once (default 1); without OMP_NUM_THREADS the cores are split among them")
    parser.add_argument("--adopt", metavar="REASON",
                        help="first move finished jobs whose key changed only through the environment (see "
                             "fnet.study.adopt) to their new folders, keeping REASON and the old key; then go on")
    parser.add_argument("--hours", type=float,
                        help="start no job after this many hours; running jobs finish, the rest wait for a rerun "
                             "(a session's or SLURM allocation's budget: leave room for the longest job)")
    parser.add_argument("--batch", type=int, default=32,
                        help="evaluate jobs of one task and model run in one process, up to this many (default 32; "
                             "1 = a process per job, exactly as typed)")
    parser.add_argument("--compose", action="append", metavar="[TASKS=]FOLDER",
                        help="write one report for the whole plan from committed study reports (repeat: one per "
                             "folder, in order of preference), each task whole from one folder that finished it; "
                             "TASKS (comma-separated, e.g. sst2,sst2-zeroshot) picks them; runs nothing; needs "
                             "--report-dir (fnet.study.compose)")
    args = parser.parse_args(argv)
    preset = load_preset(args.preset, args.set)
    if args.compose:
        return _compose(preset, args.compose, args.report_dir)
    root = Path(args.root or REPO_ROOT / "outputs" / "study" / preset["name"]).resolve()
    jobs = plan(preset)
    started = time.time()
    root.mkdir(parents=True, exist_ok=True)
    if args.report_only:  # statuses only (a dry run needs no lock), then the report
        result = run_jobs(jobs, root, dry_run=True)
    else:
        run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)), "workers": args.workers,
               "dry_run": args.dry_run, "only": args.only, "machine": machine(),
               "environment": environment_parts()}  # so a later change of key says which part changed
        env_key = environment_key(parts=run["environment"])  # read and hashed once for adopt and the run
        previous = signal.signal(signal.SIGTERM, _interrupt)  # kill / scancel: stop like Ctrl-C
        try:
            with lock(root / "study", timeout=0):  # two runners on one folder would run the same jobs twice
                if args.adopt:
                    from fnet.study.adopt import adopt_jobs

                    run["adopted"] = adopt_jobs(jobs, root, reason=args.adopt, env_key=env_key)["adopted"]
                deadline = None if args.hours is None else started + 3600 * args.hours
                result = run_jobs(jobs, root, only=args.only, dry_run=args.dry_run, workers=args.workers,
                                  batch=args.batch, env_key=env_key, deadline=deadline)
        except Timeout:
            print(f"another `python -m fnet.study` is running on {root} (it holds {root / 'study.lock'}); wait for "
                  "it, pass another --root, or write the report so far with --report-only", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            append_run(root, dict(run, seconds=time.time() - started, interrupted=True))
            print("interrupted: the running jobs were stopped, every finished job is kept; rerun the same command "
                  "to continue", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
        seconds = time.time() - started
        (root / "study.json").write_text(json.dumps({"preset": preset, "jobs": result["jobs"], "seconds": seconds},
                                                    indent=1, default=str))
        append_run(root, dict(run, seconds=seconds, counts=result["counts"], hours=args.hours,
                              deadline_reached=result.get("deadline_reached", False)))
    if args.dry_run:
        for r in result["jobs"]:
            print(f"{r['status']:>8}  {r['name']}")
    elif not args.no_report:
        from fnet.study.render import write_report  # matplotlib behind it; only when a report is written

        paths = write_report(root, preset=preset, records=result["jobs"], out=args.report_dir)
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
