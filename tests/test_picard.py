"""fnet.decompose.Picard (issue 28, item 1) on planted sources: recovery, convergence, agreement with FastICA's
networks, transforms, errors, restarts with stability, and its Hydra config (conf/ica/picard.yaml)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.optimize import linear_sum_assignment
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from fnet.decompose import FastICA, Picard, abs_corr_matrix, best_match_abs_corr, fit_with_restarts
from fnet.networks import NetworkSet, iou

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(previous)


def planted(seed: int = 0, n_tokens: int = 4000, n_neurons: int = 600, noise: float = 0.05):
    """Three non-Gaussian sources -- super-Gaussian (Laplace), skewed (centred exponential) and sub-Gaussian
    (uniform) -- mixed by sparse maps: ``X  # [tokens, neurons] = sources  # [tokens, 3] @ maps  # [3, neurons]``
    plus noise and a per-neuron offset. Returns ``(X, sources, maps)``."""
    rng = np.random.default_rng(seed)
    sources = np.c_[
        rng.laplace(size=n_tokens),
        rng.exponential(size=n_tokens) - 1,
        rng.uniform(-np.sqrt(3), np.sqrt(3), size=n_tokens),
    ]
    maps = np.zeros((3, n_neurons))
    for k in range(3):
        support = rng.choice(n_neurons, 40, replace=False)
        maps[k, support] = rng.uniform(1, 2, 40) * rng.choice([-1, 1], 40)
    X = sources @ maps + noise * rng.standard_normal((n_tokens, n_neurons)) + rng.normal(size=n_neurons)
    return X, sources, maps


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def fitted(data):
    X, _, _ = data
    return Picard(3, random_state=0).fit(X)


def test_picard_recovers_planted_sources_and_converges(data, fitted):
    X, sources, maps = data
    assert fitted.converged_ and fitted.n_iter_ < fitted.max_iter
    assert fitted.spatial_maps_.shape == (3, 600) and fitted.components_.shape == (3, 600)
    assert best_match_abs_corr(maps, fitted.spatial_maps_)[0].min() > 0.95
    estimated = fitted.transform(X)  # [tokens, 3]
    assert np.abs(np.corrcoef(sources.T, estimated.T)[:3, 3:]).max(axis=1).min() > 0.95
    np.testing.assert_allclose(estimated.std(axis=0), 1.0, atol=1e-8)  # unit-variance sources, as FastICA's
    # the same whitening as FastICA's: same mean, same whitening matrix
    ica = FastICA(3, random_state=0).fit(X)
    np.testing.assert_array_equal(fitted.mean_, ica.mean_)
    np.testing.assert_array_equal(fitted.whitening_, ica.whitening_)
    # Picard without the orthogonal constraint finds them too when extended (extended Infomax: the uniform
    # source is sub-Gaussian, which plain Infomax, extended=False, cannot separate)
    infomax = Picard(3, random_state=0, ortho=False, extended=True).fit(X)
    assert infomax.converged_ and best_match_abs_corr(maps, infomax.spatial_maps_)[0].min() > 0.95


def test_picard_matches_fastica_networks(data, fitted):
    X, _, _ = data
    ica = FastICA(3, random_state=0).fit(X)
    similarity = abs_corr_matrix(ica.spatial_maps_, fitted.spatial_maps_)
    rows, cols = linear_sum_assignment(-similarity)
    assert similarity[rows, cols].min() > 0.99
    nets = [
        NetworkSet.from_maps(torch.from_numpy(m.astype(np.float32)), 2, 300, alpha=1.96)
        for m in (ica.spatial_maps_, fitted.spatial_maps_)
    ]
    overlap = iou(nets[0], nets[1]).numpy()  # [3, 3]
    rows, cols = linear_sum_assignment(-overlap)
    assert overlap[rows, cols].min() > 0.9


def test_transform_inverse_transform_round_trip():
    rng = np.random.default_rng(5)
    X = rng.laplace(size=(300, 4)) @ rng.standard_normal((4, 50)) + 3.0  # exactly rank 4 after centring
    est = Picard(4, random_state=0).fit(X)
    np.testing.assert_allclose(est.inverse_transform(est.transform(X)), X, atol=1e-8)
    np.testing.assert_allclose(clone(est).fit_transform(X), est.transform(X), atol=1e-9)
    np.testing.assert_allclose(est.transform([X[:100], X[100:]]), est.transform(X), atol=1e-10)
    again = Picard(4, random_state=0).fit(X)
    np.testing.assert_array_equal(again.components_, est.components_)


def test_non_convergence_is_reported_with_its_name(data):
    X, _, _ = data
    with pytest.warns(
        ConvergenceWarning,
        match=r"^Picard did not converge: stopped after 1 iterations with final "
        r"gradient norm \S+ > tol=1e-07",
    ):
        est = Picard(3, random_state=0, max_iter=1).fit(X)
    assert est.converged_ is False and est.n_iter_ == 1


def test_bad_parameters_name_the_key_and_the_choices(data):
    X = data[0][:100]
    with pytest.raises(ValueError, match=r"unknown fun='tanh'; valid choices: 'logcosh', 'exp', 'cube'"):
        Picard(3, fun="tanh").fit(X)
    with pytest.raises(ValueError, match=r"unknown algorithm='deflation'; valid choices: 'parallel'"):
        Picard(3, algorithm="deflation").fit(X)
    with pytest.raises(ValueError, match=r"ortho must be true or false; got 'yes'"):
        Picard(3, ortho="yes").fit(X)
    with pytest.raises(ValueError, match=r"m must be an integer >= 1; got 0"):
        Picard(3, m=0).fit(X)
    with pytest.raises(ValueError, match=r"unknown backend='sklearn'; valid choices: 'torch'"):
        Picard(3, backend="sklearn").fit(X)


def test_restarts_give_stability_and_log_unstable_components(data, caplog):
    X, _, maps = data
    result = fit_with_restarts(Picard(3, random_state=0), X, n_init=3)
    assert result.seeds == [0, 1, 2] and result.stability.min() > 0.99
    assert best_match_abs_corr(maps, result.best.spatial_maps_)[0].min() > 0.95
    noise = np.random.default_rng(11).standard_normal((1500, 300))  # no component is reproducible
    with caplog.at_level(logging.WARNING, logger="fnet.decompose.restarts"):
        on_noise = fit_with_restarts(Picard(4, random_state=0, max_iter=200), noise, n_init=3)
    assert on_noise.stability.min() < 0.6
    warned = [r.getMessage() for r in caplog.records if "below stability 0.6" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("Picard (K=4, 3 restarts)")


def test_picard_config_extends_fastica_yaml():
    from fnet.pipelines._common import make_estimator
    from fnet.pipelines.config.validate import ConfigError, validate_config

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=["ica=picard"])
        fastica = compose("analyze", overrides=["ica=fastica"])
    validate_config(cfg, "analyze")
    estimator, n_init = make_estimator(cfg.ica, 7)
    assert type(estimator) is Picard and estimator.random_state == 7 and n_init == fastica.ica.restarts.n_init
    shared = ("n_components", "whiten", "whiten_solver", "n_oversamples", "n_power_iter", "sketch_dtype", "fun")
    assert all(cfg.ica[k] == fastica.ica[k] for k in shared)
    assert estimator.ortho is True and estimator.tol == 1e-7
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        typo = compose("analyze", overrides=["ica=picard", "+ica.orhto=false"])
    with pytest.raises(ConfigError, match=r"unknown key ica\.orhto \(did you mean ica\.ortho\?\)"):
        validate_config(typo, "analyze")


@pytest.mark.parametrize("algorithm", [Picard, FastICA])
def test_restarts_share_an_exact_whitening_bit_for_bit(data, monkeypatch, algorithm):
    """With the exact PCA the whitening does not depend on the seed: fit_with_restarts computes it once (K=512 on
    SST-2's 3,568 tokens: 3 eigh whitenings -> 1) and every restart equals its own separate fit exactly; the
    randomized sketch is drawn from the seed, so there every restart still whitens on its own."""
    import fnet.decompose.temporal as temporal

    X = data[0][:600]
    calls = []
    original = temporal.TemporalICA._principal_axes

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("rng"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(temporal.TemporalICA, "_principal_axes", counted)
    exact = algorithm(3, whiten_solver="eigh", max_iter=50, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 50 iterations: converged or not, the same both ways
        result = fit_with_restarts(exact, X, seeds=[0, 1, 2])
    assert len(calls) == 1
    calls.clear()
    for seed, restart in zip([0, 1, 2], result.estimators):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            alone = clone(exact).set_params(random_state=seed).fit(X)
        np.testing.assert_array_equal(restart.components_, alone.components_)
        np.testing.assert_array_equal(restart.mixing_, alone.mixing_)
    assert len(calls) == 3
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit_with_restarts(algorithm(3, whiten_solver="randomized", max_iter=50, random_state=0), X, seeds=[0, 1])
    assert len(calls) == 2
