"""The rows of a task: where its data is (offline folder, local file, hub) and the rows read from it.

:func:`load_task_rows` is **the single source of rows** for evaluation and fine-tuning (the row format and the
split rules are in :mod:`fnet.scoring.tasks`, which defines the tasks); :func:`split_provenance` records the rule
that made a split. Split from ``tasks.py`` to keep each module near 500 lines: definitions there, data here.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fnet.paths import project_root
from fnet.scoring.tasks import SPLITS, TaskDataError, TaskSpec, available_tasks, get_task

log = logging.getLogger(__name__)

__all__ = ["resolve_data_dir", "resolve_source", "load_task_rows", "split_provenance"]


# --------------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------------
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The offline data folder: the argument, else ``$FNET_DATA_DIR``, else ``../shared/data`` beside the repo
    (beside the working folder for an installed fnet: :func:`fnet.paths.project_root`)."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("FNET_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return project_root().parent / "shared" / "data"


def _local_path(task: TaskSpec, split: str, data_dir: Path) -> Path:
    local = task.local or {}
    paths = local.get("paths") or {}
    rel = paths.get(split) or local.get("path")
    return data_dir / rel


def resolve_source(task: TaskSpec, data_dir: str | os.PathLike | None = None, split: str | None = None) -> str:
    """``local`` or ``hub``: ``task.source`` unless it is ``auto``; auto = local when the local file exists."""
    if task.source != "auto":
        return task.source
    if task.local is None:
        return "hub"
    path = _local_path(task, split or task.eval_split, resolve_data_dir(data_dir))
    return "local" if path.exists() else "hub"


def split_provenance(task: TaskSpec, split: str, data_dir: str | os.PathLike | None = None) -> dict:
    """Where a split's rows come from, for result files (offline splits of one file say so)."""
    source = resolve_source(task, data_dir, split)
    if source == "hub":
        hub = task.hub or {}
        return {
            "source": "hub",
            "path": hub.get("path"),
            "name": hub.get("name"),
            "split": (hub.get("splits") or {}).get(split, split),
        }
    local = task.local or {}
    out = {"source": "local", "path": str(_local_path(task, split, resolve_data_dir(data_dir)))}
    if not (local.get("paths") or {}).get(split) and local.get("holdout"):
        out["split_rule"] = (
            f"offline split of one file: {split} = "
            + (
                "seeded holdout"
                if split == "train"
                else "rows outside the seeded holdout"
                if split == "validation"
                else "all rows"
            )
            + f" (holdout {local['holdout']})"
        )
    return out


# --------------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------------
def load_task_rows(task: Any, split: str = "validation", data_dir: str | os.PathLike | None = None) -> list[dict]:
    """All rows of a task split with uniform keys (see module docstring); ``split`` in validation/train/test/all.

    Source: ``task.source`` (``auto`` = the local file when it exists, else the hub). A task without a local
    file (QQP) fails offline with a :class:`TaskDataError` that says so.

    Parameters
    ----------
    task : str or Mapping or TaskSpec
        The task (see :func:`get_task`).
    split : str
        ``validation`` (default), ``train``, ``test`` or ``all``.
    data_dir : str or os.PathLike, optional
        The offline data folder (default :func:`resolve_data_dir`).

    Returns
    -------
    list of dict
        The rows, each with its ``index``.
    """
    task = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    data_dir = resolve_data_dir(data_dir)
    source = resolve_source(task, data_dir, split)
    if source == "local":
        rows = _local_rows(task, split, data_dir)
    else:
        rows = _hub_rows(task, split, data_dir)
    for i, row in enumerate(rows):
        row["index"] = i
    return rows


def _local_rows(task: TaskSpec, split: str, data_dir: Path) -> list[dict]:
    if task.local is None:
        raise TaskDataError(f"task {task.name!r} has no local data source; use task.source=hub (needs network)")
    local = task.local
    path = _local_path(task, split, data_dir)
    if not path.exists():
        raise TaskDataError(
            f"task {task.name!r}: local file {path} does not exist (data dir {data_dir}; set FNET_DATA_DIR or "
            f"paths.data_dir, or use task.source=hub with network)"
        )
    records = _read_local_file(path, local)
    rows = [_uniform_row(task, rec, local, f"{path}") for rec in records]
    has_own_file = bool((local.get("paths") or {}).get(split))
    if has_own_file or split == "all" or not local.get("holdout"):
        if split == "train" and not has_own_file:
            raise TaskDataError(f"task {task.name!r} has no offline train split (no local.holdout rule)")
        return rows
    holdout = local["holdout"]
    size = holdout.get("size", 0)
    n_holdout = int(round(size * len(rows))) if isinstance(size, float) and size < 1 else int(size)
    order = np.random.default_rng(int(holdout.get("seed", 0))).permutation(len(rows))
    train_idx = np.sort(order[:n_holdout])
    keep = train_idx if split == "train" else np.sort(order[n_holdout:])
    return [rows[i] for i in keep]


def _read_local_file(path: Path, local: Mapping) -> list[dict]:
    """Raw records of a local file through the ``datasets`` local loaders (SQuAD's nested JSON is flattened by
    hand: ``datasets`` reads its top-level ``data`` list but cannot unnest paragraphs -> questions)."""
    import datasets  # slow to import; only the hub path (machines with network) needs it

    fmt = local.get("format")
    kwargs: dict[str, Any] = {}
    if fmt in ("tsv", "csv"):
        kwargs = dict(
            delimiter="\t" if fmt == "tsv" else ",",
            # the GLUE TSVs contain unbalanced double quotes inside sentences (MRPC, QNLI): quoting must be off for
            # them; the AG News CSV is properly quoted
            quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,
            na_filter=False,  # keep sentences like "NA" or "null" as text
            encoding="utf-8-sig",  # MRPC's header starts with a byte-order mark
        )
        if not local.get("header", True):
            kwargs["header"] = None
            kwargs["column_names"] = list(local["column_names"])
        ds = datasets.load_dataset("csv", data_files=str(path), split="train", **kwargs)
        return ds.to_list()
    if fmt == "text":
        return datasets.load_dataset("text", data_files=str(path), split="train").to_list()
    if fmt == "squad_json":
        articles = datasets.load_dataset("json", data_files=str(path), field="data", split="train").to_list()
        return [
            {
                "id": qa["id"],
                "title": article["title"],
                "context": paragraph["context"],
                "question": qa["question"],
                "answers": [a["text"] for a in qa["answers"]],
            }
            for article in articles
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
        ]
    raise ValueError(f"unknown local format {fmt!r}; valid: tsv, csv, text, squad_json")


def _hub_rows(task: TaskSpec, split: str, data_dir: Path) -> list[dict]:
    if task.hub is None:
        raise TaskDataError(f"task {task.name!r} has no hub source; use task.source=local")
    import datasets  # slow to import; only the hub path (machines with network) needs it

    hub = task.hub
    hub_split = (hub.get("splits") or {}).get(split, split) if split != "all" else None
    if hub_split is None:
        raise TaskDataError(f"task {task.name!r}: split {split!r} has no hub split (hub.splits: {hub.get('splits')})")
    try:
        ds = datasets.load_dataset(hub["path"], hub.get("name"), split=hub_split)
    except Exception as err:  # noqa: BLE001 - network / hub errors of many kinds
        offline = "" if task.local is None else f" and its local file {_local_path(task, split, data_dir)} is absent"
        raise TaskDataError(
            f"task {task.name!r} needs the dataset hub ({hub['path']}/{hub.get('name')}, split {hub_split!r}){offline}, "  # noqa: E501
            f"and loading it failed: {type(err).__name__}: {str(err)[:300]}\n"
            f"{'This task has no offline copy (see ../shared/data/SOURCES.md). ' if task.local is None else ''}"
            f"Run with network, or pick an offline task: "
            f"{[t for t in available_tasks() if get_task(t).local is not None]}"
        ) from err
    records = ds.to_list()
    if task.type == "generation":  # SQuAD on the hub: answers = {"text": [...], "answer_start": [...]}
        records = [dict(r, answers=list(r["answers"]["text"])) for r in records]
    return [_uniform_row(task, rec, hub, f"{hub['path']}/{hub.get('name')}") for rec in records]


def _column_text(record: Mapping, spec: Any, strip: bool = True) -> str | None:
    if spec is None:
        return None
    cols = [spec] if isinstance(spec, str) else list(spec)
    if not strip:  # perplexity text is scored verbatim
        return " ".join(str(record[c]) for c in cols)
    parts = [str(record[c]).strip() for c in cols]
    return " ".join(p for p in parts if p)


def _uniform_row(task: TaskSpec, record: Mapping, source: Mapping, where: str) -> dict:
    if task.type == "generation":  # SQuAD
        return {
            "text_a": record["context"],
            "text_b": record["question"],
            "label": -1,
            "id": str(record["id"]),
            "title": str(record.get("title", "")).replace("_", " "),
            "context": record["context"],
            "question": record["question"],
            "answers": list(record["answers"]),
        }
    columns = source.get("columns") or {}
    missing = [c for spec in columns.values() for c in ([spec] if isinstance(spec, str) else spec) if c not in record]
    if missing:
        raise TaskDataError(f"task {task.name!r} ({where}): columns {missing} not in the data; found {list(record)}")
    strip = task.type != "perplexity"
    row = {
        "text_a": _column_text(record, columns.get("text_a"), strip),
        "text_b": _column_text(record, columns.get("text_b"), strip),
        "label": -1,
    }
    if task.type == "multiple_choice":
        raw = record[columns["label"]]
        label_map = source.get("label_map")
        if label_map:
            lookup = {str(k): int(v) for k, v in label_map.items()}
            if str(raw) not in lookup:
                raise TaskDataError(f"task {task.name!r} ({where}): label {raw!r} not in label_map {label_map}")
            label = lookup[str(raw)]
        else:
            label = int(raw)
        if not 0 <= label < task.n_choices:
            raise TaskDataError(f"task {task.name!r} ({where}): label {label} outside 0..{task.n_choices - 1}")
        row["label"] = label
    return row
