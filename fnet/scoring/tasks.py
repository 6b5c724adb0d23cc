"""Evaluation tasks: definitions read from ``conf/task/*.yaml`` and the rows they score.

A task config (lm-evaluation-harness-like) says where the data is (``hub`` for machines with network, ``local``
for the offline copies in ``../shared/data``), how a row becomes a prompt, which label words answer it, which
integer means which class (GLUE conventions), which metrics score it and where few-shot examples come from.
:class:`TaskSpec` is the validated form; :func:`load_task_rows` is **the single source of rows** for evaluation
and fine-tuning: every row is a dict with the same keys whatever the file format::

    {"index": int,            # position in the split (stable, used to de-duplicate and order results)
     "text_a": str,           # the sentence / premise / question / article / passage
     "text_b": str | None,    # the second sentence of a pair task, else None
     "label": int,            # GLUE-convention class index; -1 where the task has no class (SQuAD, WikiText)
     # SQuAD only:
     "id": str, "title": str, "context": str, "question": str, "answers": list[str]}

Splits. ``validation`` is the scored split and ``train`` the few-shot (or fine-tuning) pool. On the hub these
are real splits (``hub.splits`` maps the names). Offline only a dev/test file exists, so the file is split with a
fixed seed: ``local.holdout`` rows (a seeded permutation's head) form ``train``, never scored, and the rest form
``validation``; ``all`` is the whole file. The split rule is recorded in the rows' provenance
(:func:`split_provenance`).
"""

from __future__ import annotations

import csv
import logging
import os
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fnet.compat import plain
from fnet.paths import conf_dir, project_root

log = logging.getLogger(__name__)

__all__ = [
    "TASK_TYPES",
    "METRICS",
    "TaskSpec",
    "TaskDataError",
    "available_tasks",
    "task_config_dir",
    "load_task_config",
    "get_task",
    "resolve_data_dir",
    "resolve_source",
    "load_task_rows",
    "split_provenance",
    "check_whole_number",
]

TASK_TYPES = ("multiple_choice", "generation", "perplexity")
SCORINGS = ("loglik", "generate", "perplexity")
#: metric name -> what it needs: ``class`` (predicted/true class indices), ``squad`` (texts), ``perplexity``.
METRICS = {
    "accuracy": "class",
    "mcc": "class",
    "f1": "class",  # binary F1 of class 1 (GLUE MRPC/QQP); SQuAD's token F1 when the task is generation
    "exact_match": "squad",
    "perplexity": "perplexity",
}
SPLITS = ("validation", "train", "test", "all")
_ROW_FIELDS = ("text_a", "text_b", "label")
_TEMPLATE_FIELDS = {"text_a", "text_b", "label", "context", "question", "title", "id"}


class TaskDataError(RuntimeError):
    """The rows of a task cannot be loaded (missing offline file, no network for a hub-only task, bad labels)."""


# --------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------
def task_config_dir() -> Path:
    """``conf/task`` of fnet's configs (package data: :func:`fnet.paths.conf_dir`)."""
    return conf_dir() / "task"


def available_tasks() -> list[str]:
    """The task names of ``conf/task`` (files starting with ``_`` hold shared keys, not tasks); a
    ``FileNotFoundError`` names the folder when it holds none (an incomplete installation).

    Returns
    -------
    list of str
        The task names, sorted.

    Examples
    --------
    >>> {"sst2", "squad", "wikitext2"} <= set(available_tasks())
    True
    """
    names = sorted(p.stem for p in task_config_dir().glob("*.yaml") if not p.stem.startswith("_"))  # _base: shared
    if not names:  # not a wrong name: the task configs are not where this fnet looks for them
        raise FileNotFoundError(
            f"no task configs in {task_config_dir()}: this installation of fnet is incomplete (the tasks are the "
            "repository's conf/task/*.yaml, beside the fnet package, not part of a wheel); run from a checkout of "
            "the repository")
    return names


def load_task_config(name: str) -> dict:
    """The composed ``conf/task/<name>.yaml`` config as a plain dict.

    Read with OmegaConf as Hydra composes a config group entry: the file's ``defaults`` list (e.g.
    ``[_base, _self_]``, with ``_self_`` last when it is left out) is merged in order with
    :meth:`OmegaConf.merge <omegaconf.OmegaConf.merge>`, so later entries override earlier ones, mappings merge key
    by key and anything else (lists, scalars, null) is replaced. Not with ``hydra.compose``, which needs the global
    Hydra that a running app holds (and may not start a second one inside it): library code does not depend on the
    Hydra app machinery. tests/test_config.py checks that this gives Hydra's composition for every task.

    Parameters
    ----------
    name : str
        A task name: one of :func:`available_tasks`.

    Returns
    -------
    dict
        The task's fields (see ``conf/task/sst2.yaml``), ready for :meth:`TaskSpec.from_config`.

    Raises
    ------
    ValueError
        For an unknown task name (the message lists the valid ones).
    FileNotFoundError
        When ``conf/task`` holds no task at all (an incomplete installation; the message names the folder).

    Examples
    --------
    >>> cfg = load_task_config("sst2")
    >>> cfg["name"], cfg["choices"], "defaults" in cfg
    ('sst2', ['negative', 'positive'], False)
    >>> cfg["prompt"]["target_delimiter"]  # from _base.yaml, merged under the task's own prompt keys
    ' '
    """
    path = task_config_dir() / f"{name}.yaml"
    if not path.is_file():
        available_tasks()  # an empty folder is an incomplete installation, not a wrong name
        raise ValueError(f"unknown task {name!r}; valid tasks: {available_tasks()} (configs in {task_config_dir()})")
    return OmegaConf.to_container(_compose_entry(path), resolve=True)


def _compose_entry(path: Path) -> DictConfig:
    """``path`` with the entries of its ``defaults`` list (files beside it) merged in order."""
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{path}: a task config must be a mapping, got a {type(cfg).__name__}")
    defaults = list(cfg.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    parts = []
    for entry in defaults:
        if entry == "_self_":
            parts.append(cfg)
        elif isinstance(entry, str) and path.with_name(f"{entry}.yaml").is_file():
            parts.append(_compose_entry(path.with_name(f"{entry}.yaml")))
        else:
            raise ValueError(f"{path}: defaults entry {entry!r} is not a file of {path.parent} (nor _self_)")
    return OmegaConf.merge(*parts)


@dataclass
class TaskSpec:
    """A validated task config. Field meanings: see ``conf/task/sst2.yaml`` (every key is commented there).

    Parameters
    ----------
    name : str
        The task's name.
    type : str
        ``multiple_choice``, ``generation`` or ``perplexity``.
    prompt : dict
        ``template`` (required) and the delimiters.
    hub : dict, optional
        The hub data source.
    local : dict, optional
        The local data source (paths relative to the data dir).
    source : str
        ``auto`` (local when the file exists, else hub), ``local`` or ``hub``.
    description : str
        In words.
    eval_split : str
        The scored split (default ``validation``).
    fewshot_split : str, optional
        The split shots are drawn from (default ``train``).
    target : dict
        Label names (``names``).
    choices : list of str, optional
        The label words; ``choices[i]`` answers label i.
    metric : list of str
        Metrics; the first is the primary one (default ``["accuracy"]``).
    scoring : str
        ``loglik`` (default), ``generate`` or ``perplexity``.
    calibrate : bool
        Subtract content-free choice scores (loglik only; default False).
    chat_template : bool or str
        True, False (default) or ``"auto"``.
    num_fewshot : int
        Shots per prompt (default 0).
    fewshot : dict
        ``seed``, ``sampling`` and ``balanced`` of the shots.
    limit : int, optional
        Score at most this many rows (seeded subsample).
    seed : int
        Subsampling seed (default 0).
    generation : dict
        Generation settings (``max_new_tokens``, ``until``).
    perplexity : dict
        Perplexity settings (``max_length``, ``stride``: see :func:`perplexity_windows`).
    """

    name: str
    type: str
    prompt: dict
    hub: dict | None = None
    local: dict | None = None
    source: str = "auto"
    description: str = ""
    eval_split: str = "validation"
    fewshot_split: str | None = "train"
    target: dict = field(default_factory=dict)
    choices: list[str] | None = None
    metric: list[str] = field(default_factory=lambda: ["accuracy"])
    scoring: str = "loglik"
    calibrate: bool = False
    chat_template: Any = False
    num_fewshot: int = 0
    fewshot: dict = field(default_factory=dict)
    limit: int | None = None
    seed: int = 0
    generation: dict = field(default_factory=dict)
    perplexity: dict = field(default_factory=dict)

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any) -> "TaskSpec":
        raw = plain(cfg)  # a Hydra cfg.task DictConfig, a dict or a TaskSpec's fields
        if not isinstance(raw, Mapping):
            raise TypeError(f"a task config must be a mapping, got {type(cfg).__name__}")
        raw = dict(raw)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"task {raw.get('name')!r}: unknown keys {unknown}; valid keys: {sorted(known)}")
        for key in ("name", "type", "prompt"):
            if raw.get(key) is None:
                raise ValueError(f"task config lacks the required key {key!r}: {raw}")
        spec = cls(**{k: v for k, v in raw.items() if v is not None or k in ("hub", "local", "choices", "limit",
                                                                              "fewshot_split")})
        spec.validate()
        return spec

    def validate(self) -> "TaskSpec":
        where = f"task {self.name!r}"
        if self.type not in TASK_TYPES:
            raise ValueError(f"{where}: type {self.type!r} is not one of {list(TASK_TYPES)}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"{where}: scoring {self.scoring!r} is not one of {list(SCORINGS)}")
        if self.source not in ("auto", "local", "hub"):
            raise ValueError(f"{where}: source {self.source!r} is not one of ['auto', 'local', 'hub']")
        if self.hub is None and self.local is None:
            raise ValueError(f"{where}: needs a `hub` or a `local` data source")
        if self.chat_template not in (True, False, "auto"):
            raise ValueError(f"{where}: chat_template must be true, false or auto, not {self.chat_template!r}")
        for metric in self.metric:
            if metric not in METRICS:
                raise ValueError(f"{where}: unknown metric {metric!r}; valid: {sorted(METRICS)}")
        if "template" not in self.prompt:
            raise ValueError(f"{where}: prompt.template is required")
        fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt["template"]) if f}
        bad = sorted(fields - _TEMPLATE_FIELDS)
        if bad:
            raise ValueError(f"{where}: prompt.template uses unknown fields {bad}; valid: {sorted(_TEMPLATE_FIELDS)}")
        if self.type == "multiple_choice":
            if not self.choices or len(self.choices) < 2:
                raise ValueError(f"{where}: a multiple_choice task needs at least two choices")
            names = self.target.get("names")
            if names is not None and len(names) != len(self.choices):
                raise ValueError(f"{where}: {len(self.choices)} choices but {len(names)} target.names")
            if self.scoring == "perplexity":
                raise ValueError(f"{where}: multiple_choice tasks are scored by loglik or generate")
        if self.type == "generation" and self.scoring != "generate":
            raise ValueError(f"{where}: generation tasks are scored by scoring=generate")
        if self.type == "perplexity" and self.scoring != "perplexity":
            raise ValueError(f"{where}: perplexity tasks are scored by scoring=perplexity")
        if self.calibrate and self.scoring != "loglik":
            raise ValueError(f"{where}: calibrate=true needs scoring=loglik")
        self.num_fewshot = check_whole_number(self.num_fewshot, "task.num_fewshot", minimum=0, where=where)
        if self.num_fewshot and not self.fewshot_split:
            raise ValueError(f"{where}: num_fewshot > 0 needs a fewshot_split")
        self.limit = check_whole_number(self.limit, "task.limit", minimum=1, allow_none=True, where=where)
        self.seed = check_whole_number(self.seed, "task.seed", minimum=0, where=where)
        return self

    # ----------------------------------------------------------------------------------------------------------
    @property
    def n_choices(self) -> int:
        return len(self.choices or [])

    @property
    def primary_metric(self) -> str:
        return self.metric[0]

    @property
    def label_names(self) -> list[str] | None:
        return self.target.get("names")

    def to_dict(self) -> dict:
        return asdict(self)


def check_whole_number(value: Any, key: str, *, minimum: int, allow_none: bool = False, where: str = "") -> int | None:
    """``value`` as an int, or a ValueError naming ``key`` and the valid range (``task.limit=abc`` must not surface
    as Python's bare "invalid literal for int()"). Ints and digit strings pass; bools, floats and other text fail."""
    if value is None and allow_none:
        return None
    number = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    if number is None or number < minimum:
        valid = f"a whole number >= {minimum}" + (" or null (no limit)" if allow_none else "")
        raise ValueError(f"{where + ': ' if where else ''}{key} must be {valid}, got {value!r}")
    return number


def get_task(task: Any) -> TaskSpec:
    """A :class:`TaskSpec` from a task name, a config mapping (``cfg.task``) or a TaskSpec.

    Parameters
    ----------
    task : str or Mapping or TaskSpec
        A task name of ``conf/task``, a config mapping or a TaskSpec (returned as is).

    Returns
    -------
    TaskSpec
        The validated task.
    """
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, str):
        return TaskSpec.from_config(load_task_config(task))
    return TaskSpec.from_config(task)


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
        return {"source": "hub", "path": hub.get("path"), "name": hub.get("name"),
                "split": (hub.get("splits") or {}).get(split, split)}
    local = task.local or {}
    out = {"source": "local", "path": str(_local_path(task, split, resolve_data_dir(data_dir)))}
    if not (local.get("paths") or {}).get(split) and local.get("holdout"):
        out["split_rule"] = (f"offline split of one file: {split} = "
                             + ("seeded holdout" if split == "train" else "rows outside the seeded holdout"
                                if split == "validation" else "all rows")
                             + f" (holdout {local['holdout']})")
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
            {"id": qa["id"], "title": article["title"], "context": paragraph["context"], "question": qa["question"],
             "answers": [a["text"] for a in qa["answers"]]}
            for article in articles for paragraph in article["paragraphs"] for qa in paragraph["qas"]
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
            f"task {task.name!r} needs the dataset hub ({hub['path']}/{hub.get('name')}, split {hub_split!r}){offline}, "
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
        return {"text_a": record["context"], "text_b": record["question"], "label": -1, "id": str(record["id"]),
                "title": str(record.get("title", "")).replace("_", " "), "context": record["context"],
                "question": record["question"], "answers": list(record["answers"])}
    columns = source.get("columns") or {}
    missing = [c for spec in columns.values() for c in ([spec] if isinstance(spec, str) else spec)
               if c not in record]
    if missing:
        raise TaskDataError(f"task {task.name!r} ({where}): columns {missing} not in the data; found {list(record)}")
    strip = task.type != "perplexity"
    row = {"text_a": _column_text(record, columns.get("text_a"), strip),
           "text_b": _column_text(record, columns.get("text_b"), strip), "label": -1}
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
