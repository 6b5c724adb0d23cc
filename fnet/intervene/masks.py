"""Build neuron masks from networks: lesion, preservation, amplification, and matched random controls.

The builders (:func:`lesion_mask`, :func:`preserve_mask`, :func:`amplify_mask`, :func:`random_matched_mask`,
:func:`random_fraction_mask`, and :func:`build_mask`, which takes the keys of ``conf/mask/*.yaml``) are pure,
seeded functions that return a :class:`~fnet.intervene.apply.MaskSpec`: the mask ``[layer, unit]`` plus how to
apply it, a description and its counts. Random controls match the count of each layer (or the total) of the
networks they control for; no library provides count-matched random controls.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fnet.intervene.apply import MaskSpec, _check_bool_mask
from fnet.models import check_signal
from fnet.networks import NetworkSet

__all__ = ["MASK_MODES", "parse_networks", "lesion_mask", "preserve_mask", "amplify_mask", "random_matched_mask", "random_fraction_mask", "build_mask"]


# --------------------------------------------------------------------------------------------------------------
# Network selection
# --------------------------------------------------------------------------------------------------------------
_RANGE = re.compile(r"^range\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?(?:,\s*(-?\d+)\s*)?\)$")


def parse_networks(networks: Any, n_networks: int) -> list[int]:
    """Network indices from a config-friendly spec.

    Accepts an int, a sequence of ints (also an OmegaConf ListConfig), ``"all"``, ``"none"``/``""``/``None``
    (no networks), ``"range(a,b)"`` / ``"range(b)"`` / ``"range(a,b,step)"``, or a comma list ``"0,3,5"``
    (Hydra sweeps pass strings). Duplicates are dropped, order kept. Any index outside ``0..K-1`` is a
    ``ValueError`` naming the valid range.
    """
    k = int(n_networks)
    if networks is None:
        indices: list[int] = []
    elif isinstance(networks, bool):
        raise TypeError("networks must be an index, a list of indices, 'all' or 'range(a,b)', not a bool")
    elif isinstance(networks, (int, np.integer)):
        indices = [int(networks)]
    elif isinstance(networks, str):
        text = networks.strip().strip("[]").strip()
        match = _RANGE.match(text)
        if text.lower() == "all":
            indices = list(range(k))
        elif text.lower() in ("", "none"):
            indices = []
        elif match:
            args = [int(g) for g in match.groups() if g is not None]
            indices = list(range(*args))
        else:
            try:
                indices = [int(part) for part in text.split(",") if part.strip()]
            except ValueError:
                raise ValueError(
                    f"cannot parse networks={networks!r}; use an int, a list, 'all', 'range(a,b)' or '0,3,5'"
                ) from None
    elif isinstance(networks, torch.Tensor):
        indices = [int(i) for i in networks.flatten().tolist()]
    elif isinstance(networks, Sequence) or hasattr(networks, "__iter__"):
        indices = []
        for item in networks:
            if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
                raise TypeError(f"network indices must be ints, got {item!r} in {networks!r}")
            indices.append(int(item))
    else:
        raise TypeError(f"cannot interpret networks={networks!r}")
    bad = [i for i in indices if not 0 <= i < k]
    if bad:
        valid = f"0..{k - 1}" if k else "none (the NetworkSet is empty)"
        raise ValueError(f"network index {bad} out of range: this NetworkSet has K={k} networks, valid {valid}")
    return list(dict.fromkeys(indices))


def _netset_signal(netset: Any, default: str = "mlp_out") -> str:
    return str(getattr(netset, "provenance", {}).get("signal") or default)


def _selected_union(netset: Any, networks: Any) -> tuple[torch.Tensor, list[int]]:
    indices = parse_networks(networks, netset.n_networks)
    if indices:
        union = netset.union(indices)  # [layer, unit]
    else:
        union = torch.zeros(netset.n_layers, netset.width, dtype=torch.bool)
    return union.clone(), indices


def _original_ids(netset: Any, indices: list[int]) -> list[int]:
    ids = netset.network_ids() if hasattr(netset, "network_ids") else list(range(netset.n_networks))
    return [int(ids[i]) for i in indices]


# --------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------
def lesion_mask(netset: Any, networks: Any = 0) -> MaskSpec:
    """Zero the neurons of the selected networks (their union). ``networks``: see :func:`parse_networks`."""
    union, indices = _selected_union(netset, networks)
    return MaskSpec(
        mask=union,
        signal=_netset_signal(netset),
        mode="zero",
        description=f"lesion networks {_original_ids(netset, indices)}",
        kind="lesion",
        meta={"networks": _original_ids(netset, indices)},
    )


def preserve_mask(netset: Any, networks: Any = "all") -> MaskSpec:
    """Keep only the union of the selected networks (default: all K) and zero every other neuron:
    ``mask = ~union``."""
    union, indices = _selected_union(netset, networks)
    return MaskSpec(
        mask=~union,
        signal=_netset_signal(netset),
        mode="zero",
        description=f"preserve networks {_original_ids(netset, indices)} (zero the other neurons)",
        kind="preserve",
        meta={"networks": _original_ids(netset, indices), "n_preserved": int(union.sum())},
    )


def amplify_mask(netset: Any, networks: Any = 0, value: float = 5.0, mode: str = "amplify") -> MaskSpec:
    """Add ``value`` to (``mode="amplify"``) or multiply by ``value`` (``mode="scale"``) the selected networks'
    neurons."""
    if mode not in ("amplify", "scale"):
        raise ValueError(f"amplify_mask mode must be 'amplify' or 'scale', got {mode!r}")
    union, indices = _selected_union(netset, networks)
    verb = "add" if mode == "amplify" else "multiply by"
    return MaskSpec(
        mask=union,
        signal=_netset_signal(netset),
        mode=mode,
        value=float(value),
        description=f"{mode} networks {_original_ids(netset, indices)} ({verb} {float(value):g})",
        kind=mode,
        meta={"networks": _original_ids(netset, indices)},
    )


def random_matched_mask(
    reference_mask: torch.Tensor | MaskSpec,
    seed: int = 0,
    exclude: bool | torch.Tensor | None = None,
) -> MaskSpec:
    """A random control with exactly the reference's number of neurons **in every layer**.

    In each layer ``l`` it picks ``reference[l].sum()`` units uniformly at random without replacement
    (``torch.Generator`` seeded with ``seed``; layer by layer, so the result is deterministic per seed).

    ``exclude`` (default ``None`` = no exclusion): the draw is uniform over *all* units of the layer, so the
    control overlaps the reference at chance level -- the paper's "same number of random neurons" control, an
    unbiased null. ``True`` draws only from neurons *outside* the reference (a disjoint control; a layer with
    fewer free neurons than it needs is a ``ValueError``). A bool ``[n_layers, width]`` tensor excludes those
    neurons instead. The returned spec copies the reference's signal / mode / value when given a MaskSpec.
    """
    template = reference_mask if isinstance(reference_mask, MaskSpec) else None
    reference = _check_bool_mask(template.mask if template is not None else reference_mask).cpu()
    n_layers, width = reference.shape
    if exclude is None or exclude is False:
        banned = torch.zeros_like(reference)
    elif exclude is True:
        banned = reference
    else:
        banned = _check_bool_mask(exclude).cpu()
        if banned.shape != reference.shape:
            raise ValueError(f"exclude has shape {list(banned.shape)}, expected {list(reference.shape)}")
    counts = reference.sum(dim=1)  # [layer]
    generator = torch.Generator().manual_seed(int(seed))
    mask = torch.zeros_like(reference)  # [layer, unit]
    for layer in range(n_layers):
        allowed = torch.nonzero(~banned[layer]).flatten()  # [n_allowed] unit indices
        need = int(counts[layer])
        if need > allowed.numel():
            raise ValueError(
                f"layer {layer}: the reference has {need} neurons but only {allowed.numel()} are outside the "
                f"excluded set; use exclude=None for a control drawn from all {width} units"
            )
        order = torch.randperm(allowed.numel(), generator=generator)[:need]
        mask[layer, allowed[order]] = True
    excluded = "none" if exclude is None or exclude is False else ("reference" if exclude is True else "custom")
    meta = {"seed": int(seed), "exclude": excluded}
    if template is not None:
        meta["matched_to"] = template.description
    return MaskSpec(
        mask=mask,
        signal=template.signal if template is not None else "mlp_out",
        mode=template.mode if template is not None else "zero",
        value=template.value if template is not None else 0.0,
        description=(
            f"random control matched per layer to {template.description if template else 'a reference mask'} "
            f"({int(counts.sum())} neurons, seed {int(seed)}, exclude={excluded})"
        ),
        kind="random",
        meta=meta,
    )


def random_fraction_mask(
    n_layers: int, width: int, fraction: float = 0.15, seed: int = 0, signal: str = "mlp_out"
) -> MaskSpec:
    """The paper's flat random mask: in **every layer** exactly ``round(fraction * width)`` units, chosen
    uniformly at random (seeded), so the total is ``n_layers * round(fraction * width)``."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    per_layer = int(round(float(fraction) * int(width)))
    reference = torch.zeros(int(n_layers), int(width), dtype=torch.bool)
    reference[:, :per_layer] = True  # only its per-layer counts matter
    out = random_matched_mask(reference, seed=seed)
    return MaskSpec(
        mask=out.mask,
        signal=check_signal(signal),
        mode="zero",
        description=f"random {float(fraction):.1%} of units per layer ({per_layer}/{int(width)}, seed {int(seed)})",
        kind="random_fraction",
        meta={"seed": int(seed), "target_fraction": float(fraction), "units_per_layer": per_layer},
    )


# --------------------------------------------------------------------------------------------------------------
# Config-facing dispatcher
# --------------------------------------------------------------------------------------------------------------
def _need_netset(mode: str, netset: Any) -> Any:
    if netset is None:
        raise ValueError(
            f"mask mode {mode!r} needs a NetworkSet: pass netset=... or networks_file=<a file from analyze.py>"
        )
    return netset


def _build_none(**_: Any) -> None:
    return None


def _build_lesion(*, netset, networks, **_: Any) -> MaskSpec:
    return lesion_mask(_need_netset("lesion", netset), 0 if networks is None else networks)


def _build_preserve(*, netset, networks, **_: Any) -> MaskSpec:
    return preserve_mask(_need_netset("preserve", netset), "all" if networks is None else networks)


def _build_random(*, netset, networks, match, seed, exclude_reference, **_: Any) -> MaskSpec:
    target = match if match is not None else networks
    reference = lesion_mask(_need_netset("random", netset), 0 if target is None else target)
    return random_matched_mask(reference, seed=seed, exclude=True if exclude_reference else None)


def _build_random_preserve(*, netset, networks, match, seed, exclude_reference, **_: Any) -> MaskSpec:
    """Preservation control: keep a random set with the union's per-layer counts, zero the rest."""
    target = match if match is not None else networks
    reference = lesion_mask(_need_netset("random_preserve", netset), "all" if target is None else target)
    keep = random_matched_mask(reference, seed=seed, exclude=True if exclude_reference else None)
    return MaskSpec(
        mask=~keep.mask,
        signal=reference.signal,
        mode="zero",
        description=f"preserve {keep.description} (zero the other neurons)",
        kind="random_preserve",
        meta={**keep.meta, "networks": reference.meta["networks"]},
    )


def _build_random_fraction(*, netset, fraction, seed, signal, n_layers, width, **_: Any) -> MaskSpec:
    if netset is not None:
        n_layers, width = netset.n_layers, netset.width
    if n_layers is None or width is None:
        raise ValueError("mask mode 'random_fraction' needs n_layers and width (or a netset)")
    return random_fraction_mask(n_layers, width, 0.15 if fraction is None else fraction, seed, signal=signal)


def _build_amplify(*, netset, networks, value, **_: Any) -> MaskSpec:
    return amplify_mask(_need_netset("amplify", netset), 0 if networks is None else networks, value, "amplify")


def _build_scale(*, netset, networks, value, **_: Any) -> MaskSpec:
    return amplify_mask(_need_netset("scale", netset), 0 if networks is None else networks, value, "scale")


#: ``build_mask`` modes -> builder. Add an experiment type by adding an entry.
MASK_MODES: dict[str, Callable[..., MaskSpec | None]] = {
    "none": _build_none,
    "lesion": _build_lesion,
    "preserve": _build_preserve,
    "random": _build_random,
    "random_preserve": _build_random_preserve,
    "random_fraction": _build_random_fraction,
    "amplify": _build_amplify,
    "scale": _build_scale,
}


def build_mask(
    mode: str,
    *,
    netset: Any = None,
    networks: Any = None,
    fraction: float | None = None,
    seed: int = 0,
    match: Any = None,
    signal: str = "mlp_out",
    n_layers: int | None = None,
    width: int | None = None,
    value: float = 0.0,
    exclude_reference: bool = False,
    networks_file: str | None = None,
) -> MaskSpec | None:
    """Build the mask of one experiment from config values (``conf/mask/*.yaml``).

    Modes (:data:`MASK_MODES`):
        ``none``            -> ``None`` (the unmasked model);
        ``lesion``          -> zero the union of ``networks`` (default 0);
        ``preserve``        -> zero everything but the union of ``networks`` (default ``"all"``);
        ``random``          -> random control matched per layer to the lesion of ``match`` (default: ``networks``),
                               ``seed``, optionally disjoint from it (``exclude_reference``);
        ``random_preserve`` -> preservation control: keep a random set matched per layer to the union of
                               ``match``/``networks`` (default ``"all"``), zero the rest;
        ``random_fraction`` -> zero ``round(fraction*width)`` random units in every layer (default 0.15);
        ``amplify``         -> add ``value`` to the networks' neurons; ``scale`` -> multiply them by ``value``.

    ``netset`` (a :class:`fnet.networks.NetworkSet`) is loaded from ``networks_file`` when not given. Its
    ``provenance["signal"]`` must equal ``signal``. ``n_layers``/``width`` are only needed for
    ``random_fraction`` without a netset.
    """
    if mode is None:
        mode = "none"
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; valid modes: {sorted(MASK_MODES)}")
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
    spec = MASK_MODES[mode](
        netset=netset,
        networks=networks,
        fraction=fraction,
        seed=int(seed),
        match=match,
        signal=signal,
        n_layers=n_layers,
        width=width,
        value=float(value),
        exclude_reference=bool(exclude_reference),
    )
    if spec is not None:
        spec.signal = signal  # a netset without a recorded signal takes the requested one
        spec.kind = mode
        if networks_file:
            spec.meta["networks_file"] = str(networks_file)
    return spec
