"""The whole protocol for one model in one command, resumable: ``python -m fnet.study <preset>``.

A study is a list of :class:`Job` s, each an entry point of the repository (``train.py``, ``analyze.py``,
``evaluate.py``, ``-m fnet.pipelines.study_controls``) with Hydra overrides and dependencies. :func:`plan` turns a preset
(``conf/study/<preset>.yaml``) into jobs; :func:`run_jobs` runs them as subprocesses (``sys.executable``, cwd =
the repository root), so every job is exactly what a user would type.

Resuming: a job's folder is named by a content hash of its entry point, its overrides (with its inputs' paths),
the content digests of its inputs (checkpoint, networks file), the fnet code and configs, and the offline data
listing. The folder's ``job.json`` is written last, only after the job's output exists, so a job is done or not:
a stopped study continues where it stopped, a rerun of a finished study recomputes nothing and says so, and a
changed setting gives a new hash, hence a new folder (the old one is kept). A failed job is recorded
(``failed.json``), the jobs that need it are blocked, the rest run, and the command exits non-zero listing them.

Then :func:`fnet.study.report.write_report` aggregates every result into ``report.md``, ``summary.csv`` and
figures. Usage::

    python -m fnet.study smollm2 [--dry-run] [--only STAGE] [--root DIR] [key=value ...]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from filelock import Timeout

from fnet.cache import atomic_write_text, content_key, file_digest, lock
from fnet.pipelines.study_controls import controls_layout

__all__ = ["Job", "PRESET_KEYS", "STAGES", "load_preset", "plan", "job_key", "run_jobs", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: stages in run order
STAGES = ("train", "analyze", "controls", "evaluate")

#: keys of a study preset and their defaults (conf/study/*.yaml)
PRESET_KEYS: dict[str, Any] = {
    "name": None,            # the study's name (default: the preset's file name)
    "model": None,           # conf/model/<model>
    "path": "finetune",      # finetune (train.py per task, then evaluate the checkpoint) | zeroshot
    "tasks": [],             # every task: unmasked, all networks lesioned (+ controls), preservation
    "zeroshot_tasks": [],    # path=finetune only: tasks also evaluated zero-shot (unmasked, all lesioned + controls)
    "lesion_each": [],       # tasks that also get one lesion per network (+ controls, spared, single units)
    "n_networks": 10,        # K of the lesion study's ICA
    "preserve_K": [],        # K values of the preservation study (union of all K networks kept)
    "seeds": 5,              # random-control seeds (count- and magnitude-matched)
    "controls": ["count", "magnitude"],
    "massive": {"top_k": 4, "n_units": 4},  # massive candidates per layer; units spared / lesioned alone
    "n_bins": 10,            # quantile bins of the magnitude-matched control
    "normalised": None,      # override of the variance-normalised ICA (e.g. ica.standardize=true); null = skip
    "stimuli": "genre",      # networks from: genre (conf/data, Tables 1-3) | task (each task's own prompts, data=task)
    "train": [],             # extra overrides of every train.py job
    "analyze": [],           # ... analyze.py jobs
    "evaluate": [],          # ... evaluate.py jobs
}
CONTROL_KINDS = ("count", "magnitude")


@dataclass
class Job:
    """One run of an entry point.

    ``overrides`` may hold ``{dep_name}`` placeholders, replaced by the output path of job ``dep_name`` (which
    must be in ``deps``) when the job runs. ``meta`` describes the job for the report (task, condition, ...).
    """

    name: str
    stage: str
    entry: list[str]
    overrides: list[str]
    deps: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    output: str = "result.json"  # glob of the job's output, relative to its folder


# --------------------------------------------------------------------------------------------------------------
# Presets -> jobs
# --------------------------------------------------------------------------------------------------------------
def load_preset(name_or_path: str, overrides: Sequence[str] = ()) -> dict:
    """A preset (``conf/study/<name>.yaml`` or a YAML path) with ``key=value`` overrides, checked."""
    path = Path(name_or_path)
    if not path.suffix:
        path = REPO_ROOT / "conf" / "study" / f"{name_or_path}.yaml"
    if not path.exists():
        valid = sorted(p.stem for p in (REPO_ROOT / "conf" / "study").glob("*.yaml"))
        raise FileNotFoundError(f"no study preset {name_or_path!r} ({path}); valid presets: {valid}")
    preset = yaml.safe_load(path.read_text()) or {}
    if not isinstance(preset, dict):
        raise ValueError(f"study preset {path}: must be a mapping of keys, got {type(preset).__name__}")
    for item in overrides:  # key=value (dotted keys reach into mappings), the value read as YAML, as Hydra does
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"study preset override {item!r} is not key=value; valid keys: {sorted(PRESET_KEYS)}")
        node = preset
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(text)
    unknown = sorted(set(preset) - set(PRESET_KEYS))
    if unknown:
        raise ValueError(f"study preset {path}: unknown keys {unknown}; valid keys: {sorted(PRESET_KEYS)}")
    out = {k: preset.get(k, v) for k, v in PRESET_KEYS.items()}
    out["name"] = out["name"] or path.stem
    if out["stimuli"] not in ("genre", "task"):
        raise ValueError(f"study preset {path}: stimuli={out['stimuli']!r}; valid: ['genre', 'task']")
    if out["path"] not in ("finetune", "zeroshot"):
        raise ValueError(f"study preset {path}: path={out['path']!r}; valid: ['finetune', 'zeroshot']")
    if not out["model"] or not out["tasks"]:
        raise ValueError(f"study preset {path}: 'model' and 'tasks' are required")
    bad = sorted(set(out["controls"]) - set(CONTROL_KINDS))
    if bad:
        raise ValueError(f"study preset {path}: unknown controls {bad}; valid: {list(CONTROL_KINDS)}")
    bad = sorted(set(out["lesion_each"]) - set(out["tasks"]))
    if bad:
        raise ValueError(f"study preset {path}: lesion_each {bad} are not in tasks {out['tasks']}")
    return out


def _controls_args(p: dict) -> list[str]:
    m = p["massive"]
    return ["--seeds", str(p["seeds"]), "--n-units", str(m["n_units"]), "--top-k", str(m["top_k"]),
            "--n-bins", str(p["n_bins"])]


def plan(p: dict) -> list[Job]:
    """The jobs of a study preset (see :data:`PRESET_KEYS`), in dependency order."""
    jobs: list[Job] = []
    model = [f"model={p['model']}"]
    K = int(p["n_networks"])
    seeds = range(int(p["seeds"]))
    n_units = int(p["massive"]["n_units"])
    layout = controls_layout(K, len(seeds), n_units)
    count, magnitude = "count" in p["controls"], "magnitude" in p["controls"]

    def networks_jobs(scope: str, base: list[str], deps: list[str], k: int, variant: str = "raw") -> tuple[str, str]:
        """An analyze job and its controls job; returns their names."""
        extra = [p["normalised"]] if variant == "normalised" else []
        a_name = f"analyze/{scope}/K{k}/{variant}"
        a_over = model + base + [f"ica.n_components={k}", "individual=false"] + extra + list(p["analyze"])
        jobs.append(Job(a_name, "analyze", ["analyze.py"], a_over, list(deps),
                        {"scope": scope, "K": k, "variant": variant}, "networks/all_group.safetensors"))
        c_name = f"controls/{scope}/K{k}/{variant}"
        c_over = ["--networks", "{" + a_name + "}", "--out", "{out}"] + _controls_args(p) + ["--"] + a_over
        jobs.append(Job(c_name, "controls", ["-m", "fnet.pipelines.study_controls"], c_over, list(deps) + [a_name],
                        {"scope": scope, "K": k, "variant": variant}, "controls.safetensors"))
        return a_name, c_name

    todo = [(t, p["path"], True) for t in p["tasks"]]
    todo += [(t, "zeroshot", False) for t in (p["zeroshot_tasks"] if p["path"] == "finetune" else [])]
    for task, path, full in todo:
        label = task if path == p["path"] else f"{task} (zero-shot)"
        if p["stimuli"] == "task":  # networks of each task's own prompts (the published evaluation)
            stimuli = ["data=task", f"data.datasets.task.source=task:{task}"]
        else:
            stimuli = []
        if path == "finetune":
            t_name = f"train/{task}"
            if not any(j.name == t_name for j in jobs):
                jobs.append(Job(t_name, "train", ["train.py"], model + [f"task={task}"] + list(p["train"]),
                                [], {"task": task}, "checkpoints/best-*.ckpt"))
            scope, base, deps = task, ["ckpt_path={" + t_name + "}"], [t_name]
        else:
            scope, base, deps = ("model", [], []) if not stimuli else (f"{task}-zeroshot", [], [])
        ev_base = model + [f"task={task}"] + base + list(p["evaluate"])

        def ev(name: str, overrides: list[str], ev_deps: list[str], **meta: Any) -> None:
            jobs.append(Job(f"evaluate/{path}/{task}/{name}", "evaluate", ["evaluate.py"], ev_base + overrides,
                            deps + ev_deps, {"task": label, "path": path, **meta}))

        ev("unmasked", ["mask=none"], [], condition="unmasked")
        for variant in ["raw"] + (["normalised"] if p["normalised"] and full else []):
            a, c = f"analyze/{scope}/K{K}/{variant}", f"controls/{scope}/K{K}/{variant}"
            if not any(j.name == a for j in jobs):
                networks_jobs(scope, base + stimuli, deps, K, variant)
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
                networks_jobs(scope, base + stimuli, deps, k)
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
    jobs.sort(key=lambda j: STAGES.index(j.stage))  # stage by stage (stable): every dependency comes first
    return jobs


# --------------------------------------------------------------------------------------------------------------
# Keys and markers
# --------------------------------------------------------------------------------------------------------------
def environment_key(repo: Path = REPO_ROOT) -> str:
    """What every job depends on besides its overrides: the fnet sources (but the study's own runner and
    report), the entry points, the configs (but the study presets), the offline data listing (names, sizes,
    modification times) and the torch / transformers versions."""
    import torch  # only their versions: the planner (--dry-run) need not pay seconds to import them
    import transformers

    parts = []
    for path in sorted(list((repo / "fnet").rglob("*.py")) + list(repo.glob("*.py")) + list((repo / "conf").rglob("*.yaml"))):
        if path.parent in (repo / "fnet" / "study", repo / "conf" / "study"):
            continue
        parts.append((str(path.relative_to(repo)), content_key(path.read_text())))
    data_dir = Path(os.environ.get("FNET_DATA_DIR", repo.parent / "shared" / "data"))
    data = sorted((str(f.relative_to(data_dir)), f.stat().st_size, f.stat().st_mtime_ns)
                  for f in data_dir.rglob("*") if f.is_file()) if data_dir.is_dir() else []
    return content_key(parts, data, torch.__version__, transformers.__version__)


def job_key(job: Job, overrides: list[str], input_digests: dict[str, str], env_key: str) -> str:
    """The content hash that names a job's folder."""
    return content_key(job.entry, overrides, input_digests, env_key)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _output(folder: Path, pattern: str) -> Path | None:
    found = sorted(glob.glob(str(folder / pattern)))
    return Path(found[0]) if len(found) == 1 else None


def _done(folder: Path, key: str, pattern: str) -> dict | None:
    """The job record of a finished job in ``folder`` with ``key``, or None."""
    try:
        record = json.loads((folder / "job.json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key or record.get("status") != "done" or _output(folder, pattern) is None:
        return None
    return record


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


def run_jobs(jobs: Sequence[Job], root: str | Path, *, only: str | None = None, dry_run: bool = False,
             python: str = sys.executable, cwd: str | Path = REPO_ROOT, env_key: str | None = None,
             log=print) -> dict:
    """Run ``jobs`` in order, skipping finished ones; returns ``{"jobs": [records], "counts": {...}}``.

    ``only``: run only jobs of that stage (earlier stages must be done; their outputs are used). ``dry_run``:
    say what would run, run nothing. Every record: name, stage, status (done | skipped | ran | failed | blocked |
    pending | excluded), key, folder, seconds.
    """
    root = Path(root).resolve()
    env_key = env_key or environment_key(Path(cwd))
    outputs: dict[str, Path] = {}
    records: list[dict] = []
    status: dict[str, str] = {}
    for job in jobs:
        missing = [d for d in job.deps if d not in outputs]
        if missing:
            state = "blocked" if any(status.get(d) in ("failed", "blocked") for d in missing) else "pending"
            status[job.name] = state
            records.append({"name": job.name, "stage": job.stage, "status": state, "waiting_for": missing,
                            "meta": job.meta})
            continue
        digests = {d: file_digest(outputs[d]) for d in job.deps}
        placeholder = Path("{out}")
        key = job_key(job, _resolve(job, outputs, placeholder), digests, env_key)
        folder = root / job.stage / f"{_slug(job.name.split('/', 1)[-1])}-{key}"
        overrides = _resolve(job, outputs, folder)
        base = {"name": job.name, "stage": job.stage, "key": key, "folder": str(folder), "meta": job.meta,
                "entry": job.entry, "overrides": overrides, "inputs": digests}
        record = _done(folder, key, job.output)
        if record is not None:
            outputs[job.name] = _output(folder, job.output)
            status[job.name] = "skipped"
            records.append(dict(record, status="skipped", folder=str(folder)))
            continue
        if dry_run or (only is not None and job.stage != only):
            status[job.name] = "pending" if dry_run else "excluded"
            records.append(dict(base, status=status[job.name]))
            continue
        if folder.exists():  # an interrupted run: keep it aside, start clean (nothing finished is lost)
            folder.rename(folder.with_name(f"{folder.name}.interrupted-{int(time.time())}"))
        folder.mkdir(parents=True)
        argv = [python, *job.entry, *overrides]
        if job.entry[0].endswith(".py"):
            argv.append(f"hydra.run.dir={folder}")
        log(f"[study] run {job.name}: {' '.join(argv[1:])}")
        started = time.time()
        with open(folder / "job.log", "w") as handle:
            rc = subprocess.run(argv, cwd=str(cwd), stdout=handle, stderr=subprocess.STDOUT).returncode
        seconds = time.time() - started
        produced = _output(folder, job.output)
        if rc != 0 or produced is None:
            why = f"exit code {rc}" if rc != 0 else f"no output {job.output!r} (or more than one)"
            tail = (folder / "job.log").read_text(errors="replace")[-2000:]
            atomic_write_text(folder / "failed.json", json.dumps(dict(base, status="failed", why=why,
                                                                       seconds=seconds, log_tail=tail), indent=1))
            log(f"[study] FAILED {job.name} ({why}); log: {folder / 'job.log'}")
            status[job.name] = "failed"
            records.append(dict(base, status="failed", why=why, seconds=seconds))
            continue
        record = dict(base, status="done", seconds=seconds, output=str(produced.relative_to(folder)),
                      finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        atomic_write_text(folder / "job.json", json.dumps(record, indent=1))  # the marker: written last
        outputs[job.name] = produced
        status[job.name] = "ran"
        records.append(dict(record, status="ran"))
    counts = {s: sum(1 for r in records if r["status"] == s)
              for s in ("skipped", "ran", "failed", "blocked", "pending", "excluded")}
    return {"jobs": records, "counts": counts}


def summary_lines(result: dict) -> list[str]:
    """The end-of-run lines: totals, then one line per failed or blocked job."""
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
    args = parser.parse_args(argv)
    preset = load_preset(args.preset, args.set)
    root = Path(args.root or REPO_ROOT / "outputs" / "study" / preset["name"]).resolve()
    jobs = plan(preset)
    started = time.time()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with lock(root / "study", timeout=0):  # two runners on one folder would run the same jobs twice
            result = run_jobs(jobs, root, only=args.only, dry_run=args.dry_run)
    except Timeout:
        print(f"another `python -m fnet.study` is running on {root} (it holds {root / 'study.lock'}); wait for it "
              "or pass another --root", file=sys.stderr)
        return 2
    if args.dry_run:
        for r in result["jobs"]:
            print(f"{r['status']:>8}  {r['name']}")
    (root / "study.json").write_text(json.dumps({"preset": preset, "jobs": result["jobs"],
                                                 "seconds": time.time() - started}, indent=1, default=str))
    if not args.dry_run and not args.no_report:
        from fnet.study.report import write_report  # matplotlib behind it; only when a report is written

        paths = write_report(root, preset=preset, records=result["jobs"])
        print(f"report: {paths['report']}")
    for line in summary_lines(result):
        print(line)
    return 1 if result["counts"]["failed"] or result["counts"]["blocked"] else 0


if __name__ == "__main__":
    sys.exit(main())
