"""ActivationStore: recorded activations on disk, one float16 ``.npy`` shard per text plus a JSON manifest.

Layout of a store folder::

    manifest.json            format, model, fingerprint, signal, n_layers, width, dtype, max_length, code
                             version, provenance, and per text: id, sha1 of the text, token count, shard file
                             name, xxh3 checksum of the shard file
    shard-<n>.npy            acts  # [tokens, n_layers * width] float16, layer-major columns
    manifest.json.lock       the lock writers hold while they commit a shard (filelock)

Why hand-written: the data is a list of dense matrices of different lengths that must be written one at a time
(so a killed run resumes), read back as memory maps (so 100 long texts of a 7B model never sit in RAM), and
checked against a manifest. ``.npy`` + ``numpy.load(mmap_mode="r")`` does exactly that; no dataset library
offers resumable, per-text, memory-mapped 2-D arrays more simply.

Concurrent writers (two runs recording the same store) are safe: a shard is written to a unique temporary file,
then, holding the store's lock, the writer re-reads the manifest from disk, keeps another writer's entry for the
same text if there is one, otherwise moves its shard into place and commits the manifest atomically.

Integrity: every shard's checksum is in the manifest. :meth:`ActivationStore.repair` (run when a cached store
is reused) checks them all; a bad shard is moved aside with a warning naming the shard file and the text id, and
its entry is dropped so the caller re-records it.

Neuron order: column ``layer * width + unit``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import xxhash

from fnet.cache import atomic_write_text, lock, quarantine, temp_path
from fnet.provenance import provenance

log = logging.getLogger(__name__)

__all__ = ["ActivationStore", "CorruptShardError", "ShardInfo", "text_sha1", "FORMAT"]

FORMAT = "fnet-activations/2"
#: manifest keys that must agree for a store to be reused (the rest -- created, provenance -- is description)
HEADER_KEYS = ("format", "model", "fingerprint", "signal", "n_layers", "width", "dtype", "max_length", "code_version")


class CorruptShardError(RuntimeError):
    """A shard file is missing, truncated, of the wrong shape or does not match its checksum."""


def text_sha1(text: str) -> str:
    """The SHA-1 of a text's UTF-8 bytes: how a store knows that a text id still names the same text.

    Parameters
    ----------
    text : str
        The text.

    Returns
    -------
    str
        40 hex digits.
    """
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _checksum(data: bytes) -> str:
    return xxhash.xxh3_64_hexdigest(data)


@dataclass
class ShardInfo:
    id: str
    sha1: str
    n_tokens: int
    file: str
    checksum: str | None = None


class ActivationStore:
    """A folder of per-text activation shards. Open with :meth:`open` (creates or checks an existing store).

    Parameters
    ----------
    root : path
        The store's folder.
    manifest : dict
        Its parsed ``manifest.json`` (use :meth:`open` or :meth:`load` rather than this constructor).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> store = ActivationStore.open(tempfile.mkdtemp(), model="demo", signal="mlp_out", n_layers=2, width=3,
    ...                              max_length=8)
    >>> acts = np.arange(24, dtype=np.float32).reshape(4, 6)        # [tokens, n_layers*width]
    >>> store.add("t0", "a text", acts)
    >>> store.has("t0", "a text"), store.n_tokens()
    (True, [4])
    >>> back = store.load_array("t0")                               # float16 memory map
    >>> back.dtype, bool((back == acts).all())
    (dtype('float16'), True)
    >>> store.has("t0", "another text")
    Traceback (most recent call last):
    ...
    ValueError: text id 't0' is already in ... with different content
    """

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
        fingerprint: str | None = None,
        code_version: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> "ActivationStore":
        """Create a store, or reopen one made with the same model (its ``fingerprint``; the name when there is
        none), signal, shape and code version (to resume into it). A store made with different settings is an error
        rather than silently mixed. Safe when several processes open the same folder at once."""
        root = Path(root)
        header = {
            "format": FORMAT,
            "model": model,
            "fingerprint": fingerprint,
            "signal": signal,
            "n_layers": int(n_layers),
            "width": int(width),
            "dtype": "float16",
            "max_length": int(max_length),
            "code_version": code_version,
        }
        root.mkdir(parents=True, exist_ok=True)
        with lock(root / "manifest.json"):
            if (root / "manifest.json").exists():
                store = cls.load(root)
                clash = {k: (store.manifest.get(k), v) for k, v in header.items() if store.manifest.get(k) != v}
                if fingerprint and store.manifest.get("fingerprint") == fingerprint:
                    # the same weights under another name (a checkpoint copied to a new path): the content is
                    # what identifies the model, the name is a label
                    clash.pop("model", None)
                if clash:
                    raise ValueError(
                        f"activation store {root} was recorded with different settings {clash} (stored, "
                        "requested); use another folder or delete it"
                    )
                return store
            manifest = dict(header, provenance=provenance(), extra=extra or {}, texts=[])
            store = cls(root, manifest)
            store._write_manifest()
        return store

    @classmethod
    def load(cls, root: str | os.PathLike) -> "ActivationStore":
        root = Path(root)
        return cls(root, cls._read_manifest(root))

    @staticmethod
    def _read_manifest(root: Path) -> dict[str, Any]:
        path = root / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"no activation store at {root} (missing manifest.json)")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CorruptShardError(f"manifest {path} is not valid JSON: {err}") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise CorruptShardError(f"{path} is not an fnet activation store of format {FORMAT} (format {found!r})")
        return manifest

    def _write_manifest(self) -> None:
        atomic_write_text(self.root / "manifest.json", json.dumps(self.manifest, indent=1))

    def _lock(self):
        return lock(self.root / "manifest.json")

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
    def fingerprint(self) -> str | None:
        return self.manifest.get("fingerprint")

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

    def _free_file_name(self) -> str:
        used = {e["file"] for e in self.manifest["texts"]}
        n = len(used)
        while f"shard-{n:06d}.npy" in used or (self.root / f"shard-{n:06d}.npy").exists():
            n += 1
        return f"shard-{n:06d}.npy"

    def add(self, text_id: str, text: str, acts: np.ndarray) -> None:
        """Write one text's activations ``[tokens, n_layers*width]``: the shard to a unique temporary file, then,
        under the store's lock, into place and into the manifest (atomically), so a crash never leaves a
        manifest entry without its complete shard and concurrent writers never overwrite each other. When another
        process committed the same text meanwhile, its shard is kept. Non-finite values (NaN, or beyond the
        float16 range) are an error naming the text."""
        acts = np.asarray(acts)
        if acts.ndim != 2 or acts.shape[1] != self.n_neurons:
            raise ValueError(f"activations of {text_id!r} have shape {acts.shape}; expected [tokens, {self.n_neurons}]")
        acts16 = acts.astype(np.float16, copy=False)  # [tokens, n_layers*width]
        finite = np.isfinite(acts16)
        if not finite.all():
            raise ValueError(
                f"activations of text {text_id!r} have {int((~finite).sum())} non-finite values (NaN or "
                f"beyond float16's +-65504) of {acts16.size}; not stored in {self.root}"
            )
        buffer = io.BytesIO()
        np.save(buffer, acts16)
        data = buffer.getvalue()
        sha1 = text_sha1(text)
        tmp = temp_path(self.root / "shard.npy")
        try:
            tmp.write_bytes(data)
            with self._lock():
                self.manifest = self._read_manifest(self.root)
                theirs = self._entry(text_id)
                if theirs is not None and theirs.sha1 == sha1 and (self.root / theirs.file).exists():
                    return  # another writer committed this text meanwhile; keep theirs
                file = theirs.file if theirs is not None else self._free_file_name()
                os.replace(tmp, self.root / file)
                record = {
                    "id": text_id,
                    "sha1": sha1,
                    "n_tokens": int(acts16.shape[0]),
                    "file": file,
                    "checksum": _checksum(data),
                }
                self.manifest["texts"] = [e for e in self.manifest["texts"] if e["id"] != text_id] + [record]
                self._write_manifest()
        finally:
            if tmp.exists():
                tmp.unlink()

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
                f"shard {path} of text {text_id!r} is corrupt ({err}); rerun to re-record it"
            ) from err
        expected = (entry.n_tokens, self.n_neurons)
        if acts.shape != expected or acts.dtype != np.float16:
            raise CorruptShardError(
                f"shard {path} of text {text_id!r} has shape {acts.shape} {acts.dtype}, manifest says {expected} "
                "float16; rerun to re-record it"
            )
        return acts

    def arrays(self, ids: Iterable[str] | None = None) -> list[np.ndarray]:
        """Memory maps of several texts (all by default), in manifest order or the order of ``ids``."""
        return [self.load_array(i) for i in (ids if ids is not None else self.ids)]

    def check_shard(self, text_id: str) -> str | None:
        """Why the shard of ``text_id`` is bad (missing, unreadable, wrong shape, checksum mismatch), or None."""
        entry = self._entry(text_id)
        try:
            self.load_array(text_id)
        except CorruptShardError as err:
            return str(err)
        if entry.checksum is not None:
            found = _checksum((self.root / entry.file).read_bytes())
            if found != entry.checksum:
                return (
                    f"shard {self.root / entry.file} of text {text_id!r} does not match its checksum "
                    f"(manifest {entry.checksum}, file {found}): its bytes changed after it was written"
                )
        return None

    def verify(self) -> None:
        """Check every shard (presence, shape, checksum); raises :class:`CorruptShardError` on the first bad one."""
        for text_id in self.ids:
            problem = self.check_shard(text_id)
            if problem:
                raise CorruptShardError(problem)

    def repair(self) -> list[str]:
        """Check every shard; move bad ones aside (``*.corrupt-<time>``) with a warning naming the shard and the
        text, and drop their entries so they are re-recorded. Returns the ids of the dropped texts."""
        bad = {text_id: problem for text_id in self.ids if (problem := self.check_shard(text_id))}
        if not bad:
            return []
        with self._lock():
            self.manifest = self._read_manifest(self.root)
            for text_id, problem in bad.items():
                entry = self._entry(text_id)
                if entry is not None and (self.root / entry.file).exists():
                    quarantine(self.root / entry.file, problem)
                else:
                    log.warning("%s", problem)
            self.manifest["texts"] = [e for e in self.manifest["texts"] if e["id"] not in bad]
            self._write_manifest()
        return list(bad)
