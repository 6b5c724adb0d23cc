"""fnet.study.dispatch: a study's units submitted through submitit (``--executor slurm|submitit_local``), with
the runner's folders and done-markers; a killed unit's job is redone by a rerun, its finished jobs are not."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fnet.study import Job
from fnet.study.dispatch import Settings, dispatch, units_of

pytest.importorskip("submitit", reason="submitit (the dev and cluster extras)")

REPO = Path(__file__).resolve().parents[1]

# a fake entry point: logs its name (and, for the slow job, its pid and its runner's), writes its output; the job
# named "slow" sleeps until the file `go` exists
FAKE = """
import json, os, sys, time, pathlib
here = pathlib.Path(__file__).parent
args = dict(a.split("=", 1) for a in sys.argv[1:])
out = pathlib.Path(args["hydra.run.dir"])
with open(here / "calls.txt", "a") as f:
    f.write(args["name"] + "\\n")
if args["name"] == "slow":
    (here / "slow.json").write_text(json.dumps({"pid": os.getpid(), "runner": os.getppid()}))
    while not (here / "go").exists():
        time.sleep(0.2)
(out / "result.json").write_text(json.dumps(args))
"""


def _jobs(folder: str | Path = "."):
    """Two training runs of a fake plan (``folder/fake.py``): run 0 (train -> 2 evaluations), run 1 (train -> the
    slow evaluation)."""
    fake = [str(Path(folder) / "fake.py")]
    return [
        Job("train/a", "train", fake, ["name=train_a"], [], {"task": "t", "run": 0}),
        Job("evaluate/t/run0/x", "evaluate", fake, ["name=x", "in={train/a}"], ["train/a"], {"scope": "t/run0"}),
        Job("evaluate/t/run0/y", "evaluate", fake, ["name=y", "in={train/a}"], ["train/a"], {"scope": "t/run0"}),
        Job("train/b", "train", fake, ["name=train_b"], [], {"task": "t", "run": 1}),
        Job("evaluate/t/run1/slow", "evaluate", fake, ["name=slow", "in={train/b}"], ["train/b"], {"scope": "t/run1"}),
    ]


def _calls(folder: Path) -> list[str]:
    path = folder / "calls.txt"
    return path.read_text().split() if path.exists() else []


def test_units_are_training_runs_or_their_stage_groups():
    units = units_of(_jobs())
    assert [(u.name, u.jobs, u.needs) for u in units] == [
        ("t/run0", ["train/a", "evaluate/t/run0/x", "evaluate/t/run0/y"], []),
        ("t/run1", ["train/b", "evaluate/t/run1/slow"], []),
    ]
    stages = {u.name: u.needs for u in units_of(_jobs(), "stage")}
    assert stages == {
        "t/run0/train": [],
        "t/run0/evaluate": ["t/run0/train"],
        "t/run1/train": [],
        "t/run1/evaluate": ["t/run1/train"],
    }


RUNNER = """
import sys
from fnet.study import Job
from fnet.study.dispatch import Settings, dispatch
sys.path.insert(0, {tests!r})
from test_study_dispatch import _jobs
settings = Settings(executor="submitit_local", retries=0, poll=0.5, minutes=10, batch=1)
result = dispatch(_jobs({folder!r}), {root!r}, settings,
                  env_key="e", log=lambda line: print(line, flush=True))
print("COUNTS", result["counts"], flush=True)
sys.exit(1 if result["counts"]["failed"] or result["counts"]["blocked"] else 0)
"""


def test_a_killed_unit_fails_alone_and_a_rerun_redoes_only_its_unfinished_job(tmp_path):
    """submitit's local executor (the code path of --executor slurm, as local processes): two units run at once;
    SIGKILL of the unit whose job is running (its job process dies with it) fails that unit only; the rerun skips
    every finished job, the killed one's training included, and redoes the killed job in the same folder."""
    (tmp_path / "fake.py").write_text(FAKE)
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(tests=str(REPO / "tests"), folder=str(tmp_path), root=str(tmp_path / "study")))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    first = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "slow.json").exists():
        time.sleep(0.5)
    assert (tmp_path / "slow.json").exists(), first.communicate(timeout=60)[0][-3000:]
    slow = json.loads((tmp_path / "slow.json").read_text())
    os.kill(slow["runner"], signal.SIGKILL)  # the unit's runner (the submitted job); its job process dies with it
    out, _ = first.communicate(timeout=240)
    assert first.returncode == 1, out[-3000:]
    assert "t/run1: job" in out and "unit failed" in out and "COUNTS" in out
    units = json.loads((tmp_path / "study" / "submitit" / "units.json").read_text())
    assert set(units) == {"t/run0", "t/run1"} and all(u["executor"] == "submitit_local" for u in units.values())
    done = {p.parent.name.split("-")[0] for p in (tmp_path / "study").glob("*/*/job.json")}
    assert done == {"a", "b", "t_run0_x", "t_run0_y"}  # the slow job has no marker
    assert sorted(_calls(tmp_path)) == ["slow", "train_a", "train_b", "x", "y"]

    (tmp_path / "go").write_text("")
    (tmp_path / "slow.json").unlink()
    again = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert sorted(_calls(tmp_path)) == ["slow", "slow", "train_a", "train_b", "x", "y"]  # only the killed job
    assert "submitted t/run1" in again.stdout and "submitted t/run0" not in again.stdout  # run0 was done
    assert "'ran': 1" in again.stdout and "'skipped': 4" in again.stdout
    assert list((tmp_path / "study" / "evaluate").glob("t_run1_slow-*.interrupted-*"))  # the killed attempt, aside
    assert json.loads((tmp_path / "study" / "submitit" / "units.json").read_text())["t/run1"]["attempt"] == 2


SBATCH = """#!/bin/sh
n=$(( $(cat "{d}/n" 2>/dev/null || echo 100) + 1 ))
echo $n > "{d}/n"
cp "$1" "{d}/sbatch-$n.sh"
echo "Submitted batch job $n"
"""
SACCT = """#!/bin/sh
printf 'JobID|State|NodeList\\n'
for id in $(ls "{d}" | sed -n 's/^sbatch-\\([0-9]*\\)\\.sh$/\\1/p'); do printf '%s|PENDING|None\\n' "$id"; done
"""


def _fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    bin_dir, log = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("sbatch", SBATCH), ("sacct", SACCT), ("srun", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text.format(d=log))
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_slurm_units_carry_the_settings_and_afterok_and_are_not_submitted_twice(tmp_path, monkeypatch):
    """--executor slurm with fake sbatch / sacct: one sbatch per stage group, the partition, GPUs, time and
    account on each, afterok on the units it needs (with kill-on-invalid-dep); a second command while they are
    queued submits nothing again."""
    log = _fake_slurm(tmp_path, monkeypatch)
    settings = Settings(
        executor="slurm",
        unit="stage",
        partition="gpu",
        account="lab",
        gpus=1,
        minutes=90,
        options={"slurm_qos": "high"},
        wait=False,
    )
    lines: list[str] = []
    result = dispatch(_jobs(tmp_path), tmp_path / "study", settings, env_key="e", log=lines.append)
    assert result["units"] == {
        u: "submitted" for u in ("t/run0/train", "t/run0/evaluate", "t/run1/train", "t/run1/evaluate")
    }
    assert result["counts"]["pending"] == 5
    scripts = {int(p.stem.split("-")[1]): p.read_text() for p in log.glob("sbatch-*.sh")}
    assert sorted(scripts) == [101, 102, 103, 104]
    for text in scripts.values():
        for flag in ("--partition=gpu", "--account=lab", "--gpus-per-node=1", "--time=90", "--qos=high"):
            assert f"#SBATCH {flag}" in text
    ids = json.loads((tmp_path / "study" / "submitit" / "units.json").read_text())
    evaluate = scripts[int(ids["t/run0/evaluate"]["job_id"])]
    assert f"#SBATCH --dependency=afterok:{ids['t/run0/train']['job_id']}" in evaluate
    assert "#SBATCH --kill-on-invalid-dep=yes" in evaluate
    assert "--dependency" not in scripts[int(ids["t/run0/train"]["job_id"])]
    assert "fnet-study-t_run0_evaluate" in evaluate

    again: list[str] = []
    dispatch(_jobs(tmp_path), tmp_path / "study", settings, env_key="e", log=again.append)
    assert len(list(log.glob("sbatch-*.sh"))) == 4  # all four still queued: nothing submitted again
    assert sum("not submitted again" in line for line in again) == 4


def test_the_dry_run_shows_the_units_and_sbatch_lines_and_submits_nothing(tmp_path, monkeypatch, capsys):
    from fnet.study import cli

    log = _fake_slurm(tmp_path, monkeypatch)
    monkeypatch.setattr(cli, "environment_parts", lambda: {"code": "c"})  # no hashing of the data folder
    monkeypatch.setattr(cli, "environment_key", lambda parts=None: "e")
    argv = [
        "tiny_v2",
        "--root",
        str(tmp_path / "study"),
        "--executor",
        "slurm",
        "--dry-run",
        "--slurm-partition",
        "gpu",
        "--slurm-gpus",
        "1",
        "--slurm-time",
        "120",
        "--slurm-account",
        "lab",
        "--executor-opt",
        "slurm_qos=high",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "executor slurm, one job per training run: 2 units, 2 to submit, 0 done" in out
    assert "submit  sst2/run0  (60 jobs, 0 done)" in out and "pending  train/sst2/run1" in out
    for flag in ("--partition=gpu", "--gpus-per-node=1", "--time=120", "--account=lab", "--qos=high"):
        assert f"#SBATCH {flag}" in out
    assert not list(log.glob("sbatch-*")) and not (tmp_path / "study" / "submitit" / "units.json").exists()
    assert cli.main(["tiny_v2", "--root", str(tmp_path / "study"), "--executor", "slurm", "--hours", "1"]) == 2
    assert "--hours, --only and --adopt are the local runner's" in capsys.readouterr().err
