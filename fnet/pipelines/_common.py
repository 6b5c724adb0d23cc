"""Config reading the pipelines share: the run's model, stimuli, decomposition estimator, thresholds, and the
group networks of ``cfg.networks.source`` (what ``evaluate.py`` lesions and ``analysis=pos`` compares with).

Each function reads a Hydra config and calls a library function with plain arguments.
"""

from __future__ import annotations

from typing import Any

from fnet.lit.checkpoints import load_finetuned_lm
from hydra.utils import instantiate
from omegaconf import DictConfig

from fnet.models import LoadedModel
from fnet.networks import NetworkSet, find_group_networks
from fnet.pipelines.hydra_utils import container

__all__ = ["load_lm", "load_stimuli", "make_estimator", "networks_for_config", "thresholds"]

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
    return find_group_networks(lm, load_stimuli(cfg), estimator, thresholds(cfg), cache_dir=cfg.paths.cache_dir,
                               source=source or cfg.networks.source, signal=rec.signal,
                               max_length=int(rec.max_length), batch_size=int(rec.batch_size), n_init=n_init,
                               seed=int(cfg.seed), provenance_fields={"ckpt_path": cfg.ckpt_path})
