"""The one hook primitive, :func:`fnet.hooks.trace_signal`: every layer gets ITS OWN edit (the late-binding bug
class of the published code), on every layout (GPT-2 Conv1D, Llama, sequence-first ChatGLM) and both signals."""

import contextlib

import pytest
import torch

from fnet.hooks import trace_signal
from fnet.models import load_model, signal_modules

FAMILIES = ["gpt2", "llama", "chatglm"]
SIGNALS = ["mlp_out", "mlp_act"]


def _ids():
    return torch.tensor([[5, 17, 99, 3, 250, 40], [7, 7, 120, 64, 1, 33]])  # [batch=2, seq=6]


def _rows(n_layers: int, width: int) -> torch.Tensor:
    """One distinct row per layer: layer l adds (l + 1) * 10 to unit l only, so rows never coincide."""
    rows = torch.zeros(n_layers, width)  # [layers, width]
    for layer in range(n_layers):
        rows[layer, layer] = 10.0 * (layer + 1)
    return rows


def _edits_seen(lm, signal, install):
    """Run the model with ``install(model, signal, edit)`` active; per layer, the signal before and after the edit
    (batch-first ``[batch, seq, width]``), read by plain hooks registered before and after the edit's own hooks
    (PyTorch runs hooks in registration order), so the check does not trust the edit's ``layer`` argument."""
    before, after = {}, {}
    rows = _rows(lm.n_layers, lm.width(signal))

    def edit(layer, hidden):  # [batch, seq, width]
        return hidden + rows[layer]

    def batch_first(t):
        return t.transpose(0, 1) if lm.arch.seq_first else t

    def observe(store):
        handles = []
        for layer, module in enumerate(signal_modules(lm.model, signal)):
            if signal == "mlp_out":
                handles.append(
                    module.register_forward_hook(
                        lambda _m, _a, out, layer=layer: store.__setitem__(layer, batch_first(out).detach().clone())
                    )
                )
            else:
                handles.append(
                    module.register_forward_pre_hook(
                        lambda _m, args, layer=layer: store.__setitem__(layer, batch_first(args[0]).detach().clone())
                    )
                )
        return handles

    handles = observe(before)
    try:
        with install(lm.model, signal, edit):
            handles += observe(after)
            with torch.no_grad():
                lm.model(_ids())
    finally:
        for handle in handles:
            handle.remove()
    return rows, before, after


def _check_own_rows(rows, before, after):
    for layer in range(len(rows)):
        torch.testing.assert_close(
            after[layer] - before[layer],
            rows[layer].expand_as(after[layer]),
            msg=lambda m, layer=layer: f"layer {layer} did not get its own row: {m}",
        )


def _trace_install(model, signal, edit):
    return trace_signal(model, signal, edit=edit)


@contextlib.contextmanager
def _published_loop(model, signal, edit):
    """A copy of the published hook loop: a closure over the loop variable ``layer``, read at CALL time, so every
    layer's hook edits with the last layer's row."""
    handles = []
    for layer, module in enumerate(signal_modules(model, signal)):
        if signal == "mlp_out":

            def hook(_module, _inputs, output):
                return edit(layer, output)

            handles.append(module.register_forward_hook(hook))
        else:

            def pre_hook(_module, args):
                return (edit(layer, args[0]),) + tuple(args[1:])

            handles.append(module.register_forward_pre_hook(pre_hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("signal", SIGNALS)
def test_each_layer_is_edited_with_its_own_row(family, signal):
    lm = load_model(f"tiny:{family}")
    assert lm.n_layers == 3
    rows, before, after = _edits_seen(lm, signal, _trace_install)
    assert sorted(before) == sorted(after) == [0, 1, 2]
    _check_own_rows(rows, before, after)


@pytest.mark.parametrize("signal", SIGNALS)
def test_the_published_late_binding_loop_fails_the_same_check(signal):
    lm = load_model("tiny:llama")  # batch-first, so the published loop's raw tensors are [batch, seq, width]
    rows, before, after = _edits_seen(lm, signal, _published_loop)
    with pytest.raises(AssertionError, match="layer 0 did not get its own row"):
        _check_own_rows(rows, before, after)
    # ... because every layer got the LAST layer's row
    for layer in range(lm.n_layers):
        torch.testing.assert_close(after[layer] - before[layer], rows[-1].expand_as(after[layer]))


def test_only_the_chosen_layers_are_edited_and_stop_ends_the_pass():
    lm = load_model("tiny:gpt2")
    seen = []
    with trace_signal(lm.model, "mlp_out", read=lambda layer, h: seen.append(layer), layers=[2, 0]):
        with torch.no_grad():
            lm.model(_ids())
    assert seen == [0, 2]
    seen.clear()
    after_stop = []
    handle = signal_modules(lm.model, "mlp_out")[2].register_forward_hook(lambda *a: after_stop.append(2))
    try:
        with trace_signal(lm.model, "mlp_out", read=lambda layer, h: seen.append(layer), layers=[0, 1], stop=True):
            with torch.no_grad():
                lm.model(_ids())
    finally:
        handle.remove()
    assert seen == [0, 1] and after_stop == []  # layer 2 never ran


def test_an_edit_of_the_wrong_shape_is_a_clear_error():
    lm = load_model("tiny:gpt2")
    with pytest.raises(ValueError, match=r"blocks\.0\.hook_mlp_out: edit returned \(2, 6, 31\)"):
        with trace_signal(lm.model, "mlp_out", edit=lambda layer, h: h[..., :-1]):
            with torch.no_grad():
                lm.model(_ids())
