"""evaluate.py end to end on the tiny GPT-2: Hydra compose API in-process, a multirun sweep with a failing job
(subprocess) aggregated by fnet.report.sweep, and W&B offline logging (subprocess)."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from fnet.pipelines.evaluate import run

REPO = Path(__file__).resolve().parents[1]


def compose_cfg(tmp_path, shared_data, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[
                "model=tiny_gpt2",
                "task=sst2",
                "task.limit=6",
                "logger=none",
                "eval.bootstrap=50",
                f"paths.root_dir={REPO}",
                f"paths.output_dir={tmp_path / 'out'}",
                f"paths.data_dir={shared_data}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                "~callbacks.progress_bar",
                "+trainer.enable_progress_bar=false",
                *overrides,
            ],
        )


def env(tmp_path):
    out = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="offline",
        FNET_CACHE=str(tmp_path / "cache"),
        PYTHONWARNINGS="ignore",
    )
    out["OMP_NUM_THREADS"] = "1"
    return out


def tiny_netset(path, K=3):
    """Three networks over the tiny GPT-2's mlp_out neurons [3 layers, 32 units]."""
    from fnet.networks import NetworkSet

    masks = torch.zeros(K, 3, 32, dtype=torch.bool)
    masks[0, 0, :4] = True
    masks[1, 1, 4:10] = True
    masks[1, 2, 0] = True
    masks[2, :, 20:22] = True
    NetworkSet.from_masks(masks, {"model": "tiny:gpt2", "signal": "mlp_out"}).save(path)
    return path


def test_unmasked_run_writes_result(tmp_path, shared_data):
    row = run(compose_cfg(tmp_path, shared_data))
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["task"] == "sst2" and saved["n"] == 6 and saved["mask_mode"] == "none"
    for key in ("score", "ci", "chance", "above_chance", "above_chance_unmasked", "mask", "provenance"):
        assert key in saved
    assert saved["provenance"]["model"] == "tiny:gpt2" and saved["provenance"]["signal"] == "mlp_out"
    assert saved["mask"]["n_masked"] == 0 and row["score"] == saved["score"]
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 6
    # the unmasked job seeded the baseline cache for masked jobs on the same rows
    assert len(list((tmp_path / "cache" / "eval_baselines").glob("*.json"))) == 1


def test_masked_run_reports_mask_and_baseline(tmp_path, shared_data):
    row = run(compose_cfg(tmp_path, shared_data, "mask=random_fraction", "mask.fraction=0.5", "mask.seed=3"))
    mask = row["mask"]
    assert mask["per_layer"] == [16, 16, 16] and mask["n_masked"] == 48 and mask["fraction"] == 0.5
    assert row["baseline"]["score"] is not None and row["delta"] == pytest.approx(
        row["score"] - row["baseline"]["score"]
    )
    assert row["seed"] == 3 and row["above_chance_unmasked"] == row["baseline"]["above_chance"]
    cached = list((tmp_path / "cache" / "eval_baselines").glob("*.json"))
    assert len(cached) == 1  # computed once ...
    again = run(compose_cfg(tmp_path, shared_data, "mask=random_fraction", "mask.fraction=0.5", "mask.seed=4"))
    assert again["baseline"]["score"] == row["baseline"]["score"]  # ... and reused


def test_lesion_from_networks_file(tmp_path, shared_data):
    path = tiny_netset(tmp_path / "nets.safetensors")
    row = run(compose_cfg(tmp_path, shared_data, "mask=lesion", "mask.networks=1", f"mask.networks_file={path}"))
    assert row["mask"]["n_masked"] == 7 and row["mask"]["per_layer"] == [0, 6, 1]
    assert row["K"] == 3 and row["networks"] == [1] and row["mask_mode"] == "lesion"
    assert len(row["mask"]["netset"]) == 12  # the NetworkSet's content hash


def test_unknown_task_lists_options(tmp_path, shared_data):
    with pytest.raises(Exception, match="(?s)task/nope.*sst2"):
        compose_cfg(tmp_path, shared_data, "task=nope")


def test_multirun_sweep_with_a_failing_job_then_aggregate(tmp_path, shared_data):
    """`-m task=sst2,qqp mask.networks=range(0,2)`: QQP has no offline data, its jobs record failure.json and
    the sweep goes on (then exits non-zero); fnet.report.sweep turns the folder into tables."""
    nets = tiny_netset(tmp_path / "nets.safetensors")
    sweep_dir = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "evaluate.py",
        "-m",
        "model=tiny_gpt2",
        "task=sst2,qqp",
        "task.limit=5",
        "logger=none",
        "mask=lesion",
        "mask.networks=range(0,2)",
        f"mask.networks_file={nets}",
        f"paths.data_dir={shared_data}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep_dir}",
        "eval.bootstrap=20",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=600)
    # every job ran; the sweep then exits non-zero and lists the failed ones
    assert proc.returncode != 0 and "2 job(s) of the sweep" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("task=qqp") == 2
    results = sorted(glob.glob(str(sweep_dir / "*" / "result.json")))
    failures = sorted(glob.glob(str(sweep_dir / "*" / "failure.json")))
    assert len(results) == 2 and len(failures) == 2
    assert "qqp" in json.loads(Path(failures[0]).read_text())["error"]
    proc = subprocess.run(
        [sys.executable, "-m", "fnet.report.sweep", str(sweep_dir)],
        cwd=REPO,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (sweep_dir / "summary.md").read_text()
    assert "lesion network 0 (K=3)" in text and "lesion network 1 (K=3)" in text
    assert "2 finished jobs, 2 failed" in text and "task=qqp" in text


def test_wandb_offline_run(tmp_path, shared_data):
    out = tmp_path / "wb"
    cmd = [
        sys.executable,
        "evaluate.py",
        "model=tiny_gpt2",
        "task=sst2",
        "task.limit=4",
        "logger=wandb_offline",
        "mask=random_fraction",
        "mask.fraction=0.25",
        f"paths.data_dir={shared_data}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={out}",
        "eval.bootstrap=20",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = glob.glob(str(out / "wandb" / "offline-run-*"))
    assert len(runs) == 1, os.listdir(out)
    run_dir = Path(runs[0])
    assert list(run_dir.glob("run-*.wandb"))
    debug = (run_dir / "logs" / "debug.log").read_text()
    assert "finishing run" in debug and "got exitcode: 0" in debug  # the run was finished, not left open
    tables = [p.name for p in (run_dir / "files" / "media" / "table").glob("*.table.json")]
    assert any(n.startswith("result_") for n in tables) and any(n.startswith("mask_per_layer_") for n in tables)
    assert (out / "result.json").exists()
