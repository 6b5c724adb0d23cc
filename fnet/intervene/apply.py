"""Apply a neuron mask to a model while a ``with`` block runs: :func:`apply_mask`, and the :class:`MaskSpec` it takes.

A mask is a bool tensor ``mask  # [layer, unit]`` over one recording signal (``mlp_out``: the output of each
layer's down projection; ``mlp_act``: its input). ``True`` marks a neuron to act on; while active, those
positions of the signal are replaced in every forward pass (also every step of ``model.generate``):
``mode="zero"`` sets them to 0 (lesion / preservation), ``"amplify"`` adds ``value``, ``"scale"`` multiplies
by it, ``"replace"`` sets each to its own value of ``values  # [layer, unit]`` (mean ablation: the neuron's mean
over recorded tokens). Edits go through the one hook primitive :func:`fnet.hooks.trace_signal` and see ``[batch, seq,
width]`` in every layout, so nothing here depends on the architecture.

Each layer's edit is a :class:`_LayerMaskHook` object that owns **its own row** of the mask, looked up by the layer
index that :class:`fnet.hooks.SiteHook` owns. The published code (Liu et al. 2025) built its hooks in a loop with a
closure over the loop variable, so every layer was masked with the *last* layer's row; ``tests/test_masking.py``
checks per layer against a by-hand computation and keeps a copy of that loop to show the test catches it.

Why hand-written: hooking libraries (TransformerLens, nnsight, baukit, pyvene) intervene on named activations of
the models they wrap, but none of them takes a per-layer neuron set over fnet's discovered signals for
arbitrary HF / remote-code families (sequence-first ChatGLM included).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from fnet.hooks import trace_signal
from fnet.models import ArchSpec, check_signal, down_proj_modules, find_blocks, get_arch, model_dims

__all__ = [
    "APPLY_MODES",
    "MaskSpec",
    "mask_stats",
    "apply_mask",
    "apply_masks",
    "expected_mask_shape",
    "check_bool_mask",
]


#: How a mask acts on its positions (``apply_mask(mode=...)``).
APPLY_MODES = ("zero", "amplify", "scale", "replace")


# --------------------------------------------------------------------------------------------------------------
# MaskSpec and statistics
# --------------------------------------------------------------------------------------------------------------
def mask_stats(mask: torch.Tensor) -> dict[str, Any]:
    """Counts of a mask ``[layer, unit]``: ``n_masked`` (total True), ``fraction`` (of all layer*unit neurons),
    ``per_layer`` (list of True counts per layer), ``n_layers``, ``width``.

    Parameters
    ----------
    mask : torch.Tensor [layer, unit]
        A bool mask.

    Returns
    -------
    dict
        ``n_masked``, ``fraction``, ``per_layer``, ``n_layers``, ``width``.
    """
    mask = check_bool_mask(mask)
    per_layer = mask.sum(dim=1, dtype=torch.int64)  # [layer]
    total = int(per_layer.sum())
    return {
        "n_masked": total,
        "fraction": total / max(mask.numel(), 1),
        "per_layer": [int(c) for c in per_layer.tolist()],
        "n_layers": int(mask.shape[0]),
        "width": int(mask.shape[1]),
    }


@dataclass
class MaskSpec:
    """A mask and how to apply it.

    Parameters
    ----------
    mask : torch.Tensor
        ``[layer, unit]`` bool, True = act on that neuron.
    signal : str
        ``mlp_out`` or ``mlp_act``.
    mode : str
        how :func:`apply_mask` acts: ``zero`` / ``amplify`` / ``scale``.
    value : float
        added (amplify) or multiplied (scale) value; unused for ``zero``.
    description : str
        human-readable, e.g. ``"lesion networks [0, 2]"``.
    stats : dict
        :func:`mask_stats` of ``mask`` (filled in when not given).
    kind : str
        the :func:`build_mask` mode that made it (``lesion``, ``preserve``, ``random``, ...).
    meta : dict
        JSON-able provenance: network indices, seed, matched reference counts, ...
    values : torch.Tensor, optional
        ``[layer, unit]`` float: what ``mode="replace"`` sets each masked neuron to (e.g. its mean activation).
    """

    mask: torch.Tensor
    signal: str = "mlp_out"
    mode: str = "zero"
    value: float = 0.0
    description: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    kind: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    values: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.mask = check_bool_mask(self.mask)
        check_signal(self.signal)
        _check_apply_mode(self.mode)
        self.value = float(self.value)
        self.values = _check_values(self.values, self.mode, self.mask.shape)
        if not self.stats:
            self.stats = mask_stats(self.mask)

    @property
    def n_masked(self) -> int:
        return int(self.stats["n_masked"])

    @property
    def fraction(self) -> float:
        return float(self.stats["fraction"])

    def log_dict(self, prefix: str = "mask/") -> dict[str, float]:
        """Scalars for a logger: ``mask/n_masked``, ``mask/fraction`` (and ``mask/value`` unless zeroing)."""
        out = {f"{prefix}n_masked": float(self.n_masked), f"{prefix}fraction": float(self.fraction)}
        if self.mode != "zero":
            out[f"{prefix}value"] = self.value
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able description (no tensor) for provenance headers and hyperparameter logging."""
        return {
            **self.meta,  # provenance first: the mask's own fields below always win
            "kind": self.kind,
            "signal": self.signal,
            "mode": self.mode,
            "value": self.value,
            "description": self.description,
            "n_masked": self.n_masked,
            "fraction": self.fraction,
            "per_layer": list(self.stats["per_layer"]),
        }


def _check_values(values: Any, mode: str, shape: tuple) -> torch.Tensor | None:
    """The per-neuron values of ``mode="replace"`` as a float32 CPU tensor of the mask's shape (None otherwise)."""
    if mode != "replace":
        if values is not None:
            raise ValueError(f"values are only used by mode='replace', not {mode!r}")
        return None
    if values is None:
        raise ValueError("mode='replace' needs values [n_layers, width]: what each masked neuron is set to")
    values = torch.as_tensor(np.asarray(values, dtype=np.float32))
    if tuple(values.shape) != tuple(shape):
        raise ValueError(f"values have shape {list(values.shape)}, expected the mask's {list(shape)}")
    if not torch.isfinite(values).all():
        raise ValueError("values must be finite")
    return values


def _check_apply_mode(mode: str) -> str:
    if mode not in APPLY_MODES:
        raise ValueError(f"unknown mask apply mode {mode!r}; valid: {list(APPLY_MODES)}")
    return mode


def check_bool_mask(mask: Any) -> torch.Tensor:
    """``mask`` as a 2-D bool tensor ``[layer, unit]`` (from a tensor or numpy array), or a ``TypeError`` /
    ``ValueError`` naming what it got."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor [n_layers, width], got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must have dtype torch.bool (True = act on that neuron), got {mask.dtype}; "
            f"convert explicitly, e.g. mask != 0"
        )
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [n_layers, width], got shape {list(mask.shape)}")
    return mask


# --------------------------------------------------------------------------------------------------------------
# apply_mask
# --------------------------------------------------------------------------------------------------------------
class _LayerMaskHook:
    """The hook of ONE layer. It owns that layer's row, so no closure can mix layers up.

    The row is converted to the signal's device (and, for amplify/scale, dtype) on the first call that sees a
    new (device, dtype) and reused afterwards: the hot path is one comparison and one elementwise op.
    """

    def __init__(self, layer: int, row: torch.Tensor, mode: str, value: float, values: torch.Tensor | None = None):
        self.layer = layer  # kept for debugging / repr
        self.row = row  # [unit] bool, CPU copy
        self.mode = mode
        self.value = value
        self.values = values  # [unit] float (mode="replace"), CPU copy
        self._row_on: torch.Tensor | None = None  # the row on the signal's device (mode="replace")
        self._key: tuple[torch.device, torch.dtype] | None = None
        self._operand: torch.Tensor | None = None  # [unit] on the signal's device

    def __repr__(self) -> str:
        return f"_LayerMaskHook(layer={self.layer}, mode={self.mode!r}, n={int(self.row.sum())})"

    def prepare(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key != self._key:
            if self.mode == "zero":  # bool row for masked_fill
                operand = self.row.to(device)
            elif self.mode == "amplify":  # value where masked, 0 elsewhere: x + 0 == x exactly
                operand = torch.where(self.row, self.value, 0.0).to(device=device, dtype=dtype)
            elif self.mode == "replace":  # the values; the bool row says where they replace the signal
                operand = self.values.to(device=device, dtype=dtype)
            else:  # scale: value where masked, 1 elsewhere: x * 1 == x exactly
                operand = torch.where(self.row, self.value, 1.0).to(device=device, dtype=dtype)
            self._operand, self._key = operand, key
        return self._operand  # type: ignore[return-value]

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden  # [..., unit]`` -> the same with this layer's row applied on the last axis (out of place,
        so autograd and any caller holding the original tensor are unaffected)."""
        operand = self.prepare(hidden.device, hidden.dtype)
        if self.mode == "zero":
            return hidden.masked_fill(operand, 0.0)
        if self.mode == "amplify":
            return hidden + operand
        if self.mode == "replace":
            return torch.where(self._where(hidden.device), operand, hidden)
        return hidden * operand

    def _where(self, device: torch.device) -> torch.Tensor:
        if self._row_on is None or self._row_on.device != device:
            self._row_on = self.row.to(device)
        return self._row_on


def expected_mask_shape(model: nn.Module, signal: str = "mlp_out", spec: ArchSpec | None = None) -> tuple[int, int]:
    """``(n_layers, width)`` a mask over ``signal`` must have for ``model`` (width: d_model for ``mlp_out``,
    d_mlp for ``mlp_act``).

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    signal : str
        ``mlp_out`` (default) or ``mlp_act``.
    spec : ArchSpec, optional
        The model's spec; default :func:`fnet.models.get_arch` of ``model``.

    Returns
    -------
    tuple of int
        ``(n_layers, width)``.
    """
    spec = spec or get_arch(model)
    if check_signal(signal) == "mlp_act" and spec.moe:
        down_proj_modules(model, spec)  # raises: a mixture of experts has no single mlp_act
    dims = model_dims(getattr(model, "config", model), spec)
    width = dims["d_model"] if check_signal(signal) == "mlp_out" else dims["d_mlp"]
    return dims["n_layers"], width


@contextlib.contextmanager
def apply_mask(
    model: nn.Module,
    mask: torch.Tensor | MaskSpec | None,
    *,
    signal: str | None = None,
    mode: str | None = None,
    value: float | None = None,
    spec: ArchSpec | None = None,
) -> Iterator[list[_LayerMaskHook]]:
    """Act on the neurons in ``mask  # [layer, unit]`` of ``model``'s ``signal`` while the context is active.

    Parameters
    ----------
    model
        a causal LM from the registry (or a wrapper :func:`fnet.models.find_blocks` understands).
    mask
        bool ``[n_layers, width]`` (True = act on that neuron), a :class:`MaskSpec` (its signal / mode /
        value are the defaults), or ``None`` (no-op context, for the ``none`` mode).
    signal
        ``mlp_out`` (default; forward hook on each MLP) or ``mlp_act`` (forward pre-hook on each down
        projection).
    mode
        ``zero`` (default), ``amplify`` (add ``value``), ``scale`` (multiply by ``value``) or ``replace`` (set
        to the MaskSpec's ``values``).
    value
        for ``amplify`` / ``scale``.
    spec
        the model's :class:`fnet.models.ArchSpec` (looked up when omitted).

    Yields
    ------
    The per-layer hook objects (only layers whose row has a True entry get one).

    Notes
    -----
    Hooks are removed on exit, also when the body raises. Nested contexts compose: hooks run in the order the
    contexts were entered (zero then zero = union of the masks). Raises ``ValueError`` for a mask whose shape is
    not ``[n_layers, width]`` of this model and signal, ``TypeError`` for a non-bool mask.

    Examples
    --------
    Zeroing two planted neurons of layer 1 changes exactly those neurons' output (layer 0 is untouched):

    >>> import torch
    >>> from fnet.hooks import trace_signal
    >>> from fnet.models import load_model
    >>> lm = load_model("tiny:gpt2")
    >>> ids = lm.tokenizer("hello world", return_tensors="pt")["input_ids"]
    >>> mask = torch.zeros(lm.n_layers, lm.d_model, dtype=torch.bool)  # [layer, unit]
    >>> mask[1, [3, 7]] = True
    >>> def run():
    ...     seen = {}
    ...     with trace_signal(lm.model, "mlp_out", read=lambda layer, h: seen.setdefault(layer, h.detach())):
    ...         lm.model(ids)
    ...     return seen
    >>> clean = run()
    >>> with apply_mask(lm.model, mask):
    ...     lesioned = run()
    >>> (lesioned[1] != clean[1]).any(dim=(0, 1)).nonzero().flatten().tolist()  # units that changed
    [3, 7]
    >>> float(lesioned[1][..., [3, 7]].abs().max()), torch.equal(lesioned[0], clean[0])
    (0.0, True)
    """
    if mask is None:
        yield []
        return
    spec = spec or get_arch(model)
    signal, by_layer = _layer_hooks(model, mask, signal, mode, value, spec)
    if not by_layer:
        yield []
        return
    with trace_signal(
        model, signal, edit=lambda layer, hidden: by_layer[layer].transform(hidden), layers=sorted(by_layer), spec=spec
    ):
        yield list(by_layer.values())


@contextlib.contextmanager
def apply_masks(
    model: nn.Module,
    masks: Sequence[torch.Tensor | MaskSpec | None],
    *,
    signal: str | None = None,
    spec: ArchSpec | None = None,
) -> Iterator[int]:
    """Several masks in one forward pass: the batch is ``len(masks)`` equal slices, slice i gets ``masks[i]``.

    Parameters
    ----------
    model
        as for :func:`apply_mask`.
    masks
        each as :func:`apply_mask` takes it (a bool ``[n_layers, width]`` tensor (mode ``zero``), a
        :class:`MaskSpec` with its own mode, value and values, or ``None``: that slice runs unmasked). All must act
        on one signal.
    signal
        ``mlp_out`` or ``mlp_act`` (default: the MaskSpecs' signal, else ``mlp_out``).
    spec
        the model's :class:`fnet.models.ArchSpec` (looked up when omitted).

    Yields
    ------
    The number of slices, ``len(masks)``.

    Notes
    -----
    Every forward pass in the context must have a batch of ``len(masks) * rows``, slice i being rows
    ``i * rows .. (i + 1) * rows - 1``: repeat the inputs mask-major, e.g. ``input_ids.repeat(len(masks), 1)``,
    and read mask i's outputs at the same slice. Each slice is edited by the same per-layer operation
    :func:`apply_mask` uses, so every slice's values equal a separate run with that mask and the same rows
    (``tests/test_mask_batch.py`` checks logits and scores for equality, both signals, lesion and preservation).
    A batch that does not split evenly raises ``ValueError``. A forward pass of another batch size (a shared
    prefix computed once, for instance) cannot be masked per slice: score without such shortcuts
    (:func:`fnet.intervene.batched.score_loglik_masks` does).

    Examples
    --------
    >>> import torch
    >>> from fnet.models import load_model
    >>> lm = load_model("tiny:gpt2")
    >>> ids = lm.tokenizer(["hello world", "good night!"], return_tensors="pt")["input_ids"]  # [2, 11]
    >>> masks = [torch.zeros(lm.n_layers, lm.d_model, dtype=torch.bool) for _ in range(3)]
    >>> masks[1][0, :8] = True
    >>> masks[2][2, 5] = True
    >>> with torch.no_grad(), apply_masks(lm.model, masks):
    ...     batched = lm.model(ids.repeat(3, 1)).logits.view(3, 2, 11, -1)  # [mask, row, pos, vocab]
    >>> with torch.no_grad(), apply_mask(lm.model, masks[1]):
    ...     alone = lm.model(ids).logits
    >>> torch.equal(batched[1], alone), torch.equal(batched[0], batched[1])
    (True, False)
    """
    spec = spec or get_arch(model)
    masks = list(masks)
    if not masks:
        raise ValueError("apply_masks needs at least one mask")
    signals = {m.signal for m in masks if isinstance(m, MaskSpec)}
    if signal is None and len(signals) > 1:
        raise ValueError(f"the masks act on different signals {sorted(signals)}: one forward pass edits one signal")
    signal = check_signal(signal or (signals.pop() if signals else "mlp_out"))
    slices = [{} if m is None else _layer_hooks(model, m, signal, None, None, spec)[1] for m in masks]
    layers = sorted({layer for hooks in slices for layer in hooks})
    n = len(masks)

    def edit(layer: int, hidden: torch.Tensor) -> torch.Tensor:  # hidden  # [mask * row, seq, width]
        if hidden.shape[0] % n:
            raise ValueError(f"a batch of {hidden.shape[0]} does not split into {n} equal slices, one per mask")
        rows = hidden.shape[0] // n
        parts = [hidden[i * rows : (i + 1) * rows] for i in range(n)]
        return torch.cat(
            [part if layer not in hooks else hooks[layer].transform(part) for part, hooks in zip(parts, slices)]
        )

    if not layers:
        yield n
        return
    with trace_signal(model, signal, edit=edit, layers=layers, spec=spec):
        yield n


def _layer_hooks(
    model: nn.Module,
    mask: torch.Tensor | MaskSpec,
    signal: str | None,
    mode: str | None,
    value: float | None,
    spec: ArchSpec | None,
) -> tuple[str, dict[int, _LayerMaskHook]]:
    """The checked signal and one :class:`_LayerMaskHook` per layer whose row of ``mask`` has a True entry."""
    values = None
    if isinstance(mask, MaskSpec):
        signal = signal or mask.signal
        mode = mode or mask.mode
        value = mask.value if value is None else value
        values = mask.values
        mask = mask.mask
    signal = check_signal(signal or "mlp_out")
    mode = _check_apply_mode(mode or "zero")
    value = 0.0 if value is None else float(value)

    spec = spec or get_arch(model)
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor [n_layers, width], got {type(mask).__name__}")
    n_layers, width = expected_mask_shape(model, signal, spec)
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must have dtype torch.bool, got {mask.dtype} (expected bool [n_layers, width] = "
            f"[{n_layers}, {width}] for signal {signal!r}); convert explicitly, e.g. mask != 0"
        )
    if tuple(mask.shape) != (n_layers, width):
        raise ValueError(
            f"mask has shape {list(mask.shape)}, expected [n_layers, width] = [{n_layers}, {width}] for signal "
            f"{signal!r} of this {spec.family} model"
        )
    n_blocks = len(find_blocks(model, spec))
    if n_blocks != n_layers:  # config and module tree disagree: refuse rather than mask the wrong layers
        raise ValueError(f"model has {n_blocks} blocks but its config says n_layers={n_layers}")

    mask = mask.detach().to("cpu")
    # one object per layer owns its row; layers whose row is all False get no hook (and no per-call cost)
    if mode == "replace" and values is None:
        raise ValueError("mode='replace' needs a MaskSpec with values [n_layers, width]")
    by_layer = {
        layer: _LayerMaskHook(
            layer, mask[layer].clone(), mode, value, None if values is None else values[layer].clone()
        )
        for layer in range(n_layers)
        if bool(mask[layer].any())
    }
    return signal, by_layer
