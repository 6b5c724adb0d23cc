"""Where a model's MLP signals live: the discovered :class:`~fnet.models.discovery.ArchSpec` resolved to modules.

Two recording/masking signals exist for every architecture:

* ``mlp_out`` -- what the MLP adds to the residual stream: the output of its down projection, bias included,
  ``[.., d_model]`` per layer (for a mixture of experts: the routed sum of the experts);
* ``mlp_act`` -- the MLP's inner activations, i.e. the *input* of the down projection, ``[.., d_mlp]`` per layer
  (undefined for a mixture of experts).

In both cases the neuron axis is the last axis of the hooked tensor, whatever the layout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fnet.models.discovery import ArchSpec, DiscoveryError, config_dims, discover, resolve_path

__all__ = [
    "SIGNALS",
    "get_arch",
    "find_blocks",
    "mlp_modules",
    "down_proj_modules",
    "signal_modules",
    "check_signal",
    "model_dims",
    "to_batch_first",
]


SIGNALS = ("mlp_out", "mlp_act")


# --------------------------------------------------------------------------------------------------------------
# Architecture: found by structure (fnet.models.discovery), no list of model types
# --------------------------------------------------------------------------------------------------------------
def get_arch(model_or_config: Any) -> ArchSpec:
    """The :class:`ArchSpec` of a model, found by :func:`fnet.models.discovery.discover` (remembered per model).

    A bare config is not enough: the spec is read off the module tree, so pass the model.

    Parameters
    ----------
    model_or_config : torch.nn.Module
        The model; a bare config raises :class:`DiscoveryError`.

    Returns
    -------
    ArchSpec
        Where the model's blocks, MLP and down projection live.
    """
    if isinstance(model_or_config, nn.Module):
        return discover(model_or_config)
    model_type = getattr(model_or_config, "model_type", None)
    raise DiscoveryError(
        f"cannot find the MLP of model_type={model_type!r} from its config alone: fnet finds blocks, MLP and down "
        f"projection on the model itself; pass the model (any decoder-only causal LM works, no registry needed)"
    )


def find_blocks(model: nn.Module, spec: ArchSpec | None = None) -> nn.ModuleList:
    """The list of transformer blocks of ``model`` (an LM, its backbone, or any module holding one).

    Parameters
    ----------
    model : torch.nn.Module
        The model (or a module holding its blocks).
    spec : ArchSpec, optional
        The model's spec; default :func:`get_arch` of ``model``.

    Returns
    -------
    torch.nn.ModuleList
        The blocks, one per layer.
    """
    spec = spec or get_arch(model)
    return resolve_path(model, spec.blocks)


def mlp_modules(model: nn.Module, spec: ArchSpec | None = None) -> list[nn.Module]:
    """One MLP module per layer (for OPT-style blocks without an MLP module: the block).

    Parameters
    ----------
    model : torch.nn.Module
        The model (or a module holding its blocks).
    spec : ArchSpec, optional
        The model's spec; default :func:`get_arch` of ``model``.

    Returns
    -------
    list of torch.nn.Module
        ``n_layers`` MLP modules.
    """
    spec = spec or get_arch(model)
    return [resolve_path(block, spec.mlp) for block in find_blocks(model, spec)]


def down_proj_modules(model: nn.Module, spec: ArchSpec | None = None) -> list[nn.Module]:
    """One down projection per layer: its forward *input* is ``mlp_act``, its *output* (bias included) is
    ``mlp_out``. A mixture-of-experts MLP has none: a :class:`DiscoveryError` says so.

    Parameters
    ----------
    model : torch.nn.Module
        The model (or a module holding its blocks).
    spec : ArchSpec, optional
        The model's spec; default :func:`get_arch` of ``model``.

    Returns
    -------
    list of torch.nn.Module
        ``n_layers`` down projections.
    """
    spec = spec or get_arch(model)
    if spec.moe:
        raise DiscoveryError(
            f"{spec.family}: the MLP {spec.mlp!r} is a mixture of experts; it has no single down projection, so "
            f"signal 'mlp_act' is undefined (use 'mlp_out', the routed sum of the experts)"
        )
    return [resolve_path(mlp, spec.down_proj) for mlp in mlp_modules(model, spec)]


def signal_modules(model: nn.Module, signal: str, spec: ArchSpec | None = None) -> list[nn.Module]:
    """Per layer, the module whose forward *output* is ``mlp_out`` (the down projection; a mixture of experts'
    block) or whose forward *input* is ``mlp_act`` (the down projection).

    Parameters
    ----------
    model : torch.nn.Module
        The model (or a module holding its blocks).
    signal : str
        ``"mlp_out"`` or ``"mlp_act"`` (:data:`SIGNALS`).
    spec : ArchSpec, optional
        The model's spec; default :func:`get_arch` of ``model``.

    Returns
    -------
    list of torch.nn.Module
        ``n_layers`` modules to hook.
    """
    spec = spec or get_arch(model)
    if check_signal(signal) == "mlp_out" and spec.moe:
        return mlp_modules(model, spec)
    return down_proj_modules(model, spec)


def check_signal(signal: str) -> str:
    """``signal`` unchanged when it is one of :data:`SIGNALS`, else a ValueError listing the valid ones.

    Parameters
    ----------
    signal : str
        The signal name to check.

    Returns
    -------
    str
        ``signal`` itself.

    Examples
    --------
    >>> check_signal("mlp_out")
    'mlp_out'
    """
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; valid signals: {list(SIGNALS)}")
    return signal


def model_dims(config: Any, spec: ArchSpec | None = None) -> dict[str, int]:
    """``n_layers``, ``d_model``, ``d_mlp``: measured on the modules when a spec (or a model) is given, else as the
    config states them (a ``ValueError`` names what the config lacks).

    Parameters
    ----------
    config : transformers.PretrainedConfig or torch.nn.Module
        The model's config, or the model itself (then measured on its modules).
    spec : ArchSpec, optional
        The model's spec; when given, the dimensions are read off it.

    Returns
    -------
    dict of str to int
        ``{"n_layers": .., "d_model": .., "d_mlp": ..}``.
    """
    if spec is None and isinstance(config, nn.Module):
        spec = get_arch(config)
    if spec is not None:
        return {"n_layers": spec.n_layers, "d_model": spec.d_model, "d_mlp": spec.d_mlp}
    dims = config_dims(config)
    missing = [k for k, v in dims.items() if v is None]
    if missing:
        raise ValueError(f"config of model_type={getattr(config, 'model_type', None)!r} does not state {missing}")
    return {k: int(v) for k, v in dims.items()}  # type: ignore[arg-type]


def to_batch_first(hidden: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
    """A hooked tensor in the architecture's layout -> ``[batch, seq, width]`` (its own inverse).

    Parameters
    ----------
    hidden : torch.Tensor
        A hooked tensor, ``[seq, batch, width]`` when ``spec.seq_first``, else ``[batch, seq, width]``.
    spec : ArchSpec
        The model's spec.

    Returns
    -------
    torch.Tensor
        ``hidden`` transposed when ``spec.seq_first``, else ``hidden`` itself.
    """
    return hidden.transpose(0, 1) if spec.seq_first else hidden
