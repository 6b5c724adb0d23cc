#!/usr/bin/env python
"""Benchmark fnet's FastICA against scikit-learn's on a real SmolLM2-135M activation matrix.

Settings are the published study's: scikit-learn's FastICA defaults (parallel, logcosh, max_iter=200, tol=1e-4,
unit-variance whitening by full SVD) with ``random_state=0``; fnet's FastICA with its defaults (randomized
whitening for K << neurons) and the same seed. Both get the same float16 matrix
``acts  # [tokens >= 9,000, 30 layers * 576 = 17,280 neurons]`` of ``mlp_out`` over WikiText-2 validation
paragraphs, and both run with the same number of BLAS/OpenMP/torch threads.

Reported per K: wall time of each fit, the ratio, iterations/convergence, and agreement of the spatial maps
(``mixing_.T``): for every scikit-learn component the best-match |corr| with any fnet component (mean, min),
and the same after a one-to-one (Hungarian) matching.

The recorded matrix is cached as float16 .npy under ``~/.cache/fnet/bench/`` so reruns skip the model.

    .venv/bin/python bench/bench_ica.py                  # K = 10 and 64, writes bench/results_ica.md
    .venv/bin/python bench/bench_ica.py --ks 10 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--ks", type=int, nargs="+", default=[10, 64], help="numbers of components")
parser.add_argument("--min-tokens", type=int, default=9000, help="record paragraphs until this many tokens")
parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both libraries")
parser.add_argument("--max-length", type=int, default=1024)
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument("--wikitext", default="/work/shared/data/wikitext2/valid.txt")
parser.add_argument("--cache-dir", default="~/.cache/fnet/bench")
parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_ica.md"))
parser.add_argument("--skip-sklearn", action="store_true", help="time fnet only (no ratio)")
parser.add_argument(
    "--subspace-check",
    action="store_true",
    help="also compare the randomized whitening subspace with the exact one (slow: exact eigh)",
)
args = parser.parse_args()

# Same thread count for scikit-learn/scipy (OpenBLAS or MKL through OpenMP) and torch; must precede the imports.
for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[variable] = str(args.threads)

import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from sklearn.decomposition import FastICA as SklearnFastICA  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from fnet.decompose import FastICA, abs_corr_matrix  # noqa: E402

torch.set_num_threads(args.threads)
threadpool_limits(args.threads)

MODEL, SIGNAL = "smollm2_135m", "mlp_out"


def wikitext_paragraphs(path: str) -> list[str]:
    """Paragraphs of WikiText-2, one a line; blank lines and ``= Heading =`` lines skipped."""
    paragraphs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text or (text.startswith("=") and text.endswith("=")):
            continue
        paragraphs.append(text)
    return paragraphs


def load_or_record(min_tokens: int) -> tuple[np.ndarray, dict]:
    """``acts  # [tokens, neurons]`` float16, from the cache or recorded with fnet's recorder."""
    cache = Path(args.cache_dir).expanduser()
    stem = f"{MODEL}_{SIGNAL}_wikitext2_valid_min{min_tokens}_len{args.max_length}"
    matrix_path, meta_path = cache / f"{stem}.npy", cache / f"{stem}.json"
    if matrix_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta["cached"] = True
        return np.load(matrix_path, mmap_mode="r"), meta

    from fnet.models import load_model
    from fnet.recording.recorder import record_texts

    loaded = load_model(MODEL)
    paragraphs = wikitext_paragraphs(args.wikitext)
    texts, estimated = [], 0
    for text in paragraphs:  # take paragraphs in file order until the token estimate passes min_tokens + 5%
        texts.append(text)
        estimated += min(len(loaded.tokenizer(text)["input_ids"]), args.max_length)
        if estimated >= 1.05 * min_tokens:
            break
    started = time.perf_counter()
    acts = record_texts(loaded, texts, signal=SIGNAL, max_length=args.max_length, batch_size=args.batch_size)
    record_seconds = time.perf_counter() - started
    matrix = torch.cat(acts, dim=0).numpy()  # [tokens, neurons] float32
    if matrix.shape[0] < min_tokens:
        sys.exit(f"recorded only {matrix.shape[0]} tokens < {min_tokens}; raise the paragraph budget")
    half = matrix.astype(np.float16)
    if not np.isfinite(half).all():
        sys.exit(f"float16 overflow: max |activation| = {np.abs(matrix).max():.4g} > 65504")
    meta = {
        "model": MODEL,
        "signal": SIGNAL,
        "n_texts": len(texts),
        "n_tokens": int(half.shape[0]),
        "n_neurons": int(half.shape[1]),
        "n_layers": int(loaded.n_layers),
        "max_length": args.max_length,
        "source": f"{args.wikitext} (first {len(texts)} non-heading paragraphs)",
        "record_seconds": round(record_seconds, 1),
        "float32_max_abs": float(np.abs(matrix).max()),
    }
    cache.mkdir(parents=True, exist_ok=True)
    np.save(matrix_path, half)
    meta_path.write_text(json.dumps(meta, indent=1))
    meta["cached"] = False
    return np.load(matrix_path, mmap_mode="r"), meta


def machine() -> dict:
    from fnet.provenance import cpu_model

    cpu = cpu_model()
    blas = sorted({f"{p['internal_api']} {p.get('version') or ''}".strip() for p in threadpool_info()})
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": args.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "blas/openmp": ", ".join(blas),
    }


def timed_fit(estimator, X) -> tuple[float, bool]:
    """Wall seconds of ``estimator.fit(X)`` and whether it converged (no ConvergenceWarning)."""
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        started = time.perf_counter()
        estimator.fit(X)
        seconds = time.perf_counter() - started
    return seconds, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def agreement(reference_maps: np.ndarray, maps: np.ndarray) -> dict:
    similarity = abs_corr_matrix(reference_maps, maps)  # [K, K]
    best = similarity.max(axis=1)
    rows, cols = linear_sum_assignment(-similarity)
    matched = similarity[rows, cols]
    return {
        "best_mean": best.mean(),
        "best_min": best.min(),
        "matched_mean": matched.mean(),
        "matched_min": matched.min(),
    }


def main() -> None:
    X, meta = load_or_record(args.min_tokens)  # float16 memmap [tokens, neurons]
    X = np.ascontiguousarray(X)  # both libraries read the same in-RAM float16 array
    info = machine()
    print(f"matrix {X.shape} float16 ({'cached' if meta['cached'] else 'recorded'}); {info}", flush=True)
    rows = []
    load_before = os.getloadavg()
    for K in args.ks:
        ours = FastICA(n_components=K, random_state=0)
        ours_seconds, ours_converged = timed_fit(ours, X)
        print(f"K={K}: fnet {ours_seconds:.2f}s ({ours.whiten_solver_}, {ours.n_iter_} it)", flush=True)
        ours32 = FastICA(n_components=K, random_state=0, dtype="float32")
        ours32_seconds, ours32_converged = timed_fit(ours32, X)
        print(f"K={K}: fnet float32 {ours32_seconds:.2f}s ({ours32.n_iter_} it)", flush=True)
        row = {
            "K": K,
            "ours_s": ours_seconds,
            "ours_iter": ours.n_iter_,
            "ours_conv": ours_converged,
            "ours32_s": ours32_seconds,
            "ours32_iter": ours32.n_iter_,
            "ours32_conv": ours32_converged,
            "f32_vs_f64": agreement(ours.spatial_maps_, ours32.spatial_maps_),
        }
        if not args.skip_sklearn:
            reference = SklearnFastICA(n_components=K, random_state=0)
            sk_seconds, sk_converged = timed_fit(reference, X)
            print(f"K={K}: sklearn {sk_seconds:.1f}s ({reference.n_iter_} it)", flush=True)
            row.update(
                {
                    "sk_s": sk_seconds,
                    "sk_iter": reference.n_iter_,
                    "sk_conv": sk_converged,
                    "agree": agreement(reference.mixing_.T, ours.spatial_maps_),
                    "agree32": agreement(reference.mixing_.T, ours32.spatial_maps_),
                }
            )
            del reference
        rows.append(row)
        del ours, ours32
        gc.collect()
    load_after = os.getloadavg()
    subspace = subspace_check(X) if args.subspace_check else []
    write_results(X.shape, meta, info, rows, load_before, load_after, subspace)


def subspace_check(X) -> list[dict]:
    """Principal cosines between fnet's randomized top-K principal subspace and the exact one (fnet's eigh path),
    for the default oversampling max(10, K) and for a constant 10."""
    from fnet.decompose.tokens import TokenMatrix, column_stats, principal_axes

    data, f64, cpu = TokenMatrix(X), torch.float64, torch.device("cpu")
    mean, _ = column_stats(data, f64, cpu, None)
    started = time.perf_counter()
    exact = principal_axes(
        data,
        max(args.ks) + 1,
        "eigh",
        mean=mean,
        scale=None,
        n_oversamples=None,
        n_power_iter=0,
        rng=np.random.RandomState(0),
        dtype=f64,
        device=cpu,
        block_rows=None,
    )
    print(f"exact PCA {time.perf_counter() - started:.0f}s", flush=True)
    results = []
    for K in args.ks:
        for oversamples in (None, 10):
            approx = principal_axes(
                data,
                K,
                "randomized",
                mean=mean,
                scale=None,
                n_oversamples=oversamples,
                n_power_iter=4,
                rng=np.random.RandomState(0),
                dtype=f64,
                device=cpu,
                block_rows=None,
                sketch_dtype=torch.float32,
            )
            cosines = torch.linalg.svdvals(exact.neuron_axes[:, :K].T @ approx.neuron_axes).numpy()
            sv = exact.singular_values.numpy()
            results.append(
                {
                    "K": K,
                    "oversamples": "max(10, K)" if oversamples is None else str(oversamples),
                    "min_cos": float(cosines.min()),
                    "mean_cos2": float((cosines**2).mean()),
                    "gap": float(sv[K - 1] / sv[K]),
                }
            )
    return results


def write_results(shape, meta, info, rows, load_before, load_after, subspace) -> None:
    lines = [
        "# fnet FastICA vs scikit-learn FastICA",
        "",
        f"Generated by `bench/bench_ica.py` on {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in info.items()],
        f"- load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {' / '.join(f'{x:.2f}' for x in load_after)} (other work on the machine slows both sides)",
        "",
        "## Data",
        "",
        f"- `{meta['model']}` `{meta['signal']}`, {meta['n_layers']} layers: matrix {shape[0]} tokens x "
        f"{shape[1]} neurons, float16 ({meta['n_texts']} texts; {meta['source']}; max_length {meta['max_length']})",
        f"- cached under `{args.cache_dir}`; recording took {meta.get('record_seconds', '?')} s when it ran",
        "",
        "## Settings",
        "",
        "- scikit-learn: `FastICA(n_components=K, random_state=0)` (defaults: parallel, logcosh, max_iter=200, "
        "tol=1e-4, whiten='unit-variance', whiten_solver='svd'); float16 input, converted to float64 by sklearn",
        "- fnet: `FastICA(n_components=K, random_state=0)` (defaults: same ICA settings, whiten_solver='auto' -> "
        "randomized, n_oversamples=None -> max(10, K), n_power_iter=4, float32 range finder, float64 Rayleigh-Ritz and "
        "ICA, streamed over row blocks of the float16 matrix)",
        "- agreement: spatial maps (`mixing_.T`); for each scikit-learn component the best-match |corr| with any "
        "fnet component (mean / min), and after a one-to-one Hungarian matching (mean / min)",
        "",
        "## Results",
        "",
    ]
    if "sk_s" in rows[0]:
        lines += [
            "| K | sklearn s (iter, conv.) | fnet s (iter, conv.) | ratio | best-match mean / min | one-to-one mean / min |",  # noqa: E501
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            a = r["agree"]
            lines.append(
                f"| {r['K']} | {r['sk_s']:.1f} ({r['sk_iter']}, {r['sk_conv']}) | {r['ours_s']:.2f} "
                f"({r['ours_iter']}, {r['ours_conv']}) | {r['sk_s'] / r['ours_s']:.0f}x | "
                f"{a['best_mean']:.4f} / {a['best_min']:.4f} | {a['matched_mean']:.4f} / {a['matched_min']:.4f} |"
            )
    lines += [
        "",
        "fnet with `dtype='float32'` (same seed):",
        "",
        "| K | fnet float32 s (iter, conv.) | vs fnet float64: best-match mean / min |"
        + (" vs sklearn: best-match mean / min | ratio to sklearn |" if "sk_s" in rows[0] else ""),
        "|---|---|---|" + ("---|---|" if "sk_s" in rows[0] else ""),
    ]
    for r in rows:
        b = r["f32_vs_f64"]
        line = (
            f"| {r['K']} | {r['ours32_s']:.2f} ({r['ours32_iter']}, {r['ours32_conv']}) | "
            f"{b['best_mean']:.4f} / {b['best_min']:.4f} |"
        )
        if "sk_s" in r:
            a = r["agree32"]
            line += f" {a['best_mean']:.4f} / {a['best_min']:.4f} | {r['sk_s'] / r['ours32_s']:.0f}x |"
        lines.append(line)
    if subspace:
        lines += [
            "",
            "Randomized whitening subspace vs exact top-K principal subspace (principal cosines; 1 = identical):",
            "",
            "| K | oversamples | sigma_K / sigma_K+1 | min cosine | mean cosine^2 |",
            "|---|---|---|---|---|",
        ]
        for r in subspace:
            lines.append(
                f"| {r['K']} | {r['oversamples']} | {r['gap']:.4f} | {r['min_cos']:.4f} | {r['mean_cos2']:.5f} |"
            )
    lines.append("")
    # bench/bench_picard.py writes its own section into the same file: keep it (and the notes after it)
    out, picard_section = Path(args.out), ""
    if out.exists() and "<!-- bench_picard.py: begin -->" in (previous := out.read_text()):
        picard_section = "\n" + previous[previous.index("<!-- bench_picard.py: begin -->") :]
    out.write_text("\n".join(lines) + picard_section)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
