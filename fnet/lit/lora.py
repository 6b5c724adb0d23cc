"""LoRA adapters on a causal LM's blocks, through ``peft``, for the fine-tuning modules (``module.lora``).

:func:`add_lora` injects adapters **in place** (``peft.inject_adapter_in_model``, not ``get_peft_model``): the
model keeps its class and module paths, so :func:`fnet.models.find_blocks`, masks and hooks find it as before;
only the adapted layers become peft layers that hold their original under ``base_layer``. Which layers: every
``Linear``/``Conv1D`` inside the chosen blocks, found by structure (:func:`fnet.models.discovery.linear_dims`, no
per-architecture module names), optionally narrowed to names ending in ``targets``; ``layers=N`` adapts the top N
blocks only (the lower ones stay frozen, so their output can be cached: :mod:`fnet.lit.features`).

A checkpoint keeps the adapters as they are (``...base_layer.weight``, ``...lora_A.default.weight``) so a killed run
resumes; :func:`merge_lora` folds them into plain weights (peft's own merge) when the fine-tuned LM is read back
(:func:`fnet.lit.checkpoints.load_finetuned_lm`), so analyses see an ordinary model.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from torch import nn

from fnet.models import find_blocks, get_arch
from fnet.models.discovery import linear_dims

log = logging.getLogger(__name__)

__all__ = ["LORA_KEYS", "lora_settings", "lora_targets", "add_lora", "merge_lora"]

#: the keys of ``module.lora`` and their defaults
LORA_KEYS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.0, "layers": None, "targets": None}


def lora_settings(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` completed with :data:`LORA_KEYS`' defaults; an unknown key or a bad value is an error naming it."""
    unknown = sorted(set(spec) - set(LORA_KEYS))
    if unknown:
        raise ValueError(f"module.lora has unknown keys {unknown}; valid: {sorted(LORA_KEYS)}")
    out = dict(LORA_KEYS, **dict(spec))
    if int(out["r"]) <= 0:
        raise ValueError(f"module.lora.r must be > 0, got {out['r']}")
    if out["layers"] is not None and int(out["layers"]) <= 0:
        raise ValueError(f"module.lora.layers must be null (every block) or a positive count, got {out['layers']}")
    if out["targets"] is not None:
        out["targets"] = [str(t) for t in out["targets"]]
    return out


def lora_targets(model: nn.Module, layers: int | None = None, targets: list[str] | None = None) -> list[str]:
    """Names (relative to ``model``) of every ``Linear``/``Conv1D`` in the top ``layers`` blocks (all blocks when
    None), narrowed to names ending in one of ``targets`` when given."""
    spec = get_arch(model)
    blocks = find_blocks(model, spec)
    if layers is not None and int(layers) > len(blocks):
        raise ValueError(f"module.lora.layers={layers} but the model has {len(blocks)} blocks")
    first = len(blocks) - int(layers) if layers else 0
    names = []
    for index in range(first, len(blocks)):
        for sub, module in blocks[index].named_modules():
            name = f"{spec.blocks}.{index}.{sub}"
            if not sub or linear_dims(module) is None:
                continue
            if targets and not any(name.endswith("." + t) for t in targets):
                continue
            names.append(name)
    if not names:
        raise ValueError(f"no Linear/Conv1D layer to adapt in the chosen blocks (layers={layers}, targets={targets})")
    return names


def add_lora(model: nn.Module, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Inject LoRA adapters into ``model`` in place; only they train afterwards (every other parameter of the
    model is frozen). Returns what was done (settings, adapted layer count, trainable parameters)."""
    # peft is imported here, not at the top: it adds seconds to every import of fnet.lit, and only LoRA runs need it
    from peft import LoraConfig, inject_adapter_in_model

    settings = lora_settings(spec)
    names = lora_targets(model, settings["layers"], settings["targets"])
    conv1d = any(type(m).__name__ == "Conv1D" for n, m in model.named_modules() if n in set(names))
    config = LoraConfig(
        r=int(settings["r"]),
        lora_alpha=float(settings["alpha"]),
        lora_dropout=float(settings["dropout"]),
        target_modules=names,
        bias="none",
        fan_in_fan_out=conv1d,
    )
    for param in model.parameters():
        param.requires_grad_(False)
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "LoRA r=%s alpha=%s on %d layers: %d adapter parameters",
        settings["r"],
        settings["alpha"],
        len(names),
        trainable,
    )
    return {"settings": settings, "n_adapted": len(names), "adapter_params": trainable}


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter of ``model`` into its base layer (peft's merge) and put the base layer back in its
    place, so the model has its original modules and parameter names. Returns the number of merged layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # see add_lora: peft only for LoRA models

    merged = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, BaseTunerLayer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
        merged += 1
    return merged
