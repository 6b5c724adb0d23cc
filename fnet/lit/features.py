"""Fine-tuning from cached features: the frozen lower blocks' output computed once per row, stored in the fnet
cache, and every training run (each seed, each epoch) run from it (``module.cache_features=true``).

When only the top blocks train, most of a training step is the forward through the frozen lower blocks, and it
gives the same result every epoch and every seed. :func:`cached_feature_data` computes, for every row of the
train / validation / test splits, the hidden state entering the lowest trained block
(:func:`fnet.lit.lower_blocks.lower_output`: eval mode, no gradients, the task modules' own forward), stores it,
and wraps the data module so each batch carries it as ``lower_hidden`` ``[batch, seq, d_model]``, padded on the
side and to the length of the batch's ``input_ids``. The task modules then run only the trained blocks, the final
norm and the head (:func:`fnet.lit.lower_blocks.replay_lower_blocks`). The batches are the same batches (same
sampler, same length, same seeded order), so the trained weights equal those of the uncached run to float
tolerance, provided the lower blocks have no active dropout in training (dropout 0, as SmolLM2 and the tiny test
models); with dropout the uncached run would drop units in the frozen blocks and the cached one would not.

Storage (``<cache_root>/features/<key>/``): ``hidden.npy`` ``[tokens, d_model]`` (every row's real tokens, one
after another, in the model's dtype; memory-mapped when read), ``offsets.npy`` ``[rows + 1]`` and
``manifest.json`` (key parts, shapes, the xxh3 digest of ``hidden.npy``, seconds, provenance). The key is the
content that determines the states: the model's fingerprint and dtype, the rows (texts and labels) and their token
ids, the tokenizer and tokenisation settings (max_length, input format...), the padding side, the split block
(N trained blocks of L) and :func:`fnet.cache.code_version` of :data:`FEATURE_CODE`. Not the seed: the states do
not depend on it, so every seed of a task shares one entry. An entry that fails to read or verify (missing file,
wrong shape, digest mismatch) is quarantined and recomputed.

Padding: a stored row holds its real tokens only; the build checks on one padded row that its states equal the row
computed alone (true where position ids count real tokens, as :func:`fnet.lit.classification.final_hidden_states`
gives them), else refuses to cache.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import xxhash
from torch.utils.data import DataLoader, Dataset, RandomSampler

from fnet.cache import atomic_path, cache_root, code_version, content_key, file_digest, lock, quarantine, register
from fnet.lit.classification import final_hidden_states
from fnet.lit.lower_blocks import LowerBlocks, LowerBlocksError, find_lower_blocks, lower_output
from fnet.models import get_arch
from fnet.provenance import provenance

log = logging.getLogger(__name__)

__all__ = [
    "FEATURE_CODE",
    "KIND",
    "FeatureCacheError",
    "FeatureStore",
    "feature_key",
    "lower_features",
    "FeatureCollator",
    "WithFeatures",
    "CachedFeatureData",
    "cached_feature_data",
]

#: the modules whose source determines a stored lower state (its cache key, :func:`fnet.cache.code_version`)
FEATURE_CODE = (
    "fnet.lit.features",
    "fnet.lit.lower_blocks",
    "fnet.lit.classification",
    "fnet.models.arch",
    "fnet.models.discovery",
)
KIND = "features"  # the cache folder (fnet.cache.KINDS)
#: settings of a data module that decide the token ids (recorded in the key beside the ids themselves)
TOKEN_SETTINGS = ("max_length", "input_format", "pair_separator", "doc_stride", "question_separator")
#: numpy storage dtype per torch dtype (bfloat16 is stored as its 16 bits)
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16, torch.float64: np.float64}


class FeatureCacheError(RuntimeError):
    """A stored entry cannot be read or does not verify."""


# --------------------------------------------------------------------------------------------------------------
# One stored split
# --------------------------------------------------------------------------------------------------------------
@dataclass
class FeatureStore:
    """The stored lower states of one split's rows. ``row(i)`` is row ``i``'s ``[tokens_i, d_model]`` tensor."""

    path: Path
    hidden: np.ndarray  # [tokens, d_model], memory-mapped
    offsets: np.ndarray  # [rows + 1]
    dtype: torch.dtype
    manifest: dict

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def d_model(self) -> int:
        return int(self.hidden.shape[1])

    def row(self, index: int) -> torch.Tensor:
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        out = torch.from_numpy(np.array(self.hidden[lo:hi]))
        return out.view(self.dtype) if self.dtype == torch.bfloat16 else out

    @classmethod
    def open(cls, path: Path, key: str) -> "FeatureStore":
        """Read and verify an entry; :class:`FeatureCacheError` names what is wrong."""
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError) as err:
            raise FeatureCacheError(f"manifest unreadable: {err}") from err
        if manifest.get("key") != key:
            raise FeatureCacheError(f"manifest key {manifest.get('key')!r} is not the entry's {key!r}")
        try:
            digest = file_digest(path / "hidden.npy", memo=False)
            hidden = np.load(path / "hidden.npy", mmap_mode="r" if int(manifest.get("n_tokens", 0)) else None)
            offsets = np.load(path / "offsets.npy")
        except (OSError, ValueError) as err:
            raise FeatureCacheError(f"arrays unreadable: {err}") from err
        if digest != manifest.get("digest"):
            raise FeatureCacheError(f"hidden.npy digest {digest} is not the manifest's {manifest.get('digest')}")
        shape = (int(manifest["n_tokens"]), int(manifest["d_model"]))
        if (
            tuple(hidden.shape) != shape
            or len(offsets) != int(manifest["n_rows"]) + 1
            or (len(offsets) and int(offsets[-1]) != shape[0])
        ):
            raise FeatureCacheError(
                f"shapes {tuple(hidden.shape)} / {len(offsets)} offsets do not match the "
                f"manifest ({shape}, {manifest['n_rows']} rows)"
            )
        return cls(path, hidden, offsets, getattr(torch, manifest["dtype"]), manifest)


def _digest(items: Sequence[Any]) -> str:
    digest = xxhash.xxh3_128()
    for item in items:
        digest.update(json.dumps(item, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def feature_key(
    *,
    fingerprint: str,
    dtype: str,
    lower: LowerBlocks,
    tokens: Sequence[Sequence[int]],
    rows: Sequence[Mapping],
    tokenizer: Any,
    settings: Mapping[str, Any],
    padding_side: str,
) -> tuple[str, dict]:
    """(key, key parts) of one split's stored lower states; see the module docstring for what is in it."""
    parts = {
        "model_fingerprint": fingerprint,
        "dtype": dtype,
        "split_block": lower.split,
        "n_blocks": lower.n_blocks,
        "trained_blocks": lower.n_blocks - lower.split,
        "n_rows": len(tokens),
        "rows": _digest([{k: v for k, v in r.items() if k != "index"} for r in rows]),
        "token_ids": _digest(tokens),
        "tokenizer": {
            "class": type(tokenizer).__name__,
            "name_or_path": getattr(tokenizer, "name_or_path", None),
            "vocab": len(tokenizer) if tokenizer is not None else None,
            "pad_token_id": getattr(tokenizer, "pad_token_id", None),
        },
        "settings": {k: settings.get(k) for k in TOKEN_SETTINGS if k in settings},
        "padding_side": padding_side,
        "code": code_version(*FEATURE_CODE),
    }
    return content_key(KIND, parts, length=24), parts


# --------------------------------------------------------------------------------------------------------------
# Building an entry
# --------------------------------------------------------------------------------------------------------------
def _pad(batch_tokens: list[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    seq = max(len(t) for t in batch_tokens)
    ids = torch.full((len(batch_tokens), seq), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_tokens), seq), dtype=torch.long)
    for j, t in enumerate(batch_tokens):
        lo = seq - len(t) if side == "left" else 0
        ids[j, lo : lo + len(t)] = torch.as_tensor(list(t), dtype=torch.long)
        mask[j, lo : lo + len(t)] = 1
    return ids, mask


def _check_padding(model, lower, forward, row_tokens, batched_state, pad_tolerance: float) -> None:
    """A padded row's stored states must equal the row computed alone."""
    ids = torch.as_tensor([list(row_tokens)], dtype=torch.long)
    alone = lower_output(model, lower, forward, ids, torch.ones_like(ids))[0].float().cpu()
    diff = (alone - batched_state.float()).abs().max().item()
    scale = alone.abs().max().item() + 1e-6
    if diff > pad_tolerance * scale:
        raise LowerBlocksError(
            f"a padded row's lower states differ from the row alone (max |diff| {diff:.3g} of "
            f"scale {scale:.3g}): this model's real-token states depend on padding, so they "
            f"cannot be stored per row; do not cache features"
        )


def _build(
    path: Path,
    model,
    lower: LowerBlocks,
    forward,
    tokens: Sequence[Sequence[int]],
    pad_id: int,
    side: str,
    batch_size: int,
) -> dict:
    """Compute and write the arrays of an entry into the folder ``path``; returns shape facts."""
    from numpy.lib.format import open_memmap  # numpy's .npy writer for a file larger than memory

    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    dims = get_arch(model).d_model
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    pad_tolerance = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    path.mkdir(parents=True, exist_ok=True)
    shape = (int(offsets[-1]), dims)
    if shape[0] == 0:  # no rows (an empty split): nothing to map
        np.save(path / "hidden.npy", np.zeros(shape, dtype=_NUMPY[dtype]))
    else:
        hidden = open_memmap(path / "hidden.npy", mode="w+", dtype=_NUMPY[dtype], shape=shape)
        order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
        device = next(model.parameters()).device
        checked = False
        with torch.random.fork_rng(devices=[]):  # eval mode draws nothing; the run's random stream stays put
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                ids, mask = _pad([tokens[i] for i in chunk], pad_id, side)
                state = lower_output(model, lower, forward, ids.to(device), mask.to(device)).cpu()  # [b, seq, d]
                for j, i in enumerate(chunk):
                    real = state[j][mask[j].bool()]  # [tokens_i, d]
                    hidden[offsets[i] : offsets[i + 1]] = (
                        real.view(torch.int16) if dtype == torch.bfloat16 else real
                    ).numpy()
                if not checked and (mask == 0).any():
                    j = int(mask.sum(1).argmin())
                    _check_padding(model, lower, forward, tokens[chunk[j]], state[j][mask[j].bool()], pad_tolerance)
                    checked = True
        hidden.flush()
        del hidden
    np.save(path / "offsets.npy", offsets)
    return {
        "n_rows": len(tokens),
        "n_tokens": shape[0],
        "d_model": dims,
        "dtype": str(dtype).removeprefix("torch."),
        "digest": file_digest(path / "hidden.npy", memo=False),
    }


def lower_features(
    model,
    lower: LowerBlocks,
    tokens: Sequence[Sequence[int]],
    key: str,
    parts: Mapping[str, Any],
    *,
    forward: Callable = final_hidden_states,
    pad_id: int = 0,
    padding_side: str = "right",
    batch_size: int = 32,
    describe: Mapping[str, Any] | None = None,
) -> tuple[FeatureStore, dict]:
    """The stored lower states of ``tokens`` under ``key`` (:func:`feature_key`): read when the entry exists and
    verifies, else computed (a corrupt entry is quarantined first) and written atomically under a lock.
    Returns the store and ``{key, path, hit, seconds, ...}``."""
    entry = cache_root() / KIND / key
    started = time.time()
    with lock(entry):
        if entry.exists():
            try:
                store = FeatureStore.open(entry, key)
                if len(store) != len(tokens):
                    raise FeatureCacheError(f"{len(store)} rows stored, {len(tokens)} asked for")
                return store, {
                    "key": key,
                    "path": str(entry),
                    "hit": True,
                    "seconds": round(time.time() - started, 2),
                    "n_rows": len(store),
                    "n_tokens": int(store.offsets[-1]),
                }
            except FeatureCacheError as err:
                quarantine(entry, err)
        with atomic_path(entry) as tmp:
            facts = _build(tmp, model, lower, forward, tokens, pad_id, padding_side, batch_size)
            seconds = round(time.time() - started, 2)
            manifest = dict(
                facts,
                key=key,
                parts=dict(parts),
                lower_blocks=lower.describe(),
                seconds=seconds,
                padding_side=padding_side,
                **dict(describe or {}),
                provenance=provenance(kind=KIND, key=key),
            )
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        register(
            entry,
            KIND,
            model=(describe or {}).get("model", "?"),
            fingerprint=parts.get("model_fingerprint"),
            signal=f"block {lower.split} input",
            rows=len(tokens),
        )
        log.warning(
            "stored the lower-block states (blocks 0-%d of %d) of %d rows in %s (%.0f s)",
            lower.split - 1,
            lower.n_blocks,
            len(tokens),
            entry,
            seconds,
        )
        store = FeatureStore.open(entry, key)
    return store, {
        "key": key,
        "path": str(entry),
        "hit": False,
        "seconds": seconds,
        "n_rows": len(store),
        "n_tokens": int(store.offsets[-1]),
    }


# --------------------------------------------------------------------------------------------------------------
# Batches that carry the stored states
# --------------------------------------------------------------------------------------------------------------
class WithFeatures(Dataset):
    """A split's dataset whose items also name their stored row (``lower_row``)."""

    def __init__(self, dataset, store: FeatureStore):
        if len(dataset) != len(store):
            raise FeatureCacheError(f"the dataset has {len(dataset)} rows, the store {len(store)}")
        self.dataset, self.store = dataset, store

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return dict(self.dataset[index], lower_row=int(index))


class FeatureCollator:
    """The data module's collator, plus ``lower_hidden`` ``[batch, seq, d_model]``: each row's stored states
    placed where its tokens are (right or left padding, as the inner collator pads), zeros at padding."""

    def __init__(self, inner: Callable, store: FeatureStore, padding_side: str):
        self.inner, self.store, self.padding_side = inner, store, padding_side

    def __call__(self, items: list[dict]) -> dict:
        rows = [item["lower_row"] for item in items]
        batch = self.inner([{k: v for k, v in item.items() if k != "lower_row"} for item in items])
        mask = batch["attention_mask"]
        seq = mask.shape[1]
        states = [self.store.row(r) for r in rows]
        lower = torch.zeros((len(rows), seq, self.store.d_model), dtype=states[0].dtype if states else torch.float32)
        for j, state in enumerate(states):
            n = state.shape[0]
            if n != int(mask[j].sum()):
                raise FeatureCacheError(f"row {rows[j]}: {n} stored states for {int(mask[j].sum())} tokens")
            if self.padding_side == "left":
                lower[j, seq - n :] = state
            else:
                lower[j, :n] = state
        batch["lower_hidden"] = lower
        return batch


class CachedFeatureData(pl.LightningDataModule):
    """A fine-tuning data module (``inner``) whose loaders' batches carry ``lower_hidden``. Same datasets, batch
    sizes and shuffling as ``inner``'s loaders (so the same batches in the same seeded order); its
    hyperparameters are ``inner``'s (what checkpoints record for evaluation)."""

    def __init__(self, inner: pl.LightningDataModule, stores: Mapping[str, FeatureStore]):
        super().__init__()
        self.inner = inner
        self.stores = dict(stores)
        self.save_hyperparameters(dict(inner.hparams), logger=False)

    def setup(self, stage: str | None = None) -> None:
        self.inner.setup(stage)

    def _wrap(self, loader: DataLoader, split: str) -> DataLoader:
        store = self.stores.get(split)
        if store is None:
            return loader
        side = getattr(loader.collate_fn, "padding_side", None) or getattr(
            getattr(self.inner, "tokenizer", None), "padding_side", "right"
        )
        return DataLoader(
            WithFeatures(loader.dataset, store),
            batch_size=loader.batch_size,
            shuffle=isinstance(loader.sampler, RandomSampler),
            collate_fn=FeatureCollator(loader.collate_fn, store, side),
            num_workers=loader.num_workers,
            persistent_workers=loader.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._wrap(self.inner.train_dataloader(), "train")

    def val_dataloader(self) -> DataLoader:
        return self._wrap(self.inner.val_dataloader(), "validation")

    def test_dataloader(self) -> DataLoader:
        return self._wrap(self.inner.test_dataloader(), "test")

    def predict_dataloader(self) -> DataLoader:
        return self._wrap(self.inner.predict_dataloader(), "test")


def _tokens(dataset) -> list[list[int]]:
    if hasattr(dataset, "column_names"):  # a datasets.Dataset: one column read
        return [list(t) for t in dataset["input_ids"]]
    return [list(item["input_ids"]) for item in dataset]


def cached_feature_data(
    module,
    datamodule,
    *,
    fingerprint: str,
    dtype: str,
    model_name: str = "?",
    splits: Sequence[str] = ("train", "validation", "test"),
    batch_size: int = 32,
) -> tuple[CachedFeatureData, dict]:
    """Store (or read) the lower-block states of ``datamodule``'s splits for ``module`` (a
    :class:`~fnet.lit.classification.CausalLMTaskModule` whose bottom blocks are frozen) and return the wrapped
    data module plus what ``result.json`` records (``used``, split block, per split key / hit / seconds).
    ``fingerprint`` and ``dtype`` are the loaded model's (:class:`fnet.models.LoadedModel`)."""
    started = time.time()
    datamodule.setup("fit")
    lower = find_lower_blocks(module.model, final_hidden_states)
    module.lower_blocks = lower
    tokenizer = getattr(datamodule, "tokenizer", None) or getattr(module, "tokenizer", None)
    side = datamodule.hparams.get("padding_side") or getattr(tokenizer, "padding_side", None) or "right"
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = int(pad_id) if pad_id is not None else 0
    stores, entries = {}, {}
    for split in splits:
        dataset = datamodule.datasets.get(split)
        if dataset is None:
            continue
        tokens = _tokens(dataset)
        key, parts = feature_key(
            fingerprint=fingerprint,
            dtype=dtype,
            lower=lower,
            tokens=tokens,
            rows=datamodule.splits.get(split, []),
            tokenizer=tokenizer,
            settings=dict(datamodule.hparams),
            padding_side=side,
        )
        stores[split], entries[split] = lower_features(
            module.model,
            lower,
            tokens,
            key,
            parts,
            pad_id=pad_id,
            padding_side=side,
            batch_size=batch_size,
            describe={"model": model_name, "split": split},
        )
    info = {
        "used": True,
        "lower_blocks": lower.describe(),
        "entries": entries,
        "seconds": round(time.time() - started, 1),
        "built": sum(1 for e in entries.values() if not e["hit"]),
        "reused": sum(1 for e in entries.values() if e["hit"]),
    }
    log.warning(
        "cached features: blocks 0-%d of %d replayed from %s (%d built, %d reused, %.0f s)",
        lower.split - 1,
        lower.n_blocks,
        cache_root() / KIND,
        info["built"],
        info["reused"],
        info["seconds"],
    )
    return CachedFeatureData(datamodule, stores), info
