"""Fine-tuning pieces the Lightning modules and pipelines share: which module and data module a task gets,
the learning-rate schedule factory (``conf/scheduler/*.yaml`` points at :func:`warmup_scheduler`), and keyword
filtering so one config serves both heads.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from typing import Any, Mapping

import torch
from transformers import get_scheduler

from fnet.scoring.tasks import get_task

log = logging.getLogger(__name__)

__all__ = ["CLASSIFICATION_MODULE", "QA_MODULE", "CLASSIFICATION_DATA", "QA_DATA", "warmup_scheduler", "task_kind", "import_class", "accepted_kwargs"]


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
    warmup = int(num_warmup_steps) if num_warmup_steps is not None else int(math.ceil(warmup_ratio * num_training_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=int(num_training_steps))


# --------------------------------------------------------------------------------------------------------------
# Which module for which task
# --------------------------------------------------------------------------------------------------------------
def task_kind(task: Any) -> str:
    """``classification`` (multiple-choice tasks: GLUE, AG News) or ``qa`` (SQuAD); other task types cannot be
    fine-tuned with a head."""
    spec = get_task(task)
    if spec.type == "multiple_choice":
        return "classification"
    if spec.type == "generation" and spec.name.startswith("squad"):
        return "qa"
    raise ValueError(
        f"task {spec.name!r} (type {spec.type}) has no fine-tuning head; fine-tune a classification task "
        f"(sst2, cola, mrpc, qqp, mnli, qnli, ag_news) or squad"
    )


def import_class(path: str) -> type:
    """The class at dotted ``path`` (``package.module.Class``); an error names the path when it does not resolve."""
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ImportError(f"class {path!r} could not be imported: {err}") from err
    if not isinstance(cls, type):
        raise TypeError(f"{path!r} is a {type(cls).__name__}, not a class")
    return cls


def accepted_kwargs(cls, kwargs: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The keyword arguments ``cls`` takes; others are logged and dropped (one config serves both heads)."""
    params = inspect.signature(cls.__init__).parameters
    out = {k: v for k, v in kwargs.items() if k in params}
    dropped = sorted(set(kwargs) - set(out))
    if dropped:
        log.info("%s: %s does not take %s (ignored)", what, cls.__name__, dropped)
    return out
