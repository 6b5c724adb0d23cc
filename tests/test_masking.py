"""apply_mask acts on exactly the masked neurons of each layer with that layer's own row, and the mask builders
give exact, seeded counts."""

import contextlib
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fnet.intervene import (
    MASK_MODES,
    MASKS,
    MaskSpec,
    apply_mask,
    build_mask,
    lesion_mask,
    mask_stats,
    parse_networks,
    preserve_mask,
    random_fraction_mask,
    random_matched_mask,
)
from fnet.models import find_blocks, load_model, mlp_modules, signal_modules, to_batch_first
from fnet.networks import NetworkSet
from fnet.recording.recorder import signal_hooks

FAMILIES = ["gpt2", "llama", "chatglm"]
SIGNALS = ["mlp_out", "mlp_act"]
# the norm whose input is the residual stream right before the MLP (test-only knowledge of the architectures)
PRE_MLP_NORM = {"gpt2": "ln_2", "llama": "post_attention_layernorm", "chatglm": "post_attention_layernorm"}


@functools.lru_cache(maxsize=None)
def tiny(family):
    return load_model(f"tiny:{family}")


def input_ids(batch=2, seq=6, seed=0):
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


def hand_mlp(family, mlp, x, act_row=None):
    """(inner activations, MLP output) from the raw weights; ``act_row`` (bool [d_mlp]) zeroes inner units."""
    if family == "gpt2":  # Conv1D: y = x @ W + b, W [in, out]
        inner = x @ mlp.c_fc.weight + mlp.c_fc.bias
        act = 0.5 * inner * (1 + torch.tanh(np.sqrt(2 / np.pi) * (inner + 0.044715 * inner**3)))  # gelu_new
        if act_row is not None:
            act = act.masked_fill(act_row, 0.0)
        return act, act @ mlp.c_proj.weight + mlp.c_proj.bias
    if family == "llama":
        act = F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
        if act_row is not None:
            act = act.masked_fill(act_row, 0.0)
        return act, act @ mlp.down_proj.weight.T
    gate, up = (x @ mlp.dense_h_to_4h.weight.T).chunk(2, dim=-1)
    act = F.silu(gate) * up
    if act_row is not None:
        act = act.masked_fill(act_row, 0.0)
    return act, act @ mlp.dense_4h_to_h.weight.T


def layer_specific_mask(n_layers, width):
    """Layer l masks units {l, l+3}: every row differs, so a mix-up of layers is visible."""
    mask = torch.zeros(n_layers, width, dtype=torch.bool)  # [layer, unit]
    for layer in range(n_layers):
        mask[layer, [layer, layer + 3]] = True
    return mask


def masked_run(lm, mask, signal, install=apply_mask):
    """Run the model under ``install(model, mask, signal=...)`` and capture, per layer (batch-first):
    the MLP input, the signal as the model used it (recorded after the mask hook), the residual before the
    MLP and the block output."""
    family, spec = lm.arch.family, lm.arch
    blocks = find_blocks(lm.model)
    got = {"mlp_in": {}, "signal": {}, "resid_mid": {}, "block_out": {}}

    def keep(kind, layer, tensor):
        got[kind][layer] = to_batch_first(tensor.detach().clone(), spec)

    handles = []
    try:
        for layer, block in enumerate(blocks):
            handles.append(
                block.mlp.register_forward_pre_hook(
                    functools.partial(lambda kind, layer, m, args: keep(kind, layer, args[0]), "mlp_in", layer)
                )
            )
            handles.append(
                getattr(block, PRE_MLP_NORM[family]).register_forward_pre_hook(
                    functools.partial(lambda kind, layer, m, args: keep(kind, layer, args[0]), "resid_mid", layer)
                )
            )
            handles.append(
                block.register_forward_hook(
                    functools.partial(
                        lambda kind, layer, m, args, out: keep(kind, layer, out[0] if isinstance(out, tuple) else out),
                        "block_out",
                        layer,
                    )
                )
            )
        with install(lm.model, mask, signal=signal):
            # registered after the mask hooks: sees the value the model goes on with (already [batch, seq, width])
            with signal_hooks(
                lm.model, signal, lambda layer, t: got["signal"].__setitem__(layer, t.detach().clone()), spec=spec
            ):
                with torch.no_grad():
                    lm.model(input_ids=input_ids(), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return got


def check_per_layer(lm, mask, signal, got):
    """Masked positions are exactly 0; every layer's signal and block output equal the by-hand MLP computed on
    that layer's input with that layer's OWN row applied."""
    family = lm.arch.family
    mlps = mlp_modules(lm.model)
    for layer in range(lm.n_layers):
        row = mask[layer]  # [unit]
        x = got["mlp_in"][layer]  # [batch, seq, d_model]
        with torch.no_grad():
            if signal == "mlp_act":
                inner, out = hand_mlp(family, mlps[layer], x, act_row=row)
                expected_signal, mlp_out = inner, out
            else:
                _, out = hand_mlp(family, mlps[layer], x)
                expected_signal = mlp_out = out.masked_fill(row, 0.0)
        signal_value = got["signal"][layer]  # [batch, seq, width]
        assert torch.all(signal_value[..., row] == 0), f"layer {layer}: masked units are not zero"
        assert bool((signal_value[..., ~row] != 0).any())
        torch.testing.assert_close(signal_value, expected_signal, atol=1e-5, rtol=1e-4)
        # what flows into the residual stream is the masked MLP output
        torch.testing.assert_close(got["block_out"][layer], got["resid_mid"][layer] + mlp_out, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("signal", SIGNALS)
def test_each_layer_masked_with_its_own_row(family, signal):
    lm = tiny(family)
    mask = layer_specific_mask(lm.n_layers, lm.width(signal))
    got = masked_run(lm, mask, signal)
    check_per_layer(lm, mask, signal, got)


@contextlib.contextmanager
def published_bug_apply(model, mask, signal="mlp_out"):
    """The published hook loop: a closure over the loop variable, so every layer uses the LAST row."""
    handles = []
    for layer, module in enumerate(signal_modules(model, signal)):

        def hook(_module, _inputs, output):
            return output.masked_fill(mask[layer], 0.0)  # `layer` is read at call time -> last layer

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_layer0_not_masked_with_last_row(family):
    lm = tiny(family)
    mask = layer_specific_mask(lm.n_layers, lm.d_model)  # layer 0: {0, 3}; last: {L-1, L+2}
    last_only = mask[-1] & ~mask[0]
    got = masked_run(lm, mask, "mlp_out")
    assert torch.all(got["signal"][0][..., mask[0]] == 0)
    assert torch.all(got["signal"][0][..., last_only] != 0), "layer 0 was masked with the last layer's row"
    # the same check catches the published late-binding closure
    buggy = masked_run(lm, mask, "mlp_out", install=published_bug_apply)
    assert torch.all(buggy["signal"][0][..., last_only] == 0)
    with pytest.raises(AssertionError):
        check_per_layer(lm, mask, "mlp_out", buggy)


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_removed_on_exit_and_on_exception(family):
    lm = tiny(family)
    ids = input_ids()
    with torch.no_grad():
        before = lm.model(input_ids=ids).logits
    mask = layer_specific_mask(lm.n_layers, lm.d_model)
    act_mask = layer_specific_mask(lm.n_layers, lm.d_mlp)
    with apply_mask(lm.model, mask), apply_mask(lm.model, act_mask, signal="mlp_act"), torch.no_grad():
        during = lm.model(input_ids=ids).logits
    assert not torch.allclose(during, before)
    with pytest.raises(RuntimeError, match="boom"):
        with apply_mask(lm.model, mask), apply_mask(lm.model, act_mask, signal="mlp_act"):
            raise RuntimeError("boom")
    for module in lm.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    with torch.no_grad():
        after = lm.model(input_ids=ids).logits
    assert torch.equal(after, before)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_masks_apply_during_generate_with_kv_cache(family):
    """Each cached generation step must be masked: the step logits of masked greedy generation (KV cache) equal
    a manual greedy loop of full, uncached, masked forward passes, and differ from the unmasked ones."""
    lm = tiny(family)
    prompt = input_ids(batch=1, seq=5, seed=1)
    mask = torch.zeros(lm.n_layers, lm.d_model, dtype=torch.bool)
    mask[:, ::2] = True  # half the units in every layer
    kwargs = dict(
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=256,
        use_cache=True,
    )
    with torch.no_grad():
        plain = lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
        with apply_mask(lm.model, mask):
            masked = lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
            ids = prompt
            manual_scores = []
            for _ in range(6):
                logits = lm.model(input_ids=ids, use_cache=False).logits[:, -1]  # [1, vocab]
                manual_scores.append(logits)
                ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(masked.sequences, ids)
    for step, (a, b) in enumerate(zip(masked.logits, manual_scores)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"step {step}")
    assert not all(torch.allclose(a, b) for a, b in zip(masked.logits, plain.logits))


@pytest.mark.parametrize("family", FAMILIES)
def test_nesting_composes(family):
    lm = tiny(family)
    ids = input_ids()
    a = layer_specific_mask(lm.n_layers, lm.d_model)
    b = torch.zeros_like(a)
    b[:, 10:14] = True
    with torch.no_grad():
        with apply_mask(lm.model, a), apply_mask(lm.model, b):
            nested = lm.model(input_ids=ids).logits
        with apply_mask(lm.model, a | b):
            union = lm.model(input_ids=ids).logits
        with apply_mask(lm.model, a, mode="amplify", value=1.5), apply_mask(lm.model, a, mode="amplify", value=1.5):
            twice = lm.model(input_ids=ids).logits
        with apply_mask(lm.model, a, mode="amplify", value=3.0):
            once = lm.model(input_ids=ids).logits
    torch.testing.assert_close(nested, union, atol=0, rtol=0)
    torch.testing.assert_close(twice, once, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("signal", SIGNALS)
def test_amplify_adds_exactly_value_and_scale_multiplies(family, signal):
    lm = tiny(family)
    spec = lm.arch
    mask = layer_specific_mask(lm.n_layers, lm.width(signal))
    for mode, value in (("amplify", 5.0), ("scale", -2.0)):
        raw, post = {}, {}
        # `raw` registered before the mask hooks sees the unmodified signal of the SAME (masked) run
        with signal_hooks(lm.model, signal, lambda l, t: raw.__setitem__(l, t.detach().clone()), spec=spec):
            with apply_mask(lm.model, mask, signal=signal, mode=mode, value=value):
                with signal_hooks(lm.model, signal, lambda l, t: post.__setitem__(l, t.detach().clone()), spec=spec):
                    with torch.no_grad():
                        lm.model(input_ids=input_ids())
        for layer in range(lm.n_layers):
            row = mask[layer]
            assert torch.equal(post[layer][..., ~row], raw[layer][..., ~row])
            expected = raw[layer][..., row] + value if mode == "amplify" else raw[layer][..., row] * value
            assert torch.equal(post[layer][..., row], expected)
        assert not torch.equal(post[1], raw[1])


def test_apply_mask_accepts_maskspec_and_none():
    lm = tiny("gpt2")
    ids = input_ids()
    mask = layer_specific_mask(lm.n_layers, lm.d_mlp)
    spec = MaskSpec(mask=mask, signal="mlp_act")
    with torch.no_grad():
        with apply_mask(lm.model, spec):
            from_spec = lm.model(input_ids=ids).logits
        with apply_mask(lm.model, mask, signal="mlp_act"):
            direct = lm.model(input_ids=ids).logits
        with apply_mask(lm.model, None) as hooks:
            unmasked = lm.model(input_ids=ids).logits
        plain = lm.model(input_ids=ids).logits
    assert hooks == []
    assert torch.equal(from_spec, direct) and torch.equal(unmasked, plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_shape_and_dtype_errors(family):
    lm = tiny(family)
    with pytest.raises(ValueError, match=rf"\[n_layers, width\] = \[3, {lm.d_model}\].*mlp_out"):
        with apply_mask(lm.model, torch.zeros(3, lm.d_mlp, dtype=torch.bool)):
            pass
    with pytest.raises(ValueError, match=rf"\[3, {lm.d_mlp}\].*mlp_act"):
        with apply_mask(lm.model, torch.zeros(2, lm.d_mlp, dtype=torch.bool), signal="mlp_act"):
            pass
    with pytest.raises(TypeError, match="bool"):
        with apply_mask(lm.model, torch.zeros(3, lm.d_model)):
            pass
    with pytest.raises(ValueError, match="valid"):
        with apply_mask(lm.model, torch.zeros(3, lm.d_model, dtype=torch.bool), mode="erase"):
            pass
    for module in lm.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


# --------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------
def toy_netset(k=4, n_layers=3, width=20, seed=0, signal="mlp_out"):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(k, n_layers, width, generator=g) < 0.2  # [K, layer, unit]
    return NetworkSet(masks, provenance={"signal": signal, "model": "toy"})


def test_parse_networks_specs():
    assert parse_networks("range(0,3)", 5) == [0, 1, 2]
    assert parse_networks("range(3)", 5) == [0, 1, 2]
    assert parse_networks("0,2", 5) == [0, 2]
    assert parse_networks("all", 3) == [0, 1, 2]
    assert parse_networks(4, 5) == [4]
    assert parse_networks([3, 1, 3], 5) == [3, 1]
    assert parse_networks(None, 5) == [] and parse_networks("none", 5) == []
    with pytest.raises(ValueError, match=r"0\.\.4"):
        parse_networks(5, 5)
    with pytest.raises(ValueError, match=r"0\.\.4"):
        parse_networks("range(3,7)", 5)
    with pytest.raises(ValueError, match="cannot parse"):
        parse_networks("first", 5)


def test_lesion_and_preserve_masks():
    ns = toy_netset()
    assert torch.equal(lesion_mask(ns, "range(0,3)").mask, ns.masks[0] | ns.masks[1] | ns.masks[2])
    assert torch.equal(lesion_mask(ns, "0,2").mask, ns.masks[0] | ns.masks[2])
    assert torch.equal(lesion_mask(ns, "all").mask, ns.masks.any(0))
    assert torch.equal(lesion_mask(ns, 1).mask, ns.masks[1])
    with pytest.raises(ValueError, match=r"valid 0\.\.3"):
        lesion_mask(ns, 4)
    keep = preserve_mask(ns)
    assert torch.equal(keep.mask, ~ns.union())
    assert keep.stats["n_masked"] == ns.n_layers * ns.width - int(ns.union().sum())
    assert torch.equal(preserve_mask(ns, [0, 1]).mask, ~(ns.masks[0] | ns.masks[1]))


def test_mask_stats():
    mask = layer_specific_mask(3, 10)
    mask[2, :] = True
    stats = mask_stats(mask)
    assert stats["per_layer"] == [2, 2, 10] and stats["n_masked"] == 14
    assert stats["fraction"] == pytest.approx(14 / 30)
    with pytest.raises(TypeError, match="bool"):
        mask_stats(mask.float())


def test_random_matched_control():
    ns = toy_netset(width=30)
    reference = lesion_mask(ns, [0, 1]).mask
    a = random_matched_mask(reference, seed=0)
    b = random_matched_mask(reference, seed=0)
    c = random_matched_mask(reference, seed=1)
    assert torch.equal(a.mask.sum(1), reference.sum(1))  # per-layer counts identical
    assert torch.equal(a.mask, b.mask)  # seeded
    assert not torch.equal(a.mask, c.mask)  # different seeds differ
    assert not torch.equal(a.mask, reference)
    disjoint = random_matched_mask(reference, seed=0, exclude=True)
    assert torch.equal(disjoint.mask.sum(1), reference.sum(1))
    assert not (disjoint.mask & reference).any()
    custom = torch.zeros_like(reference)
    custom[:, :10] = True
    avoid = random_matched_mask(reference, seed=3, exclude=custom)
    assert not (avoid.mask & custom).any()
    # default: drawn from all units, so over many seeds the reference neurons do get picked
    overlap = sum(int((random_matched_mask(reference, seed=s).mask & reference).sum()) for s in range(20))
    assert overlap > 0
    full = torch.ones(2, 4, dtype=torch.bool)
    full[0, 0] = False
    with pytest.raises(ValueError, match="layer 0"):
        random_matched_mask(full, seed=0, exclude=True)


def test_random_matched_to_maskspec_keeps_its_application():
    ns = toy_netset()
    spec = MaskSpec(mask=ns.masks[0], signal="mlp_act", mode="amplify", value=2.0, description="net 0")
    control = random_matched_mask(spec, seed=0)
    assert (control.signal, control.mode, control.value) == ("mlp_act", "amplify", 2.0)
    assert "net 0" in control.description


@pytest.mark.parametrize("fraction, width", [(0.15, 32), (0.15, 48), (0.5, 7), (0.0, 10), (1.0, 10)])
def test_random_fraction_exact_counts(fraction, width):
    spec = random_fraction_mask(4, width, fraction=fraction, seed=0)
    expected = round(fraction * width)
    assert spec.stats["per_layer"] == [expected] * 4
    assert spec.stats["n_masked"] == 4 * expected
    assert torch.equal(spec.mask, random_fraction_mask(4, width, fraction=fraction, seed=0).mask)
    if 0 < expected < width:
        assert not torch.equal(spec.mask, random_fraction_mask(4, width, fraction=fraction, seed=1).mask)
        assert not torch.equal(spec.mask[0], spec.mask[1]) or not torch.equal(spec.mask[1], spec.mask[2])


def test_build_mask_modes():
    ns = toy_netset()
    assert build_mask("none", netset=ns) is None
    assert torch.equal(build_mask("lesion", netset=ns, networks="0,2").mask, ns.masks[0] | ns.masks[2])
    assert torch.equal(build_mask("preserve", netset=ns).mask, ~ns.union())
    control = build_mask("random", netset=ns, networks=[1, 2], seed=4)
    assert torch.equal(control.mask.sum(1), (ns.masks[1] | ns.masks[2]).sum(1))
    matched = build_mask("random", netset=ns, networks=0, match="1,2", seed=4)
    assert torch.equal(matched.mask, control.mask)  # `match` wins over `networks`
    disjoint = build_mask("random", netset=ns, networks=1, seed=0, exclude_reference=True)
    assert not (disjoint.mask & ns.masks[1]).any()
    keep_random = build_mask("random_preserve", netset=ns, seed=0)
    assert torch.equal((~keep_random.mask).sum(1), ns.union().sum(1))
    frac = build_mask("random_fraction", n_layers=3, width=20, fraction=0.15, seed=0)
    assert frac.stats["per_layer"] == [3, 3, 3]
    amp = build_mask("amplify", netset=ns, networks=1, value=5.0)
    assert (amp.mode, amp.value) == ("amplify", 5.0) and torch.equal(amp.mask, ns.masks[1])
    assert build_mask("lesion", netset=ns).kind == "lesion"
    with pytest.raises(ValueError, match="valid modes.*lesion"):
        build_mask("ablate", netset=ns)
    with pytest.raises(ValueError, match="needs a NetworkSet"):
        build_mask("lesion")
    with pytest.raises(ValueError, match="mlp_act.*mlp_out|mlp_out.*mlp_act"):
        build_mask("lesion", netset=ns, signal="mlp_act")
    assert set(MASK_MODES) >= {"none", "lesion", "preserve", "random", "random_fraction", "amplify"}


@pytest.mark.parametrize("mode", sorted(MASK_MODES))
def test_summary_keeps_mask_counts(mode):
    """summary() (provenance for result files) carries the mask's own counts; meta never overrides them."""
    ns = toy_netset()
    scale = torch.rand(ns.n_layers, ns.width) if MASKS[mode].needs_scale else None
    spec = build_mask(mode, netset=ns, networks=1, fraction=0.3, seed=2, value=2.0, scale=scale)
    if spec is None:
        return
    summary = spec.summary()
    assert summary["per_layer"] == spec.stats["per_layer"] == spec.mask.sum(1).tolist()
    assert summary["n_masked"] == int(spec.mask.sum()) and summary["fraction"] == spec.stats["fraction"]
    assert summary["kind"] == mode
    import json

    json.dumps(summary)


def test_build_mask_from_networks_file(tmp_path):
    ns = toy_netset(signal="mlp_act")
    path = ns.save(tmp_path / "nets.safetensors")
    spec = build_mask("lesion", networks_file=str(path), networks=2, signal="mlp_act")
    assert torch.equal(spec.mask, ns.masks[2]) and spec.signal == "mlp_act"
    assert spec.meta["networks_file"] == str(path)


def test_mask_configs_build():
    """Every conf/mask/*.yaml includes _base (the keys all share), sets only what differs, names a registered
    mode, and builds through build_mask; every registered mode that needs no extra input has a file."""
    from pathlib import Path

    from omegaconf import OmegaConf

    ns = toy_netset()
    folder = Path(__file__).resolve().parents[1] / "conf" / "mask"
    base = OmegaConf.load(folder / "_base.yaml")
    files = sorted(f for f in folder.glob("*.yaml") if f.stem != "_base")
    assert {f.stem for f in files} >= {
        "none",
        "lesion",
        "preserve",
        "random",
        "random_fraction",
        "amplify",
        "magnitude",
        "magnitude_preserve",
        "spared",
        "unit",
    }
    scale = torch.rand(ns.n_layers, ns.width)
    for f in files:
        own = OmegaConf.load(f)
        assert list(own.pop("defaults")) == ["_base", "_self_"], f.name
        assert set(own) <= set(base) and own.mode == f.stem, f.name
        assert all(own[k] != base[k] for k in own if k != "mode"), f"{f.name} repeats a _base value"
        cfg = OmegaConf.to_container(OmegaConf.merge(base, own))
        assert cfg.pop("allow_foreign") is False, f.name  # a provenance check (fnet.networks), not a mask parameter
        cfg.pop("scale_file")  # the pipeline loads it (fnet.pipelines._common.scale_for_mask)
        spec = build_mask(**cfg, netset=ns, n_layers=ns.n_layers, width=ns.width, scale=scale)
        assert (spec is None) == (cfg["mode"] == "none"), f.name
        assert MASKS[cfg["mode"]].name == f.stem
