"""What ``evaluate.py`` does: evaluate a (masked) language model on one task and write ``result.json``.

:func:`run` reads top-down, one step per line, from a Hydra config (``conf/evaluate.yaml``):

1. **load** the model (``hydra.utils.instantiate(cfg.model)`` -> :class:`fnet.models.LoadedModel`) with the task's
   rows (``cfg.task`` as a :class:`fnet.lit.zeroshot_data.ZeroShotDataModule`), or, when ``cfg.ckpt_path`` is set, a
   fine-tuned checkpoint with its held-out split (:func:`fnet.pipelines.checkpoint_eval.evaluation_module`); from a
   :class:`ModelPool` when the caller keeps models between jobs (``fnet.pipelines.evaluate_batch``);
2. **mask** (``cfg.mask`` -> :func:`fnet.intervene.build_mask`); its networks come from ``cfg.mask.networks_file``
   or, when that is null, from ``fnet.pipelines._common.networks_for_config(cfg, lm)`` (computed once, cached);
3. **baseline**: the unmasked score of the same rows (``eval.baseline``; cached on disk per model x task x rows),
   so every result row carries the unmasked score, its 95 % CI and whether the unmasked model is above chance;
4. **test**: a Lightning ``Trainer`` (``cfg.trainer``) with the callbacks (``cfg.callbacks``; the mask callback is
   finished with the spec) and loggers (``cfg.logger``), then ``trainer.test``;
5. **write** ``result.json`` (its row: :func:`fnet.pipelines.evaluate_result.result_row`) and
   ``predictions.jsonl`` in the job's output folder; W&B gets the config, metrics, mask statistics and the result
   table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate

from fnet.cache import atomic_write_text, code_version, content_key, lock, quarantine, register
from fnet.intervene import MASKS, build_mask, expected_mask_shape
from fnet.lit.callbacks import MaskCallback, hooked_model
from fnet.lit.zeroshot import ZeroShotModule
from fnet.lit.zeroshot_data import ZeroShotDataModule
from fnet.models import model_fingerprint
from fnet.networks import NetworkSet, check_compatible
from fnet.pipelines._common import load_lm, networks_for_config, scale_for_mask
from fnet.pipelines.checkpoint_eval import evaluation_module
from fnet.pipelines.evaluate_result import TABLE_COLUMNS, json_safe, log_wandb, result_row
from fnet.pipelines.hydra_utils import container, instantiate_loggers, log_hyperparameters
from fnet.scoring.tasks import get_task

log = logging.getLogger(__name__)

__all__ = [
    "run",
    "ModelPool",
    "Loaded",
    "load_model_and_rows",
    "mask_and_networks",
    "result_row",
    "baseline_cache_key",
    "TABLE_COLUMNS",
]

#: the modules whose source determines an unmasked baseline (part of its cache key)
BASELINE_CODE = (
    "fnet.models",
    "fnet.hooks",
    "fnet.batching",
    "fnet.scoring",
    "fnet.lit",
    "fnet.pipelines.evaluate",
    "fnet.pipelines.evaluate_result",
    "fnet.pipelines.checkpoint_eval",
)


def run(cfg: Any, job_overrides: list[str] | None = None, models: ModelPool | None = None) -> dict:
    """Evaluate one (task, mask) job; returns the result row (also written to ``result.json``).

    ``job_overrides``: the job's overrides for the result's provenance when it does not run as a Hydra job
    (default: Hydra's command-line overrides). ``models``: the pool of loaded models that the jobs of one process
    share (:class:`ModelPool`); without it the model is loaded for this job alone."""
    pl.seed_everything(int(cfg.seed), workers=True)
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    with models.lend(cfg) if models is not None else contextlib.nullcontext(load_model_and_rows(cfg)) as loaded:
        spec, mask = _job_mask(cfg, loaded)
        baseline = _unmasked_baseline(cfg, loaded) if spec is not None and cfg.eval.baseline else None
        loggers = instantiate_loggers(cfg.logger)
        trainer = instantiate(cfg.trainer, callbacks=_callbacks(cfg, spec), logger=loggers or False)
        log_hyperparameters(loggers, cfg, extra={"mask_stats": {k: v for k, v in mask.items() if k != "per_layer"}})
        results = _test(trainer, loaded.module, loaded.datamodule)
        if spec is None and cfg.eval.baseline and trainer.world_size == 1:
            _seed_baseline_cache(cfg, loaded, results)  # an unmasked job is its own baseline
        data = getattr(loaded.datamodule, "provenance", None)
        row = result_row(
            results, mask, baseline, cfg, extra={"data": data}, identity=loaded.identity, job_overrides=job_overrides
        )
        row.update(data=json_safe(data), world_size=int(trainer.world_size))
        if trainer.is_global_zero:
            _write_outputs(cfg, row, loaded.module, mask, loggers)
    return row


# --------------------------------------------------------------------------------------------------------------
# Load: the model (or checkpoint) and its task's rows, and the pool that keeps them between jobs
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loaded:
    """What a job runs on: the plain model (``lm``; None for a fine-tuned checkpoint), the LightningModule and
    DataModule of its task, the task (``task``: its dict; for a checkpoint the path and task config) and the
    evaluated model's identity (:func:`_identity`)."""

    lm: Any
    module: Any
    datamodule: Any
    task: dict
    identity: dict


def load_model_and_rows(cfg: Any) -> Loaded:
    """The model (``cfg.model``) or fine-tuned checkpoint (``cfg.ckpt_path``) with its task's rows. The identity is
    taken as loaded, before any job: a job's datamodule may set the tokenizer's padding, which is part of the
    fingerprint."""
    ev = cfg.eval
    if cfg.ckpt_path:
        module, datamodule = evaluation_module(cfg)
        lm, task = None, {"ckpt_path": str(cfg.ckpt_path), "task": container(cfg.task)}
    else:
        lm = instantiate(cfg.model)
        spec = get_task(cfg.task)
        module = ZeroShotModule(
            lm.model, lm.tokenizer, spec, max_length=ev.max_length, bootstrap=int(ev.bootstrap), ci_seed=int(cfg.seed)
        )
        datamodule = ZeroShotDataModule(
            spec,
            lm.tokenizer,
            data_dir=cfg.paths.data_dir,
            batch_size=int(ev.batch_size),
            num_workers=int(ev.num_workers),
            max_length=module.max_length,
        )
        task = spec.to_dict()
    return Loaded(lm, module, datamodule, task, _identity(lm, module, cfg))


class ModelPool:
    """Loaded models or checkpoints, with their task's rows, kept between the jobs of one process.

    :meth:`lend` gives a job the :class:`Loaded` of an earlier job that asked for the same model or checkpoint,
    task, evaluation and data settings, so jobs that differ only in their mask (a study's lesions, controls and
    preservations) load the model once (``fnet.pipelines.evaluate_batch``). A mask is hooks that are removed after
    each job; a job that ends with a different number of hooks on the model than it started with (an error
    midway) drops that model from the pool, so no later job sees a stale mask."""

    def __init__(self) -> None:
        self._kept: dict[str, Loaded] = {}

    @contextlib.contextmanager
    def lend(self, cfg: Any) -> Iterator[Loaded]:
        key = _pool_key(cfg)
        if key in self._kept:
            log.info("model and rows reused from the previous job of this process")
        else:
            self._kept[key] = load_model_and_rows(cfg)
        loaded = self._kept[key]
        n_hooks = _n_hooks(loaded.module)
        try:
            yield loaded
        finally:
            if _n_hooks(loaded.module) != n_hooks:
                log.warning("the model kept more hooks after this job than before it: it is not reused")
                self._kept.pop(key, None)


def _pool_key(cfg: Any) -> str:
    model = str(cfg.ckpt_path) if cfg.ckpt_path else container(cfg.model)
    return content_key(
        model,
        container(cfg.task),
        container(cfg.eval),
        container(cfg.get("finetune_eval")),
        str(cfg.paths.data_dir),
        int(cfg.seed),
    )


def _n_hooks(module: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _identity(lm: Any, module: Any, cfg: Any) -> dict:
    """What result.json and the caches record about the evaluated model: ``lm.identity()``, or for a fine-tuned
    checkpoint its base model, path and the fingerprint of the weights in the LightningModule."""

    if lm is not None:
        return lm.identity()
    model = hooked_model(module)
    dtype = next((str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()), "none")
    base = getattr(module, "model_name", None) or "?"
    return {
        "model": f"{base}+finetuned@{Path(str(cfg.ckpt_path)).expanduser().resolve()}",
        "model_fingerprint": model_fingerprint(model, getattr(module, "tokenizer", None)),
        "model_dtype": dtype,
        "model_source": f"fine-tuned checkpoint {cfg.ckpt_path} of {base}",
        "ckpt_path": str(cfg.ckpt_path),
    }


# --------------------------------------------------------------------------------------------------------------
# Mask
# --------------------------------------------------------------------------------------------------------------
def _job_mask(cfg: Any, loaded: Loaded) -> tuple[Any, dict]:
    """The job's mask (None: unmasked) and its statistics for result.json (with ``foreign``, both identities, when
    ``mask.allow_foreign=true`` let networks of another model through)."""
    if loaded.lm is None:
        spec, netset, foreign = _checkpoint_mask(cfg, loaded)
    else:
        spec, netset, foreign = mask_and_networks(cfg, loaded.lm, identity=loaded.identity)
    mask = mask_summary(spec, netset, cfg)
    if foreign is not None:
        mask["foreign"] = foreign
    log.info("mask: %s", mask.get("description"))
    return spec, mask


def _checkpoint_mask(cfg: Any, loaded: Loaded):
    """:func:`mask_and_networks` for a fine-tuned checkpoint: the mask's shape comes from its LM, and networks (or
    the neuron scale) that must be computed are computed in the fine-tuned LM."""
    signal = cfg.record.signal if "record" in cfg else "mlp_out"
    n_layers, width = expected_mask_shape(hooked_model(loaded.module), signal)
    kind = MASKS[cfg.mask.mode]
    # the fine-tuned backbone (fnet.pipelines._common.load_lm follows cfg.ckpt_path), as analyze.py ckpt_path=...
    # uses: networks_for_config caches under the checkpoint's key, so base-model networks must never land there
    needs_lm = (kind.needs_networks and not cfg.mask.networks_file) or (
        (kind.needs_scale or cfg.mask.ablation == "mean") and not cfg.mask.scale_file
    )
    base_lm = load_lm(cfg) if needs_lm else None
    return mask_and_networks(cfg, base_lm, n_layers=n_layers, width=width, identity=loaded.identity)


def mask_and_networks(
    cfg: Any, lm: Any = None, *, n_layers: int | None = None, width: int | None = None, identity: dict | None = None
):
    """``(MaskSpec | None, NetworkSet | None, foreign | None)`` from ``cfg.mask`` (signal ``cfg.record.signal``).

    What the mode needs comes from its :data:`fnet.intervene.MASKS` entry. Networks: ``cfg.mask.networks_file``
    when set, else ``fnet.pipelines._common.networks_for_config(cfg, lm)``; the neuron scale (magnitude-matched
    controls, massive units): :func:`fnet.pipelines._common.scale_for_mask`. Before a mask is built from the
    networks they are checked against the model that will be masked (``identity``: ``model`` and
    ``model_fingerprint``, default ``lm.identity()``) with :func:`fnet.networks.check_compatible`: networks of
    another model, signal or shape are an error, unless ``cfg.mask.allow_foreign`` is true; then ``foreign``
    describes both sides for result.json. The spec's ``meta["scale"]`` is the scale's provenance.
    """
    mask_cfg = dict(container(cfg.mask) or {})
    mode = mask_cfg.pop("mode")  # every conf/mask/*.yaml has the same keys (the schema checks them)
    allow_foreign = bool(mask_cfg.pop("allow_foreign"))
    mask_cfg.pop("scale_file")
    signal = cfg.record.signal if "record" in cfg else "mlp_out"
    kind = MASKS[mode]
    if mode == "none":
        return None, None, None
    netset = None
    if kind.needs_networks and not mask_cfg["networks_file"]:
        if lm is None:
            raise ValueError(f"mask mode {mode!r} needs networks: set mask.networks_file or give the model")
        netset = networks_for_config(cfg, lm)
    elif kind.needs_networks:
        netset = NetworkSet.load(mask_cfg["networks_file"])  # a user file: unreadable is an error naming it
    if lm is not None and (n_layers is None or width is None):
        n_layers, width = lm.n_layers, lm.width(signal)
    if identity is None and lm is not None:
        identity = lm.identity()
    foreign = None
    if netset is not None and identity is not None and n_layers is not None and width is not None:
        source = f"networks {mask_cfg['networks_file']}" if mask_cfg["networks_file"] else "networks"
        foreign = check_compatible(
            netset,
            model=identity.get("model"),
            fingerprint=identity.get("model_fingerprint"),
            n_layers=n_layers,
            width=width,
            signal=signal,
            allow_foreign=allow_foreign,
            source=source,
            override="mask.allow_foreign=true",
        )
    needs_scale = kind.needs_scale or mask_cfg["ablation"] == "mean"  # mean ablation reads the scale file's means
    scale, scale_prov = scale_for_mask(cfg, lm, netset) if needs_scale else (None, {})
    means = scale_prov.pop("mean", None)
    spec = build_mask(
        mode, netset=netset, signal=signal, n_layers=n_layers, width=width, scale=scale, means=means, **mask_cfg
    )
    if scale_prov:
        spec.meta["scale"] = scale_prov
    return spec, netset, foreign


def mask_summary(spec: Any, netset: Any, cfg: Any) -> dict:
    """JSON-able mask statistics for result.json: mode, networks, seed, counts per layer / total / fraction."""
    mask_cfg = dict(container(cfg.mask) or {})
    out = {
        "mode": mask_cfg["mode"],
        "networks": mask_cfg["networks"],
        "seed": mask_cfg["seed"],
        "fraction_requested": mask_cfg["fraction"],
        "value": mask_cfg["value"],
        "exclude_reference": mask_cfg["exclude_reference"],
        "networks_file": mask_cfg["networks_file"],
        "stream": mask_cfg["stream"],
        "scale_file": mask_cfg["scale_file"],
    }
    if spec is None:
        out.update(n_masked=0, fraction=0.0, per_layer=None, description="no mask")
        return out
    summary = spec.summary()
    out.update(
        description=summary.get("description"),
        n_masked=int(spec.stats["n_masked"]),
        fraction=float(spec.stats["fraction"]),
        per_layer=list(spec.stats["per_layer"]),
        signal=summary.get("signal"),
        apply_mode=summary.get("mode"),
        network_ids=summary.get("networks"),
        n_preserved=summary.get("n_preserved"),
        n_neurons=int(spec.mask.numel()),
        meta=json_safe(spec.meta),
    )
    if netset is not None:
        out["K"] = int(netset.n_networks)
        out["network_sizes"] = [int(s) for s in netset.sizes()]
        out["netset"] = netset_fingerprint(netset)
        out["netset_model"] = {k: netset.provenance.get(k) for k in ("model", "model_fingerprint", "signal")}
    return out


def netset_fingerprint(netset: Any) -> str:
    """A short content hash of a NetworkSet's masks: jobs of a sweep that used different networks (a changed
    analysis config or code recomputed them) are told apart by it, and ``fnet.report.sweep`` never pools them."""
    masks = netset.masks.to(torch.uint8).contiguous().numpy()  # [K, layer, unit]
    return hashlib.sha1(masks.tobytes() + str(masks.shape).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------------------
# Unmasked baseline (cached per model x task x rows)
# --------------------------------------------------------------------------------------------------------------
def _unmasked_baseline(cfg: Any, loaded: Loaded) -> dict:
    """The unmasked result on the same rows: from the on-disk cache, or computed with a plain trainer."""
    path = _baseline_path(cfg, baseline_cache_key(cfg, loaded.task, loaded.identity))
    cached = _read_baseline(path)
    if cached is not None:
        log.info("unmasked baseline from cache %s", path)
        return cached
    log.info("computing the unmasked baseline (cached as %s)", path)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    results = _test(trainer, loaded.module, loaded.datamodule)
    if trainer.is_global_zero:
        with lock(path):
            _write_baseline(path, results, loaded.identity)
    return results


def _seed_baseline_cache(cfg: Any, loaded: Loaded, results: dict) -> None:
    """An unmasked job's results are the baseline of its rows: cached, so the masked jobs of a sweep reuse them."""
    path = _baseline_path(cfg, baseline_cache_key(cfg, loaded.task, loaded.identity))
    with lock(path):
        if _read_baseline(path) is None:
            _write_baseline(path, results, loaded.identity)


def baseline_cache_key(cfg: Any, task_dict: dict, identity: dict | None = None) -> str:
    """Key of the unmasked baseline: the evaluated model's content (``identity``: fingerprint and dtype; without
    it the ``model`` config), the task, the rows (data folder, seed), the evaluation settings and the version of
    the code that scores them (:func:`fnet.cache.code_version`)."""

    payload = {
        "task": task_dict,
        "eval": container(cfg.eval),
        "data_dir": str(Path(cfg.paths.data_dir).resolve()),
        "code": code_version(*BASELINE_CODE),
        "seed": int(cfg.seed),
    }
    if identity is not None:
        payload["model"] = {k: identity.get(k) for k in ("model_fingerprint", "model_dtype")}
    else:
        payload["model"] = container(cfg.model)
    payload["eval"] = {k: v for k, v in (payload["eval"] or {}).items() if k in ("max_length", "bootstrap")}
    return content_key(payload)


def _baseline_path(cfg: Any, key: str) -> Path:
    return Path(cfg.paths.cache_dir) / "eval_baselines" / f"{key}.json"


def _read_baseline(path: Path) -> dict | None:
    """A cached baseline, or None; an unreadable one is moved aside (and recomputed by the caller)."""
    if not path.exists():
        return None
    try:
        cached = json.loads(path.read_text())
        if not isinstance(cached, dict) or "score" not in cached:
            raise ValueError("not a baseline result (no 'score')")
        return cached
    except (OSError, ValueError) as err:
        quarantine(path, err)
        return None


def _write_baseline(path: Path, results: dict, identity: dict | None) -> None:

    record = dict(json_safe(results), provenance=json_safe(identity or {}))
    atomic_write_text(path, json.dumps(record, indent=1))
    identity = identity or {}
    register(
        path,
        "eval_baselines",
        model=identity.get("model"),
        fingerprint=identity.get("model_fingerprint"),
        task=results.get("task"),
    )


# --------------------------------------------------------------------------------------------------------------
# Test
# --------------------------------------------------------------------------------------------------------------
def _callbacks(cfg: Any, spec: Any) -> list:

    callbacks = []
    for name, conf in (cfg.callbacks or {}).items():
        if conf is None or "_target_" not in conf:
            continue
        made = instantiate(conf)
        if name == "mask":
            made = made(spec=spec)  # the mask callback is a partial finished with this run's spec
        callbacks.append(made)
    if spec is not None and not any(type(c).__name__ == "MaskCallback" for c in callbacks):
        callbacks.append(MaskCallback(spec))
    return callbacks


def _test(trainer: Any, module: Any, datamodule: Any) -> dict:
    out = trainer.test(module, datamodule=datamodule, verbose=False)
    results = getattr(module, "results", None)
    if results is None:  # a module without fnet's result row (e.g. a fine-tuning module): Lightning's metrics
        metrics = {k: float(v) for k, v in (out[0] if out else {}).items()}
        name = next(iter(metrics), "metric")
        results = {
            "task": getattr(getattr(module, "task", None), "name", None),
            "metric": name,
            "score": metrics.get(name),
            "ci": [None, None],
            "metrics": {k: {"value": v} for k, v in metrics.items()},
            "above_chance": None,
        }
    return results


# --------------------------------------------------------------------------------------------------------------
# Write: result.json, predictions, W&B (the row itself: fnet.pipelines.evaluate_result)
# --------------------------------------------------------------------------------------------------------------
def _write_outputs(cfg: Any, row: dict, module: Any, mask: dict, loggers: list) -> None:
    """``result.json``, ``predictions.jsonl`` (one process only: under DDP each rank holds part of the outputs),
    the W&B summary and the result line of the log."""
    out_dir = Path(cfg.paths.output_dir)
    (out_dir / "result.json").write_text(json.dumps(row, indent=1))
    outputs = getattr(module, "outputs", None)
    if outputs and cfg.eval.save_predictions and row["world_size"] == 1:
        with open(out_dir / "predictions.jsonl", "w") as handle:
            for record in sorted(outputs, key=lambda r: r.get("index", 0)):
                handle.write(json.dumps(json_safe(record)) + "\n")
    log_wandb(loggers, row, mask)
    log.info(
        "%s %s = %.4f (95%% CI %s), unmasked %s, above chance (unmasked): %s; wrote %s",
        row.get("task"),
        row.get("metric"),
        float("nan") if row.get("score") is None else row["score"],
        row.get("ci"),
        (row.get("baseline") or {}).get("score"),
        row.get("above_chance_unmasked"),
        out_dir / "result.json",
    )
