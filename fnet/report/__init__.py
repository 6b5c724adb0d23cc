"""Report: markdown tables, provenance headers, figures, and the summary of a sweep of evaluate.py jobs.

* :mod:`fnet.report.tables` -- :func:`markdown_table`, :func:`provenance_header`;
* :mod:`fnet.report.figures` -- network maps, counts per layer, IoU matrices (Agg canvas, no pyplot);
* :mod:`fnet.report.sweep` -- ``python -m fnet.report.sweep <sweep dir>``: tables and the preservation curve.
"""

from fnet.report.figures import plot_counts_per_layer, plot_iou_matrix, plot_network_maps
from fnet.report.tables import markdown_table, provenance_header

__all__ = ["markdown_table", "plot_counts_per_layer", "plot_iou_matrix", "plot_network_maps", "provenance_header"]
