"""Checks of the POS analysis's data and options (kept apart from the analysis's steps)."""

from __future__ import annotations

from typing import Sequence

from fnet.attribution.conllu import Sentence

__all__ = ["check_lesion_tags", "drop_shared_sentences"]


def drop_shared_sentences(sentences: Sequence[Sentence], other: Sequence[Sentence]) -> tuple[list[Sentence], int]:
    """``sentences`` without those whose word forms also occur, verbatim, as a sentence of ``other``, and how many
    were dropped. UD English-EWT repeats 73 dev sentences in test; the POS classifier trains on dev, so those
    would be scored on sentences it was trained on."""
    seen = {tuple(w.form for w in s.words) for s in other}
    kept = [s for s in sentences if tuple(w.form for w in s.words) not in seen]
    return kept, len(sentences) - len(kept)


def check_lesion_tags(wanted: Sequence[str] | None, tag_names: Sequence[str]) -> None:
    """Raise when ``analysis.lesion.tags`` names a tag the treebank does not have (it would be skipped silently)."""
    unknown = sorted(set(wanted or ()) - set(tag_names))
    if unknown:
        raise ValueError(f"analysis.lesion.tags: unknown tag(s) {unknown}; valid tags: {list(tag_names)}")
