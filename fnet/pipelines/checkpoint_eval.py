"""A fine-tuned checkpoint for ``evaluate.py ckpt_path=...``: its LightningModule and a DataModule whose test
split is exactly the checkpoint's held-out split (same task, fractions and seed), ready for ``trainer.test``.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from fnet.lit.checkpoints import old_module_paths, read_checkpoint
from fnet.lit.task_modules import CLASSIFICATION_DATA, QA_DATA, accepted_kwargs, import_class, task_kind
from fnet.pipelines.hydra_utils import container

log = logging.getLogger(__name__)

__all__ = ["evaluation_module"]


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
    cls = import_class(info["module"])
    with old_module_paths():  # a checkpoint written before fnet's modules moved
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
        raise ValueError(
            f"checkpoint {cfg.ckpt_path} was fine-tuned on {ckpt_task!r}, not {cfg_task_name!r}: its head "
            f"answers {ckpt_task!r} only (use task={ckpt_task})"
        )
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
    extra.update(container(cfg.get("finetune_eval") or {}), **overrides)
    data_hparams.update({k: v for k, v in extra.items() if v is not None})
    data_hparams["data_dir"] = data_dir if data_dir is not None else data_hparams.get("data_dir")
    target = QA_DATA if task_kind(task) == "qa" else CLASSIFICATION_DATA
    data_cls = import_class(target)
    datamodule = data_cls(
        task=task, tokenizer=module.tokenizer, **accepted_kwargs(data_cls, data_hparams, "datamodule")
    )
    log.warning(
        "evaluating fine-tuned %s on the held-out test split of %s (split seed %s, fractions %s)",
        info["model_name"],
        ckpt_task,
        data_hparams.get("split_seed"),
        data_hparams.get("split"),
    )
    return module, datamodule
