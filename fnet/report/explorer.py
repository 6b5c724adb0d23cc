"""The explorer: one self-contained HTML page per analysis or study, a card per network.

The page is rendered from the Jinja2 template ``fnet/report/templates/explorer.html`` (its CSS and JS are
package files included inline, images are ``data:`` URIs), so it is one file that opens from disk, needs no
server and loads nothing from the network (its Content-Security-Policy forbids it); it can be mailed, committed
or attached to a W&B run as an artifact.

Like the rest of :mod:`fnet.report` it lays out results, it computes none: a *page* is a dict that a pipeline
builds from what it measured (:mod:`fnet.pipelines.explore` for ``analyze.py``, :mod:`fnet.study.explorer` for
a study):

``title``, ``subtitle``, ``meta`` (``[(key, value)]``), ``figures`` (``[{"title", "src", "caption"}]``, ``src``
from :func:`image_data_uri`), ``tables`` (``[{"id", "title", "columns", "rows", "note", "collapsed"}]``) and
``sets``: ``[{"id", "title", "note", "figures", "tables", "cards", "after"}]``, each card made by
:func:`network_card` from a network description (:func:`fnet.networks.describe`).
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2

from fnet.cache import atomic_write_text
from fnet.version import __version__

__all__ = ["TEMPLATES", "render_explorer", "image_data_uri", "network_card", "effect_row"]

#: the folder of the explorer's template, stylesheet and script (package data)
TEMPLATES = Path(__file__).with_name("templates")


def _num(value: Any, digits: int = 3) -> str:
    """A number as the page shows it: an integer as is (counts, K), else ``digits`` decimals, scientific below
    10^-digits; blank for None, ``n/a`` for NaN."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if value != 0 and abs(value) < 10**-digits:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def _shade(value: Any, vmax: Any) -> int:
    """Highlight level 0..5 of a context token: its activity over the card's largest, positive side only."""
    value, vmax = float(value or 0.0), float(vmax or 0.0)
    if value <= 0 or vmax <= 0:
        return 0
    return max(0, min(5, int(math.ceil(5 * value / vmax))))


def _token(text: Any) -> str:
    """A token as shown: line breaks and tabs as visible marks, the rest (spaces included) as is."""
    return str(text).replace("\r", "").replace("\n", "\u23ce").replace("\t", "\u21e5")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    env.filters.update(num=_num, shade=_shade, tok=_token)
    return env


def image_data_uri(path: str | Path | None) -> str | None:
    """A PNG (or SVG) file as a ``data:`` URI, to embed it in the page; None when there is no such file."""
    if path is None or not Path(path).is_file():
        return None
    path = Path(path)
    kind = "image/svg+xml" if path.suffix.lower() == ".svg" else "image/png"
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def effect_row(label: str, row: Mapping[str, Any], *, a: str = "", b: str = "") -> dict:
    """An effect of a card: ``label``, the paired difference ``row["diff"]`` with its ``ci_low`` / ``ci_high``
    (corrected ones when the row has them), ``n_rows`` and whether the interval excludes zero."""
    low = row.get("ci_low_corrected", row.get("ci_low"))
    high = row.get("ci_high_corrected", row.get("ci_high"))
    low, high = (None if low in (None, "") else float(low)), (None if high in (None, "") else float(high))
    n_rows = row.get("n_rows")
    return {
        "label": label,
        "a": a or row.get("a", ""),
        "b": b or row.get("b", ""),
        "diff": float(row["diff"]),
        "ci_low": low,
        "ci_high": high,
        "n_rows": None if n_rows in (None, "") else int(float(n_rows)),
        "excludes_zero": low is not None and high is not None and (low > 0 or high < 0),
    }


def _layers_text(counts: Sequence[int]) -> str:
    used = [layer for layer, count in enumerate(counts) if count]
    if not used:
        return "no layers"
    top = max(range(len(counts)), key=lambda layer: (counts[layer], -layer))
    span = f"layer {used[0]}" if len(used) == 1 else f"layers {used[0]}\u2013{used[-1]} ({len(used)} of {len(counts)})"
    return f"{span}, most in layer {top} ({counts[top]})"


def network_card(
    desc: Mapping[str, Any],
    *,
    set_id: str,
    width: int,
    title: str | None = None,
    effects: Sequence[dict] = (),
    effects_note: str = "",
    matches: Sequence[dict] = (),
    massive_units: Sequence[int] = (),
    note: str = "",
    no_examples: str = "",
) -> dict:
    """One card of the page from a network description (:func:`fnet.networks.describe`).

    Parameters
    ----------
    desc : dict
        The description (``network``, ``size``, ``fraction``, ``stability``, ``counts_per_layer``, ``top_units``,
        ``massive``, ``massive_share``, ``examples``, ``texts``).
    set_id : str
        The network set's id on the page (cards are ``card-<set_id>-<network>``).
    width : int
        Units per layer (the map's scale).
    title : str, optional
        Default ``network <n>``.
    effects : list of dict
        :func:`effect_row` rows: the network's lesion / preservation effects, where an evaluation has them.
    effects_note : str
        What the effects compare (shown under them).
    matches : list of dict
        ``{"text", "network", "iou"}``: the individual networks matching this template.
    massive_units : list of int
        The set's massive units (named when the network holds none).
    note, no_examples : str
        A line under the facts; what to say when there are no examples.
    """
    examples = list(desc.get("examples") or [])
    vmax = max([float(v) for e in examples for _, v in e["context"]] + [0.0])
    search = [f"network {desc['network']}", f"#{desc['network']}", set_id]
    search += [f"layer {layer}" for layer in desc.get("layers") or []]
    search += [f"unit {u['unit']}" for u in desc.get("top_units") or []]
    search += [f"unit {m['unit']}" for m in desc.get("massive") or []]
    search += [str(e["token"]).strip() for e in examples] + [str(t["text"]) for t in desc.get("texts") or []]
    bounds = [abs(x) for e in effects for x in (e["diff"], e["ci_low"], e["ci_high"]) if x is not None]
    return {
        **desc,
        "id": f"{set_id}-{desc['network']}",
        "set": set_id,
        "width": int(width),
        "title": title or f"network {desc['network']}",
        "examples": examples,
        "vmax": vmax,
        "texts": list(desc.get("texts") or []),
        "layers_text": _layers_text(list(desc["counts_per_layer"])),
        "effects": list(effects),
        "effects_note": effects_note,
        "effect_scale": max(bounds + [1e-9]) * 1.05,
        "matches": list(matches),
        "massive_units": [int(u) for u in massive_units],
        "note": note,
        "no_examples": no_examples,
        "search": " ".join(search).lower(),
    }


def _table(table: Mapping[str, Any]) -> dict:
    rows = [dict(r) for r in table.get("rows") or []]
    columns = list(table.get("columns") or (list(rows[0]) if rows else []))
    return {"note": "", "collapsed": False, **table, "rows": rows, "columns": columns}


def render_explorer(page: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``page`` (see the module docstring) as one HTML file at ``path``, atomically; returns the path.

    Examples
    --------
    >>> import tempfile
    >>> desc = {"network": 0, "size": 2, "fraction": 0.5, "stability": None, "counts_per_layer": [1, 1],
    ...         "layers": [0, 1], "top_units": [{"layer": 1, "unit": 0, "z": 4.0}], "massive": [],
    ...         "massive_share": 0.0, "examples": [{"text": "t0", "position": 1, "token": " cat", "value": 3.2,
    ...         "context": [["the", -0.1], [" cat", 3.2]], "focus": 1}], "texts": []}
    >>> page = {"title": "demo", "sets": [{"id": "all", "title": "all", "cards": [
    ...     network_card(desc, set_id="all", width=2)]}]}
    >>> html = render_explorer(page, tempfile.mkdtemp() + "/explorer.html").read_text()
    >>> 'id="card-all-0"' in html, '<span class="t s5 f" title="3.2"> cat</span>' in html, "://" in html
    (True, True, False)
    """
    full = {
        "subtitle": "",
        "meta": [],
        "figures": [],
        "tables": [],
        "sets": [],
        "version": __version__,
        "footer": (
            f"fnet {__version__} explorer: one self-contained file (no server, nothing loaded from the "
            "network). Component activity is the network's ICA time course in the orientation of its "
            "thresholded map, z-scored over the tokens shown (SD units)."
        ),
    }
    full.update(page)
    full["tables"] = [_table(t) for t in full["tables"]]
    full["sets"] = [
        {
            "note": "",
            "figures": [],
            "cards": [],
            **s,
            "tables": [_table(t) for t in s.get("tables") or []],
            "after": [_table(t) for t in s.get("after") or []],
        }
        for s in full["sets"]
    ]
    html = _environment().get_template("explorer.html").render(page=full)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, html)
    return path
