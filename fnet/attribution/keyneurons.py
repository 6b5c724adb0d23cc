"""Key neurons from attributions: per tag, how often each neuron is among a sample's top neurons.

:class:`KeyNeuronCounter` accumulates, per tag, how often each neuron is in a sample's top ``top_fraction``
(by ``|attribution|`` or signed), and its mean score; :meth:`KeyNeuronCounter.key_neurons` keeps the
``top_k`` per tag by frequency or by contrast with the other tags (:func:`select_key_neurons`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["RANK_BY", "SELECTION_RULES", "n_top", "KeyNeuronCounter", "select_key_neurons"]


RANK_BY = ("abs", "signed")
SELECTION_RULES = ("frequency", "contrast")


# --------------------------------------------------------------------------------------------------------------
# Key neurons: per-sample top fraction, per-tag most frequent
# --------------------------------------------------------------------------------------------------------------
def n_top(n_neurons: int, top_fraction: float) -> int:
    """Neurons kept per sample: ``round(top_fraction * n_neurons)``, at least 1.

    Parameters
    ----------
    n_neurons
        neurons per sample.
    top_fraction
        the kept fraction, in (0, 1].

    Returns
    -------
    int
        the number kept.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    return max(1, int(round(top_fraction * n_neurons)))


class KeyNeuronCounter:
    """Streams per-sample attributions into per-tag selection counts (the paper's key-neuron rule).

    For each sample, the ``n_top(n_neurons, top_fraction)`` neurons with the largest score are "kept"; the score
    is ``|attribution|`` (``rank_by="abs"``: a neuron pushing hard *against* the right word matters as much as
    one pushing for it) or the signed attribution (``rank_by="signed"``: only neurons that raise the right
    word's probability). Per tag, ``counts[tag, neuron]`` is how many of the tag's samples kept the neuron, and
    ``score_sums`` the sum of its score over those samples (used to break ties, and for mean scores).

    Parameters
    ----------
    n_tags
        number of tags.
    n_neurons
        neurons per sample (all layers, flat).
    top_fraction
        fraction of neurons kept per sample (default 0.05; :func:`n_top`).
    rank_by
        ``"abs"`` (default) or ``"signed"``.

    Attributes
    ----------
    counts
        [n_tags, n_neurons] int64.
    score_sums
        [n_tags, n_neurons] float64.
    n_samples
        [n_tags] int64.
    """

    def __init__(self, n_tags: int, n_neurons: int, top_fraction: float = 0.05, rank_by: str = "abs"):
        if rank_by not in RANK_BY:
            raise ValueError(f"unknown rank_by {rank_by!r}; valid: {list(RANK_BY)}")
        self.n_tags, self.n_neurons = int(n_tags), int(n_neurons)
        self.top_fraction, self.rank_by = float(top_fraction), rank_by
        self.n_keep = n_top(self.n_neurons, self.top_fraction)
        self.counts = torch.zeros(self.n_tags, self.n_neurons, dtype=torch.int64)
        self.score_sums = torch.zeros(self.n_tags, self.n_neurons, dtype=torch.float64)
        self.n_samples = torch.zeros(self.n_tags, dtype=torch.int64)

    def update(self, attributions: torch.Tensor, tag_ids: Sequence[int] | torch.Tensor) -> None:
        """Add samples. ``attributions  # [samples, n_neurons]`` (or [samples, layer, unit], flattened
        layer-major), ``tag_ids  # [samples]`` in ``[0, n_tags)``."""
        attributions = torch.as_tensor(attributions).detach().cpu()
        attributions = attributions.reshape(attributions.shape[0], -1).to(torch.float64)  # [samples, neuron]
        tag_ids = torch.as_tensor(tag_ids, dtype=torch.int64).flatten()
        if attributions.shape[1] != self.n_neurons:
            raise ValueError(f"attributions have {attributions.shape[1]} neurons, expected {self.n_neurons}")
        if tag_ids.shape[0] != attributions.shape[0]:
            raise ValueError(f"{tag_ids.shape[0]} tags for {attributions.shape[0]} samples")
        if tag_ids.numel() and bool(((tag_ids < 0) | (tag_ids >= self.n_tags)).any()):
            raise ValueError(f"tag ids must be in [0, {self.n_tags})")
        score = attributions.abs() if self.rank_by == "abs" else attributions  # [samples, neuron]
        top = score.topk(self.n_keep, dim=1).indices  # [samples, n_keep]
        kept = torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True)  # [samples, neuron]
        kept_score = torch.where(kept, score, torch.zeros_like(score))
        self.counts.index_add_(0, tag_ids, kept.to(torch.int64))
        self.score_sums.index_add_(0, tag_ids, kept_score)
        self.n_samples += torch.bincount(tag_ids, minlength=self.n_tags)

    def save(self, path, tag_names: Sequence[str] | None = None):
        """Write the counts (safetensors; settings and tag names in the metadata), so that key neurons can be
        re-selected with another ``top_k`` or rule without attributing again. Returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "fnet.KeyNeuronCounter",
            "top_fraction": repr(self.top_fraction),
            "rank_by": self.rank_by,
            "tag_names": json.dumps(list(tag_names) if tag_names is not None else None),
        }
        save_file(
            {"counts": self.counts, "score_sums": self.score_sums, "n_samples": self.n_samples},
            str(path),
            metadata=meta,
        )
        return path

    @classmethod
    def load(cls, path) -> tuple["KeyNeuronCounter", list[str] | None]:
        """Read a file written by :meth:`save`: ``(counter, tag_names)``."""
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        if meta.get("format") != "fnet.KeyNeuronCounter":
            raise ValueError(f"{path}: not a saved KeyNeuronCounter")
        counts = tensors["counts"]
        counter = cls(counts.shape[0], counts.shape[1], float(meta["top_fraction"]), meta["rank_by"])
        counter.counts, counter.score_sums, counter.n_samples = counts, tensors["score_sums"], tensors["n_samples"]
        return counter, json.loads(meta.get("tag_names", "null"))

    def frequency(self) -> torch.Tensor:
        """Fraction of each tag's samples that kept each neuron: [n_tags, n_neurons] float64 (0 for no samples)."""
        return self.counts.to(torch.float64) / self.n_samples.clamp_min(1)[:, None].to(torch.float64)

    def mean_score(self) -> torch.Tensor:
        """Mean score of each neuron over the samples that kept it: [n_tags, n_neurons] float64."""
        return self.score_sums / self.counts.clamp_min(1).to(torch.float64)

    def contrast(self) -> torch.Tensor:
        """Each tag's selection frequency minus the mean frequency over the *other* tags that have samples:
        [n_tags, n_neurons] float64. High for neurons kept often for this tag and rarely for the rest."""
        frequency = self.frequency()  # [n_tags, n_neurons]
        has = (self.n_samples > 0).to(torch.float64)  # [n_tags]
        total = (frequency * has[:, None]).sum(dim=0)  # [n_neurons]
        others = (has.sum() - has).clamp_min(1.0)  # [n_tags]: tags with samples other than this one
        return frequency - (total[None, :] - frequency * has[:, None]) / others[:, None]

    def key_neurons(self, top_k: int = 100, rule: str = "frequency") -> list[torch.Tensor]:
        """Per tag, ``top_k`` neurons (flat layer-major indices, best first).

        ``rule="frequency"`` (the paper's): the neurons kept most often for the tag. ``"contrast"``: the largest
        :meth:`contrast` (kept often for this tag, rarely for others): with ``frequency``, neurons that matter
        for every prediction (e.g. the last layers' large output dimensions) top every tag's list.

        Ties are broken by the larger summed score, then by the lower index. Neurons never kept for the tag are
        not selected, so a tag with few samples can get fewer than ``top_k`` (none without samples).
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if rule not in SELECTION_RULES:
            raise ValueError(f"unknown selection rule {rule!r}; valid: {list(SELECTION_RULES)}")
        primary = self.counts.to(torch.float64) if rule == "frequency" else self.contrast()  # [n_tags, n_neurons]
        out = []
        for tag in range(self.n_tags):
            # stable sorts: last key first. index order is the initial order, so ties end lowest-index first
            by_score = torch.sort(self.score_sums[tag], descending=True, stable=True).indices
            order = by_score[torch.sort(primary[tag][by_score], descending=True, stable=True).indices]
            order = order[self.counts[tag][order] > 0]
            out.append(order[:top_k])
        return out


def select_key_neurons(
    attributions: torch.Tensor,
    tag_ids: Sequence[int] | torch.Tensor,
    n_tags: int,
    *,
    top_fraction: float = 0.05,
    top_k: int = 100,
    rank_by: str = "abs",
    rule: str = "frequency",
) -> tuple[list[torch.Tensor], KeyNeuronCounter]:
    """Key neurons per tag from an in-memory ``attributions  # [samples, n_neurons]`` array (see
    :class:`KeyNeuronCounter`). Returns ``(per-tag flat neuron indices, counter)``.

    Parameters
    ----------
    attributions
        [samples, n_neurons] (or [samples, layer, unit], flattened).
    tag_ids
        [samples] tag id of each sample.
    n_tags
        number of tags.
    top_fraction
        fraction of neurons kept per sample (default 0.05).
    top_k
        key neurons per tag (default 100).
    rank_by
        ``"abs"`` (default) or ``"signed"``.
    rule
        ``"frequency"`` (default) or ``"contrast"`` (:meth:`KeyNeuronCounter.key_neurons`).

    Returns
    -------
    key_neurons : list of torch.Tensor
        per tag, up to ``top_k`` flat neuron indices, best first.
    counter : KeyNeuronCounter
        the counts they were selected from.
    """
    attributions = torch.as_tensor(attributions)
    counter = KeyNeuronCounter(n_tags, attributions.reshape(attributions.shape[0], -1).shape[1], top_fraction, rank_by)
    counter.update(attributions, tag_ids)
    return counter.key_neurons(top_k, rule), counter
