"""Sweep aggregation on a fake sweep folder with known numbers."""

import csv
import json
import math

import pytest

from fnet.report.sweep import aggregate, condition_of, mean_ci


def result(
    task,
    score,
    mode="none",
    networks=None,
    seed=None,
    K=None,
    ci=(0.0, 1.0),
    above=True,
    baseline=None,
    n_masked=0,
    fraction=0.0,
    chance=0.5,
    metric="accuracy",
):
    mask = {
        "mode": mode,
        "networks": networks,
        "seed": seed,
        "n_masked": n_masked,
        "fraction": fraction,
        "fraction_requested": None,
        "exclude_reference": False,
    }
    if mode == "lesion":
        mask["network_ids"] = [networks]
    if mode == "preserve":
        mask["network_ids"] = list(range(K))
    return {
        "task": task,
        "metric": metric,
        "score": score,
        "ci": list(ci),
        "n": 200,
        "above_chance": above,
        "metrics": {metric: {"value": score, "ci_low": ci[0], "ci_high": ci[1], "chance": chance}},
        "mask": mask,
        "mask_mode": mode,
        "seed": seed,
        "K": K,
        "baseline": baseline,
        "provenance": {"model": "tiny:gpt2", "signal": "mlp_out", "fnet_version": "0.1.0"},
    }


@pytest.fixture()
def sweep(tmp_path):
    base = {"score": 0.72, "ci": [0.65, 0.78], "above_chance": True}
    jobs = [
        result("sst2", 0.72, ci=(0.65, 0.78)),
        result("sst2", 0.60, "lesion", networks=3, K=10, ci=(0.53, 0.67), baseline=base, n_masked=40, fraction=0.05),
        result("sst2", 0.70, "random", networks=3, seed=0, K=10, baseline=base, n_masked=40, fraction=0.05),
        result("sst2", 0.72, "random", networks=3, seed=1, K=10, baseline=base, n_masked=40, fraction=0.05),
        result("sst2", 0.74, "random", networks=3, seed=2, K=10, baseline=base, n_masked=40, fraction=0.05),
        result("sst2", 0.55, "preserve", K=10, baseline=base, n_masked=700, fraction=0.9, ci=(0.5, 0.6)),
        result("sst2", 0.66, "preserve", K=64, baseline=base, n_masked=400, fraction=0.5, ci=(0.6, 0.7)),
        result("cola", 0.01, "none", ci=(-0.05, 0.07), above=False, metric="mcc", chance=0.0),
        result(
            "cola",
            0.00,
            "lesion",
            networks=3,
            K=10,
            baseline={"score": 0.01, "ci": [-0.05, 0.07], "above_chance": False},
            metric="mcc",
        ),
    ]
    for i, job in enumerate(jobs):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / "result.json").write_text(json.dumps(job))
    failed = tmp_path / str(len(jobs))
    (failed / ".hydra").mkdir(parents=True)
    (failed / "failure.json").write_text(
        json.dumps(
            {"error": "TaskDataError: task 'qqp' needs the dataset hub", "traceback": "...", "overrides": ["task=qqp"]}
        )
    )
    return tmp_path


def test_mean_ci_t_interval():
    mean, lo, hi = mean_ci([0.70, 0.72, 0.74])
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert mean == pytest.approx(0.72) and lo == pytest.approx(0.72 - half, abs=1e-5)
    assert hi == pytest.approx(0.72 + half, abs=1e-5)
    assert math.isnan(mean_ci([0.5])[1])


def test_condition_labels():
    assert condition_of(result("sst2", 0.5))[0] == "none"
    assert condition_of(result("sst2", 0.5, "lesion", networks=3, K=10))[0] == "lesion network 3 (K=10)"
    assert condition_of(result("sst2", 0.5, "preserve", K=64))[0] == "preserve K=64"
    assert (
        condition_of(result("sst2", 0.5, "random", networks=3, seed=1, K=10))[0] == "random matched to network 3 (K=10)"
    )


def test_aggregate_fake_sweep(sweep):
    out = aggregate(sweep)
    rows = {(r["task"], r["condition"]): r for r in out["summary"]}
    assert len(out["results"]) == 9 and len(out["failures"]) == 1
    none = rows[("sst2", "none")]
    assert none["mean"] == 0.72 and (none["ci_low"], none["ci_high"]) == (0.65, 0.78)
    random = rows[("sst2", "random matched to network 3 (K=10)")]
    assert random["n_seeds"] == 3 and random["seeds"] == [0, 1, 2]
    assert random["mean"] == pytest.approx(0.72)
    assert random["ci_low"] == pytest.approx(0.72 - 4.302653 * 0.02 / math.sqrt(3), abs=1e-5)
    assert random["n_masked"] == 40 and random["fraction_masked"] == pytest.approx(0.05)
    lesion = rows[("sst2", "lesion network 3 (K=10)")]
    assert lesion["delta"] == pytest.approx(0.60 - 0.72) and lesion["unmasked_above_chance"] is True
    assert rows[("cola", "lesion network 3 (K=10)")]["unmasked_above_chance"] is False
    assert rows[("cola", "none")]["unmasked_above_chance"] is False
    # order: task, then none < lesion < random < preserve (by K)
    sst2 = [r["condition"] for r in out["summary"] if r["task"] == "sst2"]
    assert sst2 == [
        "none",
        "lesion network 3 (K=10)",
        "random matched to network 3 (K=10)",
        "preserve K=10",
        "preserve K=64",
    ]
    text = (sweep / "summary.md").read_text()
    assert "NO (at chance)" in text and "task=qqp" in text and "preservation_curve.png" in text
    with open(sweep / "summary.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 7 and float(table[0]["mean"]) == pytest.approx(0.01)  # cola sorts first
    assert (sweep / "preservation_curve.png").stat().st_size > 1000
    assert (sweep / "failures.csv").exists()


def test_jobs_with_different_networks_are_not_pooled(tmp_path):
    for i, (seed, netset, score) in enumerate(
        [(0, "aaaaaa111111", 0.7), (1, "aaaaaa111111", 0.8), (2, "bbbbbb222222", 0.5)]
    ):
        job = result("sst2", score, "random", networks=1, seed=seed, K=10)
        job["mask"]["netset"] = netset
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "result.json").write_text(json.dumps(job))
    rows = {r["condition"]: r for r in aggregate(tmp_path)["summary"]}
    assert rows["random matched to network 1 (K=10) [networks aaaaaa]"]["n_seeds"] == 2
    assert rows["random matched to network 1 (K=10) [networks bbbbbb]"]["mean"] == 0.5
    assert rows["random matched to network 1 (K=10) [networks aaaaaa]"]["ci_high"] == 1.0  # clipped t interval


def test_cli(sweep, tmp_path, capsys):
    from fnet.report.sweep import main

    out = tmp_path / "tables"
    assert main([str(sweep), "--out", str(out)]) == 0
    assert (out / "summary.md").exists() and "Sweep summary" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        aggregate(tmp_path / "missing")
