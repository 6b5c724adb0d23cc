"""Mask-batched vs one-mask-at-a-time scoring on the default model (SmolLM2-135M), written to
bench/results_mask_batch.md.

An evaluate job scores a task's rows under one mask; a study has many masks per model (networks, K values,
controls). Baseline: for each of M masks, :func:`fnet.scoring.loglik.score_loglik` of the rows under
:func:`fnet.intervene.apply.apply_mask` (one forward pass per mask). Batched:
:func:`fnet.intervene.batched.score_loglik_masks`, one forward pass of rows x M. Both in ONE process, repetitions
interleaved (every repetition runs both, alternating which goes first), so load from other processes hits both
alike; the ratio is taken per repetition (baseline time / batched time, > 1 = batched faster) and the median
reported. Masks: random 15 % lesions of ``mlp_out`` (the masks' content does not change the work). Rows:
classification-shaped (context of 56-64 tokens, two single-token choices), random token ids.

    python bench/bench_mask_batch.py [--masks 8 32] [--rows 4] [--reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet.intervene import apply_mask, random_fraction_mask  # noqa: E402
from fnet.intervene.batched import score_loglik_masks  # noqa: E402
from fnet.models import load_model  # noqa: E402
from fnet.scoring.loglik import score_loglik  # noqa: E402


def machine() -> str:
    from fnet.provenance import cpu_model  # bench-only helper, imported where used

    return (
        f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_mask_batch.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    lm = load_model("smollm2_135m")
    loaded = time.time() - t0
    rng = np.random.default_rng(0)
    contexts = [list(map(int, rng.integers(100, 40000, int(n)))) for n in rng.integers(56, 65, args.rows)]
    continuations = [[[int(rng.integers(100, 40000))], [int(rng.integers(100, 40000))]] for _ in contexts]
    masks_all = [random_fraction_mask(lm.n_layers, lm.d_model, 0.15, seed=s) for s in range(max(args.masks))]
    pad = lm.tokenizer.pad_token_id or 0
    rows, worst = [], 0.0
    started = time.time()
    with torch.no_grad():
        for m in args.masks:
            masks = masks_all[:m]
            base_t, batch_t, ratios = [], [], []
            for rep in range(args.reps):
                order = ("base", "batch") if rep % 2 == 0 else ("batch", "base")
                took = {}
                for what in order:
                    t = time.perf_counter()
                    if what == "base":
                        separate = []
                        for mask in masks:
                            with apply_mask(lm.model, mask):
                                separate.append(score_loglik(lm.model, contexts, continuations, pad_token_id=pad))
                    else:
                        batched = score_loglik_masks(lm.model, masks, contexts, continuations, pad_token_id=pad)
                    took[what] = time.perf_counter() - t
                worst = max(worst, max(float((batched[i] - s).abs().max()) for i, s in enumerate(separate)))
                base_t.append(took["base"])
                batch_t.append(took["batch"])
                ratios.append(took["base"] / took["batch"])
                print(
                    f"M={m} rep {rep}: one at a time {took['base']:.2f} s, batched {took['batch']:.2f} s, "
                    f"ratio {ratios[-1]:.2f}x",
                    flush=True,
                )
            rows.append(
                (
                    m,
                    statistics.median(base_t),
                    statistics.median(batch_t),
                    statistics.median(ratios),
                    min(ratios),
                    max(ratios),
                )
            )
    load = os.getloadavg()[0]
    text = [
        "# Mask-batched evaluation (bench/bench_mask_batch.py)",
        "",
        f"- machine: {machine()}",
        f"- model: smollm2_135m ({lm.n_layers} layers, d_model {lm.d_model}), float32, CPU; load {loaded:.1f} s, "
        f"benchmark {time.time() - started:.0f} s",
        f"- rows: {args.rows} classification-shaped rows (contexts of {min(map(len, contexts))}-"
        f"{max(map(len, contexts))} tokens, 2 single-token choices); masks: random 15 % lesions of mlp_out",
        f"- {args.reps} interleaved repetitions per M (alternating which path goes first); ratio = one-mask-at-a-time "
        "time / batched time of the same repetition (> 1: batched is faster); the median is the number",
        f"- the machine is shared with other workers (load average {load:.1f} on {os.cpu_count()} cores at the end): "
        "single timings are noisy",
        f"- largest |batched - separate| score over all masks and repetitions: {worst:.2e} (the per-mask equality is "
        "tested bit-exactly at the same batch layout in tests/test_mask_batch.py)",
        "",
        "| masks M | one at a time (s, median) | batched (s, median) | median ratio | min ratio | max ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    text += [f"| {m} | {b:.2f} | {bt:.2f} | {r:.2f}x | {lo:.2f}x | {hi:.2f}x |" for m, b, bt, r, lo, hi in rows]
    Path(args.out).write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
