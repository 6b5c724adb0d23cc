"""Build neuron masks from networks: lesion, preservation, amplification, and matched random controls.

The builders (:func:`lesion_mask`, :func:`preserve_mask`, :func:`amplify_mask`, :func:`random_matched_mask`,
:func:`random_fraction_mask`; :func:`fnet.intervene.registry.build_mask` takes the keys of ``conf/mask/*.yaml``) are
pure, seeded functions that return a :class:`~fnet.intervene.apply.MaskSpec`: the mask ``[layer, unit]`` plus how to
apply it, a description and its counts. Random controls match the count of each layer (or the total) of the
networks they control for; no library provides count-matched random controls.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch

from fnet.intervene.apply import MaskSpec, check_bool_mask
from fnet.models import check_signal

__all__ = [
    "parse_networks",
    "lesion_mask",
    "preserve_mask",
    "amplify_mask",
    "random_matched_mask",
    "random_fraction_mask",
]


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

    Parameters
    ----------
    networks : int, Sequence of int, str, torch.Tensor or None
        The spec.
    n_networks : int
        K, the number of networks.

    Returns
    -------
    list of int
        The indices.
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
    """Zero the neurons of the selected networks (their union). ``networks``: see :func:`parse_networks`.

    Parameters
    ----------
    netset : NetworkSet
        The networks; ``provenance["signal"]`` gives the mask's signal (default ``mlp_out``).
    networks : int, Sequence of int or str
        The networks to lesion (:func:`parse_networks`; default 0).

    Returns
    -------
    MaskSpec
        A ``mode="zero"`` mask.
    """
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
    ``mask = ~union``.

    Parameters
    ----------
    netset : NetworkSet
        The networks; ``provenance["signal"]`` gives the mask's signal (default ``mlp_out``).
    networks : int, Sequence of int or str
        The networks to keep (:func:`parse_networks`; default ``"all"``).

    Returns
    -------
    MaskSpec
        A ``mode="zero"`` mask.
    """
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
    neurons.

    Parameters
    ----------
    netset : NetworkSet
        The networks; ``provenance["signal"]`` gives the mask's signal (default ``mlp_out``).
    networks : int, Sequence of int or str
        The networks to act on (:func:`parse_networks`; default 0).
    value : float
        Added or multiplied value (default 5.0).
    mode : str
        ``"amplify"`` (default) or ``"scale"``.

    Returns
    -------
    MaskSpec
        The mask.
    """
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

    Parameters
    ----------
    reference_mask : torch.Tensor [layer, unit] or MaskSpec
        The reference whose per-layer counts are matched.
    seed : int
        Seed of the draw (default 0).
    exclude : bool or torch.Tensor [layer, unit], optional
        Neurons never drawn (see above).

    Returns
    -------
    MaskSpec
        The control (``kind="random"``).
    """
    template = reference_mask if isinstance(reference_mask, MaskSpec) else None
    reference = check_bool_mask(template.mask if template is not None else reference_mask).cpu()
    n_layers, width = reference.shape
    if exclude is None or exclude is False:
        banned = torch.zeros_like(reference)
    elif exclude is True:
        banned = reference
    else:
        banned = check_bool_mask(exclude).cpu()
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
    uniformly at random (seeded), so the total is ``n_layers * round(fraction * width)``.

    Parameters
    ----------
    n_layers : int
        Layers of the mask.
    width : int
        Units per layer.
    fraction : float
        Share of every layer's units, in [0, 1] (default 0.15).
    seed : int
        Seed of the draw (default 0).
    signal : str
        ``mlp_out`` (default) or ``mlp_act``.

    Returns
    -------
    MaskSpec
        A ``mode="zero"`` mask (``kind="random_fraction"``).
    """
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
