"""Generic reporting: markdown tables, a provenance header, and figures of functional networks.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (Agg canvas), never through pyplot:
no display is needed, the global backend is left alone, and no figure is kept alive after saving.
Each figure function returns the path it wrote (parent folders are created).
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from fnet.networks import NetworkSet

__all__ = [
    "markdown_table",
    "provenance_header",
    "plot_network_maps",
    "plot_counts_per_layer",
    "plot_iou_matrix",
]


# ---------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------


def _scalar(value: Any) -> Any:
    """0-d numpy arrays / torch tensors / numpy scalars -> Python scalars; anything else unchanged."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _cell(value: Any, floatfmt: str) -> str:
    value = _scalar(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, numbers.Integral):
        text = str(int(value))
    elif isinstance(value, numbers.Real):
        text = format(float(value), floatfmt)
    else:
        text = str(value)
    # Keep the row on one line and the pipe structure intact.
    return text.replace("\r\n", " ").replace("\n", " ").replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   floatfmt: str = ".3f") -> str:
    """A GitHub-style pipe table.

    Args:
        rows: one dict per row. A missing key or None gives an empty cell.
        columns: the columns, in order; default: every key, in order of first appearance.
        floatfmt: format spec for floats (ints, bools and strings are written as they are).

    Cells are padded to the column width; a column whose filled cells are all numbers is right-aligned
    (``---:``), others left-aligned (``---``). ``|`` in a cell is escaped and newlines become spaces.
    Returns the table without a trailing newline; "" if there are no columns at all.
    """
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = [str(c) for c in columns]
    if not columns:
        return ""
    cells = [[_cell(row.get(c), floatfmt) for c in columns] for row in rows]  # [row][column] str
    numeric = []
    for j, c in enumerate(columns):
        values = [_scalar(row.get(c)) for row in rows]
        filled = [v for v in values if v is not None]
        numeric.append(bool(filled) and all(_is_number(v) for v in filled))
    header = [_cell(c, floatfmt) for c in columns]
    widths = [max([len(header[j]), 3] + [len(r[j]) for r in cells]) for j in range(len(columns))]

    def line(parts: list[str]) -> str:
        padded = [p.rjust(w) if num else p.ljust(w) for p, w, num in zip(parts, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    separator = "| " + " | ".join(
        ("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)
    ) + " |"
    return "\n".join([line(header), separator] + [line(r) for r in cells])


#: Keys listed first (and always) by ``provenance_header``, with their labels.
PROVENANCE_KEYS = (
    ("model", "model"),
    ("signal", "signal"),
    ("data", "data"),
    ("seed", "seed"),
    ("K", "K"),
    ("fnet_version", "fnet version"),
)


def _provenance_value(value: Any) -> str:
    value = _scalar(value)
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text.replace("\n", " ").replace("`", "'")


def provenance_header(provenance: Mapping[str, Any]) -> str:
    """A markdown block listing the run's provenance.

    Always lists model, signal, data, seed, K and fnet version (``(not recorded)`` when missing), then any
    other keys in sorted order. Values are shown in backticks; dicts/lists as compact JSON. Ends without a
    trailing newline.
    """
    if not isinstance(provenance, Mapping):
        raise TypeError(f"provenance must be a dict, got {type(provenance).__name__}")
    lines = ["**Provenance**", ""]
    known = {key for key, _ in PROVENANCE_KEYS}
    for key, label in PROVENANCE_KEYS:
        if key in provenance and provenance[key] is not None:
            lines.append(f"- {label}: `{_provenance_value(provenance[key])}`")
        else:
            lines.append(f"- {label}: (not recorded)")
    for key in sorted((k for k in provenance if k not in known), key=str):
        lines.append(f"- {key}: `{_provenance_value(provenance[key])}`")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------


def _new_figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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


def plot_network_maps(
    netset: "NetworkSet",
    path: str | Path,
    max_networks: int | None = None,
    *,
    indices: Sequence[int] | None = None,
    ncols: int = 4,
    dpi: int = 100,
) -> Path:
    """Each network as a layers x units panel: rows = layers (layer 0 at the top), columns = units, one
    dark mark per neuron in the network. Marks are drawn as points, not image pixels, so a lone neuron
    stays visible at any width. Panel titles give the network's original index and its size.

    Args:
        netset: the networks.
        path: output image (format from the suffix, e.g. .png).
        max_networks: draw at most this many (the first ones of ``indices``, or of the set).
        indices: which networks to draw (positions in ``netset``); default all.
        ncols: panels per row.
    """
    order = list(range(netset.n_networks)) if indices is None else [int(i) for i in indices]
    if max_networks is not None:
        order = order[: max(int(max_networks), 0)]
    if not order:
        raise ValueError("plot_network_maps: no networks to draw")
    ids = netset.network_ids()
    sizes = netset.sizes()
    ncols = max(1, min(int(ncols), len(order)))
    nrows = math.ceil(len(order) / ncols)
    fig = _new_figure(4.0 * ncols, 0.6 + 2.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    n_layers, width = netset.n_layers, netset.width
    for panel, ax in enumerate(axes.flat):
        if panel >= len(order):
            ax.set_axis_off()
            continue
        k = order[panel]
        layer_unit = _to_numpy(netset.neurons(k))  # [n, 2] (layer, unit)
        ax.scatter(layer_unit[:, 1], layer_unit[:, 0], s=4, marker="s", c="black", linewidths=0)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(n_layers - 0.5, -0.5)
        ax.set_title(f"network {ids[k]} ({int(sizes[k])} neurons)", fontsize=9)
        ax.set_xlabel("unit", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.tick_params(labelsize=7)
    model = netset.provenance.get("model")
    if model is not None:
        fig.suptitle(str(model), fontsize=10)
    return _save(fig, path, dpi)


def plot_counts_per_layer(
    netset: "NetworkSet",
    path: str | Path,
    *,
    kind: str = "auto",
    dpi: int = 100,
) -> Path:
    """Neuron counts per layer per network.

    kind: ``"lines"`` (one line per network), ``"heatmap"`` (networks x layers, with a colorbar), or
    ``"auto"``: lines for up to 10 networks, heatmap beyond.
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
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if value > 0.6 else "white")
    return _save(fig, path, dpi)
