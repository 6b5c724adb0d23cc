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
command line, one ``conf/mask/<name>.yaml`` that includes ``_base``. :class:`MaskRequest`, :class:`MaskKind`,
:data:`MASKS` and what the builders share live in :mod:`fnet.intervene.kinds` and are re-exported here.

Random draws. ``seed`` alone selects the draw when ``stream`` is None (the v1 study's streams: every network, K and
task drew prefixes of the same orderings). With a ``stream`` string, the draw's seed is a hash of the stream, the
networks' identity (their masks and model), the selected networks, the kind and the seed: two networks' seed-0
controls differ, and so do two tasks' when the stream names the task.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fnet.intervene.apply import MaskSpec
from fnet.intervene.controls import magnitude_matched_draw, massive_units, spare, unit_masks
from fnet.intervene.kinds import (
    ABLATIONS,
    MASKS,
    MaskKind,
    MaskRequest,
    control_kinds,
    draw_seed,
    need_networks,
    need_scale,
    register,
)
from fnet.intervene.masks import amplify_mask, lesion_mask, preserve_mask, random_fraction_mask, random_matched_mask
from fnet.models import check_signal
from fnet.networks import NetworkSet

__all__ = [
    "MaskKind",
    "MaskRequest",
    "MASKS",
    "MASK_MODES",
    "ABLATIONS",
    "register",
    "build_mask",
    "draw_seed",
    "control_kinds",
]


# --------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------
def _lesion(r: MaskRequest) -> MaskSpec:
    return lesion_mask(need_networks("lesion", r.netset), 0 if r.networks is None else r.networks)


def _preserve(r: MaskRequest) -> MaskSpec:
    return preserve_mask(need_networks("preserve", r.netset), "all" if r.networks is None else r.networks)


def _random(r: MaskRequest) -> MaskSpec:
    reference = r.union(0, "random")
    return random_matched_mask(
        reference, seed=draw_seed(r, "random", reference), exclude=True if r.exclude_reference else None
    )


def _random_preserve(r: MaskRequest) -> MaskSpec:
    """Preservation control: keep a random set with the union's per-layer counts, zero the rest."""
    reference = r.union("all", "random_preserve")
    keep = random_matched_mask(
        reference, seed=draw_seed(r, "random_preserve", reference), exclude=True if r.exclude_reference else None
    )
    return MaskSpec(
        mask=~keep.mask,
        signal=reference.signal,
        mode="zero",
        kind="random_preserve",
        description=f"preserve {keep.description} (zero the other neurons)",
        meta={**keep.meta, "networks": reference.meta["networks"]},
    )


def _random_fraction(r: MaskRequest) -> MaskSpec:
    n_layers, width = (r.netset.n_layers, r.netset.width) if r.netset is not None else (r.n_layers, r.width)
    if n_layers is None or width is None:
        raise ValueError("mask mode 'random_fraction' needs n_layers and width (or a netset)")
    return random_fraction_mask(n_layers, width, 0.15 if r.fraction is None else r.fraction, r.seed, signal=r.signal)


def _amplify(r: MaskRequest) -> MaskSpec:
    return amplify_mask(need_networks("amplify", r.netset), 0 if r.networks is None else r.networks, r.value, "amplify")


def _scale(r: MaskRequest) -> MaskSpec:
    return amplify_mask(need_networks("scale", r.netset), 0 if r.networks is None else r.networks, r.value, "scale")


def _magnitude_draw(r: MaskRequest, kind: str, default: Any) -> tuple[MaskSpec, torch.Tensor, dict]:
    """A magnitude-matched draw for the selected networks: disjoint from them where a layer allows (a layer the
    reference fills, as a preservation's union can, is drawn among all its neurons and listed)."""
    reference = r.union(default, kind)
    scale = need_scale(kind, r)
    seed = draw_seed(r, kind, reference)
    drawn, fallbacks = magnitude_matched_draw(
        reference.mask.numpy(), scale, n_bins=_bins(r.bins), seed=seed, disjoint="prefer"
    )
    overlap = np.flatnonzero((drawn & reference.mask.numpy()).any(axis=1)).tolist()
    meta = {
        "seed": int(r.seed),
        "draw_seed": seed,
        "stream": r.stream,
        "networks": reference.meta["networks"],
        "bins": _bins(r.bins),
        "fallbacks": int(fallbacks),
        "overlap_layers": overlap,
    }
    return reference, torch.from_numpy(drawn), meta


def _bins(bins: Any) -> int | list[float]:
    """An int of equal-count bins, or a list of quantile edges (``conf/mask``'s ``bins``)."""
    return int(bins) if np.ndim(bins) == 0 else [float(b) for b in bins]


def _magnitude(r: MaskRequest) -> MaskSpec:
    reference, drawn, meta = _magnitude_draw(r, "magnitude", 0)
    return MaskSpec(
        mask=drawn,
        signal=reference.signal,
        mode="zero",
        kind="magnitude",
        meta=meta,
        description=f"magnitude-matched control of {reference.description} ({int(drawn.sum())} neurons, seed {r.seed})",
    )


def _magnitude_preserve(r: MaskRequest) -> MaskSpec:
    reference, drawn, meta = _magnitude_draw(r, "magnitude_preserve", "all")
    return MaskSpec(
        mask=~drawn,
        signal=reference.signal,
        mode="zero",
        kind="magnitude_preserve",
        meta=meta,
        description=f"keep a magnitude-matched draw like {reference.description} (seed {r.seed}), "
        "zero the other neurons",
    )


def _massive(r: MaskRequest, kind: str) -> list[int]:
    masks = need_networks(kind, r.netset).masks.numpy()  # [K, layer, unit]
    return massive_units(masks, need_scale(kind, r), top_k=int(r.top_k), n_units=int(r.n_units))


def _spared(r: MaskRequest) -> MaskSpec:
    reference = lesion_mask(need_networks("spared", r.netset), 0 if r.networks is None else r.networks)
    units = _massive(r, "spared")
    mask = torch.from_numpy(spare(reference.mask.numpy(), units))
    return MaskSpec(
        mask=mask,
        signal=reference.signal,
        mode="zero",
        kind="spared",
        description=f"{reference.description} with the massive units {units} spared",
        meta={"networks": reference.meta["networks"], "units": units},
    )


def _unit(r: MaskRequest) -> MaskSpec:
    units = _massive(r, "unit")
    rank = int(r.unit)
    masks = unit_masks(r.netset.masks.numpy(), units)  # [n_units, layer, unit]
    mask = (
        torch.from_numpy(masks[rank])
        if rank < len(units)
        else torch.zeros(r.netset.n_layers, r.netset.width, dtype=torch.bool)
    )
    unit = units[rank] if rank < len(units) else None
    return MaskSpec(
        mask=mask,
        signal=r.signal,
        mode="zero",
        kind="unit",
        description=f"lesion massive unit #{rank} ({unit}) in every layer where a network holds it",
        meta={"unit_rank": rank, "unit": unit, "units": units},
    )


def _massive_included(r: MaskRequest) -> MaskSpec:
    """The networks' own massive units, plus random units matched in count and magnitude for the rest: does a
    lesion hurt more than its massive units and a magnitude-matched remainder do?"""
    reference = r.union(0, "massive_included")
    units = _massive(r, "massive_included")
    own = reference.mask.clone()
    own[:, [u for u in range(own.shape[1]) if u not in units]] = False  # [layer, unit]: the massive units kept
    remainder = reference.mask & ~own
    seed = draw_seed(r, "massive_included", reference)
    drawn, fallbacks = magnitude_matched_draw(
        remainder.numpy(),
        need_scale("massive_included", r),
        n_bins=_bins(r.bins),
        seed=seed,
        disjoint="prefer",
        exclude=own.numpy(),
    )
    mask = own | torch.from_numpy(drawn)
    return MaskSpec(
        mask=mask,
        signal=reference.signal,
        mode="zero",
        kind="massive_included",
        description=f"massive units {units} of {reference.description} plus a magnitude-matched draw "
        f"for its other {int(remainder.sum())} neurons (seed {r.seed})",
        meta={
            "networks": reference.meta["networks"],
            "units": units,
            "seed": int(r.seed),
            "draw_seed": seed,
            "stream": r.stream,
            "n_massive": int(own.sum()),
            "fallbacks": int(fallbacks),
        },
    )


_K = "{k}"
for _kind in (
    MaskKind(
        "none", lambda r: None, "unmasked", "none", 0, needs_networks=False, condition="unmasked", per_network=False
    ),
    MaskKind("lesion", _lesion, "lesion", "lesion network {networks}" + _K, 10),
    MaskKind(
        "random",
        _random,
        "count-matched control",
        "random matched to network {networks}{disjoint}" + _K,
        20,
        seeded=True,
        controls="lesion",
        condition="count",
    ),
    MaskKind(
        "magnitude",
        _magnitude,
        "magnitude-matched control",
        "magnitude-matched to network {networks}" + _K,
        21,
        seeded=True,
        needs_scale=True,
        controls="lesion",
    ),
    MaskKind(
        "spared",
        _spared,
        "massive units spared",
        "lesion network {networks} sparing massive units" + _K,
        25,
        needs_scale=True,
    ),
    MaskKind(
        "unit",
        _unit,
        "single massive unit",
        "lesion massive unit #{unit}" + _K,
        26,
        needs_scale=True,
        per_network=False,
    ),
    MaskKind(
        "massive_included",
        _massive_included,
        "massive-included control",
        "massive units of network {networks} + magnitude-matched rest" + _K,
        22,
        seeded=True,
        needs_scale=True,
        controls="lesion",
    ),
    MaskKind(
        "random_fraction",
        _random_fraction,
        "random fraction",
        "random {fraction:.0%} per layer",
        30,
        needs_networks=False,
        seeded=True,
        per_network=False,
    ),
    MaskKind("preserve", _preserve, "preservation", "preserve K={K}{subset}", 40),
    MaskKind(
        "random_preserve",
        _random_preserve,
        "count-matched preservation control",
        "random preserve matched to K={K}",
        50,
        seeded=True,
        controls="preserve",
        condition="preserve_count",
    ),
    MaskKind(
        "magnitude_preserve",
        _magnitude_preserve,
        "magnitude-matched preservation control",
        "magnitude-matched preserve K={K}",
        51,
        seeded=True,
        needs_scale=True,
        controls="preserve",
        condition="preserve_magnitude",
    ),
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
        raise ValueError(
            "ablation=mean needs the neurons' mean activations [n_layers, width]: pass means=... "
            "(fnet.intervene.controls.neuron_moments) or mask.scale_file=<a scale file with a mean>"
        )
    means = np.asarray(means, dtype=np.float32)
    if means.shape != tuple(spec.mask.shape):
        raise ValueError(f"means have shape {list(means.shape)}, expected the mask's {list(spec.mask.shape)}")
    spec.mode, spec.values = "replace", torch.from_numpy(means)
    spec.__post_init__()
    spec.description += " (set to their mean activation)"
    spec.meta["ablation"] = "mean"
