"""Config schemas: unknown keys (``+`` additions included), types and ranges fail with the key named; every
task composes with the values it had before the shared base; the primary configs compose and validate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from fnet.pipelines.config import ConfigError, validate_config

REPO = Path(__file__).resolve().parents[1]
TASKS = sorted(p.stem for p in (REPO / "conf" / "task").glob("*.yaml") if not p.stem.startswith("_"))


def composed(name, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def problems(name, *overrides) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(composed(name, *overrides), name)
    return str(info.value)


@pytest.mark.parametrize(
    "name, extra",
    [
        ("analyze", []),
        ("analyze", ["analysis=pos"]),
        ("analyze", ["debug=default"]),
        ("analyze", ["networks=paper"]),
        ("evaluate", []),
        ("evaluate", ["debug=evaluate"]),
        ("evaluate", ["mask=lesion"]),
        ("train", []),
        ("train", ["debug=train"]),
        ("train", ["task=squad"]),
    ],
)
def test_default_configs_compose_and_validate(name, extra):
    cfg = composed(name, *extra)
    assert validate_config(cfg, name) is cfg


def test_networks_paper_has_the_published_choices():
    cfg = composed("evaluate", "networks=paper")
    assert (cfg.networks.alpha, cfg.networks.sign, cfg.networks.rule) == (3.6, "positive", "z")
    assert composed("analyze").networks == composed("evaluate").networks  # one group for both entry points


@pytest.mark.parametrize("name", ["analyze", "evaluate"])
def test_appended_typo_is_an_error_naming_the_key_and_the_valid_keys(name):
    text = problems(name, "+record.max_lenght=16")
    assert "unknown key record.max_lenght (did you mean record.max_length?)" in text
    assert "valid keys of record: batch_size, max_length, signal" in text
    assert "unknown key networks.alfa" in problems(name, "+networks.alfa=3")


def test_typos_in_target_groups_are_checked_against_the_signature():
    text = problems("evaluate", "+trainer.enable_progres_bar=false")
    assert "unknown key trainer.enable_progres_bar (did you mean trainer.enable_progress_bar?)" in text
    assert "lightning.pytorch.Trainer" in text
    assert "unknown key ica.n_componets" in problems("analyze", "+ica.n_componets=3")
    assert "unknown key optimizer.lrr" in problems("train", "+optimizer.lrr=0.1")
    validate_config(composed("evaluate", "+trainer.enable_progress_bar=false"), "evaluate")  # a real parameter


def test_out_of_range_values_name_the_key_and_the_range():
    assert "networks.alpha must be > 0, got -1.0" in problems("analyze", "networks.alpha=-1")
    assert "networks.percentile must be > 0 and < 100, got 150.0" in problems("evaluate", "networks.percentile=150")
    text = problems("analyze", "networks.sign=up", "networks.rule=t", "record.signal=resid")
    assert "networks.sign must be one of ['flip', 'positive', 'abs'], got 'up'" in text
    assert "networks.rule must be one of ['z', 'percentile'], got 't'" in text
    assert "record.signal must be one of ['mlp_out', 'mlp_act'], got 'resid'" in text
    assert "3 problems" in text
    assert "task.limit must be > 0, got 0" in problems("evaluate", "task.limit=0")
    assert "mask.mode must be one of" in problems("evaluate", "mask.mode=lesoin")
    assert "analysis.attribution.method must be one of" in problems(
        "analyze", "analysis=pos", "analysis.attribution.method=grad"
    )


def test_type_errors_name_the_key():
    assert "networks.alpha: Value 'abc' of type 'str' could not be converted to Float" in problems(
        "analyze", "networks.alpha=abc"
    )
    assert "task.limit: Value 'abc' of type 'str' could not be converted to Integer" in problems(
        "evaluate", "task.limit=abc"
    )


def test_missing_key_is_an_error():
    cfg = composed("analyze")
    with open_dict(cfg):
        del cfg.networks["sign"]
    with pytest.raises(ConfigError, match="missing key networks.sign"):
        validate_config(cfg, "analyze")


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes_with_the_values_it_had(task):
    """tests/data/task_configs.json: each task's composed config before the tasks shared conf/task/_base.yaml."""
    before = json.loads((REPO / "tests" / "data" / "task_configs.json").read_text())
    for name in ("evaluate", "train"):
        now = json.loads(json.dumps(OmegaConf.to_container(composed(name, f"task={task}").task)))
        assert now == before[task]
    from fnet.scoring.tasks import (
        load_task_config,
    )  # the same task read by name outside Hydra (fnet.scoring.tasks.get_task)

    assert json.loads(json.dumps(load_task_config(task))) == before[task]
    assert len(TASKS) == len(before) == 9


def test_cli_exits_nonzero_before_any_work(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", FNET_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "analyze.py", "debug=default", "+record.max_lenght=16", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "unknown key record.max_lenght" in proc.stderr + proc.stdout
    assert not (tmp_path / "cache").exists()  # nothing was recorded
