"""Config reading the pipelines share: the run's model, stimuli, decomposition estimator, thresholds, and the
group networks of ``cfg.networks.source`` (what ``evaluate.py`` lesions and ``analysis=pos`` compares with).

Each function reads a Hydra config and calls a library function with plain arguments.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from fnet.intervene.controls import load_scale, neuron_moments
from fnet.lit.checkpoints import load_finetuned_lm
from fnet.models import LoadedModel
from fnet.networks import NetworkSet, find_group_networks
from fnet.pipelines.hydra_utils import container
from fnet.recording import ActivationStore, record_dataset

__all__ = [
    "load_lm",
    "load_stimuli",
    "make_estimator",
    "networks_for_config",
    "thresholds",
    "record_from_config",
    "neuron_scale_for_config",
    "scale_for_mask",
]

# keys of an `ica` config that steer fnet, not the estimator's constructor
_NON_ESTIMATOR_KEYS = ("restarts", "level")


def load_lm(cfg: DictConfig) -> LoadedModel:
    """The model of the run: ``cfg.model``, or the fine-tuned backbone of ``cfg.ckpt_path`` when given."""
    if cfg.ckpt_path:
        return load_finetuned_lm(cfg.ckpt_path)
    return instantiate(cfg.model)


def load_stimuli(cfg: DictConfig) -> dict:
    """``cfg.data`` instantiated: data set name -> :class:`fnet.recording.StimulusSet`."""
    sets = instantiate(cfg.data)
    if not sets:
        raise ValueError("the data config selected no datasets")
    return sets


def make_estimator(ica_cfg: DictConfig, seed: int) -> tuple[Any, int]:
    """An unfitted estimator from the ``ica`` group, and the number of restarts asked for. The run's ``seed``
    drives the decomposition (restart r uses seed + r), so a seed sweep varies it."""
    params = container(ica_cfg)
    n_init = int((params.get("restarts") or {}).get("n_init", 1) or 1)
    for key in _NON_ESTIMATOR_KEYS:
        params.pop(key, None)
    params["random_state"] = seed
    return instantiate(params), n_init


def thresholds(cfg: DictConfig) -> dict[str, Any]:
    """The ``networks`` group's thresholding arguments of :meth:`fnet.networks.NetworkSet.from_maps`."""
    net = cfg.networks
    return {"alpha": float(net.alpha), "rule": net.rule, "percentile": float(net.percentile), "sign": net.sign}


def networks_for_config(cfg: DictConfig, lm: LoadedModel, source: str | None = None) -> NetworkSet:
    """Group networks of ``source`` (a dataset name of ``cfg.data`` or ``all``; default ``cfg.networks.source``),
    computed once and cached under ``paths.cache_dir`` (:func:`fnet.networks.find_group_networks`)."""
    estimator, n_init = make_estimator(cfg.ica, int(cfg.seed))
    rec = cfg.record
    return find_group_networks(
        lm,
        load_stimuli(cfg),
        estimator,
        thresholds(cfg),
        cache_dir=cfg.paths.cache_dir,
        source=source or cfg.networks.source,
        signal=rec.signal,
        max_length=int(rec.max_length),
        batch_size=int(rec.batch_size),
        n_init=n_init,
        seed=int(cfg.seed),
        provenance_fields={"ckpt_path": cfg.ckpt_path},
    )


def record_from_config(
    lm: LoadedModel, cfg: DictConfig, dataset: str, texts: list, *, progress: bool = True
) -> ActivationStore:
    """:func:`fnet.recording.record_dataset` with the run's ``record`` settings and ``paths.cache_dir``."""
    rec = cfg.record
    return record_dataset(
        lm,
        texts,
        dataset=dataset,
        cache_dir=cfg.paths.cache_dir,
        signal=rec.signal,
        max_length=rec.max_length,
        batch_size=rec.batch_size,
        progress=progress,
    )


def neuron_scale_for_config(cfg: DictConfig, lm: LoadedModel) -> tuple[np.ndarray, dict]:
    """``(scale  # [layer, unit], provenance)``: every neuron's RMS activation over the template texts of the run's
    stimuli (``cfg.data``), the texts the group ICA is fitted on; their recording is the cached one analyze.py made
    (the same key), so this reads it back rather than recording again. ``provenance["mean"]`` is every neuron's
    mean over the same tokens (``[layer, unit]``, what mean ablation sets a neuron to)."""
    arrays, texts = [], {}
    for name, stim in load_stimuli(cfg).items():
        store = record_from_config(lm, cfg, name, list(stim.template) + list(stim.individual), progress=False)
        arrays += store.arrays([t.id for t in stim.template])
        texts[name] = len(stim.template)
    mean, scale = neuron_moments(arrays, lm.n_layers)
    provenance = {
        **lm.identity(),
        "signal": cfg.record.signal,
        "template_texts": texts,
        "max_length": int(cfg.record.max_length),
        "mean": mean,
    }
    return scale, provenance


def scale_for_mask(cfg: DictConfig, lm: LoadedModel | None, netset: NetworkSet) -> tuple[np.ndarray, dict]:
    """The neuron scale a magnitude-matched control or a massive-unit mask is built with: ``cfg.mask.scale_file``
    when set (refused when it was measured on another model than the networks were found on, unless
    ``mask.allow_foreign=true``), else measured on the run's stimuli (:func:`neuron_scale_for_config`)."""
    if not cfg.mask.scale_file:
        if lm is None:
            raise ValueError(
                f"mask mode {cfg.mask.mode!r} needs the neurons' activation scale: set mask.scale_file "
                "or give the model"
            )
        return neuron_scale_for_config(cfg, lm)
    scale, prov = load_scale(cfg.mask.scale_file)
    theirs, ours = prov.get("model_fingerprint"), netset.provenance.get("model_fingerprint")
    if theirs and ours and theirs != ours and not cfg.mask.allow_foreign:
        raise ValueError(
            f"mask.scale_file {cfg.mask.scale_file} was measured on model {prov.get('model')} "
            f"(fingerprint {theirs[:12]}…) but the networks were found on "
            f"{netset.provenance.get('model')} (fingerprint {ours[:12]}…); use the scale of the "
            "model the networks belong to, or set mask.allow_foreign=true"
        )
    return scale, dict(prov, scale_file=str(cfg.mask.scale_file))
