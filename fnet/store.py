"""ActivationStore: recorded activations on disk, one float16 ``.npy`` shard per text plus a JSON manifest.

Layout of a store folder::

    manifest.json            format, model, signal, n_layers, width, dtype, max_length, and per text:
                             id, sha1 of the text, token count, shard file name
    shard-<n>.npy            acts  # [tokens, n_layers * width] float16, layer-major columns

Why hand-written: the data is a list of dense matrices of different lengths that must be written one at a time
(so a killed run resumes), read back as memory maps (so 100 long texts of a 7B model never sit in RAM), and
checked against a manifest. ``.npy`` + ``numpy.load(mmap_mode="r")`` does exactly that; no dataset library
offers resumable, per-text, memory-mapped 2-D arrays more simply.

Neuron order: column ``layer * width + unit``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

FORMAT = "fnet-activations/1"


class CorruptShardError(RuntimeError):
    """A shard file is missing, truncated or of the wrong shape."""


def text_sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _atomic_write_text(path: Path, content: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content)
    os.replace(tmp, path)


@dataclass
class ShardInfo:
    id: str
    sha1: str
    n_tokens: int
    file: str


class ActivationStore:
    """A folder of per-text activation shards. Open with :meth:`open` (creates or checks an existing store)."""

    def __init__(self, root: str | os.PathLike, manifest: dict[str, Any]):
        self.root = Path(root)
        self.manifest = manifest

    # ---- creation / opening ----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        *,
        model: str,
        signal: str,
        n_layers: int,
        width: int,
        max_length: int,
        extra: dict[str, Any] | None = None,
    ) -> "ActivationStore":
        """Create a store, or reopen one made with the same model/signal/shape (to resume into it). A store made
        with different settings is an error rather than silently mixed."""
        root = Path(root)
        header = {
            "format": FORMAT,
            "model": model,
            "signal": signal,
            "n_layers": int(n_layers),
            "width": int(width),
            "dtype": "float16",
            "max_length": int(max_length),
        }
        path = root / "manifest.json"
        if path.exists():
            store = cls.load(root)
            clash = {k: (store.manifest.get(k), v) for k, v in header.items() if store.manifest.get(k) != v}
            if clash:
                raise ValueError(
                    f"activation store {root} was recorded with different settings {clash} (stored, requested); "
                    "use another folder or delete it"
                )
            return store
        root.mkdir(parents=True, exist_ok=True)
        manifest = dict(header, extra=extra or {}, texts=[])
        store = cls(root, manifest)
        store._write_manifest()
        return store

    @classmethod
    def load(cls, root: str | os.PathLike) -> "ActivationStore":
        root = Path(root)
        path = root / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"no activation store at {root} (missing manifest.json)")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CorruptShardError(f"manifest {path} is not valid JSON: {err}") from err
        if manifest.get("format") != FORMAT:
            raise CorruptShardError(f"{path} is not an fnet activation store (format {manifest.get('format')!r})")
        return cls(root, manifest)

    def _write_manifest(self) -> None:
        _atomic_write_text(self.root / "manifest.json", json.dumps(self.manifest, indent=1))

    # ---- properties ------------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.manifest["n_layers"]

    @property
    def width(self) -> int:
        return self.manifest["width"]

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.width

    @property
    def signal(self) -> str:
        return self.manifest["signal"]

    @property
    def shards(self) -> list[ShardInfo]:
        return [ShardInfo(**entry) for entry in self.manifest["texts"]]

    @property
    def ids(self) -> list[str]:
        return [entry["id"] for entry in self.manifest["texts"]]

    def __len__(self) -> int:
        return len(self.manifest["texts"])

    def n_tokens(self, ids: Iterable[str] | None = None) -> list[int]:
        by_id = {s.id: s for s in self.shards}
        return [by_id[i].n_tokens for i in (ids if ids is not None else self.ids)]

    def _entry(self, text_id: str) -> ShardInfo | None:
        for entry in self.manifest["texts"]:
            if entry["id"] == text_id:
                return ShardInfo(**entry)
        return None

    # ---- writing ---------------------------------------------------------------------------------------------
    def has(self, text_id: str, text: str | None = None) -> bool:
        """True when this text is already recorded and its shard file is present. A text id recorded from a
        *different* text is an error (the store would otherwise silently mix stimuli)."""
        entry = self._entry(text_id)
        if entry is None:
            return False
        if text is not None and entry.sha1 != text_sha1(text):
            raise ValueError(f"text id {text_id!r} is already in {self.root} with different content")
        return (self.root / entry.file).exists()

    def add(self, text_id: str, text: str, acts: np.ndarray) -> None:
        """Write one text's activations ``[tokens, n_layers*width]`` (shard first, then the manifest, both
        atomically, so a crash never leaves a manifest entry without its complete shard)."""
        acts = np.asarray(acts)
        if acts.ndim != 2 or acts.shape[1] != self.n_neurons:
            raise ValueError(f"activations of {text_id!r} have shape {acts.shape}; expected [tokens, {self.n_neurons}]")
        entry = self._entry(text_id)
        file = entry.file if entry else f"shard-{len(self.manifest['texts']):06d}.npy"
        tmp = self.root / (file + ".tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, acts.astype(np.float16, copy=False))
        os.replace(tmp, self.root / file)
        record = {"id": text_id, "sha1": text_sha1(text), "n_tokens": int(acts.shape[0]), "file": file}
        self.manifest["texts"] = [e for e in self.manifest["texts"] if e["id"] != text_id] + [record]
        self._write_manifest()

    # ---- reading ---------------------------------------------------------------------------------------------
    def load_array(self, text_id: str) -> np.ndarray:
        """Memory-mapped ``[tokens, n_layers*width]`` float16 of one text, checked against the manifest."""
        entry = self._entry(text_id)
        if entry is None:
            raise KeyError(f"text {text_id!r} is not in activation store {self.root}; it has {len(self)} texts")
        path = self.root / entry.file
        if not path.exists():
            raise CorruptShardError(f"shard {path} of text {text_id!r} is missing; rerun to re-record it")
        try:
            acts = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            raise CorruptShardError(
                f"shard {path} of text {text_id!r} is corrupt ({err}); delete it and rerun to re-record it"
            ) from err
        expected = (entry.n_tokens, self.n_neurons)
        if acts.shape != expected or acts.dtype != np.float16:
            raise CorruptShardError(
                f"shard {path} of text {text_id!r} has shape {acts.shape} {acts.dtype}, manifest says {expected} "
                "float16; delete it and rerun to re-record it"
            )
        return acts

    def arrays(self, ids: Iterable[str] | None = None) -> list[np.ndarray]:
        """Memory maps of several texts (all by default), in manifest order or the order of ``ids``."""
        return [self.load_array(i) for i in (ids if ids is not None else self.ids)]

    def verify(self) -> None:
        """Open every shard; raises :class:`CorruptShardError` on the first bad one."""
        for text_id in self.ids:
            self.load_array(text_id)
