"""Find networks: fit a decomposition estimator on recorded activations and threshold its maps into networks.

:func:`group_networks` fits one decomposition over many texts (the template texts, stacked), with restarts and
per-component stability; :func:`individual_networks` fits one per text; both return :class:`Decomposition`
records holding a :class:`~fnet.networks.netset.NetworkSet`. :func:`find_group_networks` records a data set's
template texts (cached) and returns its group networks, cached on disk under a key of everything that
determines them: the model's content, the texts, the recording settings, the estimator's parameters, the
thresholds, the seed and the code version. Every pipeline that needs "the networks of this model" calls it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from sklearn.base import clone

from fnet.cache import code_version, content_key, lock, quarantine, register
from fnet.decompose import fit_with_restarts, individual_decompositions
from fnet.models import LoadedModel
from fnet.networks.netset import NetworkSet, NetworkSetFormatError
from fnet.provenance import provenance
from fnet.record import StimulusSet, model_key, record_dataset, slug, text_sha1

log = logging.getLogger(__name__)

__all__ = ["Decomposition", "estimator_settings", "networks_from_estimator", "group_networks",
           "individual_networks", "find_group_networks"]


@dataclass
class Decomposition:
    """A fitted group or individual decomposition turned into networks."""

    name: str
    networks: NetworkSet
    n_tokens: int
    n_iter: int | None
    converged: bool | None
    seconds: float
    extra: dict = field(default_factory=dict)


def estimator_settings(estimator: Any) -> dict[str, Any]:
    """What identifies an unfitted estimator: its class path and its parameters (``get_params(deep=False)``)."""
    cls = type(estimator)
    return {"estimator": f"{cls.__module__}.{cls.__qualname__}", **estimator.get_params(deep=False)}


def networks_from_estimator(fitted: Any, n_layers: int, width: int, thresholds: Mapping[str, Any], *,
                            stability: Any = None, provenance: Mapping[str, Any] | None = None) -> NetworkSet:
    """The thresholded ``spatial_maps_  # [K, n_layers*width]`` of a fitted estimator as a NetworkSet.

    ``thresholds`` holds the keyword arguments of :meth:`NetworkSet.from_maps` (``alpha``, ``rule``,
    ``percentile``, ``sign``)."""
    maps = np.asarray(fitted.spatial_maps_, dtype=np.float32)  # [K, n_layers*width]
    return NetworkSet.from_maps(torch.from_numpy(maps), n_layers, width, **dict(thresholds),
                                stability=None if stability is None else torch.as_tensor(stability),
                                provenance=provenance)


def _fit(estimator: Any, arrays: Sequence[Any], n_init: int, seed: int):
    if n_init > 1:
        result = fit_with_restarts(estimator, arrays, seeds=[seed + i for i in range(n_init)])
        return result.best, np.asarray(result.stability, dtype=np.float64)
    return clone(estimator).fit(arrays), None


def group_networks(estimator: Any, arrays: Sequence[Any], n_layers: int, width: int, thresholds: Mapping[str, Any],
                   *, name: str, n_init: int = 1, seed: int = 0,
                   provenance: Mapping[str, Any] | None = None) -> Decomposition:
    """One decomposition over ``arrays`` (``[tokens_i, n_layers*width]`` each, read as stacked), as networks.

    With ``n_init > 1`` the estimator is fitted with seeds ``seed .. seed + n_init - 1`` and the most stable
    solution is kept (:func:`fnet.decompose.fit_with_restarts`); the networks then carry per-component stability.
    ``provenance`` is stored with the networks, completed with ``n_init`` and ``n_tokens``."""
    started = time.time()
    fitted, stability = _fit(estimator, arrays, n_init, seed)
    n_tokens = int(sum(a.shape[0] for a in arrays))
    prov = dict(provenance or {}, level="group", data=name, n_init=n_init, n_tokens=n_tokens)
    nets = networks_from_estimator(fitted, n_layers, width, thresholds, stability=stability, provenance=prov)
    return Decomposition(name, nets, n_tokens, getattr(fitted, "n_iter_", None), getattr(fitted, "converged_", None),
                         time.time() - started)


def individual_networks(estimator: Any, arrays: Sequence[Any], ids: Sequence[str], n_layers: int, width: int,
                        thresholds: Mapping[str, Any], *, name: str,
                        provenance: Mapping[str, Any] | None = None) -> list[Decomposition]:
    """One decomposition per text (``arrays[i]`` is text ``ids[i]``), each as networks."""
    started = time.time()
    out = []
    for text_id, array, fitted in zip(ids, arrays, individual_decompositions(estimator, arrays)):
        prov = dict(provenance or {}, level="individual", data=name, text_id=text_id, n_tokens=int(array.shape[0]))
        nets = networks_from_estimator(fitted, n_layers, width, thresholds, provenance=prov)
        out.append(Decomposition(text_id, nets, int(array.shape[0]), getattr(fitted, "n_iter_", None),
                                 getattr(fitted, "converged_", None), 0.0))
    log.info("%s: %d individual decompositions in %.1f s", name, len(out), time.time() - started)
    return out


def find_group_networks(lm: LoadedModel, stimuli: Mapping[str, StimulusSet], estimator: Any,
                        thresholds: Mapping[str, Any], *, cache_dir: str | Path, source: str = "all",
                        signal: str = "mlp_out", max_length: int = 1024, batch_size: int = 4, n_init: int = 1,
                        seed: int = 0, provenance_fields: Mapping[str, Any] | None = None) -> NetworkSet:
    """Group networks of ``source`` (a data set of ``stimuli``, or ``all`` = every data set's template texts
    stacked), computed once and cached under ``<cache_dir>/networks``.

    Parameters
    ----------
    lm
        The model whose networks are found.
    stimuli
        Data set name -> :class:`~fnet.record.StimulusSet`; only the template texts are used.
    estimator
        An unfitted decomposition estimator (e.g. :class:`fnet.decompose.FastICA`); its class and parameters
        are part of the cache key.
    thresholds
        ``alpha``, ``rule``, ``percentile``, ``sign`` (:meth:`NetworkSet.from_maps`).
    cache_dir, signal, max_length, batch_size
        Where the cache lives and how activations are recorded (:func:`fnet.record.record_dataset`).
    n_init, seed
        Restarts and their first seed (:func:`group_networks`).
    provenance_fields
        Extra fields for the networks' provenance (e.g. ``ckpt_path``).

    Raises
    ------
    ValueError
        When ``source`` is neither ``all`` nor a data set of ``stimuli``; the message lists the valid ones.
    """
    if source != "all" and source not in stimuli:
        raise ValueError(f"networks.source={source!r} is not a dataset of this data config; valid: "
                         f"{sorted(stimuli) + ['all']}")
    chosen = stimuli if source == "all" else {source: stimuli[source]}
    settings = estimator_settings(estimator)
    record = {"signal": signal, "max_length": max_length, "batch_size": batch_size}
    key = content_key(model_key(lm), source, record, settings, dict(thresholds), n_init, seed,
                      {n: [(t.id, text_sha1(t.text)) for t in s.template] for n, s in chosen.items()},
                      code_version("networks"))
    path = Path(cache_dir) / "networks" / f"{slug(lm.name)}-{source}-{key}.safetensors"
    with lock(path):  # a concurrent run with the same key waits here, then reuses this one's result
        if path.exists():
            try:
                nets = NetworkSet.load(path)
                log.info("using cached networks %s", path)
                return nets
            except (NetworkSetFormatError, OSError) as err:
                quarantine(path, err)
        arrays, data_prov = [], {}
        for name, stim in chosen.items():
            store = record_dataset(lm, stim.template, dataset=name, cache_dir=cache_dir, **record)
            arrays += store.arrays([t.id for t in stim.template])
            data_prov[name] = stim.provenance
        prov = provenance(**lm.identity(), code_version=code_version("networks"), signal=signal,
                          max_length=min(int(max_length), lm.max_positions or int(max_length)), seed=seed,
                          K=int(settings.get("n_components") or 0), ica=settings, data_detail=data_prov,
                          **dict(provenance_fields or {}))
        nets = group_networks(estimator, arrays, lm.n_layers, lm.width(signal), thresholds, name=source,
                              n_init=n_init, seed=seed, provenance=prov).networks
        nets.save(path)
        register(path, "networks", model=lm.name, fingerprint=lm.fingerprint, signal=signal, source=source,
                 K=len(nets))
    return nets
