"""Functional networks: thresholded ICA spatial maps over neurons, as sets of neurons.

An ICA run on the recorded tokens x neurons matrix gives K spatial maps over neurons. Following fMRI practice
(and Liu et al. 2025), each map is z-scored over neurons and thresholded; the neurons that pass form one
"functional network". This module holds that step and the set algebra on the result:

- ``zscore_maps`` / ``orient_maps`` / ``threshold_maps``: maps [K, neuron] -> masks [K, neuron].
- ``NetworkSet``: masks [K, layer, unit] (+ optional z-maps, stability, per-map sign, provenance), saved as
  ONE safetensors file with the provenance JSON in its metadata.
- ``iou`` and ``match_templates``: overlap between networks (the paper's template matching, Tables 1-3).

Neuron order. Everywhere a neuron axis is flat, it is layer-major, the order the recorder emits its
tokens x (layers * width) matrix in::

    flat neuron index = layer * width + unit        (layer in [0, n_layers), unit in [0, width))

so ``flat.reshape(K, n_layers, width)`` recovers [K, layer, unit].

Why this is hand-written: no library does this. scikit-learn's ``jaccard_score`` scores one pair of label
vectors at a time, and SciPy's ``cdist(..., "jaccard")`` loops over pairs on NumPy arrays with its own
0/0 convention; neither knows about layers, per-network provenance or a file format. IoU of boolean sets
is one float matmul (intersections) plus set sizes, done below in torch.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "RULES",
    "SIGNS",
    "FILE_FORMAT",
    "FILE_FORMAT_VERSION",
    "NetworkSetFormatError",
    "zscore_maps",
    "orient_maps",
    "threshold_maps",
    "NetworkSet",
    "iou",
    "TemplateMatch",
    "match_templates",
]

RULES = ("z", "percentile")
SIGNS = ("flip", "positive", "abs")

#: Value of the ``format`` metadata key that marks a safetensors file as a saved NetworkSet.
FILE_FORMAT = "fnet.NetworkSet"
#: Bumped when the file layout changes; ``NetworkSet.load`` refuses versions it does not know.
FILE_FORMAT_VERSION = "1"

# Tensor names inside the file, and the dtype each must have.
_FILE_TENSORS = {"masks": torch.bool, "maps": torch.float32, "stability": torch.float64, "signs": torch.int8}


class NetworkSetFormatError(ValueError):
    """A file is not a saved NetworkSet, or its contents disagree with each other."""


# ---------------------------------------------------------------------------------------------------------
# Maps -> masks
# ---------------------------------------------------------------------------------------------------------


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
        return torch.as_tensor(np.asarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def _as_maps_2d(maps: Any) -> torch.Tensor:
    maps = _as_tensor(maps, "maps")
    if maps.ndim != 2:
        raise ValueError(f"maps must be 2-D [K, neuron], got shape {tuple(maps.shape)}")
    if maps.dtype == torch.bool or maps.is_complex():
        raise TypeError(f"maps must be real numbers, got dtype {maps.dtype}")
    return maps


def zscore_maps(maps: Any) -> torch.Tensor:
    """Z-score each map over all its neurons.

    Args:
        maps: [K, neuron] real (torch or numpy).

    Returns:
        z  # [K, neuron] float32: (map - mean) / std per row, computed in float64, std with ddof=0.

    Rule for a constant row (std == 0): its z-map is all zeros (no neuron deviates from the rest, so no
    threshold selects anything), and a RuntimeWarning names the rows. Non-finite values raise ValueError.
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

    Args:
        z: [K, neuron] z-scored maps (from ``zscore_maps``).
        sign: ``"flip"``: multiply each map by the sign of its skewness (mean of z^3), so its heavy tail is
            on the positive side; a map with skewness exactly 0 is kept as is. ICA leaves each component's
            sign arbitrary, and a sparse functional network shows up as one heavy tail, which skewness
            points at. ``"positive"`` and ``"abs"`` leave the maps as they are.

    Returns:
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


def _threshold_oriented(
    oriented: torch.Tensor, *, alpha: float, rule: str, percentile: float, sign: str
) -> torch.Tensor:
    """oriented [K, neuron] float32 -> masks [K, neuron] bool (the statistic is |z| for sign='abs')."""
    stat = oriented.abs() if sign == "abs" else oriented  # [K, neuron]
    if rule == "z":
        return stat > alpha
    cut = _row_percentile(stat, percentile)  # [K]
    return stat > cut[:, None]


def _check_params(alpha: float, rule: str, percentile: float, sign: str) -> None:
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

    Args:
        maps: [K, neuron] raw spatial maps; each row is z-scored first (``zscore_maps``).
        alpha: z threshold for ``rule="z"``.
        rule: ``"z"``: keep neurons whose statistic is > alpha. ``"percentile"``: keep neurons whose
            statistic is > the given percentile of that map's statistic (linear interpolation between order
            statistics, as ``numpy.percentile``); with distinct values this keeps
            ``n - 1 - floor(percentile/100 * (n - 1))`` neurons, about (1 - percentile/100) * n.
        percentile: used by ``rule="percentile"``, in [0, 100].
        sign: the statistic thresholded. ``"positive"`` (the paper's): z. ``"abs"``: |z|.
            ``"flip"`` (default): z multiplied by the sign of the map's skewness, so the heavy tail is
            positive (see ``orient_maps``).

    Returns:
        masks  # [K, neuron] bool, True = neuron in the network. A constant map selects nothing.
    """
    _check_params(alpha, rule, percentile, sign)
    oriented, _ = orient_maps(zscore_maps(maps), sign)
    return _threshold_oriented(oriented, alpha=alpha, rule=rule, percentile=percentile, sign=sign)


# ---------------------------------------------------------------------------------------------------------
# NetworkSet
# ---------------------------------------------------------------------------------------------------------


def _normalise_provenance(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy through JSON so the in-memory dict equals what a save/load round trip gives back."""
    if provenance is None:
        provenance = {}
    if not isinstance(provenance, Mapping):
        raise TypeError(f"provenance must be a dict, got {type(provenance).__name__}")
    try:
        text = json.dumps(dict(provenance), sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"provenance must be JSON-serialisable: {err}") from err
    out = json.loads(text)
    if "fnet_version" not in out:
        import fnet  # late import: fnet/__init__ may one day import this module

        out["fnet_version"] = fnet.__version__
    return out


class NetworkSet:
    """K functional networks over a model's neurons.

    Attributes:
        masks: [K, layer, unit] bool, True = neuron in that network.
        maps: [K, layer, unit] float32 or None: the z-scored maps after the sign policy (``oriented`` in
            ``orient_maps``), so for sign 'flip'/'positive' and rule 'z', ``masks == maps > alpha``.
        stability: [K] float64 or None: per-network stability (e.g. ICASSO index), caller-defined.
        signs: [K] int8 in {+1, -1} or None: the factor applied to each z-map by the sign policy.
        provenance: JSON-able dict (model, signal, data, seed, K, alpha, sign, rule, ...);
            ``fnet_version`` is filled from ``fnet.__version__`` if absent. ``select`` records
            ``network_indices``: the indices of the kept networks in the original set.
    """

    def __init__(
        self,
        masks: Any,
        maps: Any = None,
        stability: Any = None,
        provenance: Mapping[str, Any] | None = None,
        signs: Any = None,
    ) -> None:
        masks = _as_tensor(masks, "masks")
        if masks.dtype != torch.bool:
            raise TypeError(f"masks must be bool, got {masks.dtype} (use NetworkSet.from_masks to convert 0/1)")
        if masks.ndim != 3:
            raise ValueError(f"masks must be [K, n_layers, width], got shape {tuple(masks.shape)}")
        self.masks = masks.contiguous()  # [K, layer, unit] bool
        n = masks.shape[0]

        self.maps: torch.Tensor | None = None  # [K, layer, unit] float32
        if maps is not None:
            maps = _as_tensor(maps, "maps").to(torch.float32)
            if maps.ndim == 2 and maps.shape == (n, masks.shape[1] * masks.shape[2]):
                maps = maps.reshape(masks.shape)
            if maps.shape != masks.shape:
                raise ValueError(f"maps shape {tuple(maps.shape)} != masks shape {tuple(masks.shape)}")
            self.maps = maps.contiguous()

        self.stability: torch.Tensor | None = None  # [K] float64
        if stability is not None:
            stability = _as_tensor(stability, "stability").to(torch.float64).flatten()
            if stability.shape != (n,):
                raise ValueError(f"stability must have {n} values (one per network), got {stability.numel()}")
            self.stability = stability.contiguous()

        self.signs: torch.Tensor | None = None  # [K] int8
        if signs is not None:
            signs = _as_tensor(signs, "signs").flatten()
            if signs.shape != (n,):
                raise ValueError(f"signs must have {n} values (one per network), got {signs.numel()}")
            if not bool(((signs == 1) | (signs == -1)).all()):
                raise ValueError("signs must be +1 or -1")
            self.signs = signs.to(torch.int8).contiguous()

        self.provenance: dict[str, Any] = _normalise_provenance(provenance)

    # --- construction -----------------------------------------------------------------------------------

    @classmethod
    def from_maps(
        cls,
        maps: Any,
        n_layers: int,
        width: int,
        *,
        alpha: float = 1.96,
        rule: str = "z",
        percentile: float = 98.0,
        sign: str = "flip",
        stability: Any = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> "NetworkSet":
        """Threshold raw spatial maps into networks (see ``threshold_maps`` for the parameters).

        Args:
            maps: [K, n_layers * width] (flat, layer-major: index = layer * width + unit) or
                [K, n_layers, width].

        The thresholding parameters are written into the provenance (``rule``, ``sign``, and ``alpha`` or
        ``percentile`` for the rule used; ``K`` if absent); a caller value that contradicts one of those
        raises ValueError.
        """
        _check_params(alpha, rule, percentile, sign)
        maps = _as_tensor(maps, "maps")
        if maps.ndim == 3:
            if tuple(maps.shape[1:]) != (n_layers, width):
                raise ValueError(f"maps shape {tuple(maps.shape)} != [K, {n_layers}, {width}]")
            maps = maps.reshape(maps.shape[0], n_layers * width)
        elif maps.ndim != 2 or maps.shape[1] != n_layers * width:
            raise ValueError(
                f"maps must be [K, n_layers*width={n_layers * width}] or [K, {n_layers}, {width}], "
                f"got {tuple(maps.shape)}"
            )
        oriented, signs = orient_maps(zscore_maps(maps), sign)  # [K, neuron], [K]
        masks = _threshold_oriented(oriented, alpha=alpha, rule=rule, percentile=percentile, sign=sign)

        used: dict[str, Any] = {"rule": rule, "sign": sign}
        used.update({"alpha": float(alpha)} if rule == "z" else {"percentile": float(percentile)})
        prov = dict(provenance or {})
        for key, value in used.items():
            if key in prov and prov[key] != value:
                raise ValueError(f"provenance[{key!r}]={prov[key]!r} contradicts the {key}={value!r} used")
            prov[key] = value
        prov.setdefault("K", int(maps.shape[0]))
        shape = (maps.shape[0], n_layers, width)
        return cls(masks.reshape(shape), oriented.reshape(shape), stability, prov, signs)

    @classmethod
    def from_masks(
        cls,
        masks: Any,
        provenance: Mapping[str, Any] | None = None,
        *,
        maps: Any = None,
        stability: Any = None,
    ) -> "NetworkSet":
        """Wrap explicit masks [K, n_layers, width] (bool, or 0/1 numbers) as a NetworkSet."""
        masks = _as_tensor(masks, "masks")
        if masks.dtype != torch.bool:
            if not bool(((masks == 0) | (masks == 1)).all()):
                raise ValueError("masks must be bool or hold only 0 and 1")
            masks = masks.to(torch.bool)
        return cls(masks, maps, stability, provenance)

    @classmethod
    def from_neuron_sets(
        cls,
        neuron_sets: Sequence[Iterable[Any]],
        n_layers: int,
        width: int,
        provenance: Mapping[str, Any] | None = None,
        *,
        stability: Any = None,
    ) -> "NetworkSet":
        """Build networks from explicit neuron sets (e.g. POS key neurons).

        Args:
            neuron_sets: one entry per network; each is an iterable of flat neuron indices
                (layer * width + unit) or of (layer, unit) pairs (an [n] or [n, 2] int array also works).
                Duplicates are fine; out-of-range neurons raise ValueError.
        """
        masks = torch.zeros(len(neuron_sets), n_layers, width, dtype=torch.bool)  # [K, layer, unit]
        flat = masks.view(len(neuron_sets), n_layers * width)  # [K, neuron] view
        for k, neurons in enumerate(neuron_sets):
            idx = torch.as_tensor(np.asarray(list(neurons) if not hasattr(neurons, "shape") else neurons))
            if idx.numel() == 0:
                continue
            if idx.is_floating_point() or idx.dtype == torch.bool:
                raise TypeError(f"neuron set {k}: indices must be integers, got {idx.dtype}")
            idx = idx.to(torch.int64)
            if idx.ndim == 2 and idx.shape[1] == 2:
                layer, unit = idx[:, 0], idx[:, 1]
                if bool(((layer < 0) | (layer >= n_layers) | (unit < 0) | (unit >= width)).any()):
                    raise ValueError(f"neuron set {k}: (layer, unit) outside [{n_layers}, {width}]")
                idx = layer * width + unit
            elif idx.ndim != 1:
                raise ValueError(f"neuron set {k}: expected flat indices or (layer, unit) pairs")
            if bool(((idx < 0) | (idx >= n_layers * width)).any()):
                raise ValueError(f"neuron set {k}: flat index outside [0, {n_layers * width})")
            flat[k, idx] = True
        return cls(masks, None, stability, provenance)

    # --- shape ------------------------------------------------------------------------------------------

    @property
    def n_networks(self) -> int:
        return int(self.masks.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.masks.shape[1])

    @property
    def width(self) -> int:
        return int(self.masks.shape[2])

    @property
    def n_neurons(self) -> int:
        """All neurons of the model: n_layers * width."""
        return self.n_layers * self.width

    def __len__(self) -> int:
        return self.n_networks

    def __repr__(self) -> str:
        model = self.provenance.get("model")
        return (
            f"NetworkSet(K={self.n_networks}, n_layers={self.n_layers}, width={self.width}"
            f"{', model=' + repr(model) if model is not None else ''}, "
            f"maps={'yes' if self.maps is not None else 'no'})"
        )

    # --- subsets and summaries --------------------------------------------------------------------------

    def _index(self, indices: Any) -> torch.Tensor:
        """Any of int / sequence of ints / slice / bool mask [K] / int tensor -> int64 [k] indices."""
        k = self.n_networks
        if isinstance(indices, slice):
            return torch.arange(k)[indices]
        if isinstance(indices, (int, np.integer)):
            indices = [int(indices)]
        idx = torch.as_tensor(np.asarray(indices)).flatten()
        if idx.dtype == torch.bool:
            if idx.numel() != k:
                raise ValueError(f"bool selection has {idx.numel()} entries for {k} networks")
            return torch.nonzero(idx).flatten()
        if idx.numel() == 0:
            return torch.zeros(0, dtype=torch.int64)
        if idx.is_floating_point():
            raise TypeError("network indices must be integers")
        idx = idx.to(torch.int64)
        if bool(((idx < -k) | (idx >= k)).any()):
            raise IndexError(f"network index out of range for {k} networks: {idx.tolist()}")
        return idx % k if k else idx

    def select(self, indices: Any) -> "NetworkSet":
        """The networks at ``indices`` (int, ints, slice or bool [K]) as a new NetworkSet, in that order.

        provenance['network_indices'] records their indices in the original (pre-selection) set.
        """
        idx = self._index(indices)  # [k]
        prov = dict(self.provenance)
        original = prov.get("network_indices", list(range(self.n_networks)))
        prov["network_indices"] = [int(original[i]) for i in idx.tolist()]
        return NetworkSet(
            self.masks[idx],
            None if self.maps is None else self.maps[idx],
            None if self.stability is None else self.stability[idx],
            prov,
            None if self.signs is None else self.signs[idx],
        )

    def network_ids(self) -> list[int]:
        """Index of each network in the original set (differs from 0..K-1 after ``select``)."""
        return list(self.provenance.get("network_indices", range(self.n_networks)))

    def union(self, indices: Any = None) -> torch.Tensor:
        """Neurons in any of the networks (all, or those at ``indices``): [layer, unit] bool."""
        masks = self.masks if indices is None else self.masks[self._index(indices)]
        return masks.any(dim=0)

    def counts_per_layer(self) -> torch.Tensor:
        """Neurons per layer per network: [K, layer] int64."""
        return self.masks.sum(dim=2, dtype=torch.int64)

    def sizes(self) -> torch.Tensor:
        """Neurons per network: [K] int64."""
        return self.masks.flatten(1).sum(dim=1, dtype=torch.int64)

    def fractions(self) -> torch.Tensor:
        """Neurons per network as a fraction of all n_layers * width neurons: [K] float64."""
        return self.sizes().to(torch.float64) / max(self.n_neurons, 1)

    def flat(self) -> torch.Tensor:
        """Masks with a flat, layer-major neuron axis: [K, n_layers * width] bool (index = layer*width + unit)."""
        return self.masks.reshape(self.n_networks, self.n_neurons)

    def neurons(self, k: int) -> torch.Tensor:
        """The neurons of network ``k`` as (layer, unit) rows: [n, 2] int64, sorted layer-major."""
        return torch.nonzero(self.masks[k])

    # --- file -------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ONE safetensors file (parent folders are created), atomically. Returns the path.

        Tensors: ``masks`` bool [K, L, W]; optional ``maps`` float32 [K, L, W], ``stability`` float64 [K],
        ``signs`` int8 [K]. Metadata (all strings): ``format`` = "fnet.NetworkSet", ``format_version`` = "1",
        ``provenance`` = JSON of the provenance dict (sorted keys).
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"masks": self.masks}
        for name in ("maps", "stability", "signs"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value.contiguous()
        metadata = {
            "format": FILE_FORMAT,
            "format_version": FILE_FORMAT_VERSION,
            "provenance": json.dumps(self.provenance, sort_keys=True),
        }
        from fnet.cache import atomic_path

        with atomic_path(path) as tmp:  # a killed save never leaves a truncated file at `path`
            save_file(tensors, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "NetworkSet":
        """Read a file written by ``save``. Raises NetworkSetFormatError (a ValueError) naming the file if it
        is not a safetensors NetworkSet file or its tensors disagree; FileNotFoundError if it is missing."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"NetworkSet file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                names = set(handle.keys())
                tensors = {name: handle.get_tensor(name) for name in names}
        except Exception as err:  # safetensors raises its own SafetensorError (not importable stably)
            raise NetworkSetFormatError(f"{path}: not a readable safetensors file ({err})") from err

        def fail(why: str) -> NetworkSetFormatError:
            return NetworkSetFormatError(f"{path}: {why}")

        if metadata.get("format") != FILE_FORMAT:
            raise fail(f"not an fnet NetworkSet file (metadata 'format' is {metadata.get('format')!r})")
        if metadata.get("format_version") != FILE_FORMAT_VERSION:
            raise fail(f"unsupported NetworkSet format_version {metadata.get('format_version')!r}")
        unknown = names - set(_FILE_TENSORS)
        if unknown or "masks" not in names:
            raise fail(f"expected tensors 'masks' (+ optional maps/stability/signs), found {sorted(names)}")
        for name, tensor in tensors.items():
            if tensor.dtype != _FILE_TENSORS[name]:
                raise fail(f"tensor {name!r} has dtype {tensor.dtype}, expected {_FILE_TENSORS[name]}")
        masks = tensors["masks"]
        if masks.ndim != 3:
            raise fail(f"masks must be [K, n_layers, width], got shape {tuple(masks.shape)}")
        if "maps" in tensors and tensors["maps"].shape != masks.shape:
            raise fail(f"maps shape {tuple(tensors['maps'].shape)} != masks shape {tuple(masks.shape)}")
        for name in ("stability", "signs"):
            if name in tensors and tuple(tensors[name].shape) != (masks.shape[0],):
                raise fail(f"{name} shape {tuple(tensors[name].shape)} != [K={masks.shape[0]}]")
        try:
            provenance = json.loads(metadata.get("provenance", "{}"))
        except json.JSONDecodeError as err:
            raise fail(f"provenance metadata is not valid JSON ({err})") from err
        if not isinstance(provenance, dict):
            raise fail("provenance metadata is not a JSON object")
        try:
            return cls(masks, tensors.get("maps"), tensors.get("stability"), provenance, tensors.get("signs"))
        except (TypeError, ValueError) as err:
            raise fail(str(err)) from err


# ---------------------------------------------------------------------------------------------------------
# Overlap
# ---------------------------------------------------------------------------------------------------------


def _as_flat_masks(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, NetworkSet):
        return x.flat()
    x = _as_tensor(x, name)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"{name} must be [K, neuron] masks or a NetworkSet, got shape {tuple(x.shape)}")
    if x.dtype != torch.bool:
        if not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(f"{name} must be bool masks (or 0/1)")
        x = x.to(torch.bool)
    return x


def iou(a: Any, b: Any) -> torch.Tensor:
    """Intersection over union between every network of ``a`` and every network of ``b``.

    Args:
        a: [K1, neuron] bool (or a NetworkSet; a 1-D mask counts as K=1).
        b: [K2, neuron] bool (or a NetworkSet), same neuron count (and layout, for two NetworkSets).

    Returns:
        [K1, K2] float64; 0 where both sets are empty.
    """
    if isinstance(a, NetworkSet) and isinstance(b, NetworkSet):
        if (a.n_layers, a.width) != (b.n_layers, b.width):
            raise ValueError(
                f"NetworkSets differ in layout: [{a.n_layers}, {a.width}] vs [{b.n_layers}, {b.width}]"
            )
    a_flat, b_flat = _as_flat_masks(a, "a"), _as_flat_masks(b, "b")  # [K1, N], [K2, N]
    if a_flat.shape[1] != b_flat.shape[1]:
        raise ValueError(f"neuron counts differ: {a_flat.shape[1]} vs {b_flat.shape[1]}")
    # Counts of 0/1 products are exact in float32 up to 2**24 neurons; beyond that use float64.
    dtype = torch.float32 if a_flat.shape[1] <= 2**24 else torch.float64
    intersection = (a_flat.to(dtype) @ b_flat.to(dtype).T).to(torch.float64)  # [K1, K2]
    size_a = a_flat.sum(dim=1, dtype=torch.float64)  # [K1]
    size_b = b_flat.sum(dim=1, dtype=torch.float64)  # [K2]
    union = size_a[:, None] + size_b[None, :] - intersection  # [K1, K2]
    return torch.where(union > 0, intersection / union.clamp_min(1.0), torch.zeros_like(union))


@dataclass
class TemplateMatch:
    """Result of ``match_templates``.

    Attributes:
        iou: [K_templates, total individual networks] float64, individuals' networks concatenated in order.
        counts: [K_templates] int64: individual networks (over all individuals) with IoU > threshold.
        best_iou: one [K_ind_i] float64 per individual: each network's max IoU over templates.
        individual: [total] int64: which individual each column of ``iou`` belongs to.
        template_sizes: [K_templates] int64.
        n_individuals: number of individuals.
        threshold: the IoU threshold (strict >).
        template_ids: each template's index in its original set (see ``NetworkSet.network_ids``).
    """

    iou: torch.Tensor
    counts: torch.Tensor
    best_iou: list[torch.Tensor]
    individual: torch.Tensor
    template_sizes: torch.Tensor
    n_individuals: int
    threshold: float
    template_ids: list[int] = field(default_factory=list)

    @property
    def n_templates(self) -> int:
        return int(self.iou.shape[0])

    @property
    def n_individual_networks(self) -> int:
        return int(self.iou.shape[1])

    def best_iou_per_individual(self) -> torch.Tensor:
        """[K_templates, n_individuals] float64: for each template and individual, the max IoU over that
        individual's networks (0 for an individual with no networks)."""
        out = torch.zeros(self.n_templates, self.n_individuals, dtype=torch.float64)
        if self.n_individual_networks:
            index = self.individual[None, :].expand_as(self.iou)
            out.scatter_reduce_(1, index, self.iou, reduce="amax", include_self=True)
        return out

    def individuals_matched(self) -> torch.Tensor:
        """[K_templates] int64: individuals with at least one network of IoU > threshold."""
        return (self.best_iou_per_individual() > self.threshold).sum(dim=1)

    def as_rows(self) -> list[dict[str, Any]]:
        """One row per template: template (original index), size, matches (= counts), fraction_matched
        (matches / total individual networks; 0 if there are none), individuals_matched, and
        mean_best_iou (mean over individuals of the template's best IoU with that individual's networks)."""
        total = self.n_individual_networks
        per_individual = self.best_iou_per_individual()  # [K_templates, n_individuals]
        matched = (per_individual > self.threshold).sum(dim=1)  # [K_templates]
        ids = self.template_ids or list(range(self.n_templates))
        rows = []
        for t in range(self.n_templates):
            rows.append(
                {
                    "template": int(ids[t]),
                    "size": int(self.template_sizes[t]),
                    "matches": int(self.counts[t]),
                    "fraction_matched": float(self.counts[t]) / total if total else 0.0,
                    "individuals_matched": int(matched[t]),
                    "mean_best_iou": float(per_individual[t].mean()) if self.n_individuals else 0.0,
                }
            )
        return rows


def match_templates(
    templates: NetworkSet, individuals: Sequence[NetworkSet], threshold: float = 0.2
) -> TemplateMatch:
    """Match template networks (e.g. from group ICA) against each individual's networks.

    For each template, ``counts`` is the number of individual networks, over all individuals, whose IoU
    with it is > ``threshold`` (the paper's Tables 1-3). All sets must share the (n_layers, width) layout.
    """
    if not isinstance(templates, NetworkSet):
        raise TypeError("templates must be a NetworkSet")
    individuals = list(individuals)
    if not individuals:
        raise ValueError("match_templates needs at least one individual NetworkSet")
    for i, ind in enumerate(individuals):
        if not isinstance(ind, NetworkSet):
            raise TypeError(f"individual {i} is {type(ind).__name__}, not a NetworkSet")
        if (ind.n_layers, ind.width) != (templates.n_layers, templates.width):
            raise ValueError(
                f"individual {i} layout [{ind.n_layers}, {ind.width}] != templates "
                f"[{templates.n_layers}, {templates.width}]"
            )
    all_individual = torch.cat([ind.flat() for ind in individuals], dim=0)  # [total, neuron]
    overlap = iou(templates.flat(), all_individual)  # [K_templates, total]
    counts = (overlap > threshold).sum(dim=1)  # [K_templates]
    sizes = [ind.n_networks for ind in individuals]
    individual = torch.repeat_interleave(torch.arange(len(individuals)), torch.tensor(sizes))  # [total]
    if templates.n_networks:
        best = overlap.max(dim=0).values  # [total]
    else:  # no templates: nothing matches anything
        best = torch.zeros(overlap.shape[1], dtype=torch.float64)
    return TemplateMatch(
        iou=overlap,
        counts=counts,
        best_iou=list(best.split(sizes)),
        individual=individual,
        template_sizes=templates.sizes(),
        n_individuals=len(individuals),
        threshold=float(threshold),
        template_ids=templates.network_ids(),
    )
