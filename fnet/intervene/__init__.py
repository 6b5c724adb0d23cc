"""Intervene: lesion, preserve, amplify or randomly mask neurons of a model while it runs.

* :mod:`fnet.intervene.registry` -- :data:`MASKS`, every mask mode and random control described once, and
  :func:`build_mask` (``conf/mask``), which builds any of them; :mod:`fnet.intervene.kinds` -- the registry's
  parts (:class:`MaskRequest`, :class:`MaskKind`, :func:`register`, the seed of a random draw);
* :mod:`fnet.intervene.masks` -- masks ``[layer, unit]`` built from networks (lesion, preserve, amplify,
  count-matched random controls);
* :mod:`fnet.intervene.controls` -- neuron scale, magnitude-matched draws, massive units;
* :mod:`fnet.intervene.apply` -- :class:`MaskSpec` and the :func:`apply_mask` context manager (:func:`apply_masks`:
  several masks in one forward pass, one per batch slice);
* :mod:`fnet.intervene.batched` -- :func:`score_loglik_masks`: a task's rows scored under several masks at once;
* :mod:`fnet.intervene.context` -- ``with lesion(lm, nets, 0):`` for notebooks, checked against the model.
"""

from fnet.intervene.apply import APPLY_MODES, MaskSpec, apply_mask, apply_masks, expected_mask_shape, mask_stats
from fnet.intervene.batched import score_loglik_masks
from fnet.intervene.masks import (
    amplify_mask,
    lesion_mask,
    parse_networks,
    preserve_mask,
    random_fraction_mask,
    random_matched_mask,
)
from fnet.intervene.registry import MASK_MODES, MASKS, MaskKind, MaskRequest, build_mask, control_kinds, register

__all__ = [
    "APPLY_MODES",
    "MASKS",
    "MASK_MODES",
    "MaskKind",
    "MaskRequest",
    "MaskSpec",
    "amplify_mask",
    "apply_mask",
    "apply_masks",
    "build_mask",
    "control_kinds",
    "expected_mask_shape",
    "lesion_mask",
    "mask_stats",
    "parse_networks",
    "preserve_mask",
    "random_fraction_mask",
    "random_matched_mask",
    "register",
    "score_loglik_masks",
]
