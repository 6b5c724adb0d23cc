"""The analyze job at K=512 on SST-2's task stimuli, today's code vs a baseline commit, written to
bench/results_analyze_k512.md.

The study's largest analyze jobs are its preservation K's (v1: SST-2 K=512 793 s, SQuAD 2,515 s). This runs
the job the study plans (``analyze.py data=task data.datasets.task.source=task:sst2 ica.n_components=512
individual=false networks=paper``, the default model, Picard with 3 restarts) from two checkouts: the baseline
commit and the new one (``git worktree`` s made here), as two subprocesses side by side, one thread each, sharing
one FNET_CACHE (the model and the recorded stimuli: both read the same cached activations). Cost is CPU time
(user + system of the process, from ``wait4``): the machine is shared, wall time is listed too. Stage times come
from each run's ``summary.json`` (``timings``). Same networks: the two ``networks/all_group.safetensors`` are
matched one to one by IoU (Hungarian assignment) and the matched IoUs reported (goal: every one >= 0.95).

    python bench/bench_analyze_k512.py [--baseline a758c40] [--new HEAD] [--runs-dir outputs/bench_analyze_k512]
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

from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fnet.networks import NetworkSet, iou  # noqa: E402

JOB = [
    "data=task",
    "data.datasets.task.source=task:sst2",
    "ica.n_components=512",
    "individual=false",
    "networks=paper",
]


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _start(tree: Path, out: Path, log) -> subprocess.Popen:
    data = os.environ.get("FNET_DATA_DIR", str(REPO.parent / "shared" / "data"))  # the baseline tree has no ../shared
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(tree))
    env["FNET_DATA_DIR"] = data
    cmd = [sys.executable, str(tree / "analyze.py"), *JOB, f"hydra.run.dir={out}", "logger=csv"]
    return subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_pair(baseline: str, new: str, runs_dir: Path) -> dict:
    """Both jobs side by side; returns their records (skipped when done before)."""
    record_file = runs_dir / "records.json"
    if record_file.exists():
        return json.loads(record_file.read_text())
    trees = {"baseline": runs_dir / "baseline_tree", "new": runs_dir / "new_tree"}  # checkouts of their own:
    for name, rev in (("baseline", baseline), ("new", new)):  # the repository may change while they run
        if not trees[name].exists():
            _git("worktree", "add", "--detach", str(trees[name]), rev)
    procs, logs, started = {}, {}, {}
    for name, tree in trees.items():
        logs[name] = open(runs_dir / f"{name}.log", "w")
        started[name] = time.time()
        procs[name] = _start(tree, runs_dir / name, logs[name])
    records = {}
    waiting = dict(procs)
    while waiting:
        pid, status, usage = os.wait4(-1, 0)
        name = next(n for n, p in waiting.items() if p.pid == pid)
        del waiting[name]
        logs[name].close()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise SystemExit(f"{name} failed (exit {code}); see {runs_dir / (name + '.log')}")
        summary = json.loads((runs_dir / name / "summary.json").read_text())
        records[name] = {
            "tree": str(trees[name]),
            "commit": _git("rev-parse", "--short", "HEAD", cwd=trees[name]),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "wall_s": time.time() - started[name],
            "max_rss_mb": usage.ru_maxrss / 1024,
            "timings": summary.get("timings", {}),
        }
        print(f"{name}: {records[name]['cpu_s'] / 60:.1f} CPU-min, {records[name]['wall_s'] / 60:.1f} min", flush=True)
    record_file.write_text(json.dumps(records, indent=1))
    return records


def same_networks(runs_dir: Path) -> dict:
    """IoU of the two runs' networks, matched one to one."""
    a = NetworkSet.load(runs_dir / "baseline" / "networks" / "all_group.safetensors")
    b = NetworkSet.load(runs_dir / "new" / "networks" / "all_group.safetensors")
    overlap = iou(a, b).numpy()  # [K, K]
    rows, cols = linear_sum_assignment(-overlap)
    matched = overlap[rows, cols]
    return {
        "K": int(len(a)),
        "identical_masks": bool((a.masks == b.masks).all()),
        "iou_min": float(matched.min()),
        "iou_mean": float(matched.mean()),
        "n_below_0.95": int((matched < 0.95).sum()),
        "same_order": bool((rows == cols).all()),
    }


def report(records: dict, match: dict, baseline: str) -> str:
    from fnet.provenance import cpu_model  # bench-only helper

    old, new = records["baseline"], records["new"]
    ratio = old["cpu_s"] / new["cpu_s"]
    stages = sorted(set(old["timings"]) | set(new["timings"]))
    lines = [
        "# analyze at K=512 on SST-2's task stimuli: today's code vs the baseline",
        "",
        f"Written by `bench/bench_analyze_k512.py` on {time.strftime('%Y-%m-%d %H:%M')}. Machine: {cpu_model()}, "
        f"{os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}; one BLAS/torch "
        "thread per run, the two runs side by side on a machine shared with other jobs (fine-tuning benchmarks): "
        "**CPU time** is the measure, wall time is listed.",
        "",
        "The job: `python analyze.py " + " ".join(JOB) + "` (what the study plans for a preservation K; default "
        "model SmolLM2-135M-Instruct, GGUF Q4_1 dequantised to float32; Picard-O, 3 restarts, 500 iterations; "
        "3,568 tokens x 17,280 neurons). Both runs read the same cached model and recorded stimuli "
        "(recording them takes ~20 s at ~190 tokens/s, once per task and model).",
        "",
        "| code | commit | CPU min | wall min | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("baseline", f"baseline ({baseline})"), ("new", "new")):
        r = records[name]
        lines.append(
            f"| {label} | {r['commit']} | {r['cpu_s'] / 60:.1f} | {r['wall_s'] / 60:.1f} | {r['max_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"**{ratio:.2f}x less CPU time** (goal: 3x).",
        "",
        "Stage wall times from each run's `summary.json` (seconds; both runs under the same load):",
        "",
        "| stage | baseline | today |",
        "|---|---|---|",
    ]
    for s in stages:
        lines.append(f"| {s} | {old['timings'].get(s, float('nan')):.0f} | {new['timings'].get(s, float('nan')):.0f} |")
    rest = [r["wall_s"] - sum(r["timings"].values()) for r in (old, new)]
    lines.append(
        f"| the rest: figures, report, explorer, start-up (wall - the above) | {rest[0]:.0f} | {rest[1]:.0f} |"
    )
    lines += [
        "",
        f"Same networks: K={match['K']}, masks identical: **{match['identical_masks']}**; matched IoU min "
        f"{match['iou_min']:.3f}, mean {match['iou_mean']:.3f}, {match['n_below_0.95']} below 0.95.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="a758c40", help="the commit to compare with (default: before the fix)")
    parser.add_argument("--new", default="HEAD", help="the commit measured against it (default: HEAD)")
    parser.add_argument("--runs-dir", default=str(REPO / "outputs" / "bench_analyze_k512"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results_analyze_k512.md"))
    parser.add_argument("--notes", default=None, help="a markdown file appended to the results (the profile)")
    args = parser.parse_args()
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    records = run_pair(args.baseline, args.new, runs_dir)
    text = report(records, same_networks(runs_dir), args.baseline)
    if args.notes:
        text += "\n" + Path(args.notes).read_text()
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
