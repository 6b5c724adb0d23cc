"""Attribution to MLP neurons: IG completeness per family/signal, act x grad vs autograd and finite differences,
key-neuron selection on hand-made arrays."""

import pytest
import torch

from fnet.attribution import (
    KeyNeuronCounter,
    attribute,
    gauss_legendre_01,
    n_top,
    replace_signals,
    select_key_neurons,
    target_log_probs,
)
from fnet.models import down_proj_modules, get_arch, load_model, signal_modules, to_batch_first

FAMILIES = ["gpt2", "llama", "chatglm"]
TEXTS = ["The cat sat on the mat.", "Hi there, you"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    """A tiny model in float64 whose MLPs matter: down projections scaled up so that the output depends on the
    MLP signals non-linearly (the random init barely uses them)."""
    lm = load_model(f"tiny:{request.param}")
    lm.model.double()
    with torch.no_grad():
        for module in down_proj_modules(lm.model):
            module.weight.mul_(8.0)
    return lm


def batch(lm):
    enc = lm.tokenizer(TEXTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = mask.sum(1) - 3  # not the last real token: later real positions must get 0 attribution
    targets = ids[torch.arange(len(TEXTS)), positions + 1]
    return ids, mask, positions, targets


def plain_log_probs(lm, ids, mask, positions, targets):
    with torch.no_grad():
        logits = lm.model(input_ids=ids, attention_mask=mask).logits
    return target_log_probs(logits, positions, targets)


@pytest.mark.parametrize("signal", ["mlp_out", "mlp_act"])
@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_ig_completeness(tiny, signal, baseline):
    ids, mask, positions, targets = batch(tiny)
    width = tiny.width(signal)
    draw = torch.Generator().manual_seed(0)  # its own RNG: the test must not depend on what ran before it
    base = (
        "zero" if baseline == "zero" else torch.randn(tiny.n_layers, width, dtype=torch.float64, generator=draw) * 0.5
    )
    result = attribute(
        tiny.model,
        ids,
        mask,
        positions,
        targets,
        signal=signal,
        method="ig",
        steps=32,
        baseline=base,
        alpha_batch=12,
        return_baseline_output=True,
    )
    assert result.attributions.shape == (len(TEXTS), ids.shape[1], tiny.n_layers, width)
    # G(clean) is the unpatched model's output
    torch.testing.assert_close(result.target_logprob, plain_log_probs(tiny, ids, mask, positions, targets))
    gap = result.target_logprob - result.baseline_logprob  # [batch]
    assert gap.abs().min() > 1e-3  # the check below is not vacuous
    total = result.attributions.sum(dim=(1, 2, 3))
    torch.testing.assert_close(total, gap, rtol=1e-4, atol=1e-6)  # Gauss-Legendre error only
    # causal model: neurons after the target position (and padding) get nothing
    for b in range(len(TEXTS)):
        assert result.attributions[b, positions[b] + 1 :].abs().max() == 0


def test_ig_quadrature_converges_and_alpha_batching_is_exact(tiny):
    ids, mask, positions, targets = batch(tiny)
    kwargs = dict(signal="mlp_out", method="ig", baseline="zero", return_baseline_output=True)
    one_pass = attribute(tiny.model, ids, mask, positions, targets, steps=6, **kwargs)
    chunked = attribute(tiny.model, ids, mask, positions, targets, steps=6, alpha_batch=4, **kwargs)
    torch.testing.assert_close(one_pass.attributions, chunked.attributions)
    gap = one_pass.target_logprob - one_pass.baseline_logprob
    err_1 = attribute(tiny.model, ids, mask, positions, targets, steps=1, **kwargs).attributions.sum((1, 2, 3)) - gap
    err_16 = attribute(tiny.model, ids, mask, positions, targets, steps=16, **kwargs).attributions.sum((1, 2, 3)) - gap
    assert err_16.abs().max() <= err_1.abs().max()


def test_gauss_legendre_weights():
    alphas, weights = gauss_legendre_01(5)
    assert alphas.min() > 0 and alphas.max() < 1
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close((weights * alphas**4).sum(), torch.tensor(0.2, dtype=torch.float64))  # exact


def patched_output(lm, signal, values, ids, mask, positions, targets):
    """G(values): every layer's signal replaced by values[:, :, layer, :] (batch-first), by an independent hook."""
    with torch.no_grad(), replace_signals(lm.model, signal, lambda layer, _h: values[:, :, layer, :]):
        logits = lm.model(input_ids=ids, attention_mask=mask).logits
    return target_log_probs(logits, positions, targets)


@pytest.mark.parametrize("signal", ["mlp_out", "mlp_act"])
def test_act_x_grad_is_activation_times_gradient(tiny, signal):
    ids, mask, positions, targets = batch(tiny)
    result = attribute(tiny.model, ids, mask, positions, targets, signal=signal, method="act_x_grad")
    acts = result.activations  # [batch, seq, layer, unit]

    # 1. the last layer: its partial derivative is the plain autograd gradient w.r.t. the hooked tensor
    spec = get_arch(tiny.model)
    last = signal_modules(tiny.model, signal, spec)[-1]
    captured = {}

    def keep_grad(tensor):
        tensor.retain_grad()
        captured["x"] = tensor
        return tensor

    if signal == "mlp_out":
        handle = last.register_forward_hook(lambda _m, _i, out: keep_grad(out))
    else:
        handle = last.register_forward_pre_hook(lambda _m, args: (keep_grad(args[0]),))
    try:
        logits = tiny.model(input_ids=ids, attention_mask=mask).logits
        target_log_probs(logits, positions, targets).sum().backward()
    finally:
        handle.remove()
        tiny.model.zero_grad(set_to_none=True)
    x = to_batch_first(captured["x"], spec)
    torch.testing.assert_close(result.attributions[:, :, -1], (x * to_batch_first(captured["x"].grad, spec)).detach())
    torch.testing.assert_close(acts[:, :, -1], x.detach())

    # 2. every layer: gradient = central finite difference of G (all layers patched) for a few neurons
    # (eps not tiny: Llama's RMSNorm computes in float32 even in a float64 model, so G is float32-noisy)
    generator = torch.Generator().manual_seed(0)
    eps = 1e-3
    for _ in range(6):
        b = int(torch.randint(len(TEXTS), (1,), generator=generator))
        p = int(torch.randint(int(positions[b]) + 1, (1,), generator=generator))
        layer = int(torch.randint(tiny.n_layers, (1,), generator=generator))
        unit = int(torch.randint(acts.shape[-1], (1,), generator=generator))
        up, down = acts.clone(), acts.clone()
        up[b, p, layer, unit] += eps
        down[b, p, layer, unit] -= eps
        derivative = (
            patched_output(tiny, signal, up, ids, mask, positions, targets)[b]
            - patched_output(tiny, signal, down, ids, mask, positions, targets)[b]
        ) / (2 * eps)
        expected = acts[b, p, layer, unit] * derivative
        torch.testing.assert_close(result.attributions[b, p, layer, unit], expected, rtol=2e-3, atol=1e-8)


def test_attribute_rejects_unknown_method_and_bad_baseline(tiny):
    ids, mask, positions, targets = batch(tiny)
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(tiny.model, ids, mask, positions, targets, method="saliency")
    with pytest.raises(ValueError, match="needs values"):
        attribute(tiny.model, ids, mask, positions, targets, method="ig", steps=1, baseline="mean")
    with pytest.raises(ValueError, match="does not broadcast"):
        attribute(tiny.model, ids, mask, positions, targets, method="ig", steps=1, baseline=torch.zeros(7, 3))


# --------------------------------------------------------------------------------------------------------------
# Key-neuron selection
# --------------------------------------------------------------------------------------------------------------
def test_n_top():
    assert n_top(17280, 0.05) == 864
    assert n_top(10, 0.01) == 1
    with pytest.raises(ValueError):
        n_top(10, 0.0)


def test_select_key_neurons_by_hand():
    # 6 neurons, keep round(6/3) = 2 per sample
    attributions = torch.tensor(
        [
            [5.0, 4.0, 0.1, 0.2, 0.3, 0.0],  # tag 0: keeps {0, 1}
            [0.0, 5.0, 4.0, 0.1, 0.2, 0.3],  # tag 0: keeps {1, 2}
            [0.1, 3.0, 0.2, -9.0, 0.3, 0.0],  # tag 0: keeps {3, 1} by |a|; signed: {1, 4}
            [0.0, 0.0, 0.0, 0.1, 7.0, 6.0],  # tag 1: keeps {4, 5}
        ]
    )
    tags = [0, 0, 0, 1]
    chosen, counter = select_key_neurons(attributions, tags, n_tags=3, top_fraction=1 / 3, top_k=2)
    assert counter.n_keep == 2
    assert counter.counts[0].tolist() == [1, 3, 1, 1, 0, 0]
    assert counter.n_samples.tolist() == [3, 1, 0]
    # tag 0: neuron 1 (kept 3x), then the tie (0, 2, 3 kept once) broken by summed |a|: 9 > 5 > 4 -> neuron 3
    assert chosen[0].tolist() == [1, 3]
    assert chosen[1].tolist() == [4, 5]
    assert chosen[2].tolist() == []  # no samples, no neurons
    torch.testing.assert_close(counter.frequency()[0, 1], torch.tensor(1.0, dtype=torch.float64))

    signed, counter_s = select_key_neurons(attributions, tags, n_tags=3, top_fraction=1 / 3, top_k=3, rank_by="signed")
    assert counter_s.counts[0].tolist() == [1, 3, 1, 0, 1, 0]
    # tie among 0, 2, 4 (kept once): summed score 5 > 4 > 0.3
    assert signed[0].tolist() == [1, 0, 2]

    # streaming in two chunks gives the same counts; [samples, layer, unit] input is flattened layer-major
    streamed = KeyNeuronCounter(3, 6, 1 / 3)
    streamed.update(attributions[:2].reshape(2, 2, 3), tags[:2])
    streamed.update(attributions[2:], tags[2:])
    assert torch.equal(streamed.counts, counter.counts)
    assert [c.tolist() for c in streamed.key_neurons(2)] == [c.tolist() for c in chosen]


def test_key_neuron_counter_validates():
    counter = KeyNeuronCounter(2, 4, 0.5)
    with pytest.raises(ValueError, match="neurons"):
        counter.update(torch.zeros(1, 5), [0])
    with pytest.raises(ValueError, match="tag ids"):
        counter.update(torch.zeros(1, 4), [2])
    with pytest.raises(ValueError, match="rank_by"):
        KeyNeuronCounter(2, 4, 0.5, rank_by="max")


def test_contrast_rule_prefers_tag_specific_neurons():
    # neuron 0 is in every sample's top 2 (a generic neuron); neurons 1, 2 only for tag 0; 3, 4 only for tag 1
    attributions = torch.tensor(
        [
            [9.0, 8.0, 0.1, 0.2, 0.3, 0.4],
            [9.0, 0.1, 8.0, 0.2, 0.3, 0.4],
            [9.0, 0.1, 0.2, 8.0, 0.3, 0.4],
            [9.0, 0.1, 0.2, 0.3, 8.0, 0.4],
        ]
    )
    tags = [0, 0, 1, 1]
    by_frequency, counter = select_key_neurons(attributions, tags, 3, top_fraction=1 / 3, top_k=2)
    assert [c.tolist() for c in by_frequency] == [[0, 1], [0, 3], []]
    contrast = counter.contrast()
    torch.testing.assert_close(contrast[0, :3], torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64))
    assert [c.tolist() for c in counter.key_neurons(2, rule="contrast")] == [[1, 2], [3, 4], []]
    with pytest.raises(ValueError, match="selection rule"):
        counter.key_neurons(2, rule="best")


def test_counter_save_load_roundtrip(tmp_path):
    _, counter = select_key_neurons(torch.randn(20, 12), torch.arange(20) % 3, 3, top_fraction=0.25, top_k=3)
    path = counter.save(tmp_path / "counts.safetensors", ["A", "B", "C"])
    loaded, names = KeyNeuronCounter.load(path)
    assert names == ["A", "B", "C"] and loaded.n_keep == counter.n_keep and loaded.rank_by == "abs"
    assert torch.equal(loaded.counts, counter.counts) and torch.equal(loaded.n_samples, counter.n_samples)
    assert [c.tolist() for c in loaded.key_neurons(3, "contrast")] == [
        c.tolist() for c in counter.key_neurons(3, "contrast")
    ]
