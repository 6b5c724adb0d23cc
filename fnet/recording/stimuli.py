"""Stimuli as in Liu et al. (2025): per data set, two disjoint seeded samples of texts (template, individual).

The paper ran 100 random "template" texts and 100 separate "individual" texts per data set (AG News,
WikiText-2, MathQA, CodeNet) through a model. :func:`sample_stimuli` draws them from a list of texts;
:func:`load_stimulus_sets` loads each data set's source (:mod:`fnet.recording.sources`) and samples it (it is
what ``conf/data/*.yaml`` instantiates).
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from fnet.compat import plain
from fnet.recording.sources import SOURCES, load_source, valid_sources
from fnet.recording.texts import StimulusSet, Text

__all__ = ["load_stimulus_sets", "sample_stimuli"]


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _as_records(texts: Sequence[Text | str]) -> list[Text]:
    records = []
    for index, item in enumerate(texts):
        if isinstance(item, Text):
            records.append(item)
        elif isinstance(item, str):
            records.append(Text(id=f"text-{index}", text=item, source="texts"))
        else:
            raise ValueError(f"text at index {index} is {type(item).__name__}; expected a Text or a string")
    return records


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, not {value!r}")
    return value


def sample_stimuli(
    texts: Sequence[Text | str], *, n_template: int, n_individual: int, seed: int, min_chars: int = 1
) -> tuple[list[Text], list[Text]]:
    """Draw ``n_template`` + ``n_individual`` distinct texts at random (seeded), as two disjoint lists.

    ``texts`` may be Text records or plain strings (the user's own list). An empty or
    whitespace-only text raises ValueError naming its index; texts shorter than ``min_chars``
    (after stripping) are not eligible. The same texts and seed always give the same samples.

    Parameters
    ----------
    texts : Sequence of Text or str
        The texts to draw from.
    n_template : int
        Size of the template sample.
    n_individual : int
        Size of the individual sample.
    seed : int
        Seed of the draw.
    min_chars : int
        Fewest characters (after stripping) of an eligible text (default 1).

    Returns
    -------
    template : list of Text
        ``n_template`` texts.
    individual : list of Text
        ``n_individual`` texts, none of them in ``template``.
    """
    n_template = _count(n_template, "n_template")
    n_individual = _count(n_individual, "n_individual")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, not {seed!r}")
    min_chars = _count(min_chars, "min_chars")
    records = _as_records(texts)
    seen_ids: set[str] = set()
    for index, record in enumerate(records):
        if not record.text.strip():
            raise ValueError(
                f"text at index {index} (id {record.id!r}) is empty or whitespace-only; remove it or give it content"
            )
        if record.id in seen_ids:
            raise ValueError(f"text at index {index} repeats id {record.id!r}; ids must be unique")
        seen_ids.add(record.id)

    eligible = [r for r in records if len(r.text.strip()) >= min_chars]
    wanted = n_template + n_individual
    if wanted > len(eligible):
        excluded = len(records) - len(eligible)
        note = f" ({excluded} of {len(records)} are shorter than min_chars={min_chars})" if excluded else ""
        raise ValueError(
            f"asked for {n_template} template + {n_individual} individual = {wanted} texts, but only "
            f"{len(eligible)} are available{note}; lower n_template/n_individual or use a larger source"
        )
    picks = random.Random(seed).sample(range(len(eligible)), wanted)
    template = [eligible[i] for i in picks[:n_template]]
    individual = [eligible[i] for i in picks[n_template:]]
    return template, individual


# --------------------------------------------------------------------------------------------
# Data sets from a config (conf/data/*.yaml)
# --------------------------------------------------------------------------------------------


_PER_SET_SAMPLING = ("n_template", "n_individual", "seed", "min_chars")


def load_stimulus_sets(
    datasets: Mapping[str, Mapping[str, Any] | None], n_template: int = 10, n_individual: int = 10, seed: int = 0
) -> dict[str, StimulusSet]:
    """Load and sample every data set in ``datasets`` (name -> options).

    Each options mapping holds ``source`` (defaults to the data set's name when that is a source,
    or to ``texts`` when a ``texts`` list is given), the source's loader options, ``max_chars``,
    and optionally per-set overrides of ``n_template``, ``n_individual``, ``seed`` and
    ``min_chars``. Returns name -> StimulusSet, in the order given.

    Parameters
    ----------
    datasets : Mapping of str to Mapping or None
        Data set name -> options (see above).
    n_template : int
        Template texts per data set, unless a set overrides it (default 10).
    n_individual : int
        Individual texts per data set, unless a set overrides it (default 10).
    seed : int
        Sampling seed, unless a set overrides it (default 0).

    Returns
    -------
    dict of str to StimulusSet
        One per data set, in the order given.
    """
    datasets = plain(datasets)
    if not isinstance(datasets, Mapping) or not datasets:
        raise ValueError("datasets must be a non-empty mapping of data set name -> options")
    sets: dict[str, StimulusSet] = {}
    for name, raw_options in datasets.items():
        options = dict(plain(raw_options) or {})
        source = options.pop("source", None)
        if source is None:
            if "texts" in options:
                source = "texts"
            elif name in SOURCES and SOURCES[name].argument != "required":
                source = name
            else:
                raise ValueError(f"data set {name!r} has no 'source'; valid sources: {', '.join(valid_sources())}")
        sampling = {key: options.pop(key) for key in _PER_SET_SAMPLING if key in options}
        n_t = sampling.get("n_template", n_template)
        n_i = sampling.get("n_individual", n_individual)
        set_seed = sampling.get("seed", seed)
        min_chars = sampling.get("min_chars", 1)
        try:
            texts, info = load_source(source, options)
            template, individual = sample_stimuli(
                texts, n_template=n_t, n_individual=n_i, seed=set_seed, min_chars=min_chars
            )
        except ValueError as error:
            raise ValueError(f"data set {name!r} (source {source!r}): {error}") from error
        provenance = {
            **info,
            "options": options,
            "seed": set_seed,
            "n_template": len(template),
            "n_individual": len(individual),
            "n_available": len(texts),
            "min_chars": min_chars,
        }
        sets[name] = StimulusSet(name=name, template=template, individual=individual, provenance=provenance)
    return sets
