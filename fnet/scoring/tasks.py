"""Evaluation tasks: definitions read from ``conf/task/*.yaml`` and the rows they score.

A task config (lm-evaluation-harness-like) says where the data is (``hub`` for machines with network, ``local``
for the offline copies in ``../shared/data``), how a row becomes a prompt, which label words answer it, which
integer means which class (GLUE conventions), which metrics score it and where few-shot examples come from.
:class:`TaskSpec` is the validated form; :func:`fnet.scoring.rows.load_task_rows` is **the single source of rows**
for evaluation and fine-tuning: every row is a dict with the same keys whatever the file format::

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
(:func:`fnet.scoring.rows.split_provenance`).
"""

from __future__ import annotations

import logging
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fnet.compat import plain
from fnet.paths import conf_dir

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
            "the repository"
        )
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
        spec = cls(
            **{
                k: v
                for k, v in raw.items()
                if v is not None or k in ("hub", "local", "choices", "limit", "fewshot_split")
            }
        )
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
