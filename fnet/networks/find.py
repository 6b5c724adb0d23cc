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
from fnet.decompose import FastICA, fit_with_restarts, individual_decompositions
from fnet.models import LoadedModel
from fnet.networks.netset import NetworkSet, NetworkSetFormatError
from fnet.provenance import provenance
from fnet.recording import StimulusSet, model_key, record_dataset, slug, text_sha1

log = logging.getLogger(__name__)

__all__ = [
    "Decomposition",
    "NETWORK_CODE",
    "find_networks",
    "estimator_settings",
    "networks_from_estimator",
    "group_networks",
    "individual_networks",
    "find_group_networks",
]

#: the modules whose source determines a NetworkSet (part of its cache key and provenance); the texts themselves
#: are in the key, so the code that chose them (stimuli sources, task prompts) is not
NETWORK_CODE = ("fnet.models", "fnet.hooks", "fnet.batching", "fnet.recording", "fnet.decompose", "fnet.networks")


@dataclass
class Decomposition:
    """A fitted group or individual decomposition turned into networks.

    Parameters
    ----------
    name : str
        The data set's name (group) or the text's id (individual).
    networks : NetworkSet
        The thresholded networks.
    n_tokens : int
        Tokens the decomposition was fitted on.
    n_iter : int or None
        The estimator's ``n_iter_``, when it has one.
    converged : bool or None
        The estimator's ``converged_``, when it has one.
    seconds : float
        Fitting time (0.0 for individual decompositions).
    extra : dict
        Further information (default empty).
    sources : list of ndarray, optional
        With ``keep_sources``: each text's component time courses ``[tokens_i, K]`` (default None).
    """

    name: str
    networks: NetworkSet
    n_tokens: int
    n_iter: int | None
    converged: bool | None
    seconds: float
    extra: dict = field(default_factory=dict)
    #: with ``keep_sources``: each text's component time courses ``[tokens_i, K]`` float32 (``transform`` of the
    #: fitted estimator), in the fit's component order and sign (orient them with ``networks.signs``)
    sources: list | None = None


def estimator_settings(estimator: Any) -> dict[str, Any]:
    """What identifies an unfitted estimator: its class path and its parameters (``get_params(deep=False)``).

    Parameters
    ----------
    estimator : Any
        An estimator with ``get_params``.

    Returns
    -------
    dict
        ``{"estimator": "<module>.<class>", **params}``.
    """
    cls = type(estimator)
    return {"estimator": f"{cls.__module__}.{cls.__qualname__}", **estimator.get_params(deep=False)}


def networks_from_estimator(
    fitted: Any,
    n_layers: int,
    width: int,
    thresholds: Mapping[str, Any],
    *,
    stability: Any = None,
    provenance: Mapping[str, Any] | None = None,
) -> NetworkSet:
    """The thresholded ``spatial_maps_  # [K, n_layers*width]`` of a fitted estimator as a NetworkSet.

    ``thresholds`` holds the keyword arguments of :meth:`NetworkSet.from_maps` (``alpha``, ``rule``,
    ``percentile``, ``sign``).

    Parameters
    ----------
    fitted : Any
        A fitted estimator with ``spatial_maps_``.
    n_layers : int
        Layers of the recorded signal.
    width : int
        Units per layer.
    thresholds : Mapping
        Keyword arguments of :meth:`NetworkSet.from_maps`.
    stability : array-like [K], optional
        Per-component stability stored with the networks.
    provenance : Mapping, optional
        Stored with the networks.

    Returns
    -------
    NetworkSet
        K networks over ``[n_layers, width]``.
    """
    maps = np.asarray(fitted.spatial_maps_, dtype=np.float32)  # [K, n_layers*width]
    return NetworkSet.from_maps(
        torch.from_numpy(maps),
        n_layers,
        width,
        **dict(thresholds),
        stability=None if stability is None else torch.as_tensor(stability),
        provenance=provenance,
    )


def _time_courses(fitted: Any, arrays: Sequence[Any]) -> list[np.ndarray]:
    """``transform`` of the stacked texts, split back into one ``[tokens_i, K]`` float32 array per text."""
    stacked = np.asarray(fitted.transform(list(arrays)), dtype=np.float32)  # [tokens, K]
    bounds = np.cumsum([0] + [int(a.shape[0]) for a in arrays])
    return [stacked[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _fit(estimator: Any, arrays: Sequence[Any], n_init: int, seed: int):
    if n_init > 1:
        result = fit_with_restarts(estimator, arrays, seeds=[seed + i for i in range(n_init)])
        return result.best, np.asarray(result.stability, dtype=np.float64)
    return clone(estimator).fit(arrays), None


def group_networks(
    estimator: Any,
    arrays: Sequence[Any],
    n_layers: int,
    width: int,
    thresholds: Mapping[str, Any],
    *,
    name: str,
    n_init: int = 1,
    seed: int = 0,
    provenance: Mapping[str, Any] | None = None,
    keep_sources: bool = False,
) -> Decomposition:
    """One decomposition over ``arrays`` (``[tokens_i, n_layers*width]`` each, read as stacked), as networks.

    With ``n_init > 1`` the estimator is fitted with seeds ``seed .. seed + n_init - 1`` and the most stable
    solution is kept (:func:`fnet.decompose.fit_with_restarts`); the networks then carry per-component stability.
    ``provenance`` is stored with the networks, completed with ``n_init`` and ``n_tokens``. ``keep_sources``: the
    kept fit's time courses over every text (one more pass over the data) go into ``Decomposition.sources``.

    Parameters
    ----------
    estimator : Any
        An unfitted decomposition estimator (cloned, not changed).
    arrays : Sequence of ndarray
        Activations ``[tokens_i, n_layers*width]`` per text.
    n_layers : int
        Layers of the recorded signal.
    width : int
        Units per layer.
    thresholds : Mapping
        Keyword arguments of :meth:`NetworkSet.from_maps`.
    name : str
        The data set's name (``data`` in the provenance).
    n_init : int
        Fits with different seeds (default 1).
    seed : int
        The first seed (default 0).
    provenance : Mapping, optional
        Stored with the networks.
    keep_sources : bool
        Keep the components' time courses over the recorded tokens (``Decomposition.sources``), for
        :func:`fnet.networks.describe` (default False).

    Returns
    -------
    Decomposition
        The group decomposition.
    """
    started = time.time()
    fitted, stability = _fit(estimator, arrays, n_init, seed)
    n_tokens = int(sum(a.shape[0] for a in arrays))
    prov = dict(provenance or {}, level="group", data=name, n_init=n_init, n_tokens=n_tokens)
    nets = networks_from_estimator(fitted, n_layers, width, thresholds, stability=stability, provenance=prov)
    return Decomposition(
        name,
        nets,
        n_tokens,
        getattr(fitted, "n_iter_", None),
        getattr(fitted, "converged_", None),
        time.time() - started,
        sources=_time_courses(fitted, arrays) if keep_sources else None,
    )


def individual_networks(
    estimator: Any,
    arrays: Sequence[Any],
    ids: Sequence[str],
    n_layers: int,
    width: int,
    thresholds: Mapping[str, Any],
    *,
    name: str,
    provenance: Mapping[str, Any] | None = None,
    keep_sources: bool = False,
) -> list[Decomposition]:
    """One decomposition per text (``arrays[i]`` is text ``ids[i]``), each as networks.

    Parameters
    ----------
    estimator : Any
        An unfitted decomposition estimator (cloned per text).
    arrays : Sequence of ndarray
        Activations ``[tokens_i, n_layers*width]`` per text.
    ids : Sequence of str
        The texts' ids.
    n_layers : int
        Layers of the recorded signal.
    width : int
        Units per layer.
    thresholds : Mapping
        Keyword arguments of :meth:`NetworkSet.from_maps`.
    name : str
        The data set's name (``data`` in the provenance).
    provenance : Mapping, optional
        Stored with each text's networks.
    keep_sources : bool
        Keep each text's time courses (``Decomposition.sources``, one array) (default False).

    Returns
    -------
    list of Decomposition
        One per text.
    """
    started = time.time()
    out = []
    for text_id, array, fitted in zip(ids, arrays, individual_decompositions(estimator, arrays)):
        prov = dict(provenance or {}, level="individual", data=name, text_id=text_id, n_tokens=int(array.shape[0]))
        nets = networks_from_estimator(fitted, n_layers, width, thresholds, provenance=prov)
        out.append(
            Decomposition(
                text_id,
                nets,
                int(array.shape[0]),
                getattr(fitted, "n_iter_", None),
                getattr(fitted, "converged_", None),
                0.0,
                sources=_time_courses(fitted, [array]) if keep_sources else None,
            )
        )
    log.info("%s: %d individual decompositions in %.1f s", name, len(out), time.time() - started)
    return out


def find_group_networks(
    lm: LoadedModel,
    stimuli: Mapping[str, StimulusSet],
    estimator: Any,
    thresholds: Mapping[str, Any],
    *,
    cache_dir: str | Path,
    source: str = "all",
    signal: str = "mlp_out",
    max_length: int = 1024,
    batch_size: int = 4,
    n_init: int = 1,
    seed: int = 0,
    provenance_fields: Mapping[str, Any] | None = None,
) -> NetworkSet:
    """Group networks of ``source`` (a data set of ``stimuli``, or ``all`` = every data set's template texts
    stacked), computed once and cached under ``<cache_dir>/networks``.

    Parameters
    ----------
    lm
        The model whose networks are found.
    stimuli
        Data set name -> :class:`~fnet.recording.StimulusSet`; only the template texts are used.
    source
        A data set of ``stimuli``, or ``all`` (the default): every data set's template texts stacked.
    estimator
        An unfitted decomposition estimator (e.g. :class:`fnet.decompose.FastICA`); its class and parameters
        are part of the cache key.
    thresholds
        ``alpha``, ``rule``, ``percentile``, ``sign`` (:meth:`NetworkSet.from_maps`).
    cache_dir, signal, max_length, batch_size
        Where the cache lives and how activations are recorded (:func:`fnet.recording.record_dataset`).
    n_init, seed
        Restarts and their first seed (:func:`group_networks`).
    provenance_fields
        Extra fields for the networks' provenance (e.g. ``ckpt_path``).

    Returns
    -------
    NetworkSet
        The group networks (from the cache when an earlier run with the same key wrote them).

    Raises
    ------
    ValueError
        When ``source`` is neither ``all`` nor a data set of ``stimuli``; the message lists the valid ones.
    """
    if source != "all" and source not in stimuli:
        raise ValueError(
            f"networks.source={source!r} is not a dataset of this data config; valid: {sorted(stimuli) + ['all']}"
        )
    chosen = stimuli if source == "all" else {source: stimuli[source]}
    settings = estimator_settings(estimator)
    record = {"signal": signal, "max_length": max_length, "batch_size": batch_size}
    key = content_key(
        model_key(lm),
        source,
        record,
        settings,
        dict(thresholds),
        n_init,
        seed,
        {n: [(t.id, text_sha1(t.text)) for t in s.template] for n, s in chosen.items()},
        code_version(*NETWORK_CODE),
    )
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
        prov = provenance(
            **lm.identity(),
            code_version=code_version(*NETWORK_CODE),
            signal=signal,
            max_length=min(int(max_length), lm.max_positions or int(max_length)),
            seed=seed,
            K=int(settings.get("n_components") or 0),
            ica=settings,
            data_detail=data_prov,
            **dict(provenance_fields or {}),
        )
        nets = group_networks(
            estimator,
            arrays,
            lm.n_layers,
            lm.width(signal),
            thresholds,
            name=source,
            n_init=n_init,
            seed=seed,
            provenance=prov,
        ).networks
        nets.save(path)
        register(path, "networks", model=lm.name, fingerprint=lm.fingerprint, signal=signal, source=source, K=len(nets))
    return nets


def find_networks(
    store_or_arrays: Any,
    n_components: int = 10,
    *,
    alpha: float = 1.96,
    sign: str = "flip",
    rule: str = "z",
    percentile: float = 98.0,
    n_init: int = 1,
    seed: int = 0,
    estimator: Any = None,
    n_layers: int | None = None,
    width: int | None = None,
) -> NetworkSet:
    """Functional networks of recorded activations: group ICA over the stacked texts, spatial maps z-scored and
    thresholded (the notebook entry point; :func:`group_networks` with defaults).

    Parameters
    ----------
    store_or_arrays : ActivationStore or sequence of arrays
        A store from :func:`fnet.record` (its layers and width are read from it), or ``[tokens_i, neurons]``
        arrays (then give ``n_layers``; ``width`` defaults to ``neurons // n_layers``).
    n_components : int
        K, the number of components (networks).
    alpha, sign, rule, percentile
        Thresholding of the z-scored maps (:meth:`NetworkSet.from_maps`): ``z > alpha`` on the ``sign`` tail
        (``flip``: each map's heavy tail made positive; ``positive``: the paper's; ``abs``).
    n_init, seed
        Restarts (the most stable solution is kept; networks then carry per-component stability) and seed.
    estimator : optional
        An unfitted decomposition estimator; default :class:`fnet.decompose.FastICA` with ``n_components``.
    n_layers, width : int, optional
        Shape of the neuron axis when arrays are given.

    Returns
    -------
    NetworkSet
        Masks ``[K, n_layers, width]`` with maps and provenance.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> sources = rng.laplace(size=(2000, 2)) * (rng.random((2000, 2)) < 0.1)   # [tokens, 2] sparse
    >>> maps = np.zeros((2, 40)); maps[0, :5] = 3; maps[1, 20:25] = 3             # planted networks
    >>> acts = sources @ maps + 0.1 * rng.normal(size=(2000, 40))                 # [tokens, 2 layers * 20]
    >>> nets = find_networks([acts], n_components=2, n_layers=2, alpha=2.0)
    >>> sorted(nets.flat()[k].nonzero().flatten().tolist() for k in range(2))
    [[0, 1, 2, 3, 4], [20, 21, 22, 23, 24]]
    """
    if hasattr(store_or_arrays, "arrays") and hasattr(store_or_arrays, "n_layers"):
        arrays = store_or_arrays.arrays()
        n_layers, width = store_or_arrays.n_layers, store_or_arrays.width
        prov = {
            "store": str(getattr(store_or_arrays, "root", "")),
            **{k: store_or_arrays.manifest.get(k) for k in ("model", "signal", "max_length")},
            "model_fingerprint": store_or_arrays.manifest.get("fingerprint"),
        }
    else:
        arrays = list(store_or_arrays)
        if n_layers is None:
            raise ValueError("find_networks: give n_layers (and width) with plain arrays, or pass an ActivationStore")
        width = width or int(arrays[0].shape[1]) // int(n_layers)
        prov = {}
    estimator = estimator if estimator is not None else FastICA(n_components=n_components, random_state=seed)
    thresholds = {"alpha": alpha, "rule": rule, "percentile": percentile, "sign": sign}
    prov.update(estimator=estimator_settings(estimator), thresholds=thresholds)
    return group_networks(
        estimator,
        arrays,
        int(n_layers),
        int(width),
        thresholds,
        name="find_networks",
        n_init=n_init,
        seed=seed,
        provenance=prov,
    ).networks
