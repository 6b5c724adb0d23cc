"""Throughput of the POS pipeline's model passes on one machine: recording, activation x gradient, integrated
gradients (per word sample), and the lesion pass; prints rates and the IG / act x grad cost ratio, and estimates
the wall time of a `python analyze.py analysis=pos` run with the given counts.

    .venv/bin/python bench/bench_pos.py                       # default model, 24 samples
    .venv/bin/python bench/bench_pos.py --model tiny:gpt2 --samples 16 --out /tmp/bench_pos.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fnet.attribution import (
    KeyNeuronCounter,
    align_sentences,
    attribute_samples,
    record_word_features,
    word_log_probs,
    word_samples,
)
from fnet.attribution.conllu import UPOS_TAGS, read_conllu
from fnet.models import load_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--signal", default="mlp_out")
    parser.add_argument("--sentences", type=int, default=24)
    parser.add_argument("--samples", type=int, default=24, help="word samples for act x grad (IG gets a quarter)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--data", default=os.environ.get("FNET_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args()

    lm = load_model(args.model)
    sentences = read_conllu(Path(args.data) / "ud_english_ewt" / "en_ewt-ud-dev.conllu")
    rng = np.random.default_rng(0)
    chosen = [sentences[i] for i in np.sort(rng.choice(len(sentences), args.sentences, replace=False))]
    aligned = align_sentences(lm.tokenizer, chosen, 512)
    samples = word_samples(aligned, UPOS_TAGS)
    n_tokens = sum(len(a.input_ids) for a in aligned)
    n_neurons = lm.n_layers * lm.width(args.signal)
    rows = []

    def timed(name, fn, count, unit, tokens):
        started = time.perf_counter()
        fn()
        seconds = time.perf_counter() - started
        rows.append((name, count, unit, seconds, count / seconds, tokens / seconds))
        print(
            f"{name:28s} {count:6d} {unit:9s} {seconds:8.1f} s  {count / seconds:8.2f} {unit}/s  "
            f"{tokens / seconds:8.1f} tok/s",
            flush=True,
        )
        return seconds

    # warm-up (first-call allocations and kernel selection), not timed
    warm = samples.subset(np.arange(min(4, len(samples))))
    attribute_samples(lm, aligned, warm, KeyNeuronCounter(len(UPOS_TAGS), n_neurons), signal=args.signal)
    word_log_probs(lm, aligned[:4], word_samples(aligned[:4], UPOS_TAGS), signal=args.signal)

    every = word_samples(aligned, UPOS_TAGS, need_context=False)
    timed(
        "record (forward)",
        lambda: record_word_features(lm, aligned, every, signal=args.signal),
        len(aligned),
        "sentences",
        n_tokens,
    )
    timed(
        "lesion pass (forward+logits)",
        lambda: word_log_probs(lm, aligned, samples, signal=args.signal),
        len(aligned),
        "sentences",
        n_tokens,
    )
    sub = samples.subset(np.arange(min(args.samples, len(samples))))
    counter = KeyNeuronCounter(len(UPOS_TAGS), n_neurons)
    axg = timed(
        "act_x_grad",
        lambda: attribute_samples(lm, aligned, sub, counter, signal=args.signal),
        len(sub),
        "words",
        int(sub.token.sum()),
    )
    sub_ig = samples.subset(np.arange(max(1, len(sub) // 4)))
    ig = timed(
        f"ig (steps={args.steps})",
        lambda: attribute_samples(
            lm, aligned, sub_ig, counter, signal=args.signal, method="ig", steps=args.steps, alpha_batch=4
        ),
        len(sub_ig),
        "words",
        int(sub_ig.token.sum()),
    )
    ratio = (ig / len(sub_ig)) / (axg / len(sub))
    print(f"IG / act_x_grad time per word: {ratio:.1f}x")

    lines = (
        [
            f"model `{args.model}` signal `{args.signal}`, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), load average "
            f"{os.getloadavg()[0]:.1f} at the end",
            "",
            "| pass | count | unit | seconds | per second | tokens/s |",
            "| --- | ---: | --- | ---: | ---: | ---: |",
        ]
        + [f"| {n} | {c} | {u} | {s:.1f} | {r:.2f} | {t:.1f} |" for n, c, u, s, r, t in rows]
        + [
            "",
            f"IG ({args.steps} steps) costs {ratio:.1f}x act_x_grad per word sample (prefix tokens: tokens/s of the "
            "word samples' prefixes).",
        ]
    )
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
