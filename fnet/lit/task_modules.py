"""The registry of fine-tuning task modules: which LightningModule and LightningDataModule a task gets
(:func:`task_kind`, the class paths below), importing a class by its dotted path, and keyword filtering so one
config serves both heads. ``train.py`` builds a run from it and ``evaluate.py ckpt_path=...``
(:mod:`fnet.pipelines.checkpoint_eval`) rebuilds a checkpoint's data module from it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any, Mapping

from fnet.scoring.tasks import get_task

log = logging.getLogger(__name__)

__all__ = [
    "CLASSIFICATION_MODULE",
    "QA_MODULE",
    "CLASSIFICATION_DATA",
    "QA_DATA",
    "task_kind",
    "import_class",
    "accepted_kwargs",
]


CLASSIFICATION_MODULE = "fnet.lit.classification.SequenceClassificationModule"
QA_MODULE = "fnet.lit.qa.ExtractiveQAModule"
CLASSIFICATION_DATA = "fnet.lit.datamodules.TaskDataModule"
QA_DATA = "fnet.lit.datamodules.SquadDataModule"


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
