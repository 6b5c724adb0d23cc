"""Stimulus text records and where their data lives: the data root (offline copies) and the hub.

:class:`Text` is one stimulus text with its id and source; :class:`StimulusSet` the two disjoint seeded samples
(template and individual texts) of one data set. :func:`data_root` is ``FNET_DATA_DIR`` or
``<repo>/../shared/data``; hub access fails fast with :class:`HubUnavailableError` when offline.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

from fnet.paths import corpus_dir, project_root

__all__ = [
    "DATA_DIR_ENV",
    "CORPUS_DIR",
    "REPO_ROOT",
    "HubUnavailableError",
    "StimulusSet",
    "Text",
    "data_root",
    "hub_reachable",
    "hub_rows",
    "join_fields",
    "local_data_path",
]


PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = project_root()  # the checkout, or the working folder of an installed fnet (fnet.paths)
CORPUS_DIR = corpus_dir()
DATA_DIR_ENV = "FNET_DATA_DIR"
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"

# Hub ids of the paper's data sets (used by the named sources and conf/data/paper.yaml).
AG_NEWS_HUB = "fancyzhx/ag_news"
WIKITEXT_HUB = "Salesforce/wikitext"
WIKITEXT2_HUB_CONFIG = "wikitext-2-raw-v1"
MATHQA_HUB = "allenai/math_qa"
CODENET_HUB = "iNeil77/CodeNet"

OFFLINE_ALTERNATIVES = (
    "builtin:math (MathQA-style word problems shipped with fnet), builtin (all built-in genres), "
    "or the local copies wikitext2, ag_news, codenet_java under the data root"
)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """One stimulus text. ``id`` is unique within its source; ``source`` names where it came from.

    Parameters
    ----------
    id : str
        Unique within its source.
    text : str
        The text.
    source : str
        The source it came from.
    """

    id: str
    text: str
    source: str


@dataclass
class StimulusSet:
    """The two disjoint samples drawn from one data set, plus how they were obtained.

    Parameters
    ----------
    name : str
        The data set's name.
    template : list of Text
        The sample for the group (template) decomposition.
    individual : list of Text
        The sample for the individual decompositions, disjoint from ``template``.
    provenance : dict
        How the samples were obtained (source info, options, seed, counts).
    """

    name: str
    template: list[Text]
    individual: list[Text]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[Text]:
        """Template texts followed by individual texts."""
        return [*self.template, *self.individual]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (for writing next to analysis outputs)."""
        return {
            "name": self.name,
            "template": [dataclasses.asdict(t) for t in self.template],
            "individual": [dataclasses.asdict(t) for t in self.individual],
            "provenance": dict(self.provenance),
        }


class HubUnavailableError(RuntimeError):
    """A hub data set could not be reached (no network, offline mode, or not in the cache)."""


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def data_root() -> Path | None:
    """Folder holding the offline data sets.

    ``$FNET_DATA_DIR`` when set (returned even if it does not exist, so errors name it), else
    ``<repo root>/../shared/data`` when that folder exists, else ``None``.

    Returns
    -------
    pathlib.Path or None
        The data folder, or None when neither is set or present.
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    if DEFAULT_DATA_ROOT.is_dir():
        return DEFAULT_DATA_ROOT
    return None


def local_data_path(relative: str, *, source: str, override: str | os.PathLike | None, hub_hint: str) -> Path:
    """Resolve a file or folder of a local source, or raise a FileNotFoundError that says how to fix it."""
    if override is not None:
        path = Path(override).expanduser()
    else:
        root = data_root()
        path = (root if root is not None else DEFAULT_DATA_ROOT) / relative
    if not path.exists():
        root_note = (
            f"{DATA_DIR_ENV} is set to {os.environ[DATA_DIR_ENV]!r}"
            if os.environ.get(DATA_DIR_ENV)
            else f"{DATA_DIR_ENV} is not set and the default data root is {DEFAULT_DATA_ROOT}"
        )
        raise FileNotFoundError(
            f"source {source!r}: local data not found at {path} ({root_note}). "
            f"Set {DATA_DIR_ENV} to the folder that contains '{relative}', pass path=..., "
            f"or load it from the hub instead: {hub_hint}."
        )
    return path


# --------------------------------------------------------------------------------------------
# Hub access
# --------------------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Cheap check that the hub host accepts connections (so offline runs fail in seconds, not
    after the datasets library's retries). Assumes reachable when a proxy is configured.

    Parameters
    ----------
    timeout : float
        Seconds to wait for the connection (default 3.0).

    Returns
    -------
    bool
        True when the host accepted a connection or a proxy is configured.
    """
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_rows(
    hub_name: str,
    *,
    split: str,
    fields: Sequence[str],
    config: str | None = None,
    data_dir: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
    max_rows: int | None = None,
    offline_note: str = "",
) -> tuple[Iterator[dict], dict]:
    """Open ``hub_name`` with ``datasets.load_dataset`` and yield dicts holding ``fields``.

    Connection problems become a HubUnavailableError whose message says what to use offline.
    """
    import datasets as hf_datasets  # imported lazily: it is slow to import and not needed for builtin

    where = f"{hub_name!r}" + (f" (config {config!r})" if config else "") + f", split {split!r}"

    def unavailable(reason: str) -> HubUnavailableError:
        return HubUnavailableError(
            f"could not load hub data set {where}: {reason}. {offline_note}".strip()
            + f" Offline alternatives: {OFFLINE_ALTERNATIVES}. If the data set is already in your "
            "Hugging Face cache, set HF_HUB_OFFLINE=1 to use the cached copy."
        )

    offline_mode = _env_flag("HF_HUB_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE")
    if not offline_mode and not hub_reachable():
        raise unavailable("the hub is not reachable from this machine (no network)")

    kwargs: dict[str, Any] = {"split": split}
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    if revision is not None:
        kwargs["revision"] = revision
    if streaming:
        kwargs["streaming"] = True
    args = (hub_name, config) if config is not None else (hub_name,)
    try:
        dataset = hf_datasets.load_dataset(*args, **kwargs)
    except (ConnectionError, TimeoutError) as error:
        raise unavailable(f"{type(error).__name__}: {error}") from error
    except OSError as error:  # offline mode with nothing cached, missing repo, ...
        raise unavailable(f"{type(error).__name__}: {error}") from error

    columns = getattr(dataset, "column_names", None)
    if columns:
        missing = [f for f in fields if f not in columns]
        if missing:
            raise ValueError(f"hub data set {where} has no field(s) {missing}; its fields are {list(columns)}")
        if hasattr(dataset, "select_columns"):
            dataset = dataset.select_columns(list(fields))
    if max_rows is not None and not streaming and hasattr(dataset, "select") and hasattr(dataset, "__len__"):
        dataset = dataset.select(range(min(int(max_rows), len(dataset))))

    def rows() -> Iterator[dict]:
        for index, row in enumerate(dataset):
            if max_rows is not None and index >= max_rows:
                return
            missing_now = [f for f in fields if f not in row]
            if missing_now:
                raise ValueError(
                    f"hub data set {where} rows have no field(s) {missing_now}; their fields are {sorted(row)}"
                )
            yield row

    info = {
        "hub": hub_name,
        "config": config,
        "split": split,
        "fields": list(fields),
        "streaming": bool(streaming),
        "max_rows": max_rows,
    }
    if data_dir is not None:
        info["data_dir"] = data_dir
    if revision is not None:
        info["revision"] = revision
    return rows(), info


def join_fields(row: Mapping[str, Any], fields: Sequence[str], separator: str) -> str:
    """The non-empty ``fields`` of ``row``, stripped and joined by ``separator`` (one text of a multi-field row)."""
    parts = [str(row[f]).strip() for f in fields if row[f] is not None]
    return separator.join(p for p in parts if p)
