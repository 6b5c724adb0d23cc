"""The result row of an ``evaluate.py`` job: the content of ``result.json`` (:func:`result_row`), its line of the
W&B result table (:func:`table_row`, :func:`log_wandb`) and the JSON-safe values it is made of (:func:`json_safe`).

Kept apart from :mod:`fnet.pipelines.evaluate` so that the run reads as its steps. :func:`json_safe` also shapes
the cached unmasked baselines, so this module is part of ``fnet.pipelines.evaluate.BASELINE_CODE``.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from fnet.intervene import MASKS
from fnet.pipelines.hydra_utils import overrides
from fnet.provenance import provenance

__all__ = ["TABLE_COLUMNS", "result_row", "table_row", "log_wandb", "json_safe"]

#: columns of the one-row result table logged to W&B
TABLE_COLUMNS = [
    "task",
    "metric",
    "score",
    "ci_low",
    "ci_high",
    "mask",
    "networks",
    "seed",
    "K",
    "n_masked",
    "fraction",
    "baseline",
    "baseline_ci_low",
    "baseline_ci_high",
    "chance",
    "above_chance",
    "n",
]


def result_row(
    results: dict,
    mask: dict,
    baseline: dict | None,
    cfg: Any,
    extra: dict | None = None,
    identity: dict | None = None,
    job_overrides: list[str] | None = None,
) -> dict:
    """The content of result.json: the task's results, the mask, the unmasked baseline and provenance.

    ``identity`` is the evaluated model's (name, fingerprint, dtype, source): the provenance records that model,
    never a config that was not evaluated (with ``ckpt_path`` the checkpoint's model; a different ``model``
    config is noted as ``model_config_ignored``). ``job_overrides`` replaces Hydra's overrides in the provenance
    (jobs run by ``fnet.pipelines.evaluate_batch``)."""

    K = mask.get("K")
    kind = MASKS[mask.get("mode") or "none"]
    if K is None and "ica" in cfg and kind.needs_networks and not mask.get("networks_file"):
        K = int(cfg.ica.n_components)
    row = dict(results)
    row["mask"] = mask
    row["mask_mode"] = mask.get("mode")
    row["networks"] = mask.get("network_ids", mask.get("networks"))
    row["seed"] = mask.get("seed") if kind.seeded else None
    row["K"] = K
    if baseline is not None:
        row["baseline"] = {k: baseline.get(k) for k in ("score", "ci", "above_chance", "metrics", "chance", "n")}
        row["above_chance_unmasked"] = baseline.get("above_chance")
        row["delta"] = None if baseline.get("score") is None else row["score"] - baseline["score"]
    elif mask.get("mode") == "none":
        row["baseline"] = None
        row["above_chance_unmasked"] = results.get("above_chance")
    else:
        row["baseline"] = None
        row["above_chance_unmasked"] = None
    model_name = cfg.model.name if "model" in cfg else None
    model_fields = dict(identity) if identity is not None else {"model": model_name}
    if identity is not None and model_name is not None and model_name != identity.get("model"):
        model_fields["model_config_ignored"] = model_name
    if mask.get("foreign"):
        model_fields["foreign_networks"] = mask["foreign"]
    model_fields.pop("ckpt_path", None)  # a checkpoint's identity names it too; cfg.ckpt_path below is the same
    row["provenance"] = provenance(
        **model_fields,
        signal=cfg.record.signal if "record" in cfg else None,
        data=(extra or {}).get("data"),
        seed=int(cfg.seed),
        K=K,
        task=results.get("task"),
        ckpt_path=cfg.ckpt_path,
        overrides=overrides() if job_overrides is None else list(job_overrides),
        output_dir=str(cfg.paths.output_dir),
    )
    return json_safe(row)


def table_row(row: dict) -> list:
    """One result row as a line of the W&B result table.

    Parameters
    ----------
    row : dict
        A result row (:func:`result_row`).

    Returns
    -------
    list
        Its values in the order of :data:`TABLE_COLUMNS`.
    """
    mask = row.get("mask") or {}
    base = row.get("baseline") or {}
    ci = row.get("ci") or [None, None]
    bci = base.get("ci") or [None, None]
    chance = (row.get("metrics", {}).get(row.get("metric"), {}) or {}).get("chance")
    return [
        row.get("task"),
        row.get("metric"),
        row.get("score"),
        ci[0],
        ci[1],
        row.get("mask_mode"),
        str(row.get("networks")),
        row.get("seed"),
        row.get("K"),
        mask.get("n_masked"),
        mask.get("fraction"),
        base.get("score"),
        bci[0],
        bci[1],
        chance,
        row.get("above_chance_unmasked"),
        row.get("n"),
    ]


def log_wandb(loggers: list, row: dict, mask: dict) -> None:
    """Log a job's result to each W&B logger: scalars, the result table, the mask per layer and the run summary.

    Parameters
    ----------
    loggers : list
        The job's Lightning loggers; those that are not W&B loggers are skipped.
    row : dict
        The job's result row (:func:`result_row`).
    mask : dict
        The job's mask statistics (``row["mask"]``).
    """
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        scalars = {
            "result/score": row.get("score"),
            "mask/n_masked": mask.get("n_masked"),
            "mask/fraction": mask.get("fraction"),
        }
        if row.get("baseline"):
            scalars["result/baseline"] = row["baseline"].get("score")
        logger.log_metrics({k: float(v) for k, v in scalars.items() if isinstance(v, (int, float))})
        logger.log_table(key="result", columns=TABLE_COLUMNS, data=[table_row(row)])
        if mask.get("per_layer"):
            logger.log_table(
                key="mask_per_layer",
                columns=["layer", "n_masked"],
                data=[[i, c] for i, c in enumerate(mask["per_layer"])],
            )
        logger.experiment.summary.update(
            {"result": {k: row.get(k) for k in ("task", "metric", "score", "ci", "above_chance_unmasked")}}
        )


def json_safe(value: Any) -> Any:
    """``value`` as JSON can hold it: keys as strings, tuples as lists, NaN and infinities as None, 0-d tensors and
    numpy scalars as Python numbers.

    Parameters
    ----------
    value : Any
        A result, a mask's statistics or metadata, a provenance record.

    Returns
    -------
    Any
        The same structure with only JSON values.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return json_safe(value.item())
    return value
