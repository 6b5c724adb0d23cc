"""The sets of UD English-EWT sentences that :func:`fnet.pipelines.pos.run_pos_analysis` reads: the train and test
splits, seeded subsets of them for attribution, the classifier and the lesion, each aligned to tokens and cut into
word samples (:func:`fnet.attribution.word_samples`).

Kept apart from the run so that the analysis reads as its steps; :func:`load_data` is its data step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fnet.attribution import WordSamples, align_sentences, cap_per_tag, word_samples
from fnet.attribution.conllu import UPOS_TAGS, load_treebank
from fnet.attribution.pos_data import check_lesion_tags, drop_shared_sentences

__all__ = ["Words", "PosData", "load_data"]


@dataclass
class Words:
    """One set of sentences of a split, aligned to tokens, and its word samples.

    Parameters
    ----------
    split : str
        The treebank split the sentences come from.
    sentences : list
        The sentences (:class:`fnet.attribution.conllu.Sentence`), in file order.
    aligned : list
        Each sentence aligned to tokens (:func:`fnet.attribution.align_sentences`).
    samples : WordSamples
        The words of the sentences that are samples (:func:`fnet.attribution.word_samples`).
    """

    split: str
    sentences: list
    aligned: list
    samples: WordSamples


@dataclass
class PosData:
    """The tags (UPOS, then any other tag the files use) and the four sets of the analysis.

    Parameters
    ----------
    tag_names : list of str
        The tag of each tag id.
    attribution : Words
        The words whose key neurons are found (train split).
    train : Words
        The classifier's training words (train split).
    test : Words
        The classifier's test words (test split).
    lesion : Words
        The words the lesion is measured on (test split).
    n_shared : int
        Test sentences dropped because the train split has them verbatim.
    """

    tag_names: list[str]
    attribution: Words
    train: Words
    test: Words
    lesion: Words
    n_shared: int  # test sentences dropped because the train split has them verbatim

    @property
    def n_unaligned(self) -> int:
        """Attribution words without a token of their own (left out)."""
        return sum(sum(1 for f in s.first_token if f < 0) for s in self.attribution.aligned)

    def rows(self) -> list[dict]:
        """The report's data table.

        Returns
        -------
        list of dict
            One row per set: its split and how many sentences, words and samples it has.
        """
        sets = {
            "attribution": self.attribution,
            "classifier train": self.train,
            "classifier test": self.test,
            "lesion": self.lesion,
        }
        return [
            {
                "set": name,
                "split": words.split,
                "sentences": len(words.sentences),
                "words": sum(len(s.words) for s in words.sentences),
                "samples": len(words.samples),
            }
            for name, words in sets.items()
        ]


def load_data(cfg, tokenizer: Any, max_length: int) -> PosData:
    """UD English-EWT's train and test splits (test without sentences the train split also has), and seeded subsets
    of them for attribution (train), the classifier (train / test) and the lesion (test), aligned to tokens.

    Parameters
    ----------
    cfg : DictConfig
        The run's config (``analysis: pos``): its ``analysis`` group's treebank, sizes and tags, ``seed`` and
        ``paths.data_dir``.
    tokenizer : Any
        The model's tokenizer.
    max_length : int
        Sentences are cut at this many tokens.

    Returns
    -------
    PosData
        The tags and the four sets.

    Raises
    ------
    ValueError
        When ``analysis.lesion.tags`` names a tag the treebank does not have.
    """
    a = cfg.analysis
    seed = int(cfg.seed)
    train_split, test_split = str(a.treebank.train_split), str(a.treebank.test_split)
    train_all, test_all, n_shared = _treebank(cfg, train_split, test_split)
    extra_tags = sorted({w.upos for s in train_all + test_all for w in s.words} - set(UPOS_TAGS))
    tag_names = list(UPOS_TAGS) + extra_tags
    check_lesion_tags(a.lesion.tags, tag_names)

    def words(split: str, sentences: list, **options: Any) -> Words:
        aligned = align_sentences(tokenizer, sentences, max_length)
        return Words(split, sentences, aligned, word_samples(aligned, tag_names, **options))

    before = str(a.classifier.position) == "before"  # the classifier reads the position predicting the word
    attribution = words(train_split, _subset(train_all, a.attribution.max_sentences, seed))
    attribution.samples = cap_per_tag(attribution.samples, a.attribution.max_samples_per_tag, seed)
    return PosData(
        tag_names,
        attribution,
        train=words(train_split, _subset(train_all, a.classifier.max_train_sentences, seed + 1), need_context=before),
        test=words(test_split, _subset(test_all, a.classifier.max_test_sentences, seed + 2), need_context=before),
        lesion=words(test_split, _subset(test_all, a.lesion.max_sentences, seed + 3)),
        n_shared=n_shared,
    )


def _treebank(cfg, train_split: str, test_split: str) -> tuple[list, list, int]:
    """All sentences of both splits, and how many test sentences were dropped as verbatim train sentences."""
    a = cfg.analysis
    data_dir = a.treebank.dir or str(Path(cfg.paths.data_dir) / "ud_english_ewt")
    tb = dict(
        pattern=str(a.treebank.pattern),
        source=str(a.treebank.source),
        hub_name=str(a.treebank.hub_name),
        hub_config=str(a.treebank.hub_config),
    )
    train_all = load_treebank(train_split, data_dir, **tb)
    test_all = load_treebank(test_split, data_dir, **tb)
    n_shared = 0
    if test_split != train_split:  # test on sentences the key neurons and classifier never saw
        test_all, n_shared = drop_shared_sentences(test_all, train_all)
    return train_all, test_all, n_shared


def _subset(sentences: list, limit: int | None, seed: int) -> list:
    """A seeded random subset of ``limit`` sentences, in file order (the files are ordered by genre)."""
    if limit is None or limit >= len(sentences):
        return list(sentences)
    rng = np.random.default_rng(seed)
    return [sentences[i] for i in np.sort(rng.choice(len(sentences), size=int(limit), replace=False))]
