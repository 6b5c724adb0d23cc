#!/usr/bin/env python
"""Benchmark: fine-tuning recipes for the offline default model (SmolLM2-135M) on CPU, and the feature cache.

Every run is ``train.py experiment=finetune_<task>_v2 <recipe overrides>`` in a subprocess (exactly what a user
runs), one torch thread each; the bench reads its ``result.json`` (test score with its 95 % CI and chance level,
split sizes, steps, the process's own CPU seconds for the cached features / fit / test) and the subprocess's CPU time
(``os.wait4``: user + system, start-up included), and writes ``bench/results_finetune.md``.

Groups of runs (``--groups``):

* ``speedup``: SST-2, top-4 recipe, 500 training rows, 300 validation and 300 test rows, 1 epoch, seeds 0-2,
  once without and once with the feature cache (``module.cache_features``); the report compares their CPU time and
  the seed-0 trained weights.
* ``compare``: SST-2 and QNLI with three recipes: ``top4`` (today's: top 4 blocks, lr 3e-4), ``top8`` (top 8
  blocks, lr 2e-4) and ``lora`` (LoRA r=16 on the top 8 blocks, lr 1e-3, from the top-8 recipe's cached features).
* ``chosen``: the chosen recipe (the v2 experiment files as they are) on CoLA, MRPC, MNLI, AG News and SQuAD.

Runs are resumable (a run whose ``bench.json`` exists is skipped) and several bench processes may share one runs
folder (e.g. one per group, side by side); ``report`` renders whatever has finished.

    .venv/bin/python bench/bench_finetune.py run --groups compare
    .venv/bin/python bench/bench_finetune.py run --groups speedup chosen
    .venv/bin/python bench/bench_finetune.py report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: recipe -> Hydra overrides on top of conf/experiment/finetune_<task>_v2.yaml (whose base is the chosen recipe)
RECIPES = {
    "top4": ["module.trainable_layers=4", "module.cache_features=true", "optimizer.lr=3.0e-4"],
    "top8": ["module.trainable_layers=8", "module.cache_features=true", "optimizer.lr=2.0e-4"],
    "lora": [
        "module.trainable_layers=0",
        "module.cache_features=true",
        "module.lora={r:16,alpha:32,dropout:0.05,layers:8}",
        "optimizer.lr=1.0e-3",
    ],
    "v2": [],  # the experiment file as it is
}
RECIPE_TEXT = {
    "top4": "top 4 blocks + norm + head, lr 3e-4, cached features",
    "top8": "top 8 blocks + norm + head, lr 2e-4, cached features",
    "lora": "LoRA r=16 (alpha 32, dropout 0.05) on every Linear of the top 8 blocks + head, lr 1e-3, cached features "
    "(the top-8 recipe's)",
    "v2": "the v2 experiment file (top 8 blocks + norm + head, lr 2e-4, cached features)",
}
#: goals on the test split: (metric, threshold); MRPC also needs F1 above the constant predictor's
GOALS = {
    "sst2": ("accuracy", 0.86),
    "ag_news": ("accuracy", 0.87),
    "qnli": ("accuracy", 0.70),
    "mrpc": ("accuracy", 0.75),
    "cola": ("mcc", 0.20),
    "squad": ("f1", 0.30),
    "mnli": ("accuracy", 0.50),
}
SPEEDUP = [
    "datamodule.max_train_rows=500",
    "datamodule.max_eval_rows=300",
    "trainer.max_epochs=1",
    "module.trainable_layers=4",
    "optimizer.lr=3.0e-4",
]


def plan() -> list[dict]:
    runs = []
    for cached in ("false", "true"):
        for seed in range(3):
            runs.append(
                {
                    "group": "speedup",
                    "name": f"speedup_sst2_{'cached' if cached == 'true' else 'uncached'}_s{seed}",
                    "task": "sst2",
                    "recipe": "top4",
                    "seed": seed,
                    "cached": cached == "true",
                    "overrides": [*SPEEDUP, f"module.cache_features={cached}"],
                }
            )
    for task in ("sst2", "qnli"):
        for recipe in ("top4", "top8", "lora"):
            runs.append(
                {
                    "group": "compare",
                    "name": f"compare_{task}_{recipe}",
                    "task": task,
                    "recipe": recipe,
                    "seed": 0,
                    "overrides": list(RECIPES[recipe]),
                }
            )
    for task in ("cola", "mrpc", "mnli", "ag_news", "squad"):
        runs.append(
            {"group": "chosen", "name": f"chosen_{task}_v2", "task": task, "recipe": "v2", "seed": 0, "overrides": []}
        )
    # more rows with the v2 recipe, where 2,000 rows fell short of the goal (cached features: CPU grows with rows)
    for task, n_rows in (("sst2", 8000), ("ag_news", 3000), ("sst2", 16000)):
        runs.append(
            {
                "group": "rows",
                "name": f"rows_{task}_{n_rows}",
                "task": task,
                "recipe": "v2",
                "seed": 0,
                "overrides": [f"datamodule.max_train_rows={n_rows}"],
            }
        )
    # the tasks whose v2 file fell short (MRPC, CoLA) or was not yet measured (QNLI, MNLI, SQuAD): every train row
    # and a second epoch (CoLA, MRPC), more questions (SQuAD); the goals and the 45 CPU-min limit decide
    for name, task, overrides in (
        ("more_mrpc_all_2ep", "mrpc", ["datamodule.max_train_rows=null", "trainer.max_epochs=2"]),
        ("more_cola_all_2ep", "cola", ["datamodule.max_train_rows=null", "trainer.max_epochs=2"]),
        ("more_qnli_4000", "qnli", ["datamodule.max_train_rows=4000"]),
        ("more_squad_1000", "squad", ["datamodule.max_train_rows=1000"]),
        ("more_mnli_4ep", "mnli", ["trainer.max_epochs=4", "optimizer.lr=3.0e-4"]),
        ("more_qnli_all_2ep", "qnli", ["datamodule.max_train_rows=null", "trainer.max_epochs=2"]),
        ("more_mrpc_all_3ep", "mrpc", ["datamodule.max_train_rows=null", "trainer.max_epochs=3"]),
    ):
        runs.append({"group": "more", "name": name, "task": task, "recipe": "v2", "seed": 0, "overrides": overrides})
    # the v2 recipe (top 8 blocks) with and without cached features, 500 rows: the per-step cost of each path, from
    # which bench/results_study.md prices the study's training runs on the path before the feature cache
    for cached in ("false", "true"):
        runs.append(
            {
                "group": "path",
                "name": f"path_sst2_v2_{'cached' if cached == 'true' else 'uncached'}",
                "task": "sst2",
                "recipe": "v2",
                "seed": 0,
                "cached": cached == "true",
                "overrides": ["datamodule.max_train_rows=500", f"module.cache_features={cached}"],
            }
        )
    return runs


def machine() -> dict:
    sys.path.insert(0, str(REPO))
    import torch

    from fnet.provenance import cpu_model

    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def run_one(spec: dict, runs_dir: Path) -> dict | None:
    run_dir = runs_dir / spec["name"]
    record_file = run_dir / "bench.json"
    if record_file.exists():
        print(f"{spec['name']}: done before, skipped", flush=True)
        return json.loads(record_file.read_text())
    claim = run_dir / "claim.pid"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # one bench process per run, when several share the runs folder
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if _alive(int(claim.read_text() or 0)):
            print(f"{spec['name']}: another bench process runs it, skipped", flush=True)
            return None
        claim.unlink()
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    if (run_dir / "result.json").exists():  # finished without its bench process: its own CPU count stands in
        result = json.loads((run_dir / "result.json").read_text())
        record = dict(
            spec,
            command="python train.py "
            + " ".join([f"experiment=finetune_{spec['task']}_v2", *spec["overrides"], f"seed={spec['seed']}"]),
            run_dir=str(run_dir),
            wall_s=result["seconds"]["total"],
            cpu_s=result["cpu_seconds"]["total"],
            cpu_from="result.json (process_time, imports excluded)",
            load_before=[float("nan")] * 3,
            load_after=os.getloadavg(),
            result=result,
        )
        record_file.write_text(json.dumps(record, indent=1, default=str))
        return record
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        f"experiment=finetune_{spec['task']}_v2",
        *spec["overrides"],
        f"seed={spec['seed']}",
        f"hydra.run.dir={run_dir}",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if spec["group"] == "speedup":  # a cache of its own, so the cached seed 0 pays for every split's states
        cache = runs_dir / "cache_speedup"
        (cache / "models").parent.mkdir(parents=True, exist_ok=True)
        shared = Path(os.environ.get("FNET_CACHE") or Path.home() / ".cache" / "fnet") / "models"
        if not (cache / "models").exists() and shared.is_dir():
            (cache / "models").symlink_to(shared)  # the converted model only
        env["FNET_CACHE"] = str(cache)
    print(f"{spec['name']}: {' '.join(cmd[2:-2])}", flush=True)
    load_before = os.getloadavg()
    started = time.time()
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{spec['name']} failed (exit {code}); see {run_dir / 'train.log'}")
    record = dict(
        spec,
        command="python train.py " + " ".join(cmd[2:-2]),
        run_dir=str(run_dir),
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        load_before=load_before,
        load_after=os.getloadavg(),
        result=json.loads((run_dir / "result.json").read_text()),
    )
    record_file.write_text(json.dumps(record, indent=1, default=str))
    res = record["result"]["test_result"]
    print(
        f"{spec['name']}: {res['metric']} {res['score']:.3f} [{res['ci'][0]:.3f}, {res['ci'][1]:.3f}] in "
        f"{record['cpu_s'] / 60:.1f} CPU-min, {wall / 60:.1f} min",
        flush=True,
    )
    return record


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------
def _score(res: dict, metric: str | None = None) -> tuple[float, float, float, float]:
    """(value, ci low, ci high, chance) of ``metric`` (default: the primary one) of a test_result."""
    m = res["metrics"][metric or res["metric"]]
    return m["value"], m["ci_low"], m["ci_high"], m["chance"]


def goal_met(task: str, res: dict) -> tuple[bool, str]:
    metric, threshold = GOALS[task]
    value = _score(res, metric)[0]
    ok = value >= threshold
    text = f"{metric} ≥ {threshold:.2f}"
    if task == "mrpc":
        f1, _, _, f1_chance = _score(res, "f1")
        ok = ok and f1 > f1_chance
        text += f" and F1 > {f1_chance:.3f} (always 'equivalent')"
    return ok, text


def cpu_parts(r: dict) -> dict[str, float]:
    """CPU seconds of one run: the feature cache it built (it counts where it was built), fit (training and
    validation), test, and the rest (loading, the result)."""
    res = r["result"]
    cpu = res.get("cpu_seconds", {})
    cache = cpu.get("features", 0.0) if res.get("feature_cache", {}).get("built") else 0.0
    fit, test = cpu.get("fit", 0.0), cpu.get("test", 0.0)
    return {"cache": cache, "fit": fit, "test": test, "rest": r["cpu_s"] - cache - fit - test}


def _cpu_split(r: dict) -> tuple[float, float]:
    """(feature-cache CPU-min paid by this run, the rest of its CPU-min)."""
    cache = cpu_parts(r)["cache"]
    return cache / 60, (r["cpu_s"] - cache) / 60


def _rows(res: dict) -> str:
    sizes = res["data"]["sizes"]
    return f"{sizes['train']:,} / {sizes['validation']:,} / {sizes['test']:,}"


def _hit(record: dict) -> bool:
    """Whether a cached run read every split's stored states (rather than building any)."""
    entries = record["result"].get("feature_cache", {}).get("entries", {})
    return bool(entries) and all(e.get("hit") for e in entries.values())


def _weights_diff(a: dict, b: dict) -> tuple[float, int] | None:
    """Max |difference| of the trained weights in the two runs' best checkpoints (trained parameters only)."""
    import torch

    try:
        sa = torch.load(a["result"]["checkpoints"]["best"], map_location="cpu", weights_only=False)["state_dict"]
        sb = torch.load(b["result"]["checkpoints"]["best"], map_location="cpu", weights_only=False)["state_dict"]
    except (OSError, KeyError, RuntimeError):
        return None
    if set(sa) != set(sb):
        return None
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa), sum(v.numel() for v in sa.values())


def report(info: dict, records: list[dict]) -> str:
    by_name = {r["name"]: r for r in records}
    loads = [x for r in records for x in (r["load_before"][0], r["load_after"][0]) if not math.isnan(x)]
    lines = [
        "# Fine-tuning recipes and the feature cache (CPU)",
        "",
        f"Written by `bench/bench_finetune.py` on {time.strftime('%Y-%m-%d %H:%M')}, {len(records)} runs of "
        "`train.py experiment=finetune_<task>_v2 <recipe>` in subprocesses, one torch thread each (up to five side "
        "by side in the last session, with other jobs: CPU time is the measure).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB RAM, {info['os']}; Python "
        f"{info['python']}, torch {info['torch']} (CUDA: {info['cuda']}).",
        "",
        f"**The machine was shared** with other engineers' jobs: 1-minute load averages {min(loads):.1f}-{max(loads):.1f} "  # noqa: E501
        f"on {info['cores']} cores during the runs, so wall times are 2-4x the CPU times. Costs are therefore given in "
        "**CPU minutes** (user + system time of the `train.py` process, start-up and model loading included, ~0.3 "
        "CPU-min), which the load does not inflate much; wall minutes are listed for completeness."
        if loads and max(loads) > 0.5 * (info["cores"] or 1)
        else "The machine was otherwise idle.",
        "",
    ]

    # ---- speed-up -----------------------------------------------------------------------------------------------
    unc = [by_name.get(f"speedup_sst2_uncached_s{s}") for s in range(3)]
    cac = [by_name.get(f"speedup_sst2_cached_s{s}") for s in range(3)]
    if all(unc) and all(cac):
        lines += [
            "## Feature cache: 3 seeds from cached features vs 3 independent runs",
            "",
            "SST-2, top-4 recipe (top 4 blocks + norm + head, lr 3e-4), 500 training rows (32 steps), 1 epoch, "
            "300 validation and 300 test rows; seeds 0, 1, 2. Uncached: every step runs all 30 blocks. "
            "Cached: the first run stores the output of blocks 0-25 for every train / validation / test row "
            "(`module.cache_features=true`); every run then trains and evaluates blocks 26-29 + norm + head "
            "only, the second and third seeds reading the stored states.",
            "",
            "| run | seed | test accuracy | feature cache (CPU-min) | training + test (CPU-min) | total CPU-min | "
            "wall min |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, group in (("uncached", unc), ("cached", cac)):
            for r in group:
                res = r["result"]["test_result"]
                cache, rest = _cpu_split(r)
                lines.append(
                    f"| {label} | {r['seed']} | {res['score']:.3f} | {cache:.1f} | {rest:.1f} | "
                    f"{r['cpu_s'] / 60:.1f} | {r['wall_s'] / 60:.1f} |"
                )
        total_u = sum(r["cpu_s"] for r in unc) / 60
        total_c = sum(r["cpu_s"] for r in cac) / 60
        fit_u = sum(r["result"]["cpu_seconds"]["fit"] for r in unc) / 3
        fit_c = sum(r["result"]["cpu_seconds"]["fit"] for r in cac) / 3
        steps = unc[0]["result"]["global_step"]
        lines += [
            "",
            f"Three seeds: **{total_u:.1f} CPU-min uncached vs {total_c:.1f} CPU-min cached "
            f"({total_u / total_c:.1f}x)**, building the cache included "
            f"({sum(_cpu_split(r)[0] for r in cac):.1f} CPU-min, in the run that found no entry). "
            f"Training alone (`fit`, {steps} steps + validation): "
            f"{fit_u / 60:.1f} vs {fit_c / 60:.1f} CPU-min per seed ({fit_u / fit_c:.1f}x, "
            f"{fit_u / steps:.2f} vs {fit_c / steps:.2f} CPU-s per step).",
        ]
        pairs = []  # (seed, max |diff|, n params, same code?) per seed with both runs
        for u in unc:
            c = next((r for r in cac if r["seed"] == u["seed"]), None)
            diff = _weights_diff(u, c) if c is not None else None
            if diff is not None:
                code = [r["result"]["provenance"].get("fnet_code") for r in (u, c)]
                pairs.append((u["seed"], diff[0], diff[1], code[0] == code[1]))
        if pairs:
            cells = "; ".join(
                f"seed {s}: **{d:.1e}**" + ("" if same else " (the two runs ran different code)")
                for s, d, _, same in pairs
            )
            lines += [
                "",
                f"Same weights: per seed, the best checkpoints of the uncached and the cached run (trained "
                f"parameters: {pairs[0][2] / 1e6:.1f} M) differ by at most {cells} (max |Δ|); seeds differ from "
                "each other by ~1e-1. Cached runs that **read** stored states: "
                + ", ".join(f"seed {s} {d:.1e}" for s, d, _, _ in pairs if _hit(next(r for r in cac if r["seed"] == s)))
                + "; a cached run that **built** the states (no entry yet): "
                + (
                    ", ".join(
                        f"seed {s} {d:.1e}" for s, d, _, _ in pairs if not _hit(next(r for r in cac if r["seed"] == s))
                    )
                    or "none"
                )
                + ". Seed 1's first uncached run (2026-12-06) differed from its cached twin by 9.7e-02, as much as "
                "two seeds do: it was the run that converted the GGUF into this benchmark's cache, and the "
                "conversion built its models from the global random stream after the run was seeded, so the "
                "classification head started elsewhere. The conversion now forks the RNG (`tests/"
                "test_gguf_families.py::test_a_first_conversion_draws_nothing_from_the_global_rng`); that run was "
                "redone, converting again (the conversion code changed), and is the seed-1 pair above.",
            ]
        lines.append("")

    # ---- recipes --------------------------------------------------------------------------------------------------
    rows = [r for r in records if r["group"] in ("compare", "chosen", "rows", "more")]
    if rows:
        lines += [
            "## Recipes: test score vs CPU minutes",
            "",
            "One run per task and recipe (seed 0). Score: the task's primary metric on its test split with the 95 % "
            "CI (Wilson for accuracy, percentile bootstrap otherwise) and the best constant predictor's score "
            "(chance). CPU-min: **cache** = storing the frozen blocks' output of the train / validation / test rows "
            "(paid once per task and reused by every seed of the same recipe and data; 0 when reused), **run** = "
            "everything else of the run (training, validation each epoch, test, start-up), i.e. what each further "
            "seed costs.",
            "",
            "| task | recipe | train / val / test rows | epochs | steps | test score [95 % CI] | chance | goal | "
            "cache CPU-min | run CPU-min | wall min |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(
            rows,
            key=lambda r: (["sst2", "qnli", "cola", "mrpc", "mnli", "ag_news", "squad"].index(r["task"]), r["recipe"]),
        ):
            res = r["result"]
            tr = res["test_result"]
            value, lo, hi, chance = _score(tr)
            ok, text = goal_met(r["task"], tr)
            extra = ""
            if r["task"] == "mrpc":
                acc = _score(tr, "accuracy")
                extra = f"; accuracy {acc[0]:.3f} [{acc[1]:.3f}, {acc[2]:.3f}] (majority {acc[3]:.3f})"
            if r["task"] == "cola":
                acc = _score(tr, "accuracy")
                extra = f"; accuracy {acc[0]:.3f}"
            if r["task"] == "squad":
                em = _score(tr, "exact_match")
                extra = f"; EM {em[0]:.3f}"
            cache, rest = _cpu_split(r)
            lines.append(
                f"| {r['task']} | {r['recipe']} | {_rows(res)} | {res['epochs']} | "
                f"{res['global_step']} | {tr['metric']} **{value:.3f}** [{lo:.3f}, {hi:.3f}]{extra} | {chance:.3f} | "
                f"{'met' if ok else 'not met'} ({text}) | {cache:.1f} | {rest:.1f} | {r['wall_s'] / 60:.0f} |"
            )
        lines += [
            "",
            "## Goals",
            "",
            "| task | goal | best run | score [95 % CI] | chance | CI above chance | met | tried |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for task in ["sst2", "qnli", "cola", "mrpc", "mnli", "ag_news", "squad"]:
            runs = [r for r in rows if r["task"] == task]
            if not runs:
                lines.append(f"| {task} | {GOALS[task][0]} ≥ {GOALS[task][1]:.2f} | not run | | | | | |")
                continue
            best = max(runs, key=lambda r: _score(r["result"]["test_result"], GOALS[task][0])[0])
            tr = best["result"]["test_result"]
            value, lo, hi, chance = _score(tr, GOALS[task][0])
            ok, text = goal_met(task, tr)
            tried = "; ".join(
                f"{r['recipe']} {_score(r['result']['test_result'], GOALS[task][0])[0]:.3f}" for r in runs
            )
            lines.append(
                f"| {task} | {text} | {best['recipe']} | {value:.3f} [{lo:.3f}, {hi:.3f}] | {chance:.3f} | "
                f"{'yes' if lo > chance else 'no'} | **{'yes' if ok else 'no'}** | {tried} |"
            )
        lines += ["", "Recipes:", ""]
        lines += [
            f"- `{name}`: {RECIPE_TEXT[name]} (`{' '.join(RECIPES[name]) or 'no overrides'}`)"
            for name in RECIPES
            if any(r["recipe"] == name for r in rows)
        ]
        lines += ["", "Commands and splits:", ""]
        for r in rows:
            res = r["result"]
            lines += [
                f"- `{r['command']}`",
                f"  - {res['data']['rule']}; kept {res['data']['sizes']} (limits {res['data'].get('limits')})",
            ]
    lines.append("")
    return "\n".join(lines)


def load_records(runs_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*/bench.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report", "plan"])
    parser.add_argument("--groups", nargs="+", default=["speedup", "compare", "chosen", "rows", "more", "path"])
    parser.add_argument("--only", nargs="*", default=None, help="run names to run (default: all of the groups)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results_finetune.md"))
    parser.add_argument("--runs-dir", default=str(REPO / "outputs" / "bench_finetune_v2"))
    args = parser.parse_args()
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    specs = [s for s in plan() if s["group"] in args.groups and (args.only is None or s["name"] in args.only)]
    if args.only:  # in the order given
        specs.sort(key=lambda s: args.only.index(s["name"]))
    if args.command == "plan":
        for s in specs:
            print(s["name"], " ".join(s["overrides"]))
        return
    if args.command == "run":
        (runs_dir / "machine.json").write_text(json.dumps(machine(), indent=1))
        for spec in specs:
            run_one(spec, runs_dir)
    info = json.loads((runs_dir / "machine.json").read_text()) if (runs_dir / "machine.json").exists() else machine()
    text = report(info, load_records(runs_dir))
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
