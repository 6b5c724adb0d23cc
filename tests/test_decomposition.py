"""Tests for fnet.decompose on planted ground truth (no real model needed).

Data are built so the answer is known: heavy-tailed sources [tokens, K] times sparse spatial maps [K, neurons]
plus small Gaussian noise (temporal ICA, dictionary learning), or spatially independent sparse maps with
Gaussian time courses per text (CanICA).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.decomposition import FastICA as SklearnFastICA
from sklearn.exceptions import ConvergenceWarning

from fnet.decompose import (
    CanICA,
    DictionaryLearningDecomposition,
    FastICA,
    abs_corr_matrix,
    best_match_abs_corr,
    fit_with_restarts,
    group_decomposition,
    individual_decompositions,
    restart_stability,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "ica"


def planted_temporal(seed: int, n_tokens: int, n_neurons: int, n_planted: int, support: int, noise: float = 0.1):
    """``X  # [tokens, neurons] = laplace_sources  # [tokens, K] @ maps  # [K, neurons] + noise``.

    Each planted map has ``support`` neurons with weights of magnitude 1..2 and random sign, zero elsewhere.
    Returns ``(X, maps)``; the neuron means are shifted so centring matters.
    """
    rng = np.random.default_rng(seed)
    sources = rng.laplace(size=(n_tokens, n_planted))
    maps = np.zeros((n_planted, n_neurons))
    for k in range(n_planted):
        neurons = rng.choice(n_neurons, support, replace=False)
        maps[k, neurons] = rng.uniform(1, 2, support) * rng.choice([-1, 1], support)
    X = sources @ maps + noise * rng.standard_normal((n_tokens, n_neurons)) + rng.normal(size=n_neurons)
    return X, maps


def zscore_sets(maps: np.ndarray, z: float = 1.96) -> list[set]:
    """Neuron sets of ``maps  # [K, neurons]``: |z-score within the map| > z."""
    zs = (maps - maps.mean(axis=1, keepdims=True)) / maps.std(axis=1, keepdims=True)
    return [set(np.flatnonzero(np.abs(row) > z)) for row in zs]


def iou(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The matrices here are small: one thread is as fast and does not stall when other jobs share the cores."""
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def planted():
    # 2,000 neurons and K = 6: 4 * (6 + 10) <= 2,000, so "auto" takes the randomized whitening path
    return planted_temporal(seed=0, n_tokens=3000, n_neurons=2000, n_planted=6, support=100)


@pytest.fixture(scope="module")
def planted_fit(planted):
    X, _ = planted
    return FastICA(6, random_state=0).fit(X)


def assert_recovers(maps_true: np.ndarray, maps_found: np.ndarray, min_corr: float = 0.95, min_iou: float = 0.9):
    corr, index = best_match_abs_corr(maps_true, maps_found)
    assert corr.min() >= min_corr, corr
    true_sets = [set(np.flatnonzero(row)) for row in maps_true]
    found_sets = zscore_sets(maps_found)
    ious = [iou(true_sets[k], found_sets[index[k]]) for k in range(len(maps_true))]
    assert min(ious) >= min_iou, ious


def assert_close_to_scale(actual: np.ndarray, expected: np.ndarray, relative: float):
    """Entry-wise equal up to ``relative`` times the largest |entry| of ``expected``."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=relative * np.abs(expected).max())


# ---------------------------------------------------------------------------------------------------------------
# FastICA: planted recovery, streaming, agreement with scikit-learn, determinism, convergence, errors
# ---------------------------------------------------------------------------------------------------------------


def test_fastica_recovers_planted_maps_and_neuron_sets(planted, planted_fit):
    X, maps = planted
    ica = planted_fit
    assert ica.whiten_solver_ == "randomized"
    assert ica.converged_ and ica.n_iter_ < 200
    assert ica.spatial_maps_.shape == (6, 2000)
    assert ica.components_.shape == (6, 2000) and ica.mixing_.shape == (2000, 6)
    assert ica.whitening_.shape == (6, 2000) and ica.mean_.shape == (2000,)
    assert_recovers(maps, ica.spatial_maps_)
    np.testing.assert_allclose(ica.mean_, X.mean(axis=0), atol=1e-10)
    # unit-variance sources, and mixing_ is the pseudo-inverse of components_
    sources = ica.transform(X)
    np.testing.assert_allclose(sources.std(axis=0), 1.0, atol=1e-8)
    np.testing.assert_allclose(ica.components_ @ ica.mixing_, np.eye(6), atol=1e-8)


def test_fit_transform_equals_transform(planted, planted_fit):
    X, _ = planted
    refit = clone(planted_fit)
    np.testing.assert_allclose(refit.fit_transform(X), planted_fit.transform(X), atol=1e-9)


def test_list_of_float16_memmaps_streams_to_the_stacked_answer(planted, tmp_path):
    X, maps = planted
    X16 = X.astype(np.float16)
    cuts = [0, 700, 1900, 3000]
    memmaps = []
    for i in range(3):
        path = tmp_path / f"text{i}.npy"
        np.save(path, X16[cuts[i] : cuts[i + 1]])
        memmaps.append(np.load(path, mmap_mode="r"))
    # all in float64 the only difference is the summation order over blocks: equal to ~1e-12 of the scale
    streamed = FastICA(6, random_state=0, block_rows=256, sketch_dtype="float64").fit(memmaps)
    stacked = FastICA(6, random_state=0, sketch_dtype="float64").fit(X16)  # blocks never span two texts
    assert_close_to_scale(streamed.components_, stacked.components_, 1e-10)
    assert_close_to_scale(streamed.mixing_, stacked.mixing_, 1e-10)
    assert streamed.n_iter_ == stacked.n_iter_
    assert_recovers(maps, streamed.spatial_maps_)
    # transform of the list is the transform of the stacked rows
    assert_close_to_scale(streamed.transform(memmaps), stacked.transform(X16), 1e-10)
    # default float32 range finder: block order changes float32 rounding, still the same answer to ~1e-6
    streamed32 = FastICA(6, random_state=0, block_rows=256).fit(memmaps)
    stacked32 = FastICA(6, random_state=0).fit(X16)
    assert_close_to_scale(streamed32.components_, stacked32.components_, 1e-5)
    assert_close_to_scale(streamed32.mixing_, stacked32.mixing_, 1e-5)


def test_torch_float16_input_accepted(planted, planted_fit):
    X, maps = planted
    ica = FastICA(6, random_state=0).fit(torch.from_numpy(X).to(torch.float16))
    corr, _ = best_match_abs_corr(planted_fit.spatial_maps_, ica.spatial_maps_)
    assert corr.min() > 0.999


def test_agrees_with_sklearn_up_to_order_and_sign():
    X, maps = planted_temporal(seed=1, n_tokens=2000, n_neurons=400, n_planted=6, support=30)
    reference = SklearnFastICA(6, random_state=0).fit(X)
    ours = FastICA(6, random_state=0).fit(X)
    assert ours.whiten_solver_ == "randomized"
    similarity = abs_corr_matrix(reference.mixing_.T, ours.spatial_maps_)
    assert similarity.max(axis=1).min() >= 0.99
    assert similarity.max(axis=0).min() >= 0.99  # one-to-one: every fnet component is matched too
    # exact whitening reproduces scikit-learn's numbers themselves (same w_init, signs, stopping rule)
    exact = FastICA(6, random_state=0, whiten_solver="eigh").fit(X)
    assert exact.n_iter_ == reference.n_iter_
    np.testing.assert_allclose(exact.components_, reference.components_, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(exact.mixing_, reference.mixing_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(exact.whitening_, reference.whitening_, rtol=1e-6, atol=1e-12)


def test_exact_wide_path_matches_randomized():
    # tokens < neurons: the exact solver builds the [tokens, tokens] Gram from column chunks of the texts
    X, maps = planted_temporal(seed=2, n_tokens=600, n_neurons=900, n_planted=4, support=60)
    texts = [X[:250], X[250:]]
    exact = FastICA(4, random_state=0, whiten_solver="eigh").fit(texts)
    randomized = FastICA(4, random_state=0, whiten_solver="randomized").fit(texts)
    corr, _ = best_match_abs_corr(exact.spatial_maps_, randomized.spatial_maps_)
    assert corr.min() > 0.999
    assert_recovers(maps, exact.spatial_maps_)


def test_sklearn_backend_copies_the_reference():
    X, _ = planted_temporal(seed=3, n_tokens=800, n_neurons=120, n_planted=4, support=15)
    wrapped = FastICA(4, random_state=0, backend="sklearn").fit(X)
    reference = SklearnFastICA(4, random_state=0).fit(X)
    np.testing.assert_array_equal(wrapped.components_, reference.components_)
    np.testing.assert_array_equal(wrapped.spatial_maps_, reference.mixing_.T)
    assert wrapped.converged_ and wrapped.n_iter_ == reference.n_iter_


def test_same_seed_identical_different_seed_still_recovers(planted, planted_fit):
    X, maps = planted
    again = FastICA(6, random_state=0).fit(X)
    for name in ("components_", "mixing_", "whitening_", "mean_"):
        assert np.array_equal(getattr(again, name), getattr(planted_fit, name)), name
    assert again.n_iter_ == planted_fit.n_iter_
    other = FastICA(6, random_state=123).fit(X)
    assert not np.array_equal(other.components_, planted_fit.components_)
    assert_recovers(maps, other.spatial_maps_)


@pytest.mark.parametrize("algorithm", ["parallel", "deflation"])
def test_non_convergence_is_reported(planted, algorithm):
    X, _ = planted
    with pytest.warns(ConvergenceWarning, match=r"after 1 iterations with final change"):
        ica = FastICA(6, random_state=0, max_iter=1, algorithm=algorithm).fit(X)
    assert ica.converged_ is False and ica.n_iter_ == 1


def test_deflation_recovers_planted_maps(planted):
    X, maps = planted
    ica = FastICA(6, random_state=0, algorithm="deflation").fit(X)
    assert ica.converged_
    assert_recovers(maps, ica.spatial_maps_)


@pytest.mark.parametrize("fun", ["exp", "cube"])
def test_other_nonlinearities_recover(fun):
    X, maps = planted_temporal(seed=4, n_tokens=2000, n_neurons=500, n_planted=4, support=40)
    assert_recovers(maps, FastICA(4, random_state=0, fun=fun).fit(X).spatial_maps_)


def test_inverse_transform_reconstructs_rank_k_data():
    rng = np.random.default_rng(5)
    X = rng.laplace(size=(300, 4)) @ rng.standard_normal((4, 50)) + 3.0  # exactly rank 4 after centring
    ica = FastICA(4, random_state=0).fit(X)
    np.testing.assert_allclose(ica.inverse_transform(ica.transform(X)), X, atol=1e-8)


def test_bad_inputs_raise_clear_errors():
    X = np.random.default_rng(6).standard_normal((20, 30))
    with pytest.raises(ValueError, match=r"n_components=25 needs at least 26 tokens.*got 20 tokens"):
        FastICA(25).fit(X)
    with pytest.raises(ValueError, match=r"n_components=40 is larger than the number of neurons \(30\)"):
        FastICA(40).fit(np.random.default_rng(6).standard_normal((100, 30)))
    bad = X.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity.*row 7"):
        FastICA(3).fit(bad)
    with pytest.raises(ValueError, match=r"NaN or infinity.*array 1 of the list"):
        FastICA(3).fit([X, bad])
    with pytest.raises(ValueError, match=r"unknown fun='tanh'; valid choices: 'logcosh', 'exp', 'cube'"):
        FastICA(3, fun="tanh").fit(X)
    with pytest.raises(ValueError, match=r"unknown whiten_solver='svd'; valid choices: 'auto', 'randomized', 'eigh'"):
        FastICA(3, whiten_solver="svd").fit(X)
    with pytest.raises(ValueError, match=r"unknown backend='jax'; valid choices: 'torch', 'sklearn'"):
        FastICA(3, backend="jax").fit(X)
    with pytest.raises(ValueError, match=r"empty input"):
        FastICA(3).fit([])
    with pytest.raises(ValueError, match=r"empty input"):
        FastICA(3).fit(np.zeros((0, 30)))
    with pytest.raises(ValueError, match=r"same number of neurons"):
        FastICA(3).fit([X, X[:, :10]])
    with pytest.raises(ValueError, match=r"numerical rank 1 .* fewer than n_components=3"):
        FastICA(3).fit(np.outer(np.arange(20.0), np.ones(30)))


def test_sklearn_compatible_params_and_clone():
    ica = FastICA(7, fun="cube", random_state=3)
    params = ica.get_params()
    assert params["n_components"] == 7 and params["fun"] == "cube" and params["whiten_solver"] == "auto"
    copy = clone(ica)
    assert copy.get_params() == params and copy is not ica


# ---------------------------------------------------------------------------------------------------------------
# CanICA and dictionary learning
# ---------------------------------------------------------------------------------------------------------------


def planted_spatial(seed: int, n_texts: int, n_tokens: int, n_neurons: int, n_maps: int, density: float):
    """Spatially independent sparse maps [K, neurons] (each neuron in each map independently with prob
    ``density``, weight 1..2), Gaussian time courses per text; returns ``(texts, maps)``."""
    rng = np.random.default_rng(seed)
    maps = (rng.random((n_maps, n_neurons)) < density) * rng.uniform(1, 2, (n_maps, n_neurons))
    texts = [
        rng.standard_normal((n_tokens, n_maps)) @ maps + 0.1 * rng.standard_normal((n_tokens, n_neurons))
        for _ in range(n_texts)
    ]
    return texts, maps


def test_canica_recovers_spatially_independent_maps():
    texts, maps = planted_spatial(seed=7, n_texts=6, n_tokens=300, n_neurons=1000, n_maps=5, density=0.08)
    canica = CanICA(5, random_state=0).fit(texts)
    assert canica.converged_ and canica.spatial_maps_.shape == (5, 1000)
    # documented tolerance: best-match |corr| >= 0.95 (observed ~0.999) and z-score neuron sets IoU >= 0.9
    assert_recovers(maps, canica.spatial_maps_, min_corr=0.95, min_iou=0.9)
    # signed so that the heavy tail is positive: the planted weights are all positive
    corr = np.array(
        [
            np.corrcoef(m, canica.spatial_maps_[i])[0, 1]
            for m, i in zip(maps, best_match_abs_corr(maps, canica.spatial_maps_)[1])
        ]
    )
    assert (corr > 0.95).all()
    assert canica.transform(texts).shape == (1800, 5)
    # same seed, same maps
    assert np.array_equal(CanICA(5, random_state=0).fit(texts).spatial_maps_, canica.spatial_maps_)


def test_canica_short_text_error_names_it():
    texts, _ = planted_spatial(seed=8, n_texts=3, n_tokens=50, n_neurons=100, n_maps=3, density=0.1)
    texts[2] = texts[2][:4]
    with pytest.raises(ValueError, match=r"text 2 has 4 tokens.*needs at least 6"):
        CanICA(3, subject_components=5).fit(texts)


def test_dictionary_learning_recovers_planted_atoms():
    rng = np.random.default_rng(9)
    n_tokens, n_neurons, K = 2000, 200, 6
    atoms = (
        (rng.random((K, n_neurons)) < 0.15) * rng.uniform(1, 2, (K, n_neurons)) * rng.choice([-1, 1], (K, n_neurons))
    )
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n_tokens, K))  # each token uses 1-2 atoms with a random sign (codes have ~zero mean)
    for t in range(n_tokens):
        active = rng.choice(K, rng.integers(1, 3), replace=False)
        codes[t, active] = rng.uniform(1, 3, len(active)) * rng.choice([-1, 1], len(active))
    X = codes @ atoms + 0.02 * rng.standard_normal((n_tokens, n_neurons))
    learner = DictionaryLearningDecomposition(K, alpha=1.0, random_state=0).fit([X[:900], X[900:]])
    # documented tolerance: best-match |corr| >= 0.95 (observed ~0.999)
    corr, _ = best_match_abs_corr(atoms, learner.spatial_maps_)
    assert corr.min() >= 0.95, corr
    assert learner.converged_ and learner.spatial_maps_.shape == (K, n_neurons)
    assert learner.transform(X[:10]).shape == (10, K)


# ---------------------------------------------------------------------------------------------------------------
# similarity and restarts
# ---------------------------------------------------------------------------------------------------------------


def test_abs_corr_matrix_known_values():
    a = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    b = np.array([[-2.0, -4.0, -6.0], [1.0, 0.0, 1.0], [3.0, 1.0, 2.0]])
    expected = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(abs_corr_matrix(a, b), expected, atol=1e-12)
    np.testing.assert_allclose(abs_corr_matrix(torch.tensor(a), b), expected, atol=1e-12)


def test_restart_stability_rule_on_constructed_maps():
    rng = np.random.default_rng(10)
    base = rng.standard_normal((3, 40))
    # restart 0 and 1 share all three maps (permuted, sign-flipped); restart 2 shares only map 0
    restarts = [base, -base[[2, 0, 1]], np.vstack([base[0], rng.standard_normal((2, 40))])]
    stability = restart_stability(restarts)
    assert stability.shape == (3, 3)
    np.testing.assert_allclose(stability[0, 0], 1.0)
    assert stability[0, 1] < 0.8 and stability[2, 1] < 0.8


def test_restarts_planted_components_stable_extra_and_noise_components_not():
    X, maps = planted_temporal(seed=0, n_tokens=2000, n_neurons=1000, n_planted=5, support=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # components on noise directions rarely converge
        result = fit_with_restarts(FastICA(10, random_state=0), X, n_init=5)
    assert result.seeds == [0, 1, 2, 3, 4]
    assert result.all_stability.shape == (5, 10) and result.stability.shape == (10,)
    assert result.best_index == int(np.argmax(result.all_stability.mean(axis=1)))
    assert result.best is result.estimators[result.best_index]
    corr, index = best_match_abs_corr(maps, result.best.spatial_maps_)
    assert corr.min() >= 0.95
    planted_mask = np.zeros(10, dtype=bool)
    planted_mask[index] = True
    assert result.stability[planted_mask].min() >= 0.99
    assert result.stability[~planted_mask].mean() <= 0.9
    # on pure Gaussian noise, no component is reproducible
    noise = np.random.default_rng(11).standard_normal((2000, 1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        on_noise = fit_with_restarts(FastICA(5, random_state=0), noise, n_init=4)
    assert on_noise.stability.max() < 0.6


def test_single_restart_has_nan_stability(planted):
    X, _ = planted
    result = fit_with_restarts(FastICA(6), X[:500], n_init=1, seeds=[42])
    assert result.seeds == [42] and result.best.random_state == 42
    assert np.isnan(result.stability).all()


# ---------------------------------------------------------------------------------------------------------------
# group and individual fits
# ---------------------------------------------------------------------------------------------------------------


def test_group_and_individual_decompositions(planted):
    X, maps = planted
    texts = [X[:1500], X[1500:]]
    estimator = FastICA(6, random_state=0)
    group = group_decomposition(estimator, texts)
    assert group is not estimator and not hasattr(estimator, "components_")
    assert_close_to_scale(group.components_, FastICA(6, random_state=0).fit(X).components_, 1e-5)
    individual = individual_decompositions(estimator, texts)
    assert len(individual) == 2
    for fitted in individual:
        assert_recovers(maps, fitted.spatial_maps_)


def test_individual_too_short_text_raises_or_skips():
    X, _ = planted_temporal(seed=12, n_tokens=400, n_neurons=80, n_planted=3, support=10)
    texts = [X[:200], X[200:205], X[205:]]
    with pytest.raises(ValueError, match=r"text 1 has 5 tokens.*n_components=6 needs at least 7 tokens"):
        individual_decompositions(FastICA(6, random_state=0), texts)
    with pytest.warns(UserWarning, match=r"skipping: text 1 has 5 tokens"):
        fitted = individual_decompositions(FastICA(6, random_state=0), texts, on_too_short="skip")
    assert fitted[1] is None and fitted[0] is not None and fitted[2] is not None
    with pytest.raises(ValueError, match=r"valid choices: 'raise', 'skip'"):
        individual_decompositions(FastICA(6), texts, on_too_short="drop")


# ---------------------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cls",
    [
        ("fastica", FastICA),
        ("fastica_sklearn", FastICA),
        ("canica", CanICA),
        ("dictlearning", DictionaryLearningDecomposition),
    ],
)
def test_configs_instantiate_after_popping_level_and_restarts(name, cls):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    level = cfg.pop("level")
    restarts = cfg.pop("restarts")
    assert level in ("group", "individual") and restarts.n_init >= 1
    estimator = instantiate(cfg)
    assert type(estimator) is cls and estimator.n_components == 10 and estimator.random_state == 0
    if name == "fastica_sklearn":
        assert estimator.backend == "sklearn"


def test_standardize_finds_networks_that_a_high_variance_neuron_hides():
    """Variance normalisation: one loud neuron (std 50) dominates unstandardised ICA's first components; with
    standardize=True the planted low-variance networks are recovered and the maps are in std units."""
    from fnet.decompose import FastICA

    rng = np.random.default_rng(0)
    n_tokens, n_neurons = 4000, 60
    sources = rng.laplace(size=(n_tokens, 2)) * (rng.random((n_tokens, 2)) < 0.2)  # [tokens, 2] sparse
    maps = np.zeros((2, n_neurons))
    maps[0, 0:6] = 1.0
    maps[1, 10:16] = 1.0
    acts = sources @ maps + 0.3 * rng.normal(size=(n_tokens, n_neurons))  # [tokens, neurons]
    acts[:, 59] = 50.0 * rng.laplace(size=n_tokens)  # a loud neuron, heavy-tailed on its own
    plain = FastICA(n_components=2, random_state=0, max_iter=500).fit(acts)
    normed = FastICA(n_components=2, random_state=0, max_iter=500, standardize=True).fit(acts)

    def best_corr(est):  # [planted network] best |corr| with any estimated map
        corr = np.corrcoef(np.vstack([maps, est.spatial_maps_]))[:2, 2:]
        return np.abs(corr).max(axis=1)

    assert best_corr(normed).min() > 0.9  # measured 0.94 and 0.96
    assert best_corr(plain).min() < 0.5  # the loud neuron takes a component (measured 0.48 and 0.13)
    np.testing.assert_allclose(normed.scale_, acts.std(axis=0), rtol=1e-6)
    # sources still follow from raw data: transform = (X - mean_) @ components_.T
    np.testing.assert_allclose(normed.transform(acts), normed.fit_transform(acts), atol=1e-6)
    with pytest.raises(ValueError, match="backend='torch' only"):
        FastICA(n_components=2, standardize=True, backend="sklearn").fit(acts)
