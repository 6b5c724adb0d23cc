"""Find the transformer blocks, the MLP and its down projection of any causal LM by structure.

No list of model types: what fnet needs is read off the module tree and checked with one dry run.

* **Blocks** -- the ``nn.ModuleList`` with one entry per hidden layer (``config.num_hidden_layers``), all of one
  class, whose entries contain an MLP (below). The outermost such list wins; two unrelated ones are ambiguous.
* **MLP** -- the child of a block whose forward maps ``[.., d_model] -> [.., d_model]`` through a wider hidden
  size: it holds a down projection (a ``Linear``/``Conv1D`` mapping ``d_mlp -> d_model``) and takes no attention
  arguments (``attention_mask``, ``position_ids``, ``past_key_values``, ... in its forward signature rule out
  attention modules, whose output projection can look like a down projection). When the block keeps the
  projections itself (OPT's ``fc1``/``fc2``) the block is the MLP (path ``""``). A mixture of experts (a
  descendant called ``experts`` or 3-D expert weights) is an MLP with no single down projection.
* **Down projection** -- the last ``Linear``/``Conv1D`` inside the MLP that maps ``d_mlp -> d_model``
  (``d_mlp != d_model``; the config's ``intermediate_size``-like value breaks ties).

The dry run (one forward of 2 x 3 tokens, stopped right after block 0) checks that the down projection is called
exactly once per block, measures the layout (``[batch, seq, ..]`` or sequence-first ``[seq, batch, ..]`` as in
ChatGLM), and notes when the MLP module's output is *not* what its down projection produced (Bloom adds the
residual inside its MLP). Because ``mlp_out`` is defined as the down projection's output (bias included) --
what the MLP adds to the residual stream -- such modules need no special case; GPT-2's ``Conv1D`` (weight
``[in, out]``) is read by its orientation. Users override any path with ``blocks`` (relative to the model),
``mlp`` (relative to a block) and ``down_proj`` (relative to the MLP).
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fnet.models.stop import stop_at

__all__ = ["ArchSpec", "DiscoveryError", "discover", "config_dims", "linear_dims", "resolve_path"]

#: forward parameters that mark an attention module (never an MLP)
_ATTENTION_ARGS = (
    "attention_mask",
    "position_ids",
    "position_embeddings",
    "past_key_values",
    "past_key_value",
    "layer_past",
    "alibi",
    "key_padding",
    "cache_position",
    "rotary_pos_emb",
    "freqs_cis",
)
_N_LAYERS_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_D_MODEL_KEYS = ("hidden_size", "n_embd", "d_model")
_D_MLP_KEYS = ("intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim", "inner_hidden_size")
#: child names that are MLPs in the wild; used only to break a tie between structural candidates
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "ff")
#: how a discovery error ends: the overrides that settle what the structure left open
_HINT = "(override with model.blocks / model.mlp / model.down_proj)"


class DiscoveryError(ValueError):
    """The module tree does not show one clear set of blocks / MLP / down projection."""


@dataclass(frozen=True)
class ArchSpec:
    """Where a model's MLP signals live (found by :func:`discover`). Paths are dotted attribute paths.

    Parameters
    ----------
    family : str
        ``config.model_type`` (for logs and provenance; nothing dispatches on it).
    blocks : str
        path of the block ``ModuleList`` relative to the model the spec was found on.
    mlp : str
        path of the MLP relative to a block (``""``: the block itself, as in OPT).
    down_proj : str
        path of the down projection relative to the MLP (``""`` for a mixture of experts).
    seq_first : bool
        hidden states are ``[seq, batch, ..]`` (ChatGLM) instead of ``[batch, seq, ..]``.
    n_layers, d_model, d_mlp : int
        dimensions measured on the modules (``d_mlp`` 0 for a mixture of experts).
    moe : bool
        the MLP is a mixture of experts: ``mlp_out`` is its routed output, ``mlp_act`` is undefined.
    flat : bool
        the MLP sees tokens flattened to ``[batch * seq, ..]`` (OPT, some mixtures of experts).
    mlp_adds_residual : bool
        the MLP module's output is not its down projection's (Bloom adds the residual).
    conv1d : bool
        the down projection is a ``Conv1D`` (weight ``[in, out]``, GPT-2).
    """

    family: str
    blocks: str
    mlp: str
    down_proj: str
    seq_first: bool
    n_layers: int
    d_model: int
    d_mlp: int
    moe: bool = False
    flat: bool = False
    mlp_adds_residual: bool = False
    conv1d: bool = False

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def resolve_path(obj: Any, dotted: str) -> Any:
    """``obj.a.b.0.c`` for ``"a.b.0.c"``; ``""`` is ``obj`` itself.

    Parameters
    ----------
    obj : Any
        The object to start from (a model, a block, ...).
    dotted : str
        The dotted path; digits index a ``ModuleList``/``Sequential``.

    Returns
    -------
    Any
        The object at the path.
    """
    for part in dotted.split(".") if dotted else ():
        obj = (
            obj[int(part)] if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential)) else getattr(obj, part)
        )
    return obj


def _first(config: Any, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def config_dims(config: Any) -> dict[str, int | None]:
    """``n_layers``, ``d_model``, ``d_mlp`` as the (text) config states them; ``None`` where it does not.
    GPT-2-style configs with ``n_inner=None`` mean ``4 * d_model``.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        The config (a multimodal one's text config is read).

    Returns
    -------
    dict of str to int or None
        ``{"n_layers": .., "d_model": .., "d_mlp": ..}``.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    dims = {
        "n_layers": _first(text, _N_LAYERS_KEYS),
        "d_model": _first(text, _D_MODEL_KEYS),
        "d_mlp": _first(text, _D_MLP_KEYS),
    }
    if dims["d_mlp"] is None and "n_inner" in getattr(text, "__dict__", {}) and dims["d_model"]:
        dims["d_mlp"] = 4 * dims["d_model"]
    return dims


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` of a ``Linear`` (weight ``[out, in]``) or a GPT-2 ``Conv1D`` (weight ``[in, out]``), else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        weight = module.weight
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def _is_moe(module: nn.Module) -> bool:
    # stacked expert weights are [n_experts, .., ..]; RWKV-style [1, 1, d] mixing vectors are not experts
    return any(name.split(".")[-1] == "experts" for name, _ in module.named_modules()) or any(
        p.ndim >= 3 and p.shape[0] > 1 for p in module.parameters()
    )


def _takes_attention_args(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return any(name in params for name in _ATTENTION_ARGS)


def _down_candidates(mlp: nn.Module, d_model: int, d_mlp: int | None, direct_only: bool) -> list[tuple[str, int]]:
    """``(path, in_width)`` of modules inside ``mlp`` mapping a width != d_model to d_model, in registration order."""
    items = mlp.named_children() if direct_only else mlp.named_modules()
    found = []
    for name, module in items:
        dims = linear_dims(module)
        if dims and dims[1] == d_model and (dims[0] != d_model or dims[0] == d_mlp) and name:
            found.append((name, dims[0]))
    return found


def _pick_down(mlp: nn.Module, d_model: int, d_mlp: int | None, where: str, direct_only: bool = False) -> str:
    found = _down_candidates(mlp, d_model, d_mlp, direct_only)
    if not found:
        raise DiscoveryError(f"{where}: no Linear/Conv1D maps d_mlp -> d_model={d_model}; set model.down_proj")
    matching = [name for name, width in found if width == d_mlp]
    return (matching or [name for name, _ in found])[-1]


def _mlp_candidates(block: nn.Module, d_model: int, d_mlp: int | None) -> list[tuple[str, bool]]:
    """``(child name, is_moe)`` of the block's children that look like an MLP."""
    out = []
    for name, child in block.named_children():
        if linear_dims(child) is not None or isinstance(child, (nn.ModuleList, nn.Embedding)):
            continue
        if _takes_attention_args(child):
            continue
        if _is_moe(child):
            out.append((name, True))
        elif _down_candidates(child, d_model, d_mlp, direct_only=False):
            out.append((name, False))
    if len(out) > 1 and d_mlp is not None:  # the config's MLP width breaks ties
        exact = [
            c
            for c in out
            if c[1] or any(w == d_mlp for _, w in _down_candidates(getattr(block, c[0]), d_model, d_mlp, False))
        ]
        out = exact or out
    if len(out) > 1:
        named = [c for c in out if c[0] in _MLP_NAMES]
        out = named if len(named) == 1 else out
    return out


def _find_blocks(model: nn.Module, n_layers: int | None, d_model: int, d_mlp: int | None) -> list[str]:
    paths = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if n_layers is not None and len(module) != n_layers:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        if any(name.startswith(p + ".") for p in paths):
            continue  # nested inside an accepted block list (e.g. experts of a block)
        if _mlp_candidates(module[0], d_model, d_mlp) or _down_candidates(module[0], d_model, d_mlp, True):
            paths.append(name)
    return paths


def _dry_run(model: nn.Module, block: nn.Module, mlp: nn.Module, down: nn.Module | None) -> dict[str, Any]:
    """One forward of ``[2, 3]`` tokens, stopped after block 0: the down projection's calls and shapes."""
    seen: dict[str, Any] = {"down_calls": 0}

    def on_down(_m, _args, output):
        seen["down_calls"] += 1
        seen["down_out"] = output.detach().clone()

    def on_mlp(_m, _args, output):
        out = output[0] if isinstance(output, tuple) else output
        seen["mlp_out"] = out.detach().clone()

    handles = [mlp.register_forward_hook(on_mlp)]
    if down is not None:
        handles.append(down.register_forward_hook(on_down))
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = embeddings.weight.device if embeddings is not None and embeddings.weight.device.type != "meta" else None
    vocab = int(embeddings.weight.shape[0]) if embeddings is not None else 2
    input_ids = torch.arange(6).reshape(2, 3) % max(vocab, 1)
    was_training = model.training
    model.eval()  # no dropout: the MLP's output is compared with its down projection's
    try:
        with torch.no_grad(), stop_at(block):  # nothing after block 0 is needed
            model(input_ids=input_ids.to(device) if device else input_ids, use_cache=False)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return seen


_CACHE: "weakref.WeakKeyDictionary[nn.Module, ArchSpec]" = weakref.WeakKeyDictionary()


def discover(
    model: nn.Module,
    *,
    blocks: str | None = None,
    mlp: str | None = None,
    down_proj: str | None = None,
    dry_run: bool = True,
) -> ArchSpec:
    """Find (or take from the overrides) the blocks, MLP and down projection of ``model``; see the module doc.

    The result is remembered per model object, so later calls (hooks, masks) are free; passing overrides
    replaces what was remembered. Raises :class:`DiscoveryError` naming what was ambiguous or missing.

    Parameters
    ----------
    model : torch.nn.Module
        The causal LM.
    blocks : str, optional
        Override: path of the block ``ModuleList`` relative to the model.
    mlp : str, optional
        Override: path of the MLP relative to a block.
    down_proj : str, optional
        Override: path of the down projection relative to the MLP.
    dry_run : bool
        Run the one-forward check and layout measurement (default True).

    Returns
    -------
    ArchSpec
        Where the model's MLP signals live.
    """
    if blocks is None and mlp is None and down_proj is None and model in _CACHE:
        return _CACHE[model]
    config = getattr(model, "config", None)
    family = str(getattr(config, "model_type", None) or type(model).__name__)
    stated = config_dims(config) if config is not None else {"n_layers": None, "d_model": None, "d_mlp": None}
    d_model = stated["d_model"]
    if d_model is None:
        raise DiscoveryError(f"{family}: the config states no hidden size (tried {list(_D_MODEL_KEYS)})")

    blocks, block_list = _block_list(model, blocks, family, stated)
    block0 = block_list[0]
    mlp, moe = _mlp_path(block0, mlp, down_proj, family, d_model, stated["d_mlp"])
    mlp0 = resolve_path(block0, mlp)
    if down_proj is None and not moe and any(_is_moe(resolve_path(b, mlp)) for b in block_list):
        moe = True  # dense first blocks, experts later (e.g. DeepSeek-style first_k_dense): one rule for all
    if down_proj is None:
        down_proj = (
            "" if moe else _pick_down(mlp0, d_model, stated["d_mlp"], f"{family} MLP {mlp!r}", direct_only=(mlp == ""))
        )
    try:
        down0 = resolve_path(mlp0, down_proj) if down_proj else None
    except AttributeError as err:
        raise DiscoveryError(
            f"{family}: model.down_proj={down_proj!r} is not an attribute path of the MLP: {err}"
        ) from None
    down_dims = linear_dims(down0) if down0 is not None else None
    if down0 is not None and (down_dims is None or down_dims[1] != d_model):
        raise DiscoveryError(
            f"{family}: down projection {mlp}.{down_proj} = {type(down0).__name__} {down_dims} does "
            f"not map to d_model={d_model}"
        )
    d_mlp = down_dims[0] if down_dims else 0
    if stated["n_layers"] is not None and len(block_list) != stated["n_layers"]:
        raise DiscoveryError(f"{family}: {blocks} has {len(block_list)} blocks, the config says {stated['n_layers']}")

    seq_first, flat, adds_residual = False, False, False
    if dry_run:
        seq_first, flat, adds_residual = _layout(model, block0, mlp0, down0, family, mlp, down_proj, d_model)
    spec = ArchSpec(
        family=family,
        blocks=blocks,
        mlp=mlp,
        down_proj=down_proj,
        seq_first=seq_first,
        n_layers=len(block_list),
        d_model=d_model,
        d_mlp=d_mlp,
        moe=moe,
        flat=flat,
        mlp_adds_residual=adds_residual,
        conv1d=type(down0).__name__ == "Conv1D",
    )
    _CACHE[model] = spec
    return spec


def _block_list(model: nn.Module, blocks: str | None, family: str, stated: dict) -> tuple[str, nn.ModuleList]:
    """(path, the ``ModuleList``) of the decoder blocks: the override's, else the one list found by structure."""
    if blocks is None:
        found = _find_blocks(model, stated["n_layers"], stated["d_model"], stated["d_mlp"])
        if len(found) != 1:
            raise DiscoveryError(
                f"{family}: expected one ModuleList of {stated['n_layers']} decoder blocks holding an MLP that maps "
                f"d_model={stated['d_model']} through a wider hidden size, found {found or 'none'} {_HINT}"
            )
        blocks = found[0]
    try:
        block_list = resolve_path(model, blocks)
    except AttributeError as err:
        raise DiscoveryError(f"{family}: model.blocks={blocks!r} does not exist: {err}") from None
    if not isinstance(block_list, nn.ModuleList):
        raise DiscoveryError(f"{family}: model.blocks={blocks!r} is a {type(block_list).__name__}, not a ModuleList")
    return blocks, block_list


def _mlp_path(
    block0: nn.Module, mlp: str | None, down_proj: str | None, family: str, d_model: int, d_mlp: int | None
) -> tuple[str, bool]:
    """(path of the MLP relative to a block, whether it is a mixture of experts) as block 0 shows them; with an
    ``mlp`` override, a mixture of experts only when no down projection is named."""
    if mlp is not None:
        try:
            return mlp, _is_moe(resolve_path(block0, mlp)) and down_proj is None
        except AttributeError as err:
            raise DiscoveryError(f"{family}: model.mlp={mlp!r} is not an attribute path of a block: {err}") from None
    candidates = _mlp_candidates(block0, d_model, d_mlp)
    if len(candidates) > 1:
        raise DiscoveryError(
            f"{family}: several children of a block look like an MLP: {[c[0] for c in candidates]} {_HINT}"
        )
    if candidates:
        return candidates[0]
    if _down_candidates(block0, d_model, d_mlp, direct_only=True):
        return "", False  # the block holds the projections itself (OPT: fc1 / fc2)
    raise DiscoveryError(
        f"{family}: no child of {type(block0).__name__} maps d_model={d_model} through a "
        f"wider hidden size and back {_HINT}"
    )


def _layout(
    model: nn.Module,
    block0: nn.Module,
    mlp0: nn.Module,
    down0: nn.Module | None,
    family: str,
    mlp: str,
    down_proj: str,
    d_model: int,
) -> tuple[bool, bool, bool]:
    """(sequence-first, flat, the MLP adds the residual) as the dry run measures them, after checking that the
    down projection runs once in block 0 and the signal is ``[2, 3, d_model]``, ``[3, 2, ..]`` or ``[6, ..]``."""
    seen = _dry_run(model, block0, mlp0, down0)
    if down0 is not None and seen["down_calls"] != 1:
        raise DiscoveryError(
            f"{family}: the down projection {mlp}.{down_proj} ran {seen['down_calls']} times in "
            f"block 0's forward (expected once) {_HINT}"
        )
    signal = seen.get("down_out", seen.get("mlp_out"))
    if signal is None:
        raise DiscoveryError(f"{family}: the MLP {mlp!r} did not run in block 0's forward {_HINT}")
    flat = tuple(signal.shape) == (6, d_model)
    if not flat and (signal.ndim != 3 or signal.shape[-1] != d_model or signal.shape[:2] not in ((2, 3), (3, 2))):
        raise DiscoveryError(
            f"{family}: the MLP output has shape {tuple(signal.shape)}; expected "
            f"[batch=2, seq=3, {d_model}], sequence-first [3, 2, {d_model}] or flat [6, {d_model}]"
        )
    seq_first = tuple(signal.shape[:2]) == (3, 2)
    adds_residual = False
    if down0 is not None and "mlp_out" in seen and mlp:
        adds_residual = seen["mlp_out"].shape != signal.shape or not torch.allclose(seen["mlp_out"], signal)
    return seq_first, flat, adds_residual
