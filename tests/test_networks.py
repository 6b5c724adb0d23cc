"""Tests for fnet.networks: thresholding, NetworkSet layout and file, IoU, template matching."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fnet
from fnet.networks import (
    NetworkSet,
    NetworkSetFormatError,
    iou,
    match_templates,
    orient_maps,
    threshold_maps,
    zscore_maps,
)

N_LAYERS, WIDTH = 3, 8  # a tiny "model": 24 neurons


def mask_row(n: int, members) -> torch.Tensor:
    row = torch.zeros(n, dtype=torch.bool)
    row[list(members)] = True
    return row


def planted_map(n: int = 1000, seed: int = 0):
    """A map with light noise, a heavy negative tail (20 neurons at -10) and a few moderate positives.

    Returns (map [1, n], negative tail indices, positive indices).
    """
    rng = np.random.default_rng(seed)
    values = rng.uniform(-0.3, 0.3, size=n)
    tail = np.arange(0, 20)  # heavy negative tail
    positive = np.arange(500, 505)  # a few moderate positive outliers
    values[tail] = -10.0
    values[positive] = 3.0
    return torch.tensor(values)[None], set(tail.tolist()), set(positive.tolist())


def selected(mask_1d: torch.Tensor) -> set[int]:
    return set(torch.nonzero(mask_1d).flatten().tolist())


# --------------------------------------------------------------------------------------------------------
# zscore / threshold
# --------------------------------------------------------------------------------------------------------


def test_zscore_rows_have_zero_mean_unit_std():
    maps = torch.randn(4, 500, generator=torch.Generator().manual_seed(1)) * 7 + 3
    z = zscore_maps(maps)
    assert z.dtype == torch.float32 and z.shape == (4, 500)
    assert torch.allclose(z.double().mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(z.double().pow(2).mean(1), torch.ones(4, dtype=torch.float64), atol=1e-5)


def test_zscore_constant_row_is_zero_with_warning():
    maps = torch.stack([torch.full((10,), 5.0), torch.arange(10.0)])
    with pytest.warns(RuntimeWarning, match="constant"):
        z = zscore_maps(maps)
    assert torch.equal(z[0], torch.zeros(10))
    assert not torch.isnan(z).any()
    with pytest.warns(RuntimeWarning):
        assert not threshold_maps(maps, rule="percentile")[0].any()


def test_zscore_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        zscore_maps(torch.tensor([[1.0, float("nan"), 2.0]]))


def test_threshold_sign_policies_on_planted_negative_tail():
    maps, tail, positive = planted_map()
    assert selected(threshold_maps(maps, sign="flip")[0]) == tail
    assert selected(threshold_maps(maps, sign="positive")[0]) == positive
    assert selected(threshold_maps(maps, sign="abs")[0]) == tail | positive
    _, signs = orient_maps(zscore_maps(maps), "flip")
    assert signs.tolist() == [-1]


def test_flip_keeps_a_positive_tail_map():
    maps, tail, _ = planted_map()
    assert selected(threshold_maps(-maps, sign="flip")[0]) == tail  # now the tail is positive
    _, signs = orient_maps(zscore_maps(-maps), "flip")
    assert signs.tolist() == [1]


@pytest.mark.parametrize("n,percentile", [(1000, 98.0), (1000, 90.0), (777, 95.0), (50, 0.0)])
def test_percentile_rule_keeps_expected_count(n, percentile):
    maps = torch.randn(3, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    masks = threshold_maps(maps, rule="percentile", percentile=percentile, sign="positive")
    expected = n - 1 - math.floor(percentile / 100 * (n - 1))
    assert masks.sum(1).tolist() == [expected] * 3
    # ... and they are the top neurons of each map
    for k in range(3):
        top = set(torch.topk(maps[k], expected).indices.tolist())
        assert selected(masks[k]) == top


def test_percentile_rule_on_planted_tail_with_flip():
    maps, tail, _ = planted_map()
    masks = threshold_maps(maps, rule="percentile", percentile=98.0, sign="flip")
    # 98th percentile of 1000 -> 20 neurons strictly above; the flipped tail is exactly those 20
    assert selected(masks[0]) == tail


def test_threshold_matches_numpy_percentile():
    maps = torch.randn(2, 301, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = zscore_maps(maps).numpy()
    masks = threshold_maps(maps, rule="percentile", percentile=93.5, sign="abs").numpy()
    for k in range(2):
        cut = np.percentile(np.abs(z[k]), 93.5)
        assert (masks[k] == (np.abs(z[k]) > cut)).all()


def test_unknown_rule_or_sign_names_choices():
    maps = torch.randn(2, 10)
    with pytest.raises(ValueError, match="'z', 'percentile'"):
        threshold_maps(maps, rule="fdr")
    with pytest.raises(ValueError, match="'flip', 'positive', 'abs'"):
        threshold_maps(maps, sign="negative")
    with pytest.raises(ValueError, match="percentile"):
        threshold_maps(maps, rule="percentile", percentile=101)


# --------------------------------------------------------------------------------------------------------
# NetworkSet
# --------------------------------------------------------------------------------------------------------


def planted_single_neuron_maps(layer: int, unit: int, n_layers: int = N_LAYERS, width: int = WIDTH):
    maps = torch.zeros(1, n_layers * width)
    maps[0, :] = torch.linspace(-0.01, 0.01, n_layers * width)
    maps[0, layer * width + unit] = 50.0
    return maps


@pytest.mark.parametrize("layer,unit", [(0, 0), (1, 5), (2, 7), (2, 0)])
def test_from_maps_layer_major_order(layer, unit):
    ns = NetworkSet.from_maps(planted_single_neuron_maps(layer, unit), N_LAYERS, WIDTH, sign="positive")
    assert ns.masks.shape == (1, N_LAYERS, WIDTH)
    assert ns.neurons(0).tolist() == [[layer, unit]]
    assert selected(ns.flat()[0]) == {layer * WIDTH + unit}
    assert ns.counts_per_layer()[0].tolist() == [1 if l == layer else 0 for l in range(N_LAYERS)]
    # the 3-D input form gives the same networks
    ns3 = NetworkSet.from_maps(
        planted_single_neuron_maps(layer, unit).reshape(1, N_LAYERS, WIDTH), N_LAYERS, WIDTH, sign="positive"
    )
    assert torch.equal(ns3.masks, ns.masks)


def test_from_maps_stores_oriented_maps_consistent_with_masks():
    maps = torch.randn(6, N_LAYERS * WIDTH, generator=torch.Generator().manual_seed(5)) ** 3
    ns = NetworkSet.from_maps(maps, N_LAYERS, WIDTH, alpha=1.5, sign="flip", provenance={"model": "toy"})
    assert ns.maps.dtype == torch.float32
    assert torch.equal(ns.masks, ns.maps > 1.5)
    z = zscore_maps(maps).reshape(6, N_LAYERS, WIDTH)
    assert torch.equal(ns.maps, z * ns.signs[:, None, None].float())
    assert ns.provenance["alpha"] == 1.5 and ns.provenance["sign"] == "flip" and ns.provenance["rule"] == "z"
    assert ns.provenance["K"] == 6 and ns.provenance["model"] == "toy"
    assert ns.provenance["fnet_version"] == fnet.__version__


def test_from_maps_rejects_contradicting_provenance_and_bad_shape():
    maps = torch.randn(2, N_LAYERS * WIDTH)
    with pytest.raises(ValueError, match="alpha"):
        NetworkSet.from_maps(maps, N_LAYERS, WIDTH, alpha=1.96, provenance={"alpha": 2.5})
    with pytest.raises(ValueError, match="n_layers"):
        NetworkSet.from_maps(maps, N_LAYERS, WIDTH + 1)


def small_set() -> NetworkSet:
    """3 networks on [3 layers, 8 units] with known members."""
    return NetworkSet.from_neuron_sets(
        [
            [(0, 0), (0, 1), (2, 7)],  # network 0: 3 neurons
            [0, 1, 2, 3, 8 + 4],  # network 1: flat indices; layer 0 units 0-3 and (1, 4)
            [],  # network 2: empty
        ],
        N_LAYERS,
        WIDTH,
        provenance={"model": "toy", "seed": 7, "K": 3, "nested": {"a": [1, 2]}},
        stability=[0.9, 0.5, 0.1],
    )


def test_sizes_counts_union_fractions_exact():
    ns = small_set()
    assert len(ns) == ns.n_networks == 3 and ns.n_layers == N_LAYERS and ns.width == WIDTH
    assert ns.sizes().tolist() == [3, 5, 0]
    assert ns.counts_per_layer().tolist() == [[2, 0, 1], [4, 1, 0], [0, 0, 0]]
    assert ns.fractions().tolist() == [3 / 24, 5 / 24, 0.0]
    union = ns.union()
    assert union.shape == (N_LAYERS, WIDTH)
    assert torch.nonzero(union).tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 4], [2, 7]]
    assert torch.nonzero(ns.union([0])).tolist() == [[0, 0], [0, 1], [2, 7]]
    assert ns.flat().shape == (3, 24)


def test_select_keeps_everything_and_records_indices():
    ns = small_set()
    sub = ns.select([2, 0])
    assert sub.n_networks == 2
    assert torch.equal(sub.masks, ns.masks[[2, 0]])
    assert sub.stability.tolist() == [0.1, 0.9]
    assert sub.network_ids() == [2, 0]
    assert sub.select([1]).network_ids() == [0]  # composes through the original indices
    assert ns.select(torch.tensor([True, False, True])).network_ids() == [0, 2]
    assert ns.select(slice(1, None)).sizes().tolist() == [5, 0]
    with pytest.raises(IndexError):
        ns.select([3])


def test_from_neuron_sets_rejects_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        NetworkSet.from_neuron_sets([[(3, 0)]], N_LAYERS, WIDTH)
    with pytest.raises(ValueError, match="outside"):
        NetworkSet.from_neuron_sets([[24]], N_LAYERS, WIDTH)


def test_from_masks_accepts_01_and_checks():
    masks = torch.zeros(2, N_LAYERS, WIDTH, dtype=torch.uint8)
    masks[1, 2, 3] = 1
    ns = NetworkSet.from_masks(masks, {"data": "pos"})
    assert ns.masks.dtype == torch.bool and ns.neurons(1).tolist() == [[2, 3]]
    with pytest.raises(ValueError):
        NetworkSet.from_masks(masks * 2 + 0)  # contains 2s
    with pytest.raises(ValueError):
        NetworkSet.from_masks(torch.zeros(2, 24, dtype=torch.bool))  # not [K, L, W]


def assert_same(a: NetworkSet, b: NetworkSet) -> None:
    assert torch.equal(a.masks, b.masks) and a.masks.dtype == b.masks.dtype
    for name in ("maps", "stability", "signs"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.provenance == b.provenance


def test_save_load_round_trip_exact(tmp_path):
    maps = torch.randn(4, N_LAYERS * WIDTH, generator=torch.Generator().manual_seed(2))
    ns = NetworkSet.from_maps(
        maps,
        N_LAYERS,
        WIDTH,
        rule="percentile",
        percentile=90.0,
        stability=torch.rand(4, dtype=torch.float64),
        provenance={"model": "toy", "signal": "mlp_out", "data": "wiki", "seed": 3, "tuple": (1, 2)},
    )
    path = ns.save(tmp_path / "sub" / "nets.safetensors")
    loaded = NetworkSet.load(path)
    assert_same(ns, loaded)
    assert loaded.provenance["tuple"] == [1, 2]  # normalised through JSON already in memory
    # a set without maps / stability too
    small = small_set().select([0, 2])
    assert_same(small, NetworkSet.load(small.save(tmp_path / "small.safetensors")))
    # an empty set
    empty = small.select([])
    assert_same(empty, NetworkSet.load(empty.save(tmp_path / "empty.safetensors")))


def test_load_keeps_saved_fnet_version(tmp_path):
    ns = NetworkSet.from_neuron_sets([[0]], N_LAYERS, WIDTH, provenance={"fnet_version": "0.0.1"})
    assert NetworkSet.load(ns.save(tmp_path / "v.safetensors")).provenance["fnet_version"] == "0.0.1"


def test_load_garbage_file_names_it(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(NetworkSetFormatError, match="garbage.safetensors"):
        NetworkSet.load(path)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        NetworkSet.load(tmp_path / "missing.safetensors")


def test_load_foreign_safetensors_names_it(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(NetworkSetFormatError, match="weights.safetensors.*not an fnet NetworkSet"):
        NetworkSet.load(path)


def test_load_disagreeing_shapes_names_it(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "bad_shapes.safetensors"
    meta = {"format": "fnet.NetworkSet", "format_version": "1", "provenance": json.dumps({})}
    save_file({"masks": torch.zeros(2, 3, 4, dtype=torch.bool), "maps": torch.zeros(2, 3, 5)}, str(path), meta)
    with pytest.raises(NetworkSetFormatError, match="bad_shapes.safetensors.*maps shape"):
        NetworkSet.load(path)
    save_file(
        {"masks": torch.zeros(2, 3, 4, dtype=torch.bool), "stability": torch.zeros(3, dtype=torch.float64)},
        str(path),
        meta,
    )
    with pytest.raises(NetworkSetFormatError, match="stability"):
        NetworkSet.load(path)
    save_file({"masks": torch.zeros(2, 3, 4, dtype=torch.float32)}, str(path), meta)
    with pytest.raises(NetworkSetFormatError, match="dtype"):
        NetworkSet.load(path)


def test_provenance_must_be_json():
    with pytest.raises(TypeError, match="JSON"):
        NetworkSet.from_neuron_sets([[0]], N_LAYERS, WIDTH, provenance={"bad": object()})


# --------------------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------------------


def test_iou_hand_made_sets():
    n = 10
    a = torch.stack([mask_row(n, {0, 1, 2}), mask_row(n, []), mask_row(n, {5})])
    b = torch.stack([mask_row(n, {1, 2, 3}), mask_row(n, []), mask_row(n, {0, 1, 2})])
    m = iou(a, b)
    assert m.shape == (3, 3) and m.dtype == torch.float64
    assert m[0, 0] == 0.5  # {0,1,2} vs {1,2,3}
    assert m[1, 1] == 0.0  # empty vs empty
    assert m[0, 2] == 1.0
    assert m[2, 0] == 0.0 and m[1, 0] == 0.0
    assert iou(mask_row(n, {0, 1}), mask_row(n, {1})).tolist() == [[0.5]]  # 1-D masks count as K=1


def naive_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            sa = set(np.nonzero(a[i])[0])
            sb = set(np.nonzero(b[j])[0])
            out[i, j] = len(sa & sb) / len(sa | sb) if (sa | sb) else 0.0
    return out


@settings(max_examples=25, deadline=None)
@given(
    k1=st.integers(0, 6),
    k2=st.integers(0, 6),
    n=st.integers(1, 40),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_iou_agrees_with_naive_loop(k1, k2, n, density, seed):
    rng = np.random.default_rng(seed)
    a = rng.random((k1, n)) < density
    b = rng.random((k2, n)) < density
    fast = iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert fast.shape == (k1, k2)
    np.testing.assert_allclose(fast, naive_iou(a, b), rtol=0, atol=1e-12)
    np.testing.assert_allclose(iou(b, a).numpy(), fast.T, rtol=0, atol=0)  # symmetry
    if k1:
        diag = np.diag(iou(a, a).numpy())
        np.testing.assert_array_equal(diag, np.where(a.any(1), 1.0, 0.0))


def test_iou_accepts_networksets_and_checks_layout():
    ns = small_set()
    m = iou(ns, ns)
    assert m.shape == (3, 3)
    assert torch.equal(m, m.T)
    assert m[0, 1] == 2 / 6  # {(0,0),(0,1),(2,7)} vs {(0,0..3),(1,4)}: 2 shared of 6
    other = NetworkSet.from_neuron_sets([[0]], 4, 6)  # 24 neurons, other layout
    with pytest.raises(ValueError, match="layout"):
        iou(ns, other)
    with pytest.raises(ValueError, match="neuron counts"):
        iou(torch.zeros(1, 5, dtype=torch.bool), torch.zeros(1, 6, dtype=torch.bool))


# --------------------------------------------------------------------------------------------------------
# match_templates
# --------------------------------------------------------------------------------------------------------


def test_match_templates_exact_counts():
    L, W = 2, 10  # 20 neurons
    templates = NetworkSet.from_neuron_sets([range(0, 10), range(10, 20), []], L, W, {"model": "toy"})
    individuals = [
        # IoU with t0: 10/10=1.0 ; 5/10=0.5 with t0 ; disjoint-ish with t1: {10} -> 1/10 = 0.1 (no match)
        NetworkSet.from_neuron_sets([range(0, 10), range(0, 5), [10]], L, W),
        # {0,1} vs t0 -> 0.2 (NOT > 0.2); {0,1,2} -> 0.3 ; range(10,20) -> t1 1.0
        NetworkSet.from_neuron_sets([[0, 1], [0, 1, 2], range(10, 20)], L, W),
        # an individual with no networks
        NetworkSet.from_neuron_sets([], L, W),
        # half of each template: 5/15 = 0.333 with both
        NetworkSet.from_neuron_sets([list(range(5, 15))], L, W),
    ]
    result = match_templates(templates, individuals, threshold=0.2)
    assert result.iou.shape == (3, 7)
    assert result.counts.tolist() == [4, 2, 0]  # t0: 1.0, 0.5, 0.3, 0.333 ; t1: 1.0, 0.333
    assert [b.tolist() for b in result.best_iou] == [
        [1.0, 0.5, 0.1],
        [0.2, 0.3, 1.0],
        [],
        [pytest.approx(1 / 3)],
    ]
    assert result.individual.tolist() == [0, 0, 0, 1, 1, 1, 3]
    assert result.individuals_matched().tolist() == [3, 2, 0]
    rows = result.as_rows()
    assert [r["template"] for r in rows] == [0, 1, 2]
    assert [r["size"] for r in rows] == [10, 10, 0]
    assert [r["matches"] for r in rows] == [4, 2, 0]
    assert rows[0]["fraction_matched"] == pytest.approx(4 / 7)
    # per individual best IoU with t0: 1.0, 0.3, 0 (no networks), 1/3 -> mean
    assert rows[0]["mean_best_iou"] == pytest.approx((1.0 + 0.3 + 0.0 + 1 / 3) / 4)
    assert rows[2]["mean_best_iou"] == 0.0


def test_match_templates_uses_selected_template_ids_and_checks_layout():
    L, W = 2, 10
    templates = NetworkSet.from_neuron_sets([range(0, 10), range(10, 20)], L, W).select([1])
    result = match_templates(templates, [NetworkSet.from_neuron_sets([range(10, 20)], L, W)])
    assert result.as_rows()[0]["template"] == 1 and result.counts.tolist() == [1]
    with pytest.raises(ValueError, match="layout"):
        match_templates(templates, [NetworkSet.from_neuron_sets([[0]], 4, 5)])
    with pytest.raises(ValueError):
        match_templates(templates, [])


def test_match_templates_with_no_templates():
    ind = NetworkSet.from_neuron_sets([[0], [1]], 2, 3)
    result = match_templates(ind.select([]), [ind])
    assert result.counts.tolist() == [] and [b.tolist() for b in result.best_iou] == [[0.0, 0.0]]
    assert result.as_rows() == []


def test_no_warnings_on_normal_path():
    maps = torch.randn(3, N_LAYERS * WIDTH, generator=torch.Generator().manual_seed(9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NetworkSet.from_maps(maps, N_LAYERS, WIDTH)
