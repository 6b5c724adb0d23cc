"""fnet.intervene.controls: neuron scale, magnitude-matched controls and the massive-channel diagnostic, on planted
values."""

import numpy as np
import pytest

from fnet.intervene.controls import (
    magnitude_bins,
    magnitude_matched_draw,
    magnitude_matched_mask,
    neuron_scale,
    recurring_units,
    spare,
    top_units,
    unit_masks,
)


def test_neuron_scale_is_rms_per_neuron_streamed_in_float64(tmp_path):
    rng = np.random.default_rng(0)
    n_layers, width = 3, 5
    texts = [rng.normal(size=(t, n_layers * width)) * 3 for t in (7, 11)]
    maps = []
    for i, acts in enumerate(texts):  # float16 memory maps, like an ActivationStore's shards
        mm = np.lib.format.open_memmap(tmp_path / f"{i}.npy", mode="w+", dtype=np.float16, shape=acts.shape)
        mm[:] = acts
        maps.append(np.load(tmp_path / f"{i}.npy", mmap_mode="r"))
    got = neuron_scale(maps, n_layers, chunk_rows=3)  # chunks split the texts unevenly
    stacked = np.concatenate([np.asarray(m, dtype=np.float64) for m in maps])
    expected = np.sqrt((stacked**2).mean(axis=0)).reshape(n_layers, width)
    assert got.shape == (n_layers, width) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # a planted constant neuron: layer 1, unit 2 always 4.0 -> RMS exactly 4
    planted = np.zeros((5, n_layers * width), dtype=np.float16)
    planted[:, 1 * width + 2] = 4.0
    assert neuron_scale([planted], n_layers)[1, 2] == 4.0


def test_neuron_scale_rejects_bad_shapes():
    with pytest.raises(ValueError, match="n_layers=4"):
        neuron_scale([np.zeros((2, 6))], 4)
    with pytest.raises(ValueError, match="array 1"):
        neuron_scale([np.zeros((2, 6)), np.zeros((2, 5))], 2)


def test_magnitude_bins_are_per_layer_equal_count_quantiles():
    scale = np.array([[5.0, 1.0, 3.0, 2.0, 4.0, 0.0], [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]])
    bins = magnitude_bins(scale, n_bins=3)
    assert bins.tolist() == [[2, 0, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]]


def _planted_scale(n_layers=4, width=100, seed=0):
    rng = np.random.default_rng(seed)
    return rng.lognormal(size=(n_layers, width))


def test_magnitude_matched_mask_keeps_counts_bins_and_avoids_the_reference():
    scale = _planted_scale()
    bins = magnitude_bins(scale, 10)
    mask = np.zeros(scale.shape, dtype=bool)
    mask[0, np.argsort(-scale[0])[:3]] = True  # the three largest units of layer 0
    mask[2, [5, 17, 40, 41, 80]] = True
    mask[3, np.argsort(scale[3])[:2]] = True  # the two smallest of layer 3
    drawn, fallbacks = magnitude_matched_draw(mask, scale, n_bins=10, seed=3)
    assert fallbacks == 0
    assert drawn.sum(axis=1).tolist() == mask.sum(axis=1).tolist()  # exact per-layer counts
    assert not (drawn & mask).any()  # never the reference neurons
    for layer in range(scale.shape[0]):  # the same multiset of bins per layer
        assert sorted(bins[layer, mask[layer]]) == sorted(bins[layer, drawn[layer]])
    # a count-only draw hits layer 0's top bin rarely; this one always does
    assert (bins[0, drawn[0]] == 9).all()


def test_magnitude_matched_mask_is_seeded_and_respects_exclude():
    scale = _planted_scale(seed=1)
    mask = np.zeros(scale.shape, dtype=bool)
    mask[1, :20] = True
    a = magnitude_matched_mask(mask, scale, seed=7)
    b = magnitude_matched_mask(mask, scale, seed=7)
    c = magnitude_matched_mask(mask, scale, seed=8)
    assert (a == b).all() and not (a == c).all()
    exclude = a.copy()
    d = magnitude_matched_mask(mask, scale, seed=7, exclude=exclude)
    assert not (d & exclude).any() and d.sum() == 20


def test_magnitude_matched_mask_falls_back_to_the_nearest_bin_and_counts_it():
    scale = np.arange(10, dtype=float)[None, :]  # one layer, 5 bins of 2 units: {0,1}, {2,3}, ...
    mask = np.zeros((1, 10), dtype=bool)
    mask[0, [8, 9]] = True  # the whole top bin: its matches must come from bin 3 (units 6, 7)
    drawn, fallbacks = magnitude_matched_draw(mask, scale, n_bins=5, seed=0)
    assert fallbacks == 2 and np.flatnonzero(drawn[0]).tolist() == [6, 7]
    with pytest.raises(ValueError, match="layer 0"):
        magnitude_matched_draw(np.ones((1, 10), dtype=bool), scale, n_bins=5)


def test_a_reference_that_fills_a_layer_is_matched_with_overlap_there_only_when_allowed():
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.1, 10.0, size=(3, 20))  # [layer, unit]
    mask = np.zeros((3, 20), dtype=bool)
    mask[0, :3] = True  # room left: the draw stays disjoint
    mask[1, :18] = True  # 18 of 20: only 2 free neurons, so this layer must overlap
    mask[2, 5] = True
    with pytest.raises(ValueError, match="layer 1: 18 neurons to match but only 2 .*'prefer' draws such a layer"):
        magnitude_matched_draw(mask, scale, n_bins=4)
    drawn, _ = magnitude_matched_draw(mask, scale, n_bins=4, seed=1, disjoint="prefer")
    assert drawn.sum(axis=1).tolist() == [3, 18, 1]  # the per-layer counts, always
    assert not (drawn[0] & mask[0]).any() and not (drawn[2] & mask[2]).any()  # disjoint where possible
    assert (drawn[1] & mask[1]).sum() >= 16  # 18 drawn among 20: at least 16 inside the reference
    bins = magnitude_bins(scale, 4)
    assert sorted(bins[1, drawn[1]].tolist()) == sorted(bins[1, mask[1]].tolist())  # the same bins (no fallback)
    anywhere, _ = magnitude_matched_draw(mask, scale, n_bins=4, seed=1, disjoint="no")
    assert anywhere.sum(axis=1).tolist() == [3, 18, 1]
    with pytest.raises(ValueError, match="disjoint='maybe'; valid: \\['require', 'prefer', 'no'\\]"):
        magnitude_matched_draw(mask, scale, disjoint="maybe")


def test_massive_unit_is_found_first_spared_and_lesioned_alone():
    n_layers, width, K = 4, 50, 6
    scale = np.ones((n_layers, width))
    scale[:, 33] = 100.0  # the planted massive channel, every layer
    scale[2, 7] = 50.0
    assert top_units(scale, 2)[:, 0].tolist() == [33] * n_layers
    assert top_units(scale, 2)[2].tolist() == [33, 7]
    masks = np.zeros((K, n_layers, width), dtype=bool)
    for k in range(K):
        masks[k, k % n_layers, 33] = True  # unit 33 in every network (various layers)
        masks[k, 0, 10 + k] = True
    masks[[1, 4], 3, 9] = True  # unit 9 in two networks
    ranked = recurring_units(masks)
    assert ranked[0]["unit"] == 33 and ranked[0]["networks"] == K
    assert ranked[0]["layers"] == [0, 1, 2, 3]
    assert ranked[1] == {"unit": 9, "networks": 2, "occurrences": 2, "network_ids": [1, 4], "layers": [3]}
    assert [r["unit"] for r in recurring_units(masks, among=[9, 10, 45])] == [9, 10]  # 45 is in no network
    spared = spare(masks, [33])
    assert not spared[..., 33].any() and (spared.sum() == masks.sum() - K)
    singles = unit_masks(masks, [33, 9])
    assert singles.shape == (2, n_layers, width)
    assert np.flatnonzero(singles[0].any(axis=0)).tolist() == [33] and singles[0, :, 33].all()
    assert singles[1].sum() == 1 and singles[1, 3, 9]


# --------------------------------------------------------------------------------------------------------------
# The registry's study controls: ordinary masks, the same draws as the v1 study's controls file
# --------------------------------------------------------------------------------------------------------------
def _planted_networks():
    import torch

    from fnet.networks import NetworkSet

    rng = np.random.default_rng(3)
    masks = rng.random((3, 4, 30)) < 0.2  # [K, layer, unit]
    masks[:, :, 7] = True  # unit 7 in every network and layer: the planted massive unit
    scale = rng.random((4, 30)) + 0.1
    scale[:, 7] = 50.0
    return NetworkSet.from_masks(
        torch.from_numpy(masks), provenance={"model": "planted", "model_fingerprint": "f"}
    ), scale


def test_registry_controls_without_a_stream_are_the_v1_study_draws():
    """Without a stream, `mask=magnitude mask.seed=s` draws what the v1 controls file held for network k
    (seed 1000*k+s, disjoint where the layer allows) and for the union (1000*K+s); spared and single-unit masks
    take the massive units out or alone, so a v1 study's plan reruns to the same masks."""
    from fnet.intervene import build_mask

    nets, scale = _planted_networks()
    masks = nets.masks.numpy()
    for k, seed in ((0, 0), (2, 1)):
        v1, _ = magnitude_matched_draw(masks[k], scale, n_bins=10, seed=1000 * k + seed, disjoint="prefer")
        ours = build_mask("magnitude", netset=nets, networks=k, seed=seed, scale=scale)
        np.testing.assert_array_equal(ours.mask.numpy(), v1)
    union, _ = magnitude_matched_draw(masks.any(0), scale, n_bins=10, seed=1000 * 3 + 4, disjoint="prefer")
    np.testing.assert_array_equal(build_mask("magnitude", netset=nets, networks="all", seed=4, scale=scale).mask, union)
    np.testing.assert_array_equal(build_mask("magnitude_preserve", netset=nets, seed=4, scale=scale).mask, ~union)
    spared = build_mask("spared", netset=nets, networks=1, scale=scale, top_k=1, n_units=1)
    assert spared.meta["units"] == [7]
    np.testing.assert_array_equal(spared.mask.numpy(), masks[1] & (np.arange(30) != 7))
    alone = build_mask("unit", netset=nets, unit=0, scale=scale, top_k=1, n_units=1)
    assert alone.mask.sum() == 4 and alone.mask[:, 7].all()
    assert not build_mask("unit", netset=nets, unit=1, scale=scale, top_k=1, n_units=1).mask.any()  # no 2nd unit


def test_a_stream_gives_every_network_and_kind_its_own_draw():
    """Two networks with the same per-layer counts get the same count-matched seed-0 control without a stream (the
    v1 flaw: one random ordering per layer and seed) and different ones with a stream; kinds and streams (tasks)
    differ too, while the same request draws the same mask again."""
    import torch

    from fnet.intervene import build_mask
    from fnet.networks import NetworkSet

    masks = torch.zeros(2, 3, 40, dtype=torch.bool)
    masks[0, :, :5] = True
    masks[1, :, 10:15] = True  # the same counts per layer as network 0
    nets = NetworkSet.from_masks(masks, provenance={"model": "planted", "model_fingerprint": "f"})
    scale = np.random.default_rng(0).random((3, 40)) + 0.1

    def draw(kind, networks, stream="sst2/run0", seed=0):
        return build_mask(kind, netset=nets, networks=networks, seed=seed, scale=scale, stream=stream)

    assert torch.equal(draw("random", 0, stream=None).mask, draw("random", 1, stream=None).mask)
    a, b = draw("random", 0), draw("random", 1)
    assert not torch.equal(a.mask, b.mask) and a.stats["per_layer"] == b.stats["per_layer"] == [5, 5, 5]
    assert torch.equal(draw("random", 0).mask, a.mask)
    assert not torch.equal(draw("random", 0, stream="ag_news/run0").mask, a.mask)
    assert not torch.equal(draw("random", 0, seed=1).mask, a.mask)
    m0, m1 = draw("magnitude", 0), draw("magnitude", 1)
    assert m0.meta["draw_seed"] not in (m1.meta["draw_seed"], draw("magnitude", 0, stream="x").meta["draw_seed"])


def test_tail_bins_separate_a_massive_unit_from_the_top_decile():
    """Quantile edges fine in the tail: the largest unit of a layer of 1000 sits alone above the 99.9th
    percentile, so a magnitude-matched draw for it must take a neighbour bin (counted as a fallback), while ten
    equal-count bins would have matched it with any top-decile unit."""
    scale = np.arange(1000, dtype=float)[None, :].repeat(2, 0)
    edges = [0.5, 0.75, 0.9, 0.95, 0.99, 0.999]
    bins = magnitude_bins(scale, edges)
    assert bins[0, -1] == 6 and (bins[0, :-1] <= 5).all() and (bins[0] == 5).sum() == 9
    mask = np.zeros((2, 1000), dtype=bool)
    mask[:, -1] = True
    drawn, fallbacks = magnitude_matched_draw(mask, scale, n_bins=edges, seed=0)
    assert fallbacks == 2 and (np.flatnonzero(drawn[0])[0] >= 990)
    with pytest.raises(ValueError, match="increase strictly within \\(0, 1\\)"):
        magnitude_bins(scale, [0.9, 0.5])


def test_mean_ablation_leaves_a_constant_channel_unchanged():
    """A neuron that always outputs the same value: zeroing it changes the model's output, setting it to its
    mean (over recorded tokens) changes nothing, to the last bit."""
    import torch

    from fnet.hooks import trace_signal
    from fnet.intervene import apply_mask, build_mask
    from fnet.intervene.controls import neuron_moments
    from fnet.models import load_model
    from fnet.networks import NetworkSet

    lm = load_model("tiny:gpt2")
    layer, unit = 1, 5
    down = lm.model.transformer.h[layer].mlp.c_proj
    with torch.no_grad():  # mlp_out[unit] = bias[unit], whatever the input: a constant channel
        down.weight[:, unit] = 0.0
        down.bias[unit] = 3.0
    ids = lm.tokenizer(["hello world, a constant channel", "another text"], return_tensors="pt", padding=True)[
        "input_ids"
    ]
    acts = []
    with trace_signal(lm.model, "mlp_out", read=lambda i, h: acts.append((i, h.detach()))):
        clean = lm.model(ids).logits
    flat = torch.cat([h.reshape(-1, h.shape[-1]) for _, h in sorted(acts, key=lambda x: x[0])], dim=1)
    means, _ = neuron_moments([flat.numpy()], lm.n_layers)
    assert means[layer, unit] == pytest.approx(3.0)
    masks = torch.zeros(1, lm.n_layers, lm.d_model, dtype=torch.bool)
    masks[0, layer, unit] = True
    nets = NetworkSet.from_masks(masks, provenance={"model": lm.name, "model_fingerprint": lm.fingerprint})
    mean_spec = build_mask("lesion", netset=nets, ablation="mean", means=means)
    assert mean_spec.mode == "replace" and "mean" in mean_spec.description
    with apply_mask(lm.model, mean_spec):
        kept = lm.model(ids).logits
    with apply_mask(lm.model, build_mask("lesion", netset=nets)):
        zeroed = lm.model(ids).logits
    assert torch.allclose(kept, clean, atol=1e-5) and not torch.allclose(zeroed, clean, atol=1e-3)
    with pytest.raises(ValueError, match="ablation=mean needs the neurons' mean"):
        build_mask("lesion", netset=nets, ablation="mean")
    with pytest.raises(ValueError, match="valid: \\['zero', 'mean'\\]"):
        build_mask("lesion", netset=nets, ablation="median")


def test_as_published_masks_every_layer_with_the_last_layers_row():
    import torch

    from fnet.intervene import build_mask
    from fnet.networks import NetworkSet

    masks = torch.zeros(1, 3, 6, dtype=torch.bool)
    masks[0, 0, 0] = masks[0, 2, [4, 5]] = True
    nets = NetworkSet.from_masks(masks)
    spec = build_mask("preserve", netset=nets, as_published=True)
    expected = ~torch.tensor([False, False, False, False, True, True])
    assert all(torch.equal(spec.mask[layer], expected) for layer in range(3))
    assert spec.stats["per_layer"] == [4, 4, 4] and "10d96da" in spec.description and spec.meta["as_published"]


def test_massive_included_control_keeps_the_networks_massive_units_and_matches_the_rest():
    from fnet.intervene import build_mask

    nets, scale = _planted_networks()
    spec = build_mask("massive_included", netset=nets, networks=1, seed=0, scale=scale, top_k=1, n_units=1)
    mask, own = spec.mask.numpy(), nets.masks[1].numpy()
    assert spec.meta["units"] == [7] and (mask[:, 7] == own[:, 7]).all()  # the network's own massive unit
    assert (mask.sum(axis=1) == own.sum(axis=1)).all()  # counts per layer kept
    rest = mask.copy()
    rest[:, 7] = False
    assert not (rest & own).any()  # the rest is drawn outside the network
