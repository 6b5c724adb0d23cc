"""Networks: thresholded spatial maps over neurons, as sets of neurons, and how they are found and compared.

* :mod:`fnet.networks.threshold` -- ``maps  # [K, neurons]`` -> z-scored, oriented, thresholded masks;
* :mod:`fnet.networks.netset` -- :class:`NetworkSet` (masks ``[K, layer, unit]``, one file with provenance);
* :mod:`fnet.networks.compat` -- :func:`check_compatible`: networks are applied only to the model they were found on;
* :mod:`fnet.networks.match` -- :func:`iou` and :func:`match_templates` (the paper's Tables 1-3);
* :mod:`fnet.networks.find` -- a decomposition estimator fitted on recorded activations -> networks, cached;
* :mod:`fnet.networks.describe` -- what each network responds to: top tokens in context, texts, layers, units.
"""

from fnet.networks.compat import ForeignNetworksError, check_compatible
from fnet.networks.describe import describe, orient, token_strings, top_examples, top_texts, top_units
from fnet.networks.find import (
    NETWORK_CODE,
    Decomposition,
    estimator_settings,
    find_group_networks,
    group_networks,
    individual_networks,
    networks_from_estimator,
)
from fnet.networks.match import TemplateMatch, iou, match_templates
from fnet.networks.netset import FILE_FORMAT, FILE_FORMAT_VERSION, NetworkSet, NetworkSetFormatError
from fnet.networks.threshold import RULES, SIGNS, orient_maps, threshold_maps, zscore_maps

__all__ = [
    "Decomposition",
    "FILE_FORMAT",
    "ForeignNetworksError",
    "NETWORK_CODE",
    "check_compatible",
    "describe",
    "FILE_FORMAT_VERSION",
    "NetworkSet",
    "NetworkSetFormatError",
    "RULES",
    "SIGNS",
    "TemplateMatch",
    "estimator_settings",
    "find_group_networks",
    "group_networks",
    "individual_networks",
    "iou",
    "match_templates",
    "networks_from_estimator",
    "orient",
    "orient_maps",
    "threshold_maps",
    "token_strings",
    "top_examples",
    "top_texts",
    "top_units",
    "zscore_maps",
]
