"""Study presets (fnet.study.preset): read with OmegaConf over the StudyPreset schema; a bad key or value fails
before any work with the entry points' wording (the key, the bad value, the valid keys or choices)."""

import dataclasses
from pathlib import Path

import pytest

from fnet.pipelines.config import ConfigError
from fnet.study.cli import main
from fnet.study.compose import _section, _settings
from fnet.study.preset import PRESET_KEYS, StudyPreset, load_preset

REPO = Path(__file__).resolve().parents[1]


def test_preset_keys_come_from_the_schema_with_their_defaults():
    assert list(PRESET_KEYS) == [f.name for f in dataclasses.fields(StudyPreset)]
    assert PRESET_KEYS == {
        "name": None,
        "model": None,
        "path": "finetune",
        "tasks": [],
        "zeroshot_tasks": [],
        "lesion_each": [],
        "n_networks": 10,
        "preserve_K": [],
        "seeds": 5,
        "controls": ["count", "magnitude"],
        "massive": {"top_k": 4, "n_units": 4},
        "n_bins": 10,
        "normalised": None,
        "stimuli": "genre",
        "train": [],
        "analyze": [],
        "evaluate": [],
        "task_overrides": {},
        "order": "task",
        # v2 keys: all empty by default, so a v1 preset plans and reports (Settings) exactly as before
        "training_runs": None,
        "runs_per_task": {},
        "core_seeds": None,
        "streams": None,
        "tail_bins": [],
        "ablations": [],
        "preserve_alpha": [],
        "as_published": None,
        "correction": None,
        "margin": None,
        "train_minutes": {},
        "curve_tasks": [],
        "detail_runs": None,
        "ablation_controls": [],
        "normalised_seeds": None,
    }


def test_the_committed_reports_settings_are_the_preset():
    """results/paper_smollm2 was made with conf/study/smollm2.yaml: its Settings read back give the same dict."""
    folder = REPO / "results" / "paper_smollm2"
    settings = _settings(_section((folder / "report.md").read_text(), "Settings"), folder)
    preset = load_preset("smollm2")
    assert preset == settings and list(preset) == list(PRESET_KEYS)
    assert isinstance(preset["massive"], dict) and isinstance(preset["seeds"], int)


def test_a_bad_key_in_a_preset_file_names_the_key_and_the_valid_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: tiny_gpt2\ntasks: [sst2]\nseeds: 2\nmasive: {top_k: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_preset(str(path))
    text = str(info.value)
    assert f"invalid study preset {path}" in text
    assert (
        "unknown key masive (did you mean massive?); valid keys of the preset: ablation_controls, ablations, " in text
    )
    path.write_text("model: tiny_gpt2\ntasks: [sst2]\nmassive: {top_k: 1, n_unit: 1}\n")
    with pytest.raises(
        ConfigError,
        match="unknown key massive.n_unit \\(did you mean massive.n_units\\?\\); valid keys of massive: n_units, top_k",
    ):
        load_preset(str(path))
    path.write_text("tasks: [sst2]\n")
    with pytest.raises(ConfigError, match="missing key model \\(a required key of the preset\\)"):
        load_preset(str(path))
    path.write_text("model: tiny_gpt2\ntasks: [sst2]\n")
    assert load_preset(str(path))["name"] == "mine"  # the rest from the schema's defaults
    assert load_preset(str(path))["massive"] == {"top_k": 4, "n_units": 4}


def test_a_bad_override_names_the_key_and_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        load_preset("tiny", ["sedes=3", "n_network=4"])
    text = str(info.value)
    assert "(2 problems)" in text
    assert "unknown key sedes (did you mean seeds?); valid keys of the preset: " in text
    assert "unknown key n_network (did you mean n_networks?)" in text
    assert (
        ", seeds, stimuli, streams, tail_bins, task_overrides, tasks, train, train_minutes, training_runs, "
        "zeroshot_tasks" in text
    )
    with pytest.raises(ConfigError, match="override 'seeds' is not key=value; valid keys: name, model, "):
        load_preset("tiny", ["seeds"])
    with pytest.raises(ConfigError, match="seeds: Value 'abc' of type 'str' could not be converted to Integer"):
        load_preset("tiny", ["seeds=abc"])
    with pytest.raises(ConfigError, match="massive: Merge error"):
        load_preset("tiny", ["massive=5"])


def test_a_bad_choice_names_the_value_and_the_choices():
    with pytest.raises(ConfigError, match="order must be one of \\['task', 'table'\\], got 'tasks'"):
        load_preset("tiny", ["order=tasks"])
    with pytest.raises(
        ConfigError, match="controls must be one of \\['count', 'magnitude', 'massive_included'\\], got 'rand'"
    ):
        load_preset("tiny", ["controls=[count, rand]"])
    with pytest.raises(ConfigError, match="path must be one of \\['finetune', 'zeroshot'\\], got 'fewshot'"):
        load_preset("tiny", ["path=fewshot"])
    with pytest.raises(ConfigError, match="massive.top_k must be > 0, got 0"):
        load_preset("tiny", ["massive.top_k=0"])


def test_an_unknown_task_is_named_with_the_valid_tasks():
    with pytest.raises(ConfigError, match="tasks must be one of \\['ag_news', .*'sst2', 'wikitext2'\\], got 'sst3'"):
        load_preset("tiny", ["tasks=[sst3]", "lesion_each=[]"])
    with pytest.raises(ConfigError, match="zeroshot_tasks must be one of .*, got 'agnews'"):
        load_preset("smollm2", ["zeroshot_tasks=[agnews]"])


def test_dotlist_overrides_lists_dotted_keys_and_replaced_mappings():
    p = load_preset(
        "tiny",
        [
            "tasks=[sst2, cola]",
            "massive.top_k=1",
            "normalised=ica.standardize=true",
            "preserve_K=[3, 5]",
            "seeds=3",
            "train=[a=1, b=2]",
        ],
    )
    assert p["tasks"] == ["sst2", "cola"] and p["preserve_K"] == [3, 5] and p["seeds"] == 3
    assert p["massive"] == {"top_k": 1, "n_units": 1}  # the dotted key changes one key, the file's other stays
    assert p["normalised"] == "ica.standardize=true" and p["train"] == ["a=1", "b=2"]
    # README's command of results/paper_smollm2_replication: a mapping replaces the preset's (is not merged into it)
    smol = load_preset(
        "smollm2", ["tasks=[sst2,ag_news]", "zeroshot_tasks=[]", "lesion_each=[]", "preserve_K=[]", "task_overrides={}"]
    )
    assert smol["task_overrides"] == {} and smol["tasks"] == ["sst2", "ag_news"]
    smol = load_preset("smollm2", ["task_overrides.sst2.train=[x=1]"])
    assert smol["task_overrides"]["sst2"] == {"train": ["x=1"]} and "squad" in smol["task_overrides"]


def test_task_overrides_and_lesion_each_only_name_tasks_of_the_preset():
    with pytest.raises(ConfigError, match="task_overrides \\['qqp'\\] are not in tasks \\['sst2'\\] or zeroshot_tasks"):
        load_preset("tiny", ["task_overrides={qqp: {train: [a=1]}}"])
    with pytest.raises(ConfigError, match="task_overrides \\['squad'\\] are not in tasks \\['sst2'\\]"):
        load_preset("smollm2", ["tasks=[sst2]"])  # the preset's own squad overrides need squad
    with pytest.raises(ConfigError, match="lesion_each \\['cola'\\] are not in tasks \\['sst2'\\]"):
        load_preset("tiny", ["lesion_each=[cola]"])
    with pytest.raises(ConfigError, match="tasks is empty"):
        load_preset("tiny", ["tasks=[]", "lesion_each=[]"])
    with pytest.raises(
        ConfigError, match="unknown key task_overrides.sst2.evaluat \\(did you mean task_overrides.sst2.evaluate\\?\\)"
    ):
        load_preset("tiny", ["task_overrides={sst2: {evaluat: [a=1]}}"])


def test_the_command_line_fails_on_a_bad_preset_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="unknown key sedes"):
        main(["tiny", "sedes=3", "--root", str(tmp_path / "study")])
    assert not (tmp_path / "study").exists()
