"""POS samples: treebank sentences rebuilt as text and tokenized, each word's first token carrying its UPOS tag.

A *sample* is one word of one sentence with at least one token before it: the model reads the sentence up to
the token before the word's first token and predicts that first token (Saki Norouzi, Masjedi & Hitzler 2025).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from fnet.attribution.conllu import UPOS_TAGS, Sentence, Word, sentence_text

__all__ = ["AlignedSentence", "align_words", "align_sentences", "WordSamples", "word_samples", "cap_per_tag"]


# --------------------------------------------------------------------------------------------------------------
# Words -> tokens
# --------------------------------------------------------------------------------------------------------------
@dataclass
class AlignedSentence:
    """A sentence as the model sees it.

    Parameters
    ----------
    sent_id, text
        the sentence's id and its rebuilt text.
    input_ids
        the token ids of ``text`` (special tokens included, as the tokenizer adds them).
    first_token
        per word, the index in ``input_ids`` of the word's first token; -1 when the word has no
        token of its own (see :func:`align_words`) or was cut off by ``max_length``.
    tags
        per word, its UPOS tag.
    """

    sent_id: str
    text: str
    input_ids: list[int]
    first_token: list[int]
    tags: list[str]

    def token_tags(self) -> list[str | None]:
        """Per token: the tag of the word it starts, or None (later tokens of a word, special tokens, spaces)."""
        out: list[str | None] = [None] * len(self.input_ids)
        for token, tag in zip(self.first_token, self.tags):
            if token >= 0:
                out[token] = tag
        return out


def align_words(tokenizer, words: Sequence[Word], max_length: int | None = None) -> tuple[str, list[int], list[int]]:
    """Tokenize a sentence rebuilt from its words and find each word's first token.

    The text is rebuilt with :func:`fnet.attribution.conllu.sentence_text` (``SpaceAfter=No`` respected) and tokenized
    with the tokenizer's offset mapping (a fast tokenizer is required). With ``(a, b)`` a token's character span,
    ``(s, e)`` the word's span and ``p`` the end of the previous word (0 for the first word), the word's first
    token is the first token with

        a >= p  and  a < e  and  b > s     (and b > a: special tokens have empty spans)

    i.e. the first token that touches the word's characters and does not start inside an earlier word. So:

    * a token that merges the space before the word with the word's start (GPT-2/Llama-3 style ``Ġword``, whose
      span starts at the space whether or not the tokenizer trims offsets) is the word's first token and
      carries the word's tag;
    * a token made only of whitespace (``Ġ`` before digits) touches no word and carries no tag;
    * a word whose start is inside a token that began in the previous word (e.g. ``.`` merged into ``area.``)
      has no token of its own: it gets -1 and is left out of samples. If a token started earlier but a later
      one starts inside the word (``didn't`` = ``did`` + ``n't`` tokenized ``Ġdidn`` + ``'t``), that later
      token (``'t``) is the word's first token.

    Returns ``(text, input_ids, first_token)`` with ``first_token[i]`` in ``[0, len(input_ids))`` or -1.

    Parameters
    ----------
    tokenizer
        a fast tokenizer (offset mapping).
    words
        the sentence's words.
    max_length
        truncate to this many tokens; default no truncation.

    Returns
    -------
    text : str
        the rebuilt sentence.
    input_ids : list of int
        its token ids.
    first_token : list of int
        per word, the index of its first token, or -1.
    """
    text, spans = sentence_text(words)
    kwargs: dict[str, Any] = {"return_offsets_mapping": True, "add_special_tokens": True}
    if max_length is not None:
        kwargs.update(truncation=True, max_length=int(max_length))
    try:
        encoded = tokenizer(text, **kwargs)
    except NotImplementedError as err:
        raise ValueError("word-to-token alignment needs a fast tokenizer (offset mapping)") from err
    input_ids = list(encoded["input_ids"])
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    first_token: list[int] = []
    previous_end = 0
    cursor = 0  # tokens before it start inside earlier words or end before the current word
    for start, end in spans:
        found = -1
        for j in range(cursor, len(offsets)):
            a, b = offsets[j]
            if b <= a:  # special token or empty span
                continue
            if a >= end:  # past the word
                break
            if a >= previous_end and b > start:
                found = j
                break
        first_token.append(found)
        if found >= 0:
            cursor = found + 1
        previous_end = end
    return text, input_ids, first_token


def align_sentences(tokenizer, sentences: Sequence[Sentence], max_length: int | None = None) -> list[AlignedSentence]:
    """Each sentence aligned to the tokenizer with :func:`align_words`: its text, token ids and the first token
    of every word (``max_length`` caps the tokens), with the sentence id and tags kept.

    Parameters
    ----------
    tokenizer
        a fast tokenizer (offset mapping).
    sentences
        the sentences (:mod:`fnet.attribution.conllu`).
    max_length
        truncate each sentence to this many tokens; default no truncation.

    Returns
    -------
    list of AlignedSentence
        one per sentence, in order.
    """
    out = []
    for sentence in sentences:
        text, input_ids, first_token = align_words(tokenizer, sentence.words, max_length)
        out.append(AlignedSentence(sentence.sent_id, text, input_ids, first_token, sentence.tags))
    return out


# --------------------------------------------------------------------------------------------------------------
# Samples (one per aligned word)
# --------------------------------------------------------------------------------------------------------------
@dataclass
class WordSamples:
    """Aligned words as flat arrays (one entry per sample).

    Parameters
    ----------
    sentence
        [n] index into the aligned sentence list.
    word
        [n] word index within the sentence.
    token
        [n] index of the word's first token.
    tag
        [n] tag id (index into ``tag_names``).
    tag_names
        the tag vocabulary.
    """

    sentence: np.ndarray
    word: np.ndarray
    token: np.ndarray
    tag: np.ndarray
    tag_names: list[str] = field(default_factory=lambda: list(UPOS_TAGS))

    def __len__(self) -> int:
        return int(self.sentence.shape[0])

    def subset(self, index: np.ndarray) -> "WordSamples":
        return WordSamples(self.sentence[index], self.word[index], self.token[index], self.tag[index], self.tag_names)

    def counts(self) -> np.ndarray:
        """Samples per tag: [n_tags] int."""
        return np.bincount(self.tag, minlength=len(self.tag_names))


def word_samples(
    aligned: Sequence[AlignedSentence], tag_names: Sequence[str], *, need_context: bool = True
) -> WordSamples:
    """Every aligned word (``first_token >= 0``) as a sample. ``need_context``: only words with a token before
    their first token (a prediction needs a prefix; a tokenizer without BOS gives the first word none).
    Tags not in ``tag_names`` are an error.

    Parameters
    ----------
    aligned
        the aligned sentences.
    tag_names
        the tag vocabulary (tag ids index it).
    need_context
        keep only words with a token before their first token (default True).

    Returns
    -------
    WordSamples
        one sample per kept word, in sentence and word order.
    """
    index = {t: i for i, t in enumerate(tag_names)}
    rows = []
    for s, sentence in enumerate(aligned):
        for w, (token, tag) in enumerate(zip(sentence.first_token, sentence.tags)):
            if token < 0 or (need_context and token < 1):
                continue
            if tag not in index:
                raise ValueError(f"sentence {sentence.sent_id}: tag {tag!r} is not in the tag list {list(tag_names)}")
            rows.append((s, w, token, index[tag]))
    array = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    return WordSamples(array[:, 0], array[:, 1], array[:, 2], array[:, 3], list(tag_names))


def cap_per_tag(samples: WordSamples, max_per_tag: int | None, seed: int = 0) -> WordSamples:
    """At most ``max_per_tag`` samples per tag, drawn uniformly (seeded); rare tags keep all theirs. Keeps the
    original order. ``None`` = no cap.

    Parameters
    ----------
    samples
        the samples.
    max_per_tag
        most samples per tag; None keeps all.
    seed
        seed of the draw (default 0).

    Returns
    -------
    WordSamples
        the kept samples (``samples`` itself when ``max_per_tag`` is None).
    """
    if max_per_tag is None:
        return samples
    rng = np.random.default_rng(seed)
    keep = []
    for tag in range(len(samples.tag_names)):
        rows = np.flatnonzero(samples.tag == tag)
        if rows.size > max_per_tag:
            rows = rng.choice(rows, size=int(max_per_tag), replace=False)
        keep.append(rows)
    return samples.subset(np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64))
