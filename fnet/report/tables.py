"""Text reports: markdown tables and the provenance header every report starts with."""

from __future__ import annotations

import json
import numbers
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["markdown_table", "provenance_header"]


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


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, floatfmt: str = ".3f"
) -> str:
    """A GitHub-style pipe table.

    Parameters
    ----------
    rows
        one dict per row. A missing key or None gives an empty cell.
    columns
        the columns, in order; default: every key, in order of first appearance.
    floatfmt
        format spec for floats (ints, bools and strings are written as they are).

    Returns
    -------
    str
        The table, without a trailing newline; "" if there are no columns at all.

    Notes
    -----
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

    separator = "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)) + " |"
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

    Parameters
    ----------
    provenance
        the run's provenance (a mapping).

    Returns
    -------
    str
        The markdown block.
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
