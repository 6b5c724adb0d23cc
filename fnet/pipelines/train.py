"""What ``train.py`` does: fine-tune a causal LM on a task, test its best checkpoint on the held-out split, and
write ``result.json`` (metrics, split sizes and rule, data source, seed, time, provenance).

:func:`run_training` seeds, builds the model / data / LightningModule / trainer from the Hydra config, fits
(resuming from ``cfg.ckpt_path`` when given) and tests.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint

from fnet.lit.callbacks import MaskCallback
from fnet.lit.checkpoints import load_checkpoint_file
from fnet.lit.features import cached_feature_data
from fnet.lit.task_modules import (
    CLASSIFICATION_DATA,
    CLASSIFICATION_MODULE,
    QA_DATA,
    QA_MODULE,
    accepted_kwargs,
    import_class,
    task_kind,
)
from fnet.models import LoadedModel
from fnet.pipelines.hydra_utils import (
    container,
    instantiate_callbacks,
    instantiate_loggers,
    log_hyperparameters,
    overrides,
)
from fnet.provenance import provenance

log = logging.getLogger(__name__)

__all__ = ["build_datamodule", "build_module", "run_training"]


def build_datamodule(cfg: Any, tokenizer: Any, kind: str, **extra: Any):
    """The fine-tuning data module of ``cfg.datamodule`` (its ``_target_``, else the default of ``kind``:
    ``qa`` or classification), given only the keyword arguments its class accepts."""
    data_cfg = dict(container(cfg.datamodule))
    target = data_cfg.pop("_target_", None) or (QA_DATA if kind == "qa" else CLASSIFICATION_DATA)
    cls = import_class(target)
    kwargs = accepted_kwargs(cls, dict(data_cfg, **extra), "datamodule")
    return cls(task=cfg.task, tokenizer=tokenizer, **kwargs)


def build_module(cfg: Any, lm: LoadedModel, kind: str, datamodule: Any):
    """The Lightning module of ``cfg.module`` (its ``_target_``, else the default of ``kind``) for the loaded model
    and data module, given only the keyword arguments its class accepts."""
    module_cfg = dict(container(cfg.module))
    module_cfg.pop("cache_features", None)  # the pipeline's (run_training), not the module's
    target = module_cfg.pop("_target_", None) or (QA_MODULE if kind == "qa" else CLASSIFICATION_MODULE)
    cls = import_class(target)
    optimizer = instantiate(cfg.optimizer) if cfg.optimizer else None
    scheduler = instantiate(cfg.scheduler) if cfg.scheduler else None
    kwargs = dict(module_cfg, task_name=datamodule.task.name)
    if kind == "classification":
        kwargs.update(num_labels=datamodule.num_labels, metrics=datamodule.metric_names)
    kwargs = accepted_kwargs(cls, kwargs, "module")
    return cls(model=lm, optimizer=optimizer, scheduler=scheduler, **kwargs)


def _checkpoint_callbacks(callbacks: list) -> tuple[Any, Any]:
    """(the checkpoint callback that monitors a validation metric, the one that writes last.ckpt)."""
    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    best = next((c for c in checkpoints if c.monitor), None)
    last = next((c for c in checkpoints if c.save_last), None)
    return best, last


def run_training(cfg: Any) -> dict[str, Any]:
    """Fine-tune, test the best checkpoint, write ``result.json`` into ``cfg.paths.output_dir``; returns it."""
    started, cpu_started = time.time(), time.process_time()
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))  # a shared CPU: fewer threads can be much faster
    seed = int(cfg.seed)
    pl.seed_everything(seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    kind = task_kind(cfg.task)
    lm: LoadedModel = instantiate(cfg.model)
    datamodule = build_datamodule(cfg, lm.tokenizer, kind, data_dir=cfg.paths.data_dir)
    datamodule.setup("fit")
    module = build_module(cfg, lm, kind, datamodule)

    callbacks = instantiate_callbacks(cfg.callbacks)
    fit_data, features = _fit_data(cfg, lm, module, datamodule, callbacks)
    loggers = instantiate_loggers(cfg.logger)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log_hyperparameters(
        loggers,
        cfg,
        extra={"data/" + k: v for k, v in datamodule.split_info.items() if isinstance(v, (int, float, str))},
    )

    ckpt_path = cfg.ckpt_path
    start_step = _resume_step(ckpt_path)
    _, fit_seconds, fit_cpu = _timed(trainer.fit, module, datamodule=fit_data, ckpt_path=ckpt_path, weights_only=False)
    val_metrics = {k: _number(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    best_cb, last_cb = _checkpoint_callbacks(callbacks)
    best_path = best_cb.best_model_path if best_cb is not None else ""
    test_metrics: dict[str, float] = {}
    test_seconds = test_cpu = 0.0
    if cfg.test_after_fit:
        test_metrics, test_seconds, test_cpu = _test_best(trainer, module, fit_data, best_path)

    result = {
        "task": datamodule.task.name,
        "kind": kind,
        "model": lm.name,
        "model_source": lm.source,
        # the held-out score with its 95 % CI and chance level (classification_result / qa_result); null untested
        "test_result": getattr(module, "results", None) if cfg.test_after_fit else None,
        "metrics": _metrics(test_metrics, val_metrics, best_cb),
        "majority_rate_test": (datamodule.split_info.get("test_labels") or {}).get("majority_rate"),
        "data": datamodule.split_info,
        "checkpoints": _checkpoint_paths(best_cb, last_cb),
        "resumed_from": ckpt_path,
        "start_global_step": start_step,
        "global_step": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "trainable_params": module.param_counts,
        "feature_cache": features,
        "lora": getattr(module, "lora", None),
        "seed": seed,
        "seconds": _phases(features.get("seconds", 0.0), fit_seconds, test_seconds, time.time() - started),
        # CPU time of this process (every thread), the cost a shared machine's wall time hides
        "cpu_seconds": _phases(features.get("cpu_seconds", 0.0), fit_cpu, test_cpu, time.process_time() - cpu_started),
        "trainer": _trainer_setup(trainer),
        "provenance": provenance(
            model=lm.name,
            task=datamodule.task.name,
            seed=seed,
            data=datamodule.split_info.get("rule"),
            ckpt_path=best_path,
            overrides=overrides(),
        ),
    }
    if trainer.is_global_zero:
        (out_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
        log.info(
            "test metrics %s (majority-class rate %s); result.json in %s",
            test_metrics,
            result["majority_rate_test"],
            out_dir,
        )
    return result


def _fit_data(cfg: Any, lm: LoadedModel, module: Any, datamodule: Any, callbacks: list) -> tuple[Any, dict]:
    """(what the trainer fits on, the feature cache's record): the data module itself, or with
    ``module.cache_features`` the frozen lower blocks' output, computed once per row (shared by every seed) and
    replayed each step."""
    if not cfg.module.get("cache_features"):
        return datamodule, {"used": False}
    if any(isinstance(c, MaskCallback) for c in callbacks):
        raise ValueError(
            "module.cache_features=true cannot run with a mask callback: a mask changes the lower "
            "blocks whose stored output would replace them"
        )
    features_cpu = time.process_time()
    fit_data, features = cached_feature_data(
        module, datamodule, fingerprint=lm.fingerprint, dtype=lm.dtype, model_name=lm.name
    )
    features["cpu_seconds"] = round(time.process_time() - features_cpu, 1)
    return fit_data, features


def _resume_step(ckpt_path: str | None) -> int:
    """The global step of the checkpoint a run resumes from (0 for a fresh run)."""
    if not ckpt_path:
        return 0
    start_step = int(load_checkpoint_file(ckpt_path).get("global_step", 0))
    log.warning("resuming from %s (global step %d)", ckpt_path, start_step)
    return start_step


def _timed(step: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """(what ``step(*args, **kwargs)`` returns, its wall seconds, its CPU seconds in this process)."""
    wall, cpu = time.time(), time.process_time()
    value = step(*args, **kwargs)
    return value, time.time() - wall, time.process_time() - cpu


def _test_best(trainer: Any, module: Any, fit_data: Any, best_path: str) -> tuple[dict[str, Any], float, float]:
    """(test metrics, wall seconds, CPU seconds) of testing the best checkpoint (the last weights without one)."""
    results, test_seconds, test_cpu = _timed(
        trainer.test, module, datamodule=fit_data, ckpt_path=best_path or None, weights_only=False
    )
    return {k: _number(v) for k, v in (results[0] if results else {}).items()}, test_seconds, test_cpu


def _metrics(test_metrics: dict[str, Any], val_metrics: dict[str, Any], best_cb: Any) -> dict[str, Any]:
    """The test metrics, the last validation metrics, and the best validation score with the metric it monitors."""
    best_score = (
        _number(best_cb.best_model_score) if best_cb is not None and best_cb.best_model_score is not None else None
    )
    return {
        "test": test_metrics,
        "val_last": val_metrics,
        "best_val_score": best_score,
        "monitor": best_cb.monitor if best_cb is not None else None,
    }


def _phases(features: float, fit: float, test: float, total: float) -> dict[str, float]:
    """Seconds per phase, rounded to a tenth (features: as the feature cache recorded them)."""
    return {"features": features, "fit": round(fit, 1), "test": round(test, 1), "total": round(total, 1)}


def _checkpoint_paths(best_cb: Any, last_cb: Any) -> dict[str, str]:
    """The best and last checkpoints' files and their folder ("" where no callback writes them)."""
    return {
        "best": best_cb.best_model_path if best_cb is not None else "",
        "last": (last_cb.last_model_path if last_cb is not None else ""),
        "dir": str(best_cb.dirpath if best_cb is not None else ""),
    }


def _trainer_setup(trainer: Any) -> dict[str, Any]:
    """How the trainer ran: devices, strategy, precision, gradient accumulation."""
    return {
        "devices": trainer.num_devices,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(trainer.precision),
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
    }


def _number(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value
