"""train.py end to end in subprocesses (tiny model, a handful of steps): a killed run resumes from last.ckpt,
W&B logs offline, DDP on 2 CPU processes, and the experiment configs compose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

TINY = [
    "model=tiny_gpt2",
    "datamodule.max_train_rows=32",
    "datamodule.max_eval_rows=16",
    "datamodule.max_length=32",
    "datamodule.batch_size=8",
    "torch_threads=1",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.log_every_n_steps=1",
]

CRASH = '''
import os
import lightning.pytorch as pl

class CrashAtStep(pl.Callback):
    """Kill the process (no cleanup, like SIGKILL) once the trainer reaches `step` optimiser steps."""
    def __init__(self, step: int):
        self.step = step
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os._exit(3)
'''


def _train(args: list[str], run_dir: Path, extra_env: dict | None = None, timeout: int = 400):
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PYTHONPATH=os.pathsep.join(filter(None, [str(run_dir.parent), os.environ.get("PYTHONPATH")])),
    )
    env.update(extra_env or {})
    cmd = [sys.executable, str(REPO / "train.py"), *TINY, *args, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_killed_run_resumes_from_last_checkpoint_with_wandb_offline(tmp_path):
    (tmp_path / "crash_cb.py").write_text(CRASH)
    first = tmp_path / "first"
    killed = _train(
        [
            "+trainer.max_steps=6",
            "callbacks.last_checkpoint.every_n_train_steps=2",
            "logger=wandb_offline",
            "+callbacks.crash._target_=crash_cb.CrashAtStep",
            "+callbacks.crash.step=3",
        ],
        first,
    )
    assert killed.returncode == 3, killed.stderr[-3000:]
    last = first / "checkpoints" / "last.ckpt"
    assert last.exists() and not (first / "result.json").exists()
    import torch

    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2
    offline_runs = list((first / "wandb").glob("offline-run-*"))
    assert offline_runs, f"no offline W&B run under {first / 'wandb'}"

    second = tmp_path / "second"
    resumed = _train(["+trainer.max_steps=6", f"ckpt_path={last}", "logger=csv"], second)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((second / "result.json").read_text())
    assert result["start_global_step"] == 2 and result["global_step"] == 6  # continued, not restarted
    assert result["resumed_from"] == str(last)
    assert "offline" in result["data"]["rule"] and result["data"]["sizes"]["test"] == 16
    assert {"test/accuracy", "test/loss"} <= set(result["metrics"]["test"])
    assert result["seed"] == 0 and result["provenance"]["fnet_version"]
    # the CSV log of the resumed run starts after step 2
    import csv

    rows = list(csv.DictReader((second / "csv" / "metrics.csv").open()))
    steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert steps and min(steps) >= 2


def test_ddp_on_two_cpu_processes(tmp_path):
    run = tmp_path / "ddp"
    proc = _train(["trainer=ddp_cpu", "+trainer.max_steps=2", "logger=csv"], run, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((run / "result.json").read_text())
    assert result["trainer"]["devices"] == 2 and result["trainer"]["strategy"] == "DDPStrategy"
    assert result["global_step"] == 2 and "test/accuracy" in result["metrics"]["test"]


@pytest.mark.parametrize("experiment", ["finetune_sst2", "finetune_ag_news", "finetune_squad"])
def test_experiment_configs_compose(experiment):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"])
    assert cfg.model.name == "smollm2_135m"
    assert cfg.callbacks.model_checkpoint.monitor == f"val/{cfg.task.metric[0]}"
    from fnet.lit.task_modules import task_kind

    assert task_kind(cfg.task) in ("classification", "qa")


@pytest.mark.parametrize(
    "experiment",
    ["finetune_sst2_lesion", "finetune_sst2_preserve", "finetune_ag_news_lesion", "finetune_ag_news_preserve"],
)
def test_mask_sweep_configs_compose(experiment):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="evaluate", overrides=[f"experiment={experiment}", "ckpt_path=x.ckpt"], return_hydra_config=True
        )
    assert cfg.ckpt_path == "x.ckpt" and cfg.task.name in experiment
    assert "mask" in cfg.hydra.sweeper.params
