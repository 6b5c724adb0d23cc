"""Study presets: ``conf/study/<name>.yaml`` read with OmegaConf over one structured schema, :class:`StudyPreset`.

The dataclass is the one place of every preset key: its type, its default, its range or choices and what it
means. A preset file holds only what differs from those defaults; :func:`load_preset` merges it onto
``OmegaConf.structured(StudyPreset)``, then applies the ``key=value`` overrides of the command line, checks
keys, types and values with the entry points' machinery (:func:`fnet.pipelines.config.validate.schema_problems`:
an unknown key is named with its near miss and the valid keys, a bad value with the valid choices or range), then
the checks that span keys and that a schema cannot say, all before any work. Adding a key is adding one field.

``conf/study/`` is therefore a folder of OmegaConf files of this schema, not a Hydra config group: no entry point
composes ``study=...`` (``python -m fnet.study`` is not a Hydra app), and the shared defaults already live in the
schema, so a ``conf/study/_base.yaml`` under a ``defaults`` list would hold every default a second time. A preset
has no ``defaults`` list (it would be an unknown key).

Overrides. ``key=value``, the value read as YAML exactly as :meth:`OmegaConf.from_dotlist
<omegaconf.OmegaConf.from_dotlist>` reads it (``seeds=3``, ``'tasks=[sst2]'``, ``normalised=ica.standardize=true``),
a dotted key reaching into a mapping (``massive.top_k=2``). A value replaces the key's value, a mapping included,
as the runner always did: ``'task_overrides={}'`` clears the preset's per-task overrides (Hydra's command line
would merge a mapping into it instead).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fnet.intervene import control_kinds
from fnet.paths import conf_dir
from fnet.pipelines.config.validate import ConfigError, config_error, schema_problems, unknown_key

__all__ = [
    "CONTROL_KINDS",
    "ORDERS",
    "OVERRIDE_STAGES",
    "PATHS",
    "PRESET_KEYS",
    "STIMULI",
    "Massive",
    "StudyPreset",
    "load_preset",
    "preset_dir",
]

PATHS = ("finetune", "zeroshot")
STIMULI = ("genre", "task")
ORDERS = ("task", "table")
#: the random controls of a lesion a preset may ask for (the registry's, by the study's condition names)
CONTROL_KINDS = tuple(control_kinds("lesion"))
#: the controls a preset gets when it names none (v1's: a preset written before other kinds existed plans the same)
DEFAULT_CONTROLS = ("count", "magnitude")
#: the stages a preset's ``train`` / ``analyze`` / ``evaluate`` lists (and ``task_overrides``) reach
OVERRIDE_STAGES = ("train", "analyze", "evaluate")
#: choices: every task of conf/task (a typo fails here, not in the first train job)
_TASKS = "fnet.scoring.tasks:available_tasks"


def _key(default: Any = MISSING, **rules: Any) -> Any:
    """A preset key: its default (a list or mapping is copied for each preset) and its range/choice ``rules``."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=rules)
    return field(default=default, metadata=rules)


@dataclass
class Massive:
    """The massive-channel diagnostic: candidates per layer, and the units spared (and lesioned alone)."""

    #: massive-unit candidates per layer
    top_k: int = _key(4, gt=0)
    #: units spared in every lesion / lesioned alone
    n_units: int = _key(4, ge=0)


@dataclass
class StudyPreset:
    """The keys of a study preset (``conf/study/*.yaml``), in the order the report's Settings list them."""

    #: the study's name (null: the preset's file name)
    name: Optional[str] = None
    #: conf/model/<model>
    model: str = _key()
    #: finetune (train.py per task, then evaluate the checkpoint) | zeroshot
    path: str = _key("finetune", choices=PATHS)
    #: every task: unmasked, all networks lesioned (+ controls), preservation
    tasks: List[str] = _key(choices=_TASKS)
    #: path=finetune only: tasks also evaluated zero-shot (unmasked, all lesioned + controls)
    zeroshot_tasks: List[str] = _key([], choices=_TASKS)
    #: tasks that also get one lesion per network (+ controls, spared, single units)
    lesion_each: List[str] = _key([])
    #: K of the lesion study's ICA
    n_networks: int = _key(10, gt=0)
    #: K values of the preservation study (union of all K networks kept)
    preserve_K: List[int] = _key([])
    #: random-control seeds (count- and magnitude-matched)
    seeds: int = _key(5, ge=0)
    #: the random controls: count-matched (mask=random) and magnitude-matched (the controls job's draws)
    controls: List[str] = _key(list(DEFAULT_CONTROLS), choices=CONTROL_KINDS)
    #: massive candidates per layer; units spared / lesioned alone
    massive: Massive = field(default_factory=Massive)
    #: quantile bins of the magnitude-matched control
    n_bins: int = _key(10, gt=0)
    #: override of the variance-normalised ICA (e.g. ica.standardize=true); null = skip
    normalised: Optional[str] = None
    #: networks from: genre (conf/data, Tables 1-3) | task (each task's own prompts, data=task)
    stimuli: str = _key("genre", choices=STIMULI)
    #: extra overrides of every train.py job
    train: List[str] = _key([])
    #: ... analyze.py jobs
    analyze: List[str] = _key([])
    #: ... evaluate.py jobs
    evaluate: List[str] = _key([])
    #: per task, after the above: {task: {train: [...], analyze: [...], evaluate: [...]}}
    task_overrides: Dict[str, Optional[Dict[str, Optional[List[str]]]]] = _key({})
    #: task: finish each task in turn | table: every task's unmasked and all-networks lesion jobs (Table 5) first,
    #: then per-network lesions (Table 4), then preservation (Table 8)
    order: str = _key("task", choices=ORDERS)
    # -- v2 methods (study v2). Every key below defaults to empty, so a v1 preset plans and reports as before. --
    #: training runs per fine-tuned task (train.py seed=0..n-1), each with its own networks and controls;
    #: null = one run named as in v1 (train/<task>)
    training_runs: Optional[int] = _key(None, gt=0)
    #: per task, another number of training runs (e.g. {sst2: 5, ag_news: 5})
    runs_per_task: Dict[str, int] = _key({})
    #: control seeds of the core conditions (all networks lesioned, preservation); null = seeds
    core_seeds: Optional[int] = _key(None, gt=0)
    #: true: every random control draws from its own stream (task, training run, networks, K, kind, seed)
    streams: Optional[bool] = None
    #: magnitude bins as quantile edges fine in the tail (e.g. [0.5, 0.75, 0.9, 0.95, 0.99, 0.999]); [] = n_bins
    tail_bins: List[float] = _key([])
    #: ablations besides zeroing for the core lesions (all networks, spared, single units): [mean]
    ablations: List[str] = _key([], choices=("mean",))
    #: thresholds (networks.alpha) of extra preservation networks, so the kept share spans ~1 % to ~80 %
    preserve_alpha: List[float] = _key([])
    #: true: also the published code's masking (every layer with the last layer's row, 10d96da) for preservation
    as_published: Optional[bool] = None
    #: the report's correction over its family of headline tests: holm | bh | none (null: holm)
    correction: Optional[str] = _key(None, choices=("holm", "bh", "none"))
    #: equivalence margin of "performance kept" (TOST), absolute in the metric's units (null: 0.02)
    margin: Optional[float] = _key(None, gt=0)
    #: CPU minutes of one training run per task, for the dry run's estimate (from bench/results_finetune.md)
    train_minutes: Dict[str, float] = _key({})
    #: tasks that get the preservation curve ([] = every task, as v1)
    curve_tasks: List[str] = _key([])
    #: per-network lesions and the preservation curve on the first N training runs of a task only (null = all)
    detail_runs: Optional[int] = _key(None, gt=0)
    #: the controls that also run with mean ablation ([] = every control of the preset)
    ablation_controls: List[str] = _key([], choices=CONTROL_KINDS)
    #: control seeds of the variance-normalised networks' lesion (null = seeds)
    normalised_seeds: Optional[int] = _key(None, gt=0)


def _default(f: dataclasses.Field, hint: Any) -> Any:
    """A field's default as a plain value; a required field's is its type's empty value (None, [] or {})."""
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if value is dataclasses.MISSING or value == MISSING:
        return {list: [], dict: {}}.get(typing.get_origin(hint))
    return value


#: every preset key and its default, in :class:`StudyPreset`'s order (a report's Settings are read back with it)
PRESET_KEYS: dict[str, Any] = {
    f.name: _default(f, typing.get_type_hints(StudyPreset)[f.name]) for f in dataclasses.fields(StudyPreset)
}


def preset_dir() -> Path:
    """``conf/study`` of fnet's configs (package data: :func:`fnet.paths.conf_dir`)."""
    return conf_dir() / "study"


def load_preset(name_or_path: str, overrides: Sequence[str] = ()) -> dict:
    """A study preset with ``key=value`` overrides, checked, as a plain dict.

    Parameters
    ----------
    name_or_path : str
        A preset name (``conf/study/<name>.yaml``) or a YAML path.
    overrides : sequence of str
        ``key=value`` items (see the module docstring), applied in order after the file.

    Returns
    -------
    dict
        Every key of :data:`PRESET_KEYS`, in its order, as plain values; ``name`` defaults to the file's name.

    Raises
    ------
    FileNotFoundError
        For a preset that does not exist (the message lists the valid ones), or when no preset is installed
        (the message names the folder looked in).
    fnet.pipelines.config.ConfigError
        (a ValueError) listing every problem: an unknown key (with the valid keys), a missing required key, a
        value of the wrong type or outside its choices or range, an override that is not ``key=value``, and the
        checks across keys (``tasks`` not empty, ``lesion_each`` within ``tasks``, ``task_overrides`` only for
        tasks of the preset and only for the stages train / analyze / evaluate).

    Examples
    --------
    >>> p = load_preset("tiny", ["seeds=3", "tasks=[sst2, cola]", "massive.top_k=1"])
    >>> p["name"], p["seeds"], p["tasks"], p["massive"]
    ('tiny', 3, ['sst2', 'cola'], {'top_k': 1, 'n_units': 1})
    >>> list(p) == list(PRESET_KEYS)
    True
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = preset_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        valid = sorted(p.stem for p in preset_dir().glob("*.yaml"))
        if not valid:  # not a wrong name: the presets are not where this fnet looks for them
            raise FileNotFoundError(
                f"no study presets in {preset_dir()}: this installation of fnet is incomplete (the presets live in "
                "the repository's conf/study, beside the fnet package, and are not part of a wheel); run from a "
                "checkout of the repository, or give a preset's YAML path"
            )
        raise FileNotFoundError(f"no study preset {name_or_path!r} ({path}); valid presets: {valid}")
    what = f"study preset {path}" + (f" with overrides {list(overrides)}" if overrides else "")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"invalid {what}: must be a mapping of keys, got a list")
    errors: list[str] = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            errors.append(f"override {item!r} is not key=value; valid keys: {', '.join(PRESET_KEYS)}")
            continue
        try:  # the value as from_dotlist reads it, then put in place of the key's value (not merged into it)
            OmegaConf.update(cfg, key, OmegaConf.select(OmegaConf.from_dotlist([item]), key), merge=False)
        except (OmegaConfBaseException, ValueError, yaml.YAMLError) as err:  # the key's path, or YAML
            errors.append(f"override {item!r}: {str(err).splitlines()[0]}")
    if errors:
        raise config_error(what, errors)
    typed, errors = schema_problems(cfg, StudyPreset, root="the preset")
    if typed is None or errors:
        raise config_error(what, errors)
    out = OmegaConf.to_container(typed, resolve=True)
    errors = _across_keys(out)
    if errors:
        raise config_error(what, errors)
    out["name"] = out["name"] or path.stem
    return out


def _across_keys(p: dict) -> list[str]:
    """What the schema cannot say: a task must be named; lesion_each and task_overrides only name tasks of the
    preset; task_overrides only name stages."""
    errors = []
    if not p["tasks"]:
        errors.append("tasks is empty: a study needs at least one task")
    bad = [t for t in p["lesion_each"] if t not in p["tasks"]]
    if bad:
        errors.append(f"lesion_each {bad} are not in tasks {p['tasks']}")
    bad = [t for t in p["runs_per_task"] if t not in p["tasks"]] + [t for t in p["curve_tasks"] if t not in p["tasks"]]
    if bad:
        errors.append(f"runs_per_task / curve_tasks {bad} are not in tasks {p['tasks']}")
    bad = [t for t in p["task_overrides"] if t not in p["tasks"] and t not in p["zeroshot_tasks"]]
    if bad:
        errors.append(f"task_overrides {bad} are not in tasks {p['tasks']} or zeroshot_tasks {p['zeroshot_tasks']}")
    for task, stages in p["task_overrides"].items():
        errors += [
            unknown_key(f"task_overrides.{task}", stage, OVERRIDE_STAGES)
            for stage in stages or {}
            if stage not in OVERRIDE_STAGES
        ]
    return errors
