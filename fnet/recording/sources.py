"""Where stimulus texts come from: one loader per source name, and :func:`load_texts`.

Sources: the built-in corpus shipped with fnet (``builtin:<genre>``, works offline); offline copies of the
paper's data sets (``wikitext2``, ``ag_news``, ``codenet_java``) under the data root; the Hugging Face hub
(``mathqa``, ``hf:<hub name>``, or ``from_hub=True`` for the named sets); a local file (``file:<path>``: .txt
blocks, .jsonl/.json, .csv/.tsv) or an explicit list (``texts``). :data:`SOURCES` lists them.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fnet.recording.corpora import Loaded, load_ag_news, load_codenet_java, load_mathqa, load_wikitext2
from fnet.recording.texts import CORPUS_DIR, MATHQA_HUB, REPO_ROOT, Text, hub_rows, join_fields
from fnet.scoring.prompts import PromptFields
from fnet.scoring.splits import fine_tuning_splits
from fnet.scoring.tasks import get_task

__all__ = [
    "SOURCES",
    "SourceSpec",
    "builtin_genres",
    "load_source",
    "load_texts",
    "trim_at_word_boundary",
    "valid_sources",
]


# --------------------------------------------------------------------------------------------
# Source loaders. Each takes the part of the source string after ':' (or None) and keyword
# options, and returns (texts, info). Cleaning (strip, drop empty/duplicate, trim) happens once in
# load_source for all of them. The paper's named data sets' loaders are in fnet.recording.corpora.
# --------------------------------------------------------------------------------------------


def builtin_genres() -> list[str]:
    """Genres of the built-in corpus (one ``<genre>.jsonl`` file each).

    Returns
    -------
    list of str
        The genre names, sorted.
    """
    return sorted(p.stem for p in CORPUS_DIR.glob("*.jsonl"))


def _load_builtin(genre: str | None) -> Loaded:
    genres = builtin_genres()
    if not genres:  # not a wrong name: the package's data files are not where they belong
        raise FileNotFoundError(
            f"fnet's built-in corpus is not installed: {CORPUS_DIR} holds no <genre>.jsonl files, so this "
            "installation of fnet is incomplete (the corpus ships inside the fnet package); reinstall fnet from a "
            "checkout of its repository (pip install -e .) or use another source (file:<path>, wikitext2, ...)"
        )
    if genre is not None and genre not in genres:
        raise ValueError(
            f"unknown built-in genre {genre!r}; valid genres: {', '.join(genres)} (use 'builtin' for all of them)"
        )
    texts: list[Text] = []
    for name in [genre] if genre else genres:
        path = CORPUS_DIR / f"{name}.jsonl"
        # Plain json, not the datasets json loader: the corpus is tiny and the default analysis
        # should not pay for importing datasets or writing an Arrow cache.
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                try:
                    texts.append(Text(id=str(record["id"]), text=str(record["text"]), source=f"builtin:{name}"))
                except KeyError as error:
                    raise ValueError(f"{path}:{line_number}: built-in record lacks {error}") from error
    path_info = CORPUS_DIR / f"{genre}.jsonl" if genre else CORPUS_DIR
    return texts, {"path": str(path_info), "genres": [genre] if genre else genres}


def _field_list(text_field: str | Sequence[str]) -> list[str]:
    fields = [text_field] if isinstance(text_field, str) else [str(f) for f in text_field]
    if not fields:
        raise ValueError("text_field must name at least one field")
    return fields


def _load_hub(
    hub_name: str,
    *,
    split: str = "train",
    text_field: str | Sequence[str] = "text",
    config: str | None = None,
    data_dir: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
    max_rows: int | None = None,
    separator: str = "\n",
) -> Loaded:
    fields = _field_list(text_field)
    rows, info = hub_rows(
        hub_name,
        split=split,
        fields=fields,
        config=config,
        data_dir=data_dir,
        revision=revision,
        streaming=streaming,
        max_rows=max_rows,
    )
    source = f"hf:{hub_name}"
    texts = [
        Text(id=f"{hub_name}/{split}/{i}", text=join_fields(row, fields, separator), source=source)
        for i, row in enumerate(rows)
    ]
    return texts, info


_TEXT_FILE_SUFFIXES = {".txt", ".md", ".text"}
_JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_CSV_SUFFIXES = {".csv", ".tsv"}


def _resolve_user_path(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path  # relative paths also work from the repo root
    if not path.exists():
        raise FileNotFoundError(f"source 'file:{raw}': no such file {path.resolve()}")
    return path


def _blank(path: Path) -> bool:
    """Whether a file holds nothing but whitespace (read in blocks: a large file stops at its first text)."""
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            if block.strip():
                return False
    return True


def _load_file(
    raw_path: str, *, text_field: str | Sequence[str] = "text", id_field: str | None = None, separator: str = "\n"
) -> Loaded:
    path = _resolve_user_path(raw_path)
    suffix = path.suffix.lower()
    source = f"file:{raw_path}"
    if suffix in _TEXT_FILE_SUFFIXES:
        # Parsed by hand: the datasets text loader's sample_by="paragraph" splits only on an
        # exact "\n\n" and keeps whitespace-only lines inside blocks; here any blank line separates.
        content = path.read_text(encoding="utf-8")
        blocks = re.split(r"\n[ \t\r\f\v]*\n", content)
        texts = [Text(id=f"{path.name}/{i}", text=block, source=source) for i, block in enumerate(blocks)]
        return texts, {"path": str(path), "format": "text blocks"}
    if suffix not in _JSON_SUFFIXES | _CSV_SUFFIXES:
        raise ValueError(
            f"source {source!r}: unsupported file type {suffix or '(none)'}; use one of "
            f"{', '.join(sorted(_TEXT_FILE_SUFFIXES | _JSON_SUFFIXES | _CSV_SUFFIXES))}"
        )
    if _blank(path):  # datasets' json/csv loaders fail on it with a bare StopIteration()
        kind = {
            ".json": "a list of JSON records",
            ".csv": "a header line and one row per text",
            ".tsv": "a header line and one row per text",
        }.get(suffix, "one JSON record per line")
        raise ValueError(f"source {source!r}: {path} is empty; a {suffix} stimulus file holds {kind}")
    import datasets as hf_datasets

    fields = _field_list(text_field)
    if suffix in _JSON_SUFFIXES:
        table = hf_datasets.load_dataset("json", data_files=str(path), split="train")
    else:
        table = hf_datasets.load_dataset(
            "csv", data_files=str(path), split="train", sep="\t" if suffix == ".tsv" else ","
        )
    wanted = fields + ([id_field] if id_field else [])
    missing = [f for f in wanted if f not in table.column_names]
    if missing:
        raise ValueError(
            f"source {source!r}: no column(s) {missing}; columns are {table.column_names} "
            f"(choose one with text_field=... / id_field=...)"
        )
    texts = []
    for i, row in enumerate(table.select_columns(wanted)):
        text_id = str(row[id_field]) if id_field else f"{path.name}/{i}"
        texts.append(Text(id=text_id, text=join_fields(row, fields, separator), source=source))
    return texts, {"path": str(path), "format": suffix.lstrip("."), "fields": fields}


def _load_explicit(_argument: str | None, *, texts: Sequence[str | Mapping[str, Any]]) -> Loaded:
    """A list given by the user: strings, or mappings with 'text' (and optionally 'id')."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise ValueError("texts must be a list of strings")
    records = []
    for index, item in enumerate(texts):
        if isinstance(item, Mapping):
            text, text_id = item.get("text"), item.get("id", f"text-{index}")
        else:
            text, text_id = item, f"text-{index}"
        if not isinstance(text, str):
            raise ValueError(f"explicit text at index {index} is {type(text).__name__}, not a string")
        if not text.strip():
            raise ValueError(
                f"explicit text at index {index} is empty or whitespace-only; remove it or give it content"
            )
        records.append(Text(id=str(text_id), text=text, source="texts"))
    return records, {"count_given": len(records)}


def _load_task(
    name: str,
    *,
    split: str = "train",
    split_seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    data_dir: str | None = None,
) -> Loaded:
    """A task's rows in its zero-shot prompt (the published evaluation built each task's networks this way):
    by default the training part of the offline 70/10/20 split, i.e. the rows a fine-tuned model learned from."""
    task = get_task(name)
    parts, info = fine_tuning_splits(task, data_dir, fractions=fractions, seed=split_seed)
    if split not in parts:
        raise ValueError(f"task:{name} split={split!r} is not valid; choose one of {sorted(parts)}")
    template = task.prompt["template"]
    records = [
        Text(
            id=f"{task.name}-{row['index']}",
            text=template.format_map(PromptFields({k: v for k, v in row.items() if v is not None})),
            source=f"task:{task.name}",
        )
        for row in parts[split]
    ]
    return records, {"task": task.name, "split": split, "split_rule": info.get("rule"), "prompt": template}


@dataclass(frozen=True)
class SourceSpec:
    """How a source name is loaded. ``argument`` says what may follow ``name:``."""

    loader: Callable[..., Loaded]
    argument: str  # "none", "optional" or "required"
    usage: str


SOURCES: dict[str, SourceSpec] = {
    "builtin": SourceSpec(_load_builtin, "optional", "builtin or builtin:<genre> - the corpus shipped with fnet"),
    "wikitext2": SourceSpec(
        load_wikitext2, "none", "wikitext2 - local wikitext2/{valid,test}.txt paragraphs (from_hub: true for the hub)"
    ),
    "ag_news": SourceSpec(
        load_ag_news, "none", "ag_news - local ag_news/test.csv, title + description (from_hub: true for the hub)"
    ),
    "codenet_java": SourceSpec(
        load_codenet_java, "none", "codenet_java - local folder of .java files, one file a text"
    ),
    "mathqa": SourceSpec(load_mathqa, "none", f"mathqa - hub only ({MATHQA_HUB}), Problem + Rationale"),
    "hf": SourceSpec(_load_hub, "required", "hf:<hub name> - any hub data set (split, text_field, config)"),
    "file": SourceSpec(_load_file, "required", "file:<path> - local .txt blocks, .jsonl/.json or .csv/.tsv"),
    "texts": SourceSpec(_load_explicit, "none", "texts - an explicit list given with texts: [...]"),
    "task": SourceSpec(
        _load_task, "required", "task:<name> - a task's training rows in its prompt (split, split_seed, fractions)"
    ),
}

# Options every source accepts; they are applied after loading.
COMMON_OPTIONS = ("max_chars",)


def valid_sources() -> list[str]:
    """Human-readable list of accepted source strings (used in error messages).

    Returns
    -------
    list of str
        The source strings (``builtin:<genre>`` per genre, ``file:<path>``, ``hf:<hub name>``, ...).
    """
    genres = builtin_genres()
    names = []
    for name, spec in SOURCES.items():
        if name == "builtin":
            names += ["builtin"] + [f"builtin:{g}" for g in genres]
        elif spec.argument == "required":
            names.append(f"{name}:<{'hub name' if name == 'hf' else 'path'}>")
        else:
            names.append(name)
    return names


def _parse_source(source: str) -> tuple[str, SourceSpec, str | None]:
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty string; valid sources: {', '.join(valid_sources())}")
    name, colon, argument = source.strip().partition(":")
    spec = SOURCES.get(name)
    if spec is None:
        raise ValueError(f"unknown source {source!r}; valid sources: {', '.join(valid_sources())}")
    if colon and spec.argument == "none":
        raise ValueError(
            f"source {name!r} takes nothing after ':' (got {source!r}); valid sources: {', '.join(valid_sources())}"
        )
    if spec.argument == "required" and not argument:
        raise ValueError(f"source {name!r} needs a value after ':' ({spec.usage})")
    return name, spec, (argument or None)


def _check_options(name: str, loader: Callable[..., Loaded], options: Mapping[str, Any]) -> None:
    accepted = [p.name for p in inspect.signature(loader).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"source {name!r} does not take option(s) {unknown}; it takes {accepted + list(COMMON_OPTIONS)}"
        )
    required = [
        p.name
        for p in inspect.signature(loader).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in options
    ]
    if required:
        raise ValueError(f"source {name!r} needs option(s) {required}")


def trim_at_word_boundary(text: str, max_chars: int | None) -> str:
    """Shorten ``text`` to at most ``max_chars`` characters, cutting at the last whitespace
    (a single word longer than the limit is cut inside the word).

    Parameters
    ----------
    text : str
        The text.
    max_chars : int or None
        Most characters kept; None keeps the whole text.

    Returns
    -------
    str
        The shortened text, trailing whitespace stripped (``text`` itself when it fits).
    """
    if max_chars is None or len(text) <= max_chars:
        return text
    if max_chars < 1:
        raise ValueError(f"max_chars must be a positive integer, not {max_chars!r}")
    cut = text[:max_chars]
    if not text[max_chars].isspace():
        last_gap = re.search(r"\s+\S*$", cut)
        if last_gap and last_gap.start() > 0:
            cut = cut[: last_gap.start()]
    return cut.rstrip()


def load_source(source: str, options: Mapping[str, Any]) -> Loaded:
    """``(texts, info)`` of one source string with its options: loaded, cleaned (stripped, empty and duplicate
    texts dropped, trimmed to ``max_chars``), with what was dropped in ``info``."""
    name, spec, argument = _parse_source(source)
    options = dict(options)
    max_chars = options.pop("max_chars", None)
    if max_chars is not None and (not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 1):
        raise ValueError(f"max_chars must be a positive integer or null, not {max_chars!r}")
    _check_options(name, spec.loader, options)
    raw, info = spec.loader(argument, **options)

    texts: list[Text] = []
    seen_text: set[str] = set()
    seen_id: set[str] = set()
    dropped_empty = dropped_duplicate = trimmed = 0
    for record in raw:
        body = record.text.strip()
        if not body:
            dropped_empty += 1  # only dataset sources get here: explicit lists reject empties
            continue
        if body in seen_text:
            dropped_duplicate += 1  # identical texts would break template/individual disjointness
            continue
        if record.id in seen_id:
            raise ValueError(f"source {source!r}: duplicate text id {record.id!r}")
        seen_text.add(body)
        seen_id.add(record.id)
        short = trim_at_word_boundary(body, max_chars)
        trimmed += short != body
        texts.append(dataclasses.replace(record, text=short))
    info = {
        "source": source,
        **info,
        "n_loaded": len(raw),
        "n_dropped_empty": dropped_empty,
        "n_dropped_duplicate": dropped_duplicate,
        "max_chars": max_chars,
        "n_trimmed": trimmed,
    }
    return texts, info


def load_texts(source: str, **options: Any) -> list[Text]:
    """All texts of one source, stripped, with empty and duplicate texts dropped.

    ``source`` is one of :func:`valid_sources` (``builtin:news``, ``wikitext2``, ``hf:fancyzhx/ag_news``,
    ``file:stimuli.jsonl``, ...). ``options`` are that source's keyword options (``split``,
    ``text_field``, ``from_hub``, ``path``, ...) plus ``max_chars`` (trim long texts at a word boundary).

    Parameters
    ----------
    source : str
        The source string.
    **options : Any
        The source's options and ``max_chars``.

    Returns
    -------
    list of Text
        The cleaned texts.
    """
    texts, _info = load_source(source, options)
    return texts
