"""Lightning callbacks.

:class:`MaskCallback` runs a LightningModule's validation / test / predict (and, on request, training) with a
neuron mask applied through :func:`fnet.intervene.apply_mask`. The mask is entered when a stage starts and left when
it ends -- or when the run raises (``on_exception``) or tears down -- so a masked evaluation cannot leak hooks
into the next one.

Which model is hooked: ``pl_module.lm_model`` if the module has it, else ``pl_module.model`` (fnet's
LightningModules keep their causal LM in ``self.model``); a :class:`fnet.models.LoadedModel` found there is
unwrapped to its ``.model``.

DDP: every process runs its own copy of the model and registers its own hooks; the mask is the same everywhere
(built from the same seed), so nothing is synchronised.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterable

import lightning.pytorch as pl
from torch import nn

from fnet.intervene import MaskSpec, apply_mask, build_mask, expected_mask_shape

log = logging.getLogger(__name__)

STAGES = ("train", "validate", "test", "predict")

SpecSource = MaskSpec | Callable[[pl.LightningModule], MaskSpec | None] | None


def hooked_model(pl_module: pl.LightningModule) -> nn.Module:
    """The causal LM inside a LightningModule: ``lm_model`` if present, else ``model`` (unwrapping a LoadedModel)."""
    for attr in ("lm_model", "model"):
        model = getattr(pl_module, attr, None)
        if model is None:
            continue
        inner = getattr(model, "model", None)
        if not isinstance(model, nn.Module) and isinstance(inner, nn.Module):  # a LoadedModel
            model = inner
        if isinstance(model, nn.Module):
            return model
    raise AttributeError(
        f"{type(pl_module).__name__} has no causal LM to mask: fnet LightningModules expose it as `self.model` "
        f"(or `self.lm_model`)"
    )


class MaskCallback(pl.Callback):
    """Apply a mask to the LightningModule's language model during the chosen stages.

    Parameters
    ----------
    spec
        a :class:`fnet.intervene.MaskSpec`; ``None`` (no mask: the callback does nothing, so configs can keep
        it in the list for the ``none`` mode); or a callable ``pl_module -> MaskSpec | None`` evaluated once at
        ``setup`` (e.g. to build from a NetworkSet the module computes).
    during
        stages to mask, any of ``"validate"``, ``"test"``, ``"predict"`` (validation inside ``fit``
        counts as ``"validate"``).
    during_train
        also mask the training loop of ``fit`` (training a model with a lesion).
    **build_kwargs
        instead of ``spec``, keyword arguments of :func:`fnet.intervene.build_mask` (``mode``,
        ``networks``, ``seed``, ...); ``netset`` defaults to ``pl_module.netset`` and ``n_layers``/``width``
        to the model's, all resolved at ``setup``.

    Notes
    -----
    After ``setup``, ``callback.spec`` is the mask and ``callback.stats`` its :func:`fnet.intervene.mask_stats`
    (``{}`` when unmasked). ``mask/n_masked`` and ``mask/fraction`` are logged with ``pl_module.log`` at the start
    of validation and test (so they appear in ``trainer.validate()`` / ``trainer.test()`` results) and once as
    hyperparameters to every logger.

    Stages nest (validation inside a masked ``fit``): the mask is entered once and stays until the outermost
    masked stage ends, so it is never applied twice.
    """

    def __init__(
        self,
        spec: SpecSource = None,
        during: Iterable[str] = ("validate", "test", "predict"),
        during_train: bool = False,
        **build_kwargs: Any,
    ) -> None:
        super().__init__()
        if spec is not None and build_kwargs:
            raise ValueError("give MaskCallback either a spec or build_mask keyword arguments, not both")
        if isinstance(during, str):
            during = [during]
        self.during = {str(stage) for stage in during}
        unknown = self.during - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)} in during; valid: {list(STAGES)}")
        if during_train:
            self.during.add("train")
        self._source: SpecSource = spec
        self._build_kwargs = dict(build_kwargs)
        self.spec: MaskSpec | None = spec if isinstance(spec, MaskSpec) else None
        self._stack: contextlib.ExitStack | None = None
        self._active: set[str] = set()
        self._hparams_logged = False

    # --- the mask ------------------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.spec.stats) if self.spec is not None else {}

    @property
    def active(self) -> bool:
        """Whether the mask's hooks are registered right now."""
        return self._stack is not None

    def _resolve_spec(self, pl_module: pl.LightningModule) -> None:
        if isinstance(self._source, MaskSpec):
            self.spec = self._source
        elif callable(self._source):
            self.spec = self._source(pl_module)
        elif self._build_kwargs:
            kwargs = dict(self._build_kwargs)
            kwargs.setdefault("netset", getattr(pl_module, "netset", None))
            if kwargs.get("n_layers") is None or kwargs.get("width") is None:
                n_layers, width = expected_mask_shape(hooked_model(pl_module), kwargs.get("signal", "mlp_out"))
                kwargs["n_layers"], kwargs["width"] = n_layers, width
            self.spec = build_mask(**kwargs)
        if self.spec is not None and not isinstance(self.spec, MaskSpec):
            raise TypeError(f"MaskCallback spec must be a MaskSpec or None, got {type(self.spec).__name__}")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.spec is None or not isinstance(self._source, MaskSpec):
            self._resolve_spec(pl_module)
        if self.spec is not None and not self._hparams_logged:
            self._log_hyperparams(trainer)

    def _log_hyperparams(self, trainer: pl.Trainer) -> None:
        assert self.spec is not None
        params = {f"mask/{k}": v for k, v in self.spec.summary().items() if k != "per_layer"}
        for logger in getattr(trainer, "loggers", []) or []:
            try:
                logger.log_hyperparams(params)
            except Exception as err:  # a logger that refuses a key must not break the evaluation
                log.warning("MaskCallback: logger %s did not take the mask hyperparameters: %s", logger, err)
        self._hparams_logged = True

    def _log_metrics(self, pl_module: pl.LightningModule) -> None:
        if self.spec is None:
            return
        for name, value in self.spec.log_dict().items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=True)

    # --- entering and leaving ------------------------------------------------------------------------------

    def _enter(self, stage: str, pl_module: pl.LightningModule) -> None:
        if stage not in self.during or self.spec is None:
            return
        if self._stack is None:
            stack = contextlib.ExitStack()
            stack.enter_context(apply_mask(hooked_model(pl_module), self.spec))
            self._stack = stack
        self._active.add(stage)

    def _exit(self, stage: str) -> None:
        self._active.discard(stage)
        if not self._active:
            self._close()

    def _close(self) -> None:
        self._active.clear()
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def on_train_start(self, trainer, pl_module) -> None:
        self._enter("train", pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._exit("train")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._enter("validate", pl_module)
        if "validate" in self.during and not trainer.sanity_checking:
            self._log_metrics(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._exit("validate")

    def on_test_start(self, trainer, pl_module) -> None:
        self._enter("test", pl_module)
        if "test" in self.during:
            self._log_metrics(pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._exit("test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._enter("predict", pl_module)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._exit("predict")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._close()

    def state_dict(self) -> dict[str, Any]:
        # the mask is rebuilt from config on resume; only record what it was
        return {"mask": self.spec.summary() if self.spec is not None else None}

    def __repr__(self) -> str:
        what = self.spec.description if self.spec is not None else "none"
        return f"MaskCallback({what!r}, during={sorted(self.during)})"
