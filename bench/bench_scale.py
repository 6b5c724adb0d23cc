#!/usr/bin/env python
"""Out-of-core group FastICA at 7B-class width, on planted networks larger than RAM.

A 7B decoder (32 layers x d_model 4,096) gives ``acts  # [tokens, 131,072 neurons]`` of ``mlp_out``. This
benchmark writes a synthetic store of that width with ``n_texts`` shards of ``tokens_per_text`` tokens each
(default 100 x 1,024 = 102,400 tokens: 26.8 GB of float16, more than the 24 GB of RAM of the machines fnet is
developed on), with K_true planted networks:

    acts = sources @ maps + noise      # [tokens, neurons]
    sources  # [tokens, K_true]: sparse, heavy-tailed (Laplace draws, 90 % zeroed): each network fires on few tokens
    maps     # [K_true, neurons]: each network is ~0.4 % of the neurons (spread over layers), weights in [1, 2]
    noise    # [tokens, neurons]: i.i.d. Gaussian, sd 0.5

It writes the shards through :class:`fnet.recording.store.ActivationStore` (the same memory-mapped format a real
recording uses, checksums included), then fits fnet's FastICA with K = 10 and K = 64 directly on the store's memory
maps,
streamed in row blocks, and reports for each fit:

* wall time;
* peak anonymous memory (``RssAnon`` in /proc/self/status, sampled every 0.2 s: the memory the process owns,
  not the page cache that holds memory-mapped shard pages, which the kernel can drop at will);
* recovery: for every planted map, the best |corr| with any estimated spatial map (mean and min over the K_true
  planted networks).

Targets (issue "scale and peers"): K = 10 in at most 20 minutes on 2 cores, RssAnon under 4 GB, planted
recovery at least 0.99.

    .venv/bin/python bench/bench_scale.py                        # full size, writes bench/results_scale.md
    .venv/bin/python bench/bench_scale.py --texts 4 --ks 10      # a quick check (~1 GB)

The store is written under ``--dir`` (default ``$FNET_CACHE/bench-scale``, reused when it already holds the same
data; ``--delete`` removes it afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--texts", type=int, default=100, help="shards (texts)")
parser.add_argument("--tokens-per-text", type=int, default=1024)
parser.add_argument("--layers", type=int, default=32)
parser.add_argument("--width", type=int, default=4096, help="neurons per layer (d_model of a 7B model)")
parser.add_argument("--planted", type=int, default=10, help="K_true, planted networks")
parser.add_argument("--ks", type=int, nargs="+", default=[10, 64], help="components to fit")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--dir", default=None, help="store folder (default $FNET_CACHE/bench-scale)")
parser.add_argument("--delete", action="store_true", help="delete the store at the end")
parser.add_argument("--out", default=str(Path(__file__).with_name("results_scale.md")))
args = parser.parse_args()

torch.set_num_threads(args.threads)

from fnet.cache import cache_root  # noqa: E402
from fnet.decompose import FastICA, abs_corr_matrix  # noqa: E402
from fnet.provenance import cpu_model  # noqa: E402
from fnet.recording.store import ActivationStore  # noqa: E402

NOISE_SD = 0.5
NETWORK_FRACTION = 0.004
ACTIVE_FRACTION = 0.10


# ---------------------------------------------------------------------------------------------------------------
def rss_anon_mb() -> float:
    """The process's anonymous resident memory (not file-backed pages), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakSampler:
    """Samples :func:`rss_anon_mb` in a thread; ``peak`` after ``stop()``. Why by hand: psutil reports RSS, which
    counts the memory-mapped shard pages too (file-backed, reclaimable); RssAnon is what must stay small."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, rss_anon_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_anon_mb())

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_mb())


def planted_maps(n_neurons: int, k_true: int, rng: np.random.Generator) -> np.ndarray:
    """``maps  # [K_true, neurons]``: each network a random ~0.4 % of the neurons with weights in [1, 2]."""
    maps = np.zeros((k_true, n_neurons), dtype=np.float32)
    size = max(1, int(NETWORK_FRACTION * n_neurons))
    for k in range(k_true):
        cols = rng.choice(n_neurons, size=size, replace=False)
        maps[k, cols] = rng.uniform(1.0, 2.0, size=size)
    return maps


def write_store(root: Path, maps: np.ndarray) -> ActivationStore:
    n_neurons = maps.shape[1]
    settings = {
        "texts": args.texts,
        "tokens_per_text": args.tokens_per_text,
        "layers": args.layers,
        "width": args.width,
        "planted": args.planted,
        "seed": args.seed,
        "noise_sd": NOISE_SD,
    }
    store = ActivationStore.open(
        root,
        model=f"synthetic-{json.dumps(settings, sort_keys=True)}",
        signal="mlp_out",
        n_layers=args.layers,
        width=args.width,
        max_length=args.tokens_per_text,
        extra={"bench_scale": settings},
    )
    maps_t = torch.from_numpy(maps)  # [K_true, neurons]
    started = time.time()
    for t in range(args.texts):
        text_id = f"synthetic-{t:04d}"
        text = f"{text_id} {settings}"
        if store.has(text_id, text):
            continue
        gen = torch.Generator().manual_seed(args.seed * 100_003 + t)
        u = torch.rand(args.tokens_per_text, args.planted, generator=gen) - 0.5
        sources = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1) by its inverse CDF
        sources *= torch.rand(args.tokens_per_text, args.planted, generator=gen) < ACTIVE_FRACTION
        acts = torch.randn(args.tokens_per_text, n_neurons, generator=gen).mul_(NOISE_SD)  # [tokens, neurons]
        acts.addmm_(sources, maps_t)
        store.add(text_id, text, acts.to(torch.float16).numpy())
        if t % 10 == 9:
            print(f"  wrote {t + 1}/{args.texts} shards ({time.time() - started:.0f} s)", flush=True)
    return store


def main() -> None:
    n_neurons = args.layers * args.width
    n_tokens = args.texts * args.tokens_per_text
    root = Path(args.dir) if args.dir else cache_root() / "bench-scale"
    rng = np.random.default_rng(args.seed)
    maps = planted_maps(n_neurons, args.planted, rng)
    gb = n_tokens * n_neurons * 2 / 1e9
    print(f"store {root}: {n_tokens} tokens x {n_neurons} neurons float16 = {gb:.1f} GB", flush=True)
    t0 = time.time()
    store = write_store(root, maps)
    write_s = time.time() - t0
    mem_total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9

    rows = []
    for k in args.ks:
        arrays = store.arrays()  # memory maps, [tokens_i, neurons] each
        load_before = os.getloadavg()[0]
        with PeakSampler() as sampler:
            started = time.time()
            ica = FastICA(n_components=k, random_state=args.seed, max_iter=400).fit(arrays)
            seconds = time.time() - started
        corr = abs_corr_matrix(maps, ica.spatial_maps_)  # [K_true, K]
        best = corr.max(axis=1)
        rows.append(
            {
                "K": k,
                "seconds": seconds,
                "rss_anon_peak_mb": sampler.peak,
                "n_iter": ica.n_iter_,
                "converged": bool(ica.converged_),
                "recovery_mean": float(best.mean()),
                "recovery_min": float(best.min()),
                "load_before": load_before,
                "load_after": os.getloadavg()[0],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del arrays, ica

    lines = [
        "# Out-of-core group FastICA at 7B width (`bench/bench_scale.py`)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores ({args.threads} torch threads), "
        f"{mem_total_gb:.0f} GB RAM, no GPU; Python {platform.python_version()}, torch {torch.__version__}. "
        f"Run {time.strftime('%Y-%m-%d %H:%M')}; the 2-core machine was shared with other jobs (load averages "
        "below).",
        "",
        f"Data: {args.texts} shards x {args.tokens_per_text} tokens = {n_tokens:,} tokens x {args.layers} layers x "
        f"{args.width} = {n_neurons:,} neurons, float16: **{gb:.1f} GB on disk**, "
        f"{'more' if gb > mem_total_gb else 'less'} than the {mem_total_gb:.0f} GB of RAM. "
        f"{args.planted} planted networks (~{NETWORK_FRACTION:.1%} of neurons each, sources Laplace, "
        f"{ACTIVE_FRACTION:.0%} of tokens active), Gaussian noise sd {NOISE_SD}. Writing the store took "
        f"{write_s:.0f} s (0 when reused).",
        "",
        "| K | wall time | target | peak RssAnon | target | iterations | converged | planted recovery mean / min "
        "| target | load before / after |",
        "|---:|---:|---|---:|---|---:|---|---|---|---|",
    ]
    for r in rows:
        time_target = "<= 20 min: " + ("met" if r["seconds"] <= 1200 else "**not met**") if r["K"] == 10 else "-"
        rec_ok = "met" if r["recovery_min"] >= 0.99 else "**not met**"
        lines.append(
            f"| {r['K']} | {r['seconds'] / 60:.1f} min | {time_target} | {r['rss_anon_peak_mb'] / 1024:.2f} GB | "
            f"< 4 GB: {'met' if r['rss_anon_peak_mb'] < 4096 else '**not met**'} | {r['n_iter']} | "
            f"{r['converged']} | {r['recovery_mean']:.4f} / {r['recovery_min']:.4f} | >= 0.99: {rec_ok} | "
            f"{r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    lines += [
        "",
        "Recovery: for each planted map, the best |corr| with any of the K estimated spatial maps (`mixing_.T`). "
        "RssAnon is the process's anonymous memory; the memory-mapped shards' pages are file-backed and not "
        "counted (the kernel reclaims them under pressure, which is what lets a store larger than RAM be read).",
        "",
        "```",
        "python " + " ".join(sys.argv),
        "```",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    if args.delete:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
