"""fnet's on-disk caches: content keys, model fingerprints, atomic writes, locks, corrupt entries, listing.

Every cached result (a converted GGUF folder, an activation store, a NetworkSet, an unmasked baseline) lives
under one root, :func:`fnet.models.cache_dir` (``$FNET_CACHE``, the same folder as ``paths.cache_dir`` of
``conf/paths/default.yaml``), in a folder per kind, and is keyed by the *content* that determines it:

* the model's :func:`model_fingerprint` -- a hash over the loaded state dict's tensors (names, dtypes, shapes
  and bytes) and the tokenizer. It is computed from what is in memory, so a checkpoint overwritten at the same
  path, a local folder re-saved with new weights, a ``model.dtype`` change or a fine-tuned backbone all give a
  new fingerprint, whatever the path or name says. xxh3-128 runs at memory speed (SmolLM2-135M in float32,
  540 MB: see the README for the measured time), so no per-file memo is needed for it;
* the settings and texts (the caller's key parts, hashed by :func:`content_key`);
* :func:`code_version` of the modules that compute that kind of result.

Why a source hash, not a version constant: a per-stage constant must be bumped by hand and is forgotten exactly
when it matters (a fix in a hook or a threshold); a hash over the source files of the modules that determine a
result changes whenever they do. It is computed from the *imported* modules' files (found by module name), so it
survives a file being moved, and per kind, so editing the report code does not throw away recorded
activations. The price is a recomputation after a comment-only edit, which is safe. The torch and transformers
versions are part of it (a new kernel can change activations).

Writes are atomic (:func:`atomic_path`: a temporary name with pid and a random part in the same folder, then
``os.replace``) and serialised with :func:`lock` (``filelock``), so concurrent runs sharing a cache never see a
half-written file. A cache entry that cannot be read is moved aside by :func:`quarantine` (``*.corrupt-<time>``)
and recomputed with a warning; user files (``mask.networks_file``, ``ckpt_path``) are never touched.

``python -m fnet.cache list`` shows entries (kind, size, model, fingerprint prefix, signal, created);
``python -m fnet.cache prune --older-than 30d --kind activations --dry-run`` removes them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import logging
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import xxhash
from filelock import FileLock

log = logging.getLogger(__name__)

__all__ = [
    "KINDS", "CODE_MODULES", "code_files", "cache_root", "content_key", "file_digest", "tensors_digest", "tokenizer_digest",
    "model_fingerprint", "code_version", "temp_path", "atomic_path", "atomic_write_text", "lock", "quarantine",
    "register",
    "CacheEntry", "list_entries", "prune", "parse_age", "check_compatible", "ForeignNetworksError", "main",
]

#: the cache's kinds, each a folder under the root
KINDS = ("models", "activations", "networks", "eval_baselines")
ENTRY_SUFFIX = ".fnet-entry"  # JSON; not named *.json so globs over a kind's entries never match it

#: modules and packages whose source determines each kind of result (a package stands for every module in it;
#: a name that does not resolve is an error, so a moved module cannot silently drop out of the key).
#: ``activations`` <- models, hooks and recording; ``networks`` <- those + stimuli, decomposition, thresholding;
#: ``eval_baselines`` <- models, task data, prompting and scoring, and the Lightning modules that run them.
CODE_MODULES: dict[str, tuple[str, ...]] = {
    "models": ("fnet.models",),
    "activations": ("fnet.models", "fnet.hooks", "fnet.batching", "fnet.recording.recorder", "fnet.recording.store", "fnet.recording.cached"),
    "networks": ("fnet.models", "fnet.hooks", "fnet.batching", "fnet.recording", "fnet.decompose", "fnet.networks"),
    "eval_baselines": ("fnet.models", "fnet.hooks", "fnet.batching", "fnet.scoring", "fnet.lit", "fnet.pipelines.evaluate",
                       "fnet.pipelines._finetuned"),
}


def code_files(kind: str) -> list[Path]:
    """The source files behind ``kind`` (:data:`CODE_MODULES`; ``all`` = every fnet module), sorted.

    Raises
    ------
    ValueError
        For an unknown kind, or a module name of :data:`CODE_MODULES` that does not resolve (a moved or renamed
        module must be renamed there too; skipping it would let its edits go unnoticed by the caches).
    """
    if kind == "all":
        names: tuple[str, ...] = ("fnet",)
    elif kind in CODE_MODULES:
        names = CODE_MODULES[kind]
    else:
        raise ValueError(f"unknown cache kind {kind!r} for code_version; valid: {sorted(CODE_MODULES) + ['all']}")
    files: set[Path] = set()
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is None or not spec.origin:
            raise ValueError(f"CODE_MODULES[{kind!r}] names {name!r}, which is not an importable module or package; "
                             f"rename it in fnet.cache.CODE_MODULES")
        if spec.submodule_search_locations:  # a package: every module in it
            for folder in spec.submodule_search_locations:
                files.update(Path(folder).rglob("*.py"))
        else:
            files.add(Path(spec.origin))
    return sorted(files)


def cache_root() -> Path:
    """The cache root, ``$FNET_CACHE`` or ``~/.cache/fnet`` (:func:`fnet.models.cache_dir`)."""
    from fnet.models import cache_dir

    return cache_dir()


# --------------------------------------------------------------------------------------------------------------
# Keys and fingerprints
# --------------------------------------------------------------------------------------------------------------
def content_key(*parts: Any, length: int = 16) -> str:
    """A hex key of JSON-able ``parts`` (dicts sorted; other objects by ``str``).

    Examples
    --------
    >>> content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})  # key order does not matter
    True
    >>> content_key({"a": 1, "b": 2}) == content_key({"a": 1, "b": 3}), len(content_key("x"))
    (False, 16)
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return xxhash.xxh3_128_hexdigest(text.encode())[:length]


def _hash_file(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike, *, memo: bool = True) -> str:
    """xxh3-128 of a file's bytes, memoised in ``<root>/file_digests.json`` by (path, size, mtime_ns): a big file
    (a GGUF) is read once, and any rewrite (new size or modification time) is hashed again."""
    path = Path(path).resolve()
    stat = path.stat()
    if not memo:
        return _hash_file(path)
    memo_file = cache_root() / "file_digests.json"
    memo_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_file.parent.mkdir(parents=True, exist_ok=True)
    with lock(memo_file):
        table = _read_json(memo_file) or {}
        if memo_key in table:
            return table[memo_key]
        digest = _hash_file(path)
        table = {k: v for k, v in table.items() if not k.startswith(f"{path}|")}
        table[memo_key] = digest
        atomic_write_text(memo_file, json.dumps(table, indent=0))
    return digest


def tensors_digest(named_tensors: Iterable[tuple[str, Any]]) -> str:
    """xxh3-128 over ``(name, dtype, shape, bytes)`` of every tensor, in the given order. Tensors on another
    device are copied to the CPU one at a time; meta tensors (not loaded) contribute name, dtype and shape."""
    import torch

    digest = xxhash.xxh3_128()
    for name, tensor in named_tensors:
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        if tensor.device.type == "meta":
            continue
        flat = tensor.to("cpu").contiguous().reshape(-1)
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().data)  # raw bytes, any dtype (bf16 included)
    return digest.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """A hash of a tokenizer's behaviour: its serialised backend (vocabulary, merges, normaliser, pre-tokeniser)
    when it has one (without the truncation and padding that each call sets), else its vocabulary; plus class,
    special tokens, padding side and chat template.

    Examples
    --------
    >>> from fnet.models import load_model
    >>> tok = load_model("tiny:gpt2").tokenizer
    >>> before = tokenizer_digest(tok)
    >>> _ = tok(["a b c"], truncation=True, max_length=2)  # a call that sets the backend's truncation
    >>> tokenizer_digest(tok) == before
    True
    """
    if tokenizer is None:
        return "none"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        if backend is not None:
            # the backend's truncation and padding are set by each call with max_length / padding: call state,
            # not identity (the same tokenizer after one batch of a run must keep its fingerprint)
            state = json.loads(backend.to_str())
            body = json.dumps({k: v for k, v in state.items() if k not in ("truncation", "padding")}, sort_keys=True)
        else:
            body = json.dumps(sorted(tokenizer.get_vocab().items()))
    except Exception:  # a tokenizer without either: its repr is the best identity left
        body = repr(tokenizer)
    extra = [type(tokenizer).__name__, getattr(tokenizer, "special_tokens_map", {}),
             getattr(tokenizer, "padding_side", None), getattr(tokenizer, "truncation_side", None),
             getattr(tokenizer, "chat_template", None)]
    return xxhash.xxh3_128_hexdigest(body.encode() + json.dumps(extra, sort_keys=True, default=str).encode())


def model_fingerprint(model: Any, tokenizer: Any = None) -> str:
    """The identity of a loaded model: :func:`tensors_digest` of its state dict plus :func:`tokenizer_digest`.
    32 hex digits; equal only when weights (with dtype), shapes and tokenizer are equal.

    Examples
    --------
    >>> import torch
    >>> from fnet.models import load_model
    >>> lm = load_model("tiny:gpt2")
    >>> model_fingerprint(lm.model, lm.tokenizer) == lm.fingerprint
    True
    >>> with torch.no_grad():
    ...     lm.model.transformer.h[0].mlp.c_proj.weight[0, 0] += 1.0  # one weight changed
    >>> model_fingerprint(lm.model, lm.tokenizer) == lm.fingerprint
    False
    """
    weights = tensors_digest(model.state_dict().items())
    return xxhash.xxh3_128_hexdigest(f"{weights}|{tokenizer_digest(tokenizer)}".encode())


@functools.lru_cache(maxsize=None)
def code_version(kind: str) -> str:
    """A hash of the source of the modules that determine results of ``kind`` (:data:`CODE_MODULES`; ``all`` =
    every fnet module), plus the torch and transformers versions. See the module docstring for why."""
    import torch
    import transformers

    files = code_files(kind)
    digest = xxhash.xxh3_64()
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    digest.update(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Atomic writes, locks, corrupt entries
# --------------------------------------------------------------------------------------------------------------
def temp_path(path: str | os.PathLike) -> Path:
    """A unique temporary name beside ``path`` (same folder, so ``os.replace`` is atomic): pid + random."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path`` (file or folder); on success it replaces ``path`` with
    ``os.replace`` (a folder that already exists is replaced after being moved aside), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            old = temp_path(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file renamed into place, see :func:`atomic_path`); a
    crash mid-write leaves the old file or none, never half of one. Returns ``Path(path)``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def lock(path: str | os.PathLike, timeout: float = -1) -> FileLock:
    """An inter-process lock for ``path`` (the file ``<path>.lock``; the folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=timeout)


def quarantine(path: str | os.PathLike, problem: Any) -> Path:
    """Move a corrupt cache entry aside (``<name>.corrupt-<time>``) so it is recomputed; warn naming it."""
    path = Path(path)
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}")
    os.replace(path, target)
    sidecar = path.with_name(path.name + ENTRY_SUFFIX)
    if sidecar.exists():
        sidecar.unlink()
    log.warning("cache entry %s is corrupt (%s); moved it to %s and recomputing", path, problem, target)
    return target


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def register(path: str | os.PathLike, kind: str, **info: Any) -> None:
    """Describe a cache entry for ``python -m fnet.cache list`` (JSON sidecar ``<entry>.fnet-entry``)."""
    path = Path(path)
    record = dict(kind=kind, created=time.strftime("%Y-%m-%dT%H:%M:%S"), **info)
    atomic_write_text(path.with_name(path.name + ENTRY_SUFFIX), json.dumps(record, indent=1, default=str))


# --------------------------------------------------------------------------------------------------------------
# Listing and pruning
# --------------------------------------------------------------------------------------------------------------
@dataclass
class CacheEntry:
    """One cache entry: ``kind`` (a :data:`KINDS` folder, or ``corrupt`` for a quarantined one)."""

    kind: str
    path: Path
    size: int
    mtime: float
    info: dict

    def row(self) -> dict:
        fingerprint = self.info.get("fingerprint") or ""
        return {"kind": self.kind, "size": _human(self.size), "model": self.info.get("model", "?"),
                "fingerprint": fingerprint[:12] or "?", "signal": self.info.get("signal", ""),
                "created": self.info.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S",
                                                                    time.localtime(self.mtime)),
                "path": str(self.path)}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _candidates(root: Path) -> Iterator[tuple[str, Path]]:
    for kind in KINDS:
        folder = root / kind
        if not folder.is_dir():
            continue
        # activation stores sit one level deeper, in a folder per model
        items = [p for d in folder.iterdir() if d.is_dir() for p in d.iterdir()] if kind == "activations" \
            else list(folder.iterdir())
        for item in items:
            name = item.name
            if name.endswith(ENTRY_SUFFIX) or name.endswith(".lock") or ".tmp-" in name:
                continue
            yield ("corrupt" if ".corrupt-" in name else kind), item


def list_entries(root: str | os.PathLike | None = None) -> list[CacheEntry]:
    """Every entry under ``root`` (default :func:`cache_root`), oldest first."""
    root = Path(root) if root is not None else cache_root()
    entries = []
    for kind, path in _candidates(root):
        info = _read_json(path.with_name(path.name + ENTRY_SUFFIX)) or {}
        if not info and kind == "activations":  # a store's manifest describes it
            manifest = _read_json(path / "manifest.json") or {}
            info = {k: manifest.get(k) for k in ("model", "fingerprint", "signal") if manifest.get(k)}
            info["created"] = (manifest.get("provenance") or {}).get("created")
        entries.append(CacheEntry(kind, path, _size(path), path.stat().st_mtime, info))
    return sorted(entries, key=lambda e: e.mtime)


def parse_age(text: str) -> float:
    """``30d`` / ``12h`` / ``90m`` / ``2w`` / ``45s`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip()
    if len(text) < 2 or text[-1] not in units:
        raise ValueError(f"age {text!r}: expected a number and a unit, one of {list(units)} (e.g. 30d)")
    try:
        return float(text[:-1]) * units[text[-1]]
    except ValueError as err:
        raise ValueError(f"age {text!r}: {text[:-1]!r} is not a number") from err


def prune(root: str | os.PathLike | None = None, *, older_than: float | None = None,
          kinds: Iterable[str] | None = None, dry_run: bool = False) -> list[CacheEntry]:
    """Remove entries last modified more than ``older_than`` seconds ago and/or of the given ``kinds`` (both
    filters apply together); returns what was (or, with ``dry_run``, would be) removed."""
    kinds = set(kinds or [])
    valid = set(KINDS) | {"corrupt"}
    if kinds - valid:
        raise ValueError(f"unknown cache kinds {sorted(kinds - valid)}; valid: {sorted(valid)}")
    now = time.time()
    chosen = [e for e in list_entries(root)
              if (not kinds or e.kind in kinds) and (older_than is None or now - e.mtime > older_than)]
    if not dry_run:
        for entry in chosen:
            if entry.path.is_dir():
                shutil.rmtree(entry.path)
            else:
                entry.path.unlink()
            sidecar = entry.path.with_name(entry.path.name + ENTRY_SUFFIX)
            if sidecar.exists():
                sidecar.unlink()
    return chosen


# --------------------------------------------------------------------------------------------------------------
# Provenance check of networks against a model
# --------------------------------------------------------------------------------------------------------------
class ForeignNetworksError(ValueError):
    """A NetworkSet was found on another model (or another signal / shape) than the one it is applied to."""


def _describe(model: Any, fingerprint: Any, n_layers: Any, width: Any, signal: Any) -> str:
    fp = f"fingerprint {str(fingerprint)[:12]}…" if fingerprint else "no fingerprint"
    return f"{model} ({fp}, {n_layers} layers x {width} {signal})"


def check_compatible(netset: Any, *, model: str, fingerprint: str, n_layers: int, width: int, signal: str,
                     allow_foreign: bool = False, source: str = "networks") -> dict | None:
    """Check that ``netset`` was found on this model: fingerprint (when the networks record one, else the model
    name), layers, width and signal. A mismatch raises :class:`ForeignNetworksError` naming both; with
    ``allow_foreign`` it is returned instead, as ``{"networks": ..., "model": ...}`` for the result's provenance.
    Returns ``None`` when they match."""
    prov = dict(getattr(netset, "provenance", {}) or {})
    found = {"model": prov.get("model"), "fingerprint": prov.get("model_fingerprint"),
             "n_layers": int(netset.n_layers), "width": int(netset.width), "signal": prov.get("signal")}
    here = {"model": model, "fingerprint": fingerprint, "n_layers": int(n_layers), "width": int(width),
            "signal": signal}
    problems = []
    if found["fingerprint"]:
        if found["fingerprint"] != fingerprint:
            problems.append("model fingerprint")
    elif found["model"] is not None and found["model"] != model:
        problems.append("model name (the networks record no fingerprint)")
    if (found["n_layers"], found["width"]) != (here["n_layers"], here["width"]):
        problems.append("shape")
    if found["signal"] is not None and found["signal"] != signal:
        problems.append("signal")
    if not problems:
        return None
    message = (f"{source} were found on {_describe(**found)} but the model is {_describe(**here)}: "
               f"{', '.join(problems)} differ")
    if not allow_foreign or "shape" in problems:
        hint = "" if "shape" in problems else "; set mask.allow_foreign=true to apply them anyway (recorded)"
        raise ForeignNetworksError(message + hint)
    log.warning("applying foreign networks (mask.allow_foreign=true): %s", message)
    return {"networks": found, "model": here, "differ": problems}


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m fnet.cache list|prune ...``: list or prune fnet's caches; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fnet.cache", description="List or prune fnet's caches.")
    parser.add_argument("--root", default=None, help="cache root (default: $FNET_CACHE or ~/.cache/fnet)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list entries: kind, size, model, fingerprint, signal, created")
    pr = sub.add_parser("prune", help="remove entries")
    pr.add_argument("--older-than", default=None, help="age such as 30d, 12h, 2w")
    pr.add_argument("--kind", action="append", default=None, help=f"one of {list(KINDS) + ['corrupt']}")
    pr.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else cache_root()
    if args.command == "list":
        entries = list_entries(root)
        rows = [e.row() for e in entries]
        from fnet.report import markdown_table

        print(markdown_table(rows) if rows else f"no cache entries under {root}")
        print(f"\n{len(entries)} entries, {_human(sum(e.size for e in entries))} under {root}")
        return 0
    if args.older_than is None and not args.kind:
        parser.error("prune needs --older-than and/or --kind (to remove everything: --older-than 0s)")
    try:
        older = parse_age(args.older_than) if args.older_than else None
        removed = prune(root, older_than=older, kinds=args.kind, dry_run=args.dry_run)
    except ValueError as err:
        parser.error(str(err))
    verb = "would remove" if args.dry_run else "removed"
    for entry in removed:
        print(f"{verb} {entry.kind:15s} {_human(entry.size):>9s}  {entry.path}")
    print(f"{verb} {len(removed)} entries, {_human(sum(e.size for e in removed))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
