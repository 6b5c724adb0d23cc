"""A `-m` sweep of evaluate.py through Hydra's submitit launcher (`hydra/launcher=local`: the code path of
`hydra/launcher=slurm`, as local processes), then `python -m fnet.report.sweep` on its folder."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher (the dev extra)")

REPO = Path(__file__).resolve().parents[1]


def test_submitit_local_sweep_runs_each_job_and_aggregates(tmp_path, shared_data):
    sweep_dir = tmp_path / "sweep"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        FNET_CACHE=str(tmp_path / "cache"),
        PYTHONWARNINGS="ignore",
    )
    cmd = [
        sys.executable,
        "evaluate.py",
        "-m",
        "hydra/launcher=local",
        "hydra.launcher.timeout_min=5",
        "model=tiny_gpt2",
        "task=sst2",
        "task.limit=4",
        "mask=random_fraction",
        "mask.fraction=0.25",
        "mask.seed=1,2",
        "eval.baseline=false",
        "eval.bootstrap=20",
        "logger=none",
        f"paths.data_dir={shared_data}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep_dir}",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # each sweep job ran as its own submitit job (its own pickles and logs), in its own numbered folder
    submitted = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit())
    assert len(submitted) == 2, submitted
    for job_id in submitted:
        assert (sweep_dir / ".submitit" / job_id / f"{job_id}_0_result.pkl").is_file()
    rows = [json.loads((sweep_dir / str(num) / "result.json").read_text()) for num in (0, 1)]
    assert [r["seed"] for r in rows] == [1, 2]
    for row in rows:  # a quarter of the tiny GPT-2's 3 x 32 mlp_out neurons, 4 scored rows
        assert row["task"] == "sst2" and row["n"] == 4 and row["mask"]["per_layer"] == [8, 8, 8]
    proc = subprocess.run(
        [sys.executable, "-m", "fnet.report.sweep", str(sweep_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 finished jobs, 0 failed" in (sweep_dir / "summary.md").read_text()
    with open(sweep_dir / "summary.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    # both seeds' jobs land in one condition: mean of their scores, 24 masked neurons each
    assert len(table) == 1 and table[0]["task"] == "sst2" and int(table[0]["n_seeds"]) == 2
    assert float(table[0]["n_masked"]) == 24 and float(table[0]["mean"]) == pytest.approx(
        (rows[0]["score"] + rows[1]["score"]) / 2
    )
