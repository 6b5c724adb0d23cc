"""Fine-tuning a causal LM on an fnet task, and reading the result back for evaluation and analysis.

Public entry points:

* :func:`run_training` (``train.py``): seed, build the model / data / LightningModule / trainer from the Hydra
  config, fit (resuming from ``cfg.ckpt_path`` when given), test the best checkpoint on the held-out split, write
  ``result.json`` (metrics, split sizes and rule, data source, seed, time, provenance).
* :func:`evaluation_module` (``evaluate.py ckpt_path=...``): the fine-tuned LightningModule and a DataModule whose
  test split is the checkpoint's held-out split (same task, fractions and seed), ready for ``trainer.test``.
* :func:`load_finetuned_lm` (``analyze.py ckpt_path=...``): the fine-tuned causal LM as a
  :class:`fnet.models.LoadedModel` (backbone weights from the checkpoint, tokenizer and registry entry of the base).
* :func:`warmup_scheduler`: the learning-rate schedule factory that ``conf/scheduler/*.yaml`` points at.

A checkpoint written by :class:`fnet.lit.classification.CausalLMTaskModule` carries an ``fnet`` entry naming the
module class, the base model and the task, plus Lightning's ``hyper_parameters`` and
``datamodule_hyper_parameters``; that is all these functions need.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from fnet.models import LoadedModel

log = logging.getLogger(__name__)

CLASSIFICATION_MODULE = "fnet.lit.classification.SequenceClassificationModule"
QA_MODULE = "fnet.lit.qa.ExtractiveQAModule"
CLASSIFICATION_DATA = "fnet.lit.datamodules.TaskDataModule"
QA_DATA = "fnet.lit.datamodules.SquadDataModule"


# --------------------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------------------
def warmup_scheduler(
    optimizer: torch.optim.Optimizer,
    num_training_steps: int,
    name: str = "linear",
    warmup_ratio: float = 0.1,
    num_warmup_steps: int | None = None,
):
    """A transformers schedule (``linear``, ``cosine``, ``constant_with_warmup``...) with warmup over
    ``warmup_ratio`` of the run (or ``num_warmup_steps``). The modules call it with the run's optimiser-step count
    (``trainer.estimated_stepping_batches``, which accounts for gradient accumulation and devices)."""
    from transformers import get_scheduler

    warmup = int(num_warmup_steps) if num_warmup_steps is not None else int(math.ceil(warmup_ratio * num_training_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=int(num_training_steps))


# --------------------------------------------------------------------------------------------------------------
# Which module for which task
# --------------------------------------------------------------------------------------------------------------
def task_kind(task: Any) -> str:
    """``classification`` (multiple-choice tasks: GLUE, AG News) or ``qa`` (SQuAD); other task types cannot be
    fine-tuned with a head."""
    from fnet.tasks import get_task

    spec = get_task(task)
    if spec.type == "multiple_choice":
        return "classification"
    if spec.type == "generation" and spec.name.startswith("squad"):
        return "qa"
    raise ValueError(
        f"task {spec.name!r} (type {spec.type}) has no fine-tuning head; fine-tune a classification task "
        f"(sst2, cola, mrpc, qqp, mnli, qnli, ag_news) or squad"
    )


def _get_class(path: str):
    from hydra.utils import get_class

    return get_class(path)


def _accepted(cls, kwargs: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The keyword arguments ``cls`` takes; others are logged and dropped (one config serves both heads)."""
    params = inspect.signature(cls.__init__).parameters
    out = {k: v for k, v in kwargs.items() if k in params}
    dropped = sorted(set(kwargs) - set(out))
    if dropped:
        log.info("%s: %s does not take %s (ignored)", what, cls.__name__, dropped)
    return out


def _plain(cfg: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------
def build_datamodule(cfg: Any, tokenizer: Any, kind: str, **extra: Any):
    data_cfg = dict(_plain(cfg.datamodule))
    target = data_cfg.pop("_target_", None) or (QA_DATA if kind == "qa" else CLASSIFICATION_DATA)
    cls = _get_class(target)
    kwargs = _accepted(cls, dict(data_cfg, **extra), "datamodule")
    return cls(task=cfg.task, tokenizer=tokenizer, **kwargs)


def build_module(cfg: Any, lm: LoadedModel, kind: str, datamodule: Any):
    from hydra.utils import instantiate

    module_cfg = dict(_plain(cfg.module))
    target = module_cfg.pop("_target_", None) or (QA_MODULE if kind == "qa" else CLASSIFICATION_MODULE)
    cls = _get_class(target)
    optimizer = instantiate(cfg.optimizer) if cfg.optimizer else None
    scheduler = instantiate(cfg.scheduler) if cfg.scheduler else None
    kwargs = dict(module_cfg, task_name=datamodule.task.name)
    if kind == "classification":
        kwargs.update(num_labels=datamodule.num_labels, metrics=datamodule.metric_names)
    kwargs = _accepted(cls, kwargs, "module")
    return cls(model=lm, optimizer=optimizer, scheduler=scheduler, **kwargs)


def _checkpoint_callbacks(callbacks: list) -> tuple[Any, Any]:
    """(the checkpoint callback that monitors a validation metric, the one that writes last.ckpt)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    best = next((c for c in checkpoints if c.monitor), None)
    last = next((c for c in checkpoints if c.save_last), None)
    return best, last


def run_training(cfg: Any) -> dict[str, Any]:
    """Fine-tune, test the best checkpoint, write ``result.json`` into ``cfg.paths.output_dir``; returns it."""
    import lightning as L
    from hydra.utils import instantiate

    from fnet.provenance import provenance
    from fnet.utils import instantiate_callbacks, instantiate_loggers, log_hyperparameters

    started = time.time()
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))  # a shared CPU: fewer threads can be much faster
    seed = int(cfg.seed)
    L.seed_everything(seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    kind = task_kind(cfg.task)
    lm: LoadedModel = instantiate(cfg.model)
    datamodule = build_datamodule(cfg, lm.tokenizer, kind, data_dir=cfg.paths.data_dir)
    datamodule.setup("fit")
    module = build_module(cfg, lm, kind, datamodule)

    callbacks = instantiate_callbacks(cfg.callbacks)
    loggers = instantiate_loggers(cfg.logger)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log_hyperparameters(loggers, cfg, extra={"data/" + k: v for k, v in datamodule.split_info.items()
                                             if isinstance(v, (int, float, str))})

    ckpt_path = cfg.ckpt_path
    start_step = 0
    if ckpt_path:
        start_step = int(load_checkpoint_file(ckpt_path).get("global_step", 0))
        log.warning("resuming from %s (global step %d)", ckpt_path, start_step)
    fit_started = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    fit_seconds = time.time() - fit_started
    val_metrics = {k: _number(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    best_cb, last_cb = _checkpoint_callbacks(callbacks)
    best_path = best_cb.best_model_path if best_cb is not None else ""
    best_score = _number(best_cb.best_model_score) if best_cb is not None and best_cb.best_model_score is not None else None
    test_metrics: dict[str, float] = {}
    test_seconds = 0.0
    if cfg.test_after_fit:
        test_started = time.time()
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, weights_only=False)
        test_seconds = time.time() - test_started
        test_metrics = {k: _number(v) for k, v in (results[0] if results else {}).items()}

    result = {
        "task": datamodule.task.name,
        "kind": kind,
        "model": lm.name,
        "model_source": lm.source,
        "metrics": {"test": test_metrics, "val_last": val_metrics, "best_val_score": best_score,
                    "monitor": best_cb.monitor if best_cb is not None else None},
        "majority_rate_test": (datamodule.split_info.get("test_labels") or {}).get("majority_rate"),
        "data": datamodule.split_info,
        "checkpoints": {"best": best_path, "last": (last_cb.last_model_path if last_cb is not None else ""),
                        "dir": str(best_cb.dirpath if best_cb is not None else "")},
        "resumed_from": ckpt_path,
        "start_global_step": start_step,
        "global_step": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "trainable_params": module.param_counts,
        "seed": seed,
        "seconds": {"fit": round(fit_seconds, 1), "test": round(test_seconds, 1),
                    "total": round(time.time() - started, 1)},
        "trainer": {"devices": trainer.num_devices, "strategy": type(trainer.strategy).__name__,
                    "precision": str(trainer.precision), "accumulate_grad_batches": trainer.accumulate_grad_batches},
        "provenance": provenance(model=lm.name, task=datamodule.task.name, seed=seed, data=datamodule.split_info.get("rule"),
                                 ckpt_path=best_path, overrides=_overrides()),
    }
    if trainer.is_global_zero:
        (out_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
        log.info("test metrics %s (majority-class rate %s); result.json in %s", test_metrics,
                 result["majority_rate_test"], out_dir)
    return result


def _number(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:
        return []


# --------------------------------------------------------------------------------------------------------------
# Reading a fine-tuned checkpoint back
# --------------------------------------------------------------------------------------------------------------
def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """``torch.load`` of a checkpoint file on the CPU; a missing, truncated or foreign file is an error naming the
    file and the problem (torch alone says "OSError: [Errno 22]" or "UnpicklingError" without the file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises OSError, RuntimeError, pickle/zip errors, EOFError... for bad files
        raise ValueError(f"checkpoint {path} ({path.stat().st_size} bytes) could not be read: it is truncated, "
                         f"corrupt or not a PyTorch checkpoint ({type(err).__name__}: {err})") from err


def read_checkpoint(ckpt_path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict (CPU tensors). Fails with a clear message when it was not written by an fnet module."""
    path = Path(ckpt_path).expanduser()
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, Mapping) or "fnet" not in checkpoint:
        raise ValueError(f"{path} is not an fnet fine-tuning checkpoint (no 'fnet' entry); write one with train.py")
    return checkpoint


def load_finetuned_lm(ckpt_path: str | os.PathLike) -> LoadedModel:
    """The fine-tuned causal LM of a ``train.py`` checkpoint as a :class:`~fnet.models.LoadedModel`.

    The base model is loaded by its registry name (tokenizer and architecture entry included), then every backbone
    weight in the checkpoint replaces the base's (all of them unless the run used ``checkpoint_frozen=false``).
    The task head is not part of the LM. ``name`` identifies base, checkpoint and step (so activation caches of
    different checkpoints never mix); ``fingerprint`` is the fine-tuned weights' content hash (what caches are keyed
    by, so a checkpoint overwritten at the same path is a new model); ``extra`` has the task, step and head."""
    from fnet.models import load_model

    path = Path(ckpt_path).expanduser().resolve()
    checkpoint = read_checkpoint(path)
    info = checkpoint["fnet"]
    lm = load_model(info["model_name"], **dict(info.get("model_kwargs") or {}))
    prefix = info.get("backbone_prefix", "model.")
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = lm.model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {path} has backbone weights the base model lacks: {unexpected[:5]}")
    if missing and info.get("frozen_weights_included", True):
        # tied weights (lm_head = embeddings) are saved once; anything else missing means a different base
        untied = [k for k in missing if not _is_tied(lm.model, k)]
        if untied:
            raise ValueError(f"checkpoint {path} lacks backbone weights {untied[:5]} of base {info['model_name']!r}")
    lm.model.eval()
    lm.refresh_fingerprint()  # the fine-tuned weights' content, not the base model's (nor the path's)
    step = int(checkpoint.get("global_step", 0))
    lm.name = f"{info['model_name']}+finetuned@{path}#step{step}"
    lm.source = (f"fine-tuned checkpoint {path} (task {info.get('task_name')}, global step {step}, "
                 f"trainable_layers={info.get('trainable_layers')}) of {info['model_name']} ({info.get('model_source')})")
    lm.extra.update(ckpt_path=str(path), base_model=info["model_name"], task=info.get("task_name"), global_step=step,
                    epoch=checkpoint.get("epoch"), head=info.get("head"), fnet_checkpoint=info)
    return lm


def _is_tied(model: torch.nn.Module, name: str) -> bool:
    """Whether parameter ``name`` is the same tensor as another parameter (tied LM head)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    tensor = params.get(name)
    return tensor is not None and any(p is tensor for k, p in params.items() if k != name)


def evaluation_module(cfg: Any, **overrides: Any):
    """``(LightningModule, LightningDataModule)`` for testing the fine-tuned checkpoint ``cfg.ckpt_path``.

    The module is the checkpoint's (head included, ``self.model`` = the fine-tuned LM, so a MaskCallback lesions
    it). The datamodule rebuilds the checkpoint's splits (task, source, fractions, seed, max_length), so its
    ``test`` split is exactly the held-out part the run never trained on. From ``cfg`` (all optional):
    ``paths.data_dir`` (this machine's data folder), ``task`` (must be the checkpoint's task; its ``limit`` caps
    the scored rows), ``eval.batch_size`` / ``eval.num_workers`` (evaluate.yaml), and ``finetune_eval`` /
    ``overrides`` with any datamodule setting (``eval_batch_size``, ``max_eval_rows``, ``num_workers``...)."""
    checkpoint = read_checkpoint(cfg.ckpt_path)
    info = checkpoint["fnet"]
    cls = _get_class(info["module"])
    module = cls.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=False)
    module.eval()

    data_hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if not data_hparams:
        raise ValueError(f"{cfg.ckpt_path} has no datamodule hyperparameters; it was not written by train.py")
    task = data_hparams.pop("task")
    ckpt_task = task.get("name") if isinstance(task, Mapping) else str(task)
    cfg_task = cfg.get("task")
    cfg_task_name = (cfg_task.get("name") if hasattr(cfg_task, "get") else cfg_task) if cfg_task is not None else None
    if cfg_task_name and cfg_task_name != ckpt_task:
        raise ValueError(f"checkpoint {cfg.ckpt_path} was fine-tuned on {ckpt_task!r}, not {cfg_task_name!r}: its head "
                         f"answers {ckpt_task!r} only (use task={ckpt_task})")
    data_dir = None
    try:
        data_dir = cfg.paths.get("data_dir")
    except Exception:
        pass
    extra: dict[str, Any] = {}
    ev = cfg.get("eval") or {}  # evaluate.yaml's eval block: rows per step, loader workers
    if ev.get("batch_size") is not None:
        extra["eval_batch_size"] = int(ev.get("batch_size"))
    if ev.get("num_workers") is not None:
        extra["num_workers"] = int(ev.get("num_workers"))
    limit = cfg_task.get("limit") if hasattr(cfg_task, "get") else None
    if limit:  # task.limit: score at most this many rows (a seeded subset of the held-out split)
        extra["max_eval_rows"] = int(limit)
    extra.update(_plain(cfg.get("finetune_eval") or {}), **overrides)
    data_hparams.update({k: v for k, v in extra.items() if v is not None})
    data_hparams["data_dir"] = data_dir if data_dir is not None else data_hparams.get("data_dir")
    target = QA_DATA if task_kind(task) == "qa" else CLASSIFICATION_DATA
    data_cls = _get_class(target)
    datamodule = data_cls(task=task, tokenizer=module.tokenizer, **_accepted(data_cls, data_hparams, "datamodule"))
    log.warning("evaluating fine-tuned %s on the held-out test split of %s (split seed %s, fractions %s)",
                info["model_name"], ckpt_task, data_hparams.get("split_seed"), data_hparams.get("split"))
    return module, datamodule
