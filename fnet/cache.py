"""fnet's on-disk caches: content keys, model fingerprints, atomic writes, locks, corrupt entries, listing.

Every cached result (a converted GGUF folder, an activation store, a NetworkSet, an unmasked baseline, the stored
lower-block states of fine-tuning rows) lives under one root, :func:`cache_root` (``$FNET_CACHE``, the same folder
as ``paths.cache_dir`` of ``conf/paths/default.yaml``), in a folder per kind, and is keyed by the *content* that
determines it:

* the model's fingerprint (:func:`fnet.models.fingerprint.model_fingerprint`, a hash of the loaded weights and
  the tokenizer, so a re-saved checkpoint or another dtype is a new model whatever its path says);
* the settings and texts (the caller's key parts, hashed by :func:`content_key`);
* :func:`code_version` of the modules that compute that kind of result, named by the module that owns the kind
  (this module sits at the bottom of fnet's layers and imports nothing of fnet, nor knows its upper modules).

Why a source hash, not a version constant: a per-stage constant must be bumped by hand and is forgotten exactly
when it matters (a fix in a hook or a threshold); a hash over the source files of the modules that determine a
result changes whenever they do. It is computed from the *imported* modules' files (found by module name), so it
survives a file being moved, and per kind (each caller names its modules), so editing the report code does not
throw away recorded activations. The price is a recomputation after a comment-only edit, which is safe. The torch and
transformers versions are part of it (a new kernel can change activations).

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
    "KINDS",
    "code_files",
    "cache_root",
    "content_key",
    "file_digest",
    "code_version",
    "temp_path",
    "atomic_path",
    "atomic_write_text",
    "lock",
    "quarantine",
    "register",
    "CacheEntry",
    "list_entries",
    "prune",
    "parse_age",
    "main",
]

#: the cache's kinds, each a folder under the root
KINDS = ("models", "activations", "networks", "eval_baselines", "features")
ENTRY_SUFFIX = ".fnet-entry"  # JSON; not named *.json so globs over a kind's entries never match it


def code_files(*modules: str) -> list[Path]:
    """The source files of ``modules`` (importable names; a package stands for every module in it), sorted.

    The module that owns a kind of result names what determines it, e.g. ``fnet.recording.cached.ACTIVATION_CODE``;
    ``code_files("fnet")`` is every fnet module.

    Raises
    ------
    ValueError
        For no module, or a name that does not resolve (a moved or renamed module must be renamed where it is
        named too; skipping it would let its edits go unnoticed by the caches).
    """
    if not modules:
        raise ValueError("code_files needs at least one module name, e.g. code_files('fnet.models')")
    files: set[Path] = set()
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is None or not spec.origin:
            raise ValueError(
                f"code modules {list(modules)} name {name!r}, which is not an importable module or "
                "package; rename it where the modules are listed"
            )
        if spec.submodule_search_locations:  # a package: every module in it
            for folder in spec.submodule_search_locations:
                files.update(Path(folder).rglob("*.py"))
        else:
            files.add(Path(spec.origin))
    return sorted(files)


def cache_root() -> Path:
    """The root of every fnet cache (converted models, activations, networks, baselines): ``$FNET_CACHE``, else
    ``$XDG_CACHE_HOME/fnet``, else ``~/.cache/fnet`` -- the same folder as ``paths.cache_dir`` of
    ``conf/paths/default.yaml``."""
    root = os.environ.get("FNET_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "fnet")
    return Path(root).expanduser()


# --------------------------------------------------------------------------------------------------------------
# Keys
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


@functools.lru_cache(maxsize=None)
def code_version(*modules: str) -> str:
    """A hash of the source of ``modules`` (:func:`code_files`; ``"fnet"`` = every fnet module), plus the torch and
    transformers versions. See the module docstring for why."""
    import torch  # heavy; only the code hash needs their versions
    import transformers

    digest = xxhash.xxh3_64()
    for file in code_files(*modules):
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
        return {
            "kind": self.kind,
            "size": _human(self.size),
            "model": self.info.get("model", "?"),
            "fingerprint": fingerprint[:12] or "?",
            "signal": self.info.get("signal", ""),
            "created": self.info.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.mtime)),
            "path": str(self.path),
        }


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
        items = (
            [p for d in folder.iterdir() if d.is_dir() for p in d.iterdir()]
            if kind == "activations"
            else list(folder.iterdir())
        )
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


def _table(rows: list[dict]) -> str:
    """Rows as aligned text columns (the listing's only table; fnet.report's tables sit layers above)."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


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


def prune(
    root: str | os.PathLike | None = None,
    *,
    older_than: float | None = None,
    kinds: Iterable[str] | None = None,
    dry_run: bool = False,
) -> list[CacheEntry]:
    """Remove entries last modified more than ``older_than`` seconds ago and/or of the given ``kinds`` (both
    filters apply together); returns what was (or, with ``dry_run``, would be) removed."""
    kinds = set(kinds or [])
    valid = set(KINDS) | {"corrupt"}
    if kinds - valid:
        raise ValueError(f"unknown cache kinds {sorted(kinds - valid)}; valid: {sorted(valid)}")
    now = time.time()
    chosen = [
        e
        for e in list_entries(root)
        if (not kinds or e.kind in kinds) and (older_than is None or now - e.mtime > older_than)
    ]
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
        print(_table([e.row() for e in entries]) if entries else f"no cache entries under {root}")
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
