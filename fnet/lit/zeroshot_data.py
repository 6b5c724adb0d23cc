"""The data side of zero-/few-shot evaluation: a task's scored rows as Lightning data.

:class:`ZeroShotDataModule` loads the scored split (``limit``: a seeded :func:`subsample`), turns rows into
:class:`fnet.scoring.Request`\\ s (or perplexity windows), sorts them by length so batches pad little, and under DDP
hands each example to exactly one process (:class:`UnpaddedDistributedSampler`). The scoring module that consumes
it is :class:`fnet.lit.zeroshot.ZeroShotModule`.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fnet import scoring
from fnet.scoring import PromptBuilder
from fnet.scoring.rows import load_task_rows, split_provenance
from fnet.scoring.tasks import check_whole_number, get_task

__all__ = ["ZeroShotDataModule", "UnpaddedDistributedSampler", "RequestDataset", "subsample"]


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------
def subsample(rows: Sequence[dict], limit: int | None, seed: int = 0) -> list[dict]:
    """At most ``limit`` rows, a seeded random subset kept in file order.

    Parameters
    ----------
    rows : sequence of dict
        The rows of a split.
    limit : int or None
        How many to keep; ``None`` (or a limit >= ``len(rows)``) keeps all.
    seed : int
        Seed of the subset.

    Returns
    -------
    list of dict

    Examples
    --------
    >>> rows = [{"index": i} for i in range(10)]
    >>> kept = [r["index"] for r in subsample(rows, 4, seed=0)]
    >>> len(kept), kept == sorted(kept), kept == [r["index"] for r in subsample(rows, 4, seed=0)]
    (4, True, True)
    >>> len(subsample(rows, None)), len(subsample(rows, 50))
    (10, 10)
    """
    rows = list(rows)
    if limit is None or int(limit) >= len(rows):
        return rows
    keep = np.sort(np.random.default_rng(int(seed)).choice(len(rows), size=int(limit), replace=False))
    return [rows[i] for i in keep]


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank r gets items r, r + world, r + 2 world, ... -- every item exactly once over all ranks (the stock
    ``DistributedSampler`` pads with repeats so ranks have equal counts, which would count some examples twice).
    A ``DistributedSampler`` subclass, so Lightning keeps it instead of inserting its own."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class RequestDataset(Dataset):
    """A list of prepared items (:class:`~fnet.scoring.Request`\\ s or perplexity windows) as a map-style dataset."""

    def __init__(self, items: Sequence[Any]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _collate(batch: list) -> list:
    """Batches stay lists of items: the scoring functions pad them themselves."""
    return batch


class ZeroShotDataModule(pl.LightningDataModule):
    """The scored rows of one task, ready for :class:`~fnet.lit.zeroshot.ZeroShotModule`.

    Parameters
    ----------
    task : str, mapping or TaskSpec
        A task name, config or :class:`~fnet.scoring.tasks.TaskSpec`.
    tokenizer : transformers tokenizer
        The model's tokenizer.
    data_dir : str, optional
        Offline data folder (default: ``$FNET_DATA_DIR`` or ``../shared/data``).
    batch_size : int
        Rows per step (loglik: a row is one sequence per choice, or one when choices are single tokens).
    num_workers : int
        DataLoader worker processes.
    limit, seed : int, optional
        Override ``task.limit`` / ``task.seed`` (seeded subsample of the scored split).
    max_length : int, optional
        Token budget of a sequence (prompts are cut from the left); default the model's limit.
    sort_by_length : bool
        Longest rows first, so a batch holds rows of similar length.
    """

    def __init__(
        self,
        task: Any,
        tokenizer: Any,
        *,
        data_dir: str | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        limit: int | None = None,
        seed: int | None = None,
        max_length: int | None = None,
        sort_by_length: bool = True,
    ):
        super().__init__()
        self.task = get_task(task)
        self.tokenizer = tokenizer
        self.data_dir = data_dir
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.limit = self.task.limit if limit is None else check_whole_number(limit, "limit", minimum=1)
        self.seed = self.task.seed if seed is None else check_whole_number(seed, "seed", minimum=0)
        self.max_length = max_length
        self.sort_by_length = sort_by_length
        self.rows: list[dict] = []
        self.dataset: RequestDataset | None = None
        self.builder: PromptBuilder | None = None
        self.provenance: dict = {}

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        task = self.task
        if task.type == "perplexity":
            self._setup_perplexity()
            return
        rows = load_task_rows(task, task.eval_split, self.data_dir)
        self.rows = subsample(rows, self.limit, self.seed)
        pool: list[dict] = []
        if task.num_fewshot:
            pool = load_task_rows(task, task.fewshot_split, self.data_dir)
        self.builder = PromptBuilder(task, self.tokenizer, pool, same_split=task.fewshot_split == task.eval_split)
        calibrate = bool(task.calibrate)
        requests = [self.builder.request(row, calibrate=calibrate) for row in self.rows]
        scoring.align_prefixes(requests)  # one shared-prefix length for the task: a token prefix of every prompt
        if self.sort_by_length:
            requests.sort(key=lambda r: (-len(r.context_tokens), r.index))
        self.dataset = RequestDataset(requests)
        self.provenance = {
            "scored": split_provenance(task, task.eval_split, self.data_dir),
            "n_rows": len(rows),
            "n_scored": len(self.rows),
            "limit": self.limit,
            "seed": self.seed,
        }
        if task.num_fewshot:
            self.provenance["fewshot"] = dict(
                split_provenance(task, task.fewshot_split, self.data_dir),
                pool=len(pool),
                k=task.num_fewshot,
                **(task.fewshot or {}),
            )

    def _setup_perplexity(self) -> None:
        task = self.task
        rows = load_task_rows(task, task.eval_split, self.data_dir)
        text = "\n".join(r["text_a"] for r in rows)
        tokens = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        options = task.perplexity or {}
        max_length = int(options.get("max_length", 512))
        if self.max_length is not None:
            max_length = min(max_length, int(self.max_length))
        stride = min(int(options.get("stride") or max_length - 1), max_length - 1)
        windows = scoring.perplexity_windows(len(tokens), max_length, stride)
        chosen = subsample([{"i": i} for i in range(len(windows))], self.limit, self.seed)
        items = [
            {"index": c["i"], "tokens": tokens[windows[c["i"]][0] : windows[c["i"]][1]], "n_scored": windows[c["i"]][2]}
            for c in chosen
        ]
        self.rows = items
        self.dataset = RequestDataset(items)
        self.provenance = {
            "scored": split_provenance(task, task.eval_split, self.data_dir),
            "n_tokens": len(tokens),
            "n_windows": len(windows),
            "n_scored_windows": len(items),
            "max_length": max_length,
            "stride": stride,
            "limit": self.limit,
            "seed": self.seed,
        }

    def _loader(self) -> DataLoader:
        self.setup()
        sampler = None
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            sampler = UnpaddedDistributedSampler(self.dataset, trainer.world_size, trainer.global_rank)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
