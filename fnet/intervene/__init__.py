"""Intervene: lesion, preserve, amplify or randomly mask neurons of a model while it runs.

* :mod:`fnet.intervene.registry` -- :data:`MASKS`, every mask mode and random control described once, and
  :func:`build_mask` (``conf/mask``), which builds any of them;
* :mod:`fnet.intervene.masks` -- masks ``[layer, unit]`` built from networks (lesion, preserve, amplify,
  count-matched random controls);
* :mod:`fnet.intervene.controls` -- neuron scale, magnitude-matched draws, massive units;
* :mod:`fnet.intervene.apply` -- :class:`MaskSpec` and the :func:`apply_mask` context manager;
* :mod:`fnet.intervene.context` -- ``with lesion(lm, nets, 0):`` for notebooks, checked against the model.
"""

from fnet.intervene.apply import APPLY_MODES, MaskSpec, apply_mask, expected_mask_shape, mask_stats
from fnet.intervene.masks import (amplify_mask, lesion_mask, parse_networks, preserve_mask, random_fraction_mask,
                                  random_matched_mask)
from fnet.intervene.registry import MASK_MODES, MASKS, MaskKind, MaskRequest, build_mask, control_kinds, register

__all__ = [
    "APPLY_MODES", "MASKS", "MASK_MODES", "MaskKind", "MaskRequest", "MaskSpec", "amplify_mask", "apply_mask",
    "build_mask", "control_kinds", "expected_mask_shape", "lesion_mask", "mask_stats", "parse_networks",
    "preserve_mask", "random_fraction_mask", "random_matched_mask", "register",
]
