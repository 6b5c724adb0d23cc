"""Tests for fnet.report: markdown table text, provenance header, figures written as PNGs."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

import fnet
from fnet.networks import NetworkSet, iou
from fnet.report import (
    markdown_table,
    plot_counts_per_layer,
    plot_iou_matrix,
    plot_network_maps,
    provenance_header,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_markdown_table_exact():
    rows = [
        {"template": 0, "name": "syntax", "iou": 0.5, "ok": True},
        {"template": 12, "name": "a|b", "iou": 0.12345},
        {"template": 3, "iou": np.float32(1.0), "name": None, "ok": False},
    ]
    expected = (
        "| template | name   |   iou | ok    |\n"
        "| -------: | ------ | ----: | ----- |\n"
        "|        0 | syntax | 0.500 | True  |\n"
        "|       12 | a\\|b   | 0.123 |       |\n"
        "|        3 |        | 1.000 | False |"
    )
    assert markdown_table(rows) == expected


def test_markdown_table_columns_and_floatfmt():
    rows = [{"a": 1.0, "b": "x", "c": 2}, {"a": 2.25, "b": "y\nz"}]
    assert markdown_table(rows, columns=["c", "a"], floatfmt=".1f") == (
        "|   c |   a |\n| --: | --: |\n|   2 | 1.0 |\n|     | 2.2 |"
    )
    assert markdown_table(rows, columns=["b"]) == "| b   |\n| --- |\n| x   |\n| y z |"
    assert markdown_table([], columns=["a", "b"]) == "| a   | b   |\n| --- | --- |"
    assert markdown_table([]) == ""


def test_markdown_table_torch_scalars():
    rows = [{"n": torch.tensor(3), "f": torch.tensor(0.25, dtype=torch.float64)}]
    assert markdown_table(rows) == "|   n |     f |\n| --: | ----: |\n|   3 | 0.250 |"


def test_provenance_header_lists_required_fields():
    header = provenance_header(
        {
            "model": "SmolLM2-135M",
            "signal": "mlp_out",
            "seed": 0,
            "K": 20,
            "fnet_version": "0.1.0",
            "alpha": 1.96,
            "extra": {"b": 1, "a": [1, 2]},
        }
    )
    assert header == "\n".join(
        [
            "**Provenance**",
            "",
            "- model: `SmolLM2-135M`",
            "- signal: `mlp_out`",
            "- data: (not recorded)",
            "- seed: `0`",
            "- K: `20`",
            "- fnet version: `0.1.0`",
            "- alpha: `1.96`",
            '- extra: `{"a": [1, 2], "b": 1}`',
        ]
    )


def test_provenance_header_from_networkset():
    ns = NetworkSet.from_neuron_sets([[0]], 2, 3, {"model": "gpt2"})
    assert f"- fnet version: `{fnet.__version__}`" in provenance_header(ns.provenance)


def check_png(path, min_height=50, min_width=50):
    assert path.exists() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = mpimg.imread(str(path))
    assert image.ndim == 3 and image.shape[0] >= min_height and image.shape[1] >= min_width
    return image


@pytest.fixture
def netset() -> NetworkSet:
    maps = torch.randn(5, 4 * 32, generator=torch.Generator().manual_seed(0)) ** 3
    return NetworkSet.from_maps(maps, 4, 32, provenance={"model": "toy"})


def test_plot_network_maps(tmp_path, netset):
    path = plot_network_maps(netset, tmp_path / "figs" / "maps.png")
    image = check_png(path)
    # one readable panel per network: 2 columns x 3 rows of 5.5 in x (1.3 + 0.16 per layer) in at 100 dpi
    assert image.shape[1] == 1100 and image.shape[0] == round(100 * (0.4 + 3 * (1.3 + 0.16 * 4)))
    small = check_png(plot_network_maps(netset, tmp_path / "two.png", max_networks=1))
    assert small.shape[1] == 550
    # after select, a lone neuron still draws (dark pixels present)
    lone = NetworkSet.from_neuron_sets([[(1, 7)]], 4, 32)
    img = check_png(plot_network_maps(lone, tmp_path / "lone.png"))
    assert (img[..., :3].max(axis=2) < 0.2).any()
    with pytest.raises(ValueError):
        plot_network_maps(netset, tmp_path / "none.png", max_networks=0)


def test_plot_counts_per_layer(tmp_path, netset):
    check_png(plot_counts_per_layer(netset, tmp_path / "lines.png"))
    check_png(plot_counts_per_layer(netset, tmp_path / "heat.png", kind="heatmap"))
    with pytest.raises(ValueError, match="kind"):
        plot_counts_per_layer(netset, tmp_path / "x.png", kind="bars")


def test_plot_iou_matrix(tmp_path, netset):
    matrix = iou(netset, netset)
    check_png(plot_iou_matrix(matrix, tmp_path / "iou.png", "networks", "networks"))
    check_png(plot_iou_matrix(np.random.default_rng(0).random((30, 40)), tmp_path / "big.png", "b", "a"))
    with pytest.raises(ValueError):
        plot_iou_matrix(np.zeros((0, 3)), tmp_path / "empty.png")


def test_figures_leave_pyplot_alone(tmp_path, netset):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_network_maps(netset, tmp_path / "a.png")
    plot_iou_matrix(np.eye(3), tmp_path / "b.png")
    assert plt.get_fignums() == before
