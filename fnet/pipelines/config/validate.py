"""Check a composed Hydra config against its schema before any work is done.

Why a check of the composed config and not only schemas in the defaults list: Hydra applies ``+key=value`` with
``OmegaConf.update(..., force_add=True)``, which adds keys even to a closed Structured Config (hydra#1515,
omegaconf#664), so ``+record.max_lenght=16`` would pass composition and be ignored. The composed config is
therefore compared with the schemas of :mod:`fnet.pipelines.config.schemas` at startup:

1. keys: every key must be a field of its schema (``+`` additions included; a near miss is suggested), and every
   required field must be there; ``_target_`` groups whose schema is open take the keyword arguments of the
   target's signature;
2. types: the config is merged into the structured schema, so OmegaConf's type conversion names the key of a
   value that does not fit (``networks.alpha=abc``);
3. values: ranges and choices from the fields' metadata (OmegaConf has no value validators, hence this part).

All problems are reported together in one :class:`ConfigError`. The config itself is returned unchanged: the
values stay those of the YAML files and overrides. :func:`schema_problems` makes the same three checks against
any dataclass schema, so that other configs (the study presets, :mod:`fnet.study.preset`) fail with the same
messages.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import typing
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fnet.models import config_dims, read_config
from fnet.pipelines.config import schemas as S
from fnet.scoring.tasks import TaskSpec

__all__ = [
    "ConfigError",
    "PRIMARY_SCHEMAS",
    "check_target_kwargs",
    "config_error",
    "register_configs",
    "schema_problems",
    "unknown_key",
    "validate_config",
]

#: primary config name -> schema
PRIMARY_SCHEMAS: dict[str, type] = {"analyze": S.AnalyzeConfig, "evaluate": S.EvaluateConfig, "train": S.TrainConfig}
#: groups whose content is a `_target_` plus its keyword arguments (checked against the target's signature),
#: with the keys that are not arguments (popped by the caller before instantiating)
_TARGET_GROUPS = {"ica": ("level", "restarts"), "trainer": (), "optimizer": (), "scheduler": ()}
#: groups that map a name to one `_target_` entry each
_TARGET_MAPS = ("logger", "callbacks")
_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


class ConfigError(ValueError):
    """An invalid composed config; the message lists every problem with its key."""


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore: ``schema/<primary>`` (e.g. ``schema/analyze``) and one per
    group, ``schema/<group>/default`` (e.g. ``schema/networks/default``), so they can be listed, extended or put
    in a defaults list."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, schema in PRIMARY_SCHEMAS.items():
        cs.store(group="schema", name=name, node=schema)
        for f in dataclasses.fields(schema):
            inner = _dataclass_of(typing.get_type_hints(schema)[f.name])
            if inner is not None:
                cs.store(group=f"schema/{f.name}", name="default", node=inner)
    for run, schema in S.ANALYSIS_SCHEMAS.items():
        cs.store(group="schema/analysis", name=run.rsplit(".", 1)[-1], node=schema)


def validate_config(cfg: DictConfig, name: str) -> DictConfig:
    """Check the composed config ``cfg`` of the primary config ``name`` (``analyze`` | ``evaluate`` | ``train``).

    Returns ``cfg`` unchanged; raises :class:`ConfigError` naming every unknown or missing key, every value of
    the wrong type and every value out of its range or choices."""
    if name not in PRIMARY_SCHEMAS:
        raise ValueError(f"no schema for config {name!r}; valid: {sorted(PRIMARY_SCHEMAS)}")
    schema = PRIMARY_SCHEMAS[name]
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    errors: list[str] = []
    _check_keys(plain, schema, "", errors)
    if not errors:  # types and values only when the keys are right (merging stops at the first unknown key)
        typed = _merge(cfg, schema, "", errors)
        if "analysis" in plain:
            sub = S.ANALYSIS_SCHEMAS.get(str(plain["analysis"].get("run")))
            if sub is not None:
                _merge(cfg.analysis, sub, "analysis", errors)
        if not errors:
            _check_values(typed, schema, "", errors)
            if "analysis" in plain and (sub := S.ANALYSIS_SCHEMAS.get(str(plain["analysis"].get("run")))):
                _check_values(OmegaConf.merge(OmegaConf.structured(sub), cfg.analysis), sub, "analysis", errors)
    if not errors:
        _check_free_keys(plain, errors)
    if not errors:
        _check_sizes(cfg, errors)
    if not errors and "task" in plain:
        try:
            TaskSpec.from_config(cfg.task)
        except (ValueError, TypeError) as err:
            errors.append(f"task: {err}")
    if errors:
        raise config_error(f"config `{name}`", errors)
    return cfg


def schema_problems(cfg: Any, schema: type, root: str = "the config") -> tuple[DictConfig | None, list[str]]:
    """The checks of :func:`validate_config` for any dataclass ``schema`` (a study preset's, for instance): keys
    (unknown ones with a near miss and the valid keys, missing required ones), then types (``cfg`` merged into the
    structured schema), then ranges and choices from the fields' metadata.

    Parameters
    ----------
    cfg : DictConfig or mapping
        The config to check.
    schema : type
        A dataclass; a field without a default (``MISSING``) is required.
    root : str
        How the messages name the top level (``valid keys of the config: ...``).

    Returns
    -------
    (DictConfig or None, list of str)
        The typed config (the schema's defaults merged with ``cfg``; None when a key or a type is wrong) and
        the problems, each naming its key.
    """
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    errors: list[str] = []
    _check_keys(OmegaConf.to_container(cfg, resolve=False), schema, "", errors, root)
    if errors:  # merging stops at the first unknown key: types and values only when the keys are right
        return None, errors
    typed = _merge(cfg, schema, "", errors)
    if typed is not None:
        _check_values(typed, schema, "", errors)
    return typed, errors


def config_error(what: str, errors: list[str]) -> ConfigError:
    """One :class:`ConfigError` listing every problem of ``what`` (e.g. ``config `analyze```)."""
    lines = "\n".join(f"  - {e}" for e in errors)
    return ConfigError(f"invalid {what} ({len(errors)} problem{'s' * (len(errors) > 1)}):\n{lines}")


# --------------------------------------------------------------------------------------------------------------
def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``X`` or ``Optional[X]``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def unknown_key(where: str, key: str, valid: Sequence[str], root: str = "the config") -> str:
    """The message for an unknown ``key`` under ``where`` (a dotted path, "" for the top, which ``root`` names):
    the key, a near miss if there is one, and the valid keys."""
    near = difflib.get_close_matches(str(key), list(valid), n=1)
    hint = f" (did you mean {_join(where, near[0])}?)" if near else ""
    return f"unknown key {_join(where, key)}{hint}; valid keys of {where or root}: {', '.join(sorted(valid))}"


def _required(f: dataclasses.Field) -> bool:
    return (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING) or f.default == "???"


def _check_keys(node: dict, schema: type, path: str, errors: list[str], root: str = "the config") -> None:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in node:
        if key not in fields:
            errors.append(unknown_key(path, key, list(fields), root))
    for name, f in fields.items():
        where = _join(path, name)
        if name not in node:
            if _required(f):
                errors.append(f"missing key {where} (a required key of {path or root})")
            continue
        value = node[name]
        inner = _dataclass_of(hints[name])
        if inner is not None and isinstance(value, dict):
            _check_keys(value, inner, where, errors)
        elif name == "analysis" and isinstance(value, dict):
            _check_analysis(value, errors)
        elif name in _TARGET_GROUPS and isinstance(value, dict):
            errors.extend(check_target_kwargs(value, where, _TARGET_GROUPS[name]))
        elif name in _TARGET_MAPS and isinstance(value, dict):
            for entry, conf in value.items():
                if isinstance(conf, dict):
                    errors.extend(check_target_kwargs(conf, _join(where, entry)))


def _check_analysis(node: dict, errors: list[str]) -> None:
    run = node.get("run")
    schema = S.ANALYSIS_SCHEMAS.get(str(run))
    if schema is not None:
        _check_keys(node, schema, "analysis", errors)
        return
    from hydra.utils import get_method

    try:
        get_method(str(run))
    except Exception as err:  # noqa: BLE001 - any import failure is the same config problem
        errors.append(f"analysis.run: cannot import {run!r} ({err}); fnet's analyses: {sorted(S.ANALYSIS_SCHEMAS)}")


def check_target_kwargs(node: dict, where: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Problems with the keys of a ``_target_`` node: keys that are not parameters of the target (unless it takes
    ``**kwargs``) and a target that cannot be imported. ``extra``: keys the caller pops before instantiating."""
    target = node.get("_target_")
    if not isinstance(target, str):
        return []
    from hydra.utils import get_object

    try:
        obj = get_object(target)
        params = inspect.signature(obj).parameters
    except (ValueError, TypeError):  # a builtin without a signature: nothing to check against
        return []
    except Exception as err:  # noqa: BLE001 - ImportError and Hydra's own wrapping of it
        return [f"{_join(where, '_target_')}: cannot import {target!r} ({err})"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    valid = [p for p, v in params.items() if v.kind is not inspect.Parameter.VAR_POSITIONAL] + list(extra)
    return [
        unknown_key(where, key, valid) + f" (the parameters of {target})"
        for key in node
        if key not in _HYDRA_KEYS and key not in valid
    ]


def _merge(cfg: DictConfig, schema: type, path: str, errors: list[str]) -> DictConfig | None:
    """``cfg`` merged into the structured ``schema``: OmegaConf converts or rejects every typed value."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as err:
        culprit = getattr(err, "full_key", None) or _failing_key(cfg, schema)
        key = _join(path, culprit) if culprit else path or "?"
        msg = str(getattr(err, "msg", None) or err).splitlines()[0]
        errors.append(f"{key}: {msg}")
        return None


def _failing_key(cfg: DictConfig, schema: type) -> str | None:
    """The top-level key whose value does not fit ``schema`` (OmegaConf does not name it when a mapping was
    expected and a scalar came: ``massive=5``)."""
    for key in cfg:
        try:
            OmegaConf.merge(OmegaConf.structured(schema), {key: cfg._get_node(key)})
        except OmegaConfBaseException:
            return str(key)
    return None


def _choices(spec: Any) -> list:
    if isinstance(spec, str):  # "module:NAME" -> that constant of the code (a dict gives its keys)
        module, name = spec.split(":")
        spec = getattr(importlib.import_module(module), name)
    if callable(spec):  # a function that lists them (e.g. the task names of conf/task)
        spec = spec()
    return list(spec)


def _rule_problems(value: Any, rules: dict) -> str | None:
    if "choices" in rules:
        valid = _choices(rules["choices"])
        items = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in items if not any(v == c and type(v) is type(c) for c in valid)]
        if bad:
            return f"must be one of {valid}, got {bad[0]!r}"
        return None
    limits = [(op, rules[op]) for op in ("gt", "ge", "lt", "le") if op in rules]
    checks = {"gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b}
    if limits and not all(checks[op](value, bound) for op, bound in limits):
        symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        return "must be " + " and ".join(f"{symbols[op]} {bound}" for op, bound in limits) + f", got {value!r}"
    return None


def _integer_rules(value: Any, rules: dict, where: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{where} must be an integer, got {value!r}"
    problem = _rule_problems(value, rules)
    return f"{where} {problem}" if problem else None


def _check_free_keys(plain: dict, errors: list[str]) -> None:
    """The rules of :data:`~fnet.pipelines.config.schemas.ICA_RULES` and ``DATASET_RULES`` (keys of free-form
    groups, which the schemas type ``Any``)."""
    ica = plain.get("ica")
    if isinstance(ica, dict):
        for key, rules in S.ICA_RULES.items():
            if key in ica and (problem := _integer_rules(ica[key], rules, f"ica.{key}")):
                errors.append(problem)
    datasets = (plain.get("data") or {}).get("datasets") if isinstance(plain.get("data"), dict) else None
    for name, options in (datasets or {}).items():
        for key, rules in S.DATASET_RULES.items():
            if isinstance(options, dict) and key in options:
                problem = _integer_rules(options[key], rules, f"data.datasets.{name}.{key}")
                if problem:
                    errors.append(problem)


def _check_sizes(cfg: DictConfig, errors: list[str]) -> None:
    """Upper bounds that the model's config decides, read without loading the weights
    (:func:`fnet.models.read_config`): ``ica.n_components`` at most the neurons of the recorded signal. Skipped
    for a fine-tuned checkpoint (``ckpt_path``: its backbone is known once the checkpoint is read) and where the
    model's config cannot be read here (the load says why). The number of tokens, the other bound, is known only
    once the texts are recorded; the decomposition checks it then."""

    ica, model, record = cfg.get("ica"), cfg.get("model"), cfg.get("record")
    if not ica or "n_components" not in ica or not model or not record or cfg.get("ckpt_path"):
        return
    try:
        config = read_config(str(model.name), trust_remote_code=bool(model.get("trust_remote_code", False)))
    except ValueError as err:  # a tiny:<family> that does not exist
        errors.append(f"model.name: {err}")
        return
    if config is None:
        return
    dims = config_dims(config)
    signal = str(record.signal)
    width = dims["d_model"] if signal == "mlp_out" else dims["d_mlp"]
    if not dims["n_layers"] or not width:
        return
    neurons, k = int(dims["n_layers"]) * int(width), int(ica.n_components)
    if k > neurons:
        errors.append(
            f"ica.n_components must be <= {neurons}, the number of {signal} neurons of {model.name} "
            f"({dims['n_layers']} layers x {width}), got {k}"
        )


def _check_values(typed: DictConfig, schema: type, path: str, errors: list[str]) -> None:
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        where = _join(path, f.name)
        inner = _dataclass_of(hints[f.name])
        node = typed._get_node(f.name) if f.name in typed else None
        if node is None:
            continue
        if inner is not None:
            if isinstance(node, DictConfig) and not node._is_none():
                _check_values(node, inner, where, errors)
            continue
        if not f.metadata:
            continue
        try:
            value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else typed[f.name]
        except OmegaConfBaseException:  # an interpolation that resolves only in a running job (${hydra:...})
            continue
        if value is None:
            continue
        problem = _rule_problems(value, dict(f.metadata))
        if problem:
            errors.append(f"{where} {problem}")
