"""One registry of mask kinds: every mask mode and random control, described once for every layer that needs it.

    from fnet.intervene import MASKS, build_mask
    spec = build_mask("magnitude", netset=nets, networks="all", seed=0, scale=scale)   # a MaskSpec
    MASKS["magnitude"].label, MASKS["magnitude"].seeded, MASKS["magnitude"].controls
    ('magnitude-matched control', True, 'lesion')

Each :class:`MaskKind` says how its mask is built (``build``, from a :class:`MaskRequest`), what it needs (networks,
a seed, the neurons' activation scale), how a table names it (``label``, ``describe``), where it sorts (``order``),
which condition it controls (``controls``) and the condition name a study reports it under (``condition``). The
mask builder (:func:`build_mask`), the evaluate pipeline (what to load before building), the sweep report (labels
and order) and the study planner (control kinds and conditions) all read :data:`MASKS`. A new kind is one
``register(MaskKind(...))`` call with its builder here (or in any module that imports this one) and, for the
command line, one ``conf/mask/<name>.yaml`` that includes ``_base``.

Random draws. ``seed`` alone selects the draw when ``stream`` is None (the v1 study's streams: every network, K and
task drew prefixes of the same orderings). With a ``stream`` string, the draw's seed is a hash of the stream, the
networks' identity (their masks and model), the selected networks, the kind and the seed: two networks' seed-0
controls differ, and so do two tasks' when the stream names the task.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from fnet.intervene.apply import MaskSpec
from fnet.intervene.controls import magnitude_matched_draw, massive_units, spare, unit_masks
from fnet.intervene.masks import amplify_mask, lesion_mask, preserve_mask, random_fraction_mask, random_matched_mask
from fnet.models import check_signal
from fnet.networks import NetworkSet

__all__ = ["MaskKind", "MaskRequest", "MASKS", "MASK_MODES", "ABLATIONS", "register", "build_mask", "draw_seed",
           "control_kinds"]

#: what a lesion (or a preservation's complement) sets its neurons to
ABLATIONS = ("zero", "mean")


@dataclass
class MaskRequest:
    """What a builder may read: the networks and every ``conf/mask`` setting (see :func:`build_mask`).

    Parameters
    ----------
    netset : NetworkSet, optional
        The networks.
    networks : int, list of int or str, optional
        The selected networks (:func:`parse_networks`).
    match : int, list of int or str, optional
        A control matched to these networks instead of ``networks``.
    seed : int
        The draw of a random control (default 0).
    fraction : float, optional
        ``random_fraction``: the share of every layer's units.
    value : float
        ``amplify``: added; ``scale``: multiplied (default 0.0).
    exclude_reference : bool
        Count-matched controls: draw only outside the networks (default False).
    signal : str
        ``mlp_out`` (default) or ``mlp_act``.
    n_layers, width : int, optional
        The mask's shape (``random_fraction`` without networks).
    scale : torch.Tensor [layer, unit], optional
        Each neuron's RMS activation (magnitude-matched kinds).
    bins : int or list of float
        Quantile bins per layer of the magnitude-matched draws, or their quantile edges (default 10).
    ablation : str
        ``zero`` (default) or ``mean``: what a lesion sets its neurons to.
    means : torch.Tensor [layer, unit], optional
        Each neuron's mean activation (``ablation="mean"``).
    as_published : bool
        Every layer masked with the last layer's row, the published code's bug (default False).
    top_k : int
        Top-magnitude units per layer that are massive candidates (default 4).
    n_units : int
        Massive units: the candidates most frequent across networks (default 4).
    unit : int
        Rank of the massive unit a single-unit lesion removes (default 0).
    stream : str, optional
        None: the seed alone picks the draw; a string: an independent stream (:func:`draw_seed`).
    """

    netset: Any = None
    networks: Any = None
    match: Any = None
    seed: int = 0
    fraction: float | None = None
    value: float = 0.0
    exclude_reference: bool = False
    signal: str = "mlp_out"
    n_layers: int | None = None
    width: int | None = None
    scale: Any = None          # scale  # [layer, unit]: each neuron's RMS activation (magnitude-matched kinds)
    bins: Any = 10             # quantile bins per layer of the magnitude-matched draws, or their quantile edges
    ablation: str = "zero"     # zero | mean: what a lesion sets its neurons to (mean: ``means``)
    means: Any = None          # means  # [layer, unit]: each neuron's mean activation (ablation=mean)
    as_published: bool = False  # every layer masked with the last layer's row (the published 10d96da bug)
    top_k: int = 4             # top-magnitude units per layer that are massive candidates
    n_units: int = 4           # massive units (the candidates most frequent across networks)
    unit: int = 0              # rank of the massive unit a single-unit lesion removes
    stream: str | None = None  # None: the seed alone; a string: an independent stream (module docstring)

    def union(self, default: Any, mode: str) -> MaskSpec:
        """The lesion of the selected networks (``match`` when set, else ``networks``, else ``default``)."""
        target = self.match if self.match is not None else self.networks
        return lesion_mask(need_networks(mode, self.netset), default if target is None else target)


@dataclass(frozen=True)
class MaskKind:
    """One mask mode.

    Parameters
    ----------
    name : str
        The ``mask.mode`` value (``conf/mask/<name>.yaml``).
    build : callable
        ``build(request: MaskRequest) -> MaskSpec | None``.
    label : str
        What a report calls it (``"count-matched control"``).
    describe : str
        The sweep table's condition label, a format string over ``networks``, ``K``, ``disjoint``, ``fraction``,
        ``value`` and ``subset``; ``{k}`` adds `` (K=..)`` where the networks' K is known.
    order : int
        Position in tables (lower first).
    needs_networks, seeded, needs_scale : bool
        Whether it is built from a NetworkSet, drawn at random (reported over seeds), or needs neuron scale.
    controls : str, optional
        For a random control: the kind it controls (``lesion`` or ``preserve``); else None.
    condition : str
        The name a study's report gives the condition (default: ``name``).
    per_network : bool
        Whether ``networks`` selects what it acts on (a sweep groups its jobs by it).
    """

    name: str
    build: Callable[[MaskRequest], MaskSpec | None]
    label: str
    describe: str
    order: int
    needs_networks: bool = True
    seeded: bool = False
    needs_scale: bool = False
    controls: str | None = None
    condition: str = ""
    per_network: bool = True

    def condition_name(self) -> str:
        return self.condition or self.name


#: every mask mode, by name, in registration order
MASKS: dict[str, MaskKind] = {}


def register(kind: MaskKind) -> MaskKind:
    """Add ``kind`` to :data:`MASKS` (a name registered twice is an error: it would silently replace a builder).

    Parameters
    ----------
    kind : MaskKind
        The mask mode.

    Returns
    -------
    MaskKind
        ``kind`` itself.
    """
    if kind.name in MASKS:
        raise ValueError(f"mask kind {kind.name!r} is registered already")
    MASKS[kind.name] = kind
    return kind


def control_kinds(controls: str) -> dict[str, MaskKind]:
    """The random controls of ``controls`` (``lesion`` or ``preserve``), by study condition name.

    Parameters
    ----------
    controls : str
        ``lesion`` or ``preserve``.

    Returns
    -------
    dict of str to MaskKind
        The controls by condition name, in table order.
    """
    return {k.condition_name(): k for k in sorted(MASKS.values(), key=lambda k: k.order) if k.controls == controls}


def need_networks(mode: str, netset: Any) -> Any:
    if netset is None:
        raise ValueError(
            f"mask mode {mode!r} needs a NetworkSet: pass netset=... or networks_file=<a file from analyze.py>"
        )
    return netset


def _need_scale(mode: str, r: MaskRequest) -> np.ndarray:
    if r.scale is None:
        raise ValueError(f"mask mode {mode!r} needs the neurons' activation scale [n_layers, width]: pass scale=... "
                         "(fnet.intervene.controls.neuron_scale of the recording the networks were found on) or "
                         "mask.scale_file=<a scale file>")
    scale = np.asarray(r.scale, dtype=np.float64)
    shape = (r.netset.n_layers, r.netset.width)
    if scale.shape != shape:
        raise ValueError(f"mask mode {mode!r}: the scale has shape {list(scale.shape)} but the networks are "
                         f"{list(shape)} (layers x width): use the scale of the model and signal they were found on")
    return scale


def draw_seed(r: MaskRequest, kind: str, reference: MaskSpec) -> int:
    """The seed of a random draw (module docstring). Without a stream: ``seed``, except the magnitude-matched
    draws, which the v1 study seeded ``1000 * k + seed`` for network ``k`` and ``1000 * K + seed`` for a union."""
    indices = reference.meta.get("networks") or []
    if r.stream is None:
        if kind not in ("magnitude", "magnitude_preserve", "massive_included"):
            return int(r.seed)
        union = len(indices) != 1 or str(r.match if r.match is not None else r.networks).strip() == "all"
        k = r.netset.n_networks if union else indices[0]
        return 1000 * int(k) + int(r.seed)
    masks = r.netset.masks.to(torch.uint8).contiguous().numpy()  # [K, layer, unit]
    identity = hashlib.sha256(masks.tobytes() + str(masks.shape).encode())
    identity.update(str(r.netset.provenance.get("model_fingerprint") or r.netset.provenance.get("model")).encode())
    identity.update(f"|{r.stream}|{sorted(indices)}|{kind}|{int(r.seed)}".encode())
    return int.from_bytes(identity.digest()[:8], "little") >> 1  # a non-negative int64


# --------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------
def _lesion(r: MaskRequest) -> MaskSpec:
    return lesion_mask(need_networks("lesion", r.netset), 0 if r.networks is None else r.networks)


def _preserve(r: MaskRequest) -> MaskSpec:
    return preserve_mask(need_networks("preserve", r.netset), "all" if r.networks is None else r.networks)


def _random(r: MaskRequest) -> MaskSpec:
    reference = r.union(0, "random")
    return random_matched_mask(reference, seed=draw_seed(r, "random", reference),
                               exclude=True if r.exclude_reference else None)


def _random_preserve(r: MaskRequest) -> MaskSpec:
    """Preservation control: keep a random set with the union's per-layer counts, zero the rest."""
    reference = r.union("all", "random_preserve")
    keep = random_matched_mask(reference, seed=draw_seed(r, "random_preserve", reference),
                               exclude=True if r.exclude_reference else None)
    return MaskSpec(mask=~keep.mask, signal=reference.signal, mode="zero", kind="random_preserve",
                    description=f"preserve {keep.description} (zero the other neurons)",
                    meta={**keep.meta, "networks": reference.meta["networks"]})


def _random_fraction(r: MaskRequest) -> MaskSpec:
    n_layers, width = (r.netset.n_layers, r.netset.width) if r.netset is not None else (r.n_layers, r.width)
    if n_layers is None or width is None:
        raise ValueError("mask mode 'random_fraction' needs n_layers and width (or a netset)")
    return random_fraction_mask(n_layers, width, 0.15 if r.fraction is None else r.fraction, r.seed, signal=r.signal)


def _amplify(r: MaskRequest) -> MaskSpec:
    return amplify_mask(need_networks("amplify", r.netset), 0 if r.networks is None else r.networks, r.value,
                        "amplify")


def _scale(r: MaskRequest) -> MaskSpec:
    return amplify_mask(need_networks("scale", r.netset), 0 if r.networks is None else r.networks, r.value, "scale")


def _magnitude_draw(r: MaskRequest, kind: str, default: Any) -> tuple[MaskSpec, torch.Tensor, dict]:
    """A magnitude-matched draw for the selected networks: disjoint from them where a layer allows (a layer the
    reference fills, as a preservation's union can, is drawn among all its neurons and listed)."""
    reference = r.union(default, kind)
    scale = _need_scale(kind, r)
    seed = draw_seed(r, kind, reference)
    drawn, fallbacks = magnitude_matched_draw(reference.mask.numpy(), scale, n_bins=_bins(r.bins), seed=seed,
                                              disjoint="prefer")
    overlap = np.flatnonzero((drawn & reference.mask.numpy()).any(axis=1)).tolist()
    meta = {"seed": int(r.seed), "draw_seed": seed, "stream": r.stream, "networks": reference.meta["networks"],
            "bins": _bins(r.bins), "fallbacks": int(fallbacks), "overlap_layers": overlap}
    return reference, torch.from_numpy(drawn), meta


def _bins(bins: Any) -> int | list[float]:
    """An int of equal-count bins, or a list of quantile edges (``conf/mask``'s ``bins``)."""
    return int(bins) if np.ndim(bins) == 0 else [float(b) for b in bins]


def _magnitude(r: MaskRequest) -> MaskSpec:
    reference, drawn, meta = _magnitude_draw(r, "magnitude", 0)
    return MaskSpec(mask=drawn, signal=reference.signal, mode="zero", kind="magnitude", meta=meta,
                    description=f"magnitude-matched control of {reference.description} "
                                f"({int(drawn.sum())} neurons, seed {r.seed})")


def _magnitude_preserve(r: MaskRequest) -> MaskSpec:
    reference, drawn, meta = _magnitude_draw(r, "magnitude_preserve", "all")
    return MaskSpec(mask=~drawn, signal=reference.signal, mode="zero", kind="magnitude_preserve", meta=meta,
                    description=f"keep a magnitude-matched draw like {reference.description} (seed {r.seed}), "
                                "zero the other neurons")


def _massive(r: MaskRequest, kind: str) -> list[int]:
    masks = need_networks(kind, r.netset).masks.numpy()  # [K, layer, unit]
    return massive_units(masks, _need_scale(kind, r), top_k=int(r.top_k), n_units=int(r.n_units))


def _spared(r: MaskRequest) -> MaskSpec:
    reference = lesion_mask(need_networks("spared", r.netset), 0 if r.networks is None else r.networks)
    units = _massive(r, "spared")
    mask = torch.from_numpy(spare(reference.mask.numpy(), units))
    return MaskSpec(mask=mask, signal=reference.signal, mode="zero", kind="spared",
                    description=f"{reference.description} with the massive units {units} spared",
                    meta={"networks": reference.meta["networks"], "units": units})


def _unit(r: MaskRequest) -> MaskSpec:
    units = _massive(r, "unit")
    rank = int(r.unit)
    masks = unit_masks(r.netset.masks.numpy(), units)  # [n_units, layer, unit]
    mask = torch.from_numpy(masks[rank]) if rank < len(units) else torch.zeros(r.netset.n_layers, r.netset.width,
                                                                              dtype=torch.bool)
    unit = units[rank] if rank < len(units) else None
    return MaskSpec(mask=mask, signal=r.signal, mode="zero", kind="unit",
                    description=f"lesion massive unit #{rank} ({unit}) in every layer where a network holds it",
                    meta={"unit_rank": rank, "unit": unit, "units": units})


def _massive_included(r: MaskRequest) -> MaskSpec:
    """The networks' own massive units, plus random units matched in count and magnitude for the rest: does a
    lesion hurt more than its massive units and a magnitude-matched remainder do?"""
    reference = r.union(0, "massive_included")
    units = _massive(r, "massive_included")
    own = reference.mask.clone()
    own[:, [u for u in range(own.shape[1]) if u not in units]] = False  # [layer, unit]: the massive units kept
    remainder = reference.mask & ~own
    seed = draw_seed(r, "massive_included", reference)
    drawn, fallbacks = magnitude_matched_draw(remainder.numpy(), _need_scale("massive_included", r),
                                              n_bins=_bins(r.bins), seed=seed, disjoint="prefer", exclude=own.numpy())
    mask = own | torch.from_numpy(drawn)
    return MaskSpec(mask=mask, signal=reference.signal, mode="zero", kind="massive_included",
                    description=f"massive units {units} of {reference.description} plus a magnitude-matched draw "
                                f"for its other {int(remainder.sum())} neurons (seed {r.seed})",
                    meta={"networks": reference.meta["networks"], "units": units, "seed": int(r.seed),
                          "draw_seed": seed, "stream": r.stream, "n_massive": int(own.sum()),
                          "fallbacks": int(fallbacks)})


_K = "{k}"
for _kind in (
    MaskKind("none", lambda r: None, "unmasked", "none", 0, needs_networks=False, condition="unmasked",
             per_network=False),
    MaskKind("lesion", _lesion, "lesion", "lesion network {networks}" + _K, 10),
    MaskKind("random", _random, "count-matched control", "random matched to network {networks}{disjoint}" + _K, 20,
             seeded=True, controls="lesion", condition="count"),
    MaskKind("magnitude", _magnitude, "magnitude-matched control", "magnitude-matched to network {networks}" + _K,
             21, seeded=True, needs_scale=True, controls="lesion"),
    MaskKind("spared", _spared, "massive units spared", "lesion network {networks} sparing massive units" + _K, 25,
             needs_scale=True),
    MaskKind("unit", _unit, "single massive unit", "lesion massive unit #{unit}" + _K, 26, needs_scale=True,
             per_network=False),
    MaskKind("massive_included", _massive_included, "massive-included control",
             "massive units of network {networks} + magnitude-matched rest" + _K, 22, seeded=True, needs_scale=True,
             controls="lesion"),
    MaskKind("random_fraction", _random_fraction, "random fraction", "random {fraction:.0%} per layer", 30,
             needs_networks=False, seeded=True, per_network=False),
    MaskKind("preserve", _preserve, "preservation", "preserve K={K}{subset}", 40),
    MaskKind("random_preserve", _random_preserve, "count-matched preservation control",
             "random preserve matched to K={K}", 50, seeded=True, controls="preserve", condition="preserve_count"),
    MaskKind("magnitude_preserve", _magnitude_preserve, "magnitude-matched preservation control",
             "magnitude-matched preserve K={K}", 51, seeded=True, needs_scale=True, controls="preserve",
             condition="preserve_magnitude"),
    MaskKind("amplify", _amplify, "amplification", "amplify network {networks} ({value})" + _K, 60),
    MaskKind("scale", _scale, "scaling", "scale network {networks} ({value})" + _K, 70),
):
    register(_kind)

#: the mask modes, as ``conf/mask`` names them (the keys of :data:`MASKS`)
MASK_MODES = MASKS


def build_mask(
    mode: str,
    *,
    netset: Any = None,
    networks_file: str | None = None,
    signal: str = "mlp_out",
    **settings: Any,
) -> MaskSpec | None:
    """Build the mask of one experiment from config values (``conf/mask/*.yaml``).

    Parameters
    ----------
    mode : str
        A :data:`MASKS` name: ``none``, ``lesion``, ``preserve``, ``random`` (count-matched control),
        ``random_preserve``, ``magnitude`` / ``magnitude_preserve`` (magnitude-matched controls, need ``scale``),
        ``spared`` (a lesion with the massive units spared), ``unit`` (one massive unit), ``random_fraction``,
        ``amplify``, ``scale``.
    netset : NetworkSet, optional
        The networks; loaded from ``networks_file`` when not given. Its ``provenance["signal"]`` must equal
        ``signal``.
    networks_file : str, optional
        A NetworkSet file (``analyze.py``'s ``networks/*.safetensors``).
    signal : str
        ``mlp_out`` or ``mlp_act``.
    **settings
        The :class:`MaskRequest` fields: ``networks``, ``match``, ``seed``, ``fraction``, ``value``,
        ``exclude_reference``, ``n_layers``/``width`` (``random_fraction`` without networks), ``scale``, ``bins``,
        ``top_k``, ``n_units``, ``unit``, ``stream``.

    Returns
    -------
    MaskSpec or None
        ``None`` for ``none``.

    Examples
    --------
    >>> import torch
    >>> from fnet.networks import NetworkSet
    >>> nets = NetworkSet.from_masks(torch.eye(4, dtype=torch.bool).reshape(4, 2, 2))
    >>> build_mask("lesion", netset=nets, networks=[0, 3]).mask.int().tolist()
    [[1, 0], [0, 1]]
    >>> build_mask("ablate", netset=nets)
    Traceback (most recent call last):
    ...
    ValueError: unknown mask mode 'ablate'; valid modes: ['amplify', 'lesion', 'magnitude', ...]
    """
    mode = "none" if mode is None else mode
    if mode not in MASKS:
        raise ValueError(f"unknown mask mode {mode!r}; valid modes: {sorted(MASKS)}")
    unknown = sorted(set(settings) - set(MaskRequest.__dataclass_fields__))
    if unknown:
        raise TypeError(f"build_mask: unknown settings {unknown}; valid: {sorted(MaskRequest.__dataclass_fields__)}")
    signal = check_signal(signal)
    if netset is None and networks_file:
        netset = NetworkSet.load(networks_file)
    if netset is not None:
        netset_signal = getattr(netset, "provenance", {}).get("signal")
        if netset_signal is not None and netset_signal != signal:
            raise ValueError(
                f"the NetworkSet was found on signal {netset_signal!r} but the mask is requested for signal "
                f"{signal!r}; use the same signal for analysis and masking (or a NetworkSet for {signal!r})"
            )
    request = MaskRequest(netset=netset, signal=signal, **settings)
    request.seed, request.value = int(request.seed), float(request.value)
    request.exclude_reference = bool(request.exclude_reference)
    if request.ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {request.ablation!r}; valid: {list(ABLATIONS)}")
    spec = MASKS[mode].build(request)
    if spec is None:
        return None
    spec.signal = signal  # a netset without a recorded signal takes the requested one
    spec.kind = mode
    if networks_file:
        spec.meta["networks_file"] = str(networks_file)
    if request.as_published:
        _as_published(spec)
    if request.ablation == "mean":
        _mean_ablation(spec, request.means, mode)
    return spec


def _as_published(spec: MaskSpec) -> None:
    """Every layer masked with the last layer's row: what the published hook loop did up to its commit 10d96da
    (a late-binding closure), kept only to compare with the paper's Table 8 like with like."""
    spec.mask = spec.mask[-1:].expand_as(spec.mask).clone()
    spec.stats = {}
    spec.__post_init__()
    spec.description += " [as published: every layer masked with the LAST layer's row, the 10d96da bug]"
    spec.meta["as_published"] = True


def _mean_ablation(spec: MaskSpec, means: Any, mode: str) -> None:
    """Set the masked neurons to their mean activation instead of zero (Sun et al. 2024: zeroing a massive channel
    removes its constant offset; setting it to its mean does not)."""
    if spec.mode != "zero":
        raise ValueError(f"ablation=mean replaces zeroing; mask mode {mode!r} does not zero its neurons")
    if means is None:
        raise ValueError("ablation=mean needs the neurons' mean activations [n_layers, width]: pass means=... "
                         "(fnet.intervene.controls.neuron_moments) or mask.scale_file=<a scale file with a mean>")
    means = np.asarray(means, dtype=np.float32)
    if means.shape != tuple(spec.mask.shape):
        raise ValueError(f"means have shape {list(means.shape)}, expected the mask's {list(spec.mask.shape)}")
    spec.mode, spec.values = "replace", torch.from_numpy(means)
    spec.__post_init__()
    spec.description += " (set to their mean activation)"
    spec.meta["ablation"] = "mean"

