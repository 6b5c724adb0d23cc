"""Reading a ``train.py`` checkpoint back: the checkpoint dict, and the fine-tuned causal LM as a LoadedModel.

A checkpoint written by :class:`fnet.lit.classification.CausalLMTaskModule` carries an ``fnet`` entry naming the
module class, the base model and the task, plus Lightning's ``hyper_parameters`` and
``datamodule_hyper_parameters``. Checkpoints are pickles: objects in them are stored under the module path
they had when written, so checkpoints written before fnet's modules moved are read with
:func:`old_module_paths`, which lets the old paths resolve to the new modules while a checkpoint loads.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from fnet.lit.lora import add_lora, merge_lora
from fnet.models import LoadedModel, load_model

log = logging.getLogger(__name__)

__all__ = ["OLD_MODULE_PATHS", "old_module_paths", "load_checkpoint_file", "read_checkpoint", "load_finetuned_lm"]


#: module paths of fnet before its modules moved into stage packages -> where their objects live now. A
#: checkpoint pickles objects by module path; these let checkpoints written before the move load. (The old
#: modules fnet.recording and fnet.scoring are packages again, exporting the same names.) fnet.finetune, later
#: fnet.lit.finetune, held the one fnet function a checkpoint may pickle, warmup_scheduler (a scheduler partial);
#: it lives in fnet.lit.classification now (the rest of that module is fnet.lit.task_modules: strings and helpers).
OLD_MODULE_PATHS = {
    "fnet.finetune": "fnet.lit.classification",
    "fnet.lit.finetune": "fnet.lit.classification",
    "fnet.tasks": "fnet.scoring.tasks",
    "fnet.prompts": "fnet.scoring.prompts",
    "fnet.loglik": "fnet.scoring.loglik",
    "fnet.metrics": "fnet.scoring.metrics",
    "fnet.data": "fnet.recording",
    "fnet.store": "fnet.recording.store",
    "fnet.discovery": "fnet.models.discovery",
    "fnet.tiny_chatglm": "fnet.models.tiny_chatglm",
    "fnet.decomposition": "fnet.decompose",
    "fnet.masking": "fnet.intervene",
    "fnet.utils": "fnet.pipelines.hydra_utils",
}


def _is_fnet_module(name: str) -> bool:
    """Whether ``name`` is a module of this fnet package (not, e.g., one an older fnet installed elsewhere has)."""
    package_dir = Path(importlib.util.find_spec("fnet").origin).parent
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return False
    return spec is not None and spec.origin is not None and Path(spec.origin).is_relative_to(package_dir)


@contextlib.contextmanager
def old_module_paths() -> Iterator[None]:
    """While active, the old module paths of :data:`OLD_MODULE_PATHS` import as their new modules (so a pickle
    that names ``fnet.tasks.TaskSpec`` finds ``fnet.scoring.tasks.TaskSpec``); restored on exit."""
    saved: dict[str, Any] = {}
    for old, new in OLD_MODULE_PATHS.items():
        if _is_fnet_module(old):
            continue  # the old path is a module of this fnet again: nothing to alias
        saved[old] = sys.modules.get(old)
        sys.modules[old] = importlib.import_module(new)
    try:
        yield
    finally:
        for old, previous in saved.items():
            if previous is None:
                sys.modules.pop(old, None)
            else:
                sys.modules[old] = previous


# --------------------------------------------------------------------------------------------------------------
# Reading a fine-tuned checkpoint back
# --------------------------------------------------------------------------------------------------------------
def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """``torch.load`` of a checkpoint file on the CPU; a missing, truncated or foreign file is an error naming the
    file and the problem (torch alone says "OSError: [Errno 22]" or "UnpicklingError" without the file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with old_module_paths():
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises OSError, RuntimeError, pickle/zip errors, EOFError... for bad files
        raise ValueError(
            f"checkpoint {path} ({path.stat().st_size} bytes) could not be read: it is truncated, "
            f"corrupt or not a PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from err


def read_checkpoint(ckpt_path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict (CPU tensors). Fails with a clear message when it was not written by an fnet module."""
    path = Path(ckpt_path).expanduser()
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, Mapping) or "fnet" not in checkpoint:
        raise ValueError(f"{path} is not an fnet fine-tuning checkpoint (no 'fnet' entry); write one with train.py")
    return checkpoint


def load_finetuned_lm(ckpt_path: str | os.PathLike) -> LoadedModel:
    """The fine-tuned causal LM of a ``train.py`` checkpoint as a :class:`~fnet.models.LoadedModel`.

    The base model is loaded by its registry name (tokenizer and architecture entry included), then every backbone
    weight in the checkpoint replaces the base's (all of them unless the run used ``checkpoint_frozen=false``).
    The task head is not part of the LM. ``name`` identifies base, checkpoint and step (so activation caches of
    different checkpoints never mix); ``fingerprint`` is the fine-tuned weights' content hash (what caches are keyed
    by, so a checkpoint overwritten at the same path is a new model); ``extra`` has the task, step and head."""
    path = Path(ckpt_path).expanduser().resolve()
    checkpoint = read_checkpoint(path)
    info = checkpoint["fnet"]
    lm = load_model(info["model_name"], **dict(info.get("model_kwargs") or {}))
    if info.get("lora"):  # adapters as trained, then folded into plain weights (the LM's own module names)
        add_lora(lm.model, info["lora"])
    prefix = info.get("backbone_prefix", "model.")
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = lm.model.load_state_dict(state, strict=False)
    if info.get("lora"):
        merge_lora(lm.model)
    if unexpected:
        raise ValueError(f"checkpoint {path} has backbone weights the base model lacks: {unexpected[:5]}")
    if missing and info.get("frozen_weights_included", True):
        # tied weights (lm_head = embeddings) are saved once; anything else missing means a different base
        untied = [k for k in missing if not _is_tied(lm.model, k)]
        if untied:
            raise ValueError(f"checkpoint {path} lacks backbone weights {untied[:5]} of base {info['model_name']!r}")
    lm.model.eval()
    lm.refresh_fingerprint()  # the fine-tuned weights' content, not the base model's (nor the path's)
    step = int(checkpoint.get("global_step", 0))
    lm.name = f"{info['model_name']}+finetuned@{path}#step{step}"
    lm.source = (
        f"fine-tuned checkpoint {path} (task {info.get('task_name')}, global step {step}, "
        f"trainable_layers={info.get('trainable_layers')}) of {info['model_name']} ({info.get('model_source')})"
    )
    lm.extra.update(
        ckpt_path=str(path),
        base_model=info["model_name"],
        task=info.get("task_name"),
        global_step=step,
        epoch=checkpoint.get("epoch"),
        head=info.get("head"),
        fnet_checkpoint=info,
    )
    return lm


def _is_tied(model: torch.nn.Module, name: str) -> bool:
    """Whether parameter ``name`` is the same tensor as another parameter (tied LM head)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    tensor = params.get(name)
    return tensor is not None and any(p is tensor for k, p in params.items() if k != name)
