"""Spatial maps -> networks: z-score each map over neurons, orient its sign, threshold it into a mask.

Following fMRI practice (and Liu et al. 2025), each of the K spatial maps is z-scored over neurons and
thresholded; the neurons that pass form one "functional network": ``maps  # [K, neurons]`` ->
``masks  # [K, neurons]`` (bool). Rules: ``z`` (|z| above a normal quantile) or ``percentile``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

__all__ = [
    "RULES",
    "SIGNS",
    "zscore_maps",
    "orient_maps",
    "threshold_maps",
    "threshold_oriented",
    "as_tensor",
    "check_threshold_params",
]


RULES = ("z", "percentile")
SIGNS = ("flip", "positive", "abs")


# ---------------------------------------------------------------------------------------------------------
# Maps -> masks
# ---------------------------------------------------------------------------------------------------------


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """``x`` (tensor, array or list) as a CPU tensor; anything else is a ``TypeError`` naming ``name``."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
        return torch.as_tensor(np.asarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def _as_maps_2d(maps: Any) -> torch.Tensor:
    maps = as_tensor(maps, "maps")
    if maps.ndim != 2:
        raise ValueError(f"maps must be 2-D [K, neuron], got shape {tuple(maps.shape)}")
    if maps.dtype == torch.bool or maps.is_complex():
        raise TypeError(f"maps must be real numbers, got dtype {maps.dtype}")
    return maps


def zscore_maps(maps: Any) -> torch.Tensor:
    """Z-score each map over all its neurons.

    Parameters
    ----------
    maps
        [K, neuron] real (torch or numpy).

    Returns
    -------
    z  # [K, neuron] float32: (map - mean) / std per row, computed in float64, std with ddof=0.

    Notes
    -----
    Rule for a constant row (std == 0): its z-map is all zeros (no neuron deviates from the rest, so no
    threshold selects anything), and a RuntimeWarning names the rows. Non-finite values raise ValueError.

    Examples
    --------
    >>> import torch
    >>> zscore_maps(torch.tensor([[0.0, 0.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]]))  # a constant row gives zeros
    tensor([[-0.5774, -0.5774, -0.5774,  1.7321],
            [ 0.0000,  0.0000,  0.0000,  0.0000]])
    """
    maps = _as_maps_2d(maps).to(torch.float64)  # [K, neuron]
    if maps.shape[1] == 0:
        raise ValueError("maps have no neurons (shape [K, 0])")
    finite_rows = torch.isfinite(maps).all(dim=1)  # [K]
    if not bool(finite_rows.all()):
        bad = torch.nonzero(~finite_rows).flatten().tolist()
        raise ValueError(f"maps contain NaN/inf in rows {bad[:20]}{' ...' if len(bad) > 20 else ''}")
    mean = maps.mean(dim=1, keepdim=True)  # [K, 1]
    centred = maps - mean  # [K, neuron]
    std = centred.pow(2).mean(dim=1, keepdim=True).sqrt()  # [K, 1]
    # A row is "constant" when its spread is at rounding level relative to its magnitude.
    scale = maps.abs().amax(dim=1, keepdim=True)  # [K, 1]
    constant = (std <= 1e-12 * scale) | (std == 0)  # [K, 1]
    if bool(constant.any()):
        rows = torch.nonzero(constant.flatten()).flatten().tolist()
        warnings.warn(f"zscore_maps: rows {rows[:20]} are constant; their z-maps are set to 0", RuntimeWarning)
    z = torch.where(constant, torch.zeros_like(centred), centred / torch.where(constant, 1.0, std))
    return z.to(torch.float32)


def _skewness(z: torch.Tensor) -> torch.Tensor:
    """Sample skewness per row of z-scored maps: mean(z^3) (mean 0, std 1 already; 0 for zero rows)."""
    return z.to(torch.float64).pow(3).mean(dim=1)  # [K]


def orient_maps(z: Any, sign: str = "flip") -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a sign policy to z-scored maps.

    Parameters
    ----------
    z
        [K, neuron] z-scored maps (from ``zscore_maps``).
    sign
        ``"flip"``: multiply each map by the sign of its skewness (mean of z^3), so its heavy tail is
        on the positive side; a map with skewness exactly 0 is kept as is. ICA leaves each component's
        sign arbitrary, and a sparse functional network shows up as one heavy tail, which skewness
        points at. ``"positive"`` and ``"abs"`` leave the maps as they are.

    Returns
    -------
    (oriented  # [K, neuron] float32, signs  # [K] int8 in {+1, -1}: oriented = signs[:, None] * z)
    """
    _check_sign(sign)
    z = _as_maps_2d(z).to(torch.float32)
    signs = torch.ones(z.shape[0], dtype=torch.int8)  # [K]
    if sign == "flip":
        signs[_skewness(z) < 0] = -1
    return z * signs[:, None].to(z.dtype), signs


def _check_sign(sign: str) -> None:
    if sign not in SIGNS:
        raise ValueError(f"unknown sign policy {sign!r}; valid: {', '.join(repr(s) for s in SIGNS)}")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; valid: {', '.join(repr(r) for r in RULES)}")


def _row_percentile(stat: torch.Tensor, percentile: float) -> torch.Tensor:
    """Per-row percentile with linear interpolation between order statistics (NumPy's default method).

    Hand-rolled on a sort because ``torch.quantile`` refuses inputs above 2**24 elements.
    """
    n = stat.shape[1]
    ordered, _ = stat.sort(dim=1)  # [K, neuron]
    position = percentile / 100.0 * (n - 1)
    lo = int(math.floor(position))
    hi = min(lo + 1, n - 1)
    frac = position - lo
    return ordered[:, lo] + frac * (ordered[:, hi] - ordered[:, lo])  # [K]


def threshold_oriented(
    oriented: torch.Tensor, *, alpha: float, rule: str, percentile: float, sign: str
) -> torch.Tensor:
    """oriented [K, neuron] float32 -> masks [K, neuron] bool (the statistic is |z| for sign='abs')."""
    stat = oriented.abs() if sign == "abs" else oriented  # [K, neuron]
    if rule == "z":
        return stat > alpha
    cut = _row_percentile(stat, percentile)  # [K]
    return stat > cut[:, None]


def check_threshold_params(alpha: float, rule: str, percentile: float, sign: str) -> None:
    """Raise a ``ValueError`` naming the parameter and its valid values when a threshold setting is invalid."""
    _check_rule(rule)
    _check_sign(sign)
    if not math.isfinite(float(alpha)):
        raise ValueError(f"alpha must be finite, got {alpha}")
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")


def threshold_maps(
    maps: Any,
    *,
    alpha: float = 1.96,
    rule: str = "z",
    percentile: float = 98.0,
    sign: str = "flip",
) -> torch.Tensor:
    """Threshold spatial maps into networks.

    Parameters
    ----------
    maps
        [K, neuron] raw spatial maps; each row is z-scored first (``zscore_maps``).
    alpha
        z threshold for ``rule="z"``.
    rule
        ``"z"``: keep neurons whose statistic is > alpha. ``"percentile"``: keep neurons whose
        statistic is > the given percentile of that map's statistic (linear interpolation between order
        statistics, as ``numpy.percentile``); with distinct values this keeps
        ``n - 1 - floor(percentile/100 * (n - 1))`` neurons, about (1 - percentile/100) * n.
    percentile
        used by ``rule="percentile"``, in [0, 100].
    sign
        the statistic thresholded. ``"positive"`` (the paper's): z. ``"abs"``: |z|.
        ``"flip"`` (default): z multiplied by the sign of the map's skewness, so the heavy tail is
        positive (see ``orient_maps``).

    Returns
    -------
    masks  # [K, neuron] bool, True = neuron in the network. A constant map selects nothing.

    Examples
    --------
    >>> import torch
    >>> maps = torch.tensor([[0.0] * 7 + [9.0], [-9.0] + [0.0] * 7])  # [K=2, neuron=8], one outlier each
    >>> threshold_maps(maps, alpha=2.0).nonzero().tolist()  # sign="flip" turns row 1's negative tail positive
    [[0, 7], [1, 0]]
    >>> threshold_maps(maps, alpha=2.0, sign="positive").nonzero().tolist()
    [[0, 7]]
    """
    check_threshold_params(alpha, rule, percentile, sign)
    oriented, _ = orient_maps(zscore_maps(maps), sign)
    return threshold_oriented(oriented, alpha=alpha, rule=rule, percentile=percentile, sign=sign)
