"""Intervene: lesion, preserve, amplify or randomly mask neurons of a model while it runs.

* :mod:`fnet.intervene.masks` -- masks ``[layer, unit]`` built from networks (lesion, preserve, amplify, matched
  random controls; :func:`build_mask` for ``conf/mask``);
* :mod:`fnet.intervene.apply` -- :class:`MaskSpec` and the :func:`apply_mask` context manager.
"""

from fnet.intervene.apply import APPLY_MODES, MaskSpec, apply_mask, expected_mask_shape, mask_stats
from fnet.intervene.masks import (MASK_MODES, amplify_mask, build_mask, lesion_mask, parse_networks, preserve_mask,
                                  random_fraction_mask, random_matched_mask)

__all__ = [
    "APPLY_MODES", "MASK_MODES", "MaskSpec", "amplify_mask", "apply_mask", "build_mask", "expected_mask_shape",
    "lesion_mask", "mask_stats", "parse_networks", "preserve_mask", "random_fraction_mask", "random_matched_mask",
]
