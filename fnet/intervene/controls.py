"""Random controls matched to neuron magnitude, and the massive-channel diagnostic.

A count-matched random control (``mask=random``) draws as many random neurons per layer as a network has there.
A few residual channels of most LLMs carry activations orders of magnitude larger than the rest ("massive
activations"); functional networks often contain them, a uniform draw almost never does. So a network lesion
that hurts more than its count-matched control may only say "these huge channels matter". The pieces here let a
study tell the two apart:

- :func:`neuron_scale`: each neuron's activation scale (RMS over the recorded tokens);
- :func:`magnitude_matched_mask`: a random control with the same per-layer counts, drawn from the same per-layer
  quantile bins of that scale;
- :func:`top_units`, :func:`recurring_units`, :func:`spare`, :func:`unit_masks`: the top-magnitude units per
  layer, the units (by index across layers: for ``mlp_out`` the unit index is the residual channel, the same in
  every layer) most frequent across networks, a mask with those units spared, and single-unit lesion masks.

All functions are pure: plain arrays in, arrays out (numpy or torch bool masks ``[layer, unit]``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fnet.cache import atomic_path

__all__ = [
    "neuron_moments",
    "neuron_scale",
    "save_scale",
    "load_scale",
    "magnitude_bins",
    "magnitude_matched_draw",
    "magnitude_matched_mask",
    "top_units",
    "recurring_units",
    "massive_units",
    "spare",
    "unit_masks",
]

#: the ``format`` metadata of a saved neuron scale
SCALE_FORMAT = "fnet.NeuronScale"


def _as_bool_array(mask: Any, name: str) -> np.ndarray:
    if hasattr(mask, "detach"):  # torch tensor
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"{name} must be a boolean mask, got dtype {mask.dtype}")
    return mask


def _as_scale(scale: Any) -> np.ndarray:
    if hasattr(scale, "detach"):
        scale = scale.detach().cpu().numpy()
    scale = np.asarray(scale, dtype=np.float64)
    if scale.ndim != 2:
        raise ValueError(f"scale must be 2-D [layer, unit], got shape {scale.shape}")
    if not np.all(np.isfinite(scale)):
        raise ValueError("scale has non-finite values")
    return scale


# --------------------------------------------------------------------------------------------------------------
# Scale
# --------------------------------------------------------------------------------------------------------------
def neuron_moments(arrays: Sequence[Any], n_layers: int, *, chunk_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean and root mean square of every neuron over all recorded tokens.

    Parameters
    ----------
    arrays : sequence of array-like
        Per-text activations, each ``[tokens, n_layers*width]`` (float16 memory maps of an ActivationStore's
        ``.arrays()``); streamed ``chunk_rows`` tokens at a time, so nothing is loaded whole.
    n_layers : int
        Layers of the flattened neuron axis (layer-major: neuron ``l*width + u``).
    chunk_rows : int
        Tokens per chunk.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``mean  # [n_layers, width] float64`` (what mean ablation sets a neuron to) and ``scale  # [n_layers,
        width] float64``, sqrt(sum x^2 / tokens) (what magnitude-matched controls match), accumulated in float64.
    """
    if not len(arrays):
        raise ValueError("neuron_scale needs at least one activation array")
    n_neurons = int(arrays[0].shape[1])
    if n_neurons % n_layers:
        raise ValueError(f"{n_neurons} neurons per token do not split into n_layers={n_layers} equal layers")
    total = np.zeros(n_neurons, dtype=np.float64)  # [layers*width]
    sum_sq = np.zeros(n_neurons, dtype=np.float64)  # [layers*width]
    n_tokens = 0
    for i, acts in enumerate(arrays):  # acts  # [tokens, layers*width]
        if acts.ndim != 2 or acts.shape[1] != n_neurons:
            raise ValueError(f"array {i} has shape {tuple(acts.shape)}; expected [tokens, {n_neurons}]")
        for start in range(0, acts.shape[0], chunk_rows):
            block = np.asarray(acts[start : start + chunk_rows], dtype=np.float64)  # [chunk, layers*width]
            total += block.sum(axis=0)
            sum_sq += np.einsum("tn,tn->n", block, block)
        n_tokens += int(acts.shape[0])
    if n_tokens == 0:
        raise ValueError("the activation arrays hold no tokens")
    shape = (n_layers, n_neurons // n_layers)
    return (total / n_tokens).reshape(shape), np.sqrt(sum_sq / n_tokens).reshape(shape)


def neuron_scale(arrays: Sequence[Any], n_layers: int, *, chunk_rows: int = 4096) -> np.ndarray:
    """``scale  # [n_layers, width]``: the root mean square of every neuron (:func:`neuron_moments`)."""
    return neuron_moments(arrays, n_layers, chunk_rows=chunk_rows)[1]


def save_scale(path: str | Path, scale: Any, provenance: dict, mean: Any = None) -> Path:
    """Write ``scale  # [layer, unit]`` (and the neurons' ``mean``, for mean ablation) as one safetensors file with
    its ``provenance`` (the model's fingerprint, signal and the texts it was measured on), atomically;
    :func:`load_scale` reads it back.

    Examples
    --------
    >>> import tempfile
    >>> path = save_scale(tempfile.mkdtemp() + "/scale.safetensors", np.ones((2, 3)), {"model": "m"})
    >>> scale, prov = load_scale(path)
    >>> scale.shape, prov["model"]
    ((2, 3), 'm')
    """
    tensors = {"scale": torch.from_numpy(_as_scale(scale))}
    if mean is not None:
        tensors["mean"] = torch.from_numpy(_as_scale(mean))
        if tensors["mean"].shape != tensors["scale"].shape:
            raise ValueError(f"mean {list(tensors['mean'].shape)} and scale {list(tensors['scale'].shape)} differ")
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(
            tensors,
            str(tmp),
            metadata={"format": SCALE_FORMAT, "provenance": json.dumps(provenance, sort_keys=True, default=str)},
        )
    return path


def load_scale(path: str | Path) -> tuple[np.ndarray, dict]:
    """``(scale  # [layer, unit] float64, provenance)`` of a file written by :func:`save_scale`; another file is a
    ``ValueError`` naming it. The neurons' mean, when the file has it, is ``provenance["mean"]`` (an array)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"neuron scale file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            scale = handle.get_tensor("scale").numpy() if "scale" in handle.keys() else None
            mean = handle.get_tensor("mean").numpy() if "mean" in handle.keys() else None
    except Exception as err:  # safetensors raises its own SafetensorError (not importable stably)
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    if metadata.get("format") != SCALE_FORMAT or scale is None:
        raise ValueError(
            f"{path}: not an fnet neuron scale file (format {metadata.get('format')!r}; "
            "write one with fnet.intervene.controls.save_scale)"
        )
    provenance = json.loads(metadata.get("provenance") or "{}")
    if mean is not None:
        provenance["mean"] = _as_scale(mean)
    return _as_scale(scale), provenance


# --------------------------------------------------------------------------------------------------------------
# Magnitude-matched control
# --------------------------------------------------------------------------------------------------------------
def magnitude_bins(scale: Any, n_bins: int | Sequence[float] = 10) -> np.ndarray:
    """Per-layer quantile bin of every neuron's scale.

    Bins are by rank within the layer (ties broken by unit index). ``n_bins`` an int: equal-count bins, so bin
    ``b`` of layer ``l`` holds the units between that layer's ``b/n_bins`` and ``(b+1)/n_bins`` quantiles. A
    sequence of quantile edges in (0, 1) (e.g. ``[0.5, 0.75, 0.9, 0.95, 0.99, 0.999]``): bins between them, fine in
    the tail, so a massive unit is matched only by the few units as extreme as it in its layer.

    Returns
    -------
    numpy.ndarray
        ``bins  # [layer, unit] int64`` (0 = smallest scale).

    Examples
    --------
    >>> magnitude_bins(np.arange(10.0)[None, :], 5).tolist()
    [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]]
    >>> magnitude_bins(np.arange(10.0)[None, :], [0.5, 0.9]).tolist()  # below the median, to the 90th, the top 10 %
    [[0, 0, 0, 0, 0, 1, 1, 1, 1, 2]]
    """
    scale = _as_scale(scale)
    n_layers, width = scale.shape
    order = np.argsort(scale, axis=1, kind="stable")  # [layer, unit]: units by ascending scale
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(width)[None, :].repeat(n_layers, 0), axis=1)
    if np.ndim(n_bins) == 0:
        if not 1 <= int(n_bins) <= width:
            raise ValueError(f"n_bins must be between 1 and the layer width {width}, got {n_bins}")
        return (ranks * int(n_bins)) // width
    edges = np.asarray(n_bins, dtype=np.float64)
    if edges.ndim != 1 or not len(edges) or (np.diff(edges) <= 0).any() or edges[0] <= 0 or edges[-1] >= 1:
        raise ValueError(f"quantile edges must increase strictly within (0, 1), got {list(n_bins)}")
    return np.searchsorted(edges, (ranks + 0.5) / width, side="right").astype(np.int64)


DISJOINT = ("require", "prefer", "no")


def magnitude_matched_draw(
    mask: Any,
    scale: Any,
    *,
    n_bins: int | Sequence[float] = 10,
    seed: int = 0,
    exclude: Any = None,
    disjoint: str = "require",
) -> tuple[np.ndarray, int]:
    """A random mask with ``mask``'s per-layer counts and its per-layer magnitude profile.

    For every layer and every masked neuron, one random neuron is drawn (without replacement) from the same
    quantile bin of that layer's ``scale`` (:func:`magnitude_bins`), among the neurons that are neither in
    ``mask`` nor in ``exclude``. When that bin has run out, the nearest bin with a free neuron is used (the
    lower one on a tie) and the fallback is counted.

    ``disjoint`` says what happens in a layer with fewer free neurons than ``mask`` has there (the union of
    many networks can fill most of a layer): ``"require"`` raises; ``"prefer"`` draws that layer from all of its
    neurons but ``exclude`` (the reference included, as a count-matched control always may); ``"no"`` does so in
    every layer.

    Parameters
    ----------
    mask : bool array ``[layer, unit]``
        The reference (e.g. a network, or the union of networks).
    scale : array ``[layer, unit]``
        Neuron scale (:func:`neuron_scale`).
    n_bins : int or sequence of float
        Quantile bins per layer, or their quantile edges (:func:`magnitude_bins`).
    seed : int
        Seed of the draw (same seed, same inputs -> same mask).
    exclude : bool array ``[layer, unit]``, optional
        Further neurons never drawn (e.g. every network's neurons).
    disjoint : {"require", "prefer", "no"}
        Whether the draw avoids ``mask`` (see above).

    Returns
    -------
    (numpy.ndarray, int)
        ``drawn  # [layer, unit] bool`` and the number of neurons taken from a neighbouring bin.
    """
    mask = _as_bool_array(mask, "mask")
    scale = _as_scale(scale)
    if mask.shape != scale.shape:
        raise ValueError(f"mask shape {mask.shape} differs from scale shape {scale.shape}")
    if disjoint not in DISJOINT:
        raise ValueError(f"disjoint={disjoint!r}; valid: {list(DISJOINT)}")
    excluded = np.zeros_like(mask)
    if exclude is not None:
        excluded = _as_bool_array(exclude, "exclude")
        if excluded.shape != mask.shape:
            raise ValueError(f"exclude shape {excluded.shape} differs from mask shape {mask.shape}")
    blocked = excluded if disjoint == "no" else mask | excluded
    bins = magnitude_bins(scale, n_bins)  # [layer, unit]
    count = int(n_bins) if np.ndim(n_bins) == 0 else len(n_bins) + 1  # bins per layer
    rng = np.random.default_rng(seed)
    drawn = np.zeros_like(mask)
    fallbacks = 0
    for layer in range(mask.shape[0]):
        wanted = np.flatnonzero(mask[layer])
        layer_blocked = blocked[layer]
        if disjoint == "prefer" and len(wanted) > int((~layer_blocked).sum()):
            layer_blocked = excluded[layer]  # the reference fills this layer: draw among all its neurons
        free = [list(rng.permutation(np.flatnonzero((bins[layer] == b) & ~layer_blocked))) for b in range(count)]
        n_free = sum(len(f) for f in free)
        if len(wanted) > n_free:
            raise ValueError(
                f"layer {layer}: {len(wanted)} neurons to match but only {n_free} neurons outside the "
                f"reference (and exclude) to draw from (disjoint={disjoint!r}; 'prefer' draws such a "
                "layer from all its neurons)"
            )
        for unit in rng.permutation(wanted):
            home = int(bins[layer, unit])
            for distance in range(count):
                candidates = [b for b in (home - distance, home + distance) if 0 <= b < count and free[b]]
                if candidates:
                    break
            chosen = candidates[0]
            fallbacks += chosen != home
            drawn[layer, free[chosen].pop()] = True
    return drawn, fallbacks


def magnitude_matched_mask(
    mask: Any, scale: Any, *, n_bins: int = 10, seed: int = 0, exclude: Any = None, disjoint: str = "require"
) -> np.ndarray:
    """``drawn  # [layer, unit] bool`` of :func:`magnitude_matched_draw` (without the fallback count)."""
    return magnitude_matched_draw(mask, scale, n_bins=n_bins, seed=seed, exclude=exclude, disjoint=disjoint)[0]


# --------------------------------------------------------------------------------------------------------------
# Massive-channel diagnostic
# --------------------------------------------------------------------------------------------------------------
def top_units(scale: Any, k: int) -> np.ndarray:
    """The ``k`` largest-scale units of every layer.

    Returns
    -------
    numpy.ndarray
        ``units  # [layer, k] int64``, per layer by descending scale (ties: lower unit first).
    """
    scale = _as_scale(scale)
    if not 1 <= k <= scale.shape[1]:
        raise ValueError(f"k must be between 1 and the layer width {scale.shape[1]}, got {k}")
    return np.argsort(-scale, axis=1, kind="stable")[:, :k]


def _masks_of(netset_or_masks: Any) -> np.ndarray:
    masks = getattr(netset_or_masks, "masks", netset_or_masks)
    masks = _as_bool_array(masks, "masks")
    if masks.ndim != 3:
        raise ValueError(f"masks must be [K, layer, unit], got shape {masks.shape}")
    return masks


def recurring_units(netset_or_masks: Any, top: int | None = None, *, among: Sequence[int] | None = None) -> list[dict]:
    """Units ranked by how many networks contain them (in any layer).

    Parameters
    ----------
    netset_or_masks : NetworkSet or bool array ``[K, layer, unit]``
    top : int, optional
        Keep the first ``top`` units.
    among : sequence of int, optional
        Rank only these unit indices (e.g. the top-magnitude units).

    Returns
    -------
    list of dict
        ``{"unit", "networks" (how many contain it), "occurrences" (network x layer pairs), "network_ids",
        "layers"}`` by descending ``networks``, then ``occurrences``, then unit index; units in no network are
        left out.
    """
    masks = _masks_of(netset_or_masks)  # [K, layer, unit]
    per_network = masks.any(axis=1)  # [K, unit]
    n_networks = per_network.sum(axis=0)  # [unit]
    occurrences = masks.sum(axis=(0, 1))  # [unit]
    units = np.flatnonzero(n_networks) if among is None else [int(u) for u in among if n_networks[int(u)]]
    ranked = sorted(units, key=lambda u: (-int(n_networks[u]), -int(occurrences[u]), int(u)))
    rows = [
        {
            "unit": int(u),
            "networks": int(n_networks[u]),
            "occurrences": int(occurrences[u]),
            "network_ids": np.flatnonzero(per_network[:, u]).tolist(),
            "layers": np.flatnonzero(masks[:, :, u].any(axis=0)).tolist(),
        }
        for u in ranked
    ]
    return rows if top is None else rows[:top]


def massive_units(masks: Any, scale: Any, *, top_k: int, n_units: int) -> list[int]:
    """The massive units of a set of networks: among the ``top_k`` largest-scale units of every layer, the
    ``n_units`` most frequent across networks (:func:`recurring_units`; fewer when fewer are in any network).

    Examples
    --------
    >>> masks = np.zeros((3, 2, 4), dtype=bool); masks[:, :, 3] = True; masks[0, 0, 1] = True
    >>> scale = np.ones((2, 4)); scale[:, 3] = 100.0; scale[0, 1] = 50.0
    >>> massive_units(masks, scale, top_k=2, n_units=4)  # unit 3 in all three networks, unit 1 in one
    [3, 1]
    """
    candidates = sorted(set(top_units(scale, top_k).ravel().tolist()))
    return [row["unit"] for row in recurring_units(masks, n_units, among=candidates)]


def spare(mask: Any, units: Sequence[int]) -> np.ndarray:
    """``mask`` (``[..., layer, unit]`` bool) with ``units`` removed in every layer (the lesion spares them)."""
    out = _as_bool_array(mask, "mask").copy()
    units = [int(u) for u in units]
    if units and not all(0 <= u < out.shape[-1] for u in units):
        raise ValueError(f"units {units} out of range for width {out.shape[-1]}")
    out[..., units] = False
    return out


def unit_masks(netset_or_masks: Any, units: Sequence[int]) -> np.ndarray:
    """Single-unit lesion masks: unit ``u`` in every layer where some network contains it.

    Returns
    -------
    numpy.ndarray
        ``masks  # [len(units), layer, unit] bool``.
    """
    masks = _masks_of(netset_or_masks)  # [K, layer, unit]
    out = np.zeros((len(units),) + masks.shape[1:], dtype=bool)
    for i, unit in enumerate(units):
        out[i, :, int(unit)] = masks[:, :, int(unit)].any(axis=0)
    return out
