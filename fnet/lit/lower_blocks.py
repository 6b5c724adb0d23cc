"""Run a causal LM from a stored hidden state: its frozen lower blocks replaced by what they once computed.

When only the top blocks of a model train (``trainable_layers=N``, or LoRA adapters in the top blocks), the hidden
state entering the lowest block that trains is a function of the input alone. :mod:`fnet.lit.features` computes it
once per row and stores it; while training, the model's **own forward** runs with its frozen lower blocks swapped for
one :class:`Replay` module that returns that stored state, so only the embedding lookup, the top blocks, the final
norm and the task head compute anything.

Why swap blocks inside the model's own forward, and not call the top blocks in a loop: besides the hidden state, a
block needs the causal and padding mask in the layout its attention implementation wants, rotary position
embeddings made from the position ids, cache objects and keyword arguments that differ per architecture and per
transformers release. The model's forward builds all of them; a hand-written loop would have to rebuild each (a
per-architecture table). Nor through ``inputs_embeds``: it enters *before* block 0, and models add to it (GPT-2
adds its position embeddings). No library offers "start the forward at block k" (peft, accelerate and transformers
do not); what is written by hand here is only the swap and one dry run that learns, by structure, how a block
returns its hidden state (a tensor in transformers 5, a tuple ``(hidden, ...)`` in older releases).

Where the split lies is read off the parameters (:func:`find_lower_blocks`): the lowest block with a trainable
parameter; the blocks below it are the frozen ones. The dry run also checks that nothing that runs before the
blocks trains (the embeddings): a stored state would silently freeze it.

Layouts: stored states are ``[batch, seq, d_model]``; sequence-first models (ChatGLM) get them transposed.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from fnet.models import find_blocks, get_arch, to_batch_first

__all__ = ["LowerBlocks", "LowerBlocksError", "Replay", "find_lower_blocks", "replay_lower_blocks", "lower_output"]

#: ``forward(model, input_ids, attention_mask) -> final hidden states``: how the task modules run the model
#: (:func:`fnet.lit.classification.final_hidden_states`); the dry run and the capture go through the same call.
Forward = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class LowerBlocksError(ValueError):
    """The model cannot be run from a stored lower state (nothing frozen below a trained block, a trained module
    before the blocks, or real tokens whose states depend on padding)."""


class _Stop(Exception):
    """Raised by a hook once what is needed has been read; the rest of the forward is not run."""


@dataclass(frozen=True)
class LowerBlocks:
    """The frozen lower blocks of a model.

    Attributes
    ----------
    split
        blocks ``[0, split)`` are frozen and replayed; block ``split`` is the lowest that trains (``split ==
        n_blocks``: no block trains, the stored state is the last block's output).
    n_blocks
        the model's number of blocks.
    output
        how a block returns its hidden state, measured by the dry run: ``0`` a tensor, ``k > 0`` a tuple of ``k``
        items with the hidden state first.
    """

    split: int
    n_blocks: int
    output: int

    def describe(self) -> dict[str, int]:
        return asdict(self)


class Replay(nn.Module):
    """Stands in for every frozen lower block during one forward: returns the stored state (in the model's layout
    and in the block's output format) whatever it is given, so the first trained block receives it."""

    def __init__(self, state: torch.Tensor, output: int):
        super().__init__()
        self.state = state
        self.output = output

    def forward(self, *args: Any, **kwargs: Any):
        return self.state if self.output == 0 else (self.state,) + (None,) * (self.output - 1)


def _block_hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _probe_ids(model: nn.Module) -> torch.Tensor:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = int(embeddings.weight.shape[0]) if embeddings is not None else 2
    device = embeddings.weight.device if embeddings is not None else None
    return (torch.arange(6).reshape(2, 3) % max(vocab, 1)).to(device)


def _dry_run(model: nn.Module, forward: Forward) -> tuple[int, list[str]]:
    """One forward of ``[2, 3]`` tokens stopped after block 0: (block output format, names of the modules outside the
    blocks whose forward finished before block 0 started, i.e. what computes the blocks' input)."""
    blocks = find_blocks(model)
    in_blocks = {id(m) for m in blocks.modules()}
    seen: dict[str, Any] = {"before": [], "started": False}

    def on_block_start(*_):
        seen["started"] = True

    def on_block_end(_module, _args, output):
        seen["output"] = len(output) if isinstance(output, (tuple, list)) else 0
        raise _Stop

    handles = [blocks[0].register_forward_pre_hook(on_block_start), blocks[0].register_forward_hook(on_block_end)]
    for name, module in model.named_modules():
        if id(module) in in_blocks or module is model:
            continue

        def done(_module, _args, _output, _name=name):
            if not seen["started"]:
                seen["before"].append(_name)

        handles.append(module.register_forward_hook(done))
    was_training = model.training
    model.eval()
    ids = _probe_ids(model)
    try:
        with torch.no_grad():
            forward(model, ids, torch.ones_like(ids))
    except _Stop:
        pass
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if "output" not in seen:
        raise LowerBlocksError(f"{type(model).__name__}: block 0 did not run in a forward pass")
    return seen["output"], seen["before"]


def find_lower_blocks(model: nn.Module, forward: Forward) -> LowerBlocks:
    """The frozen lower blocks of ``model`` as its parameters say (the lowest block with a trainable parameter is
    the first one that runs), checked with one dry run.

    Raises
    ------
    LowerBlocksError
        when block 0 trains (nothing to store), or a module that runs before the blocks (an embedding) trains.
    """
    blocks = find_blocks(model)
    trains = [any(p.requires_grad for p in block.parameters()) for block in blocks]
    split = trains.index(True) if any(trains) else len(blocks)
    if split == 0:
        raise LowerBlocksError(
            "block 0 trains, so no frozen lower block's output can be stored; cache features "
            "only when the bottom blocks are frozen (module.trainable_layers=N < n_blocks)"
        )
    output, before = _dry_run(model, forward)
    modules = dict(model.named_modules())
    trained_before = [name for name in before if any(p.requires_grad for p in modules[name].parameters())]
    if trained_before:
        raise LowerBlocksError(
            f"{trained_before} run before the blocks and train; a stored lower state would "
            "freeze them. Freeze them or do not cache features"
        )
    return LowerBlocks(split=split, n_blocks=len(blocks), output=output)


def lower_output(
    model: nn.Module, lower: LowerBlocks, forward: Forward, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``[batch, seq, d_model]``: the hidden state entering block ``lower.split`` (the output of block
    ``split - 1``), computed in eval mode without gradients; the forward stops there."""
    block = find_blocks(model)[lower.split - 1]
    captured: list[torch.Tensor] = []

    def grab(_module, _args, output):
        captured.append(_block_hidden(output).detach())
        raise _Stop

    handle = block.register_forward_hook(grab)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward(model, input_ids, attention_mask)
    except _Stop:
        pass
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        raise LowerBlocksError(f"block {lower.split - 1} did not run in the forward pass")
    return to_batch_first(captured[0], get_arch(model))


@contextlib.contextmanager
def replay_lower_blocks(model: nn.Module, lower: LowerBlocks, state: torch.Tensor) -> Iterator[None]:
    """While active, blocks ``[0, lower.split)`` of ``model`` are one :class:`Replay` of ``state``
    (``[batch, seq, d_model]``, the batch's stored lower output, padded like its input ids); restored on exit, so
    checkpoints, masks and recordings see the real blocks."""
    blocks = find_blocks(model)
    if len(blocks) != lower.n_blocks:
        raise LowerBlocksError(f"the model has {len(blocks)} blocks, the stored state was made for {lower.n_blocks}")
    weight = next((p for p in blocks[lower.split - 1].parameters() if p.is_floating_point()), None)
    if weight is not None:
        state = state.to(device=weight.device, dtype=weight.dtype)
    replay = Replay(to_batch_first(state, get_arch(model)), lower.output)
    saved = [blocks[i] for i in range(lower.split)]
    try:
        for i in range(lower.split):
            blocks[i] = replay
        yield
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block
