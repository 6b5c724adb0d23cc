"""Overlap between networks: IoU of every pair, and the paper's template matching (Tables 1-3).

Why this is hand-written: no library does this. scikit-learn's ``jaccard_score`` scores one pair of label
vectors at a time, and SciPy's ``cdist(..., "jaccard")`` loops over pairs on NumPy arrays with its own
0/0 convention; neither knows about layers or NetworkSets. IoU of boolean sets is one float matmul
(intersections) plus set sizes, done here in torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from fnet.networks.netset import NetworkSet
from fnet.networks.threshold import as_tensor

__all__ = ["iou", "TemplateMatch", "match_templates"]


# ---------------------------------------------------------------------------------------------------------
# Overlap
# ---------------------------------------------------------------------------------------------------------


def _as_flat_masks(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, NetworkSet):
        return x.flat()
    x = as_tensor(x, name)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"{name} must be [K, neuron] masks or a NetworkSet, got shape {tuple(x.shape)}")
    if x.dtype != torch.bool:
        if not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(f"{name} must be bool masks (or 0/1)")
        x = x.to(torch.bool)
    return x


def iou(a: Any, b: Any) -> torch.Tensor:
    """Intersection over union between every network of ``a`` and every network of ``b``.

    Parameters
    ----------
    a
        [K1, neuron] bool (or a NetworkSet; a 1-D mask counts as K=1).
    b
        [K2, neuron] bool (or a NetworkSet), same neuron count (and layout, for two NetworkSets).

    Returns
    -------
    [K1, K2] float64; 0 where both sets are empty.

    Examples
    --------
    >>> import torch
    >>> a = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    >>> b = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    >>> iou(a, b).tolist()  # |a & b| / |a | b|; 0 against the empty network
    [[0.6666666666666666, 0.0], [0.25, 0.0]]
    """
    if isinstance(a, NetworkSet) and isinstance(b, NetworkSet):
        if (a.n_layers, a.width) != (b.n_layers, b.width):
            raise ValueError(f"NetworkSets differ in layout: [{a.n_layers}, {a.width}] vs [{b.n_layers}, {b.width}]")
    a_flat, b_flat = _as_flat_masks(a, "a"), _as_flat_masks(b, "b")  # [K1, N], [K2, N]
    if a_flat.shape[1] != b_flat.shape[1]:
        raise ValueError(f"neuron counts differ: {a_flat.shape[1]} vs {b_flat.shape[1]}")
    # Counts of 0/1 products are exact in float32 up to 2**24 neurons; beyond that use float64.
    dtype = torch.float32 if a_flat.shape[1] <= 2**24 else torch.float64
    intersection = (a_flat.to(dtype) @ b_flat.to(dtype).T).to(torch.float64)  # [K1, K2]
    size_a = a_flat.sum(dim=1, dtype=torch.float64)  # [K1]
    size_b = b_flat.sum(dim=1, dtype=torch.float64)  # [K2]
    union = size_a[:, None] + size_b[None, :] - intersection  # [K1, K2]
    return torch.where(union > 0, intersection / union.clamp_min(1.0), torch.zeros_like(union))


@dataclass
class TemplateMatch:
    """Result of ``match_templates``.

    Parameters
    ----------
    iou : torch.Tensor
        [K_templates, total individual networks] float64, individuals' networks concatenated in order.
    counts : torch.Tensor
        [K_templates] int64: individual networks (over all individuals) with IoU > threshold.
    best_iou : list of torch.Tensor
        one [K_ind_i] float64 per individual: each network's max IoU over templates.
    individual : torch.Tensor
        [total] int64: which individual each column of ``iou`` belongs to.
    template_sizes : torch.Tensor
        [K_templates] int64.
    n_individuals : int
        number of individuals.
    threshold : float
        the IoU threshold (strict >).
    template_ids : list of int
        each template's index in its original set (see ``NetworkSet.network_ids``).
    """

    iou: torch.Tensor
    counts: torch.Tensor
    best_iou: list[torch.Tensor]
    individual: torch.Tensor
    template_sizes: torch.Tensor
    n_individuals: int
    threshold: float
    template_ids: list[int] = field(default_factory=list)

    @property
    def n_templates(self) -> int:
        return int(self.iou.shape[0])

    @property
    def n_individual_networks(self) -> int:
        return int(self.iou.shape[1])

    def best_iou_per_individual(self) -> torch.Tensor:
        """[K_templates, n_individuals] float64: for each template and individual, the max IoU over that
        individual's networks (0 for an individual with no networks)."""
        out = torch.zeros(self.n_templates, self.n_individuals, dtype=torch.float64)
        if self.n_individual_networks:
            index = self.individual[None, :].expand_as(self.iou)
            out.scatter_reduce_(1, index, self.iou, reduce="amax", include_self=True)
        return out

    def individuals_matched(self) -> torch.Tensor:
        """[K_templates] int64: individuals with at least one network of IoU > threshold."""
        return (self.best_iou_per_individual() > self.threshold).sum(dim=1)

    def as_rows(self) -> list[dict[str, Any]]:
        """One row per template: template (original index), size, matches (= counts), fraction_matched
        (matches / total individual networks; 0 if there are none), individuals_matched, and
        mean_best_iou (mean over individuals of the template's best IoU with that individual's networks)."""
        total = self.n_individual_networks
        per_individual = self.best_iou_per_individual()  # [K_templates, n_individuals]
        matched = (per_individual > self.threshold).sum(dim=1)  # [K_templates]
        ids = self.template_ids or list(range(self.n_templates))
        rows = []
        for t in range(self.n_templates):
            rows.append(
                {
                    "template": int(ids[t]),
                    "size": int(self.template_sizes[t]),
                    "matches": int(self.counts[t]),
                    "fraction_matched": float(self.counts[t]) / total if total else 0.0,
                    "individuals_matched": int(matched[t]),
                    "mean_best_iou": float(per_individual[t].mean()) if self.n_individuals else 0.0,
                }
            )
        return rows


def match_templates(templates: NetworkSet, individuals: Sequence[NetworkSet], threshold: float = 0.2) -> TemplateMatch:
    """Match template networks (e.g. from group ICA) against each individual's networks.

    For each template, ``counts`` is the number of individual networks, over all individuals, whose IoU
    with it is > ``threshold`` (the paper's Tables 1-3). All sets must share the (n_layers, width) layout.

    Parameters
    ----------
    templates : NetworkSet
        The template networks (e.g. from group ICA).
    individuals : sequence of NetworkSet
        Each individual's networks, in the templates' layout.
    threshold : float
        IoU above which (strictly) an individual network counts as a match.

    Returns
    -------
    TemplateMatch
        ``iou`` [templates, all individual networks], ``counts`` [templates], ``best_iou`` per individual.

    Examples
    --------
    >>> import torch
    >>> templates = torch.zeros(2, 1, 8, dtype=torch.bool)  # [K, layer, unit]
    >>> templates[0, 0, :4] = True
    >>> templates[1, 0, 4:] = True
    >>> person = torch.zeros(2, 1, 8, dtype=torch.bool)
    >>> person[0, 0, :3] = True  # IoU 3/4 with template 0
    >>> person[1, 0, 3:5] = True  # IoU 1/5 with template 0 and 1/5 with template 1: not above 0.2
    >>> result = match_templates(NetworkSet.from_masks(templates), [NetworkSet.from_masks(person)], threshold=0.2)
    >>> result.counts.tolist(), [round(v, 2) for v in result.iou[0].tolist()]
    ([1, 0], [0.75, 0.2])
    """
    if not isinstance(templates, NetworkSet):
        raise TypeError("templates must be a NetworkSet")
    individuals = list(individuals)
    if not individuals:
        raise ValueError("match_templates needs at least one individual NetworkSet")
    for i, ind in enumerate(individuals):
        if not isinstance(ind, NetworkSet):
            raise TypeError(f"individual {i} is {type(ind).__name__}, not a NetworkSet")
        if (ind.n_layers, ind.width) != (templates.n_layers, templates.width):
            raise ValueError(
                f"individual {i} layout [{ind.n_layers}, {ind.width}] != templates "
                f"[{templates.n_layers}, {templates.width}]"
            )
    all_individual = torch.cat([ind.flat() for ind in individuals], dim=0)  # [total, neuron]
    overlap = iou(templates.flat(), all_individual)  # [K_templates, total]
    counts = (overlap > threshold).sum(dim=1)  # [K_templates]
    sizes = [ind.n_networks for ind in individuals]
    individual = torch.repeat_interleave(torch.arange(len(individuals)), torch.tensor(sizes))  # [total]
    if templates.n_networks:
        best = overlap.max(dim=0).values  # [total]
    else:  # no templates: nothing matches anything
        best = torch.zeros(overlap.shape[1], dtype=torch.float64)
    return TemplateMatch(
        iou=overlap,
        counts=counts,
        best_iou=list(best.split(sizes)),
        individual=individual,
        template_sizes=templates.sizes(),
        n_individuals=len(individuals),
        threshold=float(threshold),
        template_ids=templates.network_ids(),
    )
