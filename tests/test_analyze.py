"""End-to-end analysis on tiny models: report, network files, figures, determinism, failures in sweeps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from fnet.networks import NetworkSet
from fnet.pipelines._common import networks_for_config
from fnet.pipelines.analyze import run

REPO_ROOT = Path(__file__).resolve().parents[1]

SMALL = ["model=tiny_gpt2", "data.n_template=2", "data.n_individual=2", "ica.n_components=3", "record.max_length=64"]


def make_cfg(output_dir, overrides=()):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(
            "analyze",
            overrides=SMALL
            + [f"paths.output_dir={output_dir}", f"paths.root_dir={REPO_ROOT}", "logger=csv", *overrides],
        )


def test_analysis_writes_report_networks_and_figures(tmp_path, fnet_cache):
    cfg = make_cfg(tmp_path / "run")
    summary = run(cfg)
    out = tmp_path / "run"
    report = (out / "report.md").read_text()
    for needle in ("Provenance", "tiny:gpt2", "Template matching", "## news", "## code", "converged"):
        assert needle in report
    nets = NetworkSet.load(out / "networks" / "news_group.safetensors")
    assert nets.masks.shape == (3, 3, 32)  # K, layers, d_model
    assert nets.provenance["model"] == "tiny:gpt2" and nets.provenance["signal"] == "mlp_out"
    assert nets.provenance["K"] == 3 and nets.provenance["level"] == "group"
    assert len(list((out / "networks" / "news_individual").glob("*.safetensors"))) == 2
    assert (out / "networks" / "all_group.safetensors").exists()
    for png in ("news_group_networks", "news_counts_per_layer", "news_template_individual_iou"):
        assert (out / "figures" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    assert set(summary["datasets"]) == {"news", "encyclopedia", "math", "code"}
    metrics = (out / "csv" / "metrics.csv").read_text()
    assert "news/mean_network_size" in metrics


def test_unconverged_decompositions_are_reported_once_by_name(tmp_path, fnet_cache, caplog, recwarn):
    """No wall of ConvergenceWarnings (one per fit, restarts included): one log line per group decomposition and
    one per dataset's individual decompositions, naming them, and the same names in the report."""
    import logging

    from sklearn.exceptions import ConvergenceWarning

    only_news = [f"~data.datasets.{d}" for d in ("encyclopedia", "math", "code")]
    with caplog.at_level(logging.WARNING, logger="fnet.pipelines.analyze"):
        run(make_cfg(tmp_path / "run", ["ica=fastica", "ica.max_iter=1", "ica.restarts.n_init=2", *only_news]))
    assert not [w for w in recwarn if issubclass(w.category, ConvergenceWarning)]
    lines = [r.getMessage() for r in caplog.records if "did not converge" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("group decomposition 'news' did not converge: 2 of 2 restarts")
    assert lines[1].startswith("2 of 2 individual decompositions of 'news' did not converge: news-")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "group decomposition(s) news, all did not converge" in report  # `all` is news' fit here
    assert "Individual decompositions: 2 texts, 0 converged. Not converged: news-" in report


def test_same_seed_gives_identical_networks_other_seed_differs(tmp_path, fnet_cache):
    masks = []
    for name, seed in (("a", 0), ("b", 0), ("c", 10)):  # restarts use seed..seed+2: disjoint for 0 and 10
        run(
            make_cfg(
                tmp_path / name,
                [f"seed={seed}", "data=builtin", "individual=false", "data.datasets={news:{source:builtin:news}}"],
            )
        )
        masks.append(NetworkSet.load(tmp_path / name / "networks" / "news_group.safetensors"))
    assert torch.equal(masks[0].masks, masks[1].masks) and torch.equal(masks[0].maps, masks[1].maps)
    assert not torch.equal(masks[0].maps, masks[2].maps)  # other ICA seeds (the text sample has data.seed)


def test_one_dataset_fits_its_group_once_and_saves_it_as_all(tmp_path, fnet_cache, monkeypatch):
    """With one stimulus dataset, ``all`` stacks the same texts as that dataset's group: the fit is reused (one fit,
    not two), saved with the provenance of the ``all`` decomposition."""
    import fnet.pipelines.analyze as analyze

    fits = []
    real = analyze.group_networks
    monkeypatch.setattr(analyze, "group_networks", lambda *a, **k: fits.append(k["name"]) or real(*a, **k))
    out = tmp_path / "one"
    only = lambda *keep: [f"~data.datasets.{d}" for d in ("news", "encyclopedia", "math", "code") if d not in keep]
    run(make_cfg(out, ["data=builtin", "individual=false", *only("news")]))
    assert fits == ["news"]
    news = NetworkSet.load(out / "networks" / "news_group.safetensors")
    everything = NetworkSet.load(out / "networks" / "all_group.safetensors")
    assert torch.equal(news.masks, everything.masks) and torch.equal(news.maps, everything.maps)
    assert (news.provenance["data"], everything.provenance["data"]) == ("news", "all")
    assert set(everything.provenance["data_detail"]) == {"news"}
    assert everything.provenance["n_tokens"] == news.provenance["n_tokens"]

    fits.clear()  # two datasets: their groups and a third fit over both
    run(make_cfg(tmp_path / "two", ["data=builtin", "individual=false", *only("news", "code")]))
    assert fits == ["news", "code", "all"]


def test_network_map_figures_draw_map_panels_and_one_dataset_draws_once(tmp_path, fnet_cache, monkeypatch):
    """At K=512 a panel per network took 6 of the job's 25 minutes, twice (the dataset's figure and ``all``'s):
    the figures draw the first ``map_panels`` networks, and ``all`` of one dataset is that dataset's figure,
    copied."""
    import fnet.pipelines.analyze as analyze

    drawn = []
    real = analyze.plot_network_maps
    monkeypatch.setattr(
        analyze, "plot_network_maps", lambda n, p, m=None, **k: drawn.append((p.name, m)) or real(n, p, m, **k)
    )
    only = [f"~data.datasets.{d}" for d in ("encyclopedia", "math", "code")]
    out = tmp_path / "one"
    run(make_cfg(out, ["data=builtin", "individual=false", "map_panels=2", *only]))
    assert drawn == [("news_group_networks.png", 2)]
    figures = out / "figures"
    assert (figures / "all_group_networks.png").read_bytes() == (figures / "news_group_networks.png").read_bytes()


def test_mlp_act_signal_has_d_mlp_width(tmp_path, fnet_cache):
    cfg = make_cfg(
        tmp_path / "act", ["record.signal=mlp_act", "individual=false", "data.datasets={math:{source:builtin:math}}"]
    )
    run(cfg)
    nets = NetworkSet.load(tmp_path / "act" / "networks" / "math_group.safetensors")
    assert nets.masks.shape == (3, 3, 128) and nets.provenance["signal"] == "mlp_act"


def test_networks_for_config_is_cached(tmp_path, fnet_cache):
    from hydra.utils import instantiate

    cfg = make_cfg(tmp_path / "x", ["data.datasets={news:{source:builtin:news}}"])
    lm = instantiate(cfg.model)
    first = networks_for_config(cfg, lm)
    cached = list((fnet_cache / "networks").glob("*.safetensors"))
    assert len(cached) == 1
    again = networks_for_config(cfg, lm)
    assert torch.equal(first.masks, again.masks)
    with pytest.raises(ValueError, match="networks.source='nope'.*valid.*news.*all"):
        networks_for_config(cfg, lm, source="nope")


def test_too_many_components_is_a_clear_error(tmp_path, fnet_cache):
    cfg = make_cfg(
        tmp_path / "k", ["ica.n_components=5000", "individual=false", "data.datasets={news:{source:builtin:news}}"]
    )
    with pytest.raises(ValueError, match="5000"):
        run(cfg)


def test_multirun_continues_past_a_failed_job(tmp_path):
    env = dict(os.environ, FNET_CACHE=str(tmp_path / "cache"))
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "analyze.py",
            "-m",
            *SMALL,
            "individual=false",
            "data.datasets={news:{source:builtin:news}}",
            "ica.n_components=5000,2",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # the sweep runs every job, then exits non-zero and names the failed one (fnet.pipelines.hydra_utils.SweepFailures)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 job(s) of the sweep" in proc.stderr and "ica.n_components=5000" in proc.stderr
    failure = json.loads((sweep / "0" / "failure.json").read_text())
    assert "5000" in failure["error"] and "ica.n_components=5000" in failure["overrides"]
    assert (sweep / "1" / "report.md").exists() and not (sweep / "1" / "failure.json").exists()


def test_single_run_failure_exits_nonzero(tmp_path):
    env = dict(os.environ, FNET_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "analyze.py", *SMALL, "model.name=tiny:bert", f"hydra.run.dir={tmp_path / 'r'}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "unknown tiny family 'bert'" in (tmp_path / "r" / "failure.json").read_text()
