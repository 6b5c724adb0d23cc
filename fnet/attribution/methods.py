"""Attribution of next-token predictions to MLP neurons: integrated gradients and activation x gradient.

The function that is attributed
-------------------------------
Take a batch of token sequences and let ``x_l`` be layer ``l``'s signal (``mlp_out`` or ``mlp_act``, see
:mod:`fnet.models`) at every position, ``[batch, seq, width]``. Define

    G(x_0, ..., x_{L-1}) = sum over the batch of log p(target token | prefix) at each sample's target position

computed by running the model with a hook on every layer's signal module that *discards* what the module
computed and returns the given ``x_l`` instead. Because every layer is patched, ``G`` is a fixed, well-defined
function of the L patched tensors: a change of ``x_l`` moves the residual stream that later layers read, but
later layers' signals are overwritten by their own patched values, so the only paths from ``x_l`` to the output
are those that avoid every other layer's signal. Its gradients are therefore *partial* derivatives (paths
through later signals cut) and one backward pass gives all layers' partials at once. With the clean values
(recorded in an ordinary forward pass) ``G(clean)`` is exactly the model's output.

Integrated gradients (Sundararajan et al. 2017) along the straight line ``b + alpha (x - b)`` from a baseline
``b`` to the clean ``x``:

    IG_i = (x_i - b_i) * integral_0^1 dG/dx_i (b + alpha (x - b)) d alpha

satisfies completeness *for G*: ``sum_i IG_i = G(x) - G(b)`` (the fundamental theorem of calculus along the
path), up to the quadrature error of the alpha integral. The integral uses Gauss-Legendre nodes on [0, 1]
(``numpy.polynomial.legendre.leggauss``), Captum's default, which is exact for polynomials of degree
``2 * steps - 1`` and so converges much faster than a Riemann sum. ``i`` runs over (position, layer, unit);
samples in a batch do not interact, so the batch sum's gradient holds every sample's own gradient.

Activation x gradient is the one-point version at the clean input: ``(x - b) * dG/dx (x)``; with the zero
baseline, the activation times its (partial) gradient.

Baselines: ``zero`` (all signals 0) or ``mean`` (a per-neuron mean ``[layer, unit]``, e.g. over a corpus,
broadcast to every position), or any tensor broadcastable to ``[batch, seq, layer, unit]``.

Everything architecture-specific goes through the one hook primitive :func:`fnet.hooks.trace_signal`
(``edit=...``), which finds the sites by structure and converts sequence-first layouts in one place.

Why hand-written: Captum's ``LayerIntegratedGradients`` attributes to one layer at a time (or, with a list of
layers, still interpolates each layer separately while the others keep their unpatched values), so it would
need L x steps passes per batch and its multi-layer completeness is not the one above. Patching all layers from
one leaf tensor takes a few dozen lines of hooks and gives every layer's attributions from ``steps`` passes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fnet.hooks import trace_signal
from fnet.models import ArchSpec, check_signal, get_arch, signal_modules

__all__ = [
    "METHODS",
    "BASELINES",
    "AttributionResult",
    "attribute",
    "integrated_gradients",
    "activation_x_gradient",
    "replace_signals",
    "target_log_probs",
    "gauss_legendre_01",
]


METHODS = ("ig", "act_x_grad")
BASELINES = ("zero", "mean")


# --------------------------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def replace_signals(
    model: nn.Module,
    signal: str,
    replace: Callable[[int, torch.Tensor], torch.Tensor],
    *,
    spec: ArchSpec | None = None,
) -> Iterator[list]:
    """While active, every layer's signal is replaced by ``replace(layer, hidden)``.

    ``hidden`` is the signal the module computed, in batch-first layout ``[batch, seq, width]``; the return value
    (same shape, batch-first) is what the rest of the model sees. An ``edit`` of :func:`fnet.hooks.trace_signal`
    (per-layer hook objects, layout handled there); hooks are removed on exit, also on error.

    Parameters
    ----------
    model
        the causal LM.
    signal
        ``mlp_out`` | ``mlp_act``.
    replace
        ``replace(layer, hidden) -> hidden``.
    spec
        the model's :class:`~fnet.models.ArchSpec`; found from ``model`` when ``None``.

    Yields
    ------
    list
        the per-layer hook objects.
    """
    with trace_signal(model, check_signal(signal), edit=replace, spec=spec) as hooks:
        yield hooks


def target_log_probs(logits: torch.Tensor, target_positions: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """``log p(target_ids[b] | prefix)`` read at ``target_positions[b]``.

    Parameters
    ----------
    logits
        [batch, seq, vocab] (batch-first: HF models return logits batch-first in every layout).
    target_positions
        [batch] int, the position *before* the target token.
    target_ids
        [batch] int.

    Returns
    -------
    [batch] float.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    picked = logits[rows, target_positions.to(logits.device)]  # [batch, vocab]
    picked = picked.to(torch.promote_types(picked.dtype, torch.float32))  # fp16/bf16 models: softmax in fp32
    return picked.log_softmax(dim=-1).gather(1, target_ids.to(logits.device)[:, None])[:, 0]


def gauss_legendre_01(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on [0, 1]: ``(alphas [steps], weights [steps])``, weights sum to 1.

    Parameters
    ----------
    steps
        number of nodes (>= 1).

    Returns
    -------
    alphas : torch.Tensor
        [steps] nodes in (0, 1), float64.
    weights : torch.Tensor
        [steps] weights, float64.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    nodes, weights = np.polynomial.legendre.leggauss(int(steps))  # on [-1, 1]
    return torch.from_numpy((nodes + 1.0) / 2.0), torch.from_numpy(weights / 2.0)


# --------------------------------------------------------------------------------------------------------------
# Attribution
# --------------------------------------------------------------------------------------------------------------
@dataclass
class AttributionResult:
    """Attributions of each sample's target log-probability to every neuron at every position.

    Parameters
    ----------
    attributions
        [batch, seq, layer, unit] (the model's dtype, on CPU; 0 at padded positions: nothing
        reads them).
    activations
        [batch, seq, layer, unit], the clean signal.
    target_logprob
        [batch], ``G(clean)`` per sample (the unpatched model's log-probability).
    baseline_logprob
        [batch], ``G(baseline)`` per sample, when asked for (else None).
    method, steps, signal
        how they were computed.
    """

    attributions: torch.Tensor
    activations: torch.Tensor
    target_logprob: torch.Tensor
    baseline_logprob: torch.Tensor | None
    method: str
    steps: int
    signal: str

    def at_targets(self, target_positions: torch.Tensor) -> torch.Tensor:
        """Attributions at each sample's target position: [batch, layer, unit]."""
        rows = torch.arange(self.attributions.shape[0])
        return self.attributions[rows, target_positions.cpu()]

    def summed_over_positions(self) -> torch.Tensor:
        """Attributions summed over positions (the total credit of each (layer, unit)): [batch, layer, unit]."""
        return self.attributions.sum(dim=1)


def _baseline_tensor(baseline, clean: torch.Tensor) -> torch.Tensor:
    """``baseline`` as a tensor broadcastable to ``clean  # [batch, seq, layer, unit]``."""
    if baseline is None or (isinstance(baseline, str) and baseline == "zero"):
        return torch.zeros((), dtype=clean.dtype, device=clean.device)
    if isinstance(baseline, str):
        raise ValueError(
            f"baseline {baseline!r} needs values: pass the per-neuron mean as a [layer, unit] tensor "
            f"(valid names: {list(BASELINES)})"
        )
    base = torch.as_tensor(baseline, dtype=clean.dtype).to(clean.device)
    try:
        torch.broadcast_shapes(base.shape, clean.shape)
    except RuntimeError as err:
        raise ValueError(
            f"baseline of shape {tuple(base.shape)} does not broadcast to the signal {tuple(clean.shape)} "
            f"[batch, seq, layer, unit]"
        ) from err
    return base


def _forward(model, input_ids, attention_mask):
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def attribute(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_positions: torch.Tensor,
    target_ids: torch.Tensor,
    *,
    signal: str = "mlp_out",
    method: str = "ig",
    steps: int = 16,
    baseline: str | torch.Tensor | None = "zero",
    alpha_batch: int | None = None,
    return_baseline_output: bool = False,
    spec: ArchSpec | None = None,
) -> AttributionResult:
    """Attribute each sample's next-token log-probability to every layer's signal (see the module docstring).

    Parameters
    ----------
    model
        a registry causal LM (eval mode).
    input_ids, attention_mask
        [batch, seq] (right padding; the targets must be at real positions).
    target_positions
        [batch] position whose logits predict the target (the one before the target token).
    target_ids
        [batch] the target token ids.
    signal
        ``mlp_out`` | ``mlp_act``.
    method
        ``ig`` (integrated gradients) | ``act_x_grad``.
    steps
        Gauss-Legendre nodes for ``ig``.
    baseline
        ``zero``, or a tensor broadcastable to [batch, seq, layer, unit] (e.g. a [layer, unit] mean).
    alpha_batch
        for ``ig``, how many alpha values share one forward/backward pass (the batch is repeated
        that many times); default all ``steps`` at once. Lower it to save memory.
    return_baseline_output
        also compute ``G(baseline)`` (one extra forward pass) for completeness checks.
    spec
        The model's :class:`~fnet.models.ArchSpec` (where its MLPs are); found from ``model`` when ``None``.

    Returns
    -------
    AttributionResult
        ``attributions`` and ``activations`` [batch, seq, layer, unit], ``target_logprob`` [batch].

    Examples
    --------
    Integrated gradients are complete: each sample's attributions sum to ``G(clean) - G(baseline)``.

    >>> import torch
    >>> from fnet.models import load_model
    >>> lm = load_model("tiny:gpt2")
    >>> batch = lm.tokenizer(["hello world", "hi"], return_tensors="pt", padding=True)  # [2, 11], right padding
    >>> result = attribute(lm.model, batch["input_ids"], batch["attention_mask"], target_positions=torch.tensor([3, 1]),
    ...                    target_ids=torch.tensor([5, 6]), steps=8, return_baseline_output=True)
    >>> tuple(result.attributions.shape), tuple(result.target_logprob.shape)
    ((2, 11, 3, 32), (2,))
    >>> total = result.attributions.sum(dim=(1, 2, 3))  # [batch]
    >>> torch.allclose(total, result.target_logprob - result.baseline_logprob, atol=1e-4)
    True
    >>> bool(result.attributions[1, 2:].eq(0).all())  # padded positions of the short sample
    True
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; valid: {list(METHODS)}")
    spec = spec or get_arch(model)
    check_signal(signal)
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    target_positions, target_ids = target_positions.to(device), target_ids.to(device)
    n_layers = len(signal_modules(model, signal, spec))

    if method == "act_x_grad":
        return _act_x_grad(
            model,
            input_ids,
            attention_mask,
            target_positions,
            target_ids,
            signal,
            baseline,
            return_baseline_output,
            spec,
            n_layers,
        )

    # 1. clean values of every layer's signal (and G(clean)) from an ordinary forward pass
    layers_clean: list[torch.Tensor | None] = [None] * n_layers

    def keep(layer: int, hidden: torch.Tensor) -> torch.Tensor:
        layers_clean[layer] = hidden.detach().clone()  # a copy: some models add to the MLP output in place (Falcon)
        return hidden

    with torch.no_grad(), replace_signals(model, signal, keep, spec=spec):
        logits = _forward(model, input_ids, attention_mask)
    target_logprob = target_log_probs(logits, target_positions, target_ids)  # [batch]
    del logits
    clean = torch.stack(layers_clean, dim=2)  # [batch, seq, layer, unit]
    base = _baseline_tensor(baseline, clean)
    delta = clean - base  # [batch, seq, layer, unit]

    # 2. gradients of G along the path, integrated over alpha
    integrated = _path_integral(
        model, input_ids, attention_mask, target_positions, target_ids, signal, spec, base, delta, steps, alpha_batch
    )
    attributions = delta * integrated

    baseline_logprob = None
    if return_baseline_output:
        baseline_logprob = _baseline_output(
            model, input_ids, attention_mask, target_positions, target_ids, signal, base.expand_as(clean), spec
        )
    return AttributionResult(
        attributions=attributions.cpu(),
        activations=clean.cpu(),
        target_logprob=target_logprob.cpu(),
        baseline_logprob=baseline_logprob,
        method="ig",
        steps=int(steps),
        signal=signal,
    )


def _path_integral(
    model, input_ids, attention_mask, target_positions, target_ids, signal, spec, base, delta, steps, alpha_batch
) -> torch.Tensor:
    """``sum_k w_k dG/dx(b + alpha_k delta)`` over the Gauss-Legendre nodes, ``[batch, seq, layer, unit]``;
    ``alpha_batch`` alpha values per forward/backward pass (the batch repeated that many times)."""
    alphas, weights = gauss_legendre_01(steps)
    chunk = max(1, min(int(alpha_batch or steps), steps))
    batch = input_ids.shape[0]
    shape = delta.shape[-4:]  # [batch, seq, layer, unit]
    integrated = delta.new_zeros(shape)  # [batch, seq, layer, unit]
    for start in range(0, steps, chunk):
        alpha = alphas[start : start + chunk].to(device=input_ids.device, dtype=delta.dtype)  # [n]
        weight = weights[start : start + chunk].to(device=input_ids.device, dtype=delta.dtype)  # [n]
        n = alpha.shape[0]
        # patched: [n*batch, seq, layer, unit], ONE leaf; layer l's hook returns its slice [..., l, :]
        patched = (base + alpha[:, None, None, None, None] * delta).reshape(n * batch, *shape[1:])
        patched = patched.detach().requires_grad_(True)
        with replace_signals(model, signal, lambda layer, _hidden: patched[:, :, layer, :], spec=spec):
            logits = _forward(model, input_ids.repeat(n, 1), attention_mask.repeat(n, 1))
            value = target_log_probs(logits, target_positions.repeat(n), target_ids.repeat(n)).sum()
        (grad,) = torch.autograd.grad(value, patched)
        del logits, value
        integrated += (weight[:, None, None, None, None] * grad.view(n, *shape)).sum(dim=0)
    return integrated


def _baseline_output(model, input_ids, attention_mask, target_positions, target_ids, signal, base, spec):
    """G(baseline): every layer's signal set to the baseline."""
    with torch.no_grad(), replace_signals(model, signal, lambda layer, _h: base[:, :, layer, :], spec=spec):
        logits = _forward(model, input_ids, attention_mask)
    return target_log_probs(logits, target_positions, target_ids).cpu()


def _act_x_grad(
    model,
    input_ids,
    attention_mask,
    target_positions,
    target_ids,
    signal,
    baseline,
    return_baseline_output,
    spec,
    n_layers,
) -> AttributionResult:
    """One forward + one backward: each layer's hook swaps its signal for a detached leaf with the same values.
    The forward is numerically the clean one, and the leaves make the gradients G's partial derivatives."""
    leaves: list[torch.Tensor | None] = [None] * n_layers

    def as_leaf(layer: int, hidden: torch.Tensor) -> torch.Tensor:
        leaf = hidden.detach().requires_grad_(True)
        leaves[layer] = leaf
        return leaf

    with replace_signals(model, signal, as_leaf, spec=spec):
        logits = _forward(model, input_ids, attention_mask)
        target_logprob = target_log_probs(logits, target_positions, target_ids)  # [batch]
    grads = torch.autograd.grad(target_logprob.sum(), leaves)
    del logits
    clean = torch.stack([leaf.detach() for leaf in leaves], dim=2)  # [batch, seq, layer, unit]
    gradient = torch.stack(grads, dim=2)  # [batch, seq, layer, unit]
    base = _baseline_tensor(baseline, clean)
    attributions = (clean - base) * gradient
    baseline_logprob = None
    if return_baseline_output:
        baseline_logprob = _baseline_output(
            model, input_ids, attention_mask, target_positions, target_ids, signal, base.expand_as(clean), spec
        )
    return AttributionResult(
        attributions=attributions.cpu(),
        activations=clean.cpu(),
        target_logprob=target_logprob.detach().cpu(),
        baseline_logprob=baseline_logprob,
        method="act_x_grad",
        steps=1,
        signal=signal,
    )


def integrated_gradients(model, input_ids, attention_mask, target_positions, target_ids, **kwargs) -> AttributionResult:
    """:func:`attribute` with ``method="ig"``.

    Parameters
    ----------
    model
        a registry causal LM (eval mode).
    input_ids, attention_mask
        [batch, seq] (right padding).
    target_positions
        [batch] position whose logits predict the target.
    target_ids
        [batch] the target token ids.
    **kwargs
        the other keyword arguments of :func:`attribute`.

    Returns
    -------
    AttributionResult
        ``attributions`` and ``activations`` [batch, seq, layer, unit], ``target_logprob`` [batch].
    """
    return attribute(model, input_ids, attention_mask, target_positions, target_ids, method="ig", **kwargs)


def activation_x_gradient(
    model, input_ids, attention_mask, target_positions, target_ids, **kwargs
) -> AttributionResult:
    """:func:`attribute` with ``method="act_x_grad"``.

    Parameters
    ----------
    model
        a registry causal LM (eval mode).
    input_ids, attention_mask
        [batch, seq] (right padding).
    target_positions
        [batch] position whose logits predict the target.
    target_ids
        [batch] the target token ids.
    **kwargs
        the other keyword arguments of :func:`attribute` (``steps`` is ignored).

    Returns
    -------
    AttributionResult
        ``attributions`` and ``activations`` [batch, seq, layer, unit], ``target_logprob`` [batch].
    """
    kwargs.pop("steps", None)
    return attribute(model, input_ids, attention_mask, target_positions, target_ids, method="act_x_grad", **kwargs)
