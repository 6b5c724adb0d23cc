"""The one hook primitive of fnet: read, edit and stop at a layer's MLP signal.

Recording (:mod:`fnet.recording.recorder`), masking (:mod:`fnet.intervene`) and attribution (:mod:`fnet.attribution`)
all go through :func:`trace_signal`. It registers one :class:`SiteHook` per layer on the module that
:func:`fnet.models.signal_modules` names (a forward hook for ``mlp_out``: the down projection's output; a forward
pre-hook for ``mlp_act``: its input). Each hook object owns its layer index and site name, so no closure over a
loop variable can bind every layer to the last one (the bug of the published code; ``tests/test_masking.py``
keeps a copy of that loop and shows it fails). The sequence-first conversion happens here and only here:
``read`` and ``edit`` see ``[batch, seq, width]`` in every architecture.

Stopping: with ``stop=True`` the last traced site raises :class:`fnet.models.stop.StopForward` and
:func:`trace_signal` swallows it, so ``with trace_signal(..., stop=True): model(...)`` simply returns early. That
exception, and :func:`fnet.models.stop.stop_at` (stop at any one module), live one layer down, in ``models``,
because the architecture discovery's dry run stops a forward pass too, before any site exists.

Sites have TransformerLens-style names, used in logs, errors and provenance: ``blocks.{l}.hook_mlp_out`` and
``blocks.{l}.mlp.hook_post`` (``mlp_act``).

Why hand-written: baukit's ``TraceDict`` (edit_output / stop) is the model for this design, but it hooks module
*outputs* by name only (``mlp_act`` is an *input*), knows no sequence-first layout and is not on PyPI in a
maintained form; TransformerLens / nnsight wrap or rewrite the model. Forty lines of PyTorch hooks are the
smallest thing that does exactly this.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from fnet.models import ArchSpec, check_signal, get_arch, signal_modules, to_batch_first
from fnet.models.stop import StopForward

__all__ = ["SITE_NAMES", "site_name", "SiteHook", "trace_signal"]

#: signal -> TransformerLens-style site name pattern
SITE_NAMES = {"mlp_out": "blocks.{layer}.hook_mlp_out", "mlp_act": "blocks.{layer}.mlp.hook_post"}


def site_name(signal: str, layer: int) -> str:
    """``blocks.3.hook_mlp_out`` for ``("mlp_out", 3)``, ``blocks.3.mlp.hook_post`` for ``("mlp_act", 3)``."""
    return SITE_NAMES[check_signal(signal)].format(layer=int(layer))


Read = Callable[[int, torch.Tensor], None]
Edit = Callable[[int, torch.Tensor], torch.Tensor]


class SiteHook:
    """The hook of ONE site (layer and signal); it owns its layer index.

    ``read(layer, hidden)`` gets a ``[batch, seq, width]`` view of the signal (detach/clone it to keep it: some
    models change the tensor in place afterwards, e.g. Falcon adds attention to its MLP output).
    ``edit(layer, hidden)`` returns the ``[batch, seq, width]`` tensor the model goes on with (same shape).
    """

    def __init__(
        self,
        layer: int,
        signal: str,
        spec: ArchSpec,
        read: Read | None,
        edit: Edit | None,
        stop: bool,
        input_shape: dict | None = None,
    ):
        self.layer, self.signal, self.spec = int(layer), signal, spec
        self.input_shape = input_shape  # flat layouts: {"shape": (batch, seq)} of the current forward pass
        self.name = site_name(signal, layer)
        self.read, self.edit, self.stop = read, edit, stop

    def __repr__(self) -> str:
        return f"SiteHook({self.name!r}, read={self.read is not None}, edit={self.edit is not None}, stop={self.stop})"

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` in the model's layout -> what the model goes on with (model layout)."""
        if self.spec.flat:  # [batch*seq, width] -> [batch, seq, width] with the shape of this forward's input
            view = hidden.view(*self.input_shape["shape"], hidden.shape[-1])
        else:
            view = to_batch_first(hidden, self.spec)  # [batch, seq, width]
        if self.edit is not None:
            new = self.edit(self.layer, view)
            if not isinstance(new, torch.Tensor) or new.shape != view.shape:
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise ValueError(f"{self.name}: edit returned {got}, expected a tensor of shape {tuple(view.shape)}")
            view = new
            hidden = new.reshape(hidden.shape) if self.spec.flat else to_batch_first(new, self.spec)  # an involution
        if self.read is not None:
            self.read(self.layer, view)
        if self.stop:
            raise StopForward(self.name)
        return hidden

    # forward hook (mlp_out: the down projection's / MoE block's output)
    def forward_hook(self, _module: nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):  # e.g. (hidden, router_logits)
            return (self(output[0]),) + tuple(output[1:])
        return self(output)

    # forward pre-hook (mlp_act: the down projection's input)
    def forward_pre_hook(self, module: nn.Module, args: tuple) -> tuple:
        if not args:
            raise RuntimeError(f"{self.name}: {type(module).__name__} was called without a positional input")
        return (self(args[0]),) + tuple(args[1:])


@contextlib.contextmanager
def trace_signal(
    model: nn.Module,
    signal: str,
    *,
    read: Read | None = None,
    edit: Edit | None = None,
    layers: Sequence[int] | None = None,
    stop: bool = False,
    spec: ArchSpec | None = None,
) -> Iterator[list[SiteHook]]:
    """Read and/or edit one signal of the given ``layers`` (default all) during forward passes in the context.

    Parameters
    ----------
    model
        any causal LM fnet can discover (or a module holding one).
    signal
        ``mlp_out`` or ``mlp_act``.
    read
        ``read(layer, hidden  # [batch, seq, width])``, called after ``edit``.
    edit
        ``edit(layer, hidden  # [batch, seq, width]) -> [batch, seq, width]``.
    layers
        which layers to hook; ``stop=True`` ends the forward pass after the last of them.
    spec
        the model's :class:`ArchSpec` (found when omitted).

    Yields the :class:`SiteHook` objects; all are removed on exit, also on error.
    Examples
    --------
    >>> from fnet.models import load_model
    >>> lm = load_model("tiny:gpt2")
    >>> ids = lm.tokenizer("hello world", return_tensors="pt")["input_ids"]  # [1, 11]: the tiny tokenizer is bytes
    >>> shapes = {}
    >>> with trace_signal(lm.model, "mlp_out", read=lambda layer, h: shapes.setdefault(layer, tuple(h.shape))):
    ...     _ = lm.model(ids)
    >>> shapes  # layer -> [batch, seq, d_model]
    {0: (1, 11, 32), 1: (1, 11, 32), 2: (1, 11, 32)}
    """
    spec = spec or get_arch(model)
    modules = signal_modules(model, check_signal(signal), spec)
    chosen = sorted(set(range(len(modules)) if layers is None else (int(l) for l in layers)))
    bad = [l for l in chosen if not 0 <= l < len(modules)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {len(modules)} layers (0..{len(modules) - 1})")
    hooks, handles = [], []
    input_shape: dict = {}
    try:
        if spec.flat:  # the batch and sequence sizes of each forward pass, to unflatten [batch*seq, width]
            handles.append(
                model.register_forward_pre_hook(
                    lambda _m, args, kwargs: input_shape.__setitem__("shape", _batch_seq(args, kwargs)),
                    with_kwargs=True,
                )
            )
        for layer in chosen:
            hook = SiteHook(layer, signal, spec, read, edit, stop=stop and layer == chosen[-1], input_shape=input_shape)
            hooks.append(hook)
            module = modules[layer]
            if signal == "mlp_out":
                handles.append(module.register_forward_hook(hook.forward_hook))
            else:
                handles.append(module.register_forward_pre_hook(hook.forward_pre_hook))
        try:
            yield hooks
        except StopForward:
            if not stop:
                raise
            _offload_again(model)
    finally:
        for handle in handles:
            handle.remove()


def _offload_again(model: nn.Module) -> None:
    """After a stopped pass: give back the weights accelerate loaded for modules whose forward was cut short.

    accelerate's offload hook (``AlignDevicesHook(offload=True)``, from ``device_map`` with "cpu"/"disk" entries)
    loads a module's weights in ``pre_forward`` and sets them back to "meta" in ``post_forward``, with no
    ``try/finally`` around the forward; a module still running when :class:`StopForward` passes through it (a block
    or MLP with its own tensors, or one of ``preload_module_classes``) would keep its weights in memory. Its own
    ``post_forward`` puts them back."""
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is None:
            continue
        for part in getattr(hook, "hooks", (hook,)):  # a SequentialHook holds several
            if getattr(part, "offload", False) and any(
                t.device.type != "meta" for t in module.parameters(recurse=bool(part.place_submodules))
            ):
                part.post_forward(module, None)


def _batch_seq(args: tuple, kwargs: dict) -> tuple[int, int]:
    for value in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), args[0] if args else None):
        if isinstance(value, torch.Tensor) and value.ndim >= 2:
            return int(value.shape[0]), int(value.shape[1])
    raise ValueError("flat-layout model called without input_ids / inputs_embeds: cannot tell batch from sequence")
