"""Part-of-speech tagged sentences: a CoNLL-U reader and the UD English-EWT loader (local files or the hub).

A sentence is kept as its *syntactic words* with their Universal POS tag (UPOS) and whether a space follows
them in the original text (CoNLL-U ``MISC`` column, ``SpaceAfter=No``), so the surface text can be rebuilt
exactly and every character of it belongs to a known word (see :func:`sentence_text`).

CoNLL-U details handled here:

* multiword-token lines (``ID`` is a range ``4-5``, e.g. ``didn't`` = ``did`` + ``n't``) carry no tag and are
  skipped; the words they cover are kept. Inside a multiword token there is no space between the words, and the
  range line's ``SpaceAfter=No`` (the only place UD puts it for such tokens) applies to its last word.
* empty nodes (``ID`` like ``8.1``, enhanced-dependency copies) are not part of the text and are skipped.
* the ``# text =`` comment is kept for checking; ``# sent_id =`` names the sentence.

Why hand-written: the ``conllu`` package would parse the lines, but it is not a dependency and we need exactly
the three fields above plus the multiword-token spacing rule, which is a dozen lines.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

__all__ = [
    "UPOS_TAGS",
    "Word",
    "Sentence",
    "parse_conllu",
    "read_conllu",
    "sentence_text",
    "load_treebank",
    "treebank_file",
]

#: The 17 Universal POS tags (UD v2), in the order of the UD documentation.
UPOS_TAGS = (
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM",
    "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
)  # fmt: skip


@dataclass(frozen=True)
class Word:
    """One syntactic word: its form, UPOS tag, and whether a space follows it in the sentence text."""

    form: str
    upos: str
    space_after: bool = True


@dataclass
class Sentence:
    """A tagged sentence. ``text`` is the ``# text =`` comment ('' when the file has none)."""

    sent_id: str
    words: list[Word] = field(default_factory=list)
    text: str = ""

    @property
    def tags(self) -> list[str]:
        return [w.upos for w in self.words]

    def rebuilt_text(self) -> str:
        return sentence_text(self.words)[0]


def _space_after(misc: str) -> bool:
    return "SpaceAfter=No" not in misc.split("|")


def parse_conllu(lines: Iterable[str], source: str = "<string>") -> list[Sentence]:
    """Parse CoNLL-U text (an iterable of lines, e.g. an open file or ``text.splitlines()``).

    Returns the sentences with at least one word. Malformed word lines (fewer than 10 tab-separated columns)
    raise ``ValueError`` naming ``source`` and the line number.
    """
    sentences: list[Sentence] = []
    current = Sentence(sent_id="")
    range_end = 0  # last word id of the multiword token being read (0: none)
    range_space_after = True
    counter = 0

    def finish() -> None:
        nonlocal current, range_end, counter
        if current.words:
            counter += 1
            if not current.sent_id:
                current.sent_id = f"{Path(source).stem}-{counter:05d}"
            sentences.append(current)
        current = Sentence(sent_id="")
        range_end = 0

    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            finish()
            continue
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            key = key.strip()
            if key == "sent_id":
                current.sent_id = value.strip()
            elif key == "text":
                current.text = value.strip()
            continue
        columns = line.split("\t")
        if len(columns) < 10:
            raise ValueError(f"{source}:{number}: expected 10 tab-separated CoNLL-U columns, got {len(columns)}")
        word_id, form, upos, misc = columns[0], columns[1], columns[3], columns[9]
        if "." in word_id:  # empty node (enhanced dependencies), not in the surface text
            continue
        if "-" in word_id:  # multiword token: remember its span and its spacing, keep the words it covers
            start, end = word_id.split("-", 1)
            range_end = int(end)
            range_space_after = _space_after(misc)
            continue
        index = int(word_id)
        if range_end and index < range_end:
            space_after = False  # words inside a multiword token are written together
        elif range_end and index == range_end:
            space_after = range_space_after and _space_after(misc)
            range_end = 0
        else:
            space_after = _space_after(misc)
        current.words.append(Word(form=form, upos=upos, space_after=space_after))
    finish()
    return sentences


def read_conllu(path: str | os.PathLike) -> list[Sentence]:
    """Read a CoNLL-U file (UTF-8). See :func:`parse_conllu`."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        return parse_conllu(handle, source=str(path))


def sentence_text(words: Sequence[Word]) -> tuple[str, list[tuple[int, int]]]:
    """Rebuild a sentence's text from its words and their ``space_after``; also each word's character span.

    Returns ``(text, spans)`` with ``text[start:end] == word.form`` for each ``(start, end)`` in ``spans``. No
    trailing space is added after the last word.
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    position = 0
    for i, word in enumerate(words):
        spans.append((position, position + len(word.form)))
        parts.append(word.form)
        position += len(word.form)
        if word.space_after and i < len(words) - 1:
            parts.append(" ")
            position += 1
    return "".join(parts), spans


# --------------------------------------------------------------------------------------------------------------
# UD English-EWT: local files first, the hub for users with network
# --------------------------------------------------------------------------------------------------------------
_HUB_SPLITS = {"dev": "validation", "validation": "validation", "test": "test", "train": "train"}


def treebank_file(directory: str | os.PathLike, split: str, pattern: str = "en_ewt-ud-{split}.conllu") -> Path:
    """The CoNLL-U file of ``split`` in ``directory`` (``pattern`` formatted with the split name).

    >>> treebank_file("/data/ud", "dev").as_posix()
    '/data/ud/en_ewt-ud-dev.conllu'
    """
    return Path(directory).expanduser() / pattern.format(split=split)


def _from_hub(hub_name: str, hub_config: str, split: str) -> list[Sentence]:
    """Sentences of a UD treebank from the Hugging Face hub (``datasets``), e.g. ``universal_dependencies`` /
    ``en_ewt``. Rows there hold ``tokens`` (syntactic words), ``upos`` (class ids) and ``misc``."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise RuntimeError("loading a treebank from the hub needs the `datasets` package") from err
    hub_split = _HUB_SPLITS.get(split, split)
    dataset = datasets.load_dataset(hub_name, hub_config, split=hub_split)
    upos_feature = dataset.features["upos"].feature
    names = getattr(upos_feature, "names", None)
    sentences = []
    for i, row in enumerate(dataset):
        tags = [names[t] if names is not None and isinstance(t, int) else str(t) for t in row["upos"]]
        misc = row.get("misc") or [None] * len(tags)
        words = [
            Word(form=form, upos=tag, space_after=_space_after(m or ""))
            for form, tag, m in zip(row["tokens"], tags, misc)
        ]
        if words:
            sentences.append(
                Sentence(
                    sent_id=str(row.get("idx") or f"{hub_config}-{split}-{i:05d}"),
                    words=words,
                    text=row.get("text") or "",
                )
            )
    return sentences


def load_treebank(
    split: str,
    directory: str | os.PathLike | None = None,
    *,
    pattern: str = "en_ewt-ud-{split}.conllu",
    source: str = "auto",
    hub_name: str = "universal_dependencies",
    hub_config: str = "en_ewt",
) -> list[Sentence]:
    """The sentences of one split (``dev``/``test``/``train``) of a UD treebank.

    ``source``: ``local`` reads ``directory/pattern``; ``hub`` loads ``hub_name``/``hub_config`` with ``datasets``
    (needs network); ``auto`` (default) reads the local file when it exists and otherwise tries the hub. A
    failure says where the file was expected and how to get it.
    """
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"unknown treebank source {source!r}; valid: 'auto', 'local', 'hub'")
    path = treebank_file(directory, split, pattern) if directory is not None else None
    if source in ("auto", "local") and path is not None and path.is_file():
        return read_conllu(path)
    if source == "local":
        raise FileNotFoundError(
            f"treebank file {path} not found; put UD English-EWT's en_ewt-ud-{split}.conllu there or set "
            f"FNET_DATA_DIR to the folder holding ud_english_ewt/"
        )
    try:
        return _from_hub(hub_name, hub_config, split)
    except Exception as err:  # noqa: BLE001 - offline, missing dataset, script datasets: one clear message
        raise FileNotFoundError(
            f"no local treebank file ({path}) and loading {hub_name}/{hub_config} split {split!r} from the hub "
            f"failed ({type(err).__name__}: {err}). Offline, put en_ewt-ud-{split}.conllu under "
            f"<data_dir>/ud_english_ewt (FNET_DATA_DIR or paths.data_dir)."
        ) from err
