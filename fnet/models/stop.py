"""Stopping a forward pass early: the stop half of fnet's hook primitive.

:class:`StopForward` is what a hook raises to end a forward pass once what it needs is computed, and
:func:`stop_at` hooks one module, lets ``read`` see its input or output, stops there and swallows the exception.
:func:`fnet.hooks.trace_signal` (``stop=True``) stops with the same exception; the Lightning heads read the LM
head's input with :func:`stop_at`.

Why in ``models`` and not in :mod:`fnet.hooks`: hooks sits above models (it hooks the sites of the architecture
that :mod:`fnet.models.discovery` finds), and discovery's dry run, which finds that architecture, must stop a
forward pass before there is any. This module imports nothing of fnet, so both can use it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from torch import nn

__all__ = ["StopForward", "stop_at"]


class StopForward(Exception):
    """Raised by a hook: nothing after it is computed. :func:`stop_at` and :func:`fnet.hooks.trace_signal`
    swallow it, so the forward call inside them simply returns early."""


@contextlib.contextmanager
def stop_at(module: nn.Module, *, before: bool = False, read: Callable[[Any], None] | None = None) -> Iterator[None]:
    """Within the block, a forward pass that reaches ``module`` stops there, and the block ends.

    ``before``: stop before ``module`` runs (a forward pre-hook; ``read`` gets its positional inputs), else right
    after it (``read`` gets its output). The hook is removed on exit, also on error.

    >>> import torch
    >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> seen = []
    >>> with stop_at(model[1], read=seen.append):
    ...     model(torch.ones(4, 2))  # stops after the ReLU: the last Linear never runs
    >>> seen[0].shape
    torch.Size([4, 3])
    """

    def stop_before(_module: nn.Module, args: tuple) -> None:
        if read is not None:
            read(args)
        raise StopForward(type(module).__name__)

    def stop_after(_module: nn.Module, _args: tuple, output: Any) -> None:
        if read is not None:
            read(output)
        raise StopForward(type(module).__name__)

    handle = module.register_forward_pre_hook(stop_before) if before else module.register_forward_hook(stop_after)
    try:
        yield
    except StopForward:
        pass
    finally:
        handle.remove()
