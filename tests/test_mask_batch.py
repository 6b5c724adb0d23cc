"""Mask-batched evaluation (fnet.intervene.apply.apply_masks, fnet.intervene.batched.score_loglik_masks): one
forward pass over rows x masks, each slice with its own mask, equal per mask to separate runs.

Bit-exactness is asserted against a separate run of the same batch layout (the rows repeated once per mask, all
under mask i, read at slice i): CPU GEMM kernels may round a row differently by its position in the batch (the
tail rows of a block take another micro-kernel), so identical rows at different positions can differ by an ulp:
on the 2-core development machine, tiny:llama's logits under one mlp_act mask, the rows repeated 5 times, all
under that mask, differed by 7.5e-9 between the first and the last copy. Against a run of the rows alone the tests
allow 1e-5.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from fnet.hooks import trace_signal
from fnet.intervene import lesion_mask, preserve_mask
from fnet.intervene.apply import MaskSpec, apply_mask, apply_masks, expected_mask_shape
from fnet.intervene.batched import score_loglik_masks
from fnet.models import load_model
from fnet.networks import NetworkSet
from fnet.scoring.loglik import score_loglik

FAMILIES = ["gpt2", "llama", "chatglm"]
SIGNALS = ["mlp_out", "mlp_act"]


@functools.lru_cache(maxsize=None)
def tiny(family):
    return load_model(f"tiny:{family}")


def _netset(model, signal, k=3, seed=0):
    n_layers, width = expected_mask_shape(model, signal)
    rng = np.random.default_rng(seed)
    return NetworkSet(rng.random((k, n_layers, width)) < 0.15, provenance={"signal": signal, "model": "toy"})


def _masks(model, signal):
    """Lesions of networks 0, 1 and all, preservations of network 0 and all, and None (unmasked)."""
    nets = _netset(model, signal)
    return [
        lesion_mask(nets, 0),
        lesion_mask(nets, 1),
        preserve_mask(nets, [0]),
        lesion_mask(nets, "all"),
        None,
        preserve_mask(nets, "all"),
    ]


def _logits(model, ids, masks, ctx):
    with torch.no_grad(), ctx:
        return model(ids.repeat(len(masks), 1)).logits.view(len(masks), *ids.shape, -1)  # [mask, row, pos, vocab]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("signal", SIGNALS)
def test_each_slice_equals_a_separate_run_with_its_mask(family, signal):
    lm = tiny(family)
    ids = torch.randint(0, 256, (3, 9), generator=torch.Generator().manual_seed(0))
    masks = _masks(lm.model, signal)
    batched = _logits(lm.model, ids, masks, apply_masks(lm.model, masks))
    for i, mask in enumerate(masks):
        same_layout = _logits(lm.model, ids, masks, apply_mask(lm.model, mask))  # every slice under mask i
        assert torch.equal(batched[i], same_layout[i]), (family, signal, i)
        with torch.no_grad(), apply_mask(lm.model, mask):
            alone = lm.model(ids).logits
        torch.testing.assert_close(batched[i], alone, rtol=0, atol=1e-5)
    # the masks matter: no two slices agree (a slice that got another's mask, or none, would)
    for i in range(len(masks)):
        for j in range(i):
            assert not torch.allclose(batched[i], batched[j]), (i, j)


@pytest.mark.parametrize("signal", SIGNALS)
def test_planted_neurons_are_zero_in_their_slice_only(signal):
    lm = tiny("llama")
    n_layers, width = expected_mask_shape(lm.model, signal)
    masks = [torch.zeros(n_layers, width, dtype=torch.bool) for _ in range(3)]
    masks[0][1, [2, 5]] = True
    masks[2][0, 7] = True
    seen = {}
    ids = torch.randint(1, 256, (2, 5), generator=torch.Generator().manual_seed(1))
    with (
        torch.no_grad(),
        apply_masks(lm.model, masks, signal=signal),
        trace_signal(lm.model, signal, read=lambda layer, h: seen.setdefault(layer, h.detach().clone())),
    ):
        lm.model(ids.repeat(3, 1))
    by_slice = {layer: h.view(3, 2, 5, width) for layer, h in seen.items()}
    zero = {
        (layer, i, u)
        for layer in by_slice
        for i in range(3)
        for u in range(width)
        if bool((by_slice[layer][i, ..., u] == 0).all())
    }
    assert zero == {(1, 0, 2), (1, 0, 5), (0, 2, 7)}


@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("multi_token", [False, True])
def test_scores_per_mask_equal_separate_scoring(signal, multi_token):
    lm = tiny("llama")
    masks = _masks(lm.model, signal)
    rng = np.random.default_rng(2)
    contexts = [list(rng.integers(1, 256, n)) for n in (7, 4, 9, 5)]
    width = 3 if multi_token else 1
    continuations = [[list(rng.integers(1, 256, width)) for _ in range(2)] for _ in contexts]
    batched = score_loglik_masks(lm.model, masks, contexts, continuations, pad_token_id=0)
    assert batched.shape == (len(masks), 4, 2)
    n = len(masks)
    for i, mask in enumerate(masks):
        with apply_mask(lm.model, mask):
            same_layout = score_loglik(lm.model, contexts * n, continuations * n, pad_token_id=0).view(n, 4, 2)
            alone = score_loglik(lm.model, contexts, continuations, pad_token_id=0)
        assert torch.equal(batched[i], same_layout[i]), i
        torch.testing.assert_close(batched[i], alone, rtol=0, atol=1e-4)
    assert not torch.equal(batched[0], batched[4])  # a lesion changes the scores of the unmasked slice


def test_modes_other_than_zero_and_a_batch_that_does_not_split():
    lm = tiny("gpt2")
    n_layers, width = expected_mask_shape(lm.model, "mlp_out")
    rows = torch.zeros(n_layers, width, dtype=torch.bool)
    rows[2, :4] = True
    values = torch.arange(n_layers * width, dtype=torch.float32).view(n_layers, width) / 100
    masks = [
        MaskSpec(rows, mode="scale", value=3.0),
        MaskSpec(rows, mode="replace", values=values),
        MaskSpec(rows, mode="amplify", value=-1.5),
    ]
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(3))
    batched = _logits(lm.model, ids, masks, apply_masks(lm.model, masks))
    for i, mask in enumerate(masks):
        assert torch.equal(batched[i], _logits(lm.model, ids, masks, apply_mask(lm.model, mask))[i])
    with pytest.raises(ValueError, match="does not split into 3 equal slices"):
        with torch.no_grad(), apply_masks(lm.model, masks):
            lm.model(ids)
    with pytest.raises(ValueError, match="different signals"):
        with apply_masks(
            lm.model, [MaskSpec(rows), MaskSpec(torch.zeros(n_layers, 128, dtype=torch.bool), signal="mlp_act")]
        ):
            pass
