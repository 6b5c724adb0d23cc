"""Whether a NetworkSet belongs to the model it is about to be applied to: fingerprint, shape and signal.

Networks found on one model are refused on another (:class:`ForeignNetworksError`, naming both); a caller may
allow them, and then gets a description of both sides to record with its result.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["ForeignNetworksError", "check_compatible"]


class ForeignNetworksError(ValueError):
    """A NetworkSet was found on another model (or another signal / shape) than the one it is applied to."""


def _describe(model: Any, fingerprint: Any, n_layers: Any, width: Any, signal: Any) -> str:
    fp = f"fingerprint {str(fingerprint)[:12]}…" if fingerprint else "no fingerprint"
    return f"{model} ({fp}, {n_layers} layers x {width} {signal})"


def check_compatible(
    netset: Any,
    *,
    model: str,
    fingerprint: str,
    n_layers: int,
    width: int,
    signal: str,
    allow_foreign: bool = False,
    source: str = "networks",
    override: str = "allow_foreign=True",
) -> dict | None:
    """Check that ``netset`` was found on this model.

    Parameters
    ----------
    netset : NetworkSet
        The networks; their provenance's ``model_fingerprint`` (else ``model``) and ``signal`` are compared.
    model, fingerprint : str
        The model the networks are about to be applied to (:meth:`fnet.models.LoadedModel.identity`).
    n_layers, width : int
        Its layers and the width of ``signal``.
    signal : str
        ``mlp_out`` or ``mlp_act``.
    allow_foreign : bool
        Return the mismatch instead of raising it (never for a shape mismatch, which cannot be applied).
    source : str
        How the error names the networks (e.g. the file they came from).
    override : str
        How the caller's user allows foreign networks, named in the error (a config key for an entry point).

    Returns
    -------
    dict or None
        ``None`` when they match; with ``allow_foreign``, ``{"networks": ..., "model": ..., "differ": [...]}`` for
        the result's provenance.

    Raises
    ------
    ForeignNetworksError
        Naming both sides and what differs.
    """
    prov = dict(getattr(netset, "provenance", {}) or {})
    found = {
        "model": prov.get("model"),
        "fingerprint": prov.get("model_fingerprint"),
        "n_layers": int(netset.n_layers),
        "width": int(netset.width),
        "signal": prov.get("signal"),
    }
    here = {
        "model": model,
        "fingerprint": fingerprint,
        "n_layers": int(n_layers),
        "width": int(width),
        "signal": signal,
    }
    problems = []
    if found["fingerprint"]:
        if found["fingerprint"] != fingerprint:
            problems.append("model fingerprint")
    elif found["model"] is not None and found["model"] != model:
        problems.append("model name (the networks record no fingerprint)")
    if (found["n_layers"], found["width"]) != (here["n_layers"], here["width"]):
        problems.append("shape")
    if found["signal"] is not None and found["signal"] != signal:
        problems.append("signal")
    if not problems:
        return None
    message = (
        f"{source} were found on {_describe(**found)} but the model is {_describe(**here)}: "
        f"{', '.join(problems)} differ"
    )
    if not allow_foreign or "shape" in problems:
        hint = "" if "shape" in problems else f"; set {override} to apply them anyway (recorded)"
        raise ForeignNetworksError(message + hint)
    log.warning("applying foreign networks (%s): %s", override, message)
    return {"networks": found, "model": here, "differ": problems}
