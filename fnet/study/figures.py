"""The study report's figures, laid out to be read: one panel per task at a readable size, axes labelled with their
units, CIs as bars (the networks) or bands (random controls), the paper's numbers where it has them; and where the
networks sit by layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fnet.networks import NetworkSet

__all__ = [
    "plot_preservation",
    "plot_layers",
    "plot_layer_profiles",
    "layer_profiles",
    "plot_centres",
    "layer_centres",
    "plot_lesion_effects",
    "plot_preservation_panels",
]


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _grid(fig, n: int, cols: int):
    """``n`` axes on a grid of at most ``cols`` columns, row by row."""
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    return [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def _paper_marks(ax, paper: dict | None, paper_name: str | None, task: str, x_of=None) -> None:
    """The paper's numbers for ``task`` on a preservation panel: its unmasked score as a line and, with ``x_of``
    (neurons kept -> the panel's x), its preservation scores as crosses."""
    if not paper:
        return
    unmasked = (paper.get("unmasked") or {}).get(task)
    if unmasked is not None:
        ax.axhline(unmasked, linestyle="-.", color="C3", linewidth=1, label=f"paper: {paper_name} unmasked")
    points = sorted(
        ((p["kept"], p["score"]) for p in ((paper.get("preserve") or {}).get(task) or {}).values() if p.get("kept")),
        key=lambda p: p[0],
    )
    if points and x_of is not None:
        ax.plot(
            [x_of(k) for k, _ in points],
            [v for _, v in points],
            "x",
            color="C3",
            markersize=7,
            label=f"paper: {paper_name} networks kept",
        )


def _networks(ax, pts: Sequence[dict], x: Sequence[float], style: str, label: str) -> None:
    """Scores as points with their 95 % CIs as bars (a point without a CI: no bar)."""
    y = np.array([_f(p["score"]) for p in pts])
    low, high = np.array([_f(p["ci_low"]) for p in pts]), np.array([_f(p["ci_high"]) for p in pts])
    err = np.nan_to_num(np.vstack([y - low, high - y]), nan=0.0).clip(min=0)
    ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=label)


def plot_preservation(
    summary: Sequence[dict],
    path: Path,
    *,
    paper: dict | None = None,
    paper_name: str | None = None,
    same_model: bool = False,
) -> Path | None:
    """One readable panel per task (at most 3 per row): score vs neurons kept, the networks with their 95 % CIs
    as bars, the random controls with theirs as bands, unmasked, chance and, with ``paper`` (one model's entry of
    :func:`fnet.study.report.paper_tables`, named ``paper_name``), the paper's unmasked score and, when it is the
    study's model (``same_model``: neuron counts compare), its preservation points."""
    tasks = sorted({r["task"] for r in summary if r["condition"] == "preserve"})
    if not tasks:
        return None
    cols = min(3, len(tasks))
    fig = _figure(5.0 * cols, 3.9 * ((len(tasks) + cols - 1) // cols))
    for ax, task in zip(_grid(fig, len(tasks), cols), tasks):
        for cond, style, label in (
            ("preserve", "o-", "networks kept"),
            ("preserve_count", "s--", "random, count-matched"),
            ("preserve_magnitude", "^:", "random, magnitude-matched"),
        ):
            pts = sorted(
                (r for r in summary if r["task"] == task and r["condition"] == cond and r["n_kept"]),
                key=lambda r: r["n_kept"],
            )
            if not pts:
                continue
            x = [p["n_kept"] for p in pts]
            if cond == "preserve":
                _networks(ax, pts, x, style, label)
            else:
                ax.plot(x, [_f(p["score"]) for p in pts], style, label=label)
                ax.fill_between(x, [_f(p["ci_low"]) for p in pts], [_f(p["ci_high"]) for p in pts], alpha=0.2)
        row = next(r for r in summary if r["task"] == task)
        if row["unmasked"] is not None:
            ax.axhline(row["unmasked"], linestyle="--", color="k", linewidth=1, label="unmasked")
        if row["chance"] is not None:
            ax.axhline(row["chance"], linestyle=":", color="grey", linewidth=1, label="chance")
        _paper_marks(ax, paper, paper_name, task, (lambda kept: kept) if same_model else None)
        ax.set_xscale("log")
        ax.set_xlabel("neurons kept (count, log scale)")
        ax.set_ylabel(f"{row['metric']} on held-out rows (95 % CI)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path


def _per_layer(file: str | Path) -> np.ndarray:
    """A network file's neuron memberships per layer (``[layers]``, float64), summed over its networks."""
    return NetworkSet.load(file).masks.sum(dim=(0, 2)).double().numpy()


def _centre(per_layer: np.ndarray) -> float:
    """The mean layer of network neurons, from their count per layer."""
    return float((per_layer * np.arange(len(per_layer))).sum() / max(1.0, per_layer.sum()))


def plot_layers(network_files: dict[str, str], path: Path) -> Path | None:
    """Neurons of all networks per layer, one line per network file (e.g. raw vs normalised ICA)."""
    if not network_files:
        return None
    fig = _figure(6.0, 3.5)
    ax = fig.add_subplot()
    for label, file in sorted(network_files.items()):
        per_layer = _per_layer(file)
        ax.plot(range(len(per_layer)), per_layer / max(1, per_layer.sum()), marker="o", label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of network neurons")
    ax.set_title("Where the networks sit")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path


def layer_centres(network_files: dict[str, str]) -> dict[str, float]:
    """Mean layer of the network neurons of each network file."""
    out = {}
    for label, file in network_files.items():
        out[label] = _centre(_per_layer(file))
    return out


def layer_profiles(network_files: dict[tuple[str, int, str], str]) -> dict[tuple[str, str], dict]:
    """Per task and networks (raw / normalised), over training runs: each run's share of network neurons per layer
    (``shares  # [runs, layers]``), its mean layer (``centres``) and its network neurons (``neurons``).

    ``network_files`` maps ``(task, run, variant)`` to the run's network file at the preset's K.
    """
    out: dict[tuple[str, str], dict] = {}
    for (task, run, variant), file in sorted(network_files.items()):
        per_layer = _per_layer(file)
        entry = out.setdefault((task, variant), {"runs": [], "shares": [], "centres": [], "neurons": []})
        entry["runs"].append(run)
        entry["shares"].append(per_layer / max(1.0, per_layer.sum()))
        entry["centres"].append(_centre(per_layer))
        entry["neurons"].append(int(per_layer.sum()))
    return out


def run_count(n: int) -> str:
    """``"1 run"``, ``"5 runs"``: a number of training runs in a label or a sentence."""
    return f"{n} run{'' if n == 1 else 's'}"


def plot_layer_profiles(profiles: dict[tuple[str, str], dict], path: Path) -> Path | None:
    """Where raw and normalised networks sit, one panel per task: each variant's share of network neurons per
    layer, the mean over training runs as a line and the runs' range as a band."""
    tasks = sorted({task for task, _ in profiles})
    if not tasks:
        return None
    cols = min(3, len(tasks))
    fig = _figure(5.0 * cols, 3.4 * ((len(tasks) + cols - 1) // cols))
    for ax, task in zip(_grid(fig, len(tasks), cols), tasks):
        for variant, color in (("raw", "C1"), ("normalised", "C0")):
            entry = profiles.get((task, variant))
            if not entry:
                continue
            shares = np.stack(entry["shares"])  # [runs, layers]
            layers = np.arange(shares.shape[1])
            n = len(entry["runs"])
            ax.plot(layers, shares.mean(0), marker="o", markersize=3, color=color, label=f"{variant} ({run_count(n)})")
            if n > 1:
                ax.fill_between(layers, shares.min(0), shares.max(0), color=color, alpha=0.2, linewidth=0)
        ax.set_title(task)
        ax.set_xlabel("layer")
        ax.set_ylabel("share of network neurons")
        ax.legend(fontsize=7)
    fig.suptitle("Where the networks sit (line: mean over runs; band: their range)", fontsize=9)
    fig.savefig(path, dpi=100)
    return path


def plot_centres(centres: dict[str, float], path: Path) -> Path | None:
    """Mean layer of the network neurons per scope, raw vs variance-normalised ICA (keys ``"<scope> <variant>"``),
    for a report that has the centres but not the network files (a composed one)."""
    if not centres:
        return None
    scopes = sorted({k.rsplit(" ", 1)[0] for k in centres})
    fig = _figure(6.0, 0.6 + 0.35 * len(scopes))
    ax = fig.add_subplot()
    for variant, marker in (("raw", "o"), ("normalised", "s")):
        pts = [(centres[f"{s} {variant}"], i) for i, s in enumerate(scopes) if f"{s} {variant}" in centres]
        if pts:
            ax.plot(*zip(*pts), marker, label=variant)
    ax.set_yticks(range(len(scopes)), scopes)
    ax.set_xlabel("mean layer of network neurons")
    ax.set_title("Where the networks sit")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path


_SHOWN = (
    ("unmasked", "lesion"),
    ("count", "lesion"),
    ("magnitude", "lesion"),
    ("massive_included", "lesion"),
    ("spared", "lesion"),
    ("lesion_mean", "lesion"),
    ("magnitude_mean", "lesion_mean"),
)


def plot_lesion_effects(claims: Sequence[dict], path: Path) -> Path | None:
    """Per task, the all-networks lesion against each control and mean ablation (the paper's Table 5 as a
    picture): the pooled effect with its corrected interval, and each training run's own effect as a dot."""
    rows = [c for c in claims if c["target"] == "all" and c["variant"] == "raw" and (c["a"], c["b"]) in _SHOWN]
    tasks = sorted({c["task"] for c in rows})
    if not tasks:
        return None
    cols = min(2, len(tasks))
    fig = _figure(6.0 * cols, 3.2 * ((len(tasks) + cols - 1) // cols))
    for i, task in enumerate(tasks):
        ax = fig.add_subplot((len(tasks) + cols - 1) // cols, cols, i + 1)
        mine = sorted((c for c in rows if c["task"] == task), key=lambda c: _SHOWN.index((c["a"], c["b"])))
        # the axis spans the runs' own intervals: with 2-5 runs the corrected interval of the mean can be 100x
        # wider than any effect, so it is clipped there and marked with an arrow at the edge
        ends = [v for c in mine for r in c["per_run"] for v in (r["ci_low"], r["ci_high"], r["diff"])] + [0.0]
        pad = max(0.05, 0.1 * (max(ends) - min(ends)))
        left, right = min(ends) - pad, max(ends) + pad
        for y, c in enumerate(mine):
            color = "C3" if c["verdict"].startswith(c["a"]) else "C0"
            lo, hi = max(c["ci_low_corrected"], left), min(c["ci_high_corrected"], right)
            ax.plot([lo, hi], [y, y], color=color, linewidth=1.5)
            ax.plot([c["diff"]], [y], "o", color=color)
            for end, edge, marker in ((c["ci_low_corrected"], left, "<"), (c["ci_high_corrected"], right, ">")):
                if (end < edge) if marker == "<" else (end > edge):
                    ax.plot([edge], [y], marker, color=color, markersize=6)
            for k, r in enumerate(c["per_run"]):
                yy = y + 0.12 + 0.08 * k
                ax.plot([r["ci_low"], r["ci_high"]], [yy, yy], color="grey", linewidth=0.6)
                ax.plot([r["diff"]], [yy], ".", color="grey", markersize=4)
        ax.set_xlim(left, right)
        ax.axvline(0, color="k", linewidth=0.8)
        ax.set_yticks(range(len(mine)), [f"{c['a']} − {c['b']}" for c in mine], fontsize=8)
        ax.set_xlabel(
            f"difference in {mine[0]['metric']}: pooled, corrected 95 % CI (arrow: beyond the axis);\n"
            "grey: each run with its own 95 % CI; red: holds",
            fontsize=8,
        )
        ax.set_title(task)
    fig.savefig(path, dpi=110)
    return path


def plot_preservation_panels(
    summary: Sequence[dict],
    path: Path,
    *,
    paper: dict | None = None,
    paper_name: str | None = None,
    same_model: bool = False,
) -> Path | None:
    """One readable panel per task (at most 3 per row): score vs share of neurons kept (pooled over runs), the
    networks with their 95 % CIs as bars, the count-matched control band, the magnitude-matched control, the
    as-published masking, unmasked, chance and the paper's numbers as in :func:`plot_preservation`."""
    pooled = [r for r in summary if r.get("run") == "pooled"]
    tasks = sorted({r["task"] for r in pooled if r["condition"] == "preserve"})
    if not tasks:
        return None
    cols = min(3, len(tasks))
    fig = _figure(5.0 * cols, 3.9 * ((len(tasks) + cols - 1) // cols))
    styles = {
        "preserve": ("o-", "networks kept"),
        "preserve_count": ("s--", "random, count-matched"),
        "preserve_magnitude": ("^:", "random, magnitude-matched"),
        "preserve_as_published": ("x", "networks, as published (10d96da masking)"),
    }
    for ax, task in zip(_grid(fig, len(tasks), cols), tasks):
        n_neurons = None
        for cond, (style, label) in styles.items():
            pts = sorted(
                (
                    r
                    for r in pooled
                    if r["task"] == task and r["condition"] == cond and r.get("n_kept") and r.get("n_neurons")
                ),
                key=lambda r: r["n_kept"],
            )
            if not pts:
                continue
            n_neurons = pts[0]["n_neurons"]
            x = [100 * p["n_kept"] / p["n_neurons"] for p in pts]
            if cond == "preserve":
                _networks(ax, pts, x, style, label)
            else:
                ax.plot(x, [_f(p["score"]) for p in pts], style, label=label)
            if cond == "preserve_count":
                ax.fill_between(x, [_f(p["ci_low"]) for p in pts], [_f(p["ci_high"]) for p in pts], alpha=0.2)
        row = next(r for r in pooled if r["task"] == task)
        if row.get("unmasked") is not None:
            ax.axhline(row["unmasked"], linestyle="--", color="k", linewidth=1, label="unmasked")
        if row.get("chance") is not None:
            ax.axhline(row["chance"], linestyle=":", color="grey", linewidth=1, label="chance")
        _paper_marks(
            ax,
            paper,
            paper_name,
            task,
            (lambda kept, n=n_neurons: 100 * kept / n) if same_model and n_neurons else None,
        )
        ax.set_xscale("log")
        ax.set_xlabel("neurons kept (% of all, log scale)")
        ax.set_ylabel(f"{row['metric']}, pooled over runs (95 % CI)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path
