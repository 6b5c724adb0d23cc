"""Masking neurons of a language model: lesion, preservation, amplification, and random controls.

A mask is a bool tensor ``mask  # [layer, unit]`` over one recording signal (see :mod:`fnet.models`):

* ``mlp_out`` -- what each layer's MLP adds to the residual stream, the output of its down projection
  (``[.., d_model]``);
* ``mlp_act`` -- the MLP's inner activations, the input of each layer's down projection (``[.., d_mlp]``).

Both are changed through the one hook primitive :func:`fnet.hooks.trace_signal` (``edit=...``).

``True`` marks a neuron to act on. :func:`apply_mask` is a context manager that, while active, replaces those
positions of the signal in every forward pass (also every step of ``model.generate``: with a KV cache each
step's new positions go through the hooked MLPs, and the cached past was computed under the same mask):

* ``mode="zero"``    -- set them to 0 (lesion / preservation; the paper's masking),
* ``mode="amplify"`` -- add ``value`` to them (the paper's amplification variant),
* ``mode="scale"``   -- multiply them by ``value``.

Edits see ``[batch, seq, width]`` in every layout (the sequence-first conversion lives in :mod:`fnet.hooks`), so
nothing here depends on the architecture.

Each layer's edit is a :class:`_LayerMaskHook` object that owns **its own row** of the mask, looked up by the layer
index that :class:`fnet.hooks.SiteHook` owns. The published code (Liu et al. 2025) built its hooks in a loop with a
closure over the loop variable, so every layer was masked with the *last* layer's row; ``tests/test_masking.py``
checks per layer against a by-hand computation and keeps a copy of that loop to show the test catches it.

The mask builders (:func:`lesion_mask`, :func:`preserve_mask`, :func:`random_matched_mask`,
:func:`random_fraction_mask`, and the config-facing :func:`build_mask`) are pure, seeded functions that return a
:class:`MaskSpec`: the mask plus how to apply it, a description and its counts.

Why hand-written: hooking libraries (TransformerLens, nnsight, baukit, pyvene) intervene on named activations of
the models they wrap, but none of them takes a per-layer neuron set over fnet's discovered signals for
arbitrary HF / remote-code families (sequence-first ChatGLM included), and none provides count-matched random
controls.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fnet.hooks import trace_signal
from fnet.models import ArchSpec, check_signal, down_proj_modules, find_blocks, get_arch, model_dims

__all__ = [
    "APPLY_MODES",
    "MASK_MODES",
    "MaskSpec",
    "mask_stats",
    "apply_mask",
    "expected_mask_shape",
    "parse_networks",
    "lesion_mask",
    "preserve_mask",
    "amplify_mask",
    "random_matched_mask",
    "random_fraction_mask",
    "build_mask",
]

#: How a mask acts on its positions (``apply_mask(mode=...)``).
APPLY_MODES = ("zero", "amplify", "scale")


# --------------------------------------------------------------------------------------------------------------
# MaskSpec and statistics
# --------------------------------------------------------------------------------------------------------------
def mask_stats(mask: torch.Tensor) -> dict[str, Any]:
    """Counts of a mask ``[layer, unit]``: ``n_masked`` (total True), ``fraction`` (of all layer*unit neurons),
    ``per_layer`` (list of True counts per layer), ``n_layers``, ``width``."""
    mask = _check_bool_mask(mask)
    per_layer = mask.sum(dim=1, dtype=torch.int64)  # [layer]
    total = int(per_layer.sum())
    return {
        "n_masked": total,
        "fraction": total / max(mask.numel(), 1),
        "per_layer": [int(c) for c in per_layer.tolist()],
        "n_layers": int(mask.shape[0]),
        "width": int(mask.shape[1]),
    }


@dataclass
class MaskSpec:
    """A mask and how to apply it.

    Attributes:
        mask: ``[layer, unit]`` bool, True = act on that neuron.
        signal: ``mlp_out`` or ``mlp_act``.
        mode: how :func:`apply_mask` acts: ``zero`` / ``amplify`` / ``scale``.
        value: added (amplify) or multiplied (scale) value; unused for ``zero``.
        description: human-readable, e.g. ``"lesion networks [0, 2]"``.
        stats: :func:`mask_stats` of ``mask`` (filled in when not given).
        kind: the :func:`build_mask` mode that made it (``lesion``, ``preserve``, ``random``, ...).
        meta: JSON-able provenance: network indices, seed, matched reference counts, ...
    """

    mask: torch.Tensor
    signal: str = "mlp_out"
    mode: str = "zero"
    value: float = 0.0
    description: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    kind: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mask = _check_bool_mask(self.mask)
        check_signal(self.signal)
        _check_apply_mode(self.mode)
        self.value = float(self.value)
        if not self.stats:
            self.stats = mask_stats(self.mask)

    @property
    def n_masked(self) -> int:
        return int(self.stats["n_masked"])

    @property
    def fraction(self) -> float:
        return float(self.stats["fraction"])

    def log_dict(self, prefix: str = "mask/") -> dict[str, float]:
        """Scalars for a logger: ``mask/n_masked``, ``mask/fraction`` (and ``mask/value`` unless zeroing)."""
        out = {f"{prefix}n_masked": float(self.n_masked), f"{prefix}fraction": float(self.fraction)}
        if self.mode != "zero":
            out[f"{prefix}value"] = self.value
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able description (no tensor) for provenance headers and hyperparameter logging."""
        return {
            **self.meta,  # provenance first: the mask's own fields below always win
            "kind": self.kind,
            "signal": self.signal,
            "mode": self.mode,
            "value": self.value,
            "description": self.description,
            "n_masked": self.n_masked,
            "fraction": self.fraction,
            "per_layer": list(self.stats["per_layer"]),
        }


def _check_apply_mode(mode: str) -> str:
    if mode not in APPLY_MODES:
        raise ValueError(f"unknown mask apply mode {mode!r}; valid: {list(APPLY_MODES)}")
    return mode


def _check_bool_mask(mask: Any) -> torch.Tensor:
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor [n_layers, width], got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must have dtype torch.bool (True = act on that neuron), got {mask.dtype}; "
            f"convert explicitly, e.g. mask != 0"
        )
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [n_layers, width], got shape {list(mask.shape)}")
    return mask


# --------------------------------------------------------------------------------------------------------------
# apply_mask
# --------------------------------------------------------------------------------------------------------------
class _LayerMaskHook:
    """The hook of ONE layer. It owns that layer's row, so no closure can mix layers up.

    The row is converted to the signal's device (and, for amplify/scale, dtype) on the first call that sees a
    new (device, dtype) and reused afterwards: the hot path is one comparison and one elementwise op.
    """

    def __init__(self, layer: int, row: torch.Tensor, mode: str, value: float):
        self.layer = layer  # kept for debugging / repr
        self.row = row  # [unit] bool, CPU copy
        self.mode = mode
        self.value = value
        self._key: tuple[torch.device, torch.dtype] | None = None
        self._operand: torch.Tensor | None = None  # [unit] on the signal's device

    def __repr__(self) -> str:
        return f"_LayerMaskHook(layer={self.layer}, mode={self.mode!r}, n={int(self.row.sum())})"

    def prepare(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key != self._key:
            if self.mode == "zero":  # bool row for masked_fill
                operand = self.row.to(device)
            elif self.mode == "amplify":  # value where masked, 0 elsewhere: x + 0 == x exactly
                operand = torch.where(self.row, self.value, 0.0).to(device=device, dtype=dtype)
            else:  # scale: value where masked, 1 elsewhere: x * 1 == x exactly
                operand = torch.where(self.row, self.value, 1.0).to(device=device, dtype=dtype)
            self._operand, self._key = operand, key
        return self._operand  # type: ignore[return-value]

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden  # [..., unit]`` -> the same with this layer's row applied on the last axis (out of place,
        so autograd and any caller holding the original tensor are unaffected)."""
        operand = self.prepare(hidden.device, hidden.dtype)
        if self.mode == "zero":
            return hidden.masked_fill(operand, 0.0)
        if self.mode == "amplify":
            return hidden + operand
        return hidden * operand


def expected_mask_shape(model: nn.Module, signal: str = "mlp_out", spec: ArchSpec | None = None) -> tuple[int, int]:
    """``(n_layers, width)`` a mask over ``signal`` must have for ``model`` (width: d_model for ``mlp_out``,
    d_mlp for ``mlp_act``)."""
    spec = spec or get_arch(model)
    if check_signal(signal) == "mlp_act" and spec.moe:
        down_proj_modules(model, spec)  # raises: a mixture of experts has no single mlp_act
    dims = model_dims(getattr(model, "config", model), spec)
    width = dims["d_model"] if check_signal(signal) == "mlp_out" else dims["d_mlp"]
    return dims["n_layers"], width


@contextlib.contextmanager
def apply_mask(
    model: nn.Module,
    mask: torch.Tensor | MaskSpec | None,
    *,
    signal: str | None = None,
    mode: str | None = None,
    value: float | None = None,
    spec: ArchSpec | None = None,
) -> Iterator[list[_LayerMaskHook]]:
    """Act on the neurons in ``mask  # [layer, unit]`` of ``model``'s ``signal`` while the context is active.

    Args:
        model: a causal LM from the registry (or a wrapper :func:`fnet.models.find_blocks` understands).
        mask: bool ``[n_layers, width]`` (True = act on that neuron), a :class:`MaskSpec` (its signal / mode /
            value are the defaults), or ``None`` (no-op context, for the ``none`` mode).
        signal: ``mlp_out`` (default; forward hook on each MLP) or ``mlp_act`` (forward pre-hook on each down
            projection).
        mode: ``zero`` (default), ``amplify`` (add ``value``) or ``scale`` (multiply by ``value``).
        value: for ``amplify`` / ``scale``.
        spec: the model's :class:`fnet.models.ArchSpec` (looked up when omitted).

    Yields:
        The per-layer hook objects (only layers whose row has a True entry get one).

    Hooks are removed on exit, also when the body raises. Nested contexts compose: hooks run in the order the
    contexts were entered (zero then zero = union of the masks). Raises ``ValueError`` for a mask whose shape is
    not ``[n_layers, width]`` of this model and signal, ``TypeError`` for a non-bool mask.
    """
    if mask is None:
        yield []
        return
    if isinstance(mask, MaskSpec):
        signal = signal or mask.signal
        mode = mode or mask.mode
        value = mask.value if value is None else value
        mask = mask.mask
    signal = check_signal(signal or "mlp_out")
    mode = _check_apply_mode(mode or "zero")
    value = 0.0 if value is None else float(value)

    spec = spec or get_arch(model)
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor [n_layers, width], got {type(mask).__name__}")
    n_layers, width = expected_mask_shape(model, signal, spec)
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must have dtype torch.bool, got {mask.dtype} (expected bool [n_layers, width] = "
            f"[{n_layers}, {width}] for signal {signal!r}); convert explicitly, e.g. mask != 0"
        )
    if tuple(mask.shape) != (n_layers, width):
        raise ValueError(
            f"mask has shape {list(mask.shape)}, expected [n_layers, width] = [{n_layers}, {width}] for signal "
            f"{signal!r} of this {spec.family} model"
        )
    n_blocks = len(find_blocks(model, spec))
    if n_blocks != n_layers:  # config and module tree disagree: refuse rather than mask the wrong layers
        raise ValueError(f"model has {n_blocks} blocks but its config says n_layers={n_layers}")

    mask = mask.detach().to("cpu")
    # one object per layer owns its row; layers whose row is all False get no hook (and no per-call cost)
    by_layer = {layer: _LayerMaskHook(layer, mask[layer].clone(), mode, value)
                for layer in range(n_layers) if bool(mask[layer].any())}
    if not by_layer:
        yield []
        return
    with trace_signal(model, signal, edit=lambda layer, hidden: by_layer[layer].transform(hidden),
                      layers=sorted(by_layer), spec=spec):
        yield list(by_layer.values())


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
        from fnet.networks import NetworkSet

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

