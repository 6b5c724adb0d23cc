"""Figures of functional networks: one panel per network (neurons per layer, top units), counts per layer, IoU
matrices.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (Agg canvas), never through pyplot:
no display is needed, the global backend is left alone, and no figure is kept alive after saving.
Each figure function returns the path it wrote (parent folders are created).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fnet.networks import NetworkSet

__all__ = ["plot_network_maps", "plot_counts_per_layer", "plot_iou_matrix"]


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------


def _new_figure(width_in: float, height_in: float):
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _top_units_text(netset: NetworkSet, k: int, n: int) -> str:
    """Network ``k``'s ``n`` strongest neurons as lines ``layer L, unit U (z Z)`` (by oriented map value when the
    set has maps, else the first in layer order)."""
    members = _to_numpy(netset.neurons(k))  # [m, 2] (layer, unit)
    if netset.maps is not None and len(members):
        z = _to_numpy(netset.maps[k])[members[:, 0], members[:, 1]]
        order = np.argsort(-z, kind="stable")[:n]
        return "\n".join(f"layer {members[i, 0]}, unit {members[i, 1]} (z {z[i]:.1f})" for i in order)
    return "\n".join(f"layer {layer}, unit {unit}" for layer, unit in members[:n])


def plot_network_maps(
    netset: NetworkSet,
    path: str | Path,
    max_networks: int | None = None,
    *,
    indices: Sequence[int] | None = None,
    ncols: int = 2,
    n_units: int = 6,
    dpi: int = 100,
) -> Path:
    """One readable panel per network: its neurons per layer as horizontal bars (layer 0 at the top, every layer
    labelled), its strongest units listed beside them, and its size in the title.

    A layer x unit dot map of a real model (SmolLM2: 30 x 576) shrinks a network to a few specks; the counts per
    layer say where it sits, and the top units (by oriented z-map value) say which neurons carry it.

    Parameters
    ----------
    netset
        the networks.
    path
        output image (format from the suffix, e.g. .png).
    max_networks
        draw at most this many (the first ones of ``indices``, or of the set); the title then says how many of
        how many are shown.
    indices
        which networks to draw (positions in ``netset``); default all.
    ncols
        panels per row.
    n_units
        strongest units listed per network.
    dpi
        resolution of the saved image.

    Returns
    -------
    pathlib.Path
        ``path``, written.
    """
    order = list(range(netset.n_networks)) if indices is None else [int(i) for i in indices]
    if max_networks is not None:
        order = order[: max(int(max_networks), 0)]
    if not order:
        raise ValueError("plot_network_maps: no networks to draw")
    ids = netset.network_ids()
    sizes = _to_numpy(netset.sizes())
    counts = _to_numpy(netset.counts_per_layer())  # [K, layer]
    stability = None if netset.stability is None else _to_numpy(netset.stability)
    ncols = max(1, min(int(ncols), len(order)))
    nrows = math.ceil(len(order) / ncols)
    n_layers, width = netset.n_layers, netset.width
    panel_height = 1.3 + 0.16 * n_layers
    fig = _new_figure(5.5 * ncols, 0.4 + panel_height * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    layers = np.arange(n_layers)
    for panel, ax in enumerate(axes.flat):
        if panel >= len(order):
            ax.set_axis_off()
            continue
        k = order[panel]
        ax.barh(layers, counts[k], height=0.8, color="#2b5c8a")
        ax.set_ylim(n_layers - 0.5, -0.5)
        ax.set_yticks(layers, [str(l) for l in layers], fontsize=max(5, min(8, 240 // max(n_layers, 1))))
        ax.set_xlim(0, max(1, int(counts[k].max())) * 1.15)
        ax.set_xlabel(f"neurons in the network (count; {width} units per layer)", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        title = f"network {ids[k]}: {int(sizes[k])} neurons ({100 * sizes[k] / max(netset.n_neurons, 1):.2f} % of all)"
        if stability is not None and np.isfinite(stability[k]):
            title += f", stability {stability[k]:.2f}"
        ax.set_title(title, fontsize=9)
        listing = _top_units_text(netset, k, n_units)
        if listing:
            ax.text(
                0.98,
                0.02,
                "top units\n" + listing,
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=7,
                family="monospace",
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
            )
    model = netset.provenance.get("model")
    total = netset.n_networks if indices is None else len(indices)
    shown = f"{len(order)} of {total} networks shown" if len(order) < total else None
    title = "; ".join(str(t) for t in (model, shown) if t is not None)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


def plot_counts_per_layer(
    netset: NetworkSet,
    path: str | Path,
    *,
    kind: str = "auto",
    dpi: int = 100,
) -> Path:
    """Neuron counts per layer per network.

    kind: ``"lines"`` (one line per network), ``"heatmap"`` (networks x layers, with a colorbar), or
    ``"auto"``: lines for up to 10 networks, heatmap beyond.

    Parameters
    ----------
    netset
        the networks.
    path
        output image (format from the suffix, e.g. .png).
    kind
        ``"auto"`` (default), ``"lines"`` or ``"heatmap"``.
    dpi
        resolution of the saved image.

    Returns
    -------
    pathlib.Path
        ``path``, written.
    """
    if kind not in ("auto", "lines", "heatmap"):
        raise ValueError(f"unknown kind {kind!r}; valid: 'auto', 'lines', 'heatmap'")
    if netset.n_networks == 0:
        raise ValueError("plot_counts_per_layer: the NetworkSet has no networks")
    counts = _to_numpy(netset.counts_per_layer())  # [K, layer]
    ids = netset.network_ids()
    if kind == "auto":
        kind = "lines" if netset.n_networks <= 10 else "heatmap"
    layers = np.arange(netset.n_layers)
    if kind == "lines":
        fig = _new_figure(7.0, 4.0)
        ax = fig.add_subplot()
        for k in range(netset.n_networks):
            ax.plot(layers, counts[k], marker="o", markersize=3, label=f"network {ids[k]}")
        ax.set_xlabel("layer")
        ax.set_ylabel("neurons in network")
        ax.legend(fontsize=7, ncols=2)
    else:
        fig = _new_figure(7.0, 1.5 + 0.18 * netset.n_networks)
        ax = fig.add_subplot()
        image = ax.imshow(counts, aspect="auto", interpolation="nearest", cmap="viridis")
        ax.set_xlabel("layer")
        ax.set_ylabel("network")
        if netset.n_networks <= 40:
            ax.set_yticks(range(netset.n_networks), [str(i) for i in ids], fontsize=6)
        fig.colorbar(image, ax=ax, label="neurons")
    ax.set_title(f"neurons per layer (width {netset.width})")
    return _save(fig, path, dpi)


def plot_iou_matrix(
    iou: Any,
    path: str | Path,
    xlabel: str = "",
    ylabel: str = "",
    *,
    title: str | None = None,
    annotate: bool | None = None,
    dpi: int = 100,
) -> Path:
    """Heatmap of an IoU matrix [K1, K2] (rows along y, columns along x), colour range [0, 1], colorbar.

    annotate: write each value in its cell; default only when the matrix has at most 15 x 15 cells.

    Parameters
    ----------
    iou
        the matrix [K1, K2] (tensor or array).
    path
        output image (format from the suffix, e.g. .png).
    xlabel, ylabel
        axis labels.
    title
        the figure's title; default none.
    annotate
        write each value in its cell (see above).
    dpi
        resolution of the saved image.

    Returns
    -------
    pathlib.Path
        ``path``, written.
    """
    matrix = _to_numpy(iou).astype(np.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"iou must be a non-empty 2-D matrix, got shape {matrix.shape}")
    k1, k2 = matrix.shape
    if annotate is None:
        annotate = k1 <= 15 and k2 <= 15
    fig = _new_figure(min(3.0 + 0.35 * k2, 16.0), min(2.5 + 0.3 * k1, 16.0))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="magma", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="IoU")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if annotate:
        for i in range(k1):
            for j in range(k2):
                value = matrix[i, j]
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if value > 0.6 else "white",
                )
    return _save(fig, path, dpi)
