#!/usr/bin/env python
"""Benchmark input: how long each fine-tuning task's inputs are in SmolLM2's tokens, and what share a
``datamodule.max_length`` truncates (issue: at most 2 % truncated per task).

Reads each task's fine-tuning split (:func:`fnet.scoring.splits.fine_tuning_splits`: up to 4,000 training rows
plus the whole test split) in the fine-tuning input format (``plain``: the text, a pair joined by a newline) and
writes ``bench/results_task_lengths.md`` with the median, 98th percentile and maximum length and the truncated
share at each candidate ``max_length``, and the smallest candidate that keeps truncation at or below 2 %.

    .venv/bin/python bench/bench_task_lengths.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fnet.models import load_model  # noqa: E402
from fnet.provenance import cpu_model  # noqa: E402
from fnet.scoring.splits import fine_tuning_splits  # noqa: E402

TASKS = ["sst2", "cola", "mrpc", "qnli", "mnli", "ag_news"]
CANDIDATES = [32, 48, 64, 96, 128, 160, 192, 256]


def lengths(tokenizer, task: str, max_train: int = 4000) -> np.ndarray:
    parts, _ = fine_tuning_splits(task)
    rows = parts["train"][:max_train] + parts["test"]
    texts = [r["text_a"] if not r.get("text_b") else f"{r['text_a']}\n{r['text_b']}" for r in rows]
    return np.array([len(tokenizer(t)["input_ids"]) for t in texts])


def main() -> None:
    tokenizer = load_model("smollm2_135m").tokenizer
    lines = [
        "# Fine-tuning input lengths (SmolLM2-135M-Instruct tokens)",
        "",
        f"Written by `bench/bench_task_lengths.py` on {time.strftime('%Y-%m-%d %H:%M')} ({cpu_model()}). "
        "Rows: up to 4,000 of each task's training split plus its whole test split, in the `plain` input format "
        "(a pair joined by a newline). SQuAD is windowed (`doc_stride`), so it is not listed.",
        "",
        "| task | rows | median | 98th pct | max | "
        + " | ".join(f"> {c}" for c in CANDIDATES)
        + " | max_length (<= 2 % cut) |",
        "|---|---|---|---|---|" + "---|" * len(CANDIDATES) + "---|",
    ]
    for task in TASKS:
        n = lengths(tokenizer, task)
        cut = {c: float((n > c).mean()) for c in CANDIDATES}
        choice = next(c for c in CANDIDATES if cut[c] <= 0.02)
        lines.append(
            f"| {task} | {n.size} | {np.median(n):.0f} | {np.percentile(n, 98):.0f} | {n.max()} | "
            + " | ".join(f"{100 * cut[c]:.1f} %" for c in CANDIDATES)
            + f" | **{choice}** ({100 * cut[choice]:.1f} % cut) |"
        )
        print(lines[-1], flush=True)
    out = REPO / "bench" / "results_task_lengths.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
