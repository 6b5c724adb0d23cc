"""The paper's named data sets as stimulus sources (:data:`fnet.recording.sources.SOURCES`): ``wikitext2``,
``ag_news`` and ``codenet_java`` from offline copies under the data root (or the hub with ``from_hub=True``), and
``mathqa`` from the hub.

Each loader takes the part of the source string after ``:`` (nothing, for these) and the source's keyword options,
and returns ``(texts, info)``; :func:`fnet.recording.sources.load_source` cleans the texts for all sources alike.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from fnet.recording.texts import (
    AG_NEWS_HUB,
    CODENET_HUB,
    MATHQA_HUB,
    WIKITEXT2_HUB_CONFIG,
    WIKITEXT_HUB,
    Text,
    hub_rows,
    local_data_path,
)

__all__ = ["AG_NEWS_COLUMNS", "load_wikitext2", "load_ag_news", "load_codenet_java", "load_mathqa"]

Loaded = tuple[list[Text], dict[str, Any]]

_WIKITEXT_HEADING = re.compile(r"^(=(?: =)*) .*? \1$")
_WIKITEXT_SPLITS = {"valid": "valid", "validation": "valid", "test": "test", "train": "train"}


def _wikitext_units(lines: Iterable[str], unit: str) -> list[tuple[int, str]]:
    """Group WikiText lines into (first line number, text) units.

    WikiText stores one paragraph per line, with ``' = Title = '`` article headings, ``' = = Sub = = '``
    section headings and blank lines in between. ``unit='paragraph'``: every non-blank,
    non-heading line is a unit. ``unit='article'``: the paragraphs under one top-level heading,
    joined by newlines.
    """
    units: list[tuple[int, str]] = []
    article_start: int | None = None
    article_parts: list[str] = []

    def close_article() -> None:
        if article_parts:
            units.append((article_start or 0, "\n".join(article_parts)))
        article_parts.clear()

    for line_number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        heading = _WIKITEXT_HEADING.match(line)
        if heading:
            if unit == "article" and heading.group(1) == "=":
                close_article()
                article_start = line_number
            continue
        if unit == "paragraph":
            units.append((line_number, line))
        else:
            if article_start is None:
                article_start = line_number
            article_parts.append(line)
    if unit == "article":
        close_article()
    return units


def load_wikitext2(
    _argument: str | None,
    *,
    split: str = "test",
    unit: str = "paragraph",
    path: str | None = None,
    from_hub: bool = False,
    hub_name: str = WIKITEXT_HUB,
    hub_config: str = WIKITEXT2_HUB_CONFIG,
) -> Loaded:
    """WikiText-2 (source ``wikitext2``): the local ``wikitext2/<split>.txt``, or the hub copy.

    Parameters
    ----------
    _argument : str or None
        What follows ``wikitext2:`` in the source string (nothing is allowed).
    split : str
        ``valid`` (or ``validation``), ``test`` or ``train``.
    unit : str
        ``paragraph`` (one text per paragraph line) or ``article`` (the paragraphs under one top-level heading).
    path : str, optional
        The local file instead of the one under the data root.
    from_hub : bool
        Read the hub copy (``hub_name``, ``hub_config``) instead of the local file.
    hub_name, hub_config : str
        The hub data set and its configuration.

    Returns
    -------
    tuple of (list of Text, dict)
        The texts (ids ``wikitext2/<split>/L<first line>``) and where they came from.
    """
    if unit not in ("paragraph", "article"):
        raise ValueError(f"wikitext2: unit must be 'paragraph' or 'article', not {unit!r}")
    if split not in _WIKITEXT_SPLITS:
        raise ValueError(f"wikitext2: unknown split {split!r}; valid splits: valid, test, train")
    file_split = _WIKITEXT_SPLITS[split]
    if from_hub:
        hub_split = "validation" if file_split == "valid" else file_split
        rows, info = hub_rows(
            hub_name,
            config=hub_config,
            split=hub_split,
            fields=["text"],
            offline_note="Without network use wikitext2 with from_hub: false (the local copy).",
        )
        lines = (row["text"] for row in rows)
        label = f"wikitext2/{hub_split}"
    else:
        file_path = local_data_path(
            f"wikitext2/{file_split}.txt",
            source="wikitext2",
            override=path,
            hub_hint=f"source wikitext2 with from_hub: true ({hub_name}, {hub_config})",
        )
        import datasets as hf_datasets

        # The datasets text loader keeps every line (blank ones too), so row i is line i + 1.
        lines = hf_datasets.load_dataset("text", data_files=str(file_path), split="train")["text"]
        info = {"path": str(file_path), "split": file_split}
        label = f"wikitext2/{file_split}"
    units = _wikitext_units(lines, unit)
    texts = [Text(id=f"{label}/L{line_number}", text=text, source="wikitext2") for line_number, text in units]
    info["unit"] = unit
    return texts, info


AG_NEWS_COLUMNS = ("class", "title", "description")


def load_ag_news(
    _argument: str | None,
    *,
    split: str = "test",
    path: str | None = None,
    from_hub: bool = False,
    hub_name: str = AG_NEWS_HUB,
) -> Loaded:
    """AG News (source ``ag_news``): title and description of each article, from the local ``ag_news/<split>.csv``
    (no header; columns :data:`AG_NEWS_COLUMNS`) or the hub copy.

    Parameters
    ----------
    _argument : str or None
        What follows ``ag_news:`` in the source string (nothing is allowed).
    split : str
        The split (the local copy holds ``test``).
    path : str, optional
        The local file instead of the one under the data root.
    from_hub : bool
        Read the hub copy (``hub_name``) instead of the local file.
    hub_name : str
        The hub data set.

    Returns
    -------
    tuple of (list of Text, dict)
        The texts (ids ``ag_news/<split>/<row>``) and where they came from.
    """
    if from_hub:
        # The hub copy already joins title and description into its "text" field.
        rows, info = hub_rows(
            hub_name,
            split=split,
            fields=["text"],
            offline_note="Without network use ag_news with from_hub: false (the local test.csv).",
        )
        texts = [Text(id=f"ag_news/{split}/{i}", text=str(row["text"]), source="ag_news") for i, row in enumerate(rows)]
        return texts, info
    file_path = local_data_path(
        f"ag_news/{split}.csv",
        source="ag_news",
        override=path,
        hub_hint=f"source ag_news with from_hub: true, or hf:{hub_name}",
    )
    import datasets as hf_datasets

    # No header row; read every column as a string and keep empty fields as "" (not NaN).
    features = hf_datasets.Features({name: hf_datasets.Value("string") for name in AG_NEWS_COLUMNS})
    table = hf_datasets.load_dataset(
        "csv",
        data_files=str(file_path),
        column_names=list(AG_NEWS_COLUMNS),
        features=features,
        keep_default_na=False,
        split="train",
    )
    texts = []
    for i, (title, description) in enumerate(zip(table["title"], table["description"])):
        title, description = (title or "").strip(), (description or "").strip()
        text = f"{title}. {description}" if title and description else (title or description)
        texts.append(Text(id=f"ag_news/{split}/{i}", text=text, source="ag_news"))
    return texts, {"path": str(file_path), "split": split}


def load_codenet_java(_argument: str | None, *, path: str | None = None, pattern: str = "**/*.java") -> Loaded:
    """CodeNet Java (source ``codenet_java``): one text per file of the local ``codenet_java`` folder.

    Parameters
    ----------
    _argument : str or None
        What follows ``codenet_java:`` in the source string (nothing is allowed).
    path : str, optional
        The folder instead of the one under the data root.
    pattern : str
        Which files of the folder are read (a glob).

    Returns
    -------
    tuple of (list of Text, dict)
        The texts (ids ``codenet_java/<relative path without suffix>``) and where they came from.
    """
    folder = local_data_path(
        "codenet_java",
        source="codenet_java",
        override=path,
        hub_hint=f"hf:{CODENET_HUB} with config: Java, split: train, text_field: code",
    )
    # Read by hand: one file is one text and its path is its id; the datasets text loader
    # (sample_by="document") would give the contents but not which file each row came from.
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    texts = [
        Text(
            id=f"codenet_java/{p.relative_to(folder).with_suffix('').as_posix()}",
            text=p.read_text(encoding="utf-8", errors="replace"),
            source="codenet_java",
        )
        for p in files
    ]
    return texts, {"path": str(folder), "pattern": pattern}


def load_mathqa(
    _argument: str | None, *, split: str = "test", hub_name: str = MATHQA_HUB, separator: str = "\n"
) -> Loaded:
    """MathQA (source ``mathqa``, hub only): each problem and its rationale.

    Parameters
    ----------
    _argument : str or None
        What follows ``mathqa:`` in the source string (nothing is allowed).
    split : str
        The hub split.
    hub_name : str
        The hub data set.
    separator : str
        What joins the problem and the rationale.

    Returns
    -------
    tuple of (list of Text, dict)
        The texts (ids ``mathqa/<split>/<row>``) and where they came from.
    """
    rows, info = hub_rows(
        hub_name,
        split=split,
        fields=["Problem", "Rationale"],
        offline_note=f"mathqa is hub-only ({hub_name}); no offline copy of MathQA exists in the shared data.",
    )
    texts = []
    for i, row in enumerate(rows):
        problem = str(row["Problem"] or "").strip()
        # MathQA rationales are stored wrapped in double quotes: '"explanation : ..."'.
        rationale = str(row["Rationale"] or "").strip().strip('"').strip()
        texts.append(
            Text(id=f"mathqa/{split}/{i}", text=separator.join(p for p in (problem, rationale) if p), source="mathqa")
        )
    return texts, info
