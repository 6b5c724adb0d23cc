"""Recording benchmarks for the default model (SmolLM2-135M), written to bench/results_recording.md.

1. Speed: recording every layer's ``mlp_out`` vs a plain forward pass of the LM (logits computed), same texts and
   batches, interleaved repetitions, median ratio. Target <= 1.15x. The recorder stops the forward pass after the
   last layer's MLP (no final norm / LM head), which is part of what is measured.
2. Memory: peak resident memory of a fresh process recording 100 texts x 1,024 tokens into an ActivationStore,
   against the size of the activations it writes. Target: the activations never all sit in RAM.

    python bench/bench_recording.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet.models import load_model  # noqa: E402
from fnet.recording.recorder import Recorder, tokenize_texts  # noqa: E402


def machine() -> str:
    from fnet.provenance import cpu_model

    cpu = cpu_model()
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def long_texts(n: int, tokenizer, n_tokens: int) -> list[str]:
    """n texts of at least n_tokens tokens, built from consecutive WikiText-2 paragraphs."""
    data = Path(os.environ.get("FNET_DATA_DIR", ROOT.parent / "shared" / "data")) / "wikitext2" / "valid.txt"
    paragraphs = [p.strip() for p in data.read_text().splitlines() if p.strip() and not p.strip().startswith("=")]
    texts, current, i = [], "", 0
    while len(texts) < n:
        current += " " + paragraphs[i % len(paragraphs)]
        i += 1
        if len(tokenizer(current)["input_ids"]) >= n_tokens:
            texts.append(current.strip())
            current = ""
    return texts


def speed(lm, texts, batch_size: int, max_length: int, reps: int) -> dict:
    recorder = Recorder(lm, "mlp_out", max_length=max_length, batch_size=batch_size, progress=False)
    rows = tokenize_texts(lm.tokenizer, texts, max_length)
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]

    @torch.no_grad()
    def plain():
        for batch in batches:
            input_ids, attention_mask = recorder._pad(batch)
            lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    def record():
        for batch in batches:
            recorder.record_batch(batch)

    plain(), record()  # warm-up
    t_plain, t_record = [], []
    for _ in range(reps):
        for fn, sink in ((plain, t_plain), (record, t_record)):
            started = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - started)
    ratios = [r / p for r, p in zip(t_record, t_plain)]
    n_tokens = sum(len(r) for r in rows)
    return {
        "plain_s": statistics.median(t_plain),
        "record_s": statistics.median(t_record),
        "ratio": statistics.median(ratios),
        "tokens": n_tokens,
        "reps": reps,
    }


MEMORY_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from fnet.models import load_model
from fnet.recording.recorder import Recorder
texts = json.load(open({texts!r}))
lm = load_model("smollm2_135m")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rec = Recorder(lm, "mlp_out", max_length=1024, batch_size=4, progress=False)
store = rec.open_store({store!r})
t = time.time()
rec.record_to_store(texts, store)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"rss_after_load_mb": base / 1024, "peak_rss_mb": peak / 1024, "seconds": time.time() - t,
                  "tokens": sum(store.n_tokens()), "n_texts": len(store)}}))
"""


def memory(lm, n_texts: int) -> dict:
    texts = long_texts(n_texts, lm.tokenizer, 1024)
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        code = MEMORY_CHILD.format(root=str(ROOT), texts=str(texts_file), store=str(Path(tmp) / "store"))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        on_disk = sum(f.stat().st_size for f in (Path(tmp) / "store").glob("*.npy"))
    result["activations_on_disk_mb"] = on_disk / 2**20
    result["activations_float32_mb"] = on_disk * 2 / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer texts (a smoke run, not the target sizes)")
    parser.add_argument("--n-memory", type=int, default=100, help="texts of 1,024 tokens for the memory run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_recording.md"))
    args = parser.parse_args()
    lm = load_model("smollm2_135m")
    n_speed, n_mem, reps = (8, 10, 2) if args.quick else (16, args.n_memory, 3)
    texts = long_texts(n_speed, lm.tokenizer, 512)
    sp = speed(lm, texts, batch_size=4, max_length=512, reps=reps)
    print("speed", sp)
    mem = memory(lm, n_mem)
    print("memory", mem)
    verdict_speed = "met" if sp["ratio"] <= 1.15 else "NOT met"
    # the model itself sits in RAM; what recording adds must stay far below the activations it writes
    growth_mb = mem["peak_rss_mb"] - mem["rss_after_load_mb"]
    verdict_mem = "met" if growth_mb < 0.5 * mem["activations_on_disk_mb"] else "NOT met"
    lines = [
        "# Recording benchmarks",
        "",
        f"Machine: {machine()}. Model: SmolLM2-135M-Instruct (30 layers x 576 = 17,280 `mlp_out` neurons), fp32, CPU.",
        f"Run: {time.strftime('%Y-%m-%d %H:%M')}, `python bench/bench_recording.py {' '.join(sys.argv[1:])}`, "
        f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        "## Recording all layers vs a plain forward pass",
        "",
        f"{n_speed} WikiText-2 texts x 512 tokens ({sp['tokens']} tokens), batch 4, {reps} interleaved repetitions, "
        "medians.",
        "",
        "| plain forward (s) | recording (s) | ratio | target | |",
        "|---:|---:|---:|---:|---|",
        f"| {sp['plain_s']:.2f} | {sp['record_s']:.2f} | {sp['ratio']:.3f} | <= 1.15 | {verdict_speed} |",
        "",
        "The recorder copies each layer's signal into a CPU float buffer and stops the pass after layer 30's MLP, "
        "so it skips the final norm and the 49,152-word LM head that the plain pass computes.",
        "",
        "## Peak memory while recording",
        "",
        f"{mem['n_texts']} texts x 1,024 tokens ({mem['tokens']} tokens) into an ActivationStore, fresh process.",
        "",
        "| RSS after model load (MB) | peak RSS (MB) | growth while recording (MB) | "
        "activations written, float16 (MB) | same in float32 (MB) | recording time (s) | |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {mem['rss_after_load_mb']:.0f} | {mem['peak_rss_mb']:.0f} | {growth_mb:.0f} | "
        f"{mem['activations_on_disk_mb']:.0f} | "
        f"{mem['activations_float32_mb']:.0f} | {mem['seconds']:.0f} | {verdict_mem} |",
        "",
        "Each batch's activations are written to its shard and released, so peak memory is the model plus one "
        "batch, not the data set.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
