"""Record texts into an activation store in the cache, keyed by everything that determines the activations.

:func:`record_dataset` is what every pipeline calls to get a data set's activations: the store's key is the
model's content (fingerprint and dtype), the signal, the length, the texts themselves and the recording code's
version, so sweeps over K or masks reuse a recording, a killed run resumes, and a changed model or code records
anew. A reused store has every shard checked; bad shards are moved aside and recorded again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from fnet.cache import cache_root, code_version, content_key, quarantine
from fnet.models import LoadedModel
from fnet.recording.recorder import Recorder
from fnet.recording.store import ActivationStore, CorruptShardError, text_sha1
from fnet.recording.texts import Text

log = logging.getLogger(__name__)

__all__ = ["ACTIVATION_CODE", "model_key", "record", "record_dataset", "slug"]

#: the modules whose source determines recorded activations (part of every store's key)
ACTIVATION_CODE = (
    "fnet.models",
    "fnet.hooks",
    "fnet.batching",
    "fnet.recording.recorder",
    "fnet.recording.store",
    "fnet.recording.cached",
)


def model_key(lm: LoadedModel) -> str:
    """What identifies the model in cache keys: its content fingerprint and dtype (never a name or a path: a
    checkpoint overwritten at the same path or a re-saved folder is another model).

    Parameters
    ----------
    lm : LoadedModel
        The model.

    Returns
    -------
    str
        ``"<fingerprint>-<dtype>"``.
    """
    return f"{lm.fingerprint}-{lm.dtype}"


def slug(text: str) -> str:
    """``text`` as a file-name part: other characters than letters, digits and ``-_.`` become ``_``, the last 60
    kept (names of models can be paths).

    Parameters
    ----------
    text : str
        The text (a model name, a path, ...).

    Returns
    -------
    str
        At most 60 characters of letters, digits, ``-``, ``_``, ``.``.
    """
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-60:]


def _open_cached_store(root: Path, recorder: Recorder, lm: LoadedModel, code: str, extra: dict) -> ActivationStore:
    """Open (or create) a cached store; one whose manifest is unreadable is moved aside and made anew, and a
    reused one has every shard checked (bad shards are moved aside and re-recorded)."""

    def open_store() -> ActivationStore:
        return ActivationStore.open(
            root,
            model=lm.name,
            fingerprint=lm.fingerprint,
            code_version=code,
            signal=recorder.signal,
            n_layers=recorder.n_layers,
            width=recorder.width,
            max_length=recorder.max_length,
            extra=extra,
        )

    reused = (root / "manifest.json").exists()
    try:
        store = open_store()
    except CorruptShardError as err:
        quarantine(root, err)
        return open_store()
    if reused:
        started = time.time()
        store.repair()
        log.info("verified %d cached shards of %s in %.2f s", len(store), root, time.time() - started)
    return store


def record_dataset(
    lm: LoadedModel,
    texts: Sequence[Text],
    *,
    dataset: str,
    cache_dir: str | Path,
    signal: str = "mlp_out",
    max_length: int = 1024,
    batch_size: int = 4,
    progress: bool = True,
) -> ActivationStore:
    """Record ``texts`` into the cached store of this model, signal, length and texts; returns the store.

    Parameters
    ----------
    lm
        The model to record.
    texts
        :class:`~fnet.recording.texts.Text` records (their ids name the store's entries).
    dataset
        The data set's name (part of the folder name, for people reading the cache).
    cache_dir
        The cache root (``paths.cache_dir``); the store lives under ``<cache_dir>/activations/<model>/``.
    signal, max_length, batch_size, progress
        What to record and how (:class:`~fnet.recording.recorder.Recorder`); ``max_length`` is capped at the model's
        positions.

    Returns
    -------
    ActivationStore
        The store, holding ``acts  # [tokens_i, n_layers*width]`` for every text.
    """
    if not texts:  # before any folder is made (transformers would fail with an IndexError deep inside)
        raise ValueError(
            f"no texts to record for data set {dataset!r}: got an empty list; give at least one non-empty text"
        )
    recorder = Recorder(lm, signal, max_length=max_length, batch_size=batch_size, progress=progress)
    code = code_version(*ACTIVATION_CODE)
    key = content_key(model_key(lm), signal, recorder.max_length, [(t.id, text_sha1(t.text)) for t in texts], code)
    root = Path(cache_dir) / "activations" / slug(lm.name) / f"{signal}-{dataset}-{key}"
    store = _open_cached_store(
        root, recorder, lm, code, {"dataset": dataset, "model_dtype": lm.dtype, "model_source": lm.source}
    )
    recorder.record_to_store([t.text for t in texts], store, ids=[t.id for t in texts])
    return store


def record(
    lm: LoadedModel,
    texts: Sequence[str | Text],
    *,
    signal: str = "mlp_out",
    max_length: int = 1024,
    batch_size: int = 4,
    dataset: str = "texts",
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> ActivationStore:
    """Record texts through a model into a cached, content-addressed :class:`ActivationStore` (the notebook
    entry point; :func:`record_dataset` with defaults).

    Parameters
    ----------
    lm : LoadedModel
        From :func:`fnet.load_model`.
    texts : sequence of str or Text
        Plain strings get ids ``text-0000``, ``text-0001``, ...
    signal : {"mlp_out", "mlp_act"}
        What to record: every layer's MLP output (d_model per layer) or its inner activations (d_mlp).
    max_length, batch_size, progress
        Tokens per text (capped at the model's positions), texts per forward pass, a progress bar.
    dataset : str
        A name for the store's folder.
    cache_dir : path, optional
        The cache root; default ``$FNET_CACHE`` (:func:`fnet.cache.cache_root`). A second call with the same
        model content, signal, length and texts reuses the store.

    Returns
    -------
    ActivationStore
        ``store.arrays()`` gives ``acts  # [tokens_i, n_layers*width]`` float16 memory maps, one per text.

    Examples
    --------
    >>> from fnet.models import load_model
    >>> lm = load_model("tiny:gpt2")
    >>> store = record(lm, ["one short text", "and another"], max_length=16)
    >>> len(store), store.arrays()[0].shape[1] == lm.n_layers * lm.d_model
    (2, True)
    """
    items = [
        t if isinstance(t, Text) else Text(id=f"text-{i:04d}", text=str(t), source="record")
        for i, t in enumerate(texts)
    ]
    return record_dataset(
        lm,
        items,
        dataset=dataset,
        cache_dir=cache_dir or cache_root(),
        signal=signal,
        max_length=max_length,
        batch_size=batch_size,
        progress=progress,
    )
