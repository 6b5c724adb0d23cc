"""The configuration reference page, generated from the schemas and the YAML files so it cannot drift.

Every key of every config group comes from :mod:`fnet.pipelines.config.schemas` (type, range, choices) and from
the group's YAML files under :func:`fnet.paths.conf_dir` (default value, the comment written beside the key); the
study presets' keys from :class:`fnet.study.preset.StudyPreset` and its ``#:`` comments. The MkDocs hook
(``docs/hooks.py``) renders it into the site at build time; ``python docs/config_reference.py`` prints it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fnet, also from `mkdocs build`

from fnet.paths import conf_dir
from fnet.pipelines.config import schemas as S
from fnet.pipelines.config.validate import PRIMARY_SCHEMAS

#: config groups whose options hold `_target_` keyword arguments (checked against the target's signature), and
#: groups that only switch other values (no keys of their own)
FREE_FORM = ("ica", "trainer", "optimizer", "scheduler", "logger", "callbacks")
SWITCHES = ("debug", "experiment")


# --------------------------------------------------------------------------------------------------------------
# YAML: values and comments
# --------------------------------------------------------------------------------------------------------------
_KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*)\s*:(.*)$")


def yaml_comments(path: Path) -> dict[str, str]:
    """``dotted key -> comment`` of a YAML file: the ``# ...`` after a key on its line, else the comment lines
    right above it (a file's opening comment block belongs to the file, not to its first key)."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    seen_key = False
    last: str | None = None  # the key on the line before, when it had a comment beside it
    last_column = 0
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            above = [] if seen_key else above
            last = None
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            indent = len(line) - len(line.lstrip())
            if last is not None and not above and indent > last_column:
                out[last] += " " + text  # a comment continued under the previous key's comment
                continue
            above.append(text)
            continue
        match = _KEY.match(line)
        if not match or stripped.startswith("-"):
            last = None
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        value, _, comment = _split_comment(rest)
        text = comment.strip() or (" ".join(above) if seen_key or indent else "")
        if key != "defaults":
            if text:
                out[dotted] = text
            last = dotted if comment.strip() else None
            last_column = indent + len(key) + 1
        seen_key = True
        above = []
    return out


def _split_comment(rest: str) -> tuple[str, str, str]:
    """``value  # comment`` -> (value, "#", comment), minding quotes."""
    quote = None
    for i, ch in enumerate(rest):
        if ch in "'\"":
            quote = None if quote == ch else (quote or ch)
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1].isspace()):
            return rest[:i], "#", rest[i + 1 :]
    return rest, "", ""


def header(path: Path) -> str:
    """The opening comment block of a YAML file, as one line (``# @package`` lines left out)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text.startswith("@package"):
            lines.append(text)
    return " ".join(lines)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value and prefix.count(".") < 3:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _load(path: Path) -> dict:
    """A group option's own keys merged over the files of its defaults list (e.g. ``mask/_base.yaml``)."""
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    parts = []
    for entry in cfg.pop("defaults", []) or []:
        if isinstance(entry, str) and entry != "_self_" and path.with_name(f"{entry}.yaml").is_file():
            parts.append(_load(path.with_name(f"{entry}.yaml")))
    merged: dict = {}
    for part in parts + [cfg]:
        merged = OmegaConf.to_container(OmegaConf.merge(merged, part), resolve=False)
    return merged


# --------------------------------------------------------------------------------------------------------------
# Schemas: types and rules
# --------------------------------------------------------------------------------------------------------------
def type_name(hint: Any) -> str:
    """A field's type in words: ``int``, ``float | null``, ``list[str]``, ``mapping``, ``any``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "any"
    if origin is typing.Union:
        names = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(names) + (" | null" if type(None) in args else "")
    if origin in (list, typing.List):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin in (dict, typing.Dict):
        return "mapping"
    if dataclasses.is_dataclass(hint):
        return "group"
    return getattr(hint, "__name__", str(hint))


def _choices(spec: Any) -> list:
    if isinstance(spec, str):
        module, name = spec.split(":")
        spec = getattr(importlib.import_module(module), name)
    if callable(spec):
        spec = spec()
    return list(spec)


def rule_text(metadata: typing.Mapping) -> str:
    """The field's range or choices: ``> 0``, ``>= 0 and <= 1``, ``sst2 | cola | ...``."""
    if "choices" in metadata:
        return " \\| ".join(f"`{c}`" for c in _choices(metadata["choices"]))
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{symbols[op]} {metadata[op]}" for op in symbols if op in metadata)


def schema_rows(schema: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, type, rule)`` of every field of a dataclass schema, nested groups flattened."""
    rows = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key, hint = f"{prefix}{f.name}", hints[f.name]
        inner = next((a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)), None)
        if inner is not None:
            rows += schema_rows(inner, key + ".")
        else:
            optional = f.default is None and f.default_factory is dataclasses.MISSING
            rows.append(
                (
                    key,
                    type_name(hint) + (" (optional)" if optional and "null" not in type_name(hint) else ""),
                    rule_text(f.metadata),
                )
            )
    return rows


# --------------------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, str):
        text = value if value else '""'
    else:
        text = (
            json.dumps(value)
            if isinstance(value, (list, dict))
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
    text = text.replace("|", "\\|").replace("\n", " ")
    if len(text) > 60:
        text = text[:57] + "..."
    return f"`{text}`"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _primary_defaults(name: str) -> dict[str, str | None]:
    """``group -> default option`` of a primary config's defaults list."""
    cfg = OmegaConf.load(conf_dir() / f"{name}.yaml")
    out = {}
    for entry in cfg.get("defaults", []):
        if isinstance(entry, (dict, typing.Mapping)) or OmegaConf.is_dict(entry):
            for group, option in dict(entry).items():
                out[str(group)] = option
    return out


def _group_schemas() -> dict[str, type | None]:
    """``group -> schema`` over the three primary configs (None: free-form or a switch)."""
    out: dict[str, type | None] = {}
    for schema in PRIMARY_SCHEMAS.values():
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            if (conf_dir() / f.name).is_dir():
                hint = hints[f.name]
                inner = next((a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)), None)
                out[f.name] = inner
    return out


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml") if not p.stem.startswith("_"))


def _table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def _comments(group: str) -> dict[str, str]:
    """Key comments of a group: its ``_base.yaml`` first, then every option file (first comment wins)."""
    out: dict[str, str] = {}
    folder = conf_dir() / group
    for path in sorted(folder.glob("*.yaml"), key=lambda p: (not p.stem.startswith("_"), p.stem != "default", p.stem)):
        for key, text in yaml_comments(path).items():
            out.setdefault(key, text)
    return out


def _schema_section(group: str, schema: type, default_option: str | None, prefix: str = "") -> list[str]:
    values = _flat(_load(conf_dir() / group / f"{default_option}.yaml")) if default_option else {}
    comments = _comments(group)
    rows = []
    for key, kind, rule in schema_rows(schema):
        value = _cell(values[key]) if key in values else ""
        rows.append((f"`{prefix}{key}`", _md(kind), rule, value, _md(comments.get(key, ""))))
    return _table(rows, ("key", "type", "range / choices", f"default ({default_option or '-'})", "meaning"))


def _free_section(group: str) -> list[str]:
    lines = []
    for option in _options(group):
        path = conf_dir() / group / f"{option}.yaml"
        values = _flat(_load(path))
        comments = yaml_comments(path)
        about = header(path)
        lines += [f"#### `{group}={option}`", ""] + ([_md(about), ""] if about else [])
        if values and values != {"": {}}:
            lines += _table(
                [(f"`{k}`", _cell(v), _md(comments.get(k, ""))) for k, v in values.items() if k],
                ("key", "value", "meaning"),
            )
    return lines


def _inline_section(primary: str, field: str, schema: type) -> list[str]:
    path = conf_dir() / f"{primary}.yaml"
    values = _flat(_load(path).get(field, {}), field)
    comments = yaml_comments(path)
    rows = []
    for key, kind, rule in schema_rows(schema, field + "."):
        rows.append(
            (f"`{key}`", _md(kind), rule, _cell(values[key]) if key in values else "", _md(comments.get(key, "")))
        )
    return _table(rows, ("key", "type", "range / choices", "default", "meaning"))


def render() -> str:
    """The whole reference page as Markdown.

    Returns
    -------
    str
        The page: the entry points, their top-level keys, every config group (options and keys), the study
        presets' keys.
    """
    lines = [
        "# Configuration reference",
        "",
        "Generated when the site is built from the config schemas (`fnet/pipelines/config/schemas.py`, "
        "`fnet/study/preset.py`) and the YAML files of `conf/` (`fnet/conf` in an installed package): types, ranges and "  # noqa: E501
        "choices come from the schemas, defaults and meanings from the YAML files and their comments. Every "
        "entry point checks its composed config against these schemas before any work, so an unknown key, a "
        "value of the wrong type or out of range stops the run naming the key.",
        "",
        "Override any key on the command line (`fnet analyze ica.n_components=64`), pick a group's option "
        "(`model=gpt2`), or add your own options in a folder of your own "
        "(`fnet analyze --config-dir my_conf model=my_model`; see [Getting started](../getting-started.md)).",
        "",
    ]
    defaults = {name: _primary_defaults(name) for name in PRIMARY_SCHEMAS}
    group_schema = _group_schemas()

    lines += ["## Entry points", ""]
    rows = []
    for name, schema in PRIMARY_SCHEMAS.items():
        groups = ", ".join(f"`{g}={'null' if o is None else o}`" for g, o in defaults[name].items() if g != "hydra")
        rows.append((f"`fnet {name}`", f"`{name}.yaml`", _md(groups)))
    lines += _table(rows, ("command", "primary config", "default options"))

    lines += ["## Top-level keys", ""]
    rows = []
    for name, schema in PRIMARY_SCHEMAS.items():
        path = conf_dir() / f"{name}.yaml"
        values, comments = _load(path), yaml_comments(path)
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            if (
                (conf_dir() / f.name).is_dir()
                or dataclasses.is_dataclass(hints[f.name])
                or f.name in ("analysis", "ica", "trainer", "optimizer", "scheduler", "callbacks", "logger")
            ):
                continue
            rows.append(
                (
                    f"`{f.name}`",
                    f"`{name}`",
                    _md(type_name(hints[f.name])),
                    rule_text(f.metadata),
                    _cell(values.get(f.name)) if f.name in values else "",
                    _md(comments.get(f.name, "")),
                )
            )
    lines += _table(rows, ("key", "config", "type", "range / choices", "default", "meaning"))

    for name, schema in PRIMARY_SCHEMAS.items():
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            if not (conf_dir() / f.name).is_dir() and dataclasses.is_dataclass(hints[f.name]):
                lines += [f"### `{f.name}` (in `{name}.yaml`)", ""] + _inline_section(name, f.name, hints[f.name])
            elif f.name == "finetune_eval":
                pass

    lines += ["## Config groups", ""]
    groups = sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name not in ("hydra", "study"))
    for group in groups:
        used = {name: d[group] for name, d in defaults.items() if group in d}
        default_option = next((o for o in used.values() if o), None)
        options = _options(group)
        lines += [f"### `{group}`", ""]
        lines += ["Options: " + ", ".join(f"`{o}`" for o in options) + ".", ""]
        if used:
            lines += [
                "Default: " + ", ".join(f"`{'null' if o is None else o}` in `{n}.yaml`" for n, o in used.items()) + ".",
                "",
            ]
        schema = group_schema.get(group)
        if group == "analysis":
            for option in options:
                path = conf_dir() / group / f"{option}.yaml"
                run = _load(path).get("run")
                lines += [f"#### `analysis={option}` (`run: {run}`)", ""] + (
                    [_md(header(path)), ""] if header(path) else []
                )
                lines += _schema_section(group, S.ANALYSIS_SCHEMAS[run], option, "analysis.")
        elif schema is not None:
            lines += _schema_section(group, schema, default_option, f"{group}.")
        elif group in SWITCHES:
            lines += _table(
                [(f"`{group}={o}`", _md(header(conf_dir() / group / f"{o}.yaml"))) for o in options],
                ("option", "what it does"),
            )
        else:
            lines += [
                "Free-form: a `_target_` and its keyword arguments, checked against the target's signature."
                if group in FREE_FORM
                else "",
                "",
            ]
            lines += _free_section(group)

    launchers = conf_dir() / "hydra" / "launcher"
    lines += ["### `hydra/launcher`", "", "Hydra's launcher for `-m` sweeps (`hydra-submitit-launcher`): ", ""]
    lines += _table(
        [(f"`hydra/launcher={p.stem}`", _md(header(p))) for p in sorted(launchers.glob("*.yaml"))],
        ("option", "what it does"),
    )

    lines += _preset_section()
    return "\n".join(lines) + "\n"


def _preset_comments() -> dict[str, str]:
    """``field -> its #: comment`` in :mod:`fnet.study.preset`."""
    import fnet.study.preset as preset

    out: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(preset).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            above.append(stripped[2:].strip())
            continue
        match = re.match(r"\s+(\w+)\s*:\s*[\w\[\], .]+=", line)
        if match and above:
            out.setdefault(match.group(1), " ".join(above))
        above = [] if not stripped.startswith("#") else above
    return out


def _preset_section() -> list[str]:
    from fnet.study.preset import PRESET_KEYS, StudyPreset, preset_dir

    comments = _preset_comments()
    presets = sorted(p.stem for p in preset_dir().glob("*.yaml"))
    lines = [
        "## Study presets (`conf/study`)",
        "",
        "A study preset is an OmegaConf file of these keys (not a Hydra group): `fnet study PRESET [key=value "
        "...]`, e.g. `fnet study tiny --dry-run`. Presets: " + ", ".join(f"`{p}`" for p in presets) + ".",
        "",
    ]
    rows = []
    for key, kind, rule in schema_rows(StudyPreset):
        top = key.split(".")[0]
        default = PRESET_KEYS.get(top)
        if "." in key and isinstance(default, dict):
            default = default.get(key.split(".", 1)[1])
        rows.append((f"`{key}`", _md(kind), rule, _cell(default), _md(comments.get(key.split(".")[-1], ""))))
    return lines + _table(rows, ("key", "type", "range / choices", "default", "meaning"))


if __name__ == "__main__":
    print(render())
