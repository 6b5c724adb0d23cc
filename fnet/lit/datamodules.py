"""LightningDataModules for fine-tuning a causal LM on an fnet task (``conf/task/*.yaml``).

Rows come from :func:`fnet.scoring.rows.load_task_rows`, the single source of rows. Where they come from decides the
splits (:func:`fnet.scoring.splits.fine_tuning_splits`):

* ``local`` (offline; only a dev/test file exists): the **whole file** is split with a fixed seed into
  train / validation / test (default 70/10/20). Rows that share a text (or, for SQuAD, a paragraph) stay in the
  same part, so no test text was trained on. The rule is logged and recorded in :attr:`TaskDataModule.split_info`,
  which ``train.py`` writes into ``result.json``.
* ``hub``: the hub's ``train`` split is split (seeded) into train / validation in the ratio of the first two
  fractions, and the hub's ``validation`` split is the test set (GLUE test labels are hidden).

:class:`TaskDataModule` serves classification tasks (``type: multiple_choice``): batches of ``input_ids``,
``attention_mask`` ``[batch, seq]`` (dynamic padding) and ``labels`` ``[batch]``. :class:`SquadDataModule` serves
extractive QA (SQuAD): the question comes first and the context second (a causal LM's context tokens can then
attend to the question), long contexts are cut into overlapping windows, and batches carry the context character
offsets of every token (``offsets [batch, seq, 2]``, ``-1`` outside the context) plus the examples themselves so
that predictions map back to text.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from fnet.scoring.splits import fine_tuning_splits
from fnet.scoring.tasks import get_task

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")


def _label_summary(rows: Sequence[dict]) -> dict[str, Any]:
    counts = Counter(int(r["label"]) for r in rows if int(r.get("label", -1)) >= 0)
    n = sum(counts.values())
    return {
        "label_counts": {str(k): v for k, v in sorted(counts.items())},
        "majority_rate": (max(counts.values()) / n) if n else None,
    }


# --------------------------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------------------------
class PadCollator:
    """Dynamic padding with the tokenizer (``tokenizer.pad``) on the chosen side; other tensor fields are stacked,
    ``offsets`` are padded with ``-1`` and list fields (``examples``) are passed through."""

    def __init__(self, tokenizer, padding_side: str | None = None, examples: Sequence[dict] | None = None):
        self.tokenizer = tokenizer
        self.padding_side = padding_side or getattr(tokenizer, "padding_side", "right")
        self.examples = examples

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        token_fields = [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features]
        batch = dict(
            self.tokenizer.pad(token_fields, padding=True, return_tensors="pt", padding_side=self.padding_side)
        )
        seq = batch["input_ids"].shape[1]
        for key in features[0]:
            if key in ("input_ids", "attention_mask"):
                continue
            if key == "offsets":
                offsets = torch.full((len(features), seq, 2), -1, dtype=torch.long)
                for i, f in enumerate(features):
                    row = torch.as_tensor(f["offsets"], dtype=torch.long).reshape(-1, 2)
                    if self.padding_side == "left":
                        offsets[i, seq - row.shape[0] :] = row
                    else:
                        offsets[i, : row.shape[0]] = row
                batch["offsets"] = offsets
            else:
                batch[key] = torch.as_tensor([f[key] for f in features])
        if self.examples is not None and "example_index" in batch:
            batch["examples"] = [self.examples[int(i)] for i in batch["example_index"]]
        return batch


# --------------------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------------------
class TaskDataModule(pl.LightningDataModule):
    """Train/validation/test loaders of a classification task (see module docstring for the splits).

    Parameters
    ----------
    task
        a task name, config (``cfg.task``) or :class:`fnet.scoring.tasks.TaskSpec`.
    tokenizer
        the model's tokenizer (``LoadedModel.tokenizer``); may be set later, before ``setup``.
    data_dir
        offline data folder (``paths.data_dir``; None = ``$FNET_DATA_DIR`` or ``../shared/data``).
    source
        ``auto`` (the task's rule: local when the file exists), ``local`` or ``hub``.
    split
        train/validation/test fractions of the pool; split_seed: their seed.
    max_length
        tokens per example; longer inputs are truncated (``plain``: longest text of the pair first;
        ``prompt``: from the left, so the question at the end of the prompt survives).
    input_format
        ``plain`` (``text_a``, or ``text_a`` + ``pair_separator`` + ``text_b``) or ``prompt`` (the
        task's ``prompt.template``, e.g. "...\\nQuestion: Is this sentence positive or negative?\\nAnswer:").
    max_train_rows / max_eval_rows
        keep at most this many rows of train / of validation and test (a seeded
        random subset: the first rows of the permuted part).
    padding_side
        ``left``/``right`` (None: the tokenizer's).
    rows
        split these rows instead of loading the task (tests, custom data).
    """

    def __init__(
        self,
        task: Any = "sst2",
        tokenizer: Any = None,
        data_dir: str | None = None,
        source: str = "auto",
        split: Sequence[float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        max_length: int = 128,
        input_format: str = "plain",
        pair_separator: str = "\n",
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        max_train_rows: int | None = None,
        max_eval_rows: int | None = None,
        num_workers: int = 0,
        padding_side: str | None = None,
        rows: Sequence[dict] | None = None,
    ):
        super().__init__()

        self.task = get_task(task)
        task = self.task.to_dict()  # plain, so the checkpoint's datamodule hyperparameters need no OmegaConf
        split = [float(f) for f in split]
        if input_format not in ("plain", "prompt"):
            raise ValueError(f"input_format must be 'plain' or 'prompt', not {input_format!r}")
        self.save_hyperparameters(ignore=["tokenizer", "rows"], logger=False)
        self.tokenizer = tokenizer
        self.rows = list(rows) if rows is not None else None
        self.splits: dict[str, list[dict]] = {}
        self.datasets: dict[str, Any] = {}
        self.split_info: dict[str, Any] = {}

    # ---- what the task needs ---------------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return self.task.n_choices

    @property
    def metric_names(self) -> list[str]:
        return list(self.task.metric)

    @property
    def provenance(self) -> dict[str, Any]:
        """Where the rows come from and how they were split (``split_info``; evaluate.py records it)."""
        return dict(self.split_info)

    def group_key(self, row: dict) -> Any:
        return (row.get("text_a"), row.get("text_b"))

    def keep_row(self, row: dict) -> bool:
        return int(row.get("label", -1)) >= 0

    # ---- setup ----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.tokenizer is None:
            raise ValueError("TaskDataModule needs a tokenizer before setup (datamodule.tokenizer = lm.tokenizer)")
        hp = self.hparams
        parts, info = fine_tuning_splits(
            self.task, hp.data_dir, hp.source, hp.split, hp.split_seed, self.group_key, self.rows
        )
        parts = {name: [r for r in part if self.keep_row(r)] for name, part in parts.items()}
        limits = {"train": hp.max_train_rows, "validation": hp.max_eval_rows, "test": hp.max_eval_rows}
        for name, limit in limits.items():
            if limit is not None and len(parts[name]) > limit:
                parts[name] = parts[name][: int(limit)]
        self.splits = parts
        info["sizes"] = {name: len(rows) for name, rows in parts.items()}
        info["limits"] = {"max_train_rows": hp.max_train_rows, "max_eval_rows": hp.max_eval_rows}
        info.update({f"{name}_labels": _label_summary(rows) for name, rows in parts.items()})
        self.split_info = info
        log.warning("fine-tuning data for %s: %s; sizes %s", self.task.name, info["rule"], info["sizes"])
        self.datasets = {name: self.encode(rows) for name, rows in parts.items()}

    def encode(self, rows: Sequence[dict]):
        """Rows -> a ``datasets.Dataset`` of ``input_ids``, ``attention_mask``, ``labels``."""
        import datasets

        columns = {
            "text_a": [r["text_a"] for r in rows],
            "text_b": [r.get("text_b") for r in rows],
            "label": [int(r["label"]) for r in rows],
            "index": [int(r.get("index", i)) for i, r in enumerate(rows)],
        }
        ds = datasets.Dataset.from_dict(columns)
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # in-memory tokenisation of a few hundred rows: no bar per split
        try:
            return ds.map(self._encode_batch, batched=True, remove_columns=ds.column_names)
        finally:
            if bars:
                datasets.enable_progress_bars()

    def _encode_batch(self, batch: Mapping[str, list]) -> dict[str, list]:
        hp = self.hparams
        tok = self.tokenizer
        if hp.input_format == "prompt":
            template = self.task.prompt["template"]
            texts = [
                template.format(text_a=a, text_b=b or "", label="", context="", question="", title="", id="")
                for a, b in zip(batch["text_a"], batch["text_b"])
            ]
            ids = tok(texts, add_special_tokens=True)["input_ids"]
            ids = [list(x[-hp.max_length :]) for x in ids]  # keep the end (the question)
        elif any(b is not None for b in batch["text_b"]):
            seconds = [hp.pair_separator + (b or "") for b in batch["text_b"]]
            ids = tok(list(batch["text_a"]), seconds, truncation="longest_first", max_length=hp.max_length)["input_ids"]
        else:
            ids = tok(list(batch["text_a"]), truncation=True, max_length=hp.max_length)["input_ids"]
        return {
            "input_ids": ids,
            "attention_mask": [[1] * len(x) for x in ids],
            "labels": list(batch["label"]),
            "row_index": list(batch["index"]),
        }

    # ---- loaders ---------------------------------------------------------------------------------------------
    def collator(self, split: str) -> Callable:
        return PadCollator(self.tokenizer, self.hparams.padding_side)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        ds = self.datasets[split].with_format(None)
        size = (
            self.hparams.batch_size if split == "train" else (self.hparams.eval_batch_size or self.hparams.batch_size)
        )
        return DataLoader(
            ds,
            batch_size=size,
            shuffle=shuffle,
            collate_fn=self.collator(split),
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


# --------------------------------------------------------------------------------------------------------------
# Extractive QA (SQuAD)
# --------------------------------------------------------------------------------------------------------------
def answer_char_span(context: str, answers: Sequence[str], answer_start: int | None = None) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the first answer in ``context`` (its first occurrence, as the offline
    SQuAD file's ``answer_start`` is defined), or None when no answer text occurs."""
    for answer in answers:
        if not answer:
            continue
        start = (
            answer_start
            if answer_start is not None and context[answer_start:].startswith(answer)
            else context.find(answer)
        )
        if start >= 0:
            return start, start + len(answer)
    return None


class SquadDataModule(TaskDataModule):
    """Windows of SQuAD examples for :class:`fnet.lit.qa.ExtractiveQAModule`.

    Each feature is ``question + question_separator`` then a window of the context (``max_length`` tokens in all,
    windows overlap by ``doc_stride`` tokens). Training keeps the windows that contain the whole (first) answer,
    with ``start_positions``/``end_positions`` its first and last token; evaluation keeps every window, and the
    module picks the best span over an example's windows. Splits keep a paragraph's questions together.
    """

    def __init__(
        self,
        task: Any = "squad",
        tokenizer: Any = None,
        data_dir: str | None = None,
        source: str = "auto",
        split: Sequence[float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        max_length: int = 384,
        doc_stride: int = 128,
        question_separator: str = "\n",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_train_rows: int | None = None,
        max_eval_rows: int | None = None,
        num_workers: int = 0,
        padding_side: str | None = None,
        rows: Sequence[dict] | None = None,
    ):
        task = get_task(task).to_dict()  # plain values in the checkpoint (Lightning records this frame's arguments)
        split = [float(f) for f in split]
        super().__init__(
            task=task,
            tokenizer=tokenizer,
            data_dir=data_dir,
            source=source,
            split=split,
            split_seed=split_seed,
            max_length=max_length,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            max_train_rows=max_train_rows,
            max_eval_rows=max_eval_rows,
            num_workers=num_workers,
            padding_side=padding_side,
            rows=rows,
        )
        self.hparams["doc_stride"] = int(doc_stride)
        self.hparams["question_separator"] = question_separator
        self.examples: dict[str, list[dict]] = {}

    @property
    def num_labels(self) -> int:  # not a classification task
        return 0

    def group_key(self, row: dict) -> Any:
        return row.get("context")

    def keep_row(self, row: dict) -> bool:
        return bool(row.get("context")) and bool(row.get("question"))

    def encode(self, rows: Sequence[dict], train: bool | None = None):
        raise NotImplementedError  # SquadDataModule encodes per split in setup (training drops answerless windows)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.tokenizer is None:
            raise ValueError("SquadDataModule needs a tokenizer before setup")
        hp = self.hparams
        parts, info = fine_tuning_splits(
            self.task, hp.data_dir, hp.source, hp.split, hp.split_seed, self.group_key, self.rows
        )
        parts = {name: [r for r in part if self.keep_row(r)] for name, part in parts.items()}
        limits = {"train": hp.max_train_rows, "validation": hp.max_eval_rows, "test": hp.max_eval_rows}
        for name, limit in limits.items():
            if limit is not None and len(parts[name]) > limit:
                parts[name] = parts[name][: int(limit)]
        self.splits = parts
        self.examples = {
            name: [
                {
                    "id": str(r.get("id", i)),
                    "index": int(r.get("index", i)),
                    "context": r["context"],
                    "question": r["question"],
                    "answers": list(r.get("answers") or []),
                }
                for i, r in enumerate(rows)
            ]
            for name, rows in parts.items()
        }
        self.datasets = {name: self.encode_qa(self.examples[name], train=name == "train") for name in parts}
        info["sizes"] = {name: len(rows) for name, rows in parts.items()}
        info["features"] = {name: len(ds) for name, ds in self.datasets.items()}
        info["limits"] = {"max_train_rows": hp.max_train_rows, "max_eval_rows": hp.max_eval_rows}
        self.split_info = info
        log.warning(
            "fine-tuning data for %s: %s; sizes %s (windows %s)",
            self.task.name,
            info["rule"],
            info["sizes"],
            info["features"],
        )

    def encode_qa(self, examples: Sequence[dict], train: bool) -> list[dict]:
        """Examples -> features (a list of dicts; windows of one example share its ``example_index``)."""
        hp = self.hparams
        if not examples:
            return []
        stride = min(int(hp.doc_stride), hp.max_length // 2)
        if stride < hp.doc_stride:
            log.warning("doc_stride %d >= max_length/2; using %d", hp.doc_stride, stride)
        questions = [e["question"].strip() + hp.question_separator for e in examples]
        contexts = [e["context"] for e in examples]
        self._check_room(questions, stride)
        enc = self.tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=hp.max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        features = []
        for f, example_index in enumerate(enc["overflow_to_sample_mapping"]):
            sequence_ids = enc.sequence_ids(f)
            offsets = [list(o) if s == 1 else [-1, -1] for o, s in zip(enc["offset_mapping"][f], sequence_ids)]
            feature = {
                "input_ids": list(enc["input_ids"][f]),
                "attention_mask": list(enc["attention_mask"][f]),
                "offsets": offsets,
                "example_index": int(example_index),
            }
            span = answer_char_span(contexts[example_index], examples[example_index]["answers"])
            start_tok = end_tok = -1
            if span is not None:
                in_span = [i for i, (lo, hi) in enumerate(offsets) if lo >= 0 and lo < span[1] and hi > span[0]]
                covered_lo = min((offsets[i][0] for i in in_span), default=None)
                covered_hi = max((offsets[i][1] for i in in_span), default=None)
                if in_span and covered_lo <= span[0] and covered_hi >= span[1]:
                    start_tok, end_tok = in_span[0], in_span[-1]
            if train and start_tok < 0:
                continue  # a training window without the whole answer teaches nothing a causal LM can use
            feature["start_positions"], feature["end_positions"] = start_tok, end_tok
            features.append(feature)
        return features

    def _check_room(self, questions: Sequence[str], stride: int) -> None:
        """A window holds the whole question, the pair's special tokens and more context tokens than the stride;
        the tokenizer's own error for a longer question ("Sequence to truncate too short ...") names none of
        these, so say which setting to raise, and to what."""
        longest = max(len(ids) for ids in self.tokenizer(list(questions), add_special_tokens=False)["input_ids"])
        need = longest + self.tokenizer.num_special_tokens_to_add(pair=True) + stride + 1
        if need > self.hparams.max_length:
            raise ValueError(
                f"datamodule.max_length={self.hparams.max_length} is too short for {self.task.name}: its longest "
                f"question is {longest} tokens, and a window needs the question, "
                f"{self.tokenizer.num_special_tokens_to_add(pair=True)} special tokens and more than "
                f"doc_stride={stride} context tokens. Set datamodule.max_length >= {need} "
                f"(or a smaller datamodule.doc_stride)."
            )

    def collator(self, split: str) -> Callable:
        return PadCollator(self.tokenizer, self.hparams.padding_side, examples=self.examples.get(split))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        size = (
            self.hparams.batch_size if split == "train" else (self.hparams.eval_batch_size or self.hparams.batch_size)
        )
        return DataLoader(
            self.datasets[split],
            batch_size=size,
            shuffle=shuffle,
            collate_fn=self.collator(split),
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )
