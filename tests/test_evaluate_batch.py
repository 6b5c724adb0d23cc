"""fnet.pipelines.evaluate_batch: many evaluate jobs in one process give exactly what evaluate.py gives for each,
a mask never leaks into the next job, a failed job is recorded and the rest run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_evaluate_cli import tiny_netset
from test_train_cli import TINY

from fnet.pipelines.evaluate_batch import run_batch

REPO = Path(__file__).resolve().parents[1]
QUIET = ["logger=none", "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", "eval.bootstrap=50"]


def _env(tmp_path):
    return dict(
        os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", FNET_CACHE=str(tmp_path / "cache"), PYTHONWARNINGS="ignore"
    )


def _predictions(folder: Path) -> list:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_batched_zero_shot_jobs_equal_single_runs_and_no_mask_leaks(tmp_path, shared_data, monkeypatch):
    from test_evaluate_cli import compose_cfg

    from fnet.pipelines.evaluate import run

    monkeypatch.setenv("FNET_CACHE", str(tmp_path / "cache"))
    nets = tiny_netset(tmp_path / "nets.safetensors")
    base = [
        "model=tiny_gpt2",
        "task=sst2",
        "task.limit=6",
        f"paths.data_dir={shared_data}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *QUIET,
    ]
    masks = {
        "none": ["mask=none"],
        "lesion": ["mask=lesion", "mask.networks=1", f"mask.networks_file={nets}"],
        "random": ["mask=random", "mask.networks=2", "mask.seed=3", f"mask.networks_file={nets}"],
        "none_again": ["mask=none"],
    }
    jobs = [
        {"folder": str(tmp_path / "batch" / name), "overrides": base + over, "marker": {"name": name}}
        for name, over in masks.items()
    ]
    assert run_batch(jobs) == 0
    batched = {name: json.loads((tmp_path / "batch" / name / "result.json").read_text()) for name in masks}
    for name in ("lesion", "random"):  # the same job alone, in a fresh composition
        alone = run(compose_cfg(tmp_path / name, shared_data, *masks[name], "model=tiny_gpt2"))
        assert batched[name]["score"] == alone["score"] and batched[name]["metrics"] == alone["metrics"]
        assert _predictions(tmp_path / "batch" / name) == _predictions(tmp_path / name / "out")
        assert batched[name]["mask"]["n_masked"] == alone["mask"]["n_masked"] > 0
    # the masks were removed after their jobs: the last unmasked job scores exactly like the first
    assert _predictions(tmp_path / "batch" / "none_again") == _predictions(tmp_path / "batch" / "none")
    assert _predictions(tmp_path / "batch" / "lesion") != _predictions(tmp_path / "batch" / "none")
    marker = json.loads((tmp_path / "batch" / "lesion" / "job.json").read_text())
    assert marker["name"] == "lesion" and marker["status"] == "done" and marker["output"] == "result.json"
    assert batched["lesion"]["provenance"]["overrides"] == base + masks["lesion"]  # the job's own overrides
    assert (tmp_path / "batch" / "lesion" / "evaluate.log").read_text().count("mask:") == 1


@pytest.mark.slow
def test_batched_checkpoint_jobs_equal_evaluate_py_and_a_failure_does_not_stop_the_batch(tmp_path, shared_data):
    """A fine-tuned checkpoint (the study's path), through the command line of both."""
    run_dir = tmp_path / "train"
    trained = subprocess.run(
        [sys.executable, "train.py", *TINY, "+trainer.max_steps=3", "logger=none", f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    ckpt = sorted((run_dir / "checkpoints").glob("*.ckpt"))[0]
    nets_file = tiny_netset(tmp_path / "nets.safetensors")
    base = ["model=tiny_gpt2", "task=sst2", f"ckpt_path={ckpt}", "task.limit=8", "mask.allow_foreign=true", *QUIET]
    lesion = base + ["mask=lesion", "mask.networks=1", f"mask.networks_file={nets_file}"]
    bad = base + ["mask=lesion", "mask.networks=7", f"mask.networks_file={nets_file}"]  # K = 3: no network 7
    unmasked = base + ["mask=none"]
    jobs = [
        {"folder": str(tmp_path / "batch" / name), "overrides": over, "marker": {"name": name}}
        for name, over in (("unmasked", unmasked), ("bad", bad), ("lesion", lesion), ("again", unmasked))
    ]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    batch = subprocess.run(
        [sys.executable, "-m", "fnet.pipelines.evaluate_batch", str(spec)],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert batch.returncode == 1, batch.stderr[-3000:]  # one job failed ...
    failed = json.loads((tmp_path / "batch" / "bad" / "failed.json").read_text())
    assert "7" in failed["error"] and not (tmp_path / "batch" / "bad" / "job.json").exists()
    for name in ("unmasked", "lesion", "again"):  # ... and the others ran
        assert json.loads((tmp_path / "batch" / name / "job.json").read_text())["status"] == "done"
    alone = tmp_path / "alone"
    single = subprocess.run(
        [sys.executable, "evaluate.py", *lesion, f"hydra.run.dir={alone}"],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ours = json.loads((tmp_path / "batch" / "lesion" / "result.json").read_text())
    theirs = json.loads((alone / "result.json").read_text())
    assert ours["score"] == theirs["score"] and ours["mask"]["n_masked"] == theirs["mask"]["n_masked"] > 0
    assert _predictions(tmp_path / "batch" / "lesion") == _predictions(alone)
    assert _predictions(tmp_path / "batch" / "again") == _predictions(tmp_path / "batch" / "unmasked")


def test_model_pool_lends_one_load_and_drops_a_model_left_hooked(monkeypatch):
    """The pool loads a model once for the jobs that ask for it, and forgets it when a job leaves a hook behind."""
    import torch
    from omegaconf import OmegaConf

    from fnet.pipelines import evaluate

    loads = []

    def load(cfg):
        loads.append(cfg.seed)
        return evaluate.Loaded(None, torch.nn.Linear(2, 2), None, {}, {})

    monkeypatch.setattr(evaluate, "load_model_and_rows", load)
    cfg = OmegaConf.create(
        {"ckpt_path": "x.ckpt", "task": {"name": "sst2"}, "eval": {}, "paths": {"data_dir": "d"}, "seed": 0}
    )
    pool = evaluate.ModelPool()
    with pool.lend(cfg) as first:
        pass
    with pool.lend(cfg) as second:
        assert second is first
        second.module.register_forward_hook(lambda *_: None)  # a mask that was not removed
    with pool.lend(cfg) as third:
        assert third is not first
    assert len(loads) == 2
