"""``NetworkSet``: K functional networks as masks ``[K, layer, unit]``, saved as one file with provenance.

A NetworkSet holds the masks (+ optional z-maps, stability, per-map sign, provenance) and the set algebra on
them (select, union, sizes, counts per layer); it is saved as ONE safetensors file with the provenance JSON in
its metadata and refuses files it did not write.

Neuron order. Everywhere a neuron axis is flat, it is layer-major, the order the recorder emits its
tokens x (layers * width) matrix in::

    flat neuron index = layer * width + unit        (layer in [0, n_layers), unit in [0, width))

so ``flat.reshape(K, n_layers, width)`` recovers [K, layer, unit].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from fnet.cache import atomic_path
from fnet.networks.threshold import as_tensor, check_threshold_params, orient_maps, threshold_oriented, zscore_maps
from fnet.version import __version__

__all__ = ["FILE_FORMAT", "FILE_FORMAT_VERSION", "NetworkSetFormatError", "NetworkSet"]


#: Value of the ``format`` metadata key that marks a safetensors file as a saved NetworkSet.
FILE_FORMAT = "fnet.NetworkSet"
#: Bumped when the file layout changes; ``NetworkSet.load`` refuses versions it does not know.
FILE_FORMAT_VERSION = "1"

# Tensor names inside the file, and the dtype each must have.
_FILE_TENSORS = {"masks": torch.bool, "maps": torch.float32, "stability": torch.float64, "signs": torch.int8}


class NetworkSetFormatError(ValueError):
    """A file is not a saved NetworkSet, or its contents disagree with each other."""


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
    out.setdefault("fnet_version", __version__)
    return out


class NetworkSet:
    """K functional networks over a model's neurons.

    Parameters
    ----------
    masks : torch.Tensor
        [K, layer, unit] bool, True = neuron in that network.
    maps : torch.Tensor, optional
        [K, layer, unit] float32 or None: the z-scored maps after the sign policy (``oriented`` in
        ``orient_maps``), so for sign 'flip'/'positive' and rule 'z', ``masks == maps > alpha``.
    stability : array-like, optional
        [K] float64 or None: per-network stability (e.g. ICASSO index), caller-defined.
    signs : array-like, optional
        [K] int8 in {+1, -1} or None: the factor applied to each z-map by the sign policy.
    provenance : dict, optional
        JSON-able dict (model, signal, data, seed, K, alpha, sign, rule, ...);
        ``fnet_version`` is filled from ``fnet.__version__`` if absent. ``select`` records
        ``network_indices``: the indices of the kept networks in the original set.

    Examples
    --------
    Two planted networks in maps over 2 layers x 50 units (flat index = layer * 50 + unit):

    >>> import tempfile, torch
    >>> maps = torch.zeros(2, 2 * 50)  # [K, n_layers * width]
    >>> maps[0, [3, 57]] = 10.0                # layer 0 unit 3, layer 1 unit 7
    >>> maps[1, [10, 11, 60]] = 10.0           # layer 0 units 10, 11, layer 1 unit 10
    >>> nets = NetworkSet.from_maps(maps, n_layers=2, width=50, alpha=3.0)
    >>> nets
    NetworkSet(K=2, n_layers=2, width=50, maps=yes)
    >>> nets.sizes().tolist(), nets.neurons(0).tolist()  # neurons as [layer, unit]
    ([2, 3], [[0, 3], [1, 7]])
    >>> int(nets.union().sum())  # neurons in any network
    5
    >>> path = nets.save(tempfile.mkdtemp() + "/nets.safetensors")
    >>> back = NetworkSet.load(path)
    >>> torch.equal(back.masks, nets.masks), back.provenance["alpha"], back.provenance["rule"]
    (True, 3.0, 'z')
    >>> masks = torch.zeros(1, 2, 50, dtype=torch.bool)  # [K, layer, unit]
    >>> masks[0, 1, [10, 11]] = True
    >>> NetworkSet.from_masks(masks).neurons(0).tolist()
    [[1, 10], [1, 11]]
    """

    def __init__(
        self,
        masks: Any,
        maps: Any = None,
        stability: Any = None,
        provenance: Mapping[str, Any] | None = None,
        signs: Any = None,
    ) -> None:
        masks = as_tensor(masks, "masks")
        if masks.dtype != torch.bool:
            raise TypeError(f"masks must be bool, got {masks.dtype} (use NetworkSet.from_masks to convert 0/1)")
        if masks.ndim != 3:
            raise ValueError(f"masks must be [K, n_layers, width], got shape {tuple(masks.shape)}")
        self.masks = masks.contiguous()  # [K, layer, unit] bool
        n = masks.shape[0]

        self.maps: torch.Tensor | None = None  # [K, layer, unit] float32
        if maps is not None:
            maps = as_tensor(maps, "maps").to(torch.float32)
            if maps.ndim == 2 and maps.shape == (n, masks.shape[1] * masks.shape[2]):
                maps = maps.reshape(masks.shape)
            if maps.shape != masks.shape:
                raise ValueError(f"maps shape {tuple(maps.shape)} != masks shape {tuple(masks.shape)}")
            self.maps = maps.contiguous()

        self.stability: torch.Tensor | None = None  # [K] float64
        if stability is not None:
            stability = as_tensor(stability, "stability").to(torch.float64).flatten()
            if stability.shape != (n,):
                raise ValueError(f"stability must have {n} values (one per network), got {stability.numel()}")
            self.stability = stability.contiguous()

        self.signs: torch.Tensor | None = None  # [K] int8
        if signs is not None:
            signs = as_tensor(signs, "signs").flatten()
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

        Parameters
        ----------
        maps
            [K, n_layers * width] (flat, layer-major: index = layer * width + unit) or
            [K, n_layers, width].

        Notes
        -----
        The thresholding parameters are written into the provenance (``rule``, ``sign``, and ``alpha`` or
        ``percentile`` for the rule used; ``K`` if absent); a caller value that contradicts one of those
        raises ValueError.
        """
        check_threshold_params(alpha, rule, percentile, sign)
        maps = as_tensor(maps, "maps")
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
        masks = threshold_oriented(oriented, alpha=alpha, rule=rule, percentile=percentile, sign=sign)

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
        masks = as_tensor(masks, "masks")
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

        Parameters
        ----------
        neuron_sets
            one entry per network; each is an iterable of flat neuron indices
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
