"""Seeded train / validation / test splits of a task's rows for fine-tuning.

A task with a training split of its own (on the hub, or offline in ``local.paths.train``: SST-2, CoLA and MRPC's
official GLUE train files) trains on it (a seeded part held out for validation) and is tested on its whole scored
split (the GLUE dev file), as GLUE papers do. A task with only a dev/test file offline (QNLI, MNLI, AG News, SQuAD)
has that file split with a seed into train/validation/test (70/10/20 by default), rows sharing a text in one part.

Used by fine-tuning (:mod:`fnet.lit.datamodules`) and by the ``task:<name>`` stimulus source, which records
the training rows a fine-tuned model learned from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fnet.scoring.rows import load_task_rows, resolve_data_dir, resolve_source
from fnet.scoring.tasks import get_task

__all__ = ["split_rows", "fine_tuning_splits"]


def split_rows(
    rows: Sequence[dict],
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    group_key: Callable[[dict], Any] | None = None,
) -> dict[str, list[dict]]:
    """Split ``rows`` into ``train``/``validation``/``test`` with a seeded permutation of their groups.

    ``group_key(row)`` names a row's group (default: its text pair); a group never straddles two splits, so a
    duplicated sentence cannot be trained on and tested. ``fractions`` are of groups, must be 3 non-negative
    numbers summing to 1; a part may be empty (fraction 0). Deterministic for a given row order and seed; each
    part lists its rows in the permuted order (so taking a part's first N rows is a seeded random subset)."""
    fractions = [float(f) for f in fractions]
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"split fractions must be 3 non-negative numbers summing to 1 (train, val, test), got {fractions}"
        )
    key = group_key or (lambda row: (row.get("text_a"), row.get("text_b")))
    groups: dict[Any, list[dict]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    keys = list(groups)
    order = np.random.default_rng(int(seed)).permutation(len(keys))
    n_train = int(np.floor(fractions[0] * len(keys)))
    n_val = int(np.floor(fractions[1] * len(keys)))
    if fractions[2] == 0:  # no test part: the remainder goes to train
        n_train = len(keys) - n_val
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, len(keys))}
    return {name: [row for i in order[lo:hi] for row in groups[keys[i]]] for name, (lo, hi) in bounds.items()}


def fine_tuning_splits(
    task: Any,
    data_dir: str | Path | None = None,
    source: str = "auto",
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    group_key: Callable[[dict], Any] | None = None,
    rows: Sequence[dict] | None = None,
) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The train/validation/test rows of a task for fine-tuning and a description of how they were made.

    ``rows`` (tests, custom data): split these instead of loading the task's file."""
    spec = get_task(task)
    if source != "auto":
        spec = dataclasses.replace(spec, source=source)
    fractions = [float(f) for f in fractions]
    info: dict[str, Any] = {"task": spec.name, "split_seed": int(seed), "fractions": fractions}
    if rows is not None:
        parts = split_rows(rows, fractions, seed, group_key)
        info.update(
            source="rows given in code",
            rule=f"seeded split of {len(rows)} given rows (train/validation/test fractions {fractions}, seed {seed})",
        )
        return parts, info
    resolved = resolve_source(spec, data_dir, "all" if spec.local else "validation")
    own_train = resolved == "local" and bool(((spec.local or {}).get("paths") or {}).get("train"))
    if resolved == "local" and not own_train:
        pool = load_task_rows(spec, "all", data_dir)
        parts = split_rows(pool, fractions, seed, group_key)
        local = spec.local or {}
        path = (Path(resolve_data_dir(data_dir)) / str(local.get("path"))).resolve()
        info.update(
            source="local",
            path=str(path),
            rule=(
                f"offline: no training split exists, so the local file {path.name} ({len(pool)} rows) was split "
                f"with seed {seed} into train/validation/test = {fractions}; rows sharing a text (SQuAD: a "
                f"paragraph) stay in one part, and the test part is never trained on"
            ),
        )
    else:  # a training split of its own: train/validation from it, test = the whole scored split
        pool = load_task_rows(spec, "train", data_dir)
        total = fractions[0] + fractions[1]
        train_val = split_rows(pool, [fractions[0] / total, fractions[1] / total, 0.0], seed, group_key)
        parts = {
            "train": train_val["train"],
            "validation": train_val["validation"],
            "test": load_task_rows(spec, "validation", data_dir),
        }
        if own_train:
            local = spec.local or {}
            root = Path(resolve_data_dir(data_dir))
            info.update(
                source="local",
                path=str((root / str(local["paths"]["train"])).resolve()),
                test_path=str((root / str(local["path"])).resolve()),
                rule=(
                    f"offline: the train file {Path(local['paths']['train']).name} (local.paths.train, "
                    f"{len(pool)} rows) divided with seed {seed} into train/validation "
                    f"({fractions[0] / total:.2f}/{fractions[1] / total:.2f}); test = the whole "
                    f"{Path(str(local['path'])).name} ({len(parts['test'])} rows), never trained on"
                ),
            )
        else:
            hub = spec.hub or {}
            info.update(
                source="hub",
                path=f"{hub.get('path')}/{hub.get('name')}",
                rule=(
                    f"hub: train split divided with seed {seed} into train/validation "
                    f"({fractions[0] / total:.2f}/{fractions[1] / total:.2f}); test = the hub's validation split"
                ),
            )
    return parts, info
