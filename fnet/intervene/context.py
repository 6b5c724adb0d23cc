"""The experiments of a notebook: lesion or preserve networks while a block runs, and their matched controls.

:func:`lesion` and :func:`preserve` are context managers over :func:`fnet.intervene.apply_mask`. Given a
:class:`~fnet.models.LoadedModel`, they first check that the networks were found on this very model
(:func:`fnet.networks.check_compatible`: weights fingerprint, layers, width, signal), so another model's networks
are never applied by accident. :func:`random_control` builds the matched control of a lesion or preservation:
the same number of neurons in every layer, drawn at random (``match="count"``), or drawn from the same
per-layer quantile bins of the neurons' activation scale (``match="magnitude"``), so that a control also hits
the few huge channels a network may contain.

>>> import torch
>>> from fnet.models import load_model
>>> from fnet.networks import NetworkSet
>>> lm = load_model("tiny:gpt2")
>>> masks = torch.zeros(2, lm.n_layers, lm.d_model, dtype=torch.bool)
>>> masks[0, 1, :3] = True                          # network 0: units 0-2 of layer 1
>>> nets = NetworkSet.from_masks(masks, provenance={"model": lm.name, "model_fingerprint": lm.fingerprint,
...                                                 "signal": "mlp_out"})
>>> with lesion(lm, nets, 0) as spec:
...     spec.n_masked
3
>>> control = random_control(nets, 0, seed=1)
>>> control.mask.sum(dim=1).tolist() == masks[0].sum(dim=1).tolist()   # same count in every layer
True
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch

from fnet.intervene.apply import MaskSpec, apply_mask
from fnet.intervene.controls import magnitude_matched_draw
from fnet.intervene.masks import lesion_mask, preserve_mask, random_matched_mask
from fnet.networks import check_compatible

__all__ = ["lesion", "preserve", "random_control", "CONTROL_MATCHES"]

#: how a random control is matched to its reference
CONTROL_MATCHES = ("count", "magnitude")


def _model_and_check(model: Any, networks: Any, spec: MaskSpec, allow_foreign: bool) -> tuple[torch.nn.Module, Any]:
    """The ``nn.Module`` to hook; for a LoadedModel, after the provenance check (a mismatch raises)."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(model, "fingerprint"):
        return model, None  # a bare nn.Module: apply_mask still checks the mask's shape against it
    foreign = check_compatible(
        networks,
        model=model.name,
        fingerprint=model.fingerprint,
        n_layers=model.n_layers,
        width=model.width(spec.signal),
        signal=spec.signal,
        allow_foreign=allow_foreign,
    )
    return inner, foreign


@contextlib.contextmanager
def _applied(model: Any, networks: Any, spec: MaskSpec, allow_foreign: bool) -> Iterator[MaskSpec]:
    module, foreign = _model_and_check(model, networks, spec, allow_foreign)
    if foreign is not None:
        spec.meta["foreign_networks"] = foreign  # allow_foreign=True: the spec says so
    with apply_mask(module, spec):
        yield spec


@contextlib.contextmanager
def lesion(model: Any, networks: Any, which: Any = 0, *, allow_foreign: bool = False) -> Iterator[MaskSpec]:
    """Zero the neurons of networks ``which`` of ``networks`` in ``model`` while the block runs.

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        The model; a :class:`~fnet.models.LoadedModel` is checked against the networks' provenance.
    networks : NetworkSet
        Networks found on this model.
    which : int, list of int, str
        Network indices (``0``, ``[0, 2]``, ``"all"``, ``"range(0,10)"``).
    allow_foreign : bool
        Apply networks found on another model anyway (recorded in the spec's ``meta``); shapes must still fit.

    Yields
    ------
    MaskSpec
        The applied mask (``spec.mask  # [layer, unit]``, counts in ``spec.stats``).
    """
    with _applied(model, networks, lesion_mask(networks, which), allow_foreign) as spec:
        yield spec


@contextlib.contextmanager
def preserve(model: Any, networks: Any, which: Any = "all", *, allow_foreign: bool = False) -> Iterator[MaskSpec]:
    """Zero every neuron *outside* the union of networks ``which`` while the block runs (the paper's
    preservation).

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        The model; a :class:`~fnet.models.LoadedModel` is checked against the networks' provenance.
    networks : NetworkSet
        Networks found on this model.
    which : int, list of int, str
        The networks whose union is kept (``"all"``, ``[0, 2]``, ``"range(0,10)"``).
    allow_foreign : bool
        Apply networks found on another model anyway (recorded in the spec's ``meta``); shapes must still fit.

    Yields
    ------
    MaskSpec
        The applied mask (True = zeroed: every neuron outside the union).
    """
    with _applied(model, networks, preserve_mask(networks, which), allow_foreign) as spec:
        yield spec


def random_control(
    networks: Any,
    which: Any = 0,
    *,
    seed: int = 0,
    match: str = "count",
    scale: Any = None,
    n_bins: int = 10,
    preserve: bool = False,
) -> MaskSpec:
    """The matched random control of ``lesion(..., which)`` (or of ``preserve(...)`` with ``preserve=True``).

    Parameters
    ----------
    networks : NetworkSet
    which : int, list of int, str
        The networks whose union is the reference.
    seed : int
        Seed of the draw; controls are reported over several seeds.
    match : {"count", "magnitude"}
        ``count``: the reference's number of neurons in every layer, uniformly at random.
        ``magnitude``: the same counts, each drawn from the reference neuron's per-layer quantile bin of
        ``scale`` (never a reference neuron).
    scale : array-like ``[n_layers, width]``, optional
        Each neuron's activation scale, e.g. :func:`fnet.intervene.controls.neuron_scale` of the store the
        networks were found on; required for ``match="magnitude"``.
    n_bins : int
        Quantile bins per layer for ``match="magnitude"``.
    preserve : bool
        The control of a preservation: keep only the drawn neurons (zero the rest).

    Returns
    -------
    MaskSpec
        Apply it with ``fnet.intervene.apply_mask(model, spec)``.
    """
    if match not in CONTROL_MATCHES:
        raise ValueError(f"random_control: match={match!r} is not valid; choose one of {list(CONTROL_MATCHES)}")
    reference = lesion_mask(networks, which)
    if match == "count":
        drawn = random_matched_mask(reference, seed=seed).mask
        fallbacks = 0
    else:
        if scale is None:
            raise ValueError(
                "random_control: match='magnitude' needs scale, the neurons' activation scale "
                "[n_layers, width] (fnet.intervene.controls.neuron_scale of the recorded store)"
            )
        draw, fallbacks = magnitude_matched_draw(reference.mask.numpy(), np.asarray(scale), n_bins=n_bins, seed=seed)
        drawn = torch.from_numpy(np.asarray(draw, dtype=bool))
    mask = ~drawn if preserve else drawn
    kind = f"random_{match}" + ("_preserve" if preserve else "")
    return MaskSpec(
        mask,
        signal=reference.signal,
        mode="zero",
        kind=kind,
        description=f"{kind} control of networks {reference.meta.get('networks')} (seed {seed})",
        meta={
            "seed": int(seed),
            "match": match,
            "networks": reference.meta.get("networks"),
            "reference_per_layer": reference.stats.get("per_layer"),
            "bin_fallbacks": int(fallbacks),
        },
    )
