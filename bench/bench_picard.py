#!/usr/bin/env python
"""Benchmark Picard-O against fnet's FastICA (max_iter 200 and 1000) on the default analysis' decompositions.

Data: the recordings of the default analysis (``python analyze.py``: SmolLM2-135M-Instruct, ``mlp_out``, the
built-in corpus, 4 genres x (10 template + 10 individual texts)), read from the activation cache (recorded
first if missing). Decompositions: exactly the default analysis' -- per genre a group decomposition of its
template texts with 3 restarts (seeds 0, 1, 2), the ``all`` group over every template text (3 restarts) and
one individual decomposition per individual text (seed 0): 15 + 40 = 55 fits, K = 10.

Methods (conf/ica): ``fastica`` (max_iter 200, today's default), ``fastica`` with ``max_iter=1000``, and
``picard`` (Picard-O, tol 1e-7 on the gradient, max_iter 500). All share fnet's whitening. For each fit: wall
seconds, iterations, convergence; the three methods run back to back on each decomposition, so load changes on
a shared machine hit them alike. Agreement: networks thresholded as the default analysis does
(``conf/networks/default.yaml``), one-to-one (Hungarian) matched IoU between methods for every decomposition
(groups: the kept restart). As the baseline of that agreement: the same IoU between the solutions of seeds 0
and 1 of one method (groups: restarts 0 and 1; individual texts: an extra fastica200 fit with seed 1).
Seconds are wall time of whole fits (whitening included, identical for all methods) and, separately, of the
rotations alone; each is the fastest of ``--repeats`` runs (default 2, methods in alternating order), as other
jobs share the machine.

    FNET_CACHE=... .venv/bin/python bench/bench_picard.py            # writes its section of bench/results_ica.md
    .venv/bin/python bench/bench_picard.py --individual 4            # subsample: 4 individual texts per genre
    .venv/bin/python bench/bench_picard.py --datasets news --individual 1 --out /tmp/x.md   # a smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from scipy.optimize import linear_sum_assignment
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fnet.decompose import FastICA, Picard, fit_with_restarts  # noqa: E402
from fnet.networks import NetworkSet, iou  # noqa: E402
from fnet.pipelines._common import load_lm, load_stimuli, make_estimator, thresholds  # noqa: E402
from fnet.pipelines.analyze import record_from_config  # noqa: E402
from fnet.provenance import cpu_model  # noqa: E402

BEGIN, END = "<!-- bench_picard.py: begin -->", "<!-- bench_picard.py: end -->"
METHODS = ("fastica200", "fastica1000", "picard")

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--individual", type=int, default=None, help="individual texts per genre (default: all)")
parser.add_argument("--datasets", nargs="+", default=None, help="genres to use (default: all four)")
parser.add_argument(
    "--repeats",
    type=int,
    default=1,
    help="timed fits per decomposition and method; the fastest counts (the machine is shared)",
)
parser.add_argument("--out", default=str(REPO / "bench" / "results_ica.md"))
args = parser.parse_args()


def config(ica: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("analyze", overrides=[f"ica={ica}", f"paths.root_dir={REPO}", "paths.output_dir=/tmp/bench"])


def estimators(seed: int) -> dict:
    fastica, _ = make_estimator(config("fastica").ica, seed)
    picard, _ = make_estimator(config("picard").ica, seed)
    return {"fastica200": fastica, "fastica1000": clone(fastica).set_params(max_iter=1000), "picard": picard}


ROTATION_S = np.zeros(2)  # wall and CPU seconds in the rotations (the only step that differs between the methods)


def _clocks() -> np.ndarray:
    """Wall and CPU seconds (this process, all threads): CPU time hardly depends on other jobs' load."""
    return np.array([time.perf_counter(), time.process_time()])


def _timing_rotation(cls) -> None:
    rotate = cls._rotate

    def timed_rotate(self, white, w_init):
        started = _clocks()
        try:
            return rotate(self, white, w_init)
        finally:
            ROTATION_S[:] += _clocks() - started

    cls._rotate = timed_rotate


_timing_rotation(FastICA)
_timing_rotation(Picard)


def timed(fit):
    """``(result, [wall, CPU] seconds, [wall, CPU] seconds of the rotations)`` of ``fit()``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # counted from converged_, not shown 55 times
        ROTATION_S[:] = 0.0
        started = _clocks()
        result = fit()
        return result, _clocks() - started, ROTATION_S.copy()


def matched_iou(a: NetworkSet, b: NetworkSet) -> tuple[float, float]:
    overlap = iou(a, b).numpy()  # [K, K]
    rows, cols = linear_sum_assignment(-overlap)
    return float(overlap[rows, cols].mean()), float(overlap[rows, cols].min())


def main() -> None:
    cfg = config("fastica")
    lm = load_lm(cfg)
    width, net_args = lm.width(cfg.record.signal), thresholds(cfg)
    jobs = []  # (kind, name, arrays)
    templates_all = []
    for name, stim in load_stimuli(cfg).items():
        if args.datasets and name not in args.datasets:
            continue
        store = record_from_config(lm, cfg, name, list(stim.template) + list(stim.individual), progress=False)
        templates = store.arrays([x.id for x in stim.template])
        templates_all += templates
        jobs.append(("group", name, templates))
        individual = stim.individual[: args.individual] if args.individual else stim.individual
        jobs += [("individual", f"{name}/{x.id}", store.arrays([x.id])[0]) for x in individual]
    jobs.append(("group", "all", templates_all))  # the analysis' `all`: every template text, stacked
    n_init = int(cfg.ica.restarts.n_init)
    load_before = os.getloadavg()
    rows = []
    for kind, name, arrays in jobs:
        row = {
            "kind": kind,
            "name": name,
            "tokens": int(sum(a.shape[0] for a in arrays) if kind == "group" else arrays.shape[0]),
        }
        nets, fitted = {}, {}
        for repeat in range(args.repeats):  # the methods in turn, in alternating order; fits are deterministic
            order = list(estimators(int(cfg.seed)).items())
            for method, estimator in order if repeat % 2 == 0 else order[::-1]:
                if kind == "group":
                    fit = lambda: fit_with_restarts(estimator, arrays, seeds=list(range(n_init)))  # noqa: E731
                else:
                    fit = lambda: clone(estimator).fit(arrays)  # noqa: E731
                result, seconds, rotation = timed(fit)
                fitted.setdefault(method, result)
                row[f"{method}_s"] = np.minimum(seconds, row.get(f"{method}_s", np.inf))  # [wall, CPU]
                row[f"{method}_rotation_s"] = np.minimum(rotation, row.get(f"{method}_rotation_s", np.inf))
        for method, estimator in estimators(int(cfg.seed)).items():
            if kind == "group":
                result = fitted[method]
                fits, kept = result.estimators, result.best
                row[f"{method}_stability"] = float(np.mean(result.stability))
                seed1 = fits[1]
            else:
                kept = fitted[method]
                fits = [kept]
                seed1 = None
                if method == "fastica200":  # the baseline: how much two seeds of today's default agree
                    seed1, _, _ = timed(lambda: clone(estimator).set_params(random_state=1).fit(arrays))
            if seed1 is not None:  # seed 0 against seed 1 of the same method
                seeds = [
                    NetworkSet.from_maps(
                        torch.from_numpy(np.asarray(f.spatial_maps_, dtype=np.float32)), lm.n_layers, width, **net_args
                    )
                    for f in (fits[0], seed1)
                ]
                row[f"iou_seeds_{method}"] = matched_iou(*seeds)
            row[f"{method}_fits"] = len(fits)
            row[f"{method}_conv_fits"] = sum(bool(f.converged_) for f in fits)
            row[f"{method}_conv"] = bool(kept.converged_)
            row[f"{method}_iter"] = [int(f.n_iter_) for f in fits]
            maps = torch.from_numpy(np.asarray(kept.spatial_maps_, dtype=np.float32))
            nets[method] = NetworkSet.from_maps(maps, lm.n_layers, width, **net_args)
        for a, b in (("fastica200", "picard"), ("fastica1000", "picard"), ("fastica200", "fastica1000")):
            row[f"iou_{a}_{b}"] = matched_iou(nets[a], nets[b])
        rows.append(row)
        print(
            name,
            {m: (row[f"{m}_s"].round(2).tolist(), row[f"{m}_iter"], row[f"{m}_conv"]) for m in METHODS},
            {k: round(v[0], 3) for k, v in row.items() if k.startswith("iou_")},
            flush=True,
        )
    write(rows, load_before, os.getloadavg(), lm)


def write(rows, load_before, load_after, lm) -> None:
    groups = [r for r in rows if r["kind"] == "group"]
    individuals = [r for r in rows if r["kind"] == "individual"]
    n_cores = os.cpu_count()
    lines = [
        BEGIN,
        "## Picard-O vs fnet FastICA on the default analysis' decompositions",
        "",
        f"Generated by `bench/bench_picard.py` on {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
        f"- Machine: {cpu_model()} (`lscpu` model name), {n_cores} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; load average before {' / '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' / '.join(f'{x:.2f}' for x in load_after)} (the machine is shared: other jobs slow every method)",
        f"- Data: the default analysis' recordings (`{lm.name}`, `mlp_out`, {lm.n_layers} x "
        f"{lm.width('mlp_out')} neurons, built-in corpus): {len(groups)} group decompositions (4 genres + `all`, "
        f"{groups[0]['fastica200_fits']} restarts each) and {len(individuals)} individual decompositions, K = 10; "
        f"seconds: the fastest of {args.repeats} runs",
        "- Methods: `ica=fastica` (max_iter 200, tol 1e-4 on the change), the same with `ica.max_iter=1000`, "
        "`ica=picard` (Picard-O, extended, logcosh, tol 1e-7 on the gradient, max_iter 500); same whitening",
        "- IoU: networks thresholded as the default analysis does (z > 1.96, sign flip), one-to-one (Hungarian) "
        "matching of the K networks of the kept solution, mean over networks (min in brackets)",
        "",
        "### Summary",
        "",
        "| method | converged: group (kept) | group fits (all restarts) | individual | iterations: median / max |",
        "|---|---|---|---|---|",
    ]
    for m in METHODS:
        iters = [i for r in rows for i in r[f"{m}_iter"]]
        lines.append(
            f"| {m} | {sum(r[f'{m}_conv'] for r in groups)}/{len(groups)} | "
            f"{sum(r[f'{m}_conv_fits'] for r in groups)}/{sum(r[f'{m}_fits'] for r in groups)} | "
            f"{sum(r[f'{m}_conv'] for r in individuals)}/{len(individuals)} | {int(np.median(iters))} / {max(iters)} |"
        )
    lines += [
        "",
        "Seconds of whole fits (whitening included), wall and CPU (this process, all threads; CPU time "
        "depends less on the other jobs), and of the rotations alone:",
        "",
        "| method | wall: groups | individual | total | vs fastica200 | CPU: total | vs fastica200 | "
        "rotations: wall / CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    totals = {m: sum(r[f"{m}_s"] for r in rows) for m in METHODS}  # [wall, CPU]
    for m in METHODS:
        rotation = sum(r[f"{m}_rotation_s"] for r in rows)
        lines.append(
            f"| {m} | {sum(r[f'{m}_s'][0] for r in groups):.1f} | {sum(r[f'{m}_s'][0] for r in individuals):.1f} | "
            f"{totals[m][0]:.1f} | {totals[m][0] / totals['fastica200'][0]:.2f}x | {totals[m][1]:.1f} | "
            f"{totals[m][1] / totals['fastica200'][1]:.2f}x | {rotation[0]:.1f} / {rotation[1]:.1f} |"
        )
    lines += [
        "",
        "Network agreement (matched IoU, mean over decompositions of the per-decomposition mean; "
        "worst decomposition's mean in brackets):",
        "",
        "| pair | groups | individual |",
        "|---|---|---|",
    ]
    pairs = {
        "fastica200 vs picard": "iou_fastica200_picard",
        "fastica1000 vs picard": "iou_fastica1000_picard",
        "fastica200 vs fastica1000": "iou_fastica200_fastica1000",
        "baseline: fastica200 seed 0 vs seed 1": "iou_seeds_fastica200",
        "baseline: fastica1000 seed 0 vs seed 1": "iou_seeds_fastica1000",
        "baseline: picard seed 0 vs seed 1": "iou_seeds_picard",
    }
    for label, key in pairs.items():
        cell = []
        for subset in (groups, individuals):
            means = [r[key][0] for r in subset if key in r]
            cell.append(f"{np.mean(means):.3f} ({min(means):.3f})" if means else "-")
        lines.append(f"| {label} | {cell[0]} | {cell[1]} |")
    lines += [
        "",
        "### Group decompositions",
        "",
        "| data | tokens | "
        + " | ".join(f"{m}: wall s, iterations (restarts), conv., stability" for m in METHODS)
        + " | IoU f200-picard | IoU f1000-picard |",
        "|---|---|" + "---|" * (len(METHODS) + 2),
    ]
    for r in groups:
        cells = [
            f"{r[f'{m}_s'][0]:.1f}, {r[f'{m}_iter']}, {r[f'{m}_conv_fits']}/{r[f'{m}_fits']}, {r[f'{m}_stability']:.3f}"
            for m in METHODS
        ]
        lines.append(
            f"| {r['name']} | {r['tokens']} | " + " | ".join(cells) + f" | "
            f"{r['iou_fastica200_picard'][0]:.3f} ({r['iou_fastica200_picard'][1]:.2f}) | "
            f"{r['iou_fastica1000_picard'][0]:.3f} ({r['iou_fastica1000_picard'][1]:.2f}) |"
        )
    lines += ["", END, ""]
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + "\n".join(lines) + text[text.index(END) + len(END) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    out.write_text(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
