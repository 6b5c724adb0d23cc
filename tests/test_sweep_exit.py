"""A sweep's exit status: every job runs, then a multirun with failed jobs exits non-zero and lists them; Ctrl-C in a
job writes failure.json and stops the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fnet.pipelines.hydra_utils import SweepFailures, failed_jobs, task_wrapper

REPO = Path(__file__).resolve().parents[1]


def multirun(tmp_path, *overrides):
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        FNET_CACHE=str(tmp_path / "cache"),
        PYTHONWARNINGS="ignore",
        OMP_NUM_THREADS="1",
    )
    cmd = [
        sys.executable,
        "evaluate.py",
        "-m",
        "model=tiny_gpt2",
        "task=sst2",
        "task.source=local",
        "task.limit=3",
        "logger=none",
        "eval.bootstrap=10",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_an_all_failing_multirun_exits_nonzero_and_lists_every_job(tmp_path):
    """A data folder without the task's file makes each job raise (TaskDataError)."""
    proc = multirun(tmp_path, f"paths.data_dir={tmp_path / 'nothing'}", "task.seed=0,1")
    assert proc.returncode != 0, proc.stdout[-2000:]
    sweep = tmp_path / "sweep"
    assert sorted(p.parent.name for p in sweep.glob("*/failure.json")) == ["0", "1"]  # both jobs ran
    report = proc.stderr
    assert "2 job(s) of the sweep" in report, report[-3000:]
    for job, seed in (("0", 0), ("1", 1)):
        line = next(ln for ln in report.splitlines() if ln.strip().startswith(str(sweep / job)))
        assert f"task.seed={seed}" in line and "TaskDataError" in line and "does not exist" in line


def test_a_failing_job_does_not_stop_the_others(tmp_path, shared_data):
    proc = multirun(tmp_path, f"paths.data_dir={tmp_path / 'nothing'},{shared_data}")
    assert proc.returncode != 0
    sweep = tmp_path / "sweep"
    assert (sweep / "0" / "failure.json").exists() and not (sweep / "0" / "result.json").exists()
    assert (sweep / "1" / "result.json").exists() and not (sweep / "1" / "failure.json").exists()
    assert "1 job(s) of the sweep" in proc.stderr and str(sweep / "0") in proc.stderr
    assert f"{sweep / '1'} " not in proc.stderr  # the finished job is not listed


def cfg_in(folder):
    return OmegaConf.create({"paths": {"output_dir": str(folder)}})


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit(1)])  # Lightning turns Ctrl-C into exit(1)
def test_ctrl_c_writes_failure_json_then_stops(tmp_path, interrupt):
    def job(cfg):
        raise interrupt

    with pytest.raises(type(interrupt)):
        task_wrapper(job)(cfg_in(tmp_path))
    record = json.loads((tmp_path / "failure.json").read_text())
    assert record["interrupted"] is True and record["error"].startswith(type(interrupt).__name__)
    assert failed_jobs(tmp_path)[0]["interrupted"] is True


def test_a_clean_exit_and_success_write_no_failure(tmp_path):
    def quits(cfg):
        raise SystemExit(0)

    with pytest.raises(SystemExit):
        task_wrapper(quits)(cfg_in(tmp_path))
    assert task_wrapper(lambda cfg: 7)(cfg_in(tmp_path)) == 7
    assert not (tmp_path / "failure.json").exists()


def test_callback_reports_only_this_multiruns_failures(tmp_path):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    old = tmp_path / "0"
    old.mkdir()
    (old / "failure.json").write_text(json.dumps({"error": "ValueError: old", "overrides": ["a=1"]}))
    os.utime(old / "failure.json", (1, 1))  # written by an earlier multirun into the same folder
    callback = SweepFailures()
    callback.on_multirun_start(config)
    callback.on_multirun_end(config)  # nothing failed this time: returns
    new = tmp_path / "1"
    new.mkdir()
    (new / "failure.json").write_text(json.dumps({"error": "ValueError: new\nmore", "overrides": ["a=2"]}))
    with pytest.raises(SystemExit) as exit_info:
        callback.on_multirun_end(config)
    message = str(exit_info.value.code)
    assert "1 job(s)" in message and f"{new}  [a=2]  ValueError: new" in message and "ValueError: old" not in message
