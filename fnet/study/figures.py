"""The study report's figures: preservation curves with control bands, and where the networks sit by layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fnet.networks import NetworkSet

__all__ = ["plot_preservation", "plot_layers", "plot_centres", "layer_centres", "plot_lesion_effects",
           "plot_preservation_panels"]


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_preservation(summary: Sequence[dict], path: Path) -> Path | None:
    """Score vs neurons kept per task: networks (points), count-matched control band, unmasked, chance."""
    tasks = sorted({r["task"] for r in summary if r["condition"] == "preserve"})
    if not tasks:
        return None
    fig = _figure(4.0 * len(tasks), 3.5)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        for cond, style in (("preserve", "o-"), ("preserve_count", "s--"), ("preserve_magnitude", "^:")):
            pts = sorted((r for r in summary if r["task"] == task and r["condition"] == cond and r["n_kept"]),
                         key=lambda r: r["n_kept"])
            if not pts:
                continue
            x = [p["n_kept"] for p in pts]
            y = np.array([p["score"] for p in pts])
            ax.plot(x, y, style, label=cond.replace("preserve_", "random ").replace("preserve", "networks"))
            if cond != "preserve":
                ax.fill_between(x, [_f(p["ci_low"]) for p in pts], [_f(p["ci_high"]) for p in pts], alpha=0.2)
        row = next(r for r in summary if r["task"] == task)
        if row["unmasked"] is not None:
            ax.axhline(row["unmasked"], linestyle="--", color="k", linewidth=1, label="unmasked")
        if row["chance"] is not None:
            ax.axhline(row["chance"], linestyle=":", color="grey", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("neurons kept")
        ax.set_ylabel(row["metric"])
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path


def plot_layers(network_files: dict[str, str], path: Path) -> Path | None:
    """Neurons of all networks per layer, one line per network file (e.g. raw vs normalised ICA)."""
    if not network_files:
        return None
    fig = _figure(6.0, 3.5)
    ax = fig.add_subplot()
    for label, file in sorted(network_files.items()):
        nets = NetworkSet.load(file)
        per_layer = nets.masks.sum(dim=(0, 2)).numpy()  # [layer]: neuron memberships
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
        per_layer = NetworkSet.load(file).masks.sum(dim=(0, 2)).double().numpy()
        out[label] = float((per_layer * np.arange(len(per_layer))).sum() / max(1.0, per_layer.sum()))
    return out


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


_SHOWN = (("count", "lesion"), ("magnitude", "lesion"), ("massive_included", "lesion"), ("spared", "lesion"),
          ("lesion_mean", "lesion"), ("magnitude_mean", "lesion_mean"))


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
        for y, c in enumerate(mine):
            lo, hi = c["ci_low_corrected"] - c["diff"], c["ci_high_corrected"] - c["diff"]
            color = "C3" if c["verdict"].startswith(c["a"]) else "C0"
            ax.errorbar(c["diff"], y, xerr=[[-lo], [hi]], fmt="o", color=color, capsize=3)
            ax.scatter([r["diff"] for r in c["per_run"]], [y + 0.2] * len(c["per_run"]), s=12, color="grey")
        ax.axvline(0, color="k", linewidth=0.8)
        ax.set_yticks(range(len(mine)), [f"{c['a']} − {c['b']}" for c in mine], fontsize=8)
        ax.set_xlabel(f"difference in {mine[0]['metric']} (pooled, corrected 95 % CI; dots: runs)")
        ax.set_title(task)
    fig.savefig(path, dpi=110)
    return path


def plot_preservation_panels(summary: Sequence[dict], path: Path) -> Path | None:
    """One readable panel per task: score vs share of neurons kept (pooled over runs), the networks, the
    count-matched control band, the magnitude-matched control, the as-published masking, unmasked and chance."""
    pooled = [r for r in summary if r.get("run") == "pooled"]
    tasks = sorted({r["task"] for r in pooled if r["condition"] == "preserve"})
    if not tasks:
        return None
    cols = min(2, len(tasks))
    fig = _figure(5.5 * cols, 4.0 * ((len(tasks) + cols - 1) // cols))
    styles = {"preserve": ("o-", "networks"), "preserve_count": ("s--", "random (count-matched)"),
              "preserve_magnitude": ("^:", "random (magnitude-matched)"),
              "preserve_as_published": ("x", "networks, as published (10d96da masking)")}
    for i, task in enumerate(tasks):
        ax = fig.add_subplot((len(tasks) + cols - 1) // cols, cols, i + 1)
        for cond, (style, label) in styles.items():
            pts = sorted((r for r in pooled if r["task"] == task and r["condition"] == cond and r.get("n_kept")
                          and r.get("n_neurons")), key=lambda r: r["n_kept"])
            if not pts:
                continue
            x = [100 * p["n_kept"] / p["n_neurons"] for p in pts]
            ax.plot(x, [p["score"] for p in pts], style, label=label)
            if cond == "preserve_count":
                ax.fill_between(x, [_f(p["ci_low"]) for p in pts], [_f(p["ci_high"]) for p in pts], alpha=0.2)
        row = next(r for r in pooled if r["task"] == task)
        if row.get("unmasked") is not None:
            ax.axhline(row["unmasked"], linestyle="--", color="k", linewidth=1, label="unmasked")
        if row.get("chance") is not None:
            ax.axhline(row["chance"], linestyle=":", color="grey", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("neurons kept (% of all)")
        ax.set_ylabel(f"{row['metric']} (pooled over runs)")
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path
