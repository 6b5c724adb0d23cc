"""Networks from a task's own prompts (the published evaluation's choice): the ``task:<name>`` stimulus source,
``data=task`` and ``experiment=paper_networks``."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fnet.pipelines.config import register_configs, validate_config
from fnet.recording import load_stimulus_sets
from fnet.scoring.splits import fine_tuning_splits

REPO = Path(__file__).resolve().parents[1]


def composed(name, *overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=["paths.output_dir=.", *overrides])


def test_task_source_gives_the_training_rows_in_the_prompt(shared_data):
    sets = load_stimulus_sets({"task": {"source": "task:sst2"}}, n_template=50, n_individual=0)
    texts = sets["task"].template
    parts, _ = fine_tuning_splits("sst2", seed=0)
    train = {f"sst2-{row['index']}": row for row in parts["train"]}
    test_ids = {f"sst2-{row['index']}" for row in parts["test"]}
    assert len(texts) == 50 and all(t.id in train for t in texts) and not test_ids & {t.id for t in texts}
    for t in texts:  # exactly the task's zero-shot prompt of that row
        assert t.text == f"Review: {train[t.id]['text_a']}\nSentiment:"
    with pytest.raises(ValueError, match="split='dev' is not valid"):
        load_stimulus_sets({"task": {"source": "task:sst2", "split": "dev"}}, n_template=5, n_individual=0)


def test_paper_networks_preset_composes_per_task():
    cfg = composed("evaluate", "experiment=paper_networks", "task=cola", "mask=lesion")
    validate_config(cfg, "evaluate")
    assert cfg.data.datasets.task.source == "task:cola"
    assert (cfg.networks.alpha, cfg.networks.sign) == (3.6, "positive")
    assert cfg.data.n_template == 200
    analyze = composed("analyze", "data=task")
    validate_config(analyze, "analyze")
    assert analyze.data.datasets.task.source == "task:sst2"
