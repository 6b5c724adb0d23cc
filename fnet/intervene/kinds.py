"""The mask registry's parts: :class:`MaskRequest` (what a builder reads), :class:`MaskKind` (one mask mode),
:data:`MASKS` with :func:`register`, and what builders share (:func:`need_networks`, :func:`need_scale`,
:func:`draw_seed`). The built-in kinds and :func:`build_mask <fnet.intervene.registry.build_mask>` are in
:mod:`fnet.intervene.registry`, which re-exports these names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from fnet.intervene.apply import MaskSpec
from fnet.intervene.masks import lesion_mask

__all__ = [
    "ABLATIONS",
    "MaskRequest",
    "MaskKind",
    "MASKS",
    "register",
    "control_kinds",
    "need_networks",
    "need_scale",
    "draw_seed",
]


#: what a lesion (or a preservation's complement) sets its neurons to
ABLATIONS = ("zero", "mean")


@dataclass
class MaskRequest:
    """What a builder may read: the networks and every ``conf/mask`` setting (see
    :func:`fnet.intervene.registry.build_mask`).

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
    scale: Any = None  # scale  # [layer, unit]: each neuron's RMS activation (magnitude-matched kinds)
    bins: Any = 10  # quantile bins per layer of the magnitude-matched draws, or their quantile edges
    ablation: str = "zero"  # zero | mean: what a lesion sets its neurons to (mean: ``means``)
    means: Any = None  # means  # [layer, unit]: each neuron's mean activation (ablation=mean)
    as_published: bool = False  # every layer masked with the last layer's row (the published 10d96da bug)
    top_k: int = 4  # top-magnitude units per layer that are massive candidates
    n_units: int = 4  # massive units (the candidates most frequent across networks)
    unit: int = 0  # rank of the massive unit a single-unit lesion removes
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
    """``netset``, or an error saying that mask mode ``mode`` needs one.

    Parameters
    ----------
    mode : str
        The mask mode (for the message).
    netset : NetworkSet or None
        The networks of the request.

    Returns
    -------
    NetworkSet
        ``netset`` itself.
    """
    if netset is None:
        raise ValueError(
            f"mask mode {mode!r} needs a NetworkSet: pass netset=... or networks_file=<a file from analyze.py>"
        )
    return netset


def need_scale(mode: str, r: MaskRequest) -> np.ndarray:
    """The request's neuron scale as float64 ``[n_layers, width]``, checked against its networks' shape.

    Parameters
    ----------
    mode : str
        The mask mode (for the messages).
    r : MaskRequest
        The request; its ``scale`` and ``netset`` are read.

    Returns
    -------
    numpy.ndarray
        ``scale  # [layer, unit]``.
    """
    if r.scale is None:
        raise ValueError(
            f"mask mode {mode!r} needs the neurons' activation scale [n_layers, width]: pass scale=... "
            "(fnet.intervene.controls.neuron_scale of the recording the networks were found on) or "
            "mask.scale_file=<a scale file>"
        )
    scale = np.asarray(r.scale, dtype=np.float64)
    shape = (r.netset.n_layers, r.netset.width)
    if scale.shape != shape:
        raise ValueError(
            f"mask mode {mode!r}: the scale has shape {list(scale.shape)} but the networks are "
            f"{list(shape)} (layers x width): use the scale of the model and signal they were found on"
        )
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
