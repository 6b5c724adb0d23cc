"""Fine-tuning heads on a causal LM: the shared backbone module and sequence classification.

:class:`CausalLMTaskModule` holds the causal LM as ``self.model`` (the registry finds its blocks, so
``fnet.intervene.apply_mask`` and the mask callback hook it directly), decides which of its parameters train
(``trainable_layers``), builds the optimiser and scheduler from Hydra partials (``conf/scheduler`` names
:func:`warmup_scheduler`), and writes an ``fnet`` entry into every checkpoint so that
:func:`fnet.lit.checkpoints.load_finetuned_lm` can rebuild the fine-tuned LM without this class.

:class:`SequenceClassificationModule` pools the hidden state of the **last real token** of each sequence (the
last position whose attention mask is 1, so right and left padding give the same result; position ids are
counted from the first real token) and maps it to ``num_labels`` logits, like GPT-2's sequence classification.
Metrics are torchmetrics objects per stage (:mod:`fnet.lit.metrics`, re-exported here), logged under the task
configs' metric names: ``train/accuracy``, ``val/accuracy``, ``val/f1``, ``test/mcc``...
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from transformers import get_scheduler

from fnet.lit.lora import add_lora
from fnet.lit.lower_blocks import LowerBlocks, find_lower_blocks, replay_lower_blocks
from fnet.lit.metrics import ConfusionMCC, classification_metrics, classification_result, gather_records
from fnet.models import LoadedModel, find_blocks, get_arch, load_model, model_dims, to_batch_first
from fnet.models.stop import stop_at

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_KEY",
    "warmup_scheduler",
    "last_token_index",
    "position_ids_from_mask",
    "final_hidden_states",
    "set_trainable",
    "CausalLMTaskModule",
    "SequenceClassificationModule",
    # from fnet.lit.metrics, where they were moved; imported from here before
    "ConfusionMCC",
    "classification_metrics",
    "gather_records",
    "classification_result",
]

CHECKPOINT_KEY = "fnet"  # the checkpoint entry describing the backbone (see on_save_checkpoint)


# --------------------------------------------------------------------------------------------------------------
# Learning-rate schedule (conf/scheduler/*.yaml point here)
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
    warmup = (
        int(num_warmup_steps) if num_warmup_steps is not None else int(math.ceil(warmup_ratio * num_training_steps))
    )
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=int(num_training_steps))


# --------------------------------------------------------------------------------------------------------------
# Backbone helpers
# --------------------------------------------------------------------------------------------------------------
def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """``attention_mask  # [batch, seq]`` -> ``[batch]``: index of the last position whose mask is 1.

    Correct for right padding (real tokens first) and left padding (real tokens last) alike, and independent of
    which token id pads (SmolLM2 pads with its end-of-text token, which may also occur in the text)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.bool().long() * (positions + 1)).argmax(dim=-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch, seq]`` position ids that count real tokens only, so a left-padded sequence gets the same positions
    as the unpadded one (padded positions get 0)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def final_hidden_states(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Hidden states after the LM's final norm, ``[batch, seq, d_model]`` whatever the architecture's layout.

    Transformers models: their base model's ``last_hidden_state`` (position ids from the attention mask). Models
    whose base model returns no ``last_hidden_state`` (the sequence-first ChatGLM stand-in): the *input* of the LM
    head, read by a forward pre-hook that then stops the forward pass before the vocabulary projection."""
    arch = get_arch(model)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    base = getattr(model, "base_model", None)
    if base is not None and base is not model and _returns_hidden_states(base):
        out = base(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        return to_batch_first(out.last_hidden_state, arch)
    captured: list[torch.Tensor] = []
    with stop_at(_lm_head(model), before=True, read=lambda inputs: captured.append(inputs[0])):  # no vocab logits
        model(input_ids=input_ids, attention_mask=attention_mask)
    if not captured:
        raise RuntimeError(f"the LM head of {type(model).__name__} was not called; cannot read final hidden states")
    return to_batch_first(captured[0], arch)


def _returns_hidden_states(base: nn.Module) -> bool:
    """Transformers base models (``PreTrainedModel`` subclasses with a ``last_hidden_state`` output) take
    ``position_ids``; the tiny ChatGLM stand-in's ``transformer`` returns logits, so it goes through the head hook."""
    from transformers import PreTrainedModel

    return isinstance(base, PreTrainedModel)


def _lm_head(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        for path in ("lm_head", "transformer.output_layer", "output_layer"):
            obj: Any = model
            try:
                for part in path.split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                continue
            head = obj
            break
    if head is None:
        raise ValueError(f"cannot find the LM head of {type(model).__name__} to read its final hidden states")
    return head


def set_trainable(model: nn.Module, trainable_layers: int | None) -> dict[str, int]:
    """Choose which backbone parameters train; returns parameter counts.

    ``None``: the whole backbone (except an untied LM head, which the heads never use; leaving it trainable would
    only give DDP an unused parameter). ``0``: nothing (a frozen backbone; only the task head trains). ``N > 0``:
    the top ``N`` transformer blocks and the non-embedding parameters outside the blocks (the final norm)."""
    for param in model.parameters():
        param.requires_grad_(False)
    base = getattr(model, "base_model", model)
    blocks = find_blocks(model)
    if trainable_layers is None:
        for param in base.parameters():
            param.requires_grad_(True)
    elif trainable_layers > 0:
        if trainable_layers > len(blocks):
            raise ValueError(f"trainable_layers={trainable_layers} but the model has {len(blocks)} blocks")
        for block in list(blocks)[-trainable_layers:]:
            for param in block.parameters():
                param.requires_grad_(True)
        in_blocks = {id(p) for p in blocks.parameters()}
        for module in base.modules():
            if isinstance(module, nn.Embedding) or module is blocks:
                continue
            for param in module.parameters(recurse=False):
                if id(param) not in in_blocks:
                    param.requires_grad_(True)
    elif trainable_layers < 0:
        raise ValueError(
            f"trainable_layers must be None (all), 0 (head only) or a positive count, not {trainable_layers}"
        )
    n_total = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"backbone_params": n_total, "backbone_trainable_params": n_trainable}


# --------------------------------------------------------------------------------------------------------------
# Shared base module
# --------------------------------------------------------------------------------------------------------------
class CausalLMTaskModule(pl.LightningModule):
    """A task head on a causal LM (``self.model``). Subclasses define the head, the steps and the metrics.

    Parameters
    ----------
    model
        a registry name for :func:`fnet.models.load_model` (``smollm2_135m``, ``tiny:gpt2``, a folder...) or
        an already loaded :class:`~fnet.models.LoadedModel` (its name is what the checkpoint records).
    model_kwargs
        extra arguments of ``load_model`` when ``model`` is a name (dtype, trust_remote_code...).
    optimizer
        a partial optimiser (Hydra ``_partial_: true``), called with the parameter groups; default AdamW.
    scheduler
        a partial ``f(optimizer, num_training_steps) -> LRScheduler`` (see
        :func:`warmup_scheduler`), stepped every optimiser step; ``None`` keeps the rate constant.
    trainable_layers
        ``None`` trains the whole model, ``0`` freezes the backbone, ``N`` trains the top N blocks.
    checkpoint_frozen
        keep frozen backbone weights in checkpoints (self-contained). ``False`` stores only what
        trains; loading then rebuilds the frozen part from ``model`` (the same registry name must resolve to the
        same weights, true for the offline default and the tiny models).
    lora
        LoRA adapters instead of trained blocks (:func:`fnet.lit.lora.add_lora`: ``r``, ``alpha``, ``dropout``,
        ``layers`` = top N blocks or null for all, ``targets``); needs ``trainable_layers=0``.

    A batch may carry ``lower_hidden`` ``[batch, seq, d_model]``, the stored output of the frozen lower blocks
    (:mod:`fnet.lit.features`); the forward then runs only the blocks above them (:attr:`lower_blocks`).
    """

    def __init__(
        self,
        model: str | LoadedModel = "tiny:gpt2",
        model_kwargs: Mapping[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        trainable_layers: int | None = None,
        checkpoint_frozen: bool = True,
        lora: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        loaded = model if isinstance(model, LoadedModel) else load_model(model, **dict(model_kwargs or {}))
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"], logger=False)
        self.hparams["model"] = loaded.name  # the registry name, so load_from_checkpoint can rebuild the backbone
        self.model = loaded.model  # the causal LM; masking and recording hook its blocks
        self.model.train()
        self.tokenizer = loaded.tokenizer
        self.arch = loaded.arch
        self.model_name = loaded.name
        self.model_source = loaded.source
        self.dims = model_dims(self.model.config, self.arch)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.param_counts = set_trainable(self.model, trainable_layers)
        self.lora = None
        if lora:
            if trainable_layers != 0:
                raise ValueError(f"module.lora trains adapters; set module.trainable_layers=0, not {trainable_layers}")
            self.lora = add_lora(self.model, lora)
            self.hparams["lora"] = self.lora["settings"]
            self.param_counts["backbone_trainable_params"] = self.lora["adapter_params"]
            self.param_counts["lora_adapted_layers"] = self.lora["n_adapted"]
        #: the frozen lower blocks a batch's ``lower_hidden`` replaces (found on first use, or set by the caller)
        self.lower_blocks: LowerBlocks | None = None
        self.strict_loading = bool(checkpoint_frozen)
        log.info(
            "%s on %s: %d of %d backbone parameters train (trainable_layers=%s)",
            type(self).__name__,
            loaded.name,
            self.param_counts["backbone_trainable_params"],
            self.param_counts["backbone_params"],
            trainable_layers,
        )

    # ---- backbone ------------------------------------------------------------------------------------------------
    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, lower_hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[batch, seq, d_model]`` after the final norm (MLP hooks on ``self.model`` fire during this call).

        ``lower_hidden``: the stored output of the frozen lower blocks for this batch (padded like
        ``input_ids``); only the blocks above them run."""
        if lower_hidden is None:
            return final_hidden_states(self.model, input_ids, attention_mask)
        if self.lower_blocks is None:
            self.lower_blocks = find_lower_blocks(self.model, final_hidden_states)
        with replay_lower_blocks(self.model, self.lower_blocks, lower_hidden):
            return final_hidden_states(self.model, input_ids, attention_mask)

    # ---- optimisation --------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        optimizer = self.optimizer_factory(groups) if self.optimizer_factory else torch.optim.AdamW(groups, lr=5e-5)
        if self.scheduler_factory is None:
            return optimizer
        steps = self.trainer.estimated_stepping_batches
        if steps is None or steps == float("inf"):
            raise ValueError("a learning-rate schedule needs a finite run: set trainer.max_steps or trainer.max_epochs")
        scheduler = self.scheduler_factory(optimizer, num_training_steps=int(steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def fnet_checkpoint_info(self) -> dict[str, Any]:
        return {
            "module": f"{type(self).__module__}.{type(self).__qualname__}",
            "model_name": self.model_name,
            "model_source": self.model_source,
            "model_kwargs": dict(self.hparams.get("model_kwargs") or {}),
            "arch_family": self.arch.family,
            "dims": self.dims,
            "trainable_layers": self.hparams.get("trainable_layers"),
            "lora": self.hparams.get("lora"),
            "backbone_prefix": "model.",
            "frozen_weights_included": bool(self.hparams.get("checkpoint_frozen", True)),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.fnet_checkpoint_info()
        if not self.hparams.get("checkpoint_frozen", True):
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
            state = checkpoint["state_dict"]
            for name in list(state):
                if name.startswith("model.") and name not in trainable:
                    del state[name]


# --------------------------------------------------------------------------------------------------------------
# Sequence classification
# --------------------------------------------------------------------------------------------------------------
class SequenceClassificationModule(CausalLMTaskModule):
    """A linear classifier on the last real token's final hidden state of a causal LM.

    Batches are dicts with ``input_ids``, ``attention_mask`` ``[batch, seq]`` and ``labels`` ``[batch]``.

    Args (besides :class:`CausalLMTaskModule`'s):
        num_labels: number of classes.
        metrics: torchmetrics to compute per stage (``accuracy``, ``f1``, ``mcc``: the task config's ``metric``);
            the first is the task's main one.
        head_dropout: dropout on the pooled hidden state during training.
        task_name: recorded in the checkpoint and hyperparameters.
        bootstrap: resamples for the bootstrap CIs of ``self.results`` (MCC, F1).

    After a test epoch, ``self.results`` is the result row of :func:`classification_result` (what ``evaluate.py``
    writes for a fine-tuned checkpoint) and ``self.outputs`` the per-row predictions (``index``, ``pred``,
    ``target``, ``logits``).
    """

    def __init__(
        self,
        model: str | LoadedModel = "tiny:gpt2",
        num_labels: int = 2,
        metrics: Sequence[str] = ("accuracy",),
        head_dropout: float = 0.0,
        task_name: str | None = None,
        bootstrap: int = 1000,
        model_kwargs: Mapping[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        trainable_layers: int | None = None,
        checkpoint_frozen: bool = True,
        lora: Mapping[str, Any] | None = None,
    ):
        super().__init__(
            model=model,
            model_kwargs=model_kwargs,
            optimizer=optimizer,
            scheduler=scheduler,
            trainable_layers=trainable_layers,
            checkpoint_frozen=checkpoint_frozen,
            lora=lora,
        )
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {num_labels}")
        self.hparams["metrics"] = list(metrics)
        self.num_labels = int(num_labels)
        self.metric_names = list(metrics)
        self.task_name = task_name
        self.dropout = nn.Dropout(head_dropout)
        self.score = nn.Linear(self.dims["d_model"], self.num_labels, bias=False)
        nn.init.normal_(self.score.weight, std=0.02)
        collection = classification_metrics(self.metric_names, self.num_labels)
        self.train_metrics = collection.clone(prefix="train/")
        self.val_metrics = collection.clone(prefix="val/")
        self.test_metrics = collection.clone(prefix="test/")
        self.bootstrap = int(bootstrap)
        self._records: list[dict] = []
        self.outputs: list[dict] = []
        self.results: dict[str, Any] | None = None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lower_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """-> logits ``[batch, num_labels]`` from the last real token of each sequence."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.hidden_states(input_ids, attention_mask, lower_hidden)  # [batch, seq, d_model]
        last = last_token_index(attention_mask)  # [batch]
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [batch, d_model]
        return self.score(self.dropout(pooled).to(self.score.weight.dtype))

    def _shared_step(self, batch: Mapping[str, torch.Tensor], stage: str, metrics: MetricCollection) -> torch.Tensor:
        logits = self(batch["input_ids"], batch.get("attention_mask"), batch.get("lower_hidden")).float()
        labels = batch["labels"]
        loss = F.cross_entropy(logits, labels)
        preds = logits.argmax(dim=-1)
        metrics(preds, labels)
        if stage == "test":
            index = batch.get("row_index")
            for i in range(labels.shape[0]):
                self._records.append(
                    {
                        "index": int(index[i]) if index is not None else len(self._records),
                        "pred": int(preds[i]),
                        "target": int(labels[i]),
                        "logits": [round(float(x), 5) for x in logits[i]],
                    }
                )
        batch_size = labels.shape[0]
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=stage != "train",
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=batch_size)
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train", self.train_metrics)

    def validation_step(self, batch, batch_idx):
        return self._shared_step(batch, "val", self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self._records, self.outputs, self.results = [], [], None

    def test_step(self, batch, batch_idx):
        return self._shared_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.outputs = gather_records(self, self._records)
        self._records = []
        if self.outputs:
            self.results = classification_result(
                self.task_name,
                self.metric_names,
                [r["pred"] for r in self.outputs],
                [r["target"] for r in self.outputs],
                self.num_labels,
                bootstrap=self.bootstrap,
            )

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        logits = self(batch["input_ids"], batch.get("attention_mask"), batch.get("lower_hidden"))
        return {"logits": logits, "pred": logits.argmax(dim=-1), "labels": batch.get("labels")}

    def fnet_checkpoint_info(self) -> dict[str, Any]:
        return dict(
            super().fnet_checkpoint_info(),
            task_name=self.task_name,
            num_labels=self.num_labels,
            metrics=self.metric_names,
            head="score",
        )
