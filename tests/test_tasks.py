"""Task configs and rows: GLUE label conventions on known rows of the offline files, splits, bad input."""

import re

import pytest

from fnet.scoring.rows import load_task_rows, resolve_source
from fnet.scoring.tasks import TaskDataError, TaskSpec, available_tasks, get_task, load_task_config

OFFLINE = ["sst2", "cola", "mrpc", "mnli", "qnli", "ag_news", "squad", "wikitext2"]


def test_every_task_config_validates():
    assert set(OFFLINE + ["qqp"]) <= set(available_tasks())
    for name in available_tasks():
        spec = get_task(name)
        assert spec.name == name
        if spec.type == "multiple_choice":
            assert len(spec.choices) == len(spec.target["names"])


def test_unknown_task_lists_valid_tasks():
    with pytest.raises(ValueError, match="unknown task 'nope'.*sst2"):
        get_task("nope")


def test_bad_config_is_rejected():
    cfg = load_task_config("sst2")
    with pytest.raises(ValueError, match="unknown fields"):
        TaskSpec.from_config(dict(cfg, prompt=dict(cfg["prompt"], template="{sentence}")))
    with pytest.raises(ValueError, match="unknown metric"):
        TaskSpec.from_config(dict(cfg, metric=["bleu"]))
    with pytest.raises(ValueError, match="unknown keys"):
        TaskSpec.from_config(dict(cfg, shots=3))
    with pytest.raises(ValueError, match="calibrate"):
        TaskSpec.from_config(dict(cfg, calibrate=True, scoring="generate"))


@pytest.mark.parametrize(
    "key, value, valid",
    [
        ("limit", "abc", "a whole number >= 1 or null"),
        ("limit", 0, "a whole number >= 1 or null"),
        ("limit", 2.5, "a whole number >= 1"),
        ("limit", True, "a whole number >= 1"),
        ("num_fewshot", -1, "a whole number >= 0"),
        ("num_fewshot", "two", "a whole number >= 0"),
        ("seed", "x", "a whole number >= 0"),
    ],
)
def test_bad_counts_name_the_key_and_the_valid_range(key, value, valid):
    cfg = load_task_config("sst2")
    pattern = f"task 'sst2': task.{key} must be {re.escape(valid)}.*, got {re.escape(repr(value))}"
    with pytest.raises(ValueError, match=pattern):
        TaskSpec.from_config(dict(cfg, **{key: value}))


def test_counts_given_as_text_are_read():
    cfg = load_task_config("sst2")
    spec = TaskSpec.from_config(dict(cfg, limit="200", num_fewshot="2"))
    assert spec.limit == 200 and spec.num_fewshot == 2 and spec.seed == 0
    assert TaskSpec.from_config(dict(cfg, limit=None)).limit is None


def test_datamodule_limit_override_is_checked():
    from fnet.lit.zeroshot_data import ZeroShotDataModule
    from fnet.models import byte_tokenizer

    with pytest.raises(ValueError, match="limit must be a whole number >= 1, got 'abc'"):
        ZeroShotDataModule("sst2", byte_tokenizer(), limit="abc")


def _find(rows, **match):
    hits = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert hits, f"no row with {match}"
    return hits[0]


def test_sst2_labels(shared_data):
    rows = load_task_rows("sst2", "all", shared_data)
    assert len(rows) == 872
    assert _find(rows, text_a="it 's a charming and often affecting journey .")["label"] == 1  # positive
    assert _find(rows, text_a="unflinchingly bleak and desperate")["label"] == 0  # negative
    assert get_task("sst2").choices[1] == "positive"


def test_cola_labels_headerless_file(shared_data):
    rows = load_task_rows("cola", "all", shared_data)
    assert len(rows) == 1043
    assert _find(rows, text_a="The sailors rode the breeze clear of the rocks.")["label"] == 1  # acceptable
    # CoLA in_domain_dev row marked * (unacceptable) in the original release
    assert _find(rows, text_a="The more you would want, the less you would eat.")["label"] == 0
    assert get_task("cola").target["names"] == ["unacceptable", "acceptable"]


def test_mrpc_labels_and_unbalanced_quotes(shared_data):
    rows = load_task_rows("mrpc", "all", shared_data)
    assert len(rows) == 408
    first = rows[0]
    assert first["text_a"].startswith("He said the foodservice pie business")
    assert first["text_b"].startswith('"The foodservice pie business does not fit')  # the quote is kept verbatim
    assert first["label"] == 1  # equivalent
    assert _find(rows, text_a=rows[1]["text_a"])["label"] == 0 and rows[1]["text_a"].startswith("Magnarelli")


def test_qnli_string_labels_map_to_glue(shared_data):
    rows = load_task_rows("qnli", "all", shared_data)
    assert len(rows) == 5463
    assert rows[0]["text_a"] == "What came into force after the new constitution was herald?"
    assert rows[0]["label"] == 0  # entailment
    assert rows[1]["label"] == 1  # not_entailment


def test_mnli_subset_labels_map_to_glue(shared_data):
    rows = load_task_rows("mnli", "all", shared_data)
    assert len(rows) == 1000
    assert _find(rows, text_a="Impossible .", text_b="Impossible , unless circumstances are met .")["label"] == 1
    assert rows[0]["text_b"] == "There is a bookshop at the gallery ." and rows[0]["label"] == 0  # entailment
    assert {r["label"] for r in rows} == {0, 1, 2}
    assert get_task("mnli").target["names"] == ["entailment", "neutral", "contradiction"]  # GLUE 0/1/2


def test_ag_news_classes_shift_to_zero_based(shared_data):
    rows = load_task_rows("ag_news", "all", shared_data)
    assert len(rows) == 7600
    assert rows[0]["text_a"].startswith("Fears for T N pension after talks Unions representing")  # title + text
    assert rows[0]["label"] == 2  # class "3" = Business
    assert rows[1]["label"] == 3  # class "4" = Sci/Tech
    names = [
        line.strip() for line in (shared_data / "ag_news" / "classes.txt").read_text().splitlines() if line.strip()
    ]
    assert get_task("ag_news").target["names"] == names == get_task("ag_news").choices


def test_squad_rows(shared_data):
    rows = load_task_rows("squad", "all", shared_data)
    assert len(rows) == 10570
    first = rows[0]
    assert first["id"] == "56be4db0acb8001400a502ec"
    assert first["answers"][0] == "Denver Broncos" and first["label"] == -1
    assert "Super Bowl 50" in first["context"] and first["question"].startswith("Which NFL team")


def test_wikitext_rows_are_verbatim(shared_data):
    rows = load_task_rows("wikitext2", "validation", shared_data)
    assert any(r["text_a"] == " = Homarus gammarus = " for r in rows)
    assert len(load_task_rows("wikitext2", "test", shared_data)) != len(rows)


def test_offline_split_is_seeded_and_disjoint(shared_data):
    validation = load_task_rows("qnli", "validation", shared_data)
    train = load_task_rows("qnli", "train", shared_data)
    everything = load_task_rows("qnli", "all", shared_data)
    assert len(train) == 128 and len(validation) == 5463 - 128
    texts_v, texts_t = {r["text_a"] + r["text_b"] for r in validation}, {r["text_a"] + r["text_b"] for r in train}
    assert not texts_v & texts_t
    assert texts_v | texts_t == {r["text_a"] + r["text_b"] for r in everything}
    assert [r["text_a"] for r in load_task_rows("qnli", "train", shared_data)] == [r["text_a"] for r in train]


def test_a_task_with_a_train_file_scores_its_whole_dev_file(shared_data):
    assert len(load_task_rows("sst2", "validation", shared_data)) == 872
    assert len(load_task_rows("sst2", "train", shared_data)) == 67349


def test_source_resolution(shared_data, tmp_path):
    assert resolve_source(get_task("sst2"), shared_data) == "local"
    assert resolve_source(get_task("sst2"), tmp_path) == "hub"  # no local file there
    assert resolve_source(get_task("qqp"), shared_data) == "hub"
    spec = get_task(dict(load_task_config("sst2"), source="local"))
    with pytest.raises(TaskDataError, match="does not exist"):
        load_task_rows(spec, "validation", tmp_path)


def test_qqp_offline_fails_clearly(monkeypatch, tmp_path):
    """QQP has no offline copy: without network the error says so and lists the offline tasks."""
    import datasets

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (offline)")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(TaskDataError) as info:
        load_task_rows("qqp", "validation", tmp_path)
    message = str(info.value)
    assert "qqp" in message and "no offline copy" in message and "sst2" in message
    qqp = get_task("qqp")
    assert qqp.hub["path"] == "nyu-mll/glue" and qqp.hub["name"] == "qqp"
    assert qqp.hub["splits"]["validation"] == "validation"
    assert qqp.hub["columns"] == {"text_a": "question1", "text_b": "question2", "label": "label"}
    assert qqp.target["names"][1] == "duplicate"
