"""DDP on CPU (gloo): 2 processes score the same examples as 1 process and report the same metrics.

Lightning's DDP launcher re-runs the script for rank 1, so both runs go through ``evaluate.py`` in a subprocess.
The examples are split without the padding duplicates of ``DistributedSampler`` (each scored once), and the
per-example states are gathered and sorted by index, so even the bootstrap CI matches exactly.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def evaluate(tmp_path, shared_data, name, *overrides):
    out = tmp_path / name
    cmd = [
        sys.executable,
        "evaluate.py",
        "model=tiny_gpt2",
        "task=ag_news",
        "task.limit=11",
        "task.metric=[accuracy,mcc]",
        "logger=none",
        "eval.batch_size=2",
        "eval.bootstrap=200",
        f"paths.data_dir={shared_data}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={out}",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
        *overrides,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def test_two_processes_equal_one(tmp_path, shared_data):
    single = evaluate(tmp_path, shared_data, "single")
    ddp = evaluate(tmp_path, shared_data, "ddp", "trainer=ddp_cpu", "trainer.devices=2")
    assert single["world_size"] == 1 and ddp["world_size"] == 2
    assert ddp["n"] == single["n"] == 11  # 6 + 5 examples, none duplicated
    assert ddp["metrics"] == single["metrics"]
    assert ddp["label_counts"] == single["label_counts"] and ddp["pred_counts"] == single["pred_counts"]
    assert ddp["chance"] == single["chance"]
