"""Tests for fnet.recording: built-in corpus, local real-data sources, hub paths (mocked), sampling, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fnet.recording as fdata
import fnet.recording.texts as ftexts
from fnet.recording import HubUnavailableError, StimulusSet, Text, load_stimulus_sets, load_texts, sample_stimuli

REPO_ROOT = Path(fdata.__file__).resolve().parents[2]
CONF_DATA = REPO_ROOT / "conf" / "data"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
GENRES = ["code", "encyclopedia", "math", "news"]

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"offline data folder {SHARED_DATA} is absent on this machine"
)


@pytest.fixture
def shared_root(monkeypatch):
    """Point the data root at ../shared/data relative to the repo root, whatever the environment says."""
    monkeypatch.setenv(fdata.DATA_DIR_ENV, str(SHARED_DATA))
    return SHARED_DATA


# ------------------------------------------------------------------------------------------
# Built-in corpus
# ------------------------------------------------------------------------------------------


def test_builtin_genres_are_the_four_expected():
    assert fdata.builtin_genres() == GENRES


@pytest.mark.parametrize("genre", GENRES)
def test_builtin_genre_has_enough_unique_nonempty_texts(genre):
    texts = load_texts(f"builtin:{genre}")
    assert len(texts) >= 24
    assert all(t.text.strip() for t in texts)
    assert len({t.id for t in texts}) == len(texts)
    assert len({t.text for t in texts}) == len(texts)
    assert all(t.source == f"builtin:{genre}" for t in texts)


@pytest.mark.parametrize("genre", ["news", "encyclopedia", "math"])
def test_builtin_prose_lengths(genre):
    for t in load_texts(f"builtin:{genre}"):
        assert 120 <= len(t.text.split()) <= 250, t.id


def test_builtin_code_lengths():
    for t in load_texts("builtin:code"):
        assert 25 <= len(t.text.splitlines()) <= 60, t.id


def test_builtin_corpus_files_are_jsonl_with_id_and_text():
    for genre in GENRES:
        lines = (ftexts.CORPUS_DIR / f"{genre}.jsonl").read_text(encoding="utf-8").splitlines()
        for line in lines:
            record = json.loads(line)
            assert isinstance(record["id"], str) and isinstance(record["text"], str)


def test_builtin_all_is_union_of_genres_with_unique_ids():
    everything = load_texts("builtin")
    assert len(everything) == sum(len(load_texts(f"builtin:{g}")) for g in GENRES)
    assert len({t.id for t in everything}) == len(everything)


def test_unknown_builtin_genre_names_valid_genres():
    with pytest.raises(ValueError, match="poetry") as info:
        load_texts("builtin:poetry")
    for genre in GENRES:
        assert genre in str(info.value)


# ------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------


def _ids(texts):
    return [t.id for t in texts]


def test_sampling_is_seeded_and_disjoint():
    texts = load_texts("builtin:news")
    template, individual = sample_stimuli(texts, n_template=10, n_individual=10, seed=0)
    again = sample_stimuli(texts, n_template=10, n_individual=10, seed=0)
    other = sample_stimuli(texts, n_template=10, n_individual=10, seed=1)
    assert len(template) == 10 and len(individual) == 10
    assert not set(_ids(template)) & set(_ids(individual))
    assert (_ids(template), _ids(individual)) == (_ids(again[0]), _ids(again[1]))
    assert (_ids(template), _ids(individual)) != (_ids(other[0]), _ids(other[1]))


def test_sampling_too_many_requested_names_counts():
    texts = load_texts("builtin:math")
    with pytest.raises(ValueError) as info:
        sample_stimuli(texts, n_template=20, n_individual=10, seed=0)
    message = str(info.value)
    assert "30" in message and f"only {len(texts)} are available" in message


def test_sampling_min_chars_excludes_short_texts_and_says_so():
    texts = ["short", "also short", "a" * 50, "b" * 60, "c" * 70]
    template, individual = sample_stimuli(texts, n_template=2, n_individual=1, seed=3, min_chars=40)
    assert {t.text[0] for t in template + individual} == {"a", "b", "c"}
    with pytest.raises(ValueError, match="shorter than min_chars=40"):
        sample_stimuli(texts, n_template=2, n_individual=2, seed=3, min_chars=40)


def test_explicit_empty_text_names_its_index():
    with pytest.raises(ValueError, match="index 2"):
        sample_stimuli(["one", "two", "   ", "four"], n_template=1, n_individual=1, seed=0)
    with pytest.raises(ValueError, match="index 1"):
        load_texts("texts", texts=["fine", ""])
    with pytest.raises(ValueError, match="index 1"):
        load_stimulus_sets({"mine": {"texts": ["fine", "\n"]}}, n_template=1, n_individual=0, seed=0)


def test_bad_counts_and_seed_are_rejected():
    texts = load_texts("builtin:news")
    with pytest.raises(ValueError, match="n_template"):
        sample_stimuli(texts, n_template=-1, n_individual=1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        sample_stimuli(texts, n_template=1, n_individual=1, seed="zero")


def test_dataset_sources_drop_empty_and_duplicate_texts(tmp_path):
    path = tmp_path / "stimuli.jsonl"
    rows = [{"text": "alpha beta"}, {"text": "   "}, {"text": "gamma"}, {"text": "alpha beta"}, {"text": ""}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    sets = load_stimulus_sets({"local": {"source": f"file:{path}"}}, n_template=1, n_individual=1, seed=0)
    provenance = sets["local"].provenance
    assert provenance["n_loaded"] == 5
    assert provenance["n_dropped_empty"] == 2
    assert provenance["n_dropped_duplicate"] == 1
    assert provenance["n_available"] == 2


def test_max_chars_trims_at_word_boundary():
    assert fdata.trim_at_word_boundary("the quick brown fox", 12) == "the quick"
    assert fdata.trim_at_word_boundary("the quick brown fox", 10) == "the quick"
    assert fdata.trim_at_word_boundary("the quick", 100) == "the quick"
    assert fdata.trim_at_word_boundary("abcdefghij", 4) == "abcd"
    texts = load_texts("builtin:encyclopedia", max_chars=200)
    assert all(len(t.text) <= 200 for t in texts)
    full = {t.id: t.text for t in load_texts("builtin:encyclopedia")}
    for t in texts:
        assert full[t.id].startswith(t.text)
        assert full[t.id][len(t.text)].isspace()  # cut falls right before whitespace


# ------------------------------------------------------------------------------------------
# Local real-data sources (../shared/data)
# ------------------------------------------------------------------------------------------


@needs_shared
def test_wikitext2_paragraphs_skip_headings_and_blank_lines(shared_root):
    texts = load_texts("wikitext2", split="valid")
    assert texts[0].text.startswith("Homarus gammarus , known as the European lobster or common lobster")
    assert texts[0].id == "wikitext2/valid/L4"
    assert all(t.text.strip() == t.text and t.text for t in texts)
    assert not any(t.text.startswith("= ") and t.text.endswith(" =") for t in texts)
    assert len(texts) > 1500
    test_split = load_texts("wikitext2")  # default split: test
    assert test_split[0].text.startswith("Robert <unk> is an English film , television and theatre actor")


@needs_shared
def test_wikitext2_articles_group_paragraphs(shared_root):
    articles = load_texts("wikitext2", split="valid", unit="article")
    paragraphs = load_texts("wikitext2", split="valid")
    assert 10 < len(articles) < len(paragraphs)
    first = articles[0].text
    assert first.startswith("Homarus gammarus , known as")
    assert "\n" in first and "= = Description = =" not in first


@needs_shared
def test_ag_news_text_is_title_and_description(shared_root):
    texts = load_texts("ag_news")
    assert len(texts) == 7600
    assert texts[0].text == (
        "Fears for T N pension after talks. Unions representing workers at Turner   Newall say they are "
        "'disappointed' after talks with stricken parent firm Federal Mogul."
    )
    assert texts[0].id == "ag_news/test/0"


@needs_shared
def test_codenet_java_one_text_per_file(shared_root):
    texts = load_texts("codenet_java")
    assert len(texts) == 194
    assert all(t.id.startswith("codenet_java/p") for t in texts)
    assert sum("class" in t.text for t in texts) == 194


@needs_shared
def test_data_root_defaults_to_shared_folder(monkeypatch):
    monkeypatch.delenv(fdata.DATA_DIR_ENV, raising=False)
    assert fdata.data_root().resolve() == SHARED_DATA.resolve()  # the shared folder may be reached through a link


def test_missing_local_path_names_path_and_fixes(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(fdata.DATA_DIR_ENV, str(missing))
    assert fdata.data_root() == missing
    for source, hub_hint in [
        ("wikitext2", "Salesforce/wikitext"),
        ("ag_news", "fancyzhx/ag_news"),
        ("codenet_java", "iNeil77/CodeNet"),
    ]:
        with pytest.raises(FileNotFoundError) as info:
            load_texts(source)
        message = str(info.value)
        assert str(missing) in message and fdata.DATA_DIR_ENV in message and hub_hint in message


def test_missing_file_source_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.jsonl"):
        load_texts(f"file:{tmp_path / 'no_such.jsonl'}")


# ------------------------------------------------------------------------------------------
# file: sources
# ------------------------------------------------------------------------------------------


def test_file_txt_blocks(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first block\nstill first\n\n  \nsecond block\n\n\n\nthird\n", encoding="utf-8")
    texts = load_texts(f"file:{path}")
    assert [t.text for t in texts] == ["first block\nstill first", "second block", "third"]


def test_file_csv_and_jsonl_fields(tmp_path):
    csv_path = tmp_path / "items.csv"
    csv_path.write_text("key,body\nk1,hello there\nk2,general kenobi\n", encoding="utf-8")
    texts = load_texts(f"file:{csv_path}", text_field="body", id_field="key")
    assert [(t.id, t.text) for t in texts] == [("k1", "hello there"), ("k2", "general kenobi")]
    with pytest.raises(ValueError, match="body"):
        load_texts(f"file:{csv_path}", text_field="content")

    jsonl_path = tmp_path / "qa.jsonl"
    jsonl_path.write_text(json.dumps({"q": "What?", "a": "This."}) + "\n", encoding="utf-8")
    texts = load_texts(f"file:{jsonl_path}", text_field=["q", "a"], separator=" ")
    assert texts[0].text == "What? This."


# ------------------------------------------------------------------------------------------
# Errors naming the problem and the valid choices
# ------------------------------------------------------------------------------------------


def test_unknown_source_lists_valid_sources():
    with pytest.raises(ValueError) as info:
        load_texts("imdb")
    message = str(info.value)
    assert "imdb" in message
    for name in ["builtin:news", "wikitext2", "ag_news", "codenet_java", "mathqa", "hf:<hub name>", "file:<path>"]:
        assert name in message


def test_unknown_option_lists_accepted_options():
    with pytest.raises(ValueError) as info:
        load_texts("builtin:news", splitt="test")
    assert "splitt" in str(info.value) and "max_chars" in str(info.value)


def test_dataset_without_source_lists_valid_sources():
    with pytest.raises(ValueError, match="has no 'source'.*wikitext2"):
        load_stimulus_sets({"mystery": {}}, n_template=1, n_individual=1, seed=0)


def test_mathqa_offline_fails_fast_with_alternatives(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(ftexts, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(HubUnavailableError) as info:
        load_texts("mathqa")
    message = str(info.value)
    assert "hub-only" in message and "allenai/math_qa" in message
    assert "builtin:math" in message and "wikitext2" in message and "ag_news" in message


def test_mathqa_cache_miss_in_offline_mode_is_wrapped(monkeypatch):
    import datasets

    def offline_load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/math_qa' on the Hub (offline mode)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", offline_load_dataset)
    with pytest.raises(HubUnavailableError, match="hub-only.*builtin:math"):
        load_texts("mathqa")


# ------------------------------------------------------------------------------------------
# Hub paths with a fake datasets.load_dataset (no network)
# ------------------------------------------------------------------------------------------


class FakeHubDataset:
    """Enough of datasets.Dataset for fnet.recording: column_names, select_columns, select, iteration."""

    def __init__(self, rows):
        self.rows = list(rows)
        self.column_names = list(self.rows[0]) if self.rows else []

    def select_columns(self, columns):
        return FakeHubDataset({c: r[c] for c in columns} for r in self.rows)

    def select(self, indices):
        return FakeHubDataset(self.rows[i] for i in indices)

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)


def _fake_hub_rows(hub_name, config):
    if hub_name == "fancyzhx/ag_news":
        return [{"text": f"Headline {i} (Wire) Wire - story number {i}.", "label": i % 4} for i in range(300)]
    if hub_name == "Salesforce/wikitext":
        lines = []
        for article in range(30):
            lines += ["", f" = Article {article} = ", ""]
            lines += [f" Paragraph {article}.{p} " + "words " * 50 for p in range(10)]
            lines += ["", f" = = Section {article} = = ", ""]
        return [{"text": line} for line in lines]
    if hub_name == "allenai/math_qa":
        return [
            {
                "Problem": f"what is {i} + {i} ?",
                "Rationale": f'"explanation : {i} + {i} = {2 * i}"',
                "options": "a ) 1",
                "correct": "a",
            }
            for i in range(250)
        ]
    if hub_name == "iNeil77/CodeNet":
        return [{"code": f"class Main{i} {{ }}", "status": "Accepted"} for i in range(400)]
    raise AssertionError(f"unexpected hub name {hub_name}")


@pytest.fixture
def fake_hub(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append({"path": path, "name": name, **kwargs})
        return FakeHubDataset(_fake_hub_rows(path, name))

    monkeypatch.setattr(ftexts, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hf_source_passes_name_split_field(fake_hub):
    texts = load_texts("hf:fancyzhx/ag_news", split="test", text_field="text")
    assert fake_hub == [{"path": "fancyzhx/ag_news", "name": None, "split": "test"}]
    assert len(texts) == 300
    assert texts[0] == Text(
        id="fancyzhx/ag_news/test/0", text="Headline 0 (Wire) Wire - story number 0.", source="hf:fancyzhx/ag_news"
    )


def test_hf_source_config_max_rows_and_missing_field(fake_hub):
    texts = load_texts("hf:iNeil77/CodeNet", config="Java", split="train", text_field="code", max_rows=50)
    assert fake_hub[-1] == {"path": "iNeil77/CodeNet", "name": "Java", "split": "train"}
    assert len(texts) == 50
    with pytest.raises(ValueError, match="no field.*'body'.*code"):
        load_texts("hf:iNeil77/CodeNet", config="Java", split="train", text_field="body")


def test_mathqa_hub_text_is_problem_and_rationale(fake_hub):
    texts = load_texts("mathqa")
    assert fake_hub == [{"path": "allenai/math_qa", "name": None, "split": "test"}]
    assert texts[3].text == "what is 3 + 3 ?\nexplanation : 3 + 3 = 6"


def test_wikitext2_from_hub_uses_same_paragraph_rules(fake_hub):
    texts = load_texts("wikitext2", from_hub=True, split="valid")
    assert fake_hub == [{"path": "Salesforce/wikitext", "name": "wikitext-2-raw-v1", "split": "validation"}]
    assert len(texts) == 300
    assert texts[0].text.startswith("Paragraph 0.0 words")
    articles = load_texts("wikitext2", from_hub=True, unit="article")
    assert len(articles) == 30


def test_paper_config_instantiates_with_fake_hub(fake_hub):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF_DATA / "paper.yaml")
    sets = instantiate(cfg)
    assert list(sets) == ["ag_news", "wikitext2", "mathqa", "codenet"]
    assert all(len(s.template) == 100 and len(s.individual) == 100 for s in sets.values())
    called = {(c["path"], c["name"]) for c in fake_hub}
    assert called == {
        ("fancyzhx/ag_news", None),
        ("Salesforce/wikitext", "wikitext-2-raw-v1"),
        ("allenai/math_qa", None),
        ("iNeil77/CodeNet", "Java"),
    }
    assert sets["codenet"].provenance["hub"] == "iNeil77/CodeNet"


# ------------------------------------------------------------------------------------------
# conf/data/*.yaml
# ------------------------------------------------------------------------------------------


def _instantiate(name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF_DATA / f"{name}.yaml")
    assert cfg._target_ == "fnet.recording.load_stimulus_sets"
    return instantiate(cfg)


def test_config_files_are_the_expected_set():
    names = sorted(p.stem for p in CONF_DATA.glob("*.yaml"))
    assert names == ["ag_news", "builtin", "codenet_java", "paper", "shared", "task", "wikitext2"]


def test_builtin_config_instantiates_to_four_genres():
    sets = _instantiate("builtin")
    assert list(sets) == ["news", "encyclopedia", "math", "code"]
    for name, stimulus_set in sets.items():
        assert isinstance(stimulus_set, StimulusSet)
        assert len(stimulus_set.template) == 10 and len(stimulus_set.individual) == 10
        assert not set(_ids(stimulus_set.template)) & set(_ids(stimulus_set.individual))
        assert stimulus_set.provenance["source"] == f"builtin:{name}"
        assert stimulus_set.provenance["seed"] == 0
        json.dumps(stimulus_set.to_dict())  # provenance must be serialisable


@needs_shared
@pytest.mark.parametrize(
    "name, expected",
    [
        ("shared", {"wikitext2": 100, "ag_news": 100, "codenet_java": 90}),
        ("wikitext2", {"wikitext2": 100}),
        ("ag_news", {"ag_news": 100}),
        ("codenet_java", {"codenet_java": 90}),
    ],
)
def test_offline_configs_instantiate(shared_root, name, expected):
    sets = _instantiate(name)
    assert {k: len(v.template) for k, v in sets.items()} == expected
    assert {k: len(v.individual) for k, v in sets.items()} == expected
    for stimulus_set in sets.values():
        assert str(shared_root) in stimulus_set.provenance["path"]


def test_paper_config_composes_and_names_hub_ids():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF_DATA / "paper.yaml")
    assert cfg.n_template == 100 and cfg.n_individual == 100
    sets = cfg.datasets
    assert sets.ag_news.source == "hf:fancyzhx/ag_news"
    assert (sets.wikitext2.source, sets.wikitext2.from_hub) == ("wikitext2", True)
    assert (sets.wikitext2.hub_name, sets.wikitext2.hub_config) == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    assert (sets.mathqa.source, sets.mathqa.hub_name) == ("mathqa", "allenai/math_qa")
    assert (sets.codenet.source, sets.codenet.config) == ("hf:iNeil77/CodeNet", "Java")


def test_data_group_composes_with_hydra():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(overrides=["+data=builtin", "data.n_template=3", "+data.datasets.news.seed=7"])
    sets = instantiate(cfg.data)
    assert len(sets["math"].template) == 3
    assert sets["news"].provenance["seed"] == 7
