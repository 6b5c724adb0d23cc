"""POS pipeline: CoNLL-U reading, word-to-token alignment on hand-checked sentences, samples, the classifier on
planted data, lesion consistency, and an end-to-end run on a tiny model."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fnet.attribution import (
    KeyNeuronCounter,
    align_sentences,
    align_words,
    attribute_samples,
    bootstrap_metrics,
    cap_per_tag,
    compare_classifiers,
    conllu,
    key_neuron_set,
    seed_interval,
    select_key_neurons,
    word_log_probs,
    word_samples,
)
from fnet.attribution.conllu import UPOS_TAGS, Word, load_treebank, parse_conllu, read_conllu, sentence_text
from fnet.networks import NetworkSet
from fnet.pipelines.pos import run_pos_analysis

SAMPLE = """\
# newdoc id = doc1
# sent_id = s1
# text = The cat didn't sit.
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t5\tnsubj\t_\t_
3-4\tdidn't\t_\t_\t_\t_\t_\t_\t_\t_
3\tdid\tdo\tAUX\tVBD\t_\t5\taux\t_\t_
4\tn't\tnot\tPART\tRB\t_\t5\tadvmod\t_\t_
5\tsit\tsit\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No
5.1\tsat\tsit\tVERB\tVB\t_\t_\t_\t5:conj\tCopyOf=5
6\t.\t.\tPUNCT\t.\t_\t5\tpunct\t_\t_

# sent_id = s2
# text = Today's (fine)
1-2\tToday's\t_\t_\t_\t_\t_\t_\t_\t_
1\tToday\ttoday\tNOUN\tNN\t_\t0\troot\t_\t_
2\t's\tbe\tAUX\tVBZ\t_\t1\tcop\t_\t_
3\t(\t(\tPUNCT\t-LRB-\t_\t4\tpunct\t_\tSpaceAfter=No
4\tfine\tfine\tADJ\tJJ\t_\t1\tamod\t_\tSpaceAfter=No
5\t)\t)\tPUNCT\t-RRB-\t_\t4\tpunct\t_\t_

"""


# --------------------------------------------------------------------------------------------------------------
# CoNLL-U
# --------------------------------------------------------------------------------------------------------------
def test_parse_conllu_multiword_tokens_and_empty_nodes():
    first, second = parse_conllu(SAMPLE.splitlines(), source="inline")
    assert first.sent_id == "s1" and first.text == "The cat didn't sit."
    assert [w.form for w in first.words] == ["The", "cat", "did", "n't", "sit", "."]  # no range, no empty node
    assert first.tags == ["DET", "NOUN", "AUX", "PART", "VERB", "PUNCT"]
    assert [w.space_after for w in first.words] == [True, True, False, True, False, True]
    assert first.rebuilt_text() == first.text
    # the multiword token's (default) spacing goes to its last word; inside it there is no space
    assert [w.space_after for w in second.words] == [False, True, False, False, True]
    assert second.rebuilt_text() == "Today's (fine)" == second.text


def test_multiword_token_space_after_no_goes_to_last_word():
    text = (
        "1-2\tdidn't\t_\t_\t_\t_\t_\t_\t_\tSpaceAfter=No\n1\tdid\tdo\tAUX\t_\t_\t0\troot\t_\t_\n"
        "2\tn't\tnot\tPART\t_\t_\t1\tadvmod\t_\t_\n3\t.\t.\tPUNCT\t_\t_\t1\tpunct\t_\t_\n"
    )
    (sentence,) = parse_conllu(text.splitlines())
    assert sentence.rebuilt_text() == "didn't."
    assert sentence.sent_id  # named even without a sent_id comment


def test_parse_conllu_rejects_short_lines():
    with pytest.raises(ValueError, match="inline:2"):
        parse_conllu(["# sent_id = x", "1\tword\tNOUN"], source="inline")


def test_sentence_text_spans():
    words = [Word("Hi", "INTJ", False), Word(",", "PUNCT"), Word("you", "PRON")]
    text, spans = sentence_text(words)
    assert text == "Hi, you"
    assert [text[a:b] for a, b in spans] == ["Hi", ",", "you"]


def test_load_treebank_local_and_offline_errors(tmp_path, monkeypatch):
    (tmp_path / "en_ewt-ud-dev.conllu").write_text(SAMPLE)
    assert len(load_treebank("dev", tmp_path)) == 2
    with pytest.raises(FileNotFoundError, match="en_ewt-ud-test.conllu"):
        load_treebank("test", tmp_path, source="local")

    def offline(*_a, **_k):
        raise ConnectionError("no network")

    monkeypatch.setattr(conllu, "_from_hub", offline)
    with pytest.raises(FileNotFoundError, match="FNET_DATA_DIR"):
        load_treebank("test", tmp_path)


def test_ud_english_ewt_rebuilds_its_text(shared_data):
    sentences = read_conllu(shared_data / "ud_english_ewt" / "en_ewt-ud-dev.conllu")
    assert len(sentences) == 2001
    assert all(s.rebuilt_text() == s.text for s in sentences)
    assert {w.upos for s in sentences for w in s.words} <= set(UPOS_TAGS)


# --------------------------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------------------------
def bpe_tokenizer(merged_tokens, *, use_regex=True, trim_offsets=False):
    """A byte-level BPE tokenizer whose merges build exactly ``merged_tokens`` (left to right), GPT-2 style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = []
    for token in merged_tokens:
        for end in range(2, len(token) + 1):
            left, right = token[: end - 1], token[end - 1]
            if token[:end] not in vocab:
                merges.append((left, right))
                vocab[token[:end]] = len(vocab)
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")


def tokens_of(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


WORDS = parse_conllu(SAMPLE.splitlines())[0].words  # The cat did n't sit .


@pytest.mark.parametrize("trim_offsets", [False, True])
def test_alignment_space_merged_tokens_and_contractions(trim_offsets):
    tokenizer = bpe_tokenizer(["The", "Ġcat", "Ġdidn", "'t", "Ġsit"], trim_offsets=trim_offsets)
    text, ids, first = align_words(tokenizer, WORDS)
    assert text == "The cat didn't sit."
    assert tokens_of(tokenizer, ids) == ["The", "Ġcat", "Ġdidn", "'t", "Ġsit", "."]
    # "Ġcat" merges the space with the word: it is cat's first token whether or not offsets include the space.
    # "did" starts inside "Ġdidn"; "n't"'s first token is "'t", the first one starting inside it.
    assert first == [0, 1, 2, 3, 4, 5]


def test_alignment_whitespace_tokens_carry_no_tag():
    from fnet.models import byte_tokenizer

    tokenizer = byte_tokenizer()  # one token per byte: spaces are tokens of their own
    words = [Word("Hi", "INTJ"), Word(",", "PUNCT"), Word("x", "X")]
    (aligned,) = align_sentences(tokenizer, [conllu.Sentence("s", words)])
    assert aligned.text == "Hi , x"
    assert tokens_of(tokenizer, aligned.input_ids) == ["H", "i", "Ġ", ",", "Ġ", "x"]
    assert aligned.first_token == [0, 3, 5]
    assert aligned.token_tags() == ["INTJ", None, None, "PUNCT", None, "X"]


def test_alignment_word_inside_a_cross_word_token_is_unaligned_and_truncation():
    # without the pre-tokenizer regex a merge can cross a word boundary: "Ġarea." holds "area" and "."
    tokenizer = bpe_tokenizer(["the", "Ġarea."], use_regex=False)
    words = [Word("the", "DET"), Word("area", "NOUN", False), Word(".", "PUNCT")]
    text, ids, first = align_words(tokenizer, words)
    assert tokens_of(tokenizer, ids) == ["the", "Ġarea."]
    assert first == [0, 1, -1]
    _, ids, first = align_words(bpe_tokenizer(["The", "Ġcat"]), WORDS, max_length=2)
    assert len(ids) == 2 and first == [0, 1, -1, -1, -1, -1]


@pytest.mark.slow
def test_alignment_with_the_default_tokenizer(smollm2):
    words = [
        Word("I", "PRON"),
        Word("did", "AUX", False),
        Word("n't", "PART"),
        Word("go", "VERB"),
        Word(",", "PUNCT"),
        Word("15", "NUM"),
        Word("items", "NOUN", False),
        Word(".", "PUNCT"),
    ]
    text, ids, first = align_words(smollm2.tokenizer, words)
    assert text == "I didn't go , 15 items."
    pieces = tokens_of(smollm2.tokenizer, ids)
    assert [pieces[i] for i in first] == ["I", "Ġdidn", "'t", "Ġgo", "Ġ,", "1", "Ġitems", "."]


# --------------------------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------------------------
def test_word_samples_need_context_and_cap():
    from fnet.models import byte_tokenizer

    aligned = align_sentences(byte_tokenizer(), parse_conllu(SAMPLE.splitlines()))
    everything = word_samples(aligned, UPOS_TAGS, need_context=False)
    with_context = word_samples(aligned, UPOS_TAGS)
    assert len(everything) == 11 and len(with_context) == 9  # each sentence's first word has no prefix
    assert everything.counts()[UPOS_TAGS.index("PUNCT")] == 3
    capped = cap_per_tag(everything, 1, seed=0)
    assert capped.counts().max() == 1 and capped.counts().sum() == len(set(everything.tag.tolist()))
    with pytest.raises(ValueError, match="not in the tag list"):
        word_samples(aligned, ["NOUN"])


# --------------------------------------------------------------------------------------------------------------
# Classifier on planted data
# --------------------------------------------------------------------------------------------------------------
def planted(n, n_tags, n_layers, width, planted_units, rng):
    """Activations where neuron (1, planted_units[t]) is high exactly for words of tag t; the rest is noise."""
    tags = rng.integers(0, n_tags, n)
    X = rng.normal(size=(n, n_layers * width)).astype(np.float32)
    for t, unit in enumerate(planted_units):
        X[:, 1 * width + unit] += 4.0 * (tags == t)
    return X, tags


def test_planted_key_neurons_are_found_and_beat_random_neurons():
    rng = np.random.default_rng(0)
    n_tags, n_layers, width = 4, 3, 100
    planted_units = [3, 17, 42, 77]
    # attributions: a tag's samples credit its planted neuron most (plus noise)
    attr_tags = rng.integers(0, n_tags, 200)
    attributions = rng.normal(scale=0.1, size=(200, n_layers * width))
    for t, unit in enumerate(planted_units):
        attributions[attr_tags == t, 1 * width + unit] += 5.0
    chosen, counter = select_key_neurons(torch.from_numpy(attributions), attr_tags, n_tags, top_fraction=0.01, top_k=1)
    assert [c.tolist() for c in chosen] == [[width + u] for u in planted_units]
    netset, tags = key_neuron_set(counter, 1, n_layers, width, ["A", "B", "C", "D"], provenance={"model": "planted"})
    assert netset.provenance["tags"] == ["A", "B", "C", "D"] and tags == [0, 1, 2, 3]
    assert netset.maps is not None and float(netset.maps[0, 1, 3]) == 1.0

    X_train, y_train = planted(600, n_tags, n_layers, width, planted_units, rng)
    X_test, y_test = planted(400, n_tags, n_layers, width, planted_units, rng)
    rows, seed_rows = compare_classifiers(
        X_train, y_train, X_test, y_test, netset.union(), random_seeds=[0, 1, 2], n_bootstrap=200, max_iter=200
    )
    by_name = {r["features"].split(" (")[0]: r for r in rows}
    key, random_, every, majority = (
        by_name[k] for k in ("key neurons", "random matched", "all neurons", "majority class")
    )
    assert key["n_neurons"] == 4 and random_["n_neurons"] == 4 and every["n_neurons"] == n_layers * width
    assert key["accuracy"] > 0.95
    assert key["accuracy"] > random_["accuracy"] + 0.4
    assert key["macro_f1"] > random_["macro_f1_hi"]
    assert every["accuracy"] > 0.8
    assert majority["accuracy"] < 0.4
    assert key["accuracy_lo"] <= key["accuracy"] <= key["accuracy_hi"]
    assert len(seed_rows) == 3 and all(r["n_neurons"] == 4 for r in seed_rows)


def test_bootstrap_and_seed_intervals():
    y_true = np.array([0, 1, 2, 0, 1, 2] * 20)
    y_pred = y_true.copy()
    y_pred[:30] = 0
    metrics = bootstrap_metrics(y_true, y_pred, n_resamples=200)
    assert metrics["accuracy_lo"] <= metrics["accuracy"] <= metrics["accuracy_hi"] < 1.0
    assert metrics["macro_f1_lo"] <= metrics["macro_f1"] <= metrics["macro_f1_hi"]
    mean, lo, hi = seed_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and lo < 0.5 and hi > 0.7
    assert seed_interval([0.3]) == (0.3, 0.3, 0.3)


# --------------------------------------------------------------------------------------------------------------
# Model-level pieces on a tiny model
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_gpt2():
    from fnet.models import load_model

    return load_model("tiny:gpt2")


def test_lesion_log_probs_match_attribution_targets(tiny_gpt2):
    lm = tiny_gpt2
    aligned = align_sentences(lm.tokenizer, parse_conllu(SAMPLE.splitlines()))
    samples = word_samples(aligned, UPOS_TAGS)
    counter = KeyNeuronCounter(len(UPOS_TAGS), lm.n_layers * lm.d_model, 0.1)
    # each sample's own prefix sequence gives the same log-probability as the full sentence read at that word
    attributed = attribute_samples(lm, aligned, samples, counter, batch_size=4)
    clean = word_log_probs(lm, aligned, samples, batch_size=2)
    np.testing.assert_allclose(attributed, clean, rtol=1e-4, atol=1e-5)
    assert int(counter.n_samples.sum()) == len(samples)
    mask = torch.zeros(lm.n_layers, lm.d_model, dtype=torch.bool)
    mask[:, :8] = True
    assert not np.allclose(word_log_probs(lm, aligned, samples, mask=mask), clean)


def write_treebank(folder):
    folder.mkdir(parents=True)
    base = parse_conllu(SAMPLE.splitlines())
    # 12 small sentences per split: enough words per tag for the networks, the classifier and the lesion
    lines = []
    for i in range(12):
        lines += [f"# sent_id = s{i}", "# text = The cat didn't sit.", *SAMPLE.splitlines()[3:11], ""]
        lines += [f"# sent_id = t{i}", *SAMPLE.splitlines()[14:20], ""]
    dev = "\n".join(lines) + "\n"
    # test: the same tags with other words, plus 2 sentences copied verbatim from dev (dropped by the analysis)
    test = dev.replace("\tcat\tcat\t", "\tdog\tdog\t").replace("\tsit\tsit\t", "\trun\trun\t")
    test = test.replace("\tfine\tfine\t", "\tgood\tgood\t").replace("# text = The cat didn't sit.\n", "")
    test += (
        "\n".join(
            ["# sent_id = copy1", *SAMPLE.splitlines()[3:11], "", "# sent_id = copy2", *SAMPLE.splitlines()[14:20], ""]
        )
        + "\n"
    )
    (folder / "en_ewt-ud-dev.conllu").write_text(dev)
    (folder / "en_ewt-ud-test.conllu").write_text(test)
    assert len(base) == 2


def pos_cfg(tmp_path, **analysis):
    cfg = OmegaConf.create(
        {
            "model": {"_target_": "fnet.models.load_model", "name": "tiny:gpt2"},
            "record": {"signal": "mlp_out", "max_length": 64, "batch_size": 4},
            "seed": 0,
            "paths": {
                "output_dir": str(tmp_path / "out"),
                "data_dir": str(tmp_path / "data"),
                "cache_dir": str(tmp_path / "cache"),
            },
        }
    )
    cfg.analysis = OmegaConf.load(__import__("pathlib").Path(__file__).parents[1] / "conf/analysis/pos.yaml")
    cfg.analysis.treebank.dir = str(tmp_path / "data" / "ud_english_ewt")
    overrides = {
        "progress": False,
        "selection.top_k": 5,
        "selection.min_samples": 3,
        "classifier.random_seeds": [0],
        "classifier.bootstrap": 50,
        "classifier.max_iter": 100,
        "lesion.random_seeds": [0],
        "ica_overlap": False,
        **analysis,
    }
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"analysis.{key}", value)
    return cfg


def test_run_pos_analysis_end_to_end(tmp_path, monkeypatch):
    write_treebank(tmp_path / "data" / "ud_english_ewt")
    cfg = pos_cfg(
        tmp_path,
        ica_overlap=True,
        **{"attribution.method": "ig", "attribution.steps": 2, "attribution.baseline": "mean"},
    )

    import fnet.pipelines.pos

    def fake_networks(cfg_, lm):  # stands in for the ICA step (its own tests live elsewhere)
        masks = torch.zeros(3, lm.n_layers, lm.d_model, dtype=torch.bool)
        masks[0, :, :10] = True
        masks[1, 0] = True
        return NetworkSet.from_masks(masks, {"model": lm.name, "data": "fake"})

    monkeypatch.setattr(fnet.pipelines.pos, "networks_for_config", fake_networks)
    results = run_pos_analysis(cfg)
    out = tmp_path / "out"
    for name in (
        "pos_report.md",
        "pos_key_neurons.safetensors",
        "pos_selection_counts.safetensors",
        "pos_tags.csv",
        "pos_key_neurons.csv",
        "pos_classifier.csv",
        "pos_lesion.csv",
        "pos_ica_overlap.csv",
        "figures/pos_key_neurons_maps.png",
        "figures/pos_vs_ica_iou.png",
    ):
        assert (out / name).is_file(), name
    netset = NetworkSet.load(out / "pos_key_neurons.safetensors")
    assert netset.provenance["tags"] == results["tags"]
    assert {"AUX", "NOUN", "PUNCT", "VERB"} <= set(results["tags"])
    assert netset.provenance["method"] == "ig" and netset.provenance["signal"] == "mlp_out"
    assert all(int(s) == 5 for s in netset.sizes())
    assert [r["features"].split(" (")[0] for r in results["classifier"]] == [
        "key neurons",
        "random matched",
        "all neurons",
        "majority class",
    ]
    assert results["lesion"] and len(results["ica_overlap"]) == netset.n_networks + 1
    report = (out / "pos_report.md").read_text()
    assert "## Classifier" in report and "## Timings" in report and "fake" in report
    # the 2 test sentences that are verbatim dev sentences were dropped, and the report says so
    assert results["dropped_test_sentences"] == 2
    assert "occur verbatim in the train split: 2." in report
    assert results["data"][2]["sentences"] == 24 and results["data"][3]["sentences"] == 24


def test_unknown_lesion_tag_is_an_error(tmp_path):
    write_treebank(tmp_path / "data" / "ud_english_ewt")
    cfg = pos_cfg(tmp_path, **{"lesion.tags": ["NOUN", "FOO"]})
    with pytest.raises(ValueError, match=r"analysis.lesion.tags: unknown tag\(s\) \['FOO'\]; valid tags: .*'NOUN'"):
        run_pos_analysis(cfg)


def test_pos_test_split_holds_no_dev_sentence(shared_data):
    from fnet.attribution.pos_data import drop_shared_sentences

    folder = shared_data / "ud_english_ewt"
    if not (folder / "en_ewt-ud-dev.conllu").is_file():
        pytest.skip(f"UD English-EWT is not in {folder}")
    dev = load_treebank("dev", str(folder), source="local")
    test = load_treebank("test", str(folder), source="local")
    kept, dropped = drop_shared_sentences(test, dev)
    forms = {tuple(w.form for w in s.words) for s in dev}
    assert dropped == 73 and len(kept) == len(test) - 73  # the release repeats 73 dev sentences in test
    assert not any(tuple(w.form for w in s.words) in forms for s in kept)


def test_run_pos_analysis_without_ica_or_lesion(tmp_path):
    write_treebank(tmp_path / "data" / "ud_english_ewt")
    cfg = pos_cfg(
        tmp_path, **{"lesion.enabled": False, "classifier.all_neurons": False, "classifier.position": "before"}
    )
    results = run_pos_analysis(cfg)
    assert results["lesion"] == [] and "analysis.ica_overlap=false" in results["ica_note"]
    assert "all neurons" not in {r["features"] for r in results["classifier"]}


def test_ica_overlap_from_a_saved_file_and_layout_mismatch(tmp_path):
    from fnet.pipelines.pos import ica_overlap

    pos_masks = torch.zeros(2, 3, 8, dtype=torch.bool)
    pos_masks[0, 0, :4] = True  # tag A: 4 neurons of layer 0
    pos_masks[1, 2, :2] = True  # tag B: 2 neurons of layer 2
    pos = NetworkSet.from_masks(pos_masks, {"tags": ["A", "B"]})
    ica_masks = torch.zeros(2, 3, 8, dtype=torch.bool)
    ica_masks[0, 0, 2:6] = True  # overlaps A in 2 of 6 neurons
    ica_masks[1, 2, :2] = True  # equals B
    NetworkSet.from_masks(ica_masks, {"data": "saved"}).save(tmp_path / "ica.safetensors")
    cfg = OmegaConf.create({"analysis": {"ica_networks_file": str(tmp_path / "ica.safetensors")}})
    rows, note, figure = ica_overlap(cfg, None, pos, tmp_path / "fig")
    assert [(r["tag"], r["best_ica_network"], round(r["iou"], 4)) for r in rows] == [
        ("A", 0, round(2 / 6, 4)),
        ("B", 1, 1.0),
        ("(union of all tags)", 1, round(2 / 6, 4)),
    ]  # union: 6 neurons
    assert figure.is_file() and "2 ICA networks" in note
    NetworkSet.from_masks(torch.ones(1, 3, 5, dtype=torch.bool)).save(tmp_path / "other.safetensors")
    cfg.analysis.ica_networks_file = str(tmp_path / "other.safetensors")
    rows, note, figure = ica_overlap(cfg, None, pos, tmp_path / "fig")
    assert rows == [] and figure is None and note.startswith("skipped")
