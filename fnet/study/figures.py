"""The study report's figures: preservation curves with control bands, and where the networks sit by layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fnet.networks import NetworkSet

__all__ = ["plot_preservation", "plot_layers", "plot_centres", "layer_centres"]


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
