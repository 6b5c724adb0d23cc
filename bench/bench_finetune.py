#!/usr/bin/env python
"""Benchmark: fine-tune the offline default model (SmolLM2-135M) on CPU and test it on the held-out split.

Runs ``train.py experiment=<name>`` for each experiment in a subprocess (exactly what a user runs), reads its
``result.json`` and writes ``bench/results_finetune.md``: test score with its 95 % Wilson interval (accuracy)
against the majority-class rate of the same test rows, split sizes and rule, optimiser steps, wall times and
seconds per step, and a description of the machine including its load (the machine may be shared: the times
are then pessimistic, and the file says so).

    .venv/bin/python bench/bench_finetune.py                               # finetune_sst2
    .venv/bin/python bench/bench_finetune.py --experiments finetune_sst2 finetune_ag_news
    .venv/bin/python bench/bench_finetune.py --overrides trainer.max_epochs=1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--experiments", nargs="+", default=["finetune_sst2"])
parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
parser.add_argument("--out", default=str(REPO / "bench" / "results_finetune.md"))
parser.add_argument("--runs-dir", default=str(REPO / "outputs" / "bench_finetune"))
parser.add_argument("--from-json", default=None, help="re-render the report from a last_bench.json, run nothing")
args = parser.parse_args()


def machine() -> dict:
    from fnet.provenance import cpu_model

    cpu = cpu_model()
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1), "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available()}


def run(experiment: str) -> dict:
    run_dir = Path(args.runs_dir) / f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, str(REPO / "train.py"), f"experiment={experiment}", f"hydra.run.dir={run_dir}",
           "callbacks.progress_bar.refresh_rate=0", *args.overrides]
    load_before = os.getloadavg()
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - started
    load_after = os.getloadavg()
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"{experiment} failed (exit {proc.returncode}); see {run_dir}")
    result = json.loads((run_dir / "result.json").read_text())
    return {"experiment": experiment, "command": " ".join(["python train.py"] + cmd[2:3] + args.overrides),
            "run_dir": str(run_dir), "wall_s": wall, "load_before": load_before, "load_after": load_after,
            "result": result}


def wilson(p: float, n: int) -> tuple[float, float]:
    from fnet.scoring import wilson_interval

    return wilson_interval(p * n, n)


def report(info: dict, runs: list[dict]) -> str:
    lines = [
        "# Fine-tuning benchmark (CPU)",
        "",
        f"Written by `bench/bench_finetune.py` on {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB RAM, {info['os']}; "
        f"Python {info['python']}, torch {info['torch']} (CUDA: {info['cuda']}).",
        "",
        ("**The machine was shared** with other jobs during these runs (1-minute load averages below, on "
         f"{info['cores']} cores), so the times are pessimistic: an idle machine is faster."
         if max(max(r["load_before"][0], r["load_after"][0]) for r in runs) > 0.5 * (info["cores"] or 1)
         else "The machine was otherwise idle (load averages below)."),
        "",
        "| experiment | task | model | train / val / test rows | trainable params | steps | test metric | "
        "95 % CI | majority rate | fit | test | wall | s/step | load (1-min) before→after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        res = r["result"]
        sizes = res["data"]["sizes"]
        metric = res["metrics"]["monitor"].split("/", 1)[1] if res["metrics"].get("monitor") else "accuracy"
        score = res["metrics"]["test"].get(f"test/{metric}")
        n_test = sizes["test"]
        lo, hi = wilson(score, n_test) if metric == "accuracy" and score is not None else (float("nan"),) * 2
        steps = res["global_step"] - res.get("start_global_step", 0)
        params = res["trainable_params"]
        lines.append(
            f"| {r['experiment']} | {res['task']} | {res['model']} | {sizes['train']} / {sizes['validation']} / "
            f"{n_test} | {params['backbone_trainable_params'] / 1e6:.1f} M of {params['backbone_params'] / 1e6:.1f} M "
            f"(+ head) | {steps} | {metric} **{score:.3f}** | [{lo:.3f}, {hi:.3f}] | {res['majority_rate_test']:.3f} | "
            f"{res['seconds']['fit']:.0f} s | {res['seconds']['test']:.0f} s | {r['wall_s']:.0f} s | "
            f"{res['seconds']['fit'] / max(steps, 1):.1f} | {r['load_before'][0]:.1f}→{r['load_after'][0]:.1f} |"
        )
    lines += ["", "Data and commands:", ""]
    for r in runs:
        res = r["result"]
        lines += [
            f"- `{r['command']}` (run folder `{Path(r['run_dir']).relative_to(REPO) if r['run_dir'].startswith(str(REPO)) else r['run_dir']}`)",
            f"  - split: {res['data']['rule']}; kept {res['data']['sizes']} (limits {res['data'].get('limits')}); "
            f"test label counts {res['data']['test_labels']['label_counts']}",
            f"  - best validation {res['metrics']['monitor']} = {res['metrics']['best_val_score']}; "
            f"trainer {res['trainer']}",
        ]
    lines += [
        "",
        "Recipe (conf/experiment/finetune_*.yaml): the top 4 of SmolLM2's 30 blocks, the final norm and a linear head"
        " on the last real token train (AdamW, lr 3e-4, linear warmup 10 % then decay, batch 16, fp32), lower blocks"
        " stay pre-trained; one torch thread (`torch_threads: 1`: on this loaded 2-core machine one thread ran a step"
        " in ~4 s, two threads in ~9 s). The same SST-2 recipe with lr 1e-4 reached 0.76 test accuracy; a logistic"
        " probe on frozen last-token features of 320 training rows reached 0.81 (plain text) and 0.70 (task prompt).",
        "",
        "Wall time includes Python start-up, loading the model from the cached safetensors and tokenising; `fit`"
        " includes the sanity check, the validation passes (one per epoch) and checkpoint writes, so `s/step` = fit"
        " time / optimiser steps overstates the cost of a step when the validation split is large (AG News: 400 rows).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        text = report(saved["machine"], saved["runs"])
        Path(args.out).write_text(text)
        print(text)
        raise SystemExit(0)
    info = machine()
    runs = []
    for experiment in args.experiments:
        print(f"running {experiment} ...", flush=True)
        runs.append(run(experiment))
        res = runs[-1]["result"]
        print(f"  {res['metrics']['test']} (majority {res['majority_rate_test']:.3f}) in {runs[-1]['wall_s']:.0f} s",
              flush=True)
    text = report(info, runs)
    Path(args.out).write_text(text)
    (Path(args.runs_dir) / "last_bench.json").write_text(json.dumps({"machine": info, "runs": runs}, indent=1,
                                                                    default=str))
    print(text)
