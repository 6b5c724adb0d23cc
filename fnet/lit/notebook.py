"""``fnet.evaluate(model, task, mask=None, limit=None)``: one task's score in a notebook, with its CI and chance.

The same Lightning test loop that ``evaluate.py`` runs (:class:`~fnet.lit.zeroshot_data.ZeroShotDataModule` and
:class:`~fnet.lit.zeroshot.ZeroShotModule` under ``Trainer.test``), without Hydra, loggers or checkpoints; a
mask, when given, is applied around the whole loop with :func:`fnet.intervene.apply_mask`.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import lightning.pytorch as pl

from fnet.intervene.apply import MaskSpec, apply_mask
from fnet.lit.zeroshot import ZeroShotModule
from fnet.lit.zeroshot_data import ZeroShotDataModule
from fnet.scoring.tasks import get_task, load_task_config

__all__ = ["evaluate", "load_task"]


def load_task(name: str, **overrides: Any):
    """A task by name (``conf/task/<name>.yaml``: sst2, cola, mrpc, qqp, mnli, qnli, ag_news, squad, wikitext2),
    with field overrides, e.g. ``load_task("sst2", num_fewshot=8)``.

    Parameters
    ----------
    name : str
        A task of ``conf/task`` (:func:`fnet.scoring.tasks.available_tasks`).
    **overrides
        Task fields to replace (``num_fewshot``, ``limit``, ``calibrate``, ...; see ``conf/task/_base.yaml``).

    Returns
    -------
    TaskSpec
        The validated task (:class:`~fnet.scoring.TaskSpec`).

    Raises
    ------
    ValueError
        For an unknown task, an unknown field (the message lists the valid ones) or an invalid value.

    Examples
    --------
    >>> load_task("sst2").choices
    ['negative', 'positive']
    >>> load_task("mnli", limit=50).limit, load_task("mnli").n_choices
    (50, 3)
    >>> load_task("sst2", shots=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: load_task('sst2'): unknown field(s) ['shots']; valid fields: [...]
    """
    config = load_task_config(name)
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"load_task({name!r}): unknown field(s) {unknown}; valid fields: {sorted(config)}")
    config.update(overrides)
    return get_task(config)


def evaluate(
    model: Any,
    task: Any,
    mask: MaskSpec | Any = None,
    limit: int | None = None,
    *,
    batch_size: int = 8,
    data_dir: str | None = None,
    bootstrap: int = 1000,
    tokenizer: Any = None,
) -> dict:
    """Score a model on a task, optionally under a mask.

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        With a bare module, pass ``tokenizer``.
    task : str, mapping or TaskSpec
        A task name (``"sst2"``), a task config, or :func:`load_task`'s result.
    mask : MaskSpec or bool tensor ``[n_layers, width]``, optional
        Applied during scoring (e.g. :func:`fnet.random_control`'s spec). For networks, prefer the
        :func:`fnet.lesion` / :func:`fnet.preserve` context managers around this call.
    limit : int, optional
        Score a seeded subsample of this many rows.
    batch_size, data_dir, bootstrap
        Rows per step; the offline data folder (default ``$FNET_DATA_DIR`` or ``../shared/data``); bootstrap
        resamples for the CIs of MCC / F1 / SQuAD / perplexity (accuracy uses Wilson's interval).
    tokenizer : optional
        The tokenizer, needed only with a bare ``torch.nn.Module`` (a :class:`~fnet.models.LoadedModel` has one).

    Returns
    -------
    dict
        ``task``, ``metric``, ``score``, ``ci`` [low, high], ``n``, ``chance``, ``above_chance`` and every
        metric under ``metrics`` (as in ``result.json``).

    Examples
    --------
    Scoring needs the offline data folder, so this example is shown rather than run (the same call runs in
    tests/test_api.py; on ``tiny:gpt2`` with ``limit=4`` it takes under a second)::

        lm = fnet.load_model("tiny:gpt2")
        result = fnet.evaluate(lm, fnet.load_task("sst2", num_fewshot=2), limit=4)
        result["task"], result["metric"], result["n"]     # ('sst2', 'accuracy', 4)
        with fnet.lesion(lm, nets, 0):                    # the same rows with network 0 zeroed
            lesioned = fnet.evaluate(lm, "sst2", limit=4)

    What it scores is the task :func:`load_task` describes:

    >>> task = load_task("sst2", num_fewshot=2)
    >>> task.type, task.primary_metric, task.label_names, task.num_fewshot
    ('multiple_choice', 'accuracy', ['negative', 'positive'], 2)
    """
    module_model = getattr(model, "model", model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("evaluate: a bare nn.Module needs tokenizer=...; or pass fnet.load_model(...)'s result")
    spec = get_task(task)
    datamodule = ZeroShotDataModule(spec, tokenizer, data_dir=data_dir, batch_size=batch_size, limit=limit)
    module = ZeroShotModule(module_model, tokenizer, spec, bootstrap=bootstrap)
    device = next(module_model.parameters()).device
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    context = apply_mask(module_model, mask) if mask is not None else contextlib.nullcontext()
    with context, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
        trainer.test(module, datamodule=datamodule, verbose=False)
    results = dict(module.results)
    primary = results["metrics"][results["metric"]]
    results["chance"] = primary.get("chance")
    if mask is not None:
        results["mask"] = {
            "n_masked": int(getattr(mask, "n_masked", int(getattr(mask, "sum", lambda: 0)()))),
            "description": getattr(mask, "description", ""),
        }
    return results
